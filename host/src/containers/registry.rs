//! The registry handle: the published snapshot guests and the host read, the change log
//! behind `changes(since)`, and the discovery task that rebuilds the snapshot when a cgroup
//! or runtime event says something changed, and every `rescan_interval_secs` regardless.
//!
//! Readers never wait on discovery or a runtime: they clone the current `Arc<Table>`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};

use super::bundles;
use super::cgroupfs;
use super::config::ContainersConfig;
use super::containerd;
use super::docker;
use super::metrics::ContainerMetrics;
use super::model::{ChangeKind, Container, Key, Runtime};
use super::runtimes::{self, Source};
use super::sys::{self, Hierarchies, ProcCgroups};
use super::table::{Observation, Table};

/// Changes kept for `changes(since)`; an older `since` gets a resync.
const LOG_CAPACITY: usize = 8192;
/// Coalesces a burst of cgroup events (a container start makes several cgroups).
const DEBOUNCE: Duration = Duration::from_millis(30);

/// One entry of the change log.
#[derive(Debug, Clone)]
pub struct Change {
    pub generation: u64,
    pub kind: ChangeKind,
    pub container: Arc<Container>,
}

#[derive(Debug, Default)]
struct ChangeLog {
    generation: u64,
    entries: VecDeque<Change>,
}

#[derive(Debug)]
struct Inner {
    config: ContainersConfig,
    hierarchies: Hierarchies,
    table: RwLock<Arc<Table>>,
    log: Mutex<ChangeLog>,
    metrics: ContainerMetrics,
    wake: Notify,
    passes: Notify,
}

/// The container registry; cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

/// What a document or sample is attributed to.
#[derive(Debug, Clone)]
pub enum Attribution {
    /// The host itself (no id, or the root cgroup / host namespace).
    Host,
    Workload(Arc<Container>),
    /// An id or key the registry does not know.
    Unknown,
}

impl Attribution {
    /// A document's workload fields, for the id or key `raw` that a plugin (or a task) named.
    pub fn fields<'a>(&'a self, raw: &'a str) -> crate::storage::ContainerFields<'a> {
        use crate::storage::ContainerFields;
        match self {
            Self::Host => ContainerFields::default(),
            Self::Workload(c) if c.runtime.is_container() => ContainerFields {
                id: &c.id,
                hostname: c.display_hostname(),
                host_namespace: c.host_namespace(),
                container_type: c.container_type,
                qos: c.qos.as_str(),
                name: &c.name,
                image: &c.image,
                pod_name: c.pod.as_ref().map_or("", |p| p.name.as_str()),
                cgroup_path: &c.cgroup_path,
            },
            Self::Workload(c) => ContainerFields {
                cgroup_path: &c.cgroup_path,
                ..ContainerFields::default()
            },
            // Never dropped: saved with what the guest said, marked unknown.
            Self::Unknown => ContainerFields {
                id: raw,
                container_type: super::model::kind::UNKNOWN,
                ..ContainerFields::default()
            },
        }
    }
}

/// What `changes(since)` answers.
#[derive(Debug)]
pub struct ChangeSet {
    pub generation: u64,
    pub changes: Vec<Change>,
    pub resync: bool,
}

impl Registry {
    /// A registry that knows nothing and discovers nothing (`containers.enabled = false`,
    /// and tools that run no agent).
    pub fn empty(metrics: ContainerMetrics) -> Self {
        Self::new(ContainersConfig::default(), Hierarchies::default(), metrics)
    }

