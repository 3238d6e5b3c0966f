-- Failure isolation (docs/sync.md): a sync that fails never fails the auth write — it is rolled
-- back alone and logged with its SQLSTATE; nura_check_consistency sees the gap and
-- nura_reconcile closes it once the cause is gone. With on_sync_error = raise the auth write fails.
DROP DATABASE IF EXISTS nura_failures;
CREATE DATABASE nura_failures TEMPLATE template0;
\c nura_failures
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixture :abs_srcdir '/../fixtures/supabase_auth.sql'
\set watch :abs_srcdir '/../fixtures/log_watch.sql'
\set ECHO none
\i :fixture
CREATE EXTENSION nura_users;
\i :watch
\set ECHO all

-- Inject a fault: users refuses one domain (think of a constraint added by someone else).
ALTER TABLE users ADD CONSTRAINT test_blocked_domain CHECK (email NOT LIKE '%@blocked.example');

SET ROLE supabase_auth_admin;
SET search_path = auth;
SELECT gotrue_signup('dan@blocked.example', NULL, '{"full_name": "Dan"}', 'dddddddd-0000-4000-8000-000000000001');
SELECT gotrue_signup('eva@example.com', NULL, '{}', 'dddddddd-0000-4000-8000-000000000002');
RESET search_path;
RESET ROLE;
-- Both signups committed in auth.users; only the second reached users.
SELECT email FROM auth.users ORDER BY email;
SELECT email FROM users ORDER BY email;
SELECT user_id, source, sync_type, success, sqlstate, error_message FROM new_logs();

-- A later auth update of the unsynced user fails the same way, and is logged again.
SET ROLE supabase_auth_admin;
SET search_path = auth;
UPDATE "users" AS users SET email_confirmed_at = '2026-11-25 10:05:00+00', updated_at = now()
WHERE users.id = 'dddddddd-0000-4000-8000-000000000001';
RESET search_path;
RESET ROLE;
SELECT user_id, sync_type, success, sqlstate FROM new_logs();

-- Drift of other kinds: an auth-owned field changed behind the sync's back, and a users row
-- left behind by an auth user that is gone.
UPDATE users SET email_confirmed_at = '2020-01-01 00:00:00+00', is_anonymous = true
WHERE id = 'dddddddd-0000-4000-8000-000000000002';
INSERT INTO users (id, email, auth_synced_at)
VALUES ('dddddddd-0000-4000-8000-000000000003', 'ghost@example.com', now());

SELECT user_id, problem, detail FROM nura_check_consistency() ORDER BY user_id;
SELECT nura_reconcile(dry_run => true);
-- While the cause is there, reconcile repairs what it can and counts what it cannot.
SELECT nura_reconcile();
SELECT user_id, source, sync_type, success, sqlstate FROM new_logs();
SELECT user_id, problem FROM nura_check_consistency() ORDER BY user_id;

-- The cause removed, reconcile closes the gap.
ALTER TABLE users DROP CONSTRAINT test_blocked_domain;
SELECT nura_reconcile();
SELECT user_id, source, sync_type, changed_fields FROM new_logs();
SELECT id, email, full_name, email_confirmed_at IS NOT NULL AS confirmed FROM users ORDER BY email;
SELECT count(*) AS problems FROM nura_check_consistency();

-- on_sync_error = raise: the auth write fails with the sync's SQLSTATE and a message naming it.
ALTER TABLE users ADD CONSTRAINT test_raise_domain CHECK (email NOT LIKE '%@raise.example');
SET nura_users.on_sync_error = 'raise';
SHOW nura_users.on_sync_error;
SET ROLE supabase_auth_admin;
SET search_path = auth;
SELECT gotrue_signup('fay@raise.example', NULL, '{}', 'dddddddd-0000-4000-8000-000000000004');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
RESET search_path;
RESET ROLE;
RESET nura_users.on_sync_error;
SELECT count(*) AS fay_in_auth FROM auth.users WHERE id = 'dddddddd-0000-4000-8000-000000000004';

-- Settings are SUSET with lower-case values, and misspelt ones are refused.
SET nura_users.on_sync_error = 'explode';
SET nura_users.log_payload = 'full';
SET ROLE authenticated;
SET nura_users.on_sync_error = 'raise';
RESET ROLE;
SELECT name, setting, context, enumvals FROM pg_settings WHERE name LIKE 'nura_users.%' ORDER BY name;

\c nura_regress
DROP DATABASE nura_failures;
