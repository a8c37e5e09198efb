#!/usr/bin/env bash
# Kernel matrix: boots one of Debian's own kernel packages under qemu (software emulation:
# nested KVM does not work on the reference VM) into a busybox initramfs with the agent, its
# plugins and a cgroup v2-only hierarchy, and reports what ran on that kernel: which plugins
# run or are inactive (and why), which attach path each BPF program got (kprobe, fentry,
# tracepoint, tp_btf, as the kernel itself lists them through bpftool), the container
# attribution of a test cgroup, and a set of checks. The reference VM's kernel has neither
# kprobes nor fentry and has hybrid cgroups, so those code paths only run here.
#
#   scripts/kernel-matrix.sh [KERNEL_PACKAGE]
#
# KERNEL_PACKAGE is a Debian package name or a pattern whose * matches within one
# dash-separated part (so ...-*-amd64-unsigned is not the cloud flavour); the newest match is
# used. Default:
# linux-image-6.1.0-*-cloud-amd64-unsigned (bookworm's 6.1 with kprobes, fentry and BTF).
# Writes target/kernel-matrix/<package>/report.md (and console.log, the raw serial console);
# exits non-zero when a check fails. Environment:
#   KM_TIMEOUT_SECS  bound of the whole qemu run (default 900)
#   KM_SETTLE_SECS   longest wait, inside the guest, for the agent and every plugin (480)
#   KM_MIN_RUNNING   plugins that must be running (default: tests/kernel-matrix/expect.conf)
#   KM_MEMORY_MIB, KM_CPUS  the guest's size (1024, 2)
#   KM_FRESH=1       start from an empty compile cache (see below)
# The agent's compile cache (<data_dir>/cache) lives on a small ext4 disk image,
# target/kernel-matrix/cache.img, shared by every kernel (the artifacts depend on the
# emulated CPU, not on the kernel): the first run compiles every plugin under emulation
# (4 to 6 minutes here), later runs load the unchanged ones from the cache.
# Uses the existing target/release/kpulse and target/plugins/*.wasm; builds them only when
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

