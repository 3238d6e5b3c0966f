//! `nura_sync_user(payload jsonb)` (`docs/api.md`): validate the payload, check the caller, hand
//! the change to the sync core, and answer with a result object. Every call writes exactly one log
//! row; a failed call writes nothing else.

use crate::access::{self, Caller};
use crate::errors::Error;
use crate::jsonb::{Builder, JsonbArg, Member, RawJsonb, MAX_DEPTH};
use crate::log::{LogEntry, Source, SyncType};
use crate::subtxn;
use crate::sync::{
    self, Core, Outcome, Refusal, SyncRequest, MAX_AVATAR_URL, MAX_BIO, MAX_EMAIL, MAX_NAME,
};
use crate::user_row::Micros;
use pgrx::prelude::*;
use pgrx::Uuid;
use serde_json::{Map, Value};
use std::time::Instant;

/// The keys a payload may carry.
pub const PAYLOAD_KEYS: &[&str] = &[
    "avatar_url",
    "bio",
    "display_name",
    "email",
    "full_name",
    "id",
    "phone_number",
    "request_id",
    "session_id",
    "source",
    "updated_at",
    "user_metadata",
];
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// How far a payload's `updated_at` may lie ahead of the server's clock.
pub const MAX_CLOCK_SKEW_US: i64 = 5 * 60 * 1_000_000;
pub const MAX_REQUEST_ID: usize = 255;

fn invalid(field: &str, message: impl Into<String>) -> Error {
    Error::invalid(field, message)
}

/// The JSON type of a value, as error messages name it.
pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A string field: `None` when absent or JSON null ("not given").
fn string_field<'a>(map: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, Error> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(invalid(
            key,
            format!("{key} must be a string or null, not {}", json_type(other)),
        )),
    }
}

fn check_length(key: &str, value: &str, limit: usize) -> Result<(), Error> {
    if value.chars().count() > limit {
        return Err(invalid(
            key,
            format!("{key} is longer than {limit} characters"),
        ));
    }
    Ok(())
}

/// A profile text field: trimmed; blank clears it.
fn text_field(
    map: &Map<String, Value>,
    key: &str,
    limit: usize,
) -> Result<sync::Given<String>, Error> {
    match string_field(map, key)? {
        None => Ok(None),
        Some(s) => {
            check_length(key, s, limit)?;
            if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
                return Err(invalid(key, format!("{key} contains control characters")));
            }
            let t = s.trim();
            Ok(Some((!t.is_empty()).then(|| t.to_string())))
        }
    }
}

/// RFC 5321/5322-ish: one `@`, a local part of at most 64 characters without blanks or
/// specials, and a domain of dot-separated labels (letters, digits, hyphens; at least one dot).
pub fn check_email(email: &str) -> Result<(), &'static str> {
    if email.chars().count() > MAX_EMAIL {
        return Err("email is longer than 255 characters");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err("email must contain an @");
    };
    if domain.contains('@') {
        return Err("email must contain exactly one @");
    }
    let bad_local = |c: char| c.is_whitespace() || c.is_control() || "\"(),:;<>[]\\".contains(c);
    if local.is_empty() || local.chars().count() > 64 || local.chars().any(bad_local) {
        return Err("email has an invalid part before the @");
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err("email has an invalid part before the @");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    };
    if labels.len() < 2 || domain.chars().count() > 253 || !labels.iter().all(label_ok) {
        return Err("email has an invalid domain");
    }
    Ok(())
}

