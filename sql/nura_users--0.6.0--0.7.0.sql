-- nura_users 0.6.0 -> 0.7.0: the first part of the cutover (docs/cutover.md), its plan, and an
-- index for scrubbing a user's migration issues. Run by ALTER EXTENSION nura_users UPDATE. It
-- creates one function and one index (on the extension's own nura_migration_issues, which holds
-- few rows, so a plain CREATE INDEX is brief) and changes nothing else.
\echo Use "ALTER EXTENSION nura_users UPDATE TO '0.7.0'" to load this file. \quit

-- The issues naming a user, whose values are scrubbed with its log rows (docs/operations.md).
CREATE INDEX nura_migration_issues_user_idx
    ON @extschema@.nura_migration_issues (user_id);

-- What a cutover would do and what blocks it; reads only (docs/cutover.md, "What exists now").
CREATE FUNCTION @extschema@.nura_cutover_plan(
    "legacy_schema" TEXT DEFAULT 'public',
    "extra_references" jsonb DEFAULT '[]'
) RETURNS jsonb
STABLE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'nura_cutover_plan_wrapper';
-- It reads every referencing table in one aggregate per reference, as verify reads the legacy
-- tables: compiling such statements costs more than it saves (sql/finalize.sql).
ALTER FUNCTION @extschema@.nura_cutover_plan(text, jsonb) SET jit = off;

-- Its privileges as a fresh install gives them (sql/finalize.sql): the owner and service_role;
-- the API roles lose what Supabase's default privileges gave them.
DO $$
DECLARE
    api_role text;
BEGIN
    REVOKE ALL ON FUNCTION @extschema@.nura_cutover_plan(text, jsonb) FROM PUBLIC;
    FOREACH api_role IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
        IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) api_role) THEN
            EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION @extschema@.nura_cutover_plan(text, jsonb) FROM %I',
                                      api_role);
        END IF;
    END LOOP;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'service_role') THEN
        GRANT EXECUTE ON FUNCTION @extschema@.nura_cutover_plan(text, jsonb) TO service_role;
    END IF;
END
$$;
