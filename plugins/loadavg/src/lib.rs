//! `loadavg`: load averages and task counts from `/proc/loadavg`, under HUATUO's names
//! (`huatuo_bamai_loadavg_load1` with `prefix = "huatuo_bamai"`), and per container the
//! tasks running and in uninterruptible sleep (`loadavg_container_nr_running`,
//! `loadavg_container_nr_uninterruptible`), like HUATUO: taskstats `CGROUPSTATS` of the
//! container's `cpu` cgroup, queried by the host (`net` interface). HUATUO's container part
//! is cgroup v1 only, and so is the kernel's `CGROUPSTATS`: on a unified (v2) `cpu`
//! hierarchy there are no container series.
//!
//! Containers are the registry's running `normal` ones (HUATUO's `NormalContainers()`).
//! Without the `containers` or `net` capability, only the host series are produced (logged
//! once); a container that went away between the registry and the query is skipped.

use kpulse_sdk::net;
use kpulse_sdk::prelude::*;

#[allow(
    dead_code,
    reason = "shared with cpu_util; this plugin uses part of it"
)]
#[path = "../../cpu_util/src/cgroup.rs"]
mod cgroup;
use cgroup::{NORMAL, Registry};

/// No settings: `register!` builds it with `Default`; version and interval are the defaults.
#[derive(Default)]
struct Loadavg {
    registry: Registry,
    /// A cgroup-stats query failed for another reason than a vanished container (logged
    /// once per instance).
    warned: bool,
}

kpulse_sdk::register!(Loadavg {
    name: "loadavg",
    kinds: [metric],
    capabilities: [
        "read:/proc/loadavg",
        "read:/sys/fs/cgroup",
        "containers",
        "net"
    ],
    summary: "Load averages and task counts from /proc/loadavg; per container running and uninterruptible tasks (taskstats, cgroup v1)",
});

fn host_metrics(load: &procfs::LoadAvg) -> Vec<Metric> {
    vec![
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
    ]
}

/// HUATUO's two container series from one `struct cgroupstats`.
fn container_metrics(id: &str, counts: &net::TaskCounts) -> [Metric; 2] {
    [
        metric::container_gauge(
            id,
            "nr_running",
            counts.nr_running as f64,
            "Tasks of the container running or runnable (taskstats cgroupstats).",
        ),
        metric::container_gauge(
            id,
            "nr_uninterruptible",
            counts.nr_uninterruptible as f64,
            "Tasks of the container in uninterruptible sleep (taskstats cgroupstats).",
        ),
    ]
}

impl Loadavg {
    fn containers(&mut self, out: &mut Vec<Metric>) {
        self.registry.refresh();
        let dirs: Vec<(String, String)> = self
            .registry
            .containers(NORMAL)
            .filter_map(|c| {
                let dir = self.registry.dir(c, "cpu")?;
                (!dir.v2).then(|| (c.id.clone(), dir.path))
            })
            .collect();
        for (id, path) in dirs {
            match net::cgroup_stats(&path) {
                Ok(counts) => out.extend(container_metrics(&id, &counts)),
                Err(err) if err.is_not_found() => {}
                Err(err) => {
                    if !self.warned {
                        log::warn(&format!(
                            "no container load series for some containers (host ones go on; \
                             logged once): {err}"
                        ));
                        self.warned = true;
                    }
                    // Without the capability no container will do better.
                    if err.is_access_denied() {
                        return;
                    }
                }
            }
        }
    }
}

impl Collector for Loadavg {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mut out = host_metrics(&procfs::loadavg()?);
        self.containers(&mut out);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_series_carry_the_id() {
        let counts = net::TaskCounts {
            nr_sleeping: 3,
            nr_running: 2,
            nr_stopped: 0,
            nr_uninterruptible: 1,
            nr_io_wait: 0,
        };
        let [running, d] = container_metrics("c1", &counts);
        assert_eq!(running.name(), "nr_running");
        assert_eq!(running.value(), 2.0);
        assert_eq!(d.name(), "nr_uninterruptible");
        assert_eq!(d.value(), 1.0);
    }
}
