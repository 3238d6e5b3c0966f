//! The sync core: the only code that writes `users`.
//!
//! Every writer (today the auth trigger; later `nura_sync_user`, reconcile and the migration) hands
//! it what it knows about a user, and the rules live here once: email normalisation, field
//! ownership (SPEC §3: auth-owned fields are copied, profile fields are filled from metadata only
//! while empty), and what a soft delete clears.

use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use serde_json::Value;

/// Longest values the `users` table accepts (its CHECK constraints say the same).
pub const MAX_EMAIL: usize = 255;
pub const MAX_NAME: usize = 200;
pub const MAX_AVATAR_URL: usize = 2048;
pub const MAX_PHONE: usize = 32;

/// What `auth.users` says about a user: the auth-owned fields of SPEC §3 and the user metadata
/// that fills profile fields.
#[derive(Debug, Clone, Default)]
pub struct AuthUser {
    pub id: Option<Uuid>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub email_confirmed_at: Option<TimestampWithTimeZone>,
    pub phone_confirmed_at: Option<TimestampWithTimeZone>,
    pub last_sign_in_at: Option<TimestampWithTimeZone>,
    pub banned_until: Option<TimestampWithTimeZone>,
    pub is_anonymous: bool,
    pub is_sso_user: bool,
    pub deleted_at: Option<TimestampWithTimeZone>,
    pub user_metadata: Option<Value>,
}

impl AuthUser {
    /// Read the synced columns of an `auth.users` row.
    pub fn from_row(
        row: &PgHeapTuple<'_, impl WhoAllocated>,
    ) -> Result<Self, pgrx::datum::TryFromDatumError> {
        Ok(AuthUser {
            id: row.get_by_name("id")?,
            email: row.get_by_name("email")?,
            phone: row.get_by_name("phone")?,
            email_confirmed_at: row.get_by_name("email_confirmed_at")?,
            phone_confirmed_at: row.get_by_name("phone_confirmed_at")?,
            last_sign_in_at: row.get_by_name("last_sign_in_at")?,
            banned_until: row.get_by_name("banned_until")?,
            is_anonymous: row.get_by_name("is_anonymous")?.unwrap_or(false),
            is_sso_user: row.get_by_name("is_sso_user")?.unwrap_or(false),
            deleted_at: row.get_by_name("deleted_at")?,
            user_metadata: row.get_by_name::<JsonB>("raw_user_meta_data")?.map(|j| j.0),
        })
    }
}

/// The stored form of an email address: surrounding blanks removed, letter case kept. Matching
/// compares `lower()` of this form, so "trim + lower" is the normalized address.
pub fn normalize_email(email: &str) -> Option<String> {
    let trimmed = email.trim();
    (!trimmed.is_empty() && trimmed.chars().count() <= MAX_EMAIL).then(|| trimmed.to_string())
}

/// Profile fields found in user metadata (`raw_user_meta_data`, or a payload's `user_metadata`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataProfile {
    pub full_name: Option<String>,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

/// SPEC §3: `full_name`, else `name`; `display_name`, else `preferred_username`, else `user_name`;
/// `avatar_url`, else `picture`. Only non-blank strings within the column's limit count: a value
/// the table would refuse is skipped rather than allowed to fail a signup.
pub fn profile_from_metadata(metadata: Option<&Value>) -> MetadataProfile {
    let Some(Value::Object(map)) = metadata else {
        return MetadataProfile::default();
    };
    let first = |keys: &[&str], limit: usize| {
        keys.iter().find_map(|k| match map.get(*k) {
            Some(Value::String(s)) => {
                let s = s.trim();
                (!s.is_empty() && s.chars().count() <= limit).then(|| s.to_string())
            }
            _ => None,
        })
    };
    MetadataProfile {
        full_name: first(&["full_name", "name"], MAX_NAME),
        display_name: first(
            &["display_name", "preferred_username", "user_name"],
            MAX_NAME,
        ),
        avatar_url: first(&["avatar_url", "picture"], MAX_AVATAR_URL),
    }
}

