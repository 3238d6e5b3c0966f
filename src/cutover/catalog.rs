//! Discovery for the cutover (the design's §6.1 and §12): the legacy tables as the catalog has
//! them, the foreign keys to them, the tables that hold references with their keys and
//! partitions, and what else depends on a legacy table (views, rules, triggers, policies,
//! grants, indexes, constraints, publications, functions, uses of its row type).
//!
//! Every query reads `pg_catalog` only, with names qualified and the caller's values as SPI
//! arguments, and answers with one `jsonb` value that serde reads into the structs below: the
//! shapes live here once, not in column positions. Queries run read-only (no transaction id) and
//! are not kept as plans: the plan is run now and then, and its data queries name product tables.

use super::or_raise;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Run a read-only `sql` whose one row and column is `jsonb`, and read that into `T` (a NULL is
/// JSON `null`).
pub(super) fn read<T: DeserializeOwned>(sql: &str, args: &[DatumWithOid<'_>]) -> T {
    let value = or_raise(Spi::connect(|client| {
        client
            .select(sql, Some(1), args)?
            .first()
            .get_one::<crate::jsonb::JsonB>()
    }));
    or_raise(serde_json::from_value(
        value.map_or(serde_json::Value::Null, |j| j.0),
    ))
}

/// The first column of the one row of a read-only `sql` (the plan's counts).
pub(super) fn scalar<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid<'_>]) -> Option<T> {
    or_raise(Spi::connect(|client| {
        client.select(sql, Some(1), args)?.first().get_one::<T>()
    }))
}

/// SQL for "the type `oid` is `uuid`, or a domain over it".
fn is_uuid(oid: &str) -> String {
    format!(
        "(SELECT COALESCE(NULLIF(t.typbasetype, 0), t.oid) OPERATOR(pg_catalog.=) \
                 'pg_catalog.uuid'::pg_catalog.regtype::pg_catalog.oid \
          FROM pg_catalog.pg_type t WHERE t.oid OPERATOR(pg_catalog.=) {oid})"
    )
}

/// The schema name shown for a relation: `pg_temp` for this session's temporary schema (its real
/// name differs from session to session).
const SHOWN_SCHEMA: &str = "CASE WHEN n.oid OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema() \
                            THEN 'pg_temp' ELSE n.nspname::text END";

pub(super) fn namespace_oid(name: &str) -> Option<pg_sys::Oid> {
    read::<Option<u32>>(
        "SELECT pg_catalog.to_jsonb((SELECT n.oid::pg_catalog.int8 FROM pg_catalog.pg_namespace n \
                                     WHERE n.nspname OPERATOR(pg_catalog.=) $1))",
        &[name.into()],
    )
    .map(pg_sys::Oid::from)
}

/// A relation's oid and `relkind`, by schema and name (`pg_temp`: this session's temporary
/// schema).
pub(super) fn relation(schema: &str, name: &str) -> Option<(pg_sys::Oid, String)> {
    read::<Option<(u32, String)>>(
        "SELECT (SELECT pg_catalog.jsonb_build_array(c.oid::pg_catalog.int8, c.relkind::text) \
                 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
                 WHERE c.relname OPERATOR(pg_catalog.=) $2 \
                   AND (n.nspname OPERATOR(pg_catalog.=) $1 \
                        OR ($1 OPERATOR(pg_catalog.=) 'pg_temp' \
                            AND n.oid OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema())))",
        &[schema.into(), name.into()],
    )
    .map(|(oid, kind)| (pg_sys::Oid::from(oid), kind))
}

pub(super) fn has_column(table: pg_sys::Oid, column: &str) -> bool {
    read::<bool>(
        "SELECT pg_catalog.to_jsonb(EXISTS (SELECT FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attname OPERATOR(pg_catalog.=) $2 \
               AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped))",
        &[table.into(), column.into()],
    )
}

