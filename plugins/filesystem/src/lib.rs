//! `filesystem`: usage of every mounted filesystem through the host's `statfs` interface,
//! with node_exporter's `filesystem` names, labels and default filters
//! (`<prefix>_filesystem_size_bytes{device,fstype,mountpoint}`).
//!
//! | series | kind | from `statvfs` |
//! |---|---|---|
//! | `size_bytes` | gauge | `f_blocks × f_frsize` |
//! | `free_bytes` | gauge | `f_bfree × f_frsize` (including root's reserve) |
//! | `avail_bytes` | gauge | `f_bavail × f_frsize` (what unprivileged users can use) |
//! | `files`, `files_free` | gauge | `f_files`, `f_ffree` |
//! | `readonly` | gauge | 1 when mounted read-only (`ST_RDONLY` or the `ro` mount option) |
//! | `device_error` | gauge | 1 when `statfs` failed (a stuck network mount): no other series then |
//!
//! ```toml
//! [plugins.filesystem]
//! # Regexes searched anywhere in the mount point / filesystem type; empty = no rule.
//! mount_points_include = ""
//! mount_points_exclude = '^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)'
//! fs_types_include = ""
//! fs_types_exclude = '^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|erofs|sysfs|tracefs)$'
//! ```
//!
//! The defaults are node_exporter 1.5's (`--collector.filesystem.mount-points-exclude`,
//! `--collector.filesystem.fs-types-exclude`), so `tmpfs` mounts such as `/run` are kept as
//! there. The mount table is the host's (its init's `mountinfo`); a mount point mounted
//! twice with the same device and type is reported once (the visible, last one).

use std::collections::BTreeMap;

use kpulse_sdk::prelude::*;
use kpulse_sdk::statfs::{self, FsStats, Mount};
use serde::Deserialize;

#[path = "../../memory_vmstat/src/filter.rs"]
mod filter;
use filter::Filter;

/// node_exporter 1.5's `mount-points-exclude` default on Linux.
const DEFAULT_MOUNT_POINTS_EXCLUDE: &str =
    "^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)";
/// node_exporter 1.5's `fs-types-exclude` default on Linux.
const DEFAULT_FS_TYPES_EXCLUDE: &str = "^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|erofs|sysfs|tracefs)$";

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    mount_points_include: String,
    mount_points_exclude: String,
    fs_types_include: String,
    fs_types_exclude: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mount_points_include: String::new(),
            mount_points_exclude: DEFAULT_MOUNT_POINTS_EXCLUDE.to_owned(),
            fs_types_include: String::new(),
            fs_types_exclude: DEFAULT_FS_TYPES_EXCLUDE.to_owned(),
        }
    }
}

struct Filesystem {
    mount_points: Filter,
    fs_types: Filter,
    /// Mounts whose statfs failed, logged once each.
    failed_logged: std::collections::BTreeSet<String>,
}

kpulse_sdk::register!(Filesystem {
    name: "filesystem",
    kinds: [metric],
    capabilities: ["statfs"],
    summary: "Size, free and available bytes, inodes and read-only state per mounted filesystem",
});

impl Plugin for Filesystem {
    fn init(config: Config) -> Result<Self> {
        let s: Settings = config.parse()?;
        Ok(Filesystem {
            mount_points: Filter::new(
                ("mount_points_include", &s.mount_points_include),
                ("mount_points_exclude", &s.mount_points_exclude),
            )?,
            fs_types: Filter::new(
                ("fs_types_include", &s.fs_types_include),
                ("fs_types_exclude", &s.fs_types_exclude),
            )?,
            failed_logged: Default::default(),
        })
    }
}

/// The series of one mount; `stats` `None` when its statfs failed.
fn mount_metrics(m: &Mount, stats: Option<&FsStats>) -> Vec<Metric> {
    let labelled = |metric: Metric| {
        metric
            .label("device", &m.device)
            .label("fstype", &m.fs_type)
            .label("mountpoint", &m.mount_point)
    };
    let mut out = vec![labelled(metric::gauge(
        "device_error",
        if stats.is_some() { 0.0 } else { 1.0 },
        "Whether an error occurred while getting statistics for the given device.",
    ))];
    let Some(s) = stats else {
        return out;
    };
    let read_only = s.read_only || m.options.iter().any(|o| o == "ro");
    let gauges = [
        (
            "size_bytes",
            statfs::bytes(s, s.blocks),
            "Filesystem size in bytes.",
        ),
        (
            "free_bytes",
            statfs::bytes(s, s.blocks_free),
            "Filesystem free space in bytes.",
        ),
        (
            "avail_bytes",
            statfs::bytes(s, s.blocks_available),
            "Filesystem space available to non-root users in bytes.",
        ),
        ("files", s.files as f64, "Filesystem total file nodes."),
        (
            "files_free",
            s.files_free as f64,
            "Filesystem total free file nodes.",
        ),
        (
            "readonly",
            if read_only { 1.0 } else { 0.0 },
            "Filesystem read-only status.",
        ),
    ];
    out.extend(
        gauges
            .into_iter()
            .map(|(name, value, help)| labelled(metric::gauge(name, value, help))),
    );
    out
}

