//! The row triggers on `auth.users` (SPEC §4.1) and the functions that attach and detach them
//! (SPEC §2).
//!
//! The triggers are ordinary objects on `auth.users`, not extension members: `pg_dump` recreates
//! them after the table, and `DROP EXTENSION` refuses to run while they are attached (detach
//! first, or use CASCADE, which drops only these triggers). The trigger function is SECURITY
//! DEFINER with a pinned `search_path` (see `sql/finalize.sql`), because it fires as GoTrue's
//! `supabase_auth_admin`, which has no rights on the extension's schema and `search_path = auth`.

use crate::errors::raise;
use crate::schema::{extension_schema, schema_of_function};
use crate::settings::{self, OnSyncError};
use crate::subtxn;
use crate::sync::{self, AuthUser, Core, LogEntry, Source, SyncRequest};
use pgrx::prelude::*;
use pgrx::Uuid;
use std::time::Instant;

/// The columns of `auth.users` that the sync reads. An UPDATE that changes none of them does not
/// even call the trigger function (column lists plus WHEN clauses).
const SYNCED_COLUMNS: &[&str] = &[
    "email",
    "phone",
    "email_confirmed_at",
    "phone_confirmed_at",
    "last_sign_in_at",
    "banned_until",
    "is_anonymous",
    "is_sso_user",
    "deleted_at",
    "raw_user_meta_data",
];

/// The trigger that handles sign-ins: UPDATEs that change `last_sign_in_at` and no other synced
/// column, the most frequent auth write, get a one-statement fast path.
const SIGN_IN_TRIGGER: &str = "nura_users_sync_sign_in";

