-- nura_users: tables, keys, constraints and indexes (docs/install.md).
--
-- Every object lives in the schema given to CREATE EXTENSION (@extschema@). Names of built-in
-- functions are qualified with pg_catalog so that nothing a caller puts on search_path can stand in
-- for them. Limits (email 255, names 200, bio 2000, avatar_url 2048) are constraints, so that no
-- writer, not even a superuser with a hand-written UPDATE, can store what the API would refuse.

-- Service types. The three seeded rows are re-created by CREATE EXTENSION on restore, so the dump
-- filter leaves them out; service types a user adds are dumped.
CREATE TABLE @extschema@.user_service_types (
    service_type        text        PRIMARY KEY,
    default_preferences jsonb       NOT NULL DEFAULT '{}'::jsonb,
    auto_create         boolean     NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT user_service_types_name_format
        CHECK (service_type OPERATOR(pg_catalog.~) '^[a-z][a-z0-9_]{0,62}$'),
    CONSTRAINT user_service_types_default_preferences_object
        CHECK (pg_catalog.jsonb_typeof(default_preferences) OPERATOR(pg_catalog.=) 'object')
);
COMMENT ON TABLE @extschema@.user_service_types IS
    'Services that keep a per-user profile (chat, voice, memory, ...); auto_create profiles exist for every user.';

INSERT INTO @extschema@.user_service_types (service_type, default_preferences, auto_create) VALUES
    ('chat', '{}'::jsonb, true),
    ('voice', '{}'::jsonb, true),
    ('memory', '{}'::jsonb, true);

SELECT pg_catalog.pg_extension_config_dump(
    '@extschema@.user_service_types',
    $$WHERE service_type OPERATOR(pg_catalog.<>) ALL ('{chat,voice,memory}'::text[])$$);