# The whole script is one function, read before it runs: editing the file during a run
# (which takes minutes) cannot change what the running shell executes.
main() {

pattern="${1:-linux-image-6.1.0-*-cloud-amd64-unsigned}"
timeout_secs="${KM_TIMEOUT_SECS:-900}"
settle_secs="${KM_SETTLE_SECS:-480}"
memory_mib="${KM_MEMORY_MIB:-1024}"
cpus="${KM_CPUS:-2}"
suite=tests/kernel-matrix
# shellcheck source=/dev/null
source "$suite/expect.conf"
min_running="${KM_MIN_RUNNING:-$min_running}"

# qemu, the initramfs tools, bpftool (copied into the guest: the kernel's own list of
# attachments), jq for the report, binutils for stripping the agent's debug info and reading
# the plugins' BPF objects, kmod (depmod) and e2fsprogs for the cache disk.
ensure_packages qemu-system-x86 cpio busybox-static bpftool jq binutils kmod e2fsprogs

if [ ! -x target/release/kpulse ]; then
    flock -o /tmp/kpulse-cargo.lock cargo build --release -p kpulse
fi
if ! compgen -G 'target/plugins/*.wasm' >/dev/null; then
    flock -o /tmp/kpulse-cargo.lock scripts/build-plugins.sh
fi

# The newest package matching the pattern (apt's index refreshed once if nothing matches).
resolve_package() {
    { apt-cache pkgnames linux-image- | grep -x -- "$(glob_to_regex "$1")" || true; } | sort -V | tail -n 1
}
glob_to_regex() {
    local re="${1//./\\.}"
    echo "${re//\*/[^-]*}"
}
package="$(resolve_package "$pattern")"
if [ -z "$package" ]; then
    apt-get update -qq
    package="$(resolve_package "$pattern")"
fi
[ -n "$package" ] || { echo "no Debian package matches $pattern" >&2; exit 2; }

work="target/kernel-matrix/$package"
mkdir -p "$work/deb"
# Cached: the .deb and its unpacked tree are kept between runs.
if ! compgen -G "$work/deb/${package}_*.deb" >/dev/null; then
    echo "downloading $package"
    (cd "$work/deb" && apt-get download -o APT::Sandbox::User=root "$package" >/dev/null)
fi
if [ ! -d "$work/kernel/boot" ]; then
    rm -rf "$work/kernel.tmp"
    dpkg-deb -x "$(compgen -G "$work/deb/${package}_*.deb" | head -n 1)" "$work/kernel.tmp"
    mv "$work/kernel.tmp" "$work/kernel"
fi
vmlinuz="$(compgen -G "$work/kernel/boot/vmlinuz-*" | head -n 1)"
kconfig="$(compgen -G "$work/kernel/boot/config-*" | head -n 1)"
release="${vmlinuz##*/vmlinuz-}"
# Debian's kernels have virtio_blk (and the generic one ext4) as modules: the cache disk
# needs them loaded.
[ -f "$work/kernel/lib/modules/$release/modules.dep" ] || depmod -b "$work/kernel" "$release"
cache_img=target/kernel-matrix/cache.img
[ "${KM_FRESH:-0}" = 1 ] && rm -f "$cache_img"
if [ ! -f "$cache_img" ]; then
    truncate -s 1G "$cache_img"
    mkfs.ext4 -q -F -L kmcache "$cache_img"
fi

# The initramfs, rebuilt every run (a few seconds): the agent and bpftool with the shared
# libraries they link, busybox, the plugins, the config and /init.
build_initramfs() {
    local root="$work/rootfs"
    rm -rf "$root"
    mkdir -p "$root"/{bin,etc,plugins,proc,sys,dev,run,tmp,var/lib/kpulse,var/log}
    cp /bin/busybox "$root/bin/busybox"
    # The release binary carries line tables (about 200 MiB); the guest does not need them.
    objcopy --strip-debug target/release/kpulse "$root/kpulse"
    cp "$(command -v bpftool)" "$root/bin/bpftool"
    local lib
    for lib in $(ldd target/release/kpulse "$(command -v bpftool)" | grep -o '/[^ ]*\.so[^ ]*' | sort -u); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    cp target/plugins/*.wasm "$root/plugins/"
    # The modules behind the cache disk (/dev/vda, ext4), in load order; those a kernel has
    # built in are skipped.
    local module
    : >"$root/etc/km-modules"
    for module in $(modprobe -a -d "$work/kernel" -S "$release" --show-depends virtio_pci virtio_blk ext4 crc32c_generic |
        sed -n 's/^insmod \([^ ]*\).*/\1/p' | awk '!seen[$0]++'); do
        mkdir -p "$root/modules"
        cp "$module" "$root/modules/"
        echo "/modules/${module##*/}" >>"$root/etc/km-modules"
    done
    cp "$suite/kpulse.toml" "$root/etc/kpulse.toml"
    cp "$suite/init.sh" "$root/init"
    chmod 0755 "$root/init"
    echo "root:x:0:0:root:/:/bin/sh" >"$root/etc/passwd"
    (cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$work/initramfs.cpio.gz"
    rm -rf "$root"
}
echo "kernel $release ($package); building the initramfs"
build_initramfs

console="$work/console.log"
echo "booting $release under qemu (TCG, ${cpus} CPUs, ${memory_mib} MiB; at most ${timeout_secs} s)"
started=$(date +%s)
qemu_status=0
timeout --foreground -k 10 "$timeout_secs" \
    qemu-system-x86_64 -accel tcg -cpu max -m "$memory_mib" -smp "$cpus" \
    -nographic -no-reboot -nic none \
    -drive "file=$cache_img,format=raw,if=virtio,cache=unsafe" \
    -kernel "$vmlinuz" -initrd "$work/initramfs.cpio.gz" \
    -append "console=ttyS0 panic=-1 quiet loglevel=4 km_settle_secs=$settle_secs" \
    </dev/null >"$console" 2>&1 || qemu_status=$?
elapsed=$(( $(date +%s) - started ))
echo "qemu exited with $qemu_status after ${elapsed} s"

exec "$suite/report.sh" "$work" "$package" "$release" "$kconfig" \
    "$qemu_status" "$elapsed" "$min_running"
}

main "$@"
