//! The legacy rules, pure (no SQL, no PostgreSQL call): the legacy tables in precedence order,
//! the `users` field each column fills, what counts as no value, how a legacy email, phone or row
//! is read, and how one legacy value meets the value a field holds (docs/migration.md). The plan,
//! the batches and `nura_verify_migration` all read legacy data through these. Tested with plain
//! `#[test]`s, so nothing here may reach a PostgreSQL symbol (`sync::email_key` does: keep it out).

use crate::payload::{check_phone, json_type};
use crate::sync::{self, MAX_NAME};
use crate::user_row::{Micros, UserRow};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

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

    pub(super) fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    pub(super) fn precedence(self) -> i16 {
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
    pub(super) fn column(self, field: Field) -> Option<&'static str> {
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

    /// The `users` fields this table has a column for, with the column: email (chat, voice)
    /// and the fields of [`Table::column`]. The cutover's view and reverse sync show them.
    pub fn user_columns(self) -> Vec<(&'static str, &'static str)> {
        let email = (self != Table::Custom).then_some(("email", "email"));
        email
            .into_iter()
            .chain(
                Field::ALL
                    .iter()
                    .filter_map(|f| self.column(*f).map(|c| (f.name(), c))),
            )
            .collect()
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
    pub(super) const ALL: [Field; 6] = [
        Field::FullName,
        Field::PhoneNumber,
        Field::IsActive,
        Field::PrivacySettings,
        Field::CurrentStreak,
        Field::Xp,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Field::FullName => "full_name",
            Field::PhoneNumber => "phone_number",
            Field::IsActive => "is_active",
            Field::PrivacySettings => "privacy_settings",
            Field::CurrentStreak => "current_streak",
            Field::Xp => "xp",
        }
    }

    /// The field's value in `row`; `None` when it is at its default (no value, docs/migration.md).
    pub(super) fn of_row(self, row: &UserRow) -> Option<Value> {
        match self {
            Field::FullName => row.full_name.clone().map(Value::String),
            Field::PhoneNumber => row.phone_number.clone().map(Value::String),
            Field::IsActive => (!row.is_active).then_some(Value::Bool(false)),
            // A stored value too deep to read is a value: the legacy one does not replace it.
            Field::PrivacySettings if row.privacy_settings == crate::user_row::UNREADABLE => {
                Some(crate::user_row::UNREADABLE)
            }
            Field::PrivacySettings => non_empty_object(&row.privacy_settings),
            Field::CurrentStreak => (row.current_streak != 0).then(|| json!(row.current_streak)),
            Field::Xp => (row.xp != 0).then(|| json!(row.xp)),
        }
    }

    pub(super) fn set(self, row: &mut UserRow, value: &Value) {
        match self {
            Field::FullName => row.full_name = value.as_str().map(str::to_string),
            Field::PhoneNumber => row.phone_number = value.as_str().map(str::to_string),
            Field::IsActive => row.is_active = value.as_bool().unwrap_or(true),
            // No value (a change clearing it, see [`follow_change`]) is the column's default.
            Field::PrivacySettings if value.is_null() => row.privacy_settings = json!({}),
            Field::PrivacySettings => row.privacy_settings = value.clone(),
            Field::CurrentStreak => row.current_streak = value.as_i64().unwrap_or(0) as i32,
            Field::Xp => row.xp = value.as_i64().unwrap_or(0) as i32,
        }
    }

    /// Personal data: not filled into a soft-deleted user.
    pub(super) fn is_pii(self) -> bool {
        matches!(self, Field::FullName | Field::PhoneNumber)
    }
}

pub(super) fn non_empty_object(v: &Value) -> Option<Value> {
    match v {
        Value::Object(m) if !m.is_empty() => Some(v.clone()),
        _ => None,
    }
}

