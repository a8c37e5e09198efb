#!/usr/bin/env bash
# Real container runtimes for the integration tests (container attribution), on this machine,
# without a registry: a private containerd (with the CRI plugin) and a private dockerd, next to
# (and not touching) any system instance.
#
#   scripts/containers.sh start    install what is missing, build the rootfs, start both
#                                  daemons, import the images, build crictl; idempotent.
#                                  Prints the path of the env file (last line).
#   scripts/containers.sh stop     remove every container and pod of both daemons, stop them,
#                                  kill leftover shims of theirs; OK if not running. (After a
#                                  daemon was killed, its container records survive until the
#                                  next start + stop.)
#   scripts/containers.sh status   exit 0 only if both daemons (and the CRI plugin) answer
#   scripts/containers.sh env      print the env file's path (exit 1 if not started)
#
# What start sets up (all root; Debian packages containerd 1.6, runc 1.1, docker.io 20.10,
# busybox-static):
#   - $STATE/rootfs: bin/busybox (static) with a link for every applet (sh, sleep, cat, nc, dd,
#     head, yes, ping, ...), /sbin and /usr/{bin,sbin} -> bin, etc/passwd and etc/group.
#     For `ctr run --rootfs`; also the only layer of the images below.
#   - containerd --config $STATE/containerd.toml: own root ($STATE/containerd), state
#     ($RUN/containerd) and socket ($RUN/containerd.sock); CRI plugin on, with
#     restrict_oom_score_adj = true (no CAP_SYS_RESOURCE here: without it runc fails to start
#     pod sandboxes), sandbox_image registry.k8s.io/pause:3.6 (imported locally), no AppArmor,
#     an empty CNI config dir of its own (pods must use host network: namespace_options.network 2),
#     runc state root $RUN/runc. runc's default root, /run/containerd/runc/<namespace>, is
#     shared by every containerd on the machine, so `ctr run` must be given
#     `--runc-root $KPULSE_TEST_RUNC_ROOT` (otherwise a container id that another containerd
#     also uses in that namespace collides with it, and the failed create's cleanup runs
#     `runc delete` on the other one's container).
#   - dockerd --iptables=false --bridge=none with its own data root, exec root, socket and pid
#     file. Docker 20.10 starts a containerd of its own ("supervised": socket
#     $RUN/docker/containerd/containerd.sock, state $RUN/docker/containerd/daemon, namespace
#     moby), unless a system containerd socket /run/containerd/containerd.sock exists, which it
#     would use instead; then (or with KPULSE_TEST_DOCKER_CONTAINERD=shared) dockerd is pointed
#     at the private containerd above (--containerd), and docker's containers are in its
#     namespace moby.
#   - images, imported, never pulled: kpulse-test/busybox:1 in docker (`docker import` of the
#     rootfs, ENTRYPOINT /bin/sleep 1000000); in containerd namespaces kptest (for `ctr run
#     IMAGE`) and k8s.io (for CRI containers) as docker.io/kpulse-test/busybox:1 and, the same
#     image, as registry.k8s.io/pause:3.6 (the pod sandbox).
#   - crictl, built once from the Go module proxy: GOBIN=$STATE/bin go install
#     sigs.k8s.io/cri-tools/cmd/crictl@$KPULSE_TEST_CRICTL_VERSION; config $STATE/crictl.yaml
#     (endpoint = the private containerd, no pull on create).
#   - $STATE/env: KEY=VALUE lines (no quoting; sourceable; removed by stop), see write_env.
#
# Using them (after `set -a; source "$(scripts/containers.sh env)"; set +a`; more in
# tests/fixtures/containers/README.md):
#   $KPULSE_TEST_CTR -a $KPULSE_TEST_CONTAINERD_SOCK -n kptest run -d \
#       --runc-root $KPULSE_TEST_RUNC_ROOT --label app=demo --rootfs $KPULSE_TEST_ROOTFS c1 /bin/sleep 1000
#   $KPULSE_TEST_DOCKER -H $KPULSE_TEST_DOCKER_HOST run -d --pull never --network none --name kp-demo \
#       --label app=demo $KPULSE_TEST_DOCKER_IMAGE
#   $KPULSE_TEST_CRICTL --config $KPULSE_TEST_CRICTL_CONFIG runp tests/fixtures/containers/pod.json
#
# Nothing is ever pulled: both daemons run with HTTP(S)_PROXY=http://127.0.0.1:9 (nothing
# listens there), so a pull of a missing image fails at once, locally. Still always use
# `docker run --pull never`, and images that are local.
#
# Environment (all optional):
#   KPULSE_TEST_CONTAINERS_DIR   state dir (default /var/lib/kpulse-test-containers)
#   KPULSE_TEST_CONTAINERS_RUN   run dir: sockets, containerd state, docker exec root
#                                (default /run/kpulse-test; keep it short: unix socket paths
#                                below it must stay under 108 bytes)
#   KPULSE_TEST_CONTAINERS_TIMEOUT  seconds to wait for each daemon (default 60)
#   KPULSE_TEST_DOCKER_CONTAINERD   own (default) | shared (see above)
#   KPULSE_TEST_CRICTL_VERSION   v1.34.0 (v1.28 is not served by the Go proxy)
#   GO                           go binary (default /usr/local/go/bin/go, else go on PATH)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/common.sh
source "$REPO/scripts/common.sh"

