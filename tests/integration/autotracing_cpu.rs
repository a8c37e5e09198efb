//! `cpusys` and `cpuidle` on the real kernel with the host's profiler: a real spike, a real
//! profile, a real document.
//!
//! - `cpusys`: `dd if=/dev/zero of=/dev/null bs=1` (two syscalls per byte: kernel-heavy)
//!   makes host sys% jump; the host-wide profile's `dd` subtree must be made of read/write
//!   syscall kernel frames. Control: nothing fires while the host is as it was before.
//! - `cpuidle`: CPU burners started inside idle `ctr` containers (namespace `kptest`, a half
//!   CPU quota each): a C burner built here with frame pointers (`gcc -static
//!   -fno-omit-frame-pointer`, Debian package `gcc`; bind-mounted into the container, so
//!   its symbols are read through the container's mount namespace) whose function `burn`
//!   must be on the hottest path, then busybox's `sh` loop (no frame pointers: only the
//!   command is asserted). Each profile must hold that container's tasks only.
//!
//! Thresholds are lowered and intervals shortened through the plugins' config; the
//! profiles last 3 s.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kpulse_integration_tests::containers::Runtimes;
use kpulse_integration_tests::{Agent, plugin_wasm, sample, sample_with, scratch_dir, wait_for};
use serde_json::Value;

const NS: &str = "kptest";

