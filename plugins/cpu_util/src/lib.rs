//! `cpu_util`: host CPU utilisation in percent of all CPUs, from the deltas of the `cpu`
//! line of `/proc/stat` between two scrapes, under HUATUO's names (`huatuo_bamai_cpu_util_usr`,
//! `_sys`, `_total` with `prefix = "huatuo_bamai"`).
//!
//! - `usr` = user + nice, `sys` = system + irq + softirq, `total` = usr + sys + steal
//!   (what the root cgroup's `cpu.stat` counts, HUATUO's host source), each divided by all
//!   ticks of the interval (idle and iowait included), times 100.
//! - Like HUATUO, the values are recomputed only once at least [`MIN_DELTA_TICKS`] ticks
//!   have passed since the last computation; a faster scrape repeats the last values. The
//!   first scrape after start reports the utilisation since `init`.
//!
//! Container-level series (`cpu_util_container_{cores,usr,sys,total}`) are not produced:
//! they wait for the containers interface.

use kpulse_sdk::prelude::*;
use kpulse_sdk::procfs::CpuTimes;

/// 100 CPU-ticks (1 CPU-second at `USER_HZ` = 100): a resolution of 1 % or better.
const MIN_DELTA_TICKS: u64 = 100;

struct CpuUtil {
    last: CpuTimes,
    /// `(usr, sys, total)` in percent.
    util: (f64, f64, f64),
}

kpulse_sdk::register!(CpuUtil {
    name: "cpu_util",
    kinds: [metric],
    capabilities: ["read:/proc/stat"],
    summary: "Host CPU utilisation (usr, sys, total percent) from /proc/stat deltas",
});

impl Plugin for CpuUtil {
    fn init(config: Config) -> Result<Self> {
        if let Some(key) = config.keys().first() {
            return Err(Error::InvalidConfig(format!(
                "this plugin takes no settings (got {key})"
            )));
        }
        Ok(CpuUtil {
            last: procfs::stat_cpu()?,
            util: (0.0, 0.0, 0.0),
        })
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

impl Collector for CpuUtil {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let now = procfs::stat_cpu()?;
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
        Ok(vec![
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
        ])
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

    #[test]
    fn no_cpu_line_is_an_error() {
        assert!(procfs::parse_stat_cpu("intr 1 2 3\n").is_err());
    }
}
