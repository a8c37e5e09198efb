#!/usr/bin/env bash
# A local single-node OpenSearch for development and the integration tests, without Docker.
#
#   scripts/opensearch.sh start    fetch (Maven), unpack, run and wait until the node is healthy
#   scripts/opensearch.sh stop     stop the node (TERM, wait, then KILL); OK if not running
#   scripts/opensearch.sh status   print the state; exit 0 only if the node answers healthy
#
# start fetches the OpenSearch "integ-test-zip" distribution
# (org.opensearch.distribution.integ-test-zip:opensearch:<version>:zip) from Maven Central with
# mvn. That zip bundles no JDK and no plugins besides transport-netty4 (so no security plugin:
# plain, unauthenticated HTTP). It runs on the system Java 17, on loopback, as an unprivileged
# system user when started as root (OpenSearch refuses to run as root).
# All commands are idempotent.
#
# Environment (all optional):
#   OPENSEARCH_VERSION      2.19.6 (2.19.x is the newest line that runs on Java 17)
#   OPENSEARCH_HOME_DIR     state dir: dist, config, data, logs, pid file (default <repo>/.opensearch)
#   OPENSEARCH_HOST         127.0.0.1
#   OPENSEARCH_PORT         9200
#   OPENSEARCH_TRANSPORT_PORT  9300-9400
#   OPENSEARCH_JAVA_OPTS    -Xms512m -Xmx512m
#   OPENSEARCH_JAVA_HOME    Java used by the node (default: the system Java 17)
#   OPENSEARCH_USER         user the node runs as when started by root (default kpulse-os)
#   OPENSEARCH_START_TIMEOUT  seconds to wait for the node to become healthy (default 120)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

OS_VERSION="${OPENSEARCH_VERSION:-2.19.6}"
STATE="${OPENSEARCH_HOME_DIR:-$REPO/.opensearch}"
HOST="${OPENSEARCH_HOST:-127.0.0.1}"
PORT="${OPENSEARCH_PORT:-9200}"
TRANSPORT_PORT="${OPENSEARCH_TRANSPORT_PORT:-9300-9400}"
JAVA_OPTS="${OPENSEARCH_JAVA_OPTS:--Xms512m -Xmx512m}"
OS_USER="${OPENSEARCH_USER:-kpulse-os}"
START_TIMEOUT="${OPENSEARCH_START_TIMEOUT:-120}"
CLUSTER_NAME="kpulse-dev"
ARTIFACT="org.opensearch.distribution.integ-test-zip:opensearch:${OS_VERSION}:zip"

URL_HOST="$HOST"
[[ "$HOST" == *:* ]] && URL_HOST="[$HOST]"   # IPv6 literal
URL="http://${URL_HOST}:${PORT}"

OS_HOME="$STATE/opensearch-$OS_VERSION"
CONF_DIR="$STATE/config"
DATA_DIR="$STATE/data"
LOG_DIR="$STATE/logs"
TMP_DIR="$STATE/tmp"
DIST_DIR="$STATE/dist"
PID_FILE="$STATE/opensearch.pid"
CONSOLE_LOG="$LOG_DIR/console.log"
SERVER_LOG="$LOG_DIR/$CLUSTER_NAME.log"

