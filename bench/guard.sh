#!/usr/bin/env bash
# Regression guard run by .ci/run: a 3,000-event drain on the release build (startup
# included) must reach at least a third of its recorded rate and use at most three times its
# recorded CPU per event. Recorded in BENCHMARKS.md on 2026-11-24: 2,150 events/s and 0.10 CPU
# s per 1,000 events. Noise cannot trip it; a gross regression does.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --examples -q
GUARD_MIN_EVENTS_PER_SEC=700 GUARD_MAX_CPU_PER_1000=0.30 target/release/examples/bench --guard
