//! `tcp_retransmit` on the real kernel: loopback segments dropped with iptables (Debian's
//! `iptables` package, nft-backed; the `statistic` match is built into this kernel) make TCP
//! retransmit data (fast retransmit and RTO), SYNs and SYN-ACKs. The drops are on INPUT:
//! a segment dropped on OUTPUT fails its transmit, and TCP sends it again as new data, not
//! as a retransmission.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kpulse_integration_tests::{Agent, plugin_wasm, sample, sample_with, wait_for};
use serde_json::Value;

/// The tests here count every retransmit the agent saves: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// An iptables rule, deleted again when dropped (also when the test fails).
struct Rule(Vec<String>);

impl Rule {
    fn add(spec: &str) -> Rule {
        let args: Vec<String> = spec.split_whitespace().map(str::to_owned).collect();
        let status = Command::new("iptables")
            .arg("-A")
            .args(&args)
            .status()
            .expect("iptables (Debian package iptables) must be installed");
        assert!(status.success(), "iptables -A {spec}");
        Rule(args)
    }
}

impl Drop for Rule {
    fn drop(&mut self) {
        let _ = Command::new("iptables").arg("-D").args(&self.0).status();
    }
}

/// A loopback listener whose connections are read to the end by a thread.
fn sink() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

fn drain(listener: TcpListener, stop: &'static AtomicBool) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let mut buf = [0; 65536];
                while !stop.load(Ordering::Relaxed) {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
}

/// Sends 1000-byte writes on `conn` until `stop`.
fn send(mut conn: TcpStream, stop: &'static AtomicBool) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let payload = [b'k'; 1000];
        while !stop.load(Ordering::Relaxed) {
            if conn.write_all(&payload).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = conn.shutdown(Shutdown::Both);
    })
}

