//! Deployment artefacts, for real: `deploy/container/build.sh` builds the image (no registry)
//! on the private dockerd, the image runs with the flags `deploy/container/README.md`
//! documents, and its `/metrics` must report the host's numbers with every built-in plugin,
//! the BPF ones included, running; `deploy/systemd/install.sh` stages an install and
//! `systemd-analyze verify` accepts the unit without a single warning.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kpulse_integration_tests::containers::Runtimes;
use kpulse_integration_tests::{
    http, kpulse_bin, root, sample, sample_with, scratch_dir, wait_for,
};

/// The event plugins that load BPF objects as they start (`softirq` and `net_rx_latency`
/// load theirs on demand: when the kernel's counters trip, while a container has its own
/// network namespace).
pub(crate) const BPF_PLUGINS: [&str; 5] =
    ["oom", "hungtask", "memreclaim", "dropwatch", "softlockup"];

/// `docker run` flags of deploy/container/README.md, before the image (the sockets of the
/// private dockerd replace the host's `/var/run/docker.sock` there).
const RUN_FLAGS: &[&str] = &[
    "--pull",
    "never",
    "--pid",
    "host",
    "--network",
    "host",
    "--cgroupns",
    "host",
    "--cap-drop",
    "ALL",
    "--cap-add",
    "SYS_ADMIN",
    "--cap-add",
    "SYS_PTRACE",
    "--cap-add",
    "SYSLOG",
    "--cap-add",
    "DAC_READ_SEARCH",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:ro",
    "-v",
    "/sys/kernel/tracing:/sys/kernel/tracing",
    "-v",
    "/proc:/host/proc:ro",
    "-v",
    "/sys:/host/sys:ro",
];

pub(crate) fn run(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap_or_else(|err| panic!("{program}: {err}"))
}

pub(crate) fn ok(what: &str, output: &Output) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A container of the private dockerd, removed on drop.
pub(crate) struct Container {
    pub(crate) docker: String,
    pub(crate) host: String,
    pub(crate) name: String,
}

impl Container {
    pub(crate) fn logs(&self) -> String {
        let out = run(&self.docker, &["-H", &self.host, "logs", &self.name], &[]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = run(
            &self.docker,
            &["-H", &self.host, "rm", "-f", &self.name],
            &[],
        );
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `/proc/loadavg`: load1, load5, load15 and the total task count.
pub(crate) fn host_loadavg() -> [f64; 4] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap();
    let f: Vec<&str> = text.split_whitespace().collect();
    let total = f[3].split_once('/').unwrap().1;
    [
        f[0].parse().unwrap(),
        f[1].parse().unwrap(),
        f[2].parse().unwrap(),
        total.parse().unwrap(),
    ]
}

fn host_devices() -> BTreeSet<String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with("veth"))
        .collect()
}

