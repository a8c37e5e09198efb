//! One snapshot of the registry: every workload and the indexes BPF keys resolve through,
//! built from what a discovery pass observed merged with the previous snapshot (stopped
//! containers stay for the grace period). Pure: the I/O happens in the sources.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cgroup_path::{self, PathClass};
use super::model::{ChangeKind, Container, Key, Pod, Qos, Runtime, State, kind};

/// A cgroup directory the walk found, with its ids in the two hierarchies (0: absent there).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupDir {
    pub cgroup_id: u64,
    pub memcg_id: u64,
    /// A pid in it (`cgroup.procs`), for namespaces when no runtime names one; 0 if none.
    pub pid: u32,
}

/// A container as a runtime source reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeContainer {
    pub source: &'static str,
    /// Every source that reported it, once merged (empty: just `source`).
    pub sources: Vec<&'static str>,
    pub runtime: Option<Runtime>,
    pub namespace: String,
    pub id: String,
    /// The runtime's name (Docker); empty to derive it (CRI annotations, else the id).
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// OCI spec annotations (CRI puts the pod's identity there).
    pub annotations: BTreeMap<String, String>,
    pub hostname: String,
    pub pid: u32,
    /// Its cgroup path, from `/proc/<pid>/cgroup` or the OCI spec; empty if unknown.
    pub cgroup_path: String,
    pub net_ns: u32,
    pub mnt_ns: u32,
    pub host_network: Option<bool>,
    pub started_at_ns: u64,
}

/// What one discovery pass saw.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// Every cgroup directory by path (relative to the hierarchy roots).
    pub cgroups: BTreeMap<String, CgroupDir>,
    pub runtime: Vec<RuntimeContainer>,
    pub host_netns: u32,
}

/// Namespaces of a pid, looked up by the caller (I/O stays out of this file).
pub type NsLookup<'a> = &'a dyn Fn(u32) -> (u32, u32);

/// The registry's snapshot.
#[derive(Debug, Default)]
pub struct Table {
    containers: Vec<Arc<Container>>,
    by_id: HashMap<String, usize>,
    by_cgroup_id: HashMap<u64, usize>,
    by_memcg_id: HashMap<u64, usize>,
    by_netns: HashMap<u32, usize>,
    by_mntns: HashMap<u32, usize>,
    by_path: HashMap<String, usize>,
    stopped_at: HashMap<String, Instant>,
    /// Keys of the host itself: the root cgroups and the host's network namespace.
    root_cgroup_id: u64,
    root_memcg_id: u64,
    host_netns: u32,
}

impl Table {
    /// Whether `key` names the host itself rather than a workload.
    pub fn is_host(&self, key: Key, proc_path: &dyn Fn(u32) -> Option<String>) -> bool {
        match key {
            Key::CgroupId(id) => id != 0 && id == self.root_cgroup_id,
            Key::MemcgId(id) => id != 0 && id == self.root_memcg_id,
            Key::NetnsInum(inum) => inum != 0 && inum == self.host_netns,
            Key::MntnsInum(_) => false,
            Key::Pid(pid) => proc_path(pid).as_deref() == Some("/"),
        }
    }

