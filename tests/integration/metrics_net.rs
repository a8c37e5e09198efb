//! The plugins on the host's `net` interface (netlink queries run by the host): qdisc
//! statistics of a veth device under `tbf` against `tc -s -j qdisc show`, DCB and RDMA
//! plugins `inactive` with a not-supported reason on a machine without the hardware, the
//! container load of a busy `ctr` container against its tasks' states, and a plugin the
//! operator did not grant `net` refused. Needs root, iproute2 (`ip`, `tc`) and, for the
//! container test, the test containerd (`ctr`, namespace `kptest`).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use kpulse_integration_tests::containers::Runtimes;
use kpulse_integration_tests::{Agent, plugin_wasm, wait_for};
use serde_json::Value;

use super::metrics_host::{HUATUO, Series, parse_exposition, read};

const NO_CONTAINERS: &str = "[containers]\nenabled = false\n";

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("{program} (iproute2): {err}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A veth pair, deleted (both ends) when dropped.
struct Dummy(String);

impl Drop for Dummy {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// The value of `name` for `device`.
fn of_device(series: &Series, name: &str, device: &str) -> Option<(BTreeMap<String, String>, f64)> {
    series
        .get(name)?
        .iter()
        .find(|(labels, _)| labels.get("device").map(String::as_str) == Some(device))
        .cloned()
}

/// The root qdisc of `device` as `tc -s -j` shows it.
fn tc_root(device: &str) -> Value {
    let json: Value =
        serde_json::from_str(&run("tc", &["-s", "-j", "qdisc", "show", "dev", device])).unwrap();
    json.as_array()
        .and_then(|qdiscs| qdiscs.iter().find(|q| q["root"] == true))
        .cloned()
        .unwrap_or_else(|| panic!("no root qdisc on {device}: {json}"))
}

#[test]
fn netdev_qdisc_matches_tc_on_a_veth_device_under_tbf() {
    let pid = std::process::id();
    let device = format!("kpq{}", pid % 100_000);
    // A left-over from an earlier run of this pid, if any.
    let _ = Command::new("ip")
        .args(["link", "del", &device])
        .stderr(std::process::Stdio::null())
        .status();
    // A veth pair (this kernel has no `dummy` module); the peer end takes the traffic.
    let peer = format!("{device}p");
    run(
        "ip",
        &[
            "link", "add", &device, "type", "veth", "peer", "name", &peer,
        ],
    );
    let dummy = Dummy(device.clone());
    // A subnet of its own per test process: 10.<a>.<b>.0/24, with a permanent neighbour so
    // packets leave through the qdisc without ARP.
    let (a, b) = (200 + (pid / 256) % 50, pid % 256);
    run(
        "ip",
        &["addr", "add", &format!("10.{a}.{b}.1/24"), "dev", &device],
    );
    run("ip", &["link", "set", &peer, "up"]);
    run("ip", &["link", "set", &device, "up"]);
    run(
        "ip",
        &[
            "neigh",
            "add",
            &format!("10.{a}.{b}.2"),
            "lladdr",
            "02:00:00:00:00:01",
            "dev",
            &device,
            "nud",
            "permanent",
        ],
    );
    // A slow token bucket with a short queue (this kernel has tbf, not netem or fq_codel):
    // a burst overflows it, so drops and overlimits move as well as bytes and packets.
    run(
        "tc",
        &[
            "qdisc", "add", "dev", &device, "root", "tbf", "rate", "1mbit", "burst", "1600",
            "limit", "3000",
        ],
    );

    let agent = Agent::start(
        "metrics-net-qdisc",
        &[plugin_wasm("netdev_qdisc")],
        &format!(
            "{HUATUO}{NO_CONTAINERS}[plugins.netdev_qdisc]\ndevice_included = \"^{device}$\"\n"
        ),
    );
    agent.wait_state("netdev_qdisc", "running", Duration::from_secs(30));

    // Traffic out through the device, to the permanent neighbour.
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let target = format!("10.{a}.{b}.2:9");
    let sent = 200u64;
    for _ in 0..sent {
        socket.send_to(&[0u8; 100], &target).unwrap();
    }
    // Counters settle once the queue drains (3000 bytes at 1 Mbit/s: about 25 ms).
    let tc_before = wait_for(Duration::from_secs(10), "the tbf queue to drain", || {
        Some(tc_root(&device)).filter(|q| q["qlen"] == 0 && q["backlog"] == 0)
    });
    assert!(
        tc_before["packets"].as_u64().unwrap() + tc_before["drops"].as_u64().unwrap() >= sent,
        "tc saw the traffic: {tc_before}"
    );
    let metrics = wait_for(
        Duration::from_secs(20),
        "the qdisc series of the veth",
        || {
            let series = parse_exposition(&agent.metrics());
            of_device(&series, "huatuo_bamai_netdev_qdisc_packets_total", &device)?;
            Some(series)
        },
    );
    let tc_after = tc_root(&device);

    let fields = [
        ("bytes_total", "bytes"),
        ("packets_total", "packets"),
        ("drops_total", "drops"),
        ("requeues_total", "requeues"),
        ("overlimits_total", "overlimits"),
        ("current_queue_length", "qlen"),
        ("backlog", "backlog"),
    ];
    for (name, tc_field) in fields {
        let full = format!("huatuo_bamai_netdev_qdisc_{name}");
        let (labels, value) =
            of_device(&metrics, &full, &device).unwrap_or_else(|| panic!("no {full} for {device}"));
        assert_eq!(
            labels.get("kind").map(String::as_str),
            Some("tbf"),
            "{full}"
        );
        assert_eq!(labels.len(), 2, "{full}: device and kind only: {labels:?}");
        let low = tc_before[tc_field].as_f64().unwrap();
        let high = tc_after[tc_field].as_f64().unwrap();
        assert!(
            (low..=high).contains(&value),
            "{full} = {value}, tc {tc_field} between {low} and {high}"
        );
    }
    let drops = of_device(&metrics, "huatuo_bamai_netdev_qdisc_drops_total", &device)
        .unwrap()
        .1;
    assert!(
        drops > 0.0,
        "a burst of {sent} packets overflowed the tbf queue"
    );
    // Only root qdiscs of the included device: nothing for lo or others.
    assert!(
        metrics["huatuo_bamai_netdev_qdisc_bytes_total"]
            .iter()
            .all(|(labels, _)| labels["device"] == device)
    );
    drop(agent);
    drop(dummy);
}

#[test]
fn dcb_and_rdma_plugins_are_inactive_without_the_hardware() {
    let agent = Agent::start(
        "metrics-net-inactive",
        &[plugin_wasm("netdev_dcb"), plugin_wasm("netdev_rdma_link")],
        &format!("{HUATUO}{NO_CONTAINERS}"),
    );
    // No RDMA core in this kernel (no /sys/class/infiniband): the nldev family is missing.
    if std::path::Path::new("/sys/class/infiniband").exists() {
        agent.wait_state("netdev_rdma_link", "running", Duration::from_secs(30));
    } else {
        let rdma = agent.wait_state("netdev_rdma_link", "inactive", Duration::from_secs(30));
        let reason = rdma["last_error"].as_str().unwrap_or_default();
        assert!(reason.contains("RDMA"), "{rdma}");
        assert!(reason.contains("not supported"), "{rdma}");
    }
    // This VM's NICs are virtio/dummy/veth: none has dcbnl_ops, so RTM_GETDCB answers
    // EOPNOTSUPP for every device.
    let dcb = agent.wait_state("netdev_dcb", "inactive", Duration::from_secs(30));
    assert!(
        dcb["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("DCB"),
        "{dcb}"
    );
    assert_eq!(dcb["restarts"], 0);
    let metrics = agent.metrics();
    assert!(!metrics.contains("huatuo_bamai_netdev_dcb_pfc"));
    assert!(!metrics.contains("huatuo_bamai_netdev_rdma_link_"));
}

#[test]
fn net_refused_without_the_operators_grant() {
    let agent = Agent::start(
        "metrics-net-refused",
        &[plugin_wasm("netdev_qdisc"), plugin_wasm("loadavg")],
        &format!("{HUATUO}{NO_CONTAINERS}[policy]\nnet_allow = []\n"),
    );
    agent.wait_state("netdev_qdisc", "running", Duration::from_secs(30));
    agent.wait_state("loadavg", "running", Duration::from_secs(30));
    let metrics = agent.metrics();
    // loadavg's host series do not need `net`; netdev_qdisc has nothing without it.
    assert!(metrics.contains("huatuo_bamai_loadavg_load1 "), "{metrics}");
    assert!(!metrics.contains("huatuo_bamai_netdev_qdisc_bytes_total"));
    // Each scrape's update fails with the host's typed refusal, logged by the agent.
    wait_for(Duration::from_secs(10), "netdev_qdisc's refusal", || {
        agent.metrics();
        let log = agent.log();
        log.lines()
            .any(|l| {
                l.contains("netdev_qdisc")
                    && l.contains("may not query netlink")
                    && l.contains("access denied")
            })
            .then_some(())
    });
    let log = agent.log();
    assert!(log.contains("net not granted"), "{log}");
}

/// `(running, uninterruptible)` tasks of a cgroup v1 `cpu` directory, from each task's
/// state in `/proc/<tid>/stat` (R, D).
fn task_states(cgroup_dir: &str) -> (u64, u64) {
    let mut counts = (0, 0);
    for tid in read(&format!("{cgroup_dir}/tasks")).lines() {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{tid}/stat")) else {
            continue;
        };
        // The state follows the `(comm)` field.
        match stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
        {
            Some("R") => counts.0 += 1,
            Some("D") => counts.1 += 1,
            _ => {}
        }
    }
    counts
}

/// The container's directory in the v1 `cpu` hierarchy, from its init's `/proc/<pid>/cgroup`.
fn cpu_cgroup_dir(pid: u32) -> Option<String> {
    let mount = read("/proc/self/mounts").lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup") && f.get(3)?.split(',').any(|o| o == "cpu"))
            .then(|| f[1].to_owned())
    })?;
    read(&format!("/proc/{pid}/cgroup")).lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "cpu")
            .then(|| format!("{mount}{path}"))
    })
}

