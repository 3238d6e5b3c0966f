//! `jsonb` values without a trip through text.
//!
//! pgrx's `JsonB` turns a `serde_json::Value` into `jsonb` by printing it and calling `jsonb_in`,
//! and a `jsonb` into a `Value` by calling `jsonb_out` and parsing the text. On the sync path (its
//! result, the log row's before and after) that is a measurable share of a call (BENCHMARKS.md).
//! This `JsonB` has the same shape and SQL type and builds the `jsonb` directly with PostgreSQL's
//! own `pushJsonbValue` / `JsonbValueToJsonb` (what `to_jsonb` and `jsonb_in` use underneath), and
//! reads one by walking it with `JsonbIterator`. The values are the same as the text path gives:
//! keys are sorted and de-duplicated by PostgreSQL, numbers go through `numeric_in` / `numeric_out`
//! with the text serde_json prints and reads, strings are copied byte for byte, and what `jsonb_in`
//! refuses is refused with its error (a NUL character, 22P05; a string over 256 MB, 54000). A
//! result whose shape the code knows (a sync's, with its `users` row) skips the `Value` as well:
//! [`Builder`] pushes it key by key as it is made.

use pgrx::pg_sys;
use pgrx::pg_sys::jbvType::{jbvBool, jbvNull, jbvNumeric, jbvString};
use pgrx::pg_sys::JsonbIteratorToken::{
    WJB_BEGIN_ARRAY, WJB_BEGIN_OBJECT, WJB_DONE, WJB_ELEM, WJB_END_ARRAY, WJB_END_OBJECT, WJB_KEY,
    WJB_VALUE,
};
use pgrx::prelude::*;
use pgrx::{FromDatum, IntoDatum};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use std::ffi::CString;

/// A `jsonb` value (drop-in for `pgrx::JsonB`).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonB(pub Value);

pgrx::impl_sql_translatable!(JsonB, "jsonb");

impl Serialize for JsonB {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl IntoDatum for JsonB {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(to_datum(&self.0))
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

impl FromDatum for JsonB {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<JsonB> {
        // SAFETY: a datum of type jsonb (or a domain over it), as MaybeDeep reads it.
        let read = unsafe { MaybeDeep::from_polymorphic_datum(datum, is_null, _typoid) }?;
        Some(JsonB(read.0.unwrap_or_else(|TooDeep| too_deep())))
    }
}

// The calling-convention glue pgrx gives its own JsonB, so that this one can be an argument, a
// return value, an array element or a table column of a #[pg_extern] function.
// SAFETY (the four impls): jsonb is a by-reference varlena; FromDatum/IntoDatum above read and
// write exactly that, and these only route to them.
unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for JsonB {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }

    unsafe fn unbox_nullable_arg(
        arg: pgrx::callconv::Arg<'_, 'fcx>,
    ) -> pgrx::nullable::Nullable<Self> {
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

unsafe impl pgrx::callconv::BoxRet for JsonB {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        match self.into_datum() {
            Some(datum) => unsafe { fcinfo.return_raw_datum(datum) },
            None => fcinfo.return_null(),
        }
    }
}

unsafe impl pgrx::datum::UnboxDatum for JsonB {
    type As<'src> = JsonB;

    unsafe fn unbox<'src>(d: pgrx::datum::Datum<'src>) -> Self::As<'src>
    where
        Self: 'src,
    {
        unsafe { JsonB::from_datum(d.sans_lifetime(), false) }.expect("a non-null jsonb")
    }
}

/// A `jsonb` value from a query, returned as PostgreSQL made it: never turned into a `Value` and
/// back. The lookups (`nura_get_user`, `nura_get_service_profile`, `nura_user_for_*`) build
/// their result in SQL and hand it on. Read from an SPI result (in [`crate::plans`]), it is
/// detoasted and moved into the memory of SPI's caller with `SPI_datumTransfer`, so it outlives
/// `SPI_finish` exactly as long as that caller's memory (a row's, in a query over many rows).
/// Made with [`RawJsonb::from_value`], it is a jsonb built in the current memory context, passed
/// as an SPI argument (the migration's and the sync log's arrays, the log's before and after)
/// without a copy of its `Value`. Made with [`RawJsonb::from_builder`], it is a function's
/// result (`nura_sync_user`, `nura_update_profile`), returned as it is.
#[derive(Debug, Clone, Copy)]
pub struct RawJsonb(pg_sys::Datum);

pgrx::impl_sql_translatable!(RawJsonb, "jsonb");

impl FromDatum for RawJsonb {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<RawJsonb> {
        if is_null {
            return None;
        }
        // SAFETY: a non-null jsonb datum of an SPI result, read while SPI is connected (the only
        // use, see the type's comment); the detoasted copy, if any, is freed after the transfer.
        unsafe {
            with_detoasted(datum, |jsonb| {
                Some(RawJsonb(pg_sys::SPI_datumTransfer(
                    pg_sys::Datum::from(jsonb),
                    false,
                    -1,
                )))
            })
        }
    }
}

impl RawJsonb {
    /// The jsonb a [`Builder`] made.
    pub fn from_builder(builder: Builder<'_>) -> Self {
        RawJsonb(builder.finish())
    }