impl Filesystem {
    /// The mounts to report: filtered, one per (device, type, mount point), the last wins.
    fn select(&self, mounts: Vec<Mount>) -> Vec<Mount> {
        let mut unique: BTreeMap<(String, String, String), Mount> = BTreeMap::new();
        for m in mounts {
            if self.mount_points.keeps(&m.mount_point) && self.fs_types.keeps(&m.fs_type) {
                let key = (m.mount_point.clone(), m.device.clone(), m.fs_type.clone());
                unique.insert(key, m);
            }
        }
        unique.into_values().collect()
    }
}

impl Collector for Filesystem {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mounts = self.select(statfs::mounts()?);
        let mut out = Vec::new();
        for m in &mounts {
            let stats = match statfs::statfs(&m.mount_point) {
                Ok(stats) => Some(stats),
                // Unmounted between the table and the call.
                Err(err) if err.is_not_found() => continue,
                Err(err) => {
                    if self.failed_logged.insert(m.mount_point.clone()) {
                        log::warn(&format!("filesystem: {err}"));
                    }
                    None
                }
            };
            out.extend(mount_metrics(m, stats.as_ref()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(point: &str, fs_type: &str, options: &[&str]) -> Mount {
        Mount {
            device: "/dev/loop0".to_owned(),
            major_minor: "7:0".to_owned(),
            mount_point: point.to_owned(),
            fs_type: fs_type.to_owned(),
            options: options.iter().map(|s| (*s).to_owned()).collect(),
            super_options: vec!["rw".to_owned()],
        }
    }

    fn plugin(json: &str) -> Filesystem {
        Filesystem::init(Config::from_json(json).expect("json")).expect("init")
    }

    #[test]
    fn node_exporter_default_filters() {
        let p = plugin("{}");
        let kept: Vec<String> = p
            .select(vec![
                mount("/", "ext4", &["rw"]),
                mount("/proc", "proc", &["rw"]),
                mount("/sys/fs/cgroup/memory", "cgroup", &["rw"]),
                mount("/dev/shm", "tmpfs", &["rw"]),
                mount("/run", "tmpfs", &["rw"]),
                mount("/var/lib/docker/overlay2/x/merged", "overlay", &["rw"]),
                mount("/mnt/data", "xfs", &["rw"]),
                mount("/mnt/data", "xfs", &["ro"]),
            ])
            .into_iter()
            .map(|m| format!("{} {}", m.mount_point, m.options[0]))
            .collect();
        assert_eq!(kept, ["/ rw", "/mnt/data ro", "/run rw"]);
    }

    #[test]
    fn series_in_bytes_with_node_exporter_labels() {
        let s = FsStats {
            block_size: 4096,
            blocks: 100,
            blocks_free: 60,
            blocks_available: 50,
            files: 1000,
            files_free: 900,
            read_only: false,
        };
        let out = mount_metrics(&mount("/mnt/x", "ext4", &["ro", "relatime"]), Some(&s));
        let get = |name: &str| out.iter().find(|m| m.name() == name).map(Metric::value);
        assert_eq!(get("size_bytes"), Some(409_600.0));
        assert_eq!(get("avail_bytes"), Some(204_800.0));
        assert_eq!(get("files_free"), Some(900.0));
        assert_eq!(get("readonly"), Some(1.0));
        assert_eq!(get("device_error"), Some(0.0));
        let labels: Vec<&str> = out[1].labels().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(labels, ["device", "fstype", "mountpoint"]);
        let failed = mount_metrics(&mount("/mnt/x", "nfs", &["rw"]), None);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].value(), 1.0);
    }

    #[test]
    fn bad_regex_is_invalid_config() {
        let err =
            Filesystem::init(Config::from_json(r#"{"fs_types_exclude": "("}"#).expect("json"))
                .err()
                .expect("refused");
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    }
}
