-- A hand-written PL/pgSQL equivalent of what nura_users does on auth writes and in
-- nura_sync_user: a users row (metadata names filled while empty), the auto_create service
-- profiles, a log row with before/after of the changed fields, all under a savepoint
-- (BEGIN … EXCEPTION) so that a failure is logged instead of failing the auth write. It is the
-- reference a Supabase user would otherwise write by hand.
CREATE SCHEMA ref;
CREATE TABLE ref.service_types (service_type text PRIMARY KEY, default_preferences jsonb NOT NULL DEFAULT '{}', auto_create boolean NOT NULL DEFAULT true);
INSERT INTO ref.service_types (service_type) VALUES ('chat'), ('voice'), ('memory');
CREATE TABLE ref.users (
    id uuid PRIMARY KEY, email text, phone_number text, full_name text, display_name text,
    bio text, avatar_url text, email_confirmed_at timestamptz, phone_confirmed_at timestamptz,
    last_sign_in_at timestamptz, banned_until timestamptz, is_anonymous boolean NOT NULL DEFAULT false,
    is_sso_user boolean NOT NULL DEFAULT false, is_active boolean NOT NULL DEFAULT true,
    deleted_at timestamptz, created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(), auth_synced_at timestamptz);
CREATE UNIQUE INDEX ON ref.users (lower(email)) WHERE NOT is_sso_user;
CREATE TABLE ref.profiles (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL REFERENCES ref.users ON DELETE CASCADE ON UPDATE CASCADE,
    service_type text NOT NULL REFERENCES ref.service_types,
    service_preferences jsonb NOT NULL DEFAULT '{}', created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, service_type));
CREATE TABLE ref.sync_logs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, user_id uuid, source text NOT NULL,
    sync_type text NOT NULL, success boolean NOT NULL, changed_fields text[], before_data jsonb,
    after_data jsonb, error_message text, sqlstate text, created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON ref.sync_logs (user_id, created_at);
CREATE INDEX ON ref.sync_logs USING brin (created_at);

CREATE FUNCTION ref.on_auth_user() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    old_row ref.users;
    changed text[];
BEGIN
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO ref.users (id, email, phone_number, full_name, display_name, avatar_url,
                email_confirmed_at, phone_confirmed_at, last_sign_in_at, banned_until, is_anonymous,
                is_sso_user, deleted_at, auth_synced_at)
            VALUES (NEW.id, nullif(btrim(NEW.email), ''), NEW.phone,
                coalesce(NEW.raw_user_meta_data ->> 'full_name', NEW.raw_user_meta_data ->> 'name'),
                coalesce(NEW.raw_user_meta_data ->> 'display_name', NEW.raw_user_meta_data ->> 'preferred_username'),
                coalesce(NEW.raw_user_meta_data ->> 'avatar_url', NEW.raw_user_meta_data ->> 'picture'),
                NEW.email_confirmed_at, NEW.phone_confirmed_at, NEW.last_sign_in_at, NEW.banned_until,
                NEW.is_anonymous, NEW.is_sso_user, NEW.deleted_at, now());
            INSERT INTO ref.profiles (user_id, service_type, service_preferences)
            SELECT NEW.id, t.service_type, t.default_preferences FROM ref.service_types t WHERE t.auto_create;
            INSERT INTO ref.sync_logs (user_id, source, sync_type, success, changed_fields, after_data)
            VALUES (NEW.id, 'supabase_auth', 'created', true, '{email,full_name}',
                    jsonb_build_object('email', NEW.email,
                                       'full_name', NEW.raw_user_meta_data ->> 'full_name'));
        ELSE
            SELECT * INTO old_row FROM ref.users WHERE id = NEW.id FOR UPDATE;
            changed := array_remove(ARRAY[
                CASE WHEN old_row.email IS DISTINCT FROM NEW.email THEN 'email' END,
                CASE WHEN old_row.email_confirmed_at IS DISTINCT FROM NEW.email_confirmed_at THEN 'email_confirmed_at' END,
                CASE WHEN old_row.last_sign_in_at IS DISTINCT FROM NEW.last_sign_in_at THEN 'last_sign_in_at' END,
                CASE WHEN old_row.banned_until IS DISTINCT FROM NEW.banned_until THEN 'banned_until' END,
                CASE WHEN old_row.deleted_at IS DISTINCT FROM NEW.deleted_at THEN 'deleted_at' END], NULL);
            IF cardinality(changed) > 0 THEN
                UPDATE ref.users SET email = NEW.email, email_confirmed_at = NEW.email_confirmed_at,
                    last_sign_in_at = NEW.last_sign_in_at, banned_until = NEW.banned_until,
                    deleted_at = NEW.deleted_at, updated_at = now(), auth_synced_at = now()
                WHERE id = NEW.id;
                IF changed <> '{last_sign_in_at}' THEN
                    INSERT INTO ref.sync_logs (user_id, source, sync_type, success, changed_fields)
                    VALUES (NEW.id, 'supabase_auth', 'updated', true, changed);
                END IF;
            END IF;
        END IF;
    EXCEPTION WHEN OTHERS THEN
        INSERT INTO ref.sync_logs (user_id, source, sync_type, success, error_message, sqlstate)
        VALUES (NEW.id, 'supabase_auth', 'failed', false, SQLERRM, SQLSTATE);
    END;
    RETURN NULL;
