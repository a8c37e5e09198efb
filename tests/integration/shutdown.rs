//! Stopping the agent: SIGTERM while it is still loading its plugins.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kpulse_integration_tests::{http, kpulse_bin, logged_listen_addr, root, scratch_dir, wait_for};

/// A cold start with every built-in plugin compiles each component first (tens of seconds on
/// this machine), so a SIGTERM right after the API is up arrives while the plugins load. The
/// agent must stop in order and exit 0, not die of the signal's default action (exit 143).
#[test]
fn sigterm_while_plugins_load_stops_in_order() {
    let dir = scratch_dir("shutdown-loading");
    let plugin_dir = dir.join("plugins");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    let mut installed = 0;
    for entry in std::fs::read_dir(root().join("target/plugins")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wasm") {
            std::fs::copy(&path, plugin_dir.join(path.file_name().unwrap())).unwrap();
            installed += 1;
        }
    }
    assert!(installed >= 20, "only {installed} built-in plugins built");
    let config = dir.join("kpulse.toml");
    std::fs::write(
        &config,
        format!(
            "plugin_dir = {plugin_dir:?}\ndata_dir = {:?}\nregion = \"test\"\n",
            dir.join("data")
        ),
    )
    .unwrap();
    let log_path = dir.join("agent.log");
    let mut child = Command::new(kpulse_bin())
        .args(["run", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let addr = wait_for(Duration::from_secs(60), "the listen address", || {
        logged_listen_addr(&log())
    });
    let readyz = http(addr, "GET", "/readyz", &[]).unwrap().status;
    assert_ne!(
        readyz, 204,
        "ready before the SIGTERM: the test needs a slower start"
    );

    let sent = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = wait_for(Duration::from_secs(30), "the agent to exit", || {
        child.try_wait().unwrap()
    });
    let took = sent.elapsed();
    let log = log();
    println!("SIGTERM while loading ({installed} plugins): exited {exited} after {took:?}");
    assert!(exited.success(), "agent exited with {exited}: {log}");
    assert!(
        log.contains("stop requested while loading the plugins") && log.contains("shutting down"),
        "{log}"
    );
}
