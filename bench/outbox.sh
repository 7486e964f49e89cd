#!/usr/bin/env bash
# Outbox cost against a receiver we did not write (issue 11): drains a backlog of N v2 events
# from the in-tree emulator into vod-eventd with one webhook route (concurrency 16) to
# bench/receiver.py (Python's standard library, HTTP/1.1 keep-alive, 200 after DELAY_MS), and
# prints wall time, the daemon's CPU per 1,000 events and the receiver's counters.
#
#   bench/outbox.sh [EVENTS] [DELAY_MS] [strace|noroute|baseline]
#
# `baseline` runs bench/baseline.py (the official v2 SDK loop) instead of vod-eventd, against the
# same emulator and receiver, in the tests' virtual environment (target/tmp/py-venv: run
# `cargo test --test it crosscheck` once to create it).
# RATE=1000 enforces that many calls per minute at the emulator and in the daemon (Tencent's
# documented limit); BIN=path runs another vod-eventd build (for before/after figures).
#
# `strace` runs the daemon under `strace -c -f` (syscall counts in target/outbox/strace.txt;
# CPU figures are then inflated); `noroute` stores and confirms only (no handler).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}; DELAY=${2:-0}; MODE=${3:-}
cargo build --release --bin vod-eventd -q
B=${BIN:-$PWD/target/release/vod-eventd}
RATE=${RATE:-0}
W=$PWD/target/outbox; rm -rf "$W"; mkdir -p "$W"
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
python3 bench/receiver.py --delay-ms "$DELAY" > "$W/receiver.port" & 
EMU=127.0.0.1:$((20000 + RANDOM % 10000))
"$B" emulator --listen "$EMU" --rate-limit "$RATE" --hold 1s --generate "$N" > "$W/emulator.log" 2>&1 &
for _ in $(seq 100); do [ -s "$W/receiver.port" ] && curl -sf "http://$EMU/_emulator/stats" >/dev/null && break; sleep 0.1; done
PORT=$(head -1 "$W/receiver.port")
ROUTE="[[routes]]
events = [\"*\"]
handlers = [\"sink\"]"
[ "$MODE" = noroute ] && ROUTE=""
cat > "$W/config.toml" <<EOT
[vod]
endpoint = "http://$EMU/v2/index.php"
secret_id = "AKIDemulatorDEMOsecretID0000000000000"
secret_key = "emulator-demo-secret-key-not-a-real-one"
rate_limit_per_minute = $([ "$RATE" = 0 ] && echo 10000000 || echo "$RATE")
[store]
path = "$W/events.db"
[log]
level = "warn"
$ROUTE
[handlers.sink]
type = "webhook"
url = "http://127.0.0.1:$PORT/hook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
concurrency = 16
EOT
START=$(date +%s.%N)
if [ "$MODE" = baseline ]; then
  TIMEFORMAT='%U %S'
  { time target/tmp/py-venv/bin/python bench/baseline.py --endpoint "http://$EMU/v2/index.php" \
      --secret-id AKIDemulatorDEMOsecretID0000000000000 --secret-key emulator-demo-secret-key-not-a-real-one \
      --db "$W/baseline.db" --webhook "http://127.0.0.1:$PORT/hook" --events "$N" > "$W/baseline.log" 2>&1 ; } 2> "$W/time.txt"
  END=$(date +%s.%N)
  CPU=$(awk '{print $1 + $2}' "$W/time.txt")
  echo "baseline events=$N delay_ms=$DELAY seconds=$(echo "$END - $START" | bc) cpu_s=$CPU cpu_s_per_1000=$(echo "scale=3; $CPU*1000/$N" | bc) receiver=$(curl -s "http://127.0.0.1:$PORT/_stats")"
  exit 0
fi
if [ "$MODE" = strace ]; then
  strace -c -f -o "$W/strace.txt" "$B" run --config "$W/config.toml" > "$W/daemon.log" 2>&1 &
  sleep 0.3; PID=$(pgrep -P $! -n)
else
  "$B" run --config "$W/config.toml" > "$W/daemon.log" 2>&1 & PID=$!
fi
done_count() {
  if [ "$MODE" = noroute ]; then
    curl -s "http://$EMU/_emulator/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["confirmed"])'
  else
    curl -s "http://127.0.0.1:$PORT/_stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ids"])'
  fi
}
until [ "$(done_count)" -ge "$N" ]; do sleep 0.2; done
END=$(date +%s.%N)
CPU=$(awk '{print ($14+$15)/100}' "/proc/$PID/stat")
SECS=$(echo "$END - $START" | bc)
echo "events=$N delay_ms=$DELAY seconds=$SECS cpu_s=$CPU cpu_s_per_1000=$(echo "scale=3; $CPU*1000/$N" | bc) core_percent=$(echo "scale=1; $CPU*100/$SECS" | bc) receiver=$(curl -s "http://127.0.0.1:$PORT/_stats")"
kill -TERM "$PID"; wait "$PID" 2>/dev/null || true
[ "$MODE" = strace ] && { sleep 0.5; head -14 "$W/strace.txt"; }
exit 0
