//! The host profiler under faults, on the real kernel with real processes (through the tasks
//! API, which is a thin caller of the same service plugins use): a target that exits
//! mid-profile, a binary deleted while it runs, stack maps too small for what is sampled
//! (reported as lost samples, on the task and on `/metrics`), and a pid that does not exist.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kpulse_integration_tests::{Agent, sample, scratch_dir, wait_for};
use serde_json::{Value, json};

fn config(extra: &str) -> String {
    format!("[containers]\nenabled = false\n[profiler]\n{extra}\n")
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn burner(program: &Path) -> Killed {
    Killed(
        Command::new(program)
            .args(["-e", "while (1) {}"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", program.display())),
    )
}

/// Starts a task and waits until it ends; its detail.
fn run_task(agent: &Agent, body: Value) -> Value {
    let reply = agent.post_json("/tasks", &body);
    assert_eq!(reply.status, 202, "{}", reply.body);
    let id = reply.json()["data"]["task_id"]
        .as_str()
        .expect("task id")
        .to_owned();
    wait_for(Duration::from_secs(30), "the task to end", || {
        let task = agent.get(&format!("/tasks/{id}")).json();
        (task["data"]["status"] != "running").then_some(task["data"].clone())
    })
}

fn folded(agent: &Agent, task: &Value) -> String {
    let tracer_id = task["data"]["tracer_id"].as_str().expect("tracer_id");
    // The task ends when its document is queued; the store writes it a moment later.
    let reply = wait_for(Duration::from_secs(10), "the profile document", || {
        let reply = agent.get(&format!("/profiles/{tracer_id}.folded"));
        (reply.status != 404).then_some(reply)
    });
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

#[test]
fn a_target_that_exits_mid_profile_still_gives_its_samples() {
    let agent = Agent::start("prof-exit", &[], &config(""));
    let mut child = burner(Path::new("/usr/bin/perl"));
    let pid = child.0.id();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        let _ = child.0.kill();
        let _ = child.0.wait();
        drop(child);
    });
    let task = run_task(
        &agent,
        json!({"tracer_name": "cpu_profile", "pid": pid, "duration": 3}),
    );
    killer.join().unwrap();
    assert_eq!(task["status"], "done", "{task}");
    let samples = task["data"]["samples"].as_u64().unwrap_or(0);
    // 0.8 s of one busy CPU at 99 Hz is about 79 samples; nothing after the exit.
    assert!((20..=200).contains(&samples), "samples {samples}: {task}");
    let text = folded(&agent, &task);
    assert!(
        text.lines().all(|l| l.starts_with("perl;")),
        "only the target's stacks: {text}"
    );
}

/// A C burner built with frame pointers, whose hot function is `kpulse_burn`.
fn build_burner(dir: &Path) -> std::path::PathBuf {
    let source = dir.join("burner.c");
    std::fs::write(
        &source,
        "__attribute__((noinline)) unsigned long kpulse_burn(unsigned long n) {\n\
         volatile unsigned long x = 0;\n\
         for (unsigned long i = 0; i < n; i++) x += i;\n\
         return x;\n\
         }\n\
         int main(void) { for (;;) kpulse_burn(100000000UL); }\n",
    )
    .unwrap();
    let binary = dir.join("burner");
    let status = Command::new("cc")
        .args(["-O1", "-fno-omit-frame-pointer", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("cc (gcc, which the Rust toolchain needs as its linker)");
    assert!(status.success());
    binary
}

#[test]
fn a_binary_deleted_while_it_runs_is_still_symbolized() {
    let dir = scratch_dir("prof-deleted");
    let binary = build_burner(&dir);
    let child = Killed(Command::new(&binary).spawn().unwrap());
    std::fs::remove_file(&binary).unwrap();
    let agent = Agent::start("prof-deleted", &[], &config(""));
    let task = run_task(
        &agent,
        json!({"tracer_name": "cpu_profile", "pid": child.0.id(), "duration": 1}),
    );
    assert_eq!(task["status"], "done", "{task}");
    assert!(task["data"]["samples"].as_u64().unwrap_or(0) > 20, "{task}");
    let text = folded(&agent, &task);
    // The executable is gone from the file system; /proc/<pid>/map_files still opens it.
    let hottest = text
        .lines()
        .max_by_key(|l| l.rsplit_once(' ').and_then(|(_, n)| n.parse::<u64>().ok()))
        .unwrap_or_default();
    assert!(
        hottest.contains(";main;kpulse_burn"),
        "the burner's own frames, root first: {text}"
    );
}

#[test]
fn stack_maps_too_small_report_lost_samples() {
    let agent = Agent::start("prof-lost", &[], &config("max_stacks = 64"));
    // Many short-lived processes: hundreds of distinct (pid, stack) keys in a second.
    let mut churn = Killed(
        Command::new("sh")
            .args(["-c", "while :; do /bin/true; /bin/ls / > /dev/null; done"])
            .spawn()
            .unwrap(),
    );
    let _burn = burner(Path::new("/usr/bin/perl"));
    let task = run_task(
        &agent,
        json!({"tracer_name": "cpu_profile", "duration": 3, "frequency_hz": 499}),
    );
    let _ = churn.0.kill();
    assert_eq!(task["status"], "done", "{task}");
    let lost = task["data"]["lost"].as_u64().unwrap_or(0);
    assert!(lost > 0, "a 64-entry map overflows: {task}");
    let metrics = agent.metrics();
    let counted = sample(&metrics, "kpulse_profiler_lost_samples_total").unwrap_or(0.0);
    assert!(counted >= lost as f64, "lost {lost}, counted {counted}");
}

#[test]
fn a_pid_that_does_not_exist_is_refused_with_the_reason() {
    let agent = Agent::start("prof-nopid", &[], &config(""));
    let reply = agent.post_json(
        "/tasks",
        &json!({"tracer_name": "cpu_profile", "pid": 999_999_999u32, "duration": 1}),
    );
    assert!(
        (400..500).contains(&reply.status),
        "{} {}",
        reply.status,
        reply.body
    );
    assert!(reply.body.contains("999999999"), "{}", reply.body);
    let metrics = agent.metrics();
    assert_eq!(
        kpulse_integration_tests::sample_with(
            &metrics,
            "kpulse_profiler_sessions_refused_total",
            "reason=\"not_found\""
        ),
        Some(1.0),
        "{metrics}"
    );
}
