//! Parsers for the common procfs files. Each `parse_*` function works on text (and is unit
//! tested on the host); each reader fetches the file through [`crate::fs`].
//!
//! `/proc/loadavg` and `/proc/diskstats` are parsed by procfs-core (its parsers do no I/O).
//! The rest are written here, because procfs-core either lacks the file (`/proc/net/sockstat`,
//! `/proc/buddyinfo`, cgroup `memory.stat`), keeps fixed fields where the plugins export every
//! key the kernel has (`Meminfo`, `Snmp` without TcpExt), fails the whole file on one bad line
//! where a plugin must keep the other lines and count the bad one (`VmStat`,
//! `InterfaceDeviceStatus`, `KernelStats`, which also insists on `btime` and `ctxt`), or slices
//! `/proc/<pid>/stat` by offsets a malformed line makes panic.

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

/// Parses `/proc/loadavg`: `0.20 0.18 0.12 1/80 11206` (with procfs-core).
pub fn parse_loadavg(text: &str) -> Result<LoadAvg> {
    use procfs_core::FromRead;
    let load = procfs_core::LoadAverage::from_read(text.as_bytes())
        .map_err(|err| Error::msg(format!("malformed /proc/loadavg {:?}: {err}", text.trim())))?;
    // procfs-core keeps the averages as f32; its shortest decimal form is the kernel's two
    // decimals, so going through it gives the f64 node_exporter shows (0.2, not 0.2000000029).
    let widen = |value: f32| value.to_string().parse::<f64>().unwrap_or(f64::from(value));
    Ok(LoadAvg {
        load1: widen(load.one),
        load5: widen(load.five),
        load15: widen(load.fifteen),
        running: u64::from(load.cur),
        total: u64::from(load.max),
        last_pid: u64::from(load.latest_pid),
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
    /// All ticks (guest time is already included in user and nice). Saturates: the
    /// fields come from text, and a huge value must not panic the plugin (found by
    /// fuzz/fuzz_targets/procfs.rs).
    pub fn total(&self) -> u64 {
        [
            self.nice,
            self.system,
            self.idle,
            self.iowait,
            self.irq,
            self.softirq,
            self.steal,
        ]
        .into_iter()
        .fold(self.user, u64::saturating_add)
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
    // A `)` before the first `(` (a truncated or forged line) is malformed, not a slice
    // panic.
    let close = text
        .rfind(')')
        .filter(|&close| close > open)
        .ok_or_else(bad)?;
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

/// [`parse_key_values`] that also counts the non-empty lines it could not parse (a key
/// without a value, or a value that is not an unsigned integer), for plugins that report
/// malformed input instead of dropping it silently.
pub fn parse_key_values_counted(text: &str) -> (BTreeMap<String, u64>, u64) {
    let mut skipped = 0;
    let mut map = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next().and_then(|v| v.parse().ok())) {
            (Some(key), Some(value)) => {
                map.insert(key.to_owned(), value);
            }
            _ => skipped += 1,
        }
    }
    (map, skipped)
}

/// One device line of `/proc/diskstats` (the first 14 fields; the discard and flush
/// fields of newer kernels are not kept). Times are in milliseconds, sizes in 512-byte
/// sectors, as the kernel reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskStat {
    pub major: u32,
    pub minor: u32,
    pub name: String,
    pub reads: u64,
    pub reads_merged: u64,
    pub sectors_read: u64,
    pub read_ms: u64,
    pub writes: u64,
    pub writes_merged: u64,
    pub sectors_written: u64,
    pub write_ms: u64,
    /// I/Os currently in flight (the only field that goes down).
    pub in_progress: u64,
    pub io_ms: u64,
    pub weighted_io_ms: u64,
}

/// Parses `/proc/diskstats` line by line with procfs-core's `DiskStat::from_line`. Returns the
/// devices and the number of non-empty lines skipped because they had fewer than 14 fields or
/// a non-numeric one (one bad line costs that device, not the file).
pub fn parse_diskstats(text: &str) -> (Vec<DiskStat>, u64) {
    let mut skipped = 0;
    let mut disks = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let parsed = procfs_core::DiskStat::from_line(line).ok().and_then(|d| {
            Some(DiskStat {
                major: u32::try_from(d.major).ok()?,
                minor: u32::try_from(d.minor).ok()?,
                name: d.name,
                reads: d.reads,
                reads_merged: d.merged,
                sectors_read: d.sectors_read,
                read_ms: d.time_reading,
                writes: d.writes,
                writes_merged: d.writes_merged,
                sectors_written: d.sectors_written,
                write_ms: d.time_writing,
                in_progress: d.in_progress,
                io_ms: d.time_in_progress,
                weighted_io_ms: d.weighted_time_in_progress,
            })
        });
        match parsed {
            Some(disk) => disks.push(disk),
            None => skipped += 1,
        }
    }
    (disks, skipped)
}

