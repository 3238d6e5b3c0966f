-- CREATE EXTENSION on plain PostgreSQL (no auth schema): the seven tables of docs/install.md with RLS,
-- every table and sequence registered for pg_dump, the seeded service types, nothing
-- executable by PUBLIC, and a clean DROP / re-CREATE.
CREATE EXTENSION nura_users;

-- Tables, with row level security on every one.
SELECT c.relname, c.relrowsecurity
FROM pg_class c
JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'nura_users'
WHERE c.relkind = 'r'
ORDER BY 1;

-- Registered for pg_dump, with the filter that keeps seeded service types out of a dump.
SELECT cfg::regclass AS config_relation, coalesce(nullif(cond, ''), '(all rows)') AS dump_filter
FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS x(cfg, cond)
WHERE e.extname = 'nura_users'
ORDER BY cfg::regclass::text;

SELECT service_type, default_preferences, auto_create FROM user_service_types ORDER BY 1;

-- Functions: none executable by PUBLIC but nura_cutover_viewer (a switched legacy table's view
-- calls it as its reader: it says only whether the reader sees all rows or its own user's); the
-- auth trigger function is SECURITY DEFINER with a pinned search_path.
SELECT p.proname, p.prosecdef, p.proconfig,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public_may_execute
FROM pg_proc p
JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'nura_users'
ORDER BY 1;

-- Without auth.users there is nothing to attach or detach.
SELECT nura_attach_auth_sync();
SELECT nura_detach_auth_sync();

-- No triggers anywhere, so a plain DROP works and a re-CREATE starts fresh.
DROP EXTENSION nura_users;
SELECT count(*) AS leftover_tables FROM pg_class
WHERE relname IN ('users', 'user_service_profiles', 'user_sync_logs', 'user_service_types',
                  'user_id_aliases', 'nura_migration_runs', 'nura_migration_issues');
CREATE EXTENSION nura_users;
SELECT count(*) AS seeded_service_types FROM user_service_types;
DROP EXTENSION nura_users;
