//! The document of one capture, HUATUO's `IOTracingData` layout, from the maps and records
//! of `iotracing.bpf.o`.

use std::collections::BTreeMap;

use kpulse_sdk::records::{self, IoschedEvent, IotFileKey, IotFileStat, IotPath};
use serde::Serialize;

use crate::diskstats::{IoStatus, Trigger};

/// `tracer_data` of an `iotracing` document.
#[derive(Debug, Serialize)]
pub struct Document {
    pub reason_snapshot: ReasonSnapshot,
    pub process_file_io_stats: Vec<ProcessIo>,
    pub io_schedule_timeout_stacks: Vec<IoScheduleStack>,
    /// kpulse addition: how the capture ran.
    pub capture: Capture,
}

#[derive(Debug, Serialize)]
pub struct ReasonSnapshot {
    /// `await` (r_await or w_await over `await_threshold`) or `util` (util over
    /// `util_threshold`, for NVMe together with a bandwidth threshold).
    #[serde(rename = "type")]
    pub kind: String,
    pub device: String,
    pub major_num: u32,
    pub minor_num: u32,
    /// The second of the two consecutive samples over the threshold.
    pub iostatus: IoStatus,
    pub summary: String,
}

impl ReasonSnapshot {
    pub fn new(t: &Trigger) -> Self {
        ReasonSnapshot {
            kind: t.over.kind.to_owned(),
            device: t.device.clone(),
            major_num: t.major,
            minor_num: t.minor,
            iostatus: t.status.clone(),
            summary: t.over.summary.clone(),
        }
    }
}

/// One process's IO during the capture. Rates are bytes per second over the capture.
#[derive(Debug, Serialize)]
pub struct ProcessIo {
    /// Process id (tgid).
    pub pid: u32,
    /// comm of the thread that first did IO of this process in the capture.
    pub comm: String,
    /// Hostname of the process's container; "" on the host or without the `containers`
    /// capability.
    pub container_hostname: String,
    pub total_fs_read_bps: u64,
    pub total_fs_write_bps: u64,
    pub total_disk_read_bps: u64,
    pub total_disk_write_bps: u64,
    /// The busiest files, at most `max_files_per_process`.
    pub total_files: Vec<FileIo>,
    /// Files this process did IO on (before the `max_files_per_process` cut).
    pub total_file_count: usize,
}