    fn new(config: ContainersConfig, hierarchies: Hierarchies, metrics: ContainerMetrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                hierarchies,
                table: RwLock::new(Arc::new(Table::default())),
                log: Mutex::new(ChangeLog::default()),
                metrics,
                wake: Notify::new(),
                passes: Notify::new(),
            }),
        }
    }

    /// Starts discovery on the current tokio runtime: one pass now (awaited, so the agent
    /// starts knowing the host), then event-driven and periodic passes.
    pub async fn start(config: ContainersConfig, metrics: ContainerMetrics) -> Self {
        if !config.enabled {
            return Self::empty(metrics);
        }
        let registry = Self::new(config, Hierarchies::detect(), metrics);
        let mut discovery = Discovery::new(&registry);
        discovery.pass().await;
        registry.watch_cgroups();
        registry.watch_runtimes();
        tokio::spawn(discovery.run());
        registry
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Table> {
        match self.inner.table.read() {
            Ok(table) => table.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn hierarchies(&self) -> &Hierarchies {
        &self.inner.hierarchies
    }

    pub fn label_allow(&self) -> &[String] {
        &self.inner.config.label_allow
    }

    /// One answer per key, in order; misses are counted.
    pub fn resolve(&self, keys: &[Key]) -> Vec<Option<Arc<Container>>> {
        let table = self.snapshot();
        let answers: Vec<Option<Arc<Container>>> = keys
            .iter()
            .map(|&key| table.resolve(key, &proc_path).cloned())
            .collect();
        let misses = answers.iter().filter(|a| a.is_none()).count();
        self.inner.metrics.misses(misses as u64);
        answers
    }

    /// A workload by id, or by a key in its text form (`cgroup:<id>`, `memcg:<id>`,
    /// `netns:<inum>`, `pid:<pid>`); a miss is counted.
    pub fn lookup(&self, id_or_key: &str) -> Option<Arc<Container>> {
        let table = self.snapshot();
        let found = match Key::parse(id_or_key) {
            Some(key) => table.resolve(key, &proc_path).cloned(),
            None => table.get(id_or_key).cloned(),
        };
        if found.is_none() {
            self.inner.metrics.misses(1);
        }
        found
    }

    /// What a document's `container-id` names: nothing (empty, or a key of the host's root
    /// cgroup or namespace), a workload, or something unknown (counted as a miss).
    pub fn attribute(&self, id_or_key: &str) -> Attribution {
        if id_or_key.is_empty() {
            return Attribution::Host;
        }
        let table = self.snapshot();
        let found = match Key::parse(id_or_key) {
            Some(key) if table.is_host(key, &proc_path) => return Attribution::Host,
            Some(key) => table.resolve(key, &proc_path).cloned(),
            None => table.get(id_or_key).cloned(),
        };
        match found {
            Some(container) => Attribution::Workload(container),
            None => {
                self.inner.metrics.misses(1);
                Attribution::Unknown
            }
        }
    }

    /// The changes after generation `since`.
    pub fn changes(&self, since: u64) -> ChangeSet {
        let log = match self.inner.log.lock() {
            Ok(log) => log,
            Err(poisoned) => poisoned.into_inner(),
        };
        let oldest = log
            .entries
            .front()
            .map_or(log.generation + 1, |c| c.generation);
        if since == 0 || since + 1 < oldest {
            drop(log);
            // Everything current, as `started`; the generation first, so nothing is missed.
            let generation = self.generation();
            let table = self.snapshot();
            return ChangeSet {
                generation,
                changes: table
                    .containers()
                    .iter()
                    .map(|c| Change {
                        generation,
                        kind: ChangeKind::Started,
                        container: c.clone(),
                    })
                    .collect(),
                resync: since != 0,
            };
        }
        ChangeSet {
            generation: log.generation,
            changes: log
                .entries
                .iter()
                .filter(|c| c.generation > since)
                .cloned()
                .collect(),
            resync: false,
        }
    }

    pub fn generation(&self) -> u64 {
        self.inner.log.lock().map_or(0, |log| log.generation)
    }

    /// Asks for a discovery pass now and waits (at most `timeout`) until one has finished.
    pub async fn refresh(&self, timeout: Duration) {
        let done = self.inner.passes.notified();
        self.inner.wake.notify_one();
        let _ = tokio::time::timeout(timeout, done).await;
    }

    fn publish(&self, table: Table, changes: Vec<(ChangeKind, Arc<Container>)>) {
        let counts = table.count_by_runtime();
        for runtime in Runtime::ALL {
            self.inner
                .metrics
                .set_known(runtime, counts.get(&runtime).copied().unwrap_or(0));
        }
        // Log first, then table: a reader that sees the new generation and then asks the
        // table never finds it older than the log.
        {
            let mut log = match self.inner.log.lock() {
                Ok(log) => log,
                Err(poisoned) => poisoned.into_inner(),
            };
            for (kind, container) in changes {
                log.generation += 1;
                let generation = log.generation;
                log.entries.push_back(Change {
                    generation,
                    kind,
                    container,
                });
                if log.entries.len() > LOG_CAPACITY {
                    log.entries.pop_front();
                }
            }
        }
        match self.inner.table.write() {
            Ok(mut slot) => *slot = Arc::new(table),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(table),
        }
        self.inner.metrics.pass();
        self.inner.passes.notify_waiters();
    }

    /// inotify on the unified and memory hierarchies: a cgroup made or removed wakes
    /// discovery. Without it (no inotify), the periodic rescan still finds everything.
    fn watch_cgroups(&self) {
        use notify::{RecursiveMode, Watcher};
        let inner = self.inner.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event
                && cgroupfs::is_membership_change(&event.kind)
            {
                inner.wake.notify_one();
            }
        });
        let mut watcher = match watcher {
            Ok(watcher) => watcher,
            Err(err) => {
                self.inner.metrics.error("cgroupfs");
                tracing::warn!(%err, "cannot watch the cgroup hierarchies; rescanning periodically only");
                return;
            }
        };
        let roots = [
            &self.inner.hierarchies.unified,
            &self.inner.hierarchies.memory,
        ];
        for root in roots.into_iter().flatten() {
            if let Err(err) = watcher.watch(root, RecursiveMode::Recursive) {
                self.inner.metrics.error("cgroupfs");
                tracing::warn!(%err, root = %root.display(), "cannot watch a cgroup hierarchy");
            }
        }
        // The watcher lives as long as the process: leak its handle into a task.
        tokio::spawn(async move {
            let _watcher = watcher;
            std::future::pending::<()>().await;
        });
    }

    /// containerd and Docker event streams: a task or container event wakes discovery.
    fn watch_runtimes(&self) {
        let timeout = Duration::from_millis(self.inner.config.api_timeout_ms);
        for socket in &self.inner.config.containerd_sockets {
            let client = containerd::Client::new(socket.clone(), timeout);
            tokio::spawn(follow_events(self.inner.clone(), move |tx| {
                let client = client.clone();
                async move { client.subscribe(tx).await.map_err(drop) }
            }));
        }
        if !self.inner.config.docker_socket.as_os_str().is_empty() {
            let client = docker::Client::new(self.inner.config.docker_socket.clone(), timeout);
            tokio::spawn(follow_events(self.inner.clone(), move |tx| {
                let client = client.clone();
                async move { client.events(tx).await.map_err(drop) }
            }));
        }
    }
}

