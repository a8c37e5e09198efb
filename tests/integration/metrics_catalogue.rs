//! The whole metric catalogue: every component in `target/plugins` loaded into one agent, in
//! both prefixes (`kpulse`, `huatuo_bamai`), with a real `ctr` container of the test
//! containerd so that the container-level families exist too.
//!
//! - `docs/metrics.md` is generated from what the agent exposes and what each plugin declares
//!   in `/plugins`; the test fails with a diff when the file and `/metrics` disagree
//!   (`KPULSE_WRITE_METRICS_DOC=1` rewrites it: `scripts/metrics-doc.sh`).
//! - `promtool check metrics` on the full output, text and OpenMetrics, both prefixes.
//! - A real Prometheus scrapes the HUATUO-mode agent, and every name of HUATUO's dashboards
//!   (`huatuo-dashboard-metrics.txt`, less `stale` and `custom-kernel`) returns a series, or is
//!   in [`NOT_ON_THIS_MACHINE`] with the reason.
//!
//! Generic over the plugin directory: a plugin that lands in `target/plugins` is in the
//! catalogue, the document and the checks without a change here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use kpulse_integration_tests::containers::{CtrContainer, Runtimes};
use kpulse_integration_tests::{Agent, http, root, scratch_dir, wait_for};

const DASHBOARD_NAMES: &str = include_str!("../fixtures/huatuo-dashboard-metrics.txt");
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0";
const NS: &str = "kptest";

