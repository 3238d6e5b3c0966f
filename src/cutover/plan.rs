//! `nura_cutover_plan`'s report (docs/cutover.md, "What exists now"; the design,
//! docs/design/cutover.md, §4.1, whose sections the comments below cite as §n): per
//! legacy table present, its rows, its references with their counts, its dependents and its
//! blockers. The catalog comes from `catalog`, the reason texts from `reasons`; the data counts
//! are here, one aggregate per reference (and per unique key a reference is part of), run with
//! the parallel costs at 0 as verify's are.

use super::catalog::{self, ForeignKey, LegacyRelation, MigrationRuns, ReferencingTable};
use super::reasons::{self, Blocker};
use super::state::TableState;
use super::{ExtraReference, LegacySchema};
use crate::migration::Table;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier as quote;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

/// A legacy table present in the legacy schema, with what the plan says of it.
struct TablePlan {
    table: Table,
    rel: LegacyRelation,
    /// Its quoted, schema-qualified name.
    shown: String,
    rows: Option<i64>,
    references: Vec<ReferencePlan>,
    /// Foreign keys to it from legacy tables (itself included): not references, they stay with
    /// the kept table (§1, §12). The key's name and its table's shown name.
    legacy_keys: Vec<(String, String)>,
    dependents: Vec<Dependent>,
    /// Of the table itself (the migration, its kind, its id), found first.
    blockers: Vec<Blocker>,
    /// Of what depends on it, found last.
    dependent_blockers: Vec<Blocker>,
}

impl TablePlan {
    /// Its id column holds uuids: aliases (uuid) can name its ids.
    fn uuid_ids(&self) -> bool {
        self.rel.id.as_ref().is_some_and(|id| id.is_uuid)
    }

    /// A table or partitioned table: its rows can be counted.
    fn readable(&self) -> bool {
        self.rel.relkind == "r" || self.rel.relkind == "p"
    }

    /// `FROM` the table: its own rows, an inheritance child's left out (those are the child's).
    fn rows_from(&self) -> String {
        let only = if self.rel.relkind == "r" { "ONLY " } else { "" };
        format!("{only}{}", self.shown)
    }
}

/// A reference to a legacy table: a foreign key, or an entry of `extra_references`.
struct ReferencePlan {
    on: Rc<ReferencingTable>,
    columns: Vec<String>,
    key: Option<ForeignKey>,
    counts: Option<Counts>,
    blockers: Vec<Blocker>,
}

impl ReferencePlan {
    fn table(&self) -> String {
        format!("{}.{}", quote(&self.on.schema), quote(&self.on.name))
    }

    /// `<table>.<col>`, or `<table>.(<col>, <col>)` for a composite key.
    fn name(&self) -> String {
        match self.columns.as_slice() {
            [one] => format!("{}.{}", self.table(), quote(one)),
            many => format!("{}.({})", self.table(), quoted_list(many)),
        }
    }

