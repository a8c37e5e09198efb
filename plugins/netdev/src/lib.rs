//! `netdev`: per-interface counters of the host's `/proc/net/dev` (the agent's network
//! namespace), under HUATUO's names and labels (`huatuo_bamai_netdev_receive_bytes_total{device}`
//! with `prefix = "huatuo_bamai"`), filtered by HUATUO's `DeviceIncluded`/`DeviceExcluded`
//! regexes.
//!
//! Counters `receive_{bytes,packets,errors,dropped,fifo,frame,compressed,multicast}_total`
//! and `transmit_{bytes,packets,errors,dropped,fifo,colls,carrier,compressed}_total`.
//!
//! ```toml
//! [plugins.netdev]
//! # Regexes searched anywhere in the device name; empty = no rule (the default: all devices).
//! device_included = ""
//! device_excluded = '^(lo)|(docker\w*)|(veth\w*)$'   # HUATUO's shipped value
//! ```
//!
//! Lines that are not `name: 16 numbers` are skipped and counted in `malformed_lines_total`.
//! HUATUO's netlink mode (`EnableNetlink`, with detailed `*_errors`) is not available: a plugin
//! has no sockets. Container-level series (`netdev_container_*` from each container's
//! network namespace) are not produced: they wait for the containers interface.

use kpulse_sdk::prelude::*;
use kpulse_sdk::procfs::{NET_DEV_RECEIVE, NET_DEV_TRANSMIT, NetDev};
use serde::Deserialize;

#[path = "../../memory_vmstat/src/filter.rs"]
mod filter;
use filter::Filter;

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    device_included: String,
    device_excluded: String,
}

struct Netdev {
    filter: Filter,
    malformed: u64,
}

kpulse_sdk::register!(Netdev {
    name: "netdev",
    kinds: [metric],
    capabilities: ["read:/proc/net/dev"],
    summary: "Per-interface /proc/net/dev counters, regex-filtered like HUATUO's netdev",
});

impl Plugin for Netdev {
    fn init(config: Config) -> Result<Self> {
        let s: Settings = config.parse()?;
        Ok(Netdev {
            filter: Filter::new(
                ("device_included", &s.device_included),
                ("device_excluded", &s.device_excluded),
            )?,
            malformed: 0,
        })
    }
}

fn device_metrics(dev: &NetDev) -> impl Iterator<Item = Metric> + '_ {
    let side = |dir: &'static str, names: [&'static str; 8], values: [u64; 8]| {
        names.into_iter().zip(values).map(move |(stat, value)| {
            let name = format!("{dir}_{stat}");
            let help = format!("Network device statistic {name}.");
            metric::counter(&name, value as f64, &help).label("device", &dev.name)
        })
    };
    side("receive", NET_DEV_RECEIVE, dev.receive).chain(side(
        "transmit",
        NET_DEV_TRANSMIT,
        dev.transmit,
    ))
}

impl Netdev {
    fn collect(&mut self, text: &str) -> Vec<Metric> {
        let (devices, skipped) = procfs::parse_net_dev(text);
        self.malformed += skipped;
        let mut out: Vec<Metric> = devices
            .iter()
            .filter(|dev| self.filter.keeps(&dev.name))
            .flat_map(device_metrics)
            .collect();
        out.push(metric::counter(
            "malformed_lines",
            self.malformed as f64,
            "Lines of /proc/net/dev that did not parse and were skipped.",
        ));
        out
    }
}

impl Collector for Netdev {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let text = fs::read_to_string("/proc/net/dev")?;
        Ok(self.collect(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  100 2 0 0 0 0 0 0  100 2 0 0 0 0 0 0
  eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16
veth1a: 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1
  eth1: 1 2 3
";

    #[test]
    fn huatuo_names_and_default_exclusion() {
        let mut p = Netdev {
            filter: Filter::new(("i", ""), ("e", r"^(lo)|(docker\w*)|(veth\w*)$")).expect("valid"),
            malformed: 0,
        };
        let out = p.collect(NET_DEV);
        assert_eq!(out.len(), 17, "eth0's 16 series and malformed_lines");
        assert_eq!((out[0].name(), out[0].value()), ("receive_bytes", 1.0));
        assert_eq!((out[13].name(), out[13].value()), ("transmit_colls", 14.0));
        assert_eq!(
            (out[14].name(), out[14].value()),
            ("transmit_carrier", 15.0)
        );
        assert_eq!(out[0].labels(), [("device".to_owned(), "eth0".to_owned())]);
        assert_eq!((out[16].name(), out[16].value()), ("malformed_lines", 1.0));
    }
}
