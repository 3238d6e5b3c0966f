//! Finish (docs/cutover.md, "Finishing"): the irreversible end of a switched table's cutover.
//! The write-time resolution of its references goes (their keys to `users` stay: they are the
//! result), and so does reverse sync and what a rollback would need (the legacy ids kept for the
//! references); the view stays, for old code, until the caller drops it; with `drop_legacy`, and
//! the view dropped, the kept table goes too. A function, not a procedure: one transaction,
//! which takes its locks all at once or none, trying again after a backoff holding nothing.

use super::locks::{self, NotGranted};
use super::mirror;
use super::references;
use super::state::{self, Step, TableState, KEPT_SCHEMA};
use super::{catalog, checked_legacy_schema};
use crate::errors::{Error, OrRaise};
use crate::jsonb::JsonB;
use crate::migration::{self, Table};
use crate::plans;
use crate::schema::extension_schema;
use crate::sync::Core;
use pgrx::prelude::*;
use serde_json::{json, Map, Value};

/// How many times finish tries to take its locks before it gives up (55P03).
const ATTEMPTS: i32 = 12;

/// `nura_cutover_finish(legacy_schema, tables, drop_legacy)`: see the module's comment. The
/// chosen tables (all switched or finished ones of `legacy_schema` by default) must be switched
/// (55000 otherwise); a finished one is finished already (only `drop_legacy` has work left).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_cutover_finish(
    legacy_schema: default!(Option<&str>, "'public'"),
    tables: default!(Option<Vec<Option<String>>>, "NULL"),
    drop_legacy: default!(Option<bool>, false),
) -> JsonB {
    let ext = extension_schema();
    let legacy = checked_legacy_schema(legacy_schema);
    let drop_legacy = drop_legacy.unwrap_or_else(|| {
        Error::invalid("drop_legacy", "drop_legacy must be true or false").raise()
    });
    // The runner's lock, for this transaction: no CALL runs a step meanwhile (55006).
    let free = plans::read_scalar::<bool>(
        "SELECT pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext('nura_users'), pg_catalog.hashtext('cutover'))",
        &[],
    )
    .or_raise("cutover finish")
    .unwrap_or(false);
    if !free {
        Error::new(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            "a cutover or rollback is running: finish waits for it to end",
        )
        .raise();
    }
    let chosen = chosen(&ext, &legacy.name, tables);
    let core = Core::new(ext.clone());
    // Reverse sync stops when no table stays mirrored after these.
    let names: Vec<&str> = chosen.iter().map(|s| s.legacy_table.as_str()).collect();
    let stop_mirror = !state::load_all(&ext, false)
        .iter()
        .any(|o| o.mirrored && !names.contains(&o.legacy_table.as_str()));
    // Every lock of every table at once, before any work: nothing is held while it waits.
    let mut wanted: Vec<(String, &str)> = Vec::new();
    for s in &chosen {
        wanted.extend(locks_of(s, drop_legacy));
    }
    if stop_mirror && mirror::triggers(&ext).iter().any(|(_, on)| *on) {
        wanted.extend(mirror::trigger_locks(&ext));
    }
    wanted.dedup();
    let waited = take(&names.join(", "), &wanted);
    let mut result = Map::new();
    for s in &chosen {
        let done = finish_table(&core, s, drop_legacy, waited);
        result.insert(s.legacy_table.clone(), done);
    }
    let statements = if stop_mirror {
        mirror::trigger_sql(&ext, false)
    } else {
        Vec::new()
    };
    for sql in &statements {
        plans::execute_once(sql, &[]).or_raise("cutover finish");
    }
    warning!(
        "nura_users cutover: finished {}: the cutover of these tables cannot be rolled back any more",
        chosen
            .iter()
            .map(|s| s.legacy_table.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    JsonB(json!({"tables": result, "irreversible": true}))
}

/// The tables to finish, checked: named ones must be under a cutover of `legacy_schema` and
/// switched or finished; by default, every such table.
fn chosen(ext: &str, legacy_schema: &str, tables: Option<Vec<Option<String>>>) -> Vec<TableState> {
    let states: Vec<TableState> = state::load_all(ext, true)
        .into_iter()
        .filter(|s| s.legacy_schema == legacy_schema)
        .collect();
    let Some(names) = tables else {
        let found: Vec<TableState> = states
            .into_iter()
            .filter(|s| s.switched || s.finished)
            .collect();
        if found.is_empty() {
            Error::new(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("no legacy table of \"{legacy_schema}\" is switched: finish needs a switched table"),
            )
            .raise();
        }
        return found;
    };
    let mut chosen = Vec::new();
    for name in names.into_iter().flatten() {
        let Some(table) = Table::ALL.into_iter().find(|t| t.name() == name) else {
            let shown: String = name.chars().take(64).collect();
            Error::invalid("tables", format!("unknown legacy table \"{shown}\"")).raise()
        };
        match states.iter().find(|s| s.legacy_table == table.name()) {
            Some(s) if s.switched || s.finished => chosen.push(s.clone()),
            found => Error::new(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "finish needs a switched table: {} is {}",
                    table.name(),
                    found.map_or("legacy", TableState::shown_state)
                ),
            )
            .hint("CALL nura_cutover() first.")
            .raise(),
        }
    }
    if chosen.is_empty() {
        Error::invalid("tables", "tables must name at least one legacy table").raise();
    }
    chosen
}

/// The locks finishing `s` needs: ACCESS EXCLUSIVE on each referencing table with resolve
/// triggers (DROP TRIGGER's), and on the kept table when `drop_legacy` drops it.
fn locks_of(s: &TableState, drop_legacy: bool) -> Vec<(String, &'static str)> {
    let ext = extension_schema();
    let mut wanted: Vec<(String, &str)> = references::load(&ext, &s.legacy_table)
        .iter()
        .filter(|r| references::has_triggers(r))
        .map(|r| (r.table(), "ACCESS EXCLUSIVE"))
        .collect();
    if drop_legacy && catalog::relation(KEPT_SCHEMA, &s.legacy_table).is_some() {
        wanted.push((
            format!("{KEPT_SCHEMA}.{}", s.legacy_table),
            "ACCESS EXCLUSIVE",
        ));
    }
    wanted
}

/// Finish one table, its locks held: the resolve triggers go, the table leaves reverse sync,
/// and with `drop_legacy` the kept table goes. What it did. The legacy ids kept for the
/// references stay in `nura_cutover_originals`: nothing reads them any more, and deleting them
/// here would hold the product's tables for as long as that takes (docs/cutover.md says how to
/// delete them).
fn finish_table(core: &Core, s: &TableState, drop_legacy: bool, waited: i32) -> Value {
    let ext = &core.schema;
    let refs = references::load(ext, &s.legacy_table);
    let mut statements: Vec<String> = refs.iter().flat_map(references::finish_sql).collect();
    let dropped = drop_legacy && drop_sql(s, &mut statements);
    for sql in &statements {
        plans::execute_once(sql, &[]).or_raise("cutover finish");
    }
    plans::execute(
        &format!(
            "DELETE FROM {ext}.nura_cutover_mirror_backlog WHERE legacy_table OPERATOR(pg_catalog.=) $1"
        ),
        &[s.legacy_table.as_str().into()],
    )
    .or_raise("cutover finish");
    let mut next = s.clone();
    next.mirrored = false;
    next.finished = true;
    if dropped {
        if let Some(run) = s.capture_run_id {
            migration::end_capture(core, run);
        }
        next.captured = false;
        next.switched = false;
        next.capture_run_id = None;
    }
    state::save(ext, &next);
    state::log_step(
        ext,
        Step {
            table: &s.legacy_table,
            action: "finish",
            object: Some(s.kept_name()),
            detail: json!({"statements": statements, "drop_legacy": dropped}),
            attempts: 1,
            lock_wait_ms: waited,
        },
    );
    json!({"references": refs.len(), "kept_table_dropped": dropped})
}

/// The statements that drop the kept table and the map (with `drop_legacy`), added to
/// `statements`; false when the table is gone already. The view must be gone first (55000):
/// the product drops it when no code uses it any more. A dependent of the kept table (a key
/// from another legacy table) keeps it (2BP01 from DROP TABLE).
fn drop_sql(s: &TableState, statements: &mut Vec<String>) -> bool {
    let kept = format!("{KEPT_SCHEMA}.{}", s.legacy_table);
    if catalog::relation(KEPT_SCHEMA, &s.legacy_table).is_none() {
        return false;
    }
    if let Some((_, kind)) = catalog::relation(&s.legacy_schema, &s.legacy_table) {
        Error::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "{}.{} (a {}) still exists: drop_legacy drops the kept table once the view is gone",
                spi::quote_identifier(&s.legacy_schema),
                s.legacy_table,
                if kind == "v" { "view" } else { "relation" }
            ),
        )
        .hint("DROP VIEW it when no code uses it any more, then finish with drop_legacy again.")
        .raise();
    }
    statements.push(format!(
        "DROP VIEW IF EXISTS {KEPT_SCHEMA}.{}_map",
        s.legacy_table
    ));
    statements.push(format!("DROP TABLE {kept}"));
    true
}

/// Every lock of `wanted` at once, tried again after a backoff (50 ms doubling, holding nothing
/// in between) up to [`ATTEMPTS`] times; the time waited, in ms. 55P03 when never granted.
fn take(table: &str, wanted: &[(String, &str)]) -> i32 {
    if wanted.is_empty() {
        return 0;
    }
    let mut last: Option<NotGranted> = None;
    for attempt in 0..ATTEMPTS {
        match locks::lock_all(wanted) {
            Ok(waited) => return waited,
            Err(not_granted) => last = Some(not_granted),
        }
        let sleep = 0.05 * f64::from(1 << attempt.min(6));
        plans::execute("SELECT pg_catalog.pg_sleep($1)", &[sleep.into()])
            .or_raise("cutover finish");
    }
    let holders = last.map(|n| n.holders).unwrap_or_default();
    Error::new(
        PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
        format!(
            "finish of {table} could not take its locks in {ATTEMPTS} attempts (held by pid {:?})",
            holders
        ),
    )
    .hint("Try again when those sessions are done.")
    .raise()
}
