\set i random(1, 20000)
SELECT ref.sync_user(pg_catalog.jsonb_build_object(
    'id', (SELECT id FROM public.bench_ids WHERE n = :i), 'bio', 'bio ' || :i || ' ' || random()));