STATE="${KPULSE_TEST_CONTAINERS_DIR:-/var/lib/kpulse-test-containers}"
RUN="${KPULSE_TEST_CONTAINERS_RUN:-/run/kpulse-test}"
START_TIMEOUT="${KPULSE_TEST_CONTAINERS_TIMEOUT:-60}"
DOCKER_CONTAINERD_MODE="${KPULSE_TEST_DOCKER_CONTAINERD:-own}"
CRICTL_VERSION="${KPULSE_TEST_CRICTL_VERSION:-v1.34.0}"
GO="${GO:-/usr/local/go/bin/go}"

ROOTFS="$STATE/rootfs"
LOG_DIR="$STATE/logs"
ENV_FILE="$STATE/env"
BIN_DIR="$STATE/bin"
IMAGE_TAR="$STATE/images/busybox.tar"
CRICTL="$BIN_DIR/crictl"
CRICTL_CONFIG="$STATE/crictl.yaml"

CTR=/usr/bin/ctr
CTD_CONFIG="$STATE/containerd.toml"
CTD_ROOT="$STATE/containerd"
CTD_STATE="$RUN/containerd"
CTD_SOCK="$RUN/containerd.sock"
CTD_PID="$RUN/containerd.pid"
CTD_LOG="$LOG_DIR/containerd.log"
# runc's state root for this containerd's containers. The runc shim's default is
# /run/containerd/runc/<namespace> for every containerd on the machine: two containerds with
# a container of the same namespace and id there collide ("container with given ID already
# exists", and the failed create's cleanup runs `runc delete` on the other one's container).
# The CRI plugin gets it from the config below; `ctr run` needs `--runc-root $RUNC_ROOT`.
RUNC_ROOT="$RUN/runc"

# docker.io's own CLI (a /usr/local/bin/docker may be another release).
DOCKER=/usr/bin/docker
DOCKERD=/usr/sbin/dockerd
DOCKER_DATA="$STATE/docker"
DOCKER_EXEC="$RUN/docker"
DOCKER_SOCK="$RUN/docker.sock"
DOCKER_PID="$RUN/dockerd.pid"
DOCKER_LOG="$LOG_DIR/dockerd.log"
DOCKER_DAEMON_JSON="$STATE/daemon.json"
# Where docker 20.10's supervised containerd lives (daemon/../libcontainerd/supervisor).
DOCKER_OWN_CTD_DIR="$DOCKER_EXEC/containerd"
DOCKER_OWN_CTD_SOCK="$DOCKER_OWN_CTD_DIR/containerd.sock"
DOCKER_OWN_CTD_STATE="$DOCKER_OWN_CTD_DIR/daemon"
DOCKER_OWN_CTD_PID="$DOCKER_OWN_CTD_DIR/containerd.pid"
SYSTEM_CTD_SOCK=/run/containerd/containerd.sock

DOCKER_IMAGE=kpulse-test/busybox:1
CTR_IMAGE=docker.io/kpulse-test/busybox:1
PAUSE_IMAGE=registry.k8s.io/pause:3.6
CTR_NS=kptest
CRI_NS=k8s.io
DOCKER_NS=moby
# A proxy nobody listens on: any registry access of the daemons fails locally.
NO_REGISTRY_PROXY=http://127.0.0.1:9

