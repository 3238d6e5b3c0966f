-- nura_users 0.2.0 -> 0.3.0: cheaper auth writes. Run by ALTER EXTENSION nura_users UPDATE.
-- The 0.3.0 library also works on a database that has not been updated yet: the constraints only
-- move, and the trigger function compares the synced columns itself, whatever the WHEN clauses of
-- the triggers that call it.
\echo Use "ALTER EXTENSION nura_users UPDATE TO '0.3.0'" to load this file. \quit

-- 1. The limits on the columns of users and user_service_profiles move from table CHECKs into one
-- domain per column (see sql/schema.sql for why). The domains get their constraints only after
-- the columns use them: a column changed to a domain without constraints keeps its data in place
-- (no table rewrite), and ALTER DOMAIN ADD CONSTRAINT then checks the stored values with a scan.
-- The constraints keep their names. A view or rule of your own on one of these columns makes the
-- type change fail ("cannot alter type of a column used by a view or rule"): drop it first and
-- create it again after the update.
CREATE DOMAIN @extschema@.nura_email AS text;
CREATE DOMAIN @extschema@.nura_phone_number AS text;
CREATE DOMAIN @extschema@.nura_full_name AS text;
CREATE DOMAIN @extschema@.nura_display_name AS text;
CREATE DOMAIN @extschema@.nura_bio AS text;
CREATE DOMAIN @extschema@.nura_avatar_url AS text;
CREATE DOMAIN @extschema@.nura_current_streak AS integer;
CREATE DOMAIN @extschema@.nura_xp AS integer;
CREATE DOMAIN @extschema@.nura_privacy_settings AS jsonb;
CREATE DOMAIN @extschema@.nura_service_preferences AS jsonb;
CREATE DOMAIN @extschema@.nura_service_metadata AS jsonb;
CREATE DOMAIN @extschema@.nura_usage_stats AS jsonb;

ALTER TABLE @extschema@.users
    DROP CONSTRAINT users_email_normalized,
    DROP CONSTRAINT users_email_length,
    DROP CONSTRAINT users_phone_number_length,
    DROP CONSTRAINT users_full_name_length,
    DROP CONSTRAINT users_display_name_length,
    DROP CONSTRAINT users_bio_length,
    DROP CONSTRAINT users_avatar_url_length,
    DROP CONSTRAINT users_current_streak_nonnegative,
    DROP CONSTRAINT users_xp_nonnegative,
    DROP CONSTRAINT users_privacy_settings_object,
    ALTER COLUMN email TYPE @extschema@.nura_email,
    ALTER COLUMN phone_number TYPE @extschema@.nura_phone_number,
    ALTER COLUMN full_name TYPE @extschema@.nura_full_name,
    ALTER COLUMN display_name TYPE @extschema@.nura_display_name,
    ALTER COLUMN bio TYPE @extschema@.nura_bio,
    ALTER COLUMN avatar_url TYPE @extschema@.nura_avatar_url,
    ALTER COLUMN current_streak TYPE @extschema@.nura_current_streak,
    ALTER COLUMN xp TYPE @extschema@.nura_xp,
    ALTER COLUMN privacy_settings TYPE @extschema@.nura_privacy_settings;

ALTER TABLE @extschema@.user_service_profiles
    DROP CONSTRAINT user_service_profiles_preferences_object,
    DROP CONSTRAINT user_service_profiles_metadata_object,
    DROP CONSTRAINT user_service_profiles_usage_stats_object,
    ALTER COLUMN service_preferences TYPE @extschema@.nura_service_preferences,
    ALTER COLUMN service_metadata TYPE @extschema@.nura_service_metadata,
    ALTER COLUMN usage_stats TYPE @extschema@.nura_usage_stats;

ALTER DOMAIN @extschema@.nura_email ADD CONSTRAINT users_email_normalized
    CHECK (VALUE OPERATOR(pg_catalog.=) pg_catalog.btrim(VALUE) AND VALUE OPERATOR(pg_catalog.<>) '');
ALTER DOMAIN @extschema@.nura_email ADD CONSTRAINT users_email_length
    CHECK (pg_catalog.length(VALUE) OPERATOR(pg_catalog.<=) 255);
ALTER DOMAIN @extschema@.nura_phone_number ADD CONSTRAINT users_phone_number_length
    CHECK (pg_catalog.length(VALUE) OPERATOR(pg_catalog.<=) 32);
ALTER DOMAIN @extschema@.nura_full_name ADD CONSTRAINT users_full_name_length
    CHECK (pg_catalog.length(VALUE) OPERATOR(pg_catalog.<=) 200);
ALTER DOMAIN @extschema@.nura_display_name ADD CONSTRAINT users_display_name_length
    CHECK (pg_catalog.length(VALUE) OPERATOR(pg_catalog.<=) 200);
ALTER DOMAIN @extschema@.nura_bio ADD CONSTRAINT users_bio_length
    CHECK (pg_catalog.length(VALUE) OPERATOR(pg_catalog.<=) 2000);
ALTER DOMAIN @extschema@.nura_avatar_url ADD CONSTRAINT users_avatar_url_length
    CHECK (pg_catalog.length(VALUE) OPERATOR(pg_catalog.<=) 2048);
ALTER DOMAIN @extschema@.nura_current_streak ADD CONSTRAINT users_current_streak_nonnegative
    CHECK (VALUE OPERATOR(pg_catalog.>=) 0);
ALTER DOMAIN @extschema@.nura_xp ADD CONSTRAINT users_xp_nonnegative
    CHECK (VALUE OPERATOR(pg_catalog.>=) 0);
ALTER DOMAIN @extschema@.nura_privacy_settings ADD CONSTRAINT users_privacy_settings_object
    CHECK (pg_catalog.jsonb_typeof(VALUE) OPERATOR(pg_catalog.=) 'object');
ALTER DOMAIN @extschema@.nura_service_preferences ADD CONSTRAINT user_service_profiles_preferences_object
    CHECK (pg_catalog.jsonb_typeof(VALUE) OPERATOR(pg_catalog.=) 'object');
ALTER DOMAIN @extschema@.nura_service_metadata ADD CONSTRAINT user_service_profiles_metadata_object
    CHECK (pg_catalog.jsonb_typeof(VALUE) OPERATOR(pg_catalog.=) 'object');
ALTER DOMAIN @extschema@.nura_usage_stats ADD CONSTRAINT user_service_profiles_usage_stats_object
    CHECK (pg_catalog.jsonb_typeof(VALUE) OPERATOR(pg_catalog.=) 'object');

-- 2. One UPDATE trigger on auth.users without a WHEN clause replaces 0.2.0's two (the sign-in
-- trigger and the general one): attach drops them and creates the new one. Triggers you detached
-- stay detached.
SELECT @extschema@.nura_attach_auth_sync()
WHERE EXISTS (
    SELECT FROM pg_catalog.pg_trigger t
    WHERE t.tgrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass('auth.users')
      AND t.tgname OPERATOR(pg_catalog.=) ANY ('{nura_users_sync_update,nura_users_sync_sign_in}'::pg_catalog.name[])
      AND t.tgfoid OPERATOR(pg_catalog.=) '@extschema@.nura_auth_user_sync()'::pg_catalog.regprocedure);
