//! `sockstat`: socket counts of the host's `/proc/net/sockstat` (the agent's network
//! namespace) and of each container's (`/proc/<init pid>/net/sockstat`), under HUATUO's names
//! (`huatuo_bamai_sockstat_sockets_used`, `huatuo_bamai_sockstat_TCP_inuse`,
//! `..._TCP_mem_bytes`, `huatuo_bamai_sockstat_container_TCP_inuse{<container labels>}` with
//! `prefix = "huatuo_bamai"`).
//!
//! Gauges `sockets_used` and `<PROTO>_<key>` for every `PROTO: key value ...` pair
//! (`TCP_{inuse,orphan,tw,alloc,mem}`, `UDP_{inuse,mem}`, `UDPLITE_inuse`, `RAW_inuse`,
//! `FRAG_{inuse,memory}`), plus `<PROTO>_mem_bytes` = `mem` pages × the kernel's page size.
//! The container variants (`container_sockets_used`, `container_<PROTO>_<key>`) leave out
//! `mem` and `mem_bytes`, as HUATUO does (socket memory is accounted host-wide). IPv4 only
//! (`sockstat6` is not read), as in HUATUO.
//!
//! Container series come for every running `normal` container with its own network
//! namespace (HUATUO's `NormalContainers()`; containers of one pod each report the pod's
//! namespace, sandboxes, sidecars and `host_network` containers report nothing: see
//! `../netdev/src/netns.rs`). A container whose process went away since the registry saw it
//! is skipped. Without the `containers` capability only the host series are produced.
//! Malformed lines (host and containers) are skipped and counted in `malformed_lines_total`.
//! The plugin takes no settings.

use kpulse_sdk::prelude::*;

#[path = "../../netdev/src/netns.rs"]
mod netns;
use netns::Netns;

struct Sockstat {
    page_size: u64,
    netns: Netns,
    malformed: u64,
}

kpulse_sdk::register!(Sockstat {
    name: "sockstat",
    kinds: [metric],
    capabilities: ["read:/proc", "containers"],
    summary: "Socket counts of the host and containers from net/sockstat, HUATUO's sockstat",
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
            netns: Netns::new(),
            malformed: 0,
        })
    }
}

impl Sockstat {
    /// The samples of one `net/sockstat` file: the host's (`container` `None`), or a
    /// container's without `mem`/`mem_bytes`.
    fn namespace(&mut self, text: &str, container: Option<&str>, out: &mut Vec<Metric>) {
        let (lines, skipped) = procfs::parse_sockstat(text);
        self.malformed += skipped;
        let mut push = |m: Metric| {
            out.push(match container {
                Some(id) => m.container(id),
                None => m,
            })
        };
        for (label, pairs) in &lines {
            for (key, value) in pairs {
                let v = *value as f64;
                if label == "sockets" {
                    push(metric::gauge(
                        &format!("sockets_{key}"),
                        v,
                        "Number of IPv4 sockets in use.",
                    ));
                    continue;
                }
                // mem and mem_bytes are host-only (HUATUO).
                if container.is_some() && key == "mem" {
                    continue;
                }
                let help = format!("Number of {label} sockets in state {key}.");
                push(metric::gauge(&format!("{label}_{key}"), v, &help));
                if key == "mem" {
                    let help = format!("Memory of {label} sockets, bytes.");
                    push(metric::gauge(
                        &format!("{label}_mem_bytes"),
                        v * self.page_size as f64,
                        &help,
                    ));
                }
            }
        }
    }

    /// The host's samples, each container's (`(id, net/sockstat text)`), then
    /// `malformed_lines`.
    fn collect(&mut self, host: &str, containers: &[(String, String)]) -> Vec<Metric> {
        let mut out = Vec::new();
        self.namespace(host, None, &mut out);
        for (id, text) in containers {
            self.namespace(text, Some(id), &mut out);
        }
        out.push(metric::counter(
            "malformed_lines",
            self.malformed as f64,
            "Lines of /proc/net/sockstat (host and containers) that did not parse and were skipped.",
        ));
        out
    }
}

impl Collector for Sockstat {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let host = fs::read_to_string("/proc/net/sockstat")?;
        self.netns.refresh();
        let containers: Vec<(String, String)> = self
            .netns
            .containers()
            .filter_map(|c| {
                let mut files = self.netns.read(c, &["sockstat"])?;
                Some((c.id.clone(), files.pop()?))
            })
            .collect();
        Ok(self.collect(&host, &containers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCKSTAT: &str = "sockets: used 120\nTCP: inuse 5 orphan 0 tw 2 alloc 7 mem 3\nUDP: inuse 2 mem\nFRAG: inuse 0 memory 0\n";

    fn plugin() -> Sockstat {
        Sockstat {
            page_size: 4096,
            netns: Netns::new(),
            malformed: 0,
        }
    }

    #[test]
    fn huatuo_names() {
        let mut p = plugin();
        let out = p.collect(SOCKSTAT, &[]);
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

    #[test]
    fn containers_omit_mem_and_mem_bytes() {
        let mut p = plugin();
        let ctr = "sockets: used 3\nTCP: inuse 1 orphan 0 tw 0 alloc 1 mem 3\nUDP: inuse 0 mem 1\nFRAG: inuse 0 memory 0\n";
        let out = p.collect(SOCKSTAT, &[("ctr1".to_owned(), ctr.to_owned())]);
        let got: Vec<(&str, f64)> = out
            .iter()
            .filter(|m| (*m).clone().container("ctr1") == **m)
            .map(|m| (m.name(), m.value()))
            .collect();
        assert_eq!(
            got,
            [
                ("sockets_used", 3.0),
                ("TCP_inuse", 1.0),
                ("TCP_orphan", 0.0),
                ("TCP_tw", 0.0),
                ("TCP_alloc", 1.0),
                ("UDP_inuse", 0.0),
                ("FRAG_inuse", 0.0),
                ("FRAG_memory", 0.0),
            ]
        );
        assert_eq!(out.len(), 9 + 8 + 1);
    }
}
