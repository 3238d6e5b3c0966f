//! Reverse sync (docs/cutover.md, "The switch"): while a legacy table is mirrored, changes of
//! `users` reach its rows, so that old code reading them through the view sees every user of
//! the service, and a switch back loses nothing.
//!
//! - A changed field is written into the rows of the user's legacy ids of the table (only the
//!   fields that changed: a merged person's other rows keep their own values until the person
//!   changes them), at the commit (`nura_cutover_mirror_users`, deferred).
//! - A user who starts using the service (a profile, or for custom_users a streak or xp) gets a
//!   row with its own id, and an alias from that id to itself ([`ensure_rows`]); the fill does
//!   the same for users who had started before the mirror.
//! - A user's delete deletes its rows.
//!
//! The trigger functions are in `sql/cutover.sql`. Every write runs in a subtransaction of its
//! own: a legacy table refusing a user's data (its NOT NULL, a CHECK) never fails the user's
//! write; it is kept in `nura_cutover_mirror_backlog`, with a WARNING, and retried by the CALLs.

use super::locks;
use super::state::{self, Step, TableState};
use super::steps::Stop;
use crate::errors::{Error, OrRaise};
use crate::migration::Table;
use crate::plans;
use crate::schema::extension_schema;
use pgrx::prelude::*;
use pgrx::Uuid;
use serde_json::json;
use std::cell::RefCell;

/// The triggers of reverse sync: (table, trigger, what follows `CREATE [CONSTRAINT] TRIGGER
/// <name>` up to the function), made by the first mirror step and enabled while some table is
/// mirrored. Field changes and new profiles at the commit (deferred constraint triggers): the
/// transaction's last word, with its aliases in place; a delete before it, while the aliases
/// still say which rows are the user's.
const TRIGGERS: [(&str, &str, &str); 3] = [
    (
        "users",
        "nura_cutover_mirror_users",
        "AFTER UPDATE OF email, full_name, phone_number, is_active, privacy_settings, \
         current_streak, xp ON {ext}.users DEFERRABLE INITIALLY DEFERRED FOR EACH ROW",
    ),
    (
        "users",
        "nura_cutover_mirror_users_delete",
        "BEFORE DELETE ON {ext}.users FOR EACH ROW",
    ),
    (
        "user_service_profiles",
        "nura_cutover_mirror_profiles",
        "AFTER INSERT OR UPDATE OF service_preferences ON {ext}.user_service_profiles \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW",
    ),
];