/// E.164-like: digits, no leading zero, 2 to 15 of them, a leading `+` optional.
pub fn check_phone(phone: &str) -> Result<(), &'static str> {
    let digits = phone.strip_prefix('+').unwrap_or(phone);
    let ok = (2..=15).contains(&digits.len())
        && digits.chars().all(|c| c.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(())
    } else {
        Err("phone_number must be E.164-like: 2 to 15 digits, optionally after a +")
    }
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parse an ISO 8601 timestamp with a time zone (`2026-11-25T10:00:00.123Z`,
/// `2026-11-25 10:00:00+01:00`, `…+0100`, `…+01`) into PostgreSQL's microseconds since 2000.
pub fn parse_timestamptz(s: &str) -> Option<Micros> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 16 || !s.is_ascii() {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ') {
        return None;
    }
    let (hour, minute) = (num(11..13)?, num(14..16)?);
    if b[13] != b':' {
        return None;
    }
    let mut i = 16;
    let mut second = 0;
    let mut micros = 0;
    if b.get(i) == Some(&b':') {
        second = num(17..19)?;
        i = 19;
        if b.get(i) == Some(&b'.') {
            let start = i + 1;
            let mut end = start;
            while end < b.len() && b[end].is_ascii_digit() {
                end += 1;
            }
            if end == start {
                return None;
            }
            // Microsecond precision, as PostgreSQL keeps; extra digits are cut.
            let frac = &s[start..end.min(start + 6)];
            micros = frac.parse::<i64>().ok()? * 10_i64.pow(6 - frac.len() as u32);
            i = end;
        }
    }
    let offset_seconds = match &s[i..] {
        "Z" | "z" => 0,
        zone if zone.starts_with('+') || zone.starts_with('-') => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let rest = &zone[1..];
            let (h, m) = match rest.len() {
                2 => (rest.parse::<i64>().ok()?, 0),
                4 => (
                    rest[0..2].parse::<i64>().ok()?,
                    rest[2..4].parse::<i64>().ok()?,
                ),
                5 if &rest[2..3] == ":" => (
                    rest[0..2].parse::<i64>().ok()?,
                    rest[3..5].parse::<i64>().ok()?,
                ),
                _ => return None,
            };
            if h > 15 || m > 59 || !rest.bytes().all(|c| c.is_ascii_digit() || c == b':') {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || day < 1
        || day > month_days[(month - 1) as usize]
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    const UNIX_TO_PG_EPOCH_SECONDS: i64 = 946_684_800;
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_seconds
        - UNIX_TO_PG_EPOCH_SECONDS;
    Some(seconds * 1_000_000 + micros)
}

/// A JSON object a caller gives (metadata, settings, preferences) may take 16 KB as text.
pub fn check_size(field: &str, text_len: usize) -> Result<(), Error> {
    if text_len > MAX_METADATA_BYTES {
        return Err(invalid(field, format!("{field} is larger than 16 KB")));
    }
    Ok(())
}

/// The JSON object an argument must be; an error naming the argument otherwise.
fn object_argument<'a>(
    name: &str,
    value: Option<&'a Value>,
) -> Result<&'a Map<String, Value>, Error> {
    match value {
        Some(Value::Object(map)) => Ok(map),
        None => Err(invalid(
            name,
            format!("{name} must be a JSON object, not NULL"),
        )),
        Some(other) => Err(invalid(
            name,
            format!("{name} must be a JSON object, not {}", json_type(other)),
        )),
    }
}

/// A jsonb argument (a payload, a profile's changes) as [`parse`] reads it: every member read
/// into a `Value`, except `user_metadata`, of which only what the sync uses is read (the names
/// of [`sync::profile_from_metadata`], as strings) after its size is checked on the value given.
/// Metadata the extension does not use cannot fail a sync, whatever its depth or content; any
/// other member nested deeper than [`MAX_DEPTH`] is refused naming it.
pub fn read_argument(arg: &JsonbArg) -> Result<Value, Error> {
    let root = arg.root();
    let Some(members) = root.members() else {
        // Not an object: only its type is reported.
        return Ok(root.read().unwrap_or(Value::Array(Vec::new())));
    };
    let mut map = Map::new();
    for (key, member) in members {
        let value = match member {
            Member::Scalar(value) => value,
            Member::Container(c) if key == "user_metadata" && c.is_object() => {
                check_size(&key, c.text_len())?;
                let names = sync::METADATA_KEYS
                    .iter()
                    .filter_map(|k| Some((k.to_string(), Value::String(c.string_member(k)?))));
                Value::Object(names.collect())
            }
            Member::Container(c) => c.read().map_err(|_| {
                let shown: String = key.chars().take(64).collect();
                invalid(
                    &shown,
                    format!("{shown} nests deeper than {MAX_DEPTH} levels"),
                )
            })?,
        };
        map.insert(key, value);
    }
    Ok(Value::Object(map))
}

/// A payload turned into a sync request (source not yet decided), or the first bad field.
#[derive(Debug)]
pub struct Parsed {
    pub request: SyncRequest,
    pub source: Option<Source>,
}

