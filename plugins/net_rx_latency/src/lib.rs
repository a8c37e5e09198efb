//! `net_rx_latency`: packets that took too long from their software RX timestamp
//! (`skb->tstamp`) to three later receive stages (HUATUO's `net_rx_latency`):
//!
//! | stage | tracepoint | HUATUO threshold |
//! |---|---|---|
//! | `RX_STAGE_NETIF` | `net/netif_receive_skb` | Driver2NetRx 5 ms |
//! | `RX_STAGE_TCPV4` | `tcp/tcp_probe` (HUATUO: kprobe `tcp_v4_rcv`) | Driver2TCP 10 ms |
//! | `RX_STAGE_USERCOPY` | `skb/skb_copy_datagram_iovec` | Driver2Userspace 115 ms |
//!
//! Like HUATUO: IPv4/TCP only by default and the host network namespace excluded by default.
//! Metrics: events saved by stage, candidates lost to a full ring buffer.
//!
//! Clocks: `skb->tstamp` is CLOCK_REALTIME and BPF only has CLOCK_MONOTONIC, so the object
//! gets `mono_wall_offset` (REALTIME − MONOTONIC) at load; a timer re-checks it every
//! minute and reloads the object after a wall-clock step.
//!
//! Timestamps: the kernel fills `skb->tstamp` only while some socket has asked for RX
//! software timestamps (HUATUO keeps an `SO_TIMESTAMPING` socket open for that). A wasm
//! guest has no sockets, so the plugin declares the `rx-timestamps` capability and the host
//! keeps one shared such socket open while the plugin holds its BPF object. See
//! `ebpf/README.md`.
//!
//! Cost: the hooks run on every received packet, and the timestamps cost every packet a
//! clock read. With the host network namespace excluded (the default) there is nothing to
//! report until a container with its own network namespace runs, so the plugin attaches
//! nothing (and timestamps stay off) while none does; it looks again every
//! `container_check_seconds`. While one does, `sample_seconds` out of every
//! `sample_period_seconds` duty-cycles the hooks (off by default: HUATUO watches all the
//! time); the `sampled_fraction` gauge then says which share of the time was watched, so
//! counts can be scaled and a missing event is read as "not sampled", not "none".

use std::net::Ipv4Addr;
use std::time::Duration;

use kpulse_sdk::bindings::kpulse::plugin::clock;
use kpulse_sdk::bpf::{self, Attach, Global};
use kpulse_sdk::prelude::*;
use kpulse_sdk::records::{self, NetRxLatencyEvent};
use serde::{Deserialize, Serialize};

const OBJECT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../ebpf/build/net_rx_latency.bpf.o"
));
/// The host's network namespace (that of pid 1), excluded like HUATUO's
/// `ExcludedHostNetnamespace`.
const HOST_NETNS: &str = "/proc/1/ns/net";
/// The agent's own, used when pid 1's is not readable (the kernel wants ptrace access to
/// pid 1): the agent runs in the host network namespace (like HUATUO's `hostNetwork`).
const AGENT_NETNS: &str = "/proc/self/ns/net";

/// `enum kp_rx_stage` 1..=3 → HUATUO's stage names.
const STAGES: [&str; 3] = ["RX_STAGE_NETIF", "RX_STAGE_TCPV4", "RX_STAGE_USERCOPY"];
/// `KP_RX_F_IPV4`: addresses are valid.
const F_IPV4: u8 = records::KP_RX_F_IPV4 as u8;
/// `KP_RX_F_TCP`: ports, sequence numbers are valid.
const F_TCP: u8 = records::KP_RX_F_TCP as u8;
/// How often the REALTIME − MONOTONIC offset is re-checked.
const CLOCK_CHECK: Duration = Duration::from_secs(60);
/// An offset change above this (a wall-clock step, not NTP slew) reloads the object.
const CLOCK_STEP_NS: i64 = 10_000_000;

