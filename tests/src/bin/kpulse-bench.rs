//! `kpulse-bench`: end-to-end figures of the agent, measured against the real binary with
//! real components, side by side with node_exporter where a comparison makes sense.
//!
//! Run with `scripts/bench.sh` (it builds everything first). Sections:
//! scrape latency, hot-reload latency (cached and cold compile), RSS with 10 plugins, idle CPU.

#![allow(
    clippy::unwrap_used,
    reason = "bench tool: a failed setup step should panic"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kpulse_integration_tests::{
    Agent, free_port, guest_wasm, http, install, plugin_wasm, scratch_dir, wait_for,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let all = args.is_empty();
    let want = |name: &str| all || args.iter().any(|a| a == name);
    println!("# kpulse-bench ({} CPUs, kernel {})", cpus(), kernel());
    if want("scrape") {
        scrape();
    }
    if want("reload") {
        reload();
    }
    if want("footprint") {
        footprint();
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Installs `count` copies of the bench guest, each patched to a distinct name.
fn install_bench_plugins(plugin_dir: &Path, count: usize) {
    let original = std::fs::read(guest_wasm("bench")).unwrap();
    for i in 0..count {
        let name = format!("benchxx{i}");
        let patched = replace_all(&original, b"benchxx0", name.as_bytes());
        let tmp = plugin_dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, patched).unwrap();
        std::fs::rename(&tmp, plugin_dir.join(format!("{name}.wasm"))).unwrap();
    }
}

fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = haystack.to_vec();
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            i += from.len();
        } else {
            i += 1;
        }
    }
    out
}

fn wait_running(agent: &Agent, count: usize) {
    wait_for(Duration::from_secs(60), "plugins running", || {
        let running = agent
            .plugins()
            .iter()
            .filter(|p| p["state"] == "running")
            .count();
        (running >= count).then_some(())
    });
}

struct Stats {
    median: Duration,
    p99: Duration,
    mean: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / u32::try_from(samples.len()).unwrap();
    Stats {
        median: samples[samples.len() / 2],
        p99: samples[(samples.len() * 99 / 100).min(samples.len() - 1)],
        mean,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn time_scrapes(addr: SocketAddr, path: &str, n: usize) -> (Stats, usize) {
    let mut samples = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n {
        let started = Instant::now();
        let response = http(addr, "GET", path, &[]).unwrap();
        samples.push(started.elapsed());
        assert_eq!(response.status, 200);
        bytes = response.body.len();
    }
    (stats(samples), bytes)
}

fn node_exporter() -> Option<(Child, SocketAddr)> {
    let port = free_port();
    let child = Command::new("prometheus-node-exporter")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for(Duration::from_secs(20), "node_exporter", || {
        http(addr, "GET", "/metrics", &[])
            .ok()
            .filter(|r| r.status == 200)
            .map(|_| ())
    });
    Some((child, addr))
}

fn scrape() {
    println!(
        "\n## /metrics scrape latency (200 sequential scrapes over loopback, after 20 warm-up)"
    );
    println!("| target | median | p99 | mean | body bytes |\n|---|---|---|---|---|");
    for (label, count, builtins) in [
        ("kpulse, 10 simple plugins", 10, false),
        ("kpulse, built-ins + 10 simple plugins", 10, true),
    ] {
        let plugins = if builtins {
            vec![plugin_wasm("loadavg"), plugin_wasm("example")]
        } else {
            Vec::new()
        };
        let agent = Agent::start("bench-scrape", &plugins, "");
        install_bench_plugins(&agent.plugin_dir, count);
        wait_running(&agent, count + plugins.len());
        time_scrapes(agent.addr, "/metrics", 20);
        let (s, bytes) = time_scrapes(agent.addr, "/metrics", 200);
        println!(
            "| {label} | {} | {} | {} | {bytes} |",
            ms(s.median),
            ms(s.p99),
            ms(s.mean)
        );
    }
    if let Some((mut child, addr)) = node_exporter() {
        time_scrapes(addr, "/metrics", 20);
        let (s, bytes) = time_scrapes(addr, "/metrics", 200);
        println!(
            "| node_exporter (Debian, default collectors) | {} | {} | {} | {bytes} |",
            ms(s.median),
            ms(s.p99),
            ms(s.mean)
        );
        let _ = child.kill();
        let _ = child.wait();
    } else {
        println!("| node_exporter | not installed | | | |");
    }
}

fn reload() {
    println!(
        "\n## Hot reload: file renamed into place -> new version serving in /plugins (20 swaps)"
    );
    println!("| compile | median | p99 | mean |\n|---|---|---|---|");
    for (label, extra) in [
        ("cached (.cwasm in the compile cache)", ""),
        (
            "cold (compile_cache = false)",
            "[runtime]\ncompile_cache = false\n",
        ),
    ] {
        let agent = Agent::start("bench-reload", &[guest_wasm("hot-v1")], extra);
        agent.wait_state("hot", "running", Duration::from_secs(30));
        // Warm the cache with both versions.
        let mut samples = Vec::new();
        for round in 0..22 {
            let (file, version) = if round % 2 == 0 {
                ("hot-v2", "2.0.0")
            } else {
                ("hot-v1", "1.0.0")
            };
            let started = Instant::now();
            install(&agent.plugin_dir, &guest_wasm(file));
            loop {
                let plugin = agent.plugin("hot");
                if plugin.is_some_and(|p| p["version"] == version && p["state"] == "running") {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "reload timed out: {}",
                    agent.log()
                );
                std::thread::sleep(Duration::from_micros(500));
            }
            if round >= 2 {
                samples.push(started.elapsed());
            }
        }
        let s = stats(samples);
        println!(
            "| {label} | {} | {} | {} |",
            ms(s.median),
            ms(s.p99),
            ms(s.mean)
        );
    }
}

fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

fn footprint() {
    let seconds = 30;
    println!("\n## Footprint: RSS and idle CPU over {seconds} s without scrapes (side by side)");
    println!("| process | RSS | CPU over {seconds} s | % of one core |\n|---|---|---|---|");
    let agent = Agent::start(
        "bench-idle",
        &[plugin_wasm("loadavg"), plugin_wasm("example")],
        "",
    );
    install_bench_plugins(&agent.plugin_dir, 10);
    wait_running(&agent, 12);
    // One scrape so every instance has run once, as in production.
    agent.metrics();
    let exporter = node_exporter();
    std::thread::sleep(Duration::from_secs(2));
    let pid = agent.child.id();
    let start_agent = proc_cpu_seconds(pid);
    let start_exporter = exporter.as_ref().map(|(c, _)| proc_cpu_seconds(c.id()));
    std::thread::sleep(Duration::from_secs(seconds));
    let agent_cpu = proc_cpu_seconds(pid) - start_agent;
    println!(
        "| kpulse, 12 plugins (loadavg, example ticking every 1 s, 10 simple) | {:.1} MiB | {:.2} s | {:.3} % |",
        rss_mib(pid),
        agent_cpu,
        agent_cpu / seconds as f64 * 100.0
    );
    if let (Some((mut child, _)), Some(start)) = (exporter, start_exporter) {
        let cpu = proc_cpu_seconds(child.id()) - start;
        println!(
            "| node_exporter, idle | {:.1} MiB | {:.2} s | {:.3} % |",
            rss_mib(child.id()),
            cpu,
            cpu / seconds as f64 * 100.0
        );
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = scratch_dir;
}
