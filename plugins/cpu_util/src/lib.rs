//! `cpu_util`: host and container CPU utilisation in percent, under HUATUO's names
//! (`huatuo_bamai_cpu_util_{usr,sys,total}` and `huatuo_bamai_cpu_util_container_{usr,sys,
//! total,cores}` with `prefix = "huatuo_bamai"`).
//!
//! **Host**, from the deltas of the `cpu` line of `/proc/stat` between two scrapes:
//!
//! - `usr` = user + nice, `sys` = system + irq + softirq, `total` = usr + sys + steal
//!   (what the root cgroup's `cpu.stat` counts, HUATUO's host source), each divided by all
//!   ticks of the interval (idle and iowait included), times 100.
//! - Like HUATUO, the values are recomputed only once at least [`MIN_DELTA_TICKS`] ticks
//!   have passed since the last computation; a faster scrape repeats the last values. The
//!   first scrape after start reports the utilisation since `init`.
//!
//! **Containers** (the registry's running `normal` and `sidecar` containers, as HUATUO's
//! `ContainersByType(Normal | Sidecar)`; labels added by the host):
//!
//! - `cores`: the CPUs the container may use: its CFS quota / period (v1
//!   `cpu.cfs_quota_us` / `cpu.cfs_period_us`, v2 `cpu.max`), else the size of its cpuset
//!   (v1 `cpuset.cpus`, v2 `cpuset.cpus.effective`), else the online CPUs. HUATUO has no
//!   cpuset step (it falls back to all CPUs); on a host without quotas or cpusets both agree.
//! - `usr`, `sys`, `total`: HUATUO's formula, CPU time used over the interval divided by
//!   `cores` × the elapsed wall-clock time, times 100, i.e. percent of the container's
//!   allowance (100 = it used all of its `cores`). CPU time is v1 `cpuacct.stat` `user` /
//!   `system` (`USER_HZ` = 100 ticks) and `cpuacct.usage` (ns) for `total`, or v2 `cpu.stat`
//!   `user_usec` / `system_usec` / `usage_usec`.
//! - Per container the plugin keeps the previous reading and recomputes at most once a
//!   second (HUATUO's rule); faster scrapes repeat the last values. A container's first
//!   reading (at `init`, or the first scrape that sees it) has no interval yet: until the
//!   next one only `cores` is exposed. An interval whose CPU time exceeds the allowance by
//!   more than 10 % (counters reset, a cgroup recreated under the same id) starts over
//!   without new values, as HUATUO does for any excess; smaller excesses (CFS burst, the
//!   scrape's own timing) are clamped to 100. State of containers that went away is dropped.
//! - Without containers (empty registry, `containers` capability denied) only the host
//!   series are exposed. Unparsable lines of the cgroup files are skipped and counted in
//!   `malformed_lines_total`; a container whose files cannot be read is skipped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kpulse_sdk::prelude::*;
use kpulse_sdk::procfs::CpuTimes;

#[allow(
    dead_code,
    reason = "shared with cpu_stat, memory_vmstat and memory_events"
)]
mod cgroup;
use cgroup::{CpuUsage, Registry};

/// 100 CPU-ticks (1 CPU-second at `USER_HZ` = 100): a resolution of 1 % or better.
const MIN_DELTA_TICKS: u64 = 100;

/// HUATUO recomputes a container's utilisation at most once a second.
const MIN_CONTAINER_INTERVAL: Duration = Duration::from_secs(1);

/// An interval using more than this times the container's allowance starts over.
const MAX_OVERSHOOT: f64 = 1.1;

struct CpuUtil {
    last: CpuTimes,
    /// `(usr, sys, total)` in percent.
    util: (f64, f64, f64),
    registry: Registry,
    containers: BTreeMap<String, ContainerCpu>,
    malformed: u64,
}

/// One container's previous reading.
#[derive(Debug, Clone, PartialEq)]
struct ContainerCpu {
    last: CpuUsage,
    at: Instant,
    /// `(usr, sys, total)` of the last complete interval.
    util: Option<(f64, f64, f64)>,
}

kpulse_sdk::register!(CpuUtil {
    name: "cpu_util",
    kinds: [metric],
    capabilities: ["read:/proc/stat", "read:/sys/fs/cgroup", "containers"],
    summary: "Host and container CPU utilisation (usr, sys, total percent; container cores)",
});

impl Plugin for CpuUtil {
    fn init(config: Config) -> Result<Self> {
        if let Some(key) = config.keys().first() {
            return Err(Error::InvalidConfig(format!(
                "this plugin takes no settings (got {key})"
            )));
        }
        let stat = fs::read_to_string("/proc/stat")?;
        let mut plugin = CpuUtil {
            last: procfs::parse_stat_cpu(&stat)?,
            util: (0.0, 0.0, 0.0),
            registry: Registry::new(),
            containers: BTreeMap::new(),
            malformed: 0,
        };
        // First readings, so that the first scrape has an interval for these containers.
        plugin.collect_containers(cgroup::online_cpus(&stat));
        Ok(plugin)
    }
}

