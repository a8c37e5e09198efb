#!/usr/bin/env bash
# Builds everything and runs the benchmarks; the figures go to BENCHMARKS.md by hand.
#   scripts/bench.sh                 # every section
#   scripts/bench.sh scrape reload   # some of: scrape reload footprint ringbuf overhead
# Also: cargo bench -p kpulse (per-call overhead of update, against a native reader).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
ensure_packages prometheus-node-exporter
ensure_rust
build_all
cargo build --release -p kpulse-integration-tests --bin kpulse-bench
exec target/release/kpulse-bench "$@"
