//! `iolatency` on the real kernel: file-backed loop devices with ext4, one of them slow.
//! Slow means `dd oflag=direct` writes from a cgroup whose writes to the loop device's
//! *backing* disk are throttled to 1 MiB/s (cgroup v1 `blkio.throttle.write_bps_device`):
//! the loop device runs in direct-IO mode and its worker writes the backing file in the
//! writer's blkio cgroup, so each request stays in the loop *driver* ~128–256 ms (see
//! `autotracing_iotracing.rs` for why the loop device itself is not throttled).
//!
//! Expected: the slow disk's d2c and q2c both rise in the ≥ 50 ms zones, by about the same
//! counts (the delay is after the issue, so q2c ≈ d2c + a little queueing, never less); an
//! idle loop device gets nothing. A ctr container doing the same through a bind mount of
//! the slow file system, with the throttle rule in its own blkio cgroup, gets
//! `iolatency_container_blkdisk_*` series with its labels. Queue freezes need a kprobe: on
//! this kernel the freeze series must be absent and `freeze_traced` 0.
//!
//! Needs root, cgroup v1 blkio (hybrid hosts), e2fsprogs (`mkfs.ext4`), util-linux
//! (`losetup`, `mount`), and for the container test the runtimes of
//! `scripts/containers.sh start`; the scratch directory must be on a block-device
//! filesystem.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use kpulse_integration_tests::containers::Runtimes;
use kpulse_integration_tests::{Agent, plugin_wasm, scratch_dir, wait_for};

use super::metrics_host::{HUATUO, Series, parse_exposition};

const BLKIO: &str = "/sys/fs/cgroup/blkio";
const NS: &str = "kptest";
const NO_CONTAINERS: &str = "[containers]\nenabled = false\n";
/// 1 MiB/s on the backing disk: a 256 KiB request ~250 ms, a 128 KiB one ~125 ms.
const THROTTLE_BPS: u64 = 1 << 20;

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

/// `major:minor` of the whole disk holding `path` (a throttle rule needs the disk).
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
        return std::fs::read_to_string(sys.join("../dev"))
            .unwrap()
            .trim()
            .to_owned();
    }
    format!("{major}:{minor}")
}

/// A direct-IO loop device with ext4 mounted; undone on drop.
struct LoopDisk {
    dir: PathBuf,
    image: PathBuf,
    mount: PathBuf,
    loop_dev: String,
    mounted: bool,
}

