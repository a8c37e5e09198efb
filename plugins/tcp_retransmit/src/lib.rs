//! `tcp_retransmit`: every TCP retransmission the kernel traces (`tcp/tcp_retransmit_skb`,
//! `tcp/tcp_retransmit_synack`, and the tail loss probe through a kprobe on
//! `tcp_send_loss_probe` where kprobes exist and `enable_tlp` is set), with the connection's
//! addresses, ports, state, congestion state and HUATUO's phase and reason classification,
//! rate-limited in the kernel and attributed to the container of the socket's network
//! namespace. Metrics: retransmits by event type, counted in the kernel for every one,
//! including those the rate limit kept out of the event stream.

use std::net::{Ipv4Addr, Ipv6Addr};

use kpulse_sdk::bpf::{self, Attach, Global, Record};
use kpulse_sdk::prelude::*;
use kpulse_sdk::records::{
    KP_TCP_RETRANS_NR, KP_TCP_RETRANS_SKB, KP_TCP_RETRANS_SYNACK, KP_TCP_RETRANS_TLP,
    TcpRetransmitEvent,
};
use serde::{Deserialize, Serialize};

const OBJECT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../ebpf/build/tcp_retransmit.bpf.o"
));

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// `[plugins.tcp_retransmit]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Events per second kept by the in-kernel rate limit, 0 = no limit (HUATUO
    /// `MaxEventsPerSecond`: 100). Retransmits over the limit are still counted.
    max_events_per_second: u64,
    /// Also trace tail loss probes (HUATUO `EnableTLP`, off by default): a kprobe on
    /// `tcp_send_loss_probe`, so only where the kernel has kprobes.
    enable_tlp: bool,
    /// `drop_location`: a drop of the same flow (either direction) at most this long before
    /// the retransmit is reported with it (HUATUO: dropwatch's events of the last 2 s).
    /// Adds a hook on `skb/kfree_skb`, which runs on drops only; 0 = off, not attached.
    drop_window_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_events_per_second: 100,
            enable_tlp: false,
            drop_window_ms: 2000,
        }
    }
}

struct TcpRetransmit {
    settings: Settings,
    object: Option<bpf::Object>,
    /// Whether the TLP kprobe is attached (false when off or not supported).
    tlp_attached: bool,
    events: u64,
}

