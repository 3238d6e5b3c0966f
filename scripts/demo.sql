-- The story make demo tells, on a database that looks like a Supabase project.
\set QUIET on
\pset footer off
\echo
\echo '== A Supabase database: auth.users exists (owned by supabase_auth_admin, RLS on).'
\echo '   CREATE EXTENSION nura_users creates the users tables and attaches the sync triggers.'
CREATE EXTENSION nura_users;
SELECT tgname AS "trigger on auth.users",
       substring(pg_get_triggerdef(oid) FROM '(AFTER \w+)') AS fires
FROM pg_trigger WHERE tgrelid = 'auth.users'::regclass AND NOT tgisinternal ORDER BY 1;

\echo '== GoTrue signs Ana up: it connects as supabase_auth_admin with search_path = auth,'
\echo '   which has no rights on the users table, and writes auth.users in one transaction.'
SET ROLE supabase_auth_admin;
SET search_path = auth;
BEGIN;
INSERT INTO "users" (instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
    invited_at, confirmation_token, confirmation_sent_at, recovery_token, recovery_sent_at,
    email_change_token_new, email_change, email_change_sent_at, last_sign_in_at,
    raw_app_meta_data, raw_user_meta_data, created_at, updated_at, phone, phone_confirmed_at,
    phone_change, phone_change_token, phone_change_sent_at, email_change_token_current,
    email_change_confirm_status, banned_until, reauthentication_token, reauthentication_sent_at,
    is_sso_user, deleted_at, is_anonymous)
VALUES ('00000000-0000-0000-0000-000000000000', 'a0a0a0a0-0000-4000-8000-000000000001',
    'authenticated', '', 'ana@example.com', '$2a$10$abcdefghijklmnopqrstuv', NULL, NULL, '', NULL,
    '', NULL, '', '', NULL, NULL, '{"provider": "email", "providers": ["email"]}',
    '{"full_name": "Ana Lima", "avatar_url": "https://img.example/ana.png"}',
    now(), now(), '15551234567', NULL, '', '', NULL, '', 0, NULL, '', NULL, false, NULL, false);
UPDATE "users" AS users SET role = 'authenticated', updated_at = now()
WHERE users.id = 'a0a0a0a0-0000-4000-8000-000000000001';
UPDATE "users" AS users SET confirmation_token = '', email_confirmed_at = now(), updated_at = now()
WHERE users.id = 'a0a0a0a0-0000-4000-8000-000000000001';
COMMIT;
RESET search_path;
RESET ROLE;

\echo '== The users row, written by the trigger inside that same transaction:'
\x on
SELECT id, email, phone_number, full_name, avatar_url, email_confirmed_at IS NOT NULL AS email_confirmed,
       is_anonymous, is_active, auth_synced_at IS NOT NULL AS synced_from_auth
FROM users;
\x off

\echo '== Confirmation and a sign-in: auth-owned fields follow; every change is in the sync log.'
SET ROLE supabase_auth_admin;
SET search_path = auth;
UPDATE "users" AS users SET last_sign_in_at = now(), updated_at = now()
WHERE users.id = 'a0a0a0a0-0000-4000-8000-000000000001';
RESET search_path;
RESET ROLE;
SELECT source, sync_type, changed_fields FROM user_sync_logs ORDER BY id;

\echo '== The browser edits the profile through PostgREST (role authenticated, JWT sub = Ana):'
BEGIN;
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub": "a0a0a0a0-0000-4000-8000-000000000001", "role": "authenticated"}', true) \g /dev/null
SELECT nura_sync_user('{"id": "a0a0a0a0-0000-4000-8000-000000000001", "display_name": "ana",
                        "email": "someone.else@example.com"}') #- '{user}' AS result;
SELECT nura_upsert_service_profile('a0a0a0a0-0000-4000-8000-000000000001', 'chat', '{"theme": "dark"}')
    -> 'service_preferences' AS "her chat preferences";
\echo '   ...and may not touch anybody else:'
SELECT nura_sync_user('{"id": "b0b0b0b0-0000-4000-8000-000000000002", "display_name": "mallory"}') AS result;
COMMIT;

\echo '== What the chat, voice and memory services read (instead of their own user tables):'
SELECT nura_user_for_chat('a0a0a0a0-0000-4000-8000-000000000001') AS chat;
SELECT nura_user_for_voice('a0a0a0a0-0000-4000-8000-000000000001') AS voice;
SELECT nura_user_for_memory('a0a0a0a0-0000-4000-8000-000000000001') AS memory;

\echo '== A sync that fails does not fail the signup. Someone added a constraint to users that'
\echo '   rejects a domain; GoTrue signs Bob up there:'
ALTER TABLE users ADD CONSTRAINT demo_blocked CHECK (email NOT LIKE '%@blocked.example');
SET ROLE supabase_auth_admin;
SET search_path = auth;
SELECT gotrue_signup('bob@blocked.example', NULL, '{"full_name": "Bob"}', 'b0b0b0b0-0000-4000-8000-000000000002') AS "signup committed for";
RESET search_path;
RESET ROLE;
SELECT source, sync_type, success, sqlstate, error_message FROM user_sync_logs
WHERE NOT success AND source = 'supabase_auth';
\echo '   nura_check_consistency() sees the gap:'
SELECT * FROM nura_check_consistency();
\echo '   The constraint goes; nura_reconcile() repairs it:'
ALTER TABLE users DROP CONSTRAINT demo_blocked;
SELECT nura_reconcile();
SELECT count(*) AS problems_left FROM nura_check_consistency();
SELECT id, email, full_name FROM users ORDER BY email;

\echo '== nura_sync_stats(): per source, from the log'
SELECT source, attempts, succeeded, failed, round(success_rate::numeric, 2) AS success_rate,
       round(avg_ms::numeric, 3) AS avg_ms, round(p95_ms::numeric, 3) AS p95_ms
FROM nura_sync_stats();
