//! `dropwatch` on the real kernel: UDP to a closed port is dropped with reason NO_SOCKET.

use std::time::Duration;

use kpulse_integration_tests::{Agent, plugin_wasm, sample_with, wait_for};

#[test]
fn udp_to_closed_port_gives_no_socket_drops() {
    let _serial = kpulse_integration_tests::kfree_skb_lock();
    let agent = Agent::start("dropwatch", &[plugin_wasm("dropwatch")], "");
    agent.wait_state("dropwatch", "running", Duration::from_secs(20));
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // skb->len at the drop covers the UDP header (8 bytes) and the payload.
    let docs = wait_for(Duration::from_secs(20), "NO_SOCKET drop events", || {
        for _ in 0..5 {
            let _ = sender.send_to(b"kpulse", ("127.0.0.1", port));
        }
        std::thread::sleep(Duration::from_millis(100));
        let response = agent.get("/events?tracer=dropwatch&limit=1000");
        let docs: Vec<serde_json::Value> = response.json().as_array().cloned().unwrap_or_default();
        let hits: Vec<_> = docs
            .into_iter()
            .filter(|d| {
                d["tracer_data"]["drop_reason"] == "NO_SOCKET"
                    && d["tracer_data"]["packet_len_bytes"] == 8 + 6
            })
            .collect();
        (!hits.is_empty()).then_some(hits)
    });
    let data = &docs[0]["tracer_data"];
    assert_eq!(docs[0]["tracer_type"], "event");
    assert_eq!(data["netdev_name"], "lo");
    assert_eq!(data["packet_eth_proto"], 0x0800);
    assert!(
        data["drop_location"].as_str().unwrap().contains("udp"),
        "{data}"
    );
    assert!(
        data["stack"].as_array().is_some_and(|s| s.len() > 3),
        "{data}"
    );
    let own_netns = std::fs::read_link("/proc/self/ns/net")
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        own_netns.contains(&data["net_namespace_inum"].to_string()),
        "{own_netns} vs {data}"
    );
    let drops = sample_with(
        &agent.metrics(),
        "kpulse_dropwatch_drops_total",
        "reason=\"NO_SOCKET\"",
    )
    .unwrap();
    assert!(drops >= 5.0, "{drops}");
}
