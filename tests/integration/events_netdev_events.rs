//! `netdev_events` on the real kernel: a veth pair made by the test is set down and up, and
//! its carrier toggled by setting the peer down and up; the agent's rtnetlink subscription
//! (the `link-events` interface) gives HUATUO's documents and `linkstatus` counters, with
//! the driver from ethtool. Needs root and iproute2.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use kpulse_integration_tests::{Agent, plugin_wasm, sample, sample_with, wait_for};
use serde_json::Value;

const A: &str = "kpne0";
const B: &str = "kpne1";

fn ip(args: &str) {
    let status = Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .expect("ip (iproute2)");
    assert!(status.success(), "ip {args}");
}

/// The veth pair, deleted when dropped (also when the test fails).
struct Veth;

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", A]).status();
    }
}

fn documents(agent: &Agent) -> Vec<Value> {
    agent
        .get("/events?tracer=netdev_events&limit=1000")
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Every status of every saved document, per device, in order.
fn statuses(agent: &Agent) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for doc in documents(agent) {
        let data = &doc["tracer_data"];
        let device = data["ifname"].as_str().unwrap_or_default().to_owned();
        for status in data["linkstatus"].as_str().unwrap_or_default().split(", ") {
            out.entry(device.clone())
                .or_default()
                .push(status.to_owned());
        }
    }
    out
}

fn count(metrics: &str, status: &str, device: &str) -> Option<f64> {
    sample_with(
        metrics,
        &format!("kpulse_netdev_events_linkstatus_{status}_total"),
        &format!(
            "device=\"{device}\",driver=\"veth\",driver_version=\"1.0\",firmware_version=\"\"}}"
        ),
    )
}

/// Waits until `device` has `want` documents' worth of `status`.
fn wait_status(agent: &Agent, device: &str, status: &str, want: usize) {
    let full = format!("linkstatus_{status}");
    wait_for(
        Duration::from_secs(15),
        &format!("{want} x {full} of {device}"),
        || {
            let got = statuses(agent);
            let n = got
                .get(device)
                .map_or(0, |s| s.iter().filter(|x| **x == full).count());
            (n >= want).then_some(())
        },
    );
}

