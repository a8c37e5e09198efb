//! The privileged BPF layer: loading CO-RE objects with aya, attaching programs, streaming
//! ring buffers and perf event arrays in batches, raw map access, and kernel symbolization.
//!
//! This module is a leaf: it knows nothing of plugins, actors or WIT types. Batches leave
//! through the [`Deliver`] trait the caller supplies, its counters are [`BpfCounters`], and
//! its errors are [`BpfError`] with a [`BpfErrorKind`] the WIT layer maps to error codes.
//!
//! Everything a plugin loads lives in its instance's resource table; dropping the instance
//! (stop, replacement, trap, quarantine) drops the `aya::Ebpf`, which detaches every link and
//! closes every map, and aborts the ring-buffer readers.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aya::maps::{Map, MapData};
use aya::programs::{
    BtfTracePoint, FEntry, FExit, KProbe, PerfEvent, ProgramError, RawTracePoint, TracePoint,
    UProbe,
    perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    uprobe::{UProbeAttachLocation, UProbeScope},
};
use aya::{Btf, Ebpf, EbpfLoader};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::counter::{Count, Level};

mod batch;
pub mod cost;
mod inspect;
mod kallsyms;
mod perf;
mod ring;
mod sys;

pub use batch::{Batch, SKIP_BIT, count_records, push_record};
pub use inspect::{EmbeddedObject, embedded_objects};
pub use kallsyms::{kernel_symbol, symbolize};

/// Records per batch delivered to a guest.
pub const MAX_BATCH_RECORDS: usize = 32_768;
/// Bytes per batch delivered to a guest.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// How often quiet ring buffers are looked at. The BPF side wakes the reader only once a
/// quarter of the ring is pending, so a trickle of records waits at most this long. One
/// ticker serves every ring of the agent and wakes only the readers whose ring has data.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(200);
/// Entries returned by one `entries` call.
const MAX_MAP_ENTRIES: usize = 65_536;

/// What kind of failure a [`BpfError`] is; the WIT layer maps it to an error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BpfErrorKind {
    /// The caller asked for something malformed or absent (a program, a map, a key size).
    InvalidArgument,
    /// This kernel lacks the hook or feature (kprobes, trampolines, BTF).
    NotSupported,
    /// A syscall failed.
    Io,
    /// A map has more entries than one call returns.
    TooLarge,
}

/// A failed BPF operation: its kind plus the loader's or kernel's words.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct BpfError {
    kind: BpfErrorKind,
    message: String,
}

impl BpfError {
    pub fn new(kind: BpfErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> BpfErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(BpfErrorKind::InvalidArgument, message)
    }

    fn unsupported(message: impl Into<String>) -> Self {
        Self::new(BpfErrorKind::NotSupported, message)
    }

    fn io(message: impl Into<String>) -> Self {
        Self::new(BpfErrorKind::Io, message)
    }
}

/// Counters of one consumer's BPF traffic, shared with whoever reports them (the agent
/// registers them as its `plugin_bpf_*` families).
#[derive(Debug, Default, Clone)]
pub struct BpfCounters {
    /// Live ring-buffer and perf-array subscriptions.
    pub subscriptions: Level,
    /// Records delivered.
    pub records: Count,
    /// Records the BPF side dropped because the ring buffer was full (its `stats[1]`).
    pub ring_full: Count,
    /// Records the BPF side's rate limit suppressed (its `stats[2]`).
    pub rate_limited: Count,
    /// Samples the kernel could not store in a perf event array buffer (PERF_RECORD_LOST).
    pub perf_lost: Count,
    /// The consumer's programs, for [`cost::sample_window`].
    pub programs: Arc<cost::ProgramCost>,
    /// Kernel run time of its programs inside sampled windows, seconds.
    pub run_seconds:
        prometheus_client::metrics::counter::Counter<f64, std::sync::atomic::AtomicU64>,
    /// Runs of its programs inside sampled windows.
    pub runs: Count,
}

/// Where batches go. The consumer answers each batch with a receiver that yields the batch
/// back once it is processed (so buffers are reused and one batch is in flight), or `None`
/// once it is gone, which ends the reader.
pub trait Deliver: Send + Sync + 'static {
    fn deliver(&self, subscription: u64, batch: Batch) -> Option<oneshot::Receiver<Batch>>;
}

