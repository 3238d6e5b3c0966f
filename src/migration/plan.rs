//! Phase 2, the plan (docs/migration.md): one set-based statement reads every legacy row once,
//! normalizes its email, matches it to an existing user (auth or `users`, by email; custom rows
//! by auth id; rows without a usable email by id), groups rows of the same person into a
//! cluster, picks the id a new user will get, cuts the clusters into batches, and stores all of
//! it in `nura_migration_rows`, with a reason for each row that cannot be placed. Also how the
//! plan and `nura_verify_migration` read legacy tables (which exist, which columns they may
//! read as they are, a row's JSON).

use super::issues::record_unplaceable;
use super::quote;
use super::report::{Phase, Report, Run};
use super::rules::Table;
use crate::errors::OrRaise;
use crate::plans;
use crate::sync::{self, Core};
use pgrx::prelude::*;
use std::ffi::CString;
use std::time::Instant;

/// The plan's step: the run's plan is written, and the run moves on to its batches.
pub(super) fn step(core: &Core, run: &Run, report: &mut Report) {
    let started = Instant::now();
    plan(core, run, report);
    report.plan_seconds = started.elapsed().as_secs_f64();
    report.phase = Phase::Apply;
    notice!(
        "nura_users migration run {}: {} legacy rows planned in {} batches",
        run.id,
        report.rows_total,
        report.batches_total
    );
}

/// SQL for the uuid that the text `expr` spells ([`nura_legacy_uuid`]); on a catalog not yet
/// updated (no such function), the canonical form only.
///
/// [`nura_legacy_uuid`]: super::nura_legacy_uuid
pub fn legacy_uuid_sql(schema: &str, expr: &str) -> String {
    if crate::schema::has_function(schema, "nura_legacy_uuid(text)") {
        format!("{schema}.nura_legacy_uuid({expr})")
    } else {
        format!(
            "CASE WHEN pg_catalog.lower({expr}) OPERATOR(pg_catalog.~) \
                  '^[0-9a-f]{{8}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{12}}$' \
             THEN ({expr})::uuid END"
        )
    }
}

/// The JSON of legacy row `alias` (a row of its table, whose `json` columns are `json_columns`):
/// `to_jsonb`, except for a row with a `\u` escape in a json column, which goes through
/// [`nura_legacy_row`]: a cell that jsonb refuses (`\u0000`, a lone surrogate) then marks the
/// row instead of failing the statement. The plan and verify read rows with this same
/// expression. (On a catalog not yet updated, without that function: `to_jsonb`.)
///
/// [`nura_legacy_row`]: super::nura_legacy_row
pub fn row_json_sql(schema: &str, json_columns: &[String], alias: &str) -> String {
    let plain = format!("pg_catalog.to_jsonb({alias})");
    if json_columns.is_empty() || !crate::schema::has_function(schema, "nura_legacy_row(text)") {
        return plain;
    }
    let escaped = json_columns
        .iter()
        .map(|c| {
            format!(
                "pg_catalog.strpos({alias}.{}::text, E'\\\\u') OPERATOR(pg_catalog.>) 0",
                quote(c)
            )
        })
        .collect::<Vec<_>>()
        .join(" OR ");
    format!(
        "(CASE WHEN {escaped} THEN {schema}.nura_legacy_row(pg_catalog.to_json({alias})::text) ELSE {plain} END)"
    )
}

/// The json columns of a legacy table (for [`row_json_sql`]).
pub fn json_columns(legacy_schema: &str, table: Table) -> Vec<String> {
    typed_columns(legacy_schema, table).json
}

/// Which of the legacy tables exist in `legacy_schema`.
pub(super) fn present_tables(legacy_schema: &str) -> Vec<Table> {
    let names = plans::read_scalar::<Vec<String>>(
        "SELECT pg_catalog.array_agg(c.relname::text) FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         WHERE n.nspname OPERATOR(pg_catalog.=) $1 \
           AND c.relname OPERATOR(pg_catalog.=) ANY ('{chat_users,voice_users,custom_users}'::name[]) \
           AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p,v,m,f}'::\"char\"[])",
        &[legacy_schema.into()],
    )
    .or_raise("migration")
    .unwrap_or_default();
    Table::ALL
        .into_iter()
        .filter(|t| names.iter().any(|n| n == t.name()))
        .collect()
}

/// Which of a legacy table's id and `created_at` columns the plan and verify may read as they
/// are, without the row's JSON: an id column of type `uuid`, a `created_at` of type
/// `timestamptz` or `timestamp`. Reading them from the JSON gives the same values (`to_jsonb`
/// prints them, the casts read them back; `timestamp` in the session's time zone either way),
/// but matching the id's text against a pattern row by row is slow (BENCHMARKS.md). A column of
/// any other type, or none, is read from the JSON.
#[derive(Clone, Default)]
pub(super) struct TypedColumns {
    pub(super) id: bool,
    pub(super) created_at: bool,
    /// The id column is a `uuid` with a unique index of its own (a primary key, say): no two
    /// rows of the table share an id, so the plan needs no tie-break among them (see [`plan`]).
    pub(super) id_unique: bool,
    /// Columns of type `json`, which may hold what `jsonb` refuses (see [`row_json_sql`]).
    pub(super) json: Vec<String>,
    /// The table has a `created_at` column (of any type).
    pub(super) has_created_at: bool,
}

