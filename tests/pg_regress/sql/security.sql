-- The security model (docs/security.md), exercised as PostgREST does it: a transaction-local role and
-- request.jwt.claims. A user reads and edits only their own rows; anon gets nothing; service_role
-- everything. Hostile callers cannot redirect the extension's functions.
DROP DATABASE IF EXISTS nura_security;
CREATE DATABASE nura_security TEMPLATE template0;
\c nura_security
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixture :abs_srcdir '/../fixtures/supabase_auth.sql'
\set ECHO none
\i :fixture
CREATE EXTENSION nura_users;
SET ROLE supabase_auth_admin;
SET search_path = auth;
SELECT gotrue_signup('ana@example.com', '15551110000', '{"full_name": "Ana"}', 'a1111111-0000-4000-8000-000000000001');
SELECT gotrue_signup('bob@example.com', NULL, '{"full_name": "Bob"}', 'b2222222-0000-4000-8000-000000000002');
RESET search_path;
RESET ROLE;
\set ECHO all
\set VERBOSITY terse

-- As Ana, through PostgREST.
BEGIN;
SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims',
    '{"sub": "a1111111-0000-4000-8000-000000000001", "role": "authenticated"}', true) \gset
-- Reads: own row and profiles only, directly and through the functions.
SELECT id, email FROM users;
SELECT user_id, service_type FROM user_service_profiles ORDER BY service_type;
SELECT nura_get_user('a1111111-0000-4000-8000-000000000001')->>'email' AS own,
       nura_get_user('b2222222-0000-4000-8000-000000000002') AS other;
SELECT nura_user_for_chat('a1111111-0000-4000-8000-000000000001')->>'full_name' AS own_chat,
       nura_user_for_chat('b2222222-0000-4000-8000-000000000002') AS other_chat;
SELECT nura_get_service_profile('b2222222-0000-4000-8000-000000000002', 'chat') AS other_profile;
-- Edits: own profile fields, own preferences.
SELECT nura_update_profile('a1111111-0000-4000-8000-000000000001',
    '{"display_name": "ana", "privacy_settings": {"memory_privacy": "strict"}}') #- '{user}';
SELECT nura_upsert_service_profile('a1111111-0000-4000-8000-000000000001', 'chat', '{"theme": "dark"}')
    ->'service_preferences' AS chat_preferences;
-- Clearing a name the provider's metadata also has: it stays cleared.
SELECT nura_update_profile('a1111111-0000-4000-8000-000000000001', '{"full_name": null}')
    -> 'user' -> 'full_name' AS full_name_after_clearing;
SELECT nura_update_profile('a1111111-0000-4000-8000-000000000001', '{"full_name": "Ana"}')->>'sync_type';
COMMIT;

-- What Ana may not do; each statement in its own PostgREST-style transaction.
BEGIN;
SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims',
    '{"sub": "a1111111-0000-4000-8000-000000000001", "role": "authenticated"}', true) \gset
SELECT nura_update_profile('b2222222-0000-4000-8000-000000000002', '{"display_name": "pwned"}');
SELECT nura_update_profile('a1111111-0000-4000-8000-000000000001', '{"xp": 1000000}');
SELECT nura_update_profile('a1111111-0000-4000-8000-000000000001', '{"current_streak": 99}');
SELECT nura_update_profile('a1111111-0000-4000-8000-000000000001', '{"is_active": false}');
SELECT nura_update_profile('a1111111-0000-4000-8000-000000000001', '{"email": "x@evil.example"}');
SELECT nura_update_profile('a1111111-0000-4000-8000-000000000001', '{"id": "b2222222-0000-4000-8000-000000000002"}');
-- A phone number of an auth user is auth's: reported as ignored.
SELECT nura_update_profile('a1111111-0000-4000-8000-000000000001', '{"phone_number": "15559999999"}') #- '{user}';
COMMIT;
BEGIN;
SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims',
    '{"sub": "a1111111-0000-4000-8000-000000000001", "role": "authenticated"}', true) \gset
UPDATE users SET xp = 1000000 WHERE id = 'a1111111-0000-4000-8000-000000000001';
ROLLBACK;
BEGIN;
SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims',
    '{"sub": "a1111111-0000-4000-8000-000000000001", "role": "authenticated"}', true) \gset
SELECT nura_add_xp('a1111111-0000-4000-8000-000000000001', 1000);
ROLLBACK;
BEGIN;
SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims',
    '{"sub": "a1111111-0000-4000-8000-000000000001", "role": "authenticated"}', true) \gset
SELECT count(*) FROM user_sync_logs;
ROLLBACK;
BEGIN;
SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims',
    '{"sub": "a1111111-0000-4000-8000-000000000001", "role": "authenticated"}', true) \gset
SELECT count(*) FROM user_id_aliases;
ROLLBACK;
BEGIN;
SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims',
    '{"sub": "a1111111-0000-4000-8000-000000000001", "role": "authenticated"}', true) \gset
SELECT count(*) FROM nura_migration_runs;
ROLLBACK;
BEGIN;
SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims',
    '{"sub": "a1111111-0000-4000-8000-000000000001", "role": "authenticated"}', true) \gset
