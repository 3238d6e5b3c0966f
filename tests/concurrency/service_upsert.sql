-- A service profile upsert on the shared ids: chat preferences, merged into the profile.
\set i random(1, :users)
SELECT nura_upsert_service_profile(('00000000-0000-4000-8000-' || lpad(:i::text, 12, '0'))::uuid,
    'chat', jsonb_build_object('theme', 'theme ' || floor(random() * 1000)::text));