/// Every built-in component in `target/plugins`, sorted.
pub(super) fn builtin_plugins() -> Vec<PathBuf> {
    let mut plugins: Vec<PathBuf> = std::fs::read_dir(root().join("target/plugins"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .collect();
    plugins.sort();
    plugins
}

/// Whether `target/plugins/<name>.wasm` is built.
pub(super) fn plugin_built(name: &str) -> bool {
    builtin_plugins()
        .iter()
        .any(|p| p.file_stem().is_some_and(|s| s == name))
}

/// One sample of an exposition.
#[derive(Debug, Clone)]
pub(super) struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition: `# TYPE`/`# HELP` by family and every sample.
#[derive(Debug, Default)]
pub(super) struct Exposition {
    pub types: BTreeMap<String, String>,
    pub help: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    pub(super) fn parse(text: &str) -> Exposition {
        let mut out = Exposition::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                out.types.insert(name.to_owned(), kind.to_owned());
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                out.help.insert(name.to_owned(), help.to_owned());
            } else if !line.starts_with('#') {
                out.samples.push(parse_sample(line));
            }
        }
        out
    }

    /// The value of `name` whose labels include every `(key, value)` of `want`.
    pub(super) fn value(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && want
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// The samples of `name`.
    pub(super) fn of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The sample names (what a PromQL selector matches).
    pub(super) fn names(&self) -> BTreeSet<&str> {
        self.samples.iter().map(|s| s.name.as_str()).collect()
    }
}

/// `name{k="v",...} value`, with the exposition's escapes (`\\`, `\"`, `\n`) in values.
fn parse_sample(line: &str) -> Sample {
    let (series, value) = line.rsplit_once(' ').unwrap();
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
    };
    let Some((name, rest)) = series.split_once('{') else {
        return Sample {
            name: series.to_owned(),
            labels: BTreeMap::new(),
            value,
        };
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() || key == "}" {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "{line}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

/// An agent with the whole catalogue, `prefix`, and the test runtimes' `ctr` container
/// `container` (so the container-level families have a sample).
pub(super) fn catalogue_agent(label: &str, prefix: &str, runtimes: &Runtimes) -> Agent {
    // cpuidle's container changes (`*_percent_delta`) need two complete intervals: 2 s, not
    // HUATUO's 10, so that they show within the scrapes below.
    let config = format!(
        "[metrics]\nprefix = \"{prefix}\"\n[plugins.cpuidle]\ninterval = 2\n{}",
        runtimes.agent_config("")
    );
    let agent = Agent::start(label, &builtin_plugins(), &config);
    wait_settled(&agent, prefix);
    agent
}

/// Waits until every plugin left `starting`, and every running metric plugin answered two
/// scrapes more than a second apart (the families computed between two reads, such as
/// `diskio_disk_iowait_percent` or `cpu_util_*`, need the second).
pub(super) fn wait_settled(agent: &Agent, prefix: &str) {
    let expected = builtin_plugins().len();
    let plugins = wait_for(Duration::from_secs(300), "every plugin to start", || {
        let plugins = agent.plugins();
        (plugins.len() == expected && plugins.iter().all(|p| p["state"] != "starting"))
            .then_some(plugins)
    });
    let metric: Vec<String> = plugins
        .iter()
        .filter(|p| {
            p["state"] == "running"
                && p["kinds"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "metric"))
        })
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    // Every metric plugin answered at least once in each of two rounds more than a second
    // apart; not necessarily in the same scrape (on a loaded machine one may miss a deadline).
    let round = |what: &str| {
        let mut answered: BTreeSet<&str> = BTreeSet::new();
        let mut reported = Vec::new();
        wait_for(Duration::from_secs(120), what, || {
            // A plugin that stopped running meanwhile (failed, quarantined) cannot answer:
            // reported, and left out of the wait.
            let running: BTreeSet<String> = agent
                .plugins()
                .iter()
                .filter(|p| p["state"] == "running")
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect();
            let text = agent.metrics();
            answered.extend(metric.iter().map(String::as_str).filter(|name| {
                text.contains(&format!(
                    "{prefix}_scrape_collector_success{{collector=\"{name}\"}} 1"
                ))
            }));
            let pending: Vec<&String> = metric
                .iter()
                .filter(|n| !answered.contains(n.as_str()) && running.contains(*n))
                .collect();
            if pending != reported {
                // Shown when the wait times out: which plugins never answered.
                eprintln!("{what}: waiting for {pending:?}");
                reported.clone_from(&pending);
            }
            pending.is_empty().then_some(())
        });
    };
    round("every metric plugin's samples");
    std::thread::sleep(Duration::from_millis(1100));
    round("a second round of samples");
    for p in agent
        .plugins()
        .iter()
        .filter(|p| metric.iter().any(|m| p["name"] == m.as_str()) && p["state"] != "running")
    {
        println!(
            "plugin {} is {} after starting: {}",
            p["name"], p["state"], p["last_error"]
        );
    }
}

/// A container in its own network namespace with a little TCP traffic over its `lo`, so its
/// network families have something to count.
pub(super) fn start_container(runtimes: &Runtimes, id: &str) -> CtrContainer {
    let script = "while :; do nc -l -p 7000 -e cat; done & \
                  while :; do echo x | nc 127.0.0.1 7000 >/dev/null; sleep 1; done";
    let container = runtimes.ctr_run(NS, id, &[("app", "catalogue")], &[], script);
    wait_for(Duration::from_secs(10), "the container's pid", || {
        Some(container.pid()).filter(|p| *p != 0)
    });
    container
}

// ---------------------------------------------------------------------------------------
// docs/metrics.md

/// What the document says about one family, from both prefixes' expositions.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    /// Without prefix and without the `_total` the exposition adds to counters.
    base: String,
    kind: String,
    labels: String,
    plugin: String,
    help: String,
}

/// HUATUO's container label set (the host adds it to every container-level sample).
const CONTAINER_LABELS: [&str; 5] = [
    "container_host",
    "container_name",
    "container_type",
    "container_level",
    "container_hostnamespace",
];

fn rows(exposition: &Exposition, prefix: &str, plugins: &[String]) -> BTreeMap<String, Row> {
    let mut out: BTreeMap<String, Row> = BTreeMap::new();
    let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (family, kind) in &exposition.types {
        let base = family
            .strip_prefix(&format!("{prefix}_"))
            .unwrap_or_else(|| panic!("{family} lacks the prefix {prefix}"));
        let base = match kind.as_str() {
            "counter" => base.strip_suffix("_total").unwrap_or(base),
            _ => base,
        };
        // The longest plugin name the family starts with; the agent's own families otherwise.
        let plugin = plugins
            .iter()
            .filter(|p| base == p.as_str() || base.starts_with(&format!("{p}_")))
            .max_by_key(|p| p.len())
            .map_or("(agent)".to_owned(), Clone::clone);
        out.insert(
            base.to_owned(),
            Row {
                base: base.to_owned(),
                kind: kind.clone(),
                labels: String::new(),
                plugin,
                // prometheus-client ends every HELP with a period, also after one.
                help: exposition
                    .help
                    .get(family)
                    .map(|h| h.replace("..", "."))
                    .unwrap_or_default(),
            },
        );
        // A counter's samples carry `_total`, a histogram's `_bucket`, `_sum`, `_count`.
        let sample_names: Vec<String> = ["", "_total", "_bucket", "_sum", "_count"]
            .iter()
            .map(|suffix| format!("{family}{suffix}"))
            .collect();
        let keys = labels.entry(base.to_owned()).or_default();
        for sample in exposition
            .samples
            .iter()
            .filter(|s| sample_names.contains(&s.name))
        {
            keys.extend(sample.labels.keys().cloned());
        }
    }
    for (base, keys) in labels {
        let container = CONTAINER_LABELS.iter().all(|k| keys.contains(*k));
        let mut shown: Vec<String> = keys
            .into_iter()
            .filter(|k| k != "region" && k != "host" && k != "le")
            .filter(|k| !CONTAINER_LABELS.contains(&k.as_str()))
            .filter(|k| !k.starts_with("container_label_"))
            .map(|k| format!("`{k}`"))
            .collect();
        if container {
            shown.insert(0, "container labels".to_owned());
        }
        out.get_mut(&base).unwrap().labels = shown.join(", ");
    }
    out
}

/// The family rows of a written document, by family name without prefix and `_total`,
/// with the plugin of their section.
fn documented_rows(doc: &str) -> BTreeMap<String, Row> {
    let mut out = BTreeMap::new();
    let mut plugin = String::new();
    for line in doc.lines() {
        if let Some(heading) = line.strip_prefix("### ") {
            plugin = match heading.trim_matches('`') {
                "The agent's own families" => "(agent)".to_owned(),
                name => name.to_owned(),
            };
            continue;
        }
        if !line.starts_with("| `kpulse_") {
            continue;
        }
        // Cells split on `|` not escaped by md_cell.
        let cells: Vec<String> = line
            .replace("\\|", "\u{1}")
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().replace('\u{1}', "|"))
            .collect();
        let [name, _, kind, labels, help] = &cells[..] else {
            continue;
        };
        let name = name.trim_matches('`').trim_start_matches("kpulse_");
        let base = match kind.as_str() {
            "counter" => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        out.insert(
            base.to_owned(),
            Row {
                base: base.to_owned(),
                kind: kind.clone(),
                labels: labels.clone(),
                plugin: plugin.clone(),
                help: help.clone(),
            },
        );
    }
    out
}

fn md_cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The document, from the two prefixes' expositions and `/plugins`.
fn render_doc(
    kpulse: &Exposition,
    huatuo: &Exposition,
    plugins: &[serde_json::Value],
    documented: &BTreeMap<String, Row>,
) -> String {
    let names: Vec<String> = plugins
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    let ours = rows(kpulse, "kpulse", &names);
    let theirs = rows(huatuo, "huatuo_bamai", &names);
    // The prefix is the only difference: a family seen under either is in the catalogue.
    // HUATUO's bare-named counters (`runqlat_latency`) are untyped under its prefix.
    let untyped_in_huatuo: BTreeSet<String> = theirs
        .values()
        .filter(|row| row.kind == "untyped")
        .map(|row| row.base.clone())
        .collect();
    let mut all = theirs;
    all.extend(ours);
    // Families that appear only when something happens (a slow block request, an XFS mount,
    // a container's first reclaim) keep their documented row on a run that did not see them,
    // as long as their plugin is still loaded.
    for (base, row) in documented {
        if row.plugin == "(agent)" || names.contains(&row.plugin) {
            all.entry(base.clone()).or_insert_with(|| row.clone());
        }
    }
    let mut doc = String::from(HEADER);
    doc.push_str("\n## Plugins\n\n| plugin | kinds | state here | reads (capabilities) | summary |\n|---|---|---|---|---|\n");
    for p in plugins {
        let list = |v: &serde_json::Value| {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str())
                        .map(|x| format!("`{x}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        let state = p["state"].as_str().unwrap_or_default();
        let state = match p["last_error"].as_str() {
            Some(err) if state != "running" => format!("{state}: {err}"),
            _ => state.to_owned(),
        };
        doc.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            p["name"].as_str().unwrap_or_default(),
            list(&p["kinds"]).replace('`', ""),
            md_cell(&state),
            list(&p["capabilities"]),
            md_cell(p["summary"].as_str().unwrap_or_default()),
        ));
    }
    let mut by_plugin: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for row in all.values() {
        by_plugin.entry(row.plugin.as_str()).or_default().push(row);
    }
    doc.push_str("\n## Families\n");
    for (plugin, rows) in by_plugin {
        doc.push_str(&format!(
            "\n### {}\n\n| default name | `huatuo_bamai` name | type | labels | help |\n|---|---|---|---|---|\n",
            if plugin == "(agent)" {
                "The agent's own families".to_owned()
            } else {
                format!("`{plugin}`")
            }
        ));
        for row in rows {
            let suffix = if row.kind == "counter" { "_total" } else { "" };
            let huatuo_suffix = if untyped_in_huatuo.contains(&row.base) {
                ""
            } else {
                suffix
            };
            doc.push_str(&format!(
                "| `kpulse_{b}{suffix}` | `huatuo_bamai_{b}{huatuo_suffix}` | {} | {} | {} |\n",
                row.kind,
                row.labels,
                md_cell(&row.help),
                b = row.base,
            ));
        }
    }
    doc
}

const HEADER: &str = "\
# Metric families

<!-- Generated: do not edit by hand. `scripts/metrics-doc.sh` rewrites this file from a live
agent (the test `metrics_catalogue::docs_metrics_md_matches_the_exposition` with
`KPULSE_WRITE_METRICS_DOC=1`); the same test fails with a diff when this file and `/metrics`
disagree. -->

Every family the agent exposes with every component of `target/plugins` loaded and one
container running, as generated on the development VM (Debian 12, Linux 6.18, virtio disk and
NIC, cgroup v1). A family whose source this machine lacks (hardware, kernel feature, an XFS
mount) is not listed; its plugin shows `inactive` with the reason in the plugin table.

Naming: `<prefix>_<plugin>_<name>` for host-level samples and
`<prefix>_<plugin>_container_<name>` for container-level ones. The prefix is `kpulse` by
default and `huatuo_bamai` with `[metrics] prefix = \"huatuo_bamai\"`, which reproduces
HUATUO's names; the prefix is the only difference between the two columns. Counters end in
`_total` (the exposition adds it; in OpenMetrics the family is named without it and its
samples carry it). Field names copied from the kernel (`netstat_TcpExt_ListenDrops`,
`sockstat_TCP_inuse`) and HUATUO's units (`cpu_util_*` in percent, `*_latency` zone counts)
are kept as HUATUO has them under both prefixes: the default prefix does not yet rename them
to Prometheus conventions (snake_case, base units); the test
`metrics_catalogue::promtool_accepts_the_whole_catalogue_in_both_formats_and_prefixes` prints
the names promtool flags for that, by reason.

Labels: every host-level sample has `region` and `host`; \"container labels\" are HUATUO's
`region, container_host, container_name, container_type, container_level,
container_hostnamespace, host` plus the allow-listed `container_label_<name>`. Only the
other labels are listed. Source: the plugin table (its declared reads and capabilities).
";

/// Scrapes once a second until no new family showed for 12 s (at most 90 s), and returns
/// every scrape's text: families that exist only at some scrapes (a value computed over an
/// interval, a container's first reading) are in the catalogue too.
fn settled_scrapes(agent: &Agent) -> String {
    let started = std::time::Instant::now();
    let mut last_new = started;
    let mut seen = BTreeSet::new();
    let mut all = String::new();
    while last_new.elapsed() < Duration::from_secs(12)
        && started.elapsed() < Duration::from_secs(90)
    {
        let text = agent.metrics();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            if seen.insert(line.to_owned()) {
                last_new = std::time::Instant::now();
            }
        }
        all.push_str(&text);
        all.push('\n');
        std::thread::sleep(Duration::from_secs(1));
    }
    all
}

