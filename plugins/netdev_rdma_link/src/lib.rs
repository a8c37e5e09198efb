//! `netdev_rdma_link`: the hardware counters of every RDMA port (`rdma statistic show`),
//! from the host's RDMA netlink query (`nldev`, `net` interface), under HUATUO's names
//! (`huatuo_bamai_netdev_rdma_link_<counter>{device,nodeguid,index,num_ports}` with
//! `prefix = "huatuo_bamai"`), as gauges: the counter's own name is the metric name.
//!
//! `index` is the device's RDMA index and `nodeguid` its node GUID as `xxxx:xxxx:xxxx:xxxx`.
//! A device with several ports also gets a `port` label, so its ports' series differ (HUATUO
//! reads one port). Where the kernel has no RDMA netlink (no `ib_core`) or no RDMA device,
//! the plugin is `inactive` (HUATUO's `ErrNotSupported`).

use kpulse_sdk::net::{self, RdmaLink};
use kpulse_sdk::prelude::*;

#[derive(Debug)]
struct NetdevRdmaLink;

kpulse_sdk::register!(NetdevRdmaLink {
    name: "netdev_rdma_link",
    kinds: [metric],
    capabilities: ["net"],
    summary: "RDMA port hardware counters (RDMA netlink), HUATUO's netdev_rdma_link",
});

impl Plugin for NetdevRdmaLink {
    fn init(config: Config) -> Result<Self> {
        if let Some(key) = config.keys().first() {
            return Err(Error::InvalidConfig(format!(
                "netdev_rdma_link has no settings (got `{key}`)"
            )));
        }
        let links = net::rdma_links().map_err(|err| {
            if err.is_not_supported() {
                Error::NotSupported(format!("no RDMA on this host: {err}"))
            } else {
                err
            }
        })?;
        if links.is_empty() {
            return Err(Error::NotSupported(
                "no RDMA device on this host".to_owned(),
            ));
        }
        Ok(NetdevRdmaLink)
    }
}

/// `0x0002c90300a1b2c3` as `0002:c903:00a1:b2c3`, like `rdma link` and HUATUO.
fn node_guid(guid: u64) -> String {
    let hex = format!("{guid:016x}");
    [&hex[0..4], &hex[4..8], &hex[8..12], &hex[12..16]].join(":")
}

/// A counter name as a metric name: `[a-zA-Z0-9_]`, other bytes as `_`.
fn metric_name(counter: &str) -> String {
    let mut name: String = counter
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

fn link_metrics(link: &RdmaLink) -> impl Iterator<Item = Metric> + '_ {
    let guid = node_guid(link.node_guid);
    link.counters.iter().map(move |(port, counter, value)| {
        let m = metric::gauge(
            &metric_name(counter),
            *value as f64,
            "RDMA port hardware counter (rdma statistic).",
        )
        .label("device", &link.name)
        .label("index", link.index.to_string())
        .label("nodeguid", guid.clone())
        .label("num_ports", link.num_ports.to_string());
        if link.num_ports > 1 {
            m.label("port", port.to_string())
        } else {
            m
        }
    })
}

impl Collector for NetdevRdmaLink {
    fn update(&mut self) -> Result<Vec<Metric>> {
        Ok(net::rdma_links()?.iter().flat_map(link_metrics).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_become_labelled_gauges() {
        let link = RdmaLink {
            index: 0,
            name: "mlx5_0".to_owned(),
            node_guid: 0x0002_c903_00a1_b2c3,
            num_ports: 1,
            counters: vec![
                (1, "rx_write_requests".to_owned(), 12),
                (1, "np_cnp-sent".to_owned(), 3),
            ],
        };
        let out: Vec<Metric> = link_metrics(&link).collect();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].name(), "rx_write_requests");
        assert_eq!(out[1].name(), "np_cnp_sent");
        assert!(
            out[0]
                .labels()
                .contains(&("nodeguid".to_owned(), "0002:c903:00a1:b2c3".to_owned()))
        );
        assert!(!out[0].labels().iter().any(|(k, _)| k == "port"));
    }
}