/// Validate a payload. Fields are checked in key order, so the first bad one is reported.
pub fn parse(payload: Option<&Value>) -> Result<Parsed, Error> {
    let map = object_argument("payload", payload)?;
    if let Some(unknown) = map.keys().find(|k| !PAYLOAD_KEYS.contains(&k.as_str())) {
        let shown: String = unknown.chars().take(64).collect();
        return Err(invalid(
            &shown,
            format!(
                "unknown key {shown:?}; allowed keys: {}",
                PAYLOAD_KEYS.join(", ")
            ),
        ));
    }
    let id = match map.get("id") {
        None | Some(Value::Null) => return Err(invalid("id", "id is required")),
        Some(Value::String(s)) => {
            crate::uuid_input::parse(s).ok_or_else(|| invalid("id", "id must be a uuid"))?
        }
        Some(other) => {
            return Err(invalid(
                "id",
                format!("id must be a uuid string, not {}", json_type(other)),
            ))
        }
    };
    let mut request = SyncRequest::new(Source::BackendApi, id);

    request.avatar_url = text_field(map, "avatar_url", MAX_AVATAR_URL)?;
    request.bio = text_field(map, "bio", MAX_BIO)?;
    request.display_name = text_field(map, "display_name", MAX_NAME)?;
    request.email = match string_field(map, "email")? {
        None => None,
        Some(s) if s.trim().is_empty() => Some(None),
        Some(s) => {
            check_email(s.trim()).map_err(|m| invalid("email", m))?;
            Some(Some(s.trim().to_string()))
        }
    };
    request.full_name = text_field(map, "full_name", MAX_NAME)?;
    request.phone_number = match string_field(map, "phone_number")? {
        None => None,
        Some(s) if s.trim().is_empty() => Some(None),
        Some(s) => {
            check_phone(s.trim()).map_err(|m| invalid("phone_number", m))?;
            Some(Some(s.trim().to_string()))
        }
    };
    for key in ["request_id", "session_id"] {
        let value = string_field(map, key)?;
        if let Some(v) = value {
            check_length(key, v, MAX_REQUEST_ID)?;
        }
        let value = value.map(str::to_string);
        if key == "request_id" {
            request.request_id = value;
        } else {
            request.session_id = value;
        }
    }
    let source = match string_field(map, "source")? {
        None => None,
        Some("frontend_sync") => Some(Source::FrontendSync),
        Some("backend_api") => Some(Source::BackendApi),
        Some(_) => {
            return Err(invalid(
                "source",
                "source must be \"frontend_sync\" or \"backend_api\"",
            ))
        }
    };
    request.updated_at = match string_field(map, "updated_at")? {
        None => None,
        Some(s) => Some(parse_timestamptz(s).ok_or_else(|| {
            invalid(
                "updated_at",
                "updated_at must be an ISO 8601 timestamp with a time zone",
            )
        })?),
    };
    request.user_metadata = match map.get("user_metadata") {
        None | Some(Value::Null) => None,
        Some(m @ Value::Object(_)) => {
            check_size("user_metadata", m.to_string().len())?;
            Some(sync::profile_from_metadata(Some(m)))
        }
        Some(other) => {
            return Err(invalid(
                "user_metadata",
                format!(
                    "user_metadata must be an object or null, not {}",
                    json_type(other)
                ),
            ))
        }
    };
    Ok(Parsed { request, source })
}

/// The result object of a sync that went through (`docs/api.md`), built straight into jsonb.
pub fn success_result(outcome: &Outcome) -> RawJsonb {
    // `docs/api.md` names four outcomes. A soft delete that this call found in auth.users (one the
    // trigger missed) is an update of the row; its log row still says soft_deleted.
    let sync_type = match outcome.sync_type {
        SyncType::SoftDeleted | SyncType::Adopted => SyncType::Updated,
        other => other,
    };
    let mut b = Builder::new();
    b.begin_object();
    b.key("user");
    outcome.user.push_json(&mut b);
    b.key("success");
    b.bool(true);
    b.key("sync_type");
    b.str(sync_type.as_str());
    b.key("ignored_fields");
    b.begin_array();
    for field in &outcome.ignored_fields {
        b.str(field);
    }
    b.end_array();
    b.end_object();
    RawJsonb::from_builder(b)
}

