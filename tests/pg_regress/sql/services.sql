-- Service profiles and the service views (docs/api.md): the seed's shapes, NULL for unknown users,
-- unknown service types, merging of preferences, streaks across UTC days, xp bounds.
DROP DATABASE IF EXISTS nura_services;
CREATE DATABASE nura_services TEMPLATE template0;
\c nura_services
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixture :abs_srcdir '/../fixtures/supabase_auth.sql'
\set ECHO none
\i :fixture
CREATE EXTENSION nura_users;
\set ECHO all
SET TIME ZONE 'UTC';
\set VERBOSITY terse

SELECT nura_sync_user('{"id": "c3333333-0000-4000-8000-000000000003", "email": "cy@example.com",
    "full_name": "Cy", "phone_number": "15550003333"}')->>'sync_type';
UPDATE user_service_types SET default_preferences = '{"voice": "alto", "speed": 1}' WHERE service_type = 'voice';

-- The three views, with a profile's preferences and the service type's defaults.
SELECT nura_upsert_service_profile('c3333333-0000-4000-8000-000000000003', 'chat', '{"theme": "dark"}')
    ->'service_preferences' AS chat;
SELECT nura_upsert_service_profile('c3333333-0000-4000-8000-000000000003', 'chat', '{"lang": "pt"}')
    ->'service_preferences' AS chat_merged;
SELECT nura_user_for_chat('c3333333-0000-4000-8000-000000000003');
SELECT nura_user_for_voice('c3333333-0000-4000-8000-000000000003');
SELECT nura_update_profile('c3333333-0000-4000-8000-000000000003',
    '{"privacy_settings": {"memory_privacy": "strict"}}')->'user'->'privacy_settings';
SELECT nura_update_profile('c3333333-0000-4000-8000-000000000003',
    '{"privacy_settings": {"share_usage": false}}')->'user'->'privacy_settings' AS merged;
SELECT nura_user_for_memory('c3333333-0000-4000-8000-000000000003');
-- Unknown users: NULL; unknown service types: 22023 listing the known ones.
SELECT nura_user_for_chat('00000000-0000-4000-8000-0000000000ff') IS NULL AS chat_null,
       nura_get_user('00000000-0000-4000-8000-0000000000ff') IS NULL AS user_null,
       nura_get_service_profile('00000000-0000-4000-8000-0000000000ff', 'chat') IS NULL AS profile_null;
SELECT nura_get_service_profile('c3333333-0000-4000-8000-000000000003', 'fax');
SELECT nura_upsert_service_profile('c3333333-0000-4000-8000-000000000003', 'chat', '["not", "an", "object"]');
SELECT nura_upsert_service_profile('00000000-0000-4000-8000-0000000000ff', 'chat', '{}');
SELECT nura_update_profile('00000000-0000-4000-8000-0000000000ff', '{"bio": "x"}');
-- NULL arguments: 22023 naming the argument (a read of nobody is NULL).
SELECT nura_get_service_profile(NULL, 'chat') IS NULL AS profile_of_null;
SELECT nura_upsert_service_profile(NULL, 'chat', '{}');
SELECT nura_touch_service(NULL, 'chat');
SELECT nura_record_activity(NULL);
SELECT nura_add_xp('c3333333-0000-4000-8000-000000000003', NULL);
SELECT nura_set_active(NULL, true);
SELECT nura_upsert_service_profile('c3333333-0000-4000-8000-000000000003', 'chat',
    json_build_object('blob', repeat('x', 17000))::jsonb);
SELECT nura_update_profile('c3333333-0000-4000-8000-000000000003', '{"bio": null}')->'user'->>'bio' IS NULL AS bio_cleared;

-- Usage: only nura_touch_service writes it.
SELECT nura_touch_service('c3333333-0000-4000-8000-000000000003', 'memory')->'usage_stats' AS first;
SELECT nura_touch_service('c3333333-0000-4000-8000-000000000003', 'memory')->'usage_stats' AS second;

-- Streaks follow UTC days, whatever the session's time zone.
SET TIME ZONE 'America/Los_Angeles';
SELECT nura_record_activity('c3333333-0000-4000-8000-000000000003', '2026-11-20 23:30:00+00');
SELECT nura_record_activity('c3333333-0000-4000-8000-000000000003', '2026-11-20 23:59:00+00');
SELECT nura_record_activity('c3333333-0000-4000-8000-000000000003', '2026-11-21 00:10:00+00');
SELECT nura_record_activity('c3333333-0000-4000-8000-000000000003', '2026-11-22 08:00:00+00');
-- An older event changes nothing; a gap starts again at 1.
SELECT nura_record_activity('c3333333-0000-4000-8000-000000000003', '2026-11-19 12:00:00+00');
SELECT nura_record_activity('c3333333-0000-4000-8000-000000000003', '2026-11-25 12:00:00+00');
SET TIME ZONE 'UTC';
SELECT nura_record_activity('00000000-0000-4000-8000-0000000000ff');

-- xp never goes below 0 nor overflows.
SELECT nura_add_xp('c3333333-0000-4000-8000-000000000003', 40);
SELECT nura_add_xp('c3333333-0000-4000-8000-000000000003', -100);
SELECT nura_add_xp('c3333333-0000-4000-8000-000000000003', 2147483647);
SELECT nura_add_xp('c3333333-0000-4000-8000-000000000003', 1);
SELECT nura_add_xp('00000000-0000-4000-8000-0000000000ff', 1);

-- Deactivation goes through the sync core and is logged.
SELECT nura_set_active('c3333333-0000-4000-8000-000000000003', false)->>'is_active';
SELECT source, sync_type, changed_fields FROM user_sync_logs ORDER BY id DESC LIMIT 1;

-- Former ids resolve to the current one.
INSERT INTO user_id_aliases (alias_id, source, user_id)
VALUES ('01d11111-0000-4000-8000-000000000001', 'chat_users', 'c3333333-0000-4000-8000-000000000003');
SELECT nura_resolve_user_id('01d11111-0000-4000-8000-000000000001') AS from_legacy,
       nura_resolve_user_id('c3333333-0000-4000-8000-000000000003') AS current,
       nura_resolve_user_id('not-a-uuid') AS garbage,
       nura_resolve_user_id('99999999-0000-4000-8000-000000000009') AS unknown;

\c nura_regress
DROP DATABASE nura_services;
