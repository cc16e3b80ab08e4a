#!/usr/bin/env bash
# pgmulti benchmark: pgmulti against what users would pick instead, in one command.
#
#   scripts/bench.sh [--quick] [--out FILE] [--keep] [--dir DIR] [--rev REV] [--base REV]
#
#   --quick      scale 10, 2 rounds of 1 s runs, clients 8 and 64, 1,000 idle clients for the
#                memory test: 3 to 4 minutes on 2 cores. Default (full): scale 50, 3 rounds x
#                10 s, clients 1 8 64 256, 5,000 idle clients: about 75 minutes on 2 cores
#                (3 rounds x 5 s: 42 minutes). The streaming targets add about 40% to both.
#   --out FILE   where the Markdown report goes (default docs/benchmarks.md); the chart is
#                written next to it as <name>-select.svg (docs/benchmarks-select.svg)
#   --keep       keep the work folder (node data, configs, logs, raw results)
#   --dir DIR    work folder (default: a new folder under ${TMPDIR:-/tmp}); must not exist
#   --rev REV    benchmark a committed revision (git archive + cargo build) instead of the
#                working tree
#   --base REV   also run replication sync (TPC-B) with the pgmulti of revision REV, side by
#                side with the benchmarked one in the same rounds: the report gives the ratio
#
# After the rounds, the concurrent-write workloads of scripts/bench/concurrency/ (queue
# claims, predicate deletes, counters by subquery, …) run through every replicating target
# and a direct connection (pgbench -c 8 --max-tries 10, BENCH_CW_DURATION seconds each,
# default 10, quick 3); the report says per workload and target whether the nodes ended
# identical, diverged, a node was detached, or pgbench hung.
#
# Streaming targets (stream, stream_noryw, pgpool_stream) get a second set of nodes: a
# PostgreSQL primary and 2 hot standbys made from it with pg_basebackup -R (the settings of
# the other nodes), pgbench data loaded on the primary only and replayed by the standbys.
# pgmulti mode = streaming (read_your_writes on, and off) and pgpool-II's streaming
# replication mode run over it; after every TPC-B run the script waits for the standbys to
# replay the primary's WAL and compares the tables on the 3 nodes. For every pgmulti and
# pgpool-II target the reads each node served in a run come from the proxy's counters (SHOW
# NODES, SHOW POOL_NODES). The bed is made only when a streaming target runs; the streaming
# comparison alone, beside the replication targets:
#   BENCH_TARGETS="direct repl_sync pgpool stream stream_noryw pgpool_stream" scripts/bench.sh --quick
#
# Environment overrides: BENCH_SCALE, BENCH_ROUNDS, BENCH_DURATION (seconds), BENCH_CLIENTS
# ("8 64"), BENCH_MEM_CLIENTS, BENCH_WORKLOADS ("select select_prep tpcb tpcb_prep connect"),
# BENCH_TARGETS (names from the target list below, e.g. "direct relay_info"), PGMULTI_BIN (use
# this binary instead of building one).
#
# What it does, all by itself: installs Debian's pgbouncer and pgpool2 if missing (apt-get, when
# root; an ordinary user must have them installed already), builds pgmulti (cargo build
# --release), creates 3 fresh PostgreSQL 15 nodes in the work folder (as user `postgres` when
# root), loads pgbench data, starts every target on free 127.0.0.1 ports, then runs every
# workload x client count x target, alternating the targets run by run and repeating it all for
# several rounds, so that drift on a shared machine hits every target alike. Medians over the
# rounds go to the report. Everything it started is stopped on exit.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
HERE=$REPO/scripts/bench
PG_BIN=/usr/lib/postgresql/15/bin
THREADS=2
NODES=3
STREAM_NODES=3      # the streaming bed: stream0 the primary, stream1 and stream2 its standbys
# Streaming targets: how often pgmulti's health checks and pgpool-II's sr_check read the
# nodes' WAL positions (both route reads by them), and the lag past which a standby serves
# no reads (pgmulti's max_standby_lag default; pgpool-II's delay_threshold).
STREAM_CHECK_PERIOD=1
STREAM_MAX_LAG=$((16 << 20))

