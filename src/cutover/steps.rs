//! The CALLs' work (docs/cutover.md): `CALL nura_cutover` and `CALL nura_cutover_rollback`
//! (`sql/cutover.sql`) set each chosen table's goal (`nura_cutover_begin`), then call
//! `nura_cutover_step` and COMMIT until it says done. A step loads the facts, picks the first
//! action that moves a table toward its goal, runs it, and writes the new facts and a step-log
//! row in the same transaction: an interrupted CALL, called again, goes on from the facts.
//!
//! Actions so far, toward `switched`: capture, catch-up, backlog; toward `legacy`: release.

use super::capture;
use super::locks::{self, NotGranted};
use super::references::{self, RefAction};
use super::state::{self, Goal, Step, TableState};
use super::{checked_legacy_schema, extra_reference_entries, resolve_extras, LegacySchema};
use super::{mirror, switch};
use crate::errors::{Error, OrRaise};
use crate::jsonb::{JsonB, JsonbArg};
use crate::migration::live::{self, Change};
use crate::migration::{self, Table};
use crate::plans;
use crate::schema::extension_schema;
use crate::sync::Core;
use pgrx::prelude::*;
use pgrx::Uuid;
use serde_json::{json, Value};

/// The advisory lock that lets one session at a time run a cutover or rollback.
const RUNNER_LOCK: &str = "pg_catalog.hashtext('nura_users'), pg_catalog.hashtext('cutover')";

/// `CALL nura_cutover` / `nura_cutover_rollback`, first part: the arguments checked and the goal
/// of each chosen table set (its state row made when it has none).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_cutover_begin(
    legacy_schema: Option<&str>,
    extra_references: Option<JsonbArg>,
    tables: Option<Vec<Option<String>>>,
    batch_size: Option<i32>,
    goal: Option<&str>,
) {
    let ext = extension_schema();
    let goal = match goal {
        Some("switched") => Goal::Switched,
        Some("legacy") => Goal::Legacy,
        _ => Error::invalid("goal", "goal must be switched or legacy").raise(),
    };
    if batch_size.is_none_or(|n| n <= 0) {
        Error::invalid("batch_size", "batch_size must be a positive integer").raise();
    }
    let legacy = checked_legacy_schema(legacy_schema);
    let named = tables.is_some();
    let chosen = chosen_tables(&ext, &legacy, tables);
    let extras = extras_by_table(&legacy, extra_references);
    for table in chosen {
        // A rollback of every table leaves the finished ones alone; naming one is refused.
        let finished = state::load(&ext, table).is_some_and(|s| s.finished);
        if finished && !named && goal == Goal::Legacy {
            continue;
        }
        let at = Table::ALL.iter().position(|t| *t == table).unwrap_or(0);
        set_goal(&ext, &legacy, table, goal, &extras[at]);
    }
}

/// The legacy tables a CALL acts on: `tables` checked (22023 for an empty array, a NULL or an
/// unknown name; 42P01 for a table neither present nor under a cutover), in precedence order;
/// NULL: every one present or under a cutover.
fn chosen_tables(
    ext: &str,
    legacy: &LegacySchema,
    tables: Option<Vec<Option<String>>>,
) -> Vec<Table> {
    let known = |t: Table| {
        state::load(ext, t).is_some() || super::catalog::relation(&legacy.name, t.name()).is_some()
    };
    let Some(names) = tables else {
        return Table::ALL.into_iter().filter(|t| known(*t)).collect();
    };
    if names.is_empty() {
        Error::invalid("tables", "tables must name at least one legacy table").raise();
    }
    let mut chosen = Vec::new();
    for name in names {
        let name = name.unwrap_or_default();
        let Some(table) = Table::ALL.into_iter().find(|t| t.name() == name) else {
            let shown: String = name.chars().take(64).collect();
            Error::invalid(
                "tables",
                format!(
                    "unknown legacy table \"{shown}\"; legacy tables: chat_users, voice_users, custom_users"
                ),
            )
            .raise()
        };
        if !known(table) {
            Error::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("relation \"{}.{name}\" does not exist", legacy.name),
            )
            .raise();
        }
        chosen.push(table);
    }
    Table::ALL
        .into_iter()
        .filter(|t| chosen.contains(t))
        .collect()
}

