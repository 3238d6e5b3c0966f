//! `nura_rollback_migration(run_id)` (docs/migration.md), and the record it reads: what the run
//! created (`nura_migration_created`), written by the backfill and the batches.

use super::argument_error;
use super::report::Run;
use crate::errors::raise;
use crate::errors::OrRaise;
use crate::jsonb::JsonB;
use crate::log::{LogEntry, Source, SyncType};
use crate::plans;
use crate::schema::extension_schema;
use crate::sync::{self, Core};
use pgrx::prelude::*;
use pgrx::Uuid;
use serde_json::{json, Value};
use std::time::Instant;

/// The statement that records, in `nura_migration_created`, the users `ids` of `from` as what
/// run `$1` created (`what`, an expression of `from`): as one array per kind, or one row per
/// user in a database whose `ALTER EXTENSION nura_users UPDATE` is still to come.
pub(super) fn record_created(schema: &str, ids: &str, what: &str, from: &str) -> String {
    if created_as_arrays(schema) {
        format!(
            "INSERT INTO {schema}.nura_migration_created (run_id, what, user_ids) \
             SELECT $1, {what}, pg_catalog.array_agg({ids}) FROM {from} GROUP BY 2"
        )
    } else {
        format!(
            "INSERT INTO {schema}.nura_migration_created (run_id, user_id, what) \
             SELECT $1, {ids}, {what} FROM {from} ON CONFLICT DO NOTHING"
        )
    }
}

/// 55000 while a cutover captures a legacy table, or once one is finished (docs/cutover.md):
/// live writes place rows on top of what the runs placed, and the product's keys point to the
/// users; undoing a run under them would delete users the product holds.
fn refuse_while_captured(schema: &str, run_id: i64) {
    // A catalog not yet updated to 0.7.0 has no cutover.
    if !crate::schema::has_column(schema, "nura_cutover_tables", "finished") {
        return;
    }
    let captured = plans::read_scalar::<String>(
        &format!(
            "SELECT pg_catalog.string_agg(legacy_table, ', ' ORDER BY legacy_table) \
             FROM {schema}.nura_cutover_tables WHERE captured OR finished"
        ),
        &[],
    )
    .or_raise("migration");
    if let Some(tables) = captured {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "migration run {run_id} cannot be rolled back while a cutover captures or has finished {tables}"
            ),
            Some("CALL nura_cutover_rollback() first (a finished cutover has no way back)."),
        );
    }
}

/// Whether `nura_migration_created` keeps one array of users per kind (see [`record_created`]).
fn created_as_arrays(schema: &str) -> bool {
    crate::schema::has_column(schema, "nura_migration_created", "user_ids")
}

/// Undo a run (docs/migration.md). Users it created that no auth user owns now go (their
/// profiles and aliases with them); profiles and aliases it added to users without an auth
/// account go; auth-backed users (backfilled, merged into, or adopted since) keep everything.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_rollback_migration(run_id: Option<i64>) -> JsonB {
    let Some(run_id) = run_id else {
        argument_error("run_id must not be NULL");
    };
    let core = Core::new(extension_schema());
    let schema = &core.schema;
    let run = Run::load_existing(&core, run_id);
    if run.dry_run {
        argument_error(&format!(
            "migration run {run_id} was a dry run: it wrote nothing to roll back"
        ));
    }
    if run.status == "rolled_back" {
        return JsonB(stored_report(schema, run_id)["rollback"].clone());
    }
    refuse_while_captured(schema, run_id);
    let backed = AuthBacked(sync::auth_users_exists());
    let started = Instant::now();
    // users first, as every writer takes it (an update of the extension holds users, then
    // nura_migration_created; reading the latter first could deadlock with it).
    plans::execute(
        &format!("LOCK TABLE {schema}.users IN ROW EXCLUSIVE MODE"),
        &[],
    )
    .or_raise("migration");
    let removed = remove_created(schema, run_id, backed);
    let aliases = plans::scalar::<i64>(
        &format!(
            "WITH gone AS (DELETE FROM {schema}.user_id_aliases al \
                 WHERE al.run_id OPERATOR(pg_catalog.=) $1 AND NOT {} RETURNING 1) \
             SELECT pg_catalog.count(*) FROM gone",
            backed.sql("al.user_id")
        ),
        &[run_id.into()],
    )
    .or_raise("migration")
    .unwrap_or(0);
    log_removals(&core, &removed.users, started);
    for table in ["nura_migration_created", "nura_migration_rows"] {
        plans::execute(
            &format!("DELETE FROM {schema}.{table} WHERE run_id OPERATOR(pg_catalog.=) $1"),
            &[run_id.into()],
        )
        .or_raise("migration");
    }
    let rollback = json!({
        "run_id": run_id,
        "users_removed": removed.users.len(),
        "profiles_removed": removed.profiles,
        "aliases_removed": aliases,
        "users_kept": removed.kept,
    });
    mark_rolled_back(schema, run_id, &rollback);
    JsonB(rollback)
}

/// SQL for whether a user is backed by an auth user (never, without `auth.users`).
#[derive(Clone, Copy)]
struct AuthBacked(bool);

impl AuthBacked {
    /// Whether the user of id `col` has an auth user.
    fn sql(self, col: &str) -> String {
        if self.0 {
            format!("EXISTS (SELECT FROM auth.users a WHERE a.id OPERATOR(pg_catalog.=) {col})")
        } else {
            "false".to_string()
        }
    }
}

/// What [`remove_created`] did.
#[derive(Default)]
struct Removed {
    /// Users of the run kept because an auth user owns them.
    kept: i64,
    users: Vec<Uuid>,
    profiles: i64,
}

