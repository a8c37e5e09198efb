//! The host-level HUATUO metric families (`cpu_util`, `memory_vmstat`, `diskio`, `netdev`,
//! `netstat`, `sockstat`, `memory_buddyinfo`, `tcp_memory`): the real agent runs the real
//! component with `prefix = "huatuo_bamai"`, and the values are checked against the kernel's
//! own files, read by the test around the same scrape. Counters must lie between a read just
//! before and one just after the scrape; gauges within a tolerance. Names must match those
//! that HUATUO's Grafana dashboards query (`huatuo-dashboard-metrics.txt`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kpulse_integration_tests::{Agent, plugin_wasm, wait_for};

pub(super) const HUATUO: &str = "[metrics]\nprefix = \"huatuo_bamai\"\n";

/// The metric names HUATUO's dashboards query (a copy of the shared reference `huatuo-dashboard-metrics.txt`).
const DASHBOARD_NAMES: &str = include_str!("../fixtures/huatuo-dashboard-metrics.txt");

/// `name -> [(labels, value)]` of a text exposition, without the host's `region`/`host`.
pub(super) type Series = BTreeMap<String, Vec<(BTreeMap<String, String>, f64)>>;

pub(super) fn parse_exposition(text: &str) -> Series {
    let mut out = Series::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        // Label values here never contain `,` or `"`: device, zone and order names.
        let labels: BTreeMap<String, String> = labels
            .split(',')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .filter(|(k, _)| k != "region" && k != "host")
            .collect();
        out.entry(name.to_owned())
            .or_default()
            .push((labels, value));
    }
    out
}

/// Starts an agent with one plugin in HUATUO mode and waits for its first samples.
/// Host-level families only: containers running on the machine meanwhile (other tests'
/// Docker or CRI containers) would add `_container_` series to the families compared here.
const NO_CONTAINERS: &str = "[containers]\nenabled = false\n";

pub(super) fn agent(plugin: &str, settings: &str) -> Agent {
    let agent = Agent::start(
        plugin,
        &[plugin_wasm(plugin)],
        &format!("{HUATUO}{NO_CONTAINERS}{settings}"),
    );
    agent.wait_state(plugin, "running", Duration::from_secs(30));
    let probe = format!("huatuo_bamai_scrape_collector_success{{collector=\"{plugin}\"}} 1");
    wait_for(
        Duration::from_secs(20),
        &format!("{plugin} samples"),
        || agent.metrics().contains(&probe).then_some(()),
    );
    agent
}

pub(super) fn scrape(agent: &Agent) -> Series {
    parse_exposition(&agent.metrics())
}

/// The only sample of a label-less family.
pub(super) fn single(series: &Series, name: &str) -> f64 {
    let samples = series
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing; have {:?}", series.keys()));
    assert_eq!(samples.len(), 1, "{name}: {samples:?}");
    samples[0].1
}

/// The sample of `name` whose labels include `label=value`.
fn labelled(series: &Series, name: &str, label: &str, value: &str) -> Option<f64> {
    series
        .get(name)?
        .iter()
        .find(|(labels, _)| labels.get(label).map(String::as_str) == Some(value))
        .map(|(_, v)| *v)
}

/// `before <= exposed <= after` for a kernel counter read around the scrape.
fn assert_between(what: &str, before: f64, exposed: f64, after: f64) {
    assert!(
        before <= exposed && exposed <= after,
        "{what}: exposed {exposed} outside [{before}, {after}] read from the kernel"
    );
}

/// A gauge read around the scrape, within `slack` of the range the kernel showed.
fn assert_near(what: &str, before: f64, exposed: f64, after: f64, slack: f64) {
    let (lo, hi) = (before.min(after) - slack, before.max(after) + slack);
    assert!(
        lo <= exposed && exposed <= hi,
        "{what}: exposed {exposed}, kernel {before}..{after} (slack {slack})"
    );
}

/// Dashboard names of one family (`huatuo_bamai_<plugin>_...`, host level), leaving out the
/// families of other plugins that share the prefix (`netdev_hw`, `netdev_qdisc`).
pub(super) fn dashboard_names(plugin: &str) -> Vec<&'static str> {
    let prefix = format!("huatuo_bamai_{plugin}_");
    DASHBOARD_NAMES
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix) && !n.starts_with(&format!("{prefix}container_")))
        .filter(|n| {
            !["hw_", "qdisc_"]
                .iter()
                .any(|o| n[prefix.len()..].starts_with(o))
        })
        .collect()
}

