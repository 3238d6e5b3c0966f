-- All clients create the same new user at the same moment (the id changes every 20 ms).
SELECT nura_sync_user(jsonb_build_object(
    'id', '30000000-0000-4000-8000-' ||
          lpad((floor(extract(epoch FROM clock_timestamp()) * 50)::bigint % 1000000000000)::text, 12, '0'),
    'full_name', 'Racer'));
