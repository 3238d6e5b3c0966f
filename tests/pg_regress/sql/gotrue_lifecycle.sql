-- The whole GoTrue lifecycle of a user, statement by statement as GoTrue issues it (as
-- supabase_auth_admin with search_path = auth): after each step, the users row and what the
-- sync logged. docs/sync.md.
DROP DATABASE IF EXISTS nura_lifecycle;
CREATE DATABASE nura_lifecycle TEMPLATE template0;
\c nura_lifecycle
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixture :abs_srcdir '/../fixtures/supabase_auth.sql'
\set watch :abs_srcdir '/../fixtures/log_watch.sql'
\set ECHO none
\i :fixture
CREATE EXTENSION nura_users;
\i :watch
\set ECHO all
SET TIME ZONE 'UTC';
\pset null '(null)'

-- 1. Sign-up: the INSERT of all 33 columns, role '' and every token ''.
SET ROLE supabase_auth_admin;
SET search_path = auth;
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
    '{"name": "Ana Lima", "picture": "https://img.example/ana.png"}',
    '2026-11-25 10:00:00+00', '2026-11-25 10:00:00+00', NULL, NULL, '', '', NULL, '', 0, NULL, '',
    NULL, false, NULL, false);
RESET search_path;
RESET ROLE;
SELECT id, email, full_name, avatar_url, email_confirmed_at, is_active FROM users;
SELECT service_type FROM user_service_profiles ORDER BY 1;
SELECT * FROM new_logs();

-- 2. GoTrue sets the role, then merges identity data into the metadata: nothing to sync.
SET ROLE supabase_auth_admin;
SET search_path = auth;
UPDATE "users" AS users SET role = 'authenticated', updated_at = '2026-11-25 10:00:01+00'
WHERE users.id = '11111111-1111-4111-8111-111111111111';
UPDATE "users" AS users SET raw_user_meta_data = raw_user_meta_data ||
    '{"sub": "11111111-1111-4111-8111-111111111111", "email": "ana@example.com", "email_verified": false}',
    updated_at = '2026-11-25 10:00:02+00'
WHERE users.id = '11111111-1111-4111-8111-111111111111';
RESET search_path;
RESET ROLE;
SELECT * FROM new_logs();

-- 3. Confirmation.
SET ROLE supabase_auth_admin;
SET search_path = auth;
UPDATE "users" AS users SET confirmation_token = '', email_confirmed_at = '2026-11-25 10:05:00+00',
    updated_at = '2026-11-25 10:05:00+00' WHERE users.id = '11111111-1111-4111-8111-111111111111';
RESET search_path;
RESET ROLE;
SELECT email_confirmed_at FROM users;
SELECT * FROM new_logs();

-- 4. Sign-ins update users but are not logged by default...
SET ROLE supabase_auth_admin;
SET search_path = auth;
UPDATE "users" AS users SET last_sign_in_at = '2026-11-25 10:06:00+00',
    updated_at = '2026-11-25 10:06:00+00' WHERE users.id = '11111111-1111-4111-8111-111111111111';
UPDATE "users" AS users SET last_sign_in_at = '2026-11-25 11:06:00+00',
    updated_at = '2026-11-25 11:06:00+00' WHERE users.id = '11111111-1111-4111-8111-111111111111';
RESET search_path;
RESET ROLE;
SELECT last_sign_in_at FROM users;
SELECT * FROM new_logs();
-- ...unless nura_users.log_sign_ins is on.
SET nura_users.log_sign_ins = on;
SET ROLE supabase_auth_admin;
SET search_path = auth;
UPDATE "users" AS users SET last_sign_in_at = '2026-11-25 12:06:00+00',
    updated_at = '2026-11-25 12:06:00+00' WHERE users.id = '11111111-1111-4111-8111-111111111111';
RESET search_path;
RESET ROLE;
RESET nura_users.log_sign_ins;
SELECT * FROM new_logs();

-- 5. The user edits their name; an OAuth login re-merges provider metadata: the edit stays.
SELECT nura_sync_user('{"id": "11111111-1111-4111-8111-111111111111", "full_name": "Ana L."}')->>'sync_type';
SET ROLE supabase_auth_admin;
SET search_path = auth;
UPDATE "users" AS users SET raw_user_meta_data = raw_user_meta_data || '{"name": "Ana Provider"}',
    updated_at = now() WHERE users.id = '11111111-1111-4111-8111-111111111111';
RESET search_path;
RESET ROLE;
SELECT full_name FROM users;
SELECT * FROM new_logs();

-- 6. An email change: the request (pending email_change) does not sync; the confirmation does.
SET ROLE supabase_auth_admin;
SET search_path = auth;
UPDATE "users" AS users SET email_change_token_current = 'tok1', email_change_token_new = 'tok2',
    email_change = 'ana.lima@example.com', email_change_sent_at = now(),
    email_change_confirm_status = 0, updated_at = now()
WHERE users.id = '11111111-1111-4111-8111-111111111111';
RESET search_path;
RESET ROLE;
SELECT email FROM users;
SELECT * FROM new_logs();
SET ROLE supabase_auth_admin;
SET search_path = auth;
UPDATE "users" AS users SET email = 'ana.lima@example.com', email_change = '',
    email_change_token_current = '', email_change_token_new = '', email_change_confirm_status = 0,
    updated_at = now() WHERE users.id = '11111111-1111-4111-8111-111111111111';
