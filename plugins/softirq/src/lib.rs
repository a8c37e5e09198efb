//! `softirq`: softirq raise → entry latency per CPU and vector (`irq/softirq_raise` +
//! `irq/softirq_entry`). Every softirq run is counted in the kernel into four latency
//! zones (HUATUO's `softirq_latency{cpuid,type,zone}`); runs delayed by at least
//! `threshold_ns` (HUATUO's 10 ms tick-gap threshold) are saved as events, rate-limited on
//! the guest side.
//!
//! Modes (`mode`):
//! - `on_demand` (the default): the hooks are attached only while the kernel's own
//!   counters say softirqs are being delayed ([`watch`]: time squeezes, backlog drops,
//!   ksoftirqd waiting to run, softirq time share). A trip attaches them for
//!   `window_seconds`, then they are detached for at least `cooldown_seconds`. A quiet host
//!   pays nothing per softirq; the latency zones count only inside windows (`attached`,
//!   `windows_total` and `triggers_total{cause}` say when).
//! - `always`: HUATUO's behaviour, hooks attached for the plugin's lifetime.
//!
//! Either way the hooks are `tp_btf` programs (no perf trace buffer per hit) with the
//! classic tracepoint as the fallback.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kpulse_sdk::bpf::{self, Attach, Global, Record};
use kpulse_sdk::prelude::*;
use kpulse_sdk::records::{self, SoftirqEvent};
use serde::{Deserialize, Serialize};

mod watch;

use watch::{Cause, Reading, Triggers};

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
    /// `on_demand` (hooks attached while the counters trip) or `always` (HUATUO).
    mode: Mode,
    /// How often the counters are read (on_demand), ms.
    poll_interval_ms: u64,
    /// How long the hooks stay attached after a trip, s.
    window_seconds: u64,
    /// How long after a window before the next trip can attach them again, s.
    cooldown_seconds: u64,
    /// Trip when softnet `time_squeeze` rose by this much in one poll interval; 0 = off.
    trigger_time_squeeze: u64,
    /// Trip when softnet backlog `dropped` rose by this much in one poll interval; 0 = off.
    trigger_backlog_drops: u64,
    /// Trip when one CPU's ksoftirqd waited this long (ns) on the run queue in one poll
    /// interval; 0 = off. Defaults to the event threshold: softirqs deferred to ksoftirqd
    /// waited up to that long.
    trigger_ksoftirqd_wait_ns: u64,
    /// Trip when one CPU spent this percent of a poll interval in softirq; 0 = off.
    trigger_softirq_percent: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    OnDemand,
    Always,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            threshold_ns: 10_000_000,
            max_events_per_second: 100,
            metric_types: vec!["NET_RX".to_owned(), "NET_TX".to_owned()],
            mode: Mode::OnDemand,
            poll_interval_ms: 2000,
            window_seconds: 10,
            cooldown_seconds: 60,
            trigger_time_squeeze: 1,
            trigger_backlog_drops: 1,
            trigger_ksoftirqd_wait_ns: 10_000_000,
            trigger_softirq_percent: 0,
        }
    }
}

impl Settings {
    fn triggers(&self) -> Triggers {
        Triggers {
            time_squeeze: self.trigger_time_squeeze,
            backlog_drops: self.trigger_backlog_drops,
            ksoftirqd_wait_ns: self.trigger_ksoftirqd_wait_ns,
            softirq_percent: self.trigger_softirq_percent,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.mode == Mode::OnDemand && (self.poll_interval_ms < 100 || self.window_seconds == 0)
        {
            return Err(Error::InvalidConfig(format!(
                "poll_interval_ms must be >= 100 and window_seconds > 0 (got {} and {})",
                self.poll_interval_ms, self.window_seconds
            )));
        }
        if self.trigger_softirq_percent > 100 {
            return Err(Error::InvalidConfig(format!(
                "trigger_softirq_percent is a percentage, not {}",
                self.trigger_softirq_percent
            )));
        }
        Ok(())
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
    /// on_demand: the counters' last reading, the pid of each CPU's ksoftirqd.
    last: Reading,
    ksoftirqd: BTreeMap<u32, u32>,
    /// on_demand: monotonic ns until which the hooks stay attached / stay detached.
    attached_until: u64,
    cooldown_until: u64,
    /// Windows opened, trips by cause.
    windows: u64,
    triggers: BTreeMap<Cause, u64>,
    /// Zone counts of earlier windows (their maps are gone), by (zone index, cpu).
    earlier_zones: BTreeMap<(u32, usize), u64>,
    /// Events lost to a full ring buffer in earlier windows.
    earlier_lost: u64,
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
    capabilities: ["bpf", "read:/proc"],
    summary: "Softirq raise-to-run latency per CPU and vector (irq/softirq_raise, softirq_entry)",
});

impl Plugin for Softirq {
    fn init(config: Config) -> Result<Self> {
        let settings: Settings = config.parse()?;
        settings.validate()?;
        let metric_vecs = metric_vecs(&settings.metric_types)?;
        Ok(Softirq::new(settings, metric_vecs))
    }
}

impl Tracing for Softirq {
    fn start(&mut self, ctx: &mut Context) -> Result<()> {
        match self.settings.mode {
            Mode::Always => self.attach(),
            Mode::OnDemand => {
                self.ksoftirqd = find_ksoftirqd();
                self.last = self.read_counters();
                ctx.every(Duration::from_millis(self.settings.poll_interval_ms))?;
                log::info(&format!(
                    "on demand: hooks attach when the counters trip (ksoftirqd found on {} CPUs)",
                    self.ksoftirqd.len()
                ));
                Ok(())
            }
        }
    }