END;
$$;
CREATE TRIGGER ref_sync_insert AFTER INSERT ON auth.users FOR EACH ROW EXECUTE FUNCTION ref.on_auth_user();
CREATE TRIGGER ref_sync_update AFTER UPDATE OF email, phone, email_confirmed_at, phone_confirmed_at,
    last_sign_in_at, banned_until, is_anonymous, is_sso_user, deleted_at, raw_user_meta_data
    ON auth.users FOR EACH ROW
    WHEN ((OLD.email, OLD.email_confirmed_at, OLD.last_sign_in_at, OLD.banned_until, OLD.deleted_at)
          IS DISTINCT FROM (NEW.email, NEW.email_confirmed_at, NEW.last_sign_in_at, NEW.banned_until, NEW.deleted_at))
    EXECUTE FUNCTION ref.on_auth_user();

-- The PL/pgSQL counterpart of nura_sync_user: validate a little, upsert, log, under a savepoint.
CREATE FUNCTION ref.sync_user(payload jsonb) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    uid uuid;
    old_row ref.users;
    new_row ref.users;
    kind text;
BEGIN
    IF payload IS NULL OR jsonb_typeof(payload) <> 'object' THEN
        RETURN jsonb_build_object('success', false, 'error', jsonb_build_object('code', 'invalid_payload', 'field', 'payload'));
    END IF;
    uid := (payload ->> 'id')::uuid;
    BEGIN
        SELECT * INTO old_row FROM ref.users WHERE id = uid FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO ref.users (id, email, full_name, bio) VALUES (uid, payload ->> 'email',
                payload ->> 'full_name', payload ->> 'bio') RETURNING * INTO new_row;
            kind := 'created';
        ELSE
            UPDATE ref.users SET full_name = coalesce(payload ->> 'full_name', full_name),
                bio = coalesce(payload ->> 'bio', bio), updated_at = now()
            WHERE id = uid RETURNING * INTO new_row;
            kind := CASE WHEN (old_row.full_name, old_row.bio) IS DISTINCT FROM (new_row.full_name, new_row.bio)
                         THEN 'updated' ELSE 'unchanged' END;
        END IF;
        INSERT INTO ref.sync_logs (user_id, source, sync_type, success, before_data, after_data)
        VALUES (uid, 'backend_api', kind, true,
                jsonb_build_object('full_name', old_row.full_name, 'bio', old_row.bio),
                jsonb_build_object('full_name', new_row.full_name, 'bio', new_row.bio));
        RETURN jsonb_build_object('success', true, 'sync_type', kind, 'user', to_jsonb(new_row));
    EXCEPTION WHEN OTHERS THEN
        INSERT INTO ref.sync_logs (user_id, source, sync_type, success, error_message, sqlstate)
        VALUES (uid, 'backend_api', 'failed', false, SQLERRM, SQLSTATE);
        RETURN jsonb_build_object('success', false, 'error', jsonb_build_object('code', 'internal', 'message', SQLERRM));
    END;
END;
$$;
