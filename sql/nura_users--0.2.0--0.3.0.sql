-- nura_users 0.2.0 -> 0.3.0: cheaper auth writes. Run by ALTER EXTENSION nura_users UPDATE.
-- The 0.3.0 library also works on a database that has not been updated yet: the constraints only
-- move, and the trigger function compares the synced columns itself, whatever the WHEN clauses of
-- the triggers that call it.
\echo Use "ALTER EXTENSION nura_users UPDATE TO '0.3.0'" to load this file. \quit

-- 0. Objects of yours that depend on the columns whose type changes would make ALTER COLUMN TYPE
-- fail with a message about one of them; name them all at once, before taking any lock.
DO $$
DECLARE
    blockers text;
BEGIN
    SELECT pg_catalog.string_agg(DISTINCT CASE
               WHEN d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass
               THEN pg_catalog.pg_describe_object('pg_catalog.pg_class'::pg_catalog.regclass, r.ev_class, 0)
               ELSE pg_catalog.pg_describe_object(d.classid, d.objid, 0) END, '; ')
      INTO blockers
    FROM pg_catalog.pg_depend d
    JOIN pg_catalog.pg_attribute a
      ON a.attrelid OPERATOR(pg_catalog.=) d.refobjid AND a.attnum OPERATOR(pg_catalog.=) d.refobjsubid
    LEFT JOIN pg_catalog.pg_rewrite r
      ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass
     AND r.oid OPERATOR(pg_catalog.=) d.objid
    LEFT JOIN pg_catalog.pg_attrdef ad
      ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_attrdef'::pg_catalog.regclass
     AND ad.oid OPERATOR(pg_catalog.=) d.objid
    WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
      AND d.refobjid OPERATOR(pg_catalog.=) ANY (ARRAY['@extschema@.users'::pg_catalog.regclass,
                                                       '@extschema@.user_service_profiles'::pg_catalog.regclass])
      AND a.attname OPERATOR(pg_catalog.=) ANY ('{email,phone_number,full_name,display_name,bio,avatar_url,current_streak,xp,privacy_settings,service_preferences,service_metadata,usage_stats}'::pg_catalog.name[])
      AND d.classid OPERATOR(pg_catalog.=) ANY (ARRAY['pg_catalog.pg_rewrite'::pg_catalog.regclass,
                                                      'pg_catalog.pg_policy'::pg_catalog.regclass,
                                                      'pg_catalog.pg_trigger'::pg_catalog.regclass,
                                                      'pg_catalog.pg_proc'::pg_catalog.regclass,
                                                      'pg_catalog.pg_publication_rel'::pg_catalog.regclass,
                                                      'pg_catalog.pg_attrdef'::pg_catalog.regclass])
      -- a column's own default is not in the way; a generated column computed from it is
      AND (ad.oid IS NULL OR ad.adnum OPERATOR(pg_catalog.<>) d.refobjsubid);
    IF blockers IS NOT NULL THEN
        RAISE EXCEPTION 'nura_users 0.3.0 changes the type of columns of users and user_service_profiles, and these objects depend on them: %', blockers
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'In one transaction: drop them, ALTER EXTENSION nura_users UPDATE, create them again, COMMIT (so that no policy or view is missing in between). Nothing was changed.';
    END IF;
END
$$;

-- Locks: users, then user_service_profiles, the order a signup writes them in. auth.users is
-- neither locked nor changed here: GoTrue's writes wait for users (their trigger writes it) and
-- go on when the update commits. The triggers on auth.users are replaced afterwards, in a
-- transaction of their own, by SELECT nura_attach_auth_sync() (see below).
LOCK TABLE @extschema@.users, @extschema@.user_service_profiles IN ACCESS EXCLUSIVE MODE;

-- 1. The limits on the columns of users and user_service_profiles move from table CHECKs into one
-- domain per column (see sql/schema.sql for why). The domains get their constraints only after
-- the columns use them: a column changed to a domain without constraints keeps its data in place
-- (no table rewrite), and ALTER DOMAIN ADD CONSTRAINT then checks the stored values with a scan.
-- The constraints keep their names.
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

-- 2. 0.3.0 has one UPDATE trigger on auth.users without a WHEN clause where 0.2.0 had two with
-- (the sign-in trigger and the general one). The 0.3.0 library syncs correctly through either
-- shape. Replacing them drops triggers, which locks auth.users exclusively; that is left to
-- SELECT nura_attach_auth_sync() in a transaction of its own, so that this update never waits
-- for auth.users while holding users (a GoTrue write holds them the other way round).
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_trigger t
               WHERE t.tgrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass('auth.users')
                 AND t.tgfoid OPERATOR(pg_catalog.=) '@extschema@.nura_auth_user_sync()'::pg_catalog.regprocedure
                 AND (t.tgqual IS NOT NULL OR t.tgname OPERATOR(pg_catalog.=) 'nura_users_sync_sign_in'))
    THEN
        RAISE NOTICE 'nura_users 0.3.0: the sync triggers on auth.users are those of 0.2.0; they keep working, and SELECT nura_attach_auth_sync() replaces them with the cheaper 0.3.0 trigger';
    END IF;
END
$$;

-- 3. ALTER COLUMN TYPE drops the columns' statistics and the rebuilt lower(email) index has none;
-- the update modified no rows, so autovacuum would not gather them again soon.
ANALYZE @extschema@.users, @extschema@.user_service_profiles;