/// Names of the receive columns of `/proc/net/dev`, as HUATUO and node_exporter name them.
pub const NET_DEV_RECEIVE: [&str; 8] = [
    "bytes",
    "packets",
    "errors",
    "dropped",
    "fifo",
    "frame",
    "compressed",
    "multicast",
];
/// Names of the transmit columns of `/proc/net/dev`.
pub const NET_DEV_TRANSMIT: [&str; 8] = [
    "bytes",
    "packets",
    "errors",
    "dropped",
    "fifo",
    "colls",
    "carrier",
    "compressed",
];

/// One interface of `/proc/net/dev`; the columns are in the order of [`NET_DEV_RECEIVE`]
/// and [`NET_DEV_TRANSMIT`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetDev {
    pub name: String,
    pub receive: [u64; 8],
    pub transmit: [u64; 8],
}

/// Parses `/proc/net/dev` (also `/proc/<pid>/net/dev`). The two header lines are not
/// data; any other line that is not `name: 16 numbers` is skipped and counted.
pub fn parse_net_dev(text: &str) -> (Vec<NetDev>, u64) {
    let mut skipped = 0;
    let mut devices = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if line.contains('|') {
            continue; // "Inter-|   Receive ..." and " face |bytes ..."
        }
        let parsed = line.split_once(':').and_then(|(name, rest)| {
            let n: Vec<u64> = rest
                .split_whitespace()
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            let name = name.trim();
            if name.is_empty() || n.len() < 16 {
                return None;
            }
            let mut dev = NetDev {
                name: name.to_owned(),
                ..NetDev::default()
            };
            dev.receive.copy_from_slice(&n[..8]);
            dev.transmit.copy_from_slice(&n[8..16]);
            Some(dev)
        });
        match parsed {
            Some(dev) => devices.push(dev),
            None => skipped += 1,
        }
    }
    (devices, skipped)
}

/// One `Proto: value ...` section of `/proc/net/netstat` or `/proc/net/snmp`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetstatSection {
    /// `Tcp`, `TcpExt`, `IpExt`, `Udp`, ...
    pub protocol: String,
    /// Field name and value, in file order. Values are signed (`Tcp: MaxConn` is -1).
    pub fields: Vec<(String, i64)>,
}

/// Parses `/proc/net/netstat` and `/proc/net/snmp`: pairs of lines, a header
/// `Proto: Name1 Name2 ...` then `Proto: 1 2 ...`. A pair whose second line names another
/// protocol or has another number of columns is skipped and counted as one; a value that is
/// not an integer skips that field and counts one.
pub fn parse_netstat(text: &str) -> (Vec<NetstatSection>, u64) {
    let mut skipped = 0;
    let mut sections = Vec::new();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    while let Some(header) = lines.next() {
        let names: Vec<&str> = header.split_whitespace().collect();
        let Some(protocol) = names.first().and_then(|p| p.strip_suffix(':')) else {
            skipped += 1;
            continue;
        };
        let Some(values) = lines.next() else {
            skipped += 1;
            break;
        };
        let values: Vec<&str> = values.split_whitespace().collect();
        if values.first() != names.first() || values.len() != names.len() {
            skipped += 1;
            continue;
        }
        let mut fields = Vec::with_capacity(names.len() - 1);
        for (name, value) in names.iter().zip(&values).skip(1) {
            match value.parse() {
                Ok(v) => fields.push(((*name).to_owned(), v)),
                Err(_) => skipped += 1,
            }
        }
        sections.push(NetstatSection {
            protocol: protocol.to_owned(),
            fields,
        });
    }
    (sections, skipped)
}

/// One line of `/proc/net/sockstat`: the label (`sockets`, `TCP`, ...) and its `key value`
/// pairs in file order.
pub type SockstatLine = (String, Vec<(String, u64)>);

