//! `iotracing`: HUATUO's IO autotracing. Every `interval` seconds it reads `/proc/diskstats`
//! and computes per device util %, aqu-sz, read/write bytes/s, IOPS and r_await/w_await.
//! When a device is over a threshold in two consecutive samples (non-NVMe util >
//! `util_threshold`; NVMe util > `util_threshold` and read > `rbps_threshold` or write >
//! `wbps_threshold` MB/s; or r_await/w_await > `await_threshold` ms), it attaches
//! `iotracing.bpf.o` for `duration` seconds and saves one `autotracing` document: the
//! device's status, the top processes with their busiest files (fs and disk bytes/s,
//! q2c/d2c latencies), and the threads that waited longest in `io_schedule()` with their
//! stacks.
//!
//! Differences from HUATUO:
//! * tracepoints (BTF) instead of kprobes, so it runs where kprobes do not (see the object's
//!   header for what each hook gives and misses);
//! * the object is loaded at the trigger and dropped after the capture: nothing is attached
//!   while the disks are quiet;
//! * `interval` is a setting (HUATUO hard-codes 5 s); `interval_tracing` is a cool-down
//!   between documents (HUATUO has none beyond its restart interval) and `devices` limits
//!   the watch to some devices;
//! * the capture runs inside the agent instead of a `bin/iotracing` subprocess.

mod diskstats;
mod report;

use std::collections::BTreeMap;
use std::time::Duration;

use kpulse_sdk::bpf::{self, Attach, Global};
use kpulse_sdk::prelude::*;
use kpulse_sdk::records::{IotFileKey, IotFileStat, IotPath};
use serde::Deserialize;

use diskstats::{Thresholds, Trigger, Watcher};
use report::{Capture, Document, IoScheduleStack, ReasonSnapshot, Wait};

const OBJECT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../ebpf/build/iotracing.bpf.o"
));

/// Programs of `iotracing.bpf.o` and their BTF tracepoints; `false`: optional (the
/// tracepoint's subsystem may be absent, e.g. ext4 not loaded).
const PROGRAMS: [(&str, &str, bool); 9] = [
    ("iot_bio_queue", "block_bio_queue", true),
    ("iot_rq_issue", "block_rq_issue", true),
    ("iot_rq_complete", "block_rq_complete", true),
    ("iot_sched_switch", "sched_switch", true),
    ("iot_dio_begin", "iomap_dio_rw_begin", false),
    ("iot_dio_complete", "iomap_dio_complete", false),
    ("iot_ext4_da_write", "ext4_da_write_begin", false),
    ("iot_ext4_write", "ext4_write_begin", false),
    ("iot_filemap_read", "mm_filemap_get_pages", false),
];

/// `[plugins.iotracing]`; HUATUO's `[AutoTracing.IOTracing]` names in snake case.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Seconds between two samples of `/proc/diskstats` (HUATUO: 5, hard-coded).
    interval: u64,
    /// util % over which a non-NVMe device fires (HUATUO `UtilThreshold`).
    util_threshold: f64,
    /// NVMe: read MB/s (2^20 bytes) that must also be exceeded (`RbpsThreshold`).
    rbps_threshold: f64,
    /// NVMe: write MB/s (`WbpsThreshold`).
    wbps_threshold: f64,
    /// r_await or w_await in ms over which any device fires (`AwaitThreshold`).
    await_threshold: f64,
    /// Seconds of capture (HUATUO's `--duration`).
    duration: u64,
    /// Processes per document (`--max-process`).
    max_process: usize,
    /// Files per process (`--max-files-per-process`).
    max_files_per_process: usize,
    /// Seconds after a document before the next capture (kpulse addition).
    interval_tracing: u64,
    /// io_schedule() sleeps reported with a stack from this long, ms (kpulse addition).
    schedule_threshold_ms: u64,
    /// Longest io_schedule() sleeps kept per document (kpulse addition).
    max_stacks: usize,
    /// Kernel-side cap on io_schedule() records per second during a capture.
    max_events_per_second: u64,
    /// Watch only these devices (names as in `/proc/diskstats`); empty: every device.
    devices: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            interval: 5,
            util_threshold: 90.0,
            rbps_threshold: 2000.0,
            wbps_threshold: 1500.0,
            await_threshold: 100.0,
            duration: 10,
            max_process: 10,
            max_files_per_process: 5,
            interval_tracing: 600,
            schedule_threshold_ms: 10,
            max_stacks: 20,
            max_events_per_second: 1000,
            devices: Vec::new(),
        }
    }
}

