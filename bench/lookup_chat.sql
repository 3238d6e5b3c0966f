\set i random(1, 20000)
SELECT public.nura_user_for_chat((SELECT id FROM public.bench_ids WHERE n = :i));
