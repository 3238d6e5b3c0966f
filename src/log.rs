//! The sync log (`user_sync_logs`, see `docs/sync.md`): who wrote (`Source`), what happened
//! (`SyncType`), one row ([`LogEntry`]) and how rows are written, one at a time, in batches, or in
//! the same statement as the user's row ([`row_cte`]); the scrubbing of personal data; the check
//! of a row that the table's one CHECK constraint calls.
//!
//! The column list is [`COLUMNS`], once: every statement here is built from it.

use crate::errors::OrRaise;
use crate::jsonb::RawJsonb;
use crate::plans;
use crate::settings::{self, LogPayloads};
use crate::user_row::{UserRow, PII};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::Uuid;
use serde_json::{Map, Value};
use std::time::Instant;

/// Who wrote: the `source` of a log row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    SupabaseAuth,
    FrontendSync,
    BackendApi,
    Reconcile,
    /// Written by the legacy migration (`docs/migration.md`).
    Migration,
}

impl Source {
    /// Every source: the log table's CHECK accepts exactly these, so a new variant goes here too
    /// (its log rows are refused otherwise; the sync tests write one of each).
    pub const ALL: [Source; 5] = [
        Source::SupabaseAuth,
        Source::FrontendSync,
        Source::BackendApi,
        Source::Reconcile,
        Source::Migration,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::SupabaseAuth => "supabase_auth",
            Source::FrontendSync => "frontend_sync",
            Source::BackendApi => "backend_api",
            Source::Reconcile => "reconcile",
            Source::Migration => "migration",
        }
    }
}

/// What happened to the user: the `sync_type` of a log row and of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncType {
    Created,
    Adopted,
    Updated,
    Unchanged,
    Stale,
    SoftDeleted,
    Deleted,
    Erased,
    Failed,
    /// A row the migration made for an auth user that had none.
    Backfilled,
}

impl SyncType {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncType::Created => "created",
            SyncType::Adopted => "adopted",
            SyncType::Updated => "updated",
            SyncType::Unchanged => "unchanged",
            SyncType::Stale => "stale",
            SyncType::SoftDeleted => "soft_deleted",
            SyncType::Deleted => "deleted",
            SyncType::Erased => "erased",
            SyncType::Failed => "failed",
            SyncType::Backfilled => "backfilled",
        }
    }
}

/// One row of `user_sync_logs`.
pub struct LogEntry {
    pub user_id: Option<Uuid>,
    pub source: Source,
    pub sync_type: SyncType,
    pub changed_fields: Option<Vec<&'static str>>,
    pub before: Option<Value>,
    pub after: Option<Value>,
    /// (SQLSTATE, message) of a failed sync.
    pub failure: Option<(String, String)>,
    pub started: Instant,
    /// The sync's duration when it is known before the row is written (a migration batch writes
    /// its log rows together); None: the time since `started`, taken when the row is written.
    pub duration_us: Option<i64>,
    pub request_id: Option<String>,
    pub session_id: Option<String>,
}

