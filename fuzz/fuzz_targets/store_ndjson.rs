//! Reads of the local NDJSON store (`host/src/storage/query.rs`, `GET /events`): a tracer's
//! file holding any bytes (torn lines, garbage, invalid UTF-8, NULs) is skipped line by
//! line, never fails the query, never panics; what comes back are documents with a valid
//! `@timestamp`, newest first, at most `limit`.
#![no_main]

use std::sync::LazyLock;

use kpulse::config::StorageConfig;
use kpulse::hostinfo::HostInfo;
use kpulse::storage::EventQuery;
use kpulse::storage::Store;
use libfuzzer_sys::fuzz_target;

struct Fixture {
    store: Store,
    file: std::path::PathBuf,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("kpulse-fuzz-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let host = HostInfo {
        hostname: "fuzz".to_owned(),
        region: "fuzz".to_owned(),
        kernel_release: String::new(),
        cpu_count: 1,
        boot_time_secs: 0,
    };
    let store = Store::start(&StorageConfig::default(), &dir, host).expect("store starts");
    let events = dir.join("events");
    std::fs::create_dir_all(&events).expect("events directory");
    Fixture {
        store,
        file: events.join("fuzz.ndjson"),
    }
});

fuzz_target!(|data: &[u8]| {
    let fixture = &*FIXTURE;
    std::fs::write(&fixture.file, data).expect("temporary file");
    for limit in [1, 1000] {
        let query = EventQuery {
            tracer: Some("fuzz".to_owned()),
            container: (limit == 1).then(|| "a".to_owned()),
            since: None,
            until: None,
            limit,
        };
        let docs = fixture
            .store
            .query(&query)
            .expect("a query never fails on file contents");
        assert!(docs.len() <= limit);
        assert!(
            docs.iter()
                .all(|doc| doc.get("@timestamp").and_then(|t| t.as_str()).is_some()),
            "only documents with their timestamp come back"
        );
    }
});
