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
# shellcheck source=scripts/lib/jvm-node.sh
source "$REPO/scripts/lib/jvm-node.sh"

CMD="${1:-}"
case "$CMD" in
    *-secure) PROFILE=secure ;;
    *) PROFILE=plain ;;
esac

NODE_USER="${OPENSEARCH_USER:-kpulse-os}"
if [ "$PROFILE" = plain ]; then
    NODE_VERSION="${OPENSEARCH_VERSION:-2.19.6}"
    STATE="${OPENSEARCH_HOME_DIR:-$REPO/.opensearch}"
    HOST="${OPENSEARCH_HOST:-127.0.0.1}"
    PORT="${OPENSEARCH_PORT:-9200}"
    TRANSPORT_PORT="${OPENSEARCH_TRANSPORT_PORT:-9300-9400}"
    JAVA_OPTS="${OPENSEARCH_JAVA_OPTS:--Xms512m -Xmx512m}"
    START_TIMEOUT="${OPENSEARCH_START_TIMEOUT:-120}"
    CLUSTER_NAME="kpulse-dev"
    SCHEME=http
else
    NODE_VERSION="${OPENSEARCH_SECURE_VERSION:-2.19.4}"
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
    PLUGIN_ARTIFACT="org.opensearch.plugin:opensearch-security:${NODE_VERSION}.0:zip"
fi
ARTIFACT="org.opensearch.distribution.integ-test-zip:opensearch:${NODE_VERSION}:zip"

NODE_KIND=opensearch
NODE_PRODUCT=OpenSearch
NODE_ENV_PREFIX=OPENSEARCH
NODE_JVM_CLASSES=(org.opensearch.bootstrap.OpenSearch)
NODE_LOG_ERRORS='\[ERROR\]|^Likely root cause|Exception:|^Error'
NODE_STOP_SCOPE=pid
LOG_PREFIX=opensearch
jvm_node_layout

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

# ---------------------------------------------------------------------------------------------
# Prerequisites (Debian packages only)

ensure_prereqs() {
    # OpenSearch 2.19 runs on Java 11..23 (it needs the SecurityManager, which Java 24 removed).
    ensure_jvm_prereqs OPENSEARCH_JAVA_HOME 11 23
    if [ "$PROFILE" = secure ]; then need_cmd openssl openssl; fi
}

# ---------------------------------------------------------------------------------------------
# Fetch and install the security plugin (the distribution: ensure_distribution)

# Secure node: the security plugin, installed offline into the distribution. Its default
# security config lands in $NODE_HOME/config/opensearch-security (templates for write_security_config).
ensure_security_plugin() {
    [ -f "$NODE_HOME/plugins/opensearch-security/plugin-descriptor.properties" ] && return 0
    local zip="$DIST_DIR/opensearch-security-$NODE_VERSION.0.zip"
    maven_fetch "$PLUGIN_ARTIFACT" "$zip" "the plugin must match OpenSearch $NODE_VERSION exactly; set OPENSEARCH_SECURE_VERSION to a version with a security plugin on Maven"
    log "installing the security plugin from $zip"
    rm -rf "$NODE_HOME/plugins/opensearch-security"
    # opensearch-plugin prints the plugin's extra permissions; --batch accepts them.
    env "OPENSEARCH_JAVA_HOME=$NODE_JAVA_HOME" "OPENSEARCH_PATH_CONF=$NODE_HOME/config" \
        "$NODE_HOME/bin/opensearch-plugin" install --batch "file://$zip" >"$STATE/plugin-install.log" 2>&1 \
        || { cat "$STATE/plugin-install.log" >&2; die "installing the security plugin failed"; }
    [ -f "$NODE_HOME/config/opensearch-security/roles.yml" ] \
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
        hash="$(env "OPENSEARCH_JAVA_HOME=$NODE_JAVA_HOME" \
            bash "$NODE_HOME/plugins/opensearch-security/tools/hash.sh" -p "$pw" | grep -E '^\$2[aby]?\$' | tail -n 1)" \
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
    local user_hash admin_hash tpl="$NODE_HOME/config/opensearch-security" f
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
    if ! out="$(env "OPENSEARCH_JAVA_HOME=$NODE_JAVA_HOME" \
            bash "$NODE_HOME/plugins/opensearch-security/tools/securityadmin.sh" \
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

# Our own config dir (write_node_config), the security settings on the secure node.
write_config() {
    write_node_config opensearch.yml <<EOF
# The integ-test distribution has no security plugin, so there are no plugins.security.* settings.
EOF
    if [ "$PROFILE" = secure ]; then
        write_security_config
        write_secure_config
    fi
    finish_node_config OPENSEARCH_HOME_DIR
}

# ---------------------------------------------------------------------------------------------
# Hooks of cmd_start and cmd_stop (scripts/lib/jvm-node.sh)

node_prepare() {
    ensure_prereqs
    ensure_user
    ensure_distribution "is the version served? set OPENSEARCH_VERSION"
    if [ "$PROFILE" = secure ]; then
        ensure_security_plugin
        ensure_certs
    fi
    write_config
    if [ "$PROFILE" = secure ]; then
        SEC_DIGEST="$(security_digest)"
        # Without data, the node makes its security index from the files just written.
        [ -d "$DATA_DIR/nodes" ] || echo "$SEC_DIGEST" >"$SEC_APPLIED"
    fi
}

node_wait_step() {
    # Secure node with older data: once it answers (security index loaded), bring the index
    # up to date with the config files.
    if [ "$PROFILE" = secure ] && [ -n "${SEC_DIGEST:-}" ] \
            && [ "$(cat "$SEC_APPLIED" 2>/dev/null)" != "$SEC_DIGEST" ]; then
        case "$(http_code)" in
            200|401|403) push_security_config ;;
        esac
    fi
}

node_ready() {
    if [ "$PROFILE" = secure ]; then publish_env; fi
}

node_stop_prepare() {
    if [ "$PROFILE" = secure ]; then rm -f "$ENV_FILE"; fi
}

case "$CMD" in
    start|start-secure) cmd_start "an OpenSearch node" ;;
    stop|stop-secure) cmd_stop ;;
    status|status-secure) cmd_status "a node" ;;
    *) echo "usage: $0 start|stop|status|start-secure|stop-secure|status-secure" >&2; exit 2 ;;
esac
