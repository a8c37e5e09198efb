//! `dload` on a real container of the test containerd (`ctr`, namespace `kptest`): a
//! loop-mounted ext4 is bind-mounted into a busybox container, then frozen
//! (`fsfreeze -f`); on SIGUSR1 the container's shell starts writers that block in D state on
//! the frozen superblock, so the container's D-state load average climbs past a lowered
//! `threshold_load`. Needs `mkfs.ext4` (e2fsprogs), `fsfreeze`, `losetup` and `mount`
//! (util-linux), and `scripts/containers.sh start`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kpulse_integration_tests::containers::{CtrContainer, Runtimes};
use kpulse_integration_tests::{Agent, plugin_wasm, sample, sample_with, scratch_dir, wait_for};
use serde_json::Value;

const NS: &str = "kptest";
const WRITERS: usize = 6;
const THRESHOLD: f64 = 1.5;

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|err| {
            panic!("cannot run {program} ({err}): install e2fsprogs (mkfs.ext4) and util-linux (fsfreeze, losetup, mount)")
        });
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A loop-mounted ext4 and the container that uses it. Dropping it thaws the file system
/// first (so that the blocked writers can die), then removes the container, unmounts and
/// detaches the loop device.
struct Scene {
    dir: PathBuf,
    mnt: PathBuf,
    loop_dev: Option<String>,
    mounted: bool,
    frozen: bool,
    container: Option<CtrContainer>,
}