/// The `extra_references` entries per legacy table (in `Table::ALL` order), checked as the plan
/// checks them.
fn extras_by_table(legacy: &LegacySchema, arg: Option<JsonbArg>) -> [Value; 3] {
    let value = arg.map(|a| {
        a.root().read().unwrap_or_else(|_| {
            Error::invalid("extra_references", "extra_references nests too deep").raise()
        })
    });
    let given = value.clone();
    let entries = extra_reference_entries(value);
    resolve_extras(legacy, &entries);
    let items = match given {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    Table::ALL.map(|t| {
        let mine: Vec<Value> = entries
            .iter()
            .filter(|e| e.legacy == t)
            .map(|e| items[e.index].clone())
            .collect();
        Value::Array(mine)
    })
}

/// The runner lock, or 55006 naming the session that holds it. A session that holds it already
/// (its last CALL failed) goes on with it.
fn take_runner_lock() {
    let held = plans::read_scalar::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_locks l \
             WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' AND l.granted \
               AND l.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid() \
               AND l.classid OPERATOR(pg_catalog.=) pg_catalog.hashtext('nura_users')::pg_catalog.oid \
               AND l.objid OPERATOR(pg_catalog.=) pg_catalog.hashtext('cutover')::pg_catalog.oid \
               AND l.objsubid OPERATOR(pg_catalog.=) 2)",
        &[],
    )
    .or_raise("cutover")
    .unwrap_or(false);
    if held {
        return;
    }
    let taken = plans::read_scalar::<bool>(
        &format!("SELECT pg_catalog.pg_try_advisory_lock({RUNNER_LOCK})"),
        &[],
    )
    .or_raise("cutover")
    .unwrap_or(false);
    if taken {
        return;
    }
    let holder = plans::read_scalar::<i32>(
        "SELECT l.pid FROM pg_catalog.pg_locks l \
         WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' AND l.granted \
           AND l.classid OPERATOR(pg_catalog.=) pg_catalog.hashtext('nura_users')::pg_catalog.oid \
           AND l.objid OPERATOR(pg_catalog.=) pg_catalog.hashtext('cutover')::pg_catalog.oid LIMIT 1",
        &[],
    )
    .or_raise("cutover")
    .map_or("another session".to_string(), |pid| format!("the session with pid {pid}"));
    Error::new(
        PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
        format!("a cutover or rollback is running in {holder}"),
    )
    .hint("Wait for it to end; an idle session that holds it can be ended with pg_terminate_backend(pid).")
    .raise()
}

/// Set `table`'s goal, making its state row when it has none. Extra references are kept from the
/// first CALL; another non-empty list later is 22023.
fn set_goal(ext: &str, legacy: &LegacySchema, table: Table, goal: Goal, extras: &Value) {
    if let Some(current) = state::load(ext, table) {
        if current.finished && goal == Goal::Legacy {
            Error::new(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "the cutover of {} is finished: it cannot be rolled back",
                    table.name()
                ),
            )
            .raise();
        }
        if current.legacy_schema != legacy.name && current.captured {
            Error::invalid(
                "legacy_schema",
                format!(
                    "the cutover of {} in progress is of legacy schema \"{}\"",
                    table.name(),
                    current.legacy_schema
                ),
            )
            .raise();
        }
        let given = extras.as_array().is_some_and(|a| !a.is_empty());
        if given && &current.extra_references != extras && current.captured {
            Error::invalid(
                "extra_references",
                format!(
                    "extra_references differ from those of the cutover of {} in progress",
                    table.name()
                ),
            )
            .raise();
        }
    }
    plans::execute(
        &format!(
            "INSERT INTO {ext}.nura_cutover_tables (legacy_table, legacy_schema, goal, extra_references) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (legacy_table) DO UPDATE SET goal = EXCLUDED.goal, updated_at = pg_catalog.now(), \
                 legacy_schema = CASE WHEN nura_cutover_tables.captured \
                     THEN nura_cutover_tables.legacy_schema ELSE EXCLUDED.legacy_schema END, \
                 extra_references = CASE WHEN nura_cutover_tables.captured \
                         OR EXCLUDED.extra_references OPERATOR(pg_catalog.=) '[]'::jsonb \
                     THEN nura_cutover_tables.extra_references ELSE EXCLUDED.extra_references END"
        ),
        &[
            table.name().into(),
            legacy.name.as_str().into(),
            goal.name().into(),
            JsonB(extras.clone()).into(),
        ],
    )
    .or_raise("cutover");
}

