-- The story make demo tells, on a database that looks like a Supabase project.
\set QUIET on
\pset footer off
\echo
\echo '== Before: a product whose user data lives in four places. Supabase Auth (auth.users) and'
\echo '   three service tables, generated with duplicates, case variants, conflicts and bad rows'
\echo '   (tests/fixtures/legacy_tables.sql):'
SET client_min_messages = warning;
\set legacy_schema public
\ir ../tests/fixtures/legacy_tables.sql
SELECT legacy_generate('public', 0.42, 300, 2000, 1500, 400) \g /dev/null
RESET client_min_messages;
SELECT (SELECT count(*) FROM auth.users) AS "auth.users", (SELECT count(*) FROM chat_users) AS chat_users,
       (SELECT count(*) FROM voice_users) AS voice_users, (SELECT count(*) FROM custom_users) AS custom_users;
\echo '   The same person three times in two tables: three ids, three spellings of the email, three names, two phones:'
SELECT 'chat_users' AS "table", id, email, full_name AS name, phone_number AS phone FROM chat_users
WHERE lower(btrim(email)) = 'person1800@example.com'
UNION ALL
SELECT 'voice_users', id, email, name, phone FROM voice_users WHERE lower(btrim(email)) = 'person1800@example.com';

\echo '== CREATE EXTENSION nura_users creates the users tables and attaches the sync triggers to'
\echo '   auth.users. It copies nothing yet: the migration does that.'
CREATE EXTENSION nura_users;
SELECT tgname AS "trigger on auth.users",
       substring(pg_get_triggerdef(oid) FROM '(AFTER \w+)') AS fires
FROM pg_trigger WHERE tgrelid = 'auth.users'::regclass AND NOT tgisinternal ORDER BY 1;

\echo '== Migration, step 1: a dry run. It writes nothing but its report and the issues it found.'
SET client_min_messages = warning;
SELECT nura_migrate_legacy(dry_run => true, batch_size => 500) AS r \gset dry_
RESET client_min_messages;
SELECT key AS legacy_table, value->'rows' AS "rows", value->'migrated' AS migrated, value->'merged' AS merged,
       value->'conflicts' AS conflicts, value->'unmigratable' AS unmigratable
FROM jsonb_each(:'dry_r'::jsonb -> 'sources') ORDER BY 1;
SELECT (:'dry_r'::jsonb)->'users_created' AS users_to_create, (:'dry_r'::jsonb)->'users_merged' AS users_to_merge_into,
       (:'dry_r'::jsonb)->'auth_backfilled' AS auth_users_to_backfill,
       (:'dry_r'::jsonb)->'legacy_passwords_without_auth' AS legacy_passwords_without_auth;
\echo '   Read the issues before the real run: rows that cannot be placed (with the reason), and'
\echo '   values dropped in favour of a higher-precedence source (auth > users > chat > voice > custom):'
SELECT kind, coalesce(field, reason) AS "field or reason", count(*) AS n
FROM nura_migration_issues WHERE run_id = ((:'dry_r'::jsonb)->>'run_id')::bigint
GROUP BY 1, 2 ORDER BY 1, 3 DESC;

\echo '== Step 2: the real run. CALL nura_run_migration commits every batch and, if interrupted,'
\echo '   resumes where it stopped when called again. Progress comes as NOTICEs:'
CALL nura_run_migration(batch_size => 1000);

\echo '== Step 3: verify, independently of the migration bookkeeping: every legacy row is migrated'
\echo '   (reachable through its legacy id) with every field equal or a recorded conflict, or an issue.'
SELECT v->'ok' AS ok, v->'rows_checked' AS rows_checked, v->'accounted' AS accounted,
       v->'missing' AS missing, v->'mismatched' AS mismatched
FROM nura_verify_migration() AS v;

\echo '== Person 1800 is one user now. Both legacy ids resolve to it (nura_resolve_user_id, for ids'
\echo '   that services stored), and what was dropped is on record:'
SELECT id, email, full_name, phone_number FROM users WHERE lower(email) = 'person1800@example.com';
SELECT nura_resolve_user_id(md5('chat1800')::uuid::text) AS "chat id resolves to",
       nura_resolve_user_id(md5('voice1800')::uuid::text) AS "voice id resolves to";
