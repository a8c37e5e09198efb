//! `kpulse plugins inspect` and `validate`.

use std::process::Command;

use kpulse_integration_tests::{guest_wasm, kpulse_bin, plugin_wasm, scratch_dir};

#[test]
fn inspect_shows_description_and_capabilities() {
    let output = Command::new(kpulse_bin())
        .args(["plugins", "inspect"])
        .arg(plugin_wasm("example"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["name"], "example");
    assert_eq!(report["kinds"], serde_json::json!(["tracing", "metric"]));
    assert_eq!(report["restart_interval_secs"], 10);
    assert_eq!(
        report["capabilities"][0]["capability"],
        "read:/proc/loadavg"
    );
    assert_eq!(
        report["capabilities"][0]["status"],
        "granted by the default policy"
    );
    assert!(
        report["imports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i == "kpulse:plugin/fs@0.1.0")
    );

    let dropwatch = Command::new(kpulse_bin())
        .args(["plugins", "inspect"])
        .arg(plugin_wasm("dropwatch"))
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&dropwatch.stdout).unwrap();
    assert_eq!(
        report["bpf_objects"][0]["programs"],
        serde_json::json!(["tracepoint/skb/kfree_skb"]),
        "{report}"
    );
    assert!(
        report["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["capability"] == "bpf" && c["status"] == "granted by the default policy")
    );
    assert_eq!(report_without_bpf(), serde_json::json!([]));

    let escaper = Command::new(kpulse_bin())
        .args(["plugins", "inspect"])
        .arg(guest_wasm("escaper"))
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&escaper.stdout).unwrap();
    let etc = report["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["capability"] == "read:/etc")
        .unwrap();
    assert_eq!(etc["status"], "denied by the default policy");
}

#[test]
fn validate_accepts_plugins_and_rejects_garbage() {
    for plugin in [plugin_wasm("loadavg"), plugin_wasm("example")] {
        let output = Command::new(kpulse_bin())
            .args(["plugins", "validate"])
            .arg(&plugin)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains(": ok: plugin "));
    }
    let dir = scratch_dir("validate");
    let garbage = dir.join("garbage.wasm");
    std::fs::write(&garbage, b"definitely not wasm").unwrap();
    let output = Command::new(kpulse_bin())
        .args(["plugins", "validate"])
        .arg(&garbage)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("garbage.wasm") && stderr.contains("not a valid kpulse plugin component"),
        "{stderr}"
    );

    let missing = Command::new(kpulse_bin())
        .args(["plugins", "validate", "/nonexistent.wasm"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));
}

/// `inspect` of a plugin without BPF lists no objects.
fn report_without_bpf() -> serde_json::Value {
    let output = Command::new(kpulse_bin())
        .args(["plugins", "inspect"])
        .arg(plugin_wasm("loadavg"))
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    report["bpf_objects"].clone()
}

#[test]
fn the_log_has_no_colour_codes_when_stderr_is_not_a_terminal() {
    // The harness sends the agent's stderr to a file, like `scripts/run.sh > file` or a
    // service manager would.
    let agent = kpulse_integration_tests::Agent::start("plain-log", &[plugin_wasm("loadavg")], "");
    agent.wait_state("loadavg", "running", std::time::Duration::from_secs(20));
    let log = agent.log();
    assert!(log.contains("INFO"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a log file: {log:?}"
    );
}