QUICK=0
KEEP=0
OUT=$REPO/docs/benchmarks.md
WORK=
REV=
BASE=
ORIG_ARGS=("$@")
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1 ;;
        --keep) KEEP=1 ;;
        --out) OUT=$2; shift ;;
        --out=*) OUT=${1#--out=} ;;
        --dir) WORK=$2; shift ;;
        --rev) REV=$2; shift ;;
        --rev=*) REV=${1#--rev=} ;;
        --base) BASE=$2; shift ;;
        --base=*) BASE=${1#--base=} ;;
        --dir=*) WORK=${1#--dir=} ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
SVG=${OUT%.md}-select.svg

if [ "$QUICK" = 1 ]; then
    SCALE=${BENCH_SCALE:-10} ROUNDS=${BENCH_ROUNDS:-2} DURATION=${BENCH_DURATION:-1}
    CLIENTS=${BENCH_CLIENTS:-"8 64"} MEM_CLIENTS=${BENCH_MEM_CLIENTS:-1000}
    SHARED_BUFFERS=128MB CW_DURATION=${BENCH_CW_DURATION:-3}
else
    SCALE=${BENCH_SCALE:-50} ROUNDS=${BENCH_ROUNDS:-3} DURATION=${BENCH_DURATION:-10}
    CLIENTS=${BENCH_CLIENTS:-"1 8 64 256"} MEM_CLIENTS=${BENCH_MEM_CLIENTS:-5000}
    SHARED_BUFFERS=256MB CW_DURATION=${BENCH_CW_DURATION:-10}
fi
WORKLOADS=${BENCH_WORKLOADS:-"select select_prep tpcb tpcb_prep connect"}
MAX_CLIENTS=$(printf '%s\n' $CLIENTS | sort -n | tail -1)

is_root() { [ "$(id -u)" -eq 0 ]; }
say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Targets. One line each:
#   add_target NAME GROUP REPLICATED WORKLOADS LABEL START-FUNCTION [ARGS...]
# GROUP: ref (direct connection), peer (what users would pick instead), pgmulti, or
# streaming (the primary + standbys bed: pgmulti mode = streaming and pgpool-II's streaming
# replication mode, compared with each other in a section of their own).
# REPLICATED: yes = writes go to all 3 nodes; every table is compared across the nodes after
# each TPC-B run. stream = writes go to the streaming primary and PostgreSQL streams them to
# the standbys; after each TPC-B run the standbys are waited for and the tables compared.
# WORKLOADS: which of select select_prep tpcb tpcb_prep connect it runs.
# A target whose start function fails (pgmulti --check refusing the config, for instance) is
# reported as skipped with the reason, so the pgmulti replication lines below light up on
# their own once mode = replication exists.
# ---------------------------------------------------------------------------------------------
TARGET_NAMES=()
declare -A T_GROUP T_REPL T_WORK T_LABEL T_START T_PORT T_DB T_SKIP T_PID T_NOTE T_BIN T_COUNTERS
add_target() {
    local name=$1
    TARGET_NAMES+=("$name")
    T_GROUP[$name]=$2 T_REPL[$name]=$3 T_WORK[$name]=$4 T_LABEL[$name]=$5
    shift 5
    T_START[$name]="$*"
}
declare -A T_NA
na_note() { T_NA[$1]="${T_NA[$1]:-}$2=$3;"; }
define_targets() {
    add_target direct      ref     no  "select select_prep tpcb tpcb_prep connect" "direct → node 0" start_direct
    add_target pgb_tx      peer    no  "select connect"                            "PgBouncer transaction pool → node 0" start_pgbouncer transaction
    add_target pgb_sess    peer    no  "select select_prep connect"                "PgBouncer session pool → node 0" start_pgbouncer session
    add_target pgpool      peer    yes "select select_prep tpcb tpcb_prep connect" "pgpool-II native replication, 3 nodes" start_pgpool
    add_target relay_info  pgmulti no  "select select_prep tpcb tpcb_prep connect" "pgmulti relay → node 0 (log info)" start_pgmulti relay info
    add_target relay_tx    pgmulti no  "select connect"                            "pgmulti relay, transaction pooling → node 0" start_pgmulti relay_tx info
    add_target relay_trace pgmulti no  "select select_prep connect"                "pgmulti relay → node 0 (log trace)" start_pgmulti relay trace
    add_target repl_sync   pgmulti yes "select select_prep tpcb tpcb_prep connect" "pgmulti replication sync, 3 nodes" start_pgmulti replication info sync
    # Right after repl_sync, so that every round runs the two back to back (a run right
    # after the two-phase target, for one, is slowed by its I/O).
    if [ -n "$PGMULTI_BASE" ]; then
        add_target repl_sync_base pgmulti yes "tpcb tpcb_prep" "pgmulti $PGMULTI_BASE_REV (--base) replication sync, 3 nodes" start_pgmulti replication info sync
        T_BIN[repl_sync_base]=$PGMULTI_BASE
    fi
    add_target repl_async  pgmulti yes "select select_prep tpcb tpcb_prep connect" "pgmulti replication async, 3 nodes" start_pgmulti replication info async
    # Cells a target can't run, with the reason shown in the report.
    na_note pgb_tx select_prep "PgBouncer 1.18 transaction pooling does not support prepared statements (PgBouncer 1.21+ does)"
    # Two-phase commit changes only what a COMMIT does: reads run as with repl_sync.
    add_target repl_2pc    pgmulti yes "tpcb tpcb_prep"                            "pgmulti replication sync, two_phase commit, 3 nodes" start_pgmulti replication info sync two_phase
    # The streaming bed (primary + 2 hot standbys). stream_noryw differs from stream only by
    # read_your_writes = off: the ratio of the two is what read-your-writes costs.
    add_target stream        streaming stream "select select_prep tpcb tpcb_prep connect" "pgmulti streaming, primary + 2 standbys" start_pgmulti streaming info
    add_target stream_noryw  streaming stream "select select_prep tpcb tpcb_prep connect" "pgmulti streaming, read_your_writes = off" start_pgmulti streaming_noryw info
    add_target pgpool_stream streaming stream "select select_prep tpcb tpcb_prep connect" "pgpool-II streaming replication, primary + 2 standbys" start_pgpool streaming
}

# Workloads: pgbench options (-n: no vacuum before select-only runs; TPC-B runs keep pgbench's
# vacuum of branches/tellers and TRUNCATE of history, done through the target).
declare -A W_OPTS W_LABEL
W_OPTS[select]="-n -S -M simple"          W_LABEL[select]="select-only, -M simple"
W_OPTS[select_prep]="-n -S -M prepared"   W_LABEL[select_prep]="select-only, -M prepared"
W_OPTS[tpcb]="-M simple"                  W_LABEL[tpcb]="TPC-B (pgbench default script), -M simple"
W_OPTS[tpcb_prep]="-M prepared"           W_LABEL[tpcb_prep]="TPC-B (pgbench default script), -M prepared"
W_OPTS[connect]="-n -C -S -M simple"      W_LABEL[connect]="connect per transaction (-C -S), -M simple"

# ---------------------------------------------------------------------------------------------
# Prerequisites
# ---------------------------------------------------------------------------------------------
[ -x "$PG_BIN/initdb" ] || die "PostgreSQL 15 server binaries missing: apt-get install postgresql-15"
for c in pgbench psql python3 perl; do
    command -v $c >/dev/null || die "$c not found on PATH"
done

ensure_peers() {
    local missing=()
    # Debian puts both in /usr/sbin, which an ordinary user's PATH may lack.
    command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
    [ -x /usr/sbin/pgpool ] || command -v pgpool >/dev/null || missing+=(pgpool2)
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! is_root; then
        die "missing: ${missing[*]}. As root: apt-get install ${missing[*]} (then re-run as this user)"
    fi
    say "installing ${missing[*]} with apt-get"
    apt-get update -qq >/dev/null
    # policy-rc.d usually prevents services from starting in containers; stop them anyway.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    local svc
    for svc in pgbouncer pgpool2; do
        [ -x /etc/init.d/$svc ] && /etc/init.d/$svc stop >/dev/null 2>&1 || true
        command -v update-rc.d >/dev/null && update-rc.d $svc disable >/dev/null 2>&1 || true
        if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
            systemctl disable --now $svc >/dev/null 2>&1 || true
        else
            rm -f /etc/systemd/system/multi-user.target.wants/$svc.service
        fi
    done
}
ensure_peers
PGPOOL=$(command -v pgpool || echo /usr/sbin/pgpool)
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)

# Build committed revision $1 (git archive, the working tree is left alone) in target/$2;
# prints the binary's path.
build_rev() {
    local rev=$1 src
    src=${TMPDIR:-/tmp}/pgmulti-bench-src.$$
    rm -rf "$src" && mkdir -p "$src"
    git -C "$REPO" archive "$rev" | tar -x -C "$src"
    say "building pgmulti $rev (cargo build --release, from git archive)"
    (cd "$src" && CARGO_TARGET_DIR=$REPO/target/$2 cargo build --release -q) >&2 ||
        { rm -rf "$src"; die "cargo build of $rev failed"; }
    rm -rf "$src"
    echo "$REPO/target/$2/release/pgmulti"
}
PGMULTI_REV=
if [ -n "${PGMULTI_BIN:-}" ]; then
    PGMULTI=$PGMULTI_BIN   # a prebuilt binary (for a user without the Rust toolchain)
elif [ -n "$REV" ]; then
    PGMULTI_REV=$(git -C "$REPO" rev-parse --short "$REV^{commit}") || die "unknown revision $REV"
    PGMULTI=$(build_rev "$PGMULTI_REV" bench-rev)
else
    say "building pgmulti (cargo build --release)"
    (cd "$REPO" && cargo build --release -q) || die "cargo build failed (or try --rev HEAD)"
    PGMULTI=${CARGO_TARGET_DIR:-$REPO/target}/release/pgmulti
fi
PGMULTI_BASE= PGMULTI_BASE_REV=
if [ -n "$BASE" ]; then
    PGMULTI_BASE_REV=$(git -C "$REPO" rev-parse --short "$BASE^{commit}") || die "unknown revision $BASE"
    PGMULTI_BASE=$(build_rev "$PGMULTI_BASE_REV" bench-base)
fi
[ -x "$PGMULTI" ] || die "no pgmulti binary at $PGMULTI"

# File descriptors: 256 pgbench clients, and thousands of idle clients in the memory test.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)

# ---------------------------------------------------------------------------------------------
# Work folder and cleanup
# ---------------------------------------------------------------------------------------------
if [ -n "$WORK" ]; then
    [ -e "$WORK" ] && die "$WORK exists; give a new folder"
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgmulti-bench.XXXXXX")
fi
WORK=$(cd "$WORK" && pwd)
chmod 755 "$WORK"
PGROOT=$WORK/pg
mkdir -p "$PGROOT" "$WORK/txlog" "$WORK/pgbouncer" "$WORK/pgpool" "$WORK/pgmulti" "$WORK/runs"
if is_root; then
    chown postgres:postgres "$PGROOT" "$WORK/pgbouncer"
    runuser -u postgres -- test -w "$PGROOT" || die "user postgres cannot write $PGROOT; use --dir under /tmp"
fi

BG_PIDS=()      # processes we started directly (pgbouncer, pgpool, pgmulti, helpers)
cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    for pid in "${BG_PIDS[@]}"; do
        kill -INT "$pid" 2>/dev/null || true
    done
    for pid in "${BG_PIDS[@]}"; do
        for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    for i in $(seq -f 'node%g' 0 $((NODES - 1))) $(seq -f 'stream%g' 0 $((STREAM_NODES - 1))); do
        if [ -f "$PGROOT/$i/PG_VERSION" ]; then
            as_pg "$PG_BIN/pg_ctl" -D "$PGROOT/$i" -m immediate -w stop >/dev/null 2>&1 || true
        fi
    done
    if [ "$KEEP" = 1 ]; then
        say "work folder kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a PostgreSQL server program as `postgres` when we are root (PostgreSQL refuses root).