/// The CALL's end: the runner lock goes.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_cutover_end() {
    plans::read_scalar::<bool>(
        &format!("SELECT pg_catalog.pg_advisory_unlock({RUNNER_LOCK})"),
        &[],
    )
    .or_raise("cutover");
}

/// What the next action is for a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Capture,
    CatchUp,
    Backlog,
    /// An action of one reference (by its id).
    Reference(i64, RefAction),
    Mirror,
    Fill,
    Switch,
    MirrorBacklog,
    Unswitch,
    Unmirror,
    Release,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Capture => "capture",
            Action::CatchUp => "catch_up",
            Action::Backlog => "backlog",
            Action::Reference(_, a) => a.name(),
            Action::Mirror => "mirror",
            Action::Fill => "fill",
            Action::Switch => "switch",
            Action::MirrorBacklog => "mirror_backlog",
            Action::Unswitch => "unswitch",
            Action::Unmirror => "unmirror",
            Action::Release => "release",
        }
    }
}

/// The first action that moves `s` toward its goal; `None` when it is there. Toward `switched`:
/// capture, catch-up, backlog, each reference in turn, mirror, fill, switch; toward `legacy`:
/// the reverse-sync backlog, unswitch, each reference back, unmirror, release.
fn next_action(core: &Core, s: &TableState) -> Option<Action> {
    let forward = s.goal == Goal::Switched;
    let ext = &core.schema;
    if s.finished {
        return None;
    }
    match s.goal {
        Goal::Switched if !s.captured => return Some(Action::Capture),
        Goal::Switched => match s.catch_up_run_id {
            None => return Some(Action::CatchUp),
            Some(run) if migration::run_is_running(core, run) => return Some(Action::CatchUp),
            Some(_) if backlog_count(ext, s.table()) > 0 => return Some(Action::Backlog),
            Some(_) => {}
        },
        Goal::Legacy if !s.captured => return None,
        Goal::Legacy if s.mirrored && mirror::pending_changes(ext, s) > 0 => {
            return Some(Action::MirrorBacklog)
        }
        Goal::Legacy if s.switched => return Some(Action::Unswitch),
        Goal::Legacy => {}
    }
    let pending = references::load(ext, &s.legacy_table)
        .into_iter()
        .find_map(|r| references::next(&r, forward).map(|a| Action::Reference(r.id, a)));
    if let Some(action) = pending {
        return Some(action);
    }
    if !forward {
        return Some(if s.mirrored {
            Action::Unmirror
        } else {
            Action::Release
        });
    }
    if !s.mirrored || !mirror::triggers_enabled(ext) {
        Some(Action::Mirror)
    } else if !s.fill_done {
        Some(Action::Fill)
    } else if !s.switched && crate::settings::CUTOVER_SWITCH.get() {
        Some(Action::Switch)
    } else {
        None
    }
}

/// One step: `{"done": true}` when every table is at its goal; `{"waiting": true}` when the
/// step's locks were not granted in time (the CALL sleeps and calls again); `{"refused":
/// {sqlstate, message, hint}}` when a table cannot go on (committed into its state, then raised
/// by the CALL); otherwise `{"table", "action"}` of the step done. `attempt` counts the
/// consecutive tries of this step, for the log; `tables`, the CALL's (NULL: all).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_cutover_step(batch_size: i32, attempt: i32, tables: Option<Vec<Option<String>>>) -> JsonB {
    // Taken by the first step, after the CALL's first COMMIT: a CALL inside a transaction block
    // fails at that COMMIT (2D000) and so never takes it.
    take_runner_lock();
    let core = Core::new(extension_schema());
    // The tables of this CALL only: one refused earlier keeps its goal, but waits for a CALL
    // that names it (or names none).
    let chosen = |s: &TableState| {
        tables
            .as_ref()
            .is_none_or(|names| names.iter().flatten().any(|n| *n == s.legacy_table))
    };
    for s in state::load_all(&core.schema, true)
        .into_iter()
        .filter(chosen)
    {
        let Some(action) = next_action(&core, &s) else {
            continue;
        };
        // An ERROR of the action rolls back the action alone, and is kept in the table's state
        // (committed by the CALL before it raises it), as a refusal is.
        let outcome = crate::subtxn::run(|| match action {
            Action::Capture => capture_table(&core, &s, batch_size, attempt),
            Action::CatchUp => catch_up(&core, &s, batch_size),
            Action::Backlog => place_backlog(&core, &s),
            Action::Reference(id, a) => reference_step(&core, &s, id, a, batch_size, attempt),
            Action::Mirror => mirror::mirror_step(&core.schema, &s, attempt),
            Action::Fill => mirror::fill_step(&core.schema, &s, batch_size),
            Action::Switch => switch::switch(&core.schema, &s, attempt),
            Action::MirrorBacklog => mirror::retry_step(&core.schema, &s),
            Action::Unswitch => switch::unswitch(&core.schema, &s, attempt),
            Action::Unmirror => mirror::unmirror_step(&core.schema, &s, attempt),
            Action::Release => release(&core, &s, attempt),
        })
        .unwrap_or_else(|e| Err(Stop::Refused(e)));
        return JsonB(match outcome {
            Ok(()) => json!({"table": s.legacy_table, "action": action.name()}),
            Err(Stop::Waiting(not_granted)) => waiting(&s, action, &not_granted, attempt),
            Err(Stop::Refused(error)) => {
                state::record_error(
                    &core.schema,
                    &s.legacy_table,
                    action.name(),
                    &error.code(),
                    &error.message,
                );
                json!({"refused": {"sqlstate": error.code(), "message": error.message, "hint": error.hint}})
            }
        });
    }
    JsonB(json!({"done": true}))
}

