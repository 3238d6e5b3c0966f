-- nura_users 0.4.0 -> 0.5.0: a cheaper record of what a migration run created. Run by ALTER
-- EXTENSION nura_users UPDATE. nura_migration_created held one row per user a run created (with a
-- primary key, an index on user_id and a foreign key to users): about 9 s of a 1M-row migration.
-- It now holds one row per kind and statement with the ids as an array; rollback finds an adopted
-- user through user_id_aliases instead of the foreign key's ON UPDATE CASCADE. The stored rows are
-- converted. user_id_aliases loses its index on run_id, which only a rollback used (another
-- 1.5 s). The 0.5.0 library also works on a database that has not been updated yet: it writes
-- and reads the table in the shape it finds.
\echo Use "ALTER EXTENSION nura_users UPDATE TO '0.5.0'" to load this file. \quit

-- Locks first: users (dropping the foreign key drops its triggers on users, which needs users
-- exclusively), then nura_migration_created, the order in which an adoption (users, then through
-- the foreign key nura_migration_created) and the 0.5.0 library's rollback take them. Taken the
-- other way round, an adoption and the update could each wait for the other. (The 0.4.0
-- library's rollback reads nura_migration_created before it deletes from users: one running in an
-- old backend during the update can deadlock with it, and PostgreSQL then cancels one of the
-- two.) users is held until the update commits: the conversion reads only nura_migration_created
-- (about 2 s per million recorded users).
LOCK TABLE @extschema@.users IN ACCESS EXCLUSIVE MODE;
-- The aliases lose an index and the work list gets a replica identity below. A migration batch
-- or nura_verify_migration reads them before users: one running while the update starts
-- deadlocks with it here, at once, and PostgreSQL cancels one of the two. Run neither during the
-- update.
LOCK TABLE @extschema@.user_id_aliases, @extschema@.nura_migration_rows IN ACCESS EXCLUSIVE MODE;
LOCK TABLE @extschema@.nura_migration_created IN ACCESS EXCLUSIVE MODE;

ALTER TABLE @extschema@.nura_migration_created
    DROP CONSTRAINT nura_migration_created_user_id_fkey,
    ADD COLUMN user_ids uuid[];
DROP INDEX @extschema@.nura_migration_created_user_idx;

-- One row per run and kind keeps the ids (the users' current ones: the foreign key followed
-- adoptions and deletions); the others go. The primary key stays until then, so that the UPDATE
-- and DELETE work under a publication FOR ALL TABLES (which needs a replica identity).
UPDATE @extschema@.nura_migration_created c SET user_ids = g.ids
FROM (SELECT o.run_id, o.what, pg_catalog.array_agg(o.user_id ORDER BY o.user_id) AS ids
      FROM @extschema@.nura_migration_created o GROUP BY o.run_id, o.what) g
WHERE c.run_id OPERATOR(pg_catalog.=) g.run_id AND c.what OPERATOR(pg_catalog.=) g.what
  AND c.user_id OPERATOR(pg_catalog.=) g.ids[1];
DELETE FROM @extschema@.nura_migration_created WHERE user_ids IS NULL;

ALTER TABLE @extschema@.nura_migration_created
    DROP CONSTRAINT nura_migration_created_pkey,
    DROP COLUMN user_id,
    ALTER COLUMN user_ids SET NOT NULL;
CREATE INDEX nura_migration_created_run_idx ON @extschema@.nura_migration_created (run_id);
-- Without a key, a rollback's DELETE needs this under a publication FOR ALL TABLES; and so does
-- the DELETE that empties the work list at the end of every run (it failed there before).
ALTER TABLE @extschema@.nura_migration_created REPLICA IDENTITY FULL;
ALTER TABLE @extschema@.nura_migration_rows REPLICA IDENTITY FULL;

DROP INDEX @extschema@.user_id_aliases_run_id_idx;