fn doc_path() -> PathBuf {
    root().join("docs/metrics.md")
}

#[test]
fn docs_metrics_md_matches_the_exposition() {
    let runtimes = Runtimes::get();
    let _container = start_container(&runtimes, &format!("catalogue-doc-{}", std::process::id()));
    let kpulse = catalogue_agent("catalogue-doc", "kpulse", &runtimes);
    let huatuo = catalogue_agent("catalogue-doc-huatuo", "huatuo_bamai", &runtimes);
    let (kpulse_text, huatuo_text) = std::thread::scope(|scope| {
        let other = scope.spawn(|| settled_scrapes(&huatuo));
        (settled_scrapes(&kpulse), other.join().unwrap())
    });
    let (merged_kpulse, merged_huatuo) = (
        Exposition::parse(&kpulse_text),
        Exposition::parse(&huatuo_text),
    );
    let written = std::fs::read_to_string(doc_path()).unwrap_or_default();
    let documented = documented_rows(&written);
    let plugins = kpulse.plugins();
    let seen = render_doc(&merged_kpulse, &merged_huatuo, &plugins, &BTreeMap::new());
    if std::env::var_os("KPULSE_WRITE_METRICS_DOC").is_some() {
        let doc = render_doc(&merged_kpulse, &merged_huatuo, &plugins, &documented);
        std::fs::write(doc_path(), &doc).unwrap();
        println!("wrote {}", doc_path().display());
        return;
    }
    // Names and types are what may not drift: a family exposed here must be documented. A
    // documented family not seen in this run is fine while its plugin is loaded (it appears
    // only when what it counts happens); one of a plugin that is gone is stale.
    let seen = documented_rows(&seen);
    let loaded: BTreeSet<String> = plugins
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<String> = seen
        .values()
        .filter(|row| {
            documented
                .get(&row.base)
                .is_none_or(|doc| doc.kind != row.kind)
        })
        .map(|row| format!("+ {} ({}, {})", row.base, row.kind, row.plugin))
        .collect();
    let stale: Vec<String> = documented
        .values()
        .filter(|row| row.plugin != "(agent)" && !loaded.contains(&row.plugin))
        .map(|row| format!("- {} ({}, {})", row.base, row.kind, row.plugin))
        .collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/metrics.md disagrees with /metrics (run scripts/metrics-doc.sh):\n\
         exposed but not documented:\n{}\ndocumented for a plugin that is gone:\n{}",
        missing.join("\n"),
        stale.join("\n"),
    );
}

