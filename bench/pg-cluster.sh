# Sourced by the PostgreSQL benchmarks: starts a private PostgreSQL cluster (the highest
# major under /usr/lib/postgresql/<major>/bin) in "$W/pg" on a
# free port (initdb + pg_ctl, as user postgres when run as root, which PostgreSQL refuses),
# creates the database "bench", sets $PGURL, and stops the cluster on exit. With PG_STATEMENTS=1
# the cluster loads pg_stat_statements and `pg_statements` prints each statement's calls.
PGBIN=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)")
[ -x "$PGBIN/initdb" ] || { echo "needs a PostgreSQL server (/usr/lib/postgresql/<major>/bin/initdb): apt-get install -y postgresql" >&2; exit 1; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
chmod 755 "$W"; [ "$(id -u)" = 0 ] && chown postgres "$W"
PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg "$PGBIN/initdb" -D "$W/pg" -U postgres -A trust >/dev/null
PRELOAD=$([ "${PG_STATEMENTS:-0}" = 1 ] && echo "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all" || true)
as_pg "$PGBIN/pg_ctl" -D "$W/pg" -l "$W/pg.log" -o "-p $PGPORT -k $W -c listen_addresses=127.0.0.1 $PRELOAD" -w start >/dev/null
stop_cluster() { as_pg "$PGBIN/pg_ctl" -D "$W/pg" -m fast stop >/dev/null 2>&1 || true; }
psql -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -c "CREATE DATABASE bench" postgres
PGURL="postgresql://postgres@127.0.0.1:$PGPORT/bench?sslmode=disable"
[ "${PG_STATEMENTS:-0}" = 1 ] && psql -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -c "CREATE EXTENSION pg_stat_statements" bench
# CPU seconds (user + system) of this cluster: its postmaster (with its exited children) and
# the processes it runs; not other clusters on the same machine.
pg_cpu() {
  local pm t=0; pm=$(head -1 "$W/pg/postmaster.pid")
  for p in $pm $(pgrep -P "$pm"); do t=$((t + $(awk -v pm="$pm" '{print $14+$15+($1==pm ? $16+$17 : 0)}' /proc/$p/stat 2>/dev/null || echo 0))); done
  echo "scale=2; $t/100" | bc
}
# Calls, rows and execution time (ms, the server's own count) of every statement run in
# database "bench" since the cluster started, the costliest first.
pg_statements() {
  psql -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -d bench -c "SELECT calls, rows, round(total_exec_time) AS ms, left(regexp_replace(query, '\s+', ' ', 'g'), 100) AS query
    FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = 'bench' ORDER BY total_exec_time DESC LIMIT 25"
}