SELECT nura_reconcile();
ROLLBACK;
BEGIN;
SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims',
    '{"sub": "a1111111-0000-4000-8000-000000000001", "role": "authenticated"}', true) \gset
SELECT nura_upsert_service_profile('a1111111-0000-4000-8000-000000000001', 'chat', NULL, '{"tier": "gold"}');
ROLLBACK;

-- A JWT of a user deleted from auth.users (still valid until it expires) brings nothing back.
BEGIN;
SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims',
    '{"sub": "d4444444-0000-4000-8000-000000000004", "role": "authenticated"}', true) \gset
SELECT nura_sync_user('{"id": "d4444444-0000-4000-8000-000000000004", "email": "ghost@example.com"}');
ROLLBACK;

-- anon: nothing at all.
BEGIN;
SELECT set_config('role', 'anon', true) \gset
SELECT count(*) FROM users;
ROLLBACK;
BEGIN;
SELECT set_config('role', 'anon', true) \gset
SELECT nura_get_user('a1111111-0000-4000-8000-000000000001');
ROLLBACK;
BEGIN;
SELECT set_config('role', 'anon', true) \gset
SELECT nura_sync_user('{"id": "a1111111-0000-4000-8000-000000000001"}');
ROLLBACK;
-- What anon and authenticated may execute, in all (nura_cutover_viewer: everyone may, a switched
-- legacy table's view calls it as its reader).
SELECT r.rolname, string_agg(p.proname, ', ' ORDER BY p.proname) AS may_execute
FROM pg_proc p
JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'nura_users'
CROSS JOIN pg_roles r
WHERE r.rolname IN ('anon', 'authenticated') AND has_function_privilege(r.oid, p.oid, 'EXECUTE')
GROUP BY r.rolname ORDER BY r.rolname;

-- service_role: everything.
BEGIN;
SELECT set_config('role', 'service_role', true) \gset
SELECT count(*) AS users, (SELECT count(*) > 0 FROM user_sync_logs) AS reads_logs FROM users;
SELECT nura_add_xp('b2222222-0000-4000-8000-000000000002', 50) AS xp;
SELECT nura_update_profile('b2222222-0000-4000-8000-000000000002', '{"bio": "set by the backend"}')->>'sync_type';
SELECT nura_upsert_service_profile('b2222222-0000-4000-8000-000000000002', 'voice', NULL,
    '{"call_history": [{"at": "2026-11-25", "seconds": 42}]}')->'service_metadata' AS voice_metadata;
SELECT nura_set_active('b2222222-0000-4000-8000-000000000002', false)->>'is_active' AS active;
SELECT nura_reconcile(true);
COMMIT;

-- Hostile callers: their own schema first on search_path with look-alike functions, and a temp
-- table named users. The extension still reads and writes its own tables and calls only
-- pg_catalog's functions.
CREATE ROLE nura_hostile NOLOGIN;
GRANT authenticated TO nura_hostile;
CREATE SCHEMA hostile AUTHORIZATION nura_hostile;
SET ROLE nura_hostile;
CREATE FUNCTION hostile.lower(text) RETURNS text LANGUAGE sql AS $$ SELECT 'pwned' $$;
CREATE FUNCTION hostile.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT '1999-01-01'::timestamptz $$;
CREATE FUNCTION hostile.jsonb_build_object(VARIADIC text[]) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{"pwned": true}'::jsonb $$;
CREATE FUNCTION hostile.to_jsonb(anyelement) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{"pwned": true}'::jsonb $$;
CREATE TEMP TABLE users (id uuid, email text, full_name text);
INSERT INTO pg_temp.users VALUES ('a1111111-0000-4000-8000-000000000001', 'fake@evil.example', 'Fake');
SET search_path = hostile, pg_temp, public;
BEGIN;
SELECT set_config('request.jwt.claims', '{"sub": "a1111111-0000-4000-8000-000000000001"}', true) \gset
SELECT nura_get_user('a1111111-0000-4000-8000-000000000001')->>'email' AS email;
SELECT nura_user_for_chat('a1111111-0000-4000-8000-000000000001') ? 'pwned' AS chat_pwned;
SELECT nura_update_profile('a1111111-0000-4000-8000-000000000001',
    $payload${"full_name": "Robert'); DROP TABLE users; --", "bio": "<script>alert(1)</script> $1 %s \\x00 ' \" ;",
       "display_name": "$$; SELECT 1; $$ \\ E'\\n' %I", "avatar_url": "https://x.example/a.png?q=' OR '1'='1",
       "privacy_settings": {"note'; DROP": "\"; --"}}$payload$)->>'sync_type';
COMMIT;
RESET search_path;
RESET ROLE;
-- The real row holds the text verbatim; the temp table and the hostile functions were untouched.
\x on
SELECT full_name, bio, display_name, avatar_url, privacy_settings, updated_at > '2000-01-01' AS real_now
FROM public.users WHERE id = 'a1111111-0000-4000-8000-000000000001';
\x off
SELECT count(*) AS real_users_rows FROM public.users;
SELECT email, full_name FROM pg_temp.users;

\c nura_regress
DROP DATABASE nura_security;
DROP ROLE nura_hostile;