/// `[plugins.net_rx_latency]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// RX timestamp → `netif_receive_skb` threshold, ns (HUATUO Driver2NetRx: 5 ms).
    netif_threshold_ns: u64,
    /// RX timestamp → TCP receive threshold, ns (HUATUO Driver2TCP: 10 ms).
    tcp_threshold_ns: u64,
    /// RX timestamp → copy to user space threshold, ns (HUATUO Driver2Userspace: 115 ms).
    usercopy_threshold_ns: u64,
    /// Report IPv4/TCP packets only (HUATUO behaviour: true).
    tcp_only: bool,
    /// Skip packets of the host network namespace (HUATUO `ExcludedHostNetnamespace`:
    /// true), keeping containers' traffic.
    exclude_host_netns: bool,
    /// In-kernel rate limit of events per second, 0 = none (HUATUO has none).
    max_events_per_second: u64,
    /// With `exclude_host_netns`: attach the hooks only while a container with its own
    /// network namespace runs (false: always, as HUATUO, for other namespaces than
    /// containers').
    attach_only_with_containers: bool,
    /// How often to look for such containers, seconds.
    container_check_seconds: u64,
    /// Duty cycle while the hooks are wanted: attached for this many seconds of every
    /// `sample_period_seconds` (0 = all the time, HUATUO's behaviour).
    sample_seconds: u64,
    /// The duty cycle's period, seconds (larger than `sample_seconds`).
    sample_period_seconds: u64,
}

impl Settings {
    /// The duty cycle, `(on, period)` in seconds, when one is set.
    fn duty_cycle(&self) -> Result<Option<(u64, u64)>> {
        match (self.sample_seconds, self.sample_period_seconds) {
            (0, _) => Ok(None),
            (on, period) if period > on => Ok(Some((on, period))),
            (on, period) => Err(Error::InvalidConfig(format!(
                "sample_seconds ({on}) must be less than sample_period_seconds ({period})"
            ))),
        }
    }
}

/// Whether monotonic time `now_ns` falls in the attached part of an `(on, period)` cycle.
fn in_sample_window(now_ns: u64, (on, period): (u64, u64)) -> bool {
    (now_ns / 1_000_000_000) % period < on
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            netif_threshold_ns: 5_000_000,
            tcp_threshold_ns: 10_000_000,
            usercopy_threshold_ns: 115_000_000,
            tcp_only: true,
            exclude_host_netns: true,
            max_events_per_second: 0,
            attach_only_with_containers: true,
            container_check_seconds: 5,
            sample_seconds: 0,
            sample_period_seconds: 60,
        }
    }
}

struct NetRxLatency {
    settings: Settings,
    object: Option<bpf::Object>,
    /// The offset the loaded object uses.
    mono_wall_offset: i64,
    /// Inode of the excluded network namespace, 0 = none.
    excluded_netns: u32,
    /// Events saved, by stage (1..=3 at 0..=2).
    events: [u64; 3],
    /// The running containers (to attach only while one has its own network namespace).
    containers: containers::Tracker,
    /// The timer that re-checks the wall clock, and the one that looks for containers.
    clock_timer: Option<TimerId>,
    /// Times the hooks were attached.
    attaches: u64,
    /// Monotonic ns since which the hooks are attached, and the attached time before that.
    attached_since: Option<u64>,
    attached_ns: u64,
    /// Whether a container with its own network namespace was seen at the last look.
    containers_seen: bool,
}

#[derive(Serialize)]
struct RxLatency {
    comm: String,
    /// Process id (tgid) of the task current at the hook.
    pid: u32,
    tid: u32,
    cpu: u32,
    latency_stage: &'static str,
    latency_ms: u64,
    latency_threshold_ms: u64,
    latency_ns: u64,
    latency_threshold_ns: u64,
    netdev_name: String,
    netdev_ifindex: u32,
    net_namespace_inum: u32,
    tcp_state: String,
    tcp_saddr: String,
    tcp_daddr: String,
    tcp_sport: u16,
    tcp_dport: u16,
    tcp_seq: u32,
    tcp_ack_seq: u32,
    packet_len_bytes: u32,
    packet_skb_addr: String,
}

kpulse_sdk::register!(NetRxLatency {
    name: "net_rx_latency",
    version: "0.1.0",
    interval: 10,
    kinds: [tracing, metric],
    capabilities: [
        "bpf",
        "rx-timestamps",
        "containers",
        "read:/proc/1/ns/net",
        "read:/proc/self/ns/net"
    ],
    summary: "Packets slow from RX timestamp to netif, TCP or user copy (skb tstamp latency)",
});

impl Plugin for NetRxLatency {
    fn init(config: Config) -> Result<Self> {
        Ok(NetRxLatency {
            settings: config.parse()?,
            object: None,
            mono_wall_offset: 0,
            excluded_netns: 0,
            events: [0; 3],
            containers: containers::Tracker::new(),
            clock_timer: None,
            attaches: 0,
            attached_since: None,
            attached_ns: 0,
            containers_seen: false,
        })
    }
}

