//! The legacy migration (SPEC §5): `chat_users`, `voice_users` and `custom_users` into `users`.
//!
//! A run goes through phases, each a step that one transaction can hold:
//! 1. **backfill** — every `auth.users` row without a `users` row gets one, as the auth trigger
//!    would have made it (same code: [`sync::desired_row`]), a batch per step;
//! 2. **plan** — one set-based statement reads every legacy row once, normalizes its email,
//!    matches it to an existing user (auth or `users`, by email; custom rows by auth id; rows
//!    without a usable email by id), groups rows of the same person into a cluster, picks the id
//!    a new user will get, cuts the clusters into batches, and stores all of it in
//!    `nura_migration_rows` with a reason for each row that cannot be placed;
//! 3. **apply** — a batch per step: the batch's rows and their users are read (locked), merged
//!    here by the precedence rules, and written back with one statement per table.
//!
//! The plan is written once and committed, so `CALL nura_run_migration()` (a commit after every
//! step) resumes an interrupted run at the first batch not committed, and ends in exactly the
//! state of a clean run. `nura_migrate_legacy()` runs the same steps in its caller's transaction.
//! Legacy tables are only read.

use crate::errors::raise;
use crate::jsonb::{JsonB, MaybeDeep, RawJsonb};
use crate::payload::{check_phone, json_type};
use crate::plans;
use crate::schema::extension_schema;
use crate::subtxn;
use crate::sync::{
    self, AuthUser, Core, LogEntry, Source, SyncRequest, SyncType, AUTH_SELECT, MAX_NAME,
};
use crate::user_row::{transaction_now, Micros, UserRow, BOOKKEEPING};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::{PgMemoryContexts, Uuid};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

extension_sql_file!(
    "../sql/migration.sql",
    name = "migration",
    requires = ["schema"]
);

/// A legacy table, in precedence order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Chat,
    Voice,
    Custom,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Chat, Table::Voice, Table::Custom];

    pub fn name(self) -> &'static str {
        match self {
            Table::Chat => "chat_users",
            Table::Voice => "voice_users",
            Table::Custom => "custom_users",
        }
    }

    fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    fn precedence(self) -> i16 {
        match self {
            Table::Chat => 1,
            Table::Voice => 2,
            Table::Custom => 3,
        }
    }

    pub fn id_column(self) -> &'static str {
        match self {
            Table::Custom => "user_id",
            _ => "id",
        }
    }

    /// The service profile that receives the table's rows.
    pub fn service(self) -> &'static str {
        match self {
            Table::Chat => "chat",
            Table::Voice => "voice",
            Table::Custom => "custom",
        }
    }

    /// The legacy column of a `users` field, if the table has one.
    fn column(self, field: Field) -> Option<&'static str> {
        match (self, field) {
            (Table::Chat, Field::FullName) | (Table::Custom, Field::FullName) => Some("full_name"),
            (Table::Voice, Field::FullName) => Some("name"),
            (Table::Chat, Field::PhoneNumber) => Some("phone_number"),
            (Table::Voice, Field::PhoneNumber) => Some("phone"),
            (Table::Chat, Field::IsActive) => Some("is_active"),
            (Table::Chat, Field::PrivacySettings) => Some("privacy_settings"),
            (Table::Custom, Field::CurrentStreak) => Some("current_streak"),
            (Table::Custom, Field::Xp) => Some("xp"),
            _ => None,
        }
    }

    /// Columns with a home in `users`, the profile or the alias; the rest of a row is kept in the
    /// profile's `service_metadata.legacy.<legacy id>` (NULL cells left out). Password hashes are
    /// never read into it.
    pub fn homed_columns(self) -> &'static [&'static str] {
        match self {
            Table::Chat => &[
                "id",
                "email",
                "full_name",
                "phone_number",
                "privacy_settings",
                "notification_prefs",
                "is_active",
                "created_at",
            ],
            Table::Voice => &["id", "name", "email", "phone", "created_at"],
            Table::Custom => &["user_id", "full_name", "current_streak", "xp"],
        }
    }
}

/// The `users` fields a legacy row can fill (email apart: it is what matches rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    FullName,
    PhoneNumber,
    IsActive,
    PrivacySettings,
    CurrentStreak,
    Xp,
}

impl Field {
    const ALL: [Field; 6] = [
        Field::FullName,
        Field::PhoneNumber,
        Field::IsActive,
        Field::PrivacySettings,
        Field::CurrentStreak,
        Field::Xp,
    ];

    fn name(self) -> &'static str {
        match self {
            Field::FullName => "full_name",
            Field::PhoneNumber => "phone_number",
            Field::IsActive => "is_active",
            Field::PrivacySettings => "privacy_settings",
            Field::CurrentStreak => "current_streak",
            Field::Xp => "xp",
        }
    }

    /// The field's value in `row`; `None` when it is at its default (no value, SPEC §5).
    fn of_row(self, row: &UserRow) -> Option<Value> {
        match self {
            Field::FullName => row.full_name.clone().map(Value::String),
            Field::PhoneNumber => row.phone_number.clone().map(Value::String),
            Field::IsActive => (!row.is_active).then_some(Value::Bool(false)),
            Field::PrivacySettings => non_empty_object(&row.privacy_settings),
            Field::CurrentStreak => (row.current_streak != 0).then(|| json!(row.current_streak)),
            Field::Xp => (row.xp != 0).then(|| json!(row.xp)),
        }
    }

    fn set(self, row: &mut UserRow, value: &Value) {
        match self {
            Field::FullName => row.full_name = value.as_str().map(str::to_string),
            Field::PhoneNumber => row.phone_number = value.as_str().map(str::to_string),
            Field::IsActive => row.is_active = value.as_bool().unwrap_or(true),
            Field::PrivacySettings => row.privacy_settings = value.clone(),
            Field::CurrentStreak => row.current_streak = value.as_i64().unwrap_or(0) as i32,
            Field::Xp => row.xp = value.as_i64().unwrap_or(0) as i32,
        }
    }

    /// Personal data: not filled into a soft-deleted user.
    fn is_pii(self) -> bool {
        matches!(self, Field::FullName | Field::PhoneNumber)
    }
}

/// An adoption (SPEC §4.1) replaced values of `adopted`, a row the migration may have filled:
/// for each legacy row placed in it whose table has a column for the field, a `conflict` issue
/// records the value dropped and the one kept, so that `nura_verify_migration` accounts for it.
/// Call before the adopted row's aliases move (they name its legacy rows).
pub fn record_adoption_conflicts(core: &Core, adopted: &UserRow, kept: &UserRow) {
    let mut tables = Vec::new();
    let mut fields = Vec::new();
    let mut kept_values = Vec::new();
    let mut dropped_values = Vec::new();
    // The address, which matched the rows and which verify compares case-insensitively: an
    // adopter's own, when it takes the adopted row's.
    if let Some(dropped) = adopted.email.as_deref() {
        if !sync::same_email(Some(dropped), kept.email.as_deref()) {
            for table in [Table::Chat, Table::Voice] {
                tables.push(table.name());
                fields.push("email");
                kept_values.push(JsonB(kept.email.clone().map_or(Value::Null, Value::String)));
                dropped_values.push(JsonB(Value::String(dropped.to_string())));
            }
        }
    }
    for field in Field::ALL {
        let Some(dropped) = field.of_row(adopted) else {
            continue;
        };
        let now = field.of_row(kept);
        if now.as_ref() == Some(&dropped) {
            continue;
        }
        for table in Table::ALL.into_iter().filter(|t| t.column(field).is_some()) {
            tables.push(table.name());
            fields.push(field.name());
            kept_values.push(JsonB(now.clone().unwrap_or(Value::Null)));
            dropped_values.push(JsonB(dropped.clone()));
        }
    }
    if tables.is_empty() {
        return;
    }
    let schema = &core.schema;
    plans::execute(
        &format!(
            "INSERT INTO {schema}.nura_migration_issues \
                 (run_id, source_table, source_id, kind, field, user_id, kept_value, dropped_value, reason) \
             SELECT a.run_id, a.source, a.alias_id::text, 'conflict', f.field, $2, f.kept, f.dropped, \
                    'replaced when an auth user adopted this user' \
             FROM {schema}.user_id_aliases a \
             JOIN ROWS FROM (pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::text[]), \
                             pg_catalog.unnest($5::jsonb[]), pg_catalog.unnest($6::jsonb[])) \
                  AS f(source_table, field, kept, dropped) \
               ON f.source_table OPERATOR(pg_catalog.=) a.source \
             WHERE a.user_id OPERATOR(pg_catalog.=) $1 AND a.run_id IS NOT NULL"
        ),
        &[
            adopted.id.into(),
            kept.id.into(),
            tables.into(),
            fields.into(),
            kept_values.into(),
            dropped_values.into(),
        ],
    )
    .unwrap_or_else(|e| fail(e));
}

fn non_empty_object(v: &Value) -> Option<Value> {
    match v {
        Value::Object(m) if !m.is_empty() => Some(v.clone()),
        _ => None,
    }
}

/// A legacy phone number without its usual formatting (blanks, dashes, dots, parentheses).
fn cleaned_phone(raw: &str) -> String {
    raw.trim()
        .chars()
        .filter(|c| !(c.is_whitespace() || matches!(c, '-' | '.' | '(' | ')')))
        .collect()
}

/// A legacy phone number as `users` stores it (GoTrue's form: digits, no `+`), with the usual
/// formatting removed. `Err` names why it is unusable.
pub fn legacy_phone(raw: &str) -> Result<Option<String>, String> {
    let cleaned = cleaned_phone(raw);
    if cleaned.is_empty() {
        return Ok(None);
    }
    check_phone(&cleaned).map_err(|e| e.to_string())?;
    Ok(sync::normalize_phone(&cleaned))
}

/// A legacy text cell as the migration reads it: without surrounding white space (Unicode's, as
/// Rust's `trim`), NULL when nothing is left. `nura_verify_migration` compares through this same
/// function, so the two cannot disagree on what a cell holds.
#[pg_extern(immutable, strict, parallel_safe)]
fn nura_legacy_text(value: &str) -> Option<&str> {
    Some(value.trim()).filter(|t| !t.is_empty())
}

/// A legacy phone cell as `users` would hold it (see [`legacy_phone`]); one that is not usable
/// comes back cleaned of its formatting but not checked, so that verify still sees a value that
/// differs (and the conflict the migration recorded for it). NULL for a blank cell.
#[pg_extern(immutable, strict, parallel_safe)]
fn nura_legacy_phone(value: &str) -> Option<String> {
    match legacy_phone(value) {
        Ok(phone) => phone,
        Err(_) => Some(cleaned_phone(value)),
    }
}

/// SQL for the uuid that the text `expr` spells ([`nura_legacy_uuid`]); on a catalog not yet
/// updated to 0.6.0, the canonical form only, as 0.5.0 read ids.
pub fn legacy_uuid_sql(schema: &str, expr: &str) -> String {
    if crate::schema::has_function(schema, "nura_legacy_uuid(text)") {
        format!("{schema}.nura_legacy_uuid({expr})")
    } else {
        format!(
            "CASE WHEN pg_catalog.lower({expr}) OPERATOR(pg_catalog.~) \
                  '^[0-9a-f]{{8}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{12}}$' \
             THEN ({expr})::uuid END"
        )
    }
}

/// A legacy id in any form PostgreSQL's `uuid` reads (see `uuid_input`), NULL otherwise: the
/// plan and verify read text ids through it.
#[pg_extern(immutable, strict, parallel_safe)]
fn nura_legacy_uuid(id: &str) -> Option<Uuid> {
    crate::uuid_input::parse(id)
}

/// The value a legacy cell gives `field`: `Ok(None)` for none (NULL, blank, the default),
/// `Err(reason)` for a value that `users` cannot hold (kept as a conflict issue).
pub fn legacy_value(field: Field, raw: &Value) -> Result<Option<Value>, String> {
    if raw.is_null() {
        return Ok(None);
    }
    match field {
        Field::FullName => match raw {
            Value::String(s) => {
                let s = s.trim();
                if s.is_empty() {
                    Ok(None)
                } else if s.chars().count() > MAX_NAME {
                    Err(format!("longer than {MAX_NAME} characters"))
                } else {
                    Ok(Some(Value::String(s.to_string())))
                }
            }
            other => Err(format!("a JSON {}, not text", json_type(other))),
        },
        Field::PhoneNumber => match raw {
            Value::String(s) => legacy_phone(s).map(|p| p.map(Value::String)),
            other => Err(format!("a JSON {}, not text", json_type(other))),
        },
        Field::IsActive => match raw {
            Value::Bool(true) => Ok(None),
            Value::Bool(false) => Ok(Some(Value::Bool(false))),
            other => Err(format!("a JSON {}, not a boolean", json_type(other))),
        },
        Field::PrivacySettings => match raw {
            Value::Object(m) if m.is_empty() => Ok(None),
            Value::Object(_) => Ok(Some(raw.clone())),
            other => Err(format!("a JSON {}, not an object", json_type(other))),
        },
        Field::CurrentStreak | Field::Xp => match raw.as_i64() {
            Some(0) => Ok(None),
            Some(n) if (1..=i32::MAX as i64).contains(&n) => Ok(Some(json!(n))),
            Some(_) => Err("negative or too large".to_string()),
            None => Err(format!("a JSON {}, not an integer", json_type(raw))),
        },
    }
}

/// Per-table counts of a run's report (SPEC §5).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TableCounts {
    pub rows: i64,
    pub migrated: i64,
    pub merged: i64,
    pub already_migrated: i64,
    pub unmigratable: i64,
    pub conflicts: i64,
}

