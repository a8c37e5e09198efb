//! `iolatency`: HUATUO's block latency zones (`huatuo_bamai_iolatency_*` with
//! `prefix = "huatuo_bamai"`), counted in the kernel by `iolatency.bpf.c` from the block
//! tracepoints and read with one map walk per scrape:
//!
//! - `blkdisk_q2c{disk="maj:min",zone}` and `blkdisk_d2c{disk,zone}`: requests per disk
//!   whose queue-to-complete (from `block_bio_queue` of its earliest bio) or
//!   driver-to-complete (from `block_rq_issue`) time fell in zone 0: 20–30, 1: 30–50, 2: 50–100, 3: 100–200,
//!   4: 200–400, 5: >400 ms; nothing under 20 ms is counted. q2c ≥ d2c for every request:
//!   a delay in the driver or the device (a slow disk, a loop device's backing file) raises
//!   both, a delay in the queue (I/O scheduler, tags exhausted) raises q2c only.
//! - `container_blkdisk_q2c` / `container_blkdisk_d2c{disk,zone}`: the same per container,
//!   attributed by the blkio cgroup of the request's first bio (matched against the
//!   registry's cgroup paths; a container's nested cgroups count for it).
//! - `blkdisk_freeze{disk}`: queue freezes. No tracepoint marks one, so this needs the
//!   kprobe HUATUO uses (`blk_mq_freeze_queue_nomemsave`, before 6.15
//!   `blk_mq_freeze_queue`). Where the kernel has no kprobes the attach answers
//!   not-supported: the series is not exported (never zeros), `freeze_traced` is 0 and the
//!   reason is logged once.
//!
//! Like HUATUO the zone series are gauges holding counts since the plugin started (a
//! container's count restarts if its entry is evicted from the kernel's LRU map of 4096
//! (cgroup, disk) pairs). Differences from HUATUO: block tracepoints instead of kprobes on
//! `blk_mq_start_request` / `__rq_qos_done_bio` (no rq-qos policy needed); counts are per
//! request, not per bio (bios merged into a request count once, with the first bio's queue
//! time); every cgroup is counted in the kernel, no container keys pre-seeded from user
//! space; bio-based devices (dm, md) are measured through the disks below them only.

mod zones;

use std::collections::BTreeMap;

use kpulse_sdk::bpf::{self, Attach};
use kpulse_sdk::prelude::*;

use zones::{CgKey, ZONES, Zones};

const OBJECT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../ebpf/build/iolatency.bpf.o"
));

/// Programs of `iolatency.bpf.o` and their BTF tracepoints.
const PROGRAMS: [(&str, &str); 3] = [
    ("iol_bio_queue", "block_bio_queue"),
    ("iol_rq_issue", "block_rq_issue"),
    ("iol_rq_complete", "block_rq_complete"),
];

/// Queue-freeze functions, newest first (6.15 renamed the one every freeze goes through).
const FREEZE_SYMBOLS: [&str; 2] = ["blk_mq_freeze_queue_nomemsave", "blk_mq_freeze_queue"];

/// Slots of the object's `counters` map.
const COUNTER_REQUESTS: u32 = 0;
const COUNTER_NO_ISSUE: u32 = 1;
const COUNTER_NO_QUEUE: u32 = 2;
const COUNTER_CG_FULL: u32 = 3;

/// Zone counts per (container id, disk).
type ByContainer = BTreeMap<(String, u32), Zones>;

struct Iolatency {
    /// Help texts of `blkdisk_q2c` and `blkdisk_d2c`.
    help: [String; 2],
    object: Option<bpf::Object>,
    /// Whether queue freezes are traced; the error otherwise.
    freeze: std::result::Result<String, String>,
    tracker: containers::Tracker,
    /// Cgroup paths by blkcg id, as read once from `blkcg_paths` (`None`: not readable).
    paths: BTreeMap<u64, Option<String>>,
    /// Failed container registry refreshes.
    registry_errors: u64,
}

