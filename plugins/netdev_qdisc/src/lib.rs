//! `netdev_qdisc`: the statistics of every device's root qdisc (`tc -s qdisc show`), from the
//! host's rtnetlink dump (`net` interface), under HUATUO's names
//! (`huatuo_bamai_netdev_qdisc_bytes_total{device,kind}` with `prefix = "huatuo_bamai"`).
//!
//! Per root qdisc (parent `TC_H_ROOT`), labels `device` and `kind` (`fq_codel`, `netem`,
//! `mq`, `noqueue`, ...): counters `bytes_total`, `packets_total`, `drops_total`,
//! `requeues_total`, `overlimits_total`, gauges `current_queue_length` (packets) and
//! `backlog` (bytes). Child qdiscs (of `mq`, `htb`, ...) are summed in their root by the
//! kernel and not exported, as in HUATUO. Host network namespace only.
//!
//! ```toml
//! [plugins.netdev_qdisc]
//! # Regexes searched anywhere in the device name; empty = no rule (the default: all devices).
//! device_included = ""
//! device_excluded = ""
//! ```

use kpulse_sdk::net::{self, Qdisc};
use kpulse_sdk::prelude::*;
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

struct NetdevQdisc {
    filter: Filter,
}

kpulse_sdk::register!(NetdevQdisc {
    name: "netdev_qdisc",
    kinds: [metric],
    capabilities: ["net"],
    summary: "Root qdisc bytes, packets, drops, requeues, overlimits, queue length and backlog (rtnetlink), HUATUO's netdev_qdisc",
});

impl Plugin for NetdevQdisc {
    fn init(config: Config) -> Result<Self> {
        let s: Settings = config.parse()?;
        Ok(NetdevQdisc {
            filter: Filter::new(
                ("device_included", &s.device_included),
                ("device_excluded", &s.device_excluded),
            )?,
        })
    }
}

/// The seven series of one root qdisc.
fn qdisc_metrics(q: &Qdisc) -> impl Iterator<Item = Metric> + '_ {
    let counters = [
        ("bytes", q.bytes, "Bytes sent by the device's root qdisc."),
        (
            "packets",
            q.packets,
            "Packets sent by the device's root qdisc.",
        ),
        (
            "drops",
            q.drops,
            "Packets dropped by the device's root qdisc.",
        ),
        (
            "requeues",
            q.requeues,
            "Packets requeued by the device's root qdisc.",
        ),
        (
            "overlimits",
            q.overlimits,
            "Times the device's root qdisc was over its limit (throttled or dropped).",
        ),
    ]
    .into_iter()
    .map(|(name, value, help)| metric::counter(name, value as f64, help));
    let gauges = [
        (
            "current_queue_length",
            q.qlen,
            "Packets queued in the device's root qdisc.",
        ),
        (
            "backlog",
            q.backlog,
            "Bytes queued in the device's root qdisc.",
        ),
    ]
    .into_iter()
    .map(|(name, value, help)| metric::gauge(name, value as f64, help));
    counters
        .chain(gauges)
        .map(|m| m.label("device", &q.device).label("kind", &q.kind))
}

impl NetdevQdisc {
    fn collect(&self, qdiscs: &[Qdisc]) -> Vec<Metric> {
        qdiscs
            .iter()
            // A qdisc whose device went away between the two dumps has no name.
            .filter(|q| q.is_root() && !q.device.is_empty() && self.filter.keeps(&q.device))
            .flat_map(qdisc_metrics)
            .collect()
    }
}

impl Collector for NetdevQdisc {
    fn update(&mut self) -> Result<Vec<Metric>> {
        Ok(self.collect(&net::qdiscs()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qdisc(device: &str, kind: &str, parent: u32, bytes: u64) -> Qdisc {
        Qdisc {
            ifindex: 1,
            device: device.to_owned(),
            kind: kind.to_owned(),
            handle: 0x8001_0000,
            parent,
            bytes,
            packets: 2,
            drops: 3,
            requeues: 4,
            overlimits: 5,
            qlen: 6,
            backlog: 7,
        }
    }

    fn plugin(excluded: &str) -> NetdevQdisc {
        NetdevQdisc {
            filter: Filter::new(("device_included", ""), ("device_excluded", excluded))
                .expect("regex"),
        }
    }

    #[test]
    fn root_qdiscs_only_with_device_and_kind() {
        let out = plugin("").collect(&[
            qdisc("eth0", "mq", net::TC_H_ROOT, 100),
            qdisc("eth0", "fq_codel", 0x8001_0001, 60),
            qdisc("", "noqueue", net::TC_H_ROOT, 0),
        ]);
        assert_eq!(out.len(), 7);
        let bytes = out.iter().find(|m| m.name() == "bytes").expect("bytes");
        assert_eq!(bytes.value(), 100.0);
        assert_eq!(
            bytes.labels(),
            [
                ("device".to_owned(), "eth0".to_owned()),
                ("kind".to_owned(), "mq".to_owned())
            ]
        );
        let backlog = out.iter().find(|m| m.name() == "backlog").expect("backlog");
        assert_eq!(backlog.value(), 7.0);
    }

    #[test]
    fn excluded_devices_are_skipped() {
        let out = plugin("^lo$").collect(&[
            qdisc("lo", "noqueue", net::TC_H_ROOT, 0),
            qdisc("dummy0", "netem", net::TC_H_ROOT, 9),
        ]);
        assert!(out.iter().all(|m| m.labels()[0].1 == "dummy0"));
        assert_eq!(out.len(), 7);
    }
}
