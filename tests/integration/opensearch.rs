//! The OpenSearch sink against a real single-node OpenSearch (`scripts/opensearch.sh start`,
//! done by `scripts/test.sh`; `OPENSEARCH_URL` overrides the address). The tests share the
//! node and one of them stops and restarts it, so they run one at a time (with the tests of
//! the secured node in `opensearch_secure.rs`, which share the lock and these helpers).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kpulse_integration_tests::{
    Agent, guest_wasm, plugin_wasm, root, sample, sample_with, scratch_dir, wait_for,
};
use serde_json::{Value, json};

static NODE: Mutex<()> = Mutex::new(());

pub(crate) fn node_lock() -> MutexGuard<'static, ()> {
    NODE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) const FAST_EXAMPLE: &str = r#"
[plugins.example]
interval_ms = 50
running_per_cpu_threshold = 0.0
cooldown_secs = 0
"#;

pub(crate) fn os_url() -> String {
    std::env::var("OPENSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".to_owned())
}

pub(crate) fn os_addr() -> SocketAddr {
    let url = os_url();
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    host.to_socket_addrs().unwrap().next().unwrap()
}

/// One request to the node (Connection: close); returns status and JSON body.
pub(crate) fn os(method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, Value)> {
    cluster_request(os_addr(), method, path, body).map(|(status, _, value)| (status, value))
}

/// One request to the cluster node at `addr` (Connection: close); returns status, response
/// head (status line and headers) and JSON body (`Null` when the body is not JSON).
pub(crate) fn cluster_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String, Value)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.unwrap_or("");
    let content_type = if path.contains("_bulk") {
        "application/x-ndjson"
    } else {
        "application/json"
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 || tail.len() < size {
                break;
            }
            out.push_str(&tail[..size]);
            rest = tail[size..].trim_start_matches("\r\n");
        }
        out
    } else {
        rest.to_owned()
    };
    Ok((
        status,
        head.to_owned(),
        serde_json::from_str(&body).unwrap_or(Value::Null),
    ))
}

pub(crate) fn os_ok(method: &str, path: &str, body: Option<&str>) -> Value {
    let (status, value) = os(method, path, body).unwrap();
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {value}"
    );
    value
}

pub(crate) fn opensearch_script(command: &str) {
    let status = Command::new(root().join("scripts/opensearch.sh"))
        .arg(command)
        .status()
        .unwrap();
    assert!(status.success(), "scripts/opensearch.sh {command} failed");
}

/// Makes sure the node is up (a previous test may have stopped it and failed).
pub(crate) fn ensure_node() {
    if os("GET", "/_cluster/health", None).is_err() {
        opensearch_script("start");
    }
}

/// A unique index prefix per test run.
pub(crate) fn prefix(label: &str) -> String {
    format!("kpulse-it-{label}-{}", std::process::id())
}

fn sink_config(prefix: &str) -> String {
    format!(
        "[storage.opensearch]\naddresses = [\"{}\"]\nindex = \"{prefix}\"\nflush_interval_ms = 200\nbackoff_initial_ms = 50\nbackoff_max_ms = 1000\n",
        os_url()
    )
}

/// Documents in `<prefix>-*` after a refresh, optionally restricted by a `q=` query.
fn count(prefix: &str, q: Option<&str>) -> u64 {
    let _ = os("POST", &format!("/{prefix}-*/_refresh"), None);
    let path = match q {
        Some(q) => format!("/{prefix}-*/_count?q={q}"),
        None => format!("/{prefix}-*/_count"),
    };
    match os("GET", &path, None) {
        Ok((200, value)) => value["count"].as_u64().unwrap_or(0),
        _ => 0,
    }
}

pub(crate) fn metric(agent: &Agent, name: &str) -> f64 {
    sample(&agent.metrics(), name).unwrap_or(0.0)
}

