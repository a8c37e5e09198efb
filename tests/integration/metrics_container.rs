//! The container-level HUATUO metric families (`cpu_util`, `cpu_stat`, `memory_vmstat`,
//! `memory_events`) on real containers of the test containerd (`ctr`, namespace `kptest`):
//! a CPU burner under a half-CPU quota and a memory allocator under a 64 MiB limit. The
//! agent runs in HUATUO mode (`prefix = "huatuo_bamai"`); values are checked against the
//! containers' own cgroup files and what the containers do, labels against HUATUO's set.
//! Only `ctr` containers are used: they are invisible to agents without this `[containers]`
//! table, so the host-level tests running alongside see none of them.

use std::collections::BTreeMap;
use std::time::Duration;

use kpulse_integration_tests::containers::Runtimes;
use kpulse_integration_tests::{Agent, plugin_wasm, wait_for};

use super::metrics_host::{HUATUO, Series, parse_exposition, read};

const NS: &str = "kptest";
const MIB: f64 = 1024.0 * 1024.0;
const LIMIT: u64 = 64 * 1024 * 1024;
const PLUGINS: [&str; 4] = ["cpu_util", "cpu_stat", "memory_vmstat", "memory_events"];

/// HUATUO's container label names, in its order.
const CONTAINER_LABELS: [&str; 7] = [
    "region",
    "container_host",
    "container_name",
    "container_type",
    "container_level",
    "container_hostnamespace",
    "host",
];

fn agent(label: &str, runtimes: &Runtimes, extra: &str) -> Agent {
    let plugins: Vec<_> = PLUGINS.iter().map(|p| plugin_wasm(p)).collect();
    let config = format!(
        "{HUATUO}[plugins.memory_events]\nincluded = \"\"\n{extra}{}",
        runtimes.agent_config("")
    );
    let agent = Agent::start(label, &plugins, &config);
    for plugin in PLUGINS {
        agent.wait_state(plugin, "running", Duration::from_secs(30));
    }
    agent
}

/// The value of `name` for the container named `id`.
fn of(series: &Series, name: &str, id: &str) -> Option<f64> {
    series
        .get(name)?
        .iter()
        .find(|(labels, _)| labels.get("container_name").map(String::as_str) == Some(id))
        .map(|(_, v)| *v)
}

/// The labels of `name`'s sample for container `id`, in exposition order, from the raw text.
fn raw_labels(metrics: &str, name: &str, id: &str) -> Vec<(String, String)> {
    let needle = format!("container_name=\"{id}\"");
    let line = metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&needle))
        .unwrap_or_else(|| panic!("no {name} for {id}"));
    let labels = &line[name.len() + 1..line.rfind('}').unwrap()];
    labels
        .split(',')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), v.trim_matches('"').to_owned())
        })
        .collect()
}

fn key_values(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            Some((p.next()?.to_owned(), p.next()?.parse().ok()?))
        })
        .collect()
}

/// Whether the memory controller is on a v1 hierarchy here (no `memory.events`).
fn memory_v1() -> bool {
    read("/proc/self/mounts").lines().any(|l| {
        l.contains(" cgroup ")
            && l.split_whitespace()
                .nth(3)
                .is_some_and(|o| o.split(',').any(|x| x == "memory"))
    })
}

