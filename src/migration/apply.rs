//! Phase 3, the batches (docs/migration.md), a batch per step, in four parts:
//! 1. [`load`]: the batch's rows as the plan staged them, grouped into clusters;
//! 2. [`resolve_targets`]: the user each cluster goes to, read and locked (an auth user without
//!    a `users` row gets one first, as the backfill would have made it);
//! 3. merge (`merge`): the rows merge into that user, its profiles and aliases by the
//!    precedence rules (`rules`), values dropped recorded as conflicts;
//! 4. [`write`]: users, profiles, aliases, issues and log rows, one statement per table.

use super::backfill::{auth_row, backfill_row, backfill_through_sync, insert_users};

use super::issues::{set_aside_too_deep, unmigratable, write_issues};
use super::merge::{merge, Aliases, Merging, ProfileWrite, Writes};
use super::report::{Report, Run};
use super::rollback::record_created;
use super::rules::Table;
use crate::errors::OrRaise;
use crate::jsonb::{JsonB, MaybeDeep, RawJsonb};
use crate::plans;
use crate::sync::{self, AuthUser, Core, AUTH_SELECT};
use crate::user_row::{transaction_now, Micros, UserRow};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiHeapTupleData;
use pgrx::Uuid;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// The step of a batch: the next one is applied.
pub(super) fn step(core: &Core, run: &Run, report: &mut Report) {
    let started = Instant::now();
    apply_batch(core, run, report.batches_done as i32, report);
    report.batches_done += 1;
    report.apply_seconds += started.elapsed().as_secs_f64();
    let rate = report.rows_done as f64 / report.apply_seconds.max(1e-6);
    let eta = (report.rows_total - report.rows_done) as f64 / rate.max(1e-6);
    notice!(
        "nura_users migration run {}: batch {}/{}, {}/{} rows, {:.0} rows/s, ETA {:.0} s",
        run.id,
        report.batches_done,
        report.batches_total,
        report.rows_done,
        report.rows_total,
        rate,
        eta
    );
}

/// A batch being applied: what each of its parts needs.
struct Batch<'a> {
    core: &'a Core,
    run_id: i64,
    batch_no: i32,
    dry_run: bool,
    now: Micros,
    /// `user_id_aliases` keeps row fingerprints (see [`load`]).
    fingerprints: bool,
}

impl Batch<'_> {
    fn schema(&self) -> &str {
        &self.core.schema
    }

    /// Rows the batch may change are read locked; a dry run changes nothing and locks nothing.
    fn lock(&self) -> &'static str {
        if self.dry_run {
            ""
        } else {
            " FOR UPDATE"
        }
    }
}

fn apply_batch(core: &Core, run: &Run, batch_no: i32, report: &mut Report) {
    apply_rows(core, run, batch_no, Previous::new(), report);
}

/// Legacy rows as they were before an UPDATE (docs/cutover.md, live legacy writes), by id and
/// table: a changed value the user still holds from the row moves the user along.
pub(super) type Previous = HashMap<(Uuid, Table), Map<String, Value>>;

/// Batch `batch_no` of run `run`; `previous`: the rows' values before an UPDATE, if they have
/// any.
pub(super) fn apply_rows(
    core: &Core,
    run: &Run,
    batch_no: i32,
    previous: Previous,
    report: &mut Report,
) {
    let batch = Batch {
        core,
        run_id: run.id,
        batch_no,
        dry_run: run.dry_run,
        now: transaction_now(),
        fingerprints: has_fingerprints(&core.schema),
    };
    let staged = load(&batch);
    // Rows too deep to read are issues; rows already migrated by an earlier run are counted
    // and left alone.
    set_aside_too_deep(core, run.id, &staged, report);
    let clusters = clusters(&staged, report);
    if clusters.is_empty() {
        return;
    }
    let (targets, vanished, deleted_meanwhile) = resolve_targets(&batch, &clusters, report);
    // A live write (docs/cutover.md) whose user another transaction deleted meanwhile is placed
    // again later, from the backlog, rather than made an issue: the row is a person written now.
    if run.status == "capturing" && deleted_meanwhile {
        crate::errors::Error::new(
            PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            "the user a legacy row matched was deleted by a concurrent transaction",
        )
        .raise();
    }
    let merging = Merging {
        now: batch.now,
        dry_run: batch.dry_run,
        placed: staged
            .iter()
            .filter(|r| r.already)
            .map(|r| (r.source_id, r.table))
            .collect(),
        profiles: read_profiles(&batch, &targets),
        taken: taken_addresses(&batch, &staged, &previous),
        previous,
    };
    let mut out = Writes {
        unmigratable: vanished,
        ..Writes::default()
    };
    merge(&clusters, targets, &merging, &mut out, report);
    write(&batch, out, report);
}

