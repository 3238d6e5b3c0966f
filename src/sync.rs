//! The sync core: the only code that writes a user's row, one user at a time.
//!
//! Every writer (the auth trigger, `nura_sync_user`, reconcile, profile edits) describes what it
//! knows about one user as a [`SyncRequest`]; [`sync_user`] applies the rules once: email
//! normalisation, field ownership (`docs/sync.md`: what `auth.users` says wins; profile fields are
//! filled from metadata only while empty), adoption of a row with the same email, stale detection,
//! change detection, the log row and the notification.
//!
//! Concurrency: a sync locks its user's row and no other (but the row it adopts); creation races
//! are settled by `INSERT … ON CONFLICT DO NOTHING` and a retry, email races by the unique index.
//! No advisory locks: a transaction that writes many auth users (an import) holds no lock per user
//! beyond the row locks PostgreSQL keeps in the tuples themselves.
//!
//! The legacy migration (`migration.rs`) is the one bulk writer: it builds rows with this module's
//! rules ([`desired_row`] for auth users), sends the rows it cannot place set-based (adoptions)
//! through [`sync_user`], and writes the rest a batch per statement.

use crate::errors::{Error, OrRaise};
use crate::log::{self, log_payloads};
use crate::plans;
use crate::settings;
use crate::subtxn;
use crate::user_row::{transaction_now, Micros, UserRow, UserSql, BOOKKEEPING};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::Uuid;
use serde_json::{json, Map, Value};
use std::time::Instant;

use crate::log::{LogEntry, Source, SyncType};

/// Longest values the `users` table accepts (its domain constraints say the same).
pub const MAX_EMAIL: usize = 255;
pub const MAX_NAME: usize = 200;
pub const MAX_BIO: usize = 2000;
pub const MAX_AVATAR_URL: usize = 2048;
pub const MAX_PHONE: usize = 32;

/// What `auth.users` says about a user: the auth-owned fields of `docs/sync.md` and the user
/// metadata.
#[derive(Debug, Clone, Default)]
pub struct AuthUser {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub email_confirmed_at: Option<Micros>,
    pub phone_confirmed_at: Option<Micros>,
    pub last_sign_in_at: Option<Micros>,
    pub banned_until: Option<Micros>,
    pub is_anonymous: bool,
    pub is_sso_user: bool,
    pub deleted_at: Option<Micros>,
    /// The profile names in `raw_user_meta_data`: all the sync reads of it (see [`Metadata`]).
    pub metadata: MetadataProfile,
    /// This auth write removed the phone (an UPDATE from one `users` would store to none): the
    /// users row loses it too. Otherwise an auth row without one leaves the users row's own
    /// (see [`apply_auth`]).
    pub phone_removed: bool,
}

/// The columns of `auth.users` that the sync reads, named so that they cannot collide with the
/// columns of `users` in a join (`a` is the alias of `auth.users`).
pub const AUTH_SELECT: &str = "a.email::text AS auth_email, a.phone AS auth_phone, \
     a.email_confirmed_at AS auth_email_confirmed_at, a.phone_confirmed_at AS auth_phone_confirmed_at, \
     a.last_sign_in_at AS auth_last_sign_in_at, a.banned_until AS auth_banned_until, \
     a.is_anonymous AS auth_is_anonymous, a.is_sso_user AS auth_is_sso_user, \
     a.deleted_at AS auth_deleted_at, a.raw_user_meta_data AS auth_user_metadata";

/// How many columns [`AUTH_SELECT`] selects.
pub const AUTH_COLUMNS: usize = 10;

fn ts_of(v: Option<TimestampWithTimeZone>) -> Option<Micros> {
    v.map(pg_sys::TimestampTz::from)
}

impl AuthUser {
    /// Read the synced columns from a query that selects [`AUTH_SELECT`] first.
    pub fn from_spi(t: &pgrx::spi::SpiHeapTupleData<'_>) -> pgrx::spi::Result<Self> {
        Self::from_spi_at(t, 1)
    }

    /// Read the synced columns from a query that selects [`AUTH_SELECT`] from column `first`
    /// (1-based) on, by position (as [`UserRow::from_tuple_at`]).
    pub fn from_spi_at(
        t: &pgrx::spi::SpiHeapTupleData<'_>,
        first: usize,
    ) -> pgrx::spi::Result<Self> {
        let at = |i: usize| first + i;
        Ok(AuthUser {
            email: t.get::<String>(at(0))?,
            phone: t.get::<String>(at(1))?,
            email_confirmed_at: ts_of(t.get(at(2))?),
            phone_confirmed_at: ts_of(t.get(at(3))?),
            last_sign_in_at: ts_of(t.get(at(4))?),
            banned_until: ts_of(t.get(at(5))?),
            is_anonymous: t.get::<bool>(at(6))?.unwrap_or(false),
            is_sso_user: t.get::<bool>(at(7))?.unwrap_or(false),
            deleted_at: ts_of(t.get(at(8))?),
            metadata: t.get::<Metadata>(at(9))?.map(|m| m.0).unwrap_or_default(),
            phone_removed: false,
        })
    }

    /// The auth row of `id`, if `auth.users` exists and holds it.
    pub fn load(id: Uuid) -> Option<AuthUser> {
        if !auth_users_exists() {
            return None;
        }
        plans::first_row(
            &format!("SELECT {AUTH_SELECT} FROM auth.users a WHERE a.id OPERATOR(pg_catalog.=) $1"),
            &[id.into()],
            AuthUser::from_spi,
        )
        .or_raise("reading auth.users")
    }
}

/// Whether `id` has an account in `auth.users`; true where there is no `auth.users` at all
/// (plain PostgreSQL). A read-only check, as the caller checks run before anything is written.
pub fn auth_account_exists(id: Uuid) -> bool {
    !auth_users_exists()
        || plans::read_scalar::<bool>(
            "SELECT EXISTS (SELECT FROM auth.users a WHERE a.id OPERATOR(pg_catalog.=) $1)",
            &[id.into()],
        )
        .or_raise("reading auth.users")
        .unwrap_or(false)
}

/// Whether `auth.users` exists (two catalog-cache lookups, no query).
pub fn auth_users_exists() -> bool {
    // SAFETY: catalog cache lookups with missing_ok; InvalidOid when absent.
    unsafe {
        let auth = pg_sys::get_namespace_oid(c"auth".as_ptr(), true);
        auth != pg_sys::InvalidOid
            && pg_sys::get_relname_relid(c"users".as_ptr(), auth) != pg_sys::InvalidOid
    }
}

/// The stored form of an email address: surrounding blanks removed, letter case kept. Matching
/// compares [`email_key`] of this form, so "trim + lower" is the normalized address.
pub fn normalize_email(email: &str) -> Option<String> {
    let trimmed = email.trim();
    (!trimmed.is_empty() && trimmed.chars().count() <= MAX_EMAIL).then(|| trimmed.to_string())
}

/// The case-folded form under which addresses are matched: PostgreSQL's own `lower()` in the
/// database's default collation, the function the unique index `users_email_lower_key` is built
/// on. Rust's `to_lowercase` differs from it (a word-final Σ, the Turkish İ, any locale's own
/// rules), and a match the index disagrees with is either a missed adoption or a unique
/// violation; so every path, SQL or Rust, folds through this one function.
pub fn email_key(email: &str) -> String {
    // SAFETY: `lower` takes one text in the given collation and returns a new text; the text
    // made from `email` (its bytes, no NUL needed), the result and its C string are palloc'd
    // here and freed after the copy.
    unsafe {
        let text = pg_sys::cstring_to_text_with_len(email.as_ptr().cast(), email.len() as i32);
        let folded = pg_sys::DirectFunctionCall1Coll(
            Some(lower_fmgr),
            pg_sys::DEFAULT_COLLATION_OID,
            pg_sys::Datum::from(text),
        );
        let out = pg_sys::text_to_cstring(folded.cast_mut_ptr());
        let key = std::ffi::CStr::from_ptr(out).to_string_lossy().into_owned();
        pg_sys::pfree(out.cast());
        pg_sys::pfree(folded.cast_mut_ptr());
        pg_sys::pfree(text.cast());
        key
    }
}

