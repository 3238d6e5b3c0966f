//! The legacy migration (docs/migration.md): `chat_users`, `voice_users` and `custom_users`
//! into `users`. Legacy tables are only read.
//!
//! A run goes through phases ([`report::Phase`]), each a series of steps that one transaction
//! can hold; after every step the run's report, which is also its progress, is stored:
//! 1. **backfill** (`backfill`): every `auth.users` row without a `users` row gets one, as the
//!    auth trigger would have made it, a batch per step;
//! 2. **plan** (`plan`): one set-based statement places every legacy row: the user it goes to
//!    (existing or new), its cluster (the rows of one person) and batch, or why it cannot be
//!    placed; all of it stored in `nura_migration_rows`;
//! 3. **apply** (`apply`): a batch per step: its rows and their users are read (locked), merged
//!    by the precedence rules (`merge`, `rules`), and written back with one statement per table.
//!
//! The plan is written once and committed, so `CALL nura_run_migration()` (a commit after every
//! step, `sql/migration.sql`) resumes an interrupted run at the first batch not committed, and
//! ends in exactly the state of a clean run. `nura_migrate_legacy()` runs the same steps in its
//! caller's transaction. What a run could not place or dropped is in `nura_migration_issues`
//! (`issues`); `nura_rollback_migration` (`rollback`) undoes a run.
//!
//! This file: the SQL functions and the step machine.

mod apply;
mod backfill;
mod issues;
pub mod live;
mod merge;
mod plan;
mod report;
mod rollback;
mod rules;

pub use issues::{record_adoption_conflicts, scrub_issue_values};
pub use plan::{json_columns, legacy_uuid_sql, row_json_sql};
pub use rules::Table;

use crate::errors::raise;
use crate::errors::{Error, OrRaise};
use crate::jsonb::{JsonB, RawJsonb};
use crate::plans;
use crate::schema::extension_schema;
use crate::sync::Core;
use pgrx::prelude::*;
use pgrx::{PgMemoryContexts, Uuid};
use report::{Phase, Report, Run};

extension_sql_file!(
    "../../sql/migration.sql",
    name = "migration",
    requires = ["schema"]
);

fn quote(name: &str) -> String {
    pgrx::spi::quote_identifier(name)
}

fn argument_error(message: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        message,
        None,
    )
}

/// A legacy text cell as the migration reads it: without surrounding white space (Unicode's, as
/// Rust's `trim`), NULL when nothing is left. `nura_verify_migration` compares through this same
/// function, so the two cannot disagree on what a cell holds.
#[pg_extern(immutable, strict, parallel_safe)]
fn nura_legacy_text(value: &str) -> Option<&str> {
    Some(value.trim()).filter(|t| !t.is_empty())
}

/// A legacy phone cell as `users` would hold it (see [`rules::legacy_phone`]); one that is not
/// usable comes back cleaned of its formatting but not checked, so that verify still sees a
/// value that differs (and the conflict the migration recorded for it). NULL for a blank cell.
#[pg_extern(immutable, strict, parallel_safe)]
fn nura_legacy_phone(value: &str) -> Option<String> {
    match rules::legacy_phone(value) {
        Ok(phone) => phone,
        Err(_) => Some(rules::cleaned_phone(value)),
    }
}

/// A legacy id in any form PostgreSQL's `uuid` reads (see `uuid_input`), NULL otherwise: the
/// plan and verify read text ids through it.
#[pg_extern(immutable, strict, parallel_safe)]
fn nura_legacy_uuid(id: &str) -> Option<Uuid> {
    crate::uuid_input::parse(id)
}

/// The trimmed address if it is usable for matching (the rules of `nura_sync_user`), else NULL.
#[pg_extern(immutable, strict, parallel_safe)]
fn nura_legacy_email(email: &str) -> Option<String> {
    rules::legacy_email(email)
}

/// A legacy row (the text of `to_json` of it) as `jsonb`, for a row whose json columns hold a
/// `\u` escape (see [`plan::row_json_sql`] and [`rules::legacy_row`]). PARALLEL SAFE, with no
/// subtransaction: the plan and verify scan legacy tables in parallel workers.
#[pg_extern(immutable, strict, parallel_safe)]
fn nura_legacy_row(row: &str) -> RawJsonb {
    RawJsonb::from_value(&rules::legacy_row(row))
}

