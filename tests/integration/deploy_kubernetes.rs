//! The Kubernetes route, for real as far as this machine goes (no kubelet here): helm, built
//! from the Go module proxy by `scripts/helm.sh`, lints and renders `deploy/helm/kpulse`; the
//! plain manifest `deploy/kubernetes/kpulse.yaml` must equal a fresh render (they cannot
//! drift); the rendered DaemonSet must carry what the agent needs (host PID and network
//! namespaces, the node's /proc and /sys at /host/proc and /host/sys, tracefs, BTF, cgroupfs,
//! capabilities instead of privileged, probes on /healthz and /readyz, scrape annotations,
//! HUATUO's CPU limit, tolerations); its ConfigMap must pass `kpulse config check`. Then the
//! pod spec is translated to `docker run` flags (hostPath volumes to bind mounts, the
//! ConfigMap to a mounted file, emptyDir to tmpfs, the capabilities, readOnlyRootFilesystem)
//! and the image runs with them on the private dockerd: every built-in plugin must settle, the
//! BPF objects load, and `/metrics` must show the host's load and a mount made on the host only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kpulse_integration_tests::containers::Runtimes;
use kpulse_integration_tests::{
    http, kpulse_bin, root, sample, sample_with, scratch_dir, wait_for,
};
use serde_json::Value;

use crate::deploy::{BPF_PLUGINS, Container, free_port, host_loadavg, ok, run};

/// What the agent needs in the pod's capability set (deploy/helm/kpulse/values.yaml says why).
const CAPABILITIES: [&str; 5] = ["BPF", "PERFMON", "SYSLOG", "SYS_PTRACE", "DAC_READ_SEARCH"];

fn helm() -> String {
    let out = run(root().join("scripts/helm.sh").to_str().unwrap(), &[], &[]);
    ok("scripts/helm.sh", &out).trim().to_owned()
}