/// A legacy phone number without its usual formatting (blanks, dashes, dots, parentheses).
pub(super) fn cleaned_phone(raw: &str) -> String {
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

/// A legacy address as the plan matches it: trimmed, if usable by the rules of
/// `nura_sync_user`, else `None`. Its case is kept; matching folds it in SQL.
pub(super) fn legacy_email(email: &str) -> Option<String> {
    let trimmed = email.trim();
    crate::payload::check_email(trimmed).ok()?;
    sync::normalize_email(trimmed)
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

/// What one legacy value does to a field (precedence, docs/migration.md). A batch offers a
/// field its rows' values in precedence order, so the first value wins; the user's own value
/// wins over all of them.
#[derive(Debug, PartialEq)]
pub(super) enum Merge {
    /// No value (NULL, blank, the default), or the one the field holds already.
    Nothing,
    /// The field had no value and may take one: this one.
    Take(Value),
    /// Dropped, kept as a conflict issue; `reason` when it is not just that another value won.
    Conflict {
        dropped: Value,
        reason: Option<String>,
    },
}

/// How the legacy cell `raw` meets `field`, which holds `kept`; `locked` names why the field
/// takes no legacy value at all (it is the auth user's, the user is deleted).
pub(super) fn merge_value(
    field: Field,
    kept: Option<&Value>,
    locked: Option<&str>,
    raw: &Value,
) -> Merge {
    match legacy_value(field, raw) {
        Ok(None) => Merge::Nothing,
        Err(reason) => Merge::Conflict {
            dropped: raw.clone(),
            reason: Some(reason),
        },
        Ok(Some(value)) if kept == Some(&value) => Merge::Nothing,
        Ok(Some(value)) if kept.is_none() && locked.is_none() => Merge::Take(value),
        Ok(Some(value)) => Merge::Conflict {
            dropped: value,
            reason: if kept.is_none() {
                locked.map(str::to_string)
            } else {
                None
            },
        },
    }
}

/// The three-way rule of a changed legacy row (docs/cutover.md, live legacy writes): when the
/// user's field still holds what the row held before the change (or no value, as the row did),
/// the row's new value replaces it, and a new NULL clears it (`Take(Null)`). `None` when the
/// user's value came from elsewhere: the change then meets it as any legacy value does
/// ([`merge_value`]). An UPDATE is the same source changing its mind; precedence decides
/// between sources, so without the value before every edit of a placed row would be a conflict.
pub(super) fn follow_change(
    field: Field,
    kept: Option<&Value>,
    before: &Value,
    raw: &Value,
) -> Option<Merge> {
    let before = legacy_value(field, before).ok().flatten();
    if kept != before.as_ref() {
        return None;
    }
    Some(match legacy_value(field, raw) {
        Ok(new) if new.as_ref() == kept => Merge::Nothing,
        Ok(Some(value)) => Merge::Take(value),
        Ok(None) => Merge::Take(Value::Null),
        Err(reason) => Merge::Conflict {
            dropped: raw.clone(),
            reason: Some(reason),
        },
    })
}

/// Whether a legacy `created_at` can be a time the row was made: not later than now (with the
/// clock skew `nura_sync_user` allows). A later one is kept as a conflict issue, not taken.
pub(super) fn plausible_created_at(at: Micros, now: Micros) -> bool {
    at <= now + crate::payload::MAX_CLOCK_SKEW_US
}

/// A legacy row (the text of `to_json` of it) as JSON for `nura_legacy_row`: a cell that `jsonb`
/// refuses (`\u0000`, a lone surrogate; or nested too deep to be read here) becomes its JSON
/// text, and the key `__nura_unreadable` names those columns, so that the plan makes the row an
/// `unmigratable` issue holding it. Every other cell is the value `::jsonb` gives.
pub(super) fn legacy_row(row: &str) -> Value {
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
    Value::Object(columns)
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

#[cfg(test)]
mod unit_tests {
    use super::*;
    use pgrx::Uuid;

    /// `raws` offered in turn to `field` holding `kept`: the value kept, and the conflicts.
    fn merged(
        field: Field,
        mut kept: Option<Value>,
        locked: Option<&str>,
        raws: &[Value],
    ) -> (Option<Value>, Vec<(Value, Option<String>)>) {
        let mut conflicts = Vec::new();
        for raw in raws {
            match merge_value(field, kept.as_ref(), locked, raw) {
                Merge::Nothing => {}
                Merge::Take(value) => kept = Some(value),
                Merge::Conflict { dropped, reason } => conflicts.push((dropped, reason)),
            }
        }
        (kept, conflicts)
    }

    #[test]
    fn precedence_keeps_the_first_value_and_the_users_own() {
        assert!(Table::ALL
            .windows(2)
            .all(|w| w[0].precedence() < w[1].precedence()));
        for table in Table::ALL {
            assert_eq!(Table::from_name(table.name()), Some(table));
        }
        // Rows in precedence order: no value does not count, the first value is kept (trimmed),
        // the same value again is no conflict, another one is.
        let raws = [
            json!(null),
            json!("  "),
            json!(" Ana "),
            json!("Ana"),
            json!("Bea"),
        ];
        assert_eq!(
            merged(Field::FullName, None, None, &raws),
            (Some(json!("Ana")), vec![(json!("Bea"), None)])
        );
        // The user's own value wins over every legacy one.
        assert_eq!(
            merged(Field::Xp, Some(json!(5)), None, &[json!(7), json!(5)]),
            (Some(json!(5)), vec![(json!(7), None)])
        );
        // A locked field takes nothing; the value is a conflict with the lock's reason.
        let lock = "auth.users owns phone_number";
        assert_eq!(
            merged(
                Field::PhoneNumber,
                None,
                Some(lock),
                &[json!("+49 151 1234567")]
            ),
            (None, vec![(json!("491511234567"), Some(lock.to_string()))])
        );
        // A value users cannot hold is a conflict with its reason, whatever the field holds.
        let why = "a JSON string, not a boolean".to_string();
        assert_eq!(
            merged(Field::IsActive, Some(json!(false)), None, &[json!("no")]),
            (Some(json!(false)), vec![(json!("no"), Some(why))])
        );
    }

    #[test]
    fn a_change_moves_the_value_it_gave_and_no_other() {
        let (ana, bea) = (json!("Ana"), json!("Bea"));
        // The user holds what the row held: the new value replaces it, NULL clears it.
        assert_eq!(
            follow_change(Field::FullName, Some(&ana), &ana, &bea),
            Some(Merge::Take(bea.clone()))
        );
        assert_eq!(
            follow_change(Field::FullName, Some(&ana), &json!(" Ana "), &json!(null)),
            Some(Merge::Take(Value::Null))
        );
        // Neither held a value: the new one is taken.
        assert_eq!(
            follow_change(Field::Xp, None, &json!(0), &json!(3)),
            Some(Merge::Take(json!(3)))
        );
        // Nothing changed for this field.
        assert_eq!(
            follow_change(Field::FullName, Some(&ana), &ana, &json!("Ana ")),
            Some(Merge::Nothing)
        );
        // A value users cannot hold is a conflict with its reason.
        assert!(matches!(
            follow_change(Field::Xp, None, &json!(null), &json!(-1)),
            Some(Merge::Conflict { .. })
        ));
        // The user's value came from elsewhere: the change does not decide.
        assert_eq!(
            follow_change(Field::FullName, Some(&bea), &ana, &json!("Cid")),
            None
        );
        // Clearing sets the field's default.
        let mut row = UserRow::new(Uuid::from_bytes([1; 16]), 0);
        row.privacy_settings = json!({"a": 1});
        row.is_active = false;
        for field in [Field::PrivacySettings, Field::IsActive, Field::FullName] {
            field.set(&mut row, &Value::Null);
            assert_eq!(field.of_row(&row), None, "{field:?}");
        }
    }

    #[test]
    fn defaults_are_no_value() {
        let defaults = [
            (Field::FullName, json!(" \t")),
            (Field::PhoneNumber, json!(" - ")),
            (Field::IsActive, json!(true)),
            (Field::PrivacySettings, json!({})),
            (Field::CurrentStreak, json!(0)),
            (Field::Xp, json!(0)),
        ];
        for (field, raw) in defaults {
            assert_eq!(legacy_value(field, &raw), Ok(None), "{field:?}");
            assert_eq!(legacy_value(field, &Value::Null), Ok(None), "{field:?}");
        }
        assert_eq!(
            legacy_value(Field::IsActive, &json!(false)),
            Ok(Some(json!(false)))
        );
        assert!(legacy_value(Field::Xp, &json!(-1)).is_err());
        // A new user's row holds no value in any field, so the first legacy value fills it.
        let fresh = UserRow::new(Uuid::from_bytes([1; 16]), 0);
        for field in Field::ALL {
            assert_eq!(field.of_row(&fresh), None, "{field:?}");
        }
    }

    #[test]
    fn emails_and_phones_are_normalised() {
        assert_eq!(
            legacy_email("  Ana.Lima@Example.COM\t").as_deref(),
            Some("Ana.Lima@Example.COM")
        );
        for unusable in ["", "   ", "no-at", "a@b", "a b@example.com"] {
            assert_eq!(legacy_email(unusable), None, "{unusable}");
        }
        assert_eq!(
            legacy_phone(" +49 (151) 123-45.678 "),
            Ok(Some("4915112345678".to_string()))
        );
        assert_eq!(legacy_phone(" ( ) "), Ok(None));
        assert!(legacy_phone("call me").is_err());
        assert_eq!(cleaned_phone(" (0151) 12.34 "), "01511234");
    }

    #[test]
    fn unreadable_cells_are_named() {
        let row = legacy_row(r#"{"id": 1, "prefs": {"a": "x\u0000"}}"#);
        assert_eq!(row["id"], json!(1));
        assert_eq!(row["prefs"], json!(r#"{"a": "x\u0000"}"#));
        assert_eq!(row["__nura_unreadable"], json!("prefs"));
        assert_eq!(legacy_row("[1]")["__nura_unreadable"], json!("(the row)"));
    }
}
