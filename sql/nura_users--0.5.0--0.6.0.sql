-- nura_users 0.5.0 -> 0.6.0: one user's data can fail only that user's sync. Run by ALTER
-- EXTENSION nura_users UPDATE. The library does most of it (user metadata read only for the
-- names it uses, adoption that merges, PostgreSQL's lower() for every email match, a changed
-- auth id followed); the SQL changes are these:
\echo Use "ALTER EXTENSION nura_users UPDATE TO '0.6.0'" to load this file. \quit

-- 1. nura_sync_stats and nura_purge_sync_logs take any interval: the new nura_log_cutoff gives
-- -infinity or infinity where now() - age leaves the range of timestamptz (0.5.0 failed with
-- 22008). Its privileges are set with the other new functions' below.
CREATE FUNCTION @extschema@.nura_log_cutoff(age interval) RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN pg_catalog.now() OPERATOR(pg_catalog.-) age;
EXCEPTION WHEN datetime_field_overflow THEN
    RETURN CASE WHEN pg_catalog.date_part('epoch', age) OPERATOR(pg_catalog.>) 0
                THEN '-infinity'::pg_catalog.timestamptz ELSE 'infinity'::pg_catalog.timestamptz END;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.nura_sync_stats(since interval DEFAULT '24 hours')
RETURNS TABLE (source text, attempts bigint, succeeded bigint, failed bigint,
               success_rate float8, avg_ms float8, p50_ms float8, p95_ms float8, p99_ms float8)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT l.source,
           pg_catalog.count(*),
           pg_catalog.count(*) FILTER (WHERE l.success),
           pg_catalog.count(*) FILTER (WHERE NOT l.success),
           (pg_catalog.count(*) FILTER (WHERE l.success))::float8 OPERATOR(pg_catalog./) pg_catalog.count(*)::float8,
           (pg_catalog.avg(l.duration_us))::float8 OPERATOR(pg_catalog./) 1000.0::float8,
           pg_catalog.percentile_cont(0.5) WITHIN GROUP (ORDER BY l.duration_us) OPERATOR(pg_catalog./) 1000.0::float8,
           pg_catalog.percentile_cont(0.95) WITHIN GROUP (ORDER BY l.duration_us) OPERATOR(pg_catalog./) 1000.0::float8,
           pg_catalog.percentile_cont(0.99) WITHIN GROUP (ORDER BY l.duration_us) OPERATOR(pg_catalog./) 1000.0::float8
    FROM @extschema@.user_sync_logs l
    WHERE l.created_at OPERATOR(pg_catalog.>=) (SELECT @extschema@.nura_log_cutoff(since))
    GROUP BY l.source
    ORDER BY l.source
$$;

-- 2. The migration and verify read legacy cells through the same functions (uuids in every form
-- PostgreSQL's uuid accepts, text trimmed as the migration trims it, phones cleaned as it cleans
-- them, rows whose json cells jsonb refuses, created_at held as text), and an id that two
-- legacy tables used for two people resolves per table.
CREATE FUNCTION @extschema@.nura_legacy_uuid("id" TEXT) RETURNS uuid
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'nura_legacy_uuid_wrapper';
CREATE FUNCTION @extschema@.nura_legacy_text("value" TEXT) RETURNS TEXT
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'nura_legacy_text_wrapper';
CREATE FUNCTION @extschema@.nura_legacy_phone("value" TEXT) RETURNS TEXT
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'nura_legacy_phone_wrapper';
CREATE FUNCTION @extschema@.nura_legacy_row("row" TEXT) RETURNS jsonb
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'nura_legacy_row_wrapper';
CREATE FUNCTION @extschema@.nura_legacy_timestamptz(value text) RETURNS timestamptz
LANGUAGE plpgsql STABLE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN value::pg_catalog.timestamptz;
EXCEPTION WHEN data_exception THEN
    RETURN NULL;
END
$$;
CREATE FUNCTION @extschema@.nura_resolve_user_id("any_id" TEXT, "legacy_table" TEXT) RETURNS uuid
STABLE SECURITY DEFINER PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'nura_resolve_user_id_in_wrapper';

-- Privileges of the new functions as a fresh install gives them (sql/finalize.sql): the owner
-- and service_role; the API roles lose what Supabase's default privileges gave them.
DO $$
DECLARE
    api_role text;
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['nura_log_cutoff(interval)', 'nura_legacy_uuid(text)',
                             'nura_legacy_text(text)', 'nura_legacy_phone(text)',
                             'nura_legacy_row(text)', 'nura_legacy_timestamptz(text)',
                             'nura_resolve_user_id(text, text)'] LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION @extschema@.%s FROM PUBLIC', f);
        FOREACH api_role IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
            IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) api_role) THEN
                EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION @extschema@.%s FROM %I', f, api_role);
            END IF;
        END LOOP;
        IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'service_role') THEN
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION @extschema@.%s TO service_role', f);
        END IF;
    END LOOP;
END
$$;

-- 3. A re-run of the migration knows the very rows it placed (not merely their ids): each
-- alias keeps the fingerprints of its legacy rows. A new column without a default changes only
-- the catalog (no rewrite); aliases made before keep NULL there and count as before.
ALTER TABLE @extschema@.user_id_aliases ADD COLUMN row_hashes bigint[];
-- The plan computes the fingerprints in its parallel staging and keeps them in the work list
-- (internal; empty between runs, but for an unfinished one, whose rows get theirs in the batch).
ALTER TABLE @extschema@.nura_migration_rows ADD COLUMN row_hash bigint;

-- 4. 0.6.0's UPDATE trigger on auth.users also fires for a change of auth.users.id, so that the
-- user moves to the new id (0.5.0's column list lacks id: such a change is not seen). The 0.6.0
-- library syncs correctly through the old trigger otherwise. Replacing it drops a trigger, which
-- locks auth.users exclusively: that is left to SELECT nura_attach_auth_sync() in a transaction
-- of its own, so that this update never waits for auth.users.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_trigger t
               WHERE t.tgrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass('auth.users')
                 AND t.tgfoid OPERATOR(pg_catalog.=) '@extschema@.nura_auth_user_sync()'::pg_catalog.regprocedure
                 AND t.tgname OPERATOR(pg_catalog.=) 'nura_users_sync_update'
                 AND NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a
                                 WHERE a.attrelid OPERATOR(pg_catalog.=) t.tgrelid
                                   AND a.attname OPERATOR(pg_catalog.=) 'id'
                                   AND a.attnum OPERATOR(pg_catalog.=) ANY (t.tgattr::pg_catalog.int2[])))
    THEN
        RAISE NOTICE 'nura_users 0.6.0: the UPDATE trigger on auth.users is that of 0.5.0; it keeps working, and SELECT nura_attach_auth_sync() replaces it with one that also follows a change of auth.users.id';
    END IF;
END
$$;
