//! `kpulse-bench`: end-to-end figures of the agent, measured against the real binary with
//! real components, side by side with node_exporter where a comparison makes sense.
//!
//! Run with `scripts/bench.sh` (it builds everything first). Sections:
//! scrape latency, the full metric catalogue against node_exporter (`catalogue`), hot-reload
//! latency (cached and cold compile), RSS with 10 plugins, idle CPU,
//! ring-buffer throughput (wasm path vs a native aya reader), workload overhead of the event
//! plugins, live indexing into OpenSearch, `storage.save` latency with OpenSearch on.

#![allow(
    clippy::unwrap_used,
    reason = "bench tool: a failed setup step should panic"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kpulse_integration_tests::{Agent, guest_wasm, http, install, plugin_wasm, root, wait_for};

// The full catalogue vs node_exporter (`kpulse-bench catalogue`).
#[path = "../bench_catalogue.rs"]
mod catalogue;
// The per-packet cost of the event plugins, decomposed (`kpulse-bench packets`).
#[path = "../bench_packets.rs"]
mod packets;
// An hour under load with an OpenSearch outage, sampled and plotted (`kpulse-bench soak`).
#[path = "../bench_soak.rs"]
mod soak;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let all = args.is_empty();
    let want = |name: &str| all || args.iter().any(|a| a == name);
    println!("# kpulse-bench ({} CPUs, kernel {})", cpus(), kernel());
    if want("scrape") {
        scrape();
    }
    if want("catalogue") {
        catalogue::catalogue();
    }
    if want("reload") {
        reload();
    }
    if want("footprint") {
        footprint();
    }
    if want("ringbuf") {
        ringbuf();
    }
    if want("overhead") {
        overhead();
    }
    if want("packets") {
        packets::packets();
    }
    if want("indexing") {
        indexing();
    }
    if want("save-latency") {
        save_latency();
    }
    if want("containers-resolve") {
        containers_resolve();
    }
    if want("containers-discovery") {
        containers_discovery();
    }
    if want("containers-memory") {
        containers_memory();
    }
    if want("profile") {
        profile();
    }
    // Not part of "all": an hour by default.
    if args.iter().any(|a| a == "soak") {
        soak::soak();
    }
    // Not part of "all": four runs per event plugin.
    if args.iter().any(|a| a == "overhead-each") {
        overhead_each();
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Installs `count` copies of the bench guest, each patched to a distinct name.
fn install_bench_plugins(plugin_dir: &Path, count: usize) {
    let original = std::fs::read(guest_wasm("bench")).unwrap();
    for i in 0..count {
        let name = format!("benchxx{i}");
        let patched = replace_all(&original, b"benchxx0", name.as_bytes());
        let tmp = plugin_dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, patched).unwrap();
        std::fs::rename(&tmp, plugin_dir.join(format!("{name}.wasm"))).unwrap();
    }
}

fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = haystack.to_vec();
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            i += from.len();
        } else {
            i += 1;
        }
    }
    out
}

fn wait_running(agent: &Agent, count: usize) {
    wait_for(Duration::from_secs(60), "plugins running", || {
        let running = agent
            .plugins()
            .iter()
            .filter(|p| p["state"] == "running")
            .count();
        (running >= count).then_some(())
    });
}

