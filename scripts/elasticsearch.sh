#!/usr/bin/env bash
# Local single-node Elasticsearch 7 and 8 for development and the integration tests, without
# Docker: the sink claims to work with Elasticsearch 7/8 too, and these nodes prove it.
#
#   scripts/elasticsearch.sh start  [7|8]   fetch (Maven), unpack, run, wait until healthy
#   scripts/elasticsearch.sh stop   [7|8]   stop the node (TERM, wait, then KILL); OK if not running
#   scripts/elasticsearch.sh status [7|8]   print the state; exit 0 only if the node answers healthy
#
# Without a major version the command applies to both nodes (7, then 8). The nodes run next to
# each other and next to the OpenSearch nodes of scripts/opensearch.sh:
#
#   major  release   HTTP                    transport   state dir
#   7      7.17.28   http://127.0.0.1:9207   9517-9519   <repo>/.elasticsearch-7
#   8      8.15.0    http://127.0.0.1:9208   9527-9529   <repo>/.elasticsearch-8
#
# start fetches the Elasticsearch "integ-test-zip" distribution
# (org.elasticsearch.distribution.integ-test-zip:elasticsearch:<version>:zip) from Maven Central
# with mvn. That zip bundles no JDK and only the modules transport-netty4, x-pack-core and
# x-pack-security (8 also apm): no ingest processors, no ILM; 7 cannot hold data streams, 8 can
# (the data streams themselves are core) but lacks the /_data_stream API; 8 also lacks `GET /`
# (the rest-root module), so this script identifies a node by `GET /_nodes/_local` and the
# `X-elastic-product: Elasticsearch` header. Security is turned off
# (`xpack.security.enabled: false`; it exists because x-pack-security is there, and setting it
# also stops Elasticsearch 8 from auto-configuring TLS and passwords): plain, unauthenticated
# HTTP. The node runs on the system Java 17, on loopback (so the production bootstrap checks,
# e.g. vm.max_map_count, are not enforced), as the unprivileged system user of
# scripts/opensearch.sh when started as root (Elasticsearch refuses to run as root).
# All commands are idempotent.
#
# Environment (all optional; they apply to the node named by the argument, so name one):
#   ELASTICSEARCH_VERSION      another release of that major (default 7.17.28 / 8.15.0)
#   ELASTICSEARCH_HOME_DIR     state dir: dist, config, data, logs, pid file
#   ELASTICSEARCH_HOST         127.0.0.1
#   ELASTICSEARCH_PORT         9207 / 9208
#   ELASTICSEARCH_TRANSPORT_PORT  9517-9519 / 9527-9529
#   ELASTICSEARCH_JAVA_OPTS    -Xms512m -Xmx512m
#   ELASTICSEARCH_JAVA_HOME    Java used by the node (default: the system Java 17; needs 17..23:
#                              Elasticsearch 8 wants 17+, and 7 and 8 need the SecurityManager
#                              that Java 24 removed)
#   ELASTICSEARCH_USER         user the node runs as when started by root (default kpulse-os)
#   ELASTICSEARCH_START_TIMEOUT  seconds to wait for the node to become healthy (default 120)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$REPO/scripts/elasticsearch.sh"

CMD="${1:-}"
MAJOR="${2:-}"

case "$CMD" in
    start|stop|status) ;;
    *) echo "usage: $0 start|stop|status [7|8]" >&2; exit 2 ;;
esac
case "$MAJOR" in
    7|8) ;;
    "")
        if [ -n "${ELASTICSEARCH_VERSION:-}" ]; then
            MAJOR="${ELASTICSEARCH_VERSION%%.*}"
        else
            # Both nodes; status fails if either is not healthy.
            for var in ELASTICSEARCH_HOME_DIR ELASTICSEARCH_PORT ELASTICSEARCH_TRANSPORT_PORT; do
                if [ -n "${!var:-}" ]; then
                    echo "elasticsearch: error: $var applies to one node: name it ($0 $CMD 7|8)" >&2
                    exit 2
                fi
            done
            rc=0
            "$SELF" "$CMD" 7 || rc=$?
            "$SELF" "$CMD" 8 || { r=$?; [ "$rc" -ne 0 ] || rc=$r; }
            exit "$rc"
        fi
        ;;
    *) echo "usage: $0 start|stop|status [7|8]" >&2; exit 2 ;;
esac

case "$MAJOR" in
    7) DEFAULT_VERSION=7.17.28; DEFAULT_PORT=9207; DEFAULT_TRANSPORT=9517-9519 ;;
    8) DEFAULT_VERSION=8.15.0; DEFAULT_PORT=9208; DEFAULT_TRANSPORT=9527-9529 ;;
    *) echo "elasticsearch: error: ELASTICSEARCH_VERSION must be a 7.x or 8.x release" >&2; exit 2 ;;
