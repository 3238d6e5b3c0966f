-- The cutover's SQL parts (docs/cutover.md): the procedures, which commit after every step and
-- so run as their caller, and the trigger functions that capture a legacy table's writes.

-- CALL nura_cutover() and CALL nura_cutover_rollback(): set the goal of the chosen tables, then
-- one step per transaction until every table is at its goal. A step whose locks were not granted
-- within nura_users.cutover_lock_timeout is tried again after a backoff, slept after the COMMIT
-- (holding no lock). A refusal is committed into the table's state first, then raised. Not
-- inside a transaction block (COMMIT is not possible there: 2D000).
CREATE PROCEDURE @extschema@.nura_cutover_drive(
    legacy_schema text, extra_references jsonb, tables text[], batch_size integer, goal text)
LANGUAGE plpgsql
AS $$
DECLARE
    r jsonb;
    waits integer := 0;
BEGIN
    PERFORM @extschema@.nura_cutover_begin(legacy_schema, extra_references, tables, batch_size, goal);
    COMMIT;
    LOOP
        r := @extschema@.nura_cutover_step(batch_size, waits OPERATOR(pg_catalog.+) 1, tables);
        COMMIT;
        IF r OPERATOR(pg_catalog.?) 'refused' THEN
            PERFORM @extschema@.nura_cutover_end();
            RAISE EXCEPTION USING
                ERRCODE = r OPERATOR(pg_catalog.->) 'refused' OPERATOR(pg_catalog.->>) 'sqlstate',
                MESSAGE = r OPERATOR(pg_catalog.->) 'refused' OPERATOR(pg_catalog.->>) 'message',
                HINT = COALESCE(r OPERATOR(pg_catalog.->) 'refused' OPERATOR(pg_catalog.->>) 'hint', '');
        END IF;
        EXIT WHEN r OPERATOR(pg_catalog.?) 'done';
        IF r OPERATOR(pg_catalog.?) 'waiting' THEN
            waits := waits OPERATOR(pg_catalog.+) 1;
            -- 50 ms doubling up to about 6 s, with jitter so that two waiters do not march in step.
            PERFORM pg_catalog.pg_sleep(0.05 OPERATOR(pg_catalog.*)
                (2 OPERATOR(pg_catalog.^) LEAST(waits, 7)::float8)
                OPERATOR(pg_catalog.*) (0.5 OPERATOR(pg_catalog.+) pg_catalog.random() OPERATOR(pg_catalog./) 2));
        ELSE
            waits := 0;
        END IF;
    END LOOP;
    PERFORM @extschema@.nura_cutover_end();
END
$$;

CREATE PROCEDURE @extschema@.nura_cutover(
    legacy_schema text DEFAULT 'public',
    extra_references jsonb DEFAULT '[]',
    tables text[] DEFAULT NULL,
    batch_size integer DEFAULT 10000)
LANGUAGE plpgsql
AS $$
BEGIN
    CALL @extschema@.nura_cutover_drive(legacy_schema, extra_references, tables, batch_size, 'switched');
END
$$;

CREATE PROCEDURE @extschema@.nura_cutover_rollback(
    legacy_schema text DEFAULT 'public',
    tables text[] DEFAULT NULL,
    batch_size integer DEFAULT 10000)
LANGUAGE plpgsql
AS $$
BEGIN
    CALL @extschema@.nura_cutover_drive(legacy_schema, '[]', tables, batch_size, 'legacy');
END
$$;

-- The capture trigger (AFTER INSERT/UPDATE/DELETE FOR EACH STATEMENT, transition tables nura_new
-- and nura_old; TG_ARGV[0] the id column): the ids written and the rows before, to the
-- placement. It runs as the extension's owner: old code writing its table needs no rights here.
-- Rows are read as to_json (not to_jsonb, which refuses what a json column may hold).
CREATE FUNCTION @extschema@.nura_cutover_capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ids uuid[];
    before text[];
BEGIN
    IF TG_OP OPERATOR(pg_catalog.<>) 'DELETE' THEN
        SELECT pg_catalog.array_agg(x.id) INTO ids
        FROM (SELECT @extschema@.nura_legacy_uuid(pg_catalog.to_json(n) OPERATOR(pg_catalog.->>) TG_ARGV[0]) AS id
              FROM nura_new n) x
        WHERE x.id IS NOT NULL;
    END IF;
    IF TG_OP OPERATOR(pg_catalog.<>) 'INSERT' THEN
        SELECT pg_catalog.array_agg(pg_catalog.to_json(o)::text) INTO before FROM nura_old o;
    END IF;
    PERFORM @extschema@.nura_cutover_place(TG_TABLE_NAME::text, TG_TABLE_SCHEMA::text, ids, before);
    RETURN NULL;
END
$$;

-- The guard (BEFORE UPDATE OF the id column FOR EACH ROW, and BEFORE TRUNCATE): a legacy id that
-- changes, or rows that go without row triggers, could not be carried into users.
CREATE FUNCTION @extschema@.nura_cutover_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = pg_catalog.format('%I.%I cannot be truncated while a cutover captures it',
                                        TG_TABLE_SCHEMA, TG_TABLE_NAME),
            HINT = 'DELETE the rows instead, or CALL nura_cutover_rollback() first.';
    END IF;
    IF (pg_catalog.to_json(NEW) OPERATOR(pg_catalog.->>) TG_ARGV[0])
       IS DISTINCT FROM (pg_catalog.to_json(OLD) OPERATOR(pg_catalog.->>) TG_ARGV[0]) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = pg_catalog.format('%I.%I.%I cannot change while a cutover captures the table',
                                        TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]),
            HINT = 'Insert a row with the new id and delete the old one.';
    END IF;
    RETURN NEW;
END
$$;
