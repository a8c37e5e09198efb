//! The local event store: every `storage.save` becomes one HUATUO-shaped document, appended
//! as one NDJSON line to `<data_dir>/events/<tracer>.ndjson`, rotated by size.
//!
//! Saving never blocks a guest: the document is serialized on the caller's thread and handed
//! to a bounded queue; one writer thread appends. A full queue drops the document and counts
//! it. Reading skips a torn last line (a crash mid-write), so a crash never makes the store
//! unreadable.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::config::StorageConfig;
use crate::hostinfo::HostInfo;
use crate::sinks::{Sink, SinkMetric};

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

/// One `storage.save` call.
#[derive(Debug)]
pub struct SaveRequest<'a> {
    pub tracer_name: &'a str,
    pub container_id: &'a str,
    pub time_ns: u64,
    pub data_json: &'a str,
    pub run_type: RunType,
}

/// The stored document, field for field HUATUO's (`pkg/tracing/types.go`) plus `@timestamp`.
#[derive(Debug, Serialize)]
struct Document<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    hostname: &'a str,
    region: &'a str,
    uploaded_time: String,
    time: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    container_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    container_hostname: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    container_host_namespace: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    container_type: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    container_qos: &'a str,
    tracer_name: &'a str,
    tracer_id: &'a str,
    tracer_time: String,
    tracer_type: &'a str,
    tracer_data: &'a serde_json::value::RawValue,
}

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

/// A line queued for the writer.
struct Line {
    tracer: String,
    text: String,
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

    /// Validates, enriches and queues one document; returns its `tracer_id`.
    pub fn save(&self, request: &SaveRequest<'_>) -> Result<String, SaveError> {
        let inner = &*self.inner;
        let result = self.build_line(request);
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

    fn build_line(&self, request: &SaveRequest<'_>) -> Result<(String, String), SaveError> {
        let inner = &*self.inner;
        if !is_tracer_name(request.tracer_name) {
            return Err(SaveError::Invalid(format!(
                "tracer name {:?} must match [a-zA-Z0-9_.-]{{1,64}} and not start with '.'",
                request.tracer_name
            )));
        }
        if request.container_id.len() > 128 {
            return Err(SaveError::Invalid(
                "container id longer than 128 bytes".to_owned(),
            ));
        }
        if request.data_json.len() > inner.max_document_bytes {
            return Err(SaveError::Invalid(format!(
                "tracer_data is {} bytes, above the {} byte limit",
                request.data_json.len(),
                inner.max_document_bytes
            )));
        }
        // Validated without building a tree, and embedded as the guest wrote it.
        let data: &serde_json::value::RawValue = serde_json::from_str(request.data_json)
            .map_err(|err| SaveError::Invalid(format!("tracer_data is not JSON: {err}")))?;
        if !data.get().starts_with('{') {
            return Err(SaveError::Invalid(
                "tracer_data must be a JSON object".to_owned(),
            ));
        }
        let now = Utc::now();
        let tracer_time = time_from_ns(request.time_ns).unwrap_or(now);
        let tracer_id = inner.ids.next(now);
        let huatuo_time = tracer_time
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S%.3f %z")
            .to_string();
        let document = Document {
            timestamp: tracer_time.to_rfc3339_opts(SecondsFormat::Millis, true),
            hostname: &inner.host.hostname,
            region: &inner.host.region,
            uploaded_time: now.to_rfc3339_opts(SecondsFormat::Millis, true),
            time: huatuo_time.clone(),
            container_id: request.container_id,
            // Filled by the containers subsystem once it resolves the id.
            container_hostname: "",
            container_host_namespace: "",
            container_type: "",
            container_qos: "",
            tracer_name: request.tracer_name,
            tracer_id: &tracer_id,
            tracer_time: huatuo_time,
            tracer_type: request.run_type.as_str(),
            tracer_data: data,
        };
        let text = serde_json::to_string(&document)
            .map_err(|err| SaveError::Invalid(format!("cannot encode document: {err}")))?;
        Ok((tracer_id, text))
    }

    /// Documents matching `query`, newest first.
    pub fn query(&self, query: &EventQuery) -> std::io::Result<Vec<Value>> {
        let tracers: Vec<String> = match &query.tracer {
            Some(tracer) if is_tracer_name(tracer) => vec![tracer.clone()],
            Some(_) => return Ok(Vec::new()),
            None => self.tracers()?,
        };
        let mut found: Vec<(DateTime<Utc>, Value)> = Vec::new();
        for tracer in tracers {
            for path in self.files_newest_first(&tracer) {
                let matched = scan_file(&path, query)?;
                let enough = matched.len() >= query.limit;
                found.extend(matched);
                // Files are in time order, so a file that filled the limit is the last one
                // this tracer needs.
                if enough {
                    break;
                }
            }
        }
        found.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
        found.truncate(query.limit);
        Ok(found.into_iter().map(|(_, doc)| doc).collect())
    }

    fn tracers(&self) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        let entries = match std::fs::read_dir(&self.inner.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(names),
            Err(err) => return Err(err),
        };
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(tracer) = name.strip_suffix(".ndjson") {
                names.push(tracer.to_owned());
            }
        }
        Ok(names)
    }

    fn files_newest_first(&self, tracer: &str) -> Vec<PathBuf> {
        let current = self.inner.dir.join(format!("{tracer}.ndjson"));
        let mut files = vec![current.clone()];
        for n in 1.. {
            let rotated = rotated_path(&current, n);
            if !rotated.exists() {
                break;
            }
            files.push(rotated);
        }
        files
    }
}

