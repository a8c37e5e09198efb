//! The WIT contract's version check and its trappable imports.

use std::process::Command;

use kpulse_integration_tests::{kpulse_bin, plugin_wasm, scratch_dir};

/// Replaces every occurrence of `from` by `to` (same length) in `bytes`.
fn patch(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = bytes.to_vec();
    let mut at = 0;
    let mut patched = 0;
    while let Some(pos) = out[at..].windows(from.len()).position(|w| w == from) {
        out[at + pos..at + pos + to.len()].copy_from_slice(to);
        at += pos + to.len();
        patched += 1;
    }
    assert!(patched > 0, "nothing to patch");
    out
}

#[test]
fn a_component_built_for_another_contract_version_is_refused_naming_both() {
    // A real plugin whose imports claim a future contract: the component's import names
    // carry the package version, so this is exactly what an SDK for 0.2.0 would produce.
    let original = std::fs::read(plugin_wasm("loadavg")).unwrap();
    let future = patch(
        &original,
        b"kpulse:plugin/fs@0.1.0",
        b"kpulse:plugin/fs@0.9.0",
    );
    let dir = scratch_dir("contract-version");
    let file = dir.join("future.wasm");
    std::fs::write(&file, future).unwrap();

    let output = Command::new(kpulse_bin())
        .args(["plugins", "validate"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}{stderr}");
    let text = format!("{stdout}{stderr}");
    assert!(
        text.contains("kpulse:plugin@0.9.0") && text.contains("kpulse:plugin@0.1.0"),
        "{text}"
    );

    // The unpatched component still validates: the check is about the version only.
    let ok = Command::new(kpulse_bin())
        .args(["plugins", "validate"])
        .arg(plugin_wasm("loadavg"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn a_forged_resource_handle_traps_the_guest_instead_of_getting_an_answer() {
    let agent = kpulse_integration_tests::Agent::start(
        "contract-badhandle",
        &[
            plugin_wasm("loadavg"),
            kpulse_integration_tests::guest_wasm("badhandle"),
        ],
        "[runtime]\nquarantine_after = 1\n",
    );
    let plugin = agent.wait_state(
        "badhandle",
        "quarantined",
        std::time::Duration::from_secs(30),
    );
    let last_error = plugin["last_error"].as_str().unwrap_or_default();
    assert!(last_error.starts_with("start: trap"), "{plugin}");
    assert!(
        !agent.log().contains("answered a forged handle"),
        "the host answered a forged handle: {}",
        agent.log()
    );
    // The rest of the agent is unaffected.
    agent.wait_state("loadavg", "running", std::time::Duration::from_secs(10));
    assert!(kpulse_integration_tests::sample(&agent.metrics(), "kpulse_loadavg_load1{").is_some());
}
