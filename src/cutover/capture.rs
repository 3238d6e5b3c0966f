//! Capture (docs/cutover.md, "Live legacy writes"): triggers on a legacy table that carry every
//! statement's rows into `users` in the writer's own transaction, and refuse what could not be
//! carried (a changed legacy id, a TRUNCATE). The placement itself is the migration's
//! (`migration::live`); the trigger functions are in `sql/cutover.sql`.

use crate::errors::{Error, OrRaise};
use crate::log::{LogEntry, Source};
use crate::migration::live::{self, Change};
use crate::migration::Table;
use crate::plans;
use crate::schema::extension_schema;
use crate::settings::{OnSyncError, ON_SYNC_ERROR};
use crate::sync::Core;
use pgrx::prelude::*;
use pgrx::Uuid;
use std::time::Instant;

/// The capture triggers' names, in the order they are created.
pub(super) const TRIGGERS: [&str; 5] = [
    "nura_cutover_capture_ins",
    "nura_cutover_capture_upd",
    "nura_cutover_capture_del",
    "nura_cutover_guard_id",
    "nura_cutover_guard_truncate",
];

/// The statements that create the capture triggers on `legacy` (a quoted, qualified name).
/// Statement-level triggers with transition tables: a bulk statement of old code is placed as
/// one batch. `ENABLE ALWAYS`, so that rows a logical-replication apply writes are placed too.
pub(super) fn create_sql(ext: &str, legacy: &str, table: Table) -> Vec<String> {
    let id = spi::quote_literal(table.id_column());
    let id_column = spi::quote_identifier(table.id_column());
    let name = spi::quote_literal(table.name());
    let capture = |trigger: &str, event: &str, transition: &str| {
        format!(
            "CREATE TRIGGER {trigger} AFTER {event} ON {legacy} REFERENCING {transition} \
             FOR EACH STATEMENT EXECUTE FUNCTION {ext}.nura_cutover_capture({id}, {name})"
        )
    };
    let mut sql = vec![
        capture(TRIGGERS[0], "INSERT", "NEW TABLE AS nura_new"),
        capture(
            TRIGGERS[1],
            "UPDATE",
            "OLD TABLE AS nura_old NEW TABLE AS nura_new",
        ),
        capture(TRIGGERS[2], "DELETE", "OLD TABLE AS nura_old"),
        format!(
            "CREATE TRIGGER {} AFTER UPDATE ON {legacy} FOR EACH ROW \
             WHEN (OLD.{id_column} IS DISTINCT FROM NEW.{id_column}) \
             EXECUTE FUNCTION {ext}.nura_cutover_guard({id})",
            TRIGGERS[3],
        ),
        format!(
            "CREATE TRIGGER {} BEFORE TRUNCATE ON {legacy} FOR EACH STATEMENT \
             EXECUTE FUNCTION {ext}.nura_cutover_guard({id})",
            TRIGGERS[4]
        ),
    ];
    sql.extend(
        TRIGGERS
            .iter()
            .map(|t| format!("ALTER TABLE {legacy} ENABLE ALWAYS TRIGGER {t}")),
    );
    sql
}

/// The statements that drop the capture triggers from `legacy`.
pub(super) fn drop_sql(legacy: &str) -> Vec<String> {
    TRIGGERS
        .iter()
        .map(|t| format!("DROP TRIGGER IF EXISTS {t} ON {legacy}"))
        .collect()
}

/// Called by the capture trigger (`sql/cutover.sql`) after each statement on a captured legacy
/// table: `ids`, the ids the statement wrote; `before`, the rows before an UPDATE or a DELETE.
/// A placement that fails is rolled back alone: with `nura_users.on_sync_error = log` the legacy
/// write commits, the ids wait in `nura_cutover_backlog` for the next CALL, and the failure is
/// logged; with `raise` the legacy write fails with it.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_cutover_place(
    legacy_table: &str,
    legacy_schema: &str,
    ids: Option<Vec<Uuid>>,
    before: Option<Vec<String>>,
) {
    // The cutover's own writes (reverse sync, the view's UPDATE) come from users, or place
    // themselves.
    if super::mirror::own_writes(legacy_table) {
        return;
    }
    let ext = extension_schema();
    let Some(table) = Table::ALL.into_iter().find(|t| t.name() == legacy_table) else {
        return;
    };
    place_statement(
        &ext,
        table,
        legacy_schema,
        ids.unwrap_or_default(),
        before.unwrap_or_default(),
    );
}

