-- A users row whose privacy_settings nests deeper than 128 levels (set by hand SQL: the API
-- refuses such a value) cannot be read into the sync's row. The user's syncs go on all the same
-- (docs/sync.md): a ban and a soft delete are mirrored, the stored value is kept as it is and
-- shown as null, a change of some of its keys is refused naming the field, and only a whole new
-- value replaces it. Failed before: every sync of that user failed, its ban included.
DROP DATABASE IF EXISTS nura_unreadable;
CREATE DATABASE nura_unreadable TEMPLATE template0;
\c nura_unreadable
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
CREATE PROCEDURE as_gotrue(sql text) LANGUAGE plpgsql AS $$
BEGIN
    SET LOCAL ROLE supabase_auth_admin;
    SET LOCAL search_path = auth;
    EXECUTE sql;
    RESET ROLE;
    RESET search_path;
END $$;
CREATE FUNCTION deep(levels int) RETURNS jsonb LANGUAGE sql
AS $$ SELECT jsonb_build_object('x', (repeat('[', levels) || repeat(']', levels))::jsonb) $$;
SELECT auth.gotrue_signup('deep@example.com', NULL, '{"full_name": "Dee Deep"}',
    'a0000000-0000-4000-8000-000000000001') IS NOT NULL AS signed_up;
UPDATE users SET privacy_settings = deep(300) WHERE email = 'deep@example.com';

-- The ban syncs; the stored value stays.
CALL as_gotrue($$UPDATE users SET banned_until = '2126-01-01 00:00+00' WHERE email = 'deep@example.com'$$);
SELECT banned_until, privacy_settings = deep(300) AS kept FROM users WHERE email = 'deep@example.com';
-- nura_sync_user answers with the row, the unreadable value as null.
SELECT r ->> 'sync_type' AS sync_type, r -> 'user' -> 'privacy_settings' AS shown
FROM nura_sync_user('{"id": "a0000000-0000-4000-8000-000000000001", "bio": "still syncs"}') r;
-- Changing some keys would drop the others: refused, naming the field; nothing written.
SELECT nura_update_profile('a0000000-0000-4000-8000-000000000001',
    '{"privacy_settings": {"public": true}}') -> 'error';
SELECT bio, privacy_settings = deep(300) AS kept FROM users WHERE email = 'deep@example.com';
-- The migration merges a legacy row of the same person: a legacy privacy_settings does not
-- replace the stored one (a conflict), the other fields merge; verify stays ok.
INSERT INTO chat_users (id, email, full_name, phone_number, created_at, privacy_settings) VALUES
    ('c0000000-0000-4000-8000-000000000001', 'deep@example.com', 'Legacy Name', '+49 151 1111111',
     '2024-01-01', '{"public": false}');
SET client_min_messages = warning;  -- the progress NOTICEs carry timings
SELECT nura_migrate_legacy(false) -> 'sources' -> 'chat_users' ->> 'merged' AS merged;
RESET client_min_messages;
SELECT phone_number, privacy_settings = deep(300) AS kept FROM users WHERE email = 'deep@example.com';
SELECT field, kept_value, dropped_value FROM nura_migration_issues WHERE kind = 'conflict' ORDER BY field;
SELECT nura_verify_migration() ->> 'ok' AS verified;
-- A whole new value replaces it; null resets it to {}.
SELECT nura_update_profile('a0000000-0000-4000-8000-000000000001',
    '{"privacy_settings": null}') -> 'user' -> 'privacy_settings' AS reset;
-- The soft delete syncs as well.
UPDATE users SET privacy_settings = deep(300) WHERE email = 'deep@example.com';
CALL as_gotrue($$UPDATE users SET deleted_at = now(), email = md5(email), phone = NULL
    WHERE email = 'deep@example.com'$$);
SELECT email, full_name, is_active, deleted_at IS NOT NULL AS deleted, privacy_settings = deep(300) AS kept
FROM users WHERE id = 'a0000000-0000-4000-8000-000000000001';
-- The soft delete takes the values of the user's migration issues with its personal data (the
-- issues stay: which legacy row and field); erasure and a delete do the same (docs/operations.md).
SELECT field, kept_value, dropped_value FROM nura_migration_issues WHERE kind = 'conflict' ORDER BY field;
-- One failed call: the refused change of keys.
SELECT sqlstate, count(*) AS failed_calls FROM user_sync_logs WHERE NOT success GROUP BY sqlstate;
SELECT count(*) AS problems FROM nura_check_consistency();
\c nura_regress
DROP DATABASE nura_unreadable;
