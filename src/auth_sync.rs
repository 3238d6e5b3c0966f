//! The row triggers on `auth.users` (`docs/sync.md`) and the functions that attach and detach them
//! (`docs/install.md`).
//!
//! The triggers are ordinary objects on `auth.users`, not extension members: `pg_dump` recreates
//! them after the table, and `DROP EXTENSION` refuses to run while they are attached (detach
//! first, or use CASCADE, which drops these triggers, and columns of your own tables typed with
//! the extension's domains). The trigger function is SECURITY
//! DEFINER with a pinned `search_path` (see `sql/finalize.sql`), because it fires as GoTrue's
//! `supabase_auth_admin`, which has no rights on the extension's schema and `search_path = auth`.

use crate::errors::raise;
use crate::errors::OrRaise;
use crate::log::{LogEntry, Source};
use crate::schema::{extension_schema, schema_of_function};
use crate::settings::{self, OnSyncError};
use crate::subtxn;
use crate::sync::{self, AuthUser, Core, SyncRequest};
use pgrx::prelude::*;
use pgrx::Uuid;
use std::ffi::CStr;
use std::time::Instant;

/// The columns of `auth.users` that the sync reads. An UPDATE that sets none of them does not
/// even call the trigger function (the trigger's column list); one that sets them to the values
/// they had returns at once ([`auth_change`]).
const SYNCED_COLUMNS: &[&CStr] = &[
    c"email",
    c"phone",
    c"email_confirmed_at",
    c"phone_confirmed_at",
    c"last_sign_in_at",
    c"banned_until",
    c"is_anonymous",
    c"is_sso_user",
    c"deleted_at",
    c"raw_user_meta_data",
];

/// Triggers earlier versions attached and this one no longer does: detach removes them, attach
/// replaces them. 0.1.0 and 0.2.0 had a second UPDATE trigger for sign-ins, and both UPDATE
/// triggers carried WHEN clauses, which PostgreSQL parses again from the catalog for every
/// statement on auth.users; the function compares the columns itself.
const RETIRED_TRIGGERS: &[&str] = &["nura_users_sync_sign_in"];

/// The columns whose UPDATE calls the trigger: `id` (a user moved to a new id) and
/// [`SYNCED_COLUMNS`].
fn update_columns() -> Vec<&'static str> {
    std::iter::once(c"id")
        .chain(SYNCED_COLUMNS.iter().copied())
        .map(|c| c.to_str().expect("ASCII column name"))
        .collect()
}

