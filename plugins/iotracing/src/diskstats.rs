//! Per-device IO status between two samples of `/proc/diskstats` (iostat's arithmetic) and
//! HUATUO's trigger: a device over a threshold in two consecutive samples.

use std::collections::BTreeMap;

use kpulse_sdk::procfs::DiskStat;
use serde::Serialize;

/// `/proc/diskstats` counts 512-byte sectors whatever the device's block size.
const SECTOR_BYTES: f64 = 512.0;
/// HUATUO's `RbpsThreshold` / `WbpsThreshold` are in MB/s of 2^20 bytes.
pub const MB: f64 = 1024.0 * 1024.0;

/// HUATUO's `iostatus`: one device over one sampling interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IoStatus {
    /// Bytes read per second.
    pub read_bps: f64,
    /// Reads completed per second.
    pub read_iops: f64,
    /// Average time of a read completed in the interval (queue + service), ms (iostat
    /// `r_await`); 0 without reads.
    pub read_await: f64,
    pub write_bps: f64,
    pub write_iops: f64,
    /// iostat `w_await`, ms.
    pub write_await: f64,
    /// Share of the interval the device was busy, percent (iostat `%util`).
    pub io_util: f64,
    /// Average number of requests in flight (iostat `aqu-sz`).
    pub queue_size: f64,
}

/// `IoStatus` of `now` against `prev`, `elapsed_ms` apart. `None` when the device did no IO
/// in the interval (HUATUO skips those), when no time passed, or when a counter went
/// backwards (the device was re-created).
pub fn io_status(prev: &DiskStat, now: &DiskStat, elapsed_ms: f64) -> Option<IoStatus> {
    if elapsed_ms <= 0.0 {
        return None;
    }
    let d = |a: u64, b: u64| b.checked_sub(a);
    let reads = d(prev.reads, now.reads)?;
    let writes = d(prev.writes, now.writes)?;
    let io_ms = d(prev.io_ms, now.io_ms)?;
    if reads == 0 && writes == 0 && io_ms == 0 {
        return None;
    }
    let sectors_read = d(prev.sectors_read, now.sectors_read)?;
    let sectors_written = d(prev.sectors_written, now.sectors_written)?;
    let read_ms = d(prev.read_ms, now.read_ms)?;
    let write_ms = d(prev.write_ms, now.write_ms)?;
    let weighted_ms = d(prev.weighted_io_ms, now.weighted_io_ms)?;
    let secs = elapsed_ms / 1000.0;
    let avg = |ms: u64, n: u64| if n == 0 { 0.0 } else { ms as f64 / n as f64 };
    Some(IoStatus {
        read_bps: sectors_read as f64 * SECTOR_BYTES / secs,
        read_iops: reads as f64 / secs,
        read_await: avg(read_ms, reads),
        write_bps: sectors_written as f64 * SECTOR_BYTES / secs,
        write_iops: writes as f64 / secs,
        write_await: avg(write_ms, writes),
        io_util: (io_ms as f64 * 100.0 / elapsed_ms).min(100.0),
        queue_size: weighted_ms as f64 / elapsed_ms,
    })
}

/// HUATUO's thresholds (`[AutoTracing.IOTracing]`).
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Percent.
    pub util: f64,
    /// MB/s (NVMe only, together with `util`).
    pub rbps: f64,
    pub wbps: f64,
    /// ms, r_await or w_await.
    pub await_ms: f64,
}

/// Why a sample is over a threshold: HUATUO's `reason_snapshot.type` and a human summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Over {
    pub kind: &'static str,
    pub summary: String,
}