/// What a subscription needs from its owner: where batches go, which runtime reads, and
/// which counters to bump.
#[derive(Clone)]
pub struct Delivery {
    pub sink: Arc<dyn Deliver>,
    pub runtime: tokio::runtime::Handle,
    pub counters: Arc<BpfCounters>,
}

/// How long the parsed kernel BTF is kept after its last use.
const BTF_LINGER: Duration = Duration::from_secs(10);

/// The kernel's BTF, parsed once for a burst of loads (every plugin starting at once) and
/// shared by them. It is tens of MiB once parsed, and only needed while loading, so it is
/// dropped [`BTF_LINGER`] after the last use and the freed heap is given back to the OS.
fn kernel_btf() -> Result<Arc<Btf>, BpfError> {
    struct Cache {
        btf: Option<Arc<Btf>>,
        last_use: std::time::Instant,
        reaper: bool,
    }
    static CACHE: std::sync::Mutex<Option<Cache>> = std::sync::Mutex::new(None);
    let unavailable = |err: &dyn std::fmt::Display| {
        BpfError::unsupported(format!(
            "kernel BTF (/sys/kernel/btf/vmlinux) unavailable: {err}"
        ))
    };
    let mut guard = CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cache = guard.get_or_insert_with(|| Cache {
        btf: None,
        last_use: std::time::Instant::now(),
        reaper: false,
    });
    cache.last_use = std::time::Instant::now();
    let btf = match &cache.btf {
        Some(btf) => btf.clone(),
        None => {
            let btf = Arc::new(Btf::from_sys_fs().map_err(|err| unavailable(&err))?);
            cache.btf = Some(btf.clone());
            btf
        }
    };
    if !cache.reaper {
        cache.reaper = true;
        let spawned = std::thread::Builder::new()
            .name("kpulse-btf".to_owned())
            .spawn(|| {
                // Sleeps until BTF_LINGER after the last use seen, so the BTF goes at most
                // a few milliseconds late (a fixed BTF_LINGER sleep could keep it for twice
                // as long).
                let mut wait = BTF_LINGER;
                loop {
                    std::thread::sleep(wait);
                    let mut guard = CACHE
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let Some(cache) = guard.as_mut() else { return };
                    let idle = cache.last_use.elapsed();
                    wait = BTF_LINGER
                        .saturating_sub(idle)
                        .max(Duration::from_millis(10));
                    if idle >= BTF_LINGER {
                        cache.btf = None;
                        cache.reaper = false;
                        drop(guard);
                        crate::heap::release_free_heap();
                        return;
                    }
                }
            });
        if spawned.is_err() {
            // Without the reaper the BTF simply stays cached.
            cache.reaper = false;
        }
    }
    Ok(btf)
}

/// Loads a program unless an earlier attach of the same program already did. A plugin may
/// try several points for one program (a kprobe on a function's newer name, then its older
/// one), and an attach that fails after the load leaves the program loaded. Not for fentry,
/// fexit and tp_btf: their load binds the program to its target.
fn load_once(result: Result<(), ProgramError>) -> Result<(), ProgramError> {
    match result {
        Err(ProgramError::AlreadyLoaded) => Ok(()),
        other => other,
    }
}

/// The errno behind an error, found by walking its sources to an `io::Error`.
fn os_error(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(code) = io.raw_os_error()
        {
            return Some(code);
        }
        current = e.source();
    }
    None
}

/// `ENOTSUPP`: the kernel-internal "not supported" some BPF paths return (not in libc).
const ENOTSUPP: i32 = 524;

/// How a program attaches, host-side mirror of the WIT `attach-point`.
#[derive(Debug, Clone)]
pub enum AttachPoint {
    Tracepoint { category: String, name: String },
    RawTracepoint(String),
    TpBtf(String),
    Kprobe(String),
    Kretprobe(String),
    Fentry(String),
    Fexit(String),
    PerfCpuClock(u64),
    Uprobe(UprobeTarget),
    Uretprobe(UprobeTarget),
}

/// Where a uprobe goes: a function (plus offset) in an ELF file, optionally one process.
#[derive(Debug, Clone)]
pub struct UprobeTarget {
    /// Absolute path of the binary or shared library.
    pub binary: String,
    /// Symbol to probe; empty to use `offset` as a file offset.
    pub symbol: String,
    pub offset: u64,
    /// Only this process (`None`: every process that maps the file).
    pub pid: Option<u32>,
}

