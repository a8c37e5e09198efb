//! Real container runtimes for the tests: the private containerd (with its CRI plugin) and
//! dockerd that `scripts/containers.sh start` runs, described by the `KPULSE_TEST_*`
//! variables it writes (exported by `scripts/test.sh`; read from its env file otherwise).
//! Every container made here is removed on drop. Nothing is ever pulled.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

/// Where `scripts/containers.sh` writes its variables.
const ENV_FILE: &str = "/var/lib/kpulse-test-containers/env";

/// The test runtimes.
#[derive(Debug, Clone)]
pub struct Runtimes {
    vars: HashMap<String, String>,
}

impl Runtimes {
    /// The runtimes `scripts/containers.sh start` started; panics with what to run when
    /// they are not there.
    pub fn get() -> Runtimes {
        let mut vars: HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("KPULSE_TEST_"))
            .collect();
        if !vars.contains_key("KPULSE_TEST_CONTAINERD_SOCK")
            && let Ok(text) = std::fs::read_to_string(ENV_FILE)
        {
            for line in text.lines() {
                if let Some((k, v)) = line.split_once('=') {
                    vars.entry(k.to_owned()).or_insert_with(|| v.to_owned());
                }
            }
        }
        let runtimes = Runtimes { vars };
        for socket in ["KPULSE_TEST_CONTAINERD_SOCK", "KPULSE_TEST_DOCKER_SOCK"] {
            let path = runtimes.var(socket);
            assert!(
                Path::new(&path).exists(),
                "{socket}={path} does not exist: run `scripts/containers.sh start`"
            );
        }
        runtimes
    }

    pub fn var(&self, name: &str) -> String {
        self.vars
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} is not set: run `scripts/containers.sh start`"))
    }

    /// The agent's `[containers]` table for these runtimes (labels `app`, `tier`, `role`
    /// allowed out), with `extra` lines appended to it.
    pub fn agent_config(&self, extra: &str) -> String {
        format!(
            "[containers]\n\
             containerd_sockets = [{:?}, {:?}]\n\
             containerd_state_dirs = [{:?}, {:?}]\n\
             docker_socket = {:?}\n\
             label_allow = [\"app\", \"tier\", \"role\"]\n\
             {extra}\n",
            self.var("KPULSE_TEST_CONTAINERD_SOCK"),
            self.var("KPULSE_TEST_DOCKER_CONTAINERD_SOCK"),
            self.var("KPULSE_TEST_CONTAINERD_STATE"),
            self.var("KPULSE_TEST_DOCKER_CONTAINERD_STATE"),
            self.var("KPULSE_TEST_DOCKER_SOCK"),
        )
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("{program}: {err}"))
    }

    fn run_ok(&self, program: &str, args: &[&str]) -> String {
        let output = self.run(program, args);
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// `ctr -a <sock> -n <namespace> <args>`.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Output {
        let sock = self.var("KPULSE_TEST_CONTAINERD_SOCK");
        let mut all = vec!["-a", &sock, "-n", namespace];
        all.extend_from_slice(args);
        self.run(&self.var("KPULSE_TEST_CTR"), &all)
    }

    /// Runs a `ctr run --rootfs` container (busybox) with `labels`, extra `flags` (e.g.
    /// `--memory-limit`), and `script` as `sh -c`.
    pub fn ctr_run(
        &self,
        namespace: &str,
        id: &str,
        labels: &[(&str, &str)],
        flags: &[&str],
        script: &str,
    ) -> CtrContainer {
        let _ = self.ctr(namespace, &["task", "kill", "-s", "KILL", id]);
        let _ = self.ctr(namespace, &["task", "delete", "-f", id]);
        let _ = self.ctr(namespace, &["container", "rm", id]);
        let runc_root = self.var("KPULSE_TEST_RUNC_ROOT");
        let rootfs = self.var("KPULSE_TEST_ROOTFS");
        let label_args: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args: Vec<&str> = vec!["run", "-d", "--runc-root", &runc_root];
        for label in &label_args {
            args.extend_from_slice(&["--label", label]);
        }
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--rootfs", &rootfs, id, "/bin/sh", "-c", script]);
        let output = self.ctr(namespace, &args);
        assert!(
            output.status.success(),
            "ctr run {id}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        CtrContainer {
            runtimes: self.clone(),
            namespace: namespace.to_owned(),
            id: id.to_owned(),
        }
    }

    /// `docker run -d --pull never --network none` of the locally imported image.
    pub fn docker_run(&self, name: &str, labels: &[(&str, &str)], script: &str) -> DockerContainer {
        let docker = self.var("KPULSE_TEST_DOCKER");
        let host = self.var("KPULSE_TEST_DOCKER_HOST");
        let _ = self.run(&docker, &["-H", &host, "rm", "-f", name]);
        let image = self.var("KPULSE_TEST_DOCKER_IMAGE");
        let label_args: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args: Vec<&str> = vec![
            "-H",
            &host,
            "run",
            "-d",
            "--pull",
            "never",
            "--network",
            "none",
            "--name",
            name,
        ];
        for label in &label_args {
            args.extend_from_slice(&["--label", label]);
        }
        args.extend_from_slice(&["--entrypoint", "/bin/sh", &image, "-c", script]);
        let id = self.run_ok(&docker, &args);
        DockerContainer {
            runtimes: self.clone(),
            name: name.to_owned(),
            id,
        }
    }

    fn crictl(&self, args: &[&str]) -> String {
        let config = self.var("KPULSE_TEST_CRICTL_CONFIG");
        let mut all = vec!["--config", &config];
        all.extend_from_slice(args);
        self.run_ok(&self.var("KPULSE_TEST_CRICTL"), &all)
    }

    /// A CRI pod (sandbox + one container) through containerd's CRI plugin, from the
    /// fixtures in `tests/fixtures/containers`, with pod `name` in namespace `namespace`.
    pub fn cri_pod(&self, dir: &Path, name: &str, namespace: &str, uid: &str) -> CriPod {
        let fixtures = crate::root().join("tests/fixtures/containers");
        let patch = |file: &str| {
            let text = std::fs::read_to_string(fixtures.join(file)).expect("fixture");
            let text = text
                .replace("kp-pod", name)
                .replace("kp-ns", namespace)
                .replace("6f1c1a2e-4b7d-4c39-9a5e-0c2d3e4f5a6b", uid);
            let path = dir.join(file);
            std::fs::write(&path, text).expect("write fixture");
            path.display().to_string()
        };
        let pod = patch("pod.json");
        let container = patch("container.json");
        let sandbox = self.crictl(&["runp", &pod]);
        let container_id = self.crictl(&["create", &sandbox, &container, &pod]);
        self.crictl(&["start", &container_id]);
        CriPod {
            runtimes: self.clone(),
            sandbox,
            container: container_id,
            cgroup_parent: format!("/kubepods/burstable/pod{uid}"),
            pod_config: pod,
        }
    }
}

