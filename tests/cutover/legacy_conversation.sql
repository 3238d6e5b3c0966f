-- Old code starts a conversation with a chat id (of a row no script deletes; one the setup
-- deleted as unmigratable gives none).
\set i random(1, 400)
INSERT INTO app.conversations (user_id, body)
SELECT c.id, c.id::text FROM chat_users c WHERE c.id = md5('chat' || :i)::uuid;