    /// `value` built as a jsonb datum (see [`to_datum`]), to pass on as an SPI argument without
    /// a copy of the `Value`.
    pub fn from_value(value: &Value) -> Self {
        RawJsonb(to_datum(value))
    }
}

impl IntoDatum for RawJsonb {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

// SAFETY: returns the jsonb datum as is (see IntoDatum above).
unsafe impl pgrx::callconv::BoxRet for RawJsonb {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        unsafe { fcinfo.return_raw_datum(self.0) }
    }
}

/// A `jsonb` argument as PostgreSQL passed it, detoasted and never read into a `Value` as a
/// whole: a function reads only the members it uses ([`Container`]), so a value of any size or
/// depth that PostgreSQL accepts reaches it, and one it passes on (as an SPI argument) goes
/// unchanged. For user-controlled jsonb: a deep `user_metadata` or preference must not fail a
/// call that never looks inside it.
#[derive(Debug, Clone, Copy)]
pub struct JsonbArg(*mut pg_sys::Jsonb);

pgrx::impl_sql_translatable!(JsonbArg, "jsonb");

impl FromDatum for JsonbArg {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<JsonbArg> {
        if is_null {
            return None;
        }
        // SAFETY: a non-null jsonb datum; a detoasted copy lives in the memory of the call.
        Some(JsonbArg(unsafe {
            pg_sys::pg_detoast_datum(datum.cast_mut_ptr()).cast()
        }))
    }
}

impl IntoDatum for JsonbArg {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.0))
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

// SAFETY: as for JsonB's (a by-reference varlena, read and written by the impls above).
unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for JsonbArg {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }

    unsafe fn unbox_nullable_arg(
        arg: pgrx::callconv::Arg<'_, 'fcx>,
    ) -> pgrx::nullable::Nullable<Self> {
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

impl JsonbArg {
    /// The value's root container.
    pub fn root(&self) -> Container<'_> {
        // SAFETY: self.0 is a detoasted jsonb for the whole call.
        Container(
            unsafe { std::ptr::addr_of_mut!((*self.0).root) },
            std::marker::PhantomData,
        )
    }
}

/// A `jsonb` column value read into a `Value` where it can be: one nested deeper than
/// [`MAX_DEPTH`] is `Err(TooDeep)` rather than an ERROR, so that a caller reading many rows (the
/// migration's legacy rows) can set that one row aside and go on.
pub struct MaybeDeep(pub Result<Value, TooDeep>);

impl FromDatum for MaybeDeep {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<MaybeDeep> {
        if is_null {
            return None;
        }
        // SAFETY: a non-null jsonb datum, read within the call.
        unsafe {
            with_detoasted(datum, |jsonb| {
                Some(MaybeDeep(try_read(std::ptr::addr_of_mut!(
                    (*jsonb.cast::<pg_sys::Jsonb>()).root
                ))))
            })
        }
    }
}

impl IntoDatum for MaybeDeep {
    /// Read-only (the trait is what pgrx asks of a type read from a row).
    fn into_datum(self) -> Option<pg_sys::Datum> {
        None
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

/// A container (object, array, or the array holding a scalar at the top) inside a detoasted
/// jsonb that lives for `'a`.
#[derive(Debug, Clone, Copy)]
pub struct Container<'a>(
    *mut pg_sys::JsonbContainer,
    std::marker::PhantomData<&'a pg_sys::Jsonb>,
);

/// A member of an object as [`Container::members`] gives it: scalars read, containers not.
pub enum Member<'a> {
    Scalar(Value),
    Container(Container<'a>),
}

impl<'a> Container<'a> {
    fn header(self) -> u32 {
        // SAFETY: a valid container (the type's invariant).
        unsafe { (*self.0).header }
    }

    pub fn is_object(self) -> bool {
        self.header() & pg_sys::JB_FOBJECT != 0
    }

    /// The value read into a `Value`, unless it nests deeper than [`MAX_DEPTH`].
    pub fn read(self) -> Result<Value, TooDeep> {
        // SAFETY: a valid container of a detoasted jsonb.
        unsafe { try_read(self.0) }
    }

    /// The string an object holds under `key` (`None`: no such key, not a string, not an
    /// object). Found by PostgreSQL's binary search over the object's keys: nothing else in
    /// the value is read, whatever its size or depth.
    pub fn string_member(self, key: &str) -> Option<String> {
        if !self.is_object() {
            return None;
        }
        // SAFETY: an object container; the key is passed with its length (no NUL needed); the
        // result, when found, is written into `found` and points into the container.
        unsafe {
            let mut found: pg_sys::JsonbValue = std::mem::zeroed();
            let hit = pg_sys::getKeyJsonValueFromContainer(
                self.0,
                key.as_ptr() as *const std::ffi::c_char,
                key.len() as i32,
                &mut found,
            );
            (!hit.is_null() && found.type_ == jbvString).then(|| text(&found))
        }
    }

