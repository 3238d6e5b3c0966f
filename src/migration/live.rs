//! Live legacy writes (docs/cutover.md): while a cutover captures a legacy table, each statement
//! that writes it is placed at once, in the writer's transaction, by the migration's own plan
//! and merge, so a live row and a batch row can never be placed differently.
//!
//! - Rows that are there after the statement (inserted or updated) are planned as one batch of
//!   the capture run (`plan::plan_live`) and merged (`apply::apply_rows`). An updated row carries
//!   its values from before the statement: a value the user still holds from it follows the
//!   change (the three-way rule, `rules::follow_change`).
//! - Ids whose rows are gone (deleted) end their tie to the user ([`unplace`]).

use super::apply::{apply_rows, Previous};
use super::plan::{id_filter, plan_live};
use super::report::{Report, Run};
use super::rules::{legacy_row, Table};
use crate::errors::OrRaise;
use crate::log::Source;
use crate::plans;
use crate::sync::{self, Core};
use pgrx::Uuid;
use serde_json::Value;
use std::time::Instant;

/// One statement's changes to `table`: the ids it wrote and the rows as they were before (an
/// UPDATE's or a DELETE's, as `to_json` text).
pub struct Change<'a> {
    pub table: Table,
    pub legacy_schema: &'a str,
    pub ids: Vec<Uuid>,
    pub before: Vec<String>,
}

/// Every id `change` touched, sorted, once each.
pub fn ids_of(change: &Change) -> Vec<Uuid> {
    touched(change, rows_before(change).keys().map(|(id, _)| *id))
}

/// The ids a statement wrote and those of its rows before, sorted, once each.
fn touched(change: &Change, before: impl Iterator<Item = Uuid>) -> Vec<Uuid> {
    let mut ids = change.ids.clone();
    ids.extend(before);
    ids.sort();
    ids.dedup();
    ids
}

/// Place `change` as capture run `run_id` (see the module's comment).
pub fn place(core: &Core, run_id: i64, change: &Change) {
    // The rows before are read (as JSON) once: a bulk UPDATE passes every row it changed.
    let before = rows_before(change);
    let ids = touched(change, before.keys().map(|(id, _)| *id));
    let present = present_ids(change, &ids);
    let gone: Vec<Uuid> = ids
        .iter()
        .filter(|id| present.binary_search(id).is_err())
        .copied()
        .collect();
    if !present.is_empty() {
        place_rows(core, run_id, change, &present, before);
    }
    if !gone.is_empty() {
        unplace(core, change.table, &gone);
    }
}

/// The rows before the statement with their ids, as given (for the backlog).
pub fn before_by_id(change: &Change) -> Vec<(Uuid, String)> {
    change
        .before
        .iter()
        .filter_map(|text| Some((before_by_id_text(change.table, text)?, text.clone())))
        .collect()
}

/// The id of a row before the statement (its to_json text), if it has a readable one.
pub fn before_by_id_text(table: Table, text: &str) -> Option<Uuid> {
    id_of(table, &legacy_row(text))
}

/// The legacy id in a row read by `rules::legacy_row`: its id column's text, as a uuid.
fn id_of(table: Table, row: &Value) -> Option<Uuid> {
    row.get(table.id_column())
        .and_then(Value::as_str)
        .and_then(|s| crate::uuid_input::parse(s.trim()))
}

/// The rows before the statement, by id, as the merge reads rows (`rules::legacy_row`).
fn rows_before(change: &Change) -> Previous {
    change
        .before
        .iter()
        .filter_map(|text| {
            let row = legacy_row(text);
            let id = id_of(change.table, &row)?;
            let Value::Object(mut row) = row else {
                return None;
            };
            row.remove("password_hash");
            Some(((id, change.table), row))
        })
        .collect()
}

/// Which of `ids` have a row in the legacy table now, sorted.
fn present_ids(change: &Change, ids: &[Uuid]) -> Vec<Uuid> {
    let schema = crate::schema::extension_schema();
    let (id, filter) = id_filter(&schema, change.legacy_schema, change.table, "$1");
    let mut present = plans::read_scalar::<Vec<Uuid>>(
        &format!(
            "SELECT COALESCE(pg_catalog.array_agg(DISTINCT {id}), '{{}}') FROM {legacy}.{table} t \
             WHERE {filter}",
            legacy = super::quote(change.legacy_schema),
            table = change.table.name(),
        ),
        &[ids.to_vec().into()],
    )
    .or_raise("placing legacy rows")
    .unwrap_or_default();
    present.sort();
    present
}

