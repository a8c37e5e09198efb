//! Containers' network namespaces, for the container parts of `netdev`, `netstat`,
//! `sockstat` and `arp` (`#[path]`-included from here, like `filter.rs`).
//!
//! HUATUO reads `/proc/<container init pid>/net/*` for each of its `NormalContainers()`, so a
//! pod with two normal containers reports its network namespace twice, once per container,
//! and a pod's sandbox (pause) container, sidecars and daemonSet containers report nothing.
//! kpulse does the same, and also skips what has no network namespace of its own to read:
//! containers that share the host's (`host_network`), and those whose namespace or init pid
//! the registry does not know (`netns_inum`/`init_pid` 0). The containers come from the
//! host's registry (the `containers` capability), kept up to date by a
//! [`containers::Tracker`]; without it there are no containers and only host series.

use std::cell::Cell;

use kpulse_sdk::containers::{self, Container, Tracker};
use kpulse_sdk::prelude::*;

/// HUATUO's `NormalContainers()`: the only type whose network namespaces are read.
const NORMAL: &str = "normal";

/// Whether `c`'s own network namespace is read (see the module documentation).
pub fn reads_netns_of(c: &Container) -> bool {
    containers::is_container(c)
        && c.container_type == NORMAL
        && !c.host_network
        && c.netns_inum != 0
        && c.init_pid != 0
}

/// The running containers whose network namespaces are read.
#[derive(Debug, Default)]
pub struct Netns {
    tracker: Tracker,
    /// The last refresh failed (no `containers` capability, registry off): no containers.
    unavailable: bool,
    /// A read failed for another reason than a vanished process (logged once).
    read_warned: Cell<bool>,
}

impl Netns {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies what changed in the host's registry. When it cannot be read (the capability
    /// is denied, the registry is off) there are no containers; that is logged once.
    pub fn refresh(&mut self) {
        match self.tracker.refresh() {
            Ok(()) => {
                if self.unavailable {
                    log::info("container registry readable again: container-level series back");
                }
                self.unavailable = false;
            }
            Err(err) => {
                if !self.unavailable {
                    log::info(&format!(
                        "no container-level series (host-level ones go on): {err}"
                    ));
                }
                self.unavailable = true;
            }
        }
    }

    /// The containers to read, by id.
    pub fn containers(&self) -> impl Iterator<Item = &Container> {
        self.tracker
            .containers()
            .filter(move |c| !self.unavailable && reads_netns_of(c))
    }

    /// `/proc/<init pid>/net/<file>` of each of `files`, or `None` when the container's init
    /// process went away (or its pid now belongs to another network namespace) since the
    /// registry saw it: such a container is skipped silently. Other errors skip it too, with
    /// one log line per plugin instance.
    pub fn read(&self, c: &Container, files: &[&str]) -> Option<Vec<String>> {
        let pid = c.init_pid;
        // The pid may have been reused by a process of another namespace.
        match fs::read_link(&format!("/proc/{pid}/ns/net")) {
            Ok(link) if link == format!("net:[{}]", c.netns_inum) => {}
            Ok(_) => return None,
            Err(err) => {
                self.failed(&err)?;
            }
        }
        let mut out = Vec::with_capacity(files.len());
        for file in files {
            match fs::read_to_string(&format!("/proc/{pid}/net/{file}")) {
                Ok(text) => out.push(text),
                Err(err) => {
                    self.failed(&err);
                    return None;
                }
            }
        }
        Some(out)
    }

    /// Logs `err` once unless it is a vanished process; `Some` when the caller may go on
    /// (the namespace check could not be made for another reason than a vanished process).
    fn failed(&self, err: &Error) -> Option<()> {
        if err.is_not_found() {
            return None;
        }
        if !self.read_warned.replace(true) {
            log::warn(&format!(
                "cannot read a container's network namespace files (logged once): {err}"
            ));
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpulse_sdk::containers::{Qos, Runtime, State};

    fn container(container_type: &str, host_network: bool, netns: u32, pid: u32) -> Container {
        Container {
            id: "c".to_owned(),
            name: "c".to_owned(),
            runtime: Runtime::Containerd,
            runtime_namespace: String::new(),
            image: String::new(),
            labels: Vec::new(),
            pod: None,
            qos: Qos::None,
            container_type: container_type.to_owned(),
            hostname: String::new(),
            init_pid: pid,
            cgroup_path: String::new(),
            cgroup_id: 0,
            memcg_id: 0,
            netns_inum: netns,
            mntns_inum: 0,
            host_network,
            started_at_ns: 0,
            state: State::Running,
        }
    }

    #[test]
    fn normal_containers_with_their_own_netns_only() {
        assert!(reads_netns_of(&container("normal", false, 4026532000, 42)));
        for c in [
            container("sandbox", false, 4026532000, 42),
            container("sidecar", false, 4026532000, 42),
            container("daemonSet", false, 4026532000, 42),
            container("normal", true, 4026531840, 42),
            container("normal", false, 0, 42),
            container("normal", false, 4026532000, 0),
        ] {
            assert!(!reads_netns_of(&c), "{c:?}");
        }
        let mut systemd = container("normal", false, 4026532000, 42);
        systemd.runtime = Runtime::Systemd;
        assert!(!reads_netns_of(&systemd));
    }
}
