//! The BPF-backed HUATUO metric families on the real kernel, in HUATUO mode
//! (`prefix = "huatuo_bamai"`):
//!
//! - `runqlat`: busy loops pinned to one CPU with `taskset` (util-linux) wait on its run
//!   queue for more than 10 ms each time they are preempted, which the zone 1-3 counters
//!   must show (checked against the loops' own `/proc/<pid>/schedstat`); host counters
//!   never go back. A `ctr` container running pinned busy loops gets its own
//!   `runqlat_container_latency` series, with HUATUO's container labels, and they rise.
//! - `memory_reclaim`: a `ctr` container limited to 64 MiB writes files four times that
//!   size, so every write pass ends in memory cgroup limit reclaim; its `directstall` gauge
//!   rises, as does the cgroup's `memory.failcnt`.
//! - `memory_free`: global direct reclaim and direct compaction cannot be provoked safely
//!   on a large shared machine, so this checks that the programs attach, that both gauges
//!   exist and never go back, and that they stay put while the kernel's own `allocstall_*`
//!   and `compact_stall` counters (`/proc/vmstat`) do, also across a
//!   `/proc/sys/vm/compact_memory` write (proactive compaction, which is not a stall).

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use kpulse_integration_tests::containers::{CtrContainer, Runtimes};
use kpulse_integration_tests::{Agent, plugin_wasm, wait_for};

use super::metrics_host::{HUATUO, Series, parse_exposition, read};

const NS: &str = "kptest";
const NO_CONTAINERS: &str = "[containers]\nenabled = false\n";
const HOST_LATENCY: &str = "huatuo_bamai_runqlat_latency";
const CONTAINER_LATENCY: &str = "huatuo_bamai_runqlat_container_latency";
const DIRECTSTALL: &str = "huatuo_bamai_memory_reclaim_container_directstall";

/// HUATUO's container label names (without `region` and `host`, which the parser drops).
const CONTAINER_LABELS: [&str; 5] = [
    "container_host",
    "container_name",
    "container_type",
    "container_level",
    "container_hostnamespace",
];

fn start(label: &str, plugin: &str, extra: &str) -> Agent {
    let agent = Agent::start(label, &[plugin_wasm(plugin)], &format!("{HUATUO}{extra}"));
    agent.wait_state(plugin, "running", Duration::from_secs(30));
    agent
}

/// `zone -> count` of `name`'s samples whose labels include `filter` (empty: all).
fn zones(series: &Series, name: &str, filter: &[(&str, &str)]) -> BTreeMap<String, f64> {
    series
        .get(name)
        .into_iter()
        .flatten()
        .filter(|(labels, _)| {
            filter
                .iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .filter_map(|(labels, value)| Some((labels.get("zone")?.clone(), *value)))
        .collect()
}

/// Waits in zones 1 to 3 (10 ms and longer).
fn long_waits(zones: &BTreeMap<String, f64>) -> f64 {
    ["1", "2", "3"].iter().filter_map(|z| zones.get(*z)).sum()
}

/// Busy loops pinned to CPU 0; killed on drop.
struct PinnedLoops(Vec<Child>);

impl PinnedLoops {
    fn start(count: usize) -> Self {
        let children = (0..count)
            .map(|_| {
                Command::new("taskset")
                    .args(["-c", "0", "sh", "-c", "while :; do :; done"])
                    .spawn()
                    .expect("taskset (util-linux)")
            })
            .collect();
        PinnedLoops(children)
    }

    /// `(run-queue wait ns, times scheduled in)` summed over the loops (`schedstat`).
    fn schedstat(&self) -> (f64, f64) {
        self.0.iter().fold((0.0, 0.0), |(wait, runs), child| {
            let text = read(&format!("/proc/{}/schedstat", child.id()));
            let f: Vec<f64> = text
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect();
            (wait + f[1], runs + f[2])
        })
    }
}

impl Drop for PinnedLoops {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn runqlat_host_zones_count_waits_behind_pinned_busy_loops() {
    let agent = start("runqlat-host", "runqlat", NO_CONTAINERS);
    let first = wait_for(Duration::from_secs(20), "runqlat host zones", || {
        let z = zones(&parse_exposition(&agent.metrics()), HOST_LATENCY, &[]);
        (z.len() == 4).then_some(z)
    });
    assert_eq!(
        first.keys().map(String::as_str).collect::<Vec<_>>(),
        ["0", "1", "2", "3"]
    );

    // Six loops on one CPU: each waits for the other five's slices, about 15 ms.
    let loops = PinnedLoops::start(6);
    std::thread::sleep(Duration::from_millis(300)); // let them all start running
    let before = zones(&parse_exposition(&agent.metrics()), HOST_LATENCY, &[]);
    let (wait0, runs0) = loops.schedstat();
    let mut last = before.clone();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let now = zones(&parse_exposition(&agent.metrics()), HOST_LATENCY, &[]);
        for (zone, value) in &now {
            assert!(
                *value >= last[zone],
                "zone {zone} went back: {} -> {value}",
                last[zone]
            );
        }
        last = now;
    }
    let (wait1, runs1) = loops.schedstat();
    let after = zones(&parse_exposition(&agent.metrics()), HOST_LATENCY, &[]);
    drop(loops);

    let (waits, runs) = (wait1 - wait0, runs1 - runs0);
    let long = long_waits(&after) - long_waits(&before);
    eprintln!(
        "loops: {runs} runs, mean wait {:.1} ms; zones before {before:?} after {after:?}; \
         {long} waits >= 10 ms",
        waits / runs / 1e6
    );
    assert!(
        waits / runs > 10e6,
        "the loops did not wait long enough to test anything: {waits} ns over {runs} runs"
    );
    // Nearly every run of a loop followed a wait of ~15 ms; other tasks add their own.
    assert!(
        long >= runs * 0.5,
        "{long} waits >= 10 ms counted, the loops alone were scheduled in {runs} times"
    );
    assert!(
        after["0"] > before["0"],
        "short waits of the rest of the host"
    );
}

/// `memory.failcnt`-style single value of a cgroup file.
fn cgroup_value(path: &str) -> f64 {
    read(path).trim().parse().unwrap()
}

/// The sample of `name` for the container named `id`, with its labels.
fn container_sample<'a>(
    series: &'a Series,
    name: &str,
    id: &str,
) -> Option<&'a (BTreeMap<String, String>, f64)> {
    series
        .get(name)?
        .iter()
        .find(|(labels, _)| labels.get("container_name").map(String::as_str) == Some(id))
}

