#!/usr/bin/env bash
# The key server against nginx, with wrk on loopback (issue 27): requests/s and p50/p99 of
# `vod-eventd keyserver` (release build, token checks on) and of nginx serving the same 16
# bytes as a static file, in one run; then the key server's p99 at a fixed 2,000 requests/s.
#
#   bench/keyserver.sh [ROUNDS]     (default 3; each round: key server, nginx, key server paced)
#
# Setup, all in a temp dir, all as the current user: `vod-eventd emulator` generates 200
# events; the daemon's drm handler fetches the keys of the task flows among them and stores
# them (SQLite); the daemon stops; the key server serves the first key (`keys list`) for its
# file with a token from `keys token`, `rate_per_client = 0` (wrk is one client). nginx gets
# a private config (its own prefix, a free port, `access_log off`, keep-alive without a
# request cap) and serves that key's 16 bytes as a file at the same path.
#
# Load: `wrk -t2 -c$CONNECTIONS -d$DURATION --latency` (default 32 connections, 10 s) on the
# URL a player requests. Paced: wrk with bench/keyserver-paced.lua, where each of
# $PACED_CONNECTIONS connections waits $PACED_DELAY_MS ms after each answer (23 x 10 ms:
# about 2,000 requests/s at a latency of 0.5 ms; the achieved rate is printed), and nginx
# the same as a control: what the machine itself adds; wrk measures each request from
# its send (a closed loop: a stall delays the requests behind it instead of counting them,
# so the p99 is a lower bound in a stall and exact without one).
#
# COMPARE_BIN=path/to/another/vod-eventd adds a second key server, that binary on the same
# store, measured in every round beside the first (an A/B of a change under the same noise).
#
# Needs wrk and nginx (Debian: apt-get install wrk nginx); installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-10s}
PACED_CONNECTIONS=${PACED_CONNECTIONS:-23}
PACED_DELAY_MS=${PACED_DELAY_MS:-10}
for tool in wrk nginx python3 curl; do
  command -v "$tool" >/dev/null || { echo "bench/keyserver.sh: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done

cargo build --release --bins -q
BIN=$PWD/target/release/vod-eventd
WORK=$(mktemp -d)
chmod 0755 "$WORK"   # nginx's workers read the key file
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url: until it answers 200, 30 s at most
  for _ in $(seq 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = 200 ] && return 0
    sleep 0.1
  done
  echo "bench/keyserver.sh: $1 did not answer" >&2; exit 1
}

# The emulator's demo credentials, from its source.
demo_secret() { sed -n "s/^pub const DEMO_SECRET_$1: &str = \"\(.*\)\";/\1/p" crates/vod-emulator/src/lib.rs; }
EMU_PORT=$(free_port); KEY_PORT=$(free_port); NGINX_PORT=$(free_port); OTHER_PORT=$(free_port)
"$BIN" emulator --listen "127.0.0.1:$EMU_PORT" --hold 1s --generate 200 >"$WORK/emulator.log" 2>&1 &
PIDS+=($!)
cat >"$WORK/config.toml" <<EOF
[account]
endpoint = "http://127.0.0.1:$EMU_PORT/"
[store]
path = "$WORK/events.db"
[vod]
endpoint = "http://127.0.0.1:$EMU_PORT/v2/index.php"
secret_id = "$(demo_secret ID)"
secret_key = "$(demo_secret KEY)"
[[routes]]
events = ["ProcedureStateChanged"]
handlers = ["keys"]
[handlers.keys]
type = "drm"
[keyserver]
listen = "127.0.0.1:$KEY_PORT"
path = "/vod/key"
token_secrets = ["bench-token-secret-0123456789abcdefghijkl"]
rate_per_client = 0
EOF
chmod 0600 "$WORK/config.toml"

"$BIN" run --config "$WORK/config.toml" >"$WORK/daemon.log" 2>&1 &
DAEMON=$!
PIDS+=($DAEMON)
for _ in $(seq 300); do
  KEY=$("$BIN" keys list --json --config "$WORK/config.toml" 2>/dev/null | head -n 1 || true)
  [ -n "$KEY" ] && break
  sleep 0.1
done
[ -n "$KEY" ] || { echo "bench/keyserver.sh: no key stored; daemon log:" >&2; tail -n 20 "$WORK/daemon.log" >&2; exit 1; }
kill "$DAEMON"; wait "$DAEMON" 2>/dev/null || true
FILE_ID=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["file_id"])' "$KEY")
EDK=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["edk"])' "$KEY")
EDK_Q=$(python3 -c 'import sys,urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$EDK")
TOKEN=$("$BIN" keys token --file-id "$FILE_ID" --ttl 2h --config "$WORK/config.toml")
QUERY="fileId=$FILE_ID&keySource=VodBuildInKMS&edk=$EDK_Q&token=$TOKEN"
"$BIN" keys get --raw --edk "$EDK" --config "$WORK/config.toml" >"$WORK/key"
[ "$(stat -c %s "$WORK/key")" = 16 ] || { echo "bench/keyserver.sh: the stored key is not 16 bytes" >&2; exit 1; }

RUST_LOG=vod_eventd=warn "$BIN" keyserver --config "$WORK/config.toml" >"$WORK/keyserver.log" 2>&1 &
KEYSERVER=$!
PIDS+=($KEYSERVER)
wait_http "http://127.0.0.1:$KEY_PORT/healthz"
if [ -n "${COMPARE_BIN:-}" ]; then
  sed "s/^listen = .*/listen = \"127.0.0.1:$OTHER_PORT\"/" "$WORK/config.toml" >"$WORK/other.toml"
  chmod 0600 "$WORK/other.toml"
  RUST_LOG=vod_eventd=warn "$COMPARE_BIN" keyserver --config "$WORK/other.toml" >"$WORK/other.log" 2>&1 &
  OTHER=$!
  PIDS+=($OTHER)
  wait_http "http://127.0.0.1:$OTHER_PORT/healthz"
fi

mkdir -p "$WORK/nginx/html/vod" "$WORK/nginx/logs"
cp "$WORK/key" "$WORK/nginx/html/vod/key"
chmod -R a+rX "$WORK/nginx/html"
USER_LINE=""
[ "$(id -u)" = 0 ] && USER_LINE="user root;"
cat >"$WORK/nginx/nginx.conf" <<EOF
$USER_LINE
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/tmp-body;
  proxy_temp_path $WORK/nginx/tmp-proxy;
  fastcgi_temp_path $WORK/nginx/tmp-fastcgi;
  uwsgi_temp_path $WORK/nginx/tmp-uwsgi;
  scgi_temp_path $WORK/nginx/tmp-scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $WORK/nginx/html;
    location = /vod/key { default_type application/octet-stream; add_header Cache-Control "private, max-age=3600"; }
  }
}
EOF
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' 2>>"$WORK/nginx/logs/error.log" &
NGINX=$!
PIDS+=($NGINX)
wait_http "http://127.0.0.1:$NGINX_PORT/vod/key"

