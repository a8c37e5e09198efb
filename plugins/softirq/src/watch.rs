//! The zero-cost side of `softirq`: kernel counters that say softirq processing is being
//! delayed, read on a timer, so the per-softirq hooks need only be attached while there is
//! something to catch.
//!
//! - `/proc/net/softnet_stat`: `time_squeeze` (net_rx_action ran out of budget or time with
//!   packets left) and `dropped` (the backlog queue was full), per CPU;
//! - `/proc/<ksoftirqd/N>/schedstat`: how long each CPU's ksoftirqd waited on the run queue:
//!   softirqs deferred to it wait at least that long;
//! - `/proc/stat`: the share of each CPU's time spent in softirq.
//!
//! None of these costs anything per packet: the kernel keeps them anyway.

use std::collections::BTreeMap;

/// One reading of the counters. Absent sources stay empty (a kernel without schedstat, a
/// ksoftirqd that could not be found): they never trip.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reading {
    /// Sum over CPUs of softnet `time_squeeze`.
    pub time_squeeze: u64,
    /// Sum over CPUs of softnet `dropped`.
    pub backlog_drops: u64,
    /// Run-queue wait (ns) of each CPU's ksoftirqd, by CPU.
    pub ksoftirqd_wait_ns: BTreeMap<u32, u64>,
    /// (softirq ticks, all ticks) of each CPU in `/proc/stat`, by CPU.
    pub cpu_ticks: BTreeMap<u32, (u64, u64)>,
}

/// When the counters trip, per poll interval.
#[derive(Debug, Clone, Copy)]
pub struct Triggers {
    pub time_squeeze: u64,
    pub backlog_drops: u64,
    pub ksoftirqd_wait_ns: u64,
    /// Percent of one CPU's time in softirq; 0 = not watched.
    pub softirq_percent: u64,
}

/// Why the hooks were attached: the `cause` label of `triggers_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cause {
    TimeSqueeze,
    BacklogDrops,
    KsoftirqdWait,
    SoftirqTime,
}

impl Cause {
    pub const ALL: [Cause; 4] = [
        Cause::TimeSqueeze,
        Cause::BacklogDrops,
        Cause::KsoftirqdWait,
        Cause::SoftirqTime,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::TimeSqueeze => "time_squeeze",
            Cause::BacklogDrops => "backlog_drops",
            Cause::KsoftirqdWait => "ksoftirqd_wait",
            Cause::SoftirqTime => "softirq_time",
        }
    }
}

/// What tripped between `before` and `after`, with a human summary of each cause.
pub fn tripped(before: &Reading, after: &Reading, t: &Triggers) -> Vec<(Cause, String)> {
    let mut causes = Vec::new();
    let squeeze = after.time_squeeze.saturating_sub(before.time_squeeze);
    if t.time_squeeze > 0 && squeeze >= t.time_squeeze {
        causes.push((Cause::TimeSqueeze, format!("time_squeeze +{squeeze}")));
    }
    let drops = after.backlog_drops.saturating_sub(before.backlog_drops);
    if t.backlog_drops > 0 && drops >= t.backlog_drops {
        causes.push((Cause::BacklogDrops, format!("backlog drops +{drops}")));
    }
    if t.ksoftirqd_wait_ns > 0 {
        let worst = after
            .ksoftirqd_wait_ns
            .iter()
            .filter_map(|(cpu, ns)| {
                let was = before.ksoftirqd_wait_ns.get(cpu)?;
                Some((*cpu, ns.saturating_sub(*was)))
            })
            .max_by_key(|(_, waited)| *waited);
        if let Some((cpu, waited)) = worst.filter(|(_, w)| *w >= t.ksoftirqd_wait_ns) {
            causes.push((
                Cause::KsoftirqdWait,
                format!("ksoftirqd/{cpu} waited {} us to run", waited / 1000),
            ));
        }
    }
    if t.softirq_percent > 0 {
        let worst = after
            .cpu_ticks
            .iter()
            .filter_map(|(cpu, (soft, total))| {
                let (soft0, total0) = before.cpu_ticks.get(cpu)?;
                let total = total.saturating_sub(*total0);
                (total > 0).then(|| (*cpu, soft.saturating_sub(*soft0) * 100 / total))
            })
            .max_by_key(|(_, percent)| *percent);
        if let Some((cpu, percent)) = worst.filter(|(_, p)| *p >= t.softirq_percent) {
            causes.push((
                Cause::SoftirqTime,
                format!("cpu{cpu} spent {percent} % in softirq"),
            ));
        }
    }
    causes
}