fn documents(agent: &Agent) -> Vec<Value> {
    agent
        .get("/events?tracer=tcp_retransmit&limit=10000")
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn own_netns() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn data_syn_and_synack_retransmits_carry_addresses_ports_and_reason() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let agent = Agent::start("tcp-retransmit", &[plugin_wasm("tcp_retransmit")], "");
    agent.wait_state("tcp_retransmit", "running", Duration::from_secs(20));
    static STOP: AtomicBool = AtomicBool::new(false);

    // Data: 30 % of the segments to the sink are lost.
    let (data_listener, data_port) = sink();
    drain(data_listener, &STOP);
    // SYNs: every SYN to this listener is lost, so the client's SYN is resent by its timer.
    let (_syn_listener, syn_port) = sink();
    // SYN-ACKs: the client's handshake ACK is lost, so the server resends its SYN-ACK.
    let (_synack_listener, synack_port) = sink();
    let _rules = [
        Rule::add(&format!(
            "INPUT -i lo -p tcp --dport {data_port} -m statistic --mode random --probability 0.3 -j DROP"
        )),
        Rule::add(&format!(
            "INPUT -i lo -p tcp --dport {syn_port} --syn -j DROP"
        )),
        Rule::add(&format!(
            "INPUT -i lo -p tcp --dport {synack_port} --tcp-flags SYN,ACK,FIN,RST,PSH ACK -j DROP"
        )),
    ];

    // The data connection's own SYN may be lost too: connect with the kernel's retries.
    let data_conn = TcpStream::connect(("127.0.0.1", data_port)).unwrap();
    let data_client_port = data_conn.local_addr().unwrap().port();
    let sender = send(data_conn, &STOP);
    let syn_target: SocketAddr = ([127, 0, 0, 1], syn_port).into();
    let syn_client = std::thread::spawn(move || {
        let err = TcpStream::connect_timeout(&syn_target, Duration::from_secs(4))
            .expect_err("every SYN is dropped");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    });
    // The client side completes at once (it got the SYN-ACK); the server keeps the request.
    let _synack_client = TcpStream::connect(("127.0.0.1", synack_port)).unwrap();

    let (data, syn, synack) = wait_for(
        Duration::from_secs(30),
        "data, SYN and SYN-ACK retransmits",
        || {
            let docs = documents(&agent);
            let pick = |f: &dyn Fn(&Value) -> bool| -> Vec<Value> {
                docs.iter()
                    .map(|d| d["tracer_data"].clone())
                    .filter(|d| f(d))
                    .collect()
            };
            let data = pick(&|d| {
                d["tcp_dport"] == data_port
                    && d["tcp_sport"] == data_client_port
                    && d["tcp_state"] == "ESTABLISHED"
            });
            let syn = pick(&|d| d["tcp_dport"] == syn_port);
            let synack = pick(&|d| d["tcp_sport"] == synack_port);
            // Fast retransmits need three duplicate ACKs; an RTO comes anyway: wait for
            // enough data retransmits to see both reasons most of the time, but ask for one.
            (data.len() >= 5 && !syn.is_empty() && !synack.is_empty())
                .then_some((data, syn, synack))
        },
    );
    STOP.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    syn_client.join().unwrap();

    let netns = own_netns();
    assert!(
        data.iter()
            .any(|d| d["tcp_reason"] == "RTO" || d["tcp_reason"] == "fast_retransmit"),
        "lost data is resent by the timer or by fast retransmit: {data:?}"
    );
    for d in &data {
        assert_eq!(d["event_type"], "tcp_retransmit_skb", "{d}");
        assert_eq!(d["phase"], "data", "{d}");
        assert_eq!(d["tcp_saddr"], "127.0.0.1", "{d}");
        assert_eq!(d["tcp_daddr"], "127.0.0.1", "{d}");
        // HUATUO's reason from the congestion state: Loss (4) = RTO, Recovery (3) = fast
        // retransmit, otherwise (a tail loss probe resends in Open state) unknown.
        let expected = match d["ca_state"].as_u64().unwrap() {
            4 => "RTO",
            3 => "fast_retransmit",
            _ => "unknown",
        };
        assert_eq!(d["tcp_reason"], expected, "{d}");
        assert!(d["tcp_flags"].as_str().unwrap().contains("ACK"), "{d}");
        assert!(d["tcp_end_seq"].as_u64().unwrap() > 0, "{d}");
        assert_eq!(d["err"], 0, "the segment was sent (dropped on input): {d}");
        assert!(
            netns.contains(&d["net_namespace_inum"].to_string()),
            "{netns} vs {d}"
        );
    }
    for d in &syn {
        assert_eq!(d["event_type"], "tcp_retransmit_skb", "{d}");
        assert_eq!(d["tcp_state"], "SYN_SENT", "{d}");
        assert_eq!(
            (&d["phase"], &d["tcp_reason"]),
            (&"connect".into(), &"RTO".into()),
            "{d}"
        );
        assert_eq!(d["tcp_flags"], "SYN", "{d}");
        assert_eq!(d["tcp_saddr"], "127.0.0.1", "{d}");
        assert_eq!(d["tcp_daddr"], "127.0.0.1", "{d}");
    }
    for d in &synack {
        assert_eq!(d["event_type"], "tcp_retransmit_synack", "{d}");
        assert_eq!(d["tcp_state"], "NEW_SYN_RECV", "{d}");
        assert_eq!(
            (&d["phase"], &d["tcp_reason"]),
            (&"connect".into(), &"RTO".into()),
            "{d}"
        );
        assert_eq!(d["tcp_flags"], "SYN|ACK", "{d}");
        assert_eq!(d["tcp_daddr"], "127.0.0.1", "{d}");
        assert!(
            d["tcp_dport"].as_u64().unwrap() > 0,
            "the client's port: {d}"
        );
        assert!(
            netns.contains(&d["net_namespace_inum"].to_string()),
            "the listener's netns: {netns} vs {d}"
        );
    }

    // drop_location: the iptables DROP of this flow (netfilter frees the segment: in
    // nft_do_chain with Debian's nft-backed iptables, nf_hook_slow with the legacy one), seen by the plugin's kfree_skb hook and
    // reported with the retransmit it caused: the data and SYN segments' own drops, and for
    // the SYN-ACK the client's dropped ACK (the flow's other direction).
    for (kind, docs) in [("data", &data), ("SYN", &syn), ("SYN-ACK", &synack)] {
        let located: Vec<&Value> = docs
            .iter()
            .filter(|d| d.get("drop_location").is_some())
            .collect();
        eprintln!(
            "{kind}: {} of {} retransmits with a drop_location, e.g. {:?}",
            located.len(),
            docs.len(),
            located.first().map(|d| (
                &d["drop_location"],
                &d["drop_reason_code"],
                &d["drop_age_ms"]
            ))
        );
        assert!(
            !located.is_empty(),
            "{kind}: no retransmit carries its drop: {docs:?}"
        );
        for d in located {
            let location = d["drop_location"].as_str().unwrap();
            assert!(
                location.starts_with("nf_") || location.starts_with("nft_"),
                "{kind}: dropped by iptables, not at {location}: {d}"
            );
            let age = d["drop_age_ms"].as_f64().unwrap();
            assert!((0.0..=2000.0).contains(&age), "{kind}: {d}");
        }
    }

    // Documents are host-level here (host netns) and typed as events; every retransmit is
    // counted in the kernel by event type.
    let docs = documents(&agent);
    assert!(
        docs.iter()
            .all(|d| d["tracer_type"] == "event" && d.get("container_id").is_none())
    );
    let metrics = agent.metrics();
    let counted = sample_with(
        &metrics,
        "kpulse_tcp_retransmit_retransmits_total",
        "event_type=\"tcp_retransmit_skb\"",
    )
    .unwrap();
    assert!(counted >= (data.len() + syn.len()) as f64, "{counted}");
    let synacks = sample_with(
        &metrics,
        "kpulse_tcp_retransmit_retransmits_total",
        "event_type=\"tcp_retransmit_synack\"",
    )
    .unwrap();
    assert!(synacks >= synack.len() as f64, "{synacks}");
    assert_eq!(
        sample(&metrics, "kpulse_tcp_retransmit_tlp_attached"),
        Some(0.0)
    );
    eprintln!(
        "tcp_retransmit: {} data ({} RTO), {} SYN, {} SYN-ACK retransmit documents",
        data.len(),
        data.iter().filter(|d| d["tcp_reason"] == "RTO").count(),
        syn.len(),
        synack.len()
    );
}

