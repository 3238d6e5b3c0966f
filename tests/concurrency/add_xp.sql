-- Concurrent xp increments on one user.
SELECT nura_add_xp('00000000-0000-4000-8000-000000000001', 1);