/// Our triggers on auth.users: name and the part of their CREATE TRIGGER before EXECUTE. None
/// has a WHEN clause (see [`RETIRED_TRIGGERS`]); attach replaces one of ours that has, or whose
/// column list is not [`update_columns`] (0.5.0's lacked `id`).
fn trigger_definitions() -> [(&'static str, String); 3] {
    let columns = update_columns().join(", ");
    [
        (
            "nura_users_sync_insert",
            "AFTER INSERT ON auth.users FOR EACH ROW".to_string(),
        ),
        (
            "nura_users_sync_update",
            format!("AFTER UPDATE OF {columns} ON auth.users FOR EACH ROW"),
        ),
        (
            "nura_users_sync_delete",
            "AFTER DELETE ON auth.users FOR EACH ROW".to_string(),
        ),
    ]
}

/// What an UPDATE of auth.users changed among the synced columns.
#[derive(Debug, PartialEq, Eq)]
enum AuthChange {
    Nothing,
    /// Only `last_sign_in_at`: a sign-in, the most frequent auth write. The user's id and the
    /// new `last_sign_in_at`, read from the new row version.
    SignIn {
        id: Uuid,
        at: Option<pg_sys::TimestampTz>,
    },
    Other,
}

/// Attribute numbers in auth.users of `id` and of [`SYNCED_COLUMNS`] (0: the table lacks the
/// column), looked up by name once per backend rather than on every UPDATE.
#[derive(Clone, Copy)]
struct AuthColumns {
    id: i16,
    synced: [i16; SYNCED_COLUMNS.len()],
}

thread_local! {
    static AUTH_COLUMNS: std::cell::Cell<Option<AuthColumns>> = const { std::cell::Cell::new(None) };
}

impl AuthColumns {
    /// # Safety
    /// `desc` must be a valid tuple descriptor.
    unsafe fn find(desc: pg_sys::TupleDesc) -> AuthColumns {
        let mut synced = [0; SYNCED_COLUMNS.len()];
        for (attno, column) in synced.iter_mut().zip(SYNCED_COLUMNS) {
            *attno = pg_sys::SPI_fnumber(desc, column.as_ptr()).max(0) as i16;
        }
        AuthColumns {
            id: pg_sys::SPI_fnumber(desc, c"id".as_ptr()).max(0) as i16,
            synced,
        }
    }

    /// Whether these numbers still name the columns in `desc`: a column renamed, or dropped and
    /// added again, moves them. A table that lacks a column is looked up every time.
    ///
    /// # Safety
    /// `desc` must be a valid tuple descriptor.
    unsafe fn fit(&self, desc: pg_sys::TupleDesc) -> bool {
        // PgTupleDesc reads the attributes as each PostgreSQL version lays them out (18 moved
        // them behind the compact ones).
        let atts = pgrx::PgTupleDesc::from_pg_unchecked(desc);
        let names = |attno: i16, name: &CStr| {
            attno > 0
                && atts.get(attno as usize - 1).is_some_and(|a| {
                    !a.attisdropped && CStr::from_ptr(a.attname.data.as_ptr()) == name
                })
        };
        names(self.id, c"id")
            && self
                .synced
                .iter()
                .zip(SYNCED_COLUMNS)
                .all(|(attno, name)| names(*attno, name))
    }

    /// # Safety
    /// `desc` must be a valid tuple descriptor.
    unsafe fn of(desc: pg_sys::TupleDesc) -> AuthColumns {
        if let Some(known) = AUTH_COLUMNS.get().filter(|c| c.fit(desc)) {
            return known;
        }
        let found = AuthColumns::find(desc);
        AUTH_COLUMNS.set(Some(found));
        found
    }
}

/// The value of a trigger row's column by its number (0: the table lacks the column, `None`).
fn column<T>(
    row: &PgHeapTuple<'_, AllocatedByPostgres>,
    attno: i16,
) -> Result<Option<T>, pgrx::datum::TryFromDatumError>
where
    T: FromDatum + IntoDatum + for<'t> pgrx::datum::UnboxDatum<As<'t> = T>,
{
    match std::num::NonZeroUsize::new(attno.max(0) as usize) {
        Some(attno) => row.get_by_index(attno),
        None => Ok(None),
    }
}

/// The synced columns of a trigger's row, [`SYNCED_COLUMNS`] in [`AuthUser`]'s field order. A
/// column the table lacks (an older Auth schema) reads as NULL.
fn auth_user(
    row: &PgHeapTuple<'_, AllocatedByPostgres>,
    columns: &AuthColumns,
) -> Result<AuthUser, pgrx::datum::TryFromDatumError> {
    let [email, phone, email_confirmed_at, phone_confirmed_at, last_sign_in_at, banned_until, is_anonymous, is_sso_user, deleted_at, raw_user_meta_data] =
        columns.synced;
    let ts = |attno| {
        column::<TimestampWithTimeZone>(row, attno).map(|v| v.map(pg_sys::TimestampTz::from))
    };
    Ok(AuthUser {
        email: column(row, email)?,
        phone: column(row, phone)?,
        email_confirmed_at: ts(email_confirmed_at)?,
        phone_confirmed_at: ts(phone_confirmed_at)?,
        last_sign_in_at: ts(last_sign_in_at)?,
        banned_until: ts(banned_until)?,
        is_anonymous: column(row, is_anonymous)?.unwrap_or(false),
        is_sso_user: column(row, is_sso_user)?.unwrap_or(false),
        deleted_at: ts(deleted_at)?,
        metadata: column::<sync::Metadata>(row, raw_user_meta_data)?
            .map(|m| m.0)
            .unwrap_or_default(),
        phone_removed: false,
    })
}

/// The auth row of an UPDATE as the sync takes it: NEW's values, with a phone the update removed
/// (one OLD had and NEW has not, as `users` would store it) marked, so that the users row loses
/// it too rather than keeping its own (see `sync::apply_auth`).
fn updated_auth_user(
    old: &PgHeapTuple<'_, AllocatedByPostgres>,
    new: &PgHeapTuple<'_, AllocatedByPostgres>,
    columns: &AuthColumns,
) -> Result<AuthUser, pgrx::datum::TryFromDatumError> {
    let mut auth = auth_user(new, columns)?;
    let stored = |phone: Option<&str>| phone.and_then(sync::normalize_phone).is_some();
    let had = column::<String>(old, columns.synced[1])?;
    auth.phone_removed = stored(had.as_deref()) && !stored(auth.phone.as_deref());
    Ok(auth)
}

/// Compare OLD and NEW of an UPDATE trigger call over [`SYNCED_COLUMNS`], by stored value (what
/// `IS DISTINCT FROM` sees for these types; two equal jsonb values written differently count as
/// a change, and the full sync then finds nothing to do). A synced column the table lacks counts
/// as unchanged. Each row version is deformed once.
fn auth_change(trigger: &PgTrigger<'_>, columns: &AuthColumns) -> AuthChange {
    let data = trigger.trigger_data();
    let (old, new) = (data.tg_trigtuple, data.tg_newtuple);
    if old.is_null() || new.is_null() {
        return AuthChange::Other;
    }
    // SAFETY: the trigger manager hands us a valid relation and both row versions, which live
    // until the function returns; attribute numbers come from that relation's descriptor, and
    // the value arrays have one slot per attribute, as heap_deform_tuple fills them.
    unsafe {
        let desc = (*data.tg_relation).rd_att;
        let natts = (*desc).natts as usize;
        let tupdesc = pgrx::PgTupleDesc::from_pg_unchecked(desc);
        // Attribute numbers come from this descriptor (`AuthColumns::fit`).
        let att = |i: usize| tupdesc.get(i).expect("a column of this descriptor");
        let deform = |tuple: pg_sys::HeapTuple| {
            let mut values = vec![pg_sys::Datum::from(0); natts];
            let mut nulls = vec![true; natts];
            pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
            (values, nulls)
        };
        let (old_values, old_nulls) = deform(old);
        let (new_values, new_nulls) = deform(new);
        let id_i = columns.id as usize;
        if id_i > 0
            && (old_nulls[id_i - 1] != new_nulls[id_i - 1]
                || !same_datum(
                    old_values[id_i - 1],
                    new_values[id_i - 1],
                    att(id_i - 1).attbyval,
                    att(id_i - 1).attlen,
                ))
        {
            return AuthChange::Other;
        }
        let mut signed_in = None;
        for (attno, column) in columns.synced.iter().zip(SYNCED_COLUMNS) {
            if *attno == 0 {
                continue;
            }
            let i = *attno as usize - 1;
            let same = match (old_nulls[i], new_nulls[i]) {
                (true, true) => true,
                (false, false) => {
                    same_datum(old_values[i], new_values[i], att(i).attbyval, att(i).attlen)
                }
                _ => false,
            };
            if !same {
                if *column == c"last_sign_in_at" {
                    signed_in = Some(i);
                } else {
                    return AuthChange::Other;
                }
            }
        }
        let Some(at_i) = signed_in else {
            return AuthChange::Nothing;
        };
        // A sign-in: the id (a uuid, 16 bytes by reference) and the new time (by value).
        let id_at = columns.id as usize;
        if id_at == 0 || new_nulls[id_at - 1] || att(id_at - 1).atttypid != pg_sys::UUIDOID {
            return AuthChange::Other;
        }
        let id_bytes = std::slice::from_raw_parts(new_values[id_at - 1].cast_mut_ptr::<u8>(), 16);
        let Ok(id) = Uuid::from_slice(id_bytes) else {
            return AuthChange::Other;
        };
        if att(at_i).atttypid != pg_sys::TIMESTAMPTZOID {
            return AuthChange::Other;
        }
        let at = (!new_nulls[at_i]).then(|| new_values[at_i].value() as pg_sys::TimestampTz);
        AuthChange::SignIn { id, at }
    }
}

/// Two non-null values of one column, compared byte for byte (varlenas after detoasting).
///
/// # Safety
/// `a` and `b` must be valid values of a column with this `byval` and `len`.
unsafe fn same_datum(a: pg_sys::Datum, b: pg_sys::Datum, byval: bool, len: i16) -> bool {
    if byval || a == b {
        return a == b;
    }
    // A value the UPDATE did not set is stored as it was: the same bytes, or the same TOAST
    // pointer, in both row versions. Only values that differ as stored are detoasted.
    if len == -1 {
        let (ra, rb) = (
            a.cast_mut_ptr::<pg_sys::varlena>(),
            b.cast_mut_ptr::<pg_sys::varlena>(),
        );
        let stored = |v: *mut pg_sys::varlena| {
            std::slice::from_raw_parts(v as *const u8, pgrx::varlena::varsize_any(v))
        };
        if stored(ra) == stored(rb) {
            return true;
        }
    }
    unsafe fn bytes<'a>(d: pg_sys::Datum, len: i16) -> &'a [u8] {
        if len == -1 {
            let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
            std::slice::from_raw_parts(
                pgrx::varlena::vardata_any(v) as *const u8,
                pgrx::varlena::varsize_any_exhdr(v),
            )
        } else if len == -2 {
            std::ffi::CStr::from_ptr(d.cast_mut_ptr()).to_bytes()
        } else {
            std::slice::from_raw_parts(d.cast_mut_ptr::<u8>(), len as usize)
        }
    }
    bytes(a, len) == bytes(b, len)
}

/// Keeps `users` in step with `auth.users`, inside the transaction of the auth write.
///
/// The sync runs in a subtransaction. When it fails, only the sync is rolled back, a log row
/// with the SQLSTATE and message records it, and the auth write goes on (`docs/sync.md`) — unless
/// `nura_users.on_sync_error = raise`, which fails the auth write with the same SQLSTATE.
#[pg_trigger]
fn nura_auth_user_sync<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let op = trigger.op()?;
    // SAFETY: the trigger's relation, valid for the call.
    let columns = unsafe { AuthColumns::of((*trigger.trigger_data().tg_relation).rd_att) };
    let change = match op {
        PgTriggerOperation::Update => auth_change(trigger, &columns),
        _ => AuthChange::Other,
    };
    if change == AuthChange::Nothing {
        return Ok(None);
    }
    // The trigger function lives in the extension's schema: no catalog query needed to find it.
    let core = Core::new(schema_of_function(trigger.trigger().tgfoid));
    // A sign-in, when nothing asks for its log row or notification: one UPDATE.
    if let AuthChange::SignIn { id, at } = change {
        if !settings::LOG_SIGN_INS.get() && !settings::NOTIFY.get() {
            match subtxn::run(|| core.record_sign_in(id, at)) {
                Ok(true) => return Ok(None),
                Ok(false) => {} // no users row yet: the full sync below creates it
                Err(failure) => {
                    report_failure(&core, id, &failure, started);
                    return Ok(None);
                }
            }
        }
    }
    let row = match op {
        PgTriggerOperation::Insert | PgTriggerOperation::Update => trigger.new(),
        PgTriggerOperation::Delete => trigger.old(),
        PgTriggerOperation::Truncate => None,
    };
    let Some(row) = row else { return Ok(None) };
    let Some(id) = column(&row, columns.id)? else {
        return Ok(None);
    };
    // An UPDATE of auth.users.id: the user moves to the new id first (`docs/sync.md`), then the
    // sync below applies whatever else changed.
    let old = match op {
        PgTriggerOperation::Update => trigger.old(),
        _ => None,
    };
    let old_id: Option<Uuid> = match &old {
        Some(old) => column(old, columns.id)?,
        None => None,
    };
    // The row's values are read inside the subtransaction: one the sync cannot take fails the
    // sync, not the auth write.
    let result = match op {
        PgTriggerOperation::Delete => subtxn::run(|| {
            sync::remove_user(&core, id, Source::SupabaseAuth, started);
        }),
        _ => {
            let signup = matches!(op, PgTriggerOperation::Insert);
            sync::run_in_subtxn(signup, |plain_insert| {
                if let Some(from) = old_id.filter(|from| *from != id) {
                    sync::move_user(&core, from, id, Source::SupabaseAuth, started);
                }
                let mut req = SyncRequest::new(Source::SupabaseAuth, id);
                req.signup = signup;
                req.plain_insert = plain_insert;
                let auth = match &old {
                    Some(old) => updated_auth_user(old, &row, &columns),
                    None => auth_user(&row, &columns),
                };
                req.auth = Some(auth.or_raise("reading the auth.users row"));
                if let Err(refusal) = sync::sync_user(&core, &req, started, false) {
                    refusal.raise(id);
                }
            })
        }
    };
    if let Err(failure) = result {
        report_failure(&core, id, &failure, started);
    }
    Ok(None)
}

