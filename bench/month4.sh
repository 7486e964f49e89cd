#!/usr/bin/env bash
# Month four (issue 26, points 1 and 2): the SQLite store under an operator's hands while the
# daemon ingests at the v2 API ceiling. Release binary, in-tree emulator, loopback only.
#
#   bench/month4.sh [a|b|all]        (default all; about 1.5 min for a, 3.5 min for b)
#
# Both parts start their own emulator (`--rate-limit 1000 --hold 1s --generate N`, v2: 1,000
# PullEvent calls a minute of at most 16 events, about 267 events/s), bench/receiver.py, and a
# daemon on a fresh store in a temp dir (one webhook handler `sink`, concurrency 16, to the
# receiver; `vod.rate_limit_per_minute = 1000`; `/healthz` on a loopback port; JSON logs at INFO).
#
# (a) After WARMUP s (10), for a window of HEALTH_SAMPLES (300) `/healthz` samples taken every
#     200 ms: 20 runs of `vod-eventd events purge --older-than 1s` (one every PURGE_GAP s, 2.5)
#     and, alongside, a loop of `handlers pause sink` / `handlers resume sink` (PAUSE_GAP s apart,
#     0.5). Prints the daemon's ERROR lines, the 503s among the samples, the purges that failed,
#     the pause/resume commands that failed, and the longest pull→confirm: the emulator's
#     `max_confirm_latency_ms` (`/_emulator/stats`: the longest time from a PullEvent's answer
#     to the ConfirmEvent of one of its handles, over the emulator's life; read after the
#     warm-up and after the window) and the daemon's `pull_to_confirm_seconds` histogram.
# (b) After WARMUP s, a reader (python3's sqlite3) holds a read transaction on the store for
#     READER_S s (60): BEGIN; SELECT count(*) FROM events; sleep; COMMIT. Prints the size of
#     events.db-wal before, its peak, and every 10 s for AFTER_S s (120) after the reader lets
#     go, with the first second it was at most 16 MiB (the store's journal_size_limit, to which a
#     reset log is cut) and the first it was under 16 MB (16,000,000 bytes); the target: within
#     two minutes.
#
# Part (b) needs about 350 MB of free disk (the log peaks near 265 MiB beside a 70 MiB store).
# BIN=path runs another vod-eventd build (nothing is built then). KEEP=1 keeps the temp dir
# (logs, store) and prints its path. Processes started here are stopped by their pid on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
PART=${1:-all}
case "$PART" in a | b | all) ;; *) echo "usage: bench/month4.sh [a|b|all]" >&2; exit 2 ;; esac
[ -n "${BIN:-}" ] || cargo build --release --bin vod-eventd -q
B=${BIN:-$PWD/target/release/vod-eventd}
WARMUP=${WARMUP:-10}
HEALTH_SAMPLES=${HEALTH_SAMPLES:-300}
PURGES=${PURGES:-20}
PURGE_GAP=${PURGE_GAP:-2.5}
PAUSE_GAP=${PAUSE_GAP:-0.5}
READER_S=${READER_S:-60}
AFTER_S=${AFTER_S:-120}
WAL_LIMIT=$((16 * 1024 * 1024))  # the store's journal_size_limit: a reset WAL is cut to exactly this
WAL_MB=16000000
T=$(mktemp -d "${TMPDIR:-/tmp}/vod-month4.XXXXXX")
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then echo "kept $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
json_get() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get(sys.argv[1], ""))' "$1"; }
now() { date +%s.%N; }
mib() { printf %.2f "$(echo "scale=4; ${1:-0} / 1048576" | bc)"; }
wal_size() { stat -c %s "$1/events.db-wal" 2>/dev/null || echo 0; }