#[test]
fn container_image_reports_the_host() {
    let started = Instant::now();
    let runtimes = Runtimes::get();
    let docker = runtimes.var("KPULSE_TEST_DOCKER");
    let host = runtimes.var("KPULSE_TEST_DOCKER_HOST");
    let bin = kpulse_bin();
    let plugins = root().join("target/plugins");
    let out = run(
        root().join("deploy/container/build.sh").to_str().unwrap(),
        &[],
        &[
            ("DOCKER_HOST", &host),
            ("DOCKER", &docker),
            ("KPULSE_BIN", bin.to_str().unwrap()),
            ("KPULSE_PLUGINS", plugins.to_str().unwrap()),
        ],
    );
    let image = ok("deploy/container/build.sh", &out)
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let version = ok(
        "kpulse --version",
        &run(bin.to_str().unwrap(), &["--version"], &[]),
    );
    assert_eq!(
        image,
        format!("kpulse:{}", version.split_whitespace().nth(1).unwrap())
    );
    let builtin = std::fs::read_dir(&plugins)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("wasm".as_ref()))
        .count();

    // The run command the README documents, with its flags in the same words.
    let readme = std::fs::read_to_string(root().join("deploy/container/README.md")).unwrap();
    for pair in RUN_FLAGS.chunks(2) {
        let flag = format!("{} {}", pair[0], pair[1]);
        assert!(
            readme.contains(&flag),
            "deploy/container/README.md lacks `{flag}`"
        );
    }

    let name = format!("kpulse-it-deploy-{}", std::process::id());
    let _ = run(&docker, &["-H", &host, "rm", "-f", &name], &[]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let docker_sock = format!(
        "{}:/var/run/docker.sock",
        runtimes.var("KPULSE_TEST_DOCKER_SOCK")
    );
    let docker_state = format!(
        "{}:/run/docker/containerd/daemon:ro",
        runtimes.var("KPULSE_TEST_DOCKER_CONTAINERD_STATE")
    );
    let mut args: Vec<&str> = vec!["-H", &host, "run", "-d", "--name", &name];
    args.extend_from_slice(RUN_FLAGS);
    args.extend_from_slice(&["-v", &docker_sock, "-v", &docker_state, &image]);
    args.extend_from_slice(&[
        "run",
        "--config",
        "/etc/kpulse/kpulse.toml",
        "--listen",
        &listen,
    ]);
    let id = ok("docker run", &run(&docker, &args, &[]))
        .trim()
        .to_owned();
    let container = Container {
        docker: docker.clone(),
        host: host.clone(),
        name: name.clone(),
    };
    let addr: SocketAddr = listen.parse().unwrap();

    // Every built-in plugin settled: running, or inactive where this machine lacks what it
    // measures (typed not-supported: no DCB, no RDMA); the BPF ones with their objects
    // loaded. A cold start compiles every component first.
    let metrics = wait_for(Duration::from_secs(120), "every plugin settled", || {
        let metrics = http(addr, "GET", "/metrics", &[]).ok()?.body;
        let running = metrics
            .lines()
            .filter(|l| {
                l.starts_with("kpulse_plugin_state{")
                    && (l.contains("state=\"running\"} 1") || l.contains("state=\"inactive\"} 1"))
            })
            .count();
        let bpf_loaded = BPF_PLUGINS.iter().all(|p| {
            sample_with(
                &metrics,
                "kpulse_plugin_bpf_objects",
                &format!("plugin=\"{p}\""),
            )
            .is_some_and(|n| n >= 1.0)
        });
        let sampled = sample(&metrics, "kpulse_loadavg_load1{").is_some();
        (running == builtin && bpf_loaded && sampled).then_some(metrics)
    });
    for plugin in BPF_PLUGINS {
        let line = format!("kpulse_plugin_state{{plugin=\"{plugin}\",state=\"running\"}} 1");
        assert!(
            metrics.contains(&line),
            "{plugin} not running:\n{}",
            container.logs()
        );
    }

    // The host's numbers: load averages (read around the scrape; the kernel updates them
    // every 5 s) and task count, the host's name, its network devices.
    let before = host_loadavg();
    let devices_before = host_devices();
    let metrics = http(addr, "GET", "/metrics", &[]).unwrap().body;
    let after = host_loadavg();
    let devices = host_devices()
        .intersection(&devices_before)
        .cloned()
        .collect::<BTreeSet<_>>();
    for (i, name) in ["load1", "load5", "load15"].iter().enumerate() {
        let got = sample(&metrics, &format!("kpulse_loadavg_{name}{{")).unwrap();
        let (lo, hi) = (
            before[i].min(after[i]) - 0.01,
            before[i].max(after[i]) + 0.01,
        );
        assert!(
            (lo..=hi).contains(&got),
            "{name} {got} not in host's [{lo}, {hi}]"
        );
    }
    let tasks = sample(&metrics, "kpulse_loadavg_nr_tasks{").unwrap();
    let (lo, hi) = (before[3].min(after[3]), before[3].max(after[3]));
    assert!(
        tasks >= lo * 0.8 && tasks <= hi * 1.2,
        "nr_tasks {tasks}, host {lo}..{hi}"
    );
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host_label = format!(
        "kpulse_loadavg_load1{{region=\"default\",host=\"{}\"}}",
        hostname.trim()
    );
    assert!(metrics.contains(&host_label), "no {host_label}");
    for device in &devices {
        let label = format!("device=\"{device}\"");
        assert!(
            sample_with(&metrics, "kpulse_netdev_receive_bytes_total", &label).is_some(),
            "host device {device} missing from netdev"
        );
    }

    // The host's container runtime and cgroup tree: the agent finds its own container.
    let containers = http(addr, "GET", "/containers", &[]).unwrap().json();
    let own = containers["data"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id.as_str())
        .unwrap_or_else(|| panic!("own container {id} not in {containers}"))
        .clone();
    assert_eq!(own["name"], name.as_str(), "{own}");
    assert_eq!(own["runtime"], "docker", "{own}");
    assert!(own["cgroup_path"].as_str().unwrap().contains(&id), "{own}");

    drop(container);
    let gone = run(&docker, &["-H", &host, "inspect", &name], &[]);
    assert!(!gone.status.success(), "{name} still exists");
    eprintln!(
        "deploy: {image}, {builtin} plugins running, load1 {} (host {} / {}), {} devices, {:.1} s",
        sample(&metrics, "kpulse_loadavg_load1{").unwrap(),
        before[0],
        after[0],
        devices.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn systemd_unit_verifies() {
    let stage = scratch_dir("deploy-systemd");
    let install = root().join("deploy/systemd/install.sh");
    let install = install.to_str().unwrap();
    let envs = [("DESTDIR", stage.to_str().unwrap())];
    ok("install.sh", &run(install, &[], &envs));
    for file in [
        "usr/local/bin/kpulse",
        "usr/lib/kpulse/plugins/loadavg.wasm",
        "usr/lib/kpulse/plugins/dropwatch.wasm",
        "etc/kpulse/kpulse.toml",
        "etc/systemd/system/kpulse.service",
        "var/lib/kpulse",
    ] {
        assert!(
            stage.join(file).exists(),
            "install.sh did not install {file}"
        );
    }
    // Idempotent: a second run changes nothing and says nothing.
    let again = ok("install.sh (again)", &run(install, &[], &envs));
    assert_eq!(again, "", "second install.sh run changed files");
    let config = stage.join("etc/kpulse/kpulse.toml");
    let staged = stage.join("usr/local/bin/kpulse");
    ok(
        "kpulse config check",
        &run(
            staged.to_str().unwrap(),
            &["config", "check", config.to_str().unwrap()],
            &[],
        ),
    );

    // verify checks that ExecStart's program exists: point it at the staged binary. Any
    // warning (an unknown key, a bad value) is printed with exit code 0, so the output must be
    // empty as well.
    let unit = std::fs::read_to_string(stage.join("etc/systemd/system/kpulse.service")).unwrap();
    let exec = "ExecStart=/usr/local/bin/kpulse run --config /etc/kpulse/kpulse.toml\n";
    assert!(unit.contains(exec), "unexpected ExecStart in {unit}");
    let dir = scratch_dir("deploy-unit");
    let copy = dir.join("kpulse.service");
    let staged_exec = format!(
        "ExecStart={} run --config /etc/kpulse/kpulse.toml\n",
        staged.display()
    );
    std::fs::write(&copy, unit.replace(exec, &staged_exec)).unwrap();
    let out = run("systemd-analyze", &["verify", copy.to_str().unwrap()], &[]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify: {text}"
    );
    for key in [
        "CPUQuota=200%",
        "MemoryMax=",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/kpulse",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON",
    ] {
        assert!(unit.contains(key), "kpulse.service lacks {key}");
    }
    let _ = std::fs::remove_dir_all(&stage);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!Path::new(&copy).exists());
}
