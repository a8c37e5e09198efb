//! `softirq` on the real kernel: with a 1 µs threshold, loopback TCP traffic (NET_RX) and
//! the usual timer/RCU softirqs give latency events, and the NET_RX zone counters fill
//! (`always` mode); in the default `on_demand` mode nothing is attached until a traffic
//! burst trips the kernel counters, and the hooks go away after the window.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use kpulse_integration_tests::{
    Agent, bpf_programs_of, plugin_wasm, sample, sample_with, wait_for,
};
use serde_json::Value;

const VEC_NAMES: [&str; 10] = [
    "HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER", "RCU",
];

/// Loopback TCP traffic from a writer thread to a reader thread, stopped on drop.
struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Traffic {
    fn start() -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = vec![0u8; 64 * 1024];
            while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
        });
        let writer_stop = Arc::clone(&stop);
        let writer = std::thread::spawn(move || {
            let Ok(mut conn) = TcpStream::connect(addr) else {
                return;
            };
            let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
            let chunk = vec![0x5au8; 16 * 1024];
            while !writer_stop.load(Ordering::Relaxed) {
                if conn.write_all(&chunk).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        Traffic {
            stop,
            threads: vec![reader, writer],
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The number of possible CPUs (`0-N` in `/sys/devices/system/cpu/possible`).
fn possible_cpus() -> u64 {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    let last = text.trim().rsplit(['-', ',']).next().unwrap();
    last.parse::<u64>().unwrap() + 1
}

/// `(labels, value)` of every sample of `name`.
fn samples(metrics: &str, name: &str) -> Vec<(String, f64)> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(&format!("{name}{{")))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once("} ")?;
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn loopback_traffic_gives_softirq_latency_events_and_zones() {
    let agent = Agent::start(
        "softirq",
        &[plugin_wasm("softirq")],
        "[plugins.softirq]\nthreshold_ns = 1000\nmode = \"always\"\n",
    );
    agent.wait_state("softirq", "running", Duration::from_secs(20));
    let traffic = Traffic::start();

    let docs = wait_for(Duration::from_secs(30), "softirq latency events", || {
        let docs: Vec<Value> = agent
            .get("/events?tracer=softirq&limit=200")
            .json()
            .as_array()
            .cloned()
            .unwrap_or_default();
        (docs.len() >= 10).then_some(docs)
    });
    for doc in &docs {
        assert_eq!(doc["tracer_type"], "event", "{doc}");
        let data = &doc["tracer_data"];
        let vec = data["vec"].as_u64().unwrap();
        assert_eq!(data["vec_name"], VEC_NAMES[vec as usize], "{data}");
        assert_eq!(data["threshold_ns"], 1000, "{data}");
        let latency = data["latency_ns"].as_u64().unwrap();
        assert!(latency >= 1000, "{data}");
        let zone = match latency {
            0..10_000 => 0,
            10_000..100_000 => 1,
            100_000..1_000_000 => 2,
            _ => 3,
        };
        assert_eq!(data["zone"], zone, "{data}");
        assert!(data["cpu"].as_u64().unwrap() < possible_cpus(), "{data}");
        assert!(data["comm"].is_string() && data["pid"].is_u64(), "{data}");
    }

    // Every NET_RX run is counted, whatever its latency: loopback traffic raises NET_RX.
    let net_rx = wait_for(Duration::from_secs(20), "NET_RX latency counts", || {
        let series: Vec<_> = samples(&agent.metrics(), "kpulse_softirq_latency_total")
            .into_iter()
            .filter(|(labels, _)| labels.contains("type=\"NET_RX\""))
            .collect();
        (series.iter().map(|(_, v)| v).sum::<f64>() > 0.0).then_some(series)
    });
    drop(traffic);
    for zone in 0..4 {
        assert!(
            net_rx
                .iter()
                .any(|(labels, _)| labels.contains(&format!("zone=\"{zone}\""))
                    && labels.contains("cpuid=\"0\"")),
            "no NET_RX zone {zone} series on cpu 0: {net_rx:?}"
        );
    }
    let metrics = agent.metrics();
    // HUATUO's default: only the network vectors are exported.
    assert!(
        !metrics.contains("type=\"TIMER\""),
        "TIMER exported by default"
    );
    assert!(
        samples(&metrics, "kpulse_softirq_events_total")
            .first()
            .is_some_and(|(_, v)| *v >= 10.0),
        "{metrics}"
    );
}

/// UDP on loopback as fast as one thread sends: NET_RX softirq time on the receiving CPU.
struct Burst {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Burst {
    fn start() -> Burst {
        let stop = Arc::new(AtomicBool::new(false));
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let target = receiver.local_addr().unwrap();
        let (s1, s2) = (Arc::clone(&stop), Arc::clone(&stop));
        let sender = std::thread::spawn(move || {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            while !s1.load(Ordering::Relaxed) {
                let _ = socket.send_to(&[0u8; 256], target);
            }
        });
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s2.load(Ordering::Relaxed) {
                let _ = receiver.recv(&mut buf);
            }
        });
        Burst {
            stop,
            threads: vec![sender, reader],
        }
    }
}

impl Drop for Burst {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The default mode: quiet → nothing attached (no program in bpftool); a UDP burst raises
/// the softirq time share over the trigger → the hooks attach, zones count, the trip is
/// counted by cause; after the window they are detached again and the zone counts stay.
/// Only the softirq-time trigger is on, with a threshold a loopback burst crosses (a busy
/// CI machine must not trip the others by itself).
#[test]
fn on_demand_attaches_when_the_counters_trip_and_detaches_after_the_window() {
    let config = "[plugins.softirq]\nthreshold_ns = 1000\npoll_interval_ms = 500\n\
                  window_seconds = 3\ncooldown_seconds = 60\ntrigger_time_squeeze = 0\n\
                  trigger_backlog_drops = 0\ntrigger_ksoftirqd_wait_ns = 0\n\
                  trigger_softirq_percent = 5\n";
    let agent = Agent::start("softirq_on_demand", &[plugin_wasm("softirq")], config);
    agent.wait_state("softirq", "running", Duration::from_secs(20));
    let pid = agent.child.id();
    let metrics = agent.metrics();
    assert_eq!(
        sample(&metrics, "kpulse_softirq_attached"),
        Some(0.0),
        "{metrics}"
    );
    let quiet = bpf_programs_of(pid);
    assert!(quiet.is_empty(), "programs attached while quiet: {quiet:?}");

    let burst = Burst::start();
    let attached = wait_for(
        Duration::from_secs(20),
        "the hooks attached by the burst",
        || {
            let programs = bpf_programs_of(pid);
            (programs.len() == 2).then_some(programs)
        },
    );
    assert!(
        attached.iter().all(|name| name.starts_with("softirq_")),
        "{attached:?}"
    );
    let metrics = agent.metrics();
    assert_eq!(
        sample(&metrics, "kpulse_softirq_attached"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        sample_with(
            &metrics,
            "kpulse_softirq_triggers_total",
            "cause=\"softirq_time\""
        )
        .is_some_and(|v| v >= 1.0),
        "{metrics}"
    );
    assert!(sample(&metrics, "kpulse_softirq_windows_total").is_some_and(|v| v >= 1.0));
    let counted = wait_for(Duration::from_secs(10), "NET_RX zone counts", || {
        let total: f64 = samples(&agent.metrics(), "kpulse_softirq_latency_total")
            .iter()
            .filter(|(labels, _)| labels.contains("type=\"NET_RX\""))
            .map(|(_, v)| v)
            .sum();
        (total > 0.0).then_some(total)
    });
    drop(burst);

    // The window (3 s) ends, the cooldown (60 s) keeps them detached for the rest.
    wait_for(
        Duration::from_secs(15),
        "the hooks detached after the window",
        || bpf_programs_of(pid).is_empty().then_some(()),
    );
    let metrics = agent.metrics();
    assert_eq!(
        sample(&metrics, "kpulse_softirq_attached"),
        Some(0.0),
        "{metrics}"
    );
    let kept: f64 = samples(&metrics, "kpulse_softirq_latency_total")
        .iter()
        .filter(|(labels, _)| labels.contains("type=\"NET_RX\""))
        .map(|(_, v)| v)
        .sum();
    assert!(
        kept >= counted,
        "zone counts lost at detach: {kept} < {counted}"
    );
    assert_eq!(agent.plugin("softirq").unwrap()["state"], "running");
}

/// Per-plugin BPF cost on `/metrics`: with a 1 s sampling period and 500 ms windows, the
/// always-on hooks under loopback traffic show runs and run time for `softirq`, and the
/// sampled window time grows, and covers only part of the agent's life.
#[test]
fn bpf_cost_per_plugin_is_sampled_in_windows() {
    let config = "[metrics]\nbpf_cost_every_secs = 1\nbpf_cost_window_ms = 500\n\
                  [plugins.softirq]\nmode = \"always\"\n";
    let started = std::time::Instant::now();
    let agent = Agent::start("softirq_cost", &[plugin_wasm("softirq")], config);
    agent.wait_state("softirq", "running", Duration::from_secs(20));
    let traffic = Traffic::start();
    let (runs, seconds) = wait_for(Duration::from_secs(30), "sampled softirq BPF cost", || {
        let metrics = agent.metrics();
        let runs = sample_with(
            &metrics,
            "kpulse_plugin_bpf_runs_total",
            "plugin=\"softirq\"",
        )?;
        let seconds = sample_with(
            &metrics,
            "kpulse_plugin_bpf_run_seconds_total",
            "plugin=\"softirq\"",
        )?;
        let windows = sample(&metrics, "kpulse_bpf_cost_sampled_seconds_total")?;
        (runs > 0.0 && seconds > 0.0 && windows >= 1.0).then_some((runs, seconds))
    });
    drop(traffic);
    let per_run_ns = seconds / runs * 1e9;
    eprintln!("softirq: {runs} runs sampled, {per_run_ns:.0} ns per run");
    assert!(
        per_run_ns > 1.0 && per_run_ns < 100_000.0,
        "{per_run_ns} ns per run"
    );
    // 500 ms windows after 1 s pauses: about a third of the agent's life is sampled, not
    // all of it (statistics are not left on).
    let sampled = sample(&agent.metrics(), "kpulse_bpf_cost_sampled_seconds_total").unwrap();
    let lived = started.elapsed().as_secs_f64();
    assert!(
        sampled > 0.4 && sampled < lived * 0.6,
        "{sampled} s sampled in {lived:.1} s"
    );
}
