-- The switch (docs/cutover.md, "The switch"): CALL nura_cutover ends with chat_users kept in
-- nura_legacy and a view of the same name and columns over users; old code reads and writes the
-- view (by a merged-away id too, INSERT … RETURNING with defaults, UPDATE, DELETE); ON CONFLICT
-- is refused; RLS and grants carry over; reverse sync keeps the kept table current, so the
-- rollback gives a table with every change made meanwhile; cutover, rollback, cutover again.
DROP DATABASE IF EXISTS nura_cutover_view;
CREATE DATABASE nura_cutover_view TEMPLATE template0;
\c nura_cutover_view
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
SET TIME ZONE 'UTC';
\set VERBOSITY terse

-- Ana (auth, her user's id is not her chat id), Grace twice (one person, two chat ids), Bo.
SELECT auth.gotrue_signup('ana@example.com', NULL, '{}', 'a1111111-0000-4000-8000-000000000001');
INSERT INTO chat_users (id, email, full_name, created_at, theme) VALUES
 ('c0000000-0000-4000-8000-000000000001', 'ana@example.com', 'Ana Chat', '2024-01-01', NULL),
 ('c0000000-0000-4000-8000-000000000002', 'grace@example.com', 'Grace', '2024-01-02', 'dark'),
 ('c0000000-0000-4000-8000-000000000011', 'GRACE@example.com', 'Grace Two', '2024-01-05', NULL),
 ('c0000000-0000-4000-8000-000000000003', 'bo@example.com', 'Bo', '2024-01-03', NULL);
INSERT INTO voice_users (id, name, email, phone, created_at, voice_id) VALUES
 ('e0000000-0000-4000-8000-000000000001', 'Grace Voice', 'grace@example.com', '+15550009', '2024-02-01', 'v1');
INSERT INTO custom_users (user_id, full_name, xp, badge) VALUES
 ('a1111111-0000-4000-8000-000000000001', 'Ana Custom', 5, 'gold');
-- The product: a table referencing chat_users, a view over it, a service login, RLS.
CREATE SCHEMA app;
CREATE TABLE app.conversations (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id uuid NOT NULL CONSTRAINT conv_owner REFERENCES chat_users (id) ON DELETE CASCADE,
    body text);
INSERT INTO app.conversations (user_id, body) VALUES
 ('c0000000-0000-4000-8000-000000000001', 'ana'), ('c0000000-0000-4000-8000-000000000011', 'grace');
CREATE VIEW app.chat_names WITH (security_barrier = true) AS
SELECT id, full_name FROM chat_users WHERE is_active;
COMMENT ON TABLE chat_users IS 'Chat service accounts';
CREATE ROLE nura_view_chat_app NOLOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON chat_users TO nura_view_chat_app;
GRANT SELECT, UPDATE (full_name) ON chat_users TO authenticated;
GRANT SELECT, INSERT ON chat_users TO authenticated;
GRANT SELECT ON chat_users TO anon;
ALTER TABLE chat_users ENABLE ROW LEVEL SECURITY;
CREATE POLICY chat_app_all ON chat_users TO nura_view_chat_app USING (true) WITH CHECK (true);
CREATE POLICY everyone_reads ON chat_users FOR SELECT TO authenticated, anon USING (true);
CREATE POLICY users_insert ON chat_users FOR INSERT TO authenticated WITH CHECK (true);
CREATE EXTENSION nura_users;
SET client_min_messages = warning;
CALL nura_run_migration();
RESET client_min_messages;

-- What old code could do before the switch, to compare with after it.
CREATE TEMP TABLE privileges_before AS
SELECT r.rolname, p.privilege, has_table_privilege(r.oid, 'public.chat_users', p.privilege) AS granted
FROM pg_roles r, unnest('{SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER}'::text[]) p(privilege)
WHERE r.rolname IN ('nura_view_chat_app', 'authenticated', 'anon', 'service_role');
CREATE TEMP TABLE columns_before AS
SELECT attnum, attname, format_type(atttypid, atttypmod) AS type, attcollation
FROM pg_attribute WHERE attrelid = 'public.chat_users'::regclass AND attnum > 0 AND NOT attisdropped;
PREPARE by_id(uuid) AS SELECT id, email, full_name, theme FROM chat_users WHERE id = $1;
EXECUTE by_id('c0000000-0000-4000-8000-000000000011');

-- The switch.
SET client_min_messages = warning;
CALL nura_cutover(tables => ARRAY['chat_users']);
RESET client_min_messages;
SELECT legacy_table, state, references_total, references_moved, switched_at IS NOT NULL AS switched
FROM nura_cutover_status() WHERE legacy_table = 'chat_users';
SELECT action FROM nura_cutover_steps ORDER BY id;
SELECT p->'ready' AS ready, p->'tables'->'chat_users'->>'state' AS state,
       p->'tables'->'chat_users'->'blockers' AS blockers
FROM nura_cutover_plan() p;
SELECT c.oid::regclass AS relation, c.relkind, c.reloptions, obj_description(c.oid, 'pg_class') AS comment
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname IN ('chat_users', 'chat_users_map') ORDER BY n.nspname, c.relname;
-- The view's columns are the table's: names, types, collations, order.
SELECT count(*) AS columns_differing FROM (
  SELECT attnum, attname, format_type(atttypid, atttypmod), attcollation
  FROM pg_attribute WHERE attrelid = 'public.chat_users'::regclass AND attnum > 0
  EXCEPT SELECT * FROM columns_before) d;
-- Every grantee can do what it could.
SELECT b.rolname, b.privilege, b.granted, has_table_privilege(r.oid, 'public.chat_users', b.privilege) AS now
FROM privileges_before b JOIN pg_roles r USING (rolname)
WHERE b.granted IS DISTINCT FROM has_table_privilege(r.oid, 'public.chat_users', b.privilege);
SELECT has_column_privilege('authenticated', 'public.chat_users', 'full_name', 'UPDATE') AS name_update,
       has_column_privilege('authenticated', 'public.chat_users', 'email', 'UPDATE') AS email_update;
-- The product's key now points to users; the view that read the table reads the view.
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'app.conversations'::regclass AND contype = 'f';
SELECT DISTINCT d.refobjid::regclass AS reads FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
WHERE r.ev_class = 'app.chat_names'::regclass AND d.refobjid <> 'app.chat_names'::regclass;
SELECT reloptions FROM pg_class WHERE oid = 'app.chat_names'::regclass;

-- Reads: one row per legacy id; Grace answers to both of hers, with her one user's values (the
-- merge kept "Grace"); extra columns come from each id's own row. A prepared statement made
-- before the switch reads the view.
SELECT id, email, full_name, phone_number, is_active, theme, created_at FROM chat_users ORDER BY id;
EXECUTE by_id('c0000000-0000-4000-8000-000000000011');
SELECT * FROM app.chat_names ORDER BY id;
-- The product's references hold users ids now: a join to the view by id finds the people whose
-- user id is one of their chat ids (Grace), not Ana (docs/cutover.md, known limits); through
-- user_id_aliases it finds everyone.
SELECT c.body, u.email FROM app.conversations c JOIN chat_users u ON u.id = c.user_id ORDER BY c.body;
SELECT c.body, u.email FROM app.conversations c JOIN users u ON u.id = c.user_id ORDER BY c.body;

