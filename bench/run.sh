#!/usr/bin/env bash
# Reproducible pipeline benchmark (see BENCHMARKS.md). Pass --quick for a short run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --examples -q
exec target/release/examples/bench "$@"
