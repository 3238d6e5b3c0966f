//! Reading users and service profiles, and the service integrations (`docs/api.md`).
//!
//! Read functions (`nura_get_*`, `nura_user_for_*`, `nura_resolve_user_id`) are STABLE and write
//! nothing, so they answer on a hot standby; usage statistics change only through
//! `nura_touch_service`. An `authenticated` caller reads only its own id (NULL for others).

use crate::access::{self, Caller};
use crate::errors::raise;
use crate::errors::OrRaise;
use crate::jsonb::{JsonB, JsonbArg, RawJsonb};
use crate::log::{Source, SyncType};
use crate::plans;
use crate::schema::extension_schema;
use crate::subtxn;
use crate::sync::{self, Core, SyncRequest};
use crate::user_row::Micros;
use pgrx::prelude::*;
use pgrx::Uuid;
use serde_json::json;
use std::time::Instant;

/// The extension's core and the caller, from one catalog read.
fn context() -> (Core, Caller) {
    let extension = crate::schema::extension();
    let caller = access::caller_given_owner(extension.owner);
    (Core::new(extension.schema), caller)
}

/// The known service types, in name order.
fn service_types(core: &Core) -> Vec<String> {
    let schema = &core.schema;
    crate::plans::read_scalar::<Vec<String>>(
        &format!(
            "SELECT pg_catalog.array_agg(service_type ORDER BY service_type) \
             FROM {schema}.user_service_types"
        ),
        &[],
    )
    .or_raise("reading the service types")
    .unwrap_or_default()
}

/// ERROR 22023 naming an unknown service type and listing the known ones.
fn require_service_type(core: &Core, service_type: Option<&str>) -> String {
    let known = service_types(core);
    match service_type {
        Some(t) if known.iter().any(|k| k == t) => t.to_string(),
        other => {
            let shown: String = other.unwrap_or("NULL").chars().take(64).collect();
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "unknown service type \"{shown}\"; known service types: {}",
                    known.join(", ")
                ),
                None,
            )
        }
    }
}

/// ERROR 42501 unless the caller may act on `id`.
fn require_caller_for(caller: &Caller, id: Uuid) {
    if !caller.may_act_on(id) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for user {id}"),
            None,
        );
    }
}

/// ERROR 42501 unless the caller is privileged (backend-only functions).
fn require_backend(caller: &Caller, what: &str) {
    if !caller.is_privileged() {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("{what} is for the backend (service_role or the owner) only"),
            None,
        );
    }
}

/// ERROR 22023 unless `value` is a JSON object (or absent) of at most 16 KB (of its text) and
/// 128 levels. The value is checked as stored and passed on as it is.
fn require_object(argument: &str, value: Option<JsonbArg>) -> Option<JsonbArg> {
    let value = value?;
    if !value.root().is_object() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{argument} must be a JSON object"),
            None,
        );
    }
    // Stored preferences are read back into a value by the migration (as privacy_settings is
    // by every sync): the depth a value is read to is the limit here too.
    if value.root().too_deep() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "{argument} nests deeper than {} levels",
                crate::jsonb::MAX_DEPTH
            ),
            None,
        );
    }
    if let Err(too_large) = crate::payload::check_size(argument, value.root().text_len()) {
        too_large.raise();
    }
    Some(value)
}

/// ERROR 22023 naming the argument when it is NULL.
fn required<T>(argument: &str, value: Option<T>) -> T {
    value.unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{argument} must not be NULL"),
            None,
        )
    })
}

