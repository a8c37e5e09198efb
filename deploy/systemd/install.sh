#!/usr/bin/env bash
# Installs kpulse as a systemd service from a built clone (idempotent; as root):
#
#   cargo build --release -p kpulse && scripts/build-plugins.sh
#   deploy/systemd/install.sh                 # then: systemctl enable --now kpulse
#   DESTDIR=/tmp/stage deploy/systemd/install.sh   # into a staging root (packaging, tests)
#
#   /usr/local/bin/kpulse                     target/release/kpulse (replaced when it differs)
#   /usr/lib/kpulse/plugins/*.wasm            target/plugins/*.wasm, each written to a
#                                             dot-name and renamed, so that a running agent
#                                             hot-swaps it; plugins no longer built are kept
#   /etc/kpulse/kpulse.toml                   deploy/systemd/kpulse.toml, only if absent
#                                             (an operator's edits are never overwritten)
#   /etc/systemd/system/kpulse.service        deploy/systemd/kpulse.service
#   /var/lib/kpulse                           mode 0700 (systemd's StateDirectory as well)
#
# Then, when systemd is PID 1 and DESTDIR is empty, `systemctl daemon-reload`; it never
# starts or restarts the service itself. Environment: DESTDIR, KPULSE_BIN, KPULSE_PLUGINS.
set -euo pipefail
cd "$(dirname "$0")/../.."

dest="${DESTDIR:-}"
bin="${KPULSE_BIN:-target/release/kpulse}"
plugins="${KPULSE_PLUGINS:-target/plugins}"

[ -x "$bin" ] || { echo "$bin missing: cargo build --release -p kpulse" >&2; exit 1; }
compgen -G "$plugins/*.wasm" >/dev/null ||
    { echo "no $plugins/*.wasm: scripts/build-plugins.sh" >&2; exit 1; }
"$bin" config check deploy/systemd/kpulse.toml >/dev/null

# install_if_changed MODE SRC DST: copy through a temporary name and rename (atomic, and a
# running binary is not written to), only when the content differs.
install_if_changed() {
    local mode="$1" src="$2" dst="$3" tmp
    if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
        return
    fi
    tmp="$(dirname "$dst")/.$(basename "$dst").tmp"
    install -m "$mode" "$src" "$tmp"
    mv -f "$tmp" "$dst"
    echo "installed $dst"
}

install -d -m 0755 "$dest/usr/local/bin" "$dest/usr/lib/kpulse/plugins" "$dest/etc/kpulse" \
    "$dest/etc/systemd/system"
install -d -m 0700 "$dest/var/lib/kpulse"
install_if_changed 0755 "$bin" "$dest/usr/local/bin/kpulse"
for plugin in "$plugins"/*.wasm; do
    install_if_changed 0644 "$plugin" "$dest/usr/lib/kpulse/plugins/$(basename "$plugin")"
done
if [ ! -e "$dest/etc/kpulse/kpulse.toml" ]; then
    install -m 0644 deploy/systemd/kpulse.toml "$dest/etc/kpulse/kpulse.toml"
    echo "installed $dest/etc/kpulse/kpulse.toml"
fi
install_if_changed 0644 deploy/systemd/kpulse.service "$dest/etc/systemd/system/kpulse.service"

if [ -z "$dest" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    echo "systemd reloaded: systemctl enable --now kpulse"
elif [ -z "$dest" ]; then
    echo "systemd is not running here (PID 1 is $(cat /proc/1/comm)); the unit is installed" >&2
fi
