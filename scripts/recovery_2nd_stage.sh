#!/usr/bin/env bash
# pgmulti online recovery, stage 2 (RECOVER NODE n): make the standby left by stage 1 an
# independent primary identical to the lead. pgmulti runs it with new transactions paused and
# none running, so the lead receives no writes meanwhile.
#
#   recovery_2nd_stage.sh <node id> <node host> <node port> <node data dir>
#                         <lead id> <lead host> <lead port> <lead data dir>
#   (pgmulti: recovery_2nd_stage_command = '.../recovery_2nd_stage.sh %d %h %p %D %m %H %r %R')
#
# Steps: check that the node is a standby of the lead; wait until it has replayed all WAL the
# lead has inserted (bounded); promote it; drop primary_conninfo / primary_slot_name; then in
# every database (datallowconn and not a template): copy the contents of unlogged tables
# (never WAL-logged, so empty after promotion) and set every sequence to the lead's
# last_value / is_called (a standby's sequences are up to 32 values ahead), and check they
# match; finally drop the lead's replication slot pgmulti_recovery_<node id>.
#
# Only SQL connections; no file access. Environment:
#   PGMULTI_RECOVERY_USER     superuser for psql to both nodes (default postgres)
#   PGMULTI_RECOVERY_TIMEOUT  seconds to wait for catch-up and for promotion (default 60)
#   PGMULTI_PGBIN             PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
# Exit 0 = success.
set -euo pipefail

PROG=recovery_2nd_stage
say() { printf '%s: %s\n' "$PROG" "$*"; }
die() { printf '%s: ERROR: %s\n' "$PROG" "$*" >&2; exit 1; }

if [ "$#" -ne 8 ]; then
    die "expected 8 arguments (node id, host, port, data dir, lead id, host, port, data dir), got $#: '$*'" \
        "(are backend_data_directory<N> set for both nodes?)"
fi
NODE_ID=$1 NODE_HOST=$2 NODE_PORT=$3 NODE_DIR=$4
LEAD_ID=$5 LEAD_HOST=$6 LEAD_PORT=$7
DBUSER=${PGMULTI_RECOVERY_USER:-postgres}
TIMEOUT=${PGMULTI_RECOVERY_TIMEOUT:-60}
PGBIN=${PGMULTI_PGBIN:-/usr/lib/postgresql/15/bin}
PSQL=$PGBIN/psql; [ -x "$PSQL" ] || PSQL=psql
SLOT=pgmulti_recovery_$NODE_ID
export PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-10}
START=$SECONDS
case $NODE_ID in ''|*[!0-9]*) die "node id '$NODE_ID' is not a number" ;; esac
case $TIMEOUT in ''|*[!0-9]*) die "PGMULTI_RECOVERY_TIMEOUT '$TIMEOUT' is not a number of seconds" ;; esac
cd /

q() { local v=${1//\\/\\\\}; printf '%s' "${v//\'/\\\'}"; }
conninfo() { printf "host='%s' port='%s' user='%s' dbname='%s'" "$(q "$1")" "$(q "$2")" "$(q "$DBUSER")" "$(q "$3")"; }
# psql_at host port db [psql args...]: unaligned, no headers, stop at the first error.
psql_at() {
    local host=$1 port=$2 db=$3
    shift 3
    "$PSQL" -X -w -A -t -q -v ON_ERROR_STOP=1 -d "$(conninfo "$host" "$port" "$db")" "$@"
}
lead() { local db=$1; shift; psql_at "$LEAD_HOST" "$LEAD_PORT" "$db" "$@"; }
node() { local db=$1; shift; psql_at "$NODE_HOST" "$NODE_PORT" "$db" "$@"; }

# ---- 1. The node is a running standby of the lead. ----
say "node $NODE_ID ($NODE_HOST:$NODE_PORT, $NODE_DIR), lead node $LEAD_ID ($LEAD_HOST:$LEAD_PORT), as $DBUSER"
out=$(node postgres -c "SELECT pg_is_in_recovery(), system_identifier FROM pg_control_system()" 2>&1) \
    || die "cannot connect to node $NODE_ID at $NODE_HOST:$NODE_PORT (is it running? stage 1 starts it): $out"
IFS='|' read -r NODE_RECOVERY NODE_SYSID <<<"$out"
LEAD_SYSID=$(lead postgres -c "SELECT system_identifier FROM pg_control_system()" 2>&1) \
    || die "cannot connect to lead node $LEAD_ID at $LEAD_HOST:$LEAD_PORT: $LEAD_SYSID"
[ "$NODE_RECOVERY" = t ] || die "node $NODE_ID is not a standby (not in recovery); run stage 1 first"
[ "$NODE_SYSID" = "$LEAD_SYSID" ] \
    || die "node $NODE_ID (system $NODE_SYSID) is not a copy of lead node $LEAD_ID (system $LEAD_SYSID); run stage 1 first"

# ---- 2. Wait until the node has replayed everything the lead has inserted. ----
# The insert position covers asynchronous commits not yet flushed. When the last record ends
# exactly on a WAL page boundary, the insert position is reported after the next page's
# header, where no record will end: that case counts as caught up too.
TARGET=$(lead postgres -c "SELECT pg_current_wal_insert_lsn()")
say "waiting (up to $TIMEOUT s) for node $NODE_ID to replay the lead's WAL up to $TARGET"
caught_up_sql="SELECT CASE WHEN r >= t OR (pg_wal_lsn_diff(r, '0/0') % b = 0 AND pg_wal_lsn_diff(t, r) IN (24, 40)
                          AND pg_wal_lsn_diff(t, '0/0') % b IN (24, 40)) THEN 'yes' ELSE 'no' END
                      || ' ' || coalesce(r::text, '-') || ' ' || coalesce(pg_last_wal_receive_lsn()::text, '-')
                      || ' ' || coalesce((SELECT status FROM pg_stat_wal_receiver), 'no-walreceiver')
               FROM (SELECT pg_last_wal_replay_lsn() AS r, '$TARGET'::pg_lsn AS t,
                            current_setting('wal_block_size')::numeric AS b) s"
t0=$SECONDS
while :; do
    state=$(node postgres -c "$caught_up_sql" 2>&1) || die "lost node $NODE_ID while waiting: $state"
    case $state in yes\ *) break ;; esac
    if [ $((SECONDS - t0)) -ge "$TIMEOUT" ]; then
        read -r _ replay received receiver <<<"$state"
        die "node $NODE_ID did not catch up within $TIMEOUT s: lead at $TARGET, node received $received," \
            "replayed $replay, wal receiver: $receiver (see the node's server log, e.g. $NODE_DIR/server.log)"
    fi
    sleep 0.2
