-- nura_sync_user(payload jsonb), docs/api.md: every result type, every error code, a table of bad
-- payloads (each invalid_payload naming its field, each with exactly one failure log row and no
-- other write), idempotency, stale payloads, auth authority, and who may sync which id.
DROP DATABASE IF EXISTS nura_sync_user;
CREATE DATABASE nura_sync_user TEMPLATE template0;
\c nura_sync_user
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixture :abs_srcdir '/../fixtures/supabase_auth.sql'
\set watch :abs_srcdir '/../fixtures/log_watch.sql'
\set ECHO none
\i :fixture
CREATE EXTENSION nura_users;
\i :watch
\set ECHO all
SET TIME ZONE 'UTC';

-- created, with the result shape of docs/api.md.
SELECT jsonb_pretty(nura_sync_user('{"id": "aaaaaaaa-0000-4000-8000-000000000001",
    "email": "  Bo@Example.com ", "phone_number": "+4915112345678", "full_name": "Bo",
    "bio": "hi", "user_metadata": {"preferred_username": "bo", "picture": "https://img.example/bo.png"},
    "request_id": "req-1", "session_id": "sess-1", "updated_at": "2026-11-25T10:00:00Z"}')
    #- '{user,created_at}' #- '{user,updated_at}');
SELECT user_id, source, sync_type, success, changed_fields, after_data FROM new_logs();
SELECT request_id, session_id FROM user_sync_logs ORDER BY id DESC LIMIT 1;

-- unchanged: the same payload again (idempotent), and a payload that says what is stored.
SELECT nura_sync_user('{"id": "aaaaaaaa-0000-4000-8000-000000000001", "full_name": "Bo",
    "updated_at": "2026-11-25T10:00:00Z"}') - 'user';
SELECT nura_sync_user('{"id": "aaaaaaaa-0000-4000-8000-000000000001", "email": "Bo@Example.com "}') - 'user';
-- A user without an auth account owns their address, letter case included.
SELECT nura_sync_user('{"id": "aaaaaaaa-0000-4000-8000-000000000001", "email": "bo@example.com"}') - 'user';
SELECT user_id, sync_type, success, changed_fields FROM new_logs();

-- updated; JSON null means "not given"; a blank string clears.
SELECT nura_sync_user('{"id": "aaaaaaaa-0000-4000-8000-000000000001", "full_name": "Bo B.",
    "bio": "", "display_name": null, "updated_at": "2026-11-25T11:00:00+00:00"}') -> 'user'
    -> 'full_name' AS full_name;
SELECT full_name, bio, display_name, source_updated_at FROM users
WHERE id = 'aaaaaaaa-0000-4000-8000-000000000001';
SELECT sync_type, changed_fields, before_data, after_data FROM new_logs();

-- stale: older than what was applied; nothing written but the log row.
SELECT nura_sync_user('{"id": "aaaaaaaa-0000-4000-8000-000000000001", "full_name": "Old Name",
    "updated_at": "2026-11-25T10:30:00Z"}') - 'user';
SELECT full_name FROM users WHERE id = 'aaaaaaaa-0000-4000-8000-000000000001';
SELECT sync_type, success, changed_fields FROM new_logs();

-- A client clock far ahead would make every later payload stale: refused.
SELECT nura_sync_user('{"id": "aaaaaaaa-0000-4000-8000-000000000001", "full_name": "Future",
    "updated_at": "2999-01-01T00:00:00Z"}');
SELECT sync_type, success, sqlstate FROM new_logs();

-- conflict: another user holds the email in another letter case. Nothing is written.
SELECT nura_sync_user('{"id": "aaaaaaaa-0000-4000-8000-000000000002", "email": "BO@EXAMPLE.COM"}');
SELECT count(*) AS users_2 FROM users WHERE id = 'aaaaaaaa-0000-4000-8000-000000000002';
SELECT user_id, sync_type, success, sqlstate, error_message FROM new_logs();

-- Auth authority: for a user in auth.users, auth's email wins and is reported as ignored.
SET ROLE supabase_auth_admin;
SET search_path = auth;
SELECT gotrue_signup('cy@example.com', '15550001111', '{}', 'bbbbbbbb-0000-4000-8000-000000000001');
RESET search_path;
RESET ROLE;
SELECT sync_type, source FROM new_logs();
SELECT nura_sync_user('{"id": "bbbbbbbb-0000-4000-8000-000000000001", "email": "cy.new@example.com",
    "phone_number": "15550002222", "full_name": "Cy"}') - 'user';
SELECT email, phone_number, full_name FROM users WHERE id = 'bbbbbbbb-0000-4000-8000-000000000001';
-- The same address in another letter case is no disagreement.
SELECT nura_sync_user('{"id": "bbbbbbbb-0000-4000-8000-000000000001", "email": "CY@example.com"}') - 'user';
SELECT sync_type, changed_fields FROM new_logs();

-- Who may sync which id: PostgREST sets a transaction-local role and claims.
BEGIN;
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub": "bbbbbbbb-0000-4000-8000-000000000001", "role": "authenticated"}', true);
SELECT nura_sync_user('{"id": "bbbbbbbb-0000-4000-8000-000000000001", "display_name": "cy"}') - 'user';
-- A browser cannot pass itself off as the backend: its writes stay frontend_sync.
SELECT nura_sync_user('{"id": "bbbbbbbb-0000-4000-8000-000000000001", "bio": "mine", "source": "backend_api"}') - 'user';
SELECT nura_sync_user('{"id": "aaaaaaaa-0000-4000-8000-000000000001", "display_name": "not mine"}');
SELECT set_config('request.jwt.claims', '', true);
SELECT nura_sync_user('{"id": "bbbbbbbb-0000-4000-8000-000000000001", "display_name": "nobody"}');
COMMIT;
SELECT user_id, source, sync_type, success, sqlstate, error_message FROM new_logs();
-- anon may not call it at all.
SET ROLE anon;
SELECT nura_sync_user('{"id": "bbbbbbbb-0000-4000-8000-000000000001"}');
RESET ROLE;

-- internal: a failure of the database itself (here an injected constraint) is reported with its
-- SQLSTATE, logged, and leaves no write behind.
ALTER TABLE users ADD CONSTRAINT test_no_blocked CHECK (full_name IS DISTINCT FROM 'Blocked');
SELECT nura_sync_user('{"id": "aaaaaaaa-0000-4000-8000-000000000003", "full_name": "Blocked"}');
SELECT count(*) AS users_3 FROM users WHERE id = 'aaaaaaaa-0000-4000-8000-000000000003';
SELECT user_id, sync_type, success, sqlstate, error_message FROM new_logs();
ALTER TABLE users DROP CONSTRAINT test_no_blocked;

-- Bad payloads: each is invalid_payload naming its field, with exactly one failure log row.
CREATE TABLE bad_payloads (n serial, expected_field text, payload jsonb);
INSERT INTO bad_payloads (expected_field, payload) VALUES
    ('payload', NULL),
    ('payload', '[]'),
    ('payload', '"just a string"'),
    ('payload', '42'),
    ('payload', 'null'),
    ('payload', 'true'),
    ('id', '{}'),
    ('id', '{"id": null}'),
    ('id', '{"id": 12345}'),
    ('id', '{"id": "not-a-uuid"}'),
    ('id', '{"id": ["aaaaaaaa-0000-4000-8000-000000000001"]}'),
    ('id', '{"id": "aaaaaaaa-0000-4000-8000-00000000000"}'),
    ('nickname', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "nickname": "x"}'),
    ('Email', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "Email": "a@b.co"}'),
    ('email', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "email": "no-at-sign"}'),
    ('email', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "email": "two@@example.com"}'),
    ('email', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "email": "a@localhost"}'),
    ('email', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "email": "sp ace@example.com"}'),
    ('email', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "email": 7}'),
    ('email', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "email": {"nested": {"deep": [1, 2, {"x": null}]}}}'),
    ('email', json_build_object('id', 'aaaaaaaa-0000-4000-8000-000000000009', 'email', repeat('a', 250) || '@example.com')::jsonb),
    ('email', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "email": "x@y.co''; DROP TABLE users; --"}'),
    ('phone_number', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "phone_number": "call me"}'),
    ('phone_number', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "phone_number": "0049151"}'),
    ('phone_number', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "phone_number": "+1234567890123456"}'),
    ('phone_number', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "phone_number": 4915112345678}'),
    ('full_name', json_build_object('id', 'aaaaaaaa-0000-4000-8000-000000000009', 'full_name', repeat('n', 201))::jsonb),
    ('full_name', json_build_object('id', 'aaaaaaaa-0000-4000-8000-000000000009', 'full_name', repeat('x', 1048576))::jsonb),
    ('full_name', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "full_name": false}'),
    ('display_name', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "display_name": ["a"]}'),
    ('bio', json_build_object('id', 'aaaaaaaa-0000-4000-8000-000000000009', 'bio', repeat('b', 2001))::jsonb),
    ('bio', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "bio": "bell\u0007"}'),
    ('avatar_url', json_build_object('id', 'aaaaaaaa-0000-4000-8000-000000000009', 'avatar_url', repeat('u', 2049))::jsonb),
    ('user_metadata', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "user_metadata": "name"}'),
    ('user_metadata', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "user_metadata": [1, 2]}'),
    ('user_metadata', json_build_object('id', 'aaaaaaaa-0000-4000-8000-000000000009', 'user_metadata', json_build_object('blob', repeat('m', 17000)))::jsonb),
    ('source', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "source": "supabase_auth"}'),
    ('source', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "source": 1}'),
    ('updated_at', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "updated_at": "yesterday"}'),
    ('updated_at', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "updated_at": "2026-02-30T00:00:00Z"}'),
    ('updated_at', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "updated_at": "2026-11-25T10:00:00"}'),
    ('updated_at', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "updated_at": 1764064800}'),
    ('request_id', json_build_object('id', 'aaaaaaaa-0000-4000-8000-000000000009', 'request_id', repeat('r', 256))::jsonb),
    ('session_id', '{"id": "aaaaaaaa-0000-4000-8000-000000000009", "session_id": {"a": 1}}');
SELECT count(*) AS bad_payloads FROM bad_payloads;
SELECT count(*) AS users_before FROM users \gset
SELECT max(id) AS logs_before FROM user_sync_logs \gset
CREATE TABLE bad_results AS
SELECT b.n, b.expected_field, nura_sync_user(b.payload) AS r FROM bad_payloads b ORDER BY b.n;
-- Every one: invalid_payload, the expected field, a message.
SELECT n, expected_field, r->'error'->>'field' AS field, r->'error'->>'message' AS message
FROM bad_results
WHERE r->>'success' <> 'false' OR r->'error'->>'code' <> 'invalid_payload'
   OR r->'error'->>'field' IS DISTINCT FROM expected_field OR r->'error'->>'message' IS NULL;
SELECT n, left(r->'error'->>'message', 70) AS message FROM bad_results ORDER BY n;
-- Exactly one failure log row each, with SQLSTATE 22023, and no other write.
SELECT count(*) AS new_log_rows, count(*) FILTER (WHERE NOT success AND sqlstate = '22023') AS failures
FROM user_sync_logs WHERE id > :logs_before;
SELECT count(*) = :users_before AS no_user_written FROM users;
SELECT to_regclass('public.users') IS NOT NULL AS users_table_still_there;

\c nura_regress
DROP DATABASE nura_sync_user;
