//! `kpulse plugins inspect`, `validate` and `load`, and the commands for a running agent
//! (`kpulse status`, `kpulse events [--follow]`) against a real one.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kpulse_integration_tests::{Agent, guest_wasm, kpulse_bin, plugin_wasm, scratch_dir, wait_for};

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

/// `example` saving an autotracing document every 300 ms.
const EXAMPLE_FAST: &str =
    "[plugins.example]\nrunning_per_cpu_threshold = 0.0\ncooldown_secs = 0\ninterval_ms = 300\n";

fn kpulse(args: &[&str]) -> std::process::Output {
    Command::new(kpulse_bin()).args(args).output().unwrap()
}

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{output:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn status_and_events_talk_to_a_running_agent() {
    let agent = Agent::start(
        "cli-remote",
        &[plugin_wasm("example"), plugin_wasm("loadavg")],
        EXAMPLE_FAST,
    );
    agent.wait_state("example", "running", Duration::from_secs(30));
    agent.wait_state("loadavg", "running", Duration::from_secs(30));
    let api = format!("http://{}", agent.addr);

    let table = stdout(&kpulse(&["status", "--api", &api]));
    println!("{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("STATE"),
        "{table}"
    );
    for name in ["example", "loadavg"] {
        let row = lines
            .iter()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing: {table}"));
        assert!(row.contains(" running "), "{row}");
    }
    assert_eq!(lines.last(), Some(&"2 plugins, 2 running"), "{table}");
    // The address from a config file's [http] listen works as well as --api.
    let config = agent.dir.join("client.toml");
    std::fs::write(&config, format!("[http]\nlisten = \"{}\"\n", agent.addr)).unwrap();
    let by_config = stdout(&kpulse(&[
        "status",
        "--config",
        config.to_str().unwrap(),
        "--json",
    ]));
    let listed: serde_json::Value = serde_json::from_str(&by_config).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{by_config}");
    // KPULSE_API is the environment's --api.
    let by_env = Command::new(kpulse_bin())
        .arg("status")
        .env("KPULSE_API", &api)
        .output()
        .unwrap();
    assert!(stdout(&by_env).contains("example"));

    // Stored documents, NDJSON: each line one document of the asked tracer.
    let stored = wait_for(Duration::from_secs(20), "three example documents", || {
        let out = stdout(&kpulse(&[
            "events", "--api", &api, "--tracer", "example", "--limit", "3", "--json",
        ]));
        (out.lines().count() == 3).then_some(out)
    });
    let mut times = Vec::new();
    for line in stored.lines() {
        let doc: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(doc["tracer_name"], "example", "{line}");
        times.push(doc["tracer_time"].as_str().unwrap().to_owned());
    }
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "oldest first");
    // Pretty: one line a document, time then tracer.
    let pretty = stdout(&kpulse(&[
        "events", "--api", &api, "--tracer", "example", "--limit", "2",
    ]));
    println!("{pretty}");
    assert_eq!(pretty.lines().count(), 2, "{pretty}");
    for line in pretty.lines() {
        // `2026-12-02 16:30:24.751 +0000 example  <host>  {"load1":...}`
        assert!(line.starts_with("20"), "{line}");
        assert_eq!(line.split_whitespace().nth(3), Some("example"), "{line}");
        assert!(line.ends_with('}'), "{line}");
    }
    let none = stdout(&kpulse(&[
        "events",
        "--api",
        &api,
        "--tracer",
        "no_such_tracer",
    ]));
    assert_eq!(none, "");
    // Bad input is the agent's 400, said plainly.
    let bad = kpulse(&["events", "--api", &api, "--since", "yesterday"]);
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("400") && stderr.contains("since must be"),
        "{stderr}"
    );

    // --follow: new documents as they are saved, within a couple of seconds.
    let mut follower = Command::new(kpulse_bin())
        .args([
            "events", "--follow", "--json", "--tracer", "example", "--api", &api,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    for _ in 0..2 {
        let line = lines.next().expect("a followed document").unwrap();
        let doc: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(doc["tracer_name"], "example");
        assert!(
            !stored.contains(doc["tracer_id"].as_str().unwrap()),
            "--follow printed a stored document: {line}"
        );
    }
    let waited = started.elapsed();
    println!("--follow: two new documents in {waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    // The reader goes away: the follower ends quietly at its next write (no panic).
    drop(lines);
    let status = wait_for(Duration::from_secs(10), "the follower to exit", || {
        follower.try_wait().unwrap()
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(follower.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // No agent there: a clear error, exit code 1.
    drop(agent);
    let gone = kpulse(&["status", "--api", &api]);
    assert_eq!(gone.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(stderr.contains("cannot reach the agent"), "{stderr}");
    let bad_url = kpulse(&["status", "--api", "ftp://x"]);
    assert_eq!(bad_url.status.code(), Some(1));
}

#[test]
fn plugins_load_validates_then_installs_into_a_running_agent() {
    let agent = Agent::start("cli-load", &[plugin_wasm("example")], "");
    agent.wait_state("example", "running", Duration::from_secs(30));
    let dir = agent.plugin_dir.to_str().unwrap().to_owned();

    // Garbage is refused before anything reaches the plugin directory.
    let garbage = agent.dir.join("garbage.wasm");
    std::fs::write(&garbage, b"definitely not wasm").unwrap();
    let refused = kpulse(&[
        "plugins",
        "load",
        garbage.to_str().unwrap(),
        "--plugin-dir",
        &dir,
    ]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("not a valid kpulse plugin component"),
        "{stderr}"
    );
    let listing = || {
        let mut names: Vec<String> = std::fs::read_dir(&agent.plugin_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(listing(), ["example.wasm"]);

    // A valid component lands as <plugin name>.wasm (whatever the file was called), with no
    // temporary file left, and the running agent starts it.
    let renamed = agent.dir.join("some-build-output.wasm");
    std::fs::copy(plugin_wasm("loadavg"), &renamed).unwrap();
    let out = stdout(&kpulse(&[
        "plugins",
        "load",
        renamed.to_str().unwrap(),
        "--plugin-dir",
        &dir,
    ]));
    println!("{out}");
    assert!(
        out.contains("valid; installed as") && out.contains("loadavg.wasm"),
        "{out}"
    );
    assert_eq!(listing(), ["example.wasm", "loadavg.wasm"]);
    assert_eq!(
        std::fs::read(agent.plugin_dir.join("loadavg.wasm")).unwrap(),
        std::fs::read(plugin_wasm("loadavg")).unwrap()
    );
    agent.wait_state("loadavg", "running", Duration::from_secs(60));

    // The plugin directory from the agent's config file.
    let out = stdout(&kpulse(&[
        "plugins",
        "load",
        plugin_wasm("loadavg").to_str().unwrap(),
        "--config",
        agent.config_path.to_str().unwrap(),
    ]));
    assert!(out.contains(&dir), "{out}");
    let missing_dir = kpulse(&[
        "plugins",
        "load",
        plugin_wasm("loadavg").to_str().unwrap(),
        "--plugin-dir",
        "/nonexistent/plugins",
    ]);
    assert_eq!(missing_dir.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing_dir.stderr).contains("/nonexistent/plugins"));
}

#[test]
fn a_closed_stdout_ends_commands_quietly() {
    // `| true` closes the pipe before kpulse writes; `| head -1` after the first line.
    for reader in ["true", "head -1"] {
        let script = format!(
            "{} plugins inspect {} | {reader}; echo \"status=${{PIPESTATUS[0]}}\" >&2",
            kpulse_bin().display(),
            plugin_wasm("dropwatch").display()
        );
        let out = Command::new("bash").args(["-c", &script]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("status=0"), "{reader}: {stderr}");
        assert!(!stderr.contains("panicked"), "{reader}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{reader}: {stderr}");
    }
    let script = format!(
        "{} routes | true; echo \"status=${{PIPESTATUS[0]}}\" >&2",
        kpulse_bin().display()
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("status=0") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
