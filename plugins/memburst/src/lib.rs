//! `memburst`: HUATUO's host anonymous-memory burst autotracing.
//!
//! Every `interval` seconds the plugin samples Active(anon) + Inactive(anon) from
//! `/proc/meminfo` into a sliding window of `sliding_window_length` samples (the first one
//! when it starts, as HUATUO's `Start` does). Once the window is full it fires when the
//! current sample is at least `1 + delta_memory_burst / 100` times the oldest one in the
//! window **and** at least `delta_anon_threshold` % of MemTotal. A fire lists the
//! `dump_process_max_num` processes with the largest RSS (`VmRSS` of `/proc/<pid>/status`,
//! HUATUO's gopsutil `MemoryInfo().RSS`) and saves an `autotracing` document, then waits
//! `interval_tracing` seconds before the next one (bursts meanwhile are counted, not saved).
//!
//! Cost when quiet: one read of `/proc/meminfo` per tick; `/proc` is walked only when the
//! rule fires. No BPF.
//!
//! Differences from HUATUO: the two percentages accept fractions (HUATUO's integers are
//! still valid), the document carries the trigger figures next to HUATUO's
//! `top_memory_usage`, and the trigger state is exported as metrics.

use std::time::Duration;

use kpulse_sdk::bindings::kpulse::plugin::clock;
use kpulse_sdk::fs::EntryKind;
use kpulse_sdk::prelude::*;
use serde::{Deserialize, Serialize};

mod window;
use window::{Thresholds, Verdict, Window};

const NS_PER_SEC: u64 = 1_000_000_000;

/// `[plugins.memburst]`: HUATUO's `MemoryBurst` section in snake_case, with its defaults.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Sampling period, in seconds (`Interval`, 10).
    interval: u64,
    /// Samples in the sliding window; the current one is compared with the oldest, taken
    /// `(sliding_window_length - 1) × interval` seconds earlier (`SlidingWindowLength`, 60).
    sliding_window_length: usize,
    /// Growth over the window that counts as a burst, in percent of the oldest sample:
    /// 100 means the anonymous memory doubled (`DeltaMemoryBurst`, 100).
    delta_memory_burst: f64,
    /// ...and the current anonymous memory must be at least this percentage of MemTotal
    /// (`DeltaAnonThreshold`, 70).
    delta_anon_threshold: f64,
    /// Minimum time between two documents, in seconds (`IntervalTracing`, 1800).
    interval_tracing: u64,
    /// Processes listed in `top_memory_usage`, largest RSS first (`DumpProcessMaxNum`, 10).
    dump_process_max_num: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            interval: 10,
            sliding_window_length: 60,
            delta_memory_burst: 100.0,
            delta_anon_threshold: 70.0,
            interval_tracing: 1800,
            dump_process_max_num: 10,
        }
    }
}

/// Bound on `dump_process_max_num`, to keep a document small.
const MAX_PROCESSES: usize = 1000;

impl Settings {
    fn validate(&self) -> std::result::Result<(), String> {
        if self.interval == 0 {
            return Err("interval must be at least 1 (seconds)".to_owned());
        }
        if self.sliding_window_length < 2 {
            return Err(format!(
                "sliding_window_length must be at least 2 (the current sample and an older one), got {}",
                self.sliding_window_length
            ));
        }
        if !(self.delta_memory_burst.is_finite() && self.delta_memory_burst >= 0.0) {
            return Err(format!(
                "delta_memory_burst must be a percentage >= 0, got {}",
                self.delta_memory_burst
            ));
        }
        if !(0.0..=100.0).contains(&self.delta_anon_threshold) {
            return Err(format!(
                "delta_anon_threshold must be a percentage of MemTotal in [0, 100], got {}",
                self.delta_anon_threshold
            ));
        }
        if !(1..=MAX_PROCESSES).contains(&self.dump_process_max_num) {
            return Err(format!(
                "dump_process_max_num must be in [1, {MAX_PROCESSES}], got {}",
                self.dump_process_max_num
            ));
        }
        Ok(())
    }
}

