//! The container-level network families of `netdev`, `netstat`, `sockstat` and `arp` on real
//! `ctr` containers of the test containerd (namespace `kptest`), each in its own network
//! namespace with only `lo` up: traffic made inside a container (ping, a TCP echo over `lo`)
//! shows in its series and nowhere else, values match the container's own
//! `/proc/<pid>/net/*`, every name HUATUO's dashboards query exists (under the default
//! `kpulse` prefix), a `--net-host` container reports nothing, and a stopped container's
//! series go away while the plugins keep running. Only `ctr` containers are used: agents
//! without this `[containers]` table do not see them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kpulse_integration_tests::containers::{CtrContainer, Runtimes};
use kpulse_integration_tests::{Agent, plugin_wasm, wait_for};

use super::metrics_host::{Series, parse_exposition, read};

const NS: &str = "kptest";
const PLUGINS: [&str; 4] = ["netdev", "netstat", "sockstat", "arp"];
const DASHBOARD_NAMES: &str = include_str!("../fixtures/huatuo-dashboard-metrics.txt");

/// A TCP echo server on `lo:7000`, restarted after each connection; the container lives on.
const SERVER: &str = "while :; do nc -l -p 7000 -e cat; done & while :; do sleep 1; done";

fn agent(label: &str, runtimes: &Runtimes, extra: &str) -> Agent {
    let plugins: Vec<_> = PLUGINS.iter().map(|p| plugin_wasm(p)).collect();
    let config = format!("{extra}{}", runtimes.agent_config(""));
    let agent = Agent::start(label, &plugins, &config);
    for plugin in PLUGINS {
        agent.wait_state(plugin, "running", Duration::from_secs(30));
    }
    agent
}

