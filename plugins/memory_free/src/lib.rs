//! `memory_free`: time tasks stalled in global direct reclaim and in direct compaction,
//! host-wide (`huatuo_bamai_memory_free_allocpages_stall` and
//! `huatuo_bamai_memory_free_compaction_stall` with `prefix = "huatuo_bamai"`).
//!
//! Kernel side, `ebpf/src/memory_free.bpf.c`: `vmscan/mm_vmscan_direct_reclaim_{begin,end}`
//! time `try_to_free_pages` on the stalled thread, as in HUATUO. For compaction HUATUO
//! times `try_to_compact_pages` with a kprobe + kretprobe; kprobes are not available here,
//! so `compaction/mm_compaction_try_to_compact_pages` marks the thread as compacting
//! directly and `compaction/mm_compaction_{begin,end}` time each zone it compacts
//! (kcompactd and `/proc/sys/vm/compact_memory` are not counted, as in HUATUO). The small
//! gaps between zones are left out; see the object's comment. The sums are per-CPU tables
//! that `update` reads.
//!
//! | series | kind | value |
//! |---|---|---|
//! | `allocpages_stall` | gauge | direct reclaim stall time since the collector started, ms |
//! | `compaction_stall` | gauge | direct compaction stall time since the collector started, ms |
//!
//! HUATUO's semantics in both naming modes: gauges of the total nanoseconds since load
//! divided by 1e6 (milliseconds; they only grow, and start again from 0 when the collector
//! restarts). With the default prefix the names are `kpulse_memory_free_allocpages_stall`
//! and `kpulse_memory_free_compaction_stall`, in milliseconds, not base units: the plugin
//! cannot tell the modes apart, and HUATUO's dashboards need its unit. There is no
//! container level (HUATUO has none).

use kpulse_sdk::bpf::{self, Attach};
use kpulse_sdk::prelude::*;

const OBJECT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../ebpf/build/memory_free.bpf.o"
));

/// Slots of `memory_free_stall` (`KP_FREE_COMPACTION`, `KP_FREE_ALLOCPAGES`).
const COMPACTION: u32 = 0;
const ALLOCPAGES: u32 = 1;

#[derive(Default)]
struct MemoryFree {
    object: Option<bpf::Object>,
}

kpulse_sdk::register!(MemoryFree {
    name: "memory_free",
    version: "0.1.0",
    interval: 10,
    kinds: [tracing, metric],
    capabilities: ["bpf"],
    summary: "Direct reclaim and direct compaction stall time (vmscan, compaction tracepoints)",
});

impl Tracing for MemoryFree {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        let object = bpf::Object::load(OBJECT, &[])?;
        for (program, category, name) in [
            (
                "free_reclaim_begin",
                "vmscan",
                "mm_vmscan_direct_reclaim_begin",
            ),
            ("free_reclaim_end", "vmscan", "mm_vmscan_direct_reclaim_end"),
            (
                "free_compact_direct",
                "compaction",
                "mm_compaction_try_to_compact_pages",
            ),
            ("free_compact_begin", "compaction", "mm_compaction_begin"),
            ("free_compact_end", "compaction", "mm_compaction_end"),
            ("free_exit", "sched", "sched_process_exit"),
        ] {
            object.attach(program, Attach::tracepoint(category, name))?;
        }
        self.object = Some(object);
        Ok(())
    }
}

/// HUATUO's unit: nanoseconds / 1e6.
fn milliseconds(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The two gauges from the per-CPU nanosecond sums.
fn stall_metrics(compaction_ns: u64, allocpages_ns: u64) -> Vec<Metric> {
    vec![
        metric::gauge(
            "compaction_stall",
            milliseconds(compaction_ns),
            "Time tasks stalled in direct memory compaction since the collector started, \
             in milliseconds.",
        ),
        metric::gauge(
            "allocpages_stall",
            milliseconds(allocpages_ns),
            "Time tasks stalled in direct memory reclaim while allocating pages since the \
             collector started, in milliseconds.",
        ),
    ]
}

impl Collector for MemoryFree {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let Some(object) = &self.object else {
            return Ok(Vec::new());
        };
        let slot = |index: u32| -> Result<u64> {
            Ok(object
                .lookup("memory_free_stall", &index.to_le_bytes())?
                .map_or(0, |value| bpf::sum_percpu_u64(&value)))
        };
        Ok(stall_metrics(slot(COMPACTION)?, slot(ALLOCPAGES)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanoseconds_become_huatuo_milliseconds() {
        let out = stall_metrics(2_500_000, 3_000_000_000);
        let get = |name: &str| {
            out.iter()
                .find(|m| m.name() == name)
                .map(Metric::value)
                .expect(name)
        };
        assert_eq!(get("compaction_stall"), 2.5);
        assert_eq!(get("allocpages_stall"), 3000.0);
        assert!(out.iter().all(|m| m.labels().is_empty()));
        assert_eq!(milliseconds(0), 0.0);
    }
}
