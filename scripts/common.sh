# shellcheck shell=bash
# Sourced by the scripts (run.sh, test.sh, build-plugins.sh, ...): idempotent installation of
# what kpulse needs on a fresh Debian 12 machine (as root), and the release build of the agent
# and its plugins.

# Installs Debian packages that are missing; runs `apt-get update` only when needed.
ensure_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

ensure_rust() {
    command -v cargo >/dev/null || { echo "cargo not found: install Rust 1.95 with rustup" >&2; exit 1; }
    rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
}

# What the BPF objects are built with (clang CO-RE, bpftool for vmlinux.h, libbpf headers),
# and jq for workspace_crates.
ensure_bpf_toolchain() {
    ensure_packages clang-19 llvm-19 bpftool libbpf-dev make jq
}

# workspace_crates FOLDER...: a line per workspace crate whose directory is directly in one of
# the FOLDERs (e.g. plugins/loadavg in plugins), from `cargo metadata` (needs jq):
#   <dir, relative to the workspace root> TAB <package name> TAB <lib target name>
# The lib target is the cdylib, which the .wasm file is named after (without one: the package
# name with - as _).
workspace_crates() {
    local folders
    folders="$(IFS='|'; echo "$*")"
    cargo metadata --no-deps --format-version 1 | jq -r --arg re "^($folders)/[^/]+$" '
        .workspace_root as $root
        | .packages[]
        | (.manifest_path | ltrimstr($root + "/") | rtrimstr("/Cargo.toml")) as $dir
        | select($dir | test($re))
        | [$dir, .name,
           (first(.targets[] | select(.kind | any(. == "cdylib")) | .name) // (.name | gsub("-"; "_")))]
        | @tsv'
}

build_all() {
    ensure_bpf_toolchain
    # The host embeds its own BPF object (ebpf/build/profile.bpf.o, the profiler's sampler).
    make -s -C ebpf
    cargo build --release -p kpulse
    scripts/build-plugins.sh
}