extern "C-unwind" {
    /// PostgreSQL's `lower(text)` as fmgr calls it (pgrx binds only a Rust wrapper of it); called
    /// only through `DirectFunctionCall1Coll`, whose guard turns an ERROR into a Rust panic.
    #[link_name = "lower"]
    fn lower_fmgr(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
}

/// Two addresses are the same when their normalized forms have the same [`email_key`].
pub fn same_email(a: Option<&str>, b: Option<&str>) -> bool {
    let (a, b) = (a.and_then(normalize_email), b.and_then(normalize_email));
    match (&a, &b) {
        // The same text folds the same: the usual case (an address that did not change) needs
        // no call of lower().
        (Some(x), Some(y)) if x == y => true,
        (Some(x), Some(y)) => email_key(x) == email_key(y),
        _ => a == b,
    }
}

/// Phone numbers are kept as GoTrue stores them: digits, without a leading `+`. One longer than
/// the column holds (auth.users.phone is unbounded text) is not kept: it must not fail the
/// user's sync, and with it a ban or a deletion.
pub fn normalize_phone(phone: &str) -> Option<String> {
    let trimmed = phone.trim();
    let digits = trimmed.strip_prefix('+').unwrap_or(trimmed);
    (!digits.is_empty() && digits.chars().count() <= MAX_PHONE).then(|| digits.to_string())
}

/// Profile fields found in user metadata (`raw_user_meta_data`, or a payload's `user_metadata`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataProfile {
    pub full_name: Option<String>,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

/// `docs/sync.md`: `full_name`, else `name`; `display_name`, else `preferred_username`, else
/// `user_name`; `avatar_url`, else `picture`. Only non-blank strings within the column's limit
/// count: a value the table would refuse is skipped rather than allowed to fail a signup.
pub fn profile_from_metadata(metadata: Option<&Value>) -> MetadataProfile {
    let Some(Value::Object(map)) = metadata else {
        return MetadataProfile::default();
    };
    profile_from(|k| map.get(k).and_then(Value::as_str).map(str::to_string))
}

/// The keys of user metadata that the sync reads (see [`profile_from_metadata`]).
pub const METADATA_KEYS: [&str; 7] = [
    "full_name",
    "name",
    "display_name",
    "preferred_username",
    "user_name",
    "avatar_url",
    "picture",
];

/// [`profile_from_metadata`] over a lookup of the string stored under a key.
pub fn profile_from(string_at: impl Fn(&str) -> Option<String>) -> MetadataProfile {
    let first = |keys: &[&str], limit: usize| {
        keys.iter().find_map(|k| {
            let s = string_at(k)?;
            let s = s.trim();
            (!s.is_empty() && s.chars().count() <= limit).then(|| s.to_string())
        })
    };
    let [full_name, name, display_name, preferred_username, user_name, avatar_url, picture] =
        METADATA_KEYS;
    MetadataProfile {
        full_name: first(&[full_name, name], MAX_NAME),
        display_name: first(&[display_name, preferred_username, user_name], MAX_NAME),
        avatar_url: first(&[avatar_url, picture], MAX_AVATAR_URL),
    }
}

/// User metadata (`raw_user_meta_data`, a payload's `user_metadata`) read as a column or an
/// argument: only the keys of [`profile_from_metadata`] are looked up in the stored jsonb, so
/// nothing else in it, of any size or depth, is read or can fail a sync (a user controls it
/// through GoTrue's `signUp` and `updateUser`).
pub struct Metadata(pub MetadataProfile);

impl Metadata {
    pub fn of(container: crate::jsonb::Container<'_>) -> MetadataProfile {
        profile_from(|k| container.string_member(k))
    }
}

impl FromDatum for Metadata {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Metadata> {
        // SAFETY: a non-null jsonb column value; the container is used within the call only.
        (!is_null).then(|| Metadata(unsafe { crate::jsonb::with_container(datum, Metadata::of) }))
    }
}

impl IntoDatum for Metadata {
    /// Read-only: the names are never written back as the column (the trait is what pgrx asks
    /// of a type read from a row).
    fn into_datum(self) -> Option<pg_sys::Datum> {
        None
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

// SAFETY: reads a jsonb datum through FromDatum above.
unsafe impl pgrx::datum::UnboxDatum for Metadata {
    type As<'src> = Metadata;

    unsafe fn unbox<'src>(d: pgrx::datum::Datum<'src>) -> Self::As<'src>
    where
        Self: 'src,
    {
        unsafe { Metadata::from_datum(d.sans_lifetime(), false) }
            .unwrap_or(Metadata(MetadataProfile::default()))
    }
}

/// A field a writer may give: `None` = not given, `Some(None)` = clear it, `Some(Some(v))` = set.
pub type Given<T> = Option<Option<T>>;

/// What a writer asks of the core for one user.
#[derive(Debug, Clone)]
pub struct SyncRequest {
    pub source: Source,
    pub id: Uuid,
    /// The user's `auth.users` row, when it has one: its fields win (`docs/sync.md`).
    pub auth: Option<AuthUser>,
    /// Auth-owned fields a caller states; applied only to users without an auth row.
    pub email: Given<String>,
    pub phone_number: Given<String>,
    /// Fields the user edits.
    pub full_name: Given<String>,
    pub display_name: Given<String>,
    pub bio: Given<String>,
    pub avatar_url: Given<String>,
    /// Merged into `privacy_settings` (top-level keys); `Some(None)` resets it to `{}`.
    pub privacy_settings: Given<Map<String, Value>>,
    /// Backend-owned: activate or deactivate (`docs/sync.md`).
    pub is_active: Option<bool>,
    /// Refuse with `NotFound` instead of creating the user.
    pub must_exist: bool,
    /// A new auth user (the INSERT trigger): its own row and the row holding its email are read
    /// together.
    pub signup: bool,
    /// A signup's first try, in [`run_in_subtxn`]: insert without ON CONFLICT and raise 23505
    /// when the id or the email is taken (`run_in_subtxn` then runs the sync again without it).
    /// Off, a signup inserts with ON CONFLICT DO NOTHING and takes the full path on a conflict.
    pub plain_insert: bool,
    /// Read `auth` from `auth.users` once the users row is locked (writers outside the auth
    /// transaction; the trigger passes the row it fired for).
    pub load_auth: bool,
    /// Fills empty profile fields (as `raw_user_meta_data` does for auth users).
    pub user_metadata: Option<MetadataProfile>,
    /// The payload's `updated_at`: older than the row's `source_updated_at` means stale.
    pub updated_at: Option<Micros>,
    pub request_id: Option<String>,
    pub session_id: Option<String>,
}

impl SyncRequest {
    pub fn new(source: Source, id: Uuid) -> Self {
        SyncRequest {
            source,
            id,
            auth: None,
            email: None,
            phone_number: None,
            full_name: None,
            display_name: None,
            bio: None,
            avatar_url: None,
            privacy_settings: None,
            is_active: None,
            must_exist: false,
            signup: false,
            plain_insert: false,
            load_auth: false,
            user_metadata: None,
            updated_at: None,
            request_id: None,
            session_id: None,
        }
    }

    /// The address the user will hold after this sync, as far as the request decides it.
    fn target_email(&self) -> Option<String> {
        match &self.auth {
            Some(auth) if auth.deleted_at.is_none() => {
                auth.email.as_deref().and_then(normalize_email)
            }
            Some(_) => None,
            None => self
                .email
                .clone()
                .flatten()
                .as_deref()
                .and_then(normalize_email),
        }
    }
}

/// The result of a sync that went through.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub sync_type: SyncType,
    pub user: UserRow,
    pub ignored_fields: Vec<&'static str>,
}

/// A sync the core refused before writing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Another user holds the email (in any letter case).
    Conflict { other_user: Uuid },
    /// The request may only change an existing user, and there is none.
    NotFound,
    /// The request changes some keys of a `privacy_settings` that cannot be read
    /// ([`crate::user_row::UNREADABLE`]): only a whole new value may replace it.
    UnreadablePrivacy,
}

impl Refusal {
    /// The refusal as an error, for writers that have no result object to report it in.
    pub fn error(&self, id: Uuid) -> Error {
        match self {
            Refusal::Conflict { other_user } => Error::conflict(
                "email",
                format!("the email of user {id} is already held by user {other_user}"),
            ),
            Refusal::NotFound => Error::not_found("user_id", format!("user {id} does not exist")),
            Refusal::UnreadablePrivacy => Error::invalid(
                "privacy_settings",
                format!(
                    "the stored privacy_settings of user {id} nests deeper than {} levels: it can \
                     only be replaced whole (null resets it to {{}})",
                    crate::jsonb::MAX_DEPTH
                ),
            ),
        }
    }

    pub fn raise(&self, id: Uuid) -> ! {
        self.error(id).raise()
    }
}

/// The extension's schema and the SQL the core runs there.
pub struct Core {
    pub schema: String,
    sql: std::rc::Rc<UserSql>,
}

/// A narrowed UPDATE's schema, changed column positions and whether it writes a log row.
type NarrowKey = (String, Vec<usize>, bool);

/// How many narrowed UPDATE statements (sets of changed columns) a backend keeps.
const NARROW_STATEMENTS: usize = 64;

