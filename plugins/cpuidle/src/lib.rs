//! `cpuidle`: HUATUO's container CPU-spike autotracing. Every `interval` seconds, for each
//! running `normal` container of the registry (HUATUO's `NormalContainers()`), it reads the
//! container's CPU time from its cgroup (v1 `cpuacct.stat` / `cpuacct.usage`, v2 `cpu.stat`,
//! the reading of `cpu_util`) and computes over the interval, in percent of what the
//! container may use (its CFS quota, else its cpuset's size, else the online CPUs, as
//! `cpu_util`'s `cores`):
//!
//! - `user_percent`, `system_percent`, `total_percent`, each with its change since the
//!   container's previous interval (`_delta`; a container's first interval is only a
//!   baseline, so neither a container already busy when first seen nor the agent's start
//!   fires).
//!
//! A container fires when any of `user > user_threshold && Δuser > delta_user_threshold`,
//! `sys > sys_threshold && Δsys > delta_sys_threshold`, `total > usage_threshold &&
//! Δtotal > delta_usage_threshold`. Of the containers that fired outside their own cooldown
//! (`interval_tracing`), the highest-scoring one is profiled: the host samples that
//! container's cgroup (on-cpu, kernel and user stacks, 99 Hz for `duration` seconds) and an
//! `autotracing` document is saved with its `container_id`. The score is the sum, over the
//! conditions that held, of how far the value and its change are above their thresholds.
//!
//! ```toml
//! [plugins.cpuidle]     # HUATUO's [AutoTracing.CPUIdle], snake_cased; these are the defaults
//! interval = 10
//! user_threshold = 75.0
//! delta_user_threshold = 45.0
//! sys_threshold = 45.0
//! delta_sys_threshold = 20.0
//! usage_threshold = 90.0
//! delta_usage_threshold = 55.0
//! interval_tracing = 1800
//! duration = 10
//! max_flame_kib = 768   # kpulse: budget of flamedata + folded in one document
//! ```
//!
//! Document (`tracer_data`): `user_percent, user_percent_threshold, user_percent_delta,
//! user_percent_delta_threshold`, the same for `system_` and `total_`, `flamedata`, `folded`,
//! `profile` (see `../cpusys/src/trace.rs`). Metrics: per container the last values and
//! `cooldown_remaining_seconds`; the thresholds, `fired_total` and the profiling counters.
//! HUATUO's `[AutoTracing.CPUIdle.Filter]` is `filter.included` / `filter.excluded`
//! (`src/rules.rs`). The profile also needs the operator's `policy.profile_allow`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kpulse_sdk::prelude::*;
use serde::Deserialize;
use serde_json::{Map, Value};

#[allow(
    dead_code,
    reason = "shared with cpu_util, cpu_stat and the memory plugins"
)]
#[path = "../../cpu_util/src/cgroup.rs"]
mod cgroup;
use cgroup::{CpuUsage, Registry};

#[allow(dead_code, reason = "shared with cpusys")]
#[path = "../../cpusys/src/trace.rs"]
mod trace;
use trace::{Tracer, Trigger};

mod rules;
use rules::{Filter, FilterSettings};

/// An interval using more than this times the container's allowance starts over (a counter
/// reset, a cgroup recreated under the same id), as in `cpu_util`.
const MAX_OVERSHOOT: f64 = 1.1;

/// `[plugins.cpuidle]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Sampling period, seconds.
    interval: u64,
    user_threshold: f64,
    delta_user_threshold: f64,
    sys_threshold: f64,
    delta_sys_threshold: f64,
    /// Total CPU usage.
    usage_threshold: f64,
    delta_usage_threshold: f64,
    /// Seconds between two profiles of one container.
    interval_tracing: u64,
    /// Seconds of sampling.
    duration: u64,
    /// Budget of `flamedata` + `folded` in one document, KiB.
    max_flame_kib: usize,
    /// Which containers are watched (HUATUO's `Filter`).
    filter: FilterSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            interval: 10,
            user_threshold: 75.0,
            delta_user_threshold: 45.0,
            sys_threshold: 45.0,
            delta_sys_threshold: 20.0,
            usage_threshold: 90.0,
            delta_usage_threshold: 55.0,
            interval_tracing: 1800,
            duration: 10,
            max_flame_kib: 768,
            filter: FilterSettings::default(),
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

    /// `(value threshold, delta threshold)` of user, system and total, in that order.
    fn thresholds(&self) -> [(f64, f64); 3] {
        [
            (self.user_threshold, self.delta_user_threshold),
            (self.sys_threshold, self.delta_sys_threshold),
            (self.usage_threshold, self.delta_usage_threshold),
        ]
    }
}

