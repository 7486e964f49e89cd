#!/usr/bin/env bash
# Reproducible pipeline benchmark (see BENCHMARKS.md). Pass --quick for a short run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --examples -q
# The configs the benchmarks write hold a (demo) secret: private, as an operator's would be,
# so the daemon does not warn about a secret in a world-readable file.
umask 077
exec target/release/examples/bench "$@"
