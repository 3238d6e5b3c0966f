//! Raising errors with a specific SQLSTATE at the SQL boundary.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// Abort the statement with `code` and `message` (and an optional hint).
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>, hint: Option<&str>) -> ! {
    let mut report = ErrorReport::new(code, message.into(), "nura_users");
    if let Some(hint) = hint {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("an ERROR report does not return")
}
