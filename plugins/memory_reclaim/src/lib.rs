//! `memory_reclaim`: memory cgroup limit reclaims per container
//! (`huatuo_bamai_memory_reclaim_container_directstall` with `prefix = "huatuo_bamai"`).
//!
//! Kernel side, `ebpf/src/memory_reclaim.bpf.c`: `vmscan/mm_vmscan_memcg_reclaim_begin`
//! counts every limit reclaim a task enters (its charge hit the limit, `memory.high`, a
//! `memory.reclaim` write), kswapd excluded as in HUATUO, into a per-CPU table keyed by
//! the task's memory cgroup that `update` reads; `tp_btf/cgroup_rmdir` (optional) drops a
//! removed cgroup's count.
//!
//! | series | kind | value |
//! |---|---|---|
//! | `directstall`, container level | gauge | limit reclaims entered by the container's tasks since the collector started |
//!
//! A gauge, as in HUATUO (it only grows while the container lives). Every running `normal`
//! container (HUATUO's `NormalContainers`) is reported, with 0 until it reclaims; its
//! count is the sum of its memory cgroup and the cgroups nested in it. HUATUO keys by the
//! memory css address (and forgets it from a kprobe on `mem_cgroup_css_released`); kpulse
//! keys by the memory cgroup's kernfs id, which the host's registry resolves.

use kpulse_sdk::bpf::{self, Attach};
use kpulse_sdk::prelude::*;

#[path = "../../runqlat/src/memcg.rs"]
mod memcg;
use memcg::Containers;

const OBJECT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../ebpf/build/memory_reclaim.bpf.o"
));

/// HUATUO's `NormalContainers()`.
const CONTAINER_TYPES: &[&str] = &["normal"];
const HELP: &str = "Memory cgroup limit reclaims entered by the container's tasks \
                    (kswapd excluded) since the collector started.";

#[derive(Default)]
struct MemoryReclaim {
    object: Option<bpf::Object>,
    containers: Containers,
}

kpulse_sdk::register!(MemoryReclaim {
    name: "memory_reclaim",
    version: "0.1.0",
    interval: 10,
    kinds: [tracing, metric],
    capabilities: ["bpf", "containers"],
    summary: "Memory cgroup direct reclaims per container (vmscan/mm_vmscan_memcg_reclaim_begin)",
});

impl Tracing for MemoryReclaim {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        let object = bpf::Object::load(OBJECT, &[])?;
        object.attach(
            "memcg_reclaim_begin",
            Attach::tracepoint("vmscan", "mm_vmscan_memcg_reclaim_begin"),
        )?;
        if let Err(err) = object.attach(
            "memcg_reclaim_rmdir",
            Attach::TpBtf("cgroup_rmdir".to_owned()),
        ) {
            log::warn(&format!(
                "removed cgroups keep their counts until the plugin restarts: {err}"
            ));
        }
        self.object = Some(object);
        Ok(())
    }
}

/// One gauge per container, 0 for those without a count.
fn directstall_metrics<'a>(
    containers: impl Iterator<Item = &'a str>,
    counts: &std::collections::BTreeMap<String, [u64; 1]>,
) -> Vec<Metric> {
    containers
        .map(|id| {
            let count = counts.get(id).map_or(0, |c| c[0]);
            metric::container_gauge(id, "directstall", count as f64, HELP)
        })
        .collect()
}

impl Collector for MemoryReclaim {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let Some(object) = &self.object else {
            return Ok(Vec::new());
        };
        self.containers.refresh();
        if !self.containers.available() {
            return Ok(Vec::new());
        }
        let counts = memcg::read_counts::<1>(object, "memcg_directstall")?;
        let by_container = memcg::resolve_counts(&counts)?;
        Ok(directstall_metrics(
            self.containers
                .of_types(CONTAINER_TYPES)
                .map(|c| c.id.as_str()),
            &by_container,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_gets_a_gauge() {
        let counts = [("web".to_owned(), [12u64])].into_iter().collect();
        let out = directstall_metrics(["web", "db"].into_iter(), &counts);
        let values: Vec<f64> = out.iter().map(Metric::value).collect();
        assert_eq!(values, [12.0, 0.0]);
        assert!(out.iter().all(|m| m.name() == "directstall"));
    }
}
