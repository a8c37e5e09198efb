//! Containers and their cgroup files, for the container parts of `cpu_util`, `cpu_stat`,
//! `memory_vmstat` and `memory_events` (`#[path]`-included from here, like `filter.rs`).
//!
//! The containers come from the host's registry (the `containers` capability), kept up to
//! date by a [`containers::Tracker`]. A container's file of controller `c` is read at
//! `<mount><cgroup path>/<file>`, in the v1 hierarchy that has `c`, else in the unified (v2)
//! one ([`containers::cgroup_dir`]); [`Dir::v2`] says which file format to expect. Parsers
//! take text, return `None` for what they cannot use and add the lines they could not parse
//! to the caller's `malformed` count.

use std::cell::Cell;
use std::collections::BTreeMap;

use kpulse_sdk::containers::{self, CgroupMount, Container, Tracker};
use kpulse_sdk::prelude::*;

/// HUATUO's `ContainersByType(Normal | Sidecar)` (`cpu_util`, `cpu_stat`).
pub const NORMAL_AND_SIDECAR: &[&str] = &["normal", "sidecar"];
/// HUATUO's `NormalContainers()` (`memory_vmstat`, `memory_events`).
pub const NORMAL: &[&str] = &["normal"];

/// `USER_HZ`: the unit of v1 `cpuacct.stat` (100 on every Linux architecture).
pub const USER_HZ: u64 = 100;

/// The running containers and the cgroup hierarchies.
#[derive(Debug, Default)]
pub struct Registry {
    tracker: Tracker,
    mounts: Vec<CgroupMount>,
    /// The last refresh failed (no `containers` capability, registry off): no containers.
    unavailable: bool,
    /// A cgroup read failed for another reason than a vanished file (logged once).
    read_warned: Cell<bool>,
}

/// A container's directory in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dir {
    pub path: String,
    /// In the unified hierarchy (v2 file names and formats).
    pub v2: bool,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    #[cfg(test)]
    pub fn with_mounts(mounts: Vec<CgroupMount>) -> Self {
        Registry {
            mounts,
            ..Self::default()
        }
    }

    /// Applies what changed in the host's registry. When it cannot be read (the capability
    /// is denied, the registry is off) the plugin has no containers; that is logged once.
    pub fn refresh(&mut self) {
        let result = self.tracker.refresh().and_then(|()| {
            if self.mounts.is_empty() {
                self.mounts = containers::cgroup_mounts()?;
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                if self.unavailable {
                    log::info("container registry readable again: container-level series back");
                }
                self.unavailable = false;
            }
            Err(err) => {
                if !self.unavailable {
                    log::info(&format!(
                        "no container-level series (host-level ones go on): {err}"
                    ));
                }
                self.unavailable = true;
            }
        }
    }

    /// Running containers of HUATUO's `types` (`normal`, `sidecar`, `daemonSet`); no pod
    /// sandboxes, systemd units or other cgroups.
    pub fn containers<'a>(&'a self, types: &'a [&str]) -> impl Iterator<Item = &'a Container> {
        self.tracker
            .containers()
            .filter(move |c| !self.unavailable && types.contains(&c.container_type.as_str()))
    }

    /// `container`'s directory in the hierarchy of `controller`.
    pub fn dir(&self, container: &Container, controller: &str) -> Option<Dir> {
        let v1 = self
            .mounts
            .iter()
            .any(|m| m.version == 1 && m.controllers.iter().any(|c| c == controller));
        containers::cgroup_dir(&self.mounts, container, controller)
            .map(|path| Dir { path, v2: !v1 })
    }

    /// `<dir>/<file>`, or `None` when it cannot be read: a file that is not there (the
    /// container just went away, the kernel has no such file) silently, anything else with
    /// one log line per plugin instance.
    pub fn read(&self, dir: &Dir, file: &str) -> Option<String> {
        let path = format!("{}/{file}", dir.path);
        match fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(err) if err.is_not_found() => None,
            Err(err) => {
                if !self.read_warned.replace(true) {
                    log::warn(&format!(
                        "cannot read a container's cgroup file (skipped, logged once): {err}"
                    ));
                }
                None
            }
        }
    }

    /// HUATUO's `cores` of a container: CFS quota / period, else the cpuset's size, else
    /// the `online` CPUs.
    pub fn cores(&self, container: &Container, online: u32, malformed: &mut u64) -> f64 {
        let quota = self.dir(container, "cpu").and_then(|dir| {
            if dir.v2 {
                quota_cores_v2(&self.read(&dir, "cpu.max")?, malformed)
            } else {
                let quota = self.read(&dir, "cpu.cfs_quota_us")?;
                let period = self.read(&dir, "cpu.cfs_period_us")?;
                quota_cores_v1(&quota, &period, malformed)
            }
        });
        if let Some(cores) = quota {
            return cores;
        }
        let cpuset = self.dir(container, "cpuset").and_then(|dir| {
            let file = if dir.v2 {
                "cpuset.cpus.effective"
            } else {
                "cpuset.cpus"
            };
            cpu_list_len(&self.read(&dir, file)?, malformed)
        });
        f64::from(cpuset.unwrap_or(online).max(1))
    }
}