-- The limits on the columns of users and user_service_profiles that every sync writes are domain
-- constraints, one domain per column, named after it (a violation names the domain and the
-- constraint). PostgreSQL compiles a domain's constraints once per backend and checks them only
-- for the columns a statement assigns; a table CHECK is read back from the catalog and planned
-- again for every statement that writes the table, which is every trigger-made write (a tenth of
-- a sign-in's CPU before 0.3.0).
-- Emails are stored without surrounding blanks, so lower(email) is the normalized (trim + lower)
-- form that the unique index and every match use.
CREATE DOMAIN @extschema@.nura_email AS text
    CONSTRAINT users_email_normalized
        CHECK (VALUE OPERATOR(pg_catalog.=) pg_catalog.btrim(VALUE) AND VALUE OPERATOR(pg_catalog.<>) '')
    CONSTRAINT users_email_length CHECK (pg_catalog.length(VALUE) OPERATOR(pg_catalog.<=) 255);
CREATE DOMAIN @extschema@.nura_phone_number AS text
    CONSTRAINT users_phone_number_length CHECK (pg_catalog.length(VALUE) OPERATOR(pg_catalog.<=) 32);
CREATE DOMAIN @extschema@.nura_full_name AS text
    CONSTRAINT users_full_name_length CHECK (pg_catalog.length(VALUE) OPERATOR(pg_catalog.<=) 200);
CREATE DOMAIN @extschema@.nura_display_name AS text
    CONSTRAINT users_display_name_length CHECK (pg_catalog.length(VALUE) OPERATOR(pg_catalog.<=) 200);
CREATE DOMAIN @extschema@.nura_bio AS text
    CONSTRAINT users_bio_length CHECK (pg_catalog.length(VALUE) OPERATOR(pg_catalog.<=) 2000);
CREATE DOMAIN @extschema@.nura_avatar_url AS text
    CONSTRAINT users_avatar_url_length CHECK (pg_catalog.length(VALUE) OPERATOR(pg_catalog.<=) 2048);
CREATE DOMAIN @extschema@.nura_current_streak AS integer
    CONSTRAINT users_current_streak_nonnegative CHECK (VALUE OPERATOR(pg_catalog.>=) 0);
CREATE DOMAIN @extschema@.nura_xp AS integer
    CONSTRAINT users_xp_nonnegative CHECK (VALUE OPERATOR(pg_catalog.>=) 0);
CREATE DOMAIN @extschema@.nura_privacy_settings AS jsonb
    CONSTRAINT users_privacy_settings_object
        CHECK (pg_catalog.jsonb_typeof(VALUE) OPERATOR(pg_catalog.=) 'object');
CREATE DOMAIN @extschema@.nura_service_preferences AS jsonb
    CONSTRAINT user_service_profiles_preferences_object
        CHECK (pg_catalog.jsonb_typeof(VALUE) OPERATOR(pg_catalog.=) 'object');
CREATE DOMAIN @extschema@.nura_service_metadata AS jsonb
    CONSTRAINT user_service_profiles_metadata_object
        CHECK (pg_catalog.jsonb_typeof(VALUE) OPERATOR(pg_catalog.=) 'object');
CREATE DOMAIN @extschema@.nura_usage_stats AS jsonb
    CONSTRAINT user_service_profiles_usage_stats_object
        CHECK (pg_catalog.jsonb_typeof(VALUE) OPERATOR(pg_catalog.=) 'object');

-- The single source of truth for user data. Auth-owned columns mirror auth.users; see docs/sync.md for
-- who may write which column.
CREATE TABLE @extschema@.users (
    id                 uuid        PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    email              @extschema@.nura_email,
    phone_number       @extschema@.nura_phone_number,
    full_name          @extschema@.nura_full_name,
    display_name       @extschema@.nura_display_name,
    bio                @extschema@.nura_bio,
    avatar_url         @extschema@.nura_avatar_url,
    email_confirmed_at timestamptz,
    phone_confirmed_at timestamptz,
    last_sign_in_at    timestamptz,
    banned_until       timestamptz,
    is_anonymous       boolean     NOT NULL DEFAULT false,
    is_sso_user        boolean     NOT NULL DEFAULT false,
    is_active          boolean     NOT NULL DEFAULT true,
    current_streak     @extschema@.nura_current_streak NOT NULL DEFAULT 0,
    xp                 @extschema@.nura_xp NOT NULL DEFAULT 0,
    privacy_settings   @extschema@.nura_privacy_settings NOT NULL DEFAULT '{}'::jsonb,
    created_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_active_at     timestamptz,
    deleted_at         timestamptz,
    auth_synced_at     timestamptz,
    source_updated_at  timestamptz
);
COMMENT ON TABLE @extschema@.users IS
    'One row per user: the single source of truth, kept in step with auth.users by nura_users.';

-- Case-insensitive unique email. SSO accounts may share an address (as in auth.users).
CREATE UNIQUE INDEX users_email_lower_key ON @extschema@.users (pg_catalog.lower(email))
    WHERE NOT is_sso_user;

SELECT pg_catalog.pg_extension_config_dump('@extschema@.users', '');

-- Time-ordered ids for profiles (UUID version 7, from the library): see src/schema.rs.
CREATE FUNCTION @extschema@.nura_uuidv7() RETURNS uuid
    VOLATILE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'nura_uuidv7_wrapper';

-- Per-service data. Profiles follow their user on delete and on re-keying (adoption by auth).
CREATE TABLE @extschema@.user_service_profiles (
    id                  uuid        PRIMARY KEY DEFAULT @extschema@.nura_uuidv7(),
    user_id             uuid        NOT NULL
        REFERENCES @extschema@.users (id) ON DELETE CASCADE ON UPDATE CASCADE,
    service_type        text        NOT NULL
        REFERENCES @extschema@.user_service_types (service_type) ON UPDATE CASCADE,
    service_preferences @extschema@.nura_service_preferences NOT NULL DEFAULT '{}'::jsonb,
    service_metadata    @extschema@.nura_service_metadata NOT NULL DEFAULT '{}'::jsonb,
    usage_stats         @extschema@.nura_usage_stats NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_used_at        timestamptz,
    CONSTRAINT user_service_profiles_user_service_key UNIQUE (user_id, service_type)
);
COMMENT ON TABLE @extschema@.user_service_profiles IS
    'Per-user, per-service preferences, metadata and usage statistics.';

-- Serves the foreign key from user_service_types (a service type with profiles cannot be deleted).
CREATE INDEX user_service_profiles_service_type_idx
    ON @extschema@.user_service_profiles (service_type);

SELECT pg_catalog.pg_extension_config_dump('@extschema@.user_service_profiles', '');

-- Migration runs and their issues (docs/migration.md).
CREATE TABLE @extschema@.nura_migration_runs (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dry_run       boolean     NOT NULL,
    legacy_schema text        NOT NULL,
    batch_size    integer     NOT NULL,
    status        text        NOT NULL DEFAULT 'running',
    started_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    finished_at   timestamptz,
    started_by    text        NOT NULL DEFAULT CURRENT_USER,
    report        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT nura_migration_runs_batch_size_positive CHECK (batch_size OPERATOR(pg_catalog.>) 0),
    CONSTRAINT nura_migration_runs_status_known
        CHECK (status OPERATOR(pg_catalog.=) ANY ('{running,capturing,completed,failed,rolled_back}'::text[])),
    -- 'capturing': the run that owns a cutover's live legacy writes (docs/cutover.md); it ends
    -- when the cutover is rolled back, and never blocks another run.
    CONSTRAINT nura_migration_runs_finished_when_done
        CHECK ((status OPERATOR(pg_catalog.=) ANY ('{running,capturing}'::text[]))
               OPERATOR(pg_catalog.=) (finished_at IS NULL))
);
COMMENT ON TABLE @extschema@.nura_migration_runs IS
    'One row per legacy migration run (dry runs included), with its report.';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.nura_migration_runs', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.nura_migration_runs_id_seq', '');