/// Stops the example generator and waits until the local writer has handled everything it
/// saved: the plugin is stopped (nothing more is saved), the writer's queue is empty and the
/// local files hold every document the plugin saved in this run. The writer hands each
/// document to the sink's spool before it writes the local file, so then every document is
/// in the spool too (or already acknowledged).
pub(crate) fn stop_generator(agent: &Agent) {
    assert!((200..300).contains(&agent.put("/plugins/example/stop").status));
    agent.wait_state("example", "stopped", Duration::from_secs(10));
    wait_for(
        Duration::from_secs(10),
        "the local writer to write every saved document",
        || {
            let metrics = agent.metrics();
            let saved = sample_with(
                &metrics,
                "kpulse_plugin_documents_saved_total",
                "plugin=\"example\"",
            )?;
            let written: f64 = metrics
                .lines()
                .filter(|line| line.starts_with("kpulse_storage_documents_written_total{"))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            let queued = sample(&metrics, "kpulse_storage_queue_length")?;
            (queued == 0.0 && written >= saved).then_some(())
        },
    );
}

/// [`stop_generator`] for a cluster that acknowledges nothing meanwhile (down, or refusing):
/// also waits until the local store holds as many documents as the spool. Returns how many
/// are spooled.
pub(crate) fn stop_generator_and_settle(agent: &Agent) -> f64 {
    stop_generator(agent);
    wait_for(
        Duration::from_secs(10),
        "the local store to hold every spooled document",
        || {
            let spooled = sample(&agent.metrics(), "kpulse_opensearch_spooled")?;
            (local_ids(&agent.dir).len() as f64 == spooled).then_some(spooled)
        },
    )
}

/// `YYYY.MM.DD` of now, in UTC (civil-from-days, H. Hinnant).
pub(crate) fn today() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let z = i64::try_from(secs / 86_400).unwrap() + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}.{m:02}.{d:02}")
}

fn now_rfc3339() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let (y, m, d) = {
        let t = today();
        let mut parts = t.split('.').map(|p| p.parse::<u32>().unwrap());
        (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        )
    };
    let s = now.as_secs() % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        now.subsec_millis()
    )
}

/// A document shaped like the store's.
fn document(id: &str, container: &str, uploaded_time: &str) -> Value {
    json!({
        "@timestamp": now_rfc3339(),
        "hostname": "it-host",
        "region": "test",
        "uploaded_time": uploaded_time,
        "time": "2025-01-01 00:00:00.000 +0000",
        "container_id": container,
        "tracer_name": "injected",
        "tracer_id": id,
        "tracer_time": "2025-01-01 00:00:00.000 +0000",
        "tracer_type": "event",
        "tracer_data": {"n": 1, "reason": "test"},
    })
}

/// Puts documents into the sink's spool before the agent starts (as if an earlier run had
/// spooled them): the first segment of a fresh spool.
fn seed_spool(dir: &Path, docs: &[Value]) {
    let spool = dir.join("data/opensearch/spool");
    std::fs::create_dir_all(&spool).unwrap();
    let text: String = docs.iter().map(|d| format!("{d}\n")).collect();
    std::fs::write(spool.join(format!("{:020}.ndjson", 1)), text).unwrap();
}

pub(crate) fn local_ids(dir: &Path) -> Vec<String> {
    let events = dir.join("data/events");
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(events).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            if let Ok(doc) = serde_json::from_str::<Value>(line) {
                ids.push(doc["tracer_id"].as_str().unwrap().to_owned());
            }
        }
    }
    ids.sort();
    ids
}

pub(crate) fn agent_dir(label: &str) -> PathBuf {
    let dir = scratch_dir(label);
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    dir
}

pub(crate) fn install_example(dir: &Path) {
    kpulse_integration_tests::install(&dir.join("plugins"), &plugin_wasm("example"));
}

