//! Misbehaving guests are contained, reported, restarted with back-off and quarantined,
//! while other plugins' metrics keep flowing.

use std::time::Duration;

use kpulse_integration_tests::{Agent, guest_wasm, plugin_wasm, sample, sample_with};

const CONFIG: &str = r#"
[runtime]
deadline_ms = 200
quarantine_after = 3
[plugins.membomb]
memory_mib = 16
"#;

#[test]
fn bad_guests_are_quarantined_and_others_keep_working() {
    let agent = Agent::start(
        "contain",
        &[
            plugin_wasm("loadavg"),
            guest_wasm("spin"),
            guest_wasm("membomb"),
            guest_wasm("panicker"),
            guest_wasm("escaper"),
        ],
        CONFIG,
    );
    // Restart interval 1 s: failures at ~0 s, +1 s, +2 s (back-off doubles), then quarantine.
    let timeout = Duration::from_secs(30);
    let expectations = [
        ("spin", "deadline of 200 ms exceeded"),
        ("membomb", "memory limit"),
        ("panicker", "deliberate panic in on_timer"),
    ];
    for (name, error) in expectations {
        let plugin = agent.wait_state(name, "quarantined", timeout);
        let last_error = plugin["last_error"].as_str().unwrap_or_default();
        assert!(last_error.contains(error), "{name}: {last_error}");
        assert_eq!(plugin["restarts"], 2, "{name}: {plugin}");
    }

    // Meanwhile, everything else kept working.
    let metrics = agent.metrics();
    assert!(
        sample(&metrics, "kpulse_loadavg_load1{").is_some(),
        "{metrics}"
    );
    assert_eq!(
        sample_with(
            &metrics,
            "kpulse_scrape_collector_success",
            "collector=\"loadavg\""
        ),
        Some(1.0)
    );
    assert_eq!(
        sample_with(&metrics, "kpulse_plugin_traps_total", "plugin=\"spin\""),
        Some(3.0)
    );
    assert_eq!(
        sample_with(&metrics, "kpulse_plugin_timeouts_total", "plugin=\"spin\""),
        Some(3.0)
    );
    assert_eq!(
        sample_with(&metrics, "kpulse_plugin_traps_total", "plugin=\"membomb\""),
        Some(3.0)
    );
    assert_eq!(
        sample_with(
            &metrics,
            "kpulse_plugin_restarts_total",
            "plugin=\"panicker\""
        ),
        Some(2.0)
    );
    assert_eq!(
        sample_with(
            &metrics,
            "kpulse_plugin_state",
            "plugin=\"panicker\",state=\"quarantined\""
        ),
        Some(1.0)
    );
    assert_eq!(agent.plugin("loadavg").unwrap()["state"], "running");

    // The escaper is contained without being killed: every attempt failed and was counted.
    let escaper = agent.plugin("escaper").unwrap();
    assert_eq!(escaper["state"], "running");
    assert_eq!(
        escaper["granted_read"],
        serde_json::json!(["/proc", "/sys"])
    );
    assert_eq!(
        sample(&metrics, "kpulse_escaper_leaked{"),
        Some(0.0),
        "{}",
        agent.log()
    );
    assert!(sample(&metrics, "kpulse_escaper_attempts{").is_some_and(|n| n >= 19.0));
    let denied = sample_with(
        &metrics,
        "kpulse_plugin_denied_reads_total",
        "plugin=\"escaper\"",
    )
    .unwrap();
    assert!(denied >= 12.0, "denied reads counted: {denied}");

    // An operator can release a quarantined plugin; it runs (and fails) again.
    assert_eq!(agent.put("/plugins/panicker/start").status, 204);
    agent.wait_state("panicker", "quarantined", timeout);
    let traps = sample_with(
        &agent.metrics(),
        "kpulse_plugin_traps_total",
        "plugin=\"panicker\"",
    )
    .unwrap();
    assert!(
        traps >= 6.0,
        "panicker trapped again after release: {traps}"
    );
}

#[test]
fn not_supported_is_inactive_and_denylist_disables() {
    let agent = Agent::start(
        "inactive",
        &[plugin_wasm("loadavg"), guest_wasm("unsupported")],
        "denylist = [\"loadavg\"]\n",
    );
    let unsupported = agent.wait_state("unsupported", "inactive", Duration::from_secs(10));
    assert_eq!(unsupported["restarts"], 0);
    let loadavg = agent.wait_state("loadavg", "stopped", Duration::from_secs(10));
    assert_eq!(loadavg["last_error"], "disabled by the denylist");
    assert!(!agent.metrics().contains("kpulse_loadavg_load1"));
}
