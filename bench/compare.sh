#!/usr/bin/env bash
# Side-by-side benchmark against the official-SDK baseline (see BENCHMARKS.md).
# Needs: pip install -r tests/py/requirements.txt. Pass --quick for a short run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --examples -q
exec target/release/examples/compare "$@"
