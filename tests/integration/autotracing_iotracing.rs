//! `iotracing` on the real kernel: a file-backed loop device with ext4, and `dd` writing
//! `victim.dat` on it with `oflag=direct` from a cgroup whose writes to the loop device's
//! *backing* disk are throttled to 1 MiB/s (cgroup v1 `blkio.throttle.write_bps_device`).
//!
//! Why the backing disk and not the loop device itself: blk-throttle holds a bio back before
//! it becomes a request, so throttling the loop device delays `dd` without the delay ever
//! showing in the loop device's `/proc/diskstats` (w_await stays near 0.1 ms). With the loop
//! device in direct-IO mode its worker writes the backing file on behalf of `dd`'s cgroup
//! (per-blkcg loop workers), so the throttle holds the loop device's requests in flight:
//! each 256 KiB write takes ~250 ms, w_await and util go over HUATUO's thresholds, and the
//! requests' d2c/q2c are long.
//!
//! Needs root, cgroup v1 blkio (hybrid hosts), e2fsprogs (`mkfs.ext4`) and util-linux
//! (`losetup`, `mount`); the scratch directory must be on a block-device filesystem.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use kpulse_integration_tests::{Agent, plugin_wasm, sample, sample_with, scratch_dir, wait_for};
use serde_json::Value;