impl LoopDisk {
    fn create(label: &str) -> LoopDisk {
        let dir = scratch_dir(label);
        let image = dir.join("disk.img");
        let mount = dir.join("mnt");
        std::fs::create_dir(&mount).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(128 << 20)
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
        let mut disk = LoopDisk {
            dir,
            image,
            mount,
            loop_dev,
            mounted: false,
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
        disk
    }

    /// HUATUO's `disk` label.
    fn disk(&self) -> String {
        let rdev = std::fs::metadata(&self.loop_dev).unwrap().rdev();
        format!("{}:{}", libc::major(rdev), libc::minor(rdev))
    }

    /// `<backing disk> <bps>`, for a blkio cgroup's `blkio.throttle.write_bps_device`.
    fn throttle_rule(&self) -> String {
        format!("{} {THROTTLE_BPS}", backing_disk(&self.image))
    }

    /// Completed reads + writes of the loop device (`/proc/diskstats`).
    fn completed(&self) -> u64 {
        let name = self.loop_dev.trim_start_matches("/dev/");
        let text = std::fs::read_to_string("/proc/diskstats").unwrap();
        let line = text
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some(name))
            .unwrap_or_else(|| panic!("{name} not in /proc/diskstats"));
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(3)
            .map(|v| v.parse().unwrap())
            .collect();
        f[0] + f[4]
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
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

/// A blkio cgroup of the test; removed on drop (after its tasks are gone).
struct Blkcg(PathBuf);

impl Blkcg {
    fn create(label: &str) -> Blkcg {
        assert!(
            Path::new(BLKIO)
                .join("blkio.throttle.write_bps_device")
                .exists(),
            "no cgroup v1 blkio hierarchy at {BLKIO}"
        );
        let dir = Path::new(BLKIO).join(format!("kpulse-iolatency-{label}-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        Blkcg(dir)
    }
}

impl Drop for Blkcg {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Zone counts `[q2c; 6]`, `[d2c; 6]` of `disk` in `prefix` + `blkdisk_{q2c,d2c}`, for the
/// samples whose labels also match `filter`.
fn zones(
    series: &Series,
    prefix: &str,
    disk: &str,
    filter: impl Fn(&BTreeMap<String, String>) -> bool,
) -> ([f64; 6], [f64; 6]) {
    let get = |kind: &str| {
        let mut out = [0.0; 6];
        for (labels, value) in series
            .get(&format!("{prefix}blkdisk_{kind}"))
            .into_iter()
            .flatten()
        {
            if labels.get("disk").map(String::as_str) != Some(disk) || !filter(labels) {
                continue;
            }
            let zone: usize = labels["zone"].parse().unwrap();
            out[zone] += value;
        }
        out
    };
    (get("q2c"), get("d2c"))
}

/// Requests at 50 ms or more (zones 2..=5).
fn slow(counts: &[f64; 6]) -> f64 {
    counts[2..].iter().sum()
}

fn delta(after: &[f64; 6], before: &[f64; 6]) -> [f64; 6] {
    std::array::from_fn(|i| after[i] - before[i])
}

/// Waits (bounded) for a child to exit successfully.
fn wait_exit(child: &mut Child, timeout: Duration) {
    let status = wait_for(timeout, "the writer to finish", || {
        child.try_wait().unwrap()
    });
    assert!(status.success(), "writer failed: {status}");
}

const HOST: &str = "huatuo_bamai_iolatency_";
const CONTAINER: &str = "huatuo_bamai_iolatency_container_";

#[test]
fn iolatency_zones_of_a_throttled_loop_disk_and_not_of_an_idle_one() {
    let slow_disk = LoopDisk::create("iolat-slow");
    let idle_disk = LoopDisk::create("iolat-idle");
    let cgroup = Blkcg::create("host");
    std::fs::write(
        cgroup.0.join("blkio.throttle.write_bps_device"),
        slow_disk.throttle_rule(),
    )
    .unwrap();
    let agent = Agent::start(
        "iolatency",
        &[plugin_wasm("iolatency")],
        &format!("{HUATUO}{NO_CONTAINERS}"),
    );
    agent.wait_state("iolatency", "running", Duration::from_secs(30));
    let before = wait_for(Duration::from_secs(20), "iolatency samples", || {
        let text = agent.metrics();
        text.contains("huatuo_bamai_iolatency_requests_total")
            .then(|| parse_exposition(&text))
    });

    // Queue freezes: a kprobe, which this kernel lacks: no series, never zeros.
    let freeze_traced = before["huatuo_bamai_iolatency_freeze_traced"][0].1;
    let kprobes = Path::new("/sys/kernel/tracing/kprobe_events").exists()
        || Path::new("/sys/kernel/debug/tracing/kprobe_events").exists();
    if kprobes {
        assert_eq!(
            freeze_traced, 1.0,
            "kprobes exist, freezes should be traced"
        );
    } else {
        assert_eq!(freeze_traced, 0.0);
        assert!(
            !before.contains_key("huatuo_bamai_iolatency_blkdisk_freeze"),
            "freeze series without a freeze probe"
        );
        let log = agent.log();
        assert!(
            log.contains("queue freezes not traced") && log.contains("not supported"),
            "no typed not-supported for the freeze probe in the log:\n{log}"
        );
    }

    let (q0, d0) = zones(&before, HOST, &slow_disk.disk(), |_| true);
    let completed0 = slow_disk.completed();
    // 40 direct writes of 256 KiB at 1 MiB/s: ~10 s.
    let procs = cgroup.0.join("cgroup.procs");
    let script = format!(
        "echo $$ > {procs:?} && exec dd if=/dev/zero of={file:?} bs=256k count=40 oflag=direct status=none",
        file = slow_disk.mount.join("slow.dat"),
    );
    let mut writer = Command::new("sh").args(["-c", &script]).spawn().unwrap();
    wait_exit(&mut writer, Duration::from_secs(90));
    let completed = slow_disk.completed() - completed0;
    // The counts of the last requests are in the maps at completion: one scrape has them.
    let after = parse_exposition(&agent.metrics());
    let (q1, d1) = zones(&after, HOST, &slow_disk.disk(), |_| true);
    let (q, d) = (delta(&q1, &q0), delta(&d1, &d0));
    let own = |name: &str| after[&format!("{HOST}{name}")][0].1;
    eprintln!(
        "slow disk {}: {completed} requests completed; q2c zones {q:?}, d2c zones {d:?}; \
         agent-wide: {} requests timed, {} untimed, {} without q2c",
        slow_disk.disk(),
        own("requests_total"),
        own("requests_untimed_total"),
        own("requests_without_q2c_total"),
    );

    assert!(
        slow(&d) >= 20.0,
        "d2c: fewer than 20 requests >= 50 ms on the throttled disk: {d:?}"
    );
    assert!(
        slow(&d) <= completed as f64,
        "more slow requests ({d:?}) than the disk completed ({completed})"
    );
    // Per request q2c >= d2c: at every zone, at least as many q2c as d2c at or above it.
    for zone in 0..6 {
        let (qt, dt): (f64, f64) = (q[zone..].iter().sum(), d[zone..].iter().sum());
        assert!(
            qt >= dt,
            "zone >= {zone}: q2c {qt} < d2c {dt} ({q:?} / {d:?})"
        );
    }
    // The delay is in the driver: q2c is d2c plus little, so both see the same slow requests.
    assert!(
        slow(&q) - slow(&d) <= 2.0 + 0.1 * slow(&d),
        "q2c has many more slow requests than d2c ({q:?} / {d:?}): queueing delay?"
    );
    // 1 MiB/s: requests of 128–256 KiB take 125–250 ms, zones 3 and 4.
    assert!(d[3] + d[4] >= 0.8 * slow(&d), "d2c zones {d:?}");

    let (qi, di) = zones(&after, HOST, &idle_disk.disk(), |_| true);
    assert_eq!(
        (qi, di),
        ([0.0; 6], [0.0; 6]),
        "the idle disk {} has slow requests",
        idle_disk.disk()
    );
    // The host agent has no containers: no container series.
    assert!(
        !after.keys().any(|k| k.starts_with(CONTAINER)),
        "container series without containers"
    );
}

#[test]
fn iolatency_container_series_of_a_throttled_direct_writer_in_a_ctr_container() {
    let runtimes = Runtimes::get();
    let disk = LoopDisk::create("iolat-ctr");
    let id = format!("iolat-{}", std::process::id());
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:rw",
        disk.mount.display()
    );
    let container = runtimes.ctr_run(NS, &id, &[], &["--mount", &mount], "sleep 1000");
    let blkcg = PathBuf::from(format!("{BLKIO}/{NS}/{id}"));
    wait_for(
        Duration::from_secs(20),
        "the container's blkio cgroup",
        || blkcg.join("cgroup.procs").exists().then_some(()),
    );
    std::fs::write(
        blkcg.join("blkio.throttle.write_bps_device"),
        disk.throttle_rule(),
    )
    .unwrap();
    let agent = Agent::start(
        "iolatency-ctr",
        &[plugin_wasm("iolatency")],
        &format!("{HUATUO}{}", runtimes.agent_config("")),
    );
    agent.wait_state("iolatency", "running", Duration::from_secs(30));
    wait_for(Duration::from_secs(20), "iolatency samples", || {
        agent
            .metrics()
            .contains("huatuo_bamai_iolatency_requests_total")
            .then_some(())
    });

    // 24 direct writes of 256 KiB at 1 MiB/s: ~6 s.
    let out = container.exec(
        "dd",
        "dd if=/dev/zero of=/data/c.dat bs=256k count=24 oflag=direct",
    );
    assert!(
        out.status.success(),
        "dd in the container: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mine = |labels: &BTreeMap<String, String>| {
        labels.get("container_name").map(String::as_str) == Some(id.as_str())
    };
    let (series, (q, d)) = wait_for(
        Duration::from_secs(30),
        "the container's slow requests",
        || {
            let series = parse_exposition(&agent.metrics());
            let counts = zones(&series, CONTAINER, &disk.disk(), mine);
            (slow(&counts.1) >= 12.0).then_some((series, counts))
        },
    );
    eprintln!(
        "container {id} on {}: q2c zones {q:?}, d2c zones {d:?}",
        disk.disk()
    );
    assert!(slow(&q) >= slow(&d), "q2c {q:?} / d2c {d:?}");
    assert!(
        slow(&d) <= 24.0 * 2.0,
        "more slow requests than writes split in two: {d:?}"
    );

    // HUATUO's container labels, and the same requests at host level.
    let (labels, _) = series[&format!("{CONTAINER}blkdisk_d2c")]
        .iter()
        .find(|(l, _)| mine(l))
        .unwrap();
    for key in [
        "container_host",
        "container_name",
        "container_type",
        "container_level",
        "container_hostnamespace",
        "disk",
        "zone",
    ] {
        assert!(labels.contains_key(key), "{key} missing from {labels:?}");
    }
    let (_, host_d) = zones(&series, HOST, &disk.disk(), |_| true);
    assert!(
        slow(&host_d) >= slow(&d),
        "host-level d2c {host_d:?} below the container's {d:?}"
    );
    // Only this container wrote to this disk.
    let others: f64 = series[&format!("{CONTAINER}blkdisk_d2c")]
        .iter()
        .filter(|(l, _)| !mine(l) && l.get("disk") == Some(&disk.disk()))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(others, 0.0, "other containers' requests on {}", disk.disk());
    drop(agent);
    container.stop();
}
