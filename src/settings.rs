//! Settings (`docs/settings.md`). All are SUSET: they change what is logged and whether an auth
//! write may fail, so only superusers (or roles granted SET on them) may change them.

use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// What a failed sync in the auth trigger does to the auth write.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum OnSyncError {
    /// Roll back only the sync, log the failure, let the auth write commit.
    #[name = c"log"]
    Log,
    /// Fail the auth write with the sync's SQLSTATE.
    #[name = c"raise"]
    Raise,
}

/// How much of a user row a log entry keeps.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum LogPayloads {
    /// The whole row before and after.
    #[name = c"full"]
    Full,
    /// Only the fields that changed, before and after.
    #[name = c"diff"]
    Diff,
    /// Neither.
    #[name = c"none"]
    None,
}

pub static ON_SYNC_ERROR: GucSetting<OnSyncError> =
    GucSetting::<OnSyncError>::new(OnSyncError::Log);
pub static LOG_SIGN_INS: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static LOG_PAYLOADS: GucSetting<LogPayloads> =
    GucSetting::<LogPayloads>::new(LogPayloads::Diff);
pub static NOTIFY: GucSetting<bool> = GucSetting::<bool>::new(false);
/// work_mem (kB) for the migration's plan statement, when it is more than work_mem.
pub static MIGRATION_WORK_MEM: GucSetting<i32> = GucSetting::<i32>::new(256 * 1024);

/// How long a cutover step waits for its locks before it gives them up and tries again (ms).
pub static CUTOVER_LOCK_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// Whether `CALL nura_cutover` goes on to the switch, or stops before it (references moved,
/// reverse sync on, old code still on the legacy table).
pub static CUTOVER_SWITCH: GucSetting<bool> = GucSetting::<bool>::new(true);

/// Register the settings; called from `_PG_init` when the library is loaded.
pub fn register() {
    GucRegistry::define_enum_guc(
        c"nura_users.on_sync_error",
        c"What a failed sync does to the auth.users write that fired it.",
        c"log: roll back only the sync, log it (success = false) and let the auth write commit; \
          raise: fail the auth write with the sync's SQLSTATE.",
        &ON_SYNC_ERROR,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"nura_users.log_sign_ins",
        c"Log syncs that only change last_sign_in_at.",
        c"Sign-ins are the most frequent auth write; by default they update users without a log row.",
        &LOG_SIGN_INS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"nura_users.log_payloads",
        c"How much of the user row a sync log entry keeps in before_data/after_data.",
        c"full: the whole row; diff: only changed fields; none: nothing.",
        &LOG_PAYLOADS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"nura_users.notify",
        c"Send NOTIFY nura_users_changes with {id, op} for every committed change of users.",
        c"",
        &NOTIFY,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"nura_users.migration_work_mem",
        c"work_mem for the legacy migration's plan statement, when it is more than work_mem.",
        c"The plan sorts every legacy row a few times; with enough memory the sorts stay off disk. \
          Each sort or hash of that one statement may use this much (hashes twice as much).",
        &MIGRATION_WORK_MEM,
        64,
        i32::MAX / 1024,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    // USERSET, unlike the others: it decides only how long the caller's own cutover waits.
    GucRegistry::define_int_guc(
        c"nura_users.cutover_lock_timeout",
        c"How long a cutover step waits for its locks before it gives up and tries again later.",
        c"Every statement that needs a strong lock runs under this lock_timeout, so that a queued \
          lock never stalls the product's queries for longer.",
        &CUTOVER_LOCK_TIMEOUT,
        1,
        60 * 60 * 1000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_bool_guc(
        c"nura_users.cutover_switch",
        c"Whether CALL nura_cutover() switches a legacy table's name to the view.",
        c"off: the CALL stops before the switch, with the references moved and reverse sync on, \
          and old code still on the legacy table; a later CALL with it on switches.",
        &CUTOVER_SWITCH,
        GucContext::Userset,
        GucFlags::default(),
    );
    // Reject misspelt nura_users.* settings instead of keeping them as placeholders.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"nura_users".as_ptr()) };
}

/// Costs that let PostgreSQL plan parallel workers for a scan of every legacy row (the migration's
/// staging of its plan, verify's counts); whether and how many is still
/// `max_parallel_workers_per_gather`'s.
pub const PARALLEL_SCANS: [(&str, &std::ffi::CStr); 2] =
    [("parallel_setup_cost", c"0"), ("parallel_tuple_cost", c"0")];

/// Run `body` with the settings `values` in force, as a function's `SET` clauses are: saved at
/// a new GUC nest level and put back when `body` returns (an error unwinds them with the
/// transaction).
pub fn with_settings<R>(values: &[(&str, &std::ffi::CStr)], body: impl FnOnce() -> R) -> R {
    // SAFETY: the same calls fmgr_security_definer makes for a function's SET clauses.
    let level = unsafe { pg_sys::NewGUCNestLevel() };
    for (name, value) in values {
        let name = std::ffi::CString::new(*name).expect("a setting name has no NUL");
        // SAFETY: NUL-terminated name and value; raises ERROR on a bad name or value.
        unsafe {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                PgLogLevel::ERROR as i32,
                false,
            )
        };
    }
    let result = body();
    // SAFETY: pops exactly the level made above.
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
    result
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    fn setting(name: &str) -> String {
        Spi::get_one_with_args::<String>("SELECT current_setting($1)", &[name.into()])
            .unwrap()
            .unwrap()
    }

    /// The settings hold inside the body only, as a function's SET clauses do; one the caller
    /// set in the same transaction is back afterwards too.
    #[pg_test]
    fn settings_hold_for_the_body_only() {
        Spi::run("SET LOCAL parallel_tuple_cost = 0.5").unwrap();
        let before = (
            setting("parallel_setup_cost"),
            setting("parallel_tuple_cost"),
        );
        let inside = with_settings(
            &[("parallel_setup_cost", c"0"), ("parallel_tuple_cost", c"0")],
            || {
                (
                    setting("parallel_setup_cost"),
                    setting("parallel_tuple_cost"),
                )
            },
        );
        assert_eq!(inside, ("0".to_string(), "0".to_string()));
        assert_eq!(before, ("1000".to_string(), "0.5".to_string()));
        assert_eq!(
            (
                setting("parallel_setup_cost"),
                setting("parallel_tuple_cost")
            ),
            before
        );
    }
}
