//! `softirq` on the real kernel: with a 1 µs threshold, loopback TCP traffic (NET_RX) and
//! the usual timer/RCU softirqs give latency events, and the NET_RX zone counters fill.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use kpulse_integration_tests::{Agent, plugin_wasm, wait_for};
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
        "[plugins.softirq]\nthreshold_ns = 1000\n",
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
