-- The cutover's plan (docs/cutover.md, "What exists now"; docs/design/cutover.md, §4.1 and §12):
-- after a real migration, a product schema with every shape the design carries or refuses, and
-- the plan's report of it: references with their counts, dependents with their actions and
-- notes, every blocker with its reason; ready once the blockers are fixed; other legacy
-- schemas (odd kinds and ids, none at all); the plan writes nothing and takes no lock beyond
-- ACCESS SHARE; argument refusals with their SQLSTATEs; who may call it.
DROP DATABASE IF EXISTS nura_cutover_plan;
CREATE DATABASE nura_cutover_plan TEMPLATE template0;
\c nura_cutover_plan
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

-- Legacy data: Ana (auth) in chat and custom, Grace twice in chat and once in voice, Hal invited
-- by Grace, Cy in voice; a chat row without email and a custom row of a missing auth user
-- (both unmigratable).
SELECT auth.gotrue_signup('ana@example.com', NULL, '{}', 'a1111111-0000-4000-8000-000000000001');
ALTER TABLE chat_users ADD COLUMN invited_by uuid REFERENCES chat_users (id);
ALTER TABLE voice_users ADD COLUMN chat_id uuid REFERENCES chat_users (id);
INSERT INTO chat_users (id, email, full_name, created_at, invited_by) VALUES
 ('c0000000-0000-4000-8000-000000000001', ' Ana@Example.com ', 'Ana Chat', '2024-01-01', NULL),
 ('c0000000-0000-4000-8000-000000000002', 'grace@example.com', 'Grace', '2024-01-02', NULL),
 ('c0000000-0000-4000-8000-000000000003', 'GRACE@example.com', 'Grace Again', '2024-01-03', NULL),
 ('c0000000-0000-4000-8000-000000000004', NULL, 'No Email', '2024-01-04', NULL),
 ('c0000000-0000-4000-8000-000000000005', 'hal@example.com', 'Hal', '2024-01-05',
  'c0000000-0000-4000-8000-000000000002');
INSERT INTO voice_users (id, name, email, created_at, chat_id) VALUES
 ('e0000000-0000-4000-8000-000000000001', 'Grace Voice', 'grace@example.com', '2024-02-01',
  'c0000000-0000-4000-8000-000000000002'),
 ('e0000000-0000-4000-8000-000000000002', 'Cy', 'cy@example.com', '2024-02-02', NULL);
INSERT INTO custom_users (user_id, full_name, current_streak, xp) VALUES
 ('a1111111-0000-4000-8000-000000000001', 'Ana Custom', 3, 120),
 ('f0000000-0000-4000-8000-000000000001', 'Ghost', 1, 10);
CREATE EXTENSION nura_users;
SET client_min_messages = warning;
SELECT s.key AS legacy_table, s.value AS migrated
FROM nura_migrate_legacy(false) AS r, jsonb_each(r->'sources') WITH ORDINALITY s(key, value, n) ORDER BY s.n;
RESET client_min_messages;
-- A chat row written after the run: no alias places it yet.
INSERT INTO chat_users (id, email, full_name, created_at) VALUES
 ('c0000000-0000-4000-8000-000000000006', 'ivy@example.com', 'Ivy', '2024-03-01');

-- The product, with every shape of the design's §12.
CREATE SCHEMA app;
CREATE SCHEMA calls;
ALTER TABLE chat_users ADD CONSTRAINT chat_users_id_email_key UNIQUE (id, email);
ALTER TABLE chat_users ALTER COLUMN full_name SET NOT NULL;
ALTER TABLE voice_users ADD CONSTRAINT voice_users_email_key UNIQUE (email);
ALTER TABLE voice_users ADD CONSTRAINT voice_users_name_check CHECK (name <> '');
ALTER TABLE custom_users ALTER COLUMN full_name TYPE varchar(50);
CREATE INDEX chat_users_email_idx ON chat_users (lower(email));
-- A key with ON DELETE CASCADE, deferrable, under a name of its own; a trigger enabled ALWAYS.
CREATE TABLE app.conversations (id int PRIMARY KEY, body text,
    user_id uuid CONSTRAINT conv_owner REFERENCES chat_users (id)
        ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED);
CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER conversations_audit BEFORE UPDATE ON app.conversations
    FOR EACH ROW EXECUTE FUNCTION app.touch();