/// A failed sync: fail the auth write (`raise`), or log it and let the auth write commit.
fn report_failure(core: &Core, id: Uuid, failure: &crate::errors::Error, started: Instant) {
    if settings::ON_SYNC_ERROR.get() == OnSyncError::Raise {
        raise(
            failure.sqlstate,
            format!(
                "nura_users: sync of auth user {id} failed: {}",
                failure.message
            ),
            Some("nura_users.on_sync_error = raise; set it to log to let auth writes commit"),
        );
    }
    let entry = LogEntry::failed(
        Some(id),
        Source::SupabaseAuth,
        failure.code(),
        failure.message.clone(),
        started,
    );
    // Even writing the failure may fail (the log table itself broken): the auth write still wins.
    if let Err(second) = subtxn::run(|| core.log(&entry)) {
        warning!(
            "nura_users: sync of auth user {id} failed ({}: {}) and could not be logged: {}",
            failure.code(),
            failure.message,
            second.message
        );
    }
}

/// auth.users, locked, and the oid of our trigger function.
struct AuthUsersTable {
    sync_fn: pg_sys::Oid,
    lock: Lock,
}

/// How attach and detach lock auth.users before they look at its triggers.
#[derive(Clone, Copy, PartialEq)]
enum Lock {
    /// What CREATE TRIGGER takes: writes wait, reads go on.
    Create,
    /// What DROP TRIGGER takes. Taken at once rather than raised from `Create` later: a GoTrue
    /// transaction that read auth.users and then writes it would otherwise deadlock with us.
    Drop,
}

