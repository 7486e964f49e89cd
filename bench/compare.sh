#!/usr/bin/env bash
# Side-by-side benchmark against the official-SDK baseline (see BENCHMARKS.md), in two parts.
#
# 1. examples/compare: both contenders drain the in-tree emulator and POST to its webhook sink
#    (throughput, CPU, RSS, latency, rate-limited drain, idle, history query).
# 2. The same two contenders against a receiver and a queue we did not write, run identically
#    for both through bench/outbox.sh: bench/receiver.py (Python's standard library, HTTP/1.1
#    keep-alive, 200 after 0 or 5 ms) and, for API 3.0, bench/queue_sim.py (events built from
#    tencentcloud-sdk-python's models, every signature checked with the SDKs' own code);
#    one webhook route, then webhook + shell hook. Prints CPU per 1,000 events and the ratio.
#
# Needs: pip install -r tests/py/requirements.txt for part 1; the tests' virtual environment
# for part 2 (target/tmp/py-venv: `cargo test --test it crosscheck` creates it).
# --quick: short runs (part 2: 5,000 events, 0 ms only).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --examples -q
# The configs the benchmarks write hold a (demo) secret: private, as an operator's would be,
# so the daemon does not warn about a secret in a world-readable file.
umask 077
target/release/examples/compare "$@"

N=20000; DELAYS="0 5"
[ "${1:-}" = --quick ] && { N=5000; DELAYS=0; }
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
# The receiver's connection count (keep-alive: vod-eventd reuses its connections).
conns() { sed -n 's/.*receiver={[^}]*"connections": \([0-9]*\).*/\1/p'; }
echo
echo "Against bench/receiver.py (and bench/queue_sim.py for API 3.0), $N events; CPU s per 1,000 events"
printf '%-28s %-20s %9s %10s %6s  %s\n' "queue, API" "routes, delay" baseline vod-eventd ratio "receiver connections (baseline / vod-eventd)"
run() { # $1 = queue (rust|py), $2 = api, $3 = routes, $4 = delay, $5 = events
  local b v base ours
  b=$(SIM=$1 API=$2 ROUTES=$3 BIN=target/release/vod-eventd bench/outbox.sh "$5" "$4" baseline)
  v=$(SIM=$1 API=$2 ROUTES=$3 BIN=target/release/vod-eventd bench/outbox.sh "$5" "$4")
  base=$(field cpu_s_per_1000 <<< "$b"); ours=$(field cpu_s_per_1000 <<< "$v")
  printf '%-28s %-20s %9s %10s %5.1fx  %s / %s\n' "$([ "$1" = py ] && echo queue_sim.py || echo in-tree emulator), $2" \
    "$3, $4 ms" "$base" "$ours" "$(echo "$base / $ours" | bc -l)" "$(conns <<< "$b")" "$(conns <<< "$v")"
}
for d in $DELAYS; do
  run rust v2 webhook "$d" "$N"
  run py v3 webhook "$d" "$N"
done
# The hooks' own processes are the same for both and are not counted (see BENCHMARKS.md).
run rust v2 webhook+shell 0 $((N / 2))
run py v3 webhook+shell 0 $((N / 2))