log() { echo "containers: $*"; }
die() { echo "containers: error: $*" >&2; exit 1; }

ctr_() { timeout 30 "$CTR" -a "$CTD_SOCK" "$@"; }
docker_() { timeout 60 "$DOCKER" -H "unix://$DOCKER_SOCK" "$@"; }
crictl_() { timeout 60 "$CRICTL" --config "$CRICTL_CONFIG" "$@"; }

lock() {
    mkdir -p "$STATE"
    exec 9>"$STATE/.lock"
    flock -w 300 9 || die "another containers.sh holds $STATE/.lock"
}

# our_pid PIDFILE PATTERN: the pid in PIDFILE if that process runs and its command line
# contains PATTERN (a guard against reused pids).
our_pid() {
    local pid cmd
    pid="$(cat "$1" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    cmd="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" || return 1
    [[ "$cmd" == *"$2"* ]] || return 1
    echo "$pid"
}

# terminate PID NAME: TERM, wait up to 30 s, then KILL.
terminate() {
    local pid="$1" name="$2" i
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 60; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    log "$name still running after 30 s; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 20; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
}

# Closes every open descriptor above 2 of this shell (they would be inherited by a daemon:
# our lock, or whatever the caller holds).
close_inherited_fds() {
    local fd
    for fd in "/proc/$BASHPID/fd"/*; do
        fd=${fd##*/}
        [ "$fd" -gt 2 ] 2>/dev/null || continue
        eval "exec $fd>&-" 2>/dev/null || true
    done
}

# spawn LOG CMD...: runs CMD as a daemon (own session, clean environment, no registry access);
# prints its pid.
spawn() {
    local logfile="$1"
    shift
    (close_inherited_fds; exec setsid env -i \
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        "HOME=/root" "LANG=C.UTF-8" \
        "HTTP_PROXY=$NO_REGISTRY_PROXY" "HTTPS_PROXY=$NO_REGISTRY_PROXY" \
        "http_proxy=$NO_REGISTRY_PROXY" "https_proxy=$NO_REGISTRY_PROXY" \
        "NO_PROXY=" "no_proxy=" \
        "$@" </dev/null >>"$logfile" 2>&1) &
    echo $!
}

show_log() {
    echo "----- last lines of $1 -----" >&2
    tail -n 30 "$1" >&2 || true
}

# ---------------------------------------------------------------------------------------------
# Prerequisites

prerequisites() {
    [ "$(id -u)" -eq 0 ] || die "must run as root"
    # No init script may start a system dockerd/containerd while the packages are installed
    # (no systemd here: docker.io's postinst would run /etc/init.d/docker start).
    local added_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    local rc=0
    (ensure_packages containerd runc docker.io busybox-static util-linux procps tar) || rc=$?
    [ "$added_policy" -eq 0 ] || rm -f /usr/sbin/policy-rc.d
    [ "$rc" -eq 0 ] || die "installing the Debian packages failed"
    [ -x /bin/busybox ] || die "/bin/busybox missing (busybox-static)"
    if [ ! -x "$GO" ]; then
        GO="$(command -v go)" || die "go not found (needed once to build crictl): set GO="
    fi
}

# ---------------------------------------------------------------------------------------------
# Files

build_rootfs() {
    if [ -x "$ROOTFS/bin/busybox" ] && cmp -s /bin/busybox "$ROOTFS/bin/busybox"; then
        return 0
    fi
    log "building the busybox rootfs in $ROOTFS"
    local tmp="$ROOTFS.new" applet
    rm -rf "$tmp"
    mkdir -p "$tmp"/{bin,dev,proc,sys,etc,tmp,root,run,var/tmp,usr}
    cp /bin/busybox "$tmp/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$tmp/bin/$applet"
    done
    ln -s bin "$tmp/sbin"
    ln -s ../bin "$tmp/usr/bin"
    ln -s ../bin "$tmp/usr/sbin"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' \
        >"$tmp/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\n' >"$tmp/etc/group"
    chmod 1777 "$tmp/tmp" "$tmp/var/tmp"
    rm -rf "$ROOTFS"
    mv "$tmp" "$ROOTFS"
}

