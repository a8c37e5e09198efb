//! `/metrics`: on each scrape every running metric plugin's `update` runs concurrently under
//! its deadline; the samples are validated, grouped into families and encoded, together with
//! the agent's self-metrics, through prometheus-client as OpenMetrics or text 0.0.4.
//!
//! The agent's own families (per plugin, per scrape, build info) are typed and registered
//! once ([`AgentMetrics`], `agent.rs`); a scrape only collects the guests' samples plus a few
//! values read at that moment (storage queue and drops, the sink's counters, process CPU and
//! memory) into a throw-away [`Snapshot`].

mod agent;

pub use agent::AgentMetrics;

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
use crate::storage::{DropCause, Store};
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
    /// A HUATUO counter that HUATUO exposes without `_total` ([`HUATUO_BARE_COUNTERS`]),
    /// while a counter here always gets it. In `huatuo_bamai` mode it is exposed untyped, so
    /// the dashboards' name matches and `rate()` over it still works.
    Untyped,
}

/// The prefix under which names are HUATUO's exactly (`--prefix` of HUATUO's exporter).
pub const HUATUO_PREFIX: &str = "huatuo_bamai";

/// HUATUO's counters whose exposed name has no `_total` (its Go exporter keeps a counter's
/// name as given), by family name without the prefix. Only these keep their bare name in
/// `huatuo_bamai` mode: every other HUATUO counter is named with `_total`.
const HUATUO_BARE_COUNTERS: [&str; 3] = [
    "softirq_latency",
    "runqlat_latency",
    "runqlat_container_latency",
];

/// The family name a plugin's sample gets, without the prefix and the `_total` suffix.
fn bare_name(plugin: &str, metric: &Metric) -> String {
    let scope = if metric.container_id.is_some() {
        "_container"
    } else {
        ""
    };
    format!("{plugin}{scope}_{}", metric.name)
}

