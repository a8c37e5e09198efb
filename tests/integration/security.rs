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

/// A network namespace joined to this one by a veth pair (`10.203.<n>.1` here, `.2` there),
/// removed on drop: a client in it is another host as far as the agent can tell.
struct PeerNamespace {
    name: String,
    host_link: String,
}

impl PeerNamespace {
    fn create() -> PeerNamespace {
        let n = std::process::id() % 250;
        let name = format!("kpulse-peer-{n}");
        let host_link = format!("kpp{n}h");
        let peer_link = format!("kpp{n}p");
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &host_link])
            .status();
        let run = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().unwrap();
            assert!(status.success(), "ip {args:?}");
        };
        run(&["netns", "add", &name]);
        run(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", &peer_link,
        ]);
        run(&["link", "set", &peer_link, "netns", &name]);
        run(&[
            "addr",
            "add",
            &format!("10.203.{n}.1/30"),
            "dev",
            &host_link,
        ]);
        run(&["link", "set", &host_link, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            run(&all);
        };
        inside(&[
            "addr",
            "add",
            &format!("10.203.{n}.2/30"),
            "dev",
            &peer_link,
        ]);
        inside(&["link", "set", &peer_link, "up"]);
        inside(&["link", "set", "lo", "up"]);
        PeerNamespace { name, host_link }
    }

    fn agent_address(&self) -> IpAddr {
        format!("10.203.{}.1", std::process::id() % 250)
            .parse()
            .unwrap()
    }

    /// Runs `work` on a thread that joined the namespace (setns affects the thread only).
    fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on a namespace fd we own, for this thread only.
            #[allow(unsafe_code, reason = "setns(2): join the peer namespace")]
            let joined =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            assert_eq!(joined, 0, "setns: {}", std::io::Error::last_os_error());
            work()
        })
        .join()
        .unwrap()
    }
}

impl Drop for PeerNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn median_micros(mut samples: Vec<u128>) -> u128 {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// A client in another network namespace (another host, to the agent): reads are open;
/// mutating requests without a token, with a wrong one (same length or not) are refused,
/// and take as long whether the wrong token differs in its first byte or its last (the
/// comparison is constant-time; the medians of 150 requests each are printed); the right
/// token opens them.
#[test]
fn mutating_endpoints_from_another_network_namespace_need_the_right_token() {
    let peer = PeerNamespace::create();
    let agent = Agent::start_on(
        ANY_ADDRESS,
        "netns-token",
        &[plugin_wasm("loadavg")],
        // The rate limit off: 300 timed requests from one client would be throttled (429),
        // and the timing is of the token check.
        "[http]\nbearer_token = \"kp-0123456789abcdef0123456789abcdef\"\nrate_limit_per_second = 0\n",
    );
    agent.wait_state("loadavg", "running", std::time::Duration::from_secs(20));
    let target = SocketAddr::new(peer.agent_address(), agent.addr.port());
    let (read, none, short, first, last, right, timing) = peer.run(move || {
        let status = |method: &str, auth: Option<&str>| {
            let header = auth.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = header
                .as_deref()
                .map(|h| vec![("Authorization", h)])
                .unwrap_or_default();
            http(target, method, "/plugins/loadavg/stop", &headers)
                .map(|r| r.status)
                .unwrap_or(0)
        };
        let wrong_first = "Xp-0123456789abcdef0123456789abcdef";
        let wrong_last = "kp-0123456789abcdef0123456789abcdeX";
        let timed = |token: &str| {
            let header = format!("Bearer {token}");
            let samples: Vec<u128> = (0..150)
                .map(|_| {
                    let started = std::time::Instant::now();
                    let _ = http(
                        target,
                        "PUT",
                        "/plugins/loadavg/stop",
                        &[("Authorization", &header)],
                    );
                    started.elapsed().as_micros()
                })
                .collect();
            median_micros(samples)
        };
        let timing = (timed(wrong_first), timed(wrong_last));
        (
            http(target, "GET", "/plugins", &[])
                .map(|r| r.status)
                .unwrap_or(0),
            status("PUT", None),
            status("PUT", Some("kp-short")),
            status("PUT", Some(wrong_first)),
            status("PUT", Some(wrong_last)),
            status("PUT", Some("kp-0123456789abcdef0123456789abcdef")),
            timing,
        )
    });
    println!(
        "wrong token from another netns: median {} µs (first byte wrong) vs {} µs (last byte wrong)",
        timing.0, timing.1
    );
    assert_eq!(read, 200, "reads are open to the network");
    assert_eq!((none, short, first, last), (403, 403, 403, 403));
    let (fast, slow) = (timing.0.min(timing.1), timing.0.max(timing.1));
    assert!(
        slow <= fast * 2 + 200,
        "refusal time depends on where the token differs: {timing:?} µs"
    );
    assert_eq!(right, 204, "the right token from another host");
    agent.wait_state("loadavg", "stopped", std::time::Duration::from_secs(5));
}
