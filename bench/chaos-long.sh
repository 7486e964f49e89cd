#!/usr/bin/env bash
# The long proof: bench/chaos-long.sh [OUT_DIR]   (default OUT_DIR: target/chaos-long)
#
# Runs the long form of every chaos scenario (tests/it/chaos.rs under CHAOS_LONG=1) against
# the release build, CHAOS_THREADS (default 2) at a time, then prints one Markdown table of
# the summary lines the scenarios wrote. Exits non-zero if a scenario failed, if any event or
# delivery was lost, or if no scenario reported. The test output is kept in OUT_DIR/test.log.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-target/chaos-long}
threads=${CHAOS_THREADS:-2}
command -v jq >/dev/null || { echo "chaos-long: jq is needed to print the table" >&2; exit 2; }
mkdir -p "$out"
summary="$(cd "$out" && pwd)/summary.jsonl"
log="$out/test.log"
: >"$summary"

echo "chaos-long: building the release build and its tests" >&2
cargo test --release --test it --no-run -q 2>>"$log" || { echo "chaos-long: the build failed; see $log" >&2; exit 1; }

echo "chaos-long: $(date -u '+%F %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg);" \
    "running the long suite, $threads at a time (output: $log)" >&2
start=$SECONDS
status=0
CHAOS_LONG=1 CHAOS_SUMMARY="$summary" cargo test --release --test it chaos:: -- --test-threads "$threads" \
    >>"$log" 2>&1 || status=$?
wall=$((SECONDS - start))

echo "| scenario | events | kills, outage or faults | stored | confirmed | lost | duplicates at receivers | redeliveries | wall time |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|"
jq -rs 'sort_by(.scenario | ascii_downcase)[]
    | "| \(.scenario) | \(.events) | \(.faults) | \(.stored) | \(.confirmed) | \(.lost) | \(.duplicates) | \(.redeliveries) | \(.wall_s) s |"' \
    "$summary"
echo
echo "Whole suite: $((wall / 60)) min $((wall % 60)) s, $threads scenarios at a time; load at the end $(cut -d' ' -f1-3 /proc/loadavg)."

reported=$(jq -s 'length' "$summary")
lost=$(jq -s 'map(.lost) | add // 0' "$summary")
if [ "$status" -ne 0 ]; then
    echo "chaos-long: FAILED: the suite exited $status; see $log:" >&2
    grep -E '^test .*FAILED|panicked at|timed out' "$log" | head -20 >&2 || true
    exit 1
elif [ "$reported" -eq 0 ]; then
    echo "chaos-long: FAILED: no scenario reported a summary" >&2
    exit 1
elif [ "$lost" -ne 0 ]; then
    echo "chaos-long: FAILED: $lost events or deliveries lost" >&2
    exit 1
fi
echo "chaos-long: passed: $reported scenarios, nothing lost" >&2
