-- Runs last in the install script, once every function exists: function attributes, the
-- security model of docs/security.md (privileges and row level security policies), and the attach.

-- The auth trigger fires as whoever writes auth.users (GoTrue's supabase_auth_admin, with
-- search_path = auth and no rights here): it runs as the extension owner, with a search_path
-- that no caller can change.
ALTER FUNCTION @extschema@.nura_auth_user_sync() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- nura_verify_migration reads every legacy row in a few large statements whose estimated cost
-- always crosses jit_above_cost; compiling them costs seconds and saves nothing.
-- The same holds for the migration's plan statement and its batch statements.
ALTER FUNCTION @extschema@.nura_verify_migration(bigint) SET jit = off;
ALTER FUNCTION @extschema@.nura_migrate_legacy(boolean, integer, text) SET jit = off;
ALTER FUNCTION @extschema@.nura_migration_step(bigint) SET jit = off;
-- The cutover's plan reads every referencing table in one aggregate per reference: the same.
ALTER FUNCTION @extschema@.nura_cutover_plan(text, jsonb) SET jit = off;
-- The cutover's steps run the migration's statements (its catch-up run, live placements).
ALTER FUNCTION @extschema@.nura_cutover_step(integer, integer, text[]) SET jit = off;
ALTER FUNCTION @extschema@.nura_cutover_place(text, text, uuid[], text[]) SET jit = off;

-- The caller's JWT subject as PostgREST sets it (request.jwt.claims, transaction-local), for RLS
-- policies; NULL when unset or not a uuid. Independent of auth.uid(), which may not exist.
CREATE FUNCTION @extschema@.nura_jwt_sub() RETURNS uuid
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s text;
BEGIN
    s := NULLIF(pg_catalog.current_setting('request.jwt.claims', true), '')::pg_catalog.jsonb
         OPERATOR(pg_catalog.->>) 'sub';
    IF s OPERATOR(pg_catalog.~) '^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$' THEN
        RETURN s::pg_catalog.uuid;
    END IF;
    RETURN NULL;
EXCEPTION WHEN invalid_text_representation THEN
    -- Claims that are not JSON identify nobody.
    RETURN NULL;
END
$$;

-- Privileges. Nothing of ours is open to PUBLIC, and Supabase's default privileges (which grant
-- every new table and function in public to anon and authenticated) are taken back first; then
-- exactly what docs/security.md allows is granted. Roles that do not exist (plain PostgreSQL) are skipped:
-- there the owner uses everything.
DO $security$
DECLARE
    ext oid := (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'nura_users');
    member record;
    api_role text;
    -- What authenticated may call: its own id only, checked inside each function.
    user_functions text[] := ARRAY[
        'nura_sync_user(jsonb)', 'nura_update_profile(uuid,jsonb)', 'nura_get_user(uuid)',
        'nura_get_service_profile(uuid,text)', 'nura_upsert_service_profile(uuid,text,jsonb,jsonb)',
        'nura_user_for_chat(uuid)', 'nura_user_for_voice(uuid)', 'nura_user_for_memory(uuid)',
        'nura_jwt_sub()'];
    -- The trigger function needs no grant to fire, and nobody should call it.
    -- Likewise the cutover's trigger functions and the placement its capture trigger calls.
    owner_functions text[] := ARRAY['nura_auth_user_sync()', 'nura_cutover_capture()',
        'nura_cutover_guard()', 'nura_cutover_resolve()', 'nura_cutover_foreign_types(oid)',
        'nura_cutover_place(text,text,uuid[],text[])', 'nura_cutover_settle(uuid,text)',
        'nura_cutover_settle_trigger()', 'nura_cutover_rewriting()', 'nura_cutover_mirror()',
        'nura_cutover_mirror_user(uuid,text[])', 'nura_cutover_mirror_profile(uuid,text,boolean)',
        'nura_cutover_mirror_delete(uuid)', 'nura_cutover_view_trigger()',
        'nura_cutover_view_write(text,text,text,text,text)'];
    f text;