impl Tracing for NetRxLatency {
    fn start(&mut self, ctx: &mut Context) -> Result<()> {
        self.clock_timer = Some(ctx.every(CLOCK_CHECK)?);
        let duty_cycle = self.settings.duty_cycle()?;
        if self.settings.exclude_host_netns {
            self.excluded_netns = host_netns_inum()?;
        }
        let gated = self.settings.exclude_host_netns && self.settings.attach_only_with_containers;
        if !gated && duty_cycle.is_none() {
            return self.load();
        }
        if self.settings.container_check_seconds == 0 {
            return Err(Error::InvalidConfig(
                "container_check_seconds must be at least 1".to_owned(),
            ));
        }
        // A duty cycle is followed to the second of its shortest phase.
        let check = duty_cycle.map_or(self.settings.container_check_seconds, |(on, period)| {
            self.settings
                .container_check_seconds
                .min(on)
                .min(period - on)
        });
        ctx.every(Duration::from_secs(check.max(1)))?;
        self.follow_containers()
    }

    fn on_timer(&mut self, _ctx: &mut Context, timer: TimerId) -> Result<()> {
        if Some(timer) != self.clock_timer {
            return self.follow_containers();
        }
        if self.object.is_none() {
            return Ok(());
        }
        let offset = mono_wall_offset();
        if offset.abs_diff(self.mono_wall_offset) > CLOCK_STEP_NS.unsigned_abs() {
            log::info(&format!(
                "wall clock stepped by {} ns: reloading",
                offset.saturating_sub(self.mono_wall_offset)
            ));
            self.object = None;
            self.load()?;
        }
        Ok(())
    }

    fn on_events(
        &mut self,
        _ctx: &mut Context,
        _subscription: u64,
        records: bpf::Records<'_>,
    ) -> Result<()> {
        let records: Vec<NetRxLatencyEvent> = records
            .into_iter()
            .map(|r| NetRxLatencyEvent::parse_padded(r.0))
            .collect();
        let keys: Vec<containers::Key> = records
            .iter()
            .map(|r| containers::Key::NetnsInum(r.netns_inum))
            .collect();
        let owners = containers::attribute(&keys);
        for (record, owner) in records.iter().zip(&owners) {
            let event = decode(record);
            storage::save("net_rx_latency", owner, storage::now(), &event)?;
            if let Some(count) = (record.stage as usize)
                .checked_sub(1)
                .and_then(|i| self.events.get_mut(i))
            {
                *count += 1;
            }
        }
        Ok(())
    }
}

impl NetRxLatency {
    /// Attaches while some running container has a network namespace of its own (or
    /// always, when not gated on containers), inside the duty cycle's window when one is
    /// set; detaches otherwise.
    fn follow_containers(&mut self) -> Result<()> {
        let gated = self.settings.exclude_host_netns && self.settings.attach_only_with_containers;
        let wanted = if !gated {
            true
        } else if let Err(err) = self.containers.refresh() {
            // No registry (capability refused, runtime gone): keep HUATUO's behaviour.
            if self.object.is_none() && self.attaches == 0 {
                log::warn(&format!(
                    "{err}; watching every network namespace but the host's"
                ));
            }
            true
        } else {
            let excluded = self.excluded_netns;
            let own_netns = self
                .containers
                .containers()
                .any(|c| !c.host_network && c.netns_inum != 0 && c.netns_inum != excluded);
            if own_netns != self.containers_seen {
                log::info(if own_netns {
                    "a container has its own network namespace: hooks wanted"
                } else {
                    "no container network namespace left: hooks detached"
                });
                self.containers_seen = own_netns;
            }
            own_netns
        };
        let in_window = self
            .settings
            .duty_cycle()?
            .is_none_or(|cycle| in_sample_window(clock::monotonic_ns(), cycle));
        match (wanted && in_window, self.object.is_some()) {
            (true, false) => self.load()?,
            (false, true) => self.detach(),
            _ => {}
        }
        Ok(())
    }

    /// Drops the BPF object (its hooks and the timestamp socket go with it), counting the
    /// time it was attached.
    fn detach(&mut self) {
        self.object = None;
        if let Some(since) = self.attached_since.take() {
            self.attached_ns += clock::monotonic_ns().saturating_sub(since);
        }
    }

