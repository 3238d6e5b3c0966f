-- Legacy cells as they come (docs/migration.md): ids in every form PostgreSQL's uuid reads, white space of
-- every kind around text, JSON numbers of any size and precision, a created_at from the future,
-- one id used by two tables for two people. The migration reads them, verify agrees with it
-- (both read cells through the same functions), and each case failed on 0.5.0.
DROP DATABASE IF EXISTS nura_mig_inputs;
CREATE DATABASE nura_mig_inputs TEMPLATE template0;
\c nura_mig_inputs
CREATE EXTENSION nura_users;
-- Legacy tables whose ids are text, as some products kept them.
CREATE TABLE chat_users (
    id text, email text, full_name text, phone_number text, password_hash text,
    privacy_settings json, notification_prefs json, is_active boolean DEFAULT true,
    created_at timestamptz DEFAULT now(), theme text);
-- created_at as text, as some services kept it.
CREATE TABLE voice_users (
    id text, name text, email text, phone text, password_hash text,
    created_at text, voice_id text);
INSERT INTO chat_users (id, email, full_name, phone_number, privacy_settings, notification_prefs, created_at, theme) VALUES
    ('{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}', 'braced@example.com', 'Braced Upper', NULL, NULL, NULL, '2024-01-01', 'dark'),
    ('a0eebc999c0b4ef8bb6d6bb9bd380a12', 'plain@example.com', 'No Hyphens', NULL, NULL, NULL, '2024-01-01', NULL),
    (' a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a13 ', 'blanks@example.com', 'Blanks Around', NULL, NULL, NULL, '2024-01-01', NULL),
    ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a14', E'ann@example.com\t', E'\u00a0Bob\u2003', E'+49\u00a0151 1234567', NULL, NULL, '2024-01-01', NULL),
    ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a15', 'numbers@example.com', 'Numbers',  NULL,
     '{"pi": 3.14159265358979323846, "acct": 123456789012345678901234567890}', '{"x": 1e400}', '2024-01-01', NULL),
    ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a16', 'future@example.com', 'From The Future', NULL, NULL, NULL, '3000-01-01', NULL),
    ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a17', 'shared.chat@example.com', 'Chat Person', NULL, NULL, NULL, '2024-01-01', NULL),
    ('not a uuid', 'nouuid@example.com', 'No Uuid', NULL, NULL, NULL, '2024-01-01', NULL),
    ('e0000000-0000-4000-8000-000000000001', 'a@example.com', 'Person A', NULL, NULL, NULL, '2024-02-01', NULL),
    ('e0000000-0000-4000-8000-000000000002', 'c@example.com', 'Person C', '+49 151 2020202', NULL, NULL, '2024-02-01', 'old'),
    -- json cells: a \u escape jsonb takes, a NUL it refuses, a lone surrogate.
    ('f0000000-0000-4000-8000-000000000001', 'escape@example.com', 'Escape', NULL, '{"e": "caf\u00e9"}', NULL, '2024-01-01', NULL),
    ('f0000000-0000-4000-8000-000000000002', 'nul@example.com', 'Nul', NULL, '{"a": "x\u0000y"}', NULL, '2024-01-01', NULL),
    ('f0000000-0000-4000-8000-000000000003', 'surrogate@example.com', 'Surrogate', NULL, NULL, '{"s": "\ud800"}', '2024-01-01', NULL),
    -- A cell nested deeper than users and profiles hold (128 levels): an issue, not a stopped run.
    ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a18', 'deep@example.com', 'Deep Prefs', NULL, NULL,
     ('{"x": ' || repeat('[', 140) || repeat(']', 140) || '}')::json, '2024-01-01', NULL);
-- A user whose chat preferences someone wrote by hand, nested deeper than the API takes, and a
-- legacy chat row of that person with preferences and an extra column.
SELECT nura_sync_user('{"id": "b0000000-0000-4000-8000-000000000001", "email": "handdeep@example.com"}') ->> 'sync_type' AS made;
UPDATE user_service_profiles SET service_preferences = ('{"x": ' || repeat('[', 140) || repeat(']', 140) || '}')::jsonb
WHERE user_id = 'b0000000-0000-4000-8000-000000000001' AND service_type = 'chat';
INSERT INTO chat_users (id, email, full_name, notification_prefs, created_at, theme) VALUES
    ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a19', 'handdeep@example.com', 'Hand Deep', '{"n": 1}', '2024-01-01', 'red');
-- The voice service used the chat person's id for someone else.
INSERT INTO voice_users (id, name, email, phone, created_at) VALUES
    ('A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A17', 'Voice Person', 'shared.voice@example.com', NULL, '2024-01-01'),
    ('f0000000-0000-4000-8000-000000000004', 'Vague Time', 'vague@example.com', NULL, 'yesterday-ish'),
    ('f0000000-0000-4000-8000-000000000005', 'Other Form', 'otherform@example.com', NULL, 'Jan 2 2024 10:00 UTC');

