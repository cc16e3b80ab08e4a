#!/usr/bin/env bash
# pgmulti online recovery, stage 1 (RECOVER NODE n): turn the detached node into a streaming
# standby of the lead node while clients keep writing through pgmulti.
#
#   recovery_1st_stage.sh <node id> <node host> <node port> <node data dir>
#                         <lead id> <lead host> <lead port> <lead data dir>
#   (pgmulti: recovery_1st_stage_command = '.../recovery_1st_stage.sh %d %h %p %D %m %H %r %R')
#
# Steps: check that the lead accepts normal and replication connections; stop the node if it
# runs (immediate); keep the node's own postgresql.conf / pg_hba.conf / pg_ident.conf if they
# exist; empty its data directory; pg_basebackup from the lead (-X stream -R, through the
# replication slot pgmulti_recovery_<node id>, so the lead keeps every WAL segment the standby
# still needs); set `port` in postgresql.auto.conf; start it with pg_ctl and wait until it
# streams from the lead. Stage 2 (recovery_2nd_stage.sh) promotes it and drops the slot.
#
# PostgreSQL 15 nodes on this machine. Environment:
#   PGMULTI_RECOVERY_USER  superuser for psql / pg_basebackup to both nodes (default postgres)
#   PGMULTI_PGBIN          server binaries (default /usr/lib/postgresql/15/bin)
# Run as root, server programs and data-directory changes run as the owner of the lead's data
# directory. The node's server log is <node data dir>/server.log. Exit 0 = success.
set -euo pipefail

PROG=recovery_1st_stage
say() { printf '%s: %s\n' "$PROG" "$*"; }
die() { printf '%s: ERROR: %s\n' "$PROG" "$*" >&2; exit 1; }

if [ "$#" -ne 8 ]; then
    die "expected 8 arguments (node id, host, port, data dir, lead id, host, port, data dir), got $#: '$*'" \
        "(are backend_data_directory<N> set for both nodes?)"
fi
NODE_ID=$1 NODE_HOST=$2 NODE_PORT=$3 NODE_DIR=$4
LEAD_ID=$5 LEAD_HOST=$6 LEAD_PORT=$7 LEAD_DIR=$8
PGBIN=${PGMULTI_PGBIN:-/usr/lib/postgresql/15/bin}
DBUSER=${PGMULTI_RECOVERY_USER:-postgres}
SLOT=pgmulti_recovery_$NODE_ID
export PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-10}
START=$SECONDS

case $NODE_ID in ''|*[!0-9]*) die "node id '$NODE_ID' is not a number" ;; esac
case $NODE_DIR in /?*) ;; *) die "node data directory '$NODE_DIR' is not an absolute path" ;; esac
case $LEAD_DIR in /?*) ;; *) die "lead data directory '$LEAD_DIR' is not an absolute path" ;; esac
NODE_DIR=$(realpath -m -- "$NODE_DIR")
[ "$NODE_DIR" != / ] || die "refusing to use / as the node's data directory"
[ "$NODE_DIR" != "$(realpath -m -- "$LEAD_DIR")" ] || die "node and lead have the same data directory '$NODE_DIR'"
[ -x "$PGBIN/pg_basebackup" ] || die "no pg_basebackup in $PGBIN (set PGMULTI_PGBIN)"
PSQL=$PGBIN/psql; [ -x "$PSQL" ] || PSQL=psql
cd /    # the owner of the data directory may not be allowed into the caller's directory

# As root, server programs run as the owner of the lead's data directory (PostgreSQL refuses
# to run as root); otherwise as ourselves.
if [ "$(id -u)" -eq 0 ]; then
    OWNER=$(stat -c %U -- "$LEAD_DIR" 2>/dev/null) || die "cannot stat lead data directory '$LEAD_DIR'"
    OWNER_GROUP=$(stat -c %G -- "$LEAD_DIR")
    [ "$OWNER" != root ] || die "lead data directory '$LEAD_DIR' is owned by root; PostgreSQL cannot run as root"
    as_owner() { runuser -u "$OWNER" -- "$@"; }