pub(super) fn assert_dashboard_names(series: &Series, names: &[&str]) {
    assert!(!names.is_empty());
    let missing: Vec<&&str> = names.iter().filter(|n| !series.contains_key(**n)).collect();
    assert!(
        missing.is_empty(),
        "dashboard names not exposed: {missing:?}"
    );
}

pub(super) fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn key_values(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            Some((p.next()?.to_owned(), p.next()?.parse().ok()?))
        })
        .collect()
}

/// `(usr, sys, total)` percentages between two `/proc/stat` reads, the plugin's formula.
fn cpu_util_between(before: &str, after: &str) -> (f64, f64, f64) {
    let cpu = |text: &str| -> Vec<f64> {
        let line = text.lines().find(|l| l.starts_with("cpu ")).unwrap();
        line.split_whitespace()
            .skip(1)
            .take(8)
            .map(|v| v.parse().unwrap())
            .collect()
    };
    let (a, b) = (cpu(before), cpu(after));
    let d: Vec<f64> = b.iter().zip(&a).map(|(b, a)| b - a).collect();
    let all: f64 = d.iter().sum();
    let usr = (d[0] + d[1]) * 100.0 / all;
    let sys = (d[2] + d[5] + d[6]) * 100.0 / all;
    (usr, sys, usr + sys + d[7] * 100.0 / all)
}

