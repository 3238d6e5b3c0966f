-- nura_sync_user on the same ids the trigger is writing.
\set i random(1, :users)
SELECT nura_sync_user(jsonb_build_object(
    'id', '00000000-0000-4000-8000-' || lpad(:i::text, 12, '0'),
    'bio', 'bio ' || floor(random() * 1000000)::text));