# write_if_changed FILE: stdin to FILE when it differs; returns 1 if it changed.
write_if_changed() {
    local new
    new="$(cat)"
    if [ -f "$1" ] && [ "$(cat "$1")" = "$new" ]; then
        return 0
    fi
    printf '%s\n' "$new" >"$1.new"
    mv "$1.new" "$1"
    return 1
}

write_configs() {
    mkdir -p "$STATE" "$RUN" "$RUNC_ROOT" "$LOG_DIR" "$BIN_DIR" "$STATE/images" "$STATE/cni/bin" \
        "$STATE/cni/net.d" "$STATE/opt"
    local changed=0
    write_if_changed "$CTD_CONFIG" <<EOF || changed=1
# Written by scripts/containers.sh: the private containerd of the integration tests.
version = 2
root = "$CTD_ROOT"
state = "$CTD_STATE"

[grpc]
  address = "$CTD_SOCK"

[ttrpc]
  address = "$CTD_SOCK.ttrpc"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$PAUSE_IMAGE"
    restrict_oom_score_adj = true
    disable_apparmor = true
    enable_selinux = false
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = "$RUNC_ROOT"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$STATE/cni/bin"
      conf_dir = "$STATE/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "$STATE/opt"
EOF
    if [ "$changed" -eq 1 ] && our_pid "$CTD_PID" "$CTD_CONFIG" >/dev/null; then
        log "warning: $CTD_CONFIG changed while containerd runs; run stop and start to apply it"
    fi
    write_if_changed "$DOCKER_DAEMON_JSON" <<<'{}' || true
    write_if_changed "$CRICTL_CONFIG" <<EOF || true
runtime-endpoint: unix://$CTD_SOCK
image-endpoint: unix://$CTD_SOCK
timeout: 30
debug: false
pull-image-on-create: false
disable-pull-on-run: true
EOF
}

# ---------------------------------------------------------------------------------------------
# Daemons

containerd_answers() {
    [ -S "$CTD_SOCK" ] && ctr_ version >/dev/null 2>&1
}

cri_ok() {
    ctr_ plugins ls 2>/dev/null | awk '$1 == "io.containerd.grpc.v1" && $2 == "cri" { print $NF }' |
        grep -qx ok
}

start_containerd() {
    local pid start
    if pid="$(our_pid "$CTD_PID" "$CTD_CONFIG")"; then
        if containerd_answers; then
            log "containerd already running (pid $pid) at $CTD_SOCK"
            cri_ok || die "the CRI plugin of containerd (pid $pid) is not ok (see $CTD_LOG)"
            return 0
        fi
        log "containerd (pid $pid) runs but does not answer yet; waiting"
    else
        rm -f "$CTD_PID"
        if containerd_answers; then
            die "something not started by this script answers at $CTD_SOCK"
        fi
        log "starting containerd (config $CTD_CONFIG, log $CTD_LOG)"
        rm -f "$CTD_SOCK" "$CTD_SOCK.ttrpc"
        pid="$(spawn "$CTD_LOG" /usr/bin/containerd --config "$CTD_CONFIG")"
        echo "$pid" >"$CTD_PID"
    fi
    start=$SECONDS
    while (( SECONDS - start < START_TIMEOUT )); do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$CTD_PID"
            show_log "$CTD_LOG"
            die "containerd (pid $pid) exited during startup"
        fi
        if containerd_answers; then
            cri_ok || { show_log "$CTD_LOG"; die "containerd's CRI plugin did not load"; }
            log "containerd ready after $((SECONDS - start)) s (pid $pid)"
            return 0
        fi
        sleep 0.5
    done
    show_log "$CTD_LOG"
    die "containerd does not answer at $CTD_SOCK after $START_TIMEOUT s (pid $pid)"
}

docker_answers() {
    [ -S "$DOCKER_SOCK" ] && docker_ version --format '{{.Server.Version}}' >/dev/null 2>&1
}

