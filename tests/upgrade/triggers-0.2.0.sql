-- The sync triggers on auth.users as the 0.1.0 and 0.2.0 libraries attached them: two UPDATE
-- triggers with WHEN clauses (0.3.0 has one without). The upgrade test puts them back after
-- CREATE EXTENSION ... VERSION '0.1.0' / '0.2.0', because the library it runs is the current one.
DROP TRIGGER nura_users_sync_update ON auth.users;
CREATE TRIGGER nura_users_sync_update AFTER UPDATE OF email, phone, email_confirmed_at,
    phone_confirmed_at, last_sign_in_at, banned_until, is_anonymous, is_sso_user, deleted_at,
    raw_user_meta_data ON auth.users FOR EACH ROW
    WHEN ((OLD.email, OLD.phone, OLD.email_confirmed_at, OLD.phone_confirmed_at, OLD.banned_until,
           OLD.is_anonymous, OLD.is_sso_user, OLD.deleted_at, OLD.raw_user_meta_data)
          IS DISTINCT FROM
          (NEW.email, NEW.phone, NEW.email_confirmed_at, NEW.phone_confirmed_at, NEW.banned_until,
           NEW.is_anonymous, NEW.is_sso_user, NEW.deleted_at, NEW.raw_user_meta_data))
    EXECUTE FUNCTION nura_auth_user_sync();
CREATE TRIGGER nura_users_sync_sign_in AFTER UPDATE OF last_sign_in_at ON auth.users FOR EACH ROW
    WHEN (OLD.last_sign_in_at IS DISTINCT FROM NEW.last_sign_in_at
          AND (OLD.email, OLD.phone, OLD.email_confirmed_at, OLD.phone_confirmed_at,
               OLD.banned_until, OLD.is_anonymous, OLD.is_sso_user, OLD.deleted_at,
               OLD.raw_user_meta_data)
              IS NOT DISTINCT FROM
              (NEW.email, NEW.phone, NEW.email_confirmed_at, NEW.phone_confirmed_at,
               NEW.banned_until, NEW.is_anonymous, NEW.is_sso_user, NEW.deleted_at,
               NEW.raw_user_meta_data))
    EXECUTE FUNCTION nura_auth_user_sync();
