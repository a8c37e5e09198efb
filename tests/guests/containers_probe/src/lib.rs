//! A test guest for the `containers` interface. On every scrape it follows the registry with
//! a [`containers::Tracker`] and reports, per running container, a container-level `up`
//! sample (so `/metrics` shows the host's container labels) and how many of the container's
//! own keys (`cgroup-id`, `memcg-id`, `netns-inum`, `pid`) resolve back to it in one batch.

use kpulse_sdk::containers::{self, Key, Tracker};
use kpulse_sdk::prelude::*;

#[derive(Default)]
struct Probe {
    tracker: Tracker,
}

kpulse_sdk::register!(Probe {
    name: "containers_probe",
    kinds: [metric],
    capabilities: ["containers"],
});

impl Collector for Probe {
    fn update(&mut self) -> Result<Vec<Metric>> {
        if let Err(err) = self.tracker.refresh() {
            let denied = if err.is_access_denied() { 1.0 } else { 0.0 };
            return Ok(vec![metric::gauge(
                "denied",
                denied,
                "The registry refused the plugin.",
            )]);
        }
        let mut out = vec![metric::gauge(
            "denied",
            0.0,
            "The registry refused the plugin.",
        )];
        let listed = containers::list()?.len();
        out.push(metric::gauge(
            "listed",
            listed as f64,
            "Workloads list() returns.",
        ));
        let running: Vec<_> = self.tracker.containers().cloned().collect();
        out.push(metric::gauge(
            "running",
            running.len() as f64,
            "Running containers tracked.",
        ));
        let mut keys = Vec::new();
        for c in &running {
            keys.extend([
                Key::CgroupId(c.cgroup_id),
                Key::MemcgId(c.memcg_id),
                Key::NetnsInum(c.netns_inum),
                Key::Pid(c.init_pid),
            ]);
        }
        let answers = containers::resolve(&keys)?;
        for (c, chunk) in running.iter().zip(answers.chunks(4)) {
            let back = chunk
                .iter()
                .filter(|a| a.as_deref() == Some(c.id.as_str()))
                .count();
            out.push(metric::container_gauge(
                &c.id,
                "up",
                1.0,
                "The container is running.",
            ));
            out.push(
                metric::gauge(
                    "resolved_keys",
                    back as f64,
                    "Own keys resolving to the container.",
                )
                .label("id", &c.id),
            );
        }
        Ok(out)
    }
}