/// Log a failed call (under `user`, with the request's ids) and answer with its error object.
fn failed(
    core: &Core,
    user: Option<Uuid>,
    source: Source,
    ids: (Option<String>, Option<String>),
    error: &Error,
    started: Instant,
) -> RawJsonb {
    let message = format!("{}: {}", error.kind, error.message);
    let mut entry = LogEntry::failed(user, source, error.code(), message, started);
    entry.request_id = ids.0;
    entry.session_id = ids.1;
    core.log(&entry);
    error.result()
}

/// The default source of a caller's writes.
pub fn source_of(caller: &Caller) -> Source {
    if caller.is_privileged() {
        Source::BackendApi
    } else {
        Source::FrontendSync
    }
}

/// Why `caller` may not sync user `id`, if it may not. On Supabase a browser's user is an auth
/// user: once deleted there, a JWT that is still valid must not bring the row back.
fn refusal_of(caller: &Caller, id: Uuid) -> Option<Error> {
    let message = if !caller.may_act_on(id) {
        match caller {
            Caller::Unidentified => "no user identified (request.jwt.claims has no uuid sub)",
            _ => "a user may act only on their own id",
        }
    } else if !caller.is_privileged() && !sync::auth_account_exists(id) {
        "the user has no account in auth.users"
    } else {
        return None;
    };
    Some(Error::forbidden("id", message))
}

/// What a caller is told when the address is taken: not by whom.
fn email_conflict() -> Error {
    Error::conflict("email", "the email is already used by another user")
}

/// Check the caller, run `request` through the sync core in a subtransaction, and answer with a
/// result object (`docs/api.md`). Exactly one log row either way; a failure writes nothing else.
pub fn respond(
    core: &Core,
    caller: &Caller,
    mut request: SyncRequest,
    started: Instant,
) -> RawJsonb {
    let id = request.id;
    let ids = (request.request_id.clone(), request.session_id.clone());
    let source = request.source;
    // A refused call is logged under the caller, not under the user it tried to reach.
    if let Some(refused) = refusal_of(caller, id) {
        return failed(core, caller.user(), source, ids, &refused, started);
    }
    request.load_auth = true;
    let attempt = || subtxn::run(|| sync::sync_user(core, &request, started, true));
    // A unique violation here is, but for a bug, a concurrent writer taking the address between
    // the core's check and its write (the id is locked; profiles and aliases are written ON
    // CONFLICT). The error does not say which constraint (pgrx keeps its code and message, not
    // its fields), so the sync runs once more and the core's check decides on what is committed
    // now: a conflict, or the write. A second violation is reported as it is: a holder this
    // snapshot cannot see (REPEATABLE READ), or a unique key of the caller's own (a trigger).
    let result = match attempt() {
        Err(e) if e.sqlstate == PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION => attempt(),
        result => result,
    };
    let error = match result {
        Ok(Ok(outcome)) => return success_result(&outcome),
        Ok(Err(Refusal::Conflict { .. })) => email_conflict(),
        Ok(Err(Refusal::NotFound)) => Error::not_found("user_id", "no such user"),
        Ok(Err(refusal)) => refusal.error(id),
        Err(failure) => failure,
    };
    failed(core, Some(id), source, ids, &error, started)
}

/// A payload that did not parse: logged under its `id` only when the caller may act on it, with
/// its request and session ids when it has them.
fn refuse_payload(
    core: &Core,
    caller: &Caller,
    payload: Option<&JsonbArg>,
    bad: &Error,
    started: Instant,
) -> RawJsonb {
    let text = |k: &str| {
        payload
            .and_then(|p| p.root().string_member(k))
            .map(|s| s.chars().take(MAX_REQUEST_ID).collect::<String>())
    };
    let user = text("id")
        .as_deref()
        .and_then(crate::uuid_input::parse)
        .filter(|id| caller.may_act_on(*id))
        .or(caller.user());
    let ids = (text("request_id"), text("session_id"));
    failed(core, user, source_of(caller), ids, bad, started)
}