#[test]
fn opensearch_documents_arrive_searchable_with_template() {
    let _node = node_lock();
    ensure_node();
    let prefix = prefix("arrive");
    let dir = agent_dir("os-arrive");
    install_example(&dir);
    seed_spool(
        &dir,
        &[document(
            "itcontainer00000001",
            "c0ffee1234567890",
            &now_rfc3339(),
        )],
    );
    let agent = Agent::start_in(dir, &format!("{FAST_EXAMPLE}\n{}", sink_config(&prefix)));

    // Arrival: the plugin's documents and the one with a container.
    wait_for(
        Duration::from_secs(30),
        "example documents in OpenSearch",
        || (count(&prefix, Some("tracer_name:example")) >= 5).then_some(()),
    );
    assert_eq!(count(&prefix, Some("container_id:c0ffee1234567890")), 1);

    // The daily index from the template: dates, keywords, field limit, no replicas.
    let index = format!("{prefix}-{}", today());
    let template = os_ok("GET", &format!("/_index_template/{prefix}"), None);
    let patterns = &template["index_templates"][0]["index_template"]["index_patterns"];
    assert_eq!(patterns[0], format!("{prefix}-*"), "{template}");
    let mapping = os_ok("GET", &format!("/{index}/_mapping"), None);
    let props = &mapping[&index]["mappings"]["properties"];
    for field in ["@timestamp", "uploaded_time", "tracer_time"] {
        assert_eq!(props[field]["type"], "date", "{field}: {mapping}");
    }
    for field in ["tracer_name", "tracer_id", "container_id", "hostname"] {
        assert_eq!(props[field]["type"], "keyword", "{field}: {mapping}");
    }
    assert!(props["tracer_data"]["properties"].is_object(), "{mapping}");
    let settings = os_ok("GET", &format!("/{index}/_settings"), None);
    let settings = &settings[&index]["settings"]["index"];
    assert_eq!(settings["number_of_replicas"], "0");
    assert_eq!(settings["mapping"]["total_fields"]["limit"], "1000");

    // `_id` is the tracer_id; the local store has the same document (dual write).
    let local = agent.get("/events?tracer=example&limit=1").json();
    let id = local[0]["tracer_id"].as_str().unwrap().to_owned();
    let stamp = local[0]["@timestamp"].as_str().unwrap().to_owned();
    wait_for(Duration::from_secs(10), "the document by _id", || {
        let (status, doc) = os("GET", &format!("/{index}/_doc/{id}"), None).ok()?;
        (status == 200).then_some(doc)
    });

    // Searchable by tracer, container and time through the agent's API.
    // Searches see documents after the next refresh (1 s).
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
        .get("/events?source=opensearch&container=c0ffee&limit=10")
        .json();
    assert_eq!(docs.as_array().unwrap().len(), 1, "{docs}");
    assert_eq!(docs[0]["tracer_name"], "injected");
    let docs = agent
        .get("/events?source=opensearch&tracer=example&limit=3")
        .json();
    let stamps: Vec<&str> = docs
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["@timestamp"].as_str().unwrap())
        .collect();
    assert_eq!(stamps.len(), 3);
    assert!(stamps.windows(2).all(|w| w[0] >= w[1]), "newest first");
    assert_eq!(agent.get("/events?source=elsewhere").status, 400);

    // Self-metrics.
    let metrics = agent.metrics();
    assert!(sample(&metrics, "kpulse_opensearch_documents_indexed_total").unwrap() >= 6.0);
    assert!(sample(&metrics, "kpulse_opensearch_spooled").is_some());
    assert!(sample(&metrics, "kpulse_opensearch_bulk_requests_total").unwrap() >= 1.0);
    assert_eq!(
        sample(&metrics, "kpulse_opensearch_documents_rejected_total"),
        Some(0.0)
    );
    drop(agent);
}

