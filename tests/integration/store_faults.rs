//! The local store under faults: a data directory on a full file system (a 2 MiB tmpfs the
//! test mounts; needs root and `mount`/`umount` from util-linux) and NDJSON files with
//! garbage and torn lines.
//!
//! Accounting the tests hold the agent to, once the generator is stopped and the writer's
//! queue is empty: every document `storage.save` accepted
//! (`kpulse_plugin_documents_saved_total`) is either a line of the local file
//! (`kpulse_storage_documents_written_total`) or counted in
//! `kpulse_storage_documents_dropped_total{cause="write_error"}`, exactly; and, for the
//! OpenSearch sink on the same full disk, either in the spool (`kpulse_opensearch_spooled`)
//! or counted in `kpulse_opensearch_documents_dropped_total{reason="spool_io"}`, exactly.
//! Neither keeps half a document.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kpulse_integration_tests::{Agent, guest_wasm, sample_with, scratch_dir, wait_for};
use serde_json::Value;

/// A tmpfs of `size` mounted on `dir`, unmounted on drop.
pub(crate) struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    pub(crate) fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount (util-linux) runs");
        assert!(status.success(), "mount -t tmpfs on {}", dir.display());
        Tmpfs {
            dir: dir.to_owned(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.dir).status();
        if !unmounted.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Writes zeros to `path` until the file system refuses more; returns the bytes written.
pub(crate) fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(err) => {
                assert_eq!(err.raw_os_error(), Some(28), "filling: {err}");
                break;
            }
        }
    }
    total
}

/// The counters the accounting is about, from one scrape.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counts {
    saved: f64,
    written: f64,
    dropped_write: f64,
    dropped_queue: f64,
    spooled: f64,
    spool_io: f64,
    queued: f64,
}

fn counts(agent: &Agent) -> Counts {
    let text = agent.metrics();
    let get = |name: &str, label: &str| sample_with(&text, name, label).unwrap_or(0.0);
    Counts {
        saved: get("kpulse_plugin_documents_saved_total", "plugin=\"docgen\""),
        written: get(
            "kpulse_storage_documents_written_total",
            "tracer=\"docgen\"",
        ),
        dropped_write: get(
            "kpulse_storage_documents_dropped_total",
            "cause=\"write_error\"",
        ),
        dropped_queue: get(
            "kpulse_storage_documents_dropped_total",
            "cause=\"queue_full\"",
        ),
        spooled: unlabelled(&text, "kpulse_opensearch_spooled").unwrap_or(0.0),
        spool_io: get(
            "kpulse_opensearch_documents_dropped_total",
            "reason=\"spool_io\"",
        ),
        queued: unlabelled(&text, "kpulse_storage_queue_length").unwrap_or(-1.0),
    }
}

/// The first sample of family `name` exactly (not of a family it is a prefix of).
fn unlabelled(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .find_map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
}

/// Stops the generator and waits until the writer handled everything it saved, then checks
/// the accounting is exact locally and, `with_spool`, in the sink's spool.
fn stop_and_settle(agent: &Agent, with_spool: bool) -> Counts {
    let response = agent.put("/plugins/docgen/stop");
    assert!((200..300).contains(&response.status), "{}", response.body);
    agent.wait_state("docgen", "stopped", Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = counts(agent);
        let local = c.written + c.dropped_write;
        let spool = c.spooled + c.spool_io;
        if c.queued == 0.0 && c.saved == local && (!with_spool || c.saved == spool) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "accounting never settled: {c:?} (local {local}, spool {spool})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every line of the NDJSON files in `dir` with this suffix: a complete JSON document
/// (nothing half-written); returns the documents.
fn documents_in(dir: &Path, suffix: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes.is_empty() || bytes.ends_with(b"\n"),
            "{} ends with a torn line",
            path.display()
        );
        for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let doc: Value = serde_json::from_slice(line).unwrap_or_else(|err| {
                panic!(
                    "{} line {}: not a document ({err}): {:?}",
                    path.display(),
                    n + 1,
                    String::from_utf8_lossy(&line[..line.len().min(200)])
                )
            });
            assert!(doc["tracer_id"].is_string(), "{doc}");
            docs.push(doc);
        }
    }
    docs
}

/// Log lines of the per-document write errors of the local store and the spool.
fn error_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("ERROR"))
        .filter(|l| l.contains("local store") || l.contains("OpenSearch spool"))
        .collect()
}

