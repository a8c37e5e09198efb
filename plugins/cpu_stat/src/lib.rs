//! `cpu_stat`: containers' CFS bandwidth statistics from their `cpu.stat`, under HUATUO's
//! names (`huatuo_bamai_cpu_stat_container_{nr_throttled,throttled_time,nr_bursts,
//! burst_time,wait_sum_percent}` with `prefix = "huatuo_bamai"`), for the registry's running
//! `normal` and `sidecar` containers (HUATUO's `ContainersByType(Normal | Sidecar)`).
//!
//! Gauges, as in HUATUO, each exposed only when the container's `cpu.stat` has its field:
//!
//! | name | v1 (`cpu` hierarchy) | v2 (unified) |
//! |---|---|---|
//! | `nr_periods` (kpulse extra) | `nr_periods` | `nr_periods` |
//! | `nr_throttled` | `nr_throttled` | `nr_throttled` |
//! | `throttled_time`, ns | `throttled_time` | `throttled_usec` × 1000 |
//! | `nr_bursts` | `nr_bursts` | `nr_bursts` |
//! | `burst_time`, ns | `burst_time` | `burst_usec` × 1000 |
//! | `wait_sum_percent` | `wait_sum` (needs `kernel.sched_schedstats=1`) | `wait_sum` |
//!
//! `wait_sum_percent` is HUATUO's: the run-queue wait of the interval over wait plus CPU
//! time (`cpuacct.usage`, or `usage_usec` in v2), times 100, recomputed at most once a
//! second; it needs two readings, so it appears from the second scrape that sees the
//! container, and never where `cpu.stat` has no `wait_sum` (the usual case).
//! Without containers (empty registry, `containers` capability denied) the plugin exposes
//! only `malformed_lines_total`, the count of unparsable `cpu.stat` lines it skipped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kpulse_sdk::prelude::*;

#[allow(
    dead_code,
    reason = "shared with cpu_util; this plugin uses part of it"
)]
#[path = "../../cpu_util/src/cgroup.rs"]
mod cgroup;
use cgroup::Registry;

/// HUATUO recomputes `wait_sum_percent` at most once a second.
const MIN_WAIT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct CpuStat {
    registry: Registry,
    waits: BTreeMap<String, Wait>,
    malformed: u64,
}

/// The `cpu.stat` fields HUATUO exports, in nanoseconds for times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Stat {
    nr_periods: Option<u64>,
    nr_throttled: Option<u64>,
    throttled_time_ns: Option<u64>,
    nr_bursts: Option<u64>,
    burst_time_ns: Option<u64>,
    wait_sum_ns: Option<u64>,
}

/// A container's previous run-queue wait reading.
#[derive(Debug, Clone, PartialEq)]
struct Wait {
    wait_sum_ns: u64,
    cpu_ns: u64,
    at: Instant,
    percent: Option<f64>,
}

kpulse_sdk::register!(CpuStat {
    name: "cpu_stat",
    kinds: [metric],
    capabilities: ["read:/sys/fs/cgroup", "containers"],
    summary: "Container CFS throttling and burst statistics (cpu.stat), HUATUO's cpu_stat",
});

/// A time field in ns: the `ns_key` (v1), else `us_key` (v2) × 1000.
fn nanoseconds(values: &BTreeMap<String, u64>, ns_key: &str, us_key: &str) -> Option<u64> {
    values
        .get(ns_key)
        .copied()
        .or_else(|| values.get(us_key).and_then(|us| us.checked_mul(1000)))
}

/// Parses a v1 or v2 `cpu.stat`.
fn parse_stat(text: &str, malformed: &mut u64) -> Stat {
    let values = cgroup::key_values(text, malformed);
    let get = |key: &str| values.get(key).copied();
    Stat {
        nr_periods: get("nr_periods"),
        nr_throttled: get("nr_throttled"),
        throttled_time_ns: nanoseconds(&values, "throttled_time", "throttled_usec"),
        nr_bursts: get("nr_bursts"),
        burst_time_ns: nanoseconds(&values, "burst_time", "burst_usec"),
        wait_sum_ns: get("wait_sum"),
    }
}