/// The rows of `ids`, as they are now, into their users: planned and merged as a batch of the
/// capture run, whose work list is emptied again.
fn place_rows(core: &Core, run_id: i64, change: &Change, ids: &[Uuid], mut before: Previous) {
    before.retain(|(id, _), _| ids.binary_search(id).is_ok());
    let present = [change.table];
    let run = Run {
        id: run_id,
        status: "capturing".into(),
        dry_run: false,
        legacy_schema: change.legacy_schema.to_string(),
        batch_size: i32::MAX,
        report: Ok(Report::new(
            run_id,
            false,
            change.legacy_schema.to_string(),
            &present,
        )),
    };
    let mut report = run.report();
    plan_live(core, run_id, change.legacy_schema, change.table, ids);
    apply_rows(core, &run, 0, before, &mut report);
    let schema = &core.schema;
    // An alias keeps the fingerprints of the rows it placed; a live change replaces them with
    // the row as it is now, so that a row changed back to an earlier content is a change again.
    plans::execute(
        &format!(
            "UPDATE {schema}.user_id_aliases a SET row_hashes = h.hashes \
             FROM (SELECT r.source_id, pg_catalog.array_agg(r.row_hash ORDER BY r.row_no) AS hashes \
                   FROM {schema}.nura_migration_rows r \
                   WHERE r.run_id OPERATOR(pg_catalog.=) $1 AND r.reason IS NULL AND r.row_hash IS NOT NULL \
                   GROUP BY r.source_id) h \
             WHERE a.alias_id OPERATOR(pg_catalog.=) h.source_id AND a.source OPERATOR(pg_catalog.=) $2"
        ),
        &[run_id.into(), change.table.name().into()],
    )
    .or_raise("placing legacy rows");
    plans::execute(
        &format!("DELETE FROM {schema}.nura_migration_rows WHERE run_id OPERATOR(pg_catalog.=) $1"),
        &[run_id.into()],
    )
    .or_raise("placing legacy rows");
}

/// Legacy ids of `table` whose rows are gone: each one's tie to its user ends (docs/cutover.md):
/// its alias and its columns kept in the profile's `service_metadata.legacy` now; the profile of
/// the table's service when no other id of the table backs it, and the user when nothing backs it
/// any more (no auth account, no id of any legacy table), at the commit ([`settle`]), so that a
/// row deleted and written again in one transaction keeps its user and what it holds.
pub fn unplace(core: &Core, table: Table, ids: &[Uuid]) {
    let schema = &core.schema;
    let users = plans::read_scalar::<Vec<Uuid>>(
        &format!(
            "WITH gone AS (DELETE FROM {schema}.user_id_aliases a \
                 WHERE a.source OPERATOR(pg_catalog.=) $1 AND a.alias_id OPERATOR(pg_catalog.=) ANY ($2) \
                 RETURNING a.user_id) \
             SELECT COALESCE(pg_catalog.array_agg(DISTINCT gone.user_id), '{{}}') FROM gone"
        ),
        &[table.name().into(), ids.to_vec().into()],
    )
    .or_raise("removing legacy rows")
    .unwrap_or_default();
    if users.is_empty() {
        return;
    }
    let keys: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    plans::execute(
        &format!(
            "UPDATE {schema}.user_service_profiles p \
             SET service_metadata = pg_catalog.jsonb_set(p.service_metadata, '{{legacy}}', \
                     (p.service_metadata OPERATOR(pg_catalog.->) 'legacy') OPERATOR(pg_catalog.-) $3::text[]), \
                 updated_at = pg_catalog.now() \
             WHERE p.user_id OPERATOR(pg_catalog.=) ANY ($1) AND p.service_type OPERATOR(pg_catalog.=) $2 \
               AND pg_catalog.jsonb_typeof(p.service_metadata OPERATOR(pg_catalog.->) 'legacy') \
                   OPERATOR(pg_catalog.=) 'object' \
               AND (p.service_metadata OPERATOR(pg_catalog.->) 'legacy') OPERATOR(pg_catalog.?|) $3::text[]"
        ),
        &[users.clone().into(), table.service().into(), keys.into()],
    )
    .or_raise("removing legacy rows");
    plans::execute(
        &format!(
            "INSERT INTO {schema}.nura_cutover_unplaced (user_id, legacy_table) \
             SELECT u, $2 FROM pg_catalog.unnest($1::uuid[]) u"
        ),
        &[users.into(), table.name().into()],
    )
    .or_raise("removing legacy rows");
}