/// Utilisation between two samples, or `None` when too few ticks passed (or the counters
/// went backwards, e.g. a CPU went offline).
fn utilisation(prev: &CpuTimes, now: &CpuTimes) -> Option<(f64, f64, f64)> {
    let delta = |f: fn(&CpuTimes) -> u64| f(now).checked_sub(f(prev));
    let all = delta(CpuTimes::total)?;
    let usr = delta(|c| c.user + c.nice)?;
    let sys = delta(|c| c.system + c.irq + c.softirq)?;
    let steal = delta(|c| c.steal)?;
    if all < MIN_DELTA_TICKS {
        return None;
    }
    let pct = |v: u64| v as f64 * 100.0 / all as f64;
    Some((pct(usr), pct(sys), pct(usr + sys + steal)))
}

/// Container utilisation `(usr, sys, total)` over `elapsed`, in percent of `cores`; `None`
/// when a counter went backwards or the interval used more than [`MAX_OVERSHOOT`] times
/// what `cores` allow.
fn container_utilisation(
    prev: &CpuUsage,
    now: &CpuUsage,
    elapsed: Duration,
    cores: f64,
) -> Option<(f64, f64, f64)> {
    let capacity = cores * elapsed.as_micros() as f64;
    if capacity.is_nan() || capacity <= 0.0 {
        return None;
    }
    let delta = |f: fn(&CpuUsage) -> u64| f(now).checked_sub(f(prev));
    let total = delta(|u| u.usage_us)?;
    let usr = delta(|u| u.user_us)?;
    let sys = delta(|u| u.system_us)?;
    let limit = capacity * MAX_OVERSHOOT;
    if total as f64 > limit || usr.saturating_add(sys) as f64 > limit {
        return None;
    }
    let pct = |v: u64| (v as f64 * 100.0 / capacity).min(100.0);
    Some((pct(usr), pct(sys), pct(total)))
}

impl ContainerCpu {
    /// Takes a new reading made at `at`: a new interval once [`MIN_CONTAINER_INTERVAL`]
    /// has passed, else nothing (the last values stand).
    fn advance(&mut self, now: CpuUsage, at: Instant, cores: f64) {
        let elapsed = at.saturating_duration_since(self.at);
        if elapsed < MIN_CONTAINER_INTERVAL {
            return;
        }
        if let Some(util) = container_utilisation(&self.last, &now, elapsed, cores) {
            self.util = Some(util);
        }
        self.last = now;
        self.at = at;
    }
}

impl CpuUtil {
    /// Reads every container's CPU time, advances its interval and returns its samples.
    fn collect_containers(&mut self, online: u32) -> Vec<Metric> {
        self.registry.refresh();
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for c in self.registry.containers(cgroup::NORMAL_AND_SIDECAR) {
            let Some(usage) = cgroup::read_cpu_usage(&self.registry, c, &mut self.malformed) else {
                continue;
            };
            let at = Instant::now();
            let cores = self.registry.cores(c, online, &mut self.malformed);
            seen.push(c.id.clone());
            let state = self
                .containers
                .entry(c.id.clone())
                .or_insert_with(|| ContainerCpu {
                    last: usage,
                    at,
                    util: None,
                });
            state.advance(usage, at, cores);
            out.push(metric::container_gauge(
                &c.id,
                "cores",
                cores,
                "CPUs the container may use: CFS quota / period, else its cpuset's size, \
                 else the online CPUs.",
            ));
            if let Some((usr, sys, total)) = state.util {
                for (name, value, help) in [
                    (
                        "usr",
                        usr,
                        "Container CPU time in user mode, percent of its cores over the interval.",
                    ),
                    (
                        "sys",
                        sys,
                        "Container CPU time in kernel mode, percent of its cores over the interval.",
                    ),
                    (
                        "total",
                        total,
                        "Container CPU time, percent of its cores over the interval.",
                    ),
                ] {
                    out.push(metric::container_gauge(&c.id, name, value, help));
                }
            }
        }
        self.containers.retain(|id, _| seen.contains(id));
        out
    }
}

impl Collector for CpuUtil {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let stat = fs::read_to_string("/proc/stat")?;
        let now = procfs::parse_stat_cpu(&stat)?;
        let elapsed = now.total().checked_sub(self.last.total());
        match utilisation(&self.last, &now) {
            Some(util) => {
                self.util = util;
                self.last = now;
            }
            // Too soon: keep the interval open and repeat the last values.
            None if elapsed.is_some_and(|ticks| ticks < MIN_DELTA_TICKS) => {}
            // A counter went backwards (CPU hot-unplug): start a new interval from here.
            None => self.last = now,
        }
        let (usr, sys, total) = self.util;
        let mut out = vec![
            metric::gauge(
                "usr",
                usr,
                "Host CPU time in user mode (user + nice), percent of all CPUs.",
            ),
            metric::gauge(
                "sys",
                sys,
                "Host CPU time in kernel mode (system + irq + softirq), percent of all CPUs.",
            ),
            metric::gauge(
                "total",
                total,
                "Host CPU time not idle (usr + sys + steal), percent of all CPUs.",
            ),
        ];
        out.extend(self.collect_containers(cgroup::online_cpus(&stat)));
        out.push(metric::counter(
            "malformed_lines",
            self.malformed as f64,
            "Lines of containers' cgroup CPU files that did not parse and were skipped.",
        ));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(line: &str) -> CpuTimes {
        procfs::parse_stat_cpu(line).expect("valid cpu line")
    }

