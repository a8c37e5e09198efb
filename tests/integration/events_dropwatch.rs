//! `dropwatch` on the real kernel: UDP and TCP to a closed port are dropped with reason
//! NO_SOCKET; by default only the TCP drops become events, every drop is counted.

use std::time::Duration;

use kpulse_integration_tests::{Agent, plugin_wasm, sample_with, wait_for};

#[test]
fn udp_to_closed_port_gives_no_socket_drops() {
    let _serial = kpulse_integration_tests::kfree_skb_lock();
    let agent = Agent::start(
        "dropwatch",
        &[plugin_wasm("dropwatch")],
        "[plugins.dropwatch]\nprotocols = [\"udp\"]\n",
    );
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

/// HUATUO's default filter is "tcp": with the defaults a refused TCP connection (its SYN
/// dropped, NO_SOCKET) is an event, while UDP drops are only counted, by reason.
#[test]
fn by_default_only_tcp_drops_are_events_and_every_drop_is_counted() {
    let _serial = kpulse_integration_tests::kfree_skb_lock();
    let agent = Agent::start("dropwatch-tcp", &[plugin_wasm("dropwatch")], "");
    agent.wait_state("dropwatch", "running", Duration::from_secs(20));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let udp_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let counted = |metrics: &str| {
        sample_with(
            metrics,
            "kpulse_dropwatch_drops_total",
            "reason=\"NO_SOCKET\"",
        )
        .unwrap_or(0.0)
    };
    let before = counted(&agent.metrics());
    const UDP_SENT: usize = 200;
    for _ in 0..UDP_SENT {
        let _ = sender.send_to(b"kpulse-udp", ("127.0.0.1", udp_port));
    }
    let tcp = wait_for(
        Duration::from_secs(20),
        "a TCP NO_SOCKET drop event",
        || {
            let refused = std::net::TcpStream::connect_timeout(&closed, Duration::from_secs(1));
            assert!(refused.is_err(), "nobody listens on {closed}");
            std::thread::sleep(Duration::from_millis(100));
            let docs = agent.get("/events?tracer=dropwatch&limit=1000").json();
            let docs = docs.as_array().cloned().unwrap_or_default();
            docs.iter()
                .any(|d| d["tracer_data"]["drop_reason"] == "NO_SOCKET")
                .then_some(docs)
        },
    );
    // Only TCP drops (the refused SYNs, and whatever else TCP drops on this host, such as
    // queues purged on close): no UDP datagram (8 + 10 bytes) became an event.
    for doc in &tcp {
        let data = &doc["tracer_data"];
        assert_ne!(
            data["packet_len_bytes"],
            8 + 10,
            "a UDP drop was reported: {data}"
        );
        if data["drop_reason"] == "NO_SOCKET" {
            assert!(
                data["drop_location"].as_str().unwrap_or("").contains("tcp"),
                "{data}"
            );
        }
    }
    let after = wait_for(Duration::from_secs(10), "the UDP drops counted", || {
        let after = counted(&agent.metrics());
        (after - before >= UDP_SENT as f64).then_some(after)
    });
    assert!(
        after - before >= (UDP_SENT + 1) as f64,
        "{before} -> {after}"
    );
}

/// Pins the calling thread to `cpus` (children it spawns inherit the mask).
fn pin_thread(cpus: &[usize]) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    #[allow(unsafe_code, reason = "sched_setaffinity has no std wrapper")]
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The in-kernel rate limit is a per-CPU token bucket of `max_events_per_second / CPUs`:
/// the CPU count must be the kernel's possible CPUs, not what the agent may run on. Started
/// on one CPU of two (as in a CPU-limited container), an agent that divided by its own
/// parallelism gave every CPU the whole budget and kept twice the events.
#[test]
fn rate_limit_holds_when_the_agent_may_run_on_fewer_cpus_than_the_kernel_has() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("skipped: needs at least 2 CPUs, this machine has {cpus}");
        return;
    }
    let _serial = kpulse_integration_tests::kfree_skb_lock();
    const RATE: u64 = 20;
    let config = format!(
        "[plugins.dropwatch]\nmax_events_per_second = {RATE}\nignore_not_specified = false\nprotocols = [\"udp\"]\n"
    );
    // The agent inherits this thread's CPU mask: it may only run on CPU 0.
    let agent = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                pin_thread(&[0]);
                Agent::start("dropwatch-ratelimit", &[plugin_wasm("dropwatch")], &config)
            })
            .join()
            .unwrap()
    });
    agent.wait_state("dropwatch", "running", Duration::from_secs(20));
    let started = std::time::Instant::now();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Drops on every CPU, far above the budget, for a few seconds.
    let load = Duration::from_secs(4);
    std::thread::scope(|scope| {
        for cpu in 0..cpus {
            scope.spawn(move || {
                pin_thread(&[cpu]);
                let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                let until = std::time::Instant::now() + load;
                while std::time::Instant::now() < until {
                    for _ in 0..50 {
                        let _ = sender.send_to(b"kpulse", ("127.0.0.1", port));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        }
    });
    // Let the last records reach the store.
    let saved = wait_for(Duration::from_secs(10), "drop events stored", || {
        let metrics = agent.metrics();
        let saved = sample_with(
            &metrics,
            "kpulse_plugin_documents_saved_total",
            "plugin=\"dropwatch\"",
        )?;
        let limited = sample_with(
            &metrics,
            "kpulse_plugin_bpf_rate_limited_total",
            "plugin=\"dropwatch\"",
        )?;
        (saved > 0.0 && limited > 0.0).then_some(saved)
    });
    std::thread::sleep(Duration::from_millis(500));
    let saved = sample_with(
        &agent.metrics(),
        "kpulse_plugin_documents_saved_total",
        "plugin=\"dropwatch\"",
    )
    .unwrap_or(saved);
    let elapsed = started.elapsed().as_secs_f64();
    // Budget over the whole window, plus one full bucket per CPU at the start.
    let budget = RATE as f64 * (elapsed + 1.0);
    assert!(
        saved <= budget,
        "{saved} events kept in {elapsed:.1} s with a budget of {RATE}/s (at most {budget:.0})"
    );
    assert!(
        saved >= RATE as f64,
        "{saved} events: the load did not reach the limit"
    );
}
