//! The cutover (docs/cutover.md; the design is docs/design/cutover.md): moving the product's
//! references and old code from the legacy tables onto `users`: its plan, `nura_cutover_plan`
//! (what a cutover would do and what blocks it, writing nothing); `CALL nura_cutover`, which
//! captures a legacy table (every write to it reaches `users` at once), moves its references,
//! keeps it current from `users` and switches its name to a view; `CALL nura_cutover_rollback`,
//! which undoes all of it; `nura_cutover_status`; and `nura_cutover_finish`.
//!
//! - this file: the SQL function and its arguments;
//! - `catalog`: discovery (legacy tables, references, their shapes, what depends on a table);
//! - `plan`: the plan's report and its counts, and which blockers apply;
//! - `reasons`: every blocker's reason text and every note, in one place;
//! - `steps`: the CALLs' steps (capture, catch-up, backlog, release) and the status;
//! - `state`: the state tables and the step log;
//! - `capture`: the capture triggers and the function they call;
//! - `locks`: taking strong locks under the cutover's lock timeout;
//! - `references`: moving references to `users` and back (swap, rewrite, validate);
//! - `mirror`: reverse sync (changes of users into the legacy table's rows) and the fill;
//! - `switch`: the switch (the table kept in `nura_legacy`, a view of its name) and back;
//! - `view`: writes through the view (its INSTEAD OF trigger);
//! - `finish`: `nura_cutover_finish`, the irreversible end.

pub use references::repoint;

mod capture;
mod catalog;
mod finish;
mod locks;
mod mirror;
mod plan;
mod reasons;
mod references;
mod state;
mod steps;
mod switch;
mod view;

use crate::errors::{Error, OrRaise};
use crate::jsonb::{JsonB, JsonbArg};
use crate::migration::Table;
use crate::schema::extension_schema;
use pgrx::prelude::*;
use serde_json::Value;

extension_sql_file!(
    "../../sql/cutover.sql",
    name = "cutover",
    requires = ["schema"]
);

/// `docs/cutover.md`, "What exists now": per legacy table present in `legacy_schema`, its rows,
/// every reference to it (foreign keys found in the catalog, and the columns named in
/// `extra_references`) with how many of their values resolve, what the switch would touch, and
/// what blocks a cutover. Reads only: every lock it takes is ACCESS SHARE.
#[pg_extern(stable, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_cutover_plan(
    legacy_schema: default!(Option<&str>, "'public'"),
    extra_references: default!(Option<JsonbArg>, "'[]'"),
) -> JsonB {
    let schema = extension_schema();
    let legacy = checked_legacy_schema(legacy_schema);
    // Read here, not by the argument's conversion, so that a value too deep to read is refused
    // naming the argument.
    let extras = extra_references.map(|arg| {
        arg.root().read().unwrap_or_else(|_| {
            Error::invalid(
                "extra_references",
                format!(
                    "extra_references nests deeper than {} levels",
                    crate::jsonb::MAX_DEPTH
                ),
            )
            .raise()
        })
    });
    let extras = extra_reference_entries(extras);
    let extras = resolve_extras(&legacy, &extras);
    JsonB(plan::plan(&schema, &legacy, &extras))
}

/// The legacy schema: its name and oid.
struct LegacySchema {
    name: String,
    oid: pg_sys::Oid,
}

/// 22023 for no name, 3F000 for a schema that does not exist (docs/cutover.md, Errors).
fn checked_legacy_schema(name: Option<&str>) -> LegacySchema {
    let name = match name {
        Some(s) if !s.trim().is_empty() => s.to_string(),
        _ => Error::invalid("legacy_schema", "legacy_schema must name a schema").raise(),
    };
    match catalog::namespace_oid(&name) {
        Some(oid) => LegacySchema { name, oid },
        None => Error::new(
            PgSqlErrorCode::ERRCODE_INVALID_SCHEMA_NAME,
            format!("legacy_schema \"{name}\" does not exist"),
        )
        .raise(),
    }
}

/// One entry of `extra_references` as given: `{"table", "column", "legacy_table"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ExtraEntry {
    index: usize,
    /// `[schema.]table`, read as PostgreSQL reads a table name.
    schema: Option<String>,
    table: String,
    column: String,
    legacy: Table,
}

/// An entry of `extra_references` found in the catalog.
struct ExtraReference {
    table: pg_sys::Oid,
    column: String,
    legacy: Table,
}

const ENTRY_KEYS: [&str; 3] = ["table", "column", "legacy_table"];

