//! `tcp_memory`: TCP socket memory against the kernel's hard limit, under HUATUO's names
//! (`huatuo_bamai_tcp_memory_usage_percent` with `prefix = "huatuo_bamai"`): gauges
//! `usage_pages` (`TCP: mem` of `/proc/net/sockstat`), `usage_bytes` (× the kernel's page
//! size), `limit_pages` (the third value of `net.ipv4.tcp_mem`) and `usage_percent`.
//!
//! `usage_percent` is `usage_pages / limit_pages` as HUATUO computes it: a ratio from 0 to 1
//! despite its name, kept so that HUATUO's alerts and panels read the same values.
//! `inactive` on kernels without `/proc/sys/net/ipv4/tcp_mem`. Host only, as in HUATUO.

use kpulse_sdk::prelude::*;

const TCP_MEM: &str = "/proc/sys/net/ipv4/tcp_mem";

struct TcpMemory {
    page_size: u64,
}

kpulse_sdk::register!(TcpMemory {
    name: "tcp_memory",
    kinds: [metric],
    capabilities: [
        "read:/proc/net/sockstat",
        "read:/proc/sys/net/ipv4/tcp_mem",
        "read:/proc/meminfo",
        "read:/proc/vmstat",
    ],
    summary: "TCP memory usage against net.ipv4.tcp_mem, HUATUO's tcp_memory",
});

impl Plugin for TcpMemory {
    fn init(config: Config) -> Result<Self> {
        if let Some(key) = config.keys().first() {
            return Err(Error::InvalidConfig(format!(
                "this plugin takes no settings (got {key})"
            )));
        }
        match fs::read_to_string(TCP_MEM) {
            Ok(_) => {}
            Err(err) if err.is_not_found() => return Err(Error::NotSupported(format!("{err}"))),
            Err(err) => return Err(err),
        }
        Ok(TcpMemory {
            page_size: procfs::page_size()?,
        })
    }
}

/// `(usage_pages, limit_pages)` from `/proc/net/sockstat` and `tcp_mem`.
fn parse(sockstat: &str, tcp_mem: &str) -> Result<(u64, u64)> {
    let (lines, _) = procfs::parse_sockstat(sockstat);
    let pages = lines
        .iter()
        .find(|(label, _)| label == "TCP")
        .and_then(|(_, pairs)| pairs.iter().find(|(k, _)| k == "mem"))
        .map(|(_, v)| *v)
        .ok_or_else(|| Error::msg("no `TCP: ... mem N` in /proc/net/sockstat"))?;
    let limit = tcp_mem
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::msg(format!("malformed {TCP_MEM}: {:?}", tcp_mem.trim())))?;
    Ok((pages, limit))
}

impl Collector for TcpMemory {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let (pages, limit) = parse(
            &fs::read_to_string("/proc/net/sockstat")?,
            &fs::read_to_string(TCP_MEM)?,
        )?;
        let ratio = if limit > 0 {
            pages as f64 / limit as f64
        } else {
            0.0
        };
        Ok(vec![
            metric::gauge("usage_pages", pages as f64, "TCP memory in use, pages."),
            metric::gauge(
                "usage_bytes",
                (pages * self.page_size) as f64,
                "TCP memory in use, bytes.",
            ),
            metric::gauge(
                "limit_pages",
                limit as f64,
                "TCP memory hard limit (net.ipv4.tcp_mem[2]), pages.",
            ),
            metric::gauge(
                "usage_percent",
                ratio,
                "TCP memory in use over the limit (a ratio, 0 to 1, as HUATUO reports it).",
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_limit() {
        let sockstat =
            "sockets: used 1\nTCP: inuse 5 orphan 0 tw 2 alloc 7 mem 12\nUDP: inuse 0 mem 1\n";
        assert_eq!(
            parse(sockstat, "92583\t123444\t185166\n").expect("valid"),
            (12, 185166)
        );
        assert!(parse("TCP: inuse 1\n", "1 2 3\n").is_err());
        assert!(parse(sockstat, "1 2\n").is_err());
    }
}
