//! Network devices, qdiscs and cgroup task counts from the kernel's netlink families,
//! queried by the host (the `net` capability, plus the operator's `policy.net_allow`): a
//! plugin never opens a socket. Mirrors the host's `host_api/net.rs`.
//!
//! ```ignore
//! for q in net::qdiscs()?.iter().filter(|q| q.is_root()) {
//!     out.push(metric::counter("bytes", q.bytes as f64, "Bytes sent.")
//!         .label("device", &q.device).label("kind", &q.kind));
//! }
//! let counts = net::cgroup_stats("/sys/fs/cgroup/cpu/docker/<id>")?; // cgroup v1 only
//! ```
//!
//! [`dcb_pfc`] and [`rdma_links`] fail with a not-supported error
//! ([`crate::Error::is_not_supported`]) where the device or kernel lacks DCB or RDMA.

use crate::bindings::kpulse::plugin::net as raw;
use crate::error::{Error, Result};

pub use raw::{Link, LinkStats, OperState, Pfc, Qdisc, RdmaLink, TaskCounts};

/// `TC_H_ROOT`: the parent of a root qdisc.
pub const TC_H_ROOT: u32 = u32::MAX;
/// `IFF_UP`, `IFF_LOOPBACK`, `IFF_RUNNING` of [`Link::flags`].
pub const IFF_UP: u32 = 0x1;
pub const IFF_LOOPBACK: u32 = 0x8;
pub const IFF_RUNNING: u32 = 0x40;

fn host_error(context: &str, err: crate::bindings::kpulse::plugin::types::Error) -> Error {
    Error::host(err.code, format!("{context}: {}", err.message))
}

/// Every network device of the host's network namespace, with its stats64 counters.
pub fn links() -> Result<Vec<Link>> {
    raw::links().map_err(|e| host_error("list links", e))
}

/// Every qdisc of the host's network namespace, root and child.
pub fn qdiscs() -> Result<Vec<Qdisc>> {
    raw::qdiscs().map_err(|e| host_error("list qdiscs", e))
}

/// The task counts of a cgroup v1 directory the plugin may read (taskstats
/// `CGROUPSTATS`); not-supported for a cgroup v2 directory.
pub fn cgroup_stats(path: &str) -> Result<TaskCounts> {
    raw::cgroup_stats(path).map_err(|e| host_error(&format!("cgroup-stats {path}"), e))
}

/// IEEE PFC frame counters of `device` per priority.
pub fn dcb_pfc(device: &str) -> Result<Pfc> {
    raw::dcb_pfc(device).map_err(|e| host_error(&format!("dcb-pfc {device}"), e))
}

/// Every RDMA device with its ports' hardware counters.
pub fn rdma_links() -> Result<Vec<RdmaLink>> {
    raw::rdma_links().map_err(|e| host_error("list RDMA links", e))
}

impl Qdisc {
    /// Attached at the device's root (HUATUO's `netdev_qdisc` exports only these).
    pub fn is_root(&self) -> bool {
        self.parent == TC_H_ROOT
    }
}
