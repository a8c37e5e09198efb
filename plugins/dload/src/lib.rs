//! `dload`: HUATUO's per-container D-state load autotracing.
//!
//! Every `interval` seconds, for each running container of HUATUO type `normal` in the
//! host's registry (no pod sandboxes, systemd units or other cgroups), the plugin counts
//! the container's tasks by state: every thread (`/proc/<pid>/task/<tid>/stat`) of every
//! process in `cgroup.procs` of the container's cgroup and of the cgroups below it (the
//! `cpu` hierarchy on cgroup v1, the unified one on v2). It folds nr_running +
//! nr_uninterruptible (`load_avg`) and nr_uninterruptible (`dload_avg`) into the kernel's
//! fixed-point 1-minute average (`calc_load`: FSHIFT 11, EXP_1 1884, applied once per
//! sample as HUATUO does). When a container's `dload_avg` exceeds `threshold_load` and its
//! last document is at least `interval_tracing` seconds old, the plugin saves an
//! `autotracing` document for that container (its `container_id`, so the host attributes
//! it) with the counts, both averages and the kernel stacks of its D-state threads, then of
//! the host's other D-state processes (HUATUO's `stack` text). Like HUATUO, at most one
//! container is traced per sample.
//!
//! **cgroup v1 and v2.** HUATUO reads the counts through netlink CGROUPSTATS, which exists
//! only for cgroup v1 (on v2 its tracer idles). Guests have no netlink, so this plugin counts
//! from `/proc` on both versions: the same states (see [`tasks::Counts`]), but a snapshot
//! per thread rather than one atomic kernel walk, and `nr_iowait` (CGROUPSTATS'
//! `in_iowait` tasks) is always 0 because `/proc` does not show it.
//!
//! Other differences: `known_issue` is always `""` (HUATUO matches the stack against its
//! `IssuesList`, which this plugin does not have); `threshold_load` accepts fractions; a
//! container whose D threads are gone by the time it is traced is not saved and stays armed
//! (HUATUO starts its cool-down anyway); `enable_debug` (HUATUO's `EnableDebug`) traces
//! every sample, with the stacks of all the container's threads.
//!
//! Cost when quiet: per container and sample, one `read_dir` and one `cgroup.procs` read
//! per cgroup, one `read_dir` per process and one `stat` read per thread. No BPF.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kpulse_sdk::bindings::kpulse::plugin::clock;
use kpulse_sdk::fs::EntryKind;
use kpulse_sdk::prelude::*;
use serde::{Deserialize, Serialize};

#[allow(
    dead_code,
    reason = "shared with cpu_util; this plugin uses the registry part"
)]
#[path = "../../cpu_util/src/cgroup.rs"]
mod cgroup;
use cgroup::Registry;

mod load;
mod tasks;
use load::Ema;
use tasks::{Counts, Task, stack_section};

const NS_PER_SEC: u64 = 1_000_000_000;
/// Nested cgroups followed below a container's own.
const MAX_CGROUP_DEPTH: usize = 16;
/// Tasks whose stacks go into one section of a document (bounds its size).
const MAX_STACKS: usize = 100;

/// `[plugins.dload]`: HUATUO's `Dload` section in snake_case, with its defaults.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Trace a container when its D-state load average exceeds this (`ThresholdLoad`, 5).
    threshold_load: f64,
    /// Sampling period, in seconds (`Interval`, 10).
    interval: u64,
    /// Minimum time between two documents of one container, in seconds
    /// (`IntervalTracing`, 1800).
    interval_tracing: u64,
    /// Trace on every sample, with every thread's stack (`EnableDebug`, false).
    enable_debug: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            threshold_load: 5.0,
            interval: 10,
            interval_tracing: 1800,
            enable_debug: false,
        }
    }
}

impl Settings {
    fn validate(&self) -> std::result::Result<(), String> {
        if self.interval == 0 {
            return Err("interval must be at least 1 (seconds)".to_owned());
        }
        if !(self.threshold_load.is_finite() && self.threshold_load >= 0.0) {
            return Err(format!(
                "threshold_load must be a load >= 0, got {}",
                self.threshold_load
            ));
        }
        Ok(())
    }
}