KEY_URL="http://127.0.0.1:$KEY_PORT/vod/key?$QUERY"
OTHER_URL="http://127.0.0.1:$OTHER_PORT/vod/key?$QUERY"
NGINX_URL="http://127.0.0.1:$NGINX_PORT/vod/key?$QUERY"
cmp -s <(curl -s "$KEY_URL") "$WORK/key" || { echo "bench/keyserver.sh: the key server does not serve the key" >&2; exit 1; }
cmp -s <(curl -s "$NGINX_URL") "$WORK/key" || { echo "bench/keyserver.sh: nginx does not serve the key" >&2; exit 1; }

echo "== $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2), $(nginx -v 2>&1 | cut -d' ' -f3)"
echo "== wrk -t2 -c$CONNECTIONS -d$DURATION --latency; paced: -t1 -c$PACED_CONNECTIONS, ${PACED_DELAY_MS} ms after each answer"
# CPU time (ticks) and context switches of processes and their threads, for the cost of a
# request apart from the machine's noise.
cost() {
  local ticks=0 switches=0 pid
  for pid in "$@"; do
    ticks=$((ticks + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
    switches=$((switches + $(cat /proc/"$pid"/task/*/status | awk '/ctxt_switches/ { s += $2 } END { print s }')))
  done
  echo "$ticks $switches"
}
HZ=$(getconf CLK_TCK)
measure() { # name, output file, wrk arguments...: runs wrk, prints one line
  local name=$1 out=$2; shift 2
  local pids=$KEYSERVER
  case $name in nginx*) pids="$(pgrep -P "$NGINX")";; COMPARE_BIN*) pids=$OTHER;; esac
  # shellcheck disable=SC2086
  read -r t0 s0 < <(cost $pids)
  wrk "$@" >"$out"
  # shellcheck disable=SC2086
  read -r t1 s1 < <(cost $pids)
  local n; n=$(awk '/requests in/ { print $1 }' "$out")
  summary "$name" "$(awk -v t=$((t1 - t0)) -v s=$((s1 - s0)) -v n="$n" -v hz="$HZ" \
    'BEGIN { printf "CPU %5.1f us/req, %4.2f switches/req", t * 1e6 / hz / n, s / n }')" <"$out"
}
summary() { # name, cost, wrk output: one line
  awk -v name="$1" -v cost="$2" '
    /Requests\/sec/ { rps = $2 }
    / 50% / { p50 = $2 } / 99% / { p99 = $2 }
    /Non-2xx/ { bad = $NF }
    /Socket errors/ { err = $0 }
    END { printf "%-20s %9s req/s  p50 %8s  p99 %8s  %s  non-2xx %s%s\n", name, rps, p50, p99, cost, (bad == "" ? 0 : bad), (err == "" ? "" : "  " err) }'
}
for round in $(seq "$ROUNDS"); do
  echo "-- round $round (load $(cut -d' ' -f1 /proc/loadavg))"
  LOAD=(-t2 -c"$CONNECTIONS" -d"$DURATION" --latency)
  PACED=(-t1 -c"$PACED_CONNECTIONS" -d"$DURATION" --latency -s bench/keyserver-paced.lua)
  measure "key server" "$WORK/wrk-keyserver-$round.txt" "${LOAD[@]}" "$KEY_URL"
  measure "nginx" "$WORK/wrk-nginx-$round.txt" "${LOAD[@]}" "$NGINX_URL"
  [ -z "${COMPARE_BIN:-}" ] || measure "COMPARE_BIN" "$WORK/wrk-other-$round.txt" "${LOAD[@]}" "$OTHER_URL"
  export PACED_DELAY_MS
  measure "key server, paced" "$WORK/wrk-paced-$round.txt" "${PACED[@]}" "$KEY_URL"
  measure "nginx, paced" "$WORK/wrk-nginx-paced-$round.txt" "${PACED[@]}" "$NGINX_URL"
  [ -z "${COMPARE_BIN:-}" ] || measure "COMPARE_BIN, paced" "$WORK/wrk-other-paced-$round.txt" "${PACED[@]}" "$OTHER_URL"
done
echo "-- the last round's wrk output"
for f in keyserver nginx paced nginx-paced; do
  # The URL without its query (the token and the EDK).
  echo "# $f"; sed 's/?[^ ]*//' "$WORK/wrk-$f-$ROUNDS.txt"
done
if grep -q . "$WORK/keyserver.log"; then echo "-- key server log (warnings)"; tail -n 5 "$WORK/keyserver.log"; fi