/// Find auth.users and take the lock `lock` chooses (from a look at the triggers before the
/// lock; the callers check again under it), so that concurrent attach/detach calls see each
/// other's triggers instead of racing on the names.
fn lock_auth_users(lock: impl FnOnce(pg_sys::Oid) -> Lock) -> Option<AuthUsersTable> {
    let exists = Spi::get_one::<bool>("SELECT pg_catalog.to_regclass('auth.users') IS NOT NULL")
        .or_raise("looking for auth.users")
        .unwrap_or(false);
    if !exists {
        return None;
    }
    let sync_fn = sync_function();
    let lock = lock(sync_fn);
    let mode = match lock {
        Lock::Create => "SHARE ROW EXCLUSIVE",
        Lock::Drop => "ACCESS EXCLUSIVE",
    };
    Spi::run(&format!("LOCK TABLE auth.users IN {mode} MODE")).or_raise("locking auth.users");
    Some(AuthUsersTable { sync_fn, lock })
}

/// Under a `Lock::Create` lock, a trigger to drop that appeared since the look before it would
/// need the lock raised, which can deadlock with auth writes: give up instead, to be retried.
fn require_drop_lock(table: &AuthUsersTable, drops: bool) {
    if drops && table.lock == Lock::Create {
        raise(
            PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            "the sync triggers on auth.users changed while nura_users was locking the table",
            Some("Call the function again."),
        );
    }
}

/// The oid of our trigger function.
fn sync_function() -> pg_sys::Oid {
    let signature = format!("{}.nura_auth_user_sync()", extension_schema());
    Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT $1::pg_catalog.regprocedure::pg_catalog.oid",
        &[signature.into()],
    )
    .or_raise("looking for nura_auth_user_sync()")
    .unwrap_or_else(|| error!("nura_users: trigger function nura_auth_user_sync() not found"))
}

/// Whether attach will drop a trigger of ours: a retired one, or one in an earlier shape.
fn attach_drops(sync_fn: pg_sys::Oid) -> bool {
    RETIRED_TRIGGERS
        .iter()
        .any(|name| our_trigger(name, sync_fn).is_some())
        || trigger_definitions()
            .iter()
            .any(|(name, _)| our_trigger(name, sync_fn).is_some_and(|t| t.outdated(name)))
}

/// The names of the triggers of ours (current and retired) on auth.users.
fn our_trigger_names(sync_fn: pg_sys::Oid) -> Vec<&'static str> {
    let names = trigger_definitions().map(|(name, _)| name);
    names
        .into_iter()
        .chain(RETIRED_TRIGGERS.iter().copied())
        .filter(|name| our_trigger(name, sync_fn).is_some())
        .collect()
}

/// The trigger of that name on auth.users if it calls our function.
fn our_trigger(name: &str, sync_fn: pg_sys::Oid) -> Option<ExistingTrigger> {
    existing_trigger(name).filter(|t| t.function == sync_fn)
}

/// A trigger on auth.users, as attach and detach need to know it.
struct ExistingTrigger {
    function: pg_sys::Oid,
    /// Ours have no WHEN clause since 0.3.0.
    has_when: bool,
    /// The columns of its `UPDATE OF` list, in name order.
    columns: Vec<String>,
    /// The `ALTER TABLE ... TRIGGER` clause that gives it its firing state (`tgenabled`).
    state: &'static str,
}

impl ExistingTrigger {
    /// Whether this trigger of ours, called `name`, is in an earlier version's shape.
    fn outdated(&self, name: &str) -> bool {
        let wanted: Vec<String> = if name == "nura_users_sync_update" {
            let mut columns: Vec<String> = update_columns().iter().map(|c| c.to_string()).collect();
            columns.sort();
            columns
        } else {
            Vec::new()
        };
        self.has_when || self.columns != wanted
    }
}

