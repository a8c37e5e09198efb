#!/usr/bin/env bash
# Installs what is missing and runs every check and test: formatting, clippy (host and
# wasm targets), unit tests, and the integration tests against the real binary, real
# plugin components, promtool and a Prometheus server.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
# promtool and a Prometheus server for /metrics; tools the fault-injection tests use.
ensure_packages prometheus prometheus-node-exporter iproute2 e2fsprogs util-linux perl systemd binutils
# tcp_retransmit tests drop packets with iptables' statistic match (nft-backed on Debian).
ensure_packages iptables
# The xfs plugin's tests loop-mount an XFS filesystem.
ensure_packages xfsprogs
# The HTTP hardening tests make certificates with the openssl CLI and speak HTTPS with curl.
ensure_packages openssl curl
# The status page test drives Debian's Chromium with playwright-core (npm, no browser download).
ensure_packages chromium
(cd tests/browser && npm install --no-audit --no-fund --silent)
# The OpenAPI test validates docs/openapi.yaml and fuzzes the agent with schemathesis (PyPI,
# in a venv under target/tools).
ensure_packages python3-venv
scripts/api-tools.sh >/dev/null
ensure_rust
rustup component list --installed | grep -q '^clippy' || rustup component add clippy rustfmt

echo "== format"
cargo fmt --all -- --check
echo "== generated record layouts"
scripts/gen-records.sh
git diff --exit-code guest-sdk/src/records.rs ||
    { echo "guest-sdk/src/records.rs is stale: run scripts/gen-records.sh and commit it" >&2; exit 1; }
echo "== build"
build_all
echo "== clippy"
cargo clippy --workspace --all-targets -- -D warnings
plugins="$(workspace_crates plugins)"
plugin_packages=()
while IFS=$'\t' read -r _ package _; do
    plugin_packages+=(-p "$package")
done <<<"$plugins"
cargo clippy --target wasm32-wasip2 -p kpulse-sdk "${plugin_packages[@]}" -- -D warnings
echo "== tests"
# Real single-node OpenSearch clusters (idempotent): a plain one for
# tests/integration/opensearch.rs and a secured one (TLS, basic auth) for opensearch_secure.rs.
scripts/opensearch.sh start
scripts/opensearch.sh start-secure
# A private containerd (with the CRI plugin, crictl) and dockerd, no registry, for the
# container attribution tests (idempotent); their sockets, state dirs and images as
# KPULSE_TEST_* variables (tests/fixtures/containers/README.md).
scripts/containers.sh start
set -a
# shellcheck source=/dev/null
source "$(scripts/containers.sh env)"
set +a
# Features unify over the packages one cargo invocation selects: the host's tests (and the
# integration tests, which depend on the host package) resolve like `cargo build -p kpulse`
# above and reuse its build; the guest crates' native unit tests go separately, because their
# wit-bindgen macros enable features (indexmap's default) on build-time crates that
# wasmtime's macros share, which would compile wasmtime and the host a second time.
cargo test --release -p kpulse
cargo test --release --workspace --exclude kpulse --exclude kpulse-integration-tests
cargo test --release -p kpulse-integration-tests
# The fault matrix's figures (tests/integration/fault_matrix.rs writes them; the test output
# itself is captured when it passes).
if [ -f target/test-artifacts/fault-matrix.md ]; then
    echo "== fault matrix"
    cat target/test-artifacts/fault-matrix.md
fi
# Fuzzing (scripts/fuzz.sh, cargo-fuzz on stable): every parser of untrusted bytes, bounded
# for CI: 40 s per target, 11 targets, so about 8 minutes of fuzzing plus about 14 minutes
# for the first (instrumented, fuzz/target) build on 2 cores. KPULSE_FUZZ_SECONDS changes
# the time per target; KPULSE_FUZZ=0 skips it.
if [ "${KPULSE_FUZZ:-1}" = 1 ]; then
    echo "== fuzz"
    scripts/fuzz.sh "${KPULSE_FUZZ_SECONDS:-40}"
fi
# The kernel matrix (scripts/kernel-matrix.sh): the agent on Debian's 6.1 kernel under qemu
# software emulation, for the kprobe, fentry and cgroup v2 paths this host lacks. About 3 to
# 6 minutes on a cold cache (compiling the plugins under emulation is most of it) plus a
# 27 MB package download on the first run: inside CI's budget, so on by default;
# KPULSE_KERNEL_MATRIX=0 skips it.
if [ "${KPULSE_KERNEL_MATRIX:-1}" = 1 ]; then
    echo "== kernel matrix"
    scripts/kernel-matrix.sh
fi
