-- A hard delete of one of the new signups.
DELETE FROM auth.users WHERE id = (SELECT id FROM auth.users WHERE email LIKE 'new-%' LIMIT 1 FOR UPDATE SKIP LOCKED);