#[test]
fn container_cpu_and_memory_of_a_burner_and_an_allocator() {
    let runtimes = Runtimes::get();
    let pid = std::process::id();
    let (burn_id, mem_id) = (format!("cpu-{pid}"), format!("mem-{pid}"));
    let burner = runtimes.ctr_run(NS, &burn_id, &[], &["--cpus", "0.5"], "while :; do :; done");
    let allocator = runtimes.ctr_run(
        NS,
        &mem_id,
        &[],
        &["--memory-limit", &LIMIT.to_string()],
        // 40 MiB of shmem, charged to the container's memory cgroup while the file exists.
        "dd if=/dev/zero of=/dev/shm/fill bs=1M count=40 2>/dev/null; sleep 1000",
    );
    let agent = agent("metrics-container", &runtimes, "");

    // Both seen, and the allocation done.
    wait_for(Duration::from_secs(30), "both containers' series", || {
        let series = parse_exposition(&agent.metrics());
        let cores = of(&series, "huatuo_bamai_cpu_util_container_cores", &burn_id)?;
        let usage = of(
            &series,
            "huatuo_bamai_memory_vmstat_container_usage_bytes",
            &mem_id,
        )?;
        (usage > 40.0 * MIB).then_some(cores)
    });
    // Two scrapes a couple of seconds apart: a complete interval for both.
    parse_exposition(&agent.metrics());
    std::thread::sleep(Duration::from_millis(2500));
    let text = agent.metrics();
    let series = parse_exposition(&text);
    let mem_dir = format!("/sys/fs/cgroup/memory/{NS}/{mem_id}");

    // cpu_util: the burner uses all of its half CPU, the allocator sleeps.
    let get = |name: &str, id: &str| {
        of(&series, &format!("huatuo_bamai_{name}"), id)
            .unwrap_or_else(|| panic!("{name} of {id} missing: {text}"))
    };
    let (cores, usr, sys, total) = (
        get("cpu_util_container_cores", &burn_id),
        get("cpu_util_container_usr", &burn_id),
        get("cpu_util_container_sys", &burn_id),
        get("cpu_util_container_total", &burn_id),
    );
    eprintln!("burner: cores {cores} usr {usr} sys {sys} total {total}");
    assert_eq!(cores, 0.5, "--cpus 0.5 is a 50000/100000 CFS quota");
    assert!(total > 50.0 && total <= 100.0, "burner total {total}");
    assert!(
        usr > 30.0 && usr <= 100.0 && sys <= 100.0,
        "burner usr {usr} sys {sys}"
    );
    let online = read("/proc/stat")
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count() as f64;
    let mem_cores = get("cpu_util_container_cores", &mem_id);
    assert!(
        mem_cores >= 1.0 && mem_cores <= online,
        "no quota: the cpuset's CPUs, {mem_cores} of {online}"
    );
    let mem_total = get("cpu_util_container_total", &mem_id);
    assert!(mem_total < 20.0, "a sleeping container: {mem_total}");
    // The host series are still there.
    for host in ["usr", "sys", "total"] {
        let name = format!("huatuo_bamai_cpu_util_{host}");
        assert_eq!(series.get(&name).map(Vec::len), Some(1), "{name}");
    }

    // cpu_stat: the half-CPU quota throttles the burner.
    let nr_periods = get("cpu_stat_container_nr_periods", &burn_id);
    let nr_throttled = get("cpu_stat_container_nr_throttled", &burn_id);
    let throttled_time = get("cpu_stat_container_throttled_time", &burn_id);
    let nr_bursts = get("cpu_stat_container_nr_bursts", &burn_id);
    let burst_time = get("cpu_stat_container_burst_time", &burn_id);
    eprintln!(
        "burner cpu.stat: nr_periods {nr_periods} nr_throttled {nr_throttled} \
         throttled_time {throttled_time} ns, nr_bursts {nr_bursts} burst_time {burst_time}"
    );
    assert!(nr_periods >= 10.0 && nr_throttled >= 5.0 && nr_throttled <= nr_periods);
    // Throttled about half of each period (50 ms), in ns.
    assert!(
        throttled_time > nr_throttled * 1e6,
        "throttled_time {throttled_time} ns for {nr_throttled} periods"
    );
    let kernel = key_values(&read(&format!(
        "/sys/fs/cgroup/cpu/{NS}/{burn_id}/cpu.stat"
    )));
    assert!(kernel["nr_throttled"] >= nr_throttled, "{kernel:?}");
    let schedstats =
        std::fs::read_to_string("/proc/sys/kernel/sched_schedstats").is_ok_and(|v| v.trim() == "1");
    if !schedstats {
        assert!(
            !series.contains_key("huatuo_bamai_cpu_stat_container_wait_sum_percent"),
            "no wait_sum without schedstats"
        );
    }

    // memory_vmstat: the allocator's 40 MiB, below its limit, and its memory.stat keys.
    let usage = get("memory_vmstat_container_usage_bytes", &mem_id);
    let limit = get("memory_vmstat_container_limit_bytes", &mem_id);
    let working_set = get("memory_vmstat_container_working_set_bytes", &mem_id);
    eprintln!("allocator: usage {usage} limit {limit} working set {working_set}");
    assert!(usage > 20.0 * MIB && usage < LIMIT as f64, "usage {usage}");
    assert_eq!(limit, LIMIT as f64);
    assert!(
        working_set > 20.0 * MIB && working_set <= usage,
        "{working_set}"
    );
    assert_eq!(
        of(
            &series,
            "huatuo_bamai_memory_vmstat_container_limit_bytes",
            &burn_id
        ),
        None,
        "unlimited: no limit series"
    );
    if std::path::Path::new(&mem_dir).exists() {
        let stat = key_values(&read(&format!("{mem_dir}/memory.stat")));
        let shmem = get("memory_vmstat_container_shmem", &mem_id);
        assert_eq!(shmem, stat["shmem"], "a file that does not move");
        assert!(shmem >= 40.0 * MIB, "{shmem}");
        let exposed = series
            .keys()
            .filter(|n| n.starts_with("huatuo_bamai_memory_vmstat_container_"))
            .filter(|n| of(&series, n, &mem_id).is_some())
            .count();
        assert_eq!(
            exposed,
            stat.len() + 3,
            "every memory.stat key and the 3 extras"
        );
    }
    // memory_events: v2 only; this hybrid host has none.
    let events = series
        .keys()
        .any(|n| n.starts_with("huatuo_bamai_memory_events_container_"));
    assert_eq!(
        events,
        !memory_v1(),
        "memory.events series on a v2 memory host only"
    );

    // HUATUO's label set and order, the ctr id as container_name.
    for (name, id) in [
        ("huatuo_bamai_cpu_util_container_total", &burn_id),
        ("huatuo_bamai_cpu_stat_container_nr_throttled", &burn_id),
        ("huatuo_bamai_memory_vmstat_container_usage_bytes", &mem_id),
    ] {
        let labels = raw_labels(&text, name, id);
        let keys: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, CONTAINER_LABELS, "{name}");
        let value = |k: &str| labels.iter().find(|(l, _)| l == k).map(|(_, v)| v.as_str());
        assert_eq!(value("container_name"), Some(id.as_str()));
        assert_eq!(value("container_type"), Some("normal"));
        assert_eq!(value("region"), Some("test"));
        assert!(value("host").is_some_and(|h| !h.is_empty()), "{labels:?}");
    }
    // The dashboard's container CPU names.
    for name in [
        "huatuo_bamai_cpu_util_container_usr",
        "huatuo_bamai_cpu_util_container_sys",
    ] {
        assert!(series.contains_key(name), "{name}");
    }
    for plugin in ["cpu_util", "memory_vmstat", "cpu_stat", "memory_events"] {
        let name = format!("huatuo_bamai_{plugin}_malformed_lines_total");
        assert_eq!(series.get(&name).map(|s| s[0].1), Some(0.0), "{name}");
    }

    // A container that goes away takes its series with it.
    burner.stop();
    wait_for(
        Duration::from_secs(30),
        "the stopped burner's series to go",
        || {
            let text = agent.metrics();
            (!text.contains(&format!("container_name=\"{burn_id}\""))).then_some(())
        },
    );
    let series = parse_exposition(&agent.metrics());
    assert!(of(&series, "huatuo_bamai_cpu_util_container_cores", &mem_id).is_some());
    drop(allocator);
}

