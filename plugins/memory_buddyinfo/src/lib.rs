//! `memory_buddyinfo`: free blocks of the buddy allocator from `/proc/buddyinfo`, under
//! HUATUO's name and labels (`huatuo_bamai_memory_buddyinfo_blocks{node,zone,order}` with
//! `prefix = "huatuo_bamai"`): one gauge per NUMA node, zone and order (blocks of 2^order
//! pages). Malformed lines are skipped and counted in `malformed_lines_total`. HUATUO has no
//! container-level series for it.

use kpulse_sdk::prelude::*;

#[derive(Default)]
struct MemoryBuddyinfo {
    malformed: u64,
}

kpulse_sdk::register!(MemoryBuddyinfo {
    name: "memory_buddyinfo",
    kinds: [metric],
    capabilities: ["read:/proc/buddyinfo"],
    summary: "Free buddy-allocator blocks per node, zone and order from /proc/buddyinfo",
});

impl MemoryBuddyinfo {
    fn collect(&mut self, text: &str) -> Vec<Metric> {
        let (zones, skipped) = procfs::parse_buddyinfo(text);
        self.malformed += skipped;
        let mut out: Vec<Metric> = zones
            .iter()
            .flat_map(|z| {
                z.free.iter().enumerate().map(|(order, free)| {
                    metric::gauge(
                        "blocks",
                        *free as f64,
                        "Free blocks of 2^order pages (buddy info).",
                    )
                    .label("node", &z.node)
                    .label("zone", &z.zone)
                    .label("order", order.to_string())
                })
            })
            .collect();
        out.push(metric::counter(
            "malformed_lines",
            self.malformed as f64,
            "Lines of /proc/buddyinfo that did not parse and were skipped.",
        ));
        out
    }
}

impl Collector for MemoryBuddyinfo {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let text = fs::read_to_string("/proc/buddyinfo")?;
        Ok(self.collect(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_series_per_order() {
        let out = MemoryBuddyinfo::default()
            .collect("Node 0, zone      DMA      1      0      3\nNode 0, zone   Normal  x\n");
        assert_eq!(out.len(), 4);
        assert_eq!((out[2].name(), out[2].value()), ("blocks", 3.0));
        assert_eq!(
            out[2].labels(),
            [
                ("node".to_owned(), "0".to_owned()),
                ("zone".to_owned(), "DMA".to_owned()),
                ("order".to_owned(), "2".to_owned())
            ]
        );
        assert_eq!(out[3].value(), 1.0);
    }
}
