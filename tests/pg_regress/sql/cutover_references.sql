-- The cutover's references (docs/cutover.md, "References"): CALL nura_cutover moves every
-- foreign key to chat_users (and an extra reference) onto users(id) — same name, ON DELETE action
-- and deferrability, ON UPDATE CASCADE, NOT VALID then validated — and rewrites the values to
-- the users' ids, keeping the legacy ids for the rollback; old code writing legacy ids is
-- resolved at once; an adoption carries the rows along; a value nobody explains stops the swap;
-- a failed validation is a state and an error, not a silent NOT VALID key; the rollback gives
-- every row its original value and every key its original definition; cutover, rollback and
-- cutover again end as one cutover.
DROP DATABASE IF EXISTS nura_cutover_references;
CREATE DATABASE nura_cutover_references TEMPLATE template0;
\c nura_cutover_references
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

-- Ana (auth, so her user's id is not her chat id), Grace twice (her user takes her first chat
-- id), Bo (no auth account yet).
SELECT auth.gotrue_signup('ana@example.com', NULL, '{}', 'a1111111-0000-4000-8000-000000000001');
INSERT INTO chat_users (id, email, full_name, created_at) VALUES
 ('c0000000-0000-4000-8000-000000000001', 'ana@example.com', 'Ana', '2024-01-01'),
 ('c0000000-0000-4000-8000-000000000002', 'grace@example.com', 'Grace', '2024-01-02'),
 ('c0000000-0000-4000-8000-000000000003', 'GRACE@example.com', 'Grace Again', '2024-01-03'),
 ('c0000000-0000-4000-8000-000000000004', 'bo@example.com', 'Bo', '2024-01-04');
CREATE EXTENSION nura_users;
SET client_min_messages = warning;
CALL nura_run_migration();
RESET client_min_messages;

-- The product: a key with a name of its own, ON DELETE CASCADE, deferred, with an audit trigger;
-- a key in another schema with ON DELETE SET NULL; a key that was never validated; a column
-- without a key, named in extra_references.
CREATE SCHEMA app;
CREATE SCHEMA calls;
CREATE TABLE app.conversations (id int PRIMARY KEY, body text, touched int NOT NULL DEFAULT 0,
    user_id uuid CONSTRAINT conv_owner REFERENCES chat_users (id)
        ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED);
CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.touched := OLD.touched + 1; RETURN NEW; END $$;
CREATE TRIGGER conversations_touch BEFORE UPDATE ON app.conversations
    FOR EACH ROW EXECUTE FUNCTION app.touch();
CREATE TABLE calls.chat_calls (id int PRIMARY KEY,
    caller uuid REFERENCES chat_users (id) ON DELETE SET NULL);
CREATE TABLE app.notes (id int PRIMARY KEY, author uuid);
CREATE TABLE app.memories (id int PRIMARY KEY, owner uuid);
INSERT INTO app.conversations (id, body, user_id) VALUES
 (1, 'ana', 'c0000000-0000-4000-8000-000000000001'),
 (2, 'grace', 'c0000000-0000-4000-8000-000000000002'),
 (3, 'grace again', 'c0000000-0000-4000-8000-000000000003'),
 (4, 'bo', 'c0000000-0000-4000-8000-000000000004'),
 (5, 'nobody', NULL);
INSERT INTO calls.chat_calls VALUES (1, 'c0000000-0000-4000-8000-000000000003');
INSERT INTO app.notes VALUES (1, 'c0000000-0000-4000-8000-000000000002');
ALTER TABLE app.notes ADD CONSTRAINT notes_author_fkey FOREIGN KEY (author)
    REFERENCES chat_users (id) NOT VALID;
INSERT INTO app.memories VALUES (1, 'c0000000-0000-4000-8000-000000000001'),
 (2, 'f0000000-0000-4000-8000-0000000000aa'), (3, 'c0000000-0000-4000-8000-000000000004');