    /// Whether the value nests deeper than [`MAX_DEPTH`] (a walk with PostgreSQL's iterator,
    /// nothing read into a `Value`).
    pub fn too_deep(self) -> bool {
        // SAFETY: the iterator walks this valid container; values are only counted.
        unsafe {
            let mut it = pg_sys::JsonbIteratorInit(self.0);
            let mut v: pg_sys::JsonbValue = std::mem::zeroed();
            let mut depth = 0usize;
            loop {
                match pg_sys::JsonbIteratorNext(&mut it, &mut v, false) {
                    WJB_DONE => return false,
                    WJB_BEGIN_ARRAY | WJB_BEGIN_OBJECT => {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return true;
                        }
                    }
                    WJB_END_ARRAY | WJB_END_OBJECT => depth -= 1,
                    _ => {}
                }
            }
        }
    }

    /// The length of the value's text form (what `jsonb::text` prints), for size limits.
    pub fn text_len(self) -> usize {
        // SAFETY: JsonbToCString walks the container iteratively into a new palloc'd string.
        unsafe {
            let out = pg_sys::JsonbToCString(std::ptr::null_mut(), self.0, 64);
            let len = std::ffi::CStr::from_ptr(out).to_bytes().len();
            pg_sys::pfree(out.cast());
            len
        }
    }

    /// The members of an object in key order: scalars as values, containers unread. `None`
    /// when this is not an object.
    pub fn members(self) -> Option<Vec<(String, Member<'a>)>> {
        if !self.is_object() {
            return None;
        }
        let mut members = Vec::new();
        // SAFETY: the iterator walks this container's top level only (skipNested); a nested
        // container comes as a jbvBinary pointing into the same detoasted jsonb.
        unsafe {
            let mut it = pg_sys::JsonbIteratorInit(self.0);
            let mut v: pg_sys::JsonbValue = std::mem::zeroed();
            let mut key = None;
            loop {
                match pg_sys::JsonbIteratorNext(&mut it, &mut v, true) {
                    WJB_DONE => break,
                    WJB_KEY => key = Some(text(&v)),
                    WJB_VALUE => {
                        let member = if v.type_ == pg_sys::jbvType::jbvBinary {
                            Member::Container(Container(
                                v.val.binary.data,
                                std::marker::PhantomData,
                            ))
                        } else {
                            Member::Scalar(scalar(&v))
                        };
                        members.push((key.take().expect("a value follows its key"), member));
                    }
                    _ => {}
                }
            }
        }
        Some(members)
    }
}