CREATE TABLE @extschema@.nura_migration_issues (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id        bigint      NOT NULL
        REFERENCES @extschema@.nura_migration_runs (id) ON DELETE CASCADE,
    source_table  text        NOT NULL,
    source_id     text,
    kind          text        NOT NULL,
    field         text,
    user_id       uuid,
    kept_value    jsonb,
    dropped_value jsonb,
    reason        text,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT nura_migration_issues_kind_known
        CHECK (kind OPERATOR(pg_catalog.=) ANY ('{conflict,unmigratable}'::text[])),
    -- A conflict names the field whose value was dropped; an unmigratable row says why.
    CONSTRAINT nura_migration_issues_conflict_names_field
        CHECK (kind OPERATOR(pg_catalog.<>) 'conflict' OR field IS NOT NULL),
    CONSTRAINT nura_migration_issues_unmigratable_has_reason
        CHECK (kind OPERATOR(pg_catalog.<>) 'unmigratable' OR reason IS NOT NULL)
);
COMMENT ON TABLE @extschema@.nura_migration_issues IS
    'Legacy rows a migration run could not place, and values it dropped in favour of another source.';

CREATE INDEX nura_migration_issues_run_kind_idx
    ON @extschema@.nura_migration_issues (run_id, kind);
-- The issues naming a user, whose values are scrubbed with its log rows (delete, soft delete,
-- erasure: docs/operations.md).
CREATE INDEX nura_migration_issues_user_idx
    ON @extschema@.nura_migration_issues (user_id);

SELECT pg_catalog.pg_extension_config_dump('@extschema@.nura_migration_issues', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.nura_migration_issues_id_seq', '');

-- run_id in the next three tables (work list, aliases, created rows) is a plain bigint, not a foreign key to nura_migration_runs:
-- a migration writes one of these rows per legacy row (a million in a large one), a foreign key
-- check per row was a tenth of the run's time, and the extension never deletes a run (a
-- rollback marks it rolled_back). Deleting run rows by hand is not supported.