-- INSERT … RETURNING with the table's defaults (is_active, created_at): a new person.
INSERT INTO chat_users (id, email, full_name) VALUES
 ('c0000000-0000-4000-8000-000000000030', 'dee@example.com', 'Dee')
RETURNING id, email, full_name, is_active, created_at IS NOT NULL AS created;
SELECT email, full_name, is_active FROM users WHERE email = 'dee@example.com';
-- Every value arrives exactly in the kept row (its record text travels, not JSON): a json cell
-- that jsonb cannot hold, and json text as written. users cannot hold the first: the row is an
-- issue, as in a migration run, so the view does not show it (RETURNING shows the kept row, and
-- a DELETE through the view finds nothing); it stays in the kept table, and the rollback gives
-- it back with the table.
INSERT INTO chat_users (id, email, privacy_settings, notification_prefs) VALUES
 ('c0000000-0000-4000-8000-000000000032', 'nul@example.com', E'{"a": "\\u0000"}', '{"b":  1}')
RETURNING id, email, privacy_settings, notification_prefs;
SELECT privacy_settings::text, notification_prefs::text FROM nura_legacy.chat_users
WHERE id = 'c0000000-0000-4000-8000-000000000032';
SELECT field, reason FROM nura_migration_issues WHERE source_id = 'c0000000-0000-4000-8000-000000000032';
DELETE FROM chat_users WHERE id = 'c0000000-0000-4000-8000-000000000032';
-- A new row with a known address joins that person.
INSERT INTO chat_users (id, email, full_name) VALUES
 ('c0000000-0000-4000-8000-000000000031', 'Bo@Example.com', 'Bo Two')
