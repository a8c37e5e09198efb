//! The sink's counters and the self-metrics `/metrics` shows for it.

use std::sync::atomic::{AtomicU64, Ordering};

use super::spool::Spool;
use crate::sinks::{SinkMetric, SinkMetricKind};

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

/// The self-metrics of the sink with these counters and this spool.
pub(super) fn samples(stats: &Stats, spool: &Spool) -> Vec<SinkMetric> {
    let metric = |kind, name, help, value: f64| SinkMetric {
        name,
        help,
        kind,
        labels: Vec::new(),
        value,
    };
    let counter =
        |name, help, value: u64| metric(SinkMetricKind::Counter, name, help, value as f64);
    let s = stats;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let dropped = |reason: &str, value: u64| SinkMetric {
        name: "opensearch_documents_dropped",
        help: "Documents the OpenSearch sink lost, by reason (spool_full, spool_evicted, spool_io, spool_deleted: finished segments deleted from outside).",
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
        dropped("spool_full", load(&spool.dropped_full)),
        dropped("spool_evicted", load(&spool.dropped_evicted)),
        dropped("spool_io", load(&spool.dropped_io)),
        dropped("spool_deleted", load(&spool.dropped_deleted)),
        counter(
            "opensearch_spool_restored",
            "Times the spool segment being written was found deleted from outside and copied back from its open file.",
            load(&spool.restored),
        ),
        metric(
            SinkMetricKind::Gauge,
            "opensearch_spooled",
            "Documents in the OpenSearch spool waiting for the cluster.",
            spool.waiting() as f64,
        ),
        metric(
            SinkMetricKind::Gauge,
            "opensearch_spooled_bytes",
            "Bytes in the OpenSearch spool waiting for the cluster.",
            spool.waiting_bytes() as f64,
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