log() { echo "opensearch: $*"; }
die() { echo "opensearch: error: $*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# ---------------------------------------------------------------------------------------------
# Prerequisites (Debian packages only)

APT_UPDATED=0
apt_install() {
    is_root || die "missing $*: install it (needs root: apt-get install $*)"
    log "installing Debian packages: $*"
    # `apt-get update` only when the package lists are missing or the install fails with them.
    if [ "$APT_UPDATED" -eq 0 ] && ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        apt-get update -qq && APT_UPDATED=1
    fi
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; then
        [ "$APT_UPDATED" -eq 0 ] || die "apt-get install $* failed"
        apt-get update -qq && APT_UPDATED=1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    fi
}

need_cmd() {   # need_cmd COMMAND DEBIAN_PACKAGE
    command -v "$1" >/dev/null 2>&1 || apt_install "$2"
}

java_major() {   # prints the feature version of the java binary $1
    "$1" -XshowSettings:properties -version 2>&1 \
        | sed -n 's/^ *java\.specification\.version = \([0-9.]*\).*/\1/p' | sed 's/^1\.//; s/\..*//'
}

# Sets JAVA_HOME_FOR_OS to a Java that OpenSearch 2.19 runs on (11..23; it needs the
# SecurityManager, which Java 24 removed). Installs openjdk-17-jre-headless if there is none.
find_java() {
    local cand java major
    for cand in "${OPENSEARCH_JAVA_HOME:-}" /usr/lib/jvm/java-17-openjdk-* \
                "$(dirname "$(dirname "$(readlink -f "$(command -v java 2>/dev/null || echo /nonexistent)")")")"; do
        java="$cand/bin/java"
        if [ -z "$cand" ] || [ ! -x "$java" ]; then continue; fi
        major="$(java_major "$java")"
        if [ -n "$major" ] && [ "$major" -ge 11 ] && [ "$major" -le 23 ]; then
            JAVA_HOME_FOR_OS="$cand"
            return 0
        fi
        if [ "$cand" = "${OPENSEARCH_JAVA_HOME:-}" ]; then
            die "OPENSEARCH_JAVA_HOME=$cand is Java ${major:-?}; OpenSearch $OS_VERSION needs Java 11..23"
        fi
    done
    apt_install openjdk-17-jre-headless
    for cand in /usr/lib/jvm/java-17-openjdk-*; do
        [ -x "$cand/bin/java" ] && JAVA_HOME_FOR_OS="$cand" && return 0
    done
    die "no usable Java found (wanted Java 17)"
}

ensure_prereqs() {
    need_cmd curl curl
    need_cmd unzip unzip
    find_java
    need_cmd mvn maven
}

# Runs the rest of the command line as the node's user (directly when not root).
as_os_user() {
    if is_root; then
        setpriv --reuid="$OS_USER" --regid="$OS_USER" --init-groups -- "$@"
    else
        "$@"
    fi
}

ensure_user() {
    is_root || return 0
    if ! id -u "$OS_USER" >/dev/null 2>&1; then
        log "creating system user $OS_USER"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$OS_USER"
    fi
}

# ---------------------------------------------------------------------------------------------
# Fetch and unpack

ensure_distribution() {
    [ -x "$OS_HOME/bin/opensearch" ] && return 0
    local zip="$DIST_DIR/opensearch-$OS_VERSION.zip"
    mkdir -p "$DIST_DIR"
    if [ ! -s "$zip" ]; then
        log "fetching $ARTIFACT from Maven Central"
        # Run outside any Maven project so that no pom.xml is picked up.
        if ! (cd "$DIST_DIR" && mvn -B -q -Dstyle.color=never dependency:copy \
                -Dartifact="$ARTIFACT" -DoutputDirectory="$DIST_DIR" -Dmdep.overWriteIfNewer=true); then
            die "mvn could not fetch $ARTIFACT (is the version served? set OPENSEARCH_VERSION)"
        fi
        [ -s "$zip" ] || die "mvn did not produce $zip"
    fi
    log "unpacking $zip"
    local tmp="$STATE/.unpack.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    unzip -q "$zip" -d "$tmp"
    [ -x "$tmp/opensearch-$OS_VERSION/bin/opensearch" ] || { rm -rf "$tmp"; die "unexpected layout in $zip"; }
    rm -rf "$OS_HOME"
    mv "$tmp/opensearch-$OS_VERSION" "$OS_HOME"
    rm -rf "$tmp"
    # The zip stays in Maven's local repository; no need for a second copy here.
    rm -f "$zip"
}

# Our own config dir: the distribution's jvm.options / log4j2.properties, plus opensearch.yml
# written anew on every start from the current environment.
write_config() {
    mkdir -p "$CONF_DIR" "$DATA_DIR" "$LOG_DIR" "$TMP_DIR"
    local f
    cp -f "$OS_HOME/config/log4j2.properties" "$CONF_DIR/"
    # jvm.options names paths relative to the distribution (GC log, crash files, heap dumps):
    # put them under the state dir's logs.
    sed -e "s#HeapDumpPath=data#HeapDumpPath=$LOG_DIR#" -e "s#logs/#$LOG_DIR/#g" \
        "$OS_HOME/config/jvm.options" >"$CONF_DIR/jvm.options"
    mkdir -p "$CONF_DIR/jvm.options.d"
    cat >"$CONF_DIR/opensearch.yml" <<EOF
# Written by scripts/opensearch.sh on each start; edits are lost.
cluster.name: $CLUSTER_NAME
node.name: node-0
path.data: $DATA_DIR
path.logs: $LOG_DIR
network.host: $HOST
http.port: $PORT
transport.port: $TRANSPORT_PORT
discovery.type: single-node
# Tests run on small, nearly full disks: never turn indices read-only over disk usage.
cluster.routing.allocation.disk.threshold_enabled: false
# The integ-test distribution has no security plugin, so there are no plugins.security.* settings.
EOF
    # The version this config was written for (the node refuses data from a newer version).
    echo "$OS_VERSION" >"$STATE/VERSION"
    if is_root; then
        chown -R "$OS_USER:$OS_USER" "$OS_HOME" "$CONF_DIR" "$DATA_DIR" "$LOG_DIR" "$TMP_DIR"
        as_os_user test -w "$DATA_DIR" \
            || die "user $OS_USER cannot write $DATA_DIR (a parent directory is not searchable?); set OPENSEARCH_HOME_DIR"
    fi
}

# ---------------------------------------------------------------------------------------------
# State

# Prints the pid of our node if its pid file names a live OpenSearch process.
node_pid() {
    [ -s "$PID_FILE" ] || return 1
    local pid
    pid="$(tr -dc '0-9' <"$PID_FILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    # Guard against pid reuse: the process must be our launcher or our JVM.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -e 'org.opensearch.bootstrap.OpenSearch' -e "$OS_HOME/bin/opensearch" \
        || return 1
    echo "$pid"
}

healthy() {
    local body
    body="$(curl -fsS --max-time 5 "$URL/_cluster/health?wait_for_status=yellow&timeout=1s" 2>/dev/null)" || return 1
    grep -Eq '"status" *: *"(green|yellow)"' <<<"$body"
}

cluster_status() {
    curl -fsS --max-time 5 "$URL/_cluster/health" 2>/dev/null | sed -n 's/.*"status" *: *"\([a-z]*\)".*/\1/p'
}

show_logs() {
    # console.log has everything the node printed, including errors from before its logging
    # started (bad JVM options, wrong Java); the server log holds the same once logging is up.
    local f="$CONSOLE_LOG"
    [ -s "$f" ] || f="$SERVER_LOG"
    [ -s "$f" ] || { echo "opensearch: no log output in $LOG_DIR" >&2; return 0; }
    if grep -qE '\[ERROR\]|^Likely root cause|Exception:|^Error' "$f"; then
        echo "----- errors in $f -----" >&2
        grep -E '\[ERROR\]|^Likely root cause|Exception:|^Error' "$f" | head -n 8 | cut -c1-400 >&2
    fi
    echo "----- last lines of $f -----" >&2
    tail -n 30 "$f" | cut -c1-400 >&2
    echo "----- (all logs: $LOG_DIR) -----" >&2
}

lock() {
    mkdir -p "$STATE"
    exec 9>"$STATE/.lock"
    flock -w 300 9 || die "another opensearch.sh holds $STATE/.lock"
}

# ---------------------------------------------------------------------------------------------
# Commands

cmd_start() {
    lock
    local pid
    if pid="$(node_pid)"; then
        if healthy; then
            log "already running (pid $pid) and healthy ($(cluster_status)) at $URL"
            return 0
        fi
        log "already running (pid $pid) but not healthy yet; waiting"
        wait_healthy "$pid"
        return
    fi
    rm -f "$PID_FILE"
    if healthy; then
        log "an OpenSearch node not started from $STATE already answers healthy at $URL; using it"
        return 0
    fi

    ensure_prereqs
    ensure_user
    ensure_distribution
    if [ -s "$STATE/VERSION" ] && [ "$(cat "$STATE/VERSION")" != "$OS_VERSION" ]; then
        log "note: $DATA_DIR was last used by OpenSearch $(cat "$STATE/VERSION")"
    fi
    write_config

    log "starting OpenSearch $OS_VERSION at $URL (heap: $JAVA_OPTS, logs: $LOG_DIR)"
    : >"$CONSOLE_LOG"
    is_root && chown "$OS_USER:$OS_USER" "$CONSOLE_LOG"
    # setsid: own session, so the node outlives this shell. The exec chain
    # setsid -> setpriv -> env -> bin/opensearch -> java keeps one pid: $! is the node's JVM.
    # fd 9 (the lock) must not be inherited by the node.
    # OpenSearch asks for 65535 open files (only a warning on loopback); raise it if we may.
    ulimit -n 65535 2>/dev/null || true
    local -a run=(env -i
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        "HOME=$STATE" "LANG=C.UTF-8"
        "OPENSEARCH_JAVA_HOME=$JAVA_HOME_FOR_OS"
        "OPENSEARCH_JAVA_OPTS=$JAVA_OPTS"
        "OPENSEARCH_PATH_CONF=$CONF_DIR"
        "OPENSEARCH_TMPDIR=$TMP_DIR"
        "$OS_HOME/bin/opensearch")
    if is_root; then
        setsid setpriv --reuid="$OS_USER" --regid="$OS_USER" --init-groups -- "${run[@]}" \
            </dev/null >>"$CONSOLE_LOG" 2>&1 9>&- &
    else
        setsid "${run[@]}" </dev/null >>"$CONSOLE_LOG" 2>&1 9>&- &
    fi
    pid=$!
    echo "$pid" >"$PID_FILE"
    wait_healthy "$pid"
}

wait_healthy() {
    local pid="$1" start=$SECONDS
    while (( SECONDS - start < START_TIMEOUT )); do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            echo "opensearch: error: the node (pid $pid) exited during startup" >&2
            show_logs
            exit 1
        fi
        if healthy; then
            log "healthy ($(cluster_status)) after $((SECONDS - start)) s: $URL (pid $pid)"
            return 0
        fi
        sleep 1
    done
    echo "opensearch: error: not healthy after ${START_TIMEOUT} s (pid $pid still running; see $LOG_DIR)" >&2
    show_logs
    exit 1
}

cmd_stop() {
    lock
    local pid
    if ! pid="$(node_pid)"; then
        rm -f "$PID_FILE"
        log "not running"
        return 0
    fi
    log "stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 60; i++)); do   # up to 30 s
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "still running after 30 s; sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
    fi
    rm -f "$PID_FILE"
    log "stopped"
}

cmd_status() {
    local pid
    if pid="$(node_pid)"; then
        if healthy; then
            log "running (pid $pid), healthy ($(cluster_status)) at $URL"
            return 0
        fi
        log "running (pid $pid), NOT healthy at $URL"
        return 1
    fi
    if healthy; then
        log "no node from $STATE is running, but a node answers healthy ($(cluster_status)) at $URL"
        return 0
    fi
    log "not running"
    return 3
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
