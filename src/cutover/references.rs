//! References (docs/cutover.md, "References"): each foreign key to a captured legacy table, and
//! each column named in `extra_references`, moves to `users(id)` and back.
//!
//! Toward `users`: **swap** (one transaction: the key is dropped and added again to `users(id)`
//! under its name, with its ON DELETE action and deferrability, ON UPDATE CASCADE, NOT VALID; a
//! resolve trigger maps the legacy ids old code writes), **rewrite** (block ranges of the table
//! per transaction: legacy ids become their users' ids, the legacy id kept in
//! `nura_cutover_originals` under the row's key), **validate** (VALIDATE CONSTRAINT, its own
//! transaction). Back: **swap back** (the original definition, NOT VALID, and the trigger turned
//! to map users' ids to legacy ids), **rewrite back** (each users id to the legacy id the row
//! held, or its user's first legacy id), **validate**, **done** (the trigger goes, with the
//! reference's facts). The trigger is `nura_cutover_resolve` (`sql/cutover.sql`).

use super::catalog::{self, ForeignKey};
use super::locks;
use super::state::{self, Step, TableState};
use super::steps::Stop;
use super::{ExtraReference, LegacySchema};
use crate::errors::{Error, OrRaise};
use crate::migration::Table;
use crate::plans;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier as quote;
use serde::Deserialize;
use serde_json::json;

/// A row of `nura_cutover_references`.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Reference {
    pub(super) id: i64,
    pub(super) ref_schema: String,
    pub(super) ref_table: String,
    pub(super) ref_column: String,
    pub(super) constraint_name: Option<String>,
    pub(super) definition: Option<String>,
    pub(super) was_validated: Option<bool>,
    pub(super) row_key: Vec<String>,
    pub(super) target: String,
    pub(super) rewritten: bool,
    pub(super) validated: bool,
    pub(super) cursor: i64,
    pub(super) rewrite_file: Option<i64>,
    pub(super) rows_done: i64,
}

impl Reference {
    pub(super) fn table(&self) -> String {
        format!("{}.{}", quote(&self.ref_schema), quote(&self.ref_table))
    }

    /// `<table>.<column>`, as messages name it.
    pub(super) fn name(&self) -> String {
        format!("{}.{}", self.table(), quote(&self.ref_column))
    }

    /// Named to sort after the product's own triggers (BEFORE triggers fire in name order, byte
    /// by byte; `~` comes after every letter, digit and underscore): a product trigger that fills
    /// in a legacy id is resolved too.
    fn trigger(&self) -> String {
        quote(format!("~nura_cutover_resolve_{}", self.id))
    }

    fn moved_trigger(&self) -> String {
        quote(format!("~nura_cutover_resolve_{}_moved", self.id))
    }

    /// The trigger's name as `pg_trigger` has it.
    fn trigger_name(&self) -> String {
        format!("~nura_cutover_resolve_{}", self.id)
    }

    fn to_users(&self) -> bool {
        self.target == "users"
    }

    /// The row key as SQL over the row `t` (a jsonb array, as the trigger builds it), with the
    /// reference column's value as `value` (the key the row has once rewritten).
    fn row_key_sql(&self, value: &str) -> String {
        let cols: Vec<String> = self
            .row_key
            .iter()
            .map(|c| {
                if *c == self.ref_column {
                    value.to_string()
                } else {
                    format!("t.{}", quote(c))
                }
            })
            .collect();
        format!("pg_catalog.jsonb_build_array({})", cols.join(", "))
    }
}

/// What a reference needs next, toward the table's goal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RefAction {
    Swap,
    Rewrite,
    Validate,
    SwapBack,
    RewriteBack,
    ValidateBack,
    Done,
}

impl RefAction {
    pub(super) fn name(self) -> &'static str {
        match self {
            RefAction::Swap => "swap",
            RefAction::Rewrite => "rewrite",
            RefAction::Validate => "validate",
            RefAction::SwapBack => "swap_back",
            RefAction::RewriteBack => "rewrite_back",
            RefAction::ValidateBack => "validate_back",
            RefAction::Done => "reference_done",
        }
    }
}

/// The next action of `r` toward `users` (`forward`) or back; `None` when it is there.
pub(super) fn next(r: &Reference, forward: bool) -> Option<RefAction> {
    match (forward, r.to_users()) {
        (true, false) => Some(RefAction::Swap),
        (true, true) if !r.rewritten => Some(RefAction::Rewrite),
        (true, true) if !r.validated => Some(RefAction::Validate),
        (true, true) => None,
        (false, true) => Some(RefAction::SwapBack),
        (false, false) if !r.rewritten => Some(RefAction::RewriteBack),
        (false, false) if !r.validated && r.was_validated == Some(true) => {
            Some(RefAction::ValidateBack)
        }
        (false, false) => Some(RefAction::Done),
    }
}

/// The references of `table`, in the order they were found.
pub(super) fn load(ext: &str, table: &str) -> Vec<Reference> {
    catalog::read(
        &format!(
            "SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(r) ORDER BY r.id), '[]') \
             FROM {ext}.nura_cutover_references r WHERE r.legacy_table OPERATOR(pg_catalog.=) $1"
        ),
        &[table.into()],
    )
}

