//! `softirq`: softirq raise → entry latency per CPU and vector (`irq/softirq_raise` +
//! `irq/softirq_entry`). Every softirq run is counted in the kernel into four latency
//! zones (HUATUO's `softirq_latency{cpuid,type,zone}`); runs delayed by at least
//! `threshold_ns` (HUATUO's 10 ms tick-gap threshold) are saved as events, rate-limited on
//! the guest side.

use std::collections::BTreeSet;

use kpulse_sdk::bpf::{self, Attach, Global, Record};
use kpulse_sdk::prelude::*;
use kpulse_sdk::records::{self, SoftirqEvent};
use serde::{Deserialize, Serialize};

const OBJECT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../ebpf/build/softirq.bpf.o"
));

/// Softirq vector names, indexed by vector number (`include/linux/interrupt.h`).
const VEC_NAMES: [&str; 10] = [
    "HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER", "RCU",
];
/// Latency zones of `enum kp_softirq_zone`.
const ZONES: u32 = 4;

/// `[plugins.softirq]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Save an event when a softirq ran this many ns or more after it was raised
    /// (HUATUO `SchedTick.IntervalThreshold`: 10 ms).
    threshold_ns: u64,
    /// Events saved per second at most, the rest counted as suppressed; 0 = no limit
    /// (HUATUO rate-limits its event collectors to 100/s).
    max_events_per_second: u64,
    /// Vectors exported in the `latency` metric (HUATUO exports NET_RX and NET_TX only);
    /// names from HI, TIMER, NET_TX, NET_RX, BLOCK, IRQ_POLL, TASKLET, SCHED, HRTIMER, RCU,
    /// or `["ALL"]` for every vector.
    metric_types: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            threshold_ns: 10_000_000,
            max_events_per_second: 100,
            metric_types: vec!["NET_RX".to_owned(), "NET_TX".to_owned()],
        }
    }
}

struct Softirq {
    settings: Settings,
    /// Vector numbers exported in the `latency` metric.
    metric_vecs: BTreeSet<u32>,
    object: Option<bpf::Object>,
    /// Events saved.
    events: u64,
    /// Events over the threshold not saved because of `max_events_per_second`.
    suppressed: u64,
    /// The one-second window (event time, monotonic seconds) being rate-limited.
    window: u64,
    /// Events saved in `window`.
    window_saved: u64,
}

#[derive(Serialize)]
struct Event {
    cpu: u32,
    vec: u32,
    vec_name: String,
    latency_ns: u64,
    threshold_ns: u64,
    /// 0: < 10 µs, 1: < 100 µs, 2: < 1 ms, 3: ≥ 1 ms.
    zone: u32,
    /// The task on the CPU when the softirq ran (often unrelated, or idle: pid 0).
    comm: String,
    pid: u32,
    tgid: u32,
}

kpulse_sdk::register!(Softirq {
    name: "softirq",
    version: "0.1.0",
    interval: 10,
    kinds: [tracing, metric],
    capabilities: ["bpf"],
    summary: "Softirq raise-to-run latency per CPU and vector (irq/softirq_raise, softirq_entry)",
});

impl Plugin for Softirq {
    fn init(config: Config) -> Result<Self> {
        let settings: Settings = config.parse()?;
        let metric_vecs = metric_vecs(&settings.metric_types)?;
        Ok(Softirq {
            settings,
            metric_vecs,
            object: None,
            events: 0,
            suppressed: 0,
            window: 0,
            window_saved: 0,
        })
    }
}

impl Tracing for Softirq {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        let object = bpf::Object::load(
            OBJECT,
            &[Global::u64(
                "softirq_threshold_ns",
                self.settings.threshold_ns,
            )],
        )?;
        object.attach("softirq_raise", Attach::tracepoint("irq", "softirq_raise"))?;
        object.attach("softirq_entry", Attach::tracepoint("irq", "softirq_entry"))?;
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
        for record in records {
            if record.header().kind != records::KP_EV_SOFTIRQ {
                continue;
            }
            let event = decode(record);
            if !self.admit(record.header().ts_ns) {
                self.suppressed += 1;
                continue;
            }
            storage::save("softirq", "", storage::now(), &event)?;
            self.events += 1;
        }
        Ok(())
    }
}

impl Softirq {
    /// The guest-side rate limit: at most `max_events_per_second` per second of event time.
    fn admit(&mut self, ts_ns: u64) -> bool {
        let max = self.settings.max_events_per_second;
        if max == 0 {
            return true;
        }
        let second = ts_ns / 1_000_000_000;
        if second != self.window {
            self.window = second;
            self.window_saved = 0;
        }
        if self.window_saved >= max {
            return false;
        }
        self.window_saved += 1;
        true
    }
}

