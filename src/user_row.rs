//! A row of `users` as the sync core handles it: read, compared field by field, rendered as JSON
//! for results and logs, and written back. The column list is written once, in `user_row!` below.

use crate::jsonb::{Builder, JsonB, MaybeDeep, RawJsonb};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiHeapTupleData;
use pgrx::Uuid;
use serde_json::{Map, Value};

/// Microseconds since 2000-01-01 UTC, PostgreSQL's own `timestamptz` representation: compared
/// and copied as a number, turned into a datum only at the SPI boundary.
pub type Micros = i64;

/// A `timestamptz` value (None also for microseconds out of its range).
pub fn ts_value(v: Option<Micros>) -> Option<TimestampWithTimeZone> {
    v.and_then(|m| TimestampWithTimeZone::try_from(m).ok())
}

pub fn ts_datum(v: Option<Micros>) -> DatumWithOid<'static> {
    ts_value(v).into()
}

/// A `timestamptz` in the text form `to_jsonb` gives it.
pub fn ts_text(v: Option<Micros>) -> Option<String> {
    ts_value(v).map(|ts| ts.to_iso_string())
}

pub fn ts_json(v: Option<Micros>) -> Value {
    ts_text(v).map_or(Value::Null, Value::String)
}

/// A uuid in its text form (lower-case, hyphenated), as `uuid_out` and `to_jsonb` write it.
pub fn uuid_text(id: &Uuid) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(36);
    for (i, byte) in id.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        text.push(HEX[usize::from(byte >> 4)] as char);
        text.push(HEX[usize::from(byte & 0xf)] as char);
    }
    text
}

/// The positions of [`UserRow::COLUMNS`] in jsonb's key order (shorter first, then bytewise).
fn json_key_order() -> &'static [usize] {
    static ORDER: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    ORDER.get_or_init(|| {
        let mut order: Vec<usize> = (0..UserRow::COLUMNS.len()).collect();
        order.sort_by_key(|&i| (UserRow::COLUMNS[i].len(), UserRow::COLUMNS[i]));
        order
    })
}

/// The start of the current transaction, as `now()` gives it.
pub fn transaction_now() -> Micros {
    unsafe { pg_sys::GetCurrentTransactionStartTimestamp() }
}