thread_local! {
    /// [`UserSql::update_columns`] per schema, set of changed columns and logging, built once.
    static NARROW_SQL: std::cell::RefCell<std::collections::HashMap<NarrowKey, String>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
    /// The SQL texts per schema, built once per backend.
    static USER_SQL: std::cell::RefCell<std::collections::HashMap<String, std::rc::Rc<UserSql>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

impl Core {
    pub fn new(schema: String) -> Self {
        let sql = USER_SQL.with_borrow_mut(|cache| match cache.get(&schema) {
            Some(sql) => sql.clone(),
            None => cache
                .entry(schema.clone())
                .or_insert_with(|| std::rc::Rc::new(UserSql::new(&schema)))
                .clone(),
        });
        Core { schema, sql }
    }

    /// For a signup: the row of `id` and the non-SSO row holding `email`, in one locked read
    /// (a new auth user rarely has a row of its own; the holder is what it may adopt).
    fn user_and_email_holder(&self, id: Uuid, email: &str) -> (Option<UserRow>, Option<UserRow>) {
        let mut own = None;
        let mut holder = None;
        for row in plans::rows(
            &self.sql.select_by_id_or_email_for_update,
            &[id.into(), email.into()],
            UserRow::from_tuple,
        )
        .or_raise("reading users")
        {
            if row.id == id {
                own = Some(row);
            } else {
                holder = Some(row);
            }
        }
        if holder.is_none()
            && own
                .as_ref()
                .is_some_and(|r| same_email(r.email.as_deref(), Some(email)) && !r.is_sso_user)
        {
            holder = own.clone();
        }
        (own, holder)
    }

    /// Insert a new user, its `auto_create` profiles and its log row in one statement. A taken id
    /// or email: with `plain`, ERROR 23505 (the caller's subtransaction is rolled back, see
    /// [`run_in_subtxn`]); without, nothing written and false.
    fn insert_new_user(&self, row: &UserRow, log: &LogEntry, plain: bool) -> bool {
        let mut args = row.datums();
        args.extend(log.values_after_user_id());
        let sql = if plain {
            &self.sql.insert_new_user_plain
        } else {
            &self.sql.insert_new_user
        };
        plans::scalar::<bool>(sql, &args)
            .or_raise("inserting user")
            .unwrap_or(false)
    }

    fn select_one(&self, sql: &str, args: &[DatumWithOid<'_>]) -> Option<UserRow> {
        plans::first_row(sql, args, UserRow::from_tuple).or_raise("reading users")
    }

    /// The row of `id`, locked.
    pub fn user_for_update(&self, id: Uuid) -> Option<UserRow> {
        self.select_one(&self.sql.select_by_id, &[id.into()])
    }

    /// The non-SSO row holding `email`, locked: from `known` when an earlier read of this sync
    /// found it, else read (and kept in `known` for the conflict check).
    fn holder_of(&self, email: &str, known: &mut Option<Option<UserRow>>) -> Option<UserRow> {
        known
            .get_or_insert_with(|| self.user_by_email(email, true))
            .clone()
    }

    /// The non-SSO row holding `email` in any letter case, locked when `lock`.
    fn user_by_email(&self, email: &str, lock: bool) -> Option<UserRow> {
        let sql = if lock {
            &self.sql.select_by_email_for_update
        } else {
            &self.sql.select_by_email
        };
        self.select_one(sql, &[email.into()])
    }

    /// Write `row` over `base` (the row keyed `key` as it was read, locked), with its log row in
    /// the same statement; false when there is no such row (any more). Only the columns that
    /// differ from `base` are written.
    fn update_logged(
        &self,
        key: Uuid,
        base: &UserRow,
        row: &UserRow,
        log: Option<&LogEntry>,
    ) -> bool {
        let positions = row.differing_columns(base);
        // A statement per set of changed columns, each with its kept plan: at most
        // NARROW_STATEMENTS sets per backend, then the whole row (memory stays bounded whatever
        // mix of changes a backend sees).
        let narrow = if positions.is_empty() {
            None
        } else {
            NARROW_SQL.with_borrow_mut(|cache| {
                let key = (self.schema.clone(), positions.clone(), log.is_some());
                if !cache.contains_key(&key) && cache.len() >= NARROW_STATEMENTS {
                    return None;
                }
                let sql = cache
                    .entry(key)
                    .or_insert_with_key(|(schema, positions, logged)| {
                        UserSql::update_columns(schema, positions, *logged)
                    });
                Some(sql.clone())
            })
        };
        let mut args: Vec<DatumWithOid<'static>> = vec![key.into()];
        let sql = match narrow {
            Some(sql) => {
                args.extend(positions.iter().map(|&i| row.datum_at(i)));
                sql
            }
            None => {
                args.extend(row.datums());
                match log {
                    Some(_) => self.sql.update_logged.clone(),
                    None => self.sql.update.clone(),
                }
            }
        };
        if let Some(log) = log {
            args.extend(log.values_after_user_id());
        }
        plans::scalar::<bool>(&sql, &args)
            .or_raise("updating user")
            .unwrap_or(false)
    }

    /// A sign-in: only `last_sign_in_at` changes. One UPDATE, no read; false when the user has
    /// no row (the caller then runs the full sync, which creates it).
    pub fn record_sign_in(&self, id: Uuid, at: Option<Micros>) -> bool {
        plans::execute_count(
            &self.sql.sign_in,
            &[id.into(), crate::user_row::ts_datum(at)],
        )
        .or_raise("recording a sign-in")
            > 0
    }

    /// Give new users the profiles of every `auto_create` service type (one statement for any
    /// number of users: a signup's one, or a batch of the migration's backfill).
    pub fn create_default_profiles(&self, ids: &[Uuid]) {
        if ids.is_empty() {
            return;
        }
        let schema = &self.schema;
        plans::execute(
            &format!(
                "INSERT INTO {schema}.user_service_profiles (user_id, service_type, service_preferences) \
                 SELECT x.id, t.service_type, t.default_preferences \
                 FROM pg_catalog.unnest($1::uuid[]) x(id) CROSS JOIN {schema}.user_service_types t \
                 WHERE t.auto_create ON CONFLICT (user_id, service_type) DO NOTHING"
            ),
            &[ids.to_vec().into()],
        )
        .or_raise("creating service profiles");
    }

    fn record_alias(&self, alias: Uuid, user: Uuid, source: &str) {
        let schema = &self.schema;
        plans::execute(
            &format!(
                "INSERT INTO {schema}.user_id_aliases (alias_id, source, user_id) VALUES ($1, $2, $3) \
                 ON CONFLICT (alias_id, source) DO UPDATE SET user_id = EXCLUDED.user_id"
            ),
            &[alias.into(), source.into(), user.into()],
        )
        .or_raise("recording alias");
    }

    /// Merge user `from` into `into` (an adoption by a user who has a row, see [`merge_rows`]):
    /// its profiles move, or fill the keys that `into`'s profile of the same service lacks; its
    /// aliases and log history follow; an alias keeps its old id resolving; then its row goes.
    fn absorb(&self, from: Uuid, into: Uuid) {
        let schema = &self.schema;
        let profiles = format!("{schema}.user_service_profiles");
        // The migration keeps each legacy row's other columns under service_metadata.legacy,
        // keyed by its id: both users' entries are kept. Uses add up.
        let legacy = "(CASE WHEN pg_catalog.jsonb_typeof(p.service_metadata OPERATOR(pg_catalog.->) 'legacy') \
                               OPERATOR(pg_catalog.=) 'object' \
                            AND pg_catalog.jsonb_typeof(q.service_metadata OPERATOR(pg_catalog.->) 'legacy') \
                               OPERATOR(pg_catalog.=) 'object' \
                       THEN pg_catalog.jsonb_build_object('legacy', \
                            (p.service_metadata OPERATOR(pg_catalog.->) 'legacy') \
                            OPERATOR(pg_catalog.||) (q.service_metadata OPERATOR(pg_catalog.->) 'legacy')) \
                       ELSE '{}'::pg_catalog.jsonb END)";
        let uses = "(CASE WHEN pg_catalog.jsonb_typeof(p.usage_stats OPERATOR(pg_catalog.->) 'uses') \
                             OPERATOR(pg_catalog.=) 'number' \
                          AND pg_catalog.jsonb_typeof(q.usage_stats OPERATOR(pg_catalog.->) 'uses') \
                             OPERATOR(pg_catalog.=) 'number' \
                     THEN pg_catalog.jsonb_build_object('uses', \
                          (p.usage_stats OPERATOR(pg_catalog.->>) 'uses')::pg_catalog.numeric \
                          OPERATOR(pg_catalog.+) (q.usage_stats OPERATOR(pg_catalog.->>) 'uses')::pg_catalog.numeric) \
                     ELSE '{}'::pg_catalog.jsonb END)";
        let statements = [
            format!(
                "UPDATE {profiles} q SET \
                     service_preferences = p.service_preferences OPERATOR(pg_catalog.||) q.service_preferences, \
                     service_metadata = p.service_metadata OPERATOR(pg_catalog.||) q.service_metadata \
                         OPERATOR(pg_catalog.||) {legacy}, \
                     usage_stats = p.usage_stats OPERATOR(pg_catalog.||) q.usage_stats \
                         OPERATOR(pg_catalog.||) {uses}, \
                     created_at = LEAST(p.created_at, q.created_at), \
                     last_used_at = GREATEST(p.last_used_at, q.last_used_at), \
                     updated_at = pg_catalog.now() \
                 FROM {profiles} p \
                 WHERE p.user_id OPERATOR(pg_catalog.=) $1 AND q.user_id OPERATOR(pg_catalog.=) $2 \
                   AND q.service_type OPERATOR(pg_catalog.=) p.service_type"
            ),
            format!(
                "DELETE FROM {profiles} p WHERE p.user_id OPERATOR(pg_catalog.=) $1 \
                   AND EXISTS (SELECT FROM {profiles} q WHERE q.user_id OPERATOR(pg_catalog.=) $2 \
                               AND q.service_type OPERATOR(pg_catalog.=) p.service_type)"
            ),
            format!("UPDATE {profiles} SET user_id = $2 WHERE user_id OPERATOR(pg_catalog.=) $1"),
            format!(
                "UPDATE {schema}.user_id_aliases SET user_id = $2 \
                 WHERE user_id OPERATOR(pg_catalog.=) $1"
            ),
        ];
        for sql in &statements {
            plans::execute(sql, &[from.into(), into.into()])
                .or_raise(&format!("merging user {from}"));
        }
        self.rekey_logs(from, into);
        self.record_alias(from, into, "adoption");
        // References a cutover moved to users would follow the delete (docs/cutover.md).
        crate::cutover::repoint(schema, from, into);
        plans::execute(
            &format!("DELETE FROM {schema}.users WHERE id OPERATOR(pg_catalog.=) $1"),
            &[from.into()],
        )
        .or_raise(&format!("merging user {from}"));
    }

    fn rekey_logs(&self, from: Uuid, to: Uuid) {
        log::rekey(&self.schema, from, to);
    }

    /// Remove personal data from the log rows of `id` (delete, soft delete, erasure), and the
    /// values of the migration issues naming it; returns how many log rows changed.
    pub fn scrub_log_pii(&self, id: Uuid) -> i64 {
        crate::migration::scrub_issue_values(&self.schema, &[id]);
        log::scrub_pii(&self.schema, &[id])
    }

    /// Remove personal data from the log rows of `ids` (the users a migration's rollback removes;
    /// the issues of that run stay as they were, the run's record); returns how many rows changed.
    pub fn scrub_logs_pii(&self, ids: &[Uuid]) -> i64 {
        log::scrub_pii(&self.schema, ids)
    }

    /// Write one log row.
    pub fn log(&self, entry: &LogEntry) {
        log::write(&self.sql.insert_log, entry);
    }

    /// Write many log rows in one statement (the migration's batches and its rollback).
    pub fn log_many(&self, entries: &[LogEntry]) {
        log::write_many(&self.schema, entries);
    }

    /// `NOTIFY nura_users_changes` with `{id, op}`, when `nura_users.notify` is on. NOTIFY is
    /// transactional: listeners hear only of committed changes.
    pub fn notify(&self, id: Uuid, op: SyncType) {
        if !settings::NOTIFY.get() {
            return;
        }
        let payload = json!({"id": id.to_string(), "op": op.as_str()}).to_string();
        plans::execute(
            "SELECT pg_catalog.pg_notify('nura_users_changes', $1)",
            &[payload.into()],
        )
        .or_raise("notify");
    }
}

/// The log row of a request's sync that went through (with the request's ids).
fn request_log(
    req: &SyncRequest,
    user_id: Uuid,
    sync_type: SyncType,
    changed_fields: Vec<&'static str>,
    payloads: (Option<Value>, Option<Value>),
    started: Instant,
) -> LogEntry {
    LogEntry::success(
        req.source,
        user_id,
        sync_type,
        changed_fields,
        payloads,
        started,
    )
    .with_ids(req.request_id.clone(), req.session_id.clone())
}

fn set_given(field: &mut Option<String>, given: &Given<String>) {
    if let Some(value) = given {
        *field = value.clone();
    }
}

/// Apply what `auth.users` says (`docs/sync.md`) to `row`.
fn apply_auth(row: &mut UserRow, auth: &AuthUser) {
    if auth.deleted_at.is_some() {
        // GoTrue's soft delete has replaced email and phone with hashes: keep no personal data.
        row.email = None;
        row.phone_number = None;
        row.full_name = None;
        row.display_name = None;
        row.bio = None;
        row.avatar_url = None;
        row.is_active = false;
    } else {
        // The email is auth's, always: it is what matches users, and a row keeping one that auth
        // no longer has would hold the address (unique) against the next user given it. The
        // phone is auth's where auth has one; where it has none, the row keeps its own (the phone
        // of an adopted, migrated row), unless this auth write is what removed it.
        row.email = auth.email.as_deref().and_then(normalize_email);
        match auth.phone.as_deref().and_then(normalize_phone) {
            Some(phone) => row.phone_number = Some(phone),
            None if auth.phone_removed => row.phone_number = None,
            None => {}
        }
    }
    row.email_confirmed_at = auth.email_confirmed_at;
    row.phone_confirmed_at = auth.phone_confirmed_at;
    row.last_sign_in_at = auth.last_sign_in_at;
    row.banned_until = auth.banned_until;
    row.is_anonymous = auth.is_anonymous;
    row.is_sso_user = auth.is_sso_user;
    row.deleted_at = auth.deleted_at;
}

/// Fill empty profile fields from metadata, except those the request sets or clears itself.
fn fill_from_metadata(row: &mut UserRow, metadata: Option<&MetadataProfile>, req: &SyncRequest) {
    let Some(found) = metadata.cloned() else {
        return;
    };
    for (field, value, given) in [
        (&mut row.full_name, found.full_name, req.full_name.is_some()),
        (
            &mut row.display_name,
            found.display_name,
            req.display_name.is_some(),
        ),
        (
            &mut row.avatar_url,
            found.avatar_url,
            req.avatar_url.is_some(),
        ),
    ] {
        if field.is_none() && !given {
            *field = value;
        }
    }
}

/// The row as the request wants it, from `base` (the current row, the adopted row, or a new one),
/// and the fields the request gave but may not change.
pub fn desired_row(base: &UserRow, req: &SyncRequest, now: Micros) -> (UserRow, Vec<&'static str>) {
    let mut row = base.clone();
    row.id = req.id;
    let mut ignored = Vec::new();
    let deleted = req
        .auth
        .as_ref()
        .map_or(row.deleted_at.is_some(), |a| a.deleted_at.is_some());

    match &req.auth {
        Some(auth) => {
            apply_auth(&mut row, auth);
            // Auth owns email and phone: a caller's different value is reported, not applied.
            if let Some(claimed) = &req.email {
                if !same_email(claimed.as_deref(), row.email.as_deref()) {
                    ignored.push("email");
                }
            }
            if let Some(claimed) = &req.phone_number {
                if claimed.as_deref().and_then(normalize_phone) != row.phone_number {
                    ignored.push("phone_number");
                }
            }
        }
        None => {
            if let Some(email) = &req.email {
                row.email = email.as_deref().and_then(normalize_email);
            }
            if let Some(phone) = &req.phone_number {
                row.phone_number = phone.as_deref().and_then(normalize_phone);
            }
        }
    }

    let edits = [
        ("full_name", &req.full_name),
        ("display_name", &req.display_name),
        ("bio", &req.bio),
        ("avatar_url", &req.avatar_url),
    ];
    if deleted {
        // A soft-deleted user keeps no personal data; edits are reported as ignored.
        ignored.extend(edits.iter().filter(|(_, g)| g.is_some()).map(|(f, _)| *f));
        if req.privacy_settings.is_some() {
            ignored.push("privacy_settings");
        }
    } else {
        match &req.privacy_settings {
            None => {}
            Some(None) => row.privacy_settings = Value::Object(Map::new()),
            Some(Some(changes)) => {
                let mut merged = match &row.privacy_settings {
                    Value::Object(current) => current.clone(),
                    _ => Map::new(),
                };
                merged.extend(changes.clone());
                row.privacy_settings = Value::Object(merged);
            }
        }
        set_given(&mut row.full_name, &req.full_name);
        set_given(&mut row.display_name, &req.display_name);
        set_given(&mut row.bio, &req.bio);
        set_given(&mut row.avatar_url, &req.avatar_url);
        // Auth's metadata fills names when auth writes (or reconcile repairs) and for a new row;
        // another writer's sync or edit does not pull it in again (a cleared name stays clear).
        let auth_side = matches!(req.source, Source::SupabaseAuth | Source::Reconcile)
            || base.created_at == Some(now);
        let metadata = req.user_metadata.as_ref().or(req
            .auth
            .as_ref()
            .filter(|_| auth_side)
            .map(|a| &a.metadata));
        fill_from_metadata(&mut row, metadata, req);
    }

    if let Some(active) = req.is_active {
        row.is_active = active && row.deleted_at.is_none();
    }
    if let Some(at) = req.updated_at {
        row.source_updated_at = Some(row.source_updated_at.map_or(at, |cur| cur.max(at)));
    }
    if req.auth.is_some() {
        row.auth_synced_at = Some(now);
    }
    (row, ignored)
}

/// The fields of `users` that `auth.users` owns (`docs/sync.md`).
pub const AUTH_OWNED: &[&str] = &[
    "email",
    "phone_number",
    "email_confirmed_at",
    "phone_confirmed_at",
    "last_sign_in_at",
    "banned_until",
    "is_anonymous",
    "is_sso_user",
    "deleted_at",
];

/// The auth-owned fields of `current` that differ from what `auth` says they should be.
pub fn auth_mismatches(current: &UserRow, id: Uuid, auth: &AuthUser) -> Vec<&'static str> {
    let mut req = SyncRequest::new(Source::Reconcile, id);
    req.auth = Some(auth.clone());
    let (expected, _) = desired_row(current, &req, 0);
    current
        .differing_fields(&expected)
        .into_iter()
        .filter(|f| AUTH_OWNED.contains(f))
        .collect()
}

/// Fields that changed in a way a user would see (bookkeeping left out).
fn visible_changes(before: &UserRow, after: &UserRow) -> Vec<&'static str> {
    before
        .differing_fields(after)
        .into_iter()
        .filter(|f| !BOOKKEEPING.contains(f))
        .collect()
}