/// One container's averages and last counts.
#[derive(Debug, Default)]
struct Tracked {
    load: Ema,
    dload: Ema,
    counts: Counts,
    /// Monotonic ns of its last document.
    last_trace_ns: Option<u64>,
}

struct Dload {
    settings: Settings,
    registry: Registry,
    containers: BTreeMap<String, Tracked>,
    samples: u64,
    fired: u64,
}

/// The `tracer_data` of a document: HUATUO's `DloadTracingData`.
#[derive(Serialize)]
struct Document {
    threshold: f64,
    nr_sleeping: u64,
    nr_running: u64,
    nr_stopped: u64,
    nr_uninterruptible: u64,
    /// Always 0: `/proc` does not show which tasks wait for I/O.
    nr_iowait: u64,
    load_avg: f64,
    dload_avg: f64,
    known_issue: String,
    /// `stacktrace of D task in cgroup:` then `... in host:` sections.
    stack: String,
}

/// A container's threads: counts, and the threads whose stacks a document would show.
struct Census {
    counts: Counts,
    /// D-state threads (every thread with `enable_debug`).
    traced: Vec<Task>,
    /// Every process of the container (to leave them out of the host section).
    pids: BTreeSet<u64>,
}

kpulse_sdk::register!(Dload {
    name: "dload",
    interval: 30,
    kinds: [tracing, metric],
    capabilities: ["containers", "read:/sys/fs/cgroup", "read:/proc"],
    summary: "Kernel stacks of a container's D-state tasks when its D load average is high (HUATUO dload)",
});

impl Plugin for Dload {
    fn init(config: Config) -> Result<Self> {
        let settings: Settings = config.parse()?;
        settings.validate().map_err(Error::InvalidConfig)?;
        Ok(Dload {
            settings,
            registry: Registry::new(),
            containers: BTreeMap::new(),
            samples: 0,
            fired: 0,
        })
    }
}

impl Tracing for Dload {
    fn start(&mut self, ctx: &mut Context) -> Result<()> {
        ctx.every(Duration::from_secs(self.settings.interval))?;
        Ok(())
    }

    fn on_timer(&mut self, ctx: &mut Context, _timer: TimerId) -> Result<()> {
        self.sample(ctx.monotonic_ns())
    }
}

impl Dload {
    fn sample(&mut self, now_ns: u64) -> Result<()> {
        self.registry.refresh();
        self.samples += 1;
        let all = self.settings.enable_debug;
        let mut seen = BTreeSet::new();
        let mut target: Option<(String, Census)> = None;
        for c in self.registry.containers(cgroup::NORMAL) {
            let Some(dir) = self.registry.dir(c, "cpu") else {
                continue;
            };
            let Some(census) = census(&dir.path, all) else {
                continue;
            };
            seen.insert(c.id.clone());
            let tracked = self.containers.entry(c.id.clone()).or_default();
            tracked.counts = census.counts;
            tracked
                .load
                .update(census.counts.running + census.counts.uninterruptible);
            tracked.dload.update(census.counts.uninterruptible);
            if target.is_none() && should_trace(&self.settings, tracked, now_ns) {
                target = Some((c.id.clone(), census));
            }
        }
        self.containers.retain(|id, _| seen.contains(id));
        let Some((id, census)) = target else {
            return Ok(());
        };
        let Some(tracked) = self.containers.get_mut(&id) else {
            return Ok(());
        };
        let cgroup_stack = stack_section(
            if all {
                "stacktrace of task in cgroup:"
            } else {
                "stacktrace of D task in cgroup:"
            },
            &with_stacks(census.traced),
        );
        // The D threads may have woken meanwhile: nothing to show, try again next sample.
        if cgroup_stack.is_empty() && !all {
            return Ok(());
        }
        let host_stack = stack_section(
            "stacktrace of D task in host:",
            &with_stacks(host_d_tasks(&census.pids)),
        );
        let document = Document {
            threshold: self.settings.threshold_load,
            nr_sleeping: tracked.counts.sleeping,
            nr_running: tracked.counts.running,
            nr_stopped: tracked.counts.stopped,
            nr_uninterruptible: tracked.counts.uninterruptible,
            nr_iowait: 0,
            load_avg: tracked.load.value(),
            dload_avg: tracked.dload.value(),
            known_issue: String::new(),
            stack: cgroup_stack + &host_stack,
        };
        // The cool-down starts even if the save fails (a full queue): no retry storm.
        tracked.last_trace_ns = Some(now_ns);
        log::info(&format!(
            "dload threshold exceeded: container {id} dload_avg {} > {}",
            document.dload_avg, document.threshold
        ));
        storage::save_autotracing("dload", &id, storage::now(), &document)?;
        self.fired += 1;
        Ok(())
    }
}