/// Run action `a` of reference `id` of `s`.
fn reference_step(
    core: &Core,
    s: &TableState,
    id: i64,
    a: RefAction,
    batch_size: i32,
    attempt: i32,
) -> Result<(), Stop> {
    let refs = references::load(&core.schema, &s.legacy_table);
    let Some(r) = refs.iter().find(|r| r.id == id) else {
        return Ok(());
    };
    if references::gone(&core.schema, s, r) {
        return Ok(());
    }
    references::run(&core.schema, s, r, a, batch_size, attempt)
}

/// Why a step did not act.
pub(super) enum Stop {
    /// Its locks were not granted within the lock timeout.
    Waiting(NotGranted),
    /// The table cannot go on until something is fixed.
    Refused(Error),
}

/// The NOTICE and result of a step whose locks were not granted.
fn waiting(s: &TableState, action: Action, not_granted: &NotGranted, attempt: i32) -> Value {
    let holders = if not_granted.holders.is_empty() {
        String::new()
    } else {
        let pids: Vec<String> = not_granted.holders.iter().map(i32::to_string).collect();
        format!(" (held by pid {})", pids.join(", "))
    };
    notice!(
        "nura_users cutover {}: {} waited {} ms for its locks{holders}, attempt {attempt}; trying again",
        s.legacy_table,
        action.name(),
        not_granted.waited_ms
    );
    json!({"waiting": true, "table": s.legacy_table, "action": action.name()})
}

/// The legacy table of `s`, quoted and qualified.
fn legacy_name(s: &TableState) -> String {
    format!(
        "{}.{}",
        spi::quote_identifier(&s.legacy_schema),
        s.legacy_table
    )
}