#[derive(Debug, Serialize)]
pub struct FileIo {
    /// Device of the file's filesystem.
    pub major: u32,
    pub minor: u32,
    /// Its name in `/proc/diskstats`; "" if it is not listed there.
    pub dev_name: String,
    pub inode: u64,
    /// Mount point + the file's dentry names (at most 4, each at most 47 bytes); a path
    /// that starts with `.../` was cut at that depth. Hard links: one of the names.
    pub path: String,
    /// Some of the process's IO on the file was direct IO (iomap).
    pub is_direct: bool,
    /// Bytes the process asked the filesystem for: direct IO sizes, ext4 buffered write
    /// sizes, and buffered reads rounded up to whole pages (`mm_filemap_get_pages` gives
    /// page indexes). Buffered writes of other filesystems are not seen (0).
    pub fs_read_bps: u64,
    pub fs_write_bps: u64,
    /// Bytes of the block requests completed for this file whose first bio this process
    /// queued. Writeback goes to the flusher thread that submits it, and a bio that
    /// blk-throttle held back to the kworker that releases it (`block_bio_queue` fires
    /// after the throttle).
    pub disk_read_bps: u64,
    pub disk_write_bps: u64,
    /// Average bio queued (`block_bio_queue`) → request completed, µs.
    pub q2c_us: u64,
    /// Average request issued to the driver (`block_rq_issue`) → completed, µs.
    pub d2c_us: u64,
    pub max_q2c_us: u64,
    pub max_d2c_us: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IoScheduleStack {
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// CPU it went to sleep on.
    pub cpu: u32,
    pub comm: String,
    pub container_hostname: String,
    /// Switch-out in `io_schedule()` → switch-in, µs (sleep plus run-queue wait).
    pub schedule_latency_us: u64,
    /// Kernel stack as it slept, innermost first, `function+0xoff`.
    pub stack: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Capture {
    /// Time the programs were attached, ms.
    pub duration_ms: u64,
    /// Time loading and attaching the programs took, ms.
    pub attach_ms: u64,
    /// Only sleeps at least this long have a stack, ms.
    pub schedule_threshold_ms: u64,
    /// Long io_schedule sleeps seen, including those beyond `max_stacks`.
    pub schedule_waits: u64,
    /// Sleeps not reported: rate-limited or lost to a full ring buffer.
    pub schedule_waits_dropped: u64,
}

/// Per-process totals before the cut to the top processes.
struct ProcessAcc {
    comm: String,
    fs_read: u64,
    fs_write: u64,
    disk_read: u64,
    disk_write: u64,
    files: Vec<(IotFileKey, IotFileStat)>,
}

/// Kernel `dev_t` → (major, minor).
pub fn dev_parts(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & 0xf_ffff)
}

/// `/` joined dentry names, outermost first, under `mount` (the mount point of the file's
/// filesystem, "" if unknown).
pub fn path_of(p: &IotPath, mount: &str) -> String {
    let depth = (p.depth as usize).min(p.name.len());
    let names: Vec<String> = p.name[..depth]
        .iter()
        .rev()
        .map(|n| records::c_str(n))
        .collect();
    let rel = names.join("/");
    if p.complete == 0 {
        return format!(".../{rel}");
    }
    format!("{}/{rel}", mount.trim_end_matches('/'))
}

/// Mount points by device from a `mountinfo` text: the first mount of each device's
/// filesystem root (`root` field `/`).
pub fn mount_points(mountinfo: &str) -> BTreeMap<(u32, u32), String> {
    let mut out = BTreeMap::new();
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (Some(dev), Some(&"/"), Some(mount)) = (f.get(2), f.get(3), f.get(4)) else {
            continue;
        };
        let Some((major, minor)) = dev.split_once(':') else {
            continue;
        };
        if let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) {
            out.entry((major, minor))
                .or_insert_with(|| unescape_mount(mount));
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(o)) => {
                out.push((o[0] - b'0') * 64 + (o[1] - b'0') * 8 + (o[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What `process_file_io_stats` needs besides the map contents.
pub struct Context<'a> {
    pub secs: f64,
    pub max_process: usize,
    pub max_files_per_process: usize,
    /// Device names by (major, minor).
    pub dev_names: &'a BTreeMap<(u32, u32), String>,
    pub mounts: &'a BTreeMap<(u32, u32), String>,
}

/// HUATUO's `process_file_io_stats` from the `file_stats` and `file_paths` entries: the
/// `max_process` processes with the most disk bytes (then fs bytes), each with its
/// `max_files_per_process` busiest files. `container_hostname` is left empty for the
/// caller.
pub fn processes(
    stats: Vec<(IotFileKey, IotFileStat)>,
    paths: &BTreeMap<(u32, u64), IotPath>,
    cx: &Context<'_>,
) -> Vec<ProcessIo> {
    let mut by_pid: BTreeMap<u32, ProcessAcc> = BTreeMap::new();
    for (key, st) in stats {
        let acc = by_pid.entry(key.tgid).or_insert_with(|| ProcessAcc {
            comm: st.comm_str(),
            fs_read: 0,
            fs_write: 0,
            disk_read: 0,
            disk_write: 0,
            files: Vec::new(),
        });
        acc.fs_read += st.fs_read_bytes;
        acc.fs_write += st.fs_write_bytes;
        acc.disk_read += st.disk_read_bytes;
        acc.disk_write += st.disk_write_bytes;
        if key.ino != 0 {
            acc.files.push((key, st));
        }
    }
    let mut procs: Vec<(u32, ProcessAcc)> = by_pid.into_iter().collect();
    let weight = |p: &ProcessAcc| (p.disk_read + p.disk_write, p.fs_read + p.fs_write);
    procs.sort_by(|a, b| weight(&b.1).cmp(&weight(&a.1)).then(a.0.cmp(&b.0)));
    procs.truncate(cx.max_process);
    let rate = |bytes: u64| (bytes as f64 / cx.secs.max(0.001)).round() as u64;
    procs
        .into_iter()
        .map(|(pid, mut acc)| {
            let file_weight = |s: &IotFileStat| {
                (
                    s.disk_read_bytes + s.disk_write_bytes,
                    s.fs_read_bytes + s.fs_write_bytes,
                )
            };
            acc.files
                .sort_by_key(|f| std::cmp::Reverse(file_weight(&f.1)));
            let total_file_count = acc.files.len();
            let total_files = acc
                .files
                .iter()
                .take(cx.max_files_per_process)
                .map(|(key, st)| file_io(key, st, paths, cx, &rate))
                .collect();
            ProcessIo {
                pid,
                comm: acc.comm,
                container_hostname: String::new(),
                total_fs_read_bps: rate(acc.fs_read),
                total_fs_write_bps: rate(acc.fs_write),
                total_disk_read_bps: rate(acc.disk_read),
                total_disk_write_bps: rate(acc.disk_write),
                total_files,
                total_file_count,
            }
        })
        .collect()
}

fn file_io(
    key: &IotFileKey,
    st: &IotFileStat,
    paths: &BTreeMap<(u32, u64), IotPath>,
    cx: &Context<'_>,
    rate: &dyn Fn(u64) -> u64,
) -> FileIo {
    let (major, minor) = dev_parts(key.dev);
    let avg_us = |sum: u64, n: u64| sum.checked_div(n).unwrap_or(0) / 1000;
    let mount = cx.mounts.get(&(major, minor)).map_or("", String::as_str);
    FileIo {
        major,
        minor,
        dev_name: cx
            .dev_names
            .get(&(major, minor))
            .cloned()
            .unwrap_or_default(),
        inode: key.ino,
        path: paths
            .get(&(key.dev, key.ino))
            .map(|p| path_of(p, mount))
            .unwrap_or_default(),
        is_direct: st.flags & records::KP_IOT_F_DIRECT != 0,
        fs_read_bps: rate(st.fs_read_bytes),
        fs_write_bps: rate(st.fs_write_bytes),
        disk_read_bps: rate(st.disk_read_bytes),
        disk_write_bps: rate(st.disk_write_bytes),
        q2c_us: avg_us(st.q2c_sum_ns, st.nr_q2c),
        d2c_us: avg_us(st.d2c_sum_ns, st.nr_d2c),
        max_q2c_us: st.max_q2c_ns / 1000,
        max_d2c_us: st.max_d2c_ns / 1000,
    }
}

/// One `KP_EV_IOSCHED` record, with its stack still as addresses.
#[derive(Debug, Clone)]
pub struct Wait {
    pub pid: u32,
    pub tid: u32,
    pub cpu: u32,
    pub comm: String,
    pub latency_ns: u64,
    pub stack: Vec<u64>,
}

pub fn decode_wait(bytes: &[u8]) -> Option<Wait> {
    let e = IoschedEvent::parse(bytes)?;
    if e.hdr.kind != records::KP_EV_IOSCHED {
        return None;
    }
    let depth = (e.stack_depth as usize).min(e.stack.len());
    Some(Wait {
        pid: e.hdr.tgid,
        tid: e.hdr.pid,
        cpu: e.sleep_cpu,
        comm: e.hdr.comm_str(),
        latency_ns: e.latency_ns,
        stack: e.stack[..depth].to_vec(),
    })
}

/// Keeps the `max` longest waits (ties: the earliest seen first).
pub fn keep_longest(waits: &mut Vec<Wait>, max: usize) {
    waits.sort_by_key(|w| std::cmp::Reverse(w.latency_ns));
    waits.truncate(max);
}

/// Drops the frames of the BPF program and the tracepoint glue above `__schedule` (the
/// stack is taken inside `sched_switch`); a stack without `__schedule` (hex) is unchanged.
pub fn from_schedule(mut stack: Vec<String>) -> Vec<String> {
    if let Some(at) = stack.iter().position(|f| f.starts_with("__schedule+")) {
        stack.drain(..at);
    }
    stack
}

/// Whether a symbolized stack went through `io_schedule()` / `io_schedule_timeout()`.
/// Unsymbolized stacks (hex, no `kallsyms` grant) are kept: `in_iowait` already means an
/// io_schedule sleep.
pub fn through_io_schedule(stack: &[String]) -> bool {
    let symbolized = stack.iter().any(|f| !f.starts_with("0x"));
    !symbolized || stack.iter().any(|f| f.starts_with("io_schedule"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a failed step should panic")]
mod tests {
    use super::*;

    fn name(s: &str) -> [u8; 48] {
        let mut n = [0u8; 48];
        n[..s.len()].copy_from_slice(s.as_bytes());
        n
    }

    #[test]
    fn paths_and_mounts() {
        let p = IotPath {
            depth: 2,
            complete: 1,
            name: [name("victim.dat"), name("sub"), [0; 48], [0; 48]],
        };
        assert_eq!(path_of(&p, "/mnt/x"), "/mnt/x/sub/victim.dat");
        assert_eq!(path_of(&p, "/"), "/sub/victim.dat");
        let cut = IotPath { complete: 0, ..p };
        assert_eq!(path_of(&cut, "/mnt"), ".../sub/victim.dat");
        let info = "22 1 254:0 / / rw - ext4 /dev/vda rw\n\
                    40 22 7:3 / /tmp/a\\040b rw - ext4 /dev/loop3 rw\n\
                    41 22 7:3 /sub /bind rw - ext4 /dev/loop3 rw\n";
        let m = mount_points(info);
        assert_eq!(m[&(254, 0)], "/");
        assert_eq!(m[&(7, 3)], "/tmp/a b");
        assert_eq!(dev_parts((7 << 20) | 3), (7, 3));
    }

    #[test]
    fn processes_ranked_with_their_files() {
        let dev = (7 << 20) | 3;
        let mut comm = [0u8; 16];
        comm[..2].copy_from_slice(b"dd");
        let stat = |disk_write, fs_write| IotFileStat {
            comm,
            disk_write_bytes: disk_write,
            fs_write_bytes: fs_write,
            q2c_sum_ns: 500_000_000,
            nr_q2c: 2,
            d2c_sum_ns: 400_000_000,
            nr_d2c: 2,
            max_q2c_ns: 300_000_000,
            max_d2c_ns: 250_000_000,
            disk_dev: dev,
            flags: records::KP_IOT_F_DIRECT,
            ..IotFileStat::default()
        };
        let key = |tgid, ino| IotFileKey { tgid, dev, ino };
        let stats = vec![
            (key(10, 12), stat(1 << 20, 1 << 20)),
            (key(10, 0), stat(4096, 0)),
            (key(20, 13), stat(4 << 20, 0)),
            (key(30, 14), stat(0, 4096)),
        ];
        let mut paths = BTreeMap::new();
        paths.insert(
            (dev, 12),
            IotPath {
                depth: 1,
                complete: 1,
                name: [name("victim.dat"), [0; 48], [0; 48], [0; 48]],
            },
        );
        let names = BTreeMap::from([((7, 3), "loop3".to_owned())]);
        let mounts = BTreeMap::from([((7, 3), "/mnt".to_owned())]);
        let cx = Context {
            secs: 2.0,
            max_process: 2,
            max_files_per_process: 5,
            dev_names: &names,
            mounts: &mounts,
        };
        let out = processes(stats, &paths, &cx);
        assert_eq!(out.iter().map(|p| p.pid).collect::<Vec<_>>(), [20, 10]);
        let dd = &out[1];
        assert_eq!(dd.comm, "dd");
        assert_eq!(dd.total_disk_write_bps, ((1 << 20) + 4096) / 2);
        assert_eq!(dd.total_fs_write_bps, (1 << 20) / 2);
        assert_eq!(dd.total_file_count, 1, "ino 0 is no file");
        let f = &dd.total_files[0];
        assert_eq!((f.major, f.minor, f.dev_name.as_str()), (7, 3, "loop3"));
        assert_eq!(
            (f.inode, f.path.as_str(), f.is_direct),
            (12, "/mnt/victim.dat", true)
        );
        assert_eq!((f.q2c_us, f.d2c_us), (250_000, 200_000));
        assert_eq!((f.max_q2c_us, f.max_d2c_us), (300_000, 250_000));
        assert_eq!(out[0].total_files[0].path, "", "no path recorded");
    }

    #[test]
    fn waits() {
        let mut e = IoschedEvent {
            latency_ns: 7_000_000,
            sleep_cpu: 1,
            stack_depth: 2,
            ..IoschedEvent::default()
        };
        e.hdr.kind = records::KP_EV_IOSCHED;
        (e.hdr.pid, e.hdr.tgid) = (43, 42);
        e.stack[..2].copy_from_slice(&[0xffff_1000, 0xffff_2000]);
        let w = decode_wait(&e.to_bytes()).unwrap();
        assert_eq!((w.pid, w.tid, w.cpu, w.stack.len()), (42, 43, 1, 2));
        assert!(decode_wait(&[0; 8]).is_none());
        let mut all = vec![
            w.clone(),
            Wait {
                latency_ns: 9,
                ..w.clone()
            },
            w,
        ];
        keep_longest(&mut all, 2);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].latency_ns, 7_000_000);
        let stack = |f: &[&str]| f.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(through_io_schedule(&stack(&[
            "__schedule+0x1",
            "io_schedule+0x4"
        ])));
        assert!(!through_io_schedule(&stack(&[
            "__schedule+0x1",
            "mutex_lock_io+0x4"
        ])));
        assert!(through_io_schedule(&stack(&["0xffff1000"])));
        assert_eq!(
            from_schedule(stack(&[
                "_einittext+0x3c",
                "bpf_trace_run4+0xfc",
                "__schedule+0x618",
                "io_schedule+0x4"
            ])),
            stack(&["__schedule+0x618", "io_schedule+0x4"])
        );
        assert_eq!(
            from_schedule(stack(&["0x1", "0x2"])),
            stack(&["0x1", "0x2"])
        );
    }
}
