//! `kpulse-bench packets`: what the event plugins cost a packet-heavy host, decomposed.
//!
//! One workload: loopback UDP from one sender thread to one receiver, as fast as they go.
//! Arms, each run for [`SECONDS`] in every round, the order rotated round by round so a
//! drift of the machine's speed spreads over all arms:
//!
//! - `none`: nothing else running (the reference of every ratio);
//! - `kpulse with no plugin`: the agent process alone (its threads and timers);
//! - `kpulse defaults`: the seven default event plugins with their default settings
//!   (`softirq` on demand, `net_rx_latency` attached only while a container has its own
//!   network namespace);
//! - `kpulse defaults without dropwatch`: the same minus the one plugin that works during
//!   the flood (the receiver's queue overflows, and dropwatch reports those drops);
//! - `kpulse always-on`: the same plugins in HUATUO's behaviour (`softirq` mode `always`,
//!   `net_rx_latency` attached with the host's namespace excluded in BPF);
//! - `rx timestamps only`: no BPF, one socket holding `SO_TIMESTAMPNS` (what
//!   `net_rx_latency` needs the kernel to do for every packet);
//! - `empty hooks`: bpftrace with programs that return at once on the same hooks;
//! - `bpftrace always-on`: bpftrace doing the same work as the always-on plugins
//!   (softirq raise→entry zones, `skb->tstamp` at netif_receive_skb and at the user copy),
//!   with an `SO_TIMESTAMPNS` socket open.
//!
//! `KPULSE_PACKETS_ARMS=bare,defaults,nodrop,always,rxts,empty,bpftrace` (any subset; `none` always
//! runs) and `KPULSE_PACKETS_ROUNDS` (6) narrow a run to the comparison at hand with more
//! rounds: `KPULSE_PACKETS_ARMS=defaults KPULSE_PACKETS_ROUNDS=20` for the defaults' cost.
//!
//! Agents and bpftrace run [`SETTLE`] (or `KPULSE_PACKETS_SETTLE_SECS`) before their arm is
//! measured (steady state).
//! `kernel.bpf_stats_enabled` stays 0 during every throughput arm (counting adds two clock
//! reads to every program run). The BPF run time per program is measured afterwards, in a
//! separate short window with statistics on, for the defaults and for the always-on mode,
//! with its sum as a share of the CPU time the machine was busy in that window (a figure
//! that holds on a day this VM runs the flood at a third of its usual rate). For the defaults
//! it is measured twice: in a 4 s flood (inside `softirq`'s first window if the flood trips
//! its counters, as in every throughput arm, each starting a fresh agent), and over a
//! sustained flood of `KPULSE_PACKETS_SUSTAINED_SECS` (140; 0 skips it), two of that
//! plugin's window-plus-cooldown cycles, with the agent's own CPU beside it: what a
//! long-running agent pays in a storm; and again with `softirq`'s trigger so low that every
//! flood trips it ([`SOFTIRQ_ALWAYS_TRIPPED`]): the on-demand mode's worst case, its hooks
//! attached for one window in every window-plus-cooldown.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kpulse_integration_tests::{Agent, plugin_wasm};

const SECONDS: u64 = 8;
/// Rounds by default; `KPULSE_PACKETS_ROUNDS` sets another number.
const ROUNDS: usize = 6;
/// How long an agent runs before its arm is measured.
const SETTLE: Duration = Duration::from_secs(5);

/// [`SETTLE`], or `KPULSE_PACKETS_SETTLE_SECS`: a longer settle asks whether a fresh agent's
/// start-up (BPF loads and JIT, page faults, its first timers) still slows the flood after 5 s.
fn settle() -> Duration {
    Duration::from_secs(super::env_or(
        "KPULSE_PACKETS_SETTLE_SECS",
        SETTLE.as_secs(),
    ))
}
const PLUGINS: [&str; 7] = [
    "dropwatch",
    "softirq",
    "oom",
    "hungtask",
    "memreclaim",
    "net_rx_latency",
    "softlockup",
];
/// HUATUO's always-on behaviour.
const ALWAYS_ON: &str = "[plugins.softirq]\nmode = \"always\"\n\
                         [plugins.net_rx_latency]\nattach_only_with_containers = false\n";