thread_local! {
    /// The legacy tables the cutover's own writes are writing now: the capture trigger leaves
    /// those writes alone (they come from users, or place themselves). A product trigger they
    /// fire that writes another legacy table is captured as usual.
    static OWN_WRITES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Marks the cutover's own writes into one legacy table while it lives; an ERROR unwinds it too.
pub(super) struct OwnWrites;

impl OwnWrites {
    pub(super) fn begin(legacy_table: &str) -> OwnWrites {
        OWN_WRITES.with_borrow_mut(|w| w.push(legacy_table.to_string()));
        OwnWrites
    }
}

impl Drop for OwnWrites {
    fn drop(&mut self) {
        OWN_WRITES.with_borrow_mut(|w| {
            w.pop();
        });
    }
}

/// Whether the cutover's own writes into `legacy_table` are running (see [`OwnWrites`]).
pub(super) fn own_writes(legacy_table: &str) -> bool {
    OWN_WRITES.with_borrow(|w| w.iter().any(|t| t == legacy_table))
}

/// The mirrored tables, as their state rows.
fn mirrored(ext: &str) -> Vec<TableState> {
    state::load_all(ext, false)
        .into_iter()
        .filter(|s| s.mirrored)
        .collect()
}

/// The table that holds the rows of `s` (the legacy table, or once switched the kept one),
/// locked ROW EXCLUSIVE, as a qualified name. Found by its capture trigger, not by the state's
/// schema: a switch or unswitch committing meanwhile moves it (and, its ACCESS EXCLUSIVE lock
/// taken, waits for this one), and after the lock the name is the one it has now. With it, the
/// columns reverse sync writes that the table has. `None` when no table is captured under that
/// name.
fn kept_relation(s: &TableState) -> Option<(String, Vec<(&'static str, &'static str)>)> {
    let oid = plans::read_scalar::<pg_sys::Oid>(
        "SELECT t.tgrelid FROM pg_catalog.pg_trigger t \
         JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.tgrelid \
         WHERE t.tgname OPERATOR(pg_catalog.=) 'nura_cutover_capture_ins' \
           AND c.relname OPERATOR(pg_catalog.=) $1",
        &[s.legacy_table.as_str().into()],
    )
    .or_raise("reverse sync")?;
    // SAFETY: a plain lock on an existing relation, held to the end of the transaction; it
    // processes pending invalidations, so the name read next is the current one.
    unsafe { pg_sys::LockRelationOid(oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE) };
    let (name, names) = super::catalog::read::<(String, Vec<String>)>(
        "SELECT pg_catalog.jsonb_build_array($1::pg_catalog.regclass::text, \
             (SELECT COALESCE(pg_catalog.jsonb_agg(a.attname::text), '[]') FROM pg_catalog.pg_attribute a \
              WHERE a.attrelid OPERATOR(pg_catalog.=) $1 \
                AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped \
                AND a.attgenerated OPERATOR(pg_catalog.=) ''))",
        &[oid.into()],
    );
    Some((name, present_columns(s, &names)))
}

/// Of the columns reverse sync writes (`users` field, column), those among `names`.
fn present_columns(s: &TableState, names: &[String]) -> Vec<(&'static str, &'static str)> {
    let mut columns = s.table().user_columns();
    if s.table() == Table::Chat {
        columns.push(("notification_prefs", "notification_prefs"));
    }
    columns
        .into_iter()
        .filter(|(_, c)| names.iter().any(|n| n == c))
        .collect()
}

/// The value of `users` field `field` of the user `u` (in SQL); chat's preferences come from
/// the chat profile.
fn value_sql(ext: &str, field: &str) -> String {
    if field == "notification_prefs" {
        format!(
            "(SELECT p.service_preferences FROM {ext}.user_service_profiles p \
              WHERE p.user_id OPERATOR(pg_catalog.=) u.id AND p.service_type OPERATOR(pg_catalog.=) 'chat')"
        )
    } else {
        format!("u.{field}")
    }
}

/// Run `write` for table `s` and user (or kept row) `id` as the cutover's own write, in a
/// subtransaction; a failure goes to the backlog as `kind`, with a WARNING. Nothing here fails
/// the user's write: not even recording the failure (then the WARNING says so).
fn isolated(ext: &str, s: &TableState, id: Uuid, kind: &str, write: impl FnOnce()) {
    let _own = OwnWrites::begin(&s.legacy_table);
    let Err(e) = crate::subtxn::run(write) else {
        return;
    };
    if let Err(also) = crate::subtxn::run(|| set_aside(ext, s, id, kind, &e)) {
        warning!(
            "nura_users cutover: {} could not take a change of {id} ({kind}: {}), nor record it: {}",
            s.legacy_table,
            e.message,
            also.message
        );
    }
}

/// A reverse-sync write that failed, into `nura_cutover_mirror_backlog`.
fn set_aside(ext: &str, s: &TableState, id: Uuid, kind: &str, e: &Error) {
    plans::execute(
        &format!(
            "INSERT INTO {ext}.nura_cutover_mirror_backlog (legacy_table, user_id, kind, sqlstate, message) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (legacy_table, user_id, kind) DO UPDATE SET sqlstate = EXCLUDED.sqlstate, \
                 message = EXCLUDED.message, created_at = EXCLUDED.created_at"
        ),
        &[
            s.legacy_table.as_str().into(),
            id.into(),
            kind.into(),
            e.code().as_str().into(),
            e.message.as_str().into(),
        ],
    )
    .or_raise("reverse sync");
    warning!(
        "nura_users cutover: {} could not take a change of {id} ({kind}): {}; it waits in nura_cutover_mirror_backlog",
        s.legacy_table,
        e.message
    );
}

/// The fields `fields` of `user` into the rows of its legacy ids of `s`.
fn write_fields(ext: &str, s: &TableState, user: Uuid, fields: &[String]) {
    let Some((kept, columns)) = kept_relation(s) else {
        return;
    };
    let sets: Vec<String> = columns
        .into_iter()
        .filter(|(f, _)| fields.iter().any(|g| g == f))
        .map(|(f, c)| format!("{} = {}", spi::quote_identifier(c), value_sql(ext, f)))
        .collect();
    if sets.is_empty() {
        return;
    }
    let id = spi::quote_identifier(s.table().id_column());
    plans::execute(
        &format!(
            "UPDATE {kept} k SET {sets} FROM {ext}.users u \
             WHERE u.id OPERATOR(pg_catalog.=) $1 AND k.{id} OPERATOR(pg_catalog.=) ANY ( \
                 SELECT a.alias_id FROM {ext}.user_id_aliases a \
                 WHERE a.user_id OPERATOR(pg_catalog.=) $1 AND a.source OPERATOR(pg_catalog.=) $2)",
            sets = sets.join(", "),
        ),
        &[user.into(), s.legacy_table.as_str().into()],
    )
    .or_raise("reverse sync");
}

/// Rows with their own ids (and aliases to themselves) for those of `users` who use the service
/// of `s` and have no legacy id of it: a profile of the service (chat, voice), a streak or xp
/// (custom). Soft-deleted users are left out. The number made.
pub(super) fn ensure_rows(ext: &str, s: &TableState, users: &[Uuid]) -> i64 {
    let Some((kept, columns)) = kept_relation(s) else {
        return 0;
    };
    let id = spi::quote_identifier(s.table().id_column());
    let names: Vec<String> = columns
        .iter()
        .map(|(_, c)| spi::quote_identifier(c))
        .collect();
    let values: Vec<String> = columns.iter().map(|(f, _)| value_sql(ext, f)).collect();
    let uses = match s.table() {
        Table::Custom => "(u.current_streak OPERATOR(pg_catalog.<>) 0 OR u.xp OPERATOR(pg_catalog.<>) 0)"
            .to_string(),
        t => format!(
            "EXISTS (SELECT FROM {ext}.user_service_profiles p WHERE p.user_id OPERATOR(pg_catalog.=) u.id \
                 AND p.service_type OPERATOR(pg_catalog.=) '{}')",
            t.service()
        ),
    };
    let _own = OwnWrites::begin(&s.legacy_table);
    plans::execute_count(
        &format!(
            "WITH k AS (INSERT INTO {kept} ({id}{comma}{names}) \
                 SELECT u.id{comma}{values} FROM {ext}.users u \
                 WHERE u.id OPERATOR(pg_catalog.=) ANY ($1) AND u.deleted_at IS NULL AND {uses} \
                   AND NOT EXISTS (SELECT FROM {ext}.user_id_aliases a \
                       WHERE a.user_id OPERATOR(pg_catalog.=) u.id AND a.source OPERATOR(pg_catalog.=) $2) \
                 ORDER BY u.id \
                 ON CONFLICT ({id}) DO NOTHING RETURNING {id}) \
             INSERT INTO {ext}.user_id_aliases (alias_id, source, user_id, run_id) \
             SELECT k.{id}, $2, k.{id}, $3 FROM k ON CONFLICT DO NOTHING",
            comma = if names.is_empty() { "" } else { ", " },
            names = names.join(", "),
            values = values.join(", "),
        ),
        &[
            users.to_vec().into(),
            s.legacy_table.as_str().into(),
            s.capture_run_id.into(),
        ],
    )
    .or_raise("reverse sync") as i64
}

/// After an UPDATE of `users` (at the commit): the changed `fields` of `user_id` into every
/// mirrored table; for custom_users, a row for a user whose streak or xp left 0.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_cutover_mirror_user(user_id: Uuid, fields: Vec<Option<String>>) {
    let ext = extension_schema();
    let fields: Vec<String> = fields.into_iter().flatten().collect();
    for s in mirrored(&ext) {
        isolated(&ext, &s, user_id, "change", || {
            write_fields(&ext, &s, user_id, &fields);
            if s.table() == Table::Custom {
                ensure_rows(&ext, &s, &[user_id]);
            }
        });
    }
}