/// `key value` lines (`cpu.stat`, `memory.stat`, `memory.events`, `cpuacct.stat`).
pub fn key_values(text: &str, malformed: &mut u64) -> BTreeMap<String, u64> {
    let (values, skipped) = procfs::parse_key_values_counted(text);
    *malformed += skipped;
    values
}

/// A file of one unsigned number (`cpuacct.usage`, `memory.current`).
pub fn single(text: &str, malformed: &mut u64) -> Option<u64> {
    let value = text.trim().parse().ok();
    if value.is_none() {
        *malformed += 1;
    }
    value
}

/// CPU time a cgroup used, in microseconds (HUATUO's `stats.CpuUsage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuUsage {
    /// All CPU time.
    pub usage_us: u64,
    pub user_us: u64,
    pub system_us: u64,
}

/// v1: `cpuacct.stat` (`user`, `system` in `USER_HZ` ticks) and `cpuacct.usage` (ns).
pub fn cpu_usage_v1(stat: &str, usage: &str, malformed: &mut u64) -> Option<CpuUsage> {
    let ticks = key_values(stat, malformed);
    let usage_ns = single(usage, malformed)?;
    let (Some(user), Some(system)) = (ticks.get("user"), ticks.get("system")) else {
        *malformed += 1;
        return None;
    };
    let us = |t: u64| t.saturating_mul(1_000_000 / USER_HZ);
    Some(CpuUsage {
        usage_us: usage_ns / 1000,
        user_us: us(*user),
        system_us: us(*system),
    })
}

/// v2: `usage_usec`, `user_usec`, `system_usec` of `cpu.stat` (present even without the
/// `cpu` controller).
pub fn cpu_usage_v2(stat: &str, malformed: &mut u64) -> Option<CpuUsage> {
    let values = key_values(stat, malformed);
    let get = |k: &str| values.get(k).copied();
    match (get("usage_usec"), get("user_usec"), get("system_usec")) {
        (Some(usage_us), Some(user_us), Some(system_us)) => Some(CpuUsage {
            usage_us,
            user_us,
            system_us,
        }),
        _ => {
            *malformed += 1;
            None
        }
    }
}

/// The container's CPU time from the hierarchy with `cpuacct` (v1) or `cpu.stat` (v2).
pub fn read_cpu_usage(
    registry: &Registry,
    container: &Container,
    malformed: &mut u64,
) -> Option<CpuUsage> {
    let dir = registry.dir(container, "cpuacct")?;
    if dir.v2 {
        cpu_usage_v2(&registry.read(&dir, "cpu.stat")?, malformed)
    } else {
        let stat = registry.read(&dir, "cpuacct.stat")?;
        let usage = registry.read(&dir, "cpuacct.usage")?;
        cpu_usage_v1(&stat, &usage, malformed)
    }
}