/// The new addresses of changed rows (see [`Previous`]) that a user holds: such a change cannot
/// move its user to the address (it is a conflict), whoever holds it.
fn taken_addresses(batch: &Batch, staged: &[Staged], previous: &Previous) -> HashSet<String> {
    let changed: Vec<String> = staged
        .iter()
        .filter(|r| previous.contains_key(&(r.source_id, r.table)))
        .filter_map(|r| r.email.clone())
        .collect();
    if changed.is_empty() {
        return HashSet::new();
    }
    let schema = batch.schema();
    plans::read_scalar::<Vec<String>>(
        &format!(
            "SELECT COALESCE(pg_catalog.array_agg(e), '{{}}') FROM pg_catalog.unnest($1::text[]) e \
             WHERE EXISTS (SELECT FROM {schema}.users u \
                           WHERE NOT u.is_sso_user \
                             AND pg_catalog.lower(u.email) OPERATOR(pg_catalog.=) pg_catalog.lower(e))"
        ),
        &[changed.into()],
    )
    .or_raise("migration")
    .unwrap_or_default()
    .into_iter()
    .collect()
}

/// One staged legacy row.
pub(super) struct Staged {
    pub(super) table: Table,
    pub(super) source_id: Uuid,
    pub(super) created_at: Option<Micros>,
    pub(super) email: Option<String>,
    pub(super) cluster: String,
    pub(super) target_id: Option<Uuid>,
    pub(super) planned_id: Option<Uuid>,
    pub(super) has_password: bool,
    pub(super) data: Map<String, Value>,
    pub(super) already: bool,
    /// The row's JSON nests deeper than a value is read (and stored, see jsonb::MAX_DEPTH): the
    /// row is set aside as an `unmigratable` issue.
    pub(super) too_deep: bool,
    pub(super) row_no: i64,
    /// The row's fingerprint (`jsonb_hash_extended` of its JSON), kept on its alias.
    pub(super) row_hash: i64,
    /// Its id has an alias in its table already (an earlier run placed a row of that id).
    pub(super) aliased: bool,
}

impl Staged {
    /// A row of [`load`]'s statement.
    fn from_tuple(r: &SpiHeapTupleData<'_>) -> pgrx::spi::Result<Staged> {
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
    }

