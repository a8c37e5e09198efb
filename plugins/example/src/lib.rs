//! `example`: a miniature autotracing, and the template for new tracers.
//!
//! `start` arms a periodic timer. On each tick the plugin samples `/proc/loadavg` and
//! `/proc/meminfo`; when runnable tasks per CPU exceed a threshold it captures context (the
//! runnable processes, from `/proc/<pid>/stat`) and saves an `autotracing` document, then
//! waits out a cool-down, like HUATUO's `cpuidle`/`memburst`. It is also a metric collector:
//! `update` exposes how often it fired. Its restart interval is 10 s.

use std::time::Duration;

use kpulse_sdk::prelude::*;
use serde::{Deserialize, Serialize};

/// `[plugins.example]` in the agent config.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Sampling period in milliseconds.
    interval_ms: u64,
    /// Fire when runnable tasks per CPU reach this value (0 fires on every tick).
    running_per_cpu_threshold: f64,
    /// Minimum time between two documents, in seconds.
    cooldown_secs: u64,
    /// Runnable processes captured per document.
    max_processes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            interval_ms: 1000,
            running_per_cpu_threshold: 4.0,
            cooldown_secs: 60,
            max_processes: 10,
        }
    }
}

struct Example {
    settings: Settings,
    cpus: f64,
    ticks: u64,
    fired: u64,
    last_fired_ns: Option<u64>,
}

#[derive(Serialize)]
struct Runnable {
    pid: u64,
    comm: String,
    utime_ticks: u64,
    stime_ticks: u64,
}

#[derive(Serialize)]
struct Record {
    running: u64,
    running_per_cpu: f64,
    running_per_cpu_threshold: f64,
    load1: f64,
    mem_available_bytes: u64,
    runnable: Vec<Runnable>,
}

kpulse_sdk::register!(Example {
    name: "example",
    version: "0.1.0",
    interval: 10,
    kinds: [tracing, metric],
    capabilities: ["read:/proc/loadavg", "read:/proc/meminfo", "read:/proc"],
    summary: "Miniature autotracing: captures runnable tasks when the run queue is long",
});

impl Plugin for Example {
    fn init(config: Config) -> Result<Self> {
        let settings: Settings = config.parse()?;
        if settings.interval_ms == 0 {
            return Err(Error::InvalidConfig(
                "interval_ms must be at least 1".to_owned(),
            ));
        }
        Ok(Example {
            settings,
            cpus: 1.0,
            ticks: 0,
            fired: 0,
            last_fired_ns: None,
        })
    }
}

impl Tracing for Example {
    fn start(&mut self, ctx: &mut Context) -> Result<()> {
        self.cpus = f64::from(ctx.host().cpu_count.max(1));
        ctx.every(Duration::from_millis(self.settings.interval_ms))?;
        Ok(())
    }

    fn on_timer(&mut self, ctx: &mut Context, _timer: TimerId) -> Result<()> {
        self.ticks += 1;
        let load = procfs::loadavg()?;
        let per_cpu = load.running as f64 / self.cpus;
        if per_cpu < self.settings.running_per_cpu_threshold {
            return Ok(());
        }
        let now = ctx.now_ns();
        let cooldown = self.settings.cooldown_secs * 1_000_000_000;
        if self
            .last_fired_ns
            .is_some_and(|last| now.saturating_sub(last) < cooldown)
        {
            return Ok(());
        }
        let record = Record {
            running: load.running,
            running_per_cpu: per_cpu,
            running_per_cpu_threshold: self.settings.running_per_cpu_threshold,
            load1: load.load1,
            mem_available_bytes: procfs::meminfo()?.get("MemAvailable").copied().unwrap_or(0),
            runnable: self.runnable(),
        };
        storage::save_autotracing("example", "", storage::now(), &record)?;
        self.fired += 1;
        self.last_fired_ns = Some(now);
        Ok(())
    }
}

impl Example {
    /// Processes in state `R`, from `/proc/<pid>/stat`. Processes that exit meanwhile are
    /// skipped.
    fn runnable(&self) -> Vec<Runnable> {
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .iter()
            .filter(|e| e.name.bytes().all(|b| b.is_ascii_digit()))
            .filter_map(|e| fs::read_to_string(&format!("/proc/{}/stat", e.name)).ok())
            .filter_map(|text| procfs::parse_process_stat(&text).ok())
            .filter(|stat| stat.state == 'R')
            .take(self.settings.max_processes)
            .map(|stat| Runnable {
                pid: stat.pid,
                comm: stat.comm,
                utime_ticks: stat.utime,
                stime_ticks: stat.stime,
            })
            .collect()
    }
}

impl Collector for Example {
    fn update(&mut self) -> Result<Vec<Metric>> {
        Ok(vec![
            metric::counter("ticks", self.ticks as f64, "Samples taken."),
            metric::counter("fired", self.fired as f64, "Autotracing documents saved."),
        ])
    }
}
