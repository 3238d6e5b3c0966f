-- New code starts a conversation with a user's id: one that is a chat id too (of a row no
-- script deletes), so that it is valid whichever way the key points at the moment.
\set i random(1, 400)
INSERT INTO app.conversations (user_id, body)
SELECT a.user_id, 'new' FROM user_id_aliases a
WHERE a.source = 'chat_users' AND a.alias_id = md5('chat' || :i)::uuid AND a.user_id = a.alias_id;
