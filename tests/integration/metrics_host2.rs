//! The host-level HUATUO metric families `arp`, `mountpoint_perm` and `netdev_hw`: the real
//! agent runs the real component with `prefix = "huatuo_bamai"`, and the values are checked
//! against the kernel's own files, read by the test around the same scrape. Names must match
//! those that HUATUO's Grafana dashboards query (`huatuo-dashboard-metrics.txt`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kpulse_integration_tests::{Agent, plugin_wasm, wait_for};

use super::metrics_host::{
    Series, agent, assert_dashboard_names, dashboard_names, read, scrape, single,
};

/// `label value -> sample` of a family labelled by `label`.
fn by_label(series: &Series, name: &str, label: &str) -> BTreeMap<String, f64> {
    series
        .get(name)
        .map(|samples| {
            samples
                .iter()
                .map(|(labels, v)| (labels[label].clone(), *v))
                .collect()
        })
        .unwrap_or_default()
}

/// `device -> entries` of `/proc/net/arp`.
fn arp_entries() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in read("/proc/net/arp").lines().skip(1) {
        let device = line.split_whitespace().nth(5).unwrap();
        *out.entry(device.to_owned()).or_insert(0.0) += 1.0;
    }
    out
}

fn arp_cache_entries() -> f64 {
    let text = read("/proc/net/stat/arp_cache");
    let hex = text
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    u64::from_str_radix(hex, 16).unwrap() as f64
}

#[test]
fn metrics_host2_arp_matches_proc_net_arp() {
    let agent = agent("arp", "");
    // Entries come and go with neighbour timeouts: retry until two kernel reads agree
    // with each other around the scrape.
    let (before, series, after) = wait_for(Duration::from_secs(30), "a stable ARP table", || {
        let before = (arp_entries(), arp_cache_entries());
        let series = scrape(&agent);
        let after = (arp_entries(), arp_cache_entries());
        (before == after).then_some((before, series, after))
    });
    assert_eq!(before, after);
    assert_eq!(
        by_label(&series, "huatuo_bamai_arp_entries", "device"),
        before.0
    );
    assert_eq!(single(&series, "huatuo_bamai_arp_total"), before.1);
    assert_eq!(
        single(&series, "huatuo_bamai_arp_malformed_lines_total"),
        0.0
    );
    let samples = series
        .get("huatuo_bamai_arp_entries")
        .cloned()
        .unwrap_or_default();
    assert!(
        samples.iter().all(|(l, _)| l.keys().eq(["device"])),
        "{samples:?}"
    );
    let names: Vec<&str> = dashboard_names("arp")
        .into_iter()
        // A host without neighbours has no per-device series.
        .filter(|n| *n != "huatuo_bamai_arp_entries" || !before.0.is_empty())
        .collect();
    assert!(names.contains(&"huatuo_bamai_arp_total"), "{names:?}");
    assert_dashboard_names(&series, &names);
    assert!(
        agent
            .metrics()
            .contains("# TYPE huatuo_bamai_arp_total gauge")
    );
}

/// `mount point -> read-only` of this process's `/proc/self/mountinfo` (the agent's mount
/// namespace too), the last mount on a point winning.
fn mounts() -> BTreeMap<String, f64> {
    read("/proc/self/mountinfo")
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let point = f[4].replace("\\040", " ");
            let ro = f[5].split(',').any(|o| o == "ro");
            (point, if ro { 1.0 } else { 0.0 })
        })
        .collect()
}

#[test]
fn metrics_host2_mountpoint_perm_all_mounts() {
    let agent = agent(
        "mountpoint_perm",
        "[plugins.mountpoint_perm]\nmountpoints_included = ''\n",
    );
    let before = mounts();
    let series = scrape(&agent);
    let after = mounts();
    let exposed = by_label(&series, "huatuo_bamai_mountpoint_perm_ro", "mountpoint");
    // Mount points that changed between the reads (other engineers' containers) are left out.
    for (point, ro) in &before {
        if after.get(point) != Some(ro) {
            continue;
        }
        // Label values with a `,` or `"` are not parsed by this test's simple parser.
        if point.contains([',', '"', '\\']) {
            continue;
        }
        assert_eq!(exposed.get(point), Some(ro), "{point}");
    }
    assert_eq!(exposed.get("/"), before.get("/"));
    assert!(exposed.values().all(|v| *v == 0.0 || *v == 1.0));
    assert_eq!(
        single(
            &series,
            "huatuo_bamai_mountpoint_perm_malformed_lines_total"
        ),
        0.0
    );
}

