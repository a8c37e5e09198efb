//! `sockstat`: socket counts of the host's `/proc/net/sockstat` (the agent's network
//! namespace), under HUATUO's names (`huatuo_bamai_sockstat_sockets_used`,
//! `huatuo_bamai_sockstat_TCP_inuse`, `..._TCP_mem_bytes` with `prefix = "huatuo_bamai"`).
//!
//! Gauges `sockets_used` and `<PROTO>_<key>` for every `PROTO: key value ...` pair
//! (`TCP_{inuse,orphan,tw,alloc,mem}`, `UDP_{inuse,mem}`, `UDPLITE_inuse`, `RAW_inuse`,
//! `FRAG_{inuse,memory}`), plus `<PROTO>_mem_bytes` = `mem` pages × the kernel's page size.
//! IPv4 only (`sockstat6` is not read), as in HUATUO. Malformed lines are skipped and
//! counted in `malformed_lines_total`. Container-level series (`sockstat_container_*`, without
//! `mem`/`mem_bytes`) are not produced: they wait for the containers interface.

use kpulse_sdk::prelude::*;

struct Sockstat {
    page_size: u64,
    malformed: u64,
}

kpulse_sdk::register!(Sockstat {
    name: "sockstat",
    kinds: [metric],
    capabilities: [
        "read:/proc/net/sockstat",
        "read:/proc/meminfo",
        "read:/proc/vmstat"
    ],
    summary: "Socket counts and memory from /proc/net/sockstat, HUATUO's sockstat",
});

impl Plugin for Sockstat {
    fn init(config: Config) -> Result<Self> {
        if let Some(key) = config.keys().first() {
            return Err(Error::InvalidConfig(format!(
                "this plugin takes no settings (got {key})"
            )));
        }
        Ok(Sockstat {
            page_size: procfs::page_size()?,
            malformed: 0,
        })
    }
}

impl Sockstat {
    fn collect(&mut self, text: &str) -> Vec<Metric> {
        let (lines, skipped) = procfs::parse_sockstat(text);
        self.malformed += skipped;
        let mut out = Vec::new();
        for (label, pairs) in &lines {
            for (key, value) in pairs {
                let v = *value as f64;
                if label == "sockets" {
                    out.push(metric::gauge(
                        &format!("sockets_{key}"),
                        v,
                        "Number of IPv4 sockets in use.",
                    ));
                    continue;
                }
                let help = format!("Number of {label} sockets in state {key}.");
                out.push(metric::gauge(&format!("{label}_{key}"), v, &help));
                if key == "mem" {
                    let help = format!("Memory of {label} sockets, bytes.");
                    out.push(metric::gauge(
                        &format!("{label}_mem_bytes"),
                        v * self.page_size as f64,
                        &help,
                    ));
                }
            }
        }
        out.push(metric::counter(
            "malformed_lines",
            self.malformed as f64,
            "Lines of /proc/net/sockstat that did not parse and were skipped.",
        ));
        out
    }
}

impl Collector for Sockstat {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let text = fs::read_to_string("/proc/net/sockstat")?;
        Ok(self.collect(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huatuo_names() {
        let mut p = Sockstat {
            page_size: 4096,
            malformed: 0,
        };
        let out = p.collect(
            "sockets: used 120\nTCP: inuse 5 orphan 0 tw 2 alloc 7 mem 3\nUDP: inuse 2 mem\nFRAG: inuse 0 memory 0\n",
        );
        let got: Vec<(&str, f64)> = out.iter().map(|m| (m.name(), m.value())).collect();
        assert_eq!(
            got,
            [
                ("sockets_used", 120.0),
                ("TCP_inuse", 5.0),
                ("TCP_orphan", 0.0),
                ("TCP_tw", 2.0),
                ("TCP_alloc", 7.0),
                ("TCP_mem", 3.0),
                ("TCP_mem_bytes", 3.0 * 4096.0),
                ("FRAG_inuse", 0.0),
                ("FRAG_memory", 0.0),
                ("malformed_lines", 1.0),
            ]
        );
    }
}
