-- nura_users 0.1.0 -> 0.2.0: a faster legacy migration. Run by ALTER EXTENSION nura_users UPDATE.
-- Only attributes change (no data, no semantics), so the 0.2.0 library also works on a database
-- that has not been updated yet.
\echo Use "ALTER EXTENSION nura_users UPDATE TO '0.2.0'" to load this file. \quit

-- run_id on the migration's per-row bookkeeping tables is a plain bigint now: a foreign key check
-- per legacy row was a tenth of a large run's time, and the extension never deletes a run.
ALTER TABLE @extschema@.nura_migration_rows DROP CONSTRAINT nura_migration_rows_run_id_fkey;
ALTER TABLE @extschema@.user_id_aliases DROP CONSTRAINT user_id_aliases_run_id_fkey;
ALTER TABLE @extschema@.nura_migration_created DROP CONSTRAINT nura_migration_created_run_id_fkey;

-- The migration's statements cross jit_above_cost; compiling them costs seconds and saves nothing.
ALTER FUNCTION @extschema@.nura_migrate_legacy(boolean, integer, text) SET jit = off;
ALTER FUNCTION @extschema@.nura_migration_step(bigint) SET jit = off;
