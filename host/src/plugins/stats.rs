//! Per-plugin counters and the state shown in `/plugins` and on `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use serde::Serialize;

use crate::bpf::BpfCounters;
use crate::counter::{Count, Level};

/// Counters a plugin accumulates over all its instances. Updated lock-free from the actor
/// thread and the host imports; read by `/plugins`, and by `/metrics` through the families
/// they are registered in (`metrics::AgentMetrics::plugin_stats`). `Default` gives
/// unregistered ones (throw-away `describe` instances, benches).
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Guest calls made (init, start, timers, updates).
    pub calls: Count,
    /// Calls that ended in a trap (panic, memory cap, deadline, bad code).
    pub traps: Count,
    /// Traps caused by the per-call deadline.
    pub timeouts: Count,
    /// Calls where the guest returned an error value.
    pub call_errors: Count,
    /// Re-instantiations after a failure.
    pub restarts: Count,
    /// `start` calls (HUATUO's "hit" count).
    pub hits: Count,
    /// File reads refused by capability checks.
    pub denied_reads: Count,
    pub documents_saved: Count,
    /// Documents dropped because the storage queue was full.
    pub documents_dropped: Count,
    /// Documents refused as malformed.
    pub documents_rejected: Count,
    /// Metric samples dropped as malformed or over the series cap.
    pub metrics_dropped: Count,
    /// Linear memory of the current instance, in bytes.
    pub memory_bytes: Level,
    /// BPF objects loaded by the current instance.
    pub bpf_objects: Level,
    /// Subscriptions, records and drops of the plugin's BPF objects.
    pub bpf: Arc<BpfCounters>,
    /// BPF requests refused by policy.
    pub bpf_denied: Count,
    /// Duration of the last `update`, in nanoseconds.
    pub last_update_ns: AtomicU64,
    pub last_update_ok: AtomicBool,
}

/// Lifecycle state of a plugin, as `/plugins` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginState {
    /// Instantiating, initialising or starting.
    Starting,
    Running,
    /// `init` answered "not supported on this host": not an error.
    Inactive,
    /// The last instance failed; a restart is scheduled.
    Failed,
    /// Too many consecutive failures: waits for `PUT /plugins/{name}/start`.
    Quarantined,
    /// Stopped by the operator, by the denylist, or being unloaded.
    Stopped,
}

impl PluginState {
    /// All states, for the one-hot `plugin_state` metric.
    pub const ALL: [PluginState; 6] = [
        PluginState::Starting,
        PluginState::Running,
        PluginState::Inactive,
        PluginState::Failed,
        PluginState::Quarantined,
        PluginState::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PluginState::Starting => "starting",
            PluginState::Running => "running",
            PluginState::Inactive => "inactive",
            PluginState::Failed => "failed",
            PluginState::Quarantined => "quarantined",
            PluginState::Stopped => "stopped",
        }
    }
}

/// Mutable status, behind a mutex that is never held across an await or a guest call.
#[derive(Debug, Clone)]
pub struct PluginStatus {
    pub state: PluginState,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
}

impl Default for PluginStatus {
    fn default() -> Self {
        Self {
            state: PluginState::Starting,
            last_error: None,
            consecutive_failures: 0,
        }
    }
}
