//! `sched_tick`: a CPU that could not take its timer interrupt for longer than 10 ms
//! (HUATUO's `sched_tick`, formerly `softirq_tracing`: long irq-off or no-tick windows),
//! with the kernel stack where interrupts came back on.
//!
//! Which hook runs where:
//! - HUATUO: kprobe `account_process_tick` (the tick itself), with tracepoint
//!   `timer/tick_stop` and a kprobe on `tick_nohz_restart_sched_tick` to skip NOHZ idle.
//! - kpulse, on every kernel (kprobes are not needed, and do not attach on this one): a
//!   software `cpu-clock` perf event on every online CPU (`ebpf/src/sched_tick.bpf.c`),
//!   an hrtimer that fires in hard-irq context at `frequency_hz` (250 by default, one tick
//!   of a `HZ=250` kernel). Two samples on a CPU farther apart than
//!   `interval_threshold_ns` mean the interrupt was held off that long. The event is
//!   CPU-wide and does not exclude idle, so the hrtimer keeps firing while the tick is
//!   stopped under NOHZ: NOHZ itself makes no gap (an idle CPU is woken once per period).
//!
//! A vCPU the hypervisor did not run is, from inside, the same window without interrupts.
//! On a busy vCPU it is reported (HUATUO's kprobe sees it the same way: a task was held
//! off). On an idle one it is not: a hypervisor may let an idle vCPU sleep past its timer,
//! and no task waited in that window. HUATUO skips idle too (it stops timing at
//! `tick_stop`). So a gap whose closing sample
//! interrupted the idle task (pid 0) is counted in `idle_gaps` and saved only with
//! `report_idle = true`. Documents carry the interrupted task (`comm`, `pid`: the one with
//! interrupts off) and its container where its cgroup belongs to one.

use kpulse_sdk::bpf::{self, Attach, Record};
use kpulse_sdk::prelude::*;
use kpulse_sdk::records::SchedTickEvent;
use serde::{Deserialize, Serialize};

const OBJECT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../ebpf/build/sched_tick.bpf.o"
));

/// `[plugins.sched_tick]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// HUATUO's `SchedTick.IntervalThreshold`: report gaps of at least this many ns.
    interval_threshold_ns: u64,
    /// Samples per second and CPU of the clock event; its period must be at most half the
    /// threshold, so that timer jitter never looks like a gap.
    frequency_hz: u64,
    /// Also save gaps that ended in the idle task (a vCPU left asleep by the hypervisor, or
    /// an irq-off window in the idle loop); they are always counted in `idle_gaps`.
    report_idle: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            interval_threshold_ns: 10_000_000,
            frequency_hz: 250,
            report_idle: false,
        }
    }
}

/// HUATUO's `SchedTickTracingData` plus the clock period, the process and the source.
#[derive(Debug, Serialize, PartialEq)]
struct TickGap {
    tick_interval_ns: u64,
    tick_interval_threshold_ns: u64,
    comm: String,
    pid: u32,
    tgid: u32,
    cpu: u32,
    /// Symbolized kernel stack, innermost first, one frame per line.
    stack: String,
    /// The clock's period: a gap is `tick_interval_ns - period_ns` longer than normal.
    period_ns: u64,
}

#[derive(Default)]
struct SchedTick {
    threshold_ns: u64,
    frequency_hz: u64,
    report_idle: bool,
    object: Option<bpf::Object>,
    saved: u64,
    idle_gaps: u64,
    max_interval_ns: u64,
}

kpulse_sdk::register!(SchedTick {
    name: "sched_tick",
    version: "0.1.0",
    interval: 10,
    kinds: [tracing, metric],
    capabilities: ["bpf", "kallsyms", "containers"],
    summary: "CPUs without a timer interrupt for over 10 ms (irq-off windows) with the stack, on a perf cpu-clock event",
});