/// Whether this plugin may use BPF: the capability declared and the operator's policy.
pub fn policy_allows(
    allow: &[String],
    name: &str,
    sha256: &str,
    declared: bool,
) -> Result<(), String> {
    if !declared {
        return Err("the plugin did not declare the `bpf` capability".to_owned());
    }
    let digest = format!("sha256:{sha256}");
    if allow.iter().any(|entry| entry == name || *entry == digest) {
        Ok(())
    } else {
        Err(format!(
            "policy.bpf_allow has neither {name:?} nor \"sha256:{sha256}\""
        ))
    }
}

/// One loaded object and the readers streaming its ring buffers. Without `ebpf` it is a
/// replay stand-in: every operation succeeds and touches no kernel object.
pub struct BpfObject {
    ebpf: Option<Ebpf>,
    readers: Vec<AbortHandle>,
}

impl Drop for BpfObject {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
    }
}

impl BpfObject {
    /// Loads ELF bytes with `volatile const` overrides (exact byte images).
    pub fn load(elf: &[u8], globals: &[(String, Vec<u8>)]) -> Result<Self, BpfError> {
        Self::load_sized(elf, globals, &[])
    }

    /// [`Self::load`], also resizing maps (`max_entries`) before they are created: the
    /// host's own objects size their maps from its config (the profiler's stack maps).
    pub fn load_sized(
        elf: &[u8],
        globals: &[(String, Vec<u8>)],
        max_entries: &[(&str, u32)],
    ) -> Result<Self, BpfError> {
        let btf = kernel_btf()?;
        let mut loader = {
            // `EbpfLoader::new` parses the kernel BTF itself (tens of MiB), which the shared
            // copy set below then replaces. One such parse at a time: with every plugin
            // starting at once they all ran together, peaking at over 140 MiB of heap whose
            // fragments stayed resident.
            static NEW_LOADER: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let _one_at_a_time = NEW_LOADER
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut loader = EbpfLoader::new();
            loader.btf(Some(&btf));
            loader
        };
        for (name, value) in globals {
            loader.override_global(name.as_str(), value.as_slice(), true);
        }
        for (name, size) in max_entries {
            loader.map_max_entries(name, *size);
        }
        let ebpf = loader
            .load(elf)
            .map_err(|err| BpfError::invalid(format!("load: {}", chain(&err))))?;
        Ok(Self {
            ebpf: Some(ebpf),
            readers: Vec::new(),
        })
    }

    /// The replay stand-in (`kpulse plugins replay`).
    pub fn replay_stub() -> Self {
        Self {
            ebpf: None,
            readers: Vec::new(),
        }
    }

    /// The kernel id of a loaded program (`bpftool prog show id N`).
    pub fn program_id(&self, program: &str) -> Option<u32> {
        let info = self.ebpf.as_ref()?.program(program)?.info().ok()?;
        Some(info.id())
    }

