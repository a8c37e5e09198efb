//! `mountpoint_perm`: whether mount points are read-only, under HUATUO's name
//! (`huatuo_bamai_mountpoint_perm_ro{mountpoint}` with `prefix = "huatuo_bamai"`).
//!
//! For every mount point of `/proc/self/mountinfo` (the agent's mount namespace, as in HUATUO)
//! that matches `mountpoints_included`, the gauge `ro{mountpoint}` is 1 when the mount is
//! read-only (`ro` in its per-mount options) and 0 otherwise. Stacked mounts on one point
//! report the last, visible, one. Escapes in the path (`\040` for a space) are decoded.
//!
//! ```toml
//! [plugins.mountpoint_perm]
//! # Regex searched anywhere in the mount point; empty = every mount point.
//! mountpoints_included = '(^/home$)|(^/$)|(^/boot$)'   # HUATUO's shipped value, the default
//! ```
//!
//! Lines that do not parse are skipped and counted in `malformed_lines_total`.

use std::collections::BTreeMap;

use kpulse_sdk::prelude::*;
use serde::Deserialize;

#[path = "../../memory_vmstat/src/filter.rs"]
mod filter;
use filter::Filter;

/// HUATUO's shipped `MountPointsIncluded`.
const DEFAULT_INCLUDED: &str = "(^/home$)|(^/$)|(^/boot$)";

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    mountpoints_included: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mountpoints_included: DEFAULT_INCLUDED.to_owned(),
        }
    }
}

struct MountpointPerm {
    filter: Filter,
    malformed: u64,
}

kpulse_sdk::register!(MountpointPerm {
    name: "mountpoint_perm",
    kinds: [metric],
    capabilities: ["read:/proc/self/mountinfo"],
    summary: "Read-only mount points from /proc/self/mountinfo, HUATUO's mountpoint_perm",
});

impl Plugin for MountpointPerm {
    fn init(config: Config) -> Result<Self> {
        let s: Settings = config.parse()?;
        Ok(MountpointPerm {
            filter: Filter::new(("mountpoints_included", &s.mountpoints_included), ("", ""))?,
            malformed: 0,
        })
    }
}

/// Decodes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` `\`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match code {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `mount point -> read-only` of `/proc/self/mountinfo`, and the malformed line count.
fn parse_mountinfo(text: &str) -> (BTreeMap<String, bool>, u64) {
    let mut mounts = BTreeMap::new();
    let mut malformed = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // id parent major:minor root mount-point options [optional...] - fstype source super
        let fields: Vec<&str> = line.split(' ').collect();
        let valid = fields.len() >= 10
            && fields[0].parse::<u64>().is_ok()
            && fields[2].contains(':')
            && fields[4].starts_with('/')
            && fields[6..].contains(&"-");
        if !valid {
            malformed += 1;
            continue;
        }
        let ro = fields[5].split(',').any(|o| o == "ro");
        mounts.insert(unescape(fields[4]), ro);
    }
    (mounts, malformed)
}

impl MountpointPerm {
    fn collect(&mut self, text: &str) -> Vec<Metric> {
        let (mounts, skipped) = parse_mountinfo(text);
        self.malformed += skipped;
        let mut out: Vec<Metric> = mounts
            .iter()
            .filter(|(point, _)| self.filter.keeps(point))
            .map(|(point, ro)| {
                metric::gauge(
                    "ro",
                    if *ro { 1.0 } else { 0.0 },
                    "Whether the mount point is read-only (1) or writable (0).",
                )
                .label("mountpoint", point)
            })
            .collect();
        out.push(metric::counter(
            "malformed_lines",
            self.malformed as f64,
            "Lines of /proc/self/mountinfo that did not parse and were skipped.",
        ));
        out
    }
}

impl Collector for MountpointPerm {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let text = fs::read_to_string("/proc/self/mountinfo")?;
        Ok(self.collect(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 8:2 / /boot ro,nosuid shared:2 - ext4 /dev/sda2 rw
24 22 0:5 / /home rw,nodev - tmpfs tmpfs rw
25 22 0:6 / /mnt/my\\040disk ro - vfat /dev/sdb1 ro
26 24 0:7 / /home ro,relatime - tmpfs tmpfs rw
not a mountinfo line
27 22 0:8 / /data rw,relatime shared:3
";

    fn perm(included: &str) -> MountpointPerm {
        MountpointPerm {
            filter: Filter::new(("i", included), ("e", "")).expect("valid"),
            malformed: 0,
        }
    }

    fn summary(out: &[Metric]) -> Vec<(String, String, f64)> {
        out.iter()
            .map(|m| {
                let label = m.labels().first().map(|l| l.1.clone()).unwrap_or_default();
                (m.name().to_owned(), label, m.value())
            })
            .collect()
    }

    #[test]
    fn huatuo_default_mount_points() {
        let out = perm(DEFAULT_INCLUDED).collect(MOUNTINFO);
        let s = |n: &str, l: &str, v: f64| (n.to_owned(), l.to_owned(), v);
        assert_eq!(
            summary(&out),
            [
                s("ro", "/", 0.0),
                s("ro", "/boot", 1.0),
                // The later mount over /home is the visible one.
                s("ro", "/home", 1.0),
                s("malformed_lines", "", 2.0),
            ]
        );
        assert_eq!(out[0].labels(), [("mountpoint".to_owned(), "/".to_owned())]);
    }

    #[test]
    fn escapes_and_all_mounts() {
        let out = perm("").collect(MOUNTINFO);
        let points: Vec<String> = summary(&out).into_iter().map(|s| s.1).collect();
        assert_eq!(points, ["/", "/boot", "/home", "/mnt/my disk", ""]);
        assert_eq!(unescape(r"a\134b\04"), r"a\b\04");
        assert_eq!(unescape("\\"), "\\");
    }
}