/// Parses `/proc/net/sockstat` (and `sockstat6`): lines `LABEL: key value key value ...`,
/// e.g. `sockets: used 120`, `TCP: inuse 5 orphan 0 tw 2 alloc 7 mem 1`. Returns the label
/// with its pairs; a line without `:` or with an odd or non-numeric pair is skipped and
/// counted.
pub fn parse_sockstat(text: &str) -> (Vec<SockstatLine>, u64) {
    let mut skipped = 0;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let parsed = line.split_once(':').and_then(|(label, rest)| {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            if label.trim().is_empty() || !parts.len().is_multiple_of(2) {
                return None;
            }
            let pairs = parts
                .chunks(2)
                .map(|kv| Some((kv[0].to_owned(), kv[1].parse().ok()?)))
                .collect::<Option<Vec<_>>>()?;
            Some((label.trim().to_owned(), pairs))
        });
        match parsed {
            Some(entry) => out.push(entry),
            None => skipped += 1,
        }
    }
    (out, skipped)
}

/// One line of `/proc/buddyinfo`: free blocks per order of a NUMA node's zone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuddyZone {
    pub node: String,
    pub zone: String,
    /// `free[order]`: free blocks of 2^order pages.
    pub free: Vec<u64>,
}

/// Parses `/proc/buddyinfo`: `Node 0, zone   Normal   12   5   3 ...`. Lines of another
/// shape are skipped and counted.
pub fn parse_buddyinfo(text: &str) -> (Vec<BuddyZone>, u64) {
    let mut skipped = 0;
    let mut zones = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let parsed = (|| {
            let (node, rest) = line.trim().strip_prefix("Node ")?.split_once(',')?;
            let mut parts = rest.split_whitespace();
            if parts.next()? != "zone" {
                return None;
            }
            let zone = parts.next()?.to_owned();
            let free = parts
                .map(|v| v.parse().ok())
                .collect::<Option<Vec<u64>>>()?;
            let node = node.trim();
            (!node.is_empty() && !free.is_empty()).then(|| BuddyZone {
                node: node.to_owned(),
                zone,
                free,
            })
        })();
        match parsed {
            Some(z) => zones.push(z),
            None => skipped += 1,
        }
    }
    (zones, skipped)
}

/// The kernel's page size in bytes from the same counter in two units: `PageTables` of
/// `/proc/meminfo` (kB) over `nr_page_table_pages` of `/proc/vmstat` (pages), rounded to a
/// power of two. `None` if either is missing or zero. (A guest cannot call `getpagesize`:
/// its own page size is WebAssembly's.)
pub fn page_size_from(
    meminfo: &BTreeMap<String, u64>,
    vmstat: &BTreeMap<String, u64>,
) -> Option<u64> {
    let bytes = *meminfo.get("PageTables")?;
    let pages = *vmstat.get("nr_page_table_pages")?;
    if bytes == 0 || pages == 0 {
        return None;
    }
    // The two reads are not atomic: round the ratio to the nearest power of two.
    let ratio = bytes as f64 / pages as f64;
    Some(2f64.powf(ratio.log2().round()).clamp(1024.0, 1_048_576.0) as u64)
}

