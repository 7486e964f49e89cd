#!/usr/bin/env bash
# Soak: bench/soak.sh MINUTES [EVENTS_PER_SECOND] (see BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --examples -q
exec target/release/examples/soak "$@"
