// Shared body of the `hot` test guests (hot-v1, hot-v2): a metric plugin whose version and
// `marker` gauge tell which build is serving. Each crate defines VERSION and MARKER.

use kpulse_sdk::prelude::*;

struct Hot;

kpulse_sdk::register!(Hot {
    name: "hot",
    version: VERSION,
    interval: 1,
    kinds: [metric],
    capabilities: [],
    summary: "Test guest for hot reload",
});

impl Plugin for Hot {
    fn init(config: Config) -> Result<Self> {
        // Lets a test make exactly one version fail its init.
        let fail_version: Option<String> = config.get("fail_init_version")?;
        if fail_version.as_deref() == Some(VERSION) {
            return Err(Error::msg(format!("init failure requested for {VERSION}")));
        }
        Ok(Hot)
    }
}

impl Collector for Hot {
    fn update(&mut self) -> Result<Vec<Metric>> {
        Ok(vec![metric::gauge("marker", MARKER, "Which build is serving.")])
    }
}
