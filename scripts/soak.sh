#!/usr/bin/env bash
# Many clients for a long time through a running pgmulti, with its memory sampled: the
# check that nothing leaks or stalls under a steady load (docs/operations.md).
#
#   scripts/soak.sh PORT PID [CLIENTS] [SECONDS] [RATE]
#
# PORT: where pgmulti listens (127.0.0.1, user postgres, database postgres, pgbench tables
# loaded: pgbench -i through it). PID: pgmulti's process (e.g. pgrep -f my.conf).
# CLIENTS (default 1000) pgbench select-only clients held open for SECONDS (default 600),
# at RATE transactions per second in all (default 2000; a shared 2-core machine cannot
# serve 1,000 clients at full speed, and the subject is holding them, not throughput).
# Prints pgmulti's resident memory at the start, then every tenth of the run, and
# pgbench's summary (processed, failed) at the end. Exits non-zero if any transaction
# failed or pgbench did not finish.
set -euo pipefail

port=${1:?usage: soak.sh PORT PID [CLIENTS] [SECONDS] [RATE]}
pid=${2:?usage: soak.sh PORT PID [CLIENTS] [SECONDS] [RATE]}
clients=${3:-1000}
seconds=${4:-600}
rate=${5:-2000}

rss() { awk '/^VmRSS/ {printf "%d MB", $2 / 1024}' "/proc/$pid/status"; }

out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "soak: $clients clients for $seconds s at $rate tps through 127.0.0.1:$port (pgmulti pid $pid)"
echo "  0 s: RSS $(rss)"
pgbench -n -S -h 127.0.0.1 -p "$port" -U postgres -c "$clients" -j 2 -T "$seconds" -R "$rate" \
    postgres >"$out" 2>&1 &
bench=$!
step=$((seconds / 10))
for i in $(seq 1 10); do
    sleep "$step"
    kill -0 "$bench" 2>/dev/null || break
    echo "  $((i * step)) s: RSS $(rss)"
done
status=0
wait "$bench" || status=$?
grep -E "^(number of (transactions actually processed|failed transactions)|latency average|tps)" "$out" \
    | sed 's/^/  /'
failed=$(awk '/^number of failed transactions/ {print $5}' "$out")
if [ "$status" -ne 0 ] || [ "${failed:-0}" != 0 ]; then
    echo "soak: pgbench exit $status, failed ${failed:-?}" >&2
    tail -5 "$out" >&2
    exit 1
fi
echo "  after: RSS $(rss)"