    #[test]
    fn percentages_of_all_ticks() {
        let prev = times("cpu  100 0 50 1000 0 0 0 0 0 0\n");
        // +60 user, +20 nice, +30 system, +5 irq, +5 softirq, +10 steal, +60 idle, +10 iowait = 200
        let now = times("cpu  160 20 80 1060 10 5 5 10 0 0\n");
        let (usr, sys, total) = utilisation(&prev, &now).expect("enough ticks");
        assert!((usr - 40.0).abs() < 1e-9, "{usr}");
        assert!((sys - 20.0).abs() < 1e-9, "{sys}");
        assert!((total - 65.0).abs() < 1e-9, "{total}");
    }

    #[test]
    fn too_few_ticks_or_backwards_is_none() {
        let prev = times("cpu  100 0 50 1000 0 0 0 0\n");
        assert_eq!(
            utilisation(&prev, &times("cpu  110 0 50 1050 0 0 0 0\n")),
            None
        );
        assert_eq!(
            utilisation(&prev, &times("cpu  10 0 50 2000 0 0 0 0\n")),
            None
        );
    }

    fn usage(usage_us: u64, user_us: u64, system_us: u64) -> CpuUsage {
        CpuUsage {
            usage_us,
            user_us,
            system_us,
        }
    }

    #[test]
    fn container_percent_of_its_cores() {
        let prev = usage(1_000_000, 600_000, 300_000);
        // 2 s on a 0.5-CPU quota: 1 s of CPU time is the whole allowance.
        let now = usage(1_900_000, 1_200_000, 500_000);
        let (usr, sys, total) =
            container_utilisation(&prev, &now, Duration::from_secs(2), 0.5).expect("valid");
        assert!((usr - 60.0).abs() < 1e-9, "{usr}");
        assert!((sys - 20.0).abs() < 1e-9, "{sys}");
        assert!((total - 90.0).abs() < 1e-9, "{total}");
        // The same on 2 CPUs is a quarter of that.
        let (_, _, total) =
            container_utilisation(&prev, &now, Duration::from_secs(2), 2.0).expect("valid");
        assert!((total - 22.5).abs() < 1e-9, "{total}");
    }

    #[test]
    fn container_overshoot_clamps_or_starts_over() {
        let prev = usage(0, 0, 0);
        let over = usage(1_050_000, 1_000_000, 0);
        let (_, _, total) =
            container_utilisation(&prev, &over, Duration::from_secs(1), 1.0).expect("clamped");
        assert_eq!(total, 100.0);
        let reset = usage(2_000_000, 1_000_000, 0);
        assert_eq!(
            container_utilisation(&prev, &reset, Duration::from_secs(1), 1.0),
            None
        );
        // Backwards (a new cgroup under the same id) and no elapsed time.
        assert_eq!(
            container_utilisation(&over, &prev, Duration::from_secs(1), 1.0),
            None
        );
        assert_eq!(
            container_utilisation(&prev, &over, Duration::ZERO, 1.0),
            None
        );
    }

    #[test]
    fn container_intervals_last_at_least_a_second() {
        let t0 = Instant::now();
        let mut state = ContainerCpu {
            last: usage(0, 0, 0),
            at: t0,
            util: None,
        };
        state.advance(
            usage(100_000, 100_000, 0),
            t0 + Duration::from_millis(500),
            1.0,
        );
        assert_eq!(state.util, None, "too soon");
        assert_eq!(state.last, usage(0, 0, 0));
        state.advance(
            usage(800_000, 600_000, 100_000),
            t0 + Duration::from_secs(2),
            1.0,
        );
        assert_eq!(state.util, Some((30.0, 5.0, 40.0)));
        // An impossible interval keeps the last values and starts over from its reading.
        let t2 = t0 + Duration::from_secs(3);
        state.advance(usage(9_000_000, 600_000, 100_000), t2, 1.0);
        assert_eq!(state.util, Some((30.0, 5.0, 40.0)));
        assert_eq!((state.last.usage_us, state.at), (9_000_000, t2));
    }

    #[test]
    fn no_cpu_line_is_an_error() {
        assert!(procfs::parse_stat_cpu("intr 1 2 3\n").is_err());
    }
}