/// Bring the `users` row of an auth user in step with `auth.users`: create it, or copy the
/// auth-owned fields and fill empty profile fields. A soft-deleted auth user (deleted_at set;
/// GoTrue has replaced its email and phone with hashes) keeps its row, deactivated, without PII.
pub fn apply_auth_user(schema: &str, user: &AuthUser) {
    let deleted = user.deleted_at.is_some();
    let profile = if deleted {
        MetadataProfile::default()
    } else {
        profile_from_metadata(user.user_metadata.as_ref())
    };
    let email = user
        .email
        .as_deref()
        .filter(|_| !deleted)
        .and_then(normalize_email);
    let phone = user
        .phone
        .as_deref()
        .filter(|_| !deleted)
        .map(str::trim)
        .filter(|p| !p.is_empty() && p.chars().count() <= MAX_PHONE)
        .map(str::to_string);

    // Profile fields: cleared by a soft delete, else kept, else filled from metadata.
    let sql = format!(
        "INSERT INTO {schema}.users AS u (id, email, phone_number, full_name, display_name, \
             avatar_url, email_confirmed_at, phone_confirmed_at, last_sign_in_at, banned_until, \
             is_anonymous, is_sso_user, deleted_at, is_active, auth_synced_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13 IS NULL, pg_catalog.now()) \
         ON CONFLICT (id) DO UPDATE SET \
             email = EXCLUDED.email, \
             phone_number = EXCLUDED.phone_number, \
             full_name = CASE WHEN EXCLUDED.deleted_at IS NULL \
                 THEN COALESCE(u.full_name, EXCLUDED.full_name) END, \
             display_name = CASE WHEN EXCLUDED.deleted_at IS NULL \
                 THEN COALESCE(u.display_name, EXCLUDED.display_name) END, \
             avatar_url = CASE WHEN EXCLUDED.deleted_at IS NULL \
                 THEN COALESCE(u.avatar_url, EXCLUDED.avatar_url) END, \
             bio = CASE WHEN EXCLUDED.deleted_at IS NULL THEN u.bio END, \
             email_confirmed_at = EXCLUDED.email_confirmed_at, \
             phone_confirmed_at = EXCLUDED.phone_confirmed_at, \
             last_sign_in_at = EXCLUDED.last_sign_in_at, \
             banned_until = EXCLUDED.banned_until, \
             is_anonymous = EXCLUDED.is_anonymous, \
             is_sso_user = EXCLUDED.is_sso_user, \
             deleted_at = EXCLUDED.deleted_at, \
             is_active = u.is_active AND EXCLUDED.deleted_at IS NULL, \
             auth_synced_at = EXCLUDED.auth_synced_at, \
             updated_at = pg_catalog.now() \
         WHERE (u.email, u.phone_number, u.email_confirmed_at, u.phone_confirmed_at, \
                u.last_sign_in_at, u.banned_until, u.is_anonymous, u.is_sso_user, u.deleted_at) \
               IS DISTINCT FROM \
               (EXCLUDED.email, EXCLUDED.phone_number, EXCLUDED.email_confirmed_at, \
                EXCLUDED.phone_confirmed_at, EXCLUDED.last_sign_in_at, EXCLUDED.banned_until, \
                EXCLUDED.is_anonymous, EXCLUDED.is_sso_user, EXCLUDED.deleted_at) \
            OR (EXCLUDED.deleted_at IS NULL AND ( \
                   (u.full_name IS NULL AND EXCLUDED.full_name IS NOT NULL) \
                OR (u.display_name IS NULL AND EXCLUDED.display_name IS NOT NULL) \
                OR (u.avatar_url IS NULL AND EXCLUDED.avatar_url IS NOT NULL))) \
            OR (EXCLUDED.deleted_at IS NOT NULL AND (u.full_name, u.display_name, u.avatar_url, \
                u.bio) IS DISTINCT FROM (NULL::text, NULL::text, NULL::text, NULL::text))"
    );
    Spi::run_with_args(
        &sql,
        &[
            user.id.into(),
            email.into(),
            phone.into(),
            profile.full_name.into(),
            profile.display_name.into(),
            profile.avatar_url.into(),
            user.email_confirmed_at.into(),
            user.phone_confirmed_at.into(),
            user.last_sign_in_at.into(),
            user.banned_until.into(),
            user.is_anonymous.into(),
            user.is_sso_user.into(),
            user.deleted_at.into(),
        ],
    )
    .unwrap_or_else(|e| error!("nura_users: sync of auth user failed: {e}"));
}

/// An auth user was deleted: its `users` row goes, and its service profiles with it (cascade).
pub fn remove_auth_user(schema: &str, id: Uuid) {
    Spi::run_with_args(
        &format!("DELETE FROM {schema}.users WHERE id OPERATOR(pg_catalog.=) $1"),
        &[id.into()],
    )
    .unwrap_or_else(|e| error!("nura_users: removing deleted auth user failed: {e}"));
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn email_keeps_case_and_loses_blanks() {
        assert_eq!(
            normalize_email("  Ana@Example.COM "),
            Some("Ana@Example.COM".into())
        );
        assert_eq!(normalize_email("   "), None);
        assert_eq!(normalize_email(&"a".repeat(256)), None);
    }

    #[test]
    fn metadata_names_follow_the_fallback_order() {
        let m = json!({"name": "Ana N", "user_name": "ana", "picture": "https://p/x.png"});
        let p = profile_from_metadata(Some(&m));
        assert_eq!(p.full_name.as_deref(), Some("Ana N"));
        assert_eq!(p.display_name.as_deref(), Some("ana"));
        assert_eq!(p.avatar_url.as_deref(), Some("https://p/x.png"));

        let m = json!({"full_name": "Full", "name": "Name", "display_name": "Disp",
                       "preferred_username": "pref", "avatar_url": "a", "picture": "p"});
        let p = profile_from_metadata(Some(&m));
        assert_eq!(
            (
                p.full_name.as_deref(),
                p.display_name.as_deref(),
                p.avatar_url.as_deref()
            ),
            (Some("Full"), Some("Disp"), Some("a"))
        );
    }

    #[test]
    fn metadata_values_the_table_would_refuse_are_skipped() {
        let long = "x".repeat(MAX_NAME + 1);
        let m = json!({"full_name": long, "name": "Short", "display_name": 42,
                       "preferred_username": "  ", "avatar_url": null});
        let p = profile_from_metadata(Some(&m));
        assert_eq!(p.full_name.as_deref(), Some("Short"));
        assert_eq!(p.display_name, None);
        assert_eq!(p.avatar_url, None);
        assert_eq!(
            profile_from_metadata(Some(&json!([1, 2]))),
            MetadataProfile::default()
        );
        assert_eq!(profile_from_metadata(None), MetadataProfile::default());
    }
}