/// After a profile is made (`made`) or its preferences change (at the commit): the user of a
/// mirrored table of that service gets its row, or (chat) its rows take the preferences. A
/// profile just made has the preferences its user's rows gave it (a placement makes it from
/// them), so only a change writes them.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_cutover_mirror_profile(user_id: Uuid, service_type: &str, made: bool) {
    let ext = extension_schema();
    for s in mirrored(&ext) {
        if s.table().service() != service_type || s.table() == Table::Custom {
            continue;
        }
        if s.table() == Table::Chat && !made {
            isolated(&ext, &s, user_id, "change", || {
                write_fields(&ext, &s, user_id, &["notification_prefs".to_string()]);
            });
        }
        isolated(&ext, &s, user_id, "not_shown", || {
            ensure_rows(&ext, &s, &[user_id]);
        });
    }
}

/// Before a user is deleted: the rows of its legacy ids of every mirrored table go with it. One
/// a legacy table will not let go (another legacy table's key to it) waits in the backlog under
/// its own id.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_cutover_mirror_delete(user_id: Uuid) {
    let ext = extension_schema();
    for s in mirrored(&ext) {
        let ids = plans::read_scalar::<Vec<Uuid>>(
            &format!(
                "SELECT COALESCE(pg_catalog.array_agg(a.alias_id), '{{}}') FROM {ext}.user_id_aliases a \
                 WHERE a.user_id OPERATOR(pg_catalog.=) $1 AND a.source OPERATOR(pg_catalog.=) $2"
            ),
            &[user_id.into(), s.legacy_table.as_str().into()],
        )
        .or_raise("reverse sync")
        .unwrap_or_default();
        for id in ids {
            isolated(&ext, &s, id, "delete", || delete_row(&s, id));
        }
    }
}

