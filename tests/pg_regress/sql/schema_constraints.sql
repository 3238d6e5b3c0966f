-- The keys and constraints of docs/install.md, as a writer meets them.
\set VERBOSITY terse
CREATE EXTENSION nura_users;

INSERT INTO users (id, email) VALUES
    ('00000000-0000-0000-0000-0000000000a1', 'Ana@Example.com');

-- Email is unique whatever its letter case...
INSERT INTO users (id, email) VALUES ('00000000-0000-0000-0000-0000000000a2', 'ana@EXAMPLE.com');
-- ...except among SSO accounts, which Supabase lets share an address.
INSERT INTO users (id, email, is_sso_user) VALUES
    ('00000000-0000-0000-0000-0000000000a3', 'ana@example.com', true),
    ('00000000-0000-0000-0000-0000000000a4', 'ANA@example.com', true);
-- Phone-only and anonymous users have no email at all.
INSERT INTO users (id, phone_number, is_anonymous) VALUES
    ('00000000-0000-0000-0000-0000000000a5', '15550001111', false),
    ('00000000-0000-0000-0000-0000000000a6', NULL, true);
-- Stored emails carry no surrounding blanks (so lower(email) is the normalized address).
INSERT INTO users (email) VALUES (' bo@example.com');
INSERT INTO users (email) VALUES ('');
-- Limits of the API hold for every writer.
INSERT INTO users (email) VALUES (repeat('a', 250) || '@x.com');
INSERT INTO users (full_name) VALUES (repeat('n', 201));
INSERT INTO users (bio) VALUES (repeat('b', 2001));
INSERT INTO users (avatar_url) VALUES (repeat('u', 2049));
INSERT INTO users (xp) VALUES (-1);
INSERT INTO users (current_streak) VALUES (-1);
INSERT INTO users (privacy_settings) VALUES ('[]');

-- Profiles: one per user and service; unknown services are refused.
INSERT INTO user_service_profiles (user_id, service_type) VALUES
    ('00000000-0000-0000-0000-0000000000a1', 'chat'),
    ('00000000-0000-0000-0000-0000000000a1', 'voice');
INSERT INTO user_service_profiles (user_id, service_type) VALUES
    ('00000000-0000-0000-0000-0000000000a1', 'chat');
INSERT INTO user_service_profiles (user_id, service_type) VALUES
    ('00000000-0000-0000-0000-0000000000a1', 'fax');
INSERT INTO user_service_profiles (user_id, service_type, service_preferences) VALUES
    ('00000000-0000-0000-0000-0000000000a5', 'memory', '"dark"');
INSERT INTO user_service_types (service_type) VALUES ('Bad Name');

-- Aliases point at users and follow them.
INSERT INTO user_id_aliases (alias_id, source, user_id) VALUES
    ('00000000-0000-0000-0000-00000000c0de', 'chat_users', '00000000-0000-0000-0000-0000000000a1');

-- Re-keying a user (as adoption by an auth user does) carries profiles and aliases along...
UPDATE users SET id = '00000000-0000-0000-0000-0000000000b1'
WHERE id = '00000000-0000-0000-0000-0000000000a1';
SELECT user_id, service_type FROM user_service_profiles ORDER BY service_type;
SELECT alias_id, source, user_id FROM user_id_aliases;
-- ...and deleting a user deletes them.
DELETE FROM users WHERE id = '00000000-0000-0000-0000-0000000000b1';
SELECT (SELECT count(*) FROM user_service_profiles) AS profiles,
       (SELECT count(*) FROM user_id_aliases) AS aliases;

-- A service type with profiles cannot be deleted.
INSERT INTO user_service_profiles (user_id, service_type) VALUES
    ('00000000-0000-0000-0000-0000000000a5', 'chat');
DELETE FROM user_service_types WHERE service_type = 'chat';

-- Log rows: a failure carries SQLSTATE and message, a success neither; sources are known;
-- sync types and SQLSTATEs have their format; durations are not negative. One CHECK
-- (user_sync_logs_row_valid), after a WARNING naming the field.
INSERT INTO user_sync_logs (source, sync_type, success) VALUES ('supabase_auth', 'created', true);
INSERT INTO user_sync_logs (source, sync_type, success, sqlstate, error_message)
VALUES ('frontend_sync', 'failed', false, '22023', 'invalid email');
INSERT INTO user_sync_logs (source, sync_type, success) VALUES ('frontend_sync', 'failed', false);
INSERT INTO user_sync_logs (source, sync_type, success) VALUES ('webhook', 'created', true);
INSERT INTO user_sync_logs (source, sync_type, success) VALUES ('reconcile', 'Created', true);
INSERT INTO user_sync_logs (source, sync_type, success, sqlstate, error_message)
VALUES ('reconcile', 'failed', false, '2202', 'short code');
INSERT INTO user_sync_logs (source, sync_type, success, duration_us)
VALUES ('reconcile', 'updated', true, -1);
SELECT id, source, sync_type, success, sqlstate FROM user_sync_logs ORDER BY id;

-- Migration bookkeeping ties its columns to the kind of row.
INSERT INTO nura_migration_runs (dry_run, legacy_schema, batch_size) VALUES (true, 'public', 100);
INSERT INTO nura_migration_issues (run_id, source_table, kind) VALUES (1, 'chat_users', 'conflict');
INSERT INTO nura_migration_issues (run_id, source_table, kind) VALUES (1, 'chat_users', 'unmigratable');
INSERT INTO nura_migration_issues (run_id, source_table, source_id, kind, reason)
VALUES (1, 'voice_users', '00000000-0000-0000-0000-00000000000f', 'unmigratable', 'no email');
UPDATE nura_migration_runs SET status = 'completed' WHERE id = 1;
UPDATE nura_migration_runs SET status = 'completed', finished_at = now() WHERE id = 1;
SELECT id, dry_run, status, finished_at IS NOT NULL AS finished FROM nura_migration_runs;

DROP EXTENSION nura_users;