struct Stats {
    median: Duration,
    p99: Duration,
    mean: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / u32::try_from(samples.len()).unwrap();
    Stats {
        median: samples[samples.len() / 2],
        p99: samples[(samples.len() * 99 / 100).min(samples.len() - 1)],
        mean,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn time_scrapes(addr: SocketAddr, path: &str, n: usize) -> (Stats, usize) {
    let mut samples = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n {
        let started = Instant::now();
        let response = http(addr, "GET", path, &[]).unwrap();
        samples.push(started.elapsed());
        assert_eq!(response.status, 200);
        bytes = response.body.len();
    }
    (stats(samples), bytes)
}

fn node_exporter() -> Option<(Child, SocketAddr)> {
    let mut child = Command::new("prometheus-node-exporter")
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let port = kpulse_integration_tests::wait_listening(
        &mut child,
        Duration::from_secs(20),
        "node_exporter",
        String::new,
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for(Duration::from_secs(20), "node_exporter", || {
        http(addr, "GET", "/metrics", &[])
            .ok()
            .filter(|r| r.status == 200)
            .map(|_| ())
    });
    Some((child, addr))
}

fn scrape() {
    println!(
        "\n## /metrics scrape latency (200 sequential scrapes over loopback, after 20 warm-up)"
    );
    println!("| target | median | p99 | mean | body bytes |\n|---|---|---|---|---|");
    for (label, count, builtins) in [
        ("kpulse, 10 simple plugins", 10, false),
        ("kpulse, built-ins + 10 simple plugins", 10, true),
    ] {
        let plugins = if builtins {
            vec![plugin_wasm("loadavg"), plugin_wasm("example")]
        } else {
            Vec::new()
        };
        let agent = Agent::start("bench-scrape", &plugins, "");
        install_bench_plugins(&agent.plugin_dir, count);
        wait_running(&agent, count + plugins.len());
        time_scrapes(agent.addr, "/metrics", 20);
        let (s, bytes) = time_scrapes(agent.addr, "/metrics", 200);
        println!(
            "| {label} | {} | {} | {} | {bytes} |",
            ms(s.median),
            ms(s.p99),
            ms(s.mean)
        );
    }
    if let Some((mut child, addr)) = node_exporter() {
        time_scrapes(addr, "/metrics", 20);
        let (s, bytes) = time_scrapes(addr, "/metrics", 200);
        println!(
            "| node_exporter (Debian, default collectors) | {} | {} | {} | {bytes} |",
            ms(s.median),
            ms(s.p99),
            ms(s.mean)
        );
        let _ = child.kill();
        let _ = child.wait();
    } else {
        println!("| node_exporter | not installed | | | |");
    }
}

fn reload() {
    println!(
        "\n## Hot reload: file renamed into place -> new version serving in /plugins (20 swaps)"
    );
    println!("| compile | median | p99 | mean |\n|---|---|---|---|");
    for (label, extra) in [
        ("cached (.cwasm in the compile cache)", ""),
        (
            "cold (compile_cache = false)",
            "[runtime]\ncompile_cache = false\n",
        ),
    ] {
        let agent = Agent::start("bench-reload", &[guest_wasm("hot-v1")], extra);
        agent.wait_state("hot", "running", Duration::from_secs(30));
        // Warm the cache with both versions.
        let mut samples = Vec::new();
        for round in 0..22 {
            let (file, version) = if round % 2 == 0 {
                ("hot-v2", "2.0.0")
            } else {
                ("hot-v1", "1.0.0")
            };
            let started = Instant::now();
            install(&agent.plugin_dir, &guest_wasm(file));
            loop {
                let plugin = agent.plugin("hot");
                if plugin.is_some_and(|p| p["version"] == version && p["state"] == "running") {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "reload timed out: {}",
                    agent.log()
                );
                std::thread::sleep(Duration::from_micros(500));
            }
            if round >= 2 {
                samples.push(started.elapsed());
            }
        }
        let s = stats(samples);
        println!(
            "| {label} | {} | {} | {} |",
            ms(s.median),
            ms(s.p99),
            ms(s.mean)
        );
    }
}

fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Exact on-CPU time of each live thread of `pid`, summed by thread name, in nanoseconds
/// (`/proc/PID/task/*/schedstat`: the scheduler's own runtime, not tick samples, so it is
/// comparable with CLOCK_THREAD_CPUTIME_ID of the native reader).
fn thread_cpu_ns(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let runtime = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        *by_name.entry(name.trim().to_owned()).or_insert(0) += runtime;
    }
    by_name
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

/// Every built-in plugin component in `target/plugins`.
fn builtin_plugins() -> Vec<PathBuf> {
    let mut plugins: Vec<PathBuf> = std::fs::read_dir(root().join("target/plugins"))
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
                .collect()
        })
        .unwrap_or_default();
    plugins.sort();
    plugins
}

/// RSS and CPU of a process over `seconds`, as a table row.
fn idle_row(label: &str, pid: u32, seconds: u64, start_cpu: f64) -> String {
    let cpu = proc_cpu_seconds(pid) - start_cpu;
    format!(
        "| {label} | {:.1} MiB | {:.2} s | {:.3} % |",
        rss_mib(pid),
        cpu,
        cpu / seconds as f64 * 100.0
    )
}

fn footprint() {
    let seconds = 30;
    println!("\n## Footprint: RSS and idle CPU over {seconds} s without scrapes (side by side)");
    println!("| process | RSS | CPU over {seconds} s | % of one core |\n|---|---|---|---|");
    // The simple configuration: two small plugins and ten copies of a trivial guest.
    let simple = Agent::start(
        "bench-idle",
        &[plugin_wasm("loadavg"), plugin_wasm("example")],
        "",
    );
    install_bench_plugins(&simple.plugin_dir, 10);
    wait_running(&simple, 12);
    simple.metrics();
    // The real one: every built-in plugin, most of them BPF event collectors.
    let builtins = builtin_plugins();
    let real = start_settled("bench-idle-builtin", &builtins);
    // The same plugins under another kpulse binary (an earlier build), for a before/after
    // comparison in one run: `KPULSE_BENCH_BASELINE=/path/to/kpulse`.
    // Only the plugins that binary can load (`plugins validate`): newer ones may import
    // interfaces it lacks. This binary runs the same set beside it.
    let baseline = std::env::var_os("KPULSE_BENCH_BASELINE").map(|bin| {
        let bin = PathBuf::from(bin);
        let common: Vec<PathBuf> = builtins
            .iter()
            .filter(|plugin| {
                Command::new(&bin)
                    .args(["plugins", "validate"])
                    .arg(plugin)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success())
            })
            .cloned()
            .collect();
        let before = with_kpulse_bin(&bin, || start_settled("bench-idle-baseline", &common));
        let after = start_settled("bench-idle-common", &common);
        (bin, common.len(), before, after)
    });
    let exporter = node_exporter();
    // Let start-up allocations settle before measuring the steady state.
    std::thread::sleep(Duration::from_secs(5));
    let simple_pid = simple.child.id();
    let real_pid = real.child.id();
    let start_simple = proc_cpu_seconds(simple_pid);
    let start_real = proc_cpu_seconds(real_pid);
    let start_baseline = baseline.as_ref().map(|(_, _, before, after)| {
        (
            proc_cpu_seconds(before.child.id()),
            proc_cpu_seconds(after.child.id()),
        )
    });
    let start_exporter = exporter.as_ref().map(|(c, _)| proc_cpu_seconds(c.id()));
    std::thread::sleep(Duration::from_secs(seconds));
    println!(
        "{}",
        idle_row(
            "kpulse, 12 plugins (loadavg, example ticking every 1 s, 10 simple)",
            simple_pid,
            seconds,
            start_simple
        )
    );
    let names: Vec<String> = builtins
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    println!(
        "{}",
        idle_row(
            &format!(
                "kpulse, every built-in plugin ({}: {})",
                names.len(),
                names.join(", ")
            ),
            real_pid,
            seconds,
            start_real
        )
    );
    if let (Some((bin, count, before, after)), Some((start_before, start_after))) =
        (&baseline, start_baseline)
    {
        let label = format!("baseline {}, the {count} plugins it loads", bin.display());
        println!(
            "{}",
            idle_row(&label, before.child.id(), seconds, start_before)
        );
        let label = format!("kpulse, the same {count} plugins");
        println!(
            "{}",
            idle_row(&label, after.child.id(), seconds, start_after)
        );
    }
    if let (Some((mut child, _)), Some(start)) = (exporter, start_exporter) {
        println!(
            "{}",
            idle_row("node_exporter, idle", child.id(), seconds, start)
        );
        let _ = child.kill();
        let _ = child.wait();
    }
    println!("\nWhere the RSS goes (`/proc/PID/smaps`, MiB):\n");
    println!("| agent | {} |", SmapsBreakdown::COLUMNS.join(" | "));
    println!("|---|{}", "---|".repeat(SmapsBreakdown::COLUMNS.len()));
    println!(
        "| {} plugins | {} |",
        names.len(),
        SmapsBreakdown::of(real_pid)
    );
    if let Some((_, count, before, after)) = &baseline {
        let pid = before.child.id();
        println!(
            "| baseline, {count} plugins | {} |",
            SmapsBreakdown::of(pid)
        );
        let pid = after.child.id();
        println!("| {count} plugins | {} |", SmapsBreakdown::of(pid));
    }
    // A restart of the same agent: every component now comes from the compile cache.
    let dir = real.dir.clone();
    drop(real);
    let restarted = Agent::start_in(dir, "");
    wait_settled(&restarted, builtins.len());
    // The shared kernel BTF is dropped 10 s after the last BPF load.
    std::thread::sleep(Duration::from_secs(15));
    let pid = restarted.child.id();
    println!(
        "| {} plugins, restarted on a warm compile cache ({:.1} MiB) | {} |",
        names.len(),
        rss_mib(pid),
        SmapsBreakdown::of(pid)
    );
}