kpulse_sdk::register!(Iolatency {
    name: "iolatency",
    version: "0.1.0",
    interval: 10,
    kinds: [tracing, metric],
    capabilities: ["bpf", "containers"],
    summary: "Block q2c/d2c latency zones per disk and per container, queue freezes (block tracepoints)",
});

impl Plugin for Iolatency {
    fn init(config: Config) -> Result<Self> {
        if let Some(key) = config.keys().first() {
            return Err(Error::InvalidConfig(format!(
                "this plugin takes no settings (got {key})"
            )));
        }
        let help = |what: &str| {
            format!(
                "Block requests by {what} latency zone ({}), since start.",
                zones::describe()
            )
        };
        Ok(Iolatency {
            help: [help("queue-to-complete"), help("driver-to-complete")],
            object: None,
            freeze: Err("not started".to_owned()),
            tracker: containers::Tracker::new(),
            paths: BTreeMap::new(),
            registry_errors: 0,
        })
    }
}

impl Tracing for Iolatency {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        let object = bpf::Object::load(OBJECT, &[])?;
        for (program, tracepoint) in PROGRAMS {
            object.attach(program, Attach::TpBtf(tracepoint.to_owned()))?;
        }
        self.freeze = attach_freeze(&object);
        match &self.freeze {
            Ok(symbol) => log::info(&format!("queue freezes traced at {symbol}")),
            Err(err) => log::info(&format!(
                "queue freezes not traced, iolatency_blkdisk_freeze not exported: {err}"
            )),
        }
        self.object = Some(object);
        Ok(())
    }
}

/// Attaches `iol_freeze` to the first freeze function the kernel has; the symbol, or why
/// none could be used (not-supported where the kernel has no kprobes).
fn attach_freeze(object: &bpf::Object) -> std::result::Result<String, String> {
    let mut errors = Vec::new();
    for symbol in FREEZE_SYMBOLS {
        match object.attach("iol_freeze", Attach::Kprobe(symbol.to_owned())) {
            Ok(()) => return Ok(symbol.to_owned()),
            // No kprobes at all: the other symbol would fail the same way.
            Err(err) if err.is_not_supported() => return Err(format!("{symbol}: {err}")),
            Err(err) => errors.push(format!("{symbol}: {err}")),
        }
    }
    Err(errors.join("; "))
}

impl Iolatency {
    /// `(cgroup path, id)` of the running containers (none without the `containers` grant).
    fn container_dirs(&mut self) -> Vec<(String, String)> {
        if let Err(err) = self.tracker.refresh() {
            self.registry_errors += 1;
            log::debug(&format!("container registry: {err}"));
        }
        self.tracker
            .containers()
            .map(|c| (c.cgroup_path.clone(), c.id.clone()))
            .collect()
    }

    /// The path of cgroup `id`, read from the kernel the first time it is needed.
    fn path(&mut self, object: &bpf::Object, id: u64) -> Result<Option<String>> {
        if let Some(path) = self.paths.get(&id) {
            return Ok(path.clone());
        }
        let path = object
            .lookup("blkcg_paths", &id.to_le_bytes())?
            .and_then(|value| zones::parse_path(&value));
        // Not cached when missing: the kernel writes the path just after the counts.
        if path.is_some() {
            self.paths.insert(id, path.clone());
        }
        Ok(path)
    }

    /// Per container and disk, the summed counts of its cgroups; the number of
    /// (cgroup, disk) entries that belong to no running container.
    fn by_container(&mut self, object: &bpf::Object) -> Result<(ByContainer, u64)> {
        let dirs = self.container_dirs();
        let mut out = ByContainer::new();
        let mut unowned = 0;
        let entries = object.entries("blkcg_zones")?;
        let mut live = std::collections::BTreeSet::new();
        for (key, value) in entries {
            let (Some(key), Some(counts)) = (CgKey::parse(&key), Zones::parse(&value)) else {
                continue;
            };
            live.insert(key.blkcg_id);
            let path = self.path(object, key.blkcg_id)?;
            match path.as_deref().and_then(|p| zones::owner(p, &dirs)) {
                Some(id) => out
                    .entry((id.to_owned(), key.dev))
                    .or_default()
                    .add(&counts),
                None => unowned += 1,
            }
        }
        // Cgroups whose entries the kernel evicted.
        self.paths.retain(|id, _| live.contains(id));
        Ok((out, unowned))
    }
}

