#!/usr/bin/env bash
# A local single-node OpenSearch for development and the integration tests, without Docker.
#
#   scripts/opensearch.sh start    fetch (Maven), unpack, run and wait until the node is healthy
#   scripts/opensearch.sh stop     stop the node (TERM, wait, then KILL); OK if not running
#   scripts/opensearch.sh status   print the state; exit 0 only if the node answers healthy
#
#   scripts/opensearch.sh start-secure | stop-secure | status-secure
#                                  the same for a second, *secured* node (security plugin: TLS on
#                                  HTTP and transport, HTTP basic auth), for tests of TLS and of
#                                  wrong credentials against a real server. It runs next to the
#                                  plain node, with its own state dir, ports and settings.
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
#   OPENSEARCH_START_TIMEOUT  seconds to wait for the node to become healthy (default 120;
#                           180 for the secure node)
#
# The secure node (*-secure commands) is the same integ-test-zip plus the security plugin
# (org.opensearch.plugin:opensearch-security:<version>.0:zip, from Maven, installed offline with
# opensearch-plugin). A plugin must match OpenSearch exactly, and the newest security plugin on
# Maven Central for 2.19 is 2.19.4.0 (no 2.19.5.0/2.19.6.0 when this was written), so this node
# runs OpenSearch 2.19.4. start-secure also:
#   - makes a test CA and certificates with openssl in <state>/certs (once; renewed when missing,
#     expiring, not matching the CA or the host): ca.pem/ca-key.pem, node.pem/node-key.pem
#     (CN=localhost, SAN DNS:localhost,IP:127.0.0.1; used for HTTP and transport TLS) and
#     admin.pem/admin-key.pem (the admin DN, for securityadmin). Keys are unencrypted PKCS#8.
#   - writes config/opensearch-security/*.yml: HTTP basic auth against the internal users
#     `admin` and $OPENSEARCH_SECURE_USER, both mapped to all_access; audit log off. The node
#     loads them into its security index on first start (allow_default_init_securityindex; no
#     demo installer). When they change later (e.g. another password), start-secure pushes them
#     with the plugin's securityadmin tool and the admin certificate.
#   - once healthy, prints the connection settings and writes them to <state>/env (KEY=VALUE
#     lines, no quoting; removed by stop-secure):
#       OPENSEARCH_SECURE_URL=https://127.0.0.1:9201
#       OPENSEARCH_SECURE_CA=<state>/certs/ca.pem
#       OPENSEARCH_SECURE_USER=kpulse
#       OPENSEARCH_SECURE_PASSWORD=kpulse-secret-1
#       OPENSEARCH_SECURE_ADMIN_USER=admin
#       OPENSEARCH_SECURE_ADMIN_PASSWORD=admin
#     The security REST API (/_plugins/_security/api) is open to all_access, so tests can add
#     users and roles of their own (e.g. one without write permission).
# Environment for the secure node (the OPENSEARCH_* settings above apply to the plain node only,
# except OPENSEARCH_JAVA_HOME, OPENSEARCH_USER and OPENSEARCH_START_TIMEOUT):
#   OPENSEARCH_SECURE_VERSION    2.19.4 (needs opensearch-security <version>.0 on Maven)
#   OPENSEARCH_SECURE_HOME_DIR   state dir (default <repo>/.opensearch-secure)
#   OPENSEARCH_SECURE_HOST       127.0.0.1 (another host is added to the node certificate's SAN)
#   OPENSEARCH_SECURE_PORT       9201 (HTTPS)
#   OPENSEARCH_SECURE_TRANSPORT_PORT  9400-9500
#   OPENSEARCH_SECURE_JAVA_OPTS  -Xms512m -Xmx512m
#   OPENSEARCH_SECURE_USER       kpulse            (internal user with role all_access)
#   OPENSEARCH_SECURE_PASSWORD   kpulse-secret-1
#   OPENSEARCH_SECURE_ADMIN_PASSWORD  admin        (password of the internal user admin)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

CMD="${1:-}"
case "$CMD" in
    *-secure) PROFILE=secure ;;
    *) PROFILE=plain ;;
esac