/// A run's report; also its progress (`phase`, batches, the backfill cursor), stored in
/// `nura_migration_runs.report` after every step.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub run_id: i64,
    pub dry_run: bool,
    pub legacy_schema: String,
    pub phase: String,
    pub sources: BTreeMap<String, TableCounts>,
    pub skipped_tables: Vec<String>,
    pub users_created: i64,
    pub users_merged: i64,
    pub auth_backfilled: i64,
    pub auth_backfill_failed: i64,
    pub legacy_passwords_without_auth: i64,
    pub rows_total: i64,
    pub rows_done: i64,
    pub batches_total: i64,
    pub batches_done: i64,
    /// Legacy ids that two tables used for two different people: `nura_resolve_user_id(id)`
    /// answers with one of them; `nura_resolve_user_id(id, legacy_table)` tells them apart.
    #[serde(default)]
    pub ambiguous_ids: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill_after: Option<String>,
    #[serde(default)]
    pub plan_seconds: f64,
    #[serde(default)]
    pub apply_seconds: f64,
}

fn quote(name: &str) -> String {
    pgrx::spi::quote_identifier(name)
}

fn fail(e: pgrx::spi::Error) -> ! {
    error!("nura_users: migration failed: {e}")
}

fn argument_error(message: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        message,
        None,
    )
}

/// The trimmed address if it is usable for matching (the rules of `nura_sync_user`), else NULL.
#[pg_extern(immutable, strict, parallel_safe)]
fn nura_legacy_email(email: &str) -> Option<String> {
    let trimmed = email.trim();
    crate::payload::check_email(trimmed).ok()?;
    sync::normalize_email(trimmed)
}

/// The JSON of legacy row `alias` (a row of its table, whose `json` columns are `json_columns`):
/// `to_jsonb`, except for a row with a `\u` escape in a json column, which goes through
/// [`nura_legacy_row`]: a cell that jsonb refuses (`\u0000`, a lone
/// surrogate) then marks the row instead of failing the statement. The plan and verify read
/// rows with this same expression. (On a catalog not yet updated to 0.6.0: `to_jsonb`.)
pub fn row_json_sql(schema: &str, json_columns: &[String], alias: &str) -> String {
    let plain = format!("pg_catalog.to_jsonb({alias})");
    if json_columns.is_empty() || !crate::schema::has_function(schema, "nura_legacy_row(text)") {
        return plain;
    }
    let escaped = json_columns
        .iter()
        .map(|c| {
            format!(
                "pg_catalog.strpos({alias}.{}::text, E'\\\\u') OPERATOR(pg_catalog.>) 0",
                quote(c)
            )
        })
        .collect::<Vec<_>>()
        .join(" OR ");
    format!(
        "(CASE WHEN {escaped} THEN {schema}.nura_legacy_row(pg_catalog.to_json({alias})::text) ELSE {plain} END)"
    )
}

/// A legacy row (the text of `to_json` of it) as `jsonb`, for a row whose json columns hold a `\u` escape:
/// a cell that `jsonb` refuses (`\u0000`, a lone surrogate; or nested past 128 levels, which
/// is read no further here) becomes its JSON text, and the key `__nura_unreadable` names those
/// columns, so that the plan makes the row an `unmigratable` issue holding it (and verify reads
/// the same). Every other cell is the `jsonb` that `::jsonb` gives. PARALLEL SAFE, with no
/// subtransaction: the plan and verify scan legacy tables in parallel workers.
#[pg_extern(immutable, strict, parallel_safe)]
fn nura_legacy_row(row: &str) -> RawJsonb {
    let columns: Map<String, Value> =
        match serde_json::from_str::<BTreeMap<String, Box<serde_json::value::RawValue>>>(row) {
            Ok(columns) => {
                let mut out = Map::new();
                let mut unreadable = Vec::new();
                for (column, raw) in columns {
                    match serde_json::from_str::<Value>(raw.get()) {
                        Ok(value) if !holds_nul(&value) => {
                            out.insert(column, value);
                        }
                        _ => {
                            out.insert(column.clone(), Value::String(raw.get().to_string()));
                            unreadable.push(column);
                        }
                    }
                }
                if !unreadable.is_empty() {
                    out.insert(
                        "__nura_unreadable".into(),
                        Value::String(unreadable.join(", ")),
                    );
                }
                out
            }
            // Not an object of columns, or one nested too deep to split: the whole row as one
            // unreadable value.
            Err(_) => Map::from_iter([
                (
                    "__nura_unreadable".to_string(),
                    Value::String("(the row)".into()),
                ),
                ("row".to_string(), Value::String(row.to_string())),
            ]),
        };
    RawJsonb::from_value(&Value::Object(columns))
}

/// Whether a JSON value holds a NUL character (in a string or a key), which `jsonb` cannot.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// The json columns of a legacy table (for [`row_json_sql`]).
pub fn json_columns(legacy_schema: &str, table: Table) -> Vec<String> {
    typed_columns(legacy_schema, table).json
}

/// Which of the legacy tables exist in `legacy_schema`.
fn present_tables(legacy_schema: &str) -> Vec<Table> {
    let names = plans::read_scalar::<Vec<String>>(
        "SELECT pg_catalog.array_agg(c.relname::text) FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         WHERE n.nspname OPERATOR(pg_catalog.=) $1 \
           AND c.relname OPERATOR(pg_catalog.=) ANY ('{chat_users,voice_users,custom_users}'::name[]) \
           AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p,v,m,f}'::\"char\"[])",
        &[legacy_schema.into()],
    )
    .unwrap_or_else(|e| fail(e))
    .unwrap_or_default();
    Table::ALL
        .into_iter()
        .filter(|t| names.iter().any(|n| n == t.name()))
        .collect()
}

/// Which of a legacy table's id and `created_at` columns the plan and verify may read as they
/// are, without the row's JSON: an id column of type `uuid`, a `created_at` of type
/// `timestamptz` or `timestamp`. Reading them from the JSON gives the same values (`to_jsonb`
/// prints them, the casts read them back; `timestamp` in the session's time zone either way),
/// but the id's text is matched against a pattern per row, and that was a fifth of the plan
/// (1M rows: 21.7 s against 26.6 s). A column of any other type, or none, is read from the JSON.
#[derive(Clone, Default)]
struct TypedColumns {
    id: bool,
    created_at: bool,
    /// The id column is a `uuid` with a unique index of its own (a primary key, say): no two
    /// rows of the table share an id, so the plan needs no tie-break among them (see [`plan`]).
    id_unique: bool,
    /// Columns of type `json`, which may hold what `jsonb` refuses (see [`row_json_sql`]).
    json: Vec<String>,
    /// The table has a `created_at` column (of any type).
    has_created_at: bool,
}

fn typed_columns(legacy_schema: &str, table: Table) -> TypedColumns {
    let types = plans::rows(
        "SELECT a.attname::text, a.atttypid FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.attrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND c.relname OPERATOR(pg_catalog.=) $2 \
           AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped \
           AND (a.attname OPERATOR(pg_catalog.=) ANY ($3::name[]) \
                OR a.atttypid OPERATOR(pg_catalog.=) 'pg_catalog.json'::pg_catalog.regtype)",
        &[
            legacy_schema.into(),
            table.name().into(),
            vec![table.id_column(), "created_at"].into(),
        ],
        |r| {
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<pg_sys::Oid>(2)?,
            ))
        },
    )
    .unwrap_or_else(|e| fail(e));
    let mut typed = TypedColumns::default();
    for (name, oid) in types {
        if oid == Some(pg_sys::JSONOID) {
            typed.json.push(name);
        } else if name == table.id_column() {
            typed.id = oid == Some(pg_sys::UUIDOID);
        } else if name == "created_at" {
            typed.has_created_at = true;
            typed.created_at =
                matches!(oid, Some(o) if o == pg_sys::TIMESTAMPTZOID || o == pg_sys::TIMESTAMPOID);
        }
    }
    typed.id_unique = typed.id
        && plans::read_scalar::<bool>(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_index i \
                 JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.indrelid \
                 JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid \
                 WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND c.relname OPERATOR(pg_catalog.=) $2 \
                   AND a.attname OPERATOR(pg_catalog.=) $3::name AND NOT a.attisdropped \
                   AND i.indisunique AND i.indisvalid AND i.indimmediate AND i.indpred IS NULL \
                   AND i.indexprs IS NULL AND i.indnkeyatts OPERATOR(pg_catalog.=) 1 \
                   AND i.indkey[0] OPERATOR(pg_catalog.=) a.attnum)",
            &[
                legacy_schema.into(),
                table.name().into(),
                table.id_column().into(),
            ],
        )
        .unwrap_or_else(|e| fail(e))
        .unwrap_or(false);
    typed
}

/// A run as stored: status, dry run, legacy schema, batch size, and its report, or why the report
/// cannot be read (a hand-edited or damaged row: the run cannot go on from it).
type StoredRun = (String, bool, String, i32, Result<Report, String>);

fn load_run(core: &Core, run_id: i64) -> Option<StoredRun> {
    let schema = &core.schema;
    plans::first_row(
        &format!(
            "SELECT status, dry_run, legacy_schema, batch_size, report \
             FROM {schema}.nura_migration_runs WHERE id OPERATOR(pg_catalog.=) $1 FOR UPDATE"
        ),
        &[run_id.into()],
        |r| {
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<bool>(2)?.unwrap_or(false),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<i32>(4)?.unwrap_or(1),
                r.get::<JsonB>(5)?.map(|j| j.0).unwrap_or(Value::Null),
            ))
        },
    )
    .unwrap_or_else(|e| fail(e))
    .map(|(status, dry, legacy, batch, report)| {
        let report = serde_json::from_value::<Report>(report).map_err(|e| e.to_string());
        (status, dry, legacy, batch, report)
    })
}

/// The report of a run that must go on; ERROR 55000 naming the run when it cannot be read, so
/// that a `CALL nura_run_migration()` says what is wrong instead of stepping for ever.
fn readable_report(run_id: i64, report: Result<Report, String>) -> Report {
    report.unwrap_or_else(|why| {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("migration run {run_id} has a report that cannot be read: {why}"),
            Some(&format!(
                "Roll the run back with SELECT nura_rollback_migration({run_id}), then migrate again."
            )),
        )
    })
}

fn save_report(core: &Core, run_id: i64, report: &Report, finished: Option<&str>) {
    let schema = &core.schema;
    let value = serde_json::to_value(report).unwrap_or(Value::Null);
    plans::execute(
        &format!(
            "UPDATE {schema}.nura_migration_runs SET report = $2, \
                 status = COALESCE($3, status), \
                 finished_at = CASE WHEN $3 IS NULL THEN finished_at ELSE pg_catalog.now() END \
             WHERE id OPERATOR(pg_catalog.=) $1"
        ),
        &[run_id.into(), JsonB(value).into(), finished.into()],
    )
    .unwrap_or_else(|e| fail(e));
}

/// Create a run, or (`resume`) return the interrupted one of the same legacy schema.
fn begin(
    core: &Core,
    dry_run: bool,
    batch_size: Option<i32>,
    legacy: Option<&str>,
    resume: bool,
) -> i64 {
    let batch_size = match batch_size {
        Some(n) if n > 0 => n,
        _ => argument_error("batch_size must be a positive integer"),
    };
    let legacy = match legacy.map(str::trim) {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => argument_error("legacy_schema must name a schema"),
    };
    let exists = plans::read_scalar::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.=) $1)",
        &[legacy.as_str().into()],
    )
    .unwrap_or_else(|e| fail(e))
    .unwrap_or(false);
    if !exists {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_SCHEMA_NAME,
            format!("legacy_schema \"{legacy}\" does not exist"),
            None,
        );
    }
    let schema = &core.schema;
    // Runs start one at a time; a running (interrupted) run blocks a new real run.
    plans::execute(
        &format!("LOCK TABLE {schema}.nura_migration_runs IN SHARE ROW EXCLUSIVE MODE"),
        &[],
    )
    .unwrap_or_else(|e| fail(e));
    if !dry_run {
        let running = plans::first_row(
            &format!(
                "SELECT id, legacy_schema FROM {schema}.nura_migration_runs \
                 WHERE status OPERATOR(pg_catalog.=) 'running' AND NOT dry_run ORDER BY id LIMIT 1"
            ),
            &[],
            |r| {
                Ok((
                    r.get::<i64>(1)?.unwrap_or(0),
                    r.get::<String>(2)?.unwrap_or_default(),
                ))
            },
        )
        .unwrap_or_else(|e| fail(e));
        if let Some((id, running_schema)) = running {
            if resume && running_schema == legacy {
                notice!("nura_users: resuming migration run {id}");
                return id;
            }
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
                format!("migration run {id} (legacy schema \"{running_schema}\") has not finished"),
                Some("CALL nura_run_migration() with its legacy schema resumes it; nura_rollback_migration(run_id) undoes it."),
            );
        }
    }
    let id = plans::scalar::<i64>(
        &format!(
            "INSERT INTO {schema}.nura_migration_runs (dry_run, legacy_schema, batch_size) \
             VALUES ($1, $2, $3) RETURNING id"
        ),
        &[dry_run.into(), legacy.as_str().into(), batch_size.into()],
    )
    .unwrap_or_else(|e| fail(e))
    .unwrap_or(0);
    let present = present_tables(&legacy);
    let report = Report {
        run_id: id,
        dry_run,
        legacy_schema: legacy,
        phase: "backfill".into(),
        sources: present
            .iter()
            .map(|t| (t.name().to_string(), TableCounts::default()))
            .collect(),
        skipped_tables: Table::ALL
            .into_iter()
            .filter(|t| !present.contains(t))
            .map(|t| t.name().to_string())
            .collect(),
        ..Report::default()
    };
    save_report(core, id, &report, None);
    id
}

