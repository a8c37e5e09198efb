//! Adding, replacing and removing plugins while the agent runs.

use std::time::Duration;

use kpulse_integration_tests::{Agent, guest_wasm, install, plugin_wasm, sample, wait_for};

const RELOAD: Duration = Duration::from_secs(15);

fn marker(agent: &Agent) -> Option<f64> {
    sample(&agent.metrics(), "kpulse_hot_marker{")
}

#[test]
fn add_replace_remove_without_restart() {
    let agent = Agent::start("hot", &[plugin_wasm("loadavg")], "");
    let pid = agent.child.id();
    assert!(agent.plugin("hot").is_none());

    // Add.
    install(&agent.plugin_dir, &guest_wasm("hot-v1"));
    wait_for(RELOAD, "hot v1 to serve", || {
        (marker(&agent) == Some(1.0)).then_some(())
    });
    let v1 = agent.wait_state("hot", "running", RELOAD);
    assert_eq!(v1["version"], "1.0.0");

    // Replace by write-then-rename.
    install(&agent.plugin_dir, &guest_wasm("hot-v2"));
    wait_for(RELOAD, "hot v2 to serve", || {
        (marker(&agent) == Some(2.0)).then_some(())
    });
    let v2 = agent.plugin("hot").unwrap();
    assert_eq!(v2["version"], "2.0.0");
    assert_ne!(v1["sha256"], v2["sha256"]);

    // Replace by an in-place write.
    std::fs::write(
        agent.plugin_dir.join("hot.wasm"),
        std::fs::read(guest_wasm("hot-v1")).unwrap(),
    )
    .unwrap();
    wait_for(RELOAD, "hot v1 to serve again", || {
        (marker(&agent) == Some(1.0)).then_some(())
    });
    assert_eq!(agent.plugin("hot").unwrap()["version"], "1.0.0");

    // Remove.
    std::fs::remove_file(agent.plugin_dir.join("hot.wasm")).unwrap();
    wait_for(RELOAD, "hot to be unloaded", || {
        agent.plugin("hot").is_none().then_some(())
    });
    let metrics = agent.metrics();
    assert!(!metrics.contains("kpulse_hot_marker"), "{metrics}");
    // The other plugin never stopped, and it is the same process throughout.
    assert!(sample(&metrics, "kpulse_loadavg_load1{").is_some());
    assert_eq!(agent.child.id(), pid);
    assert_eq!(agent.plugin("loadavg").unwrap()["restarts"], 0);
}

#[test]
fn broken_replacement_keeps_old_version() {
    let agent = Agent::start("broken", &[guest_wasm("hot-v1")], "");
    agent.wait_state("hot", "running", RELOAD);
    let before = agent.plugin("hot").unwrap();

    // Garbage that fails to compile.
    let tmp = agent.plugin_dir.join(".hot.wasm.tmp");
    std::fs::write(&tmp, b"\0asm this is not a component").unwrap();
    std::fs::rename(&tmp, agent.plugin_dir.join("hot.wasm")).unwrap();
    let after = wait_for(RELOAD, "the rejected replacement to be reported", || {
        agent.plugin("hot").filter(|p| {
            p["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("not a valid kpulse plugin"))
        })
    });
    assert_eq!(after["state"], "running");
    assert_eq!(after["version"], "1.0.0");
    assert_eq!(after["sha256"], before["sha256"]);
    assert_eq!(marker(&agent), Some(1.0));
}

#[test]
fn replacement_failing_init_keeps_old_version() {
    let agent = Agent::start(
        "initfail",
        &[guest_wasm("hot-v1")],
        "[plugins.hot]\nfail_init_version = \"2.0.0\"\n",
    );
    agent.wait_state("hot", "running", RELOAD);
    install(&agent.plugin_dir, &guest_wasm("hot-v2"));
    let after = wait_for(RELOAD, "the rejected replacement to be reported", || {
        agent.plugin("hot").filter(|p| {
            p["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("replacement"))
        })
    });
    let last_error = after["last_error"].as_str().unwrap();
    assert!(
        last_error.contains("init failure requested for 2.0.0"),
        "{last_error}"
    );
    assert_eq!(after["state"], "running");
    assert_eq!(after["version"], "1.0.0");
    assert_eq!(marker(&agent), Some(1.0));
}
