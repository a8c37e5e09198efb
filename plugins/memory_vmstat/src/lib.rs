//! `memory_vmstat`: every key of the host's `/proc/vmstat`, and of each container's
//! `memory.stat`, as a gauge, under HUATUO's names (`huatuo_bamai_memory_vmstat_nr_free_pages`,
//! `..._pgsteal_kswapd`, `..._container_active_anon` with `prefix = "huatuo_bamai"`),
//! filtered by HUATUO's `IncludedOnHost`/`ExcludedOnHost` regexes (host) and
//! `IncludedOnContainer`/`ExcludedOnContainer` (containers).
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
//!
//! **Containers** (the registry's running `normal` containers, HUATUO's `NormalContainers()`;
//! labels added by the host): every key of the container's `memory.stat` (v1 memory
//! hierarchy, else v2) as `memory_vmstat_container_<key>`, filtered by HUATUO's
//! `IncludedOnContainer`/`ExcludedOnContainer` regexes, plus three kpulse extras that HUATUO
//! does not have (not filtered; cAdvisor's definitions):
//!
//! - `usage_bytes`: v1 `memory.usage_in_bytes`, v2 `memory.current`;
//! - `limit_bytes`: v1 `memory.limit_in_bytes`, v2 `memory.max`; absent when unlimited
//!   (`max`, or a v1 value of 2^62 bytes or more);
//! - `working_set_bytes`: usage − inactive file pages (v1 `total_inactive_file`, v2
//!   `inactive_file`), 0 if that is negative.
//!
//! ```toml
//! [plugins.memory_vmstat]
//! included_on_container = "active_anon|inactive_file|pgscan_direct|pgsteal_kswapd"
//! excluded_on_container = "total"
//! ```
//!
//! (HUATUO's shipped `IncludedOnContainer` lists 20 keys with `ExcludedOnContainer =
//! "total"`; the code default keeps every key.) Without containers (empty registry,
//! `containers` capability denied) only the host series are exposed.
//!
//! Lines of `/proc/vmstat` and of containers' memory files that do not parse are skipped
//! and counted in `malformed_lines_total`; a container whose files cannot be read is
//! skipped.

use kpulse_sdk::prelude::*;
use serde::Deserialize;

mod filter;
use filter::Filter;

#[allow(
    dead_code,
    reason = "shared with cpu_util; this plugin uses part of it"
)]
#[path = "../../cpu_util/src/cgroup.rs"]
mod cgroup;
use cgroup::{Dir, Registry};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    included_on_host: String,
    excluded_on_host: String,
    included_on_container: String,
    excluded_on_container: String,
}

struct MemoryVmstat {
    filter: Filter,
    container_filter: Filter,
    registry: Registry,
    malformed: u64,
}

/// A v1 `memory.limit_in_bytes` this large is no limit (the kernel shows
/// `PAGE_COUNTER_MAX` pages, about 2^63 bytes).
const V1_UNLIMITED: u64 = 1 << 62;

kpulse_sdk::register!(MemoryVmstat {
    name: "memory_vmstat",
    kinds: [metric],
    capabilities: ["read:/proc/vmstat", "read:/sys/fs/cgroup", "containers"],
    summary: "Host /proc/vmstat and container memory.stat keys as gauges, regex-filtered like HUATUO's memory_vmstat",
});

impl Plugin for MemoryVmstat {
    fn init(config: Config) -> Result<Self> {
        let s: Settings = config.parse()?;
        Ok(MemoryVmstat {
            filter: Filter::new(
                ("included_on_host", &s.included_on_host),
                ("excluded_on_host", &s.excluded_on_host),
            )?,
            container_filter: Filter::new(
                ("included_on_container", &s.included_on_container),
                ("excluded_on_container", &s.excluded_on_container),
            )?,
            registry: Registry::new(),
            malformed: 0,
        })
    }
}

/// A memory limit in bytes; `None` when unlimited or malformed (counted).
fn parse_limit(text: &str, v2: bool, malformed: &mut u64) -> Option<u64> {
    if v2 && text.trim() == "max" {
        return None;
    }
    cgroup::single(text, malformed).filter(|&limit| v2 || limit < V1_UNLIMITED)
}

/// One container's memory files, read.
struct MemoryFiles {
    stat: String,
    usage: Option<String>,
    limit: Option<String>,
}

