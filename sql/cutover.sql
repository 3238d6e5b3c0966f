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
-- and nura_old; TG_ARGV[0] the id column, a uuid; TG_ARGV[1] the legacy table): the ids written
-- and the rows before, to the placement. It runs as the extension's owner, so that old code
-- writing its table needs no rights here; and so it converts nothing of the product's types: the
-- ids are read as they are, and the rows before are turned into JSON only when every column has
-- a built-in type (a cast of a type of someone else's could run code as the owner; the
-- placement refuses such a table, its ids go to the backlog). A row's to_json text is passed as
-- text, not parsed here: a json cell that jsonb refuses cannot fail the legacy write.
CREATE FUNCTION @extschema@.nura_cutover_capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ids uuid[];
    before text[];
BEGIN
    IF TG_OP OPERATOR(pg_catalog.<>) 'DELETE' THEN
        EXECUTE pg_catalog.format('SELECT pg_catalog.array_agg(n.%I) FROM nura_new n WHERE n.%I IS NOT NULL',
                                  TG_ARGV[0], TG_ARGV[0]) INTO ids;
    END IF;
    IF TG_OP OPERATOR(pg_catalog.<>) 'INSERT' THEN
        IF @extschema@.nura_cutover_foreign_types(TG_RELID) IS NULL THEN
            SELECT pg_catalog.array_agg(pg_catalog.to_json(o)::text) INTO before FROM nura_old o;
        ELSE
            EXECUTE pg_catalog.format('SELECT pg_catalog.array_agg(pg_catalog.json_build_object(%L, o.%I)::text) FROM nura_old o',
                                      TG_ARGV[0], TG_ARGV[0]) INTO before;
        END IF;
    END IF;
    PERFORM @extschema@.nura_cutover_place(TG_ARGV[1], TG_TABLE_SCHEMA::text, ids, before);
    RETURN NULL;
END
$$;

-- The columns of a table whose types someone else owns (neither a superuser nor the extension's
-- owner), as text; NULL when there are none. The cutover reads and writes the product's rows as
-- the extension's owner, and converting such a type (a cast, a domain's CHECK) could run its
-- owner's code with those rights; types of superusers and of the owner (built-in ones, an enum
-- or a domain of the product's owner, an extension's types) are safe.
CREATE FUNCTION @extschema@.nura_cutover_foreign_types(rel oid) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.string_agg(pg_catalog.format('%I (%s)', a.attname,
                                 pg_catalog.format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY a.attnum)
    FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid
    JOIN pg_catalog.pg_roles o ON o.oid OPERATOR(pg_catalog.=) t.typowner
    WHERE a.attrelid OPERATOR(pg_catalog.=) rel AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
      AND NOT o.rolsuper AND o.rolname OPERATOR(pg_catalog.<>) CURRENT_USER
$$;

-- The guard: a legacy id that changes (AFTER UPDATE FOR EACH ROW WHEN the id differs, so that a
-- trigger of the product changing it is seen too), or rows that go without row triggers
-- (BEFORE TRUNCATE), could not be carried into users.
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
    RAISE EXCEPTION USING ERRCODE = '55000',
        MESSAGE = pg_catalog.format('%I.%I.%I cannot change while a cutover captures the table',
                                    TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]),
        HINT = 'Insert a row with the new id and delete the old one.';
END
$$;