-- A reference that is part of its table's key.
CREATE TABLE app.members (user_id uuid REFERENCES chat_users (id), room int, PRIMARY KEY (user_id, room));
INSERT INTO app.members VALUES ('c0000000-0000-4000-8000-000000000003', 1),
 ('c0000000-0000-4000-8000-000000000001', 2);
CREATE TABLE before_keys AS
SELECT conrelid::regclass::text AS tbl, conname, pg_get_constraintdef(oid) AS def, convalidated
FROM pg_constraint WHERE contype = 'f' AND connamespace IN ('app'::regnamespace, 'calls'::regnamespace);
SELECT tbl, conname, def, convalidated FROM before_keys ORDER BY tbl, conname;
CREATE VIEW product AS
SELECT 'conversations' AS t, id, user_id AS v, touched FROM app.conversations
UNION ALL SELECT 'chat_calls', id, caller, 0 FROM calls.chat_calls
UNION ALL SELECT 'notes', id, author, 0 FROM app.notes
UNION ALL SELECT 'memories', id, owner, 0 FROM app.memories
UNION ALL SELECT 'members', room, user_id, 0 FROM app.members;
CREATE TABLE before_rows AS SELECT * FROM product;
\set extra '[{"table": "app.memories", "column": "owner", "legacy_table": "chat_users"}]'

-- A value that is nobody's (memory 2) stops the swap of its reference, with the reason; the
-- references before it have moved, and the state says where it stopped.
SET client_min_messages = warning;
CALL nura_cutover(extra_references => :'extra', tables => ARRAY['chat_users']);
RESET client_min_messages;
SELECT ref_table, ref_column, target, rewritten, validated FROM nura_cutover_references ORDER BY id;
SELECT last_error->>'action' AS action, last_error->>'sqlstate' AS sqlstate FROM nura_cutover_tables;
DELETE FROM app.memories WHERE id = 2;
DELETE FROM before_rows WHERE t = 'memories' AND id = 2;
SET client_min_messages = warning;
CALL nura_cutover(tables => ARRAY['chat_users']);
RESET client_min_messages;

-- Moved: every key points to users under its own name, with its actions; the values are the
-- users' ids (Ana's auth id; Grace's two ids, one user); the product's trigger did not fire for
-- the rewrite; the legacy ids that changed are kept for the rollback.
SELECT legacy_table, state, references_total, references_moved FROM nura_cutover_status()
WHERE legacy_table = 'chat_users';
SELECT conrelid::regclass AS tbl, conname, pg_get_constraintdef(oid) AS def, convalidated
FROM pg_constraint WHERE contype = 'f' AND connamespace IN ('app'::regnamespace, 'calls'::regnamespace)
ORDER BY 1, 2;
SELECT t, id, v, touched FROM product ORDER BY t, id;
SELECT r.ref_table, o.row_key, o.original
FROM nura_cutover_originals o JOIN nura_cutover_references r ON r.id = o.reference_id
ORDER BY r.ref_table, o.row_key;
SELECT action, object FROM nura_cutover_steps WHERE action NOT IN ('catch_up') ORDER BY id;

