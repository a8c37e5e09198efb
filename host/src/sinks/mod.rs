//! Sinks: remote stores that receive every saved document after the local write.
//!
//! `Store::save` only queues a document (a guest never waits on a disk); the store's writer
//! thread hands each line to the sink ([`Sink::accept`]) before it writes the local file,
//! and the sink must make it survive a crash of the agent before returning (the OpenSearch
//! sink appends it to its on-disk spool); the writer calls [`Sink::flush`] every 100 ms to
//! make it durable against power loss too. The sink
//! ships documents from its own background task. One folder per sink, with fixed files (`config.rs`, `service.rs`,
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
    /// Takes one document (one JSON line without the newline), on the store's writer
    /// thread; once it returns, the document must survive a crash or `kill -9` of the agent.
    fn accept(&self, line: &str);
    /// Makes the lines accepted so far durable against power loss; called by the store's
    /// writer every 100 ms while documents arrive.
    fn flush(&self);
    /// Self-metrics for `/metrics`.
    fn metrics(&self) -> Vec<SinkMetric>;
}
