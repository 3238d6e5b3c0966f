-- One user's data fails at worst that user's sync (docs/sync.md): never another user's, the
-- consistency check, reconcile, the migration or verify. Adoption merges and records what it
-- replaces; email case folding is PostgreSQL's lower() everywhere; a changed auth id moves the
-- user; an auth user reaching the email of a row no auth user owns adopts it. Each case below
-- failed on 0.5.0.
DROP DATABASE IF EXISTS nura_robust;
CREATE DATABASE nura_robust TEMPLATE template0;
\c nura_robust
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixture :abs_srcdir '/../fixtures/supabase_auth.sql'
\set legacy :abs_srcdir '/../fixtures/legacy_tables.sql'
\set legacy_schema public
\set ECHO none
\i :fixture
SET client_min_messages = warning;
\i :legacy
RESET client_min_messages;
\set ECHO all
CREATE EXTENSION nura_users;
-- As GoTrue writes auth.users.
CREATE PROCEDURE as_gotrue(sql text) LANGUAGE plpgsql AS $$
BEGIN
    SET LOCAL ROLE supabase_auth_admin;
    SET LOCAL search_path = auth;
    EXECUTE sql;
    RESET ROLE;
    RESET search_path;
END $$;
-- A jsonb nested deeper than the 128 levels a Value is read to.
CREATE FUNCTION deep(levels int) RETURNS jsonb LANGUAGE sql
AS $$ SELECT (repeat('[', levels) || repeat(']', levels))::jsonb $$;

-- 1. Deeply nested user metadata: any user can set it through signUp/updateUser.
SELECT auth.gotrue_signup('deep@example.com', NULL, '{"full_name": "Dee Deep"}',
    'd0000000-0000-4000-8000-000000000001') IS NOT NULL AS signed_up;
SELECT auth.gotrue_signup('bystander@example.com', NULL, '{}',
    'd0000000-0000-4000-8000-000000000002') IS NOT NULL AS signed_up;
CALL as_gotrue($$UPDATE users SET raw_user_meta_data = raw_user_meta_data
    || jsonb_build_object('x', public.deep(130)) WHERE email = 'deep@example.com'$$);
-- The ban and, later, the soft delete are mirrored.
CALL as_gotrue($$UPDATE users SET banned_until = '2126-01-01 00:00+00' WHERE email = 'deep@example.com'$$);
SELECT full_name, banned_until FROM users WHERE id = 'd0000000-0000-4000-8000-000000000001';
-- A signup with deep metadata (and names beside it) syncs, names included.
SELECT auth.gotrue_signup('deep2@example.com', NULL,
    jsonb_build_object('name', 'Second Deep', 'x', deep(500), 'picture', deep(200),
                       'user_name', jsonb_build_object('k', deep(300)), 'n', 1e400::numeric)) IS NOT NULL AS signed_up;
SELECT full_name, display_name, avatar_url FROM users WHERE email = 'deep2@example.com';
-- The consistency check and reconcile run for everybody.
SELECT count(*) AS problems FROM nura_check_consistency();
SELECT nura_reconcile(true) ->> 'failed' AS dry_failed, nura_reconcile() ->> 'failed' AS failed;
-- The soft delete (GoTrue hashes email and phone, empties the metadata) clears personal data.
CALL as_gotrue($$UPDATE users SET deleted_at = now(), email = md5(email), phone = NULL,
    raw_user_meta_data = jsonb_build_object('x', public.deep(130)) WHERE email = 'deep@example.com'$$);