/// `softirq` tripping whenever its cooldown allows: any CPU's softirq share of 1 % trips it,
/// and a flood always has that. The worst case of the on-demand mode under a long storm.
const SOFTIRQ_ALWAYS_TRIPPED: &str = "[plugins.softirq]\ntrigger_softirq_percent = 1\n";
/// The throughput arms must not be measured with run-time statistics on.
const NO_COST_SAMPLING: &str = "[metrics]\nbpf_cost_every_secs = 0\n";
const EMPTY_HOOKS: &str = "tracepoint:irq:softirq_raise { } tracepoint:irq:softirq_entry { } \
     tracepoint:net:netif_receive_skb { } tracepoint:tcp:tcp_probe { } \
     tracepoint:skb:skb_copy_datagram_iovec { }";
const BPFTRACE_ALWAYS_ON: &str = r#"
tracepoint:irq:softirq_raise { @raise[cpu, args->vec] = nsecs; }
tracepoint:irq:softirq_entry {
  $t = @raise[cpu, args->vec];
  if ($t > 0) {
    $l = nsecs - $t;
    @zone[args->vec, $l >= 1000000 ? 3 : ($l >= 100000 ? 2 : ($l >= 10000 ? 1 : 0))] = count();
    @raise[cpu, args->vec] = 0;
  }
}
tracepoint:net:netif_receive_skb {
  $skb = (struct sk_buff *)args->skbaddr;
  if ($skb->tstamp > 0 && nsecs > 0) { @netif = count(); }
}
tracepoint:skb:skb_copy_datagram_iovec {
  $skb = (struct sk_buff *)args->skbaddr;
  if ($skb->tstamp > 0) { @usercopy = count(); }
}
"#;

