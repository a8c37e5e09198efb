use kpulse_sdk::prelude::*;

#[derive(Default)]
struct Minimal;

kpulse_sdk::register! { Minimal { name: "minimal", capabilities: ["read:/proc/loadavg"] } }

impl Collector for Minimal {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let load1 = procfs::loadavg()?.load1;
        Ok(vec![metric::gauge("load1", load1, "Load average, 1 min.")])
    }
}
