//! nura_users: one normalized `users` table as the single source of truth for user data in a
//! Supabase/PostgreSQL database, kept in step with `auth.users` inside the auth transaction.
//!
//! One module per concern; `docs/` is the manual each one follows:
//! - `schema`: where the objects live, and the SQL of `sql/` (tables, RLS, pg_dump registration);
//! - `settings`: the `nura_users.*` GUCs;
//! - `access`: who is calling (superuser, owner, service_role, or a JWT `sub`);
//! - `user_row`: a `users` row, read, compared, rendered and written;
//! - `sync`: the sync core, the only code that writes a user's row one at a time;
//! - `log`: the sync log: its rows, how they are written and scrubbed, and their check;
//! - `plans`: statements prepared once per backend and kept;
//! - `subtxn`: running a sync in a subtransaction so its failure stays its own;
//! - `errors`: the one error type at the SQL boundary (an ERROR, or a result's error object);
//! - `auth_sync`: the triggers on `auth.users` and
//!   `nura_attach_auth_sync()`/`nura_detach_auth_sync()`;
//! - `operations`: consistency check, reconcile, log purge, erasure (and `sql/operations.sql`);
//! - `profiles`: reading users and service profiles, the service views, the activity and xp
//!   counters;
//! - `migration`: the legacy migration (plan, batches, rollback; `sql/migration.sql`);
//! - `verify`: `nura_verify_migration`, checking legacy rows against `users` independently;
//! - `cutover`: the cutover's plan, `nura_cutover_plan` (docs/cutover.md; the cutover itself is
//!   not built yet);
//! - `jsonb`: `jsonb` values built and read directly, without a trip through text;
//! - `uuid_input`: uuids in every form PostgreSQL's `uuid` accepts (payloads, legacy ids);
//! - `payload`: `nura_sync_user(payload jsonb)` and `nura_update_profile`: validation, caller
//!   check, result shape.

::pgrx::pg_module_magic!(name, version);

mod access;
mod auth_sync;
mod cutover;
mod errors;
mod jsonb;
mod log;
mod migration;
mod operations;
mod payload;
mod plans;
mod profiles;
mod schema;
mod settings;
mod subtxn;
mod sync;
mod user_row;
mod uuid_input;
mod verify;

use pgrx::prelude::*;

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::register();
}

/// Settings for `cargo pgrx test`'s throwaway cluster.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