pub(super) fn typed_columns(legacy_schema: &str, table: Table) -> TypedColumns {
    let types = plans::rows(
        "SELECT a.attname::text, a.atttypid FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.attrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND c.relname OPERATOR(pg_catalog.=) $2 \
           AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped \
           AND (a.attname OPERATOR(pg_catalog.=) ANY ($3::name[]) \
                OR a.atttypid OPERATOR(pg_catalog.=) 'pg_catalog.json'::pg_catalog.regtype)",
        &[
            legacy_schema.into(),
            table.name().into(),
            vec![table.id_column(), "created_at"].into(),
        ],
        |r| {
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<pg_sys::Oid>(2)?,
            ))
        },
    )
    .or_raise("migration");
    let mut typed = TypedColumns::default();
    for (name, oid) in types {
        if oid == Some(pg_sys::JSONOID) {
            typed.json.push(name);
        } else if name == table.id_column() {
            typed.id = oid == Some(pg_sys::UUIDOID);
        } else if name == "created_at" {
            typed.has_created_at = true;
            typed.created_at =
                matches!(oid, Some(o) if o == pg_sys::TIMESTAMPTZOID || o == pg_sys::TIMESTAMPOID);
        }
    }
    typed.id_unique = typed.id && id_has_unique_index(legacy_schema, table);
    typed
}

/// Whether the table's id column has a unique index of its own: valid, immediate, not partial,
/// not on an expression.
fn id_has_unique_index(legacy_schema: &str, table: Table) -> bool {
    plans::read_scalar::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.indrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid \
             WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND c.relname OPERATOR(pg_catalog.=) $2 \
               AND a.attname OPERATOR(pg_catalog.=) $3::name AND NOT a.attisdropped \
               AND i.indisunique AND i.indisvalid AND i.indimmediate AND i.indpred IS NULL \
               AND i.indexprs IS NULL AND i.indnkeyatts OPERATOR(pg_catalog.=) 1 \
               AND i.indkey[0] OPERATOR(pg_catalog.=) a.attnum)",
        &[
            legacy_schema.into(),
            table.name().into(),
            table.id_column().into(),
        ],
    )
    .or_raise("migration")
    .unwrap_or(false)
}

/// The plan's per-row staging table (see [`stage_rows`]): temporary, dropped right after use,
/// and at the end of the transaction at the latest.
const R0_TABLE: &str = "pg_temp.nura_migration_plan_rows";

