//! Operations (SPEC §4.4): consistency check and reconcile against `auth.users`, log purge,
//! GDPR erasure. `nura_sync_stats` is SQL (`sql/operations.sql`).

use crate::errors::raise;
use crate::jsonb::JsonB;
use crate::schema::extension_schema;
use crate::subtxn;
use crate::sync::{self, AuthUser, Core, LogEntry, Source, SyncRequest, AUTH_SELECT};
use crate::user_row::UserRow;
use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::Uuid;
use serde_json::{json, Value};
use std::time::Instant;

extension_sql_file!(
    "../sql/operations.sql",
    name = "operations",
    requires = ["schema"]
);

/// One problem found by the consistency check.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub user_id: Uuid,
    pub kind: &'static str,
    pub detail: Value,
}

const BATCH: i64 = 1000;

/// Compare `users` with `auth.users`: auth users missing in `users`, auth-owned fields that
/// differ, and `users` rows synced from an auth user that is gone. Reads in batches.
pub fn find_problems(core: &Core) -> Vec<Problem> {
    let mut problems = Vec::new();
    if !sync::auth_users_exists() {
        return problems;
    }
    let schema = &core.schema;
    // The check compares auth-owned fields only. privacy_settings, the one jsonb column, is the
    // user's (any depth a service stored) and is not read, so that no user's value can fail the
    // check for everyone.
    let cols = UserRow::COLUMNS
        .iter()
        .map(|c| match *c {
            "privacy_settings" => "'{}'::pg_catalog.jsonb".to_string(),
            c => format!("u.{c}"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let compare = format!(
        "SELECT a.id AS auth_id, (u.id IS NOT NULL) AS has_row, {AUTH_SELECT}, {cols} \
         FROM auth.users a LEFT JOIN {schema}.users u ON u.id OPERATOR(pg_catalog.=) a.id \
         ORDER BY a.id"
    );
    let orphans = format!(
        "SELECT u.id FROM {schema}.users u WHERE u.auth_synced_at IS NOT NULL \
         AND NOT EXISTS (SELECT FROM auth.users a WHERE a.id OPERATOR(pg_catalog.=) u.id) \
         ORDER BY u.id"
    );
    Spi::connect(|client| {
        let mut cursor = client.open_cursor(&compare, &[]);
        loop {
            let batch = cursor.fetch(BATCH)?;
            if batch.is_empty() {
                break;
            }
            for row in batch {
                let id: Uuid = row
                    .get_by_name("auth_id")?
                    .expect("auth.users.id is NOT NULL");
                if !row.get_by_name::<bool, _>("has_row")?.unwrap_or(false) {
                    problems.push(Problem {
                        user_id: id,
                        kind: "missing_in_users",
                        detail: json!({}),
                    });
                    continue;
                }
                // auth_id, has_row, AUTH_SELECT, then the users columns.
                let auth = AuthUser::from_spi_at(&row, 3)?;
                let current = UserRow::from_tuple_at(&row, 3 + sync::AUTH_COLUMNS)?;
                let fields = sync::auth_mismatches(&current, id, &auth);
                if !fields.is_empty() {
                    problems.push(Problem {
                        user_id: id,
                        kind: "field_mismatch",
                        detail: json!({ "fields": fields }),
                    });
                }
            }
        }
        for row in client.select(&orphans, None, &[])? {
            problems.push(Problem {
                user_id: row.get::<Uuid>(1)?.expect("users.id is NOT NULL"),
                kind: "orphaned_user",
                detail: json!({}),
            });
        }
        Ok::<_, pgrx::spi::Error>(())
    })
    .unwrap_or_else(|e| error!("nura_users: consistency check failed: {e}"));
    problems
}

/// Auth users missing in `users`, auth-owned fields that differ, and `users` rows whose auth user
/// is gone (SPEC §4.4). Empty when all is in step.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_check_consistency() -> TableIterator<
    'static,
    (
        name!(user_id, Uuid),
        name!(problem, String),
        name!(detail, JsonB),
    ),
> {
    let core = Core::new(extension_schema());
    let rows: Vec<_> = find_problems(&core)
        .into_iter()
        .map(|p| (p.user_id, p.kind.to_string(), JsonB(p.detail)))
        .collect();
    TableIterator::new(rows)
}

/// Repair what `nura_check_consistency` finds, through the sync core (logged with source
/// `reconcile`). Returns the count per problem fixed (or, with `dry_run`, found), and how many
/// repairs failed.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_reconcile(dry_run: default!(bool, false)) -> JsonB {
    let core = Core::new(extension_schema());
    let mut counts = json!({
        "dry_run": dry_run,
        "missing_in_users": 0,
        "field_mismatch": 0,
        "orphaned_user": 0,
        "failed": 0,
    });
    for problem in find_problems(&core) {
        let started = Instant::now();
        let repaired = dry_run
            || subtxn::run(|| match problem.kind {
                "orphaned_user" => {
                    sync::remove_user(&core, problem.user_id, Source::Reconcile, started);
                }
                _ => {
                    let mut req = SyncRequest::new(Source::Reconcile, problem.user_id);
                    req.load_auth = true;
                    if let Err(refusal) = sync::sync_user(&core, &req, started, false) {
                        refusal.raise(problem.user_id);
                    }
                }
            })
            .map_err(|failure| {
                let entry = LogEntry::failed(
                    Some(problem.user_id),
                    Source::Reconcile,
                    failure.sqlstate(),
                    failure.message,
                    started,
                );
                core.log(&entry);
            })
            .is_ok();
        let key = if repaired { problem.kind } else { "failed" };
        counts[key] = json!(counts[key].as_i64().unwrap_or(0) + 1);
    }
    JsonB(counts)
}

/// `now() - age` as a time from which on log rows count, for any interval PostgreSQL holds:
/// beyond 6,000 years back (no log row is that old) it is `-infinity`, beyond 200,000 years ahead
/// `infinity`, where the subtraction itself would fail with 22008 (sql/operations.sql does the
/// same for `nura_sync_stats`).
fn cutoff(age: &str) -> String {
    format!(
        "(CASE WHEN {age} OPERATOR(pg_catalog.>) '6000 years'::pg_catalog.interval \
                THEN '-infinity'::pg_catalog.timestamptz \
               WHEN {age} OPERATOR(pg_catalog.<) '-200000 years'::pg_catalog.interval \
                THEN 'infinity'::pg_catalog.timestamptz \
               ELSE pg_catalog.now() OPERATOR(pg_catalog.-) {age} END)"
    )
}

/// Delete log rows older than `older_than`; returns how many.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_purge_sync_logs(older_than: Option<Interval>) -> i64 {
    let Some(older_than) = older_than else {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "older_than must not be NULL",
            None,
        );
    };
    let negative = Spi::get_one_with_args::<bool>(
        "SELECT $1 OPERATOR(pg_catalog.<) '0'::pg_catalog.interval",
        &[older_than.into()],
    )
    .unwrap_or_else(|e| error!("nura_users: reading older_than failed: {e}"))
    .unwrap_or(false);
    if negative {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "older_than must not be negative",
            None,
        );
    }
    let schema = extension_schema();
    Spi::get_one_with_args::<i64>(
        &format!(
            "WITH gone AS (DELETE FROM {schema}.user_sync_logs \
                 WHERE created_at OPERATOR(pg_catalog.<) {} \
                 RETURNING 1) \
             SELECT pg_catalog.count(*) FROM gone",
            cutoff("$1")
        ),
        &[older_than.into()],
    )
    .unwrap_or_else(|e| error!("nura_users: purging logs failed: {e}"))
    .unwrap_or(0)
}

/// GDPR erasure of a user who is not (or no longer) in `auth.users`: the row, its profiles and
/// aliases go, personal data leaves its log rows, and one log row without personal data records
/// the erasure.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_erase_user(user_id: Uuid) -> JsonB {
    let started = Instant::now();
    let core = Core::new(extension_schema());
    if sync::auth_users_exists() && sync::auth_account_exists(user_id) {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("user {user_id} still exists in auth.users"),
            Some("Delete the user in Supabase Auth; its deletion erases the user here through the trigger."),
        );
    }
    let erasure = sync::erase_user(&core, user_id, started);
    JsonB(json!({
        "user_id": user_id.to_string(),
        "erased": erasure.erased,
        "profiles_deleted": erasure.profiles_deleted,
        "aliases_deleted": erasure.aliases_deleted,
        "log_rows_scrubbed": erasure.log_rows_scrubbed,
    }))
}
