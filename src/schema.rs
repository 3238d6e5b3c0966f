//! Where the extension's objects live, and the SQL that is SQL.
//!
//! The extension is not relocatable and has no fixed schema: its objects go into the schema named
//! at `CREATE EXTENSION nura_users [SCHEMA s]`. Hand-written SQL says `@extschema@`; Rust code asks
//! the catalog, and builds fully qualified names from the answer (never from user input).

use crate::errors::raise;
use crate::errors::OrRaise;
use pgrx::prelude::*;

// Tables, keys, indexes, RLS and pg_dump registration come first in the install script.
extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);

// Function attributes, privileges and the automatic attach run last, once every function exists.
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

/// Where the extension lives and who owns it.
#[derive(Clone)]
pub struct Extension {
    /// The quoted schema name, for building qualified names.
    pub schema: String,
    /// The extension's owner (`pg_extension.extowner`).
    pub owner: pg_sys::Oid,
}

thread_local! {
    /// The extension as last found, with the catalog generation it was found in.
    static FOUND: std::cell::RefCell<Option<(u64, Extension)>> =
        const { std::cell::RefCell::new(None) };
    /// Bumped by every invalidation of pg_proc or pg_namespace entries in this backend's caches.
    static GENERATION: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static LISTENING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A catalog cache callback: what was found may be out of date.
unsafe extern "C-unwind" fn catalog_changed(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    GENERATION.set(GENERATION.get().wrapping_add(1));
}

/// The extension's schema and owner. Every API function calls this first.
///
/// Found once per backend (the extension's oid from pg_extension, its schema's name from the
/// catalog cache) and kept until PostgreSQL invalidates a cached pg_proc or pg_namespace entry:
/// CREATE, DROP and ALTER EXTENSION all create, drop or change the extension's functions, a
/// REASSIGN OWNED changes their owner with the extension's, and a schema rename is a pg_namespace
/// change (an aborted one is undone with the same invalidations). Until then a call costs no
/// catalog lookup (instead of an index scan of pg_extension per call). Invalidations of unrelated
/// functions only make the next call look again. pg_extension itself has no catalog cache to be
/// told about: an owner changed while none of the extension's functions changed owner (they were
/// given another owner by hand) is seen by a session at its next invalidation of either kind, and
/// by new sessions at once.
pub fn extension() -> Extension {
    if !LISTENING.get() {
        // SAFETY: registers a plain function for this backend's lifetime (once: the callback
        // table has 64 slots).
        unsafe {
            for cache in [
                pg_sys::SysCacheIdentifier::PROCOID,
                pg_sys::SysCacheIdentifier::NAMESPACEOID,
            ] {
                pg_sys::CacheRegisterSyscacheCallback(
                    cache as i32,
                    Some(catalog_changed),
                    pg_sys::Datum::from(0),
                );
            }
        }
        LISTENING.set(true);
    }
    // Read before looking: an invalidation while looking leaves the result stale at once.
    let generation = GENERATION.get();
    if let Some(found) = FOUND.with_borrow(|f| {
        f.as_ref()
            .filter(|(g, _)| *g == generation)
            .map(|(_, e)| e.clone())
    }) {
        return found;
    }
    let found = look_up_extension();
    FOUND.set(Some((generation, found.clone())));
    found
}

fn look_up_extension() -> Extension {
    // SAFETY: a catalog index lookup with missing_ok; InvalidOid when absent.
    let oid = unsafe { pg_sys::get_extension_oid(c"nura_users".as_ptr(), true) };
    if oid == pg_sys::InvalidOid {
        not_installed();
    }
    let found = crate::plans::read_first_row(
        "SELECT e.extnamespace, e.extowner FROM pg_catalog.pg_extension e \
         WHERE e.oid OPERATOR(pg_catalog.=) $1",
        &[oid.into()],
        |row| Ok((row.get::<pg_sys::Oid>(1)?, row.get::<pg_sys::Oid>(2)?)),
    );
    let Ok(Some((Some(namespace), Some(owner)))) = found else {
        not_installed()
    };
    // SAFETY: a catalog cache lookup; NULL for an unknown namespace, checked below.
    let name = unsafe {
        let ptr = pg_sys::get_namespace_name(namespace);
        (!ptr.is_null()).then(|| std::ffi::CStr::from_ptr(ptr).to_string_lossy().into_owned())
    };
    let Some(name) = name else { not_installed() };
    Extension {
        schema: pgrx::spi::quote_identifier(name),
        owner,
    }
}

fn not_installed() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
        "extension \"nura_users\" is not installed in this database",
        None,
    )
}