#[test]
fn opensearch_outage_kill9_restart_delivers_every_document_once() {
    let _node = node_lock();
    ensure_node();
    let prefix = prefix("outage");
    let config = format!("{FAST_EXAMPLE}\n{}", sink_config(&prefix));
    let dir = agent_dir("os-outage");
    install_example(&dir);

    opensearch_script("stop");
    let mut agent = Agent::start_in(dir.clone(), &config);
    wait_for(
        Duration::from_secs(30),
        "documents spooled during the outage",
        || (metric(&agent, "kpulse_opensearch_spooled") >= 20.0).then_some(()),
    );
    // Stop generating so that the set of documents is fixed, wait for the local writer to
    // catch up, then kill -9 with everything still spooled.
    let spooled = stop_generator_and_settle(&agent);
    let log = agent.log();
    assert!(
        log.contains("cannot install the OpenSearch index template") && log.contains("unreachable"),
        "the outage must be logged clearly: {log}"
    );
    agent.child.kill().unwrap();
    let _ = agent.child.wait();
    drop(agent);
    let ids = local_ids(&dir);
    assert_eq!(
        ids.len() as f64,
        spooled,
        "every saved document was spooled"
    );

    // Restart without the generator; the spool survives the kill.
    std::fs::remove_file(dir.join("plugins/example.wasm")).unwrap();
    let agent = Agent::start_in(dir.clone(), &config);
    assert_eq!(metric(&agent, "kpulse_opensearch_spooled"), spooled);
    opensearch_script("start");
    let expected = ids.len() as u64;
    wait_for(Duration::from_secs(60), "the replayed documents", || {
        (count(&prefix, None) >= expected).then_some(())
    });
    // Once the spool is drained every batch is acknowledged and committed: nothing more is
    // sent, so the count is final.
    wait_for(Duration::from_secs(10), "the spool to drain", || {
        (metric(&agent, "kpulse_opensearch_spooled") == 0.0).then_some(())
    });
    assert_eq!(count(&prefix, None), expected, "exactly once");
    // Every local document is in the cluster, by tracer_id.
    let body = json!({"size": 10_000, "_source": ["tracer_id"]}).to_string();
    let hits = os_ok("POST", &format!("/{prefix}-*/_search"), Some(&body));
    let mut remote: Vec<String> = hits["hits"]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["_id"].as_str().unwrap().to_owned())
        .collect();
    remote.sort();
    assert_eq!(remote, ids);
    assert_eq!(
        metric(&agent, "kpulse_opensearch_documents_indexed_total")
            + metric(&agent, "kpulse_opensearch_documents_duplicate_total"),
        expected as f64
    );
}

#[test]
fn opensearch_mapping_conflict_dead_letters_only_that_document() {
    let _node = node_lock();
    ensure_node();
    let prefix = prefix("conflict");
    let dir = agent_dir("os-conflict");
    let now = now_rfc3339();
    seed_spool(
        &dir,
        &[
            document("itconflictgood000001", "", &now),
            // `uploaded_time` is a date in the template: this one cannot be indexed.
            document("itconflictbad0000002", "", "not a date"),
            document("itconflictgood000003", "", &now),
        ],
    );
    let agent = Agent::start_in(dir.clone(), &sink_config(&prefix));
    wait_for(Duration::from_secs(30), "the batch to settle", || {
        (metric(&agent, "kpulse_opensearch_spooled") == 0.0
            && metric(&agent, "kpulse_opensearch_documents_rejected_total") >= 1.0)
            .then_some(())
    });
    assert_eq!(count(&prefix, None), 2);
    assert_eq!(count(&prefix, Some("tracer_id:itconflictbad0000002")), 0);
    let dead = std::fs::read_to_string(dir.join("data/opensearch/dead-letter.ndjson")).unwrap();
    let lines: Vec<Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{dead}");
    assert_eq!(lines[0]["document"]["tracer_id"], "itconflictbad0000002");
    assert_eq!(lines[0]["status"], 400);
    assert!(
        lines[0]["reason"]
            .as_str()
            .unwrap()
            .contains("mapper_parsing_exception"),
        "{dead}"
    );
    assert_eq!(
        metric(&agent, "kpulse_opensearch_documents_indexed_total"),
        2.0
    );
}

