#!/usr/bin/env bash
# Chaos run: pgbench TPC-B through pgmulti (mode = replication, 3 local nodes) while a node
# or pgmulti itself is killed or stopped, then checks what a DBA would check.
#
#   scripts/chaos.sh [SCENARIO...]      default: every scenario below
#
# Scenarios (each on fresh nodes, pgbench -c 8 -j 2 -T $SECONDS --max-tries 10, fault at 10 s):
#   replica-kill-sync  replica-kill-async   kill -9 of a replica's postmaster
#   lead-kill-sync     lead-kill-async      kill -9 of the lead's postmaster
#   replica-stop-sync  replica-stop-async   SIGSTOP of a replica (all its processes) for 20 s
#   pgmulti-kill-2pc                        kill -9 of pgmulti with commit_protocol = two_phase,
#                                           restarted at once (pgbench's clients end there)
# One line per scenario:
#   NAME: ok|FAILED  processed=N failed=N history=N longest_stall=Ns (bound Ns) prepared=N nodes=...
# Checks: no permanent stall, the longest stall (seconds with no transaction, from pgbench -P 1)
# within health_check_period + health_check_timeout + 1 s, the surviving nodes identical,
# pgbench_history on them = acknowledged transactions (for pgmulti-kill: at least those, at
# most 8 more — commits the log decided but nobody was told of), nothing in pg_prepared_xacts.
# Exit status 0 only when every scenario is ok. Needs PostgreSQL 15 in /usr/lib/postgresql/15/bin;
# runs as any user (as root the nodes run as `postgres`). Work files: $CHAOS_DIR (default a
# fresh directory in /tmp), kept for a look afterwards.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PG_BIN=/usr/lib/postgresql/15/bin
SECONDS_PER=${SECONDS_PER:-40}
FAULT_AT=10
PERIOD=5
TIMEOUT=3
DIR=${CHAOS_DIR:-$(mktemp -d /tmp/pgmulti-chaos.XXXXXX)}
mkdir -p "$DIR" && chmod 777 "$DIR"
PSQL="psql -h 127.0.0.1 -U postgres -X -q -At"

as_pg() { if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }
free_port() {
    perl -MIO::Socket::INET -e \
        'print IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1", LocalPort => 0, Proto => "tcp")->sockport'
}

BIN=${PGMULTI_BIN:-}
if [ -z "$BIN" ]; then
    (cd "$REPO" && cargo build --release -q) || exit 1
    BIN=$REPO/target/release/pgmulti
fi

# Fresh nodes 0..2 in $DIR/$1: ports in PORTS[].
start_nodes() {
    local run=$1 i
    PORTS=()
    for i in 0 1 2; do
        local data=$DIR/$run/n$i port
        port=$(free_port)
        PORTS+=("$port")
        mkdir -p "$DIR/$run" && chmod 777 "$DIR/$run"
        as_pg "$PG_BIN/initdb" -D "$data" -U postgres -A trust >/dev/null || return 1
        cat >>"$data/postgresql.conf" <<EOF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR/$run'
fsync = off
max_prepared_transactions = 20
EOF
        as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$data.log" -w start >/dev/null || return 1
    done
}

stop_nodes() {
    local run=$1 i
    for i in 0 1 2; do
        kill -CONT $(node_pids "$run" "$i") 2>/dev/null
        as_pg "$PG_BIN/pg_ctl" -D "$DIR/$run/n$i" -m immediate stop >/dev/null 2>&1
    done
}

# The postmaster of node $2 and its children.
node_pids() {
    local pm
    pm=$(head -1 "$DIR/$1/n$2/postmaster.pid" 2>/dev/null) || return 0
    echo "$pm" $(pgrep -P "$pm")
}

start_pgmulti() {
    local run=$1 extra=$2
    cat >"$DIR/$run/pgmulti.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PM_PORT
unix_socket_directories = '$DIR/$run'
mode = replication
backend_hostname0 = '127.0.0.1'
backend_port0 = ${PORTS[0]}
backend_hostname1 = '127.0.0.1'
backend_port1 = ${PORTS[1]}
backend_hostname2 = '127.0.0.1'
backend_port2 = ${PORTS[2]}
client_auth = trust
admin_users = 'postgres'
health_check_period = ${PERIOD}s
health_check_timeout = ${TIMEOUT}s
health_check_max_retries = 0
log_file = '$DIR/$run/pgmulti.log'
$extra
EOF
    "$BIN" -f "$DIR/$run/pgmulti.conf" >>"$DIR/$run/pgmulti.out" 2>&1 &
    PM_PID=$!
    for _ in $(seq 1 50); do $PSQL -p "$PM_PORT" -c "select 1" postgres >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}