fn assert_container_labels(labels: &BTreeMap<String, String>, id: &str) {
    for key in CONTAINER_LABELS {
        assert!(labels.contains_key(key), "{key} missing: {labels:?}");
    }
    assert_eq!(labels["container_name"], id);
    assert_eq!(labels["container_type"], "normal");
}

#[test]
fn runqlat_container_latency_of_a_container_with_pinned_busy_loops() {
    let runtimes = Runtimes::get();
    let id = format!("runq-{}", std::process::id());
    let _container: CtrContainer = runtimes.ctr_run(
        NS,
        &id,
        &[],
        &[],
        "for i in 1 2 3 4; do taskset -c 0 sh -c 'while :; do :; done' & done; wait",
    );
    let agent = start("runqlat-container", "runqlat", &runtimes.agent_config(""));
    let first = wait_for(
        Duration::from_secs(30),
        "the container's runqlat series with long waits",
        || {
            let series = parse_exposition(&agent.metrics());
            let z = zones(&series, CONTAINER_LATENCY, &[("container_name", &id)]);
            (z.len() == 4 && long_waits(&z) > 0.0).then_some(z)
        },
    );
    let series = parse_exposition(&agent.metrics());
    let (labels, _) = container_sample(&series, CONTAINER_LATENCY, &id).unwrap();
    assert_container_labels(labels, &id);
    // And it goes on rising while the loops run.
    let later = wait_for(Duration::from_secs(20), "more long waits", || {
        let z = zones(
            &parse_exposition(&agent.metrics()),
            CONTAINER_LATENCY,
            &[("container_name", &id)],
        );
        (long_waits(&z) > long_waits(&first)).then_some(z)
    });
    eprintln!("container {id}: zones {first:?} -> {later:?}");
    for (zone, value) in &later {
        assert!(
            *value >= first[zone],
            "zone {zone}: {} -> {value}",
            first[zone]
        );
    }
    // The host total holds the container's waits.
    let host = zones(&parse_exposition(&agent.metrics()), HOST_LATENCY, &[]);
    assert!(
        long_waits(&host) >= long_waits(&later),
        "{host:?} vs {later:?}"
    );
}