/// Capture: the plan must show no blocker for the table; then the capture triggers and the
/// capture run, in one transaction under the lock rules.
fn capture_table(core: &Core, s: &TableState, batch_size: i32, attempt: i32) -> Result<(), Stop> {
    let ext = &core.schema;
    if let Some(error) = blocked(ext, s) {
        return Err(Stop::Refused(error));
    }
    if let Some(columns) = capture::foreign_types(ext, &s.legacy_schema, s.table()) {
        return Err(Stop::Refused(Error::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "{} cannot be cut over: it has columns of types another role owns: {columns}; the cutover reads legacy rows as the extension's owner, and only types of the owner or of superusers",
                s.legacy_table
            ),
        )));
    }
    if let Some(owner) = capture::foreign_owner(&s.legacy_schema, s.table()) {
        return Err(Stop::Refused(Error::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "{} cannot be cut over: it is owned by {owner}, not by the extension's owner or a superuser; reverse sync and the view write it as the extension's owner, which would run its triggers and CHECK functions with that owner's rights",
                s.legacy_table
            ),
        ).hint("ALTER TABLE ... OWNER TO the extension's owner, or install the extension as the table's owner.")));
    }
    let legacy = legacy_name(s);
    // Reverse sync starts with the capture (docs/cutover.md): from its commit on, a change of a
    // user reaches the table's rows, so a rollback gives back every change made meanwhile.
    let mut wanted = vec![(legacy.clone(), "SHARE ROW EXCLUSIVE")];
    let mirror = !mirror::triggers_enabled(ext);
    if mirror {
        wanted.extend(mirror::trigger_locks(ext));
    }
    let waited = locks::lock_all(&wanted).map_err(Stop::Waiting)?;
    let schema = checked_legacy_schema(Some(&s.legacy_schema));
    let entries = extra_reference_entries(Some(s.extra_references.clone()));
    let extras = resolve_extras(&schema, &entries);
    let references = references::discover(ext, s, &schema, &extras)?;
    let mut statements = capture::create_sql(ext, &legacy, s.table());
    if mirror {
        statements.extend(mirror::trigger_sql(ext, true));
    }
    for sql in &statements {
        plans::execute_once(sql, &[]).or_raise("cutover capture");
    }
    let run = migration::begin_capture(core, &s.legacy_schema, batch_size);
    plans::execute(
        &format!(
            "UPDATE {ext}.nura_cutover_tables SET started_at = pg_catalog.now(), rolled_back_at = NULL \
             WHERE legacy_table OPERATOR(pg_catalog.=) $1"
        ),
        &[s.legacy_table.as_str().into()],
    )
    .or_raise("cutover capture");
    let mut next = s.clone();
    next.captured = true;
    next.mirrored = true;
    next.capture_run_id = Some(run);
    next.catch_up_run_id = None;
    state::save(ext, &next);
    state::log_step(
        ext,
        Step {
            table: &s.legacy_table,
            action: "capture",
            object: Some(legacy),
            detail: json!({"capture_run_id": run, "statements": statements,
                           "references": references}),
            attempts: attempt,
            lock_wait_ms: waited,
        },
    );
    Ok(())
}

/// Blockers that the catch-up run after the capture clears.
const CAUGHT_UP: [&str; 2] = ["migration_not_verified", "values_not_resolving"];

/// The plan's first blocker for the table, as the refusal of the CALL (55000).
fn blocked(ext: &str, s: &TableState) -> Option<Error> {
    let legacy = checked_legacy_schema(Some(&s.legacy_schema));
    let entries = extra_reference_entries(Some(s.extra_references.clone()));
    let extras = resolve_extras(&legacy, &entries);
    let plan = super::plan::plan(ext, &legacy, &extras);
    // Rows written since the last migration run, and reference values naming them, are what
    // the catch-up run places: they do not stop the capture (the references' own steps check
    // their values again).
    let blockers: Vec<Value> = plan["tables"][&s.legacy_table]["blockers"]
        .as_array()?
        .iter()
        .filter(|b| !CAUGHT_UP.contains(&b["kind"].as_str().unwrap_or("")))
        .cloned()
        .collect();
    let first = blockers.first()?;
    Some(
        Error::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "{} cannot be cut over: {}",
                s.legacy_table,
                first["reason"].as_str().unwrap_or("blocked")
            ),
        )
        .hint(&format!(
            "nura_cutover_plan('{}') lists all {} blocker(s).",
            s.legacy_schema.replace('\'', "''"),
            blockers.len()
        )),
    )
}

/// Catch-up: a migration run places the rows written before the capture (a batch per step).
fn catch_up(core: &Core, s: &TableState, batch_size: i32) -> Result<(), Stop> {
    let ext = &core.schema;
    let (run, started) = match s.catch_up_run_id {
        Some(run) => (run, false),
        None => (
            migration::begin_run(core, &s.legacy_schema, batch_size),
            true,
        ),
    };
    let finished = !started && migration::step_run(core, run);
    // Rows deleted before the capture, whose aliases a migration run leaves alone.
    let unplaced = if finished {
        live::unplace_missing(core, &s.legacy_schema, s.table())
    } else {
        0
    };
    let mut next = s.clone();
    next.catch_up_run_id = Some(run);
    state::save(ext, &next);
    if started || finished {
        state::log_step(
            ext,
            Step {
                table: &s.legacy_table,
                action: "catch_up",
                object: Some(format!("migration run {run}")),
                detail: json!({"run_id": run, "finished": finished, "unplaced": unplaced}),
                attempts: 1,
                lock_wait_ms: 0,
            },
        );
    }
    Ok(())
}

