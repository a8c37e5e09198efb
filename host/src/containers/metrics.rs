//! The registry's self-metrics, registered once with the agent's registry.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::model::Runtime;

/// `{runtime="..."}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuntimeLabel {
    pub runtime: &'static str,
}

/// `{source="..."}`: `cgroupfs`, `bundle`, `containerd`, `docker`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct ContainerMetrics {
    known: Family<RuntimeLabel, Gauge>,
    errors: Family<SourceLabel, Counter<u64, AtomicU64>>,
    misses: Counter<u64, AtomicU64>,
    passes: Counter<u64, AtomicU64>,
}

impl ContainerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "containers",
            "Running workloads the container registry knows, per runtime.",
            metrics.known.clone(),
        );
        registry.register(
            "container_discovery_errors",
            "Failed reads or calls of a discovery source (the source is retried with back-off).",
            metrics.errors.clone(),
        );
        registry.register(
            "container_resolve_misses",
            "Keys or ids asked of the registry that named no known workload.",
            metrics.misses.clone(),
        );
        registry.register(
            "container_discovery_passes",
            "Discovery passes run (event-triggered and periodic).",
            metrics.passes.clone(),
        );
        for runtime in Runtime::ALL {
            let _ = metrics.known.get_or_create(&RuntimeLabel {
                runtime: runtime.as_str(),
            });
        }
        metrics
    }

    pub fn set_known(&self, runtime: Runtime, count: u64) {
        self.known
            .get_or_create(&RuntimeLabel {
                runtime: runtime.as_str(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn error(&self, source: &'static str) {
        self.errors.get_or_create(&SourceLabel { source }).inc();
    }

    pub fn misses(&self, count: u64) {
        if count > 0 {
            self.misses.inc_by(count);
        }
    }

    pub fn pass(&self) {
        self.passes.inc();
    }
}