SELECT email, full_name, is_active, deleted_at IS NOT NULL AS deleted
FROM users WHERE id = 'd0000000-0000-4000-8000-000000000001';
SELECT count(*) AS failed_syncs FROM user_sync_logs WHERE NOT success;
-- A phone longer than users keeps (auth.users.phone is unbounded text) is left out, not a failure.
SELECT auth.gotrue_signup('longphone@example.com', repeat('9', 40)) IS NOT NULL AS signed_up;
CALL as_gotrue($$UPDATE users SET banned_until = '2126-01-01 00:00+00' WHERE email = 'longphone@example.com'$$);
SELECT phone_number, banned_until IS NOT NULL AS banned FROM users WHERE email = 'longphone@example.com';
-- Every column GoTrue may write, at its edges: an infinite ban, a sign-in at -infinity.
CALL as_gotrue($$UPDATE users SET banned_until = 'infinity' WHERE email = 'bystander@example.com'$$);
CALL as_gotrue($$UPDATE users SET last_sign_in_at = '-infinity' WHERE email = 'bystander@example.com'$$);
SELECT banned_until, last_sign_in_at FROM users WHERE email = 'bystander@example.com';
-- Payloads: deep user_metadata is not read beyond the names; a field that is stored and read
-- back (privacy_settings, service preferences) may nest 128 levels, deeper is refused naming it.
SELECT r ->> 'success' AS success, r -> 'user' ->> 'full_name' AS full_name
FROM nura_sync_user(jsonb_build_object('id', 'd0000000-0000-4000-8000-000000000009',
    'email', 'payload@example.com',
    'user_metadata', jsonb_build_object('full_name', 'From Payload', 'x', deep(400)))) r;
SELECT nura_update_profile('d0000000-0000-4000-8000-000000000009',
    jsonb_build_object('privacy_settings', jsonb_build_object('x', deep(200)))) -> 'error';
SELECT nura_update_profile('d0000000-0000-4000-8000-000000000009',
    jsonb_build_object('privacy_settings', jsonb_build_object('x', deep(100)))) ->> 'success' AS success;
SELECT nura_upsert_service_profile('d0000000-0000-4000-8000-000000000009', 'chat',
    jsonb_build_object('x', deep(127))) -> 'service_preferences' = jsonb_build_object('x', deep(127)) AS stored;
SELECT nura_upsert_service_profile('d0000000-0000-4000-8000-000000000009', 'chat',
    jsonb_build_object('x', deep(128)));
SELECT nura_upsert_service_profile('d0000000-0000-4000-8000-000000000009', 'chat', deep(3));
-- Even a users row holding a deeper privacy_settings (a hand-written UPDATE) leaves the check
-- and the migration working for everybody.
UPDATE users SET privacy_settings = jsonb_build_object('x', deep(300))
WHERE id = 'd0000000-0000-4000-8000-000000000009';
SELECT count(*) AS problems FROM nura_check_consistency();

-- 2. Adoption merges: the migrated phone survives a signup without one; a phone auth does
-- have wins, and the dropped one is a conflict issue; verify stays ok.
INSERT INTO chat_users (id, email, full_name, phone_number, created_at) VALUES
    ('c0000000-0000-4000-8000-000000000001', 'keep@example.com', 'Kept Phone', '+49 151 1111111', '2024-01-01'),
    ('c0000000-0000-4000-8000-000000000002', 'swap@example.com', 'Swapped Phone', '+49 151 2222222', '2024-01-01'),
    ('c0000000-0000-4000-8000-000000000003', 'ΟΔΥΣ@example.com', 'Odys Upper', NULL, '2024-01-01'),
    ('c0000000-0000-4000-8000-000000000004', 'οδυσ@example.com', NULL, NULL, '2024-01-02'),
    ('c0000000-0000-4000-8000-000000000005', 'later@example.com', 'Later Person', '+49 151 5555555', '2024-01-01');
-- An auth user with deep metadata and no users row yet (signed up while the sync was detached):
-- the migration's backfill gives it one.
SELECT nura_detach_auth_sync();
SELECT auth.gotrue_signup('detached@example.com', NULL,
    jsonb_build_object('full_name', 'Was Detached', 'x', deep(300))) IS NOT NULL AS signed_up;
SELECT nura_attach_auth_sync();
SET client_min_messages = warning;  -- the progress NOTICEs carry timings
SELECT nura_migrate_legacy(false, 100) -> 'sources' -> 'chat_users';
SELECT full_name FROM users WHERE email = 'detached@example.com';
SELECT field, dropped_value FROM nura_migration_issues ORDER BY id;
SELECT auth.gotrue_signup('keep@example.com') IS NOT NULL AS signed_up;
SELECT auth.gotrue_signup('swap@example.com', '4915199999') IS NOT NULL AS signed_up;
SELECT email, phone_number, full_name, xp, id::text LIKE 'c0000000%' AS kept_legacy_id
FROM users WHERE email IN ('keep@example.com', 'swap@example.com') ORDER BY email;
SELECT source_table, source_id, field, kept_value, dropped_value, reason
FROM nura_migration_issues WHERE kind = 'conflict' ORDER BY id;
SELECT v -> 'ok' AS ok, v -> 'mismatched' AS mismatched, v -> 'problems' AS problems
FROM nura_verify_migration() v;
-- The consistency check agrees: an auth row without a phone leaves the kept one alone.
SELECT count(*) AS problems FROM nura_check_consistency();
-- Removing the phone in auth removes it here too.
CALL as_gotrue($$UPDATE users SET phone = NULL WHERE email = 'swap@example.com'$$);
SELECT phone_number FROM users WHERE email = 'swap@example.com';