/// Migrate the legacy tables in one transaction (docs/migration.md; `dry_run`: plan and report,
/// write nothing but the run's record and its issues).
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
    refuse_while_switched(&core.schema);
    let run_id = begin(&core, dry_run, batch_size, legacy_schema, false);
    // Each step's arguments and results are freed when the step ends: memory stays bounded by
    // one batch however many batches the call runs.
    while !step_in_own_memory(&core, run_id) {}
    let report = Run::load_existing(&core, run_id).report();
    JsonB(serde_json::to_value(report).or_raise("writing the migration report"))
}

/// For `CALL nura_run_migration()`: the interrupted run to resume, or a new one.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_migration_begin(batch_size: Option<i32>, legacy_schema: Option<&str>) -> i64 {
    let core = Core::new(extension_schema());
    refuse_while_switched(&core.schema);
    begin(&core, false, batch_size, legacy_schema, true)
}

/// For `CALL nura_run_migration()`: one step of the run; true when it has finished.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_migration_step(run_id: i64) -> bool {
    let core = Core::new(extension_schema());
    step(&core, run_id)
}

/// 55000 while a cutover has switched a legacy table (docs/cutover.md): its name is a view over
/// users, and every write to its kept table is placed as it happens, so there is nothing to
/// migrate; a run would read the view.
fn refuse_while_switched(schema: &str) {
    if !crate::schema::has_column(schema, "nura_cutover_tables", "switched") {
        return;
    }
    let switched = plans::read_scalar::<String>(
        &format!(
            "SELECT pg_catalog.string_agg(legacy_table, ', ' ORDER BY legacy_table) \
             FROM {schema}.nura_cutover_tables WHERE switched"
        ),
        &[],
    )
    .or_raise("migration");
    if let Some(tables) = switched {
        Error::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("no migration runs while a cutover has switched {tables}"),
        )
        .hint("Writes to a switched table reach users as they happen; CALL nura_cutover_rollback() first to migrate again.")
        .raise();
    }
}

/// For the cutover's catch-up (docs/cutover.md): the running run of `legacy`, resumed, or a new
/// one.
pub fn begin_run(core: &Core, legacy: &str, batch_size: i32) -> i64 {
    begin(core, false, Some(batch_size), Some(legacy), true)
}

/// For the cutover's catch-up: one step of run `run_id`; true when it has finished.
pub fn step_run(core: &Core, run_id: i64) -> bool {
    step_in_own_memory(core, run_id)
}

/// For the cutover: a run that owns the live writes of a captured table (status `capturing`:
/// not finished, and blocking no other run).
pub fn begin_capture(core: &Core, legacy: &str, batch_size: i32) -> i64 {
    let schema = &core.schema;
    let id = plans::scalar::<i64>(
        &format!(
            "INSERT INTO {schema}.nura_migration_runs (dry_run, legacy_schema, batch_size, status) \
             VALUES (false, $1, $2, 'capturing') RETURNING id"
        ),
        &[legacy.into(), batch_size.into()],
    )
    .or_raise("migration")
    .unwrap_or(0);
    let mut report = Report::new(id, false, legacy.to_string(), &plan::present_tables(legacy));
    report.phase = Phase::Apply;
    report.save(core, id, None);
    id
}

/// The capture run `run_id` ends (the cutover's capture is released).
pub fn end_capture(core: &Core, run_id: i64) {
    let schema = &core.schema;
    plans::execute(
        &format!(
            "UPDATE {schema}.nura_migration_runs SET status = 'completed', finished_at = pg_catalog.now() \
             WHERE id OPERATOR(pg_catalog.=) $1 AND status OPERATOR(pg_catalog.=) 'capturing'"
        ),
        &[run_id.into()],
    )
    .or_raise("migration");
}

/// Whether run `run_id` is still running.
pub fn run_is_running(core: &Core, run_id: i64) -> bool {
    Run::load(core, run_id).is_some_and(|r| r.is_running())
}