/// The kept row of legacy id `id` of `s` deleted.
fn delete_row(s: &TableState, id: Uuid) {
    let Some((kept, _)) = kept_relation(s) else {
        return;
    };
    plans::execute(
        &format!(
            "DELETE FROM {kept} k WHERE k.{col} OPERATOR(pg_catalog.=) $1",
            col = spi::quote_identifier(s.table().id_column()),
        ),
        &[id.into()],
    )
    .or_raise("reverse sync");
}

/// The CALLs' retry of `s`'s backlog: each entry tried again on its own; those that pass leave
/// it. The entries that still fail, as (kind, id, message).
pub(super) fn retry(ext: &str, s: &TableState) -> Vec<(String, Uuid, String)> {
    let entries = plans::rows(
        &format!(
            "SELECT kind, user_id FROM {ext}.nura_cutover_mirror_backlog \
             WHERE legacy_table OPERATOR(pg_catalog.=) $1 ORDER BY kind, user_id"
        ),
        &[s.legacy_table.as_str().into()],
        |r| Ok((r.get::<String>(1)?, r.get::<Uuid>(2)?)),
    )
    .or_raise("reverse sync");
    let mut failed = Vec::new();
    for (kind, id) in entries {
        let (Some(kind), Some(id)) = (kind, id) else {
            continue;
        };
        let _own = OwnWrites::begin(&s.legacy_table);
        let all: Vec<String> = s
            .table()
            .user_columns()
            .into_iter()
            .chain([("notification_prefs", "notification_prefs")])
            .map(|(f, _)| f.to_string())
            .collect();
        let outcome = crate::subtxn::run(|| match kind.as_str() {
            "change" => write_fields(ext, s, id, &all),
            "delete" => delete_row(s, id),
            _ => {
                ensure_rows(ext, s, &[id]);
            }
        });
        match outcome {
            Ok(()) => {
                plans::execute(
                    &format!(
                        "DELETE FROM {ext}.nura_cutover_mirror_backlog \
                         WHERE legacy_table OPERATOR(pg_catalog.=) $1 AND user_id OPERATOR(pg_catalog.=) $2 \
                           AND kind OPERATOR(pg_catalog.=) $3"
                    ),
                    &[s.legacy_table.as_str().into(), id.into(), kind.as_str().into()],
                )
                .or_raise("reverse sync");
            }
            Err(e) => failed.push((kind, id, e.message)),
        }
    }
    failed
}

