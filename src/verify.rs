//! `nura_verify_migration` (`docs/migration.md`): every legacy row, read again from its table, is
//! either reachable through `user_id_aliases` with every value equal to its source (or a recorded
//! conflict), or an `unmigratable` issue holding the row. It does not read the migration's work
//! tables, and it compares with its own SQL normalizations, not with the migration's Rust code.

use crate::errors::raise;
use crate::errors::OrRaise;
use crate::jsonb::JsonB;
use crate::migration::Table;
use crate::schema::extension_schema;
use pgrx::prelude::*;
use serde_json::{json, Value};

/// The checks of one `users` field: (field, legacy column, SQL for "the source has a value that
/// differs from the user's", given the source value `v` and the user `u`).
fn field_checks(schema: &str, table: Table) -> Vec<(&'static str, String)> {
    // The migration's own readings of a cell (sql functions over its Rust code): verify checks
    // its placement, not its normalisation. (A catalog not yet updated to 0.6.0 lacks them:
    // then as 0.5.0 compared.)
    let shared = crate::schema::has_function(schema, "nura_legacy_text(text)");
    let text = |col: &str| {
        if shared {
            format!("{schema}.nura_legacy_text(r.j OPERATOR(pg_catalog.->>) '{col}')")
        } else {
            format!("NULLIF(pg_catalog.btrim(r.j OPERATOR(pg_catalog.->>) '{col}'), '')")
        }
    };
    let mut checks = Vec::new();
    if table != Table::Custom {
        checks.push((
            "email",
            format!(
                "{e} IS NOT NULL AND pg_catalog.lower({e}) IS DISTINCT FROM pg_catalog.lower(u.email)",
                e = text("email")
            ),
        ));
    }
    let name_col = if table == Table::Voice {
        "name"
    } else {
        "full_name"
    };
    checks.push((
        "full_name",
        format!(
            "{v} IS NOT NULL AND {v} IS DISTINCT FROM u.full_name",
            v = text(name_col)
        ),
    ));
    if table != Table::Custom {
        let phone_col = if table == Table::Voice {
            "phone"
        } else {
            "phone_number"
        };
        let digits = if shared {
            format!("{schema}.nura_legacy_phone(r.j OPERATOR(pg_catalog.->>) '{phone_col}')")
        } else {
            format!(
                "NULLIF(pg_catalog.regexp_replace(pg_catalog.regexp_replace(\
                     COALESCE(r.j OPERATOR(pg_catalog.->>) '{phone_col}', ''), '[[:space:]().-]', '', 'g'), \
                     '^[+]', ''), '')"
            )
        };
        checks.push((
            "phone_number",
            format!("{digits} IS NOT NULL AND {digits} IS DISTINCT FROM u.phone_number"),
        ));
    }
    if table == Table::Chat {
        checks.push((
            "is_active",
            "(r.j OPERATOR(pg_catalog.->) 'is_active') OPERATOR(pg_catalog.=) 'false'::jsonb \
             AND u.is_active"
                .to_string(),
        ));
        for (field, col, target) in [
            ("privacy_settings", "privacy_settings", "u.privacy_settings"),
            (
                "notification_prefs",
                "notification_prefs",
                "p.service_preferences",
            ),
        ] {
            checks.push((
                field,
                format!(
                    "COALESCE(r.j OPERATOR(pg_catalog.->) '{col}', 'null'::jsonb) \
                         OPERATOR(pg_catalog.<>) ALL ('{{\"null\",\"{{}}\"}}'::jsonb[]) \
                     AND (r.j OPERATOR(pg_catalog.->) '{col}') IS DISTINCT FROM {target}"
                ),
            ));
        }
    }
    if table == Table::Custom {
        for col in ["current_streak", "xp"] {
            checks.push((
                col,
                format!(
                    "COALESCE(r.j OPERATOR(pg_catalog.->) '{col}', 'null'::jsonb) \
                         OPERATOR(pg_catalog.<>) ALL ('{{\"null\",0}}'::jsonb[]) \
                     AND (r.j OPERATOR(pg_catalog.->) '{col}') IS DISTINCT FROM pg_catalog.to_jsonb(u.{col})"
                ),
            ));
        }
    }
    checks
}