/// A `ctr` container; killed and deleted on drop.
#[derive(Debug)]
pub struct CtrContainer {
    runtimes: Runtimes,
    pub namespace: String,
    pub id: String,
}

impl CtrContainer {
    /// The init pid (`ctr task ls`).
    pub fn pid(&self) -> u32 {
        let out = self.runtimes.ctr(&self.namespace, &["task", "ls"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|line| {
                let mut f = line.split_whitespace();
                (f.next() == Some(self.id.as_str())).then(|| f.next()?.parse().ok())?
            })
            .unwrap_or(0)
    }

    /// Runs `script` inside it (`ctr task exec`).
    pub fn exec(&self, exec_id: &str, script: &str) -> Output {
        self.runtimes.ctr(
            &self.namespace,
            &[
                "task",
                "exec",
                "--exec-id",
                exec_id,
                &self.id,
                "/bin/sh",
                "-c",
                script,
            ],
        )
    }

    /// Kills and deletes it now.
    pub fn stop(&self) {
        let _ = self
            .runtimes
            .ctr(&self.namespace, &["task", "kill", "-s", "KILL", &self.id]);
        let _ = self
            .runtimes
            .ctr(&self.namespace, &["task", "delete", "-f", &self.id]);
        let _ = self
            .runtimes
            .ctr(&self.namespace, &["container", "rm", &self.id]);
    }
}

impl Drop for CtrContainer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Docker container; removed on drop.
#[derive(Debug)]
pub struct DockerContainer {
    runtimes: Runtimes,
    pub name: String,
    pub id: String,
}

impl Drop for DockerContainer {
    fn drop(&mut self) {
        let docker = self.runtimes.var("KPULSE_TEST_DOCKER");
        let host = self.runtimes.var("KPULSE_TEST_DOCKER_HOST");
        let _ = self
            .runtimes
            .run(&docker, &["-H", &host, "rm", "-f", &self.name]);
    }
}

/// A CRI pod; stopped and removed on drop (with its empty pod cgroups).
#[derive(Debug)]
pub struct CriPod {
    runtimes: Runtimes,
    pub sandbox: String,
    pub container: String,
    pub cgroup_parent: String,
    pod_config: String,
}

impl CriPod {
    /// Starts one more container `name` in the pod running `script`, with a memory limit
    /// (bytes, 0 for none); returns its id.
    pub fn add_container(&self, dir: &Path, name: &str, script: &str, memory_limit: u64) -> String {
        let config = serde_json::json!({
            "metadata": {"name": name, "attempt": 0},
            "image": {"image": self.runtimes.var("KPULSE_TEST_CRI_IMAGE")},
            "command": ["/bin/sh", "-c", script],
            "linux": {
                "resources": {"memory_limit_in_bytes": memory_limit},
                "security_context": {"namespace_options": {"network": 2}}
            }
        });
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, config.to_string()).expect("write container config");
        let path = path.display().to_string();
        let id = self
            .runtimes
            .crictl(&["create", &self.sandbox, &path, &self.pod_config]);
        self.runtimes.crictl(&["start", &id]);
        id
    }
}

impl Drop for CriPod {
    fn drop(&mut self) {
        let config = self.runtimes.var("KPULSE_TEST_CRICTL_CONFIG");
        let crictl = self.runtimes.var("KPULSE_TEST_CRICTL");
        let _ = self
            .runtimes
            .run(&crictl, &["--config", &config, "stopp", &self.sandbox]);
        let _ = self
            .runtimes
            .run(&crictl, &["--config", &config, "rmp", &self.sandbox]);
        for root in [
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup",
        ] {
            let _ = std::fs::remove_dir(format!("{root}{}", self.cgroup_parent));
        }
    }
}