struct Memburst {
    settings: Settings,
    window: Window,
    /// The last sample's verdict and thresholds (for the metrics).
    last: Option<(Verdict, Thresholds)>,
    samples: u64,
    fired: u64,
    /// Bursts seen while cooling down.
    suppressed: u64,
    /// Monotonic ns of the last document.
    last_fired_ns: Option<u64>,
}

/// One entry of `top_memory_usage`; the keys are HUATUO's (its Go field names).
#[derive(Serialize, Debug, PartialEq)]
struct ProcessMem {
    #[serde(rename = "PID")]
    pid: u32,
    #[serde(rename = "ProcessName")]
    process_name: String,
    /// RSS in bytes.
    #[serde(rename = "MemSize")]
    mem_size: u64,
}

/// The `tracer_data` of a document.
#[derive(Serialize)]
struct Document {
    top_memory_usage: Vec<ProcessMem>,
    /// Active(anon) + Inactive(anon) now, and at the oldest sample of the window.
    anon_bytes: u64,
    oldest_anon_bytes: u64,
    mem_total_bytes: u64,
    /// `anon_bytes / oldest_anon_bytes` (null when the oldest sample was 0).
    burst_ratio: Option<f64>,
    /// The thresholds that were crossed: settings and the values they give.
    delta_memory_burst: f64,
    threshold_ratio: f64,
    delta_anon_threshold: f64,
    anon_threshold_bytes: u64,
    sliding_window_length: usize,
    interval: u64,
}

kpulse_sdk::register!(Memburst {
    name: "memburst",
    interval: 10,
    kinds: [tracing, metric],
    capabilities: ["read:/proc"],
    summary: "Top memory users when the host's anonymous memory bursts (HUATUO memburst)",
});

impl Plugin for Memburst {
    fn init(config: Config) -> Result<Self> {
        let settings: Settings = config.parse()?;
        settings.validate().map_err(Error::InvalidConfig)?;
        // A kernel without these meminfo fields (older than 2.6.28) cannot be judged.
        match read_anon() {
            Ok(_) => {}
            Err(err) if err.is_access_denied() => return Err(err),
            Err(err) => {
                return Err(Error::NotSupported(format!(
                    "no anonymous memory figures: {err}"
                )));
            }
        }
        Ok(Memburst {
            window: Window::new(settings.sliding_window_length),
            settings,
            last: None,
            samples: 0,
            fired: 0,
            suppressed: 0,
            last_fired_ns: None,
        })
    }
}

/// `(Active(anon) + Inactive(anon), MemTotal)` in bytes.
fn read_anon() -> Result<(u64, u64)> {
    anon_of(&procfs::meminfo()?)
}

fn anon_of(meminfo: &std::collections::BTreeMap<String, u64>) -> Result<(u64, u64)> {
    let get = |key: &str| {
        meminfo
            .get(key)
            .copied()
            .ok_or_else(|| Error::msg(format!("/proc/meminfo has no {key}")))
    };
    Ok((
        get("Active(anon)")?.saturating_add(get("Inactive(anon)")?),
        get("MemTotal")?,
    ))
}

impl Tracing for Memburst {
    fn start(&mut self, ctx: &mut Context) -> Result<()> {
        ctx.every(Duration::from_secs(self.settings.interval))?;
        // HUATUO takes its first sample when it starts.
        self.sample(ctx.monotonic_ns())
    }

    fn on_timer(&mut self, ctx: &mut Context, _timer: TimerId) -> Result<()> {
        self.sample(ctx.monotonic_ns())
    }
}