/// Our triggers on auth.users: name and the part of their CREATE TRIGGER before EXECUTE.
fn trigger_definitions() -> [(&'static str, String); 4] {
    let row = |prefix: &str, skip_sign_in: bool| {
        SYNCED_COLUMNS
            .iter()
            .filter(|c| !(skip_sign_in && **c == "last_sign_in_at"))
            .map(|c| format!("{prefix}.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (old_rest, new_rest) = (row("OLD", true), row("NEW", true));
    [
        (
            "nura_users_sync_insert",
            "AFTER INSERT ON auth.users FOR EACH ROW".to_string(),
        ),
        (
            "nura_users_sync_update",
            format!(
                "AFTER UPDATE OF {} ON auth.users FOR EACH ROW \
                 WHEN (({old_rest}) IS DISTINCT FROM ({new_rest}))",
                SYNCED_COLUMNS.join(", ")
            ),
        ),
        (
            SIGN_IN_TRIGGER,
            format!(
                "AFTER UPDATE OF last_sign_in_at ON auth.users FOR EACH ROW \
                 WHEN (OLD.last_sign_in_at IS DISTINCT FROM NEW.last_sign_in_at \
                       AND ({old_rest}) IS NOT DISTINCT FROM ({new_rest}))"
            ),
        ),
        (
            "nura_users_sync_delete",
            "AFTER DELETE ON auth.users FOR EACH ROW".to_string(),
        ),
    ]
}

/// Keeps `users` in step with `auth.users`, inside the transaction of the auth write.
///
/// The sync runs in a subtransaction. When it fails, only the sync is rolled back, a log row
/// with the SQLSTATE and message records it, and the auth write goes on (SPEC §4.1) — unless
/// `nura_users.on_sync_error = raise`, which fails the auth write with the same SQLSTATE.
#[pg_trigger]
fn nura_auth_user_sync<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, Box<dyn std::error::Error>> {
    let started = Instant::now();
    // The trigger function lives in the extension's schema: no catalog query needed to find it.
    let core = Core::new(schema_of_function(trigger.trigger().tgfoid));
    let op = trigger.op()?;
    let row = match op {
        PgTriggerOperation::Insert | PgTriggerOperation::Update => trigger.new(),
        PgTriggerOperation::Delete => trigger.old(),
        PgTriggerOperation::Truncate => None,
    };
    let Some(row) = row else { return Ok(None) };
    let Some(id) = row.get_by_name::<Uuid>("id")? else {
        return Ok(None);
    };
    // A sign-in, when nothing asks for its log row or notification: one UPDATE.
    if trigger.name()? == SIGN_IN_TRIGGER
        && !settings::LOG_SIGN_INS.get()
        && !settings::NOTIFY.get()
    {
        let at = row
            .get_by_name::<TimestampWithTimeZone>("last_sign_in_at")?
            .map(pg_sys::TimestampTz::from);
        match subtxn::run(|| core.record_sign_in(id, at)) {
            Ok(true) => return Ok(None),
            Ok(false) => {} // no users row yet: the full sync below creates it
            Err(failure) => {
                report_failure(&core, id, &failure, started);
                return Ok(None);
            }
        }
    }
    let auth = match op {
        PgTriggerOperation::Delete => None,
        _ => Some(AuthUser::from_heap_tuple(&row)?),
    };

    let result = subtxn::run(|| match auth {
        Some(auth) => {
            let mut req = SyncRequest::new(Source::SupabaseAuth, id);
            req.auth = Some(auth);
            req.signup = matches!(op, PgTriggerOperation::Insert);
            if let Err(refusal) = sync::sync_user(&core, &req, started, false) {
                refusal.raise(id);
            }
        }
        None => {
            sync::remove_user(&core, id, Source::SupabaseAuth, started);
        }
    });
    if let Err(failure) = result {
        report_failure(&core, id, &failure, started);
    }
    Ok(None)
}

/// A failed sync: fail the auth write (`raise`), or log it and let the auth write commit.
fn report_failure(core: &Core, id: Uuid, failure: &subtxn::Failure, started: Instant) {
    if settings::ON_SYNC_ERROR.get() == OnSyncError::Raise {
        raise(
            failure.code,
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
        failure.sqlstate(),
        failure.message.clone(),
        started,
    );
    // Even writing the failure may fail (the log table itself broken): the auth write still wins.
    if let Err(second) = subtxn::run(|| core.log(&entry)) {
        warning!(
            "nura_users: sync of auth user {id} failed ({}: {}) and could not be logged: {}",
            failure.sqlstate(),
            failure.message,
            second.message
        );
    }
}

/// auth.users, locked, and the oid of our trigger function.
struct AuthUsersTable {
    sync_fn: pg_sys::Oid,
}

/// Find auth.users and take the lock CREATE/DROP TRIGGER would take, so that concurrent
/// attach/detach calls see each other's triggers instead of racing on the names.
fn lock_auth_users() -> Option<AuthUsersTable> {
    let exists = Spi::get_one::<bool>("SELECT pg_catalog.to_regclass('auth.users') IS NOT NULL")
        .ok()
        .flatten()
        .unwrap_or(false);
    if !exists {
        return None;
    }
    Spi::run("LOCK TABLE auth.users IN SHARE ROW EXCLUSIVE MODE")
        .unwrap_or_else(|e| error!("nura_users: cannot lock auth.users: {e}"));
    let signature = format!("{}.nura_auth_user_sync()", extension_schema());
    let sync_fn = Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT $1::pg_catalog.regprocedure::pg_catalog.oid",
        &[signature.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| error!("nura_users: trigger function nura_auth_user_sync() not found"));
    Some(AuthUsersTable { sync_fn })
}

/// The function a trigger of that name on auth.users calls, if the trigger exists.
fn existing_trigger_function(name: &str) -> Option<pg_sys::Oid> {
    Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT (SELECT t.tgfoid FROM pg_catalog.pg_trigger t \
                 WHERE t.tgrelid OPERATOR(pg_catalog.=) 'auth.users'::pg_catalog.regclass \
                   AND t.tgname OPERATOR(pg_catalog.=) $1)",
        &[name.into()],
    )
    .unwrap_or_else(|e| error!("nura_users: reading triggers of auth.users failed: {e}"))
}

/// Attach the sync triggers to auth.users. Idempotent: returns true when this call created a
/// trigger, false when all were already attached or auth.users does not exist (a NOTICE says so).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_attach_auth_sync() -> bool {
    let Some(table) = lock_auth_users() else {
        notice!(
            "nura_users: auth.users does not exist, no sync triggers attached; \
             call nura_attach_auth_sync() once it exists"
        );
        return false;
    };
    let function = format!("{}.nura_auth_user_sync", extension_schema());
    let mut created = false;
    for (name, definition) in trigger_definitions() {
        match existing_trigger_function(name) {
            Some(oid) if oid == table.sync_fn => {}
            Some(_) => raise(
                PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
                format!("trigger \"{name}\" on auth.users exists and is not nura_users'"),
                Some("Drop or rename that trigger, then call nura_attach_auth_sync() again."),
            ),
            None => {
                Spi::run(&format!(
                    "CREATE TRIGGER {name} {definition} EXECUTE FUNCTION {function}()"
                ))
                .unwrap_or_else(|e| error!("nura_users: creating trigger {name} failed: {e}"));
                created = true;
            }
        }
    }
    created
}

/// Detach the sync triggers from auth.users. Idempotent: returns true when this call removed a
/// trigger. Triggers of the same name that call another function are left alone.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_detach_auth_sync() -> bool {
    let Some(table) = lock_auth_users() else {
        return false;
    };
    let mut removed = false;
    for (name, _) in trigger_definitions() {
        if existing_trigger_function(name) == Some(table.sync_fn) {
            Spi::run(&format!("DROP TRIGGER {name} ON auth.users"))
                .unwrap_or_else(|e| error!("nura_users: dropping trigger {name} failed: {e}"));
            removed = true;
        }
    }
    removed
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
        assert_eq!(our_trigger_count(), 4);
        assert_eq!(
            Spi::get_one::<bool>("SELECT public.nura_attach_auth_sync()").unwrap(),
            Some(false)
        );
        assert_eq!(our_trigger_count(), 4);
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
        assert_eq!(our_trigger_count(), 4);
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
        // A sign-in that rewrites the same last_sign_in_at (legacy refresh path) changes nothing.
        Spi::run_with_args(
            "UPDATE auth.users SET last_sign_in_at = last_sign_in_at, updated_at = now() WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        let after = version();
        assert_eq!(before, after);
    }
}
