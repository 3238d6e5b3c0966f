-- The most frequent auth write: a sign-in of an existing user.
\set i random(1, 20000)
SET ROLE supabase_auth_admin;
SET search_path = auth;
UPDATE "users" AS users SET last_sign_in_at = now(), updated_at = now()
WHERE users.id = (SELECT id FROM public.bench_ids WHERE n = :i);
RESET search_path;
RESET ROLE;
