//! Sinks: remote stores that receive every saved document after the local write.
//!
//! The store's writer thread hands each document line to the sink in save order
//! ([`Sink::accept`]) and calls [`Sink::flush`] after each batch; a sink must make the
//! accepted lines durable in `flush` (it owns its own on-disk queue) and ship them from a
//! background task. One folder per sink, with fixed files (`config.rs`, `service.rs`,
//! `retry.rs`, `spool.rs`, `tests.rs`), in the style of Vector's sinks.

pub mod opensearch;

/// Kind of a sink self-metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkMetricKind {
    Gauge,
    Counter,
}

/// One self-metric sample of a sink (the name is appended to the metrics prefix).
#[derive(Debug, Clone)]
pub struct SinkMetric {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: SinkMetricKind,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A destination for saved documents.
pub trait Sink: Send + Sync {
    /// Takes one document (one JSON line without the newline), in save order.
    fn accept(&self, line: &str);
    /// Makes the lines accepted so far durable; called after every writer batch.
    fn flush(&self);
    /// Self-metrics for `/metrics`.
    fn metrics(&self) -> Vec<SinkMetric>;
}
