//! Phase 1, the backfill: every `auth.users` row without a `users` row gets one, as the auth
//! trigger would have made it (same code: [`sync::desired_row`]), a batch per step. A batch's
//! users whose email a `users` row holds go through the sync core one by one, as a signup would.
//! The users a run creates (here and in its batches) are recorded for its rollback.

use super::report::{Phase, Report, Run};
use super::rollback::record_created;
use crate::errors::OrRaise;
use crate::log::{LogEntry, Source, SyncType};
use crate::plans;
use crate::subtxn;
use crate::sync::{self, AuthUser, Core, SyncRequest, AUTH_SELECT};
use crate::user_row::{transaction_now, Micros, UserRow, BOOKKEEPING};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::Uuid;
use std::collections::HashSet;
use std::time::Instant;

/// One step of the backfill; the run moves on to its plan when no auth user is left (at once
/// without `auth.users`; a dry run only counts them).
pub(super) fn step(core: &Core, run: &Run, report: &mut Report) {
    if !sync::auth_users_exists() {
        report.phase = Phase::Plan;
    } else if run.dry_run {
        report.auth_backfilled = count_missing_auth(core);
        report.phase = Phase::Plan;
    } else {
        let done = backfill_batch(core, run.id, run.batch_size, report);
        if done {
            report.phase = Phase::Plan;
        }
        notice!(
            "nura_users migration run {}: {} auth users backfilled",
            run.id,
            report.auth_backfilled
        );
    }
}

fn count_missing_auth(core: &Core) -> i64 {
    let schema = &core.schema;
    plans::read_scalar::<i64>(
        &format!(
            "SELECT pg_catalog.count(*) FROM auth.users a WHERE NOT EXISTS \
             (SELECT FROM {schema}.users u WHERE u.id OPERATOR(pg_catalog.=) a.id)"
        ),
        &[],
    )
    .or_raise("migration")
    .unwrap_or(0)
}

/// The `users` row the auth trigger would have written for this auth user.
pub(super) fn backfill_row(
    id: Uuid,
    auth: &AuthUser,
    created_at: Option<Micros>,
    now: Micros,
) -> UserRow {
    let mut req = SyncRequest::new(Source::SupabaseAuth, id);
    req.auth = Some(auth.clone());
    let (mut row, _) = sync::desired_row(&UserRow::new(id, now), &req, now);
    if created_at.is_some() {
        row.created_at = created_at;
    }
    row
}

/// An auth user as selected by `a.id AS auth_id, a.created_at AS auth_created_at, AUTH_SELECT`:
/// its id, when it was created, and the user.
pub(super) fn auth_row(
    r: &pgrx::spi::SpiHeapTupleData<'_>,
) -> pgrx::spi::Result<(Uuid, Option<Micros>, AuthUser)> {
    let id: Uuid = r
        .get_by_name("auth_id")?
        .unwrap_or_else(|| Uuid::from_bytes([0; 16]));
    let created_at = r
        .get_by_name::<TimestampWithTimeZone, _>("auth_created_at")?
        .map(pg_sys::TimestampTz::from);
    Ok((id, created_at, AuthUser::from_spi_at(r, 3)?))
}

/// Insert users, each recorded as what the run created (`nura_migration_created.what`); returns
/// the ids inserted. With `skip_taken`, a row whose id or email is taken is left out (the
/// backfill hands those to the sync core); without, a taken one raises 23505.
pub(super) fn insert_users(
    core: &Core,
    run_id: i64,
    rows: &[(UserRow, &str)],
    skip_taken: bool,
) -> Vec<Uuid> {
    if rows.is_empty() {
        return Vec::new();
    }
    let schema = &core.schema;
    let cols = UserRow::column_list();
    let users: Vec<&UserRow> = rows.iter().map(|(row, _)| row).collect();
    let what_param = UserRow::COLUMNS.len() + 2;
    let mut args: Vec<DatumWithOid<'static>> = vec![run_id.into()];
    args.extend(UserRow::column_arrays(&users));
    args.push(plans::column(rows, |(_, what)| *what));
    let record = record_created(
        schema,
        "n.id",
        "src.what",
        "n JOIN src ON src.id OPERATOR(pg_catalog.=) n.id",
    );
    plans::scalar::<Vec<Uuid>>(
        &format!(
            "WITH src AS (SELECT * FROM ROWS FROM ({}, pg_catalog.unnest(${what_param}::text[])) \
                          AS x({cols}, what)), \
                  n AS (INSERT INTO {schema}.users ({cols}) SELECT {cols} FROM src \
                        {} RETURNING id), \
                  t AS ({record}) \
             SELECT pg_catalog.array_agg(n.id) FROM n",
            UserRow::unnest_list(2),
            if skip_taken {
                "ON CONFLICT DO NOTHING"
            } else {
                ""
            }
        ),
        &args,
    )
    .or_raise("migration")
    .unwrap_or_default()
}