/// A read of one jsonb value, returned as the query made it: works on a hot standby.
fn one_json(sql: &str, args: &[pgrx::datum::DatumWithOid<'_>]) -> Option<RawJsonb> {
    crate::plans::read_scalar::<RawJsonb>(sql, args).or_raise("query")
}

/// A write returning its row (as the query built it: a profile of any depth is handed on).
fn written_json(sql: &str, args: &[pgrx::datum::DatumWithOid<'_>]) -> RawJsonb {
    crate::plans::scalar::<RawJsonb>(sql, args)
        .or_raise("query")
        .unwrap_or_else(|| {
            // The service type was deleted between its check and the insert.
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "the service type no longer exists",
                None,
            )
        })
}

fn user_exists(core: &Core, id: Uuid) -> bool {
    let schema = &core.schema;
    crate::plans::read_scalar::<bool>(
        &format!("SELECT EXISTS (SELECT FROM {schema}.users WHERE id OPERATOR(pg_catalog.=) $1)"),
        &[id.into()],
    )
    .or_raise("looking up a user")
    .unwrap_or(false)
}

/// The users row as JSON, or NULL for an unknown user or one the caller may not read.
#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_get_user(user_id: Uuid) -> Option<RawJsonb> {
    let (core, caller) = context();
    if !caller.may_act_on(user_id) {
        return None;
    }
    let schema = &core.schema;
    one_json(
        &format!(
            "SELECT pg_catalog.to_jsonb(u) FROM {schema}.users u \
             WHERE u.id OPERATOR(pg_catalog.=) $1"
        ),
        &[user_id.into()],
    )
}

/// A service profile as JSON; NULL when the user or the profile does not exist, or the caller
/// may not read it. Unknown service type: ERROR 22023.
#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_get_service_profile(user_id: Option<Uuid>, service_type: Option<&str>) -> Option<RawJsonb> {
    let (core, caller) = context();
    let user_id = user_id?;
    let service_type = require_service_type(&core, service_type);
    if !caller.may_act_on(user_id) {
        return None;
    }
    let schema = &core.schema;
    one_json(
        &format!(
            "SELECT pg_catalog.to_jsonb(p) FROM {schema}.user_service_profiles p \
             WHERE p.user_id OPERATOR(pg_catalog.=) $1 AND p.service_type OPERATOR(pg_catalog.=) $2"
        ),
        &[user_id.into(), service_type.into()],
    )
}

/// Create or update a service profile, merging the top-level keys of `preferences` and
/// `metadata` into what is stored. An `authenticated` caller may change only its own
/// preferences; metadata is the backend's.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_upsert_service_profile(
    user_id: Option<Uuid>,
    service_type: Option<&str>,
    preferences: default!(Option<JsonbArg>, "NULL"),
    metadata: default!(Option<JsonbArg>, "NULL"),
) -> RawJsonb {
    let (core, caller) = context();
    let user_id = required("user_id", user_id);
    require_caller_for(&caller, user_id);
    let service_type = require_service_type(&core, service_type);
    let preferences = require_object("preferences", preferences);
    let metadata = require_object("metadata", metadata);
    if metadata.is_some() && !caller.is_privileged() {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "service metadata is for the backend (service_role or the owner) only",
            None,
        );
    }
    if !user_exists(&core, user_id) {
        raise(
            PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            format!("user {user_id} does not exist"),
            None,
        );
    }
    let schema = &core.schema;
    written_json(
        &format!(
            "INSERT INTO {schema}.user_service_profiles AS p \
                 (user_id, service_type, service_preferences, service_metadata) \
             SELECT $1, t.service_type, \
                    t.default_preferences OPERATOR(pg_catalog.||) COALESCE($3, '{{}}'::pg_catalog.jsonb), \
                    COALESCE($4, '{{}}'::pg_catalog.jsonb) \
             FROM {schema}.user_service_types t WHERE t.service_type OPERATOR(pg_catalog.=) $2 \
             ON CONFLICT (user_id, service_type) DO UPDATE SET \
                 service_preferences = p.service_preferences \
                     OPERATOR(pg_catalog.||) COALESCE($3, '{{}}'::pg_catalog.jsonb), \
                 service_metadata = p.service_metadata \
                     OPERATOR(pg_catalog.||) COALESCE($4, '{{}}'::pg_catalog.jsonb), \
                 updated_at = pg_catalog.now() \
             RETURNING pg_catalog.to_jsonb(p)"
        ),
        &[
            user_id.into(),
            service_type.into(),
            preferences.into(),
            metadata.into(),
        ],
    )
}

