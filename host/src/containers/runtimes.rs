//! Discovery source 3, the runtime APIs: containerd (every namespace) and Docker, turned
//! into [`RuntimeContainer`] records. Each socket is a [`Source`] with its own back-off: one
//! that is absent, refuses or hangs is skipped with one log line and a counted error while
//! the others go on, and its last good answer stands in meanwhile.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::containerd;
use super::docker;
use super::metrics::ContainerMetrics;
use super::model::Runtime;
use super::oci::SpecFacts;
use super::sys::{self, ProcCgroups};
use super::table::RuntimeContainer;
use crate::backoff::Backoff;
use crate::logging::RateLimit;

/// Log a still-failing source again after this long.
const RELOG: Duration = Duration::from_secs(600);

/// One runtime socket and what it last said.
#[derive(Debug)]
pub struct Source {
    pub name: &'static str,
    pub socket: PathBuf,
    failures: u32,
    next_try: Option<Instant>,
    unavailable_logged: RateLimit,
    last_good: Vec<RuntimeContainer>,
    backoff: Backoff,
}

impl Source {
    pub fn new(name: &'static str, socket: PathBuf) -> Self {
        Self {
            name,
            socket,
            failures: 0,
            next_try: None,
            unavailable_logged: RateLimit::new(RELOG),
            last_good: Vec::new(),
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).jittered(),
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.next_try.is_none_or(|at| now >= at)
    }

    fn succeeded(&mut self, records: Vec<RuntimeContainer>) {
        if self.failures > 0 {
            tracing::info!(source = self.name, socket = %self.socket.display(), "container runtime answers again");
        }
        self.failures = 0;
        self.next_try = None;
        self.unavailable_logged.reset();
        self.last_good = records;
    }

    fn failed(&mut self, err: &dyn std::fmt::Display, now: Instant, metrics: &ContainerMetrics) {
        metrics.error(self.name);
        let delay = self.backoff.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        self.next_try = Some(now + delay);
        if let Some(suppressed) = self.unavailable_logged.check_at(now) {
            tracing::warn!(
                source = self.name,
                socket = %self.socket.display(),
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "container runtime unavailable, skipping it: {err}{suppressed}"
            );
        }
        // Containers whose process is gone are not kept on a stale answer.
        self.last_good
            .retain(|r| r.pid == 0 || std::path::Path::new(&format!("/proc/{}", r.pid)).exists());
    }
}

/// Asks containerd at `source.socket` about every namespace.
pub async fn poll_containerd(
    source: &mut Source,
    timeout: Duration,
    metrics: &ContainerMetrics,
    out: &mut Vec<RuntimeContainer>,
) {
    let now = Instant::now();
    if source.due(now) {
        let client = containerd::Client::new(source.socket.clone(), timeout);
        match containerd_records(&client).await {
            Ok(records) => source.succeeded(records),
            Err(err) => source.failed(&err, now, metrics),
        }
    }
    out.extend(source.last_good.iter().cloned());
}

async fn containerd_records(
    client: &containerd::Client,
) -> Result<Vec<RuntimeContainer>, containerd::ApiError> {
    let mut records = Vec::new();
    for namespace in client.namespaces().await? {
        let tasks = client.tasks(&namespace).await?;
        for container in client.containers(&namespace).await? {
            // Only containers with a live task are workloads; the others are metadata.
            let Some(task) = tasks
                .iter()
                .find(|t| t.id == container.id && t.pid != 0)
                // `created`: its init process exists (runc made it) and is about to run.
                .filter(|t| {
                    matches!(
                        t.status,
                        containerd::TaskStatus::Created
                            | containerd::TaskStatus::Running
                            | containerd::TaskStatus::Paused
                            | containerd::TaskStatus::Pausing
                    )
                })
            else {
                continue;
            };
            let facts = container
                .spec
                .as_ref()
                .map(SpecFacts::from_json)
                .unwrap_or_default();
            records.push(RuntimeContainer {
                source: "containerd",
                runtime: Some(if namespace == "moby" {
                    Runtime::Docker
                } else {
                    Runtime::Containerd
                }),
                namespace: namespace.clone(),
                id: container.id.clone(),
                image: container.image.clone(),
                labels: container.labels.clone(),
                annotations: facts.annotations,
                hostname: facts.hostname,
                pid: task.pid,
                cgroup_path: cgroup_path_of(task.pid, facts.cgroup_path),
                host_network: facts.host_network,
                started_at_ns: sys::process_start_ns(task.pid).unwrap_or(container.created_at_ns),
                ..RuntimeContainer::default()
            });
        }
    }
    Ok(records)
}

/// Asks Docker at `source.socket` about its running containers.
pub async fn poll_docker(
    source: &mut Source,
    timeout: Duration,
    metrics: &ContainerMetrics,
    out: &mut Vec<RuntimeContainer>,
) {
    let now = Instant::now();
    if source.due(now) {
        let client = docker::Client::new(source.socket.clone(), timeout);
        match client.containers().await {
            Ok(containers) => source.succeeded(
                containers
                    .into_iter()
                    .filter(|c| c.running && c.pid != 0)
                    .map(docker_record)
                    .collect(),
            ),
            Err(err) => source.failed(&err, now, metrics),
        }
    }
    out.extend(source.last_good.iter().cloned());
}

fn docker_record(c: docker::DockerContainer) -> RuntimeContainer {
    RuntimeContainer {
        source: "docker",
        runtime: Some(Runtime::Docker),
        namespace: "moby".to_owned(),
        cgroup_path: cgroup_path_of(c.pid, String::new()),
        started_at_ns: sys::process_start_ns(c.pid).unwrap_or(0),
        id: c.id,
        name: c.name,
        image: c.image,
        labels: c.labels,
        hostname: c.hostname,
        pid: c.pid,
        host_network: Some(c.host_network),
        ..RuntimeContainer::default()
    }
}

/// Where the live process is, else what the spec says.
fn cgroup_path_of(pid: u32, spec_path: String) -> String {
    ProcCgroups::read(pid)
        .and_then(|p| p.workload_path().map(str::to_owned))
        .filter(|p| p != "/")
        .unwrap_or(spec_path)
}