macro_rules! user_row {
    ($($field:ident: $kind:ident),* $(,)?) => {
        /// One row of `users`.
        #[derive(Debug, Clone, PartialEq)]
        pub struct UserRow {
            $(pub $field: user_row!(@type $kind),)*
        }

        impl UserRow {
            /// The columns of `users`, in table order.
            pub const COLUMNS: &'static [&'static str] = &[$(stringify!($field)),*];

            /// A row from a query that selects [`UserRow::column_list`] first.
            pub fn from_tuple(t: &SpiHeapTupleData<'_>) -> pgrx::spi::Result<Self> {
                Self::from_tuple_at(t, 1)
            }

            /// A row from a query that selects [`UserRow::column_list`] from column `first`
            /// (1-based) on. Read by position: looking 23 names up in the result was a tenth
            /// of reading a row. A query of another shape mostly fails on the first column
            /// whose type does not match, but two neighbouring text columns swapped would not:
            /// every caller's SQL is built from `column_list()`, and every such query is run by
            /// the tests.
            pub fn from_tuple_at(t: &SpiHeapTupleData<'_>, first: usize) -> pgrx::spi::Result<Self> {
                let mut at = first;
                let mut next = || {
                    at += 1;
                    at - 1
                };
                Ok(UserRow { $($field: user_row!(@get t, next(), $kind),)* })
            }

            /// The positions (in `COLUMNS`) of the columns whose values differ between `self`
            /// and `other`.
            pub fn differing_columns(&self, other: &UserRow) -> Vec<usize> {
                let mut columns = Vec::new();
                let mut i = 0;
                $(if self.$field != other.$field { columns.push(i); } i += 1;)*
                let _ = i;
                columns
            }

            /// The value of the column at position `i` of `COLUMNS`, as an SPI argument.
            pub fn datum_at(&self, i: usize) -> DatumWithOid<'static> {
                let mut at = 0;
                $(if at == i { return user_row!(@datum self.$field, $kind); } at += 1;)*
                let _ = at;
                panic!("users has no column {i}")
            }

            /// The names of the fields whose values differ between `self` and `other`.
            pub fn differing_fields(&self, other: &UserRow) -> Vec<&'static str> {
                let mut fields = Vec::new();
                $(if self.$field != other.$field { fields.push(stringify!($field)); })*
                fields
            }

            /// One field as JSON (as `to_jsonb` renders it).
            pub fn field_json(&self, name: &str) -> Value {
                match name {
                    $(stringify!($field) => user_row!(@json self.$field, $kind),)*
                    _ => Value::Null,
                }
            }

            /// The whole row as a JSON object, pushed into `b` as the next value: what
            /// [`UserRow::to_json`] gives, without a `Value` in between (the `user` of results).
            pub fn push_json<'a>(&'a self, b: &mut Builder<'a>) {
                b.begin_object();
                for &i in json_key_order() {
                    b.key(Self::COLUMNS[i]);
                    let mut at = 0;
                    $(if at == i { user_row!(@push b, self.$field, $kind); } at += 1;)*
                    let _ = at;
                }
                b.end_object();
            }

            /// The whole row as a jsonb datum (a function's result), built by
            /// [`UserRow::push_json`].
            pub fn to_jsonb(&self) -> RawJsonb {
                let mut b = Builder::new();
                self.push_json(&mut b);
                RawJsonb::from_builder(b)
            }

            /// The whole row as a JSON object (`full` log payloads, the migration's changed users).
            pub fn to_json(&self) -> Value {
                let mut map = Map::new();
                $(map.insert(stringify!($field).to_string(), user_row!(@json self.$field, $kind));)*
                Value::Object(map)
            }

            /// The values as SPI arguments, in `COLUMNS` order.
            pub fn datums(&self) -> Vec<DatumWithOid<'static>> {
                vec![$(user_row!(@datum self.$field, $kind)),*]
            }

            /// Many rows as one array per column (SPI arguments in `COLUMNS` order), for
            /// set-based writes: typed arrays reach SQL without a JSON round trip.
            pub fn column_arrays(rows: &[&UserRow]) -> Vec<DatumWithOid<'static>> {
                vec![$(user_row!(@array rows, $field, $kind)),*]
            }

            /// `pg_catalog.unnest($n::type[]), ...` over [`UserRow::column_arrays`] passed from
            /// parameter `$first` on, for a `ROWS FROM (...)`.
            pub fn unnest_list(first: usize) -> String {
                let types: &[&str] = &[$(user_row!(@sqltype $kind)),*];
                types
                    .iter()
                    .enumerate()
                    .map(|(i, t)| format!("pg_catalog.unnest(${}::{t}[])", first + i))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        }
    };
    (@type uuid) => { Uuid };
    (@type text) => { Option<String> };
    (@type ts) => { Option<Micros> };
    (@type flag) => { bool };
    (@type int) => { i32 };
    (@type json) => { Value };

    (@get $t:ident, $i:expr, uuid) => {
        $t.get::<Uuid>($i)?.unwrap_or_else(|| Uuid::from_bytes([0; 16]))
    };
    (@get $t:ident, $i:expr, text) => { $t.get::<String>($i)? };
    (@get $t:ident, $i:expr, ts) => {
        $t.get::<TimestampWithTimeZone>($i)?.map(pg_sys::TimestampTz::from)
    };
    (@get $t:ident, $i:expr, flag) => { $t.get::<bool>($i)?.unwrap_or(false) };
    (@get $t:ident, $i:expr, int) => { $t.get::<i32>($i)?.unwrap_or(0) };
    // A stored value nested deeper than a Value is read is UNREADABLE (see there).
    (@get $t:ident, $i:expr, json) => {
        $t.get::<MaybeDeep>($i)?.map_or(Value::Null, |j| j.0.unwrap_or(UNREADABLE))
    };

    (@json $v:expr, uuid) => { Value::String(uuid_text(&$v)) };
    (@json $v:expr, text) => { $v.clone().map(Value::String).unwrap_or(Value::Null) };
    (@json $v:expr, ts) => { ts_json($v) };
    (@json $v:expr, flag) => { Value::Bool($v) };
    (@json $v:expr, int) => { Value::from($v) };
    (@json $v:expr, json) => { $v.clone() };

    (@push $b:ident, $v:expr, uuid) => { $b.string(uuid_text(&$v)) };
    (@push $b:ident, $v:expr, text) => {
        match &$v {
            Some(s) => $b.str(s),
            None => $b.null(),
        }
    };
    (@push $b:ident, $v:expr, ts) => {
        match ts_text($v) {
            Some(text) => $b.string(text),
            None => $b.null(),
        }
    };
    (@push $b:ident, $v:expr, flag) => { $b.bool($v) };
    (@push $b:ident, $v:expr, int) => { $b.int(i64::from($v)) };
    (@push $b:ident, $v:expr, json) => { $b.value(&$v) };

    (@array $rows:ident, $f:ident, uuid) => {
        DatumWithOid::from($rows.iter().map(|r| r.$f).collect::<Vec<Uuid>>())
    };
    (@array $rows:ident, $f:ident, text) => {
        DatumWithOid::from($rows.iter().map(|r| r.$f.clone()).collect::<Vec<Option<String>>>())
    };
    (@array $rows:ident, $f:ident, ts) => {
        DatumWithOid::from(
            $rows.iter().map(|r| ts_value(r.$f)).collect::<Vec<Option<TimestampWithTimeZone>>>(),
        )
    };
    (@array $rows:ident, $f:ident, flag) => {
        DatumWithOid::from($rows.iter().map(|r| r.$f).collect::<Vec<bool>>())
    };
    (@array $rows:ident, $f:ident, int) => {
        DatumWithOid::from($rows.iter().map(|r| r.$f).collect::<Vec<i32>>())
    };
    (@array $rows:ident, $f:ident, json) => {
        DatumWithOid::from(
            $rows.iter().map(|r| json_or_keep(&r.$f)).collect::<Vec<Option<JsonB>>>(),
        )
    };

    (@sqltype uuid) => { "uuid" };
    (@sqltype text) => { "text" };
    (@sqltype ts) => { "timestamptz" };
    (@sqltype flag) => { "boolean" };
    (@sqltype int) => { "integer" };
    (@sqltype json) => { "jsonb" };

    (@datum $v:expr, uuid) => { DatumWithOid::from($v) };
    (@datum $v:expr, text) => { DatumWithOid::from($v.clone()) };
    (@datum $v:expr, ts) => { ts_datum($v) };
    (@datum $v:expr, flag) => { DatumWithOid::from($v) };
    (@datum $v:expr, int) => { DatumWithOid::from($v) };
    (@datum $v:expr, json) => { DatumWithOid::from(json_or_keep(&$v)) };
}

