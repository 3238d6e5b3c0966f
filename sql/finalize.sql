-- Runs last in the install script, once every function exists.

-- The auth trigger fires as whoever writes auth.users (GoTrue's supabase_auth_admin, with
-- search_path = auth and no rights here): it runs as the extension owner, with a search_path
-- that no caller can change.
ALTER FUNCTION @extschema@.nura_auth_user_sync() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- Nothing is executable by PUBLIC by default. Attach and detach are for the owner (and whoever
-- the owner grants them to); the trigger function needs no EXECUTE grant to fire.
REVOKE ALL ON FUNCTION @extschema@.nura_auth_user_sync() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.nura_attach_auth_sync() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.nura_detach_auth_sync() FROM PUBLIC;

-- Where auth.users exists already (a Supabase database), sync starts with CREATE EXTENSION.
SELECT @extschema@.nura_attach_auth_sync();