/// Sync one user from a frontend or backend payload (`docs/api.md`).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_sync_user(payload: Option<JsonbArg>) -> RawJsonb {
    let started = Instant::now();
    let extension = crate::schema::extension();
    let caller = access::caller_given_owner(extension.owner);
    let core = Core::new(extension.schema);
    let read = payload.as_ref().map(read_argument).transpose();
    let parsed = match read.and_then(|value| parse(value.as_ref())) {
        Ok(parsed) => parsed,
        Err(bad) => return refuse_payload(&core, &caller, payload.as_ref(), &bad, started),
    };
    let mut request = parsed.request;
    // Only the backend may say who it is; a browser's writes are frontend_sync.
    request.source = match parsed.source {
        Some(source) if caller.is_privileged() => source,
        _ => source_of(&caller),
    };
    // A client clock far ahead would make every later payload stale.
    let latest = crate::user_row::transaction_now() + MAX_CLOCK_SKEW_US;
    if request.updated_at.is_some_and(|at| at > latest) {
        let user = caller
            .user()
            .filter(|u| *u == request.id)
            .or(caller.is_privileged().then_some(request.id));
        let ids = (request.request_id.clone(), request.session_id.clone());
        let bad = invalid(
            "updated_at",
            "updated_at is more than 5 minutes in the future",
        );
        return failed(&core, user, request.source, ids, &bad, started);
    }
    respond(&core, &caller, request, started)
}

/// The fields `nura_update_profile` may change (`docs/sync.md`: what the user owns).
pub const EDITABLE: &[&str] = &[
    "avatar_url",
    "bio",
    "display_name",
    "full_name",
    "phone_number",
    "privacy_settings",
];

/// Validate `changes` for `nura_update_profile`: editable fields only; JSON null clears a field.
pub fn parse_profile_changes(id: Uuid, changes: Option<&Value>) -> Result<SyncRequest, Error> {
    let map = object_argument("changes", changes)?;
    if let Some(key) = map.keys().find(|k| !EDITABLE.contains(&k.as_str())) {
        let shown: String = key.chars().take(64).collect();
        let why = if crate::user_row::UserRow::COLUMNS.contains(&key.as_str()) {
            "is not editable"
        } else {
            "is not a profile field"
        };
        return Err(invalid(
            &shown,
            format!("{shown:?} {why}; editable fields: {}", EDITABLE.join(", ")),
        ));
    }
    let mut request = SyncRequest::new(Source::BackendApi, id);
    request.must_exist = true;
    // JSON null clears; a string sets (a blank one clears as well).
    let text = |key: &str, limit: usize| -> Result<sync::Given<String>, Error> {
        match map.get(key) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(_) => text_field(map, key, limit),
        }
    };
    request.avatar_url = text("avatar_url", MAX_AVATAR_URL)?;
    request.bio = text("bio", MAX_BIO)?;
    request.display_name = text("display_name", MAX_NAME)?;
    request.full_name = text("full_name", MAX_NAME)?;
    request.phone_number = match map.get("phone_number") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(_) => match string_field(map, "phone_number")? {
            Some(s) if !s.trim().is_empty() => {
                check_phone(s.trim()).map_err(|m| invalid("phone_number", m))?;
                Some(Some(s.trim().to_string()))
            }
            _ => Some(None),
        },
    };
    request.privacy_settings = match map.get("privacy_settings") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::Object(m)) => {
            check_size(
                "privacy_settings",
                Value::Object(m.clone()).to_string().len(),
            )?;
            Some(Some(m.clone()))
        }
        Some(other) => {
            return Err(invalid(
                "privacy_settings",
                format!(
                    "privacy_settings must be an object or null, not {}",
                    json_type(other)
                ),
            ))
        }
    };
    Ok(request)
}

