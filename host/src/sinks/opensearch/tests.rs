//! Unit tests of the sink's parts that need no cluster (the cluster is exercised by
//! `tests/integration/opensearch.rs`).

#![allow(clippy::unwrap_used, reason = "tests")]

use std::path::PathBuf;

use super::config::{FullPolicy, IndexMode, OpenSearchConfig};
use super::retry::{Backoff, Class, classify, retry_request};
use super::service::template_body;
use super::spool::{Position, Spool};
use super::*;

fn scratch(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kpulse-os-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn classification() {
    assert_eq!(classify(201), Class::Indexed);
    assert_eq!(classify(409), Class::Duplicate);
    assert_eq!(classify(429), Class::Retry);
    assert_eq!(classify(503), Class::Retry);
    assert_eq!(
        classify(403),
        Class::Retry,
        "a permission problem is fixed by the operator"
    );
    assert_eq!(classify(400), Class::Reject);
    assert!(retry_request(401));
    assert!(retry_request(429));
    assert!(!retry_request(413));
}

#[test]
fn backoff_grows_with_jitter_and_caps() {
    let mut backoff = Backoff::new(100, 1000);
    let first = backoff.next_delay().as_millis();
    assert!((50..=100).contains(&first), "{first}");
    let second = backoff.next_delay().as_millis();
    assert!((100..=200).contains(&second), "{second}");
    for _ in 0..40 {
        assert!(backoff.next_delay().as_millis() <= 1000);
    }
}

#[test]
fn config_validation_names_keys() {
    let ok = OpenSearchConfig::default();
    assert!(ok.validate().is_ok());
    let bad = OpenSearchConfig {
        addresses: vec!["localhost:9200".to_owned()],
        ..OpenSearchConfig::default()
    };
    assert_eq!(bad.validate().unwrap_err().0, "addresses");
    let bad = OpenSearchConfig {
        index: "Kpulse".to_owned(),
        ..OpenSearchConfig::default()
    };
    assert_eq!(bad.validate().unwrap_err().0, "index");
    let bad = OpenSearchConfig {
        username: Some("u".to_owned()),
        ..OpenSearchConfig::default()
    };
    assert_eq!(bad.validate().unwrap_err().0, "username");
}

#[test]
fn template_has_dates_keywords_and_limit() {
    let config = OpenSearchConfig::default();
    let body = template_body(&config);
    assert_eq!(body["index_patterns"][0], "kpulse-events-*");
    let props = &body["template"]["mappings"]["properties"];
    assert_eq!(props["@timestamp"]["type"], "date");
    assert_eq!(props["tracer_time"]["type"], "date");
    assert_eq!(props["tracer_id"]["type"], "keyword");
    assert_eq!(
        body["template"]["settings"]["index.mapping.total_fields.limit"],
        1000
    );
    assert!(body.get("data_stream").is_none());
    let stream = template_body(&OpenSearchConfig {
        index_mode: IndexMode::DataStream,
        ..OpenSearchConfig::default()
    });
    assert!(stream.get("data_stream").is_some());
}

#[test]
fn spool_survives_reopen_and_skips_torn_lines() {
    let dir = scratch("spool");
    let spool = Spool::open(&dir, 1 << 20, 1 << 10, FullPolicy::DropNewest).unwrap();
    for n in 0..10 {
        spool.push(&format!(r#"{{"n":{n}}}"#));
    }
    spool.flush();
    assert_eq!(spool.waiting(), 10);
    let mut cursor = spool.cursor();
    let first = spool.read(&mut cursor, 20).unwrap();
    assert_eq!(first.len(), 3, "about 20 bytes");
    spool
        .commit(
            first[2].end,
            3,
            first.iter().map(|e| e.line.len() as u64 + 1).sum(),
        )
        .unwrap();
    drop(spool);
    // A torn write at the end of the segment (a crash mid-append).
    let segment = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "ndjson") && std::fs::metadata(p).unwrap().len() > 0
        })
        .unwrap();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    std::io::Write::write_all(&mut file, b"{\"n\":").unwrap();

    let spool = Spool::open(&dir, 1 << 20, 1 << 10, FullPolicy::DropNewest).unwrap();
    assert_eq!(spool.waiting(), 7);
    spool.push(r#"{"n":10}"#);
    spool.flush();
    let mut cursor = spool.cursor();
    let rest = spool.read(&mut cursor, 1 << 20).unwrap();
    let ns: Vec<String> = rest.iter().map(|e| e.line.clone()).collect();
    assert_eq!(ns.len(), 8, "{ns:?}");
    assert_eq!(ns[0], r#"{"n":3}"#);
    assert_eq!(ns[7], r#"{"n":10}"#);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn spool_full_policies() {
    let dir = scratch("full-newest");
    let spool = Spool::open(&dir, 100, 50, FullPolicy::DropNewest).unwrap();
    for _ in 0..20 {
        spool.push(&"x".repeat(9));
        spool.flush();
    }
    assert_eq!(spool.waiting(), 10);
    assert_eq!(spool.dropped_full.load(Ordering::Relaxed), 10);
    let _ = std::fs::remove_dir_all(&dir);

    let dir = scratch("full-oldest");
    let spool = Spool::open(&dir, 100, 50, FullPolicy::DropOldest).unwrap();
    for n in 0..20 {
        spool.push(&format!("{n:09}"));
        spool.flush();
    }
    assert!(spool.waiting() <= 10);
    assert_eq!(
        spool.dropped_evicted.load(Ordering::Relaxed) + spool.waiting(),
        20
    );
    let mut cursor = Position::default();
    let rest = spool.read(&mut cursor, 1 << 20).unwrap();
    assert_eq!(rest.last().unwrap().line, "000000019", "the newest is kept");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn search_body_filters() {
    let query = EventQuery {
        tracer: Some("oom".to_owned()),
        container: Some("abc".to_owned()),
        since: chrono::DateTime::from_timestamp(1_700_000_000, 0),
        until: None,
        limit: 5,
    };
    let body = search_body(&query);
    assert_eq!(body["size"], 5);
    let filter = body["query"]["bool"]["filter"].as_array().unwrap();
    assert_eq!(filter.len(), 3);
    assert_eq!(filter[0]["term"]["tracer_name"], "oom");
}