/// One row per row of the legacy table: its id, whether it is an `unmigratable` issue, the user
/// its alias leads to, and the fields that differ from its source without a recorded conflict.
/// `$1` holds the ids of the runs that count (neither dry runs nor rolled back).
///
/// No CTE: a CTE referenced twice is written to a tuple store, every joined row of it (that cost
/// half of verify's time), and a CTE keeps the rest of the statement out of parallel workers. The
/// two `OFFSET 0` subqueries keep the row's JSON, id and extra columns computed once per row;
/// flattened, every reference would compute them again.
fn rows_sql(schema: &str, legacy: &str, table: Table, id_is_uuid: bool, row_json: &str) -> String {
    let name = table.name();
    let service = table.service();
    let homed = format!("'{{{}}}'::text[]", table.homed_columns().join(","));
    let checks = field_checks(schema, table);
    let mismatch_exprs = checks
        .iter()
        .map(|(field, cond)| {
            format!(
                "CASE WHEN ({cond}) AND NOT ('{field}' OPERATOR(pg_catalog.=) ANY ({EXCUSED})) \
                 THEN '{field}' END"
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let idcol = table.id_column();
    // The row's id as a uuid: the column itself when it is one (see
    // migration::plan::typed_columns).
    let (typed_id, lid) = if id_is_uuid {
        (
            format!(", t.{}", pgrx::spi::quote_identifier(idcol)),
            "r0.tid".to_string(),
        )
    } else {
        (
            ", NULL::uuid".to_string(),
            crate::migration::legacy_uuid_sql(
                schema,
                &format!("r0.j OPERATOR(pg_catalog.->>) '{idcol}'"),
            ),
        )
    };
    format!(
        "SELECT r.j OPERATOR(pg_catalog.->>) '{idcol}' AS lid, \
                (um.dropped_value IS NOT NULL) AS unmigratable, u.id AS uid, \
                pg_catalog.array_remove(ARRAY[{mismatch_exprs}, \
                      CASE WHEN r.extras OPERATOR(pg_catalog.<>) '{{}}'::jsonb \
                            AND (p.service_metadata OPERATOR(pg_catalog.->) 'legacy' \
                                 OPERATOR(pg_catalog.->) (r.lid::text)) \
                                IS DISTINCT FROM r.extras \
                            AND NOT ('legacy_columns' OPERATOR(pg_catalog.=) ANY ({EXCUSED})) \
                           THEN 'legacy_columns' END], NULL) AS fields \
         FROM (SELECT r0.j, {lid} AS lid, \
                      (SELECT COALESCE(pg_catalog.jsonb_object_agg(e.key, e.value), '{{}}'::jsonb) \
                       FROM pg_catalog.jsonb_each(r0.j OPERATOR(pg_catalog.-) {homed}) e \
                       WHERE e.value OPERATOR(pg_catalog.<>) 'null'::jsonb) AS extras \
               FROM (SELECT {row_json} OPERATOR(pg_catalog.-) 'password_hash' AS j{typed_id} AS tid \
                     FROM {legacy}.{name} t OFFSET 0) r0 \
               OFFSET 0) r \
         LEFT JOIN (SELECT DISTINCT i.dropped_value FROM {schema}.nura_migration_issues i \
                    WHERE i.kind OPERATOR(pg_catalog.=) 'unmigratable' \
                      AND i.source_table OPERATOR(pg_catalog.=) '{name}' \
                      AND i.run_id OPERATOR(pg_catalog.=) ANY ($1)) um \
              ON um.dropped_value OPERATOR(pg_catalog.=) r.j \
         LEFT JOIN {schema}.user_id_aliases a ON um.dropped_value IS NULL \
              AND a.source OPERATOR(pg_catalog.=) '{name}' \
              AND a.alias_id OPERATOR(pg_catalog.=) r.lid \
         LEFT JOIN {schema}.users u ON u.id OPERATOR(pg_catalog.=) a.user_id \
         LEFT JOIN {schema}.user_service_profiles p ON p.user_id OPERATOR(pg_catalog.=) u.id \
              AND p.service_type OPERATOR(pg_catalog.=) '{service}' \
         LEFT JOIN (SELECT i.source_id, pg_catalog.array_agg(DISTINCT i.field) AS fields \
                    FROM {schema}.nura_migration_issues i \
                    WHERE i.kind OPERATOR(pg_catalog.=) 'conflict' \
                      AND i.source_table OPERATOR(pg_catalog.=) '{name}' \
                      AND i.run_id OPERATOR(pg_catalog.=) ANY ($1) \
                    GROUP BY i.source_id) cf \
              ON cf.source_id OPERATOR(pg_catalog.=) r.lid::text \
         LEFT JOIN (SELECT i.run_id, i.source_id, pg_catalog.array_agg(DISTINCT i.field) AS fields \
                    FROM {schema}.nura_migration_issues i \
                    WHERE i.kind OPERATOR(pg_catalog.=) 'conflict' \
                      AND i.source_table OPERATOR(pg_catalog.=) '{name}' \
                    GROUP BY i.run_id, i.source_id) pf \
              ON pf.run_id OPERATOR(pg_catalog.=) a.run_id \
             AND pf.source_id OPERATOR(pg_catalog.=) r.lid::text"
    )
}

/// The fields of a row whose differences are recorded conflicts: those of the runs that count
/// (`cf`), and those of the run whose alias places the row (`pf`), even if that run was rolled
/// back since (a rollback keeps the aliases of users that auth backs, and a later run then
/// counts the row as already migrated, recording nothing again).
const EXCUSED: &str =
    "COALESCE(cf.fields, '{}'::text[]) OPERATOR(pg_catalog.||) COALESCE(pf.fields, '{}'::text[])";

/// A row of `rows_sql` that is neither an issue nor reachable through an alias.
const MISSING: &str = "NOT y.unmigratable AND y.uid IS NULL";
/// A row of `rows_sql` that is migrated with fields that differ.
const MISMATCHED: &str = "y.uid IS NOT NULL AND y.fields OPERATOR(pg_catalog.<>) '{}'";

/// Counts for one legacy table: (rows, accounted, missing, mismatched, up to 20 problems).
///
/// Whether the legacy table's id column is of type `uuid`: then its rows' ids are read as they are,
/// else from the row's JSON (the same values, see migration::plan::typed_columns). A catalog query
/// of verify's own, not the migration's: verify checks the migration.
fn id_is_uuid(legacy: &str, table: Table) -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_attribute a \
         WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(pg_catalog.format('%I.%I', $1, $2)) \
           AND a.attname OPERATOR(pg_catalog.=) $3::name AND NOT a.attisdropped \
           AND a.atttypid OPERATOR(pg_catalog.=) 'pg_catalog.uuid'::pg_catalog.regtype)",
        &[legacy.into(), table.name().into(), table.id_column().into()],
    )
    .or_raise("reading the type of a legacy id column")
    .unwrap_or(false)
}

