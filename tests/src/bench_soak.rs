//! `kpulse-bench soak`: the agent for a long run under the load of a fleet host, sampled.
//!
//! One agent with every built-in plugin plus `docgen` (50 documents/s) and the OpenSearch
//! sink; a scrape of `/metrics` every second; a busybox container started and stopped every
//! 30 s (containerd from `scripts/containers.sh start`); OpenSearch behind a [`FaultProxy`]
//! that refuses every connection for 5 minutes in the middle of the run (a sixth of a shorter one).
//!
//! Every 10 s: RSS (anonymous and file-backed apart), open fds, threads, BPF objects the agent holds, the spool. Written to
//! `target/bench/soak.csv` and plotted in `target/bench/soak.svg`. Printed: the least-squares
//! slope of each after the warm-up (the first tenth), against the noise (the residuals'
//! standard deviation); scrape failures outside the outage; documents delivered once
//! (the cluster's count of the run's index against the local store's).
//!
//! `KPULSE_SOAK_MINUTES` (60) sets the length; `OPENSEARCH_URL` the node.

use std::fmt::Write as _;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kpulse_integration_tests::containers::Runtimes;
use kpulse_integration_tests::fault_proxy::{Fault, FaultProxy};
use kpulse_integration_tests::{Agent, guest_wasm, http, install, root, scratch_dir};

const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// A plotted series: its title, how to read it from a sample, its colour.
type Series = (&'static str, fn(&Sample) -> f64, &'static str);

/// One sample of the agent.
#[derive(Debug, Clone, Copy)]
struct Sample {
    minute: f64,
    rss_mib: f64,
    /// Anonymous memory (heap, stacks, wasm linear memories): where a leak would show.
    rss_anon_mib: f64,
    /// File-backed pages (the binary, compiled plugin images paged back in as code runs).
    rss_file_mib: f64,
    fds: f64,
    threads: f64,
    bpf_objects: f64,
    spooled: f64,
}

fn count_dir(path: &str) -> f64 {
    std::fs::read_dir(path).map_or(0, |d| d.count()) as f64
}