/// HUATUO's `shouldTrace`: above the threshold and out of the cool-down (or debug).
fn should_trace(settings: &Settings, tracked: &Tracked, now_ns: u64) -> bool {
    settings.enable_debug
        || (tracked.dload.value() > settings.threshold_load
            && cooldown_remaining_ns(settings, tracked, now_ns) == 0)
}

fn cooldown_remaining_ns(settings: &Settings, tracked: &Tracked, now_ns: u64) -> u64 {
    let cooldown = settings.interval_tracing.saturating_mul(NS_PER_SEC);
    tracked.last_trace_ns.map_or(0, |last| {
        cooldown.saturating_sub(now_ns.saturating_sub(last))
    })
}

/// Counts the threads of the processes in `dir`'s `cgroup.procs` and in the cgroups below
/// it; `None` if the container's own cgroup is gone. Threads and processes that exit
/// during the walk are skipped.
fn census(dir: &str, all: bool) -> Option<Census> {
    let mut census = Census {
        counts: Counts::default(),
        traced: Vec::new(),
        pids: BTreeSet::new(),
    };
    let mut pending = vec![(dir.to_owned(), 0)];
    let mut first = true;
    while let Some((cgroup, depth)) = pending.pop() {
        let procs = fs::read_to_string(&format!("{cgroup}/cgroup.procs"));
        if first && procs.is_err() {
            return None;
        }
        first = false;
        census.pids.extend(
            procs
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse::<u64>().ok()),
        );
        if depth < MAX_CGROUP_DEPTH
            && let Ok(entries) = fs::read_dir(&cgroup)
        {
            pending.extend(
                entries
                    .into_iter()
                    .filter(|e| e.kind == EntryKind::Directory)
                    .map(|e| (format!("{cgroup}/{}", e.name), depth + 1)),
            );
        }
    }
    for &pid in &census.pids {
        let Ok(threads) = fs::read_dir(&format!("/proc/{pid}/task")) else {
            continue;
        };
        for thread in threads {
            let Ok(tid) = thread.name.parse::<u64>() else {
                continue;
            };
            let Ok(text) = fs::read_to_string(&format!("/proc/{pid}/task/{tid}/stat")) else {
                continue;
            };
            let Ok(stat) = procfs::parse_process_stat(&text) else {
                continue;
            };
            census.counts.add(stat.state);
            if (all || stat.state == 'D') && census.traced.len() < MAX_STACKS {
                census.traced.push(Task {
                    pid,
                    tid,
                    comm: stat.comm,
                });
            }
        }
    }
    Some(census)
}

/// Each task with its `/proc/<pid>/task/<tid>/stack` (empty if it is gone).
fn with_stacks(tasks: Vec<Task>) -> Vec<(Task, String)> {
    tasks
        .into_iter()
        .map(|task| {
            let stack = fs::read_to_string(&format!("/proc/{}/task/{}/stack", task.pid, task.tid))
                .unwrap_or_default();
            (task, stack)
        })
        .collect()
}

