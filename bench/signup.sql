-- GoTrue's sign-up INSERT: all 33 writable columns. pgbench connects as supabase_auth_admin,
-- whose role setting makes search_path = auth, as GoTrue's connection does.
INSERT INTO "users" (instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
    invited_at, confirmation_token, confirmation_sent_at, recovery_token, recovery_sent_at,
    email_change_token_new, email_change, email_change_sent_at, last_sign_in_at,
    raw_app_meta_data, raw_user_meta_data, created_at, updated_at, phone, phone_confirmed_at,
    phone_change, phone_change_token, phone_change_sent_at, email_change_token_current,
    email_change_confirm_status, banned_until, reauthentication_token, reauthentication_sent_at,
    is_sso_user, deleted_at, is_anonymous)
SELECT '00000000-0000-0000-0000-000000000000', g, 'authenticated', '', 'u' || g || '@example.com',
    '$2a$10$abcdefghijklmnopqrstuv', NULL, NULL, '', NULL, '', NULL, '', '', NULL, NULL,
    '{"provider": "email", "providers": ["email"]}',
    '{"full_name": "Bench User", "avatar_url": "https://img.example/u.png"}', now(), now(),
    NULL, NULL, '', '', NULL, '', 0, NULL, '', NULL, false, NULL, false
FROM (SELECT gen_random_uuid() AS g) s;