/// Filters of `GET /events`.
#[derive(Debug, Clone)]
pub struct EventQuery {
    pub tracer: Option<String>,
    pub container: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: usize,
}

/// Matches of one file, newest first, at most `query.limit`. Unparseable lines (a torn
/// write) are skipped.
fn scan_file(path: &Path, query: &EventQuery) -> std::io::Result<Vec<(DateTime<Utc>, Value)>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut matched = Vec::new();
    for line in BufReader::new(file).lines() {
        let Ok(line) = line else { continue };
        let Ok(doc) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let Some(at) = doc
            .get("@timestamp")
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
        else {
            continue;
        };
        if query.since.is_some_and(|since| at < since)
            || query.until.is_some_and(|until| at > until)
        {
            continue;
        }
        if let Some(container) = &query.container {
            let id = doc
                .get("container_id")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !id.starts_with(container.as_str()) || container.is_empty() {
                continue;
            }
        }
        matched.push((at, doc));
    }
    matched.reverse();
    matched.truncate(query.limit);
    Ok(matched)
}

fn is_tracer_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn time_from_ns(ns: u64) -> Option<DateTime<Utc>> {
    if ns == 0 {
        return None;
    }
    let secs = i64::try_from(ns / 1_000_000_000).ok()?;
    DateTime::from_timestamp(secs, u32::try_from(ns % 1_000_000_000).ok()?)
}