fn decode(r: Record<'_>) -> Event {
    let e = SoftirqEvent::parse_padded(r.0);
    let h = &e.hdr;
    Event {
        cpu: h.cpu,
        vec: e.vec,
        vec_name: vec_name(e.vec),
        zone: e.zone,
        latency_ns: e.latency_ns,
        threshold_ns: e.threshold_ns,
        comm: h.comm_str(),
        pid: h.pid,
        tgid: h.tgid,
    }
}

fn vec_name(vec: u32) -> String {
    VEC_NAMES
        .get(vec as usize)
        .map(|name| (*name).to_owned())
        .unwrap_or_else(|| format!("VEC_{vec}"))
}

/// Vector numbers from `metric_types` names.
fn metric_vecs(names: &[String]) -> Result<BTreeSet<u32>> {
    let mut vecs = BTreeSet::new();
    for name in names {
        if name.eq_ignore_ascii_case("ALL") {
            vecs.extend(0..VEC_NAMES.len() as u32);
            continue;
        }
        let vec = VEC_NAMES
            .iter()
            .position(|v| v.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "metric_types: unknown softirq {name:?} (expected one of {}, or ALL)",
                    VEC_NAMES.join(", ")
                ))
            })?;
        vecs.insert(vec as u32);
    }
    Ok(vecs)
}

/// One u64 per possible CPU, CPU 0 first.
fn percpu_u64(value: &[u8]) -> impl Iterator<Item = (usize, u64)> + '_ {
    value.chunks_exact(8).enumerate().map(|(cpu, c)| {
        (
            cpu,
            u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
        )
    })
}

fn key_u32(key: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(key.get(..4)?.try_into().ok()?))
}

impl Collector for Softirq {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mut metrics = vec![
            metric::counter(
                "events",
                self.events as f64,
                "Softirq latency events saved (over threshold_ns, after the rate limit).",
            ),
            metric::counter(
                "suppressed",
                self.suppressed as f64,
                "Softirq latency events over threshold_ns not saved (max_events_per_second).",
            ),
        ];
        let Some(object) = &self.object else {
            return Ok(metrics);
        };
        metrics.push(metric::counter(
            "lost",
            object.stat(bpf::Stat::RingFull)? as f64,
            "Softirq latency events lost in the kernel (ring buffer full).",
        ));
        for (key, value) in object.entries("softirq_zones")? {
            let Some(index) = key_u32(&key) else {
                continue;
            };
            let (vec, zone) = (index / ZONES, index % ZONES);
            if !self.metric_vecs.contains(&vec) {
                continue;
            }
            let kind = vec_name(vec);
            for (cpu, count) in percpu_u64(&value) {
                metrics.push(
                    metric::counter(
                        "latency",
                        count as f64,
                        "Softirq runs by raise-to-run latency zone \
                         (0: <10us, 1: <100us, 2: <1ms, 3: >=1ms).",
                    )
                    .label("cpuid", cpu.to_string())
                    .label("type", kind.clone())
                    .label("zone", zone.to_string()),
                );
            }
        }
        Ok(metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_record() {
        let mut record = SoftirqEvent {
            vec: 3,
            zone: 2,
            latency_ns: 500_000,
            threshold_ns: 1000,
            ..SoftirqEvent::default()
        };
        (record.hdr.kind, record.hdr.cpu) = (records::KP_EV_SOFTIRQ, 1);
        record.hdr.comm[..4].copy_from_slice(b"curl");
        let bytes = record.to_bytes();
        let e = decode(Record(&bytes));
        assert_eq!((e.cpu, e.vec, e.zone), (1, 3, 2));
        assert_eq!(e.vec_name, "NET_RX");
        assert_eq!((e.latency_ns, e.threshold_ns), (500_000, 1000));
        assert_eq!(e.comm, "curl");
        assert_eq!(vec_name(12), "VEC_12");
    }

    #[test]
    fn metric_types_are_validated() {
        let all = metric_vecs(&["all".to_owned()]).expect("valid");
        assert_eq!(all.len(), 10);
        let net = metric_vecs(&["NET_RX".to_owned(), "net_tx".to_owned()]).expect("valid");
        assert_eq!(net.into_iter().collect::<Vec<_>>(), vec![2, 3]);
        assert!(metric_vecs(&["BOGUS".to_owned()]).is_err());
    }

    #[test]
    fn rate_limit_per_second() {
        let mut s = Softirq {
            settings: Settings {
                max_events_per_second: 2,
                ..Settings::default()
            },
            metric_vecs: BTreeSet::new(),
            object: None,
            events: 0,
            suppressed: 0,
            window: 0,
            window_saved: 0,
        };
        let sec = 1_000_000_000;
        assert!(s.admit(5 * sec));
        assert!(s.admit(5 * sec + 1));
        assert!(!s.admit(5 * sec + 2));
        assert!(s.admit(6 * sec));
    }
}
