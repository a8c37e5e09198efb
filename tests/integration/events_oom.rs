//! `oom` on the real kernel: `tail /dev/zero` (which buffers forever, looking for a newline)
//! in a 64 MiB memory cgroup is OOM-killed; the event names it as trigger and victim.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use kpulse_integration_tests::{Agent, plugin_wasm, sample, wait_for};
use serde_json::Value;

const LIMIT: &str = "67108864"; // 64 MiB

/// A memory-limited cgroup (v1 `memory` controller, else cgroup v2) and the process in it;
/// the process is killed and the cgroup removed on drop.
struct MemoryCgroup {
    dir: PathBuf,
    /// The memory cgroup's path as `/proc/<pid>/cgroup` shows it.
    path: String,
    child: Option<Child>,
}

impl MemoryCgroup {
    fn create() -> MemoryCgroup {
        let name = format!("kpulse-oom-test-{}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists();
        let root = if v1 {
            PathBuf::from("/sys/fs/cgroup/memory")
        } else {
            ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
                .into_iter()
                .map(PathBuf::from)
                .find(|root| {
                    std::fs::read_to_string(root.join("cgroup.subtree_control"))
                        .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
                })
                .expect(
                    "no cgroup v1 memory controller and no cgroup v2 hierarchy with memory enabled",
                )
        };
        let dir = root.join(&name);
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|err| panic!("mkdir {}: {err}", dir.display()));
        let cgroup = MemoryCgroup {
            dir,
            path: format!("/{name}"),
            child: None,
        };
        if v1 {
            cgroup.write("memory.limit_in_bytes", LIMIT);
            if cgroup.dir.join("memory.memsw.limit_in_bytes").exists() {
                cgroup.write("memory.memsw.limit_in_bytes", LIMIT);
            }
        } else {
            cgroup.write("memory.max", LIMIT);
            if cgroup.dir.join("memory.swap.max").exists() {
                cgroup.write("memory.swap.max", "0");
            }
        }
        cgroup
    }

    fn write(&self, file: &str, value: &str) {
        let path = self.dir.join(file);
        std::fs::write(&path, value)
            .unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
    }

    /// Runs `tail /dev/zero` inside the cgroup (the shell joins it, then execs).
    fn spawn_hog(&mut self) -> u32 {
        let procs = self.dir.join("cgroup.procs");
        let script = format!("echo $$ > '{}' && exec tail /dev/zero", procs.display());
        let child = Command::new("sh").arg("-c").arg(script).spawn().unwrap();
        let pid = child.id();
        self.child = Some(child);
        pid
    }

    /// Waits for the process to end; returns the signal that killed it.
    fn wait_killed(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.signal();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the memory hog was not OOM-killed within {timeout:?}");
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The killed task may take a moment to leave the cgroup.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.dir).is_err()
            && self.dir.exists()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn memory_cgroup_limit_gives_oom_event() {
    let agent = Agent::start("oom", &[plugin_wasm("oom")], "");
    agent.wait_state("oom", "running", Duration::from_secs(20));
    let mut cgroup = MemoryCgroup::create();
    let inode = std::fs::metadata(&cgroup.dir).unwrap().ino();
    let pid = cgroup.spawn_hog();
    assert_eq!(
        cgroup.wait_killed(Duration::from_secs(60)),
        Some(9),
        "not SIGKILLed"
    );

    let doc = wait_for(Duration::from_secs(20), "the OOM event of the hog", || {
        let docs: Vec<Value> = agent
            .get("/events?tracer=oom&limit=100")
            .json()
            .as_array()
            .cloned()
            .unwrap_or_default();
        docs.into_iter()
            .find(|d| d["tracer_data"]["victim"]["pid"] == pid)
    });
    assert_eq!(doc["tracer_type"], "event");
    let data = &doc["tracer_data"];
    let (trigger, victim) = (&data["trigger"], &data["victim"]);
    // The hog's own allocation ran the OOM killer, which chose the hog.
    assert_eq!(victim["comm"], "tail", "{data}");
    assert_eq!(trigger["comm"], "tail", "{data}");
    assert_eq!(trigger["pid"], pid, "{data}");
    assert_eq!(trigger["memory_cgroup_id"], inode, "{data}");
    assert_eq!(victim["memory_cgroup_id"], inode, "{data}");
    assert_eq!(victim["uid"], 0, "{data}");
    assert_eq!(victim["oom_score_adj"], 0, "{data}");
    let anon_kb = victim["anon_rss_kb"].as_u64().unwrap();
    assert!((32 * 1024..=64 * 1024).contains(&anon_kb), "{data}");
    assert!(victim["total_vm_kb"].as_u64().unwrap() >= anon_kb, "{data}");
    assert!(victim["pgtables_kb"].as_u64().is_some(), "{data}");
    if let Some(path) = trigger["cgroup"]["path"].as_str() {
        assert_eq!(path, cgroup.path, "{data}");
    }
    let meminfo = &data["memory_snapshot"]["host_meminfo"];
    assert!(
        meminfo["MemTotal"].as_u64().unwrap() > meminfo["MemFree"].as_u64().unwrap(),
        "{data}"
    );
    // A bare cgroup is a workload of its own: named by its path, not a container.
    assert_eq!(victim["container_id"], cgroup.path.as_str(), "{data}");
    assert_eq!(doc["cgroup_path"], cgroup.path.as_str(), "{doc}");
    assert!(doc.get("container_id").is_none(), "{doc}");

    let metrics = agent.metrics();
    let total = sample(&metrics, "kpulse_oom_host_total").unwrap();
    assert!(total >= 1.0, "{metrics}");
    let victims = metrics
        .lines()
        .find(|l| l.starts_with("kpulse_oom_victims_total{") && l.contains("comm=\"tail\""));
    assert!(victims.is_some(), "{metrics}");
}
