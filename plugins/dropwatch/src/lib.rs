//! `dropwatch`: every kernel packet drop (`skb/kfree_skb`) with its drop reason, the code
//! location that dropped it, device, netns, protocol and kernel stack (HUATUO's dropwatch),
//! rate-limited in the kernel. Metrics: drops per reason, counted in the kernel for every
//! drop, including those the filters and the rate limit kept out of the event stream.
//!
//! Events are reported for TCP drops only by default, as HUATUO's filter (`"tcp"`) does: a
//! UDP flood overflowing a receiver's queue drops tens of thousands of packets a second,
//! each counted by reason, none worth a stack and a document.

use std::collections::BTreeMap;

use kpulse_sdk::bpf::{self, Attach, Global, Record};
use kpulse_sdk::prelude::*;
use kpulse_sdk::records::DropEvent;
use serde::{Deserialize, Serialize};

const OBJECT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../ebpf/build/dropwatch.bpf.o"
));
const FORMAT: &str = "/sys/kernel/tracing/events/skb/kfree_skb/format";

/// `[plugins.dropwatch]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Events per second kept by the in-kernel rate limit (HUATUO: 100).
    max_events_per_second: u64,
    /// Skip drops with reason NOT_SPECIFIED in the event stream (still counted).
    ignore_not_specified: bool,
    /// IP protocols whose drops are reported as events (names such as `tcp`, `udp`, `icmp`,
    /// `icmpv6`, `sctp`, or numbers 0–255); empty: every drop, IP or not. Every drop is
    /// counted on `/metrics` whatever this says. HUATUO's default filter is `tcp`.
    protocols: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_events_per_second: 100,
            ignore_not_specified: true,
            protocols: vec!["tcp".to_owned()],
        }
    }
}

/// IP protocol numbers by the names `/etc/protocols` gives them.
const PROTOCOL_NAMES: &[(&str, u8)] = &[
    ("icmp", 1),
    ("igmp", 2),
    ("tcp", 6),
    ("udp", 17),
    ("gre", 47),
    ("esp", 50),
    ("ah", 51),
    ("icmpv6", 58),
    ("sctp", 132),
    ("udplite", 136),
];

/// The 256-entry table the BPF program indexes by IP protocol, from `protocols`.
fn protocol_table(protocols: &[String]) -> Result<Vec<u8>> {
    let mut table = vec![0u8; 256];
    for name in protocols {
        let wanted = name.trim().to_ascii_lowercase();
        let number = PROTOCOL_NAMES
            .iter()
            .find(|(known, _)| *known == wanted)
            .map(|(_, number)| *number)
            .or_else(|| wanted.parse::<u8>().ok())
            .ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "protocols: {name:?} is neither a protocol name ({}) nor a number 0-255",
                    PROTOCOL_NAMES
                        .iter()
                        .map(|(known, _)| *known)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        table[usize::from(number)] = 1;
    }
    Ok(table)
}

struct Dropwatch {
    settings: Settings,
    /// `protocols` as the BPF program's table (index: IP protocol number).
    protocol_table: Vec<u8>,
    object: Option<bpf::Object>,
    /// Reason code → name, from the tracepoint's format (this kernel's enum).
    reasons: BTreeMap<u32, String>,
    events: u64,
}

#[derive(Serialize)]
struct Drop<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    drop_reason: String,
    drop_reason_code: u32,
    drop_location: String,
    comm: String,
    pid: u32,
    tgid: u32,
    cpu: u32,
    net_namespace_inum: u32,
    netdev_name: String,
    netdev_ifindex: u32,
    packet_eth_proto: u16,
    packet_len_bytes: u32,
    packet_skb_addr: String,
    stack: Vec<String>,
}

kpulse_sdk::register!(Dropwatch {
    name: "dropwatch",
    version: "0.1.0",
    interval: 10,
    kinds: [tracing, metric],
    capabilities: [
        "bpf",
        "kallsyms",
        "containers",
        "read:/sys/kernel/tracing/events/skb/kfree_skb/format"
    ],
    summary: "Kernel packet drops with reason, location and stack (skb/kfree_skb)",
});

impl Plugin for Dropwatch {
    fn init(config: Config) -> Result<Self> {
        let settings: Settings = config.parse()?;
        Ok(Dropwatch {
            protocol_table: protocol_table(&settings.protocols)?,
            settings,
            object: None,
            reasons: BTreeMap::new(),
            events: 0,
        })
    }
}