/// One retransmission: HUATUO's `TCPRetransmitTracing` fields that the kernel hooks give.
#[derive(Debug, Serialize, PartialEq)]
struct Retransmit {
    /// `tcp_retransmit_skb`, `tcp_retransmit_synack` or `tcp_send_loss_probe`.
    event_type: &'static str,
    /// `connect`, `data` or `close`.
    phase: &'static str,
    /// `RTO`, `fast_retransmit`, `TLP` or `unknown`.
    tcp_reason: &'static str,
    /// Fast retransmit on a connection that has seen reordering or DSACKs (may be spurious).
    reorder_prone: bool,
    tcp_state: &'static str,
    tcp_saddr: String,
    tcp_daddr: String,
    tcp_sport: u16,
    tcp_dport: u16,
    tcp_seq: u32,
    tcp_ack_seq: u32,
    #[serde(skip_serializing_if = "is_zero")]
    tcp_end_seq: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    tcp_flags: String,
    /// `icsk_ca_state`: 0 Open, 1 Disorder, 2 CWR, 3 Recovery, 4 Loss.
    ca_state: u8,
    icsk_retransmits: u8,
    icsk_pending: u8,
    reord_seen: u32,
    dsack_dups: u32,
    /// The retransmit's result (`tcp_retransmit_skb` on 6.x kernels), 0 = sent.
    err: i32,
    #[serde(skip_serializing_if = "String::is_empty")]
    skb_addr: String,
    comm: String,
    pid: u32,
    tgid: u32,
    cpu: u32,
    net_namespace_inum: u32,
    #[serde(skip_serializing_if = "is_zero_u64")]
    net_namespace_cookie: u64,
    /// Where the kernel last dropped a segment of this flow (either direction) within
    /// `drop_window_ms` before the retransmit (`symbol+0xoff`); empty if none was seen.
    #[serde(skip_serializing_if = "String::is_empty")]
    drop_location: String,
    /// That drop's `enum skb_drop_reason` value (0: none seen, or a kernel without reasons).
    #[serde(skip_serializing_if = "is_zero")]
    drop_reason_code: u32,
    /// How long before the retransmit the drop was, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    drop_age_ms: Option<f64>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

kpulse_sdk::register!(TcpRetransmit {
    name: "tcp_retransmit",
    version: "0.1.0",
    interval: 10,
    kinds: [tracing, metric],
    capabilities: ["bpf", "containers", "kallsyms"],
    summary: "TCP retransmissions with addresses, state and reason (tcp/tcp_retransmit_*)",
});

impl Plugin for TcpRetransmit {
    fn init(config: Config) -> Result<Self> {
        Ok(TcpRetransmit {
            settings: config.parse()?,
            object: None,
            tlp_attached: false,
            events: 0,
        })
    }
}

impl Tracing for TcpRetransmit {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        let object = bpf::Object::load(
            OBJECT,
            &[
                Global::u64("max_events_per_second", self.settings.max_events_per_second),
                Global::u32("ratelimit_nr_cpus", bpf::ratelimit_nr_cpus()),
                Global::u64(
                    "drop_window_ns",
                    self.settings.drop_window_ms.saturating_mul(1_000_000),
                ),
            ],
        )?;
        if self.settings.drop_window_ms > 0 {
            object.attach("retrans_drop", Attach::tracepoint("skb", "kfree_skb"))?;
        }
        object.attach(
            "retrans_skb",
            Attach::tracepoint("tcp", "tcp_retransmit_skb"),
        )?;
        object.attach(
            "retrans_synack",
            Attach::tracepoint("tcp", "tcp_retransmit_synack"),
        )?;
        if self.settings.enable_tlp {
            match object.attach(
                "retrans_tlp",
                Attach::Kprobe("tcp_send_loss_probe".to_owned()),
            ) {
                Ok(()) => self.tlp_attached = true,
                // No kprobes on this kernel: the tracepoints still run (HUATUO has no
                // other hook for TLP either).
                Err(err) if err.is_not_supported() => {
                    log::info(&format!("TLP not traced: {err}"));
                }
                Err(err) => return Err(err),
            }
        }
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
        let mut retransmits: Vec<Retransmit> = records.map(decode).collect();
        symbolize_drops(&mut retransmits);
        let keys: Vec<containers::Key> = retransmits
            .iter()
            .map(|r| containers::Key::NetnsInum(r.net_namespace_inum))
            .collect();
        let owners = containers::attribute(&keys);
        for (retransmit, owner) in retransmits.iter().zip(&owners) {
            storage::save("tcp_retransmit", owner, storage::now(), retransmit)?;
            self.events += 1;
        }
        Ok(())
    }
}

impl Collector for TcpRetransmit {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mut metrics = vec![
            metric::counter(
                "events",
                self.events as f64,
                "Retransmit events saved (after the rate limit).",
            ),
            metric::gauge(
                "tlp_attached",
                f64::from(u8::from(self.tlp_attached)),
                "1 if tail loss probes are traced (enable_tlp and a kernel with kprobes).",
            ),
        ];
        if let Some(object) = &self.object {
            for source in [
                KP_TCP_RETRANS_SKB,
                KP_TCP_RETRANS_SYNACK,
                KP_TCP_RETRANS_TLP,
            ] {
                debug_assert!(source < KP_TCP_RETRANS_NR);
                let count = object
                    .lookup("retransmits", &source.to_le_bytes())?
                    .map_or(0, |v| bpf::sum_percpu_u64(&v));
                metrics.push(
                    metric::counter(
                        "retransmits",
                        count as f64,
                        "TCP retransmits by event type, every one counted in the kernel.",
                    )
                    .label("event_type", event_type(source)),
                );
            }
            metrics.push(metric::counter(
                "lost",
                object.stat(bpf::Stat::RingFull)? as f64,
                "Retransmit events lost in the kernel (ring buffer full).",
            ));
        }
        Ok(metrics)
    }
}