/// Runs the workload for `seconds`; returns packets received per second.
pub fn udp_flood(seconds: u64) -> f64 {
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let target = receiver.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            let payload = [0u8; 256];
            while !stop.load(Ordering::Relaxed) {
                let _ = socket.send_to(&payload, target);
            }
        })
    };
    let started = Instant::now();
    let mut packets = 0u64;
    let mut buf = [0u8; 512];
    while started.elapsed() < Duration::from_secs(seconds) {
        if receiver.recv(&mut buf).is_ok() {
            packets += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    packets as f64 / started.elapsed().as_secs_f64()
}

/// A socket asking for software RX timestamps: while it lives every packet is stamped.
fn rx_timestamp_socket() -> UdpSocket {
    use std::os::fd::AsRawFd;
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let on: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option of the right size.
    #[allow(unsafe_code, reason = "setsockopt SO_TIMESTAMPNS")]
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_TIMESTAMPNS: {}", std::io::Error::last_os_error());
    socket
}

/// bpftrace running `program`, once its probes are attached (it prints "Attaching N
/// probes..." before it attaches; the programs show in bpftool once they are).
struct Bpftrace(Child);

impl Bpftrace {
    fn start(program: &str) -> Option<Bpftrace> {
        let before = bpftrace_programs();
        let child = Command::new("bpftrace")
            .args(["-e", program])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        let mut bpftrace = Bpftrace(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = bpftrace.0.try_wait() {
                let mut err = String::new();
                if let Some(mut stderr) = bpftrace.0.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
                }
                eprintln!("bpftrace exited ({status}): {err}");
                return None;
            }
            if bpftrace_programs() >= before + 4 {
                std::thread::sleep(settle());
                return Some(bpftrace);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        // SIGINT: bpftrace prints its maps and detaches.
        // SAFETY: kill has no memory-safety preconditions.
        #[allow(unsafe_code, reason = "kill(2)")]
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Tracepoint programs loaded on the machine (bpftool).
fn bpftrace_programs() -> usize {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let programs: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
    programs.as_array().map_or(0, |p| {
        p.iter().filter(|p| p["type"] == "tracepoint").count()
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Arm {
    None,
    /// The agent with no plugin at all: what the process itself costs the flood.
    Bare,
    Defaults,
    /// The defaults without `dropwatch`: what the drop storm's reports cost.
    DefaultsNoDropwatch,
    AlwaysOn,
    RxTimestamps,
    EmptyHooks,
    BpftraceAlwaysOn,
}

impl Arm {
    const ALL: [Arm; 8] = [
        Arm::None,
        Arm::Bare,
        Arm::Defaults,
        Arm::DefaultsNoDropwatch,
        Arm::AlwaysOn,
        Arm::RxTimestamps,
        Arm::EmptyHooks,
        Arm::BpftraceAlwaysOn,
    ];

    /// The name `KPULSE_PACKETS_ARMS` (a comma-separated list) selects the arm by.
    fn key(self) -> &'static str {
        match self {
            Arm::None => "none",
            Arm::Bare => "bare",
            Arm::Defaults => "defaults",
            Arm::DefaultsNoDropwatch => "nodrop",
            Arm::AlwaysOn => "always",
            Arm::RxTimestamps => "rxts",
            Arm::EmptyHooks => "empty",
            Arm::BpftraceAlwaysOn => "bpftrace",
        }
    }

    /// The arms to run: `KPULSE_PACKETS_ARMS`, or all; `none` always (the reference).
    fn selected() -> Vec<Arm> {
        let wanted = std::env::var("KPULSE_PACKETS_ARMS").unwrap_or_default();
        Arm::ALL
            .into_iter()
            .filter(|arm| {
                wanted.is_empty() || *arm == Arm::None || wanted.split(',').any(|w| w == arm.key())
            })
            .collect()
    }

    fn label(self) -> &'static str {
        match self {
            Arm::None => "none",
            Arm::Bare => "kpulse with no plugin",
            Arm::Defaults => "kpulse defaults",
            Arm::DefaultsNoDropwatch => "kpulse defaults without dropwatch",
            Arm::AlwaysOn => "kpulse always-on (HUATUO's behaviour)",
            Arm::RxTimestamps => "rx timestamps only (SO_TIMESTAMPNS socket, no BPF)",
            Arm::EmptyHooks => "empty hooks (bpftrace, programs return at once)",
            Arm::BpftraceAlwaysOn => "bpftrace always-on (same work, SO_TIMESTAMPNS)",
        }
    }

    /// Runs the workload under this arm; `None` if the arm could not be set up.
    fn run(self, plugins: &[PathBuf]) -> Option<Run> {
        let agent = |plugins: &[PathBuf], config: &str| {
            let agent = Agent::start("bench-packets", plugins, config);
            for p in plugins {
                let name = p.file_stem().unwrap_or_default().to_string_lossy();
                agent.wait_state(&name, "running", Duration::from_secs(60));
            }
            // Steady state, as on a host where the agent runs for days: start-up (compile
            // children, BTF parses, first timers) is over before the packets are counted.
            std::thread::sleep(settle());
            agent
        };
        let plain = |rate| Run { rate, agent: None };
        match self {
            Arm::None => Some(plain(udp_flood(SECONDS))),
            Arm::Bare => Some(flood_with(&agent(&[], NO_COST_SAMPLING))),
            Arm::Defaults => Some(flood_with(&agent(plugins, NO_COST_SAMPLING))),
            Arm::DefaultsNoDropwatch => {
                let without: Vec<PathBuf> = plugins
                    .iter()
                    .filter(|p| p.file_stem().is_some_and(|s| s != "dropwatch"))
                    .cloned()
                    .collect();
                Some(flood_with(&agent(&without, NO_COST_SAMPLING)))
            }
            Arm::AlwaysOn => Some(flood_with(&agent(
                plugins,
                &format!("{NO_COST_SAMPLING}{ALWAYS_ON}"),
            ))),
            Arm::RxTimestamps => {
                let _socket = rx_timestamp_socket();
                Some(plain(udp_flood(SECONDS)))
            }
            Arm::EmptyHooks => {
                let _bpftrace = Bpftrace::start(EMPTY_HOOKS)?;
                Some(plain(udp_flood(SECONDS)))
            }
            Arm::BpftraceAlwaysOn => {
                let _socket = rx_timestamp_socket();
                let _bpftrace = Bpftrace::start(BPFTRACE_ALWAYS_ON)?;
                Some(plain(udp_flood(SECONDS)))
            }
        }
    }
}

/// One arm's flood: packets/s, and for an agent arm its own CPU (share of one core, its
/// threads' exact run time) and the documents it saved per second meanwhile.
#[derive(Debug, Clone, Copy)]
struct Run {
    rate: f64,
    agent: Option<(f64, f64)>,
}

fn documents_saved(agent: &Agent) -> f64 {
    agent
        .metrics()
        .lines()
        .filter(|l| l.starts_with("kpulse_plugin_documents_saved_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn flood_with(agent: &Agent) -> Run {
    let pid = agent.child.id();
    let (cpu0, docs0) = (
        super::thread_cpu_ns(pid).values().sum::<u64>(),
        documents_saved(agent),
    );
    let started = Instant::now();
    let rate = udp_flood(SECONDS);
    let seconds = started.elapsed().as_secs_f64();
    let cpu = super::thread_cpu_ns(pid)
        .values()
        .sum::<u64>()
        .saturating_sub(cpu0);
    let docs = documents_saved(agent) - docs0;
    Run {
        rate,
        agent: Some((cpu as f64 / 1e9 / seconds * 100.0, docs / seconds)),
    }
}

/// Student's t for a two-sided 95 % interval with `dof` degrees of freedom.
fn t95(dof: usize) -> f64 {
    const TABLE: [f64; 10] = [12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23];
    match dof {
        0 => f64::NAN,
        1..=10 => TABLE[dof - 1],
        11..=20 => 2.13 - (dof - 11) as f64 * 0.005,
        21..=30 => 2.06,
        _ => 2.0,
    }
}

/// Mean and 95 % half-width of slowdowns in percent, and their median (one round that a
/// neighbour on the host slowed does not move it).
fn summary(slowdowns: &[f64]) -> String {
    if slowdowns.is_empty() {
        return "n/a".to_owned();
    }
    let n = slowdowns.len() as f64;
    let mean = slowdowns.iter().sum::<f64>() / n;
    let var = slowdowns.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let mut sorted = slowdowns.to_vec();
    sorted.sort_by(f64::total_cmp);
    format!(
        "{mean:+.2} % ± {:.2} % (n = {n}), median {:+.2} %",
        t95(slowdowns.len() - 1) * (var / n).sqrt(),
        sorted[sorted.len() / 2]
    )
}

pub fn packets() {
    let plugins: Vec<PathBuf> = PLUGINS.iter().map(|p| plugin_wasm(p)).collect();
    let stats_was =
        std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    let rounds: usize = super::env_or("KPULSE_PACKETS_ROUNDS", ROUNDS);
    let arms = Arm::selected();
    println!(
        "\n## Per-packet cost: loopback UDP (256 B, one sender, one receiver), {SECONDS} s per arm, \
         {rounds} rounds, arm order rotated each round, agents settle {} s, kernel.bpf_stats_enabled = 0",
        settle().as_secs()
    );
    println!("event plugins: {}", PLUGINS.join(", "));
    let mut rates: Vec<Vec<Option<f64>>> = vec![Vec::new(); arms.len()];
    let mut agent_use: Vec<Vec<(f64, f64)>> = vec![Vec::new(); arms.len()];
    for round in 0..rounds {
        let mut order = arms.clone();
        order.rotate_left(round % arms.len());
        for arm in order {
            let index = arms.iter().position(|a| *a == arm).unwrap();
            let run = arm.run(&plugins);
            eprintln!("round {} {:?}: {run:?}", round + 1, arm);
            rates[index].push(run.map(|r| r.rate));
            agent_use[index].extend(run.and_then(|r| r.agent));
        }
    }
    println!(
        "| arm | packets/s (median) | slowdown vs none, mean ± 95 % CI | agent CPU during the flood | documents/s saved |\n|---|---|---|---|---|"
    );
    let none = &rates[0];
    for (arm, arm_rates) in arms.iter().zip(&rates) {
        let slowdowns: Vec<f64> = arm_rates
            .iter()
            .zip(none)
            .filter_map(|(a, n)| Some((1.0 - a.as_ref()? / n.as_ref()?) * 100.0))
            .collect();
        let mut sorted: Vec<f64> = arm_rates.iter().flatten().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
        let cost = if *arm == Arm::None {
            "(reference)".to_owned()
        } else {
            summary(&slowdowns)
        };
        let uses = &agent_use[arms.iter().position(|a| a == arm).unwrap_or(0)];
        let (cpu, docs) = if uses.is_empty() {
            (String::new(), String::new())
        } else {
            let n = uses.len() as f64;
            (
                format!(
                    "{:.2} % of a core",
                    uses.iter().map(|u| u.0).sum::<f64>() / n
                ),
                format!("{:.0}", uses.iter().map(|u| u.1).sum::<f64>() / n),
            )
        };
        println!(
            "| {} | {median:.0} | {cost} | {cpu} | {docs} |",
            arm.label()
        );
    }
    if arms.contains(&Arm::Defaults) {
        bpf_run_time(&plugins, NO_COST_SAMPLING, "the default plugins", 4);
        // A sustained storm: longer than softirq's window plus its cooldown (10 s + 60 s),
        // so the figure is the duty-cycled average a long-running agent pays, where the
        // 8 s arms above, each with a fresh agent, all fall inside its first window (if the
        // flood trips its counters at all: that depends on the day's squeezes and ksoftirqd
        // waits).
        let sustained: u64 = super::env_or("KPULSE_PACKETS_SUSTAINED_SECS", 140);
        if sustained > 0 {
            bpf_run_time(
                &plugins,
                NO_COST_SAMPLING,
                "the default plugins, sustained",
                sustained,
            );
            bpf_run_time(
                &plugins,
                &format!("{NO_COST_SAMPLING}{SOFTIRQ_ALWAYS_TRIPPED}"),
                "the default plugins, sustained, softirq's window tripped whenever it may",
                sustained,
            );
        }
    }
    if arms.contains(&Arm::AlwaysOn) {
        bpf_run_time(
            &plugins,
            &format!("{NO_COST_SAMPLING}{ALWAYS_ON}"),
            "the always-on plugins",
            4,
        );
    }
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_was.trim());
}

/// Busy CPU time of the whole machine so far (every state but idle and iowait), in ns.
fn machine_busy_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .enumerate()
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        .filter(|(i, _)| *i < 8 && *i != 3 && *i != 4)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on every Linux ABI.
    ticks * 10_000_000
}

/// Kernel run time per program of `plugins` (with `config`) under the same flood, measured
/// in a 4 s window with statistics on (separately from the throughput arms), and their sum
/// as a share of the CPU time the machine was busy meanwhile: a cost figure that does not
/// depend on how fast the machine happens to run the flood today.
fn bpf_run_time(plugins: &[PathBuf], config: &str, what: &str, flood_secs: u64) {
    let agent = Agent::start("bench-packets-cost", plugins, config);
    for p in PLUGINS {
        agent.wait_state(p, "running", Duration::from_secs(60));
    }
    std::thread::sleep(settle());
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    // By program id, sampled every second: softirq's window detaches its programs (and the
    // kernel forgets their statistics) inside a long flood, so one snapshot at the end would
    // miss them. At most the last second of each window is lost (an underestimate).
    let before = super::bpf_program_stats_by_id();
    let mut last = before.clone();
    let busy0 = machine_busy_ns();
    let agent_cpu0: u64 = super::thread_cpu_ns(agent.child.id()).values().sum();
    let flood = std::thread::spawn(move || udp_flood(flood_secs));
    let started = Instant::now();
    // Seconds each program was seen loaded: how long softirq's window kept its hooks.
    let mut loaded_secs: std::collections::BTreeMap<String, u32> = Default::default();
    while !flood.is_finished() {
        std::thread::sleep(Duration::from_secs(1));
        let sample = super::bpf_program_stats_by_id();
        let names: std::collections::BTreeSet<String> =
            sample.values().map(|(name, ..)| name.clone()).collect();
        for name in names {
            *loaded_secs.entry(name).or_default() += 1;
        }
        last.extend(sample);
    }
    let packets = flood.join().unwrap_or(0.0);
    let seconds = started.elapsed().as_secs_f64();
    let busy = machine_busy_ns().saturating_sub(busy0);
    let agent_cpu = super::thread_cpu_ns(agent.child.id())
        .values()
        .sum::<u64>()
        .saturating_sub(agent_cpu0);
    last.extend(super::bpf_program_stats_by_id());
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    // Per program name: the run time each program id spent in the window.
    let mut after: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for (id, (name, ns, runs)) in &last {
        let (_, ns0, runs0) = before.get(id).cloned().unwrap_or_default();
        let entry = after.entry(name.clone()).or_default();
        entry.0 += ns.saturating_sub(ns0);
        entry.1 += runs.saturating_sub(runs0);
    }
    println!(
        "\nBPF run time of {what} under the flood ({packets:.0} packets/s, \
         {seconds:.1} s window, statistics on only here)"
    );
    println!(
        "| program | loaded (s of the window) | runs per packet | ns per run | share of one CPU |\n|---|---|---|---|---|"
    );
    let mut total_ns = 0u64;
    for (name, &(dns, druns)) in &after {
        if druns == 0 {
            continue;
        }
        total_ns += dns;
        println!(
            "| {name} | {} | {:.2} | {:.0} | {:.2} % |",
            loaded_secs.get(name).copied().unwrap_or(0),
            druns as f64 / (packets * seconds).max(1.0),
            dns as f64 / druns as f64,
            dns as f64 / (seconds * 1e9) * 100.0
        );
    }
    println!(
        "| all | | | {:.1} ns per packet | {:.2} % of the machine's busy CPU time ({:.2} of {} CPUs busy) |",
        total_ns as f64 / (packets * seconds).max(1.0),
        total_ns as f64 / (busy as f64).max(1.0) * 100.0,
        busy as f64 / (seconds * 1e9),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    println!(
        "| agent process | | | | {:.2} % of the machine's busy CPU time; BPF and agent together {:.2} % |",
        agent_cpu as f64 / (busy as f64).max(1.0) * 100.0,
        (total_ns + agent_cpu) as f64 / (busy as f64).max(1.0) * 100.0,
    );
    drop(agent);
}