RETURNING id, email, full_name;
SELECT a.alias_id FROM user_id_aliases a JOIN users u ON u.id = a.user_id
WHERE u.email = 'bo@example.com' ORDER BY 1;

-- UPDATE through the view: a field of users moves the user (every id of the person shows it); an
-- extra column stays with its row; RETURNING shows the view's row.
UPDATE chat_users SET full_name = 'Grace Hopper' WHERE id = 'c0000000-0000-4000-8000-000000000011'
RETURNING id, full_name, theme;
UPDATE chat_users SET theme = 'light' WHERE id = 'c0000000-0000-4000-8000-000000000002'
RETURNING id, full_name, theme;
SELECT id, full_name, theme FROM chat_users WHERE email = 'grace@example.com' ORDER BY id;
-- Her phone (from voice_users) stays: the view showed it on her chat rows, which have none, and
-- the UPDATEs did not change it.
SELECT full_name, phone_number FROM users WHERE email = 'grace@example.com';
-- An ORM writing the whole row back, unchanged but for one column: nothing else moves.
UPDATE chat_users SET (email, full_name, phone_number, theme) = (email, full_name, phone_number, 'blue')
WHERE id = 'c0000000-0000-4000-8000-000000000003' RETURNING full_name, theme;
-- The kept row took what was written.
SELECT id, full_name, theme FROM nura_legacy.chat_users
WHERE id IN ('c0000000-0000-4000-8000-000000000002', 'c0000000-0000-4000-8000-000000000011') ORDER BY id;
SELECT id FROM chat_users WHERE id = 'c0000000-0000-4000-8000-000000000001' FOR UPDATE;

-- A change of users by new code reaches the kept rows (reverse sync) and the view.
UPDATE users SET phone_number = '+15550001' WHERE email = 'bo@example.com';
SELECT id, phone_number FROM nura_legacy.chat_users WHERE email ILIKE 'bo@example.com' ORDER BY id;

-- DELETE … RETURNING: Grace's second id lets go of her; her first keeps her; its conversation
-- follows its key (CASCADE).
DELETE FROM chat_users WHERE id = 'c0000000-0000-4000-8000-000000000011' RETURNING id, full_name;
SELECT count(*) AS grace_ids FROM user_id_aliases a JOIN users u ON u.id = a.user_id
WHERE u.email = 'grace@example.com' AND a.source = 'chat_users';
SELECT body FROM app.conversations ORDER BY body;

-- What the view refuses: ON CONFLICT in every form, a changed id, TRUNCATE.
INSERT INTO chat_users (id, email) VALUES ('c0000000-0000-4000-8000-000000000030', 'x@example.com')
ON CONFLICT DO NOTHING;
INSERT INTO chat_users (id, email) VALUES ('c0000000-0000-4000-8000-000000000030', 'x@example.com')
ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email;
UPDATE chat_users SET id = 'c0000000-0000-4000-8000-000000000099' WHERE id = 'c0000000-0000-4000-8000-000000000003';
TRUNCATE chat_users;
-- A taken id fails on the kept table's key, as it did on the table.
INSERT INTO chat_users (id, email) VALUES ('c0000000-0000-4000-8000-000000000030', 'x@example.com');
-- A migration run would read the view: refused while switched.
CALL nura_run_migration();