scenario() {
    local name=$1 fault=${1%-*} ack=${1##*-} extra victim
    case "$ack" in
        2pc) extra=$'write_ack = sync\ncommit_protocol = two_phase\ntwo_phase_log = '"'$DIR/$name/decisions.log'" ;;
        *) extra="write_ack = $ack" ;;
    esac
    start_nodes "$name" || { echo "$name: FAILED (nodes did not start)"; return 1; }
    PM_PORT=$(free_port)
    start_pgmulti "$name" "$extra" || { echo "$name: FAILED (pgmulti did not start)"; stop_nodes "$name"; return 1; }
    pgbench -h 127.0.0.1 -p "$PM_PORT" -U postgres -i -s 1 -q postgres >"$DIR/$name/init.out" 2>&1
    pgbench -h 127.0.0.1 -p "$PM_PORT" -U postgres -n -c 8 -j 2 -T "$SECONDS_PER" -P 1 \
        --max-tries 10 postgres >"$DIR/$name/pgbench.out" 2>"$DIR/$name/pgbench.err" &
    local bench=$!
    sleep "$FAULT_AT"
    case "$fault" in
        replica-kill) victim=2; kill -9 $(head -1 "$DIR/$name/n2/postmaster.pid") ;;
        lead-kill) victim=0; kill -9 $(head -1 "$DIR/$name/n0/postmaster.pid") ;;
        replica-stop) victim=""; kill -STOP $(node_pids "$name" 2); sleep 20; kill -CONT $(node_pids "$name" 2) ;;
        pgmulti-kill) victim=""; kill -9 "$PM_PID"; sleep 0.2
            start_pgmulti "$name" "$extra" || echo "$name: pgmulti did not restart" ;;
    esac
    wait "$bench"
    sleep 1
    local out err processed failed stall live sums ok=ok prepared=0 i
    out=$(cat "$DIR/$name/pgbench.out"; cat "$DIR/$name/pgbench.err")
    processed=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' | head -1)
    failed=$(echo "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' | head -1)
    # Longest run of progress seconds without a transaction; a run still going at the end of
    # the report is a permanent stall (pgbench-killed scenarios end early instead).
    stall=$(echo "$out" | awk '/^progress:/ { if ($4 + 0 < 0.5) { run++; if (run > max) max = run } else run = 0 } END { print max + 0 }')
    local bound=$((PERIOD + TIMEOUT + 1))
    live=$($PSQL -p "$PM_PORT" -d pgmulti -c "SHOW NODES" 2>/dev/null | awk -F'|' '$4 == "up" {print $1}')
    sums=""
    for i in $live; do
        sums="$sums|$($PSQL -p "${PORTS[$i]}" -c "select (select sum(abalance) from pgbench_accounts) || ' ' || (select sum(tbalance) from pgbench_tellers) || ' ' || (select sum(bbalance) from pgbench_branches) || ' ' || (select count(*) from pgbench_history)" postgres 2>&1)"
    done
    for i in 0 1 2; do
        local n
        n=$($PSQL -p "${PORTS[$i]}" -c "select count(*) from pg_prepared_xacts" postgres 2>/dev/null) && prepared=$((prepared + n))
    done
    local history
    history=$(echo "$sums" | tr '|' '\n' | grep -v '^$' | head -1 | awk '{print $4}')
    [ "$(echo "$sums" | tr '|' '\n' | grep -v '^$' | sort -u | wc -l)" = 1 ] || ok=FAILED
    [ -n "$processed" ] && [ "${processed:-0}" -gt 0 ] || ok=FAILED
    if [ "$fault" = pgmulti-kill ]; then
        [ "${history:-0}" -ge "${processed:-0}" ] && [ "${history:-0}" -le $((${processed:-0} + 8)) ] || ok=FAILED
    else
        [ "${history:-x}" = "${processed:-y}" ] || ok=FAILED
        [ "$stall" -le "$bound" ] || ok=FAILED
        # A victim that was killed must be detached; the others up.
        if [ -n "$victim" ] && echo "$live" | grep -qx "$victim"; then ok=FAILED; fi
    fi
    [ "$prepared" = 0 ] || ok=FAILED
    echo "$name: $ok  processed=${processed:-?} failed=${failed:-?} history=${history:-?} longest_stall=${stall}s (bound ${bound}s) prepared=$prepared nodes_up=$(echo $live | tr ' ' ',')"
    kill "$PM_PID" 2>/dev/null
    wait "$PM_PID" 2>/dev/null
    stop_nodes "$name"
    [ "$ok" = ok ]
}

ALL="replica-kill-sync replica-kill-async lead-kill-sync lead-kill-async replica-stop-sync replica-stop-async pgmulti-kill-2pc"
bad=0
for s in ${@:-$ALL}; do
    scenario "$s" || bad=1
done
echo "work files: $DIR"
exit $bad