impl Scene {
    fn mount() -> Scene {
        let dir = scratch_dir("dload-fs");
        let mut scene = Scene {
            mnt: dir.join("mnt"),
            dir,
            loop_dev: None,
            mounted: false,
            frozen: false,
            container: None,
        };
        let image = scene.dir.join("fs.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let image = image.to_str().unwrap();
        run("mkfs.ext4", &["-q", "-F", image]);
        let dev = run("losetup", &["--find", "--show", image]);
        scene.loop_dev = Some(dev.clone());
        std::fs::create_dir_all(&scene.mnt).unwrap();
        run("mount", &[&dev, scene.mnt.to_str().unwrap()]);
        scene.mounted = true;
        scene
    }

    fn freeze(&mut self) {
        run("fsfreeze", &["-f", self.mnt.to_str().unwrap()]);
        self.frozen = true;
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let mnt = self.mnt.to_string_lossy().into_owned();
        if self.frozen {
            let _ = Command::new("fsfreeze").args(["-u", &mnt]).status();
        }
        drop(self.container.take());
        if self.mounted {
            let _ = Command::new("umount").arg(&mnt).status();
        }
        if let Some(dev) = &self.loop_dev {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The pids in the container's cgroup (cgroup v1 `cpu` hierarchy, else the unified one).
fn container_pids(id: &str) -> Vec<u32> {
    [
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ]
    .iter()
    .find_map(|root| std::fs::read_to_string(format!("{root}/{NS}/{id}/cgroup.procs")).ok())
    .unwrap_or_default()
    .lines()
    .filter_map(|l| l.trim().parse().ok())
    .collect()
}

fn state_of(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

fn documents(agent: &Agent, id: &str) -> Vec<Value> {
    agent
        .get(&format!("/events?tracer=dload&container={id}&limit=100"))
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn d_state_writers_in_a_container_give_its_kernel_stacks() {
    let runtimes = Runtimes::get();
    let mut scene = Scene::mount();
    let id = format!("dload-{}", std::process::id());
    let mount = format!(
        "type=bind,src={},dst=/tmp,options=rbind:rw",
        scene.mnt.display()
    );
    // On SIGUSR1 the shell starts the writers in the background; each blocks opening its
    // file once the file system is frozen.
    let files: Vec<String> = (1..=WRITERS).map(|i| format!("/tmp/w{i}")).collect();
    let script = format!(
        "trap 'for f in {}; do echo x > $f & done' USR1; while :; do sleep 1; done",
        files.join(" ")
    );
    scene.container = Some(runtimes.ctr_run(NS, &id, &[], &["--mount", &mount], &script));
    let config = format!(
        "[plugins.dload]\nthreshold_load = {THRESHOLD}\ninterval = 1\ninterval_tracing = 600\n{}",
        runtimes.agent_config("")
    );
    let agent = Agent::start("dload", &[plugin_wasm("dload")], &config);
    agent.wait_state("dload", "running", Duration::from_secs(20));

    // Control: followed for a few samples, nothing in D, no document.
    let label = format!("container_name=\"{id}\"");
    let dload_avg =
        |metrics: &str| sample_with(metrics, "kpulse_dload_container_dload_avg", &label);
    let samples = |agent: &Agent| sample(&agent.metrics(), "kpulse_dload_samples_total");
    wait_for(Duration::from_secs(30), "the container followed", || {
        dload_avg(&agent.metrics())
    });
    let seen = samples(&agent).unwrap();
    wait_for(Duration::from_secs(20), "three more samples", || {
        samples(&agent).filter(|&n| n >= seen + 3.0)
    });
    let metrics = agent.metrics();
    assert_eq!(dload_avg(&metrics), Some(0.0), "{metrics}");
    assert_eq!(
        sample_with(
            &metrics,
            "kpulse_dload_container_nr_uninterruptible",
            &label
        ),
        Some(0.0)
    );
    assert!(
        sample_with(&metrics, "kpulse_dload_container_nr_sleeping", &label)
            .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "kpulse_dload_threshold"), Some(THRESHOLD));
    assert_eq!(sample(&metrics, "kpulse_dload_fired_total"), Some(0.0));
    assert!(documents(&agent, &id).is_empty(), "fired before the freeze");

    scene.freeze();
    let out = runtimes.ctr(NS, &["task", "kill", "-s", "USR1", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blocked = wait_for(Duration::from_secs(20), "the writers in D state", || {
        let d: Vec<u32> = container_pids(&id)
            .into_iter()
            .filter(|&pid| state_of(pid) == Some('D'))
            .collect();
        (d.len() == WRITERS).then_some(d)
    });
    let since = Instant::now();

    let doc = wait_for(Duration::from_secs(60), "the dload document", || {
        documents(&agent, &id).into_iter().next()
    });
    eprintln!(
        "document {:?} after {WRITERS} tasks were in D state",
        since.elapsed()
    );
    assert_eq!(doc["tracer_type"], "autotracing", "{doc}");
    assert_eq!(doc["container_id"], id.as_str(), "{doc}");
    let data = &doc["tracer_data"];
    assert_eq!(data["threshold"], THRESHOLD, "{data}");
    assert_eq!(data["nr_uninterruptible"], WRITERS, "{data}");
    assert!(data["nr_sleeping"].as_u64().unwrap() >= 1, "{data}");
    assert_eq!(data["nr_iowait"], 0, "{data}");
    assert_eq!(data["known_issue"], "", "{data}");
    let (load, dload) = (
        data["load_avg"].as_f64().unwrap(),
        data["dload_avg"].as_f64().unwrap(),
    );
    assert!(dload > THRESHOLD && dload <= WRITERS as f64, "{data}");
    assert!(load >= dload, "{data}");

    let stack = data["stack"].as_str().unwrap();
    let cgroup = stack.split("stacktrace of D task in host:").next().unwrap();
    assert!(
        cgroup.starts_with("\nstacktrace of D task in cgroup:\n"),
        "{stack}"
    );
    for pid in &blocked {
        assert!(
            cgroup.contains(&format!("Comm: sh\tPid: {pid}\tTid: {pid}\n")),
            "writer {pid} missing: {stack}"
        );
    }
    // Blocked on the frozen superblock (open for writing: mnt_want_write → percpu rwsem).
    assert!(
        ["percpu_rwsem_wait", "mnt_want_write", "sb_start_write"]
            .iter()
            .any(|frame| cgroup.contains(frame)),
        "{stack}"
    );

    let metrics = agent.metrics();
    assert_eq!(
        sample(&metrics, "kpulse_dload_fired_total"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        dload_avg(&metrics).is_some_and(|v| v > THRESHOLD),
        "{metrics}"
    );
    assert_eq!(
        sample_with(
            &metrics,
            "kpulse_dload_container_nr_uninterruptible",
            &label
        ),
        Some(WRITERS as f64)
    );
    let remaining = sample_with(
        &metrics,
        "kpulse_dload_container_cooldown_remaining_seconds",
        &label,
    )
    .unwrap();
    assert!(remaining > 500.0 && remaining <= 600.0, "{metrics}");
    // The container is labelled like HUATUO's container series.
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("kpulse_dload_container_dload_avg{")
                && l.contains(&label)
                && l.contains("container_type=\"normal\"")),
        "{metrics}"
    );
}