impl Plugin for SchedTick {
    fn init(config: Config) -> Result<Self> {
        let settings: Settings = config.parse()?;
        if !(1..=10_000).contains(&settings.frequency_hz) {
            return Err(Error::InvalidConfig(format!(
                "frequency_hz must be 1 to 10000 (got {})",
                settings.frequency_hz
            )));
        }
        let period = 1_000_000_000 / settings.frequency_hz;
        if settings.interval_threshold_ns < 2 * period {
            return Err(Error::InvalidConfig(format!(
                "interval_threshold_ns ({}) must be at least twice the clock period ({period} ns at {} Hz)",
                settings.interval_threshold_ns, settings.frequency_hz
            )));
        }
        Ok(SchedTick {
            threshold_ns: settings.interval_threshold_ns,
            frequency_hz: settings.frequency_hz,
            report_idle: settings.report_idle,
            ..Self::default()
        })
    }
}

impl Tracing for SchedTick {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        let object = bpf::Object::load(
            OBJECT,
            &[bpf::Global::u64("threshold_ns", self.threshold_ns)],
        )?;
        object.attach("sched_tick", Attach::PerfCpuClock(self.frequency_hz))?;
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
        let events: Vec<SchedTickEvent> = records
            .map(|r: Record<'_>| SchedTickEvent::parse_padded(r.0))
            .filter(|e| {
                let idle = e.hdr.pid == 0;
                self.idle_gaps += u64::from(idle);
                !idle || self.report_idle
            })
            .collect();
        let keys: Vec<containers::Key> = events
            .iter()
            .map(|e| containers::Key::CgroupId(e.hdr.cgroup_id))
            .collect();
        let owners = containers::attribute(&keys);
        for (event, owner) in events.iter().zip(&owners) {
            let gap = decode(event);
            self.max_interval_ns = self.max_interval_ns.max(gap.tick_interval_ns);
            // The idle task, and a task whose cgroup is unknown, are the host's.
            let owner = if event.hdr.pid == 0 || event.hdr.cgroup_id == 0 {
                ""
            } else {
                owner.as_str()
            };
            storage::save("sched_tick", owner, storage::now(), &gap)?;
            self.saved += 1;
        }
        Ok(())
    }
}

fn decode(e: &SchedTickEvent) -> TickGap {
    let depth = (e.stack_depth as usize).min(e.stack.len());
    let addresses = &e.stack[..depth];
    // No frames, no host call (a failed stack walk records none).
    let stack = if addresses.is_empty() {
        Vec::new()
    } else {
        bpf::symbolize(addresses)
            .unwrap_or_else(|_| addresses.iter().map(|a| format!("0x{a:x}")).collect())
    };
    TickGap {
        tick_interval_ns: e.interval_ns,
        tick_interval_threshold_ns: e.threshold_ns,
        comm: e.hdr.comm_str(),
        pid: e.hdr.pid,
        tgid: e.hdr.tgid,
        cpu: e.hdr.cpu,
        stack: stack.join("\n"),
        period_ns: e.period_ns,
    }
}

