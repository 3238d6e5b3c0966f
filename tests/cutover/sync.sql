-- New code: a GoTrue signup, then nura_sync_user of that user.
SELECT auth.gotrue_signup('auth-' || gen_random_uuid() || '@example.com', NULL, '{"name": "New"}') AS id \gset
SELECT nura_sync_user(jsonb_build_object('id', ':id', 'full_name', 'Synced')) IS NOT NULL;