OS_USER="${OPENSEARCH_USER:-kpulse-os}"
if [ "$PROFILE" = plain ]; then
    OS_VERSION="${OPENSEARCH_VERSION:-2.19.6}"
    STATE="${OPENSEARCH_HOME_DIR:-$REPO/.opensearch}"
    HOST="${OPENSEARCH_HOST:-127.0.0.1}"
    PORT="${OPENSEARCH_PORT:-9200}"
    TRANSPORT_PORT="${OPENSEARCH_TRANSPORT_PORT:-9300-9400}"
    JAVA_OPTS="${OPENSEARCH_JAVA_OPTS:--Xms512m -Xmx512m}"
    START_TIMEOUT="${OPENSEARCH_START_TIMEOUT:-120}"
    CLUSTER_NAME="kpulse-dev"
    SCHEME=http
else
    OS_VERSION="${OPENSEARCH_SECURE_VERSION:-2.19.4}"
    STATE="${OPENSEARCH_SECURE_HOME_DIR:-$REPO/.opensearch-secure}"
    HOST="${OPENSEARCH_SECURE_HOST:-127.0.0.1}"
    PORT="${OPENSEARCH_SECURE_PORT:-9201}"
    TRANSPORT_PORT="${OPENSEARCH_SECURE_TRANSPORT_PORT:-9400-9500}"
    JAVA_OPTS="${OPENSEARCH_SECURE_JAVA_OPTS:--Xms512m -Xmx512m}"
    START_TIMEOUT="${OPENSEARCH_START_TIMEOUT:-180}"
    CLUSTER_NAME="kpulse-dev-secure"
    SCHEME=https
    SEC_USER="${OPENSEARCH_SECURE_USER:-kpulse}"
    SEC_PASSWORD="${OPENSEARCH_SECURE_PASSWORD:-kpulse-secret-1}"
    ADMIN_USER="admin"
    ADMIN_PASSWORD="${OPENSEARCH_SECURE_ADMIN_PASSWORD:-admin}"
    PLUGIN_ARTIFACT="org.opensearch.plugin:opensearch-security:${OS_VERSION}.0:zip"
fi
ARTIFACT="org.opensearch.distribution.integ-test-zip:opensearch:${OS_VERSION}:zip"

URL_HOST="$HOST"
[[ "$HOST" == *:* ]] && URL_HOST="[$HOST]"   # IPv6 literal
URL="${SCHEME}://${URL_HOST}:${PORT}"

OS_HOME="$STATE/opensearch-$OS_VERSION"
CONF_DIR="$STATE/config"
DATA_DIR="$STATE/data"
LOG_DIR="$STATE/logs"
TMP_DIR="$STATE/tmp"
DIST_DIR="$STATE/dist"
PID_FILE="$STATE/opensearch.pid"
CONSOLE_LOG="$LOG_DIR/console.log"
SERVER_LOG="$LOG_DIR/$CLUSTER_NAME.log"

# Secure node only: certificates, security config, connection settings for the tests.
CERT_DIR="$STATE/certs"
CA_CERT="$CERT_DIR/ca.pem"
SEC_CONF_DIR="$CONF_DIR/opensearch-security"
SEC_APPLIED="$STATE/security-config.sha256"   # digest of the config the security index holds
HASH_CACHE="$STATE/password-hashes"           # user, sha256(password), bcrypt hash
ENV_FILE="$STATE/env"
# Subjects in openssl order; the plugin settings take the RFC 2253 form (reversed).
NODE_SUBJ="/O=kpulse-dev/CN=localhost"
NODE_DN="CN=localhost,O=kpulse-dev"
ADMIN_SUBJ="/O=kpulse-dev/CN=kpulse-admin"
ADMIN_DN="CN=kpulse-admin,O=kpulse-dev"

# curl arguments for talking to the node (TLS trust and credentials on the secure node).
CURL_ARGS=()
if [ "$PROFILE" = secure ]; then CURL_ARGS=(--cacert "$CA_CERT" -u "$SEC_USER:$SEC_PASSWORD"); fi

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
    if [ "$PROFILE" = secure ]; then need_cmd openssl openssl; fi
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