    /// Loads and attaches one program.
    pub fn attach(&mut self, program: &str, point: &AttachPoint) -> Result<(), BpfError> {
        let Some(ebpf) = &mut self.ebpf else {
            return Ok(());
        };
        ensure_tracefs();
        let prog = ebpf.program_mut(program).ok_or_else(|| {
            BpfError::invalid(format!("no program named {program:?} in the object"))
        })?;
        let context = |what: &str, err: &dyn std::error::Error| {
            BpfError::io(format!("{what} {program}: {}", chain(err)))
        };
        match point {
            AttachPoint::Tracepoint { category, name } => {
                let tp: &mut TracePoint = prog
                    .try_into()
                    .map_err(|e| context("program type of", &e))?;
                load_once(tp.load()).map_err(|e| context("load", &e))?;
                tp.attach(category, name)
                    .map_err(|e| context(&format!("attach tracepoint {category}/{name} to"), &e))?;
            }
            AttachPoint::RawTracepoint(name) => {
                let tp: &mut RawTracePoint = prog
                    .try_into()
                    .map_err(|e| context("program type of", &e))?;
                load_once(tp.load()).map_err(|e| context("load", &e))?;
                tp.attach(name)
                    .map_err(|e| context(&format!("attach raw tracepoint {name} to"), &e))?;
            }
            AttachPoint::TpBtf(name) => {
                let btf = kernel_btf()?;
                let tp: &mut BtfTracePoint = prog
                    .try_into()
                    .map_err(|e| context("program type of", &e))?;
                tp.load(name, &btf).map_err(|e| context("load", &e))?;
                tp.attach()
                    .map_err(|e| context(&format!("attach tp_btf {name} to"), &e))?;
            }
            AttachPoint::Kprobe(function) | AttachPoint::Kretprobe(function) => {
                if !kprobes_supported() {
                    return Err(BpfError::unsupported(format!(
                        "kprobes are not supported by this kernel (no kprobe PMU); cannot attach {program} to {function}; use a tracepoint"
                    )));
                }
                let probe: &mut KProbe = prog
                    .try_into()
                    .map_err(|e| context("program type of", &e))?;
                load_once(probe.load()).map_err(|e| context("load", &e))?;
                probe
                    .attach(function, 0)
                    .map_err(|e| context(&format!("attach kprobe {function} to"), &e))?;
            }
            AttachPoint::Fentry(function) | AttachPoint::Fexit(function) => {
                let btf = kernel_btf()?;
                let result = if matches!(point, AttachPoint::Fentry(_)) {
                    let p: &mut FEntry = prog
                        .try_into()
                        .map_err(|e| context("program type of", &e))?;
                    p.load(function, &btf).and_then(|()| p.attach().map(|_| ()))
                } else {
                    let p: &mut FExit = prog
                        .try_into()
                        .map_err(|e| context("program type of", &e))?;
                    p.load(function, &btf).and_then(|()| p.attach().map(|_| ()))
                };
                result.map_err(|err| match os_error(&err) {
                    Some(code @ (libc::EPERM | libc::EOPNOTSUPP | ENOTSUPP)) => {
                        BpfError::unsupported(format!(
                            "BPF trampolines (fentry/fexit) are not supported by this kernel (refused with errno {code}) for {function}; use a tracepoint"
                        ))
                    }
                    _ => BpfError::io(format!("attach fentry/fexit {function}: {}", chain(&err))),
                })?;
            }
            AttachPoint::Uprobe(target) | AttachPoint::Uretprobe(target) => {
                if !uprobes_supported() {
                    return Err(BpfError::unsupported(format!(
                        "uprobes are not supported by this kernel (no uprobe PMU); cannot attach {program} to {}",
                        target.binary
                    )));
                }
                if !target.binary.starts_with('/') {
                    return Err(BpfError::invalid(format!(
                        "uprobe binary must be an absolute path, not {:?}",
                        target.binary
                    )));
                }
                let probe: &mut UProbe = prog
                    .try_into()
                    .map_err(|e| context("program type of", &e))?;
                load_once(probe.load()).map_err(|e| context("load", &e))?;
                let location = if target.symbol.is_empty() {
                    UProbeAttachLocation::AbsoluteOffset(target.offset)
                } else {
                    UProbeAttachLocation::SymbolOffset(&target.symbol, target.offset)
                };
                let scope = match target.pid.and_then(std::num::NonZeroU32::new) {
                    Some(pid) => UProbeScope::OneProcess(pid),
                    None => UProbeScope::AllProcesses,
                };
                probe.attach(location, &target.binary, scope).map_err(|e| {
                    context(
                        &format!(
                            "attach uprobe {}:{}+{} to",
                            target.binary, target.symbol, target.offset
                        ),
                        &e,
                    )
                })?;
            }
            AttachPoint::PerfCpuClock(frequency) => {
                let perf: &mut PerfEvent = prog
                    .try_into()
                    .map_err(|e| context("program type of", &e))?;
                perf.load().map_err(|e| context("load", &e))?;
                for cpu in online_cpus() {
                    perf.attach(
                        PerfEventConfig::Software(SoftwareEvent::CpuClock),
                        PerfEventScope::AllProcessesOneCpu { cpu },
                        SamplePolicy::Frequency(*frequency),
                        true,
                    )
                    .map_err(|e| context(&format!("attach perf cpu-clock on cpu {cpu} to"), &e))?;
                }
            }
        }
        Ok(())
    }

