\set i random(1, 20000)
SELECT public.nura_get_service_profile((SELECT id FROM public.bench_ids WHERE n = :i), 'chat');