/// Starts an agent with `plugins` and waits until none is starting any more, then scrapes once.
fn start_settled(label: &str, plugins: &[PathBuf]) -> Agent {
    let agent = Agent::start(label, plugins, "");
    wait_settled(&agent, plugins.len());
    agent
}

fn wait_settled(agent: &Agent, count: usize) {
    wait_for(Duration::from_secs(180), "plugins settled", || {
        let plugins = agent.plugins();
        let settled = plugins.iter().filter(|p| p["state"] != "starting").count();
        (plugins.len() == count && settled == count).then_some(())
    });
    agent.metrics();
}

/// Runs `start` with the harness pointed at another kpulse binary (`KPULSE_BIN`).
fn with_kpulse_bin<T>(bin: &Path, start: impl FnOnce() -> T) -> T {
    let previous = std::env::var_os("KPULSE_BIN");
    // SAFETY: the bench is single-threaded here; agents are child processes.
    #[allow(unsafe_code, reason = "setting an environment variable")]
    unsafe {
        std::env::set_var("KPULSE_BIN", bin);
    }
    let value = start();
    // SAFETY: as above.
    #[allow(unsafe_code, reason = "restoring an environment variable")]
    unsafe {
        match previous {
            Some(previous) => std::env::set_var("KPULSE_BIN", previous),
            None => std::env::remove_var("KPULSE_BIN"),
        }
    }
    value
}

/// An agent's resident memory by kind of mapping, from `/proc/PID/smaps`.
#[derive(Default)]
struct SmapsBreakdown {
    /// Compiled components mapped from the compile cache (code, data, CoW memory images).
    cwasm: u64,
    /// The kpulse binary's own mappings (text, read-only data, relocated data).
    binary: u64,
    /// BPF maps and ring buffers mapped into the agent.
    bpf: u64,
    /// The main malloc arena.
    heap: u64,
    /// Unnamed anonymous mappings: other malloc arenas, thread stacks, linear memories.
    anonymous: u64,
    /// Everything else (shared libraries, vdso, stack).
    other: u64,
}

impl SmapsBreakdown {
    const COLUMNS: [&str; 7] = [
        "compiled components",
        "binary",
        "BPF maps",
        "main heap",
        "other anonymous (arenas, stacks, linear memories)",
        "other",
        "total",
    ];

    fn of(pid: u32) -> Self {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
        let mut breakdown = Self::default();
        let mut name = String::new();
        for line in smaps.lines() {
            let mut fields = line.split_whitespace();
            let first = fields.next().unwrap_or("");
            if first.contains('-') && !first.ends_with(':') {
                name = fields.nth(4).unwrap_or("").to_owned();
                continue;
            }
            if first != "Rss:" {
                continue;
            }
            let kib: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let slot = if name.ends_with(".cwasm") {
                &mut breakdown.cwasm
            } else if name.ends_with("/kpulse") {
                &mut breakdown.binary
            } else if name.starts_with("anon_inode:bpf") {
                &mut breakdown.bpf
            } else if name == "[heap]" {
                &mut breakdown.heap
            } else if name.is_empty() {
                &mut breakdown.anonymous
            } else {
                &mut breakdown.other
            };
            *slot += kib;
        }
        breakdown
    }
}

impl std::fmt::Display for SmapsBreakdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts = [
            self.cwasm,
            self.binary,
            self.bpf,
            self.heap,
            self.anonymous,
            self.other,
        ];
        let total: u64 = parts.iter().sum();
        let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
        let cells: Vec<String> = parts.iter().map(|&kib| mib(kib)).collect();
        write!(f, "{} | {}", cells.join(" | "), mib(total))
    }
}

// ---------------------------------------------------------------------------------------
// Ring buffer: sched_switch records through the host into a wasm guest, against a native
// aya reader of the same program, under the same context-switch load.