SELECT source_table, field, kept_value, dropped_value FROM nura_migration_issues
WHERE kind = 'conflict' AND user_id = nura_resolve_user_id(md5('chat1800')::uuid::text)
  AND run_id = (SELECT max(id) FROM nura_migration_runs WHERE NOT dry_run) ORDER BY 1, 2;

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
FROM users WHERE id = 'a0a0a0a0-0000-4000-8000-000000000001';
\x off

\echo '== Confirmation and a sign-in: auth-owned fields follow; every change is in the sync log.'
SET ROLE supabase_auth_admin;
SET search_path = auth;
UPDATE "users" AS users SET last_sign_in_at = now(), updated_at = now()
WHERE users.id = 'a0a0a0a0-0000-4000-8000-000000000001';
RESET search_path;
RESET ROLE;
SELECT source, sync_type, changed_fields FROM user_sync_logs
WHERE user_id = 'a0a0a0a0-0000-4000-8000-000000000001' ORDER BY id;

\echo '== Ana changes her email: the request (pending in email_change) does not sync, the confirmation does.'
SET ROLE supabase_auth_admin;
SET search_path = auth;
UPDATE "users" AS users SET email_change = 'ana.lima@example.com', email_change_token_new = 'tok',
    email_change_sent_at = now(), updated_at = now() WHERE users.id = 'a0a0a0a0-0000-4000-8000-000000000001';
UPDATE "users" AS users SET email = 'ana.lima@example.com', email_change = '', email_change_token_new = '',
    updated_at = now() WHERE users.id = 'a0a0a0a0-0000-4000-8000-000000000001';
RESET search_path;
RESET ROLE;
SELECT email FROM users WHERE id = 'a0a0a0a0-0000-4000-8000-000000000001';

\echo '== Person 1800 signs up through Supabase Auth. The migrated user is adopted by email: it takes'
\echo '   the auth id, keeps its data, and its legacy ids (and its old id) still resolve.'
SELECT id AS old_id FROM users WHERE lower(email) = 'person1800@example.com' \gset
SET ROLE supabase_auth_admin;
SET search_path = auth;
SELECT gotrue_signup(' Person1800@Example.com', NULL, '{}', 'c0c0c0c0-0000-4000-8000-000000001800') \g /dev/null
RESET search_path;
RESET ROLE;
SELECT id, email, full_name, auth_synced_at IS NOT NULL AS synced_from_auth FROM users
WHERE lower(email) = 'person1800@example.com';
SELECT nura_resolve_user_id(md5('chat1800')::uuid::text) AS "chat id resolves to",
       nura_resolve_user_id(md5('voice1800')::uuid::text) AS "voice id resolves to",
       nura_resolve_user_id(:'old_id') AS "pre-adoption id resolves to";

\echo '== A soft delete (GoTrue keeps the auth row, scrambles email and phone) and a hard delete:'
SET ROLE supabase_auth_admin;
SET search_path = auth;
UPDATE "users" AS users SET email = 'Qm9ndXNIYXNoT2ZUaGVPbGRFbWFpbEFkZHJlc3MxMjM', phone = 'X1b2c3d4e5f6g7h',
    encrypted_password = NULL, deleted_at = now(), raw_user_meta_data = '{}', updated_at = now()
WHERE users.id = md5('auth3')::uuid;
DELETE FROM "users" WHERE id = md5('auth6')::uuid;
RESET search_path;
RESET ROLE;
SELECT 'person3 (soft)' AS who, email, full_name, is_active, deleted_at IS NOT NULL AS deleted
FROM users WHERE id = md5('auth3')::uuid
UNION ALL
SELECT 'person6 (hard)', NULL, NULL, NULL, NOT EXISTS (SELECT FROM users WHERE id = md5('auth6')::uuid);

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
SELECT id, email, full_name FROM users WHERE id = 'b0b0b0b0-0000-4000-8000-000000000002';

\echo '== nura_sync_stats(): per source, from the log'
SELECT source, attempts, succeeded, failed, round(success_rate::numeric, 2) AS success_rate,
       round(avg_ms::numeric, 3) AS avg_ms, round(p95_ms::numeric, 3) AS p95_ms
