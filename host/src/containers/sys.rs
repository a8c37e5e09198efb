//! The leaf that touches the kernel's files: cgroup mounts, cgroup and namespace ids,
//! `/proc/<pid>/cgroup`. Knows nothing of runtimes or the registry.
//!
//! Ids are inode numbers: on 64-bit kernels a kernfs node's inode number *is* its 64-bit id
//! (`kernfs_id_ino`), which is what `bpf_get_current_cgroup_id()` and `cgroup->kn->id` give,
//! so `stat` is enough and no `name_to_handle_at` is needed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// 2 for the unified hierarchy, 1 for a v1 one.
    pub version: u8,
    /// v1 controllers (`cpu`, `cpuacct`, `memory`, ...; `name=systemd` is kept as is).
    pub controllers: Vec<String>,
    pub mount_point: PathBuf,
}

/// The hierarchies the registry walks: the v2 one (cgroup ids) and the one holding the
/// memory controller (memcg ids; the v2 one again on a pure v2 host).
#[derive(Debug, Clone, Default)]
pub struct Hierarchies {
    pub all: Vec<CgroupMount>,
    pub unified: Option<PathBuf>,
    pub memory: Option<PathBuf>,
}

impl Hierarchies {
    /// From `/proc/self/mountinfo` (`mountinfo` is its text).
    pub fn from_mountinfo(mountinfo: &str) -> Self {
        let mut all = Vec::new();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (Some(mount_point), Some(fs_type)) = (left.get(4), right.first()) else {
                continue;
            };
            let mount_point = PathBuf::from(unescape(mount_point));
            match *fs_type {
                "cgroup2" => all.push(CgroupMount {
                    version: 2,
                    controllers: Vec::new(),
                    mount_point,
                }),
                "cgroup" => {
                    let options = right.get(2).copied().unwrap_or("");
                    let controllers = options
                        .split(',')
                        .filter(|o| {
                            !matches!(*o, "rw" | "ro" | "nosuid" | "nodev" | "noexec" | "relatime")
                                && !o.starts_with("release_agent")
                                && *o != "clone_children"
                                && *o != "noprefix"
                                && *o != "xattr"
                        })
                        .map(str::to_owned)
                        .collect();
                    all.push(CgroupMount {
                        version: 1,
                        controllers,
                        mount_point,
                    });
                }
                _ => {}
            }
        }
        // The same hierarchy can be mounted twice (bind mounts); keep the first.
        let mut seen = std::collections::HashSet::new();
        all.retain(|m: &CgroupMount| seen.insert((m.version, m.controllers.clone())));
        let unified = all
            .iter()
            .find(|m| m.version == 2)
            .map(|m| m.mount_point.clone());
        let memory = all
            .iter()
            .find(|m| m.version == 1 && m.controllers.iter().any(|c| c == "memory"))
            .map(|m| m.mount_point.clone())
            .or_else(|| unified.clone());
        Self {
            all,
            unified,
            memory,
        }
    }

    /// This host's hierarchies.
    pub fn detect() -> Self {
        std::fs::read_to_string("/proc/self/mountinfo")
            .map(|text| Self::from_mountinfo(&text))
            .unwrap_or_default()
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = (bytes[i] == b'\\')
            .then(|| bytes.get(i + 1..i + 4))
            .flatten()
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match code {
            Some(code) => {
                out.push(code);
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

/// The kernfs id of a cgroup directory.
pub fn cgroup_id(dir: &Path) -> Option<u64> {
    std::fs::metadata(dir).ok().map(|m| m.ino())
}

/// Inode of `/proc/<pid>/ns/<kind>` (`net`, `mnt`): the namespace's id.
pub fn namespace_inum(pid: u32, kind: &str) -> Option<u32> {
    let meta = std::fs::metadata(format!("/proc/{pid}/ns/{kind}")).ok()?;
    u32::try_from(meta.ino()).ok()
}

/// The host's network namespace: pid 1's (the agent may run in a namespace of its own),
/// else the agent's own where pid 1's cannot be read (some sandboxes deny it even to root).
pub fn host_netns() -> Option<u32> {
    namespace_inum(1, "net").or_else(|| namespace_inum(std::process::id(), "net"))
}

/// A process's cgroup paths: the v2 one (`0::`) and the memory controller's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcCgroups {
    pub unified: Option<String>,
    pub memory: Option<String>,
}

impl ProcCgroups {
    pub fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                out.unified = Some(path.to_owned());
            } else if controllers.split(',').any(|c| c == "memory") {
                out.memory = Some(path.to_owned());
            }
        }
        out
    }

    pub fn read(pid: u32) -> Option<Self> {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .map(|text| Self::parse(&text))
    }

    /// The path that names the workload: the memory controller's on a hybrid host (where
    /// runtimes place processes), else the v2 one.
    pub fn workload_path(&self) -> Option<&str> {
        match (&self.memory, &self.unified) {
            (Some(memory), _) => Some(memory),
            (None, Some(unified)) => Some(unified),
            (None, None) => None,
        }
    }
}

/// Start time of a process, ns since the epoch: `starttime` of `/proc/<pid>/stat` (clock
/// ticks after boot; USER_HZ is 100 on every Linux ABI) plus `btime` of `/proc/stat`.
pub fn process_start_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces and parentheses: fields start after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: u64 = boot
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(btime * 1_000_000_000 + ticks * 10_000_000)
}

/// The first pid of a cgroup (`cgroup.procs`), for workloads no runtime names a pid for.
pub fn first_pid(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_mountinfo_gives_the_unified_and_memory_hierarchies() {
        let text = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:15 - cgroup cgroup rw,cpu,cpuacct
36 30 0:32 / /sys/fs/cgroup/memory rw,nosuid shared:16 - cgroup cgroup rw,memory
37 30 0:32 / /mnt/memory\\040copy rw shared:16 - cgroup cgroup rw,memory
";
        let h = Hierarchies::from_mountinfo(text);
        assert_eq!(h.unified, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(h.memory, Some(PathBuf::from("/sys/fs/cgroup/memory")));
        assert_eq!(h.all.len(), 4, "{:?}", h.all);
        assert_eq!(h.all[2].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(h.all[1].controllers, vec!["name=systemd"]);
    }

    #[test]
    fn pure_v2_uses_the_unified_hierarchy_for_memory() {
        let text = "25 20 0:22 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        let h = Hierarchies::from_mountinfo(text);
        assert_eq!(h.memory, Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(unescape("a\\040b"), "a b");
    }

    #[test]
    fn proc_cgroup_lines() {
        let hybrid =
            "12:memory:/kptest/c1\n11:cpu,cpuacct:/kptest/c1\n1:name=systemd:/\n0::/kptest/c1\n";
        let p = ProcCgroups::parse(hybrid);
        assert_eq!(p.memory.as_deref(), Some("/kptest/c1"));
        assert_eq!(p.unified.as_deref(), Some("/kptest/c1"));
        assert_eq!(p.workload_path(), Some("/kptest/c1"));
        let v2 = ProcCgroups::parse("0::/system.slice/cron.service\n");
        assert_eq!(v2.workload_path(), Some("/system.slice/cron.service"));
        assert_eq!(ProcCgroups::parse("garbage\n::\n").workload_path(), None);
    }

    #[test]
    fn this_hosts_ids_are_inodes() {
        let h = Hierarchies::detect();
        if let Some(unified) = &h.unified {
            assert!(cgroup_id(unified).is_some());
        }
        assert!(namespace_inum(std::process::id(), "net").is_some());
    }
}
