#!/usr/bin/env bash
# Regression guard run by .ci/run: two 3,000-event drains on the release build (startup
# included) must each reach at least a third of the recorded rate and use at most three times the
# recorded CPU per event. Recorded in BENCHMARKS.md (2026-11-26, after issue 11's last round):
# store and confirm only, 2,550 events/s and 0.05 CPU s per 1,000 events; with every event also
# sent to a webhook, 2,360 events/s and 0.115 CPU s per 1,000. Noise cannot trip it; a gross
# regression does.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --examples -q
GUARD_MIN_EVENTS_PER_SEC=850 GUARD_MAX_CPU_PER_1000=0.15 \
  GUARD_WEBHOOK_MIN_EVENTS_PER_SEC=790 GUARD_WEBHOOK_MAX_CPU_PER_1000=0.35 \
  target/release/examples/bench --guard
