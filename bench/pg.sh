#!/usr/bin/env bash
# Drain throughput and CPU on PostgreSQL (issue 12): N API 3.0 events from the in-tree emulator
# limited to Tencent's PullEvents ceiling (6,000 calls a minute: 100 pulls of up to 16 events a
# second, 1,600 events/s), one webhook route (concurrency 16) to bench/receiver.py, drained by
# DAEMONS daemons sharing one private PostgreSQL 15 cluster (the call budget split between
# them, as an operator would), or with DAEMONS=0 by one daemon on SQLite for comparison.
# Prints wall time, events/s, the daemons' CPU and the PostgreSQL server's CPU per 1,000 events.
#
# DELAY_MS=n makes the receiver answer each POST after n ms: the drain is then bounded by the
# handler's concurrency (16 per daemon), not by the PullEvents ceiling, which is where a second
# host adds throughput.
#
# With FLOOR=1 (PostgreSQL only) it then replays the same number of events' writes as plain
# SQL through pgbench, reduced to the rows the store must keep (bench/pg-floor/*.sql: three
# commits per pull as the daemon makes them, and two with each delivery claimed as it is
# created), on the same cluster with the contents the daemon stored, and prints the server's
# CPU per 1,000 events for each: the floor the daemon's own figure is measured against.
#
# With PG_STATEMENTS=1 it also prints each statement's calls (pg_stat_statements) and the
# transactions committed, to count statements per ingest group.
#
#   [BIN=path] bench/pg.sh [EVENTS] [DAEMONS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}; D=${2:-1}
# BIN=path runs that binary instead of this tree's release build (to compare two builds).
if [ -n "${BIN:-}" ]; then B=$(realpath "$BIN"); else cargo build --release -q --bin vod-eventd; B=$PWD/target/release/vod-eventd; fi
W=$PWD/target/pgbench; rm -rf "$W"; mkdir -p "$W"
CALLS=6000
trap 'kill $(jobs -p) 2>/dev/null || true; [ "$D" = 0 ] || stop_cluster' EXIT
[ "$D" = 0 ] || . bench/pg-cluster.sh
python3 bench/receiver.py --delay-ms "${DELAY_MS:-0}" > "$W/receiver.port" &
EMU=127.0.0.1:$((20000 + RANDOM % 10000))
"$B" emulator --listen "$EMU" --rate-limit "$CALLS" --hold 1s --generate "$N" --api v3 > "$W/emulator.log" 2>&1 &
for _ in $(seq 100); do [ -s "$W/receiver.port" ] && curl -sf "http://$EMU/_emulator/stats" >/dev/null && break; sleep 0.1; done
PORT=$(head -1 "$W/receiver.port")
PER=$(( CALLS / (D > 0 ? D : 1) ))
config() {
  cat <<EOT
[vod]
api = "v3"
endpoint = "http://$EMU/"
secret_id = "AKIDemulatorDEMOsecretID0000000000000"
secret_key = "emulator-demo-secret-key-not-a-real-one"
rate_limit_per_minute = $PER
[account]
endpoint = "http://$EMU/"
[store]
$([ "$D" = 0 ] && echo "path = \"$W/events.db\"" || echo "url = \"$PGURL\"")
[node]
name = "bench-$1"
[log]
level = "warn"
[[routes]]
events = ["*"]
handlers = ["sink"]
[handlers.sink]
type = "webhook"
url = "http://127.0.0.1:$PORT/hook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
concurrency = 16
EOT
}
PG0=$([ "$D" = 0 ] && echo 0 || pg_cpu)
START=$(date +%s.%N)
PIDS=()
for i in $(seq "$(( D > 0 ? D : 1 ))"); do
  config "$i" > "$W/config-$i.toml"
  "$B" run --config "$W/config-$i.toml" > "$W/daemon-$i.log" 2>&1 & PIDS+=($!)
done
ids() { curl -s "http://127.0.0.1:$PORT/_stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ids"])'; }
until [ "$(ids)" -ge "$N" ]; do sleep 0.2; done
END=$(date +%s.%N)
CPU=0; for p in "${PIDS[@]}"; do CPU=$(echo "$CPU + $(awk '{print ($14+$15)/100}' /proc/$p/stat)" | bc); done
PGC=$([ "$D" = 0 ] && echo 0 || echo "$(pg_cpu) - $PG0" | bc)
SECS=$(echo "$END - $START" | bc)
echo "store=$([ "$D" = 0 ] && echo sqlite || echo "postgresql x$D") events=$N seconds=$SECS events_per_s=$(echo "$N / $SECS" | bc) daemons_cpu_s=$CPU daemons_cpu_s_per_1000=$(echo "scale=3; $CPU*1000/$N" | bc) postgres_cpu_s_per_1000=$(echo "scale=3; $PGC*1000/$N" | bc) receiver=$(curl -s "http://127.0.0.1:$PORT/_stats") emulator=$(curl -s "http://$EMU/_emulator/stats" | python3 -c 'import json,sys; s=json.load(sys.stdin); print({k: s[k] for k in ("pulled","confirmed","rate_limited") if k in s})' 2>/dev/null)"
for p in "${PIDS[@]}"; do kill -TERM "$p"; done; wait "${PIDS[@]}" 2>/dev/null || true
if [ "$D" != 0 ] && [ "${PG_STATEMENTS:-0}" = 1 ]; then
  pg_statements
  psql -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -d bench -c "SELECT xact_commit FROM pg_stat_database WHERE datname = 'bench'"
  psql -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -d bench -c "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE n_tup_upd > 0 ORDER BY relname"
fi
if [ "$D" != 0 ] && [ "${FLOOR:-0}" = 1 ]; then
  psql -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -d bench \
    -c "CREATE TABLE floor_src AS SELECT row_number() OVER (ORDER BY id) AS n, event_type, file_id, content FROM events WHERE source = 'default'" -c "CREATE INDEX ON floor_src (n)"
  for script in three two; do
    # Each from empty tables, as the daemon started.
    psql -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -d bench -c "TRUNCATE events, event_files, deliveries, attempts" -c "CHECKPOINT"
    PG0=$(pg_cpu)
    "$PGBIN/pgbench" -n -M simple -h 127.0.0.1 -p "$PGPORT" -U postgres -D n="$N" -t $(( N / 16 )) -f "bench/pg-floor/$script.sql" bench >"$W/floor-$script.log" 2>&1 \
      || { cat "$W/floor-$script.log" >&2; exit 1; }
    echo "floor=$script events=$(( N / 16 * 16 )) postgres_cpu_s_per_1000=$(echo "scale=3; ($(pg_cpu) - $PG0)*1000/$(( N / 16 * 16 ))" | bc) $(grep -o 'tps = [0-9.]*' "$W/floor-$script.log" | head -1)"
  done
fi