# Secure node: the security plugin, installed offline into the distribution. Its default
# security config lands in $OS_HOME/config/opensearch-security (templates for write_security_config).
ensure_security_plugin() {
    [ -f "$OS_HOME/plugins/opensearch-security/plugin-descriptor.properties" ] && return 0
    local zip="$DIST_DIR/opensearch-security-$OS_VERSION.0.zip"
    mkdir -p "$DIST_DIR"
    if [ ! -s "$zip" ]; then
        log "fetching $PLUGIN_ARTIFACT from Maven Central"
        if ! (cd "$DIST_DIR" && mvn -B -q -Dstyle.color=never dependency:copy \
                -Dartifact="$PLUGIN_ARTIFACT" -DoutputDirectory="$DIST_DIR" -Dmdep.overWriteIfNewer=true); then
            die "mvn could not fetch $PLUGIN_ARTIFACT (the plugin must match OpenSearch $OS_VERSION exactly; set OPENSEARCH_SECURE_VERSION to a version with a security plugin on Maven)"
        fi
        [ -s "$zip" ] || die "mvn did not produce $zip"
    fi
    log "installing the security plugin from $zip"
    rm -rf "$OS_HOME/plugins/opensearch-security"
    # opensearch-plugin prints the plugin's extra permissions; --batch accepts them.
    env "OPENSEARCH_JAVA_HOME=$JAVA_HOME_FOR_OS" "OPENSEARCH_PATH_CONF=$OS_HOME/config" \
        "$OS_HOME/bin/opensearch-plugin" install --batch "file://$zip" >"$STATE/plugin-install.log" 2>&1 \
        || { cat "$STATE/plugin-install.log" >&2; die "installing the security plugin failed"; }
    [ -f "$OS_HOME/config/opensearch-security/roles.yml" ] \
        || die "the security plugin installed no config/opensearch-security/roles.yml"
    rm -f "$zip"
}

# ---------------------------------------------------------------------------------------------
# Secure node: certificates

# cert_ok CERT KEY: the certificate exists, is signed by our CA, is valid for at least a day
# more and belongs to the key.
cert_ok() {
    [ -s "$1" ] && [ -s "$2" ] || return 1
    openssl x509 -in "$1" -noout -checkend 86400 >/dev/null 2>&1 || return 1
    openssl verify -CAfile "$CA_CERT" "$1" >/dev/null 2>&1 || return 1
    [ "$(openssl x509 -in "$1" -noout -pubkey 2>/dev/null)" = "$(openssl pkey -in "$2" -pubout 2>/dev/null)" ]
}

# new_key FILE: a 2048-bit RSA key, unencrypted PKCS#8 ("BEGIN PRIVATE KEY"), mode 0600.
new_key() {
    (umask 077 && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1.raw" 2>/dev/null \
        && openssl pkcs8 -topk8 -nocrypt -in "$1.raw" -out "$1")
    rm -f "$1.raw"
}

# issue_cert NAME SUBJECT EXTENSIONS...: $CERT_DIR/NAME.pem and NAME-key.pem, signed by our CA.
issue_cert() {
    local name="$1" subj="$2" tmp="$CERT_DIR/.new-$1.$$"
    shift 2
    rm -rf "$tmp"
    mkdir -p "$tmp"
    printf '%s\n' basicConstraints=critical,CA:FALSE subjectKeyIdentifier=hash \
        authorityKeyIdentifier=keyid "$@" >"$tmp/ext.cnf"
    new_key "$tmp/key.pem"
    openssl req -new -key "$tmp/key.pem" -subj "$subj" -out "$tmp/req.csr" 2>/dev/null
    openssl x509 -req -in "$tmp/req.csr" -CA "$CA_CERT" -CAkey "$CERT_DIR/ca-key.pem" \
        -set_serial "0x$(openssl rand -hex 16)" -days 3650 -sha256 -extfile "$tmp/ext.cnf" \
        -out "$tmp/cert.pem" 2>/dev/null
    mv -f "$tmp/key.pem" "$CERT_DIR/$name-key.pem"
    mv -f "$tmp/cert.pem" "$CERT_DIR/$name.pem"
    chmod 644 "$CERT_DIR/$name.pem"
    rm -rf "$tmp"
}

# The node certificate's subjectAltName: localhost and 127.0.0.1, plus the configured host.
node_san() {
    local san="DNS:localhost,IP:127.0.0.1"
    case "$HOST" in
        localhost|127.0.0.1) ;;
        *:*|[0-9]*.[0-9]*.[0-9]*.[0-9]*) san="$san,IP:$HOST" ;;
        *) san="$san,DNS:$HOST" ;;
    esac
    echo "$san"
}

