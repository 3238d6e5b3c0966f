-- nura_record_activity on the shared ids (streak and last_active_at).
\set i random(1, :users)
SELECT nura_record_activity(('00000000-0000-4000-8000-' || lpad(:i::text, 12, '0'))::uuid);