// ---------------------------------------------------------------------------------------
// promtool

/// `promtool check metrics` findings; panics if promtool cannot parse the input.
fn promtool_findings(exposition: &str) -> Vec<String> {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    let mut stdin = child.stdin.take().unwrap();
    // promtool 2.42 parses the classic text format only, whose name for OpenMetrics'
    // `unknown` type is `untyped` (HUATUO's bare-named counters are exposed so).
    let input: String = exposition
        .lines()
        .map(|line| match line.strip_suffix(" unknown") {
            Some(head) if line.starts_with("# TYPE ") => format!("{head} untyped\n"),
            _ => format!("{line}\n"),
        })
        .collect();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().unwrap();
    // promtool stops reading at a parse error; the status below then says why.
    let written = writer.join().unwrap();
    assert!(
        written.is_ok() || output.status.code() != Some(0),
        "writing to promtool failed: {written:?}"
    );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Exit status 3 is "lint findings"; anything else non-zero is a parse error.
    assert!(
        output.status.success() || output.status.code() == Some(3),
        "promtool could not parse /metrics ({}): {report}",
        output.status
    );
    report
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Lint findings accepted for names HUATUO chose, with the reason. Checked against the name
/// without prefix, so that the same names are accepted under both prefixes: the default
/// prefix keeps HUATUO's names (see docs/metrics.md), so these are findings there too.
fn huatuo_naming(base: &str, finding: &str) -> Option<&'static str> {
    if finding.contains("'snake_case' not 'camelCase'")
        && (base.starts_with("netstat_") || base.starts_with("sockstat_"))
    {
        return Some(
            "the kernel's /proc/net/{netstat,snmp,sockstat} field names, as HUATUO exposes them",
        );
    }
    if finding.contains("non-counter metrics should not have \"_total\" suffix")
        && ["arp_total", "cpu_util_total", "cpu_util_container_total"].contains(&base)
    {
        return Some("HUATUO's gauge names: the ARP table size and total CPU percent");
    }
    if finding.contains("should not contain abbreviated units")
        && base.starts_with("memory_vmstat_")
        && base.contains("_sec_")
    {
        return Some(
            "/proc/vmstat key nr_sec_page_table_pages: `sec` is \"secondary\", not seconds",
        );
    }
    None
}