    /// The row's columns without a home in `users` or the profile (see `Table::homed_columns`).
    pub(super) fn extras(&self) -> Map<String, Value> {
        let homed = self.table.homed_columns();
        self.data
            .iter()
            .filter(|(k, v)| !homed.contains(&k.as_str()) && !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub(super) fn raw(&self, column: &str) -> &Value {
        self.data.get(column).unwrap_or(&Value::Null)
    }
}

/// Whether `user_id_aliases` keeps row fingerprints (see [`load`]).
fn has_fingerprints(schema: &str) -> bool {
    crate::schema::has_column(schema, "user_id_aliases", "row_hashes")
}

/// Load: the batch's rows as the plan staged them, in cluster order. A row is already migrated
/// when this very row was placed before (docs/migration.md): its alias keeps the fingerprints
/// of the rows it placed. Another row with the same id (a table without a primary key), or the
/// row changed since, is placed again. Aliases without fingerprints, or a catalog without them:
/// the id alone counts.
fn load(batch: &Batch) -> Vec<Staged> {
    let schema = batch.schema();
    // The plan computes the fingerprint in its parallel staging when the work list has a column
    // for it; a run planned before the catalog had one has none there.
    let row_hash = if crate::schema::has_column(schema, "nura_migration_rows", "row_hash") {
        "COALESCE(s.row_hash, pg_catalog.jsonb_hash_extended(s.data, 0))"
    } else {
        "pg_catalog.jsonb_hash_extended(s.data, 0)"
    };
    let same_row = if batch.fingerprints {
        "(a.row_hashes IS NULL OR h.row_hash OPERATOR(pg_catalog.=) ANY (a.row_hashes))"
    } else {
        "true"
    };
    plans::rows(
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
        &[batch.run_id.into(), batch.batch_no.into()],
        Staged::from_tuple,
    )
    .or_raise("migration")
}

/// The batch's clusters, in order, each its rows in precedence order; every row counts as done,
/// rows too deep to read are left out, rows an earlier run placed are counted and left out.
fn clusters<'s>(staged: &'s [Staged], report: &mut Report) -> Vec<Vec<&'s Staged>> {
    let mut clusters: Vec<Vec<&Staged>> = Vec::new();
    for row in staged {
        report.rows_done += 1;
        if row.too_deep {
            continue;
        }
        if row.already {
            report.counts(row.table).already_migrated += 1;
            continue;
        }
        match clusters.last_mut() {
            Some(c) if c[0].cluster == row.cluster => c.push(row),
            _ => clusters.push(vec![row]),
        }
    }
    clusters
}

/// The user a cluster goes to.
pub(super) struct Target {
    pub(super) row: UserRow,
    /// The row as it was (None: created by this batch).
    pub(super) before: Option<UserRow>,
    /// A row made here for an auth user that had none (backfill).
    pub(super) backfill: bool,
    pub(super) auth: bool,
}

/// The users and auth users a batch's clusters may go to, read (and locked) before any changes.
struct Found {
    by_id: HashMap<Uuid, UserRow>,
    /// By the folded address (`sync::email_key`).
    by_email: HashMap<String, UserRow>,
    /// With when each was created.
    auth: HashMap<Uuid, (AuthUser, Option<Micros>)>,
}

/// The users `sql` selects (its columns [`UserRow::column_list`]), `$1` the one argument.
fn read_users(sql: &str, arg: DatumWithOid<'static>) -> Vec<UserRow> {
    plans::rows(sql, &[arg], UserRow::from_tuple).or_raise("migration")
}

impl Found {
    fn read(batch: &Batch, clusters: &[Vec<&Staged>]) -> Found {
        let schema = batch.schema();
        let lock = batch.lock();
        let cols = UserRow::column_list();
        let ids: Vec<Uuid> = clusters
            .iter()
            .filter_map(|c| c[0].target_id.or(c[0].planned_id))
            .collect();
        let emails: Vec<String> = clusters
            .iter()
            .filter_map(|c| c[0].cluster.strip_prefix("e:").map(str::to_string))
            .collect();
        let by_id: HashMap<Uuid, UserRow> = read_users(
            &format!(
                "SELECT {cols} FROM {schema}.users WHERE id OPERATOR(pg_catalog.=) ANY ($1) ORDER BY id{lock}"
            ),
            ids.clone().into(),
        )
        .into_iter()
        .map(|row| (row.id, row))
        .collect();
        let mut by_email: HashMap<String, UserRow> = HashMap::new();
        for row in read_users(
            &format!(
                "SELECT {cols} FROM {schema}.users WHERE NOT is_sso_user \
                 AND pg_catalog.lower(email) OPERATOR(pg_catalog.=) ANY ($1) ORDER BY id{lock}"
            ),
            emails.into(),
        ) {
            if let Some(e) = &row.email {
                by_email.insert(sync::email_key(e), row);
            }
        }
        let mut auth = HashMap::new();
        if sync::auth_users_exists() {
            let mut auth_ids = ids;
            auth_ids.extend(by_email.values().map(|r| r.id));
            for (id, created, user) in plans::rows(
                &format!(
                    "SELECT a.id AS auth_id, a.created_at AS auth_created_at, {AUTH_SELECT} \
                     FROM auth.users a WHERE a.id OPERATOR(pg_catalog.=) ANY ($1)"
                ),
                &[auth_ids.into()],
                auth_row,
            )
            .or_raise("migration")
            {
                auth.insert(id, (user, created));
            }
        }
        Found {
            by_id,
            by_email,
            auth,
        }
    }
}

