//! Where the extension's objects live, and the SQL that is SQL.
//!
//! The extension is not relocatable and has no fixed schema: its objects go into the schema named
//! at `CREATE EXTENSION nura_users [SCHEMA s]`. Hand-written SQL says `@extschema@`; Rust code asks
//! the catalog, and builds fully qualified names from the answer (never from user input).

use crate::errors::raise;
use pgrx::prelude::*;

// Tables, keys, indexes, RLS and pg_dump registration come first in the install script.
extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);

// Function attributes, privileges and the automatic attach run last, once every function exists.
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

/// Where the extension lives and who owns it.
pub struct Extension {
    /// The quoted schema name, for building qualified names.
    pub schema: String,
    /// The extension's owner (`pg_extension.extowner`).
    pub owner: pg_sys::Oid,
}

thread_local! {
    /// By the extension's oid: its schema's oid and its owner. The extension is not relocatable,
    /// so neither changes for an oid; dropped and created again, the extension has a new oid.
    static FOUND: std::cell::Cell<Option<(pg_sys::Oid, pg_sys::Oid, pg_sys::Oid)>> =
        const { std::cell::Cell::new(None) };
}

/// The extension's schema and owner. Every API function calls this first. The schema's oid and
/// the owner come from the catalog once per backend (an SPI query); each call then checks with
/// one index probe of pg_extension that it is still the same extension, and reads the schema's
/// current name from the catalog cache (a schema can be renamed).
pub fn extension() -> Extension {
    // SAFETY: a catalog index lookup with missing_ok; InvalidOid when absent.
    let oid = unsafe { pg_sys::get_extension_oid(c"nura_users".as_ptr(), true) };
    if oid == pg_sys::InvalidOid {
        not_installed();
    }
    let (namespace, owner) = match FOUND.get().filter(|(o, _, _)| *o == oid) {
        Some((_, namespace, owner)) => (namespace, owner),
        None => {
            let found = crate::plans::read_first_row(
                "SELECT e.extnamespace, e.extowner FROM pg_catalog.pg_extension e \
                 WHERE e.oid OPERATOR(pg_catalog.=) $1",
                &[oid.into()],
                |row| Ok((row.get::<pg_sys::Oid>(1)?, row.get::<pg_sys::Oid>(2)?)),
            );
            let Ok(Some((Some(namespace), Some(owner)))) = found else {
                not_installed()
            };
            FOUND.set(Some((oid, namespace, owner)));
            (namespace, owner)
        }
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
pub fn schema_of_function(fn_oid: pg_sys::Oid) -> String {
    thread_local! {
        /// The last schema name seen and its quoted form (the auth trigger asks on every call).
        static QUOTED: std::cell::RefCell<(String, String)> =
            const { std::cell::RefCell::new((String::new(), String::new())) };
    }
    // SAFETY: plain syscache lookups; both return NULL/InvalidOid for unknown objects, checked below.
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
            if raw.is_empty() || *raw != name {
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

/// Why a `user_sync_logs` row is not valid (the field and what it must be), or `None`.
pub fn log_row_problem(
    source: Option<&str>,
    sync_type: Option<&str>,
    success: Option<bool>,
    sqlstate: Option<&str>,
    error_message: Option<&str>,
    duration_us: Option<i64>,
) -> Option<String> {
    use crate::sync::Source;
    const SOURCES: [Source; 5] = [
        Source::SupabaseAuth,
        Source::FrontendSync,
        Source::BackendApi,
        Source::Reconcile,
        Source::Migration,
    ];
    if let Some(source) = source.filter(|s| !SOURCES.iter().any(|k| k.as_str() == *s)) {
        let known = SOURCES.map(Source::as_str).join(", ");
        return Some(format!("source \"{source}\" is not one of {known}"));
    }
    // ^[a-z][a-z_]{0,31}$
    let sync_type_ok = |t: &str| {
        let b = t.as_bytes();
        (1..=32).contains(&b.len())
            && b[0].is_ascii_lowercase()
            && b.iter().all(|c| c.is_ascii_lowercase() || *c == b'_')
    };
    if let Some(t) = sync_type.filter(|t| !sync_type_ok(t)) {
        return Some(format!(
            "sync_type \"{t}\" is not 1 to 32 lowercase letters and underscores, starting with a letter"
        ));
    }
    // ^[0-9A-Z]{5}$
    if let Some(code) = sqlstate.filter(|c| {
        c.len() != 5
            || !c
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    }) {
        return Some(format!(
            "sqlstate \"{code}\" is not 5 digits or uppercase letters"
        ));
    }
    if let Some(success) = success {
        if success != sqlstate.is_none() || success != error_message.is_none() {
            return Some(
                "a failure (success false) carries sqlstate and error_message, a success neither"
                    .into(),
            );
        }
    }
    if duration_us.is_some_and(|d| d < 0) {
        return Some("duration_us is negative".into());
    }
    None
}

/// The one CHECK of `user_sync_logs` (`user_sync_logs_row_valid`, created in `sql/schema.sql`).
/// PostgreSQL reads a table's CHECK constraints back from their catalog text and plans them
/// again for every statement that writes the table, and every sync writes a log row with a
/// statement of its own: five CHECK expressions cost 5 % of a `nura_sync_user` call, one call of
/// this function almost nothing. An invalid row is refused here, with the field named; a NULL
/// passes as it would a CHECK (the NOT NULL columns refuse it).
#[pg_extern(immutable, parallel_safe, sql = false)]
fn nura_sync_log_row_valid(
    source: Option<&str>,
    sync_type: Option<&str>,
    success: Option<bool>,
    sqlstate: Option<&str>,
    error_message: Option<&str>,
    duration_us: Option<i64>,
) -> bool {
    if let Some(problem) = log_row_problem(
        source,
        sync_type,
        success,
        sqlstate,
        error_message,
        duration_us,
    ) {
        pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
            "new row for relation \"user_sync_logs\" violates check constraint \"user_sync_logs_row_valid\"",
            "nura_users",
        )
        .set_detail(problem)
        .report(PgLogLevel::ERROR);
    }
    true
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
    fn log_rows_are_checked_field_by_field() {
        use super::log_row_problem as p;
        fn ok(
            source: &str,
            sync_type: &str,
            success: bool,
            code: Option<&str>,
            message: Option<&str>,
        ) -> Option<String> {
            p(
                Some(source),
                Some(sync_type),
                Some(success),
                code,
                message,
                Some(0),
            )
        }
        assert_eq!(ok("supabase_auth", "created", true, None, None), None);
        assert_eq!(
            ok(
                "migration",
                "soft_deleted",
                false,
                Some("22023"),
                Some("bad")
            ),
            None
        );
        assert!(ok("webhook", "created", true, None, None)
            .unwrap()
            .starts_with("source \"webhook\""));
        assert!(ok("reconcile", "Created", true, None, None)
            .unwrap()
            .starts_with("sync_type"));
        assert!(ok("reconcile", "", true, None, None)
            .unwrap()
            .starts_with("sync_type"));
        assert!(ok("reconcile", &"a".repeat(33), true, None, None)
            .unwrap()
            .starts_with("sync_type"));
        assert_eq!(ok("reconcile", &"a".repeat(32), true, None, None), None);
        assert!(ok("reconcile", "x", false, Some("2202"), Some("m"))
            .unwrap()
            .starts_with("sqlstate"));
        assert!(ok("reconcile", "x", false, Some("2202a"), Some("m"))
            .unwrap()
            .starts_with("sqlstate"));
        assert!(ok("reconcile", "x", false, None, None)
            .unwrap()
            .starts_with("a failure"));
        assert!(ok("reconcile", "x", true, Some("22023"), None)
            .unwrap()
            .starts_with("a failure"));
        assert!(ok("reconcile", "x", false, Some("22023"), None)
            .unwrap()
            .starts_with("a failure"));
        assert_eq!(
            p(
                Some("reconcile"),
                Some("x"),
                Some(true),
                None,
                None,
                Some(-1)
            )
            .as_deref(),
            Some("duration_us is negative")
        );
        // NULLs pass, as in a CHECK; the NOT NULL columns refuse them.
        assert_eq!(p(None, None, None, None, None, None), None);
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
        let registered = Spi::get_one::<i64>(
            "SELECT pg_catalog.count(*) FROM pg_catalog.pg_extension e, \
             pg_catalog.unnest(e.extconfig) AS c(oid) WHERE e.extname = 'nura_users'",
        )
        .unwrap();
        // The 7 tables of SPEC §2, the migration's 2 work tables, and the 3 identity sequences.
        assert_eq!(registered, Some(12));
    }
}