/// Apply `req` to the user (`docs/sync.md`, `docs/api.md`). Writes the row, service profiles,
/// alias, log row and notification, or refuses before writing anything. `log_unchanged`: whether a
/// sync that changes nothing still gets its log row (every `nura_sync_user` call does; a trigger
/// does not).
///
/// Concurrency: the user's row is locked (`FOR UPDATE`) before anything is decided. A user that
/// does not exist yet has no row to lock, so creation is `INSERT … ON CONFLICT DO NOTHING`: when
/// another transaction created the row first, the insert waits for it to commit, does nothing, and
/// the sync starts over on the now existing row. No lock is taken on any other user's row but the
/// one being adopted, so two syncs cannot wait for each other.
pub fn sync_user(
    core: &Core,
    req: &SyncRequest,
    started: Instant,
    log_unchanged: bool,
) -> Result<Outcome, Refusal> {
    const ATTEMPTS: usize = 3;
    for _ in 0..ATTEMPTS {
        if let Some(result) = try_sync_user(core, req, started, log_unchanged) {
            return result;
        }
    }
    crate::errors::raise(
        PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
        format!("user {} kept changing concurrently; sync given up", req.id),
        None,
    )
}

/// Run `body` (a sync) in a subtransaction ([`subtxn::run`]), telling it whether its request is
/// a signup's first try: that try inserts without `ON CONFLICT` ([`SyncRequest::plain_insert`]),
/// which spares PostgreSQL's speculative insertion. When its id or email is taken (23505: nearly
/// always an adoption of a migrated or API-created row), that subtransaction is rolled back and
/// `body` runs again once, in a new one, on the full path (ON CONFLICT DO NOTHING, then adoption
/// or update).
///
/// Between the plain insert's primary-key entry and its wait on a concurrent holder of the
/// email, a writer of that holder's transaction inserting a row with the new auth id would
/// deadlock with it (40P01, logged as a failed sync); the ON CONFLICT insert waited before
/// inserting anything. It needs a writer that knows a new auth user's id before its signup
/// commits, which nothing in the extension does.
pub fn run_in_subtxn<R>(signup: bool, body: impl Fn(bool) -> R) -> Result<R, crate::errors::Error> {
    if !signup {
        return subtxn::run(|| body(false));
    }
    match subtxn::run(|| body(true)) {
        Err(failure) if failure.code() == "23505" => subtxn::run(|| body(false)),
        result => result,
    }
}

