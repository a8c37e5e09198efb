# shellcheck shell=bash
# Shared by scripts/opensearch.sh and scripts/elasticsearch.sh (sourced, not run): a local
# single-node JVM search server fetched from Maven Central as an "integ-test-zip", unpacked into
# a state dir and run on loopback without Docker, as an unprivileged user when started as root.
#
# The sourcing script sets, before it calls anything here:
#   NODE_KIND       opensearch | elasticsearch: the zip's base name, its bin/ launcher and the
#                   script's name (scripts/$NODE_KIND.sh)
#   NODE_PRODUCT    OpenSearch | Elasticsearch (in messages)
#   NODE_VERSION    the release to run
#   NODE_USER       the user the node runs as when started by root
#   NODE_ENV_PREFIX prefix of the launcher's environment (<prefix>_JAVA_HOME, _JAVA_OPTS,
#                   _PATH_CONF, _TMPDIR)
#   NODE_JVM_CLASSES  main classes whose processes may be our node (pid-reuse guard)
#   NODE_LOG_ERRORS extended regex of the log lines worth showing when start fails
#   NODE_STOP_SCOPE pid: stop waits for the pid; group: for every process of the group it leads
#   LOG_PREFIX      what log and die put before a message
#   ARTIFACT        Maven coordinates of the distribution zip
#   STATE HOST PORT SCHEME CLUSTER_NAME TRANSPORT_PORT JAVA_OPTS START_TIMEOUT
#   CURL_ARGS       (array, may be empty) extra curl arguments (TLS trust, credentials)
# then calls jvm_node_layout (paths and URL). It provides the commands cmd_start, cmd_stop and
# cmd_status, and calls these hooks, which it defines as no-ops and the script may redefine
# after sourcing:
#   node_prepare        (start) everything before the launch: prerequisites, distribution, config
#   node_wait_step      (start) once a second while waiting for the node to become healthy
#   node_ready          once the node answers healthy (start)
#   node_healthy_note   prints text appended to the pid in the "healthy" message
#   node_stop_prepare   (stop) after taking the lock
#   healthy             the node at $URL is ours and yellow or green (default: cluster_healthy)

node_prepare() { :; }
node_wait_step() { :; }
node_ready() { :; }
node_healthy_note() { :; }
node_stop_prepare() { :; }
healthy() { cluster_healthy; }

