-- The legacy migration (docs/migration.md) on hand-made hard cases, with the exact outcome of each:
-- case/blank email variants across and within tables, the same person in chat and voice with
-- other names and phones, rows without or with malformed emails, custom rows of existing and
-- missing auth users, a legacy uuid equal to an auth id of another person, the same uuid in two
-- tables for two people, a legacy user who signs up after the migration. Then: dry run writes
-- nothing, verify, idempotent re-run, rollback; legacy tables byte-identical throughout.
DROP DATABASE IF EXISTS nura_migration;
CREATE DATABASE nura_migration TEMPLATE template0;
\c nura_migration
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixture :abs_srcdir '/../fixtures/supabase_auth.sql'
\set legacy :abs_srcdir '/../fixtures/legacy_tables.sql'
\set legacy_schema legacy
\set ECHO none
\i :fixture
\i :legacy
\set ECHO all
SET TIME ZONE 'UTC';
\pset null '(null)'

-- Auth users that exist before the extension (the backfill's work).
SELECT auth.gotrue_signup('ana@example.com', '15550001111', '{"full_name": "Ana Auth"}',
                          'a1a1a1a1-0000-4000-8000-000000000001');
SELECT auth.gotrue_signup('bob@example.com', NULL, '{}', 'a1a1a1a1-0000-4000-8000-000000000002');
SELECT auth.gotrue_signup('carol@example.com', NULL, '{}', 'a1a1a1a1-0000-4000-8000-000000000003');
SELECT auth.gotrue_signup('dave@example.com', NULL, '{"name": "Dave"}', 'c0000000-0000-4000-8000-000000000007');

INSERT INTO legacy.chat_users (id, email, full_name, phone_number, password_hash,
    privacy_settings, notification_prefs, is_active, created_at, theme) VALUES
 ('c0000000-0000-4000-8000-000000000001', ' Ana@Example.com ', 'Ana Chat', '+1 555 000 1111', '$2a$hash1',
  '{"share": false}', '{"email": true}', true, '2020-01-01', 'dark'),
 ('c0000000-0000-4000-8000-000000000002', 'grace@example.com', 'Grace Chat', '555-0102', '$2a$hash2',
  NULL, NULL, true, '2020-01-02', NULL),
 ('c0000000-0000-4000-8000-000000000003', 'GRACE@example.com ', 'Grace Duplicate', NULL, NULL,
  NULL, '{"push": true}', true, '2020-03-01', NULL),
 ('c0000000-0000-4000-8000-000000000004', NULL, 'No Email', NULL, '$2a$hash4', NULL, NULL, true, '2020-01-04', NULL),
 ('c0000000-0000-4000-8000-000000000005', 'not-an-email', 'Bad Email', NULL, NULL, NULL, NULL, true, '2020-01-05', NULL),
 ('a1a1a1a1-0000-4000-8000-000000000002', NULL, 'Bob Chat', NULL, NULL, NULL, NULL, true, '2020-01-06', NULL),
 ('c0000000-0000-4000-8000-000000000007', 'erin@example.com', 'Erin', NULL, NULL, NULL, NULL, true, '2020-01-07', NULL),
 ('c0000000-0000-4000-8000-000000000008', 'frank@EXAMPLE.com', 'Frank Chat', NULL, NULL, NULL, NULL, false, '2020-01-08', NULL),
 ('c0000000-0000-4000-8000-000000000009', 'heidi@example.com', repeat('h', 201), NULL, NULL,
  '"not an object"', NULL, true, '2020-01-09', NULL),
 ('c0000000-0000-4000-8000-000000000010', 'ivan@example.com', 'Ivan', NULL, '$2a$hash10', NULL, NULL, true, '2020-01-10', NULL);
INSERT INTO legacy.voice_users (id, name, email, phone, password_hash, created_at, voice_id) VALUES
 ('e0000000-0000-4000-8000-000000000001', 'Grace Voice', 'grace@example.com', '+44 20 7946 0958', NULL, '2019-12-01', 'alto'),
 ('e0000000-0000-4000-8000-000000000002', 'Judy', 'judy@example.com', '12345', '$2a$v2', '2020-02-02', NULL),
 ('c0000000-0000-4000-8000-000000000002', 'Ken', 'ken@example.com', NULL, NULL, '2020-02-03', NULL),
 ('e0000000-0000-4000-8000-000000000004', 'Ana Voice', 'ana@example.com', NULL, NULL, '2020-02-04', NULL),
 ('e0000000-0000-4000-8000-000000000005', 'Nobody', '  ', NULL, NULL, '2020-02-05', NULL),
 ('e0000000-0000-4000-8000-000000000006', 'Leo', 'leo@example.com', 'call me maybe', NULL, '2020-02-06', NULL);
INSERT INTO legacy.custom_users (user_id, full_name, current_streak, xp, badge) VALUES
 ('a1a1a1a1-0000-4000-8000-000000000003', 'Carol Custom', 5, 120, 'gold'),
 ('f0000000-0000-4000-8000-000000000001', 'Ghost', 1, 10, NULL),
 ('a1a1a1a1-0000-4000-8000-000000000001', 'Ana Custom', 0, 50, NULL);

CREATE TEMP TABLE fp AS SELECT legacy_fingerprint('legacy') AS before;

CREATE EXTENSION nura_users;
-- A user created through the API before the migration.
SELECT nura_sync_user('{"id": "b0000000-0000-4000-8000-000000000001", "email": "frank@example.com", "full_name": "Frank Existing"}')->>'sync_type';

-- Nothing was copied at CREATE EXTENSION.
SELECT count(*) AS users_before FROM users;

-- 1. Dry run: the report, the issues, and nothing written.
CREATE TEMP VIEW state AS
SELECT (SELECT count(*) FROM users) AS users, (SELECT count(*) FROM user_service_profiles) AS profiles,
       (SELECT count(*) FROM user_id_aliases) AS aliases, (SELECT count(*) FROM user_sync_logs) AS logs,
       (SELECT count(*) FROM user_service_types) AS service_types;
SELECT * FROM state;
SET client_min_messages = warning;
SELECT jsonb_pretty(nura_migrate_legacy(true, 4, 'legacy') - '{apply_seconds,plan_seconds,rows_done,batches_done,phase}'::text[]);
RESET client_min_messages;
SELECT * FROM state;
SELECT kind, count(*) FROM nura_migration_issues GROUP BY kind ORDER BY kind;
SELECT count(*) AS work_rows_left FROM nura_migration_rows;

-- 2. The run, in one transaction.
SET client_min_messages = warning;
SELECT jsonb_pretty(nura_migrate_legacy(false, 4, 'legacy') - '{apply_seconds,plan_seconds,rows_done,batches_done}'::text[]) AS report;
RESET client_min_messages;
SELECT id, dry_run, status FROM nura_migration_runs ORDER BY id;

-- Every person, and where each legacy row went.
SELECT u.email, u.full_name, u.phone_number, u.is_active, u.current_streak, u.xp, u.privacy_settings,
       u.auth_synced_at IS NOT NULL AS from_auth,
       CASE WHEN u.created_at > now() - interval '1 hour' THEN 'now' ELSE u.created_at::date::text END AS created_at
FROM users u ORDER BY u.email NULLS LAST;
SELECT a.source, a.alias_id, u.email
FROM user_id_aliases a JOIN users u ON u.id = a.user_id ORDER BY a.source, a.alias_id;
SELECT u.email, p.service_type, p.service_preferences, p.service_metadata,
       CASE WHEN p.created_at > now() - interval '1 hour' THEN 'now' ELSE p.created_at::date::text END AS created_at
FROM user_service_profiles p JOIN users u ON u.id = p.user_id
WHERE p.service_type IN ('chat', 'voice', 'custom') ORDER BY u.email, p.service_type;
SELECT source_table, source_id, kind, field, kept_value, dropped_value, reason
FROM nura_migration_issues WHERE run_id = 2
ORDER BY kind, source_table, source_id, field;
-- Rows with a password and no auth account (counted, never copied).
SELECT report->'legacy_passwords_without_auth' AS passwords_without_auth FROM nura_migration_runs WHERE id = 2;
SELECT count(*) AS password_anywhere FROM users u WHERE u::text LIKE '%$2a$%';
SELECT count(*) AS password_in_profiles FROM user_service_profiles p WHERE p::text LIKE '%$2a$%';

-- Every legacy row accounted for, every field equal or a recorded conflict.
SELECT nura_verify_migration() - 'problems' AS verify;
-- Verify finds what went wrong behind the migration's back: a field changed since (Judy's name),
-- legacy columns gone from a profile (Ana's chat theme), a legacy row no alias leads to any more
-- (Leo's), each listed with its table and id.
BEGIN;
UPDATE users SET full_name = 'Judy Changed' WHERE id = nura_resolve_user_id('e0000000-0000-4000-8000-000000000002');
UPDATE user_service_profiles SET service_metadata = '{}'
WHERE user_id = nura_resolve_user_id('c0000000-0000-4000-8000-000000000001') AND service_type = 'chat';
DELETE FROM user_id_aliases WHERE source = 'voice_users' AND alias_id = 'e0000000-0000-4000-8000-000000000006';
SELECT v->'ok' AS ok, v->'missing' AS missing, v->'mismatched' AS mismatched,
       v->'tables'->'chat_users' AS chat_users, v->'tables'->'voice_users' AS voice_users
FROM nura_verify_migration() v;
SELECT p AS problem FROM nura_verify_migration() v, jsonb_array_elements(v->'problems') p ORDER BY p->>'id';
ROLLBACK;
-- The migration's log rows.
SELECT source, sync_type, count(*) FROM user_sync_logs GROUP BY 1, 2 ORDER BY 1, 2;
-- auth.users and users agree.
SELECT * FROM nura_check_consistency();

-- Legacy ids resolve to the current id; an unmigratable row's id does not; a uuid that is also
-- a current user's id resolves to that user (the legacy mapping is in user_id_aliases).
SELECT x.id, u.email
FROM (VALUES ('c0000000-0000-4000-8000-000000000003'), ('e0000000-0000-4000-8000-000000000001'),
             ('c0000000-0000-4000-8000-000000000004'), ('c0000000-0000-4000-8000-000000000007'),
             ('c0000000-0000-4000-8000-000000000002'), ('C0000000-0000-4000-8000-000000000010')) x(id)
LEFT JOIN users u ON u.id = nura_resolve_user_id(x.id) ORDER BY x.id;

-- 3. A second run changes nothing.
CREATE TEMP TABLE snap AS
SELECT (SELECT md5(string_agg(u::text, ',' ORDER BY u.id)) FROM users u) AS users,
       (SELECT md5(string_agg(p::text, ',' ORDER BY p.id)) FROM user_service_profiles p) AS profiles,
       (SELECT md5(string_agg(a::text, ',' ORDER BY a.alias_id, a.source)) FROM user_id_aliases a) AS aliases,
       (SELECT count(*) FROM user_sync_logs) AS logs;
SET client_min_messages = warning;
SELECT r->'sources' AS sources, r->'users_created' AS created, r->'users_merged' AS merged
FROM nura_migrate_legacy(false, 100, 'legacy') r;
RESET client_min_messages;
SELECT (SELECT md5(string_agg(u::text, ',' ORDER BY u.id)) FROM users u) = s.users AS users_same,
       (SELECT md5(string_agg(p::text, ',' ORDER BY p.id)) FROM user_service_profiles p) = s.profiles AS profiles_same,
       (SELECT md5(string_agg(a::text, ',' ORDER BY a.alias_id, a.source)) FROM user_id_aliases a) = s.aliases AS aliases_same,
       (SELECT count(*) FROM user_sync_logs) = s.logs AS no_new_log_rows
FROM snap s;

-- A user who takes a planned user's email between the plan and its batch (a signup, say) is
-- merged into, not duplicated: the batch looks its users up again. (The steps of CALL
-- nura_run_migration, here in one transaction; scripts/migration_test races one truly.)
BEGIN;
INSERT INTO legacy.chat_users (id, email, full_name, created_at)
VALUES ('c0000000-0000-4000-8000-000000000099', 'late@example.com', 'Late Legacy', '2021-01-01');
SET LOCAL client_min_messages = warning;
SELECT nura_migration_begin(100, 'legacy') AS run \gset
SELECT nura_migration_step(:run) AS finished;  -- the backfill: no auth user is missing
SELECT nura_migration_step(:run) AS finished;  -- the plan
SELECT nura_sync_user('{"id": "b0000000-0000-4000-8000-000000000099", "email": "LATE@example.com"}')->>'sync_type' AS late_signup;
SELECT nura_migration_step(:run) AS finished;  -- the batch
SELECT u.id, u.email, u.full_name FROM users u WHERE lower(u.email) = 'late@example.com';
SELECT nura_resolve_user_id('c0000000-0000-4000-8000-000000000099');
ROLLBACK;

-- An auth user the plan targets but who has no users row yet (it signed up after the backfill
-- while the sync was detached), whose address a user of the API holds: the batch has the sync
-- core adopt that user, as the backfill does, instead of failing on the email every time.
BEGIN;
INSERT INTO legacy.chat_users (id, email, full_name, created_at)
VALUES ('c0000000-0000-4000-8000-000000000098', 'orphan@example.com', 'Orphan Legacy', '2021-02-01');
SET LOCAL client_min_messages = warning;
SELECT nura_sync_user('{"id": "b0000000-0000-4000-8000-000000000098", "email": "orphan@example.com", "full_name": "Orphan API"}')->>'sync_type' AS api_user;
SELECT nura_migration_begin(100, 'legacy') AS run \gset
SELECT nura_migration_step(:run) AS finished;  -- the backfill: no auth user is missing
SELECT nura_detach_auth_sync();
SELECT auth.gotrue_signup('orphan@example.com', NULL, '{}', 'a1a1a1a1-0000-4000-8000-000000000098');
SELECT nura_migration_step(:run) AS finished;  -- the plan
SELECT nura_migration_step(:run) AS finished;  -- the batch
SELECT u.id, u.email, u.full_name FROM users u WHERE lower(u.email) = 'orphan@example.com';
SELECT nura_resolve_user_id('c0000000-0000-4000-8000-000000000098') AS legacy_id,
       nura_resolve_user_id('b0000000-0000-4000-8000-000000000098') AS api_id;
ROLLBACK;

-- When the row holding that address belongs to another auth user (whose new address Auth has
-- not synced, the sync being detached), no row can be made: the legacy row becomes an
-- unmigratable issue with the sync core's reason, and the run goes on.
BEGIN;
INSERT INTO legacy.chat_users (id, email, full_name, created_at)
VALUES ('c0000000-0000-4000-8000-000000000097', 'clash@example.com', 'Clash Legacy', '2021-03-01');
SET LOCAL client_min_messages = warning;
SELECT auth.gotrue_signup('clash@example.com', NULL, '{}', 'a1a1a1a1-0000-4000-8000-000000000096');
SELECT nura_migration_begin(100, 'legacy') AS run \gset
SELECT nura_migration_step(:run) AS finished;  -- the backfill: no auth user is missing
SELECT nura_detach_auth_sync();
UPDATE auth.users SET email = 'clash-moved@example.com' WHERE id = 'a1a1a1a1-0000-4000-8000-000000000096';
SELECT auth.gotrue_signup('clash@example.com', NULL, '{}', 'a1a1a1a1-0000-4000-8000-000000000097');
SELECT nura_migration_step(:run) AS finished;  -- the plan
SELECT nura_migration_step(:run) AS finished;  -- the batch
SELECT source_id, kind, reason FROM nura_migration_issues
WHERE run_id = :run AND source_id = 'c0000000-0000-4000-8000-000000000097';
SELECT report->'auth_backfill_failed' AS backfill_failed FROM nura_migration_runs WHERE id = :run;
ROLLBACK;

-- A legacy table without a primary key may hold one id twice: for one person (same email) the
-- rows merge under one alias, and the later row's other columns, where they differ, are a
-- conflict; for two people, the later row is unmigratable. A row of the id without an email
-- joins the person the id went to (the user this run creates under it), as a later run would
-- match it by id.
BEGIN;
CREATE SCHEMA legacy_nopk;
CREATE TABLE legacy_nopk.voice_users (id uuid, name text, email text, phone text,
    password_hash text, created_at timestamptz, voice_id text);
INSERT INTO legacy_nopk.voice_users (id, name, email, created_at, voice_id) VALUES
 ('e2000000-0000-4000-8000-000000000001', 'Twin', 'twin@example.com', '2020-05-01', 'alto'),
 ('e2000000-0000-4000-8000-000000000001', 'Twin', 'TWIN@example.com', '2020-05-02', 'bass'),
 ('e2000000-0000-4000-8000-000000000002', 'One', 'one@example.com', '2020-05-03', NULL),
 ('e2000000-0000-4000-8000-000000000002', 'Two', 'two@example.com', '2020-05-04', NULL),
 ('e2000000-0000-4000-8000-000000000003', 'Nameless', NULL, '2020-05-05', NULL),
 ('e2000000-0000-4000-8000-000000000003', 'Three', 'three@example.com', '2020-05-06', NULL),
 ('e2000000-0000-4000-8000-000000000003', 'Four', 'four@example.com', '2020-05-07', NULL);
SET LOCAL client_min_messages = warning;
SELECT r->'sources' AS sources FROM nura_migrate_legacy(false, 100, 'legacy_nopk') r;
SELECT a.alias_id, u.email, u.full_name FROM user_id_aliases a JOIN users u ON u.id = a.user_id
WHERE a.source = 'voice_users' AND a.alias_id::text LIKE 'e2%' ORDER BY 1;
SELECT source_id, kind, field, kept_value, COALESCE(dropped_value->>'name', dropped_value->>'voice_id') AS dropped, reason
FROM nura_migration_issues WHERE source_id LIKE 'e2%' ORDER BY kind, source_id, dropped_value->>'name';
SELECT v->'ok' AS ok, v->'tables' AS tables, v->'problems' AS problems FROM nura_verify_migration() v;
ROLLBACK;

-- Legacy ids and created_at stored as text: read through the row's JSON (typed uuid and
-- timestamp columns are read as they are). An id that is a uuid in upper case is taken; one
-- that is not a uuid is unmigratable. The earlier created_at wins the merge: the voice row's
-- timestamp without time zone is read in the session's time zone (09:00 in New York is 13:00
-- UTC, later than the chat row's 10:00 UTC; read as UTC it would be earlier).
BEGIN;
SET LOCAL timezone = 'America/New_York';
CREATE SCHEMA legacy_text;
CREATE TABLE legacy_text.chat_users (id text, email text, full_name text, created_at text);
CREATE TABLE legacy_text.voice_users (id uuid, name text, email text, created_at timestamp);
INSERT INTO legacy_text.chat_users VALUES
 ('E3000000-0000-4000-8000-000000000001', 'Text1@example.com', 'Upper', '2020-06-01 10:00+00'),
 ('e3000000-0000-4000-8000-000000000002', 'text2@example.com', 'Lower', '2020-05-01 10:00+00'),
 ('not-a-uuid', 'text3@example.com', 'Bad', '2020-04-01 10:00+00');
INSERT INTO legacy_text.voice_users VALUES
 ('e3000000-0000-4000-8000-000000000011', 'Voice', 'text1@example.com', '2020-06-01 09:00');
SET LOCAL client_min_messages = warning;
SELECT r->'sources' AS sources FROM nura_migrate_legacy(false, 100, 'legacy_text') r;
SELECT a.source, a.alias_id, u.email, u.full_name, u.created_at AT TIME ZONE 'UTC' AS created_utc
FROM user_id_aliases a JOIN users u ON u.id = a.user_id
WHERE a.alias_id::text LIKE 'e3%' ORDER BY a.alias_id;
SELECT kind, source_id, field, kept_value, dropped_value, reason
FROM nura_migration_issues
WHERE source_id LIKE 'e3%' OR dropped_value->>'email' = 'text3@example.com'
ORDER BY kind, field;
SELECT v->'ok' AS ok, v->'tables' AS tables FROM nura_verify_migration() v;
ROLLBACK;

-- 4. A legacy user signs up through auth: the migrated row is adopted, the legacy id resolves.
SELECT auth.gotrue_signup('Ivan@example.com', NULL, '{}', 'a1a1a1a1-0000-4000-8000-000000000010');
SELECT u.id, u.email, u.full_name FROM users u WHERE lower(u.email) = 'ivan@example.com';
SELECT nura_resolve_user_id('c0000000-0000-4000-8000-000000000010');

-- 5. Rollback of the run: users it created go unless auth owns them now (ivan, the backfilled
-- ones); profiles and aliases it gave to frank (no auth account) go; the rest is kept.
SELECT nura_rollback_migration(2);
SELECT u.email, u.full_name, u.auth_synced_at IS NOT NULL AS from_auth FROM users u ORDER BY u.email NULLS LAST;
SELECT a.source, a.alias_id, u.email
FROM user_id_aliases a JOIN users u ON u.id = a.user_id ORDER BY a.source, a.alias_id;
SELECT u.email, p.service_type FROM user_service_profiles p JOIN users u ON u.id = p.user_id
WHERE p.service_type IN ('chat', 'voice', 'custom') ORDER BY 1, 2;
SELECT id, status FROM nura_migration_runs ORDER BY id;
SELECT nura_rollback_migration(2) AS again;
SELECT (nura_verify_migration(2))->'ok' AS ok_after_rollback;
-- A new run after the rollback places the rows again; the rows of kept users are placed by the
-- rolled-back run's aliases, and that run's conflicts account for what it dropped from them.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT r->'sources'->'chat_users' AS chat_users FROM nura_migrate_legacy(false, 100, 'legacy') r;
SELECT v->'ok' AS ok, v->'missing' AS missing, v->'mismatched' AS mismatched, v->'problems' AS problems
FROM nura_verify_migration() v;
ROLLBACK;
SELECT * FROM nura_check_consistency();

-- A user a run created, deleted since and made again under the same id, is not the run's: made
-- again by a later run (e4..01), the earlier run's rollback leaves it and the later run's removes
-- it; made again through the API (e4..03), no rollback removes it.
BEGIN;
SET LOCAL client_min_messages = warning;
CREATE SCHEMA legacy_again;
CREATE TABLE legacy_again.chat_users (id uuid PRIMARY KEY, email text, full_name text, created_at timestamptz);
INSERT INTO legacy_again.chat_users VALUES
 ('e4000000-0000-4000-8000-000000000001', 'again@example.com', 'Again', '2020-01-01 10:00+00'),
 ('e4000000-0000-4000-8000-000000000002', 'stays@example.com', 'Stays', '2020-01-01 10:00+00'),
 ('e4000000-0000-4000-8000-000000000003', 'api@example.com', 'Api', '2020-01-01 10:00+00');
SELECT (r->>'run_id')::bigint AS first_run, r->'users_created' AS created
FROM nura_migrate_legacy(false, 10, 'legacy_again') r \gset
SELECT :created AS first_run_created;
DELETE FROM users WHERE id IN ('e4000000-0000-4000-8000-000000000001', 'e4000000-0000-4000-8000-000000000003');
DELETE FROM legacy_again.chat_users WHERE id = 'e4000000-0000-4000-8000-000000000003';
SELECT nura_sync_user('{"id": "e4000000-0000-4000-8000-000000000003", "email": "api@example.com", "full_name": "Made by the API"}')->>'sync_type' AS api;
SELECT (r->>'run_id')::bigint AS second_run, r->'users_created' AS created
FROM nura_migrate_legacy(false, 10, 'legacy_again') r \gset
SELECT :created AS second_run_created;
SELECT nura_rollback_migration(:first_run) - 'run_id' AS first_rollback;
SELECT id, email, full_name FROM users WHERE id::text LIKE 'e4%' ORDER BY id;
SELECT nura_rollback_migration(:second_run) - 'run_id' AS second_rollback;
SELECT id, email, full_name FROM users WHERE id::text LIKE 'e4%' ORDER BY id;
ROLLBACK;

-- A user a run created, adopted by an auth signup since (e6..01 became e6..a1), whose old id
-- was then given to a new user through the API: rollback keeps and counts the adopted user, and
-- leaves the new one alone.
BEGIN;
SET LOCAL client_min_messages = warning;
CREATE SCHEMA legacy_adopt;
CREATE TABLE legacy_adopt.chat_users (id uuid PRIMARY KEY, email text, full_name text, created_at timestamptz);
INSERT INTO legacy_adopt.chat_users VALUES
 ('e6000000-0000-4000-8000-000000000001', 'adopt@example.com', 'Adopted', '2020-01-01 10:00+00');
SELECT (r->>'run_id')::bigint AS adopt_run FROM nura_migrate_legacy(false, 10, 'legacy_adopt') r \gset
SELECT auth.gotrue_signup('adopt@example.com', NULL, '{}', 'e6000000-0000-4000-8000-0000000000a1');
SELECT nura_sync_user('{"id": "e6000000-0000-4000-8000-000000000001", "email": "reused@example.com"}')->>'sync_type' AS api;
SELECT nura_rollback_migration(:adopt_run) - 'run_id' AS adopt_rollback;
SELECT id, email, full_name FROM users WHERE id::text LIKE 'e6%' ORDER BY id;
ROLLBACK;

-- Under a publication FOR ALL TABLES (as a CDC tool sets up), which refuses a DELETE on a table
-- without a replica identity: a run ends and is rolled back.
BEGIN;
SET LOCAL client_min_messages = error;
CREATE PUBLICATION nura_all_tables FOR ALL TABLES;
CREATE SCHEMA legacy_pub;
CREATE TABLE legacy_pub.chat_users (id uuid PRIMARY KEY, email text, full_name text, created_at timestamptz);
INSERT INTO legacy_pub.chat_users VALUES
 ('e5000000-0000-4000-8000-000000000001', 'pub1@example.com', 'Pub One', '2020-01-01 10:00+00'),
 ('e5000000-0000-4000-8000-000000000002', 'pub2@example.com', 'Pub Two', '2020-01-01 10:00+00');
SELECT (r->>'run_id')::bigint AS pub_run, r->'users_created' AS created
FROM nura_migrate_legacy(false, 1, 'legacy_pub') r \gset
SELECT :created AS pub_run_created,
       (SELECT count(*) FROM nura_migration_rows) AS work_list_left;
SELECT nura_rollback_migration(:pub_run) - 'run_id' AS pub_rollback;
SELECT count(*) AS pub_users_left FROM users WHERE id::text LIKE 'e5%';
ROLLBACK;

-- Bad arguments.
SELECT nura_migrate_legacy(false, 0, 'legacy');
SELECT nura_migrate_legacy(false, 10, 'no_such_schema');
SELECT nura_rollback_migration(99);
SELECT nura_rollback_migration(1);
SELECT nura_verify_migration(99);
-- Missing legacy tables are skipped and reported.
CREATE SCHEMA empty_legacy;
SET client_min_messages = warning;
SELECT r->'skipped_tables' AS skipped, r->'sources' AS sources FROM nura_migrate_legacy(true, 10, 'empty_legacy') r;
RESET client_min_messages;

-- The legacy tables were only read.
SELECT legacy_fingerprint('legacy') = fp.before AS legacy_unchanged FROM fp;

\c postgres
DROP DATABASE nura_migration;