/// The name of a foreign key from `table` to `referenced` that holds `column`, if any.
pub(super) fn key_on_column(
    table: pg_sys::Oid,
    column: &str,
    referenced: pg_sys::Oid,
) -> Option<String> {
    read::<Option<String>>(
        "SELECT pg_catalog.to_jsonb((SELECT co.conname::text FROM pg_catalog.pg_constraint co \
             JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) co.conrelid \
              AND a.attnum OPERATOR(pg_catalog.=) ANY (co.conkey) \
             WHERE co.contype OPERATOR(pg_catalog.=) 'f' AND co.conrelid OPERATOR(pg_catalog.=) $1 \
               AND co.confrelid OPERATOR(pg_catalog.=) $3 AND a.attname OPERATOR(pg_catalog.=) $2 \
             ORDER BY 1 LIMIT 1))",
        &[table.into(), column.into(), referenced.into()],
    )
}

/// A legacy table as the catalog has it.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct LegacyRelation {
    pub(super) oid: u32,
    pub(super) relkind: String,
    pub(super) is_partition: bool,
    /// It inherits from another table.
    pub(super) inherits: bool,
    /// Another table inherits from it.
    pub(super) inherited: bool,
    /// Its id column (`id`, or `user_id` for `custom_users`), if it has one.
    pub(super) id: Option<IdColumn>,
    /// A valid, immediate unique index on the id column alone (a primary key or a unique
    /// constraint, or an index that a foreign key may reference as well).
    pub(super) id_unique: bool,
    /// `nura_legacy.<name>` exists: the switch's place for the kept table is taken.
    pub(super) kept_name_taken: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct IdColumn {
    pub(super) type_name: String,
    pub(super) is_uuid: bool,
}

impl LegacyRelation {
    pub(super) fn oid(&self) -> pg_sys::Oid {
        pg_sys::Oid::from(self.oid)
    }
}

/// Legacy table `name` with id column `id` in schema `schema`, if it exists.
pub(super) fn legacy_relation(schema: pg_sys::Oid, name: &str, id: &str) -> Option<LegacyRelation> {
    read(
        &format!(
            "SELECT (SELECT pg_catalog.jsonb_build_object( \
                 'oid', c.oid::pg_catalog.int8, 'relkind', c.relkind::text, \
                 'is_partition', c.relispartition, \
                 'inherits', EXISTS (SELECT FROM pg_catalog.pg_inherits i \
                                     WHERE i.inhrelid OPERATOR(pg_catalog.=) c.oid), \
                 'inherited', EXISTS (SELECT FROM pg_catalog.pg_inherits i \
                                      WHERE i.inhparent OPERATOR(pg_catalog.=) c.oid), \
                 'id', (SELECT pg_catalog.jsonb_build_object( \
                            'type_name', pg_catalog.format_type(a.atttypid, a.atttypmod), \
                            'is_uuid', {uuid}) \
                        FROM pg_catalog.pg_attribute a \
                        WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid \
                          AND a.attname OPERATOR(pg_catalog.=) $3 \
                          AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped), \
                 'id_unique', EXISTS (SELECT FROM pg_catalog.pg_index i \
                     JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid \
                      AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0] \
                     WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid AND i.indisunique \
                       AND i.indisvalid AND i.indimmediate AND i.indpred IS NULL \
                       AND i.indexprs IS NULL AND i.indnkeyatts OPERATOR(pg_catalog.=) 1 \
                       AND a.attname OPERATOR(pg_catalog.=) $3), \
                 'kept_name_taken', EXISTS (SELECT FROM pg_catalog.pg_class k \
                     JOIN pg_catalog.pg_namespace kn ON kn.oid OPERATOR(pg_catalog.=) k.relnamespace \
                     WHERE kn.nspname OPERATOR(pg_catalog.=) 'nura_legacy' \
                       AND k.relname OPERATOR(pg_catalog.=) $2)) \
             FROM pg_catalog.pg_class c \
             WHERE c.relnamespace OPERATOR(pg_catalog.=) $1 AND c.relname OPERATOR(pg_catalog.=) $2)",
            uuid = is_uuid("a.atttypid")
        ),
        &[schema.into(), name.into(), id.into()],
    )
}

/// A foreign key whose referenced table is a legacy table (its clones on partitions left out:
/// the parent's key stands for them).
#[derive(Debug, Clone, Deserialize)]
pub(super) struct ForeignKey {
    pub(super) name: String,
    /// `pg_get_constraintdef`, rendered under the plan's pinned `search_path`, so that it names
    /// the legacy table with its schema and can be executed as it is.
    pub(super) definition: String,
    /// The referencing table.
    pub(super) table: u32,
    pub(super) columns: Vec<String>,
    /// The columns of the legacy table it references.
    pub(super) referenced: Vec<String>,
    /// `confdeltype`: a, r, c, n or d.
    pub(super) on_delete: String,
}