/// Threads that call sched_yield in a loop, pinned to `cpus` (two per CPU: every yield is
/// a context switch). Dropping the value stops them.
struct SwitchLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl SwitchLoad {
    fn start(cpus: &[usize]) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut threads = Vec::new();
        for &cpu in cpus {
            for _ in 0..2 {
                let stop = stop.clone();
                threads.push(std::thread::spawn(move || {
                    pin_to(cpu);
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        // SAFETY: sched_yield has no preconditions.
                        #[allow(unsafe_code, reason = "sched_yield")]
                        unsafe {
                            libc::sched_yield();
                        }
                        n += 1;
                    }
                    n
                }));
            }
        }
        Self { stop, threads }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap_or(0))
            .sum()
    }
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within its bounds for cpu < 1024.
    #[allow(unsafe_code, reason = "sched_setaffinity")]
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    #[allow(unsafe_code, reason = "clock_gettime")]
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Native reader: aya + tokio AsyncFd with the same 10 ms drain as the host, decoding the
/// same fields as the ringbench guest. Returns (records, reader CPU seconds, drops).
fn native_reader(seconds: u64) -> (u64, f64, u64) {
    use aya::maps::RingBuf;
    use aya::programs::BtfTracePoint;
    let object =
        std::fs::read(kpulse_integration_tests::root().join("ebpf/build/sched_switch.bpf.o"))
            .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    pin_to(0);
    runtime.block_on(async move {
        let btf = aya::Btf::from_sys_fs().unwrap();
        let mut ebpf = aya::Ebpf::load(&object).unwrap();
        let program: &mut BtfTracePoint = ebpf
            .program_mut("sched_switch")
            .unwrap()
            .try_into()
            .unwrap();
        program.load("sched_switch", &btf).unwrap();
        program.attach().unwrap();
        let ring = RingBuf::try_from(ebpf.take_map("events").unwrap()).unwrap();
        // SAFETY: the AsyncFd owns the ring buffer and thus its fd.
        #[allow(unsafe_code, reason = "registering an owned fd with tokio")]
        let mut fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)
        .unwrap();
        let cpu_start = thread_cpu_seconds();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
        let (mut records, mut checksum) = (0u64, 0u64);
        while tokio::time::Instant::now() < deadline {
            tokio::select! {
                ready = fd.readable_mut() => { if let Ok(mut g) = ready { g.clear_ready(); } }
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
            let ring = fd.get_mut();
            while let Some(item) = ring.next() {
                records += 1;
                let u32_at =
                    |o: usize| u32::from_le_bytes(item[o..o + 4].try_into().unwrap_or([0; 4]));
                checksum = checksum.wrapping_add(
                    u64::from(u32_at(16)) ^ u64::from(u32_at(48)) ^ u64::from(u32_at(4)),
                );
            }
        }
        let cpu = thread_cpu_seconds() - cpu_start;
        std::hint::black_box(checksum);
        let drops = aya::maps::PerCpuArray::<_, u64>::try_from(ebpf.map("stats").unwrap())
            .ok()
            .and_then(|stats| stats.get(&1, 0).ok())
            .map(|values| values.iter().sum())
            .unwrap_or(0);
        (records, cpu, drops)
    })
}

fn ringbuf() {
    let seconds = 10;
    println!(
        "\n## Ring buffer: sched_switch records, {seconds} s per row, same load (2 sched_yield threads per loaded CPU)"
    );
    println!(
        "| reader | load on | records/s | reader CPU (% of a core) | ns CPU per record | drops |\n|---|---|---|---|---|---|"
    );
    for (label, cpus) in [("CPU1", vec![1]), ("CPU0+CPU1", vec![0, 1])] {
        let load = SwitchLoad::start(&cpus);
        std::thread::sleep(Duration::from_millis(500));
        let (records, cpu, drops) = native_reader(seconds);
        println!(
            "| native aya reader (1 thread) | {label} | {:.0} | {:.1} % | {:.0} | {drops} |",
            records as f64 / seconds as f64,
            cpu / seconds as f64 * 100.0,
            cpu * 1e9 / records.max(1) as f64
        );
        let agent = Agent::start(
            "bench-ring",
            &[guest_wasm("ringbench")],
            "[policy]\nbpf_allow = [\"ringbench\"]\n",
        );
        agent.wait_state("ringbench", "running", Duration::from_secs(20));
        std::thread::sleep(Duration::from_secs(1));
        let read = |agent: &Agent| {
            let m = agent.metrics();
            let records = kpulse_integration_tests::sample(&m, "kpulse_ringbench_records_total{")
                .unwrap_or(0.0);
            let drops = kpulse_integration_tests::sample_with(
                &m,
                "kpulse_plugin_bpf_ring_full_drops_total",
                "plugin=\"ringbench\"",
            )
            .unwrap_or(0.0);
            (records, drops)
        };
        let pid = agent.child.id();
        let (r0, d0) = read(&agent);
        let c0 = thread_cpu_ns(pid);
        std::thread::sleep(Duration::from_secs(seconds));
        let (r1, d1) = read(&agent);
        let c1 = thread_cpu_ns(pid);
        let records = (r1 - r0).max(1.0);
        let used = |pick: &dyn Fn(&str) -> bool| -> f64 {
            c1.iter()
                .filter(|(name, _)| pick(name))
                .map(|(name, end)| end.saturating_sub(c0.get(name).copied().unwrap_or(0)) as f64)
                .sum::<f64>()
        };
        let total = used(&|_| true);
        let reader = used(&|n| n.starts_with("tokio-rt"));
        let guest = used(&|n| n.starts_with("plugin-"));
        println!(
            "| kpulse host → wasm guest (whole agent process) | {label} | {:.0} | {:.1} % | {:.0} (reader {:.0}, guest {:.0}, other {:.0}) | {:.0} |",
            records / seconds as f64,
            total / 1e9 / seconds as f64 * 100.0,
            total / records,
            reader / records,
            guest / records,
            (total - reader - guest) / records,
            d1 - d0
        );
        drop(agent);
        let switches = load.finish();
        std::hint::black_box(switches);
    }
}

// ---------------------------------------------------------------------------------------
// Overhead: a context-switch- and packet-heavy workload with and without the event plugins.

/// Runs the workload for `seconds`: sched_yield pairs on both CPUs and a loopback UDP
/// sender/receiver pair; returns (yields/s, packets/s).
fn workload(seconds: u64) -> (f64, f64) {
    let load = SwitchLoad::start(&[0, 1]);
    let started = Instant::now();
    let packets_per_second = packets::udp_flood(seconds);
    let yields = load.finish();
    (
        yields as f64 / started.elapsed().as_secs_f64(),
        packets_per_second,
    )
}