/// [`step`] in a memory context of its own, deleted when the step returns.
fn step_in_own_memory(core: &Core, run_id: i64) -> bool {
    // SAFETY: nothing allocated inside outlives the closure: the step returns a plain bool, and
    // what it keeps (the report) it has written to the table.
    unsafe { PgMemoryContexts::new("nura_users migration step").switch_to(|_| step(core, run_id)) }
}

/// One step of run `run_id`; true when the run has finished.
fn step(core: &Core, run_id: i64) -> bool {
    let Some((status, dry_run, legacy, batch_size, report)) = load_run(core, run_id) else {
        raise(
            PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            format!("migration run {run_id} does not exist"),
            None,
        );
    };
    if status != "running" {
        return true;
    }
    let mut report = readable_report(run_id, report);
    let started = Instant::now();
    match report.phase.as_str() {
        "backfill" => {
            if !sync::auth_users_exists() {
                report.phase = "plan".into();
            } else if dry_run {
                report.auth_backfilled = count_missing_auth(core);
                report.phase = "plan".into();
            } else {
                let done = backfill_batch(core, run_id, batch_size, &mut report);
                if done {
                    report.phase = "plan".into();
                }
                notice!(
                    "nura_users migration run {run_id}: {} auth users backfilled",
                    report.auth_backfilled
                );
            }
        }
        "plan" => {
            plan(core, run_id, &legacy, batch_size, dry_run, &mut report);
            report.plan_seconds = started.elapsed().as_secs_f64();
            report.phase = "apply".into();
            notice!(
                "nura_users migration run {run_id}: {} legacy rows planned in {} batches",
                report.rows_total,
                report.batches_total
            );
        }
        "apply" if report.batches_done < report.batches_total => {
            apply_batch(
                core,
                run_id,
                report.batches_done as i32,
                dry_run,
                &mut report,
            );
            report.batches_done += 1;
            report.apply_seconds += started.elapsed().as_secs_f64();
            let rate = report.rows_done as f64 / report.apply_seconds.max(1e-6);
            let eta = (report.rows_total - report.rows_done) as f64 / rate.max(1e-6);
            notice!(
                    "nura_users migration run {run_id}: batch {}/{}, {}/{} rows, {:.0} rows/s, ETA {:.0} s",
                    report.batches_done,
                    report.batches_total,
                    report.rows_done,
                    report.rows_total,
                    rate,
                    eta
                );
        }
        // Every batch done: the run finishes below.
        "apply" | "done" => {}
        other => {
            let shown: String = other.chars().take(64).collect();
            readable_report(run_id, Err(format!("unknown phase {shown:?}")));
        }
    }
    let finished = report.phase == "done"
        || (report.phase == "apply" && report.batches_done >= report.batches_total);
    if finished {
        report.phase = "done".into();
        report.backfill_after = None;
        let schema = &core.schema;
        plans::execute(
            &format!(
                "DELETE FROM {schema}.nura_migration_rows WHERE run_id OPERATOR(pg_catalog.=) $1"
            ),
            &[run_id.into()],
        )
        .unwrap_or_else(|e| fail(e));
        // The tables grew by up to the legacy row count within minutes: fresh statistics, so
        // that verify and everyday queries do not plan for the empty tables of before.
        if !dry_run {
            plans::execute_once(
                &format!(
                    "ANALYZE {schema}.users, {schema}.user_service_profiles, \
                     {schema}.user_id_aliases, {schema}.nura_migration_issues"
                ),
                &[],
            )
            .unwrap_or_else(|e| fail(e));
        }
    }
    save_report(core, run_id, &report, finished.then_some("completed"));
    finished
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
    .unwrap_or_else(|e| fail(e))
    .unwrap_or(0)
}

/// The `users` row the auth trigger would have written for this auth user.
fn backfill_row(id: Uuid, auth: &AuthUser, created_at: Option<Micros>, now: Micros) -> UserRow {
    let mut req = SyncRequest::new(Source::SupabaseAuth, id);
    req.auth = Some(auth.clone());
    let (mut row, _) = sync::desired_row(&UserRow::new(id, now), &req, now);
    if created_at.is_some() {
        row.created_at = created_at;
    }
    row
}

fn ts(row: &pgrx::spi::SpiHeapTupleData<'_>, name: &str) -> pgrx::spi::Result<Option<Micros>> {
    Ok(row
        .get_by_name::<TimestampWithTimeZone, _>(name)?
        .map(pg_sys::TimestampTz::from))
}

/// The statement that records, in `nura_migration_created`, the users `ids` of `from` as what
/// run `$1` created (`what`, an expression of `from`): as one array per kind since 0.5.0, or one
/// row per user in a database whose `ALTER EXTENSION nura_users UPDATE` is still to come.
fn record_created(schema: &str, ids: &str, what: &str, from: &str) -> String {
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

/// Whether `nura_migration_created` has the shape of 0.5.0 (see [`record_created`]).
fn created_as_arrays(schema: &str) -> bool {
    crate::schema::has_column(schema, "nura_migration_created", "user_ids")
}

/// Insert users, each recorded as what the run created (`nura_migration_created.what`); returns
/// the ids inserted. With `skip_taken`, a row whose id or email is taken is left out (the
/// backfill hands those to the sync core); without, a taken one raises 23505.
fn insert_users(core: &Core, run_id: i64, rows: &[(UserRow, &str)], skip_taken: bool) -> Vec<Uuid> {
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
    .unwrap_or_else(|e| fail(e))
    .unwrap_or_default()
}

/// Insert a batch's new users: the plan found their ids and emails free, so one taken since
/// (by a transaction that committed while the batch waited on it) fails the batch with 40001,
/// to be run again. Without `ON CONFLICT` PostgreSQL skips the speculative insertion (two index
/// probes and a WAL record per row: a third of the insert's time). The unique violation is
/// turned into the 40001 as it propagates, without a subtransaction: one per batch would
/// overflow the backend's cache of subtransaction ids in a long `nura_migrate_legacy`, which
/// slows every snapshot in the cluster until it commits.
fn insert_planned_users(core: &Core, run_id: i64, rows: &[(UserRow, &str)], batch_no: i32) {
    PgTryBuilder::new(|| insert_users(core, run_id, rows, false))
        .catch_when(PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION, |_| {
            raise(
                PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
                format!(
                    "migration run {run_id}: a user with the id or email of a migrated one was \
                     created concurrently in batch {batch_no}"
                ),
                Some("Run the migration again: it resumes at this batch."),
            )
        })
        .execute();
}

/// The log row of a user the migration created or changed; its duration is the time this user
/// took so far (the batch's statements are shared, and its log rows are written together).
fn log_entry(
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
    let (b, a) = sync::log_payloads(before, after, &changed, after.deleted_at.is_some());
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
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
        .map(|u| Uuid::from_bytes(*u.as_bytes()))
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
        |r| {
            let id: Uuid = r
                .get_by_name("auth_id")?
                .unwrap_or_else(|| Uuid::from_bytes([0; 16]));
            Ok((id, ts(r, "auth_created_at")?, AuthUser::from_spi_at(r, 3)?))
        },
    )
    .unwrap_or_else(|e| fail(e));
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
fn backfill_through_sync(
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
                failure.sqlstate(),
                failure.message,
                one,
            ));
            Err(message)
        }
    }
}

/// The plan's per-row staging table (see [`plan`]): temporary, dropped right after use, and at
/// the end of the transaction at the latest.
const R0_TABLE: &str = "pg_temp.nura_migration_plan_rows";