/// Run `f` on the root container of jsonb `datum` (detoasted for the call, the copy freed
/// afterwards).
///
/// # Safety
/// `datum` must be a non-null jsonb; `f` must not keep the container.
pub unsafe fn with_container<R>(datum: pg_sys::Datum, f: impl FnOnce(Container<'_>) -> R) -> R {
    // SAFETY: per the caller.
    unsafe {
        with_detoasted(datum, |jsonb| {
            f(Container(
                &mut (*jsonb.cast::<pg_sys::Jsonb>()).root,
                std::marker::PhantomData,
            ))
        })
    }
}

/// Run `f` on the detoasted form of varlena `datum`, freeing that form afterwards when it is a
/// copy.
///
/// # Safety
/// `datum` must be a non-null varlena; `f` must not keep the pointer it is given.
unsafe fn with_detoasted<R>(datum: pg_sys::Datum, f: impl FnOnce(*mut pg_sys::varlena) -> R) -> R {
    let raw = datum.cast_mut_ptr::<pg_sys::varlena>();
    // SAFETY: per the caller, raw is a varlena; a copy made here is ours to free.
    unsafe {
        let detoasted = pg_sys::pg_detoast_datum(raw);
        let result = f(detoasted);
        if detoasted != raw {
            pg_sys::pfree(detoasted.cast());
        }
        result
    }
}

/// `value` as a `jsonb` datum, palloc'd in the current memory context.
pub fn to_datum(value: &Value) -> pg_sys::Datum {
    let mut state: *mut pg_sys::JsonbParseState = std::ptr::null_mut();
    let root = match value {
        Value::Object(_) | Value::Array(_) => push(&mut state, None, value),
        scalar => {
            // A scalar at the top is stored as a one-element "raw scalar" array.
            let mut array = pg_sys::JsonbValue {
                type_: pg_sys::jbvType::jbvArray,
                val: pg_sys::JsonbValue__bindgen_ty_1 {
                    array: pg_sys::JsonbValue__bindgen_ty_1__bindgen_ty_2 {
                        nElems: 1,
                        elems: std::ptr::null_mut(),
                        rawScalar: true,
                    },
                },
            };
            // SAFETY: state is a valid (empty) parse state; array lives across the call.
            unsafe { pg_sys::pushJsonbValue(&mut state, WJB_BEGIN_ARRAY, &mut array) };
            push(&mut state, Some(WJB_ELEM), scalar);
            // SAFETY: closes the array opened above.
            unsafe { pg_sys::pushJsonbValue(&mut state, WJB_END_ARRAY, std::ptr::null_mut()) }
        }
    };
    // SAFETY: root is the finished top-level container pushJsonbValue returned.
    pg_sys::Datum::from(unsafe { pg_sys::JsonbValueToJsonb(root) })
}

/// Push `value` into the parse state: as the next element or value (`token`) when it is a
/// scalar, as a whole container otherwise. Returns what pushJsonbValue returned for the last
/// step (for a container: the container itself once it is closed).
fn push(
    state: &mut *mut pg_sys::JsonbParseState,
    token: Option<pg_sys::JsonbIteratorToken::Type>,
    value: &Value,
) -> *mut pg_sys::JsonbValue {
    // A value nested deeper than the stack allows ends in PostgreSQL's error, not a crash.
    // SAFETY: reads the stack pointer and raises ERROR (54001) past max_stack_depth.
    unsafe { pg_sys::check_stack_depth() };
    // SAFETY (all pushJsonbValue calls): `state` is the parse state of this build, each scalar
    // lives until JsonbValueToJsonb has copied it (strings point into `value`, which the
    // caller borrows for the whole build), and containers are opened and closed in order.
    unsafe {
        match value {
            Value::Object(map) => {
                pg_sys::pushJsonbValue(state, WJB_BEGIN_OBJECT, std::ptr::null_mut());
                // In jsonb's key order (shorter first, then bytewise), so that PostgreSQL's
                // sort of the keys finds them sorted and stops after one pass.
                let mut pairs: Vec<(&String, &Value)> = map.iter().collect();
                pairs.sort_unstable_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.0.cmp(b.0)));
                for (key, item) in pairs {
                    let mut k = string(key);
                    pg_sys::pushJsonbValue(state, WJB_KEY, &mut k);
                    push(state, Some(WJB_VALUE), item);
                }
                pg_sys::pushJsonbValue(state, WJB_END_OBJECT, std::ptr::null_mut())
            }
            Value::Array(items) => {
                pg_sys::pushJsonbValue(state, WJB_BEGIN_ARRAY, std::ptr::null_mut());
                for item in items {
                    push(state, Some(WJB_ELEM), item);
                }
                pg_sys::pushJsonbValue(state, WJB_END_ARRAY, std::ptr::null_mut())
            }
            scalar => {
                let mut v = match scalar {
                    Value::Null => pg_sys::JsonbValue {
                        type_: jbvNull,
                        val: pg_sys::JsonbValue__bindgen_ty_1 { boolean: false },
                    },
                    Value::Bool(b) => pg_sys::JsonbValue {
                        type_: jbvBool,
                        val: pg_sys::JsonbValue__bindgen_ty_1 { boolean: *b },
                    },
                    Value::Number(n) => pg_sys::JsonbValue {
                        type_: jbvNumeric,
                        val: pg_sys::JsonbValue__bindgen_ty_1 {
                            numeric: numeric(&n.to_string()),
                        },
                    },
                    Value::String(s) => string(s),
                    Value::Object(_) | Value::Array(_) => {
                        unreachable!("containers are matched above")
                    }
                };
                pg_sys::pushJsonbValue(state, token.unwrap_or(WJB_ELEM), &mut v)
            }
        }
    }
}

/// A jsonb value pushed piece by piece, for results whose shape the code knows (a `users` row,
/// a sync result): no `Value` is built and walked in between. Keys and borrowed strings live for
/// `'a`; strings made on the way are kept in the builder until [`Builder::finish`] has copied
/// them. Keys may come in any order (PostgreSQL sorts them); in jsonb's own order (shorter
/// first, then bytewise) its sort finds them sorted in one pass.
pub struct Builder<'a> {
    state: *mut pg_sys::JsonbParseState,
    last: *mut pg_sys::JsonbValue,
    open: Vec<Open>,
    made: Vec<String>,
    _borrowed: std::marker::PhantomData<&'a str>,
}

/// A container the builder has open. PostgreSQL's parse state trusts its caller to pair every
/// value in an object with a key before it (a value without one is written past the pairs it
/// has room for), so the builder checks the order itself.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Open {
    Array,
    /// `keyed`: a key has been pushed and its value not yet.
    Object {
        keyed: bool,
    },
}

impl<'a> Builder<'a> {
    pub fn new() -> Self {
        Builder {
            state: std::ptr::null_mut(),
            last: std::ptr::null_mut(),
            open: Vec::new(),
            made: Vec::new(),
            _borrowed: std::marker::PhantomData,
        }
    }

