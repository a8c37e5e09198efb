#!/usr/bin/env bash
# Fuzzes every parser of untrusted bytes with cargo-fuzz (libFuzzer): the targets are in
# fuzz/fuzz_targets/, their seed corpora in fuzz/corpus/<target>/.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   build, then run each target SECONDS (default 60)
#   scripts/fuzz.sh --build                 only build the targets
#   scripts/fuzz.sh --run SECONDS [TARGET...]  only run (the targets are built)
#
# Runs on stable Rust with `--sanitizer none`: libFuzzer's coverage instrumentation is stable
# rustc codegen flags, and panics (the bugs a safe-Rust parser has: slicing, overflow with
# debug assertions on, unwrap) abort the target, which libFuzzer reports as a crash. No
# RUSTC_BOOTSTRAP, no nightly. (AddressSanitizer would need nightly; the parsers are safe
# Rust, so it would find nothing more in them.)
#
# The targets are built into fuzz/target (their instrumentation must not mix with target/).
# New inputs libFuzzer finds go to fuzz/corpus-run/ (git-ignored), crashes to
# fuzz/artifacts/<target>/; the script prints a table and fails if a target failed.
# A crash is replayed with: fuzz/target/x86_64-unknown-linux-gnu/release/<target> <file>.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

build=1
run=1
case "${1:-}" in
    --build) run=0; shift ;;
    --run) build=0; shift ;;
esac
seconds="${1:-60}"
[ $# -gt 0 ] && shift
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: SECONDS must be a whole number, got $seconds" >&2; exit 2; }
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for file in fuzz/fuzz_targets/*.rs; do
        targets+=("$(basename "$file" .rs)")
    done
fi
for target in "${targets[@]}"; do
    [ -f "fuzz/fuzz_targets/$target.rs" ] || { echo "fuzz.sh: no target $target in fuzz/fuzz_targets" >&2; exit 2; }
done

if [ "$build" = 1 ]; then
    ensure_rust
    # The host embeds its BPF sampler object (ebpf/build/profile.bpf.o).
    ensure_bpf_toolchain
    make -s -C ebpf
    # cargo-fuzz from crates.io, pinned so CI builds the same tool.
    if ! cargo fuzz --version >/dev/null 2>&1; then
        cargo install --locked cargo-fuzz --version 0.13.2
    fi
    started=$SECONDS
    # All targets at once (they share the host library build); release with debug
    # assertions, cargo-fuzz's default, so that an integer overflow is a finding too.
    cargo fuzz build --sanitizer none
    echo "fuzz.sh: built in $((SECONDS - started)) s"
fi
[ "$run" = 1 ] || exit 0

bin=fuzz/target/x86_64-unknown-linux-gnu/release
failed=()
rows=()
started=$SECONDS
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus-run/$target" "fuzz/corpus/$target" "fuzz/artifacts/$target"
    log="fuzz/artifacts/$target/last-run.log"
    # The first directory receives the new inputs; the committed seeds are read only.
    # -timeout: an input that takes over 10 s is a hang, reported like a crash.
    if "$bin/$target" "fuzz/corpus-run/$target" "fuzz/corpus/$target" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="fuzz/artifacts/$target/" -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result="FAILED (see $log)"
        failed+=("$target")
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    corpus=$(find "fuzz/corpus-run/$target" "fuzz/corpus/$target" -type f | wc -l)
    rows+=("$(printf '%-14s %10s %6s %7s  %s' "$target" "${execs:-?}" "${cov:-?}" "$corpus" "$result")")
done
echo
echo "== fuzzing: ${seconds} s per target, $((SECONDS - started)) s in all"
printf '%-14s %10s %6s %7s  %s\n' target executions edges inputs result
printf '%s\n' "${rows[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
    for target in "${failed[@]}"; do
        tail -n 30 "fuzz/artifacts/$target/last-run.log" >&2
    done
    exit 1
fi