#[cfg(any(test, feature = "pg_test"))]
thread_local! {
    /// Tests: plan with the per-row work inline, as without the right to temporary tables.
    static FORCE_INLINE_R0: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a test asked for the inline plan (`FORCE_INLINE_R0`); never outside the tests.
fn inline_r0_forced() -> bool {
    #[cfg(any(test, feature = "pg_test"))]
    return FORCE_INLINE_R0.get();
    #[cfg(not(any(test, feature = "pg_test")))]
    return false;
}

/// Write the run's plan: every legacy row with its cluster, target, planned id, batch or reason.
fn plan(
    core: &Core,
    run_id: i64,
    legacy: &str,
    batch_size: i32,
    dry_run: bool,
    report: &mut Report,
) {
    let schema = &core.schema;
    let tables = present_tables(legacy);
    if tables.is_empty() {
        return;
    }
    let legacy_q = quote(legacy);
    let has_auth = sync::auth_users_exists();
    // A created_at held as text: read as PostgreSQL reads one, NULL (and the row an issue) for
    // text that is no time. (A catalog not yet updated to 0.6.0: a plain cast, as before.)
    let text_created = if crate::schema::has_function(schema, "nura_legacy_timestamptz(text)") {
        format!("{schema}.nura_legacy_timestamptz(t.created_at::text)")
    } else {
        "t.created_at::text::timestamptz".to_string()
    };
    let sources = tables
        .iter()
        .map(|t| {
            let typed = typed_columns(legacy, *t);
            format!(
                "SELECT '{name}'::text AS source_table, {prec}::int2 AS precedence, \
                        {row_json} AS j, '{idcol}'::text AS idcol, \
                        {id_typed} AS id_typed, {id} AS typed_id, {id_unique} AS id_unique, \
                        {created} AS typed_created_at, {raw_created} AS raw_created \
                 FROM {legacy_q}.{name} t",
                name = t.name(),
                prec = t.precedence(),
                row_json = row_json_sql(schema, &typed.json, "t"),
                idcol = t.id_column(),
                id_typed = typed.id,
                id_unique = typed.id_unique,
                id = if typed.id {
                    format!("t.{}", quote(t.id_column()))
                } else {
                    "NULL::uuid".into()
                },
                // Only a created_at of another type calls nura_legacy_timestamptz, which keeps
                // the statement out of parallel workers (see sql/migration.sql).
                created = if typed.created_at {
                    "t.created_at::timestamptz".to_string()
                } else if typed.has_created_at {
                    text_created.clone()
                } else {
                    "NULL::timestamptz".to_string()
                },
                raw_created = if typed.has_created_at && !typed.created_at {
                    "t.created_at::text"
                } else {
                    "NULL::text"
                },
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let auth_ident = if has_auth {
        format!(
            " UNION ALL SELECT a.id, CASE WHEN a.deleted_at IS NULL \
                   THEN pg_catalog.lower(pg_catalog.btrim(a.email::text)) END, \
                   COALESCE(a.is_sso_user, false), 0 \
              FROM auth.users a WHERE NOT EXISTS \
                   (SELECT FROM {schema}.users u WHERE u.id OPERATOR(pg_catalog.=) a.id)"
        )
    } else {
        String::new()
    };
    let (auth_join, auth_target) = if has_auth {
        (
            "LEFT JOIN auth.users au ON r.precedence OPERATOR(pg_catalog.=) 3 \
                 AND au.id OPERATOR(pg_catalog.=) r.source_id",
            "au.id",
        )
    } else {
        ("", "NULL::uuid")
    };
    let no_auth_reason = if has_auth {
        "custom_users.user_id has no account in auth.users"
    } else {
        "custom_users rows need auth.users, which does not exist"
    };
    let text_id = legacy_uuid_sql(schema, "s.j OPERATOR(pg_catalog.->>) s.idcol");
    // Each row's fingerprint (see apply_batch), computed here in the parallel staging and kept
    // in the work list (0.6.0; a catalog not yet updated has no column for it).
    let (hash_column, hash_value) =
        if crate::schema::has_column(schema, "nura_migration_rows", "row_hash") {
            (", row_hash", ", r0.row_hash")
        } else {
            ("", "")
        };
    // What an earlier run placed (see the note on re-runs below); a first run over these tables
    // has no aliases of them, and its plan skips the join and its window.
    let placed_before = plans::read_scalar::<bool>(
        &format!(
            "SELECT EXISTS (SELECT FROM {schema}.user_id_aliases a \
                            WHERE a.source OPERATOR(pg_catalog.=) ANY ($1) AND a.run_id IS NOT NULL)"
        ),
        &[tables.iter().map(|t| t.name()).collect::<Vec<_>>().into()],
    )
    .unwrap_or_else(|e| fail(e))
    .unwrap_or(false);
    let (alias_columns, alias_join, home_matched) = if placed_before {
        (
            "('u:' OPERATOR(pg_catalog.||) al.user_id::text) COLLATE pg_catalog.\"C\" AS home, \
             al.user_id AS alias_user",
            format!(
                "LEFT JOIN {schema}.user_id_aliases al ON al.alias_id OPERATOR(pg_catalog.=) r.source_id \
                     AND al.source OPERATOR(pg_catalog.=) r.source_table"
            ),
            "COALESCE(pg_catalog.bool_or(k0.matched_cluster OPERATOR(pg_catalog.=) k0.home) OVER \
                 (PARTITION BY k0.source_id, k0.precedence), false)",
        )
    } else {
        (
            "NULL::text COLLATE pg_catalog.\"C\" AS home, NULL::uuid AS alias_user",
            String::new(),
            "false",
        )
    };
    // Rows placed by an earlier run (SPEC §5, a re-run): the alias of their id in their table
    // names the user they went to (`home`). A row that still matches that user is its owner; a
    // row of that id matching nobody there is the same person's row changed since (it goes home,
    // its changes merged with their conflicts); a row of that id matching someone else while
    // another matches home is another person, whom the alias cannot also mean (unmigratable).
    // So a row placed once is never turned into an issue by a later one that shares its id.
    // One row per legacy row with what the plan needs of it, and `ord` to join its data back
    // at the end. `tie` orders rows that nothing else orders (one id twice in a table without a
    // primary key, with the same created_at) by their content, so that a dry run and the real
    // run, whose rows come in different orders, agree. It hashes the row's text (jsonb's own hash
    // takes 1 and 1.0 for one value, which the merge tells apart), and only where rows can tie:
    // not for a uuid id with a unique index (1M rows: the text adds 1.4 s to a 5.8 s statement).
    let r0 = format!(
        "SELECT pg_catalog.row_number() OVER () AS ord, x.* FROM \
         (SELECT s.source_table, s.precedence, \
                       s.j OPERATOR(pg_catalog.-) 'password_hash' AS data, \
                       pg_catalog.jsonb_hash_extended(s.j OPERATOR(pg_catalog.-) 'password_hash', 0) AS row_hash, \
                       COALESCE(s.j OPERATOR(pg_catalog.->>) 'password_hash', '') OPERATOR(pg_catalog.<>) '' AS has_password, \
                       CASE WHEN s.id_typed THEN s.typed_id \
                            ELSE {text_id} END AS source_id, \
                       s.typed_created_at AS created_at, s.raw_created, \
                       s.j OPERATOR(pg_catalog.->>) '__nura_unreadable' AS unreadable, \
                       NULLIF(pg_catalog.btrim(s.j OPERATOR(pg_catalog.->>) 'email'), '') AS raw_email, \
                       CASE WHEN s.precedence OPERATOR(pg_catalog.<) 3 \
                            THEN {schema}.nura_legacy_email(s.j OPERATOR(pg_catalog.->>) 'email') END AS email, \
                       CASE WHEN NOT s.id_unique THEN pg_catalog.hashtextextended(s.j::text, 0) END AS tie \
                FROM ({sources}) s) x"
    );
    // The per-row work above (the row as JSON, its email checked) is a third of the plan. Written
    // first into a temporary table, it runs in parallel workers (1M rows: 3.7-3.9 s against
    // 6-7 s; the whole plan 19.5-21.4 s against 22.0-25.1 s): inside the plan's INSERT it
    // cannot, and the row number it needs as a key keeps it above any Gather. Inline instead when
    // no workers may run (then staging only writes the rows once more), without the right to
    // create temporary tables, or when a table of that name is in the way.
    let staged_r0 = plans::read_scalar::<bool>(
        &format!(
            "SELECT pg_catalog.current_setting('max_parallel_workers_per_gather')::int \
                        OPERATOR(pg_catalog.>) 0 \
                    AND pg_catalog.has_database_privilege(pg_catalog.current_database(), 'TEMPORARY') \
                    AND pg_catalog.to_regclass('{R0_TABLE}') IS NULL"
        ),
        &[],
    )
    .unwrap_or_else(|e| fail(e))
    .unwrap_or(false)
        && !inline_r0_forced();
    // The plan's statements sort and hash every legacy row (see below): they get at least
    // nura_users.migration_work_mem, for their own duration only.
    // SAFETY: reads the work_mem setting of this backend.
    let work_mem = std::ffi::CString::new(
        unsafe { pg_sys::work_mem }
            .max(crate::settings::MIGRATION_WORK_MEM.get())
            .to_string(),
    )
    .expect("a number has no NUL");
    let work_mem = ("work_mem", work_mem.as_c_str());
    let r0_cte = if staged_r0 {
        let [setup, tuple] = crate::settings::PARALLEL_SCANS;
        crate::settings::with_settings(&[work_mem, setup, tuple], || {
            plans::execute_once(
                &format!("CREATE TEMPORARY TABLE {R0_TABLE} USING heap ON COMMIT DROP AS {r0}"),
                &[],
            )
        })
        .unwrap_or_else(|e| fail(e));
        format!("r0 AS NOT MATERIALIZED (SELECT * FROM {R0_TABLE})")
    } else {
        format!("r0 AS MATERIALIZED ({r0})")
    };
    let sql = format!(
        "WITH {r0_cte}, \
         r AS (SELECT r0.source_table, r0.ord, r0.precedence, r0.has_password, r0.source_id, \
                      r0.created_at, r0.raw_email, r0.email, r0.raw_created, r0.unreadable, \
                      pg_catalog.row_number() OVER \
                   (ORDER BY r0.precedence, r0.created_at NULLS LAST, r0.source_id, r0.tie) AS row_no \
               FROM r0), \
         ident AS (SELECT u.id, pg_catalog.lower(u.email) AS lemail, u.is_sso_user AS sso, 1 AS pref \
                   FROM {schema}.users u{auth_ident}), \
         by_email AS (SELECT DISTINCT ON (lemail) lemail, id FROM ident \
                      WHERE lemail IS NOT NULL AND NOT sso ORDER BY lemail, pref), \
         m AS (SELECT r.*, \
                      CASE WHEN r.precedence OPERATOR(pg_catalog.=) 3 THEN {auth_target} \
                           WHEN r.email IS NOT NULL THEN be.id ELSE bi.id END AS matched_id, \
                      {alias_columns} \
               FROM r \
               LEFT JOIN by_email be ON r.email IS NOT NULL \
                    AND be.lemail OPERATOR(pg_catalog.=) pg_catalog.lower(r.email) \
               LEFT JOIN ident bi ON r.email IS NULL AND r.precedence OPERATOR(pg_catalog.<) 3 \
                    AND bi.id OPERATOR(pg_catalog.=) r.source_id \
               {alias_join} \
               {auth_join}), \
         k0 AS (SELECT m.*, CASE WHEN m.matched_id IS NOT NULL THEN 'u:' OPERATOR(pg_catalog.||) m.matched_id::text \
                                 WHEN m.email IS NOT NULL THEN 'e:' OPERATOR(pg_catalog.||) pg_catalog.lower(m.email) \
                            END COLLATE pg_catalog.\"C\" AS matched_cluster \
                FROM m), \
         k1 AS (SELECT k0.*, {home_matched} AS home_matched FROM k0), \
         k AS (SELECT k1.*, \
                      CASE WHEN k1.home IS NOT NULL AND NOT k1.home_matched THEN k1.alias_user \
                           ELSE k1.matched_id END AS target_id, \
                      CASE WHEN k1.home IS NOT NULL AND NOT k1.home_matched THEN k1.home \
                           ELSE k1.matched_cluster END AS cluster0 \
               FROM k1), \
         d AS (SELECT k.*, pg_catalog.first_value(k.cluster0) OVER \
                   (PARTITION BY k.source_id, k.precedence \
                    ORDER BY COALESCE(k.cluster0 OPERATOR(pg_catalog.=) k.home, false) DESC, k.cluster0 IS NULL, k.row_no) AS id_cluster \
               FROM k), \
         w AS (SELECT d.*, \
                 CASE WHEN d.unreadable IS NOT NULL \
                           THEN 'column ' OPERATOR(pg_catalog.||) d.unreadable OPERATOR(pg_catalog.||) \
                                ': JSON that jsonb cannot hold (\\u0000, a lone surrogate) or nested too deep' \
                      WHEN d.created_at IS NULL AND d.raw_created IS NOT NULL \
                           THEN 'column created_at: ' OPERATOR(pg_catalog.||) pg_catalog.quote_literal(pg_catalog.left(d.raw_created, 64)) \
                                OPERATOR(pg_catalog.||) ' is not a time' \
                      WHEN d.source_id IS NULL THEN 'the row has no id, or its id is not a uuid' \
                      WHEN d.cluster0 IS NULL AND d.precedence OPERATOR(pg_catalog.=) 3 THEN '{no_auth_reason}' \
                      WHEN d.cluster0 IS NULL AND d.raw_email IS NULL \
                           THEN 'no email address, and no user has this id' \
                      WHEN d.cluster0 IS NULL \
                           THEN 'the email address is not usable, and no user has this id' \
                      WHEN d.cluster0 OPERATOR(pg_catalog.<>) d.id_cluster \
                           THEN 'another row of this table with the same id belongs to another user' \
                 END AS reason \
               FROM d), \
         c AS (SELECT w.*, (w.reason IS NULL AND w.target_id IS NULL \
                    AND NOT EXISTS (SELECT FROM ident i WHERE i.id OPERATOR(pg_catalog.=) w.source_id)) AS may_claim \
               FROM w), \
         c2 AS (SELECT c.*, (c.may_claim AND pg_catalog.row_number() OVER \
                    (PARTITION BY c.source_id, c.may_claim ORDER BY c.row_no) OPERATOR(pg_catalog.=) 1) AS claims \
                FROM c), \
         c3 AS (SELECT c2.*, CASE WHEN c2.reason IS NULL THEN pg_catalog.first_value(CASE WHEN c2.claims THEN c2.source_id END) \
                    OVER (PARTITION BY c2.cluster0, (c2.reason IS NULL) ORDER BY c2.claims DESC, c2.row_no) END AS claimed, \
                    pg_catalog.count(*) FILTER (WHERE c2.reason IS NULL) OVER (ORDER BY c2.cluster0) AS upto, \
                    pg_catalog.count(*) FILTER (WHERE c2.reason IS NULL) OVER (PARTITION BY c2.cluster0) AS own \
                FROM c2) \
         INSERT INTO {schema}.nura_migration_rows (run_id, source_table, row_no, precedence, source_id, \
             created_at, email, cluster, target_id, planned_id, batch_no, reason, has_password, data{hash_column}) \
         SELECT $1, c3.source_table, c3.row_no, c3.precedence, c3.source_id, c3.created_at, c3.email, \
                CASE WHEN c3.reason IS NULL THEN c3.cluster0 END, c3.target_id, \
                CASE WHEN c3.reason IS NOT NULL THEN NULL \
                     WHEN c3.target_id IS NOT NULL THEN c3.target_id \
                     ELSE COALESCE(c3.claimed, pg_catalog.md5('nura_users:' OPERATOR(pg_catalog.||) c3.cluster0)::uuid) END, \
                CASE WHEN c3.reason IS NULL THEN ((c3.upto OPERATOR(pg_catalog.-) c3.own) OPERATOR(pg_catalog./) $2)::int END, \
                c3.reason, c3.has_password, r0.data{hash_value} \
         FROM c3 JOIN r0 ON r0.ord OPERATOR(pg_catalog.=) c3.ord"
    );
    // The rows of one id in one table are partitioned by (source_id, precedence): precedence
    // stands for the table (an integer sorts faster than its name), and with source_id first the
    // next window (by source_id, may_claim) needs only an incremental sort (1M rows: 20.6 s against
    // 23.0 s for the whole statement).
    // The plan sorts every legacy row a few times (narrow rows: the data is joined in once at
    // the end); with the default work_mem those sorts go to disk. This statement alone gets more.
    // Nor does it merge-join: PostgreSQL cannot know that ord is unique, expects
    // 25 times the rows, and sorts the wide rows once more (to disk) for a merge join where a hash
    // join is 15 % faster (1M rows: 31.8 s against 26.9 s).
    crate::settings::with_settings(&[work_mem, ("enable_mergejoin", c"off")], || {
        plans::execute_once(&sql, &[run_id.into(), (batch_size as i64).into()])
    })
    .unwrap_or_else(|e| fail(e));
    if staged_r0 {
        plans::execute_once(&format!("DROP TABLE {R0_TABLE}"), &[]).unwrap_or_else(|e| fail(e));
    }

    // A chat or voice row without a usable email matches the user whose id is its own. A user
    // that this very run creates under that id (a row of the person, with an email, claimed it)
    // counts too: such a row joins that person's cluster and batch, so that the next run does
    // not place it as something new (the plan's join saw only the users that existed). Not when
    // its id in its own table went to someone else: the alias of that id there is theirs.
    join_own_id_clusters(schema, run_id);

    // Unplaceable rows are issues now, with the whole row (password hash left out).
    plans::execute(
        &format!(
            "INSERT INTO {schema}.nura_migration_issues (run_id, source_table, source_id, kind, \
                 dropped_value, reason) \
             SELECT $1, s.source_table, s.source_id::text, 'unmigratable', s.data, s.reason \
             FROM {schema}.nura_migration_rows s \
             WHERE s.run_id OPERATOR(pg_catalog.=) $1 AND s.reason IS NOT NULL"
        ),
        &[run_id.into()],
    )
    .unwrap_or_else(|e| fail(e));

    let counts = plans::rows(
        &format!(
            "SELECT s.source_table, pg_catalog.count(*), \
                    pg_catalog.count(*) FILTER (WHERE s.reason IS NOT NULL), \
                    pg_catalog.count(*) FILTER (WHERE s.reason IS NOT NULL AND s.has_password), \
                    pg_catalog.max(s.batch_no), \
                    pg_catalog.count(*) FILTER (WHERE s.reason IS NULL AND s.precedence OPERATOR(pg_catalog.=) 3 \
                        AND pg_catalog.jsonb_strip_nulls(s.data OPERATOR(pg_catalog.-) '{{user_id,full_name,current_streak,xp}}'::text[]) \
                            OPERATOR(pg_catalog.<>) '{{}}'::jsonb) \
             FROM {schema}.nura_migration_rows s WHERE s.run_id OPERATOR(pg_catalog.=) $1 \
             GROUP BY s.source_table"
        ),
        &[run_id.into()],
        |r| {
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<i64>(2)?.unwrap_or(0),
                r.get::<i64>(3)?.unwrap_or(0),
                r.get::<i64>(4)?.unwrap_or(0),
                r.get::<i32>(5)?,
                r.get::<i64>(6)?.unwrap_or(0),
            ))
        },
    )
    .unwrap_or_else(|e| fail(e));
    let mut max_batch: Option<i32> = None;
    let mut custom_extras = 0;
    for (table, rows, unmigratable, passwords, batch, extras) in counts {
        let entry = report.sources.entry(table).or_default();
        entry.rows = rows;
        entry.unmigratable = unmigratable;
        report.rows_total += rows - unmigratable;
        report.legacy_passwords_without_auth += passwords;
        max_batch = max_batch.max(batch);
        custom_extras += extras;
    }
    report.batches_total = max_batch.map_or(0, |b| b as i64 + 1);
    report.ambiguous_ids = plans::read_scalar::<i64>(
        &format!(
            "SELECT pg_catalog.count(*) FROM (SELECT s.source_id FROM {schema}.nura_migration_rows s \
                 WHERE s.run_id OPERATOR(pg_catalog.=) $1 AND s.reason IS NULL \
                 GROUP BY s.source_id \
                 HAVING pg_catalog.count(DISTINCT s.source_table) OPERATOR(pg_catalog.>) 1 \
                    AND pg_catalog.count(DISTINCT s.cluster) OPERATOR(pg_catalog.>) 1) x"
        ),
        &[run_id.into()],
    )
    .unwrap_or_else(|e| fail(e))
    .unwrap_or(0);
    // Extra columns of custom_users live in a profile of their own service type.
    if custom_extras > 0 && !dry_run {
        plans::execute(
            &format!(
                "INSERT INTO {schema}.user_service_types (service_type, default_preferences, auto_create) \
                 VALUES ('custom', '{{}}'::jsonb, false) ON CONFLICT (service_type) DO NOTHING"
            ),
            &[],
        )
        .unwrap_or_else(|e| fail(e));
    }
}

/// One staged legacy row.
struct Staged {
    table: Table,
    source_id: Uuid,
    created_at: Option<Micros>,
    email: Option<String>,
    cluster: String,
    target_id: Option<Uuid>,
    planned_id: Option<Uuid>,
    has_password: bool,
    data: Map<String, Value>,
    already: bool,
    /// The row's JSON nests deeper than a value is read (and stored, see jsonb::MAX_DEPTH): the
    /// row is set aside as an `unmigratable` issue.
    too_deep: bool,
    row_no: i64,
    /// The row's fingerprint (`jsonb_hash_extended` of its JSON), kept on its alias.
    row_hash: i64,
    /// Its id has an alias in its table already (an earlier run placed a row of that id).
    aliased: bool,
}

impl Staged {
    fn extras(&self) -> Map<String, Value> {
        let homed = self.table.homed_columns();
        self.data
            .iter()
            .filter(|(k, v)| !homed.contains(&k.as_str()) && !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn raw(&self, column: &str) -> &Value {
        self.data.get(column).unwrap_or(&Value::Null)
    }
}

/// The user a cluster goes to.
struct Target {
    row: UserRow,
    /// The row as it was (None: created by this batch).
    before: Option<UserRow>,
    /// A row made here for an auth user that had none (backfill).
    backfill: bool,
    auth: bool,
}

/// A value dropped in favour of another: a conflict issue.
fn conflict(
    row: &Staged,
    field: &str,
    user: Uuid,
    kept: Option<Value>,
    dropped: Value,
    reason: Option<String>,
) -> Value {
    json!({
        "source_table": row.table.name(),
        "source_id": row.source_id.to_string(),
        "field": field,
        "user_id": user.to_string(),
        "kept_value": kept.unwrap_or(Value::Null),
        "dropped_value": dropped,
        "reason": reason,
    })
}

/// Whether a legacy `created_at` can be a time the row was made: not later than now (with the
/// clock skew `nura_sync_user` allows). A later one is kept as a conflict issue, not taken.
fn plausible_created_at(at: Micros, now: Micros) -> bool {
    at <= now + crate::payload::MAX_CLOCK_SKEW_US
}

/// Merge one cluster's rows into its target (SPEC §5 precedence); returns the conflict issues.
fn merge_cluster(rows: &[&Staged], target: &mut Target, now: Micros) -> Vec<Value> {
    let mut issues = Vec::new();
    let id = target.row.id;
    let deleted = target.row.deleted_at.is_some();
    // Email: the rows that matched by email carry the target's address; an address that could
    // not be used (and so did not match) is kept as a conflict.
    for row in rows {
        let raw = row.raw("email");
        let raw_text = raw.as_str().map(str::trim).filter(|s| !s.is_empty());
        let same = |e: &str| {
            target
                .row
                .email
                .as_deref()
                .is_some_and(|t| sync::same_email(Some(t), Some(e)))
        };
        match (&row.email, raw_text) {
            (Some(e), _) if target.row.email.is_none() && !target.auth && !deleted => {
                target.row.email = Some(e.clone())
            }
            (Some(e), _) if same(e) => {}
            (Some(e), _) => issues.push(conflict(
                row,
                "email",
                id,
                target.row.email.clone().map(Value::String),
                Value::String(e.clone()),
                None,
            )),
            (None, Some(_)) => issues.push(conflict(
                row,
                "email",
                id,
                target.row.email.clone().map(Value::String),
                raw.clone(),
                Some("not a usable email address".into()),
            )),
            (None, None) => {}
        }
    }
    for field in Field::ALL {
        let locked_reason = if target.auth && field == Field::PhoneNumber {
            Some("auth.users owns phone_number")
        } else if deleted && field.is_pii() {
            Some("the user is deleted")
        } else {
            None
        };
        let mut kept = field.of_row(&target.row);
        for row in rows {
            let Some(column) = row.table.column(field) else {
                continue;
            };
            let raw = row.raw(column);
            match legacy_value(field, raw) {
                Ok(None) => {}
                Err(reason) => issues.push(conflict(
                    row,
                    field.name(),
                    id,
                    kept.clone(),
                    raw.clone(),
                    Some(reason),
                )),
                Ok(Some(value)) => {
                    if kept.as_ref() == Some(&value) {
                        continue;
                    }
                    if kept.is_none() && locked_reason.is_none() {
                        field.set(&mut target.row, &value);
                        kept = Some(value);
                    } else {
                        let reason = if kept.is_none() {
                            locked_reason.map(str::to_string)
                        } else {
                            None
                        };
                        issues.push(conflict(row, field.name(), id, kept.clone(), value, reason));
                    }
                }
            }
        }
    }
    for row in rows {
        if let Some(at) = row.created_at.filter(|at| !plausible_created_at(*at, now)) {
            issues.push(conflict(
                row,
                "created_at",
                id,
                None,
                crate::user_row::ts_json(Some(at)),
                Some("later than the time of the migration".into()),
            ));
        }
    }
    // A new user was created when its earliest legacy row was.
    if target.before.is_none() && !target.backfill {
        if let Some(first) = rows
            .iter()
            .filter_map(|r| r.created_at)
            .filter(|at| plausible_created_at(*at, now))
            .min()
        {
            target.row.created_at = Some(first);
        }
    }
    issues
}

/// A profile row the batch writes: `track` records it as created by the run, `fresh` inserts
/// it without `ON CONFLICT` (a new user's).
struct ProfileWrite {
    user_id: Uuid,
    service: &'static str,
    preferences: Value,
    metadata: Value,
    created_at: Option<Micros>,
    track: bool,
    fresh: bool,
}

/// A profile as the batch leaves it.
struct ProfileOut {
    preferences: Value,
    metadata: Value,
    created_at: Option<Micros>,
    existed: bool,
}

/// The arguments of the batch's profile statement: the run, then one array per column (a JSON
/// null is SQL NULL, as jsonb_to_recordset read it before).
fn profile_args(run_id: i64, rows: &[ProfileWrite]) -> Vec<DatumWithOid<'static>> {
    let json = |v: &Value| (!v.is_null()).then(|| RawJsonb::from_value(v));
    vec![
        run_id.into(),
        plans::column(rows, |p| p.user_id),
        plans::column(rows, |p| p.service),
        plans::column(rows, |p| json(&p.preferences)),
        plans::column(rows, |p| json(&p.metadata)),
        plans::column(rows, |p| crate::user_row::ts_value(p.created_at)),
        plans::column(rows, |p| p.track),
        plans::column(rows, |p| p.fresh),
    ]
}

fn apply_batch(core: &Core, run_id: i64, batch_no: i32, dry_run: bool, report: &mut Report) {
    let schema = &core.schema;
    let now = transaction_now();
    // A row is already migrated when this very row was placed before (SPEC §5): its alias keeps
    // the fingerprints of the rows it placed. Another row with the same id (a table without a
    // primary key), or the row changed since, is placed again. (Aliases of 0.5.0 and before have
    // no fingerprints, nor does a catalog not yet updated: then the id alone counts, as it did.)
    let fingerprints = has_fingerprints(schema);
    // The fingerprint is computed by the plan, in its parallel staging, when the work list has
    // the column (0.6.0); a run planned before the update has none there.
    let row_hash = if crate::schema::has_column(schema, "nura_migration_rows", "row_hash") {
        "COALESCE(s.row_hash, pg_catalog.jsonb_hash_extended(s.data, 0))"
    } else {
        "pg_catalog.jsonb_hash_extended(s.data, 0)"
    };
    let same_row = if fingerprints {
        "(a.row_hashes IS NULL OR h.row_hash OPERATOR(pg_catalog.=) ANY (a.row_hashes))"
    } else {
        "true"
    };
    let staged = plans::rows(
        &format!(
            "SELECT s.source_table, s.source_id, s.created_at, s.email, s.cluster, s.target_id, \
                    s.planned_id, s.has_password, s.data, \
                    (SELECT {same_row} FROM {schema}.user_id_aliases a \
                     WHERE a.alias_id OPERATOR(pg_catalog.=) s.source_id \
                       AND a.source OPERATOR(pg_catalog.=) s.source_table) AS placed, \
                    s.row_no, h.row_hash \
             FROM {schema}.nura_migration_rows s, \
                  LATERAL (SELECT {row_hash} AS row_hash) h \
             WHERE s.run_id OPERATOR(pg_catalog.=) $1 AND s.batch_no OPERATOR(pg_catalog.=) $2 \
               AND s.reason IS NULL \
             ORDER BY s.cluster, s.precedence, s.created_at NULLS LAST, s.row_no"
        ),
        &[run_id.into(), batch_no.into()],
        |r| {
            let table = r.get::<String>(1)?.unwrap_or_default();
            let (data, too_deep) = match r.get::<MaybeDeep>(9)? {
                Some(MaybeDeep(Ok(Value::Object(m)))) => (m, false),
                Some(MaybeDeep(Err(_))) => (Map::new(), true),
                _ => (Map::new(), false),
            };
            Ok(Staged {
                table: Table::from_name(&table).unwrap_or(Table::Custom),
                source_id: r
                    .get::<Uuid>(2)?
                    .unwrap_or_else(|| Uuid::from_bytes([0; 16])),
                created_at: r
                    .get::<TimestampWithTimeZone>(3)?
                    .map(pg_sys::TimestampTz::from),
                email: r.get::<String>(4)?,
                cluster: r.get::<String>(5)?.unwrap_or_default(),
                target_id: r.get::<Uuid>(6)?,
                planned_id: r.get::<Uuid>(7)?,
                has_password: r.get::<bool>(8)?.unwrap_or(false),
                data,
                too_deep,
                // NULL: no alias; false: its alias placed another row (or this one before a
                // change); true: this row was placed.
                already: r.get::<bool>(10)?.unwrap_or(false),
                aliased: r.get::<bool>(10)?.is_some(),
                row_no: r.get::<i64>(11)?.unwrap_or(0),
                row_hash: r.get::<i64>(12)?.unwrap_or(0),
            })
        },
    )
    .unwrap_or_else(|e| fail(e));

    // Clusters in order; rows already migrated by an earlier run are counted and left alone,
    // rows too deep to read are issues.
    set_aside_too_deep(core, run_id, &staged, report);
    let placed: HashSet<(Uuid, Table)> = staged
        .iter()
        .filter(|r| r.already)
        .map(|r| (r.source_id, r.table))
        .collect();
    let mut clusters: Vec<Vec<&Staged>> = Vec::new();
    for row in &staged {
        report.rows_done += 1;
        if row.too_deep {
            continue;
        }
        if row.already {
            report
                .sources
                .entry(row.table.name().into())
                .or_default()
                .already_migrated += 1;
            continue;
        }
        match clusters.last_mut() {
            Some(c) if c[0].cluster == row.cluster => c.push(row),
            _ => clusters.push(vec![row]),
        }
    }
    if clusters.is_empty() {
        return;
    }

    let lock = if dry_run { "" } else { " FOR UPDATE" };
    let cols = UserRow::column_list();
    let ids: Vec<Uuid> = clusters
        .iter()
        .filter_map(|c| c[0].target_id.or(c[0].planned_id))
        .collect();
    let emails: Vec<String> = clusters
        .iter()
        .filter_map(|c| c[0].cluster.strip_prefix("e:").map(str::to_string))
        .collect();
    let mut by_id: HashMap<Uuid, UserRow> = HashMap::new();
    for row in plans::rows(
        &format!(
            "SELECT {cols} FROM {schema}.users WHERE id OPERATOR(pg_catalog.=) ANY ($1) ORDER BY id{lock}"
        ),
        &[ids.clone().into()],
        UserRow::from_tuple,
    )
    .unwrap_or_else(|e| fail(e))
    {
        by_id.insert(row.id, row);
    }
    let mut by_email: HashMap<String, UserRow> = HashMap::new();
    for row in plans::rows(
        &format!(
            "SELECT {cols} FROM {schema}.users WHERE NOT is_sso_user \
             AND pg_catalog.lower(email) OPERATOR(pg_catalog.=) ANY ($1) ORDER BY id{lock}"
        ),
        &[emails.into()],
        UserRow::from_tuple,
    )
    .unwrap_or_else(|e| fail(e))
    {
        if let Some(e) = &row.email {
            by_email.insert(sync::email_key(e), row);
        }
    }
    let mut auth: HashMap<Uuid, (AuthUser, Option<Micros>)> = HashMap::new();
    if sync::auth_users_exists() {
        let mut auth_ids = ids.clone();
        auth_ids.extend(by_email.values().map(|r| r.id));
        for (id, created, user) in plans::rows(
            &format!(
                "SELECT a.id AS auth_id, a.created_at AS auth_created_at, {AUTH_SELECT} \
                 FROM auth.users a WHERE a.id OPERATOR(pg_catalog.=) ANY ($1)"
            ),
            &[auth_ids.into()],
            |r| {
                let id: Uuid = r
                    .get_by_name("auth_id")?
                    .unwrap_or_else(|| Uuid::from_bytes([0; 16]));
                Ok((id, ts(r, "auth_created_at")?, AuthUser::from_spi_at(r, 3)?))
            },
        )
        .unwrap_or_else(|e| fail(e))
        {
            auth.insert(id, (user, created));
        }
    }

    // An auth user the plan targets may have no users row yet (it signed up after the backfill
    // while the sync was detached, or its backfill failed). When another row holds its email,
    // the batch's own insert would collide with that row on every retry: the sync core adopts
    // it first, as the backfill does. Those it refuses a row to are kept in `refused`: their
    // legacy rows become issues with its reason.
    let mut refused: HashMap<Uuid, String> = HashMap::new();
    if !dry_run {
        let orphans: Vec<(Uuid, String, AuthUser)> = clusters
            .iter()
            .filter_map(|c| c[0].target_id)
            .filter(|id| !by_id.contains_key(id))
            .filter_map(|id| {
                let (user, created) = auth.get(&id)?;
                let email = sync::email_key(&backfill_row(id, user, *created, now).email?);
                (!user.is_sso_user).then(|| (id, email, user.clone()))
            })
            .collect();
        if !orphans.is_empty() {
            let held: HashSet<String> = plans::rows(
                &format!(
                    "SELECT pg_catalog.lower(email) FROM {schema}.users \
                     WHERE NOT is_sso_user AND pg_catalog.lower(email) OPERATOR(pg_catalog.=) ANY ($1)"
                ),
                &[orphans.iter().map(|(_, e, _)| e.clone()).collect::<Vec<_>>().into()],
                |r| Ok(r.get::<String>(1)?.unwrap_or_default()),
            )
            .unwrap_or_else(|e| fail(e))
            .into_iter()
            .collect();
            let mut adopted: Vec<Uuid> = Vec::new();
            for (id, _, user) in orphans.iter().filter(|(_, email, _)| held.contains(email)) {
                match backfill_through_sync(core, *id, user, report) {
                    Ok(()) => adopted.push(*id),
                    Err(message) => {
                        refused.insert(*id, message);
                    }
                }
            }
            if !adopted.is_empty() {
                for row in plans::rows(
                    &format!(
                        "SELECT {cols} FROM {schema}.users WHERE id OPERATOR(pg_catalog.=) ANY ($1) \
                         ORDER BY id FOR UPDATE"
                    ),
                    &[adopted.into()],
                    UserRow::from_tuple,
                )
                .unwrap_or_else(|e| fail(e))
                {
                    by_id.insert(row.id, row);
                }
            }
        }
    }

    // Resolve each cluster's target.
    let mut targets: Vec<Option<Target>> = Vec::with_capacity(clusters.len());
    let mut vanished: Vec<Value> = Vec::new();
    for cluster in &clusters {
        let first = cluster[0];
        let lemail = first.cluster.strip_prefix("e:");
        let found = first
            .target_id
            .or(first.planned_id)
            .and_then(|id| by_id.get(&id))
            .filter(|row| {
                // A new user's planned id taken meanwhile by someone else is not this person.
                first.target_id.is_some()
                    || lemail.is_none()
                    || row.email.as_deref() == lemail
                    || row.email.as_deref().map(sync::email_key).as_deref() == lemail
            })
            .or_else(|| lemail.and_then(|e| by_email.get(e)));
        let target = match found {
            Some(row) => Some(Target {
                row: row.clone(),
                before: Some(row.clone()),
                backfill: false,
                auth: auth.contains_key(&row.id),
            }),
            None => match first.target_id {
                Some(id) if refused.contains_key(&id) => None,
                Some(id) => auth.get(&id).map(|(user, created)| Target {
                    row: backfill_row(id, user, *created, now),
                    before: None,
                    backfill: true,
                    auth: true,
                }),
                None => {
                    let planned = first
                        .planned_id
                        .unwrap_or_else(|| Uuid::from_bytes([0; 16]));
                    let id = if by_id.contains_key(&planned) {
                        derived_id(&first.cluster)
                    } else {
                        planned
                    };
                    let mut row = UserRow::new(id, now);
                    row.email = first.email.clone();
                    Some(Target {
                        row,
                        before: None,
                        backfill: false,
                        auth: false,
                    })
                }
            },
        };
        if target.is_none() {
            let reason = match first.target_id.and_then(|id| refused.get(&id)) {
                Some(message) => format!(
                    "the auth user this row matched has no users row, and none could be made: {message}"
                ),
                None => "the user this row matched was deleted during the migration".to_string(),
            };
            for row in cluster {
                vanished.push(json!({
                    "source_table": row.table.name(),
                    "source_id": row.source_id.to_string(),
                    "dropped_value": Value::Object(row.data.clone()),
                    "reason": reason,
                }));
                report
                    .sources
                    .entry(row.table.name().into())
                    .or_default()
                    .unmigratable += 1;
            }
        }
        targets.push(target);
    }

    // Existing profiles of the services the batch touches.
    let existing_ids: Vec<Uuid> = targets
        .iter()
        .flatten()
        .filter(|t| t.before.is_some())
        .map(|t| t.row.id)
        .collect();
    // A profile nested deeper than a value is read (written by hand: the API refuses it) is
    // known but unread (None): it is left as it is, and what the batch would merge into it is
    // recorded as a conflict.
    let mut profiles: HashMap<(Uuid, String), Option<(Value, Value)>> = HashMap::new();
    if !existing_ids.is_empty() {
        for (user, service, prefs, meta) in plans::rows(
            &format!(
                "SELECT user_id, service_type, service_preferences, service_metadata \
                 FROM {schema}.user_service_profiles \
                 WHERE user_id OPERATOR(pg_catalog.=) ANY ($1) \
                   AND service_type OPERATOR(pg_catalog.=) ANY ('{{chat,voice,custom}}'::text[]) \
                 ORDER BY user_id, service_type{lock}"
            ),
            &[existing_ids.into()],
            |r| {
                Ok((
                    r.get::<Uuid>(1)?
                        .unwrap_or_else(|| Uuid::from_bytes([0; 16])),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<MaybeDeep>(3)?.map_or(Ok(json!({})), |j| j.0),
                    r.get::<MaybeDeep>(4)?.map_or(Ok(json!({})), |j| j.0),
                ))
            },
        )
        .unwrap_or_else(|e| fail(e))
        {
            let read = match (prefs, meta) {
                (Ok(prefs), Ok(meta)) => Some((prefs, meta)),
                _ => None,
            };
            profiles.insert((user, service), read);
        }
    }

    let mut new_users: Vec<(UserRow, &str)> = Vec::new();
    let mut updated_users: Vec<Value> = Vec::new();
    let mut profile_rows: Vec<ProfileWrite> = Vec::new();
    // One alias per id and table, with the fingerprints of the rows it places (text: arrays of
    // arrays must be rectangular).
    let mut aliases: Aliases = Default::default();
    let mut alias_at: HashMap<(Uuid, Table), usize> = HashMap::new();
    let mut issues: Vec<Value> = Vec::new();
    let mut logs: Vec<LogEntry> = Vec::new();
    for (cluster, target) in clusters.iter().zip(targets.iter_mut()) {
        let Some(target) = target else { continue };
        // A log row's duration is the time this user took here (the batch's statements are shared).
        let started = Instant::now();
        issues.extend(merge_cluster(cluster, target, now));
        let id = target.row.id;
        let created = target.before.is_none();
        for (n, row) in cluster.iter().enumerate() {
            let counts = report.sources.entry(row.table.name().into()).or_default();
            if created && !target.backfill && n == 0 {
                counts.migrated += 1;
            } else {
                counts.merged += 1;
            }
            if row.has_password && !target.auth {
                report.legacy_passwords_without_auth += 1;
            }
            // Two rows of one table with the same id and person give one alias.
            match alias_at.get(&(row.source_id, row.table)) {
                Some(&at) => aliases.3[at].push(row.row_hash),
                None => {
                    alias_at.insert((row.source_id, row.table), aliases.0.len());
                    aliases.0.push(row.source_id);
                    aliases.1.push(row.table.name());
                    aliases.2.push(id);
                    aliases.3.push(vec![row.row_hash]);
                    aliases.4.push(row.aliased);
                }
            }
        }
        // Profiles: one per service the person used (custom only for extra columns).
        for table in Table::ALL {
            let rows: Vec<&&Staged> = cluster.iter().filter(|r| r.table == table).collect();
            if rows.is_empty() {
                continue;
            }
            let key = (id, table.service().to_string());
            let current = match profiles.get(&key) {
                Some(None) => {
                    issues.extend(unread_profile_conflicts(&rows, table, id));
                    continue;
                }
                Some(Some(profile)) => Some(profile),
                None => None,
            };
            let mut legacy = Map::new();
            for row in &rows {
                let extras = row.extras();
                if extras.is_empty() {
                    continue;
                }
                // The columns an earlier run kept for this id stay while the row they came from
                // is still there (placed, unchanged, in this batch); a changed row's replace them.
                let earlier = placed
                    .contains(&(row.source_id, table))
                    .then(|| {
                        current
                            .and_then(|c| c.1.get("legacy"))
                            .and_then(|l| l.get(row.source_id.to_string()))
                            .cloned()
                    })
                    .flatten();
                // A table without a primary key may hold one id twice for one person: the first
                // row's columns are kept, the other's are a conflict (nothing is lost unsaid).
                match legacy.get(&row.source_id.to_string()).cloned().or(earlier) {
                    None => {
                        legacy.insert(row.source_id.to_string(), Value::Object(extras));
                    }
                    Some(kept) if kept == Value::Object(extras.clone()) => {}
                    Some(kept) => issues.push(conflict(
                        row,
                        "legacy_columns",
                        id,
                        Some(kept),
                        Value::Object(extras),
                        None,
                    )),
                }
            }
            if table == Table::Custom && legacy.is_empty() {
                continue;
            }
            let mut out = ProfileOut {
                preferences: current.map_or(json!({}), |p| p.0.clone()),
                metadata: current.map_or(json!({}), |p| p.1.clone()),
                created_at: rows
                    .iter()
                    .filter_map(|r| r.created_at)
                    .filter(|at| plausible_created_at(*at, now))
                    .min(),
                existed: current.is_some(),
            };
            if table == Table::Chat {
                let mut kept = non_empty_object(&out.preferences);
                for row in &rows {
                    let raw = row.raw("notification_prefs");
                    match legacy_value(Field::PrivacySettings, raw) {
                        Ok(None) => {}
                        Err(reason) => issues.push(conflict(
                            row,
                            "notification_prefs",
                            id,
                            kept.clone(),
                            raw.clone(),
                            Some(reason),
                        )),
                        Ok(Some(v)) if kept.is_none() => {
                            out.preferences = v.clone();
                            kept = Some(v);
                        }
                        Ok(Some(v)) if kept.as_ref() == Some(&v) => {}
                        Ok(Some(v)) => issues.push(conflict(
                            row,
                            "notification_prefs",
                            id,
                            kept.clone(),
                            v,
                            None,
                        )),
                    }
                }
            }
            if !legacy.is_empty() {
                let meta = out.metadata.as_object_mut();
                if let Some(meta) = meta {
                    let entry = meta
                        .entry("legacy")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if !entry.is_object() {
                        *entry = Value::Object(Map::new());
                    }
                    if let Some(map) = entry.as_object_mut() {
                        map.extend(legacy);
                    }
                }
            }
            let changed = current.is_none_or(|c| c.0 != out.preferences || c.1 != out.metadata);
            if changed {
                profile_rows.push(ProfileWrite {
                    user_id: id,
                    service: table.service(),
                    preferences: out.preferences,
                    metadata: out.metadata,
                    created_at: out.created_at,
                    track: !out.existed && !created,
                    // A new user's profiles are new (a backfilled one already has the defaults).
                    fresh: created && !target.backfill,
                });
            }
        }
        match &target.before {
            None => {
                let what = if target.backfill { "backfill" } else { "user" };
                logs.extend(log_entry(
                    &UserRow::new(id, now),
                    &target.row,
                    if target.backfill {
                        SyncType::Backfilled
                    } else {
                        SyncType::Created
                    },
                    started,
                ));
                if target.backfill {
                    // The auth user's row is the backfill's (a dry run counted it there): the
                    // legacy rows merge into an existing account.
                    if !dry_run {
                        report.auth_backfilled += 1;
                    }
                    report.users_merged += 1;
                } else {
                    report.users_created += 1;
                }
                new_users.push((target.row.clone(), what));
            }
            Some(before) => {
                report.users_merged += 1;
                if before != &target.row {
                    target.row.updated_at = Some(now);
                    logs.extend(log_entry(before, &target.row, SyncType::Updated, started));
                    updated_users.push(target.row.to_json());
                }
            }
        }
    }

    for issue in &issues {
        let table = issue["source_table"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        report.sources.entry(table).or_default().conflicts += 1;
    }
    if !vanished.is_empty() {
        write_issues(core, run_id, "unmigratable", vanished);
    }
    write_issues(core, run_id, "conflict", issues);
    if dry_run {
        return;
    }
    insert_planned_users(core, run_id, &new_users, batch_no);
    let backfilled: Vec<Uuid> = new_users
        .iter()
        .filter(|(_, what)| *what == "backfill")
        .map(|(r, _)| r.id)
        .collect();
    core.create_default_profiles(&backfilled);
    if !updated_users.is_empty() {
        plans::execute(
            &format!(
                "UPDATE {schema}.users u SET email = v.email, full_name = v.full_name, \
                     phone_number = v.phone_number, is_active = v.is_active, \
                     privacy_settings = v.privacy_settings, current_streak = v.current_streak, \
                     xp = v.xp, updated_at = v.updated_at \
                 FROM pg_catalog.jsonb_populate_recordset(NULL::{schema}.users, $1) v \
                 WHERE u.id OPERATOR(pg_catalog.=) v.id"
            ),
            &[JsonB(Value::Array(updated_users)).into()],
        )
        .unwrap_or_else(|e| fail(e));
    }
    if !profile_rows.is_empty() {
        // Profiles added to users the run did not create, for its rollback.
        let record = record_created(
            schema,
            "v.user_id",
            "'profile:' OPERATOR(pg_catalog.||) v.service_type",
            "v WHERE v.track",
        );
        plans::execute(
            &format!(
                "WITH v AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($2::uuid[]), \
                     pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::jsonb[]), \
                     pg_catalog.unnest($5::jsonb[]), pg_catalog.unnest($6::timestamptz[]), \
                     pg_catalog.unnest($7::boolean[]), pg_catalog.unnest($8::boolean[])) \
                     AS x(user_id, service_type, service_preferences, service_metadata, \
                          created_at, track, fresh)), \
                 fresh AS (INSERT INTO {schema}.user_service_profiles (user_id, service_type, \
                           service_preferences, service_metadata, created_at) \
                       SELECT v.user_id, v.service_type, v.service_preferences, v.service_metadata, \
                              COALESCE(v.created_at, pg_catalog.now()) FROM v WHERE v.fresh), \
                 p AS (INSERT INTO {schema}.user_service_profiles (user_id, service_type, \
                           service_preferences, service_metadata, created_at) \
                       SELECT v.user_id, v.service_type, v.service_preferences, v.service_metadata, \
                              COALESCE(v.created_at, pg_catalog.now()) FROM v WHERE NOT v.fresh \
                       ON CONFLICT (user_id, service_type) DO UPDATE \
                       SET service_preferences = EXCLUDED.service_preferences, \
                           service_metadata = EXCLUDED.service_metadata, updated_at = pg_catalog.now() \
                       RETURNING user_id, service_type) \
                 {record}"
            ),
            &profile_args(run_id, &profile_rows),
        )
        .unwrap_or_else(|e| fail(e));
    }
    if !aliases.0.is_empty() {
        write_aliases(schema, run_id, aliases, fingerprints);
    }
    core.log_many(&logs);
}

/// What a batch would have merged into a profile it could not read (see `apply_batch`), as
/// conflicts: the rows' `notification_prefs` and extra columns.
fn unread_profile_conflicts(rows: &[&&Staged], table: Table, user: Uuid) -> Vec<Value> {
    let reason = format!(
        "the user's {} profile nests deeper than {} levels and was left as it is",
        table.service(),
        crate::jsonb::MAX_DEPTH
    );
    let mut issues = Vec::new();
    for row in rows {
        if table == Table::Chat && non_empty_object(row.raw("notification_prefs")).is_some() {
            let value = row.raw("notification_prefs").clone();
            issues.push(conflict(
                row,
                "notification_prefs",
                user,
                None,
                value,
                Some(reason.clone()),
            ));
        }
        let extras = row.extras();
        if !extras.is_empty() {
            issues.push(conflict(
                row,
                "legacy_columns",
                user,
                None,
                Value::Object(extras),
                Some(reason.clone()),
            ));
        }
    }
    issues
}

/// Legacy rows of a batch whose JSON nests deeper than a value is read become `unmigratable`
/// issues holding the row (copied in SQL: it cannot be read here), and the batch goes on.
fn set_aside_too_deep(core: &Core, run_id: i64, staged: &[Staged], report: &mut Report) {
    let deep: Vec<i64> = staged
        .iter()
        .filter(|r| r.too_deep && !r.already)
        .map(|r| r.row_no)
        .collect();
    if deep.is_empty() {
        return;
    }
    for row in staged.iter().filter(|r| r.too_deep && !r.already) {
        report
            .sources
            .entry(row.table.name().into())
            .or_default()
            .unmigratable += 1;
    }
    let schema = &core.schema;
    plans::execute(
        &format!(
            "INSERT INTO {schema}.nura_migration_issues (run_id, source_table, source_id, kind, \
                 dropped_value, reason) \
             SELECT $1, s.source_table, s.source_id::text, 'unmigratable', s.data, \
                    'a column nests deeper than {} levels, which users and profiles do not hold' \
             FROM {schema}.nura_migration_rows s \
             WHERE s.run_id OPERATOR(pg_catalog.=) $1 AND s.row_no OPERATOR(pg_catalog.=) ANY ($2)",
            crate::jsonb::MAX_DEPTH
        ),
        &[run_id.into(), deep.into()],
    )
    .unwrap_or_else(|e| fail(e));
}

/// The plan's rows without a usable email that no user's id matched, whose id this run gives a
/// new user (see [`plan`]): they join that user's cluster and batch. Three scans of the work list
/// at the most (the candidates, then the rows near them), none of them when there is no candidate.
fn join_own_id_clusters(schema: &str, run_id: i64) {
    let reasons = "ARRAY['no email address, and no user has this id', \
                   'the email address is not usable, and no user has this id']";
    let candidates = plans::scalar::<i64>(
        &format!(
            "SELECT pg_catalog.count(*) FROM {schema}.nura_migration_rows r \
             WHERE r.run_id OPERATOR(pg_catalog.=) $1 AND r.precedence OPERATOR(pg_catalog.<) 3 \
               AND r.reason OPERATOR(pg_catalog.=) ANY ({reasons}) AND r.source_id IS NOT NULL"
        ),
        &[run_id.into()],
    )
    .unwrap_or_else(|e| fail(e))
    .unwrap_or(0);
    if candidates == 0 {
        return;
    }
    // Not when the row's id in its own table went to someone else: that alias is theirs.
    plans::execute(
        &format!(
            "WITH cand AS MATERIALIZED (SELECT r.ctid AS tid, r.source_table, r.source_id \
                      FROM {schema}.nura_migration_rows r \
                      WHERE r.run_id OPERATOR(pg_catalog.=) $1 AND r.precedence OPERATOR(pg_catalog.<) 3 \
                        AND r.reason OPERATOR(pg_catalog.=) ANY ({reasons}) AND r.source_id IS NOT NULL), \
                  near AS MATERIALIZED (SELECT n.source_table, n.source_id, n.planned_id, n.target_id, \
                             n.cluster, n.batch_no \
                      FROM {schema}.nura_migration_rows n \
                      WHERE n.run_id OPERATOR(pg_catalog.=) $1 AND n.reason IS NULL \
                        AND (n.planned_id IN (SELECT c.source_id FROM cand c) \
                             OR n.source_id IN (SELECT c.source_id FROM cand c))), \
                  claim AS (SELECT DISTINCT ON (x.planned_id) x.planned_id, x.cluster, x.batch_no \
                      FROM near x WHERE x.target_id IS NULL ORDER BY x.planned_id, x.batch_no) \
             UPDATE {schema}.nura_migration_rows r \
             SET cluster = k.cluster, planned_id = k.planned_id, batch_no = k.batch_no, reason = NULL \
             FROM cand c JOIN claim k ON k.planned_id OPERATOR(pg_catalog.=) c.source_id \
             WHERE r.ctid OPERATOR(pg_catalog.=) c.tid \
               AND NOT EXISTS (SELECT FROM near o WHERE o.source_id OPERATOR(pg_catalog.=) c.source_id \
                   AND o.source_table OPERATOR(pg_catalog.=) c.source_table \
                   AND o.cluster OPERATOR(pg_catalog.<>) k.cluster)"
        ),
        &[run_id.into()],
    )
    .unwrap_or_else(|e| fail(e));
}

/// Whether `user_id_aliases` keeps row fingerprints (0.6.0; see `apply_batch`).
fn has_fingerprints(schema: &str) -> bool {
    crate::schema::has_column(schema, "user_id_aliases", "row_hashes")
}

/// The batch's aliases: legacy id, table, user, the fingerprints of the rows placed, and
/// whether the alias exists already.
type Aliases = (
    Vec<Uuid>,
    Vec<&'static str>,
    Vec<Uuid>,
    Vec<Vec<i64>>,
    Vec<bool>,
);

/// Write the batch's aliases: new ones inserted (one plain INSERT, the common case), ones an
/// earlier run made (their row changed since and was placed again) given the new
/// fingerprints. Without fingerprints (a catalog not yet updated), the new ones only.
fn write_aliases(schema: &str, run_id: i64, aliases: Aliases, fingerprints: bool) {
    let (ids, sources, users, hashes, existing) = aliases;
    // An alias nearly always places one row: its fingerprint travels as a bigint, the rare
    // further ones as text (arrays of arrays must be rectangular).
    let more = |h: &[i64]| -> Option<String> {
        (h.len() > 1).then(|| {
            let rest: Vec<String> = h[1..].iter().map(i64::to_string).collect();
            format!("{{{}}}", rest.join(","))
        })
    };
    let pick = |old: bool| -> Vec<DatumWithOid<'static>> {
        let at: Vec<usize> = (0..ids.len()).filter(|&i| existing[i] == old).collect();
        let mut args: Vec<DatumWithOid<'static>> = vec![
            run_id.into(),
            at.iter().map(|&i| ids[i]).collect::<Vec<_>>().into(),
            at.iter().map(|&i| sources[i]).collect::<Vec<_>>().into(),
            at.iter().map(|&i| users[i]).collect::<Vec<_>>().into(),
        ];
        if fingerprints {
            args.push(at.iter().map(|&i| hashes[i][0]).collect::<Vec<_>>().into());
            args.push(
                at.iter()
                    .map(|&i| more(&hashes[i]))
                    .collect::<Vec<_>>()
                    .into(),
            );
        }
        args
    };
    let rows = "ROWS FROM (pg_catalog.unnest($2::uuid[]), pg_catalog.unnest($3::text[]), \
                pg_catalog.unnest($4::uuid[])";
    let fingerprints_sql = "CASE WHEN x.more IS NULL THEN ARRAY[x.first] \
                            ELSE ARRAY[x.first] OPERATOR(pg_catalog.||) x.more::bigint[] END";
    let insert = if fingerprints {
        format!(
            "INSERT INTO {schema}.user_id_aliases (alias_id, source, user_id, run_id, row_hashes) \
             SELECT x.alias_id, x.source, x.user_id, $1, {fingerprints_sql} \
             FROM {rows}, pg_catalog.unnest($5::bigint[]), pg_catalog.unnest($6::text[])) \
                  AS x(alias_id, source, user_id, first, more)"
        )
    } else {
        format!(
            "INSERT INTO {schema}.user_id_aliases (alias_id, source, user_id, run_id) \
             SELECT x.alias_id, x.source, x.user_id, $1 FROM {rows}) AS x(alias_id, source, user_id)"
        )
    };
    if existing.iter().any(|e| !e) {
        plans::execute(&insert, &pick(false)).unwrap_or_else(|e| fail(e));
    }
    if fingerprints && existing.iter().any(|e| *e) {
        plans::execute(
            &format!(
                "UPDATE {schema}.user_id_aliases a \
                 SET row_hashes = COALESCE(a.row_hashes, '{{}}') OPERATOR(pg_catalog.||) {fingerprints_sql} \
                 FROM {rows}, pg_catalog.unnest($5::bigint[]), pg_catalog.unnest($6::text[])) \
                      AS x(alias_id, source, user_id, first, more) \
                 WHERE a.alias_id OPERATOR(pg_catalog.=) x.alias_id AND a.source OPERATOR(pg_catalog.=) x.source \
                   AND $1 IS NOT NULL"
            ),
            &pick(true),
        )
        .unwrap_or_else(|e| fail(e));
    }
}

/// A deterministic id for a new user whose planned id was taken meanwhile.
fn derived_id(cluster: &str) -> Uuid {
    let digest = plans::read_scalar::<Uuid>(
        "SELECT pg_catalog.md5('nura_users:retry:' OPERATOR(pg_catalog.||) $1)::uuid",
        &[cluster.into()],
    )
    .unwrap_or_else(|e| fail(e));
    digest.unwrap_or_else(|| Uuid::from_bytes([0; 16]))
}

fn write_issues(core: &Core, run_id: i64, kind: &str, issues: Vec<Value>) {
    if issues.is_empty() {
        return;
    }
    let schema = &core.schema;
    plans::execute(
        &format!(
            "INSERT INTO {schema}.nura_migration_issues (run_id, source_table, source_id, kind, field, \
                 user_id, kept_value, dropped_value, reason) \
             SELECT $1, x.source_table, x.source_id, $2, x.field, x.user_id, \
                    NULLIF(x.kept_value, 'null'::jsonb), x.dropped_value, x.reason \
             FROM pg_catalog.jsonb_to_recordset($3) AS x(source_table text, source_id text, field text, \
                  user_id uuid, kept_value jsonb, dropped_value jsonb, reason text)"
        ),
        &[run_id.into(), kind.into(), JsonB(Value::Array(issues)).into()],
    )
    .unwrap_or_else(|e| fail(e));
}

/// SPEC §5: migrate the legacy tables in one transaction (`dry_run`: plan and report, write
/// nothing but the run's record and its issues).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_migrate_legacy(
    dry_run: default!(Option<bool>, true),
    batch_size: default!(Option<i32>, 10000),
    legacy_schema: default!(Option<&str>, "'public'"),
) -> JsonB {
    let Some(dry_run) = dry_run else {
        argument_error("dry_run must be true or false");
    };
    let core = Core::new(extension_schema());
    let run_id = begin(&core, dry_run, batch_size, legacy_schema, false);
    // Each step's arguments and results are freed when the step ends: memory stays bounded by
    // one batch however many batches the call runs.
    while !step_in_own_memory(&core, run_id) {}
    let report = match load_run(&core, run_id) {
        Some((_, _, _, _, report)) => readable_report(run_id, report),
        None => raise(
            PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            format!("migration run {run_id} does not exist"),
            None,
        ),
    };
    JsonB(serde_json::to_value(report).unwrap_or(Value::Null))
}

/// For `CALL nura_run_migration()`: the interrupted run to resume, or a new one.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_migration_begin(batch_size: Option<i32>, legacy_schema: Option<&str>) -> i64 {
    let core = Core::new(extension_schema());
    begin(&core, false, batch_size, legacy_schema, true)
}

