//! `xfs`: per-device XFS counters from `/sys/fs/xfs/<device>/stats/stats`, under the names
//! HUATUO's Grafana dashboards query (`huatuo_bamai_xfs_alloc_blocks_total{device}` with
//! `prefix = "huatuo_bamai"`; HUATUO has the parser but no collector registers them).
//!
//! | series | kind | stats line, field |
//! |---|---|---|
//! | `alloc_extents_total`, `alloc_blocks_total` | counter | `extent_alloc` 1, 2 (extents, blocks allocated) |
//! | `buf_locked_waited_total`, `buf_busy_locked_total` | counter | `buf` 4, 5 (buffer lock waits, busy locked buffers) |
//! | `inode_attempts_total`, `inode_missed_total` | counter | `ig` 1, 4 (inode cache lookups, misses) |
//! | `log_space_sleep_total` | counter | `push_ail` 2 (sleeps waiting for log space) |
//! | `write_calls_total`, `read_calls_total` | counter | `rw` 1, 2 (node_exporter's names) |
//! | `written_bytes_total`, `read_bytes_total` | counter | `xpc` 2, 3 |
//!
//! `log_free_bytes`, also queried, has no source in sysfs (the log's size is not exported
//! there): it is not exported. Every directory of `/sys/fs/xfs` other than `stats` is a
//! mounted XFS device; without XFS (module not loaded: no `/sys/fs/xfs`) the plugin exports
//! only `malformed_lines_total`. A device unmounted between list and read is skipped.

use kpulse_sdk::prelude::*;

/// `(series, stats line, 0-based field, help)`.
const COUNTERS: [(&str, &str, usize, &str); 11] = [
    (
        "alloc_extents",
        "extent_alloc",
        0,
        "Extents allocated (extent_alloc).",
    ),
    (
        "alloc_blocks",
        "extent_alloc",
        1,
        "Blocks allocated (extent_alloc).",
    ),
    (
        "buf_locked_waited",
        "buf",
        3,
        "Buffer lookups that waited for the buffer lock.",
    ),
    (
        "buf_busy_locked",
        "buf",
        4,
        "Buffer lookups that found the buffer locked and busy.",
    ),
    ("inode_attempts", "ig", 0, "Inode cache lookup attempts."),
    ("inode_missed", "ig", 3, "Inode cache lookups that missed."),
    (
        "log_space_sleep",
        "push_ail",
        1,
        "Times a transaction slept waiting for log space.",
    ),
    ("write_calls", "rw", 0, "write(2) calls on the filesystem."),
    ("read_calls", "rw", 1, "read(2) calls on the filesystem."),
    ("written_bytes", "xpc", 1, "Bytes written by write calls."),
    ("read_bytes", "xpc", 2, "Bytes read by read calls."),
];

#[derive(Default)]
struct Xfs {
    malformed: u64,
    missing_logged: bool,
}

kpulse_sdk::register!(Xfs {
    name: "xfs",
    kinds: [metric],
    capabilities: ["read:/sys/fs/xfs"],
    summary: "Per-device XFS allocation, buffer, inode cache, log and read/write counters",
});

/// The series of one device's stats file; lines or fields missing are counted.
fn device_metrics(device: &str, text: &str, malformed: &mut u64) -> Vec<Metric> {
    let lines: Vec<(&str, Vec<u64>)> = text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?;
            let values: Option<Vec<u64>> = fields.map(|f| f.parse().ok()).collect();
            match values {
                Some(values) => Some((name, values)),
                None => {
                    *malformed += 1;
                    None
                }
            }
        })
        .collect();
    let mut out = Vec::new();
    for (series, line, field, help) in COUNTERS {
        let value = lines
            .iter()
            .find(|(name, _)| *name == line)
            .and_then(|(_, values)| values.get(field));
        match value {
            Some(v) => out.push(metric::counter(series, *v as f64, help).label("device", device)),
            None => *malformed += 1,
        }
    }
    out
}

impl Collector for Xfs {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mut out = Vec::new();
        match fs::read_dir("/sys/fs/xfs") {
            Ok(entries) => {
                for entry in entries.iter().filter(|e| e.name != "stats") {
                    let path = format!("/sys/fs/xfs/{}/stats/stats", entry.name);
                    match fs::read_to_string(&path) {
                        Ok(text) => {
                            out.extend(device_metrics(&entry.name, &text, &mut self.malformed))
                        }
                        // Unmounted since the listing.
                        Err(err) if err.is_not_found() => {}
                        Err(err) => return Err(err),
                    }
                }
            }
            Err(err) if err.is_not_found() => {
                if !self.missing_logged {
                    log::info("xfs: no /sys/fs/xfs (no XFS mounted or module not loaded)");
                    self.missing_logged = true;
                }
            }
            Err(err) => return Err(err),
        }
        out.push(metric::counter(
            "malformed_lines",
            self.malformed as f64,
            "Values of XFS stats files that were missing or did not parse.",
        ));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /sys/fs/xfs/loop0/stats/stats on Linux 6.18 after a 4 MiB direct write.
    const STATS: &str = "extent_alloc 4 1024 0 0\nabt 0 0 0 0\nblk_map 0 0 0 0 0 0 0\n\
        bmbt 0 0 0 0\ndir 0 0 0 0\ntrans 0 0 0\nig 7 2 0 5 0 0 0\nlog 0 0 0 0 0\n\
        push_ail 0 3 0 0 0 0 0 0 0 0\nxstrat 0 0\nrw 4 0\nattr 0 0 0 0\nicluster 0 0 0\n\
        vnodes 0 0 0 0 0 0 0 0\nbuf 10 2 8 6 1 0 0 0 0\nxpc 0 4194304 0\ndefer_relog 0\n";

    #[test]
    fn huatuo_dashboard_counters() {
        let mut m = 0;
        let out = device_metrics("loop0", STATS, &mut m);
        assert_eq!(m, 0);
        let get = |name: &str| out.iter().find(|x| x.name() == name).map(Metric::value);
        assert_eq!(get("alloc_extents"), Some(4.0));
        assert_eq!(get("alloc_blocks"), Some(1024.0));
        assert_eq!(get("buf_locked_waited"), Some(6.0));
        assert_eq!(get("buf_busy_locked"), Some(1.0));
        assert_eq!(get("inode_attempts"), Some(7.0));
        assert_eq!(get("inode_missed"), Some(5.0));
        assert_eq!(get("log_space_sleep"), Some(3.0));
        assert_eq!(get("write_calls"), Some(4.0));
        assert_eq!(get("written_bytes"), Some(4_194_304.0));
        assert!(
            out[0]
                .labels()
                .contains(&("device".to_owned(), "loop0".to_owned()))
        );
    }

    #[test]
    fn truncated_file_counts_missing_values() {
        let mut m = 0;
        let out = device_metrics("sdb", "extent_alloc 1 2 0 0\nrw x 1\n", &mut m);
        assert_eq!(out.len(), 2);
        // `rw` did not parse (1) and nine counters have no line.
        assert_eq!(m, 10);
    }
}
