//! The guest SDK's procfs parsers (`guest-sdk/src/procfs.rs`): plugins run them on files a
//! process, a container or a kernel bug may shape (a comm with spaces and parentheses, a
//! device name, a truncated read), so every parser takes any text without a panic, and the
//! counting parsers account for every non-empty line (parsed or skipped).
#![no_main]

use kpulse_sdk::procfs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();
    let _ = procfs::parse_loadavg(text);
    let meminfo = procfs::parse_meminfo(text);
    let _ = procfs::parse_stat_cpu(text).map(|cpu| cpu.total());
    let vmstat = procfs::parse_key_values(text);
    let _ = procfs::page_size_from(&meminfo, &vmstat);
    let _ = procfs::parse_pressure(text);
    let _ = procfs::parse_process_stat(text);
    let non_empty = text.lines().filter(|l| !l.trim().is_empty()).count() as u64;
    let (values, skipped) = procfs::parse_key_values_counted(text);
    assert!(values.len() as u64 + skipped <= non_empty);
    let (disks, skipped) = procfs::parse_diskstats(text);
    assert_eq!(
        disks.len() as u64 + skipped,
        non_empty,
        "diskstats: a line is a disk or skipped"
    );
    let _ = procfs::parse_net_dev(text);
    let _ = procfs::parse_netstat(text);
    let _ = procfs::parse_sockstat(text);
    let _ = procfs::parse_buddyinfo(text);
});