# Sets DOCKER_CTD_STATE, DOCKER_CTD_SOCK: the containerd that holds docker's containers.
docker_containerd() {
    local mode="$DOCKER_CONTAINERD_MODE" pid cmd
    # A running dockerd decides: --containerd on its command line, or its own containerd.
    if pid="$(our_pid "$DOCKER_PID" "$DOCKER_SOCK")"; then
        cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline")"
        if [[ "$cmd" == *"--containerd $CTD_SOCK "* ]]; then mode=shared; else mode=own; fi
    fi
    case "$mode" in
        own) DOCKER_CTD_SOCK="$DOCKER_OWN_CTD_SOCK"; DOCKER_CTD_STATE="$DOCKER_OWN_CTD_STATE" ;;
        shared) DOCKER_CTD_SOCK="$CTD_SOCK"; DOCKER_CTD_STATE="$CTD_STATE" ;;
        *) die "KPULSE_TEST_DOCKER_CONTAINERD must be own or shared, not $mode" ;;
    esac
}

start_docker() {
    local pid start
    if pid="$(our_pid "$DOCKER_PID" "$DOCKER_SOCK")"; then
        docker_containerd
        if docker_answers; then
            log "dockerd already running (pid $pid) at $DOCKER_SOCK"
            return 0
        fi
        log "dockerd (pid $pid) runs but does not answer yet; waiting"
    else
        if docker_answers; then
            die "something not started by this script answers at $DOCKER_SOCK"
        fi
        rm -f "$DOCKER_PID" "$DOCKER_SOCK"
        local -a extra=()
        if [ "$DOCKER_CONTAINERD_MODE" = own ] && [ -e "$SYSTEM_CTD_SOCK" ]; then
            log "$SYSTEM_CTD_SOCK exists, which dockerd 20.10 would use instead of its own" \
                "containerd: pointing it at $CTD_SOCK"
            DOCKER_CONTAINERD_MODE=shared
        fi
        [ "$DOCKER_CONTAINERD_MODE" != shared ] || extra=(--containerd "$CTD_SOCK")
        # A supervised containerd left over from a killed dockerd.
        if pid="$(our_pid "$DOCKER_OWN_CTD_PID" "$DOCKER_OWN_CTD_DIR/")"; then
            terminate "$pid" "docker's old containerd"
        fi
        log "starting dockerd (log $DOCKER_LOG)"
        pid="$(spawn "$DOCKER_LOG" "$DOCKERD" \
            --config-file "$DOCKER_DAEMON_JSON" \
            --data-root "$DOCKER_DATA" --exec-root "$DOCKER_EXEC" \
            -H "unix://$DOCKER_SOCK" --pidfile "$DOCKER_PID" \
            --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
            --shutdown-timeout 3 "${extra[@]}")"
        docker_containerd
    fi
    start=$SECONDS
    while (( SECONDS - start < START_TIMEOUT )); do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_log "$DOCKER_LOG"
            die "dockerd (pid $pid) exited during startup"
        fi
        if docker_answers; then
            log "dockerd ready after $((SECONDS - start)) s (pid $pid; its containerd: $DOCKER_CTD_SOCK)"
            return 0
        fi
        sleep 0.5
    done
    show_log "$DOCKER_LOG"
    die "dockerd does not answer at $DOCKER_SOCK after $START_TIMEOUT s (pid $pid)"
}

# ---------------------------------------------------------------------------------------------
# Images and tools

ctr_has_image() {   # ctr_has_image NAMESPACE REF
    ctr_ -n "$1" images ls -q 2>/dev/null | grep -qxF "$2"
}

# ctr_import NAMESPACE FRESH REF...: imports $IMAGE_TAR (both names) into NAMESPACE when FRESH
# is 1 or one of REF... is missing.
ctr_import() {
    local ns="$1" absent="$2" ref
    shift 2
    for ref in "$@"; do
        ctr_has_image "$ns" "$ref" || absent=1
    done
    [ "$absent" -eq 1 ] || return 0
    log "importing $* into containerd namespace $ns"
    ctr_ -n "$ns" images import "$IMAGE_TAR" >/dev/null
    for ref in "$@"; do
        ctr_has_image "$ns" "$ref" || die "$ref missing in containerd namespace $ns after import"
    done
}

