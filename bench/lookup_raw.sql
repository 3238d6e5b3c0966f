\set i random(1, 20000)
SELECT u.* FROM public.users u WHERE u.id = (SELECT id FROM public.bench_ids WHERE n = :i);