ensure_certs() {
    mkdir -p "$CERT_DIR"
    chmod 755 "$CERT_DIR"
    if ! cert_ok "$CA_CERT" "$CERT_DIR/ca-key.pem" \
            || ! openssl x509 -in "$CA_CERT" -noout -checkend $((365 * 86400)) >/dev/null 2>&1; then
        log "creating a test CA in $CERT_DIR"
        local tmp="$CERT_DIR/.new-ca.$$"
        rm -rf "$tmp"
        mkdir -p "$tmp"
        printf '%s\n' '[req]' 'distinguished_name = dn' 'x509_extensions = v3_ca' 'prompt = no' '[dn]' \
            '[v3_ca]' 'basicConstraints = critical,CA:TRUE' 'keyUsage = critical,keyCertSign,cRLSign' \
            'subjectKeyIdentifier = hash' >"$tmp/ca.cnf"
        new_key "$tmp/ca-key.pem"
        openssl req -x509 -new -config "$tmp/ca.cnf" -key "$tmp/ca-key.pem" \
            -subj "/O=kpulse-dev/CN=kpulse-dev test CA" -days 3650 -sha256 -out "$tmp/ca.pem" 2>/dev/null
        mv -f "$tmp/ca-key.pem" "$CERT_DIR/ca-key.pem"
        mv -f "$tmp/ca.pem" "$CA_CERT"
        chmod 644 "$CA_CERT"
        rm -rf "$tmp" "$CERT_DIR/node.san"
    fi
    local san
    san="$(node_san)"
    if ! cert_ok "$CERT_DIR/node.pem" "$CERT_DIR/node-key.pem" \
            || [ "$(cat "$CERT_DIR/node.san" 2>/dev/null)" != "$san" ]; then
        log "issuing the node certificate ($NODE_DN, $san)"
        issue_cert node "$NODE_SUBJ" keyUsage=critical,digitalSignature,keyEncipherment \
            extendedKeyUsage=serverAuth,clientAuth "subjectAltName=$san"
        echo "$san" >"$CERT_DIR/node.san"
    fi
    if ! cert_ok "$CERT_DIR/admin.pem" "$CERT_DIR/admin-key.pem"; then
        log "issuing the admin certificate ($ADMIN_DN)"
        issue_cert admin "$ADMIN_SUBJ" keyUsage=critical,digitalSignature,keyEncipherment \
            extendedKeyUsage=clientAuth
    fi
}

# ---------------------------------------------------------------------------------------------
# Secure node: security config (users, roles mapping, authentication, audit)

# bcrypt_hash USER PASSWORD: prints the bcrypt hash of PASSWORD, made with the plugin's hash.sh
# (a JVM start, ~2 s) and cached, so that the config files (and their digest) stay the same.
bcrypt_hash() {
    local user="$1" pw="$2" sum hash
    sum="$(printf '%s' "$pw" | sha256sum | cut -d' ' -f1)"
    hash="$(awk -v u="$user" -v s="$sum" '$1 == u && $2 == s { print $3; exit }' "$HASH_CACHE" 2>/dev/null)"
    if [ -z "$hash" ]; then
        # shellcheck disable=SC2016  # a literal $ in the pattern
        hash="$(env "OPENSEARCH_JAVA_HOME=$JAVA_HOME_FOR_OS" \
            bash "$OS_HOME/plugins/opensearch-security/tools/hash.sh" -p "$pw" | grep -E '^\$2[aby]?\$' | tail -n 1)" \
            || true
        [ -n "$hash" ] || die "could not hash the password of $user with the plugin's tools/hash.sh"
        { grep -v "^$user " "$HASH_CACHE" 2>/dev/null || true; echo "$user $sum $hash"; } >"$HASH_CACHE.tmp"
        chmod 600 "$HASH_CACHE.tmp"
        mv -f "$HASH_CACHE.tmp" "$HASH_CACHE"
    fi
    echo "$hash"
}

# Prints a digest of the security config files.
security_digest() {
    (cd "$SEC_CONF_DIR" && cat -- *.yml | sha256sum | cut -d' ' -f1)
}