/// Whether one sample of device `name` is over a threshold. Latency is checked first: a
/// slow device is the stronger signal.
pub fn over(name: &str, s: &IoStatus, t: &Thresholds) -> Option<Over> {
    let worst_await = s.read_await.max(s.write_await);
    if worst_await > t.await_ms {
        let (which, value) = if s.write_await >= s.read_await {
            ("w_await", s.write_await)
        } else {
            ("r_await", s.read_await)
        };
        return Some(Over {
            kind: "await",
            summary: format!("{name}: {which} {value:.1} ms > {} ms", t.await_ms),
        });
    }
    if s.io_util <= t.util {
        return None;
    }
    if !name.starts_with("nvme") {
        return Some(Over {
            kind: "util",
            summary: format!("{name}: util {:.1}% > {}%", s.io_util, t.util),
        });
    }
    let (rmb, wmb) = (s.read_bps / MB, s.write_bps / MB);
    (rmb > t.rbps || wmb > t.wbps).then(|| Over {
        kind: "util",
        summary: format!(
            "{name}: util {:.1}% > {}% with read {rmb:.0} MB/s (> {}) or write {wmb:.0} MB/s (> {})",
            s.io_util, t.util, t.rbps, t.wbps
        ),
    })
}

/// A device that was over a threshold in two consecutive samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub device: String,
    pub major: u32,
    pub minor: u32,
    pub status: IoStatus,
    pub over: Over,
}

/// Samples `/proc/diskstats` and counts consecutive samples over a threshold per device.
#[derive(Debug, Default)]
pub struct Watcher {
    prev: BTreeMap<String, DiskStat>,
    prev_ms: Option<f64>,
    consecutive: BTreeMap<String, u32>,
    /// Every device of the last sample, watched or not, for naming files' devices.
    names: BTreeMap<(u32, u32), String>,
}

/// How many consecutive samples over a threshold fire (HUATUO: two).
pub const CONSECUTIVE: u32 = 2;

impl Watcher {
    /// Feeds one sample taken at `now_ms` (monotonic). `devices` limits the watch to these
    /// names (empty: every device). Returns the first device that fired, with the most
    /// consecutive samples over; `md*` devices are never watched, as in HUATUO.
    pub fn sample(
        &mut self,
        disks: Vec<DiskStat>,
        now_ms: f64,
        devices: &[String],
        t: &Thresholds,
    ) -> Option<Trigger> {
        let elapsed = self.prev_ms.replace(now_ms).map(|p| now_ms - p);
        let watched = |name: &str| {
            !name.starts_with("md") && (devices.is_empty() || devices.iter().any(|d| d == name))
        };
        self.names = disks
            .iter()
            .map(|d| ((d.major, d.minor), d.name.clone()))
            .collect();
        let mut fired: Option<(u32, Trigger)> = None;
        let mut next = BTreeMap::new();
        for disk in disks.into_iter().filter(|d| watched(&d.name)) {
            let status = elapsed.and_then(|ms| {
                let prev = self.prev.get(&disk.name)?;
                io_status(prev, &disk, ms)
            });
            let over = status.as_ref().and_then(|s| over(&disk.name, s, t));
            let count = self.consecutive.entry(disk.name.clone()).or_default();
            *count = if over.is_some() { *count + 1 } else { 0 };
            if let (Some(status), Some(over)) = (status, over)
                && *count >= CONSECUTIVE
                && fired.as_ref().is_none_or(|(c, _)| *count > *c)
            {
                fired = Some((
                    *count,
                    Trigger {
                        device: disk.name.clone(),
                        major: disk.major,
                        minor: disk.minor,
                        status,
                        over,
                    },
                ));
            }
            next.insert(disk.name.clone(), disk);
        }
        self.consecutive.retain(|name, _| next.contains_key(name));
        self.prev = next;
        fired.map(|(_, trigger)| trigger)
    }

    /// Forgets the consecutive counts (after a capture: the next one needs two new samples).
    pub fn reset(&mut self) {
        self.consecutive.clear();
    }

