//! Kernel stack symbolization from `/proc/kallsyms`, done by the host so that plugins never
//! read kallsyms themselves (it needs the `kallsyms` capability).
//!
//! The table lives for the agent's lifetime once a plugin first symbolizes, so it is packed:
//! one string holds every name and each symbol is 16 bytes (address, name offset and length,
//! module index). A `(u64, String, String)` per symbol cost about 11 MiB of heap for the
//! ~90,000 text symbols of a distribution kernel; this costs about 3.5 MiB.

use std::sync::OnceLock;

/// One text symbol: where it starts and where its name is in [`Table::names`].
struct Symbol {
    address: u64,
    name_start: u32,
    name_len: u16,
    module: u16,
}

/// Kernel text symbols, sorted by address.
struct Table {
    symbols: Vec<Symbol>,
    /// Every symbol name, back to back.
    names: String,
    /// Module names; index 0 is `vmlinux`, the core kernel.
    modules: Vec<String>,
}

impl Table {
    fn parse(text: &str) -> Self {
        let mut table = Table {
            symbols: Vec::new(),
            names: String::new(),
            modules: vec!["vmlinux".to_owned()],
        };
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(address), Some(kind), Some(name)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(address) = u64::from_str_radix(address, 16) else {
                continue;
            };
            if address == 0 || !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            let (Ok(name_start), Ok(name_len)) =
                (u32::try_from(table.names.len()), u16::try_from(name.len()))
            else {
                continue;
            };
            let module = match parts.next().map(|m| m.trim_matches(['[', ']'])) {
                None => 0,
                // Modules' symbols come grouped, so the last module is nearly always the one.
                Some(module) => match table.modules.iter().rposition(|known| known == module) {
                    Some(index) => index,
                    None => {
                        table.modules.push(module.to_owned());
                        table.modules.len() - 1
                    }
                },
            };
            let Ok(module) = u16::try_from(module) else {
                continue;
            };
            table.names.push_str(name);
            table.symbols.push(Symbol {
                address,
                name_start,
                name_len,
                module,
            });
        }
        table.symbols.sort_unstable_by_key(|symbol| symbol.address);
        table.symbols.shrink_to_fit();
        table.names.shrink_to_fit();
        table
    }

    fn lookup(&self, address: u64) -> Option<(&str, &str, u64)> {
        let index = match self.symbols.partition_point(|s| s.address <= address) {
            0 => return None,
            i => i - 1,
        };
        let symbol = &self.symbols[index];
        let start = symbol.name_start as usize;
        let name = self
            .names
            .get(start..start + usize::from(symbol.name_len))?;
        let module = self.modules.get(usize::from(symbol.module))?;
        Some((name, module, address - symbol.address))
    }
}

/// The table, read from `/proc/kallsyms` once.
fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        Table::parse(&text)
    })
}

/// The function `address` is in, its module, and the offset into it; `None` below the first
/// symbol (or when kallsyms is unreadable or shows zeros without `CAP_SYSLOG`).
pub fn kernel_symbol(address: u64) -> Option<(&'static str, &'static str, u64)> {
    table().lookup(address)
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

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn packed_table_finds_functions_and_modules() {
        let table = Table::parse(
            "ffffffff81000200 T schedule\n\
             0000000000000000 T zeroed\n\
             ffffffff81000100 t start_kernel\n\
             ffffffff82000000 D some_data\n\
             ffffffffc0001000 t xfs_iread\t[xfs]\n\
             ffffffffc0002000 t ext4_read [ext4]\n\
             garbage line\n\
             zzzz T not_hex\n",
        );
        assert_eq!(table.symbols.len(), 4);
        assert_eq!(table.lookup(0xffffffff810000ff), None);
        assert_eq!(
            table.lookup(0xffffffff81000104),
            Some(("start_kernel", "vmlinux", 4))
        );
        assert_eq!(
            table.lookup(0xffffffff81000210),
            Some(("schedule", "vmlinux", 0x10))
        );
        assert_eq!(
            table.lookup(0xffffffffc0001010),
            Some(("xfs_iread", "xfs", 0x10))
        );
        assert_eq!(
            table.lookup(0xffffffffc0002000),
            Some(("ext4_read", "ext4", 0))
        );
        assert_eq!(table.modules, ["vmlinux", "xfs", "ext4"]);
    }
}