/// One statement's writes to `table` in `legacy_schema` (the legacy table, or the kept one) into
/// `users`, as the capture trigger places them (see [`nura_cutover_place`]).
pub(super) fn place_statement(
    ext: &str,
    table: Table,
    legacy_schema: &str,
    ids: Vec<Uuid>,
    before: Vec<String>,
) {
    let ext = ext.to_string();
    let Some(run_id) = capture_run(&ext, table, legacy_schema) else {
        // Not captured (a trigger left by hand): nothing owns the write.
        return;
    };
    let mut change = Change {
        table,
        legacy_schema,
        ids,
        before,
    };
    let waiting = waiting_before(&ext, &change);
    let core = Core::new(ext.clone());
    let started = Instant::now();
    // An id waiting in the backlog is placed from the row as it was before its failed write:
    // what the user holds is still that row's, and the change since is followed from there.
    if !waiting.is_empty() {
        let waiting_ids: Vec<Uuid> = waiting.iter().map(|(id, _)| *id).collect();
        change.before.retain(|text| {
            !live::before_by_id_text(table, text).is_some_and(|id| waiting_ids.contains(&id))
        });
        change
            .before
            .extend(waiting.iter().filter_map(|(_, b)| b.clone()));
        change.ids.extend(waiting_ids);
    }
    let placed = crate::subtxn::run(|| {
        refuse_foreign_types(&ext, &change);
        live::place(&core, run_id, &change);
        clear_waiting(&ext, &change, &waiting);
    });
    let Err(failure) = placed else {
        return;
    };
    if ON_SYNC_ERROR.get() == OnSyncError::Raise {
        failure.raise();
    }
    set_aside(&core, &change, &failure, started);
}

/// The commit of a transaction whose live deletes ended ties of `user_id` to `legacy_table`
/// (`nura_cutover_unplaced`'s deferred trigger, `sql/cutover.sql`): `migration::live::settle`.
/// A failure (a key of the product refusing the user's delete, say) is rolled back alone with
/// `nura_users.on_sync_error = log`: the user stays, the failure is logged with a WARNING; with
/// `raise` the commit fails with it.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_cutover_settle(user_id: Uuid, legacy_table: &str) {
    let ext = extension_schema();
    let Some(table) = Table::ALL.into_iter().find(|t| t.name() == legacy_table) else {
        return;
    };
    plans::execute(
        &format!(
            "DELETE FROM {ext}.nura_cutover_unplaced \
             WHERE user_id OPERATOR(pg_catalog.=) $1 AND legacy_table OPERATOR(pg_catalog.=) $2"
        ),
        &[user_id.into(), legacy_table.into()],
    )
    .or_raise("settling legacy deletes");
    let core = Core::new(ext);
    let started = Instant::now();
    let Err(failure) = crate::subtxn::run(|| live::settle(&core, table, user_id)) else {
        return;
    };
    if ON_SYNC_ERROR.get() == OnSyncError::Raise {
        failure.raise();
    }
    core.log(&LogEntry::failed(
        Some(user_id),
        Source::Migration,
        failure.code(),
        format!(
            "removing the user whose {} rows were deleted during the cutover: {}",
            table.name(),
            failure.message
        ),
        started,
    ));
    pgrx::warning!(
        "nura_users: the user {user_id}, whose {} rows were deleted, stays ({}: {})",
        table.name(),
        failure.code(),
        failure.message
    );
}

/// The legacy table's owner when it is another role than the extension's owner (who runs these
/// functions) and not a superuser: reverse sync and the switched view write the table as the
/// extension's owner, which would run that role's triggers and CHECK functions with the
/// owner's rights.
pub(super) fn foreign_owner(legacy_schema: &str, table: Table) -> Option<String> {
    plans::read_scalar::<String>(
        "SELECT o.rolname::text FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_roles o ON o.oid OPERATOR(pg_catalog.=) c.relowner \
         WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(pg_catalog.quote_ident($1) \
                   OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) $2) \
           AND NOT o.rolsuper AND o.rolname OPERATOR(pg_catalog.<>) CURRENT_USER",
        &[legacy_schema.into(), table.name().into()],
    )
    .or_raise("cutover capture")
}

/// The columns of the legacy table whose types another role owns, if any (see
/// `nura_cutover_foreign_types` in `sql/cutover.sql`).
pub(super) fn foreign_types(ext: &str, legacy_schema: &str, table: Table) -> Option<String> {
    plans::read_scalar::<String>(
        &format!(
            "SELECT {ext}.nura_cutover_foreign_types(pg_catalog.to_regclass( \
                 pg_catalog.quote_ident($1) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) $2))"
        ),
        &[legacy_schema.into(), table.name().into()],
    )
    .or_raise("placing legacy rows")
}