    /// Streams ring buffer `map` to the plugin; returns the subscription id.
    pub fn subscribe(
        &mut self,
        map: &str,
        subscription: u64,
        delivery: Delivery,
    ) -> Result<(), BpfError> {
        let Some(ebpf) = &mut self.ebpf else {
            return Ok(());
        };
        let taken = ebpf.take_map(map).ok_or_else(|| {
            BpfError::invalid(format!("no map named {map:?} (or already subscribed)"))
        })?;
        let Map::RingBuf(data) = taken else {
            return Err(BpfError::invalid(format!(
                "map {map:?} is not a ring buffer (a perf event array needs subscribe-perf-event-array)"
            )));
        };
        let ring = ring::RingConsumer::new(data)
            .map_err(|err| BpfError::io(format!("map ring buffer {map:?}: {err}")))?;
        // Lost-record counters follow the convention of ebpf/include/kpulse_common.h: a
        // per-CPU array `stats` whose slot 1 counts records dropped because the ring was full.
        let stats_fd = ebpf
            .map("stats")
            .and_then(map_data)
            .and_then(|d| d.fd().as_fd().try_clone_to_owned().ok());
        let _guard = delivery.runtime.enter();
        let doorbell = ring::RingDoorbell::new(ring);
        // SAFETY: the consumer owns the map and so its fd; the doorbell holds the consumer
        // and the AsyncFd the doorbell, so the fd outlives its registration.
        #[allow(unsafe_code, reason = "registering an owned fd with tokio")]
        let fd = unsafe { AsyncFd::register_with_interest(doorbell, Interest::READABLE) }.map_err(
            |err| BpfError::io(format!("poll ring buffer {map:?}: {}", err.into_parts().1)),
        )?;
        let task = delivery.runtime.spawn(ring::read_ring(
            fd,
            subscription,
            delivery.clone(),
            stats_fd,
        ));
        self.readers.push(task.abort_handle());
        delivery
            .counters
            .subscriptions
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Streams perf event array `map` (one buffer of `pages` pages per online CPU) to the
    /// plugin, under the same subscription id scheme as ring buffers.
    pub fn subscribe_perf(
        &mut self,
        map: &str,
        pages: u32,
        subscription: u64,
        delivery: Delivery,
    ) -> Result<(), BpfError> {
        let Some(ebpf) = &mut self.ebpf else {
            return Ok(());
        };
        let taken = ebpf.take_map(map).ok_or_else(|| {
            BpfError::invalid(format!("no map named {map:?} (or already subscribed)"))
        })?;
        let Map::PerfEventArray(data) = taken else {
            return Err(BpfError::invalid(format!(
                "map {map:?} is not a perf event array"
            )));
        };
        let readers = perf::subscribe(data, pages as usize, subscription, &delivery)
            .map_err(|err| BpfError::io(format!("map {map:?}: {err}")))?;
        self.readers.extend(readers);
        delivery
            .counters
            .subscriptions
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Detaches every link of `program` and unloads it; the rest of the object stays.
    pub fn detach(&mut self, program: &str) -> Result<(), BpfError> {
        let Some(ebpf) = &mut self.ebpf else {
            return Ok(());
        };
        let prog = ebpf.program_mut(program).ok_or_else(|| {
            BpfError::invalid(format!("no program named {program:?} in the object"))
        })?;
        use aya::programs::Program;
        let result = match prog {
            Program::KProbe(p) => p.unload(),
            Program::UProbe(p) => p.unload(),
            Program::TracePoint(p) => p.unload(),
            Program::RawTracePoint(p) => p.unload(),
            Program::BtfTracePoint(p) => p.unload(),
            Program::FEntry(p) => p.unload(),
            Program::FExit(p) => p.unload(),
            Program::PerfEvent(p) => p.unload(),
            _ => {
                return Err(BpfError::invalid(format!(
                    "program {program:?} is of a kind kpulse does not attach"
                )));
            }
        };
        result.map_err(|err| BpfError::io(format!("detach {program}: {}", chain(&err))))
    }

    fn map(&self, name: &str) -> Result<(BorrowedFd<'_>, MapShape), BpfError> {
        let ebpf = self
            .ebpf
            .as_ref()
            .ok_or_else(|| BpfError::unsupported("maps are not available while replaying"))?;
        let map = ebpf
            .map(name)
            .ok_or_else(|| BpfError::invalid(format!("no map named {name:?}")))?;
        let per_cpu = matches!(
            map,
            Map::PerCpuArray(_) | Map::PerCpuHashMap(_) | Map::PerCpuLruHashMap(_)
        );
        let data = map_data(map)
            .ok_or_else(|| BpfError::invalid(format!("map {name:?} is not a hash or array map")))?;
        let info = data
            .info()
            .map_err(|err| BpfError::io(format!("map {name:?} info: {}", chain(&err))))?;
        let value_size = info.value_size() as usize;
        let shape = MapShape {
            key_size: info.key_size() as usize,
            value_size: if per_cpu {
                value_size.div_ceil(8) * 8 * possible_cpus() as usize
            } else {
                value_size
            },
        };
        Ok((data.fd().as_fd(), shape))
    }

    pub fn lookup(&self, map: &str, key: &[u8]) -> Result<Option<Vec<u8>>, BpfError> {
        let (fd, shape) = self.map(map)?;
        shape.check_key(map, key)?;
        let mut value = vec![0u8; shape.value_size];
        match sys::lookup(fd, key, &mut value) {
            Ok(true) => Ok(Some(value)),
            Ok(false) => Ok(None),
            Err(err) => Err(BpfError::io(format!("lookup in {map:?}: {err}"))),
        }
    }

    pub fn entries(&self, map: &str) -> Result<Vec<MapEntry>, BpfError> {
        let (fd, shape) = self.map(map)?;
        let mut out = Vec::new();
        let mut key: Option<Vec<u8>> = None;
        loop {
            let mut next = vec![0u8; shape.key_size];
            let more = sys::next_key(fd, key.as_deref(), &mut next)
                .map_err(|err| BpfError::io(format!("iterate {map:?}: {err}")))?;
            if !more {
                return Ok(out);
            }
            if out.len() == MAX_MAP_ENTRIES {
                return Err(BpfError::new(
                    BpfErrorKind::TooLarge,
                    format!("{map:?} has more than {MAX_MAP_ENTRIES} entries"),
                ));
            }
            let mut value = vec![0u8; shape.value_size];
            // An entry deleted between next_key and lookup is simply skipped.
            if sys::lookup(fd, &next, &mut value).unwrap_or(false) {
                out.push((next.clone(), value));
            }
            key = Some(next);
        }
    }

    pub fn update(&self, map: &str, key: &[u8], value: &[u8]) -> Result<(), BpfError> {
        let (fd, shape) = self.map(map)?;
        shape.check_key(map, key)?;
        if value.len() != shape.value_size {
            return Err(BpfError::invalid(format!(
                "{map:?} values are {} bytes, got {}",
                shape.value_size,
                value.len()
            )));
        }
        sys::update(fd, key, value).map_err(|err| BpfError::io(format!("update {map:?}: {err}")))
    }

    pub fn delete(&self, map: &str, key: &[u8]) -> Result<(), BpfError> {
        let (fd, shape) = self.map(map)?;
        shape.check_key(map, key)?;
        sys::delete(fd, key).map_err(|err| BpfError::io(format!("delete from {map:?}: {err}")))
    }
}

/// A raw `(key, value)` pair of a map.
pub type MapEntry = (Vec<u8>, Vec<u8>);

#[derive(Debug, Clone, Copy)]
struct MapShape {
    key_size: usize,
    value_size: usize,
}

impl MapShape {
    fn check_key(&self, map: &str, key: &[u8]) -> Result<(), BpfError> {
        if key.len() == self.key_size {
            Ok(())
        } else {
            Err(BpfError::invalid(format!(
                "{map:?} keys are {} bytes, got {}",
                self.key_size,
                key.len()
            )))
        }
    }
}

fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::StackTraceMap(d)
        | Map::RingBuf(d) => Some(d),
        _ => None,
    }
}

