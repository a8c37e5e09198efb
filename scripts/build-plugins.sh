#!/usr/bin/env bash
# Builds every wasm crate for wasm32-wasip2 and lays the components out by name:
#   plugins/<name>      -> target/plugins/<name>.wasm      (the built-in collectors)
#   tests/guests/<name> -> target/test-guests/<name>.wasm  (test-only guests)
# The crates are the workspace members in those folders (`cargo metadata`, see workspace_crates).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
# The BPF objects that plugins embed.
make -s -C ebpf

crates="$(workspace_crates plugins tests/guests)"
[ -n "$crates" ] || { echo "build-plugins: no crates in plugins/ or tests/guests/" >&2; exit 1; }
packages=()
while IFS=$'\t' read -r _ package _; do
    packages+=(-p "$package")
done <<<"$crates"
cargo build --quiet --profile release-wasm --target wasm32-wasip2 "${packages[@]}"

out=target/wasm32-wasip2/release-wasm
mkdir -p target/plugins target/test-guests
while IFS=$'\t' read -r dir _ lib; do
    name=$(basename "$dir")
    case "$dir" in
        plugins/*)
            # Write-then-rename, so a running agent never sees a half-written file.
            cp "$out/$lib.wasm" "target/plugins/.$name.wasm.tmp"
            mv "target/plugins/.$name.wasm.tmp" "target/plugins/$name.wasm"
            ;;
        tests/guests/*) cp "$out/$lib.wasm" "target/test-guests/$name.wasm" ;;
    esac
done <<<"$crates"
ls -l target/plugins/*.wasm