ALTER TABLE app.conversations ENABLE ALWAYS TRIGGER conversations_audit;
-- A key in another schema, ON DELETE SET NULL.
CREATE TABLE calls.voice_calls (id int PRIMARY KEY,
    caller uuid REFERENCES voice_users (id) ON DELETE SET NULL);
-- A composite key; a key on email.
CREATE TABLE app.chat_contacts (id int PRIMARY KEY, user_id uuid, email text,
    FOREIGN KEY (user_id, email) REFERENCES chat_users (id, email));
CREATE TABLE app.newsletter (id int PRIMARY KEY, email text REFERENCES voice_users (email));
-- Columns without a key, named in extra_references: one text, one uuid.
CREATE TABLE app.memories (id int PRIMARY KEY, owner text);
CREATE TABLE app.notes (id int PRIMARY KEY, author uuid);
-- A partitioned table; one partitioned by the reference itself.
CREATE TABLE app.events (id int, at timestamptz, user_id uuid REFERENCES chat_users (id),
    PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE app.events_2025 PARTITION OF app.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE app.events_2026 PARTITION OF app.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE app.shards (user_id uuid REFERENCES chat_users (id), n int,
    PRIMARY KEY (user_id, n)) PARTITION BY HASH (user_id);
CREATE TABLE app.shards_0 PARTITION OF app.shards FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE app.shards_1 PARTITION OF app.shards FOR VALUES WITH (MODULUS 2, REMAINDER 1);
-- A reference in a primary key, which another table's key references.
CREATE TABLE app.memberships (user_id uuid REFERENCES chat_users (id), group_id int,
    PRIMARY KEY (user_id, group_id));
CREATE TABLE app.badges (id int PRIMARY KEY, user_id uuid, group_id int,
    FOREIGN KEY (user_id, group_id) REFERENCES app.memberships);
-- No row key; one column referencing two legacy tables.
CREATE TABLE app.audit (voice_id uuid REFERENCES voice_users (id), at timestamptz);
CREATE TABLE app.pairs (id int PRIMARY KEY,
    person uuid CONSTRAINT pairs_chat REFERENCES chat_users (id)
                CONSTRAINT pairs_voice REFERENCES voice_users (id));
-- A view, a materialized view, a rule, a trigger, a policy, grants.
CREATE VIEW app.chat_names AS SELECT id, full_name FROM chat_users;
CREATE MATERIALIZED VIEW app.chat_stats AS SELECT count(*) AS n FROM chat_users;
CREATE RULE voice_users_keep AS ON DELETE TO voice_users DO INSTEAD NOTHING;
CREATE TRIGGER chat_users_touch BEFORE UPDATE ON chat_users FOR EACH ROW EXECUTE FUNCTION app.touch();
CREATE POLICY chat_users_own ON chat_users FOR SELECT TO authenticated USING (id = auth.uid());
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'nura_plan_chat_app') THEN
        CREATE ROLE nura_plan_chat_app NOLOGIN;
    END IF;
END $$;
GRANT SELECT ON chat_users TO authenticated;
GRANT UPDATE (email, full_name) ON chat_users TO authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON chat_users TO nura_plan_chat_app;
-- Publications (wal_level replica warns that they would publish nothing yet).
SET client_min_messages = error;
CREATE PUBLICATION plan_all FOR ALL TABLES WITH (publish = 'insert');
CREATE PUBLICATION plan_custom FOR TABLE custom_users WITH (publish = 'insert');
CREATE PUBLICATION plan_schema FOR TABLES IN SCHEMA calls, public WITH (publish = 'insert');
RESET client_min_messages;
-- A function with a SQL-standard body over chat_users; one that takes voice_users' row type.
CREATE FUNCTION app.chat_count() RETURNS bigint LANGUAGE sql
BEGIN ATOMIC SELECT count(*) FROM public.chat_users; END;
CREATE FUNCTION app.voice_label(v voice_users) RETURNS text LANGUAGE sql AS $$ SELECT v.name $$;
-- The kept table's place of custom_users is taken.
CREATE SCHEMA nura_legacy;
CREATE TABLE nura_legacy.custom_users (x int);
-- A temporary table of this session.
CREATE TEMP TABLE scratch (id int PRIMARY KEY, owner uuid);

