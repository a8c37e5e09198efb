//! `memreclaim` on the real kernel: `dd` writing 256 MiB of page cache inside a memory
//! cgroup limited to 64 MiB forces memcg limit reclaim, which the collector reports with
//! `source = "memcg"`, the writer's pid/comm and the cgroup's id.
//!
//! Global direct reclaim is not provoked: it would need the whole (large) machine under
//! memory pressure. Uses the cgroup v1 memory controller when mounted (hybrid hosts), else
//! cgroup v2 `memory.max`; the cgroup and the file are removed even if the test fails.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use kpulse_integration_tests::{Agent, plugin_wasm, sample_with, wait_for};

const LIMIT: u64 = 64 << 20;

/// A memory-limited cgroup, its writer process and its file; all cleaned up on drop.
struct LimitedCgroup {
    dir: PathBuf,
    file: PathBuf,
    child: Option<Child>,
}

impl LimitedCgroup {
    fn create(file: PathBuf) -> Self {
        let name = format!("kpulse-reclaim-test-{}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let (dir, limit_file) = if v1.join("memory.limit_in_bytes").exists() {
            (v1.join(&name), "memory.limit_in_bytes")
        } else {
            let v2 = Path::new("/sys/fs/cgroup");
            let controllers = std::fs::read_to_string(v2.join("cgroup.subtree_control"));
            assert!(
                controllers.is_ok_and(|c| c.split_whitespace().any(|c| c == "memory")),
                "neither a cgroup v1 memory hierarchy nor the v2 memory controller at the root"
            );
            (v2.join(&name), "memory.max")
        };
        std::fs::create_dir(&dir).unwrap();
        let cgroup = LimitedCgroup {
            dir,
            file,
            child: None,
        };
        std::fs::write(cgroup.dir.join(limit_file), LIMIT.to_string()).unwrap();
        cgroup
    }

    /// Starts `dd` inside the cgroup: the shell moves itself in, then becomes `dd`.
    fn spawn_writer(&mut self) -> u32 {
        let script = format!(
            "echo $$ > {procs:?} && exec dd if=/dev/zero of={file:?} bs=1M count=256 status=none",
            procs = self.dir.join("cgroup.procs"),
            file = self.file,
        );
        let child = Command::new("sh").args(["-c", &script]).spawn().unwrap();
        let pid = child.id();
        self.child = Some(child);
        pid
    }

    fn wait_writer(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = child.wait().unwrap();
            assert!(status.success(), "dd in the cgroup failed: {status}");
        }
    }
}

impl Drop for LimitedCgroup {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.file);
        // Empty now (its only task exited); page cache charged to it does not block rmdir.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

#[test]
fn memcg_limit_reclaim_is_reported() {
    let agent = Agent::start(
        "memreclaim",
        &[plugin_wasm("memreclaim")],
        "[plugins.memreclaim]\nthreshold_ns = 1000\n",
    );
    agent.wait_state("memreclaim", "running", Duration::from_secs(20));
    let mut cgroup = LimitedCgroup::create(agent.dir.join("reclaim.dat"));
    let memcg_id = std::fs::metadata(&cgroup.dir).unwrap().ino();
    let pid = cgroup.spawn_writer();
    cgroup.wait_writer();

    let docs = wait_for(
        Duration::from_secs(20),
        "memcg reclaim events of dd",
        || {
            let response = agent.get("/events?tracer=memreclaim&limit=1000");
            let docs: Vec<serde_json::Value> =
                response.json().as_array().cloned().unwrap_or_default();
            let hits: Vec<_> = docs
                .into_iter()
                .filter(|d| d["tracer_data"]["pid"] == pid && d["tracer_data"]["source"] == "memcg")
                .collect();
            (!hits.is_empty()).then_some(hits)
        },
    );
    let doc = &docs[0];
    let data = &doc["tracer_data"];
    assert_eq!(doc["tracer_name"], "memreclaim");
    assert_eq!(doc["tracer_type"], "event");
    assert_eq!(data["comm"], "dd", "{data}");
    assert_eq!(data["tid"], pid, "single-threaded dd: {data}");
    assert_eq!(data["threshold_ns"], 1000, "{data}");
    assert!(
        data["reclaim_duration_ns"].as_u64().unwrap() >= 1000,
        "{data}"
    );
    assert_eq!(
        data["memcg_id"], memcg_id,
        "memcg id is the cgroup directory's inode: {data}"
    );
    assert!(data["gfp_flags"].as_u64().unwrap() != 0, "{data}");
    assert!(
        data["order"].as_i64().is_some() && data["nr_reclaimed"].as_u64().is_some(),
        "{data}"
    );
    let saved = sample_with(
        &agent.metrics(),
        "kpulse_memreclaim_events_total",
        "source=\"memcg\"",
    )
    .unwrap();
    assert!(saved >= docs.len() as f64, "{saved} < {}", docs.len());
}