#[test]
fn opensearch_429_is_retried_until_accepted() {
    let _node = node_lock();
    ensure_node();
    let prefix = prefix("throttle");
    let index = format!("{prefix}-{}", today());
    // The flood-stage block: the cluster answers 429 to every write into the index.
    os_ok(
        "PUT",
        &format!("/{index}"),
        Some(r#"{"settings":{"number_of_replicas":0}}"#),
    );
    os_ok(
        "PUT",
        &format!("/{index}/_settings"),
        Some(r#"{"index.blocks.read_only_allow_delete":true}"#),
    );
    let dir = agent_dir("os-throttle");
    let now = now_rfc3339();
    seed_spool(
        &dir,
        &[
            document("itthrottle0000000001", "", &now),
            document("itthrottle0000000002", "", &now),
            document("itthrottle0000000003", "", &now),
        ],
    );
    let agent = Agent::start_in(dir, &sink_config(&prefix));
    wait_for(Duration::from_secs(30), "429 retries", || {
        (metric(&agent, "kpulse_opensearch_documents_retried_total") >= 6.0).then_some(())
    });
    assert_eq!(
        metric(&agent, "kpulse_opensearch_documents_indexed_total"),
        0.0
    );
    assert_eq!(metric(&agent, "kpulse_opensearch_spooled"), 3.0);
    os_ok(
        "PUT",
        &format!("/{index}/_settings"),
        Some(r#"{"index.blocks.read_only_allow_delete":null}"#),
    );
    wait_for(
        Duration::from_secs(30),
        "the documents after the block",
        || (metric(&agent, "kpulse_opensearch_documents_indexed_total") == 3.0).then_some(()),
    );
    assert_eq!(count(&prefix, None), 3);
    assert_eq!(
        metric(&agent, "kpulse_opensearch_documents_rejected_total"),
        0.0
    );
    wait_for(Duration::from_secs(10), "the spool to drain", || {
        (metric(&agent, "kpulse_opensearch_spooled") == 0.0).then_some(())
    });
}

/// Benchmark (run by hand: `cargo test --release -p kpulse-integration-tests -- --ignored
/// opensearch_bench --nocapture`): replays a spool of `KPULSE_OS_BENCH_DOCS` (100 000)
/// example-shaped documents into the node and prints docs/s, bytes/doc and agent CPU.
#[test]
#[ignore = "benchmark"]
fn opensearch_bench() {
    let _node = node_lock();
    ensure_node();
    let docs: usize = std::env::var("KPULSE_OS_BENCH_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let prefix = prefix("bench");
    let dir = agent_dir("os-bench");
    let now = now_rfc3339();
    let seeded: Vec<Value> = (0..docs)
        .map(|n| {
            let mut doc = document(&format!("itbench{n:013}"), "", &now);
            doc["tracer_name"] = json!("example");
            doc["tracer_data"] = json!({
                "running": n % 7, "running_per_cpu": 1.5, "running_per_cpu_threshold": 0.0,
                "load1": 0.42, "mem_available_bytes": 1_234_567_890u64,
                "runnable": [{"pid": n % 30_000, "comm": "kworker/0:1"}, {"pid": 42, "comm": "bash"}]
            });
            doc
        })
        .collect();
    seed_spool(&dir, &seeded);
    let spool_bytes =
        std::fs::metadata(dir.join(format!("data/opensearch/spool/{:020}.ndjson", 1)))
            .unwrap()
            .len();
    let started = std::time::Instant::now();
    let agent = Agent::start_in(dir, &sink_config(&prefix));
    wait_for(Duration::from_secs(600), "the bench replay", || {
        (metric(&agent, "kpulse_opensearch_spooled") == 0.0).then_some(())
    });
    let elapsed = started.elapsed().as_secs_f64();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", agent.child.id())).unwrap();
    let fields: Vec<&str> = stat.rsplit(") ").next().unwrap().split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let cpu = ticks / 100.0;
    let metrics = agent.metrics();
    let indexed = sample(&metrics, "kpulse_opensearch_documents_indexed_total").unwrap();
    let wire = sample(&metrics, "kpulse_opensearch_bulk_bytes_total").unwrap();
    let requests = sample(&metrics, "kpulse_opensearch_bulk_requests_total").unwrap();
    let bulk_secs = sample(&metrics, "kpulse_opensearch_bulk_seconds_total").unwrap();
    os_ok("POST", &format!("/{prefix}-*/_flush"), None);
    let stats = os_ok("GET", &format!("/{prefix}-*/_stats/store,docs"), None);
    let store = stats["_all"]["primaries"]["store"]["size_in_bytes"]
        .as_f64()
        .unwrap_or(0.0);
    println!(
        "opensearch bench: {docs} docs replayed from the spool in {elapsed:.2} s = {:.0} docs/s \
         ({:.1} MB/s of documents); indexed {indexed}; {requests} bulk requests, mean {:.0} ms; \
         document {:.0} B/doc, bulk body {:.0} B/doc, index on disk {:.0} B/doc; \
         agent CPU {cpu:.2} s = {:.1} µs/doc ({:.0} % of one core)",
        docs as f64 / elapsed,
        spool_bytes as f64 / elapsed / 1e6,
        bulk_secs / requests * 1000.0,
        spool_bytes as f64 / docs as f64,
        wire / indexed,
        store / indexed,
        cpu * 1e6 / docs as f64,
        cpu / elapsed * 100.0
    );
    assert_eq!(indexed as usize, docs);
}

/// Every `_id` in `target` (an index pattern or a data stream), sorted; read with the scroll
/// API, so any number of documents.
pub(crate) fn remote_ids(target: &str) -> Vec<String> {
    let _ = os("POST", &format!("/{target}/_refresh"), None);
    let body = json!({"size": 5_000, "_source": false, "sort": ["_doc"]}).to_string();
    let mut page = os_ok("POST", &format!("/{target}/_search?scroll=1m"), Some(&body));
    let mut ids = Vec::new();
    loop {
        let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
        if hits.is_empty() {
            break;
        }
        ids.extend(hits.iter().map(|h| h["_id"].as_str().unwrap().to_owned()));
        let scroll = json!({"scroll": "1m", "scroll_id": page["_scroll_id"]}).to_string();
        page = os_ok("POST", "/_search/scroll", Some(&scroll));
    }
    if let Some(id) = page["_scroll_id"].as_str() {
        let _ = os(
            "DELETE",
            "/_search/scroll",
            Some(&json!({"scroll_id": id}).to_string()),
        );
    }
    ids.sort();
    ids
}

/// `index_mode = "data_stream"` on the real node: the template declares a data stream, the
/// stream is created on the first write, documents land in its backing index, and a restart
/// that re-sends nothing leaves every document exactly once.
#[test]
fn opensearch_data_stream_receives_every_document_once() {
    let _node = node_lock();
    ensure_node();
    let prefix = prefix("stream");
    let dir = agent_dir("os-stream");
    install_example(&dir);
    let config = format!(
        "{FAST_EXAMPLE}\n{}index_mode = \"data_stream\"\n",
        sink_config(&prefix)
    );
    let agent = Agent::start_in(dir.clone(), &config);
    wait_for(
        Duration::from_secs(30),
        "documents in the data stream",
        || {
            let (status, value) = os("GET", &format!("/{prefix}/_count"), None).ok()?;
            (status == 200 && value["count"].as_u64().unwrap_or(0) >= 5).then_some(())
        },
    );
    let streams = os_ok("GET", &format!("/_data_stream/{prefix}"), None);
    let stream = &streams["data_streams"][0];
    assert_eq!(stream["name"], prefix.as_str(), "{streams}");
    assert_eq!(stream["timestamp_field"]["name"], "@timestamp", "{streams}");
    let backing = stream["indices"][0]["index_name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(backing.starts_with(&format!(".ds-{prefix}-")), "{backing}");
    let template = os_ok("GET", &format!("/_index_template/{prefix}"), None);
    assert!(
        template["index_templates"][0]["index_template"]["data_stream"].is_object(),
        "{template}"
    );
    let mapping = os_ok("GET", &format!("/{backing}/_mapping"), None);
    assert_eq!(
        mapping[&backing]["mappings"]["properties"]["tracer_name"]["type"], "keyword",
        "{mapping}"
    );

    // Stop generating, let everything arrive, restart the agent on the same data: the
    // local record and the stream hold the same documents, each once.
    stop_generator(&agent);
    wait_for(Duration::from_secs(20), "the spool to drain", || {
        (metric(&agent, "kpulse_opensearch_spooled") == 0.0).then_some(())
    });
    drop(agent);
    std::fs::remove_file(dir.join("plugins/example.wasm")).unwrap();
    let agent = Agent::start_in(dir.clone(), &config);
    // The spool's count is read from its committed position when the sink opens, before the
    // agent is ready: nothing waits to be sent again.
    assert_eq!(
        sample(&agent.metrics(), "kpulse_opensearch_spooled"),
        Some(0.0)
    );
    assert_eq!(remote_ids(&prefix), local_ids(&dir), "exactly once");
}

/// `kill -9` in the middle of a burst of saves, with the node up and bulk requests in
/// flight: after a restart every document the local store holds is in the cluster, and
/// nothing is there twice. (Documents reach the spool before `storage.save` returns, ahead
/// of the local file, so the cluster may also hold a few the local file never got.)
#[test]
fn opensearch_kill9_mid_burst_loses_nothing_and_duplicates_nothing() {
    let _node = node_lock();
    ensure_node();
    let prefix = prefix("burst");
    let dir = agent_dir("os-burst");
    kpulse_integration_tests::install(&dir.join("plugins"), &guest_wasm("docgen"));
    let config = format!(
        "[plugins.docgen]\nper_tick = 20\ntick_ms = 10\n\n{}",
        sink_config(&prefix)
    );
    let mut agent = Agent::start_in(dir.clone(), &config);
    agent.wait_state("docgen", "running", Duration::from_secs(20));
    wait_for(Duration::from_secs(20), "some documents indexed", || {
        (metric(&agent, "kpulse_opensearch_documents_indexed_total") >= 500.0).then_some(())
    });
    // No settling: the generator is still saving ~2000 documents/s.
    agent.child.kill().unwrap();
    let _ = agent.child.wait();
    drop(agent);
    let local = local_ids(&dir);
    assert!(local.len() >= 500, "{}", local.len());

    std::fs::remove_file(dir.join("plugins/docgen.wasm")).unwrap();
    let agent = Agent::start_in(dir.clone(), &config);
    wait_for(Duration::from_secs(60), "the spool to drain", || {
        (metric(&agent, "kpulse_opensearch_spooled") == 0.0).then_some(())
    });
    let remote = remote_ids(&format!("{prefix}-*"));
    let mut unique = remote.clone();
    unique.dedup();
    assert_eq!(
        unique.len(),
        remote.len(),
        "a document is in the cluster twice"
    );
    let missing: Vec<&String> = local
        .iter()
        .filter(|id| remote.binary_search(id).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} local documents never reached the cluster: {:?}",
        missing.len(),
        local.len(),
        &missing[..missing.len().min(5)]
    );
    // Anything beyond the local file was saved in the instant of the kill.
    assert!(
        remote.len() - local.len() <= 1_000,
        "{} remote vs {} local",
        remote.len(),
        local.len()
    );
}