fn overhead() {
    let seconds = 8;
    let rounds = 8;
    let plugins: Vec<_> = [
        "dropwatch",
        "softirq",
        "oom",
        "hungtask",
        "memreclaim",
        "net_rx_latency",
        "softlockup",
    ]
    .iter()
    .map(|p| plugin_wasm(p))
    .filter(|p| p.exists())
    .collect();
    println!(
        "\n## Workload overhead: sched_yield on both CPUs + loopback UDP, {seconds} s runs, {rounds} paired rounds in ABBA order"
    );
    println!(
        "event plugins loaded: {}",
        plugins
            .iter()
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| round | order | without agent: yields/s | with agent: yields/s | without: packets/s | with: packets/s |\n|---|---|---|---|---|---|"
    );
    // Paired rounds in ABBA order (without/with, then with/without, ...), so a drift of the
    // machine's speed over the run cancels out instead of biasing one side.
    let (mut yield_ratios, mut packet_ratios) = (Vec::new(), Vec::new());
    // Throughput is measured with run-time statistics off (counting adds two clock reads
    // to every program run); the kernel's per-program BPF run time is measured in one more
    // with-agent run afterwards, with statistics on, and the agent's own CPU in every one.
    let stats_was =
        std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    let mut cost: std::collections::BTreeMap<String, (f64, f64)> =
        std::collections::BTreeMap::new();
    let (mut agent_ns, mut measured_secs, mut bpf_secs) = (0.0f64, 0.0f64, 0.0f64);
    let mut measure_with = |count_bpf: bool| {
        // Programs that exist without the agent (systemd's, ...) are not ours.
        let foreign: Vec<String> = bpf_program_stats().into_keys().collect();
        let agent = Agent::start(
            "bench-overhead",
            &plugins,
            "[metrics]\nbpf_cost_every_secs = 0\n",
        );
        for p in &plugins {
            agent.wait_state(
                &p.file_stem().unwrap().to_string_lossy(),
                "running",
                Duration::from_secs(30),
            );
        }
        if count_bpf {
            let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
        }
        let bpf0 = bpf_program_stats();
        let agent0: u64 = thread_cpu_ns(agent.child.id()).values().sum();
        let started = Instant::now();
        let result = workload(seconds);
        let elapsed = started.elapsed().as_secs_f64();
        let agent1: u64 = thread_cpu_ns(agent.child.id()).values().sum();
        if count_bpf {
            for (name, (ns, runs)) in bpf_program_stats() {
                if foreign.contains(&name) {
                    continue;
                }
                let (ns0, runs0) = bpf0.get(&name).copied().unwrap_or((0, 0));
                let entry = cost.entry(name).or_insert((0.0, 0.0));
                entry.0 += (ns - ns0) as f64;
                entry.1 += (runs - runs0) as f64;
            }
            let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
            bpf_secs += elapsed;
        } else {
            agent_ns += (agent1 - agent0) as f64;
            measured_secs += elapsed;
        }
        drop(agent);
        result
    };
    for round in 1..=rounds {
        let with_first = round % 2 == 0;
        let ((by, bp), (wy, wp)) = if with_first {
            let with = measure_with(false);
            (workload(seconds), with)
        } else {
            let without = workload(seconds);
            (without, measure_with(false))
        };
        let order = if with_first {
            "with first"
        } else {
            "without first"
        };
        println!("| {round} | {order} | {by:.0} | {wy:.0} | {bp:.0} | {wp:.0} |");
        yield_ratios.push(wy / by);
        packet_ratios.push(wp / bp);
    }
    let summary = |ratios: &mut Vec<f64>| {
        ratios.sort_by(f64::total_cmp);
        let n = ratios.len() as f64;
        let mean = ratios.iter().sum::<f64>() / n;
        let var = ratios.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        let stderr = (var / n).sqrt();
        let median = ratios[ratios.len() / 2];
        format!(
            "mean {:+.2} % ± {:.2} % (95 % CI, t≈2.4), median {:+.2} %",
            (1.0 - mean) * 100.0,
            2.4 * stderr * 100.0,
            (1.0 - median) * 100.0
        )
    };
    println!(
        "slowdown with all event plugins (positive = slower): context switches {}; packets {}",
        summary(&mut yield_ratios),
        summary(&mut packet_ratios)
    );
    measure_with(true);
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_was.trim());
    let capacity_ns = measured_secs * 1e9 * cpus() as f64;
    let bpf_capacity_ns = bpf_secs * 1e9 * cpus() as f64;
    println!(
        "\nCPU accounting ({} CPUs): kernel BPF run time per program in one extra with-agent run ({bpf_secs:.0} s, statistics on only there), and the agent process over the with-agent rounds ({measured_secs:.0} s)",
        cpus()
    );
    println!("| program | runs/s | ns per run | share of the machine's CPU |\n|---|---|---|---|");
    let mut bpf_total = 0.0;
    for (name, (ns, runs)) in &cost {
        if *runs == 0.0 {
            continue;
        }
        bpf_total += ns;
        println!(
            "| {name} | {:.0} | {:.0} | {:.3} % |",
            runs / bpf_secs,
            ns / runs,
            ns / bpf_capacity_ns * 100.0
        );
    }
    println!(
        "| **BPF total** | | | **{:.3} %** |\n| agent process (all threads) | | | {:.3} % |\n| **kpulse total** | | | **{:.3} %** |",
        bpf_total / bpf_capacity_ns * 100.0,
        agent_ns / capacity_ns * 100.0,
        bpf_total / bpf_capacity_ns * 100.0 + agent_ns / capacity_ns * 100.0
    );
}

/// A bench knob from the environment: `name` parsed, or `default` when unset or unparsable.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Run time (ns) and run count of every loaded BPF program, by name (bpftool; needs
/// kernel.bpf_stats_enabled = 1 to count).
fn bpf_program_stats() -> std::collections::BTreeMap<String, (u64, u64)> {
    let mut stats = std::collections::BTreeMap::new();
    for (name, ns, runs) in bpf_program_stats_by_id().into_values() {
        let entry = stats.entry(name).or_insert((0, 0));
        entry.0 += ns;
        entry.1 += runs;
    }
    stats
}

/// Every loaded BPF program's (name, run time ns, run count), by program id (`bpftool`).
fn bpf_program_stats_by_id() -> std::collections::BTreeMap<u64, (String, u64, u64)> {
    let output = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let programs: serde_json::Value =
        serde_json::from_slice(&output).unwrap_or(serde_json::Value::Null);
    programs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["id"].as_u64()?,
                (
                    p["name"].as_str().unwrap_or("?").to_owned(),
                    p["run_time_ns"].as_u64().unwrap_or(0),
                    p["run_cnt"].as_u64().unwrap_or(0),
                ),
            ))
        })
        .collect()
}

