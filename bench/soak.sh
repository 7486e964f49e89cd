#!/usr/bin/env bash
# Soak: bench/soak.sh MINUTES [EVENTS_PER_SECOND] (see BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --examples -q
# The configs the benchmarks write hold a (demo) secret: private, as an operator's would be,
# so the daemon does not warn about a secret in a world-readable file.
umask 077
exec target/release/examples/soak "$@"