#[test]
fn cpu_util_matches_proc_stat() {
    let agent = agent("cpu_util", "");
    // Let the interval since `init` pass, so that the next scrape starts a fresh interval.
    std::thread::sleep(Duration::from_millis(1200));
    scrape(&agent);
    let before = read("/proc/stat");
    // Some user time of our own in the interval.
    let spin_until = Instant::now() + Duration::from_millis(1500);
    let spinner = std::thread::spawn(move || {
        let mut x = 0u64;
        while Instant::now() < spin_until {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        x
    });
    std::thread::sleep(Duration::from_millis(2500));
    spinner.join().unwrap();
    let after = read("/proc/stat");
    let series = scrape(&agent);
    let (usr, sys, total) = (
        single(&series, "huatuo_bamai_cpu_util_usr"),
        single(&series, "huatuo_bamai_cpu_util_sys"),
        single(&series, "huatuo_bamai_cpu_util_total"),
    );
    let (k_usr, k_sys, k_total) = cpu_util_between(&before, &after);
    // The windows differ by the few milliseconds between a file read and the scrape.
    for (what, exposed, kernel) in [
        ("usr", usr, k_usr),
        ("sys", sys, k_sys),
        ("total", total, k_total),
    ] {
        assert!(
            (exposed - kernel).abs() < 8.0,
            "cpu_util {what}: exposed {exposed}, /proc/stat {kernel}"
        );
    }
    assert!(
        usr > 5.0,
        "a spinning thread for 1.5 s of 2.5 s shows in usr: {usr}"
    );
    assert!(
        0.0 <= sys && usr + sys <= total + 1e-9 && total <= 100.0 + 1e-9,
        "{usr} {sys} {total}"
    );
    assert_dashboard_names(&series, &dashboard_names("cpu_util"));
}

#[test]
fn memory_vmstat_matches_proc_vmstat() {
    let agent = agent("memory_vmstat", "");
    let before = key_values(&read("/proc/vmstat"));
    let series = scrape(&agent);
    let after = key_values(&read("/proc/vmstat"));
    let prefix = "huatuo_bamai_memory_vmstat_";
    let exposed: BTreeSet<&str> = series
        .keys()
        .filter_map(|n| n.strip_prefix(prefix))
        .filter(|k| *k != "malformed_lines_total")
        .collect();
    let kernel: BTreeSet<&str> = before.keys().map(String::as_str).collect();
    assert_eq!(
        exposed, kernel,
        "without rules every /proc/vmstat key is exposed"
    );
    for (key, b) in &before {
        let a = after[key];
        // Gauges (nr_*) move while other engineers build; counters only grow.
        let slack = if key.starts_with("nr_") {
            0.1 * b.max(a) + 4096.0
        } else {
            0.0
        };
        let v = single(&series, &format!("{prefix}{key}"));
        if slack == 0.0 && b <= &a {
            assert_between(key, *b, v, a);
        } else {
            assert_near(key, *b, v, a, slack.max(0.1 * b.max(a)));
        }
    }
    assert_eq!(
        single(&series, "huatuo_bamai_memory_vmstat_malformed_lines_total"),
        0.0
    );
    // Every dashboard key that this kernel has.
    let names: Vec<&str> = dashboard_names("memory_vmstat")
        .into_iter()
        .filter(|n| kernel.contains(&n[prefix.len()..]))
        .collect();
    assert!(names.len() >= 8, "{names:?}");
    assert_dashboard_names(&series, &names);
}

#[test]
fn memory_vmstat_include_exclude_regexes() {
    let agent = agent(
        "memory_vmstat",
        "[plugins.memory_vmstat]\nincluded_on_host = '^nr_free_pages$|^pgsteal_'\nexcluded_on_host = 'kswapd'\n",
    );
    let series = scrape(&agent);
    let kernel = key_values(&read("/proc/vmstat"));
    let want: BTreeSet<String> = kernel
        .keys()
        .filter(|k| (*k == "nr_free_pages" || k.starts_with("pgsteal_")) && !k.contains("kswapd"))
        .map(|k| format!("huatuo_bamai_memory_vmstat_{k}"))
        .collect();
    let got: BTreeSet<String> = series
        .keys()
        .filter(|n| {
            n.starts_with("huatuo_bamai_memory_vmstat_") && !n.ends_with("malformed_lines_total")
        })
        .cloned()
        .collect();
    assert_eq!(got, want);
    assert!(want.contains("huatuo_bamai_memory_vmstat_pgsteal_direct"));
}

#[test]
fn memory_vmstat_bad_regex_is_quarantined() {
    let agent = Agent::start(
        "vmstat-bad",
        &[plugin_wasm("memory_vmstat")],
        "[plugins.memory_vmstat]\nincluded_on_host = '(unclosed'\n",
    );
    let plugin = agent.wait_state("memory_vmstat", "quarantined", Duration::from_secs(30));
    let error = plugin["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("included_on_host"), "{plugin}");
}

#[test]
fn diskio_matches_proc_diskstats() {
    let agent = agent("diskio", "");
    let before = read("/proc/diskstats");
    let series = scrape(&agent);
    let after = read("/proc/diskstats");
    let devices = |text: &str| -> BTreeMap<String, Vec<f64>> {
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let n = f
                    .get(3..14)?
                    .iter()
                    .map(|v| v.parse().ok())
                    .collect::<Option<Vec<f64>>>()?;
                Some((f[2].to_owned(), n))
            })
            .collect()
    };
    let (b, a) = (devices(&before), devices(&after));
    assert!(!b.is_empty(), "no block devices: {before}");
    // (name, diskstats column from reads = 0, scale)
    let counters = [
        ("read_requests_total", 0, 1.0),
        ("read_bytes_total", 2, 512.0),
        ("read_time_seconds_total", 3, 0.001),
        ("write_requests_total", 4, 1.0),
        ("written_bytes_total", 6, 512.0),
        ("write_time_seconds_total", 7, 0.001),
        ("io_time_seconds_total", 9, 0.001),
        ("io_time_weighted_seconds_total", 10, 0.001),
    ];
    for (device, before) in &b {
        let Some(after) = a.get(device) else { continue };
        for (name, column, scale) in counters {
            let v = labelled(
                &series,
                &format!("huatuo_bamai_diskio_{name}"),
                "device",
                device,
            )
            .unwrap_or_else(|| panic!("{name}{{device={device}}} missing"));
            // ms / 1000 in the plugin vs ms * 0.001 here: allow the last bit of rounding.
            let (lo, hi) = (before[column] * scale, after[column] * scale);
            assert_between(
                &format!("{name} {device}"),
                lo - lo * 1e-12,
                v,
                hi + hi * 1e-12,
            );
        }
        let in_flight = labelled(
            &series,
            "huatuo_bamai_diskio_io_in_progress",
            "device",
            device,
        )
        .unwrap();
        assert_near(
            &format!("io_in_progress {device}"),
            before[8],
            in_flight,
            after[8],
            64.0,
        );
    }
    // iowait needs two scrapes.
    std::thread::sleep(Duration::from_millis(300));
    let series = scrape(&agent);
    let iowait = single(&series, "huatuo_bamai_diskio_disk_iowait_percent");
    assert!((0.0..=100.0).contains(&iowait), "{iowait}");
    assert_dashboard_names(&series, &dashboard_names("diskio"));
    let samples = &series["huatuo_bamai_diskio_read_bytes_total"];
    assert!(
        samples
            .iter()
            .all(|(labels, _)| labels.keys().eq(["device"])),
        "{samples:?}"
    );
}

