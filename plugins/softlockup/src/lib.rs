//! `softlockup`: the kernel watchdog's soft lockup reports (HUATUO's `softlockup`).
//!
//! HUATUO hooks `add_taint(TAINT_SOFTLOCKUP)` with a kprobe, then dumps every CPU's stack
//! with sysrq `l`. kpulse has no kprobes: it matches the watchdog's printk line
//! ("BUG: soft lockup - CPU#1 stuck for 22s! [comm:pid]") on tracepoint `printk/console`.
//! The watchdog prints from its timer interrupt on the stuck CPU, so the captured kernel
//! stack (`cpus_stack`) is the stuck CPU's, through the interrupt into the stuck code; other
//! CPUs' stacks are not collected. Being a text match, any printk containing "soft lockup",
//! including lines written to `/dev/kmsg`, is reported (the `printk_*` fields name the
//! task that printed it).
//!
//! Storage back-off as HUATUO: after a saved event the next one is saved only after the
//! back-off (10 min at first, doubling up to 3 h); each hour without reports halves it
//! again. Every report counts in `kpulse_softlockup_total`, saved or not.

use kpulse_sdk::bindings::kpulse::plugin::clock;
use kpulse_sdk::bpf::{self, Attach, Record};
use kpulse_sdk::prelude::*;
use kpulse_sdk::records::SoftlockupEvent;
use serde::{Deserialize, Serialize};

const OBJECT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../ebpf/build/softlockup.bpf.o"
));
const NS_PER_SEC: u64 = 1_000_000_000;

/// `[plugins.softlockup]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Back-off after a saved event before the next one is saved, seconds (HUATUO: 600);
    /// 0 saves every event.
    backoff_start_secs: u64,
    /// The back-off doubles after each saved event up to this, seconds (HUATUO: 10800).
    backoff_max_secs: u64,
    /// Each period this long without any report halves the back-off, seconds (HUATUO: 3600).
    backoff_decay_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            backoff_start_secs: 600,
            backoff_max_secs: 3 * 3600,
            backoff_decay_secs: 3600,
        }
    }
}

/// HUATUO's storage back-off, on the monotonic clock (ns).
#[derive(Debug)]
struct Backoff {
    start: u64,
    max: u64,
    decay: u64,
    /// The back-off applied after the next saved event.
    current: u64,
    /// No save before this.
    next_save: u64,
    last_report: Option<u64>,
}

impl Backoff {
    fn new(s: &Settings) -> Self {
        let start = s.backoff_start_secs.saturating_mul(NS_PER_SEC);
        Backoff {
            start,
            max: s.backoff_max_secs.saturating_mul(NS_PER_SEC).max(start),
            decay: s.backoff_decay_secs.saturating_mul(NS_PER_SEC),
            current: start,
            next_save: 0,
            last_report: None,
        }
    }

    /// Records a report at `now`; whether to save it.
    fn allow(&mut self, now: u64) -> bool {
        if let (Some(last), true) = (self.last_report, self.decay > 0) {
            let periods = now.saturating_sub(last) / self.decay;
            for _ in 0..periods.min(64) {
                self.current = (self.current / 2).max(self.start);
            }
        }
        self.last_report = Some(now);
        if now < self.next_save {
            return false;
        }
        self.next_save = now.saturating_add(self.current);
        self.current = self.current.saturating_mul(2).min(self.max);
        true
    }
}

struct Softlockup {
    backoff: Backoff,
    object: Option<bpf::Object>,
    /// Every soft lockup report seen.
    total: u64,
    /// Reports not saved because of the back-off.
    suppressed: u64,
}

#[derive(Serialize)]
struct Lockup {
    /// The stuck CPU (from the message; else the CPU that printed).
    cpu: u32,
    /// The task hogging the CPU (from the message; else the task that printed).
    pid: u32,
    comm: String,
    /// Seconds the CPU was stuck, as reported.
    stuck_for_secs: Option<u64>,
    /// Start of the printk line (up to 127 bytes).
    msg: String,
    /// Symbolized kernel stack at the report, innermost first, one frame per line.
    cpus_stack: String,
    printk_cpu: u32,
    printk_pid: u32,
    printk_comm: String,
}

kpulse_sdk::register!(Softlockup {
    name: "softlockup",
    version: "0.1.0",
    interval: 10,
    kinds: [tracing, metric],
    capabilities: ["bpf", "kallsyms"],
    summary: "Soft lockup reports of the kernel watchdog with the stuck CPU's stack",
});