esac

ES_VERSION="${ELASTICSEARCH_VERSION:-$DEFAULT_VERSION}"
[ "${ES_VERSION%%.*}" = "$MAJOR" ] \
    || { echo "elasticsearch: error: ELASTICSEARCH_VERSION=$ES_VERSION is not a $MAJOR.x release" >&2; exit 2; }
STATE="${ELASTICSEARCH_HOME_DIR:-$REPO/.elasticsearch-$MAJOR}"
HOST="${ELASTICSEARCH_HOST:-127.0.0.1}"
PORT="${ELASTICSEARCH_PORT:-$DEFAULT_PORT}"
TRANSPORT_PORT="${ELASTICSEARCH_TRANSPORT_PORT:-$DEFAULT_TRANSPORT}"
JAVA_OPTS="${ELASTICSEARCH_JAVA_OPTS:--Xms512m -Xmx512m}"
START_TIMEOUT="${ELASTICSEARCH_START_TIMEOUT:-120}"
ES_USER="${ELASTICSEARCH_USER:-kpulse-os}"
CLUSTER_NAME="kpulse-dev-es$MAJOR"
ARTIFACT="org.elasticsearch.distribution.integ-test-zip:elasticsearch:${ES_VERSION}:zip"

URL_HOST="$HOST"
[[ "$HOST" == *:* ]] && URL_HOST="[$HOST]"   # IPv6 literal
URL="http://${URL_HOST}:${PORT}"

ES_HOME="$STATE/elasticsearch-$ES_VERSION"
CONF_DIR="$STATE/config"
DATA_DIR="$STATE/data"
LOG_DIR="$STATE/logs"
TMP_DIR="$STATE/tmp"
DIST_DIR="$STATE/dist"
PID_FILE="$STATE/elasticsearch.pid"
CONSOLE_LOG="$LOG_DIR/console.log"
SERVER_LOG="$LOG_DIR/$CLUSTER_NAME.log"