INSERT INTO app.conversations (id, user_id) VALUES
 (1, 'c0000000-0000-4000-8000-000000000001'), (2, 'c0000000-0000-4000-8000-000000000002'),
 (3, 'c0000000-0000-4000-8000-000000000003'), (4, 'c0000000-0000-4000-8000-000000000004'),
 (5, NULL);
INSERT INTO calls.voice_calls VALUES (1, 'e0000000-0000-4000-8000-000000000001'),
 (2, 'e0000000-0000-4000-8000-000000000002');
INSERT INTO app.notes VALUES (1, 'a1111111-0000-4000-8000-000000000001'),
 (2, 'f0000000-0000-4000-8000-000000000001'), (3, '00000000-0000-4000-8000-0000000000aa');
INSERT INTO app.memories VALUES (1, 'a1111111-0000-4000-8000-000000000001');
INSERT INTO app.events VALUES (1, '2025-05-01', 'c0000000-0000-4000-8000-000000000001'),
 (2, '2026-05-01', 'c0000000-0000-4000-8000-000000000005');
INSERT INTO app.memberships VALUES ('c0000000-0000-4000-8000-000000000001', 1),
 ('c0000000-0000-4000-8000-000000000002', 1), ('c0000000-0000-4000-8000-000000000003', 1),
 ('c0000000-0000-4000-8000-000000000003', 2);

-- 1. The plan, with two extra references (and the temporary table).
CREATE TEMP TABLE p AS SELECT nura_cutover_plan(extra_references => '[
    {"table": "app.memories", "column": "owner", "legacy_table": "custom_users"},
    {"table": "app.notes", "column": "author", "legacy_table": "custom_users"},
    {"table": "pg_temp.scratch", "column": "owner", "legacy_table": "custom_users"}]') AS plan;
SELECT plan->'legacy_schema' AS legacy_schema, plan->'ready' AS ready, jsonb_object_keys(plan) AS keys FROM p;
SELECT t.key AS legacy_table, t.value->'state' AS state, t.value->'rows' AS rows,
       jsonb_array_length(t.value->'references') AS refs, jsonb_array_length(t.value->'blockers') AS blockers
FROM p, jsonb_each(plan->'tables') WITH ORDINALITY t(key, value, n) ORDER BY t.n;
-- References, in the plan's order (by table and column), with their counts.
SELECT t.key AS legacy_table, r->>'table' AS "table", r->>'column' AS "column",
       r->>'constraint' AS "constraint", r->'rows' AS rows, r->'values_resolving' AS resolving,
       r->'values_not_resolving' AS not_resolving, r->'examples_not_resolving' AS examples,
       r->'last_legacy_write' AS last_legacy_write
FROM p, jsonb_each(plan->'tables') WITH ORDINALITY t(key, value, n),
     jsonb_array_elements(t.value->'references') WITH ORDINALITY e(r, i)
ORDER BY t.n, e.i;
-- Their definitions (under a pinned search_path: the legacy table named with its schema) and notes.
SELECT r->>'constraint' AS "constraint", r->>'definition' AS definition, r->>'note' AS note
FROM p, jsonb_each(plan->'tables') WITH ORDINALITY t(key, value, n),
     jsonb_array_elements(t.value->'references') WITH ORDINALITY e(r, i)
ORDER BY t.n, e.i;
-- Dependents: what the switch touches, and what becomes of it.
SELECT t.key AS legacy_table, d->>'kind' AS kind, d->>'name' AS name, d->>'action' AS action,
       d->>'note' AS note
FROM p, jsonb_each(plan->'tables') WITH ORDINALITY t(key, value, n),
     jsonb_array_elements(t.value->'dependents') WITH ORDINALITY e(d, i)
ORDER BY t.n, e.i;
-- Blockers, each with its reason and what it is about.
SELECT t.key AS legacy_table, b->>'kind' AS kind, coalesce(b->>'reference', b->>'object') AS about,
       b->>'reason' AS reason
FROM p, jsonb_each(plan->'tables') WITH ORDINALITY t(key, value, n),
     jsonb_array_elements(t.value->'blockers') WITH ORDINALITY e(b, i)
ORDER BY t.n, e.i;
-- One reference in full: the shape of the design's §4.1.
SELECT jsonb_pretty(r) FROM p, jsonb_array_elements(plan->'tables'->'chat_users'->'references') r
WHERE r->>'constraint' = 'conv_owner';