-- New code: a signup through Supabase Auth makes a user with the chat profile, who appears in
-- chat_users under its own id; its delete takes the row away.
SELECT auth.gotrue_signup('eve@example.com', NULL, '{"full_name": "Eve"}', 'a1111111-0000-4000-8000-000000000005');
SELECT id, email, full_name FROM chat_users WHERE id = 'a1111111-0000-4000-8000-000000000005';
SELECT id, email FROM nura_legacy.chat_users WHERE id = 'a1111111-0000-4000-8000-000000000005';
DELETE FROM auth.users WHERE id = 'a1111111-0000-4000-8000-000000000005';
SELECT count(*) AS eve_rows FROM nura_legacy.chat_users WHERE id = 'a1111111-0000-4000-8000-000000000005';

-- Row level security as the API sees it: authenticated reads only its own user's rows (the
-- product's policy let it read all: narrowed), anon none, the service's login all.
BEGIN;
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub": "a1111111-0000-4000-8000-000000000001", "role": "authenticated"}', true);
SELECT id, email FROM chat_users ORDER BY id;
UPDATE chat_users SET full_name = 'Ana Mine' WHERE id = 'c0000000-0000-4000-8000-000000000001' RETURNING full_name;
SAVEPOINT s;
INSERT INTO chat_users (id, email) VALUES ('c0000000-0000-4000-8000-000000000040', 'mallory@example.com');
ROLLBACK TO s;
SET LOCAL ROLE anon;
SELECT set_config('request.jwt.claims', '{"role": "anon"}', true) IS NOT NULL AS anon_request;
SELECT count(*) AS anon_sees FROM chat_users;
SET LOCAL ROLE nura_view_chat_app;
SELECT count(*) AS chat_app_sees FROM chat_users;
ROLLBACK;

-- Rollback: the table is back under its name, with every change made while switched; the key
-- and the view read it again.
SET client_min_messages = warning;
CALL nura_cutover_rollback(tables => ARRAY['chat_users']);
RESET client_min_messages;
SELECT legacy_table, state FROM nura_cutover_status() WHERE legacy_table = 'chat_users';
SELECT c.oid::regclass AS relation, c.relkind FROM pg_class c
WHERE c.relname IN ('chat_users', 'chat_users_map') ORDER BY 1;
SELECT id, email, full_name, phone_number, is_active, theme FROM chat_users ORDER BY id;
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'app.conversations'::regclass AND contype = 'f';
SELECT c.body, c.user_id FROM app.conversations c ORDER BY c.body;
SELECT DISTINCT d.refobjid::regclass AS reads FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
WHERE r.ev_class = 'app.chat_names'::regclass AND d.refobjid <> 'app.chat_names'::regclass;
SELECT b.rolname, b.privilege FROM privileges_before b JOIN pg_roles r USING (rolname)
WHERE b.granted IS DISTINCT FROM has_table_privilege(r.oid, 'public.chat_users', b.privilege);
SELECT tgname, tgenabled FROM pg_trigger
WHERE tgrelid IN ('users'::regclass, 'user_service_profiles'::regclass) AND NOT tgisinternal
ORDER BY tgname;

-- And the cutover again ends switched, as one cutover does.
SET client_min_messages = warning;
CALL nura_cutover(tables => ARRAY['chat_users']);
RESET client_min_messages;
SELECT legacy_table, state FROM nura_cutover_status() WHERE legacy_table = 'chat_users';
SELECT id, email, full_name, theme FROM chat_users ORDER BY id;
SELECT count(*) AS problems FROM nura_check_consistency();
SELECT count(*) AS waiting FROM nura_cutover_mirror_backlog;
-- voice_users and custom_users: their columns with a home in users (name, phone; full_name, xp)
-- come from users; a streak or xp gained makes a custom row (reverse sync).
SET client_min_messages = warning;
CALL nura_cutover();
RESET client_min_messages;
SELECT legacy_table, state FROM nura_cutover_status();
SELECT id, name, email, phone, voice_id FROM voice_users ORDER BY id;
SELECT user_id, full_name, current_streak, xp, badge FROM custom_users ORDER BY user_id;
UPDATE users SET xp = 7 WHERE email = 'dee@example.com';
UPDATE voice_users SET name = 'Grace V.' WHERE id = 'e0000000-0000-4000-8000-000000000001' RETURNING name;
SELECT u.email, c.xp FROM custom_users c JOIN users u ON u.id = c.user_id ORDER BY u.email;
SELECT full_name FROM users WHERE email = 'grace@example.com';
SELECT count(*) AS problems FROM nura_check_consistency();
SET client_min_messages = warning;
CALL nura_cutover_rollback();
RESET client_min_messages;
SELECT legacy_table, state FROM nura_cutover_status();
SELECT c.oid::regclass AS relation, c.relkind FROM pg_class c
WHERE c.relname IN ('chat_users', 'voice_users', 'custom_users') ORDER BY 1;
SELECT user_id, full_name, xp, badge FROM custom_users ORDER BY user_id;

