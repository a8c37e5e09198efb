//! `memory_events`: each container's cgroup v2 `memory.events` as gauges, under HUATUO's
//! names (`huatuo_bamai_memory_events_container_<key>` with `prefix = "huatuo_bamai"`), for
//! the registry's running `normal` containers (HUATUO's `NormalContainers()`), filtered by
//! HUATUO's `MemoryEvents.Included`/`Excluded` regexes.
//!
//! ```toml
//! [plugins.memory_events]
//! # Regexes searched anywhere in the key; empty = no rule.
//! included = "watermark_inc|watermark_dec"   # the default, HUATUO's shipped value
//! excluded = ""
//! ```
//!
//! HUATUO's default keys, `watermark_inc` and `watermark_dec`, exist only on DiDi's kernel;
//! upstream `memory.events` has `low`, `high`, `max`, `oom`, `oom_kill`, `oom_group_kill`
//! and `sock_throttled`: set `included = ""` (every key) or a list of those to see them.
//! The values are the kernel's event counts, exposed as gauges like HUATUO does.
//!
//! `memory.events` is a v2 file: with the memory controller on a v1 hierarchy (a hybrid
//! host) the containers have none and are skipped, as HUATUO skips them; a kernel whose v1
//! memory cgroups have the file (DiDi's) is read the same way. Without containers (empty
//! registry, `containers` capability denied) the plugin exposes only
//! `malformed_lines_total`, the count of unparsable `memory.events` lines it skipped.

use kpulse_sdk::prelude::*;
use serde::Deserialize;

#[path = "../../memory_vmstat/src/filter.rs"]
mod filter;
use filter::Filter;

#[allow(
    dead_code,
    reason = "shared with cpu_util; this plugin uses part of it"
)]
#[path = "../../cpu_util/src/cgroup.rs"]
mod cgroup;
use cgroup::Registry;

/// HUATUO's shipped `[MetricCollector.MemoryEvents] Included`.
const DEFAULT_INCLUDED: &str = "watermark_inc|watermark_dec";

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    included: String,
    excluded: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            included: DEFAULT_INCLUDED.to_owned(),
            excluded: String::new(),
        }
    }
}

struct MemoryEvents {
    filter: Filter,
    registry: Registry,
    malformed: u64,
}

kpulse_sdk::register!(MemoryEvents {
    name: "memory_events",
    kinds: [metric],
    capabilities: ["read:/sys/fs/cgroup", "containers"],
    summary: "Container memory.events keys as gauges, regex-filtered like HUATUO's memory_events",
});

impl Plugin for MemoryEvents {
    fn init(config: Config) -> Result<Self> {
        let s: Settings = config.parse()?;
        Ok(MemoryEvents {
            filter: Filter::new(("included", &s.included), ("excluded", &s.excluded))?,
            registry: Registry::new(),
            malformed: 0,
        })
    }
}

/// The samples of one container's `memory.events`.
fn event_metrics(id: &str, text: &str, filter: &Filter, malformed: &mut u64) -> Vec<Metric> {
    cgroup::key_values(text, malformed)
        .iter()
        .filter(|(key, _)| filter.keeps(key))
        .map(|(key, value)| {
            metric::container_gauge(id, key, *value as f64, &format!("memory events {key}"))
        })
        .collect()
}

impl Collector for MemoryEvents {
    fn update(&mut self) -> Result<Vec<Metric>> {
        self.registry.refresh();
        let mut out = Vec::new();
        for c in self.registry.containers(cgroup::NORMAL) {
            let Some(dir) = self.registry.dir(c, "memory") else {
                continue;
            };
            // Not there: a v1 memory cgroup, or the container just went away.
            let Some(text) = self.registry.read(&dir, "memory.events") else {
                continue;
            };
            out.extend(event_metrics(
                &c.id,
                &text,
                &self.filter,
                &mut self.malformed,
            ));
        }
        out.push(metric::counter(
            "malformed_lines",
            self.malformed as f64,
            "Lines of containers' memory.events that did not parse and were skipped.",
        ));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2_EVENTS: &str =
        "low 0\nhigh 12\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\nsock_throttled 0\n";
    const DIDI_EVENTS: &str = "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\nwatermark_inc 5\n\
                               watermark_dec 4\n";

    fn names(metrics: &[Metric]) -> Vec<&str> {
        metrics.iter().map(Metric::name).collect()
    }

    #[test]
    fn default_keeps_huatuo_watermarks() {
        let s = Settings::default();
        let filter = Filter::new(("i", &s.included), ("e", &s.excluded)).expect("valid");
        let mut m = 0;
        assert!(event_metrics("c", V2_EVENTS, &filter, &mut m).is_empty());
        let out = event_metrics("c", DIDI_EVENTS, &filter, &mut m);
        assert_eq!(names(&out), ["watermark_dec", "watermark_inc"]);
        assert_eq!(out[1].value(), 5.0);
        assert_eq!(m, 0);
    }

    #[test]
    fn empty_rules_keep_every_upstream_key() {
        let filter = Filter::new(("i", ""), ("e", "^low$")).expect("valid");
        let mut m = 0;
        let out = event_metrics("c", V2_EVENTS, &filter, &mut m);
        assert_eq!(
            names(&out),
            [
                "high",
                "max",
                "oom",
                "oom_group_kill",
                "oom_kill",
                "sock_throttled"
            ]
        );
        assert_eq!(out[0].value(), 12.0);
    }

    #[test]
    fn malformed_lines_are_counted() {
        let filter = Filter::new(("i", ""), ("e", "")).expect("valid");
        let mut m = 0;
        let out = event_metrics("c", "oom 1\nbroken\nmax x\n", &filter, &mut m);
        assert_eq!(names(&out), ["oom"]);
        assert_eq!(m, 2);
    }

    #[test]
    fn settings_keys() {
        let config = Config::from_json(r#"{"included": "", "excluded": "low"}"#).expect("json");
        let s: Settings = config.parse().expect("settings");
        assert_eq!((s.included.as_str(), s.excluded.as_str()), ("", "low"));
        let bad = Config::from_json(r#"{"include": "x"}"#).expect("json");
        assert!(bad.parse::<Settings>().is_err());
    }
}
