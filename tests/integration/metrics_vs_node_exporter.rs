//! The host families kpulse and node_exporter both have, compared on this machine: Debian's
//! `prometheus-node-exporter` (node_exporter 1.5) started by the test on a free port with the
//! matching collectors, and the agent with the matching plugins, scraped as
//! node_exporter → agent → node_exporter. A counter must lie between node_exporter's two
//! reads; a gauge within their range widened by how far it moved between them (plus, for the
//! socket counts, the few sockets of the scrapes themselves).
//!
//! netdev bytes/packets per device, diskstats reads/writes completed and bytes per device,
//! vmstat keys, netstat Tcp/TcpExt fields, sockstat, loadavg; filesystem and pressure when
//! their plugins are in `target/plugins` (skipped with a printed reason otherwise).

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kpulse_integration_tests::{Agent, http, plugin_wasm, wait_for};

use super::metrics_catalogue::{Exposition, Sample, plugin_built};

/// The collectors compared, and nothing else (a shorter node_exporter scrape, a tighter
/// bracket).
const COLLECTORS: [&str; 8] = [
    "netdev",
    "diskstats",
    "vmstat",
    "netstat",
    "sockstat",
    "loadavg",
    "filesystem",
    "pressure",
];

struct NodeExporter {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeExporter {
    fn start() -> NodeExporter {
        let mut command = Command::new("prometheus-node-exporter");
        command
            .arg("--web.listen-address=127.0.0.1:0")
            .arg("--collector.disable-defaults");
        for collector in COLLECTORS {
            command.arg(format!("--collector.{collector}"));
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node_exporter (Debian package prometheus-node-exporter) must be installed");
        let port = kpulse_integration_tests::wait_listening(
            &mut child,
            Duration::from_secs(30),
            "node_exporter",
            String::new,
        );
        let ne = NodeExporter {
            child,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        };
        wait_for(Duration::from_secs(30), "node_exporter to answer", || {
            http(ne.addr, "GET", "/metrics", &[])
                .ok()
                .filter(|r| r.status == 200)
        });
        ne
    }

    fn scrape(&self) -> Exposition {
        let response = http(self.addr, "GET", "/metrics", &[]).unwrap();
        assert_eq!(response.status, 200);
        Exposition::parse(&response.body)
    }
}

/// The three reads of one comparison.
struct Bracket {
    before: Exposition,
    agent: Exposition,
    after: Exposition,
}

#[derive(Clone, Copy)]
enum Kind {
    /// Only grows: the agent's value lies between node_exporter's two.
    Counter,
    /// Moves both ways: within node_exporter's range widened by its movement and `slack`.
    Gauge { slack: f64 },
}

/// One comparison: node_exporter's series `ne` vs the agent's `ours`, `ours = scale * ne`.
struct Check<'a> {
    what: String,
    ne: &'a str,
    ne_labels: Vec<(&'a str, String)>,
    ours: String,
    our_labels: Vec<(&'a str, String)>,
    kind: Kind,
    scale: f64,
}

impl Bracket {
    /// `None` when either side lacks the series; `Err` on a mismatch.
    fn check(&self, c: &Check<'_>) -> Option<Result<(), String>> {
        fn labels<'a>(l: &'a [(&str, String)]) -> Vec<(&'a str, &'a str)> {
            l.iter().map(|(k, v)| (*k, v.as_str())).collect()
        }
        let before = self.before.value(c.ne, &labels(&c.ne_labels))? * c.scale;
        let after = self.after.value(c.ne, &labels(&c.ne_labels))? * c.scale;
        let ours = self.agent.value(&c.ours, &labels(&c.our_labels))?;
        let (lo, hi) = match c.kind {
            Kind::Counter => (before, after),
            Kind::Gauge { slack } => {
                let moved = (after - before).abs();
                (
                    before.min(after) - moved - slack,
                    before.max(after) + moved + slack,
                )
            }
        };
        // Floats printed by two encoders: allow the last digit.
        let eps = hi.abs().max(1.0) * 1e-9;
        Some(if lo - eps <= ours && ours <= hi + eps {
            Ok(())
        } else {
            Err(format!(
                "{}: kpulse {} = {ours}, node_exporter {} {before} .. {after}",
                c.what, c.ours, c.ne
            ))
        })
    }
}

fn agent_with(plugins: &[&str]) -> Agent {
    let wasm: Vec<_> = plugins.iter().map(|p| plugin_wasm(p)).collect();
    // Host level only: containers of other tests would add nothing compared here.
    let agent = Agent::start("vs-node-exporter", &wasm, "[containers]\nenabled = false\n");
    for plugin in plugins {
        agent.wait_state(plugin, "running", Duration::from_secs(30));
    }
    wait_for(Duration::from_secs(30), "every plugin's samples", || {
        let text = agent.metrics();
        plugins
            .iter()
            .all(|p| {
                text.contains(&format!(
                    "kpulse_scrape_collector_success{{collector=\"{p}\"}} 1"
                ))
            })
            .then_some(())
    });
    agent
}

/// The label values of `name` on node_exporter's side.
fn values_of<'a>(e: &'a Exposition, name: &'a str, label: &'a str) -> Vec<String> {
    let mut out: Vec<String> = e
        .of(name)
        .filter_map(|s: &Sample| s.labels.get(label).cloned())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[test]
fn host_families_match_node_exporter() {
    let mut plugins = vec![
        "netdev",
        "diskio",
        "memory_vmstat",
        "netstat",
        "sockstat",
        "loadavg",
    ];
    let mut skipped = Vec::new();
    for optional in ["filesystem", "pressure"] {
        if plugin_built(optional) {
            plugins.push(optional);
        } else {
            skipped.push(optional);
        }
    }
    for plugin in &skipped {
        println!(
            "SKIP {plugin}: target/plugins/{plugin}.wasm is not built yet, node_exporter's {plugin} collector is not compared"
        );
    }
    let ne = NodeExporter::start();
    let agent = agent_with(&plugins);
    let bracket = Bracket {
        before: ne.scrape(),
        agent: Exposition::parse(&agent.metrics()),
        after: ne.scrape(),
    };
    let ne_names: Vec<String> = bracket
        .before
        .names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut checks: Vec<Check<'_>> = Vec::new();
    let device = |d: &str| vec![("device", d.to_owned())];

    // netdev: node_exporter's default device filter is none; compare every device.
    for dev in values_of(
        &bracket.before,
        "node_network_receive_bytes_total",
        "device",
    ) {
        for (ne_name, ours) in [
            (
                "node_network_receive_bytes_total",
                "netdev_receive_bytes_total",
            ),
            (
                "node_network_receive_packets_total",
                "netdev_receive_packets_total",
            ),
            (
                "node_network_transmit_bytes_total",
                "netdev_transmit_bytes_total",
            ),
            (
                "node_network_transmit_packets_total",
                "netdev_transmit_packets_total",
            ),
        ] {
            checks.push(Check {
                what: format!("netdev {dev}"),
                ne: ne_name,
                ne_labels: device(&dev),
                ours: format!("kpulse_{ours}"),
                our_labels: device(&dev),
                kind: Kind::Counter,
                scale: 1.0,
            });
        }
    }
    // diskstats: node_exporter leaves out partitions, loop and ram devices by default.
    for dev in values_of(&bracket.before, "node_disk_reads_completed_total", "device") {
        for (ne_name, ours) in [
            (
                "node_disk_reads_completed_total",
                "diskio_read_requests_total",
            ),
            (
                "node_disk_writes_completed_total",
                "diskio_write_requests_total",
            ),
            ("node_disk_read_bytes_total", "diskio_read_bytes_total"),
            (
                "node_disk_written_bytes_total",
                "diskio_written_bytes_total",
            ),
        ] {
            checks.push(Check {
                what: format!("diskstats {dev}"),
                ne: ne_name,
                ne_labels: device(&dev),
                ours: format!("kpulse_{ours}"),
                our_labels: device(&dev),
                kind: Kind::Counter,
                scale: 1.0,
            });
        }
    }
    // vmstat, netstat, sockstat: node_exporter's `node_<collector>_<key>` against ours.
    for ne_name in &ne_names {
        let (ours, kind) = if let Some(key) = ne_name.strip_prefix("node_vmstat_") {
            // node_exporter's default keys (pgpg*, pswp*, pg*fault, oom_kill) only grow.
            (format!("kpulse_memory_vmstat_{key}"), Kind::Counter)
        } else if let Some(key) = ne_name.strip_prefix("node_netstat_") {
            if !(key.starts_with("Tcp_") || key.starts_with("TcpExt_")) {
                continue;
            }
            let kind = if key == "Tcp_CurrEstab" {
                // The connections of the scrapes themselves come and go.
                Kind::Gauge { slack: 4.0 }
            } else {
                Kind::Counter
            };
            (format!("kpulse_netstat_{key}"), kind)
        } else if let Some(key) = ne_name.strip_prefix("node_sockstat_") {
            if key.starts_with("TCP6_")
                || key.starts_with("UDP6_")
                || key.starts_with("RAW6_")
                || key.starts_with("FRAG6_")
                || key.starts_with("UDPLITE6_")
            {
                // /proc/net/sockstat6: not HUATUO's sockstat.
                continue;
            }
            // Sockets of the scrapes themselves (client and server side, TIME_WAIT after
            // close) and their buffer pages come and go between the reads.
            let slack = if key.contains("mem") {
                16.0 * 4096.0
            } else {
                8.0
            };
            (format!("kpulse_sockstat_{key}"), Kind::Gauge { slack })
        } else {
            continue;
        };
        checks.push(Check {
            what: ne_name.clone(),
            ne: ne_name,
            ne_labels: Vec::new(),
            ours,
            our_labels: Vec::new(),
            kind,
            scale: 1.0,
        });
    }
    for n in ["1", "5", "15"] {
        checks.push(Check {
            what: format!("loadavg {n}"),
            ne: match n {
                "1" => "node_load1",
                "5" => "node_load5",
                _ => "node_load15",
            },
            ne_labels: Vec::new(),
            ours: format!("kpulse_loadavg_load{n}"),
            our_labels: Vec::new(),
            kind: Kind::Gauge { slack: 0.0 },
            scale: 1.0,
        });
    }

    let mut compared: BTreeMap<&str, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut one_sided = Vec::new();
    for check in &checks {
        let family = check
            .ours
            .trim_start_matches("kpulse_")
            .split('_')
            .next()
            .unwrap();
        match bracket.check(check) {
            Some(Ok(())) => *compared.entry(family).or_default() += 1,
            Some(Err(err)) => failures.push(err),
            None => one_sided.push(format!("{} / {}", check.ne, check.ours)),
        }
    }
    if plugins.contains(&"filesystem") {
        let (n, mut errs) = filesystem(&bracket);
        compared.insert("filesystem", n);
        failures.append(&mut errs);
    }
    if plugins.contains(&"pressure") {
        let (n, mut errs) = pressure(&bracket);
        compared.insert("pressure", n);
        failures.append(&mut errs);
    }
    println!("series compared with node_exporter, by family: {compared:?}");
    println!(
        "series only one side has (not compared): {}",
        one_sided.len()
    );
    for family in [
        "netdev", "diskio", "memory", "netstat", "sockstat", "loadavg",
    ] {
        assert!(
            compared.get(family).copied().unwrap_or(0) > 0,
            "nothing compared for {family}: one-sided {one_sided:?}"
        );
    }
    for family in ["filesystem", "pressure"] {
        if plugins.contains(&family) {
            assert!(compared[family] > 0, "nothing compared for {family}");
        }
    }
    assert!(
        failures.is_empty(),
        "kpulse vs node_exporter:\n{}",
        failures.join("\n")
    );
}

/// The agent's `filesystem` sample for `mountpoint` of the family whose name (after
/// `kpulse_filesystem_`) satisfies `pick`.
fn our_filesystem(e: &Exposition, ne_name: &str, mountpoint: &str, pick: &NamePick) -> Option<f64> {
    // node_exporter's own name under our prefix first, else what the name says.
    let same = format!("kpulse_{}", ne_name.trim_start_matches("node_"));
    if let Some(v) = e.value(&same, &[("mountpoint", mountpoint)]) {
        return Some(v);
    }
    e.samples
        .iter()
        .filter(|s| s.name.strip_prefix("kpulse_filesystem_").is_some_and(pick))
        .find(|s| s.labels.values().any(|v| v == mountpoint))
        .map(|s| s.value)
}

/// Whether a family name (after `kpulse_filesystem_`) says what a node_exporter one does.
type NamePick = dyn Fn(&str) -> bool;

/// node_exporter's `node_filesystem_*` per mount point against the plugin's families, matched
/// by what the name says (size, free, available, files, files free).
fn filesystem(b: &Bracket) -> (usize, Vec<String>) {
    let mut errs = Vec::new();
    let mut n = 0;
    let families: [(&str, &NamePick); 5] = [
        ("node_filesystem_size_bytes", &|n| n.contains("size")),
        ("node_filesystem_avail_bytes", &|n| n.contains("avail")),
        ("node_filesystem_free_bytes", &|n| {
            n.contains("free") && !n.contains("files") && !n.contains("inode")
        }),
        ("node_filesystem_files", &|n| {
            (n.starts_with("files") || n.starts_with("inodes")) && !n.contains("free")
        }),
        ("node_filesystem_files_free", &|n| {
            (n.contains("files") || n.contains("inodes")) && n.contains("free")
        }),
    ];
    for mountpoint in values_of(&b.before, "node_filesystem_size_bytes", "mountpoint") {
        for (ne_name, pick) in &families {
            let want = [("mountpoint", mountpoint.as_str())];
            let (Some(before), Some(after)) = (
                b.before.value(ne_name, &want),
                b.after.value(ne_name, &want),
            ) else {
                continue;
            };
            let Some(ours) = our_filesystem(&b.agent, ne_name, &mountpoint, pick) else {
                continue;
            };
            let moved = (after - before).abs();
            // Free space moves with other tests' writes: within the movement, and a block.
            let slack = moved + 4096.0;
            if before.min(after) - slack <= ours && ours <= before.max(after) + slack {
                n += 1;
            } else {
                errs.push(format!(
                    "filesystem {mountpoint} {ne_name}: kpulse {ours}, node_exporter {before} .. {after}"
                ));
            }
        }
    }
    if n == 0 {
        let ours: Vec<&str> = b
            .agent
            .names()
            .into_iter()
            .filter(|n| n.starts_with("kpulse_filesystem_"))
            .collect();
        errs.push(format!(
            "no filesystem series matched node_exporter's; the plugin exposes {ours:?}"
        ));
    }
    (n, errs)
}

/// node_exporter's PSI totals (seconds) against the plugin's: a `pressure_*` series whose name
/// and label values mention the resource and `some`/`full` (HUATUO's style puts them in the
/// name, node_exporter's in `waiting`/`stalled`), in seconds or microseconds by its name.
fn pressure(b: &Bracket) -> (usize, Vec<String>) {
    let mut errs = Vec::new();
    let mut n = 0;
    for (ne_name, resource, level) in [
        ("node_pressure_cpu_waiting_seconds_total", "cpu", "some"),
        (
            "node_pressure_memory_waiting_seconds_total",
            "memory",
            "some",
        ),
        (
            "node_pressure_memory_stalled_seconds_total",
            "memory",
            "full",
        ),
        ("node_pressure_io_waiting_seconds_total", "io", "some"),
        ("node_pressure_io_stalled_seconds_total", "io", "full"),
    ] {
        let (Some(before), Some(after)) =
            (b.before.value(ne_name, &[]), b.after.value(ne_name, &[]))
        else {
            continue;
        };
        let same = format!("kpulse_{}", ne_name.trim_start_matches("node_"));
        let candidate = b.agent.of(&same).next().or_else(|| {
            b.agent.samples.iter().find(|s| {
                let Some(rest) = s.name.strip_prefix("kpulse_pressure_") else {
                    return false;
                };
                if rest.contains("container") || !s.name.ends_with("_total") {
                    return false;
                }
                let text = format!(
                    "{rest} {}",
                    s.labels.values().cloned().collect::<Vec<_>>().join(" ")
                );
                let words: Vec<&str> = text.split(|c: char| !c.is_ascii_alphanumeric()).collect();
                // node_exporter's words for some/full.
                let alias = if level == "some" {
                    "waiting"
                } else {
                    "stalled"
                };
                words.contains(&resource) && (words.contains(&level) || words.contains(&alias))
            })
        });
        let Some(sample) = candidate else {
            continue;
        };
        let scale = if sample.name.contains("microseconds") || sample.name.contains("_us_") {
            1e6
        } else {
            1.0
        };
        // node_exporter prints seconds with microsecond precision.
        let (lo, hi) = (before * scale - 1e-6 * scale, after * scale + 1e-6 * scale);
        if lo <= sample.value && sample.value <= hi {
            n += 1;
        } else {
            errs.push(format!(
                "pressure {resource} {level}: kpulse {} = {}, node_exporter {ne_name} {before} .. {after} (scale {scale})",
                sample.name, sample.value
            ));
        }
    }
    if n == 0 {
        let ours: Vec<&str> = b
            .agent
            .names()
            .into_iter()
            .filter(|n| n.starts_with("kpulse_pressure_"))
            .collect();
        errs.push(format!(
            "no pressure series matched node_exporter's; the plugin exposes {ours:?}"
        ));
    }
    (n, errs)
}
