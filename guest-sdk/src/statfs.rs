//! Filesystem usage and the host's mount table (the `statfs` capability). Mirrors the host's
//! `host_api/statfs.rs`.
//!
//! [`mounts`] is the host's table (its init's `mountinfo`); [`statfs`] answers only for a
//! mount point of that table, and fails at once with an `io` error for a mount whose earlier
//! call has not returned (a dead network filesystem), so a scrape never hangs on one.

use crate::bindings::kpulse::plugin::statfs as raw;
use crate::error::{Error, Result};

pub use raw::{FsStats, Mount};

fn host_error(context: &str, err: crate::bindings::kpulse::plugin::types::Error) -> Error {
    Error::host(err.code, format!("{context}: {}", err.message))
}

/// Usage of the filesystem mounted at `mount_point`.
pub fn statfs(mount_point: &str) -> Result<FsStats> {
    raw::statfs(mount_point).map_err(|e| host_error(&format!("statfs {mount_point}"), e))
}

/// The host's mount table, in mountinfo order (the last of stacked mounts is visible).
pub fn mounts() -> Result<Vec<Mount>> {
    raw::mounts().map_err(|e| host_error("list mounts", e))
}

/// Bytes from a block count of `stats`.
pub fn bytes(stats: &FsStats, blocks: u64) -> f64 {
    blocks as f64 * stats.block_size as f64
}
