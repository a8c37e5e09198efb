//! `/metrics` is valid for a real parser (promtool) and a real Prometheus server scrapes it.

use std::process::{Command, Stdio};
use std::time::Duration;

use kpulse_integration_tests::{Agent, http, plugin_wasm, sample, scratch_dir, wait_for};

fn promtool_check(exposition: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // promtool exits non-zero on parse errors; lint findings are printed too.
    assert!(
        output.status.success(),
        "promtool rejected /metrics: {report}"
    );
    assert!(report.trim().is_empty(), "promtool lint findings: {report}");
}

#[test]
fn exposition_is_valid_in_both_formats() {
    let agent = Agent::start(
        "metrics",
        &[plugin_wasm("loadavg"), plugin_wasm("example")],
        "",
    );
    agent.wait_state("example", "running", Duration::from_secs(10));
    let text = agent.metrics();
    promtool_check(&text);
    for family in [
        "kpulse_loadavg_load1{",
        "kpulse_loadavg_nr_tasks{",
        "kpulse_example_ticks_total{",
        "kpulse_scrape_collector_duration_seconds{",
        "kpulse_plugin_memory_bytes{",
        "kpulse_build_info{",
        "kpulse_storage_documents_dropped_total",
    ] {
        assert!(
            sample(&text, family).is_some(),
            "{family} missing from:\n{text}"
        );
    }
    let host_load = std::fs::read_to_string("/proc/loadavg").unwrap();
    let tasks: f64 = host_load
        .split_whitespace()
        .nth(3)
        .unwrap()
        .split('/')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let exposed = sample(&text, "kpulse_loadavg_nr_tasks{").unwrap();
    assert!(
        (exposed - tasks).abs() < tasks * 0.5 + 50.0,
        "nr_tasks {exposed} vs /proc/loadavg {tasks}"
    );

    let om = http(
        agent.addr,
        "GET",
        "/metrics",
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
    )
    .unwrap();
    assert_eq!(om.status, 200);
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
    assert!(om.body.contains("# TYPE kpulse_example_ticks counter"));
}

#[test]
fn huatuo_prefix_reproduces_huatuo_names() {
    let agent = Agent::start(
        "huatuo",
        &[plugin_wasm("loadavg")],
        "[metrics]\nprefix = \"huatuo_bamai\"\n",
    );
    let text = wait_for(Duration::from_secs(10), "loadavg metrics", || {
        let text = agent.metrics();
        text.contains("huatuo_bamai_loadavg_load1{").then_some(text)
    });
    promtool_check(&text);
    let line = text
        .lines()
        .find(|l| l.starts_with("huatuo_bamai_loadavg_load1{"))
        .unwrap();
    assert!(
        line.contains("region=\"test\"") && line.contains("host=\""),
        "{line}"
    );
    assert!(text.contains("huatuo_bamai_scrape_collector_success{collector=\"loadavg\"} 1"));
}

#[test]
fn prometheus_server_scrapes_the_agent() {
    let agent = Agent::start("prom", &[plugin_wasm("loadavg")], "");
    let dir = scratch_dir("prometheus");
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: kpulse\n    static_configs:\n      - targets: ['{}']\n",
        agent.addr
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let mut prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        // Port 0: the kernel picks a free one; read back from /proc below.
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("prometheus (Debian package prometheus) must be installed");
    let pid = prometheus.id();
    let result = std::panic::catch_unwind(|| {
        let port = wait_for(Duration::from_secs(60), "Prometheus to listen", || {
            kpulse_integration_tests::listening_ports(pid)
                .first()
                .copied()
        });
        let server = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        wait_for(
            Duration::from_secs(60),
            "Prometheus to return kpulse_loadavg_load1",
            || {
                let response = http(
                    server,
                    "GET",
                    "/api/v1/query?query=kpulse_loadavg_load1",
                    &[],
                )
                .ok()?;
                let json: serde_json::Value = serde_json::from_str(&response.body).ok()?;
                let result = json["data"]["result"].as_array()?.first()?.clone();
                Some(result)
            },
        )
    });
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let result = result.unwrap_or_else(|_| {
        panic!(
            "{}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        )
    });
    assert_eq!(result["metric"]["job"], "kpulse");
    assert_eq!(result["metric"]["region"], "test");
    let value: f64 = result["value"][1].as_str().unwrap().parse().unwrap();
    assert!(value >= 0.0);
}
