-- 40 users without auth accounts race for 5 addresses (in varying letter case).
\set j random(1, 40)
\set k random(1, 5)
SELECT nura_sync_user(jsonb_build_object(
    'id', '10000000-0000-4000-8000-' || lpad(:j::text, 12, '0'),
    'email', CASE WHEN random() < 0.5 THEN 'Shared' ELSE 'shared' END || :k || '@example.com'));
