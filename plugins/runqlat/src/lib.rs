//! `runqlat`: run-queue latency, the time a task waits on a run queue between being woken
//! (or preempted) and running, counted in HUATUO's four zones, host-wide and per container
//! (`huatuo_bamai_runqlat_latency{zone}` and `huatuo_bamai_runqlat_container_latency{zone}`
//! with `prefix = "huatuo_bamai"`).
//!
//! Kernel side, `ebpf/src/runqlat.bpf.c`: tracepoints `sched/sched_wakeup` and
//! `sched/sched_wakeup_new` and `tp_btf/sched_switch` (a preempted task waits from the
//! switch) measure each wait in the kernel and count it into per-CPU tables, which `update`
//! reads; nothing goes through a ring buffer. `sched/sched_process_exit` drops the start
//! time of a task that exits before it runs; `tp_btf/cgroup_rmdir` (optional) drops the
//! counts of a removed cgroup.
//!
//! | series | kind | zones |
//! |---|---|---|
//! | `latency{zone}` | counter | `0` [0, 10) ms, `1` [10, 20) ms, `2` [20, 50) ms, `3` ≥ 50 ms |
//! | `latency{zone}`, container level | counter | the same, for the tasks of one container |
//!
//! Counters, as in HUATUO; the exposition appends `_total`, so the names are
//! `<prefix>_runqlat_latency_total` and `<prefix>_runqlat_container_latency_total`
//! (HUATUO's Go exporter appends nothing: its dashboards query
//! `huatuo_bamai_runqlat_latency`).
//!
//! Containers: HUATUO keys its container table by the task's cpu cgroup (the
//! `task_group`). kpulse's registry resolves memory cgroup ids, not cpu cgroups, and a
//! guest cannot learn a cpu cgroup's inode, so the kernel counts by the task's memory
//! cgroup (`kp_task_memcg_id`), which runtimes create at the same path as its cpu cgroup.
//! A container's counts are the sum of its cgroup and the cgroups nested in it; every
//! running `normal` or `sidecar` container is reported (HUATUO's
//! `ContainersByType(Normal | Sidecar)`), with zeros until its tasks wait. Removing a
//! nested cgroup drops its share (the kernel's table forgets it).

use kpulse_sdk::bpf::{self, Attach};
use kpulse_sdk::prelude::*;

mod memcg;
use memcg::Containers;

const OBJECT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../ebpf/build/runqlat.bpf.o"
));

/// Latency zones of `runqlat.bpf.c` (`runq_zone`).
const ZONES: usize = 4;
const HELP: &str = "Run-queue waits by latency zone (0: [0,10) ms, 1: [10,20) ms, \
                    2: [20,50) ms, 3: >=50 ms).";
const CONTAINER_HELP: &str = "Run-queue waits of the container's tasks by latency zone \
                              (0: [0,10) ms, 1: [10,20) ms, 2: [20,50) ms, 3: >=50 ms).";
/// HUATUO's `ContainersByType(Normal | Sidecar)`.
const CONTAINER_TYPES: &[&str] = &["normal", "sidecar"];

#[derive(Default)]
struct Runqlat {
    object: Option<bpf::Object>,
    containers: Containers,
}

kpulse_sdk::register!(Runqlat {
    name: "runqlat",
    version: "0.1.0",
    interval: 10,
    kinds: [tracing, metric],
    capabilities: ["bpf", "containers"],
    summary: "Run-queue latency zones, host and per container (sched_wakeup, sched_switch)",
});

impl Tracing for Runqlat {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        let object = bpf::Object::load(OBJECT, &[])?;
        object.attach("runq_wakeup", Attach::tracepoint("sched", "sched_wakeup"))?;
        object.attach(
            "runq_wakeup_new",
            Attach::tracepoint("sched", "sched_wakeup_new"),
        )?;
        object.attach("runq_switch", Attach::TpBtf("sched_switch".to_owned()))?;
        object.attach(
            "runq_exit",
            Attach::tracepoint("sched", "sched_process_exit"),
        )?;
        if let Err(err) = object.attach("runq_rmdir", Attach::TpBtf("cgroup_rmdir".to_owned())) {
            log::warn(&format!(
                "removed cgroups keep their counts until the plugin restarts: {err}"
            ));
        }
        self.object = Some(object);
        Ok(())
    }
}

