//! `kpulse:plugin/net`: netlink queries run by the host ([`crate::net`]) behind the `net`
//! capability and `policy.net_allow`, converted to WIT records. The guest never gets a
//! socket. Calls block the instance's actor thread (never the runtime), each bounded by the
//! core's socket timeout. A cgroup directory is opened through [`crate::fsaccess`], so the
//! plugin's `read:` grant and the secret rules apply to it like to any read.

use crate::net::{self as core, NetError};
use crate::wit::net as wit;
use crate::wit::{ErrorCode, types};

use super::HostState;

type WitResult<T> = wasmtime::Result<Result<T, types::Error>>;

fn error(err: NetError) -> types::Error {
    let code = match &err {
        NetError::NotSupported(_) => ErrorCode::NotSupported,
        NetError::NotFound(_) => ErrorCode::NotFound,
        NetError::Invalid(_) => ErrorCode::InvalidArgument,
        NetError::Io(_) => ErrorCode::Io,
    };
    types::Error {
        code,
        message: err.to_string(),
    }
}

fn oper_state(state: core::OperState) -> wit::OperState {
    match state {
        core::OperState::Unknown => wit::OperState::Unknown,
        core::OperState::NotPresent => wit::OperState::NotPresent,
        core::OperState::Down => wit::OperState::Down,
        core::OperState::LowerLayerDown => wit::OperState::LowerLayerDown,
        core::OperState::Testing => wit::OperState::Testing,
        core::OperState::Dormant => wit::OperState::Dormant,
        core::OperState::Up => wit::OperState::Up,
    }
}

fn stats(s: core::LinkStats) -> wit::LinkStats {
    wit::LinkStats {
        rx_packets: s.rx_packets,
        tx_packets: s.tx_packets,
        rx_bytes: s.rx_bytes,
        tx_bytes: s.tx_bytes,
        rx_errors: s.rx_errors,
        tx_errors: s.tx_errors,
        rx_dropped: s.rx_dropped,
        tx_dropped: s.tx_dropped,
        multicast: s.multicast,
        collisions: s.collisions,
        rx_length_errors: s.rx_length_errors,
        rx_over_errors: s.rx_over_errors,
        rx_crc_errors: s.rx_crc_errors,
        rx_frame_errors: s.rx_frame_errors,
        rx_fifo_errors: s.rx_fifo_errors,
        rx_missed_errors: s.rx_missed_errors,
        tx_aborted_errors: s.tx_aborted_errors,
        tx_carrier_errors: s.tx_carrier_errors,
        tx_fifo_errors: s.tx_fifo_errors,
        tx_heartbeat_errors: s.tx_heartbeat_errors,
        tx_window_errors: s.tx_window_errors,
        rx_compressed: s.rx_compressed,
        tx_compressed: s.tx_compressed,
        rx_nohandler: s.rx_nohandler,
    }
}

fn link(l: core::Link) -> wit::Link {
    wit::Link {
        ifindex: l.ifindex,
        name: l.name,
        kind: l.kind,
        operstate: oper_state(l.operstate),
        flags: l.flags,
        mtu: l.mtu,
        stats: l.stats.map(stats),
    }
}

fn qdisc(q: core::Qdisc) -> wit::Qdisc {
    wit::Qdisc {
        ifindex: q.ifindex,
        device: q.device,
        kind: q.kind,
        handle: q.handle,
        parent: q.parent,
        bytes: q.bytes,
        packets: q.packets,
        drops: q.drops,
        requeues: q.requeues,
        overlimits: q.overlimits,
        qlen: q.qlen,
        backlog: q.backlog,
    }
}

impl HostState {
    fn net_allowed(&self) -> Result<(), types::Error> {
        self.require_capability(self.identity.net, "net", "query netlink")
    }

    /// Runs a query after the capability check, logging refusals at debug.
    fn net_query<T, U>(
        &self,
        what: &str,
        query: impl FnOnce() -> Result<T, NetError>,
        convert: impl FnOnce(T) -> U,
    ) -> Result<U, types::Error> {
        self.net_allowed()?;
        query().map(convert).map_err(|err| {
            tracing::debug!(plugin = %self.identity.name, query = what, %err, "net query failed");
            error(err)
        })
    }
}

impl wit::Host for HostState {
    fn links(&mut self) -> WitResult<Vec<wit::Link>> {
        Ok(self.net_query("links", core::links, |links| {
            links.into_iter().map(link).collect()
        }))
    }

    fn qdiscs(&mut self) -> WitResult<Vec<wit::Qdisc>> {
        Ok(self.net_query("qdiscs", core::qdiscs, |qdiscs| {
            qdiscs.into_iter().map(qdisc).collect()
        }))
    }

    fn cgroup_stats(&mut self, path: String) -> WitResult<wit::TaskCounts> {
        if let Err(err) = self.net_allowed() {
            return Ok(Err(err));
        }
        let dir = match self.services.fs.open_dir(&self.identity.grant, &path) {
            Ok(dir) => dir,
            Err(err) => {
                return Ok(Err(types::Error {
                    code: self.read_refused(&err),
                    message: format!("cgroup-stats: {err}"),
                }));
            }
        };
        Ok(self.net_query(
            "cgroup-stats",
            || core::cgroup_stats(&dir, &path),
            |s| wit::TaskCounts {
                nr_sleeping: s.nr_sleeping,
                nr_running: s.nr_running,
                nr_stopped: s.nr_stopped,
                nr_uninterruptible: s.nr_uninterruptible,
                nr_io_wait: s.nr_io_wait,
            },
        ))
    }

    fn dcb_pfc(&mut self, device: String) -> WitResult<wit::Pfc> {
        Ok(self.net_query(
            "dcb-pfc",
            || core::dcb_pfc(&device),
            |p| wit::Pfc {
                enabled: p.enabled,
                requests: p.requests,
                indications: p.indications,
            },
        ))
    }

    fn rdma_links(&mut self) -> WitResult<Vec<wit::RdmaLink>> {
        Ok(self.net_query("rdma-links", core::rdma_links, |links| {
            links
                .into_iter()
                .map(|l| wit::RdmaLink {
                    index: l.index,
                    name: l.name,
                    node_guid: l.node_guid,
                    num_ports: l.num_ports,
                    counters: l.counters,
                })
                .collect()
        }))
    }
}
