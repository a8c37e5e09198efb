//! `cpusys`: HUATUO's host sys-CPU autotracing. Every `interval` seconds it reads the `cpu`
//! line of `/proc/stat`; `system_percent` is Δsystem / Δ(user..steal) × 100 over the
//! interval and `system_percent_delta` its change since the previous interval (the first
//! interval after start is only a baseline: the agent's own start is no spike). When
//! `system_percent > sys_threshold` **and** `system_percent_delta > delta_sys_threshold`
//! it takes a host-wide on-cpu profile (the host's sampler, kernel and user stacks, 99 Hz
//! for `duration` seconds) and saves an `autotracing` document, then waits
//! `interval_tracing` seconds before it fires again.
//!
//! ```toml
//! [plugins.cpusys]      # HUATUO's [AutoTracing.CPUSys], snake_cased; these are the defaults
//! interval = 10
//! sys_threshold = 45.0
//! delta_sys_threshold = 20.0
//! interval_tracing = 1800
//! duration = 10
//! max_flame_kib = 768   # kpulse: budget of flamedata + folded in one document
//! ```
//!
//! Document (`tracer_data`): `system_percent, system_percent_threshold,
//! system_percent_delta, system_percent_delta_threshold, flamedata, folded, profile`
//! (see `src/trace.rs`). Metrics: the last values and thresholds, `fired_total`,
//! `cooldown_remaining_seconds`, and the profiling counters of `src/trace.rs`. The profile
//! also needs the operator's `policy.profile_allow`.

use std::time::{Duration, Instant};

use kpulse_sdk::prelude::*;
use kpulse_sdk::procfs::CpuTimes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

mod trace;
use trace::{Tracer, Trigger};

/// `[plugins.cpusys]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Sampling period of `/proc/stat`, seconds (HUATUO `CPUSys.Interval`).
    interval: u64,
    /// Fire above this sys% ... (`SysThreshold`)
    sys_threshold: f64,
    /// ... when it also rose by more than this since the previous interval
    /// (`DeltaSysThreshold`).
    delta_sys_threshold: f64,
    /// Seconds between two profiles (`IntervalTracing`).
    interval_tracing: u64,
    /// Seconds of sampling (HUATUO's `perf --duration 10`).
    duration: u64,
    /// Budget of `flamedata` + `folded` in one document, KiB.
    max_flame_kib: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            interval: 10,
            sys_threshold: 45.0,
            delta_sys_threshold: 20.0,
            interval_tracing: 1800,
            duration: 10,
            max_flame_kib: 768,
        }
    }
}

impl Settings {
    fn check(&self) -> Result<()> {
        for (key, value) in [("interval", self.interval), ("duration", self.duration)] {
            if value == 0 {
                return Err(Error::InvalidConfig(format!("{key} must be at least 1")));
            }
        }
        if self.max_flame_kib == 0 {
            return Err(Error::InvalidConfig(
                "max_flame_kib must be at least 1".to_owned(),
            ));
        }
        Ok(())
    }
}

struct Cpusys {
    settings: Settings,
    last: Option<CpuTimes>,
    /// A complete interval was seen: `system_percent` is a baseline for the next.
    baseline: bool,
    /// Last interval's sys% and its change.
    system_percent: f64,
    system_percent_delta: f64,
    /// Intervals evaluated (the baseline included).
    intervals: u64,
    fired: u64,
    /// When the last profile started.
    cooldown_since: Option<Instant>,
    tracer: Tracer,
}

kpulse_sdk::register!(Cpusys {
    name: "cpusys",
    version: "0.1.0",
    interval: 20,
    kinds: [tracing, metric],
    capabilities: ["read:/proc/stat", "profile"],
    summary: "Host sys-CPU spike autotracing: a host-wide CPU profile when sys% jumps (HUATUO's cpusys)",
});

impl Plugin for Cpusys {
    fn init(config: Config) -> Result<Self> {
        let settings: Settings = config.parse()?;
        settings.check()?;
        let max_flame_kib = settings.max_flame_kib;
        Ok(Cpusys {
            settings,
            last: None,
            baseline: false,
            system_percent: 0.0,
            system_percent_delta: 0.0,
            intervals: 0,
            fired: 0,
            cooldown_since: None,
            tracer: Tracer::new("cpusys", max_flame_kib),
        })
    }
}

/// sys% of an interval: Δsystem over Δ(user..steal); `None` when no tick passed or a
/// counter went backwards (a CPU went offline).
fn system_percent(prev: &CpuTimes, now: &CpuTimes) -> Option<f64> {
    let total = now.total().checked_sub(prev.total())?;
    let system = now.system.checked_sub(prev.system)?;
    (total > 0).then(|| system as f64 * 100.0 / total as f64)
}

impl Cpusys {
    fn cooldown_remaining(&self) -> Duration {
        let cooldown = Duration::from_secs(self.settings.interval_tracing);
        self.cooldown_since.map_or(Duration::ZERO, |since| {
            cooldown.saturating_sub(since.elapsed())
        })
    }

    /// Takes one interval's sys%; returns whether both thresholds are crossed.
    fn observe(&mut self, sys: f64) -> bool {
        self.intervals += 1;
        self.system_percent_delta = sys - self.system_percent;
        self.system_percent = sys;
        if !std::mem::replace(&mut self.baseline, true) {
            self.system_percent_delta = 0.0;
            return false;
        }
        sys > self.settings.sys_threshold
            && self.system_percent_delta > self.settings.delta_sys_threshold
    }

