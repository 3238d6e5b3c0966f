//! nura_users: one normalized `users` table as the single source of truth for user data in a
//! Supabase/PostgreSQL database, kept in step with `auth.users` inside the auth transaction.
//!
//! One module per concern of the spec (`../shared/SPEC.md` in the project's workspace):
//! - `schema`: where the objects live, and the SQL of `sql/` (tables, RLS, pg_dump registration);
//! - `sync`: the sync core, the only code that writes `users`;
//! - `auth_sync`: the triggers on `auth.users` and `nura_attach_auth_sync()`/`nura_detach_auth_sync()`.

::pgrx::pg_module_magic!(name, version);

mod auth_sync;
mod errors;
mod schema;
mod sync;

/// Settings for `cargo pgrx test`'s throwaway cluster.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
