//! `/metrics`: on each scrape every running metric plugin's `update` runs concurrently under
//! its deadline; the samples are validated, grouped into families and encoded, together with
//! the agent's self-metrics, through prometheus-client as OpenMetrics or text 0.0.4.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::config::{MetricsConfig, is_metric_name};
use crate::hostinfo::HostInfo;
use crate::plugins::stats::PluginState;
use crate::plugins::{PluginHandle, PluginManager};
use crate::storage::Store;
use crate::wit::{Metric, MetricKind};

/// OpenMetrics content type (what Prometheus asks for first).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Classic text format.
pub const TEXT_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
}

/// One metric family of a scrape.
#[derive(Debug)]
struct Family {
    help: String,
    kind: Kind,
    series: Vec<(Labels, f64)>,
    seen: HashSet<Labels>,
}

/// Everything one scrape exposes; encoded once and thrown away.
#[derive(Debug, Default)]
struct Snapshot {
    families: BTreeMap<String, Family>,
}

impl Snapshot {
    /// Adds a sample; returns `false` when it conflicts with the family or repeats a series.
    fn add(&mut self, name: &str, help: &str, kind: Kind, labels: Labels, value: f64) -> bool {
        let family = self
            .families
            .entry(name.to_owned())
            .or_insert_with(|| Family {
                help: help.to_owned(),
                kind,
                series: Vec::new(),
                seen: HashSet::new(),
            });
        if family.kind != kind || !family.seen.insert(labels.clone()) {
            return false;
        }
        family.series.push((labels, value));
        true
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (name, family) in &self.families {
            let metric_type = match family.kind {
                Kind::Gauge => MetricType::Gauge,
                Kind::Counter => MetricType::Counter,
            };
            let mut metric = encoder.encode_descriptor(name, &family.help, None, metric_type)?;
            for (labels, value) in &family.series {
                let series = metric.encode_family(labels)?;
                match family.kind {
                    Kind::Gauge => ConstGauge::new(*value).encode(series)?,
                    Kind::Counter => ConstCounter::new(*value).encode(series)?,
                }
            }
        }
        Ok(())
    }
}

/// Builds the `/metrics` body.
pub struct Exposition {
    config: MetricsConfig,
    host: HostInfo,
}

impl Exposition {
    pub fn new(config: MetricsConfig, host: HostInfo) -> Self {
        Self { config, host }
    }

    /// Runs a scrape and encodes it.
    pub async fn scrape(
        &self,
        manager: &PluginManager,
        store: &Store,
        openmetrics: bool,
    ) -> String {
        let handles = manager.handles().await;
        let mut updates = tokio::task::JoinSet::new();
        for handle in handles.iter().filter(|h| h.spec.info.kinds.metric) {
            if handle.state() != PluginState::Running {
                continue;
            }
            let handle = Arc::clone(handle);
            updates.spawn(async move {
                let started = Instant::now();
                let result = handle.update().await;
                (handle, started.elapsed().as_secs_f64(), result)
            });
        }
        let mut snapshot = Snapshot::default();
        let mut scraped = Vec::new();
        while let Some(done) = updates.join_next().await {
            let Ok((handle, seconds, result)) = done else {
                continue;
            };
            let ok = match result {
                Ok(metrics) => {
                    self.add_plugin_metrics(&mut snapshot, &handle, metrics);
                    true
                }
                Err(err) => {
                    tracing::debug!(plugin = %handle.spec.info.name, %err, "update failed");
                    false
                }
            };
            scraped.push((handle.spec.info.name.clone(), seconds, ok));
        }
        self.add_self_metrics(&mut snapshot, &handles, &scraped, store);

        let mut registry = Registry::with_prefix(self.config.prefix.clone());
        registry.register_collector(Box::new(snapshot));
        let mut body = String::with_capacity(16 * 1024);
        let encoded = if openmetrics {
            prometheus_client::encoding::text::encode(&mut body, &registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut body, &registry)
        };
        if encoded.is_err() {
            tracing::error!("cannot encode metrics");
        }
        body
    }

