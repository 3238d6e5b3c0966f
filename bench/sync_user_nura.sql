\set i random(1, 20000)
SELECT public.nura_sync_user(pg_catalog.jsonb_build_object(
    'id', (SELECT id FROM public.bench_ids WHERE n = :i), 'bio', 'bio ' || :i || ' ' || random()));