-- Old code writes legacy ids: stored as their users' ids, the legacy id kept. New code writes
-- users' ids: kept. A new legacy row and a reference to it in one transaction: resolved. An id
-- that is nobody's: 23503, as the key said before.
INSERT INTO app.conversations (id, body, user_id) VALUES (6, 'grace by old code', 'c0000000-0000-4000-8000-000000000003');
INSERT INTO app.conversations (id, body, user_id) VALUES (7, 'ana by new code', 'a1111111-0000-4000-8000-000000000001');
BEGIN;
INSERT INTO chat_users (id, email, full_name) VALUES ('c0000000-0000-4000-8000-000000000005', 'dee@example.com', 'Dee');
INSERT INTO app.conversations (id, body, user_id) VALUES (8, 'dee', 'c0000000-0000-4000-8000-000000000005');
COMMIT;
INSERT INTO app.conversations (id, body, user_id) VALUES (9, 'ghost', 'f0000000-0000-4000-8000-0000000000bb');
UPDATE app.memories SET owner = 'c0000000-0000-4000-8000-000000000003' WHERE id = 1;
-- Old code writes Grace's first id (her user's own) over the second one a row held: the legacy
-- id kept for that row goes; written back, the second id is kept again. An ORM writing the row
-- whole (the column unchanged) keeps what was kept.
UPDATE app.conversations SET user_id = 'c0000000-0000-4000-8000-000000000002' WHERE id = 3;
SELECT count(*) AS kept_for_row_3 FROM nura_cutover_originals o JOIN nura_cutover_references r
ON r.id = o.reference_id WHERE r.ref_table = 'conversations' AND o.row_key = '[3]';
UPDATE app.conversations SET user_id = 'c0000000-0000-4000-8000-000000000003' WHERE id = 3;
UPDATE app.conversations SET user_id = user_id, body = 'grace again (edited)' WHERE id = 3;
-- A column without a key takes a value that is nobody's, as it did before.
INSERT INTO app.memories VALUES (4, 'f0000000-0000-4000-8000-0000000000dd');
-- The key is deferred: a conversation may name a chat row written later in the transaction.
BEGIN;
INSERT INTO app.conversations (id, body, user_id) VALUES (10, 'eve first', 'c0000000-0000-4000-8000-000000000006');
INSERT INTO chat_users (id, email, full_name) VALUES ('c0000000-0000-4000-8000-000000000006', 'eve@example.com', 'Eve');
COMMIT;
SELECT id, user_id FROM app.conversations WHERE id = 10;
SELECT t, id, v FROM product WHERE id >= 6 OR t = 'memories' ORDER BY t, id;

-- An adoption while moved: Bo signs up through Supabase Auth; his user takes the auth id, and
-- his conversation follows (ON UPDATE CASCADE).
SELECT auth.gotrue_signup('bo@example.com', NULL, '{}', 'b2222222-0000-4000-8000-000000000002');
SELECT id, body, user_id FROM app.conversations WHERE id = 4;
-- The extra reference, which has no key to cascade, follows the re-key too.
SELECT id, owner FROM app.memories WHERE id = 3;
-- Deleting a user now follows the key: Dee's conversation goes with her (ON DELETE CASCADE).
DELETE FROM chat_users WHERE id = 'c0000000-0000-4000-8000-000000000005';
SELECT count(*) AS dee_conversations FROM app.conversations WHERE id = 8;

-- Rollback: every key is back with its original definition (the unvalidated one unvalidated),
-- every original row holds its original value again, rows written meanwhile hold the legacy id
-- they were written with or their user's first legacy id, and nothing of the cutover is left.
CALL nura_cutover_rollback(tables => ARRAY['chat_users']);
SELECT b.tbl, b.conname, b.def = pg_get_constraintdef(c.oid) AS same_definition,
       b.convalidated = c.convalidated AS same_validation