    fn tick(&mut self, ctx: &mut Context) -> Result<()> {
        if self.tracer.retry(ctx).is_some() {
            self.cooldown_since = Some(Instant::now());
        }
        let now = procfs::stat_cpu()?;
        let Some(prev) = self.last.replace(now) else {
            return Ok(());
        };
        let Some(sys) = system_percent(&prev, &now) else {
            return Ok(());
        };
        if !self.observe(sys)
            || !self.cooldown_remaining().is_zero()
            || self.tracer.pending_key().is_some()
        {
            return Ok(());
        }
        let s = &self.settings;
        self.fired += 1;
        log::info(&format!(
            "sys {sys:.1}% (+{:.1}) above {}% (+{}): profiling the host for {} s",
            self.system_percent_delta, s.sys_threshold, s.delta_sys_threshold, s.duration
        ));
        let trigger = Trigger {
            key: String::new(),
            container_id: String::new(),
            request: profiler::Request::host().duration(Duration::from_secs(s.duration)),
            fields: self.fields(),
        };
        if self.tracer.fire(ctx, trigger) {
            self.cooldown_since = Some(Instant::now());
        }
        Ok(())
    }

    fn fields(&self) -> Map<String, Value> {
        let s = &self.settings;
        let fields = json!({
            "system_percent": self.system_percent,
            "system_percent_threshold": s.sys_threshold,
            "system_percent_delta": self.system_percent_delta,
            "system_percent_delta_threshold": s.delta_sys_threshold,
        });
        match fields {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }
}

impl Tracing for Cpusys {
    fn start(&mut self, ctx: &mut Context) -> Result<()> {
        self.last = Some(procfs::stat_cpu()?);
        ctx.every(Duration::from_secs(self.settings.interval))?;
        Ok(())
    }

    fn on_timer(&mut self, ctx: &mut Context, timer: TimerId) -> Result<()> {
        if self.tracer.on_timer(ctx, timer) {
            return Ok(());
        }
        self.tick(ctx)
    }
}

impl Collector for Cpusys {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let s = &self.settings;
        let mut out = vec![
            metric::gauge(
                "system_percent",
                self.system_percent,
                "Host CPU time in system mode over the last interval, percent of all ticks.",
            ),
            metric::gauge(
                "system_percent_delta",
                self.system_percent_delta,
                "Change of system_percent since the previous interval, percentage points.",
            ),
            metric::gauge(
                "system_percent_threshold",
                s.sys_threshold,
                "A profile is taken above this system_percent ...",
            ),
            metric::gauge(
                "system_percent_delta_threshold",
                s.delta_sys_threshold,
                "... when system_percent_delta is also above this.",
            ),
            metric::counter(
                "intervals",
                self.intervals as f64,
                "Intervals of /proc/stat evaluated (the first one is only a baseline).",
            ),
            metric::counter(
                "fired",
                self.fired as f64,
                "Times both thresholds were crossed outside the cooldown.",
            ),
            metric::gauge(
                "cooldown_remaining_seconds",
                self.cooldown_remaining().as_secs_f64(),
                "Seconds until another profile may be taken (interval_tracing).",
            ),
        ];
        out.extend(self.tracer.metrics());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(line: &str) -> CpuTimes {
        procfs::parse_stat_cpu(line).expect("valid cpu line")
    }

    #[test]
    fn system_share_of_all_ticks() {
        let prev = times("cpu  100 0 50 1000 0 0 0 0 0 0\n");
        // +60 user, +20 nice, +40 system, +5 irq, +5 softirq, +10 steal, +50 idle, +10 iowait
        let now = times("cpu  160 20 90 1050 10 5 5 10 0 0\n");
        let sys = system_percent(&prev, &now).expect("ticks passed");
        assert!((sys - 20.0).abs() < 1e-9, "{sys}");
        assert_eq!(system_percent(&now, &now), None);
        assert_eq!(system_percent(&now, &prev), None);
    }

    #[test]
    fn fires_on_a_jump_after_the_baseline() {
        let mut p = Cpusys::init(Config::default()).expect("defaults");
        assert!(!p.observe(90.0), "the first interval is a baseline");
        assert_eq!(p.system_percent_delta, 0.0);
        assert!(!p.observe(10.0));
        assert!(!p.observe(40.0), "+30 but not above 45%");
        assert!(p.observe(70.0), "70% and +30");
        assert!(!p.observe(80.0), "80% but only +10");
        assert_eq!((p.system_percent, p.system_percent_delta), (80.0, 10.0));
    }

    #[test]
    fn settings_defaults_and_checks() {
        let s: Settings = Config::default().parse().expect("defaults");
        assert_eq!((s.interval, s.interval_tracing, s.duration), (10, 1800, 10));
        assert_eq!((s.sys_threshold, s.delta_sys_threshold), (45.0, 20.0));
        let zero = Config::from_json(r#"{"interval":0}"#).expect("json");
        let s: Settings = zero.parse().expect("parses");
        assert!(s.check().is_err());
        let unknown = Config::from_json(r#"{"SysThreshold":1}"#).expect("json");
        assert!(unknown.parse::<Settings>().is_err());
    }
}
