-- The most frequent auth write: a sign-in of an existing user (as supabase_auth_admin).
\set i random(1, 20000)
UPDATE "users" AS users SET last_sign_in_at = now(), updated_at = now()
WHERE users.id = (SELECT id FROM public.bench_ids WHERE n = :i);
