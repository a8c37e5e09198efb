//! The profiler's self-metrics, registered once with the agent's registry.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::model::{Mode, ProfileError};

/// `{mode="on_cpu"|"off_cpu"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: &'static str,
}

/// `{reason="busy"|"invalid"|"not_found"|"not_supported"|"io"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

type Count = Counter<u64, AtomicU64>;

#[derive(Clone, Debug, Default)]
pub struct ProfilerMetrics {
    running: Gauge,
    sessions: Family<ModeLabel, Count>,
    refused: Family<ReasonLabel, Count>,
    failed: Count,
    samples: Count,
    lost: Count,
}

pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::OnCpu => "on_cpu",
        Mode::OffCpu => "off_cpu",
    }
}

fn reason(err: &ProfileError) -> &'static str {
    match err {
        ProfileError::Busy { .. } => "busy",
        ProfileError::Invalid(_) => "invalid",
        ProfileError::NotFound(_) => "not_found",
        ProfileError::NotSupported(_) => "not_supported",
        ProfileError::Io(_) => "io",
    }
}

impl ProfilerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "profiler_sessions_running",
            "CPU profile sessions sampling or symbolizing now.",
            metrics.running.clone(),
        );
        registry.register(
            "profiler_sessions",
            "CPU profile sessions started, per mode.",
            metrics.sessions.clone(),
        );
        registry.register(
            "profiler_sessions_refused",
            "CPU profile sessions refused at start, per reason (busy: the session limit).",
            metrics.refused.clone(),
        );
        registry.register(
            "profiler_sessions_failed",
            "CPU profile sessions that started but failed (load, attach or read).",
            metrics.failed.clone(),
        );
        registry.register(
            "profiler_samples",
            "Stack samples (on-cpu) and switch-ins (off-cpu) taken by finished sessions.",
            metrics.samples.clone(),
        );
        registry.register(
            "profiler_lost_samples",
            "Samples finished sessions could not keep: the stack or counts map was full.",
            metrics.lost.clone(),
        );
        for mode in [Mode::OnCpu, Mode::OffCpu] {
            let _ = metrics.sessions.get_or_create(&ModeLabel {
                mode: mode_name(mode),
            });
        }
        metrics
    }

    pub fn refused(&self, err: &ProfileError) {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: reason(err),
            })
            .inc();
    }

    pub fn started(&self, mode: Mode) {
        self.running.inc();
        self.sessions
            .get_or_create(&ModeLabel {
                mode: mode_name(mode),
            })
            .inc();
    }

    /// A session's slot was released (its thread ended, or never started).
    pub fn released(&self) {
        self.running.dec();
    }

    pub fn ended(&self, result: Result<(u64, u64), ()>) {
        match result {
            Ok((samples, lost)) => {
                self.samples.inc_by(samples);
                self.lost.inc_by(lost);
            }
            Err(()) => {
                self.failed.inc();
            }
        }
    }
}