/// Record the references of the table being captured: every foreign key to it from a table that
/// is not a legacy table, and its extra references. A reference from a partitioned table is
/// refused (55000): its keys cannot be added NOT VALID on PostgreSQL 15, and that path is not
/// built yet.
pub(super) fn discover(
    ext: &str,
    s: &TableState,
    legacy: &LegacySchema,
    extras: &[ExtraReference],
) -> Result<usize, Stop> {
    let table = s.table();
    let Some((oid, _)) = catalog::relation(&legacy.name, table.name()) else {
        return Ok(0);
    };
    let legacy_oids: Vec<u32> = Table::ALL
        .iter()
        .filter_map(|t| catalog::relation(&legacy.name, t.name()))
        .map(|(o, _)| u32::from(o))
        .collect();
    let keys: Vec<ForeignKey> = catalog::foreign_keys_to(oid)
        .into_iter()
        .filter(|k| !legacy_oids.contains(&k.table))
        .collect();
    let mut found = Vec::new();
    for key in &keys {
        let column = key.columns.first().cloned().unwrap_or_default();
        found.push((pg_sys::Oid::from(key.table), column, Some(key)));
    }
    for extra in extras.iter().filter(|e| e.legacy == table) {
        found.push((extra.table, extra.column.clone(), None));
    }
    let tables: Vec<_> = found
        .iter()
        .map(|(rel, _, _)| catalog::referencing_table(*rel))
        .collect();
    // Checked for all before any is recorded: a refusal commits nothing.
    for ((rel, column, key), on) in found.iter().zip(&tables) {
        if let Some(why) = not_carried(*rel, column, *key) {
            return Err(Stop::Refused(Error::new(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "{} cannot be cut over: {}.{}.{} {why}",
                    s.legacy_table,
                    quote(&on.schema),
                    quote(&on.name),
                    quote(column)
                ),
            )));
        }
        if on.relkind == "p" {
            return Err(Stop::Refused(Error::new(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "{} cannot be cut over: {}.{}.{} is a column of a partitioned table, which this release does not move yet",
                    s.legacy_table, quote(&on.schema), quote(&on.name), quote(column)
                ),
            )));
        }
    }
    for ((rel, column, key), on) in found.iter().zip(&tables) {
        let row_key = on
            .unique_keys
            .iter()
            .find(|k| k.primary)
            .or_else(|| on.unique_keys.iter().find(|k| k.not_null))
            .map(|k| k.columns.clone())
            .unwrap_or_default();
        insert(ext, s, &on.schema, &on.name, column, *key, row_key, *rel);
    }
    Ok(found.len())
}

/// Why the reference `column` of table `rel` (with its key `key`, if any) cannot be moved by
/// this release, if it cannot: a table others inherit from (a rewrite would have to reach their
/// rows, which its key does not cover), another foreign key on the column (the rewritten values
/// would break it), a column of a type another role owns (the cutover converts and writes the
/// row as the extension's owner), a table of another owner, a column another table's key
/// references.
/// Checked at the capture, and again before every swap and rewrite batch: the product may change
/// its tables meanwhile.
pub(super) fn not_carried(
    rel: pg_sys::Oid,
    column: &str,
    key: Option<&ForeignKey>,
) -> Option<String> {
    let (children, other_keys, foreign_key_types, hidden, foreign_owner, cascades) =
        catalog::read::<(bool, Vec<String>, Option<String>, bool, bool, Vec<String>)>(
        "SELECT pg_catalog.jsonb_build_array( \
             EXISTS (SELECT FROM pg_catalog.pg_inherits i WHERE i.inhparent OPERATOR(pg_catalog.=) $1), \
             COALESCE((SELECT pg_catalog.jsonb_agg(c.conname ORDER BY c.conname) FROM pg_catalog.pg_constraint c \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.conrelid \
                      AND a.attnum OPERATOR(pg_catalog.=) ANY (c.conkey) \
                 WHERE c.conrelid OPERATOR(pg_catalog.=) $1 AND c.contype OPERATOR(pg_catalog.=) 'f' \
                   AND a.attname OPERATOR(pg_catalog.=) $2 \
                   AND c.conname OPERATOR(pg_catalog.<>) COALESCE($3, '')), '[]'), \
             (SELECT pg_catalog.string_agg(pg_catalog.format('%I (%s)', a.attname, \
                         pg_catalog.format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY a.attnum) \
                 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid \
                 JOIN pg_catalog.pg_roles o ON o.oid OPERATOR(pg_catalog.=) t.typowner \
                 WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.>) 0 \
                   AND NOT a.attisdropped AND NOT o.rolsuper AND o.rolname OPERATOR(pg_catalog.<>) CURRENT_USER), \
             (SELECT c.relrowsecurity AND NOT r.rolsuper AND NOT r.rolbypassrls \
                     AND (c.relowner OPERATOR(pg_catalog.<>) r.oid OR c.relforcerowsecurity) \
              FROM pg_catalog.pg_class c, pg_catalog.pg_roles r \
              WHERE c.oid OPERATOR(pg_catalog.=) $1 AND r.rolname OPERATOR(pg_catalog.=) CURRENT_USER), \
             (SELECT c.relowner OPERATOR(pg_catalog.<>) r.oid AND NOT o.rolsuper \
              FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles o ON o.oid OPERATOR(pg_catalog.=) c.relowner, \
                   pg_catalog.pg_roles r \
              WHERE c.oid OPERATOR(pg_catalog.=) $1 AND r.rolname OPERATOR(pg_catalog.=) CURRENT_USER), \
             COALESCE((SELECT pg_catalog.jsonb_agg(f.conname::text ORDER BY f.conname) FROM pg_catalog.pg_constraint f \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) f.confrelid \
                      AND a.attnum OPERATOR(pg_catalog.=) ANY (f.confkey) \
                 WHERE f.confrelid OPERATOR(pg_catalog.=) $1 AND f.contype OPERATOR(pg_catalog.=) 'f' \
                   AND a.attname OPERATOR(pg_catalog.=) $2), '[]'))",
        &[rel.into(), column.into(), key.map(|k| k.name.clone()).into()],
    );
    // The cutover changes the table's rows as the extension's owner: the table's own code (its
    // triggers, CHECK constraints, the domains of its columns) then runs with the owner's rights.
    // Only a table the owner (or a superuser) owns, of built-in types, is moved.
    if foreign_owner {
        return Some("is in a table owned by another role than the extension's owner: the cutover would run that table's code with the extension owner's rights".into());
    }
    // A key of another table on the column would keep the old values (the rewrite does not
    // cascade).
    if !cascades.is_empty() {
        return Some(format!(
            "is referenced by a foreign key of another table ({}): the rewritten values would not reach it",
            cascades.join(", ")
        ));
    }
    // The rewrite runs as the extension's owner: row level security that applies to it would hide
    // rows from the rewrite.
    if hidden {
        return Some("is in a table whose row level security applies to the extension's owner: the rewrite would not see every row".into());
    }
    if children {
        return Some(
            "is a column of a table others inherit from, which this release does not move".into(),
        );
    }
    if !other_keys.is_empty() {
        return Some(format!(
            "has another foreign key ({}): its values would change under it",
            other_keys.join(", ")
        ));
    }
    foreign_key_types
        .map(|cols| format!("is in a table with columns of types another role owns: {cols}"))
}

