-- CALL nura_run_migration() (docs/migration.md): the gradual migration. It commits after every step (a
-- batch of the auth backfill, the plan, a batch of legacy rows), so an interrupted run (cancel,
-- killed backend, crash) has committed whole batches only; called again, it resumes that run at
-- the first batch not committed. A procedure that commits cannot be SECURITY DEFINER: this one
-- runs as its caller, names everything with its schema, and leaves the work to the SECURITY
-- DEFINER steps. Not inside an explicit transaction block (COMMIT is not possible there).
CREATE PROCEDURE @extschema@.nura_run_migration(
    batch_size integer DEFAULT 10000,
    legacy_schema text DEFAULT 'public')
LANGUAGE plpgsql
AS $$
DECLARE
    run bigint;
    finished boolean := false;
BEGIN
    run := @extschema@.nura_migration_begin(batch_size, legacy_schema);
    COMMIT;
    WHILE NOT finished LOOP
        finished := @extschema@.nura_migration_step(run);
        COMMIT;
    END LOOP;
END
$$;

-- A legacy created_at held as text, read as PostgreSQL reads a timestamptz (any of its input
-- forms, in the session's time zone); NULL for text that is none, so that the plan makes that row
-- an unmigratable issue instead of failing on it. PARALLEL UNSAFE: the exception block is a
-- subtransaction, which no process of a parallel query may start (the plan then stages its rows
-- without parallel workers). Called only for a created_at column that is not a timestamp
-- already.
CREATE FUNCTION @extschema@.nura_legacy_timestamptz(value text) RETURNS timestamptz
LANGUAGE plpgsql STABLE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN value::pg_catalog.timestamptz;
EXCEPTION WHEN data_exception THEN
    RETURN NULL;
END
$$;