else
    OWNER=$(id -un)
    as_owner() { "$@"; }
fi

# libpq connection string with every value quoted.
conninfo() { # host port [key=value...]
    local out kv
    out="host='$(q "$1")' port='$(q "$2")' user='$(q "$DBUSER")'"
    shift 2
    for kv in "$@"; do out+=" ${kv%%=*}='$(q "${kv#*=}")'"; done
    printf '%s' "$out"
}
q() { local v=${1//\\/\\\\}; printf '%s' "${v//\'/\\\'}"; }
# psql_at host port sql [extra conninfo...]: one query, unaligned, no headers; stderr kept.
psql_at() {
    local host=$1 port=$2 sql=$3
    shift 3
    "$PSQL" -X -w -A -t -q -v ON_ERROR_STOP=1 -d "$(conninfo "$host" "$port" dbname=postgres "$@")" -c "$sql"
}
lead_sql() { psql_at "$LEAD_HOST" "$LEAD_PORT" "$1"; }

# ---- 1. The lead: reachable, replication allowed, nothing we cannot copy. ----
say "node $NODE_ID ($NODE_HOST:$NODE_PORT, $NODE_DIR) from lead node $LEAD_ID ($LEAD_HOST:$LEAD_PORT) as $DBUSER, programs run as $OWNER"
if ! out=$(lead_sql "SELECT current_setting('server_version_num')::int / 10000, current_setting('wal_level'),
                            (SELECT count(*) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global'))" 2>&1); then
    die "cannot connect to lead node $LEAD_ID at $LEAD_HOST:$LEAD_PORT as $DBUSER: $out"
fi
IFS='|' read -r LEAD_MAJOR WAL_LEVEL TABLESPACES <<<"$out"
[ "$WAL_LEVEL" != minimal ] || die "lead has wal_level = minimal; set wal_level = replica (and max_wal_senders > 0) on it and restart it"
[ "$TABLESPACES" = 0 ] || die "lead has $TABLESPACES user tablespace(s); a same-machine base backup would collide with them (not supported)"
PG_MAJOR=$("$PGBIN/pg_basebackup" --version | awk '{ split($3, v, "."); print v[1] }')
[ "$LEAD_MAJOR" = "$PG_MAJOR" ] || die "lead runs PostgreSQL $LEAD_MAJOR but $PGBIN is PostgreSQL $PG_MAJOR (set PGMULTI_PGBIN)"
if ! out=$(psql_at "$LEAD_HOST" "$LEAD_PORT" IDENTIFY_SYSTEM replication=true 2>&1); then
    case $out in
        *pg_hba.conf*)
            case $LEAD_HOST in
                /*) line="local replication $DBUSER trust" ;;
                *) line="host replication $DBUSER <this machine's address>/32 trust" ;;
            esac
            hint="add '$line' (or scram-sha-256 and a .pgpass) to the lead's pg_hba.conf, then reload the lead" ;;
        *max_wal_senders*) hint="raise max_wal_senders on the lead" ;;
        *) hint="" ;;
    esac
    die "lead node $LEAD_ID at $LEAD_HOST:$LEAD_PORT refuses a replication connection as $DBUSER: $out${hint:+ -- $hint}"
fi
say "lead is reachable and accepts replication connections"
if [ -d "$NODE_DIR" ] && [ -n "$(ls -A -- "$NODE_DIR")" ] && [ ! -f "$NODE_DIR/PG_VERSION" ]; then
    die "'$NODE_DIR' is not empty and not a PostgreSQL data directory (no PG_VERSION); refusing to wipe it"
fi

# ---- 2. Stop the node if it runs. ----
node_answers() { "$PGBIN/pg_isready" -q -h "$NODE_HOST" -p "$NODE_PORT" -t 3 >/dev/null 2>&1; }
if [ -f "$NODE_DIR/postmaster.pid" ]; then
    say "stopping node $NODE_ID (pg_ctl stop -m immediate)"
    as_owner "$PGBIN/pg_ctl" -D "$NODE_DIR" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
fi
# A postmaster whose data directory was wiped under it has no postmaster.pid for pg_ctl; find
# it by its working directory (its data directory, "(deleted)" if removed) and stop it.
postmasters() {
    local p cwd parent
    for p in /proc/[0-9]*; do
        [ "$(cat "$p/comm" 2>/dev/null)" = postgres ] || continue
        cwd=$(readlink "$p/cwd" 2>/dev/null) || continue
        [ "$cwd" = "$NODE_DIR" ] || [ "$cwd" = "$NODE_DIR (deleted)" ] || continue
        parent=$(awk '{print $4}' "$p/stat" 2>/dev/null) || continue
        [ "$(cat "/proc/$parent/comm" 2>/dev/null)" != postgres ] || continue   # a backend
        printf '%s\n' "${p#/proc/}"
    done
}
pids=$(postmasters)
if [ -n "$pids" ]; then
    say "stopping node $NODE_ID (postmaster ${pids//$'\n'/ }, SIGQUIT)"
    for pid in $pids; do kill -QUIT "$pid" 2>/dev/null || die "cannot signal postmaster $pid of node $NODE_ID"; done
    for _ in $(seq 1 30); do [ -n "$(postmasters)" ] || break; sleep 1; done
    [ -z "$(postmasters)" ] || die "postmaster ${pids//$'\n'/ } of node $NODE_ID does not stop"
fi
! node_answers || die "node $NODE_ID is stopped but a server still answers at $NODE_HOST:$NODE_PORT (another server on that port?)"

# ---- 3. A stale slot from an earlier attempt would keep WAL forever; drop it. ----
drop_slot_sql="SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$SLOT'"
for i in $(seq 1 10); do
    out=$(lead_sql "SELECT active FROM pg_replication_slots WHERE slot_name = '$SLOT'") || die "cannot read pg_replication_slots on the lead"
    [ "$out" = t ] || break
    [ "$i" -lt 10 ] || die "replication slot $SLOT on the lead is in use by another standby"
    sleep 1
done
if [ "$out" = f ]; then
    say "dropping stale replication slot $SLOT on the lead"
    lead_sql "$drop_slot_sql" >/dev/null
fi

# ---- 4. Empty the node's data directory, keeping its own configuration files. ----
KEEP=$(mktemp -d)
slot_made=false node_started=false ok=false
cleanup() {
    rm -rf -- "$KEEP"
    if [ "$ok" != true ]; then
        if [ "$node_started" = true ]; then
            as_owner "$PGBIN/pg_ctl" -D "$NODE_DIR" -m fast -w -t 30 stop >/dev/null 2>&1 || true
        fi
        if [ "$slot_made" = true ]; then lead_sql "$drop_slot_sql" >/dev/null 2>&1 || true; fi
    fi
}
trap cleanup EXIT
trap 'die "interrupted by a signal; undoing"' INT TERM HUP
kept=
for f in postgresql.conf pg_hba.conf pg_ident.conf; do
    if [ -f "$NODE_DIR/$f" ]; then cp -p -- "$NODE_DIR/$f" "$KEEP/$f"; kept+=" $f"; fi
done
if [ -n "$kept" ]; then say "keeping the node's own$kept"; fi
say "emptying $NODE_DIR"
if [ "$(id -u)" -eq 0 ]; then
    mkdir -p -- "$NODE_DIR"
    find "$NODE_DIR" -mindepth 1 -delete
    chown "$OWNER:$OWNER_GROUP" "$NODE_DIR"
else
    mkdir -p -- "$NODE_DIR" || die "cannot create '$NODE_DIR' as $OWNER (create it owned by $OWNER, or run this as root)"
    find "$NODE_DIR" -mindepth 1 -delete || die "cannot empty '$NODE_DIR'"
fi
chmod 700 "$NODE_DIR"

# ---- 5. Base backup: a standby of the lead, fed through the slot. ----
say "pg_basebackup from lead node $LEAD_ID (slot $SLOT)"
t0=$SECONDS
slot_made=true
if ! out=$(as_owner "$PGBIN/pg_basebackup" -w -h "$LEAD_HOST" -p "$LEAD_PORT" -U "$DBUSER" -D "$NODE_DIR" \
        -X stream -R -c fast -C -S "$SLOT" 2>&1); then
    die "pg_basebackup failed: $out"
fi
say "base backup done in $((SECONDS - t0)) s ($(du -sh -- "$NODE_DIR" | cut -f1))"

# Socket lock files copied from the lead's data directory belong to the lead.
find "$NODE_DIR" -maxdepth 1 -name '.s.PGSQL.*' -delete
for f in "$KEEP"/*; do
    [ -e "$f" ] || continue
    cp -p -- "$f" "$NODE_DIR/"
    if [ "$(id -u)" -eq 0 ]; then chown "$OWNER:$OWNER_GROUP" "$NODE_DIR/$(basename -- "$f")"; fi
done
# postgresql.conf may be the lead's (copied now or by an earlier recovery), with the lead's
# port and Unix socket directories; the last setting wins. A socket directory inside the
# lead's data directory becomes the same place in the node's, and a node host that is a
# directory (where pgmulti looks for the node's socket) is added.
settings="port = $NODE_PORT"$'\n'"hot_standby = on"
current=$(as_owner "$PGBIN/postgres" -D "$NODE_DIR" -C unix_socket_directories) \
    || die "cannot read unix_socket_directories from the node's configuration"
sockets='' lead_dir=$(realpath -m -- "$LEAD_DIR")
case $NODE_HOST in /*) sockets=$NODE_HOST ;; esac
IFS=, read -r -a entries <<<"$current"
for e in "${entries[@]}"; do
    e=${e#"${e%%[! ]*}"}
    for prefix in "$lead_dir" "${LEAD_DIR%/}"; do
        case $e in "$prefix" | "$prefix"/*) e=$NODE_DIR${e#"$prefix"}; break ;; esac
    done
    case ", $sockets, " in *", $e, "*) ;; *) sockets+=${sockets:+, }$e ;; esac
done
if [ "$sockets" != "$current" ]; then
    settings+=$'\n'"unix_socket_directories = '${sockets//\'/\'\'}'"
fi
printf '# pgmulti online recovery of node %s\n%s\n' "$NODE_ID" "$settings" \
    | as_owner tee -a "$NODE_DIR/postgresql.auto.conf" >/dev/null

# ---- 6. Start it and wait until it streams from the lead. ----
LOG=$NODE_DIR/server.log
say "starting node $NODE_ID on port $NODE_PORT (log $LOG)"
node_started=true
if ! out=$(as_owner "$PGBIN/pg_ctl" -D "$NODE_DIR" -l "$LOG" -w -t 120 start 2>&1); then
    die "node $NODE_ID did not start: $out
end of $LOG:
$(tail -n 15 -- "$LOG" 2>/dev/null)"
fi
status=
for _ in $(seq 1 60); do
    status=$(psql_at "$NODE_HOST" "$NODE_PORT" "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'no-walreceiver')
        || CASE WHEN pg_is_in_recovery() THEN ' standby ' ELSE ' primary ' END
        || coalesce(pg_last_wal_replay_lsn()::text, '-')" 2>&1) || status="unreachable: $status"
    case $status in 'streaming standby '*) break ;; esac
    sleep 1
done
case $status in
    'streaming standby '*) ;;
    *) die "node $NODE_ID started but does not stream from the lead (status: $status); end of $LOG:
$(tail -n 15 -- "$LOG" 2>/dev/null)" ;;
esac
ok=true
say "node $NODE_ID is a standby streaming from lead node $LEAD_ID (replayed up to ${status##* }); stage 1 done in $((SECONDS - START)) s"
