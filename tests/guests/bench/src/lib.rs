//! Benchmark guest: a simple metric plugin like `loadavg`. Its name, `benchxx0`, is a
//! marker the bench command patches (`benchxx1`, `benchxx2`, ...) to load many distinct
//! copies of one component.

use kpulse_sdk::prelude::*;

struct Bench;

kpulse_sdk::register!(Bench {
    // black_box keeps the name as bytes in the data segment (instead of an immediate
    // store), so the bench command can patch it.
    name: std::hint::black_box("benchxx0"),
    version: "0.1.0",
    interval: 10,
    kinds: [metric],
    capabilities: ["read:/proc/loadavg"],
    summary: "Benchmark guest",
});

impl Plugin for Bench {
    fn init(_config: Config) -> Result<Self> {
        Ok(Bench)
    }
}

impl Collector for Bench {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let load = procfs::loadavg()?;
        Ok(vec![
            metric::gauge("load1", load.load1, "1-minute load."),
            metric::gauge("load5", load.load5, "5-minute load."),
            metric::gauge("load15", load.load15, "15-minute load."),
            metric::gauge("running", load.running as f64, "Runnable tasks."),
            metric::gauge("tasks", load.total as f64, "All tasks."),
        ])
    }
}
