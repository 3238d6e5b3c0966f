-- Old code deletes a generated chat row (most are gone after a while: then nothing happens).
\set i random(401, 800)
DELETE FROM chat_users WHERE id = md5('chat' || :i)::uuid;
