#!/usr/bin/env bash
# Regression guard run by .ci/run: two 3,000-event drains on the release build (startup
# included) must each reach at least a third of the recorded rate and use at most three times the
# recorded CPU per event. Recorded in BENCHMARKS.md: store and confirm only, 2,150 events/s and
# 0.10 CPU s per 1,000 events (2026-11-24); with every event also sent to a webhook (the
# outbox's group commit, 2026-11-25), 1,670 events/s and 0.143 CPU s per 1,000. Noise cannot
# trip it; a gross regression does.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --examples -q
GUARD_MIN_EVENTS_PER_SEC=700 GUARD_MAX_CPU_PER_1000=0.30 \
  GUARD_WEBHOOK_MIN_EVENTS_PER_SEC=550 GUARD_WEBHOOK_MAX_CPU_PER_1000=0.43 \
  target/release/examples/bench --guard
