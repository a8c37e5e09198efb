#!/usr/bin/env bash
# Installs what is missing and runs every check and test: formatting, clippy (host and
# wasm targets), unit tests, and the integration tests against the real binary, real
# plugin components, promtool and a Prometheus server.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
ensure_packages prometheus iproute2
ensure_rust
rustup component list --installed | grep -q '^clippy' || rustup component add clippy rustfmt

echo "== format"
cargo fmt --all -- --check
echo "== build"
build_all
echo "== clippy"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --target wasm32-wasip2 -p kpulse-sdk -p kpulse-plugin-loadavg -p kpulse-plugin-example -- -D warnings
echo "== tests"
cargo test --release --workspace --exclude kpulse-integration-tests
cargo test --release -p kpulse-integration-tests
