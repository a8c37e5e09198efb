//! The fault matrix: one agent with every built-in plugin, the `docgen` document generator
//! (50 documents/s), the hostile `escaper` guest and the OpenSearch sink, its data directory
//! on a tmpfs of its own and the real node behind a [`FaultProxy`]. The faults are injected
//! one after another under that load; after each, the agent must be alive (a crash is
//! counted and the agent restarted, so that the rest still runs) and must recover. Disk,
//! cluster, corruption, deletion, kill, guest, plugin-directory and runtime faults first,
//! then the BPF faults one can cause from outside the agent: a ring buffer filled while the
//! consumer is stopped, a map filled with junk, every link detached with bpftool.
//!
//! At the end the test holds the agent to the sum, and prints it as a table (also written
//! to `target/test-artifacts/fault-matrix.md`):
//! - every document in the local store (including those deleted with the directory) is
//!   there once, and in the cluster exactly once, except those the agent counted as dropped
//!   (the disk full or read-only, spool segments deleted before delivery) and those
//!   dead-lettered on a mapping conflict;
//! - no agent crash; SIGTERM drains within 10 s;
//! - the escaper guest (which tries every way out of its sandbox the tests know) got
//!   nothing it was not granted.
//!
//! The BPF faults from inside: a program the verifier rejects (the `rejected` test guest) and
//! an attach the kernel refuses (the `kprobe` guest, with its tracepoint fallback). Then the
//! cluster's faults that need a restart: mapping conflicts (docgen's `conflict_every`, the
//! rejected documents dead-lettered, and excused in the sum by their ids in the dead-letter
//! file) and a TLS failure (`https://` to the plain endpoint).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kpulse_integration_tests::containers::Runtimes;
use kpulse_integration_tests::fault_proxy::{Fault, FaultProxy};
use kpulse_integration_tests::{
    Agent, guest_wasm, http, install, root, sample, sample_with, wait_for,
};

use crate::metrics_catalogue::builtin_plugins;
use crate::opensearch::{
    agent_dir, ensure_node, local_ids, metric, node_lock, os_addr, os_ok, prefix, remote_ids, today,
};
use crate::store_faults::{Tmpfs, fill};

/// A row of the printed table.
struct Row {
    fault: String,
    injected: u64,
    crashes: u64,
    observed: String,
    recovered_secs: f64,
}

/// The agent under test and what happened to it so far.
struct Harness {
    agent: Option<Agent>,
    dir: PathBuf,
    config: String,
    rows: Vec<Row>,
    /// Documents the agent counted as dropped on the way to the cluster (spool I/O errors,
    /// finished segments deleted from outside),
    /// summed over the agent's lives: the only documents allowed to be missing remotely.
    counted_spool_drops: f64,
}

impl Harness {
    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("the agent is running")
    }

    /// Whether the agent died on its own; if so it is restarted and 1 is returned.
    fn crashes(&mut self) -> u64 {
        let exited = self
            .agent
            .as_mut()
            .map(|a| a.child.try_wait().ok().flatten())
            .unwrap_or(None);
        match exited {
            None => 0,
            Some(status) => {
                eprintln!(
                    "fault matrix: the agent exited ({status}): {}",
                    self.agent().log()
                );
                self.restart_after_kill();
                1
            }
        }
    }

    fn start(&mut self) {
        // The harness truncates agent.log on a start: keep every life's log for a look.
        if let Ok(log) = std::fs::read(self.dir.join("agent.log")) {
            let mut all = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("agent-lives.log"))
                .unwrap();
            std::io::Write::write_all(&mut all, &log).unwrap();
        }
        let agent = Agent::start_in(self.dir.clone(), &self.config);
        agent.wait_state("docgen", "running", Duration::from_secs(120));
        self.agent = Some(agent);
    }

    /// Adds this agent life's spool drops to the sum (the counters start at 0 each life).
    fn count_spool_drops(&mut self) {
        let Some(agent) = &self.agent else {
            return;
        };
        // A dead agent answers nothing: what it dropped is then not counted here, and shows
        // as lost in the sum.
        if let Ok(response) = http(agent.addr, "GET", "/metrics", &[]) {
            for reason in ["reason=\"spool_io\"", "reason=\"spool_deleted\""] {
                self.counted_spool_drops += sample_with(
                    &response.body,
                    "kpulse_opensearch_documents_dropped_total",
                    reason,
                )
                .unwrap_or(0.0);
            }
        }
    }

    fn kill9(&mut self) {
        self.count_spool_drops();
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.child.kill();
            let _ = agent.child.wait();
        }
    }

    fn restart_after_kill(&mut self) {
        self.kill9();
        self.start();
    }

    fn metric(&self, name: &str) -> f64 {
        metric(self.agent(), name)
    }

    fn labelled(&self, name: &str, label: &str) -> f64 {
        sample_with(&self.agent().metrics(), name, label).unwrap_or(0.0)
    }

    fn written(&self) -> f64 {
        self.labelled(
            "kpulse_storage_documents_written_total",
            "tracer=\"docgen\"",
        )
    }

    fn spool_drops(&self) -> f64 {
        self.labelled(
            "kpulse_opensearch_documents_dropped_total",
            "reason=\"spool_io\"",
        )
    }

    /// Waits until docgen's documents are written locally again; returns the seconds taken.
    fn wait_writing(&self, what: &str) -> f64 {
        let started = Instant::now();
        let before = self.written();
        wait_for(Duration::from_secs(60), what, || {
            (self.written() >= before + 25.0).then_some(())
        });
        started.elapsed().as_secs_f64()
    }

    /// Waits until the spool is back to its steady level; returns the seconds taken.
    fn wait_drained(&self, what: &str) -> f64 {
        let started = Instant::now();
        wait_for(Duration::from_secs(120), what, || {
            (self.metric("kpulse_opensearch_spooled") <= 200.0).then_some(())
        });
        started.elapsed().as_secs_f64()
    }

    fn row(&mut self, fault: impl Into<String>, injected: u64, observed: String, secs: f64) {
        let crashes = self.crashes();
        let fault = fault.into();
        eprintln!("fault matrix: {fault}: injected {injected}, crashes {crashes}, {observed}");
        self.rows.push(Row {
            fault,
            injected,
            crashes,
            observed,
            recovered_secs: secs,
        });
    }
}

