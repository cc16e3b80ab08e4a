#!/usr/bin/env bash
# Quick start: local PostgreSQL 15 node(s) with pgmulti in front, to try pgmulti by hand.
#
#   scripts/quickstart.sh          create/start the nodes, (re)build and (re)start pgmulti
#   scripts/quickstart.sh stop     stop pgmulti and the nodes
#
# Everything lives in one folder it owns: $PGMULTI_QUICKSTART_DIR (default ./.quickstart).
#   node<i>.port, pgmulti.port   ports picked once, reused by later runs
#   pg/                          node data dirs (node<i>/), their logs and Unix sockets;
#                                owned by `postgres` when run as root (PostgreSQL refuses root)
#   pgmulti.conf, userlist.txt   pgmulti's config and users file (demo / demo)
#   pgmulti.pid, pgmulti.log, pgmulti.out
#
# NODES (default 3) sets how many nodes to run: 3 (or any number above 1) gives
# `mode = replication` over all of them; 1 gives `mode = relay` in front of node 0.
# MODE=streaming makes node 0 a primary and the others its hot standbys (pg_basebackup,
# PostgreSQL's streaming replication), with pgmulti in `mode = streaming`; a folder made for
# one mode is not reused for the other (stop, delete it). Re-running is safe: running nodes are
# reused, pgmulti is restarted. To start from scratch: stop, then delete the folder (and the
# folder pg/ points to, if it is a symlink).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
QS=${PGMULTI_QUICKSTART_DIR:-$PWD/.quickstart}
NODES=${NODES:-3}
MODE=${MODE:-}
if [ -n "$MODE" ] && [ "$MODE" != streaming ]; then
    echo "MODE is 'streaming' or unset" >&2
    exit 2
fi
PG_BIN=/usr/lib/postgresql/15/bin
DEMO_USER=demo
DEMO_PASSWORD=demo

mkdir -p "$QS"
QS=$(cd "$QS" && pwd)
PGROOT=$QS/pg
# pg/ is a symlink when an earlier run had to keep node data elsewhere (see below).
if [ -L "$PGROOT" ]; then PGROOT=$(readlink -m "$PGROOT"); fi

is_root() { [ "$(id -u)" -eq 0 ]; }

