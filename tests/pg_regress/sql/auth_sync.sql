-- A Supabase database: auth.users exists before CREATE EXTENSION, so the sync triggers attach
-- themselves; GoTrue's writes (as supabase_auth_admin, search_path = auth) reach users inside
-- their own transaction; DROP EXTENSION needs a detach or CASCADE and leaves auth.users working.
DROP DATABASE IF EXISTS nura_auth_sync;
CREATE DATABASE nura_auth_sync TEMPLATE template0;
\c nura_auth_sync
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixture :abs_srcdir '/../fixtures/supabase_auth.sql'
\set ECHO none
\i :fixture
\set ECHO all

-- Someone else's trigger on auth.users, which must survive everything below.
CREATE TABLE public.signup_audit (id uuid, op text);
CREATE FUNCTION public.audit_signup() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = '' AS $$
BEGIN
    INSERT INTO public.signup_audit VALUES (coalesce(NEW.id, OLD.id), TG_OP);
    RETURN NULL;
END $$;
CREATE TRIGGER on_auth_user_created AFTER INSERT ON auth.users
FOR EACH ROW EXECUTE FUNCTION public.audit_signup();

CREATE EXTENSION nura_users;

SELECT tgname, tgfoid::regprocedure AS function, tgenabled
FROM pg_trigger WHERE tgrelid = 'auth.users'::regclass AND NOT tgisinternal ORDER BY tgname;
-- Attach is idempotent.
SELECT nura_attach_auth_sync();

-- GoTrue's sign-up, statement by statement (docs/sync.md), as GoTrue's connection is set up.
-- supabase_auth_admin has no privileges on the extension's tables.
SELECT has_table_privilege('supabase_auth_admin', 'public.users', 'INSERT') AS auth_admin_may_insert_users;
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
VALUES ('00000000-0000-0000-0000-000000000000', '11111111-1111-4111-8111-111111111111',
    'authenticated', '', 'ana@example.com', '$2a$10$abcdefghijklmnopqrstuv', NULL, NULL, '', NULL,
    '', NULL, '', '', NULL, NULL, '{"provider": "email", "providers": ["email"]}',
    '{"full_name": "Ana Lima", "avatar_url": "https://img.example/ana.png"}',
    '2026-11-25 10:00:00+00', '2026-11-25 10:00:00+00', NULL, NULL, '', '', NULL, '', 0, NULL, '',
    NULL, false, NULL, false);
UPDATE "users" AS users SET role = 'authenticated', updated_at = '2026-11-25 10:00:01+00'
WHERE users.id = '11111111-1111-4111-8111-111111111111';
UPDATE "users" AS users SET raw_user_meta_data = raw_user_meta_data ||
    '{"sub": "11111111-1111-4111-8111-111111111111", "email": "ana@example.com", "email_verified": false}',
    updated_at = '2026-11-25 10:00:02+00'
WHERE users.id = '11111111-1111-4111-8111-111111111111';
-- Inside the same transaction the users row is already there (looked at as the superuser).
RESET ROLE;
SELECT id, email, full_name, avatar_url, email_confirmed_at IS NULL AS unconfirmed, is_active
FROM public.users;
SET ROLE supabase_auth_admin;
COMMIT;
-- Confirmation, then a sign-in.
UPDATE "users" AS users SET confirmation_token = '', email_confirmed_at = '2026-11-25 10:05:00+00',
    updated_at = '2026-11-25 10:05:00+00' WHERE users.id = '11111111-1111-4111-8111-111111111111';
UPDATE "users" AS users SET last_sign_in_at = '2026-11-25 10:06:00+00',
    updated_at = '2026-11-25 10:06:00+00' WHERE users.id = '11111111-1111-4111-8111-111111111111';
-- A phone-only and an anonymous sign-up (no email).
SELECT gotrue_signup(NULL, '15551234567', '{}', '22222222-2222-4222-8222-222222222222');
SELECT gotrue_signup(NULL, NULL, '{}', '33333333-3333-4333-8333-333333333333', p_is_anonymous => true);
RESET search_path;
RESET ROLE;

SELECT id, email, phone_number, full_name, email_confirmed_at, last_sign_in_at, is_anonymous,
       is_active, auth_synced_at IS NOT NULL AS auth_synced
FROM users ORDER BY id;
SELECT id, op FROM signup_audit ORDER BY id;

-- The user edits their name; an OAuth login later merges provider metadata: the edit stays.
UPDATE users SET full_name = 'Ana L.' WHERE id = '11111111-1111-4111-8111-111111111111';
SET ROLE supabase_auth_admin;
SET search_path = auth;
UPDATE "users" AS users SET raw_user_meta_data = raw_user_meta_data || '{"full_name": "Ana Provider"}',
    updated_at = now() WHERE users.id = '11111111-1111-4111-8111-111111111111';
-- An email change (confirmed), then GoTrue's soft delete of the phone user.
UPDATE "users" AS users SET email = 'ana.lima@example.com', email_change = '',
    email_change_token_current = '', email_change_token_new = '', email_change_confirm_status = 0,
    updated_at = now() WHERE users.id = '11111111-1111-4111-8111-111111111111';
UPDATE "users" AS users SET email = 'tN1hZ3mQ-7g3kUqj0hBqzr8yWq1c8m2Xn5v4l0pA9sE',
    phone = 'Xk2pQ7rT9wLm3Nb', encrypted_password = NULL, deleted_at = '2026-11-25 11:00:00+00',
    updated_at = now() WHERE users.id = '22222222-2222-4222-8222-222222222222';
UPDATE "users" AS users SET raw_user_meta_data = '{}', updated_at = now()
WHERE users.id = '22222222-2222-4222-8222-222222222222';
-- A hard delete of the anonymous user.
DELETE FROM "users" AS users WHERE users.id = '33333333-3333-4333-8333-333333333333';
RESET search_path;
RESET ROLE;

SELECT id, email, phone_number, full_name, deleted_at, is_active FROM users ORDER BY id;

-- The triggers are not extension members, so a plain DROP EXTENSION is refused...
DROP EXTENSION nura_users;
-- ...CASCADE drops the extension and only our triggers.
DROP EXTENSION nura_users CASCADE;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'auth.users'::regclass AND NOT tgisinternal;
SELECT to_regclass('public.users') AS users_table;

-- auth.users stays writable for GoTrue.
SET ROLE supabase_auth_admin;
SET search_path = auth;
SELECT gotrue_signup('cy@example.com', NULL, '{}', '44444444-4444-4444-8444-444444444444');
RESET search_path;
RESET ROLE;
SELECT count(*) AS auth_users FROM auth.users;

-- Re-created, the extension attaches again; detach makes a plain DROP possible.
CREATE EXTENSION nura_users;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'auth.users'::regclass AND NOT tgisinternal ORDER BY 1;
SELECT count(*) AS users_copied_at_create FROM users;
SELECT nura_detach_auth_sync();
SELECT nura_detach_auth_sync();
DROP EXTENSION nura_users;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'auth.users'::regclass AND NOT tgisinternal;

\c nura_regress
DROP DATABASE nura_auth_sync;
