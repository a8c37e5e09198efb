//! Config errors name the key and the line, and stop the agent before it starts.

use std::process::Command;

use kpulse_integration_tests::{kpulse_bin, scratch_dir};

fn check(config: &str) -> (bool, String) {
    let dir = scratch_dir("config");
    let path = dir.join("kpulse.toml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(kpulse_bin())
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        // `run` must refuse the same file with the same message.
        let run = Command::new(kpulse_bin())
            .args(["run", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!run.status.success());
        assert!(String::from_utf8_lossy(&run.stderr).contains(stderr.lines().next().unwrap_or("")));
    }
    (output.status.success(), stderr)
}

#[test]
fn unknown_key_names_key_and_line() {
    let (ok, err) = check("region = \"eu\"\n\n[http]\nlisten_address = \"0.0.0.0:1\"\n");
    assert!(!ok);
    assert!(err.contains("listen_address"), "{err}");
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("kpulse.toml"), "{err}");
}

#[test]
fn wrong_type_and_bad_values_are_named() {
    let (ok, err) = check("[runtime]\ndeadline_ms = \"fast\"\n");
    assert!(!ok);
    assert!(
        err.contains("deadline_ms") && err.contains("line 2"),
        "{err}"
    );

    let (ok, err) = check("[http]\nlisten = \"not an address\"\n");
    assert!(!ok);
    assert!(err.contains("listen"), "{err}");

    let (ok, err) = check("[plugins.loadavg]\nmemory_mib = 0\n");
    assert!(!ok);
    assert!(err.contains("plugins.loadavg.memory_mib"), "{err}");

    let (ok, err) = check("[metrics]\nprefix = \"bad-prefix\"\n");
    assert!(!ok);
    assert!(err.contains("metrics.prefix"), "{err}");
}

#[test]
fn example_config_is_valid() {
    let path = kpulse_integration_tests::root().join("kpulse.example.toml");
    let output = Command::new(kpulse_bin())
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