as_pg() {
    if is_root; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}
free_port() {
    perl -MIO::Socket::INET -e \
        'print IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1", LocalPort => 0, Proto => "tcp")->sockport'
}
accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # PORT PID WHAT
    local i
    for i in $(seq 1 200); do
        accepts "$1" && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}
port_psql() { # PORT DB ARGS...
    local port=$1 db=$2
    shift 2
    psql -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d "$db" -v ON_ERROR_STOP=1 "$@"
}
node_psql() { local n=$1; shift; port_psql "${NODE_PORT[$n]}" "$@"; }     # NODE DB ARGS...
snode_psql() { local n=$1; shift; port_psql "${SNODE_PORT[$n]}" "$@"; }   # streaming node N

# ---------------------------------------------------------------------------------------------
# Nodes
# ---------------------------------------------------------------------------------------------
declare -a NODE_PORT SNODE_PORT
# Room for every pool at once: pgpool-II's children, PgBouncer's two pools and each pgmulti
# instance keep up to (clients + 8) idle connections to node 0 between runs, plus direct.
NODE_MAX_CONN=$(( 8 * (MAX_CLIENTS + 8) + 100 ))
[ "$NODE_MAX_CONN" -lt 1000 ] && NODE_MAX_CONN=1000
start_node() { # N|streamN [extra pg_ctl -o options]
    local n=$1
    case $n in stream*) ;; *) n=node$n ;; esac
    as_pg "$PG_BIN/pg_ctl" -D "$PGROOT/$n" -l "$PGROOT/$n.log" ${2:+-o "$2"} -w -t 120 start >/dev/null ||
        { tail -20 "$PGROOT/$n.log" >&2; die "$n failed to start"; }
}
init_node() { # DIR-NAME PORT: initdb, then the benchmark settings
    as_pg "$PG_BIN/initdb" -D "$PGROOT/$1" -U postgres --auth=trust -E UTF8 --locale=C \
        >"$WORK/initdb-$1.log" 2>&1 || { cat "$WORK/initdb-$1.log" >&2; die "initdb failed"; }
    cat <<EOF | as_pg tee -a "$PGROOT/$1/postgresql.conf" >/dev/null

# scripts/bench.sh: throwaway benchmark node. Durability off, so that the disk of a shared
# machine measures as little as possible: the subject is the middleware.
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGROOT'
port = $2
max_connections = $NODE_MAX_CONN
max_prepared_transactions = $((MAX_CLIENTS + 8))
shared_buffers = $SHARED_BUFFERS
fsync = off
synchronous_commit = off
full_page_writes = off
max_wal_size = 8GB
checkpoint_timeout = 30min
EOF
}
create_nodes() {
    local n
    for ((n = 0; n < NODES; n++)); do
        NODE_PORT[$n]=$(free_port)
        init_node "node$n" "${NODE_PORT[$n]}"
        start_node "$n"
    done
}

