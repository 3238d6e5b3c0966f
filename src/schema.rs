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
    // SAFETY: plain syscache lookups; both return NULL/InvalidOid for unknown objects, checked below.
    let name = unsafe {
        let nsp = pg_sys::get_func_namespace(fn_oid);
        let ptr = pg_sys::get_namespace_name(nsp);
        if ptr.is_null() {
            None
        } else {
            Some(std::ffi::CStr::from_ptr(ptr).to_string_lossy().into_owned())
        }
    };
    match name {
        Some(name) => pgrx::spi::quote_identifier(name),
        None => raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("schema of function {fn_oid:?} not found"),
            None,
        ),
    }
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