#[test]
fn loadavg_container_running_tasks_of_a_busy_container() {
    let runtimes = Runtimes::get();
    let id = format!("load-{}", std::process::id());
    // Two busy loops (always runnable) under a sleeping shell.
    let container = runtimes.ctr_run(
        "kptest",
        &id,
        &[],
        &[],
        "while :; do :; done & while :; do :; done & wait",
    );
    let pid = wait_for(Duration::from_secs(20), "the container's init pid", || {
        Some(container.pid()).filter(|p| *p != 0)
    });
    let Some(dir) = cpu_cgroup_dir(pid) else {
        eprintln!("skipped: no cgroup v1 cpu hierarchy (taskstats cgroupstats is v1 only)");
        return;
    };
    let agent = Agent::start(
        "metrics-net-loadavg",
        &[plugin_wasm("loadavg")],
        &format!("{HUATUO}{}", runtimes.agent_config("")),
    );
    agent.wait_state("loadavg", "running", Duration::from_secs(30));

    let of = |series: &Series, name: &str| {
        series.get(name)?.iter().find_map(|(labels, v)| {
            (labels.get("container_name").map(String::as_str) == Some(id.as_str())).then_some(*v)
        })
    };
    // The agent's count lies within the tasks' states read around its scrape (the two
    // loops are runnable all along; the shell sleeps in `wait`).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (before, value, d, after) = loop {
        let before = task_states(&dir);
        let series = parse_exposition(&agent.metrics());
        let after = task_states(&dir);
        let running = of(&series, "huatuo_bamai_loadavg_container_nr_running");
        let d = of(&series, "huatuo_bamai_loadavg_container_nr_uninterruptible");
        if let (Some(running), Some(d)) = (running, d) {
            break (before, running, d, after);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no load series for {id} after 30 s; agent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(value >= 1.0, "a busy container has runnable tasks: {value}");
    let (low, high) = (before.0.min(after.0), before.0.max(after.0));
    assert!(
        (low as f64..=high as f64).contains(&value),
        "nr_running {value}, R tasks in {dir}/tasks between {low} and {high}"
    );
    assert!(
        d <= before.1.max(after.1) as f64,
        "nr_uninterruptible {d}, D tasks {before:?} {after:?}"
    );
    container.stop();
}
