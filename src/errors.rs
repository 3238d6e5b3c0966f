//! The one error type at the SQL boundary. Every failure the extension reports is an [`Error`]:
//! an SQLSTATE, the field it concerns (when one does), a message and an optional hint. It leaves
//! in one of two ways, both here:
//! - [`Error::raise`]: an ERROR with that SQLSTATE (functions that answer with an ERROR);
//! - [`Error::result`]: the `{"success": false, "error": {...}}` object of the functions that
//!   answer with a result (`nura_sync_user`, `nura_update_profile`; see `docs/errors.md`).
//!
//! An error caught in a subtransaction ([`crate::subtxn::run`]) comes back as an `Error` too, of
//! kind `internal` whatever its SQLSTATE: the named kinds are the ones a caller can correct.
//! A failed SPI call is never turned into a default value: [`OrRaise::or_raise`] raises it.

use crate::jsonb::RawJsonb;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The `code` of a result object's error: what a caller branches on.
    pub kind: &'static str,
    pub sqlstate: PgSqlErrorCode,
    /// The argument or payload field at fault, as a result object names it.
    pub field: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl Error {
    /// An error of kind `internal` (whatever its SQLSTATE): one a caller cannot correct.
    pub fn new(sqlstate: PgSqlErrorCode, message: impl Into<String>) -> Self {
        Error {
            kind: "internal",
            sqlstate,
            field: None,
            message: message.into(),
            hint: None,
        }
    }

    /// 22023: a value the caller gave is not acceptable.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message)
            .of("invalid_payload", field)
    }

    /// 42501: the caller may not do this.
    pub fn forbidden(field: &str, message: impl Into<String>) -> Self {
        Self::new(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, message).of("forbidden", field)
    }

    /// 23505: another row holds the value.
    pub fn conflict(field: &str, message: impl Into<String>) -> Self {
        Self::new(PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION, message).of("conflict", field)
    }

    /// P0002: the thing asked for does not exist.
    pub fn not_found(field: &str, message: impl Into<String>) -> Self {
        Self::new(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND, message).of("not_found", field)
    }

    /// XX000: something that should not happen (a bug, or a broken installation).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, message)
    }

    fn of(mut self, kind: &'static str, field: &str) -> Self {
        self.kind = kind;
        self.field = Some(field.to_string());
        self
    }

    pub fn hint(mut self, hint: &str) -> Self {
        self.hint = Some(hint.to_string());
        self
    }

    /// The five-character SQLSTATE.
    pub fn code(&self) -> String {
        sqlstate_of(self.sqlstate)
    }

    /// Abort the statement with this error.
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.sqlstate, self.message, "nura_users");
        if let Some(hint) = self.hint {
            report = report.set_hint(hint);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("an ERROR report does not return")
    }

    /// The result object of a call that failed with this error.
    pub fn result(&self) -> RawJsonb {
        RawJsonb::from_value(&json!({
            "success": false,
            "error": {"code": self.kind, "field": self.field, "message": self.message},
        }))
    }
}

/// Abort the statement with `code` and `message` (and an optional hint).
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>, hint: Option<&str>) -> ! {
    let error = Error::new(code, message);
    match hint {
        Some(hint) => error.hint(hint).raise(),
        None => error.raise(),
    }
}

/// PostgreSQL packs a SQLSTATE into an int six bits per character (MAKE_SQLSTATE).
pub fn sqlstate_of(code: PgSqlErrorCode) -> String {
    let packed = code as i32;
    (0..5)
        .map(|i| ((((packed >> (6 * i)) & 0x3F) as u8) + b'0') as char)
        .collect()
}

/// A failed SPI call (or datum conversion) becomes an internal ERROR naming what was being done. (A
/// statement that raises an ERROR of its own never gets here: that ERROR propagates with its
/// SQLSTATE.)
pub trait OrRaise<T> {
    fn or_raise(self, doing: &str) -> T;
}

impl<T, E: std::fmt::Display> OrRaise<T> for Result<T, E> {
    fn or_raise(self, doing: &str) -> T {
        self.unwrap_or_else(|e| Error::internal(format!("nura_users: {doing} failed: {e}")).raise())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_unpack() {
        use PgSqlErrorCode::*;
        assert_eq!(sqlstate_of(ERRCODE_UNIQUE_VIOLATION), "23505");
        assert_eq!(sqlstate_of(ERRCODE_INVALID_PARAMETER_VALUE), "22023");
        assert_eq!(sqlstate_of(ERRCODE_INSUFFICIENT_PRIVILEGE), "42501");
        assert_eq!(sqlstate_of(ERRCODE_NO_DATA_FOUND), "P0002");
    }

    #[test]
    fn each_kind_has_its_sqlstate() {
        assert_eq!(Error::invalid("email", "x").kind, "invalid_payload");
        assert_eq!(Error::invalid("email", "x").code(), "22023");
        assert_eq!(Error::forbidden("id", "x").code(), "42501");
        assert_eq!(Error::conflict("email", "x").kind, "conflict");
        assert_eq!(Error::not_found("user_id", "x").code(), "P0002");
        assert_eq!(Error::internal("x").kind, "internal");
        // A caught error is internal whatever its SQLSTATE: only the named kinds are a
        // caller's to correct.
        let caught = Error::new(PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION, "x");
        assert_eq!((caught.kind, caught.code().as_str()), ("internal", "23505"));
    }
}
