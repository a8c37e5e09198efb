//! `arp`: ARP (IPv4 neighbour) entries of the host, under HUATUO's names
//! (`huatuo_bamai_arp_entries{device}`, `huatuo_bamai_arp_total` with
//! `prefix = "huatuo_bamai"`).
//!
//! - `entries{device}` (gauge): lines of `/proc/net/arp` (the agent's network namespace) per
//!   device; a device without entries has no series.
//! - `total` (gauge): the `entries` column of `/proc/net/stat/arp_cache`, the kernel's ARP
//!   table size over all network namespaces (hexadecimal in the file). Left out when the
//!   file is missing.
//!
//! - `container_entries` (gauge, HUATUO's `huatuo_bamai_arp_container_entries` with the
//!   container labels): all lines of the container's `/proc/<init pid>/net/arp`, without a
//!   `device` label, as in HUATUO; 0 when the table is empty.
//!
//! Container series come for every running `normal` container with its own network
//! namespace (HUATUO's `NormalContainers()`; containers of one pod each report the pod's
//! namespace, sandboxes, sidecars and `host_network` containers report nothing: see
//! `../netdev/src/netns.rs`). A container whose process went away since the registry saw it
//! is skipped. Without the `containers` capability only the host series are produced.
//! HUATUO refreshes its ARP numbers every 60 s in the background; here they are read at each
//! collection.
//!
//! Lines that do not parse (fewer than the six columns; host and containers) are skipped and
//! counted in `malformed_lines_total`. The plugin takes no settings.

use std::collections::BTreeMap;

use kpulse_sdk::prelude::*;

#[path = "../../netdev/src/netns.rs"]
mod netns;
use netns::Netns;

struct Arp {
    netns: Netns,
    malformed: u64,
}

kpulse_sdk::register!(Arp {
    name: "arp",
    kinds: [metric],
    capabilities: ["read:/proc", "containers"],
    summary: "ARP entries of the host (per device) and containers, and the ARP table size, HUATUO's arp",
});

impl Plugin for Arp {
    fn init(config: Config) -> Result<Self> {
        if let Some(key) = config.keys().first() {
            return Err(Error::InvalidConfig(format!(
                "this plugin takes no settings (got {key})"
            )));
        }
        Ok(Arp {
            netns: Netns::new(),
            malformed: 0,
        })
    }
}

/// `device -> entries` of `/proc/net/arp`, and the number of malformed lines.
fn parse_arp(text: &str) -> (BTreeMap<String, u64>, u64) {
    let mut devices = BTreeMap::new();
    let mut malformed = 0;
    for line in text.lines() {
        if line.starts_with("IP address") || line.trim().is_empty() {
            continue;
        }
        // IP address, HW type, Flags, HW address, Mask, Device.
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, _, _, _, _, device] => *devices.entry((*device).to_owned()).or_insert(0) += 1,
            _ => malformed += 1,
        }
    }
    (devices, malformed)
}

/// The `entries` column of `/proc/net/stat/arp_cache` (first data line; every line repeats
/// the table's count), or `None` with a malformed count.
fn parse_arp_cache(text: &str) -> (Option<u64>, u64) {
    let mut lines = text.lines();
    let column = lines
        .next()
        .and_then(|header| header.split_whitespace().position(|c| c == "entries"));
    let Some(column) = column else {
        return (None, 1);
    };
    let value = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(column))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok());
    match value {
        Some(v) => (Some(v), 0),
        None => (None, 1),
    }
}

impl Arp {
    /// The host's samples (`arp`, `arp_cache` texts), each container's (`(id, net/arp text)`),
    /// then `malformed_lines`.
    fn collect(
        &mut self,
        arp: &str,
        arp_cache: Option<&str>,
        containers: &[(String, String)],
    ) -> Vec<Metric> {
        let (devices, skipped) = parse_arp(arp);
        self.malformed += skipped;
        let mut out: Vec<Metric> = devices
            .iter()
            .map(|(device, n)| {
                metric::gauge("entries", *n as f64, "ARP entries of the device.")
                    .label("device", device)
            })
            .collect();
        if let Some(text) = arp_cache {
            let (total, skipped) = parse_arp_cache(text);
            self.malformed += skipped;
            if let Some(total) = total {
                out.push(metric::gauge(
                    "total",
                    total as f64,
                    "Entries of the kernel's ARP table, all network namespaces.",
                ));
            }
        }
        for (id, text) in containers {
            let (devices, skipped) = parse_arp(text);
            self.malformed += skipped;
            out.push(metric::container_gauge(
                id,
                "entries",
                devices.values().sum::<u64>() as f64,
                "ARP entries in the container's network namespace.",
            ));
        }
        out.push(metric::counter(
            "malformed_lines",
            self.malformed as f64,
            "Lines of /proc/net/arp and /proc/net/stat/arp_cache that did not parse.",
        ));
        out
    }
}