/// At the commit of a transaction that ended ties of `user` to `table` (see [`unplace`]): the
/// profile of the table's service goes when no id of the table backs it any more, and the user
/// when nothing backs it (no auth account, no id of any legacy table).
pub fn settle(core: &Core, table: Table, user: Uuid) {
    let schema = &core.schema;
    // Locked first, then looked at: a concurrent placement into this user that commits while we
    // wait is seen by the checks below (each statement reads anew), so its alias keeps the user.
    let exists = plans::scalar::<bool>(
        &format!(
            "SELECT true FROM {schema}.users u WHERE u.id OPERATOR(pg_catalog.=) $1 FOR UPDATE"
        ),
        &[user.into()],
    )
    .or_raise("removing legacy rows")
    .unwrap_or(false);
    if !exists {
        return;
    }
    plans::execute(
        &format!(
            "DELETE FROM {schema}.user_service_profiles p \
             WHERE p.user_id OPERATOR(pg_catalog.=) $1 AND p.service_type OPERATOR(pg_catalog.=) $2 \
               AND NOT EXISTS (SELECT FROM {schema}.user_id_aliases a \
                   WHERE a.user_id OPERATOR(pg_catalog.=) p.user_id AND a.source OPERATOR(pg_catalog.=) $3)"
        ),
        &[user.into(), table.service().into(), table.name().into()],
    )
    .or_raise("removing legacy rows");
    for user in unbacked(schema, &[user]) {
        sync::remove_user(core, user, Source::Migration, Instant::now());
    }
}

/// Ids of `table` with an alias whose rows are gone (deleted while no capture trigger saw it),
/// unplaced as a delete is; their number. The cutover's catch-up runs it after its migration run,
/// so that `users` starts from the table as it is.
pub fn unplace_missing(core: &Core, legacy_schema: &str, table: Table) -> usize {
    let schema = &core.schema;
    let (id, _) = id_filter(schema, legacy_schema, table, "$2");
    let gone = plans::read_scalar::<Vec<Uuid>>(
        &format!(
            "SELECT COALESCE(pg_catalog.array_agg(a.alias_id), '{{}}') FROM {schema}.user_id_aliases a \
             WHERE a.source OPERATOR(pg_catalog.=) $1 \
               AND NOT EXISTS (SELECT FROM {legacy}.{name} t WHERE {id} OPERATOR(pg_catalog.=) a.alias_id)",
            legacy = super::quote(legacy_schema),
            name = table.name(),
        ),
        &[table.name().into()],
    )
    .or_raise("removing legacy rows")
    .unwrap_or_default();
    if !gone.is_empty() {
        unplace(core, table, &gone);
    }
    gone.len()
}

/// Which of `users` nothing backs any more: no auth account, no id of a legacy table.
fn unbacked(schema: &str, users: &[Uuid]) -> Vec<Uuid> {
    let tables: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
    // Not read-only: a statement of its own snapshot, which sees what committed while `settle`
    // waited for the user's lock.
    let candidates = plans::scalar::<Vec<Uuid>>(
        &format!(
            "SELECT COALESCE(pg_catalog.array_agg(u.id), '{{}}') FROM {schema}.users u \
             WHERE u.id OPERATOR(pg_catalog.=) ANY ($1) \
               AND NOT EXISTS (SELECT FROM {schema}.user_id_aliases a \
                   WHERE a.user_id OPERATOR(pg_catalog.=) u.id AND a.source OPERATOR(pg_catalog.=) ANY ($2))"
        ),
        &[users.to_vec().into(), tables.into()],
    )
    .or_raise("removing legacy rows")
    .unwrap_or_default();
    // Without auth.users (plain PostgreSQL) nobody has an auth account.
    let auth = sync::auth_users_exists();
    candidates
        .into_iter()
        .filter(|id| !(auth && sync::auth_account_exists(*id)))
        .collect()
}
