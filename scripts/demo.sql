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