/// The entries of `extra_references`, each checked for its shape; 22023 naming the entry's index
/// and key otherwise (the design's §4, `extra_references`).
fn extra_reference_entries(value: Option<Value>) -> Vec<ExtraEntry> {
    let invalid = |message: String| -> ! { Error::invalid("extra_references", message).raise() };
    let Some(Value::Array(items)) = value else {
        invalid(
            "extra_references must be a JSON array of {\"table\", \"column\", \"legacy_table\"} objects"
                .into(),
        )
    };
    let mut entries: Vec<ExtraEntry> = Vec::new();
    // Repeats found by key, so that a long list costs its length, not its square.
    let mut seen = std::collections::HashMap::new();
    for (index, item) in items.iter().enumerate() {
        let entry = extra_entry(index, item).unwrap_or_else(|m| invalid(m));
        let key = (
            entry.schema.clone(),
            entry.table.clone(),
            entry.column.clone(),
            entry.legacy.name(),
        );
        if let Some(first) = seen.insert(key, index) {
            invalid(format!(
                "extra_references[{index}] repeats extra_references[{first}]"
            ));
        }
        entries.push(entry);
    }
    entries
}

/// One entry, or the message of its first fault.
fn extra_entry(index: usize, item: &Value) -> Result<ExtraEntry, String> {
    let at = format!("extra_references[{index}]");
    let Value::Object(map) = item else {
        return Err(format!(
            "{at} must be an object with the keys table, column and legacy_table"
        ));
    };
    if let Some(key) = map.keys().find(|k| !ENTRY_KEYS.contains(&k.as_str())) {
        let shown: String = key.chars().take(64).collect();
        return Err(format!(
            "{at}: unknown key \"{shown}\"; the keys are table, column and legacy_table"
        ));
    }
    let text = |key: &str| -> Result<String, String> {
        match map.get(key) {
            None => Err(format!("{at}.{key} is missing")),
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(_) => Err(format!("{at}.{key} must be a non-empty string")),
        }
    };
    let (schema, table) = qualified_name(&text("table")?)
        .ok_or_else(|| format!("{at}.table is not a table name ([schema.]table)"))?;
    let column = text("column")?;
    let legacy_name = text("legacy_table")?;
    let legacy = Table::ALL
        .into_iter()
        .find(|t| t.name() == legacy_name)
        .ok_or_else(|| {
            let shown: String = legacy_name.chars().take(64).collect();
            format!(
                "{at}.legacy_table: unknown legacy table \"{shown}\"; legacy tables: chat_users, voice_users, custom_users"
            )
        })?;
    Ok(ExtraEntry {
        index,
        schema,
        table,
        column,
        legacy,
    })
}

/// `[schema.]table` read as PostgreSQL reads a qualified name: parts separated by dots, a part in
/// double quotes taken as it is (`""` for a quote), one without folded to lower case. `None` for
/// anything else (an empty part, three parts, an unclosed quote).
fn qualified_name(text: &str) -> Option<(Option<String>, String)> {
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' || c == '"' || c.is_whitespace() {
                    break;
                }
                part.push(c.to_ascii_lowercase());
                chars.next();
            }
        }
        if part.is_empty() {
            return None;
        }
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => continue,
            Some(_) => return None,
        }
    }
    match parts.len() {
        1 => Some((None, parts.pop()?)),
        2 => {
            let table = parts.pop()?;
            Some((parts.pop(), table))
        }
        _ => None,
    }
}

/// Every entry found in the catalog: 42P01 for a table, 42703 for a column that does not exist;
/// 22023 for a relation that is no table, for a legacy table of the schema (a key between legacy
/// tables stays with the kept table, docs/design/cutover.md §1), and for a column that already
/// has a foreign key to that legacy table (it is a reference already). A table without a schema
/// is looked for in the legacy schema; `pg_temp` is this session's temporary schema, as in
/// PostgreSQL.
fn resolve_extras(legacy: &LegacySchema, entries: &[ExtraEntry]) -> Vec<ExtraReference> {
    entries
        .iter()
        .map(|e| {
            let at = format!("extra_references[{}]", e.index);
            let schema = e.schema.as_deref().unwrap_or(&legacy.name);
            let shown = format!(
                "{}.{}",
                pgrx::spi::quote_identifier(schema),
                pgrx::spi::quote_identifier(&e.table)
            );
            let Some((oid, relkind)) = catalog::relation(schema, &e.table) else {
                Error::new(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                    format!("{at}.table: relation \"{shown}\" does not exist"),
                )
                .raise()
            };
            if relkind != "r" && relkind != "p" {
                Error::invalid(
                    "extra_references",
                    format!("{at}.table: {shown} is not a table"),
                )
                .raise();
            }
            if schema == legacy.name && Table::ALL.iter().any(|t| t.name() == e.table) {
                Error::invalid(
                    "extra_references",
                    format!("{at}.table: {shown} is a legacy table: its references stay with the kept table"),
                )
                .raise();
            }
            check_extra_column(&at, &shown, oid, e, legacy);
            ExtraReference {
                table: oid,
                column: e.column.clone(),
                legacy: e.legacy,
            }
        })
        .collect()
}