/// The samples of `name` for the container named `id`.
fn of(series: &Series, name: &str, id: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    series
        .get(name)
        .map(|samples| {
            samples
                .iter()
                .filter(|(labels, _)| labels.get("container_name").map(String::as_str) == Some(id))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// The one sample of `name` for container `id` with `device` (or no device label: `None`).
fn one(series: &Series, name: &str, id: &str, device: Option<&str>) -> Option<f64> {
    let samples: Vec<f64> = of(series, name, id)
        .into_iter()
        .filter(|(labels, _)| labels.get("device").map(String::as_str) == device)
        .map(|(_, v)| v)
        .collect();
    assert!(samples.len() <= 1, "{name} {id} {device:?}: {samples:?}");
    samples.first().copied()
}

/// `(receive_bytes, transmit_bytes)` of `lo` in `/proc/<pid>/net/dev`.
fn lo_bytes(pid: u32) -> (f64, f64) {
    let text = read(&format!("/proc/{pid}/net/dev"));
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("lo:"))
        .expect("lo in the container's net/dev");
    let cols: Vec<f64> = line
        .split_once(':')
        .unwrap()
        .1
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    (cols[0], cols[8])
}

/// `Proto_Field -> value` of the Tcp/TcpExt sections of `/proc/<pid>/net/{snmp,netstat}`.
fn tcp_counters(pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for file in ["snmp", "netstat"] {
        let text = read(&format!("/proc/{pid}/net/{file}"));
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let proto = names.split(':').next().unwrap();
            if proto != "Tcp" && proto != "TcpExt" {
                continue;
            }
            for (n, v) in names
                .split_whitespace()
                .zip(values.split_whitespace())
                .skip(1)
            {
                out.insert(format!("{proto}_{n}"), v.parse().unwrap());
            }
        }
    }
    out
}

fn start(runtimes: &Runtimes, id: &str, flags: &[&str]) -> (CtrContainer, u32) {
    let container = runtimes.ctr_run(NS, id, &[("app", "net")], flags, SERVER);
    let pid = wait_for(Duration::from_secs(10), "the container's pid", || {
        Some(container.pid()).filter(|p| *p != 0)
    });
    (container, pid)
}

#[test]
fn container_network_namespaces_have_their_own_series() {
    let runtimes = Runtimes::get();
    let id = format!("net-{}", std::process::id());
    let host_id = format!("net-host-{}", std::process::id());
    let (container, pid) = start(&runtimes, &id, &[]);
    let (_host_net, _) = start(&runtimes, &host_id, &["--net-host"]);
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap(),
        std::fs::read_link("/proc/self/ns/net").unwrap(),
        "the container has its own network namespace"
    );
    let agent = agent("metrics-container-net", &runtimes, "");

    let rx = "kpulse_netdev_container_receive_bytes_total";
    let first = wait_for(
        Duration::from_secs(30),
        "the container's netdev series",
        || {
            let series = parse_exposition(&agent.metrics());
            one(&series, rx, &id, Some("lo")).map(|v| (series, v))
        },
    );
    let (series, rx_before) = first;
    // lo only: no other device in the container's namespace.
    let devices: Vec<String> = of(&series, rx, &id)
        .iter()
        .map(|(l, _)| l["device"].clone())
        .collect();
    assert_eq!(devices, ["lo"]);

    // Traffic inside the container, on its lo.
    let out = container.exec(
        "traffic",
        "ping -c 3 -W 1 127.0.0.1; echo hi | nc -w 2 127.0.0.1 7000",
    );
    assert!(
        out.status.success(),
        "traffic: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hi"),
        "echoed"
    );

    let (k_rx_before, k_tx_before) = lo_bytes(pid);
    let tcp_before = tcp_counters(pid);
    let series = parse_exposition(&agent.metrics());
    let (k_rx_after, k_tx_after) = lo_bytes(pid);
    let tcp_after = tcp_counters(pid);

    // netdev: the container's lo moved, and matches its own /proc/<pid>/net/dev.
    let rx_now = one(&series, rx, &id, Some("lo")).expect("rx");
    let tx_now = one(
        &series,
        "kpulse_netdev_container_transmit_bytes_total",
        &id,
        Some("lo"),
    )
    .expect("tx");
    assert!(
        rx_now > rx_before && rx_now > 0.0,
        "lo rx {rx_before} -> {rx_now}"
    );
    assert!(k_rx_before <= rx_now && rx_now <= k_rx_after, "rx {rx_now}");
    assert!(k_tx_before <= tx_now && tx_now <= k_tx_after, "tx {tx_now}");
    // The container's labels, HUATUO's, and the host's series untouched by it.
    let labels = &of(&series, rx, &id)[0].0;
    assert_eq!(labels["container_type"], "normal");
    assert!(!labels.contains_key("container_id"), "{labels:?}");
    let host_lo = series["kpulse_netdev_receive_bytes_total"]
        .iter()
        .filter(|(l, _)| l.get("device").map(String::as_str) == Some("lo"))
        .count();
    assert_eq!(host_lo, 1, "one host lo series, without container labels");

    // netstat: the connection counted in the container's namespace.
    for key in ["Tcp_ActiveOpens", "Tcp_PassiveOpens", "Tcp_OutSegs"] {
        let v = one(
            &series,
            &format!("kpulse_netstat_container_{key}"),
            &id,
            None,
        )
        .unwrap_or_else(|| panic!("netstat container {key} missing"));
        assert!(v >= 1.0, "{key} = {v}");
        assert!(
            tcp_before[key] <= v && v <= tcp_after[key],
            "{key} {v} outside {}..{}",
            tcp_before[key],
            tcp_after[key]
        );
    }
    assert!(
        one(
            &series,
            "kpulse_netstat_container_TcpExt_ListenDrops",
            &id,
            None
        )
        .is_some()
    );
    eprintln!(
        "lo rx {rx_before} -> {rx_now} (kernel {k_rx_before}..{k_rx_after}), tx {tx_now}, \
         ActiveOpens {:?}",
        one(
            &series,
            "kpulse_netstat_container_Tcp_ActiveOpens",
            &id,
            None
        )
    );

    // sockstat: no mem/mem_bytes at container level.
    let used = one(&series, "kpulse_sockstat_container_sockets_used", &id, None);
    assert!(used.is_some(), "sockstat_container_sockets_used missing");
    assert!(one(&series, "kpulse_sockstat_container_TCP_inuse", &id, None).is_some());
    for name in ["TCP_mem", "TCP_mem_bytes", "UDP_mem", "UDP_mem_bytes"] {
        assert!(
            !series.contains_key(&format!("kpulse_sockstat_container_{name}")),
            "{name} at container level"
        );
    }

    eprintln!(
        "sockets_used {used:?}, TCP_inuse {:?}",
        one(&series, "kpulse_sockstat_container_TCP_inuse", &id, None)
    );

    // arp: an empty table (lo only) is 0, without a device label.
    let arp = one(&series, "kpulse_arp_container_entries", &id, None);
    assert_eq!(arp, Some(0.0), "arp entries of a lo-only namespace");

    // Every container-level name HUATUO's dashboards query for these plugins, but the
    // sockstat `*_mem_bytes` ones HUATUO itself never produces for containers.
    let missing: Vec<String> = DASHBOARD_NAMES
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| {
            PLUGINS
                .iter()
                .any(|p| n.starts_with(&format!("huatuo_bamai_{p}_container_")))
        })
        .filter(|n| !n.ends_with("_mem_bytes"))
        .map(|n| n.replacen("huatuo_bamai_", "kpulse_", 1))
        .filter(|n| of(&series, n, &id).is_empty())
        .collect();
    assert!(missing.is_empty(), "dashboard names missing: {missing:?}");

    // The --net-host container shares the host's namespace: no container series.
    let host_net: Vec<&String> = series
        .iter()
        .filter(|(name, samples)| {
            name.contains("_container_")
                && samples
                    .iter()
                    .any(|(l, _)| l.get("container_name") == Some(&host_id))
        })
        .map(|(name, _)| name)
        .collect();
    assert!(
        host_net.is_empty(),
        "host-network container reported: {host_net:?}"
    );

    // Stopped: its series go, the plugins keep collecting, nothing logged about it.
    container.stop();
    let started = Instant::now();
    wait_for(
        Duration::from_secs(30),
        "the stopped container's series gone",
        || {
            let series = parse_exposition(&agent.metrics());
            let left = series
                .iter()
                .any(|(_, s)| s.iter().any(|(l, _)| l.get("container_name") == Some(&id)));
            (!left && series.contains_key("kpulse_netdev_receive_bytes_total")).then_some(())
        },
    );
    eprintln!("series gone {:?} after the stop", started.elapsed());
    for plugin in PLUGINS {
        agent.wait_state(plugin, "running", Duration::from_secs(5));
    }
    let log = agent.log();
    assert!(
        !log.contains("network namespace files"),
        "a read failure was logged: {log}"
    );
}

#[test]
fn without_the_containers_capability_only_host_series() {
    let runtimes = Runtimes::get();
    let id = format!("net-deny-{}", std::process::id());
    let (_container, _) = start(&runtimes, &id, &[]);
    let agent = agent(
        "metrics-container-net-denied",
        &runtimes,
        "[policy]\ncontainers_allow = []\n",
    );
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
    for _ in 0..2 {
        let series = parse_exposition(&agent.metrics());
        let found: Vec<&String> = series
            .keys()
            .filter(|n| {
                PLUGINS
                    .iter()
                    .any(|p| n.starts_with(&format!("kpulse_{p}_container_")))
            })
            .collect();
        assert!(found.is_empty(), "{found:?}");
        for name in [
            "kpulse_netdev_receive_bytes_total",
            "kpulse_netstat_Tcp_ActiveOpens",
            "kpulse_sockstat_sockets_used",
            "kpulse_arp_malformed_lines_total",
        ] {
            assert!(series.contains_key(name), "{name}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
