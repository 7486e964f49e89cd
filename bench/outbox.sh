#!/usr/bin/env bash
# Outbox cost against a receiver we did not write (issue 11): drains a backlog of N v2 events
# from the in-tree emulator into vod-eventd with one webhook route (concurrency 16) to
# bench/receiver.py (Python's standard library, HTTP/1.1 keep-alive, 200 after DELAY_MS), and
# prints wall time, the daemon's CPU per 1,000 events and the receiver's counters.
#
#   bench/outbox.sh [EVENTS] [DELAY_MS] [strace|noroute|baseline]
#
# `baseline` runs bench/baseline.py (the official-SDK loop; v2, or v3 with API=v3) instead of vod-eventd, against the
# same emulator and receiver, in the tests' virtual environment (target/tmp/py-venv: run
# `cargo test --test it crosscheck` once to create it).
# RATE=1000 enforces that many calls per minute at the emulator and in the daemon (Tencent's
# documented limit); BIN=path runs another vod-eventd build (for before/after figures; nothing
# is built then: a copy of a build keeps commits made meanwhile from rebuilding mid-series).
#
# `strace` runs the daemon under `strace -c -f` (syscall counts in target/outbox/strace.txt;
# CPU figures are then inflated); `noroute` (or ROUTES=none, which combines with `strace`)
# stores and confirms only (no handler).
#
# SIM=py uses bench/queue_sim.py (an independent Python model of the queue, payloads from the
# official SDK's models, signatures verified with the SDKs' code; 5 s hold) instead of the
# in-tree emulator (1 s hold), for both contenders alike; no RATE with it.
# API=v3 pulls with API 3.0 (PullEvents/ConfirmEvents) in both contenders (default v2); the
# events are then v3-shaped at either queue.
# ROUTES=webhook+shell adds a second route, to a shell hook `/bin/sh -c 'cat > /dev/null'`
# (concurrency 4); the baseline then runs the same command per event (subprocess, event on
# stdin) after its POST. The run ends when both handlers have every event.
# The config points [account] endpoint (DescribeEventConfig) at the queue under test too.
# PY=path is the Python with the official SDKs (default target/tmp/py-venv/bin/python).
# PACE=N/MS (SIM=py only) feeds the events at that pace instead of a backlog (issue 28: 27/100
# is the v2 ceiling, 160/100 the API 3.0 one); the figures are then CPU per event at that pace.
# LEAN=1 runs the baseline with --lean (keep-alive webhook, one SQLite transaction per pull).
# STORE=pg runs vod-eventd on a private PostgreSQL cluster (bench/pg-cluster.sh) and prints the
# server's CPU per 1,000 events too.
#
# Prints the contender's own CPU (cpu_s) and, separately, its children's (the shell hooks:
# child_cpu_s), the queue's counters and the receiver's.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}; DELAY=${2:-0}; MODE=${3:-}
SIM=${SIM:-rust}; API=${API:-v2}; ROUTES=${ROUTES:-webhook}
[ "$MODE" = noroute ] && ROUTES=none
PY=${PY:-$PWD/target/tmp/py-venv/bin/python}
[ -n "${BIN:-}" ] || cargo build --release --bin vod-eventd -q
B=${BIN:-$PWD/target/release/vod-eventd}
RATE=${RATE:-0}; PACE=${PACE:-}; LEAN=${LEAN:-0}; STORE=${STORE:-sqlite}
[ -n "$PACE" ] && [ "$SIM" != py ] && { echo "outbox.sh: PACE needs SIM=py" >&2; exit 2; }
[ "$SIM" = py ] && [ "$RATE" != 0 ] && { echo "outbox.sh: SIM=py has no rate limit" >&2; exit 2; }
W=$PWD/target/outbox; rm -rf "$W"; mkdir -p "$W"
trap 'kill $(jobs -p) 2>/dev/null || true; [ "$STORE" != pg ] || stop_cluster' EXIT
[ "$STORE" = pg ] && . bench/pg-cluster.sh
python3 bench/receiver.py --delay-ms "$DELAY" > "$W/receiver.port" &
if [ "$SIM" = py ]; then
  PACE_ARG=(); [ -n "$PACE" ] && PACE_ARG=(--pace "$PACE")
  "$PY" bench/queue_sim.py --events "$N" "${PACE_ARG[@]}" > "$W/sim.port" 2> "$W/sim.log" &
  for _ in $(seq 600); do [ -s "$W/sim.port" ] && break; sleep 0.1; done
  EMU=127.0.0.1:$(head -1 "$W/sim.port"); STATS=http://$EMU/_stats
else
  EMU=127.0.0.1:$((20000 + RANDOM % 10000)); STATS=http://$EMU/_emulator/stats
  "$B" emulator --listen "$EMU" --rate-limit "$RATE" --hold 1s --generate "$N" --api "$API" > "$W/emulator.log" 2>&1 &
