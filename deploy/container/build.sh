#!/usr/bin/env bash
# Builds the kpulse container image without any registry: no base image, no pull.
#
#   deploy/container/build.sh            # -> kpulse:<version> and kpulse:latest
#   DOCKER_HOST=unix:///run/kpulse-test/docker.sock deploy/container/build.sh
#
# It assembles a minimal root filesystem in a temporary directory from what is already built
# (`cargo build --release -p kpulse` and `scripts/build-plugins.sh`):
#   /usr/local/bin/kpulse             the release binary, without debug information
#   the shared libraries `ldd` lists, and the dynamic loader, at their paths
#   /etc/passwd, /etc/group           root and nobody only
#   /etc/kpulse/kpulse.toml           deploy/container/kpulse.toml (plugin_dir, data_dir, listen)
#   /usr/lib/kpulse/plugins/*.wasm    every built-in plugin from target/plugins
#   /var/lib/kpulse, /tmp             empty
# and imports it with `tar -c | docker import`, with ENTRYPOINT ["/usr/local/bin/kpulse"],
# CMD ["run", "--config", "/etc/kpulse/kpulse.toml"], EXPOSE 19704 and VOLUME /var/lib/kpulse.
# Arguments after the image name in `docker run` replace the CMD, e.g.
#   docker run ... kpulse:0.1.0 run --config /etc/kpulse/kpulse.toml --listen 127.0.0.1:9000
#
# Idempotent: the tar is reproducible (sorted names, fixed mtime and owners) and its sha256 is
# stored in the image's label io.kpulse.rootfs-sha256; when kpulse:<version> already carries
# the same digest, nothing is imported; a replaced image is removed once untagged. The run
# command is in deploy/container/README.md.
#
# Environment: DOCKER_HOST (which daemon, as for the docker CLI), DOCKER (the client binary,
# default `docker`), KPULSE_BIN (default target/release/kpulse), KPULSE_PLUGINS (default
# target/plugins), IMAGE (default kpulse). Prints the image reference on its last line.
set -euo pipefail
cd "$(dirname "$0")/../.."

docker_cli="${DOCKER:-docker}"
bin="${KPULSE_BIN:-target/release/kpulse}"
plugins="${KPULSE_PLUGINS:-target/plugins}"
image="${IMAGE:-kpulse}"

[ -x "$bin" ] || { echo "$bin missing: cargo build --release -p kpulse" >&2; exit 1; }
compgen -G "$plugins/*.wasm" >/dev/null ||
    { echo "no $plugins/*.wasm: scripts/build-plugins.sh" >&2; exit 1; }
version="$("$bin" --version | awk '{print $2}')"
[ -n "$version" ] || { echo "cannot read the version of $bin" >&2; exit 1; }

rootfs="$(mktemp -d /tmp/kpulse-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs"/{usr/local/bin,usr/lib/kpulse/plugins,etc/kpulse,var/lib/kpulse,tmp}
chmod 1777 "$rootfs/tmp"
chmod 0700 "$rootfs/var/lib/kpulse"
# Without debug information (the release profile keeps it): some 200 MB less.
if command -v strip >/dev/null; then
    strip --strip-debug -o "$rootfs/usr/local/bin/kpulse" "$bin"
    chmod 0755 "$rootfs/usr/local/bin/kpulse"
else
    install -m 0755 "$bin" "$rootfs/usr/local/bin/kpulse"
fi
install -m 0644 "$plugins"/*.wasm "$rootfs/usr/lib/kpulse/plugins/"
install -m 0644 deploy/container/kpulse.toml "$rootfs/etc/kpulse/kpulse.toml"
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' \
    >"$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"

# Every library ldd resolves ("name => /path (addr)") and the loader ("/lib64/ld-... (addr)"),
# copied (dereferenced) to the path the binary asks for, plus the real file's path.
while read -r lib; do
    for path in "$lib" "$(readlink -f "$lib")"; do
        mkdir -p "$rootfs$(dirname "$path")"
        cp -L "$lib" "$rootfs$path"
    done
done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
# The image must run on its own: the binary's loader and libraries, nothing from the host.
chroot "$rootfs" /usr/local/bin/kpulse --version >/dev/null ||
    { echo "the rootfs cannot run kpulse (missing library?)" >&2; exit 1; }

tarball="$rootfs.tar"
trap 'rm -rf "$rootfs" "$tarball"' EXIT
tar -C "$rootfs" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$tarball" .
digest="$(sha256sum "$tarball" | awk '{print $1}')"

current="$("$docker_cli" image inspect --format '{{ index .Config.Labels "io.kpulse.rootfs-sha256" }}' \
    "$image:$version" 2>/dev/null || true)"
previous="$("$docker_cli" image inspect --format '{{ .Id }}' "$image:$version" 2>/dev/null || true)"
if [ "$current" = "$digest" ]; then
    echo "$image:$version is up to date (rootfs $digest)" >&2
else
    "$docker_cli" import \
        --change 'ENTRYPOINT ["/usr/local/bin/kpulse"]' \
        --change 'CMD ["run", "--config", "/etc/kpulse/kpulse.toml"]' \
        --change 'EXPOSE 19704' \
        --change 'VOLUME /var/lib/kpulse' \
        --change 'WORKDIR /var/lib/kpulse' \
        --change "LABEL io.kpulse.rootfs-sha256=$digest org.opencontainers.image.version=$version" \
        --message "kpulse $version (deploy/container/build.sh)" \
        "$tarball" "$image:$version" >/dev/null
    echo "imported $image:$version (rootfs $digest)" >&2
fi
"$docker_cli" tag "$image:$version" "$image:latest"
# The image this one replaced, now untagged (kept if a container still uses it).
if [ -n "$previous" ] && [ "$current" != "$digest" ]; then
    "$docker_cli" rmi "$previous" >/dev/null 2>&1 || true
fi
echo "$image:$version"
