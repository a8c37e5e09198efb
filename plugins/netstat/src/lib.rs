//! `netstat`: TCP counters, `Tcp` from `/proc/net/snmp` and `TcpExt` from
//! `/proc/net/netstat`, of the host (the agent's network namespace) and of each container
//! (`/proc/<init pid>/net/{snmp,netstat}`), under HUATUO's names
//! (`huatuo_bamai_netstat_TcpExt_ListenDrops`, `huatuo_bamai_netstat_Tcp_CurrEstab`, and
//! `huatuo_bamai_netstat_container_TcpExt_ListenDrops{<container labels>}` with
//! `prefix = "huatuo_bamai"`), filtered by HUATUO's `Included`/`Excluded` regexes on
//! `<Proto>_<Field>` (the same for both levels, as in HUATUO).
//!
//! Every value is a gauge, as in HUATUO (its dashboards query these names without `_total`;
//! `Tcp_MaxConn` is -1 and `Tcp_CurrEstab` goes down, the rest only grow).
//!
//! ```toml
//! [plugins.netstat]
//! # Regexes searched anywhere in `<Proto>_<Field>`; empty = no rule (the default: all).
//! included = "Tcp_RetransSegs|TcpExt_Listen"
//! excluded = ""
//! ```
//!
//! Container series come for every running `normal` container with its own network
//! namespace (HUATUO's `NormalContainers()`; containers of one pod each report the pod's
//! namespace, sandboxes, sidecars and `host_network` containers report nothing: see
//! `../netdev/src/netns.rs`). A container whose process went away since the registry saw it
//! is skipped. Without the `containers` capability only the host series are produced.
//!
//! Malformed line pairs and non-numeric values (host and containers) are skipped and counted
//! in `malformed_lines_total`.

use kpulse_sdk::prelude::*;
use serde::Deserialize;

#[path = "../../memory_vmstat/src/filter.rs"]
mod filter;
use filter::Filter;

#[path = "../../netdev/src/netns.rs"]
mod netns;
use netns::Netns;

/// HUATUO exports only these sections.
const PROTOCOLS: [&str; 2] = ["Tcp", "TcpExt"];

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    included: String,
    excluded: String,
}

struct Netstat {
    filter: Filter,
    netns: Netns,
    malformed: u64,
}

kpulse_sdk::register!(Netstat {
    name: "netstat",
    kinds: [metric],
    capabilities: ["read:/proc", "containers"],
    summary: "Tcp/TcpExt counters of the host and containers from net/snmp and net/netstat, HUATUO's netstat",
});

impl Plugin for Netstat {
    fn init(config: Config) -> Result<Self> {
        let s: Settings = config.parse()?;
        Ok(Netstat {
            filter: Filter::new(("included", &s.included), ("excluded", &s.excluded))?,
            netns: Netns::new(),
            malformed: 0,
        })
    }
}

impl Netstat {
    /// The kept Tcp/TcpExt values of one namespace's files, of the host (`container` `None`)
    /// or a container.
    fn namespace<S: AsRef<str>>(
        &mut self,
        files: &[S],
        container: Option<&str>,
        out: &mut Vec<Metric>,
    ) {
        for text in files {
            let text = text.as_ref();
            let (sections, skipped) = procfs::parse_netstat(text);
            self.malformed += skipped;
            for section in sections
                .iter()
                .filter(|s| PROTOCOLS.contains(&s.protocol.as_str()))
            {
                for (field, value) in &section.fields {
                    let key = format!("{}_{field}", section.protocol);
                    if self.filter.keeps(&key) {
                        let help = format!("statistic {}{field}.", section.protocol);
                        let m = metric::gauge(&key, *value as f64, &help);
                        out.push(match container {
                            Some(id) => m.container(id),
                            None => m,
                        });
                    }
                }
            }
        }
    }

    /// The host's values (`snmp`, `netstat` texts), each container's (`(id, texts)`), then
    /// `malformed_lines`.
    fn collect(&mut self, host: &[&str], containers: &[(String, Vec<String>)]) -> Vec<Metric> {
        let mut out = Vec::new();
        self.namespace(host, None, &mut out);
        for (id, files) in containers {
            self.namespace(files, Some(id), &mut out);
        }
        out.push(metric::counter(
            "malformed_lines",
            self.malformed as f64,
            "Line pairs or values of /proc/net/{snmp,netstat} that did not parse and were skipped.",
        ));
        out
    }
}

impl Collector for Netstat {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let snmp = fs::read_to_string("/proc/net/snmp")?;
        let netstat = fs::read_to_string("/proc/net/netstat")?;
        self.netns.refresh();
        let containers: Vec<(String, Vec<String>)> = self
            .netns
            .containers()
            .filter_map(|c| Some((c.id.clone(), self.netns.read(c, &["snmp", "netstat"])?)))
            .collect();
        Ok(self.collect(&[&snmp, &netstat], &containers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm MaxConn ActiveOpens CurrEstab\nTcp: 1 -1 42 3\n";
    const NETSTAT: &str = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 5 x\nIpExt: InNoRoutes\nIpExt: 0\n";

    fn plugin(included: &str, excluded: &str) -> Netstat {
        Netstat {
            filter: Filter::new(("i", included), ("e", excluded)).expect("valid"),
            netns: Netns::new(),
            malformed: 0,
        }
    }

    #[test]
    fn tcp_sections_only_with_huatuo_names() {
        let out = plugin("", "").collect(&[SNMP, NETSTAT], &[]);
        let names: Vec<(&str, f64)> = out.iter().map(|m| (m.name(), m.value())).collect();
        assert_eq!(
            names,
            [
                ("Tcp_RtoAlgorithm", 1.0),
                ("Tcp_MaxConn", -1.0),
                ("Tcp_ActiveOpens", 42.0),
                ("Tcp_CurrEstab", 3.0),
                ("TcpExt_SyncookiesSent", 0.0),
                ("TcpExt_ListenOverflows", 5.0),
                ("malformed_lines", 1.0),
            ]
        );
    }

    #[test]
    fn filter_on_proto_and_field() {
        let out = plugin("Tcp_|Listen", "MaxConn").collect(&[SNMP, NETSTAT], &[]);
        let names: Vec<&str> = out.iter().map(Metric::name).collect();
        assert_eq!(
            names,
            [
                "Tcp_RtoAlgorithm",
                "Tcp_ActiveOpens",
                "Tcp_CurrEstab",
                "TcpExt_ListenOverflows",
                "malformed_lines"
            ]
        );
    }

    #[test]
    fn containers_get_the_same_names_and_filter() {
        let files = vec![
            "Tcp: ActiveOpens CurrEstab MaxConn\nTcp: 2 1 -1\n".to_owned(),
            "TcpExt: ListenDrops\nTcpExt: 4\n".to_owned(),
        ];
        let out = plugin("", "MaxConn").collect(&[SNMP, NETSTAT], &[("ctr1".to_owned(), files)]);
        let ctr: Vec<(&str, f64)> = out
            .iter()
            .filter(|m| (*m).clone().container("ctr1") == **m)
            .map(|m| (m.name(), m.value()))
            .collect();
        assert_eq!(
            ctr,
            [
                ("Tcp_ActiveOpens", 2.0),
                ("Tcp_CurrEstab", 1.0),
                ("TcpExt_ListenDrops", 4.0)
            ]
        );
        assert_eq!(
            out.len(),
            5 + 3 + 1,
            "host's 5, the container's 3, malformed_lines"
        );
    }
}
