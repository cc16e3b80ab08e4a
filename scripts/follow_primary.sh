#!/usr/bin/env bash
# follow_primary_command for `mode = streaming`: after pgmulti promoted a standby, point
# another standby at the new primary (PostgreSQL 13+ reloads primary_conninfo; a standby
# follows the new timeline with the default recovery_target_timeline = 'latest').
#
#   follow_primary_command = '/path/to/scripts/follow_primary.sh %h %p %H %r postgres'
#
# Arguments: the standby's host and port, the new primary's host and port, and the role
# both the connection to the standby and replication use (default postgres; it needs
# superuser for ALTER SYSTEM, and the new primary's pg_hba.conf must let it replicate).
#
# A standby that streams through a replication slot (primary_slot_name, as RECOVER NODE
# sets up) gets a slot of that name on the new primary, which has none: without it the
# standby could not stream at all.
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: $0 STANDBY_HOST STANDBY_PORT PRIMARY_HOST PRIMARY_PORT [USER]" >&2
    exit 2
fi
host=$1 port=$2 primary_host=$3 primary_port=$4 user=${5:-postgres}
export PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-10}
sql() { # host port sql
    psql -X -q -A -t -w -h "$1" -p "$2" -U "$user" -d postgres -v ON_ERROR_STOP=1 -c "$3"
}
slot=$(sql "$host" "$port" "SELECT current_setting('primary_slot_name')")
if [ -n "$slot" ]; then
    case $slot in *[!a-z0-9_]*) echo "$0: unexpected primary_slot_name '$slot'" >&2; exit 1 ;; esac
    sql "$primary_host" "$primary_port" \
        "SELECT pg_create_physical_replication_slot('$slot', true)
         WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '$slot')" >/dev/null
fi
conninfo="host=$primary_host port=$primary_port user=$user"
psql -X -q -w -h "$host" -p "$port" -U "$user" -d postgres -v ON_ERROR_STOP=1 \
    -c "ALTER SYSTEM SET primary_conninfo = '$conninfo'" \
    -c "SELECT pg_reload_conf()" >/dev/null
echo "node $host:$port follows $primary_host:$primary_port${slot:+ (slot $slot)}"