RESET search_path;
RESET ROLE;
SELECT email FROM users;
SELECT * FROM new_logs();

-- 7. A ban and its lifting.
SET ROLE supabase_auth_admin;
SET search_path = auth;
UPDATE "users" AS users SET banned_until = '2027-01-01 00:00:00+00', updated_at = now()
WHERE users.id = '11111111-1111-4111-8111-111111111111';
UPDATE "users" AS users SET banned_until = NULL, updated_at = now()
WHERE users.id = '11111111-1111-4111-8111-111111111111';
RESET search_path;
RESET ROLE;
SELECT * FROM new_logs();

-- 8. A phone-only and an anonymous sign-up: no email at all.
SET ROLE supabase_auth_admin;
SET search_path = auth;
SELECT gotrue_signup(NULL, '15551234567', '{}', '22222222-2222-4222-8222-222222222222');
SELECT gotrue_signup(NULL, NULL, '{}', '33333333-3333-4333-8333-333333333333', p_is_anonymous => true);
RESET search_path;
RESET ROLE;
SELECT id, email, phone_number, is_anonymous FROM users
WHERE id IN ('22222222-2222-4222-8222-222222222222', '33333333-3333-4333-8333-333333333333') ORDER BY id;
SELECT user_id, sync_type, changed_fields FROM new_logs();

-- 9. Soft delete (GoTrue replaces email and phone with hashes, then empties the metadata):
-- the row stays, deactivated, without personal data, in users and in its earlier log rows.
SET ROLE supabase_auth_admin;
SET search_path = auth;
UPDATE "users" AS users SET email = 'tN1hZ3mQ-7g3kUqj0hBqzr8yWq1c8m2Xn5v4l0pA9sE',
    phone = 'Xk2pQ7rT9wLm3Nb', encrypted_password = NULL, deleted_at = '2026-11-25 13:00:00+00',
    updated_at = now() WHERE users.id = '11111111-1111-4111-8111-111111111111';
UPDATE "users" AS users SET raw_user_meta_data = '{}', updated_at = now()
WHERE users.id = '11111111-1111-4111-8111-111111111111';
RESET search_path;
RESET ROLE;
SELECT email, phone_number, full_name, avatar_url, deleted_at, is_active FROM users
WHERE id = '11111111-1111-4111-8111-111111111111';
SELECT * FROM new_logs();
SELECT count(*) AS log_rows_with_personal_data FROM user_sync_logs
WHERE user_id = '11111111-1111-4111-8111-111111111111'
  AND (before_data ?| '{email,phone_number,full_name,display_name,bio,avatar_url}'
       OR after_data ?| '{email,phone_number,full_name,display_name,bio,avatar_url}');

-- 10. Hard delete: the users row and its profiles go; the deletion is logged.
SET ROLE supabase_auth_admin;
SET search_path = auth;
DELETE FROM "users" AS users WHERE users.id = '22222222-2222-4222-8222-222222222222';
RESET search_path;
RESET ROLE;
SELECT (SELECT count(*) FROM users WHERE id = '22222222-2222-4222-8222-222222222222') AS users_rows,
       (SELECT count(*) FROM user_service_profiles WHERE user_id = '22222222-2222-4222-8222-222222222222') AS profiles;
SELECT user_id, sync_type, changed_fields FROM new_logs();
SELECT count(*) AS log_rows_with_personal_data FROM user_sync_logs
WHERE user_id = '22222222-2222-4222-8222-222222222222'
  AND (before_data ?| '{email,phone_number,full_name,display_name,bio,avatar_url}'
       OR after_data ?| '{email,phone_number,full_name,display_name,bio,avatar_url}');

-- 11. Adoption: a user created through the API (or a migration) signs up in auth later with
-- the same address in another letter case. The row is re-keyed to the auth id, keeps its
-- data and profiles, and the old id becomes an alias.
SELECT nura_sync_user('{"id": "44444444-4444-4444-8444-444444444444", "email": "Legacy.User@Example.com",
                        "full_name": "Legacy User", "bio": "from the old chat app"}')->>'sync_type';
UPDATE user_service_profiles SET service_preferences = '{"theme": "dark"}'
WHERE user_id = '44444444-4444-4444-8444-444444444444' AND service_type = 'chat';
SET ROLE supabase_auth_admin;
SET search_path = auth;
SELECT gotrue_signup('legacy.user@example.com', NULL, '{"full_name": "Provider Name"}',
                     '55555555-5555-4555-8555-555555555555');
RESET search_path;
RESET ROLE;
SELECT id, email, full_name, bio FROM users WHERE lower(email) = 'legacy.user@example.com';
SELECT user_id, service_type, service_preferences FROM user_service_profiles
WHERE user_id IN ('44444444-4444-4444-8444-444444444444', '55555555-5555-4555-8555-555555555555')
ORDER BY service_type;
SELECT alias_id, source, user_id FROM user_id_aliases;
SELECT user_id, source, sync_type, changed_fields FROM new_logs();

SELECT * FROM nura_check_consistency();

\c nura_regress
DROP DATABASE nura_lifecycle;
