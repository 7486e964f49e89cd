#!/usr/bin/env bash
# Issue 28's matrix: CPU per 1,000 events paced and flat out, vod-eventd on SQLite and on
# PostgreSQL beside the official-SDK baseline (bench/baseline.py) and its lean form (--lean:
# keep-alive webhook, one SQLite transaction per pull), all against bench/queue_sim.py and
# bench/receiver.py through bench/outbox.sh. Feeds: the v2 ceiling (27 events every 100 ms,
# API v2), the API 3.0 ceiling (160 every 100 ms, API 3.0), and a backlog drained flat out
# (API v2; the daemon's limiter lifted). Each cell RUNS times, one line per run.
#
#   [BIN=path] bench/paced.sh [EVENTS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-8000}; RUNS=${2:-2}
[ -n "${BIN:-}" ] || { cargo build --release --bin vod-eventd -q; export BIN=$PWD/target/release/vod-eventd; }
cell() { # feed api contender
  local pace=$1 api=$2 who=$3 line
  local env=(SIM=py API="$api"); [ "$pace" != backlog ] && env+=(PACE="$pace")
  case $who in
    sqlite) line=$(env "${env[@]}" bench/outbox.sh "$N" 0) ;;
    pg) line=$(env "${env[@]}" STORE=pg bench/outbox.sh "$N" 0) ;;
    baseline) line=$(env "${env[@]}" bench/outbox.sh "$N" 0 baseline) ;;
    lean) line=$(env "${env[@]}" LEAN=1 bench/outbox.sh "$N" 0 baseline) ;;
  esac
  echo "$line" | tail -1 | grep -o '^[a-z-]* .* cpu_s_per_1000=[^ ]*\( postgres_cpu_s_per_1000=[^ ]*\)\?' | sed "s|^|feed=$pace |"
}
for run in $(seq "$RUNS"); do
  for feed in "27/100 v2" "160/100 v3" "backlog v2"; do
    set -- $feed
    for who in sqlite pg baseline lean; do echo "run=$run $(cell "$1" "$2" "$who")"; done
  done
  echo "run=$run load: $(cut -d' ' -f1-3 /proc/loadavg)"
done
