//! The OpenSearch / Elasticsearch sink: every saved document is bulk-indexed with
//! `create` and `_id = tracer_id`, through an on-disk spool so that nothing is lost while
//! the cluster is unreachable or the agent restarts.
//!
//! Flow: `Store::save` → [`OpenSearchSink::accept`] (append to the spool: survives
//! `kill -9`) → [`OpenSearchSink::flush`] from the store's writer (fsync) → the bulk task reads the spool
//! in order, sends batches of up to `flush_kib` (or every `flush_interval_ms`) with up to
//! `concurrency` requests in flight, retries transient failures (transport errors, 429,
//! 5xx) with jittered exponential back-off re-sending only the failed items, writes items
//! rejected for good (other 4xx) to `dead-letter.ndjson`, and commits the spool position
//! once every earlier batch is done.

pub mod config;
pub mod retry;
pub mod service;
pub mod spool;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use self::config::OpenSearchConfig;
use self::retry::{Backoff, Class};
use self::service::{Service, ServiceError};
use self::spool::{Entry, Position, Spool, SpoolError};
use super::{Sink, SinkMetric, SinkMetricKind};
use crate::storage::EventQuery;

/// Why the sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("OpenSearch sink: {0}")]
    Service(#[from] ServiceError),
    #[error("OpenSearch sink: {0}")]
    Spool(#[from] SpoolError),
}

/// Counters behind the self-metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub indexed: AtomicU64,
    pub duplicates: AtomicU64,
    pub retried: AtomicU64,
    pub rejected: AtomicU64,
    pub bulk_requests: AtomicU64,
    pub bulk_failures: AtomicU64,
    pub bulk_micros: AtomicU64,
    pub bulk_last_micros: AtomicU64,
    pub bulk_bytes: AtomicU64,
    pub dead_letter_errors: AtomicU64,
}

/// The sink; cheap to share.
pub struct OpenSearchSink {
    config: OpenSearchConfig,
    service: Service,
    spool: Spool,
    stats: Stats,
    dead_letter: Mutex<PathBuf>,
}

impl std::fmt::Debug for OpenSearchSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenSearchSink")
            .field("service", &self.service)
            .finish()
    }
}

/// Fields of a document the sink needs to route it.
#[derive(serde::Deserialize)]
struct Routing {
    tracer_id: Option<String>,
    #[serde(rename = "@timestamp")]
    timestamp: Option<String>,
}

/// One bulk item: its action line, its document and where it ends in the spool.
#[derive(Debug, Clone)]
struct Item {
    action: String,
    entry: Entry,
    index: String,
}

/// A batch sent as one (or, after retries, several) bulk request(s).
struct Batch {
    seq: u64,
    items: Vec<Item>,
    /// Documents that could not even be routed (not JSON): dead-lettered directly.
    invalid: Vec<Entry>,
    end: Position,
    docs: u64,
    bytes: u64,
}

