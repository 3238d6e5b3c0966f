//! Locks for the cutover's catalog steps (docs/cutover.md, "Locks"). A step takes every lock it
//! needs with one `LOCK TABLE` under `lock_timeout = nura_users.cutover_lock_timeout`: a
//! queued strong lock stalls every later query on the table, so it may queue only that long.
//! When the wait runs out, the step gives up whole (nothing held, nothing changed) and the CALL
//! tries again after a backoff, sleeping after its COMMIT, so it never sleeps holding a lock.

use crate::errors::OrRaise;
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
/// `Ok(waited ms)` once granted. The attempt runs in a subtransaction, so a timeout leaves the
/// step's transaction as it was; any other error is raised.
pub(super) fn lock(tables: &[String], mode: &str) -> Result<i32, NotGranted> {
    let timeout =
        CString::new(format!("{}ms", CUTOVER_LOCK_TIMEOUT.get())).or_raise("lock_timeout");
    let sql = format!("LOCK TABLE {} IN {mode} MODE", tables.join(", "));
    let started = Instant::now();
    let attempt = crate::subtxn::run(|| {
        crate::settings::with_settings(&[("lock_timeout", timeout.as_c_str())], || {
            plans::execute_once(&sql, &[]).or_raise("cutover lock")
        })
    });
    let waited_ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
    match attempt {
        Ok(()) => Ok(waited_ms),
        Err(e) if e.sqlstate == PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE => Err(NotGranted {
            waited_ms,
            holders: holders(tables),
        }),
        Err(e) => e.raise(),
    }
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