/// Record a use of a service: `last_used_at` now, `usage_stats.uses` + 1. Returns the profile.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_touch_service(user_id: Option<Uuid>, service_type: Option<&str>) -> RawJsonb {
    let (core, caller) = context();
    require_backend(&caller, "nura_touch_service");
    let user_id = required("user_id", user_id);
    let service_type = require_service_type(&core, service_type);
    if !user_exists(&core, user_id) {
        raise(
            PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            format!("user {user_id} does not exist"),
            None,
        );
    }
    let schema = &core.schema;
    written_json(
        &format!(
            "INSERT INTO {schema}.user_service_profiles AS p \
                 (user_id, service_type, service_preferences, usage_stats, last_used_at) \
             SELECT $1, t.service_type, t.default_preferences, '{{\"uses\": 1}}'::pg_catalog.jsonb, \
                    pg_catalog.now() \
             FROM {schema}.user_service_types t WHERE t.service_type OPERATOR(pg_catalog.=) $2 \
             ON CONFLICT (user_id, service_type) DO UPDATE SET \
                 usage_stats = p.usage_stats OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('uses', \
                     COALESCE((p.usage_stats OPERATOR(pg_catalog.->>) 'uses')::pg_catalog.int8, 0) \
                     OPERATOR(pg_catalog.+) 1), \
                 last_used_at = pg_catalog.now(), updated_at = pg_catalog.now() \
             RETURNING pg_catalog.to_jsonb(p)"
        ),
        &[user_id.into(), service_type.into()],
    )
}

/// What one service sees of a user: the query's select list over `u` (users), `p` (the
/// service's profile, possibly missing) and `t` (its service type).
fn service_view(user_id: Uuid, service: &str, select: &str) -> Option<RawJsonb> {
    let (core, caller) = context();
    if !caller.may_act_on(user_id) {
        return None;
    }
    let schema = &core.schema;
    one_json(
        &format!(
            "SELECT {select} FROM {schema}.users u \
             LEFT JOIN {schema}.user_service_profiles p \
                 ON p.user_id OPERATOR(pg_catalog.=) u.id AND p.service_type OPERATOR(pg_catalog.=) $2 \
             LEFT JOIN {schema}.user_service_types t ON t.service_type OPERATOR(pg_catalog.=) $2 \
             WHERE u.id OPERATOR(pg_catalog.=) $1"
        ),
        &[user_id.into(), service.into()],
    )
}

/// The chat service's view: id, email, full_name, privacy_settings, chat_preferences.
#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_user_for_chat(user_id: Uuid) -> Option<RawJsonb> {
    service_view(
        user_id,
        "chat",
        "pg_catalog.jsonb_build_object('id', u.id, 'email', u.email, 'full_name', u.full_name, \
             'privacy_settings', u.privacy_settings, \
             'chat_preferences', COALESCE(p.service_preferences, t.default_preferences, '{}'::pg_catalog.jsonb))",
    )
}

/// The voice service's view: id, name, phone, voice_preferences, call_history.
#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_user_for_voice(user_id: Uuid) -> Option<RawJsonb> {
    service_view(
        user_id,
        "voice",
        "pg_catalog.jsonb_build_object('id', u.id, 'name', COALESCE(u.full_name, u.display_name), \
             'phone', u.phone_number, \
             'voice_preferences', COALESCE(p.service_preferences, t.default_preferences, '{}'::pg_catalog.jsonb), \
             'call_history', COALESCE(p.service_metadata OPERATOR(pg_catalog.->) 'call_history', '[]'::pg_catalog.jsonb))",
    )
}

/// The memory service's view: user_id, privacy_level, memory_preferences, retention_settings.
#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_user_for_memory(user_id: Uuid) -> Option<RawJsonb> {
    service_view(
        user_id,
        "memory",
        "pg_catalog.jsonb_build_object('user_id', u.id, \
             'privacy_level', COALESCE(u.privacy_settings OPERATOR(pg_catalog.->>) 'memory_privacy', 'standard'), \
             'memory_preferences', COALESCE(p.service_preferences, t.default_preferences, '{}'::pg_catalog.jsonb), \
             'retention_settings', COALESCE(p.service_metadata OPERATOR(pg_catalog.->) 'retention_settings', '{}'::pg_catalog.jsonb))",
    )
}

