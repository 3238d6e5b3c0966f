//! The switch (docs/cutover.md, "The switch"): the legacy table moves to `nura_legacy` (the kept
//! table), and a view of its old name and columns takes its place, over the kept table and an
//! owner-rights map of `users`; writes to the view go to the kept table and into `users`
//! (`view.rs`). The unswitch puts the table back. Each is one transaction.
//!
//! The view (`security_invoker`) reads the kept table with the caller's rights, so the table's
//! grants and policies keep applying; the map (`<table>_map`, `security_barrier`, owned by the
//! extension's owner) reads `users`, aliases and profiles, and shows an API role (a member of
//! `anon` or `authenticated`) only the rows of its own user (`view::nura_cutover_viewer`).

use super::catalog;
use super::locks;
use super::state::{self, Step, TableState, KEPT_SCHEMA};
use super::steps::Stop;
use crate::errors::{Error, OrRaise};
use crate::migration::Table;
use crate::plans;
use pgrx::prelude::*;
use serde::Deserialize;
use serde_json::json;

/// A column of the legacy table, as the view repeats it.
#[derive(Deserialize)]
pub(super) struct Column {
    pub(super) name: String,
    /// `format_type` of its type and typmod.
    type_sql: String,
    /// A collation other than its type's, qualified.
    collation: Option<String>,
    pub(super) generated: bool,
    /// Its default expression, rendered with qualified names.
    default: Option<String>,
}

/// The columns of relation `rel` (a quoted, qualified name), in order.
pub(super) fn columns(rel: &str) -> Vec<Column> {
    catalog::read(
        "SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object( \
             'name', a.attname::text, \
             'type_sql', pg_catalog.format_type(a.atttypid, a.atttypmod), \
             'collation', (SELECT pg_catalog.quote_ident(cn.nspname::text) OPERATOR(pg_catalog.||) '.' \
                                  OPERATOR(pg_catalog.||) pg_catalog.quote_ident(co.collname::text) \
                           FROM pg_catalog.pg_collation co \
                           JOIN pg_catalog.pg_namespace cn ON cn.oid OPERATOR(pg_catalog.=) co.collnamespace \
                           WHERE co.oid OPERATOR(pg_catalog.=) a.attcollation \
                             AND a.attcollation OPERATOR(pg_catalog.<>) t.typcollation), \
             'generated', a.attgenerated OPERATOR(pg_catalog.<>) '', \
             'default', CASE WHEN a.attgenerated OPERATOR(pg_catalog.=) '' \
                             THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid) END) \
             ORDER BY a.attnum), '[]') \
         FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid \
         LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid OPERATOR(pg_catalog.=) a.attrelid \
              AND d.adnum OPERATOR(pg_catalog.=) a.attnum \
         WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1) \
           AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped",
        &[rel.into()],
    )
}

/// A view that reads relation `rel`: its name and what recreates it.
#[derive(Deserialize)]
struct Dependent {
    name: String,
    definition: String,
    options: Option<Vec<String>>,
}

/// The views that read `rel`, with their definitions rendered now (names qualified: the step's
/// `search_path` is `pg_catalog`), so that they can be made again to read what has the name.
fn dependents(rel: &str) -> Vec<Dependent> {
    catalog::read(
        "SELECT COALESCE(pg_catalog.jsonb_agg(DISTINCT pg_catalog.jsonb_build_object( \
             'name', pg_catalog.quote_ident(n.nspname::text) OPERATOR(pg_catalog.||) '.' \
                     OPERATOR(pg_catalog.||) pg_catalog.quote_ident(v.relname::text), \
             'definition', pg_catalog.pg_get_viewdef(v.oid), \
             'options', v.reloptions)), '[]') \
         FROM pg_catalog.pg_depend d \
         JOIN pg_catalog.pg_rewrite r ON r.oid OPERATOR(pg_catalog.=) d.objid \
         JOIN pg_catalog.pg_class v ON v.oid OPERATOR(pg_catalog.=) r.ev_class \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) v.relnamespace \
         WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
           AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
           AND d.refobjid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1) \
           AND v.oid OPERATOR(pg_catalog.<>) d.refobjid AND v.relkind OPERATOR(pg_catalog.=) 'v'",
        &[rel.into()],
    )
}