/// The twelve zone series of one disk (host level) or one container's disk.
fn zone_metrics(
    out: &mut Vec<Metric>,
    help: &[String; 2],
    dev: u32,
    counts: &Zones,
    container: Option<&str>,
) {
    let disk = zones::disk_label(dev);
    for (name, help, values) in [
        ("blkdisk_q2c", &help[0], &counts.q2c),
        ("blkdisk_d2c", &help[1], &counts.d2c),
    ] {
        for (zone, &count) in values.iter().enumerate().take(ZONES) {
            let mut m = metric::gauge(name, count as f64, help)
                .label("disk", disk.clone())
                .label("zone", zone.to_string());
            if let Some(id) = container {
                m = m.container(id);
            }
            out.push(m);
        }
    }
}

fn counter(object: &bpf::Object, slot: u32) -> Result<u64> {
    Ok(object
        .lookup("counters", &slot.to_le_bytes())?
        .map_or(0, |v| bpf::sum_percpu_u64(&v)))
}

impl Collector for Iolatency {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mut out = vec![metric::gauge(
            "freeze_traced",
            f64::from(u8::from(self.freeze.is_ok())),
            "1 if queue freezes are traced (needs kprobes); 0: blkdisk_freeze is not exported.",
        )];
        let Some(object) = self.object.take() else {
            return Ok(out);
        };
        let result = self.collect(&object, &mut out);
        self.object = Some(object);
        result?;
        Ok(out)
    }
}

impl Iolatency {
    fn collect(&mut self, object: &bpf::Object, out: &mut Vec<Metric>) -> Result<()> {
        for (key, value) in object.entries("blkdisk_zones")? {
            if let (Some(dev), Some(counts)) = (zones::parse_dev(&key), Zones::parse(&value)) {
                zone_metrics(out, &self.help, dev, &counts, None);
            }
        }
        if self.freeze.is_ok() {
            for (key, value) in object.entries("blkdisk_freeze")? {
                if let (Some(dev), Some(count)) = (zones::parse_dev(&key), zones::parse_id(&value))
                {
                    out.push(
                        metric::gauge(
                            "blkdisk_freeze",
                            count as f64,
                            "Request queue freezes of the disk, since start.",
                        )
                        .label("disk", zones::disk_label(dev)),
                    );
                }
            }
        }
        let (containers, unowned) = self.by_container(object)?;
        for ((id, dev), counts) in &containers {
            zone_metrics(out, &self.help, *dev, counts, Some(id));
        }
        out.extend([
            metric::counter(
                "requests",
                counter(object, COUNTER_REQUESTS)? as f64,
                "Block requests timed from issue to completion (every latency).",
            ),
            metric::counter(
                "requests_untimed",
                counter(object, COUNTER_NO_ISSUE)? as f64,
                "Completed block requests without an issue time (issued before the attach).",
            ),
            metric::counter(
                "requests_without_q2c",
                counter(object, COUNTER_NO_QUEUE)? as f64,
                "Timed requests with neither a bio queue time nor an allocation time: d2c only.",
            ),
            metric::counter(
                "cgroup_entries_failed",
                counter(object, COUNTER_CG_FULL)? as f64,
                "Slow requests of a cgroup that could not be counted (kernel map update failed).",
            ),
            metric::gauge(
                "cgroup_entries_unowned",
                unowned as f64,
                "(cgroup, disk) entries in the kernel that belong to no running container.",
            ),
            metric::counter(
                "registry_errors",
                self.registry_errors as f64,
                "Failed reads of the container registry.",
            ),
        ]);
        Ok(())
    }
}
