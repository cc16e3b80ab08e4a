-- What the lead runs for an effect-checked write (replication::effects): the statement with
-- RETURNING of the key and an md5 of each changed row's image.
\set aid random(1, 100000 * :scale)
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid RETURNING pgbench_accounts."aid"::text, md5(ROW(pgbench_accounts.*)::text);