impl Collector for SchedTick {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mut out = vec![
            metric::counter("events", self.saved as f64, "Timer interrupt gaps saved."),
            metric::counter(
                "idle_gaps",
                self.idle_gaps as f64,
                "Gaps that ended in the idle task (saved only with report_idle).",
            ),
            metric::gauge(
                "max_interval_seconds",
                self.max_interval_ns as f64 / 1e9,
                "Longest gap between two timer interrupts of a CPU seen since start.",
            ),
        ];
        if let Some(object) = &self.object {
            out.push(metric::counter(
                "gaps",
                object.stat(bpf::Stat::Hits)? as f64,
                "Gaps over the threshold seen in the kernel.",
            ));
            out.push(metric::counter(
                "lost",
                object.stat(bpf::Stat::RingFull)? as f64,
                "Gap records lost in the kernel (ring buffer full).",
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpulse_sdk::records::{EventHeader, KP_EV_SCHED_TICK};

    fn text<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0; N];
        out[..s.len()].copy_from_slice(s.as_bytes());
        out
    }

    fn event(cpu: u32, pid: u32, comm: &str, interval_ns: u64) -> SchedTickEvent {
        SchedTickEvent {
            hdr: EventHeader {
                kind: KP_EV_SCHED_TICK,
                cpu,
                ts_ns: 7_000_000_000,
                pid,
                tgid: pid,
                comm: text(comm),
                ..Default::default()
            },
            interval_ns,
            threshold_ns: 10_000_000,
            period_ns: 4_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn idle_gaps_are_counted_and_saved_only_when_asked() {
        let cfg = |json: &str| Config::from_json(json).expect("json");
        assert!(!SchedTick::init(cfg("{}")).expect("defaults").report_idle);
        assert!(
            SchedTick::init(cfg(r#"{"report_idle": true}"#))
                .expect("report_idle")
                .report_idle
        );
    }

    #[test]
    fn settings_are_checked() {
        let cfg = |json: &str| Config::from_json(json).expect("json");
        assert!(SchedTick::init(cfg("{}")).is_ok());
        assert!(matches!(
            SchedTick::init(cfg(r#"{"frequency_hz": 0}"#)),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            SchedTick::init(cfg(
                r#"{"frequency_hz": 100, "interval_threshold_ns": 15000000}"#
            )),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            SchedTick::init(cfg(r#"{"threshold": 1}"#)),
            Err(Error::InvalidConfig(_))
        ));
    }

    #[test]
    fn decodes_huatuo_fields() {
        let e = event(1, 4242, "stress", 37_000_000);
        let bytes = e.to_bytes();
        let got = decode(&SchedTickEvent::parse_padded(&bytes));
        assert_eq!(got.tick_interval_ns, 37_000_000);
        assert_eq!(got.tick_interval_threshold_ns, 10_000_000);
        assert_eq!((got.cpu, got.pid, got.comm.as_str()), (1, 4242, "stress"));
        assert_eq!(got.period_ns, 4_000_000);
        assert_eq!(got.stack, "", "no frames recorded");
    }

    /// `KPREC002` (host/src/record.rs): magic, u32 metadata length, JSON metadata, then
    /// frames of u64 offset ns, u64 subscription, u32 length, batch bytes.
    fn kprec(batches: &[Vec<Vec<u8>>]) -> Vec<u8> {
        let meta = kpulse_sdk::serde_json::json!({
            "plugin": "sched_tick",
            "synthesized": "plugins/sched_tick unit test replay_fixture_is_current",
        })
        .to_string();
        let mut out = b"KPREC002".to_vec();
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(meta.as_bytes());
        for (i, batch) in batches.iter().enumerate() {
            let mut bytes = Vec::new();
            for record in batch {
                bpf::Records::push(&mut bytes, record);
            }
            out.extend_from_slice(&(i as u64 * 1_000_000).to_le_bytes());
            out.extend_from_slice(&1u64.to_le_bytes()); // the plugin's one subscription
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&bytes);
        }
        out
    }

    /// `tests/fixtures/replay/sched_tick.kprec`, synthesized from the generated record type:
    /// a 37 ms gap on CPU 1 under a user task, then a 12 ms one on CPU 0 in the idle task.
    /// With `KPULSE_WRITE_FIXTURES=1` the test rewrites the file instead of checking it.
    #[test]
    fn replay_fixture_is_current() {
        let first = event(1, 4242, "stress-irqoff", 37_000_000);
        let mut second = event(0, 0, "swapper/0", 12_000_000);
        second.hdr.ts_ns = 9_000_000_000;
        let bytes = kprec(&[
            vec![first.to_bytes().to_vec()],
            vec![second.to_bytes().to_vec()],
        ]);
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/replay/sched_tick.kprec"
        );
        if std::env::var_os("KPULSE_WRITE_FIXTURES").is_some() {
            std::fs::write(path, &bytes).expect("write fixture");
        }
        let committed = std::fs::read(path).expect("read fixture (KPULSE_WRITE_FIXTURES=1)");
        assert!(
            committed == bytes,
            "{path} is stale: KPULSE_WRITE_FIXTURES=1 cargo test -p kpulse-plugin-sched-tick"
        );
    }
}