/// CPUs of a v1 CFS quota (`cpu.cfs_quota_us`, `cpu.cfs_period_us`); `None` without one
/// (`-1`) or when it does not parse.
pub fn quota_cores_v1(quota: &str, period: &str, malformed: &mut u64) -> Option<f64> {
    let (Ok(quota), Ok(period)) = (quota.trim().parse::<i64>(), period.trim().parse::<u64>())
    else {
        *malformed += 1;
        return None;
    };
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// CPUs of a v2 `cpu.max` (`<quota|max> <period>`); `None` for `max` or when it does not
/// parse.
pub fn quota_cores_v2(max: &str, malformed: &mut u64) -> Option<f64> {
    let mut fields = max.split_whitespace();
    let (quota, period) = (fields.next(), fields.next().map(str::parse::<u64>));
    match (quota, period) {
        (Some("max"), Some(Ok(_))) => None,
        (Some(quota), Some(Ok(period))) if period > 0 => match quota.parse::<u64>() {
            Ok(quota) if quota > 0 => Some(quota as f64 / period as f64),
            _ => {
                *malformed += 1;
                None
            }
        },
        _ => {
            *malformed += 1;
            None
        }
    }
}

/// How many CPUs a cpuset list names (`0-3,6,8-9` is 7); `None` when empty or malformed.
pub fn cpu_list_len(list: &str, malformed: &mut u64) -> Option<u32> {
    let list = list.trim();
    if list.is_empty() {
        return None;
    }
    let mut count: u32 = 0;
    for part in list.split(',') {
        let range = match part.split_once('-') {
            Some((lo, hi)) => lo.parse::<u32>().ok().zip(hi.parse::<u32>().ok()),
            None => part.parse::<u32>().ok().map(|cpu| (cpu, cpu)),
        };
        match range {
            Some((lo, hi)) if lo <= hi => count = count.saturating_add(hi - lo + 1),
            _ => {
                *malformed += 1;
                return None;
            }
        }
    }
    Some(count)
}

/// The `cpuN` lines of `/proc/stat`: the online CPUs.
pub fn online_cpus(proc_stat: &str) -> u32 {
    let count = proc_stat
        .lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use kpulse_sdk::containers::{Qos, Runtime, State};

    pub fn container(id: &str, cgroup_path: &str, container_type: &str) -> Container {
        Container {
            id: id.to_owned(),
            name: id.to_owned(),
            runtime: Runtime::Containerd,
            runtime_namespace: "kptest".to_owned(),
            image: String::new(),
            labels: Vec::new(),
            pod: None,
            qos: Qos::None,
            container_type: container_type.to_owned(),
            hostname: String::new(),
            init_pid: 0,
            cgroup_path: cgroup_path.to_owned(),
            cgroup_id: 0,
            memcg_id: 0,
            netns_inum: 0,
            mntns_inum: 0,
            host_network: false,
            started_at_ns: 0,
            state: State::Running,
        }
    }

    fn mount(version: u8, controllers: &[&str], mount_point: &str) -> CgroupMount {
        CgroupMount {
            version,
            controllers: controllers.iter().map(|c| (*c).to_owned()).collect(),
            mount_point: mount_point.to_owned(),
        }
    }

    /// This test machine's layout: v1 controllers, and a unified hierarchy without any.
    pub fn hybrid() -> Vec<CgroupMount> {
        vec![
            mount(1, &["cpu"], "/sys/fs/cgroup/cpu"),
            mount(1, &["cpuacct"], "/sys/fs/cgroup/cpuacct"),
            mount(1, &["cpuset"], "/sys/fs/cgroup/cpuset"),
            mount(1, &["memory"], "/sys/fs/cgroup/memory"),
            mount(2, &[], "/sys/fs/cgroup/unified"),
        ]
    }

    pub fn unified() -> Vec<CgroupMount> {
        vec![mount(2, &[], "/sys/fs/cgroup")]
    }

    #[test]
    fn dirs_on_hybrid_and_unified_hosts() {
        let c = container("web", "/kptest/web", "normal");
        let hybrid = Registry::with_mounts(hybrid());
        assert_eq!(
            hybrid.dir(&c, "cpuacct"),
            Some(Dir {
                path: "/sys/fs/cgroup/cpuacct/kptest/web".to_owned(),
                v2: false
            })
        );
        assert_eq!(
            hybrid.dir(&c, "memory").map(|d| d.path),
            Some("/sys/fs/cgroup/memory/kptest/web".to_owned())
        );
        // No v1 hierarchy has it: the unified one.
        assert_eq!(
            hybrid.dir(&c, "hugetlb"),
            Some(Dir {
                path: "/sys/fs/cgroup/unified/kptest/web".to_owned(),
                v2: true
            })
        );
        let unified = Registry::with_mounts(unified());
        assert_eq!(
            unified.dir(&c, "cpu"),
            Some(Dir {
                path: "/sys/fs/cgroup/kptest/web".to_owned(),
                v2: true
            })
        );
        assert_eq!(Registry::with_mounts(Vec::new()).dir(&c, "cpu"), None);
    }

    #[test]
    fn cpu_usage_v1_ticks_and_ns() {
        let mut malformed = 0;
        let usage = cpu_usage_v1("user 291\nsystem 7\n", "2927834087\n", &mut malformed);
        assert_eq!(
            usage,
            Some(CpuUsage {
                usage_us: 2_927_834,
                user_us: 2_910_000,
                system_us: 70_000
            })
        );
        assert_eq!(malformed, 0);
        assert_eq!(cpu_usage_v1("user 1\n", "5\n", &mut malformed), None);
        assert_eq!(
            cpu_usage_v1("user 1\nsystem 1\n", "x\n", &mut malformed),
            None
        );
        assert_eq!(malformed, 2);
    }

    #[test]
    fn cpu_usage_v2_usec() {
        let mut malformed = 0;
        // A unified cgroup without the cpu controller (this machine) ...
        let bare = "usage_usec 10462804\nuser_usec 10446855\nsystem_usec 15949\nnice_usec 0\n";
        assert_eq!(
            cpu_usage_v2(bare, &mut malformed),
            Some(CpuUsage {
                usage_us: 10_462_804,
                user_us: 10_446_855,
                system_us: 15_949
            })
        );
        // ... and with it.
        let full = "usage_usec 900\nuser_usec 600\nsystem_usec 300\nnice_usec 0\n\
                    core_sched.force_idle_usec 0\nnr_periods 10\nnr_throttled 2\n\
                    throttled_usec 5000\nnr_bursts 1\nburst_usec 70\n";
        assert_eq!(
            cpu_usage_v2(full, &mut malformed).map(|u| u.usage_us),
            Some(900)
        );
        assert_eq!(malformed, 0);
        assert_eq!(cpu_usage_v2("usage_usec 1\nbroken\n", &mut malformed), None);
        assert_eq!(malformed, 2, "the broken line and the missing keys");
    }

    #[test]
    fn quotas() {
        let mut m = 0;
        assert_eq!(quota_cores_v1("50000\n", "100000\n", &mut m), Some(0.5));
        assert_eq!(quota_cores_v1("-1\n", "100000\n", &mut m), None);
        assert_eq!(m, 0);
        assert_eq!(quota_cores_v1("lots\n", "100000\n", &mut m), None);
        assert_eq!(m, 1);
        assert_eq!(quota_cores_v2("200000 100000\n", &mut m), Some(2.0));
        assert_eq!(quota_cores_v2("max 100000\n", &mut m), None);
        assert_eq!(m, 1);
        assert_eq!(quota_cores_v2("max\n", &mut m), None);
        assert_eq!(quota_cores_v2("x 100000\n", &mut m), None);
        assert_eq!(m, 3);
    }

    #[test]
    fn cpu_lists() {
        let mut m = 0;
        assert_eq!(cpu_list_len("0-3,6,8-9\n", &mut m), Some(7));
        assert_eq!(cpu_list_len("0-1\n", &mut m), Some(2));
        assert_eq!(cpu_list_len("5\n", &mut m), Some(1));
        assert_eq!(cpu_list_len("\n", &mut m), None);
        assert_eq!(m, 0);
        assert_eq!(cpu_list_len("3-1\n", &mut m), None);
        assert_eq!(cpu_list_len("a-b\n", &mut m), None);
        assert_eq!(m, 2);
    }

    #[test]
    fn online_cpus_from_proc_stat() {
        let stat = "cpu  1 2 3 4\ncpu0 1 1 1 1\ncpu1 1 1 1 1\nintr 5\ncpufreq 1\n";
        assert_eq!(online_cpus(stat), 2);
    }

    #[test]
    fn single_values() {
        let mut m = 0;
        assert_eq!(single("42\n", &mut m), Some(42));
        assert_eq!(single("max\n", &mut m), None);
        assert_eq!(m, 1);
    }
}
