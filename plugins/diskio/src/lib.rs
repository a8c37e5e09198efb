//! `diskio`: per-device I/O counters from `/proc/diskstats` and the host's iowait share from
//! `/proc/stat`, under HUATUO's names and labels (`huatuo_bamai_diskio_read_bytes_total{device}`
//! with `prefix = "huatuo_bamai"`).
//!
//! | series | kind | from |
//! |---|---|---|
//! | `read_requests_total`, `write_requests_total` | counter | reads/writes completed |
//! | `read_bytes_total`, `written_bytes_total` | counter | sectors × 512 |
//! | `read_time_seconds_total`, `write_time_seconds_total` | counter | ms spent by completed reads/writes |
//! | `io_time_seconds_total`, `io_time_weighted_seconds_total` | counter | ms doing I/O, weighted ms |
//! | `io_in_progress` | gauge | I/Os in flight |
//! | `disk_iowait_percent` (no `device`) | gauge | iowait ticks / all ticks between two scrapes × 100 |
//!
//! Every device line is reported (partitions, loop, dm and md devices too), as in HUATUO.
//! Lines that are not a device line are skipped and counted in `malformed_lines_total`.
//! HUATUO lists `diskio` in its shipped `BlackList`; here it is loaded like any plugin
//! (put it in `denylist` to keep it off). It has no container-level series.

use kpulse_sdk::prelude::*;
use kpulse_sdk::procfs::{CpuTimes, DiskStat};

/// `/proc/diskstats` counts 512-byte sectors whatever the device's block size.
const SECTOR_BYTES: f64 = 512.0;

#[derive(Default)]
struct Diskio {
    last_cpu: Option<CpuTimes>,
    iowait_percent: Option<f64>,
    malformed: u64,
}

kpulse_sdk::register!(Diskio {
    name: "diskio",
    kinds: [metric],
    capabilities: ["read:/proc/diskstats", "read:/proc/stat"],
    summary: "Per-device I/O counters from /proc/diskstats and the host iowait percentage",
});

fn device_metrics(d: &DiskStat) -> [Metric; 9] {
    let counter =
        |name, value: f64, help| metric::counter(name, value, help).label("device", &d.name);
    let ms = |v: u64| v as f64 / 1000.0;
    [
        counter(
            "read_requests",
            d.reads as f64,
            "Read requests completed successfully.",
        ),
        counter(
            "write_requests",
            d.writes as f64,
            "Write requests completed successfully.",
        ),
        counter(
            "read_bytes",
            d.sectors_read as f64 * SECTOR_BYTES,
            "Bytes read from the device.",
        ),
        counter(
            "written_bytes",
            d.sectors_written as f64 * SECTOR_BYTES,
            "Bytes written to the device.",
        ),
        counter(
            "read_time_seconds",
            ms(d.read_ms),
            "Seconds spent by completed read requests.",
        ),
        counter(
            "write_time_seconds",
            ms(d.write_ms),
            "Seconds spent by completed write requests.",
        ),
        counter("io_time_seconds", ms(d.io_ms), "Seconds spent doing I/Os."),
        counter(
            "io_time_weighted_seconds",
            ms(d.weighted_io_ms),
            "Weighted seconds spent doing I/Os.",
        ),
        metric::gauge(
            "io_in_progress",
            d.in_progress as f64,
            "I/O requests currently in flight.",
        )
        .label("device", &d.name),
    ]
}

/// iowait between two samples in percent; `None` when no tick passed or a counter went
/// backwards.
fn iowait_percent(prev: &CpuTimes, now: &CpuTimes) -> Option<f64> {
    let all = now.total().checked_sub(prev.total()).filter(|&t| t > 0)?;
    let iowait = now.iowait.checked_sub(prev.iowait).filter(|&t| t <= all)?;
    Some(iowait as f64 * 100.0 / all as f64)
}

impl Diskio {
    fn collect(&mut self, diskstats: &str, cpu: Option<CpuTimes>) -> Vec<Metric> {
        let (disks, skipped) = procfs::parse_diskstats(diskstats);
        self.malformed += skipped;
        let mut out: Vec<Metric> = disks.iter().flat_map(device_metrics).collect();
        if let Some(now) = cpu
            && let Some(prev) = self.last_cpu.replace(now)
            && let Some(pct) = iowait_percent(&prev, &now)
        {
            self.iowait_percent = Some(pct);
        }
        if let Some(pct) = self.iowait_percent {
            out.push(metric::gauge(
                "disk_iowait_percent",
                pct,
                "CPU time spent waiting for I/O between the last two scrapes, percent.",
            ));
        }
        out.push(metric::counter(
            "malformed_lines",
            self.malformed as f64,
            "Lines of /proc/diskstats that did not parse and were skipped.",
        ));
        out
    }
}

impl Collector for Diskio {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let diskstats = fs::read_to_string("/proc/diskstats")?;
        // The device series do not depend on /proc/stat: keep them if it cannot be read.
        let cpu = match procfs::stat_cpu() {
            Ok(cpu) => Some(cpu),
            Err(err) => {
                log::debug(&format!("diskio: no iowait: {err}"));
                None
            }
        };
        Ok(self.collect(&diskstats, cpu))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISKSTATS: &str = "   8       0 sda 1000 200 50000 3000 2000 400 80000 6000 5 9000 15000 0 0 0 0\n   7 0 loop0 x\n";

    fn cpu(line: &str) -> Option<CpuTimes> {
        procfs::parse_stat_cpu(line).ok()
    }

    #[test]
    fn device_series_in_huatuo_units() {
        let mut p = Diskio::default();
        let out = p.collect(DISKSTATS, cpu("cpu  100 0 50 1000 10 0 0 0\n"));
        let get = |name: &str| out.iter().find(|m| m.name() == name).map(Metric::value);
        assert_eq!(get("read_bytes"), Some(50000.0 * 512.0));
        assert_eq!(get("write_time_seconds"), Some(6.0));
        assert_eq!(get("io_time_weighted_seconds"), Some(15.0));
        assert_eq!(get("io_in_progress"), Some(5.0));
        assert_eq!(get("malformed_lines"), Some(1.0));
        // The first scrape has no interval yet.
        assert_eq!(get("disk_iowait_percent"), None);
        assert!(
            out[0]
                .labels()
                .contains(&("device".to_owned(), "sda".to_owned()))
        );
    }

    #[test]
    fn iowait_over_the_interval() {
        let mut p = Diskio::default();
        p.collect("", cpu("cpu  100 0 50 1000 10 0 0 0\n"));
        // +100 ticks, +25 iowait
        let out = p.collect("", cpu("cpu  150 0 50 1025 35 0 0 0\n"));
        assert_eq!(out[0].name(), "disk_iowait_percent");
        assert_eq!(out[0].value(), 25.0);
        // No tick since: the last value stays.
        let out = p.collect("", cpu("cpu  150 0 50 1025 35 0 0 0\n"));
        assert_eq!(out[0].value(), 25.0);
    }
}