/// Adds to `total` how much a kernel counter grew since it was last `seen`.
fn add_growth(total: &std::sync::atomic::AtomicU64, seen: &mut u64, now: Option<u64>) {
    if let Some(now) = now {
        total.fetch_add(now.saturating_sub(*seen), Ordering::Relaxed);
        *seen = now;
    }
}

/// Sum over CPUs of slot `index` of a per-CPU array of u64.
fn sum_percpu_u64(fd: BorrowedFd<'_>, index: u32) -> Option<u64> {
    let mut value = vec![0u8; 8 * possible_cpus() as usize];
    if !sys::lookup(fd, &index.to_ne_bytes(), &mut value).ok()? {
        return None;
    }
    Some(
        value
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
            .sum(),
    )
}

/// Possible CPUs (the stride of per-CPU map values), from sysfs.
pub fn possible_cpus() -> u32 {
    static CPUS: OnceLock<u32> = OnceLock::new();
    *CPUS.get_or_init(|| {
        std::fs::read_to_string("/sys/devices/system/cpu/possible")
            .ok()
            .and_then(|text| parse_cpu_list(&text).into_iter().max())
            .map_or(1, |max| max + 1)
    })
}

fn online_cpus() -> Vec<u32> {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map(|text| parse_cpu_list(&text))
        .unwrap_or_else(|_| vec![0])
}

