//! Every blocker of the cutover's plan with its reason text, in one place (docs/design/cutover.md
//! §12, whose texts these are; where one differs, docs/cutover.md "What exists now" says why),
//! and the notes the plan gives with what it carries. The design's `<…>` are the arguments here:
//! names already quoted and schema-qualified by the caller.

/// A blocker: its kind, its reason, and what it is about (`reference` or `object`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Blocker {
    pub(super) kind: &'static str,
    pub(super) reason: String,
    pub(super) about: (&'static str, String),
}

impl Blocker {
    fn new(kind: &'static str, reason: String, about: (&'static str, String)) -> Blocker {
        Blocker {
            kind,
            reason,
            about,
        }
    }
}

fn reference(name: &str) -> (&'static str, String) {
    ("reference", name.to_string())
}

fn object(name: &str) -> (&'static str, String) {
    ("object", name.to_string())
}

// References. `column` is `<table>.<col>`, the reference's name.

pub(super) fn composite_key(column: &str, key: &str, cols: &str, t: &str, t_cols: &str) -> Blocker {
    let reason = format!(
        "{key} is a composite key ({cols}) referencing {t} ({t_cols}): users(id) is a one-column key; make the key one column, or drop it"
    );
    Blocker::new("composite_key", reason, reference(column))
}

pub(super) fn non_id_key(column: &str, key: &str, t: &str, t_col: &str) -> Blocker {
    let reason = format!(
        "{key} references {t} ({t_col}), not its id: only keys on the id can move to users(id)"
    );
    Blocker::new("non_id_key", reason, reference(column))
}

pub(super) fn reference_type(column: &str, type_name: &str) -> Blocker {
    let reason = format!("{column} is {type_name}, not uuid: a key to users(id) needs uuid");
    Blocker::new("reference_type", reason, reference(column))
}

pub(super) fn partition_key(column: &str, table: &str, col: &str) -> Blocker {
    let reason = format!(
        "{table} is partitioned by {col}: a BEFORE trigger cannot move a row to another partition, so values written there cannot be resolved"
    );
    Blocker::new("partition_key", reason, reference(column))
}

/// A shape this release does not move yet (docs/cutover.md, "Refused by the capture"): the same
/// reason the CALL gives.
pub(super) fn not_moved(column: &str, why: &str) -> Blocker {
    let reason = format!("{column} {why}");
    Blocker::new("not_moved", reason, reference(column))
}

pub(super) fn no_row_key(column: &str, table: &str) -> Blocker {
    let reason = format!(
        "{table} has no primary key or unique key on NOT NULL columns: the rewrite and a rollback find rows by their key"
    );
    Blocker::new("no_row_key", reason, reference(column))
}

pub(super) fn cascade_out(column: &str, key: &str, other_key: &str, other_table: &str) -> Blocker {
    let reason = format!(
        "{column} is part of key {key}, which {other_key} on {other_table} references: rewriting it would have to cascade"
    );
    Blocker::new("cascade_out", reason, reference(column))
}

pub(super) fn two_legacy_tables(column: &str, first: &str, second: &str) -> Blocker {
    let reason = format!("{column} references both {first} and {second}");
    Blocker::new("two_legacy_tables", reason, reference(column))
}

/// `own`: a temporary table of this session (the design names only another session's, which is
/// the one a foreign key cannot come from; an extra reference can name either).
pub(super) fn temporary_table(column: &str, table: &str, own: bool) -> Blocker {
    let reason = if own {
        format!("{table} is a temporary table: it ends with this session")
    } else {
        format!("{table} is a temporary table of another session")
    };
    Blocker::new("temporary_table", reason, reference(column))
}

pub(super) fn values_not_resolving(column: &str, n: i64, t_name: &str) -> Blocker {
    let reason = format!(
        "{column} holds {n} values that are no {t_name} id of a migrated user (see examples_not_resolving)"
    );
    Blocker::new("values_not_resolving", reason, reference(column))
}