fn error_lines(log: &str, needle: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("ERROR") && l.contains(needle))
        .count()
}

/// The document ids of the dead-letter file whose cluster answer was a mapping conflict, one
/// per line (a batch re-sent after a kill is rejected, and written, again).
fn dead_lettered(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|record| {
            record["status"] == 400
                && record["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("mapper_parsing_exception"))
        })
        .filter_map(|record| Some(record["document"]["tracer_id"].as_str()?.to_owned()))
        .collect()
}

/// A small deterministic pseudo-random sequence (xorshift), for the kill points.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn newest_file(dir: &Path, suffix: &str) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    files.pop()
}

/// Writes junk keys (thread ids no thread has: pid_max is at most 2^22) into the BPF hash map
/// named `name` that `pid` holds, up to `count` or until an insert fails; returns how many
/// went in. The map is found through the map fds of `pid`, so another agent's is never touched.
fn fill_bpf_map(pid: u32, name: &str, count: u32) -> u32 {
    for id in fdinfo_ids(pid, "map_id:") {
        let Ok(info) = aya::maps::MapInfo::from_id(id) else {
            continue;
        };
        if info.name_as_str() != Some(name) {
            continue;
        }
        let map = aya::maps::Map::from_map_data(aya::maps::MapData::from_id(id).unwrap()).unwrap();
        let mut table: aya::maps::HashMap<_, u32, u64> = aya::maps::HashMap::try_from(map).unwrap();
        let mut written = 0;
        for n in 0..count {
            if table.insert(0x4000_0000 + n, 1, 0).is_err() {
                break;
            }
            written += 1;
        }
        return written;
    }
    panic!("the agent holds no BPF map named {name}");
}

