//! The OpenSearch sink against a real *secured* node: the security plugin with TLS on its own
//! test CA and HTTP basic auth (`scripts/opensearch.sh start-secure`, https://127.0.0.1:9201;
//! `scripts/test.sh` starts it, and these tests start it when it is not up), and against an
//! address where nothing listens.
//!
//! Wrong credentials, an untrusted certificate and an unreachable address must be logged
//! clearly (the cause and the address) and lose nothing: the documents wait in the spool (not
//! dropped, not dead-lettered) and arrive exactly once when the configuration is fixed.
//! The tests hold the lock of `opensearch.rs`: one OpenSearch test at a time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kpulse_integration_tests::{Agent, root, sample, sample_with, wait_for};
use serde_json::{Value, json};

use crate::opensearch::{
    FAST_EXAMPLE, agent_dir, install_example, local_ids, metric, node_lock, opensearch_script,
    prefix, stop_generator_and_settle,
};

/// The secured node's connection settings (`<state>/env`, written by `start-secure`).
struct SecureNode {
    url: String,
    ca: PathBuf,
    user: String,
    password: String,
}

fn secure_env_file() -> PathBuf {
    std::env::var_os("OPENSEARCH_SECURE_HOME_DIR")
        .map_or_else(|| root().join(".opensearch-secure"), PathBuf::from)
        .join("env")
}

fn read_secure_env() -> Option<SecureNode> {
    let text = std::fs::read_to_string(secure_env_file()).ok()?;
    let get = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    };
    Some(SecureNode {
        url: get("OPENSEARCH_SECURE_URL")?,
        ca: PathBuf::from(get("OPENSEARCH_SECURE_CA")?),
        user: get("OPENSEARCH_SECURE_USER")?,
        password: get("OPENSEARCH_SECURE_PASSWORD")?,
    })
}