fn events(agent: &Agent, query: &str) -> Vec<Value> {
    let response = agent.get(&format!("/events{query}"));
    assert_eq!(response.status, 200, "{}", response.body);
    response.json().as_array().cloned().unwrap()
}

/// A guest saving 500 documents/s into a data directory on a full 2 MiB tmpfs, with the
/// OpenSearch sink (its cluster unreachable) spooling on the same disk: the agent stays up,
/// every lost document is counted as dropped, the log has one line per error kind per 10 s
/// with the count suppressed, no file keeps half a document, and writing resumes once space
/// is freed (until the disk is full again).
#[test]
fn full_data_dir_counts_every_drop_rate_limits_the_log_and_resumes() {
    let dir = scratch_dir("store-full");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    kpulse_integration_tests::install(&plugins, &guest_wasm("docgen"));
    let tmpfs = Tmpfs::mount(&dir.join("data"), "2m");
    let config = "[runtime]\ncompile_cache = false\n\n\
        [plugins.docgen]\nper_tick = 5\ntick_ms = 10\n\n\
        [storage.opensearch]\naddresses = [\"http://127.0.0.1:9\"]\nindex = \"store-faults\"\n\
        flush_interval_ms = 200\nbackoff_initial_ms = 1000\nbackoff_max_ms = 5000\n";
    let mut agent = Agent::start_in(dir.clone(), config);
    agent.wait_state("docgen", "running", Duration::from_secs(30));
    wait_for(Duration::from_secs(20), "documents written", || {
        (counts(&agent).written >= 200.0).then_some(())
    });

    // Fill what is left, then let the guest run into the full disk.
    let filler = tmpfs.dir.join("filler");
    let filled = fill(&filler);
    let full_at = Instant::now();
    let before = counts(&agent);
    wait_for(Duration::from_secs(20), "drops for write_error", || {
        let c = counts(&agent);
        (c.dropped_write - before.dropped_write >= 1000.0 && c.spool_io > 0.0).then_some(())
    });
    // Long enough for the rate limit to let a second line through with its count.
    wait_for(
        Duration::from_secs(40),
        "an error line with the suppressed count",
        || {
            let log = agent.log();
            error_lines(&log)
                .iter()
                .any(|l| l.contains("more suppressed"))
                .then_some(())
        },
    );
    let full_for = full_at.elapsed();
    assert!(agent.child.try_wait().unwrap().is_none(), "agent died");
    let settled = stop_and_settle(&agent, true);
    let log = agent.log();
    let lines = error_lines(&log);
    let dropped = settled.dropped_write - before.dropped_write;
    eprintln!(
        "disk full for {:.1} s (filler {filled} bytes): {} error lines, {dropped} documents \
         dropped for write_error, {} for spool_io, {} queue_full; saved {} = written {} + \
         dropped {}",
        full_for.as_secs_f64(),
        lines.len(),
        settled.spool_io,
        settled.dropped_queue,
        settled.saved,
        settled.written,
        settled.dropped_write
    );
    eprintln!("{}", lines.join("\n"));
    // One line per error kind (ENOSPC) per 10 s, on each side, plus the first of each.
    let allowed = 2 * (2 + full_for.as_secs() as usize / 10);
    assert!(
        lines.len() <= allowed,
        "{} error lines in {full_for:?} (at most {allowed}):\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(dropped >= 1000.0, "{settled:?}");
    assert_eq!(settled.dropped_queue, 0.0, "the queue never overflowed");

    // Nothing half-written, and the files hold exactly what is counted as written.
    let local = documents_in(&tmpfs.dir.join("events"), ".ndjson");
    assert_eq!(local.len() as f64, settled.written);
    let spooled = documents_in(&tmpfs.dir.join("opensearch/spool"), ".ndjson");
    assert_eq!(spooled.len() as f64, settled.spooled);
    let segments = std::fs::read_dir(tmpfs.dir.join("opensearch/spool"))
        .unwrap()
        .count();
    assert!(
        segments <= 4,
        "{segments} spool files: a segment per failed append?"
    );

    // Space again: writing resumes, new documents are stored and readable.
    std::fs::remove_file(&filler).unwrap();
    let freed_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let response = agent.put("/plugins/docgen/start");
    assert!((200..300).contains(&response.status), "{}", response.body);
    wait_for(
        Duration::from_secs(20),
        "writes after space was freed",
        || (counts(&agent).written >= settled.written + 200.0).then_some(()),
    );
    let fresh = events(
        &agent,
        &format!("?tracer=docgen&since={}&limit=10000", freed_at.as_secs()),
    );
    assert!(fresh.len() >= 200, "{} new documents", fresh.len());
    let log = agent.log();
    let resumed = log
        .lines()
        .find(|l| l.contains("the local store writes again"))
        .unwrap_or_else(|| panic!("no recovery line in:\n{log}"));
    assert!(resumed.contains("dropped="), "{resumed}");
    eprintln!("recovery: {resumed}");

    // The guest fills the disk again, this time with the store and the spool racing for
    // the last bytes (short writes on both sides): still nothing half-written, every
    // document accounted for.
    wait_for(Duration::from_secs(60), "the disk full again", || {
        (counts(&agent).dropped_write > settled.dropped_write).then_some(())
    });
    let end = stop_and_settle(&agent, true);
    let local = documents_in(&tmpfs.dir.join("events"), ".ndjson");
    assert_eq!(local.len() as f64, end.written);
    let spooled = documents_in(&tmpfs.dir.join("opensearch/spool"), ".ndjson");
    assert_eq!(spooled.len() as f64, end.spooled);
    eprintln!("after the second fill: {end:?}");
    assert_eq!(
        unlabelled(&agent.metrics(), "kpulse_storage_corrupt_lines_total"),
        Some(0.0)
    );
    assert!(agent.child.try_wait().unwrap().is_none(), "agent died");
    drop(agent);
}

/// Garbage lines, invalid UTF-8, NULs, an over-long line and a torn last line in the
/// store's NDJSON file: `/events` still answers with every good document, each bad line is
/// counted once in `kpulse_storage_corrupt_lines_total`, and the torn line does not swallow
/// the next document.
#[test]
fn corrupt_ndjson_lines_are_skipped_and_counted() {
    let dir = scratch_dir("store-corrupt");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    kpulse_integration_tests::install(&plugins, &guest_wasm("docgen"));
    let config =
        "[runtime]\ncompile_cache = false\n\n[plugins.docgen]\nper_tick = 1\ntick_ms = 20\n";
    let agent = Agent::start_in(dir.clone(), config);
    agent.wait_state("docgen", "running", Duration::from_secs(30));
    wait_for(Duration::from_secs(20), "documents written", || {
        (counts(&agent).written >= 50.0).then_some(())
    });
    let dir = agent.stop();
    let file = dir.join("data/events/docgen.ndjson");
    let good: Vec<String> = documents_in(&dir.join("data/events"), ".ndjson")
        .iter()
        .map(|d| d["tracer_id"].as_str().unwrap().to_owned())
        .collect();

    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    f.write_all(b"not json at all\n").unwrap();
    f.write_all(b"{\"no_timestamp\":1}\n").unwrap();
    f.write_all(b"\xff\xfe\xfd\n").unwrap();
    f.write_all(b"\0\0\0\0\0\0\0\0\n").unwrap();
    // Longer than any document can be (1 MiB of tracer_data plus the envelope).
    f.write_all(&vec![b'{'; 3 * 1024 * 1024]).unwrap();
    f.write_all(b"\n").unwrap();
    // A crash in the middle of a write.
    f.write_all(br#"{"@timestamp":"2026-01-01T00:00:00.000Z","tracer_na"#)
        .unwrap();
    drop(f);
    const BAD_LINES: f64 = 6.0;

    let agent = Agent::start_in(dir, config);
    // The writer ends the torn line before its first append, so new documents follow it.
    let docs = wait_for(
        Duration::from_secs(30),
        "new documents after restart",
        || {
            let docs = events(&agent, "?tracer=docgen&limit=10000");
            (docs.len() >= good.len() + 20).then_some(docs)
        },
    );
    for id in &good {
        assert!(
            docs.iter().any(|d| d["tracer_id"] == id.as_str()),
            "document {id} from before the damage is missing"
        );
    }
    assert!(!events(&agent, "?limit=10").is_empty(), "unfiltered query");
    let corrupt =
        |agent: &Agent| unlabelled(&agent.metrics(), "kpulse_storage_corrupt_lines_total");
    assert_eq!(corrupt(&agent), Some(BAD_LINES));

    // Settled: the store returns every document written, and bad lines are counted once
    // however often they are read.
    let c = stop_and_settle(&agent, false);
    let docs = events(&agent, "?tracer=docgen&limit=10000");
    assert_eq!(docs.len() as f64, good.len() as f64 + c.written);
    assert_eq!(corrupt(&agent), Some(BAD_LINES));
    let log = agent.log();
    assert!(
        !log.contains("panicked"),
        "the agent panicked reading a damaged file:\n{log}"
    );
}