# start_stack DIR EVENTS: emulator, receiver and daemon; sets EMU, STATS, HEALTH, METRICS, CFG, DPID.
start_stack() {
  local W=$1 N=$2 RPORT MPORT
  mkdir -p "$W"
  python3 bench/receiver.py > "$W/receiver.port" 2> "$W/receiver.err" &
  PIDS+=($!)
  EMU=127.0.0.1:$(free_port); STATS=http://$EMU/_emulator/stats
  "$B" emulator --listen "$EMU" --rate-limit 1000 --hold 1s --generate "$N" --api v2 > "$W/emulator.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 300); do [ -s "$W/receiver.port" ] && curl -sf "$STATS" > /dev/null && break; sleep 0.1; done
  curl -sf "$STATS" > /dev/null || { echo "emulator did not start: $(cat "$W/emulator.log")" >&2; exit 1; }
  RPORT=$(head -1 "$W/receiver.port")
  MPORT=$(free_port); HEALTH=http://127.0.0.1:$MPORT/healthz; METRICS=http://127.0.0.1:$MPORT/metrics
  CFG=$W/config.toml
  (umask 077; cat > "$CFG" <<EOT
[vod]
api = "v2"
endpoint = "http://$EMU/v2/index.php"
secret_id = "AKIDemulatorDEMOsecretID0000000000000"
secret_key = "emulator-demo-secret-key-not-a-real-one"
rate_limit_per_minute = 1000
[account]
endpoint = "http://$EMU/"
[store]
path = "$W/events.db"
[metrics]
listen = "127.0.0.1:$MPORT"
[log]
level = "info"
format = "json"
[[routes]]
events = ["*"]
handlers = ["sink"]
[handlers.sink]
type = "webhook"
url = "http://127.0.0.1:$RPORT/hook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
concurrency = 16
EOT
  )
  "$B" run --config "$CFG" > "$W/daemon.log" 2>&1 &
  DPID=$!; PIDS+=($DPID)
  for _ in $(seq 300); do [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$HEALTH")" = 200 ] && break; sleep 0.1; done
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$HEALTH")" = 200 ] ||
    { echo "daemon not healthy: $(tail -5 "$W/daemon.log")" >&2; exit 1; }
}

stop_daemon() { kill -TERM "$DPID" 2>/dev/null || true; wait "$DPID" 2>/dev/null || true; }

# errors LOG: the ERROR lines' count, then each distinct message with its count.
errors() {
  python3 - "$1" <<'EOF'
import collections, json, sys
msgs = collections.Counter()
for line in open(sys.argv[1], errors="replace"):
    try:
        rec = json.loads(line)
    except ValueError:
        if "ERROR" in line:
            msgs[line.strip()[:300]] += 1
        continue
    if rec.get("level") == "ERROR":
        msgs[str(rec.get("message", line.strip()))[:300]] += 1
print(f"daemon ERROR lines: {sum(msgs.values())}")
for m, n in msgs.most_common():
    print(f"  {n} x {m}")
EOF
}

# p2c_histogram: the daemon's pull→confirm histogram (count, over 1.024 s, over 2.048 s, sum).
p2c_histogram() {
  curl -s "$METRICS" | python3 -c "$(cat <<'EOF2'
import re, sys
b, count = {}, 0.0
for line in sys.stdin:
    m = re.match(r'vod_eventd_pull_to_confirm_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
    if m:
        b[m.group(1)] = float(m.group(2))
    m = re.match(r'vod_eventd_pull_to_confirm_seconds_count (\S+)', line)
    if m:
        count = float(m.group(1))
finite = sorted((float(k), v) for k, v in b.items() if k != "+Inf")
over = lambda le: int(count - next((v for k, v in finite if abs(k - le) < 1e-9), count))
bound = next((k for k, v in finite if v >= count), float("inf"))
print(f"daemon pull_to_confirm_seconds: {int(count)} handles, {over(1.024)} over 1.024 s, "
      f"{over(2.048)} over 2.048 s, all within {bound:g} s")
EOF2
)"
}

