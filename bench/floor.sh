#!/usr/bin/env bash
# Where vod-eventd's CPU per event goes, next to what no change to the outbox can remove
# (issue 11). For one configuration, on the same queue and receiver (bench/receiver.py):
#
#   baseline    the official-SDK loop (bench/baseline.py), via bench/outbox.sh
#   vod-eventd  the daemon with one webhook route, via bench/outbox.sh
#   ingest      the daemon with no route (pull, store, confirm), via bench/outbox.sh
#   webhook     examples/http_floor: the daemon's webhook handler alone (its HTTP client,
#               headers and signature; no store, no dispatcher), concurrency 16, posting an
#               event the daemon stored in the run above
#   raw I/O     examples/http_floor raw: the same bytes over hand-written keep-alive sockets
#
# and then the outbox's share (vod-eventd - ingest - webhook) and the best ratio to the
# baseline that any outbox could reach, even one costing nothing (baseline / (ingest + webhook)).
#
#   bench/floor.sh [EVENTS] [DELAY_MS]      (API=v3 SIM=py as for bench/outbox.sh)
#
# Needs the tests' virtual environment for the baseline (see bench/outbox.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}; DELAY=${2:-0}
cargo build --release --bin vod-eventd --example http_floor -q
BIN=$PWD/target/floor-vod-eventd; cp target/release/vod-eventd "$BIN"
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
outbox() { BIN=$BIN bench/outbox.sh "$N" "$DELAY" "$@" | tail -1 | field cpu_s_per_1000; }
http_floor() {
  local port out line
  out=$(mktemp); python3 bench/receiver.py --delay-ms "$DELAY" > "$out" &
  for _ in $(seq 100); do [ -s "$out" ] && break; sleep 0.1; done
  port=$(head -1 "$out")
  line=$(target/release/examples/http_floor "http://127.0.0.1:$port/hook" "$N" 16 "$1" "$BODY")
  kill %1; wait 2>/dev/null || true; rm -f "$out"
  [ "$(field failed <<< "$line")" = 0 ] || { echo "floor.sh: posts failed: $line" >&2; exit 1; }
  field cpu_s_per_1000 <<< "$line"
}
baseline=$(outbox baseline); full=$(outbox)
# The body the floor posts: an event the daemon just stored (and delivered) in this configuration.
BODY=$PWD/target/floor-body.json
sqlite3 -readonly target/outbox/events.db "SELECT content FROM events ORDER BY id LIMIT 1" > "$BODY"
ingest=$(outbox noroute); webhook=$(http_floor webhook); raw=$(http_floor raw)
echo "API ${API:-v2} on ${SIM:-rust} queue, receiver ${DELAY} ms, $N events: CPU s per 1,000 events"
printf '  %-52s %.3f\n' "baseline (official-SDK loop)" "$baseline" "vod-eventd, one webhook route" "$full" \
  "  ingest alone (no route)" "$ingest" "  webhook handler alone (http_floor)" "$webhook" \
  "  outbox and dispatch (the rest)" "$(echo "$full - $ingest - $webhook" | bc -l)" \
  "raw I/O alone (http_floor raw)" "$raw"
printf '  %-52s %.1fx\n' "ratio now" "$(echo "$baseline / $full" | bc -l)" \
  "ratio with an outbox costing nothing" "$(echo "$baseline / ($ingest + $webhook)" | bc -l)" \
  "... and an HTTP client costing no more than raw I/O" "$(echo "$baseline / ($ingest + $raw)" | bc -l)"