FROM before_keys b JOIN pg_constraint c ON c.conrelid = b.tbl::regclass AND c.conname = b.conname
ORDER BY 1, 2;
SELECT t, id, v FROM product ORDER BY t, id;
-- (The value that is nobody's came back as it was; it would stop the next swap, so it goes.)
DELETE FROM app.memories WHERE id = 4;
SELECT count(*) AS changed_originals FROM before_rows b
JOIN product p USING (t, id) WHERE p.v IS DISTINCT FROM b.v AND NOT (t = 'memories' AND id = 1);
SELECT (SELECT count(*) FROM nura_cutover_references) AS references_left,
       (SELECT count(*) FROM nura_cutover_originals) AS originals_left,
       (SELECT count(*) FROM pg_trigger WHERE tgname LIKE '%nura_cutover%'
        AND tgrelid <> ALL ('{nura_cutover_unplaced,users,user_service_profiles}'::regclass[])) AS triggers_left;
SELECT legacy_table, state, references_total, references_moved FROM nura_cutover_status()
WHERE legacy_table = 'chat_users';

-- Cutover again: the same keys and values as one cutover gives.
SET client_min_messages = warning;
CALL nura_cutover(tables => ARRAY['chat_users']);
RESET client_min_messages;
SELECT conrelid::regclass AS tbl, conname, pg_get_constraintdef(oid) AS def, convalidated
FROM pg_constraint WHERE contype = 'f' AND connamespace IN ('app'::regnamespace, 'calls'::regnamespace)
ORDER BY 1, 2;
SELECT t, id, v FROM product ORDER BY t, id;

-- A failed validation: the steps run up to the validation of conv_owner; a row that bypasses
-- the resolve trigger (and the key's check) holds an id that is nobody's. The CALL stops with
-- 23503, the key stays NOT VALID, and the state says so; fixed, the next CALL validates.
CALL nura_cutover_rollback(tables => ARRAY['chat_users']);
SET client_min_messages = warning;
DO $$
DECLARE r jsonb;
BEGIN
    PERFORM nura_cutover_begin('public', '[]', ARRAY['chat_users'], 10000, 'switched');
    LOOP
        r := nura_cutover_step(10000, 1, ARRAY['chat_users']);
        EXIT WHEN r ? 'done' OR EXISTS (SELECT FROM nura_cutover_references
                                        WHERE ref_table = 'conversations' AND rewritten AND NOT validated);
    END LOOP;
    PERFORM nura_cutover_end();
END $$;
RESET client_min_messages;
SELECT ref_table, target, rewritten, validated FROM nura_cutover_references WHERE ref_table = 'conversations';
DO $$
DECLARE trg text;
BEGIN
    FOR trg IN SELECT tgname FROM pg_trigger WHERE tgrelid = 'app.conversations'::regclass
               AND tgname LIKE '%nura_cutover_resolve%' LOOP
        EXECUTE format('ALTER TABLE app.conversations DISABLE TRIGGER %I', trg);
    END LOOP;
    SET LOCAL session_replication_role = replica;
    INSERT INTO app.conversations (id, body, user_id) VALUES (99, 'bypass', 'f0000000-0000-4000-8000-0000000000cc');
    FOR trg IN SELECT tgname FROM pg_trigger WHERE tgrelid = 'app.conversations'::regclass
               AND tgname LIKE '%nura_cutover_resolve%' LOOP
        EXECUTE format('ALTER TABLE app.conversations ENABLE ALWAYS TRIGGER %I', trg);
    END LOOP;
END $$;
SET client_min_messages = warning;
CALL nura_cutover(tables => ARRAY['chat_users']);
RESET client_min_messages;
SELECT ref_table, target, rewritten, validated FROM nura_cutover_references WHERE ref_table = 'conversations';
SELECT convalidated FROM pg_constraint WHERE conname = 'conv_owner';
SELECT last_error->>'action' AS action, last_error->>'sqlstate' AS sqlstate FROM nura_cutover_tables;
SELECT legacy_table, references_total, references_moved FROM nura_cutover_status() WHERE legacy_table = 'chat_users';
DELETE FROM app.conversations WHERE id = 99;
SET client_min_messages = warning;
CALL nura_cutover(tables => ARRAY['chat_users']);
RESET client_min_messages;
SELECT convalidated FROM pg_constraint WHERE conname = 'conv_owner';
SELECT legacy_table, references_total, references_moved FROM nura_cutover_status() WHERE legacy_table = 'chat_users';

-- A reference from a partitioned table is not moved by this release: the CALL refuses, and the
-- rollback before it leaves everything as it was.
CALL nura_cutover_rollback(tables => ARRAY['chat_users']);
CREATE TABLE app.events (id int, at date, user_id uuid REFERENCES chat_users (id),
    PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CALL nura_cutover(tables => ARRAY['chat_users']);
SELECT legacy_table, state FROM nura_cutover_status() WHERE legacy_table = 'chat_users';
SELECT count(*) AS references_recorded FROM nura_cutover_references;
DROP TABLE app.events;
-- Neither is a table others inherit from, nor a column with another foreign key.
CREATE TABLE app.parent (id int PRIMARY KEY, user_id uuid REFERENCES chat_users (id));
CREATE TABLE app.child () INHERITS (app.parent);
CALL nura_cutover(tables => ARRAY['chat_users']);
DROP TABLE app.child, app.parent;
CREATE TABLE app.people (id uuid PRIMARY KEY);
ALTER TABLE app.notes ADD CONSTRAINT notes_author_person FOREIGN KEY (author) REFERENCES app.people (id) NOT VALID;
CALL nura_cutover(tables => ARRAY['chat_users']);
ALTER TABLE app.notes DROP CONSTRAINT notes_author_person;
-- Nor a table of another owner (the cutover would run its code with the extension owner's
-- rights), nor one with a column of a type another role owns.
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'nura_refs_other') THEN
        CREATE ROLE nura_refs_other NOLOGIN;
    END IF;
END $$;
CREATE TABLE app.theirs (id int PRIMARY KEY, user_id uuid REFERENCES chat_users (id));
ALTER TABLE app.theirs OWNER TO nura_refs_other;
CALL nura_cutover(tables => ARRAY['chat_users']);
DROP TABLE app.theirs;
CREATE DOMAIN app.uid AS uuid;
ALTER DOMAIN app.uid OWNER TO nura_refs_other;
CREATE TABLE app.typed (id int PRIMARY KEY, user_id app.uid REFERENCES chat_users (id));
CALL nura_cutover(tables => ARRAY['chat_users']);
DROP TABLE app.typed;
-- The rollback between its swap back and its rewrite back: old code writes Ana's chat id into a
-- row whose Grace id was kept; the row keeps what was written.
SET client_min_messages = warning;
CALL nura_cutover(tables => ARRAY['chat_users']);
UPDATE app.conversations SET user_id = 'c0000000-0000-4000-8000-000000000003' WHERE id = 2;
DO $$
DECLARE r jsonb;
BEGIN
    PERFORM nura_cutover_begin('public', '[]', ARRAY['chat_users'], 10000, 'legacy');
    LOOP
        r := nura_cutover_step(10000, 1, ARRAY['chat_users']);
        EXIT WHEN r ? 'done' OR EXISTS (SELECT FROM nura_cutover_references
                                        WHERE ref_table = 'conversations' AND target = 'legacy' AND NOT rewritten);
    END LOOP;
    PERFORM nura_cutover_end();
END $$;
RESET client_min_messages;
UPDATE app.conversations SET user_id = 'c0000000-0000-4000-8000-000000000001' WHERE id = 2;
CALL nura_cutover_rollback(tables => ARRAY['chat_users']);
SELECT id, user_id FROM app.conversations WHERE id = 2;
-- A product trigger that fills in a legacy id (it fires before the cutover's, by name) is
-- resolved too.
CREATE FUNCTION app.fill_owner() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.user_id := COALESCE(NEW.user_id, 'c0000000-0000-4000-8000-000000000001'); RETURN NEW; END $$;
CREATE TRIGGER zz_fill BEFORE INSERT ON app.conversations FOR EACH ROW EXECUTE FUNCTION app.fill_owner();
SET client_min_messages = warning;
CALL nura_cutover(tables => ARRAY['chat_users']);
RESET client_min_messages;
INSERT INTO app.conversations (id, body) VALUES (20, 'filled');
SELECT id, user_id FROM app.conversations WHERE id = 20;
DROP TRIGGER zz_fill ON app.conversations;
-- A referencing table dropped while moved: its reference leaves the cutover, with a WARNING, and
-- the rollback goes on.
DROP VIEW product;
DROP TABLE app.memories;
CALL nura_cutover_rollback(tables => ARRAY['chat_users']);
SELECT legacy_table, state FROM nura_cutover_status() WHERE legacy_table = 'chat_users';
SELECT action, object FROM nura_cutover_steps ORDER BY id DESC LIMIT 3;

\c postgres
DROP DATABASE nura_cutover_references;