-- The work list of a migration run: every legacy row as read when the run planned, with the user
-- it goes to (cluster), the batch that places it, or why it cannot be placed. Written once per run
-- in one transaction, read batch by batch, emptied when the run ends. Internal.
CREATE TABLE @extschema@.nura_migration_rows (
    run_id       bigint      NOT NULL,
    source_table text        NOT NULL,
    row_no       bigint      NOT NULL,
    precedence   smallint    NOT NULL,
    source_id    uuid,
    created_at   timestamptz,
    email        text,
    cluster      text,
    target_id    uuid,
    planned_id   uuid,
    batch_no     integer,
    reason       text,
    has_password boolean     NOT NULL,
    data         jsonb       NOT NULL,
    -- jsonb_hash_extended(data): the row's fingerprint, kept on its alias once it is placed.
    row_hash     bigint
);
COMMENT ON TABLE @extschema@.nura_migration_rows IS
    'Work list of a running legacy migration (internal; empty when no run is in progress).';

CREATE INDEX nura_migration_rows_batch_idx ON @extschema@.nura_migration_rows (run_id, batch_no);
-- No key (it would cost the plan an index entry per legacy row): the DELETE that empties the list
-- needs this under a publication FOR ALL TABLES. With wal_level = logical it logs the deleted
-- rows whole.
ALTER TABLE @extschema@.nura_migration_rows REPLICA IDENTITY FULL;

SELECT pg_catalog.pg_extension_config_dump('@extschema@.nura_migration_rows', '');

-- Former ids (legacy tables, adopted rows) of current users. The same uuid may have been used by
-- two legacy tables for different people, hence the key (alias_id, source).
CREATE TABLE @extschema@.user_id_aliases (
    alias_id   uuid        NOT NULL,
    source     text        NOT NULL,
    user_id    uuid        NOT NULL
        REFERENCES @extschema@.users (id) ON DELETE CASCADE ON UPDATE CASCADE,
    run_id     bigint,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- Fingerprints (jsonb_hash_extended) of the legacy rows a migration placed under this id, so
    -- that a later run knows those very rows from new or changed ones with the same id. NULL for
    -- aliases made before 0.6.0 and for adoptions.
    row_hashes bigint[],
    PRIMARY KEY (alias_id, source)
);
COMMENT ON TABLE @extschema@.user_id_aliases IS
    'Legacy and pre-adoption ids of users; nura_resolve_user_id() maps them to the current id.';

-- No index on run_id: only a rollback looks aliases up by run (a scan of a million aliases takes
-- a fraction of a second), and a migration writes an index entry per legacy row (about 1.5 s of
-- a 1M-row run).
CREATE INDEX user_id_aliases_user_id_idx ON @extschema@.user_id_aliases (user_id);

SELECT pg_catalog.pg_extension_config_dump('@extschema@.user_id_aliases', '');

-- What a migration run created, for its rollback: users ('user'), users it backfilled from
-- auth.users ('backfill'), and profiles it added to users it did not create ('profile:<type>').
-- One row per kind and statement, holding the ids as the run wrote them (a row per user, with its
-- index entries and foreign-key check, cost the migration about 9 s per million legacy rows). A
-- user re-keyed by adoption since is found through user_id_aliases (source 'adoption'); a user
-- deleted since is simply not found.
CREATE TABLE @extschema@.nura_migration_created (
    run_id   bigint NOT NULL,
    what     text   NOT NULL,
    user_ids uuid[] NOT NULL
);
COMMENT ON TABLE @extschema@.nura_migration_created IS
    'Users and profiles a migration run created (internal, for nura_rollback_migration).';