log() { echo "elasticsearch $MAJOR: $*"; }
die() { echo "elasticsearch $MAJOR: error: $*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# ---------------------------------------------------------------------------------------------
# Prerequisites (Debian packages only)

APT_UPDATED=0
apt_install() {
    is_root || die "missing $*: install it (needs root: apt-get install $*)"
    log "installing Debian packages: $*"
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

# Sets JAVA_HOME_FOR_ES to a Java that Elasticsearch 7.17 and 8.x run on (17..23).
find_java() {
    local cand java major
    for cand in "${ELASTICSEARCH_JAVA_HOME:-}" /usr/lib/jvm/java-17-openjdk-* \
                "$(dirname "$(dirname "$(readlink -f "$(command -v java 2>/dev/null || echo /nonexistent)")")")"; do
        java="$cand/bin/java"
        if [ -z "$cand" ] || [ ! -x "$java" ]; then continue; fi
        major="$(java_major "$java")"
        if [ -n "$major" ] && [ "$major" -ge 17 ] && [ "$major" -le 23 ]; then
            JAVA_HOME_FOR_ES="$cand"
            return 0
        fi
        if [ "$cand" = "${ELASTICSEARCH_JAVA_HOME:-}" ]; then
            die "ELASTICSEARCH_JAVA_HOME=$cand is Java ${major:-?}; Elasticsearch $ES_VERSION needs Java 17..23"
        fi
    done
    apt_install openjdk-17-jre-headless
    for cand in /usr/lib/jvm/java-17-openjdk-*; do
        [ -x "$cand/bin/java" ] && JAVA_HOME_FOR_ES="$cand" && return 0
    done
    die "no usable Java found (wanted Java 17)"
}

ensure_prereqs() {
    need_cmd curl curl
    need_cmd unzip unzip
    find_java
    need_cmd mvn maven
}

as_es_user() {
    if is_root; then
        setpriv --reuid="$ES_USER" --regid="$ES_USER" --init-groups -- "$@"
    else
        "$@"
    fi
}

ensure_user() {
    is_root || return 0
    if ! id -u "$ES_USER" >/dev/null 2>&1; then
        log "creating system user $ES_USER"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$ES_USER"
    fi
}

# ---------------------------------------------------------------------------------------------
# Fetch and unpack

ensure_distribution() {
    [ -x "$ES_HOME/bin/elasticsearch" ] && return 0
    local zip="$DIST_DIR/elasticsearch-$ES_VERSION.zip"
    mkdir -p "$DIST_DIR"
    if [ ! -s "$zip" ]; then
        log "fetching $ARTIFACT from Maven Central"
        # Run outside any Maven project so that no pom.xml is picked up.
        if ! (cd "$DIST_DIR" && mvn -B -q -Dstyle.color=never dependency:copy \
                -Dartifact="$ARTIFACT" -DoutputDirectory="$DIST_DIR" -Dmdep.overWriteIfNewer=true); then
            die "mvn could not fetch $ARTIFACT (is the version served? set ELASTICSEARCH_VERSION)"
        fi
        [ -s "$zip" ] || die "mvn did not produce $zip"
    fi
    log "unpacking $zip"
    local tmp="$STATE/.unpack.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    unzip -q "$zip" -d "$tmp"
    [ -x "$tmp/elasticsearch-$ES_VERSION/bin/elasticsearch" ] || { rm -rf "$tmp"; die "unexpected layout in $zip"; }
    rm -rf "$ES_HOME"
    mv "$tmp/elasticsearch-$ES_VERSION" "$ES_HOME"
    rm -rf "$tmp"
    # The zip stays in Maven's local repository; no need for a second copy here.
    rm -f "$zip"
}

# Our own config dir: the distribution's jvm.options / log4j2.properties, plus
# elasticsearch.yml written anew on every start from the current environment.
write_config() {
    mkdir -p "$CONF_DIR" "$DATA_DIR" "$LOG_DIR" "$TMP_DIR"
    cp -f "$ES_HOME/config/log4j2.properties" "$CONF_DIR/"
    # jvm.options names paths relative to the distribution (GC log, crash files, heap dumps):
    # put them under the state dir's logs.
    sed -e "s#HeapDumpPath=data#HeapDumpPath=$LOG_DIR#" -e "s#logs/#$LOG_DIR/#g" \
        "$ES_HOME/config/jvm.options" >"$CONF_DIR/jvm.options"
    mkdir -p "$CONF_DIR/jvm.options.d"
    cat >"$CONF_DIR/elasticsearch.yml" <<EOF
# Written by scripts/elasticsearch.sh on each start; edits are lost.
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
# The integ-test distribution has the x-pack-security module: turn it off (plain HTTP, no
# passwords; on 8 this also skips the TLS/password auto-configuration at first start).
xpack.security.enabled: false
EOF
    # The version this config was written for (the node refuses data from a newer version).
    echo "$ES_VERSION" >"$STATE/VERSION"
    if is_root; then
        # The node writes its keystore into the config dir (Elasticsearch 8 makes one at start).
        chown -R "$ES_USER:$ES_USER" "$ES_HOME" "$CONF_DIR" "$DATA_DIR" "$LOG_DIR" "$TMP_DIR"
        as_es_user test -w "$DATA_DIR" \
            || die "user $ES_USER cannot write $DATA_DIR (a parent directory is not searchable?); set ELASTICSEARCH_HOME_DIR"
    fi
}

# ---------------------------------------------------------------------------------------------
# State

# Prints the pid of our node if its pid file names a live Elasticsearch process. 7: the pid is
# the server JVM. 8: the pid is the launcher JVM (server-cli), which runs the server JVM as its
# child; both are in the process group the pid leads (setsid).
node_pid() {
    [ -s "$PID_FILE" ] || return 1
    local pid cmdline
    pid="$(tr -dc '0-9' <"$PID_FILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    # Guard against pid reuse: the process must be our launcher or our JVM, of our distribution.
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    grep -q -e 'org.elasticsearch.bootstrap.Elasticsearch' -e 'org.elasticsearch.launcher.CliToolLauncher' \
        -e "$ES_HOME/bin/elasticsearch" <<<"$cmdline" || return 1
    grep -qF -e "$ES_HOME/" <<<"$cmdline" || return 1
    echo "$pid"
}

# Pids of the processes in process group $1.
group_pids() {
    ps -e -o pid=,pgid= | awk -v g="$1" '$2 == g { print $1 }'
}

# The node at $URL: prints "<major> <version> <product>", product "elasticsearch" when it
# answers with the header `X-elastic-product: Elasticsearch` (7.14 and later), else "other"
# (e.g. OpenSearch). Not `GET /`: the 8.x integ-test-zip lacks the rest-root module that serves
# it (405 "Incorrect HTTP method for uri [/]").
node_version() {
    local out version product=other
    out="$(curl -fsS -D - --max-time 5 "$URL/_nodes/_local?filter_path=nodes.*.version" 2>/dev/null)" || return 1
    version="$(sed -n 's/.*"version" *: *"\([^"]*\)".*/\1/p' <<<"$out" | head -n 1)"
    grep -qi '^x-elastic-product: *elasticsearch' <<<"$out" && product=elasticsearch
    [ -n "$version" ] || return 1
    echo "${version%%.*} $version $product"
}

# The node at $URL is an Elasticsearch of our major version and yellow or green.
healthy() {
    local body major version product
    read -r major version product <<<"$(node_version)" || return 1
    [ "$major" = "$MAJOR" ] && [ "$product" = elasticsearch ] || return 1
    body="$(curl -fsS --max-time 5 "$URL/_cluster/health?wait_for_status=yellow&timeout=1s" 2>/dev/null)" || return 1
    grep -Eq '"status" *: *"(green|yellow)"' <<<"$body"
}

cluster_status() {
    curl -fsS --max-time 5 "$URL/_cluster/health" 2>/dev/null | sed -n 's/.*"status" *: *"\([a-z]*\)".*/\1/p'
}

show_logs() {
    local f="$CONSOLE_LOG"
    [ -s "$f" ] || f="$SERVER_LOG"
    [ -s "$f" ] || { echo "elasticsearch: no log output in $LOG_DIR" >&2; return 0; }
    if grep -qE '\[ERROR\]|^Likely root cause|Exception:|^Error|ERROR:' "$f"; then
        echo "----- errors in $f -----" >&2
        grep -E '\[ERROR\]|^Likely root cause|Exception:|^Error|ERROR:' "$f" | head -n 8 | cut -c1-400 >&2
    fi
    echo "----- last lines of $f -----" >&2
    tail -n 30 "$f" | cut -c1-400 >&2
    echo "----- (all logs: $LOG_DIR) -----" >&2
}

lock() {
    mkdir -p "$STATE"
    exec 9>"$STATE/.lock"
    flock -w 300 9 || die "another elasticsearch.sh holds $STATE/.lock"
}

# ---------------------------------------------------------------------------------------------
# Commands

cmd_start() {
    lock
    local pid v
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
        log "an Elasticsearch $MAJOR node not started from $STATE already answers healthy at $URL; using it"
        return 0
    fi
    if v="$(node_version)"; then
        die "$URL answers, but it is not Elasticsearch $MAJOR (version, product: ${v#* }); set ELASTICSEARCH_PORT"
    fi

    ensure_prereqs
    ensure_user
    ensure_distribution
    if [ -s "$STATE/VERSION" ] && [ "$(cat "$STATE/VERSION")" != "$ES_VERSION" ]; then
        log "note: $DATA_DIR was last used by Elasticsearch $(cat "$STATE/VERSION")"
    fi
    write_config

    log "starting Elasticsearch $ES_VERSION at $URL (heap: $JAVA_OPTS, logs: $LOG_DIR)"
    : >"$CONSOLE_LOG"
    is_root && chown "$ES_USER:$ES_USER" "$CONSOLE_LOG"
    # setsid: own session and process group, so the node outlives this shell and stop can
    # find every process of it. The exec chain setsid -> setpriv -> env -> bin/elasticsearch
    # -> java keeps one pid: $! is the JVM (7: the server; 8: the launcher, whose child is the
    # server). fd 9 (the lock) must not be inherited by the node.
    ulimit -n 65535 2>/dev/null || true
    local -a run=(env -i
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        "HOME=$STATE" "LANG=C.UTF-8"
        "ES_JAVA_HOME=$JAVA_HOME_FOR_ES"
        "ES_JAVA_OPTS=$JAVA_OPTS"
        "ES_PATH_CONF=$CONF_DIR"
        "ES_TMPDIR=$TMP_DIR"
        "$ES_HOME/bin/elasticsearch")
    if is_root; then
        setsid setpriv --reuid="$ES_USER" --regid="$ES_USER" --init-groups -- "${run[@]}" \
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
            echo "elasticsearch $MAJOR: error: the node (pid $pid) exited during startup" >&2
            show_logs
            exit 1
        fi
        # Something else answering at our address (e.g. OpenSearch on a port given twice).
        local v
        if v="$(node_version)" && { [ "${v%% *}" != "$MAJOR" ] || [ "${v##* }" != elasticsearch ]; }; then
            die "$URL answers, but it is not Elasticsearch $MAJOR (version, product: ${v#* }); set ELASTICSEARCH_PORT"
        fi
        if healthy; then
            log "healthy ($(cluster_status)) after $((SECONDS - start)) s: $URL (pid $pid, Elasticsearch $(node_version | cut -d' ' -f2))"
            return 0
        fi
        sleep 1
    done
    echo "elasticsearch $MAJOR: error: not healthy after ${START_TIMEOUT} s (pid $pid still running; see $LOG_DIR)" >&2
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
    # TERM to the leader: the 7 server shuts down; the 8 launcher stops its server and waits.
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 60; i++)); do   # up to 30 s for the whole process group
        [ -n "$(group_pids "$pid")" ] || break
        sleep 0.5
    done
    if [ -n "$(group_pids "$pid")" ]; then
        log "still running after 30 s; sending KILL"
        kill -KILL -- "-$pid" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do
            [ -n "$(group_pids "$pid")" ] || break
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
        log "no node from $STATE is running, but an Elasticsearch $MAJOR node answers healthy ($(cluster_status)) at $URL"
        return 0
    fi
    log "not running"
    return 3
}

case "$CMD" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
esac