/// promtool 2.42 lints with the 0.0.4 text parser: in OpenMetrics a counter family `x` has
/// its samples as `x_total`, which that parser sees as a family without HELP.
fn openmetrics_artifact(finding: &str, exposition: &Exposition) -> bool {
    let Some((name, rest)) = finding.split_once(' ') else {
        return false;
    };
    rest == "no help text"
        && name.strip_suffix("_total").is_some_and(|family| {
            exposition.types.get(family).map(String::as_str) == Some("counter")
        })
}

#[test]
fn promtool_accepts_the_whole_catalogue_in_both_formats_and_prefixes() {
    let runtimes = Runtimes::get();
    let _container = start_container(&runtimes, &format!("catalogue-lint-{}", std::process::id()));
    // (prefix, reason) -> names accepted for it.
    let mut accepted: BTreeMap<(&str, &'static str), Vec<String>> = BTreeMap::new();
    let mut failures = Vec::new();
    for prefix in ["kpulse", "huatuo_bamai"] {
        let agent = catalogue_agent(&format!("catalogue-lint-{prefix}"), prefix, &runtimes);
        let text = agent.metrics();
        let om = http(agent.addr, "GET", "/metrics", &[("Accept", OPENMETRICS)]).unwrap();
        assert!(
            om.headers
                .to_ascii_lowercase()
                .contains("application/openmetrics-text"),
            "{}",
            om.headers
        );
        assert!(
            om.body.trim_end().ends_with("# EOF"),
            "OpenMetrics must end with # EOF"
        );
        let parsed_om = Exposition::parse(&om.body);
        for (format, body) in [("text", &text), ("OpenMetrics", &om.body)] {
            for finding in promtool_findings(body) {
                let name = finding.split_whitespace().next().unwrap_or_default();
                let base = name.strip_prefix(&format!("{prefix}_")).unwrap_or(name);
                if let Some(reason) = huatuo_naming(base, &finding) {
                    accepted
                        .entry((prefix, reason))
                        .or_default()
                        .push(base.to_owned());
                } else if format == "OpenMetrics" && openmetrics_artifact(&finding, &parsed_om) {
                    continue;
                } else {
                    failures.push(format!("{prefix}, {format}: {finding}"));
                }
            }
        }
    }
    for ((prefix, reason), names) in &mut accepted {
        names.sort();
        names.dedup();
        let note = if *prefix == "kpulse" {
            " [NOT CONVENTIONAL YET: the default prefix keeps HUATUO's name]"
        } else {
            ""
        };
        println!(
            "{prefix}: {} names accepted ({reason}){note}: {}",
            names.len(),
            names.join(" ")
        );
    }
    assert!(
        failures.is_empty(),
        "promtool findings:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Prometheus and HUATUO's dashboards

/// Dashboard names this machine cannot have, with the reason. Everything else in
/// `huatuo-dashboard-metrics.txt` (less `stale`, `custom-kernel`) must return a series.
const NOT_ON_THIS_MACHINE: &[(&str, &str)] = &[
    (
        "huatuo_bamai_iolatency_blkdisk_freeze",
        "needs a kprobe on blk_mq_freeze_queue*: kprobes do not attach on this kernel (iolatency answers not-supported for it)",
    ),
    (
        "huatuo_bamai_iolatency_blkdisk_q2c",
        "only block requests of 20 ms or more are counted: a disk's series appear with its first slow request, none while the test ran",
    ),
    (
        "huatuo_bamai_iolatency_blkdisk_d2c",
        "only block requests of 20 ms or more are counted: a disk's series appear with its first slow request, none while the test ran",
    ),
    (
        "huatuo_bamai_iolatency_container_blkdisk_q2c",
        "only block requests of 20 ms or more are counted, per container: the test container does no I/O",
    ),
    (
        "huatuo_bamai_iolatency_container_blkdisk_d2c",
        "only block requests of 20 ms or more are counted, per container: the test container does no I/O",
    ),
    (
        "huatuo_bamai_memory_vmstat_container_pgsteal_direct",
        "cgroup v1 memory.stat has no pgsteal_* keys (cgroup v2 only); this machine runs v1 memory controllers",
    ),
    (
        "huatuo_bamai_memory_vmstat_container_pgsteal_kswapd",
        "cgroup v1 memory.stat has no pgsteal_* keys (cgroup v2 only); this machine runs v1 memory controllers",
    ),
    (
        "huatuo_bamai_sockstat_container_TCP_mem_bytes",
        "left out for containers as HUATUO does: socket memory is accounted host-wide, not per netns",
    ),
    (
        "huatuo_bamai_sockstat_container_UDP_mem_bytes",
        "left out for containers as HUATUO does: socket memory is accounted host-wide, not per netns",
    ),
];

/// Dashboard names of plugins that are not built yet: `(name prefix, plugin)`.
const BY_PLUGIN: &[(&str, &str)] = &[
    ("huatuo_bamai_runqlat_", "runqlat"),
    ("huatuo_bamai_iolatency_", "iolatency"),
    ("huatuo_bamai_netdev_qdisc_", "netdev_qdisc"),
    ("huatuo_bamai_xfs_", "xfs"),
    ("huatuo_bamai_memory_free_", "memory_free"),
    ("huatuo_bamai_memory_reclaim_", "memory_reclaim"),
    ("huatuo_bamai_netdev_dcb_", "netdev_dcb"),
    ("huatuo_bamai_netdev_rdma_", "netdev_rdma_link"),
    ("huatuo_bamai_pressure_", "pressure"),
    ("huatuo_bamai_filesystem_", "filesystem"),
];

/// Whether an XFS filesystem is mounted: `/sys/fs/xfs/<device>` besides the global `stats`.
fn xfs_mounted() -> bool {
    std::fs::read_dir("/sys/fs/xfs")
        .is_ok_and(|dir| dir.filter_map(Result::ok).any(|e| e.file_name() != "stats"))
}

/// The names the dashboards query that HUATUO still exports on a stock kernel.
fn dashboard_names() -> BTreeSet<&'static str> {
    DASHBOARD_NAMES
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| !l.contains("# stale") && !l.contains("# custom-kernel"))
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

/// Starts Prometheus scraping `target` every second; returns it and its API address.
pub(super) fn start_prometheus(
    target: std::net::SocketAddr,
) -> (std::process::Child, std::net::SocketAddr, PathBuf) {
    let dir = scratch_dir("catalogue-prometheus");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: kpulse\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let mut child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("prometheus (Debian package prometheus) must be installed");
    let log_path = dir.join("prometheus.log");
    let port = kpulse_integration_tests::wait_listening(
        &mut child,
        Duration::from_secs(60),
        "Prometheus",
        || std::fs::read_to_string(&log_path).unwrap_or_default(),
    );
    (
        child,
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        dir,
    )
}

/// The `data.result` of an instant query.
pub(super) fn query(server: std::net::SocketAddr, promql: &str) -> Option<Vec<serde_json::Value>> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let response = http(
        server,
        "GET",
        &format!("/api/v1/query?query={encoded}"),
        &[],
    )
    .ok()?;
    let json: serde_json::Value = serde_json::from_str(&response.body).ok()?;
    json["data"]["result"].as_array().cloned()
}

#[test]
fn prometheus_finds_every_dashboard_name_of_the_catalogue() {
    let runtimes = Runtimes::get();
    let _container = start_container(&runtimes, &format!("catalogue-prom-{}", std::process::id()));
    let agent = catalogue_agent("catalogue-prom", "huatuo_bamai", &runtimes);
    let (mut prometheus, server, dir) = start_prometheus(agent.addr);
    let result = std::panic::catch_unwind(|| {
        // A scrape that Prometheus accepted (OpenMetrics, its preferred format) and stored.
        wait_for(Duration::from_secs(60), "a successful scrape", || {
            let up = query(server, "up{job=\"kpulse\"}")?;
            (up.first()?["value"][1] == "1").then_some(())
        });
        let samples = query(server, "scrape_samples_scraped{job=\"kpulse\"}").unwrap();
        println!(
            "Prometheus stored {} samples per scrape",
            samples[0]["value"][1]
        );
        let exposed = Exposition::parse(&agent.metrics());
        let names = exposed.names();
        let mut missing = Vec::new();
        let mut explained = Vec::new();
        for name in dashboard_names() {
            // Ask Prometheus (what the dashboards do), once the name is in /metrics at all.
            let found = names.contains(name)
                && wait_for(Duration::from_secs(10), name, || {
                    query(server, name).filter(|r| !r.is_empty()).map(|_| true)
                });
            if found {
                continue;
            }
            let plugin = BY_PLUGIN
                .iter()
                .find(|(prefix, _)| name.starts_with(prefix))
                .map(|(_, p)| *p);
            let reason = match plugin {
                Some(plugin) if !plugin_built(plugin) => Some(format!(
                    "plugin {plugin} not built yet (no target/plugins/{plugin}.wasm)"
                )),
                Some(plugin)
                    if agent
                        .plugin(plugin)
                        .is_some_and(|p| p["state"] == "inactive") =>
                {
                    Some(format!(
                        "plugin {plugin} inactive here: {}",
                        agent.plugin(plugin).unwrap()["last_error"]
                    ))
                }
                Some("xfs") if !xfs_mounted() => Some(
                    "no XFS filesystem mounted on this machine (no device in /sys/fs/xfs)"
                        .to_owned(),
                ),
                _ => NOT_ON_THIS_MACHINE
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, why)| (*why).to_owned()),
            };
            match reason {
                Some(reason) => explained.push(format!("{name}: {reason}")),
                None => {
                    // The plugin whose family it is (longest name), and how it is doing.
                    let owner = agent
                        .plugins()
                        .into_iter()
                        .filter(|p| {
                            p["name"].as_str().is_some_and(|n| {
                                name.starts_with(&format!("huatuo_bamai_{n}_"))
                                    || name == format!("huatuo_bamai_{n}")
                            })
                        })
                        .max_by_key(|p| p["name"].as_str().map_or(0, str::len));
                    missing.push(match owner {
                        Some(p) => format!(
                            "{name} (plugin {} {}: {})",
                            p["name"], p["state"], p["last_error"]
                        ),
                        None => format!("{name} (no plugin of that name loaded)"),
                    });
                }
            }
        }
        (missing, explained)
    });
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let (missing, explained) = result.unwrap_or_else(|_| {
        panic!(
            "{}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        )
    });
    println!(
        "dashboard names not exported on this machine ({}):",
        explained.len()
    );
    for line in &explained {
        println!("  {line}");
    }
    assert!(
        missing.is_empty(),
        "dashboard names without a series in Prometheus and without a reason: {missing:?}"
    );
}