CREATE INDEX nura_migration_created_run_idx ON @extschema@.nura_migration_created (run_id);
-- Without a key, a rollback's DELETE of a run's rows needs this under a publication FOR ALL
-- TABLES (a few rows per run; the arrays are logged only with wal_level = logical).
ALTER TABLE @extschema@.nura_migration_created REPLICA IDENTITY FULL;

SELECT pg_catalog.pg_extension_config_dump('@extschema@.nura_migration_created', '');

-- The cutover's state (docs/cutover.md): one row per legacy table a cutover has started on, with
-- the facts the next step is chosen from. Each step commits its catalog change and these facts
-- together, so an interrupted cutover goes on from what they say.
CREATE TABLE @extschema@.nura_cutover_tables (
    legacy_table     text        PRIMARY KEY,
    legacy_schema    text        NOT NULL,
    -- Where the CALLs take the table: 'switched' (nura_cutover), 'legacy' (nura_cutover_rollback).
    goal             text        NOT NULL DEFAULT 'legacy',
    -- The capture triggers exist: writes to the legacy table reach users at once.
    captured         boolean     NOT NULL DEFAULT false,
    -- The migration run ('capturing') that owns what live writes place: aliases, issues.
    capture_run_id   bigint,
    -- The migration run that placed the rows written before the capture.
    catch_up_run_id  bigint,
    -- The extra_references entries for this table, as the first CALL gave them.
    extra_references jsonb       NOT NULL DEFAULT '[]'::jsonb,
    -- Reverse sync covers the table: changes of users reach its rows (the kept rows).
    mirrored         boolean     NOT NULL DEFAULT false,
    -- The fill (kept rows for users of the service without one) is done up to this users id.
    fill_after       uuid,
    fill_done        boolean     NOT NULL DEFAULT false,
    -- The table is kept in nura_legacy and a view has its name.
    switched         boolean     NOT NULL DEFAULT false,
    -- nura_cutover_finish ended the table's cutover: irreversible.
    finished         boolean     NOT NULL DEFAULT false,
    started_at       timestamptz,
    switched_at      timestamptz,
    finished_at      timestamptz,
    rolled_back_at   timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- The last step's failure ({action, sqlstate, message, at}); cleared by the next success.
    last_error       jsonb,
    CONSTRAINT nura_cutover_tables_known
        CHECK (legacy_table OPERATOR(pg_catalog.=) ANY ('{chat_users,voice_users,custom_users}'::text[])),
    CONSTRAINT nura_cutover_tables_goal_known
        CHECK (goal OPERATOR(pg_catalog.=) ANY ('{legacy,switched}'::text[]))
);
COMMENT ON TABLE @extschema@.nura_cutover_tables IS
    'Cutover state per legacy table (docs/cutover.md).';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.nura_cutover_tables', '');

-- Every step of a cutover or rollback, with what it changed.
CREATE TABLE @extschema@.nura_cutover_steps (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    legacy_table text        NOT NULL,
    action       text        NOT NULL,
    -- The object acted on (a trigger, a migration run), when there is one.
    object       text,
    detail       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- Lock attempts the step took, and how long its granted attempt waited for its locks.
    attempts     integer     NOT NULL DEFAULT 1,
    lock_wait_ms integer     NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    run_by       text        NOT NULL DEFAULT SESSION_USER
);
COMMENT ON TABLE @extschema@.nura_cutover_steps IS
    'Log of the cutover''s steps: what each changed (docs/cutover.md).';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.nura_cutover_steps', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.nura_cutover_steps_id_seq', '');

