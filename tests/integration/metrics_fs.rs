//! The `pressure`, `filesystem` and `xfs` plugins and the `statfs` interface, on this
//! machine's real `/proc/pressure`, real loop-mounted ext4 and XFS filesystems the tests make
//! (root; `mkfs.ext4` from e2fsprogs, `mkfs.xfs` from xfsprogs, `losetup`/`mount` from
//! util-linux, `df` from coreutils), a real container of the test containerd, and recorded
//! trees (`tests/fixtures/roots/node1`) behind `policy.proc_root`/`sys_root`/`cgroup_root`.
//! Values are checked against the source files or `df`, read by the test around the scrape.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kpulse_integration_tests::containers::Runtimes;
use kpulse_integration_tests::{Agent, guest_wasm, plugin_wasm, root, wait_for};

use super::metrics_host::{HUATUO, Series, parse_exposition, read};

const RESOURCES: [&str; 3] = ["cpu", "memory", "io"];

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| {
            panic!("cannot run {program} ({err}): install e2fsprogs, xfsprogs, util-linux")
        });
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A file-backed loop device with a fresh filesystem mounted on `dir`; unmounted and
/// detached on drop.
struct LoopFs {
    dir: PathBuf,
    device: String,
}

impl LoopFs {
    fn make(scratch: &Path, mkfs: &[&str], size_mib: u64) -> LoopFs {
        let image = scratch.join("fs.img");
        let dir = scratch.join("mnt");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(size_mib * 1024 * 1024)
            .unwrap();
        let image_s = image.to_str().unwrap();
        let mut args = mkfs[1..].to_vec();
        args.push(image_s);
        run(mkfs[0], &args);
        let device = run("losetup", &["--find", "--show", image_s])
            .trim()
            .to_owned();
        run("mount", &[&device, dir.to_str().unwrap()]);
        LoopFs { dir, device }
    }