write_security_config() {
    [[ "$SEC_USER" =~ ^[A-Za-z0-9._-]+$ ]] || die "OPENSEARCH_SECURE_USER must be letters, digits, . _ -"
    [ "$SEC_USER" != "$ADMIN_USER" ] || die "OPENSEARCH_SECURE_USER must not be $ADMIN_USER"
    local user_hash admin_hash tpl="$OS_HOME/config/opensearch-security" f
    user_hash="$(bcrypt_hash "$SEC_USER" "$SEC_PASSWORD")"
    admin_hash="$(bcrypt_hash "$ADMIN_USER" "$ADMIN_PASSWORD")"
    rm -rf "$SEC_CONF_DIR"
    mkdir -p "$SEC_CONF_DIR"
    # The plugin's own roles (all_access, readall, ...), action groups, tenants, allowlist.
    # (securityadmin also wants the old whitelist.yml.)
    for f in roles.yml action_groups.yml tenants.yml nodes_dn.yml allowlist.yml whitelist.yml; do
        cp "$tpl/$f" "$SEC_CONF_DIR/"
    done
    local head="# Written by scripts/opensearch.sh on each start-secure; edits are lost."
    cat >"$SEC_CONF_DIR/config.yml" <<EOF
$head
_meta:
  type: "config"
  config_version: 2
config:
  dynamic:
    http:
      anonymous_auth_enabled: false
    authc:
      basic_internal_auth_domain:
        description: "HTTP basic auth against the internal users"
        http_enabled: true
        transport_enabled: true
        order: 0
        http_authenticator:
          type: basic
          challenge: true
        authentication_backend:
          type: intern
    authz: {}
EOF
    cat >"$SEC_CONF_DIR/internal_users.yml" <<EOF
$head
_meta:
  type: "internalusers"
  config_version: 2
$ADMIN_USER:
  hash: "$admin_hash"
  reserved: true
  backend_roles:
  - "admin"
  description: "admin (backend role admin, mapped to all_access)"
$SEC_USER:
  hash: "$user_hash"
  reserved: false
  description: "kpulse tests (mapped to all_access)"
EOF
    cat >"$SEC_CONF_DIR/roles_mapping.yml" <<EOF
$head
_meta:
  type: "rolesmapping"
  config_version: 2
all_access:
  reserved: false
  backend_roles:
  - "admin"
  users:
  - "$SEC_USER"
  description: "admin and the kpulse test user"
EOF
    cat >"$SEC_CONF_DIR/audit.yml" <<EOF
$head
_meta:
  type: "audit"
  config_version: 2
config:
  enabled: false
  audit: {}
  compliance:
    enabled: false
EOF
}

# Copies the node's certificate, key and CA into the config dir (paths relative to it) and
# appends the security settings to opensearch.yml.
write_secure_config() {
    install -m 644 "$CA_CERT" "$CONF_DIR/root-ca.pem"
    install -m 644 "$CERT_DIR/node.pem" "$CONF_DIR/node.pem"
    install -m 600 "$CERT_DIR/node-key.pem" "$CONF_DIR/node-key.pem"
    sed -i '/^# The integ-test distribution has no security plugin/d' "$CONF_DIR/opensearch.yml"
    cat >>"$CONF_DIR/opensearch.yml" <<EOF
# Security plugin (secure node): TLS on transport and HTTP with the test CA of $CERT_DIR.
plugins.security.ssl.transport.pemcert_filepath: node.pem
plugins.security.ssl.transport.pemkey_filepath: node-key.pem
plugins.security.ssl.transport.pemtrustedcas_filepath: root-ca.pem
plugins.security.ssl.transport.enforce_hostname_verification: false
plugins.security.ssl.http.enabled: true
plugins.security.ssl.http.pemcert_filepath: node.pem
plugins.security.ssl.http.pemkey_filepath: node-key.pem
plugins.security.ssl.http.pemtrustedcas_filepath: root-ca.pem
plugins.security.nodes_dn:
  - "$NODE_DN"
plugins.security.authcz.admin_dn:
  - "$ADMIN_DN"
# Load config/opensearch-security/*.yml into the security index on first start (no demo installer,
# no securityadmin run needed).
plugins.security.allow_default_init_securityindex: true
plugins.security.restapi.roles_enabled: ["all_access"]
plugins.security.system_indices.enabled: true
# Audit logging off: no sink here, and audit.yml disables it.
plugins.security.audit.type: noop
EOF
    # The plugin warns about a config dir other users can read.
    chmod -R go-rwx "$CONF_DIR"
}