-- The resolve triggers of a moved reference (FOR EACH ROW; TG_ARGV[0] the reference's id,
-- TG_ARGV[1] 'forward' or 'back', TG_ARGV[2] 'written' for BEFORE INSERT OR UPDATE OF the column,
-- 'moved' for BEFORE UPDATE of any other column). Forward (the key points to users): a
-- legacy id old code writes is stored as its user's id, and the legacy id is kept in
-- nura_cutover_originals under the row's key for the rollback (a legacy id equal to its user's id
-- clears what was kept); a users id passes; anything else is 23503, as the key to the legacy
-- table said before (for a deferrable key it passes, and the key decides at the commit). Back
-- (the rollback put the original key back): a users id new code writes is stored as a legacy id
-- of its user (its former id when it was one, else its first by the alias's age); a legacy id
-- passes. The 'moved' trigger fires for every UPDATE, so that a row the product moves without
-- writing the column is resolved on the way (only a legacy id that maps elsewhere changes there). The cutover's own rewrites (nura_cutover_rewriting(), a backend-local
-- flag) are passed through. It runs as the extension's owner, and converts nothing of the product's: the
-- column is read as the uuid it is, and the key (built-in types only, checked at the capture) is
-- read as JSON under fixed settings, so that its text is the same in every session.
CREATE FUNCTION @extschema@.nura_cutover_resolve() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC' SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres'
SET extra_float_digits = 1 SET bytea_output = 'hex'
AS $$
DECLARE
    ref record;
    v uuid;
    old_v uuid;
    holder uuid;
    mapped uuid;
    key jsonb;
    changed boolean;
