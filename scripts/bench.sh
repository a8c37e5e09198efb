#!/usr/bin/env bash
# Builds everything and runs the benchmarks; the figures go to BENCHMARKS.md by hand.
#   scripts/bench.sh                 # every section
#   scripts/bench.sh scrape reload   # some of: scrape reload footprint ringbuf overhead indexing
#                                    # save-latency packets (per-packet cost of the event
#                                    # plugins against bpftrace) overhead-each
# (indexing and save-latency start the local OpenSearch node with scripts/opensearch.sh start;
# save-latency measures KPULSE_BENCH_HOSTS="label=path,..." if set, interleaved in one run)
# Also: cargo bench -p kpulse (per-call overhead of update, against a native reader).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
ensure_packages prometheus-node-exporter bpftrace
ensure_rust
build_all
cargo build --release -p kpulse-integration-tests --bin kpulse-bench
if [ "$#" -eq 0 ] || [[ " $* " == *" indexing "* ]] || [[ " $* " == *" save-latency "* ]]; then
    scripts/opensearch.sh start
fi
exec target/release/kpulse-bench "$@"