impl MemoryFiles {
    fn read(registry: &Registry, dir: &Dir) -> Option<Self> {
        let (usage, limit) = if dir.v2 {
            ("memory.current", "memory.max")
        } else {
            ("memory.usage_in_bytes", "memory.limit_in_bytes")
        };
        Some(MemoryFiles {
            stat: registry.read(dir, "memory.stat")?,
            usage: registry.read(dir, usage),
            limit: registry.read(dir, limit),
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
            "Lines of /proc/vmstat and of containers' memory files that did not parse and \
             were skipped.",
        ));
        out
    }

    fn collect_containers(&mut self) -> Vec<Metric> {
        self.registry.refresh();
        let mut out = Vec::new();
        for c in self.registry.containers(cgroup::NORMAL) {
            let Some(dir) = self.registry.dir(c, "memory") else {
                continue;
            };
            let Some(files) = MemoryFiles::read(&self.registry, &dir) else {
                continue;
            };
            out.extend(container_metrics(
                &c.id,
                &files,
                dir.v2,
                &self.container_filter,
                &mut self.malformed,
            ));
        }
        out
    }
}

/// The samples of one container: its filtered `memory.stat` keys and the three extras.
fn container_metrics(
    id: &str,
    files: &MemoryFiles,
    v2: bool,
    filter: &Filter,
    malformed: &mut u64,
) -> Vec<Metric> {
    let stat = cgroup::key_values(&files.stat, malformed);
    let mut out: Vec<Metric> = stat
        .iter()
        .filter(|(key, _)| filter.keeps(key))
        .map(|(key, value)| {
            metric::container_gauge(id, key, *value as f64, &format!("cgroup memory.stat {key}"))
        })
        .collect();
    let usage = files
        .usage
        .as_deref()
        .and_then(|text| cgroup::single(text, malformed));
    if let Some(usage) = usage {
        out.push(metric::container_gauge(
            id,
            "usage_bytes",
            usage as f64,
            "Container memory usage in bytes (v1 memory.usage_in_bytes, v2 memory.current; \
             kpulse, not in HUATUO).",
        ));
        let inactive_file = if v2 {
            "inactive_file"
        } else {
            "total_inactive_file"
        };
        let working_set = usage.saturating_sub(stat.get(inactive_file).copied().unwrap_or(0));
        out.push(metric::container_gauge(
            id,
            "working_set_bytes",
            working_set as f64,
            "Container working set in bytes: usage minus inactive file pages, as cAdvisor \
             (kpulse, not in HUATUO).",
        ));
    }
    let limit = files
        .limit
        .as_deref()
        .and_then(|text| parse_limit(text, v2, malformed));
    if let Some(limit) = limit {
        out.push(metric::container_gauge(
            id,
            "limit_bytes",
            limit as f64,
            "Container memory limit in bytes, absent when unlimited (v1 memory.limit_in_bytes, \
             v2 memory.max; kpulse, not in HUATUO).",
        ));
    }
    out
}