#[test]
fn memory_reclaim_directstall_of_a_container_at_its_limit() {
    const LIMIT: u64 = 64 << 20;
    let runtimes = Runtimes::get();
    let pid = std::process::id();
    let (id, idle_id) = (format!("reclaim-{pid}"), format!("idle-{pid}"));
    // Page cache charged to the container: 256 MiB per pass through a 64 MiB limit. The
    // file lives in the shared rootfs under a name of this test's own, removed every pass.
    let file = format!("/tmp/kpulse-reclaim-{pid}");
    let script = format!(
        "while :; do dd if=/dev/zero of={file} bs=1M count=256 2>/dev/null; rm -f {file}; \
         sleep 1; done"
    );
    let limit = LIMIT.to_string();
    let writer = runtimes.ctr_run(NS, &id, &[], &["--memory-limit", &limit], &script);
    let _idle = runtimes.ctr_run(NS, &idle_id, &[], &[], "sleep 1000");
    let agent = start(
        "memory-reclaim",
        "memory_reclaim",
        &runtimes.agent_config(""),
    );

    let memcg = format!("/sys/fs/cgroup/memory/{NS}/{id}");
    let v1 = std::path::Path::new(&format!("{memcg}/memory.failcnt")).exists();
    let first = wait_for(Duration::from_secs(30), "directstall of the writer", || {
        let series = parse_exposition(&agent.metrics());
        container_sample(&series, DIRECTSTALL, &id)
            .filter(|(_, v)| *v > 0.0)
            .cloned()
    });
    assert_container_labels(&first.0, &id);
    // Every limit reclaim follows a failed charge, counted in the v1 failcnt files.
    let failcnt = || {
        ["memory.failcnt", "memory.memsw.failcnt"]
            .iter()
            .map(|f| format!("{memcg}/{f}"))
            .filter(|p| std::path::Path::new(p).exists())
            .map(|p| cgroup_value(&p))
            .sum::<f64>()
    };
    let failcnt0 = failcnt();
    let start = container_sample(&parse_exposition(&agent.metrics()), DIRECTSTALL, &id)
        .map_or(0.0, |(_, v)| *v);
    let (_, later) = wait_for(Duration::from_secs(30), "directstall to rise", || {
        let series = parse_exposition(&agent.metrics());
        container_sample(&series, DIRECTSTALL, &id)
            .filter(|(_, v)| *v > start)
            .cloned()
    });
    let failcnt1 = failcnt();
    eprintln!(
        "writer: directstall {} -> {start} -> {later}, failcnt {failcnt0} -> {failcnt1}",
        first.1
    );
    if v1 {
        // One failed charge may already be counted before failcnt0, its reclaim after.
        assert!(
            later - start <= failcnt1 - failcnt0 + 1.0,
            "{} reclaims for {} failed charges",
            later - start,
            failcnt1 - failcnt0
        );
    }
    let series = parse_exposition(&agent.metrics());
    // An idle container without a limit: reported, at 0 (HUATUO uploads zeros).
    let idle = container_sample(&series, DIRECTSTALL, &idle_id).map(|(_, v)| *v);
    assert_eq!(idle, Some(0.0), "the idle container");
    assert!(
        agent
            .metrics()
            .contains(&format!("# TYPE {DIRECTSTALL} gauge")),
        "HUATUO's type"
    );
    drop(writer);
}

/// `(allocstall_*, compact_stall)` of `/proc/vmstat`.
fn vmstat_stalls() -> (f64, f64) {
    let text = read("/proc/vmstat");
    let mut allocstall = 0.0;
    let mut compact = 0.0;
    for line in text.lines() {
        let (key, value) = line.split_once(' ').unwrap();
        let value: f64 = value.trim().parse().unwrap();
        if key.starts_with("allocstall_") {
            allocstall += value;
        } else if key == "compact_stall" {
            compact = value;
        }
    }
    (allocstall, compact)
}

fn free_gauges(agent: &Agent) -> Option<(f64, f64)> {
    let series = parse_exposition(&agent.metrics());
    let get = |n: &str| {
        let samples = series.get(&format!("huatuo_bamai_memory_free_{n}"))?;
        (samples.len() == 1).then(|| samples[0].1)
    };
    Some((get("allocpages_stall")?, get("compaction_stall")?))
}

#[test]
fn memory_free_attaches_and_follows_the_kernels_stall_counters() {
    let agent = start("memory-free", "memory_free", NO_CONTAINERS);
    let text = agent.metrics();
    for name in ["allocpages_stall", "compaction_stall"] {
        assert!(
            text.contains(&format!("# TYPE huatuo_bamai_memory_free_{name} gauge")),
            "{name}: {text}"
        );
    }
    // Kernel counters read around the gauges: a stall that begins in between moves them.
    let kernel0 = vmstat_stalls();
    let first = free_gauges(&agent).expect("both gauges");
    assert!(first.0 >= 0.0 && first.1 >= 0.0, "{first:?}");
    // Proactive compaction: compact_zone() without a stalled allocation.
    std::fs::write("/proc/sys/vm/compact_memory", "1").unwrap();
    let mut last = first;
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(300));
        let now = free_gauges(&agent).expect("both gauges");
        assert!(now.0 >= last.0 && now.1 >= last.1, "{last:?} -> {now:?}");
        last = now;
    }
    let kernel1 = vmstat_stalls();
    eprintln!(
        "memory_free {first:?} -> {last:?} ms; vmstat (allocstall, compact_stall) \
         {kernel0:?} -> {kernel1:?}"
    );
    // While no stall begins, the gauges stay put (a stall in flight when the agent started
    // could still add: not on an idle machine).
    if kernel1.0 == kernel0.0 {
        assert_eq!(
            first.0, last.0,
            "no direct reclaim, yet allocpages_stall moved"
        );
    } else {
        // Direct reclaim happened after all: its time must show once it ends.
        wait_for(Duration::from_secs(20), "allocpages_stall to rise", || {
            free_gauges(&agent).filter(|now| now.0 > first.0)
        });
    }
    if kernel1.1 == kernel0.1 {
        assert_eq!(
            first.1, last.1,
            "compact_memory is not direct compaction, yet compaction_stall moved"
        );
    }
}
