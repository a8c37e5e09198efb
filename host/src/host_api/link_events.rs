//! `kpulse:plugin/link-events`: the host's rtnetlink link subscription ([`crate::net::link_events`])
//! behind the `net` capability and `policy.net_allow`, converted to WIT records. A call
//! returns at once from the shared queue; only a resync (the first call, a reader that fell
//! behind) dumps the links, bounded by the netlink timeout.

use crate::net::OperState;
use crate::net::link_events::{self as core, LinkChange};
use crate::wit::link_events as wit;
use crate::wit::net::OperState as WitOperState;
use crate::wit::{ErrorCode, types};

use super::HostState;

fn oper_state(state: Option<OperState>) -> WitOperState {
    match state {
        None | Some(OperState::Unknown) => WitOperState::Unknown,
        Some(OperState::NotPresent) => WitOperState::NotPresent,
        Some(OperState::Down) => WitOperState::Down,
        Some(OperState::LowerLayerDown) => WitOperState::LowerLayerDown,
        Some(OperState::Testing) => WitOperState::Testing,
        Some(OperState::Dormant) => WitOperState::Dormant,
        Some(OperState::Up) => WitOperState::Up,
    }
}

fn change(c: LinkChange) -> wit::LinkChange {
    wit::LinkChange {
        generation: c.generation,
        time_ns: c.time_ns,
        removed: c.removed,
        ifindex: c.ifindex,
        name: c.name,
        kind: c.kind,
        flags: c.flags,
        change_mask: c.change_mask,
        operstate: oper_state(c.operstate),
        mac: c.mac,
        driver: c.driver,
        driver_version: c.driver_version,
        firmware_version: c.firmware_version,
    }
}

impl wit::Host for HostState {
    fn changes(&mut self, since: u64) -> wasmtime::Result<Result<wit::ChangeSet, types::Error>> {
        if let Err(err) = self.require_capability(self.identity.net, "net", "read link events") {
            return Ok(Err(err));
        }
        Ok(core::changes(since)
            .map(|set| wit::ChangeSet {
                generation: set.generation,
                changes: set.changes.into_iter().map(change).collect(),
                resync: set.resync,
                lost: set.lost,
            })
            .map_err(|err| {
                tracing::debug!(plugin = %self.identity.name, %err, "link events failed");
                let code = match &err {
                    crate::net::NetError::NotSupported(_) => ErrorCode::NotSupported,
                    crate::net::NetError::NotFound(_) => ErrorCode::NotFound,
                    crate::net::NetError::Invalid(_) => ErrorCode::InvalidArgument,
                    crate::net::NetError::Io(_) => ErrorCode::Io,
                };
                types::Error {
                    code,
                    message: err.to_string(),
                }
            }))
    }
}
