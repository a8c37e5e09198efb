//! `kpulse-bench catalogue`: `/metrics` with every component of `target/plugins` loaded
//! against node_exporter with its default collectors, side by side in one run (wall latency,
//! CPU per scrape and per series from /proc/PID/stat), and one `update` of each plugin, as the
//! host measures it (`scrape_collector_duration_seconds`), in the full scrape and alone.
//! A module of the `kpulse-bench` binary (`src/bin/kpulse-bench.rs`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use kpulse_integration_tests::{http, root};

use super::{builtin_plugins, ms, node_exporter, proc_cpu_seconds, start_settled, stats};

/// One scrape's wall time, body and series count.
fn timed_scrape(addr: SocketAddr) -> (Duration, String, usize) {
    let started = Instant::now();
    let response = http(addr, "GET", "/metrics", &[]).unwrap();
    let wall = started.elapsed();
    assert_eq!(response.status, 200);
    let series = response
        .body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    (wall, response.body, series)
}

/// `collector -> seconds` of `<prefix>_scrape_collector_duration_seconds` in a body: the
/// host's own measurement of each plugin's `update` in that scrape.
fn update_seconds(body: &str) -> Vec<(String, f64)> {
    body.lines()
        .filter_map(|l| l.strip_prefix("kpulse_scrape_collector_duration_seconds{collector=\""))
        .filter_map(|rest| {
            let (name, value) = rest.split_once("\"} ")?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// The whole metric catalogue (every component in `target/plugins`) against node_exporter
/// with its default collectors: 200 scrapes of each, interleaved, CPU from /proc/PID/stat.
pub fn catalogue() {
    const SCRAPES: usize = 200;
    let builtins = builtin_plugins();
    let agent = start_settled("bench-catalogue", &builtins);
    let Some((mut exporter, ne_addr)) = node_exporter() else {
        println!("\n## catalogue: node_exporter (prometheus-node-exporter) is not installed");
        return;
    };
    for _ in 0..20 {
        timed_scrape(agent.addr);
        timed_scrape(ne_addr);
    }
    let (agent_pid, ne_pid) = (agent.child.id(), exporter.id());
    let (agent_cpu0, ne_cpu0) = (proc_cpu_seconds(agent_pid), proc_cpu_seconds(ne_pid));
    let started = Instant::now();
    let (mut agent_wall, mut ne_wall) = (Vec::new(), Vec::new());
    let (mut agent_series, mut ne_series) = (0, 0);
    let mut updates: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for _ in 0..SCRAPES {
        let (wall, body, series) = timed_scrape(agent.addr);
        agent_wall.push(wall);
        agent_series = series;
        for (name, seconds) in update_seconds(&body) {
            updates.entry(name).or_default().push(seconds);
        }
        let (wall, _, series) = timed_scrape(ne_addr);
        ne_wall.push(wall);
        ne_series = series;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let agent_cpu = proc_cpu_seconds(agent_pid) - agent_cpu0;
    let ne_cpu = proc_cpu_seconds(ne_pid) - ne_cpu0;
    // The agent's CPU without scrapes (its event plugins, timers) over the same time, so
    // that the per-scrape figure can be given with and without it.
    let idle0 = proc_cpu_seconds(agent_pid);
    std::thread::sleep(Duration::from_secs(10));
    let idle_rate = (proc_cpu_seconds(agent_pid) - idle0) / 10.0;
    let _ = exporter.kill();
    let _ = exporter.wait();

    println!(
        "\n## Full catalogue vs node_exporter ({} components in target/plugins, {SCRAPES} scrapes each, interleaved, after 20 warm-up)",
        builtins.len()
    );
    println!(
        "| target | series | median | p99 | CPU per scrape | CPU per series |\n|---|---|---|---|---|---|"
    );
    let row = |label: &str, wall: Vec<Duration>, cpu: f64, series: usize| {
        let s = stats(wall);
        let per_scrape = cpu / SCRAPES as f64;
        println!(
            "| {label} | {series} | {} | {} | {:.2} ms | {:.2} µs |",
            ms(s.median),
            ms(s.p99),
            per_scrape * 1e3,
            per_scrape / series as f64 * 1e6
        );
        per_scrape / series as f64
    };
    let ours = row(
        "kpulse, every built-in plugin",
        agent_wall.clone(),
        agent_cpu,
        agent_series,
    );
    let scraping_only = (agent_cpu - idle_rate * elapsed).max(0.0);
    let ours_net = row(
        "kpulse, less its idle CPU over the same time",
        agent_wall,
        scraping_only,
        agent_series,
    );
    let theirs = row(
        "node_exporter 1.5, default collectors",
        ne_wall,
        ne_cpu,
        ne_series,
    );
    println!(
        "\nkpulse CPU per series / node_exporter's: {:.2} ({:.2} without the idle CPU; target <= 0.5). Idle CPU of the agent: {:.2} % of a core; run {elapsed:.1} s.",
        ours / theirs,
        ours_net / theirs,
        idle_rate * 100.0
    );

    println!("\n### One `update` per plugin (`kpulse_scrape_collector_duration_seconds`)");
    println!(
        "| plugin | in the full scrape: median | p99 | alone: median | p99 | series alone |\n|---|---|---|---|---|---|"
    );
    drop(agent);
    for (name, mut seconds) in updates {
        seconds.sort_by(f64::total_cmp);
        let path = root().join(format!("target/plugins/{name}.wasm"));
        let (alone, series) = update_alone(&path, &name);
        println!(
            "| {name} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {series} |",
            quantile(&seconds, 0.5) * 1e3,
            quantile(&seconds, 0.99) * 1e3,
            quantile(&alone, 0.5) * 1e3,
            quantile(&alone, 0.99) * 1e3,
        );
    }
}

/// `update` durations of one plugin loaded alone, over 50 scrapes, and its series count
/// (the agent's own series left out).
fn update_alone(path: &Path, name: &str) -> (Vec<f64>, usize) {
    let agent = start_settled("bench-update", &[path.to_path_buf()]);
    let mut seconds = Vec::new();
    let mut series = 0;
    for _ in 0..50 {
        let (_, body, _) = timed_scrape(agent.addr);
        seconds.extend(
            update_seconds(&body)
                .into_iter()
                .filter(|(n, _)| n == name)
                .map(|(_, s)| s),
        );
        series = body
            .lines()
            .filter(|l| l.starts_with(&format!("kpulse_{name}_")))
            .count();
    }
    seconds.sort_by(f64::total_cmp);
    if seconds.is_empty() {
        seconds.push(f64::NAN);
    }
    (seconds, series)
}
