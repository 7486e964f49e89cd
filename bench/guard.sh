#!/usr/bin/env bash
# Regression guard run by .ci/run: a 3,000-event drain on the release build must reach at
# least a fifth of the recorded drain rate and use at most three times the recorded CPU per
# event (BENCHMARKS.md: 7,000 events/s and 0.107 CPU s per 1,000 events). Noise, or another
# job on the machine, cannot trip it; a gross regression does.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --examples -q
GUARD_MIN_EVENTS_PER_SEC=1400 GUARD_MAX_CPU_PER_1000=0.32 target/release/examples/bench --guard