    fn point(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    /// `loop3` for `/dev/loop3`: the name under `/sys/fs/xfs`.
    fn name(&self) -> &str {
        self.device.trim_start_matches("/dev/")
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.dir).status();
        if !ok.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

/// The value of `name` whose labels include every `(key, value)` of `want`.
fn value(series: &Series, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    series.get(name)?.iter().find_map(|(labels, v)| {
        want.iter()
            .all(|(k, w)| labels.get(*k).map(String::as_str) == Some(*w))
            .then_some(*v)
    })
}

/// Whether `v` lies between `a` and `b` (either order), with float slack.
fn between(v: f64, a: f64, b: f64) -> bool {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    v >= lo - 1e-9 && v <= hi + 1e-9
}

/// `(some, full)` lines of a PSI file as `[avg10, avg60, avg300, total]`.
fn psi(text: &str) -> Vec<(String, [f64; 4])> {
    text.lines()
        .filter_map(|line| {
            let (kind, rest) = line.split_once(' ')?;
            let mut v = [0.0; 4];
            for (i, field) in rest.split_whitespace().enumerate().take(4) {
                v[i] = field.split_once('=')?.1.parse().ok()?;
            }
            Some((kind.to_owned(), v))
        })
        .collect()
}

/// Checks the series of one PSI file (`base` `kpulse_pressure` or its container form)
/// against the file read before and after the scrape.
fn check_psi(
    series: &Series,
    base: &str,
    resource: &str,
    extra: &[(&str, &str)],
    before: &str,
    after: &str,
) {
    let (b, a) = (psi(before), psi(after));
    assert!(!b.is_empty(), "{resource}: no PSI lines in {before:?}");
    for ((kind, vb), (_, va)) in b.iter().zip(&a) {
        let what = if kind == "some" { "waiting" } else { "stalled" };
        let total = format!("{base}_{resource}_{what}_seconds_total");
        let got = value(series, &total, extra).unwrap_or_else(|| panic!("{total} missing"));
        assert!(
            between(got, vb[3] / 1e6, va[3] / 1e6),
            "{total} = {got}, file {} .. {} µs",
            vb[3],
            va[3]
        );
        let ratio = format!("{base}_{resource}_{what}_ratio");
        for (i, window) in ["10s", "60s", "300s"].iter().enumerate() {
            let mut want = extra.to_vec();
            want.push(("window", window));
            let got = value(series, &ratio, &want).unwrap_or_else(|| panic!("{ratio} {window}"));
            assert!(
                between(got, vb[i] / 100.0, va[i] / 100.0),
                "{ratio}{{window={window}}} = {got}, file {} .. {}",
                vb[i],
                va[i]
            );
        }
    }
}

#[test]
fn pressure_host_matches_proc_pressure() {
    let agent = Agent::start("pressure-host", &[plugin_wasm("pressure")], "");
    agent.wait_state("pressure", "running", Duration::from_secs(30));
    // Some load, so that the cpu and io totals move between scrapes.
    let first = parse_exposition(&agent.metrics());
    let burner = std::thread::spawn(|| {
        let end = std::time::Instant::now() + Duration::from_millis(300);
        let mut x = 0u64;
        while std::time::Instant::now() < end {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        x
    });
    burner.join().unwrap();
    let before: Vec<String> = RESOURCES
        .iter()
        .map(|r| read(&format!("/proc/pressure/{r}")))
        .collect();
    let metrics = agent.metrics();
    let after: Vec<String> = RESOURCES
        .iter()
        .map(|r| read(&format!("/proc/pressure/{r}")))
        .collect();
    let series = parse_exposition(&metrics);
    for (i, resource) in RESOURCES.iter().enumerate() {
        check_psi(
            &series,
            "kpulse_pressure",
            resource,
            &[],
            &before[i],
            &after[i],
        );
    }
    // A counter: never backwards between scrapes.
    let name = "kpulse_pressure_cpu_waiting_seconds_total";
    assert!(value(&series, name, &[]) >= value(&first, name, &[]));
    assert_eq!(
        value(&series, "kpulse_pressure_malformed_lines_total", &[]),
        Some(0.0)
    );
}

#[test]
fn pressure_of_a_real_container_and_of_a_recorded_v2_cgroup() {
    let runtimes = Runtimes::get();
    let ctr = runtimes.ctr_run("kptest", "kp-psi", &[], &[], "while :; do :; done");
    let pid = wait_for(Duration::from_secs(30), "the container's pid", || {
        let pid = ctr.pid();
        (pid > 0).then_some(pid)
    });
    let cgroup = read(&format!("/proc/{pid}/cgroup"));
    let path = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a unified (v2) line in /proc/<pid>/cgroup")
        .to_owned();
    let v2_dir = format!("/sys/fs/cgroup/unified{path}");
    assert!(
        Path::new(&format!("{v2_dir}/cpu.pressure")).exists(),
        "{v2_dir}/cpu.pressure: the runtime made no v2 cgroup"
    );
    let labels = [("container_name", "kp-psi")];

    // Real: the container's own v2 pressure files.
    let config = runtimes.agent_config("");
    let agent = Agent::start("pressure-ctr", &[plugin_wasm("pressure")], &config);
    agent.wait_state("pressure", "running", Duration::from_secs(30));
    let base = "kpulse_pressure_container";
    let (before, series, after) = wait_for(
        Duration::from_secs(30),
        "the container's pressure series",
        || {
            let before: Vec<String> = RESOURCES
                .iter()
                .map(|r| read(&format!("{v2_dir}/{r}.pressure")))
                .collect();
            let series = parse_exposition(&agent.metrics());
            let after: Vec<String> = RESOURCES
                .iter()
                .map(|r| read(&format!("{v2_dir}/{r}.pressure")))
                .collect();
            value(
                &series,
                &format!("{base}_cpu_waiting_seconds_total"),
                &labels,
            )
            .map(|_| (before, series, after))
        },
    );
    for (i, resource) in RESOURCES.iter().enumerate() {
        check_psi(&series, base, resource, &labels, &before[i], &after[i]);
    }
    drop(agent);

    // Recorded: the fixture's v2 files copied under the container's path of a cgroup root.
    let fixture = root().join("tests/fixtures/roots/node1/cgroup-v2-container");
    let cgroups = kpulse_integration_tests::scratch_dir("pressure-fixture-cgroup");
    let dir = cgroups.join(format!("unified{path}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cgroup.procs"), format!("{pid}\n")).unwrap();
    for resource in RESOURCES {
        let file = format!("{resource}.pressure");
        std::fs::copy(fixture.join(&file), dir.join(&file)).unwrap();
    }
    let config = format!(
        "[policy]\ncgroup_root = {:?}\n{}",
        cgroups.display().to_string(),
        runtimes.agent_config("")
    );
    let agent = Agent::start("pressure-ctr-fixture", &[plugin_wasm("pressure")], &config);
    agent.wait_state("pressure", "running", Duration::from_secs(30));
    let series = wait_for(Duration::from_secs(30), "the recorded series", || {
        let series = parse_exposition(&agent.metrics());
        value(
            &series,
            &format!("{base}_cpu_waiting_seconds_total"),
            &labels,
        )
        .is_some()
        .then_some(series)
    });
    for resource in RESOURCES {
        let text = read(
            fixture
                .join(format!("{resource}.pressure"))
                .to_str()
                .unwrap(),
        );
        check_psi(&series, base, resource, &labels, &text, &text);
    }
    assert_eq!(
        value(
            &series,
            &format!("{base}_io_stalled_seconds_total"),
            &labels
        ),
        Some(44.0)
    );
}

/// `df -B1` of `point`: `(size, avail, inodes, free inodes)` in bytes and inodes.
fn df(point: &str) -> [f64; 4] {
    let out = run("df", &["-B1", "--output=size,avail,itotal,iavail", point]);
    let line = out.lines().nth(1).expect("a df line");
    let v: Vec<f64> = line
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    [v[0], v[1], v[2], v[3]]
}

#[test]
fn filesystem_matches_df_and_follows_a_read_only_remount() {
    let scratch = kpulse_integration_tests::scratch_dir("filesystem-ext4");
    let fs = LoopFs::make(&scratch, &["mkfs.ext4", "-q", "-F"], 64);
    let agent = Agent::start("filesystem", &[plugin_wasm("filesystem")], "");
    agent.wait_state("filesystem", "running", Duration::from_secs(30));
    let labels = [("mountpoint", fs.point())];
    let series = wait_for(Duration::from_secs(30), "the loop mount's series", || {
        let s = parse_exposition(&agent.metrics());
        value(&s, "kpulse_filesystem_size_bytes", &labels).map(|_| s)
    });
    // The quiet loop filesystem: exactly df's figures.
    let [size, avail, files, files_free] = df(fs.point());
    let get = |name: &str| value(&series, name, &labels).unwrap_or_else(|| panic!("{name}"));
    assert_eq!(get("kpulse_filesystem_size_bytes"), size);
    assert_eq!(get("kpulse_filesystem_avail_bytes"), avail);
    assert_eq!(get("kpulse_filesystem_files"), files);
    assert_eq!(get("kpulse_filesystem_files_free"), files_free);
    assert_eq!(get("kpulse_filesystem_readonly"), 0.0);
    assert_eq!(get("kpulse_filesystem_device_error"), 0.0);
    let full = [
        ("mountpoint", fs.point()),
        ("device", fs.device.as_str()),
        ("fstype", "ext4"),
    ];
    assert!(value(&series, "kpulse_filesystem_free_bytes", &full).is_some());
    // free ≥ avail: free includes root's reserve.
    assert!(get("kpulse_filesystem_free_bytes") >= avail);

    // `/`, which moves: between two df reads around the scrape.
    let before = df("/");
    let series = parse_exposition(&agent.metrics());
    let after = df("/");
    let root = [("mountpoint", "/")];
    assert_eq!(
        value(&series, "kpulse_filesystem_size_bytes", &root),
        Some(before[0])
    );
    let got = value(&series, "kpulse_filesystem_avail_bytes", &root).unwrap();
    assert!(
        between(got, before[1], after[1]),
        "/ avail {got}: df {} .. {}",
        before[1],
        after[1]
    );
    let got = value(&series, "kpulse_filesystem_files_free", &root).unwrap();
    assert!(between(got, before[3], after[3]), "/ files_free {got}");

    // node_exporter's default exclusions.
    for (label, excluded) in [
        ("mountpoint", "/proc"),
        ("mountpoint", "/sys"),
        ("fstype", "sysfs"),
        ("fstype", "proc"),
    ] {
        assert!(
            value(
                &series,
                "kpulse_filesystem_size_bytes",
                &[(label, excluded)]
            )
            .is_none(),
            "{label}={excluded} is excluded by default"
        );
    }

    // Read-only remount flips readonly to 1.
    run("mount", &["-o", "remount,ro", fs.point()]);
    wait_for(Duration::from_secs(30), "readonly to become 1", || {
        let s = parse_exposition(&agent.metrics());
        (value(&s, "kpulse_filesystem_readonly", &labels) == Some(1.0)).then_some(())
    });
}

/// The named values of an XFS stats file: `(line, field)` → value.
fn xfs_stat(text: &str, line: &str, field: usize) -> f64 {
    text.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == line).then(|| f.nth(field)?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {line}[{field}] in {text}"))
}

/// HUATUO's dashboard names and where they come from.
const XFS_SERIES: [(&str, &str, usize); 11] = [
    ("huatuo_bamai_xfs_alloc_extents_total", "extent_alloc", 0),
    ("huatuo_bamai_xfs_alloc_blocks_total", "extent_alloc", 1),
    ("huatuo_bamai_xfs_buf_locked_waited_total", "buf", 3),
    ("huatuo_bamai_xfs_buf_busy_locked_total", "buf", 4),
    ("huatuo_bamai_xfs_inode_attempts_total", "ig", 0),
    ("huatuo_bamai_xfs_inode_missed_total", "ig", 3),
    ("huatuo_bamai_xfs_log_space_sleep_total", "push_ail", 1),
    ("huatuo_bamai_xfs_write_calls_total", "rw", 0),
    ("huatuo_bamai_xfs_read_calls_total", "rw", 1),
    ("huatuo_bamai_xfs_written_bytes_total", "xpc", 1),
    ("huatuo_bamai_xfs_read_bytes_total", "xpc", 2),
];

#[test]
fn xfs_counters_follow_writes_on_a_loop_mounted_xfs() {
    let scratch = kpulse_integration_tests::scratch_dir("xfs-loop");
    let fs = LoopFs::make(&scratch, &["mkfs.xfs", "-q", "-f"], 320);
    let stats = format!("/sys/fs/xfs/{}/stats/stats", fs.name());
    let agent = Agent::start("xfs", &[plugin_wasm("xfs")], HUATUO);
    agent.wait_state("xfs", "running", Duration::from_secs(30));
    let device = [("device", fs.name())];
    let scrape = || parse_exposition(&agent.metrics());
    let first = wait_for(Duration::from_secs(30), "the device's series", || {
        let s = scrape();
        value(&s, "huatuo_bamai_xfs_write_calls_total", &device).map(|_| s)
    });

    // 64 write(2) calls of 64 KiB, fsync, then 16 read(2) calls of the first MiB.
    let file = fs.dir.join("data");
    let mut f = std::fs::File::create(&file).unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    for _ in 0..64 {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
    let mut f = std::fs::File::open(&file).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..16 {
        f.read_exact(&mut buf).unwrap();
    }

    let before = read(&stats);
    let series = scrape();
    let after = read(&stats);
    for (name, line, field) in XFS_SERIES {
        let got = value(&series, name, &device).unwrap_or_else(|| panic!("{name} missing"));
        let (b, a) = (
            xfs_stat(&before, line, field),
            xfs_stat(&after, line, field),
        );
        assert!(between(got, b, a), "{name} = {got}, file {b} .. {a}");
    }
    let moved =
        |name: &str| value(&series, name, &device).unwrap() - value(&first, name, &device).unwrap();
    assert!(moved("huatuo_bamai_xfs_write_calls_total") >= 64.0);
    assert!(moved("huatuo_bamai_xfs_read_calls_total") >= 16.0);
    assert!(moved("huatuo_bamai_xfs_written_bytes_total") >= 4.0 * 1024.0 * 1024.0);
    assert!(moved("huatuo_bamai_xfs_read_bytes_total") >= 1024.0 * 1024.0);
    assert!(moved("huatuo_bamai_xfs_alloc_blocks_total") > 0.0);
}

#[test]
fn recorded_roots_feed_pressure_and_two_xfs_devices() {
    let node = root().join("tests/fixtures/roots/node1");
    let config = format!(
        "[policy]\nproc_root = {:?}\nsys_root = {:?}\n",
        node.join("proc").display().to_string(),
        node.join("sys").display().to_string()
    );
    let agent = Agent::start(
        "fixture-roots",
        &[plugin_wasm("pressure"), plugin_wasm("xfs")],
        &config,
    );
    agent.wait_state("pressure", "running", Duration::from_secs(30));
    agent.wait_state("xfs", "running", Duration::from_secs(30));
    let series = wait_for(Duration::from_secs(30), "the recorded series", || {
        let s = parse_exposition(&agent.metrics());
        value(&s, "kpulse_xfs_write_calls_total", &[("device", "dm-3")]).map(|_| s)
    });
    for resource in RESOURCES {
        let text = read(
            node.join(format!("proc/pressure/{resource}"))
                .to_str()
                .unwrap(),
        );
        check_psi(&series, "kpulse_pressure", resource, &[], &text, &text);
    }
    assert_eq!(
        value(&series, "kpulse_pressure_cpu_waiting_seconds_total", &[]),
        Some(2430.060834)
    );
    for dev in ["sdb1", "dm-3"] {
        let text = read(
            node.join(format!("sys/fs/xfs/{dev}/stats/stats"))
                .to_str()
                .unwrap(),
        );
        for (name, line, field) in XFS_SERIES {
            let name = name.replace("huatuo_bamai_", "kpulse_");
            assert_eq!(
                value(&series, &name, &[("device", dev)]),
                Some(xfs_stat(&text, line, field)),
                "{name}{{device={dev}}}"
            );
        }
    }
    // The global stats directory is not a device.
    assert!(
        value(
            &series,
            "kpulse_xfs_write_calls_total",
            &[("device", "stats")]
        )
        .is_none()
    );
}

#[test]
fn statfs_is_refused_without_the_capability() {
    let agent = Agent::start("statfs-refused", &[guest_wasm("statfs_probe")], "");
    agent.wait_state("statfs_probe", "running", Duration::from_secs(30));
    let metrics = agent.metrics();
    let series = parse_exposition(&metrics);
    assert_eq!(
        value(&series, "kpulse_statfs_probe_mounts_denied", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(&series, "kpulse_statfs_probe_statfs_denied", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(&series, "kpulse_statfs_probe_mounts_listed", &[]),
        Some(0.0)
    );
    let denied = value(
        &series,
        "kpulse_plugin_denied_reads_total",
        &[("plugin", "statfs_probe")],
    )
    .expect("the refusals are counted");
    assert!(denied >= 2.0, "denied reads {denied}");

    // Declared but not allowed by policy: the filesystem plugin's update fails, no series.
    let agent = Agent::start(
        "statfs-policy",
        &[plugin_wasm("filesystem")],
        "[policy]\nstatfs_allow = [\"someone_else\"]\n",
    );
    agent.wait_state("filesystem", "running", Duration::from_secs(30));
    let series = parse_exposition(&agent.metrics());
    assert!(!series.contains_key("kpulse_filesystem_size_bytes"));
    assert!(
        value(
            &series,
            "kpulse_plugin_denied_reads_total",
            &[("plugin", "filesystem")]
        )
        .is_some_and(|v| v >= 1.0)
    );
}