/// One batch of the fill: users of the service after the cursor without a row of `s`; their
/// rows made (a batch at once, and one by one when that fails, so that a user the table refuses
/// goes to the backlog as `not_shown` and holds up nobody). The new cursor, `None` when done.
pub(super) fn fill(ext: &str, s: &TableState, batch_size: i32) -> (Option<Uuid>, i64) {
    let after = s
        .fill_after
        .as_deref()
        .and_then(crate::uuid_input::parse)
        .unwrap_or(Uuid::from_bytes([0; 16]));
    let batch = plans::read_scalar::<Vec<Uuid>>(
        &format!(
            "SELECT COALESCE(pg_catalog.array_agg(b.id ORDER BY b.id), '{{}}') FROM ( \
                 SELECT u.id FROM {ext}.users u WHERE u.id OPERATOR(pg_catalog.>) $1 \
                 ORDER BY u.id LIMIT $2) b"
        ),
        &[after.into(), batch_size.into()],
    )
    .or_raise("cutover fill")
    .unwrap_or_default();
    let Some(last) = batch.last().copied() else {
        return (None, 0);
    };
    let whole = crate::subtxn::run(|| ensure_rows(ext, s, &batch));
    let made = match whole {
        Ok(n) => n,
        Err(_) => {
            let mut made = 0;
            for user in &batch {
                match crate::subtxn::run(|| ensure_rows(ext, s, std::slice::from_ref(user))) {
                    Ok(n) => made += n,
                    Err(e) => set_aside(ext, s, *user, "not_shown", &e),
                }
            }
            made
        }
    };
    (Some(last), made)
}

/// The reverse-sync triggers that exist, with whether each is enabled.
pub(super) fn triggers(ext: &str) -> Vec<(String, bool)> {
    plans::rows(
        &format!(
            "SELECT t.tgname::text, t.tgenabled OPERATOR(pg_catalog.<>) 'D' FROM pg_catalog.pg_trigger t \
             WHERE t.tgrelid OPERATOR(pg_catalog.=) ANY (ARRAY['{ext}.users'::pg_catalog.regclass, \
                       '{ext}.user_service_profiles'::pg_catalog.regclass]) \
               AND t.tgname OPERATOR(pg_catalog.=) ANY ($1)"
        ),
        &[TRIGGERS.map(|(_, t, _)| t).to_vec().into()],
        |r| Ok((r.get::<String>(1)?, r.get::<bool>(2)?)),
    )
    .or_raise("reverse sync")
    .into_iter()
    .filter_map(|(name, on)| Some((name?, on.unwrap_or(false))))
    .collect()
}