/// Follows one runtime's event stream forever: every event wakes discovery; a stream that
/// ends or fails is reopened with back-off (afresh after a stream that lived a minute), and
/// discovery runs once more in case something was missed meanwhile.
async fn follow_events<E, F, Fut>(inner: Arc<Inner>, mut subscribe: F)
where
    E: Send + 'static,
    F: FnMut(mpsc::Sender<E>) -> Fut,
    Fut: std::future::Future<Output = Result<(), ()>>,
{
    let backoff = crate::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut attempt = 0u32;
    loop {
        let (tx, mut rx) = mpsc::channel::<E>(256);
        let wake = inner.clone();
        let forward = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                wake.wake.notify_one();
            }
        });
        let subscribed_at = Instant::now();
        let _ = subscribe(tx).await;
        forward.abort();
        if subscribed_at.elapsed() > Duration::from_secs(60) {
            attempt = 0;
        }
        tokio::time::sleep(backoff.delay(attempt)).await;
        attempt = attempt.saturating_add(1);
        inner.wake.notify_one();
    }
}

/// `/proc/<pid>/cgroup`'s workload path (for `Key::Pid`).
fn proc_path(pid: u32) -> Option<String> {
    ProcCgroups::read(pid).and_then(|p| p.workload_path().map(str::to_owned))
}

/// The discovery task's state: the runtime sources and their back-off.
struct Discovery {
    registry: Registry,
    containerd: Vec<Source>,
    docker: Option<Source>,
}

impl Discovery {
    fn new(registry: &Registry) -> Self {
        let config = &registry.inner.config;
        Self {
            registry: registry.clone(),
            containerd: config
                .containerd_sockets
                .iter()
                .map(|s| Source::new("containerd", s.clone()))
                .collect(),
            docker: (!config.docker_socket.as_os_str().is_empty())
                .then(|| Source::new("docker", config.docker_socket.clone())),
        }
    }

    async fn run(mut self) {
        let rescan = Duration::from_secs(self.registry.inner.config.rescan_interval_secs);
        let grace = Duration::from_secs(self.registry.inner.config.grace_period_secs);
        loop {
            // The periodic rescan, or sooner when a stopped container's grace period ends.
            let mut next = Instant::now() + rescan;
            if let Some(expiry) = self.registry.snapshot().next_expiry(grace) {
                next = next.min(expiry + Duration::from_millis(10));
            }
            tokio::select! {
                () = self.registry.inner.wake.notified() => {
                    tokio::time::sleep(DEBOUNCE).await;
                }
                () = tokio::time::sleep_until(next.into()) => {}
            }
            self.pass().await;
        }
    }

    /// One pass: ask the runtimes (async, bounded), then walk the cgroups, read the bundles
    /// and build the next table (blocking I/O, off the async threads).
    async fn pass(&mut self) {
        let inner = &self.registry.inner;
        let timeout = Duration::from_millis(inner.config.api_timeout_ms);
        let mut records = Vec::new();
        for source in &mut self.containerd {
            runtimes::poll_containerd(source, timeout, &inner.metrics, &mut records).await;
        }
        if let Some(source) = &mut self.docker {
            runtimes::poll_docker(source, timeout, &inner.metrics, &mut records).await;
        }
        let registry = self.registry.clone();
        let built = tokio::task::spawn_blocking(move || {
            let inner = &registry.inner;
            for state in &inner.config.containerd_state_dirs {
                for err in bundles::read_all(state, &mut records) {
                    inner.metrics.error("bundle");
                    tracing::debug!(%err, "unreadable containerd bundle");
                }
            }
            let seen = Observation {
                cgroups: cgroupfs::walk(&inner.hierarchies),
                runtime: records,
                host_netns: sys::host_netns().unwrap_or(0),
            };
            let previous = registry.snapshot();
            let namespaces = |pid: u32| {
                (
                    sys::namespace_inum(pid, "net").unwrap_or(0),
                    sys::namespace_inum(pid, "mnt").unwrap_or(0),
                )
            };
            previous.next(
                &seen,
                Instant::now(),
                Duration::from_secs(inner.config.grace_period_secs),
                &namespaces,
            )
        })
        .await;
        match built {
            Ok((table, changes)) => self.registry.publish(table, changes),
            Err(err) => {
                inner.metrics.error("cgroupfs");
                tracing::warn!(%err, "container discovery pass failed");
            }
        }
    }
}