fi
for _ in $(seq 100); do [ -s "$W/receiver.port" ] && curl -sf "$STATS" >/dev/null && break; sleep 0.1; done
PORT=$(head -1 "$W/receiver.port")
if [ "$API" = v3 ]; then ENDPOINT=http://$EMU/; else ENDPOINT=http://$EMU/v2/index.php; fi
HOOK='/bin/sh -c '"'"'cat > /dev/null'"'"
ROUTE="[[routes]]
events = [\"*\"]
handlers = [\"sink\"]"
[ "$ROUTES" = webhook+shell ] && ROUTE="$ROUTE
[[routes]]
events = [\"*\"]
handlers = [\"hook\"]
[handlers.hook]
type = \"shell\"
command = [\"/bin/sh\", \"-c\", \"cat > /dev/null\"]
concurrency = 4"
[ "$ROUTES" = none ] && ROUTE=""
cat > "$W/config.toml" <<EOT
[vod]
api = "$API"
endpoint = "$ENDPOINT"
secret_id = "AKIDemulatorDEMOsecretID0000000000000"
secret_key = "emulator-demo-secret-key-not-a-real-one"
rate_limit_per_minute = $([ "$RATE" = 0 ] && echo 10000000 || echo "$RATE")
[account]
endpoint = "http://$EMU/"
[store]
$([ "$STORE" = pg ] && echo "url = \"$PGURL\"" || echo "path = \"$W/events.db\"")
[log]
level = "warn"
$ROUTE
[handlers.sink]
type = "webhook"
url = "http://127.0.0.1:$PORT/hook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
concurrency = 16
EOT
LABEL="sim=$SIM api=$API routes=$ROUTES events=$N delay_ms=$DELAY pace=${PACE:-backlog} store=$STORE$([ "$MODE" = baseline ] && [ "$LEAN" = 1 ] && echo ' lean' || true)"
START=$(date +%s.%N)
if [ "$MODE" = baseline ]; then
  SHELL_ARG=(); [ "$ROUTES" = webhook+shell ] && SHELL_ARG=(--shell "$HOOK")
  [ "$LEAN" = 1 ] && SHELL_ARG+=(--lean)
  "$PY" bench/baseline.py --api "$API" --endpoint "$ENDPOINT" "${SHELL_ARG[@]}" \
      --secret-id AKIDemulatorDEMOsecretID0000000000000 --secret-key emulator-demo-secret-key-not-a-real-one \
      --db "$W/baseline.db" --webhook "http://127.0.0.1:$PORT/hook" --events "$N" > "$W/baseline.log" 2> "$W/baseline.err"
  END=$(date +%s.%N)
  CPU=$("$PY" -c 'import json,sys; print(json.loads(open(sys.argv[1]).readlines()[-1])["cpu_s"])' "$W/baseline.log")
  KIDS=$("$PY" -c 'import json,sys; print(json.loads(open(sys.argv[1]).readlines()[-1])["children_cpu_s"])' "$W/baseline.log")
  echo "baseline $LABEL seconds=$(echo "$END - $START" | bc) cpu_s=$CPU cpu_s_per_1000=$(echo "scale=3; $CPU*1000/$N" | bc) child_cpu_s=$KIDS queue=$(curl -s "$STATS") receiver=$(curl -s "http://127.0.0.1:$PORT/_stats") baseline=$(tail -1 "$W/baseline.log")"
  exit 0
fi
if [ "$MODE" = strace ]; then
  strace -c -f -o "$W/strace.txt" "$B" run --config "$W/config.toml" > "$W/daemon.log" 2>&1 &
  sleep 0.3; PID=$(pgrep -P $! -n)
else
  PG0=$([ "$STORE" = pg ] && pg_cpu || echo 0)
  "$B" run --config "$W/config.toml" > "$W/daemon.log" 2>&1 & PID=$!
fi
done_count() {
  if [ "$ROUTES" = none ]; then
    curl -s "$STATS" | python3 -c 'import json,sys; print(json.load(sys.stdin)["confirmed"])'
  else
    local ids; ids=$(curl -s "http://127.0.0.1:$PORT/_stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ids"])')
    if [ "$ROUTES" = webhook+shell ] && [ "$ids" -ge "$N" ]; then
      # The shell hook's deliveries done, read from the store (read-only).
      sqlite3 -readonly "$W/events.db" "SELECT count(*) FROM deliveries WHERE handler = 'hook' AND state = 'done'" 2>/dev/null || echo 0
    else
      echo "$ids"
    fi
  fi
}
until [ "$(done_count)" -ge "$N" ]; do sleep 0.2; done
END=$(date +%s.%N)
CPU=$(awk '{print ($14+$15)/100}' "/proc/$PID/stat")
KIDS=$(awk '{print ($16+$17)/100}' "/proc/$PID/stat")
SECS=$(echo "$END - $START" | bc)
PGC=$([ "$STORE" = pg ] && echo "scale=3; ($(pg_cpu) - $PG0)*1000/$N" | bc || echo -)
echo "vod-eventd $LABEL seconds=$SECS cpu_s=$CPU cpu_s_per_1000=$(echo "scale=3; $CPU*1000/$N" | bc) postgres_cpu_s_per_1000=$PGC child_cpu_s=$KIDS core_percent=$(echo "scale=1; $CPU*100/$SECS" | bc) queue=$(curl -s "$STATS") receiver=$(curl -s "http://127.0.0.1:$PORT/_stats")"
kill -TERM "$PID"; wait "$PID" 2>/dev/null || true
[ "$MODE" = strace ] && { sleep 0.5; head -14 "$W/strace.txt"; }
exit 0