/// Whether every reverse-sync trigger exists and is enabled.
pub(super) fn triggers_enabled(ext: &str) -> bool {
    let present = triggers(ext);
    TRIGGERS
        .iter()
        .all(|(_, t, _)| present.iter().any(|(name, on)| name == t && *on))
}

/// The locks the statements of [`trigger_sql`] take, when there are any: SHARE ROW EXCLUSIVE
/// on `users` and `user_service_profiles` (writers of users wait for it, and are waited for, so
/// that no write after the commit escapes the triggers).
pub(super) fn trigger_locks(ext: &str) -> Vec<(String, &'static str)> {
    vec![
        (format!("{ext}.users"), "SHARE ROW EXCLUSIVE"),
        (
            format!("{ext}.user_service_profiles"),
            "SHARE ROW EXCLUSIVE",
        ),
    ]
}

/// The statements that make the reverse-sync triggers exist and fire (`enable`), or stop them
/// firing (a CREATE TRIGGER or an ENABLE / DISABLE each: SHARE ROW EXCLUSIVE on the table).
pub(super) fn trigger_sql(ext: &str, enable: bool) -> Vec<String> {
    let present = triggers(ext);
    TRIGGERS
        .iter()
        .flat_map(|(table, trigger, event)| {
            match (present.iter().find(|(n, _)| n == trigger), enable) {
                // ENABLE ALWAYS: changes a logical-replication apply (or a session in replica
                // mode) makes reach the kept rows too, as the capture triggers place theirs.
                (None, true) => {
                    let constraint = if event.contains("DEFERRABLE") { "CONSTRAINT " } else { "" };
                    vec![
                        format!(
                            "CREATE {constraint}TRIGGER {trigger} {} EXECUTE FUNCTION {ext}.nura_cutover_mirror()",
                            event.replace("{ext}", ext)
                        ),
                        format!("ALTER TABLE {ext}.{table} ENABLE ALWAYS TRIGGER {trigger}"),
                    ]
                }
                (Some((_, false)), true) => vec![format!("ALTER TABLE {ext}.{table} ENABLE ALWAYS TRIGGER {trigger}")],
                (Some((_, true)), false) => vec![format!("ALTER TABLE {ext}.{table} DISABLE TRIGGER {trigger}")],
                _ => Vec::new(),
            }
        })
        .collect()
}

/// Mirror (one transaction): the reverse-sync triggers enabled (they are when another table is
/// mirrored already, unless a restore left them disabled), and the table's fact.
pub(super) fn mirror_step(ext: &str, s: &TableState, attempt: i32) -> Result<(), Stop> {
    let mut statements = Vec::new();
    let mut waited = 0;
    if !triggers_enabled(ext) {
        // CREATE TRIGGER and ENABLE TRIGGER take SHARE ROW EXCLUSIVE: writers of users wait for
        // it, and are waited for, so that no write after the commit escapes the triggers.
        waited = locks::lock(
            &[
                format!("{ext}.users"),
                format!("{ext}.user_service_profiles"),
            ],
            "SHARE ROW EXCLUSIVE",
        )
        .map_err(Stop::Waiting)?;
        statements = trigger_sql(ext, true);
        for sql in &statements {
            plans::execute_once(sql, &[]).or_raise("cutover mirror");
        }
    }
    let mut next = s.clone();
    next.mirrored = true;
    state::save(ext, &next);
    state::log_step(
        ext,
        Step {
            table: &s.legacy_table,
            action: "mirror",
            object: Some(s.kept_name()),
            detail: json!({"statements": statements}),
            attempts: attempt,
            lock_wait_ms: waited,
        },
    );
    Ok(())
}