import_images() {
    local fresh=0
    if ! docker_ image inspect "$DOCKER_IMAGE" >/dev/null 2>&1; then
        log "importing $DOCKER_IMAGE into docker"
        tar -C "$ROOTFS" -c . |
            docker_ import --change 'ENTRYPOINT ["/bin/sleep","1000000"]' - "$DOCKER_IMAGE" >/dev/null
        fresh=1
    fi
    if [ "$fresh" -eq 1 ] || ! docker_ image inspect "$PAUSE_IMAGE" >/dev/null 2>&1; then
        docker_ tag "$DOCKER_IMAGE" "$PAUSE_IMAGE"
    fi
    if [ "$fresh" -eq 1 ] || [ ! -s "$IMAGE_TAR" ]; then
        docker_ save -o "$IMAGE_TAR.new" "$DOCKER_IMAGE" "$PAUSE_IMAGE"
        mv "$IMAGE_TAR.new" "$IMAGE_TAR"
    fi
    ctr_import "$CTR_NS" "$fresh" "$CTR_IMAGE"
    ctr_import "$CRI_NS" "$fresh" "$CTR_IMAGE" "$PAUSE_IMAGE"
}

build_crictl() {
    local stamp="$BIN_DIR/crictl.version"
    if [ -x "$CRICTL" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$CRICTL_VERSION" ]; then
        return 0
    fi
    log "building crictl $CRICTL_VERSION from the Go module proxy (once; a few minutes)"
    if ! GOBIN="$BIN_DIR" nice -n 10 "$GO" install "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION" \
            >"$LOG_DIR/crictl-build.log" 2>&1; then
        show_log "$LOG_DIR/crictl-build.log"
        die "go install sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION failed"
    fi
    echo "$CRICTL_VERSION" >"$stamp"
}

write_env() {
    docker_containerd
    cat >"$ENV_FILE.new" <<EOF
KPULSE_TEST_CONTAINERS_DIR=$STATE
KPULSE_TEST_ROOTFS=$ROOTFS
KPULSE_TEST_CTR=$CTR
KPULSE_TEST_CONTAINERD_SOCK=$CTD_SOCK
KPULSE_TEST_CONTAINERD_STATE=$CTD_STATE
KPULSE_TEST_CONTAINERD_ROOT=$CTD_ROOT
KPULSE_TEST_RUNC_ROOT=$RUNC_ROOT
KPULSE_TEST_CTR_NAMESPACE=$CTR_NS
KPULSE_TEST_CTR_IMAGE=$CTR_IMAGE
KPULSE_TEST_CRI_NAMESPACE=$CRI_NS
KPULSE_TEST_CRI_IMAGE=$CTR_IMAGE
KPULSE_TEST_PAUSE_IMAGE=$PAUSE_IMAGE
KPULSE_TEST_CRICTL=$CRICTL
KPULSE_TEST_CRICTL_CONFIG=$CRICTL_CONFIG
KPULSE_TEST_DOCKER=$DOCKER
KPULSE_TEST_DOCKER_SOCK=$DOCKER_SOCK
KPULSE_TEST_DOCKER_HOST=unix://$DOCKER_SOCK
KPULSE_TEST_DOCKER_IMAGE=$DOCKER_IMAGE
KPULSE_TEST_DOCKER_CONTAINERD_SOCK=$DOCKER_CTD_SOCK
KPULSE_TEST_DOCKER_CONTAINERD_STATE=$DOCKER_CTD_STATE
KPULSE_TEST_DOCKER_NAMESPACE=$DOCKER_NS
KPULSE_TEST_CONTAINERS_FIXTURES=$REPO/tests/fixtures/containers
EOF
    mv "$ENV_FILE.new" "$ENV_FILE"
}

# ---------------------------------------------------------------------------------------------
# Stop

remove_docker_containers() {
    docker_answers || return 0
    local ids
    ids="$(docker_ ps -aq)"
    [ -z "$ids" ] && return 0
    log "removing docker containers: $(echo "$ids" | wc -l)"
    # shellcheck disable=SC2086
    docker_ rm -f $ids >/dev/null || true
}

remove_containerd_containers() {
    containerd_answers || return 0
    if [ -x "$CRICTL" ] && [ -n "$(crictl_ pods -q 2>/dev/null)" ]; then
        log "removing CRI pods"
        crictl_ rmp -a -f >/dev/null || true
    fi
    local ns id
    for ns in $(ctr_ namespaces ls -q); do
        # With a shared containerd, moby's containers belong to dockerd (removed above).
        [ "$ns" != "$DOCKER_NS" ] || ! docker_answers || continue
        for id in $(ctr_ -n "$ns" tasks ls -q); do
            ctr_ -n "$ns" tasks delete -f "$id" >/dev/null 2>&1 || true
        done
        for id in $(ctr_ -n "$ns" containers ls -q); do
            log "removing container $ns/$id"
            ctr_ -n "$ns" tasks delete -f "$id" >/dev/null 2>&1 || true
            ctr_ -n "$ns" containers rm "$id" >/dev/null 2>&1 || true
        done
    done
}

# Shims (and their containers) of our containerds that outlived them, then mounts below our
# directories.
kill_leftovers() {
    local p cmd pid child
    local -a shims=()
    for p in /proc/[0-9]*; do
        cmd="$(tr '\0' ' ' 2>/dev/null <"$p/cmdline")" || continue
        case "$cmd" in
            *containerd-shim*"-address $CTD_SOCK "*|*containerd-shim*"-address $DOCKER_OWN_CTD_SOCK "*)
                shims+=("${p#/proc/}") ;;
        esac
    done
    for pid in "${shims[@]}"; do
        log "killing leftover shim $pid and its children"
        for child in $(pgrep -P "$pid" 2>/dev/null); do
            kill -KILL "$child" 2>/dev/null || true
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    [ "${#shims[@]}" -eq 0 ] || sleep 1
    local mp
    for mp in $(awk -v a="$RUN/" -v b="$STATE/" \
            'index($5, a) == 1 || index($5, b) == 1 { print $5 }' /proc/self/mountinfo | tac); do
        if umount -l "$mp" 2>/dev/null; then log "unmounted leftover $mp"; fi
    done
}

