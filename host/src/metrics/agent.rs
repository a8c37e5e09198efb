//! The agent's own metrics: typed prometheus-client families, registered once at start-up
//! and updated in place (the per-plugin counters are the very atomics the actor threads and
//! host imports bump). Only guest samples are collected per scrape (`super::Snapshot`).

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::bpf::BpfCounters;
use crate::counter::{Count, Level};
use crate::plugins::stats::{PluginState, PluginStats};

/// `{plugin="..."}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    pub plugin: String,
}

/// `{plugin="...",state="..."}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginStateLabels {
    pub plugin: String,
    pub state: &'static str,
}

/// `{plugin="...",version="...",sha256="..."}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginInfoLabels {
    pub plugin: String,
    pub version: String,
    pub sha256: String,
}

/// `{collector="..."}`: one plugin's part of a scrape.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CollectorLabel {
    pub collector: String,
}

/// `{version,wasmtime,wit,rustc}` of `build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    wasmtime: &'static str,
    wit: &'static str,
    rustc: &'static str,
}

type CountFamily = Family<PluginLabel, Counter<u64, AtomicU64>>;
type SecondsCountFamily = Family<PluginLabel, Counter<f64, AtomicU64>>;
type SecondsFamily = Family<CollectorLabel, Gauge<f64, AtomicU64>>;