/// The trigger of that name on auth.users, if there is one.
fn existing_trigger(name: &str) -> Option<ExistingTrigger> {
    let found = Spi::connect(|client| {
        let rows = client.select(
            "SELECT t.tgfoid, t.tgqual IS NOT NULL, t.tgenabled::text, \
                    ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
                          WHERE a.attrelid OPERATOR(pg_catalog.=) t.tgrelid \
                            AND a.attnum OPERATOR(pg_catalog.=) ANY (t.tgattr::pg_catalog.int2[]) \
                          ORDER BY a.attname) \
             FROM pg_catalog.pg_trigger t \
             WHERE t.tgrelid OPERATOR(pg_catalog.=) 'auth.users'::pg_catalog.regclass \
               AND t.tgname OPERATOR(pg_catalog.=) $1",
            Some(1),
            &[name.into()],
        )?;
        let mut out = None;
        for row in rows {
            out = Some((
                row.get::<pg_sys::Oid>(1)?,
                row.get::<bool>(2)?,
                row.get::<String>(3)?,
                row.get::<Vec<String>>(4)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_raise("reading triggers of auth.users");
    let (function, has_when, enabled, columns) = found?;
    Some(ExistingTrigger {
        function: function?,
        has_when: has_when.unwrap_or(false),
        columns,
        state: match enabled.as_deref() {
            Some("D") => "DISABLE",
            Some("R") => "ENABLE REPLICA",
            Some("A") => "ENABLE ALWAYS",
            _ => "ENABLE",
        },
    })
}

fn drop_trigger(name: &str) {
    Spi::run(&format!("DROP TRIGGER {name} ON auth.users"))
        .or_raise(&format!("dropping trigger {name}"));
}

/// Attach the sync triggers to auth.users. Idempotent: returns true when this call created a
/// trigger, false when all were already attached or auth.users does not exist (a NOTICE says so).
/// Triggers of ours in an earlier version's shape are replaced (see [`RETIRED_TRIGGERS`]).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_attach_auth_sync() -> bool {
    let lock = |sync_fn| {
        if attach_drops(sync_fn) {
            Lock::Drop
        } else {
            Lock::Create
        }
    };
    let Some(table) = lock_auth_users(lock) else {
        notice!(
            "nura_users: auth.users does not exist, no sync triggers attached; \
             call nura_attach_auth_sync() once it exists"
        );
        return false;
    };
    require_drop_lock(&table, attach_drops(table.sync_fn));
    let function = format!("{}.nura_auth_user_sync", extension_schema());
    let mut created = false;
    for name in RETIRED_TRIGGERS {
        if let Some(t) = our_trigger(name, table.sync_fn) {
            if t.state != "ENABLE" {
                notice!(
                    "nura_users: trigger {name} was in state {}; the update trigger that replaces \
                     it now handles sign-ins in its own state",
                    t.state
                );
            }
            drop_trigger(name);
        }
    }
    for (name, definition) in trigger_definitions() {
        // A trigger replaced keeps its firing state (disabled, or ENABLE REPLICA/ALWAYS where
        // auth.users arrives by logical replication).
        let mut state = "ENABLE";
        match existing_trigger(name) {
            Some(t) if t.function == table.sync_fn && !t.outdated(name) => continue,
            Some(t) if t.function == table.sync_fn => {
                state = t.state;
                drop_trigger(name);
            }
            Some(_) => raise(
                PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
                format!("trigger \"{name}\" on auth.users exists and is not nura_users'"),
                Some("Drop or rename that trigger, then call nura_attach_auth_sync() again."),
            ),
            None => {}
        }
        Spi::run(&format!(
            "CREATE TRIGGER {name} {definition} EXECUTE FUNCTION {function}()"
        ))
        .or_raise(&format!("creating trigger {name}"));
        if state != "ENABLE" {
            Spi::run(&format!("ALTER TABLE auth.users {state} TRIGGER {name}"))
                .or_raise(&format!("setting the state of {name}"));
        }
        created = true;
    }
    created
}

/// Detach the sync triggers (and those of earlier versions) from auth.users. Idempotent: returns
/// true when this call removed a trigger. Triggers of the same name that call another function
/// are left alone.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_detach_auth_sync() -> bool {
    let Some(table) = lock_auth_users(|sync_fn| {
        if our_trigger_names(sync_fn).is_empty() {
            Lock::Create
        } else {
            Lock::Drop
        }
    }) else {
        return false;
    };
    let ours = our_trigger_names(table.sync_fn);
    require_drop_lock(&table, !ours.is_empty());
    for name in &ours {
        drop_trigger(name);
    }
    !ours.is_empty()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// The Supabase Auth model of tests/fixtures, created inside the test's transaction.
    fn load_auth_model() {
        Spi::run(include_str!("../tests/fixtures/supabase_auth.sql")).unwrap();
    }

    fn our_trigger_count() -> i64 {
        Spi::get_one::<i64>(
            "SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger \
             WHERE tgrelid = 'auth.users'::regclass AND tgname LIKE 'nura_users_sync_%'",
        )
        .unwrap()
        .unwrap()
    }

    /// Sign up as GoTrue does: as supabase_auth_admin with search_path = auth.
    fn gotrue_signup(args: &str) -> pgrx::Uuid {
        Spi::run("SET LOCAL ROLE supabase_auth_admin; SET LOCAL search_path = auth").unwrap();
        let id = Spi::get_one::<pgrx::Uuid>(&format!("SELECT gotrue_signup({args})"))
            .unwrap()
            .unwrap();
        Spi::run("RESET ROLE; RESET search_path").unwrap();
        id
    }

    /// `nura_sync_user` re-applies what `auth.users` says on every call, not only for the fields
    /// its payload names: an auth change that the trigger missed (here: detached; also a sync
    /// that failed with `on_sync_error = log`) is not built upon. A soft delete it missed keeps
    /// a profile edit from writing personal data, and an email change it missed is taken.
    #[pg_test]
    fn sync_user_applies_auth_changes_the_trigger_missed() {
        load_auth_model();
        Spi::run("SELECT public.nura_attach_auth_sync()").unwrap();
        let moved = gotrue_signup("'moved@example.com', NULL, '{}'");
        let gone = gotrue_signup("'gone@example.com', NULL, '{\"full_name\": \"Gone\"}'");
        Spi::run("SELECT public.nura_detach_auth_sync()").unwrap();
        Spi::run_with_args(
            "UPDATE auth.users SET email = 'moved.on@example.com' WHERE id = $1; \
             UPDATE auth.users SET deleted_at = now(), email = NULL, raw_user_meta_data = '{}' \
             WHERE id = $2",
            &[moved.into(), gone.into()],
        )
        .unwrap();
        let sync = |id: pgrx::Uuid| {
            Spi::get_one_with_args::<String>(
                "SELECT concat_ws(' ', r->>'sync_type', r->'ignored_fields', \
                     COALESCE(r->'user'->>'email', '-'), COALESCE(r->'user'->>'bio', '-'), \
                     COALESCE(r->'user'->>'full_name', '-'), r->'user'->'deleted_at' <> 'null') \
                 FROM public.nura_sync_user(jsonb_build_object('id', $1::text, 'bio', 'new bio')) r",
                &[id.into()],
            )
            .unwrap()
            .unwrap()
        };
        assert_eq!(sync(moved), "updated [] moved.on@example.com new bio - f");
        assert_eq!(sync(gone), r#"updated ["bio"] - - - t"#);
    }

    /// Metadata is read only for the names the sync uses: a signup whose metadata nests far
    /// deeper than a `Value` is read (jsonb::MAX_DEPTH), names included, syncs with its names,
    /// and no failure is logged.
    #[pg_test]
    fn metadata_of_any_depth_syncs_its_names() {
        load_auth_model();
        Spi::run("SELECT public.nura_attach_auth_sync()").unwrap();
        let nested = |depth: usize| {
            format!(
                "'{{\"full_name\": \"Deep\", \"x\": {}{}, \"name\": {}1{}}}'",
                "[".repeat(depth),
                "]".repeat(depth),
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        let deep = gotrue_signup(&format!("'deep@example.com', NULL, {}", nested(1000)));
        assert_eq!(
            Spi::get_one_with_args::<String>(
                "SELECT full_name FROM public.users WHERE id = $1",
                &[deep.into()],
            )
            .unwrap()
            .as_deref(),
            Some("Deep")
        );
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM public.user_sync_logs WHERE NOT success")
                .unwrap(),
            Some(0)
        );
    }

    /// A signup first inserts without ON CONFLICT; when the id or the email is taken it runs
    /// again on the full path: the row holding the email is adopted, a row with the id is
    /// updated, and no failure is logged.
    #[pg_test]
    fn a_signup_meeting_a_taken_email_or_id_adopts_or_updates() {
        load_auth_model();
        Spi::run("SELECT public.nura_attach_auth_sync()").unwrap();
        Spi::run(
            "SELECT public.nura_sync_user('{\"id\": \"b0000000-0000-4000-8000-000000000001\", \
                 \"email\": \"api@example.com\", \"full_name\": \"Api Made\"}'); \
             SELECT public.nura_sync_user('{\"id\": \"a0000000-0000-4000-8000-000000000002\", \
                 \"email\": \"old@example.com\", \"bio\": \"kept\"}')",
        )
        .unwrap();
        let adopter = gotrue_signup("'API@example.com', NULL, '{}'");
        let same_id =
            gotrue_signup("'new@example.com', NULL, '{}', 'a0000000-0000-4000-8000-000000000002'");
        let row = |id: pgrx::Uuid| {
            Spi::get_one_with_args::<String>(
                "SELECT concat_ws(' ', email, full_name, bio, \
                     (SELECT count(*) FROM public.user_service_profiles p WHERE p.user_id = u.id)) \
                 FROM public.users u WHERE id = $1",
                &[id.into()],
            )
            .unwrap()
        };
        assert_eq!(row(adopter).as_deref(), Some("api@example.com Api Made 3"));
        assert_eq!(row(same_id).as_deref(), Some("new@example.com kept 3"));
        let logs = |id: pgrx::Uuid| {
            Spi::get_one_with_args::<String>(
                "SELECT string_agg(sync_type || ':' || success, ',' ORDER BY id) \
                 FROM public.user_sync_logs WHERE user_id = $1 AND source = 'supabase_auth'",
                &[id.into()],
            )
            .unwrap()
        };
        assert_eq!(logs(adopter).as_deref(), Some("adopted:true"));
        assert_eq!(logs(same_id).as_deref(), Some("updated:true"));
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM public.user_sync_logs WHERE NOT success")
                .unwrap(),
            Some(0)
        );
    }

    #[pg_test]
    fn attach_is_idempotent_and_detach_undoes_it() {
        assert_eq!(
            Spi::get_one::<bool>("SELECT public.nura_attach_auth_sync()").unwrap(),
            Some(false),
            "without auth.users there is nothing to attach"
        );
        load_auth_model();
        assert_eq!(
            Spi::get_one::<bool>("SELECT public.nura_attach_auth_sync()").unwrap(),
            Some(true)
        );
        assert_eq!(our_trigger_count(), 3);
        assert_eq!(
            Spi::get_one::<bool>("SELECT public.nura_attach_auth_sync()").unwrap(),
            Some(false)
        );
        assert_eq!(our_trigger_count(), 3);
        assert_eq!(
            Spi::get_one::<bool>("SELECT public.nura_detach_auth_sync()").unwrap(),
            Some(true)
        );
        assert_eq!(our_trigger_count(), 0);
        assert_eq!(
            Spi::get_one::<bool>("SELECT public.nura_detach_auth_sync()").unwrap(),
            Some(false)
        );
        // A partly detached state is repaired by attach.
        Spi::run("SELECT public.nura_attach_auth_sync(); DROP TRIGGER nura_users_sync_update ON auth.users")
            .unwrap();
        assert_eq!(
            Spi::get_one::<bool>("SELECT public.nura_attach_auth_sync()").unwrap(),
            Some(true)
        );
        assert_eq!(our_trigger_count(), 3);
    }

    /// 0.1.0 and 0.2.0 attached a second UPDATE trigger for sign-ins, and both UPDATE triggers
    /// had WHEN clauses: attach replaces them, detach removes them, and the function works
    /// under either shape.
    #[pg_test]
    fn attach_replaces_the_triggers_of_earlier_versions() {
        load_auth_model();
        Spi::run("SELECT public.nura_attach_auth_sync()").unwrap();
        let id = gotrue_signup("'old@example.com', NULL, '{\"full_name\": \"Old\"}'");
        Spi::run(
            "DROP TRIGGER nura_users_sync_update ON auth.users; \
             CREATE TRIGGER nura_users_sync_update AFTER UPDATE OF email, last_sign_in_at \
                 ON auth.users FOR EACH ROW WHEN (OLD.email IS DISTINCT FROM NEW.email) \
                 EXECUTE FUNCTION public.nura_auth_user_sync(); \
             CREATE TRIGGER nura_users_sync_sign_in AFTER UPDATE OF last_sign_in_at \
                 ON auth.users FOR EACH ROW \
                 WHEN (OLD.last_sign_in_at IS DISTINCT FROM NEW.last_sign_in_at \
                       AND OLD.email IS NOT DISTINCT FROM NEW.email) \
                 EXECUTE FUNCTION public.nura_auth_user_sync(); \
             ALTER TABLE auth.users ENABLE ALWAYS TRIGGER nura_users_sync_update",
        )
        .unwrap();
        let synced = |sql: &str| {
            Spi::run_with_args(sql, &[id.into()]).unwrap();
            Spi::get_one_with_args::<String>(
                "SELECT email || ' ' || last_sign_in_at::text FROM public.users WHERE id = $1",
                &[id.into()],
            )
            .unwrap()
            .unwrap()
        };
        assert_eq!(
            synced("UPDATE auth.users SET last_sign_in_at = '2026-11-25 09:00+00' WHERE id = $1"),
            "old@example.com 2026-11-25 09:00:00+00",
            "a sign-in through the old sign-in trigger"
        );
        assert_eq!(
            synced("UPDATE auth.users SET email = 'new@example.com' WHERE id = $1"),
            "new@example.com 2026-11-25 09:00:00+00",
            "an email change through the old update trigger"
        );
        assert_eq!(
            Spi::get_one::<bool>("SELECT public.nura_attach_auth_sync()").unwrap(),
            Some(true)
        );
        let shape = Spi::get_one::<String>(
            "SELECT string_agg(tgname || CASE WHEN tgqual IS NULL THEN '' ELSE ' (when)' END \
                               || ' ' || tgenabled::text, ', ' ORDER BY tgname) \
             FROM pg_trigger WHERE tgrelid = 'auth.users'::regclass AND NOT tgisinternal",
        )
        .unwrap();
        assert_eq!(
            shape.as_deref(),
            Some("nura_users_sync_delete O, nura_users_sync_insert O, nura_users_sync_update A"),
            "replaced, the update trigger keeps its ENABLE ALWAYS"
        );
        assert_eq!(
            synced("UPDATE auth.users SET last_sign_in_at = '2026-11-25 10:00+00' WHERE id = $1"),
            "new@example.com 2026-11-25 10:00:00+00"
        );
        // Detach also removes a leftover sign-in trigger of an earlier version.
        Spi::run(
            "CREATE TRIGGER nura_users_sync_sign_in AFTER UPDATE OF last_sign_in_at \
                 ON auth.users FOR EACH ROW EXECUTE FUNCTION public.nura_auth_user_sync()",
        )
        .unwrap();
        assert_eq!(
            Spi::get_one::<bool>("SELECT public.nura_detach_auth_sync()").unwrap(),
            Some(true)
        );
        assert_eq!(our_trigger_count(), 0);
    }

    #[pg_test(
        error = "trigger \"nura_users_sync_insert\" on auth.users exists and is not nura_users'"
    )]
    fn attach_refuses_to_adopt_a_foreign_trigger_of_the_same_name() {
        load_auth_model();
        Spi::run(
            "CREATE FUNCTION public.someone_elses() RETURNS trigger LANGUAGE plpgsql \
             AS $$ BEGIN RETURN NULL; END $$; \
             CREATE TRIGGER nura_users_sync_insert AFTER INSERT ON auth.users \
             FOR EACH ROW EXECUTE FUNCTION public.someone_elses()",
        )
        .unwrap();
        Spi::run("SELECT public.nura_attach_auth_sync()").unwrap();
    }

    #[pg_test]
    fn gotrue_signup_creates_the_user_row_as_supabase_auth_admin() {
        load_auth_model();
        Spi::run("SELECT public.nura_attach_auth_sync()").unwrap();
        let id = gotrue_signup(
            "'  Ana@Example.com', '15551234567', \
             '{\"full_name\": \"Ana Lima\", \"picture\": \"https://img/ana.png\"}'",
        );
        let (email, phone, name) = Spi::get_three_with_args::<String, String, String>(
            "SELECT email, phone_number, full_name FROM public.users WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        // GoTrue lower-cases the address before writing it.
        assert_eq!(email.as_deref(), Some("ana@example.com"));
        assert_eq!(phone.as_deref(), Some("15551234567"));
        assert_eq!(name.as_deref(), Some("Ana Lima"));
        let avatar = Spi::get_one_with_args::<String>(
            "SELECT avatar_url FROM public.users WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(avatar.as_deref(), Some("https://img/ana.png"));
    }

    #[pg_test]
    fn anonymous_and_phone_only_users_sync() {
        load_auth_model();
        Spi::run("SELECT public.nura_attach_auth_sync()").unwrap();
        let anon = gotrue_signup("NULL, NULL, '{}', p_is_anonymous => true");
        let phone = gotrue_signup("NULL, '4915112345678'");
        let rows = Spi::get_two_with_args::<bool, bool>(
            "SELECT (SELECT is_anonymous AND email IS NULL FROM public.users WHERE id = $1), \
                    (SELECT phone_number = '4915112345678' AND email IS NULL \
                     FROM public.users WHERE id = $2)",
            &[anon.into(), phone.into()],
        )
        .unwrap();
        assert_eq!(rows, (Some(true), Some(true)));
    }

    #[pg_test]
    fn updates_copy_auth_fields_and_keep_user_edits() {
        load_auth_model();
        Spi::run("SELECT public.nura_attach_auth_sync()").unwrap();
        let id = gotrue_signup("'bo@example.com', NULL, '{\"name\": \"Bo\"}'");
        // The user edits their name in users; a later OAuth login merges provider metadata.
        Spi::run_with_args(
            "UPDATE public.users SET full_name = 'Bo Edited' WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        Spi::run_with_args(
            "UPDATE auth.users SET raw_user_meta_data = '{\"name\": \"Bo Provider\"}', \
                 email_confirmed_at = '2026-01-02 03:04:05+00', updated_at = now() WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        let (name, confirmed) = Spi::get_two_with_args::<String, bool>(
            "SELECT full_name, email_confirmed_at = '2026-01-02 03:04:05+00' \
             FROM public.users WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(name.as_deref(), Some("Bo Edited"));
        assert_eq!(confirmed, Some(true));
    }

    #[pg_test]
    fn the_synced_columns_are_found_again_when_auth_users_changes_shape() {
        load_auth_model();
        Spi::run("SELECT public.nura_attach_auth_sync()").unwrap();
        let id = gotrue_signup("'cy@example.com', NULL, '{}'");
        let synced = |set: &str, check: &str| {
            Spi::run_with_args(
                &format!("UPDATE auth.users SET {set} WHERE id = $1"),
                &[id.into()],
            )
            .unwrap();
            Spi::get_one_with_args::<bool>(
                &format!("SELECT {check} FROM public.users WHERE id = $1"),
                &[id.into()],
            )
            .unwrap()
        };
        // The trigger has learnt where the columns are.
        assert_eq!(
            synced(
                "last_sign_in_at = '2026-11-26 08:00+00'",
                "last_sign_in_at = '2026-11-26 08:00+00'"
            ),
            Some(true)
        );
        // Dropped and added again, two synced columns move to new attribute numbers (the old
        // ones stay behind as dropped columns).
        Spi::run(
            "SELECT public.nura_detach_auth_sync(); \
             ALTER TABLE auth.users DROP COLUMN last_sign_in_at, DROP COLUMN banned_until, \
                 ADD COLUMN banned_until timestamptz, ADD COLUMN last_sign_in_at timestamptz; \
             SELECT public.nura_attach_auth_sync()",
        )
        .unwrap();
        assert_eq!(
            synced(
                "last_sign_in_at = '2026-11-26 09:00+00'",
                "last_sign_in_at = '2026-11-26 09:00+00'"
            ),
            Some(true),
            "a sign-in is read from the column's new place"
        );
        assert_eq!(
            synced(
                "banned_until = '2027-01-01 00:00+00'",
                "banned_until = '2027-01-01 00:00+00' AND email = 'cy@example.com'"
            ),
            Some(true),
            "so is any other change"
        );
        let other = gotrue_signup("'dee@example.com', NULL, '{\"name\": \"Dee\"}'");
        assert_eq!(
            Spi::get_one_with_args::<String>(
                "SELECT full_name FROM public.users WHERE id = $1",
                &[other.into()]
            )
            .unwrap()
            .as_deref(),
            Some("Dee")
        );
    }

    #[pg_test]
    fn soft_delete_deactivates_and_clears_pii_and_hard_delete_removes() {
        load_auth_model();
        Spi::run("SELECT public.nura_attach_auth_sync()").unwrap();
        let id = gotrue_signup("'cy@example.com', '15550001111', '{\"full_name\": \"Cy\"}'");
        // A new user gets the profiles of every auto_create service type (chat, voice, memory).
        let profiles = Spi::get_one_with_args::<i64>(
            "SELECT count(*) FROM public.user_service_profiles WHERE user_id = $1",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(profiles, Some(3));
        // GoTrue's soft delete: email/phone become hashes, deleted_at is set.
        Spi::run_with_args(
            "UPDATE auth.users SET email = 'xk3Jq0hash', phone = 'a1b2c3d4e5f6g7h', \
                 encrypted_password = NULL, deleted_at = now(), updated_at = now() WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        let cleared = Spi::get_one_with_args::<bool>(
            "SELECT NOT is_active AND deleted_at IS NOT NULL AND email IS NULL \
                    AND phone_number IS NULL AND full_name IS NULL \
             FROM public.users WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(cleared, Some(true));
        Spi::run_with_args("DELETE FROM auth.users WHERE id = $1", &[id.into()]).unwrap();
        let left = Spi::get_one_with_args::<i64>(
            "SELECT (SELECT count(*) FROM public.users WHERE id = $1) \
                  + (SELECT count(*) FROM public.user_service_profiles WHERE user_id = $1)",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(left, Some(0));
    }

    #[pg_test]
    fn a_sign_in_takes_the_fast_path_and_recreates_a_missing_row() {
        load_auth_model();
        Spi::run("SELECT public.nura_attach_auth_sync()").unwrap();
        let id = gotrue_signup("'fi@example.com', NULL, '{\"full_name\": \"Fi\"}'");
        let sign_in = |at: &str| {
            Spi::run_with_args(
                &format!(
                    "UPDATE auth.users SET last_sign_in_at = '{at}', updated_at = now() WHERE id = $1"
                ),
                &[id.into()],
            )
            .unwrap()
        };
        sign_in("2026-11-25 10:00:00+00");
        let at = || {
            Spi::get_one_with_args::<bool>(
                "SELECT last_sign_in_at = '2026-11-25 10:00:00+00' FROM public.users WHERE id = $1",
                &[id.into()],
            )
            .unwrap()
        };
        assert_eq!(at(), Some(true));
        // The sign-in of a user whose row is missing (say a sync failed earlier) creates it whole.
        Spi::run_with_args("DELETE FROM public.users WHERE id = $1", &[id.into()]).unwrap();
        sign_in("2026-11-25 11:00:00+00");
        let restored = Spi::get_one_with_args::<String>(
            "SELECT email || ' ' || full_name || ' ' || last_sign_in_at::text FROM public.users \
             WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(
            restored.as_deref(),
            Some("fi@example.com Fi 2026-11-25 11:00:00+00")
        );
    }

    #[pg_test]
    fn updates_of_unsynced_columns_do_not_touch_users() {
        load_auth_model();
        Spi::run("SELECT public.nura_attach_auth_sync()").unwrap();
        let id = gotrue_signup("'di@example.com'");
        // Metadata large enough to be stored out of line (TOAST), synced once.
        Spi::run_with_args(
            "UPDATE auth.users SET raw_user_meta_data = pg_catalog.jsonb_build_object( \
                 'full_name', 'Di', 'blob', (SELECT string_agg(md5(i::text), '') \
                                             FROM generate_series(1, 3000) i)) WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        let toasted = Spi::get_one_with_args::<bool>(
            "SELECT octet_length(raw_user_meta_data::text) > 50000 FROM auth.users WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        // No row version can hold 50 kB in line: the value lives in the TOAST table.
        assert_eq!(toasted, Some(true), "the metadata is stored out of line");
        // Any UPDATE of the users row would give it a new tuple version (a new ctid).
        let version = || {
            Spi::get_one_with_args::<String>(
                "SELECT ctid::text FROM public.users WHERE id = $1",
                &[id.into()],
            )
            .unwrap()
        };
        let before = version();
        // GoTrue's step 2 of a signup: set the role. Not a synced column.
        Spi::run_with_args(
            "UPDATE auth.users SET role = 'authenticated', updated_at = now() WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        // GoTrue writing the synced columns back unchanged (a whole-row save) changes nothing.
        Spi::run_with_args(
            "UPDATE auth.users SET email = email, phone = phone, \
                 raw_user_meta_data = raw_user_meta_data::text::jsonb, is_anonymous = is_anonymous, \
                 deleted_at = deleted_at, updated_at = now() WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        // The same metadata written again is a new stored value (a new TOAST pointer), equal in
        // content: nothing changes either.
        Spi::run_with_args(
            "UPDATE auth.users SET raw_user_meta_data = raw_user_meta_data::text::jsonb WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        // A sign-in that rewrites the same last_sign_in_at (legacy refresh path) changes nothing.
        Spi::run_with_args(
            "UPDATE auth.users SET last_sign_in_at = last_sign_in_at, updated_at = now() WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        let after = version();
        assert_eq!(before, after);
        assert_eq!(
            Spi::get_one_with_args::<String>(
                "SELECT full_name FROM public.users WHERE id = $1",
                &[id.into()]
            )
            .unwrap()
            .as_deref(),
            Some("Di")
        );
    }

    /// One UPDATE that signs in and changes another synced column is a full sync, logged with
    /// both fields.
    #[pg_test]
    fn a_sign_in_with_another_change_takes_the_full_sync() {
        load_auth_model();
        Spi::run("SELECT public.nura_attach_auth_sync()").unwrap();
        let id = gotrue_signup("'gi@example.com'");
        Spi::run_with_args(
            "UPDATE auth.users SET last_sign_in_at = '2026-11-25 12:00+00', \
                 email_confirmed_at = '2026-11-25 12:00+00' WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        let synced = Spi::get_one_with_args::<String>(
            "SELECT (SELECT last_sign_in_at::text || ' ' || email_confirmed_at::text \
                     FROM public.users WHERE id = $1) || ' ' || \
                    (SELECT array_to_string(changed_fields, ',') FROM public.user_sync_logs \
                     WHERE user_id = $1 AND sync_type = 'updated')",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(
            synced.as_deref(),
            Some(
                "2026-11-25 12:00:00+00 2026-11-25 12:00:00+00 email_confirmed_at,last_sign_in_at"
            )
        );
    }
}