log() { echo "$LOG_PREFIX: $*"; }
die() { echo "$LOG_PREFIX: error: $*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# Sets the URL and the paths below $STATE.
jvm_node_layout() {
    URL_HOST="$HOST"
    [[ "$HOST" == *:* ]] && URL_HOST="[$HOST]"   # IPv6 literal
    URL="${SCHEME}://${URL_HOST}:${PORT}"

    NODE_HOME="$STATE/$NODE_KIND-$NODE_VERSION"
    CONF_DIR="$STATE/config"
    DATA_DIR="$STATE/data"
    LOG_DIR="$STATE/logs"
    TMP_DIR="$STATE/tmp"
    DIST_DIR="$STATE/dist"
    PID_FILE="$STATE/$NODE_KIND.pid"
    CONSOLE_LOG="$LOG_DIR/console.log"
    SERVER_LOG="$LOG_DIR/$CLUSTER_NAME.log"
}

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

# find_java OVERRIDE_VAR MIN MAX: sets NODE_JAVA_HOME to a Java MIN..MAX: the one the variable
# named OVERRIDE_VAR names (it must fit), else the system Java 17, else the `java` on PATH.
# Installs openjdk-17-jre-headless if there is none.
find_java() {
    local var="$1" min="$2" max="$3" cand java major
    for cand in "${!var:-}" /usr/lib/jvm/java-17-openjdk-* \
                "$(dirname "$(dirname "$(readlink -f "$(command -v java 2>/dev/null || echo /nonexistent)")")")"; do
        java="$cand/bin/java"
        if [ -z "$cand" ] || [ ! -x "$java" ]; then continue; fi
        major="$(java_major "$java")"
        if [ -n "$major" ] && [ "$major" -ge "$min" ] && [ "$major" -le "$max" ]; then
            NODE_JAVA_HOME="$cand"
            return 0
        fi
        if [ "$cand" = "${!var:-}" ]; then
            die "$var=$cand is Java ${major:-?}; $NODE_PRODUCT $NODE_VERSION needs Java $min..$max"
        fi
    done
    apt_install openjdk-17-jre-headless
    for cand in /usr/lib/jvm/java-17-openjdk-*; do
        [ -x "$cand/bin/java" ] && NODE_JAVA_HOME="$cand" && return 0
    done
    die "no usable Java found (wanted Java 17)"
}

# ensure_jvm_prereqs OVERRIDE_VAR MIN MAX: curl, unzip, a Java (find_java) and mvn.
ensure_jvm_prereqs() {
    need_cmd curl curl
    need_cmd unzip unzip
    find_java "$@"
    need_cmd mvn maven
}

# Runs the rest of the command line as the node's user (directly when not root).
as_node_user() {
    if is_root; then
        setpriv --reuid="$NODE_USER" --regid="$NODE_USER" --init-groups -- "$@"
    else
        "$@"
    fi
}

ensure_user() {
    is_root || return 0
    if ! id -u "$NODE_USER" >/dev/null 2>&1; then
        log "creating system user $NODE_USER"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$NODE_USER"
    fi
}

# ---------------------------------------------------------------------------------------------
# Fetch and unpack

# maven_fetch ARTIFACT ZIP HINT: copies the Maven artifact to ZIP (in $DIST_DIR) unless it is
# there; HINT goes into the error message.
maven_fetch() {
    local coords="$1" zip="$2" hint="$3"
    mkdir -p "$DIST_DIR"
    [ -s "$zip" ] && return 0
    log "fetching $coords from Maven Central"
    # Run outside any Maven project so that no pom.xml is picked up.
    if ! (cd "$DIST_DIR" && mvn -B -q -Dstyle.color=never dependency:copy \
            -Dartifact="$coords" -DoutputDirectory="$DIST_DIR" -Dmdep.overWriteIfNewer=true); then
        die "mvn could not fetch $coords ($hint)"
    fi
    [ -s "$zip" ] || die "mvn did not produce $zip"
}

# ensure_distribution HINT: $NODE_HOME holds the unpacked $ARTIFACT (HINT: for a failed fetch).
ensure_distribution() {
    [ -x "$NODE_HOME/bin/$NODE_KIND" ] && return 0
    local dist="$NODE_KIND-$NODE_VERSION"
    local zip="$DIST_DIR/$dist.zip"
    maven_fetch "$ARTIFACT" "$zip" "$1"
    log "unpacking $zip"
    local tmp="$STATE/.unpack.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    unzip -q "$zip" -d "$tmp"
    [ -x "$tmp/$dist/bin/$NODE_KIND" ] || { rm -rf "$tmp"; die "unexpected layout in $zip"; }
    rm -rf "$NODE_HOME"
    mv "$tmp/$dist" "$NODE_HOME"
    rm -rf "$tmp"
    # The zip stays in Maven's local repository; no need for a second copy here.
    rm -f "$zip"
}

# ---------------------------------------------------------------------------------------------
# Config

# write_node_config FILE <EXTRA: our own config dir: the distribution's jvm.options and
# log4j2.properties, plus FILE (opensearch.yml, elasticsearch.yml) written anew on every start
# from the current environment, with the lines read from stdin at its end.
write_node_config() {
    local yml="$1"
    if [ -s "$STATE/VERSION" ] && [ "$(cat "$STATE/VERSION")" != "$NODE_VERSION" ]; then
        log "note: $DATA_DIR was last used by $NODE_PRODUCT $(cat "$STATE/VERSION")"
    fi
    mkdir -p "$CONF_DIR" "$DATA_DIR" "$LOG_DIR" "$TMP_DIR"
    cp -f "$NODE_HOME/config/log4j2.properties" "$CONF_DIR/"
    # jvm.options names paths relative to the distribution (GC log, crash files, heap dumps):
    # put them under the state dir's logs.
    sed -e "s#HeapDumpPath=data#HeapDumpPath=$LOG_DIR#" -e "s#logs/#$LOG_DIR/#g" \
        "$NODE_HOME/config/jvm.options" >"$CONF_DIR/jvm.options"
    mkdir -p "$CONF_DIR/jvm.options.d"
    {
        cat <<EOF
# Written by scripts/$NODE_KIND.sh on each start; edits are lost.
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
EOF
        cat
    } >"$CONF_DIR/$yml"
}

# finish_node_config STATE_VAR: records the version the config was written for and hands the
# node's dirs to its user (STATE_VAR: the setting to name when that user cannot write them).
finish_node_config() {
    # The version this config was written for (the node refuses data from a newer version).
    echo "$NODE_VERSION" >"$STATE/VERSION"
    if is_root; then
        # The node also writes into its config dir (Elasticsearch 8 makes a keystore at start).
        chown -R "$NODE_USER:$NODE_USER" "$NODE_HOME" "$CONF_DIR" "$DATA_DIR" "$LOG_DIR" "$TMP_DIR"
        as_node_user test -w "$DATA_DIR" \
            || die "user $NODE_USER cannot write $DATA_DIR (a parent directory is not searchable?); set $1"
    fi
}

# ---------------------------------------------------------------------------------------------
# State

# Prints the pid of our node if its pid file names a live process of it.
node_pid() {
    [ -s "$PID_FILE" ] || return 1
    local pid cmdline class
    local -a pats=()
    pid="$(tr -dc '0-9' <"$PID_FILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    # Guard against pid reuse: the process must be our launcher or our JVM, of our distribution
    # (several nodes may run).
    for class in "${NODE_JVM_CLASSES[@]}"; do pats+=(-e "$class"); done
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    grep -q "${pats[@]}" -e "$NODE_HOME/bin/$NODE_KIND" <<<"$cmdline" || return 1
    grep -qF -e "$NODE_HOME/" <<<"$cmdline" || return 1
    echo "$pid"
}

# Pids of the processes in process group $1.
group_pids() {
    ps -e -o pid=,pgid= | awk -v g="$1" '$2 == g { print $1 }'
}

# The process $1 (NODE_STOP_SCOPE=group: every process of the group it leads) has exited.
node_gone() {
    if [ "$NODE_STOP_SCOPE" = group ]; then
        [ -z "$(group_pids "$1")" ]
    else
        ! kill -0 "$1" 2>/dev/null
    fi
}

# The cluster at $URL is yellow or green.
cluster_healthy() {
    local body
    body="$(curl -fsS --max-time 5 "${CURL_ARGS[@]}" "$URL/_cluster/health?wait_for_status=yellow&timeout=1s" 2>/dev/null)" || return 1
    grep -Eq '"status" *: *"(green|yellow)"' <<<"$body"
}

cluster_status() {
    curl -fsS --max-time 5 "${CURL_ARGS[@]}" "$URL/_cluster/health" 2>/dev/null | sed -n 's/.*"status" *: *"\([a-z]*\)".*/\1/p'
}

show_logs() {
    # console.log has everything the node printed, including errors from before its logging
    # started (bad JVM options, wrong Java); the server log holds the same once logging is up.
    local f="$CONSOLE_LOG"
    [ -s "$f" ] || f="$SERVER_LOG"
    [ -s "$f" ] || { echo "$NODE_KIND: no log output in $LOG_DIR" >&2; return 0; }
    if grep -qE "$NODE_LOG_ERRORS" "$f"; then
        echo "----- errors in $f -----" >&2
        grep -E "$NODE_LOG_ERRORS" "$f" | head -n 8 | cut -c1-400 >&2
    fi
    echo "----- last lines of $f -----" >&2
    tail -n 30 "$f" | cut -c1-400 >&2
    echo "----- (all logs: $LOG_DIR) -----" >&2
}

lock() {
    mkdir -p "$STATE"
    exec 9>"$STATE/.lock"
    flock -w 300 9 || die "another $NODE_KIND.sh holds $STATE/.lock"
}

# ---------------------------------------------------------------------------------------------
# Commands

# cmd_start OTHER: OTHER names, in messages, a node at $URL that we did not start
# ("an OpenSearch node").
cmd_start() {
    lock
    local pid
    if pid="$(node_pid)"; then
        if healthy; then
            log "already running (pid $pid) and healthy ($(cluster_status)) at $URL"
            node_ready
            return 0
        fi
        log "already running (pid $pid) but not healthy yet; waiting"
        wait_healthy "$pid"
        return
    fi
    rm -f "$PID_FILE"
    if healthy; then
        log "$1 not started from $STATE already answers healthy at $URL; using it"
        node_ready
        return 0
    fi

    node_prepare

    log "starting $NODE_PRODUCT $NODE_VERSION at $URL (heap: $JAVA_OPTS, logs: $LOG_DIR)"
    : >"$CONSOLE_LOG"
    is_root && chown "$NODE_USER:$NODE_USER" "$CONSOLE_LOG"
    # setsid: own session and process group, so the node outlives this shell and stop can find
    # every process of it. The exec chain setsid -> setpriv -> env -> bin/$NODE_KIND -> java
    # keeps one pid: $! is the JVM (the server, or a launcher whose child is the server).
    # No descriptor but stdio may be inherited by the node: not fd 9 (our lock), and not
    # whatever the caller holds (a `flock FILE cargo test` that starts the node would
    # otherwise stay locked for as long as the node lives). The subshell execs, so $! stays
    # the node's pid.
    # The nodes ask for 65535 open files (only a warning on loopback); raise it if we may.
    ulimit -n 65535 2>/dev/null || true
    local -a run=(env -i
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        "HOME=$STATE" "LANG=C.UTF-8"
        "${NODE_ENV_PREFIX}_JAVA_HOME=$NODE_JAVA_HOME"
        "${NODE_ENV_PREFIX}_JAVA_OPTS=$JAVA_OPTS"
        "${NODE_ENV_PREFIX}_PATH_CONF=$CONF_DIR"
        "${NODE_ENV_PREFIX}_TMPDIR=$TMP_DIR"
        "$NODE_HOME/bin/$NODE_KIND")
    if is_root; then
        (close_inherited_fds; exec setsid setpriv --reuid="$NODE_USER" --regid="$NODE_USER" \
            --init-groups -- "${run[@]}" </dev/null >>"$CONSOLE_LOG" 2>&1) &
    else
        (close_inherited_fds; exec setsid "${run[@]}" </dev/null >>"$CONSOLE_LOG" 2>&1) &
    fi
    pid=$!
    echo "$pid" >"$PID_FILE"
    wait_healthy "$pid"
}

# Closes every open descriptor above 2 of this shell (they would be inherited by the node).
close_inherited_fds() {
    local fd
    for fd in /proc/$BASHPID/fd/*; do
        fd=${fd##*/}
        [ "$fd" -gt 2 ] 2>/dev/null || continue
        eval "exec $fd>&-" 2>/dev/null || true
    done
}

