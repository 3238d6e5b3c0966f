-- Generated legacy data (docs/migration.md): tables without primary keys holding random mixes of what
-- legacy data holds — ids in every form uuid reads and some that are none, one id for two
-- people within and across tables, NULLs, blanks and white space of every kind, non-ASCII and
-- case-varied emails, unusable phones, big and precise numbers, deep JSON, NULs in JSON, text
-- created_at that is no time, times from the future. The run must finish, verify must be ok
-- with every row accounted for; after rows are added and changed, a second run must account
-- for those too, and a third must change nothing.
DROP DATABASE IF EXISTS nura_mig_fuzz;
CREATE DATABASE nura_mig_fuzz TEMPLATE template0;
\c nura_mig_fuzz
CREATE EXTENSION nura_users;
CREATE TABLE chat_users (
    id text, email text, full_name text, phone_number text, password_hash text,
    privacy_settings json, notification_prefs json, is_active boolean,
    created_at timestamptz, theme text);
CREATE TABLE voice_users (
    id text, name text, email text, phone text, password_hash text, created_at text, voice_id text);
SELECT setseed(0.2026);

CREATE FUNCTION pick(a text[]) RETURNS text LANGUAGE sql VOLATILE
AS $$ SELECT a[1 + floor(random() * array_length(a, 1))::int] $$;
-- An id from a small pool (so that ids repeat within and across tables), in a random form.
CREATE FUNCTION fuzz_id() RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    u text := md5('person' || floor(random() * 120)::int)::uuid::text;
BEGIN
    RETURN CASE floor(random() * 8)::int
        WHEN 0 THEN upper(u)
        WHEN 1 THEN '{' || u || '}'
        WHEN 2 THEN replace(u, '-', '')
        WHEN 3 THEN ' ' || u || E'\t'
        WHEN 4 THEN pick(ARRAY['not-a-uuid', '', NULL, '1234'])
        ELSE u END;
END $$;
CREATE FUNCTION fuzz_email() RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    local text := pick(ARRAY['anna', 'ΟΔΥΣ', 'οδυσ', 'İnci', 'straße', 'STRASSE', 'Жанна', 'bob.smith',
                             'josé', 'ßoss', 'user' || floor(random() * 60)::int]);
BEGIN
    RETURN CASE floor(random() * 10)::int
        WHEN 0 THEN NULL
        WHEN 1 THEN ''
        WHEN 2 THEN 'not an email'
        WHEN 3 THEN E'\u00a0' || local || '@example.com '
        WHEN 4 THEN upper(local) || '@EXAMPLE.com'
        ELSE local || '@example.com' END;
END $$;
CREATE FUNCTION fuzz_json() RETURNS json LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN CASE floor(random() * 9)::int
        WHEN 0 THEN NULL
        WHEN 1 THEN '{}'
        WHEN 2 THEN '{"pi": 3.14159265358979323846, "acct": 123456789012345678901234567890}'
        WHEN 3 THEN '{"big": 1e400}'
        WHEN 4 THEN ('{"deep": ' || repeat('[', 130) || repeat(']', 130) || '}')::json
        WHEN 5 THEN '{"nul": "a\u0000b"}'
        WHEN 6 THEN '{"e": "caf\u00e9", "t": "\t"}'
        WHEN 7 THEN '[1, 2]'
        ELSE json_build_object('k', floor(random() * 5)) END;
END $$;

INSERT INTO chat_users
SELECT fuzz_id(), fuzz_email(),
       pick(ARRAY[NULL, '', ' Ann ', E'\u2003Bob\u00a0', 'Ζωή', repeat('x', 250), 'Carl']),
       pick(ARRAY[NULL, '', '+49 151 1234567', '(555) 123-4567', E'+44\u00a07700 900123', 'call me', '0049']),
       pick(ARRAY[NULL, '$2a$10$hash']),
       fuzz_json(), fuzz_json(),
       (ARRAY[NULL, true, false])[1 + floor(random() * 3)::int],
       pick(ARRAY[NULL, '2020-01-01 10:00+00', '2024-06-01 12:00+00', '3000-01-01 00:00+00'])::timestamptz,
       pick(ARRAY[NULL, 'dark', 'light'])
FROM generate_series(1, 300);
INSERT INTO voice_users
SELECT fuzz_id(), pick(ARRAY[NULL, 'Ann', 'Ζωή', ' ']), fuzz_email(),
       pick(ARRAY[NULL, '15551234567', '+1 (555) 987-6543', 'nope']),
       NULL,
       pick(ARRAY[NULL, '2021-03-04', 'Jan 2 2024 10:00 UTC', 'yesterday-ish', '2999-12-31']),
       pick(ARRAY[NULL, 'v1'])
FROM generate_series(1, 200);

SET client_min_messages = warning;
SELECT (nura_migrate_legacy(false, 50) ->> 'run_id') IS NOT NULL AS first_run;
RESET client_min_messages;
SELECT v -> 'ok' AS ok, (v ->> 'accounted')::int = (v ->> 'rows_checked')::int AS every_row_accounted,
       v -> 'rows_checked' AS rows_checked, v -> 'problems' AS problems
FROM nura_verify_migration() v;

-- New rows (some with ids already placed, some new people) and changed rows, then a re-run.
INSERT INTO chat_users
SELECT fuzz_id(), fuzz_email(), pick(ARRAY['New Name', NULL]), pick(ARRAY[NULL, '+49 151 7654321']),
       NULL, fuzz_json(), NULL, true, '2025-01-01 00:00+00', pick(ARRAY[NULL, 'blue'])
FROM generate_series(1, 60);
UPDATE chat_users SET full_name = 'Changed ' || coalesce(full_name, ''), theme = 'changed'
WHERE random() < 0.15;
UPDATE voice_users SET phone = '+1 555 000 1111' WHERE random() < 0.15;
SET client_min_messages = warning;
SELECT (nura_migrate_legacy(false, 50) ->> 'run_id') IS NOT NULL AS second_run;
RESET client_min_messages;
SELECT v -> 'ok' AS ok, (v ->> 'accounted')::int = (v ->> 'rows_checked')::int AS every_row_accounted,
       v -> 'rows_checked' AS rows_checked, v -> 'problems' AS problems
FROM nura_verify_migration() v;

-- A third run over unchanged tables places nothing: no user created or merged.
SET client_min_messages = warning;
SELECT r -> 'users_created' AS created, r -> 'users_merged' AS merged,
       (SELECT sum((s.value ->> 'migrated')::int + (s.value ->> 'merged')::int)
        FROM jsonb_each(r -> 'sources') s) AS rows_placed
FROM nura_migrate_legacy(false, 50) r;
RESET client_min_messages;
SELECT count(*) AS consistency_problems FROM nura_check_consistency();

\c nura_regress
DROP DATABASE nura_mig_fuzz;