    /// Device names by kernel `(major, minor)`, from the last sample (every device).
    pub fn names(&self) -> &BTreeMap<(u32, u32), String> {
        &self.names
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a failed step should panic")]
mod tests {
    use super::*;
    use kpulse_sdk::procfs;

    const T: Thresholds = Thresholds {
        util: 90.0,
        rbps: 2000.0,
        wbps: 1500.0,
        await_ms: 100.0,
    };

    fn disk(line: &str) -> DiskStat {
        procfs::parse_diskstats(line).0.remove(0)
    }

    #[test]
    fn iostat_arithmetic() {
        // 1 s: 4 writes of 256 KiB taking 1000 ms in all, busy 990 ms, weighted 1000 ms.
        let a = disk("7 0 loop0 10 0 80 5 100 0 1000 50 0 200 300 0 0 0 0");
        let b = disk("7 0 loop0 10 0 80 5 104 0 3048 1050 1 1190 1300 0 0 0 0");
        let s = io_status(&a, &b, 1000.0).unwrap();
        assert_eq!(s.write_iops, 4.0);
        assert_eq!(s.write_bps, 2048.0 * 512.0);
        assert_eq!(s.write_await, 250.0);
        assert_eq!((s.read_iops, s.read_await, s.read_bps), (0.0, 0.0, 0.0));
        assert_eq!(s.io_util, 99.0);
        assert_eq!(s.queue_size, 1.0);
        assert_eq!(io_status(&a, &a, 1000.0), None, "no IO: skipped");
        assert_eq!(io_status(&b, &a, 1000.0), None, "counters went backwards");
    }

    #[test]
    fn thresholds() {
        let slow = IoStatus {
            write_await: 250.0,
            ..IoStatus::default()
        };
        assert_eq!(over("loop0", &slow, &T).unwrap().kind, "await");
        let busy = IoStatus {
            io_util: 95.0,
            ..IoStatus::default()
        };
        assert_eq!(over("sda", &busy, &T).unwrap().kind, "util");
        assert_eq!(over("nvme0n1", &busy, &T), None, "NVMe needs bandwidth too");
        let fast = IoStatus {
            write_bps: 1600.0 * MB,
            ..busy
        };
        assert!(over("nvme0n1", &fast, &T).is_some());
        assert_eq!(over("sda", &IoStatus::default(), &T), None);
    }

    #[test]
    fn two_consecutive_samples_fire() {
        let lines = [
            "7 0 loop0 0 0 0 0 100 0 1000 50 0 200 300 0 0 0 0\n9 0 md0 0 0 0 0 0 0 0 0 0 0 0",
            // slow
            "7 0 loop0 0 0 0 0 104 0 3048 1050 1 1190 1300 0 0 0 0\n9 0 md0 0 0 0 0 0 0 0 0 0 0 0",
            // idle: resets the count
            "7 0 loop0 0 0 0 0 104 0 3048 1050 0 1190 1300 0 0 0 0",
            "7 0 loop0 0 0 0 0 108 0 5096 2050 1 2180 2300 0 0 0 0",
            "7 0 loop0 0 0 0 0 112 0 7144 3050 1 3170 3300 0 0 0 0",
        ];
        let mut w = Watcher::default();
        let fired: Vec<Option<Trigger>> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| w.sample(procfs::parse_diskstats(l).0, i as f64 * 1000.0, &[], &T))
            .collect();
        assert!(fired[..4].iter().all(Option::is_none), "{fired:?}");
        let t = fired[4].as_ref().unwrap();
        assert_eq!((t.device.as_str(), t.major, t.minor), ("loop0", 7, 0));
        assert_eq!(t.status.write_await, 250.0);
        assert_eq!(t.over.kind, "await");
        // A device filter that excludes it never fires.
        let mut w = Watcher::default();
        let only = ["vda".to_owned()];
        assert!(lines.iter().enumerate().all(|(i, l)| {
            w.sample(procfs::parse_diskstats(l).0, i as f64 * 1000.0, &only, &T)
                .is_none()
        }));
    }
}