/// `/proc/net/dev` as `device -> 16 columns`.
fn net_dev(text: &str) -> BTreeMap<String, Vec<f64>> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            Some((
                name.trim().to_owned(),
                rest.split_whitespace()
                    .map(|v| v.parse().unwrap())
                    .collect(),
            ))
        })
        .collect()
}

#[test]
fn netdev_matches_proc_net_dev() {
    const COLUMNS: [&str; 16] = [
        "receive_bytes",
        "receive_packets",
        "receive_errors",
        "receive_dropped",
        "receive_fifo",
        "receive_frame",
        "receive_compressed",
        "receive_multicast",
        "transmit_bytes",
        "transmit_packets",
        "transmit_errors",
        "transmit_dropped",
        "transmit_fifo",
        "transmit_colls",
        "transmit_carrier",
        "transmit_compressed",
    ];
    let agent = agent("netdev", "");
    let before = net_dev(&read("/proc/net/dev"));
    let series = scrape(&agent);
    let after = net_dev(&read("/proc/net/dev"));
    assert!(before.contains_key("lo"));
    for (device, b) in &before {
        let Some(a) = after.get(device) else { continue };
        for (i, column) in COLUMNS.iter().enumerate() {
            let name = format!("huatuo_bamai_netdev_{column}_total");
            let v = labelled(&series, &name, "device", device)
                .unwrap_or_else(|| panic!("{name}{{device={device}}} missing"));
            assert_between(&format!("{column} {device}"), b[i], v, a[i]);
        }
    }
    assert_dashboard_names(&series, &dashboard_names("netdev"));
}

#[test]
fn netdev_device_filter() {
    let agent = agent(
        "netdev",
        "[plugins.netdev]\ndevice_excluded = '^(lo)|(docker\\w*)|(veth\\w*)$'\n",
    );
    let series = scrape(&agent);
    let devices: BTreeSet<&str> = series["huatuo_bamai_netdev_receive_bytes_total"]
        .iter()
        .map(|(labels, _)| labels["device"].as_str())
        .collect();
    let kernel = net_dev(&read("/proc/net/dev"));
    let want: BTreeSet<&str> = kernel
        .keys()
        .map(String::as_str)
        .filter(|d| *d != "lo" && !d.starts_with("docker") && !d.contains("veth"))
        .collect();
    assert_eq!(devices, want);
}

/// `Proto_Field -> value` of the Tcp and TcpExt sections of `/proc/net/{snmp,netstat}`.
fn tcp_counters() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for path in ["/proc/net/snmp", "/proc/net/netstat"] {
        let text = read(path);
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let names: Vec<&str> = pair[0].split_whitespace().collect();
            let values: Vec<&str> = pair[1].split_whitespace().collect();
            let proto = names[0].trim_end_matches(':');
            if proto == "Tcp" || proto == "TcpExt" {
                for (n, v) in names.iter().zip(values).skip(1) {
                    out.insert(format!("{proto}_{n}"), v.parse().unwrap());
                }
            }
        }
    }
    out
}

#[test]
fn netstat_matches_proc_net_snmp_and_netstat() {
    let agent = agent("netstat", "");
    let before = tcp_counters();
    let series = scrape(&agent);
    let after = tcp_counters();
    let exposed: BTreeSet<&str> = series
        .keys()
        .filter_map(|n| n.strip_prefix("huatuo_bamai_netstat_"))
        .filter(|n| *n != "malformed_lines_total")
        .collect();
    assert_eq!(
        exposed,
        before.keys().map(String::as_str).collect::<BTreeSet<_>>()
    );
    for (key, b) in &before {
        let v = single(&series, &format!("huatuo_bamai_netstat_{key}"));
        if key == "Tcp_CurrEstab" {
            assert_near(key, *b, v, after[key], 50.0);
        } else {
            assert_between(key, *b, v, after[key]);
        }
    }
    assert_eq!(single(&series, "huatuo_bamai_netstat_Tcp_MaxConn"), -1.0);
    let names: Vec<&str> = dashboard_names("netstat")
        .into_iter()
        .filter(|n| before.contains_key(&n["huatuo_bamai_netstat_".len()..]))
        .collect();
    assert!(names.len() >= 30, "{names:?}");
    assert_dashboard_names(&series, &names);
    // HUATUO's type: gauges, whose names carry no `_total`.
    assert!(
        agent
            .metrics()
            .contains("# TYPE huatuo_bamai_netstat_TcpExt_ListenDrops gauge")
    );
}