wait_healthy() {
    local pid="$1" start=$SECONDS
    while (( SECONDS - start < START_TIMEOUT )); do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            echo "$LOG_PREFIX: error: the node (pid $pid) exited during startup" >&2
            show_logs
            exit 1
        fi
        node_wait_step
        if healthy; then
            log "healthy ($(cluster_status)) after $((SECONDS - start)) s: $URL (pid $pid$(node_healthy_note))"
            node_ready
            return 0
        fi
        sleep 1
    done
    echo "$LOG_PREFIX: error: not healthy after ${START_TIMEOUT} s (pid $pid still running; see $LOG_DIR)" >&2
    show_logs
    exit 1
}

cmd_stop() {
    lock
    local pid
    node_stop_prepare
    if ! pid="$(node_pid)"; then
        rm -f "$PID_FILE"
        log "not running"
        return 0
    fi
    log "stopping pid $pid"
    # TERM to the leader only: a launcher stops its server and waits for it.
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 60; i++)); do   # up to 30 s
        node_gone "$pid" && break
        sleep 0.5
    done
    if ! node_gone "$pid"; then
        log "still running after 30 s; sending KILL"
        if [ "$NODE_STOP_SCOPE" = group ]; then
            kill -KILL -- "-$pid" 2>/dev/null || true
        else
            kill -KILL "$pid" 2>/dev/null || true
        fi
        for ((i = 0; i < 20; i++)); do
            node_gone "$pid" && break
            sleep 0.5
        done
    fi
    rm -f "$PID_FILE"
    log "stopped"
}

# cmd_status OTHER: OTHER names, in messages, a node at $URL that we did not start ("a node").
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
        log "no node from $STATE is running, but $1 answers healthy ($(cluster_status)) at $URL"
        return 0
    fi
    log "not running"
    return 3
}