fn backlog_count(ext: &str, table: Table) -> i64 {
    plans::scalar::<i64>(
        &format!(
            "SELECT pg_catalog.count(*) FROM {ext}.nura_cutover_backlog \
             WHERE legacy_table OPERATOR(pg_catalog.=) $1"
        ),
        &[table.name().into()],
    )
    .or_raise("cutover")
    .unwrap_or(0)
}

/// Backlog: the ids whose placement failed are placed again, all at once, and when that fails
/// one by one, so that one row that still cannot be placed holds up no other: those placed leave
/// the backlog; when some still fail, the CALL stops (55000) naming how many and the first
/// reason, and they stay.
fn place_backlog(core: &Core, s: &TableState) -> Result<(), Stop> {
    let ext = &core.schema;
    let waiting = plans::rows(
        &format!(
            "SELECT legacy_id, before FROM {ext}.nura_cutover_backlog \
             WHERE legacy_table OPERATOR(pg_catalog.=) $1 ORDER BY legacy_id"
        ),
        &[s.legacy_table.as_str().into()],
        |r| Ok((r.get::<Uuid>(1)?, r.get::<String>(2)?)),
    )
    .or_raise("cutover");
    let waiting: Vec<(Uuid, Option<String>)> = waiting
        .into_iter()
        .filter_map(|(id, before)| id.map(|id| (id, before)))
        .collect();
    // With the rows from before the failed statements: an UPDATE is followed as it would have
    // been then.
    let place = |rows: &[(Uuid, Option<String>)]| {
        let change = Change {
            table: s.table(),
            legacy_schema: s.kept_schema(),
            ids: rows.iter().map(|(id, _)| *id).collect(),
            before: rows.iter().filter_map(|(_, b)| b.clone()).collect(),
        };
        crate::subtxn::run(|| live::place(core, s.capture_run_id.unwrap_or(0), &change))
    };
    let (placed, failed): (Vec<Uuid>, Vec<(Uuid, Error)>) = match place(&waiting) {
        Ok(()) => (waiting.iter().map(|(id, _)| *id).collect(), Vec::new()),
        Err(_) => {
            let mut placed = Vec::new();
            let mut failed = Vec::new();
            for row in &waiting {
                match place(std::slice::from_ref(row)) {
                    Ok(()) => placed.push(row.0),
                    Err(e) => failed.push((row.0, e)),
                }
            }
            (placed, failed)
        }
    };
    plans::execute(
        &format!(
            "DELETE FROM {ext}.nura_cutover_backlog \
             WHERE legacy_table OPERATOR(pg_catalog.=) $1 AND legacy_id OPERATOR(pg_catalog.=) ANY ($2)"
        ),
        &[s.legacy_table.as_str().into(), placed.clone().into()],
    )
    .or_raise("cutover");
    state::log_step(
        ext,
        Step {
            table: &s.legacy_table,
            action: "backlog",
            object: None,
            detail: json!({"placed": placed.len(), "failed": failed.len()}),
            attempts: 1,
            lock_wait_ms: 0,
        },
    );
    let Some((id, e)) = failed.first() else {
        state::save(ext, s);
        return Ok(());
    };
    Err(Stop::Refused(
        Error::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "{} row(s) of {} written during the cutover cannot be placed ({} placed now); {id}: {}",
                failed.len(),
                s.legacy_table,
                placed.len(),
                e.message
            ),
        )
        .hint("nura_cutover_backlog lists them; fix the rows, then CALL nura_cutover() again."),
    ))
}

