-- The cutover's live legacy writes (docs/cutover.md, "Live legacy writes"): CALL nura_cutover
-- captures a legacy table, and from then on every INSERT, UPDATE and DELETE on it reaches users,
-- profiles and aliases in the writer's own transaction, by the migration's rules (an UPDATE by
-- the three-way rule); what cannot be carried is refused; a failed placement waits in the
-- backlog; CALL nura_cutover_rollback releases the table; the state, status and step log say
-- where each table is; refusals and who may call.
DROP DATABASE IF EXISTS nura_cutover_live;
CREATE DATABASE nura_cutover_live TEMPLATE template0;
\c nura_cutover_live
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
-- The legacy table stays a table here (the switch is cutover_view's): the CALLs stop before it.
SET nura_users.cutover_switch = off;
\set VERBOSITY terse

-- Ana (auth) in chat; Grace in chat and voice; Bo in chat only; a custom row of a missing auth
-- user (unmigratable: it blocks custom_users' cutover).
SELECT auth.gotrue_signup('ana@example.com', NULL, '{}', 'a1111111-0000-4000-8000-000000000001');
INSERT INTO chat_users (id, email, full_name, created_at, theme) VALUES
 ('c0000000-0000-4000-8000-000000000001', 'ana@example.com', 'Ana Chat', '2024-01-01', NULL),
 ('c0000000-0000-4000-8000-000000000002', 'grace@example.com', 'Grace', '2024-01-02', 'dark'),
 ('c0000000-0000-4000-8000-000000000003', 'bo@example.com', 'Bo', '2024-01-03', NULL);
INSERT INTO voice_users (id, name, email, created_at) VALUES
 ('e0000000-0000-4000-8000-000000000001', 'Grace Voice', 'grace@example.com', '2024-02-01');
INSERT INTO custom_users (user_id, full_name) VALUES
 ('f0000000-0000-4000-8000-000000000001', 'Ghost');
CREATE EXTENSION nura_users;
SET client_min_messages = warning;
CALL nura_run_migration();
RESET client_min_messages;
CREATE VIEW people AS
SELECT u.email, u.full_name, u.phone_number, u.is_active, u.deleted_at IS NOT NULL AS deleted,
       (SELECT string_agg(a.source || ':' || right(a.alias_id::text, 2), ' ' ORDER BY a.source, a.alias_id)
        FROM user_id_aliases a WHERE a.user_id = u.id) AS aliases,
       (SELECT string_agg(p.service_type, ' ' ORDER BY p.service_type)
        FROM user_service_profiles p WHERE p.user_id = u.id) AS profiles
FROM users u ORDER BY u.email NULLS LAST, u.full_name;
SELECT * FROM people;

-- Before any cutover: every legacy table present is legacy.
SELECT * FROM nura_cutover_status();

-- Capture chat_users. The catch-up run (a migration run, whose NOTICEs carry timings) finds
-- nothing new; the steps are logged.
SET client_min_messages = warning;
CALL nura_cutover(tables => ARRAY['chat_users']);
RESET client_min_messages;
SELECT legacy_table, state, references_total, references_moved, started_at IS NOT NULL AS started
FROM nura_cutover_status();
SELECT action, object, attempts FROM nura_cutover_steps ORDER BY id;
SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'chat_users'::regclass ORDER BY tgname;
SELECT status, finished_at IS NULL AS open FROM nura_migration_runs ORDER BY id;
-- Called again: at its goal already, nothing to do.
CALL nura_cutover(tables => ARRAY['chat_users']);
SELECT count(*) AS steps FROM nura_cutover_steps;

-- INSERT: a new person becomes a user under the row's id, with the chat profile and the
-- row's extra column; a row of a known person (another letter case) joins that user.
INSERT INTO chat_users (id, email, full_name, phone_number, theme) VALUES
 ('c0000000-0000-4000-8000-000000000010', 'cy@example.com', 'Cy', '+1 555 0100', 'light'),
 ('c0000000-0000-4000-8000-000000000011', 'GRACE@example.com', 'Grace Two', NULL, NULL);
SELECT * FROM people;
SELECT id FROM users WHERE email = 'cy@example.com';
SELECT service_metadata FROM user_service_profiles
WHERE user_id = 'c0000000-0000-4000-8000-000000000010' AND service_type = 'chat';
-- Grace's second name is a conflict, as in a migration run.
SELECT i.source_table, right(i.source_id, 2) AS id, i.kind, i.field, i.kept_value, i.dropped_value
FROM nura_migration_issues i ORDER BY i.id;

-- UPDATE by the three-way rule: Bo's name came from his row, so it follows the row; a cleared
-- phone clears the user's; Grace's user did not take "Grace Two", so that row's edit is a
-- conflict and her name stays.
UPDATE chat_users SET full_name = 'Bo Renamed' WHERE id = 'c0000000-0000-4000-8000-000000000003';
UPDATE chat_users SET phone_number = NULL, is_active = false
WHERE id = 'c0000000-0000-4000-8000-000000000010';
UPDATE chat_users SET full_name = 'Grace Three' WHERE id = 'c0000000-0000-4000-8000-000000000011';
SELECT * FROM people;
SELECT i.source_table, right(i.source_id, 2) AS id, i.field, i.kept_value, i.dropped_value
FROM nura_migration_issues i WHERE i.kind = 'conflict' ORDER BY i.id;
-- The user's own edit reaches the row (reverse sync, at its commit); old code's next edit is of
-- what it read there, so it follows too.
UPDATE users SET full_name = 'Bo (by Bo)' WHERE email = 'bo@example.com';
SELECT full_name FROM chat_users WHERE id = 'c0000000-0000-4000-8000-000000000003';
UPDATE chat_users SET full_name = 'Bo Again' WHERE id = 'c0000000-0000-4000-8000-000000000003';
SELECT full_name FROM users WHERE email = 'bo@example.com';
-- An address change: Bo has no auth account, so his address follows; to an address another user
-- holds, it is a conflict; Ana's address is her auth account's.
UPDATE chat_users SET email = 'bo.new@example.com' WHERE id = 'c0000000-0000-4000-8000-000000000003';
UPDATE chat_users SET email = 'ana@example.com' WHERE id = 'c0000000-0000-4000-8000-000000000003';
UPDATE chat_users SET email = 'ana.other@example.com' WHERE id = 'c0000000-0000-4000-8000-000000000001';
SELECT * FROM people;
SELECT right(i.source_id, 2) AS id, i.field, i.kept_value, i.dropped_value
FROM nura_migration_issues i WHERE i.field = 'email' ORDER BY i.id;
-- A row changed back to what it held before is a change too: the user follows it back.
UPDATE chat_users SET is_active = false WHERE id = 'c0000000-0000-4000-8000-000000000002';
UPDATE chat_users SET is_active = true WHERE id = 'c0000000-0000-4000-8000-000000000002';
SELECT is_active FROM users WHERE email = 'grace@example.com';
-- A json cell that jsonb refuses does not fail the legacy write: the row is an unmigratable
-- issue, as in a run, and its later edits go through too.
INSERT INTO chat_users (id, email, full_name, privacy_settings) VALUES
 ('c0000000-0000-4000-8000-000000000040', 'nul@example.com', 'Nul', E'{"a": "\\u0000"}');
UPDATE chat_users SET full_name = 'Nul Two' WHERE id = 'c0000000-0000-4000-8000-000000000040';
SELECT reason FROM nura_migration_issues WHERE source_id = 'c0000000-0000-4000-8000-000000000040'
ORDER BY id LIMIT 1;
DELETE FROM chat_users WHERE id = 'c0000000-0000-4000-8000-000000000040';
-- An UPDATE that changes nothing is placed as nothing: no log row, no issue.
SELECT count(*) AS logs FROM user_sync_logs \gset
UPDATE chat_users SET full_name = full_name;
SELECT count(*) - :logs AS new_logs FROM user_sync_logs;

-- A bulk statement is one placement: 50 new people.
INSERT INTO chat_users (id, email, full_name)
SELECT ('c1000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid, 'bulk' || i || '@example.com',
       'Bulk ' || i
FROM generate_series(1, 50) i;
SELECT count(*) AS bulk_users,
       count(*) FILTER (WHERE EXISTS (SELECT FROM user_id_aliases a WHERE a.user_id = u.id
                                      AND a.source = 'chat_users')) AS with_alias
FROM users u WHERE email LIKE 'bulk%';

-- DELETE: Cy's only row goes, and Cy with it (no auth account, nothing else backs him); Ana's
-- chat row goes, and only her chat tie (alias, chat profile) with it; Grace keeps her user and
-- chat profile, backed by her other chat row.
DELETE FROM chat_users WHERE id IN ('c0000000-0000-4000-8000-000000000010',
                                    'c0000000-0000-4000-8000-000000000001',
                                    'c0000000-0000-4000-8000-000000000002');
DELETE FROM chat_users WHERE email LIKE 'bulk%';
SELECT * FROM people;
SELECT sync_type, count(*) FROM user_sync_logs WHERE source = 'migration'
GROUP BY sync_type ORDER BY sync_type;

-- A row deleted and written again in one transaction keeps its user, and what the user holds
-- besides (here a bio and the memory profile): the user goes only when the commit leaves
-- nothing behind it.
INSERT INTO chat_users (id, email, full_name) VALUES
 ('c0000000-0000-4000-8000-000000000060', 'fay@example.com', 'Fay');
UPDATE users SET bio = 'Fay''s bio' WHERE email = 'fay@example.com';
INSERT INTO user_service_profiles (user_id, service_type)
SELECT id, 'memory' FROM users WHERE email = 'fay@example.com';
CREATE TEMP TABLE fay_row AS SELECT * FROM chat_users WHERE id = 'c0000000-0000-4000-8000-000000000060';
BEGIN;
DELETE FROM chat_users WHERE id = 'c0000000-0000-4000-8000-000000000060';
INSERT INTO chat_users SELECT * FROM fay_row;
COMMIT;
SELECT u.id, u.bio,
       (SELECT string_agg(p.service_type, ' ' ORDER BY p.service_type) FROM user_service_profiles p
        WHERE p.user_id = u.id) AS profiles
FROM users u WHERE u.email = 'fay@example.com';
SELECT count(*) AS pending FROM nura_cutover_unplaced;
DELETE FROM chat_users WHERE id = 'c0000000-0000-4000-8000-000000000060';
SELECT count(*) AS fay FROM users WHERE email = 'fay@example.com';
-- What cannot be carried is refused: a changed legacy id, a TRUNCATE.
UPDATE chat_users SET id = 'c0000000-0000-4000-8000-000000000099'
WHERE id = 'c0000000-0000-4000-8000-000000000003';
TRUNCATE chat_users;
-- Also when a trigger of the product changes it.
CREATE FUNCTION shift_id() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.id := 'c0000000-0000-4000-8000-000000000098'; RETURN NEW; END $$;
CREATE TRIGGER shift_id BEFORE UPDATE ON chat_users FOR EACH ROW
    WHEN (NEW.full_name = 'Shift') EXECUTE FUNCTION shift_id();
UPDATE chat_users SET full_name = 'Shift' WHERE id = 'c0000000-0000-4000-8000-000000000003';
DROP TRIGGER shift_id ON chat_users;
-- A migration run cannot be rolled back under the captured table.
SELECT nura_rollback_migration(1);

-- A placement that fails (a product trigger on users refusing a name) is rolled back alone:
-- the legacy write commits, the id waits in the backlog, the failure is logged.
CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.full_name = 'Boom' THEN RAISE EXCEPTION 'no Boom here' USING ERRCODE = '23514'; END IF;
    RETURN NEW;
END $$;
INSERT INTO chat_users (id, email, full_name) VALUES
 ('c0000000-0000-4000-8000-000000000050', 'eve@example.com', 'Eve');
CREATE TRIGGER refuse_boom BEFORE INSERT OR UPDATE ON users FOR EACH ROW EXECUTE FUNCTION refuse_boom();
-- One statement is one placement: the other row of it waits too.
INSERT INTO chat_users (id, email, full_name) VALUES
 ('c0000000-0000-4000-8000-000000000020', 'boom@example.com', 'Boom'),
 ('c0000000-0000-4000-8000-000000000022', 'gus@example.com', 'Gus');
SELECT count(*) AS rows FROM chat_users WHERE id = 'c0000000-0000-4000-8000-000000000020';
SELECT legacy_table, right(legacy_id::text, 2) AS id, sqlstate, message FROM nura_cutover_backlog
ORDER BY legacy_id;
SELECT sqlstate, error_message FROM user_sync_logs WHERE NOT success ORDER BY id DESC LIMIT 1;
-- With on_sync_error = raise, the legacy write fails instead.
SET nura_users.on_sync_error = raise;
INSERT INTO chat_users (id, email, full_name) VALUES
 ('c0000000-0000-4000-8000-000000000021', 'boom2@example.com', 'Boom');
RESET nura_users.on_sync_error;
-- Still failing: the CALL places what it can one row at a time (Gus), then stops with the
-- reason of the rest, and the state keeps it.
CALL nura_cutover(tables => ARRAY['chat_users']);
SELECT last_error->>'action' AS action, last_error->>'sqlstate' AS sqlstate FROM nura_cutover_tables;
SELECT right(legacy_id::text, 2) AS still_waiting FROM nura_cutover_backlog;
SELECT email, full_name FROM users WHERE email = 'gus@example.com';
-- An UPDATE that fails waits with the row as it was: its retry follows the change.
UPDATE chat_users SET full_name = 'Boom' WHERE id = 'c0000000-0000-4000-8000-000000000050';
SELECT right(legacy_id::text, 2) AS id, before IS NOT NULL AS has_before FROM nura_cutover_backlog
ORDER BY legacy_id;
-- Written again before the next CALL (another column), the row is placed from the row as it was
-- before its failed write: the failed change is followed too.
DROP TRIGGER refuse_boom ON users;
UPDATE chat_users SET theme = 'dark' WHERE id = 'c0000000-0000-4000-8000-000000000050';
SELECT full_name FROM users WHERE email = 'eve@example.com';
SELECT right(legacy_id::text, 2) AS id FROM nura_cutover_backlog ORDER BY legacy_id;
CREATE TRIGGER refuse_boom BEFORE INSERT OR UPDATE ON users FOR EACH ROW EXECUTE FUNCTION refuse_boom();
-- Fixed: the next CALL places the backlog.
DROP TRIGGER refuse_boom ON users;
CALL nura_cutover(tables => ARRAY['chat_users']);
SELECT count(*) AS backlog FROM nura_cutover_backlog;
SELECT email, full_name FROM users WHERE email IN ('boom@example.com', 'eve@example.com') ORDER BY 1;
SELECT last_error FROM nura_cutover_tables;

-- A legacy table with a column of a type another role owns is refused: the cutover reads its
-- rows as the extension's owner, and a cast of that type's owner could run as the owner.
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'nura_live_other') THEN
        CREATE ROLE nura_live_other NOLOGIN;
    END IF;
END $$;
CREATE TYPE mood AS ENUM ('calm');
ALTER TYPE mood OWNER TO nura_live_other;
ALTER TABLE voice_users ADD COLUMN m mood;
CALL nura_cutover(tables => ARRAY['voice_users']);
ALTER TABLE voice_users DROP COLUMN m;
DROP TYPE mood;
-- A table with a blocker is refused with its reason, and stays legacy.
CALL nura_cutover(tables => ARRAY['custom_users']);
SELECT legacy_table, state FROM nura_cutover_status();
SELECT legacy_table, goal, captured, last_error->>'sqlstate' AS sqlstate FROM nura_cutover_tables
ORDER BY legacy_table;

-- The rollback releases chat_users: no capture trigger, the capture run ends; a write after it
-- is not placed until a migration run (or the next cutover's catch-up) does.
CALL nura_cutover_rollback(tables => ARRAY['chat_users']);
SELECT legacy_table, state FROM nura_cutover_status();
SELECT count(*) AS capture_triggers FROM pg_trigger
WHERE tgrelid = 'chat_users'::regclass AND tgname LIKE 'nura_cutover%';
SELECT status, count(*) FROM nura_migration_runs GROUP BY status ORDER BY status;
INSERT INTO chat_users (id, email, full_name) VALUES
 ('c0000000-0000-4000-8000-000000000030', 'dee@example.com', 'Dee');
SELECT count(*) AS dee FROM users WHERE email = 'dee@example.com';
-- Rolled back again: nothing to do. Cut over again: the catch-up run places Dee.
CALL nura_cutover_rollback(tables => ARRAY['chat_users']);
SET client_min_messages = warning;
CALL nura_cutover(tables => ARRAY['chat_users']);
RESET client_min_messages;
SELECT email, full_name FROM users WHERE email = 'dee@example.com';
SELECT action, count(*) FROM nura_cutover_steps GROUP BY action ORDER BY action;
-- Everything placed agrees with the legacy tables and with itself.
SELECT count(*) AS problems FROM nura_check_consistency();
SELECT count(*) AS missing FROM chat_users c
WHERE NOT EXISTS (SELECT FROM user_id_aliases a WHERE a.alias_id = c.id AND a.source = 'chat_users');

-- Refusals of the arguments.
CALL nura_cutover(tables => '{}');
CALL nura_cutover(tables => ARRAY['chat_users', 'nope']);
CALL nura_cutover(batch_size => 0);
CALL nura_cutover(legacy_schema => 'nope');
CALL nura_cutover(extra_references => '{"table": "x"}');
-- Not inside a transaction block: the CALL commits. It fails at its first COMMIT, before it
-- takes the lock that lets one session at a time run a cutover.
BEGIN;
CALL nura_cutover(tables => ARRAY['chat_users']);
ROLLBACK;
SELECT count(*) AS runner_locks FROM pg_locks
WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND objid = hashtext('cutover')::oid;

-- Who may: service_role and the owner; not the API's users, not the placement itself.
SET ROLE authenticated;
CALL nura_cutover();
SELECT * FROM nura_cutover_status();
RESET ROLE;
SET ROLE service_role;
CALL nura_cutover_rollback(tables => ARRAY['chat_users']);
SELECT legacy_table, state FROM nura_cutover_status();
SELECT action, run_by FROM nura_cutover_steps ORDER BY id DESC LIMIT 1;
SELECT nura_cutover_place('chat_users', 'public', NULL, NULL);
RESET ROLE;
-- The lock timeout is at least 1 ms (0, no timeout, would let a queued lock stall the product).
-- (Only the SQLSTATE: the message's wording differs between versions.)
\set VERBOSITY sqlstate
SET nura_users.cutover_lock_timeout = 0;
\set VERBOSITY terse
SHOW nura_users.cutover_lock_timeout;

\c postgres
DROP DATABASE nura_cutover_live;
