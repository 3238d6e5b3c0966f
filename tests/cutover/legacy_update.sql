-- Old code edits a generated chat row (its name; now and then its address).
\set i random(1, 400)
UPDATE chat_users SET full_name = 'Edited ' || :i || ' ' || random(),
       email = CASE WHEN random() < 0.1 THEN 'moved-' || gen_random_uuid() || '@example.com' ELSE email END
WHERE id = md5('chat' || :i)::uuid;