/// A capture in progress: the object stays attached while this lives.
struct Capturing {
    object: bpf::Object,
    timer: TimerId,
    trigger: Trigger,
    attached_ns: u64,
    attach_ms: u64,
    waits: Vec<Wait>,
    waits_seen: u64,
}

struct Iotracing {
    settings: Settings,
    watcher: Watcher,
    capturing: Option<Capturing>,
    last_document_ns: Option<u64>,
    samples: u64,
    documents: u64,
    malformed: u64,
    last_attach_ms: Option<u64>,
}

kpulse_sdk::register!(Iotracing {
    name: "iotracing",
    version: "0.1.0",
    interval: 5,
    kinds: [tracing, metric],
    capabilities: [
        "read:/proc/diskstats",
        "read:/proc/1/mountinfo",
        "bpf",
        "kallsyms",
        "containers"
    ],
    summary: "IO autotracing: on a saturated or slow disk, the processes, files and io_schedule stacks behind it",
});

impl Plugin for Iotracing {
    fn init(config: Config) -> Result<Self> {
        let settings: Settings = config.parse()?;
        if settings.interval == 0 || settings.duration == 0 {
            return Err(Error::InvalidConfig(
                "interval and duration must be at least 1 s".to_owned(),
            ));
        }
        Ok(Iotracing {
            settings,
            watcher: Watcher::default(),
            capturing: None,
            last_document_ns: None,
            samples: 0,
            documents: 0,
            malformed: 0,
            last_attach_ms: None,
        })
    }
}

impl Tracing for Iotracing {
    fn start(&mut self, ctx: &mut Context) -> Result<()> {
        ctx.every(Duration::from_secs(self.settings.interval))?;
        Ok(())
    }

    fn on_timer(&mut self, ctx: &mut Context, timer: TimerId) -> Result<()> {
        if self.capturing.as_ref().is_some_and(|c| c.timer == timer) {
            return self.finish(ctx);
        }
        let trigger = self.sample(ctx)?;
        let Some(trigger) = trigger else {
            return Ok(());
        };
        if self.capturing.is_some() || self.cooling_down(ctx) {
            return Ok(());
        }
        self.watcher.reset();
        self.begin(ctx, trigger)
    }

    fn on_events(
        &mut self,
        _ctx: &mut Context,
        _subscription: u64,
        records: bpf::Records<'_>,
    ) -> Result<()> {
        let Some(c) = self.capturing.as_mut() else {
            return Ok(());
        };
        let max = self.settings.max_stacks;
        for wait in records.filter_map(|r| report::decode_wait(r.0)) {
            c.waits_seen += 1;
            c.waits.push(wait);
            if c.waits.len() > max.saturating_mul(4).max(64) {
                report::keep_longest(&mut c.waits, max);
            }
        }
        Ok(())
    }
}

impl Iotracing {
    fn thresholds(&self) -> Thresholds {
        Thresholds {
            util: self.settings.util_threshold,
            rbps: self.settings.rbps_threshold,
            wbps: self.settings.wbps_threshold,
            await_ms: self.settings.await_threshold,
        }
    }

