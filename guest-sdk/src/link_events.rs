//! Network device state changes from the host's rtnetlink link subscription
//! (`RTNLGRP_LINK`), read with a cursor: the host owns the one socket and a bounded queue,
//! the plugin polls it from a timer (the `net` capability, plus the operator's
//! `policy.net_allow`). Mirrors the host's `host_api/link_events.rs`.
//!
//! ```ignore
//! let mut cursor = link_events::Cursor::new();
//! let first = cursor.poll()?; // resync: every current device
//! // ... later, from a timer:
//! for change in cursor.poll()?.changes {
//!     if change.flags & link_events::IFF_LOWER_UP == 0 { /* carrier lost */ }
//! }
//! ```
//!
//! A set with `resync` holds every current device instead of notifications (the first call,
//! a reader that fell behind the host's queue, notifications the kernel dropped): compare it
//! with what you knew. `lost` counts notifications the host lost since it subscribed.

use crate::bindings::kpulse::plugin::link_events as raw;
use crate::error::{Error, Result};

pub use raw::{ChangeSet, LinkChange};

/// `IFF_UP`: the admin state of [`LinkChange::flags`].
pub const IFF_UP: u32 = 0x1;
/// `IFF_LOWER_UP`: the carrier (reported while the device is admin up).
pub const IFF_LOWER_UP: u32 = 0x1_0000;

/// What changed after generation `since` (0: every current device, as a resync).
pub fn changes(since: u64) -> Result<ChangeSet> {
    raw::changes(since).map_err(|e| Error::host(e.code, format!("link events: {}", e.message)))
}

/// A reader's position in the host's queue.
#[derive(Debug, Default, Clone, Copy)]
pub struct Cursor {
    generation: u64,
}

impl Cursor {
    /// A cursor whose first [`Cursor::poll`] is a resync.
    pub fn new() -> Self {
        Self::default()
    }

    /// The changes since the last poll; advances the cursor.
    pub fn poll(&mut self) -> Result<ChangeSet> {
        let set = changes(self.generation)?;
        self.generation = set.generation;
        Ok(set)
    }
}