/// Parses `0-3,5,7-8`.
fn parse_cpu_list(text: &str) -> Vec<u32> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    cpus.extend(a..=b);
                }
            }
            None => cpus.extend(part.parse::<u32>().ok()),
        }
    }
    cpus
}

/// Whether the kernel can create kprobes (it has the kprobe PMU or tracefs kprobe events).
pub fn kprobes_supported() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || std::path::Path::new("/sys/kernel/tracing/kprobe_events").exists()
}

/// Whether the kernel can create uprobes (the uprobe PMU or tracefs uprobe events).
pub fn uprobes_supported() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/uprobe").exists()
        || std::path::Path::new("/sys/kernel/tracing/uprobe_events").exists()
}

/// Tracepoint attachment needs tracefs for event ids; mount it if the system did not.
fn ensure_tracefs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::path::Path::new("/sys/kernel/tracing/events").exists()
            || std::path::Path::new("/sys/kernel/debug/tracing/events").exists()
        {
            return;
        }
        let status = std::process::Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status();
        tracing::info!(
            ?status,
            "mounted tracefs at /sys/kernel/tracing for tracepoint ids"
        );
    });
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_embedded_objects() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/build/dropwatch.bpf.o");
        let Ok(object) = std::fs::read(path) else {
            // Built by `make -C ebpf`; scripts/test.sh always builds it first.
            panic!("{path} missing: run make -C ebpf");
        };
        let mut wasm = b"\0asm-prefix".to_vec();
        wasm.extend_from_slice(&object);
        wasm.extend_from_slice(b"suffix");
        let found = embedded_objects(&wasm);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].offset, 11);
        assert_eq!(
            found[0].programs,
            vec!["tracepoint/skb/kfree_skb".to_owned()]
        );
        assert!(found[0].size <= object.len());
    }

    /// A failed attach leaves the program loaded; the plugin's next point for the same
    /// program must still attach (iolatency's kprobe on a renamed function, found by
    /// scripts/kernel-matrix.sh on 6.1, takes the same path). Needs root, as every BPF test.
    #[test]
    fn retries_a_program_at_another_point_after_a_failed_attach() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/build/dropwatch.bpf.o");
        let Ok(elf) = std::fs::read(path) else {
            panic!("{path} missing: run make -C ebpf");
        };
        let mut object = BpfObject::load(&elf, &[]).expect("load dropwatch.bpf.o");
        let missing = AttachPoint::Tracepoint {
            category: "skb".to_owned(),
            name: "no_such_tracepoint".to_owned(),
        };
        assert!(object.attach("kfree_skb", &missing).is_err());
        let real = AttachPoint::Tracepoint {
            category: "skb".to_owned(),
            name: "kfree_skb".to_owned(),
        };
        object
            .attach("kfree_skb", &real)
            .expect("the second point attaches the already loaded program");
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,5,7-8\n"), vec![0, 1, 2, 3, 5, 7, 8]);
        assert_eq!(parse_cpu_list("0"), vec![0]);
    }

    #[test]
    fn policy() {
        let allow = vec!["dropwatch".to_owned(), "sha256:abc".to_owned()];
        assert!(policy_allows(&allow, "dropwatch", "x", true).is_ok());
        assert!(policy_allows(&allow, "other", "abc", true).is_ok());
        assert!(policy_allows(&allow, "other", "def", true).is_err());
        assert!(policy_allows(&allow, "dropwatch", "x", false).is_err());
    }

    #[test]
    fn symbolizes_kernel_text() {
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let Some(addr) = text.lines().find_map(|l| {
            let mut p = l.split_whitespace();
            let a = u64::from_str_radix(p.next()?, 16).ok()?;
            (p.next()? == "T" && p.next()? == "schedule" && a != 0).then_some(a)
        }) else {
            // Without root kallsyms shows zero addresses; symbolization then gives hex.
            assert_eq!(symbolize(&[0x10]), vec!["0x10".to_owned()]);
            return;
        };
        assert_eq!(symbolize(&[addr + 4]), vec!["schedule+0x4".to_owned()]);
    }
}
