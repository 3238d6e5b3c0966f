//! The cutover's state (docs/cutover.md, "State"): a row of `nura_cutover_tables` per legacy
//! table a cutover has started on, and the step log `nura_cutover_steps`. Facts, not a phase
//! counter: the next step is chosen from what they say, so a step that did not commit is
//! simply chosen again.

use crate::errors::OrRaise;
use crate::jsonb::JsonB;
use crate::migration::Table;
use crate::plans;
use serde::Deserialize;
use serde_json::Value;

/// The schema a switched legacy table is kept in.
pub(super) const KEPT_SCHEMA: &str = "nura_legacy";

/// Where the CALLs take a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Goal {
    /// `CALL nura_cutover`.
    Switched,
    /// `CALL nura_cutover_rollback`.
    Legacy,
}

impl Goal {
    pub(super) fn name(self) -> &'static str {
        match self {
            Goal::Switched => "switched",
            Goal::Legacy => "legacy",
        }
    }
}

/// A row of `nura_cutover_tables`.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct TableState {
    pub(super) legacy_table: String,
    pub(super) legacy_schema: String,
    pub(super) goal: Goal,
    pub(super) captured: bool,
    pub(super) capture_run_id: Option<i64>,
    pub(super) catch_up_run_id: Option<i64>,
    pub(super) extra_references: Value,
    /// Reverse sync covers the table.
    #[serde(default)]
    pub(super) mirrored: bool,
    /// The fill's cursor (a users id) and whether it is done.
    #[serde(default)]
    pub(super) fill_after: Option<String>,
    #[serde(default)]
    pub(super) fill_done: bool,
    /// The table is kept in `nura_legacy` and a view has its name.
    #[serde(default)]
    pub(super) switched: bool,
    /// `nura_cutover_finish` ended its cutover: no way back.
    #[serde(default)]
    pub(super) finished: bool,
}

impl TableState {
    pub(super) fn table(&self) -> Table {
        Table::ALL
            .into_iter()
            .find(|t| t.name() == self.legacy_table)
            .unwrap_or(Table::Chat)
    }

    /// Where the table's rows are: `nura_legacy` once switched, else its legacy schema.
    pub(super) fn kept_schema(&self) -> &str {
        if self.switched {
            KEPT_SCHEMA
        } else {
            &self.legacy_schema
        }
    }

    /// The table's rows (the legacy table, or the kept one), quoted and qualified.
    pub(super) fn kept_name(&self) -> String {
        format!(
            "{}.{}",
            pgrx::spi::quote_identifier(self.kept_schema()),
            self.legacy_table
        )
    }

    /// The table's state as status shows it: `legacy` until live writes are captured, then
    /// `moving` until the switch, then `switched` (docs/cutover.md).
    pub(super) fn shown_state(&self) -> &'static str {
        if self.finished {
            "finished"
        } else if self.switched {
            "switched"
        } else if self.captured {
            "moving"
        } else {
            "legacy"
        }
    }
}

/// Every state row, in precedence order, locked for the step's transaction (one runner at a
/// time holds the advisory lock; the row locks keep a hand-made change from interleaving).
pub(super) fn load_all(ext: &str, lock: bool) -> Vec<TableState> {
    let order = "pg_catalog.array_position('{chat_users,voice_users,custom_users}'::text[], t.legacy_table)";
    if !lock {
        // Read-only (no transaction id): the plan and the status read the state too.
        return super::catalog::read(
            &format!(
                "SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(t) ORDER BY {order}), '[]') \
                 FROM {ext}.nura_cutover_tables t"
            ),
            &[],
        );
    }
    let lock = " FOR UPDATE";
    let rows = plans::rows(
        &format!(
            "SELECT pg_catalog.to_jsonb(t) FROM {ext}.nura_cutover_tables t \
             ORDER BY {order}{lock}"
        ),
        &[],
        |r| r.get::<JsonB>(1),
    )
    .or_raise("reading the cutover's state");
    rows.into_iter()
        .flatten()
        .map(|j| serde_json::from_value(j.0).or_raise("reading the cutover's state"))
        .collect()
}

/// The state row of `table`, if a cutover has started on it.
pub(super) fn load(ext: &str, table: Table) -> Option<TableState> {
    load_all(ext, false)
        .into_iter()
        .find(|s| s.legacy_table == table.name())
}

/// Write the facts of `state` (and clear its last error: the step succeeded).
pub(super) fn save(ext: &str, state: &TableState) {
    plans::execute(
        &format!(
            "UPDATE {ext}.nura_cutover_tables SET goal = $2, captured = $3, capture_run_id = $4, \
                 catch_up_run_id = $5, mirrored = $6, fill_after = $7, fill_done = $8, \
                 switched_at = CASE WHEN $9 AND NOT switched THEN pg_catalog.now() \
                                    WHEN $9 OR $10 THEN switched_at END, \
                 switched = $9, finished = $10, \
                 finished_at = CASE WHEN $10 THEN COALESCE(finished_at, pg_catalog.now()) END, \
                 last_error = NULL, updated_at = pg_catalog.now() \
             WHERE legacy_table OPERATOR(pg_catalog.=) $1"
        ),
        &[
            state.legacy_table.as_str().into(),
            state.goal.name().into(),
            state.captured.into(),
            state.capture_run_id.into(),
            state.catch_up_run_id.into(),
            state.mirrored.into(),
            state
                .fill_after
                .as_deref()
                .and_then(crate::uuid_input::parse)
                .into(),
            state.fill_done.into(),
            state.switched.into(),
            state.finished.into(),
        ],
    )
    .or_raise("writing the cutover's state");
}

/// A step's refusal into the state row (`last_error`), committed before the CALL raises it.
pub(super) fn record_error(ext: &str, table: &str, action: &str, sqlstate: &str, message: &str) {
    plans::execute(
        &format!(
            "UPDATE {ext}.nura_cutover_tables SET updated_at = pg_catalog.now(), \
                 last_error = pg_catalog.jsonb_build_object('action', $2::text, 'sqlstate', $3::text, \
                     'message', $4::text, 'at', pg_catalog.now()) \
             WHERE legacy_table OPERATOR(pg_catalog.=) $1"
        ),
        &[table.into(), action.into(), sqlstate.into(), message.into()],
    )
    .or_raise("writing the cutover's state");
}

/// One row of the step log.
pub(super) struct Step<'a> {
    pub(super) table: &'a str,
    pub(super) action: &'a str,
    pub(super) object: Option<String>,
    pub(super) detail: Value,
    pub(super) attempts: i32,
    pub(super) lock_wait_ms: i32,
}

/// Log `step`, which started at the transaction's start (a step is one transaction).
pub(super) fn log_step(ext: &str, step: Step) {
    plans::execute(
        &format!(
            "INSERT INTO {ext}.nura_cutover_steps (legacy_table, action, object, detail, attempts, \
                 lock_wait_ms, started_at) VALUES ($1, $2, $3, $4, $5, $6, pg_catalog.now())"
        ),
        &[
            step.table.into(),
            step.action.into(),
            step.object.into(),
            JsonB(step.detail).into(),
            step.attempts.into(),
            step.lock_wait_ms.into(),
        ],
    )
    .or_raise("logging the cutover's step");
}
