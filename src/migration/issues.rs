//! The issues a run records in `nura_migration_issues` (docs/migration.md): legacy rows it
//! could not place (`unmigratable`, with the whole row) and values it dropped in favour of
//! another (`conflict`, with the value kept), so that `nura_verify_migration` accounts for
//! every legacy value. Also the conflicts an adoption (docs/sync.md) leaves in a migrated user.

use super::apply::Staged;
use pgrx::datum::DatumWithOid;

use super::report::Report;
use super::rules::{non_empty_object, Field, Table};
use crate::errors::OrRaise;
use crate::jsonb::JsonB;
use crate::plans;
use crate::sync::{self, Core};
use crate::user_row::UserRow;
use pgrx::Uuid;
use serde_json::{json, Value};

/// A value dropped in favour of another: a conflict issue.
pub(super) fn conflict(
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

/// A legacy row that a batch cannot place after all: an unmigratable issue.
pub(super) fn unmigratable(row: &Staged, reason: &str) -> Value {
    json!({
        "source_table": row.table.name(),
        "source_id": row.source_id.to_string(),
        "dropped_value": Value::Object(row.data.clone()),
        "reason": reason,
    })
}

/// Write issues of `kind` (as [`conflict`] and [`unmigratable`] make them).
pub(super) fn write_issues(core: &Core, run_id: i64, kind: &str, issues: Vec<Value>) {
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
    .or_raise("migration");
}

/// Rows of run `run_id`'s work list become `unmigratable` issues holding the whole row (password
/// hash left out), with `reason` (an SQL expression over the row `s`), where `filter` holds.
fn unmigratable_from_work_list(
    schema: &str,
    run_id: i64,
    reason: &str,
    filter: &str,
    more: Option<DatumWithOid<'static>>,
) {
    let mut args: Vec<DatumWithOid<'static>> = vec![run_id.into()];
    args.extend(more);
    plans::execute(
        &format!(
            "INSERT INTO {schema}.nura_migration_issues (run_id, source_table, source_id, kind, \
                 dropped_value, reason) \
             SELECT $1, s.source_table, s.source_id::text, 'unmigratable', s.data, {reason} \
             FROM {schema}.nura_migration_rows s \
             WHERE s.run_id OPERATOR(pg_catalog.=) $1 AND {filter}"
        ),
        &args,
    )
    .or_raise("migration");
}

/// The plan's rows that cannot be placed become issues, with the plan's reason.
pub(super) fn record_unplaceable(schema: &str, run_id: i64) {
    unmigratable_from_work_list(schema, run_id, "s.reason", "s.reason IS NOT NULL", None);
}

/// Legacy rows of a batch whose JSON nests deeper than a value is read become `unmigratable`
/// issues holding the row (copied in SQL: it cannot be read here), and the batch goes on.
pub(super) fn set_aside_too_deep(core: &Core, run_id: i64, staged: &[Staged], report: &mut Report) {
    let deep: Vec<i64> = staged
        .iter()
        .filter(|r| r.too_deep && !r.already)
        .map(|r| r.row_no)
        .collect();
    if deep.is_empty() {
        return;
    }
    for row in staged.iter().filter(|r| r.too_deep && !r.already) {
        report.counts(row.table).unmigratable += 1;
    }
    let reason = format!(
        "'a column nests deeper than {} levels, which users and profiles do not hold'",
        crate::jsonb::MAX_DEPTH
    );
    let filter = "s.row_no OPERATOR(pg_catalog.=) ANY ($2)";
    unmigratable_from_work_list(&core.schema, run_id, &reason, filter, Some(deep.into()));
}

/// What a batch would have merged into a profile it could not read (see `apply::merge_profile`),
/// as conflicts: the rows' `notification_prefs` and extra columns.
pub(super) fn unread_profile_conflicts(rows: &[&&Staged], table: Table, user: Uuid) -> Vec<Value> {
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

/// An adoption (docs/sync.md) replaced values of `adopted`, a row the migration may have filled:
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
    .or_raise("migration");
}

/// The values of the issues naming `ids` (the dropped and kept values: names, addresses) leave
/// with the users' personal data (delete, soft delete, erasure: `docs/operations.md`); the issue
/// itself, its legacy row and field, stays for the run's account.
pub fn scrub_issue_values(schema: &str, ids: &[Uuid]) {
    plans::execute(
        &format!(
            "UPDATE {schema}.nura_migration_issues SET kept_value = NULL, dropped_value = NULL \
             WHERE user_id OPERATOR(pg_catalog.=) ANY ($1) \
               AND (kept_value IS NOT NULL OR dropped_value IS NOT NULL)"
        ),
        &[ids.to_vec().into()],
    )
    .or_raise("scrubbing migration issues");
}
