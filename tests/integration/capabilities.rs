//! Non-root with the minimal capability set: the agent started as `nobody` by `setpriv`
//! with exactly the capabilities deploy/systemd/kpulse.service grants (read from the unit,
//! so that the unit, the docs and this test cannot drift apart), as bounding, inheritable
//! and ambient set, runs every built-in plugin: each reaches `running`, or `inactive` where
//! this machine lacks what it measures, the same BPF plugins hold objects as under root; it reads
//! no less than a root agent does (no more denied reads, no failed plugin).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use kpulse_integration_tests::{
    http, kpulse_bin, logged_listen_addr, root, sample_with, scratch_dir, wait_for,
};

/// `nobody`: a user with no file of its own anywhere.
const UID: &str = "65534";
const GID: &str = "65534";

/// The capabilities a unit line lists, as `setpriv` wants them (`+bpf,+perfmon,...`).
fn unit_caps(unit: &str, key: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("kpulse.service has no {key}="));
    let mut caps: Vec<String> = line
        .split_whitespace()
        .map(|c| {
            c.strip_prefix("CAP_")
                .unwrap_or_else(|| panic!("{key}: {c} is not CAP_*"))
                .to_ascii_lowercase()
        })
        .collect();
    caps.sort();
    caps
}

/// Plugins that load BPF only on demand (softirq when the kernel's counters trip a window,
/// net_rx_latency while a container has its own network namespace): whether they hold
/// objects depends on the moment, not on privileges.
const ON_DEMAND_BPF: [&str; 2] = ["softirq", "net_rx_latency"];

/// Every built-in plugin's state once all have settled (running or inactive), the plugins
/// holding BPF objects then (on-demand ones left out), and /metrics.
fn settled(addr: std::net::SocketAddr) -> (BTreeMap<String, String>, BTreeSet<String>, String) {
    let builtin = std::fs::read_dir(root().join("target/plugins"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension() == Some("wasm".as_ref()))
        })
        .count();
    let states = wait_for(Duration::from_secs(180), "every plugin settled", || {
        let plugins = http(addr, "GET", "/plugins", &[]).ok()?.json();
        let states: BTreeMap<String, String> = plugins
            .as_array()?
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or("").to_owned(),
                    p["state"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let settled = states.len() == builtin
            && states
                .values()
                .all(|s| matches!(s.as_str(), "running" | "inactive"));
        // Failed plugins restart with back-off: the wait gives them the time.
        settled.then_some(states)
    });
    let metrics = http(addr, "GET", "/metrics", &[]).unwrap().body;
    let with_bpf = states
        .keys()
        .filter(|p| !ON_DEMAND_BPF.contains(&p.as_str()))
        .filter(|p| {
            sample_with(
                &metrics,
                "kpulse_plugin_bpf_objects",
                &format!("plugin=\"{p}\""),
            )
            .is_some_and(|n| n >= 1.0)
        })
        .cloned()
        .collect();
    (states, with_bpf, metrics)
}