/// The workload with one event plugin at a time: which hooks cost what. Two paired rounds
/// (ABBA) per plugin, the mean of the paired ratios.
fn overhead_each() {
    let seconds = 8;
    println!(
        "\n## Workload overhead per event plugin: same workload, {seconds} s runs, 2 paired rounds (ABBA) each"
    );
    println!("| plugin | context switches: slowdown | packets: slowdown |\n|---|---|---|");
    for name in [
        "dropwatch",
        "softirq",
        "oom",
        "hungtask",
        "memreclaim",
        "net_rx_latency",
        "softlockup",
    ] {
        let plugin = plugin_wasm(name);
        let with = || {
            let agent = Agent::start("bench-overhead-each", std::slice::from_ref(&plugin), "");
            agent.wait_state(name, "running", Duration::from_secs(30));
            let result = workload(seconds);
            drop(agent);
            result
        };
        let (mut yields, mut packets) = (0.0, 0.0);
        for with_first in [false, true] {
            let ((by, bp), (wy, wp)) = if with_first {
                let w = with();
                (workload(seconds), w)
            } else {
                let b = workload(seconds);
                (b, with())
            };
            yields += wy / by / 2.0;
            packets += wp / bp / 2.0;
        }
        println!(
            "| {name} | {:+.1} % | {:+.1} % |",
            (1.0 - yields) * 100.0,
            (1.0 - packets) * 100.0
        );
    }
}

// ---------------------------------------------------------------------------------------
// Live indexing: documents saved by a guest, through the store and the OpenSearch sink,
// indexed by a real node (scripts/opensearch.sh start).

fn indexing() {
    let url =
        std::env::var("OPENSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".to_owned());
    let seconds = 15;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    println!(
        "\n## OpenSearch: live indexing end to end ({url}, one node, {seconds} s per row after 3 s warm-up)"
    );
    println!(
        "| offered docs/s | saved docs/s | indexed docs/s | spool backlog at end | bulk body B/doc | agent CPU (% of a core) | µs agent CPU per doc |\n|---|---|---|---|---|---|---|"
    );
    for per_tick in [20u64, 100, 200] {
        let config = format!(
            "[plugins.docgen]\nper_tick = {per_tick}\ntick_ms = 10\n\n[storage.opensearch]\naddresses = [\"{url}\"]\nindex = \"kpulse-bench-{stamp}-{per_tick}\"\n"
        );
        let agent = Agent::start("bench-indexing", &[guest_wasm("docgen")], &config);
        agent.wait_state("docgen", "running", Duration::from_secs(20));
        std::thread::sleep(Duration::from_secs(3));
        let read = |agent: &Agent| {
            let m = agent.metrics();
            let get = |name: &str| kpulse_integration_tests::sample(&m, name).unwrap_or(0.0);
            (
                get("kpulse_docgen_saved_total{"),
                get("kpulse_opensearch_documents_indexed_total"),
                get("kpulse_opensearch_bulk_bytes_total"),
                get("kpulse_opensearch_spooled"),
            )
        };
        let pid = agent.child.id();
        let (s0, i0, b0, _) = read(&agent);
        let c0: u64 = thread_cpu_ns(pid).values().sum();
        std::thread::sleep(Duration::from_secs(seconds));
        let (s1, i1, b1, backlog) = read(&agent);
        let c1: u64 = thread_cpu_ns(pid).values().sum();
        let indexed = (i1 - i0).max(1.0);
        let cpu = (c1 - c0) as f64;
        println!(
            "| {} | {:.0} | {:.0} | {backlog:.0} | {:.0} | {:.1} % | {:.1} |",
            per_tick * 100,
            (s1 - s0) / seconds as f64,
            (i1 - i0) / seconds as f64,
            (b1 - b0) / indexed,
            cpu / 1e9 / seconds as f64 * 100.0,
            cpu / 1e3 / indexed
        );
    }
}

// ---------------------------------------------------------------------------------------
// storage.save latency as a guest sees it, with the OpenSearch sink on (spool append, and an
// fsync of the spool every 100 ms while documents arrive). The docgen guest times each call
// with the host's monotonic clock and exports the quantiles since the previous scrape.
// KPULSE_BENCH_HOSTS="label=path,label=path" measures several kpulse binaries in the same run
// (same node, same guest, interleaved); default: the binary under test (KPULSE_BIN).

fn save_latency() {
    let url =
        std::env::var("OPENSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".to_owned());
    let seconds = 15;
    let rounds = 2;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let hosts: Vec<(String, PathBuf)> = match std::env::var("KPULSE_BENCH_HOSTS") {
        Ok(list) => list
            .split(',')
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let (label, path) = entry
                    .split_once('=')
                    .unwrap_or_else(|| panic!("KPULSE_BENCH_HOSTS: {entry:?} is not label=path"));
                (label.to_owned(), PathBuf::from(path))
            })
            .collect(),
        Err(_) => vec![(
            "under test".to_owned(),
            kpulse_integration_tests::kpulse_bin(),
        )],
    };
    println!(
        "\n## storage.save latency with OpenSearch on ({url}, one node; {seconds} s per row after 3 s warm-up; hosts interleaved, ABBA over {rounds} rounds; then a control row per host without a sink)"
    );
    for (label, bin) in &hosts {
        println!("- {label}: {}", bin.display());
    }
    println!(
        "\n| host | sink | offered docs/s | round | saves timed | p50 | p99 | p99.9 | max | mean | refused |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for docs_per_s in [2000u64, 10000] {
        let per_tick = docs_per_s / 100;
        let mut runs = Vec::new();
        for round in 0..rounds {
            // ABBA order across rounds, so a drift of the machine does not favour one host.
            let mut order: Vec<&(String, PathBuf)> = hosts.iter().collect();
            if round % 2 == 1 {
                order.reverse();
            }
            runs.extend(order.into_iter().map(|host| (host, true, round + 1)));
        }
        runs.extend(hosts.iter().map(|host| (host, false, 1)));
        for ((label, bin), sink, round) in runs {
            let index = sink.then(|| {
                let short: String = label.chars().filter(char::is_ascii_alphanumeric).collect();
                format!(
                    "kpulse-bench-save-{stamp}-{docs_per_s}-{round}-{}",
                    short.to_ascii_lowercase()
                )
            });
            let row = save_latency_run(bin, &url, index.as_deref(), per_tick, seconds);
            println!(
                "| {label} | {} | {docs_per_s} | {round} | {} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs | {} |",
                if sink {
                    "OpenSearch"
                } else {
                    "none (local files)"
                },
                row.saves,
                row.p50_us,
                row.p99_us,
                row.p999_us,
                row.max_us,
                row.mean_us,
                row.refused
            );
            if let Some(index) = &index {
                delete_index(&url, index);
            }
        }
    }
}