impl LogEntry {
    /// The values of the log row, in the order of [`COLUMNS`].
    fn datums(&self) -> Vec<DatumWithOid<'static>> {
        let changed: Option<Vec<String>> = self
            .changed_fields
            .as_ref()
            .map(|f| f.iter().map(|s| s.to_string()).collect());
        vec![
            self.user_id.into(),
            self.source.as_str().into(),
            self.sync_type.as_str().into(),
            self.failure.is_none().into(),
            changed.into(),
            self.before.as_ref().map(RawJsonb::from_value).into(),
            self.after.as_ref().map(RawJsonb::from_value).into(),
            self.failure.as_ref().map(|f| f.1.clone()).into(),
            self.failure.as_ref().map(|f| f.0.clone()).into(),
            self.duration().into(),
            self.request_id.clone().into(),
            self.session_id.clone().into(),
        ]
    }

    /// The values after `user_id`: the parameters of [`row_cte`].
    pub fn values_after_user_id(&self) -> impl Iterator<Item = DatumWithOid<'static>> {
        self.datums().into_iter().skip(1)
    }

    fn duration(&self) -> i64 {
        self.duration_us
            .unwrap_or_else(|| self.started.elapsed().as_micros() as i64)
    }

    /// The log row of a sync that went through.
    pub fn success(
        source: Source,
        user_id: Uuid,
        sync_type: SyncType,
        changed_fields: Vec<&'static str>,
        (before, after): (Option<Value>, Option<Value>),
        started: Instant,
    ) -> Self {
        LogEntry {
            user_id: Some(user_id),
            source,
            sync_type,
            changed_fields: Some(changed_fields),
            before,
            after,
            failure: None,
            started,
            duration_us: None,
            request_id: None,
            session_id: None,
        }
    }

    /// The same row, carrying a request's ids.
    pub fn with_ids(mut self, request_id: Option<String>, session_id: Option<String>) -> Self {
        self.request_id = request_id;
        self.session_id = session_id;
        self
    }

    /// The log row of an event without a change list or payloads (a deletion, an erasure).
    pub fn event(
        user_id: Option<Uuid>,
        source: Source,
        sync_type: SyncType,
        started: Instant,
    ) -> Self {
        LogEntry {
            user_id,
            source,
            sync_type,
            changed_fields: None,
            before: None,
            after: None,
            failure: None,
            started,
            duration_us: None,
            request_id: None,
            session_id: None,
        }
    }

    /// The duration taken now rather than when the row is written (rows written together later).
    pub fn timed_now(mut self) -> Self {
        self.duration_us = Some(self.started.elapsed().as_micros() as i64);
        self
    }

    pub fn failed(
        user_id: Option<Uuid>,
        source: Source,
        sqlstate: String,
        message: String,
        started: Instant,
    ) -> Self {
        LogEntry {
            user_id,
            source,
            sync_type: SyncType::Failed,
            changed_fields: None,
            before: None,
            after: None,
            failure: Some((sqlstate, message)),
            started,
            duration_us: None,
            request_id: None,
            session_id: None,
        }
    }
}

/// The columns of a log row, in the order of [`LogEntry`]'s values; `user_id` first, so that a
/// statement that takes it from the row it wrote ([`row_cte`]) passes the others after it.
pub const COLUMNS: [&str; 12] = [
    "user_id",
    "source",
    "sync_type",
    "success",
    "changed_fields",
    "before_data",
    "after_data",
    "error_message",
    "sqlstate",
    "duration_us",
    "request_id",
    "session_id",
];

/// The type of each column's array in [`write_many`]. `changed_fields` (text[] per row) travels
/// as its text form: an array of arrays must be rectangular.
const ARRAY_TYPES: [&str; 12] = [
    "uuid", "text", "text", "boolean", "text", "jsonb", "jsonb", "text", "text", "bigint", "text",
    "text",
];

