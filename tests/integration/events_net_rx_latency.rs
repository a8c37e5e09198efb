//! `net_rx_latency` on the real kernel: loopback TCP whose reader waits 50 ms before
//! reading gives TCPV4 and USERCOPY events (thresholds lowered to 1 ns) with the
//! connection's 4-tuple, and USERCOPY latencies of at least the reader's delay.
//!
//! The kernel stamps received skbs only while some socket asked for RX software timestamps;
//! the plugin declares `rx-timestamps`, so the host keeps such a socket open while it runs
//! (as HUATUO does). Nothing else on the machine enables timestamps during the test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kpulse_integration_tests::containers::Runtimes;
use kpulse_integration_tests::{
    Agent, bpf_programs_of, plugin_wasm, sample, sample_with, wait_for,
};

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
/// same traffic gives no events. Positive control in the same run: the same exchanges in a
/// network namespace of their own are reported, and they happen after the host's, so by the
/// time their events are in, events of the host's traffic would be in too.
#[test]
fn host_netns_is_excluded_by_default() {
    // Attached without a container: the other namespace here is a thread's, not a container's.
    let config = "[plugins.net_rx_latency]\ntcp_threshold_ns = 1\nusercopy_threshold_ns = 1\n\
                  attach_only_with_containers = false\n";
    let agent = Agent::start(
        "net_rx_latency_excl",
        &[plugin_wasm("net_rx_latency")],
        config,
    );
    agent.wait_state("net_rx_latency", "running", Duration::from_secs(20));
    let host_netns = netns_inum();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let connections: Vec<_> = (0..10).map(|_| exchange(&listener, 32 * 1024)).collect();

    let other = OtherNetns::start();
    let other_netns = other.inum;
    assert_ne!(other_netns, host_netns);
    let reported = wait_for(
        Duration::from_secs(30),
        "events of the same traffic in another network namespace (positive control)",
        || {
            let docs = agent
                .get("/events?tracer=net_rx_latency&limit=10000")
                .json();
            let count = docs
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["tracer_data"]["net_namespace_inum"] == other_netns)
                .count();
            (count > 0).then_some(count)
        },
    );
    let exchanges = other.stop();
    eprintln!("positive control: {reported} events after {exchanges} exchanges in the other netns");

    let docs = agent
        .get("/events?tracer=net_rx_latency&limit=10000")
        .json();
    let from_host: Vec<_> = docs
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| {
            let data = &d["tracer_data"];
            data["net_namespace_inum"] == host_netns
                || connections.iter().any(|&(client, server)| {
                    data["tcp_sport"] == client
                        && data["tcp_dport"] == server
                        && data["net_namespace_inum"] != other_netns
                })
        })
        .collect();
    assert!(from_host.is_empty(), "{from_host:?}");
    assert_eq!(agent.plugin("net_rx_latency").unwrap()["state"], "running");
}

/// Inode number of the calling thread's network namespace.
fn netns_inum() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
}

