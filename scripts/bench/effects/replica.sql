-- What a replica runs: the keyed statement in a data-modifying CTE that sums the changed rows'
-- hashes and compares the count and sum with the lead's (here with a sum that never matches
-- and an answer instead of an error, so the run goes on).
\set aid random(1, 100000 * :scale)
WITH pgm_w AS (UPDATE pgbench_accounts AS pgm_t SET "abalance" = pgm_t.abalance + 1 WHERE pgm_t."aid" = CAST(:aid AS integer) RETURNING md5(ROW(pgm_t.*)::text) AS h) SELECT CASE WHEN count(*) = 1 AND coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint), 0) = 1 THEN 1 ELSE 0 END FROM pgm_w;
