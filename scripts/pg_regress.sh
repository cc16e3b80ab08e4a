#!/usr/bin/env bash
# PostgreSQL 15's own regression suite (pg_regress installcheck, parallel_schedule) through
# pgmulti, to see which of PostgreSQL's tests pass through it (docs/compatibility.md).
#
#   scripts/pg_regress.sh [direct|relay|replication]...    default: replication
#
#   direct       the suite against one plain node (the baseline: what fails here is the
#                environment, not pgmulti)
#   relay        through pgmulti, mode = relay, in front of $NODES nodes (default 1)
#   replication  through pgmulti, mode = replication, $NODES nodes (default 3); afterwards
#                SHOW NODES and CHECK CONSISTENCY regression in the admin console
#
# Each mode runs on fresh nodes (initdb), `pg_regress --max-connections=20`, then prints one
# line per test (`TEST  ok|FAILED|failed(ignored)|hung|skipped|not run  ms`) and a summary
# line (`MODE: N passed, N failed, N hung, N ignored, N not run (of 217 tests, …)`), and stops
# what it started. In replication mode it also prints SHOW NODES, the log's detach warnings
# and what CHECK CONSISTENCY found.
# A run whose output stalls for $PG_REGRESS_STALL seconds (default 300) counts as hung: the
# tests whose psql is still running are recorded as hung (with the nodes' pg_stat_activity
# in hung-N.txt) and the suite is run again on fresh nodes without them, up to 3 times, so
# every other test gets a result. $PG_REGRESS_TIMEOUT (default 2400) bounds one run.
#
# What it needs, fetched or built once into $PG_REGRESS_DIR (default /tmp/pgmulti-regress):
#   src/     the PostgreSQL source matching the installed server (apt-get source; as root
#            a deb-src line is added if there is none), only src/test/regress is unpacked
#   lib/     regress.so built from src/test/regress/regress.c with PGXS, and the server's
#            autoinc.so and refint.so (the suite loads all three from --dlpath)
#   pg_regress itself comes with postgresql-server-dev-15 (installed by apt-get as root;
#            as another user install it first).
# Per mode, kept for a look afterwards: $PG_REGRESS_DIR/MODE/
#   n0 n1 …            node data directories and nodeN.log
#   pgmulti.conf pgmulti.log
#   out/regression.diffs out/regression.out out/results/   pg_regress's output
#   pg_regress.log      pg_regress's standard output (the run that counted last)
#   results.tsv         test, status, ms — what the lines printed come from
#   nodes.txt consistency.txt   the admin console's SHOW NODES and CHECK CONSISTENCY
#
# Other settings: NODES; PG_REGRESS_SKIP='test …' leaves tests out of the schedule (reported
# as `skipped`); PG_REGRESS_PORT_BASE=N uses ports N (pgmulti), N+1 (metrics), N+10+i
# (node i) instead of free ones; PGMULTI_BIN instead of target/release/pgmulti (built with
# cargo when missing); PG_REGRESS_LOG_LEVEL (default info) for pgmulti's log.
# Runs as root (the nodes and pg_regress then run as `postgres`, which PostgreSQL needs) or
# as an ordinary user. Exit status 0 when every mode ran (failed tests are results, not
# errors); 1 when something could not be set up.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PG_BIN=/usr/lib/postgresql/15/bin
PG_REGRESS=/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress
DIR=${PG_REGRESS_DIR:-/tmp/pgmulti-regress}
STALL=${PG_REGRESS_STALL:-300}
TIMEOUT=${PG_REGRESS_TIMEOUT:-2400}
LOG_LEVEL=${PG_REGRESS_LOG_LEVEL:-info}
MAX_RETRIES=3

is_root() { [ "$(id -u)" -eq 0 ]; }
as_pg() { if is_root; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }
die() { echo "pg_regress.sh: $*" >&2; exit 1; }
free_port() {
    perl -MIO::Socket::INET -e \
        'print IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1", LocalPort => 0, Proto => "tcp")->sockport'
}
# Port $2 of the fixed range when PG_REGRESS_PORT_BASE is set, else a free one.
port_for() {
    if [ -n "${PG_REGRESS_PORT_BASE:-}" ]; then echo $((PG_REGRESS_PORT_BASE + $1)); else free_port; fi
}
# Hands $@ to the user the servers run as.
give_pg() { if is_root; then chown -R postgres:postgres "$@"; fi; }

