//! The OpenSearch / Elasticsearch sink: every saved document is bulk-indexed with
//! `create` and `_id = tracer_id`, through an on-disk spool so that nothing is lost while
//! the cluster is unreachable or the agent restarts.
//!
//! Flow: `Store::save` → [`OpenSearchSink::accept`] (append to the spool: survives
//! `kill -9`) → [`OpenSearchSink::flush`] from the store's writer (fsync) → the bulk task
//! reads the spool in order, sends batches of up to `flush_kib` (or every
//! `flush_interval_ms`) with up to `concurrency` requests in flight, retries transient
//! failures (transport errors, 429, 5xx) with jittered exponential back-off re-sending only
//! the failed items, writes items rejected for good (other 4xx) to `dead-letter.ndjson`, and
//! commits the spool position once every earlier batch is done.
//!
//! Files: this one (the sink and its bulk task), `bulk.rs` (bulk bodies and settling the
//! typed response), `dead_letter.rs`, `metrics.rs` (counters and self-metrics), and the
//! folder's fixed files (`config.rs`, `service.rs`, `retry.rs`, `spool.rs`, `tests.rs`).
//! The back-off is [`crate::backoff`], shared with the plugin supervisor.

mod bulk;
pub mod config;
mod dead_letter;
mod metrics;
pub mod retry;
pub mod service;
pub mod spool;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use self::bulk::Batch;
use self::config::OpenSearchConfig;
use self::dead_letter::DeadLetter;
pub use self::metrics::Stats;
use self::service::{Service, ServiceError};
use self::spool::{Entry, Position, Spool, SpoolError};
use super::{Sink, SinkMetric};
use crate::backoff::{Attempts, Backoff};
use crate::logging::{REPEAT_INTERVAL, RateLimit};
use crate::storage::EventQuery;

/// A commit fails after every batch while the disk is full: logged once per interval.
static COMMIT_FAILED: RateLimit = RateLimit::new(REPEAT_INTERVAL);

/// Why the sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("OpenSearch sink: {0}")]
    Service(#[from] ServiceError),
    #[error("OpenSearch sink: {0}")]
    Spool(#[from] SpoolError),
}

/// The sink; cheap to share.
pub struct OpenSearchSink {
    config: OpenSearchConfig,
    service: Service,
    spool: Spool,
    stats: Stats,
    dead_letter: DeadLetter,
}

impl std::fmt::Debug for OpenSearchSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenSearchSink")
            .field("service", &self.service)
            .finish()
    }
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
            dead_letter: DeadLetter::new(dir.join("dead-letter.ndjson")),
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
        let mut backoff = self.backoff();
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
                let batch = Batch::new(next_seq, std::mem::take(&mut pending), |day| {
                    self.service.index_for(day)
                });
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
                        && let Some(suppressed) = COMMIT_FAILED.check()
                    {
                        tracing::error!(%err, "cannot record the OpenSearch spool position; documents will be re-sent{suppressed}");
                    }
                }
                () = self.spool.wait_for_data(), if pending_bytes < flush_bytes => {}
                () = tokio::time::sleep(wait), if !pending.is_empty() && in_flight.len() < self.config.concurrency => {}
            }
        }
    }

    /// The back-off of one operation's retries.
    fn backoff(&self) -> Attempts {
        backoff(&self.config)
    }
}

/// Jittered exponential back-off from `backoff_initial_ms` up to `backoff_max_ms`.
fn backoff(config: &OpenSearchConfig) -> Attempts {
    let initial = config.backoff_initial_ms.max(1);
    Backoff::new(
        Duration::from_millis(initial),
        Duration::from_millis(config.backoff_max_ms.max(initial)),
    )
    .jittered()
    .attempts()
}

/// The `_search` body for an `/events` query: newest first.
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
        metrics::samples(&self.stats, &self.spool)
    }
}

/// What [`fuzz_settle`] found.
#[doc(hidden)]
#[derive(Debug)]
pub struct FuzzSettlement {
    /// Documents routed into the bulk request (the others are not JSON).
    pub items: usize,
    pub not_json: usize,
    pub indexed: u64,
    pub duplicates: u64,
    pub retried: usize,
    pub missing: usize,
    pub rejected: usize,
    /// The bulk request body built for the routed documents.
    pub body: Vec<u8>,
}

/// For the fuzz targets (`fuzz/`): routes spooled `lines` as one batch and settles the bulk
/// `response` body against it, as the bulk task does, without a cluster.
#[doc(hidden)]
pub fn fuzz_settle(lines: &[&str], response: &[u8]) -> FuzzSettlement {
    let entries = lines
        .iter()
        .zip(1..)
        .map(|(line, offset)| Entry {
            line: (*line).to_owned(),
            end: Position { segment: 1, offset },
        })
        .collect();
    let batch = Batch::new(1, entries, |day| {
        day.map_or_else(|| "kpulse-none".to_owned(), |d| format!("kpulse-{d}"))
    });
    let body = bulk::request_body(&batch.items);
    let items = batch.items.len();
    let settled = bulk::settle(batch.items, response);
    FuzzSettlement {
        items,
        not_json: batch.invalid.len(),
        indexed: settled.indexed,
        duplicates: settled.duplicates,
        retried: settled.retry.len(),
        missing: settled.missing,
        rejected: settled.rejected.len(),
        body,
    }
}