/// `CREATE OR REPLACE VIEW` of `d` with its options.
fn recreate_sql(d: &Dependent) -> String {
    let options = d
        .options
        .as_ref()
        .filter(|o| !o.is_empty())
        .map_or(String::new(), |o| format!(" WITH ({})", o.join(", ")));
    format!(
        "CREATE OR REPLACE VIEW {}{options} AS {}",
        d.name,
        d.definition.trim_end().trim_end_matches(';')
    )
}

/// The map's name for `table`, qualified.
fn map_name(table: Table) -> String {
    format!("{KEPT_SCHEMA}.{}_map", table.name())
}

/// The map: each legacy id of `table` with its user's values, for the rows the caller may see.
fn map_sql(ext: &str, table: Table) -> String {
    format!(
        "CREATE VIEW {map} WITH (security_barrier = true) AS \
         SELECT a.alias_id AS legacy_id, u.email, u.full_name, u.phone_number, u.is_active, \
                u.privacy_settings, u.current_streak, u.xp, \
                (SELECT p.service_preferences FROM {ext}.user_service_profiles p \
                 WHERE p.user_id OPERATOR(pg_catalog.=) u.id \
                   AND p.service_type OPERATOR(pg_catalog.=) 'chat') AS notification_prefs \
         FROM {ext}.user_id_aliases a \
         JOIN {ext}.users u ON u.id OPERATOR(pg_catalog.=) a.user_id \
         WHERE a.source OPERATOR(pg_catalog.=) '{name}' \
           AND u.id OPERATOR(pg_catalog.=) COALESCE((SELECT {ext}.nura_cutover_viewer()), u.id)",
        map = map_name(table),
        name = table.name(),
    )
}

/// The view: every column of the table, in its order and with its exact type; those with a home
/// in `users` (and chat's preferences) from the map, the rest from the kept row.
fn view_sql(s: &TableState, view: &str, kept: &str, columns: &[Column]) -> String {
    let table = s.table();
    let mut homed = table.user_columns();
    if table == Table::Chat {
        homed.push(("notification_prefs", "notification_prefs"));
    }
    let select: Vec<String> = columns
        .iter()
        .map(|c| {
            let name = spi::quote_identifier(&c.name);
            match homed.iter().find(|(_, col)| *col == c.name) {
                Some((field, _)) => {
                    let collate = c
                        .collation
                        .as_ref()
                        .map_or(String::new(), |co| format!(" COLLATE {co}"));
                    format!("m.{field}::{}{collate} AS {name}", c.type_sql)
                }
                None => format!("k.{name}"),
            }
        })
        .collect();
    format!(
        "CREATE VIEW {view} WITH (security_invoker = true, security_barrier = true) AS SELECT {} FROM {kept} k \
         JOIN {map} m ON m.legacy_id OPERATOR(pg_catalog.=) k.{id}",
        select.join(", "),
        map = map_name(table),
        id = spi::quote_identifier(table.id_column()),
    )
}

/// The table's grants, as GRANT statements on `to` (its owner's own rights apart), and what the
/// same grantees get on the map: SELECT, and UPDATE for those who may update (which `SELECT …
/// FOR UPDATE` on the view needs).
fn grant_sql(kept: &str, to: &str, map: &str) -> Vec<String> {
    let grants = catalog::read::<Vec<(String, String, bool)>>(
        "SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array( \
             CASE WHEN x.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' \
                  ELSE pg_catalog.quote_ident(r.rolname::text) END, x.privilege_type, x.is_grantable) \
             ORDER BY x.grantee, x.privilege_type), '[]') \
         FROM pg_catalog.pg_class c \
         CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) x \
         LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) x.grantee \
         WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1) \
           AND x.grantee OPERATOR(pg_catalog.<>) c.relowner",
        &[kept.into()],
    );
    let mut sql: Vec<String> = grants
        .iter()
        .map(|(role, privilege, grantable)| {
            let option = if *grantable { " WITH GRANT OPTION" } else { "" };
            format!("GRANT {privilege} ON {to} TO {role}{option}")
        })
        .collect();
    // Column grants (UPDATE (full_name), say) carry over column by column.
    let columns = catalog::read::<Vec<(String, String, String, bool)>>(
        "SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array( \
             CASE WHEN x.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' \
                  ELSE pg_catalog.quote_ident(r.rolname::text) END, x.privilege_type, \
             pg_catalog.quote_ident(a.attname::text), x.is_grantable) \
             ORDER BY x.grantee, a.attnum, x.privilege_type), '[]') \
         FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.attrelid \
         CROSS JOIN LATERAL pg_catalog.aclexplode(a.attacl) x \
         LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) x.grantee \
         WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1) \
           AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped \
           AND x.grantee OPERATOR(pg_catalog.<>) c.relowner",
        &[kept.into()],
    );
    sql.extend(columns.iter().map(|(role, privilege, column, grantable)| {
        let option = if *grantable { " WITH GRANT OPTION" } else { "" };
        format!("GRANT {privilege} ({column}) ON {to} TO {role}{option}")
    }));
    let mut roles: Vec<&String> = grants
        .iter()
        .map(|(r, _, _)| r)
        .chain(columns.iter().map(|(r, _, _, _)| r))
        .collect();
    roles.sort();
    roles.dedup();
    for role in roles {
        let update = grants.iter().any(|(r, p, _)| r == role && p == "UPDATE")
            || columns
                .iter()
                .any(|(r, p, _, _)| r == role && p == "UPDATE");
        let privileges = if update { "SELECT, UPDATE" } else { "SELECT" };
        sql.push(format!("GRANT {privileges} ON {map} TO {role}"));
    }
    sql
}