/// Fill (a batch per step): see [`fill`].
pub(super) fn fill_step(ext: &str, s: &TableState, batch_size: i32) -> Result<(), Stop> {
    let (cursor, made) = fill(ext, s, batch_size);
    let mut next = s.clone();
    next.fill_after = cursor.map(|c| c.to_string());
    next.fill_done = cursor.is_none();
    state::save(ext, &next);
    state::log_step(
        ext,
        Step {
            table: &s.legacy_table,
            action: "fill",
            object: Some(s.kept_name()),
            detail: json!({"rows": made, "after": next.fill_after, "done": next.fill_done}),
            attempts: 1,
            lock_wait_ms: 0,
        },
    );
    Ok(())
}

/// How many backlog entries of `s` a switch back waits for: changes and deletes a kept row
/// could not take (users it could not show are not shown by the table either).
pub(super) fn pending_changes(ext: &str, s: &TableState) -> i64 {
    plans::scalar::<i64>(
        &format!(
            "SELECT pg_catalog.count(*) FROM {ext}.nura_cutover_mirror_backlog \
             WHERE legacy_table OPERATOR(pg_catalog.=) $1 AND kind OPERATOR(pg_catalog.<>) 'not_shown'"
        ),
        &[s.legacy_table.as_str().into()],
    )
    .or_raise("reverse sync")
    .unwrap_or(0)
}

/// The rollback's retry of the backlog: when changes still cannot be taken, the switch back
/// stops (55000) naming the first, so that it loses none.
pub(super) fn retry_step(ext: &str, s: &TableState) -> Result<(), Stop> {
    let failed = retry(ext, s);
    state::log_step(
        ext,
        Step {
            table: &s.legacy_table,
            action: "mirror_backlog",
            object: None,
            detail: json!({"failed": failed.len()}),
            attempts: 1,
            lock_wait_ms: 0,
        },
    );
    let Some((kind, id, message)) = failed.iter().find(|(k, _, _)| k != "not_shown") else {
        state::save(ext, s);
        return Ok(());
    };
    Err(Stop::Refused(
        Error::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "{} cannot take {} change(s) of users made during the cutover; {id} ({kind}): {message}",
                s.legacy_table,
                failed.iter().filter(|(k, _, _)| k != "not_shown").count()
            ),
        )
        .hint("nura_cutover_mirror_backlog lists them; fix the user or the legacy table's constraint, then CALL nura_cutover_rollback() again."),
    ))
}

/// Unmirror (one transaction): the table's fact, its users the table could not show dropped
/// from the backlog, and the triggers disabled when no other table is mirrored.
pub(super) fn unmirror_step(ext: &str, s: &TableState, attempt: i32) -> Result<(), Stop> {
    let others = mirrored(ext)
        .iter()
        .any(|o| o.legacy_table != s.legacy_table);
    let mut statements = Vec::new();
    let mut waited = 0;
    if !others && triggers(ext).iter().any(|(_, on)| *on) {
        // Disabled, not dropped: DROP TRIGGER would take ACCESS EXCLUSIVE on users.
        waited = locks::lock(
            &[
                format!("{ext}.users"),
                format!("{ext}.user_service_profiles"),
            ],
            "SHARE ROW EXCLUSIVE",
        )
        .map_err(Stop::Waiting)?;
        statements = trigger_sql(ext, false);
        for sql in &statements {
            plans::execute_once(sql, &[]).or_raise("cutover unmirror");
        }
    }
    plans::execute(
        &format!(
            "DELETE FROM {ext}.nura_cutover_mirror_backlog WHERE legacy_table OPERATOR(pg_catalog.=) $1"
        ),
        &[s.legacy_table.as_str().into()],
    )
    .or_raise("cutover unmirror");
    let mut next = s.clone();
    next.mirrored = false;
    next.fill_after = None;
    next.fill_done = false;
    state::save(ext, &next);
    state::log_step(
        ext,
        Step {
            table: &s.legacy_table,
            action: "unmirror",
            object: Some(s.kept_name()),
            detail: json!({"statements": statements}),
            attempts: attempt,
            lock_wait_ms: waited,
        },
    );
    Ok(())
}