/// `key`: `None` for the primary key, else the unique index the rewrite would break (the
/// design names the primary key only; another unique key fails the rewrite the same way).
pub(super) fn key_collision(
    column: &str,
    table: &str,
    n: i64,
    t_name: &str,
    key: Option<&str>,
) -> Blocker {
    let what = match key {
        None => "a primary key".to_string(),
        Some(index) => format!("a key of unique index {index}"),
    };
    let reason = format!(
        "{table}: the rewrite would give {n} rows {what} that another row has (people with several {t_name} ids); merge or delete them first"
    );
    Blocker::new("primary_key_collision", reason, reference(column))
}

// The legacy table. `t` is its qualified name, `t_name` its plain one.

pub(super) fn legacy_id_type(t: &str, id: &str, type_name: Option<&str>) -> Blocker {
    let reason = match type_name {
        Some(type_name) => format!(
            "{t}.{id} is {type_name}, not uuid: references to it cannot become keys to users(id)"
        ),
        None => format!("{t} has no column {id}: references to it cannot become keys to users(id)"),
    };
    Blocker::new("legacy_id_type", reason, object(t))
}

pub(super) fn legacy_table_kind(t: &str, kind: &str) -> Blocker {
    let reason = format!("{t} is {kind}: the cutover moves plain tables");
    Blocker::new("legacy_table_kind", reason, object(t))
}

pub(super) fn legacy_id_not_unique(t: &str, id: &str) -> Blocker {
    let reason = format!("{t} has no primary key or unique constraint on {id}");
    Blocker::new("legacy_id_not_unique", reason, object(t))
}

pub(super) fn kept_name_taken(t: &str, t_name: &str) -> Blocker {
    let reason = format!("nura_legacy.{t_name} exists already: the switch keeps the table there");
    Blocker::new("kept_name_taken", reason, object(t))
}

pub(super) fn ambiguous_ids(t: &str, n: i64, t_name: &str) -> Blocker {
    let reason = format!(
        "{n} {t_name} ids are also the id of another user: a reference holding one could not tell which person it means"
    );
    Blocker::new("ambiguous_ids", reason, object(t))
}

pub(super) fn column_type(column: &str, type_name: &str, field: &str) -> Blocker {
    let reason = format!("{column} is {type_name}: {field} does not fit it");
    Blocker::new("column_type", reason, object(column))
}

pub(super) fn materialized_view(view: &str, t: &str) -> Blocker {
    let reason = format!(
        "materialized view {view} reads {t}: it cannot be re-pointed to the view; drop it, or recreate it over the view after the switch"
    );
    Blocker::new("materialized_view", reason, object(view))
}

pub(super) fn rule(t: &str, rule: &str) -> Blocker {
    let reason = format!(
        "{t} has rule \"{rule}\": rules are not carried over (on the view they would rewrite the product's statements, on the kept table they would fire for reverse-sync writes); drop it or make it a trigger"
    );
    Blocker::new("rule", reason, object(rule))
}

pub(super) fn bound_function(signature: &str, t: &str) -> Blocker {
    let reason = format!(
        "function {signature} has a SQL-standard body bound to {t}: recreate it after the switch, or with a string body"
    );
    Blocker::new("bound_function", reason, object(signature))
}

pub(super) fn row_type(user: &str, t: &str) -> Blocker {
    let reason = format!(
        "{user} uses the row type of {t}, which moves to nura_legacy with the table; the view has a row type of its own"
    );
    Blocker::new("row_type", reason, object(user))
}

pub(super) fn publication_table(publication: &str, t: &str, t_name: &str) -> Blocker {
    let reason = format!(
        "publication \"{publication}\" lists {t}: a view cannot be published, and the kept table would be published as nura_legacy.{t_name}; remove it from the publication first"
    );
    Blocker::new("publication_table", reason, object(publication))
}

pub(super) fn publication_schema(publication: &str, schema: &str, t_name: &str) -> Blocker {
    let reason = format!(
        "publication \"{publication}\" publishes schema {schema}: moving {t_name} to nura_legacy would stop publishing it; publish {t_name}'s data another way first"
    );
    Blocker::new("publication_schema", reason, object(publication))
}