/// The switch's statements after the table moved: the map, the view, its owner, defaults,
/// INSTEAD OF trigger, the rule that refuses ON CONFLICT, grants and comment.
/// `source` is the table as it is named when the statements are made (before its move), read
/// for its columns, owner, comment and grants; `kept`, its name once moved.
fn create_sql(ext: &str, s: &TableState, view: &str, kept: &str, source: &str) -> Vec<String> {
    let table = s.table();
    let columns = columns(source);
    let (owner, comment) = catalog::read::<(String, Option<String>)>(
        "SELECT pg_catalog.jsonb_build_array(pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(c.relowner)::text), \
                pg_catalog.obj_description(c.oid, 'pg_class')) \
         FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1)",
        &[source.into()],
    );
    let mut sql = vec![
        map_sql(ext, table),
        view_sql(s, view, kept, &columns),
        format!("ALTER VIEW {view} OWNER TO {owner}"),
    ];
    sql.extend(columns.iter().filter_map(|c| {
        c.default.as_ref().map(|d| {
            format!(
                "ALTER VIEW {view} ALTER COLUMN {} SET DEFAULT {d}",
                spi::quote_identifier(&c.name)
            )
        })
    }));
    sql.push(format!(
        "CREATE TRIGGER nura_cutover_view_write INSTEAD OF INSERT OR UPDATE OR DELETE ON {view} \
         FOR EACH ROW EXECUTE FUNCTION {ext}.nura_cutover_view_trigger('{}')",
        table.name()
    ));
    sql.push(format!(
        "CREATE RULE nura_cutover_no_upsert AS ON UPDATE TO {view} WHERE false DO ALSO NOTHING"
    ));
    sql.push(format!(
        "COMMENT ON RULE nura_cutover_no_upsert ON {view} IS \
         'nura_users cutover: makes INSERT ... ON CONFLICT on this view fail (0A000) instead of ignoring the clause; docs/cutover.md'"
    ));
    sql.extend(grant_sql(source, view, &map_name(table)));
    // The view's owner (the table's) reads it through the map as well.
    sql.push(format!(
        "GRANT SELECT, UPDATE ON {} TO {owner}",
        map_name(table)
    ));
    if let Some(comment) = comment {
        sql.push(format!(
            "COMMENT ON VIEW {view} IS {}",
            spi::quote_literal(&comment)
        ));
    }
    sql
}