/// The log row of a user the migration created or changed; its duration is the time this user
/// took so far (the batch's statements are shared, and its log rows are written together).
pub(super) fn log_entry(
    before: &UserRow,
    after: &UserRow,
    sync_type: SyncType,
    started: Instant,
) -> Option<LogEntry> {
    let changed: Vec<&'static str> = before
        .differing_fields(after)
        .into_iter()
        .filter(|f| !BOOKKEEPING.contains(f) && *f != "created_at" && *f != "id")
        .collect();
    if changed.is_empty() && sync_type == SyncType::Updated {
        return None;
    }
    let (b, a) = crate::log::log_payloads(before, after, &changed, after.deleted_at.is_some());
    let before_data = if sync_type == SyncType::Updated {
        b
    } else {
        None
    };
    Some(
        LogEntry::success(
            Source::Migration,
            after.id,
            sync_type,
            changed,
            (before_data, a),
            started,
        )
        .timed_now(),
    )
}

/// Backfill one batch of auth users without a `users` row; true when none is left.
fn backfill_batch(core: &Core, run_id: i64, batch_size: i32, report: &mut Report) -> bool {
    let schema = &core.schema;
    let after = report
        .backfill_after
        .as_deref()
        .and_then(crate::uuid_input::parse)
        .unwrap_or_else(|| Uuid::from_bytes([0; 16]));
    let found = plans::rows(
        &format!(
            "SELECT a.id AS auth_id, a.created_at AS auth_created_at, {AUTH_SELECT} \
             FROM auth.users a \
             WHERE a.id OPERATOR(pg_catalog.>) $1 AND NOT EXISTS \
                   (SELECT FROM {schema}.users u WHERE u.id OPERATOR(pg_catalog.=) a.id) \
             ORDER BY a.id LIMIT $2"
        ),
        &[after.into(), (batch_size as i64).into()],
        auth_row,
    )
    .or_raise("migration");
    let now = transaction_now();
    let started = Instant::now();
    let rows: Vec<(UserRow, &str)> = found
        .iter()
        .map(|(id, created, auth)| (backfill_row(*id, auth, *created, now), "backfill"))
        .collect();
    let inserted = insert_users(core, run_id, &rows, true);
    let was_inserted: HashSet<Uuid> = inserted.iter().copied().collect();
    core.create_default_profiles(&inserted);
    let mut logs = Vec::new();
    for (row, _) in rows.iter().filter(|(r, _)| was_inserted.contains(&r.id)) {
        logs.extend(log_entry(
            &UserRow::new(row.id, now),
            row,
            SyncType::Backfilled,
            started,
        ));
    }
    core.log_many(&logs);
    report.auth_backfilled += inserted.len() as i64;
    // The rest hold an email a users row has: the sync core adopts (or reports) them one by one.
    for (id, _, auth) in found.iter().filter(|(id, _, _)| !was_inserted.contains(id)) {
        let _ = backfill_through_sync(core, *id, auth, report);
    }
    if let Some((last, _, _)) = found.last() {
        report.backfill_after = Some(last.to_string());
    }
    (found.len() as i64) < batch_size as i64
}

/// Give auth user `id` its users row through the sync core, as a signup would: it adopts the
/// row that holds the email, or refuses with a message (logged, counted as
/// `auth_backfill_failed`). In a subtransaction, so that a refusal undoes only this user.
pub(super) fn backfill_through_sync(
    core: &Core,
    id: Uuid,
    auth: &AuthUser,
    report: &mut Report,
) -> Result<(), String> {
    let mut req = SyncRequest::new(Source::SupabaseAuth, id);
    req.auth = Some(auth.clone());
    req.signup = true;
    let one = Instant::now();
    // Not run_in_subtxn's plain first insert: every user that comes here has a taken email.
    let result = subtxn::run(|| {
        if let Err(refusal) = sync::sync_user(core, &req, one, false) {
            refusal.raise(id);
        }
    });
    match result {
        Ok(()) => {
            report.auth_backfilled += 1;
            Ok(())
        }
        Err(failure) => {
            report.auth_backfill_failed += 1;
            let message = failure.message.clone();
            core.log(&LogEntry::failed(
                Some(id),
                Source::Migration,
                failure.code(),
                failure.message,
                one,
            ));
            Err(message)
        }
    }
}