/// HUATUO's `calculateWaitPercent`: wait over wait + CPU time of the interval; `None` when a
/// counter went backwards.
fn wait_percent(prev: &Wait, wait_sum_ns: u64, cpu_ns: u64) -> Option<f64> {
    let wait = wait_sum_ns.checked_sub(prev.wait_sum_ns)?;
    let cpu = cpu_ns.checked_sub(prev.cpu_ns)?;
    if wait == 0 && cpu == 0 {
        return Some(0.0);
    }
    Some(wait as f64 * 100.0 / (wait as f64 + cpu as f64))
}

impl Wait {
    /// A new reading at `at`: a new interval once [`MIN_WAIT_INTERVAL`] has passed.
    fn advance(&mut self, wait_sum_ns: u64, cpu_ns: u64, at: Instant) {
        if at.saturating_duration_since(self.at) < MIN_WAIT_INTERVAL {
            return;
        }
        if let Some(percent) = wait_percent(self, wait_sum_ns, cpu_ns) {
            self.percent = Some(percent);
        }
        self.wait_sum_ns = wait_sum_ns;
        self.cpu_ns = cpu_ns;
        self.at = at;
    }
}

/// The samples of one container's `cpu.stat` (without `wait_sum_percent`).
fn stat_metrics(id: &str, stat: &Stat) -> Vec<Metric> {
    [
        (
            "nr_periods",
            stat.nr_periods,
            "Enforcement periods elapsed with a CFS quota (cpu.stat nr_periods; not in HUATUO).",
        ),
        (
            "nr_throttled",
            stat.nr_throttled,
            "Periods in which the container was throttled (cpu.stat nr_throttled).",
        ),
        (
            "throttled_time",
            stat.throttled_time_ns,
            "Time the container was throttled, in ns (v1 throttled_time, v2 throttled_usec x 1000).",
        ),
        (
            "nr_bursts",
            stat.nr_bursts,
            "Periods in which the container used CFS burst (cpu.stat nr_bursts).",
        ),
        (
            "burst_time",
            stat.burst_time_ns,
            "CPU time used beyond the quota by CFS burst, in ns (v1 burst_time, v2 burst_usec x 1000).",
        ),
    ]
    .into_iter()
    .filter_map(|(name, value, help)| {
        value.map(|v| metric::container_gauge(id, name, v as f64, help))
    })
    .collect()
}