-- The references a cutover moves (docs/cutover.md, "References"): one row per foreign key to a
-- legacy table, and per column named in extra_references, from the capture on until the rollback
-- has put it back as it was. What the steps read and write: where the reference points (target),
-- whether its rows are rewritten, whether its key is validated, the rewrite's cursor.
CREATE TABLE @extschema@.nura_cutover_references (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    legacy_table    text        NOT NULL
        REFERENCES @extschema@.nura_cutover_tables (legacy_table) ON DELETE CASCADE,
    ref_schema      text        NOT NULL,
    ref_table       text        NOT NULL,
    ref_column      text        NOT NULL,
    -- The foreign key's name and pg_get_constraintdef (schema-qualified names); NULL for a column
    -- of extra_references. The rollback adds the key back from this text.
    constraint_name text,
    definition      text,
    was_validated   boolean,
    -- The key is deferrable: the resolve trigger lets an unknown value pass to it (the key
    -- decides at the commit, when a legacy row written later in the transaction is placed).
    key_deferrable  boolean     NOT NULL DEFAULT false,
    -- The referencing table's key columns: the originals of rewritten rows are kept by them.
    row_key         text[]      NOT NULL,
    target          text        NOT NULL DEFAULT 'legacy',
    rewritten       boolean     NOT NULL DEFAULT true,
    validated       boolean     NOT NULL DEFAULT true,
    -- The next block of the table the rewrite reads, in the table's file rewrite_file (a
    -- CLUSTER or VACUUM FULL between batches gives it another: the rewrite starts again).
    cursor          bigint      NOT NULL DEFAULT 0,
    rewrite_file    bigint,
    rows_done       bigint      NOT NULL DEFAULT 0,
    CONSTRAINT nura_cutover_references_target_known
        CHECK (target OPERATOR(pg_catalog.=) ANY ('{legacy,users}'::text[])),
    UNIQUE (legacy_table, ref_schema, ref_table, ref_column)
);
COMMENT ON TABLE @extschema@.nura_cutover_references IS
    'References a cutover moves from a legacy table to users, and their progress (docs/cutover.md).';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.nura_cutover_references', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.nura_cutover_references_id_seq', '');

-- The legacy id each rewritten row held, by the row's key, where it was not its user's id: the
-- rollback gives it back (docs/cutover.md, "Rolling back").
CREATE TABLE @extschema@.nura_cutover_originals (
    reference_id bigint NOT NULL
        REFERENCES @extschema@.nura_cutover_references (id) ON DELETE CASCADE,
    row_key      jsonb  NOT NULL,
    original     uuid   NOT NULL,
    PRIMARY KEY (reference_id, row_key)
);
COMMENT ON TABLE @extschema@.nura_cutover_originals IS
    'Legacy ids that rewritten references held, for the rollback (docs/cutover.md).';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.nura_cutover_originals', '');