/// Record activity at `at` (default now): the streak follows UTC days. Backend only.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_record_activity(
    user_id: Option<Uuid>,
    at: default!(Option<TimestampWithTimeZone>, "now()"),
) -> JsonB {
    let (core, caller) = context();
    require_backend(&caller, "nura_record_activity");
    let user_id = required("user_id", user_id);
    let Some(at) = at else {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "at must not be NULL",
            None,
        );
    };
    let at = pg_sys::TimestampTz::from(at);
    // An infinite or far-future time would freeze the streak: every later event is "older".
    if at == i64::MAX || at == i64::MIN {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "at must be a finite time",
            None,
        );
    }
    if at > crate::user_row::transaction_now() + crate::payload::MAX_CLOCK_SKEW_US {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "at is more than 5 minutes in the future",
            None,
        );
    }
    match record_activity(&core, user_id, at) {
        Some((streak, last)) => JsonB(json!({
            "current_streak": streak,
            "last_active_at": crate::user_row::ts_json(Some(last)),
        })),
        None => raise(
            PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            format!("user {user_id} does not exist"),
            None,
        ),
    }
}

/// Add `delta` experience points (never below 0); returns the new total. Backend only.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_add_xp(user_id: Option<Uuid>, delta: Option<i32>) -> i32 {
    let (core, caller) = context();
    require_backend(&caller, "nura_add_xp");
    let (user_id, delta) = (required("user_id", user_id), required("delta", delta));
    add_xp(&core, user_id, delta).unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            format!("user {user_id} does not exist"),
            None,
        )
    })
}

/// Activate or deactivate a user (logged through the sync core). Returns the users row.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_set_active(user_id: Option<Uuid>, active: Option<bool>) -> RawJsonb {
    let started = Instant::now();
    let (core, caller) = context();
    require_backend(&caller, "nura_set_active");
    let (user_id, active) = (required("user_id", user_id), required("active", active));
    let mut request = SyncRequest::new(Source::BackendApi, user_id);
    request.is_active = Some(active);
    request.must_exist = true;
    request.load_auth = true;
    match subtxn::run(|| sync::sync_user(&core, &request, started, false)) {
        Ok(Ok(outcome)) => outcome.user.to_jsonb(),
        Ok(Err(refusal)) => refusal.raise(user_id),
        Err(failure) => failure.raise(),
    }
}

/// The current id of the user that legacy table `legacy_table` knew as `any_id` (two tables may
/// have used one uuid for two people; `docs/api.md`). NULL when that table held no such id (or it
/// was unmigratable); an unknown table is 22023.
#[pg_extern(stable, parallel_safe, security_definer, name = "nura_resolve_user_id")]
#[search_path(pg_catalog, pg_temp)]
fn nura_resolve_user_id_in(any_id: Option<&str>, legacy_table: Option<&str>) -> Option<Uuid> {
    let table = required("legacy_table", legacy_table);
    if !crate::migration::Table::ALL
        .iter()
        .any(|t| t.name() == table)
    {
        let shown: String = table.chars().take(64).collect();
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "unknown legacy table \"{shown}\"; legacy tables: chat_users, voice_users, custom_users"
            ),
            None,
        );
    }
    let id = crate::uuid_input::parse(any_id?)?;
    user_of_legacy_id(&extension_schema(), id, table)
}

/// The user whose legacy id of `legacy_table` is `id`, if any (the cutover's view asks it too).
pub(crate) fn user_of_legacy_id(schema: &str, id: Uuid, legacy_table: &str) -> Option<Uuid> {
    crate::plans::read_scalar::<Uuid>(
        &format!(
            "SELECT a.user_id FROM {schema}.user_id_aliases a \
             WHERE a.alias_id OPERATOR(pg_catalog.=) $1 AND a.source OPERATOR(pg_catalog.=) $2"
        ),
        &[id.into(), legacy_table.into()],
    )
    .or_raise("resolving a legacy id")
}

