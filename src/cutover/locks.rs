//! Locks for the cutover's catalog steps (docs/cutover.md, "Locks"). A step takes every lock it
//! needs with one `LOCK TABLE` under `lock_timeout = nura_users.cutover_lock_timeout`: a
//! queued strong lock stalls every later query on the table, so it may queue only that long.
//! When the wait runs out, the step gives up whole (nothing held, nothing changed) and the CALL
//! tries again after a backoff, sleeping after its COMMIT, so it never sleeps holding a lock.

use crate::errors::{Error, OrRaise};
use crate::plans;
use crate::settings::CUTOVER_LOCK_TIMEOUT;
use pgrx::prelude::*;
use std::ffi::CString;
use std::time::Instant;

/// The locks were not granted within the timeout: who held them, and how long the step waited.
pub(super) struct NotGranted {
    pub(super) waited_ms: i32,
    pub(super) holders: Vec<i32>,
}

/// Lock `tables` (qualified, quoted names) in `mode`, waiting at most the cutover's lock timeout;
/// `Ok(waited ms)` once granted. See [`lock_all`].
pub(super) fn lock(tables: &[String], mode: &str) -> Result<i32, NotGranted> {
    let wanted: Vec<(String, &str)> = tables.iter().map(|t| (t.clone(), mode)).collect();
    lock_all(&wanted)
}

/// A view's name with the mode [`lock_all`] locks it in without its tables: `LOCK TABLE` on a
/// view locks every relation the view reads too (`users` itself, for a switched table's view);
/// a no-op `ALTER VIEW` takes ACCESS EXCLUSIVE on the view alone.
pub(super) const VIEW_ONLY: &str = "VIEW ONLY";

/// Lock each `(table, mode)` in turn: the first waiting at most the cutover's lock timeout, the
/// others together at most half of `deadlock_timeout` once the first is held. A step holding
/// one strong lock while it waits for another could close a cycle with the product's
/// transactions, which take the same tables in both orders (a signup writes users, then at its
/// commit the kept table; old code writes the legacy table, then users); giving up before any
/// of them can run the deadlock check means the step, never the product, is the one that
/// yields. The attempt runs in a subtransaction, so giving up releases every lock it took and
/// leaves the step's transaction as it was; any other error is raised.
pub(super) fn lock_all(wanted: &[(String, &str)]) -> Result<i32, NotGranted> {
    let timeout = i64::from(CUTOVER_LOCK_TIMEOUT.get());
    let budget = deadlock_timeout_ms() / 2;
    let started = Instant::now();
    let attempt = crate::subtxn::run(|| {
        let mut first_held: Option<Instant> = None;
        for (table, mode) in wanted {
            let limit = match first_held {
                None => timeout,
                Some(at) => (budget - at.elapsed().as_millis() as i64).min(timeout),
            };
            if limit < 1 {
                Error::new(PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, "no time left").raise();
            }
            let value = CString::new(format!("{limit}ms")).or_raise("lock_timeout");
            let sql = if *mode == VIEW_ONLY {
                format!("ALTER VIEW {table} SET (security_invoker = true)")
            } else {
                format!("LOCK TABLE {table} IN {mode} MODE")
            };
            crate::settings::with_settings(&[("lock_timeout", value.as_c_str())], || {
                plans::execute_once(&sql, &[]).or_raise("cutover lock")
            });
            first_held.get_or_insert_with(Instant::now);
        }
    });
    let tables: Vec<String> = wanted.iter().map(|(t, _)| t.clone()).collect();
    gave_up(attempt, started, &tables)
}

/// The server's `deadlock_timeout`, in ms (`pg_settings` gives it in its unit, ms).
fn deadlock_timeout_ms() -> i64 {
    plans::read_scalar::<i64>(
        "SELECT s.setting::pg_catalog.int8 FROM pg_catalog.pg_settings s \
         WHERE s.name OPERATOR(pg_catalog.=) 'deadlock_timeout'",
        &[],
    )
    .or_raise("cutover lock")
    .unwrap_or(1000)
}

/// The other sessions holding a lock on one of `tables` (for the NOTICE that says who the
/// cutover waits for).
fn holders(tables: &[String]) -> Vec<i32> {
    let names: Vec<&str> = tables.iter().map(String::as_str).collect();
    plans::read_scalar::<Vec<i32>>(
        "SELECT COALESCE(pg_catalog.array_agg(DISTINCT l.pid ORDER BY l.pid), '{}') \
         FROM pg_catalog.pg_locks l \
         WHERE l.locktype OPERATOR(pg_catalog.=) 'relation' AND l.granted \
           AND l.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid() \
           AND l.database OPERATOR(pg_catalog.=) (SELECT d.oid FROM pg_catalog.pg_database d \
                 WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()) \
           AND l.relation OPERATOR(pg_catalog.=) ANY \
               (SELECT pg_catalog.to_regclass(n)::pg_catalog.oid FROM pg_catalog.unnest($1::text[]) n)",
        &[names.into()],
    )
    .or_raise("cutover lock")
    .unwrap_or_default()
}

/// Run `statements`, a step's catalog statements after its locks, with every lock they still
/// take bounded by what is left of one budget of half of `deadlock_timeout` (each statement's
/// `lock_timeout` is the rest): a statement that would wait longer gives the step up whole, to
/// be tried again. The time waited, in ms. Its other errors are raised.
pub(super) fn execute_bounded(statements: &[String]) -> Result<i32, NotGranted> {
    let budget = (deadlock_timeout_ms() / 2).clamp(1, i64::from(CUTOVER_LOCK_TIMEOUT.get()));
    let started = Instant::now();
    let outcome = crate::subtxn::run(|| {
        for sql in statements {
            let left = budget - started.elapsed().as_millis() as i64;
            if left < 1 {
                Error::new(PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, "no time left").raise();
            }
            let value = CString::new(format!("{left}ms")).or_raise("lock_timeout");
            crate::settings::with_settings(&[("lock_timeout", value.as_c_str())], || {
                plans::execute_once(sql, &[]).or_raise("cutover")
            });
        }
    });
    gave_up(outcome, started, &[])
}

/// The outcome of an attempt that began at `started`: the time it waited when it held its
/// locks; `NotGranted` (with the sessions holding `tables`) when a lock wait ran out or closed a
/// cycle; any other error raised.
fn gave_up(
    attempt: Result<(), Error>,
    started: Instant,
    tables: &[String],
) -> Result<i32, NotGranted> {
    let waited_ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
    match attempt {
        Ok(()) => Ok(waited_ms),
        Err(e)
            if e.sqlstate == PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE
                || e.sqlstate == PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED =>
        {
            Err(NotGranted {
                waited_ms,
                holders: if tables.is_empty() {
                    Vec::new()
                } else {
                    holders(tables)
                },
            })
        }
        Err(e) => e.raise(),
    }
}
