//! Running work in a subtransaction, the way PL/pgSQL's `BEGIN … EXCEPTION` does, so that an
//! ERROR raised inside rolls back only that work and the caller carries on (`docs/sync.md`: a sync
//! failure never fails the auth write).

use crate::errors::Error;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

fn failure_of(error: &CaughtError) -> Error {
    let (report, code) = match error {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => (r, r.sql_error_code()),
        CaughtError::RustPanic { ereport, .. } => (ereport, PgSqlErrorCode::ERRCODE_INTERNAL_ERROR),
    };
    Error::new(code, report.message())
}

/// The catch side of [`run`]: roll the subtransaction back and restore what it changed.
/// A query cancel (statement timeout, pg_cancel_backend) or a shutdown is re-raised: like
/// PL/pgSQL's `WHEN OTHERS`, the subtransaction does not swallow them.
unsafe fn roll_back<R>(
    error: CaughtError,
    old_context: pg_sys::MemoryContext,
    old_owner: pg_sys::ResourceOwner,
) -> Result<R, Error> {
    pg_sys::MemoryContextSwitchTo(old_context);
    let failure = failure_of(&error);
    pg_sys::RollbackAndReleaseCurrentSubTransaction();
    pg_sys::MemoryContextSwitchTo(old_context);
    pg_sys::CurrentResourceOwner = old_owner;
    if matches!(
        failure.sqlstate,
        PgSqlErrorCode::ERRCODE_QUERY_CANCELED | PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN
    ) {
        error.rethrow();
    }
    Err(failure)
}

/// Run `body` in a subtransaction. Its writes are kept when it returns; when it raises an ERROR
/// (or panics), its writes are rolled back and the error comes back as an [`Error`].
pub fn run<R>(body: impl FnOnce() -> R) -> Result<R, Error> {
    // SAFETY: the same sequence PL/pgSQL uses (exec_stmt_block): remember the memory context and
    // resource owner, begin an internal subtransaction, and on both exits release or roll it back
    // and restore them. Errors inside are caught by PgTryBuilder (PG_TRY/PG_CATCH).
    unsafe {
        let old_context = pg_sys::CurrentMemoryContext;
        let old_owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        PgTryBuilder::new(std::panic::AssertUnwindSafe(move || {
            let result = body();
            pg_sys::ReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(old_context);
            pg_sys::CurrentResourceOwner = old_owner;
            Ok(result)
        }))
        .catch_others(move |error| roll_back(error, old_context, old_owner))
        .catch_rust_panic(move |error| roll_back(error, old_context, old_owner))
        .execute()
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn an_error_rolls_back_only_the_subtransaction() {
        Spi::run("CREATE TEMP TABLE t (k int PRIMARY KEY)").unwrap();
        let first = super::run(|| Spi::run("INSERT INTO t VALUES (1)").unwrap());
        assert!(first.is_ok());
        let second = super::run(|| {
            Spi::run("INSERT INTO t VALUES (2)").unwrap();
            Spi::run("INSERT INTO t VALUES (1)").unwrap();
        });
        let failure = second.unwrap_err();
        assert_eq!(failure.code(), "23505");
        assert!(
            failure.message.contains("duplicate key"),
            "{}",
            failure.message
        );
        let panicked = super::run(|| panic!("boom"));
        assert_eq!(panicked.unwrap_err().code(), "XX000");
        // A cancel is not swallowed.
        let cancelled = std::panic::catch_unwind(|| {
            super::run(|| {
                pgrx::ereport!(
                    ERROR,
                    PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
                    "canceling statement"
                );
            })
        });
        assert!(cancelled.is_err());
        // Row 1 kept, row 2 rolled back with its subtransaction; the transaction goes on.
        assert_eq!(
            Spi::get_one::<i64>("SELECT sum(k) FROM t").unwrap(),
            Some(1)
        );
    }
}
