#!/usr/bin/env bash
# Regenerates docs/metrics.md from a live agent with every component of target/plugins loaded
# (both prefixes, one test container): the test that otherwise checks the file against
# /metrics writes it when KPULSE_WRITE_METRICS_DOC is set. Needs the built agent and plugins
# and the test container runtimes (scripts/containers.sh start).
set -euo pipefail
cd "$(dirname "$0")/.."
KPULSE_WRITE_METRICS_DOC=1 flock -o /tmp/kpulse-cargo.lock \
    cargo test --release -p kpulse-integration-tests --test integration -- \
    --exact metrics_catalogue::docs_metrics_md_matches_the_exposition --nocapture
