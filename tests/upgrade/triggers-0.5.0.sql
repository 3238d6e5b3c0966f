-- The UPDATE trigger on auth.users as the 0.3.0 to 0.5.0 libraries attached it: its column list
-- lacks id (0.6.0's also fires for a change of auth.users.id). The upgrade test puts it back after
-- CREATE EXTENSION ... VERSION '0.3.0' / '0.4.0' / '0.5.0', because the library it runs is the
-- current one.
DROP TRIGGER nura_users_sync_update ON auth.users;
CREATE TRIGGER nura_users_sync_update AFTER UPDATE OF email, phone, email_confirmed_at,
    phone_confirmed_at, last_sign_in_at, banned_until, is_anonymous, is_sso_user, deleted_at,
    raw_user_meta_data ON auth.users FOR EACH ROW
    EXECUTE FUNCTION nura_auth_user_sync();