    /// SAFETY (all pushJsonbValue calls of the builder): `state` is this build's parse state,
    /// containers are opened and closed in order and every value in an object follows its key
    /// (checked by `open`, see [`Builder::next_value`]), and a scalar's bytes live in `'a` or
    /// in `made` until `finish`.
    fn push_token(&mut self, token: pg_sys::JsonbIteratorToken::Type, v: *mut pg_sys::JsonbValue) {
        self.last = unsafe { pg_sys::pushJsonbValue(&mut self.state, token, v) };
    }

    /// The token of the next value (or container, `container`), after checking that it may
    /// come here: in an array at any time, in an object only right after its key, at the top
    /// only as the one root container.
    fn next_value(&mut self, container: bool) -> pg_sys::JsonbIteratorToken::Type {
        match self.open.last_mut() {
            Some(Open::Array) => WJB_ELEM,
            Some(Open::Object { keyed }) => {
                assert!(*keyed, "a jsonb value in an object follows its key");
                *keyed = false;
                WJB_VALUE
            }
            None => {
                assert!(
                    container && self.last.is_null(),
                    "a jsonb build has one container at its top"
                );
                WJB_ELEM
            }
        }
    }

    fn scalar(&mut self, mut v: pg_sys::JsonbValue) {
        let token = self.next_value(false);
        self.push_token(token, &mut v);
    }

    pub fn begin_object(&mut self) {
        self.next_value(true);
        self.push_token(WJB_BEGIN_OBJECT, std::ptr::null_mut());
        self.open.push(Open::Object { keyed: false });
    }

    pub fn end_object(&mut self) {
        let closed = self.open.pop();
        assert!(
            closed == Some(Open::Object { keyed: false }),
            "end_object closes an object whose last key has its value"
        );
        self.push_token(WJB_END_OBJECT, std::ptr::null_mut());
    }

    pub fn begin_array(&mut self) {
        self.next_value(true);
        self.push_token(WJB_BEGIN_ARRAY, std::ptr::null_mut());
        self.open.push(Open::Array);
    }

    pub fn end_array(&mut self) {
        let closed = self.open.pop();
        assert!(closed == Some(Open::Array), "end_array closes an array");
        self.push_token(WJB_END_ARRAY, std::ptr::null_mut());
    }

    pub fn key(&mut self, key: &'a str) {
        match self.open.last_mut() {
            Some(Open::Object { keyed }) if !*keyed => *keyed = true,
            _ => panic!("a jsonb key comes inside an object, after the previous key's value"),
        }
        let mut k = string(key);
        self.push_token(WJB_KEY, &mut k);
    }

    pub fn null(&mut self) {
        self.scalar(pg_sys::JsonbValue {
            type_: jbvNull,
            val: pg_sys::JsonbValue__bindgen_ty_1 { boolean: false },
        });
    }

    pub fn bool(&mut self, b: bool) {
        self.scalar(pg_sys::JsonbValue {
            type_: jbvBool,
            val: pg_sys::JsonbValue__bindgen_ty_1 { boolean: b },
        });
    }

    /// An integer, as the numeric `to_jsonb` stores for one (made from the integer here, from
    /// its text there: the same normalised value, scale 0).
    pub fn int(&mut self, n: i64) {
        // SAFETY: int64_to_numeric pallocs a numeric from any int64.
        let numeric = unsafe { pg_sys::int64_to_numeric(n) };
        self.scalar(pg_sys::JsonbValue {
            type_: jbvNumeric,
            val: pg_sys::JsonbValue__bindgen_ty_1 { numeric },
        });
    }

    pub fn str(&mut self, s: &'a str) {
        self.scalar(string(s));
    }

    /// A string made on the way, kept until `finish`.
    pub fn string(&mut self, s: String) {
        // The String's heap buffer does not move when the String moves into `made`.
        let v = string(&s);
        self.made.push(s);
        self.scalar(v);
    }

    /// A `Value` (a jsonb column's), as the next value or element.
    pub fn value(&mut self, value: &'a Value) {
        let token = self.next_value(false);
        self.last = push(&mut self.state, Some(token), value);
    }

    /// The finished value as a jsonb datum, palloc'd in the current memory context.
    pub fn finish(self) -> pg_sys::Datum {
        assert!(
            self.open.is_empty() && !self.last.is_null(),
            "a finished jsonb has its containers closed"
        );
        // SAFETY: last is the closed top-level container pushJsonbValue returned; the strings
        // it points at (in 'a and in made) are alive until this call has copied them.
        pg_sys::Datum::from(unsafe { pg_sys::JsonbValueToJsonb(self.last) })
    }
}

impl Default for Builder<'_> {
    fn default() -> Self {
        Self::new()
    }
}