done
say "caught up in $((SECONDS - t0)) s (replayed ${state#yes }); promoting node $NODE_ID"

# ---- 3. Promote, and forget the lead. ----
out=$(node postgres -c "SELECT pg_promote(true, $TIMEOUT)" 2>&1) || die "pg_promote failed on node $NODE_ID: $out"
[ "$out" = t ] || die "node $NODE_ID did not finish promotion within $TIMEOUT s"
for _ in $(seq 1 "$((TIMEOUT * 5))"); do
    out=$(node postgres -c "SELECT pg_is_in_recovery()" 2>&1) || die "lost node $NODE_ID after promotion: $out"
    [ "$out" = t ] || break
    sleep 0.2
done
[ "$out" = f ] || die "node $NODE_ID is still in recovery after promotion"
node postgres -c "ALTER SYSTEM RESET primary_conninfo" -c "ALTER SYSTEM RESET primary_slot_name" \
    -c "SELECT pg_reload_conf()" >/dev/null || die "cannot remove primary_conninfo / primary_slot_name on node $NODE_ID"
say "node $NODE_ID is a primary"

# ---- 4. Per database: unlogged tables and sequences as on the lead. ----
# One statement per sequence, `SELECT pg_catalog.setval('<name>', <last_value>, <is_called>);`,
# in name order: generated on the lead, run on the node, then generated on the node and compared.
seq_sql="SELECT format('SELECT format(%L, %L, last_value, is_called) FROM %s',
                       'SELECT pg_catalog.setval(%L, %s, %L);', name, name)
         FROM (SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind = 'S' AND c.relpersistence <> 't') s
         ORDER BY name"
seq_states() { printf '%s\n\\gexec\n' "$seq_sql" | "$@" -f -; }
unlogged_sql="SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
              FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND c.relpersistence = 'u' ORDER BY 1"
dbs=()
while IFS= read -r -d '' db; do dbs+=("$db"); done < <(lead postgres -0 -c \
    "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1")
[ "${#dbs[@]}" -gt 0 ] || die "cannot list the lead's databases"
total_seqs=0 total_unlogged=0
for db in "${dbs[@]}"; do
    tables=()
    while IFS= read -r -d '' t; do tables+=("$t"); done < <(lead "$db" -0 -c "$unlogged_sql")
    for t in "${tables[@]}"; do
        lead "$db" -c "COPY $t TO STDOUT (FORMAT binary)" \
            | PGOPTIONS='-c session_replication_role=replica' node "$db" -1 -c "DELETE FROM $t" \
                -c "COPY $t FROM STDIN (FORMAT binary)" >/dev/null \
            || die "cannot copy unlogged table $t of database $db to node $NODE_ID"
    done
    setvals=$(seq_states lead "$db") || die "cannot read the sequences of database $db on the lead"
    if [ -n "$setvals" ]; then
        printf '%s\n' "$setvals" | node "$db" -1 -f - >/dev/null \
            || die "cannot set the sequences of database $db on node $NODE_ID"
    fi
    after=$(seq_states node "$db") || die "cannot read the sequences of database $db on node $NODE_ID"
    [ "$after" = "$setvals" ] || die "sequences of database $db differ between node $NODE_ID and the lead after setval"
    n=0; [ -z "$setvals" ] || n=$(printf '%s\n' "$setvals" | wc -l)
    say "database $db: $n sequence(s) set, ${#tables[@]} unlogged table(s) copied"
    total_seqs=$((total_seqs + n)) total_unlogged=$((total_unlogged + ${#tables[@]}))
done

# ---- 5. The slot stage 1 made would keep WAL on the lead forever. ----
dropped=no
for _ in $(seq 1 50); do
    if out=$(lead postgres -c "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots
                               WHERE slot_name = '$SLOT' AND NOT active" 2>&1) \
       && [ -z "$(lead postgres -c "SELECT 1 FROM pg_replication_slots WHERE slot_name = '$SLOT'")" ]; then
        dropped=yes; break
    fi
    sleep 0.2
done
[ "$dropped" = yes ] || printf '%s: WARNING: could not drop replication slot %s on lead node %s; drop it by hand (SELECT pg_drop_replication_slot('"'%s'"')) or it keeps WAL forever\n' \
    "$PROG" "$SLOT" "$LEAD_ID" "$SLOT" >&2

ro=$(node postgres -c "SHOW transaction_read_only") || die "lost node $NODE_ID at the end"
[ "$ro" = off ] || die "node $NODE_ID is still read-only after promotion"
say "stage 2 done in $((SECONDS - START)) s: node $NODE_ID is an independent primary ($total_seqs sequence(s)," \
    "$total_unlogged unlogged table(s) synced in ${#dbs[@]} database(s))"