/// Resolve: the user each cluster goes to, in cluster order. `None` when there is none after
/// all: the cluster's rows are the unmigratable issues returned, with the reason.
fn resolve_targets(
    batch: &Batch,
    clusters: &[Vec<&Staged>],
    report: &mut Report,
) -> (Vec<Option<Target>>, Vec<Value>, bool) {
    let mut found = Found::read(batch, clusters);
    let refused = if batch.dry_run {
        HashMap::new()
    } else {
        adopt_orphans(batch, clusters, &mut found, report)
    };
    let mut targets: Vec<Option<Target>> = Vec::with_capacity(clusters.len());
    let mut vanished: Vec<Value> = Vec::new();
    // A target deleted by another transaction since the plan (not one refused for good).
    let mut deleted_meanwhile = false;
    for cluster in clusters {
        let first = cluster[0];
        let target = target_of(first, &found, &refused, batch.now);
        if target.is_none() {
            let reason = match first.target_id.and_then(|id| refused.get(&id)) {
                Some(message) => format!(
                    "the auth user this row matched has no users row, and none could be made: {message}"
                ),
                None => {
                    deleted_meanwhile = true;
                    "the user this row matched was deleted during the migration".to_string()
                }
            };
            for row in cluster {
                vanished.push(unmigratable(row, &reason));
                report.counts(row.table).unmigratable += 1;
            }
        }
        targets.push(target);
    }
    (targets, vanished, deleted_meanwhile)
}

/// An auth user the plan targets may have no users row yet (it signed up after the backfill
/// while the sync was detached, or its backfill failed). When another row holds its email, the
/// batch's own insert would collide with that row on every retry: the sync core adopts it
/// first, as the backfill does. Returns those it refuses a row to, with its reason: their
/// legacy rows become issues.
fn adopt_orphans(
    batch: &Batch,
    clusters: &[Vec<&Staged>],
    found: &mut Found,
    report: &mut Report,
) -> HashMap<Uuid, String> {
    let mut refused: HashMap<Uuid, String> = HashMap::new();
    let orphans: Vec<(Uuid, String, AuthUser)> = clusters
        .iter()
        .filter_map(|c| c[0].target_id)
        .filter(|id| !found.by_id.contains_key(id))
        .filter_map(|id| {
            let (user, created) = found.auth.get(&id)?;
            let email = sync::email_key(&backfill_row(id, user, *created, batch.now).email?);
            (!user.is_sso_user).then(|| (id, email, user.clone()))
        })
        .collect();
    if orphans.is_empty() {
        return refused;
    }
    let schema = batch.schema();
    let held: HashSet<String> = plans::rows(
        &format!(
            "SELECT pg_catalog.lower(email) FROM {schema}.users \
             WHERE NOT is_sso_user AND pg_catalog.lower(email) OPERATOR(pg_catalog.=) ANY ($1)"
        ),
        &[orphans
            .iter()
            .map(|(_, e, _)| e.clone())
            .collect::<Vec<_>>()
            .into()],
        |r| Ok(r.get::<String>(1)?.unwrap_or_default()),
    )
    .or_raise("migration")
    .into_iter()
    .collect();
    let mut adopted: Vec<Uuid> = Vec::new();
    for (id, _, user) in orphans.iter().filter(|(_, email, _)| held.contains(email)) {
        match backfill_through_sync(batch.core, *id, user, report) {
            Ok(()) => adopted.push(*id),
            Err(message) => {
                refused.insert(*id, message);
            }
        }
    }
    if !adopted.is_empty() {
        let cols = UserRow::column_list();
        for row in read_users(
            &format!(
                "SELECT {cols} FROM {schema}.users WHERE id OPERATOR(pg_catalog.=) ANY ($1) \
                 ORDER BY id FOR UPDATE"
            ),
            adopted.into(),
        ) {
            found.by_id.insert(row.id, row);
        }
    }
    refused
}

