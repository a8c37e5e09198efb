//! `net_rx_latency` on the real kernel: loopback TCP whose reader waits 50 ms before
//! reading gives TCPV4 and USERCOPY events (thresholds lowered to 1 ns) with the
//! connection's 4-tuple, and USERCOPY latencies of at least the reader's delay.
//!
//! The kernel stamps received skbs only while some socket asked for RX software timestamps;
//! the plugin declares `rx-timestamps`, so the host keeps such a socket open while it runs
//! (as HUATUO does). Nothing else on the machine enables timestamps during the test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use kpulse_integration_tests::{Agent, plugin_wasm, sample_with, wait_for};

const DELAY: Duration = Duration::from_millis(50);

/// One loopback connection: the client sends `bytes`, the server reads them after
/// [`DELAY`]. Returns (client port, server port).
fn exchange(listener: &TcpListener, bytes: usize) -> (u16, u16) {
    let server_port = listener.local_addr().unwrap().port();
    let mut client = TcpStream::connect(("127.0.0.1", server_port)).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(&vec![b'k'; bytes]).unwrap();
    std::thread::sleep(DELAY);
    let mut received = vec![0; bytes];
    server.read_exact(&mut received).unwrap();
    (client.local_addr().unwrap().port(), server_port)
}

#[test]
fn loopback_tcp_gives_tcp_and_usercopy_latencies() {
    let config = "[plugins.net_rx_latency]\ntcp_threshold_ns = 1\nusercopy_threshold_ns = 1\nexclude_host_netns = false\n";
    let agent = Agent::start("net_rx_latency", &[plugin_wasm("net_rx_latency")], config);
    agent.wait_state("net_rx_latency", "running", Duration::from_secs(20));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut connections = Vec::new();
    let docs = wait_for(
        Duration::from_secs(30),
        "TCPV4 and USERCOPY events of our connections",
        || {
            connections.push(exchange(&listener, 32 * 1024));
            std::thread::sleep(Duration::from_millis(100));
            let response = agent.get("/events?tracer=net_rx_latency&limit=1000");
            let docs: Vec<serde_json::Value> =
                response.json().as_array().cloned().unwrap_or_default();
            let ours: Vec<_> = docs
                .into_iter()
                .filter(|d| {
                    let data = &d["tracer_data"];
                    connections.iter().any(|&(client, server)| {
                        data["tcp_sport"] == client && data["tcp_dport"] == server
                    })
                })
                .collect();
            let has = |stage: &str| {
                ours.iter()
                    .any(|d| d["tracer_data"]["latency_stage"] == stage)
            };
            (has("RX_STAGE_TCPV4") && has("RX_STAGE_USERCOPY")).then_some(ours)
        },
    );
    let own_netns = std::fs::read_link("/proc/self/ns/net")
        .unwrap()
        .to_string_lossy()
        .into_owned();
    for doc in &docs {
        let data = &doc["tracer_data"];
        assert_eq!(doc["tracer_name"], "net_rx_latency");
        assert_eq!(doc["tracer_type"], "event");
        assert_eq!(data["tcp_saddr"], "127.0.0.1", "{data}");
        assert_eq!(data["tcp_daddr"], "127.0.0.1", "{data}");
        assert_eq!(data["tcp_state"], "ESTABLISHED", "{data}");
        assert!(data["tcp_seq"].as_u64().unwrap() > 0, "{data}");
        assert!(data["packet_len_bytes"].as_u64().unwrap() > 0, "{data}");
        assert!(data["latency_ns"].as_u64().unwrap() >= 1, "{data}");
        assert_eq!(data["latency_threshold_ns"], 1, "{data}");
        assert_eq!(
            data["latency_ms"],
            data["latency_ns"].as_u64().unwrap() / 1_000_000,
            "{data}"
        );
        assert!(
            own_netns.contains(&data["net_namespace_inum"].to_string()),
            "{own_netns} vs {data}"
        );
    }
    // The reader is this process, and it read each segment at least DELAY after it arrived.
    let usercopy: Vec<_> = docs
        .iter()
        .map(|d| &d["tracer_data"])
        .filter(|d| d["latency_stage"] == "RX_STAGE_USERCOPY")
        .collect();
    assert!(
        usercopy.iter().all(|d| d["pid"] == std::process::id()),
        "{usercopy:?}"
    );
    let slowest = usercopy
        .iter()
        .filter_map(|d| d["latency_ns"].as_u64())
        .max()
        .unwrap();
    assert!(slowest >= DELAY.as_nanos() as u64 * 8 / 10, "{slowest} ns");
    let metrics = agent.metrics();
    for stage in ["RX_STAGE_TCPV4", "RX_STAGE_USERCOPY"] {
        let saved = sample_with(
            &metrics,
            "kpulse_net_rx_latency_events_total",
            &format!("stage=\"{stage}\""),
        )
        .unwrap();
        assert!(saved >= 1.0, "{stage}: {saved}");
    }
}

/// HUATUO's default: the host network namespace (where this test runs) is excluded, so the
/// same traffic gives no events.
#[test]
fn host_netns_is_excluded_by_default() {
    let config = "[plugins.net_rx_latency]\ntcp_threshold_ns = 1\nusercopy_threshold_ns = 1\n";
    let agent = Agent::start(
        "net_rx_latency_excl",
        &[plugin_wasm("net_rx_latency")],
        config,
    );
    agent.wait_state("net_rx_latency", "running", Duration::from_secs(20));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let connections: Vec<_> = (0..10).map(|_| exchange(&listener, 32 * 1024)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let docs = agent.get("/events?tracer=net_rx_latency&limit=1000").json();
    let ours = docs.as_array().unwrap().iter().filter(|d| {
        let data = &d["tracer_data"];
        connections
            .iter()
            .any(|&(client, server)| data["tcp_sport"] == client && data["tcp_dport"] == server)
    });
    assert_eq!(ours.count(), 0, "{docs}");
    assert_eq!(agent.plugin("net_rx_latency").unwrap()["state"], "running");
}