# The streaming bed: stream0 a primary (initdb and the settings above; wal_level = replica,
# PostgreSQL's default), stream1 and stream2 hot standbys cloned from it with
# pg_basebackup -R, each with a replication slot so that the primary keeps the WAL it still
# needs. A standby's settings are the primary's (the base backup copies them) but its port.
create_stream_nodes() {
    local n
    for ((n = 0; n < STREAM_NODES; n++)); do SNODE_PORT[$n]=$(free_port); done
    init_node stream0 "${SNODE_PORT[0]}"
    start_node stream0
    for ((n = 1; n < STREAM_NODES; n++)); do
        as_pg "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "${SNODE_PORT[0]}" -U postgres -D "$PGROOT/stream$n" \
            -R -X stream -c fast -C -S "stream$n" >"$WORK/basebackup-stream$n.log" 2>&1 ||
            { cat "$WORK/basebackup-stream$n.log" >&2; die "pg_basebackup for stream$n failed"; }
        printf '\n# scripts/bench.sh: hot standby of stream0 (pg_basebackup -R)\nport = %s\n' "${SNODE_PORT[$n]}" |
            as_pg tee -a "$PGROOT/stream$n/postgresql.conf" >/dev/null
        start_node "stream$n"
    done
    [ "$(snode_psql 1 postgres -c 'SELECT pg_is_in_recovery()')" = t ] || die "stream1 is not a standby"
}
# Waits until every standby has replayed the primary's WAL as it ends now; prints the seconds
# that took. Fails after 5 minutes.
stream_catch_up() {
    local lsn start n behind
    start=$(date +%s%N)
    lsn=$(snode_psql 0 postgres -c "SELECT pg_current_wal_insert_lsn()") || return 1
    for _ in $(seq 1 3000); do
        behind=0
        for ((n = 1; n < STREAM_NODES; n++)); do
            [ "$(snode_psql "$n" postgres -c "SELECT coalesce(pg_last_wal_replay_lsn() >= '$lsn', false)" 2>/dev/null)" = t ] ||
                behind=$((behind + 1))
        done
        if [ "$behind" = 0 ]; then
            echo $((($(date +%s%N) - start) / 1000000)) | awk '{printf "%.1f\n", $1 / 1000}'
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# Databases: bench_direct on node 0 serves every single-node target (direct, PgBouncer, pgmulti
# relay); every replicating target gets its own database on all nodes, so one that diverges
# can't be blamed on another. All are file copies of one pgbench -i database per node
# (pgbench -i data is deterministic, so the nodes start identical).
load_data() {
    local n t pids=()
    for ((n = 0; n < NODES; n++)); do
        (node_psql "$n" postgres -c "CREATE DATABASE bench_tpl" &&
            pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "${NODE_PORT[$n]}" -U postgres bench_tpl \
                >"$WORK/pgbench-init-node$n.log" 2>&1) &
        pids+=($!)
    done
    for n in "${pids[@]}"; do wait "$n" || die "pgbench -i failed (see $WORK/pgbench-init-node*.log)"; done
    for ((n = 0; n < NODES; n++)); do
        node_psql "$n" postgres -c "CHECKPOINT"
        [ "$n" -eq 0 ] && node_psql 0 postgres -c "CREATE DATABASE bench_direct TEMPLATE bench_tpl STRATEGY FILE_COPY"
        for t in "${TARGET_NAMES[@]}"; do
            if [ "${T_REPL[$t]}" = yes ] && [ -z "${T_SKIP[$t]:-}" ]; then
                node_psql "$n" postgres -c "CREATE DATABASE bench_$t TEMPLATE bench_tpl STRATEGY FILE_COPY"
            fi
        done
        node_psql "$n" postgres -c "DROP DATABASE bench_tpl"
    done
}
# The streaming bed: pgbench -i on the primary only, one database per streaming target (file
# copies, as above); the standbys get all of it by streaming and are waited for.
load_stream_data() {
    local t secs
    snode_psql 0 postgres -c "CREATE DATABASE bench_tpl"
    pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "${SNODE_PORT[0]}" -U postgres bench_tpl \
        >"$WORK/pgbench-init-stream0.log" 2>&1 || die "pgbench -i failed (see $WORK/pgbench-init-stream0.log)"
    snode_psql 0 postgres -c "CHECKPOINT"
    for t in "${TARGET_NAMES[@]}"; do
        if [ "${T_REPL[$t]}" = stream ] && [ -z "${T_SKIP[$t]:-}" ]; then
            snode_psql 0 postgres -c "CREATE DATABASE bench_$t TEMPLATE bench_tpl STRATEGY FILE_COPY"
        fi
    done
    snode_psql 0 postgres -c "DROP DATABASE bench_tpl"
    secs=$(stream_catch_up) || die "the standbys did not replay the loaded data within 5 minutes"
    say "standbys replayed the loaded data (${secs} s after the load)"
}

# ---------------------------------------------------------------------------------------------
# Target start functions: set T_PORT, T_DB (and T_PID); or T_SKIP with the reason.
# ---------------------------------------------------------------------------------------------
start_direct() { T_PORT[$1]=${NODE_PORT[0]}; T_DB[$1]=bench_direct; }

PGB_PORT=
PGB_PID=
write_pgbouncer_conf() { # DIR PORT MAX_CLIENT_CONN
    local dir=$1
    printf '"postgres" ""\n' >"$dir/userlist.txt"
    cat >"$dir/pgbouncer.ini" <<EOF
; written by scripts/bench.sh
[databases]
bench_tx = host=127.0.0.1 port=${NODE_PORT[0]} dbname=bench_direct pool_mode=transaction pool_size=20
bench_sess = host=127.0.0.1 port=${NODE_PORT[0]} dbname=bench_direct pool_mode=session pool_size=$((MAX_CLIENTS + 8))

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $2
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = $3
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
    is_root && chown -R postgres:postgres "$dir"
    return 0
}
launch_pgbouncer() { # DIR PORT -> sets LAUNCHED_PID
    # PgBouncer refuses to run as root: -u makes it switch to postgres (keeping our ulimit -n).
    if is_root; then
        "$PGBOUNCER" -u postgres "$1/pgbouncer.ini" >>"$1/stderr.log" 2>&1 &
    else
        "$PGBOUNCER" "$1/pgbouncer.ini" >>"$1/stderr.log" 2>&1 &
    fi
    LAUNCHED_PID=$!
    BG_PIDS+=("$LAUNCHED_PID")
    wait_port "$2" "$LAUNCHED_PID" || { tail -20 "$1/pgbouncer.log" "$1/stderr.log" >&2; return 1; }
}
start_pgbouncer() { # NAME transaction|session
    if [ -z "$PGB_PORT" ]; then
        PGB_PORT=$(free_port)
        write_pgbouncer_conf "$WORK/pgbouncer" "$PGB_PORT" 400 || return 1
        launch_pgbouncer "$WORK/pgbouncer" "$PGB_PORT" || { T_SKIP[$1]="PgBouncer did not start"; return 0; }
        PGB_PID=$LAUNCHED_PID
    fi
    T_PORT[$1]=$PGB_PORT T_PID[$1]=$PGB_PID
    if [ "$2" = transaction ]; then T_DB[$1]=bench_tx; else T_DB[$1]=bench_sess; fi
}

# pgpool-II 4.2 renamed its mode switches to backend_clustering_mode; older releases (Debian
# 11 ships 4.1) take replication_mode or master_slave_mode + master_slave_sub_mode.
pgpool_mode_lines() { # native|streaming
    local v major minor
    v=$("$PGPOOL" --version 2>&1 | sed -n 's/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -1)
    read -r major minor <<<"${v:-4 2}"
    if [ "$major" -gt 4 ] || { [ "$major" -eq 4 ] && [ "$minor" -ge 2 ]; }; then
        if [ "$1" = streaming ]; then
            echo "backend_clustering_mode = 'streaming_replication'"
        else
            echo "backend_clustering_mode = 'native_replication'"
        fi
    elif [ "$1" = streaming ]; then
        echo "master_slave_mode = on"
        echo "master_slave_sub_mode = 'stream'"
    else
        echo "replication_mode = on"
    fi
}
start_pgpool() { # NAME [native|streaming]
    local mode=${2:-native} dir=$WORK/pgpool n port pcp
    local -a ports=("${NODE_PORT[@]}")
    if [ "$mode" = streaming ]; then dir=$WORK/pgpool_stream ports=("${SNODE_PORT[@]}"); fi
    port=$(free_port) pcp=$(free_port)
    mkdir -p "$dir/oiddir"
    : >"$dir/pcp.conf"
    printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' >"$dir/pool_hba.conf"
    {
        echo "# written by scripts/bench.sh for pgpool-II $($PGPOOL --version 2>&1 | awk '{print $3}')"
        pgpool_mode_lines "$mode"
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $port"
        echo "socket_dir = '$dir'"
        echo "pcp_listen_addresses = ''"
        echo "pcp_port = $pcp"
        echo "pcp_socket_dir = '$dir'"
        echo "wd_ipc_socket_dir = '$dir'"
        echo "pid_file_name = '$dir/pgpool.pid'"
        echo "logdir = '$dir'"
        echo "memqcache_oiddir = '$dir/oiddir'"
        for ((n = 0; n < ${#ports[@]}; n++)); do
            echo "backend_hostname$n = '127.0.0.1'"
            echo "backend_port$n = ${ports[$n]}"
            # Streaming: reads on the standbys only, as pgmulti's streaming mode reads.
            if [ "$mode" = streaming ] && [ "$n" = 0 ]; then
                echo "backend_weight$n = 0"
            else
                echo "backend_weight$n = 1"
            fi
            echo "backend_flag$n = 'DISALLOW_TO_FAILOVER'"
        done
        echo "enable_pool_hba = off"
        echo "pool_passwd = ''"
        echo "num_init_children = $((MAX_CLIENTS + 4))"
        echo "max_pool = 1"
        echo "reserved_connections = 0"
        echo "child_life_time = 0"
        echo "child_max_connections = 0"
        echo "connection_life_time = 0"
        echo "client_idle_limit = 0"
        echo "connection_cache = on"
        echo "load_balance_mode = on"
        echo "statement_level_load_balance = off"
        if [ "$mode" = streaming ]; then
            # The primary is found with sr_check_user (needed even with sr_check_period = 0);
            # every STREAM_CHECK_PERIOD s the standbys' delay is read, and a standby further
            # behind than delay_threshold bytes serves no reads (pgmulti: max_standby_lag).
            echo "sr_check_period = $STREAM_CHECK_PERIOD"
            echo "sr_check_user = 'postgres'"
            # An empty password as TEXT-prefixed plain text: left empty, pgpool-II looks it
            # up in pool_passwd (off here) and its delay check fails every period.
            echo "sr_check_password = 'TEXT'"
            echo "sr_check_database = 'postgres'"
            echo "delay_threshold = $STREAM_MAX_LAG"
            echo "follow_primary_command = ''"
            echo "failover_command = ''"
        else
            echo "replicate_select = off"
            echo "insert_lock = off"
            echo "replication_stop_on_mismatch = off"
            echo "failover_if_affected_tuples_mismatch = off"
        fi
        echo "health_check_period = 0"
        echo "failover_on_backend_error = off"
        echo "failover_on_backend_shutdown = off"
        echo "use_watchdog = off"
        echo "memory_cache_enabled = off"
        echo "ssl = off"
        echo "log_destination = 'stderr'"
        echo "logging_collector = off"
        echo "log_min_messages = warning"
        echo "log_connections = off"
        echo "log_statement = off"
    } >"$dir/pgpool.conf"
    # -n: stay in the foreground (we own the process); -D: ignore any saved node status.
    "$PGPOOL" -n -D -f "$dir/pgpool.conf" -F "$dir/pcp.conf" -a "$dir/pool_hba.conf" >"$dir/pgpool.log" 2>&1 &
    T_PID[$1]=$!
    BG_PIDS+=("${T_PID[$1]}")
    if ! wait_port "$port" "${T_PID[$1]}"; then
        tail -20 "$dir/pgpool.log" >&2
        T_SKIP[$1]="pgpool-II did not start (see its log)"
        return 0
    fi
    # The children are forked at start; a first query makes sure they serve.
    if ! psql -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d "bench_$1" -c "SELECT 1" >/dev/null 2>>"$dir/pgpool.log"; then
        tail -20 "$dir/pgpool.log" >&2
        T_SKIP[$1]="pgpool-II does not answer queries (see its log)"
        return 0
    fi
    if [ "$mode" = streaming ] &&
        ! psql -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d "bench_$1" -c "SHOW POOL_NODES" 2>>"$dir/pgpool.log" |
        awk -F'|' '$1 == 0 && $0 ~ /primary/ {found = 1} END {exit !found}'; then
        tail -20 "$dir/pgpool.log" >&2
        T_SKIP[$1]="pgpool-II did not find the primary (node 0) (see its log)"
        return 0
    fi
    T_PORT[$1]=$port T_DB[$1]=bench_$1 T_COUNTERS[$1]=pgpool
}

write_pgmulti_conf() { # FILE PORT MODE LOG_LEVEL LOGFILE [WRITE_ACK [COMMIT_PROTOCOL]]
    # MODE relay_tx: relay with pool_mode = transaction (as PgBouncer's transaction pooling).
    # streaming: over the streaming bed; streaming_noryw: the same with read_your_writes = off.
    local n nodes=1 mode=$3
    local -a ports=("${NODE_PORT[@]}")
    [ "$3" = replication ] && nodes=$NODES
    [ "$3" = relay_tx ] && mode=relay
    case $3 in streaming*) mode=streaming nodes=$STREAM_NODES ports=("${SNODE_PORT[@]}") ;; esac
    {
        echo "# written by scripts/bench.sh"
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $2"
        echo "unix_socket_directories = ''"
        echo "mode = $mode"
        # Pool sizes as PgBouncer's: transaction pooling 20 connections, session pooling
        # (and replication, as pgpool-II's num_init_children) room for every client.
        if [ "$3" = relay_tx ]; then
            echo "pool_mode = transaction"
            echo "max_pool_size = 20"
        else
            echo "max_pool_size = $((MAX_CLIENTS + 8))"
        fi
        [ -n "${6:-}" ] && echo "write_ack = $6"
        [ -n "${7:-}" ] && echo "commit_protocol = $7" && echo "two_phase_log = '${1%.conf}.2pc'"
        for ((n = 0; n < nodes; n++)); do
            echo "backend_hostname$n = '127.0.0.1'"
            echo "backend_port$n = ${ports[$n]}"
        done
        echo "backend_sslmode = disable        # the nodes have no TLS; as PgBouncer's default"
        if [ "$mode" = streaming ]; then
            # The health checks read roles and WAL positions, which reads are routed by (as
            # pgpool-II's sr_check_period); a slow check on a busy machine is retried before
            # a node counts as lost.
            echo "health_check_period = $STREAM_CHECK_PERIOD"
            echo "health_check_timeout = 10"
            echo "health_check_max_retries = 3"
            echo "max_standby_lag = $STREAM_MAX_LAG"
            [ "$3" = streaming_noryw ] && echo "read_your_writes = off"
        else
            echo "health_check_period = 0          # as for pgpool-II"
        fi
        echo "max_client_conn = 20000"
        echo "admin_users = 'postgres'"
        echo "log_file = '$5'"
        echo "log_level = $4"
    } >"$1"
}
launch_pgmulti() { # CONF PORT OUTFILE [BINARY] -> LAUNCHED_PID
    "${4:-$PGMULTI}" -f "$1" >>"$3" 2>&1 &
    LAUNCHED_PID=$!
    BG_PIDS+=("$LAUNCHED_PID")
    wait_port "$2" "$LAUNCHED_PID"
}
check_pgmulti() { # NAME MODE LOG_LEVEL [WRITE_ACK [COMMIT_PROTOCOL]]: config + --check
    local name=$1 mode=$2 level=$3 conf msg
    T_PORT[$name]=$(free_port)
    conf=$WORK/pgmulti/$name.conf
    write_pgmulti_conf "$conf" "${T_PORT[$name]}" "$mode" "$level" "$WORK/pgmulti/$name.log" "${4:-}" "${5:-}"
    if ! msg=$("${T_BIN[$name]:-$PGMULTI}" --check -f "$conf" 2>&1); then
        msg=$(printf '%s' "$msg" | head -1 | sed "s|$conf: *||")
        if [ "$mode" = replication ]; then
            T_SKIP[$name]="not implemented yet (pgmulti --check: $msg)"
        else
            T_SKIP[$name]="pgmulti refuses the configuration: $msg"
        fi
    fi
    case $mode in
        replication | streaming*) T_DB[$name]=bench_$name ;;
        *) T_DB[$name]=bench_direct ;;
    esac
    return 0
}
start_pgmulti() { # NAME MODE LOG_LEVEL [WRITE_ACK [COMMIT_PROTOCOL]]
    local name=$1
    [ -f "$WORK/pgmulti/$name.conf" ] || check_pgmulti "$@"
    [ -z "${T_SKIP[$name]:-}" ] || return 0
    if ! launch_pgmulti "$WORK/pgmulti/$name.conf" "${T_PORT[$name]}" "$WORK/pgmulti/$name.out" "${T_BIN[$name]:-}"; then
        T_SKIP[$name]="pgmulti did not start: $(tail -1 "$WORK/pgmulti/$name.out" 2>/dev/null)"
        return 0
    fi
    T_PID[$name]=$LAUNCHED_PID
    [ "$3" = trace ] && T_NOTE[$name]=trace
    [[ $2 == relay* ]] || T_COUNTERS[$name]=pgmulti
    # Streaming: roles come from the first health checks; wait until SHOW NODES has them.
    if [[ $2 == streaming* ]]; then
        local roles="" want="primary" n
        for ((n = 1; n < STREAM_NODES; n++)); do want="$want standby"; done
        for _ in $(seq 1 100); do
            roles=$(psql -X -q -At -h 127.0.0.1 -p "${T_PORT[$name]}" -U postgres -d pgmulti -c "SHOW NODES" 2>/dev/null |
                awk -F'|' '{printf "%s%s", sep, $5; sep = " "}')
            [ "$roles" = "$want" ] && return 0
            sleep 0.1
        done
        T_SKIP[$name]="pgmulti did not find the primary and 2 standbys (SHOW NODES roles: ${roles:-none})"
    fi
    return 0
}

# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------
RESULTS=$WORK/results.tsv   # round target workload clients tps p50_us p99_us status note processed failed
CHECKS=$WORK/checks.tsv     # round target workload clients verdict detail
READS=$WORK/reads.tsv       # round target workload clients node role reads (in that run, by the proxy)
MEMORY=$WORK/memory.tsv     # target clients_asked clients_ok rss_idle/half/all kib_per_client kib_marginal hwm note
COMMANDS=$WORK/commands.txt
printf 'round\ttarget\tworkload\tclients\ttps\tp50_us\tp99_us\tstatus\tnote\tprocessed\tfailed\n' >"$RESULTS"
printf 'round\ttarget\tworkload\tclients\tnode\trole\treads\n' >"$READS"
printf 'round\ttarget\tworkload\tclients\tverdict\tdetail\n' >"$CHECKS"
printf 'target\tclients_asked\tclients_ok\trss_idle_kib\trss_half_kib\trss_kib\tkib_per_client\tkib_marginal\thwm_kib\tnote\n' >"$MEMORY"
: >"$COMMANDS"

# One checksum per pgbench table, per node, queried on the node directly.
CHECKSUM_SQL="SELECT 'pgbench_branches=' || md5(string_agg(t::text, ',' ORDER BY t.bid)) FROM pgbench_branches t
UNION ALL SELECT 'pgbench_tellers=' || md5(string_agg(t::text, ',' ORDER BY t.tid)) FROM pgbench_tellers t
UNION ALL SELECT 'pgbench_accounts=' || count(*) || ':' || coalesce(sum(abalance), 0) || ':'
       || coalesce(sum(aid::bigint * abalance), 0) || ':' || coalesce(sum(bid::bigint * abalance), 0) FROM pgbench_accounts
UNION ALL SELECT 'pgbench_history=' || count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM pgbench_history t"

compare_nodes() { # ROUND TARGET WORKLOAD CLIENTS
    local t=$2 n diff="" pids=() detail=""
    local -a ports=("${NODE_PORT[@]}")
    if [ "${T_REPL[$t]}" = stream ]; then
        # The standbys have what the primary committed once they have replayed its WAL.
        ports=("${SNODE_PORT[@]}")
        if ! detail=$(stream_catch_up); then
            printf '%s\t%s\t%s\t%s\tCHECK FAILED\t%s\n' "$@" "the standbys did not replay the primary's WAL within 5 minutes" >>"$CHECKS"
            say "  !! $t: the standbys did not catch up within 5 minutes"
            return 0
        fi
        detail="standbys caught up in $detail s"
    fi
    for ((n = 0; n < ${#ports[@]}; n++)); do
        port_psql "${ports[$n]}" "${T_DB[$t]}" -c "$CHECKSUM_SQL" >"$WORK/runs/sum.$n" 2>&1 &
        pids+=($!)
    done
    local failed=""
    for ((n = 0; n < ${#ports[@]}; n++)); do wait "${pids[$n]}" || failed="$failed node$n"; done
    if [ -n "$failed" ]; then
        printf '%s\t%s\t%s\t%s\tCHECK FAILED\t%s\n' "$@" "checksum query failed on${failed}: $(head -1 "$WORK/runs/sum.0")" >>"$CHECKS"
        say "  !! $t: checksum query failed on${failed}"
        return 0
    fi
    local table
    for table in pgbench_branches pgbench_tellers pgbench_accounts pgbench_history; do
        local first="" same=1 v
        for ((n = 0; n < ${#ports[@]}; n++)); do
            v=$(grep "^$table=" "$WORK/runs/sum.$n" || echo "$table=?")
            if [ $n -eq 0 ]; then first=$v; elif [ "$v" != "$first" ]; then same=0; fi
        done
        [ $same = 1 ] || diff="$diff $table"
    done
    if [ -z "$diff" ]; then
        printf '%s\t%s\t%s\t%s\tidentical\t%s\n' "$@" "$detail" >>"$CHECKS"
    else
        printf '%s\t%s\t%s\t%s\tDIVERGED\t%s\n' "$@" "${diff# }" >>"$CHECKS"
        say "  !! $t: nodes differ after this run:${diff}"
    fi
}

# Reads each node has served so far, by the proxy's own counters, one "node role reads" line
# per node: pgmulti's admin console SHOW NODES (reads), pgpool-II's SHOW POOL_NODES
# (select_cnt). Nothing for a target without such counters.
read_counters() { # TARGET
    local db show count
    case ${T_COUNTERS[$1]:-} in
        pgmulti) db=pgmulti show=NODES count=reads ;;
        pgpool) db=${T_DB[$1]} show=POOL_NODES count=select_cnt ;;
        *) return 0 ;;
    esac
    psql -X -q -A -F'|' -P footer=off -h 127.0.0.1 -p "${T_PORT[$1]}" -U postgres -d "$db" -c "SHOW $show" 2>/dev/null |
        awk -F'|' -v count="$count" 'NR == 1 {for (i = 1; i <= NF; i++) col[$i] = i; next}
            col["node_id"] && col[count] {print $col["node_id"], $col["role"], $col[count]}'
}

run_one() { # ROUND TARGET WORKLOAD CLIENTS
    local round=$1 t=$2 w=$3 c=$4 prefix out rc tps lat status=ok note="" before processed failed
    prefix=$WORK/txlog/r$round.$t.$w.c$c
    out=$WORK/runs/r$round.$t.$w.c$c.out
    local cmd=(pgbench -h 127.0.0.1 -p "${T_PORT[$t]}" -U postgres ${W_OPTS[$w]} -c "$c" -j "$THREADS"
        -T "$DURATION" -l --log-prefix="$prefix" "${T_DB[$t]}")
    printf '%s\t%s\t%s\t%s\n' "$t" "$w" "$c" "${cmd[*]}" >>"$COMMANDS"
    before=$(read_counters "$t")
    rc=0
    "${cmd[@]}" >"$out" 2>&1 || rc=$?
    if [ -n "$before" ]; then
        # Per node: the reads of this run (counters after minus before).
        awk -v pre="$round\t$t\t$w\t$c" 'NR == FNR {was[$1] = $3; next} {printf "%s\t%s\t%s\t%d\n", pre, $1, $2, $3 - was[$1]}' \
            <(printf '%s\n' "$before") <(read_counters "$t") >>"$READS"
    fi
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$out" | tail -1)
    processed=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out" | head -1)
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out" | head -1)
    read -r p50 p99 _ < <(python3 "$HERE/latency.py" "$prefix".* 2>/dev/null || echo "- - 0")
    rm -f "$prefix".*
    if [ "$rc" -ne 0 ] || [ -z "$tps" ]; then
        status=error
        note=$(grep -m1 -iE 'error|fatal|abort' "$out" | tr '\t' ' ' | cut -c1-160 || true)
        [ -n "$tps" ] || tps=0
    elif grep -q '^number of failed transactions: [1-9]' "$out"; then
        status=error
        note=$(grep -m1 '^number of failed transactions' "$out")
    fi
    if [ "${T_NOTE[$t]:-}" ] && [ -f "$WORK/pgmulti/$t.log" ]; then
        note="trace bytes=$(stat -c %s "$WORK/pgmulti/$t.log")"
        : >"$WORK/pgmulti/$t.log"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$t" "$w" "$c" "$tps" "$p50" "$p99" "$status" "$note" \
        "${processed:--}" "${failed:--}" >>"$RESULTS"
    say "round $round  $(printf '%-13s %-12s c=%-4s' "$t" "$w" "$c")  tps=$tps  p50=${p50}us p99=${p99}us failed=${failed:--} ${status/ok/}"
    if [ "${T_REPL[$t]}" != no ] && [[ $w == tpcb* ]]; then
        compare_nodes "$round" "$t" "$w" "$c"
    fi
}

# The concurrent-write workloads (scripts/bench/concurrency/) through every replicating target
# and a direct connection: pgbench -c 8 --max-tries 10, then on every node directly the count
# and md5 of each compared table, and the proxy's SHOW POOL_NODES (pgmulti and pgpool-II both
# answer it on any connection).
CONCURRENCY=$WORK/concurrency.tsv   # target workload verdict processed failed retried detail
concurrency_test() {
    local t name tables script f out rc verdict nodes down n v first differ processed failed retried
    printf 'target\tworkload\tverdict\tprocessed\tfailed\tretried\tdetail\n' >"$CONCURRENCY"
    for t in "${TARGET_NAMES[@]}"; do
        [ -z "${T_SKIP[$t]:-}" ] || continue
        [ "${T_REPL[$t]}" = yes ] || [ "$t" = direct ] || continue
        nodes=$NODES
        [ "$t" = direct ] && nodes=1
        while IFS='|' read -r name tables script; do
            case "$name" in '' | '#'*) continue ;; esac
            if ! psql -X -q -h 127.0.0.1 -p "${T_PORT[$t]}" -U postgres -d "${T_DB[$t]}" -v ON_ERROR_STOP=1 \
                -f "$HERE/concurrency/setup.sql" >"$WORK/runs/cw.setup.out" 2>&1; then
                printf '%s\t%s\tsetup failed\t0\t0\t0\t%s\n' "$t" "$name" "$(grep -m1 ERROR "$WORK/runs/cw.setup.out" | tr '\t' ' ')" >>"$CONCURRENCY"
                continue
            fi
            f=$WORK/runs/cw.$name.sql
            printf '\\set k random(1, 100000000)\n%b\n' "$script" >"$f"
            out=$WORK/runs/cw.$t.$name.out
            rc=0
            timeout $((CW_DURATION + 60)) pgbench -h 127.0.0.1 -p "${T_PORT[$t]}" -U postgres -n -c 8 -j "$THREADS" \
                -T "$CW_DURATION" --max-tries 10 -f "$f" "${T_DB[$t]}" >"$out" 2>&1 || rc=$?
            processed=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out" | head -1)
            failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out" | head -1)
            retried=$(sed -n 's/^number of transactions retried: \([0-9]*\).*/\1/p' "$out" | head -1)
            differ=""
            for table in $tables; do
                first=""
                for ((n = 0; n < nodes; n++)); do
                    v=$(node_psql "$n" "${T_DB[$t]}" -c "SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '-') FROM $table x" 2>&1)
                    if [ $n -eq 0 ]; then first=$v; elif [ "$v" != "$first" ]; then differ="$differ $table"; break; fi
                done
            done
            down=""
            if [ "$t" != direct ]; then
                down=$(psql -X -q -At -h 127.0.0.1 -p "${T_PORT[$t]}" -U postgres -d "${T_DB[$t]}" -c "SHOW POOL_NODES" 2>/dev/null |
                    awk -F'|' '$4 == "down" {printf "%s ", $1}')
            fi
            if [ "$rc" = 124 ]; then verdict=hung
            elif [ -n "$down" ]; then verdict="DETACHED ${down% }"
            elif [ -n "$differ" ]; then verdict="DIVERGED${differ}"
            elif [ "${processed:-0}" = 0 ]; then verdict=refused
            elif [ "$t" = direct ]; then verdict="one node"
            else verdict=identical; fi
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$name" "$verdict" "${processed:-0}" "${failed:-0}" "${retried:-0}" \
                "$(grep -m1 -E 'ERROR|error:' "$out" | tr '\t' ' ' | cut -c1-200)" >>"$CONCURRENCY"
            say "concurrency  $(printf '%-14s %-18s' "$t" "$name")  $verdict  processed=${processed:-0} failed=${failed:-0} retried=${retried:-0}"
            if [ -n "$down" ]; then
                # Put the node back for the next workload (setup.sql rebuilds the tables).
                for n in $down; do
                    if [ "$t" = pgpool ]; then
                        # pgpool-II attaches with pcp_attach_node; a restart (-D) does it too.
                        kill -INT "${T_PID[$t]}" 2>/dev/null || true
                        for _ in $(seq 1 50); do kill -0 "${T_PID[$t]}" 2>/dev/null || break; sleep 0.1; done
                        start_pgpool "$t"
                        break
                    else
                        psql -X -q -h 127.0.0.1 -p "${T_PORT[$t]}" -U postgres -d pgmulti -c "ATTACH NODE $n" >/dev/null 2>&1 || true
                    fi
                done
            fi
        done <"$HERE/concurrency/workloads.txt"
    done
}

# VmRSS of PID in KiB.# VmRSS of PID in KiB.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Opens COUNT idle clients in two halves (two helper processes, both held), reading VmRSS before,
# after the first half and after all: per client = (RSS_all - RSS_idle) / COUNT; marginal =
# (RSS_all - RSS_half) / (COUNT - half), which leaves out one-time growth.
open_idle_clients() { # TAG PORT DB COUNT -> sets HELD (clients logged in), HELD_ERR
    local ready=$WORK/runs/idle.$1.ready i ok
    rm -f "$ready"
    python3 "$HERE/idle_clients.py" --port "$2" --count "$4" --db "$3" --ready-file "$ready" \
        >"$WORK/runs/idle.$1.out" 2>&1 &
    HELPERS+=($!)
    BG_PIDS+=($!)
    for i in $(seq 1 3000); do
        [ -f "$ready" ] && break
        kill -0 "$!" 2>/dev/null || break
        sleep 0.1
    done
    ok=$(sed -n 's/^ok=\([0-9]*\).*/\1/p' "$ready" 2>/dev/null)
    HELD=${ok:-0}
    HELD_ERR=$(sed -n "s/.*error='\(.*\)'$/\1/p" "$ready" 2>/dev/null | cut -c1-120)
}
measure_idle_clients() { # TARGET-NAME PID PORT DB COUNT NOTE
    local name=$1 pid=$2 port=$3 db=$4 count=$5 note=$6 idle half rss held1 held2 h
    local first=$((count / 2))
    HELPERS=()
    sleep 0.5
    idle=$(rss_kib "$pid")
    open_idle_clients "$name.1" "$port" "$db" "$first"
    held1=$HELD
    sleep 1
    half=$(rss_kib "$pid" || echo 0)
    open_idle_clients "$name.2" "$port" "$db" $((count - first))
    held2=$HELD
    sleep 1
    rss=$(rss_kib "$pid" || echo 0)
    local ok=$((held1 + held2))
    [ "$ok" -lt "$count" ] && note="$note; only $ok of $count logged in${HELD_ERR:+ (first error: $HELD_ERR)}"
    for h in "${HELPERS[@]}"; do kill -TERM "$h" 2>/dev/null || true; done
    for h in "${HELPERS[@]}"; do wait "$h" 2>/dev/null || true; done
    local per=- marg=-
    [ "$ok" -gt 0 ] && per=$(awk -v a="$rss" -v b="$idle" -v n="$ok" 'BEGIN {printf "%.1f", (a - b) / n}')
    [ "$held2" -gt 0 ] && marg=$(awk -v a="$rss" -v b="$half" -v n="$held2" 'BEGIN {printf "%.1f", (a - b) / n}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$count" "$ok" "$idle" "$half" "$rss" "$per" "$marg" \
        "$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")" "$note" >>"$MEMORY"
    say "memory $name: $ok idle clients, RSS $idle -> $half ($held1 clients) -> $rss KiB; $per KiB per client, marginal $marg"
}

# The node-side cost of replication's effect checks (docs/replication.md): one keyed UPDATE as
# written, as the lead runs it (RETURNING key and row md5) and as a replica runs it (a CTE that
# sums the rows' hashes), pgbench -c 8 straight on node 0, alternating, ROUNDS x DURATION each.
EFFECTS=$WORK/effect_cost.tsv   # round form tps
effect_cost_test() {
    local round form tps
    printf 'round\tform\ttps\n' >"$EFFECTS"
    for ((round = 1; round <= ROUNDS; round++)); do
        for form in plain lead replica; do
            tps=$(pgbench -h 127.0.0.1 -p "${NODE_PORT[0]}" -U postgres -n -c 8 -j "$THREADS" -T "$DURATION" \
                -D scale="$SCALE" -f "$HERE/effects/$form.sql" bench_direct 2>&1 |
                sed -n 's/^tps = \([0-9.]*\).*/\1/p')
            printf '%s\t%s\t%s\n' "$round" "$form" "${tps:-0}" >>"$EFFECTS"
        done
    done
    say "effect checks: $(awk -F'\t' 'NR > 1 {s[$2] = s[$2] " " int($3)} END {for (f in s) printf "%s:%s  ", f, s[f]}' "$EFFECTS")"
}

memory_test() {
    local n=$MEM_CLIENTS note=""
    # Each needs n descriptors (pgmulti 2n: client + node connection each).
    if [ $((2 * n + 200)) -gt "$NOFILE" ]; then
        n=$(((NOFILE - 200) / 2))
        note="capped at $n clients by ulimit -n $NOFILE"
    fi
    # Stop the benchmark instances (they hold node connections) and give node 0 room for one
    # backend per pgmulti client.
    local t pid
    for pid in "${BG_PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    for pid in "${BG_PIDS[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    BG_PIDS=()
    say "memory test: restarting node 0 with max_connections = $((n + 100))"
    as_pg "$PG_BIN/pg_ctl" -D "$PGROOT/node0" -m fast -w stop >/dev/null
    start_node 0 "-c max_connections=$((n + 100))"

    # PgBouncer, transaction pooling (its idle clients hold no server connection).
    local dir=$WORK/pgbouncer-mem port
    mkdir -p "$dir"
    port=$(free_port)
    write_pgbouncer_conf "$dir" "$port" $((n + 100))
    if launch_pgbouncer "$dir" "$port"; then
        measure_idle_clients pgbouncer "$LAUNCHED_PID" "$port" bench_tx "$n" "${note:-transaction pooling}"
    fi
    # pgmulti relay, log_level info, transaction pooling (as PgBouncer above): idle clients
    # hold no node connection.
    port=$(free_port)
    write_pgmulti_conf "$WORK/pgmulti/mem_tx.conf" "$port" relay_tx info "$WORK/pgmulti/mem_tx.log"
    if launch_pgmulti "$WORK/pgmulti/mem_tx.conf" "$port" "$WORK/pgmulti/mem_tx.out"; then
        measure_idle_clients pgmulti "$LAUNCHED_PID" "$port" bench_direct "$n" "${note:-transaction pooling}"
        kill -INT "$LAUNCHED_PID" 2>/dev/null || true
    fi
    # pgmulti relay, session pooling: each client also holds a node-0 connection.
    port=$(free_port)
    write_pgmulti_conf "$WORK/pgmulti/mem.conf" "$port" relay info "$WORK/pgmulti/mem.log"
    if launch_pgmulti "$WORK/pgmulti/mem.conf" "$port" "$WORK/pgmulti/mem.out"; then
        measure_idle_clients pgmulti_session "$LAUNCHED_PID" "$port" bench_direct "$n" \
            "${note:+$note; }session pooling: each client also holds a node-0 connection (node max_connections $((n + 100)))"
    fi
}

# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
START_TS=$(date +%s)
say "work folder $WORK; scale $SCALE, $ROUNDS rounds x ${DURATION}s, clients $CLIENTS"
define_targets
if [ -n "${BENCH_TARGETS:-}" ]; then
    keep=()
    for t in "${TARGET_NAMES[@]}"; do [[ " $BENCH_TARGETS " == *" $t "* ]] && keep+=("$t"); done
    TARGET_NAMES=("${keep[@]}")
fi
say "creating $NODES nodes"
create_nodes
STREAM_BED=0
for t in "${TARGET_NAMES[@]}"; do [ "${T_REPL[$t]}" = stream ] && STREAM_BED=1; done
if [ "$STREAM_BED" = 1 ]; then
    say "creating the streaming bed: a primary and $((STREAM_NODES - 1)) hot standbys (pg_basebackup -R)"
    create_stream_nodes
fi
# pgmulti's --check decides first whether a pgmulti target can run at all (the databases of
# replicating targets are only loaded for targets that can).
for t in "${TARGET_NAMES[@]}"; do
    set -- ${T_START[$t]}
    if [ "$1" = start_pgmulti ]; then shift; check_pgmulti "$t" "$@"; fi
done
say "loading pgbench data (scale $SCALE) on $NODES nodes"
load_data
if [ "$STREAM_BED" = 1 ]; then
    say "loading pgbench data (scale $SCALE) on the streaming primary"
    load_stream_data
fi
say "starting targets"
for t in "${TARGET_NAMES[@]}"; do
    [ -z "${T_SKIP[$t]:-}" ] || continue
    set -- ${T_START[$t]}
    fn=$1
    shift
    "$fn" "$t" "$@"
done
for t in "${TARGET_NAMES[@]}"; do
    if [ -n "${T_SKIP[$t]:-}" ]; then say "skipping $t: ${T_SKIP[$t]}"; fi
done
# Warm-up, not measured: every target serves the largest client count once, so that pooled
# node connections (pgmulti, PgBouncer, pgpool-II's children) exist before round 1 as they do
# in later rounds; otherwise a short first run measures mostly log-ins to the nodes.
say "warm-up: $MAX_CLIENTS clients through every target"
for t in "${TARGET_NAMES[@]}"; do
    [ -z "${T_SKIP[$t]:-}" ] || continue
    pgbench -h 127.0.0.1 -p "${T_PORT[$t]}" -U postgres -n -S -M simple -c "$MAX_CLIENTS" -j "$THREADS" -t 20 \
        "${T_DB[$t]}" >"$WORK/runs/warmup.$t.out" 2>&1 || say "warm-up of $t failed (see $WORK/runs/warmup.$t.out)"
done

# Versions, machine.
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc=$(nproc)"
    echo "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
    echo "mem=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
    echo "kernel=$(uname -sr)"
    echo "os=$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
    echo "postgres=$("$PG_BIN/postgres" --version)"
    echo "pgbench=$(pgbench --version)"
    echo "pgbouncer=$("$PGBOUNCER" --version | head -1)"
    echo "pgpool=$("$PGPOOL" --version 2>&1 | head -1)"
    echo "pgmulti=$("$PGMULTI" --version)"
    [ -z "$PGMULTI_BASE_REV" ] || echo "base=$PGMULTI_BASE_REV (repl_sync_base, built from git archive)"
    echo "cw_duration=$CW_DURATION"
    if [ -n "$PGMULTI_REV" ]; then
        echo "commit=$PGMULTI_REV (built from git archive)"
    elif [ -n "${PGMULTI_BIN:-}" ]; then
        echo "commit=unknown (prebuilt binary $PGMULTI_BIN; HEAD is $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null))"
    else
        echo "commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock build.rs 2>/dev/null || echo ' + uncommitted changes in src (working tree build)')"
    fi
    echo "user=$(id -un)"
    echo "quick=$QUICK"
    echo "scale=$SCALE"
    echo "rounds=$ROUNDS"
    echo "duration=$DURATION"
    echo "clients=$CLIENTS"
    echo "threads=$THREADS"
    echo "mem_clients=$MEM_CLIENTS"
    echo "shared_buffers=$SHARED_BUFFERS"
    echo "stream_bed=$STREAM_BED"
    echo "stream_check_period=$STREAM_CHECK_PERIOD"
    echo "stream_max_lag=$STREAM_MAX_LAG"
    echo "node_max_connections=$NODE_MAX_CONN"
    echo "pool_size_session=$((MAX_CLIENTS + 8))"
    echo "pgpool_children=$((MAX_CLIENTS + 4))"
    echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "invocation=$(env | grep '^BENCH_' | sort | tr '\n' ' ')scripts/bench.sh ${ORIG_ARGS[*]}"
} >"$WORK/meta.env"
{
    for t in "${TARGET_NAMES[@]}"; do
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "${T_GROUP[$t]}" "${T_REPL[$t]}" "${T_WORK[$t]}" "${T_LABEL[$t]}" "${T_SKIP[$t]:-}" "${T_NA[$t]:-}"
    done
} >"$WORK/targets.tsv"
cp "$WORK/pgbouncer/pgbouncer.ini" "$WORK/pgpool/pgpool.conf" "$WORK/pgmulti/"*.conf "$WORK/runs/" 2>/dev/null || true
sed -n '/^# scripts\/bench.sh/,$p' "$PGROOT/node0/postgresql.conf" >"$WORK/runs/node0.conf" 2>/dev/null || true
if [ "$STREAM_BED" = 1 ]; then
    cp "$WORK/pgpool_stream/pgpool.conf" "$WORK/runs/pgpool_stream.conf" 2>/dev/null || true
    # A standby: the primary's settings (copied by pg_basebackup), its own port, and what -R wrote.
    { sed -n '/^# scripts\/bench.sh: hot standby/,$p' "$PGROOT/stream1/postgresql.conf"
      grep -v '^#' "$PGROOT/stream1/postgresql.auto.conf"; } >"$WORK/runs/stream1.conf" 2>/dev/null || true
fi

say "measuring: $ROUNDS rounds"
for ((round = 1; round <= ROUNDS; round++)); do
    for w in $WORKLOADS; do
        for c in $CLIENTS; do
            # This workload's runnable targets, rotated by one each round so that no target
            # always runs first (right after a TPC-B run, for instance).
            list=()
            for t in "${TARGET_NAMES[@]}"; do
                [ -z "${T_SKIP[$t]:-}" ] && [[ " ${T_WORK[$t]} " == *" $w "* ]] && list+=("$t")
            done
            k=${#list[@]}
            # repl_sync and its --base twin run back to back; which goes first alternates.
            if [ $((round % 2)) = 0 ]; then
                for ((i = 0; i + 1 < k; i++)); do
                    if [ "${list[$i]}" = repl_sync ] && [ "${list[$((i + 1))]}" = repl_sync_base ]; then
                        list[$i]=repl_sync_base list[$((i + 1))]=repl_sync
                    fi
                done
            fi
            for ((i = 0; i < k; i++)); do
                run_one "$round" "${list[$(((i + round - 1) % k))]}" "$w" "$c"
            done
        done
    done
done
echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$WORK/meta.env"

say "concurrent writes: $CW_DURATION s per workload and target"
concurrency_test

say "effect checks: what verifying a write's effect costs the nodes"
effect_cost_test

say "memory test: $MEM_CLIENTS idle clients"
memory_test
echo "elapsed_s=$(($(date +%s) - START_TS))" >>"$WORK/meta.env"

mkdir -p "$(dirname "$OUT")"
python3 "$HERE/report.py" --work "$WORK" --out "$OUT" --svg "$SVG" --workloads "$WORKLOADS"
say "report: $OUT (chart $SVG); $(($(date +%s) - START_TS)) s in all"
