#!/usr/bin/env bash
# Builds every wasm crate for wasm32-wasip2 and lays the components out by name:
#   plugins/<name>      -> target/plugins/<name>.wasm      (the built-in collectors)
#   tests/guests/<name> -> target/test-guests/<name>.wasm  (test-only guests)
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
# The BPF objects that plugins embed.
make -s -C ebpf

packages=()
for dir in plugins/*/ tests/guests/*/; do
    [ -f "$dir/Cargo.toml" ] || continue
    packages+=(-p "$(sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -n1)")
done
cargo build --quiet --profile release-wasm --target wasm32-wasip2 "${packages[@]}"

out=target/wasm32-wasip2/release-wasm
mkdir -p target/plugins target/test-guests
for dir in plugins/*/; do
    [ -f "$dir/Cargo.toml" ] || continue
    name=$(basename "$dir")
    crate=$(sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -n1)
    # Write-then-rename, so a running agent never sees a half-written file.
    cp "$out/${crate//-/_}.wasm" "target/plugins/.$name.wasm.tmp"
    mv "target/plugins/.$name.wasm.tmp" "target/plugins/$name.wasm"
done
for dir in tests/guests/*/; do
    [ -f "$dir/Cargo.toml" ] || continue
    name=$(basename "$dir")
    crate=$(sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -n1)
    cp "$out/${crate//-/_}.wasm" "target/test-guests/$name.wasm"
done
ls -l target/plugins/*.wasm