    fn sample(&mut self, ctx: &Context) -> Result<Option<Trigger>> {
        let text = fs::read_to_string("/proc/diskstats")?;
        let (disks, skipped) = procfs::parse_diskstats(&text);
        self.malformed += skipped;
        self.samples += 1;
        let now_ms = ctx.monotonic_ns() as f64 / 1e6;
        let thresholds = self.thresholds();
        Ok(self
            .watcher
            .sample(disks, now_ms, &self.settings.devices, &thresholds))
    }

    fn cooling_down(&self, ctx: &Context) -> bool {
        let cooldown = self.settings.interval_tracing.saturating_mul(1_000_000_000);
        self.last_document_ns
            .is_some_and(|last| ctx.monotonic_ns().saturating_sub(last) < cooldown)
    }

    /// Loads and attaches the object, and arms the end of the capture.
    fn begin(&mut self, ctx: &mut Context, trigger: Trigger) -> Result<()> {
        let t0 = ctx.monotonic_ns();
        let object = bpf::Object::load(
            OBJECT,
            &[
                Global::u64(
                    "sched_threshold_ns",
                    self.settings
                        .schedule_threshold_ms
                        .saturating_mul(1_000_000),
                ),
                Global::u64("max_events_per_second", self.settings.max_events_per_second),
                Global::u32("ratelimit_nr_cpus", bpf::ratelimit_nr_cpus()),
            ],
        )?;
        for (program, tracepoint, required) in PROGRAMS {
            match object.attach(program, Attach::TpBtf(tracepoint.to_owned())) {
                Ok(()) => {}
                Err(err) if !required => {
                    log::warn(&format!("{tracepoint} not traced: {err}"));
                }
                Err(err) => return Err(err),
            }
        }
        object.subscribe("events")?;
        let attached_ns = ctx.monotonic_ns();
        let attach_ms = attached_ns.saturating_sub(t0) / 1_000_000;
        let timer = ctx.after(Duration::from_secs(self.settings.duration))?;
        log::info(&format!(
            "{}; capturing for {} s (attached in {attach_ms} ms)",
            trigger.over.summary, self.settings.duration
        ));
        self.last_attach_ms = Some(attach_ms);
        self.capturing = Some(Capturing {
            object,
            timer,
            trigger,
            attached_ns,
            attach_ms,
            waits: Vec::new(),
            waits_seen: 0,
        });
        Ok(())
    }