/// Create a run, or (`resume`) return the interrupted one of the same legacy schema.
fn begin(
    core: &Core,
    dry_run: bool,
    batch_size: Option<i32>,
    legacy: Option<&str>,
    resume: bool,
) -> i64 {
    let (batch_size, legacy) = checked_arguments(batch_size, legacy);
    let schema = &core.schema;
    // Runs start one at a time; a running (interrupted) run blocks a new real run.
    plans::execute(
        &format!("LOCK TABLE {schema}.nura_migration_runs IN SHARE ROW EXCLUSIVE MODE"),
        &[],
    )
    .or_raise("migration");
    if !dry_run {
        if let Some(id) = running_run(core, &legacy, resume) {
            return id;
        }
    }
    let id = plans::scalar::<i64>(
        &format!(
            "INSERT INTO {schema}.nura_migration_runs (dry_run, legacy_schema, batch_size) \
             VALUES ($1, $2, $3) RETURNING id"
        ),
        &[dry_run.into(), legacy.as_str().into(), batch_size.into()],
    )
    .or_raise("migration")
    .unwrap_or(0);
    let present = plan::present_tables(&legacy);
    Report::new(id, dry_run, legacy, &present).save(core, id, None);
    id
}

/// The batch size and legacy schema of a new run; ERROR when either is not acceptable.
fn checked_arguments(batch_size: Option<i32>, legacy: Option<&str>) -> (i32, String) {
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
    .or_raise("migration")
    .unwrap_or(false);
    if !exists {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_SCHEMA_NAME,
            format!("legacy_schema \"{legacy}\" does not exist"),
            None,
        );
    }
    (batch_size, legacy)
}

/// The real run still running, if any: with `resume` and the same legacy schema, the one to go
/// on with; otherwise ERROR 55006, as it blocks a new one.
fn running_run(core: &Core, legacy: &str, resume: bool) -> Option<i64> {
    let schema = &core.schema;
    let (id, running_schema) = plans::first_row(
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
    .or_raise("migration")?;
    if resume && running_schema == legacy {
        notice!("nura_users: resuming migration run {id}");
        return Some(id);
    }
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
        format!("migration run {id} (legacy schema \"{running_schema}\") has not finished"),
        Some("CALL nura_run_migration() with its legacy schema resumes it; nura_rollback_migration(run_id) undoes it."),
    );
}

/// [`step`] in a memory context of its own, deleted when the step returns.
fn step_in_own_memory(core: &Core, run_id: i64) -> bool {
    // SAFETY: nothing allocated inside outlives the closure: the step returns a plain bool, and
    // what it keeps (the report) it has written to the table.
    unsafe { PgMemoryContexts::new("nura_users migration step").switch_to(|_| step(core, run_id)) }
}

/// One step of run `run_id`; true when the run has finished.
fn step(core: &Core, run_id: i64) -> bool {
    let run = Run::load_existing(core, run_id);
    if !run.is_running() {
        return true;
    }
    let mut report = run.report();
    match report.phase {
        Phase::Backfill => backfill::step(core, &run, &mut report),
        Phase::Plan => plan::step(core, &run, &mut report),
        Phase::Apply if report.batches_done < report.batches_total => {
            apply::step(core, &run, &mut report)
        }
        // Every batch done: the run finishes below.
        Phase::Apply | Phase::Done => {}
    }
    let finished = report.phase == Phase::Done
        || (report.phase == Phase::Apply && report.batches_done >= report.batches_total);
    if finished {
        finish(core, &run, &mut report);
    }
    report.save(core, run_id, finished.then_some("completed"));
    finished
}

/// The run's last step: its work list goes, and the tables it filled get fresh statistics.
fn finish(core: &Core, run: &Run, report: &mut Report) {
    report.phase = Phase::Done;
    report.backfill_after = None;
    let schema = &core.schema;
    plans::execute(
        &format!("DELETE FROM {schema}.nura_migration_rows WHERE run_id OPERATOR(pg_catalog.=) $1"),
        &[run.id.into()],
    )
    .or_raise("migration");
    // The tables grew by up to the legacy row count within minutes: fresh statistics, so that
    // verify and everyday queries do not plan for the empty tables of before.
    if !run.dry_run {
        plans::execute_once(
            &format!(
                "ANALYZE {schema}.users, {schema}.user_service_profiles, \
                 {schema}.user_id_aliases, {schema}.nura_migration_issues"
            ),
            &[],
        )
        .or_raise("migration");
    }
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
}