/// Every family the agent exposes about itself, and the registry that holds them.
pub struct AgentMetrics {
    registry: Registry,
    calls: CountFamily,
    traps: CountFamily,
    timeouts: CountFamily,
    call_errors: CountFamily,
    restarts: CountFamily,
    hits: CountFamily,
    denied_reads: CountFamily,
    documents_saved: CountFamily,
    documents_dropped: CountFamily,
    documents_rejected: CountFamily,
    metrics_dropped: CountFamily,
    bpf_records: CountFamily,
    bpf_ring_full: CountFamily,
    bpf_rate_limited: CountFamily,
    bpf_perf_lost: CountFamily,
    bpf_denied: CountFamily,
    bpf_run_seconds: SecondsCountFamily,
    bpf_runs: CountFamily,
    /// Sampled windows of BPF run-time statistics ([`crate::bpf::cost`]).
    pub bpf_cost_windows: crate::bpf::cost::CostWindows,
    /// Every plugin's BPF counters, for the cost sampler (the current instance's).
    bpf_cost_targets: Mutex<std::collections::HashMap<String, Arc<BpfCounters>>>,
    state: Family<PluginStateLabels, Gauge>,
    info: Family<PluginInfoLabels, Gauge>,
    scrape_duration: SecondsFamily,
    scrape_success: Family<CollectorLabel, Gauge>,
    /// The container registry's families.
    pub containers: crate::containers::ContainerMetrics,
    /// The CPU profiler's families.
    pub profiler: crate::profiler::ProfilerMetrics,
    /// Documents lost by live watchers that fell behind.
    pub watch_dropped: Counter,
    /// The HTTP server's request families.
    pub http: crate::http::requests::HttpMetrics,
    /// Plugins whose series exist, so an unloaded plugin's series can be removed.
    known: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl AgentMetrics {
    /// Registers every family under `prefix` (`kpulse`, or `huatuo_bamai`).
    pub fn new(prefix: &str) -> Arc<Self> {
        let mut registry = Registry::with_prefix(prefix);
        let mut count = |name: &str, help: &str| {
            let family = CountFamily::default();
            registry.register(name, help, family.clone());
            family
        };
        let calls = count("plugin_calls", "Guest calls made.");
        let traps = count(
            "plugin_traps",
            "Guest calls that trapped (panic, memory cap, deadline).",
        );
        let timeouts = count(
            "plugin_timeouts",
            "Guest calls stopped by the per-call deadline.",
        );
        let call_errors = count(
            "plugin_call_errors",
            "Guest calls that returned an error value.",
        );
        let restarts = count("plugin_restarts", "Instances re-created after a failure.");
        let hits = count("plugin_hits", "Calls of the plugin's start entry point.");
        let denied_reads = count(
            "plugin_denied_reads",
            "File reads refused by capability checks.",
        );
        let documents_saved = count(
            "plugin_documents_saved",
            "Documents accepted from the plugin.",
        );
        let documents_dropped = count(
            "plugin_documents_dropped",
            "Documents dropped because the storage queue was full.",
        );
        let documents_rejected = count(
            "plugin_documents_rejected",
            "Documents refused as malformed.",
        );
        let metrics_dropped = count(
            "plugin_metrics_dropped",
            "Metric samples dropped as malformed, duplicate or over the series cap.",
        );
        let bpf_records = count(
            "plugin_bpf_records",
            "Ring-buffer records delivered to the plugin.",
        );
        let bpf_ring_full = count(
            "plugin_bpf_ring_full_drops",
            "Records the plugin's BPF programs dropped because the ring buffer was full.",
        );
        let bpf_rate_limited = count(
            "plugin_bpf_rate_limited",
            "Records the plugin's BPF programs suppressed by their rate limit.",
        );
        let bpf_perf_lost = count(
            "plugin_bpf_perf_lost",
            "Samples lost because a perf event array buffer of the plugin was full.",
        );
        let bpf_denied = count("plugin_bpf_denied", "BPF requests refused by policy.");
        let bpf_runs = count(
            "plugin_bpf_runs",
            "Runs of the plugin's BPF programs counted inside sampled statistics windows \
             (see bpf_cost_sampled_seconds_total).",
        );
        let bpf_run_seconds = SecondsCountFamily::default();
        registry.register(
            "plugin_bpf_run_seconds",
            "Kernel run time of the plugin's BPF programs inside sampled statistics windows; \
             divided by bpf_cost_sampled_seconds_total it is the share of one CPU they use.",
            bpf_run_seconds.clone(),
        );
        let bpf_cost_windows = crate::bpf::cost::CostWindows::default();
        registry.register(
            "bpf_cost_sampled_seconds",
            "Time BPF run-time statistics were on (sampled windows) for plugin_bpf_run_seconds.",
            bpf_cost_windows.seconds.clone(),
        );
        let state = Family::<PluginStateLabels, Gauge>::default();
        registry.register(
            "plugin_state",
            "Lifecycle state of each plugin (1 for the current state).",
            state.clone(),
        );
        let info = Family::<PluginInfoLabels, Gauge>::default();
        registry.register(
            "plugin_info",
            "Loaded plugin version and digest.",
            info.clone(),
        );
        let scrape_duration = SecondsFamily::default();
        registry.register(
            "scrape_collector_duration_seconds",
            "Duration of a plugin's update during the last scrape.",
            scrape_duration.clone(),
        );
        let scrape_success = Family::<CollectorLabel, Gauge>::default();
        registry.register(
            "scrape_collector_success",
            "Whether a plugin's update succeeded during the last scrape (1) or not (0).",
            scrape_success.clone(),
        );
        let containers = crate::containers::ContainerMetrics::register(&mut registry);
        let profiler = crate::profiler::ProfilerMetrics::register(&mut registry);
        let http = crate::http::requests::HttpMetrics::register(&mut registry);
        let watch_dropped = Counter::default();
        registry.register(
            "events_watch_dropped",
            "Documents live watchers (GET /events/watch) lost by falling behind.",
            watch_dropped.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: crate::build_info::VERSION,
                wasmtime: crate::build_info::WASMTIME,
                wit: crate::build_info::WIT_PACKAGE,
                rustc: crate::build_info::RUSTC,
            })
            .set(1);
        registry.register(
            "build_info",
            "Agent build: version, wasmtime, WIT package and compiler.",
            build,
        );
        Arc::new(Self {
            registry,
            calls,
            traps,
            timeouts,
            call_errors,
            restarts,
            hits,
            denied_reads,
            documents_saved,
            documents_dropped,
            documents_rejected,
            metrics_dropped,
            bpf_records,
            bpf_ring_full,
            bpf_rate_limited,
            bpf_perf_lost,
            bpf_denied,
            bpf_run_seconds,
            bpf_runs,
            bpf_cost_windows,
            bpf_cost_targets: Mutex::new(std::collections::HashMap::new()),
            state,
            info,
            scrape_duration,
            scrape_success,
            known: Mutex::new(HashSet::new()),
            containers,
            profiler,
            watch_dropped,
            http,
        })
    }