user_row! {
    id: uuid,
    email: text,
    phone_number: text,
    full_name: text,
    display_name: text,
    bio: text,
    avatar_url: text,
    email_confirmed_at: ts,
    phone_confirmed_at: ts,
    last_sign_in_at: ts,
    banned_until: ts,
    is_anonymous: flag,
    is_sso_user: flag,
    is_active: flag,
    current_streak: int,
    xp: int,
    privacy_settings: json,
    created_at: ts,
    updated_at: ts,
    last_active_at: ts,
    deleted_at: ts,
    auth_synced_at: ts,
    source_updated_at: ts,
}

/// A `privacy_settings` that cannot be read: stored (by hand, SQL the extension does not run)
/// nested deeper than [`crate::jsonb::MAX_DEPTH`]. Its column holds only objects (the domain
/// `nura_privacy_settings`), so JSON null never stands for a stored value. A row carrying it
/// syncs as any other (a ban, a soft delete); the value shows as null in results, is never
/// written back (the SQL parameter is NULL and every UPDATE keeps the column then: see
/// [`UserSql::update_columns`]), and a change of some of its keys is refused (`docs/sync.md`).
pub const UNREADABLE: Value = Value::Null;

/// A json field as an SQL argument: NULL for [`UNREADABLE`], which the statements read as "keep".
fn json_or_keep(v: &Value) -> Option<JsonB> {
    (*v != UNREADABLE).then(|| JsonB(v.clone()))
}

/// Fields that record when and from where a row was written, not what the user is: they never
/// make a sync "updated" on their own.
pub const BOOKKEEPING: &[&str] = &["updated_at", "auth_synced_at", "source_updated_at"];

/// Personal data: cleared by a soft delete, scrubbed from log payloads on delete and erasure.
pub const PII: &[&str] = &[
    "email",
    "phone_number",
    "full_name",
    "display_name",
    "bio",
    "avatar_url",
];

impl UserRow {
    /// A new row with the table's defaults.
    pub fn new(id: Uuid, now: Micros) -> Self {
        UserRow {
            id,
            email: None,
            phone_number: None,
            full_name: None,
            display_name: None,
            bio: None,
            avatar_url: None,
            email_confirmed_at: None,
            phone_confirmed_at: None,
            last_sign_in_at: None,
            banned_until: None,
            is_anonymous: false,
            is_sso_user: false,
            is_active: true,
            current_streak: 0,
            xp: 0,
            privacy_settings: Value::Object(Map::new()),
            created_at: Some(now),
            updated_at: Some(now),
            last_active_at: None,
            deleted_at: None,
            auth_synced_at: None,
            source_updated_at: None,
        }
    }

    /// The comma-separated column list for SQL.
    pub fn column_list() -> String {
        Self::COLUMNS.join(", ")
    }
}

/// The SQL the core runs against `users`, qualified with the extension's schema.
pub struct UserSql {
    pub select_by_id: String,
    pub select_by_id_or_email_for_update: String,
    pub update_logged: String,
    pub insert_new_user: String,
    pub insert_new_user_plain: String,
    pub select_by_email: String,
    pub select_by_email_for_update: String,
    pub sign_in: String,
    pub update: String,
    /// One log row (`crate::log::insert_sql`).
    pub insert_log: String,
}