impl Tracing for Dropwatch {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        self.reasons = fs::read_to_string(FORMAT)
            .map(|f| parse_reasons(&f))
            .unwrap_or_default();
        let object = bpf::Object::load(
            OBJECT,
            &[
                Global::u64("max_events_per_second", self.settings.max_events_per_second),
                Global::u32("ratelimit_nr_cpus", bpf::ratelimit_nr_cpus()),
                Global::u32(
                    "ignore_reason_not_specified",
                    u32::from(self.settings.ignore_not_specified),
                ),
                Global::u32(
                    "filter_protocols",
                    u32::from(!self.settings.protocols.is_empty()),
                ),
                Global::bytes("report_protocols", self.protocol_table.clone()),
            ],
        )?;
        object.attach("kfree_skb", Attach::tracepoint("skb", "kfree_skb"))?;
        object.subscribe("events")?;
        self.object = Some(object);
        Ok(())
    }

    fn on_events(
        &mut self,
        _ctx: &mut Context,
        _subscription: u64,
        records: bpf::Records<'_>,
    ) -> Result<()> {
        let drops: Vec<Drop<'static>> = records.map(|r| self.decode(r)).collect();
        let keys: Vec<containers::Key> = drops
            .iter()
            .map(|d| containers::Key::NetnsInum(d.net_namespace_inum))
            .collect();
        let owners = containers::attribute(&keys);
        for (drop, owner) in drops.iter().zip(&owners) {
            storage::save("dropwatch", owner, storage::now(), drop)?;
            self.events += 1;
        }
        Ok(())
    }
}

impl Dropwatch {
    fn decode(&self, r: Record<'_>) -> Drop<'static> {
        let e = DropEvent::parse_padded(r.0);
        let h = &e.hdr;
        let reason = e.reason;
        let depth = (e.stack_depth as usize).min(e.stack.len());
        let mut addresses = vec![e.location];
        addresses.extend_from_slice(&e.stack[..depth]);
        let mut symbols = bpf::symbolize(&addresses)
            .unwrap_or_else(|_| addresses.iter().map(|a| format!("0x{a:x}")).collect());
        let location = if symbols.is_empty() {
            String::new()
        } else {
            symbols.remove(0)
        };
        Drop {
            kind: "software",
            drop_reason: self.reason_name(reason),
            drop_reason_code: reason,
            drop_location: location,
            comm: h.comm_str(),
            pid: h.pid,
            tgid: h.tgid,
            cpu: h.cpu,
            net_namespace_inum: e.netns_inum,
            netdev_name: e.ifname_str(),
            netdev_ifindex: e.ifindex,
            packet_eth_proto: e.protocol,
            packet_len_bytes: e.len,
            packet_skb_addr: format!("0x{:x}", e.skb_addr),
            stack: symbols,
        }
    }

    fn reason_name(&self, code: u32) -> String {
        self.reasons
            .get(&code)
            .cloned()
            .unwrap_or_else(|| format!("REASON_{code}"))
    }
}

impl Collector for Dropwatch {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mut metrics = vec![metric::counter(
            "events",
            self.events as f64,
            "Drop events saved (after the filters and the rate limit).",
        )];
        if let Some(object) = &self.object {
            for (key, value) in object.entries("drop_reasons")? {
                let code = u32::from_le_bytes([key[0], key[1], key[2], key[3]]);
                let count = bpf::sum_percpu_u64(&value);
                metrics.push(
                    metric::counter("drops", count as f64, "Kernel packet drops by reason.")
                        .label("reason", self.reason_name(code)),
                );
            }
        }
        Ok(metrics)
    }
}

/// `{ 3, "NO_SOCKET" }` pairs from the tracepoint's `print fmt`.
fn parse_reasons(format: &str) -> BTreeMap<u32, String> {
    let mut reasons = BTreeMap::new();
    let Some(symbolic) = format.split("__print_symbolic").nth(1) else {
        return reasons;
    };
    for pair in symbolic.split('{').skip(1) {
        let Some((code, rest)) = pair.split_once(',') else {
            continue;
        };
        let name = rest.split('"').nth(1);
        if let (Ok(code), Some(name)) = (code.trim().parse::<u32>(), name) {
            reasons.insert(code, name.to_owned());
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_from_format() {
        let f = r#"print fmt: "reason: %s", __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" })"#;
        let r = parse_reasons(f);
        assert_eq!(r.get(&3).map(String::as_str), Some("NO_SOCKET"));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn protocols_by_name_or_number() {
        let table = protocol_table(&["TCP".to_owned(), "17".to_owned(), "icmpv6".to_owned()])
            .expect("known names and a number");
        let set: Vec<usize> = (0..256).filter(|&n| table[n] != 0).collect();
        assert_eq!(set, [6, 17, 58]);
        assert!(
            protocol_table(&[])
                .expect("empty is valid")
                .iter()
                .all(|&b| b == 0)
        );
        let err = protocol_table(&["tpc".to_owned()])
            .expect_err("a typo is refused")
            .to_string();
        assert!(err.contains("\"tpc\"") && err.contains("udp"), "{err}");
        assert!(protocol_table(&["256".to_owned()]).is_err());
    }
}
