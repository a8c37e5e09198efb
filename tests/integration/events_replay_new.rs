//! `ras` and `netdev_txqueue_timeout`: this machine cannot produce a hardware error or a TX
//! watchdog timeout, so their decoders are tested through `kpulse plugins replay` on records
//! synthesized from the generated record types (`tests/fixtures/replay/*.kprec`, written
//! and checked by each plugin's `replay_fixture_is_current` unit test), and what the live
//! kernel lacks is tested live: the plugins run, attach what exists and report the rest.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kpulse_integration_tests::{
    Agent, kpulse_bin, plugin_wasm, root, sample, sample_with, scratch_dir,
};
use serde_json::Value;

/// Replays `fixture` into `plugin`, with an optional `[plugins.<name>]` config.
pub(crate) fn replay(plugin: &str, fixture: &str, config: Option<&str>) -> Vec<Value> {
    let mut command = Command::new(kpulse_bin());
    command
        .args(["plugins", "replay"])
        .arg(plugin_wasm(plugin))
        .arg(root().join("tests/fixtures/replay").join(fixture));
    if let Some(config) = config {
        let path = scratch_dir(&format!("replay-{plugin}")).join("kpulse.toml");
        std::fs::write(&path, config).unwrap();
        command.arg("--config").arg(path);
    }
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("0 call errors, 0 traps"), "{stderr}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn info(doc: &Value) -> Value {
    serde_json::from_str(doc["tracer_data"]["info"].as_str().unwrap()).unwrap()
}

#[test]
fn ras_records_replay_into_huatuo_documents() {
    let docs = replay("ras", "ras.kprec", None);
    // 8 records: one of each source, three threshold interrupts of which the second falls
    // inside the 1800 s back-off of the first.
    let events: Vec<&str> = docs
        .iter()
        .map(|d| d["tracer_data"]["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "MCE",
            "EDAC",
            "NON_STANDARD",
            "AER",
            "MCE_THRESHOLD",
            "ARM_GHES",
            "MCE_THRESHOLD"
        ],
        "{docs:?}"
    );
    assert!(
        docs.iter()
            .all(|d| d["tracer_name"] == "ras" && d["tracer_type"] == "event")
    );
    let data = |i: usize| &docs[i]["tracer_data"];
    assert_eq!(
        (&data(0)["dev"], &data(0)["type"]),
        (&"CPU/MEM".into(), &"UncorrectedRecoverable".into())
    );
    assert_eq!(info(&docs[0])["bank"], 4);
    assert_eq!(info(&docs[0])["cpu"], 1);
    assert_eq!(
        (&data(1)["dev"], &data(1)["type"]),
        (&"MEM".into(), &"Corrected".into())
    );
    let edac = info(&docs[1]);
    assert_eq!(edac["err_msg"], "memory read error");
    assert_eq!(edac["label"], "DIMM_A1");
    assert_eq!(edac["err_count"], 2);
    assert_eq!(edac["grain"], 64);
    assert_eq!(
        (&data(2)["dev"], &data(2)["type"]),
        (&"ACPI".into(), &"UncorrectedFatal".into())
    );
    assert_eq!(info(&docs[2])["raw_data"], "de ad be ef");
    assert_eq!(info(&docs[2])["sec_type"], "11".repeat(16));
    assert_eq!(
        (&data(3)["dev"], &data(3)["type"]),
        (&"PCIe 0000:00:1c.0".into(), &"Corrected".into())
    );
    assert_eq!(info(&docs[3])["err_reason"], "Receiver Error, Bad TLP");
    assert_eq!(
        (&data(4)["dev"], &data(4)["type"]),
        (&"CPU".into(), &"Corrected".into())
    );
    assert_eq!(info(&docs[4])["vector"], 0xf9);
    assert_eq!(info(&docs[6])["cpu"], 0);
    assert_eq!(data(5)["type"], "Corrected");
    assert_eq!(info(&docs[5])["midr"], "0x410fd0c1");
}

#[test]
fn ras_threshold_backoff_is_configurable() {
    let docs = replay(
        "ras",
        "ras.kprec",
        Some("[plugins.ras]\nmce_thr_backoff_secs = 0\n"),
    );
    let thresholds = docs
        .iter()
        .filter(|d| d["tracer_data"]["event"] == "MCE_THRESHOLD")
        .count();
    assert_eq!(
        thresholds, 3,
        "no back-off: every interrupt is a document: {docs:?}"
    );
}