/// Remove what the run created and still holds: a user it created or gave a profile to still
/// holds an alias of the run (every legacy row it placed has one; aliases go with their user). A
/// user deleted since and made again under the same id (by a later run or through the API) holds
/// none. Counted and removed in one statement, which reads the record once and sees everything
/// as it was.
fn remove_created(schema: &str, run_id: i64, backed: AuthBacked) -> Removed {
    let created = created_sql(schema);
    plans::first_row(
        &format!(
            "WITH created AS MATERIALIZED ({created}), \
                  placed AS MATERIALIZED (SELECT c.what, c.user_id FROM created c \
                      WHERE c.user_id IS NOT NULL \
                        AND (c.what OPERATOR(pg_catalog.=) 'backfill' \
                             OR EXISTS (SELECT FROM {schema}.user_id_aliases a \
                                        WHERE a.user_id OPERATOR(pg_catalog.=) c.user_id \
                                          AND a.run_id OPERATOR(pg_catalog.=) $1))), \
                  users_gone AS (DELETE FROM {schema}.users u USING placed c \
                      WHERE c.what OPERATOR(pg_catalog.=) 'user' \
                        AND u.id OPERATOR(pg_catalog.=) c.user_id AND NOT {} RETURNING u.id), \
                  profiles_gone AS (DELETE FROM {schema}.user_service_profiles p USING placed c \
                      WHERE c.what OPERATOR(pg_catalog.=) ('profile:' OPERATOR(pg_catalog.||) p.service_type) \
                        AND p.user_id OPERATOR(pg_catalog.=) c.user_id AND NOT {} RETURNING 1) \
             SELECT (SELECT pg_catalog.count(*) FROM placed c \
                     WHERE c.what OPERATOR(pg_catalog.=) 'backfill' \
                        OR (c.what OPERATOR(pg_catalog.=) 'user' AND {})) AS kept, \
                    (SELECT pg_catalog.array_agg(id) FROM users_gone) AS removed, \
                    (SELECT pg_catalog.count(*) FROM profiles_gone) AS profiles",
            backed.sql("u.id"),
            backed.sql("p.user_id"),
            backed.sql("c.user_id")
        ),
        &[run_id.into()],
        |r| {
            Ok(Removed {
                kept: r.get::<i64>(1)?.unwrap_or(0),
                users: r.get::<Vec<Uuid>>(2)?.unwrap_or_default(),
                profiles: r.get::<i64>(3)?.unwrap_or(0),
            })
        },
    )
    .or_raise("migration")
    .unwrap_or_default()
}

/// What run `$1` created, one row per kind and user, under the user's current id: an id whose
/// user holds no alias of the run (gone, or made again since) is followed through its adoption
/// alias, if it has one.
fn created_sql(schema: &str) -> String {
    if created_as_arrays(schema) {
        format!(
            "SELECT DISTINCT c.what, \
                    COALESCE(CASE WHEN mine.yes THEN u.id END, al.user_id, u.id) AS user_id \
             FROM {schema}.nura_migration_created c \
             CROSS JOIN LATERAL pg_catalog.unnest(c.user_ids) AS x(id) \
             LEFT JOIN {schema}.users u ON u.id OPERATOR(pg_catalog.=) x.id \
             LEFT JOIN LATERAL (SELECT true AS yes FROM {schema}.user_id_aliases r \
                                WHERE r.user_id OPERATOR(pg_catalog.=) u.id \
                                  AND r.run_id OPERATOR(pg_catalog.=) $1 LIMIT 1) mine ON true \
             LEFT JOIN {schema}.user_id_aliases al ON mine.yes IS NULL \
                   AND al.alias_id OPERATOR(pg_catalog.=) x.id \
                   AND al.source OPERATOR(pg_catalog.=) 'adoption' \
             WHERE c.run_id OPERATOR(pg_catalog.=) $1"
        )
    } else {
        // One row per user, which followed adoptions and deletions by its foreign key.
        format!(
            "SELECT c.what, c.user_id FROM {schema}.nura_migration_created c \
             WHERE c.run_id OPERATOR(pg_catalog.=) $1"
        )
    }
}

/// The removed users' log rows keep no personal data, and each removal has its log row.
fn log_removals(core: &Core, removed: &[Uuid], started: Instant) {
    if removed.is_empty() {
        return;
    }
    core.scrub_logs_pii(removed);
    let logs: Vec<LogEntry> = removed
        .iter()
        .map(|id| {
            let payloads = (None, None);
            LogEntry::success(
                Source::Migration,
                *id,
                SyncType::Deleted,
                Vec::new(),
                payloads,
                started,
            )
            .timed_now()
        })
        .collect();
    core.log_many(&logs);
}

/// The run's report as stored, as plain JSON: a run whose report cannot be read as a `Report`
/// can still be rolled back.
fn stored_report(schema: &str, run_id: i64) -> Value {
    plans::scalar::<JsonB>(
        &format!(
            "SELECT report FROM {schema}.nura_migration_runs WHERE id OPERATOR(pg_catalog.=) $1"
        ),
        &[run_id.into()],
    )
    .or_raise("migration")
    .map_or(Value::Null, |j| j.0)
}

/// The run is rolled back; its report keeps what the rollback did under `rollback`.
fn mark_rolled_back(schema: &str, run_id: i64, rollback: &Value) {
    let mut value = stored_report(schema, run_id);
    value["rollback"] = rollback.clone();
    plans::execute(
        &format!(
            "UPDATE {schema}.nura_migration_runs SET status = 'rolled_back', report = $2, \
                 finished_at = COALESCE(finished_at, pg_catalog.now()) \
             WHERE id OPERATOR(pg_catalog.=) $1"
        ),
        &[run_id.into(), JsonB(value).into()],
    )
    .or_raise("migration");
}
