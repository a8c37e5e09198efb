//! The local event store: every `storage.save` becomes one HUATUO-shaped document, appended
//! as one NDJSON line to `<data_dir>/events/<tracer>.ndjson`, rotated by size.
//!
//! Saving never blocks a guest: the document is serialized on the caller's thread and handed
//! to a bounded queue; one writer thread appends. A full queue drops the document and counts
//! it. Reading skips a torn last line (a crash mid-write), so a crash never makes the store
//! unreadable.
//!
//! - `document`: validation and enrichment into HUATUO's document shape;
//! - `writer`: the writer thread (sink hand-off, local append, rotation);
//! - `query`: reading documents back for `GET /events`;
//! - `ids`: the `tracer_id` generator.

mod document;
mod ids;
mod query;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
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
    pub rejected_invalid: AtomicU64,
    pub write_errors: AtomicU64,
    pub rotations: AtomicU64,
    /// Documents written, per tracer.
    pub written: Mutex<HashMap<String, u64>>,
    /// Documents waiting in the queue.
    pub queued: AtomicU64,
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
    sender: Option<SyncSender<Line>>,
    stats: Arc<StoreStats>,
    ids: IdGenerator,
    sink: Option<Arc<dyn Sink>>,
    live: tokio::sync::broadcast::Sender<Arc<LiveDocument>>,
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
            if config.local {
                std::fs::create_dir_all(&dir)?;
            }
            let (sender, receiver) = std::sync::mpsc::sync_channel(config.queue_capacity);
            let writer = Writer {
                local: config.local,
                sink: sink.clone(),
                dir: dir.clone(),
                rotation_bytes: config.rotation_size_mib * 1024 * 1024,
                max_rotated: config.max_rotated_files,
                files: HashMap::new(),
                stats: stats.clone(),
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
                stats,
                ids,
                sink,
                live: tokio::sync::broadcast::channel(LIVE_CAPACITY).0,
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
            Err(err) => {
                inner.stats.rejected_invalid.fetch_add(1, Ordering::Relaxed);
                return Err(err);
            }
        };
        // Nothing here blocks: the writer thread hands the document to the sink (whose
        // spool append and fsync happen there) before it writes the local file, so a
        // document in the local files is always in the sink's spool too.
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
        match sender.try_send(line) {
            Ok(()) => {
                inner.stats.queued.fetch_add(1, Ordering::Relaxed);
                Ok(tracer_id)
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                inner
                    .stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                Err(SaveError::QueueFull)
            }
        }
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
        let _ = std::fs::remove_dir_all(&dir);
    }
}