/// `/proc/net/softnet_stat`: one line a CPU of hex columns; (time_squeeze, dropped) summed.
pub fn parse_softnet(text: &str) -> (u64, u64) {
    let (mut squeeze, mut dropped) = (0u64, 0u64);
    for line in text.lines() {
        let mut columns = line
            .split_whitespace()
            .map(|c| u64::from_str_radix(c, 16).ok());
        let (_processed, Some(Some(drop)), Some(Some(sq))) =
            (columns.next(), columns.next(), columns.next())
        else {
            continue;
        };
        squeeze = squeeze.saturating_add(sq);
        dropped = dropped.saturating_add(drop);
    }
    (squeeze, dropped)
}

/// `/proc/<pid>/schedstat`: `run_ns wait_ns timeslices` → wait_ns.
pub fn parse_schedstat_wait(text: &str) -> Option<u64> {
    text.split_whitespace().nth(1)?.parse().ok()
}

/// `/proc/stat` `cpuN` lines → (softirq ticks, all ticks) by CPU.
pub fn parse_stat_cpus(text: &str) -> BTreeMap<u32, (u64, u64)> {
    let mut cpus = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields
            .next()
            .and_then(|name| name.strip_prefix("cpu"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let ticks: Vec<u64> = fields.take(8).filter_map(|v| v.parse().ok()).collect();
        if ticks.len() < 7 {
            continue;
        }
        cpus.insert(cpu, (ticks[6], ticks.iter().sum()));
    }
    cpus
}

/// `ksoftirqd/3` → 3.
pub fn ksoftirqd_cpu(comm: &str) -> Option<u32> {
    comm.trim().strip_prefix("ksoftirqd/")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRIGGERS: Triggers = Triggers {
        time_squeeze: 1,
        backlog_drops: 1,
        ksoftirqd_wait_ns: 10_000_000,
        softirq_percent: 50,
    };

    #[test]
    fn parses_softnet_stat() {
        let text = "0000000b 00000001 00000002 00000000\n00001f32 00000000 0000000a 0\nbad line\n";
        assert_eq!(parse_softnet(text), (12, 1));
        assert_eq!(parse_softnet(""), (0, 0));
    }

    #[test]
    fn parses_schedstat_and_stat() {
        assert_eq!(
            parse_schedstat_wait("31954495 244623278 1145\n"),
            Some(244_623_278)
        );
        assert_eq!(parse_schedstat_wait("garbage"), None);
        let stat = "cpu  10 0 10 100 0 0 5 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\ncpu1 1 2\nintr 5\n";
        let cpus = parse_stat_cpus(stat);
        assert_eq!(cpus.len(), 1);
        assert_eq!(cpus[&0], (7, 36));
        assert_eq!(ksoftirqd_cpu("ksoftirqd/12\n"), Some(12));
        assert_eq!(ksoftirqd_cpu("kworker/0:1"), None);
    }

    #[test]
    fn trips_on_each_cause_and_not_when_quiet() {
        let before = Reading {
            time_squeeze: 5,
            backlog_drops: 0,
            ksoftirqd_wait_ns: BTreeMap::from([(0, 1_000), (1, 5_000)]),
            cpu_ticks: BTreeMap::from([(0, (10, 1000)), (1, (10, 1000))]),
        };
        assert!(tripped(&before, &before, &TRIGGERS).is_empty());
        let after = Reading {
            time_squeeze: 6,
            backlog_drops: 2,
            ksoftirqd_wait_ns: BTreeMap::from([(0, 1_000), (1, 20_005_000)]),
            cpu_ticks: BTreeMap::from([(0, (20, 1100)), (1, (80, 1100))]),
        };
        let causes: Vec<Cause> = tripped(&before, &after, &TRIGGERS)
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        assert_eq!(causes, Cause::ALL.to_vec());
        let summary = tripped(&before, &after, &TRIGGERS)[2].1.clone();
        assert_eq!(summary, "ksoftirqd/1 waited 20000 us to run");
        // A counter that went backwards (a CPU hot-unplugged) never trips.
        assert!(tripped(&after, &before, &TRIGGERS).is_empty());
        // 0 disables a trigger.
        let off = Triggers {
            time_squeeze: 0,
            backlog_drops: 0,
            ksoftirqd_wait_ns: 0,
            softirq_percent: 0,
        };
        assert!(tripped(&before, &after, &off).is_empty());
    }
}