/// The counts come from one aggregate over every row. It is read with no row limit: PostgreSQL
/// starts parallel workers only for a statement run to its end (it hashes the users side of the
/// join in them). The problems are listed by a second statement, run only when there are any.
fn verify_table(
    schema: &str,
    legacy: &str,
    table: Table,
    runs: &[i64],
) -> (i64, i64, i64, i64, Value) {
    let name = table.name();
    // The row's JSON as the plan read it (json cells jsonb refuses included).
    let row_json =
        crate::migration::row_json_sql(schema, &crate::migration::json_columns(legacy, table), "t");
    let rows = rows_sql(
        schema,
        &pgrx::spi::quote_identifier(legacy),
        table,
        id_is_uuid(legacy, table),
        &row_json,
    );
    let failed = |e: pgrx::spi::Error| -> ! { error!("nura_users: verifying {name} failed: {e}") };
    let (total, accounted, missing, mismatched) = Spi::connect(|client| {
        let row = client
            .select(
                &format!(
                    "SELECT pg_catalog.count(*), \
                            pg_catalog.count(*) FILTER (WHERE y.unmigratable OR y.uid IS NOT NULL), \
                            pg_catalog.count(*) FILTER (WHERE {MISSING}), \
                            pg_catalog.count(*) FILTER (WHERE {MISMATCHED}) \
                     FROM ({rows}) y"
                ),
                None,
                &[runs.to_vec().into()],
            )?
            .first();
        Ok::<_, pgrx::spi::Error>((
            row.get::<i64>(1)?.unwrap_or(0),
            row.get::<i64>(2)?.unwrap_or(0),
            row.get::<i64>(3)?.unwrap_or(0),
            row.get::<i64>(4)?.unwrap_or(0),
        ))
    })
    .unwrap_or_else(|e| failed(e));
    let sample = if missing + mismatched == 0 {
        json!([])
    } else {
        Spi::connect(|client| {
            let row = client
                .select(
                    &format!(
                        "SELECT COALESCE(pg_catalog.jsonb_agg(q.s), '[]'::jsonb) FROM ( \
                             SELECT pg_catalog.jsonb_build_object('table', '{name}', 'id', y.lid, \
                                    'problem', CASE WHEN y.uid IS NULL THEN 'missing' ELSE 'mismatched' END, \
                                    'fields', CASE WHEN y.uid IS NULL THEN '[]'::jsonb \
                                                   ELSE pg_catalog.to_jsonb(y.fields) END) AS s \
                             FROM ({rows}) y WHERE ({MISSING}) OR ({MISMATCHED}) LIMIT 20) q"
                    ),
                    None,
                    &[runs.to_vec().into()],
                )?
                .first();
            Ok::<_, pgrx::spi::Error>(row.get::<JsonB>(1)?.map_or(json!([]), |j| j.0))
        })
        .unwrap_or_else(|e| failed(e))
    };
    (total, accounted, missing, mismatched, sample)
}

