//! `kpulse-bench packets`: what the event plugins cost a packet-heavy host, decomposed.
//!
//! One workload: loopback UDP from one sender thread to one receiver, as fast as they go.
//! Arms, each run for [`SECONDS`] in every round, the order rotated round by round so a
//! drift of the machine's speed spreads over all arms:
//!
//! - `none`: nothing else running (the reference of every ratio);
//! - `kpulse defaults`: the seven default event plugins with their default settings
//!   (`softirq` on demand, `net_rx_latency` attached only while a container has its own
//!   network namespace);
//! - `kpulse always-on`: the same plugins in HUATUO's behaviour (`softirq` mode `always`,
//!   `net_rx_latency` attached with the host's namespace excluded in BPF);
//! - `rx timestamps only`: no BPF, one socket holding `SO_TIMESTAMPNS` (what
//!   `net_rx_latency` needs the kernel to do for every packet);
//! - `empty hooks`: bpftrace with programs that return at once on the same hooks;
//! - `bpftrace always-on`: bpftrace doing the same work as the always-on plugins
//!   (softirq raise→entry zones, `skb->tstamp` at netif_receive_skb and at the user copy),
//!   with an `SO_TIMESTAMPNS` socket open.
//!
//! Agents and bpftrace run [`SETTLE`] before their arm is measured (steady state).
//! `kernel.bpf_stats_enabled` stays 0 during every throughput arm (counting adds two clock
//! reads to every program run). The BPF run time per program is measured afterwards, in a
//! separate short window with statistics on.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kpulse_integration_tests::{Agent, plugin_wasm};

const SECONDS: u64 = 8;
const ROUNDS: usize = 6;
/// How long an agent runs before its arm is measured.
const SETTLE: Duration = Duration::from_secs(5);
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
                std::thread::sleep(SETTLE);
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
    Defaults,
    AlwaysOn,
    RxTimestamps,
    EmptyHooks,
    BpftraceAlwaysOn,
}

impl Arm {
    const ALL: [Arm; 6] = [
        Arm::None,
        Arm::Defaults,
        Arm::AlwaysOn,
        Arm::RxTimestamps,
        Arm::EmptyHooks,
        Arm::BpftraceAlwaysOn,
    ];

    fn label(self) -> &'static str {
        match self {
            Arm::None => "none",
            Arm::Defaults => "kpulse defaults",
            Arm::AlwaysOn => "kpulse always-on (HUATUO's behaviour)",
            Arm::RxTimestamps => "rx timestamps only (SO_TIMESTAMPNS socket, no BPF)",
            Arm::EmptyHooks => "empty hooks (bpftrace, programs return at once)",
            Arm::BpftraceAlwaysOn => "bpftrace always-on (same work, SO_TIMESTAMPNS)",
        }
    }

    /// Runs the workload under this arm; `None` if the arm could not be set up.
    fn run(self, plugins: &[PathBuf]) -> Option<f64> {
        let agent = |config: &str| {
            let agent = Agent::start("bench-packets", plugins, config);
            for p in PLUGINS {
                agent.wait_state(p, "running", Duration::from_secs(60));
            }
            // Steady state, as on a host where the agent runs for days: start-up (compile
            // children, BTF parses, first timers) is over before the packets are counted.
            std::thread::sleep(SETTLE);
            agent
        };
        match self {
            Arm::None => Some(udp_flood(SECONDS)),
            Arm::Defaults => {
                let _agent = agent(NO_COST_SAMPLING);
                Some(udp_flood(SECONDS))
            }
            Arm::AlwaysOn => {
                let _agent = agent(&format!("{NO_COST_SAMPLING}{ALWAYS_ON}"));
                Some(udp_flood(SECONDS))
            }
            Arm::RxTimestamps => {
                let _socket = rx_timestamp_socket();
                Some(udp_flood(SECONDS))
            }
            Arm::EmptyHooks => {
                let _bpftrace = Bpftrace::start(EMPTY_HOOKS)?;
                Some(udp_flood(SECONDS))
            }
            Arm::BpftraceAlwaysOn => {
                let _socket = rx_timestamp_socket();
                let _bpftrace = Bpftrace::start(BPFTRACE_ALWAYS_ON)?;
                Some(udp_flood(SECONDS))
            }
        }
    }
}

/// Mean and 95 % half-width (t ≈ 2.57 for 5 degrees of freedom) of slowdowns in percent.
fn summary(slowdowns: &[f64]) -> String {
    if slowdowns.is_empty() {
        return "n/a".to_owned();
    }
    let n = slowdowns.len() as f64;
    let mean = slowdowns.iter().sum::<f64>() / n;
    let var = slowdowns.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    format!("{mean:+.2} % ± {:.2} %", 2.57 * (var / n).sqrt())
}

pub fn packets() {
    let plugins: Vec<PathBuf> = PLUGINS.iter().map(|p| plugin_wasm(p)).collect();
    let stats_was =
        std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    println!(
        "\n## Per-packet cost: loopback UDP (256 B, one sender, one receiver), {SECONDS} s per arm, \
         {ROUNDS} rounds, arm order rotated each round, kernel.bpf_stats_enabled = 0"
    );
    println!("event plugins: {}", PLUGINS.join(", "));
    let mut rates: Vec<Vec<Option<f64>>> = vec![Vec::new(); Arm::ALL.len()];
    for round in 0..ROUNDS {
        let mut order = Arm::ALL.to_vec();
        order.rotate_left(round % Arm::ALL.len());
        for arm in order {
            let index = Arm::ALL.iter().position(|a| *a == arm).unwrap();
            let rate = arm.run(&plugins);
            eprintln!("round {} {:?}: {rate:?} packets/s", round + 1, arm);
            rates[index].push(rate);
        }
    }
    println!("| arm | packets/s (median) | slowdown vs none, mean ± 95 % CI |\n|---|---|---|");
    let none = &rates[0];
    for (arm, arm_rates) in Arm::ALL.iter().zip(&rates) {
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
        println!("| {} | {median:.0} | {cost} |", arm.label());
    }
    bpf_run_time(&plugins);
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_was.trim());
}

/// Kernel run time per program of the always-on plugins under the same flood, measured in
/// a 4 s window with statistics on (separately from the throughput arms).
fn bpf_run_time(plugins: &[PathBuf]) {
    let agent = Agent::start(
        "bench-packets-cost",
        plugins,
        &format!("{NO_COST_SAMPLING}{ALWAYS_ON}"),
    );
    for p in PLUGINS {
        agent.wait_state(p, "running", Duration::from_secs(60));
    }
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    let before = super::bpf_program_stats();
    let flood = std::thread::spawn(|| udp_flood(4));
    let started = Instant::now();
    let packets = flood.join().unwrap_or(0.0);
    let seconds = started.elapsed().as_secs_f64();
    let after = super::bpf_program_stats();
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    println!(
        "\nBPF run time of the always-on plugins under the flood ({packets:.0} packets/s, \
         {seconds:.1} s window, statistics on only here)"
    );
    println!("| program | runs per packet | ns per run | share of one CPU |\n|---|---|---|---|");
    for (name, (ns, runs)) in &after {
        let (ns0, runs0) = before.get(name).copied().unwrap_or((0, 0));
        let (dns, druns) = (ns.saturating_sub(ns0), runs.saturating_sub(runs0));
        if druns == 0 {
            continue;
        }
        println!(
            "| {name} | {:.2} | {:.0} | {:.2} % |",
            druns as f64 / (packets * seconds).max(1.0),
            dns as f64 / druns as f64,
            dns as f64 / (seconds * 1e9) * 100.0
        );
    }
    drop(agent);
}