    pub fn containers(&self) -> &[Arc<Container>] {
        &self.containers
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Container>> {
        self.by_id.get(id).map(|&i| &self.containers[i])
    }

    /// The workload a key names; `Key::Pid` goes through `proc_path` (the caller reads
    /// `/proc/<pid>/cgroup`).
    pub fn resolve(
        &self,
        key: Key,
        proc_path: &dyn Fn(u32) -> Option<String>,
    ) -> Option<&Arc<Container>> {
        let index = match key {
            Key::CgroupId(id) => self.by_cgroup_id.get(&id),
            Key::MemcgId(id) => self.by_memcg_id.get(&id),
            Key::NetnsInum(inum) => self.by_netns.get(&inum),
            Key::MntnsInum(inum) => self.by_mntns.get(&inum),
            Key::Pid(pid) => {
                let path = proc_path(pid)?;
                return self.by_cgroup_path(&path);
            }
        };
        index.map(|&i| &self.containers[i])
    }

    /// The workload owning a cgroup path: the path itself or its nearest known ancestor.
    pub fn by_cgroup_path(&self, path: &str) -> Option<&Arc<Container>> {
        let mut path = path;
        loop {
            if let Some(&i) = self.by_path.get(path) {
                return Some(&self.containers[i]);
            }
            let (parent, _) = path.rsplit_once('/')?;
            if parent.is_empty() {
                return None;
            }
            path = parent;
        }
    }

    /// When the first stopped workload's grace period ends, for a pass that forgets it.
    pub fn next_expiry(&self, grace: Duration) -> Option<Instant> {
        self.stopped_at.values().min().map(|since| *since + grace)
    }

    /// Running workloads per runtime.
    pub fn count_by_runtime(&self) -> HashMap<Runtime, u64> {
        let mut counts = HashMap::new();
        for c in &self.containers {
            if c.state == State::Running {
                *counts.entry(c.runtime).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Builds the next snapshot and the changes since `self`.
    pub fn next(
        &self,
        seen: &Observation,
        now: Instant,
        grace: Duration,
        namespaces: NsLookup<'_>,
    ) -> (Self, Vec<(ChangeKind, Arc<Container>)>) {
        let mut built: Vec<Container> = Vec::new();
        let mut by_path: HashMap<String, usize> = HashMap::new();

        // Runtime containers first: they own their cgroup and everything below it.
        for record in merge_duplicates(&seen.runtime) {
            let container = from_runtime(&record, seen, namespaces);
            if !container.cgroup_path.is_empty() {
                by_path.insert(container.cgroup_path.clone(), built.len());
            }
            built.push(container);
        }
        // Then what the cgroup tree alone tells (parents sort before their children).
        let mut owner_of_dir: Vec<(&CgroupDir, usize)> = Vec::with_capacity(seen.cgroups.len());
        for (path, dir) in &seen.cgroups {
            if path == "/" || path.is_empty() {
                continue;
            }
            let owner = match ancestor_or_self(&by_path, path) {
                Some(owner) => owner,
                // An empty cgroup that no runtime claims is not a workload (a runtime's
                // namespace directory, a kubelet QoS level, a cgroup being set up).
                None if dir.pid == 0
                    && !matches!(cgroup_path::classify(path), PathClass::Container(_)) =>
                {
                    continue;
                }
                None => {
                    let (prefix, mut container) = from_path(path, seen, namespaces);
                    // A runtime container whose task just ended while its cgroup lingers
                    // (an OOM kill): keep what the runtime told, not the path's guess, so
                    // the events of its last moments still carry its name and pod.
                    if let Some(old) = self.get(&container.id)
                        && old.cgroup_path == container.cgroup_path
                        && old.sources.iter().any(|s| *s != "cgroupfs")
                    {
                        container = Container {
                            state: State::Running,
                            ..(**old).clone()
                        };
                    }
                    let index = built.len();
                    by_path.insert(prefix, index);
                    built.push(container);
                    index
                }
            };
            owner_of_dir.push((dir, owner));
        }
        for (path, &index) in &by_path {
            if let Some(dir) = seen.cgroups.get(path) {
                built[index].cgroup_id = dir.cgroup_id;
                built[index].memcg_id = dir.memcg_id;
            }
        }

        // Changes, and the stopped containers still in their grace period.
        let mut changes = Vec::new();
        let mut stopped_at = HashMap::new();
        let mut current: HashMap<String, usize> = HashMap::new();
        for (i, c) in built.iter().enumerate() {
            current.insert(c.id.clone(), i);
        }
        let mut kept_stopped: Vec<Container> = Vec::new();
        for old in &self.containers {
            if current.contains_key(&old.id) {
                continue;
            }
            let since = match old.state {
                State::Running => now,
                State::Stopped => self.stopped_at.get(&old.id).copied().unwrap_or(now),
            };
            if now.duration_since(since) >= grace && old.state == State::Stopped {
                continue;
            }
            let mut stopped = (**old).clone();
            stopped.state = State::Stopped;
            if old.state == State::Running {
                changes.push((ChangeKind::Stopped, Arc::new(stopped.clone())));
            }
            stopped_at.insert(old.id.clone(), since);
            kept_stopped.push(stopped);
        }
        let mut containers: Vec<Arc<Container>> = Vec::with_capacity(built.len());
        for c in built {
            match self.get(&c.id) {
                Some(old) if old.state == State::Running && **old == c => {
                    containers.push(old.clone());
                    continue;
                }
                Some(old) if old.state == State::Running => {
                    let c = Arc::new(c);
                    changes.push((ChangeKind::Updated, c.clone()));
                    containers.push(c);
                    continue;
                }
                _ => {}
            }
            let c = Arc::new(c);
            changes.push((ChangeKind::Started, c.clone()));
            containers.push(c);
        }
        let running = containers.len();
        containers.extend(kept_stopped.into_iter().map(Arc::new));

        let root = seen.cgroups.get("/").cloned().unwrap_or_default();
        let mut table = Self {
            by_id: HashMap::with_capacity(containers.len()),
            stopped_at,
            root_cgroup_id: root.cgroup_id,
            root_memcg_id: root.memcg_id,
            host_netns: seen.host_netns,
            ..Self::default()
        };
        for (i, c) in containers.iter().enumerate() {
            table.by_id.entry(c.id.clone()).or_insert(i);
        }
        // Running workloads take their keys first; stopped ones keep theirs where nobody
        // new took them, so late events still resolve.
        // Running workloads sit at the indexes they were built at.
        for (dir, owner) in owner_of_dir {
            if dir.cgroup_id != 0 {
                table.by_cgroup_id.insert(dir.cgroup_id, owner);
            }
            if dir.memcg_id != 0 {
                table.by_memcg_id.insert(dir.memcg_id, owner);
            }
        }
        for (path, index) in by_path {
            table.by_path.insert(path, index);
        }
        // Stopped ones keep every key they had (nested cgroups too) where nobody new took it.
        let stopped_index: HashMap<&str, usize> = containers
            .iter()
            .enumerate()
            .skip(running)
            .map(|(i, c)| (c.id.as_str(), i))
            .collect();
        for (old_keys, new_keys) in [
            (&self.by_cgroup_id, &mut table.by_cgroup_id),
            (&self.by_memcg_id, &mut table.by_memcg_id),
        ] {
            for (key, &old) in old_keys {
                if let Some(&i) = stopped_index.get(self.containers[old].id.as_str()) {
                    new_keys.entry(*key).or_insert(i);
                }
            }
        }
        for (i, c) in containers.iter().enumerate() {
            if i >= running {
                if c.cgroup_id != 0 {
                    table.by_cgroup_id.entry(c.cgroup_id).or_insert(i);
                }
                if c.memcg_id != 0 {
                    table.by_memcg_id.entry(c.memcg_id).or_insert(i);
                }
                if !c.cgroup_path.is_empty() {
                    table.by_path.entry(c.cgroup_path.clone()).or_insert(i);
                }
            } else if c.cgroup_id != 0 {
                table.by_cgroup_id.insert(c.cgroup_id, i);
            }
        }
        // Network and mount namespaces: containers only (host workloads share the host's);
        // running beats stopped, and a pod's sandbox speaks for the pod.
        for (i, c) in containers.iter().enumerate() {
            if !c.runtime.is_container() {
                continue;
            }
            if c.netns_inum != 0 && !c.host_network {
                claim(&mut table.by_netns, c.netns_inum, i, &containers, running);
            }
            if c.mntns_inum != 0 {
                claim(&mut table.by_mntns, c.mntns_inum, i, &containers, running);
            }
        }
        table.containers = containers;
        (table, changes)
    }
}

/// Gives namespace `inum` to container `i` unless a better claimant holds it.
fn claim(
    index: &mut HashMap<u32, usize>,
    inum: u32,
    i: usize,
    containers: &[Arc<Container>],
    running: usize,
) {
    let better = |a: usize, b: usize| {
        let (a_running, b_running) = (a < running, b < running);
        if a_running != b_running {
            return a_running;
        }
        containers[a].container_type == kind::SANDBOX
            && containers[b].container_type != kind::SANDBOX
    };
    match index.get(&inum) {
        Some(&holder) if !better(i, holder) => {}
        _ => {
            index.insert(inum, i);
        }
    }
}

fn ancestor_or_self(by_path: &HashMap<String, usize>, path: &str) -> Option<usize> {
    let mut path = path;
    loop {
        if let Some(&i) = by_path.get(path) {
            return Some(i);
        }
        let (parent, _) = path.rsplit_once('/')?;
        if parent.is_empty() {
            return None;
        }
        path = parent;
    }
}

/// One record per container: the same container seen by several sources (Docker's own
/// API and containerd's `moby` namespace; containerd's API and its bundle files) is merged,
/// the richer source winning field by field.
fn merge_duplicates(records: &[RuntimeContainer]) -> Vec<RuntimeContainer> {
    let mut merged: Vec<RuntimeContainer> = Vec::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for record in records {
        let key = if record.cgroup_path.is_empty() {
            format!("{}\u{0}{}", record.namespace, record.id)
        } else {
            record.cgroup_path.clone()
        };
        match by_key.get(&key) {
            None => {
                by_key.insert(key, merged.len());
                merged.push(record.clone());
            }
            Some(&i) => {
                let into = &mut merged[i];
                if into.sources.is_empty() {
                    into.sources.push(into.source);
                }
                // Docker's own API knows the names, images and labels of its containers;
                // containerd's `moby` namespace and the bundles do not.
                let docker = record.source == "docker";
                if docker || into.runtime.is_none() {
                    into.runtime = record.runtime.or(into.runtime);
                }
                if docker || into.name.is_empty() {
                    into.name.clone_from(&record.name);
                }
                if docker {
                    into.namespace.clone_from(&record.namespace);
                }
                for (field, value) in [
                    (&mut into.image, &record.image),
                    (&mut into.hostname, &record.hostname),
                    (&mut into.cgroup_path, &record.cgroup_path),
                ] {
                    if field.is_empty() || (docker && !value.is_empty()) {
                        field.clone_from(value);
                    }
                }
                for (k, v) in &record.labels {
                    into.labels.entry(k.clone()).or_insert_with(|| v.clone());
                }
                for (k, v) in &record.annotations {
                    into.annotations
                        .entry(k.clone())
                        .or_insert_with(|| v.clone());
                }
                if into.pid == 0 {
                    into.pid = record.pid;
                }
                if into.host_network.is_none() {
                    into.host_network = record.host_network;
                }
                if into.started_at_ns == 0 {
                    into.started_at_ns = record.started_at_ns;
                }
                if into.net_ns == 0 {
                    into.net_ns = record.net_ns;
                    into.mnt_ns = record.mnt_ns;
                }
                if !into.sources.contains(&record.source) {
                    into.sources.push(record.source);
                }
            }
        }
    }
    merged
}

/// CRI labels and annotations (containerd's CRI plugin; kubelet adds `io.kubernetes.*`).
mod cri {
    pub const POD_NAME: [&str; 2] = ["io.kubernetes.pod.name", "io.kubernetes.cri.sandbox-name"];
    pub const POD_NAMESPACE: [&str; 2] = [
        "io.kubernetes.pod.namespace",
        "io.kubernetes.cri.sandbox-namespace",
    ];
    pub const POD_UID: [&str; 2] = ["io.kubernetes.pod.uid", "io.kubernetes.cri.sandbox-uid"];
    pub const CONTAINER_NAME: [&str; 2] = [
        "io.kubernetes.container.name",
        "io.kubernetes.cri.container-name",
    ];
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const KIND_LABEL: &str = "io.cri-containerd.kind";
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
}

fn first_of<'a>(record: &'a RuntimeContainer, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| record.labels.get(*k).or_else(|| record.annotations.get(*k)))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

fn from_runtime(
    record: &RuntimeContainer,
    seen: &Observation,
    namespaces: NsLookup<'_>,
) -> Container {
    let sandbox = record
        .annotations
        .get(cri::CONTAINER_TYPE)
        .map(String::as_str)
        == Some("sandbox")
        || record.labels.get(cri::KIND_LABEL).map(String::as_str) == Some("sandbox");
    let pod = first_of(record, &cri::POD_NAME).map(|name| Pod {
        name: name.to_owned(),
        namespace: first_of(record, &cri::POD_NAMESPACE)
            .unwrap_or("")
            .to_owned(),
        uid: first_of(record, &cri::POD_UID).unwrap_or("").to_owned(),
        labels: pod_labels(record, seen, sandbox),
    });
    let class = cgroup_path::classify(&record.cgroup_path);
    let (path_runtime, qos) = match &class {
        PathClass::Container(c) => (Some(c.runtime), c.qos),
        _ => (None, Qos::None),
    };
    let name = if !record.name.is_empty() {
        record.name.clone()
    } else if sandbox {
        pod.as_ref()
            .map_or_else(|| record.id.clone(), |p| p.name.clone())
    } else {
        first_of(record, &cri::CONTAINER_NAME)
            .unwrap_or(&record.id)
            .to_owned()
    };
    let container_type = if sandbox {
        kind::SANDBOX
    } else if name == "istio-proxy" {
        kind::SIDECAR
    } else {
        kind::NORMAL
    };
    let pid = if record.pid != 0 {
        record.pid
    } else {
        seen.cgroups.get(&record.cgroup_path).map_or(0, |d| d.pid)
    };
    let (net, mnt) = if record.net_ns != 0 {
        (record.net_ns, record.mnt_ns)
    } else if pid != 0 {
        namespaces(pid)
    } else {
        (0, 0)
    };
    // What the process is in beats what the spec asked for (a pod's containers join their
    // sandbox's netns by path, which is the host's for a host-network pod).
    let host_network = if net != 0 && seen.host_netns != 0 {
        net == seen.host_netns
    } else {
        record.host_network.unwrap_or(false)
    };
    Container {
        id: record.id.clone(),
        name,
        runtime: record
            .runtime
            .or(path_runtime)
            .unwrap_or(Runtime::Containerd),
        runtime_namespace: record.namespace.clone(),
        image: record.image.clone(),
        labels: record
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        pod,
        qos,
        container_type,
        hostname: record.hostname.clone(),
        init_pid: record.pid,
        cgroup_path: record.cgroup_path.clone(),
        cgroup_id: 0,
        memcg_id: 0,
        netns_inum: net,
        mntns_inum: mnt,
        host_network,
        started_at_ns: record.started_at_ns,
        state: State::Running,
        sources: if record.sources.is_empty() {
            vec![record.source]
        } else {
            record.sources.clone()
        },
    }
}

/// A pod's labels are its sandbox's labels, less the runtime's own.
fn pod_labels(
    record: &RuntimeContainer,
    seen: &Observation,
    sandbox: bool,
) -> Vec<(String, String)> {
    let sandbox_labels = if sandbox {
        Some(&record.labels)
    } else {
        record
            .annotations
            .get(cri::SANDBOX_ID)
            .and_then(|sandbox_id| {
                seen.runtime
                    .iter()
                    .find(|r| &r.id == sandbox_id && r.namespace == record.namespace)
                    .map(|r| &r.labels)
            })
    };
    sandbox_labels
        .into_iter()
        .flatten()
        .filter(|(k, _)| !k.starts_with("io.cri-containerd.") && !k.starts_with("io.kubernetes."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A workload known only from its cgroup path; returns the path it owns.
fn from_path(path: &str, seen: &Observation, namespaces: NsLookup<'_>) -> (String, Container) {
    let (prefix, id, runtime, qos, pod) = match cgroup_path::classify(path) {
        PathClass::Container(c) => (
            c.prefix.to_owned(),
            c.id.to_owned(),
            c.runtime,
            c.qos,
            c.pod_uid.map(|uid| Pod {
                name: String::new(),
                namespace: String::new(),
                uid,
                labels: Vec::new(),
            }),
        ),
        PathClass::Unit { prefix } => (
            prefix.to_owned(),
            prefix.to_owned(),
            Runtime::Systemd,
            Qos::None,
            None,
        ),
        PathClass::Other => (
            path.to_owned(),
            path.to_owned(),
            Runtime::Cgroup,
            Qos::None,
            None,
        ),
    };
    let pid = seen.cgroups.get(&prefix).map_or(0, |d| d.pid);
    let (net, mnt) = if runtime.is_container() && pid != 0 {
        namespaces(pid)
    } else {
        (0, 0)
    };
    let container = Container {
        name: id.clone(),
        id,
        runtime,
        runtime_namespace: String::new(),
        image: String::new(),
        labels: Vec::new(),
        pod,
        qos,
        container_type: if runtime.is_container() {
            kind::NORMAL
        } else {
            kind::CGROUP
        },
        hostname: String::new(),
        init_pid: 0,
        cgroup_path: prefix.clone(),
        cgroup_id: 0,
        memcg_id: 0,
        netns_inum: net,
        mntns_inum: mnt,
        host_network: net != 0 && net == seen.host_netns,
        started_at_ns: 0,
        state: State::Running,
        sources: vec!["cgroupfs"],
    };
    (prefix, container)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST_NET: u32 = 4_026_531_833;

    fn dir(cgroup_id: u64, memcg_id: u64, pid: u32) -> CgroupDir {
        CgroupDir {
            cgroup_id,
            memcg_id,
            pid,
        }
    }

    /// A host like this one: a root, a systemd unit, a ctr namespace dir with one container
    /// (and a nested cgroup in it), a Docker container, and a CRI pod of two containers.
    fn observation() -> Observation {
        let docker_id = "a".repeat(64);
        let sandbox_id = "b".repeat(64);
        let app_id = "c".repeat(64);
        let mut cgroups = BTreeMap::new();
        cgroups.insert("/".to_owned(), dir(1, 100, 1));
        cgroups.insert("/system.slice".to_owned(), dir(2, 0, 0));
        cgroups.insert("/system.slice/cron.service".to_owned(), dir(3, 103, 300));
        cgroups.insert("/kptest".to_owned(), dir(4, 104, 0));
        cgroups.insert("/kptest/c1".to_owned(), dir(5, 105, 500));
        cgroups.insert("/kptest/c1/inner".to_owned(), dir(6, 106, 501));
        cgroups.insert(format!("/docker/{docker_id}"), dir(7, 107, 700));
        cgroups.insert("/kubepods".to_owned(), dir(8, 108, 0));
        cgroups.insert("/kubepods/burstable".to_owned(), dir(9, 109, 0));
        cgroups.insert("/kubepods/burstable/poduid-1".to_owned(), dir(10, 110, 0));
        cgroups.insert(
            format!("/kubepods/burstable/poduid-1/{sandbox_id}"),
            dir(11, 111, 900),
        );
        cgroups.insert(
            format!("/kubepods/burstable/poduid-1/{app_id}"),
            dir(12, 112, 901),
        );
        let annotations = |kind: &str| {
            let mut a = BTreeMap::new();
            a.insert(
                "io.kubernetes.cri.container-type".to_owned(),
                kind.to_owned(),
            );
            a.insert(
                "io.kubernetes.cri.sandbox-name".to_owned(),
                "web-0".to_owned(),
            );
            a.insert(
                "io.kubernetes.cri.sandbox-namespace".to_owned(),
                "shop".to_owned(),
            );
            a.insert(
                "io.kubernetes.cri.sandbox-uid".to_owned(),
                "uid-1".to_owned(),
            );
            a.insert("io.kubernetes.cri.sandbox-id".to_owned(), "b".repeat(64));
            a.insert(
                "io.kubernetes.cri.container-name".to_owned(),
                "app".to_owned(),
            );
            a
        };
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        let runtime = vec![
            RuntimeContainer {
                source: "containerd",
                runtime: Some(Runtime::Containerd),
                namespace: "kptest".to_owned(),
                id: "c1".to_owned(),
                labels: labels(&[("app", "demo")]),
                pid: 500,
                cgroup_path: "/kptest/c1".to_owned(),
                net_ns: 4_026_532_181,
                mnt_ns: 4_026_532_180,
                ..RuntimeContainer::default()
            },
            // Docker seen twice: its own API and containerd's `moby` bundle.
            RuntimeContainer {
                source: "bundle",
                runtime: Some(Runtime::Docker),
                namespace: "moby".to_owned(),
                id: docker_id.clone(),
                hostname: "2114".to_owned(),
                pid: 700,
                cgroup_path: format!("/docker/{docker_id}"),
                net_ns: 4_026_532_300,
                ..RuntimeContainer::default()
            },
            RuntimeContainer {
                source: "docker",
                runtime: Some(Runtime::Docker),
                namespace: "moby".to_owned(),
                id: docker_id.clone(),
                name: "kp-demo".to_owned(),
                image: "kpulse-test/busybox:1".to_owned(),
                labels: labels(&[("app", "web")]),
                pid: 700,
                cgroup_path: format!("/docker/{docker_id}"),
                ..RuntimeContainer::default()
            },
            RuntimeContainer {
                source: "containerd",
                runtime: Some(Runtime::Containerd),
                namespace: "k8s.io".to_owned(),
                id: sandbox_id.clone(),
                labels: labels(&[("tier", "backend"), ("io.cri-containerd.kind", "sandbox")]),
                annotations: annotations("sandbox"),
                pid: 900,
                cgroup_path: format!("/kubepods/burstable/poduid-1/{sandbox_id}"),
                net_ns: 4_026_532_400,
                ..RuntimeContainer::default()
            },
            RuntimeContainer {
                source: "containerd",
                runtime: Some(Runtime::Containerd),
                namespace: "k8s.io".to_owned(),
                id: app_id.clone(),
                labels: labels(&[("role", "worker"), ("io.cri-containerd.kind", "container")]),
                annotations: annotations("container"),
                pid: 901,
                cgroup_path: format!("/kubepods/burstable/poduid-1/{app_id}"),
                net_ns: 4_026_532_400,
                ..RuntimeContainer::default()
            },
        ];
        Observation {
            cgroups,
            runtime,
            host_netns: HOST_NET,
        }
    }

    fn no_ns(_: u32) -> (u32, u32) {
        (0, 0)
    }

    fn build(
        previous: &Table,
        seen: &Observation,
        at: Instant,
    ) -> (Table, Vec<(ChangeKind, Arc<Container>)>) {
        previous.next(seen, at, Duration::from_secs(30), &no_ns)
    }

    #[test]
    fn every_runtime_merged_and_indexed() {
        let seen = observation();
        let (table, changes) = build(&Table::default(), &seen, Instant::now());
        let ids: Vec<&str> = table.containers().iter().map(|c| c.id.as_str()).collect();
        // c1, docker (merged once), sandbox, app, cron.service; no empty cgroups.
        assert_eq!(table.containers().len(), 5, "{ids:?}");
        assert_eq!(changes.len(), 5);
        assert!(changes.iter().all(|(k, _)| *k == ChangeKind::Started));

        let c1 = table.get("c1").expect("c1");
        assert_eq!((c1.cgroup_id, c1.memcg_id), (5, 105));
        assert_eq!(c1.name, "c1", "a ctr container is named by its id");
        // A nested cgroup resolves to its container.
        let none = |_: u32| None;
        assert_eq!(
            table
                .resolve(Key::CgroupId(6), &none)
                .map(|c| c.id.as_str()),
            Some("c1")
        );
        assert_eq!(
            table
                .resolve(Key::MemcgId(106), &none)
                .map(|c| c.id.as_str()),
            Some("c1")
        );
        assert_eq!(
            table
                .resolve(Key::MntnsInum(4_026_532_180), &none)
                .map(|c| c.id.as_str()),
            Some("c1")
        );

        let docker = table.get(&"a".repeat(64)).expect("docker");
        assert_eq!(docker.runtime, Runtime::Docker);
        assert_eq!(docker.name, "kp-demo");
        assert_eq!(docker.image, "kpulse-test/busybox:1");
        assert_eq!(
            docker.hostname, "2114",
            "the bundle's hostname fills the gap"
        );
        assert_eq!(docker.sources, vec!["bundle", "docker"]);
        assert!(
            docker
                .labels
                .contains(&("app".to_owned(), "web".to_owned()))
        );

        let app = table.get(&"c".repeat(64)).expect("app");
        assert_eq!(app.name, "app");
        assert_eq!(app.qos, Qos::Burstable);
        assert_eq!(app.container_type, kind::NORMAL);
        let pod = app.pod.as_ref().expect("pod");
        assert_eq!(
            (pod.name.as_str(), pod.namespace.as_str(), pod.uid.as_str()),
            ("web-0", "shop", "uid-1")
        );
        assert_eq!(pod.labels, vec![("tier".to_owned(), "backend".to_owned())]);
        let sandbox = table.get(&"b".repeat(64)).expect("sandbox");
        assert_eq!(sandbox.container_type, kind::SANDBOX);
        // The pod's netns resolves to its sandbox.
        assert_eq!(
            table
                .resolve(Key::NetnsInum(4_026_532_400), &none)
                .map(|c| c.id.clone()),
            Some("b".repeat(64))
        );

        let cron = table.get("/system.slice/cron.service").expect("unit");
        assert_eq!(cron.runtime, Runtime::Systemd);
        assert_eq!(cron.container_type, kind::CGROUP);
        // The root and empty cgroups are nobody's; the root is the host.
        assert!(table.resolve(Key::CgroupId(1), &none).is_none());
        assert!(table.is_host(Key::CgroupId(1), &none));
        assert!(table.is_host(Key::NetnsInum(HOST_NET), &none));
        assert!(table.resolve(Key::CgroupId(4), &none).is_none());
        // Pids go through /proc/<pid>/cgroup, here a stand-in.
        let proc = |pid: u32| (pid == 42).then(|| "/kptest/c1/inner".to_owned());
        assert_eq!(
            table.resolve(Key::Pid(42), &proc).map(|c| c.id.as_str()),
            Some("c1")
        );
    }

    #[test]
    fn a_stopped_container_resolves_for_the_grace_period_then_goes() {
        let t0 = Instant::now();
        let seen = observation();
        let (first, _) = build(&Table::default(), &seen, t0);
        let mut gone = seen.clone();
        gone.runtime.retain(|r| r.id != "c1");
        gone.cgroups
            .retain(|path, _| !path.starts_with("/kptest/c1"));
        let (second, changes) = build(&first, &gone, t0 + Duration::from_secs(1));
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].0, ChangeKind::Stopped);
        let none = |_: u32| None;
        let c1 = second
            .resolve(Key::CgroupId(5), &none)
            .expect("still resolves");
        assert_eq!(c1.state, State::Stopped);
        assert!(
            second.resolve(Key::CgroupId(6), &none).is_some(),
            "nested ids too"
        );
        // Within the grace period: kept, no new change.
        let (third, changes) = build(&second, &gone, t0 + Duration::from_secs(20));
        assert!(changes.is_empty(), "{changes:?}");
        assert!(third.get("c1").is_some());
        // After it: forgotten.
        let (fourth, changes) = build(&third, &gone, t0 + Duration::from_secs(40));
        assert!(changes.is_empty());
        assert!(fourth.get("c1").is_none());
        assert!(fourth.resolve(Key::CgroupId(5), &none).is_none());
    }

    #[test]
    fn unchanged_passes_report_nothing_and_changes_are_updates() {
        let t0 = Instant::now();
        let seen = observation();
        let (first, _) = build(&Table::default(), &seen, t0);
        let (second, changes) = build(&first, &seen, t0);
        assert!(changes.is_empty(), "{changes:?}");
        let mut relabelled = seen.clone();
        relabelled.runtime[0]
            .labels
            .insert("app".to_owned(), "other".to_owned());
        let (_, changes) = build(&second, &relabelled, t0);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].0, ChangeKind::Updated);
        assert_eq!(changes[0].1.id, "c1");
    }

    #[test]
    fn a_new_container_takes_a_stopped_ones_reused_keys() {
        let t0 = Instant::now();
        let seen = observation();
        let (first, _) = build(&Table::default(), &seen, t0);
        // c1 stops; c9 starts in a new cgroup that got c1's memcg id and netns inode.
        let mut next = seen.clone();
        next.runtime.retain(|r| r.id != "c1");
        next.cgroups
            .retain(|path, _| !path.starts_with("/kptest/c1"));
        next.cgroups
            .insert("/kptest/c9".to_owned(), dir(50, 105, 550));
        next.runtime.push(RuntimeContainer {
            source: "containerd",
            runtime: Some(Runtime::Containerd),
            namespace: "kptest".to_owned(),
            id: "c9".to_owned(),
            pid: 550,
            cgroup_path: "/kptest/c9".to_owned(),
            net_ns: 4_026_532_181,
            ..RuntimeContainer::default()
        });
        let (table, _) = build(&first, &next, t0);
        let none = |_: u32| None;
        assert_eq!(
            table
                .resolve(Key::MemcgId(105), &none)
                .map(|c| c.id.as_str()),
            Some("c9")
        );
        assert_eq!(
            table
                .resolve(Key::NetnsInum(4_026_532_181), &none)
                .map(|c| c.id.as_str()),
            Some("c9")
        );
        assert_eq!(
            table
                .resolve(Key::CgroupId(5), &none)
                .map(|c| c.id.as_str()),
            Some("c1")
        );
    }

    #[test]
    fn churn_of_a_thousand_containers() {
        let mut seen = Observation {
            host_netns: HOST_NET,
            ..Observation::default()
        };
        seen.cgroups.insert("/".to_owned(), dir(1, 1, 1));
        for i in 0..1000u32 {
            let path = format!("/kptest/c{i}");
            seen.cgroups.insert(
                path.clone(),
                dir(u64::from(i) + 10, u64::from(i) + 5000, i + 10),
            );
            seen.runtime.push(RuntimeContainer {
                source: "containerd",
                runtime: Some(Runtime::Containerd),
                namespace: "kptest".to_owned(),
                id: format!("c{i}"),
                pid: i + 10,
                cgroup_path: path,
                ..RuntimeContainer::default()
            });
        }
        let t0 = Instant::now();
        let (table, changes) = build(&Table::default(), &seen, t0);
        assert_eq!(changes.len(), 1000);
        // Half stop, a new half starts.
        let mut next = seen.clone();
        next.runtime.retain(|r| r.pid % 2 == 0);
        next.cgroups.retain(|_, d| d.pid % 2 == 0);
        let (table2, changes) = build(&table, &next, t0 + Duration::from_millis(10));
        assert_eq!(
            changes
                .iter()
                .filter(|(k, _)| *k == ChangeKind::Stopped)
                .count(),
            500
        );
        assert_eq!(
            table2.containers().len(),
            1000,
            "stopped ones kept for the grace period"
        );
    }
}