pub(super) fn foreign_keys_to(legacy: pg_sys::Oid) -> Vec<ForeignKey> {
    read(
        "SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object( \
                 'name', co.conname::text, 'definition', pg_catalog.pg_get_constraintdef(co.oid), \
                 'table', co.conrelid::pg_catalog.int8, 'on_delete', co.confdeltype::text, \
                 'columns', ARRAY(SELECT a.attname::text \
                     FROM pg_catalog.unnest(co.conkey) WITH ORDINALITY k(attnum, pos) \
                     JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) co.conrelid \
                      AND a.attnum OPERATOR(pg_catalog.=) k.attnum ORDER BY k.pos), \
                 'referenced', ARRAY(SELECT a.attname::text \
                     FROM pg_catalog.unnest(co.confkey) WITH ORDINALITY k(attnum, pos) \
                     JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) co.confrelid \
                      AND a.attnum OPERATOR(pg_catalog.=) k.attnum ORDER BY k.pos)) \
               ORDER BY co.conname), '[]'::pg_catalog.jsonb) \
         FROM pg_catalog.pg_constraint co \
         WHERE co.contype OPERATOR(pg_catalog.=) 'f' AND co.confrelid OPERATOR(pg_catalog.=) $1 \
           AND co.conparentid OPERATOR(pg_catalog.=) 0",
        &[legacy.into()],
    )
}

/// A table that holds a reference, with what the plan checks of it.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct ReferencingTable {
    pub(super) oid: u32,
    pub(super) schema: String,
    pub(super) name: String,
    pub(super) relkind: String,
    /// `own` or `other` for a temporary table of this or another session.
    pub(super) temporary: Option<String>,
    pub(super) columns: Vec<ColumnType>,
    /// The partition keys of it and of every partitioned table below it.
    pub(super) partition_keys: Vec<PartitionKey>,
    /// Its unique indexes (not partial, not on expressions), the primary key among them.
    pub(super) unique_keys: Vec<UniqueKey>,
    /// Foreign keys from other tables to one of its keys.
    pub(super) referenced_by: Vec<KeyReference>,
    /// Its triggers enabled `ALWAYS` (A) or `REPLICA` (R).
    pub(super) replica_triggers: Vec<NamedTrigger>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct ColumnType {
    pub(super) name: String,
    pub(super) type_name: String,
    pub(super) is_uuid: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct PartitionKey {
    pub(super) schema: String,
    pub(super) name: String,
    pub(super) columns: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct UniqueKey {
    pub(super) name: String,
    pub(super) primary: bool,
    /// Every key column is NOT NULL: the key identifies every row.
    pub(super) not_null: bool,
    pub(super) columns: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct KeyReference {
    /// The key referenced (a constraint's name, or a unique index's).
    pub(super) key: String,
    pub(super) constraint: String,
    pub(super) schema: String,
    pub(super) table: String,
    pub(super) columns: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct NamedTrigger {
    pub(super) name: String,
    pub(super) enabled: String,
}

pub(super) fn referencing_table(oid: pg_sys::Oid) -> ReferencingTable {
    read(
        &format!(
            "SELECT pg_catalog.jsonb_build_object( \
                 'oid', c.oid::pg_catalog.int8, 'schema', {SHOWN_SCHEMA}, 'name', c.relname::text, \
                 'relkind', c.relkind::text, \
                 'temporary', CASE WHEN c.relpersistence OPERATOR(pg_catalog.=) 't' THEN \
                     CASE WHEN n.oid OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema() \
                          THEN 'own' ELSE 'other' END END, \
                 'columns', COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object( \
                         'name', a.attname::text, \
                         'type_name', pg_catalog.format_type(a.atttypid, a.atttypmod), \
                         'is_uuid', {uuid}) ORDER BY a.attnum) \
                     FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid \
                       AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped), '[]'), \
                 'partition_keys', {PARTITION_KEYS}, \
                 'unique_keys', {UNIQUE_KEYS}, \
                 'referenced_by', {REFERENCED_BY}, \
                 'replica_triggers', COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object( \
                         'name', t.tgname::text, 'enabled', t.tgenabled::text) ORDER BY t.tgname) \
                     FROM pg_catalog.pg_trigger t WHERE t.tgrelid OPERATOR(pg_catalog.=) c.oid \
                       AND NOT t.tgisinternal AND t.tgenabled OPERATOR(pg_catalog.=) ANY ('{{A,R}}'::\"char\"[])), '[]')) \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
             WHERE c.oid OPERATOR(pg_catalog.=) $1",
            uuid = is_uuid("a.atttypid")
        ),
        &[oid.into()],
    )
}

const PARTITION_KEYS: &str = "COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object( \
        'schema', pn.nspname::text, 'name', pc.relname::text, \
        'columns', ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
                         WHERE a.attrelid OPERATOR(pg_catalog.=) p.partrelid \
                           AND a.attnum OPERATOR(pg_catalog.=) ANY (p.partattrs::pg_catalog.int2[]) \
                         ORDER BY a.attnum)) ORDER BY t.level, pc.relname) \
    FROM pg_catalog.pg_partition_tree(c.oid) t \
    JOIN pg_catalog.pg_partitioned_table p ON p.partrelid OPERATOR(pg_catalog.=) t.relid \
    JOIN pg_catalog.pg_class pc ON pc.oid OPERATOR(pg_catalog.=) t.relid \
    JOIN pg_catalog.pg_namespace pn ON pn.oid OPERATOR(pg_catalog.=) pc.relnamespace), '[]')";