/// Document and metric names of user, system and total.
const KINDS: [&str; 3] = ["user", "system", "total"];

/// `(user, system, total)` percent.
type Percents = [f64; 3];

/// One container's state.
#[derive(Debug, Clone, PartialEq)]
struct ContainerCpu {
    last: CpuUsage,
    at: Instant,
    /// The last complete interval's percents ...
    util: Option<Percents>,
    /// ... and their changes since the one before.
    delta: Option<Percents>,
    /// When its last profile started.
    cooldown_since: Option<Instant>,
}

struct Cpuidle {
    settings: Settings,
    filter: Filter,
    registry: Registry,
    containers: BTreeMap<String, ContainerCpu>,
    malformed: u64,
    fired: u64,
    tracer: Tracer,
}

kpulse_sdk::register!(Cpuidle {
    name: "cpuidle",
    version: "0.1.0",
    interval: 20,
    kinds: [tracing, metric],
    capabilities: [
        "read:/proc/stat",
        "read:/sys/fs/cgroup",
        "containers",
        "profile"
    ],
    summary: "Container CPU spike autotracing: a CPU profile of the hottest container (HUATUO's cpuidle)",
});

impl Plugin for Cpuidle {
    fn init(config: Config) -> Result<Self> {
        let settings: Settings = config.parse()?;
        settings.check()?;
        let max_flame_kib = settings.max_flame_kib;
        Ok(Cpuidle {
            filter: Filter::new(&settings.filter)?,
            settings,
            registry: Registry::new(),
            containers: BTreeMap::new(),
            malformed: 0,
            fired: 0,
            tracer: Tracer::new("cpuidle", max_flame_kib),
        })
    }
}

/// Percent of `cores` over `elapsed`; `None` when a counter went backwards, no time passed
/// or the interval used more than [`MAX_OVERSHOOT`] times the allowance (small excesses,
/// CFS burst or timing, are clamped to 100).
fn percents(prev: &CpuUsage, now: &CpuUsage, elapsed: Duration, cores: f64) -> Option<Percents> {
    let capacity = cores * elapsed.as_micros() as f64;
    if capacity.is_nan() || capacity <= 0.0 {
        return None;
    }
    let delta = |f: fn(&CpuUsage) -> u64| f(now).checked_sub(f(prev));
    let (user, system, total) = (
        delta(|u| u.user_us)?,
        delta(|u| u.system_us)?,
        delta(|u| u.usage_us)?,
    );
    let limit = capacity * MAX_OVERSHOOT;
    if total as f64 > limit || user.saturating_add(system) as f64 > limit {
        return None;
    }
    let pct = |v: u64| (v as f64 * 100.0 / capacity).min(100.0);
    Some([pct(user), pct(system), pct(total)])
}

/// How far a container's interval is over the thresholds: the sum, over the conditions that
/// hold, of the value's and the change's excess; `None` when none holds.
fn score(util: &Percents, delta: &Percents, thresholds: &[(f64, f64); 3]) -> Option<f64> {
    let mut score = None;
    for ((value, change), (limit, delta_limit)) in util.iter().zip(delta).zip(thresholds) {
        if value > limit && change > delta_limit {
            *score.get_or_insert(0.0) += (value - limit) + (change - delta_limit);
        }
    }
    score
}

impl ContainerCpu {
    /// Takes a reading: a complete interval gives new percents and changes.
    fn advance(&mut self, now: CpuUsage, at: Instant, cores: f64) {
        let elapsed = at.saturating_duration_since(self.at);
        match percents(&self.last, &now, elapsed, cores) {
            Some(util) => {
                self.delta = self
                    .util
                    .map(|prev| [util[0] - prev[0], util[1] - prev[1], util[2] - prev[2]]);
                self.util = Some(util);
            }
            // No usable interval: no change to fire on until the next one.
            None => self.delta = None,
        }
        self.last = now;
        self.at = at;
    }

    fn cooldown_remaining(&self, cooldown: Duration) -> Duration {
        self.cooldown_since.map_or(Duration::ZERO, |since| {
            cooldown.saturating_sub(since.elapsed())
        })
    }
}

impl Cpuidle {
    fn cooldown(&self) -> Duration {
        Duration::from_secs(self.settings.interval_tracing)
    }