#[test]
fn txqueue_timeout_records_replay_into_documents() {
    let docs = replay(
        "netdev_txqueue_timeout",
        "netdev_txqueue_timeout.kprec",
        None,
    );
    assert_eq!(docs.len(), 2, "{docs:?}");
    let first = &docs[0]["tracer_data"];
    assert_eq!(docs[0]["tracer_name"], "netdev_txqueue_timeout");
    assert_eq!(first["device_name"], "eth0");
    assert_eq!(first["driver_name"], "virtio_net");
    assert_eq!(first["queue_index"], 3);
    assert_eq!(first["netdev_ifindex"], 2);
    assert_eq!(first["cpu"], 1);
    let second = &docs[1]["tracer_data"];
    assert_eq!(
        (
            &second["device_name"],
            &second["driver_name"],
            &second["queue_index"]
        ),
        (&"enp3s0f1".into(), &"ixgbe".into(), &0.into())
    );
    assert_eq!(
        second["net_namespace_inum"], 0,
        "classic tracepoint: no netns"
    );
}

/// The live kernel: every `ras` source whose tracepoint exists in tracefs is attached, the
/// others are reported once in the log and as `supported{type} 0`, and the plugin runs on.
#[test]
fn ras_watches_the_tracepoints_this_kernel_has_and_reports_the_rest() {
    let sources = [
        ("mce", "mce/mce_record"),
        ("edac", "ras/mc_event"),
        ("acpi", "ras/non_standard_event"),
        ("aer", "ras/aer_event"),
        ("thr", "irq_vectors/threshold_apic_entry"),
        ("arm_ghes", "ras/arm_event"),
    ];
    let exists = |point: &str| Path::new(&format!("/sys/kernel/tracing/events/{point}")).exists();
    let agent = Agent::start("ras-live", &[plugin_wasm("ras")], "");
    if !sources.iter().any(|(_, point)| exists(point)) {
        agent.wait_state("ras", "inactive", Duration::from_secs(20));
        return;
    }
    let plugin = agent.wait_state("ras", "running", Duration::from_secs(20));
    let metrics = agent.metrics();
    let log = agent.log();
    let missing: Vec<&str> = sources
        .iter()
        .filter(|(_, point)| !exists(point))
        .map(|(_, point)| *point)
        .collect();
    for (label, point) in sources {
        let supported = sample_with(
            &metrics,
            "kpulse_ras_supported",
            &format!("type=\"{label}\""),
        )
        .unwrap();
        assert_eq!(
            supported,
            f64::from(u8::from(exists(point))),
            "{point}: {metrics}"
        );
        // HUATUO's counter, exposed for every type, present or not.
        let errors = sample_with(
            &metrics,
            "kpulse_ras_hw_err_total",
            &format!("type=\"{label}\""),
        )
        .unwrap();
        assert!(errors >= 0.0);
    }
    if missing.is_empty() {
        assert!(!log.contains("not supported on this kernel"), "{log}");
    } else {
        let line = log
            .lines()
            .find(|l| l.contains("not supported on this kernel"))
            .unwrap_or_else(|| panic!("no not-supported line: {log}"));
        for point in &missing {
            assert!(line.contains(point), "{point} not in {line}");
        }
        assert_eq!(
            log.matches("not supported on this kernel").count(),
            1,
            "{log}"
        );
    }
    assert_eq!(
        sample(&metrics, "kpulse_plugin_bpf_objects{plugin=\"ras\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert!(plugin["last_error"].is_null(), "{plugin}");
    eprintln!("ras on this kernel: not watched {missing:?}");
}

/// The live kernel has `net_dev_xmit_timeout` (with BTF): the plugin attaches the BTF
/// tracepoint, not the fallback, and waits; a timeout cannot be provoked here.
#[test]
fn txqueue_timeout_attaches_the_btf_tracepoint() {
    let agent = Agent::start("txqueue-live", &[plugin_wasm("netdev_txqueue_timeout")], "");
    if !Path::new("/sys/kernel/tracing/events/net/net_dev_xmit_timeout").exists() {
        agent.wait_state(
            "netdev_txqueue_timeout",
            "inactive",
            Duration::from_secs(20),
        );
        return;
    }
    agent.wait_state("netdev_txqueue_timeout", "running", Duration::from_secs(20));
    let metrics = agent.metrics();
    assert_eq!(
        sample(
            &metrics,
            "kpulse_plugin_bpf_objects{plugin=\"netdev_txqueue_timeout\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "kpulse_netdev_txqueue_timeout_events_total"),
        Some(0.0)
    );
    let log = agent.log();
    assert!(!log.contains("using the tracepoint"), "{log}");
    // The program is in the kernel, attached as a BTF tracepoint (bpftool names it).
    let progs = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !progs.is_empty() {
        assert!(progs.contains("txq_timeout_btf"), "{progs}");
    }
}