impl OpenSearchSink {
    /// Opens the spool under `<data_dir>/opensearch` and starts the bulk task on `runtime`.
    pub fn start(
        config: &OpenSearchConfig,
        data_dir: &Path,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Arc<Self>, SinkError> {
        let dir = data_dir.join("opensearch");
        let spool = Spool::open(
            &dir.join("spool"),
            config.spool_max_mib * 1024 * 1024,
            config.spool_segment_mib * 1024 * 1024,
            config.spool_full_policy,
        )?;
        let sink = Arc::new(Self {
            config: config.clone(),
            service: Service::new(config)?,
            spool,
            stats: Stats::default(),
            dead_letter: Mutex::new(dir.join("dead-letter.ndjson")),
        });
        tracing::info!(
            addresses = ?config.addresses,
            index = %config.index,
            mode = ?config.index_mode,
            spooled = sink.spool.waiting(),
            "OpenSearch sink started"
        );
        runtime.spawn(sink.clone().run());
        Ok(sink)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Documents waiting in the spool.
    pub fn spooled(&self) -> u64 {
        self.spool.waiting()
    }

    /// `GET /events?source=opensearch`: the same filters, answered by the cluster.
    pub async fn query(&self, query: &EventQuery) -> Result<Vec<Value>, ServiceError> {
        self.service.search(&search_body(query)).await
    }

    /// Installs the template (and the retention policy), retrying until it works: documents
    /// wait in the spool meanwhile, so that no index is created with dynamic mappings.
    async fn setup(&self) {
        let mut backoff = Backoff::new(self.config.backoff_initial_ms, self.config.backoff_max_ms);
        if self.config.install_template {
            loop {
                match self.service.install_template(&self.config).await {
                    Ok(()) => {
                        tracing::info!(template = %self.config.index, "OpenSearch index template installed");
                        break;
                    }
                    Err(err) => {
                        let delay = backoff.next_delay();
                        tracing::error!(%err, retry_in = ?delay, "cannot install the OpenSearch index template; documents stay spooled");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
        if self.config.retention_days > 0 {
            match self.service.install_retention(&self.config).await {
                Ok(true) => tracing::info!(
                    days = self.config.retention_days,
                    "OpenSearch ISM retention policy installed"
                ),
                Ok(false) => tracing::warn!(
                    "the cluster has no index-management (ISM) plugin: storage.opensearch.retention_days is not applied"
                ),
                Err(err) => tracing::error!(%err, "cannot install the OpenSearch retention policy"),
            }
        }
    }

    /// The bulk task: reads the spool in order and keeps up to `concurrency` batches in
    /// flight; commits in order.
    async fn run(self: Arc<Self>) {
        self.setup().await;
        let flush_bytes = self.config.flush_kib * 1024;
        let interval = Duration::from_millis(self.config.flush_interval_ms);
        let mut cursor = self.spool.cursor();
        let mut pending: Vec<Entry> = Vec::new();
        let mut pending_bytes = 0usize;
        let mut first_seen: Option<Instant> = None;
        let mut in_flight = tokio::task::JoinSet::new();
        let mut next_seq = 0u64;
        let mut next_commit = 0u64;
        let mut done: BTreeMap<u64, (Position, u64, u64)> = BTreeMap::new();
        loop {
            // Fill the pending batch from the spool.
            if pending_bytes < flush_bytes {
                match self.spool.read(&mut cursor, flush_bytes - pending_bytes) {
                    Ok(entries) => {
                        if !entries.is_empty() && first_seen.is_none() {
                            first_seen = Some(Instant::now());
                        }
                        pending_bytes += entries.iter().map(|e| e.line.len() + 1).sum::<usize>();
                        pending.extend(entries);
                    }
                    Err(err) => {
                        tracing::error!(%err, "cannot read the OpenSearch spool");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let due = first_seen.is_some_and(|t| t.elapsed() >= interval);
            if !pending.is_empty()
                && (pending_bytes >= flush_bytes || due)
                && in_flight.len() < self.config.concurrency
            {
                let batch = self.make_batch(next_seq, std::mem::take(&mut pending));
                next_seq += 1;
                pending_bytes = 0;
                first_seen = None;
                let sink = self.clone();
                in_flight.spawn(async move { sink.send(batch).await });
                continue;
            }
            // Wait for: a finished batch, new data, or the flush deadline.
            let wait = first_seen.map_or(interval, |t| interval.saturating_sub(t.elapsed()));
            tokio::select! {
                Some(result) = in_flight.join_next(), if !in_flight.is_empty() => {
                    match result {
                        Ok((seq, end, docs, bytes)) => {
                            done.insert(seq, (end, docs, bytes));
                        }
                        Err(err) => tracing::error!(%err, "OpenSearch bulk task failed"),
                    }
                    // Commit the contiguous prefix of finished batches.
                    let mut last = None;
                    let (mut docs, mut bytes) = (0, 0);
                    while let Some((end, d, b)) = done.remove(&next_commit) {
                        last = Some(end);
                        docs += d;
                        bytes += b;
                        next_commit += 1;
                    }
                    if let Some(end) = last
                        && let Err(err) = self.spool.commit(end, docs, bytes)
                    {
                        tracing::error!(%err, "cannot record the OpenSearch spool position; documents will be re-sent");
                    }
                }
                () = self.spool.wait_for_data(), if pending_bytes < flush_bytes => {}
                () = tokio::time::sleep(wait), if !pending.is_empty() && in_flight.len() < self.config.concurrency => {}
            }
        }
    }

    fn make_batch(&self, seq: u64, entries: Vec<Entry>) -> Batch {
        let end = entries.last().map(|e| e.end).unwrap_or_default();
        let docs = entries.len() as u64;
        let bytes = entries.iter().map(|e| e.line.len() as u64 + 1).sum();
        let mut items = Vec::with_capacity(entries.len());
        let mut invalid = Vec::new();
        for entry in entries {
            match serde_json::from_str::<Routing>(&entry.line) {
                Ok(routing) => {
                    let day = routing
                        .timestamp
                        .as_deref()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| t.with_timezone(&chrono::Utc).date_naive());
                    let index = self.service.index_for(day);
                    let action = match routing.tracer_id.filter(|id| !id.is_empty()) {
                        Some(id) => json!({"create": {"_index": index, "_id": id}}),
                        None => json!({"create": {"_index": index}}),
                    };
                    items.push(Item {
                        action: action.to_string(),
                        entry,
                        index,
                    });
                }
                Err(_) => invalid.push(entry),
            }
        }
        Batch {
            seq,
            items,
            invalid,
            end,
            docs,
            bytes,
        }
    }

    /// Sends one batch until every item is indexed, a duplicate, or dead-lettered.
    async fn send(self: Arc<Self>, batch: Batch) -> (u64, Position, u64, u64) {
        for entry in &batch.invalid {
            self.dead_letter("", 0, "document is not JSON", &entry.line);
        }
        let mut items = batch.items;
        let mut backoff = Backoff::new(self.config.backoff_initial_ms, self.config.backoff_max_ms);
        while !items.is_empty() {
            let mut body = Vec::with_capacity(
                items
                    .iter()
                    .map(|i| i.action.len() + i.entry.line.len() + 2)
                    .sum(),
            );
            for item in &items {
                body.extend_from_slice(item.action.as_bytes());
                body.push(b'\n');
                body.extend_from_slice(item.entry.line.as_bytes());
                body.push(b'\n');
            }
            let size = body.len() as u64;
            let started = Instant::now();
            let result = self.service.bulk(body).await;
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.stats.bulk_requests.fetch_add(1, Ordering::Relaxed);
            self.stats.bulk_micros.fetch_add(micros, Ordering::Relaxed);
            self.stats.bulk_last_micros.store(micros, Ordering::Relaxed);
            self.stats.bulk_bytes.fetch_add(size, Ordering::Relaxed);
            let retry = match result {
                Ok(response) => self.settle(items, &response),
                Err(err) => {
                    self.stats.bulk_failures.fetch_add(1, Ordering::Relaxed);
                    let transient = err.status().is_none_or(retry::retry_request);
                    if transient {
                        let delay = backoff.next_delay();
                        // Errors are logged on the first failure and then on every 10th.
                        if backoff.attempts() % 10 == 1 {
                            tracing::error!(%err, docs = items.len(), attempt = backoff.attempts(), retry_in = ?delay, "OpenSearch bulk request failed; documents stay spooled and will be retried");
                        }
                        self.stats
                            .retried
                            .fetch_add(items.len() as u64, Ordering::Relaxed);
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    // A permanent whole-request failure (e.g. 413): dead-letter the items.
                    tracing::error!(%err, docs = items.len(), "OpenSearch rejected a bulk request; documents dead-lettered");
                    let reason = err.to_string();
                    for item in &items {
                        self.dead_letter(
                            &item.index,
                            err.status().unwrap_or(0),
                            &reason,
                            &item.entry.line,
                        );
                    }
                    Vec::new()
                }
            };
            if !retry.is_empty() {
                self.stats
                    .retried
                    .fetch_add(retry.len() as u64, Ordering::Relaxed);
                let delay = backoff.next_delay();
                if backoff.attempts() % 10 == 1 {
                    tracing::warn!(docs = retry.len(), retry_in = ?delay, "OpenSearch asked to retry some documents (429/5xx)");
                }
                tokio::time::sleep(delay).await;
            }
            items = retry;
        }
        (batch.seq, batch.end, batch.docs, batch.bytes)
    }

    /// Reads a bulk response; returns the items to send again.
    fn settle(&self, items: Vec<Item>, response: &Value) -> Vec<Item> {
        let results = response["items"].as_array();
        let all_ok = response["errors"] == Value::Bool(false);
        let mut retry = Vec::new();
        for (n, item) in items.into_iter().enumerate() {
            let result = results
                .and_then(|r| r.get(n))
                .and_then(|r| r.as_object())
                .and_then(|r| r.values().next());
            let status = match result {
                Some(r) => r["status"]
                    .as_u64()
                    .and_then(|s| u16::try_from(s).ok())
                    .unwrap_or(500),
                None if all_ok => 201,
                // The response does not describe this item: send it again (idempotent).
                None => 500,
            };
            match retry::classify(status) {
                Class::Indexed => {
                    self.stats.indexed.fetch_add(1, Ordering::Relaxed);
                }
                Class::Duplicate => {
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                Class::Retry => {
                    if retry.is_empty() {
                        // One line per response, naming the first failure's cause.
                        tracing::warn!(
                            status,
                            reason = %item_error(result),
                            index = %item.index,
                            "OpenSearch refused some documents for now; they stay spooled and are retried"
                        );
                    }
                    retry.push(item);
                }
                Class::Reject => {
                    let reason = item_error(result);
                    self.dead_letter(&item.index, status, &reason, &item.entry.line);
                }
            }
        }
        retry
    }

    /// Appends a rejected document with the reason to `dead-letter.ndjson`.
    fn dead_letter(&self, index: &str, status: u16, reason: &str, line: &str) {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        let document: Value =
            serde_json::from_str(line).unwrap_or_else(|_| Value::String(line.to_owned()));
        let record = json!({
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "index": index,
            "status": status,
            "reason": reason,
            "document": document,
        });
        tracing::warn!(%index, status, %reason, "OpenSearch rejected a document; written to the dead-letter file");
        let Ok(path) = self.dead_letter.lock() else {
            return;
        };
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&*path)
            .and_then(|mut file| file.write_all(format!("{record}\n").as_bytes()));
        if let Err(err) = written {
            self.stats
                .dead_letter_errors
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(path = %path.display(), %err, "cannot write the OpenSearch dead-letter file");
        }
    }
}

/// The `_search` body for an `/events` query: newest first.
/// `type: reason` of a bulk item's error, for logs and the dead-letter file.
fn item_error(result: Option<&Value>) -> String {
    result.map(|r| &r["error"]).map_or_else(String::new, |e| {
        format!(
            "{}: {}",
            e["type"].as_str().unwrap_or("error"),
            e["reason"].as_str().unwrap_or("")
        )
    })
}

pub fn search_body(query: &EventQuery) -> Value {
    let mut filter = Vec::new();
    if let Some(tracer) = &query.tracer {
        filter.push(json!({"term": {"tracer_name": tracer}}));
    }
    if let Some(container) = &query.container {
        filter.push(json!({"prefix": {"container_id": container}}));
    }
    if query.since.is_some() || query.until.is_some() {
        let mut range = serde_json::Map::new();
        if let Some(since) = query.since {
            range.insert("gte".to_owned(), json!(since.to_rfc3339()));
        }
        if let Some(until) = query.until {
            range.insert("lte".to_owned(), json!(until.to_rfc3339()));
        }
        filter.push(json!({"range": {"@timestamp": range}}));
    }
    json!({
        "size": query.limit,
        "sort": [{"@timestamp": {"order": "desc"}}],
        "query": {"bool": {"filter": filter}},
    })
}

impl Sink for OpenSearchSink {
    fn accept(&self, line: &str) {
        self.spool.push(line);
    }

    fn flush(&self) {
        self.spool.flush();
    }

    fn metrics(&self) -> Vec<SinkMetric> {
        let metric = |kind, name, help, value: f64| SinkMetric {
            name,
            help,
            kind,
            labels: Vec::new(),
            value,
        };
        let counter =
            |name, help, value: u64| metric(SinkMetricKind::Counter, name, help, value as f64);
        let s = &self.stats;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let dropped = |reason: &str, value: u64| SinkMetric {
            name: "opensearch_documents_dropped",
            help: "Documents the OpenSearch sink lost, by reason (spool_full, spool_evicted, spool_io).",
            kind: SinkMetricKind::Counter,
            labels: vec![("reason".to_owned(), reason.to_owned())],
            value: value as f64,
        };
        vec![
            counter(
                "opensearch_documents_indexed",
                "Documents indexed by the cluster (201).",
                load(&s.indexed),
            ),
            counter(
                "opensearch_documents_duplicate",
                "Documents the cluster already had (409 on create after a re-send); delivered.",
                load(&s.duplicates),
            ),
            counter(
                "opensearch_documents_retried",
                "Document sends retried after a transport error, 401/403, 429 or 5xx.",
                load(&s.retried),
            ),
            counter(
                "opensearch_documents_rejected",
                "Documents rejected for good (4xx) and written to the dead-letter file.",
                load(&s.rejected),
            ),
            dropped("spool_full", load(&self.spool.dropped_full)),
            dropped("spool_evicted", load(&self.spool.dropped_evicted)),
            dropped("spool_io", load(&self.spool.dropped_io)),
            metric(
                SinkMetricKind::Gauge,
                "opensearch_spooled",
                "Documents in the OpenSearch spool waiting for the cluster.",
                self.spool.waiting() as f64,
            ),
            metric(
                SinkMetricKind::Gauge,
                "opensearch_spooled_bytes",
                "Bytes in the OpenSearch spool waiting for the cluster.",
                self.spool.waiting_bytes() as f64,
            ),
            counter(
                "opensearch_bulk_requests",
                "Bulk requests sent.",
                load(&s.bulk_requests),
            ),
            counter(
                "opensearch_bulk_failures",
                "Bulk requests that failed as a whole (transport error or HTTP error status).",
                load(&s.bulk_failures),
            ),
            counter(
                "opensearch_bulk_bytes",
                "Bytes of bulk request bodies sent.",
                load(&s.bulk_bytes),
            ),
            metric(
                SinkMetricKind::Counter,
                "opensearch_bulk_seconds",
                "Total time spent in bulk requests (divide by bulk_requests_total for the mean).",
                load(&s.bulk_micros) as f64 / 1e6,
            ),
            metric(
                SinkMetricKind::Gauge,
                "opensearch_bulk_duration_seconds",
                "Duration of the last bulk request.",
                load(&s.bulk_last_micros) as f64 / 1e6,
            ),
        ]
    }
}
