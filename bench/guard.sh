#!/usr/bin/env bash
# Regression guard run by .ci/run: two 3,000-event drains on the release build (startup
# included) must each reach at least a third of the recorded rate and use at most three times the
# recorded CPU per event. Recorded in BENCHMARKS.md (2026-11-26, after issue 11's last round), as
# ranges over five runs on one host whose speed varied during the day: store and confirm only,
# 2,190-2,590 events/s and 0.05-0.11 CPU s per 1,000 events; with every event also sent to a
# webhook, 1,980-2,440 events/s and 0.10-0.21 CPU s per 1,000. The limits are a third of the
# lower rate and three times the middle of the CPU range: noise cannot trip it; a gross
# regression does.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --examples -q
# The configs the benchmarks write hold a (demo) secret: private, as an operator's would be,
# so the daemon does not warn about a secret in a world-readable file.
umask 077
GUARD_MIN_EVENTS_PER_SEC=700 GUARD_MAX_CPU_PER_1000=0.25 \
  GUARD_WEBHOOK_MIN_EVENTS_PER_SEC=650 GUARD_WEBHOOK_MAX_CPU_PER_1000=0.45 \
  target/release/examples/bench --guard
