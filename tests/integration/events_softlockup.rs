//! `softlockup` on the real kernel, through the same path a real report takes.
//!
//! A real soft lockup (a CPU spinning in the kernel for 20+ s with preemption off) cannot be
//! provoked safely on a shared test machine: it needs a kernel module or a debug knob and it
//! stalls everything on that CPU. The collector matches the watchdog's printk line on
//! tracepoint `printk/console`, so the test writes that line to `/dev/kmsg`, which goes
//! through printk and fires the same tracepoint (the line stays in the kernel log, marked
//! `kpulse-test`). An unrelated line written just before must give no document.

use std::io::Write;
use std::time::Duration;

use kpulse_integration_tests::{Agent, plugin_wasm, sample_with, wait_for};

fn kmsg(line: &str) {
    let mut kmsg = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .unwrap();
    kmsg.write_all(line.as_bytes()).unwrap();
}

#[test]
fn watchdog_line_gives_a_softlockup_document() {
    let agent = Agent::start("softlockup", &[plugin_wasm("softlockup")], "");
    agent.wait_state("softlockup", "running", Duration::from_secs(20));
    let marker = std::process::id();
    kmsg(&format!("kpulse-test: an unrelated line {marker}\n"));
    let line = format!("watchdog: BUG: soft lockup - CPU#0 stuck for 23s! [kpulse-test:{marker}]");
    kmsg(&format!("{line}\n"));

    let ours = |d: &serde_json::Value| {
        d["tracer_data"]["msg"]
            .as_str()
            .is_some_and(|m| m.contains(&marker.to_string()))
    };
    let docs = wait_for(Duration::from_secs(20), "the softlockup document", || {
        let response = agent.get("/events?tracer=softlockup&limit=1000");
        let docs: Vec<serde_json::Value> = response.json().as_array().cloned().unwrap_or_default();
        let hits: Vec<_> = docs.into_iter().filter(ours).collect();
        (!hits.is_empty()).then_some(hits)
    });
    assert_eq!(docs.len(), 1, "only the soft lockup line matches: {docs:?}");
    let doc = &docs[0];
    let data = &doc["tracer_data"];
    assert_eq!(doc["tracer_name"], "softlockup");
    assert_eq!(doc["tracer_type"], "event");
    assert!(data["msg"].as_str().unwrap().contains(&line), "{data}");
    // The task and CPU the report names, and the task that printed it (this test).
    assert_eq!(data["cpu"], 0, "{data}");
    assert_eq!(data["pid"], marker, "{data}");
    assert_eq!(data["comm"], "kpulse-test", "{data}");
    assert_eq!(data["stuck_for_secs"], 23, "{data}");
    let own_tids: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        own_tids.contains(&data["printk_pid"].to_string()),
        "{own_tids:?} vs {data}"
    );
    let stack = data["cpus_stack"].as_str().unwrap();
    assert!(stack.lines().count() > 3, "{data}");
    assert!(
        stack.contains("printk") || stack.contains("devkmsg"),
        "symbolized: {stack}"
    );

    // The unrelated line was written first, so it has been processed by now.
    let all = agent.get("/events?tracer=softlockup&limit=1000").json();
    let unrelated = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| {
            d["tracer_data"]["msg"]
                .as_str()
                .is_some_and(|m| m.contains("unrelated"))
        })
        .count();
    assert_eq!(unrelated, 0, "{all}");

    let metrics = agent.metrics();
    // Counter `total` is exposed as HUATUO's `softlockup_total`.
    assert!(!metrics.contains("softlockup_total_total"), "{metrics}");
    let total = sample_with(&metrics, "kpulse_softlockup_total", "")
        .unwrap_or_else(|| panic!("no softlockup total: {metrics}"));
    assert!(total >= 1.0, "{total}");
}

/// Decoding of a recording made from the real `softlockup` program on this kernel, replayed
/// offline (no kernel, no BPF). The recording (`tests/fixtures/softlockup-watchdog.kprec`)
/// was made with `kpulse plugins record softlockup --for 4s` while the watchdog's report
/// line for a soft lockup on CPU#1 was written to `/dev/kmsg`: a real soft lockup cannot be
/// provoked safely on a shared machine, so this is the closest real kernel record. The
/// stack addresses are the recording machine's (KASLR), so only their count is checked.
#[test]
fn recorded_watchdog_report_replays_into_a_softlockup_document() {
    let fixture = kpulse_integration_tests::root().join("tests/fixtures/softlockup-watchdog.kprec");
    let replay = std::process::Command::new(kpulse_integration_tests::kpulse_bin())
        .args(["plugins", "replay"])
        .arg(plugin_wasm("softlockup"))
        .arg(&fixture)
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let docs: Vec<serde_json::Value> = String::from_utf8_lossy(&replay.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    assert_eq!(docs.len(), 1, "{docs:?}");
    let doc = &docs[0];
    assert_eq!(doc["tracer_name"], "softlockup");
    assert_eq!(doc["tracer_type"], "event");
    let data = &doc["tracer_data"];
    assert_eq!(
        data["msg"],
        "watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [kworker/1:2:4242]"
    );
    assert_eq!(data["cpu"], 1, "{data}");
    assert_eq!(data["pid"], 4242, "{data}");
    assert_eq!(data["comm"], "kworker/1:2", "{data}");
    assert_eq!(data["stuck_for_secs"], 22, "{data}");
    assert_eq!(data["printk_comm"], "bash", "{data}");
    assert_eq!(
        data["cpus_stack"]
            .as_str()
            .unwrap_or_default()
            .lines()
            .count(),
        9,
        "the recorded kernel stack: {data}"
    );
}
