//! The local event store: every `storage.save` becomes one HUATUO-shaped document, appended
//! as one NDJSON line to `<data_dir>/events/<tracer>.ndjson`, rotated by size.
//!
//! Saving never blocks a guest: the document is serialized on the caller's thread and handed
//! to a bounded queue; one writer thread appends. Every document that does not reach the
//! local files is counted once in `storage_documents_dropped{cause}` ([`DropCause`]): refused
//! (`invalid`, `too_large`), a full queue (`queue_full`), or a failed write (`write_error`:
//! a full, read-only or vanished data directory). After a quiet queue, the documents
//! `storage.save` accepted are exactly the documents written plus those dropped for
//! `write_error`.
//!
//! A failed write is cut back to its last complete line, so a dropped document is never left
//! half-written in a file; writing resumes by itself once the disk has room again. The sink
//! gets each document before the local write and keeps its own account: a document is in
//! the sink's spool or counted in `opensearch_documents_dropped`, whatever happened locally
//! (with a disk that is full for both, a document may be in either, both or neither, and
//! each loss is counted by the side that lost it).
//!
//! Reading skips lines that are not documents (a line torn by a crash, garbage) and counts
//! each once in `storage_corrupt_lines`, so a damaged file never makes the store unreadable.
//!
//! - `document`: validation and enrichment into HUATUO's document shape;
//! - `writer`: the writer thread (sink hand-off, local append, rotation);
//! - `query`: reading documents back for `GET /events`;
//! - `ids`: the `tracer_id` generator.

mod document;
mod ids;
mod query;
mod writer;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use crate::config::StorageConfig;
use crate::hostinfo::HostInfo;
use crate::sinks::{Sink, SinkMetric};
use ids::IdGenerator;
pub use query::EventQuery;
use writer::{Line, Writer};

/// Why a document was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SaveError {
    #[error("invalid document: {0}")]
    Invalid(String),
    #[error("storage queue is full; document dropped")]
    QueueFull,
}

/// Why a document did not reach the local store: the `cause` label of
/// `storage_documents_dropped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// Refused: bad tracer name or container id, not a JSON object.
    Invalid,
    /// Refused: `tracer_data` above `storage.max_document_kib`.
    TooLarge,
    /// The writer's queue was full.
    QueueFull,
    /// The writer thread is gone (it panicked); nothing is written any more.
    WriterStopped,
    /// The append to the local file failed (disk full, read-only, I/O error).
    WriteError,
}

impl DropCause {
    pub const ALL: [DropCause; 5] = [
        DropCause::Invalid,
        DropCause::TooLarge,
        DropCause::QueueFull,
        DropCause::WriterStopped,
        DropCause::WriteError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropCause::Invalid => "invalid",
            DropCause::TooLarge => "too_large",
            DropCause::QueueFull => "queue_full",
            DropCause::WriterStopped => "writer_stopped",
            DropCause::WriteError => "write_error",
        }
    }
}

/// HUATUO's `tracer_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunType {
    Event,
    Autotracing,
}

impl RunType {
    pub fn as_str(self) -> &'static str {
        match self {
            RunType::Event => "event",
            RunType::Autotracing => "autotracing",
        }
    }
}

/// The workload fields of a document: HUATUO's `container_*` and kpulse's `container_name`,
/// `container_image`, `pod_name`, `cgroup_path`. The caller fills them from the container
/// registry; all empty for a host event.
#[derive(Debug, Default, Clone, Copy)]
pub struct ContainerFields<'a> {
    pub id: &'a str,
    pub hostname: &'a str,
    pub host_namespace: &'a str,
    pub container_type: &'a str,
    pub qos: &'a str,
    pub name: &'a str,
    pub image: &'a str,
    pub pod_name: &'a str,
    pub cgroup_path: &'a str,
}

/// One `storage.save` call.
#[derive(Debug)]
pub struct SaveRequest<'a> {
    pub tracer_name: &'a str,
    pub container: ContainerFields<'a>,
    pub time_ns: u64,
    pub data_json: &'a str,
    pub run_type: RunType,
}