const BLKIO: &str = "/sys/fs/cgroup/blkio";

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("{program}: {err}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `major:minor` of the whole disk holding `path` (a throttle rule needs the disk, not a
/// partition).
fn backing_disk(path: &Path) -> String {
    let dev = std::fs::metadata(path).unwrap().dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    assert!(
        major != 0,
        "{} is not on a block device ({major}:{minor}): the test needs one",
        path.display()
    );
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if sys.join("partition").exists() {
        let disk = std::fs::read_to_string(sys.join("../dev")).unwrap();
        return disk.trim().to_owned();
    }
    format!("{major}:{minor}")
}

/// A loop device with ext4 mounted, in direct-IO mode, and a blkio cgroup throttling writes
/// to its backing disk; a writer in that cgroup. Everything is undone on drop.
struct SlowDisk {
    dir: PathBuf,
    image: PathBuf,
    mount: PathBuf,
    loop_dev: String,
    mounted: bool,
    cgroup: Option<PathBuf>,
    writer: Option<Child>,
}

impl SlowDisk {
    fn create(label: &str) -> SlowDisk {
        assert!(
            Path::new(BLKIO)
                .join("blkio.throttle.write_bps_device")
                .exists(),
            "no cgroup v1 blkio hierarchy at {BLKIO}"
        );
        let dir = scratch_dir(label);
        let image = dir.join("disk.img");
        let mount = dir.join("mnt");
        std::fs::create_dir(&mount).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        let loop_dev = run(
            "losetup",
            &[
                "--find",
                "--show",
                "--direct-io=on",
                image.to_str().unwrap(),
            ],
        );
        let mut disk = SlowDisk {
            dir,
            image,
            mount,
            loop_dev,
            mounted: false,
            cgroup: None,
            writer: None,
        };
        // Inode tables and journal zeroed now: no ext4lazyinit IO while the test watches.
        run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
                &disk.loop_dev,
            ],
        );
        run("mount", &[&disk.loop_dev, disk.mount.to_str().unwrap()]);
        disk.mounted = true;
        let cgroup =
            Path::new(BLKIO).join(format!("kpulse-iotracing-{label}-{}", std::process::id()));
        std::fs::create_dir(&cgroup).unwrap();
        disk.cgroup = Some(cgroup.clone());
        let rule = format!("{} 1048576", backing_disk(&disk.image));
        std::fs::write(cgroup.join("blkio.throttle.write_bps_device"), &rule).unwrap();
        disk
    }

    /// `loop3` of `/dev/loop3`.
    fn name(&self) -> &str {
        self.loop_dev.trim_start_matches("/dev/")
    }

    fn major_minor(&self) -> (u32, u32) {
        let rdev = std::fs::metadata(&self.loop_dev).unwrap().rdev();
        (libc::major(rdev), libc::minor(rdev))
    }

    fn victim(&self) -> PathBuf {
        self.mount.join("victim.dat")
    }

    /// Starts `dd` in the throttled cgroup: 120 direct writes of 256 KiB, ~30 s at 1 MiB/s.
    /// The shell moves itself into the cgroup, then becomes `dd` (same pid).
    fn spawn_writer(&mut self) -> u32 {
        let procs = self.cgroup.as_ref().unwrap().join("cgroup.procs");
        let script = format!(
            "echo $$ > {procs:?} && exec dd if=/dev/zero of={file:?} bs=256k count=120 oflag=direct status=none",
            file = self.victim(),
        );
        let child = Command::new("sh").args(["-c", &script]).spawn().unwrap();
        let pid = child.id();
        self.writer = Some(child);
        pid
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        if let Some(mut child) = self.writer.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(cgroup) = self.cgroup.take() {
            for _ in 0..50 {
                if std::fs::remove_dir(&cgroup).is_ok() || !cgroup.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if self.mounted {
            for _ in 0..50 {
                let ok = Command::new("umount")
                    .arg(&self.mount)
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = Command::new("losetup")
            .args(["-d", &self.loop_dev])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(device: &str) -> String {
    format!(
        "[plugins.iotracing]\ninterval = 1\nduration = 3\ndevices = [{device:?}]\n\
         schedule_threshold_ms = 10\n"
    )
}

fn documents(agent: &Agent) -> Vec<Value> {
    agent
        .get("/events?tracer=iotracing&limit=100")
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn samples(agent: &Agent) -> f64 {
    sample(&agent.metrics(), "kpulse_iotracing_samples_total").unwrap_or(0.0)
}

#[test]
fn iotracing_names_the_throttled_direct_writer_its_file_and_device() {
    let mut disk = SlowDisk::create("writer");
    let agent = Agent::start(
        "iotracing",
        &[plugin_wasm("iotracing")],
        &config(disk.name()),
    );
    agent.wait_state("iotracing", "running", Duration::from_secs(20));
    let (major, minor) = disk.major_minor();

    let started = Instant::now();
    let pid = disk.spawn_writer();
    let docs = wait_for(Duration::from_secs(40), "an iotracing document", || {
        let docs = documents(&agent);
        (!docs.is_empty()).then_some(docs)
    });
    let trigger_to_document = started.elapsed();
    assert_eq!(docs.len(), 1, "one capture, then the cool-down: {docs:?}");
    let doc = &docs[0];
    let data = &doc["tracer_data"];
    assert_eq!(doc["tracer_name"], "iotracing");
    assert_eq!(doc["tracer_type"], "autotracing");

    let reason = &data["reason_snapshot"];
    assert_eq!(reason["device"], disk.name(), "{reason}");
    assert_eq!(
        (reason["major_num"].clone(), reason["minor_num"].clone()),
        (major.into(), minor.into())
    );
    let w_await = reason["iostatus"]["write_await"].as_f64().unwrap();
    assert!(w_await > 100.0, "w_await {w_await} ms: {reason}");
    assert!(
        reason["iostatus"]["write_iops"].as_f64().unwrap() > 0.0,
        "{reason}"
    );
    assert!(!reason["summary"].as_str().unwrap().is_empty(), "{reason}");

    let procs = data["process_file_io_stats"].as_array().unwrap();
    let dd = procs
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("dd (pid {pid}) not among the processes: {procs:?}"));
    assert_eq!(dd["comm"], "dd", "{dd}");
    assert!(dd["total_disk_write_bps"].as_u64().unwrap() > 0, "{dd}");
    let inode = std::fs::metadata(disk.victim()).unwrap().ino();
    let files = dd["total_files"].as_array().unwrap();
    let file = files
        .iter()
        .find(|f| f["inode"] == inode)
        .unwrap_or_else(|| panic!("victim.dat (inode {inode}) not among dd's files: {files:?}"));
    assert_eq!(file["path"], disk.victim().to_str().unwrap(), "{file}");
    assert_eq!(
        (file["major"].clone(), file["minor"].clone()),
        (major.into(), minor.into())
    );
    assert_eq!(file["dev_name"], disk.name(), "{file}");
    assert_eq!(file["is_direct"], true, "{file}");
    assert!(file["fs_write_bps"].as_u64().unwrap() > 0, "{file}");
    assert!(file["disk_write_bps"].as_u64().unwrap() > 0, "{file}");
    for key in ["q2c_us", "d2c_us", "max_q2c_us", "max_d2c_us"] {
        assert!(file[key].as_u64().unwrap() > 0, "{key}: {file}");
    }
    assert!(
        file["max_d2c_us"].as_u64() >= file["d2c_us"].as_u64(),
        "{file}"
    );
    assert!(
        file["q2c_us"].as_u64() >= file["d2c_us"].as_u64(),
        "q2c includes d2c: {file}"
    );

    let stacks = data["io_schedule_timeout_stacks"].as_array().unwrap();
    let wait = stacks.iter().find(|s| s["pid"] == pid).unwrap_or_else(|| {
        panic!(
            "no io_schedule wait of dd: {stacks:?}, capture {}",
            data["capture"]
        )
    });
    assert_eq!(
        (wait["tid"].clone(), wait["comm"].clone()),
        (pid.into(), "dd".into())
    );
    assert!(
        wait["schedule_latency_us"].as_u64().unwrap() >= 10_000,
        "{wait}"
    );
    let frames: Vec<&str> = wait["stack"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        frames.iter().any(|f| f.starts_with("io_schedule")),
        "{frames:?}"
    );
    assert!(
        frames[0].starts_with("__schedule+"),
        "tracing frames trimmed: {frames:?}"
    );

    let capture = &data["capture"];
    eprintln!("iotracing: writer start -> document {trigger_to_document:?}; capture {capture}");
    // The object is dropped after the capture.
    wait_for(Duration::from_secs(10), "capturing back to 0", || {
        (sample(&agent.metrics(), "kpulse_iotracing_capturing") == Some(0.0)).then_some(())
    });
    let objects = sample_with(
        &agent.metrics(),
        "kpulse_plugin_bpf_objects",
        "plugin=\"iotracing\"",
    );
    assert!(
        objects.is_none_or(|n| n == 0.0),
        "objects held after the capture: {objects:?}"
    );
}

#[test]
fn iotracing_saves_nothing_while_the_disk_is_idle() {
    let disk = SlowDisk::create("idle");
    let agent = Agent::start(
        "iotracing-idle",
        &[plugin_wasm("iotracing")],
        &config(disk.name()),
    );
    agent.wait_state("iotracing", "running", Duration::from_secs(20));
    // Five samples with the mounted device and no writer: more than the two consecutive
    // samples a trigger needs.
    let first = samples(&agent);
    wait_for(
        Duration::from_secs(30),
        "five more diskstats samples",
        || (samples(&agent) >= first + 5.0).then_some(()),
    );
    assert_eq!(documents(&agent), Vec::<Value>::new());
    assert_eq!(
        sample(&agent.metrics(), "kpulse_iotracing_capturing"),
        Some(0.0),
        "nothing attached while idle"
    );
}