/// `docs/migration.md`: `{rows_checked, accounted, missing, mismatched, ok}` over the legacy tables
/// of run `run_id` (default: the latest run that was not a dry run nor rolled back), with per-table
/// counts and up to 20 problems per table.
#[pg_extern(stable, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn nura_verify_migration(run_id: default!(Option<i64>, "NULL")) -> JsonB {
    let schema = extension_schema();
    let found = Spi::connect(|client| {
        let sql = format!(
            "SELECT id, legacy_schema, dry_run, status FROM {schema}.nura_migration_runs \
             WHERE ($1::bigint IS NULL AND NOT dry_run AND status OPERATOR(pg_catalog.<>) 'rolled_back') \
                OR id OPERATOR(pg_catalog.=) $1 \
             ORDER BY id DESC LIMIT 1"
        );
        let rows = client.select(&sql, Some(1), &[run_id.into()])?;
        let mut out = None;
        for row in rows {
            out = Some((
                row.get::<i64>(1)?.unwrap_or(0),
                row.get::<String>(2)?.unwrap_or_default(),
                row.get::<bool>(3)?.unwrap_or(false),
                row.get::<String>(4)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_raise("reading migration runs");
    let Some((id, legacy, dry_run, status)) = found else {
        raise(
            PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            match run_id {
                Some(r) => format!("migration run {r} does not exist"),
                None => "no migration run to verify".to_string(),
            },
            None,
        );
    };
    let present: Vec<Table> = Table::ALL
        .into_iter()
        .filter(|t| {
            Spi::get_one_with_args::<bool>(
                "SELECT pg_catalog.to_regclass(pg_catalog.format('%I.%I', $1, $2)) IS NOT NULL",
                &[legacy.as_str().into(), t.name().into()],
            )
            .or_raise("looking for a legacy table")
            .unwrap_or(false)
        })
        .collect();
    // Issues of every run that counts: a row placed by an earlier run is accounted for there.
    let runs: Vec<i64> = Spi::get_one::<Vec<i64>>(&format!(
        "SELECT COALESCE(pg_catalog.array_agg(r.id), '{{}}') FROM {schema}.nura_migration_runs r \
         WHERE NOT r.dry_run AND r.status OPERATOR(pg_catalog.<>) 'rolled_back'"
    ))
    .or_raise("reading migration runs")
    .unwrap_or_default();
    let (mut rows, mut accounted, mut missing, mut mismatched) = (0, 0, 0, 0);
    let mut tables = serde_json::Map::new();
    let mut problems = Vec::new();
    // The counting statements read every legacy row joined to users, profiles, aliases and
    // issues: worth parallel workers, which PostgreSQL's default costs do not give a scan of
    // the legacy table. The costs are lowered for these
    // statements only; max_parallel_workers_per_gather still decides whether and how many.
    let per_table: Vec<_> =
        crate::settings::with_settings(&crate::settings::PARALLEL_SCANS, || {
            present
                .iter()
                .map(|&table| (table, verify_table(&schema, &legacy, table, &runs)))
                .collect()
        });
    for (table, (r, a, m, mm, sample)) in per_table {
        rows += r;
        accounted += a;
        missing += m;
        mismatched += mm;
        tables.insert(
            table.name().to_string(),
            json!({"rows_checked": r, "accounted": a, "missing": m, "mismatched": mm}),
        );
        if let Value::Array(items) = sample {
            problems.extend(items);
        }
    }
    JsonB(json!({
        "run_id": id,
        "legacy_schema": legacy,
        "rows_checked": rows,
        "accounted": accounted,
        "missing": missing,
        "mismatched": mismatched,
        "ok": missing == 0 && mismatched == 0 && !dry_run && status != "rolled_back",
        "tables": tables,
        "problems": problems,
    }))
}