# Runs a PostgreSQL server program (initdb, pg_ctl) as `postgres` when we are root.
as_pg() {
    if is_root; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

# A TCP port on 127.0.0.1 that is free right now.
free_port() {
    perl -MIO::Socket::INET -e \
        'print IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1", LocalPort => 0, Proto => "tcp")->sockport'
}

# The port stored in file $1, picking and storing a free one on first use.
stored_port() {
    [ -s "$1" ] || free_port >"$1"
    cat "$1"
}

# True if something accepts TCP connections on 127.0.0.1:$1.
accepts() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pgmulti_pid() {
    local pid
    pid=$(cat "$QS/pgmulti.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

stop_pgmulti() {
    local pid i
    if pid=$(pgmulti_pid); then
        kill -TERM "$pid"
        for i in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
        echo "stopped pgmulti (pid $pid)"
    fi
    rm -f "$QS/pgmulti.pid"
    # A killed pgmulti leaves its Unix socket behind; nothing else owns that name.
    if [ -s "$QS/pgmulti.port" ]; then rm -f "$QS/.s.PGSQL.$(cat "$QS/pgmulti.port")"{,.lock}; fi
}

stop_nodes() {
    local data
    for data in "$PGROOT"/node*; do
        [ -f "$data/PG_VERSION" ] || continue
        if as_pg "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then
            as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null
            echo "stopped node $(basename "$data")"
        fi
    done
}

if [ "${1:-}" = "stop" ]; then
    stop_pgmulti
    stop_nodes
    exit 0
elif [ $# -gt 0 ]; then
    echo "usage: $0 [stop]" >&2
    exit 2
fi

if [ ! -x "$PG_BIN/initdb" ] || ! command -v psql >/dev/null; then
    echo "PostgreSQL 15 is missing: apt-get install postgresql-15 postgresql-client-15" >&2
    exit 1
fi

# --- node data root: must be writable by the user that runs the servers -------------------
if is_root; then
    mkdir -p "$PGROOT"
    chown postgres:postgres "$PGROOT"
    if ! as_pg test -w "$PGROOT" 2>/dev/null; then
        # A parent of $QS is closed to `postgres` (e.g. under /root): keep the data elsewhere
        # and point pg/ at it.
        alt=/var/tmp/pgmulti-quickstart-$(printf '%s' "$QS" | md5sum | cut -c1-12)
        mkdir -p "$alt"
        chown postgres:postgres "$alt"
        rmdir "$PGROOT"
        ln -s "$alt" "$QS/pg"
        PGROOT=$alt
        echo "note: $QS is not reachable by user postgres; node data lives in $alt"
    fi
else
    mkdir -p "$PGROOT"
fi

# --- nodes ----------------------------------------------------------------------------------
node_ports=()
for ((i = 0; i < NODES; i++)); do
    data=$PGROOT/node$i
    port=$(stored_port "$QS/node$i.port")
    node_ports+=("$port")
    if [ ! -f "$data/PG_VERSION" ] && [ "$MODE" = streaming ] && [ "$i" -gt 0 ]; then
        echo "creating node $i (port $port), a standby of node 0"
        as_pg "$PG_BIN/pg_basebackup" -h "$PGROOT" -p "${node_ports[0]}" -U postgres -D "$data" \
            -R -X stream -c fast >"$QS/basebackup-node$i.log" 2>&1 ||
            { cat "$QS/basebackup-node$i.log" >&2; exit 1; }
        printf '\n# scripts/quickstart.sh: standby of node 0\nport = %s\nhot_standby = on\n' "$port" |
            as_pg tee -a "$data/postgresql.conf" >/dev/null
    fi
    if [ ! -f "$data/PG_VERSION" ]; then
        echo "creating node $i (port $port)"
        as_pg "$PG_BIN/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
            -E UTF8 --locale=C >"$QS/initdb-node$i.log" 2>&1 ||
            { cat "$QS/initdb-node$i.log" >&2; exit 1; }
        cat <<EOF | as_pg tee -a "$data/postgresql.conf" >/dev/null

# scripts/quickstart.sh
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGROOT'
port = $port
max_connections = 100
shared_buffers = 64MB
password_encryption = 'scram-sha-256'
EOF
    fi
    if as_pg "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        echo "node $i already running (port $port)"
    else
        as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$PGROOT/node$i.log" -o "-p $port" -w -t 60 start >/dev/null ||
            { echo "node $i failed to start; see $PGROOT/node$i.log" >&2; tail -20 "$PGROOT/node$i.log" >&2; exit 1; }
        echo "node $i started (port $port)"
    fi
    node_psql() { psql -X -q -At -h "$PGROOT" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
    # A standby has what its primary has.
    [ "$(node_psql -c 'SELECT pg_is_in_recovery()')" = t ] && continue
    if [ -z "$(node_psql -c "SELECT 1 FROM pg_roles WHERE rolname = '$DEMO_USER'")" ]; then
        node_psql -c "CREATE ROLE $DEMO_USER LOGIN PASSWORD '$DEMO_PASSWORD'"
    fi
    if [ -z "$(node_psql -c "SELECT 1 FROM pg_database WHERE datname = '$DEMO_USER'")" ]; then
        node_psql -c "CREATE DATABASE $DEMO_USER OWNER $DEMO_USER"
    fi
    # pgmulti's own connections (health_check_user, in health_check_database) promote a
    # standby after a failover; a function's rights are kept per database.
    if [ "$MODE" = streaming ]; then
        psql -X -q -At -h "$PGROOT" -p "$port" -U postgres -d "$DEMO_USER" -v ON_ERROR_STOP=1 \
            -c "GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO $DEMO_USER"
    fi
done

# --- pgmulti config -------------------------------------------------------------------------
pm_port=$(stored_port "$QS/pgmulti.port")
metrics_port=$(stored_port "$QS/metrics.port")
mode=relay
[ "$NODES" -gt 1 ] && mode=replication
[ "$MODE" = streaming ] && mode=streaming
printf '"%s" "%s"\n' "$DEMO_USER" "$DEMO_PASSWORD" >"$QS/userlist.txt"
chmod 600 "$QS/userlist.txt"
{
    echo "# written by scripts/quickstart.sh; edited copies are overwritten on the next run"
    echo "listen_addresses = '127.0.0.1'"
    echo "port = $pm_port"
    echo "unix_socket_directories = '$QS'"
    echo "mode = '$mode'"
    for ((i = 0; i < NODES; i++)); do
        echo "backend_hostname$i = '127.0.0.1'"
        echo "backend_port$i = ${node_ports[$i]}"
        echo "backend_data_directory$i = '$PGROOT/node$i'"
    done
    # Online recovery (RECOVER NODE n) with the shipped scripts, over the nodes' Unix socket
    # directory (local connections are trusted here; TCP needs a password).
    if [ "$mode" = replication ]; then
        for stage in 1st 2nd; do
            echo "recovery_${stage}_stage_command = '$REPO/scripts/recovery_${stage}_stage.sh %d $PGROOT %p %D %m $PGROOT %r %R'"
        done
    fi
    # Streaming: RECOVER NODE n rebuilds a standby with pg_basebackup (stage 1 alone), and
    # after a failover the other standbys follow the promoted one.
    if [ "$mode" = streaming ]; then
        echo "recovery_1st_stage_command = '$REPO/scripts/recovery_1st_stage.sh %d $PGROOT %p %D %m $PGROOT %r %R'"
        echo "follow_primary_command = '$REPO/scripts/follow_primary.sh $PGROOT %p $PGROOT %r postgres'"
    fi
    echo "metrics_port = $metrics_port"
    echo "auth_file = '$QS/userlist.txt'"
    echo "client_auth = 'scram-sha-256'"
    echo "log_file = '$QS/pgmulti.log'"
    echo "log_level = 'info'"
    echo "preconnect = '$DEMO_USER:$DEMO_USER'"
    echo "health_check_user = '$DEMO_USER'"
    echo "health_check_database = '$DEMO_USER'"
    echo "admin_users = '$DEMO_USER'"
} >"$QS/pgmulti.conf"

# --- build and (re)start pgmulti ------------------------------------------------------------
(cd "$REPO" && cargo build --release)
bin=${CARGO_TARGET_DIR:-$REPO/target}/release/pgmulti
stop_pgmulti
if accepts "$pm_port"; then
    echo "port $pm_port is taken by another program; remove $QS/pgmulti.port and re-run" >&2
    exit 1
fi
# Own session, so closing the terminal does not stop it.
setsid "$bin" -f "$QS/pgmulti.conf" </dev/null >>"$QS/pgmulti.out" 2>&1 &
echo $! >"$QS/pgmulti.pid"

for _ in $(seq 1 100); do
    if ! pgmulti_pid >/dev/null; then
        echo "pgmulti exited during start-up:" >&2
        for f in "$QS/pgmulti.out" "$QS/pgmulti.log"; do
            if [ -s "$f" ]; then echo "--- $f" >&2; tail -n 20 "$f" >&2; fi
        done
        rm -f "$QS/pgmulti.pid"
        exit 1
    fi
    accepts "$pm_port" && break
    sleep 0.1
done
if ! accepts "$pm_port"; then
    echo "pgmulti does not accept connections on port $pm_port after 10 s; see $QS/pgmulti.log" >&2
    exit 1
fi

cat <<EOF

pgmulti is running ($mode mode, pid $(cat "$QS/pgmulti.pid"), log $QS/pgmulti.log).
Connect (password: $DEMO_PASSWORD):
    psql "host=127.0.0.1 port=$pm_port user=$DEMO_USER dbname=$DEMO_USER"
Admin console (SHOW NODES, CHECK CONSISTENCY, RECOVER NODE n, … see docs/operations.md):
    psql "host=127.0.0.1 port=$pm_port user=$DEMO_USER dbname=pgmulti"
Metrics:
    curl http://127.0.0.1:$metrics_port/metrics
Stop everything:
    scripts/quickstart.sh stop
EOF