/// The four zone counters of one scope (`container`: its id, `None` for the host).
fn zone_metrics(container: Option<&str>, zones: [u64; ZONES]) -> impl Iterator<Item = Metric> {
    let container = container.map(str::to_owned);
    zones.into_iter().enumerate().map(move |(zone, count)| {
        let sample = match &container {
            Some(id) => metric::container_counter(id, "latency", count as f64, CONTAINER_HELP),
            None => metric::counter("latency", count as f64, HELP),
        };
        sample.label("zone", zone.to_string())
    })
}

/// The host's zones from `runqlat_host` (one entry per zone, per-CPU u64).
fn host_zones(entries: &[(Vec<u8>, Vec<u8>)]) -> [u64; ZONES] {
    let mut zones = [0u64; ZONES];
    for (key, value) in entries {
        let Some(zone) = key
            .get(..4)
            .and_then(|k| k.try_into().ok())
            .map(u32::from_le_bytes)
        else {
            continue;
        };
        if let Some(slot) = zones.get_mut(zone as usize) {
            *slot = memcg::percpu_sum::<1>(value)[0];
        }
    }
    zones
}

impl Collector for Runqlat {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let Some(object) = &self.object else {
            return Ok(Vec::new());
        };
        let mut metrics: Vec<Metric> =
            zone_metrics(None, host_zones(&object.entries("runqlat_host")?)).collect();
        self.containers.refresh();
        if !self.containers.available() {
            return Ok(metrics);
        }
        let counts = memcg::read_counts::<ZONES>(object, "runqlat_cgroup")?;
        let by_container = memcg::resolve_counts(&counts)?;
        for c in self.containers.of_types(CONTAINER_TYPES) {
            let zones = by_container.get(&c.id).copied().unwrap_or_default();
            metrics.extend(zone_metrics(Some(&c.id), zones));
        }
        Ok(metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn percpu(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn host_zones_from_the_per_cpu_table() {
        // Zone i on two CPUs; a key out of range and a short key are ignored.
        let entries = vec![
            (0u32.to_le_bytes().to_vec(), percpu(&[100, 50])),
            (1u32.to_le_bytes().to_vec(), percpu(&[3, 4])),
            (2u32.to_le_bytes().to_vec(), percpu(&[0, 1])),
            (3u32.to_le_bytes().to_vec(), percpu(&[2, 0])),
            (9u32.to_le_bytes().to_vec(), percpu(&[7, 7])),
            (vec![1], percpu(&[7, 7])),
        ];
        assert_eq!(host_zones(&entries), [150, 7, 1, 2]);
    }

    #[test]
    fn one_counter_per_zone_with_its_label() {
        let host: Vec<Metric> = zone_metrics(None, [5, 6, 7, 8]).collect();
        let zones: Vec<(String, f64)> = host
            .iter()
            .map(|m| (m.labels()[0].1.clone(), m.value()))
            .collect();
        assert_eq!(
            zones,
            [
                ("0".to_owned(), 5.0),
                ("1".to_owned(), 6.0),
                ("2".to_owned(), 7.0),
                ("3".to_owned(), 8.0)
            ]
        );
        assert!(host.iter().all(|m| m.name() == "latency"));
        let container: Vec<Metric> = zone_metrics(Some("web"), [0; ZONES]).collect();
        assert_eq!(container.len(), ZONES);
        let raw: kpulse_sdk::bindings::kpulse::plugin::types::Metric = container[3].clone().into();
        assert_eq!(raw.container_id.as_deref(), Some("web"));
        assert_eq!(raw.labels, [("zone".to_owned(), "3".to_owned())]);
    }
}