struct SaveLatency {
    saves: u64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    mean_us: f64,
    refused: u64,
}

/// One agent with the docgen guest at `per_tick` documents per 10 ms, with the OpenSearch
/// sink writing to `index` (none: local files only).
fn save_latency_run(
    bin: &Path,
    url: &str,
    index: Option<&str>,
    per_tick: u64,
    seconds: u64,
) -> SaveLatency {
    set_kpulse_bin(bin);
    let mut config = format!("[plugins.docgen]\nper_tick = {per_tick}\ntick_ms = 10\n");
    if let Some(index) = index {
        config.push_str(&format!(
            "\n[storage.opensearch]\naddresses = [\"{url}\"]\nindex = \"{index}\"\n"
        ));
    }
    let agent = Agent::start("bench-save-latency", &[guest_wasm("docgen")], &config);
    agent.wait_state("docgen", "running", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(3));
    let read = |agent: &Agent| {
        let m = agent.metrics();
        move |name: &str| {
            kpulse_integration_tests::sample(&m, &format!("kpulse_docgen_{name}")).unwrap_or(0.0)
        }
    };
    // This scrape starts the guest's window; the next one reads it.
    let start = read(&agent);
    std::thread::sleep(Duration::from_secs(seconds));
    let end = read(&agent);
    drop(agent);
    let calls = |get: &dyn Fn(&str) -> f64| get("saved_total{") + get("refused_total{");
    let timed = calls(&end) - calls(&start);
    SaveLatency {
        saves: end("save_latency_window_saves{") as u64,
        p50_us: end("save_latency_p50_us{"),
        p99_us: end("save_latency_p99_us{"),
        p999_us: end("save_latency_p999_us{"),
        max_us: end("save_latency_max_us{"),
        mean_us: (end("save_seconds_total{") - start("save_seconds_total{")) * 1e6 / timed.max(1.0),
        refused: (end("refused_total{") - start("refused_total{")) as u64,
    }
}

/// Points the harness (`Agent::start`, through `KPULSE_BIN`) at `bin`.
fn set_kpulse_bin(bin: &Path) {
    // SAFETY: the bench runs its sections one after another on the main thread; no other
    // thread is alive here to read the environment concurrently.
    #[allow(unsafe_code, reason = "set_var in edition 2024")]
    unsafe {
        std::env::set_var("KPULSE_BIN", bin);
    }
}

/// Best-effort removal of a bench run's daily indices and index template, so that runs do not
/// pile up shards on the node.
fn delete_index(url: &str, index: &str) {
    let Some(addr) = url
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .and_then(|host| std::net::ToSocketAddrs::to_socket_addrs(host).ok()?.next())
    else {
        return;
    };
    let _ = http(addr, "DELETE", &format!("/{index}-*"), &[]);
    let _ = http(addr, "DELETE", &format!("/_index_template/{index}"), &[]);
}

/// The registry's `resolve` on a snapshot of 1000 containers (each with a nested cgroup),
/// batches of 1000 keys of every kind but pid (a pid costs a `/proc/<pid>/cgroup` read).
fn containers_resolve() {
    use kpulse::containers::Key;
    use kpulse::containers::table::{CgroupDir, Observation, RuntimeContainer, Table};
    let mut seen = Observation {
        host_netns: 1,
        ..Observation::default()
    };
    for i in 0..1000u32 {
        let path = format!("/kptest/c{i}");
        let base = u64::from(i) * 10 + 100;
        seen.cgroups.insert(
            path.clone(),
            CgroupDir {
                cgroup_id: base,
                memcg_id: base + 1,
                pid: i + 10,
            },
        );
        seen.cgroups.insert(
            format!("{path}/inner"),
            CgroupDir {
                cgroup_id: base + 2,
                memcg_id: base + 3,
                pid: 0,
            },
        );
        seen.runtime.push(RuntimeContainer {
            source: "containerd",
            namespace: "kptest".to_owned(),
            id: format!("c{i}"),
            pid: i + 10,
            cgroup_path: path,
            net_ns: 4_000_000_000 + i,
            mnt_ns: 3_000_000_000 + i,
            ..RuntimeContainer::default()
        });
    }
    let no_ns = |_: u32| (0u32, 0u32);
    let built = Instant::now();
    let (table, _) = Table::default().next(&seen, Instant::now(), Duration::from_secs(30), &no_ns);
    let build_time = built.elapsed();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let keys: Vec<Key> = (0..1000)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let i = (rng % 1000) as u32;
            let base = u64::from(i) * 10 + 100;
            match rng % 5 {
                0 => Key::CgroupId(base),
                1 => Key::CgroupId(base + 2),
                2 => Key::MemcgId(base + 1),
                3 => Key::NetnsInum(4_000_000_000 + i),
                _ => Key::MntnsInum(3_000_000_000 + i),
            }
        })
        .collect();
    let proc_path = |_: u32| None;
    let rounds = 2000;
    let mut hits = 0usize;
    let started = Instant::now();
    for _ in 0..rounds {
        let answers: Vec<Option<String>> = keys
            .iter()
            .map(|&k| table.resolve(k, &proc_path).map(|c| c.id.clone()))
            .collect();
        hits += answers.iter().filter(|a| a.is_some()).count();
    }
    let elapsed = started.elapsed();
    assert_eq!(hits, rounds * keys.len(), "every key resolves");
    let per_batch = elapsed / rounds as u32;
    println!(
        "containers-resolve: 1000 containers; batch of 1000 keys: {:.1} us/batch, {:.1} ns/key (ids copied out as the WIT call does); snapshot build {:.2} ms",
        per_batch.as_secs_f64() * 1e6,
        per_batch.as_secs_f64() * 1e9 / keys.len() as f64,
        build_time.as_secs_f64() * 1e3,
    );
}

