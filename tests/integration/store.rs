//! The local event store through `/events`: round trip, filters, and a torn line after a
//! crash.

use std::io::Write;
use std::time::Duration;

use kpulse_integration_tests::{Agent, plugin_wasm, wait_for};
use serde_json::Value;

const FAST_EXAMPLE: &str = r#"
[plugins.example]
interval_ms = 50
running_per_cpu_threshold = 0.0
cooldown_secs = 0
"#;

fn events(agent: &Agent, query: &str) -> Vec<Value> {
    let response = agent.get(&format!("/events{query}"));
    assert_eq!(response.status, 200, "{}", response.body);
    response.json().as_array().cloned().unwrap()
}

#[test]
fn events_round_trip_and_filters() {
    let agent = Agent::start("store", &[plugin_wasm("example")], FAST_EXAMPLE);
    let docs = wait_for(Duration::from_secs(15), "five example documents", || {
        let docs = events(&agent, "?tracer=example&limit=5");
        (docs.len() == 5).then_some(docs)
    });
    let doc = &docs[0];
    for field in [
        "@timestamp",
        "hostname",
        "region",
        "uploaded_time",
        "time",
        "tracer_name",
        "tracer_id",
        "tracer_time",
        "tracer_type",
        "tracer_data",
    ] {
        assert!(doc.get(field).is_some(), "{field} missing in {doc}");
    }
    assert_eq!(doc["tracer_name"], "example");
    assert_eq!(doc["tracer_type"], "autotracing");
    assert_eq!(doc["region"], "test");
    assert_eq!(doc["tracer_data"]["running_per_cpu_threshold"], 0.0);
    // Newest first, unique ids.
    let stamps: Vec<&str> = docs
        .iter()
        .map(|d| d["@timestamp"].as_str().unwrap())
        .collect();
    let mut sorted = stamps.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(stamps, sorted);
    let mut ids: Vec<&str> = docs
        .iter()
        .map(|d| d["tracer_id"].as_str().unwrap())
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), 5);

    // Time filters.
    let newest = stamps[0];
    let older = events(
        &agent,
        &format!("?tracer=example&until={}&limit=1000", stamps[4]),
    );
    assert!(
        older
            .iter()
            .all(|d| d["@timestamp"].as_str().unwrap() <= stamps[4])
    );
    assert!(!older.is_empty());
    assert!(
        events(&agent, "?since=4102444800").is_empty(),
        "nothing after 2100"
    );
    assert!(!events(&agent, &format!("?since={newest}")).is_empty());
    // Container and tracer filters.
    assert!(events(&agent, "?container=0123abcd").is_empty());
    assert!(events(&agent, "?tracer=oom").is_empty());
    // Bad requests are errors that say what is wrong.
    let bad = agent.get("/events?limit=abc");
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("limit"), "{}", bad.body);
    assert_eq!(agent.get("/events?since=yesterday").status, 400);
}

#[test]
fn torn_line_after_crash_is_skipped() {
    let agent = Agent::start("torn", &[plugin_wasm("example")], FAST_EXAMPLE);
    wait_for(Duration::from_secs(15), "documents", || {
        (events(&agent, "?tracer=example").len() >= 3).then_some(())
    });
    let dir = agent.stop();
    let file = dir.join("data/events/example.ndjson");
    let before = std::fs::read_to_string(&file).unwrap().lines().count();
    // A crash in the middle of a write leaves half a document.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    f.write_all(br#"{"@timestamp":"2026-01-01T00:00:00.000Z","tracer_na"#)
        .unwrap();
    drop(f);

    let agent = Agent::start_in(dir, FAST_EXAMPLE);
    let docs = wait_for(
        Duration::from_secs(15),
        "new documents after restart",
        || {
            let docs = events(&agent, "?tracer=example&limit=10000");
            (docs.len() >= before + 3).then_some(docs)
        },
    );
    assert!(docs.iter().all(|d| d["tracer_name"] == "example"));
    assert_eq!(
        docs.len(),
        std::fs::read_to_string(&file).unwrap().lines().count() - 1
    );
}