BEGIN
    FOR member IN
        SELECT CASE WHEN d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                    THEN 'ROUTINE ' || d.objid::pg_catalog.regprocedure::text
                    ELSE d.objid::pg_catalog.regclass::text END AS object
        FROM pg_catalog.pg_depend d
        WHERE d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
          AND d.refobjid = ext AND d.deptype = 'e'
          AND d.classid = ANY (ARRAY['pg_catalog.pg_proc'::pg_catalog.regclass,
                                     'pg_catalog.pg_class'::pg_catalog.regclass])
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM PUBLIC', member.object);
        FOREACH api_role IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
            IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = api_role) THEN
                EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM %I', member.object, api_role);
            END IF;
        END LOOP;
    END LOOP;

    -- A switched legacy table's view calls it as its reader, whoever that is: it only says
    -- whether the reader sees every row or its own user's (docs/cutover.md).
    GRANT EXECUTE ON FUNCTION @extschema@.nura_cutover_viewer() TO PUBLIC;

    -- The API roles must reach the schema (it may be another than public).
    FOREACH api_role IN ARRAY ARRAY['authenticated', 'service_role'] LOOP
        IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = api_role) THEN
            EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA @extschema@ TO %I', api_role);
        END IF;
    END LOOP;

    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
        FOREACH f IN ARRAY user_functions LOOP
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION @extschema@.%s TO authenticated', f);
        END LOOP;
        -- Own row and own profiles only (policies below); no direct writes.
        GRANT SELECT ON @extschema@.users, @extschema@.user_service_profiles TO authenticated;
        CREATE POLICY users_select_own ON @extschema@.users FOR SELECT TO authenticated
            USING (id OPERATOR(pg_catalog.=) @extschema@.nura_jwt_sub());
        CREATE POLICY user_service_profiles_select_own ON @extschema@.user_service_profiles
            FOR SELECT TO authenticated
            USING (user_id OPERATOR(pg_catalog.=) @extschema@.nura_jwt_sub());
    END IF;

    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        FOR member IN
            SELECT d.classid, d.objid FROM pg_catalog.pg_depend d
            WHERE d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
              AND d.refobjid = ext AND d.deptype = 'e'
        LOOP
            IF member.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass THEN
                IF NOT (pg_catalog.regexp_replace(member.objid::pg_catalog.regprocedure::text, '^.*\.', '')
                        OPERATOR(pg_catalog.=) ANY (owner_functions)) THEN
                    EXECUTE pg_catalog.format('GRANT EXECUTE ON ROUTINE %s TO service_role',
                                              member.objid::pg_catalog.regprocedure);
                END IF;
            ELSIF member.classid = 'pg_catalog.pg_class'::pg_catalog.regclass THEN
                EXECUTE pg_catalog.format('GRANT ALL ON %s TO service_role', member.objid::pg_catalog.regclass);
            END IF;
        END LOOP;
        -- service_role is BYPASSRLS on Supabase; these policies keep it working where it is not.
        CREATE POLICY users_service_role ON @extschema@.users TO service_role USING (true) WITH CHECK (true);
        CREATE POLICY user_service_profiles_service_role ON @extschema@.user_service_profiles
            TO service_role USING (true) WITH CHECK (true);
        CREATE POLICY user_service_types_service_role ON @extschema@.user_service_types
            TO service_role USING (true) WITH CHECK (true);
        CREATE POLICY user_sync_logs_service_role ON @extschema@.user_sync_logs
            TO service_role USING (true) WITH CHECK (true);
        CREATE POLICY user_id_aliases_service_role ON @extschema@.user_id_aliases
            TO service_role USING (true) WITH CHECK (true);
        CREATE POLICY nura_migration_runs_service_role ON @extschema@.nura_migration_runs
            TO service_role USING (true) WITH CHECK (true);
        CREATE POLICY nura_migration_issues_service_role ON @extschema@.nura_migration_issues
            TO service_role USING (true) WITH CHECK (true);
        CREATE POLICY nura_migration_rows_service_role ON @extschema@.nura_migration_rows
            TO service_role USING (true) WITH CHECK (true);
        CREATE POLICY nura_migration_created_service_role ON @extschema@.nura_migration_created
            TO service_role USING (true) WITH CHECK (true);
        CREATE POLICY nura_cutover_tables_service_role ON @extschema@.nura_cutover_tables
            TO service_role USING (true) WITH CHECK (true);
        CREATE POLICY nura_cutover_steps_service_role ON @extschema@.nura_cutover_steps
            TO service_role USING (true) WITH CHECK (true);
        CREATE POLICY nura_cutover_backlog_service_role ON @extschema@.nura_cutover_backlog
            TO service_role USING (true) WITH CHECK (true);
        CREATE POLICY nura_cutover_references_service_role ON @extschema@.nura_cutover_references
            TO service_role USING (true) WITH CHECK (true);
        CREATE POLICY nura_cutover_originals_service_role ON @extschema@.nura_cutover_originals
            TO service_role USING (true) WITH CHECK (true);
        CREATE POLICY nura_cutover_unplaced_service_role ON @extschema@.nura_cutover_unplaced
            TO service_role USING (true) WITH CHECK (true);
        CREATE POLICY nura_cutover_mirror_backlog_service_role ON @extschema@.nura_cutover_mirror_backlog
            TO service_role USING (true) WITH CHECK (true);
    END IF;
END
$security$;

-- Where auth.users exists already (a Supabase database), sync starts with CREATE EXTENSION.
SELECT @extschema@.nura_attach_auth_sync();