#[allow(clippy::too_many_arguments)]
fn insert(
    ext: &str,
    s: &TableState,
    schema: &str,
    table: &str,
    column: &str,
    key: Option<&ForeignKey>,
    row_key: Vec<String>,
    rel: pg_sys::Oid,
) {
    let validated = key.map(|k| constraint_validated(rel, &k.name));
    let deferrable = key.is_some_and(|k| constraint_deferrable(rel, &k.name));
    plans::execute(
        &format!(
            "INSERT INTO {ext}.nura_cutover_references (legacy_table, ref_schema, ref_table, ref_column, \
                 constraint_name, definition, was_validated, row_key, key_deferrable) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (legacy_table, ref_schema, ref_table, ref_column) DO NOTHING"
        ),
        &[
            s.legacy_table.as_str().into(),
            schema.into(),
            table.into(),
            column.into(),
            key.map(|k| k.name.clone()).into(),
            key.map(|k| k.definition.clone()).into(),
            validated.into(),
            row_key.into(),
            deferrable.into(),
        ],
    )
    .or_raise("cutover references");
}

fn constraint_deferrable(rel: pg_sys::Oid, name: &str) -> bool {
    catalog::scalar::<bool>(
        "SELECT c.condeferrable FROM pg_catalog.pg_constraint c \
         WHERE c.conrelid OPERATOR(pg_catalog.=) $1 AND c.conname OPERATOR(pg_catalog.=) $2",
        &[rel.into(), name.into()],
    )
    .unwrap_or(false)
}

fn constraint_validated(rel: pg_sys::Oid, name: &str) -> bool {
    catalog::scalar::<bool>(
        "SELECT c.convalidated FROM pg_catalog.pg_constraint c \
         WHERE c.conrelid OPERATOR(pg_catalog.=) $1 AND c.conname OPERATOR(pg_catalog.=) $2",
        &[rel.into(), name.into()],
    )
    .unwrap_or(true)
}

/// The referencing table of `r` is gone (dropped, or renamed or moved away): nothing of the
/// reference is left to move, so its facts go, with a WARNING and a step row. True then.
pub(super) fn gone(ext: &str, s: &TableState, r: &Reference) -> bool {
    let exists = catalog::scalar::<bool>(
        "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
        &[r.table().into()],
    )
    .unwrap_or(true);
    if exists {
        return false;
    }
    plans::execute(
        &format!("DELETE FROM {ext}.nura_cutover_references WHERE id OPERATOR(pg_catalog.=) $1"),
        &[r.id.into()],
    )
    .or_raise("cutover references");
    pgrx::warning!(
        "nura_users cutover {}: {} no longer exists; its reference is dropped from the cutover",
        s.legacy_table,
        r.table()
    );
    log(ext, s, r, "reference_gone", json!({}), 1, 0);
    true
}

/// Run one action of reference `r`.
pub(super) fn run(
    core_schema: &str,
    s: &TableState,
    r: &Reference,
    action: RefAction,
    batch_size: i32,
    attempt: i32,
) -> Result<(), Stop> {
    match action {
        RefAction::Swap => swap(core_schema, s, r, attempt),
        RefAction::Rewrite => rewrite(core_schema, s, r, batch_size, true),
        RefAction::Validate | RefAction::ValidateBack => validate(core_schema, s, r, action),
        RefAction::SwapBack => swap_back(core_schema, s, r, attempt),
        RefAction::RewriteBack => rewrite(core_schema, s, r, batch_size, false),
        RefAction::Done => done(core_schema, s, r, attempt),
    }
}