impl Memburst {
    fn sample(&mut self, now_ns: u64) -> Result<()> {
        let (anon, mem_total) = read_anon()?;
        let thresholds = Thresholds::new(
            self.settings.delta_memory_burst,
            self.settings.delta_anon_threshold,
            mem_total,
        );
        let verdict = self.window.push(anon, thresholds);
        self.samples += 1;
        self.last = Some((verdict, thresholds));
        if !verdict.burst {
            return Ok(());
        }
        if self.cooldown_remaining_ns(now_ns) > 0 {
            self.suppressed += 1;
            return Ok(());
        }
        let document = Document {
            top_memory_usage: top_processes(self.settings.dump_process_max_num)?,
            anon_bytes: verdict.current,
            oldest_anon_bytes: verdict.oldest.unwrap_or(0),
            mem_total_bytes: mem_total,
            burst_ratio: verdict.ratio,
            delta_memory_burst: self.settings.delta_memory_burst,
            threshold_ratio: thresholds.burst_ratio,
            delta_anon_threshold: self.settings.delta_anon_threshold,
            anon_threshold_bytes: thresholds.anon_floor,
            sliding_window_length: self.settings.sliding_window_length,
            interval: self.settings.interval,
        };
        // The cool-down starts even if the save fails (a full queue): no retry storm.
        self.last_fired_ns = Some(now_ns);
        storage::save_autotracing("memburst", "", storage::now(), &document)?;
        self.fired += 1;
        Ok(())
    }

    fn cooldown_remaining_ns(&self, now_ns: u64) -> u64 {
        let cooldown = self.settings.interval_tracing.saturating_mul(NS_PER_SEC);
        self.last_fired_ns.map_or(0, |last| {
            cooldown.saturating_sub(now_ns.saturating_sub(last))
        })
    }
}

/// The `max` processes with the largest RSS, largest first. Processes that exit meanwhile
/// and kernel threads (no `VmRSS`) are skipped.
fn top_processes(max: usize) -> Result<Vec<ProcessMem>> {
    let mut all: Vec<ProcessMem> = fs::read_dir("/proc")?
        .iter()
        .filter(|e| e.kind == EntryKind::Directory)
        .filter_map(|e| e.name.parse::<u32>().ok())
        .filter_map(|pid| {
            let text = fs::read_to_string(&format!("/proc/{pid}/status")).ok()?;
            let (process_name, mem_size) = parse_status(&text)?;
            Some(ProcessMem {
                pid,
                process_name,
                mem_size,
            })
        })
        .collect();
    rank(&mut all, max);
    Ok(all)
}

/// Sorts by RSS, largest first (ties by pid), and keeps `max`.
fn rank(processes: &mut Vec<ProcessMem>, max: usize) {
    processes.sort_by(|a, b| b.mem_size.cmp(&a.mem_size).then(a.pid.cmp(&b.pid)));
    processes.truncate(max);
}

/// `Name` and `VmRSS` (bytes) of a `/proc/<pid>/status`; `None` without `VmRSS` (a kernel
/// thread) or with a malformed one.
fn parse_status(text: &str) -> Option<(String, u64)> {
    let mut name = None;
    let mut rss = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("Name:") {
            name = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("VmRSS:") {
            let kib: u64 = v.trim().strip_suffix("kB")?.trim().parse().ok()?;
            rss = Some(kib.saturating_mul(1024));
        }
        if name.is_some() && rss.is_some() {
            break;
        }
    }
    Some((name?, rss?))
}