#[test]
fn netstat_filter() {
    let agent = agent(
        "netstat",
        "[plugins.netstat]\nincluded = 'Tcp_RetransSegs|TcpExt_TCPLostRetransmit'\n",
    );
    let series = scrape(&agent);
    let got: BTreeSet<&str> = series
        .keys()
        .filter_map(|n| n.strip_prefix("huatuo_bamai_netstat_"))
        .collect();
    assert_eq!(
        got,
        BTreeSet::from([
            "Tcp_RetransSegs",
            "TcpExt_TCPLostRetransmit",
            "malformed_lines_total"
        ])
    );
}

fn page_size() -> f64 {
    // SAFETY-free: sysconf is a plain libc call without pointers.
    #[allow(unsafe_code, reason = "sysconf(_SC_PAGESIZE) takes no pointers")]
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    size as f64
}

/// `LABEL_key -> value` of `/proc/net/sockstat`.
fn sockstat() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in read("/proc/net/sockstat").lines() {
        let (label, rest) = line.split_once(':').unwrap();
        let parts: Vec<&str> = rest.split_whitespace().collect();
        for kv in parts.chunks(2) {
            out.insert(format!("{label}_{}", kv[0]), kv[1].parse().unwrap());
        }
    }
    out
}

#[test]
fn sockstat_matches_proc_net_sockstat() {
    let agent = agent("sockstat", "");
    let before = sockstat();
    let series = scrape(&agent);
    let after = sockstat();
    for (key, b) in &before {
        let v = single(&series, &format!("huatuo_bamai_sockstat_{key}"));
        // Sockets come and go (this test's own HTTP connections among them).
        assert_near(key, *b, v, after[key], 50.0 + 0.2 * b);
    }
    let mem = single(&series, "huatuo_bamai_sockstat_TCP_mem");
    assert_eq!(
        single(&series, "huatuo_bamai_sockstat_TCP_mem_bytes"),
        mem * page_size()
    );
    assert_dashboard_names(&series, &dashboard_names("sockstat"));
}

#[test]
fn memory_buddyinfo_matches_proc_buddyinfo() {
    let agent = agent("memory_buddyinfo", "");
    let series = scrape(&agent);
    let kernel = read("/proc/buddyinfo");
    let samples = &series["huatuo_bamai_memory_buddyinfo_blocks"];
    let mut expected = 0;
    for line in kernel.lines() {
        let (node, rest) = line.strip_prefix("Node ").unwrap().split_once(',').unwrap();
        let mut parts = rest.split_whitespace().skip(1);
        let zone = parts.next().unwrap();
        for (order, free) in parts.enumerate() {
            expected += 1;
            let free: f64 = free.parse().unwrap();
            let (_, v) = samples
                .iter()
                .find(|(l, _)| {
                    l["node"] == node && l["zone"] == zone && l["order"] == order.to_string()
                })
                .unwrap_or_else(|| {
                    panic!("blocks{{node={node},zone={zone},order={order}}} missing")
                });
            // Free blocks move with every allocation on a busy machine.
            assert_near(
                &format!("{zone}/{order}"),
                free,
                *v,
                free,
                0.5 * free + 2000.0,
            );
        }
    }
    assert_eq!(samples.len(), expected);
    assert!(
        samples
            .iter()
            .all(|(l, _)| l.keys().eq(["node", "order", "zone"]))
    );
}

#[test]
fn tcp_memory_matches_sockstat_and_tcp_mem() {
    let agent = agent("tcp_memory", "");
    let before = sockstat()["TCP_mem"];
    let series = scrape(&agent);
    let after = sockstat()["TCP_mem"];
    let limit: f64 = read("/proc/sys/net/ipv4/tcp_mem")
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    let pages = single(&series, "huatuo_bamai_tcp_memory_usage_pages");
    assert_near("usage_pages", before, pages, after, 64.0);
    assert_eq!(
        single(&series, "huatuo_bamai_tcp_memory_limit_pages"),
        limit
    );
    assert_eq!(
        single(&series, "huatuo_bamai_tcp_memory_usage_bytes"),
        pages * page_size()
    );
    let ratio = single(&series, "huatuo_bamai_tcp_memory_usage_percent");
    assert!(
        (ratio - pages / limit).abs() < 1e-9,
        "{ratio} vs {pages}/{limit}"
    );
}
