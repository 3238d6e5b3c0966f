-- GoTrue-style update of one of the first :users shared auth users (the trigger path).
\set i random(1, :users)
UPDATE auth.users SET email_confirmed_at = clock_timestamp(),
    raw_user_meta_data = jsonb_build_object('name', 'User ' || :i), updated_at = now()
WHERE id = ('00000000-0000-4000-8000-' || lpad(:i::text, 12, '0'))::uuid;
