//! For operators: the status page in a real Chromium (playwright-core from npm driving
//! Debian's `chromium`), the live event stream, and HUATUO's tracer API.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use kpulse_integration_tests::{Agent, guest_wasm, http, plugin_wasm, root, sample};
use serde_json::Value;

/// `example` saving an autotracing document every 300 ms.
const EXAMPLE_FAST: &str =
    "[plugins.example]\nrunning_per_cpu_threshold = 0.0\ncooldown_secs = 0\ninterval_ms = 300\n";

#[test]
fn the_status_page_shows_plugins_events_and_a_live_tail_in_chromium() {
    let agent = Agent::start(
        "status-page",
        &[plugin_wasm("example"), plugin_wasm("loadavg")],
        EXAMPLE_FAST,
    );
    agent.wait_state("example", "running", Duration::from_secs(20));
    let shots = root().join("target/test-artifacts/status-page");
    let output = Command::new("node")
        .arg(root().join("tests/browser/status_page.mjs"))
        .arg(format!("http://{}/", agent.addr))
        .arg(&shots)
        .output()
        .expect("node (tests/browser: npm install)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    println!("{seen}");
    let plugins = seen["plugins"].as_array().cloned().unwrap_or_default();
    for name in ["example", "loadavg"] {
        let row = plugins
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} not on the page: {seen}"));
        assert_eq!(row["state"], "running");
        assert_eq!(row["buttons"], 1, "a loopback client may start/stop");
    }
    assert!(seen["events"].as_u64().unwrap_or(0) > 0, "{seen}");
    assert!(seen["tailMs"].as_u64().unwrap_or(u64::MAX) < 2000, "{seen}");
    assert!(
        seen["tail"].as_str().unwrap_or("").contains("example"),
        "{seen}"
    );
    assert_eq!(seen["consoleErrors"], serde_json::json!([]));
    for shot in [
        "status-overview.png",
        "status-live-tail.png",
        "status-containers.png",
    ] {
        assert!(shots.join(shot).exists(), "{shot}");
    }
}

#[test]
fn the_page_offers_no_buttons_to_a_client_that_may_not_use_them() {
    // Listening on every address; asked over a non-loopback one, without a token.
    let agent = Agent::start_on(
        "0.0.0.0:0".parse().unwrap(),
        "status-remote",
        &[plugin_wasm("loadavg")],
        "",
    );
    let output = Command::new("hostname")
        .arg("-I")
        .output()
        .expect("hostname -I");
    let ip = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .find_map(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .ok()
                .filter(|ip| !ip.is_loopback())
        })
        .expect("a non-loopback IPv4 address on this machine");
    let remote = SocketAddr::new(ip.into(), agent.addr.port());
    let page = http(remote, "GET", "/", &[]).unwrap();
    assert_eq!(page.status, 200);
    assert!(page.body.contains("window.KPULSE = { canControl: false };"));
    let local = agent.get("/");
    assert!(local.body.contains("window.KPULSE = { canControl: true };"));
    let put = http(remote, "PUT", "/tracers/loadavg/stop", &[]).unwrap();
    assert_eq!(put.status, 403);
}

/// An SSE client: the `data` of each `event: document` on its stream.
struct Watcher {
    reader: BufReader<TcpStream>,
}

