//! Per-instance resource caps enforced by wasmtime: linear memory and tables.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use wasmtime::{ResourceLimiter, Result as WasmResult};

use crate::plugins::stats::PluginStats;

/// Table elements one instance may hold.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Caps linear memory and records its size for `/metrics`.
pub struct MemoryLimiter {
    limit: usize,
    /// Set when the guest asked for more than its cap; the trap is then reported as such.
    pub exceeded: bool,
    stats: Arc<PluginStats>,
}

impl MemoryLimiter {
    pub fn new(memory_bytes: u64, stats: Arc<PluginStats>) -> Self {
        Self {
            limit: usize::try_from(memory_bytes).unwrap_or(usize::MAX),
            exceeded: false,
            stats,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> WasmResult<bool> {
        if desired > self.limit {
            self.exceeded = true;
            return Err(wasmtime::format_err!(
                "memory limit exceeded: the guest asked for {desired} bytes, the cap is {} bytes",
                self.limit
            ));
        }
        self.stats
            .memory_bytes
            .store(desired as u64, Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> WasmResult<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