/// The host's D-state processes outside `except` (HUATUO's host section: processes, not
/// threads), at most [`MAX_STACKS`].
fn host_d_tasks(except: &BTreeSet<u64>) -> Vec<Task> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .iter()
        .filter(|e| e.kind == EntryKind::Directory)
        .filter_map(|e| e.name.parse::<u64>().ok())
        .filter(|pid| !except.contains(pid))
        .filter_map(|pid| {
            let text = fs::read_to_string(&format!("/proc/{pid}/stat")).ok()?;
            let stat = procfs::parse_process_stat(&text).ok()?;
            (stat.state == 'D').then_some(Task {
                pid,
                tid: pid,
                comm: stat.comm,
            })
        })
        .take(MAX_STACKS)
        .collect()
}

impl Collector for Dload {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let now_ns = clock::monotonic_ns();
        let mut out = vec![
            metric::gauge(
                "threshold",
                self.settings.threshold_load,
                "D-state load average above which a container is traced (threshold_load).",
            ),
            metric::counter("samples", self.samples as f64, "Samples taken."),
            metric::counter("fired", self.fired as f64, "Autotracing documents saved."),
            metric::gauge(
                "containers",
                self.containers.len() as f64,
                "Containers followed.",
            ),
        ];
        for (id, tracked) in &self.containers {
            let c = tracked.counts;
            for (name, value, help) in [
                (
                    "dload_avg",
                    tracked.dload.value(),
                    "1-minute average of the container's D-state tasks (kernel calc_load).",
                ),
                (
                    "load_avg",
                    tracked.load.value(),
                    "1-minute average of the container's running + D-state tasks.",
                ),
                (
                    "nr_running",
                    c.running as f64,
                    "The container's running tasks (threads) at the last sample.",
                ),
                (
                    "nr_uninterruptible",
                    c.uninterruptible as f64,
                    "The container's D-state tasks at the last sample.",
                ),
                (
                    "nr_sleeping",
                    c.sleeping as f64,
                    "The container's sleeping tasks at the last sample.",
                ),
                (
                    "nr_stopped",
                    c.stopped as f64,
                    "The container's stopped tasks at the last sample.",
                ),
                (
                    "cooldown_remaining_seconds",
                    cooldown_remaining_ns(&self.settings, tracked, now_ns) as f64
                        / NS_PER_SEC as f64,
                    "Time before the container can be traced again (0: armed).",
                ),
            ] {
                out.push(metric::container_gauge(id, name, value, help));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> std::result::Result<Settings, String> {
        let settings: Settings = serde_json::from_str(json).map_err(|e| e.to_string())?;
        settings.validate()?;
        Ok(settings)
    }

    #[test]
    fn defaults_are_huatuos() {
        let s = config("{}").expect("defaults");
        assert_eq!(s.threshold_load, 5.0);
        assert_eq!(s.interval, 10);
        assert_eq!(s.interval_tracing, 1800);
        assert!(!s.enable_debug);
    }

    #[test]
    fn bad_settings_are_refused_with_the_key() {
        for (json, key) in [
            (r#"{"interval": 0}"#, "interval"),
            (r#"{"threshold_load": -1}"#, "threshold_load"),
            (r#"{"ThresholdLoad": 5}"#, "ThresholdLoad"),
        ] {
            let err = config(json).expect_err(json);
            assert!(err.contains(key), "{json}: {err}");
        }
        config(r#"{"threshold_load": 1.5, "interval": 1}"#).expect("fractions");
    }

    #[test]
    fn document_fields_are_huatuos() {
        let doc = serde_json::to_value(Document {
            threshold: 5.0,
            nr_sleeping: 1,
            nr_running: 2,
            nr_stopped: 3,
            nr_uninterruptible: 4,
            nr_iowait: 0,
            load_avg: 1.5,
            dload_avg: 1.2,
            known_issue: String::new(),
            stack: String::new(),
        })
        .expect("json");
        let mut keys: Vec<&str> = doc
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "dload_avg",
                "known_issue",
                "load_avg",
                "nr_iowait",
                "nr_running",
                "nr_sleeping",
                "nr_stopped",
                "nr_uninterruptible",
                "stack",
                "threshold"
            ]
        );
    }
}
