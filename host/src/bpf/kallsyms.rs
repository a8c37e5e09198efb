//! Kernel stack symbolization from `/proc/kallsyms`, done by the host so that plugins never
//! read kallsyms themselves (it needs the `kallsyms` capability).

use std::sync::OnceLock;

/// Kernel symbols from `/proc/kallsyms`, loaded once, sorted by address.
pub fn symbolize(addresses: &[u64]) -> Vec<String> {
    static TABLE: OnceLock<Vec<(u64, String)>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let mut table: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
                let kind = parts.next()?;
                let name = parts.next()?;
                (addr != 0 && matches!(kind, "t" | "T" | "w" | "W"))
                    .then(|| (addr, name.to_owned()))
            })
            .collect();
        table.sort_unstable_by_key(|(addr, _)| *addr);
        table
    });
    addresses
        .iter()
        .map(|&addr| match table.partition_point(|(a, _)| *a <= addr) {
            0 => format!("0x{addr:x}"),
            i => {
                let (base, name) = &table[i - 1];
                format!("{name}+0x{:x}", addr - base)
            }
        })
        .collect()
}