const UNIQUE_KEYS: &str = "COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object( \
        'name', ic.relname::text, 'primary', i.indisprimary, \
        'not_null', NOT EXISTS (SELECT FROM pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY k(attnum, pos) \
            JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid \
             AND a.attnum OPERATOR(pg_catalog.=) k.attnum \
            WHERE k.pos OPERATOR(pg_catalog.<=) i.indnkeyatts AND NOT a.attnotnull), \
        'columns', ARRAY(SELECT a.attname::text \
            FROM pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY k(attnum, pos) \
            JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid \
             AND a.attnum OPERATOR(pg_catalog.=) k.attnum \
            WHERE k.pos OPERATOR(pg_catalog.<=) i.indnkeyatts ORDER BY k.pos)) ORDER BY ic.relname) \
    FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid OPERATOR(pg_catalog.=) i.indexrelid \
    WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid AND i.indisunique AND i.indpred IS NULL \
      AND i.indexprs IS NULL), '[]')";

const REFERENCED_BY: &str = "COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object( \
        'key', COALESCE(k.conname, ki.relname)::text, 'constraint', f.conname::text, \
        'schema', fn.nspname::text, 'table', fc.relname::text, \
        'columns', ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
                         WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid \
                           AND a.attnum OPERATOR(pg_catalog.=) ANY (f.confkey) ORDER BY a.attnum)) \
        ORDER BY f.conname) \
    FROM pg_catalog.pg_constraint f \
    JOIN pg_catalog.pg_class ki ON ki.oid OPERATOR(pg_catalog.=) f.conindid \
    LEFT JOIN pg_catalog.pg_constraint k ON k.conrelid OPERATOR(pg_catalog.=) f.confrelid \
         AND k.conindid OPERATOR(pg_catalog.=) f.conindid \
         AND k.contype OPERATOR(pg_catalog.=) ANY ('{p,u}'::\"char\"[]) \
    JOIN pg_catalog.pg_class fc ON fc.oid OPERATOR(pg_catalog.=) f.conrelid \
    JOIN pg_catalog.pg_namespace fn ON fn.oid OPERATOR(pg_catalog.=) fc.relnamespace \
    WHERE f.contype OPERATOR(pg_catalog.=) 'f' AND f.confrelid OPERATOR(pg_catalog.=) c.oid \
      AND f.conparentid OPERATOR(pg_catalog.=) 0), '[]')";

/// What depends on a legacy table, besides the references (the design's §12).
#[derive(Debug, Clone, Deserialize)]
pub(super) struct TableObjects {
    /// Views and materialized views that read it.
    pub(super) views: Vec<Relation>,
    /// Rules on it (its `_RETURN` rule, if it had one, left out).
    pub(super) rules: Vec<String>,
    pub(super) triggers: Vec<String>,
    pub(super) policies: Vec<String>,
    pub(super) grants: Vec<Grant>,
    pub(super) indexes: Vec<Index>,
    /// CHECK, UNIQUE and EXCLUDE constraints.
    pub(super) constraints: Vec<Index>,
    /// NOT NULL columns without a default, a generated value or an identity.
    pub(super) not_null: Vec<String>,
    pub(super) publications: Vec<Publication>,
    /// Functions with a SQL-standard body that names it.
    pub(super) bound_functions: Vec<String>,
    /// Objects using its row type (or an array of it), described.
    pub(super) row_type_users: Vec<String>,
    /// The columns the view would read from `users`, with their types.
    pub(super) shown_columns: Vec<ShownColumn>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Relation {
    pub(super) schema: String,
    pub(super) name: String,
    pub(super) relkind: String,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Grant {
    /// The role (quoted as needed), or `PUBLIC`.
    pub(super) grantee: String,
    pub(super) privileges: Vec<String>,
    /// The columns of a column grant; `None` for a grant on the table.
    pub(super) columns: Option<Vec<String>>,
}

/// An index or constraint with the table's columns it uses.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Index {
    pub(super) name: String,
    pub(super) columns: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Publication {
    pub(super) name: String,
    /// `all` (FOR ALL TABLES), `table` (lists the table) or `schema` (FOR TABLES IN SCHEMA).
    pub(super) how: String,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct ShownColumn {
    pub(super) name: String,
    pub(super) type_name: String,
    /// The name of the column's type, or of the domain's base type.
    pub(super) base: String,
    /// The length limit of a `varchar(n)` or `char(n)`.
    pub(super) length: Option<i32>,
}

/// What depends on legacy table `oid`; `shown` names the columns the view reads from `users`.
pub(super) fn table_objects(oid: pg_sys::Oid, shown: &[&str]) -> TableObjects {
    read(
        &format!(
            "SELECT pg_catalog.jsonb_build_object('views', {VIEWS}, 'rules', {RULES}, \
                 'triggers', {TRIGGERS}, 'policies', {POLICIES}, 'grants', {GRANTS}, \
                 'indexes', {INDEXES}, 'constraints', {CONSTRAINTS}, 'not_null', {NOT_NULL}, \
                 'publications', {PUBLICATIONS}, 'bound_functions', {BOUND_FUNCTIONS}, \
                 'row_type_users', {ROW_TYPE_USERS}, 'shown_columns', {SHOWN_COLUMNS})"
        ),
        &[oid.into(), shown.to_vec().into()],
    )
}

const VIEWS: &str = "COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object( \
        'schema', vn.nspname::text, 'name', v.relname::text, 'relkind', v.relkind::text) \
        ORDER BY vn.nspname, v.relname) \
    FROM (SELECT DISTINCT r.ev_class FROM pg_catalog.pg_depend d \
          JOIN pg_catalog.pg_rewrite r ON r.oid OPERATOR(pg_catalog.=) d.objid \
          WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
            AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
            AND d.refobjid OPERATOR(pg_catalog.=) $1 AND r.ev_class OPERATOR(pg_catalog.<>) $1) x \
    JOIN pg_catalog.pg_class v ON v.oid OPERATOR(pg_catalog.=) x.ev_class \
    JOIN pg_catalog.pg_namespace vn ON vn.oid OPERATOR(pg_catalog.=) v.relnamespace \
    WHERE v.relkind OPERATOR(pg_catalog.=) ANY ('{v,m}'::\"char\"[])), '[]')";

const RULES: &str = "COALESCE((SELECT pg_catalog.jsonb_agg(r.rulename::text ORDER BY r.rulename) \
    FROM pg_catalog.pg_rewrite r WHERE r.ev_class OPERATOR(pg_catalog.=) $1 \
      AND r.rulename OPERATOR(pg_catalog.<>) '_RETURN'), '[]')";

const TRIGGERS: &str = "COALESCE((SELECT pg_catalog.jsonb_agg(t.tgname::text ORDER BY t.tgname) \
    FROM pg_catalog.pg_trigger t WHERE t.tgrelid OPERATOR(pg_catalog.=) $1 AND NOT t.tgisinternal), '[]')";

const POLICIES: &str = "COALESCE((SELECT pg_catalog.jsonb_agg(p.polname::text ORDER BY p.polname) \
    FROM pg_catalog.pg_policy p WHERE p.polrelid OPERATOR(pg_catalog.=) $1), '[]')";

/// Grants on the table (its owner's own left out) and on its columns, one per grantee and
/// privilege for columns; privileges in the order GRANT lists them.
const GRANTS: &str = "COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object( \
        'grantee', g.grantee, 'privileges', g.privileges, 'columns', g.columns) \
        ORDER BY g.grantee, g.columns NULLS FIRST, g.privileges) \
    FROM (SELECT CASE WHEN x.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' \
                      ELSE x.grantee::pg_catalog.regrole::text END AS grantee, \
                 pg_catalog.array_agg(x.privilege_type ORDER BY pg_catalog.array_position( \
                     '{SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER,MAINTAIN}'::text[], \
                     x.privilege_type)) AS privileges, \
                 NULL::text[] AS columns \
          FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) x \
          WHERE c.oid OPERATOR(pg_catalog.=) $1 AND x.grantee OPERATOR(pg_catalog.<>) c.relowner \
          GROUP BY x.grantee \
          UNION ALL \
          SELECT CASE WHEN x.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' \
                      ELSE x.grantee::pg_catalog.regrole::text END, \
                 ARRAY[x.privilege_type], pg_catalog.array_agg(a.attname::text ORDER BY a.attnum) \
          FROM pg_catalog.pg_attribute a, pg_catalog.aclexplode(a.attacl) x \
          WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.>) 0 \
            AND NOT a.attisdropped \
          GROUP BY x.grantee, x.privilege_type) g), '[]')";

/// Columns an index uses: its plain columns (`indkey`), and those its expressions or predicate
/// name (recorded in `pg_depend`).
const INDEXES: &str = "COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object( \
        'name', ic.relname::text, \
        'columns', ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
            WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.>) 0 \
              AND (a.attnum OPERATOR(pg_catalog.=) ANY (i.indkey::pg_catalog.int2[]) \
                   OR EXISTS (SELECT FROM pg_catalog.pg_depend d \
                       WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
                         AND d.objid OPERATOR(pg_catalog.=) i.indexrelid \
                         AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
                         AND d.refobjid OPERATOR(pg_catalog.=) $1 \
                         AND d.refobjsubid OPERATOR(pg_catalog.=) a.attnum)) \
            ORDER BY a.attnum)) ORDER BY ic.relname) \
    FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid OPERATOR(pg_catalog.=) i.indexrelid \
    WHERE i.indrelid OPERATOR(pg_catalog.=) $1), '[]')";

