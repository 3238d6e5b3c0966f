-- nura_update_profile on the shared ids (as a backend: source backend_api).
\set i random(1, :users)
SELECT nura_update_profile(('00000000-0000-4000-8000-' || lpad(:i::text, 12, '0'))::uuid,
    jsonb_build_object('display_name', 'Name ' || floor(random() * 1000000)::text));