    /// Its one column, when it has one.
    fn column(&self) -> Option<&str> {
        match self.columns.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

struct Counts {
    rows: i64,
    resolving: i64,
    examples: Vec<String>,
}

/// Something the switch touches, and what becomes of it (the design's §4.1 and §12).
struct Dependent {
    kind: &'static str,
    name: String,
    action: &'static str,
    note: Option<String>,
}

fn quoted_list(names: &[String]) -> String {
    names.iter().map(quote).collect::<Vec<_>>().join(", ")
}

/// The plan of `legacy`'s legacy tables with `extras` among their references.
pub(super) fn plan(ext: &str, legacy: &LegacySchema, extras: &[ExtraReference]) -> Value {
    crate::settings::with_settings(&crate::settings::PARALLEL_SCANS, || {
        let runs = catalog::migration_runs(ext, &legacy.name);
        let mut tables: Vec<TablePlan> = Table::ALL
            .into_iter()
            .filter_map(|t| {
                let rel = catalog::legacy_relation(legacy.oid, t.name(), t.id_column())?;
                let shown = format!("{}.{}", quote(&legacy.name), t.name());
                Some(TablePlan {
                    table: t,
                    rel,
                    shown,
                    rows: None,
                    references: Vec::new(),
                    legacy_keys: Vec::new(),
                    dependents: Vec::new(),
                    blockers: Vec::new(),
                    dependent_blockers: Vec::new(),
                })
            })
            .collect();
        find_references(&mut tables, extras);
        two_legacy_tables(&mut tables);
        not_moved(&mut tables);
        for t in &mut tables {
            count_table(ext, t, legacy, &runs);
            let found = dependents(t, legacy);
            t.dependents = found.dependents;
            t.dependent_blockers = found.blockers;
        }
        report(legacy, &tables, &super::state::load_all(ext, false))
    })
}

/// Every reference of every table, with the blockers its shape gives (the design's §6.1): the
/// foreign keys to it from tables that are not legacy tables themselves (those stay with the
/// kept table, and are dependents), then the extra references, sorted by table and column.
fn find_references(tables: &mut [TablePlan], extras: &[ExtraReference]) {
    let legacy_tables: HashMap<u32, String> = tables
        .iter()
        .map(|t| (t.rel.oid, t.shown.clone()))
        .collect();
    let mut referencing: HashMap<u32, Rc<ReferencingTable>> = HashMap::new();
    let mut on = |oid: u32| {
        referencing
            .entry(oid)
            .or_insert_with(|| Rc::new(catalog::referencing_table(pg_sys::Oid::from(oid))))
            .clone()
    };
    for t in tables.iter_mut() {
        let keys = catalog::foreign_keys_to(t.rel.oid());
        for key in keys {
            if let Some(from) = legacy_tables.get(&key.table) {
                t.legacy_keys.push((key.name, from.clone()));
                continue;
            }
            let columns = key.columns.clone();
            let reference = reference(on(key.table), columns, Some(key));
            t.references.push(reference);
        }
        for e in extras.iter().filter(|e| e.legacy == t.table) {
            let reference = reference(on(e.table.into()), vec![e.column.clone()], None);
            t.references.push(reference);
        }
        t.references.sort_by(|a, b| {
            let key = |r: &ReferencePlan| {
                let name = r.key.as_ref().map(|k| k.name.clone());
                (
                    r.on.schema.clone(),
                    r.on.name.clone(),
                    r.columns.clone(),
                    name,
                )
            };
            key(a).cmp(&key(b))
        });
        let (shown, id) = (t.shown.clone(), t.table.id_column());
        for r in &mut t.references {
            r.blockers = shape_blockers(r, &shown, id);
        }
    }
}

fn reference(
    on: Rc<ReferencingTable>,
    columns: Vec<String>,
    key: Option<ForeignKey>,
) -> ReferencePlan {
    ReferencePlan {
        on,
        columns,
        key,
        counts: None,
        blockers: Vec::new(),
    }
}

/// The blockers of a reference's shape (the design's §12), in the order a reader fixes them.
fn shape_blockers(r: &ReferencePlan, t: &str, id: &str) -> Vec<Blocker> {
    let name = r.name();
    let table = r.table();
    let mut found = Vec::new();
    if let Some(which) = &r.on.temporary {
        found.push(reasons::temporary_table(&name, &table, which == "own"));
    }
    if let Some(key) = &r.key {
        if key.columns.len() > 1 {
            let (cols, t_cols) = (quoted_list(&key.columns), quoted_list(&key.referenced));
            found.push(reasons::composite_key(
                &name,
                &quote(&key.name),
                &cols,
                t,
                &t_cols,
            ));
        } else if key.referenced.first().map(String::as_str) != Some(id) {
            let t_col = quoted_list(&key.referenced);
            found.push(reasons::non_id_key(&name, &quote(&key.name), t, &t_col));
        }
    }
    let column = r.column();
    // A key on another column holds that column's values: its type says nothing more.
    let on_id = r.key.as_ref().is_none_or(|k| k.referenced == [id]);
    if let Some(c) = column.and_then(|c| r.on.columns.iter().find(|x| x.name == c)) {
        if !c.is_uuid && on_id {
            found.push(reasons::reference_type(&name, &c.type_name));
        }
    }
    for p in &r.on.partition_keys {
        if let Some(c) = column.filter(|c| p.columns.iter().any(|x| x == c)) {
            let partitioned = format!("{}.{}", quote(&p.schema), quote(&p.name));
            found.push(reasons::partition_key(&name, &partitioned, &quote(c)));
        }
    }
    if !r.on.unique_keys.iter().any(|k| k.not_null) {
        found.push(reasons::no_row_key(&name, &table));
    }
    for k in &r.on.referenced_by {
        if column.is_some_and(|c| k.columns.iter().any(|x| x == c)) {
            let other = format!("{}.{}", quote(&k.schema), quote(&k.table));
            found.push(reasons::cascade_out(
                &name,
                &quote(&k.key),
                &quote(&k.constraint),
                &other,
            ));
        }
    }
    found
}

/// What the design carries but this release's CALL refuses (docs/cutover.md), with the CALL's
/// own reason, for the references no other blocker stops.
fn not_moved(tables: &mut [TablePlan]) {
    for r in tables.iter_mut().flat_map(|t| t.references.iter_mut()) {
        let Some(c) = r.column().map(str::to_string) else {
            continue;
        };
        if !r.blockers.is_empty() || r.on.temporary.is_some() {
            continue;
        }
        let why = if r.on.relkind == "p" {
            Some("is a column of a partitioned table, which this release does not move yet".into())
        } else {
            super::references::not_carried(pg_sys::Oid::from(r.on.oid), &c, r.key.as_ref())
        };
        if let Some(why) = why {
            r.blockers.push(reasons::not_moved(&r.name(), &why));
        }
    }
}

/// One column that references two legacy tables (§12, `two_legacy_tables`): every such reference
/// gets the blocker, naming both tables in precedence order.
fn two_legacy_tables(tables: &mut [TablePlan]) {
    let mut by_column: BTreeMap<(u32, String), Vec<String>> = BTreeMap::new();
    for t in tables.iter() {
        for r in &t.references {
            if let Some(c) = r.column() {
                let holders = by_column.entry((r.on.oid, c.to_string())).or_default();
                if !holders.contains(&t.shown) {
                    holders.push(t.shown.clone());
                }
            }
        }
    }
    for t in tables.iter_mut() {
        for r in &mut t.references {
            let Some(c) = r.column() else { continue };
            if let Some([first, second, ..]) =
                by_column.get(&(r.on.oid, c.to_string())).map(Vec::as_slice)
            {
                let blocker = reasons::two_legacy_tables(&r.name(), first, second);
                r.blockers.push(blocker);
            }
        }
    }
}

/// The data the plan reads for table `t`: its rows, the values of its references, and the
/// migration's placement of its rows.
fn count_table(ext: &str, t: &mut TablePlan, legacy: &LegacySchema, runs: &MigrationRuns) {
    if t.readable() {
        let sql = format!("SELECT pg_catalog.count(*) FROM {}", t.rows_from());
        t.rows = catalog::scalar::<i64>(&sql, &[]);
    }
    t.blockers = table_blockers(ext, t, legacy, runs);
    let countable = t.uuid_ids();
    let t_name = t.table.name();
    for r in &mut t.references {
        if !countable || r.on.temporary.is_some() || !moves_to_users(r, t.table) {
            continue;
        }
        let column = r.column().unwrap_or_default().to_string();
        let counts = count_values(ext, r, &column, t_name);
        let not_resolving = counts.rows - counts.resolving;
        if not_resolving > 0 {
            r.blockers.push(reasons::values_not_resolving(
                &r.name(),
                not_resolving,
                t_name,
            ));
        }
        r.counts = Some(counts);
        key_collisions(ext, r, &column, t_name);
    }
}

/// Whether the reference's values are ids of the legacy table that could move to `users(id)`:
/// one uuid column, holding the id (a key on another column holds other values).
fn moves_to_users(r: &ReferencePlan, t: Table) -> bool {
    let Some(column) = r.column() else {
        return false;
    };
    let uuid = r.on.columns.iter().any(|c| c.name == column && c.is_uuid);
    let on_id = r
        .key
        .as_ref()
        .is_none_or(|k| k.referenced == [t.id_column()]);
    uuid && on_id
}

/// `FROM` a referencing table: its own rows only, not an inheritance child's (a key of a parent
/// does not hold for its children); a partitioned table's are its partitions'.
fn rows_of(r: &ReferencePlan) -> String {
    let only = if r.on.relkind == "r" { "ONLY " } else { "" };
    format!("{only}{}", r.table())
}

/// A value resolves when it is an id of the legacy table with an alias to a user (the alias's
/// key to `users` cascades deletes, so an alias always leads to an existing user).
fn count_values(ext: &str, r: &ReferencePlan, column: &str, t_name: &str) -> Counts {
    let (from, col) = (rows_of(r), quote(column));
    let (rows, resolving) = catalog::read::<(i64, i64)>(
        &format!(
            "SELECT pg_catalog.jsonb_build_array(pg_catalog.count(*), pg_catalog.count(a.user_id)) \
             FROM {from} r \
             LEFT JOIN {ext}.user_id_aliases a ON a.alias_id OPERATOR(pg_catalog.=) r.{col} \
                  AND a.source OPERATOR(pg_catalog.=) $1 \
             WHERE r.{col} IS NOT NULL"
        ),
        &[t_name.into()],
    );
    let examples = if rows > resolving {
        catalog::read::<Vec<String>>(
            &format!(
                "SELECT COALESCE(pg_catalog.jsonb_agg(s.v ORDER BY s.v), '[]') \
                 FROM (SELECT DISTINCT r.{col}::pg_catalog.uuid AS v FROM {from} r \
                       WHERE r.{col} IS NOT NULL AND NOT EXISTS (SELECT FROM {ext}.user_id_aliases a \
                           WHERE a.alias_id OPERATOR(pg_catalog.=) r.{col} \
                             AND a.source OPERATOR(pg_catalog.=) $1) \
                       ORDER BY 1 LIMIT 5) s"
            ),
            &[t_name.into()],
        )
    } else {
        Vec::new()
    };
    Counts {
        rows,
        resolving,
        examples,
    }
}

/// A reference in a unique key (the primary key, §6.6): rows whose key would be another row's
/// once every value is its user's id. People with several ids of the legacy table make them.
fn key_collisions(ext: &str, r: &mut ReferencePlan, column: &str, t_name: &str) {
    let (from, col) = (rows_of(r), quote(column));
    let keys: Vec<_> =
        r.on.unique_keys
            .iter()
            .filter(|k| k.columns.iter().any(|c| c == column))
            .cloned()
            .collect();
    for key in keys {
        let mut partition: Vec<String> = key
            .columns
            .iter()
            .filter(|c| *c != column)
            .map(|c| format!("r.{}", quote(c)))
            .collect();
        partition.push(format!("COALESCE(a.user_id, r.{col})"));
        let present = key
            .columns
            .iter()
            .map(|c| format!("r.{} IS NOT NULL", quote(c)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let n = catalog::scalar::<i64>(
            &format!(
                "SELECT pg_catalog.count(*) FROM (SELECT pg_catalog.count(*) OVER (PARTITION BY {}) AS n \
                     FROM {from} r \
                     LEFT JOIN {ext}.user_id_aliases a ON a.alias_id OPERATOR(pg_catalog.=) r.{col} \
                          AND a.source OPERATOR(pg_catalog.=) $1 \
                     WHERE {present}) s \
                 WHERE s.n OPERATOR(pg_catalog.>) 1",
                partition.join(", ")
            ),
            &[t_name.into()],
        )
        .unwrap_or(0);
        if n > 0 {
            let index = (!key.primary).then(|| quote(&key.name).to_string());
            let blocker =
                reasons::key_collision(&r.name(), &r.table(), n, t_name, index.as_deref());
            r.blockers.push(blocker);
        }
    }
}

/// The blockers of the legacy table itself: the migration, its kind, its id, the kept table's
/// place, its ids that are other users' ids.
fn table_blockers(
    ext: &str,
    t: &TablePlan,
    legacy: &LegacySchema,
    runs: &MigrationRuns,
) -> Vec<Blocker> {
    let mut found = migration_blockers(ext, t, legacy, runs);
    if let Some(kind) = kind_refused(&t.rel) {
        found.push(reasons::legacy_table_kind(&t.shown, kind));
    }
    let id = quote(t.table.id_column());
    match &t.rel.id {
        None => found.push(reasons::legacy_id_type(&t.shown, &id, None)),
        Some(c) if !c.is_uuid => {
            found.push(reasons::legacy_id_type(&t.shown, &id, Some(&c.type_name)));
        }
        Some(_) => {}
    }
    // A view or a foreign table has no key at all; its kind says enough.
    if t.readable() && t.rel.id.is_some() && !t.rel.id_unique {
        found.push(reasons::legacy_id_not_unique(&t.shown, &id));
    }
    if t.rel.kept_name_taken {
        found.push(reasons::kept_name_taken(&t.shown, t.table.name()));
    }
    if t.uuid_ids() {
        let n = catalog::scalar::<i64>(
            &format!(
                "SELECT pg_catalog.count(*) FROM {ext}.user_id_aliases a \
                 JOIN {ext}.users u ON u.id OPERATOR(pg_catalog.=) a.alias_id \
                 WHERE a.source OPERATOR(pg_catalog.=) $1 \
                   AND a.user_id OPERATOR(pg_catalog.<>) a.alias_id"
            ),
            &[t.table.name().into()],
        )
        .unwrap_or(0);
        if n > 0 {
            found.push(reasons::ambiguous_ids(&t.shown, n, t.table.name()));
        }
    }
    found
}

/// What a legacy table is when it is not a plain table (the cutover moves plain tables only).
fn kind_refused(rel: &LegacyRelation) -> Option<&'static str> {
    match rel.relkind.as_str() {
        "p" => Some("a partitioned table"),
        "v" => Some("a view"),
        "m" => Some("a materialized view"),
        "f" => Some("a foreign table"),
        _ if rel.is_partition => Some("a partition"),
        _ if rel.inherits => Some("an inheritance child"),
        _ if rel.inherited => Some("an inheritance parent"),
        _ => None,
    }
}

/// The migration's blockers (docs/cutover.md, "What exists now"): no completed run, a run still
/// running, rows of the table the runs have not placed, rows that are unmigratable issues.
/// `nura_verify_migration` itself is not run: it reads every legacy row as JSON and compares its
/// values, which differ once users edit their data after the migration; the placement is what
/// the cutover needs, and its count here is verify's `missing`.
fn migration_blockers(
    ext: &str,
    t: &TablePlan,
    legacy: &LegacySchema,
    runs: &MigrationRuns,
) -> Vec<Blocker> {
    if let Some(run) = runs.latest.as_ref().filter(|r| r.status == "running") {
        return vec![reasons::migration_running(run.id)];
    }
    let Some(completed) = runs.completed else {
        return vec![reasons::migration_missing(&legacy.name)];
    };
    if !t.readable() || !t.uuid_ids() || !t.rel.id_unique {
        // Refused for its kind or its id already; reading its rows by id would be slow.
        return Vec::new();
    }
    let (rows, id, t_name) = (t.rows_from(), quote(t.table.id_column()), t.table.name());
    let counts = catalog::read::<(i64, i64)>(
        &format!(
            "SELECT pg_catalog.jsonb_build_array( \
                 (SELECT pg_catalog.count(*) FROM {rows} t \
                  WHERE NOT EXISTS (SELECT FROM {ext}.user_id_aliases a \
                          WHERE a.alias_id OPERATOR(pg_catalog.=) t.{id} AND a.source OPERATOR(pg_catalog.=) $1) \
                    AND NOT EXISTS (SELECT FROM {ext}.nura_migration_issues i \
                          WHERE i.kind OPERATOR(pg_catalog.=) 'unmigratable' \
                            AND i.source_table OPERATOR(pg_catalog.=) $1 \
                            AND i.run_id OPERATOR(pg_catalog.=) ANY ($2) \
                            AND i.source_id OPERATOR(pg_catalog.=) t.{id}::text)), \
                 (SELECT pg_catalog.count(*) FROM {ext}.nura_migration_issues i \
                  WHERE i.run_id OPERATOR(pg_catalog.=) $3 \
                    AND i.kind OPERATOR(pg_catalog.=) 'unmigratable' \
                    AND i.source_table OPERATOR(pg_catalog.=) $1 \
                    AND EXISTS (SELECT FROM {rows} t \
                          WHERE t.{id} OPERATOR(pg_catalog.=) {ext}.nura_legacy_uuid(i.source_id))))"
        ),
        &[t_name.into(), runs.counting.clone().into(), completed.into()],
    );
    let (missing, unmigratable) = counts;
    let mut found = Vec::new();
    if missing > 0 {
        found.push(reasons::migration_not_verified(
            &t.shown, completed, missing, t_name,
        ));
    }
    if unmigratable > 0 {
        found.push(reasons::unmigratable_rows(
            &t.shown,
            unmigratable,
            t_name,
            completed,
        ));
    }
    found
}

/// What a `users` field needs of the legacy column that shows it (§12, `column_type`).
#[derive(Clone, Copy)]
enum Fit {
    /// Text of up to this many characters.
    Text(i32),
    Json,
    Bool,
    Counter,
}

/// The columns the view reads from `users` and the chat profile (the design's §8.2): the legacy
/// column, the field it shows, what the column must hold.
fn shown_columns(t: Table) -> &'static [(&'static str, &'static str, Fit)] {
    const EMAIL: (&str, &str, Fit) = ("email", "users.email", Fit::Text(255));
    match t {
        Table::Chat => &[
            EMAIL,
            ("full_name", "users.full_name", Fit::Text(200)),
            ("phone_number", "users.phone_number", Fit::Text(32)),
            ("privacy_settings", "users.privacy_settings", Fit::Json),
            (
                "notification_prefs",
                "user_service_profiles.service_preferences",
                Fit::Json,
            ),
            ("is_active", "users.is_active", Fit::Bool),
        ],
        Table::Voice => &[
            ("name", "users.full_name", Fit::Text(200)),
            EMAIL,
            ("phone", "users.phone_number", Fit::Text(32)),
        ],
        Table::Custom => &[
            ("full_name", "users.full_name", Fit::Text(200)),
            ("current_streak", "users.current_streak", Fit::Counter),
            ("xp", "users.xp", Fit::Counter),
        ],
    }
}

fn fits(fit: Fit, base: &str) -> bool {
    let text = ["text", "varchar", "bpchar", "citext"].contains(&base);
    match fit {
        Fit::Text(_) => text,
        Fit::Json => text || base == "json" || base == "jsonb",
        Fit::Bool => base == "bool",
        Fit::Counter => ["int4", "int8", "numeric"].contains(&base),
    }
}

/// The dependents of a legacy table and the blockers among them.
#[derive(Default)]
struct Found {
    dependents: Vec<Dependent>,
    blockers: Vec<Blocker>,
}

impl Found {
    fn add(
        &mut self,
        kind: &'static str,
        name: String,
        action: &'static str,
        note: Option<String>,
    ) {
        self.dependents.push(Dependent {
            kind,
            name,
            action,
            note,
        });
    }

    fn refuse(&mut self, kind: &'static str, name: String, blocker: Blocker) {
        self.add(kind, name, "refused", None);
        self.blockers.push(blocker);
    }
}

fn dependents(t: &TablePlan, legacy: &LegacySchema) -> Found {
    let columns: Vec<&str> = shown_columns(t.table).iter().map(|c| c.0).collect();
    let objects = catalog::table_objects(t.rel.oid(), &columns);
    let mut found = Found::default();
    views_and_rules(t, &objects, &mut found);
    kept_objects(&objects, &mut found);
    shown_columns_and_indexes(t, &objects, &mut found);
    constraints(t, &objects, &mut found);
    elsewhere(t, legacy, &objects, &mut found);
    found
}

/// Views are re-pointed at the switch; materialized views and rules are refused.
fn views_and_rules(t: &TablePlan, objects: &catalog::TableObjects, found: &mut Found) {
    for v in &objects.views {
        let name = format!("{}.{}", quote(&v.schema), quote(&v.name));
        if v.relkind == "m" {
            let blocker = reasons::materialized_view(&name, &t.shown);
            found.refuse("materialized_view", name, blocker);
        } else {
            found.add("view", name, "repointed", None);
        }
    }
    for rule in &objects.rules {
        found.refuse("rule", rule.clone(), reasons::rule(&t.shown, rule));
    }
}

/// Triggers and policies stay on the kept table; grants are copied to the view (an API role's
/// narrowed to its own user, §8.4).
fn kept_objects(objects: &catalog::TableObjects, found: &mut Found) {
    for trigger in &objects.triggers {
        found.add(
            "trigger",
            trigger.clone(),
            "kept",
            Some(reasons::TRIGGER_KEPT.into()),
        );
    }
    for policy in &objects.policies {
        found.add(
            "policy",
            policy.clone(),
            "kept",
            Some(reasons::POLICY_KEPT.into()),
        );
    }
    for g in &objects.grants {
        let mut name = format!("{}: {}", g.grantee, g.privileges.join(", "));
        if let Some(columns) = &g.columns {
            name = format!("{name} ({})", quoted_list(columns));
        }
        if g.grantee == "anon" || g.grantee == "authenticated" {
            found.add(
                "grant",
                name,
                "narrowed",
                Some(reasons::narrowed(&g.grantee)),
            );
        } else {
            found.add("grant", name, "copied", None);
        }
    }
}

/// Columns the view reads from `users`: a type that cannot show the field is refused, a shorter
/// `varchar` noted; indexes on them are noted (lookups by them read `users`, §8.2).
fn shown_columns_and_indexes(t: &TablePlan, objects: &catalog::TableObjects, found: &mut Found) {
    let spec = shown_columns(t.table);
    for c in &objects.shown_columns {
        let Some(&(_, field, fit)) = spec.iter().find(|s| s.0 == c.name) else {
            continue;
        };
        let name = format!("{}.{}", t.shown, quote(&c.name));
        if !fits(fit, &c.base) {
            let blocker = reasons::column_type(&name, &c.type_name, field);
            found.refuse("column", name, blocker);
        } else if let (Fit::Text(limit), Some(length)) = (fit, c.length) {
            if length < limit {
                let note = reasons::shorter_column(&c.type_name, field, limit);
                found.add("column", name, "noted", Some(note));
            }
        }
    }
    for index in &objects.indexes {
        let read: Vec<(String, &str)> = index
            .columns
            .iter()
            .filter_map(|c| {
                let field = spec.iter().find(|s| s.0 == c)?.1.strip_prefix("users.")?;
                Some((c.clone(), field))
            })
            .collect();
        if read.is_empty() {
            found.add("index", index.name.clone(), "kept", None);
        } else {
            let (cols, fields): (Vec<String>, Vec<&str>) = read.into_iter().unzip();
            let note = reasons::index_noted(&cols, &fields);
            found.add("index", index.name.clone(), "noted", Some(note));
        }
    }
}

/// CHECK, UNIQUE and EXCLUDE constraints and NOT NULL columns (the id's own aside): reverse sync
/// cannot show a user who breaks them.
fn constraints(t: &TablePlan, objects: &catalog::TableObjects, found: &mut Found) {
    let id = t.table.id_column();
    for c in &objects.constraints {
        if c.columns != [id] {
            let note = Some(reasons::CONSTRAINT_KEPT.to_string());
            found.add("constraint", c.name.clone(), "noted", note);
        }
    }
    for column in objects.not_null.iter().filter(|c| *c != id) {
        let note = Some(reasons::CONSTRAINT_KEPT.to_string());
        found.add(
            "constraint",
            format!("{} NOT NULL", quote(column)),
            "noted",
            note,
        );
    }
}

/// Outside the table: keys from legacy tables, triggers that fire for the rewrite, publications,
/// functions bound to the table, uses of its row type.
fn elsewhere(
    t: &TablePlan,
    legacy: &LegacySchema,
    objects: &catalog::TableObjects,
    found: &mut Found,
) {
    for (key, from) in &t.legacy_keys {
        let note = reasons::legacy_reference_kept(t.table.name(), *from == t.shown);
        found.add(
            "legacy_reference",
            format!("{} on {from}", quote(key)),
            "kept",
            Some(note),
        );
    }
    let mut seen = Vec::new();
    for r in &t.references {
        if seen.contains(&r.on.oid) {
            continue;
        }
        seen.push(r.on.oid);
        for trigger in &r.on.replica_triggers {
            let name = format!("{} on {}", quote(&trigger.name), r.table());
            found.add(
                "trigger",
                name,
                "noted",
                Some(reasons::replica_trigger(&trigger.enabled)),
            );
        }
    }
    for p in &objects.publications {
        match p.how.as_str() {
            "all" => {
                let note = reasons::published_all(t.table.name());
                found.add("publication", p.name.clone(), "noted", Some(note));
            }
            "table" => {
                let blocker = reasons::publication_table(&p.name, &t.shown, t.table.name());
                found.refuse("publication", p.name.clone(), blocker);
            }
            _ => {
                let blocker =
                    reasons::publication_schema(&p.name, &quote(&legacy.name), t.table.name());
                found.refuse("publication", p.name.clone(), blocker);
            }
        }
    }
    for f in &objects.bound_functions {
        found.refuse("function", f.clone(), reasons::bound_function(f, &t.shown));
    }
    for user in &objects.row_type_users {
        found.refuse("row_type", user.clone(), reasons::row_type(user, &t.shown));
    }
}

/// The plan as `jsonb` (the design's §4.1): `ready` when at least one legacy table is present and
/// nothing blocks any of them (a CALL without `tables` acts on all of them).
fn report(legacy: &LegacySchema, tables: &[TablePlan], states: &[TableState]) -> Value {
    let mut by_name = Map::new();
    let mut ready = !tables.is_empty();
    for t in tables {
        let state = states
            .iter()
            .find(|s| s.legacy_table == t.table.name() && s.legacy_schema == legacy.name)
            .map_or("legacy", TableState::shown_state);
        // A switched table's name is the view (docs/cutover.md): the cutover is where it goes,
        // and nothing of the view blocks it.
        let blockers: Vec<&Blocker> = t
            .blockers
            .iter()
            .chain(t.references.iter().flat_map(|r| r.blockers.iter()))
            .chain(t.dependent_blockers.iter())
            .filter(|_| state != "switched" && state != "finished")
            .collect();
        ready &= blockers.is_empty();
        let table = json!({
            "state": state,
            "rows": t.rows,
            "references": t.references.iter().map(reference_json).collect::<Vec<_>>(),
            "dependents": t.dependents.iter().map(dependent_json).collect::<Vec<_>>(),
            "blockers": blockers.into_iter().map(blocker_json).collect::<Vec<_>>(),
        });
        by_name.insert(t.table.name().to_string(), table);
    }
    json!({"legacy_schema": legacy.name, "ready": ready, "tables": by_name})
}

fn reference_json(r: &ReferencePlan) -> Value {
    let counts = r.counts.as_ref();
    json!({
        "table": r.table(),
        "column": r.columns.join(", "),
        "constraint": r.key.as_ref().map(|k| &k.name),
        "definition": r.key.as_ref().map(|k| &k.definition),
        "rows": counts.map(|c| c.rows),
        "values_resolving": counts.map(|c| c.resolving),
        "values_not_resolving": counts.map(|c| c.rows - c.resolving),
        "examples_not_resolving": counts.map(|c| &c.examples),
        // Known once a cutover has run (the state tables of a later increment).
        "last_legacy_write": null,
        "note": reasons::on_delete(r.key.as_ref().map(|k| k.on_delete.as_str())),
    })
}

fn dependent_json(d: &Dependent) -> Value {
    let mut value = json!({"kind": d.kind, "name": d.name, "action": d.action});
    if let (Some(note), Value::Object(map)) = (&d.note, &mut value) {
        map.insert("note".to_string(), Value::String(note.clone()));
    }
    value
}

fn blocker_json(b: &Blocker) -> Value {
    json!({"kind": b.kind, "reason": b.reason, b.about.0: b.about.1})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_fits_the_field_it_shows() {
        for base in ["text", "varchar", "bpchar", "citext"] {
            assert!(fits(Fit::Text(200), base), "{base}");
            assert!(fits(Fit::Json, base), "{base}");
        }
        assert!(fits(Fit::Json, "jsonb") && fits(Fit::Json, "json"));
        assert!(!fits(Fit::Text(200), "json"));
        assert!(fits(Fit::Bool, "bool") && !fits(Fit::Bool, "text"));
        for base in ["int4", "int8", "numeric"] {
            assert!(fits(Fit::Counter, base), "{base}");
        }
        // users.xp is an integer: a smallint or a float cannot show every value faithfully.
        assert!(!fits(Fit::Counter, "int2") && !fits(Fit::Counter, "float8"));
    }

    #[test]
    fn only_a_plain_table_is_a_kind_the_cutover_moves() {
        let rel = |relkind: &str, is_partition, inherits, inherited| LegacyRelation {
            oid: 1,
            relkind: relkind.to_string(),
            is_partition,
            inherits,
            inherited,
            id: None,
            id_unique: true,
            kept_name_taken: false,
        };
        assert_eq!(kind_refused(&rel("r", false, false, false)), None);
        assert_eq!(
            kind_refused(&rel("p", false, false, true)),
            Some("a partitioned table")
        );
        // A partition inherits from its parent in pg_inherits too: it is named a partition.
        assert_eq!(
            kind_refused(&rel("r", true, true, false)),
            Some("a partition")
        );
        assert_eq!(
            kind_refused(&rel("r", false, true, false)),
            Some("an inheritance child")
        );
        assert_eq!(
            kind_refused(&rel("r", false, false, true)),
            Some("an inheritance parent")
        );
        assert_eq!(
            kind_refused(&rel("f", false, false, false)),
            Some("a foreign table")
        );
    }
}
