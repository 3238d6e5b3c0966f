-- Hostile input (docs/errors.md): thousands of generated payloads — random JSON types, deep nesting,
-- long strings, unicode edge cases, SQL metacharacters, NULLs — against every jsonb-taking
-- function. Every call gives a result or a clean error with a specific SQLSTATE; never an
-- internal error (XX000); nura_sync_user writes exactly one log row per call.
DROP DATABASE IF EXISTS nura_fuzz;
CREATE DATABASE nura_fuzz TEMPLATE template0;
\c nura_fuzz
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixture :abs_srcdir '/../fixtures/supabase_auth.sql'
\set ECHO none
\i :fixture
CREATE EXTENSION nura_users;
\set ECHO all
SELECT setseed(0.42);

-- A value nested deeper than a Value is read (128 levels), up to 728.
CREATE FUNCTION fuzz_deep() RETURNS jsonb LANGUAGE sql VOLATILE
AS $$ SELECT (repeat('[', n) || '1e400' || repeat(']', n))::jsonb FROM (SELECT 129 + floor(random() * 600)::int) s(n) $$;

-- A random JSON value of bounded depth (and, now and then, one far deeper).
CREATE FUNCTION fuzz_value(depth int) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    pick int := floor(random() * 12);
    texts text[] := ARRAY['', ' ', 'a@b.co', 'Ana@Example.COM', '+4915112345678', '15551234567',
        E'\u00e9\u00e8\u4e2d\u6587', E'\U0001F600\U0001F680', E'zero\u200bwidth', 'Robert''); DROP TABLE users; --',
        '$1 %s %I \\ \"', '2026-11-25T10:00:00Z', '9999-12-31T23:59:59+14:00', 'not-a-date',
        '11111111-1111-4111-8111-111111111111', E'line\nbreak\ttab', '<script>x</script>'];
BEGIN
    RETURN CASE
        WHEN pick = 0 THEN 'null'::jsonb
        WHEN pick = 1 THEN to_jsonb(random() < 0.5)
        WHEN pick = 2 THEN to_jsonb((random() * 1e12 - 5e11)::bigint)
        WHEN pick = 3 THEN to_jsonb(random() * 1e300)
        WHEN pick IN (4, 5, 6) THEN to_jsonb(texts[1 + floor(random() * array_length(texts, 1))::int])
        WHEN pick = 7 THEN to_jsonb(repeat(chr(32 + floor(random() * 90)::int), floor(random() * 3000)::int))
        WHEN pick = 8 AND random() < 0.05 THEN to_jsonb(repeat('x', 1048576))
        WHEN pick = 9 AND depth > 0 THEN jsonb_build_array(fuzz_value(depth - 1), fuzz_value(depth - 1))
        WHEN pick = 10 AND depth > 0 THEN jsonb_build_object('k' || floor(random() * 5), fuzz_value(depth - 1))
        WHEN pick = 11 AND random() < 0.3 THEN fuzz_deep()
        WHEN pick = 11 AND random() < 0.3 THEN '123456789012345678901234567890.14159265358979323846e300'::jsonb
        ELSE to_jsonb(chr(1 + floor(random() * 55000)::int) || 'x')
    END;
END $$;

-- A random payload: mostly objects with known and unknown keys, sometimes anything at all.
CREATE FUNCTION fuzz_payload() RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    keys text[] := ARRAY['id', 'email', 'phone_number', 'full_name', 'display_name', 'avatar_url',
        'bio', 'user_metadata', 'source', 'request_id', 'session_id', 'updated_at',
        'privacy_settings', 'xp', 'is_active', 'Id', ''];
    result jsonb := '{}';
    k text;
BEGIN
    IF random() < 0.08 THEN
        RETURN fuzz_value(3);
    END IF;
    IF random() < 0.7 THEN
        result := jsonb_build_object('id', (ARRAY['11111111-1111-4111-8111-111111111111',
            '22222222-2222-4222-8222-222222222222', gen_random_uuid()::text])[1 + floor(random() * 3)::int]);
    END IF;
    FOR i IN 1 .. floor(random() * 5)::int LOOP
        k := keys[1 + floor(random() * array_length(keys, 1))::int];
        result := result || jsonb_build_object(k, fuzz_value(2));
    END LOOP;
    RETURN result;
END $$;

CREATE TABLE fuzz_outcomes (fn text, outcome text);
SELECT coalesce(max(id), 0) AS logs_before FROM user_sync_logs \gset
DO $fuzz$
DECLARE
    r jsonb;
    p jsonb;