part_a() {
  local W=$T/a N=$(( (WARMUP + HEALTH_SAMPLES / 4 + 40) * 280 ))
  start_stack "$W" "$N"
  sleep "$WARMUP"
  local before; before=$(curl -s "$STATS")
  local c0 t0; c0=$(echo "$before" | json_get confirmed); t0=$(now)
  # /healthz every 200 ms.
  ( for _ in $(seq "$HEALTH_SAMPLES"); do
      code=$(curl -s -o "$W/health.body" -w '%{http_code}' --max-time 2 "$HEALTH" || true)
      echo "$code" >> "$W/health.txt"
      [ "$code" = 200 ] || echo "$code $(head -c 300 "$W/health.body" 2>/dev/null | tr "\n" " ")" >> "$W/health.bad"
      sleep 0.2
    done; touch "$W/health.done" ) &
  local SAMPLER=$!; PIDS+=($SAMPLER)
  # handlers pause / resume, until the sampler is done.
  ( i=0; fail=0
    while [ ! -e "$W/health.done" ]; do
      "$B" handlers pause sink --reason month4 --config "$CFG" >> "$W/pause.out" 2>&1 || fail=$((fail + 1))
      sleep "$PAUSE_GAP"
      "$B" handlers resume sink --config "$CFG" >> "$W/pause.out" 2>&1 || fail=$((fail + 1))
      sleep "$PAUSE_GAP"; i=$((i + 2))
    done
    echo "$i $fail" > "$W/pause.result" ) &
  local PAUSER=$!; PIDS+=($PAUSER)
  # 20 purges.
  local failed=0 purged=0 k s e out longest=0
  for k in $(seq "$PURGES"); do
    s=$(now)
    if out=$("$B" events purge --older-than 1s --config "$CFG" 2>&1); then
      purged=$((purged + $(echo "$out" | awk '/^purged/ {print $2}' | tail -1)))
    else
      failed=$((failed + 1)); echo "purge $k failed: $out" >> "$W/purge.err"
    fi
    e=$(echo "$(now) - $s" | bc); echo "$k $e $out" >> "$W/purge.txt"
    longest=$(echo "if ($e > $longest) $e else $longest" | bc)
    sleep "$PURGE_GAP"
  done
  wait "$SAMPLER" || true; wait "$PAUSER" || true
  local t1 after c1; t1=$(now); c1=$(curl -s "$STATS" | json_get confirmed)
  sleep 3; after=$(curl -s "$STATS")  # handles pulled in the window and confirmed after it count too
  local samples n503 nother
  samples=$(wc -l < "$W/health.txt"); n503=$(grep -c '^503$' "$W/health.txt" || true)
  nother=$(grep -vc '^\(200\|503\)$' "$W/health.txt" || true)
  echo "== (a) purge and pause/resume while ingesting at the v2 ceiling (backlog $N events)"
  echo "ingest during the window: $(echo "scale=0; ($c1 - $c0) / ($t1 - $t0)" | bc) events/s confirmed ($((c1 - c0)) in $(printf %.0f "$(echo "$t1 - $t0" | bc)") s)"
  errors "$W/daemon.log"
  echo "/healthz: $n503 of $samples samples answered 503 ($nother neither 200 nor 503)"
  [ -s "$W/health.bad" ] && sort "$W/health.bad" | uniq -c | sort -rn | head -5 | sed 's/^/  /'
  echo "purges: $PURGES run, $failed failed, $purged events purged in all, longest run ${longest} s"
  [ -s "$W/purge.err" ] && sed 's/^/  /' "$W/purge.err" | head -5
  read -r ops pfail < "$W/pause.result"
  echo "handlers pause/resume: $ops commands, $pfail failed"
  [ "$pfail" != 0 ] && grep -i 'error\|locked' "$W/pause.out" | sort | uniq -c | head -5
  echo "longest pull->confirm (emulator max_confirm_latency_ms): $(echo "$before" | json_get max_confirm_latency_ms) ms after the warm-up, $(echo "$after" | json_get max_confirm_latency_ms) ms after the window"
  echo "emulator: expired_handles=$(echo "$after" | json_get expired_handles) confirms_refused=$(echo "$after" | json_get confirms_refused) redelivered=$(echo "$after" | json_get redelivered)"
  p2c_histogram
  echo "receiver: $(curl -s "http://127.0.0.1:$(head -1 "$W/receiver.port")/_stats")"
  stop_daemon
}