/// The user the cluster whose first row is `first` goes to: the one the plan found (unless its
/// planned id went to someone else meanwhile), the one with the cluster's address, a row made
/// for its auth user, or a new user; `None` when the user was deleted or its auth user refused.
fn target_of(
    first: &Staged,
    found: &Found,
    refused: &HashMap<Uuid, String>,
    now: Micros,
) -> Option<Target> {
    let lemail = first.cluster.strip_prefix("e:");
    let existing = first
        .target_id
        .or(first.planned_id)
        .and_then(|id| found.by_id.get(&id))
        .filter(|row| {
            // A new user's planned id taken meanwhile by someone else is not this person.
            first.target_id.is_some()
                || lemail.is_none()
                || row.email.as_deref() == lemail
                || row.email.as_deref().map(sync::email_key).as_deref() == lemail
        })
        .or_else(|| lemail.and_then(|e| found.by_email.get(e)));
    if let Some(row) = existing {
        return Some(Target {
            row: row.clone(),
            before: Some(row.clone()),
            backfill: false,
            auth: found.auth.contains_key(&row.id),
        });
    }
    match first.target_id {
        Some(id) if refused.contains_key(&id) => None,
        Some(id) => found.auth.get(&id).map(|(user, created)| Target {
            row: backfill_row(id, user, *created, now),
            before: None,
            backfill: true,
            auth: true,
        }),
        None => {
            let planned = first
                .planned_id
                .unwrap_or_else(|| Uuid::from_bytes([0; 16]));
            let id = if found.by_id.contains_key(&planned) {
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
    }
}

/// A deterministic id for a new user whose planned id was taken meanwhile.
fn derived_id(cluster: &str) -> Uuid {
    let digest = plans::read_scalar::<Uuid>(
        "SELECT pg_catalog.md5('nura_users:retry:' OPERATOR(pg_catalog.||) $1)::uuid",
        &[cluster.into()],
    )
    .or_raise("migration");
    digest.unwrap_or_else(|| Uuid::from_bytes([0; 16]))
}

/// Profiles of the legacy services by user and service: preferences and metadata, or `None`
/// for one nested deeper than a value is read (written by hand: the API refuses it), which is
/// left as it is; what the batch would merge into it is recorded as a conflict.
pub(super) type Profiles = HashMap<(Uuid, String), Option<(Value, Value)>>;

/// The existing profiles of the users the batch merges into.
fn read_profiles(batch: &Batch, targets: &[Option<Target>]) -> Profiles {
    let existing_ids: Vec<Uuid> = targets
        .iter()
        .flatten()
        .filter(|t| t.before.is_some())
        .map(|t| t.row.id)
        .collect();
    let mut profiles = Profiles::new();
    if existing_ids.is_empty() {
        return profiles;
    }
    let schema = batch.schema();
    let lock = batch.lock();
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
    .or_raise("migration")
    {
        let read = match (prefs, meta) {
            (Ok(prefs), Ok(meta)) => Some((prefs, meta)),
            _ => None,
        };
        profiles.insert((user, service), read);
    }
    profiles
}

/// Write: the batch's issues, then (not in a dry run) its users, profiles, aliases and log
/// rows, one statement per table.
fn write(batch: &Batch, out: Writes, report: &mut Report) {
    let (core, run_id) = (batch.core, batch.run_id);
    for issue in &out.conflicts {
        let table = issue["source_table"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        report.sources.entry(table).or_default().conflicts += 1;
    }
    if !out.unmigratable.is_empty() {
        write_issues(core, run_id, "unmigratable", out.unmigratable);
    }
    write_issues(core, run_id, "conflict", out.conflicts);
    if batch.dry_run {
        return;
    }
    insert_planned_users(batch, &out.new_users);
    let backfilled: Vec<Uuid> = out
        .new_users
        .iter()
        .filter(|(_, what)| *what == "backfill")
        .map(|(r, _)| r.id)
        .collect();
    core.create_default_profiles(&backfilled);
    update_users(batch, out.updated_users);
    write_profiles(batch, &out.profiles);
    if !out.aliases.ids.is_empty() {
        write_aliases(batch, out.aliases);
    }
    core.log_many(&out.logs);
}

/// Insert a batch's new users: the plan found their ids and emails free, so one taken since
/// (by a transaction that committed while the batch waited on it) fails the batch with 40001,
/// to be run again. Without `ON CONFLICT` PostgreSQL skips the speculative insertion (two index
/// probes and a WAL record per row). The unique violation is turned into the 40001 as it
/// propagates, without a subtransaction: one per batch would overflow the backend's cache of
/// subtransaction ids in a long `nura_migrate_legacy`, which slows every snapshot in the
/// cluster until it commits.
fn insert_planned_users(batch: &Batch, rows: &[(UserRow, &str)]) {
    let (run_id, batch_no) = (batch.run_id, batch.batch_no);
    PgTryBuilder::new(|| insert_users(batch.core, run_id, rows, false))
        .catch_when(PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION, |_| {
            crate::errors::raise(
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

/// The users the merge changed, in one statement.
fn update_users(batch: &Batch, updated: Vec<Value>) {
    if updated.is_empty() {
        return;
    }
    let schema = batch.schema();
    plans::execute(
        &format!(
            "UPDATE {schema}.users u SET email = v.email, full_name = v.full_name, \
                 phone_number = v.phone_number, is_active = v.is_active, \
                 privacy_settings = COALESCE(v.privacy_settings, u.privacy_settings), \
                 current_streak = v.current_streak, \
                 xp = v.xp, updated_at = v.updated_at \
             FROM pg_catalog.jsonb_populate_recordset(NULL::{schema}.users, $1) v \
             WHERE u.id OPERATOR(pg_catalog.=) v.id"
        ),
        &[JsonB(Value::Array(updated)).into()],
    )
    .or_raise("migration");
}

/// The batch's profiles, in one statement: a new user's inserted as they are, the others
/// upserted; those added to users the run did not create are recorded for its rollback.
fn write_profiles(batch: &Batch, rows: &[ProfileWrite]) {
    if rows.is_empty() {
        return;
    }
    let schema = batch.schema();
    let record = record_created(
        schema,
        "v.user_id",
        "'profile:' OPERATOR(pg_catalog.||) v.service_type",
        "v WHERE v.track",
    );
    // The run, then one array per column (a JSON null is SQL NULL).
    let json = |v: &Value| (!v.is_null()).then(|| RawJsonb::from_value(v));
    let args: Vec<DatumWithOid<'static>> = vec![
        batch.run_id.into(),
        plans::column(rows, |p| p.user_id),
        plans::column(rows, |p| p.service),
        plans::column(rows, |p| json(&p.preferences)),
        plans::column(rows, |p| json(&p.metadata)),
        plans::column(rows, |p| crate::user_row::ts_value(p.created_at)),
        plans::column(rows, |p| p.track),
        plans::column(rows, |p| p.fresh),
    ];
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
        &args,
    )
    .or_raise("migration");
}

/// Write the batch's aliases: new ones inserted (one plain INSERT, the common case), ones an
/// earlier run made (their row changed since and was placed again) given the new
/// fingerprints. Without fingerprints (a catalog not yet updated), the new ones only.
fn write_aliases(batch: &Batch, aliases: Aliases) {
    let (schema, run_id, fingerprints) = (batch.schema(), batch.run_id, batch.fingerprints);
    let Aliases {
        ids,
        sources,
        users,
        hashes,
        existing,
        ..
    } = aliases;
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
        plans::execute(&insert, &pick(false)).or_raise("migration");
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
        .or_raise("migration");
    }
}
