//! `memory_vmstat`: every key of the host's `/proc/vmstat` as a gauge, under HUATUO's names
//! (`huatuo_bamai_memory_vmstat_nr_free_pages`, `..._pgsteal_kswapd` with
//! `prefix = "huatuo_bamai"`), filtered by HUATUO's `IncludedOnHost`/`ExcludedOnHost` regexes.
//!
//! Every value is a gauge, as in HUATUO, even the monotonic event counts (`pgfault`,
//! `pgsteal_*`): HUATUO's dashboards query them without the `_total` a counter would get.
//!
//! ```toml
//! [plugins.memory_vmstat]
//! # Regexes searched anywhere in the key; empty = no rule (the default: every key).
//! included_on_host = "allocstall|nr_active_anon|nr_dirty|nr_free_pages|pgscan_direct|pgsteal_kswapd"
//! excluded_on_host = "total"
//! ```
//!
//! (HUATUO's shipped `huatuo-bamai.conf` uses a 22-key `IncludedOnHost` like the one above
//! and `ExcludedOnHost = "total"`; its code default, like this plugin's, keeps every key.)
//! Lines of `/proc/vmstat` that are not `key value` are skipped and counted in
//! `malformed_lines_total`.
//!
//! Container-level series (`memory_vmstat_container_<key>` from each container's
//! `memory.stat`, `IncludedOnContainer`/`ExcludedOnContainer`) are not produced: they wait
//! for the containers interface.

use kpulse_sdk::prelude::*;
use serde::Deserialize;

mod filter;
use filter::Filter;

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    included_on_host: String,
    excluded_on_host: String,
}

struct MemoryVmstat {
    filter: Filter,
    malformed: u64,
}

kpulse_sdk::register!(MemoryVmstat {
    name: "memory_vmstat",
    kinds: [metric],
    capabilities: ["read:/proc/vmstat"],
    summary: "Host /proc/vmstat keys as gauges, regex-filtered like HUATUO's memory_vmstat",
});

impl Plugin for MemoryVmstat {
    fn init(config: Config) -> Result<Self> {
        let s: Settings = config.parse()?;
        Ok(MemoryVmstat {
            filter: Filter::new(
                ("included_on_host", &s.included_on_host),
                ("excluded_on_host", &s.excluded_on_host),
            )?,
            malformed: 0,
        })
    }
}

impl MemoryVmstat {
    fn collect(&mut self, text: &str) -> Vec<Metric> {
        let (values, skipped) = procfs::parse_key_values_counted(text);
        self.malformed += skipped;
        let mut out: Vec<Metric> = values
            .iter()
            .filter(|(key, _)| self.filter.keeps(key))
            .map(|(key, value)| metric::gauge(key, *value as f64, &format!("/proc/vmstat {key}")))
            .collect();
        out.push(metric::counter(
            "malformed_lines",
            self.malformed as f64,
            "Lines of /proc/vmstat that were not `key value` and were skipped.",
        ));
        out
    }
}

impl Collector for MemoryVmstat {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let text = fs::read_to_string("/proc/vmstat")?;
        Ok(self.collect(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(included: &str, excluded: &str) -> MemoryVmstat {
        MemoryVmstat {
            filter: Filter::new(("i", included), ("e", excluded)).expect("valid"),
            malformed: 0,
        }
    }

    const VMSTAT: &str =
        "nr_free_pages 3000\nnr_dirty 12\npgsteal_kswapd 99\npgscan_total 5\nbroken\nnr_x y\n";

    #[test]
    fn filters_and_counts_malformed() {
        let mut p = plugin("nr_|pg", "total");
        let out = p.collect(VMSTAT);
        let names: Vec<&str> = out.iter().map(Metric::name).collect();
        assert_eq!(
            names,
            [
                "nr_dirty",
                "nr_free_pages",
                "pgsteal_kswapd",
                "malformed_lines"
            ]
        );
        assert_eq!(out[1].value(), 3000.0);
        assert_eq!(out[3].value(), 2.0);
        // Counted across scrapes.
        assert_eq!(p.collect(VMSTAT)[3].value(), 4.0);
    }

    #[test]
    fn no_rule_keeps_every_key() {
        assert_eq!(plugin("", "").collect(VMSTAT).len(), 5);
    }
}