#[test]
fn metrics_host2_mountpoint_perm_huatuo_default() {
    let agent = agent("mountpoint_perm", "");
    let series = scrape(&agent);
    let exposed = by_label(&series, "huatuo_bamai_mountpoint_perm_ro", "mountpoint");
    let kernel = mounts();
    let want: BTreeMap<String, f64> = kernel
        .into_iter()
        .filter(|(p, _)| ["/", "/home", "/boot"].contains(&p.as_str()))
        .collect();
    assert_eq!(exposed, want);
    assert!(exposed.contains_key("/"));
    // HUATUO's name (its expected_metrics fixtures); a gauge.
    assert!(
        agent
            .metrics()
            .contains("# TYPE huatuo_bamai_mountpoint_perm_ro gauge")
    );
}

#[test]
fn metrics_host2_mountpoint_perm_bad_regex_is_quarantined() {
    let agent = Agent::start(
        "mountpoint-bad",
        &[plugin_wasm("mountpoint_perm")],
        "[plugins.mountpoint_perm]\nmountpoints_included = '(unclosed'\n",
    );
    let plugin = agent.wait_state("mountpoint_perm", "quarantined", Duration::from_secs(30));
    let error = plugin["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("mountpoints_included"), "{plugin}");
}

/// `device -> file -> value` of `/sys/class/net/*/statistics/*`.
fn sys_statistics() -> BTreeMap<String, BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for dev in std::fs::read_dir("/sys/class/net").unwrap() {
        let dev = dev.unwrap().file_name().into_string().unwrap();
        let Ok(files) = std::fs::read_dir(format!("/sys/class/net/{dev}/statistics")) else {
            continue;
        };
        let mut stats = BTreeMap::new();
        for file in files {
            let file = file.unwrap().file_name().into_string().unwrap();
            let text = read(&format!("/sys/class/net/{dev}/statistics/{file}"));
            stats.insert(file, text.trim().parse().unwrap());
        }
        out.insert(dev, stats);
    }
    out
}

/// Devices with a `device/driver` link, and the driver's name.
fn drivers() -> BTreeMap<String, String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .filter_map(|dev| {
            let dev = dev.unwrap().file_name().into_string().unwrap();
            let target = std::fs::read_link(format!("/sys/class/net/{dev}/device/driver")).ok()?;
            let driver = target.file_name()?.to_str()?.to_owned();
            Some((dev, driver))
        })
        .collect()
}

#[test]
fn metrics_host2_netdev_hw_matches_sysfs() {
    let agent = agent("netdev_hw", "");
    let before = sys_statistics();
    let series = scrape(&agent);
    let after = sys_statistics();
    assert!(before.contains_key("lo"));
    for (dev, stats) in &before {
        let Some(later) = after.get(dev) else {
            continue;
        };
        for (file, b) in stats {
            let name = format!("huatuo_bamai_netdev_hw_statistics_{file}_total");
            let v = by_label(&series, &name, "device")
                .get(dev)
                .copied()
                .unwrap_or_else(|| panic!("{name}{{device={dev}}} missing"));
            let a = later[file];
            assert!(
                *b <= v && v <= a,
                "{file} {dev}: exposed {v} outside [{b}, {a}] read from sysfs"
            );
        }
    }
    // HUATUO's family: one series per device with a driver, labelled device and driver.
    let drivers = drivers();
    let hw = &series
        .get("huatuo_bamai_netdev_hw_rx_dropped_total")
        .cloned()
        .unwrap_or_default();
    let got: BTreeMap<String, String> = hw
        .iter()
        .map(|(l, _)| (l["device"].clone(), l["driver"].clone()))
        .collect();
    assert_eq!(got, drivers);
    for (labels, v) in hw {
        let dev = &labels["device"];
        let (b, a) = (
            before[dev]["rx_missed_errors"],
            after[dev]["rx_missed_errors"],
        );
        assert!(b <= *v && *v <= a, "rx_dropped {dev}: {v} vs [{b}, {a}]");
    }
    if !drivers.is_empty() {
        assert_dashboard_names(&series, &dashboard_names("netdev_hw"));
    }
    assert_eq!(
        single(&series, "huatuo_bamai_netdev_hw_malformed_lines_total"),
        0.0
    );
}

#[test]
fn metrics_host2_netdev_hw_device_filter() {
    let agent = agent(
        "netdev_hw",
        "[plugins.netdev_hw]\ndevice_excluded = '^(lo)|(docker\\w*)|(veth\\w*)$'\n",
    );
    let series = scrape(&agent);
    let devices: BTreeSet<String> = by_label(
        &series,
        "huatuo_bamai_netdev_hw_statistics_rx_bytes_total",
        "device",
    )
    .into_keys()
    .collect();
    let want: BTreeSet<String> = sys_statistics()
        .into_keys()
        .filter(|d| d != "lo" && !d.starts_with("docker") && !d.contains("veth"))
        .collect();
    assert_eq!(devices, want);
}
