//! Operations (`docs/operations.md`): consistency check and reconcile against `auth.users`, log
//! purge, GDPR erasure. `nura_sync_stats` is SQL (`sql/operations.sql`).

use crate::errors::raise;
use crate::errors::OrRaise;
use crate::jsonb::JsonB;
use crate::log::{LogEntry, Source, SyncType};
use crate::schema::extension_schema;
use crate::subtxn;
use crate::sync::{self, AuthUser, Core, SyncRequest, AUTH_SELECT};
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
    .or_raise("consistency check");
    problems
}

/// Auth users missing in `users`, auth-owned fields that differ, and `users` rows whose auth user
/// is gone (`docs/operations.md`). Empty when all is in step.
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
        "moved_user": 0,
        "failed": 0,
    });
    let problems = find_problems(&core);
    let moves = moved_users(&core, &problems);
    let moved: std::collections::HashSet<Uuid> =
        moves.iter().flat_map(|(from, to)| [*from, *to]).collect();
    for (from, to) in moves {
        let started = Instant::now();
        let repaired = dry_run
            || subtxn::run(|| {
                sync::move_user(&core, from, to, Source::Reconcile, started);
                let mut req = SyncRequest::new(Source::Reconcile, to);
                req.load_auth = true;
                if let Err(refusal) = sync::sync_user(&core, &req, started, false) {
                    refusal.raise(to);
                }
            })
            .map_err(|failure| {
                core.log(&LogEntry::failed(
                    Some(to),
                    Source::Reconcile,
                    failure.code(),
                    failure.message,
                    started,
                ));
            })
            .is_ok();
        let key = if repaired { "moved_user" } else { "failed" };
        counts[key] = json!(counts[key].as_i64().unwrap_or(0) + 1);
    }
    // Orphans first: one may hold the address of a missing auth user (a deleted account's, given
    // to a new signup meanwhile), which is then created in the same call.
    let mut problems = problems;
    problems.sort_by_key(|p| p.kind != "orphaned_user");
    for problem in problems.into_iter().filter(|p| !moved.contains(&p.user_id)) {
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
                    failure.code(),
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

/// Auth users whose id changed while no trigger saw it (the sync detached, or an update's old
/// trigger not yet replaced): the old row is an orphan holding the email (or the phone) of an auth
/// user missing in `users`. Reconcile moves it to the new id (`docs/sync.md`) instead of deleting
/// the one and creating the other, which would lose the user's profiles and edits. Only an auth row
/// made before the orphan's last sync from auth is the same account under a new id: one made after
/// it is a new signup with a recycled address or phone (its account deleted meanwhile), which
/// inherits nothing, as at signup. Pairs (orphan, auth id), each id at most once.
fn moved_users(core: &Core, problems: &[Problem]) -> Vec<(Uuid, Uuid)> {
    let ids = |kind: &str| -> Vec<Uuid> {
        problems
            .iter()
            .filter(|p| p.kind == kind)
            .map(|p| p.user_id)
            .collect()
    };
    let (orphans, missing) = (ids("orphaned_user"), ids("missing_in_users"));
    if orphans.is_empty() || missing.is_empty() {
        return Vec::new();
    }
    let schema = &core.schema;
    let candidates = crate::plans::rows(
        &format!(
            "SELECT o.id, a.id FROM {schema}.users o JOIN auth.users a \
                 ON (pg_catalog.lower(pg_catalog.btrim(a.email::text)) OPERATOR(pg_catalog.=) pg_catalog.lower(o.email) \
                     OR (a.phone IS NOT NULL AND a.phone OPERATOR(pg_catalog.=) o.phone_number)) \
                AND a.created_at OPERATOR(pg_catalog.<=) o.auth_synced_at \
             WHERE o.id OPERATOR(pg_catalog.=) ANY ($1) AND a.id OPERATOR(pg_catalog.=) ANY ($2) \
             ORDER BY o.id, a.id"
        ),
        &[orphans.into(), missing.into()],
        |r| Ok((r.get::<Uuid>(1)?, r.get::<Uuid>(2)?)),
    )
    .or_raise("reconcile");
    let mut used = std::collections::HashSet::new();
    let mut pairs = Vec::new();
    for (from, to) in candidates {
        let (Some(from), Some(to)) = (from, to) else {
            continue;
        };
        if !used.contains(&from) && !used.contains(&to) {
            used.insert(from);
            used.insert(to);
            pairs.push((from, to));
        }
    }
    pairs
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
    .or_raise("reading older_than")
    .unwrap_or(false);
    if negative {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "older_than must not be negative",
            None,
        );
    }
    let schema = extension_schema();
    // nura_log_cutoff (sql/operations.sql) keeps any interval in range; a database whose ALTER
    // EXTENSION UPDATE to 0.6.0 is still to come lacks it.
    let cutoff = if crate::schema::has_function(&schema, "nura_log_cutoff(interval)") {
        format!("(SELECT {schema}.nura_log_cutoff($1))")
    } else {
        "(pg_catalog.now() OPERATOR(pg_catalog.-) $1)".to_string()
    };
    Spi::get_one_with_args::<i64>(
        &format!(
            "WITH gone AS (DELETE FROM {schema}.user_sync_logs \
                 WHERE created_at OPERATOR(pg_catalog.<) {cutoff} \
                 RETURNING 1) \
             SELECT pg_catalog.count(*) FROM gone"
        ),
        &[older_than.into()],
    )
    .or_raise("purging logs")
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
    let erasure = erase_user(&core, user_id, started);
    JsonB(json!({
        "user_id": user_id.to_string(),
        "erased": erasure.erased,
        "profiles_deleted": erasure.profiles_deleted,
        "aliases_deleted": erasure.aliases_deleted,
        "log_rows_scrubbed": erasure.log_rows_scrubbed,
    }))
}