/// `struct kp_tcp_retransmit_event` (ebpf/include/kpulse_events.h) as a document.
fn decode(r: Record<'_>) -> Retransmit {
    let e = TcpRetransmitEvent::parse_padded(r.0);
    let h = &e.hdr;
    let source = u32::from(e.source);
    let flags = if source == KP_TCP_RETRANS_SYNACK {
        // A SYN-ACK retransmit has no skb at the hook: its flags are known.
        0x12
    } else {
        e.tcp_flags
    };
    let phase = phase(e.state, flags);
    Retransmit {
        event_type: event_type(source),
        phase,
        tcp_reason: reason(source, e.ca_state, phase),
        reorder_prone: e.ca_state == TCP_CA_RECOVERY && (e.reord_seen > 0 || e.dsack_dups > 0),
        tcp_state: state_name(e.state),
        tcp_saddr: address(e.family, &e.saddr),
        tcp_daddr: address(e.family, &e.daddr),
        tcp_sport: e.sport,
        tcp_dport: e.dport,
        tcp_seq: e.seq,
        tcp_ack_seq: e.ack_seq,
        tcp_end_seq: e.end_seq,
        tcp_flags: flag_names(flags),
        ca_state: e.ca_state,
        icsk_retransmits: e.retransmits,
        icsk_pending: e.icsk_pending,
        reord_seen: e.reord_seen,
        dsack_dups: e.dsack_dups,
        err: e.err,
        skb_addr: if e.skb_addr == 0 {
            String::new()
        } else {
            format!("0x{:x}", e.skb_addr)
        },
        comm: h.comm_str(),
        pid: h.pid,
        tgid: h.tgid,
        cpu: h.cpu,
        net_namespace_inum: e.netns_inum,
        net_namespace_cookie: e.netns_cookie,
        // Symbolized per batch by `symbolize_drops`.
        drop_location: if e.drop_location == 0 {
            String::new()
        } else {
            format!("0x{:x}", e.drop_location)
        },
        drop_reason_code: e.drop_reason,
        drop_age_ms: (e.drop_location != 0).then_some(f64::from(e.drop_age_us) / 1000.0),
    }
}

/// Replaces the drop locations' addresses with kernel symbols, one host call per batch;
/// where symbolization is refused or fails the addresses stay.
fn symbolize_drops(retransmits: &mut [Retransmit]) {
    let addresses: Vec<u64> = retransmits
        .iter()
        .filter_map(|r| u64::from_str_radix(r.drop_location.strip_prefix("0x")?, 16).ok())
        .collect();
    if addresses.is_empty() {
        return;
    }
    let Ok(symbols) = bpf::symbolize(&addresses) else {
        return;
    };
    let mut symbols = symbols.into_iter();
    for retransmit in retransmits
        .iter_mut()
        .filter(|r| r.drop_location.starts_with("0x"))
    {
        match symbols.next() {
            Some(symbol) => retransmit.drop_location = symbol,
            None => break,
        }
    }
}

fn event_type(source: u32) -> &'static str {
    match source {
        KP_TCP_RETRANS_SKB => "tcp_retransmit_skb",
        KP_TCP_RETRANS_SYNACK => "tcp_retransmit_synack",
        KP_TCP_RETRANS_TLP => "tcp_send_loss_probe",
        _ => "unknown",
    }
}

const TCP_CA_RECOVERY: u8 = 3;
const TCP_CA_LOSS: u8 = 4;
const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_SYN: u8 = 0x02;

/// HUATUO's phase: from the socket state, else from the segment's flags.
fn phase(state: u8, flags: u8) -> &'static str {
    match state {
        2 | 3 | 12 => "connect",           // SYN_SENT, SYN_RECV, NEW_SYN_RECV
        1 => "data",                       // ESTABLISHED
        4 | 5 | 6 | 8 | 9 | 11 => "close", // FIN_WAIT1/2, TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING
        _ if flags & TCP_FLAG_SYN != 0 => "connect",
        _ if flags & TCP_FLAG_FIN != 0 => "close",
        _ => "data",
    }
}

/// HUATUO's reason: Loss state = the retransmission timer fired (RTO), Recovery = fast
/// retransmit; a handshake or close segment is only ever resent by its timer.
fn reason(source: u32, ca_state: u8, phase: &str) -> &'static str {
    if source == KP_TCP_RETRANS_TLP {
        return "TLP";
    }
    if source == KP_TCP_RETRANS_SYNACK {
        return "RTO";
    }
    match ca_state {
        TCP_CA_LOSS => "RTO",
        TCP_CA_RECOVERY => "fast_retransmit",
        _ if phase == "connect" || phase == "close" => "RTO",
        _ => "unknown",
    }
}

/// `sk_state` names as HUATUO writes them (the kernel's without `TCP_`).
fn state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// `ACK|PSH`-style flag names, in the header's bit order.
fn flag_names(flags: u8) -> String {
    const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
    NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| flags & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join("|")
}