/// A saved document as live watchers (`GET /events/watch`) get it.
#[derive(Debug)]
pub struct LiveDocument {
    pub tracer: String,
    pub container_id: String,
    /// The document's JSON, as stored.
    pub text: String,
}

/// Documents a watcher may fall behind by before it loses the oldest (counted).
const LIVE_CAPACITY: usize = 1024;

/// Counters exposed on `/metrics`.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub dropped_queue_full: AtomicU64,
    pub dropped_writer_stopped: AtomicU64,
    /// Refused as malformed (not counting `rejected_too_large`).
    pub rejected_invalid: AtomicU64,
    pub rejected_too_large: AtomicU64,
    /// Documents lost to local write errors (the same documents as `dropped{write_error}`,
    /// kept under its old name).
    pub write_errors: AtomicU64,
    /// Lines of the local files that are not documents, each counted once.
    pub corrupt_lines: AtomicU64,
    pub rotations: AtomicU64,
    /// Documents written, per tracer.
    pub written: Mutex<HashMap<String, u64>>,
    /// Documents waiting in the queue.
    pub queued: AtomicU64,
}

impl StoreStats {
    /// The counter of documents dropped for `cause`.
    pub fn dropped(&self, cause: DropCause) -> &AtomicU64 {
        match cause {
            DropCause::Invalid => &self.rejected_invalid,
            DropCause::TooLarge => &self.rejected_too_large,
            DropCause::QueueFull => &self.dropped_queue_full,
            DropCause::WriterStopped => &self.dropped_writer_stopped,
            DropCause::WriteError => &self.write_errors,
        }
    }
}

/// Cheap, cloneable handle for saving and querying documents.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

struct StoreInner {
    dir: PathBuf,
    host: HostInfo,
    max_document_bytes: usize,
    sender: Option<Sender<Line>>,
    /// Lines the writer may have queued at once ([`StoreStats::queued`] counts them).
    queue_capacity: u64,
    stats: Arc<StoreStats>,
    ids: IdGenerator,
    sink: Option<Arc<dyn Sink>>,
    live: tokio::sync::broadcast::Sender<Arc<LiveDocument>>,
    /// Corrupt lines already counted (see [`query`]).
    corrupt_seen: Mutex<HashSet<query::LineId>>,
}

impl Store {
    /// Starts the writer thread. With `config.local == false` documents are validated and
    /// counted but not written.
    pub fn start(config: &StorageConfig, data_dir: &Path, host: HostInfo) -> std::io::Result<Self> {
        Self::start_with_sink(config, data_dir, host, None)
    }