#[test]
fn without_the_containers_capability_only_host_series() {
    let runtimes = Runtimes::get();
    let id = format!("deny-{}", std::process::id());
    let _container = runtimes.ctr_run(NS, &id, &[], &[], "while :; do sleep 1; done");
    let agent = agent(
        "metrics-container-denied",
        &runtimes,
        "[policy]\ncontainers_allow = []\n",
    );
    // The registry knows the container; the plugins may not ask it.
    wait_for(
        Duration::from_secs(15),
        "the container in /containers",
        || {
            let list = agent.get("/containers").json();
            list["data"]["containers"]
                .as_array()?
                .iter()
                .any(|c| c["id"] == id.as_str())
                .then_some(())
        },
    );
    // Scrapes a second apart: host series every time, container series never.
    for _ in 0..3 {
        let text = agent.metrics();
        let series = parse_exposition(&text);
        for plugin in PLUGINS {
            let prefix = format!("huatuo_bamai_{plugin}_container_");
            let found: Vec<&String> = series.keys().filter(|n| n.starts_with(&prefix)).collect();
            assert!(found.is_empty(), "{found:?}");
        }
        for name in [
            "huatuo_bamai_cpu_util_usr",
            "huatuo_bamai_cpu_util_total",
            "huatuo_bamai_memory_vmstat_nr_free_pages",
            "huatuo_bamai_cpu_util_malformed_lines_total",
            "huatuo_bamai_cpu_stat_malformed_lines_total",
        ] {
            assert_eq!(series.get(name).map(Vec::len), Some(1), "{name}");
        }
        for plugin in PLUGINS {
            let probe =
                format!("huatuo_bamai_scrape_collector_success{{collector=\"{plugin}\"}} 1");
            assert!(text.contains(&probe), "{probe}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
