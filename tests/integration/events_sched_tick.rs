//! `sched_tick` (HUATUO's, on a perf cpu-clock event since kprobes do not attach here): the
//! plugin loads and attaches its perf-event program on every CPU of the live kernel and it
//! runs (its run rate from the agent's sampled BPF cost is printed against the CPUs' idle
//! time: whether idle vCPUs give false gaps is not decided here); the decoder is tested through `kpulse plugins replay` on records synthesized
//! from the generated record type (`tests/fixtures/replay/sched_tick.kprec`): an irq-off
//! window cannot be opened from user space on this kernel (no module, no hwlat tracer).

use std::process::Command;
use std::time::Duration;

use kpulse_integration_tests::{Agent, plugin_wasm, sample};

use crate::events_replay_new::replay;
use serde_json::Value;

/// Idle time of every CPU in seconds (`/proc/stat`, USER_HZ = 100).
fn idle_seconds() -> Vec<f64> {
    std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let fields: Vec<f64> = l
                .split_whitespace()
                .skip(1)
                .map(|v| v.parse().unwrap())
                .collect();
            fields[3] / 100.0
        })
        .collect()
}

fn documents(agent: &Agent) -> Vec<Value> {
    agent
        .get("/events?tracer=sched_tick&limit=1000")
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn sched_tick_attaches_a_perf_clock_and_idle_cpus_give_no_gaps() {
    // The agent's BPF cost sampler counts the program's runs: 1 s windows every second.
    let agent = Agent::start(
        "sched-tick-live",
        &[plugin_wasm("sched_tick")],
        "[containers]\nenabled = false\n[metrics]\nbpf_cost_every_secs = 1\n\
         bpf_cost_window_ms = 1000\n",
    );
    agent.wait_state("sched_tick", "running", Duration::from_secs(20));
    let progs = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !progs.is_empty() {
        let progs: Value = serde_json::from_str(&progs).unwrap();
        assert!(
            progs
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "sched_tick" && p["type"] == "perf_event"),
            "{progs}"
        );
    }
    let idle_before = idle_seconds();
    std::thread::sleep(Duration::from_secs(5));
    let idle: f64 = idle_seconds()
        .iter()
        .zip(&idle_before)
        .map(|(after, before)| after - before)
        .sum();
    // Documents first, then the counters: every saved document was counted before.
    let docs = documents(&agent);
    let metrics = agent.metrics();
    let gaps = sample(&metrics, "kpulse_sched_tick_gaps_total").unwrap();
    let idle_gaps = sample(&metrics, "kpulse_sched_tick_idle_gaps_total").unwrap();
    assert_eq!(sample(&metrics, "kpulse_sched_tick_lost_total"), Some(0.0));
    // The program runs on the CPUs' clock (the agent's sampled BPF cost counts it). Whether
    // every gap is an irq-off window cannot be told apart here from an idle vCPU the
    // hypervisor runs late (under the suite's load the rate seen has been ~60 % of 250 Hz per
    // CPU with ~75 % idle), so the figures are printed, not bounded.
    let runs = kpulse_integration_tests::sample_with(
        &metrics,
        "kpulse_plugin_bpf_runs_total",
        "plugin=\"sched_tick\"",
    )
    .unwrap_or(0.0);
    let sampled = sample(&metrics, "kpulse_bpf_cost_sampled_seconds_total").unwrap_or(0.0);
    let cpus = idle_before.len() as f64;
    let rate = runs / sampled.max(f64::MIN_POSITIVE);
    eprintln!(
        "sched_tick: {gaps} gaps in 5 s ({idle_gaps} in the idle task, not saved) with \
         {idle:.2} CPU-seconds idle; {rate:.0} runs/s \
         over {sampled:.1} s sampled on {cpus} CPUs (250 Hz each)"
    );
    assert!(sampled >= 1.0, "no cost window sampled: {metrics}");
    assert!(rate > 0.0, "the perf program never ran: {metrics}");
    assert!(docs.len() as f64 <= gaps - idle_gaps, "{docs:?}");
    for doc in &docs {
        let data = &doc["tracer_data"];
        assert!(
            data["tick_interval_ns"].as_u64().unwrap() >= 10_000_000,
            "{doc}"
        );
        assert_eq!(data["tick_interval_threshold_ns"], 10_000_000);
        assert_eq!(data["period_ns"], 4_000_000);
        assert_ne!(data["pid"], 0, "an idle gap saved by default: {doc}");
    }
    let plugin = agent.plugin("sched_tick").unwrap();
    assert!(plugin["last_error"].is_null(), "{plugin}");
}

/// The decoder, and the idle filter: by default the gap that ended in the idle task is
/// counted, not saved; with `report_idle = true` it is saved as the host's.
#[test]
fn sched_tick_records_replay_into_huatuo_documents() {
    let docs = replay("sched_tick", "sched_tick.kprec", None);
    assert_eq!(
        docs.len(),
        1,
        "the idle gap is not saved by default: {docs:?}"
    );
    let docs = replay(
        "sched_tick",
        "sched_tick.kprec",
        Some("[plugins.sched_tick]\nreport_idle = true\n"),
    );
    assert_eq!(docs.len(), 2, "{docs:?}");
    assert!(
        docs.iter()
            .all(|d| d["tracer_name"] == "sched_tick" && d["tracer_type"] == "event")
    );
    let first = &docs[0]["tracer_data"];
    assert_eq!(first["tick_interval_ns"], 37_000_000);
    assert_eq!(first["tick_interval_threshold_ns"], 10_000_000);
    assert_eq!((&first["cpu"], &first["pid"]), (&1.into(), &4242.into()));
    assert_eq!(first["comm"], "stress-irqoff");
    assert_eq!(first["period_ns"], 4_000_000);
    let second = &docs[1]["tracer_data"];
    assert_eq!((&second["cpu"], &second["pid"]), (&0.into(), &0.into()));
    assert_eq!(second["comm"], "swapper/0");
    assert_eq!(second["tick_interval_ns"], 12_000_000);
    // The idle task is the host's: no container fields.
    assert!(
        docs[1]["container_id"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{}",
        docs[1]
    );
}
