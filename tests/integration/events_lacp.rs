//! `lacp` (HUATUO's `netdev_bonding_lacp`): this kernel has no bonding driver, so the live
//! agent shows the plugin `inactive` with the reason; a written `/proc/net/bonding/bond0`
//! (`tests/fixtures/roots/bond`, copied to a scratch tree behind `policy.proc_root`) whose
//! slave then leaves collecting/distributing gives HUATUO's document and the counters.

use std::path::Path;
use std::time::Duration;

use kpulse_integration_tests::{
    Agent, plugin_wasm, root, sample, sample_with, scratch_dir, wait_for,
};
use serde_json::Value;

const NO_CONTAINERS: &str = "[containers]\nenabled = false\n";

#[test]
fn lacp_is_inactive_without_an_8023ad_bond() {
    let agent = Agent::start("lacp-live", &[plugin_wasm("lacp")], NO_CONTAINERS);
    if Path::new("/proc/net/bonding").exists() {
        // A host with bonds: running if one is 802.3ad, else inactive for the mode.
        let plugin = wait_for(Duration::from_secs(20), "lacp settled", || {
            agent
                .plugin("lacp")
                .filter(|p| p["state"] == "running" || p["state"] == "inactive")
        });
        eprintln!("lacp on this host: {plugin}");
        return;
    }
    let plugin = agent.wait_state("lacp", "inactive", Duration::from_secs(20));
    let reason = plugin["last_error"].as_str().unwrap_or_default();
    assert!(reason.contains("no bonding driver"), "{plugin}");
    assert!(reason.contains("/proc/net/bonding"), "{plugin}");
    assert_eq!(plugin["restarts"], 0, "{plugin}");
    assert!(!agent.metrics().contains("kpulse_lacp_"));
}

/// Replaces `path` the way the kernel's file changes between two reads: all at once.
fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn set_actor_state(text: &str, slave: &str, state: u8) -> String {
    let at = text.find(&format!("Slave Interface: {slave}")).unwrap();
    let actor = at + text[at..].find("details actor lacp pdu:").unwrap();
    let value = actor + text[actor..].find("port state: ").unwrap() + "port state: ".len();
    let end = value + text[value..].find('\n').unwrap();
    format!("{}{state}{}", &text[..value], &text[end..])
}

fn documents(agent: &Agent) -> Vec<Value> {
    agent
        .get("/events?tracer=lacp&limit=100")
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_slave_leaving_collecting_distributing_gives_a_document() {
    let tree = scratch_dir("lacp-tree");
    let bonding = tree.join("proc/net/bonding");
    std::fs::create_dir_all(&bonding).unwrap();
    let bond0 =
        std::fs::read_to_string(root().join("tests/fixtures/roots/bond/proc/net/bonding/bond0"))
            .unwrap();
    std::fs::write(bonding.join("bond0"), &bond0).unwrap();
    // A bond in another mode is not watched.
    std::fs::write(
        bonding.join("bond1"),
        "Ethernet Channel Bonding Driver: v6.18\n\nBonding Mode: fault-tolerance (active-backup)\nMII Status: up\n\nSlave Interface: eth7\nMII Status: up\n",
    )
    .unwrap();
    let agent = Agent::start(
        "lacp-fixture",
        &[plugin_wasm("lacp")],
        &format!(
            "{NO_CONTAINERS}[policy]\nproc_root = {:?}\n[plugins.lacp]\ninterval_ms = 200\n",
            tree.join("proc").display().to_string()
        ),
    );
    agent.wait_state("lacp", "running", Duration::from_secs(20));
    let metrics = agent.metrics();
    assert_eq!(
        sample(&metrics, "kpulse_lacp_bonds"),
        Some(1.0),
        "{metrics}"
    );
    for slave in ["eth0", "eth1"] {
        assert_eq!(
            sample_with(
                &metrics,
                "kpulse_lacp_slave_collecting_distributing",
                &format!("bond=\"bond0\",slave=\"{slave}\"}}")
            ),
            Some(1.0),
            "{metrics}"
        );
    }
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        documents(&agent).is_empty(),
        "an unchanged bond saves nothing"
    );

    // eth1's partner stopped answering: defaulted, out of sync, not collecting/distributing.
    write(&bonding.join("bond0"), &set_actor_state(&bond0, "eth1", 71));
    let docs = wait_for(Duration::from_secs(10), "the lacp document", || {
        let docs = documents(&agent);
        (!docs.is_empty()).then_some(docs)
    });
    assert_eq!(docs.len(), 1, "{docs:?}");
    let doc = &docs[0];
    assert_eq!(doc["tracer_name"], "lacp");
    assert_eq!(doc["tracer_type"], "event");
    let data = &doc["tracer_data"];
    assert_eq!(
        (&data["bond"], &data["slave"]),
        (&"bond0".into(), &"eth1".into())
    );
    assert_eq!(data["left_collecting_distributing"], true);
    assert_eq!(data["before"]["actor_port_state"], 61);
    assert_eq!(data["after"]["actor_port_state"], 71);
    assert_eq!(data["after"]["partner_port_state"], 61);
    assert_eq!(
        data["actor_port_state_bits"],
        serde_json::json!(["activity", "timeout", "aggregation", "defaulted"])
    );
    let content = data["content"].as_str().unwrap();
    assert!(
        content.contains("==> /proc/net/bonding/bond0 <=="),
        "{content}"
    );
    assert!(
        content.contains("==> /proc/net/bonding/bond1 <=="),
        "HUATUO: every bond file"
    );
    assert!(content.contains("port state: 71"), "{content}");

    let metrics = wait_for(Duration::from_secs(5), "counters", || {
        let m = agent.metrics();
        (sample(&m, "kpulse_lacp_events_total") == Some(1.0)).then_some(m)
    });
    assert_eq!(
        sample_with(
            &metrics,
            "kpulse_lacp_left_collecting_distributing_total",
            "bond=\"bond0\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample_with(
            &metrics,
            "kpulse_lacp_slave_collecting_distributing",
            "bond=\"bond0\",slave=\"eth1\"}"
        ),
        Some(0.0),
        "{metrics}"
    );

    // Back in the aggregate: a second document, no second "left".
    write(&bonding.join("bond0"), &bond0);
    wait_for(Duration::from_secs(10), "the rejoin document", || {
        (documents(&agent).len() == 2).then_some(())
    });
    let rejoined = documents(&agent)
        .into_iter()
        .find(|d| d["tracer_data"]["after"]["actor_port_state"] == 61)
        .expect("rejoin document");
    assert_eq!(
        rejoined["tracer_data"]["left_collecting_distributing"],
        false
    );
    let metrics = agent.metrics();
    assert_eq!(
        sample_with(
            &metrics,
            "kpulse_lacp_left_collecting_distributing_total",
            "bond=\"bond0\"}"
        ),
        Some(1.0)
    );
    // Garbage in the file is no crash: the slaves are gone from the reading.
    write(&bonding.join("bond0"), "\u{0}\u{ff}not a bond file\n");
    std::thread::sleep(Duration::from_millis(800));
    let plugin = agent.plugin("lacp").unwrap();
    assert_eq!(plugin["state"], "running", "{plugin}");
}