impl UserSql {
    pub fn new(schema: &str) -> Self {
        let cols = UserRow::column_list();
        let all: Vec<usize> = (0..UserRow::COLUMNS.len()).collect();
        let params = (1..=UserRow::COLUMNS.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        UserSql {
            select_by_id: format!(
                "SELECT {cols} FROM {schema}.users WHERE id OPERATOR(pg_catalog.=) $1 FOR UPDATE"
            ),
            select_by_id_or_email_for_update: format!(
                "SELECT {cols} FROM {schema}.users WHERE id OPERATOR(pg_catalog.=) $1 \
                 OR (pg_catalog.lower(email) OPERATOR(pg_catalog.=) pg_catalog.lower($2) \
                     AND NOT is_sso_user) FOR UPDATE"
            ),
            insert_new_user: Self::insert_new_user(schema, &cols, &params, true),
            insert_new_user_plain: Self::insert_new_user(schema, &cols, &params, false),
            // The unique index on lower(email) among non-SSO users serves these.
            select_by_email: format!(
                "SELECT {cols} FROM {schema}.users \
                 WHERE pg_catalog.lower(email) OPERATOR(pg_catalog.=) pg_catalog.lower($1) \
                   AND NOT is_sso_user"
            ),
            select_by_email_for_update: format!(
                "SELECT {cols} FROM {schema}.users \
                 WHERE pg_catalog.lower(email) OPERATOR(pg_catalog.=) pg_catalog.lower($1) \
                   AND NOT is_sso_user FOR UPDATE"
            ),
            sign_in: format!(
                "UPDATE {schema}.users SET last_sign_in_at = $2, auth_synced_at = pg_catalog.now(), \
                     updated_at = pg_catalog.now() \
                 WHERE id OPERATOR(pg_catalog.=) $1"
            ),
            update_logged: Self::update_columns(schema, &all, true),
            update: Self::update_columns(schema, &all, false),
            insert_log: crate::log::insert_sql(schema),
        }
    }

    /// Insert a user, its `auto_create` profiles and its log row in one statement. With
    /// `on_conflict`, a taken id or email makes it insert nothing (and return false); without, it
    /// raises the unique violation: the signup's first try, which spares PostgreSQL's
    /// speculative insertion (a probe of every unique index before the insert and a second WAL
    /// record per row) when, as nearly always, nobody holds the id or the email.
    fn insert_new_user(schema: &str, cols: &str, params: &str, on_conflict: bool) -> String {
        // Log columns after the user's: user_id comes from the inserted row.
        let (users_conflict, profiles_conflict) = if on_conflict {
            (
                " ON CONFLICT DO NOTHING",
                " ON CONFLICT (user_id, service_type) DO NOTHING",
            )
        } else {
            ("", "")
        };
        format!(
            "WITH inserted AS (INSERT INTO {schema}.users ({cols}) VALUES ({params}){users_conflict} \
                 RETURNING id), \
             profiles AS (INSERT INTO {schema}.user_service_profiles \
                 (user_id, service_type, service_preferences) \
                 SELECT i.id, t.service_type, t.default_preferences \
                 FROM inserted i, {schema}.user_service_types t WHERE t.auto_create{profiles_conflict}), \
             {} \
             SELECT EXISTS (SELECT FROM inserted)",
            crate::log::row_cte(schema, "inserted", UserRow::COLUMNS.len() + 1)
        )
    }

    /// The UPDATE of the columns at `positions` (of [`UserRow::COLUMNS`]) of the row keyed $1,
    /// their values from $2 on, and, when `logged`, the log row's values after them: what
    /// [`UserSql::update_logged`] and [`UserSql::update`] do for the whole row. Writing only the
    /// columns that changed spares the coercion of every other value to its domain and a wider
    /// projection (the row is locked, so the others are what the table holds).
    pub fn update_columns(schema: &str, positions: &[usize], logged: bool) -> String {
        let cols = positions
            .iter()
            .map(|&i| UserRow::COLUMNS[i])
            .collect::<Vec<_>>()
            .join(", ");
        // privacy_settings: a NULL parameter keeps the stored value (an UNREADABLE one).
        let params = positions
            .iter()
            .zip(2..)
            .map(|(&i, p)| match UserRow::COLUMNS[i] {
                "privacy_settings" => format!("COALESCE(${p}, privacy_settings)"),
                _ => format!("${p}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let set = format!(
            "UPDATE {schema}.users SET ({cols}) = ROW({params}) WHERE id OPERATOR(pg_catalog.=) $1"
        );
        if !logged {
            return format!("{set} RETURNING true");
        }
        format!(
            "WITH updated AS ({set} RETURNING id), {} SELECT EXISTS (SELECT FROM updated)",
            crate::log::row_cte(schema, "updated", positions.len() + 2)
        )
    }
}
