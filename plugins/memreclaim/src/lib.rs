//! `memreclaim`: tasks stalled in synchronous memory reclaim for longer than a threshold
//! (HUATUO's `memory_reclaim_events`, which saves `tracer_name = "memory_reclaim"`; kpulse
//! saves `tracer_name = "memreclaim"`, the plugin's name).
//!
//! Two sources, both measured begin → end on the stalled thread in the kernel:
//! * `direct`: global direct reclaim (`vmscan/mm_vmscan_direct_reclaim_{begin,end}`, i.e.
//!   `try_to_free_pages`, what HUATUO hooks);
//! * `memcg`: memory cgroup limit reclaim (`vmscan/mm_vmscan_memcg_reclaim_{begin,end}`),
//!   the stall containers actually hit when they reach their limit. Optional: when this
//!   kernel lacks the pair, only `direct` is watched.
//!
//! HUATUO keeps only events of containerized tasks; kpulse keeps them all and records the
//! task's memory cgroup id (`memcg_id`, the inode of its memory cgroup directory) for
//! attribution. Metrics: events saved by source, candidates lost to a full ring buffer.

use kpulse_sdk::bpf::{self, Attach, Global, Record};
use kpulse_sdk::prelude::*;
use kpulse_sdk::records::MemreclaimEvent;
use serde::{Deserialize, Serialize};

const OBJECT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../ebpf/build/memreclaim.bpf.o"
));

/// `enum kp_reclaim_source` → document `source` value (and metric label).
const SOURCES: [&str; 2] = ["direct", "memcg"];

/// `[plugins.memreclaim]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Report a reclaim that blocked the task at least this long, in nanoseconds (HUATUO
    /// `MemoryReclaim.BlockedThreshold`: 900000000 = 900 ms).
    threshold_ns: u64,
    /// Also watch memory cgroup limit reclaim, not only global direct reclaim (kpulse
    /// addition; HUATUO watches direct reclaim only).
    memcg: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            threshold_ns: 900_000_000,
            memcg: true,
        }
    }
}

struct Memreclaim {
    settings: Settings,
    object: Option<bpf::Object>,
    /// Events saved, by `enum kp_reclaim_source`.
    events: [u64; 2],
}

#[derive(Serialize)]
struct Reclaim {
    /// Process id (tgid).
    pid: u32,
    /// Thread id: the thread that stalled.
    tid: u32,
    comm: String,
    cpu: u32,
    reclaim_duration_ns: u64,
    threshold_ns: u64,
    /// `direct` or `memcg`.
    source: &'static str,
    /// Allocation order (2^order pages).
    order: i32,
    /// GFP mask of the allocation (raw bits).
    gfp_flags: u64,
    /// Pages reclaimed.
    nr_reclaimed: u64,
    /// Kernfs id (directory inode) of the task's memory cgroup.
    memcg_id: u64,
    /// Cgroup v2 id of the task (1 for every task on cgroup v1/hybrid hosts).
    cgroup_id: u64,
}

kpulse_sdk::register!(Memreclaim {
    name: "memreclaim",
    version: "0.1.0",
    interval: 5,
    kinds: [tracing, metric],
    capabilities: ["bpf", "containers"],
    summary: "Tasks stalled in direct or memcg-limit memory reclaim (vmscan tracepoints)",
});

impl Plugin for Memreclaim {
    fn init(config: Config) -> Result<Self> {
        Ok(Memreclaim {
            settings: config.parse()?,
            object: None,
            events: [0; 2],
        })
    }
}

impl Tracing for Memreclaim {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        let object = bpf::Object::load(
            OBJECT,
            &[Global::u64(
                "reclaim_threshold_ns",
                self.settings.threshold_ns,
            )],
        )?;
        object.attach(
            "reclaim_begin",
            Attach::tracepoint("vmscan", "mm_vmscan_direct_reclaim_begin"),
        )?;
        object.attach(
            "reclaim_end",
            Attach::tracepoint("vmscan", "mm_vmscan_direct_reclaim_end"),
        )?;
        if self.settings.memcg {
            let memcg = object
                .attach(
                    "memcg_rcl_begin",
                    Attach::tracepoint("vmscan", "mm_vmscan_memcg_reclaim_begin"),
                )
                .and_then(|()| {
                    object.attach(
                        "memcg_rcl_end",
                        Attach::tracepoint("vmscan", "mm_vmscan_memcg_reclaim_end"),
                    )
                });
            if let Err(err) = memcg {
                log::warn(&format!(
                    "memcg reclaim not watched, direct reclaim only: {err}"
                ));
            }
        }
        object.subscribe("events")?;
        self.object = Some(object);
        Ok(())
    }

    fn on_events(
        &mut self,
        _ctx: &mut Context,
        _subscription: u64,
        records: bpf::Records<'_>,
    ) -> Result<()> {
        let reclaims: Vec<Reclaim> = records.map(decode).collect();
        let keys: Vec<containers::Key> = reclaims
            .iter()
            .map(|r| containers::Key::MemcgId(r.memcg_id))
            .collect();
        let owners = containers::attribute(&keys);
        for (reclaim, owner) in reclaims.iter().zip(&owners) {
            storage::save("memreclaim", owner, storage::now(), reclaim)?;
            let index = usize::from(reclaim.source == SOURCES[1]);
            if let Some(count) = self.events.get_mut(index) {
                *count += 1;
            }
        }
        Ok(())
    }
}

fn decode(r: Record<'_>) -> Reclaim {
    let e = MemreclaimEvent::parse_padded(r.0);
    let h = &e.hdr;
    let source = SOURCES.get(e.source as usize).copied().unwrap_or("direct");
    Reclaim {
        pid: h.tgid,
        tid: h.pid,
        comm: h.comm_str(),
        cpu: h.cpu,
        reclaim_duration_ns: e.duration_ns,
        threshold_ns: e.threshold_ns,
        source,
        order: e.order,
        gfp_flags: e.gfp_flags,
        nr_reclaimed: e.nr_reclaimed,
        memcg_id: e.memcg_id,
        cgroup_id: h.cgroup_id,
    }
}

impl Collector for Memreclaim {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mut metrics: Vec<Metric> = SOURCES
            .iter()
            .zip(self.events)
            .map(|(source, count)| {
                metric::counter(
                    "events",
                    count as f64,
                    "Reclaim stalls over the threshold saved, by source.",
                )
                .label("source", *source)
            })
            .collect();
        if let Some(object) = &self.object {
            metrics.push(metric::counter(
                "lost",
                object.stat(bpf::Stat::RingFull)? as f64,
                "Reclaim stalls lost because the ring buffer was full.",
            ));
        }
        Ok(metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_memcg_record() {
        let mut e = MemreclaimEvent {
            duration_ns: 5_000,
            order: -1,
            source: kpulse_sdk::records::KP_RECLAIM_MEMCG,
            ..MemreclaimEvent::default()
        };
        (e.hdr.pid, e.hdr.tgid) = (42, 41);
        e.hdr.comm[..2].copy_from_slice(b"dd");
        let bytes = e.to_bytes();
        let r = decode(Record(&bytes));
        assert_eq!((r.pid, r.tid, r.comm.as_str()), (41, 42, "dd"));
        assert_eq!(
            (r.reclaim_duration_ns, r.order, r.source),
            (5_000, -1, "memcg")
        );
        assert_eq!(
            decode(Record(&[])).source,
            "direct",
            "short records give zeros"
        );
    }
}