-- A legacy table of another owner is refused: reverse sync and the view would write it as the
-- extension's owner, running that owner's triggers with the extension owner's rights.
ALTER TABLE voice_users OWNER TO nura_view_chat_app;
CALL nura_cutover(tables => ARRAY['voice_users']);
ALTER TABLE voice_users OWNER TO CURRENT_USER;

-- Finish (irreversible): nothing switched yet; a table not switched; drop_legacy while the view
-- is there: refused, nothing done.
SELECT nura_cutover_finish();
SET client_min_messages = warning;
CALL nura_cutover(tables => ARRAY['chat_users']);
RESET client_min_messages;
SELECT nura_cutover_finish(tables => ARRAY['voice_users']);
SELECT nura_cutover_finish(tables => ARRAY['chat_users'], drop_legacy => true);
SELECT legacy_table, state FROM nura_cutover_status() WHERE legacy_table = 'chat_users';
-- Finish chat_users: the write-time resolution and reverse sync go; the keys to users and the
-- view stay, and old code keeps writing through the view.
SELECT nura_cutover_finish(tables => ARRAY['chat_users']);
SELECT legacy_table, state FROM nura_cutover_status() WHERE legacy_table = 'chat_users';
SELECT count(*) AS resolve_triggers FROM pg_trigger
WHERE tgrelid = 'app.conversations'::regclass AND tgname LIKE '%nura_cutover%';
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'app.conversations'::regclass AND contype = 'f';
SELECT tgname, tgenabled FROM pg_trigger
WHERE tgrelid IN ('users'::regclass, 'user_service_profiles'::regclass) AND NOT tgisinternal
ORDER BY tgname;
INSERT INTO chat_users (id, email, full_name) VALUES
 ('c0000000-0000-4000-8000-000000000050', 'fin@example.com', 'Fin')
RETURNING id, email, full_name;
SELECT email, full_name FROM users WHERE email = 'fin@example.com';
-- A legacy id written into a reference is no longer mapped: the key to users refuses it.
INSERT INTO app.conversations (user_id, body) VALUES ('c0000000-0000-4000-8000-000000000031', 'late');
-- No way back: a rollback naming it is refused, one naming none leaves it alone, and the
-- migration's rollback is refused for good.
CALL nura_cutover_rollback(tables => ARRAY['chat_users']);
SET client_min_messages = warning;
CALL nura_cutover_rollback();
RESET client_min_messages;
SELECT nura_rollback_migration(1);
SELECT nura_cutover_finish(tables => ARRAY['chat_users']);
-- Once the product no longer uses the view, drop it; drop_legacy then drops the kept table.
DROP VIEW app.chat_names;
DROP VIEW chat_users;
SELECT nura_cutover_finish(tables => ARRAY['chat_users'], drop_legacy => true);
SELECT to_regclass('nura_legacy.chat_users') AS kept, to_regclass('nura_legacy.chat_users_map') AS map;
SELECT legacy_table, state, switched_at IS NOT NULL AS was_switched FROM nura_cutover_status()
WHERE legacy_table = 'chat_users';
SELECT count(*) AS problems FROM nura_check_consistency();
SELECT nura_rollback_migration(1);

\c postgres
DROP DATABASE nura_cutover_view;
DROP ROLE nura_view_chat_app;
