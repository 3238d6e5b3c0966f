-- A new GoTrue signup.
SELECT auth.gotrue_signup('new-' || gen_random_uuid() || '@example.com', NULL, '{"name": "New"}');