/// 42703 for a missing column; 22023 when a foreign key to the legacy table holds it already;
/// 42P01 when the legacy table is not in the legacy schema.
fn check_extra_column(
    at: &str,
    shown: &str,
    table: pg_sys::Oid,
    e: &ExtraEntry,
    legacy: &LegacySchema,
) {
    if !catalog::has_column(table, &e.column) {
        Error::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!(
                "{at}.column: column \"{}\" of relation {shown} does not exist",
                e.column
            ),
        )
        .raise();
    }
    let Some((legacy_oid, _)) = catalog::relation(&legacy.name, e.legacy.name()) else {
        Error::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!(
                "{at}.legacy_table: relation \"{}.{}\" does not exist",
                pgrx::spi::quote_identifier(&legacy.name),
                e.legacy.name()
            ),
        )
        .raise()
    };
    if let Some(constraint) = catalog::key_on_column(table, &e.column, legacy_oid) {
        Error::invalid(
            "extra_references",
            format!(
                "{at}.column: {shown}.{} has the foreign key {constraint} to {}: it is a reference already",
                pgrx::spi::quote_identifier(&e.column),
                e.legacy.name()
            ),
        )
        .raise();
    }
}

/// A failed SPI call or datum conversion of the plan, raised (as `OrRaise` does everywhere).
fn or_raise<T, E: std::fmt::Display>(result: Result<T, E>) -> T {
    result.or_raise("nura_cutover_plan")
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    /// The plan's statements name product tables and run now and then: none is kept as a plan
    /// for the life of the backend (`crate::plans` keeps only statements it is given).
    #[pg_test]
    fn the_plan_keeps_no_plan_of_its_statements() {
        Spi::run(
            "CREATE TABLE public.chat_users (id uuid PRIMARY KEY, email text); \
             CREATE TABLE public.talks (id int PRIMARY KEY, who uuid REFERENCES public.chat_users); \
             INSERT INTO public.chat_users VALUES (gen_random_uuid(), 'x@example.com')",
        )
        .unwrap();
        // The extension's own lookup is kept (once per backend): made before counting.
        crate::schema::extension_schema();
        let kept = crate::plans::kept_plans_starting_with("");
        let plan = Spi::get_one::<pgrx::JsonB>("SELECT public.nura_cutover_plan()")
            .unwrap()
            .unwrap();
        assert_eq!(plan.0["tables"]["chat_users"]["rows"], 1);
        assert_eq!(plan.0["tables"]["chat_users"]["references"][0]["rows"], 0);
        assert_eq!(crate::plans::kept_plans_starting_with(""), kept);
    }

    #[test]
    fn qualified_names_are_read_as_postgresql_reads_them() {
        let name = |s: &str| qualified_name(s);
        let own = |s: Option<&str>, t: &str| Some((s.map(String::from), t.to_string()));
        assert_eq!(name("app.memories"), own(Some("app"), "memories"));
        assert_eq!(name("Memories"), own(None, "memories"));
        assert_eq!(name("\"App\".\"Mem.ories\""), own(Some("App"), "Mem.ories"));
        assert_eq!(name("\"a\"\"b\""), own(None, "a\"b"));
        assert_eq!(name(" app.m "), own(Some("app"), "m"));
        for bad in [
            "", ".", "a.", ".b", "a.b.c", "\"open", "a b", "a.\"\"", "a\"b\"",
        ] {
            assert_eq!(name(bad), None, "{bad}");
        }
    }

    #[test]
    fn entries_name_their_index_and_key() {
        let fault = |v: Value| extra_entry(3, &v).unwrap_err();
        assert_eq!(
            fault(serde_json::json!("x")),
            "extra_references[3] must be an object with the keys table, column and legacy_table"
        );
        assert_eq!(
            fault(serde_json::json!({"table": "t", "column": "c"})),
            "extra_references[3].legacy_table is missing"
        );
        assert_eq!(
            fault(serde_json::json!({"table": "t", "column": 1, "legacy_table": "chat_users"})),
            "extra_references[3].column must be a non-empty string"
        );
        assert!(
            fault(serde_json::json!({"table": "t", "col": "c"})).contains("unknown key \"col\"")
        );
        assert!(
            fault(serde_json::json!({"table": "t", "column": "c", "legacy_table": "users"}))
                .contains("unknown legacy table \"users\"")
        );
        assert_eq!(
            fault(
                serde_json::json!({"table": "a.b.c", "column": "c", "legacy_table": "chat_users"})
            ),
            "extra_references[3].table is not a table name ([schema.]table)"
        );
        let entry = extra_entry(
            0,
            &serde_json::json!({"table": "App.T", "column": "Owner", "legacy_table": "custom_users"}),
        )
        .unwrap();
        assert_eq!(
            (
                entry.schema.as_deref(),
                entry.table.as_str(),
                entry.column.as_str()
            ),
            (Some("app"), "t", "Owner")
        );
    }
}