    /// Like [`Store::start`], and hands every document to `sink` as it is saved (also when
    /// the local store is off).
    pub fn start_with_sink(
        config: &StorageConfig,
        data_dir: &Path,
        host: HostInfo,
        sink: Option<Arc<dyn Sink>>,
    ) -> std::io::Result<Self> {
        let dir = data_dir.join("events");
        let stats = Arc::new(StoreStats::default());
        let sender = if config.local || sink.is_some() {
            // Not fatal (a read-only or full data directory): the writer creates it on the
            // first append that can, and counts every document it cannot write.
            if config.local
                && let Err(err) = std::fs::create_dir_all(&dir)
            {
                tracing::error!(dir = %dir.display(), %err, "cannot create the local store's directory; documents are dropped (and counted) until it can be");
            }
            // Unbounded, with the bound kept by `queued`: a bounded std channel allocates
            // (and touches) every slot up front, 3.5 MiB resident for the default capacity.
            let (sender, receiver) = std::sync::mpsc::channel();
            let writer = Writer {
                local: config.local,
                sink: sink.clone(),
                dir: dir.clone(),
                rotation_bytes: config.rotation_size_mib * 1024 * 1024,
                max_rotated: config.max_rotated_files,
                files: HashMap::new(),
                stats: stats.clone(),
                failing: writer::Failing::default(),
            };
            std::thread::Builder::new()
                .name("kpulse-store".to_owned())
                .spawn(move || writer.run(receiver))?;
            Some(sender)
        } else {
            None
        };
        let ids = IdGenerator::new(&host.hostname);
        Ok(Self {
            inner: Arc::new(StoreInner {
                dir,
                host,
                max_document_bytes: config.max_document_kib * 1024,
                sender,
                queue_capacity: u64::try_from(config.queue_capacity).unwrap_or(u64::MAX),
                stats,
                ids,
                sink,
                live: tokio::sync::broadcast::channel(LIVE_CAPACITY).0,
                corrupt_seen: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// The sink's self-metrics (empty without a sink).
    pub fn sink_metrics(&self) -> Vec<SinkMetric> {
        self.inner
            .sink
            .as_ref()
            .map(|sink| sink.metrics())
            .unwrap_or_default()
    }

    pub fn stats(&self) -> &StoreStats {
        &self.inner.stats
    }

    /// Every document saved from now on. A watcher that falls more than 1024 documents
    /// behind loses the oldest (its receiver reports how many); nothing waits for it.
    pub fn watch(&self) -> tokio::sync::broadcast::Receiver<Arc<LiveDocument>> {
        self.inner.live.subscribe()
    }

    /// Validates, enriches and queues one document; returns its `tracer_id`.
    pub fn save(&self, request: &SaveRequest<'_>) -> Result<String, SaveError> {
        let inner = &*self.inner;
        let result = document::build(request, &inner.host, inner.max_document_bytes, &inner.ids);
        let (tracer_id, text) = match result {
            Ok(built) => built,
            Err((cause, err)) => {
                inner.stats.dropped(cause).fetch_add(1, Ordering::Relaxed);
                return Err(err);
            }
        };
        // Nothing here blocks: the writer thread hands the document to the sink (whose
        // spool append and fsync happen there) before it writes the local file.
        // Copied for watchers only while there are any.
        if inner.live.receiver_count() > 0 {
            let _ = inner.live.send(Arc::new(LiveDocument {
                tracer: request.tracer_name.to_owned(),
                container_id: request.container.id.to_owned(),
                text: text.clone(),
            }));
        }
        let Some(sender) = &inner.sender else {
            return Ok(tracer_id);
        };
        let line = Line {
            tracer: request.tracer_name.to_owned(),
            text,
        };
        // Counted before it is sent, so concurrent savers cannot overshoot the capacity.
        let cause = if inner.stats.queued.fetch_add(1, Ordering::AcqRel) >= inner.queue_capacity {
            DropCause::QueueFull
        } else if sender.send(line).is_err() {
            DropCause::WriterStopped
        } else {
            return Ok(tracer_id);
        };
        inner.stats.queued.fetch_sub(1, Ordering::AcqRel);
        inner.stats.dropped(cause).fetch_add(1, Ordering::Relaxed);
        Err(SaveError::QueueFull)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;

    use super::*;

    fn host() -> HostInfo {
        HostInfo {
            hostname: "h1".to_owned(),
            region: "r1".to_owned(),
            kernel_release: String::new(),
            cpu_count: 1,
            boot_time_secs: 0,
        }
    }

    fn request<'a>(tracer: &'a str, data: &'a str, time_ns: u64) -> SaveRequest<'a> {
        SaveRequest {
            tracer_name: tracer,
            container: ContainerFields::default(),
            time_ns,
            data_json: data,
            run_type: RunType::Event,
        }
    }

    fn wait_written(store: &Store, tracer: &str, n: u64) {
        for _ in 0..200 {
            let written = store.stats().written.lock().map(|w| w.get(tracer).copied());
            if written.ok().flatten() == Some(n) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{n} documents for {tracer} were not written");
    }

    /// A sink that holds the writer in `accept` until released.
    struct HeldSink {
        entered: std::sync::mpsc::SyncSender<()>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
        accepted: AtomicU64,
    }

    impl Sink for HeldSink {
        fn accept(&self, _line: &str) {
            let _ = self.entered.send(());
            if let Ok(release) = self.release.lock() {
                let _ = release.recv();
            }
            self.accepted.fetch_add(1, Ordering::Relaxed);
        }
        fn flush(&self) {}
        fn metrics(&self) -> Vec<SinkMetric> {
            Vec::new()
        }
    }

    #[test]
    fn a_full_queue_refuses_documents_beyond_its_capacity() {
        let (entered_tx, entered) = std::sync::mpsc::sync_channel(16);
        let (release, release_rx) = std::sync::mpsc::channel();
        let sink = Arc::new(HeldSink {
            entered: entered_tx,
            release: Mutex::new(release_rx),
            accepted: AtomicU64::new(0),
        });
        let config = StorageConfig {
            local: false,
            queue_capacity: 3,
            ..StorageConfig::default()
        };
        let dir = std::env::temp_dir().join(format!("kpulse-queue-{}", std::process::id()));
        let store =
            Store::start_with_sink(&config, &dir, host(), Some(sink.clone() as Arc<dyn Sink>))
                .expect("store starts");
        // The writer takes the first document and is held in the sink with it.
        store.save(&request("t", "{}", 1)).expect("queued");
        entered
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the writer reaches the sink");
        for time in 2..=4 {
            store
                .save(&request("t", "{}", time))
                .expect("room in the queue");
        }
        assert!(matches!(
            store.save(&request("t", "{}", 5)),
            Err(SaveError::QueueFull)
        ));
        assert_eq!(store.stats().dropped_queue_full.load(Ordering::Relaxed), 1);
        assert_eq!(store.stats().queued.load(Ordering::Relaxed), 3);
        // Released, the writer drains the queue: room again.
        for _ in 0..4 {
            release.send(()).expect("sink alive");
        }
        for _ in 0..200 {
            if sink.accepted.load(Ordering::Relaxed) == 4 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(sink.accepted.load(Ordering::Relaxed), 4);
        release.send(()).expect("sink alive");
        store.save(&request("t", "{}", 6)).expect("room again");
    }

    fn all(limit: usize) -> EventQuery {
        EventQuery {
            tracer: None,
            container: None,
            since: None,
            until: None,
            limit,
        }
    }

    #[test]
    fn round_trip_rotation_and_torn_line() {
        let dir = std::env::temp_dir().join(format!("kpulse-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = StorageConfig {
            rotation_size_mib: 1,
            max_rotated_files: 2,
            ..StorageConfig::default()
        };
        let store = Store::start(&config, &dir, host()).expect("store starts");
        let payload = format!(r#"{{"blob":"{}"}}"#, "x".repeat(100_000));
        for i in 0..30u64 {
            store
                .save(&request(
                    "big",
                    &payload,
                    (1_700_000_000 + i) * 1_000_000_000,
                ))
                .expect("saved");
        }
        wait_written(&store, "big", 30);
        // 30 × ~100 KB with 1 MiB files and 2 rotations keeps at most 3 files.
        assert!(dir.join("events/big.ndjson.1").exists());
        assert!(!dir.join("events/big.ndjson.3").exists());

        store
            .save(&request("small", r#"{"n":1}"#, 1_700_000_000_000_000_000))
            .expect("saved");
        wait_written(&store, "small", 1);
        // Simulate a crash mid-write: a torn line at the end.
        let path = dir.join("events/small.ndjson");
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(br#"{"@timestamp":"2023-"#)
            .expect("torn write");
        let docs = store
            .query(&EventQuery {
                tracer: Some("small".to_owned()),
                ..all(10)
            })
            .expect("query");
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0]["tracer_data"]["n"], 1);
        assert_eq!(docs[0]["hostname"], "h1");
        assert_eq!(docs[0]["tracer_type"], "event");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn invalid_documents_are_rejected_and_counted() {
        let dir = std::env::temp_dir().join(format!("kpulse-store-bad-{}", std::process::id()));
        let store = Store::start(&StorageConfig::default(), &dir, host()).expect("store");
        assert!(matches!(
            store.save(&request("x", "[1]", 0)),
            Err(SaveError::Invalid(_))
        ));
        assert!(matches!(
            store.save(&request("x", "{", 0)),
            Err(SaveError::Invalid(_))
        ));
        assert!(matches!(
            store.save(&request("../x", "{}", 0)),
            Err(SaveError::Invalid(_))
        ));
        assert_eq!(store.stats().rejected_invalid.load(Ordering::Relaxed), 3);
        let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(2 * 1024 * 1024));
        assert!(matches!(
            store.save(&request("x", &big, 0)),
            Err(SaveError::Invalid(_))
        ));
        let stats = store.stats();
        assert_eq!(
            stats.dropped(DropCause::TooLarge).load(Ordering::Relaxed),
            1
        );
        assert_eq!(stats.dropped(DropCause::Invalid).load(Ordering::Relaxed), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_deleted_directory_is_made_again() {
        let dir = std::env::temp_dir().join(format!("kpulse-store-gone-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::start(&StorageConfig::default(), &dir, host()).expect("store");
        store.save(&request("g", r#"{"n":1}"#, 0)).expect("saved");
        wait_written(&store, "g", 1);
        std::fs::remove_dir_all(&dir).expect("deleted");
        store.save(&request("g", r#"{"n":2}"#, 0)).expect("saved");
        wait_written(&store, "g", 2);
        let docs = store.query(&all(10)).expect("query");
        assert_eq!(
            docs.len(),
            1,
            "the document after the deletion is in the new file"
        );
        assert_eq!(docs[0]["tracer_data"]["n"], 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Regression (fuzz/fuzz_targets/wit_boundary.rs): whitespace newlines in a guest's JSON
    /// were stored as written, splitting the document over two NDJSON lines (and the bulk
    /// body); the document is one line now, with its data unchanged.
    #[test]
    fn a_document_with_newlines_in_its_json_stays_one_line() {
        let dir = std::env::temp_dir().join(format!("kpulse-store-nl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::start(&StorageConfig::default(), &dir, host()).expect("store");
        let data = "{\n\"a\":\r\n1,\"b\":\"x\\ny\"\n}";
        store.save(&request("nl", data, 0)).expect("saved");
        wait_written(&store, "nl", 1);
        let text = std::fs::read_to_string(dir.join("events/nl.ndjson")).expect("file");
        assert_eq!(text.lines().count(), 1, "{text:?}");
        let doc: serde_json::Value = serde_json::from_str(text.trim_end()).expect("json");
        assert_eq!(doc["tracer_data"], serde_json::json!({"a": 1, "b": "x\ny"}));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_lines_are_skipped_and_counted_once() {
        let dir = std::env::temp_dir().join(format!("kpulse-store-corrupt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::start(&StorageConfig::default(), &dir, host()).expect("store");
        for n in 0..3 {
            let data = format!(r#"{{"n":{n}}}"#);
            store
                .save(&request("c", &data, 1_700_000_000_000_000_000 + n))
                .expect("saved");
        }
        wait_written(&store, "c", 3);
        let path = dir.join("events/c.ndjson");
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        // Garbage, a JSON line that is no document, invalid UTF-8, NULs (a power loss on
        // some file systems), a line far longer than any document, a torn last line.
        file.write_all(b"garbage\n{\"n\":1}\n\xff\xfe\n\0\0\0\n")
            .expect("garbage");
        file.write_all(&vec![b'x'; 2 * 1024 * 1024]).expect("long");
        file.write_all(b"\n{\"@timestamp\":\"2023-").expect("torn");
        drop(file);
        let corrupt = || store.stats().corrupt_lines.load(Ordering::Relaxed);
        for _ in 0..2 {
            let docs = store.query(&all(100)).expect("query");
            assert_eq!(docs.len(), 3);
            // Counted once, however often read; the unterminated last line may still be
            // being written, so it is not counted yet.
            assert_eq!(corrupt(), 5);
        }
        store
            .save(&request("c", r#"{"n":3}"#, 1_700_000_001_000_000_000))
            .expect("saved");
        wait_written(&store, "c", 4);
        let docs = store.query(&all(100)).expect("query");
        assert_eq!(
            docs.len(),
            4,
            "the torn line did not swallow the new document"
        );
        assert_eq!(docs[0]["tracer_data"]["n"], 3);
        assert_eq!(
            corrupt(),
            6,
            "the torn line, ended by the writer, is counted"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
