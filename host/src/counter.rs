//! Counters and gauges the agent registers once with its metrics registry and updates
//! lock-free from anywhere (actor threads, host imports, the BPF readers). A leaf: it knows
//! only prometheus-client.
//!
//! [`Count`] and [`Level`] hand out the atomic itself (`Deref<Target = AtomicU64>`), so the
//! hot paths do one relaxed `fetch_add` and the registry reads the same value on a scrape.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// A monotonic counter (exposed with `_total`).
#[derive(Debug, Clone, Default)]
pub struct Count(pub Counter<u64, AtomicU64>);

impl std::ops::Deref for Count {
    type Target = AtomicU64;

    fn deref(&self) -> &AtomicU64 {
        self.0.inner()
    }
}

/// A value that goes up and down (a gauge of whole units: bytes, objects).
#[derive(Debug, Clone, Default)]
pub struct Level(pub Gauge<u64, AtomicU64>);

impl std::ops::Deref for Level {
    type Target = AtomicU64;

    fn deref(&self) -> &AtomicU64 {
        self.0.inner()
    }
}
