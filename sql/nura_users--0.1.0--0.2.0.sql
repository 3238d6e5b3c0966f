-- nura_users 0.1.0 -> 0.2.0: a faster legacy migration. Run by ALTER EXTENSION nura_users UPDATE.
\echo Use "ALTER EXTENSION nura_users UPDATE TO '0.2.0'" to load this file. \quit

-- run_id on the migration's per-row bookkeeping tables is a plain bigint now: a foreign key check
-- per legacy row was a tenth of a large run's time, and the extension never deletes a run.
ALTER TABLE @extschema@.nura_migration_rows DROP CONSTRAINT nura_migration_rows_run_id_fkey;
ALTER TABLE @extschema@.user_id_aliases DROP CONSTRAINT user_id_aliases_run_id_fkey;
ALTER TABLE @extschema@.nura_migration_created DROP CONSTRAINT nura_migration_created_run_id_fkey;

-- nura_migration_created no longer lists every user a run created ('user'): the rollback finds
-- those through the run's aliases, and needs to know the users that existed before the run and
-- took legacy rows ('merged'). Runs of 0.1.0 are converted: every user their aliases name that the
-- run did not create is a merged one (as 0.2.0 records it, backfilled users included).
INSERT INTO @extschema@.nura_migration_created (run_id, user_id, what)
SELECT DISTINCT al.run_id, al.user_id, 'merged'
FROM @extschema@.user_id_aliases al
WHERE al.run_id IS NOT NULL
  AND NOT EXISTS (SELECT FROM @extschema@.nura_migration_created c
                  WHERE c.run_id OPERATOR(pg_catalog.=) al.run_id
                    AND c.user_id OPERATOR(pg_catalog.=) al.user_id
                    AND c.what OPERATOR(pg_catalog.=) 'user')
ON CONFLICT DO NOTHING;
DELETE FROM @extschema@.nura_migration_created WHERE what OPERATOR(pg_catalog.=) 'user';
COMMENT ON TABLE @extschema@.nura_migration_created IS
    'What a migration run''s rollback needs besides its aliases: users it backfilled or merged into, profiles it added (internal).';

-- The migration's statements cross jit_above_cost; compiling them costs seconds and saves nothing.
ALTER FUNCTION @extschema@.nura_migrate_legacy(boolean, integer, text) SET jit = off;
ALTER FUNCTION @extschema@.nura_migration_step(bigint) SET jit = off;