/// One attempt of [`sync_user`]; `None` when a concurrent writer got in first and the attempt
/// must start over.
fn try_sync_user(
    core: &Core,
    req: &SyncRequest,
    started: Instant,
    log_unchanged: bool,
) -> Option<Result<Outcome, Refusal>> {
    let now = transaction_now();
    if req.signup {
        if let Some(created) = insert_signup(core, req, started, now) {
            return Some(Ok(created));
        }
    }
    let with_auth;
    let (req, locked) = if req.load_auth {
        // A writer outside the auth transaction reads the auth row only once it holds the users
        // row: an auth write that got there first has committed by then (its trigger held the
        // row), and one that comes later waits for us and then applies its own, newer values.
        let existing = core.user_for_update(req.id);
        let mut loaded = req.clone();
        loaded.auth = AuthUser::load(req.id);
        loaded.load_auth = false;
        with_auth = loaded;
        (&with_auth, Some(existing))
    } else {
        (req, None)
    };
    let mut attempt = Attempt::lock(core, req, locked, now);
    if req.must_exist && attempt.existing.is_none() {
        return Some(Err(Refusal::NotFound));
    }
    let base = attempt.base();
    if let Some(stale) = attempt.stale(started) {
        return Some(Ok(stale));
    }
    if changes_unreadable_privacy(req, &base.row) {
        return Some(Err(Refusal::UnreadablePrivacy));
    }
    let (row, ignored_fields) = desired_row(&base.row, req, now);
    if let Some(refusal) = attempt.conflict(&base, &row) {
        return Some(Err(refusal));
    }
    attempt.write(base, row, ignored_fields, started, log_unchanged)
}

/// Whether `req` would merge keys into a `privacy_settings` that cannot be read (and so would drop
/// the others); a soft-deleted user's edits are ignored anyway.
fn changes_unreadable_privacy(req: &SyncRequest, base: &UserRow) -> bool {
    let deleted = req
        .auth
        .as_ref()
        .map_or(base.deleted_at.is_some(), |a| a.deleted_at.is_some());
    base.privacy_settings == crate::user_row::UNREADABLE
        && matches!(req.privacy_settings, Some(Some(_)))
        && !deleted
}

/// The common signup: nobody holds the id or the email. One statement inserts the user, its
/// profiles and the log row. On a taken id or email it raises 23505 (`plain_insert`:
/// [`run_in_subtxn`] runs the sync again) or inserts nothing (`None`), and the full path
/// (adoption, conflict, existing row) takes over.
fn insert_signup(core: &Core, req: &SyncRequest, started: Instant, now: Micros) -> Option<Outcome> {
    let reference = UserRow::new(req.id, now);
    let (row, ignored_fields) = desired_row(&reference, req, now);
    let changed = visible_changes(&reference, &row);
    let after = log_payloads(&reference, &row, &changed, false).1;
    let log = request_log(
        req,
        row.id,
        SyncType::Created,
        changed,
        (None, after),
        started,
    );
    if !core.insert_new_user(&row, &log, req.plain_insert) {
        return None;
    }
    core.notify(row.id, SyncType::Created);
    Some(Outcome {
        sync_type: SyncType::Created,
        user: row,
        ignored_fields,
    })
}

/// What one attempt has read and locked: the user's own row and what it knows of the row holding
/// the address the user will have.
struct Attempt<'a> {
    core: &'a Core,
    req: &'a SyncRequest,
    now: Micros,
    existing: Option<UserRow>,
    target_email: Option<String>,
    /// The non-SSO row holding `target_email`, once looked up (`Some(None)`: nobody).
    email_holder: Option<Option<UserRow>>,
}

/// The row a sync starts from: the user's own, the row it adopts, or a new one; and the row
/// merged into the user's own, if any.
struct Base {
    row: UserRow,
    /// A signup that takes over a row no auth user owns (re-keyed to the auth id).
    adopted_from: Option<Uuid>,
    /// A user with a row of its own that reaches such a row's email: that row, merged into its own.
    absorbed: Option<UserRow>,
}

impl<'a> Attempt<'a> {
    /// Lock the user's row (read already when `locked`), and with it, for an auth user, the row
    /// holding its address: in one statement, in id order, as the migration's batches lock theirs.
    fn lock(
        core: &'a Core,
        req: &'a SyncRequest,
        locked: Option<Option<UserRow>>,
        now: Micros,
    ) -> Self {
        let target_email = req.target_email();
        let mut email_holder = None;
        let existing = match (locked, &req.auth, &target_email) {
            (Some(existing), _, _) => existing,
            (None, Some(auth), Some(email)) if !auth.is_sso_user => {
                let (own, holder) = core.user_and_email_holder(req.id, email);
                email_holder = Some(holder);
                own
            }
            _ => core.user_for_update(req.id),
        };
        Attempt {
            core,
            req,
            now,
            existing,
            target_email,
            email_holder,
        }
    }

    /// Where the sync starts from. A row that no auth user owns (migrated or API-created) and that
    /// holds the address an auth user reaches is adopted: at signup it becomes the user's row;
    /// later (an anonymous user upgraded, an email change) it is merged into the user's own.
    fn base(&mut self) -> Base {
        let mut base = Base {
            row: UserRow::new(self.req.id, self.now),
            adopted_from: None,
            absorbed: None,
        };
        let email = match (&self.req.auth, &self.target_email) {
            (Some(auth), Some(email)) if !auth.is_sso_user => Some(email.clone()),
            _ => None,
        };
        match (self.existing.clone(), email) {
            (Some(row), Some(email)) if !same_email(Some(&email), row.email.as_deref()) => {
                base.row = match self.core.holder_of(&email, &mut self.email_holder) {
                    Some(other) if other.id != row.id && adoptable(&other) => {
                        let merged = merge_rows(&row, &other);
                        base.absorbed = Some(other);
                        merged
                    }
                    _ => row,
                };
            }
            (Some(row), _) => base.row = row,
            (None, Some(email)) => {
                if let Some(row) = self.core.holder_of(&email, &mut self.email_holder) {
                    if adoptable(&row) {
                        base.adopted_from = Some(row.id);
                        base.row = row;
                    }
                }
            }
            (None, None) => {}
        }
        base
    }

