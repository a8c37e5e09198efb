//! `cargo bench -p kpulse --bench update`: the cost of one `update` call on a real plugin
//! component (`target/plugins/loadavg.wasm`), three ways, side by side in one run:
//! a native Rust reader doing the same work, a direct wasm call on the plugin's store, and
//! the full actor path the scrape uses (mailbox → plugin thread → wasm → reply).
//!
//! Prerequisite: `scripts/build-plugins.sh` (builds the component).

#![allow(clippy::unwrap_used, reason = "benchmark: setup failures should panic")]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kpulse::config::{Config, PolicyConfig, StorageConfig};
use kpulse::fsaccess::FsAccess;
use kpulse::host_api::{HostState, Identity, Services};
use kpulse::hostinfo::HostInfo;
use kpulse::plugins::PluginManager;
use kpulse::plugins::stats::PluginStats;
use kpulse::runtime::Runtime;
use kpulse::storage::Store;

const ITERATIONS: u32 = 20_000;

fn per_call(started: Instant, n: u32) -> f64 {
    started.elapsed().as_nanos() as f64 / f64::from(n)
}

/// What the loadavg plugin does, natively: read and parse /proc/loadavg into 5 samples.
fn native_update() -> Vec<(String, f64)> {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap();
    let f: Vec<&str> = text.split_whitespace().collect();
    let (running, total) = f[3].split_once('/').unwrap();
    vec![
        ("load1".to_owned(), f[0].parse().unwrap()),
        ("load5".to_owned(), f[1].parse().unwrap()),
        ("load15".to_owned(), f[2].parse().unwrap()),
        ("nr_running".to_owned(), running.parse().unwrap()),
        ("nr_tasks".to_owned(), total.parse().unwrap()),
    ]
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let plugin = root.join("target/plugins/loadavg.wasm");
    let wasm = std::fs::read(&plugin).expect("run scripts/build-plugins.sh first");
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let host = HostInfo::detect("bench");
    let store = Store::start(
        &StorageConfig {
            local: false,
            ..StorageConfig::default()
        },
        Path::new("/nonexistent"),
        host.clone(),
    )
    .unwrap();
    let services = Arc::new(Services {
        fs: FsAccess::open(&PolicyConfig::default()),
        store,
        host,
        runtime: tokio.handle().clone(),
        recorder: None,
        replay: false,
        metrics: kpulse::metrics::AgentMetrics::new("kpulse"),
        containers: kpulse::containers::Registry::empty(Default::default()),
        profiler: kpulse::profiler::Profiler::disabled(),
    });
    let runtime = Runtime::new(None).unwrap();
    let prepared = runtime.prepare(&plugin, &wasm).unwrap();

    // Native.
    for _ in 0..1000 {
        std::hint::black_box(native_update());
    }
    let started = Instant::now();
    for _ in 0..ITERATIONS {
        std::hint::black_box(native_update());
    }
    let native = per_call(started, ITERATIONS);

    // Direct wasm call on one store.
    let identity = Identity {
        name: "loadavg".to_owned(),
        stats: Arc::new(PluginStats::default()),
        grant: services.fs.grant(&["/proc/loadavg".to_owned()]),
        bpf: Err("bench".to_owned()),
        kallsyms: false,
        containers: false,
        profile: false,
        net: false,
        statfs: false,
        rx_timestamps: false,
    };
    let mut wasm_store = runtime.store(HostState::new(identity, services.clone(), 64 << 20, None));
    wasm_store.set_epoch_deadline(u64::MAX / 2);
    let instance = prepared.pre.instantiate(&mut wasm_store).unwrap();
    instance.call_init(&mut wasm_store, "{}").unwrap().unwrap();
    for _ in 0..1000 {
        instance.call_update(&mut wasm_store).unwrap().unwrap();
    }
    let started = Instant::now();
    for _ in 0..ITERATIONS {
        std::hint::black_box(instance.call_update(&mut wasm_store).unwrap().unwrap());
    }
    let direct = per_call(started, ITERATIONS);

    // Full actor path, as a scrape does it.
    let dir = std::env::temp_dir().join(format!("kpulse-bench-update-{}", std::process::id()));
    let config = Arc::new(Config {
        data_dir: dir.clone(),
        ..Config::default()
    });
    let actor = tokio.block_on(async {
        let manager = PluginManager::new(runtime.clone(), services.clone(), config);
        manager.load_file(&plugin).await.unwrap();
        let handle = manager.get("loadavg").await.unwrap();
        while handle.update().await.is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for _ in 0..1000 {
            handle.update().await.unwrap();
        }
        let started = Instant::now();
        for _ in 0..ITERATIONS {
            std::hint::black_box(handle.update().await.unwrap());
        }
        let actor = per_call(started, ITERATIONS);
        manager.shutdown().await;
        actor
    });
    let _ = std::fs::remove_dir_all(dir);

    println!("update() of the loadavg plugin ({ITERATIONS} calls each, same run)");
    println!("| path | ns per call | vs native |\n|---|---|---|");
    println!("| native Rust: read + parse /proc/loadavg | {native:.0} | 1.00x |");
    println!(
        "| wasm: direct call on the plugin's store (host read + guest parse) | {direct:.0} | {:.2}x |",
        direct / native
    );
    println!(
        "| wasm via the actor (mailbox, plugin thread, reply) | {actor:.0} | {:.2}x |",
        actor / native
    );
}