/// For `CALL nura_run_migration()`: one step of the run; true when it has finished.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_migration_step(run_id: i64) -> bool {
    let core = Core::new(extension_schema());
    step(&core, run_id)
}

/// SPEC §5: undo a run. Users it created that no auth user owns now go (their profiles and
/// aliases with them); profiles and aliases it added to users without an auth account go;
/// auth-backed users (backfilled, merged into, or adopted since) keep everything.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_rollback_migration(run_id: Option<i64>) -> JsonB {
    let Some(run_id) = run_id else {
        argument_error("run_id must not be NULL");
    };
    let core = Core::new(extension_schema());
    let schema = &core.schema;
    let Some((status, dry_run, _, _, _)) = load_run(&core, run_id) else {
        raise(
            PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            format!("migration run {run_id} does not exist"),
            None,
        );
    };
    if dry_run {
        argument_error(&format!(
            "migration run {run_id} was a dry run: it wrote nothing to roll back"
        ));
    }
    let raw_report = || {
        plans::scalar::<JsonB>(
            &format!("SELECT report FROM {schema}.nura_migration_runs WHERE id OPERATOR(pg_catalog.=) $1"),
            &[run_id.into()],
        )
        .unwrap_or_else(|e| fail(e))
        .map_or(Value::Null, |j| j.0)
    };
    if status == "rolled_back" {
        return JsonB(raw_report()["rollback"].clone());
    }
    let has_auth = sync::auth_users_exists();
    let backed = |col: &str| {
        if has_auth {
            format!("EXISTS (SELECT FROM auth.users a WHERE a.id OPERATOR(pg_catalog.=) {col})")
        } else {
            "false".to_string()
        }
    };
    let started = Instant::now();
    let count = |sql: String| -> i64 {
        plans::scalar::<i64>(&sql, &[run_id.into()])
            .unwrap_or_else(|e| fail(e))
            .unwrap_or(0)
    };
    // users first, as every writer takes it (an update of the extension holds users, then
    // nura_migration_created; reading the latter first could deadlock with it).
    plans::execute(
        &format!("LOCK TABLE {schema}.users IN ROW EXCLUSIVE MODE"),
        &[],
    )
    .unwrap_or_else(|e| fail(e));
    // What the run created, one row per kind and user, under the user's current id: an id whose
    // user holds no alias of the run (gone, or made again since) is followed through its
    // adoption alias, if it has one.
    let created = if created_as_arrays(schema) {
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
    };
    // Still the run's: a user it created or gave a profile to still holds an alias of the run
    // (every legacy row it placed has one; aliases go with their user). A user deleted since and
    // made again under the same id (by a later run or through the API) holds none. Counted and
    // removed in one statement, which reads the record once and sees everything as it was.
    let (kept, removed_ids, profiles) = plans::first_row(
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
            backed("u.id"),
            backed("p.user_id"),
            backed("c.user_id")
        ),
        &[run_id.into()],
        |r| {
            Ok((
                r.get::<i64>(1)?.unwrap_or(0),
                r.get::<Vec<Uuid>>(2)?.unwrap_or_default(),
                r.get::<i64>(3)?.unwrap_or(0),
            ))
        },
    )
    .unwrap_or_else(|e| fail(e))
    .unwrap_or_default();
    let aliases = count(format!(
        "WITH gone AS (DELETE FROM {schema}.user_id_aliases al \
             WHERE al.run_id OPERATOR(pg_catalog.=) $1 AND NOT {} RETURNING 1) \
         SELECT pg_catalog.count(*) FROM gone",
        backed("al.user_id")
    ));
    // The removed users' log rows keep no personal data, and each removal has its log row.
    if !removed_ids.is_empty() {
        core.scrub_logs_pii(&removed_ids);
        let logs: Vec<LogEntry> = removed_ids
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
    for table in ["nura_migration_created", "nura_migration_rows"] {
        plans::execute(
            &format!("DELETE FROM {schema}.{table} WHERE run_id OPERATOR(pg_catalog.=) $1"),
            &[run_id.into()],
        )
        .unwrap_or_else(|e| fail(e));
    }
    let rollback = json!({
        "run_id": run_id,
        "users_removed": removed_ids.len(),
        "profiles_removed": profiles,
        "aliases_removed": aliases,
        "users_kept": kept,
    });
    let mut value = raw_report();
    value["rollback"] = rollback.clone();
    plans::execute(
        &format!(
            "UPDATE {schema}.nura_migration_runs SET status = 'rolled_back', report = $2, \
                 finished_at = COALESCE(finished_at, pg_catalog.now()) \
             WHERE id OPERATOR(pg_catalog.=) $1"
        ),
        &[run_id.into(), JsonB(value).into()],
    )
    .unwrap_or_else(|e| fail(e));
    JsonB(rollback)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    /// A migration's one-off statements (its plan, the plan's temporary table, ANALYZE) are run
    /// without keeping a plan for the life of the backend; its per-batch statements are kept.
    #[pg_test]
    fn a_run_keeps_no_plan_of_its_one_off_statements() {
        Spi::run(
            "CREATE SCHEMA once; \
             CREATE TABLE once.chat_users (id uuid, email text, full_name text, phone_number text, \
                 password_hash text, privacy_settings json, notification_prefs json, \
                 is_active boolean, created_at timestamptz); \
             INSERT INTO once.chat_users (id, email, created_at) \
             SELECT gen_random_uuid(), 'once' || i || '@example.com', now() FROM generate_series(1, 20) i",
        )
        .unwrap();
        Spi::run("SELECT public.nura_migrate_legacy(false, 5, 'once')").unwrap();
        for one_off in [
            "WITH r0 AS",
            "CREATE TEMPORARY TABLE",
            "DROP TABLE",
            "ANALYZE",
        ] {
            assert_eq!(plans::kept_plans_starting_with(one_off), 0, "{one_off}");
        }
        assert!(plans::kept_plans_starting_with("SELECT s.source_table") > 0);
    }

    /// The plan reads a column as it is only for the types it may: a uuid id; a timestamptz or
    /// timestamp created_at. A domain over uuid, text, a missing column and a column dropped and
    /// added again with another type go through the row's JSON.
    #[pg_test]
    fn typed_columns_knows_which_columns_it_may_read_as_they_are() {
        Spi::run(
            "CREATE SCHEMA tc; CREATE DOMAIN tc.uid AS uuid; \
             CREATE TABLE tc.chat_users (id uuid, created_at timestamptz); \
             CREATE TABLE tc.voice_users (id tc.uid, created_at timestamp); \
             CREATE TABLE tc.custom_users (user_id text)",
        )
        .unwrap();
        let typed = |table| {
            let found = typed_columns("tc", table);
            (found.id, found.created_at)
        };
        assert_eq!(typed(Table::Chat), (true, true));
        assert_eq!(typed(Table::Voice), (false, true));
        assert_eq!(typed(Table::Custom), (false, false));
        // Unique ids: only with a unique index of the uuid column alone, valid, not partial.
        let unique = |table| typed_columns("tc", table).id_unique;
        assert!(!unique(Table::Chat));
        Spi::run("CREATE UNIQUE INDEX tc_chat_some ON tc.chat_users (id) WHERE created_at IS NULL")
            .unwrap();
        assert!(!unique(Table::Chat));
        Spi::run("CREATE UNIQUE INDEX tc_chat_two ON tc.chat_users (id, created_at)").unwrap();
        assert!(!unique(Table::Chat));
        Spi::run("ALTER TABLE tc.chat_users ADD PRIMARY KEY (id)").unwrap();
        assert!(unique(Table::Chat));
        Spi::run("CREATE UNIQUE INDEX tc_voice_id ON tc.voice_users (id)").unwrap();
        assert!(
            !unique(Table::Voice),
            "a domain over uuid is read through the JSON"
        );
        Spi::run("ALTER TABLE tc.chat_users DROP COLUMN id, ADD COLUMN id text").unwrap();
        assert_eq!(typed(Table::Chat), (false, true));
        assert!(!typed_columns("no_such_schema", Table::Chat).id);
    }

    /// The plan's per-row work staged in a temporary table (parallel workers) and computed inline
    /// give the same plan, and so do a dry run and the real run; rows that nothing else orders
    /// (one id twice in a table without a primary key, with one created_at) are ordered by their
    /// content, not by where they lie — also when they differ only in a number's scale.
    #[pg_test]
    fn staged_and_inline_plans_agree_whatever_the_row_order() {
        // Workers even for these small tables (the staging statement sets the costs to 0).
        Spi::run(
            "SET LOCAL min_parallel_table_scan_size = 0; \
             SET LOCAL max_parallel_workers_per_gather = 2",
        )
        .unwrap();
        let load = |order: &str| {
            Spi::run(&format!(
                "DROP SCHEMA IF EXISTS tie CASCADE; CREATE SCHEMA tie; \
                 CREATE TABLE tie.chat_users (id uuid, email text, full_name text, \
                     phone_number text, password_hash text, privacy_settings json, \
                     notification_prefs json, is_active boolean, created_at timestamptz, theme text); \
                 CREATE TABLE tie.voice_users (id uuid, name text, email text, phone text, \
                     password_hash text, created_at timestamptz, voice_id text); \
                 CREATE TABLE tie.custom_users (user_id uuid, full_name text, \
                     current_streak integer, xp integer, badge text); \
                 INSERT INTO tie.chat_users (id, email, full_name, privacy_settings, created_at, theme) \
                 SELECT id, email, full_name, privacy_settings::json, timestamptz '2024-01-01', theme \
                 FROM (SELECT i, md5('tie' || (i / 2))::uuid AS id, \
                              CASE WHEN i % 6 < 2 THEN 'a' || i ELSE 'p' || (i / 2) END \
                                  || '@example.com' AS email, \
                              'Name ' || i AS full_name, NULL AS privacy_settings, 'theme ' || i AS theme \
                       FROM generate_series(0, 59) i \
                       UNION ALL \
                       SELECT 100 + i, md5('num' || (i / 2))::uuid, 'n' || (i / 2) || '@example.com', \
                              'Same Name', CASE WHEN i % 2 = 0 THEN '{{\"x\": 1}}' \
                                                ELSE '{{\"x\": 1.0}}' END, 'same theme' \
                       FROM generate_series(0, 9) i) r \
                 ORDER BY i {order}; \
                 INSERT INTO tie.voice_users (id, name, email, created_at, voice_id) \
                 SELECT md5('voice' || i)::uuid, 'Voice ' || i, 'P' || i || '@Example.com ', \
                        timestamptz '2023-06-01' + i * interval '1 day', 'v' || i \
                 FROM generate_series(0, 19) i ORDER BY i {order}; \
                 INSERT INTO tie.custom_users (user_id, full_name, xp) \
                 SELECT md5('custom' || i)::uuid, 'Custom ' || i, i FROM generate_series(0, 4) i \
                 ORDER BY i {order}"
            ))
            .unwrap();
        };
        let outcome = |dry_run: bool, inline: bool| -> String {
            FORCE_INLINE_R0.set(inline);
            let report = Spi::get_one_with_args::<pgrx::JsonB>(
                "SELECT nura_migrate_legacy($1, 7, 'tie') \
                     - '{run_id,dry_run,plan_seconds,apply_seconds}'::text[]",
                &[dry_run.into()],
            )
            .unwrap()
            .unwrap();
            FORCE_INLINE_R0.set(false);
            let issues = Spi::get_one::<String>(
                "SELECT string_agg(concat_ws(' | ', source_table, source_id, kind, field, user_id, \
                     kept_value, dropped_value, reason), E'\\n' \
                     ORDER BY source_table, source_id, kind, field, dropped_value::text) \
                 FROM nura_migration_issues \
                 WHERE run_id = (SELECT max(id) FROM nura_migration_runs)",
            )
            .unwrap()
            .unwrap_or_default();
            format!("{}\n{issues}", report.0)
        };
        load("ASC");
        let expected = outcome(true, false);
        // Ten ids with two people each are unmigratable once; twenty pairs of one person keep
        // one row's extra columns and record the other's as a conflict; five pairs differ only
        // in 1 against 1.0; custom rows without auth.users are unmigratable.
        assert_eq!(
            expected.matches("belongs to another user").count(),
            10,
            "{expected}"
        );
        assert_eq!(
            expected.matches("| conflict | legacy_columns |").count(),
            20,
            "{expected}"
        );
        assert_eq!(
            expected.matches("| conflict | privacy_settings |").count(),
            5,
            "{expected}"
        );
        assert_eq!(expected.matches("custom_users |").count(), 5, "{expected}");
        assert_eq!(outcome(true, true), expected);
        load("DESC");
        assert_eq!(outcome(true, false), expected);
        assert_eq!(outcome(true, true), expected);
        // The real run plans and merges as its dry run did.
        assert_eq!(outcome(false, false), expected);
        // The staging table is gone with the plan.
        assert_eq!(
            Spi::get_one::<bool>("SELECT to_regclass('pg_temp.nura_migration_plan_rows') IS NULL")
                .unwrap(),
            Some(true)
        );
    }
}