-- Ties that live deletes ended, settled when their transaction commits (docs/cutover.md): then
-- the service's profile and the user go, when nothing backs them any more, so that a legacy row
-- deleted and written again in one transaction keeps its user. Rows live only inside such a
-- transaction (the commit's trigger deletes them).
CREATE TABLE @extschema@.nura_cutover_unplaced (
    user_id      uuid NOT NULL,
    legacy_table text NOT NULL
);
COMMENT ON TABLE @extschema@.nura_cutover_unplaced IS
    'Users whose legacy rows a transaction deleted during a cutover, settled at its commit (internal).';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.nura_cutover_unplaced', '');

-- Live legacy writes whose placement failed (the legacy write committed, nura_users.on_sync_error
-- = log): the next CALL nura_cutover places them again.
CREATE TABLE @extschema@.nura_cutover_backlog (
    legacy_table text        NOT NULL,
    legacy_id    uuid        NOT NULL,
    sqlstate     text        NOT NULL,
    message      text        NOT NULL,
    -- The row before the failed statement (an UPDATE's, as to_json text): the retry follows the
    -- change from it.
    before       text,
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (legacy_table, legacy_id)
);
COMMENT ON TABLE @extschema@.nura_cutover_backlog IS
    'Legacy rows written during a cutover whose placement failed, to be placed again (docs/cutover.md).';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.nura_cutover_backlog', '');

-- Reverse-sync writes a kept table refused (its NOT NULL or CHECK, a value too long, a key from
-- another table): the user's write committed; the kept rows lack the change ('change'), the user
-- has no kept row ('not_shown'), or a deleted user's row stays ('delete', under the row's id).
-- 'change' and 'delete' entries keep a switch back waiting until a CALL retries them.
CREATE TABLE @extschema@.nura_cutover_mirror_backlog (
    legacy_table text        NOT NULL,
    user_id      uuid        NOT NULL,
    kind         text        NOT NULL,
    sqlstate     text        NOT NULL,
    message      text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (legacy_table, user_id, kind),
    CONSTRAINT nura_cutover_mirror_backlog_kind_known
        CHECK (kind OPERATOR(pg_catalog.=) ANY ('{change,not_shown,delete}'::text[]))
);
COMMENT ON TABLE @extschema@.nura_cutover_mirror_backlog IS
    'Changes of users a kept legacy table could not take during a cutover (docs/cutover.md).';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.nura_cutover_mirror_backlog', '');

-- The rules of a log row: source is one of supabase_auth, frontend_sync, backend_api, reconcile,
-- migration; sync_type is 1 to 32 lowercase letters and underscores, starting with a letter; a
-- failure carries its SQLSTATE (5 digits or uppercase letters) and message, a success neither;
-- duration_us is not negative. They are one CHECK calling this function instead of five CHECK
-- expressions: PostgreSQL reads a table's CHECK constraints back from their catalog text and plans
-- them again for every statement that writes the table, and every sync writes its log row with a
-- statement of its own (five expressions were 5 % of a nura_sync_user call). For an invalid row it
-- returns false (PostgreSQL's usual CHECK error, SQLSTATE 23514) after a WARNING naming the field.
CREATE FUNCTION @extschema@.nura_sync_log_row_valid(source text, sync_type text, success boolean,
        sqlstate text, error_message text, duration_us bigint) RETURNS boolean
    IMMUTABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'nura_sync_log_row_valid_wrapper';

-- The audit trail: one row per sync attempt. Append-mostly at a high rate, so few indexes: per-user
-- history (and the PII scrub of one user's rows) and a BRIN on time for stats and purges.
CREATE TABLE @extschema@.user_sync_logs (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id        uuid,
    source         text        NOT NULL,
    sync_type      text        NOT NULL,
    success        boolean     NOT NULL,
    changed_fields text[],
    before_data    jsonb,
    after_data     jsonb,
    error_message  text,
    sqlstate       text,
    duration_us    bigint      NOT NULL DEFAULT 0,
    request_id     text,
    session_id     text,
    created_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- One CHECK, evaluated by a function of the library (see above).
    CONSTRAINT user_sync_logs_row_valid
        CHECK (@extschema@.nura_sync_log_row_valid(source, sync_type, success, sqlstate,
                                                    error_message, duration_us))
);
COMMENT ON TABLE @extschema@.user_sync_logs IS
    'Audit trail: one row per sync attempt, successful or not, with what changed.';

CREATE INDEX user_sync_logs_user_id_idx ON @extschema@.user_sync_logs (user_id, created_at)
    WHERE user_id IS NOT NULL;
CREATE INDEX user_sync_logs_created_at_brin ON @extschema@.user_sync_logs USING brin (created_at);

SELECT pg_catalog.pg_extension_config_dump('@extschema@.user_sync_logs', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.user_sync_logs_id_seq', '');

-- Row level security on every table. Policies for anon/authenticated come with the security
-- model; until then only the owner, superusers and BYPASSRLS roles (service_role) see rows.
ALTER TABLE @extschema@.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.user_service_profiles ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.user_service_types ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.user_sync_logs ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.user_id_aliases ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.nura_migration_runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.nura_migration_issues ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.nura_migration_rows ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.nura_migration_created ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.nura_cutover_tables ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.nura_cutover_steps ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.nura_cutover_backlog ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.nura_cutover_mirror_backlog ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.nura_cutover_references ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.nura_cutover_originals ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.nura_cutover_unplaced ENABLE ROW LEVEL SECURITY;