/// An address in network byte order; IPv4-mapped IPv6 addresses print as IPv4.
fn address(family: u16, bytes: &[u8; 16]) -> String {
    match family {
        AF_INET => Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string(),
        AF_INET6 => {
            let v6 = Ipv6Addr::from(*bytes);
            v6.to_ipv4_mapped()
                .map_or_else(|| v6.to_string(), |v4| v4.to_string())
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpulse_sdk::records::{EventHeader, KP_EV_TCP_RETRANSMIT};

    fn event(source: u32, state: u8, ca_state: u8, flags: u8) -> TcpRetransmitEvent {
        let mut saddr = [0; 16];
        let mut daddr = [0; 16];
        saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        let mut comm = [0; 16];
        comm[..4].copy_from_slice(b"curl");
        TcpRetransmitEvent {
            hdr: EventHeader {
                kind: KP_EV_TCP_RETRANSMIT,
                pid: 42,
                tgid: 41,
                comm,
                ..Default::default()
            },
            skb_addr: 0xffff_8880_0000_1000,
            netns_inum: 4026531840,
            seq: 1000,
            end_seq: 1100,
            ack_seq: 7,
            sport: 40000,
            dport: 8080,
            family: AF_INET,
            source: source as u8,
            state,
            ca_state,
            tcp_flags: flags,
            saddr,
            daddr,
            ..Default::default()
        }
    }

    fn decoded(e: &TcpRetransmitEvent) -> Retransmit {
        let bytes = e.to_bytes();
        decode(Record(&bytes))
    }

    #[test]
    fn rto_of_an_established_connection() {
        let r = decoded(&event(KP_TCP_RETRANS_SKB, 1, TCP_CA_LOSS, 0x18));
        assert_eq!(r.event_type, "tcp_retransmit_skb");
        assert_eq!(r.phase, "data");
        assert_eq!(r.tcp_reason, "RTO");
        assert_eq!(r.tcp_state, "ESTABLISHED");
        assert_eq!(r.tcp_saddr, "127.0.0.1");
        assert_eq!(r.tcp_daddr, "10.1.2.3");
        assert_eq!((r.tcp_sport, r.tcp_dport), (40000, 8080));
        assert_eq!(r.tcp_flags, "PSH|ACK");
        assert_eq!(r.comm, "curl");
        assert_eq!(r.skb_addr, "0xffff888000001000");
    }

    #[test]
    fn fast_retransmit_and_reorder() {
        let mut e = event(KP_TCP_RETRANS_SKB, 1, TCP_CA_RECOVERY, 0x10);
        assert_eq!(decoded(&e).tcp_reason, "fast_retransmit");
        assert!(!decoded(&e).reorder_prone);
        e.dsack_dups = 2;
        assert!(decoded(&e).reorder_prone);
        // Open state in the data phase: HUATUO cannot tell.
        assert_eq!(
            decoded(&event(KP_TCP_RETRANS_SKB, 1, 0, 0x10)).tcp_reason,
            "unknown"
        );
    }

    #[test]
    fn syn_and_synack_are_connect_phase_rto() {
        let syn = decoded(&event(KP_TCP_RETRANS_SKB, 2, 0, 0x02));
        assert_eq!((syn.phase, syn.tcp_reason), ("connect", "RTO"));
        assert_eq!(syn.tcp_state, "SYN_SENT");
        assert_eq!(syn.tcp_flags, "SYN");
        let mut e = event(KP_TCP_RETRANS_SYNACK, 12, 0, 0);
        e.skb_addr = 0;
        let synack = decoded(&e);
        assert_eq!(synack.event_type, "tcp_retransmit_synack");
        assert_eq!((synack.phase, synack.tcp_reason), ("connect", "RTO"));
        assert_eq!(synack.tcp_flags, "SYN|ACK");
        assert_eq!(synack.skb_addr, "");
        let tlp = decoded(&event(KP_TCP_RETRANS_TLP, 1, 0, 0));
        assert_eq!(tlp.tcp_reason, "TLP");
        let fin = decoded(&event(KP_TCP_RETRANS_SKB, 4, 0, 0x11));
        assert_eq!((fin.phase, fin.tcp_reason), ("close", "RTO"));
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        let mut e = event(KP_TCP_RETRANS_SKB, 1, TCP_CA_LOSS, 0x10);
        e.family = AF_INET6;
        e.saddr = Ipv6Addr::LOCALHOST.octets();
        e.daddr = Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped().octets();
        let r = decoded(&e);
        assert_eq!(r.tcp_saddr, "::1");
        assert_eq!(r.tcp_daddr, "192.0.2.1");
    }

    #[test]
    fn short_record_decodes_to_zeros() {
        let r = decode(Record(&[0; 10]));
        assert_eq!(r.event_type, "unknown");
        assert_eq!(r.tcp_saddr, "");
    }
}
