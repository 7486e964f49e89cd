#!/usr/bin/env bash
# `vod-eventd store copy` on a big store (issue 12): generates a SQLite store of N events
# (default 1,000,000, content padded to PAD bytes, each with a delivery and an attempt),
# starts a private PostgreSQL 15 cluster (initdb + pg_ctl in target/copy, as user postgres
# when run as root), copies the store into it, SIGKILLs the copy after KILL_AFTER seconds,
# runs it again to finish, and prints the times, the counts, and `events list` timings on
# both stores.
#
#   bench/copy.sh [EVENTS] [PAD] [KILL_AFTER]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}; PAD=${2:-700}; KILL_AFTER=${3:-20}
cargo build --release -q --bin vod-eventd --example store_bench
B=$PWD/target/release/vod-eventd
W=$PWD/target/copy; rm -rf "$W"; mkdir -p "$W"
. bench/pg-cluster.sh
trap stop_cluster EXIT
URL=$PGURL
PORT=$PGPORT

T0=$(date +%s.%N)
target/release/examples/store_bench generate "$N" "$PAD" "$W/events.db"
echo "generated in $(echo "$(date +%s.%N) - $T0" | bc) s"

T0=$(date +%s.%N)
"$B" store copy --from "$W/events.db" --to "$URL" > "$W/copy1.txt" 2>&1 & PID=$!
sleep "$KILL_AFTER"; kill -9 "$PID" 2>/dev/null && echo "copy SIGKILLed after $KILL_AFTER s" || echo "copy ended before the kill"
wait "$PID" 2>/dev/null || true
echo "events in PostgreSQL after the kill: $(psql -X -A -t -h 127.0.0.1 -p "$PORT" -U postgres -c 'SELECT count(*) FROM events' bench)"
TIMEFORMAT='%R s wall, %U s user, %S s system'
time "$B" store copy --from "$W/events.db" --to "$URL" 2>/dev/null
echo "total from the first start: $(echo "$(date +%s.%N) - $T0" | bc) s"

printf '[vod]\nsecret_id = "x"\nsecret_key = "x"\n[store]\npath = "%s"\n' "$W/events.db" > "$W/sqlite.toml"
printf '[vod]\nsecret_id = "x"\nsecret_key = "x"\n[store]\nurl = "%s"\n' "$URL" > "$W/pg.toml"
for store in sqlite pg; do
  for args in "events list --limit 50" "events list --type NewFileUpload --limit 50" "events list --file-id f123456 --limit 50"; do
    S=$(date +%s.%N); "$B" --config "$W/$store.toml" $args > /dev/null
    echo "$store: $args: $(echo "($(date +%s.%N) - $S) * 1000" | bc | cut -d. -f1) ms"
  done
done