MODES=("$@")
[ ${#MODES[@]} -gt 0 ] || MODES=(replication)
for m in "${MODES[@]}"; do
    case "$m" in direct | relay | replication) ;; *) echo "usage: $0 [direct|relay|replication]..." >&2; exit 2 ;; esac
done

[ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/psql" ] ||
    die "PostgreSQL 15 is missing: apt-get install postgresql-15 postgresql-client-15"
PG_VERSION=$(dpkg-query -W -f='${Version}' postgresql-15 2>/dev/null) || PG_VERSION=
PSQL_ADMIN="$PG_BIN/psql -X -q -At -h 127.0.0.1 -U postgres"

# --- what the suite needs, once ----------------------------------------------------------
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
if is_root && ! as_pg test -x "$DIR"; then
    die "user postgres cannot reach $DIR (the nodes and pg_regress run as postgres): set PG_REGRESS_DIR to a folder it can reach, e.g. under /tmp"
fi

if [ ! -x "$PG_REGRESS" ] || [ ! -d /usr/include/postgresql/15/server ]; then
    is_root || die "postgresql-server-dev-15 is missing (pg_regress, server headers): apt-get install postgresql-server-dev-15"
    echo "installing postgresql-server-dev-15"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "postgresql-server-dev-15${PG_VERSION:+=$PG_VERSION}" >"$DIR/apt.log" 2>&1 ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-server-dev-15 >>"$DIR/apt.log" 2>&1 ||
        die "apt-get install postgresql-server-dev-15 failed; see $DIR/apt.log"
fi

REGRESS_SRC=$(ls -d "$DIR"/src/postgresql-15*/src/test/regress 2>/dev/null | tail -1)
if [ -z "$REGRESS_SRC" ]; then
    mkdir -p "$DIR/src"
    fetch() { (cd "$DIR/src" && apt-get source --download-only "postgresql-15${1:+=$1}") >>"$DIR/src/apt-source.log" 2>&1; }
    if ! fetch "$PG_VERSION" && ! fetch ""; then
        if is_root && ! grep -rqs '^Types:.*deb-src\|^deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/; then
            echo "adding a deb-src line for apt-get source"
            for f in /etc/apt/sources.list.d/debian.sources; do
                [ -f "$f" ] && sed 's/^Types: deb$/Types: deb-src/' "$f" >/etc/apt/sources.list.d/pgmulti-deb-src.sources
            done
            [ -f /etc/apt/sources.list.d/pgmulti-deb-src.sources ] ||
                grep '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' >/etc/apt/sources.list.d/pgmulti-deb-src.list
            apt-get update -q >>"$DIR/src/apt-source.log" 2>&1
        fi
        fetch "$PG_VERSION" || fetch "" ||
            die "apt-get source postgresql-15 failed (a deb-src line is needed); see $DIR/src/apt-source.log"
    fi
    orig=$(ls "$DIR"/src/postgresql-15_*.orig.tar.* | tail -1)
    echo "unpacking src/test/regress from $(basename "$orig")"
    tar -xf "$orig" -C "$DIR/src" --wildcards '*/src/test/regress/*' || die "cannot unpack $orig"
    REGRESS_SRC=$(ls -d "$DIR"/src/postgresql-15*/src/test/regress | tail -1)
fi

LIB=$DIR/lib
if [ ! -f "$LIB/regress.so" ]; then
    echo "building regress.so"
    mkdir -p "$LIB"
    cp "$REGRESS_SRC/regress.c" "$LIB/"
    cat >"$LIB/Makefile" <<EOF
MODULES = regress
PG_CONFIG = $PG_BIN/pg_config
PGXS := \$(shell \$(PG_CONFIG) --pgxs)
include \$(PGXS)
EOF
    make -C "$LIB" with_llvm=no >"$LIB/build.log" 2>&1 || die "building regress.so failed; see $LIB/build.log"
fi
for so in autoinc refint; do
    [ -f "$LIB/$so.so" ] || cp "/usr/lib/postgresql/15/lib/$so.so" "$LIB/" || die "missing $so.so (postgresql-15)"
done
chmod -R a+rX "$DIR/src" "$LIB"

BIN=${PGMULTI_BIN:-}
need_pgmulti=0
for m in "${MODES[@]}"; do [ "$m" != direct ] && need_pgmulti=1; done
if [ "$need_pgmulti" = 1 ] && [ -z "$BIN" ]; then
    BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/pgmulti
    if [ ! -x "$BIN" ]; then
        echo "building pgmulti"
        (cd "$REPO" && cargo build --release -q) || die "cargo build --release failed"
    fi
fi

# --- one mode --------------------------------------------------------------------------
RUN= NODE_PORTS=() PM_PORT= PM_PID= NNODES=0

start_nodes() {
    local i data port
    NODE_PORTS=()
    for ((i = 0; i < NNODES; i++)); do
        data=$RUN/n$i
        port=$(port_for $((10 + i)))
        NODE_PORTS+=("$port")
        as_pg "$PG_BIN/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C >"$RUN/initdb-n$i.log" 2>&1 ||
            { cat "$RUN/initdb-n$i.log" >&2; return 1; }
        cat <<EOF | as_pg tee -a "$data/postgresql.conf" >/dev/null

# scripts/pg_regress.sh
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$RUN'
max_connections = 120
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
        as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$RUN/node$i.log" -w -t 60 start >/dev/null ||
            { echo "node $i did not start; see $RUN/node$i.log" >&2; tail -5 "$RUN/node$i.log" >&2; return 1; }
    done
}

stop_nodes() {
    local data
    for data in "$RUN"/n*; do
        # fast, not immediate: the data directories stay clean for a look afterwards (after a
        # crash recovery sequences read up to 32 values ahead).
        [ -f "$data/postmaster.pid" ] || continue
        as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 30 stop >/dev/null 2>&1 ||
            as_pg "$PG_BIN/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1
    done
}

start_pgmulti() {
    local mode=$1 i
    PM_PORT=$(port_for 0)
    {
        echo "# written by scripts/pg_regress.sh"
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $PM_PORT"
        echo "unix_socket_directories = '$RUN'"
        echo "mode = $mode"
        for ((i = 0; i < NNODES; i++)); do
            echo "backend_hostname$i = '127.0.0.1'"
            echo "backend_port$i = ${NODE_PORTS[$i]}"
            echo "backend_data_directory$i = '$RUN/n$i'"
        done
        echo "client_auth = trust"
        echo "admin_users = 'postgres'"
        echo "max_pool_size = 40"
        echo "metrics_port = $(port_for 1)"
        echo "log_file = '$RUN/pgmulti.log'"
        echo "log_level = $LOG_LEVEL"
    } >"$RUN/pgmulti.conf"
    "$BIN" -f "$RUN/pgmulti.conf" </dev/null >>"$RUN/pgmulti.out" 2>&1 &
    PM_PID=$!
    for _ in $(seq 1 100); do
        $PSQL_ADMIN -p "$PM_PORT" -d postgres -c 'select 1' >/dev/null 2>&1 && return 0
        kill -0 "$PM_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "pgmulti did not start; see $RUN/pgmulti.log and $RUN/pgmulti.out" >&2
    tail -5 "$RUN/pgmulti.out" "$RUN/pgmulti.log" >&2 2>/dev/null
    return 1
}

stop_pgmulti() {
    [ -n "$PM_PID" ] || return 0
    kill -TERM "$PM_PID" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$PM_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PM_PID" 2>/dev/null
    wait "$PM_PID" 2>/dev/null
    PM_PID=
}

REGRESS_PGID=
cleanup() {
    [ -n "$REGRESS_PGID" ] && kill -KILL -- "-$REGRESS_PGID" 2>/dev/null
    stop_pgmulti
    [ -n "$RUN" ] && stop_nodes
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The tests of parallel_schedule in order, one a line.
schedule_tests() {
    sed -n 's/^test: *//p' "$REGRESS_SRC/parallel_schedule" | tr ' ' '\n' | grep -v '^$'
}

# Runs pg_regress once against host 127.0.0.1:$1, skipping the tests in $2.
# Sets HUNG (tests still running at a stall) and RC.
run_suite() {
    local port=$1 skip=$2 sched=$RUN/schedule t last size now pid
    awk -v skip=" $skip " '
        /^test:/ { out = "test:"; for (i = 2; i <= NF; i++) if (index(skip, " " $i " ") == 0) out = out " " $i
                   if (out != "test:") print out; next }
        { print }' "$REGRESS_SRC/parallel_schedule" >"$sched"
    rm -rf "$RUN/out" && mkdir -p "$RUN/out" && give_pg "$RUN/out" "$sched"
    # Own process group, to stop pg_regress and its psql processes together.
    setsid bash -c 'cd "$1" && shift && exec "$@"' _ "$RUN/out" \
        $(is_root && echo runuser -u postgres --) \
        "$PG_REGRESS" --inputdir="$REGRESS_SRC" --outputdir="$RUN/out" --bindir="$PG_BIN" \
        --dlpath="$LIB" --schedule="$sched" --max-connections=20 \
        --host=127.0.0.1 --port="$port" --user=postgres --dbname=regression \
        >"$RUN/pg_regress.log" 2>&1 </dev/null &
    pid=$!
    REGRESS_PGID=$pid
    HUNG= RC=
    local start=$SECONDS last_change=$SECONDS last_size=-1
    while kill -0 "$pid" 2>/dev/null; do
        sleep 2
        size=$(stat -c %s "$RUN/pg_regress.log" 2>/dev/null || echo 0)
        if [ "$size" != "$last_size" ]; then last_size=$size; last_change=$SECONDS; fi
        if ((SECONDS - last_change >= STALL || SECONDS - start >= TIMEOUT)); then
            # The tests whose psql still runs: its standard output is results/T.out.
            HUNG=$(for p in $(ps -o pid=,comm= -s "$pid" 2>/dev/null | awk '$2 == "psql" { print $1 }'); do
                readlink "/proc/$p/fd/1"
            done | sed -n 's|.*/results/\(.*\)\.out$|\1|p' | sort -u | tr '\n' ' ')
            {
                echo "# stalled after $((SECONDS - start)) s; still running: ${HUNG:-?}"
                for ((i = 0; i < NNODES; i++)); do
                    echo "## node $i pg_stat_activity"
                    $PSQL_ADMIN -p "${NODE_PORTS[$i]}" -d postgres -F ' | ' -c \
                        "select pid, application_name, state, wait_event_type, wait_event, now() - query_start, left(regexp_replace(query, '\s+', ' ', 'g'), 300)
                         from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid() order by query_start" 2>&1
                done
            } >"$RUN/hung-$ATTEMPT.txt"
            kill -KILL -- "-$pid" 2>/dev/null
            break
        fi
    done
    wait "$pid" 2>/dev/null
    RC=$?
    REGRESS_PGID=
}

# Status of each test in pg_regress.log: lines `test T ... ok 12 ms`, `     T ... FAILED 3 ms`.
parse_log() {
    awk '/ \.\.\. / {
            line = $0; sub(/^test /, "", line); sub(/^ +/, "", line)
            split(line, a, / +\.\.\. +/); name = a[1]; gsub(/ /, "", name); rest = a[2]
            ms = ""; if (match(rest, /[0-9]+ ms/)) ms = substr(rest, RSTART, RLENGTH - 3)
            if (rest ~ /^ok/) st = "ok"; else if (rest ~ /failed \(ignored\)/) st = "failed(ignored)"; else if (rest ~ /^FAILED/) st = "FAILED"; else st = rest
            print name "\t" st "\t" ms }' "$RUN/pg_regress.log"
}

run_mode() {
    local mode=$1 target skip hung_all="" i
    RUN=$DIR/$mode
    case "$mode" in
        direct) NNODES=1 ;;
        relay) NNODES=${NODES:-1} ;;
        replication) NNODES=${NODES:-3} ;;
    esac
    # Stop what an interrupted earlier run of this mode left (its pids are in its data dirs).
    stop_nodes 2>/dev/null
    rm -rf "$RUN" && mkdir -p "$RUN" && chmod 755 "$RUN" && give_pg "$RUN"
    skip=${PG_REGRESS_SKIP:-}
    for ((ATTEMPT = 1; ATTEMPT <= MAX_RETRIES + 1; ATTEMPT++)); do
        if [ "$ATTEMPT" -gt 1 ]; then
            stop_pgmulti
            stop_nodes
            # Keep the earlier attempt's files for a look.
            mkdir -p "$RUN/attempt-$((ATTEMPT - 1))"
            for f in pg_regress.log pgmulti.log out; do
                [ -e "$RUN/$f" ] && mv "$RUN/$f" "$RUN/attempt-$((ATTEMPT - 1))/"
            done
            rm -rf "$RUN"/n[0-9]*
        fi
        echo "== $mode: $NNODES node(s)${skip:+, skipping: $skip}$([ "$ATTEMPT" -gt 1 ] && echo " (attempt $ATTEMPT)")"
        start_nodes || return 1
        target=${NODE_PORTS[0]}
        if [ "$mode" != direct ]; then
            start_pgmulti "$mode" || return 1
            target=$PM_PORT
        fi
        run_suite "$target" "$skip $hung_all"
        [ -e "$RUN/hung-$ATTEMPT.txt" ] || break
        if [ -z "$HUNG" ]; then
            echo "   stalled, and no test's psql is left running (see $RUN/hung-$ATTEMPT.txt); not retrying"
            break
        fi
        echo "   stalled; still running: $HUNG (see $RUN/hung-$ATTEMPT.txt)"
        hung_all="$hung_all $HUNG"
    done
    if [ "$mode" = replication ]; then
        $PSQL_ADMIN -p "$PM_PORT" -d pgmulti -F ' | ' -c 'SHOW NODES' >"$RUN/nodes.txt" 2>&1
        timeout 600 $PSQL_ADMIN -p "$PM_PORT" -d pgmulti -F ' | ' -c 'CHECK CONSISTENCY regression' >"$RUN/consistency.txt" 2>&1
    fi
    stop_pgmulti
    stop_nodes

    # One line per test of the full schedule.
    parse_log >"$RUN/parsed.tsv"
    local t st ms
    : >"$RUN/results.tsv"
    for t in $(schedule_tests); do
        st=$(awk -F'\t' -v t="$t" '$1 == t { print $2 "\t" $3 }' "$RUN/parsed.tsv" | tail -1)
        if [ -n "$st" ]; then
            printf '%s\t%s\n' "$t" "$st"
        elif [[ " $hung_all " == *" $t "* ]]; then
            printf '%s\thung\t\n' "$t"
        elif [[ " ${PG_REGRESS_SKIP:-} " == *" $t "* ]]; then
            printf '%s\tskipped\t\n' "$t"
        else
            printf '%s\tnot run\t\n' "$t"
        fi
    done >>"$RUN/results.tsv"
    awk -F'\t' '{ printf "%-28s %-16s %s\n", $1, $2, ($3 == "" ? "" : $3 " ms") }' "$RUN/results.tsv"
    if [ "$mode" = replication ]; then
        echo "-- SHOW NODES"
        cat "$RUN/nodes.txt"
        echo "-- nodes detached during the run (pgmulti.log)"
        grep -E 'WARN .*(detached|detaching)' "$RUN/pgmulti.log" | cut -c1-400
        echo "-- CHECK CONSISTENCY regression (differences and verdict)"
        grep -v '| same' "$RUN/consistency.txt" | head -40
    fi
    awk -F'\t' -v mode="$mode" -v nodes="$NNODES" '
        { n++ } $2 == "ok" { p++ } $2 == "FAILED" { f++ } $2 == "hung" { h++ } $2 == "failed(ignored)" { ig++ }
        $2 == "not run" || $2 == "skipped" { s++ }
        END { printf "%s: %d passed, %d failed, %d hung, %d ignored, %d not run (of %d tests, %d node(s)); files in %s\n",
              mode, p, f, h, ig, s, n, nodes, ENVIRON["RUN"] }' "$RUN/results.tsv"
}

export RUN
for m in "${MODES[@]}"; do
    run_mode "$m" || { echo "$m: could not be set up" >&2; exit 1; }
    export RUN
done
