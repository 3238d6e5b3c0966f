//! A run as stored in `nura_migration_runs`, and its report (docs/migration.md): the counts a
//! caller reads, and the run's progress (its phase, batches, the backfill cursor), written back
//! after every step. The report's JSON is what runs already stored hold: a field added here
//! needs `#[serde(default)]`, and the names must not change.

use super::Table;
use crate::errors::raise;
use crate::errors::OrRaise;
use crate::jsonb::JsonB;
use crate::plans;
use crate::sync::Core;
use pgrx::prelude::*;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::collections::BTreeMap;

/// Where a run is: each phase is a series of steps, each of which one transaction can hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Phase {
    /// Auth users without a `users` row get one, a batch per step.
    #[default]
    Backfill,
    /// One step writes the plan.
    Plan,
    /// A batch of planned rows per step.
    Apply,
    Done,
}

impl Phase {
    const ALL: [Phase; 4] = [Phase::Backfill, Phase::Plan, Phase::Apply, Phase::Done];

    fn name(self) -> &'static str {
        match self {
            Phase::Backfill => "backfill",
            Phase::Plan => "plan",
            Phase::Apply => "apply",
            Phase::Done => "done",
        }
    }
}

impl Serialize for Phase {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// A phase is stored as its name. Another name (a report edited by hand) makes the report
/// unreadable, with a message that shows the name.
impl<'de> Deserialize<'de> for Phase {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Phase::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                let shown: String = name.chars().take(64).collect();
                de::Error::custom(format!("unknown phase {shown:?}"))
            })
    }
}

/// Per-table counts of a run's report (docs/migration.md).
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
    pub phase: Phase,
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

impl Report {
    /// The report of a new run over the legacy tables `present` (the others are skipped).
    pub fn new(run_id: i64, dry_run: bool, legacy_schema: String, present: &[Table]) -> Report {
        Report {
            run_id,
            dry_run,
            legacy_schema,
            phase: Phase::Backfill,
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
        }
    }

    /// The counts of a legacy table.
    pub fn counts(&mut self, table: Table) -> &mut TableCounts {
        self.sources.entry(table.name().into()).or_default()
    }

    /// Store the report as run `run_id`'s; `finished`: the status the run ends with.
    pub fn save(&self, core: &Core, run_id: i64, finished: Option<&str>) {
        let schema = &core.schema;
        let value = serde_json::to_value(self).or_raise("writing the migration report");
        plans::execute(
            &format!(
                "UPDATE {schema}.nura_migration_runs SET report = $2, \
                     status = COALESCE($3, status), \
                     finished_at = CASE WHEN $3 IS NULL THEN finished_at ELSE pg_catalog.now() END \
                 WHERE id OPERATOR(pg_catalog.=) $1"
            ),
            &[run_id.into(), JsonB(value).into(), finished.into()],
        )
        .or_raise("migration");
    }
}

/// A run as stored (its row locked for the rest of the transaction).
pub struct Run {
    pub id: i64,
    /// `running`, `completed`, `failed` or `rolled_back`.
    pub status: String,
    pub dry_run: bool,
    pub legacy_schema: String,
    pub batch_size: i32,
    /// Its report, or why it cannot be read (a hand-edited or damaged row: the run cannot go on
    /// from it, and only its rollback, which does not read it, can end it).
    pub report: Result<Report, String>,
}

impl Run {
    /// Run `run_id`, if there is one.
    pub fn load(core: &Core, run_id: i64) -> Option<Run> {
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
        .or_raise("migration")
        .map(|(status, dry_run, legacy_schema, batch_size, report)| Run {
            id: run_id,
            status,
            dry_run,
            legacy_schema,
            batch_size,
            report: serde_json::from_value::<Report>(report).map_err(|e| e.to_string()),
        })
    }

    /// Run `run_id`; ERROR P0002 when there is none.
    pub fn load_existing(core: &Core, run_id: i64) -> Run {
        Run::load(core, run_id).unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
                format!("migration run {run_id} does not exist"),
                None,
            )
        })
    }

    pub fn is_running(&self) -> bool {
        self.status == "running"
    }

    /// The report of a run that must go on; ERROR 55000 naming the run when it cannot be read,
    /// so that a `CALL nura_run_migration()` says what is wrong instead of stepping for ever.
    pub fn report(&self) -> Report {
        match &self.report {
            Ok(report) => report.clone(),
            Err(why) => raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "migration run {} has a report that cannot be read: {why}",
                    self.id
                ),
                Some(&format!(
                    "Roll the run back with SELECT nura_rollback_migration({}), then migrate again.",
                    self.id
                )),
            ),
        }
    }
}