/// How often at most a scrape gives freed heap back: trimming walks every malloc arena, which
/// a scrape every second need not pay each time.
const SCRAPE_TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

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
                Kind::Untyped => MetricType::Unknown,
            };
            let mut metric = encoder.encode_descriptor(name, &family.help, None, metric_type)?;
            for (labels, value) in &family.series {
                let series = metric.encode_family(labels)?;
                match family.kind {
                    Kind::Gauge | Kind::Untyped => ConstGauge::new(*value).encode(series)?,
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
    agent: Arc<AgentMetrics>,
    /// Gives container-level samples their container's labels.
    containers: crate::containers::Registry,
    /// Serializes the refresh of the per-plugin state series with their encoding.
    refresh: std::sync::Mutex<()>,
}

impl Exposition {
    pub fn new(
        config: MetricsConfig,
        host: HostInfo,
        agent: Arc<AgentMetrics>,
        containers: crate::containers::Registry,
    ) -> Self {
        Self {
            config,
            host,
            agent,
            containers,
            refresh: std::sync::Mutex::new(()),
        }
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
        // Guest families may not shadow the agent's own.
        snapshot.families.retain(|name, _| !is_agent_family(name));
        self.add_read_metrics(&mut snapshot, &handles, store);

        let mut guests = Registry::with_prefix(self.config.prefix.clone());
        guests.register_collector(Box::new(snapshot));
        let mut body = String::with_capacity(16 * 1024);
        let refreshing = self
            .refresh
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let loaded: Vec<&str> = handles.iter().map(|h| h.spec.info.name.as_str()).collect();
        self.agent.retain_plugins(&loaded);
        for handle in &handles {
            self.agent.set_plugin(
                &handle.spec.info.name,
                handle.state(),
                &handle.spec.info.version,
                &handle.spec.prepared.sha256,
            );
        }
        for (name, seconds, ok) in &scraped {
            self.agent.set_scrape(name, *seconds, *ok);
        }
        let encoded = if openmetrics {
            use prometheus_client::encoding::text;
            text::encode_registry(&mut body, &guests)
                .and_then(|()| text::encode_registry(&mut body, self.agent.registry()))
                .and_then(|()| text::encode_eof(&mut body))
        } else {
            use prometheus_client::encoding::prometheus_text;
            prometheus_text::encode(&mut body, &guests)
                .and_then(|()| prometheus_text::encode(&mut body, self.agent.registry()))
        };
        if encoded.is_err() {
            tracing::error!("cannot encode metrics");
        }
        drop(refreshing);
        drop(guests);
        // The scrape's thousands of small label strings are free again, but glibc keeps their
        // pages (about 8 MiB with the whole catalogue, measured by hand; BENCHMARKS.md).
        crate::heap::release_free_heap_every(SCRAPE_TRIM_INTERVAL);
        body
    }

    /// HUATUO's container label set, in its order (`region, container_host, container_name,
    /// container_type, container_level, container_hostnamespace, host`), then the
    /// allow-listed container labels as `container_label_<name>`. A container the registry
    /// does not know keeps its id as the name and the type `unknown`.
    fn container_labels(
        &self,
        labels: &mut Labels,
        id: &str,
        container: Option<&crate::containers::Container>,
    ) {
        use crate::containers::model::kind;
        if self.config.host_labels {
            labels.push(("region".to_owned(), self.host.region.clone()));
        }
        let (host, name, container_type, level, namespace) = match container {
            Some(c) => (
                c.display_hostname(),
                c.name.as_str(),
                c.container_type,
                c.qos.as_str(),
                c.host_namespace(),
            ),
            None => (id, id, kind::UNKNOWN, "", ""),
        };
        for (key, value) in [
            ("container_host", host),
            ("container_name", name),
            ("container_type", container_type),
            ("container_level", level),
            ("container_hostnamespace", namespace),
        ] {
            labels.push((key.to_owned(), value.to_owned()));
        }
        if self.config.host_labels {
            labels.push(("host".to_owned(), self.host.hostname.clone()));
        }
        if let Some(c) = container {
            for (key, value) in c.allowed_labels(self.containers.label_allow()) {
                labels.push((
                    format!("container_label_{}", sanitize_label(key)),
                    value.clone(),
                ));
            }
        }
    }

    fn add_plugin_metrics(
        &self,
        snapshot: &mut Snapshot,
        handle: &PluginHandle,
        metrics: Vec<Metric>,
    ) {
        let dropped = self.add_samples(snapshot, &handle.spec.info.name, metrics);
        if dropped > 0 {
            handle
                .stats
                .metrics_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// The guests' half of a scrape without a plugin behind it: `metrics` as plugin
    /// `plugin`'s `update` result, validated, encoded alone in the text format. Returns the
    /// body and how many samples were dropped. What a guest returns crosses the WIT boundary
    /// here; the `wit_boundary` fuzz target holds it to a well-formed exposition.
    pub fn encode_guest_samples(&self, plugin: &str, metrics: Vec<Metric>) -> (String, u64) {
        let mut snapshot = Snapshot::default();
        let dropped = self.add_samples(&mut snapshot, plugin, metrics);
        snapshot.families.retain(|name, _| !is_agent_family(name));
        let mut registry = Registry::with_prefix(self.config.prefix.clone());
        registry.register_collector(Box::new(snapshot));
        let mut body = String::new();
        if prometheus_client::encoding::prometheus_text::encode(&mut body, &registry).is_err() {
            body.clear();
        }
        (body, dropped)
    }

    /// Validates one plugin's samples and adds them to `snapshot`; returns how many were
    /// dropped (bad name, value or labels, a conflict with the family, a repeated series,
    /// over the per-plugin cap).
    fn add_samples(&self, snapshot: &mut Snapshot, plugin: &str, metrics: Vec<Metric>) -> u64 {
        let mut dropped = 0u64;
        let containers = self.containers.snapshot();
        let cap = self.config.max_series_per_plugin;
        let huatuo_names = self.config.prefix == HUATUO_PREFIX;
        for (index, metric) in metrics.into_iter().enumerate() {
            if index >= cap {
                dropped += 1;
                continue;
            }
            let kind = match metric.kind {
                MetricKind::Gauge => Kind::Gauge,
                MetricKind::Counter
                    if huatuo_names
                        && HUATUO_BARE_COUNTERS.contains(&bare_name(plugin, &metric).as_str()) =>
                {
                    Kind::Untyped
                }
                MetricKind::Counter => Kind::Counter,
            };
            // The exposition appends `_total` to counters itself.
            let base = match kind {
                Kind::Counter => metric.name.strip_suffix("_total").unwrap_or(&metric.name),
                Kind::Gauge | Kind::Untyped => metric.name.as_str(),
            };
            let valid_value = match kind {
                Kind::Counter | Kind::Untyped => metric.value.is_finite() && metric.value >= 0.0,
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
                    let container = containers.get(id);
                    self.container_labels(&mut labels, id, container.map(|c| &**c));
                    family("_container")
                }
                None => {
                    if self.config.host_labels {
                        labels.push(("region".to_owned(), self.host.region.clone()));
                        labels.push(("host".to_owned(), self.host.hostname.clone()));
                    }
                    family("")
                }
            };
            let mut extra = metric.labels;
            extra.sort();
            labels.extend(extra);
            if !snapshot.add(&name, &metric.help, kind, labels, metric.value) {
                dropped += 1;
            }
        }
        dropped
    }

    /// Values read at scrape time: the store's queue and drops, the sink's counters, and
    /// the process's CPU and memory.
    fn add_read_metrics(
        &self,
        snapshot: &mut Snapshot,
        handles: &[Arc<PluginHandle>],
        store: &Store,
    ) {
        for handle in handles {
            let plugin = vec![("plugin".to_owned(), handle.spec.info.name.clone())];
            let stats = &handle.stats;
            snapshot.add(
                "plugin_memory_bytes",
                "Linear memory of the plugin's current instance.",
                Kind::Gauge,
                plugin.clone(),
                stats.memory_bytes.load(Ordering::Relaxed) as f64,
            );
            snapshot.add(
                "plugin_bpf_objects",
                "BPF objects loaded by the plugin's current instance.",
                Kind::Gauge,
                plugin,
                stats.bpf_objects.load(Ordering::Relaxed) as f64,
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
        for cause in DropCause::ALL {
            snapshot.add(
                "storage_documents_dropped",
                "Documents that did not reach the local store, by cause (invalid, too_large, queue_full, writer_stopped, write_error).",
                Kind::Counter,
                vec![("cause".to_owned(), cause.as_str().to_owned())],
                stats.dropped(cause).load(Ordering::Relaxed) as f64,
            );
        }
        let storage: [(&str, &str, Kind, u64); 5] = [
            (
                "storage_documents_rejected",
                "Documents refused as malformed or too large.",
                Kind::Counter,
                stats.rejected_invalid.load(Ordering::Relaxed)
                    + stats.rejected_too_large.load(Ordering::Relaxed),
            ),
            (
                "storage_corrupt_lines",
                "Lines of the local store files that are not documents, skipped by reads.",
                Kind::Counter,
                stats.corrupt_lines.load(Ordering::Relaxed),
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
        // node_exporter's and HUATUO's process collector have it; the dashboards query it.
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            snapshot.add(
                "process_open_fds",
                "Open file descriptors of the agent process.",
                Kind::Gauge,
                Vec::new(),
                fds.count() as f64,
            );
        }
    }
}

/// Families the agent registers itself ([`AgentMetrics`]), by name without the prefix.
fn is_agent_family(name: &str) -> bool {
    name.starts_with("plugin_")
        || name.starts_with("scrape_collector_")
        || name.starts_with("container_")
        || name == "containers"
        || name.starts_with("events_watch_")
        || name.starts_with("http_server_")
        || name == "build_info"
}

/// Labels the host owns; a plugin may not set them.
fn is_reserved_label(name: &str) -> bool {
    matches!(
        name,
        "region"
            | "host"
            | "container_id"
            | "container_host"
            | "container_name"
            | "container_type"
            | "container_level"
            | "container_hostnamespace"
    ) || name.starts_with("container_label_")
}

/// A label key as a Prometheus label name: `[a-zA-Z0-9_]`, others become `_`.
fn sanitize_label(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// CPU seconds and RSS of this process, from `/proc/self`.
/// Measures every plugin's BPF cost in short windows (see [`crate::bpf::cost`]), on a
/// thread of its own: a window blocks for its length, and the reads are syscalls.
pub fn spawn_bpf_cost_sampler(config: &crate::config::MetricsConfig, metrics: Arc<AgentMetrics>) {
    if config.bpf_cost_every_secs == 0 {
        return;
    }
    let every = std::time::Duration::from_secs(config.bpf_cost_every_secs);
    let window = std::time::Duration::from_millis(config.bpf_cost_window_ms);
    let spawned = std::thread::Builder::new()
        .name("bpf-cost".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                let targets = metrics.bpf_cost_targets();
                if targets.iter().all(|t| t.programs.is_empty()) {
                    continue;
                }
                if let Err(err) =
                    crate::bpf::cost::sample_window(window, &targets, &metrics.bpf_cost_windows)
                {
                    // Without the privilege it never will: say so once and stop.
                    tracing::warn!(error = %err, "BPF cost sampling off");
                    return;
                }
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "cannot start the BPF cost sampler");
    }
}

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