/// The `dd` tests one at a time: one's spike would fire the other's control phase.
fn dd_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `dd if=/dev/zero of=/dev/null bs=1`: two syscalls per byte.
fn start_dd() -> Running {
    Running(
        Command::new("dd")
            .args(["if=/dev/zero", "of=/dev/null", "bs=1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dd (coreutils)"),
    )
}

const CPUSYS: &str = "[plugins.cpusys]\ninterval = 1\nsys_threshold = 20.0\n\
                      delta_sys_threshold = 10.0\nduration = 3\ninterval_tracing = 3600\n";

/// Kills the child on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn documents(agent: &Agent, tracer: &str, container: &str) -> Vec<Value> {
    let filter = if container.is_empty() {
        String::new()
    } else {
        format!("&container={container}")
    };
    agent
        .get(&format!("/events?tracer={tracer}{filter}&limit=100"))
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Checks the nested set's shape (a `total` root, pre-order levels, every value its self
/// plus its children's) and returns it as `(level, label, value)`.
fn check_flamedata(data: &Value) -> Vec<(u64, String, u64)> {
    let rows: Vec<(u64, String, u64, u64)> = data["flamedata"]
        .as_array()
        .unwrap_or_else(|| panic!("no flamedata: {data}"))
        .iter()
        .map(|r| {
            (
                r["level"].as_u64().unwrap(),
                r["label"].as_str().unwrap().to_owned(),
                r["value"].as_u64().unwrap(),
                r["self"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!((rows[0].0, rows[0].1.as_str()), (0, "total"), "{rows:?}");
    for (i, (level, label, value, own)) in rows.iter().enumerate() {
        let children: u64 = rows[i + 1..]
            .iter()
            .take_while(|r| r.0 > *level)
            .filter(|r| r.0 == level + 1)
            .map(|r| r.2)
            .sum();
        assert_eq!(*value, own + children, "row {i} {label}");
        if i > 0 {
            assert!(*level >= 1 && *level <= rows[i - 1].0 + 1, "row {i}");
        }
    }
    rows.into_iter()
        .map(|(l, label, v, _)| (l, label, v))
        .collect()
}

/// The folded lines as `(frames, value)`, checked against the nested set's total.
fn check_folded(data: &Value, total: u64) -> Vec<(Vec<String>, u64)> {
    let text = data["folded"].as_str().unwrap();
    let lines: Vec<(Vec<String>, u64)> = text
        .lines()
        .map(|line| {
            let (path, value) = line.rsplit_once(' ').unwrap();
            let frames = path.split(';').map(str::to_owned).collect();
            (frames, value.parse().unwrap())
        })
        .collect();
    assert_eq!(lines.iter().map(|l| l.1).sum::<u64>(), total, "{text}");
    lines
}

/// The heaviest path below the level-1 frame `root` (or below the heaviest one when
/// `root` is `None`), from the nested set: at each level the heaviest child.
fn hottest_path(rows: &[(u64, String, u64)], root: Option<&str>) -> Vec<String> {
    let mut path = Vec::new();
    let mut children: Vec<usize> = (1..rows.len()).filter(|&i| rows[i].0 == 1).collect();
    if let Some(root) = root {
        children.retain(|&i| rows[i].1 == root);
    }
    while let Some(&at) = children
        .iter()
        .max_by_key(|&&i| (rows[i].2, std::cmp::Reverse(i)))
    {
        path.push(rows[at].1.clone());
        let level = rows[at].0;
        children = (at + 1..rows.len())
            .take_while(|&i| rows[i].0 > level)
            .filter(|&i| rows[i].0 == level + 1)
            .collect();
    }
    path
}

fn check_profile(data: &Value, target: Value, duration_ms: u64) {
    let profile = &data["profile"];
    assert_eq!(profile["target"], target, "{profile}");
    assert_eq!(profile["mode"], "on_cpu", "{profile}");
    assert_eq!(profile["frequency_hz"], 99, "{profile}");
    let ran = profile["duration_ms"].as_u64().unwrap();
    assert!(
        ran >= duration_ms * 9 / 10 && ran <= duration_ms * 2,
        "{profile}"
    );
    assert!(profile["samples"].as_u64().unwrap() > 0, "{profile}");
    assert!(profile["lost"].as_u64().is_some(), "{profile}");
}

#[test]
fn cpusys_profiles_the_host_when_dd_makes_sys_jump() {
    let _dd = dd_lock();
    let agent = Agent::start("cpusys", &[plugin_wasm("cpusys")], CPUSYS);
    agent.wait_state("cpusys", "running", Duration::from_secs(30));

    // Control: a few intervals of the host as it is, nothing fires.
    wait_for(Duration::from_secs(30), "three cpusys intervals", || {
        (sample(&agent.metrics(), "kpulse_cpusys_intervals_total")? >= 4.0).then_some(())
    });
    let metrics = agent.metrics();
    assert_eq!(sample(&metrics, "kpulse_cpusys_fired_total"), Some(0.0));
    assert!(documents(&agent, "cpusys", "").is_empty());

    let dd = start_dd();
    let docs = wait_for(Duration::from_secs(40), "a cpusys document", || {
        let docs = documents(&agent, "cpusys", "");
        (!docs.is_empty()).then_some(docs)
    });
    drop(dd);
    assert_eq!(docs.len(), 1, "one profile per cooldown: {docs:?}");
    let doc = &docs[0];
    assert_eq!(doc["tracer_type"], "autotracing");
    assert!(doc.get("container_id").is_none_or(Value::is_null), "{doc}");
    let data = &doc["tracer_data"];
    let sys = data["system_percent"].as_f64().unwrap();
    let delta = data["system_percent_delta"].as_f64().unwrap();
    eprintln!("cpusys fired at sys {sys:.1}% (+{delta:.1})");
    assert!(sys > 20.0 && delta > 10.0, "{data}");
    assert_eq!(data["system_percent_threshold"], 20.0);
    assert_eq!(data["system_percent_delta_threshold"], 10.0);
    check_profile(data, serde_json::json!({"kind": "host"}), 3000);

    let rows = check_flamedata(data);
    let folded = check_folded(data, rows[0].2);
    let dd_samples = rows
        .iter()
        .find(|r| r.0 == 1 && r.1 == "dd")
        .map(|r| r.2)
        .unwrap_or_else(|| panic!("no dd in the profile: {}", data["folded"]));
    eprintln!("dd has {dd_samples} of {} samples", rows[0].2);
    assert!(
        dd_samples * 10 >= rows[0].2,
        "dd is at least a tenth of the host"
    );
    // dd's hottest path goes through the read or write syscall, in the kernel.
    let hot = hottest_path(&rows, Some("dd"));
    eprintln!("dd's hottest path: {}", hot.join(";"));
    let syscall = |f: &str| {
        f.ends_with("_[k]")
            && ["read", "write", "zero", "null"]
                .iter()
                .any(|w| f.contains(w))
    };
    assert!(hot.iter().any(|f| syscall(f)), "{hot:?}");
    // And a good part of dd's kernel time is in them (the rest: syscall entry and exit).
    let (mut in_kernel, mut in_syscall) = (0, 0);
    for (frames, value) in folded.iter().filter(|l| l.0[0] == "dd") {
        if frames.iter().any(|f| f.ends_with("_[k]")) {
            in_kernel += value;
        }
        if frames.iter().any(|f| syscall(f)) {
            in_syscall += value;
        }
    }
    eprintln!("dd: {in_kernel} kernel samples, {in_syscall} in read/write");
    assert!(in_syscall * 4 > in_kernel, "{in_syscall} of {in_kernel}");

    let metrics = agent.metrics();
    assert_eq!(sample(&metrics, "kpulse_cpusys_fired_total"), Some(1.0));
    assert_eq!(sample(&metrics, "kpulse_cpusys_profiles_total"), Some(1.0));
    let cooldown = sample(&metrics, "kpulse_cpusys_cooldown_remaining_seconds").unwrap();
    assert!(cooldown > 3500.0 && cooldown <= 3600.0, "{cooldown}");
    assert_eq!(
        sample_with(
            &metrics,
            "kpulse_cpusys_profile_errors_total",
            "reason=\"busy\""
        ),
        Some(0.0)
    );
}

#[test]
fn cpusys_retries_while_the_host_profiler_is_busy() {
    let _dd = dd_lock();
    let config = format!("{CPUSYS}[profiler]\nmax_sessions = 1\n");
    let agent = Agent::start("cpusys-busy", &[plugin_wasm("cpusys")], &config);
    agent.wait_state("cpusys", "running", Duration::from_secs(30));
    wait_for(Duration::from_secs(30), "the cpusys baseline", || {
        (sample(&agent.metrics(), "kpulse_cpusys_intervals_total")? >= 2.0).then_some(())
    });
    // The one session the host allows, taken by an on-demand profile of a sleeper.
    let sleeper = Running(Command::new("sleep").arg("600").spawn().unwrap());
    let task = agent.post_json(
        "/tasks",
        &serde_json::json!({"tracer_name": "cpu_profile", "pid": sleeper.0.id(), "duration": 8}),
    );
    assert_eq!(task.status, 202, "{}", task.body);

    let dd = start_dd();
    let busy = |m: &str| {
        sample_with(m, "kpulse_cpusys_profile_errors_total", "reason=\"busy\"").unwrap_or(0.0)
    };
    wait_for(
        Duration::from_secs(30),
        "cpusys to find the profiler busy",
        || {
            let m = agent.metrics();
            (sample(&m, "kpulse_cpusys_fired_total")? >= 1.0 && busy(&m) >= 1.0).then_some(())
        },
    );
    // The task ends, the pending trigger starts: its document, with the spike that fired.
    let docs = wait_for(
        Duration::from_secs(40),
        "the retried cpusys document",
        || {
            let docs = documents(&agent, "cpusys", "");
            (!docs.is_empty()).then_some(docs)
        },
    );
    drop(dd);
    assert_eq!(docs.len(), 1, "{docs:?}");
    let data = &docs[0]["tracer_data"];
    assert!(data["system_percent"].as_f64().unwrap() > 20.0, "{data}");
    check_profile(data, serde_json::json!({"kind": "host"}), 3000);
    let rows = check_flamedata(data);
    assert!(
        rows.iter().any(|r| r.0 == 1 && r.1 == "dd"),
        "{}",
        data["folded"]
    );
    let metrics = agent.metrics();
    eprintln!("busy answers before the retry started: {}", busy(&metrics));
    assert_eq!(sample(&metrics, "kpulse_cpusys_fired_total"), Some(1.0));
    assert_eq!(sample(&metrics, "kpulse_cpusys_profiles_total"), Some(1.0));
}

/// A C burner with frame pointers: `main` calls `burn`, which never returns.
const BURNER_C: &str = r#"
volatile unsigned long sink;
__attribute__((noinline)) void burn(void) {
    for (;;) {
        for (int i = 0; i < 1000; i++) sink += i;
    }
}
int main(void) {
    burn();
    return 0;
}
"#;

fn build_burner(dir: &std::path::Path) {
    std::fs::write(dir.join("burner.c"), BURNER_C).unwrap();
    let out = Command::new("gcc")
        .args([
            "-O1",
            "-fno-omit-frame-pointer",
            "-static",
            "-o",
            "kpburner",
            "burner.c",
        ])
        .current_dir(dir)
        .output()
        .expect("gcc (Debian package gcc) builds the burner");
    assert!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until the agent has a change (`_delta`) for container `id`: two complete
/// intervals, the first a baseline.
fn wait_watched(agent: &Agent, id: &str) {
    wait_for(
        Duration::from_secs(40),
        &format!("cpuidle to watch {id}"),
        || {
            let label = format!("container_name=\"{id}\"");
            sample_with(
                &agent.metrics(),
                "kpulse_cpuidle_container_total_percent_delta",
                &label,
            )
        },
    );
}

/// Waits for the cpuidle document of container `id` and checks what every one has.
fn cpuidle_document(agent: &Agent, id: &str) -> Value {
    let docs = wait_for(
        Duration::from_secs(60),
        &format!("a cpuidle document of {id}"),
        || {
            let docs = documents(agent, "cpuidle", id);
            (!docs.is_empty()).then_some(docs)
        },
    );
    assert_eq!(docs.len(), 1, "{docs:?}");
    let doc = docs[0].clone();
    assert_eq!(doc["tracer_type"], "autotracing");
    assert_eq!(doc["container_id"], id, "{doc}");
    let data = &doc["tracer_data"];
    for kind in ["user", "system", "total"] {
        for suffix in ["", "_threshold", "_delta", "_delta_threshold"] {
            let key = format!("{kind}_percent{suffix}");
            assert!(data[&key].is_number(), "{key} in {data}");
        }
    }
    let (total, delta) = (
        data["total_percent"].as_f64().unwrap(),
        data["total_percent_delta"].as_f64().unwrap(),
    );
    eprintln!("{id}: cpuidle fired at total {total:.1}% (+{delta:.1})");
    assert!(total > 50.0 && delta > 20.0, "{data}");
    assert_eq!(data["total_percent_threshold"], 50.0);
    check_profile(
        data,
        serde_json::json!({"kind": "container", "value": id}),
        3000,
    );
    doc
}

/// The level-1 frames (commands) of a profile with their samples.
fn roots(rows: &[(u64, String, u64)]) -> BTreeMap<String, u64> {
    rows.iter()
        .filter(|r| r.0 == 1)
        .map(|r| (r.1.clone(), r.2))
        .collect()
}

#[test]
fn cpuidle_profiles_the_container_whose_cpu_jumps() {
    let runtimes = Runtimes::get();
    let dir = scratch_dir("cpuidle");
    build_burner(&dir);
    let pid = std::process::id();
    let (c_id, sh_id) = (format!("idle-c-{pid}"), format!("idle-sh-{pid}"));
    let mount = format!("type=bind,src={},dst=/kp,options=rbind:ro", dir.display());
    let c_box = runtimes.ctr_run(
        NS,
        &c_id,
        &[],
        &["--cpus", "0.5", "--mount", &mount],
        "sleep 100000",
    );
    let sh_box = runtimes.ctr_run(NS, &sh_id, &[], &["--cpus", "0.5"], "sleep 100000");
    let config = format!(
        "[plugins.cpuidle]\ninterval = 1\nuser_threshold = 50.0\ndelta_user_threshold = 20.0\n\
         sys_threshold = 90.0\ndelta_sys_threshold = 50.0\nusage_threshold = 50.0\n\
         delta_usage_threshold = 20.0\nduration = 3\ninterval_tracing = 3600\n{}",
        runtimes.agent_config("")
    );
    let agent = Agent::start("cpuidle", &[plugin_wasm("cpuidle")], &config);
    agent.wait_state("cpuidle", "running", Duration::from_secs(30));
    wait_watched(&agent, &c_id);
    wait_watched(&agent, &sh_id);
    // Control: idle containers give nothing.
    assert!(documents(&agent, "cpuidle", &c_id).is_empty());
    assert!(documents(&agent, "cpuidle", &sh_id).is_empty());

    // The C burner, in the background of an exec (its own stdio, so the exec returns).
    let out = c_box.exec("burn", "/kp/kpburner </dev/null >/dev/null 2>&1 &");
    assert!(out.status.success(), "{out:?}");
    let doc = cpuidle_document(&agent, &c_id);
    let data = &doc["tracer_data"];
    let rows = check_flamedata(data);
    let folded = check_folded(data, rows[0].2);
    // Only the container's tasks were sampled, and they are the burner.
    let commands = roots(&rows);
    assert_eq!(
        commands.keys().collect::<Vec<_>>(),
        ["kpburner"],
        "{commands:?}"
    );
    assert!(folded.iter().all(|l| l.0[0] == "kpburner"));
    let hot = hottest_path(&rows, None);
    eprintln!("{c_id}: hottest path {}", hot.join(";"));
    assert_eq!(hot[0], "kpburner");
    assert!(
        hot[1..].iter().any(|f| f == "burn"),
        "burn symbolized in the container's binary: {hot:?}"
    );
    drop(c_box);

    // busybox's shell loop: the command is all a frame-pointer-less binary gives.
    let out = sh_box.exec("spin", "while :; do :; done </dev/null >/dev/null 2>&1 &");
    assert!(out.status.success(), "{out:?}");
    let doc = cpuidle_document(&agent, &sh_id);
    let rows = check_flamedata(&doc["tracer_data"]);
    check_folded(&doc["tracer_data"], rows[0].2);
    let commands = roots(&rows);
    assert_eq!(commands.keys().collect::<Vec<_>>(), ["sh"], "{commands:?}");
    assert_eq!(hottest_path(&rows, None)[0], "sh");

    let metrics = agent.metrics();
    assert_eq!(sample(&metrics, "kpulse_cpuidle_profiles_total"), Some(2.0));
    let label = format!("container_name=\"{sh_id}\"");
    let cooldown = sample_with(
        &metrics,
        "kpulse_cpuidle_container_cooldown_remaining_seconds",
        &label,
    )
    .unwrap();
    assert!(cooldown > 3500.0, "{cooldown}");
    let _ = std::fs::remove_dir_all(&dir);
}
