//! The WIT boundary: what a guest hands the host, taken as arbitrary bytes. A plugin's
//! `update` result (any metric names, help texts, kinds, values, labels and container ids)
//! goes through the host's validation into the text exposition
//! (`host/src/metrics/mod.rs`), and a `storage.save` (any tracer name, container fields and
//! JSON) into a stored document (`host/src/storage/document.rs`).
//!
//! Held to: never a panic; the exposition has exactly one series line per accepted sample,
//! each of the plugin's family, so no name, label or help text can forge a line or another
//! family; a saved document is one JSON line whose `tracer_data` is the guest's object as
//! it sent it.
#![no_main]

use std::sync::{Arc, LazyLock, Mutex};

use kpulse::config::{MetricsConfig, StorageConfig};
use kpulse::containers::Registry;
use kpulse::containers::metrics::ContainerMetrics;
use kpulse::hostinfo::HostInfo;
use kpulse::metrics::{AgentMetrics, Exposition};
use kpulse::storage::{ContainerFields, RunType, SaveRequest, Store};
use kpulse::wit::{Metric, MetricKind};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fn host() -> HostInfo {
    HostInfo {
        hostname: "fuzz".to_owned(),
        region: "fuzz".to_owned(),
        kernel_release: String::new(),
        cpu_count: 1,
        boot_time_secs: 0,
    }
}

static EXPOSITION: LazyLock<Exposition> = LazyLock::new(|| {
    let config = MetricsConfig::default();
    let agent = AgentMetrics::new(&config.prefix);
    Exposition::new(
        config,
        host(),
        agent,
        Registry::empty(ContainerMetrics::default()),
    )
});

struct Saving {
    store: Store,
    live: tokio::sync::broadcast::Receiver<Arc<kpulse::storage::LiveDocument>>,
}

static STORE: LazyLock<Mutex<Saving>> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("kpulse-fuzz-wit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::start(&StorageConfig::default(), &dir, host()).expect("store starts");
    let live = store.watch();
    Mutex::new(Saving { store, live })
});

/// A string biased towards the shapes that matter: names, label syntax, newlines, quotes.
fn text(u: &mut Unstructured<'_>) -> Result<String> {
    const PIECES: [&str; 12] = [
        "cpu", "_total", "\n", "\"", "\\", "{", "}", "=", " ", "#", "container_", "é",
    ];
    let mut out = String::new();
    for _ in 0..u.int_in_range(0..=6)? {
        if u.ratio(1, 2)? {
            out.push_str(PIECES[u.choose_index(PIECES.len())?]);
        } else {
            out.push_str(u.arbitrary::<&str>()?);
        }
    }
    Ok(out)
}

fn metric(u: &mut Unstructured<'_>) -> Result<Metric> {
    let mut labels = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        labels.push((text(u)?, text(u)?));
    }
    Ok(Metric {
        name: text(u)?,
        help: text(u)?,
        kind: if u.arbitrary()? {
            MetricKind::Counter
        } else {
            MetricKind::Gauge
        },
        value: u.arbitrary()?,
        labels,
        container_id: if u.arbitrary()? { Some(text(u)?) } else { None },
    })
}

fn check_metrics(u: &mut Unstructured<'_>) -> Result<()> {
    let mut metrics = Vec::new();
    for _ in 0..u.int_in_range(0..=8)? {
        metrics.push(metric(u)?);
    }
    let offered = metrics.len() as u64;
    let (body, dropped) = EXPOSITION.encode_guest_samples("fuzz", metrics);
    let series: Vec<&str> = body.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        series.len() as u64 + dropped,
        offered,
        "one series line per accepted sample:\n{body}"
    );
    for line in series {
        assert!(line.starts_with("kpulse_fuzz_"), "a line outside the plugin's families: {line:?}");
    }
    for line in body.lines().filter(|l| l.starts_with('#')) {
        assert!(
            line.starts_with("# HELP kpulse_fuzz_")
                || line.starts_with("# TYPE kpulse_fuzz_")
                || line.starts_with("# UNIT kpulse_fuzz_")
                || line == "# EOF",
            "a comment line that is not the plugin's: {line:?}"
        );
    }
    Ok(())
}

fn check_save(u: &mut Unstructured<'_>) -> Result<()> {
    let tracer = if u.arbitrary()? { "fuzz_tracer".to_owned() } else { text(u)? };
    let id = text(u)?;
    let name = text(u)?;
    let data = if u.arbitrary()? {
        format!("{{\"k\":{}}}", serde_json::Value::String(text(u)?))
    } else {
        text(u)?
    };
    let request = SaveRequest {
        tracer_name: &tracer,
        container: ContainerFields {
            id: &id,
            name: &name,
            ..ContainerFields::default()
        },
        time_ns: u.arbitrary()?,
        data_json: &data,
        run_type: RunType::Event,
    };
    let mut saving = STORE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Ok(tracer_id) = saving.store.save(&request) else {
        return Ok(());
    };
    let live = saving.live.try_recv().expect("a saved document is published");
    assert!(!live.text.contains('\n'), "a document spans lines: {:?}", live.text);
    let doc: serde_json::Value = serde_json::from_str(&live.text).expect("a document is JSON");
    assert_eq!(doc["tracer_id"], tracer_id.as_str());
    assert_eq!(doc["tracer_name"], tracer.as_str());
    let sent: serde_json::Value = serde_json::from_str(&data).expect("accepted data is JSON");
    assert_eq!(doc["tracer_data"], sent, "tracer_data as the guest sent it");
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = check_metrics(&mut u);
    let _ = check_save(&mut u);
});