    /// Reads every container and returns the best candidate: `(score, id)`.
    fn sample(&mut self, online: u32) -> Option<(f64, String)> {
        self.registry.refresh();
        let thresholds = self.settings.thresholds();
        let cooldown = self.cooldown();
        let mut seen = Vec::new();
        let mut best: Option<(f64, String)> = None;
        for c in self.registry.containers(cgroup::NORMAL) {
            if !self.filter.keeps(c) {
                continue;
            }
            let Some(usage) = cgroup::read_cpu_usage(&self.registry, c, &mut self.malformed) else {
                continue;
            };
            let at = Instant::now();
            let cores = self.registry.cores(c, online, &mut self.malformed);
            seen.push(c.id.clone());
            let Some(state) = self.containers.get_mut(&c.id) else {
                self.containers.insert(
                    c.id.clone(),
                    ContainerCpu {
                        last: usage,
                        at,
                        util: None,
                        delta: None,
                        cooldown_since: None,
                    },
                );
                continue;
            };
            state.advance(usage, at, cores);
            let (Some(util), Some(delta)) = (state.util, state.delta) else {
                continue;
            };
            if !state.cooldown_remaining(cooldown).is_zero() {
                continue;
            }
            if let Some(score) = score(&util, &delta, &thresholds)
                && best.as_ref().is_none_or(|(s, _)| score > *s)
            {
                best = Some((score, c.id.clone()));
            }
        }
        self.containers.retain(|id, _| seen.contains(id));
        best
    }

    fn tick(&mut self, ctx: &mut Context) -> Result<()> {
        if let Some(id) = self.tracer.retry(ctx) {
            self.start_cooldown(&id);
        }
        let stat = fs::read_to_string("/proc/stat")?;
        let Some((_, id)) = self.sample(cgroup::online_cpus(&stat)) else {
            return Ok(());
        };
        if self.tracer.pending_key() == Some(id.as_str()) {
            return Ok(());
        }
        let Some(fields) = self.fields(&id) else {
            return Ok(());
        };
        self.fired += 1;
        log::info(&format!(
            "container {id} over its CPU thresholds: profiling it for {} s",
            self.settings.duration
        ));
        let trigger = Trigger {
            key: id.clone(),
            container_id: id.clone(),
            request: profiler::Request::container(&id)
                .duration(Duration::from_secs(self.settings.duration)),
            fields,
        };
        if self.tracer.fire(ctx, trigger) {
            self.start_cooldown(&id);
        }
        Ok(())
    }

    fn start_cooldown(&mut self, id: &str) {
        if let Some(state) = self.containers.get_mut(id) {
            state.cooldown_since = Some(Instant::now());
        }
    }

    /// The trigger fields of container `id`'s last interval.
    fn fields(&self, id: &str) -> Option<Map<String, Value>> {
        let state = self.containers.get(id)?;
        let (util, delta) = (state.util?, state.delta?);
        let mut fields = Map::new();
        for (((kind, value), change), (limit, delta_limit)) in KINDS
            .iter()
            .zip(util)
            .zip(delta)
            .zip(self.settings.thresholds())
        {
            for (suffix, v) in [
                ("", value),
                ("_threshold", limit),
                ("_delta", change),
                ("_delta_threshold", delta_limit),
            ] {
                fields.insert(format!("{kind}_percent{suffix}"), Value::from(v));
            }
        }
        Some(fields)
    }
}

