//! `loadavg`: load averages and task counts from `/proc/loadavg`, under HUATUO's names
//! (`huatuo_bamai_loadavg_load1` with `prefix = "huatuo_bamai"`).

use kpulse_sdk::prelude::*;

/// No settings: `register!` builds it with `Default`; version and interval are the defaults.
#[derive(Default)]
struct Loadavg;

kpulse_sdk::register!(Loadavg {
    name: "loadavg",
    kinds: [metric],
    capabilities: ["read:/proc/loadavg"],
    summary: "Load averages and running/total task counts from /proc/loadavg",
});

impl Collector for Loadavg {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let load = procfs::loadavg()?;
        Ok(vec![
            metric::gauge(
                "load1",
                load.load1,
                "System load average over the last minute.",
            ),
            metric::gauge(
                "load5",
                load.load5,
                "System load average over the last 5 minutes.",
            ),
            metric::gauge(
                "load15",
                load.load15,
                "System load average over the last 15 minutes.",
            ),
            metric::gauge("nr_running", load.running as f64, "Runnable tasks."),
            metric::gauge(
                "nr_tasks",
                load.total as f64,
                "All tasks (processes and threads).",
            ),
        ])
    }
}