    /// The BPF counters of every loaded plugin, for one sampled cost window.
    pub fn bpf_cost_targets(&self) -> Vec<Arc<BpfCounters>> {
        self.bpf_cost_targets
            .lock()
            .map(|targets| targets.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The counters of plugin `name`, registered under its label: the plugin's threads
    /// bump exactly what `/metrics` reads. The gauges of the current instance (memory, BPF
    /// objects) are per spawn, since a replacement runs beside the old version for a
    /// moment; `/metrics` reads them from the loaded handles.
    pub fn plugin_stats(&self, name: &str) -> PluginStats {
        if let Ok(mut known) = self.known.lock() {
            known.insert(name.to_owned());
        }
        let label = PluginLabel {
            plugin: name.to_owned(),
        };
        let count = |family: &CountFamily| Count(family.get_or_create_owned(&label));
        let bpf = Arc::new(BpfCounters {
            subscriptions: Level::default(),
            records: count(&self.bpf_records),
            ring_full: count(&self.bpf_ring_full),
            rate_limited: count(&self.bpf_rate_limited),
            perf_lost: count(&self.bpf_perf_lost),
            programs: Arc::default(),
            run_seconds: self.bpf_run_seconds.get_or_create_owned(&label),
            runs: count(&self.bpf_runs),
        });
        if let Ok(mut targets) = self.bpf_cost_targets.lock() {
            targets.insert(name.to_owned(), bpf.clone());
        }
        PluginStats {
            calls: count(&self.calls),
            traps: count(&self.traps),
            timeouts: count(&self.timeouts),
            call_errors: count(&self.call_errors),
            restarts: count(&self.restarts),
            hits: count(&self.hits),
            denied_reads: count(&self.denied_reads),
            documents_saved: count(&self.documents_saved),
            documents_dropped: count(&self.documents_dropped),
            documents_rejected: count(&self.documents_rejected),
            metrics_dropped: count(&self.metrics_dropped),
            bpf,
            bpf_denied: count(&self.bpf_denied),
            ..PluginStats::default()
        }
    }

    /// Sets the one-hot state and the info series of a loaded plugin.
    pub fn set_plugin(&self, name: &str, state: PluginState, version: &str, sha256: &str) {
        for candidate in PluginState::ALL {
            self.state
                .get_or_create(&PluginStateLabels {
                    plugin: name.to_owned(),
                    state: candidate.as_str(),
                })
                .set(i64::from(candidate == state));
        }
        self.info
            .get_or_create(&PluginInfoLabels {
                plugin: name.to_owned(),
                version: version.to_owned(),
                sha256: sha256.to_owned(),
            })
            .set(1);
    }

    /// Records one plugin's part of the last scrape.
    pub fn set_scrape(&self, collector: &str, seconds: f64, ok: bool) {
        let label = CollectorLabel {
            collector: collector.to_owned(),
        };
        self.scrape_duration.get_or_create(&label).set(seconds);
        self.scrape_success.get_or_create(&label).set(i64::from(ok));
    }

    /// Removes every series of plugins that are no longer loaded, and the state and info
    /// series (set again by [`Self::set_plugin`] for the loaded ones).
    pub fn retain_plugins(&self, loaded: &[&str]) {
        let Ok(mut known) = self.known.lock() else {
            return;
        };
        let names: HashSet<&str> = loaded.iter().copied().collect();
        let gone: Vec<String> = known
            .iter()
            .filter(|name| !names.contains(name.as_str()))
            .cloned()
            .collect();
        if let Ok(mut targets) = self.bpf_cost_targets.lock() {
            targets.retain(|name, _| names.contains(name.as_str()));
        }
        for name in &gone {
            known.remove(name);
            let label = PluginLabel {
                plugin: name.clone(),
            };
            for family in [
                &self.calls,
                &self.traps,
                &self.timeouts,
                &self.call_errors,
                &self.restarts,
                &self.hits,
                &self.denied_reads,
                &self.documents_saved,
                &self.documents_dropped,
                &self.documents_rejected,
                &self.metrics_dropped,
                &self.bpf_records,
                &self.bpf_ring_full,
                &self.bpf_rate_limited,
                &self.bpf_perf_lost,
                &self.bpf_denied,
                &self.bpf_runs,
            ] {
                family.remove(&label);
            }
            self.bpf_run_seconds.remove(&label);
            self.scrape_duration.remove(&CollectorLabel {
                collector: name.clone(),
            });
            self.scrape_success.remove(&CollectorLabel {
                collector: name.clone(),
            });
        }
        // State and info series carry more labels (a replaced plugin's old digest): the
        // families are small, so they are rebuilt for the loaded plugins on each scrape.
        self.state.clear();
        self.info.clear();
    }
}
