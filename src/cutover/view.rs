//! Writes through a switched table's view (docs/cutover.md, "The switch"): its INSTEAD OF
//! trigger (`nura_cutover_view_trigger`, `sql/cutover.sql`) hands each row here. Rows travel as
//! their record text (`row::text`), which every type reads back exactly, as COPY does (JSON
//! could not carry a `json` cell holding `\u0000`); the view's columns are the kept table's, in
//! order and type, so a view row's text is a kept row's.

use super::capture;
use super::mirror::OwnWrites;
use super::state::{self, TableState, KEPT_SCHEMA};
use super::switch::columns;
use crate::access;
use crate::errors::{Error, OrRaise};
use crate::migration::Table;
use crate::plans;
use crate::schema::extension_schema;
use pgrx::prelude::*;
use pgrx::Uuid;

/// Who `role` may see through a view, or write: everyone, or only its own user (an API role).
enum Viewer {
    All,
    Only(Option<Uuid>),
}

fn viewer(role: pg_sys::Oid) -> Viewer {
    let owner = crate::schema::extension().owner;
    if access::is_privileged(role, owner) || !access::is_api_role(role) {
        Viewer::All
    } else {
        Viewer::Only(access::jwt_sub())
    }
}

/// For the map of a switched table's view: NULL when the reader sees every row (the owner, a
/// superuser, `service_role`, and roles that are neither `anon` nor `authenticated`, such as a
/// service's own login), else the user it may see: its JWT `sub`, or the nil uuid when it has
/// none (no row). The reader is the current user, as for the product's own policies: inside a
/// SECURITY DEFINER function of the product, its owner. Called once per query (an InitPlan).
#[pg_extern(stable, parallel_safe)]
fn nura_cutover_viewer() -> Option<Uuid> {
    match viewer(unsafe { pg_sys::GetUserId() }) {
        Viewer::All => None,
        Viewer::Only(sub) => Some(sub.unwrap_or(Uuid::from_bytes([0; 16]))),
    }
}

/// The INSTEAD OF trigger's work: `op` on the view's row (`old_json`, the row before as
/// `to_json` text, for the placement; `old_row` and `new_row`, the rows as record text). INSERT
/// and DELETE write the kept table, whose capture trigger places them; an UPDATE writes the
/// columns it changed and is placed here, with the view's row before as the row before, so that
/// the three-way rule sees what the writer saw. Returns the view's row after the write as record
/// text (RETURNING shows it; the kept row when the view cannot show it, its placement waiting in
/// the backlog), an empty text after a DELETE, or NULL when there was no row.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_cutover_view_write(
    legacy_table: &str,
    op: &str,
    old_json: Option<&str>,
    old_row: Option<&str>,
    new_row: Option<&str>,
) -> Option<String> {
    let ext = extension_schema();
    let table = Table::ALL
        .into_iter()
        .find(|t| t.name() == legacy_table)
        .unwrap_or_else(|| Error::invalid("legacy_table", "unknown legacy table").raise());
    let s = state::load(&ext, table)
        .filter(|s| s.switched)
        .unwrap_or_else(|| {
            Error::new(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("{legacy_table} is not switched: its view takes no writes"),
            )
            .raise()
        });
    let kept = s.kept_name();
    let old_id = old_row.and_then(|r| id_of(&s, &kept, r));
    let new_id = new_row.and_then(|r| id_of(&s, &kept, r));
    check_caller(table, old_id.or(new_id), new_id);
    match (op, old_id, new_id) {
        ("INSERT", _, Some(id)) => {
            let written = insert(&kept, new_row.unwrap_or_default());
            Some(view_row(&s, id).unwrap_or(written))
        }
        ("INSERT", _, None) => Error::invalid(
            table.id_column(),
            format!("{}.{} must not be NULL", table.name(), table.id_column()),
        )
        .raise(),
        ("UPDATE", Some(old_id), Some(new_id)) if old_id != new_id => Error::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "{}.{} cannot change while the table is switched",
                table.name(),
                table.id_column()
            ),
        )
        .hint("Insert a row with the new id and delete the old one.")
        .raise(),
        ("UPDATE", Some(id), Some(_)) => {
            let rows = (old_row.unwrap_or_default(), new_row.unwrap_or_default());
            update(&ext, &s, id, old_json.unwrap_or("{}"), rows);
            view_row(&s, id)
        }
        ("DELETE", Some(id), _) => {
            let deleted = plans::execute_count(
                &format!(
                    "DELETE FROM {kept} k WHERE k.{} OPERATOR(pg_catalog.=) $1",
                    spi::quote_identifier(table.id_column())
                ),
                &[id.into()],
            )
            .or_raise("cutover view");
            (deleted > 0).then(String::new)
        }
        _ => None,
    }
}

/// The legacy id of a view row (record text), read as a kept row.
fn id_of(s: &TableState, kept: &str, row: &str) -> Option<Uuid> {
    plans::read_scalar::<Uuid>(
        &format!(
            "SELECT ($1::pg_catalog.text::{kept}).{}",
            spi::quote_identifier(s.table().id_column())
        ),
        &[row.into()],
    )
    .or_raise("cutover view")
}