/// The values of `r` that no legacy id of the table (with an alias to a user) and no user
/// explain: their count and up to 5 of them.
fn unresolved(ext: &str, s: &TableState, r: &Reference) -> (i64, Vec<String>) {
    let col = quote(&r.ref_column);
    catalog::read::<(i64, Vec<String>)>(
        &format!(
            "SELECT pg_catalog.jsonb_build_array(pg_catalog.count(*), \
                 COALESCE((SELECT pg_catalog.jsonb_agg(x.v) FROM (SELECT DISTINCT t.{col}::text AS v \
                     FROM {table} t WHERE t.{col} IS NOT NULL \
                       AND NOT EXISTS (SELECT FROM {ext}.user_id_aliases a WHERE a.alias_id OPERATOR(pg_catalog.=) t.{col} \
                                       AND a.source OPERATOR(pg_catalog.=) $1) \
                       AND NOT EXISTS (SELECT FROM {ext}.users u WHERE u.id OPERATOR(pg_catalog.=) t.{col}) \
                     ORDER BY 1 LIMIT 5) x), '[]')) \
             FROM {table} t WHERE t.{col} IS NOT NULL \
               AND NOT EXISTS (SELECT FROM {ext}.user_id_aliases a WHERE a.alias_id OPERATOR(pg_catalog.=) t.{col} \
                               AND a.source OPERATOR(pg_catalog.=) $1) \
               AND NOT EXISTS (SELECT FROM {ext}.users u WHERE u.id OPERATOR(pg_catalog.=) t.{col})",
            table = r.table()
        ),
        &[s.legacy_table.as_str().into()],
    )
}

fn refused(message: String, hint: &str) -> Stop {
    Stop::Refused(
        Error::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            message,
        )
        .hint(hint),
    )
}

/// The lock a swap needs: ACCESS EXCLUSIVE on the referencing table (and on the legacy table,
/// which dropping its foreign key locks too), then SHARE ROW EXCLUSIVE on `users` (adding a key
/// to it). Each under the lock timeout.
fn lock_for_swap(ext: &str, s: &TableState, r: &Reference) -> Result<i32, Stop> {
    let tables = vec![r.table()];
    if r.constraint_name.is_some() {
        return locks::lock_all(&[
            (r.table(), "ACCESS EXCLUSIVE"),
            (
                format!("{}.{}", quote(&s.legacy_schema), s.legacy_table),
                "ACCESS EXCLUSIVE",
            ),
            (format!("{ext}.users"), "SHARE ROW EXCLUSIVE"),
        ])
        .map_err(Stop::Waiting);
    }
    // An extra reference only gets the trigger: CREATE TRIGGER's lock.
    locks::lock(&tables, "SHARE ROW EXCLUSIVE").map_err(Stop::Waiting)
}

/// The key of `r` as it is in the catalog now: its definition, or `None` when it is gone.
fn current_definition(r: &Reference) -> Option<String> {
    let name = r.constraint_name.as_deref()?;
    catalog::scalar::<String>(
        "SELECT pg_catalog.pg_get_constraintdef(c.oid) FROM pg_catalog.pg_constraint c \
         WHERE c.conrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1) \
           AND c.conname OPERATOR(pg_catalog.=) $2",
        &[r.table().into(), name.into()],
    )
}

/// The replacement key of `r`: to `users(id)`, with the original's ON DELETE action and
/// deferrability, ON UPDATE CASCADE, NOT VALID.
fn users_key_sql(ext: &str, r: &Reference, name: &str) -> String {
    let (on_delete, deferrable, deferred) = catalog::read::<(String, bool, bool)>(
        "SELECT pg_catalog.jsonb_build_array(c.confdeltype::text, c.condeferrable, c.condeferred) \
         FROM pg_catalog.pg_constraint c \
         WHERE c.conrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1) \
           AND c.conname OPERATOR(pg_catalog.=) $2",
        &[r.table().into(), name.into()],
    );
    let on_delete = match on_delete.as_str() {
        "r" => "RESTRICT",
        "c" => "CASCADE",
        "n" => "SET NULL",
        "d" => "SET DEFAULT",
        _ => "NO ACTION",
    };
    let deferrable = match (deferrable, deferred) {
        (true, true) => "DEFERRABLE INITIALLY DEFERRED",
        (true, false) => "DEFERRABLE INITIALLY IMMEDIATE",
        _ => "NOT DEFERRABLE",
    };
    format!(
        "ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY ({col}) REFERENCES {ext}.users (id) \
         ON DELETE {on_delete} ON UPDATE CASCADE {deferrable} NOT VALID",
        table = r.table(),
        name = quote(name),
        col = quote(&r.ref_column),
    )
}

/// The resolve triggers of `r` in `mode` (`forward`, `back`): one for rows that write the column
/// (INSERT, UPDATE OF it: the value written decides), one for every other UPDATE (a row the
/// product moves is resolved on the way). Named so that the first fires first.
fn trigger_sql(ext: &str, r: &Reference, mode: &str) -> Vec<String> {
    let (table, written, moved) = (r.table(), r.trigger(), r.moved_trigger());
    vec![
        format!(
            "CREATE OR REPLACE TRIGGER {written} BEFORE INSERT OR UPDATE OF {col} ON {table} \
             FOR EACH ROW EXECUTE FUNCTION {ext}.nura_cutover_resolve('{id}', '{mode}', 'written')",
            col = quote(&r.ref_column),
            id = r.id,
        ),
        format!(
            "CREATE OR REPLACE TRIGGER {moved} BEFORE UPDATE ON {table} \
             FOR EACH ROW EXECUTE FUNCTION {ext}.nura_cutover_resolve('{id}', '{mode}', 'moved')",
            id = r.id,
        ),
        format!("ALTER TABLE {table} ENABLE ALWAYS TRIGGER {written}"),
        format!("ALTER TABLE {table} ENABLE ALWAYS TRIGGER {moved}"),
    ]
}

