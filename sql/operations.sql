-- nura_sync_stats (SPEC §4.4): attempts, success rate and latency percentiles per source, from
-- the sync log. Sign-ins are only in the log with nura_users.log_sign_ins = on.
CREATE FUNCTION @extschema@.nura_sync_stats(since interval DEFAULT '24 hours')
RETURNS TABLE (source text, attempts bigint, succeeded bigint, failed bigint,
               success_rate float8, avg_ms float8, p50_ms float8, p95_ms float8, p99_ms float8)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT l.source,
           pg_catalog.count(*),
           pg_catalog.count(*) FILTER (WHERE l.success),
           pg_catalog.count(*) FILTER (WHERE NOT l.success),
           (pg_catalog.count(*) FILTER (WHERE l.success))::float8 OPERATOR(pg_catalog./) pg_catalog.count(*)::float8,
           (pg_catalog.avg(l.duration_us))::float8 OPERATOR(pg_catalog./) 1000.0::float8,
           pg_catalog.percentile_cont(0.5) WITHIN GROUP (ORDER BY l.duration_us) OPERATOR(pg_catalog./) 1000.0::float8,
           pg_catalog.percentile_cont(0.95) WITHIN GROUP (ORDER BY l.duration_us) OPERATOR(pg_catalog./) 1000.0::float8,
           pg_catalog.percentile_cont(0.99) WITHIN GROUP (ORDER BY l.duration_us) OPERATOR(pg_catalog./) 1000.0::float8
    FROM @extschema@.user_sync_logs l
    -- now() - since, for any interval: beyond 6,000 years back every row counts, beyond 200,000
    -- years ahead none (where the subtraction itself would fail with 22008).
    WHERE l.created_at OPERATOR(pg_catalog.>=) (CASE
        WHEN since OPERATOR(pg_catalog.>) '6000 years'::pg_catalog.interval THEN '-infinity'::pg_catalog.timestamptz
        WHEN since OPERATOR(pg_catalog.<) '-200000 years'::pg_catalog.interval THEN 'infinity'::pg_catalog.timestamptz
        ELSE pg_catalog.now() OPERATOR(pg_catalog.-) since END)
    GROUP BY l.source
    ORDER BY l.source
$$;