-- 3. Email case folding is PostgreSQL's lower(), as the unique index's: the Greek pair above
-- (Rust folds a word-final Σ to ς) is one person, with no email conflict.
SELECT lower('ΟΔΥΣ') AS sql_lower, count(*) AS users_with_it
FROM users WHERE lower(email) = lower('ΟΔΥΣ@example.com');
-- A signup of a non-ASCII address between two batches of a run that migrates it merges.
INSERT INTO chat_users (id, email, full_name, created_at) VALUES
    ('c0000000-0000-4000-8000-000000000006', 'ΒΣ@example.com', 'Beta Sigma', '2024-01-01'),
    ('c0000000-0000-4000-8000-000000000007', 'İnci@example.com', 'Inci', '2024-01-01');
SELECT nura_migration_begin(1, 'public') AS run \gset
SELECT nura_migration_step(:run) AS finished;  -- the backfill
SELECT nura_migration_step(:run) AS finished;  -- the plan
SELECT auth.gotrue_signup('βσ@example.com') IS NOT NULL AS signed_up;
SELECT auth.gotrue_signup('İnci@example.com') IS NOT NULL AS signed_up;
DO $$ BEGIN WHILE NOT nura_migration_step(currval('nura_migration_runs_id_seq')) LOOP END LOOP; END $$;
RESET client_min_messages;
SELECT status FROM nura_migration_runs WHERE id = :run;
SELECT email, full_name, (SELECT count(*) FROM auth.users a WHERE a.id = u.id) AS auth_backed
FROM users u WHERE full_name IN ('Beta Sigma', 'Inci') ORDER BY 2;
SELECT v -> 'ok' AS ok, v -> 'problems' AS problems FROM nura_verify_migration() v;

-- 4. A changed auth id moves the user: row, profiles, aliases, edits and log history.
SELECT auth.gotrue_signup('mover@example.com', NULL, '{}', 'e0000000-0000-4000-8000-000000000001') IS NOT NULL AS signed_up;
SELECT nura_update_profile('e0000000-0000-4000-8000-000000000001', '{"bio": "I move"}') ->> 'success' AS edited;
SELECT nura_add_xp('e0000000-0000-4000-8000-000000000001', 70) AS xp;
CALL as_gotrue($$UPDATE users SET id = 'e0000000-0000-4000-8000-000000000002' WHERE email = 'mover@example.com'$$);
SELECT id, bio, xp FROM users WHERE email = 'mover@example.com';
SELECT count(*) AS left_behind FROM users WHERE id = 'e0000000-0000-4000-8000-000000000001';
SELECT count(*) AS profiles FROM user_service_profiles WHERE user_id = 'e0000000-0000-4000-8000-000000000002';
SELECT nura_resolve_user_id('e0000000-0000-4000-8000-000000000001') AS resolves_to;
SELECT count(*) FILTER (WHERE user_id = 'e0000000-0000-4000-8000-000000000001') AS old_id_logs,
       count(*) FILTER (WHERE user_id = 'e0000000-0000-4000-8000-000000000002') > 2 AS history_moved
FROM user_sync_logs;
SELECT count(*) AS problems FROM nura_check_consistency();