/// Starts an agent on every built-in plugin, through `wrapper` (empty: as root).
fn start(label: &str, wrapper: &[String]) -> (std::process::Child, std::path::PathBuf) {
    let dir = scratch_dir(label);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    // The data directory is the one place the agent writes: the service user's own.
    let chown = Command::new("chown")
        .args([&format!("{UID}:{GID}"), data.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(chown.success());
    let config = dir.join("kpulse.toml");
    std::fs::write(
        &config,
        format!(
            "plugin_dir = {:?}\ndata_dir = {data:?}\n",
            root().join("target/plugins")
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let (program, args) = match wrapper.split_first() {
        Some((program, args)) => (program.clone(), args.to_vec()),
        None => (kpulse_bin().to_string_lossy().into_owned(), Vec::new()),
    };
    let mut command = Command::new(program);
    command.args(args);
    if !wrapper.is_empty() {
        command.arg(kpulse_bin());
    }
    let child = command
        .args(["run", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    (child, dir)
}

fn log(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
}

fn listen(dir: &std::path::Path) -> std::net::SocketAddr {
    wait_for(Duration::from_secs(60), "the listen address", || {
        logged_listen_addr(&log(dir))
    })
}

/// Denied reads per plugin, from /metrics.
fn denied(metrics: &str) -> BTreeMap<String, f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with("kpulse_plugin_denied_reads_total{"))
        .filter_map(|l| {
            let plugin = l.split('"').nth(1)?.to_owned();
            let value: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((plugin, value))
        })
        .collect()
}

#[test]
fn non_root_with_the_units_capabilities_runs_every_plugin() {
    let unit = std::fs::read_to_string(root().join("deploy/systemd/kpulse.service")).unwrap();
    let bounding = unit_caps(&unit, "CapabilityBoundingSet");
    let ambient = unit_caps(&unit, "AmbientCapabilities");
    assert_eq!(bounding, ambient, "the unit's two capability lines differ");
    assert!(
        !bounding
            .iter()
            .any(|c| c == "sys_admin" || c == "dac_override"),
        "{bounding:?}"
    );
    let set = format!(
        "-all,{}",
        bounding
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    println!("capability set: {set}");
    let wrapper: Vec<String> = [
        "setpriv",
        &format!("--reuid={UID}"),
        &format!("--regid={GID}"),
        "--clear-groups",
        &format!("--inh-caps={set}"),
        &format!("--ambient-caps={set}"),
        &format!("--bounding-set={set}"),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();

    // Each capability of the set is needed: the ones whose loss the plugins' states do not
    // show on this machine are checked on the files they open.
    let dropped = |cap: &str| {
        let rest: Vec<String> = bounding
            .iter()
            .filter(|c| *c != cap)
            .map(|c| format!("+{c}"))
            .collect();
        format!("-all,{}", rest.join(","))
    };
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let probes = [
        // (capability, shell test that passes with it)
        (
            "syslog",
            "head -1 /proc/kallsyms | grep -qv '^0000000000000000'".to_owned(),
        ),
        (
            "sys_ptrace",
            format!("readlink /proc/{}/ns/net >/dev/null", sleeper.id()),
        ),
        (
            "dac_read_search",
            "ls /sys/kernel/tracing/events/sched >/dev/null".to_owned(),
        ),
    ];
    for (cap, probe) in &probes {
        assert!(bounding.iter().any(|c| c == cap), "{cap} not in the unit");
        assert!(as_nobody(&set, probe), "{probe} fails with {set}");
        assert!(
            !as_nobody(&dropped(cap), probe),
            "{probe} passes without {cap}: is it still needed?"
        );
    }
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    let (mut child, dir) = start("caps-nonroot", &wrapper);
    let addr = listen(&dir);
    // The process really is unprivileged: uid nobody, exactly that effective set.
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == UID),
        "{uid_line}"
    );
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim()
        .to_owned();
    let bits: Vec<u32> = bounding.iter().map(|c| cap_number(c.as_str())).collect();
    let expected: u64 = bits.iter().map(|b| 1u64 << b).sum();
    assert_eq!(
        u64::from_str_radix(&eff, 16).unwrap(),
        expected,
        "CapEff {eff}"
    );
    let (states, with_bpf, metrics) = settled(addr);
    let nonroot_denied = denied(&metrics);
    println!("non-root: {states:?}");
    let _ = child.kill();
    let _ = child.wait();
    assert!(!log(&dir).contains("panicked"), "{}", log(&dir));

    // The same plugins as root, for the reads: root may read what the policy grants; the
    // capability set must not take any of it away.
    let (mut root_child, root_dir) = start("caps-root", &[]);
    let root_addr = listen(&root_dir);
    let (root_states, root_bpf, root_metrics) = settled(root_addr);
    let _ = root_child.kill();
    let _ = root_child.wait();
    assert_eq!(states, root_states, "plugin states differ from root's");
    assert_eq!(
        with_bpf, root_bpf,
        "plugins with BPF objects differ from root's"
    );
    assert!(with_bpf.len() >= 8, "{with_bpf:?}");
    // Counters of attempts over runs of different lengths: compare who is denied, not how
    // often.
    let root_denied = denied(&root_metrics);
    for (plugin, count) in nonroot_denied.iter().filter(|(_, n)| **n > 0.0) {
        assert!(
            root_denied.get(plugin).is_some_and(|n| *n > 0.0),
            "{plugin}: {count} denied reads as nobody, none as root"
        );
    }
    let running = states.values().filter(|s| *s == "running").count();
    eprintln!(
        "capabilities: {set} as uid {UID}: {running} of {} plugins running, the rest inactive; BPF objects loaded by {} plugins: {with_bpf:?}",
        states.len(),
        with_bpf.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&root_dir);
}

/// Whether `script` succeeds in a shell run as nobody with capability set `set`.
fn as_nobody(set: &str, script: &str) -> bool {
    Command::new("setpriv")
        .args([
            &format!("--reuid={UID}"),
            &format!("--regid={GID}"),
            "--clear-groups",
            &format!("--inh-caps={set}"),
            &format!("--ambient-caps={set}"),
            &format!("--bounding-set={set}"),
            "sh",
            "-c",
            script,
        ])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// linux/capability.h numbers of the capabilities the unit may list.
fn cap_number(name: &str) -> u32 {
    match name {
        "dac_override" => 1,
        "dac_read_search" => 2,
        "net_admin" => 12,
        "net_raw" => 13,
        "sys_ptrace" => 19,
        "sys_admin" => 21,
        "sys_resource" => 24,
        "syslog" => 34,
        "perfmon" => 38,
        "bpf" => 39,
        other => panic!("cap_number: add {other}"),
    }
}