impl Plugin for Softlockup {
    fn init(config: Config) -> Result<Self> {
        let settings: Settings = config.parse()?;
        Ok(Softlockup {
            backoff: Backoff::new(&settings),
            object: None,
            total: 0,
            suppressed: 0,
        })
    }
}

impl Tracing for Softlockup {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        let object = bpf::Object::load(OBJECT, &[])?;
        object.attach("printk_console", Attach::tracepoint("printk", "console"))?;
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
            self.total += 1;
            if !self.backoff.allow(clock::monotonic_ns()) {
                self.suppressed += 1;
                continue;
            }
            storage::save("softlockup", "", storage::now(), &decode(record))?;
        }
        Ok(())
    }
}

fn decode(r: Record<'_>) -> Lockup {
    let e = SoftlockupEvent::parse_padded(r.0);
    let h = &e.hdr;
    let msg = e.msg_str();
    let depth = (e.stack_depth as usize).min(e.stack.len());
    let addresses = &e.stack[..depth];
    let stack = bpf::symbolize(addresses)
        .unwrap_or_else(|_| addresses.iter().map(|a| format!("0x{a:x}")).collect());
    let report = parse_report(&msg);
    Lockup {
        cpu: report.cpu.unwrap_or(h.cpu),
        pid: report.task.as_ref().map_or(h.pid, |t| t.1),
        comm: report.task.map_or_else(|| h.comm_str(), |t| t.0),
        stuck_for_secs: report.stuck_for_secs,
        msg,
        cpus_stack: stack.join("\n"),
        printk_cpu: h.cpu,
        printk_pid: h.pid,
        printk_comm: h.comm_str(),
    }
}

/// What the watchdog line says: "... CPU#<cpu> stuck for <n>s! [<comm>:<pid>]".
#[derive(Debug, Default, PartialEq)]
struct Report {
    cpu: Option<u32>,
    stuck_for_secs: Option<u64>,
    task: Option<(String, u32)>,
}

fn parse_report(msg: &str) -> Report {
    let number = |after: &str| -> Option<u64> {
        let rest = msg.split_once(after)?.1;
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest.get(..end)?.parse().ok()
    };
    let task = msg
        .rsplit_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .and_then(|(inside, _)| inside.rsplit_once(':'))
        .and_then(|(comm, pid)| Some((comm.to_owned(), pid.parse().ok()?)));
    Report {
        cpu: number("CPU#").and_then(|c| u32::try_from(c).ok()),
        stuck_for_secs: number("stuck for "),
        task,
    }
}

impl Collector for Softlockup {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mut metrics = vec![
            metric::counter("total", self.total as f64, "Soft lockup reports."),
            metric::counter(
                "suppressed",
                self.suppressed as f64,
                "Soft lockup reports not saved because of the storage back-off.",
            ),
        ];
        if let Some(object) = &self.object {
            metrics.push(metric::counter(
                "lost",
                object.stat(bpf::Stat::RingFull)? as f64,
                "Soft lockup reports lost because the ring buffer was full.",
            ));
        }
        Ok(metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_watchdog_line() {
        let r = parse_report("watchdog: BUG: soft lockup - CPU#3 stuck for 22s! [my:app:42]");
        assert_eq!(r.cpu, Some(3));
        assert_eq!(r.stuck_for_secs, Some(22));
        assert_eq!(r.task, Some(("my:app".to_owned(), 42)));
        assert_eq!(parse_report("soft lockup"), Report::default());
    }

    #[test]
    fn backoff_grows_caps_and_decays() {
        let s = NS_PER_SEC;
        let mut b = Backoff::new(&Settings::default());
        assert!(b.allow(0));
        assert!(!b.allow(599 * s), "inside the first 10 min");
        assert!(b.allow(600 * s));
        assert!(!b.allow(600 * s + 1199 * s), "then 20 min");
        assert!(b.allow(1800 * s));
        // A lockup that persists is re-reported every ~30 s: saves get rarer up to 3 h.
        let (mut now, mut saved) = (1800 * s, 0);
        while now < 24 * 3600 * s {
            now += 30 * s;
            saved += u32::from(b.allow(now));
        }
        assert_eq!(b.current, 3 * 3600 * s, "capped at 3 h");
        assert!((8..=12).contains(&saved), "{saved} saves in a day");
        let quiet = now + 4 * 3600 * s;
        assert!(b.allow(quiet));
        assert_eq!(
            b.current,
            1350 * s,
            "4 quiet hours: 3 h halved 4 times, then doubled"
        );
        let mut off = Backoff::new(&Settings {
            backoff_start_secs: 0,
            ..Settings::default()
        });
        assert!(off.allow(1) && off.allow(1) && off.allow(2));
    }
}
