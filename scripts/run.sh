#!/usr/bin/env bash
# Installs what is missing, builds the agent and the built-in plugins, and runs the agent
# with good defaults: local event store in ./kpulse-data, every plugin in target/plugins,
# /metrics on :19704. Extra arguments go to `kpulse run` (e.g. --config kpulse.example.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
ensure_rust
build_all
exec target/release/kpulse run --plugin-dir target/plugins --data-dir kpulse-data "$@"
