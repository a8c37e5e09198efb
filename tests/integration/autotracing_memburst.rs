//! `memburst` on the real kernel: a child (`python3`) that allocates and touches 2 GiB of
//! anonymous memory at once makes Active(anon) + Inactive(anon) grow past thresholds
//! computed from this machine's `/proc/meminfo` when the test starts (this host's RAM is far
//! larger than what a test may allocate, so HUATUO's 70 % of MemTotal is lowered to the
//! current anonymous memory plus three quarters of the allocation). Needs `python3`.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use kpulse_integration_tests::{Agent, plugin_wasm, sample, wait_for};
use serde_json::Value;

const ALLOC: u64 = 2 << 30;
/// 15 samples 1 s apart: the 14 s span covers the several seconds the kernel takes to
/// populate 2 GiB here, so the growth shows within one window.
const WINDOW: u64 = 15;

/// `(Active(anon) + Inactive(anon), MemTotal)` in bytes.
fn anon_and_total() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{key} missing in /proc/meminfo"))
    };
    (
        (kib("Active(anon):") + kib("Inactive(anon):")) * 1024,
        kib("MemTotal:") * 1024,
    )
}

/// A process holding `ALLOC` bytes of touched anonymous memory until dropped.
struct Allocator {
    child: Child,
}

impl Allocator {
    /// Starts the child; it maps and populates the memory in one `mmap(MAP_POPULATE)`
    /// (several seconds of kernel time on this VM), then says `ready` and waits for stdin.
    fn start() -> Allocator {
        let script = format!(
            "import mmap, sys\n\
             m = mmap.mmap(-1, {ALLOC}, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)\n\
             sys.stdout.write('ready\\n')\nsys.stdout.flush()\nsys.stdin.read()\n"
        );
        let child = Command::new("python3")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run python3 ({err}): install python3"));
        Allocator { child }
    }

    /// Waits until the memory is populated.
    fn wait_ready(&mut self) {
        let stdout: ChildStdout = self.child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "python3 allocator failed");
    }
}

impl Drop for Allocator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn documents(agent: &Agent) -> Vec<Value> {
    agent
        .get("/events?tracer=memburst&limit=100")
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn anonymous_memory_burst_saves_the_top_memory_users() {
    let (anon, total) = anon_and_total();
    // Fires on the allocation, not on the noise of other processes below it.
    let anon_threshold = (anon + ALLOC * 3 / 4) as f64 * 100.0 / total as f64;
    // HUATUO's doubling unless anonymous memory is already so large that 2 GiB does not
    // double it: then growth by half the allocation.
    let burst = (50.0 * ALLOC as f64 / anon.max(1) as f64).min(100.0);
    let config = format!(
        "[plugins.memburst]\ninterval = 1\nsliding_window_length = {WINDOW}\n\
         delta_memory_burst = {burst}\ndelta_anon_threshold = {anon_threshold}\n\
         interval_tracing = 60\ndump_process_max_num = 10\n"
    );
    let agent = Agent::start("memburst", &[plugin_wasm("memburst")], &config);
    agent.wait_state("memburst", "running", Duration::from_secs(20));

    // Control: a full window judged several times without the allocation fires nothing.
    let samples = |agent: &Agent| sample(&agent.metrics(), "kpulse_memburst_samples_total");
    let first = wait_for(Duration::from_secs(20), "a first sample", || {
        samples(&agent).filter(|&n| n >= 1.0)
    });
    let (ticks_before, at) = (cpu_ticks(agent.child.id()), Instant::now());
    let judged = wait_for(Duration::from_secs(30), "a full window judged", || {
        samples(&agent).filter(|&n| n >= first + WINDOW as f64 + 2.0)
    });
    let idle_ticks = cpu_ticks(agent.child.id()) - ticks_before;
    eprintln!(
        "idle: agent (memburst alone, plus the test's scrapes) used {} ms CPU over {} samples in {:?}",
        idle_ticks * 10,
        judged - first,
        at.elapsed()
    );
    let metrics = agent.metrics();
    assert_eq!(
        sample(&metrics, "kpulse_memburst_window_samples"),
        Some(WINDOW as f64),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "kpulse_memburst_fired_total"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "kpulse_memburst_cooldown_remaining_seconds"),
        Some(0.0)
    );
    assert!(documents(&agent).is_empty(), "fired without a burst");

    // The trigger condition is met once anonymous memory reaches the floor (the growth
    // over the window is then far above the ratio): timed from there to the document.
    let floor = (anon_threshold / 100.0 * total as f64) as u64;
    let started = Instant::now();
    let mut allocator = Allocator::start();
    let pid = allocator.child.id();
    let mut crossed: Option<Instant> = None;
    let doc = wait_for(Duration::from_secs(60), "the memburst document", || {
        if crossed.is_none() && anon_and_total().0 >= floor {
            crossed = Some(Instant::now());
        }
        documents(&agent).into_iter().next()
    });
    let found = Instant::now();
    eprintln!(
        "document {:?} after the allocation started, {:?} after anonymous memory reached the floor",
        found - started,
        crossed.map(|at| found - at)
    );
    allocator.wait_ready();
    assert_eq!(doc["tracer_type"], "autotracing", "{doc}");
    assert!(doc.get("container_id").is_none(), "{doc}");
    let data = &doc["tracer_data"];
    let top = data["top_memory_usage"].as_array().unwrap();
    assert!(!top.is_empty() && top.len() <= 10, "{data}");
    assert_eq!(top[0]["PID"], pid, "the allocator is the top RSS: {data}");
    assert_eq!(top[0]["ProcessName"], "python3", "{data}");
    // Fired while the mapping was being populated: at least the part above the floor.
    assert!(top[0]["MemSize"].as_u64().unwrap() >= ALLOC / 2, "{data}");
    let sizes: Vec<u64> = top.iter().map(|p| p["MemSize"].as_u64().unwrap()).collect();
    assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{data}");
    let now = data["anon_bytes"].as_u64().unwrap();
    let oldest = data["oldest_anon_bytes"].as_u64().unwrap();
    assert!(
        data["anon_threshold_bytes"]
            .as_u64()
            .unwrap()
            .abs_diff(floor)
            <= 1,
        "{data}"
    );
    assert_eq!(data["mem_total_bytes"].as_u64(), Some(total), "{data}");
    assert!(now >= floor, "{data}");
    assert!(
        now as f64 >= data["threshold_ratio"].as_f64().unwrap() * oldest as f64,
        "{data}"
    );
    assert_eq!(data["sliding_window_length"], WINDOW, "{data}");

    // The burst stays in the window for a few more samples: seen, but cooling down.
    let metrics = wait_for(
        Duration::from_secs(20),
        "a burst during the cool-down",
        || {
            let metrics = agent.metrics();
            (sample(&metrics, "kpulse_memburst_suppressed_total")? >= 1.0).then_some(metrics)
        },
    );
    assert_eq!(
        sample(&metrics, "kpulse_memburst_fired_total"),
        Some(1.0),
        "{metrics}"
    );
    let remaining = sample(&metrics, "kpulse_memburst_cooldown_remaining_seconds").unwrap();
    assert!(remaining > 0.0 && remaining <= 60.0, "{metrics}");
    assert!(sample(&metrics, "kpulse_memburst_anon_bytes").unwrap() >= floor as f64);
    assert_eq!(documents(&agent).len(), 1);
    drop(allocator);
}