-- A changed id that no trigger saw (the sync detached): reconcile moves the user to the new id
-- rather than delete the orphan and create an empty row.
SELECT nura_detach_auth_sync();
CALL as_gotrue($$UPDATE users SET id = 'e0000000-0000-4000-8000-000000000003' WHERE email = 'mover@example.com'$$);
SELECT nura_attach_auth_sync();
SELECT user_id, problem FROM nura_check_consistency() ORDER BY 2;
SELECT nura_reconcile(true) - 'dry_run' AS would;
SELECT nura_reconcile() - 'dry_run' AS reconciled;
SELECT id, bio, xp FROM users WHERE email = 'mover@example.com';
SELECT count(*) AS profiles FROM user_service_profiles WHERE user_id = 'e0000000-0000-4000-8000-000000000003';
SELECT count(*) AS problems FROM nura_check_consistency();
-- An account deleted and a new one signed up with its address while no trigger saw it: a new
-- person (the auth row is newer than the old row's last sync), who inherits nothing.
SELECT auth.gotrue_signup('recycled@example.com', NULL, '{}', 'e0000000-0000-4000-8000-000000000004') IS NOT NULL AS signed_up;
SELECT nura_update_profile('e0000000-0000-4000-8000-000000000004', '{"bio": "the first owner"}') ->> 'success' AS edited;
SELECT nura_detach_auth_sync();
DELETE FROM auth.users WHERE id = 'e0000000-0000-4000-8000-000000000004';
SELECT auth.gotrue_signup('recycled@example.com', NULL, '{}', 'e0000000-0000-4000-8000-000000000005') IS NOT NULL AS signed_up;
SELECT nura_attach_auth_sync();
SELECT nura_reconcile() - 'dry_run' AS reconciled;
SELECT id, bio FROM users WHERE email = 'recycled@example.com';

-- 5. Adoption on update: an anonymous user upgraded to the address of a migrated row, and a
-- user who changes email to that of a backend-made one, adopt those rows (merged into theirs).
SELECT auth.gotrue_signup(NULL, NULL, '{}', 'a0000000-0000-4000-8000-000000000001', true) IS NOT NULL AS anonymous;
SELECT nura_add_xp('a0000000-0000-4000-8000-000000000001', 5) AS anonymous_xp;
SELECT nura_upsert_service_profile('a0000000-0000-4000-8000-000000000001', 'chat', '{"theme": "dark"}') -> 'service_preferences';
SELECT nura_upsert_service_profile('c0000000-0000-4000-8000-000000000005', 'chat', '{"theme": "light", "font": "big"}') -> 'service_preferences';
CALL as_gotrue($$UPDATE users SET is_anonymous = false WHERE id = 'a0000000-0000-4000-8000-000000000001'$$);
CALL as_gotrue($$UPDATE users SET email = 'later@example.com' WHERE id = 'a0000000-0000-4000-8000-000000000001'$$);
SELECT id, email, full_name, phone_number, xp, is_anonymous FROM users WHERE email = 'later@example.com';
SELECT count(*) AS adopted_row_left FROM users WHERE id = 'c0000000-0000-4000-8000-000000000005';
SELECT nura_resolve_user_id('c0000000-0000-4000-8000-000000000005') AS resolves_to;
SELECT service_preferences FROM user_service_profiles
WHERE user_id = 'a0000000-0000-4000-8000-000000000001' AND service_type = 'chat';
SELECT sync_type, changed_fields FROM user_sync_logs
WHERE user_id = 'a0000000-0000-4000-8000-000000000001' ORDER BY id DESC LIMIT 1;
SELECT r ->> 'success' AS success FROM nura_sync_user('{"id": "b0000000-0000-4000-8000-000000000001",
    "email": "Backend.Made@example.com", "full_name": "Backend Made", "bio": "from the backend"}') r;
SELECT auth.gotrue_signup('changer@example.com', NULL, '{"full_name": "Changer"}',
    'a0000000-0000-4000-8000-000000000002') IS NOT NULL AS signed_up;
CALL as_gotrue($$UPDATE users SET email = 'backend.made@example.com' WHERE id = 'a0000000-0000-4000-8000-000000000002'$$);
SELECT id, email, full_name, bio FROM users WHERE lower(email) = 'backend.made@example.com';
SELECT nura_resolve_user_id('b0000000-0000-4000-8000-000000000001') AS resolves_to;
-- One person, two legacy chat rows under two addresses, with a column of their own (theme): the
-- signup adopts one, the change of email the other; both rows' columns stay in the profile and
-- verify stays ok.
INSERT INTO chat_users (id, email, full_name, phone_number, created_at, theme, privacy_settings) VALUES
    ('c0000000-0000-4000-8000-000000000008', 'first@example.com', 'Two Rows', NULL, '2024-01-01', 'blue', '{"a": 1}'),
    ('c0000000-0000-4000-8000-000000000009', 'second@example.com', 'Two Rows Other', '+49 151 9999999', '2024-01-01', 'green', '{"b": 2}');
SET client_min_messages = warning;
SELECT nura_migrate_legacy(false, 100) -> 'sources' -> 'chat_users' ->> 'migrated' AS migrated;
RESET client_min_messages;
SELECT auth.gotrue_signup('first@example.com', NULL, '{}', 'a0000000-0000-4000-8000-000000000003') IS NOT NULL AS signed_up;
CALL as_gotrue($$UPDATE users SET email = 'second@example.com' WHERE id = 'a0000000-0000-4000-8000-000000000003'$$);
SELECT email, full_name, phone_number, privacy_settings FROM users WHERE id = 'a0000000-0000-4000-8000-000000000003';
SELECT service_metadata -> 'legacy' AS legacy FROM user_service_profiles
WHERE user_id = 'a0000000-0000-4000-8000-000000000003' AND service_type = 'chat';
SELECT source_table, source_id, field, kept_value, dropped_value FROM nura_migration_issues
WHERE source_id IN ('c0000000-0000-4000-8000-000000000008', 'c0000000-0000-4000-8000-000000000009') ORDER BY id;
-- An email removed in auth (an administrator's write) leaves users too: the address is free.
CALL as_gotrue($$UPDATE users SET email = NULL WHERE id = 'a0000000-0000-4000-8000-000000000003'$$);
SELECT email FROM users WHERE id = 'a0000000-0000-4000-8000-000000000003';
CALL as_gotrue($$UPDATE users SET email = 'second@example.com' WHERE id = 'a0000000-0000-4000-8000-000000000003'$$);

-- A ban after the adoption is mirrored; nothing failed; the check, reconcile and verify agree.
CALL as_gotrue($$UPDATE users SET banned_until = '2126-01-01 00:00+00' WHERE id = 'a0000000-0000-4000-8000-000000000001'$$);
SELECT banned_until FROM users WHERE id = 'a0000000-0000-4000-8000-000000000001';
SELECT user_id, sqlstate, error_message FROM user_sync_logs WHERE NOT success ORDER BY id;
SELECT count(*) AS problems FROM nura_check_consistency();
SELECT nura_reconcile() - 'dry_run' AS reconcile;
SELECT v -> 'ok' AS ok, v -> 'problems' AS problems FROM nura_verify_migration() v;

-- 6. Smaller: intervals out of range, an infinite activity time, the erasure of nobody.
SELECT nura_purge_sync_logs('1000000 years') AS purged;
SELECT count(*) > 0 AS sources FROM nura_sync_stats('1000000 years');
SELECT count(*) AS sources FROM nura_sync_stats('-1000000 years');
SELECT nura_record_activity('a0000000-0000-4000-8000-000000000001', 'infinity');
SELECT nura_record_activity('a0000000-0000-4000-8000-000000000001', now() + interval '1 day');
SELECT max(id) AS last_log FROM user_sync_logs \gset
SELECT nura_erase_user('f0000000-0000-4000-8000-000000000001') ->> 'erased' AS erased;
SELECT count(*) AS new_log_rows FROM user_sync_logs WHERE id > :last_log;

\c nura_regress
DROP DATABASE nura_robust;

-- An auth user without email, phone or names (an SSO or admin-made account) made before
-- CREATE EXTENSION: its first sign-in creates its users row, logged, without an internal error.
DROP DATABASE IF EXISTS nura_robust_sso;
CREATE DATABASE nura_robust_sso TEMPLATE template0;
\c nura_robust_sso
\set ECHO none
\i :fixture
\set ECHO all
SELECT auth.gotrue_signup(NULL, NULL, '{}', 'f1000000-0000-4000-8000-000000000001', false, true) IS NOT NULL AS sso_user;
CREATE EXTENSION nura_users;
UPDATE auth.users SET last_sign_in_at = '2026-12-01 10:00+00';
SELECT id, last_sign_in_at, is_sso_user FROM users;
SELECT sync_type, success FROM user_sync_logs ORDER BY id;
\c nura_regress
DROP DATABASE nura_robust_sso;
