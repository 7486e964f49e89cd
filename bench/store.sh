#!/usr/bin/env bash
# Store benchmarks (see BENCHMARKS.md): `bench/store.sh outage`, or `bench/store.sh big
# [EVENTS] [PAD_BYTES] [DIR]` (2,000,000 events padded to 2,300 bytes: a 5.5 GB store,
# generated with SQL; needs about 12 GB free in DIR, default a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --examples -q
# The configs the benchmarks write hold a (demo) secret: private, as an operator's would be,
# so the daemon does not warn about a secret in a world-readable file.
umask 077
exec target/release/examples/store_bench "$@"