    /// Reads the maps, drops the object and saves the document.
    fn finish(&mut self, ctx: &mut Context) -> Result<()> {
        let Some(mut c) = self.capturing.take() else {
            return Ok(());
        };
        let duration_ns = ctx.monotonic_ns().saturating_sub(c.attached_ns);
        let stats = parse_entries(c.object.entries("file_stats")?, |k, v| {
            Some((IotFileKey::parse(k)?, IotFileStat::parse(v)?))
        });
        let paths: BTreeMap<(u32, u64), IotPath> =
            parse_entries(c.object.entries("file_paths")?, |k, v| {
                let key = IotFileKey::parse(k)?;
                Some(((key.dev, key.ino), IotPath::parse(v)?))
            })
            .into_iter()
            .collect();
        let dropped =
            c.object.stat(bpf::Stat::RateLimited)? + c.object.stat(bpf::Stat::RingFull)?;
        // Detach now: the rest is user-space work.
        drop(c.object);

        let mounts = match fs::read_to_string("/proc/1/mountinfo") {
            Ok(text) => report::mount_points(&text),
            Err(err) => {
                log::debug(&format!("no mount points for paths: {err}"));
                BTreeMap::new()
            }
        };
        let dev_names = self.watcher.names().clone();
        let cx = report::Context {
            secs: duration_ns as f64 / 1e9,
            max_process: self.settings.max_process,
            max_files_per_process: self.settings.max_files_per_process,
            dev_names: &dev_names,
            mounts: &mounts,
        };
        let mut processes = report::processes(stats, &paths, &cx);
        let kept = c.waits.len();
        report::keep_longest(&mut c.waits, kept);
        let mut stacks: Vec<IoScheduleStack> = c
            .waits
            .iter()
            .filter_map(|w| {
                let stack = report::from_schedule(symbolize(&w.stack));
                report::through_io_schedule(&stack).then(|| IoScheduleStack {
                    pid: w.pid,
                    tid: w.tid,
                    cpu: w.cpu,
                    comm: w.comm.clone(),
                    container_hostname: String::new(),
                    schedule_latency_us: w.latency_ns / 1000,
                    stack,
                })
            })
            .take(self.settings.max_stacks)
            .collect();
        let hostnames = container_hostnames(
            processes
                .iter()
                .map(|p| p.pid)
                .chain(stacks.iter().map(|s| s.pid)),
        );
        for p in &mut processes {
            p.container_hostname = hostnames.get(&p.pid).cloned().unwrap_or_default();
        }
        for s in &mut stacks {
            s.container_hostname = hostnames.get(&s.pid).cloned().unwrap_or_default();
        }
        let document = Document {
            reason_snapshot: ReasonSnapshot::new(&c.trigger),
            process_file_io_stats: processes,
            io_schedule_timeout_stacks: stacks,
            capture: Capture {
                duration_ms: duration_ns / 1_000_000,
                attach_ms: c.attach_ms,
                schedule_threshold_ms: self.settings.schedule_threshold_ms,
                schedule_waits: c.waits_seen,
                schedule_waits_dropped: dropped,
            },
        };
        // The cool-down starts even if the save fails: a broken sink must not turn this into
        // a capture loop.
        self.last_document_ns = Some(ctx.monotonic_ns());
        storage::save_autotracing("iotracing", "", storage::now(), &document)?;
        self.documents += 1;
        Ok(())
    }
}

/// Decodes map entries, skipping any of an unexpected size.
fn parse_entries<T>(
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    parse: impl Fn(&[u8], &[u8]) -> Option<T>,
) -> Vec<T> {
    entries.iter().filter_map(|(k, v)| parse(k, v)).collect()
}

/// `function+0xoff` names, or hex without the `kallsyms` grant.
fn symbolize(addresses: &[u64]) -> Vec<String> {
    bpf::symbolize(addresses)
        .unwrap_or_else(|_| addresses.iter().map(|a| format!("0x{a:x}")).collect())
}

/// Container hostnames by process id, from the host's registry (one call); empty without
/// the `containers` grant or for host processes.
fn container_hostnames(pids: impl Iterator<Item = u32>) -> BTreeMap<u32, String> {
    let mut pids: Vec<u32> = pids.collect();
    pids.sort_unstable();
    pids.dedup();
    let keys: Vec<containers::Key> = pids.iter().map(|&p| containers::Key::Pid(p)).collect();
    let Ok(ids) = containers::resolve(&keys) else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for (pid, id) in pids.into_iter().zip(ids) {
        if let Some(id) = id
            && let Ok(Some(c)) = containers::get(&id)
            && containers::is_container(&c)
        {
            out.insert(pid, c.hostname);
        }
    }
    out
}

impl Collector for Iotracing {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mut out = vec![
            metric::counter(
                "samples",
                self.samples as f64,
                "Samples of /proc/diskstats taken.",
            ),
            metric::counter(
                "documents",
                self.documents as f64,
                "Autotracing documents saved.",
            ),
            metric::gauge(
                "capturing",
                f64::from(u8::from(self.capturing.is_some())),
                "1 while the BPF programs are attached for a capture.",
            ),
            metric::counter(
                "malformed_lines",
                self.malformed as f64,
                "Lines of /proc/diskstats that did not parse and were skipped.",
            ),
        ];
        if let Some(ms) = self.last_attach_ms {
            out.push(metric::gauge(
                "attach_seconds",
                ms as f64 / 1000.0,
                "Time the last capture took to load and attach its BPF programs.",
            ));
        }
        Ok(out)
    }
}
