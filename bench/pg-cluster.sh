# Sourced by the PostgreSQL benchmarks: starts a private PostgreSQL cluster (the highest
# major under /usr/lib/postgresql/<major>/bin) in "$W/pg" on a
# free port (initdb + pg_ctl, as user postgres when run as root, which PostgreSQL refuses),
# creates the database "bench", sets $PGURL, and stops the cluster on exit.
PGBIN=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)")
[ -x "$PGBIN/initdb" ] || { echo "needs a PostgreSQL server (/usr/lib/postgresql/<major>/bin/initdb): apt-get install -y postgresql" >&2; exit 1; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
chmod 755 "$W"; [ "$(id -u)" = 0 ] && chown postgres "$W"
PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg "$PGBIN/initdb" -D "$W/pg" -U postgres -A trust >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$W/pg" -l "$W/pg.log" -o "-p $PGPORT -k $W -c listen_addresses=127.0.0.1" -w start >/dev/null
stop_cluster() { as_pg "$PGBIN/pg_ctl" -D "$W/pg" -m fast stop >/dev/null 2>&1 || true; }
psql -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -c "CREATE DATABASE bench" postgres
PGURL="postgresql://postgres@127.0.0.1:$PGPORT/bench?sslmode=disable"
# CPU seconds (user + system) of every process of the cluster.
pg_cpu() { local t=0; for p in $(pgrep -u postgres postgres); do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null || echo 0))); done; echo "scale=2; $t/100" | bc; }