const CONSTRAINTS: &str = "COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object( \
        'name', co.conname::text, \
        'columns', ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
                         WHERE a.attrelid OPERATOR(pg_catalog.=) $1 \
                           AND a.attnum OPERATOR(pg_catalog.=) ANY (co.conkey) ORDER BY a.attnum)) \
        ORDER BY co.conname) \
    FROM pg_catalog.pg_constraint co WHERE co.conrelid OPERATOR(pg_catalog.=) $1 \
      AND co.contype OPERATOR(pg_catalog.=) ANY ('{c,u,x}'::\"char\"[])), '[]')";

const NOT_NULL: &str = "COALESCE((SELECT pg_catalog.jsonb_agg(a.attname::text ORDER BY a.attnum) \
    FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) $1 \
      AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped AND a.attnotnull \
      AND NOT a.atthasdef AND a.attidentity OPERATOR(pg_catalog.=) '' \
      AND a.attgenerated OPERATOR(pg_catalog.=) ''), '[]')";

const PUBLICATIONS: &str = "COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object( \
        'name', p.name, 'how', p.how) ORDER BY p.name, p.how) \
    FROM (SELECT p.pubname::text AS name, 'all' AS how FROM pg_catalog.pg_publication p \
          WHERE p.puballtables \
          UNION ALL \
          SELECT p.pubname::text, 'table' FROM pg_catalog.pg_publication_rel r \
          JOIN pg_catalog.pg_publication p ON p.oid OPERATOR(pg_catalog.=) r.prpubid \
          WHERE r.prrelid OPERATOR(pg_catalog.=) $1 \
          UNION ALL \
          SELECT p.pubname::text, 'schema' FROM pg_catalog.pg_publication_namespace s \
          JOIN pg_catalog.pg_publication p ON p.oid OPERATOR(pg_catalog.=) s.pnpubid \
          JOIN pg_catalog.pg_class c ON c.relnamespace OPERATOR(pg_catalog.=) s.pnnspid \
          WHERE c.oid OPERATOR(pg_catalog.=) $1) p), '[]')";

const BOUND_FUNCTIONS: &str =
    "COALESCE((SELECT pg_catalog.jsonb_agg(DISTINCT p.oid::pg_catalog.regprocedure::text) \
    FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) d.objid \
    WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass \
      AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
      AND d.refobjid OPERATOR(pg_catalog.=) $1 AND p.prosqlbody IS NOT NULL), '[]')";

