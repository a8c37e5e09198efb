//! `[profiler]`: how many sessions, how long, how big. Every bound here caps a host resource:
//! perf events per CPU, kernel map memory, and the host memory a profile holds.

use serde::Deserialize;

use crate::config::types::Bounded;

type Sessions = Bounded<1, 16>;
type DurationMs = Bounded<100, 600_000>;
type FrequencyHz = Bounded<1, 10_000>;
/// Distinct stacks (and distinct (process, stack) pairs) one session keeps.
type Stacks = Bounded<64, 65_536>;

/// The host's CPU profiler.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfilerConfig {
    /// Offer the `profiler` interface and the tasks API; off, every start is `not-supported`.
    pub enabled: bool,
    /// Sessions at once (HUATUO runs one `perf` at a time); beyond it `start` answers busy.
    #[serde(deserialize_with = "Sessions::field")]
    pub max_sessions: u64,
    /// The longest session, in milliseconds.
    #[serde(deserialize_with = "DurationMs::field")]
    pub max_duration_ms: u64,
    /// The highest sampling frequency, in Hz per CPU.
    #[serde(deserialize_with = "FrequencyHz::field")]
    pub max_frequency_hz: u64,
    /// Size of the kernel's stack map and counts map of one session: about 1 KiB of kernel
    /// memory per stack, and the bound on what a profile holds in the host.
    #[serde(deserialize_with = "Stacks::field")]
    pub max_stacks: u64,
}

impl Default for ProfilerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_sessions: 2,
            max_duration_ms: 60_000,
            max_frequency_hz: 999,
            max_stacks: 4096,
        }
    }
}
