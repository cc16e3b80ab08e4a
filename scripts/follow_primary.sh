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
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: $0 STANDBY_HOST STANDBY_PORT PRIMARY_HOST PRIMARY_PORT [USER]" >&2
    exit 2
fi
host=$1 port=$2 primary_host=$3 primary_port=$4 user=${5:-postgres}
conninfo="host=$primary_host port=$primary_port user=$user"
psql -X -q -h "$host" -p "$port" -U "$user" -d postgres -v ON_ERROR_STOP=1 \
    -c "ALTER SYSTEM SET primary_conninfo = '$conninfo'" \
    -c "SELECT pg_reload_conf()" >/dev/null
echo "node $host:$port follows $primary_host:$primary_port"