/// Ordinary dependencies on the table's row type or its array type: columns of other tables,
/// functions' arguments and results, domains (the array type's own internal one left out).
const ROW_TYPE_USERS: &str = "COALESCE((SELECT pg_catalog.jsonb_agg(DISTINCT \
        pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid)) \
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) c.reltype \
    JOIN pg_catalog.pg_depend d ON d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_type'::pg_catalog.regclass \
     AND d.refobjid OPERATOR(pg_catalog.=) ANY (ARRAY[t.oid, t.typarray]) \
     AND d.deptype OPERATOR(pg_catalog.=) 'n' \
    WHERE c.oid OPERATOR(pg_catalog.=) $1), '[]')";

const SHOWN_COLUMNS: &str = "COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object( \
        'name', a.attname::text, 'type_name', pg_catalog.format_type(a.atttypid, a.atttypmod), \
        'base', bt.typname::text, \
        'length', CASE WHEN bt.typname OPERATOR(pg_catalog.=) ANY ('{varchar,bpchar}'::name[]) \
                        AND a.atttypmod OPERATOR(pg_catalog.>) 4 \
                       THEN a.atttypmod OPERATOR(pg_catalog.-) 4 END) ORDER BY a.attnum) \
    FROM pg_catalog.pg_attribute a \
    JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid \
    JOIN pg_catalog.pg_type bt ON bt.oid OPERATOR(pg_catalog.=) COALESCE(NULLIF(t.typbasetype, 0), t.oid) \
    WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attname OPERATOR(pg_catalog.=) ANY ($2::name[]) \
      AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped), '[]')";

