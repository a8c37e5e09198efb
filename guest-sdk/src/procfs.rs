//! Parsers for the common procfs files. Each `parse_*` function works on text (and is unit
//! tested on the host); each reader fetches the file through [`crate::fs`].

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::fs;

/// `/proc/loadavg`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadAvg {
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    /// Runnable tasks.
    pub running: u64,
    /// All tasks.
    pub total: u64,
    pub last_pid: u64,
}

/// Parses `/proc/loadavg`: `0.20 0.18 0.12 1/80 11206`.
pub fn parse_loadavg(text: &str) -> Result<LoadAvg> {
    let bad = || Error::msg(format!("malformed /proc/loadavg: {:?}", text.trim()));
    let mut fields = text.split_whitespace();
    let mut float = || {
        fields
            .next()
            .and_then(|f| f.parse::<f64>().ok())
            .ok_or_else(bad)
    };
    let (load1, load5, load15) = (float()?, float()?, float()?);
    let mut fields = text.split_whitespace().skip(3);
    let (running, total) = fields
        .next()
        .and_then(|f| f.split_once('/'))
        .and_then(|(r, t)| Some((r.parse().ok()?, t.parse().ok()?)))
        .ok_or_else(bad)?;
    let last_pid = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    Ok(LoadAvg {
        load1,
        load5,
        load15,
        running,
        total,
        last_pid,
    })
}

/// Reads `/proc/loadavg` (declare `read:/proc/loadavg`).
pub fn loadavg() -> Result<LoadAvg> {
    parse_loadavg(&fs::read_to_string("/proc/loadavg")?)
}

/// Parses `/proc/meminfo` into bytes per key (`kB` values are multiplied by 1024; counts
/// such as `HugePages_Total` are kept as they are).
pub fn parse_meminfo(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let mut parts = rest.split_whitespace();
            let value: u64 = parts.next()?.parse().ok()?;
            let value = match parts.next() {
                Some("kB") => value.saturating_mul(1024),
                _ => value,
            };
            Some((key.trim().to_owned(), value))
        })
        .collect()
}

/// Reads `/proc/meminfo` (declare `read:/proc/meminfo`).
pub fn meminfo() -> Result<BTreeMap<String, u64>> {
    Ok(parse_meminfo(&fs::read_to_string("/proc/meminfo")?))
}

/// Aggregate CPU time from the `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    /// All ticks (guest time is already included in user and nice).
    pub fn total(&self) -> u64 {
        self.user
            + self.nice
            + self.system
            + self.idle
            + self.iowait
            + self.irq
            + self.softirq
            + self.steal
    }
}

/// Parses the `cpu ` line of `/proc/stat`.
pub fn parse_stat_cpu(text: &str) -> Result<CpuTimes> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| Error::msg("no cpu line in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    Ok(CpuTimes {
        user: at(0),
        nice: at(1),
        system: at(2),
        idle: at(3),
        iowait: at(4),
        irq: at(5),
        softirq: at(6),
        steal: at(7),
    })
}

/// Reads aggregate CPU times (declare `read:/proc/stat`).
pub fn stat_cpu() -> Result<CpuTimes> {
    parse_stat_cpu(&fs::read_to_string("/proc/stat")?)
}

/// Parses `key value` files such as `/proc/vmstat` and cgroup `memory.stat`.
pub fn parse_key_values(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let key = parts.next()?;
            let value = parts.next()?.parse().ok()?;
            Some((key.to_owned(), value))
        })
        .collect()
}

/// Reads `/proc/vmstat` (declare `read:/proc/vmstat`).
pub fn vmstat() -> Result<BTreeMap<String, u64>> {
    Ok(parse_key_values(&fs::read_to_string("/proc/vmstat")?))
}

/// One line of a PSI file (`/proc/pressure/*`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressure {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    /// Total stall time in microseconds.
    pub total_us: u64,
}

/// Parses a PSI file into its `some` and (when present) `full` lines.
pub fn parse_pressure(text: &str) -> (Option<Pressure>, Option<Pressure>) {
    let mut some = None;
    let mut full = None;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let which = parts.next();
        let mut p = Pressure::default();
        for part in parts {
            match part.split_once('=') {
                Some(("avg10", v)) => p.avg10 = v.parse().unwrap_or(0.0),
                Some(("avg60", v)) => p.avg60 = v.parse().unwrap_or(0.0),
                Some(("avg300", v)) => p.avg300 = v.parse().unwrap_or(0.0),
                Some(("total", v)) => p.total_us = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        match which {
            Some("some") => some = Some(p),
            Some("full") => full = Some(p),
            _ => {}
        }
    }
    (some, full)
}

/// Fields of `/proc/<pid>/stat` that collectors use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessStat {
    pub pid: u64,
    pub comm: String,
    /// `R`, `S`, `D`, ...
    pub state: char,
    pub ppid: u64,
    pub utime: u64,
    pub stime: u64,
    pub num_threads: u64,
    pub rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`; the command name may contain spaces and parentheses.
pub fn parse_process_stat(text: &str) -> Result<ProcessStat> {
    let bad = || Error::msg("malformed /proc/<pid>/stat");
    let open = text.find('(').ok_or_else(bad)?;
    let close = text.rfind(')').ok_or_else(bad)?;
    let pid = text[..open].trim().parse().map_err(|_| bad())?;
    let comm = text[open + 1..close].to_owned();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let num = |i: usize| rest.get(i).and_then(|f| f.parse().ok()).ok_or_else(bad);
    Ok(ProcessStat {
        pid,
        comm,
        state: rest
            .first()
            .and_then(|s| s.chars().next())
            .ok_or_else(bad)?,
        ppid: num(1)?,
        utime: num(11)?,
        stime: num(12)?,
        num_threads: num(17)?,
        rss_pages: num(21)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadavg() {
        let l = parse_loadavg("0.20 0.18 0.12 1/80 11206\n").expect("valid");
        assert_eq!(
            (l.load1, l.running, l.total, l.last_pid),
            (0.20, 1, 80, 11206)
        );
        assert!(parse_loadavg("garbage").is_err());
    }

    #[test]
    fn meminfo_units() {
        let m = parse_meminfo("MemTotal:       16384 kB\nHugePages_Total:       4\n");
        assert_eq!(m["MemTotal"], 16384 * 1024);
        assert_eq!(m["HugePages_Total"], 4);
    }

    #[test]
    fn stat_cpu_line() {
        let c =
            parse_stat_cpu("cpu  10 1 5 100 2 0 3 0 0 0\ncpu0 1 1 1 1 1 1 1 1\n").expect("valid");
        assert_eq!(c.total(), 121);
        assert_eq!(c.softirq, 3);
    }

    #[test]
    fn pressure_lines() {
        let (some, full) = parse_pressure(
            "some avg10=1.50 avg60=0.00 avg300=0.00 total=123\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
        );
        assert_eq!(some.map(|p| p.total_us), Some(123));
        assert_eq!(full.map(|p| p.total_us), Some(7));
    }

    #[test]
    fn process_stat_with_odd_comm() {
        let s = parse_process_stat(
            "42 (a (b) c) D 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 5 0 100 1000 250 18446744073709551615",
        )
        .expect("valid");
        assert_eq!(s.comm, "a (b) c");
        assert_eq!(s.state, 'D');
        assert_eq!(
            (s.utime, s.stime, s.num_threads, s.rss_pages),
            (7, 3, 5, 250)
        );
    }
}
