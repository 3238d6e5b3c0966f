-- CREATE EXTENSION ... SCHEMA s: every object lands in s, nothing in public, and the auth
-- triggers work for GoTrue's role although it has no rights on s at all.
DROP DATABASE IF EXISTS nura_schema;
CREATE DATABASE nura_schema TEMPLATE template0;
\c nura_schema
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixture :abs_srcdir '/../fixtures/supabase_auth.sql'
\set ECHO none
\i :fixture
\set ECHO all

CREATE SCHEMA nura;
CREATE EXTENSION nura_users SCHEMA nura;

-- Where the extension's objects are, by kind.
SELECT n.nspname, CASE WHEN d.classid = 'pg_proc'::regclass THEN 'function' ELSE c.relkind::text END AS kind,
       count(*)
FROM pg_depend d
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'nura_users'
LEFT JOIN pg_class c ON d.classid = 'pg_class'::regclass AND c.oid = d.objid
LEFT JOIN pg_proc p ON d.classid = 'pg_proc'::regclass AND p.oid = d.objid
JOIN pg_namespace n ON n.oid = coalesce(c.relnamespace, p.pronamespace)
WHERE d.deptype = 'e'
GROUP BY 1, 2 ORDER BY 1, 2;
SELECT extnamespace::regnamespace FROM pg_extension WHERE extname = 'nura_users';
SELECT tgname, tgfoid::regprocedure FROM pg_trigger
WHERE tgrelid = 'auth.users'::regclass AND NOT tgisinternal ORDER BY 1;

-- GoTrue's role cannot even look into the schema...
SELECT has_schema_privilege('supabase_auth_admin', 'nura', 'USAGE') AS auth_admin_uses_nura;
SET ROLE supabase_auth_admin;
SET search_path = auth;
SELECT gotrue_signup('Dee@Example.com', '4915112345678', '{"name": "Dee", "picture": "https://img.example/d.png"}',
                     '55555555-5555-4555-8555-555555555555');
RESET search_path;
RESET ROLE;
-- ...and yet the user is there.
SELECT id, email, phone_number, full_name, avatar_url FROM nura.users;

-- The API functions find the extension's schema (found once per session, and again after the
-- catalog changes: a schema renamed, the extension dropped and created again).
SELECT nura.nura_user_for_chat('55555555-5555-4555-8555-555555555555') ->> 'email' AS chat_sees;

SELECT nura.nura_detach_auth_sync();
DROP EXTENSION nura_users;
SELECT count(*) AS objects_left_in_nura FROM pg_class WHERE relnamespace = 'nura'::regnamespace;
-- GoTrue inserts still work once the extension is gone.
SET ROLE supabase_auth_admin;
SET search_path = auth;
SELECT gotrue_signup('eve@example.com', NULL, '{}', '66666666-6666-4666-8666-666666666666');
RESET search_path;
RESET ROLE;
SELECT email FROM auth.users ORDER BY email;

-- Created again in another schema, in the same session: the functions use the new schema.
CREATE SCHEMA nura2;
CREATE EXTENSION nura_users SCHEMA nura2;
SELECT nura2.nura_sync_user('{"id": "77777777-7777-4777-8777-777777777777", "email": "gus@example.com"}') ->> 'success' AS synced;
SELECT nura2.nura_user_for_chat('77777777-7777-4777-8777-777777777777') ->> 'email' AS chat_sees;
-- Renamed, in the same session: the functions use the new name.
ALTER SCHEMA nura2 RENAME TO nura3;
SELECT nura3.nura_user_for_chat('77777777-7777-4777-8777-777777777777') ->> 'email' AS chat_sees;
SELECT nura3.nura_sync_user('{"id": "77777777-7777-4777-8777-777777777777", "bio": "renamed"}') -> 'user' ->> 'bio' AS synced_bio;
-- A rename rolled back (to a savepoint) is forgotten too.
BEGIN;
SAVEPOINT before_rename;
ALTER SCHEMA nura3 RENAME TO nura4;
SELECT nura4.nura_user_for_chat('77777777-7777-4777-8777-777777777777') ->> 'email' AS chat_sees;
ROLLBACK TO SAVEPOINT before_rename;
SELECT nura3.nura_user_for_chat('77777777-7777-4777-8777-777777777777') ->> 'email' AS chat_sees;
COMMIT;
SELECT nura3.nura_detach_auth_sync();
DROP EXTENSION nura_users;

\c nura_regress
DROP DATABASE nura_schema;