/// An API role writes only its own user's rows (42501): a row whose legacy id is its user's, or
/// a new row with its user's id. The view shows it no other, and the product's policies on the
/// kept table do not see writes made here. The writer is the session's role (its SET ROLE):
/// inside the trigger, which runs as the extension's owner, the current user of the statement
/// is not known, so a product function of another owner writing for an API role is held to the
/// API role's rule (the safe side).
fn check_caller(table: Table, id: Option<Uuid>, new_id: Option<Uuid>) {
    let Viewer::Only(sub) = viewer(unsafe { pg_sys::GetOuterUserId() }) else {
        return;
    };
    let ext = extension_schema();
    // A new row's id is no legacy id yet: its own.
    let user_of =
        |id: Uuid| crate::profiles::user_of_legacy_id(&ext, id, table.name()).or(Some(id));
    let own = |id: Option<Uuid>| id.is_none() || (sub.is_some() && id.and_then(user_of) == sub);
    if !(own(id) && own(new_id)) {
        Error::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "{}: an API role writes only the rows of its own user",
                table.name()
            ),
        )
        .raise();
    }
}

/// The columns of the kept table a write may set (its generated ones apart), quoted.
fn writable(kept: &str) -> Vec<String> {
    columns(kept)
        .into_iter()
        .filter(|c| !c.generated)
        .map(|c| spi::quote_identifier(&c.name))
        .collect()
}

/// INSERT of `row` (record text) into the kept table; the row as written (after its triggers),
/// as record text.
fn insert(kept: &str, row: &str) -> String {
    let columns = writable(kept);
    let values: Vec<String> = columns.iter().map(|c| format!("(n.r).{c}")).collect();
    plans::scalar::<String>(
        &format!(
            "INSERT INTO {kept} AS k ({}) OVERRIDING SYSTEM VALUE \
             SELECT {} FROM (SELECT $1::pg_catalog.text::{kept} AS r) n \
             RETURNING k::pg_catalog.text",
            columns.join(", "),
            values.join(", ")
        ),
        &[row.into()],
    )
    .or_raise("cutover view")
    .unwrap_or_default()
}

/// UPDATE of the columns the new row changes (against the old, both record text) in the kept
/// row of `id`, then its placement as a live UPDATE. The row before it is placed from is the
/// kept row as it was, with the changed columns as the writer saw them (`old_json`, the view's
/// row): a changed value then meets the user's by the three-way rule from what the writer saw,
/// and a column it did not change is no change, whatever the view showed for it (a merged
/// person's row without a phone shows the phone of the user).
fn update(ext: &str, s: &TableState, id: Uuid, old_json: &str, (old_row, new_row): (&str, &str)) {
    let kept = s.kept_name();
    let all = writable(&kept);
    // Compared as text: json has no equality, and text is what the row holds.
    let tests: Vec<String> = all
        .iter()
        .map(|c| {
            format!(
                "CASE WHEN (n.r).{c}::pg_catalog.text IS DISTINCT FROM (o.r).{c}::pg_catalog.text \
                 THEN {} END",
                spi::quote_literal(c)
            )
        })
        .collect();
    let changed = plans::read_scalar::<Vec<String>>(
        &format!(
            "SELECT pg_catalog.array_remove(ARRAY[{}]::pg_catalog.text[], NULL) \
             FROM (SELECT $1::pg_catalog.text::{kept} AS r) n, (SELECT $2::pg_catalog.text::{kept} AS r) o",
            tests.join(", ")
        ),
        &[new_row.into(), old_row.into()],
    )
    .or_raise("cutover view")
    .unwrap_or_default();
    if changed.is_empty() {
        return;
    }
    let before = row_before(s, &kept, id, old_json, &changed);
    let values: Vec<String> = changed.iter().map(|c| format!("(n.r).{c}")).collect();
    {
        let _own = OwnWrites::begin(&s.legacy_table);
        plans::execute(
            &format!(
                "UPDATE {kept} k SET ({}) = (SELECT {} FROM (SELECT $1::pg_catalog.text::{kept} AS r) n) \
                 WHERE k.{id} OPERATOR(pg_catalog.=) $2",
                changed.join(", "),
                values.join(", "),
                id = spi::quote_identifier(s.table().id_column()),
            ),
            &[new_row.into(), id.into()],
        )
        .or_raise("cutover view");
    }
    capture::place_statement(ext, s.table(), KEPT_SCHEMA, vec![id], vec![before]);
}

/// The kept row of `id` as it is (`to_json` text), with the `changed` columns (quoted names)
/// as the view's row before (`old_json`) had them: the row the UPDATE is placed from.
fn row_before(s: &TableState, kept: &str, id: Uuid, old_json: &str, changed: &[String]) -> String {
    let current = plans::scalar::<String>(
        &format!(
            "SELECT pg_catalog.to_json(k)::pg_catalog.text FROM {kept} k WHERE k.{} OPERATOR(pg_catalog.=) $1",
            spi::quote_identifier(s.table().id_column())
        ),
        &[id.into()],
    )
    .or_raise("cutover view")
    .unwrap_or_else(|| old_json.to_string());
    let parse =
        |text: &str| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text);
    let (Ok(mut row), Ok(seen)) = (parse(&current), parse(old_json)) else {
        return current;
    };
    for (name, value) in seen {
        if changed.contains(&spi::quote_identifier(&name)) {
            row.insert(name, value);
        }
    }
    serde_json::Value::Object(row).to_string()
}

/// The view's row of legacy id `id`, as record text, if the view shows it.
fn view_row(s: &TableState, id: Uuid) -> Option<String> {
    plans::scalar::<String>(
        &format!(
            "SELECT v::pg_catalog.text FROM {}.{} v WHERE v.{} OPERATOR(pg_catalog.=) $1",
            spi::quote_identifier(&s.legacy_schema),
            s.legacy_table,
            spi::quote_identifier(s.table().id_column())
        ),
        &[id.into()],
    )
    .or_raise("cutover view")
}
