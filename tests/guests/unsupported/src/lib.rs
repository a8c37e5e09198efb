//! Test guest: answers "not supported on this host" from `init`, which must mark it
//! `inactive`, not failed.

use kpulse_sdk::prelude::*;

struct Unsupported;

kpulse_sdk::register!(Unsupported {
    name: "unsupported",
    version: "0.1.0",
    interval: 1,
    kinds: [metric],
    capabilities: [],
    summary: "Test guest: not supported on any host",
});

impl Plugin for Unsupported {
    fn init(_config: Config) -> Result<Self> {
        Err(Error::NotSupported(
            "needs hardware this host lacks".to_owned(),
        ))
    }
}

impl Collector for Unsupported {
    fn update(&mut self) -> Result<Vec<Metric>> {
        Ok(Vec::new())
    }
}