/// What an erasure removed.
pub struct Erasure {
    pub erased: bool,
    pub profiles_deleted: i64,
    pub aliases_deleted: i64,
    pub log_rows_scrubbed: i64,
}

/// GDPR erasure (`docs/operations.md`) of a user the caller has checked is not in `auth.users`: the
/// row goes (profiles and aliases cascade), personal data leaves the log, and one log row without
/// personal data records the erasure.
fn erase_user(core: &Core, id: Uuid, started: Instant) -> Erasure {
    let schema = &core.schema;
    let (erased, profiles, aliases) = Spi::get_three_with_args::<bool, i64, i64>(
        &format!(
            "WITH profiles AS (SELECT pg_catalog.count(*) AS n FROM {schema}.user_service_profiles \
                               WHERE user_id OPERATOR(pg_catalog.=) $1), \
                  aliases AS (SELECT pg_catalog.count(*) AS n FROM {schema}.user_id_aliases \
                              WHERE user_id OPERATOR(pg_catalog.=) $1), \
                  gone AS (DELETE FROM {schema}.users WHERE id OPERATOR(pg_catalog.=) $1 RETURNING 1) \
             SELECT EXISTS (SELECT FROM gone), (SELECT n FROM profiles), (SELECT n FROM aliases)"
        ),
        &[id.into()],
    )
    .or_raise("erasure");
    let erased = erased.unwrap_or(false);
    let log_rows_scrubbed = core.scrub_log_pii(id);
    if !erased && log_rows_scrubbed == 0 {
        // Nothing of this id was left to erase: no erasure to record.
        return Erasure {
            erased,
            profiles_deleted: 0,
            aliases_deleted: 0,
            log_rows_scrubbed,
        };
    }
    // The erasure's own row is anonymous: it records that an erasure happened, not of whom.
    core.log(&LogEntry::event(
        None,
        Source::BackendApi,
        SyncType::Erased,
        started,
    ));
    if erased {
        core.notify(id, SyncType::Erased);
    }
    Erasure {
        erased,
        profiles_deleted: if erased { profiles.unwrap_or(0) } else { 0 },
        aliases_deleted: if erased { aliases.unwrap_or(0) } else { 0 },
        log_rows_scrubbed,
    }
}
