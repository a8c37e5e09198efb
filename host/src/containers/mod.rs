//! The container registry: every container and other workload on the host, from several
//! discovery sources merged (cgroupfs, containerd's bundles and API in every namespace,
//! Docker), indexed by the keys BPF records carry (cgroup id, memcg id, netns, mntns, pid).
//! The only privileged part of container awareness: guests see it through the `containers`
//! WIT interface (`host_api/containers.rs`), never the runtime sockets.
//!
//! ```text
//!  cgroupfs (inotify) ─┐
//!  bundles (state dirs)├─▶ Observation ─▶ Table::next ─▶ published Arc<Table> ─▶ resolve/list
//!  containerd API ─────┤    (discovery task)              + change log ──────▶ changes(since)
//!  Docker API ─────────┘
//! ```

mod bundles;
pub mod cgroup_path;
mod cgroupfs;
pub mod config;
pub mod containerd;
pub mod docker;
pub mod huatuo;
pub mod metrics;
pub mod model;
pub mod oci;
mod registry;
mod runtimes;
pub mod sys;
pub mod table;

pub use config::ContainersConfig;
pub use metrics::ContainerMetrics;
pub use model::{ChangeKind, Container, Key, Pod, Qos, Runtime, State};
pub use registry::{Attribution, Change, ChangeSet, Registry};

/// Whether `policy.containers_allow` lets plugin `name` (file digest `sha256`) read the
/// registry: `*`, its name, or `sha256:<digest>`.
pub fn policy_allows(allow: &[String], name: &str, sha256: &str) -> bool {
    let digest = format!("sha256:{sha256}");
    allow
        .iter()
        .any(|entry| entry == "*" || entry == name || *entry == digest)
}