/// The quoted name of the schema holding the extension.
pub fn extension_schema() -> String {
    extension().schema
}

/// The quoted name of the schema that holds function `fn_oid`. A trigger function lives in the
/// extension's schema, so this finds the schema without a catalog query through SPI.
/// Whether the extension's schema has the function `signature` (`name(argtypes)`): a library
/// newer than the database's catalog (before `ALTER EXTENSION nura_users UPDATE`) checks for
/// the functions its SQL calls that the update adds, and does without them.
pub fn has_function(schema: &str, signature: &str) -> bool {
    crate::plans::read_scalar::<bool>(
        "SELECT pg_catalog.to_regprocedure($1) IS NOT NULL",
        &[format!("{schema}.{signature}").into()],
    )
    .or_raise("reading the catalog")
    .unwrap_or(false)
}

/// Whether `schema.table` has the column `column` (a catalog an update has not reached yet
/// lacks the columns the update adds).
pub fn has_column(schema: &str, table: &str, column: &str) -> bool {
    crate::plans::read_scalar::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1) \
               AND a.attname OPERATOR(pg_catalog.=) $2::name AND NOT a.attisdropped)",
        &[format!("{schema}.{table}").into(), column.into()],
    )
    .or_raise("reading the catalog")
    .unwrap_or(false)
}

pub fn schema_of_function(fn_oid: pg_sys::Oid) -> String {
    thread_local! {
        /// The last schema name seen and its quoted form (the auth trigger asks on every call).
        static QUOTED: std::cell::RefCell<(String, String)> =
            const { std::cell::RefCell::new((String::new(), String::new())) };
    }
    // SAFETY: plain syscache lookups; both return NULL/InvalidOid for unknown objects, checked
    // below.
    let name = unsafe {
        let nsp = pg_sys::get_func_namespace(fn_oid);
        let ptr = pg_sys::get_namespace_name(nsp);
        if ptr.is_null() {
            None
        } else {
            Some(std::ffi::CStr::from_ptr(ptr))
        }
    };
    match name.map(|n| n.to_string_lossy()) {
        Some(name) => QUOTED.with_borrow_mut(|(raw, quoted)| {
            if *raw != name {
                *quoted = pgrx::spi::quote_identifier(&*name);
                *raw = name.into_owned();
            }
            quoted.clone()
        }),
        None => raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("schema of function {fn_oid:?} not found"),
            None,
        ),
    }
}

/// A version 7 UUID (RFC 9562) from a time in milliseconds since 1970 and 10 random bytes: 48
/// bits of time, the version (7), 12 random bits, the variant (binary 10), 62 random bits.
pub fn uuidv7_from(unix_ms: u64, random: [u8; 10]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
    b[6] = 0x70 | (random[0] & 0x0F);
    b[7] = random[1];
    b[8] = 0x80 | (random[2] & 0x3F);
    b[9..].copy_from_slice(&random[3..]);
    b
}

thread_local! {
    /// Random bytes from pg_strong_random, fetched 4 kB at a time, and the process they were
    /// fetched in (a forked process must never reuse its parent's).
    static RANDOM: std::cell::RefCell<(i32, Vec<u8>)> = const { std::cell::RefCell::new((0, Vec::new())) };
}