impl SecureNode {
    /// One request with curl (the test CA, basic auth); returns status and JSON body.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, Value), String> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-g", "--max-time", "60", "-X", method])
            .arg("--cacert")
            .arg(&self.ca)
            .arg("-u")
            .arg(format!("{}:{}", self.user, self.password))
            .args(["-H", "Content-Type: application/json"])
            .args(["-w", "\n%{http_code}"]);
        if let Some(body) = body {
            cmd.args(["--data-binary", body]);
        }
        cmd.arg(format!("{}{path}", self.url));
        let out = cmd
            .output()
            .map_err(|err| format!("cannot run curl: {err}"))?;
        if !out.status.success() {
            return Err(format!(
                "curl {method} {path}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let status = code.trim().parse().unwrap_or(0);
        Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
    }

    fn ok(&self, method: &str, path: &str, body: Option<&str>) -> Value {
        let (status, value) = self.request(method, path, body).unwrap();
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {value}"
        );
        value
    }

    fn healthy(&self) -> bool {
        matches!(
            self.request("GET", "/_cluster/health", None),
            Ok((200, health)) if matches!(health["status"].as_str(), Some("green" | "yellow"))
        )
    }

    /// Documents in `<prefix>-*` after a refresh, optionally restricted by a `q=` query.
    fn count(&self, prefix: &str, q: Option<&str>) -> u64 {
        let _ = self.request("POST", &format!("/{prefix}-*/_refresh"), None);
        let path = match q {
            Some(q) => format!("/{prefix}-*/_count?q={q}"),
            None => format!("/{prefix}-*/_count"),
        };
        match self.request("GET", &path, None) {
            Ok((200, value)) => value["count"].as_u64().unwrap_or(0),
            _ => 0,
        }
    }

    /// The `_id`s in `<prefix>-*`, sorted.
    fn ids(&self, prefix: &str) -> Vec<String> {
        let _ = self.request("POST", &format!("/{prefix}-*/_refresh"), None);
        let body = json!({"size": 10_000, "_source": false}).to_string();
        let hits = self.ok("POST", &format!("/{prefix}-*/_search"), Some(&body));
        let mut ids: Vec<String> = hits["hits"]["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    }

    /// `[storage.opensearch]` for this node with `extra` lines (TLS and auth settings).
    fn sink_config(&self, prefix: &str, extra: &str) -> String {
        sink_config_at(&self.url, prefix, extra)
    }

    /// The TLS and auth lines of a correct configuration.
    fn trusted(&self) -> String {
        format!(
            "ca_file = {:?}\n{}",
            self.ca.display().to_string(),
            self.credentials(&self.password)
        )
    }

    fn credentials(&self, password: &str) -> String {
        format!("username = {:?}\npassword = {password:?}\n", self.user)
    }
}

/// The secured node, started (`scripts/opensearch.sh start-secure`, idempotent) when it does
/// not answer healthy. Call with the node lock held.
fn secure_node() -> SecureNode {
    if let Some(node) = read_secure_env()
        && node.healthy()
    {
        return node;
    }
    opensearch_script("start-secure");
    let node = read_secure_env().unwrap_or_else(|| {
        panic!(
            "scripts/opensearch.sh start-secure wrote no {}",
            secure_env_file().display()
        )
    });
    assert!(
        node.healthy(),
        "the secure node at {} is not healthy",
        node.url
    );
    node
}

fn sink_config_at(address: &str, prefix: &str, extra: &str) -> String {
    format!(
        "[storage.opensearch]\naddresses = [\"{address}\"]\nindex = \"{prefix}\"\nflush_interval_ms = 200\nbackoff_initial_ms = 50\nbackoff_max_ms = 1000\n{extra}"
    )
}

/// Waits for the example plugin to put at least `min` documents into the spool, stops the
/// plugin so that the set of documents is fixed, and returns how many are spooled.
fn spool_then_stop_generator(agent: &Agent, min: f64) -> f64 {
    let first = wait_for(Duration::from_secs(30), "documents in the spool", || {
        let n = metric(agent, "kpulse_opensearch_spooled");
        (n >= 1.0).then_some(n)
    });
    // The spool grows while the cluster cannot be written to.
    wait_for(Duration::from_secs(30), "the spool to keep growing", || {
        (metric(agent, "kpulse_opensearch_spooled") >= min.max(first + 1.0)).then_some(())
    });
    stop_generator_and_settle(agent)
}

/// Nothing was dropped, dead-lettered or indexed: every document is still in the spool.
fn assert_all_spooled(agent: &Agent, spooled: f64) {
    let metrics = agent.metrics();
    for reason in ["spool_full", "spool_evicted", "spool_io"] {
        assert_eq!(
            sample_with(
                &metrics,
                "kpulse_opensearch_documents_dropped_total",
                &format!("reason=\"{reason}\"")
            ),
            Some(0.0),
            "dropped ({reason})"
        );
    }
    assert_eq!(
        sample(&metrics, "kpulse_opensearch_documents_rejected_total"),
        Some(0.0),
        "nothing may be dead-lettered: {}",
        agent.log()
    );
    assert_eq!(
        sample(&metrics, "kpulse_opensearch_documents_indexed_total"),
        Some(0.0)
    );
    assert_eq!(sample(&metrics, "kpulse_opensearch_spooled"), Some(spooled));
    assert!(
        !agent
            .data_dir
            .join("opensearch/dead-letter.ndjson")
            .exists(),
        "no dead-letter file"
    );
    assert_eq!(
        local_ids(&agent.dir).len() as f64,
        spooled,
        "every saved document is spooled"
    );
}

/// The lines of the agent's log that contain `needle`.
fn log_lines(agent: &Agent, needle: &str) -> Vec<String> {
    agent
        .log()
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Asserts that some line of the log has every one of `parts` (lines, not the whole log: the
/// cause must be on the line that names the address).
fn assert_logged(agent: &Agent, parts: &[&str]) -> String {
    let log = agent.log();
    log.lines()
        .find(|line| parts.iter().all(|part| line.contains(part)))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no log line with all of {parts:?}:\n{log}"))
}

/// Restarts the agent on `dir` without the generator, with `config`; waits until every
/// document of the local store is in the secured node exactly once (by `_id`).
fn restart_and_deliver(node: &SecureNode, dir: &Path, prefix: &str, config: &str, spooled: f64) {
    let _ = std::fs::remove_file(dir.join("plugins/example.wasm"));
    let agent = Agent::start_in(dir.to_path_buf(), config);
    let ids = local_ids(dir);
    let expected = ids.len() as u64;
    assert_eq!(expected as f64, spooled);
    wait_for(
        Duration::from_secs(60),
        "the spooled documents in OpenSearch",
        || (node.count(prefix, None) >= expected).then_some(()),
    );
    // Drained: every batch is acknowledged and committed, nothing more is sent.
    wait_for(Duration::from_secs(10), "the spool to drain", || {
        (metric(&agent, "kpulse_opensearch_spooled") == 0.0).then_some(())
    });
    assert_eq!(node.count(prefix, None), expected, "exactly once");
    assert_eq!(node.ids(prefix), ids, "every local document, by tracer_id");
    assert_eq!(
        metric(&agent, "kpulse_opensearch_documents_indexed_total")
            + metric(&agent, "kpulse_opensearch_documents_duplicate_total"),
        expected as f64
    );
    assert_eq!(
        metric(&agent, "kpulse_opensearch_documents_rejected_total"),
        0.0
    );
    assert!(!dir.join("data/opensearch/dead-letter.ndjson").exists());
}

#[test]
fn opensearch_secure_tls_ca_and_basic_auth_deliver() {
    let _node = node_lock();
    let node = secure_node();
    let prefix = prefix("secure-tls");
    let dir = agent_dir("os-secure-tls");
    install_example(&dir);
    let config = format!(
        "{FAST_EXAMPLE}\n{}",
        node.sink_config(&prefix, &node.trusted())
    );
    let agent = Agent::start_in(dir, &config);

    wait_for(
        Duration::from_secs(30),
        "example documents in the secured node",
        || (node.count(&prefix, Some("tracer_name:example")) >= 5).then_some(()),
    );
    // The template went in over TLS with the credentials too.
    let template = node.ok("GET", &format!("/_index_template/{prefix}"), None);
    assert_eq!(
        template["index_templates"][0]["index_template"]["index_patterns"][0],
        format!("{prefix}-*"),
        "{template}"
    );
    // A document of the local store, by its id.
    let local = agent.get("/events?tracer=example&limit=1").json();
    let id = local[0]["tracer_id"].as_str().unwrap().to_owned();
    wait_for(Duration::from_secs(10), "the local document by id", || {
        (node.count(&prefix, Some(&format!("tracer_id:{id}"))) == 1).then_some(())
    });
    // The agent's own searches go through TLS and auth as well.
    let docs = wait_for(
        Duration::from_secs(10),
        "a search through the agent",
        || {
            let response = agent.get("/events?source=opensearch&tracer=example&limit=3");
            assert_eq!(response.status, 200, "{}", response.body);
            let docs = response.json();
            (docs.as_array().unwrap().len() == 3).then_some(docs)
        },
    );
    assert!(
        docs.as_array()
            .unwrap()
            .iter()
            .all(|d| d["tracer_name"] == "example"),
        "{docs}"
    );

    let metrics = agent.metrics();
    assert!(sample(&metrics, "kpulse_opensearch_documents_indexed_total").unwrap() >= 5.0);
    assert_eq!(
        sample(&metrics, "kpulse_opensearch_bulk_failures_total"),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "kpulse_opensearch_documents_rejected_total"),
        Some(0.0)
    );
    let log = agent.log();
    assert!(log.contains("OpenSearch index template installed"), "{log}");
    assert!(
        !log.contains("insecure_skip_verify"),
        "the certificate is verified: {log}"
    );
}

#[test]
fn opensearch_secure_wrong_password_is_logged_and_nothing_lost() {
    let _node = node_lock();
    let node = secure_node();
    let prefix = prefix("secure-auth");
    let dir = agent_dir("os-secure-auth");
    install_example(&dir);
    let ca = format!("ca_file = {:?}\n", node.ca.display().to_string());
    let wrong = format!("{ca}{}", node.credentials("not-the-password"));

    // 1. Wrong password, default settings: the template install at start answers 401, the
    //    documents wait in the spool.
    let agent = Agent::start_in(
        dir.clone(),
        &format!("{FAST_EXAMPLE}\n{}", node.sink_config(&prefix, &wrong)),
    );
    let spooled = spool_then_stop_generator(&agent, 20.0);
    let line = assert_logged(
        &agent,
        &[
            "cannot install the OpenSearch index template",
            &format!("{}/_index_template/{prefix}", node.url),
            "HTTP 401",
            "authentication failed",
        ],
    );
    eprintln!("wrong password, template: {line}");
    assert_all_spooled(&agent, spooled);
    // Searches through the agent fail with the cause, too.
    let search = agent.get("/events?source=opensearch&limit=1");
    assert_eq!(search.status, 502, "{}", search.body);
    assert!(search.body.contains("401"), "{}", search.body);
    agent.stop();
    assert_eq!(node.count(&prefix, None), 0);

    // 2. Wrong password without the template step: the bulk requests answer 401 and are
    //    retried (never dead-lettered).
    std::fs::remove_file(dir.join("plugins/example.wasm")).unwrap();
    let agent = Agent::start_in(
        dir.clone(),
        &node.sink_config(&prefix, &format!("{wrong}install_template = false\n")),
    );
    assert_eq!(metric(&agent, "kpulse_opensearch_spooled"), spooled);
    wait_for(Duration::from_secs(30), "401 bulk retries", || {
        (metric(&agent, "kpulse_opensearch_documents_retried_total") >= 2.0 * spooled).then_some(())
    });
    let line = assert_logged(
        &agent,
        &[
            "OpenSearch bulk request failed; documents stay spooled",
            &format!("{}/_bulk", node.url),
            "HTTP 401",
            "authentication failed",
        ],
    );
    eprintln!("wrong password, bulk: {line}");
    assert!(metric(&agent, "kpulse_opensearch_bulk_failures_total") >= 2.0);
    assert_all_spooled(&agent, spooled);
    agent.stop();
    assert_eq!(node.count(&prefix, None), 0);

    // 3. The right password on the same data dir: every document arrives exactly once.
    restart_and_deliver(
        &node,
        &dir,
        &prefix,
        &node.sink_config(&prefix, &node.trusted()),
        spooled,
    );
}

#[test]
fn opensearch_secure_untrusted_certificate_is_refused_unless_opted_out() {
    let _node = node_lock();
    let node = secure_node();
    let prefix = prefix("secure-cert");
    let dir = agent_dir("os-secure-cert");
    install_example(&dir);
    let credentials = node.credentials(&node.password);

    // 1. No ca_file: the test CA is not among the system roots, so the handshake fails.
    let agent = Agent::start_in(
        dir.clone(),
        &format!(
            "{FAST_EXAMPLE}\n{}",
            node.sink_config(&prefix, &credentials)
        ),
    );
    let spooled = spool_then_stop_generator(&agent, 20.0);
    let line = assert_logged(
        &agent,
        &[
            "cannot install the OpenSearch index template",
            &format!("{}/_index_template/{prefix}", node.url),
            "certificate",
        ],
    );
    eprintln!("untrusted certificate: {line}");
    assert!(
        line.contains("UnknownIssuer") || line.contains("unknown issuer"),
        "the log names the cause: {line}"
    );
    // The node answered (the handshake failed on its certificate): calling it unreachable
    // sends the operator after the network instead of `ca_file`.
    assert!(
        !line.contains("cluster unreachable"),
        "a certificate the agent does not trust is not an unreachable cluster: {line}"
    );
    assert_all_spooled(&agent, spooled);
    agent.stop();
    assert_eq!(node.count(&prefix, None), 0);
    let (status, _) = node
        .request("GET", &format!("/_index_template/{prefix}"), None)
        .unwrap();
    assert_eq!(status, 404, "no template was installed");

    // 2. The explicit opt-out (no CA): a warning, then everything arrives exactly once.
    restart_and_deliver(
        &node,
        &dir,
        &prefix,
        &node.sink_config(
            &prefix,
            &format!("{credentials}insecure_skip_verify = true\n"),
        ),
        spooled,
    );
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap();
    assert!(
        log.contains("insecure_skip_verify is set"),
        "the opt-out is logged: {log}"
    );
}

#[test]
fn opensearch_secure_unreachable_address_is_logged_and_nothing_lost() {
    let _node = node_lock();
    let node = secure_node();
    let prefix = prefix("unreachable");
    let dir = agent_dir("os-unreachable");
    install_example(&dir);
    // Nothing listens on port 1.
    let address = "http://127.0.0.1:1";

    // 1. Default settings: the template install at start cannot connect.
    let agent = Agent::start_in(
        dir.clone(),
        &format!("{FAST_EXAMPLE}\n{}", sink_config_at(address, &prefix, "")),
    );
    let spooled = spool_then_stop_generator(&agent, 20.0);
    let line = assert_logged(
        &agent,
        &[
            "cannot install the OpenSearch index template",
            &format!("{address}/_index_template/{prefix}"),
            "Connection refused",
            "(cluster unreachable)",
        ],
    );
    eprintln!("unreachable, template: {line}");
    assert_all_spooled(&agent, spooled);
    agent.stop();

    // 2. Without the template step: the bulk requests fail to connect and are retried.
    std::fs::remove_file(dir.join("plugins/example.wasm")).unwrap();
    let agent = Agent::start_in(
        dir.clone(),
        &sink_config_at(address, &prefix, "install_template = false\n"),
    );
    wait_for(Duration::from_secs(30), "bulk retries", || {
        (metric(&agent, "kpulse_opensearch_documents_retried_total") >= 2.0 * spooled).then_some(())
    });
    let line = assert_logged(
        &agent,
        &[
            "OpenSearch bulk request failed; documents stay spooled",
            &format!("{address}/_bulk"),
            "(cluster unreachable)",
        ],
    );
    eprintln!("unreachable, bulk: {line}");
    assert_all_spooled(&agent, spooled);
    assert_eq!(log_lines(&agent, "dead-letter").len(), 0);
    agent.stop();

    // 3. A reachable address on the same data dir: every document arrives exactly once.
    restart_and_deliver(
        &node,
        &dir,
        &prefix,
        &node.sink_config(&prefix, &node.trusted()),
        spooled,
    );
}

/// A user and role of one test in the security plugin, deleted on drop.
struct TestUser<'a> {
    node: &'a SecureNode,
    user: String,
    role: String,
}

const SECURITY_API: &str = "/_plugins/_security/api";

impl<'a> TestUser<'a> {
    fn create(node: &'a SecureNode, name: &str, password: &str) -> Self {
        let body = json!({"password": password, "backend_roles": []}).to_string();
        node.ok(
            "PUT",
            &format!("{SECURITY_API}/internalusers/{name}"),
            Some(&body),
        );
        let user = TestUser {
            node,
            user: name.to_owned(),
            role: format!("{name}-role"),
        };
        user.grant(&[], "", &[]);
        let body = json!({"users": [name]}).to_string();
        node.ok(
            "PUT",
            &format!("{SECURITY_API}/rolesmapping/{}", user.role),
            Some(&body),
        );
        user
    }

    /// Replaces the user's role: `cluster` permissions, `index` actions on `pattern`.
    fn grant(&self, cluster: &[&str], pattern: &str, index: &[&str]) {
        let index_permissions = if index.is_empty() {
            json!([])
        } else {
            json!([{"index_patterns": [pattern], "allowed_actions": index}])
        };
        let body = json!({"cluster_permissions": cluster, "index_permissions": index_permissions})
            .to_string();
        self.node.ok(
            "PUT",
            &format!("{SECURITY_API}/roles/{}", self.role),
            Some(&body),
        );
    }
}

impl Drop for TestUser<'_> {
    fn drop(&mut self) {
        for path in [
            format!("rolesmapping/{}", self.role),
            format!("roles/{}", self.role),
            format!("internalusers/{}", self.user),
        ] {
            let _ = self
                .node
                .request("DELETE", &format!("{SECURITY_API}/{path}"), None);
        }
    }
}

/// A user the cluster knows but who may not write: `403` for a whole request (the template)
/// and `403` for single bulk items (`security_exception`: no `create_index` on the daily
/// index). Both are permission problems of the cluster, like wrong credentials: the
/// documents must wait in the spool, logged with the cause, until the permission is
/// granted, and then arrive exactly once, without restarting the agent.
#[test]
fn opensearch_secure_missing_permission_is_logged_and_nothing_lost() {
    let _node = node_lock();
    let node = secure_node();
    let prefix = prefix("secure-perm");
    let pattern = format!("{prefix}-*");
    let password = "perm-secret-1";
    let user = TestUser::create(&node, &format!("{prefix}-user"), password);
    let dir = agent_dir("os-secure-perm");
    install_example(&dir);
    let settings = format!(
        "ca_file = {:?}\nusername = {:?}\npassword = {password:?}\n",
        node.ca.display().to_string(),
        user.user
    );
    let agent = Agent::start_in(
        dir.clone(),
        &format!("{FAST_EXAMPLE}\n{}", node.sink_config(&prefix, &settings)),
    );

    // 1. No permissions: the template install answers 403.
    let spooled = spool_then_stop_generator(&agent, 20.0);
    let line = assert_logged(
        &agent,
        &[
            "cannot install the OpenSearch index template",
            &format!("{}/_index_template/{prefix}", node.url),
            "HTTP 403",
            "permission denied",
        ],
    );
    eprintln!("no permission, template: {line}");
    assert_all_spooled(&agent, spooled);

    // 2. Templates and bulk requests, writes but no `create_index`: the template goes in,
    //    every bulk item answers 403 (security_exception). The documents stay spooled.
    user.grant(
        &["indices:data/write/bulk", "cluster_manage_index_templates"],
        &pattern,
        &["crud"],
    );
    wait_for(Duration::from_secs(30), "bulk items answered 403", || {
        (metric(&agent, "kpulse_opensearch_documents_retried_total") >= spooled
            || metric(&agent, "kpulse_opensearch_documents_rejected_total") > 0.0)
            .then_some(())
    });
    assert_eq!(
        metric(&agent, "kpulse_opensearch_documents_rejected_total"),
        0.0,
        "a bulk item answered 403 (a missing permission) must be retried, not dead-lettered: {:?}",
        log_lines(&agent, "dead-letter").first()
    );
    // The item's status and the cluster's reason (the missing `indices:admin/create`).
    let line = agent
        .log()
        .lines()
        .find(|l| l.contains("403") && l.contains("indices:admin/create"))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            panic!(
                "the log names the status and cause of the item failures:\n{}",
                agent.log()
            )
        });
    eprintln!("no create_index, bulk items: {line}");
    assert_all_spooled(&agent, spooled);

    // 3. Granted: the spooled documents arrive exactly once, without a restart.
    user.grant(
        &["indices:data/write/bulk", "cluster_manage_index_templates"],
        &pattern,
        &["crud", "create_index"],
    );
    let ids = local_ids(&dir);
    let expected = ids.len() as u64;
    wait_for(
        Duration::from_secs(60),
        "the documents after the grant",
        || (node.count(&prefix, None) >= expected).then_some(()),
    );
    // Drained: every batch is acknowledged and committed, nothing more is sent.
    wait_for(Duration::from_secs(10), "the spool to drain", || {
        (metric(&agent, "kpulse_opensearch_spooled") == 0.0).then_some(())
    });
    assert_eq!(node.count(&prefix, None), expected, "exactly once");
    assert_eq!(node.ids(&prefix), ids, "every local document, by tracer_id");
    assert_eq!(
        metric(&agent, "kpulse_opensearch_documents_rejected_total"),
        0.0
    );
}
