//! The host's container registry (the `containers` capability): every container and other
//! workload on the host, from any runtime, with Kubernetes metadata when there is some.
//! Mirrors the host's `host_api/containers.rs`.
//!
//! Attribute BPF records in batches with [`resolve`] (one host call per batch), or hand a
//! key straight to [`crate::storage::save`] as its container id with [`key_id`]; track
//! containers from a timer with a [`Tracker`].

use std::collections::BTreeMap;

use crate::bindings::kpulse::plugin::containers as raw;
use crate::error::{Error, Result};

pub use raw::{CgroupMount, ChangeKind, Container, Key, Pod, Qos, Runtime, State};

fn host_error(context: &str, err: crate::bindings::kpulse::plugin::types::Error) -> Error {
    Error::host(err.code, format!("{context}: {}", err.message))
}

/// Every workload, running and recently stopped.
pub fn list() -> Result<Vec<Container>> {
    raw::list().map_err(|e| host_error("list containers", e))
}

/// One workload by id.
pub fn get(id: &str) -> Result<Option<Container>> {
    raw::get(id).map_err(|e| host_error(&format!("get container {id}"), e))
}

/// The workload id for each key, in order (`None`: the host itself, or unknown).
pub fn resolve(keys: &[Key]) -> Result<Vec<Option<String>>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    raw::resolve(keys).map_err(|e| host_error("resolve container keys", e))
}

/// The cgroup hierarchies the host found.
pub fn cgroup_mounts() -> Result<Vec<CgroupMount>> {
    raw::cgroup_mounts().map_err(|e| host_error("list cgroup mounts", e))
}

/// The `container-id` form of a key for [`crate::storage::save`]: the host resolves it when
/// it saves the document (`memcg:<id>`, `cgroup:<id>`, `netns:<inum>`, `pid:<pid>`), and
/// leaves a host event (root cgroup, host netns) without container fields. `""` for a zero
/// key (none recorded).
pub fn key_id(key: Key) -> String {
    match key {
        Key::CgroupId(0)
        | Key::MemcgId(0)
        | Key::NetnsInum(0)
        | Key::MntnsInum(0)
        | Key::Pid(0) => String::new(),
        Key::CgroupId(id) => format!("cgroup:{id}"),
        Key::MemcgId(id) => format!("memcg:{id}"),
        Key::NetnsInum(inum) => format!("netns:{inum}"),
        Key::MntnsInum(inum) => format!("mntns:{inum}"),
        Key::Pid(pid) => format!("pid:{pid}"),
    }
}

/// Whether a workload is a container (not a systemd unit or another cgroup).
pub fn is_container(c: &Container) -> bool {
    !matches!(c.runtime, Runtime::Systemd | Runtime::Cgroup)
}

/// The directory of `container`'s cgroup in the hierarchy that has `controller` (`memory`,
/// `cpu`, `cpuacct`, ...), or in the unified one when no v1 hierarchy has it.
pub fn cgroup_dir(
    mounts: &[CgroupMount],
    container: &Container,
    controller: &str,
) -> Option<String> {
    let mount = mounts
        .iter()
        .find(|m| m.version == 1 && m.controllers.iter().any(|c| c == controller))
        .or_else(|| mounts.iter().find(|m| m.version == 2))?;
    Some(format!("{}{}", mount.mount_point, container.cgroup_path))
}

/// The running containers, kept up to date from [`raw::changes`] (call [`Tracker::refresh`]
/// from a timer or `update`; it costs one host call and copies only what changed).
#[derive(Debug, Default)]
pub struct Tracker {
    generation: u64,
    containers: BTreeMap<String, Container>,
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies what changed since the last call.
    pub fn refresh(&mut self) -> Result<()> {
        let set = raw::changes(self.generation).map_err(|e| host_error("container changes", e))?;
        if self.generation == 0 || set.resync {
            self.containers.clear();
        }
        for change in set.changes {
            let container = change.container;
            match (change.kind, container.state) {
                (ChangeKind::Stopped, _) | (_, State::Stopped) => {
                    self.containers.remove(&container.id);
                }
                _ => {
                    self.containers.insert(container.id.clone(), container);
                }
            }
        }
        self.generation = set.generation;
        Ok(())
    }

    /// Running workloads, by id.
    pub fn running(&self) -> impl Iterator<Item = &Container> {
        self.containers.values()
    }

    /// Running containers only (no systemd units or other cgroups).
    pub fn containers(&self) -> impl Iterator<Item = &Container> {
        self.containers.values().filter(|c| is_container(c))
    }

    pub fn get(&self, id: &str) -> Option<&Container> {
        self.containers.get(id)
    }
}

/// For each key, the `container-id` to save its document with: the container's id when the
/// registry knows it, else the key's text form ([`key_id`]; the host then leaves the host's
/// own events without container fields and marks the rest `unknown`). One host call per
/// batch; without the `containers` capability every key keeps its text form, which the host
/// still resolves when it saves.
pub fn attribute(keys: &[Key]) -> Vec<String> {
    match resolve(keys) {
        Ok(ids) if ids.len() == keys.len() => ids
            .into_iter()
            .zip(keys)
            .map(|(id, key)| id.unwrap_or_else(|| key_id(*key)))
            .collect(),
        _ => keys.iter().map(|key| key_id(*key)).collect(),
    }
}
