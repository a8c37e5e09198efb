//! The OpenSearch spool (`host/src/sinks/opensearch/spool.rs`) reopened over files left by
//! a crash or damaged on disk: any `committed` file and segments give an open spool or a
//! `SpoolError`, never a panic; reading terminates with the cursor moving forward; a
//! document pushed afterwards is read back intact; committing everything read leaves
//! nothing waiting after a restart.
//!
//! Input: `committed` contents, then segment 1, 2, ... separated by 0xFF bytes (a byte no
//! UTF-8 text has); a first part of exactly `-` means no `committed` file.
#![no_main]

use std::sync::LazyLock;

use kpulse::sinks::opensearch::config::FullPolicy;
use kpulse::sinks::opensearch::spool::Spool;
use libfuzzer_sys::fuzz_target;

static DIR: LazyLock<std::path::PathBuf> = LazyLock::new(|| {
    std::env::temp_dir().join(format!("kpulse-fuzz-spool-{}", std::process::id()))
});

const MARKER: &str = r#"{"tracer_id":"fuzz-marker"}"#;

fuzz_target!(|data: &[u8]| {
    let dir = &*DIR;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("temporary directory");
    let mut parts = data.split(|&b| b == 0xff);
    if let Some(committed) = parts.next()
        && committed != b"-"
    {
        std::fs::write(dir.join("committed"), committed).expect("committed file");
    }
    for (n, segment) in parts.take(8).enumerate() {
        std::fs::write(dir.join(format!("{:020}.ndjson", n + 1)), segment).expect("segment");
    }
    let Ok(spool) = Spool::open(dir, 1 << 30, 1 << 20, FullPolicy::DropNewest) else {
        return;
    };
    spool.push(MARKER);
    spool.flush();
    let mut cursor = spool.cursor();
    let mut last = None;
    for round in 0.. {
        assert!(round < 100_000, "the spool reader does not terminate");
        let before = cursor;
        let Ok(entries) = spool.read(&mut cursor, 4096) else {
            return;
        };
        if entries.is_empty() {
            break;
        }
        assert!(cursor > before, "the cursor moves forward");
        let mut previous = before;
        for entry in &entries {
            assert!(entry.end > previous, "entries are in spool order");
            previous = entry.end;
        }
        last = entries.last().cloned();
    }
    let last = last.expect("the pushed document is read back");
    assert_eq!(
        last.line, MARKER,
        "the last document read is the one pushed"
    );
    spool.commit(cursor, u64::MAX, u64::MAX).expect("commit");
    drop(spool);
    let reopened = Spool::open(dir, 1 << 30, 1 << 20, FullPolicy::DropNewest).expect("reopen");
    assert_eq!(reopened.waiting(), 0, "everything read was committed");
});
