//! `netdev`: per-interface counters of the host's `/proc/net/dev` (the agent's network
//! namespace) and of each container's (`/proc/<init pid>/net/dev`), under HUATUO's names and
//! labels (`huatuo_bamai_netdev_receive_bytes_total{device}` and
//! `huatuo_bamai_netdev_container_receive_bytes_total{<container labels>,device}` with
//! `prefix = "huatuo_bamai"`), filtered by HUATUO's `DeviceIncluded`/`DeviceExcluded` regexes
//! (the same for both levels, as in HUATUO).
//!
//! Counters `receive_{bytes,packets,errors,dropped,fifo,frame,compressed,multicast}_total`
//! and `transmit_{bytes,packets,errors,dropped,fifo,colls,carrier,compressed}_total`, and
//! the same under `container_` for every running `normal` container with its own network
//! namespace (HUATUO's `NormalContainers()`; containers of one pod each report the pod's
//! namespace, sandboxes, sidecars and `host_network` containers report nothing: see
//! `src/netns.rs`). A container whose process went away since the registry saw it is
//! skipped. Without the `containers` capability only the host series are produced.
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
//! has no sockets.

use kpulse_sdk::prelude::*;
use kpulse_sdk::procfs::{NET_DEV_RECEIVE, NET_DEV_TRANSMIT, NetDev};
use serde::Deserialize;

#[path = "../../memory_vmstat/src/filter.rs"]
mod filter;
use filter::Filter;

mod netns;
use netns::Netns;

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    device_included: String,
    device_excluded: String,
}

struct Netdev {
    filter: Filter,
    netns: Netns,
    malformed: u64,
}

kpulse_sdk::register!(Netdev {
    name: "netdev",
    kinds: [metric],
    capabilities: ["read:/proc", "containers"],
    summary: "Per-interface /proc/net/dev counters of the host and containers, HUATUO's netdev",
});

impl Plugin for Netdev {
    fn init(config: Config) -> Result<Self> {
        let s: Settings = config.parse()?;
        Ok(Netdev {
            filter: Filter::new(
                ("device_included", &s.device_included),
                ("device_excluded", &s.device_excluded),
            )?,
            netns: Netns::new(),
            malformed: 0,
        })
    }
}

/// The 16 counters of one device; container-level ones when `container` is an id.
fn device_metrics<'a>(
    dev: &'a NetDev,
    container: Option<&'a str>,
) -> impl Iterator<Item = Metric> + 'a {
    let side = move |dir: &'static str, names: [&'static str; 8], values: [u64; 8]| {
        names.into_iter().zip(values).map(move |(stat, value)| {
            let name = format!("{dir}_{stat}");
            let help = format!("Network device statistic {name}.");
            let m = metric::counter(&name, value as f64, &help).label("device", &dev.name);
            match container {
                Some(id) => m.container(id),
                None => m,
            }
        })
    };
    side("receive", NET_DEV_RECEIVE, dev.receive).chain(side(
        "transmit",
        NET_DEV_TRANSMIT,
        dev.transmit,
    ))
}

impl Netdev {
    /// The kept devices of one `net/dev` file, of the host (`container` `None`) or a container.
    fn devices(&mut self, text: &str, container: Option<&str>, out: &mut Vec<Metric>) {
        let (devices, skipped) = procfs::parse_net_dev(text);
        self.malformed += skipped;
        out.extend(
            devices
                .iter()
                .filter(|dev| self.filter.keeps(&dev.name))
                .flat_map(|dev| device_metrics(dev, container)),
        );
    }

    /// The host's devices, each container's (`(id, net/dev text)`), then `malformed_lines`.
    fn collect(&mut self, host: &str, containers: &[(String, String)]) -> Vec<Metric> {
        let mut out = Vec::new();
        self.devices(host, None, &mut out);
        for (id, text) in containers {
            self.devices(text, Some(id), &mut out);
        }
        out.push(metric::counter(
            "malformed_lines",
            self.malformed as f64,
            "Lines of /proc/net/dev (host and containers) that did not parse and were skipped.",
        ));
        out
    }
}

impl Collector for Netdev {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let host = fs::read_to_string("/proc/net/dev")?;
        self.netns.refresh();
        let containers: Vec<(String, String)> = self
            .netns
            .containers()
            .filter_map(|c| {
                let mut files = self.netns.read(c, &["dev"])?;
                Some((c.id.clone(), files.pop()?))
            })
            .collect();
        Ok(self.collect(&host, &containers))
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

    /// Whether `m` is a container-level sample of `id` (`Metric` has no getter for it).
    fn in_container(m: &Metric, id: &str) -> bool {
        m.clone().container(id) == *m
    }

    fn plugin(excluded: &str) -> Netdev {
        Netdev {
            filter: Filter::new(("i", ""), ("e", excluded)).expect("valid"),
            netns: Netns::new(),
            malformed: 0,
        }
    }

    #[test]
    fn huatuo_names_and_default_exclusion() {
        let mut p = plugin(r"^(lo)|(docker\w*)|(veth\w*)$");
        let out = p.collect(NET_DEV, &[]);
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

    #[test]
    fn containers_get_the_same_series_and_filter() {
        let mut p = plugin("^eth1$");
        let container = "Inter-|   Receive |  Transmit\n face |bytes packets|bytes\n    lo: 7 1 0 0 0 0 0 0 7 1 0 0 0 0 0 0\n  eth1: 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1\n";
        let out = p.collect(NET_DEV, &[("ctr1".to_owned(), container.to_owned())]);
        let ctr: Vec<&Metric> = out.iter().filter(|m| in_container(m, "ctr1")).collect();
        assert_eq!(ctr.len(), 16, "lo only: eth1 is excluded in containers too");
        assert_eq!((ctr[0].name(), ctr[0].value()), ("receive_bytes", 7.0));
        assert_eq!(ctr[0].labels(), [("device".to_owned(), "lo".to_owned())]);
        assert_eq!((ctr[8].name(), ctr[8].value()), ("transmit_bytes", 7.0));
        // Host: lo, eth0, veth1a (eth1's line is malformed) = 48, then malformed_lines.
        assert_eq!(out.len(), 48 + 16 + 1);
        assert!(out[..48].iter().all(|m| !in_container(m, "ctr1")));
        assert_eq!(out.last().map(Metric::value), Some(1.0));
    }
}