# ---------------------------------------------------------------------------------------------
# Commands

cmd_start() {
    lock
    prerequisites
    build_rootfs
    write_configs
    start_containerd
    start_docker
    import_images
    build_crictl
    crictl_ version >/dev/null || die "crictl does not reach containerd's CRI at $CTD_SOCK"
    write_env
    log "ready: containerd $CTD_SOCK, dockerd $DOCKER_SOCK (docker's containerd state" \
        "$DOCKER_CTD_STATE, namespace $DOCKER_NS); env file:"
    echo "$ENV_FILE"
}

cmd_stop() {
    lock
    rm -f "$ENV_FILE"
    local pid
    remove_docker_containers
    if pid="$(our_pid "$DOCKER_PID" "$DOCKER_SOCK")"; then
        terminate "$pid" dockerd
    fi
    if pid="$(our_pid "$DOCKER_OWN_CTD_PID" "$DOCKER_OWN_CTD_DIR/")"; then
        terminate "$pid" "docker's containerd"
    fi
    remove_containerd_containers
    if pid="$(our_pid "$CTD_PID" "$CTD_CONFIG")"; then
        terminate "$pid" containerd
    fi
    rm -f "$CTD_PID"
    kill_leftovers
    log "stopped"
}

cmd_status() {
    local rc=0 pid
    if pid="$(our_pid "$CTD_PID" "$CTD_CONFIG")" && containerd_answers; then
        if cri_ok; then
            log "containerd running (pid $pid) at $CTD_SOCK, CRI plugin ok"
        else
            log "containerd running (pid $pid) at $CTD_SOCK, CRI plugin NOT ok"
            rc=1
        fi
    else
        log "containerd not running (or not answering) at $CTD_SOCK"
        rc=1
    fi
    if pid="$(our_pid "$DOCKER_PID" "$DOCKER_SOCK")" && docker_answers; then
        docker_containerd
        log "dockerd running (pid $pid) at $DOCKER_SOCK, its containerd at $DOCKER_CTD_SOCK"
    else
        log "dockerd not running (or not answering) at $DOCKER_SOCK"
        rc=1
    fi
    [ "$rc" -ne 0 ] || [ -f "$ENV_FILE" ] || log "(no env file: run start)"
    return "$rc"
}

cmd_env() {
    [ -f "$ENV_FILE" ] || die "no $ENV_FILE: run scripts/containers.sh start"
    echo "$ENV_FILE"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