/// Every document of a YAML stream, as JSON (python3-yaml: no YAML crate in the workspace).
fn parse_yaml(text: &str) -> Vec<Value> {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; \
             print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    serde_json::from_str(&ok("python3 yaml", &out)).unwrap()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// Chart and manifest: lint, render, no drift, and the pod spec the agent needs. Returns the
/// rendered documents.
fn rendered() -> Vec<Value> {
    let helm = helm();
    let chart = root().join("deploy/helm/kpulse");
    let chart = chart.to_str().unwrap();
    let lint = ok("helm lint", &run(&helm, &["lint", "--strict", chart], &[]));
    assert!(lint.contains("0 chart(s) failed"), "helm lint: {lint}");

    let dir = scratch_dir("deploy-kubernetes");
    let fresh = dir.join("kpulse.yaml");
    let render = root().join("deploy/kubernetes/render.sh");
    ok(
        "deploy/kubernetes/render.sh",
        &run(render.to_str().unwrap(), &[fresh.to_str().unwrap()], &[]),
    );
    let fresh = std::fs::read_to_string(&fresh).unwrap();
    let committed = std::fs::read_to_string(root().join("deploy/kubernetes/kpulse.yaml")).unwrap();
    assert!(
        fresh == committed,
        "deploy/kubernetes/kpulse.yaml differs from `helm template` of the chart: run \
         deploy/kubernetes/render.sh"
    );
    let _ = std::fs::remove_dir_all(&dir);
    parse_yaml(&committed)
}

#[test]
fn daemonset_renders_what_the_agent_needs() {
    let docs = rendered();
    let ds = of_kind(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"];
    let spec = &pod["spec"];
    assert_eq!(spec["hostPID"], true, "{spec}");
    assert_eq!(spec["hostNetwork"], true, "{spec}");
    assert_eq!(spec["tolerations"][0]["operator"], "Exists", "{spec}");
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "19704");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    let container = &spec["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false, "{security}");
    assert_eq!(security["allowPrivilegeEscalation"], false, "{security}");
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(strings(&security["capabilities"]["add"]), CAPABILITIES);
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["resources"]["limits"]["cpu"], "2");
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert_eq!(
        strings(&container["args"]),
        ["run", "--config", "/etc/kpulse/kpulse.toml"]
    );

    // Mount point -> node path (hostPath volumes).
    let mounts = host_mounts(spec);
    for (target, node) in [
        ("/host/proc", "/proc"),
        ("/host/sys", "/sys"),
        ("/sys/fs/cgroup", "/sys/fs/cgroup"),
        ("/sys/kernel/tracing", "/sys/kernel/tracing"),
        ("/sys/kernel/debug", "/sys/kernel/debug"),
        ("/sys/kernel/btf", "/sys/kernel/btf"),
        ("/var/lib/kpulse", "/var/lib/kpulse"),
        ("/run/containerd", "/run/containerd"),
    ] {
        assert!(
            mounts.iter().any(|m| m.target == target && m.node == node),
            "no {node} mounted at {target}: {mounts:?}"
        );
    }

    // The ConfigMap is a valid agent config with the /host roots.
    let config = of_kind(&docs, "ConfigMap")["data"]["kpulse.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(config.contains("proc_root = \"/host/proc\""), "{config}");
    assert!(config.contains("sys_root = \"/host/sys\""), "{config}");
    assert!(config.contains("listen = \"0.0.0.0:19704\""), "{config}");
    let dir = scratch_dir("deploy-kubernetes-config");
    let file = dir.join("kpulse.toml");
    std::fs::write(&file, &config).unwrap();
    ok(
        "kpulse config check",
        &run(
            kpulse_bin().to_str().unwrap(),
            &["config", "check", file.to_str().unwrap()],
            &[],
        ),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[derive(Debug)]
struct Mount {
    target: String,
    /// The node path of a hostPath volume, "configMap" or "emptyDir".
    node: String,
    read_only: bool,
}

fn host_mounts(spec: &Value) -> Vec<Mount> {
    let volumes = spec["volumes"].as_array().unwrap();
    spec["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let volume = volumes
                .iter()
                .find(|v| v["name"] == m["name"])
                .unwrap_or_else(|| panic!("volumeMount {m} has no volume"));
            let node = if let Some(path) = volume["hostPath"]["path"].as_str() {
                path.to_owned()
            } else if volume.get("configMap").is_some() {
                "configMap".to_owned()
            } else if volume.get("emptyDir").is_some() {
                "emptyDir".to_owned()
            } else {
                panic!("unexpected volume kind {volume}")
            };
            Mount {
                target: m["mountPath"].as_str().unwrap().to_owned(),
                node,
                read_only: m["readOnly"] == true,
            }
        })
        .collect()
}

/// The rendered pod, run on the private dockerd as a kubelet would run it.
#[test]
fn daemonset_pod_spec_runs_the_image() {
    let started = Instant::now();
    let docs = rendered();
    let spec = &of_kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let container_spec = &spec["containers"][0];
    let config = of_kind(&docs, "ConfigMap")["data"]["kpulse.toml"]
        .as_str()
        .unwrap()
        .to_owned();

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
    let built = ok("deploy/container/build.sh", &out);
    let image = built.lines().last().unwrap().to_owned();
    let wanted = format!(
        "{}:{}",
        container_spec["image"]
            .as_str()
            .unwrap()
            .split(':')
            .next()
            .unwrap(),
        image.split(':').nth(1).unwrap()
    );
    assert_eq!(
        image, wanted,
        "the chart's image repository is not build.sh's"
    );
    let builtin = std::fs::read_dir(&plugins)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("wasm".as_ref()))
        .count();

    // A mount made on the host only: the container's own mount table lacks it, so the
    // filesystem series for it prove statfs walks the host init's table (/host/proc/1).
    let dir = scratch_dir("deploy-kubernetes-run");
    let host_only = dir.join("host-only-mnt");
    std::fs::create_dir_all(&host_only).unwrap();
    ok(
        "mount tmpfs",
        &run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                "size=1m",
                "kpulse-it-host-only",
                host_only.to_str().unwrap(),
            ],
            &[],
        ),
    );
    let _unmount = Unmount(host_only.clone());

    // Pod spec -> docker run flags.
    let name = format!("kpulse-it-k8s-{}", std::process::id());
    let _ = run(&docker, &["-H", &host, "rm", "-f", &name], &[]);
    let mut flags: Vec<String> = ["run", "-d", "--pull", "never", "--name", &name]
        .map(str::to_owned)
        .to_vec();
    assert_eq!(spec["hostPID"], true);
    assert_eq!(spec["hostNetwork"], true);
    flags.extend(["--pid", "host", "--network", "host", "--cgroupns", "host"].map(str::to_owned));
    let security = &container_spec["securityContext"];
    for cap in strings(&security["capabilities"]["drop"]) {
        flags.extend(["--cap-drop".to_owned(), cap]);
    }
    for cap in strings(&security["capabilities"]["add"]) {
        // Docker 20.10 (this machine's) rejects CAP_BPF and CAP_PERFMON as unknown; its
        // CAP_SYS_ADMIN covers both (the chart's values.yaml documents that substitution for
        // old runtimes). The other capabilities are passed as rendered.
        let cap = match cap.as_str() {
            "BPF" | "PERFMON" => "SYS_ADMIN".to_owned(),
            _ => cap,
        };
        if !flags.contains(&cap) {
            flags.extend(["--cap-add".to_owned(), cap]);
        }
    }
    if security["readOnlyRootFilesystem"] == true {
        flags.push("--read-only".to_owned());
    }
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("kpulse.toml"), &config).unwrap();
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let mut skipped = Vec::new();
    for mount in host_mounts(spec) {
        let source: PathBuf = match mount.node.as_str() {
            "configMap" => config_dir.clone(),
            "emptyDir" => {
                flags.extend(["--tmpfs".to_owned(), mount.target.clone()]);
                continue;
            }
            // The node's data dir: a scratch one, not this machine's /var/lib/kpulse.
            "/var/lib/kpulse" => data_dir.clone(),
            node => PathBuf::from(node),
        };
        if !source.exists() {
            // A kubelet would create an empty directory (hostPath without a type); the
            // runtimes of this machine are the private ones below.
            skipped.push(mount.target);
            continue;
        }
        let ro = if mount.read_only { ":ro" } else { "" };
        flags.extend([
            "-v".to_owned(),
            format!("{}:{}{ro}", source.display(), mount.target),
        ]);
    }
    flags.extend([
        "-v".to_owned(),
        format!(
            "{}:/var/run/docker.sock",
            runtimes.var("KPULSE_TEST_DOCKER_SOCK")
        ),
        image.clone(),
    ]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    flags.extend(strings(&container_spec["args"]));
    // The rendered 0.0.0.0:19704 could collide with another test on this shared machine.
    flags.extend(["--listen".to_owned(), listen.clone()]);
    let mut args: Vec<&str> = vec!["-H", &host];
    args.extend(flags.iter().map(String::as_str));
    ok("docker run (the rendered pod)", &run(&docker, &args, &[]));
    let container = Container {
        docker: docker.clone(),
        host: host.clone(),
        name: name.clone(),
    };
    let addr: SocketAddr = listen.parse().unwrap();

    let host_only_label = format!("mountpoint=\"{}\"", host_only.display());
    // statfs walks the host init's table only where /proc/1/root is reachable; this VM's
    // pid 1 (a sandbox supervisor) denies it even to root, and the agent then falls back to
    // its own (the container's) table, so the check is made only where the host allows it.
    let init_reachable = std::fs::metadata("/proc/1/root").is_ok();
    let metrics = wait_for(Duration::from_secs(180), "every plugin settled", || {
        let metrics = http(addr, "GET", "/metrics", &[]).ok()?.body;
        let settled = metrics
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
        let mounted = !init_reachable
            || sample_with(&metrics, "kpulse_filesystem_size_bytes", &host_only_label).is_some();
        (settled == builtin && bpf_loaded && mounted).then_some(metrics)
    });
    for plugin in BPF_PLUGINS {
        let line = format!("kpulse_plugin_state{{plugin=\"{plugin}\",state=\"running\"}} 1");
        assert!(
            metrics.contains(&line),
            "{plugin} not running:\n{}",
            container.logs()
        );
    }
    if init_reachable {
        let size = sample_with(&metrics, "kpulse_filesystem_size_bytes", &host_only_label).unwrap();
        assert_eq!(size, 1024.0 * 1024.0, "the host-only tmpfs is 1 MiB");
    }

    let before = host_loadavg();
    let metrics = http(addr, "GET", "/metrics", &[]).unwrap().body;
    let after = host_loadavg();
    let load1 = sample(&metrics, "kpulse_loadavg_load1{").unwrap();
    let (lo, hi) = (
        before[0].min(after[0]) - 0.01,
        before[0].max(after[0]) + 0.01,
    );
    assert!(
        (lo..=hi).contains(&load1),
        "load1 {load1} not in [{lo}, {hi}]"
    );
    // The probes the DaemonSet declares answer.
    for probe in ["livenessProbe", "readinessProbe"] {
        let path = container_spec[probe]["httpGet"]["path"].as_str().unwrap();
        let status = http(addr, "GET", path, &[]).unwrap().status;
        // A kubelet counts any status in 200..400 as success (/healthz answers 204).
        assert!((200..400).contains(&status), "{probe} {path}: {status}");
    }
    drop(container);
    eprintln!(
        "deploy_kubernetes: {builtin} plugins settled, host-only mount checked: {init_reachable}, \
         load1 {load1}, skipped mounts {skipped:?}, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Unmounts the host-only tmpfs on drop.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = run("umount", &[self.0.to_str().unwrap()], &[]);
        let _ = std::fs::remove_dir(Path::new(&self.0));
    }
}
