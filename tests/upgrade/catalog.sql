-- Everything CREATE EXTENSION nura_users defines, one line per fact, sorted: the extension's
-- members (pg_depend), function definitions with their settings, privileges and comments,
-- domains with their constraints, columns, constraints, indexes, policies, row level security,
-- comments and privileges of its tables, the triggers that call its functions, and its pg_dump
-- configuration. Two databases with the same output have the same extension objects. Used by
-- scripts/upgrade_test.
WITH ext AS (SELECT e.oid, e.extconfig, e.extcondition FROM pg_extension e WHERE e.extname = 'nura_users'),
members AS (
    SELECT d.classid, d.objid, d.objsubid FROM pg_depend d, ext
    WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
),
rels AS (
    SELECT c.oid, c.oid::regclass::text AS name FROM pg_class c JOIN members m
        ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
),
lines AS (
    SELECT 'member ' || pg_describe_object(m.classid, m.objid, m.objsubid) FROM members m
    UNION ALL
    SELECT 'function ' || p.oid::regprocedure::text || E'\n' || pg_get_functiondef(p.oid)
           || E'\nacl ' || coalesce(p.proacl::text, '-')
           || E'\ncomment ' || coalesce(obj_description(p.oid, 'pg_proc'), '-')
    FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
    UNION ALL
    SELECT 'relation ' || r.name || ' kind=' || c.relkind::text || ' rls=' || c.relrowsecurity::text
           || ' force=' || c.relforcerowsecurity::text || ' replident=' || c.relreplident::text
           || ' acl=' || coalesce(c.relacl::text, '-')
           || ' comment=' || coalesce(obj_description(c.oid, 'pg_class'), '-')
    FROM rels r JOIN pg_class c ON c.oid = r.oid
    UNION ALL
    SELECT 'column ' || r.name || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
           || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
           || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '')
           || CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END
           || CASE WHEN a.attgenerated <> '' THEN ' generated' ELSE '' END
           || ' acl=' || coalesce(a.attacl::text, '-')
    FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
    UNION ALL
    SELECT 'domain ' || t.oid::regtype::text || ' ' || format_type(t.typbasetype, t.typtypmod)
           || CASE WHEN t.typnotnull THEN ' not null' ELSE '' END
           || coalesce(' default ' || t.typdefault, '') || ' acl=' || coalesce(t.typacl::text, '-')
           || coalesce((SELECT string_agg(E'\n  ' || co.conname || ' ' || pg_get_constraintdef(co.oid)
                                          || ' validated=' || co.convalidated::text, '' ORDER BY co.conname)
                        FROM pg_constraint co WHERE co.contypid = t.oid), '')
    FROM pg_type t JOIN members m ON m.classid = 'pg_type'::regclass AND m.objid = t.oid
    WHERE t.typtype = 'd'
    UNION ALL
    SELECT 'constraint ' || r.name || ' ' || co.conname || ' ' || pg_get_constraintdef(co.oid)
    FROM rels r JOIN pg_constraint co ON co.conrelid = r.oid
    UNION ALL
    SELECT 'index ' || pg_get_indexdef(i.indexrelid)
    FROM rels r JOIN pg_index i ON i.indrelid = r.oid
    UNION ALL
    SELECT 'policy ' || r.name || ' ' || po.polname || ' cmd=' || po.polcmd::text || ' permissive=' || po.polpermissive::text
           || ' roles=' || (SELECT string_agg(CASE WHEN x = 0 THEN 'public' ELSE x::regrole::text END, ',' ORDER BY 1)
                            FROM unnest(po.polroles) AS x)
           || ' using=' || coalesce(pg_get_expr(po.polqual, po.polrelid), '-')
           || ' check=' || coalesce(pg_get_expr(po.polwithcheck, po.polrelid), '-')
    FROM rels r JOIN pg_policy po ON po.polrelid = r.oid
    UNION ALL
    SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled=' || t.tgenabled::text
    FROM pg_trigger t JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = t.tgfoid
    WHERE NOT t.tgisinternal
    UNION ALL
    SELECT 'dump ' || c::regclass::text || ' ' || coalesce(ext.extcondition[i], '-')
    FROM ext, unnest(ext.extconfig) WITH ORDINALITY AS u(c, i)
)
SELECT l.line FROM lines AS l(line) ORDER BY l.line COLLATE "C";