fn rotated_path(current: &Path, n: u32) -> PathBuf {
    let mut name = current.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Largest write of one tracer's lines; a file overshoots its rotation size by at most this.
const WRITE_CHUNK_BYTES: usize = 256 * 1024;

/// How often the writer makes the sink's queue durable against power loss.
const SINK_SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// The single writer: owns the open files and does the rotation.
struct Writer {
    /// Write the local NDJSON files.
    local: bool,
    /// Takes every line before the local write; flushed every [`SINK_SYNC_INTERVAL`].
    sink: Option<Arc<dyn Sink>>,
    dir: PathBuf,
    rotation_bytes: u64,
    max_rotated: u32,
    files: HashMap<String, (File, u64)>,
    stats: Arc<StoreStats>,
}

impl Writer {
    fn run(mut self, receiver: Receiver<Line>) {
        let mut pending: HashMap<String, String> = HashMap::new();
        let mut last_sync = Instant::now();
        // The sink took lines that are not fsynced yet.
        let mut unsynced = false;
        loop {
            // The sink's fsync is what costs (hundreds of µs each): once per interval, not
            // per batch, and on this thread, never a guest's. Power loss can lose at most
            // the last interval.
            let sync_due = || last_sync.elapsed() >= SINK_SYNC_INTERVAL;
            // Idle with nothing left to make durable: sleep until the next document instead
            // of waking every interval.
            let received = if unsynced {
                receiver.recv_timeout(SINK_SYNC_INTERVAL)
            } else {
                receiver.recv().map_err(|_| RecvTimeoutError::Disconnected)
            };
            let first = match received {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(sink) = &self.sink {
                        sink.flush();
                    }
                    unsynced = false;
                    last_sync = Instant::now();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // Drain what is already queued so that one write(2) covers many documents.
            let mut batch = vec![first];
            while batch.len() < 4096 {
                match receiver.try_recv() {
                    Ok(line) => batch.push(line),
                    Err(_) => break,
                }
            }
            self.stats
                .queued
                .fetch_sub(batch.len() as u64, Ordering::Relaxed);
            // The sink first: once a document is in a local file it is in the sink's spool.
            if let Some(sink) = &self.sink {
                for line in &batch {
                    sink.accept(&line.text);
                }
            }
            if self.local {
                for line in &batch {
                    let buf = pending.entry(line.tracer.clone()).or_default();
                    buf.push_str(&line.text);
                    buf.push('\n');
                    // Bounded chunks, so that a burst still rotates at the configured size.
                    if buf.len() >= WRITE_CHUNK_BYTES {
                        let text = std::mem::take(buf);
                        self.write_lines(&line.tracer, &text);
                    }
                }
            }
            for (tracer, text) in pending.drain() {
                if !text.is_empty() {
                    self.write_lines(&tracer, &text);
                }
            }
            if let Some(sink) = &self.sink {
                if sync_due() {
                    // Make what the sink took durable against power loss too.
                    sink.flush();
                    last_sync = Instant::now();
                    unsynced = false;
                } else {
                    unsynced = true;
                }
            }
        }
    }

    /// Appends complete lines to a tracer's file, counting them as written or failed.
    fn write_lines(&mut self, tracer: &str, text: &str) {
        let count = text.bytes().filter(|&b| b == b'\n').count() as u64;
        match self.append(tracer, text.as_bytes()) {
            Ok(()) => {
                if let Ok(mut written) = self.stats.written.lock() {
                    *written.entry(tracer.to_owned()).or_default() += count;
                }
            }
            Err(err) => {
                self.stats.write_errors.fetch_add(count, Ordering::Relaxed);
                tracing::error!(%tracer, %err, "cannot write events to the local store");
                self.files.remove(tracer);
            }
        }
    }

    fn append(&mut self, tracer: &str, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.dir.join(format!("{tracer}.ndjson"));
        if let Some((_, size)) = self.files.get(tracer)
            && *size > 0
            && *size + bytes.len() as u64 > self.rotation_bytes
        {
            self.files.remove(tracer);
            self.rotate(&path)?;
        }
        if !self.files.contains_key(tracer) {
            let file = open_for_append(&path)?;
            let size = file.metadata()?.len();
            self.files.insert(tracer.to_owned(), (file, size));
        }
        let Some((file, size)) = self.files.get_mut(tracer) else {
            return Err(std::io::Error::other("file vanished from the table"));
        };
        file.write_all(bytes)?;
        *size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&self, current: &Path) -> std::io::Result<()> {
        self.stats.rotations.fetch_add(1, Ordering::Relaxed);
        if self.max_rotated == 0 {
            return std::fs::remove_file(current);
        }
        let _ = std::fs::remove_file(rotated_path(current, self.max_rotated));
        for n in (1..self.max_rotated).rev() {
            let from = rotated_path(current, n);
            if from.exists() {
                std::fs::rename(&from, rotated_path(current, n + 1))?;
            }
        }
        std::fs::rename(current, rotated_path(current, 1))
    }
}

/// Opens a file for appending and makes sure it ends with a newline, so that a line torn
/// by a crash never swallows the next document.
fn open_for_append(path: &Path) -> std::io::Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let len = file.metadata()?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))?;
        std::io::Read::read_exact(&mut file, &mut last)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
        }
    }
    Ok(file)
}

/// Globally unique, time-ordered ids in the shape of HUATUO's xid: 20 base32hex characters
/// from 4 bytes of seconds, 3 of host hash, 2 of pid and a 3-byte counter.
struct IdGenerator {
    machine: [u8; 3],
    pid: u16,
    counter: AtomicU32,
}

impl IdGenerator {
    fn new(hostname: &str) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(hostname.as_bytes());
        let seed = u32::from_le_bytes([digest[3], digest[4], digest[5], digest[6]])
            ^ std::process::id()
            ^ Utc::now().timestamp_subsec_nanos();
        Self {
            machine: [digest[0], digest[1], digest[2]],
            pid: (std::process::id() & 0xffff) as u16,
            counter: AtomicU32::new(seed),
        }
    }

    fn next(&self, now: DateTime<Utc>) -> String {
        let secs = u32::try_from(now.timestamp()).unwrap_or(u32::MAX);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut raw = [0u8; 12];
        raw[..4].copy_from_slice(&secs.to_be_bytes());
        raw[4..7].copy_from_slice(&self.machine);
        raw[7..9].copy_from_slice(&self.pid.to_be_bytes());
        raw[9..].copy_from_slice(&n.to_be_bytes()[1..]);
        base32hex(&raw)
    }
}

fn base32hex(raw: &[u8; 12]) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
    let mut bits: u128 = 0;
    for byte in raw {
        bits = (bits << 8) | u128::from(*byte);
    }
    // 96 bits → 20 characters of 5 bits (the last padded with 4 zero bits).
    bits <<= 4;
    (0..20)
        .rev()
        .map(|i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
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
            container_id: "",
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
    fn ids_are_unique_and_xid_shaped() {
        let ids = IdGenerator::new("h");
        let a = ids.next(Utc::now());
        let b = ids.next(Utc::now());
        assert_ne!(a, b);
        assert_eq!(a.len(), 20);
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