/// Release (toward `legacy`): the capture triggers go, the capture run ends, the backlog of the
/// table is dropped (its rows stay in the legacy table, where a migration run places them).
fn release(core: &Core, s: &TableState, attempt: i32) -> Result<(), Stop> {
    let ext = &core.schema;
    let legacy = legacy_name(s);
    let present = super::catalog::relation(&s.legacy_schema, &s.legacy_table).is_some();
    let mut waited = 0;
    let mut statements = Vec::new();
    if present {
        // DROP TRIGGER takes ACCESS EXCLUSIVE (docs/cutover.md, Locks).
        waited = locks::lock(std::slice::from_ref(&legacy), "ACCESS EXCLUSIVE")
            .map_err(Stop::Waiting)?;
        statements = capture::drop_sql(&legacy);
        for sql in &statements {
            plans::execute_once(sql, &[]).or_raise("cutover release");
        }
    }
    if let Some(run) = s.capture_run_id {
        migration::end_capture(core, run);
    }
    let dropped = plans::execute_count(
        &format!(
            "DELETE FROM {ext}.nura_cutover_backlog WHERE legacy_table OPERATOR(pg_catalog.=) $1"
        ),
        &[s.legacy_table.as_str().into()],
    )
    .or_raise("cutover release");
    plans::execute(
        &format!(
            "UPDATE {ext}.nura_cutover_tables SET rolled_back_at = pg_catalog.now() \
             WHERE legacy_table OPERATOR(pg_catalog.=) $1"
        ),
        &[s.legacy_table.as_str().into()],
    )
    .or_raise("cutover release");
    let mut next = s.clone();
    next.captured = false;
    next.capture_run_id = None;
    next.catch_up_run_id = None;
    state::save(ext, &next);
    state::log_step(
        ext,
        Step {
            table: &s.legacy_table,
            action: "release",
            object: Some(legacy),
            detail: json!({"capture_run_id": s.capture_run_id, "statements": statements,
                           "backlog_dropped": dropped}),
            attempts: attempt,
            lock_wait_ms: waited,
        },
    );
    Ok(())
}

/// `docs/cutover.md`, "Status": one row per legacy table under a cutover or present in `public`,
/// in precedence order.
#[pg_extern(stable, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)]
fn nura_cutover_status() -> TableIterator<
    'static,
    (
        name!(legacy_table, String),
        name!(state, String),
        name!(references_total, i32),
        name!(references_moved, i32),
        name!(started_at, Option<TimestampWithTimeZone>),
        name!(switched_at, Option<TimestampWithTimeZone>),
    ),
> {
    let ext = extension_schema();
    let states = state::load_all(&ext, false);
    let mut rows = Vec::new();
    for table in Table::ALL {
        let found = states.iter().find(|s| s.legacy_table == table.name());
        let schema = found.map_or("public".to_string(), |s| s.legacy_schema.clone());
        let Some((oid, _)) = super::catalog::relation(&schema, table.name()) else {
            if found.is_none() {
                continue;
            }
            rows.push(status_row(&ext, table, found, 0));
            continue;
        };
        // Keys from legacy tables stay with them (docs/cutover.md): not references to move.
        let legacy_oids: Vec<u32> = Table::ALL
            .iter()
            .filter_map(|t| super::catalog::relation(&schema, t.name()))
            .map(|(oid, _)| u32::from(oid))
            .collect();
        let references = super::catalog::foreign_keys_to(oid)
            .into_iter()
            .filter(|k| !legacy_oids.contains(&k.table))
            .count()
            + found.map_or(0, |s| s.extra_references.as_array().map_or(0, Vec::len));
        if found.is_none() && references == 0 && schema != "public" {
            continue;
        }
        rows.push(status_row(&ext, table, found, references as i32));
    }
    TableIterator::new(rows)
}

type StatusRow = (
    String,
    String,
    i32,
    i32,
    Option<TimestampWithTimeZone>,
    Option<TimestampWithTimeZone>,
);

fn status_row(ext: &str, table: Table, s: Option<&TableState>, references: i32) -> StatusRow {
    let at = |column: &str| {
        s.filter(|s| s.captured || s.finished).and_then(|_| {
            plans::read_scalar::<TimestampWithTimeZone>(
                &format!(
                    "SELECT {column} FROM {ext}.nura_cutover_tables \
                     WHERE legacy_table OPERATOR(pg_catalog.=) $1"
                ),
                &[table.name().into()],
            )
            .or_raise("cutover status")
        })
    };
    let started_at = at("started_at");
    let switched_at = at("switched_at");
    // Under a cutover, its recorded references: those moved are at users and validated.
    let recorded = s
        .filter(|s| s.captured)
        .map(|s| references::load(ext, &s.legacy_table));
    let (total, moved) = match recorded {
        Some(refs) => (
            refs.len() as i32,
            refs.iter()
                .filter(|r| r.target == "users" && r.validated)
                .count() as i32,
        ),
        None => (references, 0),
    };
    (
        table.name().to_string(),
        s.map_or("legacy", TableState::shown_state).to_string(),
        total,
        moved,
        started_at,
        switched_at,
    )
}