/// `nura_uuidv7()`: the default of `user_service_profiles.id`. Time-ordered, so a new profile's key
/// goes to the right edge of the primary key's index instead of a random page of it (fewer pages
/// touched and written per insert as the table grows), and cheaper than `gen_random_uuid()`, which
/// asks OpenSSL for 16 bytes on every call: the 74 random bits come from the same source
/// (`pg_strong_random`), in blocks of 4 kB.
#[pg_extern(volatile, parallel_safe, sql = false)]
fn nura_uuidv7() -> pgrx::Uuid {
    const BLOCK: usize = 4096;
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // SAFETY: MyProcPid is set at backend start and only read here.
    let pid = unsafe { pg_sys::MyProcPid };
    let random = RANDOM.with_borrow_mut(|(owner, bytes)| {
        if *owner != pid || bytes.len() < 10 {
            bytes.resize(BLOCK, 0);
            // SAFETY: the buffer holds BLOCK bytes.
            if !unsafe { pg_sys::pg_strong_random(bytes.as_mut_ptr().cast(), BLOCK) } {
                bytes.clear();
                raise(
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    "could not generate random values",
                    None,
                );
            }
            *owner = pid;
        }
        let at = bytes.len() - 10;
        let mut random = [0u8; 10];
        random.copy_from_slice(&bytes[at..]);
        bytes.truncate(at);
        random
    });
    pgrx::Uuid::from_bytes(uuidv7_from(unix_ms, random))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn extension_schema_is_where_create_extension_put_it() {
        // pgrx creates the extension in public for the tests.
        assert_eq!(super::extension_schema(), "public");
    }

    #[test]
    fn uuidv7_has_its_time_version_and_variant() {
        let ms = 0x0192_3456_789A_u64;
        let b = super::uuidv7_from(ms, [0xFF; 10]);
        assert_eq!(&b[..6], &[0x01, 0x92, 0x34, 0x56, 0x78, 0x9A]);
        assert_eq!(b[6] >> 4, 7, "version");
        assert_eq!(b[8] >> 6, 0b10, "variant");
        assert_eq!(&b[9..], &[0xFF; 7]);
        assert_eq!(super::uuidv7_from(ms, [0; 10])[6..9], [0x70, 0, 0x80]);
        // Later milliseconds sort later, whatever the random bits.
        assert!(super::uuidv7_from(ms + 1, [0; 10]) > super::uuidv7_from(ms, [0xFF; 10]));
    }

    #[pg_test]
    fn profile_ids_are_distinct_time_ordered_version_7_uuids() {
        // distinct ids, version 7, variant 10, the first 48 bits now in milliseconds
        let facts = Spi::get_one::<String>(
            "SELECT pg_catalog.count(DISTINCT u) || ' ' \
                    || pg_catalog.bool_and(substr(u::text, 15, 1) = '7')::text || ' ' \
                    || pg_catalog.bool_and(substr(u::text, 20, 1) IN ('8', '9', 'a', 'b'))::text || ' ' \
                    || pg_catalog.bool_and(abs(('x' || lpad(replace(left(u::text, 13), '-', ''), 16, '0'))::bit(64)::bigint \
                        - (extract(epoch FROM clock_timestamp()) * 1000)::bigint) < 60000)::text \
             FROM (SELECT public.nura_uuidv7() AS u FROM generate_series(1, 10000)) s",
        )
        .unwrap();
        // 4 kB of randomness is 409 ids: refilled many times on the way.
        assert_eq!(facts.as_deref(), Some("10000 true true true"));
    }

    #[pg_test]
    fn schema_of_function_names_the_functions_schema() {
        let oid = Spi::get_one::<pg_sys::Oid>(
            "SELECT 'public.nura_attach_auth_sync()'::pg_catalog.regprocedure::pg_catalog.oid",
        )
        .unwrap()
        .unwrap();
        assert_eq!(super::schema_of_function(oid), "public");
    }

    #[pg_test]
    fn every_table_is_registered_for_pg_dump() {
        // Every table and sequence of the extension (docs/backups.md), and nothing else.
        let missing = Spi::get_one::<Vec<String>>(
            "SELECT COALESCE(pg_catalog.array_agg(c.relname::text ORDER BY c.relname), '{}') \
             FROM pg_catalog.pg_extension e \
             JOIN pg_catalog.pg_depend d ON d.refobjid = e.oid AND d.deptype = 'e' \
                  AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
             JOIN pg_catalog.pg_class c ON c.oid = d.objid AND c.relkind IN ('r', 'S') \
             WHERE e.extname = 'nura_users' AND NOT (c.oid = ANY (e.extconfig))",
        )
        .unwrap();
        assert_eq!(missing, Some(Vec::new()));
        let registered = Spi::get_one::<i64>(
            "SELECT pg_catalog.count(*) FROM pg_catalog.pg_extension e, \
             pg_catalog.unnest(e.extconfig) AS c(oid) WHERE e.extname = 'nura_users'",
        )
        .unwrap();
        // The 7 tables of `docs/install.md`, the migration's 2 work tables, the cutover's 7
        // tables, and the 5 identity sequences.
        assert_eq!(registered, Some(21));
    }
}