impl Collector for MemoryVmstat {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let text = fs::read_to_string("/proc/vmstat")?;
        // First, so that the counter includes the containers' malformed lines.
        let containers = self.collect_containers();
        let mut out = self.collect(&text);
        out.extend(containers);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(included: &str, excluded: &str) -> MemoryVmstat {
        MemoryVmstat {
            filter: Filter::new(("i", included), ("e", excluded)).expect("valid"),
            container_filter: Filter::new(("i", ""), ("e", "")).expect("valid"),
            registry: Registry::new(),
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

    /// A v1 leaf's memory.stat (abridged), with 40 MiB of shmem and no limit on its parent.
    const V1_STAT: &str = "cache 41943040\nrss 53248\nshmem 41943040\ninactive_file 4096\n\
        active_file 0\npgfault 1200\nhierarchical_memory_limit 67108864\n\
        total_cache 41943040\ntotal_rss 53248\ntotal_shmem 41943040\n\
        total_inactive_file 8192\ntotal_active_file 0\n";

    /// A v2 memory.stat (abridged).
    const V2_STAT: &str = "anon 1048576\nfile 4194304\nshmem 0\nactive_anon 1048576\n\
        inactive_anon 0\nactive_file 1048576\ninactive_file 3145728\npgscan_direct 7\n\
        pgsteal_kswapd 3\nworkingset_refault_file 2\n";

    fn files(stat: &str, usage: &str, limit: &str) -> MemoryFiles {
        MemoryFiles {
            stat: stat.to_owned(),
            usage: Some(usage.to_owned()),
            limit: Some(limit.to_owned()),
        }
    }

    fn values(metrics: &[Metric]) -> std::collections::BTreeMap<&str, f64> {
        metrics.iter().map(|m| (m.name(), m.value())).collect()
    }

    #[test]
    fn v1_container_stat_and_extras() {
        let keep_all = Filter::new(("i", ""), ("e", "")).expect("valid");
        let mut m = 0;
        let out = container_metrics(
            "c1",
            &files(V1_STAT, "42618880\n", "67108864\n"),
            false,
            &keep_all,
            &mut m,
        );
        let v = values(&out);
        assert_eq!(v["shmem"], 41943040.0);
        assert_eq!(v["total_inactive_file"], 8192.0);
        assert_eq!(v["usage_bytes"], 42618880.0);
        assert_eq!(v["limit_bytes"], 67108864.0);
        // v1: total_inactive_file (hierarchical), as cAdvisor.
        assert_eq!(v["working_set_bytes"], 42618880.0 - 8192.0);
        assert_eq!(v.len(), 12 + 3);
        assert_eq!(m, 0);
    }

    #[test]
    fn v1_unlimited_has_no_limit_series() {
        let keep_all = Filter::new(("i", ""), ("e", "")).expect("valid");
        let mut m = 0;
        let out = container_metrics(
            "c1",
            &files(V1_STAT, "100\n", "9223372036854771712\n"),
            false,
            &keep_all,
            &mut m,
        );
        let v = values(&out);
        assert!(!v.contains_key("limit_bytes"));
        assert_eq!(v["working_set_bytes"], 0.0, "usage below inactive_file");
        assert_eq!(m, 0);
    }

    #[test]
    fn v2_container_stat_filtered_and_extras() {
        let filter =
            Filter::new(("i", "active|pgscan|pgsteal"), ("e", "inactive_anon")).expect("valid");
        let mut m = 0;
        let out = container_metrics(
            "c2",
            &files(V2_STAT, "5242880\n", "max\n"),
            true,
            &filter,
            &mut m,
        );
        let names: Vec<&str> = out.iter().map(Metric::name).collect();
        assert_eq!(
            names,
            [
                "active_anon",
                "active_file",
                "inactive_file",
                "pgscan_direct",
                "pgsteal_kswapd",
                "usage_bytes",
                "working_set_bytes"
            ],
            "filtered memory.stat keys, extras unfiltered, no limit for max"
        );
        let v = values(&out);
        assert_eq!(v["working_set_bytes"], 5242880.0 - 3145728.0);
        let limited = container_metrics(
            "c2",
            &files(V2_STAT, "5242880\n", "67108864\n"),
            true,
            &filter,
            &mut m,
        );
        assert_eq!(values(&limited)["limit_bytes"], 67108864.0);
        assert_eq!(m, 0);
    }

    #[test]
    fn malformed_container_files_are_skipped_and_counted() {
        let keep_all = Filter::new(("i", ""), ("e", "")).expect("valid");
        let mut m = 0;
        let out = container_metrics(
            "c3",
            &files("anon 1\nbroken\nfile x\n", "lots\n", "none\n"),
            true,
            &keep_all,
            &mut m,
        );
        let names: Vec<&str> = out.iter().map(Metric::name).collect();
        assert_eq!(names, ["anon"]);
        assert_eq!(m, 4, "two stat lines, usage and limit");
        let missing = MemoryFiles {
            stat: "anon 1\n".to_owned(),
            usage: None,
            limit: None,
        };
        assert_eq!(
            container_metrics("c3", &missing, true, &keep_all, &mut m).len(),
            1
        );
        assert_eq!(m, 4);
    }

    #[test]
    fn container_settings_parse() {
        let config = Config::from_json(
            r#"{"included_on_container": "active", "excluded_on_container": "total"}"#,
        )
        .expect("json");
        let s: Settings = config.parse().expect("settings");
        assert_eq!(
            (
                s.included_on_container.as_str(),
                s.excluded_on_container.as_str()
            ),
            ("active", "total")
        );
        let bad = Config::from_json(r#"{"included_on_containers": "x"}"#).expect("json");
        assert!(bad.parse::<Settings>().is_err());
    }
}
