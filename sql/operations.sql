-- now() - age, the time from which on log rows count, for any interval: where the subtraction
-- leaves the range of timestamptz (22008), -infinity for an age far back (every row counts) and
-- infinity for one far ahead (none does). nura_sync_stats and nura_purge_sync_logs use it.
CREATE FUNCTION @extschema@.nura_log_cutoff(age interval) RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN pg_catalog.now() OPERATOR(pg_catalog.-) age;
EXCEPTION WHEN datetime_field_overflow THEN
    RETURN CASE WHEN pg_catalog.date_part('epoch', age) OPERATOR(pg_catalog.>) 0
                THEN '-infinity'::pg_catalog.timestamptz ELSE 'infinity'::pg_catalog.timestamptz END;
END
$$;

-- nura_sync_stats (docs/operations.md): attempts, success rate and latency percentiles per source, from
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
    WHERE l.created_at OPERATOR(pg_catalog.>=) (SELECT @extschema@.nura_log_cutoff(since))
    GROUP BY l.source
    ORDER BY l.source
$$;