/// 55000 when the legacy table has a column of a type another role owns: its rows are read as
/// JSON as the extension's owner, and converting such a type could run its owner's cast.
fn refuse_foreign_types(ext: &str, change: &Change) {
    if let Some(columns) = foreign_types(ext, change.legacy_schema, change.table) {
        Error::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "{} has columns of types another role owns: {columns}; the cutover reads rows as the extension's owner, and only types of the owner or of superusers",
                change.table.name()
            ),
        )
        .raise();
    }
}

/// The backlog entries of `change`'s ids: each id with its row from before.
fn waiting_before(ext: &str, change: &Change) -> Vec<(Uuid, Option<String>)> {
    let ids = live::ids_of(change);
    plans::rows(
        &format!(
            "SELECT b.legacy_id, b.before FROM {ext}.nura_cutover_backlog b \
             WHERE b.legacy_table OPERATOR(pg_catalog.=) $1 AND b.legacy_id OPERATOR(pg_catalog.=) ANY ($2)"
        ),
        &[change.table.name().into(), ids.into()],
        |r| Ok((r.get::<Uuid>(1)?.unwrap_or_else(|| Uuid::from_bytes([0; 16])), r.get::<String>(2)?)),
    )
    .or_raise("placing legacy rows")
}

/// The backlog entries placed with `change` go.
fn clear_waiting(ext: &str, change: &Change, waiting: &[(Uuid, Option<String>)]) {
    if waiting.is_empty() {
        return;
    }
    let ids: Vec<Uuid> = waiting.iter().map(|(id, _)| *id).collect();
    plans::execute(
        &format!(
            "DELETE FROM {ext}.nura_cutover_backlog \
             WHERE legacy_table OPERATOR(pg_catalog.=) $1 AND legacy_id OPERATOR(pg_catalog.=) ANY ($2)"
        ),
        &[change.table.name().into(), ids.into()],
    )
    .or_raise("placing legacy rows");
}

/// The capture run of `table` in `legacy_schema`, when a cutover captures it.
fn capture_run(ext: &str, table: Table, legacy_schema: &str) -> Option<i64> {
    plans::scalar::<i64>(
        &format!(
            "SELECT capture_run_id FROM {ext}.nura_cutover_tables \
             WHERE legacy_table OPERATOR(pg_catalog.=) $1 AND captured \
               AND CASE WHEN switched THEN $2 OPERATOR(pg_catalog.=) 'nura_legacy' \
                        ELSE legacy_schema OPERATOR(pg_catalog.=) $2 END"
        ),
        &[table.name().into(), legacy_schema.into()],
    )
    .or_raise("placing legacy rows")
}

/// A failed placement: its ids into the backlog, a failed log row, a WARNING.
fn set_aside(core: &Core, change: &Change, failure: &Error, started: Instant) {
    let ext = &core.schema;
    let ids = live::ids_of(change);
    // Each id with its row from before the statement (an UPDATE's): the retry follows the change
    // by the three-way rule. A row already waiting keeps its first before, the user's value.
    let before = live::before_by_id(change);
    let befores: Vec<Option<String>> = ids
        .iter()
        .map(|id| {
            before
                .iter()
                .find(|(b, _)| b == id)
                .map(|(_, text)| text.clone())
        })
        .collect();
    plans::execute(
        &format!(
            "INSERT INTO {ext}.nura_cutover_backlog (legacy_table, legacy_id, sqlstate, message, before) \
             SELECT $1, x.id, $3, $4, x.before \
             FROM ROWS FROM (pg_catalog.unnest($2::uuid[]), pg_catalog.unnest($5::text[])) AS x(id, before) \
             ON CONFLICT (legacy_table, legacy_id) DO UPDATE \
             SET sqlstate = EXCLUDED.sqlstate, message = EXCLUDED.message, created_at = pg_catalog.now(), \
                 before = COALESCE(nura_cutover_backlog.before, EXCLUDED.before)"
        ),
        &[
            change.table.name().into(),
            ids.clone().into(),
            failure.code().into(),
            failure.message.as_str().into(),
            befores.into(),
        ],
    )
    .or_raise("placing legacy rows");
    core.log(&LogEntry::failed(
        None,
        Source::Migration,
        failure.code(),
        format!(
            "placing {} row(s) of {} written during the cutover: {}",
            ids.len(),
            change.table.name(),
            failure.message
        ),
        started,
    ));
    pgrx::warning!(
        "nura_users: {} row(s) of {} written during the cutover could not be placed ({}: {}); \
         the next CALL nura_cutover() places them again",
        ids.len(),
        change.table.name(),
        failure.code(),
        failure.message
    );
}