BEGIN
    IF @extschema@.nura_cutover_rewriting() THEN
        RETURN NEW;
    END IF;
    SELECT r.legacy_table, r.ref_column, r.row_key, r.key_deferrable,
           r.constraint_name IS NULL AS keyless INTO ref
    FROM @extschema@.nura_cutover_references r WHERE r.id OPERATOR(pg_catalog.=) TG_ARGV[0]::bigint;
    IF NOT FOUND THEN
        RETURN NEW;
    END IF;
    EXECUTE pg_catalog.format('SELECT ($1).%I::uuid', ref.ref_column) USING NEW INTO v;
    IF v IS NULL THEN
        RETURN NEW;
    END IF;
    -- Changed: an INSERT, or an UPDATE that gives the column another value (an ORM writing the
    -- row whole writes it unchanged: what was kept for the row stays).
    changed := TG_OP OPERATOR(pg_catalog.=) 'INSERT';
    IF NOT changed AND TG_ARGV[2] OPERATOR(pg_catalog.=) 'written' THEN
        EXECUTE pg_catalog.format('SELECT ($1).%I::uuid', ref.ref_column) USING OLD INTO old_v;
        changed := old_v IS DISTINCT FROM v;
    END IF;
    -- The user whose legacy id the value is, if it is one (looked up once).
    SELECT a.user_id INTO holder FROM @extschema@.user_id_aliases a
    WHERE a.alias_id OPERATOR(pg_catalog.=) v AND a.source OPERATOR(pg_catalog.=) ref.legacy_table;
    IF TG_ARGV[1] OPERATOR(pg_catalog.=) 'forward' THEN
        IF holder IS NULL AND changed AND NOT ref.key_deferrable AND NOT ref.keyless
           AND NOT EXISTS (SELECT FROM @extschema@.users u WHERE u.id OPERATOR(pg_catalog.=) v) THEN
            RAISE EXCEPTION USING ERRCODE = '23503',
                MESSAGE = pg_catalog.format('insert or update on table "%s" violates foreign key: %s.%s = %s is neither a user nor a %s id of one',
                                            TG_TABLE_NAME, TG_TABLE_NAME, ref.ref_column, v, ref.legacy_table);
        END IF;
        mapped := CASE WHEN holder OPERATOR(pg_catalog.<>) v THEN holder END;
        -- Nothing to map and nothing written (an UPDATE of other columns of a resolved row, the
        -- common case): the row passes untouched.
        IF mapped IS NULL AND NOT changed THEN
            RETURN NEW;
        END IF;
    ELSE
        -- Back: a legacy id passes, a user's id becomes a legacy id of its user.
        IF holder IS NULL THEN
            SELECT a.alias_id INTO mapped FROM @extschema@.user_id_aliases a
            WHERE a.user_id OPERATOR(pg_catalog.=) v AND a.source OPERATOR(pg_catalog.=) ref.legacy_table
            ORDER BY EXISTS (SELECT FROM @extschema@.user_id_aliases f WHERE f.alias_id OPERATOR(pg_catalog.=) a.alias_id
                             AND f.source OPERATOR(pg_catalog.=) 'adoption' AND f.user_id OPERATOR(pg_catalog.=) v) DESC,
                     a.created_at, a.alias_id
            LIMIT 1;
            IF mapped IS NULL AND NOT (ref.key_deferrable OR ref.keyless) THEN
                RAISE EXCEPTION USING ERRCODE = '23503',
                    MESSAGE = pg_catalog.format('insert or update on table "%s" violates foreign key: %s.%s = %s has no %s id while the cutover rolls back',
                                                TG_TABLE_NAME, TG_TABLE_NAME, ref.ref_column, v, ref.legacy_table);
            END IF;
        END IF;
        IF mapped IS NULL AND NOT changed THEN
            RETURN NEW;
        END IF;
    END IF;
    -- From here on the row is converted (its key read as JSON, the column set): a column given a
    -- type of someone else's since the capture would run that type's code as the extension's owner.
    IF @extschema@.nura_cutover_foreign_types(TG_RELID) IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = pg_catalog.format('%I.%I has columns of types another role owns (%s): the cutover cannot resolve its rows',
                                        TG_TABLE_SCHEMA, TG_TABLE_NAME, @extschema@.nura_cutover_foreign_types(TG_RELID)),
            HINT = 'Give those types to the extension''s owner, or drop those columns.';
    END IF;
    IF TG_ARGV[1] OPERATOR(pg_catalog.=) 'back' AND changed THEN
        -- A row written now holds what it is written with: what was kept for its key is stale
        -- (the key as it was written, before the mapping, as the forward records have it).
        EXECUTE pg_catalog.format('SELECT pg_catalog.jsonb_build_array(%s)',
            (SELECT pg_catalog.string_agg(pg_catalog.format('($1).%I', k.col), ', ' ORDER BY k.n)
             FROM pg_catalog.unnest(ref.row_key) WITH ORDINALITY k(col, n))) USING NEW INTO key;
        DELETE FROM @extschema@.nura_cutover_originals o
        WHERE o.reference_id OPERATOR(pg_catalog.=) TG_ARGV[0]::bigint AND o.row_key OPERATOR(pg_catalog.=) key;
    END IF;
    IF mapped IS NOT NULL THEN
        NEW := pg_catalog.jsonb_populate_record(NEW, pg_catalog.jsonb_build_object(ref.ref_column, mapped));
    END IF;
    IF TG_ARGV[1] OPERATOR(pg_catalog.=) 'back' THEN
        RETURN NEW;
    END IF;
    -- Forward: the key as the row will have it (the column may be part of it).
    EXECUTE pg_catalog.format('SELECT pg_catalog.jsonb_build_array(%s)',
        (SELECT pg_catalog.string_agg(pg_catalog.format('($1).%I', k.col), ', ' ORDER BY k.n)
         FROM pg_catalog.unnest(ref.row_key) WITH ORDINALITY k(col, n))) USING NEW INTO key;
    IF mapped IS NOT NULL THEN
        INSERT INTO @extschema@.nura_cutover_originals (reference_id, row_key, original)
        VALUES (TG_ARGV[0]::bigint, key, v)
        ON CONFLICT (reference_id, row_key) DO UPDATE SET original = EXCLUDED.original;
    ELSE
        -- Written as it is (a legacy id that is its user's id, or a user's id in a new row):
        -- nothing of an earlier value of this key is to come back.
        DELETE FROM @extschema@.nura_cutover_originals o
        WHERE o.reference_id OPERATOR(pg_catalog.=) TG_ARGV[0]::bigint
          AND o.row_key OPERATOR(pg_catalog.=) key
          AND (TG_OP OPERATOR(pg_catalog.=) 'INSERT' OR holder IS NOT NULL);
    END IF;
    RETURN NEW;
END
$$;