# Pushes config/opensearch-security/*.yml into the running node's security index (securityadmin,
# over HTTPS with the admin certificate).
push_security_config() {
    log "security config changed since the security index was made; applying it with securityadmin"
    local out
    if ! out="$(env "OPENSEARCH_JAVA_HOME=$JAVA_HOME_FOR_OS" \
            bash "$OS_HOME/plugins/opensearch-security/tools/securityadmin.sh" \
            -cd "$SEC_CONF_DIR" -icl -nhnv -h "$HOST" -p "$PORT" -cacert "$CA_CERT" \
            -cert "$CERT_DIR/admin.pem" -key "$CERT_DIR/admin-key.pem" 2>&1)"; then
        echo "$out" | tail -n 20 >&2
        die "securityadmin failed"
    fi
    security_digest >"$SEC_APPLIED"
}

# The HTTP status of GET / with our credentials (000: no answer).
http_code() {
    curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "${CURL_ARGS[@]}" "$URL/" 2>/dev/null || true
}

# Prints the settings the tests need and writes them to $ENV_FILE.
publish_env() {
    cat >"$ENV_FILE.tmp" <<EOF
OPENSEARCH_SECURE_URL=$URL
OPENSEARCH_SECURE_CA=$CA_CERT
OPENSEARCH_SECURE_USER=$SEC_USER
OPENSEARCH_SECURE_PASSWORD=$SEC_PASSWORD
OPENSEARCH_SECURE_ADMIN_USER=$ADMIN_USER
OPENSEARCH_SECURE_ADMIN_PASSWORD=$ADMIN_PASSWORD
EOF
    chmod 644 "$ENV_FILE.tmp"
    mv -f "$ENV_FILE.tmp" "$ENV_FILE"
    log "connection settings (also in $ENV_FILE):"
    cat "$ENV_FILE"
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
    if [ "$PROFILE" = secure ]; then
        write_security_config
        write_secure_config
    fi
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
    # (Two nodes may run, so the JVM must also be the one of our distribution.)
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -e 'org.opensearch.bootstrap.OpenSearch' -e "$OS_HOME/bin/opensearch" \
        || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -e "$OS_HOME/" || return 1
    echo "$pid"
}

healthy() {
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
            if [ "$PROFILE" = secure ]; then publish_env; fi
            return 0
        fi
        log "already running (pid $pid) but not healthy yet; waiting"
        wait_healthy "$pid"
        return
    fi
    rm -f "$PID_FILE"
    if healthy; then
        log "an OpenSearch node not started from $STATE already answers healthy at $URL; using it"
        if [ "$PROFILE" = secure ]; then publish_env; fi
        return 0
    fi

    ensure_prereqs
    ensure_user
    ensure_distribution
    if [ "$PROFILE" = secure ]; then
        ensure_security_plugin
        ensure_certs
    fi
    if [ -s "$STATE/VERSION" ] && [ "$(cat "$STATE/VERSION")" != "$OS_VERSION" ]; then
        log "note: $DATA_DIR was last used by OpenSearch $(cat "$STATE/VERSION")"
    fi
    write_config
    if [ "$PROFILE" = secure ]; then
        SEC_DIGEST="$(security_digest)"
        # Without data, the node makes its security index from the files just written.
        [ -d "$DATA_DIR/nodes" ] || echo "$SEC_DIGEST" >"$SEC_APPLIED"
    fi

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
        # Secure node with older data: once it answers (security index loaded), bring the index
        # up to date with the config files.
        if [ "$PROFILE" = secure ] && [ -n "${SEC_DIGEST:-}" ] \
                && [ "$(cat "$SEC_APPLIED" 2>/dev/null)" != "$SEC_DIGEST" ]; then
            case "$(http_code)" in
                200|401|403) push_security_config ;;
            esac
        fi
        if healthy; then
            log "healthy ($(cluster_status)) after $((SECONDS - start)) s: $URL (pid $pid)"
            if [ "$PROFILE" = secure ]; then publish_env; fi
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
    if [ "$PROFILE" = secure ]; then rm -f "$ENV_FILE"; fi
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

case "$CMD" in
    start|start-secure) cmd_start ;;
    stop|stop-secure) cmd_stop ;;
    status|status-secure) cmd_status ;;
    *) echo "usage: $0 start|stop|status|start-secure|stop-secure|status-secure" >&2; exit 2 ;;
esac