fn params(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn insert_into(schema: &str) -> String {
    format!(
        "INSERT INTO {schema}.user_sync_logs ({})",
        COLUMNS.join(", ")
    )
}

/// `logged AS (...)`: the log row of the user that CTE `from` returns (its `id` is the row's
/// `user_id`); the other columns from parameter `$first` on, as [`LogEntry::datums`] gives them
/// after its user_id.
pub fn row_cte(schema: &str, from: &str, first: usize) -> String {
    format!(
        "logged AS ({} SELECT x.id, {} FROM {from} x)",
        insert_into(schema),
        params(first, COLUMNS.len() - 1)
    )
}

/// The INSERT of one log row, its values as [`LogEntry`] gives them (built once per schema and
/// kept with the core's other statements: a sync that changes nothing still writes its row).
pub fn insert_sql(schema: &str) -> String {
    format!(
        "{} VALUES ({})",
        insert_into(schema),
        params(1, COLUMNS.len())
    )
}

/// Write one log row with `sql`, the statement of [`insert_sql`].
pub fn write(sql: &str, entry: &LogEntry) {
    plans::execute(sql, &entry.datums()).or_raise("writing the sync log");
}

/// Write many log rows in one statement (the migration's batches and its rollback): one array
/// per column, unnested side by side.
pub fn write_many(schema: &str, entries: &[LogEntry]) {
    if entries.is_empty() {
        return;
    }
    let json = |v: &Option<Value>| v.as_ref().map(RawJsonb::from_value);
    let changed: Vec<Option<String>> = entries
        .iter()
        .map(|e| {
            e.changed_fields.as_ref().map(|f| {
                let quoted: Vec<String> = f.iter().map(|n| format!("\"{n}\"")).collect();
                format!("{{{}}}", quoted.join(","))
            })
        })
        .collect();
    let args: Vec<DatumWithOid<'static>> = vec![
        plans::column(entries, |e| e.user_id),
        plans::column(entries, |e| e.source.as_str()),
        plans::column(entries, |e| e.sync_type.as_str()),
        plans::column(entries, |e| e.failure.is_none()),
        changed.into(),
        plans::column(entries, |e| json(&e.before)),
        plans::column(entries, |e| json(&e.after)),
        plans::column(entries, |e| e.failure.as_ref().map(|f| f.1.as_str())),
        plans::column(entries, |e| e.failure.as_ref().map(|f| f.0.as_str())),
        plans::column(entries, |e| e.duration()),
        plans::column(entries, |e| e.request_id.as_deref()),
        plans::column(entries, |e| e.session_id.as_deref()),
    ];
    let select: Vec<String> = COLUMNS
        .iter()
        .map(|c| match *c {
            "changed_fields" => format!("x.{c}::text[]"),
            _ => format!("x.{c}"),
        })
        .collect();
    let unnest: Vec<String> = ARRAY_TYPES
        .iter()
        .enumerate()
        .map(|(i, t)| format!("pg_catalog.unnest(${}::{t}[])", i + 1))
        .collect();
    let sql = format!(
        "{} SELECT {} FROM ROWS FROM ({}) AS x({})",
        insert_into(schema),
        select.join(", "),
        unnest.join(", "),
        COLUMNS.join(", ")
    );
    plans::execute(&sql, &args).or_raise("writing the sync log");
}

/// Give user `from`'s log rows to `to` (an adoption, a moved user): a later delete or erasure of
/// the person scrubs all of them.
pub fn rekey(schema: &str, from: Uuid, to: Uuid) {
    plans::execute(
        &format!(
            "UPDATE {schema}.user_sync_logs SET user_id = $2 \
             WHERE user_id OPERATOR(pg_catalog.=) $1"
        ),
        &[from.into(), to.into()],
    )
    .or_raise("re-keying log rows");
}

/// Remove personal data from the log rows of `ids` (delete, soft delete, erasure); returns how
/// many rows changed.
pub fn scrub_pii(schema: &str, ids: &[Uuid]) -> i64 {
    let pii: Vec<String> = PII.iter().map(|s| s.to_string()).collect();
    plans::scalar::<i64>(
        &format!(
            "WITH scrubbed AS (UPDATE {schema}.user_sync_logs \
                 SET before_data = before_data OPERATOR(pg_catalog.-) $2::text[], \
                     after_data = after_data OPERATOR(pg_catalog.-) $2::text[] \
                 WHERE user_id OPERATOR(pg_catalog.=) ANY ($1) \
                   AND (before_data OPERATOR(pg_catalog.?|) $2::text[] \
                        OR after_data OPERATOR(pg_catalog.?|) $2::text[]) \
                 RETURNING 1) \
             SELECT pg_catalog.count(*) FROM scrubbed"
        ),
        &[ids.to_vec().into(), pii.into()],
    )
    .or_raise("scrubbing log rows")
    .unwrap_or(0)
}