/// `max_events_per_second` is enforced in the kernel across all CPUs: far more retransmits
/// than the budget give at most the budget in documents, and the kernel counts the rest.
#[test]
fn rate_limit_holds_under_a_retransmit_storm() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    const RATE: u64 = 4;
    let config = format!("[plugins.tcp_retransmit]\nmax_events_per_second = {RATE}\n");
    let agent = Agent::start(
        "tcp-retransmit-rl",
        &[plugin_wasm("tcp_retransmit")],
        &config,
    );
    agent.wait_state("tcp_retransmit", "running", Duration::from_secs(20));
    let started = Instant::now();
    static STOP: AtomicBool = AtomicBool::new(false);
    let (listener, port) = sink();
    drain(listener, &STOP);
    let _rule = Rule::add(&format!(
        "INPUT -i lo -p tcp --dport {port} -m statistic --mode random --probability 0.5 -j DROP"
    ));
    let senders: Vec<_> = (0..8)
        .map(|_| send(TcpStream::connect(("127.0.0.1", port)).unwrap(), &STOP))
        .collect();
    let (counted, limited) = wait_for(
        Duration::from_secs(30),
        "retransmits well over the budget",
        || {
            let metrics = agent.metrics();
            let counted = sample_with(
                &metrics,
                "kpulse_tcp_retransmit_retransmits_total",
                "event_type=\"tcp_retransmit_skb\"",
            )?;
            let limited = sample_with(
                &metrics,
                "kpulse_plugin_bpf_rate_limited_total",
                "plugin=\"tcp_retransmit\"",
            )?;
            (counted >= 10.0 * RATE as f64 && limited > 0.0).then_some((counted, limited))
        },
    );
    STOP.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.join().unwrap();
    }
    drop(_rule);
    // Everything the kernel emitted is stored once the saved count stops moving.
    let mut last = -1.0;
    let saved = wait_for(Duration::from_secs(10), "the saved count to settle", || {
        let saved = sample_with(
            &agent.metrics(),
            "kpulse_plugin_documents_saved_total",
            "plugin=\"tcp_retransmit\"",
        )?;
        let settled = saved == last;
        last = saved;
        std::thread::sleep(Duration::from_millis(400));
        settled.then_some(saved)
    });
    let elapsed = started.elapsed().as_secs_f64();
    // The budget over the whole window, plus one full bucket at the start.
    let budget = RATE as f64 * (elapsed + 1.0);
    assert!(
        saved <= budget,
        "{saved} documents in {elapsed:.1} s with a budget of {RATE}/s (at most {budget:.0}); {counted} retransmits"
    );
    assert!(saved >= 1.0, "{saved}");
    eprintln!(
        "tcp_retransmit rate limit: {counted} retransmits counted, {limited} rate-limited, {saved} saved in {elapsed:.1} s (budget {budget:.0})"
    );
}

/// `enable_tlp` asks for a kprobe; on a kernel without kprobes that is a typed
/// not-supported: logged, the tracepoints still run, the plugin is not failed.
#[test]
fn tlp_without_kprobes_is_not_supported_and_not_an_error() {
    let agent = Agent::start(
        "tcp-retransmit-tlp",
        &[plugin_wasm("tcp_retransmit")],
        "[plugins.tcp_retransmit]\nenable_tlp = true\n",
    );
    let plugin = agent.wait_state("tcp_retransmit", "running", Duration::from_secs(20));
    let kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    let metrics = agent.metrics();
    let attached = sample(&metrics, "kpulse_tcp_retransmit_tlp_attached").unwrap();
    if kprobes {
        eprintln!("this kernel has kprobes: TLP attached = {attached}");
        return;
    }
    assert_eq!(attached, 0.0, "{metrics}");
    let log = agent.log();
    assert_eq!(log.matches("TLP not traced").count(), 1, "{log}");
    assert_eq!(plugin["restarts"].as_u64().unwrap_or(0), 0, "{plugin}");
}