/// Edit a user's profile fields (`docs/api.md`); same result shape as `nura_sync_user`.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_update_profile(user_id: Option<Uuid>, changes: Option<JsonbArg>) -> RawJsonb {
    let started = Instant::now();
    let extension = crate::schema::extension();
    let caller = access::caller_given_owner(extension.owner);
    let core = Core::new(extension.schema);
    let source = source_of(&caller);
    let Some(id) = user_id else {
        let bad = invalid("user_id", "user_id must not be NULL");
        return failed(&core, None, source, (None, None), &bad, started);
    };
    let read = changes.as_ref().map(read_argument).transpose();
    match read.and_then(|value| parse_profile_changes(id, value.as_ref())) {
        Ok(mut request) => {
            request.source = source;
            respond(&core, &caller, request, started)
        }
        Err(bad) => failed(&core, Some(id), source, (None, None), &bad, started),
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// Plain PostgreSQL: no Supabase roles, no auth schema; the owner (here the superuser that
    /// created the extension) syncs, edits and reads any user.
    #[pg_test]
    fn the_owner_uses_everything_without_supabase_roles() {
        let created = Spi::get_one::<String>(
            "SELECT public.nura_sync_user('{\"id\": \"11111111-1111-4111-8111-111111111111\", \
             \"email\": \"Owner@Example.com\"}') ->> 'sync_type'",
        )
        .unwrap();
        assert_eq!(created.as_deref(), Some("created"));
        let edited = Spi::get_one::<String>(
            "SELECT public.nura_update_profile('11111111-1111-4111-8111-111111111111', \
             '{\"bio\": \"hello\"}') ->> 'sync_type'",
        )
        .unwrap();
        assert_eq!(edited.as_deref(), Some("updated"));
        let read = Spi::get_one::<String>(
            "SELECT public.nura_get_user('11111111-1111-4111-8111-111111111111') ->> 'bio'",
        )
        .unwrap();
        assert_eq!(read.as_deref(), Some("hello"));
        let xp = Spi::get_one::<i32>(
            "SELECT public.nura_add_xp('11111111-1111-4111-8111-111111111111', 5)",
        )
        .unwrap();
        assert_eq!(xp, Some(5));
    }

    /// A unique violation under the core's write (here from a trigger on `users`, standing in
    /// for a concurrent writer taking the address after the core's check): the sync runs once
    /// more and the core decides on what is there now. The holder gone (rolled back), the write
    /// goes through; a violation that repeats (a unique key of the trigger's own table) is
    /// reported as it is, `internal` with its SQLSTATE, without matching any message text.
    #[pg_test]
    fn a_unique_violation_under_the_write_runs_the_sync_again() {
        Spi::run(
            "SELECT public.nura_sync_user('{\"id\": \"22222222-2222-4222-8222-222222222222\", \
                 \"email\": \"first@example.com\"}'); \
             CREATE SEQUENCE public.tries; \
             CREATE TABLE public.once (k int PRIMARY KEY); \
             CREATE FUNCTION public.take_address() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN \
                 IF NEW.email = 'taken@example.com' AND nextval('public.tries') = 1 THEN \
                     INSERT INTO public.users (id, email) \
                     VALUES ('33333333-3333-4333-8333-333333333333', 'TAKEN@example.com'); \
                 ELSIF NEW.email = 'twice@example.com' THEN \
                     INSERT INTO public.once VALUES (1), (1); \
                 END IF; \
                 RETURN NEW; \
             END $$; \
             CREATE TRIGGER take_address BEFORE UPDATE ON public.users \
                 FOR EACH ROW EXECUTE FUNCTION public.take_address()",
        )
        .unwrap();
        let answer = |email: &str| {
            Spi::get_one_with_args::<pgrx::JsonB>(
                "SELECT public.nura_sync_user(jsonb_build_object( \
                     'id', '22222222-2222-4222-8222-222222222222', 'email', $1::text))",
                &[email.into()],
            )
            .unwrap()
            .unwrap()
            .0
        };
        let retried = answer("taken@example.com");
        assert_eq!(retried["sync_type"], "updated", "{retried}");
        assert_eq!(retried["user"]["email"], "taken@example.com");
        let repeated = answer("twice@example.com");
        assert_eq!(repeated["error"]["code"], "internal", "{repeated}");
        let (users, failures) = Spi::get_two::<i64, i64>(
            "SELECT (SELECT count(*) FROM public.users), \
                    (SELECT count(*) FROM public.user_sync_logs \
                     WHERE NOT success AND sqlstate = '23505')",
        )
        .unwrap();
        assert_eq!((users, failures), (Some(1), Some(1)));
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use serde_json::json;

    fn field_of(payload: Value) -> String {
        parse(Some(&payload)).unwrap_err().field.unwrap_or_default()
    }

    #[test]
    fn emails() {
        for ok in [
            "a@b.co",
            "Ana.Lima+tag@Example.COM",
            "x@sub.domain.example",
            "üser@exämple.de",
        ] {
            assert!(check_email(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "plain", "a@b", "@b.co", "a@.co", "a@b.co.", "a b@c.co", "a@b..co", "a@@b.co",
            "a@b@c.co", ".a@b.co", "a.@b.co", "a@-b.co", "a@b_c.co",
        ] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
        assert!(check_email(&format!("{}@example.com", "a".repeat(65))).is_err());
    }

    #[test]
    fn phones() {
        for ok in ["+4915112345678", "15551234567", "12"] {
            assert!(check_phone(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "+",
            "0123456",
            "1234567890123456",
            "+1 555 123",
            "555-1234",
            "1",
        ] {
            assert!(check_phone(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps() {
        // 2000-01-01 00:00:00 UTC is PostgreSQL's epoch.
        assert_eq!(parse_timestamptz("2000-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamptz("2000-01-01 01:00:00+01:00"), Some(0));
        assert_eq!(parse_timestamptz("2000-01-01T01:00:00+0100"), Some(0));
        assert_eq!(parse_timestamptz("2000-01-01T00:00:00.5-00"), Some(500_000));
        assert_eq!(parse_timestamptz("2000-01-02T00:00Z"), Some(86_400_000_000));
        assert_eq!(
            parse_timestamptz("1999-12-31T23:59:59.1234567Z"),
            Some(-876_544)
        );
        for bad in [
            "2000-01-01",
            "2000-01-01T00:00:00",
            "2000-13-01T00:00:00Z",
            "2001-02-29T00:00Z",
            "2000-01-01T24:00:00Z",
            "yesterday",
            "2000-01-01T00:00:00+25:00",
            "2000-01-01T00:00:00.Z",
        ] {
            assert_eq!(parse_timestamptz(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_payloads_name_their_field() {
        assert_eq!(parse(None).unwrap_err().field.as_deref(), Some("payload"));
        assert_eq!(field_of(json!([1])), "payload");
        assert_eq!(field_of(json!("x")), "payload");
        assert_eq!(field_of(json!({})), "id");
        assert_eq!(field_of(json!({"id": null})), "id");
        assert_eq!(field_of(json!({"id": 7})), "id");
        assert_eq!(field_of(json!({"id": "nope"})), "id");
        let id = "11111111-1111-4111-8111-111111111111";
        assert_eq!(field_of(json!({"id": id, "nickname": "x"})), "nickname");
        assert_eq!(field_of(json!({"id": id, "email": "no-at"})), "email");
        assert_eq!(field_of(json!({"id": id, "email": {"a": 1}})), "email");
        assert_eq!(
            field_of(json!({"id": id, "phone_number": "call me"})),
            "phone_number"
        );
        assert_eq!(
            field_of(json!({"id": id, "full_name": "x".repeat(201)})),
            "full_name"
        );
        assert_eq!(field_of(json!({"id": id, "bio": "x".repeat(2001)})), "bio");
        assert_eq!(
            field_of(json!({"id": id, "avatar_url": "x".repeat(2049)})),
            "avatar_url"
        );
        assert_eq!(
            field_of(json!({"id": id, "user_metadata": [1]})),
            "user_metadata"
        );
        assert_eq!(
            field_of(json!({"id": id, "user_metadata": {"k": "x".repeat(17_000)}})),
            "user_metadata"
        );
        assert_eq!(
            field_of(json!({"id": id, "source": "supabase_auth"})),
            "source"
        );
        assert_eq!(
            field_of(json!({"id": id, "updated_at": "soon"})),
            "updated_at"
        );
        assert_eq!(field_of(json!({"id": id, "request_id": 5})), "request_id");
    }

    #[test]
    fn null_means_not_given_and_blank_clears() {
        let id = "11111111-1111-4111-8111-111111111111";
        let p = parse(Some(
            &json!({"id": id, "full_name": null, "bio": "  ", "display_name": " Ana "}),
        ))
        .unwrap();
        assert_eq!(p.request.full_name, None);
        assert_eq!(p.request.bio, Some(None));
        assert_eq!(p.request.display_name, Some(Some("Ana".to_string())));
    }
}
