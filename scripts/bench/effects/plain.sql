-- A keyed UPDATE as the client wrote it: what every node runs without effect checks.
\set aid random(1, 100000 * :scale)
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;
