//! `netstat`: the host's TCP counters, `Tcp` from `/proc/net/snmp` and `TcpExt` from
//! `/proc/net/netstat` (the agent's network namespace), under HUATUO's names
//! (`huatuo_bamai_netstat_TcpExt_ListenDrops`, `huatuo_bamai_netstat_Tcp_CurrEstab` with
//! `prefix = "huatuo_bamai"`), filtered by HUATUO's `Included`/`Excluded` regexes on
//! `<Proto>_<Field>`.
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
//! Malformed line pairs and non-numeric values are skipped and counted in
//! `malformed_lines_total`. Container-level series (`netstat_container_*` from each
//! container's network namespace) are not produced: they wait for the containers interface.

use kpulse_sdk::prelude::*;
use serde::Deserialize;

#[path = "../../memory_vmstat/src/filter.rs"]
mod filter;
use filter::Filter;

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
    malformed: u64,
}

kpulse_sdk::register!(Netstat {
    name: "netstat",
    kinds: [metric],
    capabilities: ["read:/proc/net/netstat", "read:/proc/net/snmp"],
    summary: "Host Tcp/TcpExt counters from /proc/net/snmp and /proc/net/netstat, HUATUO's netstat",
});

impl Plugin for Netstat {
    fn init(config: Config) -> Result<Self> {
        let s: Settings = config.parse()?;
        Ok(Netstat {
            filter: Filter::new(("included", &s.included), ("excluded", &s.excluded))?,
            malformed: 0,
        })
    }
}

impl Netstat {
    fn collect(&mut self, files: &[&str]) -> Vec<Metric> {
        let mut out = Vec::new();
        for text in files {
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
                        out.push(metric::gauge(&key, *value as f64, &help));
                    }
                }
            }
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
        Ok(self.collect(&[&snmp, &netstat]))
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
            malformed: 0,
        }
    }

    #[test]
    fn tcp_sections_only_with_huatuo_names() {
        let out = plugin("", "").collect(&[SNMP, NETSTAT]);
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
        let out = plugin("Tcp_|Listen", "MaxConn").collect(&[SNMP, NETSTAT]);
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
}
