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
# shellcheck source=scripts/lib/jvm-node.sh
source "$REPO/scripts/lib/jvm-node.sh"
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

NODE_VERSION="${ELASTICSEARCH_VERSION:-$DEFAULT_VERSION}"
[ "${NODE_VERSION%%.*}" = "$MAJOR" ] \
    || { echo "elasticsearch: error: ELASTICSEARCH_VERSION=$NODE_VERSION is not a $MAJOR.x release" >&2; exit 2; }
STATE="${ELASTICSEARCH_HOME_DIR:-$REPO/.elasticsearch-$MAJOR}"
HOST="${ELASTICSEARCH_HOST:-127.0.0.1}"
PORT="${ELASTICSEARCH_PORT:-$DEFAULT_PORT}"
TRANSPORT_PORT="${ELASTICSEARCH_TRANSPORT_PORT:-$DEFAULT_TRANSPORT}"
JAVA_OPTS="${ELASTICSEARCH_JAVA_OPTS:--Xms512m -Xmx512m}"
START_TIMEOUT="${ELASTICSEARCH_START_TIMEOUT:-120}"
NODE_USER="${ELASTICSEARCH_USER:-kpulse-os}"
CLUSTER_NAME="kpulse-dev-es$MAJOR"
ARTIFACT="org.elasticsearch.distribution.integ-test-zip:elasticsearch:${NODE_VERSION}:zip"
SCHEME=http
CURL_ARGS=()

NODE_KIND=elasticsearch
NODE_PRODUCT=Elasticsearch
NODE_ENV_PREFIX=ES
# 7: the pid is the server JVM. 8: the pid is the launcher JVM (server-cli), which runs the
# server JVM as its child; both are in the process group the pid leads (setsid), and stop
# waits for the whole group.
NODE_JVM_CLASSES=(org.elasticsearch.bootstrap.Elasticsearch org.elasticsearch.launcher.CliToolLauncher)
NODE_STOP_SCOPE=group
NODE_LOG_ERRORS='\[ERROR\]|^Likely root cause|Exception:|^Error|ERROR:'
LOG_PREFIX="elasticsearch $MAJOR"
jvm_node_layout

# Our own config dir (write_node_config): security off.
write_config() {
    write_node_config elasticsearch.yml <<EOF
# The integ-test distribution has the x-pack-security module: turn it off (plain HTTP, no
# passwords; on 8 this also skips the TLS/password auto-configuration at first start).
xpack.security.enabled: false
EOF
    finish_node_config ELASTICSEARCH_HOME_DIR
}

# ---------------------------------------------------------------------------------------------
# State

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
    local major version product
    read -r major version product <<<"$(node_version)" || return 1
    [ "$major" = "$MAJOR" ] && [ "$product" = elasticsearch ] || return 1
    cluster_healthy
}

# ---------------------------------------------------------------------------------------------
# Hooks of cmd_start (scripts/lib/jvm-node.sh)

# not_ours VERSION: dies of a node at our address that is not ours (VERSION from node_version).
not_ours() {
    die "$URL answers, but it is not Elasticsearch $MAJOR (version, product: ${1#* }); set ELASTICSEARCH_PORT"
}

node_prepare() {
    local v
    # Not healthy (cmd_start asked), so any node that answers is in the way.
    if v="$(node_version)"; then not_ours "$v"; fi
    # Elasticsearch 8 wants Java 17+, and 7 and 8 need the SecurityManager that Java 24 removed.
    ensure_jvm_prereqs ELASTICSEARCH_JAVA_HOME 17 23
    ensure_user
    ensure_distribution "is the version served? set ELASTICSEARCH_VERSION"
    write_config
}

node_wait_step() {
    # Something else answering at our address (e.g. OpenSearch on a port given twice).
    local v
    if v="$(node_version)" && { [ "${v%% *}" != "$MAJOR" ] || [ "${v##* }" != elasticsearch ]; }; then
        not_ours "$v"
    fi
}

node_healthy_note() { echo ", Elasticsearch $(node_version | cut -d' ' -f2)"; }

case "$CMD" in
    start) cmd_start "an Elasticsearch $MAJOR node" ;;
    stop) cmd_stop ;;
    status) cmd_status "an Elasticsearch $MAJOR node" ;;
esac
