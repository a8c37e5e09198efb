//! `hungtask` on the real kernel: `touch` on a frozen (`fsfreeze -f`) loop-mounted ext4
//! blocks in D state; with `kernel.hung_task_timeout_secs` lowered to 2, khungtaskd
//! reports it. Needs `mkfs.ext4` (e2fsprogs), `fsfreeze` and `losetup` (util-linux).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kpulse_integration_tests::{Agent, plugin_wasm, sample, scratch_dir, wait_for};
use serde_json::Value;

const TIMEOUT: &str = "/proc/sys/kernel/hung_task_timeout_secs";
/// Decremented by every hung task the kernel prints: restored too.
const WARNINGS: &str = "/proc/sys/kernel/hung_task_warnings";
const PANIC: &str = "/proc/sys/kernel/hung_task_panic";

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

/// A frozen loop-mounted ext4, tasks blocked writing to it and a lowered hung-task
/// timeout; everything is undone on drop (thaw, reap, unmount, detach, restore sysctls).
struct FrozenFs {
    dir: PathBuf,
    mnt: PathBuf,
    loop_dev: Option<String>,
    mounted: bool,
    frozen: bool,
    blocked: Vec<Child>,
    sysctls: Vec<(&'static str, String)>,
}

impl FrozenFs {
    fn new() -> FrozenFs {
        let panic_setting = std::fs::read_to_string(PANIC).unwrap_or_default();
        assert!(
            matches!(panic_setting.trim(), "" | "0"),
            "refusing to provoke a hung task: kernel.hung_task_panic = {}",
            panic_setting.trim()
        );
        let dir = scratch_dir("hungtask-fs");
        FrozenFs {
            mnt: dir.join("mnt"),
            dir,
            loop_dev: None,
            mounted: false,
            frozen: false,
            blocked: Vec::new(),
            sysctls: Vec::new(),
        }
    }

    fn set_sysctl(&mut self, path: &'static str, value: &str) {
        let old = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("read {path}: {err}"));
        if !self.sysctls.iter().any(|(p, _)| *p == path) {
            self.sysctls.push((path, old.trim().to_owned()));
        }
        std::fs::write(path, value).unwrap_or_else(|err| panic!("write {path}: {err}"));
    }

    fn mount_and_freeze(&mut self) {
        let image = self.dir.join("fs.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let image = image.to_str().unwrap();
        run("mkfs.ext4", &["-q", "-F", image]);
        let dev = run("losetup", &["--find", "--show", image]);
        self.loop_dev = Some(dev.clone());
        std::fs::create_dir_all(&self.mnt).unwrap();
        run("mount", &[&dev, self.mnt.to_str().unwrap()]);
        self.mounted = true;
        run("fsfreeze", &["-f", self.mnt.to_str().unwrap()]);
        self.frozen = true;
    }

    /// Starts `touch <mnt>/<name>`, which blocks in D state until the thaw.
    fn block(&mut self, name: &str) -> u32 {
        let child = Command::new("touch")
            .arg(self.mnt.join(name))
            .spawn()
            .unwrap();
        let pid = child.id();
        self.blocked.push(child);
        pid
    }
}

fn state_of(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

impl Drop for FrozenFs {
    fn drop(&mut self) {
        let mnt = self.mnt.to_string_lossy().into_owned();
        if self.frozen {
            let _ = Command::new("fsfreeze").args(["-u", &mnt]).status();
        }
        for mut child in self.blocked.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.mounted {
            let _ = Command::new("umount").arg(&mnt).status();
        }
        if let Some(dev) = &self.loop_dev {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
        for (path, value) in self.sysctls.drain(..).rev() {
            if let Err(err) = std::fs::write(path, &value) {
                eprintln!("cannot restore {path} = {value}: {err}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn write_to_frozen_fs_gives_hungtask_event() {
    let mut fs = FrozenFs::new();
    let agent = Agent::start("hungtask", &[plugin_wasm("hungtask")], "");
    agent.wait_state("hungtask", "running", Duration::from_secs(20));
    fs.mount_and_freeze();
    fs.set_sysctl(WARNINGS, "-1");
    fs.set_sysctl(TIMEOUT, "2");
    let first = fs.block("a");
    let second = fs.block("b");
    wait_for(Duration::from_secs(10), "touch to block in D state", || {
        (state_of(first) == Some('D') && state_of(second) == Some('D')).then_some(())
    });

    let doc = wait_for(
        Duration::from_secs(60),
        "the hungtask event of touch",
        || {
            let docs: Vec<Value> = agent
                .get("/events?tracer=hungtask&limit=100")
                .json()
                .as_array()
                .cloned()
                .unwrap_or_default();
            docs.into_iter().find(|d| d["tracer_data"]["pid"] == first)
        },
    );
    assert_eq!(doc["tracer_type"], "event");
    let data = &doc["tracer_data"];
    assert_eq!(data["comm"], "touch", "{data}");
    assert_eq!(data["tid"], first, "{data}");
    assert_eq!(data["hung_task_timeout_secs"], 2, "{data}");
    // Blocked on the frozen superblock's write lock.
    let stack: Vec<&str> = data["stack"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        stack.iter().any(|f| f.contains("percpu_rwsem")
            || f.contains("sb_start_write")
            || f.contains("mnt_want_write")),
        "{data}"
    );
    let other = data["blocked_processes_stack"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["pid"] == second)
        .unwrap_or_else(|| panic!("second blocked touch missing: {data}"));
    assert_eq!(other["comm"], "touch", "{data}");
    assert!(
        other["stack"].as_array().is_some_and(|s| !s.is_empty()),
        "{data}"
    );

    // The kernel re-reports the task every check: counted, but saved once.
    let metrics = wait_for(
        Duration::from_secs(30),
        "repeated hung task reports",
        || {
            let metrics = agent.metrics();
            let deduplicated = sample(&metrics, "kpulse_hungtask_deduplicated_total")?;
            (deduplicated >= 1.0).then_some(metrics)
        },
    );
    let total = sample(&metrics, "kpulse_hungtask_total").unwrap();
    assert!(total >= 3.0, "{metrics}");
    let saved: Vec<Value> = agent
        .get("/events?tracer=hungtask&limit=1000")
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        saved
            .iter()
            .filter(|d| d["tracer_data"]["pid"] == first)
            .count(),
        1
    );
}