-- 2. Blockers that need a state of their own, each in a transaction rolled back: a legacy id that
-- is also another user's id; a migration run still running.
BEGIN;
INSERT INTO users (id, email) VALUES ('c0000000-0000-4000-8000-000000000003', 'eve@example.com');
SELECT b FROM jsonb_array_elements(nura_cutover_plan()->'tables'->'chat_users'->'blockers') b
WHERE b->>'kind' = 'ambiguous_ids';
ROLLBACK;
BEGIN;
INSERT INTO nura_migration_runs (dry_run, legacy_schema, batch_size) VALUES (false, 'public', 10);
SELECT DISTINCT b->>'kind' AS kind, b->>'reason' AS reason
FROM jsonb_each(nura_cutover_plan()->'tables') t, jsonb_array_elements(t.value->'blockers') b
WHERE b->>'kind' LIKE 'migration%' OR b->>'kind' = 'unmigratable_rows';
ROLLBACK;

-- 3. Fixed, it is ready: unmigratable rows and the values holding them deleted, the row written
-- since migrated by another run, every refused shape dropped or changed (the partitioned
-- app.events too: the design carries it, this release's CALL does not move it yet).
BEGIN;
DELETE FROM app.conversations WHERE user_id = 'c0000000-0000-4000-8000-000000000004';
DELETE FROM chat_users WHERE id = 'c0000000-0000-4000-8000-000000000004';
DELETE FROM custom_users WHERE user_id = 'f0000000-0000-4000-8000-000000000001';
DELETE FROM app.notes WHERE id IN (2, 3);
DELETE FROM app.memberships WHERE user_id = 'c0000000-0000-4000-8000-000000000003';
SET client_min_messages = warning;
SELECT r->'sources'->'chat_users'->'migrated' AS ivy_migrated FROM nura_migrate_legacy(false) AS r;
RESET client_min_messages;
DROP TABLE app.badges, app.chat_contacts, app.newsletter, app.shards, app.pairs, app.events;
ALTER TABLE app.audit ADD COLUMN id serial PRIMARY KEY;
DROP MATERIALIZED VIEW app.chat_stats;
DROP RULE voice_users_keep ON voice_users;
DROP PUBLICATION plan_custom, plan_schema;
DROP FUNCTION app.chat_count(), app.voice_label(voice_users);
DROP TABLE nura_legacy.custom_users;
SELECT plan->'ready' AS ready,
       (SELECT jsonb_agg(b) FROM jsonb_each(plan->'tables') t, jsonb_array_elements(t.value->'blockers') b) AS blockers,
       (SELECT jsonb_object_agg(t.key, t.value->'rows') FROM jsonb_each(plan->'tables') t) AS rows
FROM (SELECT nura_cutover_plan(extra_references =>
          '[{"table": "app.notes", "column": "author", "legacy_table": "custom_users"}]') AS plan) x;
ROLLBACK;

-- 4. Other legacy schemas: odd kinds and ids, without a migration; none at all.
CREATE SCHEMA odd;
CREATE VIEW odd.chat_users AS SELECT * FROM public.chat_users;
CREATE TABLE odd.voice_users (id text, name text, email text);
CREATE TABLE odd.custom_users (user_id uuid PRIMARY KEY, full_name varchar(20), xp text,
    current_streak int) PARTITION BY HASH (user_id);
SELECT t.key AS legacy_table, t.value->'rows' AS rows, b->>'kind' AS kind, b->>'reason' AS reason
FROM jsonb_each(nura_cutover_plan('odd')->'tables') WITH ORDINALITY t(key, value, n),
     jsonb_array_elements(t.value->'blockers') WITH ORDINALITY b(b, i)
ORDER BY t.n, b.i;
SELECT d FROM jsonb_array_elements(nura_cutover_plan('odd')->'tables'->'custom_users'->'dependents') d;
CREATE SCHEMA odder;
CREATE TABLE odder.chat_users (id uuid PRIMARY KEY);
CREATE TABLE odder.chat_archive () INHERITS (odder.chat_users);
CREATE TABLE odder.everyone (user_id uuid PRIMARY KEY) PARTITION BY HASH (user_id);
CREATE TABLE odder.custom_users PARTITION OF odder.everyone FOR VALUES WITH (MODULUS 1, REMAINDER 0);
SELECT t.key AS legacy_table, b->>'reason' AS reason
FROM jsonb_each(nura_cutover_plan('odder')->'tables') WITH ORDINALITY t(key, value, n),
     jsonb_array_elements(t.value->'blockers') b
WHERE b->>'kind' = 'legacy_table_kind' ORDER BY t.n;
CREATE SCHEMA empty;
SELECT nura_cutover_plan('empty');

-- 5. It writes nothing and locks nothing beyond ACCESS SHARE.
BEGIN;
SELECT (nura_cutover_plan(extra_references =>
    '[{"table": "app.notes", "column": "author", "legacy_table": "custom_users"}]'))->'ready' AS ready;
SELECT pg_current_xact_id_if_assigned() IS NULL AS no_transaction_id,
       (SELECT array_agg(DISTINCT mode) FROM pg_locks
        WHERE pid = pg_backend_pid() AND locktype = 'relation') AS lock_modes;
COMMIT;

-- 6. Argument refusals, each with its SQLSTATE.
CREATE FUNCTION refusal(legacy_schema text, extra jsonb) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM nura_cutover_plan(legacy_schema, extra);
    RETURN 'accepted';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ' ' || SQLERRM;
END $$;
CREATE VIEW app.note_view AS SELECT * FROM app.notes;
SELECT n, refusal(s, e::jsonb) FROM (VALUES
 (1, 'nope', '[]'),
 (2, NULL, '[]'),
 (3, ' ', '[]'),
 (4, 'public', NULL),
 (5, 'public', '{}'),
 (6, 'public', '[1]'),
 (7, 'public', '[{"table": "app.notes", "column": "author"}]'),
 (8, 'public', '[{"table": "app.notes", "column": "author", "legacy_table": "custom_users", "on": 1}]'),
 (9, 'public', '[{"table": "app.notes", "column": "author", "legacy_table": "users"}]'),
 (10, 'public', '[{"table": "a.b.c", "column": "author", "legacy_table": "custom_users"}]'),
 (11, 'public', '[{"table": "app.notes", "column": "", "legacy_table": "custom_users"}]'),
 (12, 'public', '[{"table": "app.nope", "column": "author", "legacy_table": "custom_users"}]'),
 (13, 'public', '[{"table": "notes", "column": "author", "legacy_table": "custom_users"}]'),
 (14, 'public', '[{"table": "app.notes", "column": "nope", "legacy_table": "custom_users"}]'),
 (15, 'public', '[{"table": "app.conversations", "column": "user_id", "legacy_table": "chat_users"}]'),
 (16, 'empty', '[{"table": "app.notes", "column": "author", "legacy_table": "chat_users"}]'),
 (17, 'public', '[{"table": "app.note_view", "column": "author", "legacy_table": "chat_users"}]'),
 (18, 'public', '[{"table": "app.notes", "column": "author", "legacy_table": "chat_users"},
                  {"table": "APP.\"notes\"", "column": "author", "legacy_table": "chat_users"}]'),
 (19, 'public', '[{"table": "app.notes", "column": "author", "legacy_table": "chat_users"},
                  {"table": "app.notes", "column": "author", "legacy_table": "voice_users"}]'),
 (20, 'public', '[{"table": "voice_users", "column": "chat_id", "legacy_table": "custom_users"}]'),
 (21, 'public', repeat('[', 300) || repeat(']', 300))
) v(n, s, e) ORDER BY n;

-- 7. Who may call it: service_role and the owner; not authenticated, not anon (42501).
SELECT r.rolname, has_function_privilege(r.oid, 'nura_cutover_plan(text, jsonb)', 'EXECUTE') AS may_execute
FROM pg_roles r WHERE r.rolname IN ('anon', 'authenticated', 'service_role') ORDER BY 1;
BEGIN;
SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims',
    '{"sub": "a1111111-0000-4000-8000-000000000001", "role": "authenticated"}', true) \gset
SELECT nura_cutover_plan();
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT set_config('role', 'anon', true) \gset
SELECT nura_cutover_plan();
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT set_config('role', 'service_role', true) \gset
SELECT nura_cutover_plan()->'ready' AS ready_for_service_role;
ROLLBACK;

\c nura_regress
DROP DATABASE nura_cutover_plan;
DROP ROLE nura_plan_chat_app;