SET client_min_messages = warning;
SELECT r -> 'sources' AS sources, r -> 'ambiguous_ids' AS ambiguous_ids FROM nura_migrate_legacy(false) r;
RESET client_min_messages;
SELECT source_table, source_id, kind, field, left(dropped_value::text, 60) AS dropped_value, reason
FROM nura_migration_issues ORDER BY id;
-- Every accepted form became the same canonical id and resolves.
SELECT nura_resolve_user_id('{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}') = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11' AS braced,
       nura_resolve_user_id('a0eebc999c0b4ef8bb6d6bb9bd380a12') = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12' AS plain,
       nura_resolve_user_id(' a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a13 ') = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a13' AS blanks;
-- Text trimmed of every kind of white space, the phone cleaned of it.
SELECT email, full_name, phone_number FROM users WHERE id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a14';
-- JSON numbers exactly as written.
SELECT u.privacy_settings::text AS privacy, p.service_preferences::text = '{"x": 1' || repeat('0', 400) || '}' AS prefs_exact
FROM users u JOIN user_service_profiles p ON p.user_id = u.id AND p.service_type = 'chat'
WHERE u.id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a15';
-- A \u escape that jsonb takes is carried; a text created_at in another form PostgreSQL reads
-- is read.
SELECT privacy_settings FROM users WHERE email = 'escape@example.com';
SELECT created_at = '2024-01-02 10:00+00' AS read_as_postgresql_does FROM users WHERE email = 'otherform@example.com';
-- A created_at in the future is an issue, not the user's creation time.
SELECT created_at < now() AS created_in_the_past FROM users WHERE id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a16';
-- The extra column of a row whose id was written in upper case with braces is under its
-- canonical id.
SELECT service_metadata -> 'legacy' AS legacy FROM user_service_profiles
WHERE user_id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11' AND service_type = 'chat';
-- One id, two tables, two people: the table tells them apart.
SELECT (SELECT full_name FROM users WHERE id = nura_resolve_user_id('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a17', 'chat_users')) AS in_chat,
       (SELECT full_name FROM users WHERE id = nura_resolve_user_id('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a17', 'voice_users')) AS in_voice,
       nura_resolve_user_id('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a17', 'custom_users') AS in_custom;
SELECT nura_resolve_user_id('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a17', 'fax_users');
-- The hand-written profile is left as it was.
SELECT service_preferences = ('{"x": ' || repeat('[', 140) || repeat(']', 140) || '}')::jsonb AS untouched
FROM user_service_profiles WHERE user_id = 'b0000000-0000-4000-8000-000000000001' AND service_type = 'chat';
-- Verify agrees with the migration on every row.
SELECT v -> 'ok' AS ok, v -> 'rows_checked' AS rows_checked, v -> 'mismatched' AS mismatched, v -> 'problems' AS problems
FROM nura_verify_migration() v;

-- A re-run (docs/migration.md): since the first run, the table (which has no primary key) got a row with A's
-- id for another person, B, dated before A's, and C's row changed. A stays placed, B is an issue
-- (the id is taken in this table by A), C's changes are merged with their conflicts; nothing
-- is lost, and verify still agrees.
INSERT INTO chat_users (id, email, full_name, created_at) VALUES
    ('e0000000-0000-4000-8000-000000000001', 'b@example.com', 'Person B', '2023-01-01');
UPDATE chat_users SET full_name = 'Person C Renamed', phone_number = '+49 151 3030303', theme = 'new'
WHERE id = 'e0000000-0000-4000-8000-000000000002';
SET client_min_messages = warning;
SELECT nura_migrate_legacy(false) -> 'sources' -> 'chat_users' AS second_run;
SELECT nura_migrate_legacy(false) -> 'sources' -> 'chat_users' AS third_run;
RESET client_min_messages;
SELECT source_id, kind, field, kept_value, left(dropped_value::text, 40) AS dropped_value, reason
FROM nura_migration_issues WHERE run_id > 1 ORDER BY id;
SELECT email, full_name, phone_number FROM users WHERE id IN (SELECT nura_resolve_user_id(i, 'chat_users')
    FROM unnest(ARRAY['e0000000-0000-4000-8000-000000000001', 'e0000000-0000-4000-8000-000000000002']) i) ORDER BY email;
SELECT service_metadata -> 'legacy' AS legacy FROM user_service_profiles
WHERE user_id = nura_resolve_user_id('e0000000-0000-4000-8000-000000000002', 'chat_users') AND service_type = 'chat';
SELECT v -> 'ok' AS ok, v -> 'rows_checked' AS rows_checked, v -> 'problems' AS problems FROM nura_verify_migration() v;

-- A running run whose stored report cannot be read (written by hand, damaged): its next step
-- says so, naming the run, instead of stepping for ever; the run can be rolled back.
SELECT nura_migration_begin(100, 'public') AS broken \gset
UPDATE nura_migration_runs SET report = report || '{"phase": "nowhere"}' WHERE id = :broken;
SELECT nura_migration_step(:broken);
UPDATE nura_migration_runs SET report = '{"phase": 123}' WHERE id = :broken;
SELECT nura_migration_step(:broken);
SELECT (nura_rollback_migration(:broken) ->> 'run_id')::bigint = :broken AS rolled_back;

\c nura_regress
DROP DATABASE nura_mig_inputs;