    fn on_timer(&mut self, ctx: &mut Context, _timer: TimerId) -> Result<()> {
        let now = ctx.monotonic_ns();
        let reading = self.read_counters();
        let causes = watch::tripped(&self.last, &reading, &self.settings.triggers());
        self.last = reading;
        if self.object.is_some() {
            if now >= self.attached_until {
                self.detach()?;
                self.cooldown_until = now
                    .saturating_add(self.settings.cooldown_seconds.saturating_mul(1_000_000_000));
                log::info("window over: hooks detached");
            }
            return Ok(());
        }
        if causes.is_empty() || now < self.cooldown_until {
            return Ok(());
        }
        for (cause, _) in &causes {
            *self.triggers.entry(*cause).or_default() += 1;
        }
        self.attach()?;
        self.windows += 1;
        self.attached_until =
            now.saturating_add(self.settings.window_seconds.saturating_mul(1_000_000_000));
        let why: Vec<&str> = causes.iter().map(|(_, summary)| summary.as_str()).collect();
        log::info(&format!(
            "{}: hooks attached for {} s",
            why.join(", "),
            self.settings.window_seconds
        ));
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
    fn new(settings: Settings, metric_vecs: BTreeSet<u32>) -> Self {
        Softirq {
            settings,
            metric_vecs,
            object: None,
            events: 0,
            suppressed: 0,
            window: 0,
            window_saved: 0,
            last: Reading::default(),
            ksoftirqd: BTreeMap::new(),
            attached_until: 0,
            cooldown_until: 0,
            windows: 0,
            triggers: BTreeMap::new(),
            earlier_zones: BTreeMap::new(),
            earlier_lost: 0,
        }
    }

    /// Loads the object and attaches both hooks, tp_btf first.
    fn attach(&mut self) -> Result<()> {
        let object = bpf::Object::load(
            OBJECT,
            &[Global::u64(
                "softirq_threshold_ns",
                self.settings.threshold_ns,
            )],
        )?;
        for hook in ["softirq_raise", "softirq_entry"] {
            let btf = format!("{hook}_btf");
            if let Err(err) = object.attach(&btf, Attach::TpBtf(hook.to_owned())) {
                log::info(&format!("tp_btf/{hook}: {err}; using the tracepoint"));
                object.attach(hook, Attach::tracepoint("irq", hook))?;
            }
        }
        object.subscribe("events")?;
        self.object = Some(object);
        Ok(())
    }

    /// Keeps the window's zone counts, then drops the object (which detaches the hooks).
    fn detach(&mut self) -> Result<()> {
        if let Some(object) = &self.object {
            for (index, cpu, count) in zone_counts(object)? {
                *self.earlier_zones.entry((index, cpu)).or_default() += count;
            }
            self.earlier_lost += object.stat(bpf::Stat::RingFull)?;
        }
        self.object = None;
        Ok(())
    }

    /// The counters now; a source that cannot be read is left out (and never trips).
    fn read_counters(&self) -> Reading {
        let mut reading = Reading::default();
        if let Ok(text) = kpulse_sdk::fs::read_to_string("/proc/net/softnet_stat") {
            (reading.time_squeeze, reading.backlog_drops) = watch::parse_softnet(&text);
        }
        for (cpu, pid) in &self.ksoftirqd {
            let path = format!("/proc/{pid}/schedstat");
            if let Some(wait) = kpulse_sdk::fs::read_to_string(&path)
                .ok()
                .and_then(|text| watch::parse_schedstat_wait(&text))
            {
                reading.ksoftirqd_wait_ns.insert(*cpu, wait);
            }
        }
        if self.settings.trigger_softirq_percent > 0
            && let Ok(text) = kpulse_sdk::fs::read_to_string("/proc/stat")
        {
            reading.cpu_ticks = watch::parse_stat_cpus(&text);
        }
        reading
    }

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

/// Each CPU's ksoftirqd pid: the children of kthreadd (pid 2), else a scan of `/proc`.
fn find_ksoftirqd() -> BTreeMap<u32, u32> {
    let pids: Vec<u32> = match kpulse_sdk::fs::read_to_string("/proc/2/task/2/children") {
        Ok(text) => text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        Err(_) => kpulse_sdk::fs::read_dir("/proc")
            .unwrap_or_default()
            .iter()
            .filter_map(|entry| entry.name.parse().ok())
            .collect(),
    };
    pids.into_iter()
        .filter_map(|pid| {
            let comm = kpulse_sdk::fs::read_to_string(&format!("/proc/{pid}/comm")).ok()?;
            Some((watch::ksoftirqd_cpu(&comm)?, pid))
        })
        .collect()
}

/// (zone index, cpu, count) of every non-zero per-CPU zone counter of a loaded object.
fn zone_counts(object: &bpf::Object) -> Result<Vec<(u32, usize, u64)>> {
    let mut counts = Vec::new();
    for (key, value) in object.entries("softirq_zones")? {
        let Some(index) = key_u32(&key) else {
            continue;
        };
        counts.extend(
            percpu_u64(&value)
                .filter(|(_, count)| *count > 0)
                .map(|(cpu, count)| (index, cpu, count)),
        );
    }
    Ok(counts)
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
        metrics.push(metric::gauge(
            "attached",
            f64::from(u8::from(self.object.is_some())),
            "Whether the softirq hooks are attached now (always mode: 1; on_demand: inside a window).",
        ));
        metrics.push(metric::counter(
            "windows",
            self.windows as f64,
            "Windows the hooks were attached for because the kernel counters tripped (on_demand).",
        ));
        for cause in Cause::ALL {
            metrics.push(
                metric::counter(
                    "triggers",
                    self.triggers.get(&cause).copied().unwrap_or(0) as f64,
                    "Trips of the kernel counters that opened a window, by cause (on_demand).",
                )
                .label("cause", cause.as_str()),
            );
        }
        let mut zones = self.earlier_zones.clone();
        let mut lost = self.earlier_lost;
        if let Some(object) = &self.object {
            lost += object.stat(bpf::Stat::RingFull)?;
            for (index, cpu, count) in zone_counts(object)? {
                *zones.entry((index, cpu)).or_default() += count;
            }
        }
        // Exported detached too (on_demand), with what earlier windows lost.
        metrics.push(metric::counter(
            "lost",
            lost as f64,
            "Softirq latency events lost in the kernel (ring buffer full).",
        ));
        // Every (vector, zone, cpu) series exists from the first scrape, zero until counted.
        let cpus = bpf::possible_cpus() as usize;
        for &vec in &self.metric_vecs {
            let kind = vec_name(vec);
            for zone in 0..ZONES {
                let index = vec * ZONES + zone;
                for cpu in 0..cpus {
                    metrics.push(
                        metric::counter(
                            "latency",
                            zones.get(&(index, cpu)).copied().unwrap_or(0) as f64,
                            "Softirq runs by raise-to-run latency zone \
                             (0: <10us, 1: <100us, 2: <1ms, 3: >=1ms); on_demand counts inside windows only.",
                        )
                        .label("cpuid", cpu.to_string())
                        .label("type", kind.clone())
                        .label("zone", zone.to_string()),
                    );
                }
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
        let mut s = Softirq::new(
            Settings {
                max_events_per_second: 2,
                ..Settings::default()
            },
            BTreeSet::new(),
        );
        let sec = 1_000_000_000;
        assert!(s.admit(5 * sec));
        assert!(s.admit(5 * sec + 1));
        assert!(!s.admit(5 * sec + 2));
        assert!(s.admit(6 * sec));
    }
}