    /// Seconds the hooks were attached, the current stretch included.
    fn attached_seconds(&self) -> f64 {
        let current = self
            .attached_since
            .map_or(0, |since| clock::monotonic_ns().saturating_sub(since));
        (self.attached_ns + current) as f64 / 1e9
    }

    fn load(&mut self) -> Result<()> {
        let s = &self.settings;
        self.mono_wall_offset = mono_wall_offset();
        let object = bpf::Object::load(
            OBJECT,
            &[
                Global::i64("mono_wall_offset", self.mono_wall_offset),
                Global::u64("netif_threshold_ns", s.netif_threshold_ns),
                Global::u64("tcp_threshold_ns", s.tcp_threshold_ns),
                Global::u64("usercopy_threshold_ns", s.usercopy_threshold_ns),
                Global::u32("tcp_only", u32::from(s.tcp_only)),
                Global::u32("excluded_netns_inum", self.excluded_netns),
                Global::u64("max_events_per_second", s.max_events_per_second),
                Global::u32("ratelimit_nr_cpus", bpf::ratelimit_nr_cpus()),
            ],
        )?;
        // The per-packet stages as tp_btf (cheap), the classic tracepoint where that fails.
        for (program, category, tracepoint) in [
            ("rx_netif", "net", "netif_receive_skb"),
            ("rx_usercopy", "skb", "skb_copy_datagram_iovec"),
        ] {
            let btf = format!("{program}_btf");
            if let Err(err) = object.attach(&btf, Attach::TpBtf(tracepoint.to_owned())) {
                log::info(&format!("tp_btf/{tracepoint}: {err}; using the tracepoint"));
                object.attach(program, Attach::tracepoint(category, tracepoint))?;
            }
        }
        object.attach("rx_tcp", Attach::tracepoint("tcp", "tcp_probe"))?;
        object.subscribe("events")?;
        self.object = Some(object);
        self.attaches += 1;
        if self.attached_since.is_none() {
            self.attached_since = Some(clock::monotonic_ns());
        }
        Ok(())
    }
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC in ns, the wall time sampled between two monotonic
/// reads.
fn mono_wall_offset() -> i64 {
    let before = clock::monotonic_ns();
    let wall = clock::now_ns();
    let after = clock::monotonic_ns();
    let mono = before / 2 + after / 2;
    i64::try_from(i128::from(wall) - i128::from(mono)).unwrap_or(0)
}

/// Inode of the host network namespace: pid 1's, else the agent's.
fn host_netns_inum() -> Result<u32> {
    let (path, link) = match fs::read_link(HOST_NETNS) {
        Ok(link) => (HOST_NETNS, link),
        Err(err) => {
            log::info(&format!(
                "{err}; excluding the agent's network namespace as the host's"
            ));
            (AGENT_NETNS, fs::read_link(AGENT_NETNS)?)
        }
    };
    parse_netns_inum(&link)
        .ok_or_else(|| Error::InvalidConfig(format!("{path} is {link:?}, not net:[inode]")))
}

/// `net:[4026531833]` → 4026531833.
fn parse_netns_inum(link: &str) -> Option<u32> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

fn decode(r: &NetRxLatencyEvent) -> RxLatency {
    let h = &r.hdr;
    let flags = r.flags;
    let ipv4 = |addr: u32| {
        if flags & F_IPV4 == 0 {
            String::new()
        } else {
            // Network byte order: the record's bytes are the address's octets.
            Ipv4Addr::from(addr.to_le_bytes()).to_string()
        }
    };
    let tcp = flags & F_TCP != 0;
    let latency_ns = r.latency_ns;
    let threshold_ns = r.threshold_ns;
    RxLatency {
        comm: h.comm_str(),
        pid: h.tgid,
        tid: h.pid,
        cpu: h.cpu,
        latency_stage: (r.stage as usize)
            .checked_sub(1)
            .and_then(|i| STAGES.get(i))
            .copied()
            .unwrap_or("RX_STAGE_UNKNOWN"),
        latency_ms: latency_ns / 1_000_000,
        latency_threshold_ms: threshold_ns / 1_000_000,
        latency_ns,
        latency_threshold_ns: threshold_ns,
        netdev_name: r.ifname_str(),
        netdev_ifindex: r.ifindex,
        net_namespace_inum: r.netns_inum,
        tcp_state: tcp_state_name(r.tcp_state),
        tcp_saddr: ipv4(r.saddr),
        tcp_daddr: ipv4(r.daddr),
        tcp_sport: if tcp { r.sport } else { 0 },
        tcp_dport: if tcp { r.dport } else { 0 },
        tcp_seq: if tcp { r.seq } else { 0 },
        tcp_ack_seq: if tcp { r.ack_seq } else { 0 },
        packet_len_bytes: r.len,
        packet_skb_addr: format!("0x{:x}", r.skb_addr),
    }
}

/// `sk->sk_state` (`include/net/tcp_states.h`); "" when there was no socket.
fn tcp_state_name(state: u8) -> String {
    const NAMES: [&str; 13] = [
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
        "BOUND_INACTIVE",
    ];
    match state {
        0 => String::new(),
        n => NAMES
            .get(usize::from(n) - 1)
            .map_or_else(|| format!("STATE_{n}"), |name| (*name).to_owned()),
    }
}

impl Collector for NetRxLatency {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mut metrics: Vec<Metric> = STAGES
            .iter()
            .zip(self.events)
            .map(|(stage, count)| {
                metric::counter(
                    "events",
                    count as f64,
                    "Packets over the stage's latency threshold saved, by stage.",
                )
                .label("stage", *stage)
            })
            .collect();
        metrics.push(metric::gauge(
            "attached",
            f64::from(u8::from(self.object.is_some())),
            "Whether the receive hooks are attached (only while a container has its own \
             network namespace, when the host's is excluded).",
        ));
        metrics.push(metric::counter(
            "attaches",
            self.attaches as f64,
            "Times the receive hooks were attached.",
        ));
        metrics.push(metric::counter(
            "attached_seconds",
            self.attached_seconds(),
            "Seconds the receive hooks were attached.",
        ));
        let fraction = self
            .settings
            .duty_cycle()
            .ok()
            .flatten()
            .map_or(1.0, |(on, period)| on as f64 / period as f64);
        metrics.push(metric::gauge(
            "sampled_fraction",
            fraction,
            "Share of the time the hooks watch while wanted: 1, or sample_seconds / \
             sample_period_seconds when duty-cycled (events and counts are then a sample).",
        ));
        if let Some(object) = &self.object {
            metrics.push(metric::counter(
                "lost",
                object.stat(bpf::Stat::RingFull)? as f64,
                "Slow packets lost because the ring buffer was full (since the last load).",
            ));
        }
        Ok(metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duty_cycle_windows_and_validation() {
        let settings = |on, period| Settings {
            sample_seconds: on,
            sample_period_seconds: period,
            ..Settings::default()
        };
        assert!(matches!(settings(0, 60).duty_cycle(), Ok(None)));
        assert!(matches!(settings(10, 60).duty_cycle(), Ok(Some((10, 60)))));
        assert!(settings(60, 60).duty_cycle().is_err());
        assert!(settings(5, 0).duty_cycle().is_err());
        let s = 1_000_000_000;
        assert!(in_sample_window(0, (10, 60)));
        assert!(in_sample_window(9 * s + s / 2, (10, 60)));
        assert!(!in_sample_window(10 * s, (10, 60)));
        assert!(!in_sample_window(59 * s, (10, 60)));
        assert!(in_sample_window(60 * s, (10, 60)));
    }

    #[test]
    fn netns_link() {
        assert_eq!(parse_netns_inum("net:[4026531833]"), Some(4_026_531_833));
        assert_eq!(parse_netns_inum("mnt:[1]"), None);
    }

    #[test]
    fn decodes_a_tcp_record() {
        let b = NetRxLatencyEvent {
            latency_ns: 2_500_000,
            stage: records::KP_RX_STAGE_TCPV4,
            saddr: u32::from_le_bytes([127, 0, 0, 1]),
            daddr: u32::from_le_bytes([10, 1, 2, 3]),
            sport: 8080,
            tcp_state: 1,
            flags: F_IPV4 | F_TCP,
            ..NetRxLatencyEvent::default()
        }
        .to_bytes();
        let e = decode(&NetRxLatencyEvent::parse_padded(&b));
        assert_eq!(e.latency_stage, "RX_STAGE_TCPV4");
        assert_eq!((e.latency_ms, e.tcp_sport), (2, 8080));
        assert_eq!(
            (e.tcp_saddr.as_str(), e.tcp_daddr.as_str()),
            ("127.0.0.1", "10.1.2.3")
        );
        assert_eq!(e.tcp_state, "ESTABLISHED");
        assert_eq!(
            decode(&NetRxLatencyEvent::parse_padded(&[])).latency_stage,
            "RX_STAGE_UNKNOWN"
        );
    }
}
