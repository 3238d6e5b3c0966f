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

/// Where the extension lives and who owns it, from one catalog read.
pub struct Extension {
    /// The quoted schema name, for building qualified names.
    pub schema: String,
    pub owner: pg_sys::Oid,
}

/// The extension's schema and owner, as looked up in the catalog.
pub fn extension() -> Extension {
    let found = crate::plans::read_first_row(
        "SELECT n.nspname::text, e.extowner FROM pg_catalog.pg_extension e \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace \
         WHERE e.extname OPERATOR(pg_catalog.=) 'nura_users'",
        &[],
        |row| Ok((row.get::<String>(1)?, row.get::<pg_sys::Oid>(2)?)),
    );
    match found {
        Ok(Some((Some(name), Some(owner)))) => Extension {
            schema: pgrx::spi::quote_identifier(name),
            owner,
        },
        _ => raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            "extension \"nura_users\" is not installed in this database",
            None,
        ),
    }
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