/// The migration runs of a legacy schema that the plan's checks need.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct MigrationRuns {
    /// The latest run of the schema that was neither a dry run nor rolled back.
    pub(super) latest: Option<Run>,
    /// The latest completed one.
    pub(super) completed: Option<i64>,
    /// Every run that counts (neither a dry run nor rolled back), of any schema: an issue of
    /// any of them accounts for a row, as in `nura_verify_migration`.
    pub(super) counting: Vec<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Run {
    pub(super) id: i64,
    pub(super) status: String,
}

pub(super) fn migration_runs(ext: &str, legacy_schema: &str) -> MigrationRuns {
    read(
        &format!(
            "SELECT pg_catalog.jsonb_build_object( \
                 'latest', (SELECT pg_catalog.jsonb_build_object('id', r.id, 'status', r.status) \
                     FROM {ext}.nura_migration_runs r \
                     WHERE NOT r.dry_run AND r.status OPERATOR(pg_catalog.<>) 'rolled_back' \
                       AND r.legacy_schema OPERATOR(pg_catalog.=) $1 ORDER BY r.id DESC LIMIT 1), \
                 'completed', (SELECT pg_catalog.max(r.id) FROM {ext}.nura_migration_runs r \
                     WHERE NOT r.dry_run AND r.status OPERATOR(pg_catalog.=) 'completed' \
                       AND r.legacy_schema OPERATOR(pg_catalog.=) $1), \
                 'counting', COALESCE((SELECT pg_catalog.jsonb_agg(r.id ORDER BY r.id) \
                     FROM {ext}.nura_migration_runs r \
                     WHERE NOT r.dry_run AND r.status OPERATOR(pg_catalog.<>) 'rolled_back'), '[]'))"
        ),
        &[legacy_schema.into()],
    )
}
