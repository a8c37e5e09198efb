//! Mutating endpoints answer loopback clients only, unless a bearer token is configured.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;

use kpulse_integration_tests::{Agent, http, plugin_wasm};

/// All addresses, port 0: these tests reach the agent from a non-loopback address.
const ANY_ADDRESS: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// A local address that is not loopback: the source address of the default route, or a
/// dummy interface the test creates (as root) when the machine has none.
fn non_loopback_ip() -> IpAddr {
    let routed = UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("10.255.255.255:9").map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip());
    if let Ok(ip) = routed
        && !ip.is_loopback()
        && !ip.is_unspecified()
    {
        return ip;
    }
    let _ = Command::new("ip")
        .args(["link", "add", "kpulse-test0", "type", "dummy"])
        .status();
    let _ = Command::new("ip")
        .args(["addr", "add", "10.199.0.1/32", "dev", "kpulse-test0"])
        .status();
    let _ = Command::new("ip")
        .args(["link", "set", "kpulse-test0", "up"])
        .status();
    "10.199.0.1".parse().unwrap()
}

#[test]
fn mutating_endpoints_are_loopback_only_by_default() {
    let agent = Agent::start_on(ANY_ADDRESS, "sec", &[plugin_wasm("loadavg")], "");
    agent.wait_state("loadavg", "running", std::time::Duration::from_secs(10));
    let outside = SocketAddr::new(non_loopback_ip(), agent.addr.port());
    // Reads are open.
    assert_eq!(http(outside, "GET", "/plugins", &[]).unwrap().status, 200);
    // Writes from a non-loopback address are refused.
    let refused = http(outside, "PUT", "/plugins/loadavg/stop", &[]).unwrap();
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(agent.plugin("loadavg").unwrap()["state"], "running");
    // From loopback they work, with HUATUO's codes.
    assert_eq!(agent.put("/plugins/loadavg/stop").status, 204);
    agent.wait_state("loadavg", "stopped", std::time::Duration::from_secs(5));
    assert_eq!(agent.put("/plugins/loadavg/stop").status, 409);
    assert_eq!(agent.put("/plugins/nope/stop").status, 404);
    assert_eq!(agent.put("/plugins/loadavg/start").status, 204);
    agent.wait_state("loadavg", "running", std::time::Duration::from_secs(5));
}

#[test]
fn bearer_token_opens_mutating_endpoints() {
    let agent = Agent::start_on(
        ANY_ADDRESS,
        "token",
        &[plugin_wasm("loadavg")],
        "[http]\nbearer_token = \"s3cret\"\n",
    );
    let outside = SocketAddr::new(non_loopback_ip(), agent.addr.port());
    assert_eq!(
        http(
            outside,
            "PUT",
            "/plugins/loadavg/stop",
            &[("Authorization", "Bearer wrong")]
        )
        .unwrap()
        .status,
        403
    );
    assert_eq!(
        http(
            outside,
            "PUT",
            "/plugins/loadavg/stop",
            &[("Authorization", "Bearer s3cret")]
        )
        .unwrap()
        .status,
        204
    );
}