fn execute_all(statements: &[String]) {
    for sql in statements {
        plans::execute_once(sql, &[]).or_raise("cutover references");
    }
}

/// Swap `r` to `users`, when every value resolves (else 55000 naming them).
/// [`not_carried`] for a recorded reference, as the refusal of the step.
fn still_carried(s: &TableState, r: &Reference) -> Result<(), Stop> {
    let Some(rel) = catalog::relation(&r.ref_schema, &r.ref_table).map(|(oid, _)| oid) else {
        return Ok(());
    };
    let key = r.constraint_name.as_ref().map(|name| ForeignKey {
        name: name.clone(),
        definition: String::new(),
        table: u32::from(rel),
        columns: vec![r.ref_column.clone()],
        referenced: Vec::new(),
        on_delete: String::new(),
    });
    match not_carried(rel, &r.ref_column, key.as_ref()) {
        Some(why) => Err(refused(
            format!("{} cannot go on: {} {why}", s.legacy_table, r.name()),
            "Undo that change of the table, or CALL nura_cutover_rollback().",
        )),
        None => Ok(()),
    }
}

fn swap(ext: &str, s: &TableState, r: &Reference, attempt: i32) -> Result<(), Stop> {
    still_carried(s, r)?;
    // Counted before the lock: the scan must not hold ACCESS EXCLUSIVE. A key to the legacy table
    // keeps its values legacy ids meanwhile (captured: each has its alias at once); a value that
    // slips into an extra reference is left as it is by the rewrite.
    let (n, examples) = unresolved(ext, s, r);
    if n > 0 {
        return Err(refused(
            format!(
                "{} holds {n} value(s) that are no {} id of a migrated user and no user: {}",
                r.name(),
                s.legacy_table,
                examples.join(", ")
            ),
            "Fix or delete these rows (or migrate the legacy rows they name), then CALL nura_cutover() again.",
        ));
    }
    let waited = lock_for_swap(ext, s, r)?;
    let mut statements = Vec::new();
    if let (Some(name), Some(definition)) = (&r.constraint_name, &r.definition) {
        if current_definition(r).as_deref() != Some(definition.as_str()) {
            return Err(refused(
                format!(
                    "the foreign key {name} of {} changed since the cutover began",
                    r.table()
                ),
                "CALL nura_cutover_rollback() and start again.",
            ));
        }
        statements.push(format!(
            "ALTER TABLE {} DROP CONSTRAINT {}",
            r.table(),
            quote(name)
        ));
        statements.push(users_key_sql(ext, r, name));
    }
    statements.extend(trigger_sql(ext, r, "forward"));
    execute_all(&statements);
    let keyed = r.constraint_name.is_some();
    set_facts(ext, r, "users", false, !keyed, 0, 0);
    log(
        ext,
        s,
        r,
        "swap",
        json!({"statements": statements}),
        attempt,
        waited,
    );
    Ok(())
}

/// Swap `r` back to the legacy table, when every users id in it has a legacy id of the table to
/// go back to (else 55000 naming how many do not).
fn swap_back(ext: &str, s: &TableState, r: &Reference, attempt: i32) -> Result<(), Stop> {
    // Counted before the lock, as in `swap`: a row of such a user written meanwhile is one the
    // rewrite back cannot map, and the validation after it names it.
    let col = quote(&r.ref_column);
    // A column without a key keeps what it cannot map, as it held any value before.
    let homeless = if r.constraint_name.is_none() {
        Some(0)
    } else {
        catalog::scalar::<i64>(
        &format!(
            "SELECT pg_catalog.count(*) FROM {table} t WHERE t.{col} IS NOT NULL \
               AND NOT EXISTS (SELECT FROM {ext}.user_id_aliases a \
                   WHERE a.source OPERATOR(pg_catalog.=) $1 \
                     AND (a.alias_id OPERATOR(pg_catalog.=) t.{col} OR a.user_id OPERATOR(pg_catalog.=) t.{col}))",
            table = r.table()
        ),
        &[s.legacy_table.as_str().into()],
    )
    }
    .unwrap_or(0);
    if homeless > 0 {
        return Err(refused(
            format!(
                "{} holds {homeless} row(s) of users who have no {} id to go back to",
                r.name(),
                s.legacy_table
            ),
            "Delete those rows, or CALL nura_cutover() to go forward again.",
        ));
    }
    let waited = lock_for_swap(ext, s, r)?;
    let mut statements = Vec::new();
    if let (Some(name), Some(definition)) = (&r.constraint_name, &r.definition) {
        statements.push(format!(
            "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}",
            r.table(),
            quote(name)
        ));
        let not_valid = if definition.ends_with(" NOT VALID") {
            ""
        } else {
            " NOT VALID"
        };
        statements.push(format!(
            "ALTER TABLE {} ADD CONSTRAINT {} {definition}{not_valid}",
            r.table(),
            quote(name)
        ));
    }
    statements.extend(trigger_sql(ext, r, "back"));
    execute_all(&statements);
    let keyed = r.constraint_name.is_some() && r.was_validated == Some(true);
    set_facts(ext, r, "legacy", false, !keyed, 0, 0);
    log(
        ext,
        s,
        r,
        "swap_back",
        json!({"statements": statements}),
        attempt,
        waited,
    );
    Ok(())
}