/// `threads` threads woken together `rounds` times (a condition variable's notify_all):
/// many runnable at once on two CPUs. Returns the wakeups.
fn wakeup_burst(threads: u32, rounds: u32) -> u64 {
    use std::sync::{Arc, Barrier};
    let barrier = Arc::new(Barrier::new(threads as usize));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                for _ in 0..rounds {
                    barrier.wait();
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    u64::from(threads) * u64::from(rounds)
}

/// The ids on the `field` lines (`link_id:`, `map_id:`) of `pid`'s `/proc/<pid>/fdinfo`: the
/// BPF links or maps it holds.
fn fdinfo_ids(pid: u32, field: &str) -> Vec<u32> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    let mut ids: Vec<u32> = fds
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn append(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(bytes).unwrap();
}

#[test]
fn fault_matrix_keeps_the_agent_up_and_loses_no_document() {
    let _node = node_lock();
    ensure_node();
    let runtimes = Runtimes::get();
    let proxy = FaultProxy::start(os_addr());
    let prefix = prefix("matrix");
    let dir = agent_dir("fault-matrix");
    let data = dir.join("data");
    let tmpfs = Tmpfs::mount(&data, "768m");
    let plugins = dir.join("plugins");
    for plugin in builtin_plugins() {
        install(&plugins, &plugin);
    }
    install(&plugins, &guest_wasm("docgen"));
    install(&plugins, &guest_wasm("escaper"));
    // The containerd socket through a link the test removes to make the runtime vanish.
    let socket_link = dir.join("containerd.sock");
    let real_socket = runtimes.var("KPULSE_TEST_CONTAINERD_SOCK");
    std::os::unix::fs::symlink(&real_socket, &socket_link).unwrap();
    // BPF for every built-in plugin (the default) and the `ringbench` test guest.
    let bpf_allow: Vec<String> = builtin_plugins()
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .chain(["ringbench", "rejected", "kprobe"].map(str::to_owned))
        .collect();
    let config = format!(
        "[policy]\nbpf_allow = {bpf_allow:?}\n\n\
         [plugins.docgen]\nper_tick = 1\ntick_ms = 20\n\n\
         [plugins.membomb]\nmemory_mib = 16\n\n\
         [containers]\ncontainerd_sockets = [{socket_link:?}]\ndocker_socket = \"\"\n\n\
         [storage.opensearch]\naddresses = [\"{}\"]\nindex = \"{prefix}\"\n\
         flush_interval_ms = 200\nbackoff_initial_ms = 50\nbackoff_max_ms = 1000\n\
         request_timeout_secs = 2\n",
        proxy.url()
    );
    let mut h = Harness {
        agent: None,
        dir: dir.clone(),
        config,
        rows: Vec::new(),
        counted_spool_drops: 0.0,
    };
    h.start();
    h.wait_drained("the first documents to reach the cluster");
    let index = format!("{prefix}-{}", today());

    // 1. The data directory full.
    let (drops0, spool0) = (
        h.labelled(
            "kpulse_storage_documents_dropped_total",
            "cause=\"write_error\"",
        ),
        h.spool_drops(),
    );
    let errors0 = error_lines(&h.agent().log(), "local store");
    let filler = data.join("filler");
    let filled = fill(&filler);
    std::thread::sleep(Duration::from_secs(6));
    let dropped = h.labelled(
        "kpulse_storage_documents_dropped_total",
        "cause=\"write_error\"",
    ) - drops0;
    let spool_dropped = h.spool_drops() - spool0;
    let log = h.agent().log();
    let logged = error_lines(&log, "local store") - errors0;
    std::fs::remove_file(&filler).unwrap();
    let secs = h.wait_writing("writing to resume after the disk was freed");
    assert!(dropped > 0.0, "no drop counted on a full disk");
    // One line per error kind per 10 s (with the count suppressed), against one per document.
    assert!(
        logged <= 10,
        "{logged} error lines in 6 s: not rate-limited:\n{}",
        log.lines()
            .filter(|l| l.contains("ERROR") && l.contains("local store"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    h.row(
        "data directory full",
        1,
        format!(
            "filled {} MiB; {dropped} local and {spool_dropped} spool drops counted; {logged} log lines",
            filled >> 20
        ),
        secs,
    );

    // 2. The data directory read-only: a remount fails while the agent holds files open
    // for writing, so the agent is stopped, the disk remounted read-only and the agent
    // started on it (what an operator's read-only volume looks like), then the reverse.
    let remount = |mode: &str| {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&data)
            .status()
            .unwrap();
        assert!(status.success(), "remount {mode}");
    };
    h.kill9();
    remount("ro");
    h.start();
    std::thread::sleep(Duration::from_secs(4));
    let dropped = h.labelled(
        "kpulse_storage_documents_dropped_total",
        "cause=\"write_error\"",
    );
    let spool_dropped = h.spool_drops();
    let read_only_crashes = h.crashes();
    h.kill9();
    remount("rw");
    h.start();
    let secs = h.wait_writing("writing to resume on the writable disk");
    assert!(dropped > 0.0, "no drop counted on a read-only disk");
    h.row(
        "data directory read-only (agent started on it)",
        1,
        format!(
            "started; {dropped} local and {spool_dropped} spool drops counted; {read_only_crashes} crashes"
        ),
        secs,
    );

    // 3. The cluster's faults, through the proxy, then the real node's flood-stage block.
    let cluster_faults = [
        ("OpenSearch down (connections closed)", Fault::Refuse),
        (
            "OpenSearch slow (answers after 4 s, timeout 2 s)",
            Fault::Slow(Duration::from_secs(4)),
        ),
        ("OpenSearch 429", Fault::Status(429)),
        ("OpenSearch 500", Fault::Status(500)),
        ("OpenSearch 503", Fault::Status(503)),
        ("OpenSearch garbage answers", Fault::Garbage),
        ("OpenSearch truncated answers", Fault::Truncated),
    ];
    for (name, fault) in cluster_faults {
        let injected0 = proxy.injected();
        let retried0 = h.metric("kpulse_opensearch_documents_retried_total");
        proxy.set(fault);
        std::thread::sleep(Duration::from_secs(6));
        let spooled = h.metric("kpulse_opensearch_spooled");
        let retried = h.metric("kpulse_opensearch_documents_retried_total") - retried0;
        proxy.set(Fault::None);
        let injected = proxy.injected() - injected0;
        let secs = h.wait_drained(&format!("the spool to drain after {name}"));
        assert!(
            injected > 0,
            "{name}: the proxy applied the fault to nothing"
        );
        h.row(
            name,
            injected,
            format!("spool at {spooled}; {retried} sends retried"),
            secs,
        );
    }
    let block = |on: &str| {
        os_ok(
            "PUT",
            &format!("/{index}/_settings"),
            Some(&format!(
                r#"{{"index.blocks.read_only_allow_delete":{on}}}"#
            )),
        );
    };
    let retried0 = h.metric("kpulse_opensearch_documents_retried_total");
    block("true");
    std::thread::sleep(Duration::from_secs(6));
    let retried = h.metric("kpulse_opensearch_documents_retried_total") - retried0;
    block("null");
    let secs = h.wait_drained("the spool to drain after the flood-stage block");
    assert!(retried > 0.0, "the block answered nothing");
    h.row(
        "OpenSearch flood-stage block (real 429)",
        1,
        format!("{retried} sends retried"),
        secs,
    );

    // 4. Files corrupted while the agent was down: a torn spool line, garbage in the
    // committed position and the local NDJSON, a truncated compile-cache entry. The garbage
    // position makes the agent re-send its whole spool: the cluster must still hold every
    // document once.
    let running = |h: &Harness| {
        h.agent()
            .plugins()
            .iter()
            .filter(|p| p["state"] == "running")
            .count()
    };
    let running_before = running(&h);
    h.kill9();
    let spool_dir = data.join("opensearch/spool");
    let segment = newest_file(&spool_dir, ".ndjson").expect("a spool segment");
    append(&segment, br#"{"tracer_id":"torn-by-the-test","#);
    std::fs::write(spool_dir.join("committed"), b"\x00 not a position").unwrap();
    append(
        &data.join("events/docgen.ndjson"),
        b"\n\x00garbage {not json\n{\"half\":\n",
    );
    let cache_entry = newest_file(&data.join("cache"), ".cwasm").expect("a compile-cache entry");
    let length = std::fs::metadata(&cache_entry).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cache_entry)
        .unwrap()
        .set_len(length / 2)
        .unwrap();
    let started = Instant::now();
    h.start();
    let running_after = wait_for(
        Duration::from_secs(90),
        "every plugin that ran before the corruption to run again",
        || {
            let now = running(&h);
            (now >= running_before).then_some(now)
        },
    );
    // The query reads through the garbage lines (skipped and counted).
    let listed = h.agent().get("/events?tracer=docgen&limit=5");
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert!(
        listed
            .json()
            .as_array()
            .is_some_and(|docs| !docs.is_empty()),
        "{}",
        listed.body
    );
    assert!(
        spool_dir.join("committed.corrupt").exists(),
        "the corrupt committed position was not kept aside"
    );
    h.row(
        "spool (torn line, garbage position), NDJSON, compile cache corrupted",
        4,
        format!("restarted; {running_after} plugins running as before; /events answers"),
        started.elapsed().as_secs_f64(),
    );

    // 4b. The data directory's contents deleted while the agent writes (an operator's
    // `rm -rf`, a temp-file cleaner): the local store and the spool make their directories
    // again, the spool copies the segment it was writing back from its open file (so what was
    // not yet delivered still is), and the documents of finished spool segments that went
    // with the directory are counted (`spool_deleted`).
    let restored0 = h.metric("kpulse_opensearch_spool_restored");
    h.wait_drained("the spool to be at its steady level before the deletion");
    // What the local store held goes with the directory: kept here for the final sum, so
    // that every document ever stored locally is still held to being in the cluster once.
    let local_before_deletion = local_ids(&dir);
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let secs = h.wait_writing("writing to resume after the data directory was deleted");
    wait_for(
        Duration::from_secs(30),
        "the spool segment being written to be restored",
        || (h.metric("kpulse_opensearch_spool_restored") > restored0).then_some(()),
    );
    let deleted = h.labelled(
        "kpulse_opensearch_documents_dropped_total",
        "reason=\"spool_deleted\"",
    );
    h.wait_drained("the spool to drain after the data directory was deleted");
    assert!(
        data.join("events/docgen.ndjson").exists(),
        "the local store did not make its file again"
    );
    assert!(
        data.join("opensearch/spool/committed").exists(),
        "the spool did not write its position again"
    );
    h.row(
        "data directory deleted while running (`rm -rf` of its contents)",
        1,
        format!(
            "both directories made again; the spool segment being written restored from its open file; \
             {deleted} documents of finished spool segments counted lost with them"
        ),
        secs,
    );

    // 5. kill -9 at pseudo-random points of the stream, five times.
    let mut random = Xorshift(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let started = Instant::now();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(300 + random.below(2_500)));
        h.restart_after_kill();
    }
    let secs = h.wait_drained("the spool to drain after the kills");
    h.row(
        "kill -9 at random points, restarted",
        5,
        format!(
            "5 restarts in {:.0} s",
            started.elapsed().as_secs_f64() - secs
        ),
        secs,
    );

    // 6. Plugin storms: guests that spin, exhaust memory and panic, hot-dropped in.
    let started = Instant::now();
    for guest in ["spin", "membomb", "panicker"] {
        install(&plugins, &guest_wasm(guest));
    }
    for guest in ["spin", "membomb", "panicker"] {
        h.agent()
            .wait_state(guest, "quarantined", Duration::from_secs(90));
    }
    let secs = h.wait_writing("docgen to keep saving beside the bad guests");
    // Their compiles found the cache directory gone (step 4b) and made it again.
    assert!(
        newest_file(&data.join("cache"), ".cwasm").is_some(),
        "the compile cache was not made again after the data directory was deleted"
    );
    h.row(
        "guests spinning, exhausting memory, panicking",
        3,
        format!(
            "all 3 quarantined in {:.0} s; docgen kept saving",
            started.elapsed().as_secs_f64()
        ),
        secs,
    );

    // 7. A plugin directory flood: junk components, a symlink out, a directory, a file
    // replaced while the agent may be reading it.
    let started = Instant::now();
    for n in 0..100u32 {
        let junk: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(n) >> 13) as u8)
            .collect();
        std::fs::write(plugins.join(format!("junk{n:03}.wasm")), junk).unwrap();
    }
    std::os::unix::fs::symlink("/etc/passwd", plugins.join("outside.wasm")).unwrap();
    std::fs::create_dir(plugins.join("directory.wasm")).unwrap();
    let loadavg = std::fs::read(root().join("target/plugins/loadavg.wasm")).unwrap();
    std::fs::write(plugins.join("replaced.wasm"), &loadavg[..loadavg.len() / 3]).unwrap();
    std::fs::write(plugins.join("replaced.wasm"), &loadavg).unwrap();
    // Every junk file looked at and refused (one log line each), the symlink out and the
    // second component named `loadavg` refused too.
    let refused = |log: &str, file: &str| {
        log.lines()
            .filter(|l| l.contains("plugin not loaded") && l.contains(file))
            .count()
    };
    wait_for(
        Duration::from_secs(60),
        "every file of the flood looked at",
        || {
            let log = h.agent().log();
            (refused(&log, "/junk") >= 100
                && refused(&log, "/outside.wasm") >= 1
                && refused(&log, "/replaced.wasm") >= 1)
                .then_some(())
        },
    );
    let secs = h.wait_writing("docgen to keep saving through the plugin flood");
    let listed = h.agent().plugins();
    let running_from_flood = listed
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("junk") || n == "outside" || n == "replaced")
        })
        .filter(|p| p["state"] == "running")
        .count();
    assert_eq!(
        running_from_flood, 0,
        "a file of the flood runs: {listed:?}"
    );
    assert_eq!(
        h.agent().plugin("loadavg").map(|p| p["state"].clone()),
        Some("running".into()),
        "the original loadavg was displaced"
    );
    for n in 0..100u32 {
        let _ = std::fs::remove_file(plugins.join(format!("junk{n:03}.wasm")));
    }
    for name in ["outside.wasm", "replaced.wasm"] {
        let _ = std::fs::remove_file(plugins.join(name));
    }
    let _ = std::fs::remove_dir(plugins.join("directory.wasm"));
    h.row(
        "plugin directory flood (100 junk, symlink out, dir, replaced file)",
        103,
        format!(
            "all 103 refused and logged in {:.0} s (the symlink read and rejected as not a component, the copy as a duplicate name); {} plugins listed",
            started.elapsed().as_secs_f64(),
            listed.len()
        ),
        secs,
    );

    // 8. The container runtime's socket vanishing, and thousands of cgroups churning.
    let started = Instant::now();
    std::fs::remove_file(&socket_link).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let containers = h.agent().get("/containers");
    assert_eq!(containers.status, 200, "{}", containers.body);
    std::os::unix::fs::symlink(&real_socket, &socket_link).unwrap();
    let cgroup_root = Path::new("/sys/fs/cgroup/memory/kpulse-fault-matrix");
    let churned = if std::fs::create_dir_all(cgroup_root).is_ok() {
        for n in 0..2_000 {
            let one = cgroup_root.join(format!("c{n}"));
            if std::fs::create_dir(&one).is_ok() {
                let _ = std::fs::remove_dir(&one);
            }
        }
        let _ = std::fs::remove_dir(cgroup_root);
        2_000
    } else {
        0
    };
    let secs = h.wait_writing("docgen to keep saving after the runtime faults");
    let up = http(h.agent().addr, "GET", "/metrics", &[]).unwrap().status;
    assert_eq!(up, 200);
    h.row(
        "containerd socket gone 4 s; cgroups created and removed",
        1 + churned,
        format!(
            "/containers answered 200 without the runtime; {churned} cgroups churned in {:.0} s",
            started.elapsed().as_secs_f64()
        ),
        secs,
    );

    // 9. BPF faults from outside the agent.
    // (a) The ring buffer full: `ringbench` takes one record per context switch into a
    // 4 MiB ring; the agent is stopped (SIGSTOP: a consumer starved of CPU) for 4 s while
    // threads yield to each other, so the kernel side finds the ring full. The drops must be
    // counted for that plugin, and the records flow again after SIGCONT.
    install(&plugins, &guest_wasm("ringbench"));
    h.agent()
        .wait_state("ringbench", "running", Duration::from_secs(90));
    let ring = |h: &Harness| {
        (
            sample(&h.agent().metrics(), "kpulse_ringbench_records_total{").unwrap_or(0.0),
            h.labelled(
                "kpulse_plugin_bpf_ring_full_drops_total",
                "plugin=\"ringbench\"",
            ),
        )
    };
    let (records0, full0) = ring(&h);
    let pid = h.agent().child.id().to_string();
    let yielding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let yielders: Vec<_> = (0..4)
        .map(|_| {
            let yielding = yielding.clone();
            std::thread::spawn(move || {
                while yielding.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::yield_now();
                }
            })
        })
        .collect();
    let signal = |name: &str| {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    };
    signal("STOP");
    std::thread::sleep(Duration::from_secs(4));
    signal("CONT");
    yielding.store(false, std::sync::atomic::Ordering::Relaxed);
    for yielder in yielders {
        let _ = yielder.join();
    }
    let started = Instant::now();
    let (records1, full1) = wait_for(
        Duration::from_secs(30),
        "ringbench's records and ring-full drops to be reported after the stall",
        || {
            let (records, full) = ring(&h);
            (records > records0 && full > full0).then_some((records, full))
        },
    );
    let secs = started
        .elapsed()
        .as_secs_f64()
        .max(h.wait_writing("docgen to save again after the stall"));
    assert_eq!(
        h.agent().plugin("ringbench").map(|p| p["state"].clone()),
        Some("running".into()),
        "ringbench after the stall"
    );
    h.row(
        "BPF ring buffer full (consumer stopped 4 s under a context-switch flood)",
        1,
        format!(
            "{:.0} records dropped by the kernel side and counted for the plugin; {:.0} delivered around the stall; plugin running",
            full1 - full0,
            records1 - records0
        ),
        secs,
    );
    let _ = std::fs::remove_file(plugins.join("ringbench.wasm"));

    // (c) A BPF map full: `runqlat`'s table of enqueued threads (16384 entries) filled from
    // outside with junk thread ids, what months of missed switch-ins would leave, then a
    // burst of wakeups of many threads at once, more than the table had room for. The table
    // is an LRU hash, so the junk is evicted and the burst's latencies are counted (with a
    // plain hash every insert of the burst would fail, unseen).
    let runqlat_counted = |h: &Harness| -> f64 {
        h.agent()
            .metrics()
            .lines()
            .filter(|l| l.starts_with("kpulse_runqlat_latency_total{") && l.contains("host="))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let started = Instant::now();
    let junk = fill_bpf_map(h.agent().child.id(), "runq_start", 2 * 16_384);
    let counted0 = runqlat_counted(&h);
    let wakeups = wakeup_burst(200, 100);
    let counted = wait_for(
        Duration::from_secs(30),
        "runqlat to count the burst's wakeups with its table filled",
        || {
            let counted = runqlat_counted(&h) - counted0;
            (counted >= wakeups as f64).then_some(counted)
        },
    );
    let secs = started.elapsed().as_secs_f64();
    assert!(junk >= 16_384, "filled only {junk} entries of runq_start");
    h.row(
        "BPF map full (runqlat's 16384-entry table filled with junk from outside, then a wakeup burst)",
        1,
        format!(
            "{junk} junk entries written; {wakeups} wakeups in the burst, {counted:.0} run-queue latencies counted after it (LRU evicts the junk)"
        ),
        secs,
    );

    // (b) Every BPF link the agent holds detached from outside (`bpftool link detach`):
    // the kernel has no detach for the link types kpulse uses (tracepoint, raw tracepoint,
    // perf event, tracing), so each is refused, and the plugins run on.
    let links = fdinfo_ids(h.agent().child.id(), "link_id:");
    let running_before = running(&h);
    let detached = links
        .iter()
        .filter(|id| {
            Command::new("bpftool")
                .args(["link", "detach", "id", &id.to_string()])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .count();
    let secs = h.wait_writing("docgen to keep saving after the detach attempts");
    assert!(!links.is_empty(), "the agent holds no BPF link");
    assert!(
        running(&h) >= running_before,
        "plugins stopped after the detach attempts"
    );
    h.row(
        "BPF links detached from outside (`bpftool link detach`, every link)",
        links.len() as u64,
        format!(
            "{detached} of {} detached (the kernel refuses detach for these link types); {} plugins running",
            links.len(),
            running(&h)
        ),
        secs,
    );

    // (d) A program the verifier rejects: the `rejected` guest (a map value used without a
    // NULL check) dropped into the plugin directory. Its start fails with the verifier's
    // log, it is retried with back-off and quarantined, none of its maps stays loaded, and
    // the other plugins run on.
    let running_before = running(&h);
    let started = Instant::now();
    install(&plugins, &guest_wasm("rejected"));
    let quarantined = {
        let _serial = kpulse_integration_tests::rejected_guest_lock();
        let plugin = h
            .agent()
            .wait_state("rejected", "quarantined", Duration::from_secs(90));
        let maps_left = kpulse_integration_tests::bpf_map_ids_named("kp_rejected");
        assert!(
            maps_left.is_empty(),
            "the rejected object's maps: {maps_left:?}"
        );
        plugin
    };
    let error = quarantined["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("Verifier output") && error.contains("invalid mem access"),
        "the reason carries the verifier's log: {error}"
    );
    let secs = started
        .elapsed()
        .as_secs_f64()
        .max(h.wait_writing("docgen to keep saving beside the rejected plugin"));
    assert!(
        running(&h) >= running_before,
        "plugins stopped beside the rejected one"
    );
    h.row(
        "BPF program rejected by the verifier (a guest's map value used without a NULL check)",
        1,
        format!(
            "plugin failed with the verifier's log (`invalid mem access`), retried, quarantined; no map of it left; {} plugins running",
            running(&h)
        ),
        secs,
    );
    let _ = std::fs::remove_file(plugins.join("rejected.wasm"));

    // (e) An attach the kernel refuses: the `kprobe` guest asks for a kprobe on
    // `kfree_skb_reason`; this kernel has none (typed not-supported), a kernel with kprobes
    // refuses the guest's tracepoint program as the wrong type; either way the guest falls
    // back to the tracepoint and runs.
    let started = Instant::now();
    install(&plugins, &guest_wasm("kprobe"));
    h.agent()
        .wait_state("kprobe", "running", Duration::from_secs(90));
    let fell_back = wait_for(
        Duration::from_secs(30),
        "the kprobe guest to report its fallback",
        || sample(&h.agent().metrics(), "kpulse_kprobe_fell_back{"),
    );
    let not_supported = sample(&h.agent().metrics(), "kpulse_kprobe_not_supported{").unwrap_or(0.0);
    assert_eq!(fell_back, 1.0, "the kprobe guest did not fall back");
    let secs = started.elapsed().as_secs_f64();
    h.row(
        "BPF attach refused (a kprobe on a kernel without kprobes)",
        1,
        format!(
            "refused ({}), the guest fell back to the tracepoint and runs",
            if not_supported > 0.0 {
                "typed not-supported"
            } else {
                "wrong program type"
            }
        ),
        secs,
    );
    let _ = std::fs::remove_file(plugins.join("kprobe.wasm"));

    // 10. Mapping conflicts: docgen restarted with every 10th document carrying a string
    // where the index maps a number. OpenSearch rejects those items (400,
    // mapper_parsing_exception): each is dead-lettered and counted, the rest of its batch
    // indexed. The final sum excuses exactly the dead-lettered ids.
    let plain_config = h.config.clone();
    h.kill9();
    h.config = plain_config.replace(
        "[plugins.docgen]\nper_tick = 1\n",
        "[plugins.docgen]\nper_tick = 1\nconflict_every = 10\n",
    );
    assert_ne!(h.config, plain_config, "the docgen section moved");
    h.start();
    let started = Instant::now();
    let rejected = wait_for(
        Duration::from_secs(60),
        "OpenSearch to reject the conflicting documents",
        || {
            let rejected = h.metric("kpulse_opensearch_documents_rejected_total");
            (rejected >= 20.0).then_some(rejected)
        },
    );
    h.kill9();
    h.config = plain_config.clone();
    h.start();
    let secs = started
        .elapsed()
        .as_secs_f64()
        .max(h.wait_drained("the spool to drain after the mapping conflicts"));
    let dead_letters = dead_lettered(&data.join("opensearch/dead-letter.ndjson"));
    assert!(
        dead_letters.len() as f64 >= rejected,
        "{rejected} rejected, {} dead-lettered",
        dead_letters.len()
    );
    h.row(
        "OpenSearch mapping conflicts (every 10th document a string where the index maps a number)",
        rejected as u64,
        format!(
            "{rejected:.0} items rejected (400 mapper_parsing_exception) and counted; {} in the dead-letter file; the rest of their batches indexed",
            dead_letters.len()
        ),
        secs,
    );

    // 11. TLS failure: the agent restarted with an `https://` address on the plain-HTTP
    // endpoint (a scheme mismatch, what a wrong port or a proxy in between looks like): every
    // handshake fails; documents stay spooled, the cause is logged; switched back, the spool
    // drains.
    h.kill9();
    h.config = plain_config.replace(&proxy.url(), &proxy.url().replace("http://", "https://"));
    assert_ne!(h.config, plain_config, "the sink address moved");
    h.start();
    let started = Instant::now();
    let spooled = wait_for(
        Duration::from_secs(60),
        "documents to pile up in the spool behind the failing handshakes",
        || {
            let spooled = h.metric("kpulse_opensearch_spooled");
            (spooled >= 300.0).then_some(spooled)
        },
    );
    let indexed = h.metric("kpulse_opensearch_documents_indexed_total");
    let tls_lines: Vec<String> = h
        .agent()
        .log()
        .lines()
        .filter(|l| (l.contains("ERROR") || l.contains("WARN")) && l.contains("OpenSearch"))
        .map(str::to_owned)
        .collect();
    assert_eq!(indexed, 0.0, "indexed through a failing handshake");
    assert!(
        tls_lines
            .iter()
            .any(|l| l.contains("the endpoint does not speak TLS")),
        "the log names the cause: {tls_lines:#?}"
    );
    eprintln!("fault matrix: TLS failure logged as: {}", tls_lines[0]);
    h.kill9();
    h.config = plain_config;
    h.start();
    let secs = started
        .elapsed()
        .as_secs_f64()
        .max(h.wait_drained("the spool to drain after the TLS failure"));
    h.row(
        "TLS failure (`https://` to a plain-HTTP endpoint: every handshake fails)",
        1,
        format!(
            "{spooled:.0} documents spooled, none indexed, {} log lines naming OpenSearch and the cause (\"does not speak TLS\"); delivered after the fix",
            tls_lines.len()
        ),
        secs,
    );

    // The hostile guest, after everything: nothing leaked.
    let metrics = h.agent().metrics();
    let leaked = sample(&metrics, "kpulse_escaper_leaked{").unwrap_or(-1.0);
    let attempts = sample(&metrics, "kpulse_escaper_attempts{").unwrap_or(0.0);
    let denied = sample_with(
        &metrics,
        "kpulse_plugin_denied_reads_total",
        "plugin=\"escaper\"",
    )
    .unwrap_or(0.0);
    // The hostile guest's attempts one by one (`kpulse_escaper_attempt{what=...}`).
    let escapes: Vec<(String, bool)> = metrics
        .lines()
        .filter(|l| l.starts_with("kpulse_escaper_attempt{"))
        .filter_map(|l| {
            let what = l.split_once("what=\"")?.1.rsplit_once("\"}")?.0;
            let leaked = l.rsplit(' ').next()?.parse::<f64>().ok()? > 0.0;
            Some((what.to_owned(), leaked))
        })
        .collect();
    h.count_spool_drops();

    // 12. SIGTERM under load: drains within 10 s and exits cleanly.
    h.wait_drained("the spool to drain before the stop");
    let mut agent = h.agent.take().unwrap();
    let started = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &agent.child.id().to_string()])
        .status();
    let status = wait_for(
        Duration::from_secs(15),
        "the agent to exit on SIGTERM",
        || agent.child.try_wait().ok().flatten(),
    );
    let stop_secs = started.elapsed().as_secs_f64();
    assert!(status.success(), "SIGTERM exit: {status}: {}", agent.log());
    assert!(stop_secs < 10.0, "SIGTERM took {stop_secs:.1} s");
    h.rows.push(Row {
        fault: "SIGTERM under load".to_owned(),
        injected: 1,
        crashes: 0,
        observed: format!("exited 0 in {stop_secs:.2} s"),
        recovered_secs: 0.0,
    });
    drop(agent);

    // The sum: every local document once, and in the cluster once.
    let mut local = local_ids(&dir);
    local.extend(local_before_deletion);
    local.sort();
    let remote = remote_ids(&format!("{prefix}-*"));
    let local_duplicates = local.windows(2).filter(|w| w[0] == w[1]).count();
    let remote_duplicates = remote.windows(2).filter(|w| w[0] == w[1]).count();
    let dead_letters = dead_lettered(&data.join("opensearch/dead-letter.ndjson"));
    let missing: Vec<&String> = local
        .iter()
        .filter(|id| remote.binary_search(id).is_err())
        .filter(|id| !dead_letters.contains(*id))
        .collect();
    let lost = (missing.len() as f64 - h.counted_spool_drops).max(0.0);
    let crashes: u64 = h.rows.iter().map(|r| r.crashes).sum();
    let injected: u64 = h.rows.iter().map(|r| r.injected).sum();

    let mut table = String::from(
        "| fault | injected | crashes | observed | recovered in |\n|---|---|---|---|---|\n",
    );
    for row in &h.rows {
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {:.1} s |",
            row.fault, row.injected, row.crashes, row.observed, row.recovered_secs
        );
    }
    let _ = write!(
        table,
        "\n| faults injected | agent crashes | documents lost | duplicated | out-of-grant reads allowed |\n\
         |---|---|---|---|---|\n\
         | {injected} ({} kinds) | {crashes} | {lost} | {} | {leaked} |\n\n\
         {} documents in the local store (with those deleted in step 4b), {} in the cluster; {} dead-lettered on a mapping conflict (step 10); {} missing remotely otherwise, all within \
         the {} the agent counted as dropped (spool I/O on the full and read-only disk, finished segments deleted in step 4b). \
         The escaper made {attempts} attempts; {denied} reads denied.\n",
        h.rows.len(),
        local_duplicates + remote_duplicates,
        local.len(),
        remote.len(),
        dead_letters
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        missing.len(),
        h.counted_spool_drops,
    );
    let _ = writeln!(
        table,
        "\nThe hostile guest's attempts (WASI and host-call ways out of the sandbox):\n\n\
         | attempt | outcome |\n|---|---|"
    );
    for (what, leaked) in &escapes {
        let outcome = if *leaked { "**LEAKED**" } else { "refused" };
        let _ = writeln!(table, "| `{what}` | {outcome} |");
    }
    println!("\n{table}");
    let artifacts = root().join("target/test-artifacts");
    let _ = std::fs::create_dir_all(&artifacts);
    let _ = std::fs::write(artifacts.join("fault-matrix.md"), &table);
    drop(tmpfs);

    assert_eq!(crashes, 0, "{table}");
    assert_eq!(
        lost,
        0.0,
        "{table}\nmissing: {:?}",
        &missing[..missing.len().min(5)]
    );
    assert_eq!(local_duplicates, 0, "{table}");
    assert_eq!(remote_duplicates, 0, "{table}");
    assert_eq!(leaked, 0.0, "{table}");
    assert!(attempts >= 25.0, "the escaper did not run: {table}");
    assert_eq!(escapes.len() as f64, attempts, "{table}");
    assert!(escapes.iter().all(|(_, leaked)| !leaked), "{table}");
    assert!(local.len() > 1_000, "{table}");
}
