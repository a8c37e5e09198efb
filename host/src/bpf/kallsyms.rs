//! Kernel stack symbolization from `/proc/kallsyms`, done by the host so that plugins never
//! read kallsyms themselves (it needs the `kallsyms` capability).

use std::sync::OnceLock;

/// Kernel text symbols from `/proc/kallsyms`, loaded once, sorted by address; each with the
/// module it belongs to (`vmlinux` for the core kernel).
fn table() -> &'static [(u64, String, String)] {
    static TABLE: OnceLock<Vec<(u64, String, String)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let mut table: Vec<(u64, String, String)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
                let kind = parts.next()?;
                let name = parts.next()?;
                let module = parts
                    .next()
                    .map(|m| m.trim_matches(['[', ']']).to_owned())
                    .unwrap_or_else(|| "vmlinux".to_owned());
                (addr != 0 && matches!(kind, "t" | "T" | "w" | "W"))
                    .then(|| (addr, name.to_owned(), module))
            })
            .collect();
        table.sort_unstable_by_key(|(addr, _, _)| *addr);
        table
    })
}

/// The function `address` is in, its module, and the offset into it; `None` below the first
/// symbol (or when kallsyms is unreadable or shows zeros without `CAP_SYSLOG`).
pub fn kernel_symbol(address: u64) -> Option<(&'static str, &'static str, u64)> {
    let table = table();
    match table.partition_point(|(a, _, _)| *a <= address) {
        0 => None,
        i => {
            let (base, name, module) = &table[i - 1];
            Some((name, module, address - base))
        }
    }
}

/// `function+0xoff` for each address; unknown addresses give their hex form.
pub fn symbolize(addresses: &[u64]) -> Vec<String> {
    addresses
        .iter()
        .map(|&addr| match kernel_symbol(addr) {
            None => format!("0x{addr:x}"),
            Some((name, _, offset)) => format!("{name}+0x{offset:x}"),
        })
        .collect()
}