/// The rewrite's next range of blocks (`forward`: legacy ids to users' ids; back: users' ids to
/// legacy ids), committed with its cursor; at the end of the table, the reference is rewritten.
fn rewrite(
    ext: &str,
    s: &TableState,
    r: &Reference,
    batch_size: i32,
    forward: bool,
) -> Result<(), Stop> {
    still_carried(s, r)?;
    let file = catalog::scalar::<i64>(
        "SELECT pg_catalog.pg_relation_filenode(pg_catalog.to_regclass($1))::pg_catalog.int8",
        &[r.table().into()],
    );
    let mut r = r.clone();
    if r.cursor > 0 && r.rewrite_file != file {
        // The table was rewritten (CLUSTER, VACUUM FULL, ALTER TABLE): its rows are in other
        // blocks now, so the block ranges done say nothing; start again (done rows are skipped).
        notice!(
            "nura_users cutover {}: {} was rewritten since the last batch; the rewrite starts again",
            s.legacy_table,
            r.name()
        );
        r.cursor = 0;
    }
    plans::execute(
        &format!(
            "UPDATE {ext}.nura_cutover_references SET rewrite_file = $2 WHERE id OPERATOR(pg_catalog.=) $1"
        ),
        &[r.id.into(), file.into()],
    )
    .or_raise("cutover references");
    let r = &r;
    let (blocks, per_batch) = block_counts(r, batch_size);
    if r.cursor >= blocks {
        set_facts(ext, r, &r.target, true, r.validated, r.cursor, r.rows_done);
        log(
            ext,
            s,
            r,
            if forward { "rewrite" } else { "rewrite_back" },
            json!({"rows": r.rows_done, "blocks": blocks}),
            1,
            0,
        );
        return Ok(());
    }
    let upto = r.cursor + per_batch;
    let from_tid = format!("({},0)", r.cursor);
    let to_tid = format!("({upto},0)");
    let sql = if forward {
        forward_sql(ext, r)
    } else {
        back_sql(ext, r)
    };
    // A rewrite is no change of the product's: its triggers stay quiet where the owner may say so
    // (replica mode; the resolve trigger fires ALWAYS). Without that right they fire.
    let replica = catalog::scalar::<bool>(
        "SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER",
        &[],
    )
    .unwrap_or(false);
    // The key's JSON text must not depend on the session (the trigger fixes the same settings).
    let mut settings: Vec<(&str, &std::ffi::CStr)> = vec![
        ("TimeZone", c"UTC"),
        ("DateStyle", c"ISO, MDY"),
        ("IntervalStyle", c"postgres"),
        ("extra_float_digits", c"1"),
        ("bytea_output", c"hex"),
    ];
    if replica {
        settings.push(("session_replication_role", c"replica"));
    }
    let args = [
        s.legacy_table.as_str().into(),
        from_tid.as_str().into(),
        to_tid.as_str().into(),
        r.id.into(),
    ];
    let changed = crate::settings::with_settings(&settings, || {
        let _rewriting = Rewriting::begin();
        plans::scalar::<i64>(&sql, &args)
    })
    .or_raise("cutover rewrite")
    .unwrap_or(0);
    let done = r.rows_done + changed;
    set_facts(ext, r, &r.target, false, r.validated, upto, done);
    notice!(
        "nura_users cutover {}: {} {} blocks {}/{}, {} rows changed",
        s.legacy_table,
        r.name(),
        if forward { "rewrite" } else { "rewrite back" },
        upto.min(blocks),
        blocks,
        done
    );
    Ok(())
}