#[test]
fn veth_admin_and_carrier_changes_give_documents_and_counters() {
    let _ = Command::new("ip").args(["link", "del", A]).status();
    ip(&format!("link add {A} type veth peer name {B}"));
    let _veth = Veth;
    ip(&format!("link set {B} up"));
    ip(&format!("link set {A} up"));

    let agent = Agent::start(
        "netdev-events",
        &[plugin_wasm("netdev_events")],
        "[containers]\nenabled = false\n[plugins.netdev_events]\ndevice_list = [\"kpne[0-9]\"]\ninterval_ms = 200\n",
    );
    agent.wait_state("netdev_events", "running", Duration::from_secs(20));
    // The start-up scan saves nothing, but every watched device has its counters at 0.
    let metrics = agent.metrics();
    for device in [A, B] {
        for status in [
            "unknown",
            "adminup",
            "admindown",
            "carrierup",
            "carrierdown",
        ] {
            assert_eq!(
                count(&metrics, status, device),
                Some(0.0),
                "{status} {device}: {metrics}"
            );
        }
    }
    assert!(documents(&agent).is_empty());
    assert!(
        !metrics.contains("device=\"lo\""),
        "lo is not in device_list"
    );

    // Admin down: HUATUO's two statuses in one document (IFF_UP and IFF_LOWER_UP both
    // change); the peer loses its carrier.
    ip(&format!("link set {A} down"));
    wait_status(&agent, A, "admindown", 1);
    wait_status(&agent, B, "carrierdown", 1);
    let docs = documents(&agent);
    let down = docs
        .iter()
        .find(|d| d["tracer_data"]["ifname"] == A)
        .expect("a document of kpne0");
    let data = &down["tracer_data"];
    assert_eq!(
        data["linkstatus"], "linkstatus_admindown, linkstatus_carrierdown",
        "{down}"
    );
    assert_eq!(down["tracer_name"], "netdev_events");
    assert_eq!(down["tracer_type"], "event");
    assert_eq!(data["start"], false);
    assert_eq!(data["driver"], "veth");
    assert_eq!(data["driver_version"], "1.0");
    assert_eq!(data["kind"], "veth");
    let mac = std::fs::read_to_string(format!("/sys/class/net/{A}/address")).unwrap();
    assert_eq!(data["mac"], mac.trim());
    let ifindex: u64 = std::fs::read_to_string(format!("/sys/class/net/{A}/ifindex"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(data["index"], ifindex);

    // Admin up again: admin and carrier back (one notification or two).
    ip(&format!("link set {A} up"));
    wait_status(&agent, A, "adminup", 1);
    wait_status(&agent, A, "carrierup", 1);
    wait_status(&agent, B, "carrierup", 1);

    // Carrier only: the peer down and up; kpne0 stays admin up.
    ip(&format!("link set {B} down"));
    wait_status(&agent, A, "carrierdown", 2);
    wait_status(&agent, B, "admindown", 1);
    ip(&format!("link set {B} up"));
    wait_status(&agent, A, "carrierup", 2);
    wait_status(&agent, B, "adminup", 1);

    let got = statuses(&agent);
    let of = |device: &str, status: &str| {
        got[device]
            .iter()
            .filter(|s| **s == format!("linkstatus_{status}"))
            .count()
    };
    for device in [A, B] {
        assert_eq!(
            (of(device, "adminup"), of(device, "admindown")),
            (1, 1),
            "{device}: {got:?}"
        );
        assert_eq!(
            (of(device, "carrierup"), of(device, "carrierdown")),
            (2, 2),
            "{device}: {got:?}"
        );
    }
    assert!(got.keys().all(|d| d == A || d == B), "{got:?}");
    // The counters say the same as the documents.
    let metrics = agent.metrics();
    for device in [A, B] {
        assert_eq!(count(&metrics, "adminup", device), Some(1.0), "{metrics}");
        assert_eq!(count(&metrics, "admindown", device), Some(1.0), "{metrics}");
        assert_eq!(count(&metrics, "carrierup", device), Some(2.0), "{metrics}");
        assert_eq!(
            count(&metrics, "carrierdown", device),
            Some(2.0),
            "{metrics}"
        );
        assert_eq!(count(&metrics, "unknown", device), Some(0.0), "{metrics}");
    }
    let saved = documents(&agent).len() as f64;
    assert_eq!(
        sample(&metrics, "kpulse_netdev_events_events_total"),
        Some(saved)
    );
    assert_eq!(
        sample(&metrics, "kpulse_netdev_events_lost_total"),
        Some(0.0)
    );

    // Deleting the pair: the kernel closes each device before unregistering it, so the
    // last documents are admin downs; then the devices are forgotten (no later document).
    ip(&format!("link del {A}"));
    std::thread::sleep(Duration::from_millis(800));
    let newest = documents(&agent).len() as f64 - saved;
    assert!(
        newest <= 2.0,
        "one admin down per device at most, got {newest}"
    );
    let statuses = statuses(&agent);
    for device in [A, B] {
        let admindowns = statuses[device]
            .iter()
            .filter(|s| *s == "linkstatus_admindown")
            .count();
        assert_eq!(admindowns, 2, "{device}: {statuses:?}");
    }
}

/// Without the operator's `net` grant the plugin cannot read link events: it fails with
/// the host's access-denied reason instead of watching nothing.
#[test]
fn netdev_events_needs_the_net_grant() {
    let agent = Agent::start(
        "netdev-events-refused",
        &[plugin_wasm("netdev_events")],
        "[containers]\nenabled = false\n[policy]\nnet_allow = []\n",
    );
    let plugin = wait_for(Duration::from_secs(20), "netdev_events failing", || {
        agent.plugin("netdev_events").filter(|p| {
            p["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("net_allow"))
        })
    });
    assert_ne!(plugin["state"], "running", "{plugin}");
}
