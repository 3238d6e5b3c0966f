//! The merge of a batch (docs/migration.md): each cluster's rows into the user it goes to,
//! field by field in precedence order (`rules`), the user's profiles of the legacy services,
//! and the aliases of the legacy ids; values dropped are recorded as conflicts. It changes
//! nothing in the database: what the batch writes is gathered in [`Writes`] (see `apply`).

use super::apply::{Previous, Profiles, Staged, Target};
use super::backfill::log_entry;
use super::issues::{conflict, unread_profile_conflicts};
use super::report::Report;
use super::rules::{
    follow_change, legacy_email, merge_value, non_empty_object, plausible_created_at, Field, Merge,
    Table,
};
use crate::log::{LogEntry, SyncType};
use crate::sync;
use crate::user_row::{Micros, UserRow};
use pgrx::Uuid;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// What the merge reads besides the clusters and their targets.
pub(super) struct Merging {
    pub(super) now: Micros,
    pub(super) dry_run: bool,
    /// Legacy rows (id, table) an earlier run placed, unchanged since.
    pub(super) placed: HashSet<(Uuid, Table)>,
    pub(super) profiles: Profiles,
    /// Changed rows' values before the change (live legacy writes; empty for a run).
    pub(super) previous: Previous,
    /// New addresses of changed rows that some user holds (see `apply::taken_addresses`).
    pub(super) taken: HashSet<String>,
}

impl Merging {
    /// `row`'s value of `column` before the change, when the row is a changed one.
    fn before<'a>(&'a self, row: &Staged, column: &str) -> Option<&'a Value> {
        self.previous
            .get(&(row.source_id, row.table))
            .map(|p| p.get(column).unwrap_or(&Value::Null))
    }
}

/// What a batch writes, gathered while its clusters merge.
#[derive(Default)]
pub(super) struct Writes {
    /// New users, with what the run records them as (`user`, `backfill`).
    pub(super) new_users: Vec<(UserRow, &'static str)>,
    /// Users the merge changed, as JSON rows.
    pub(super) updated_users: Vec<Value>,
    pub(super) profiles: Vec<ProfileWrite>,
    pub(super) aliases: Aliases,
    pub(super) conflicts: Vec<Value>,
    pub(super) unmigratable: Vec<Value>,
    pub(super) logs: Vec<LogEntry>,
}

/// The batch's aliases, one per legacy id and table, column by column as the statements take
/// them: legacy id, table, user, the fingerprints of the rows placed (an id twice in a table
/// without a primary key places two), and whether the alias exists already.
#[derive(Default)]
pub(super) struct Aliases {
    pub(super) ids: Vec<Uuid>,
    pub(super) sources: Vec<&'static str>,
    pub(super) users: Vec<Uuid>,
    pub(super) hashes: Vec<Vec<i64>>,
    pub(super) existing: Vec<bool>,
    /// Where each (id, table) is.
    at: HashMap<(Uuid, Table), usize>,
}

impl Aliases {
    /// `row` is placed in `user`: two rows of one table with the same id and person give one
    /// alias.
    fn add(&mut self, row: &Staged, user: Uuid) {
        match self.at.get(&(row.source_id, row.table)) {
            Some(&at) => self.hashes[at].push(row.row_hash),
            None => {
                self.at.insert((row.source_id, row.table), self.ids.len());
                self.ids.push(row.source_id);
                self.sources.push(row.table.name());
                self.users.push(user);
                self.hashes.push(vec![row.row_hash]);
                self.existing.push(row.aliased);
            }
        }
    }
}

/// Merge: each cluster into its target, its user row, profiles and aliases into `out`.
pub(super) fn merge(
    clusters: &[Vec<&Staged>],
    targets: Vec<Option<Target>>,
    merging: &Merging,
    out: &mut Writes,
    report: &mut Report,
) {
    for (cluster, target) in clusters.iter().zip(targets) {
        let Some(mut target) = target else { continue };
        // A log row's duration is the time this user took here (the batch's statements are shared).
        let started = Instant::now();
        out.conflicts
            .extend(merge_cluster(cluster, &mut target, merging));
        let created = target.before.is_none();
        for (n, row) in cluster.iter().enumerate() {
            let counts = report.counts(row.table);
            if created && !target.backfill && n == 0 {
                counts.migrated += 1;
            } else {
                counts.merged += 1;
            }
            if row.has_password && !target.auth {
                report.legacy_passwords_without_auth += 1;
            }
            out.aliases.add(row, target.row.id);
        }
        // Profiles: one per service the person used (custom only for extra columns).
        for table in Table::ALL {
            let rows: Vec<&&Staged> = cluster.iter().filter(|r| r.table == table).collect();
            if rows.is_empty() {
                continue;
            }
            out.profiles.extend(merge_profile(
                merging,
                &target,
                table,
                &rows,
                &mut out.conflicts,
            ));
        }
        record_user(target, started, merging, out, report);
    }
}

/// Merge one cluster's rows into its target (precedence, docs/migration.md); returns the
/// conflict issues.
fn merge_cluster(rows: &[&Staged], target: &mut Target, merging: &Merging) -> Vec<Value> {
    let now = merging.now;
    let mut issues = merge_email(rows, target, merging);
    merge_fields(rows, target, merging, &mut issues);
    for row in rows {
        if let Some(at) = row.created_at.filter(|at| !plausible_created_at(*at, now)) {
            issues.push(conflict(
                row,
                "created_at",
                target.row.id,
                None,
                crate::user_row::ts_json(Some(at)),
                Some("later than the time of the migration".into()),
            ));
        }
    }
    // A new user was created when its earliest legacy row was.
    if target.before.is_none() && !target.backfill {
        if let Some(first) = earliest_created_at(rows.iter().copied(), now) {
            target.row.created_at = Some(first);
        }
    }
    issues
}

/// The earliest plausible `created_at` of `rows`.
fn earliest_created_at<'a>(rows: impl Iterator<Item = &'a Staged>, now: Micros) -> Option<Micros> {
    rows.filter_map(|r| r.created_at)
        .filter(|at| plausible_created_at(*at, now))
        .min()
}