    fn add_plugin_metrics(
        &self,
        snapshot: &mut Snapshot,
        handle: &PluginHandle,
        metrics: Vec<Metric>,
    ) {
        let plugin = &handle.spec.info.name;
        let mut dropped = 0u64;
        let cap = self.config.max_series_per_plugin;
        for (index, metric) in metrics.into_iter().enumerate() {
            if index >= cap {
                dropped += 1;
                continue;
            }
            let kind = match metric.kind {
                MetricKind::Gauge => Kind::Gauge,
                MetricKind::Counter => Kind::Counter,
            };
            // The exposition appends `_total` to counters itself.
            let base = match kind {
                Kind::Counter => metric.name.strip_suffix("_total").unwrap_or(&metric.name),
                Kind::Gauge => metric.name.as_str(),
            };
            let valid_value = match kind {
                Kind::Counter => metric.value.is_finite() && metric.value >= 0.0,
                Kind::Gauge => true,
            };
            let valid_labels = metric.labels.len() <= 32
                && metric.labels.iter().all(|(k, v)| {
                    is_metric_name(k)
                        && !k.starts_with("__")
                        && v.len() <= 1024
                        && !is_reserved_label(k)
                });
            if !is_metric_name(base) || base.is_empty() || !valid_value || !valid_labels {
                dropped += 1;
                continue;
            }
            let mut labels: Labels = Vec::with_capacity(metric.labels.len() + 3);
            // A counter named `total` is the plugin's own total (`softlockup_total`), not
            // `softlockup_total_total`.
            let family = |scope: &str| match (kind, base) {
                (Kind::Counter, "total") => format!("{plugin}{scope}"),
                _ => format!("{plugin}{scope}_{base}"),
            };
            let name = match &metric.container_id {
                Some(id) => {
                    labels.push(("container_id".to_owned(), id.clone()));
                    family("_container")
                }
                None => family(""),
            };
            if self.config.host_labels {
                labels.push(("region".to_owned(), self.host.region.clone()));
                labels.push(("host".to_owned(), self.host.hostname.clone()));
            }
            let mut extra = metric.labels;
            extra.sort();
            labels.extend(extra);
            if !snapshot.add(&name, &metric.help, kind, labels, metric.value) {
                dropped += 1;
            }
        }
        if dropped > 0 {
            handle
                .stats
                .metrics_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
    }

    fn add_self_metrics(
        &self,
        snapshot: &mut Snapshot,
        handles: &[Arc<PluginHandle>],
        scraped: &[(String, f64, bool)],
        store: &Store,
    ) {
        let plugin = |name: &str| vec![("plugin".to_owned(), name.to_owned())];
        for (name, seconds, ok) in scraped {
            let collector = vec![("collector".to_owned(), name.clone())];
            snapshot.add(
                "scrape_collector_duration_seconds",
                "Duration of a plugin's update during this scrape.",
                Kind::Gauge,
                collector.clone(),
                *seconds,
            );
            snapshot.add(
                "scrape_collector_success",
                "Whether a plugin's update succeeded during this scrape (1) or not (0).",
                Kind::Gauge,
                collector,
                if *ok { 1.0 } else { 0.0 },
            );
        }
        for handle in handles {
            let name = &handle.spec.info.name;
            let stats = &handle.stats;
            let counters: [(&str, &str, u64); 18] = [
                (
                    "plugin_bpf_records",
                    "Ring-buffer records delivered to the plugin.",
                    stats.bpf.records.load(Ordering::Relaxed),
                ),
                (
                    "plugin_bpf_ring_full_drops",
                    "Records the plugin's BPF programs dropped because the ring buffer was full.",
                    stats.bpf.ring_full.load(Ordering::Relaxed),
                ),
                (
                    "plugin_bpf_rate_limited",
                    "Records the plugin's BPF programs suppressed by their rate limit.",
                    stats.bpf.rate_limited.load(Ordering::Relaxed),
                ),
                (
                    "plugin_bpf_perf_lost",
                    "Samples lost because a perf event array buffer of the plugin was full.",
                    stats.bpf.perf_lost.load(Ordering::Relaxed),
                ),
                (
                    "plugin_bpf_denied",
                    "BPF requests refused by policy.",
                    stats.bpf_denied.load(Ordering::Relaxed),
                ),
                (
                    "plugin_bpf_objects",
                    "BPF objects loaded by the plugin's current instance.",
                    stats.bpf_objects.load(Ordering::Relaxed),
                ),
                (
                    "plugin_calls",
                    "Guest calls made.",
                    stats.calls.load(Ordering::Relaxed),
                ),
                (
                    "plugin_traps",
                    "Guest calls that trapped (panic, memory cap, deadline).",
                    stats.traps.load(Ordering::Relaxed),
                ),
                (
                    "plugin_timeouts",
                    "Guest calls stopped by the per-call deadline.",
                    stats.timeouts.load(Ordering::Relaxed),
                ),
                (
                    "plugin_call_errors",
                    "Guest calls that returned an error value.",
                    stats.call_errors.load(Ordering::Relaxed),
                ),
                (
                    "plugin_restarts",
                    "Instances re-created after a failure.",
                    stats.restarts.load(Ordering::Relaxed),
                ),
                (
                    "plugin_hits",
                    "Calls of the plugin's start entry point.",
                    stats.hits.load(Ordering::Relaxed),
                ),
                (
                    "plugin_denied_reads",
                    "File reads refused by capability checks.",
                    stats.denied_reads.load(Ordering::Relaxed),
                ),
                (
                    "plugin_documents_saved",
                    "Documents accepted from the plugin.",
                    stats.documents_saved.load(Ordering::Relaxed),
                ),
                (
                    "plugin_documents_dropped",
                    "Documents dropped because the storage queue was full.",
                    stats.documents_dropped.load(Ordering::Relaxed),
                ),
                (
                    "plugin_documents_rejected",
                    "Documents refused as malformed.",
                    stats.documents_rejected.load(Ordering::Relaxed),
                ),
                (
                    "plugin_metrics_dropped",
                    "Metric samples dropped as malformed, duplicate or over the series cap.",
                    stats.metrics_dropped.load(Ordering::Relaxed),
                ),
                (
                    "plugin_memory_bytes",
                    "Linear memory of the plugin's current instance.",
                    stats.memory_bytes.load(Ordering::Relaxed),
                ),
            ];
            for (metric, help, value) in counters {
                let kind = if matches!(metric, "plugin_memory_bytes" | "plugin_bpf_objects") {
                    Kind::Gauge
                } else {
                    Kind::Counter
                };
                snapshot.add(metric, help, kind, plugin(name), value as f64);
            }
            let state = handle.state();
            for candidate in PluginState::ALL {
                let mut labels = plugin(name);
                labels.push(("state".to_owned(), candidate.as_str().to_owned()));
                snapshot.add(
                    "plugin_state",
                    "Lifecycle state of each plugin (1 for the current state).",
                    Kind::Gauge,
                    labels,
                    if candidate == state { 1.0 } else { 0.0 },
                );
            }
            let mut labels = plugin(name);
            labels.push(("version".to_owned(), handle.spec.info.version.clone()));
            labels.push(("sha256".to_owned(), handle.spec.prepared.sha256.clone()));
            snapshot.add(
                "plugin_info",
                "Loaded plugin version and digest.",
                Kind::Gauge,
                labels,
                1.0,
            );
        }

        let stats = store.stats();
        if let Ok(written) = stats.written.lock() {
            for (tracer, count) in written.iter() {
                snapshot.add(
                    "storage_documents_written",
                    "Documents written to the local store.",
                    Kind::Counter,
                    vec![("tracer".to_owned(), tracer.clone())],
                    *count as f64,
                );
            }
        }
        let storage: [(&str, &str, Kind, u64); 5] = [
            (
                "storage_documents_dropped",
                "Documents dropped because the storage queue was full.",
                Kind::Counter,
                stats.dropped_queue_full.load(Ordering::Relaxed),
            ),
            (
                "storage_documents_rejected",
                "Documents refused as malformed.",
                Kind::Counter,
                stats.rejected_invalid.load(Ordering::Relaxed),
            ),
            (
                "storage_write_errors",
                "Documents lost to local write errors.",
                Kind::Counter,
                stats.write_errors.load(Ordering::Relaxed),
            ),
            (
                "storage_rotations",
                "Local store file rotations.",
                Kind::Counter,
                stats.rotations.load(Ordering::Relaxed),
            ),
            (
                "storage_queue_length",
                "Documents waiting for the local writer.",
                Kind::Gauge,
                stats.queued.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, kind, value) in storage {
            snapshot.add(name, help, kind, Vec::new(), value as f64);
        }
        // Sink self-metrics (`<prefix>_opensearch_*`).
        for metric in store.sink_metrics() {
            let kind = match metric.kind {
                crate::sinks::SinkMetricKind::Counter => Kind::Counter,
                crate::sinks::SinkMetricKind::Gauge => Kind::Gauge,
            };
            snapshot.add(metric.name, metric.help, kind, metric.labels, metric.value);
        }

        snapshot.add(
            "build_info",
            "Agent build: version, wasmtime, WIT package and compiler.",
            Kind::Gauge,
            vec![
                ("version".to_owned(), crate::build_info::VERSION.to_owned()),
                (
                    "wasmtime".to_owned(),
                    crate::build_info::WASMTIME.to_owned(),
                ),
                ("wit".to_owned(), crate::build_info::WIT_PACKAGE.to_owned()),
                ("rustc".to_owned(), crate::build_info::RUSTC.to_owned()),
            ],
            1.0,
        );
        if let Some((cpu_seconds, rss_bytes)) = self_usage() {
            snapshot.add(
                "process_cpu_seconds",
                "CPU time of the agent process.",
                Kind::Counter,
                Vec::new(),
                cpu_seconds,
            );
            snapshot.add(
                "process_resident_memory_bytes",
                "Resident memory of the agent process.",
                Kind::Gauge,
                Vec::new(),
                rss_bytes,
            );
        }
    }
}

/// Labels the host owns; a plugin may not set them.
fn is_reserved_label(name: &str) -> bool {
    matches!(name, "region" | "host" | "container_id")
}

/// CPU seconds and RSS of this process, from `/proc/self`.
pub fn self_usage() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised comm; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code, reason = "sysconf is always safe")]
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(((utime + stime) / ticks as f64, resident * page as f64))
}
