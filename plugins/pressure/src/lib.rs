//! `pressure`: pressure stall information (PSI) for cpu, memory and io, for the host from
//! `/proc/pressure/<resource>` and per container from its cgroup v2 `<resource>.pressure`.
//! Names follow node_exporter's `pressure` collector, under the agent's prefix:
//!
//! | series | kind | from |
//! |---|---|---|
//! | `<resource>_waiting_seconds_total` | counter | `some total=` (µs): time at least one task stalled |
//! | `<resource>_stalled_seconds_total` | counter | `full total=` (µs): time all non-idle tasks stalled |
//! | `<resource>_waiting_ratio{window}`, `<resource>_stalled_ratio{window}` | gauge | `avg10`/`avg60`/`avg300` (percent) / 100, `window` = `10s`, `60s`, `300s` |
//!
//! `<resource>` is `cpu`, `memory` or `io`; container series are
//! `<prefix>_pressure_container_<name>` with the container labels. The host's `cpu` line
//! `full` is all zeros on kernels before 5.13 and absent before; it is reported when present,
//! as node_exporter does. A container's files are read in the unified hierarchy: on a hybrid
//! host (v1 controllers) the v2 tree still has them when the runtime creates the container's
//! cgroup there; a container without one is skipped. A missing host file (kernel without PSI,
//! or `psi=0`, which fails reads with `EOPNOTSUPP`) gives no series for that resource and one
//! log line; unparsable lines are counted in `malformed_lines_total`, failed reads other than
//! a vanished file in `read_errors_total`.

use kpulse_sdk::containers::{self, CgroupMount, Container, Tracker};
use kpulse_sdk::prelude::*;

/// The resources, in the order of their files.
const RESOURCES: [&str; 3] = ["cpu", "memory", "io"];
/// Container types reported (every container; no pod sandboxes or systemd units).
const CONTAINER_TYPES: [&str; 3] = ["normal", "sidecar", "daemonSet"];
/// Seconds per PSI `total` unit (microseconds).
const TOTAL_UNIT: f64 = 1e-6;

/// One line of a pressure file: `some avg10=0.12 avg60=0.05 avg300=0.01 total=12345`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Line {
    avg10: f64,
    avg60: f64,
    avg300: f64,
    total_us: u64,
}

/// A pressure file: `some` and, where the kernel has it, `full`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Pressure {
    some: Option<Line>,
    full: Option<Line>,
}

fn parse_line(rest: &str) -> Option<Line> {
    let mut line = Line::default();
    let mut seen = 0;
    for field in rest.split_whitespace() {
        let (key, value) = field.split_once('=')?;
        match key {
            "avg10" => line.avg10 = value.parse().ok()?,
            "avg60" => line.avg60 = value.parse().ok()?,
            "avg300" => line.avg300 = value.parse().ok()?,
            "total" => line.total_us = value.parse().ok()?,
            // A field a later kernel may add.
            _ => continue,
        }
        seen += 1;
    }
    (seen == 4).then_some(line)
}

/// Parses a pressure file, adding unparsable lines to `malformed`.
fn parse(text: &str, malformed: &mut u64) -> Pressure {
    let mut p = Pressure::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let parsed = match line.split_once(' ') {
            Some(("some", rest)) => parse_line(rest).map(|l| p.some = Some(l)),
            Some(("full", rest)) => parse_line(rest).map(|l| p.full = Some(l)),
            _ => None,
        };
        if parsed.is_none() {
            *malformed += 1;
        }
    }
    p
}

/// The series of one resource's pressure, for the host (`container` `None`) or a container.
fn series(resource: &str, p: &Pressure, container: Option<&str>) -> Vec<Metric> {
    let mut out = Vec::new();
    for (kind, line, what) in [
        ("waiting", p.some, "at least one task"),
        ("stalled", p.full, "all non-idle tasks"),
    ] {
        let Some(line) = line else { continue };
        let total = format!("{resource}_{kind}_seconds");
        let help = format!("Seconds during which {what} stalled on {resource} (PSI).");
        let mut m = metric::counter(&total, line.total_us as f64 * TOTAL_UNIT, &help);
        let ratio = format!("{resource}_{kind}_ratio");
        let ratio_help = format!(
            "Share of time {what} stalled on {resource} over the window, 0 to 1 (PSI avg)."
        );
        let mut ratios: Vec<Metric> = [
            ("10s", line.avg10),
            ("60s", line.avg60),
            ("300s", line.avg300),
        ]
        .into_iter()
        .map(|(window, avg)| {
            metric::gauge(&ratio, avg / 100.0, &ratio_help).label("window", window)
        })
        .collect();
        if let Some(id) = container {
            m = m.container(id);
            ratios = ratios.into_iter().map(|r| r.container(id)).collect();
        }
        out.push(m);
        out.extend(ratios);
    }
    out
}

#[derive(Default)]
struct PressurePlugin {
    tracker: Tracker,
    /// The unified hierarchies' mount points (empty: no container series).
    v2_mounts: Option<Vec<String>>,
    containers_off: bool,
    host_missing_logged: [bool; 3],
    malformed: u64,
    read_errors: u64,
}