thread_local! {
    /// This backend is running a rewrite: the resolve trigger passes its writes through.
    static REWRITING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks a rewrite for the resolve trigger while it lives; an ERROR unwinds it too.
struct Rewriting;

impl Rewriting {
    fn begin() -> Rewriting {
        REWRITING.set(true);
        Rewriting
    }
}

impl Drop for Rewriting {
    fn drop(&mut self) {
        REWRITING.set(false);
    }
}

/// For the resolve trigger (`sql/cutover.sql`): whether this backend is running a rewrite, whose
/// writes are the cutover's own and pass through. A backend-local flag, which no SQL can set.
#[pg_extern(volatile, parallel_unsafe)]
fn nura_cutover_rewriting() -> bool {
    REWRITING.get()
}

/// The table's size in blocks, and the blocks a batch of about `batch_size` rows spans.
fn block_counts(r: &Reference, batch_size: i32) -> (i64, i64) {
    let (blocks, per_block) = catalog::read::<(i64, f64)>(
        "SELECT pg_catalog.jsonb_build_array( \
             pg_catalog.pg_relation_size(pg_catalog.to_regclass($1)) \
                 OPERATOR(pg_catalog./) pg_catalog.current_setting('block_size')::int8, \
             CASE WHEN c.relpages OPERATOR(pg_catalog.>) 0 AND c.reltuples OPERATOR(pg_catalog.>) 0 \
                  THEN c.reltuples OPERATOR(pg_catalog./) c.relpages ELSE 100 END) \
         FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1)",
        &[r.table().into()],
    );
    let per_batch = ((batch_size as f64) / per_block.max(1.0)).ceil().max(1.0) as i64;
    (blocks, per_batch)
}

/// One batch forward: `$1` the legacy table, `$2`/`$3` the tid range, `$4` the reference.
fn forward_sql(ext: &str, r: &Reference) -> String {
    let col = quote(&r.ref_column);
    format!(
        "WITH old AS MATERIALIZED ( \
             SELECT t.ctid AS tid, t.{col} AS original, a.user_id AS mapped, {key} AS row_key \
             FROM ONLY {table} t JOIN {ext}.user_id_aliases a ON a.alias_id OPERATOR(pg_catalog.=) t.{col} \
                  AND a.source OPERATOR(pg_catalog.=) $1 \
             WHERE t.ctid OPERATOR(pg_catalog.>=) $2::pg_catalog.tid AND t.ctid OPERATOR(pg_catalog.<) $3::pg_catalog.tid \
               AND a.user_id OPERATOR(pg_catalog.<>) t.{col} \
             FOR UPDATE OF t), \
         saved AS (INSERT INTO {ext}.nura_cutover_originals (reference_id, row_key, original) \
             SELECT $4, o.row_key, o.original FROM old o \
             ON CONFLICT (reference_id, row_key) DO UPDATE SET original = EXCLUDED.original), \
         changed AS (UPDATE ONLY {table} t SET {col} = o.mapped FROM old o \
             WHERE t.ctid OPERATOR(pg_catalog.=) o.tid RETURNING 1) \
         SELECT pg_catalog.count(*) FROM changed",
        key = r.row_key_sql("a.user_id"),
        table = r.table(),
    )
}

/// One batch back: each users id becomes the legacy id the row held (when that id is still its
/// user's), or the id itself when it is a legacy id of the table, or its user's first legacy id.
fn back_sql(ext: &str, r: &Reference) -> String {
    let col = quote(&r.ref_column);
    format!(
        "WITH cand AS MATERIALIZED ( \
             SELECT t.ctid AS tid, t.{col} AS v, {key} AS row_key FROM ONLY {table} t \
             WHERE t.ctid OPERATOR(pg_catalog.>=) $2::pg_catalog.tid AND t.ctid OPERATOR(pg_catalog.<) $3::pg_catalog.tid \
               AND EXISTS (SELECT FROM {ext}.users u WHERE u.id OPERATOR(pg_catalog.=) t.{col}) \
             FOR UPDATE OF t), \
         back AS MATERIALIZED ( \
             SELECT c.tid, c.v, COALESCE( \
                 (SELECT o.original FROM {ext}.nura_cutover_originals o \
                  JOIN {ext}.user_id_aliases a ON a.alias_id OPERATOR(pg_catalog.=) o.original \
                       AND a.source OPERATOR(pg_catalog.=) $1 AND a.user_id OPERATOR(pg_catalog.=) c.v \
                  WHERE o.reference_id OPERATOR(pg_catalog.=) $4 AND o.row_key OPERATOR(pg_catalog.=) c.row_key), \
                 (SELECT a.alias_id FROM {ext}.user_id_aliases a \
                  WHERE a.alias_id OPERATOR(pg_catalog.=) c.v AND a.source OPERATOR(pg_catalog.=) $1), \
                 (SELECT a.alias_id FROM {ext}.user_id_aliases a \
                  WHERE a.user_id OPERATOR(pg_catalog.=) c.v AND a.source OPERATOR(pg_catalog.=) $1 \
                  ORDER BY EXISTS (SELECT FROM {ext}.user_id_aliases f \
                                   WHERE f.alias_id OPERATOR(pg_catalog.=) a.alias_id \
                                     AND f.source OPERATOR(pg_catalog.=) 'adoption' \
                                     AND f.user_id OPERATOR(pg_catalog.=) c.v) DESC, \
                           a.created_at, a.alias_id LIMIT 1)) AS legacy \
             FROM cand c), \
         changed AS (UPDATE ONLY {table} t SET {col} = b.legacy FROM back b \
             WHERE t.ctid OPERATOR(pg_catalog.=) b.tid AND b.legacy IS NOT NULL \
               AND b.legacy OPERATOR(pg_catalog.<>) b.v RETURNING 1) \
         SELECT pg_catalog.count(*) FROM changed",
        key = r.row_key_sql(&format!("t.{col}")),
        table = r.table(),
    )
}

/// VALIDATE the key of `r` (SHARE UPDATE EXCLUSIVE: reads and writes go on). A failure is a
/// recorded state: the key stays NOT VALID, and the CALL stops with 23503 naming it.
fn validate(ext: &str, s: &TableState, r: &Reference, action: RefAction) -> Result<(), Stop> {
    let Some(name) = r.constraint_name.as_deref() else {
        set_facts(ext, r, &r.target, true, true, r.cursor, r.rows_done);
        return Ok(());
    };
    let waited = locks::lock(&[r.table()], "SHARE UPDATE EXCLUSIVE").map_err(Stop::Waiting)?;
    let sql = format!(
        "ALTER TABLE {} VALIDATE CONSTRAINT {}",
        r.table(),
        quote(name)
    );
    if let Err(e) =
        crate::subtxn::run(|| plans::execute_once(&sql, &[]).or_raise("cutover validate"))
    {
        if e.sqlstate != PgSqlErrorCode::ERRCODE_FOREIGN_KEY_VIOLATION {
            e.raise();
        }
        // Rewritten again from the start by the next CALL: rows fixed meanwhile are mapped.
        set_facts(ext, r, &r.target, false, false, 0, r.rows_done);
        let (n, examples) = unresolved(ext, s, r);
        return Err(Stop::Refused(
            Error::new(
                PgSqlErrorCode::ERRCODE_FOREIGN_KEY_VIOLATION,
                format!(
                    "validating {name} of {} failed: {n} row(s) hold a value that is no user and no {} id of one: {}",
                    r.table(),
                    s.legacy_table,
                    examples.join(", ")
                ),
            )
            .hint("Fix or delete the rows it names, then CALL again: the key stays NOT VALID until then."),
        ));
    }
    set_facts(ext, r, &r.target, true, true, r.cursor, r.rows_done);
    log(
        ext,
        s,
        r,
        action.name(),
        json!({"statement": sql}),
        1,
        waited,
    );
    Ok(())
}

/// Whether `r`'s resolve triggers are still on its table.
pub(super) fn has_triggers(r: &Reference) -> bool {
    catalog::scalar::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_trigger t \
             WHERE t.tgrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1) \
               AND t.tgname OPERATOR(pg_catalog.=) $2)",
        &[r.table().into(), r.trigger_name().into()],
    )
    .unwrap_or(false)
}

