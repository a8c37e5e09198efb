//! A plugin outside this repository (docs/plugin-guide.md, 3.5): a crate in a directory of its
//! own that depends on `kpulse-sdk` by path builds for wasm32-wasip2, validates and loads.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kpulse_integration_tests::{Agent, kpulse_bin, root, sample, scratch_dir, wait_for};

/// The smallest plugin of the guide (tests/guests/minimal), renamed.
const LIB_RS: &str = r#"use kpulse_sdk::prelude::*;

#[derive(Default)]
struct OutsideMinimal;

kpulse_sdk::register! { OutsideMinimal { name: "outside_minimal", capabilities: ["read:/proc/loadavg"] } }

impl Collector for OutsideMinimal {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let load1 = procfs::loadavg()?.load1;
        Ok(vec![metric::gauge("load1", load1, "Load average, 1 min.")])
    }
}
"#;

fn cargo_toml(sdk: &Path) -> String {
    format!(
        r#"[package]
name = "outside-minimal"
description = "The smallest plugin, built outside the kpulse tree"
version = "2.0.0"
edition = "2024"
publish = false

# Its own workspace root even if the temporary directory lies inside another workspace.
[workspace]

[lib]
crate-type = ["cdylib"]

[dependencies]
kpulse-sdk = {{ path = {sdk:?} }}

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
debug = false
strip = true
"#,
        sdk = sdk.display().to_string()
    )
}

/// The first field of /proc/loadavg.
fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn plugin_crate_outside_the_tree_builds_validates_and_loads() {
    let repo = root().canonicalize().unwrap();
    let dir = scratch_dir("sdk-outside");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("Cargo.toml"), cargo_toml(&repo.join("guest-sdk"))).unwrap();
    std::fs::write(dir.join("src/lib.rs"), LIB_RS).unwrap();
    // The versions the tree is tested with, so that the build works offline (Cargo drops the
    // entries the plugin does not use).
    std::fs::copy(repo.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();

    // A target directory of its own (not the workspace's, whose lock the outer `cargo test`
    // may hold), kept under target/ so that a rerun reuses the compiled dependencies.
    let target_dir = repo.join("target/sdk-outside");
    let output = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "--offline",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir)
        .current_dir(&dir)
        // Nothing of the outer build leaks in.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_MANIFEST_DIR")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo build of the outside plugin failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let wasm = target_dir.join("wasm32-wasip2/release/outside_minimal.wasm");
    assert!(wasm.exists(), "{} not built", wasm.display());

    let validate = Command::new(kpulse_bin())
        .args(["plugins", "validate"])
        .arg(&wasm)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&validate.stdout);
    assert!(
        validate.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&validate.stderr)
    );
    assert!(
        stdout.contains("ok: plugin outside_minimal 2.0.0 (metric)"),
        "{stdout}"
    );

    let agent = Agent::start("sdk-outside-agent", &[wasm], "");
    let plugin = agent.wait_state("outside_minimal", "running", Duration::from_secs(30));
    assert_eq!(plugin["version"], "2.0.0", "{plugin}");
    // The gauge is the 1-minute load average at scrape time: between the values read just
    // before and just after the scrape (the kernel updates it every 5 s), to /proc's two
    // decimals. Retried in case a slow scrape straddles more than one update.
    wait_for(
        Duration::from_secs(30),
        "kpulse_outside_minimal_load1 to match /proc/loadavg",
        || {
            let before = load1();
            let metrics = agent.metrics();
            let after = load1();
            let value = sample(&metrics, "kpulse_outside_minimal_load1{")
                .unwrap_or_else(|| panic!("no kpulse_outside_minimal_load1 in\n{metrics}"));
            let (low, high) = (before.min(after) - 0.005, before.max(after) + 0.005);
            (low..=high).contains(&value).then_some(())
        },
    );
    let metrics = agent.metrics();
    assert!(
        metrics.contains("# HELP kpulse_outside_minimal_load1 Load average, 1 min."),
        "{metrics}"
    );
}

/// The guide's promise (issue 8's target): a one-gauge metric plugin in at most 15 lines of
/// Rust beside its `Cargo.toml`, and the one in the tree is the one the guide shows.
#[test]
fn the_smallest_plugin_is_at_most_15_lines_and_the_guide_shows_it() {
    let source = std::fs::read_to_string(root().join("tests/guests/minimal/src/lib.rs")).unwrap();
    let lines = source.lines().count();
    assert!(
        lines <= 15,
        "tests/guests/minimal/src/lib.rs has {lines} lines"
    );
    let guide = std::fs::read_to_string(root().join("docs/plugin-guide.md")).unwrap();
    assert!(
        guide.contains(&source),
        "docs/plugin-guide.md shows tests/guests/minimal/src/lib.rs verbatim"
    );
}
