-- nura_users 0.4.0 -> 0.5.0: a cheaper record of what a migration run created. Run by ALTER
-- EXTENSION nura_users UPDATE. nura_migration_created held one row per user a run created (with a
-- primary key, an index on user_id and a foreign key to users): about 9 s of a 1M-row migration.
-- It now holds one row per kind and statement with the ids as an array; rollback finds an adopted
-- user through user_id_aliases instead of the foreign key's ON UPDATE CASCADE. The stored rows are
-- converted. user_id_aliases loses its index on run_id, which only a rollback used (another
-- 1.5 s). The 0.5.0 library also works on a database that has not been updated yet: it writes
-- and reads the table in the shape it finds.
\echo Use "ALTER EXTENSION nura_users UPDATE TO '0.5.0'" to load this file. \quit

-- Locks first, in the order every writer takes them: users (dropping the foreign key drops its
-- triggers on users, which needs users exclusively; an adoption writes users, then, through the
-- foreign key, nura_migration_created), then nura_migration_created. Taken the other way round,
-- an adoption and the update could each wait for the other. users is held until the update
-- commits: the conversion reads only nura_migration_created (about a second per million rows).
LOCK TABLE @extschema@.users IN ACCESS EXCLUSIVE MODE;
LOCK TABLE @extschema@.nura_migration_created IN ACCESS EXCLUSIVE MODE;

ALTER TABLE @extschema@.nura_migration_created
    DROP CONSTRAINT nura_migration_created_user_id_fkey,
    DROP CONSTRAINT nura_migration_created_pkey,
    ALTER COLUMN user_id DROP NOT NULL,
    ADD COLUMN user_ids uuid[];
DROP INDEX @extschema@.nura_migration_created_user_idx;

-- The ids are the users' current ones (the foreign key followed adoptions and deletions).
INSERT INTO @extschema@.nura_migration_created (run_id, what, user_ids)
SELECT c.run_id, c.what, pg_catalog.array_agg(c.user_id ORDER BY c.user_id)
FROM @extschema@.nura_migration_created c
GROUP BY c.run_id, c.what;
DELETE FROM @extschema@.nura_migration_created WHERE user_ids IS NULL;

ALTER TABLE @extschema@.nura_migration_created
    DROP COLUMN user_id,
    ALTER COLUMN user_ids SET NOT NULL;
CREATE INDEX nura_migration_created_run_idx ON @extschema@.nura_migration_created (run_id);

DROP INDEX @extschema@.user_id_aliases_run_id_idx;