/// The rows that matched by email carry the target's address; an address that could not be
/// used (and so did not match) is kept as a conflict. A user without an address takes the
/// rows', unless an auth user owns it or it is deleted. A changed row whose address before the
/// change is the user's moves the user to its new one, when nobody holds that (see
/// [`follow_email`]).
fn merge_email(rows: &[&Staged], target: &mut Target, merging: &Merging) -> Vec<Value> {
    let mut issues = Vec::new();
    let id = target.row.id;
    let deleted = target.row.deleted_at.is_some();
    for row in rows {
        let raw = row.raw("email");
        let raw_text = raw.as_str().map(str::trim).filter(|s| !s.is_empty());
        if follow_email(row, target, merging) {
            continue;
        }
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
    issues
}

/// The three-way rule for the address (see `rules::follow_change`): true when the changed
/// `row` decided the user's address. Only for a user without an auth account (auth owns its
/// address) and not deleted, whose address is the row's before the change, and when the new one
/// is usable and nobody holds it (else the change is a conflict, as in [`merge_email`]).
fn follow_email(row: &Staged, target: &mut Target, merging: &Merging) -> bool {
    let Some(before) = merging.before(row, "email") else {
        return false;
    };
    if target.auth || target.row.deleted_at.is_some() {
        return false;
    }
    let before = before.as_str().and_then(legacy_email);
    let held = target.row.email.as_deref();
    let unchanged_since = match (held, before.as_deref()) {
        (None, None) => true,
        (Some(h), Some(b)) => sync::same_email(Some(h), Some(b)),
        _ => false,
    };
    if !unchanged_since {
        return false;
    }
    match &row.email {
        Some(e) if held.is_some_and(|h| sync::same_email(Some(h), Some(e))) => {
            // Only its letter case changed, or nothing: the user's own address stays.
            true
        }
        Some(e) if !merging.taken.contains(e) => {
            target.row.email = Some(e.clone());
            true
        }
        Some(_) => false,
        // The row's address went: so does the user's, which came from it.
        None if row
            .raw("email")
            .as_str()
            .is_none_or(|r| r.trim().is_empty()) =>
        {
            target.row.email = None;
            true
        }
        None => false,
    }
}

/// Each field takes the first legacy value in precedence order, when it has none and is not
/// locked: an auth user's phone is auth.users', a deleted user gets no personal data. A changed
/// row follows the three-way rule (`rules::follow_change`) where the field is not locked.
fn merge_fields(rows: &[&Staged], target: &mut Target, merging: &Merging, issues: &mut Vec<Value>) {
    let id = target.row.id;
    let deleted = target.row.deleted_at.is_some();
    for field in Field::ALL {
        let locked = if target.auth && field == Field::PhoneNumber {
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
            let change = merging
                .before(row, column)
                .filter(|_| locked.is_none())
                .and_then(|before| follow_change(field, kept.as_ref(), before, row.raw(column)));
            let outcome = change
                .unwrap_or_else(|| merge_value(field, kept.as_ref(), locked, row.raw(column)));
            match outcome {
                Merge::Nothing => {}
                Merge::Take(value) => {
                    field.set(&mut target.row, &value);
                    kept = field.of_row(&target.row);
                }
                Merge::Conflict { dropped, reason } => issues.push(conflict(
                    row,
                    field.name(),
                    id,
                    kept.clone(),
                    dropped,
                    reason,
                )),
            }
        }
    }
}

/// A profile row the batch writes: `track` records it as created by the run, `fresh` inserts
/// it without `ON CONFLICT` (a new user's).
pub(super) struct ProfileWrite {
    pub(super) user_id: Uuid,
    pub(super) service: &'static str,
    pub(super) preferences: Value,
    pub(super) metadata: Value,
    pub(super) created_at: Option<Micros>,
    pub(super) track: bool,
    pub(super) fresh: bool,
}

/// The target's profile of `table`'s service with the cluster's `rows` of that table merged in:
/// chat rows' `notification_prefs` as the preferences, every row's extra columns under
/// `service_metadata.legacy`. `None` when it does not change (or cannot be read).
fn merge_profile(
    merging: &Merging,
    target: &Target,
    table: Table,
    rows: &[&&Staged],
    issues: &mut Vec<Value>,
) -> Option<ProfileWrite> {
    let id = target.row.id;
    let current = match merging.profiles.get(&(id, table.service().to_string())) {
        Some(None) => {
            issues.extend(unread_profile_conflicts(rows, table, id));
            return None;
        }
        Some(Some(profile)) => Some(profile),
        None => None,
    };
    let legacy = legacy_columns(merging, table, id, current, rows, issues);
    if table == Table::Custom && legacy.is_empty() {
        return None;
    }
    let mut preferences = current.map_or(json!({}), |p| p.0.clone());
    let mut metadata = current.map_or(json!({}), |p| p.1.clone());
    if table == Table::Chat {
        merge_notification_prefs(merging, rows, id, &mut preferences, issues);
    }
    if !legacy.is_empty() {
        if let Some(meta) = metadata.as_object_mut() {
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
    if current.is_some_and(|c| c.0 == preferences && c.1 == metadata) {
        return None;
    }
    let created = target.before.is_none();
    Some(ProfileWrite {
        user_id: id,
        service: table.service(),
        preferences,
        metadata,
        created_at: earliest_created_at(rows.iter().map(|r| **r), merging.now),
        track: current.is_none() && !created,
        // A new user's profiles are new (a backfilled one already has the defaults).
        fresh: created && !target.backfill,
    })
}

/// The extra columns of `rows` by legacy id, for the profile's `service_metadata.legacy`.
fn legacy_columns(
    merging: &Merging,
    table: Table,
    id: Uuid,
    current: Option<&(Value, Value)>,
    rows: &[&&Staged],
    issues: &mut Vec<Value>,
) -> Map<String, Value> {
    let mut legacy = Map::new();
    for row in rows {
        let extras = row.extras();
        if extras.is_empty() {
            continue;
        }
        // The columns an earlier run kept for this id stay while the row they came from is
        // still there (placed, unchanged, in this batch); a changed row's replace them.
        let earlier = merging
            .placed
            .contains(&(row.source_id, table))
            .then(|| {
                current
                    .and_then(|c| c.1.get("legacy"))
                    .and_then(|l| l.get(row.source_id.to_string()))
                    .cloned()
            })
            .flatten();
        // A table without a primary key may hold one id twice for one person: the first row's
        // columns are kept, the other's are a conflict (nothing is lost unsaid).
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
    legacy
}

/// Chat rows' `notification_prefs` fill the chat profile's preferences as a field is filled (a
/// changed row by the three-way rule, `rules::follow_change`).
fn merge_notification_prefs(
    merging: &Merging,
    rows: &[&&Staged],
    id: Uuid,
    preferences: &mut Value,
    issues: &mut Vec<Value>,
) {
    let mut kept = non_empty_object(preferences);
    for row in rows {
        let raw = row.raw("notification_prefs");
        let field = Field::PrivacySettings;
        let change = merging
            .before(row, "notification_prefs")
            .and_then(|before| follow_change(field, kept.as_ref(), before, raw));
        match change.unwrap_or_else(|| merge_value(field, kept.as_ref(), None, raw)) {
            Merge::Nothing => {}
            Merge::Take(value) => {
                *preferences = if value.is_null() { json!({}) } else { value };
                kept = non_empty_object(preferences);
            }
            Merge::Conflict { dropped, reason } => issues.push(conflict(
                row,
                "notification_prefs",
                id,
                kept.clone(),
                dropped,
                reason,
            )),
        }
    }
}

/// The target's user row into `out`: a new one to insert (a backfilled auth user's counts as
/// merged into), or an existing one to update when the merge changed it; with its log row.
fn record_user(
    target: Target,
    started: Instant,
    merging: &Merging,
    out: &mut Writes,
    report: &mut Report,
) {
    let now = merging.now;
    let Target {
        mut row,
        before,
        backfill,
        ..
    } = target;
    match before {
        None => {
            let sync_type = if backfill {
                SyncType::Backfilled
            } else {
                SyncType::Created
            };
            out.logs.extend(log_entry(
                &UserRow::new(row.id, now),
                &row,
                sync_type,
                started,
            ));
            if backfill {
                // The auth user's row is the backfill's (a dry run counted it there): the
                // legacy rows merge into an existing account.
                if !merging.dry_run {
                    report.auth_backfilled += 1;
                }
                report.users_merged += 1;
            } else {
                report.users_created += 1;
            }
            out.new_users
                .push((row, if backfill { "backfill" } else { "user" }));
        }
        Some(before) => {
            report.users_merged += 1;
            if before != row {
                row.updated_at = Some(now);
                out.logs
                    .extend(log_entry(&before, &row, SyncType::Updated, started));
                out.updated_users.push(row.to_json());
            }
        }
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::*;
    use pgrx::prelude::*;

    /// A chat row with `email` (as the plan normalized it) and the user's id as its own.
    fn chat_row(email: &str, row_no: i64) -> Staged {
        Staged {
            table: Table::Chat,
            source_id: Uuid::from_bytes([row_no as u8; 16]),
            created_at: None,
            email: Some(email.to_string()),
            cluster: format!("e:{}", email.to_lowercase()),
            target_id: None,
            planned_id: None,
            has_password: false,
            data: Map::from_iter([("email".to_string(), json!(email))]),
            already: false,
            too_deep: false,
            row_no,
            row_hash: 0,
            aliased: false,
        }
    }

    /// Addresses are compared as the unique index folds them (PostgreSQL's `lower()`): one in
    /// another case is the user's own, no conflict; another address is one. A user without an
    /// address takes the first row's.
    #[pg_test]
    fn a_merged_address_in_another_case_is_the_users_own() {
        let rows = [
            chat_row("ANA@Example.COM", 1),
            chat_row("bea@example.com", 2),
        ];
        let rows: Vec<&Staged> = rows.iter().collect();
        let merging = Merging {
            now: 0,
            dry_run: false,
            placed: HashSet::new(),
            profiles: Default::default(),
            previous: Previous::new(),
            taken: HashSet::new(),
        };
        let mut user = UserRow::new(Uuid::from_bytes([9; 16]), 0);
        user.email = Some("ana@example.com".to_string());
        let mut target = Target {
            row: user.clone(),
            before: Some(user),
            backfill: false,
            auth: false,
        };
        let issues = merge_email(&rows, &mut target, &merging);
        assert_eq!(target.row.email.as_deref(), Some("ana@example.com"));
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0]["dropped_value"], json!("bea@example.com"));
        assert_eq!(issues[0]["kept_value"], json!("ana@example.com"));

        target.row.email = None;
        let issues = merge_email(&rows, &mut target, &merging);
        assert_eq!(target.row.email.as_deref(), Some("ANA@Example.COM"));
        assert_eq!(issues.len(), 1, "{issues:?}");
    }
}
