//! The OpenSearch sink against real single-node Elasticsearch 7 and 8 (the sink claims
//! "OpenSearch 2.x/3.x or Elasticsearch 7/8"): `scripts/elasticsearch.sh start 7|8`
//! (http://127.0.0.1:9207 and :9208; `ELASTICSEARCH_7_URL` / `ELASTICSEARCH_8_URL` point
//! at another node, which the tests then neither start nor stop).
//!
//! Each test starts its node when none answers and stops it again when it is done (also when
//! it fails), so that no JVM is left running after the tests; a node that was already up is
//! left alone. The tests hold the lock of `opensearch.rs`: one search-cluster test at a time.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kpulse_integration_tests::{Agent, root, sample, wait_for};
use serde_json::{Value, json};

use crate::opensearch::{
    FAST_EXAMPLE, agent_dir, cluster_request, install_example, local_ids, metric, node_lock,
    prefix, stop_generator,
};

/// A node of one major version, started by the test if it was not up.
struct EsNode {
    major: u8,
    url: String,
    addr: SocketAddr,
    /// Started (and so to be stopped) by this test.
    started: bool,
}

impl EsNode {
    /// The node of `major`: running and healthy, checked to be Elasticsearch of that major.
    fn ensure(major: u8) -> EsNode {
        let external = std::env::var(format!("ELASTICSEARCH_{major}_URL")).ok();
        let url = external
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:920{major}"));
        let host = url.trim_start_matches("http://").trim_end_matches('/');
        let addr = host.to_socket_addrs().unwrap().next().unwrap();
        let mut node = EsNode {
            major,
            url,
            addr,
            started: false,
        };
        if external.is_none() && node.request("GET", "/_cluster/health", None).is_err() {
            let started = Instant::now();
            elasticsearch_script("start", major);
            node.started = true;
            eprintln!(
                "elasticsearch {major}: node started in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        node.check_identity();
        node
    }

    /// Fails unless the node says it is Elasticsearch of our major version (not OpenSearch,
    /// which has no `X-elastic-product` header, on a port given twice).
    fn check_identity(&self) {
        let (status, head, nodes) = self
            .request("GET", "/_nodes/_local?filter_path=nodes.*.version", None)
            .unwrap();
        assert_eq!(status, 200, "{} /_nodes/_local: {nodes}", self.url);
        assert!(
            head.to_ascii_lowercase()
                .contains("x-elastic-product: elasticsearch"),
            "{} is not Elasticsearch: {head}",
            self.url
        );
        let version = nodes["nodes"]
            .as_object()
            .and_then(|n| n.values().next())
            .and_then(|n| n["version"].as_str())
            .unwrap_or("")
            .to_owned();
        assert!(
            version.starts_with(&format!("{}.", self.major)),
            "{} runs Elasticsearch {version}, not {}.x",
            self.url,
            self.major
        );
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String, Value)> {
        cluster_request(self.addr, method, path, body)
    }

    fn ok(&self, method: &str, path: &str, body: Option<&str>) -> Value {
        let (status, _, value) = self.request(method, path, body).unwrap();
        assert!(
            (200..300).contains(&status),
            "Elasticsearch {}: {method} {path}: {status} {value}",
            self.major
        );
        value
    }

    /// Documents in `target` after a refresh, optionally restricted by a `q=` query.
    fn count(&self, target: &str, q: Option<&str>) -> u64 {
        let _ = self.request("POST", &format!("/{target}/_refresh"), None);
        let path = match q {
            Some(q) => format!("/{target}/_count?q={q}"),
            None => format!("/{target}/_count"),
        };
        match self.request("GET", &path, None) {
            Ok((200, _, value)) => value["count"].as_u64().unwrap_or(0),
            _ => 0,
        }
    }

    /// Every hit in `target`: (`_index`, `_id`, `_source.tracer_id`), sorted by `_id`.
    fn hits(&self, target: &str) -> Vec<(String, String, String)> {
        let _ = self.request("POST", &format!("/{target}/_refresh"), None);
        let body = json!({"size": 10_000, "_source": ["tracer_id"]}).to_string();
        let response = self.ok("POST", &format!("/{target}/_search"), Some(&body));
        let mut hits: Vec<(String, String, String)> = response["hits"]["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["_index"].as_str().unwrap().to_owned(),
                    h["_id"].as_str().unwrap().to_owned(),
                    h["_source"]["tracer_id"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        hits.sort_by(|a, b| a.1.cmp(&b.1));
        hits
    }

    /// `properties` of every index behind `target`, by index name.
    fn mappings(&self, target: &str) -> Vec<(String, Value)> {
        let mapping = self.ok("GET", &format!("/{target}/_mapping"), None);
        mapping
            .as_object()
            .unwrap()
            .iter()
            .map(|(index, m)| (index.clone(), m["mappings"]["properties"].clone()))
            .collect()
    }
}

impl Drop for EsNode {
    fn drop(&mut self) {
        if self.started {
            elasticsearch_script("stop", self.major);
        }
    }
}

fn elasticsearch_script(command: &str, major: u8) {
    let status = Command::new(root().join("scripts/elasticsearch.sh"))
        .args([command, &major.to_string()])
        .status()
        .unwrap();
    assert!(
        status.success(),
        "scripts/elasticsearch.sh {command} {major} failed"
    );
}

fn sink_config(node: &EsNode, prefix: &str, extra: &str) -> String {
    format!(
        "[storage.opensearch]\naddresses = [\"{}\"]\nindex = \"{prefix}\"\nflush_interval_ms = 200\nbackoff_initial_ms = 50\nbackoff_max_ms = 1000\n{extra}",
        node.url
    )
}

/// What the agent logged about the sink at WARN or ERROR, without colours and without
/// repeats (a retried request logs the same error many times), for failure messages.
fn sink_log(agent: &Agent) -> String {
    let mut seen = Vec::new();
    for line in agent.log().lines() {
        let plain = strip_ansi(line);
        if !(plain.contains(" WARN ") || plain.contains(" ERROR ")) || !plain.contains("opensearch")
        {
            continue;
        }
        // Without the timestamp and the back-off delay, the repeats are equal.
        let message = plain.split_once(' ').map_or(plain.as_str(), |(_, m)| m);
        let message = message
            .split(" retry_in=")
            .next()
            .unwrap_or(message)
            .to_owned();
        if !seen.contains(&message) {
            seen.push(message);
        }
    }
    if seen.is_empty() {
        "(no warnings or errors from the sink)".to_owned()
    } else {
        seen.join("\n")
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits until the agent installed its index template. A template the cluster refuses as
/// malformed (`HTTP 400`) fails at once: the agent would retry it forever.
fn wait_template_installed(agent: &Agent, major: u8) {
    wait_or_explain(
        agent,
        Duration::from_secs(30),
        &format!("the index template on Elasticsearch {major}"),
        || {
            let log = agent.log();
            let refused = log.lines().any(|l| {
                l.contains("cannot install the OpenSearch index template") && l.contains("HTTP 400")
            });
            assert!(
                !refused,
                "Elasticsearch {major} refused the sink's index template:\n{}",
                sink_log(agent)
            );
            log.contains("OpenSearch index template installed")
        },
    );
}

/// Waits for `check`; on timeout fails with what the agent logged about the sink (e.g. the
/// cluster's answer to the template or bulk request).
fn wait_or_explain(agent: &Agent, timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; the agent's sink warnings and errors:\n{}",
            sink_log(agent)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lines in the spool's segments (all of them: the test removed `committed`).
fn spooled_lines(dir: &Path) -> usize {
    let spool = dir.join("data/opensearch/spool");
    std::fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .map(|p| std::fs::read_to_string(p).unwrap().lines().count())
        .sum()
}

/// The keyword and date fields of the sink's index template.
fn assert_template_mapping(index: &str, props: &Value) {
    for field in ["@timestamp", "uploaded_time", "tracer_time"] {
        assert_eq!(props[field]["type"], "date", "{index} {field}: {props}");
    }
    for field in [
        "tracer_name",
        "tracer_id",
        "hostname",
        "region",
        "tracer_type",
    ] {
        assert_eq!(props[field]["type"], "keyword", "{index} {field}: {props}");
    }
    assert!(
        props["tracer_data"]["properties"].is_object(),
        "{index}: {props}"
    );
}

/// Daily indices: the example plugin's documents arrive with the template's mapping, `_id` is
/// the tracer_id, the agent searches them, and a restart that re-sends every document (as
/// after a crash between the cluster's answer and the spool commit) adds no duplicate.
fn documents_arrive_once(major: u8) {
    let _lock = node_lock();
    let node = EsNode::ensure(major);
    let prefix = prefix(&format!("es{major}"));
    let target = format!("{prefix}-*");
    let dir = agent_dir(&format!("es{major}-arrive"));
    install_example(&dir);
    // retention_days: Elasticsearch has no ISM; the agent must say so and deliver anyway.
    let config = format!(
        "{FAST_EXAMPLE}\n{}",
        sink_config(&node, &prefix, "retention_days = 7\n")
    );
    let agent = Agent::start_in(dir.clone(), &config);
    wait_template_installed(&agent, major);
    wait_or_explain(
        &agent,
        Duration::from_secs(60),
        &format!("example documents in Elasticsearch {major}"),
        || node.count(&target, Some("tracer_name:example")) >= 5,
    );

    // The composable index template `<prefix>`, and the daily index made from it (a dynamic
    // mapping would make tracer_name `text`).
    let template = node.ok("GET", &format!("/_index_template/{prefix}"), None);
    let entry = &template["index_templates"][0];
    assert_eq!(entry["name"], prefix.as_str(), "{template}");
    assert_eq!(
        entry["index_template"]["index_patterns"],
        json!([target.clone()]),
        "{template}"
    );
    let mappings = node.mappings(&target);
    assert!(!mappings.is_empty());
    for (index, props) in &mappings {
        assert!(index.starts_with(&format!("{prefix}-")), "{index}");
        assert_template_mapping(index, props);
        let settings = node.ok("GET", &format!("/{index}/_settings"), None);
        let settings = &settings[index]["settings"]["index"];
        assert_eq!(settings["number_of_replicas"], "0", "{settings}");
        assert_eq!(
            settings["mapping"]["total_fields"]["limit"], "1000",
            "{settings}"
        );
    }

    // `_id` is the tracer_id: for every document, and a local one fetched by id.
    let hits = node.hits(&target);
    assert!(hits.len() >= 5);
    for (index, id, tracer_id) in &hits {
        assert_eq!(id, tracer_id, "{index}");
    }
    let local = agent.get("/events?tracer=example&limit=1").json();
    let id = local[0]["tracer_id"].as_str().unwrap().to_owned();
    let stamp = local[0]["@timestamp"].as_str().unwrap().to_owned();
    let doc = wait_for(Duration::from_secs(10), "the document by _id", || {
        let (index, _, _) = node.hits(&target).into_iter().find(|h| h.1 == id)?;
        let (status, _, doc) = node
            .request("GET", &format!("/{index}/_doc/{id}"), None)
            .ok()?;
        (status == 200).then_some(doc)
    });
    assert_eq!(doc["_id"], id.as_str(), "{doc}");
    assert_eq!(doc["_source"]["tracer_id"], id.as_str(), "{doc}");

    // The agent's search API answered by Elasticsearch: by tracer and time, newest first.
    let docs = wait_for(Duration::from_secs(10), "the document by time", || {
        let docs = agent
            .get(&format!(
                "/events?source=opensearch&tracer=example&until={stamp}&since={stamp}"
            ))
            .json();
        (docs.as_array().unwrap().len() == 1).then_some(docs)
    });
    assert_eq!(docs[0]["tracer_id"], id.as_str());
    let docs = agent
        .get("/events?source=opensearch&tracer=example&limit=3")
        .json();
    let stamps: Vec<&str> = docs
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["@timestamp"].as_str().unwrap())
        .collect();
    assert_eq!(stamps.len(), 3, "{docs}");
    assert!(stamps.windows(2).all(|w| w[0] >= w[1]), "newest first");

    let log = agent.log();
    assert!(
        log.contains("retention_days is not applied"),
        "retention_days on a cluster without ISM must be reported: {}",
        sink_log(&agent)
    );
    assert_eq!(
        metric(&agent, "kpulse_opensearch_documents_rejected_total"),
        0.0,
        "{}",
        sink_log(&agent)
    );

    // Stop generating, let everything be acknowledged, stop: each local document is in the
    // cluster once.
    // Stopped, and the writer has handed every saved document to the spool: none comes later.
    stop_generator(&agent);
    wait_or_explain(
        &agent,
        Duration::from_secs(30),
        "the spool to drain",
        || metric(&agent, "kpulse_opensearch_spooled") == 0.0,
    );
    let dir = agent.stop();
    let ids = local_ids(&dir);
    let remote: Vec<String> = node.hits(&target).into_iter().map(|h| h.1).collect();
    assert_eq!(remote, ids, "every local document exactly once");

    // Forget the acknowledgement (as if the agent had died after the cluster indexed the
    // documents and before it recorded that): the restart sends them all again, and the
    // cluster answers `409` (create with the same _id) instead of storing copies.
    std::fs::remove_file(dir.join("data/opensearch/spool/committed")).unwrap();
    std::fs::remove_file(dir.join("plugins/example.wasm")).unwrap();
    let resent = spooled_lines(&dir);
    assert!(
        resent > 0 && resent <= ids.len(),
        "{resent} of {}",
        ids.len()
    );
    let agent = Agent::start_in(dir, &config);
    wait_or_explain(&agent, Duration::from_secs(30), "the re-send", || {
        let metrics = agent.metrics();
        sample(&metrics, "kpulse_opensearch_spooled") == Some(0.0)
            && sample(&metrics, "kpulse_opensearch_documents_duplicate_total")
                .is_some_and(|d| d >= resent as f64)
    });
    let metrics = agent.metrics();
    assert_eq!(
        sample(&metrics, "kpulse_opensearch_documents_duplicate_total"),
        Some(resent as f64)
    );
    assert_eq!(
        sample(&metrics, "kpulse_opensearch_documents_indexed_total"),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "kpulse_opensearch_documents_rejected_total"),
        Some(0.0)
    );
    assert_eq!(node.count(&target, None), ids.len() as u64, "no duplicates");
    let remote: Vec<String> = node.hits(&target).into_iter().map(|h| h.1).collect();
    assert_eq!(remote, ids);
    drop(agent);
}

#[test]
fn elasticsearch_7_documents_arrive_with_template_exactly_once() {
    documents_arrive_once(7);
}

#[test]
fn elasticsearch_8_documents_arrive_with_template_exactly_once() {
    documents_arrive_once(8);
}

/// `index_mode = "data_stream"` on Elasticsearch 8: the template declares the data stream,
/// the first `create` makes it, and the documents land in its `.ds-<name>-*` backing index
/// with the template's mapping and `_id = tracer_id`. (Not on 7: the 7.x integ-test
/// distribution lacks the data-streams module, so the node cannot hold a data stream.)
#[test]
fn elasticsearch_8_data_stream_mode() {
    let _lock = node_lock();
    let node = EsNode::ensure(8);
    let stream = prefix("es8-stream");
    let dir = agent_dir("es8-stream");
    install_example(&dir);
    let config = format!(
        "{FAST_EXAMPLE}\n{}",
        sink_config(&node, &stream, "index_mode = \"data_stream\"\n")
    );
    let agent = Agent::start_in(dir, &config);
    wait_template_installed(&agent, 8);
    wait_or_explain(
        &agent,
        Duration::from_secs(60),
        "example documents in the data stream",
        || node.count(&stream, Some("tracer_name:example")) >= 5,
    );
    let template = node.ok("GET", &format!("/_index_template/{stream}"), None);
    let entry = &template["index_templates"][0]["index_template"];
    assert!(entry["data_stream"].is_object(), "{template}");
    let mappings = node.mappings(&stream);
    assert!(!mappings.is_empty());
    for (index, props) in &mappings {
        assert!(
            index.starts_with(&format!(".ds-{stream}-")),
            "not a backing index of the data stream: {index}"
        );
        assert_template_mapping(index, props);
    }
    for (index, id, tracer_id) in node.hits(&stream) {
        assert_eq!(id, tracer_id, "{index}");
    }
    assert_eq!(
        metric(&agent, "kpulse_opensearch_documents_rejected_total"),
        0.0
    );
}
