//! Read-only netlink queries for the `net` interface, free of WIT types: network devices
//! and their stats64 counters, qdiscs (rtnetlink), DCB priority flow control, RDMA device
//! counters (`nldev`), and the task counts of a cgroup v1 directory (taskstats
//! `CGROUPSTATS`). All in the host's network namespace. [`link_events`] is the one
//! subscription: link notifications for the `link-events` interface.
//!
//! Calls block, each for at most [`netlink::TIMEOUT`]: they run on the calling plugin's own
//! actor thread, never on the tokio runtime.

pub mod link_events;
pub mod netlink;
mod rdma;
mod rtnetlink;
mod taskstats;

pub use rdma::rdma_links;
pub use rtnetlink::{dcb_pfc, links, qdiscs};
pub use taskstats::cgroup_stats;

/// Why a query failed. Mirrors the WIT `error-code` cases it maps to.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NetError {
    /// The kernel or the device cannot do it (no DCB, no RDMA, a cgroup v2 directory).
    #[error("not supported: {0}")]
    NotSupported(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("{0}")]
    Io(String),
}

impl NetError {
    /// An error from a netlink errno, `what` being the query and `during` the step.
    pub fn from_errno(what: &str, during: &str, err: &std::io::Error) -> Self {
        let message = format!("{what}: {during}: {err}");
        match err.raw_os_error() {
            Some(libc::EOPNOTSUPP | libc::EPROTONOSUPPORT | libc::ENOSYS) => {
                NetError::NotSupported(message)
            }
            Some(libc::ENODEV | libc::ENOENT | libc::ESRCH) => NetError::NotFound(message),
            Some(libc::EINVAL) => NetError::Invalid(message),
            Some(libc::EAGAIN) => NetError::Io(format!(
                "{what}: {during}: no answer within {:?}",
                netlink::TIMEOUT
            )),
            _ => NetError::Io(message),
        }
    }
}

/// RFC 2863 operational state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperState {
    Unknown,
    NotPresent,
    Down,
    LowerLayerDown,
    Testing,
    Dormant,
    Up,
}

/// `struct rtnl_link_stats64` (without `rx_otherhost_dropped`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
    pub multicast: u64,
    pub collisions: u64,
    pub rx_length_errors: u64,
    pub rx_over_errors: u64,
    pub rx_crc_errors: u64,
    pub rx_frame_errors: u64,
    pub rx_fifo_errors: u64,
    pub rx_missed_errors: u64,
    pub tx_aborted_errors: u64,
    pub tx_carrier_errors: u64,
    pub tx_fifo_errors: u64,
    pub tx_heartbeat_errors: u64,
    pub tx_window_errors: u64,
    pub rx_compressed: u64,
    pub tx_compressed: u64,
    pub rx_nohandler: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// `IFLA_INFO_KIND`; empty for a physical device.
    pub kind: String,
    pub operstate: OperState,
    pub flags: u32,
    pub mtu: u32,
    pub stats: Option<LinkStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Qdisc {
    pub ifindex: u32,
    pub device: String,
    pub kind: String,
    pub handle: u32,
    pub parent: u32,
    pub bytes: u64,
    pub packets: u64,
    pub drops: u64,
    pub requeues: u64,
    pub overlimits: u64,
    pub qlen: u64,
    pub backlog: u64,
}

/// `struct cgroupstats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    pub nr_sleeping: u64,
    pub nr_running: u64,
    pub nr_stopped: u64,
    pub nr_uninterruptible: u64,
    pub nr_io_wait: u64,
}

/// IEEE 802.1Qbb PFC state and frame counters of one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pfc {
    pub enabled: u8,
    /// Sent, per priority 0..7.
    pub requests: Vec<u64>,
    /// Received, per priority 0..7.
    pub indications: Vec<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RdmaLink {
    pub index: u32,
    pub name: String,
    pub node_guid: u64,
    pub num_ports: u32,
    /// `(port, counter, value)`.
    pub counters: Vec<(u32, String, u64)>,
}