impl Collector for CpuStat {
    fn update(&mut self) -> Result<Vec<Metric>> {
        self.registry.refresh();
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for c in self.registry.containers(cgroup::NORMAL_AND_SIDECAR) {
            let Some(dir) = self.registry.dir(c, "cpu") else {
                continue;
            };
            let Some(text) = self.registry.read(&dir, "cpu.stat") else {
                continue;
            };
            let stat = parse_stat(&text, &mut self.malformed);
            out.extend(stat_metrics(&c.id, &stat));
            let Some(wait_sum_ns) = stat.wait_sum_ns else {
                continue;
            };
            let Some(usage) = cgroup::read_cpu_usage(&self.registry, c, &mut self.malformed) else {
                continue;
            };
            let cpu_ns = usage.usage_us.saturating_mul(1000);
            let at = Instant::now();
            seen.push(c.id.clone());
            let wait = self.waits.entry(c.id.clone()).or_insert_with(|| Wait {
                wait_sum_ns,
                cpu_ns,
                at,
                percent: None,
            });
            wait.advance(wait_sum_ns, cpu_ns, at);
            if let Some(percent) = wait.percent {
                out.push(metric::container_gauge(
                    &c.id,
                    "wait_sum_percent",
                    percent,
                    "Share of the container's schedulable time spent waiting on the run queue, \
                     percent (cpu.stat wait_sum; needs kernel.sched_schedstats=1).",
                ));
            }
        }
        self.waits.retain(|id, _| seen.contains(id));
        out.push(metric::counter(
            "malformed_lines",
            self.malformed as f64,
            "Lines of containers' cpu.stat (and cpuacct files) that did not parse and were skipped.",
        ));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "nr_periods 32\nnr_throttled 5\nthrottled_time 123456789\n\
                      nr_bursts 1\nburst_time 2000\n";
    const V1_SCHEDSTATS: &str = "nr_periods 32\nnr_throttled 5\nthrottled_time 123456789\n\
                                 nr_bursts 1\nburst_time 2000\nwait_sum 5000000\n";
    const V2: &str = "usage_usec 900\nuser_usec 600\nsystem_usec 300\nnice_usec 0\n\
                      core_sched.force_idle_usec 0\nnr_periods 10\nnr_throttled 2\n\
                      throttled_usec 5000\nnr_bursts 1\nburst_usec 70\n";
    /// A unified cgroup without the cpu controller: no bandwidth fields at all.
    const V2_BARE: &str = "usage_usec 10462804\nuser_usec 10446855\nsystem_usec 15949\n";

    #[test]
    fn v1_fields_in_ns() {
        let mut m = 0;
        let stat = parse_stat(V1, &mut m);
        assert_eq!(
            stat,
            Stat {
                nr_periods: Some(32),
                nr_throttled: Some(5),
                throttled_time_ns: Some(123_456_789),
                nr_bursts: Some(1),
                burst_time_ns: Some(2000),
                wait_sum_ns: None,
            }
        );
        assert_eq!(
            parse_stat(V1_SCHEDSTATS, &mut m).wait_sum_ns,
            Some(5_000_000)
        );
        assert_eq!(m, 0);
    }

    #[test]
    fn v2_usec_become_ns() {
        let mut m = 0;
        let stat = parse_stat(V2, &mut m);
        assert_eq!(stat.throttled_time_ns, Some(5_000_000));
        assert_eq!(stat.burst_time_ns, Some(70_000));
        assert_eq!(
            (stat.nr_periods, stat.nr_throttled, stat.nr_bursts),
            (Some(10), Some(2), Some(1))
        );
        assert_eq!(stat.wait_sum_ns, None);
        assert_eq!(parse_stat(V2_BARE, &mut m), Stat::default());
        assert_eq!(m, 0);
    }

    #[test]
    fn huatuo_names_only_for_present_fields() {
        let mut m = 0;
        let names = |text: &str, m: &mut u64| -> Vec<String> {
            stat_metrics("c1", &parse_stat(text, m))
                .iter()
                .map(|s| s.name().to_owned())
                .collect()
        };
        assert_eq!(
            names(V1, &mut m),
            [
                "nr_periods",
                "nr_throttled",
                "throttled_time",
                "nr_bursts",
                "burst_time"
            ]
        );
        assert!(names(V2_BARE, &mut m).is_empty());
        // An old kernel without burst fields.
        assert_eq!(
            names("nr_periods 1\nnr_throttled 0\nthrottled_time 0\n", &mut m).len(),
            3
        );
    }

    #[test]
    fn malformed_lines_are_counted() {
        let mut m = 0;
        let stat = parse_stat("nr_periods 3\nnr_throttled x\nbroken\n", &mut m);
        assert_eq!(stat.nr_periods, Some(3));
        assert_eq!(stat.nr_throttled, None);
        assert_eq!(m, 2);
    }

    #[test]
    fn wait_sum_percent_over_intervals() {
        let t0 = Instant::now();
        let mut wait = Wait {
            wait_sum_ns: 1_000,
            cpu_ns: 1_000,
            at: t0,
            percent: None,
        };
        wait.advance(2_000, 2_000, t0 + Duration::from_millis(200));
        assert_eq!(wait.percent, None, "too soon");
        // +1 ms waiting, +3 ms running: 25 %.
        wait.advance(1_001_000, 3_001_000, t0 + Duration::from_secs(2));
        assert_eq!(wait.percent, Some(25.0));
        // Idle interval: 0; a counter going backwards keeps the last value.
        wait.advance(1_001_000, 3_001_000, t0 + Duration::from_secs(4));
        assert_eq!(wait.percent, Some(0.0));
        wait.advance(5, 3_001_000, t0 + Duration::from_secs(6));
        assert_eq!(wait.percent, Some(0.0));
        assert_eq!(wait.wait_sum_ns, 5);
    }
}