-- The settlement of a live delete (see nura_cutover_unplaced in sql/schema.sql): a constraint
-- trigger deferred to the commit, when the transaction's last word on the legacy rows is known.
-- Deletes it makes (the user, and through the product's keys to users their rows) run their own
-- triggers in the same commit.
CREATE FUNCTION @extschema@.nura_cutover_settle_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM @extschema@.nura_cutover_settle(NEW.user_id, NEW.legacy_table);
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER nura_cutover_unplaced_settle
    AFTER INSERT ON @extschema@.nura_cutover_unplaced
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION @extschema@.nura_cutover_settle_trigger();

-- Reverse sync (docs/cutover.md, "The switch"): while a legacy table is mirrored, changes of
-- users reach its rows (the kept rows), so that a switch back loses nothing. The function of
-- three triggers on users and user_service_profiles that the cutover's mirror step creates (and
-- a rollback's last unmirror disables; src/cutover/mirror.rs), so that a database without a
-- cutover pays nothing for them, and installing or updating the extension takes no lock on
-- those tables for them. Field changes and new profiles are mirrored at the commit (deferred):
-- the transaction's last word on the user, with its aliases in place (a migration writes a
-- user's profile before its aliases). A user's delete is mirrored before it, while its aliases
-- still say which rows are its own.
CREATE FUNCTION @extschema@.nura_cutover_mirror() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    changed text[];
BEGIN
    IF TG_TABLE_NAME OPERATOR(pg_catalog.=) 'users' AND TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
        PERFORM @extschema@.nura_cutover_mirror_delete(OLD.id);
        RETURN OLD;
    END IF;
    IF TG_TABLE_NAME OPERATOR(pg_catalog.=) 'users' THEN
        changed := pg_catalog.array_remove(ARRAY[
            CASE WHEN OLD.email IS DISTINCT FROM NEW.email THEN 'email' END,
            CASE WHEN OLD.full_name IS DISTINCT FROM NEW.full_name THEN 'full_name' END,
            CASE WHEN OLD.phone_number IS DISTINCT FROM NEW.phone_number THEN 'phone_number' END,
            CASE WHEN OLD.is_active IS DISTINCT FROM NEW.is_active THEN 'is_active' END,
            CASE WHEN OLD.privacy_settings IS DISTINCT FROM NEW.privacy_settings THEN 'privacy_settings' END,
            CASE WHEN OLD.current_streak IS DISTINCT FROM NEW.current_streak THEN 'current_streak' END,
            CASE WHEN OLD.xp IS DISTINCT FROM NEW.xp THEN 'xp' END], NULL);
        IF pg_catalog.cardinality(changed) OPERATOR(pg_catalog.>) 0 THEN
            PERFORM @extschema@.nura_cutover_mirror_user(NEW.id, changed);
        END IF;
        RETURN NULL;
    END IF;
    -- Only chat and voice profiles make legacy rows (custom_users follows streak and xp).
    IF NEW.service_type OPERATOR(pg_catalog.=) ANY ('{chat,voice}'::text[]) THEN
        PERFORM @extschema@.nura_cutover_mirror_profile(NEW.user_id, NEW.service_type,
                                                        TG_OP OPERATOR(pg_catalog.=) 'INSERT');
    END IF;
    RETURN NULL;
END
$$;

-- The INSTEAD OF trigger of a switched legacy table's view (TG_ARGV[0] the legacy table): the
-- write goes to the kept table and into users (nura_cutover_view_write); what it returns is the
-- view's row, which RETURNING shows. Rows travel as record text, which every type reads back
-- exactly (a json cell with \u0000 too); the row before also as to_json text, for the placement.
CREATE FUNCTION @extschema@.nura_cutover_view_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r text;
BEGIN
    r := @extschema@.nura_cutover_view_write(TG_ARGV[0], TG_OP,
        CASE WHEN TG_OP OPERATOR(pg_catalog.<>) 'INSERT' THEN pg_catalog.to_json(OLD)::text END,
        CASE WHEN TG_OP OPERATOR(pg_catalog.<>) 'INSERT' THEN OLD::text END,
        CASE WHEN TG_OP OPERATOR(pg_catalog.<>) 'DELETE' THEN NEW::text END);
    IF r IS NULL THEN
        RETURN NULL;
    END IF;
    IF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
        RETURN OLD;
    END IF;
    EXECUTE pg_catalog.format('SELECT ($1::pg_catalog.text::%s).*', TG_RELID::pg_catalog.regclass)
        INTO NEW USING r;
    RETURN NEW;
END
$$;
