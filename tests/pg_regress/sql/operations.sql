-- Operations, docs/operations.md: nura_sync_stats checked against a log with known contents,
-- nura_purge_sync_logs and nura_erase_user. (NOTIFY is checked by scripts/concurrency_test.)
DROP DATABASE IF EXISTS nura_operations;
CREATE DATABASE nura_operations TEMPLATE template0;
\c nura_operations
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixture :abs_srcdir '/../fixtures/supabase_auth.sql'
\set ECHO none
\i :fixture
CREATE EXTENSION nura_users;
\set ECHO all

-- A log with known contents: for supabase_auth 10 attempts taking 1..10 ms, two of them failed;
-- for frontend_sync 4 successes of 2 ms; and rows older than the window.
INSERT INTO user_sync_logs (source, sync_type, success, sqlstate, error_message, duration_us)
SELECT 'supabase_auth', CASE WHEN i <= 2 THEN 'failed' ELSE 'created' END, i > 2,
       CASE WHEN i <= 2 THEN '23514' END, CASE WHEN i <= 2 THEN 'check violation' END, i * 1000
FROM generate_series(1, 10) AS i;
INSERT INTO user_sync_logs (source, sync_type, success, duration_us)
SELECT 'frontend_sync', 'updated', true, 2000 FROM generate_series(1, 4);
INSERT INTO user_sync_logs (source, sync_type, success, duration_us, created_at)
SELECT 'backend_api', 'updated', true, 99000, now() - interval '3 days' FROM generate_series(1, 5);

SELECT source, attempts, succeeded, failed, success_rate, avg_ms, p50_ms,
       round(p95_ms::numeric, 3) AS p95_ms, round(p99_ms::numeric, 3) AS p99_ms
FROM nura_sync_stats();
-- A wider window includes the old rows.
SELECT source, attempts, avg_ms FROM nura_sync_stats('7 days') WHERE source = 'backend_api';

-- Purge: only rows older than the given age.
SELECT nura_purge_sync_logs('2 days');
SELECT count(*) AS log_rows_left FROM user_sync_logs;
SELECT nura_purge_sync_logs('-1 day');
SELECT nura_purge_sync_logs(NULL);

-- Erasure of a user who is not in auth.users: row, profiles and aliases go, personal data leaves
-- the log, and one log row without personal data records the erasure.
SELECT nura_sync_user('{"id": "eeeeeeee-0000-4000-8000-000000000001", "email": "gus@example.com",
                        "full_name": "Gus", "bio": "private"}')->>'sync_type';
INSERT INTO user_id_aliases (alias_id, source, user_id)
VALUES ('eeeeeeee-0000-4000-8000-0000000000aa', 'chat_users', 'eeeeeeee-0000-4000-8000-000000000001');
SELECT nura_erase_user('eeeeeeee-0000-4000-8000-000000000001');
SELECT (SELECT count(*) FROM users WHERE id = 'eeeeeeee-0000-4000-8000-000000000001') AS users_rows,
       (SELECT count(*) FROM user_service_profiles WHERE user_id = 'eeeeeeee-0000-4000-8000-000000000001') AS profiles,
       (SELECT count(*) FROM user_id_aliases WHERE user_id = 'eeeeeeee-0000-4000-8000-000000000001') AS aliases;
SELECT sync_type, success, before_data, after_data FROM user_sync_logs
WHERE user_id = 'eeeeeeee-0000-4000-8000-000000000001' ORDER BY id;
-- The erasure's own log row is anonymous.
SELECT user_id, source, sync_type, success, before_data, after_data FROM user_sync_logs
WHERE sync_type = 'erased';
-- A user still in auth.users is refused: delete it there.
SET ROLE supabase_auth_admin;
SET search_path = auth;
SELECT gotrue_signup('hal@example.com', NULL, '{}', 'eeeeeeee-0000-4000-8000-000000000002');
RESET search_path;
RESET ROLE;
SELECT nura_erase_user('eeeeeeee-0000-4000-8000-000000000002');
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- Admin functions are not for PUBLIC.
SET ROLE authenticated;
SELECT * FROM nura_sync_stats();
SELECT nura_erase_user('eeeeeeee-0000-4000-8000-000000000004');
RESET ROLE;

\c nura_regress
DROP DATABASE nura_operations;