/// Switch (one transaction): the table to `nura_legacy`, the view in its place, and the views
/// that read the table made again to read the view. Every statement is made first (the views'
/// definitions rendered under the table's lock: what is executed is what they are now), then
/// run with the lock budget of [`locks::execute_bounded`].
pub(super) fn switch(ext: &str, s: &TableState, attempt: i32) -> Result<(), Stop> {
    let view = format!(
        "{}.{}",
        spi::quote_identifier(&s.legacy_schema),
        s.legacy_table
    );
    let kept = format!("{KEPT_SCHEMA}.{}", s.legacy_table);
    if catalog::relation(KEPT_SCHEMA, &s.legacy_table).is_some() {
        return Err(Stop::Refused(Error::new(
            PgSqlErrorCode::ERRCODE_DUPLICATE_TABLE,
            format!(
                "{kept} exists already: the switch keeps {} there",
                s.legacy_table
            ),
        )));
    }
    if let Some(owner) = foreign_schema_owner() {
        return Err(Stop::Refused(Error::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "the schema {KEPT_SCHEMA} is owned by {owner}, who could drop the kept tables: the switch keeps them only in a schema of the extension's owner"
            ),
        )
        .hint("DROP SCHEMA nura_legacy (it is empty before the first switch), or give it to the extension's owner.")));
    }
    // The table alone; the views that read it are locked by their CREATE OR REPLACE, bounded.
    let waited =
        locks::lock(std::slice::from_ref(&view), "ACCESS EXCLUSIVE").map_err(Stop::Waiting)?;
    let mut statements = vec![
        format!("CREATE SCHEMA IF NOT EXISTS {KEPT_SCHEMA}"),
        format!("ALTER TABLE {view} SET SCHEMA {KEPT_SCHEMA}"),
    ];
    statements.extend(create_sql(ext, s, &view, &kept, &view));
    statements.extend(dependents(&view).iter().map(recreate_sql));
    let waited = waited + locks::execute_bounded(&statements).map_err(Stop::Waiting)?;
    let mut next = s.clone();
    next.switched = true;
    state::save(ext, &next);
    state::log_step(
        ext,
        Step {
            table: &s.legacy_table,
            action: "switch",
            object: Some(view),
            detail: json!({"statements": statements}),
            attempts: attempt,
            lock_wait_ms: waited,
        },
    );
    Ok(())
}

/// The owner of the schema `nura_legacy` when it exists and is neither the extension's owner
/// (who runs the switch) nor a superuser.
fn foreign_schema_owner() -> Option<String> {
    plans::read_scalar::<String>(
        "SELECT o.rolname::text FROM pg_catalog.pg_namespace n \
         JOIN pg_catalog.pg_roles o ON o.oid OPERATOR(pg_catalog.=) n.nspowner \
         WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND NOT o.rolsuper \
           AND o.rolname OPERATOR(pg_catalog.<>) CURRENT_USER",
        &[KEPT_SCHEMA.into()],
    )
    .or_raise("cutover switch")
}

/// Unswitch (one transaction): the table back under its name, the views that read the view made
/// again to read it, the view and the map dropped. The table's grants, policies, triggers and
/// keys never left it.
pub(super) fn unswitch(ext: &str, s: &TableState, attempt: i32) -> Result<(), Stop> {
    let view = format!(
        "{}.{}",
        spi::quote_identifier(&s.legacy_schema),
        s.legacy_table
    );
    let kept = format!("{KEPT_SCHEMA}.{}", s.legacy_table);
    let map = map_name(s.table());
    // The view first, as its readers take it (then the kept table, the map, users); the map is
    // locked by its DROP, bounded.
    let waited = locks::lock_all(&[
        (view.clone(), locks::VIEW_ONLY),
        (kept.clone(), "ACCESS EXCLUSIVE"),
    ])
    .map_err(Stop::Waiting)?;
    let set_aside = format!("nura_cutover_old_{}", s.legacy_table);
    let mut statements = vec![
        format!("ALTER VIEW {view} RENAME TO {set_aside}"),
        format!(
            "ALTER TABLE {kept} SET SCHEMA {}",
            spi::quote_identifier(&s.legacy_schema)
        ),
    ];
    statements.extend(dependents(&view).iter().map(recreate_sql));
    statements.push(format!(
        "DROP VIEW {}.{set_aside}",
        spi::quote_identifier(&s.legacy_schema)
    ));
    statements.push(format!("DROP VIEW {map}"));
    let waited = waited + locks::execute_bounded(&statements).map_err(Stop::Waiting)?;
    let mut next = s.clone();
    next.switched = false;
    state::save(ext, &next);
    state::log_step(
        ext,
        Step {
            table: &s.legacy_table,
            action: "unswitch",
            object: Some(view),
            detail: json!({"statements": statements}),
            attempts: attempt,
            lock_wait_ms: waited,
        },
    );
    Ok(())
}