/// A thread in a network namespace of its own (loopback up) that runs [`exchange`]s until
/// stopped.
struct OtherNetns {
    inum: u64,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl OtherNetns {
    fn start() -> OtherNetns {
        let stop = Arc::new(AtomicBool::new(false));
        let (inum_tx, inum_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                // SAFETY: unshare has no memory-safety preconditions; CLONE_NEWNET moves only
                // this thread (and what it spawns) into the new namespace.
                #[allow(unsafe_code, reason = "unshare(2) has no safe wrapper in std")]
                let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "unshare(CLONE_NEWNET): {}",
                    std::io::Error::last_os_error()
                );
                // A child inherits the namespace of the thread that spawns it.
                let up = Command::new("ip")
                    .args(["link", "set", "lo", "up"])
                    .status()
                    .expect("ip (iproute2) must be installed");
                assert!(up.success(), "ip link set lo up: {up}");
                inum_tx.send(netns_inum()).unwrap();
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let mut exchanges = 0;
                while !stop.load(Ordering::Relaxed) {
                    exchange(&listener, 32 * 1024);
                    exchanges += 1;
                }
                exchanges
            }
        });
        match inum_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(inum) => OtherNetns {
                inum,
                stop,
                thread: Some(thread),
            },
            Err(err) => {
                stop.store(true, Ordering::Relaxed);
                if let Err(panic) = thread.join() {
                    std::panic::resume_unwind(panic);
                }
                panic!("the thread in the new network namespace did not start: {err}");
            }
        }
    }

    /// Stops the exchanges; returns how many there were.
    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for OtherNetns {
    /// Also when the test fails: the thread ends after its current exchange.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Whether the agent lists a running container with a network namespace of its own.
fn container_with_own_netns(agent: &Agent, host_netns: u64) -> bool {
    let listed = agent.get("/containers?state=running").json();
    listed["data"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| {
            !matches!(c["runtime"].as_str(), Some("systemd" | "cgroup"))
                && c["host_network"] == false
                && c["netns_inum"]
                    .as_u64()
                    .is_some_and(|n| n != 0 && n != host_netns)
        })
}

/// Whether process `pid` holds a BPF program of net_rx_latency's (`rx_*`).
fn holds_rx_programs(pid: u32) -> bool {
    bpf_programs_of(pid)
        .iter()
        .any(|name| name.starts_with("rx_"))
}

/// The default (host netns excluded): the per-packet hooks are attached only while some
/// container has a network namespace of its own. A real `ctr` container starts → the
/// hooks attach; it stops → they detach. Other tests' containers may run at the same time,
/// so each check compares the hooks with what the agent lists at that moment.
#[test]
fn hooks_attach_only_while_a_container_has_its_own_netns() {
    let runtimes = Runtimes::get();
    let config = format!(
        "[plugins.net_rx_latency]\ncontainer_check_seconds = 1\n{}",
        runtimes.agent_config("")
    );
    let agent = Agent::start(
        "net_rx_latency_gate",
        &[plugin_wasm("net_rx_latency")],
        &config,
    );
    agent.wait_state("net_rx_latency", "running", Duration::from_secs(20));
    let (pid, host_netns) = (agent.child.id(), netns_inum());
    let attached = |agent: &Agent| {
        let metrics = agent.metrics();
        sample(&metrics, "kpulse_net_rx_latency_attached") == Some(1.0)
    };
    // Settled: the gauge, the programs and the container list agree.
    wait_for(
        Duration::from_secs(15),
        "hooks matching the containers",
        || {
            let own = container_with_own_netns(&agent, host_netns);
            (attached(&agent) == own && holds_rx_programs(pid) == own).then_some(())
        },
    );

    let container = runtimes.ctr_run("kptest", "kp-rxlat-gate", &[], &[], "sleep 300");
    wait_for(
        Duration::from_secs(20),
        "hooks attached for the container",
        || {
            (container_with_own_netns(&agent, host_netns)
                && attached(&agent)
                && holds_rx_programs(pid))
            .then_some(())
        },
    );
    container.stop();
    let others = wait_for(
        Duration::from_secs(30),
        "hooks following the container's stop",
        || {
            let listed = agent.get("/containers?state=running").json().to_string();
            let own = container_with_own_netns(&agent, host_netns);
            (!listed.contains("kp-rxlat-gate")
                && attached(&agent) == own
                && holds_rx_programs(pid) == own)
                .then_some(own)
        },
    );
    eprintln!("after the stop, other tests' containers with their own netns: {others}");
    let metrics = agent.metrics();
    assert!(
        sample(&metrics, "kpulse_net_rx_latency_attaches_total").is_some_and(|v| v >= 1.0),
        "{metrics}"
    );
    assert_eq!(agent.plugin("net_rx_latency").unwrap()["state"], "running");
}

/// The duty cycle: with `sample_seconds = 2` of every `sample_period_seconds = 4` the
/// per-packet hooks come and go (seen in the agent's BPF programs, not only on its gauge),
/// `sampled_fraction` is 0.5, and `attached_seconds_total` grows at about half the wall
/// clock. Not gated on containers here, so no container is needed.
#[test]
fn duty_cycle_attaches_the_hooks_part_of_the_time() {
    let config = "[plugins.net_rx_latency]\nattach_only_with_containers = false\n\
                  sample_seconds = 2\nsample_period_seconds = 4\n";
    let agent = Agent::start(
        "net_rx_latency_duty",
        &[plugin_wasm("net_rx_latency")],
        config,
    );
    agent.wait_state("net_rx_latency", "running", Duration::from_secs(20));
    let pid = agent.child.id();
    // Both phases seen in the kernel's list of the agent's programs within two periods each.
    for (want, what) in [
        (true, "attached"),
        (false, "detached"),
        (true, "attached again"),
    ] {
        wait_for(
            Duration::from_secs(10),
            &format!("the hooks {what}"),
            || (holds_rx_programs(pid) == want).then_some(()),
        );
    }
    let metrics = agent.metrics();
    assert_eq!(
        sample(&metrics, "kpulse_net_rx_latency_sampled_fraction"),
        Some(0.5),
        "{metrics}"
    );
    let attaches = sample(&metrics, "kpulse_net_rx_latency_attaches_total").unwrap_or(0.0);
    assert!(attaches >= 2.0, "attaches {attaches}");
    let seconds = |agent: &Agent| {
        sample(
            &agent.metrics(),
            "kpulse_net_rx_latency_attached_seconds_total",
        )
        .unwrap_or(0.0)
    };
    let (wall, before) = (std::time::Instant::now(), seconds(&agent));
    std::thread::sleep(Duration::from_secs(8));
    let share = (seconds(&agent) - before) / wall.elapsed().as_secs_f64();
    eprintln!("duty cycle 2 s / 4 s: hooks attached {share:.2} of 8 s");
    assert!(
        (0.25..=0.75).contains(&share),
        "attached {share:.2} of the time with a 2 s / 4 s duty cycle"
    );
    assert_eq!(agent.plugin("net_rx_latency").unwrap()["state"], "running");
}