part_b() {
  local W=$T/b N=$(( (WARMUP + READER_S + AFTER_S + 30) * 280 ))
  start_stack "$W" "$N"
  sleep "$WARMUP"
  local before peak=0 sz s0 c0 t0
  local s0; s0=$(curl -s "$STATS")
  before=$(wal_size "$W"); c0=$(echo "$s0" | json_get confirmed); t0=$(now)
  python3 -c '
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN")
n = c.execute("SELECT count(*) FROM events").fetchone()[0]
print(n, flush=True)
time.sleep(float(sys.argv[2]))
c.execute("COMMIT")
' "$W/events.db" "$READER_S" > "$W/reader.out" 2>&1 &
  local READER=$!; PIDS+=($READER)
  while kill -0 "$READER" 2>/dev/null; do
    sz=$(wal_size "$W"); [ "$sz" -gt "$peak" ] && peak=$sz; sleep 1
  done
  wait "$READER" || { echo "reader failed: $(cat "$W/reader.out")" >&2; }
  local released; released=$(now); local rel c_rel; rel=$(curl -s "$STATS"); c_rel=$(echo "$rel" | json_get confirmed)
  echo "== (b) a ${READER_S} s reader while ingesting at the v2 ceiling (backlog $N events)"
  echo "reader saw $(head -1 "$W/reader.out") events; ingest while it held: $(echo "scale=0; ($c_rel - $c0) / ($released - $t0)" | bc) events/s confirmed"
  echo "WAL before: $(mib "$before") MiB; peak while the reader held: $(mib "$peak") MiB"
  local under="" under_mb="" t line=""
  for t in $(seq 0 "$AFTER_S"); do
    sz=$(wal_size "$W"); [ "$sz" -gt "$peak" ] && peak=$sz
    [ -z "$under" ] && [ "$sz" -le "$WAL_LIMIT" ] && under=$t
    [ -z "$under_mb" ] && [ "$sz" -lt "$WAL_MB" ] && under_mb=$t
    if [ $((t % 10)) = 0 ]; then
      line="$line +${t}s $(mib "$sz")"
    fi
    [ "$t" = "$AFTER_S" ] || sleep "$(echo "($released + $t + 1) - $(now)" | bc | awk '{print ($1 > 0) ? $1 : 0}')"
  done
  echo "WAL after release (MiB):$line"
  echo "overall peak: $(mib "$peak") MiB; at the end: $(wal_size "$W") bytes; events.db: $(mib "$(stat -c %s "$W/events.db")") MiB"
  when() { if [ -n "$1" ]; then echo "$1 s after release"; else echo "not within $AFTER_S s"; fi; }
  echo "first at most 16 MiB (16,777,216 bytes): $(when "$under"); first under 16 MB (16,000,000 bytes): $(when "$under_mb")"
  local c_end; c_end=$(curl -s "$STATS" | json_get confirmed)
  echo "ingest after release: $(echo "scale=0; ($c_end - $c_rel) / $AFTER_S" | bc) events/s confirmed; outstanding at the end: $(curl -s "$STATS" | json_get outstanding)"
  errors "$W/daemon.log"
  echo "longest pull->confirm (emulator max_confirm_latency_ms): $(echo "$s0" | json_get max_confirm_latency_ms) ms after the warm-up, $(echo "$rel" | json_get max_confirm_latency_ms) ms when the reader let go, $(curl -s "$STATS" | json_get max_confirm_latency_ms) ms at the end"
  p2c_histogram
  stop_daemon
}

echo "vod-eventd month four bench: $("$B" --version) on $(nproc) cores, $(date -u +%FT%TZ)"
case "$PART" in
  a) part_a ;;
  b) part_b ;;
  all) part_a; part_b ;;
esac