kpulse_sdk::register!(PressurePlugin {
    name: "pressure",
    kinds: [metric],
    capabilities: ["read:/proc/pressure", "read:/sys/fs/cgroup", "containers"],
    summary: "PSI stall time and averages for cpu, memory and io, host and per container",
});

fn v2_mounts(mounts: &[CgroupMount]) -> Vec<String> {
    mounts
        .iter()
        .filter(|m| m.version == 2)
        .map(|m| m.mount_point.clone())
        .collect()
}

impl PressurePlugin {
    /// Reads `path`; `None` when it is not there (silently) or unreadable (counted).
    fn read(&mut self, path: &str) -> Option<String> {
        match fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(err) if err.is_not_found() => None,
            Err(err) => {
                if self.read_errors == 0 {
                    log::warn(&format!(
                        "cannot read a pressure file (skipped, counted in read_errors_total): {err}"
                    ));
                }
                self.read_errors += 1;
                None
            }
        }
    }

    fn host(&mut self, out: &mut Vec<Metric>) {
        for (i, resource) in RESOURCES.iter().enumerate() {
            let path = format!("/proc/pressure/{resource}");
            match fs::read_to_string(&path) {
                Ok(text) => {
                    let p = parse(&text, &mut self.malformed);
                    out.extend(series(resource, &p, None));
                }
                Err(err) => {
                    // No PSI in this kernel, or psi=0: not an error of the scrape.
                    if !self.host_missing_logged[i] {
                        log::info(&format!("no host {resource} pressure: {err}"));
                        self.host_missing_logged[i] = true;
                    }
                }
            }
        }
    }

    fn refresh_containers(&mut self) -> Option<Vec<Container>> {
        let result = self.tracker.refresh().and_then(|()| {
            if self.v2_mounts.is_none() {
                self.v2_mounts = Some(v2_mounts(&containers::cgroup_mounts()?));
            }
            Ok(())
        });
        if let Err(err) = result {
            if !self.containers_off {
                log::info(&format!(
                    "no container-level series (host ones go on): {err}"
                ));
            }
            self.containers_off = true;
            return None;
        }
        self.containers_off = false;
        Some(
            self.tracker
                .containers()
                .filter(|c| CONTAINER_TYPES.contains(&c.container_type.as_str()))
                .cloned()
                .collect(),
        )
    }

    fn containers(&mut self, out: &mut Vec<Metric>) {
        let Some(list) = self.refresh_containers() else {
            return;
        };
        let mounts = self.v2_mounts.clone().unwrap_or_default();
        for c in &list {
            let Some(dir) = mounts.iter().find_map(|m| {
                let dir = format!("{m}{}", c.cgroup_path);
                // cgroup.procs is in every v2 cgroup: the container has one here.
                fs::read(&format!("{dir}/cgroup.procs")).ok().map(|_| dir)
            }) else {
                continue;
            };
            for resource in RESOURCES {
                if let Some(text) = self.read(&format!("{dir}/{resource}.pressure")) {
                    let p = parse(&text, &mut self.malformed);
                    out.extend(series(resource, &p, Some(&c.id)));
                }
            }
        }
    }
}

impl Collector for PressurePlugin {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mut out = Vec::new();
        self.host(&mut out);
        self.containers(&mut out);
        out.push(metric::counter(
            "malformed_lines",
            self.malformed as f64,
            "Lines of pressure files that did not parse and were skipped.",
        ));
        out.push(metric::counter(
            "read_errors",
            self.read_errors as f64,
            "Container pressure files that could not be read (other than vanished).",
        ));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's /proc/pressure/io (Linux 6.18).
    const IO: &str = "some avg10=1.66 avg60=2.84 avg300=1.53 total=321323061\n\
                      full avg10=1.36 avg60=2.22 avg300=1.22 total=260679513\n";

    #[test]
    fn parses_some_and_full() {
        let mut m = 0;
        let p = parse(IO, &mut m);
        assert_eq!(m, 0);
        let some = p.some.expect("some");
        assert_eq!(some.avg10, 1.66);
        assert_eq!(some.total_us, 321_323_061);
        assert_eq!(p.full.expect("full").avg300, 1.22);
    }

    #[test]
    fn node_exporter_names_and_units() {
        let mut m = 0;
        let out = series("io", &parse(IO, &mut m), None);
        let names: Vec<&str> = out.iter().map(Metric::name).collect();
        assert_eq!(names[0], "io_waiting_seconds");
        assert_eq!(out[0].value(), 321.323061);
        assert_eq!(names[1], "io_waiting_ratio");
        assert!((out[1].value() - 0.0166).abs() < 1e-12);
        assert!(
            out[1]
                .labels()
                .contains(&("window".to_owned(), "10s".to_owned()))
        );
        assert_eq!(names[4], "io_stalled_seconds");
        assert_eq!(out.len(), 8);
    }

    #[test]
    fn old_kernel_without_full_and_malformed_lines() {
        let mut m = 0;
        let p = parse(
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=5\nfull avg10=x\nbogus\n",
            &mut m,
        );
        assert_eq!(m, 2);
        assert!(p.full.is_none());
        assert_eq!(series("cpu", &p, None).len(), 4);
    }
}