/// A jsonb string pointing at `s` (not copied: the caller keeps `s` alive).
fn string(s: &str) -> pg_sys::JsonbValue {
    if s.len() > pg_sys::JENTRY_OFFLENMASK as usize {
        crate::errors::raise(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!(
                "string too long to represent as jsonb string ({} bytes, at most {})",
                s.len(),
                pg_sys::JENTRY_OFFLENMASK
            ),
            None,
        );
    }
    if s.as_bytes().contains(&0) {
        pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_UNTRANSLATABLE_CHARACTER,
            "unsupported Unicode escape sequence",
            "nura_users",
        )
        .set_detail("\\u0000 cannot be converted to text.")
        .report(PgLogLevel::ERROR);
        unreachable!("an ERROR does not return");
    }
    pg_sys::JsonbValue {
        type_: jbvString,
        val: pg_sys::JsonbValue__bindgen_ty_1 {
            string: pg_sys::JsonbValue__bindgen_ty_1__bindgen_ty_1 {
                len: s.len() as i32,
                val: s.as_ptr() as *mut std::ffi::c_char,
            },
        },
    }
}

/// `numeric_in` of a number as serde_json prints it.
fn numeric(text: &str) -> pg_sys::Numeric {
    let text = CString::new(text).expect("a printed number has no NUL");
    // SAFETY: numeric_in takes (cstring, typioparam, typmod) and returns a numeric or raises.
    unsafe {
        pgrx::direct_function_call_as_datum(
            pg_sys::numeric_in,
            &[
                Some(pg_sys::Datum::from(text.as_ptr())),
                Some(pg_sys::Datum::from(pg_sys::InvalidOid)),
                Some(pg_sys::Datum::from(-1i32)),
            ],
        )
        .expect("numeric_in returns a value")
        .cast_mut_ptr()
    }
}

/// How deep a jsonb value may nest to be read into a `Value` (serde_json's own limit, which the
/// text path had): `Value`s are cloned, compared and dropped recursively on the backend's stack.
pub const MAX_DEPTH: usize = 128;

/// ERROR 54001 for a value too deep to read into a `Value`.
fn too_deep() -> ! {
    crate::errors::raise(
        PgSqlErrorCode::ERRCODE_STATEMENT_TOO_COMPLEX,
        format!("a jsonb value nests deeper than {MAX_DEPTH} levels"),
        None,
    )
}

/// A jsonb value nests deeper than [`MAX_DEPTH`]: it cannot be read into a `Value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep;

/// [`read`], telling a value too deep to read instead of raising.
///
/// # Safety
/// `root` must point at a container of a detoasted jsonb.
unsafe fn try_read(root: *mut pg_sys::JsonbContainer) -> Result<Value, TooDeep> {
    // One entry per open container: the container and, for an object, the key of the value
    // being read.
    enum Open {
        Array(Vec<Value>, bool),
        Object(Map<String, Value>, Option<String>),
    }
    fn add(stack: &mut [Open], value: Value) -> Option<Value> {
        match stack.last_mut() {
            Some(Open::Array(items, _)) => {
                items.push(value);
                None
            }
            Some(Open::Object(map, key)) => {
                map.insert(key.take().expect("a value follows its key"), value);
                None
            }
            None => Some(value),
        }
    }
    let mut stack: Vec<Open> = Vec::new();
    // SAFETY: the caller passes a valid container; the iterator and values are palloc'd.
    unsafe {
        let mut it = pg_sys::JsonbIteratorInit(root);
        let mut v: pg_sys::JsonbValue = std::mem::zeroed();
        loop {
            let token = pg_sys::JsonbIteratorNext(&mut it, &mut v, false);
            let finished = match token {
                WJB_DONE => break,
                WJB_BEGIN_ARRAY | WJB_BEGIN_OBJECT if stack.len() >= MAX_DEPTH => {
                    return Err(TooDeep)
                }
                WJB_BEGIN_ARRAY => {
                    stack.push(Open::Array(Vec::new(), v.val.array.rawScalar));
                    None
                }
                WJB_BEGIN_OBJECT => {
                    stack.push(Open::Object(Map::new(), None));
                    None
                }
                WJB_KEY => {
                    if let Some(Open::Object(_, key)) = stack.last_mut() {
                        *key = Some(text(&v));
                    }
                    None
                }
                WJB_VALUE | WJB_ELEM => add(&mut stack, scalar(&v)),
                WJB_END_ARRAY => match stack.pop() {
                    Some(Open::Array(mut items, true)) => add(&mut stack, items.remove(0)),
                    Some(Open::Array(items, false)) => add(&mut stack, Value::Array(items)),
                    _ => unreachable!("jsonb containers are balanced"),
                },
                WJB_END_OBJECT => match stack.pop() {
                    Some(Open::Object(map, _)) => add(&mut stack, Value::Object(map)),
                    _ => unreachable!("jsonb containers are balanced"),
                },
                other => unreachable!("unknown jsonb iterator token {other}"),
            };
            if let Some(done) = finished {
                return Ok(done);
            }
        }
    }
    Ok(Value::Null)
}

/// The text of a jsonb string value.
///
/// # Safety
/// `v` must be a jbvString from the iterator.
unsafe fn text(v: &pg_sys::JsonbValue) -> String {
    // SAFETY: per the caller, val.string points at len bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts(v.val.string.val as *const u8, v.val.string.len as usize)
    };
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => crate::errors::raise(
            PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
            "a jsonb string is not valid UTF-8",
            None,
        ),
    }
}

