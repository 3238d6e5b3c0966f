-- Runs last in the install script, once every function exists.

-- The auth trigger fires as whoever writes auth.users (GoTrue's supabase_auth_admin, with
-- search_path = auth and no rights here): it runs as the extension owner, with a search_path
-- that no caller can change.
ALTER FUNCTION @extschema@.nura_auth_user_sync() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- Nothing is executable by PUBLIC. The trigger function needs no EXECUTE grant to fire.
REVOKE ALL ON FUNCTION @extschema@.nura_auth_user_sync() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.nura_attach_auth_sync() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.nura_detach_auth_sync() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.nura_sync_user(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.nura_sync_stats(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.nura_check_consistency() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.nura_reconcile(boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.nura_purge_sync_logs(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.nura_erase_user(uuid) FROM PUBLIC;

-- Supabase's API roles, where they exist (plain PostgreSQL has none; the owner can use everything).
-- authenticated may sync only its own id (checked inside); service_role may sync any.
DO $grants$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
        GRANT EXECUTE ON FUNCTION @extschema@.nura_sync_user(jsonb) TO authenticated;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT EXECUTE ON FUNCTION @extschema@.nura_sync_user(jsonb),
            @extschema@.nura_sync_stats(interval), @extschema@.nura_check_consistency(),
            @extschema@.nura_reconcile(boolean), @extschema@.nura_purge_sync_logs(interval),
            @extschema@.nura_erase_user(uuid)
            TO service_role;
    END IF;
END
$grants$;

-- Where auth.users exists already (a Supabase database), sync starts with CREATE EXTENSION.
SELECT @extschema@.nura_attach_auth_sync();
