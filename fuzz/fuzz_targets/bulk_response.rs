//! The OpenSearch `_bulk` response parser (`host/src/sinks/opensearch/bulk.rs`) and the
//! routing of spooled lines: whatever a cluster (or a proxy, or a truncated read) answers,
//! every document sent is settled exactly once (indexed, duplicate, retried or rejected;
//! none lost, none counted twice), and the request body is NDJSON: a JSON action and a
//! spooled JSON object per document.
//!
//! Input: spooled document lines, a 0xFF byte, the response body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (docs, response) = match data.iter().position(|&b| b == 0xff) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b""[..]),
    };
    let docs = String::from_utf8_lossy(docs);
    let lines: Vec<&str> = docs.lines().take(64).collect();
    let settled = kpulse::sinks::opensearch::fuzz_settle(&lines, response);
    assert_eq!(settled.items + settled.not_json, lines.len());
    let accounted =
        settled.indexed as usize + settled.duplicates as usize + settled.retried + settled.rejected;
    assert_eq!(
        accounted, settled.items,
        "every document is settled once: {settled:?}"
    );
    assert!(settled.missing <= settled.retried);
    let body = std::str::from_utf8(&settled.body).expect("the bulk body is UTF-8");
    // Split on `\n` only: a spooled line may end with `\r`, which `lines` would strip.
    let body: Vec<&str> = match body.strip_suffix('\n') {
        Some(body) => body.split('\n').collect(),
        None => Vec::new(),
    };
    assert_eq!(
        body.len(),
        2 * settled.items,
        "an action and a document each"
    );
    for pair in body.chunks(2) {
        let action: serde_json::Value = serde_json::from_str(pair[0]).expect("action is JSON");
        assert!(action["create"]["_index"].is_string(), "{action}");
        // The document as spooled (numbers out of f64 range are still JSON), an object.
        assert!(
            pair[1].trim_start().starts_with('{'),
            "not a document: {:?}",
            pair[1]
        );
        assert!(lines.contains(&pair[1]));
    }
});
