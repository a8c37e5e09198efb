//! Metric samples returned from `update`: HUATUO's `NewGaugeData`/`NewCounterData` and their
//! container variants.
//!
//! The host exposes `<prefix>_<plugin>_<name>`, or `<prefix>_<plugin>_container_<name>` for a
//! container-level sample, with `region` and `host` labels added by the host.

use crate::bindings::kpulse::plugin::types::{self as raw, MetricKind};

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    name: String,
    help: String,
    kind: MetricKind,
    value: f64,
    labels: Vec<(String, String)>,
    container_id: Option<String>,
}

/// A host-level gauge.
pub fn gauge(name: &str, value: f64, help: &str) -> Metric {
    Metric::new(name, value, help, MetricKind::Gauge)
}

/// A host-level counter. Do not end the name in `_total`: the exposition adds it.
pub fn counter(name: &str, value: f64, help: &str) -> Metric {
    Metric::new(name, value, help, MetricKind::Counter)
}

/// A container-level gauge (HUATUO's `NewContainerGaugeData`).
pub fn container_gauge(container_id: &str, name: &str, value: f64, help: &str) -> Metric {
    gauge(name, value, help).container(container_id)
}

/// A container-level counter (HUATUO's `NewContainerCounterData`).
pub fn container_counter(container_id: &str, name: &str, value: f64, help: &str) -> Metric {
    counter(name, value, help).container(container_id)
}

impl Metric {
    fn new(name: &str, value: f64, help: &str, kind: MetricKind) -> Self {
        Self {
            name: name.to_owned(),
            help: help.to_owned(),
            kind,
            value,
            labels: Vec::new(),
            container_id: None,
        }
    }

    /// Adds a label. `region`, `host` and `container_id` belong to the host.
    pub fn label(mut self, name: &str, value: impl Into<String>) -> Self {
        self.labels.push((name.to_owned(), value.into()));
        self
    }

    /// Makes the sample container-level.
    pub fn container(mut self, container_id: &str) -> Self {
        self.container_id = Some(container_id.to_owned());
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn value(&self) -> f64 {
        self.value
    }

    pub fn labels(&self) -> &[(String, String)] {
        &self.labels
    }
}

impl From<Metric> for raw::Metric {
    fn from(m: Metric) -> Self {
        raw::Metric {
            name: m.name,
            help: m.help,
            kind: m.kind,
            value: m.value,
            labels: m.labels,
            container_id: m.container_id,
        }
    }
}