impl Tracing for Cpuidle {
    fn start(&mut self, ctx: &mut Context) -> Result<()> {
        // First readings, so that the first tick has an interval for these containers.
        let stat = fs::read_to_string("/proc/stat")?;
        self.sample(cgroup::online_cpus(&stat));
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

impl Collector for Cpuidle {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mut out = Vec::new();
        let cooldown = self.cooldown();
        for (id, state) in &self.containers {
            for (i, kind) in KINDS.iter().enumerate() {
                if let Some(util) = state.util {
                    out.push(metric::container_gauge(
                        id,
                        &format!("{kind}_percent"),
                        util[i],
                        "Container CPU time over the last interval, percent of its cores.",
                    ));
                }
                if let Some(delta) = state.delta {
                    out.push(metric::container_gauge(
                        id,
                        &format!("{kind}_percent_delta"),
                        delta[i],
                        "Change of the percent since the container's previous interval.",
                    ));
                }
            }
            out.push(metric::container_gauge(
                id,
                "cooldown_remaining_seconds",
                state.cooldown_remaining(cooldown).as_secs_f64(),
                "Seconds until this container may be profiled again (interval_tracing).",
            ));
        }
        for (kind, (limit, delta_limit)) in KINDS.iter().zip(self.settings.thresholds()) {
            out.push(metric::gauge(
                &format!("{kind}_percent_threshold"),
                limit,
                "A container is profiled above this percent ...",
            ));
            out.push(metric::gauge(
                &format!("{kind}_percent_delta_threshold"),
                delta_limit,
                "... when its change is also above this.",
            ));
        }
        out.push(metric::counter(
            "fired",
            self.fired as f64,
            "Times a container crossed its thresholds outside its cooldown and was chosen.",
        ));
        out.push(metric::counter(
            "malformed_lines",
            self.malformed as f64,
            "Lines of containers' cgroup CPU files that did not parse and were skipped.",
        ));
        out.extend(self.tracer.metrics());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(usage_us: u64, user_us: u64, system_us: u64) -> CpuUsage {
        CpuUsage {
            usage_us,
            user_us,
            system_us,
        }
    }

    #[test]
    fn percent_of_the_allowance() {
        // 2 s on a half CPU: 1 s of CPU time is all of it.
        let p = percents(
            &usage(0, 0, 0),
            &usage(900_000, 600_000, 200_000),
            Duration::from_secs(2),
            0.5,
        )
        .expect("valid");
        assert!(
            (p[0] - 60.0).abs() < 1e-9 && (p[1] - 20.0).abs() < 1e-9,
            "{p:?}"
        );
        assert!((p[2] - 90.0).abs() < 1e-9, "{p:?}");
        assert_eq!(
            percents(
                &usage(0, 0, 0),
                &usage(3_000_000, 0, 0),
                Duration::from_secs(1),
                1.0
            ),
            None,
            "three times the allowance: a reset"
        );
        assert_eq!(
            percents(
                &usage(5, 5, 5),
                &usage(0, 0, 0),
                Duration::from_secs(1),
                1.0
            ),
            None
        );
    }

    #[test]
    fn huatuo_conditions_and_score() {
        let t = Settings::default().thresholds();
        // user 80 (+50): the user condition.
        assert_eq!(
            score(&[80.0, 5.0, 85.0], &[50.0, 0.0, 50.0], &t),
            Some(10.0)
        );
        // total 95 (+60) and user 80 (+50): both add up.
        let both = score(&[80.0, 15.0, 95.0], &[50.0, 10.0, 60.0], &t).expect("fires");
        assert!((both - 20.0).abs() < 1e-9, "{both}");
        // High but steady: no change, no fire.
        assert_eq!(score(&[99.0, 50.0, 100.0], &[0.0, 0.0, 0.0], &t), None);
        // sys 50 (+25).
        assert_eq!(
            score(&[0.0, 50.0, 50.0], &[0.0, 25.0, 25.0], &t),
            Some(10.0)
        );
    }

    #[test]
    fn first_interval_is_a_baseline() {
        let t0 = Instant::now();
        let mut state = ContainerCpu {
            last: usage(0, 0, 0),
            at: t0,
            util: None,
            delta: None,
            cooldown_since: None,
        };
        let s = |n: u64| t0 + Duration::from_secs(n);
        state.advance(usage(1_000_000, 1_000_000, 0), s(1), 1.0);
        assert_eq!((state.util, state.delta), (Some([100.0, 0.0, 100.0]), None));
        state.advance(usage(1_500_000, 1_500_000, 0), s(2), 1.0);
        assert_eq!(state.delta, Some([-50.0, 0.0, -50.0]));
        state.advance(usage(2_400_000, 2_300_000, 100_000), s(3), 1.0);
        let (util, delta) = (state.util.expect("util"), state.delta.expect("delta"));
        assert!(
            (util[2] - 90.0).abs() < 1e-6 && (delta[2] - 40.0).abs() < 1e-6,
            "{util:?}"
        );
        // A reset interval leaves nothing to fire on.
        state.advance(usage(0, 0, 0), s(4), 1.0);
        assert_eq!(state.delta, None);
    }

    #[test]
    fn settings_defaults_and_checks() {
        let s: Settings = Config::default().parse().expect("defaults");
        assert_eq!(s.thresholds(), [(75.0, 45.0), (45.0, 20.0), (90.0, 55.0)]);
        let filtered = Config::from_json(
            r#"{"filter":{"excluded":[{"field":"container_qos","pattern":"besteffort"}]}}"#,
        )
        .expect("json");
        let plugin = Cpuidle::init(filtered).expect("a valid filter");
        let mut c = cgroup::tests::container("c", "/kptest/c", "normal");
        assert!(plugin.filter.keeps(&c));
        c.qos = kpulse_sdk::containers::Qos::BestEffort;
        assert!(!plugin.filter.keeps(&c));
        let bad = Config::from_json(r#"{"filter":{"included":[{"field":"x","pattern":""}]}}"#)
            .expect("json");
        assert!(matches!(Cpuidle::init(bad), Err(Error::InvalidConfig(_))));
        let zero = Config::from_json(r#"{"duration":0}"#).expect("json");
        assert!(zero.parse::<Settings>().expect("parses").check().is_err());
    }
}
