-- The PostgreSQL behaviour the cutover's design rests on (docs/design/cutover.md, §2), checked on
-- every version we test before anything is built on it. No extension object is used.
\set VERBOSITY terse
CREATE SCHEMA cutover_facts;
SET search_path = cutover_facts;
CREATE TABLE legacy (id uuid PRIMARY KEY, email text, name text);
CREATE VIEW v AS SELECT id, email, name FROM legacy;
CREATE FUNCTION v_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO cutover_facts.legacy VALUES (NEW.id, NEW.email, NEW.name);
        RETURN NEW;
    ELSIF TG_OP = 'UPDATE' THEN
        UPDATE cutover_facts.legacy SET email = NEW.email, name = NEW.name WHERE id = OLD.id;
        RETURN NEW;
    END IF;
    DELETE FROM cutover_facts.legacy WHERE id = OLD.id;
    RETURN OLD;
END $$;
CREATE TRIGGER v_write INSTEAD OF INSERT OR UPDATE OR DELETE ON v
    FOR EACH ROW EXECUTE FUNCTION v_write();

-- 1. Through INSTEAD OF triggers alone, ON CONFLICT DO NOTHING is silently ignored (the row is
-- inserted by the trigger, no conflict is ever checked): old code relying on it would be wrong
-- without an error. DO UPDATE needs an index the view does not have.
INSERT INTO v VALUES ('00000000-0000-4000-8000-000000000001', 'a@x', 'A') ON CONFLICT DO NOTHING RETURNING id;
INSERT INTO v VALUES ('00000000-0000-4000-8000-000000000001', 'a@x', 'A') ON CONFLICT (id) DO UPDATE SET name = 'B';
-- 2. A rule that never fires makes every INSERT ... ON CONFLICT fail with 0A000, while INSERT,
-- UPDATE and DELETE with RETURNING still go through the triggers.
CREATE RULE v_no_on_conflict AS ON UPDATE TO v WHERE false DO ALSO NOTHING;
\set VERBOSITY default
INSERT INTO v VALUES ('00000000-0000-4000-8000-000000000002', 'b@x', 'B') ON CONFLICT DO NOTHING;
\set VERBOSITY terse
INSERT INTO v VALUES ('00000000-0000-4000-8000-000000000003', 'c@x', 'C') RETURNING id, name;
UPDATE v SET name = 'A2' WHERE id = '00000000-0000-4000-8000-000000000001' RETURNING name;
DELETE FROM v WHERE id = '00000000-0000-4000-8000-000000000003' RETURNING id;
SELECT id, name FROM legacy ORDER BY id;

-- 3. CREATE OR REPLACE TRIGGER takes CREATE TRIGGER's lock (SHARE ROW EXCLUSIVE: reads go on);
-- DROP TRIGGER takes ACCESS EXCLUSIVE.
CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER t BEFORE INSERT ON legacy FOR EACH ROW EXECUTE FUNCTION noop('a');
BEGIN;
CREATE OR REPLACE TRIGGER t BEFORE INSERT ON legacy FOR EACH ROW EXECUTE FUNCTION noop('b');
SELECT mode FROM pg_locks WHERE relation = 'legacy'::regclass AND pid = pg_backend_pid() ORDER BY mode;
ROLLBACK;
BEGIN;
DROP TRIGGER t ON legacy;
SELECT mode FROM pg_locks WHERE relation = 'legacy'::regclass AND pid = pg_backend_pid() ORDER BY mode;
ROLLBACK;

-- 4. A view's tables are read without a check of their schema's USAGE, with the owner's rights
-- and with security_invoker alike: the kept table can live in a schema the API roles cannot use.
CREATE SCHEMA cutover_facts_hidden;
CREATE TABLE cutover_facts_hidden.t (x int);
INSERT INTO cutover_facts_hidden.t VALUES (1);
CREATE VIEW through AS SELECT x FROM cutover_facts_hidden.t;
CREATE ROLE nura_facts_reader;
GRANT USAGE ON SCHEMA cutover_facts TO nura_facts_reader;
GRANT SELECT ON through, cutover_facts_hidden.t TO nura_facts_reader;
SET ROLE nura_facts_reader;
SELECT x AS through_the_view FROM through;
SELECT x FROM cutover_facts_hidden.t;
RESET ROLE;
ALTER VIEW through SET (security_invoker = true);
SET ROLE nura_facts_reader;
SELECT x AS through_the_invoker_view FROM through;
RESET ROLE;

-- 5. A statement prepared against the table resolves to a view of the same name and columns
-- once the table has moved to another schema.
CREATE TABLE pt (id int, name text);
INSERT INTO pt VALUES (1, 'table');
PREPARE q AS SELECT name FROM pt WHERE id = 1;
EXECUTE q;
CREATE SCHEMA cutover_facts_kept;
BEGIN;
ALTER TABLE pt SET SCHEMA cutover_facts_kept;
CREATE VIEW pt AS SELECT id, 'view'::text AS name FROM cutover_facts_kept.pt;
COMMIT;
EXECUTE q;
DEALLOCATE q;

-- 6. A NOT VALID foreign key on a partitioned table: refused before PostgreSQL 18 (the output of
-- 15 is cutover_facts.out), accepted by 18 (cutover_facts_1.out).
CREATE TABLE parent_ref (owner uuid, k int) PARTITION BY RANGE (k);
CREATE TABLE parent_ref_1 PARTITION OF parent_ref FOR VALUES FROM (0) TO (100);
ALTER TABLE parent_ref ADD CONSTRAINT parent_ref_owner_fkey
    FOREIGN KEY (owner) REFERENCES legacy (id) NOT VALID;
SELECT count(*) AS not_valid_keys FROM pg_constraint
WHERE conrelid = 'parent_ref'::regclass AND NOT convalidated;

RESET search_path;
DROP SCHEMA cutover_facts, cutover_facts_hidden, cutover_facts_kept CASCADE;
DROP OWNED BY nura_facts_reader;
DROP ROLE nura_facts_reader;