impl Collector for Arp {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let arp = fs::read_to_string("/proc/net/arp")?;
        let cache = match fs::read_to_string("/proc/net/stat/arp_cache") {
            Ok(text) => Some(text),
            Err(err) if err.is_not_found() => None,
            Err(err) => return Err(err),
        };
        self.netns.refresh();
        let containers: Vec<(String, String)> = self
            .netns
            .containers()
            .filter_map(|c| {
                let mut files = self.netns.read(c, &["arp"])?;
                Some((c.id.clone(), files.pop()?))
            })
            .collect();
        Ok(self.collect(&arp, cache.as_deref(), &containers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARP: &str =
        "IP address       HW type     Flags       HW address            Mask     Device
192.0.2.1        0x1         0x2         02:fc:00:00:00:05     *        eth0
192.0.2.7        0x1         0x0         00:00:00:00:00:00     *        eth0
10.0.0.1         0x1         0x2         02:fc:00:00:00:09     *        eth1
garbage
";

    const ARP_CACHE: &str = "entries  allocs   destroys hash_grows lookups  hits     res_failed rcv_probes_mcast rcv_probes_ucast periodic_gc_runs forced_gc_runs unresolved_discards table_fulls
0000001a 00000005 00000003 00000000   00000004 00000000 00000000   00000000         00000000         0000019d         00000000       00000000            00000000
0000001a 00000001 00000001 00000000   0000000d 00000005 00000000   00000000         00000000         00000000         00000000       00000000            00000000
";

    type Sample = (String, Vec<(String, String)>, f64);

    fn summary(out: &[Metric]) -> Vec<Sample> {
        out.iter()
            .map(|m| (m.name().to_owned(), m.labels().to_vec(), m.value()))
            .collect()
    }

    fn plugin() -> Arp {
        Arp {
            netns: Netns::new(),
            malformed: 0,
        }
    }

    #[test]
    fn huatuo_names_per_device_and_total() {
        let mut p = plugin();
        let out = p.collect(ARP, Some(ARP_CACHE), &[]);
        let dev = |d: &str| vec![("device".to_owned(), d.to_owned())];
        assert_eq!(
            summary(&out),
            [
                ("entries".to_owned(), dev("eth0"), 2.0),
                ("entries".to_owned(), dev("eth1"), 1.0),
                ("total".to_owned(), vec![], 26.0),
                ("malformed_lines".to_owned(), vec![], 1.0),
            ]
        );
        // The count accumulates over scrapes.
        let out = p.collect("", None, &[]);
        assert_eq!(summary(&out), [("malformed_lines".to_owned(), vec![], 1.0)]);
    }

    #[test]
    fn malformed_arp_cache_is_counted_not_fatal() {
        for text in ["", "allocs destroys\n1 2\n", "entries\nzz\n", "entries x\n"] {
            let (total, skipped) = parse_arp_cache(text);
            assert_eq!((total, skipped), (None, 1), "{text:?}");
        }
        assert_eq!(parse_arp_cache("entries\n00000010\n"), (Some(16), 0));
    }

    #[test]
    fn container_entries_without_device() {
        let mut p = plugin();
        let empty =
            "IP address       HW type     Flags       HW address            Mask     Device\n";
        let containers = [
            ("ctr1".to_owned(), ARP.to_owned()),
            ("ctr2".to_owned(), empty.to_owned()),
        ];
        let out = p.collect(ARP, None, &containers);
        let of = |id: &str| -> Vec<Sample> {
            summary(
                &out.iter()
                    .filter(|m| (*m).clone().container(id) == **m)
                    .cloned()
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(of("ctr1"), [("entries".to_owned(), vec![], 3.0)]);
        assert_eq!(of("ctr2"), [("entries".to_owned(), vec![], 0.0)]);
        assert_eq!(
            out.len(),
            2 + 2 + 1,
            "host's 2 devices, 2 containers, malformed_lines"
        );
        assert_eq!(
            out.last().map(Metric::value),
            Some(2.0),
            "host's and ctr1's garbage"
        );
    }
}