impl Collector for Memburst {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mut out = vec![
            metric::counter(
                "samples",
                self.samples as f64,
                "Samples of /proc/meminfo taken.",
            ),
            metric::counter("fired", self.fired as f64, "Autotracing documents saved."),
            metric::counter(
                "suppressed",
                self.suppressed as f64,
                "Bursts seen during the cool-down (interval_tracing), not saved.",
            ),
            metric::gauge(
                "window_samples",
                self.window.len() as f64,
                "Samples in the sliding window (the rule is judged once it holds sliding_window_length).",
            ),
            metric::gauge(
                "cooldown_remaining_seconds",
                self.cooldown_remaining_ns(clock::monotonic_ns()) as f64 / NS_PER_SEC as f64,
                "Time before a burst can be saved again (0: armed).",
            ),
        ];
        let Some((verdict, thresholds)) = self.last else {
            return Ok(out);
        };
        out.push(metric::gauge(
            "anon_bytes",
            verdict.current as f64,
            "Active(anon) + Inactive(anon) at the last sample.",
        ));
        out.push(metric::gauge(
            "threshold_ratio",
            thresholds.burst_ratio,
            "Growth over the window that fires: 1 + delta_memory_burst / 100.",
        ));
        out.push(metric::gauge(
            "anon_threshold_bytes",
            thresholds.anon_floor as f64,
            "Anonymous memory that fires: delta_anon_threshold percent of MemTotal.",
        ));
        if let Some(oldest) = verdict.oldest {
            out.push(metric::gauge(
                "window_oldest_anon_bytes",
                oldest as f64,
                "Anonymous memory at the oldest sample of the window.",
            ));
        }
        if let Some(ratio) = verdict.ratio {
            out.push(metric::gauge(
                "burst_ratio",
                ratio,
                "Anonymous memory now over the oldest sample of the window.",
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> std::result::Result<Settings, String> {
        let settings: Settings = serde_json::from_str(json).map_err(|e| e.to_string())?;
        settings.validate()?;
        Ok(settings)
    }

    #[test]
    fn defaults_are_huatuos() {
        let s = config("{}").expect("defaults");
        assert_eq!(s.interval, 10);
        assert_eq!(s.sliding_window_length, 60);
        assert_eq!(s.delta_memory_burst, 100.0);
        assert_eq!(s.delta_anon_threshold, 70.0);
        assert_eq!(s.interval_tracing, 1800);
        assert_eq!(s.dump_process_max_num, 10);
    }

    #[test]
    fn bad_settings_are_refused_with_the_key() {
        for (json, key) in [
            (r#"{"interval": 0}"#, "interval"),
            (r#"{"sliding_window_length": 1}"#, "sliding_window_length"),
            (r#"{"delta_memory_burst": -1}"#, "delta_memory_burst"),
            (r#"{"delta_anon_threshold": 101}"#, "delta_anon_threshold"),
            (r#"{"dump_process_max_num": 0}"#, "dump_process_max_num"),
            (r#"{"DeltaMemoryBurst": 100}"#, "DeltaMemoryBurst"),
        ] {
            let err = config(json).expect_err(json);
            assert!(err.contains(key), "{json}: {err}");
        }
        // HUATUO's integers are fine.
        config(r#"{"delta_anon_threshold": 5, "delta_memory_burst": 50}"#).expect("integers");
    }

    #[test]
    fn status_gives_name_and_rss() {
        let text = "Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\n\
                    VmPeak:\t 2105000 kB\nVmRSS:\t 2101248 kB\nRssAnon:\t 2097152 kB\n";
        assert_eq!(
            parse_status(text),
            Some(("python3".to_owned(), 2101248 * 1024))
        );
        // A kernel thread has no VmRSS.
        assert_eq!(
            parse_status("Name:\tkthreadd\nState:\tS (sleeping)\n"),
            None
        );
        assert_eq!(parse_status("Name:\tx\nVmRSS:\tlots kB\n"), None);
    }

    #[test]
    fn ranking_keeps_the_largest() {
        let p = |pid, mem_size| ProcessMem {
            pid,
            process_name: format!("p{pid}"),
            mem_size,
        };
        let mut all = vec![p(1, 10), p(2, 30), p(3, 20), p(4, 30)];
        rank(&mut all, 3);
        assert_eq!(all, vec![p(2, 30), p(4, 30), p(3, 20)]);
    }

    #[test]
    fn anon_is_active_plus_inactive() {
        let meminfo = procfs::parse_meminfo(
            "MemTotal:       24684084 kB\nActive(anon):       1536 kB\nInactive(anon):     5912 kB\n",
        );
        assert_eq!(
            anon_of(&meminfo).expect("anon"),
            ((1536 + 5912) * 1024, 24684084 * 1024)
        );
        let err = anon_of(&procfs::parse_meminfo("MemTotal: 1 kB\n")).expect_err("missing");
        assert!(err.to_string().contains("Active(anon)"), "{err}");
    }

    #[test]
    fn document_keys_are_huatuos() {
        let json = serde_json::to_value(ProcessMem {
            pid: 7,
            process_name: "a".to_owned(),
            mem_size: 9,
        })
        .expect("json");
        assert_eq!(
            json,
            serde_json::json!({"PID": 7, "ProcessName": "a", "MemSize": 9})
        );
    }
}
