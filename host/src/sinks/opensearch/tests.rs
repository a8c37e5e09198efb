//! Unit tests of the sink's parts that need no cluster (the cluster is exercised by
//! `tests/integration/opensearch.rs`).

#![allow(clippy::unwrap_used, reason = "tests")]

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::bulk::{self, Item};
use super::config::{FullPolicy, IndexMode, OpenSearchConfig};
use super::retry::{Class, classify, retry_request};
use super::service::template_body;
use super::spool::{Entry, Position, Spool};
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
    let mut backoff = backoff(&OpenSearchConfig {
        backoff_initial_ms: 100,
        backoff_max_ms: 1000,
        ..OpenSearchConfig::default()
    });
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

/// A `committed` file with garbage in it (a torn write, a disk error, a hand edit) is not
/// fatal: it is kept aside as `committed.corrupt` and every spooled document is read again
/// (re-sending is idempotent on the cluster: `create` by `_id`).
#[test]
fn spool_with_a_corrupt_committed_position_starts_over_and_keeps_the_file() {
    let dir = scratch("spool-corrupt-committed");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("committed"), "\u{0}garbage 12x").unwrap();
    std::fs::write(
        dir.join(format!("{:020}.ndjson", 1)),
        "{\"a\":1}\n{\"b\":2}\n",
    )
    .unwrap();
    let spool = Spool::open(&dir, 1 << 20, 1 << 10, FullPolicy::DropNewest).unwrap();
    assert_eq!(spool.waiting(), 2);
    let mut cursor = spool.cursor();
    let entries = spool.read(&mut cursor, 1 << 20).unwrap();
    let lines: Vec<&str> = entries.iter().map(|e| e.line.as_str()).collect();
    assert_eq!(lines, [r#"{"a":1}"#, r#"{"b":2}"#]);
    assert_eq!(
        std::fs::read_to_string(dir.join("committed.corrupt")).unwrap(),
        "\u{0}garbage 12x"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Regression (fuzz/fuzz_targets/spool.rs): a `committed` file naming a position in a
/// segment that is gone (deleted by hand, lost with the disk) made the fresh segment that
/// very segment, and documents written before the committed offset were never read.
#[test]
fn spool_past_a_vanished_committed_segment_reads_new_documents() {
    let dir = scratch("spool-vanished");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("committed"), "2 218").unwrap();
    std::fs::write(dir.join(format!("{:020}.ndjson", 1)), "{\"old\":1}\n").unwrap();
    let spool = Spool::open(&dir, 1 << 20, 1 << 10, FullPolicy::DropNewest).unwrap();
    assert_eq!(spool.waiting(), 0);
    spool.push(r#"{"new":1}"#);
    spool.flush();
    let mut cursor = spool.cursor();
    let entries = spool.read(&mut cursor, 1 << 20).unwrap();
    let lines: Vec<&str> = entries.iter().map(|e| e.line.as_str()).collect();
    assert_eq!(lines, [r#"{"new":1}"#]);
    assert!(
        cursor
            > Position {
                segment: 2,
                offset: 218
            }
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Found by fuzzing: a `committed` position in segment u64::MAX made the spool write a
/// segment of that number, and the next open overflowed computing the one after it.
#[test]
fn spool_position_at_the_last_segment_number_is_corrupt_not_a_panic() {
    let dir = scratch("spool-last-segment");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("committed"), format!("{} 0", u64::MAX)).unwrap();
    std::fs::write(dir.join(format!("{}.ndjson", u64::MAX)), "{\"x\":1}\n").unwrap();
    for _ in 0..2 {
        let spool = Spool::open(&dir, 1 << 20, 1 << 10, FullPolicy::DropNewest).unwrap();
        spool.push(r#"{"new":1}"#);
        spool.flush();
        let mut cursor = spool.cursor();
        let entries = spool.read(&mut cursor, 1 << 20).unwrap();
        assert!(entries.iter().any(|e| e.line == r#"{"new":1}"#));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn spool_deleted_while_running_restores_the_segment_being_written() {
    let dir = scratch("spool-deleted");
    // Small segments: the first documents fill finished segments, the last stay in the one
    // being written.
    let spool = Spool::open(&dir, 1 << 20, 64, FullPolicy::DropNewest).unwrap();
    for n in 0..10 {
        spool.push(&format!(r#"{{"n":{n:03}}}"#));
    }
    spool.flush();
    let before = spool.waiting();
    assert_eq!(before, 10);
    std::fs::remove_dir_all(&dir).unwrap();
    // Written after the deletion, into the unlinked file, until the next flush notices.
    spool.push(r#"{"n":100}"#);
    spool.flush();
    assert_eq!(spool.restored.load(Ordering::Relaxed), 1);
    assert!(
        dir.join("committed").exists(),
        "the position is written again"
    );
    let mut cursor = spool.cursor();
    let entries = spool.read(&mut cursor, 1 << 20).unwrap();
    let lines: Vec<&str> = entries.iter().map(|e| e.line.as_str()).collect();
    assert_eq!(lines.last(), Some(&r#"{"n":100}"#), "{lines:?}");
    let lost = spool.dropped_deleted.load(Ordering::Relaxed);
    assert!(
        lost > 0,
        "the finished segments' documents are counted lost"
    );
    assert_eq!(
        lost + entries.len() as u64,
        11,
        "every document either restored or counted: {lines:?}"
    );
    assert_eq!(spool.waiting(), entries.len() as u64);
    // Writing goes on where it can be read.
    spool.push(r#"{"n":101}"#);
    spool.flush();
    let more = spool.read(&mut cursor, 1 << 20).unwrap();
    assert_eq!(more.len(), 1);
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

// Settling bulk responses: canned bodies as a cluster (or something in front of it) answers.

const DAY_INDEX: &str = "kpulse-events-2024.01.01";

/// `n` routed items with `_id`s `id0`, `id1`, ….
fn items(n: usize) -> Vec<Item> {
    let entries = (0..n)
        .map(|i| Entry {
            line: format!(r#"{{"tracer_id":"id{i}","@timestamp":"2024-01-01T00:00:00Z","n":{i}}}"#),
            end: Position {
                segment: 0,
                offset: 100 * (i as u64 + 1),
            },
        })
        .collect();
    let batch = Batch::new(0, entries, |day| {
        assert_eq!(day, chrono::NaiveDate::from_ymd_opt(2024, 1, 1));
        DAY_INDEX.to_owned()
    });
    assert!(batch.invalid.is_empty());
    batch.items
}

fn ids(items: &[Item]) -> Vec<&str> {
    items.iter().filter_map(|i| i.id.as_deref()).collect()
}

/// A sink that is never started: for [`OpenSearchSink::apply`].
fn idle_sink(label: &str) -> (OpenSearchSink, PathBuf) {
    let dir = scratch(label);
    let config = OpenSearchConfig::default();
    let sink = OpenSearchSink {
        service: Service::new(&config).unwrap(),
        spool: Spool::open(&dir.join("spool"), 1 << 20, 1 << 16, FullPolicy::DropNewest).unwrap(),
        stats: Stats::default(),
        dead_letter: DeadLetter::new(dir.join("dead-letter.ndjson")),
        config,
    };
    (sink, dir)
}

#[test]
fn batch_routes_creates_with_tracer_id() {
    let items = items(2);
    assert_eq!(ids(&items), ["id0", "id1"]);
    let body = String::from_utf8(bulk::request_body(&items)).unwrap();
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 4);
    let action: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(action["create"]["_index"], DAY_INDEX);
    assert_eq!(action["create"]["_id"], "id0");
    assert_eq!(lines[1], items[0].entry.line);
    assert!(body.ends_with('\n'));
    let batch = Batch::new(
        3,
        vec![
            Entry {
                line: "not json".to_owned(),
                end: Position::default(),
            },
            // Regression (fuzz/fuzz_targets/bulk_response.rs): JSON, but not a document.
            Entry {
                line: r#"["id9","2024-01-01T00:00:00Z"]"#.to_owned(),
                end: Position::default(),
            },
            Entry {
                line: "{}".to_owned(),
                end: Position {
                    segment: 1,
                    offset: 7,
                },
            },
        ],
        |_| "fixed".to_owned(),
    );
    assert_eq!(batch.invalid.len(), 2);
    assert_eq!(batch.items.len(), 1);
    assert_eq!(batch.items[0].id, None);
    assert_eq!(batch.items[0].action, r#"{"create":{"_index":"fixed"}}"#);
    assert_eq!((batch.seq, batch.docs, batch.bytes), (3, 3, 43));
    assert_eq!(batch.end.offset, 7);
}

#[test]
fn settle_errors_true_with_created_duplicate_and_rejected() {
    let body = br#"{"took":7,"errors":true,"items":[
        {"create":{"_index":"kpulse-events-2024.01.01","_id":"id0","status":201}},
        {"create":{"_index":"kpulse-events-2024.01.01","_id":"id1","status":409,
            "error":{"type":"version_conflict_engine_exception","reason":"[id1]: version conflict, document already exists"}}},
        {"create":{"_index":"kpulse-events-2024.01.01","_id":"id2","status":400,
            "error":{"type":"mapper_parsing_exception","reason":"failed to parse field [tracer_data.n]"}}}
    ]}"#;
    let settled = bulk::settle(items(3), body);
    assert_eq!((settled.indexed, settled.duplicates), (1, 1));
    assert!(settled.retry.is_empty());
    assert_eq!(settled.retry_cause, None);
    assert_eq!(settled.missing, 0);
    assert_eq!(settled.rejected.len(), 1);
    let rejected = &settled.rejected[0];
    assert_eq!(rejected.item.id.as_deref(), Some("id2"));
    assert_eq!(rejected.status, 400);
    assert_eq!(
        rejected.reason,
        "mapper_parsing_exception: failed to parse field [tracer_data.n]"
    );

    // Applied: counted, and only the 400 is in the dead-letter file, with its reason.
    let (sink, dir) = idle_sink("settle-mixed");
    let retry = sink.apply(bulk::settle(items(3), body));
    assert!(retry.is_empty());
    assert_eq!(sink.stats.indexed.load(Ordering::Relaxed), 1);
    assert_eq!(sink.stats.duplicates.load(Ordering::Relaxed), 1);
    assert_eq!(sink.stats.rejected.load(Ordering::Relaxed), 1);
    let dead = std::fs::read_to_string(dir.join("dead-letter.ndjson")).unwrap();
    let records: Vec<Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["status"], 400);
    assert_eq!(records[0]["index"], DAY_INDEX);
    assert_eq!(records[0]["document"]["tracer_id"], "id2");
    assert!(
        records[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("mapper_parsing_exception")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn settle_reads_the_filtered_response_and_index_actions() {
    // What `filter_path=errors,items.*.status,items.*.error.type,items.*.error.reason`
    // leaves: no `took`, no `_id`; and `index` instead of `create` from another writer.
    let body = br#"{"errors":false,"items":[{"create":{"status":201}},{"index":{"status":200}}]}"#;
    let settled = bulk::settle(items(2), body);
    assert_eq!(settled.indexed, 2);
    assert!(settled.retry.is_empty() && settled.rejected.is_empty());
}

#[test]
fn settle_retries_429_and_5xx_items_without_dead_lettering() {
    let body = br#"{"took":1,"errors":true,"items":[
        {"create":{"_id":"id0","status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution of coordinating operation"}}},
        {"create":{"_id":"id1","status":201}},
        {"create":{"_id":"id2","status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution of coordinating operation"}}},
        {"create":{"_id":"id3","status":503,"error":{"type":"unavailable_shards_exception","reason":"primary shard is not active"}}}
    ]}"#;
    let (sink, dir) = idle_sink("settle-429");
    let retry = sink.apply(bulk::settle(items(4), body));
    assert_eq!(ids(&retry), ["id0", "id2", "id3"]);
    assert_eq!(sink.stats.indexed.load(Ordering::Relaxed), 1);
    assert_eq!(sink.stats.rejected.load(Ordering::Relaxed), 0);
    assert!(!dir.join("dead-letter.ndjson").exists());

    let settled = bulk::settle(items(4), body);
    let cause = settled.retry_cause.unwrap();
    assert_eq!(cause.status, 429);
    assert_eq!(
        cause.reason,
        "es_rejected_execution_exception: rejected execution of coordinating operation"
    );
    assert_eq!(cause.index, DAY_INDEX);
    assert_eq!(settled.missing, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn settle_retries_401_and_403_items_and_names_the_cause() {
    let body = br#"{"errors":true,"items":[
        {"create":{"status":403,"error":{"type":"security_exception","reason":"no permissions for [indices:admin/create] and User [name=writer]"}}},
        {"create":{"status":401,"error":{"type":"security_exception","reason":"missing authentication credentials"}}}
    ]}"#;
    let settled = bulk::settle(items(2), body);
    assert_eq!(ids(&settled.retry), ["id0", "id1"]);
    assert!(settled.rejected.is_empty());
    // The warning names the first failure: its status and the missing permission.
    let cause = settled.retry_cause.unwrap();
    assert_eq!(cause.status, 403);
    assert!(
        cause.reason.contains("indices:admin/create"),
        "{}",
        cause.reason
    );
}

#[test]
fn settle_retries_items_the_response_does_not_describe() {
    // Fewer items than documents: the missing ones are sent again, never acknowledged
    // (whatever `errors` says) and never lost.
    for errors in ["true", "false"] {
        let body =
            format!(r#"{{"errors":{errors},"items":[{{"create":{{"_id":"id0","status":201}}}}]}}"#);
        let settled = bulk::settle(items(3), body.as_bytes());
        assert_eq!(settled.indexed, 1, "errors: {errors}");
        assert_eq!(ids(&settled.retry), ["id1", "id2"], "errors: {errors}");
        assert_eq!(settled.missing, 2);
        assert!(settled.rejected.is_empty());
        assert!(settled.retry_cause.is_some());
    }
    // No items at all, an item without an outcome, or one for another `_id`.
    for body in [
        r#"{"errors":false}"#.to_owned(),
        r#"{"errors":false,"items":[]}"#.to_owned(),
        r#"{"errors":true,"items":[{},{"create":{"_id":"id1","status":201}}]}"#.to_owned(),
        r#"{"errors":false,"items":[{"create":{"_id":"id9","status":201}},{"create":{"_id":"id1","status":201}}]}"#.to_owned(),
    ] {
        let settled = bulk::settle(items(2), body.as_bytes());
        let expected: &[&str] = if body.contains("id1") { &["id0"] } else { &["id0", "id1"] };
        assert_eq!(ids(&settled.retry), expected, "{body}");
        assert_eq!(settled.missing, expected.len(), "{body}");
        assert_eq!(settled.indexed as usize, 2 - expected.len(), "{body}");
    }
}

#[test]
fn settle_retries_everything_when_the_body_is_not_a_bulk_response() {
    for body in [
        &b"<html><body>502 Bad Gateway</body></html>"[..],
        b"",
        b"{\"errors\":false,\"items\":[{\"create\":{\"status\":",
        b"[1,2,3]",
    ] {
        let (sink, dir) = idle_sink("settle-garbage");
        let retry = sink.apply(bulk::settle(items(3), body));
        assert_eq!(ids(&retry), ["id0", "id1", "id2"]);
        assert_eq!(sink.stats.indexed.load(Ordering::Relaxed), 0);
        assert_eq!(sink.stats.rejected.load(Ordering::Relaxed), 0);
        assert!(!dir.join("dead-letter.ndjson").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
