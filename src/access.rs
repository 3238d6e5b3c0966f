//! Who is calling (`docs/security.md`).
//!
//! Inside a SECURITY DEFINER function the current user is the function's owner, so the caller is
//! the role in effect *outside* it: `GetOuterUserId()`, which is the `SET ROLE` role that PostgREST
//! sets per request. A browser's user is identified by the JWT `sub` in `request.jwt.claims`, read
//! directly, so nothing depends on `auth.uid()` existing.

use pgrx::prelude::*;
use pgrx::Uuid;
use std::ffi::CStr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A superuser, the extension's owner, or a member of `service_role`: may act on any id.
    Privileged,
    /// Anyone else acting for the user in the JWT's `sub`: may act on that id only.
    User(Uuid),
    /// Neither privileged nor carrying a usable JWT `sub`.
    Unidentified,
}

impl Caller {
    pub fn may_act_on(&self, id: Uuid) -> bool {
        match self {
            Caller::Privileged => true,
            Caller::User(sub) => *sub == id,
            Caller::Unidentified => false,
        }
    }

    pub fn is_privileged(&self) -> bool {
        matches!(self, Caller::Privileged)
    }

    /// The user a JWT caller acts for.
    pub fn user(&self) -> Option<Uuid> {
        match self {
            Caller::User(sub) => Some(*sub),
            _ => None,
        }
    }
}

fn role_oid(name: &CStr) -> Option<pg_sys::Oid> {
    let oid = unsafe { pg_sys::get_role_oid(name.as_ptr(), true) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// The JWT `sub` of the current request, as PostgREST sets it (`request.jwt.claims`,
/// transaction-local). `None` when unset, empty, not JSON, or not a uuid.
pub fn jwt_sub() -> Option<Uuid> {
    let raw = unsafe {
        let ptr = pg_sys::GetConfigOption(c"request.jwt.claims".as_ptr(), true, false);
        if ptr.is_null() {
            return None;
        }
        CStr::from_ptr(ptr).to_string_lossy().into_owned()
    };
    let claims: serde_json::Value = serde_json::from_str(&raw).ok()?;
    let sub = claims.get("sub")?.as_str()?;
    // The canonical 8-4-4-4-12 form only, as nura_jwt_sub() (the RLS policies) accepts it.
    if sub.len() != 36 || sub.as_bytes()[8] != b'-' {
        return None;
    }
    crate::uuid_input::parse(sub)
}

/// Whether `role` is a member of `anon` or `authenticated` (a request through the API), as
/// opposed to a service's own login.
pub fn is_api_role(role: pg_sys::Oid) -> bool {
    [c"anon", c"authenticated"]
        .iter()
        .filter_map(|r| role_oid(r))
        .any(|r| unsafe { pg_sys::has_privs_of_role(role, r) })
}

/// Whether `role` is privileged: a superuser, the extension's owner, or a member of
/// `service_role`.
pub fn is_privileged(role: pg_sys::Oid, owner: pg_sys::Oid) -> bool {
    let superuser = unsafe { pg_sys::superuser_arg(role) };
    superuser
        || unsafe { pg_sys::has_privs_of_role(role, owner) }
        || role_oid(c"service_role")
            .is_some_and(|sr| unsafe { pg_sys::has_privs_of_role(role, sr) })
}

/// Identify the caller, the extension's owner being known already.
pub fn caller_given_owner(owner: pg_sys::Oid) -> Caller {
    let outer = unsafe { pg_sys::GetOuterUserId() };
    if is_privileged(outer, owner) {
        return Caller::Privileged;
    }
    match jwt_sub() {
        Some(sub) => Caller::User(sub),
        None => Caller::Unidentified,
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    fn caller() -> Caller {
        caller_given_owner(crate::schema::extension().owner)
    }

    #[pg_test]
    fn the_superuser_is_privileged() {
        assert_eq!(caller(), Caller::Privileged);
    }

    #[pg_test]
    fn an_authenticated_request_is_its_jwt_sub() {
        Spi::run(
            "CREATE ROLE nura_test_authenticated NOLOGIN; \
             SET LOCAL ROLE nura_test_authenticated; \
             SELECT set_config('request.jwt.claims', \
                '{\"sub\": \"11111111-1111-4111-8111-111111111111\", \"role\": \"authenticated\"}', true)",
        )
        .unwrap();
        let expected = Uuid::from_bytes([
            0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x41, 0x11, 0x81, 0x11, 0x11, 0x11, 0x11, 0x11,
            0x11, 0x11,
        ]);
        assert_eq!(caller(), Caller::User(expected));
        assert!(caller().may_act_on(expected));
        assert!(!caller().may_act_on(Uuid::from_bytes([0x22; 16])));
        Spi::run("SELECT set_config('request.jwt.claims', '{\"sub\": \"not-a-uuid\"}', true)")
            .unwrap();
        assert_eq!(caller(), Caller::Unidentified);
        Spi::run("SELECT set_config('request.jwt.claims', '', true)").unwrap();
        assert_eq!(caller(), Caller::Unidentified);
    }
}