    /// A payload older than what the row has seen: nothing written but its log row.
    fn stale(&self, started: Instant) -> Option<Outcome> {
        let current = self.existing.as_ref()?;
        let at = self.req.updated_at?;
        if current.source_updated_at.is_none_or(|cur| at >= cur) {
            return None;
        }
        let log = request_log(
            self.req,
            self.req.id,
            SyncType::Stale,
            vec![],
            (None, None),
            started,
        );
        self.core.log(&log);
        Some(Outcome {
            sync_type: SyncType::Stale,
            user: current.clone(),
            ignored_fields: vec![],
        })
    }

    /// The email must not be held by another (non-SSO) user in any letter case. (Checked without
    /// locking the other row; the unique index settles a race.)
    fn conflict(&self, base: &Base, row: &UserRow) -> Option<Refusal> {
        let email = row.email.as_deref().filter(|_| !row.is_sso_user)?;
        if same_email(Some(email), base.row.email.as_deref()) && self.existing.is_some() {
            return None;
        }
        let holder = match &self.email_holder {
            Some(known) if same_email(Some(email), self.target_email.as_deref()) => known.clone(),
            _ => self.core.user_by_email(email, false),
        }?;
        let merged = base.absorbed.as_ref().is_some_and(|a| a.id == holder.id);
        (holder.id != base.row.id && !merged).then_some(Refusal::Conflict {
            other_user: holder.id,
        })
    }

    /// What the row is written over: the user's own row as it was read (also when another row is
    /// merged into it), the adopted row, or nothing.
    fn reference(&self, base: &Base) -> UserRow {
        match (&self.existing, base.adopted_from) {
            (Some(current), _) => current.clone(),
            (None, Some(_)) => base.row.clone(),
            (None, None) => UserRow::new(self.req.id, self.now),
        }
    }

    fn sync_type(&self, base: &Base, row: &UserRow, changed: &[&str]) -> SyncType {
        match (&self.existing, base.adopted_from) {
            (None, Some(_)) => SyncType::Adopted,
            (Some(_), _) if base.absorbed.is_some() => SyncType::Adopted,
            (None, None) => SyncType::Created,
            (Some(_), _) if changed.is_empty() => SyncType::Unchanged,
            (Some(old), _) if old.deleted_at.is_none() && row.deleted_at.is_some() => {
                SyncType::SoftDeleted
            }
            (Some(_), _) => SyncType::Updated,
        }
    }

    /// Write the row and its log row (one statement), and whatever the change brings along;
    /// `None` when the row changed hands under us (start over).
    fn write(
        &self,
        base: Base,
        mut row: UserRow,
        ignored_fields: Vec<&'static str>,
        started: Instant,
        log_unchanged: bool,
    ) -> Option<Result<Outcome, Refusal>> {
        let reference = self.reference(&base);
        let changed = visible_changes(&reference, &row);
        let sync_type = self.sync_type(&base, &row, &changed);
        if sync_type == SyncType::Unchanged {
            // Only bookkeeping may differ (a newer source_updated_at): keep it, quietly.
            row.auth_synced_at = base.row.auth_synced_at;
            row.updated_at = base.row.updated_at;
            if row.source_updated_at != base.row.source_updated_at {
                self.core.update_logged(base.row.id, &base.row, &row, None);
            }
            if log_unchanged {
                let log = request_log(self.req, row.id, sync_type, vec![], (None, None), started);
                self.core.log(&log);
            }
        } else {
            if sync_type != SyncType::Created {
                row.updated_at = Some(self.now);
            }
            let log = self.log_entry(sync_type, &reference, &row, changed, started);
            let written = match sync_type {
                SyncType::Created => {
                    let log = log.as_ref().expect("a creation is always logged");
                    self.core.insert_new_user(&row, log, false)
                }
                SyncType::Adopted => self.adopt(&base, &reference, &row, log.as_ref()),
                _ => {
                    self.core
                        .update_logged(base.row.id, &base.row, &row, log.as_ref());
                    if sync_type == SyncType::SoftDeleted {
                        self.core.scrub_log_pii(row.id);
                    }
                    true
                }
            };
            if !written {
                return None;
            }
            self.core.notify(row.id, sync_type);
        }
        Some(Ok(Outcome {
            sync_type,
            user: row,
            ignored_fields,
        }))
    }

    /// The log row of a change. A sign-in alone is logged only with `nura_users.log_sign_ins`; a
    /// user this sync creates always is (`Some` for `Created`) (one without email, phone or names
    /// that first appears at a sign-in changes only `last_sign_in_at`).
    fn log_entry(
        &self,
        sync_type: SyncType,
        reference: &UserRow,
        row: &UserRow,
        changed: Vec<&'static str>,
        started: Instant,
    ) -> Option<LogEntry> {
        let sign_in_only = self.req.source == Source::SupabaseAuth
            && changed == ["last_sign_in_at"]
            && sync_type != SyncType::Created;
        if sign_in_only && !settings::LOG_SIGN_INS.get() {
            return None;
        }
        let payloads = if sync_type == SyncType::Created {
            (None, log_payloads(reference, row, &changed, false).1)
        } else {
            log_payloads(reference, row, &changed, row.deleted_at.is_some())
        };
        Some(request_log(
            self.req, row.id, sync_type, changed, payloads, started,
        ))
    }

    /// Write an adoption: the adopted row re-keyed to the user (its log history and an alias
    /// follow), or merged into the user's own row. Every value it changes in a migrated row is
    /// recorded as a conflict of that row's legacy rows.
    fn adopt(
        &self,
        base: &Base,
        reference: &UserRow,
        row: &UserRow,
        log: Option<&LogEntry>,
    ) -> bool {
        let core = self.core;
        if let Some(old_id) = base.adopted_from {
            crate::migration::record_adoption_conflicts(core, &base.row, row);
            if !core.update_logged(old_id, &base.row, row, log) {
                return false;
            }
            // The audit trail follows the person: a later delete or erasure scrubs it all.
            core.rekey_logs(old_id, row.id);
            // References a cutover moved without a key to follow the re-key (docs/cutover.md).
            crate::cutover::repoint(&core.schema, old_id, row.id);
            core.record_alias(old_id, row.id, "adoption");
            core.create_default_profiles(&[row.id]);
            return true;
        }
        let other = base
            .absorbed
            .as_ref()
            .expect("an adoption has an adopted row");
        crate::migration::record_adoption_conflicts(core, other, row);
        crate::migration::record_adoption_conflicts(core, reference, row);
        core.absorb(other.id, row.id);
        if !core.update_logged(reference.id, reference, row, log) {
            return false;
        }
        core.notify(other.id, SyncType::Deleted);
        true
    }
}

/// Whether `row` may be adopted by an auth user: no auth user owns it (migrated, or made through
/// the API for a user who signs up later).
fn adoptable(row: &UserRow) -> bool {
    row.auth_synced_at.is_none() && AuthUser::load(row.id).is_none()
}