/// before/after payloads of a log row, per `nura_users.log_payloads`. Personal data is left out
/// when `without_pii` (a soft-deleted user's log keeps none).
pub(crate) fn log_payloads(
    before: &UserRow,
    after: &UserRow,
    changed: &[&'static str],
    without_pii: bool,
) -> (Option<Value>, Option<Value>) {
    let keep = |f: &str| !(without_pii && PII.contains(&f));
    let pick = |row: &UserRow, fields: &mut dyn Iterator<Item = &'static str>| {
        let mut map = Map::new();
        for f in fields.filter(|f| keep(f)) {
            map.insert(f.to_string(), row.field_json(f));
        }
        Value::Object(map)
    };
    match settings::LOG_PAYLOADS.get() {
        LogPayloads::None => (None, None),
        LogPayloads::Diff => (
            Some(pick(before, &mut changed.iter().copied())),
            Some(pick(after, &mut changed.iter().copied())),
        ),
        LogPayloads::Full => (
            Some(pick(before, &mut UserRow::COLUMNS.iter().copied())),
            Some(pick(after, &mut UserRow::COLUMNS.iter().copied())),
        ),
    }
}

/// Why a `user_sync_logs` row is not valid (the field and what it must be), or `None`. Text
/// arrives as bytes, so a database in another encoding than UTF-8 is checked as well (only
/// ASCII can be valid); of `error_message` only whether it is there matters. A value shown in
/// the answer is cut to 40 characters.
pub fn log_row_problem(
    source: Option<&[u8]>,
    sync_type: Option<&[u8]>,
    success: Option<bool>,
    sqlstate: Option<&[u8]>,
    has_error_message: bool,
    duration_us: Option<i64>,
) -> Option<String> {
    let shown = |b: &[u8]| {
        let text = String::from_utf8_lossy(b);
        match text.char_indices().nth(40) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text.into_owned(),
        }
    };
    if let Some(source) =
        source.filter(|s| !Source::ALL.iter().any(|k| k.as_str().as_bytes() == *s))
    {
        let known = Source::ALL.map(Source::as_str).join(", ");
        return Some(format!(
            "source \"{}\" is not one of {known}",
            shown(source)
        ));
    }
    // ^[a-z][a-z_]{0,31}$
    let sync_type_ok = |b: &[u8]| {
        (1..=32).contains(&b.len())
            && b[0].is_ascii_lowercase()
            && b.iter().all(|c| c.is_ascii_lowercase() || *c == b'_')
    };
    if let Some(t) = sync_type.filter(|t| !sync_type_ok(t)) {
        return Some(format!(
            "sync_type \"{}\" is not 1 to 32 lowercase letters and underscores, starting with a letter",
            shown(t)
        ));
    }
    // ^[0-9A-Z]{5}$
    if let Some(code) = sqlstate.filter(|c| {
        c.len() != 5
            || !c
                .iter()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    }) {
        return Some(format!(
            "sqlstate \"{}\" is not 5 digits or uppercase letters",
            shown(code)
        ));
    }
    if let Some(success) = success {
        if success != sqlstate.is_none() || success == has_error_message {
            return Some(
                "a failure (success false) carries sqlstate and error_message, a success neither"
                    .into(),
            );
        }
    }
    if duration_us.is_some_and(|d| d < 0) {
        return Some("duration_us is negative".into());
    }
    None
}