FROM nura_sync_stats();

\echo '== The cutover: the product''s own tables still hold chat ids (app.conversations has a key'
\echo '   to chat_users), and old code still writes chat_users. First the plan, which writes nothing:'
CREATE SCHEMA app;
CREATE TABLE app.conversations (id int PRIMARY KEY, body text,
    user_id uuid CONSTRAINT conversations_owner REFERENCES chat_users (id) ON DELETE CASCADE);
INSERT INTO app.conversations
SELECT i, 'hello ' || i, c.id FROM generate_series(1, 2000) i
JOIN LATERAL (SELECT id FROM chat_users ORDER BY id OFFSET i % 500 LIMIT 1) c ON true;
SELECT t.key AS legacy_table, t.value->'rows' AS rows,
       jsonb_array_length(t.value->'references') AS references,
       (SELECT string_agg(b->>'kind', ', ') FROM jsonb_array_elements(t.value->'blockers') b) AS blockers
FROM jsonb_each(nura_cutover_plan()->'tables') t;
\echo '   The chat rows the migration could not place block it: as the reason says, they go (and their'
\echo '   conversations with them: ON DELETE CASCADE).'
DELETE FROM chat_users c WHERE EXISTS (SELECT FROM nura_migration_issues i
    WHERE i.kind = 'unmigratable' AND i.source_table = 'chat_users' AND i.source_id = c.id::text);
\echo '   CALL nura_cutover captures chat_users (old code''s writes reach users at once), catches up,'
\echo '   moves the key to users(id) (swap, rewrite in batches with progress NOTICEs, validate), turns'
\echo '   on reverse sync, and switches: the table is kept in nura_legacy, and chat_users is a view.'
SET client_min_messages = notice;
CALL nura_cutover(tables => ARRAY['chat_users'], batch_size => 500);
SELECT legacy_table, state, references_total, references_moved FROM nura_cutover_status();
SELECT pg_get_constraintdef(oid) AS conversations_owner FROM pg_constraint WHERE conname = 'conversations_owner';
SELECT c.oid::regclass AS relation, c.relkind FROM pg_class c WHERE c.relname = 'chat_users' ORDER BY 1;
\echo '   Old code keeps writing chat_users (the view) and conversations with chat ids; they land on users:'
INSERT INTO chat_users (id, email, full_name) VALUES
 ('d0d0d0d0-0000-4000-8000-000000000001', 'dora@example.com', 'Dora');
INSERT INTO app.conversations VALUES (5001, 'from old code', 'd0d0d0d0-0000-4000-8000-000000000001');
SELECT c.id, c.user_id, u.email FROM app.conversations c JOIN users u ON u.id = c.user_id WHERE c.id = 5001;
SELECT id, email, full_name FROM chat_users WHERE id = 'd0d0d0d0-0000-4000-8000-000000000001';
\echo '   The rollback puts the table back under its name, and every key and value as it was:'
CALL nura_cutover_rollback(tables => ARRAY['chat_users'], batch_size => 500);
SELECT pg_get_constraintdef(oid) AS conversations_owner FROM pg_constraint WHERE conname = 'conversations_owner';
SELECT c.oid::regclass AS relation, c.relkind FROM pg_class c WHERE c.relname = 'chat_users' ORDER BY 1;
SELECT count(*) FILTER (WHERE c.user_id IN (SELECT id FROM chat_users)) AS conversations_on_chat_ids,
       count(*) AS conversations FROM app.conversations c;
\echo '   ...and the cutover again ends as one cutover:'
CALL nura_cutover(tables => ARRAY['chat_users'], batch_size => 500);
SELECT legacy_table, state, references_total, references_moved FROM nura_cutover_status();
SELECT action, count(*) AS steps FROM nura_cutover_steps GROUP BY action ORDER BY min(id);

\echo '== After: one users row per person, the services read it, and nothing is out of step.'
SELECT (SELECT count(*) FROM users) AS users, (SELECT count(*) FROM user_service_profiles) AS profiles,
       (SELECT count(*) FROM user_id_aliases) AS legacy_ids_that_resolve,
       (SELECT count(*) FROM nura_check_consistency()) AS consistency_problems;