impl Watcher {
    fn connect(addr: SocketAddr, query: &str) -> Watcher {
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(
            stream,
            // HTTP/1.0: no chunked framing to split the event lines.
            "GET /events/watch{query} HTTP/1.0\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.contains("200"), "{line}");
        Watcher { reader }
    }

    /// Documents (tracer names) seen within `time`.
    fn tracers_for(&mut self, time: Duration) -> Vec<String> {
        let deadline = Instant::now() + time;
        let mut seen = Vec::new();
        let mut line = String::new();
        let mut event = String::new();
        while Instant::now() < deadline {
            line.clear();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            if let Some(name) = line.trim_end().strip_prefix("event:") {
                event = name.trim().to_owned();
            } else if event == "document"
                && let Some(data) = line.trim_end().strip_prefix("data:")
                && let Ok(doc) = serde_json::from_str::<Value>(data.trim())
            {
                seen.push(doc["tracer_name"].as_str().unwrap_or("").to_owned());
            }
        }
        seen
    }
}

#[test]
fn watchers_get_exactly_their_documents_and_a_stalled_one_harms_nobody() {
    let config = format!("{EXAMPLE_FAST}[plugins.docgen]\nper_tick = 200\ntick_ms = 20\n");
    let agent = Agent::start(
        "events-watch",
        &[plugin_wasm("example"), guest_wasm("docgen")],
        &config,
    );
    agent.wait_state("example", "running", Duration::from_secs(20));
    agent.wait_state("docgen", "running", Duration::from_secs(20));
    // A client that never reads: its socket fills, it falls behind, it loses documents.
    let mut stalled = TcpStream::connect(agent.addr).unwrap();
    write!(stalled, "GET /events/watch HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut examples = Watcher::connect(agent.addr, "?tracer=example");
    let mut docgen = Watcher::connect(agent.addr, "?tracer=docgen");
    let a = examples.tracers_for(Duration::from_secs(3));
    let b = docgen.tracers_for(Duration::from_secs(3));
    assert!(a.len() >= 3, "{} example documents", a.len());
    assert!(a.iter().all(|t| t == "example"), "{a:?}");
    assert!(b.len() >= 100, "{} docgen documents", b.len());
    assert!(b.iter().all(|t| t == "docgen"), "only docgen documents");
    // The stalled client lost documents, counted; the others and the agent carry on.
    let lost = kpulse_integration_tests::wait_for(
        Duration::from_secs(30),
        "documents dropped for the stalled watcher",
        || {
            let _ = docgen.tracers_for(Duration::from_millis(200));
            sample(&agent.metrics(), "kpulse_events_watch_dropped_total").filter(|n| *n > 0.0)
        },
    );
    println!("stalled watcher lost {lost} documents");
    assert!(!examples.tracers_for(Duration::from_secs(2)).is_empty());
    assert_eq!(agent.get("/healthz").status, 204);
    let bad = agent.get("/events/watch?color=red");
    assert_eq!(bad.status, 400);
    drop(stalled);
}

#[test]
fn huatuos_tracer_api_answers_with_its_codes_and_envelope() {
    let agent = Agent::start(
        "tracers",
        &[plugin_wasm("loadavg"), plugin_wasm("example")],
        "",
    );
    agent.wait_state("example", "running", Duration::from_secs(20));
    let tracers = agent.get("/tracers").json();
    let example = &tracers["data"]["example"];
    assert_eq!(example["name"], "example");
    assert_eq!(example["running"], true);
    assert_eq!(example["flag"], 3, "tracing | metric");
    assert_eq!(tracers["data"]["loadavg"]["flag"], 2);
    assert_eq!(agent.put("/tracers/example/start").status, 409);
    assert_eq!(agent.put("/tracers/example/stop").status, 204);
    agent.wait_state("example", "stopped", Duration::from_secs(10));
    assert_eq!(agent.put("/tracers/example/stop").status, 409);
    assert_eq!(agent.put("/tracers/example/start").status, 204);
    let missing = agent.put("/tracers/nope/start");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "not_found");
    // Request metrics by route template, not raw path.
    let metrics = agent.metrics();
    let conflicts = kpulse_integration_tests::sample_with(
        &metrics,
        "kpulse_http_server_requests_total",
        "route=\"/tracers/{name}/{action}\",method=\"PUT\",status=\"409\"",
    );
    assert_eq!(conflicts, Some(2.0), "{metrics}");
    assert!(
        metrics.contains("kpulse_http_server_request_duration_seconds_bucket{"),
        "{metrics}"
    );
    assert!(!metrics.contains("route=\"/tracers/nope"), "{metrics}");
}

/// `POST /v1/events/watch` with `body`; the connected stream.
fn cloud_watch(addr: SocketAddr, body: &str) -> (u16, BufReader<TcpStream>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST /v1/events/watch HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, reader)
}

#[test]
fn huatuos_cloudevents_stream_filters_by_regex_and_caps_clients() {
    let config = format!("{EXAMPLE_FAST}[plugins.docgen]\nper_tick = 1\ntick_ms = 100\n");
    let agent = Agent::start(
        "cloudevents",
        &[plugin_wasm("example"), guest_wasm("docgen")],
        &config,
    );
    agent.wait_state("example", "running", Duration::from_secs(20));
    let (status, mut reader) = cloud_watch(agent.addr, r#"{"filters": {"tracer_name": "^exa"}}"#);
    assert_eq!(status, 200);
    let mut events = Vec::new();
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while events.len() < 3 && Instant::now() < deadline {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if let Some(data) = line.trim_end().strip_prefix("data:") {
            events.push(serde_json::from_str::<Value>(data.trim()).expect("a CloudEvent"));
        }
    }
    assert_eq!(events.len(), 3, "{events:?}");
    for event in &events {
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["type"], "tech.huatuo.kernel.event");
        assert_eq!(
            event["data"]["tracer_name"], "example",
            "only what the regex admits"
        );
        assert_eq!(event["data"]["tracer_run_type"], "autotracing");
        assert!(event["data"].get("tracer_data").is_none());
        assert!(event["source"].as_str().unwrap_or("").ends_with("/example"));
    }
    let (bad, _) = cloud_watch(agent.addr, r#"{"filters": {"hostname": "("}}"#);
    assert_eq!(bad, 400);
    // 100 clients at most: the first one above is one of them.
    let mut held = Vec::new();
    for _ in 0..99 {
        let (status, reader) = cloud_watch(agent.addr, "");
        assert_eq!(status, 200);
        held.push(reader);
    }
    let (over, _) = cloud_watch(agent.addr, "");
    assert_eq!(over, 429);
    drop(held);
    drop(reader);
    // Slots come back once the clients are gone (the server notices on its next write).
    kpulse_integration_tests::wait_for(Duration::from_secs(10), "a free slot", || {
        (cloud_watch(agent.addr, "").0 == 200).then_some(())
    });
}
