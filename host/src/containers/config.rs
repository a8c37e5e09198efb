//! `[containers]`: where the registry looks, how long it remembers, what leaves the host.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::types::Bounded;

/// Grace period: 0 s to one hour.
type GraceSecs = Bounded<0, 3600>;
/// Full rescans: 1 s to one hour.
type RescanSecs = Bounded<1, 3600>;
/// Runtime API calls: 10 ms to one minute.
type ApiTimeoutMs = Bounded<10, 60_000>;

/// The container registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainersConfig {
    /// Discover containers and other workloads; off, the registry stays empty.
    pub enabled: bool,
    /// containerd API sockets; each is asked about every namespace it has. Absent sockets
    /// are skipped (and retried with back-off).
    pub containerd_sockets: Vec<PathBuf>,
    /// containerd `state` directories whose shim bundles are read directly (no API): the
    /// system containerd's, and the one Docker starts for itself.
    pub containerd_state_dirs: Vec<PathBuf>,
    /// Docker Engine API socket; empty for none.
    pub docker_socket: PathBuf,
    /// How long a stopped container still resolves, in seconds (late events).
    #[serde(deserialize_with = "GraceSecs::field")]
    pub grace_period_secs: u64,
    /// Full rescan period, in seconds; cgroup and runtime events trigger passes in between.
    #[serde(deserialize_with = "RescanSecs::field")]
    pub rescan_interval_secs: u64,
    /// Timeout of one runtime API call, in milliseconds.
    #[serde(deserialize_with = "ApiTimeoutMs::field")]
    pub api_timeout_ms: u64,
    /// Container labels that leave the host (guests, metric labels `container_label_<name>`):
    /// exact names, or prefixes ending in `*`. `/containers` shows all labels.
    pub label_allow: Vec<String>,
}

impl Default for ContainersConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            containerd_sockets: vec![PathBuf::from("/run/containerd/containerd.sock")],
            containerd_state_dirs: vec![
                PathBuf::from("/run/containerd"),
                PathBuf::from("/run/docker/containerd/daemon"),
            ],
            docker_socket: PathBuf::from("/var/run/docker.sock"),
            grace_period_secs: 30,
            rescan_interval_secs: 30,
            api_timeout_ms: 2000,
            label_allow: Vec::new(),
        }
    }
}