/// The statements that drop `r`'s resolve triggers at the finish (the key to users stays).
pub(super) fn finish_sql(r: &Reference) -> Vec<String> {
    if !has_triggers(r) {
        return Vec::new();
    }
    vec![
        format!("DROP TRIGGER IF EXISTS {} ON {}", r.trigger(), r.table()),
        format!(
            "DROP TRIGGER IF EXISTS {} ON {}",
            r.moved_trigger(),
            r.table()
        ),
    ]
}

/// The reference is as it was: its trigger goes, and its facts and originals with it.
fn done(ext: &str, s: &TableState, r: &Reference, attempt: i32) -> Result<(), Stop> {
    let has_trigger = catalog::scalar::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_trigger t \
             WHERE t.tgrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1) \
               AND t.tgname OPERATOR(pg_catalog.=) $2)",
        &[r.table().into(), r.trigger_name().into()],
    )
    .unwrap_or(false);
    let mut waited = 0;
    let mut statements = Vec::new();
    if has_trigger {
        waited = locks::lock(&[r.table()], "ACCESS EXCLUSIVE").map_err(Stop::Waiting)?;
        statements.push(format!("DROP TRIGGER {} ON {}", r.trigger(), r.table()));
        statements.push(format!(
            "DROP TRIGGER IF EXISTS {} ON {}",
            r.moved_trigger(),
            r.table()
        ));
        execute_all(&statements);
    }
    plans::execute(
        &format!("DELETE FROM {ext}.nura_cutover_references WHERE id OPERATOR(pg_catalog.=) $1"),
        &[r.id.into()],
    )
    .or_raise("cutover references");
    log(
        ext,
        s,
        r,
        "reference_done",
        json!({"statements": statements}),
        attempt,
        waited,
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn set_facts(
    ext: &str,
    r: &Reference,
    target: &str,
    rewritten: bool,
    validated: bool,
    cursor: i64,
    rows_done: i64,
) {
    plans::execute(
        &format!(
            "UPDATE {ext}.nura_cutover_references SET target = $2, rewritten = $3, validated = $4, \
                 cursor = $5, rows_done = $6 WHERE id OPERATOR(pg_catalog.=) $1"
        ),
        &[
            r.id.into(),
            target.into(),
            rewritten.into(),
            validated.into(),
            cursor.into(),
            rows_done.into(),
        ],
    )
    .or_raise("cutover references");
}

fn log(
    ext: &str,
    s: &TableState,
    r: &Reference,
    action: &str,
    detail: serde_json::Value,
    attempts: i32,
    lock_wait_ms: i32,
) {
    state::log_step(
        ext,
        Step {
            table: &s.legacy_table,
            action,
            object: Some(r.name()),
            detail,
            attempts,
            lock_wait_ms,
        },
    );
}

/// Before user `from` is merged into `into` and deleted (an adoption by a user who has a row):
/// every moved reference holding `from` is given `into`, so that the key's ON DELETE action does
/// not reach the product's rows. Nothing when no reference points to `users`.
pub fn repoint(ext: &str, from: pgrx::Uuid, into: pgrx::Uuid) {
    // A catalog not yet updated to 0.7.0 has no cutover.
    if !crate::schema::has_column(ext, "nura_cutover_references", "target") {
        return;
    }
    let moved: Vec<(String, String, String)> = catalog::read(
        &format!(
            "SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(r.ref_schema, r.ref_table, r.ref_column)), '[]') \
             FROM {ext}.nura_cutover_references r WHERE r.target OPERATOR(pg_catalog.=) 'users'"
        ),
        &[],
    );
    for (schema, table, column) in moved {
        plans::execute_once(
            &format!(
                "UPDATE {}.{} SET {col} = $2 WHERE {col} OPERATOR(pg_catalog.=) $1",
                quote(&schema),
                quote(&table),
                col = quote(&column)
            ),
            &[from.into(), into.into()],
        )
        .or_raise("moving references");
    }
}
