//! A test guest that calls both `statfs` functions without declaring the `statfs`
//! capability. On every scrape it reports, per function, whether the host refused it with
//! `access-denied` (1) or answered (0), and how many mounts it was given.

use kpulse_sdk::prelude::*;
use kpulse_sdk::statfs;

#[derive(Default)]
struct Probe;

kpulse_sdk::register!(Probe {
    name: "statfs_probe",
    kinds: [metric],
});

fn denied<T>(result: &Result<T>) -> f64 {
    match result {
        Err(err) if err.is_access_denied() => 1.0,
        _ => 0.0,
    }
}

impl Collector for Probe {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mounts = statfs::mounts();
        let root = statfs::statfs("/");
        Ok(vec![
            metric::gauge("mounts_denied", denied(&mounts), "mounts() was refused."),
            metric::gauge("statfs_denied", denied(&root), "statfs(\"/\") was refused."),
            metric::gauge(
                "mounts_listed",
                mounts.map(|m| m.len()).unwrap_or(0) as f64,
                "Mounts mounts() returned.",
            ),
        ])
    }
}