/// The row of a user who adopts `other` (`docs/sync.md`: an auth user reaching the email of a row
/// no auth user owns): what the user has wins; what it lacks, the adopted row fills. Activity adds
/// up (xp), or takes the larger (streak, last activity) and the earlier (creation). The auth-owned
/// fields are applied over it afterwards.
fn merge_rows(own: &UserRow, other: &UserRow) -> UserRow {
    let mut row = own.clone();
    for (mine, theirs) in [
        (&mut row.phone_number, &other.phone_number),
        (&mut row.full_name, &other.full_name),
        (&mut row.display_name, &other.display_name),
        (&mut row.bio, &other.bio),
        (&mut row.avatar_url, &other.avatar_url),
    ] {
        if mine.is_none() {
            mine.clone_from(theirs);
        }
    }
    if let (Value::Object(mine), Value::Object(theirs)) =
        (&mut row.privacy_settings, &other.privacy_settings)
    {
        for (key, value) in theirs {
            mine.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
    row.xp = own.xp.saturating_add(other.xp);
    row.current_streak = own.current_streak.max(other.current_streak);
    row.last_active_at = own.last_active_at.max(other.last_active_at);
    row.created_at = match (own.created_at, other.created_at) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    row.source_updated_at = own.source_updated_at.max(other.source_updated_at);
    row
}

/// `auth.users.id` changed (`docs/sync.md`): the user moves to the new id as an adoption re-keys
/// one: the row (profiles and aliases follow by ON UPDATE CASCADE), its log history, and an alias
/// from the old id. Nothing to move when the old id has no row. A row under the new id already
/// (which GoTrue never makes) is refused with 23505: it fails this user's sync only.
pub fn move_user(core: &Core, from: Uuid, to: Uuid, source: Source, started: Instant) {
    let Some(current) = core.user_for_update(from) else {
        return;
    };
    if core.user_for_update(to).is_some() {
        crate::errors::raise(
            PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
            format!("auth user {from} was given the id {to}, which a users row has already"),
            Some("Merge or delete one of the two users, then run nura_reconcile()."),
        );
    }
    let mut moved = current.clone();
    moved.id = to;
    moved.updated_at = Some(transaction_now());
    let log = LogEntry::success(
        source,
        to,
        SyncType::Updated,
        vec!["id"],
        (
            Some(json!({"id": from.to_string()})),
            Some(json!({"id": to.to_string()})),
        ),
        started,
    );
    core.update_logged(from, &current, &moved, Some(&log));
    core.rekey_logs(from, to);
    crate::cutover::repoint(&core.schema, from, to);
    core.record_alias(from, to, "adoption");
    core.notify(from, SyncType::Deleted);
    core.notify(to, SyncType::Updated);
}

/// An auth user was deleted: its `users` row goes (profiles and aliases cascade), personal data
/// leaves its log rows, and the deletion is logged. Returns whether a row was deleted.
pub fn remove_user(core: &Core, id: Uuid, source: Source, started: Instant) -> bool {
    let schema = &core.schema;
    let deleted = plans::scalar::<bool>(
        &format!(
            "WITH gone AS (DELETE FROM {schema}.users WHERE id OPERATOR(pg_catalog.=) $1 RETURNING 1) \
             SELECT EXISTS (SELECT FROM gone)"
        ),
        &[id.into()],
    )
    .or_raise("deleting user")
    .unwrap_or(false);
    core.scrub_log_pii(id);
    if deleted {
        core.log(&LogEntry::event(
            Some(id),
            source,
            SyncType::Deleted,
            started,
        ));
        core.notify(id, SyncType::Deleted);
    }
    deleted
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;
    use crate::user_row::UserSql;

    /// Strings mixing the scripts and case rules where folding differs between libraries: Greek
    /// with its word-final sigma, Turkish dotted and dotless i, German sharp s (and its capital),
    /// Cyrillic, Armenian, Georgian, Cherokee, fullwidth Latin, Deseret, combining marks, ASCII.
    fn generated_addresses(n: usize) -> Vec<String> {
        const POOL: &[char] = &[
            'A', 'z', 'I', 'i', 'Σ', 'σ', 'ς', 'Ω', 'ώ', 'ΐ', 'İ', 'ı', 'ß', 'ẞ', 'Ж', 'ё', 'Ա',
            'ք', 'Ⴀ', 'ა', 'Ꭰ', 'ꭰ', 'Ａ', 'ｚ', '𐐀', '𐐨', '\u{307}', '\u{301}', 'ǅ', 'ǈ', 'K',
            '0', '.', '_',
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..n)
            .map(|_| {
                let len = 1 + (next() % 12) as usize;
                let local: String = (0..len)
                    .map(|_| POOL[(next() % POOL.len() as u64) as usize])
                    .collect();
                format!("{local}@Example.ΣΟΦ")
            })
            .collect()
    }

    /// Rust's email matching and PostgreSQL's lower() (the unique index's) agree on every
    /// generated address, one at a time and pairwise; Rust's own to_lowercase does not.
    #[pg_test]
    fn email_case_folding_agrees_with_sql_lower() {
        let addresses = generated_addresses(3000);
        let lowered = Spi::get_one_with_args::<Vec<String>>(
            "SELECT array_agg(lower(x) ORDER BY n) FROM unnest($1::text[]) WITH ORDINALITY AS t(x, n)",
            &[addresses.clone().into()],
        )
        .unwrap()
        .unwrap();
        let mut rust_differs = 0;
        for (address, sql) in addresses.iter().zip(&lowered) {
            assert_eq!(&email_key(address), sql, "{address}");
            rust_differs += usize::from(&address.to_lowercase() != sql);
        }
        assert!(
            rust_differs > 0,
            "the generated set must hold addresses Rust folds otherwise"
        );
        for pair in addresses.windows(2).chain(lowered.windows(2)) {
            let sql_same = Spi::get_one_with_args::<bool>(
                "SELECT lower($1) = lower($2)",
                &[pair[0].as_str().into(), pair[1].as_str().into()],
            )
            .unwrap()
            .unwrap();
            assert_eq!(
                same_email(Some(&pair[0]), Some(&pair[1])),
                sql_same,
                "{pair:?}"
            );
        }
        // Pairs that differ only in letter case, which SQL may or may not fold alike.
        for address in addresses.iter().take(500) {
            let upper = address.to_uppercase();
            let sql_same = Spi::get_one_with_args::<bool>(
                "SELECT lower($1) = lower($2)",
                &[address.as_str().into(), upper.as_str().into()],
            )
            .unwrap()
            .unwrap();
            assert_eq!(
                same_email(Some(address), Some(&upper)),
                sql_same,
                "{address}"
            );
        }
    }

    fn uuid(b: u8) -> Uuid {
        Uuid::from_bytes([b; 16])
    }

    #[pg_test]
    fn auth_columns_counts_the_columns_of_auth_select() {
        assert_eq!(AUTH_SELECT.matches(" AS ").count(), AUTH_COLUMNS);
        assert!(
            AUTH_SELECT.ends_with("AS auth_user_metadata"),
            "user_metadata is read last"
        );
    }

    #[pg_test]
    fn every_source_is_listed_once() {
        let mut names: Vec<&str> = Source::ALL.iter().map(|s| s.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Source::ALL.len());
    }

    #[pg_test]
    fn phones_are_stored_as_gotrue_does() {
        assert_eq!(
            normalize_phone("+4915112345678"),
            Some("4915112345678".into())
        );
        assert_eq!(normalize_phone(" 15551234567 "), Some("15551234567".into()));
        assert_eq!(normalize_phone("+"), None);
    }

    #[pg_test]
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

    #[pg_test]
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

    #[pg_test]
    fn a_cleared_name_is_not_refilled_by_the_same_request() {
        let mut base = UserRow::new(uuid(4), 0);
        base.full_name = Some("Ana".into());
        let mut req = SyncRequest::new(Source::SupabaseAuth, uuid(4));
        req.auth = Some(AuthUser {
            metadata: profile_from_metadata(Some(&json!({"full_name": "From provider"}))),
            ..Default::default()
        });
        req.full_name = Some(None);
        assert_eq!(desired_row(&base, &req, 5).0.full_name, None);
    }

    #[pg_test]
    fn a_soft_delete_clears_personal_data_and_deactivates() {
        let mut base = UserRow::new(uuid(2), 0);
        base.email = Some("bo@example.com".into());
        base.full_name = Some("Bo".into());
        base.bio = Some("about bo".into());
        let mut req = SyncRequest::new(Source::SupabaseAuth, uuid(2));
        req.auth = Some(AuthUser {
            email: Some("hashhashhash".into()),
            phone: Some("junkjunk".into()),
            deleted_at: Some(77),
            metadata: profile_from_metadata(Some(&json!({"full_name": "Bo"}))),
            ..Default::default()
        });
        let (row, _) = desired_row(&base, &req, 9);
        assert_eq!(
            (
                row.email,
                row.phone_number,
                row.full_name,
                row.bio,
                row.is_active,
                row.deleted_at
            ),
            (None, None, None, None, false, Some(77))
        );
    }

    #[pg_test]
    fn a_newer_payload_moves_source_updated_at_forward_only() {
        let mut base = UserRow::new(uuid(3), 0);
        base.source_updated_at = Some(100);
        let mut req = SyncRequest::new(Source::BackendApi, uuid(3));
        req.updated_at = Some(200);
        assert_eq!(desired_row(&base, &req, 1).0.source_updated_at, Some(200));
        req.updated_at = Some(50);
        assert_eq!(desired_row(&base, &req, 1).0.source_updated_at, Some(100));
    }

    #[pg_test]
    fn email_keeps_case_and_loses_blanks() {
        assert_eq!(
            normalize_email("  Ana@Example.COM "),
            Some("Ana@Example.COM".into())
        );
        assert_eq!(normalize_email("   "), None);
        assert_eq!(normalize_email(&"a".repeat(256)), None);
        assert!(same_email(
            Some(" ANA@example.com"),
            Some("ana@EXAMPLE.com ")
        ));
        assert!(!same_email(Some("ana@example.com"), None));
    }

    #[pg_test]
    fn auth_wins_over_a_callers_email_and_user_edits_survive_metadata() {
        let mut base = UserRow::new(uuid(1), 0);
        base.full_name = Some("Edited by user".into());
        let mut req = SyncRequest::new(Source::FrontendSync, uuid(1));
        req.auth = Some(AuthUser {
            email: Some("ana@example.com".into()),
            metadata: profile_from_metadata(Some(
                &json!({"full_name": "From provider", "picture": "p.png"}),
            )),
            ..Default::default()
        });
        req.email = Some(Some("other@example.com".into()));
        req.bio = Some(Some("hi".into()));
        let (row, ignored) = desired_row(&base, &req, 5);
        assert_eq!(row.email.as_deref(), Some("ana@example.com"));
        assert_eq!(row.full_name.as_deref(), Some("Edited by user"));
        // A frontend sync does not pull auth's metadata in; an auth write does.
        assert_eq!(row.avatar_url, None);
        assert_eq!(row.bio.as_deref(), Some("hi"));
        assert_eq!(row.auth_synced_at, Some(5));
        assert_eq!(ignored, vec!["email"]);
        // The same address in another letter case is not a disagreement.
        req.email = Some(Some("ANA@example.com".into()));
        assert!(desired_row(&base, &req, 5).1.is_empty());
        let mut auth_write = req.clone();
        auth_write.source = Source::SupabaseAuth;
        auth_write.bio = None;
        let (row, _) = desired_row(&base, &auth_write, 5);
        assert_eq!(row.avatar_url.as_deref(), Some("p.png"));
        assert_eq!(row.full_name.as_deref(), Some("Edited by user"));
    }

    /// A row with every column set; `k` makes the values of two rows differ in every column.
    fn full_row(k: u8, now: Micros) -> UserRow {
        let t = |d: i64| Some(now - 1_000_000 * (d + 10 * i64::from(k)));
        UserRow {
            id: Uuid::from_bytes([k; 16]),
            email: Some(format!("user{k}@example.com")),
            phone_number: Some(format!("1555000000{k}")),
            full_name: Some(format!("Full {k}")),
            display_name: Some(format!("Display {k}")),
            bio: Some(format!("Bio {k}")),
            avatar_url: Some(format!("https://example.com/{k}.png")),
            email_confirmed_at: t(1),
            phone_confirmed_at: t(2),
            last_sign_in_at: t(3),
            banned_until: t(4),
            is_anonymous: k % 2 == 0,
            is_sso_user: k % 2 == 0,
            is_active: k % 2 == 1,
            current_streak: i32::from(k),
            xp: 100 * i32::from(k),
            privacy_settings: json!({ format!("k{k}"): k }),
            created_at: t(5),
            updated_at: t(6),
            last_active_at: t(7),
            deleted_at: t(8),
            auth_synced_at: t(9),
            source_updated_at: t(0),
        }
    }

    /// The log row of a backend update of `fields` of user `id`, with before and after.
    fn updated_log(
        id: Uuid,
        fields: Vec<&'static str>,
        payloads: Option<(Value, Value)>,
    ) -> LogEntry {
        let (before, after) = payloads.unzip();
        LogEntry {
            user_id: Some(id),
            source: Source::BackendApi,
            sync_type: SyncType::Updated,
            changed_fields: Some(fields),
            before,
            after,
            failure: None,
            started: Instant::now(),
            duration_us: Some(1),
            request_id: None,
            session_id: None,
        }
    }

    fn insert(row: &UserRow) {
        insert_into("public.users", row);
    }

    /// Insert `row` whole into `table` (of the columns of users).
    fn insert_into(table: &str, row: &UserRow) {
        let params = (1..=UserRow::COLUMNS.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        plans::execute(
            &format!(
                "INSERT INTO {table} ({}) VALUES ({params})",
                UserRow::column_list()
            ),
            &row.datums(),
        )
        .unwrap();
    }

    /// The narrowed UPDATE writes the columns it names, with the values `datum_at` gives, and
    /// leaves every other column as it was: column by column, for all of them.
    #[pg_test]
    fn an_update_of_some_columns_writes_exactly_those() {
        let core = Core::new("public".to_string());
        let now = transaction_now();
        let (a, b) = (full_row(1, now), full_row(2, now));
        assert_eq!(a.differing_columns(&b).len(), UserRow::COLUMNS.len());
        for i in 0..UserRow::COLUMNS.len() {
            Spi::run("DELETE FROM public.users").unwrap();
            insert(&a);
            assert_eq!(
                core.user_for_update(a.id).as_ref(),
                Some(&a),
                "row as inserted"
            );
            let sql = UserSql::update_columns("public", &[i], false);
            let written = plans::scalar::<bool>(&sql, &[a.id.into(), b.datum_at(i)]).unwrap();
            assert_eq!(written, Some(true), "{}", UserRow::COLUMNS[i]);
            let key = if UserRow::COLUMNS[i] == "id" {
                b.id
            } else {
                a.id
            };
            let read = core.user_for_update(key).expect("the row");
            assert_eq!(
                read.differing_columns(&a),
                vec![i],
                "{}",
                UserRow::COLUMNS[i]
            );
            assert_eq!(
                read.differing_columns(&b).len(),
                UserRow::COLUMNS.len() - 1,
                "{}",
                UserRow::COLUMNS[i]
            );
        }
    }

    /// More sets of changed columns than a backend keeps statements for: every write is still
    /// right (the sets past the limit write the whole row) and the cache stays at its limit.
    #[pg_test]
    fn the_narrowed_statements_are_bounded() {
        let core = Core::new("public".to_string());
        let now = transaction_now();
        let (a, b) = (full_row(4, now), full_row(5, now));
        insert(&a);
        let mut current = a.clone();
        // Pairs of columns (not the id), each pair a set of its own: 231 sets.
        let n = UserRow::COLUMNS.len();
        for i in 1..n {
            for j in i + 1..n {
                let mut next = current.clone();
                // Take columns i and j from b (or back from a, when they hold b's already).
                for (k, source) in [(i, &b), (j, &b)] {
                    let from = if current.differing_columns(source).contains(&k) {
                        source
                    } else {
                        &a
                    };
                    next = with_column(&next, from, k);
                }
                assert_eq!(next.differing_columns(&current), vec![i, j]);
                assert!(core.update_logged(a.id, &current, &next, None));
                current = core.user_for_update(a.id).expect("the row");
                assert_eq!(
                    current,
                    next,
                    "{} and {}",
                    UserRow::COLUMNS[i],
                    UserRow::COLUMNS[j]
                );
            }
        }
        assert_eq!(NARROW_SQL.with_borrow(|c| c.len()), NARROW_STATEMENTS);
        // Past the limit a logged write of a new set (three columns: the cache holds pairs)
        // takes the whole-row statement with its log row.
        let mut next = current.clone();
        for k in [1, 2, 3] {
            let from = if current.differing_columns(&b).contains(&k) {
                &b
            } else {
                &a
            };
            next = with_column(&next, from, k);
        }
        assert_eq!(next.differing_columns(&current), vec![1, 2, 3]);
        let log = updated_log(a.id, vec!["email", "phone_number", "full_name"], None);
        assert!(core.update_logged(a.id, &current, &next, Some(&log)));
        assert_eq!(core.user_for_update(a.id).as_ref(), Some(&next));
        assert_eq!(
            Spi::get_one_with_args::<i64>(
                "SELECT count(*) FROM public.user_sync_logs WHERE user_id = $1",
                &[a.id.into()],
            )
            .unwrap(),
            Some(1)
        );
    }

    /// `row` with the column at position `k` taken from `from` (through the database: the one
    /// generic way to set a column by position).
    fn with_column(row: &UserRow, from: &UserRow, k: usize) -> UserRow {
        Spi::run("CREATE TEMP TABLE IF NOT EXISTS scratch (LIKE public.users)").unwrap();
        Spi::run("TRUNCATE scratch").unwrap();
        insert_into("scratch", row);
        plans::execute(
            &format!("UPDATE scratch SET {} = $1", UserRow::COLUMNS[k]),
            &[from.datum_at(k)],
        )
        .unwrap();
        plans::first_row(
            &format!("SELECT {} FROM scratch", UserRow::column_list()),
            &[],
            UserRow::from_tuple,
        )
        .unwrap()
        .expect("the scratch row")
    }

    /// `update_logged` writes the changed columns and the log row in one statement; a row that
    /// differs in nothing is written whole (and still found).
    #[pg_test]
    fn update_logged_writes_the_row_and_its_log_row() {
        let core = Core::new("public".to_string());
        let now = transaction_now();
        let a = full_row(3, now);
        insert(&a);
        let mut c = a.clone();
        c.bio = Some("changed".into());
        c.xp = 7;
        c.deleted_at = None;
        assert_eq!(c.differing_columns(&a).len(), 3);
        let log = updated_log(
            a.id,
            vec!["bio"],
            Some((json!({"bio": "Bio 3"}), json!({"bio": "changed"}))),
        );
        assert!(core.update_logged(a.id, &a, &c, Some(&log)));
        assert_eq!(core.user_for_update(a.id).as_ref(), Some(&c));
        assert_eq!(
            Spi::get_one_with_args::<String>(
                "SELECT sync_type || ' ' || after_data::text FROM public.user_sync_logs \
                 WHERE user_id = $1",
                &[a.id.into()],
            )
            .unwrap()
            .as_deref(),
            Some("updated {\"bio\": \"changed\"}")
        );
        assert!(core.update_logged(a.id, &c, &c, None));
        assert!(!core.update_logged(Uuid::from_bytes([9; 16]), &c, &c, None));
        assert_eq!(core.user_for_update(a.id).as_ref(), Some(&c));
    }
}