/// The one CHECK of `user_sync_logs` (`user_sync_logs_row_valid`, created in `sql/schema.sql`).
/// PostgreSQL reads a table's CHECK constraints back from their catalog text and plans them again
/// for every statement that writes the table, and every sync writes a log row with a statement of
/// its own: five CHECK expressions cost a measurable share of a `nura_sync_user` call, one call of
/// this function almost nothing. An invalid row makes it return false, so that PostgreSQL reports
/// the violation as for any CHECK (SQLSTATE 23514, the constraint's name in the error's fields, the
/// failing row), after a WARNING that names the field and the rule. A NULL passes as it would a
/// CHECK (the NOT NULL columns refuse it).
#[pg_extern(immutable, parallel_safe, sql = false)]
fn nura_sync_log_row_valid(
    source: Option<&[u8]>,
    sync_type: Option<&[u8]>,
    success: Option<bool>,
    sqlstate: Option<&[u8]>,
    error_message: Option<&[u8]>,
    duration_us: Option<i64>,
) -> bool {
    match log_row_problem(
        source,
        sync_type,
        success,
        sqlstate,
        error_message.is_some(),
        duration_us,
    ) {
        Some(problem) => {
            pgrx::warning!("user_sync_logs_row_valid: {problem}");
            false
        }
        None => true,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_rows_are_checked_field_by_field() {
        use super::log_row_problem as p;
        fn ok(
            source: &str,
            sync_type: &str,
            success: bool,
            code: Option<&str>,
            message: bool,
        ) -> Option<String> {
            p(
                Some(source.as_bytes()),
                Some(sync_type.as_bytes()),
                Some(success),
                code.map(str::as_bytes),
                message,
                Some(0),
            )
        }
        assert_eq!(ok("supabase_auth", "created", true, None, false), None);
        assert_eq!(
            ok("migration", "soft_deleted", false, Some("22023"), true),
            None
        );
        for source in super::Source::ALL {
            assert_eq!(ok(source.as_str(), "created", true, None, false), None);
        }
        assert!(ok("webhook", "created", true, None, false)
            .unwrap()
            .starts_with("source \"webhook\""));
        assert!(ok("reconcile", "Created", true, None, false)
            .unwrap()
            .starts_with("sync_type"));
        assert!(ok("reconcile", "", true, None, false)
            .unwrap()
            .starts_with("sync_type"));
        assert!(ok("reconcile", &"a".repeat(33), true, None, false)
            .unwrap()
            .starts_with("sync_type"));
        assert_eq!(ok("reconcile", &"a".repeat(32), true, None, false), None);
        assert!(ok("reconcile", "x", false, Some("2202"), true)
            .unwrap()
            .starts_with("sqlstate"));
        assert!(ok("reconcile", "x", false, Some("2202a"), true)
            .unwrap()
            .starts_with("sqlstate"));
        assert!(ok("reconcile", "x", false, None, false)
            .unwrap()
            .starts_with("a failure"));
        assert!(ok("reconcile", "x", true, Some("22023"), false)
            .unwrap()
            .starts_with("a failure"));
        assert!(ok("reconcile", "x", false, Some("22023"), false)
            .unwrap()
            .starts_with("a failure"));
        assert!(ok("reconcile", "x", true, None, true)
            .unwrap()
            .starts_with("a failure"));
        assert_eq!(
            p(
                Some(b"reconcile"),
                Some(b"x"),
                Some(true),
                None,
                false,
                Some(-1)
            )
            .as_deref(),
            Some("duration_us is negative")
        );
        // A long value is shown cut.
        let long = "x".repeat(100);
        let problem = p(
            Some(long.as_bytes()),
            Some(b"x"),
            Some(true),
            None,
            false,
            Some(0),
        );
        assert!(problem
            .unwrap()
            .starts_with(&format!("source \"{}…\"", "x".repeat(40))));
        // Bytes that are not UTF-8 (a LATIN1 database) are refused, not a crash.
        assert!(p(
            Some(b"supabase_auth\xe9"),
            Some(b"x"),
            Some(true),
            None,
            false,
            Some(0)
        )
        .unwrap()
        .starts_with("source"));
        // NULLs pass, as in a CHECK; the NOT NULL columns refuse them.
        assert_eq!(p(None, None, None, None, false, None), None);
    }
}
