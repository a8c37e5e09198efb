//! `kpulse:plugin/containers`: the registry's snapshot ([`crate::containers::Registry`]),
//! converted to WIT records. Needs the `containers` capability; never waits on a runtime.

use std::sync::atomic::Ordering;

use crate::containers::{self as core, ChangeKind, Key, Qos, Runtime, State};
use crate::wit::containers as wit;
use crate::wit::{ErrorCode, types};

use super::HostState;

/// Keys per `resolve` call.
const MAX_KEYS: usize = 65_536;

type WitResult<T> = wasmtime::Result<Result<T, types::Error>>;

impl HostState {
    fn containers_allowed(&self) -> Result<(), types::Error> {
        if self.identity.containers {
            return Ok(());
        }
        self.identity
            .stats
            .denied_reads
            .fetch_add(1, Ordering::Relaxed);
        Err(types::Error {
            code: ErrorCode::AccessDenied,
            message: format!(
                "plugin {} may not use the container registry: declare the `containers` capability \
                 (and the operator's policy.containers_allow must name the plugin)",
                self.identity.name
            ),
        })
    }
}

fn runtime(r: Runtime) -> wit::Runtime {
    match r {
        Runtime::Containerd => wit::Runtime::Containerd,
        Runtime::Docker => wit::Runtime::Docker,
        Runtime::Crio => wit::Runtime::Crio,
        Runtime::Podman => wit::Runtime::Podman,
        Runtime::Systemd => wit::Runtime::Systemd,
        Runtime::Cgroup => wit::Runtime::Cgroup,
    }
}

fn qos(q: Qos) -> wit::Qos {
    match q {
        Qos::None => wit::Qos::None,
        Qos::Guaranteed => wit::Qos::Guaranteed,
        Qos::Burstable => wit::Qos::Burstable,
        Qos::BestEffort => wit::Qos::BestEffort,
    }
}

fn to_wit(c: &core::Container, allow: &[String]) -> wit::Container {
    let allowed = |labels: &[(String, String)]| {
        labels
            .iter()
            .filter(|(k, _)| core::model::label_allowed(allow, k))
            .cloned()
            .collect()
    };
    wit::Container {
        id: c.id.clone(),
        name: c.name.clone(),
        runtime: runtime(c.runtime),
        runtime_namespace: c.runtime_namespace.clone(),
        image: c.image.clone(),
        labels: allowed(&c.labels),
        pod: c.pod.as_ref().map(|p| wit::Pod {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            uid: p.uid.clone(),
            labels: allowed(&p.labels),
        }),
        qos: qos(c.qos),
        container_type: c.container_type.to_owned(),
        hostname: c.hostname.clone(),
        init_pid: c.init_pid,
        cgroup_path: c.cgroup_path.clone(),
        cgroup_id: c.cgroup_id,
        memcg_id: c.memcg_id,
        netns_inum: c.netns_inum,
        mntns_inum: c.mntns_inum,
        host_network: c.host_network,
        started_at_ns: c.started_at_ns,
        state: match c.state {
            State::Running => wit::State::Running,
            State::Stopped => wit::State::Stopped,
        },
    }
}

impl wit::Host for HostState {
    fn list(&mut self) -> WitResult<Vec<wit::Container>> {
        if let Err(err) = self.containers_allowed() {
            return Ok(Err(err));
        }
        let registry = &self.services.containers;
        let table = registry.snapshot();
        let allow = registry.label_allow();
        Ok(Ok(table
            .containers()
            .iter()
            .map(|c| to_wit(c, allow))
            .collect()))
    }

    fn get(&mut self, id: String) -> WitResult<Option<wit::Container>> {
        if let Err(err) = self.containers_allowed() {
            return Ok(Err(err));
        }
        let registry = &self.services.containers;
        let table = registry.snapshot();
        Ok(Ok(table
            .get(&id)
            .map(|c| to_wit(c, registry.label_allow()))))
    }

    fn resolve(&mut self, keys: Vec<wit::Key>) -> WitResult<Vec<Option<String>>> {
        if let Err(err) = self.containers_allowed() {
            return Ok(Err(err));
        }
        if keys.len() > MAX_KEYS {
            return Ok(Err(types::Error {
                code: ErrorCode::TooLarge,
                message: format!("{} keys in one resolve; at most {MAX_KEYS}", keys.len()),
            }));
        }
        let keys: Vec<Key> = keys
            .into_iter()
            .map(|k| match k {
                wit::Key::CgroupId(id) => Key::CgroupId(id),
                wit::Key::MemcgId(id) => Key::MemcgId(id),
                wit::Key::NetnsInum(inum) => Key::NetnsInum(inum),
                wit::Key::MntnsInum(inum) => Key::MntnsInum(inum),
                wit::Key::Pid(pid) => Key::Pid(pid),
            })
            .collect();
        Ok(Ok(self
            .services
            .containers
            .resolve(&keys)
            .into_iter()
            .map(|c| c.map(|c| c.id.clone()))
            .collect()))
    }

    fn changes(&mut self, since: u64) -> WitResult<wit::ChangeSet> {
        if let Err(err) = self.containers_allowed() {
            return Ok(Err(err));
        }
        let registry = &self.services.containers;
        let set = registry.changes(since);
        let allow = registry.label_allow();
        Ok(Ok(wit::ChangeSet {
            generation: set.generation,
            changes: set
                .changes
                .iter()
                .map(|c| wit::Change {
                    generation: c.generation,
                    kind: match c.kind {
                        ChangeKind::Started => wit::ChangeKind::Started,
                        ChangeKind::Updated => wit::ChangeKind::Updated,
                        ChangeKind::Stopped => wit::ChangeKind::Stopped,
                    },
                    container: to_wit(&c.container, allow),
                })
                .collect(),
            resync: set.resync,
        }))
    }

    fn cgroup_mounts(&mut self) -> WitResult<Vec<wit::CgroupMount>> {
        if let Err(err) = self.containers_allowed() {
            return Ok(Err(err));
        }
        Ok(Ok(self
            .services
            .containers
            .hierarchies()
            .all
            .iter()
            .map(|m| wit::CgroupMount {
                version: m.version,
                controllers: m.controllers.clone(),
                mount_point: m.mount_point.display().to_string(),
            })
            .collect()))
    }
}