BEGIN
    FOR i IN 1 .. 1500 LOOP
        BEGIN
            r := nura_sync_user(fuzz_payload());
            INSERT INTO fuzz_outcomes VALUES ('nura_sync_user',
                CASE WHEN (r ->> 'success')::boolean THEN 'success' ELSE r -> 'error' ->> 'code' END);
        EXCEPTION WHEN OTHERS THEN
            INSERT INTO fuzz_outcomes VALUES ('nura_sync_user', 'raised ' || SQLSTATE);
        END;
        BEGIN
            p := fuzz_payload();
            IF jsonb_typeof(p) = 'object' THEN
                p := p - 'id';
            END IF;
            r := nura_update_profile('11111111-1111-4111-8111-111111111111', p);
            INSERT INTO fuzz_outcomes VALUES ('nura_update_profile',
                CASE WHEN (r ->> 'success')::boolean THEN 'success' ELSE r -> 'error' ->> 'code' END);
        EXCEPTION WHEN OTHERS THEN
            INSERT INTO fuzz_outcomes VALUES ('nura_update_profile', 'raised ' || SQLSTATE);
        END;
        BEGIN
            r := nura_upsert_service_profile('11111111-1111-4111-8111-111111111111',
                (ARRAY['chat', 'voice', 'fax', NULL, ''])[1 + floor(random() * 5)::int],
                fuzz_value(2), CASE WHEN random() < 0.5 THEN fuzz_value(2) END);
            INSERT INTO fuzz_outcomes VALUES ('nura_upsert_service_profile', 'success');
        EXCEPTION WHEN OTHERS THEN
            INSERT INTO fuzz_outcomes VALUES ('nura_upsert_service_profile', 'raised ' || SQLSTATE);
        END;
    END LOOP;
END
$fuzz$;

-- Every outcome is a result or a specific, expected SQLSTATE; no XX000 anywhere.
SELECT fn, outcome IN ('success', 'invalid_payload', 'conflict', 'forbidden', 'not_found',
                       'raised 22023', 'raised P0002') AS expected, count(*) > 0 AS seen
FROM fuzz_outcomes GROUP BY 1, 2 ORDER BY 1, 2;
SELECT fn, outcome, count(*) FROM fuzz_outcomes
WHERE outcome NOT IN ('success', 'invalid_payload', 'conflict', 'forbidden', 'not_found',
                      'raised 22023', 'raised P0002')
GROUP BY 1, 2 ORDER BY 1, 2;
-- Each nura_sync_user and nura_update_profile call wrote exactly one log row.
SELECT count(*) = 3000 AS one_log_row_per_call FROM user_sync_logs WHERE id > :logs_before;
SELECT count(*) FILTER (WHERE sqlstate = 'XX000') AS internal_errors_logged FROM user_sync_logs;
SELECT count(*) AS consistency_problems FROM nura_check_consistency();

-- Every jsonb a user controls in auth.users (raw_user_meta_data, through GoTrue's signUp and
-- updateUser): random, deep, huge. Every user's ban is still mirrored, no sync fails, and the
-- consistency check, reconcile and the migration's backfill run for everybody.
SELECT max(id) AS logs_before FROM user_sync_logs \gset
DO $auth$
BEGIN
    FOR i IN 1 .. 200 LOOP
        PERFORM auth.gotrue_signup('fuzz' || i || '@example.com', NULL,
            CASE WHEN random() < 0.5 THEN fuzz_value(3)
                 ELSE jsonb_build_object('full_name', fuzz_value(1), 'name', fuzz_value(1),
                                         'picture', fuzz_value(1), 'x', fuzz_deep()) END);
    END LOOP;
    UPDATE auth.users SET raw_user_meta_data = CASE WHEN random() < 0.5 THEN fuzz_deep() ELSE fuzz_value(3) END
    WHERE email LIKE 'fuzz%';
    UPDATE auth.users SET banned_until = '2126-01-01 00:00+00' WHERE email LIKE 'fuzz%';
    UPDATE auth.users SET deleted_at = now(), email = md5(email) WHERE email LIKE 'fuzz1%';
END
$auth$;
SELECT count(*) AS auth_users,
       count(*) FILTER (WHERE u.banned_until IS NOT DISTINCT FROM a.banned_until) AS bans_mirrored,
       count(*) FILTER (WHERE a.deleted_at IS NOT NULL) = count(*) FILTER (WHERE u.email IS NULL AND NOT u.is_active) AS deletions_mirrored
FROM auth.users a JOIN users u ON u.id = a.id WHERE a.banned_until IS NOT NULL;
SELECT count(*) AS failed_syncs FROM user_sync_logs WHERE id > :logs_before AND NOT success;
SELECT count(*) AS consistency_problems FROM nura_check_consistency();
SELECT nura_reconcile() ->> 'failed' AS reconcile_failed;
SELECT nura_detach_auth_sync();
SELECT count(auth.gotrue_signup('fuzz.late' || i || '@example.com', NULL,
                                 jsonb_build_object('x', fuzz_deep()))) AS signed_up_detached
FROM generate_series(1, 20) i;
SELECT nura_migrate_legacy(false) ->> 'auth_backfilled' AS backfilled;
SELECT status FROM nura_migration_runs ORDER BY id DESC LIMIT 1;
SELECT count(*) AS consistency_problems FROM nura_check_consistency();

\c nura_regress
DROP DATABASE nura_fuzz;
