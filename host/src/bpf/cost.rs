//! What each consumer's BPF programs cost the kernel, measured without taxing every run.
//!
//! The kernel counts a program's run time and run count only while someone holds
//! `BPF_ENABLE_STATS` (or `kernel.bpf_stats_enabled` is 1), and counting adds two clock
//! reads to every run (~20 ns here). So the agent does not leave it on: [`sample_window`]
//! enables it for a short window now and then, snapshots the programs before and after,
//! and credits each consumer with what its programs ran inside the window (Tetragon's
//! overhead metrics do the same). The totals are therefore *sampled*: divide them by the
//! window time ([`CostWindows::seconds`]) for the share of a CPU the programs used.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use super::{BpfCounters, BpfError};

/// The programs one consumer loaded and what the sampled windows measured of them.
#[derive(Debug, Default)]
pub struct ProgramCost {
    /// Kernel ids of the consumer's programs (ids are not reused soon: `idr_alloc_cyclic`).
    /// Ids no longer loaded are pruned by the next window.
    ids: Mutex<Vec<u32>>,
}

impl ProgramCost {
    /// Remembers a loaded program of this consumer.
    pub fn add(&self, id: u32) {
        let mut ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
        if !ids.contains(&id) {
            ids.push(id);
        }
    }

    /// Whether the consumer has loaded no program yet.
    pub fn is_empty(&self) -> bool {
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    fn ids(&self) -> Vec<u32> {
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn retain(&self, loaded: &HashMap<u32, (u64, u64)>) {
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|id| loaded.contains_key(id));
    }
}

/// The agent-wide side of the sampling: how long stats were on, and how often it failed.
#[derive(Debug, Clone, Default)]
pub struct CostWindows {
    /// Seconds of sampled windows (`bpf_cost_sampled_seconds_total`).
    pub seconds: Counter<f64, std::sync::atomic::AtomicU64>,
}

/// Run time (ns) and run count of every loaded program, by id.
fn snapshot() -> HashMap<u32, (u64, u64)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|info| {
            let ns = u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
            (info.id(), (ns, info.run_count()))
        })
        .collect()
}

/// Holds run-time statistics on for `window`, then credits each consumer of `targets` with
/// the run time and runs its programs accumulated meanwhile. Blocks the calling thread
/// for `window`. Fails (and counts nothing) without the privilege to enable statistics.
pub fn sample_window(
    window: Duration,
    targets: &[Arc<BpfCounters>],
    windows: &CostWindows,
) -> Result<(), BpfError> {
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|err| BpfError::io(format!("cannot enable BPF run-time statistics: {err}")))?;
    let started = Instant::now();
    let before = snapshot();
    std::thread::sleep(window);
    let after = snapshot();
    drop(stats);
    windows.seconds.inc_by(started.elapsed().as_secs_f64());
    for target in targets {
        let (mut ns, mut runs) = (0u64, 0u64);
        for id in target.programs.ids() {
            let (Some(&(ns0, runs0)), Some(&(ns1, runs1))) = (before.get(&id), after.get(&id))
            else {
                continue;
            };
            ns = ns.saturating_add(ns1.saturating_sub(ns0));
            runs = runs.saturating_add(runs1.saturating_sub(runs0));
        }
        target.programs.retain(&after);
        if runs > 0 {
            target.run_seconds.inc_by(ns as f64 / 1e9);
            target.runs.fetch_add(runs, Ordering::Relaxed);
        }
    }
    Ok(())
}