/// Reads the kernel's page size with [`page_size_from`] (declare `read:/proc/meminfo` and
/// `read:/proc/vmstat`).
pub fn page_size() -> Result<u64> {
    page_size_from(&meminfo()?, &vmstat()?).ok_or_else(|| {
        Error::msg("no PageTables in /proc/meminfo or nr_page_table_pages in /proc/vmstat")
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
    /// Regressions found by fuzz/fuzz_targets/procfs.rs: input that panicked a parser.
    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        assert!(parse_process_stat("1 )x( S 1").is_err(), "`)` before `(`");
        assert!(parse_process_stat(")(").is_err());
        let max = u64::MAX;
        let cpu = parse_stat_cpu(&format!("cpu  {max} {max} 1 1 1 1 1 1 0 0\n")).expect("valid");
        assert_eq!(cpu.total(), u64::MAX, "saturates instead of overflowing");
    }

    #[test]
    fn key_values_counted() {
        let (m, skipped) = parse_key_values_counted("nr_free_pages 12\nbroken\npgfault x\n\n");
        assert_eq!(m["nr_free_pages"], 12);
        assert_eq!((m.len(), skipped), (1, 2));
    }

    #[test]
    fn diskstats_lines() {
        let text = "   8       0 sda 1000 200 50000 3000 2000 400 80000 6000 50 9000 15000 0 0 0 0 7 8\n\
                    7 0 loop0 1 2 3\n\
                    8 1 sda1 x 0 0 0 0 0 0 0 0 0 0\n\
                  259 0 nvme0n1 1 2 3 4 5 6 7 8 9 10 11\n";
        let (disks, skipped) = parse_diskstats(text);
        assert_eq!(skipped, 2);
        assert_eq!(disks.len(), 2);
        let sda = &disks[0];
        assert_eq!((sda.major, sda.minor, sda.name.as_str()), (8, 0, "sda"));
        assert_eq!(
            (sda.reads, sda.sectors_read, sda.read_ms),
            (1000, 50000, 3000)
        );
        assert_eq!(
            (sda.writes, sda.sectors_written, sda.write_ms),
            (2000, 80000, 6000)
        );
        assert_eq!(
            (sda.in_progress, sda.io_ms, sda.weighted_io_ms),
            (50, 9000, 15000)
        );
        assert_eq!(disks[1].weighted_io_ms, 11);
    }

    #[test]
    fn net_dev_lines() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo: 100 2 0 0 0 0 0 0 100 2 0 0 0 0 0 0\n  \
eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n \
bad: 1 2 3\n \
noc 1 2\n";
        let (devs, skipped) = parse_net_dev(text);
        assert_eq!(skipped, 2);
        assert_eq!(devs.len(), 2);
        assert_eq!(devs[1].name, "eth0");
        assert_eq!(devs[1].receive, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(devs[1].transmit, [9, 10, 11, 12, 13, 14, 15, 16]);
    }

    #[test]
    fn netstat_pairs() {
        let text = "TcpExt: SyncookiesSent ListenDrops\nTcpExt: 3 7\n\
                    Tcp: RtoAlgorithm MaxConn CurrEstab\nTcp: 1 -1 x\n\
                    IpExt: A B\nIpExt: 1\n\
                    Udp: InDatagrams\nIcmp: 5\n";
        let (sections, skipped) = parse_netstat(text);
        // x is one, IpExt's short row one, Udp/Icmp mismatch one.
        assert_eq!(skipped, 3);
        assert_eq!(sections.len(), 2);
        assert_eq!(sections[0].protocol, "TcpExt");
        assert_eq!(sections[0].fields[1], ("ListenDrops".to_owned(), 7));
        assert_eq!(
            sections[1].fields,
            vec![("RtoAlgorithm".to_owned(), 1), ("MaxConn".to_owned(), -1)]
        );
        // A trailing header without values.
        assert_eq!(parse_netstat("Tcp: A\n").1, 1);
    }

    #[test]
    fn sockstat_lines() {
        let text = "sockets: used 120\nTCP: inuse 5 orphan 0 tw 2 alloc 7 mem 1\nUDP: inuse 2 mem\nFRAG: inuse 0 memory 0\njunk\n";
        let (lines, skipped) = parse_sockstat(text);
        assert_eq!(skipped, 2);
        assert_eq!(
            lines[0],
            ("sockets".to_owned(), vec![("used".to_owned(), 120)])
        );
        assert_eq!(lines[1].1.len(), 5);
        assert_eq!(lines[2].0, "FRAG");
    }

    #[test]
    fn buddyinfo_lines() {
        let text = "Node 0, zone      DMA      1      1      0      1\n\
                    Node 0, zone   Normal   4060   2009    x\n\
                    Node 1, zone   Normal   7 8\n\
                    garbage\n";
        let (zones, skipped) = parse_buddyinfo(text);
        assert_eq!(skipped, 2);
        assert_eq!(zones.len(), 2);
        assert_eq!(
            (zones[0].node.as_str(), zones[0].zone.as_str()),
            ("0", "DMA")
        );
        assert_eq!(zones[0].free, vec![1, 1, 0, 1]);
        assert_eq!(zones[1].free, vec![7, 8]);
    }
    #[test]
    fn page_size_ratio() {
        let meminfo = parse_meminfo("PageTables:        8000 kB\n");
        let vmstat = parse_key_values("nr_page_table_pages 2001\n");
        assert_eq!(page_size_from(&meminfo, &vmstat), Some(4096));
        let vmstat64k = parse_key_values("nr_page_table_pages 125\n");
        assert_eq!(page_size_from(&meminfo, &vmstat64k), Some(65536));
        assert_eq!(
            page_size_from(&meminfo, &parse_key_values("nr_page_table_pages 0\n")),
            None
        );
        assert_eq!(page_size_from(&BTreeMap::new(), &vmstat), None);
    }
}