/// The current id of a user, given its current id or a former one (legacy table, adoption).
/// NULL when nothing matches or `any_id` is not a uuid.
#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_resolve_user_id(any_id: Option<&str>) -> Option<Uuid> {
    let id = crate::uuid_input::parse(any_id?)?;
    let core = Core::new(extension_schema());
    let schema = &core.schema;
    crate::plans::read_scalar::<Uuid>(
        &format!(
            "SELECT COALESCE( \
                 (SELECT u.id FROM {schema}.users u WHERE u.id OPERATOR(pg_catalog.=) $1), \
                 (SELECT a.user_id FROM {schema}.user_id_aliases a \
                  WHERE a.alias_id OPERATOR(pg_catalog.=) $1 \
                  ORDER BY CASE a.source WHEN 'adoption' THEN 0 WHEN 'chat_users' THEN 1 \
                                         WHEN 'voice_users' THEN 2 ELSE 3 END, a.created_at \
                  LIMIT 1))"
        ),
        &[id.into()],
    )
    .or_raise("resolving an id")
}

// The counters of a user's row (streak, xp) change by one UPDATE each, outside the sync core:
// they are increments, not values a writer states, and concurrent calls must all apply.

/// `nura_record_activity` (`docs/api.md`): streaks follow UTC days — the same day leaves the
/// streak, the next day adds one, a gap starts again at 1; an event older than the last one changes
/// nothing. One UPDATE, so concurrent calls serialize on the row and none is lost. `None` for an
/// unknown user.
fn record_activity(core: &Core, id: Uuid, at: Micros) -> Option<(i32, Micros)> {
    let schema = &core.schema;
    let day = |col: &str| format!("(({col}) AT TIME ZONE 'UTC')::pg_catalog.date");
    let (at_day, last_day) = (day("$2"), day("u.last_active_at"));
    let sql = format!(
        "UPDATE {schema}.users u SET \
             current_streak = CASE \
                 WHEN u.last_active_at IS NULL THEN 1 \
                 WHEN {at_day} OPERATOR(pg_catalog.=) {last_day} THEN GREATEST(u.current_streak, 1) \
                 WHEN {at_day} OPERATOR(pg_catalog.=) ({last_day} OPERATOR(pg_catalog.+) 1) \
                     THEN u.current_streak OPERATOR(pg_catalog.+) 1 \
                 WHEN {at_day} OPERATOR(pg_catalog.<) {last_day} THEN u.current_streak \
                 ELSE 1 END, \
             last_active_at = GREATEST(u.last_active_at, $2), \
             updated_at = pg_catalog.now() \
         WHERE u.id OPERATOR(pg_catalog.=) $1 \
         RETURNING u.current_streak, u.last_active_at"
    );
    let at = crate::user_row::ts_datum(Some(at));
    plans::first_row(&sql, &[id.into(), at], |row| {
        Ok((
            row.get::<i32>(1)?.unwrap_or(0),
            row.get::<TimestampWithTimeZone>(2)?
                .map(pg_sys::TimestampTz::from)
                .unwrap_or(0),
        ))
    })
    .or_raise("recording activity")
    .inspect(|_| core.notify(id, SyncType::Updated))
}

/// `nura_add_xp` (`docs/api.md`): add `delta` (possibly negative), never below 0 nor above the
/// integer range, in one UPDATE. `None` for an unknown user.
fn add_xp(core: &Core, id: Uuid, delta: i32) -> Option<i32> {
    let schema = &core.schema;
    plans::scalar::<i32>(
        &format!(
            "UPDATE {schema}.users u SET \
                 xp = LEAST(2147483647, GREATEST(0, \
                     u.xp::pg_catalog.int8 OPERATOR(pg_catalog.+) $2::pg_catalog.int8))::pg_catalog.int4, \
                 updated_at = pg_catalog.now() \
             WHERE u.id OPERATOR(pg_catalog.=) $1 RETURNING u.xp"
        ),
        &[id.into(), delta.into()],
    )
    .or_raise("adding xp")
    .inspect(|_| core.notify(id, SyncType::Updated))
}