/// Container started (`ctr run -d` returned) -> visible in `/containers`, 10 times.
fn containers_discovery() {
    use kpulse_integration_tests::containers::Runtimes;
    let runtimes = Runtimes::get();
    let agent = Agent::start("bench-discovery", &[], &runtimes.agent_config(""));
    let mut after_start = Vec::new();
    let mut after_spawn = Vec::new();
    for round in 0..10 {
        let id = format!("disc{round}-{}", std::process::id());
        let spawned = Instant::now();
        let container = runtimes.ctr_run("kptest", &id, &[], &[], "sleep 1000");
        let started = Instant::now();
        wait_for(Duration::from_secs(10), "the container", || {
            let list = agent.get("/containers").json();
            list["data"]["containers"]
                .as_array()?
                .iter()
                .any(|c| c["id"] == id.as_str())
                .then_some(())
        });
        after_start.push(started.elapsed());
        after_spawn.push(spawned.elapsed());
        drop(container);
    }
    after_start.sort();
    after_spawn.sort();
    println!(
        "containers-discovery: started -> in /containers: median {:?}, max {:?} (from spawning `ctr run`: median {:?}; /containers polled every 50 ms)",
        after_start[5], after_start[9], after_spawn[5]
    );
}

/// Agent RSS with 1000 extra cgroups, each with a process (cgroup workloads), against the
/// same agent before they existed.
fn containers_memory() {
    let agent = Agent::start(
        "bench-registry-memory",
        &[],
        "[containers]\ngrace_period_secs = 0\n",
    );
    std::thread::sleep(Duration::from_secs(2));
    let before = rss_mib(agent.child.id());
    let known = |agent: &Agent| {
        kpulse_integration_tests::sample_with(
            &agent.metrics(),
            "kpulse_containers",
            "runtime=\"cgroup\"",
        )
        .unwrap_or(0.0)
    };
    let baseline = known(&agent);
    let roots = ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified"];
    let mut children = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..1000 {
        let name = format!("kpbench-{i}");
        for root in roots {
            let dir = PathBuf::from(root).join(&name);
            let _ = std::fs::create_dir(&dir);
            dirs.push(dir);
        }
        let child = Command::new("sleep").arg("600").spawn().unwrap();
        for root in roots {
            let _ = std::fs::write(
                PathBuf::from(root).join(&name).join("cgroup.procs"),
                child.id().to_string(),
            );
        }
        children.push(child);
    }
    let started = Instant::now();
    wait_for(Duration::from_secs(120), "1000 cgroup workloads", || {
        (known(&agent) >= baseline + 1000.0).then_some(())
    });
    let seen_after = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_mib(agent.child.id());
    let list_bytes = agent.get("/containers").body.len();
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    std::thread::sleep(Duration::from_millis(200));
    for dir in dirs.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
    println!(
        "containers-memory: RSS {before:.1} MiB -> {after:.1} MiB with 1000 more workloads (+{:.2} MiB); all seen {seen_after:?} after the last was made; /containers is {} KiB",
        after - before,
        list_bytes / 1024
    );
}

/// Iterations of a tight loop in a child process for `window` (a CPU-bound workload whose
/// throughput the profiler's interrupts would slow down).
fn spin_child(window: Duration) -> Child {
    Command::new("perl")
        .args([
            "-e",
            &format!(
                "use Time::HiRes qw(time); my $n = 0; my $end = time + {}; while (time < $end) {{ $n++ for 1..1000 }} print $n",
                window.as_secs()
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn iterations(child: Child) -> f64 {
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The profiler: overhead on a CPU-bound workload at 99 Hz (paired rounds: the same loop with
/// and without a host-wide profile running, alternating), the agent's CPU for one 10 s profile
/// including symbolization, and the time from a session's end to its stored document.
fn profile() {
    let agent = Agent::start("bench-profile", &[], "[containers]\nenabled = false\n");
    // HUATUO's 10 s window; four pairs.
    let window = Duration::from_secs(10);
    let rounds = 4;
    let mut ratios = Vec::new();
    let mut agent_cpu_ms = Vec::new();
    let mut to_document_ms = Vec::new();
    for round in 0..rounds {
        // Alternate which half goes first, so a drift of the machine hits both alike.
        let profiled_first = round % 2 == 0;
        let mut with = 0.0;
        let mut without = 0.0;
        for half in 0..2 {
            let profiled = (half == 0) == profiled_first;
            if profiled {
                let cpu_before = proc_cpu_seconds(agent.child.id());
                let started = Instant::now();
                let child = spin_child(window);
                let reply = agent
                    .post_json(
                        "/tasks",
                        &serde_json::json!({"tracer_name": "cpu_profile", "duration": window.as_secs()}),
                    )
                    .json();
                let id = reply["data"]["task_id"].as_str().unwrap().to_owned();
                with = iterations(child);
                let done = wait_for(Duration::from_secs(30), "the profile task", || {
                    let task = agent.get(&format!("/tasks/{id}")).json();
                    (task["data"]["status"] == "done").then_some(task)
                });
                let elapsed = started.elapsed();
                to_document_ms.push(elapsed.saturating_sub(window).as_secs_f64() * 1000.0);
                agent_cpu_ms.push((proc_cpu_seconds(agent.child.id()) - cpu_before) * 1000.0);
                assert!(done["data"]["data"]["samples"].as_u64().unwrap_or(0) > 0);
            } else {
                without = iterations(spin_child(window));
            }
        }
        ratios.push(with / without);
    }
    ratios.sort_by(f64::total_cmp);
    agent_cpu_ms.sort_by(f64::total_cmp);
    to_document_ms.sort_by(f64::total_cmp);
    let median = |v: &[f64]| v[v.len() / 2];
    println!(
        "profile: 99 Hz host-wide, {}-s windows, {rounds} paired rounds: workload throughput with/without median {:.4} (min {:.4}, max {:.4}) = {:+.2} % ; agent CPU per profile (sampling + read + symbolize + save) median {:.0} ms (max {:.0}); session end -> task done median {:.0} ms (max {:.0}) (polled every 50 ms)",
        window.as_secs(),
        median(&ratios),
        ratios[0],
        ratios[rounds - 1],
        (median(&ratios) - 1.0) * 100.0,
        median(&agent_cpu_ms),
        agent_cpu_ms[rounds - 1],
        median(&to_document_ms),
        to_document_ms[rounds - 1],
    );
}
