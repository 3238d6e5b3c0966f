-- nura_users 0.3.0 -> 0.4.0: a cheaper log row and profile id. Run by ALTER EXTENSION nura_users
-- UPDATE. The five CHECK constraints of user_sync_logs become one, user_sync_logs_row_valid, which
-- calls a function of the library (see sql/schema.sql for why), and new service profiles get
-- time-ordered ids (nura_uuidv7()) instead of gen_random_uuid(). The 0.4.0 library also works on a
-- database that has not been updated yet: it writes the same rows, and the old constraints check
-- them.
\echo Use "ALTER EXTENSION nura_users UPDATE TO '0.4.0'" to load this file. \quit

-- Locks first, all of them, in the order every writer takes them: users (each write of a user
-- starts there), then user_service_profiles, then user_sync_logs. The two ALTER TABLEs below need
-- the last two exclusively until the update commits; taken one after the other without users, an
-- adoption signup (users and the log row first, the profiles after) and the update could each
-- wait for the other. users is held against writes and row locks (SELECT ... FOR UPDATE, which a
-- sync takes before it writes a log row): plain reads go on. Nothing here reads a table, so once
-- granted the locks are held only as long as the catalog changes take.
LOCK TABLE @extschema@.users IN EXCLUSIVE MODE;
LOCK TABLE @extschema@.user_service_profiles, @extschema@.user_sync_logs IN ACCESS EXCLUSIVE MODE;

CREATE FUNCTION @extschema@.nura_sync_log_row_valid(source text, sync_type text, success boolean,
        sqlstate text, error_message text, duration_us bigint) RETURNS boolean
    IMMUTABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'nura_sync_log_row_valid_wrapper';
CREATE FUNCTION @extschema@.nura_uuidv7() RETURNS uuid
    VOLATILE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'nura_uuidv7_wrapper';

-- Privileges as a fresh install gives them (sql/finalize.sql): nobody but the owner and
-- service_role, which may write log rows and profiles itself and so must be able to run their
-- CHECK and default. The API roles lose what default privileges gave them (Supabase grants EXECUTE
-- on new functions in public to anon and authenticated).
REVOKE ALL ON FUNCTION @extschema@.nura_sync_log_row_valid(text, text, boolean, text, text, bigint)
    FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.nura_uuidv7() FROM PUBLIC;
DO $$
DECLARE
    api_role text;
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['nura_sync_log_row_valid(text, text, boolean, text, text, bigint)',
                             'nura_uuidv7()'] LOOP
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

-- New profiles' ids: time-ordered (see src/schema.rs). Existing ids stay as they are.
ALTER TABLE @extschema@.user_service_profiles ALTER COLUMN id SET DEFAULT @extschema@.nura_uuidv7();

-- The new constraint is added NOT VALID, so the update reads none of the stored log rows (the
-- busiest table: a scan here would hold every signup's log row back until it ends). The five
-- constraints it replaces held for every one of them until this statement, and it checks the same
-- rules. ALTER TABLE ... VALIDATE CONSTRAINT marks the constraint validated later, without
-- blocking writes.
ALTER TABLE @extschema@.user_sync_logs
    DROP CONSTRAINT user_sync_logs_source_known,
    DROP CONSTRAINT user_sync_logs_sync_type_format,
    DROP CONSTRAINT user_sync_logs_failure_explained,
    DROP CONSTRAINT user_sync_logs_sqlstate_format,
    DROP CONSTRAINT user_sync_logs_duration_nonnegative,
    ADD CONSTRAINT user_sync_logs_row_valid
        CHECK (@extschema@.nura_sync_log_row_valid(source, sync_type, success, sqlstate,
                                                    error_message, duration_us)) NOT VALID;

DO $$
BEGIN
    RAISE NOTICE 'nura_users 0.4.0: user_sync_logs has one CHECK now, user_sync_logs_row_valid, added without reading the stored rows (the constraints it replaces held for them)'
        USING HINT = 'To have PostgreSQL mark it validated, run at any time (it reads the table, and does not block writes): ALTER TABLE @extschema@.user_sync_logs VALIDATE CONSTRAINT user_sync_logs_row_valid;';
END
$$;