/// A scalar from the iterator as a `Value`.
///
/// # Safety
/// `v` must be a scalar JsonbValue from the iterator.
unsafe fn scalar(v: &pg_sys::JsonbValue) -> Value {
    // SAFETY: the union member read is the one `type_` names.
    unsafe {
        match v.type_ {
            t if t == jbvNull => Value::Null,
            t if t == jbvBool => Value::Bool(v.val.boolean),
            t if t == jbvString => Value::String(text(v)),
            t if t == jbvNumeric => {
                let out: &std::ffi::CStr = pgrx::direct_function_call(
                    pg_sys::numeric_out,
                    &[Some(pg_sys::Datum::from(v.val.numeric))],
                )
                .expect("numeric_out returns a value");
                // serde_json keeps the digits as printed (arbitrary_precision): every numeric
                // jsonb holds is a JSON number it reads, of any size or precision.
                let number = serde_json::from_slice(out.to_bytes()).unwrap_or_else(|e| {
                    crate::errors::raise(
                        PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
                        format!("a jsonb number cannot be read: {e}"),
                        None,
                    )
                });
                pg_sys::pfree(out.as_ptr() as *mut std::ffi::c_void);
                number
            }
            other => unreachable!("jsonb scalar of type {other}"),
        }
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;
    use serde_json::json;

    /// What PostgreSQL's own text input makes of the same value.
    fn via_text(value: &Value) -> String {
        Spi::get_one_with_args::<String>(
            "SELECT $1::text::jsonb::text",
            &[value.to_string().into()],
        )
        .unwrap()
        .unwrap()
    }

    fn direct(value: &Value) -> String {
        Spi::get_one_with_args::<String>("SELECT $1::text", &[JsonB(value.clone()).into()])
            .unwrap()
            .unwrap()
    }

    #[pg_test]
    fn built_jsonb_equals_jsonb_in() {
        let values = [
            json!({}),
            json!([]),
            json!(null),
            json!(true),
            json!(-12),
            json!("x"),
            json!({"b": 1, "a": [1, 2.5, -0.001, 1e20, 18446744073709551615u64, "s", null, false,
                  {"z": {}, "y": []}], "aa": "ünï €", "": "", "quote\"\\\n": "\t"}),
            json!([[[]], {"k": [{"k": 1}]}]),
        ];
        for v in &values {
            assert_eq!(direct(v), via_text(v), "{v}");
        }
    }

    #[pg_test]
    fn read_jsonb_equals_parsed_text() {
        for text in [
            "{}",
            "[]",
            "null",
            "\"s\"",
            "3.14159265358979323846",
            "{\"b\": [1, {\"c\": null}], \"a\": \"ü\", \"n\": -1.50, \"t\": true}",
            "[1e-7, 123456789012345678901234567890]",
        ] {
            let read = Spi::get_one_with_args::<JsonB>("SELECT $1::jsonb", &[text.into()])
                .unwrap()
                .unwrap()
                .0;
            let printed =
                Spi::get_one_with_args::<String>("SELECT $1::jsonb::text", &[text.into()])
                    .unwrap()
                    .unwrap();
            assert_eq!(
                read,
                serde_json::from_str::<Value>(&printed).unwrap(),
                "{text}"
            );
        }
    }

    #[pg_test]
    fn a_toasted_jsonb_is_read() {
        Spi::run(
            "CREATE TEMP TABLE big (j jsonb); \
             ALTER TABLE big ALTER j SET STORAGE EXTERNAL; \
             INSERT INTO big SELECT jsonb_build_object('k', repeat('x', 100000), 'n', 1)",
        )
        .unwrap();
        assert_eq!(
            Spi::get_one::<bool>("SELECT pg_column_size(j) < 100000 FROM big").unwrap(),
            Some(false),
            "stored uncompressed, out of line"
        );
        let read = Spi::get_one::<JsonB>("SELECT j FROM big")
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(read["k"].as_str().map(str::len), Some(100000));
        assert_eq!(read["n"], json!(1));
    }

    #[pg_test(error = "unsupported Unicode escape sequence")]
    fn a_nul_character_is_refused_as_jsonb_in_does() {
        direct(&json!({"k": "a\u{0}b"}));
    }

    /// As deep as serde_json read through text (128 levels) reads; one level more is refused
    /// with 54001 instead of growing Rust's recursion on the backend's stack without bound.
    #[pg_test]
    fn nesting_is_read_to_128_levels() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let read = Spi::get_one_with_args::<JsonB>("SELECT $1::jsonb", &[nested(128).into()])
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(read.to_string(), nested(128));
    }

    #[pg_test(error = "a jsonb value nests deeper than 128 levels")]
    fn nesting_deeper_than_128_levels_is_refused() {
        Spi::get_one_with_args::<JsonB>(
            "SELECT $1::jsonb",
            &[format!("{}{}", "[".repeat(129), "]".repeat(129)).into()],
        )
        .unwrap();
    }

    /// The lookups hand on the jsonb their query built: over many rows in one query (each
    /// result in its row's memory) and for a value too large to stay inline, the same as the
    /// SQL it comes from.
    #[pg_test]
    fn lookups_return_what_their_query_built() {
        Spi::run(
            "SELECT public.nura_sync_user(jsonb_build_object('id', \
                 ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid, \
                 'email', 'u' || i || '@example.com', 'full_name', 'User ' || i)) \
             FROM generate_series(1, 50) AS i",
        )
        .unwrap();
        assert_eq!(
            Spi::get_one::<i64>(
                "SELECT count(*) FROM public.users u WHERE public.nura_user_for_chat(u.id) = \
                 jsonb_build_object('id', u.id, 'email', u.email, 'full_name', u.full_name, \
                     'privacy_settings', u.privacy_settings, 'chat_preferences', '{}'::jsonb)"
            )
            .unwrap(),
            Some(50)
        );
        Spi::run(
            "UPDATE public.users SET privacy_settings = jsonb_build_object('k', repeat('x', 100000)) \
             WHERE email = 'u7@example.com'",
        )
        .unwrap();
        assert_eq!(
            Spi::get_one::<bool>(
                "SELECT public.nura_get_user(u.id) = to_jsonb(u) FROM public.users u \
                 WHERE email = 'u7@example.com'"
            )
            .unwrap(),
            Some(true)
        );
    }

    /// A users row pushed by the builder (the `user` of every sync result) is the jsonb that
    /// `to_jsonb` makes of the same row: every kind of column, NULLs, a nested object, and text
    /// that needs escaping.
    #[pg_test]
    fn a_pushed_users_row_equals_to_jsonb() {
        use crate::user_row::UserRow;
        Spi::run(
            "SELECT public.nura_sync_user('{\"id\": \"00000000-0000-4000-8000-00000000abcd\", \
                 \"email\": \"Row@Example.com\", \"full_name\": \"Ünï \\\"q\\\" €\", \
                 \"bio\": \"line\\nbreak\\ttab\"}'); \
             UPDATE public.users SET xp = 1234567, current_streak = 3, \
                 last_active_at = '2026-11-26 10:00:00.5+03', email_confirmed_at = '1999-12-31 23:59:59.999999+00', \
                 privacy_settings = '{\"b\": [1, 2.5, null, {\"z\": {}}], \"a\": \"x\", \"long_key_name\": true}' \
             WHERE id = '00000000-0000-4000-8000-00000000abcd'",
        )
        .unwrap();
        let row = crate::plans::first_row(
            &format!(
                "SELECT {} FROM public.users WHERE id = '00000000-0000-4000-8000-00000000abcd'",
                UserRow::column_list()
            ),
            &[],
            UserRow::from_tuple,
        )
        .unwrap()
        .unwrap();
        let mut b = Builder::new();
        b.begin_array();
        row.push_json(&mut b);
        b.int(-42);
        b.str("s");
        b.end_array();
        let built = RawJsonb::from_builder(b);
        let same = Spi::get_one_with_args::<bool>(
            "SELECT $1 = jsonb_build_array(to_jsonb(u), -42, 's') AND $1::text = jsonb_build_array(to_jsonb(u), -42, 's')::text \
             FROM public.users u WHERE id = '00000000-0000-4000-8000-00000000abcd'",
            &[built.into()],
        )
        .unwrap();
        assert_eq!(same, Some(true));
        // The row's other renderings: on its own (a function's result), and as a Value (log
        // payloads), which must not drift apart from it.
        for rendered in [row.to_jsonb(), RawJsonb::from_value(&row.to_json())] {
            let same = Spi::get_one_with_args::<bool>(
                "SELECT $1::text = to_jsonb(u)::text \
                 FROM public.users u WHERE id = '00000000-0000-4000-8000-00000000abcd'",
                &[rendered.into()],
            )
            .unwrap();
            assert_eq!(same, Some(true));
        }
    }

    /// PostgreSQL's parse state does not check that an object's values follow keys (a value
    /// without one is written past the pairs it has room for); the builder refuses one.
    #[pg_test(error = "a jsonb value in an object follows its key")]
    fn a_value_without_its_key_is_refused() {
        let mut b = Builder::new();
        b.begin_object();
        b.key("k");
        b.int(1);
        b.int(2);
    }

    #[pg_test(error = "end_object closes an object whose last key has its value")]
    fn a_key_without_its_value_is_refused() {
        let mut b = Builder::new();
        b.begin_object();
        b.key("k");
        b.end_object();
    }

    #[pg_test(error = "a jsonb key comes inside an object, after the previous key's value")]
    fn two_keys_in_a_row_are_refused() {
        let mut b = Builder::new();
        b.begin_object();
        b.key("a");
        b.key("b");
    }
}