// The migration (docs/migration.md), for every legacy table of the schema.

pub(super) fn migration_missing(schema: &str) -> Blocker {
    let reason = format!(
        "no completed migration run for legacy schema \"{schema}\": run CALL nura_run_migration() first"
    );
    Blocker::new("migration_missing", reason, object(schema))
}

pub(super) fn migration_running(run: i64) -> Blocker {
    let reason =
        format!("migration run {run} has not finished: CALL nura_run_migration() resumes it");
    Blocker::new(
        "migration_running",
        reason,
        ("object", format!("migration run {run}")),
    )
}

/// The plan's own check, not `nura_verify_migration` (docs/cutover.md, "What exists now"):
/// rows neither placed by an alias nor recorded as unmigratable, the `missing` of verify.
pub(super) fn migration_not_verified(t: &str, run: i64, missing: i64, t_name: &str) -> Blocker {
    let reason = format!(
        "migration run {run} is not verified: {missing} rows of {t_name} are missing (no alias places them, and they are no unmigratable issue); CALL nura_run_migration() places rows written since"
    );
    Blocker::new("migration_not_verified", reason, object(t))
}

pub(super) fn unmigratable_rows(t: &str, n: i64, t_name: &str, run: i64) -> Blocker {
    let reason = format!(
        "{n} rows of {t_name} are unmigratable issues of run {run}: the view could not show them; fix or delete them, then migrate again"
    );
    Blocker::new("unmigratable_rows", reason, object(t))
}

// Notes on what is carried (the design's §4.1, §6.7, §8 and §12).

pub(super) const TRIGGER_KEPT: &str =
    "stays on the kept table; fires for every change of a kept row, reverse sync included";
pub(super) const POLICY_KEPT: &str =
    "applies to reads through the view (security_invoker); writes through the view follow the own-user rule instead";
pub(super) const CONSTRAINT_KEPT: &str =
    "stays on the kept table: reverse sync cannot show a user who breaks it (recorded as not_shown)";

pub(super) fn published_all(t_name: &str) -> String {
    format!(
        "the kept table stays published as nura_legacy.{t_name}, with reverse-sync writes; a subscriber needs that table"
    )
}

pub(super) fn narrowed(role: &str) -> String {
    if role == "anon" {
        "through the view, anon sees no rows".to_string()
    } else {
        format!("through the view, {role} sees only its own user's rows")
    }
}

pub(super) fn index_noted(columns: &[String], fields: &[&str]) -> String {
    format!(
        "the view reads {} from users: CREATE INDEX CONCURRENTLY ON users ({}) before the switch",
        columns.join(", "),
        fields.join(", ")
    )
}

pub(super) fn legacy_reference_kept(t_name: &str, kept_here: bool) -> String {
    let base =
        format!("stays on the kept table; its values stay {t_name} ids, which are the view's ids");
    if kept_here {
        base
    } else {
        format!("{base}; it keeps drop_legacy from dropping nura_legacy.{t_name}")
    }
}

pub(super) fn replica_trigger(enabled: &str) -> String {
    let how = if enabled == "A" { "ALWAYS" } else { "REPLICA" };
    format!("enabled {how}: it fires for the rewrite's updates")
}

pub(super) fn shorter_column(type_name: &str, field: &str, limit: i32) -> String {
    format!(
        "{type_name} is shorter than {field} (up to {limit} characters): values are shown cut, and reverse sync records longer ones in the backlog"
    )
}

/// What an Auth delete of a user does to the rows of a key once it points to `users` (§6.7).
pub(super) fn on_delete(confdeltype: Option<&str>) -> &'static str {
    match confdeltype {
        None => "no foreign key: deleting a user leaves these values pointing at nobody",
        Some("c") => "deleting a user in Auth now deletes these rows",
        Some("n") => "deleting a user in Auth now sets these values to NULL",
        Some("d") => "deleting a user in Auth now sets these values to their default",
        Some(_) => "a user with these rows cannot be deleted: its Auth delete is logged as a failed sync until the rows go",
    }
}
