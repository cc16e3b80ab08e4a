#!/usr/bin/env bash
# Run one fuzz target (or all, one after the other) for a fixed number of executions.
#   ./run.sh [TARGET...]          default: every target, 10,000,000 executions each
#   RUNS=1000000 ./run.sh sql_request
#   MAX_TIME=720 ./run.sh extended     (stop after 720 s instead, whichever comes first)
#   SANITIZER=none ./run.sh            (no AddressSanitizer: 2-4x the executions a second;
#                                       debug assertions and overflow checks stay on)
# The first run writes the seed corpus (seeds.py). Dictionaries are passed where one exists.
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${RUNS:-10000000}
MAX_TIME=${MAX_TIME:-0}
SANITIZER=${SANITIZER:-address}
python3 seeds.py >/dev/null   # (re)writes only the seed-N files
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(framing frontend backend describe startup scram_server scram_client userlist config
             sql_classify sql_request effects extended metrics_http)
fi
for t in "${targets[@]}"; do
    dict=()
    case "$t" in
        sql_*|effects|extended) dict=(-dict=dicts/sql.dict) ;;
        scram_*) dict=(-dict=dicts/scram.dict) ;;
        config) dict=(-dict=dicts/config.dict) ;;
    esac
    mkdir -p "corpus/$t"
    cargo +nightly fuzz run -s "$SANITIZER" "$t" "corpus/$t" -- -runs="$RUNS" -max_total_time="$MAX_TIME" \
        -print_final_stats=1 "${dict[@]}"
done