/// fds of `pid` that are BPF programs or maps (`anon_inode:bpf-prog`, `bpf-map`, links).
fn bpf_fds(pid: u32) -> f64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0.0;
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains("bpf"))
        .count() as f64
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `RssAnon`, `RssFile`) in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| {
            l.strip_prefix(field)
                .is_some_and(|rest| rest.starts_with(':'))
        })
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Least-squares slope (per hour) of `y` over `x` minutes, and the residuals' deviation.
fn trend(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    if n < 3.0 {
        return (0.0, 0.0);
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let residual = (points
        .iter()
        .map(|p| (p.1 - (my + slope * (p.0 - mx))).powi(2))
        .sum::<f64>()
        / (n - 2.0))
        .sqrt();
    (slope * 60.0, residual)
}

fn os_count(url: &str, index: &str) -> Option<u64> {
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_socket_addrs()
        .ok()?
        .next()?;
    let _ = http(addr, "POST", &format!("/{index}-*/_refresh"), &[]);
    let response = http(addr, "GET", &format!("/{index}-*/_count"), &[]).ok()?;
    response.json()["count"].as_u64()
}

fn local_documents(dir: &std::path::Path) -> u64 {
    let Ok(files) = std::fs::read_dir(dir.join("data/events")) else {
        return 0;
    };
    files
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .map(|text| {
            text.lines()
                .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
                .count() as u64
        })
        .sum()
}

pub fn soak() {
    let minutes: f64 = super::env_or("KPULSE_SOAK_MINUTES", 60.0);
    let url =
        std::env::var("OPENSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".to_owned());
    let upstream = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .expect("OPENSEARCH_URL is host:port");
    let total = Duration::from_secs_f64(minutes * 60.0);
    let outage = Duration::from_secs_f64((minutes * 60.0 / 6.0).min(300.0));
    let outage_from = (total - outage) / 2;
    let outage_to = outage_from + outage;
    println!(
        "\n## Soak: {minutes} min, every built-in plugin + docgen 50 docs/s, a scrape a second, a container every 30 s, OpenSearch refused {:.0}–{:.0} min",
        outage_from.as_secs_f64() / 60.0,
        outage_to.as_secs_f64() / 60.0
    );
    let proxy = FaultProxy::start(upstream);
    let runtimes = Runtimes::get();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let index = format!("kpulse-soak-{stamp}");
    let dir = scratch_dir("soak");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for plugin in super::builtin_plugins() {
        install(&plugins, &plugin);
    }
    install(&plugins, &guest_wasm("docgen"));
    let config = format!(
        "[plugins.docgen]\nper_tick = 1\ntick_ms = 20\n\n{}\n\
         [storage]\nrotation_size_mib = 1024\n\n\
         [storage.opensearch]\naddresses = [\"{}\"]\nindex = \"{index}\"\nbackoff_max_ms = 5000\n",
        runtimes.agent_config(""),
        proxy.url()
    );
    let mut agent = Agent::start_in(dir.clone(), &config);
    agent.wait_state("docgen", "running", Duration::from_secs(120));
    let pid = agent.child.id();
    let addr = agent.addr;
    let started = Instant::now();

    // A scrape a second, failures counted outside the outage.
    let stop = Arc::new(AtomicBool::new(false));
    let scrapes = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let scraper = {
        let (stop, scrapes, failures) = (stop.clone(), scrapes.clone(), failures.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ok = http(addr, "GET", "/metrics", &[]).is_ok_and(|r| r.status == 200);
                scrapes.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };

    let mut samples = Vec::new();
    let mut containers = 0u32;
    let mut container = None;
    let mut outage_on = false;
    let mut next_container = Instant::now();
    while started.elapsed() < total {
        let now = started.elapsed();
        let in_outage = now >= outage_from && now < outage_to;
        if in_outage != outage_on {
            proxy.set(if in_outage {
                Fault::Refuse
            } else {
                Fault::None
            });
            outage_on = in_outage;
        }
        if Instant::now() >= next_container {
            if let Some(previous) = container.take() {
                drop::<kpulse_integration_tests::containers::CtrContainer>(previous);
            }
            containers += 1;
            container = Some(runtimes.ctr_run(
                "kpsoak",
                &format!("soak{}", containers % 2),
                &[("app", "soak")],
                &[],
                "while true; do echo x > /dev/null; sleep 1; done",
            ));
            next_container += Duration::from_secs(30);
        }
        let metrics = http(addr, "GET", "/metrics", &[])
            .map(|r| r.body)
            .unwrap_or_default();
        samples.push(Sample {
            minute: now.as_secs_f64() / 60.0,
            rss_mib: status_mib(pid, "VmRSS"),
            rss_anon_mib: status_mib(pid, "RssAnon"),
            rss_file_mib: status_mib(pid, "RssFile"),
            fds: count_dir(&format!("/proc/{pid}/fd")),
            threads: count_dir(&format!("/proc/{pid}/task")),
            bpf_objects: bpf_fds(pid),
            spooled: kpulse_integration_tests::sample(&metrics, "kpulse_opensearch_spooled")
                .unwrap_or(-1.0),
        });
        std::thread::sleep(SAMPLE_EVERY);
    }
    drop(container);
    proxy.set(Fault::None);
    stop.store(true, Ordering::Relaxed);
    let _ = scraper.join();
    // Let the spool drain, then compare what the cluster has with the local store.
    let drain = Instant::now();
    while drain.elapsed() < Duration::from_secs(180) {
        let metrics = http(addr, "GET", "/metrics", &[])
            .map(|r| r.body)
            .unwrap_or_default();
        if kpulse_integration_tests::sample(&metrics, "kpulse_opensearch_spooled") == Some(0.0) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let agent_alive = matches!(agent.child.try_wait(), Ok(None));
    drop(agent);
    let local = local_documents(&dir);
    let remote = os_count(&url, &index);

    let out_dir = root().join("target/bench");
    let _ = std::fs::create_dir_all(&out_dir);
    let mut csv =
        String::from("minute,rss_mib,rss_anon_mib,rss_file_mib,fds,threads,bpf_objects,spooled\n");
    for s in &samples {
        let _ = writeln!(
            csv,
            "{:.2},{:.1},{:.1},{:.1},{},{},{},{}",
            s.minute,
            s.rss_mib,
            s.rss_anon_mib,
            s.rss_file_mib,
            s.fds,
            s.threads,
            s.bpf_objects,
            s.spooled
        );
    }
    let _ = std::fs::write(out_dir.join("soak.csv"), csv);
    let series: [Series; 7] = [
        ("RSS (MiB)", |s| s.rss_mib, "#1f77b4"),
        ("RSS anonymous (MiB)", |s| s.rss_anon_mib, "#17becf"),
        ("RSS file-backed (MiB)", |s| s.rss_file_mib, "#8c564b"),
        ("open fds", |s| s.fds, "#ff7f0e"),
        ("threads", |s| s.threads, "#2ca02c"),
        ("BPF objects (fds)", |s| s.bpf_objects, "#d62728"),
        ("spooled documents", |s| s.spooled, "#9467bd"),
    ];
    let svg = plot(
        &samples,
        &series,
        outage_from.as_secs_f64() / 60.0,
        outage_to.as_secs_f64() / 60.0,
    );
    let _ = std::fs::write(out_dir.join("soak.svg"), svg);

    let warm: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.minute >= minutes / 10.0)
        .collect();
    println!(
        "| series | after warm-up: first | last | min | max | slope per hour | noise (σ of residuals) |\n|---|---|---|---|---|---|---|"
    );
    for (name, get, _) in &series[..6] {
        let points: Vec<(f64, f64)> = warm.iter().map(|s| (s.minute, get(s))).collect();
        let (slope, noise) = trend(&points);
        let values = points.iter().map(|p| p.1);
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {slope:+.2} | {noise:.2} |",
            points.first().map_or(0.0, |p| p.1),
            points.last().map_or(0.0, |p| p.1),
            values.clone().fold(f64::INFINITY, f64::min),
            values.fold(f64::NEG_INFINITY, f64::max),
        );
    }
    let max_spooled = samples.iter().map(|s| s.spooled).fold(0.0, f64::max);
    println!(
        "\nscrapes {} ({} failed); containers started and stopped {containers}; spool peak {max_spooled:.0} during the outage; \
         agent alive at the end: {agent_alive}; documents: {local} in the local store, {} in the cluster ({})",
        scrapes.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
        remote.map_or("?".to_owned(), |r| r.to_string()),
        match remote {
            Some(r) if r == local => "every document delivered once",
            Some(_) => "MISMATCH",
            None => "cluster unreachable",
        }
    );
    println!(
        "samples: {} in target/bench/soak.csv, plot in target/bench/soak.svg",
        samples.len()
    );
}

/// The samples as stacked line charts, one panel per series, the outage shaded.
fn plot(samples: &[Sample], series: &[Series], outage_from: f64, outage_to: f64) -> String {
    let (width, panel, left, top) = (900.0, 150.0, 70.0, 30.0);
    let plot_width = width - left - 20.0;
    let height = top + panel * series.len() as f64 + 30.0;
    let last_minute = samples.last().map_or(1.0, |s| s.minute.max(1.0));
    let x = |minute: f64| left + minute / last_minute * plot_width;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\" font-size=\"14\">kpulse soak: {last_minute:.0} min, every built-in plugin; shaded: OpenSearch refused</text>\n"
    );
    for (i, (name, get, colour)) in series.iter().enumerate() {
        let y0 = top + panel * i as f64;
        let values: Vec<f64> = samples.iter().map(get).collect();
        let max = values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
            .max(1.0);
        let min = values
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .min(max - 1.0)
            .max(0.0);
        let y = |v: f64| y0 + panel - 20.0 - (v - min) / (max - min) * (panel - 40.0);
        let _ = writeln!(
            svg,
            "<rect x=\"{:.1}\" y=\"{y0:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#eee\"/>",
            x(outage_from),
            x(outage_to) - x(outage_from),
            panel - 10.0
        );
        let _ = writeln!(
            svg,
            "<text x=\"{left}\" y=\"{:.1}\">{name}</text><text x=\"5\" y=\"{:.1}\">{max:.0}</text><text x=\"5\" y=\"{:.1}\">{min:.0}</text>",
            y0 + 12.0,
            y(max) + 4.0,
            y(min) + 4.0
        );
        let points: Vec<String> = samples
            .iter()
            .zip(&values)
            .map(|(s, v)| format!("{:.1},{:.1}", x(s.minute), y(*v)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
            points.join(" ")
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{left}\" y=\"{:.1}\">0 min</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{last_minute:.0} min</text>\n</svg>",
        height - 8.0,
        left + plot_width,
        height - 8.0
    );
    svg
}