#[cfg(any(test, feature = "pg_test"))]
thread_local! {
    /// Tests: plan with the per-row work inline, as without the right to temporary tables.
    static FORCE_INLINE_R0: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a test asked for the inline plan (`FORCE_INLINE_R0`); never outside the tests.
fn inline_r0_forced() -> bool {
    #[cfg(any(test, feature = "pg_test"))]
    return FORCE_INLINE_R0.get();
    #[cfg(not(any(test, feature = "pg_test")))]
    return false;
}

/// Write the run's plan: every legacy row with its cluster, target, planned id, batch or reason.
fn plan(core: &Core, run: &Run, report: &mut Report) {
    let schema = &core.schema;
    let tables = present_tables(&run.legacy_schema);
    if tables.is_empty() {
        return;
    }
    let sources = sources_sql(schema, &run.legacy_schema, &tables, None);
    let auth = AuthParts::new(schema);
    let text_id = legacy_uuid_sql(schema, "s.j OPERATOR(pg_catalog.->>) s.idcol");
    let row_hash = RowHashParts::new(schema);
    let earlier = EarlierRuns::new(schema, &tables);
    let r0 = rows_sql(schema, &text_id, &sources);
    let work_mem = migration_work_mem();
    let work_mem = ("work_mem", work_mem.as_c_str());
    let staged = stage_rows(&r0, work_mem);
    let sql = plan_sql(schema, &staged.cte, &auth, &earlier, &row_hash);
    // The statement sorts every legacy row a few times (narrow rows: the data is joined in once
    // at the end); with the default work_mem those sorts go to disk, so it alone gets more. Nor
    // does it merge-join: PostgreSQL cannot know that ord is unique, expects far more rows, and
    // would sort the wide rows once more (to disk) for a merge join where a hash join is faster.
    crate::settings::with_settings(&[work_mem, ("enable_mergejoin", c"off")], || {
        plans::execute_once(&sql, &[run.id.into(), (run.batch_size as i64).into()])
    })
    .or_raise("migration");
    if staged.in_table {
        plans::execute_once(&format!("DROP TABLE {R0_TABLE}"), &[]).or_raise("migration");
    }

    // A chat or voice row without a usable email matches the user whose id is its own. A user
    // that this very run creates under that id (a row of the person, with an email, claimed it)
    // counts too: such a row joins that person's cluster and batch, so that the next run does
    // not place it as something new (the plan's join saw only the users that existed). Not when
    // its id in its own table went to someone else: the alias of that id there is theirs.
    join_own_id_clusters(schema, run.id);
    record_unplaceable(schema, run.id);
    count_plan(core, run, report);
}

/// The plan of rows written while a cutover captures their table (docs/cutover.md, live legacy
/// writes): the rows of `table` whose id is one of `ids` (`$3`), planned as the plan statement
/// plans every row, as batch 0 of run `run_id`. Few rows: no staging table. Each placement
/// removes its work list before its transaction ends, so it sees no other placement's.
pub(super) fn plan_live(core: &Core, run_id: i64, legacy: &str, table: Table, ids: &[pgrx::Uuid]) {
    let schema = &core.schema;
    let (_, filter) = id_filter(schema, legacy, table, "$3");
    let sources = sources_sql(schema, legacy, &[table], Some(&filter));
    let text_id = legacy_uuid_sql(schema, "s.j OPERATOR(pg_catalog.->>) s.idcol");
    let r0 = rows_sql(schema, &text_id, &sources);
    // Only the users these rows can match (by address, through the unique index on it, which
    // holds the users who are not SSO ones, the only ones an address matches; or by id), not
    // every user: a placement costs what its rows cost. Auth users without a users row
    // (a sync that failed, which reconcile repairs) are not matched live.
    let auth = AuthParts {
        ident: format!(
            " WHERE NOT u.is_sso_user AND pg_catalog.lower(u.email) IN \
                  (SELECT pg_catalog.lower(r0.email) FROM r0 WHERE r0.email IS NOT NULL) \
              UNION SELECT u.id, pg_catalog.lower(u.email), u.is_sso_user, 1 FROM {schema}.users u \
              WHERE u.id IN (SELECT r0.source_id FROM r0)"
        ),
        ..AuthParts::new(schema)
    };
    let sql = plan_sql(
        schema,
        &format!("r0 AS MATERIALIZED ({r0})"),
        &auth,
        &EarlierRuns::new(schema, &[table]),
        &RowHashParts::new(schema),
    );
    plans::execute(
        &sql,
        &[run_id.into(), (i32::MAX as i64).into(), ids.to_vec().into()],
    )
    .or_raise("placing legacy rows");
    join_own_id_clusters(schema, run_id);
    record_unplaceable(schema, run_id);
}

/// A legacy row `t`'s id as a uuid, and the condition that it is one of the uuid array
/// `param`: on a `uuid` id column the column itself, so that its index serves; otherwise its
/// text as the plan reads it.
pub(super) fn id_filter(schema: &str, legacy: &str, table: Table, param: &str) -> (String, String) {
    let column = format!("t.{}", quote(table.id_column()));
    let id = if typed_columns(legacy, table).id {
        column
    } else {
        legacy_uuid_sql(schema, &format!("{column}::text"))
    };
    let filter = format!("{id} OPERATOR(pg_catalog.=) ANY ({param}::uuid[])");
    (id, filter)
}

/// One `SELECT` per legacy table, `UNION ALL`: each row as JSON with what the plan reads of it
/// (its table and precedence, its id and `created_at` where they may be read as they are);
/// `filter`, a condition on the row `t`, keeps some rows only.
fn sources_sql(schema: &str, legacy: &str, tables: &[Table], filter: Option<&str>) -> String {
    let legacy_q = quote(legacy);
    // A created_at held as text: read as PostgreSQL reads one, NULL (and the row an issue) for
    // text that is no time. (A catalog not yet updated, without that function: a plain cast.)
    let text_created = if crate::schema::has_function(schema, "nura_legacy_timestamptz(text)") {
        format!("{schema}.nura_legacy_timestamptz(t.created_at::text)")
    } else {
        "t.created_at::text::timestamptz".to_string()
    };
    tables
        .iter()
        .map(|t| {
            let typed = typed_columns(legacy, *t);
            format!(
                "SELECT '{name}'::text AS source_table, {prec}::int2 AS precedence, \
                        {row_json} AS j, '{idcol}'::text AS idcol, \
                        {id_typed} AS id_typed, {id} AS typed_id, {id_unique} AS id_unique, \
                        {created} AS typed_created_at, {raw_created} AS raw_created \
                 FROM {legacy_q}.{name} t{filter}",
                filter = filter.map_or(String::new(), |f| format!(" WHERE {f}")),
                name = t.name(),
                prec = t.precedence(),
                row_json = row_json_sql(schema, &typed.json, "t"),
                idcol = t.id_column(),
                id_typed = typed.id,
                id_unique = typed.id_unique,
                id = if typed.id {
                    format!("t.{}", quote(t.id_column()))
                } else {
                    "NULL::uuid".into()
                },
                // Only a created_at of another type calls nura_legacy_timestamptz, which keeps
                // the statement out of parallel workers (see sql/migration.sql).
                created = if typed.created_at {
                    "t.created_at::timestamptz".to_string()
                } else if typed.has_created_at {
                    text_created.clone()
                } else {
                    "NULL::timestamptz".to_string()
                },
                raw_created = if typed.has_created_at && !typed.created_at {
                    "t.created_at::text"
                } else {
                    "NULL::text"
                },
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// The parts of the plan statement that depend on whether `auth.users` exists.
struct AuthParts {
    /// Auth users without a `users` row, as identities a row may match.
    ident: String,
    /// A custom row's auth user, by its id.
    join: &'static str,
    target: &'static str,
    /// Why a custom row without an auth user cannot be placed.
    no_auth_reason: &'static str,
}

impl AuthParts {
    fn new(schema: &str) -> AuthParts {
        if !sync::auth_users_exists() {
            return AuthParts {
                ident: String::new(),
                join: "",
                target: "NULL::uuid",
                no_auth_reason: "custom_users rows need auth.users, which does not exist",
            };
        }
        AuthParts {
            ident: format!(
                " UNION ALL SELECT a.id, CASE WHEN a.deleted_at IS NULL \
                       THEN pg_catalog.lower(pg_catalog.btrim(a.email::text)) END, \
                       COALESCE(a.is_sso_user, false), 0 \
                  FROM auth.users a WHERE NOT EXISTS \
                       (SELECT FROM {schema}.users u WHERE u.id OPERATOR(pg_catalog.=) a.id)"
            ),
            join: "LEFT JOIN auth.users au ON r.precedence OPERATOR(pg_catalog.=) 3 \
                 AND au.id OPERATOR(pg_catalog.=) r.source_id",
            target: "au.id",
            no_auth_reason: "custom_users.user_id has no account in auth.users",
        }
    }
}

/// Each row's fingerprint (see `apply`), computed in the plan's parallel staging and kept in the
/// work list; a catalog not yet updated has no column for it.
struct RowHashParts {
    column: &'static str,
    value: &'static str,
}

impl RowHashParts {
    fn new(schema: &str) -> RowHashParts {
        if crate::schema::has_column(schema, "nura_migration_rows", "row_hash") {
            RowHashParts {
                column: ", row_hash",
                value: ", r0.row_hash",
            }
        } else {
            RowHashParts {
                column: "",
                value: "",
            }
        }
    }
}

/// Rows placed by an earlier run (docs/migration.md, a re-run): the alias of their id in their
/// table names the user they went to (`home`). A row that still matches that user is its owner;
/// a row of that id matching nobody there is the same person's row changed since (it goes home,
/// its changes merged with their conflicts); a row of that id matching someone else while
/// another matches home is another person, whom the alias cannot also mean (unmigratable). So a
/// row placed once is never turned into an issue by a later one that shares its id. A first run
/// over these tables has no aliases of them, and its plan skips the join and its window.
struct EarlierRuns {
    columns: &'static str,
    join: String,
    home_matched: &'static str,
}

impl EarlierRuns {
    fn new(schema: &str, tables: &[Table]) -> EarlierRuns {
        let placed_before = plans::read_scalar::<bool>(
            &format!(
                "SELECT EXISTS (SELECT FROM {schema}.user_id_aliases a \
                                WHERE a.source OPERATOR(pg_catalog.=) ANY ($1) AND a.run_id IS NOT NULL)"
            ),
            &[tables.iter().map(|t| t.name()).collect::<Vec<_>>().into()],
        )
        .or_raise("migration")
        .unwrap_or(false);
        if !placed_before {
            return EarlierRuns {
                columns: "NULL::text COLLATE pg_catalog.\"C\" AS home, NULL::uuid AS alias_user",
                join: String::new(),
                home_matched: "false",
            };
        }
        EarlierRuns {
            columns: "('u:' OPERATOR(pg_catalog.||) al.user_id::text) COLLATE pg_catalog.\"C\" AS home, \
             al.user_id AS alias_user",
            join: format!(
                "LEFT JOIN {schema}.user_id_aliases al ON al.alias_id OPERATOR(pg_catalog.=) r.source_id \
                     AND al.source OPERATOR(pg_catalog.=) r.source_table"
            ),
            home_matched: "COALESCE(pg_catalog.bool_or(k0.matched_cluster OPERATOR(pg_catalog.=) k0.home) OVER \
                 (PARTITION BY k0.source_id, k0.precedence), false)",
        }
    }
}

/// One row per legacy row with what the plan needs of it, and `ord` to join its data back at
/// the end. `tie` orders rows that nothing else orders (one id twice in a table without a
/// primary key, with the same created_at) by their content, so that a dry run and the real run,
/// whose rows come in different orders, agree. It hashes the row's text (jsonb's own hash takes
/// 1 and 1.0 for one value, which the merge tells apart), and only where rows can tie: not for a
/// uuid id with a unique index.
fn rows_sql(schema: &str, text_id: &str, sources: &str) -> String {
    format!(
        "SELECT pg_catalog.row_number() OVER () AS ord, x.* FROM \
         (SELECT s.source_table, s.precedence, \
                       s.j OPERATOR(pg_catalog.-) 'password_hash' AS data, \
                       pg_catalog.jsonb_hash_extended(s.j OPERATOR(pg_catalog.-) 'password_hash', 0) AS row_hash, \
                       COALESCE(s.j OPERATOR(pg_catalog.->>) 'password_hash', '') OPERATOR(pg_catalog.<>) '' AS has_password, \
                       CASE WHEN s.id_typed THEN s.typed_id \
                            ELSE {text_id} END AS source_id, \
                       s.typed_created_at AS created_at, s.raw_created, \
                       s.j OPERATOR(pg_catalog.->>) '__nura_unreadable' AS unreadable, \
                       NULLIF(pg_catalog.btrim(s.j OPERATOR(pg_catalog.->>) 'email'), '') AS raw_email, \
                       CASE WHEN s.precedence OPERATOR(pg_catalog.<) 3 \
                            THEN {schema}.nura_legacy_email(s.j OPERATOR(pg_catalog.->>) 'email') END AS email, \
                       CASE WHEN NOT s.id_unique THEN pg_catalog.hashtextextended(s.j::text, 0) END AS tie \
                FROM ({sources}) s) x"
    )
}

/// The per-row statement of the plan ([`rows_sql`]), as the plan statement's `r0`.
struct StagedRows {
    cte: String,
    /// Written into [`R0_TABLE`], to be dropped after the plan.
    in_table: bool,
}

/// The per-row work (the row as JSON, its email checked) is a good part of the plan. Written
/// first into a temporary table, it runs in parallel workers: inside the plan's INSERT it cannot,
/// and the row number it needs as a key keeps it above any Gather. Inline instead when no
/// workers may run (then staging only writes the rows once more), without the right to create
/// temporary tables, or when a table of that name is in the way.
fn stage_rows(r0: &str, work_mem: (&str, &std::ffi::CStr)) -> StagedRows {
    let in_table = plans::read_scalar::<bool>(
        &format!(
            "SELECT pg_catalog.current_setting('max_parallel_workers_per_gather')::int \
                        OPERATOR(pg_catalog.>) 0 \
                    AND pg_catalog.has_database_privilege(pg_catalog.current_database(), 'TEMPORARY') \
                    AND pg_catalog.to_regclass('{R0_TABLE}') IS NULL"
        ),
        &[],
    )
    .or_raise("migration")
    .unwrap_or(false)
        && !inline_r0_forced();
    if !in_table {
        return StagedRows {
            cte: format!("r0 AS MATERIALIZED ({r0})"),
            in_table,
        };
    }
    let [setup, tuple] = crate::settings::PARALLEL_SCANS;
    crate::settings::with_settings(&[work_mem, setup, tuple], || {
        plans::execute_once(
            &format!("CREATE TEMPORARY TABLE {R0_TABLE} USING heap ON COMMIT DROP AS {r0}"),
            &[],
        )
    })
    .or_raise("migration");
    StagedRows {
        cte: format!("r0 AS NOT MATERIALIZED (SELECT * FROM {R0_TABLE})"),
        in_table,
    }
}

/// The plan's statements sort and hash every legacy row: they get at least
/// `nura_users.migration_work_mem`, for their own duration only.
fn migration_work_mem() -> CString {
    // SAFETY: reads the work_mem setting of this backend.
    CString::new(
        unsafe { pg_sys::work_mem }
            .max(crate::settings::MIGRATION_WORK_MEM.get())
            .to_string(),
    )
    .expect("a number has no NUL")
}

/// The plan statement: `$1` the run, `$2` the batch size. The rows of one id in one table are
/// partitioned by (source_id, precedence): precedence stands for the table (an integer sorts
/// faster than its name), and with source_id first the next window (by source_id, may_claim)
/// needs only an incremental sort.
fn plan_sql(
    schema: &str,
    r0_cte: &str,
    auth: &AuthParts,
    earlier: &EarlierRuns,
    row_hash: &RowHashParts,
) -> String {
    let AuthParts {
        ident: auth_ident,
        join: auth_join,
        target: auth_target,
        no_auth_reason,
    } = auth;
    let EarlierRuns {
        columns: alias_columns,
        join: alias_join,
        home_matched,
    } = earlier;
    let RowHashParts {
        column: hash_column,
        value: hash_value,
    } = row_hash;
    format!(
        "WITH {r0_cte}, \
         r AS (SELECT r0.source_table, r0.ord, r0.precedence, r0.has_password, r0.source_id, \
                      r0.created_at, r0.raw_email, r0.email, r0.raw_created, r0.unreadable, \
                      pg_catalog.row_number() OVER \
                   (ORDER BY r0.precedence, r0.created_at NULLS LAST, r0.source_id, r0.tie) AS row_no \
               FROM r0), \
         ident AS (SELECT u.id, pg_catalog.lower(u.email) AS lemail, u.is_sso_user AS sso, 1 AS pref \
                   FROM {schema}.users u{auth_ident}), \
         by_email AS (SELECT DISTINCT ON (lemail) lemail, id FROM ident \
                      WHERE lemail IS NOT NULL AND NOT sso ORDER BY lemail, pref), \
         m AS (SELECT r.*, \
                      CASE WHEN r.precedence OPERATOR(pg_catalog.=) 3 THEN {auth_target} \
                           WHEN r.email IS NOT NULL THEN be.id ELSE bi.id END AS matched_id, \
                      {alias_columns} \
               FROM r \
               LEFT JOIN by_email be ON r.email IS NOT NULL \
                    AND be.lemail OPERATOR(pg_catalog.=) pg_catalog.lower(r.email) \
               LEFT JOIN ident bi ON r.email IS NULL AND r.precedence OPERATOR(pg_catalog.<) 3 \
                    AND bi.id OPERATOR(pg_catalog.=) r.source_id \
               {alias_join} \
               {auth_join}), \
         k0 AS (SELECT m.*, CASE WHEN m.matched_id IS NOT NULL THEN 'u:' OPERATOR(pg_catalog.||) m.matched_id::text \
                                 WHEN m.email IS NOT NULL THEN 'e:' OPERATOR(pg_catalog.||) pg_catalog.lower(m.email) \
                            END COLLATE pg_catalog.\"C\" AS matched_cluster \
                FROM m), \
         k1 AS (SELECT k0.*, {home_matched} AS home_matched FROM k0), \
         k AS (SELECT k1.*, \
                      CASE WHEN k1.home IS NOT NULL AND NOT k1.home_matched THEN k1.alias_user \
                           ELSE k1.matched_id END AS target_id, \
                      CASE WHEN k1.home IS NOT NULL AND NOT k1.home_matched THEN k1.home \
                           ELSE k1.matched_cluster END AS cluster0 \
               FROM k1), \
         d AS (SELECT k.*, pg_catalog.first_value(k.cluster0) OVER \
                   (PARTITION BY k.source_id, k.precedence \
                    ORDER BY COALESCE(k.cluster0 OPERATOR(pg_catalog.=) k.home, false) DESC, k.cluster0 IS NULL, k.row_no) AS id_cluster \
               FROM k), \
         w AS (SELECT d.*, \
                 CASE WHEN d.unreadable IS NOT NULL \
                           THEN 'column ' OPERATOR(pg_catalog.||) d.unreadable OPERATOR(pg_catalog.||) \
                                ': JSON that jsonb cannot hold (\\u0000, a lone surrogate) or nested too deep' \
                      WHEN d.created_at IS NULL AND d.raw_created IS NOT NULL \
                           THEN 'column created_at: ' OPERATOR(pg_catalog.||) pg_catalog.quote_literal(pg_catalog.left(d.raw_created, 64)) \
                                OPERATOR(pg_catalog.||) ' is not a time' \
                      WHEN d.source_id IS NULL THEN 'the row has no id, or its id is not a uuid' \
                      WHEN d.cluster0 IS NULL AND d.precedence OPERATOR(pg_catalog.=) 3 THEN '{no_auth_reason}' \
                      WHEN d.cluster0 IS NULL AND d.raw_email IS NULL \
                           THEN 'no email address, and no user has this id' \
                      WHEN d.cluster0 IS NULL \
                           THEN 'the email address is not usable, and no user has this id' \
                      WHEN d.cluster0 OPERATOR(pg_catalog.<>) d.id_cluster \
                           THEN 'another row of this table with the same id belongs to another user' \
                 END AS reason \
               FROM d), \
         c AS (SELECT w.*, (w.reason IS NULL AND w.target_id IS NULL \
                    AND NOT EXISTS (SELECT FROM ident i WHERE i.id OPERATOR(pg_catalog.=) w.source_id)) AS may_claim \
               FROM w), \
         c2 AS (SELECT c.*, (c.may_claim AND pg_catalog.row_number() OVER \
                    (PARTITION BY c.source_id, c.may_claim ORDER BY c.row_no) OPERATOR(pg_catalog.=) 1) AS claims \
                FROM c), \
         c3 AS (SELECT c2.*, CASE WHEN c2.reason IS NULL THEN pg_catalog.first_value(CASE WHEN c2.claims THEN c2.source_id END) \
                    OVER (PARTITION BY c2.cluster0, (c2.reason IS NULL) ORDER BY c2.claims DESC, c2.row_no) END AS claimed, \
                    pg_catalog.count(*) FILTER (WHERE c2.reason IS NULL) OVER (ORDER BY c2.cluster0) AS upto, \
                    pg_catalog.count(*) FILTER (WHERE c2.reason IS NULL) OVER (PARTITION BY c2.cluster0) AS own \
                FROM c2) \
         INSERT INTO {schema}.nura_migration_rows (run_id, source_table, row_no, precedence, source_id, \
             created_at, email, cluster, target_id, planned_id, batch_no, reason, has_password, data{hash_column}) \
         SELECT $1, c3.source_table, c3.row_no, c3.precedence, c3.source_id, c3.created_at, c3.email, \
                CASE WHEN c3.reason IS NULL THEN c3.cluster0 END, c3.target_id, \
                CASE WHEN c3.reason IS NOT NULL THEN NULL \
                     WHEN c3.target_id IS NOT NULL THEN c3.target_id \
                     ELSE COALESCE(c3.claimed, pg_catalog.md5('nura_users:' OPERATOR(pg_catalog.||) c3.cluster0)::uuid) END, \
                CASE WHEN c3.reason IS NULL THEN ((c3.upto OPERATOR(pg_catalog.-) c3.own) OPERATOR(pg_catalog./) $2)::int END, \
                c3.reason, c3.has_password, r0.data{hash_value} \
         FROM c3 JOIN r0 ON r0.ord OPERATOR(pg_catalog.=) c3.ord"
    )
}

/// The plan's rows without a usable email that no user's id matched, whose id this run gives a
/// new user (see [`plan`]): they join that user's cluster and batch. Three scans of the work list
/// at the most (the candidates, then the rows near them), none of them when there is no candidate.
fn join_own_id_clusters(schema: &str, run_id: i64) {
    let reasons = "ARRAY['no email address, and no user has this id', \
                   'the email address is not usable, and no user has this id']";
    let candidates = plans::scalar::<i64>(
        &format!(
            "SELECT pg_catalog.count(*) FROM {schema}.nura_migration_rows r \
             WHERE r.run_id OPERATOR(pg_catalog.=) $1 AND r.precedence OPERATOR(pg_catalog.<) 3 \
               AND r.reason OPERATOR(pg_catalog.=) ANY ({reasons}) AND r.source_id IS NOT NULL"
        ),
        &[run_id.into()],
    )
    .or_raise("migration")
    .unwrap_or(0);
    if candidates == 0 {
        return;
    }
    // Not when the row's id in its own table went to someone else: that alias is theirs.
    plans::execute(
        &format!(
            "WITH cand AS MATERIALIZED (SELECT r.ctid AS tid, r.source_table, r.source_id \
                      FROM {schema}.nura_migration_rows r \
                      WHERE r.run_id OPERATOR(pg_catalog.=) $1 AND r.precedence OPERATOR(pg_catalog.<) 3 \
                        AND r.reason OPERATOR(pg_catalog.=) ANY ({reasons}) AND r.source_id IS NOT NULL), \
                  near AS MATERIALIZED (SELECT n.source_table, n.source_id, n.planned_id, n.target_id, \
                             n.cluster, n.batch_no \
                      FROM {schema}.nura_migration_rows n \
                      WHERE n.run_id OPERATOR(pg_catalog.=) $1 AND n.reason IS NULL \
                        AND (n.planned_id IN (SELECT c.source_id FROM cand c) \
                             OR n.source_id IN (SELECT c.source_id FROM cand c))), \
                  claim AS (SELECT DISTINCT ON (x.planned_id) x.planned_id, x.cluster, x.batch_no \
                      FROM near x WHERE x.target_id IS NULL ORDER BY x.planned_id, x.batch_no) \
             UPDATE {schema}.nura_migration_rows r \
             SET cluster = k.cluster, planned_id = k.planned_id, batch_no = k.batch_no, reason = NULL \
             FROM cand c JOIN claim k ON k.planned_id OPERATOR(pg_catalog.=) c.source_id \
             WHERE r.ctid OPERATOR(pg_catalog.=) c.tid \
               AND NOT EXISTS (SELECT FROM near o WHERE o.source_id OPERATOR(pg_catalog.=) c.source_id \
                   AND o.source_table OPERATOR(pg_catalog.=) c.source_table \
                   AND o.cluster OPERATOR(pg_catalog.<>) k.cluster)"
        ),
        &[run_id.into()],
    )
    .or_raise("migration");
}

/// The plan's totals into the report: rows, unplaceable rows and their passwords per table,
/// batches, ambiguous ids; and the `custom` service type when custom rows have extra columns.
fn count_plan(core: &Core, run: &Run, report: &mut Report) {
    let schema = &core.schema;
    let counts = plans::rows(
        &format!(
            "SELECT s.source_table, pg_catalog.count(*), \
                    pg_catalog.count(*) FILTER (WHERE s.reason IS NOT NULL), \
                    pg_catalog.count(*) FILTER (WHERE s.reason IS NOT NULL AND s.has_password), \
                    pg_catalog.max(s.batch_no), \
                    pg_catalog.count(*) FILTER (WHERE s.reason IS NULL AND s.precedence OPERATOR(pg_catalog.=) 3 \
                        AND pg_catalog.jsonb_strip_nulls(s.data OPERATOR(pg_catalog.-) '{{user_id,full_name,current_streak,xp}}'::text[]) \
                            OPERATOR(pg_catalog.<>) '{{}}'::jsonb) \
             FROM {schema}.nura_migration_rows s WHERE s.run_id OPERATOR(pg_catalog.=) $1 \
             GROUP BY s.source_table"
        ),
        &[run.id.into()],
        |r| {
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<i64>(2)?.unwrap_or(0),
                r.get::<i64>(3)?.unwrap_or(0),
                r.get::<i64>(4)?.unwrap_or(0),
                r.get::<i32>(5)?,
                r.get::<i64>(6)?.unwrap_or(0),
            ))
        },
    )
    .or_raise("migration");
    let mut max_batch: Option<i32> = None;
    let mut custom_extras = 0;
    for (table, rows, unmigratable, passwords, batch, extras) in counts {
        let entry = report.sources.entry(table).or_default();
        entry.rows = rows;
        entry.unmigratable = unmigratable;
        report.rows_total += rows - unmigratable;
        report.legacy_passwords_without_auth += passwords;
        max_batch = max_batch.max(batch);
        custom_extras += extras;
    }
    report.batches_total = max_batch.map_or(0, |b| b as i64 + 1);
    report.ambiguous_ids = ambiguous_ids(schema, run.id);
    // Extra columns of custom_users live in a profile of their own service type.
    if custom_extras > 0 && !run.dry_run {
        plans::execute(
            &format!(
                "INSERT INTO {schema}.user_service_types (service_type, default_preferences, auto_create) \
                 VALUES ('custom', '{{}}'::jsonb, false) ON CONFLICT (service_type) DO NOTHING"
            ),
            &[],
        )
        .or_raise("migration");
    }
}

/// How many legacy ids two tables used for two different people (see `Report::ambiguous_ids`).
fn ambiguous_ids(schema: &str, run_id: i64) -> i64 {
    plans::read_scalar::<i64>(
        &format!(
            "SELECT pg_catalog.count(*) FROM (SELECT s.source_id FROM {schema}.nura_migration_rows s \
                 WHERE s.run_id OPERATOR(pg_catalog.=) $1 AND s.reason IS NULL \
                 GROUP BY s.source_id \
                 HAVING pg_catalog.count(DISTINCT s.source_table) OPERATOR(pg_catalog.>) 1 \
                    AND pg_catalog.count(DISTINCT s.cluster) OPERATOR(pg_catalog.>) 1) x"
        ),
        &[run_id.into()],
    )
    .or_raise("migration")
    .unwrap_or(0)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    /// The plan reads a column as it is only for the types it may: a uuid id; a timestamptz or
    /// timestamp created_at. A domain over uuid, text, a missing column and a column dropped and
    /// added again with another type go through the row's JSON.
    #[pg_test]
    fn typed_columns_knows_which_columns_it_may_read_as_they_are() {
        Spi::run(
            "CREATE SCHEMA tc; CREATE DOMAIN tc.uid AS uuid; \
             CREATE TABLE tc.chat_users (id uuid, created_at timestamptz); \
             CREATE TABLE tc.voice_users (id tc.uid, created_at timestamp); \
             CREATE TABLE tc.custom_users (user_id text)",
        )
        .unwrap();
        let typed = |table| {
            let found = typed_columns("tc", table);
            (found.id, found.created_at)
        };
        assert_eq!(typed(Table::Chat), (true, true));
        assert_eq!(typed(Table::Voice), (false, true));
        assert_eq!(typed(Table::Custom), (false, false));
        // Unique ids: only with a unique index of the uuid column alone, valid, not partial.
        let unique = |table| typed_columns("tc", table).id_unique;
        assert!(!unique(Table::Chat));
        Spi::run("CREATE UNIQUE INDEX tc_chat_some ON tc.chat_users (id) WHERE created_at IS NULL")
            .unwrap();
        assert!(!unique(Table::Chat));
        Spi::run("CREATE UNIQUE INDEX tc_chat_two ON tc.chat_users (id, created_at)").unwrap();
        assert!(!unique(Table::Chat));
        Spi::run("ALTER TABLE tc.chat_users ADD PRIMARY KEY (id)").unwrap();
        assert!(unique(Table::Chat));
        Spi::run("CREATE UNIQUE INDEX tc_voice_id ON tc.voice_users (id)").unwrap();
        assert!(
            !unique(Table::Voice),
            "a domain over uuid is read through the JSON"
        );
        Spi::run("ALTER TABLE tc.chat_users DROP COLUMN id, ADD COLUMN id text").unwrap();
        assert_eq!(typed(Table::Chat), (false, true));
        assert!(!typed_columns("no_such_schema", Table::Chat).id);
    }

    /// The plan's per-row work staged in a temporary table (parallel workers) and computed inline
    /// give the same plan, and so do a dry run and the real run; rows that nothing else orders
    /// (one id twice in a table without a primary key, with one created_at) are ordered by their
    /// content, not by where they lie — also when they differ only in a number's scale.
    #[pg_test]
    fn staged_and_inline_plans_agree_whatever_the_row_order() {
        // Workers even for these small tables (the staging statement sets the costs to 0).
        Spi::run(
            "SET LOCAL min_parallel_table_scan_size = 0; \
             SET LOCAL max_parallel_workers_per_gather = 2",
        )
        .unwrap();
        let load = |order: &str| {
            Spi::run(&format!(
                "DROP SCHEMA IF EXISTS tie CASCADE; CREATE SCHEMA tie; \
                 CREATE TABLE tie.chat_users (id uuid, email text, full_name text, \
                     phone_number text, password_hash text, privacy_settings json, \
                     notification_prefs json, is_active boolean, created_at timestamptz, theme text); \
                 CREATE TABLE tie.voice_users (id uuid, name text, email text, phone text, \
                     password_hash text, created_at timestamptz, voice_id text); \
                 CREATE TABLE tie.custom_users (user_id uuid, full_name text, \
                     current_streak integer, xp integer, badge text); \
                 INSERT INTO tie.chat_users (id, email, full_name, privacy_settings, created_at, theme) \
                 SELECT id, email, full_name, privacy_settings::json, timestamptz '2024-01-01', theme \
                 FROM (SELECT i, md5('tie' || (i / 2))::uuid AS id, \
                              CASE WHEN i % 6 < 2 THEN 'a' || i ELSE 'p' || (i / 2) END \
                                  || '@example.com' AS email, \
                              'Name ' || i AS full_name, NULL AS privacy_settings, 'theme ' || i AS theme \
                       FROM generate_series(0, 59) i \
                       UNION ALL \
                       SELECT 100 + i, md5('num' || (i / 2))::uuid, 'n' || (i / 2) || '@example.com', \
                              'Same Name', CASE WHEN i % 2 = 0 THEN '{{\"x\": 1}}' \
                                                ELSE '{{\"x\": 1.0}}' END, 'same theme' \
                       FROM generate_series(0, 9) i) r \
                 ORDER BY i {order}; \
                 INSERT INTO tie.voice_users (id, name, email, created_at, voice_id) \
                 SELECT md5('voice' || i)::uuid, 'Voice ' || i, 'P' || i || '@Example.com ', \
                        timestamptz '2023-06-01' + i * interval '1 day', 'v' || i \
                 FROM generate_series(0, 19) i ORDER BY i {order}; \
                 INSERT INTO tie.custom_users (user_id, full_name, xp) \
                 SELECT md5('custom' || i)::uuid, 'Custom ' || i, i FROM generate_series(0, 4) i \
                 ORDER BY i {order}"
            ))
            .unwrap();
        };
        let outcome = |dry_run: bool, inline: bool| -> String {
            FORCE_INLINE_R0.set(inline);
            let report = Spi::get_one_with_args::<pgrx::JsonB>(
                "SELECT nura_migrate_legacy($1, 7, 'tie') \
                     - '{run_id,dry_run,plan_seconds,apply_seconds}'::text[]",
                &[dry_run.into()],
            )
            .unwrap()
            .unwrap();
            FORCE_INLINE_R0.set(false);
            let issues = Spi::get_one::<String>(
                "SELECT string_agg(concat_ws(' | ', source_table, source_id, kind, field, user_id, \
                     kept_value, dropped_value, reason), E'\\n' \
                     ORDER BY source_table, source_id, kind, field, dropped_value::text) \
                 FROM nura_migration_issues \
                 WHERE run_id = (SELECT max(id) FROM nura_migration_runs)",
            )
            .unwrap()
            .unwrap_or_default();
            format!("{}\n{issues}", report.0)
        };
        load("ASC");
        let expected = outcome(true, false);
        // Ten ids with two people each are unmigratable once; twenty pairs of one person keep
        // one row's extra columns and record the other's as a conflict; five pairs differ only
        // in 1 against 1.0; custom rows without auth.users are unmigratable.
        assert_eq!(
            expected.matches("belongs to another user").count(),
            10,
            "{expected}"
        );
        assert_eq!(
            expected.matches("| conflict | legacy_columns |").count(),
            20,
            "{expected}"
        );
        assert_eq!(
            expected.matches("| conflict | privacy_settings |").count(),
            5,
            "{expected}"
        );
        assert_eq!(expected.matches("custom_users |").count(), 5, "{expected}");
        assert_eq!(outcome(true, true), expected);
        load("DESC");
        assert_eq!(outcome(true, false), expected);
        assert_eq!(outcome(true, true), expected);
        // The real run plans and merges as its dry run did.
        assert_eq!(outcome(false, false), expected);
        // The staging table is gone with the plan.
        assert_eq!(
            Spi::get_one::<bool>("SELECT to_regclass('pg_temp.nura_migration_plan_rows') IS NULL")
                .unwrap(),
            Some(true)
        );
    }
}
