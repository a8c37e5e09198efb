//! The privileged BPF side of the `bpf` interface: loading CO-RE objects with aya, attaching
//! programs, streaming ring buffers to the plugin's actor in batches, raw map access, and
//! kernel symbolization.
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
    BtfTracePoint, FEntry, FExit, KProbe, PerfEvent, RawTracePoint, TracePoint, UProbe,
    perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    uprobe::{UProbeAttachLocation, UProbeScope},
};
use aya::{Btf, Ebpf, EbpfLoader};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;

use crate::plugins::actor::Call;
use crate::plugins::stats::PluginStats;
use crate::runtime::ErrorCode;

mod batch;
mod inspect;
mod kallsyms;
mod perf;
mod ring;
mod sys;

pub use batch::{Batch, SKIP_BIT, push_record};
pub use inspect::{EmbeddedObject, embedded_objects};
pub use kallsyms::symbolize;

/// Records per batch delivered to a guest.
pub const MAX_BATCH_RECORDS: usize = 32_768;
/// Bytes per batch delivered to a guest.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// How often a ring buffer is drained even without a wake-up (the BPF side only wakes the
/// reader once a quarter of the ring is pending, so a quiet buffer is drained by this timer).
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(10);
/// Entries returned by one `entries` call.
const MAX_MAP_ENTRIES: usize = 65_536;

/// A failed BPF operation: the WIT error code plus the loader's or kernel's words.
#[derive(Debug, Clone)]
pub struct BpfError {
    pub code: ErrorCode,
    pub message: String,
}

impl BpfError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotSupported, message)
    }
}

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

/// Where ring-buffer batches go: the plugin's mailbox, tagged with its incarnation.
#[derive(Clone)]
pub struct Delivery {
    pub mailbox: UnboundedSender<Call>,
    pub incarnation: u64,
    pub runtime: tokio::runtime::Handle,
    pub stats: Arc<PluginStats>,
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
        let btf = Btf::from_sys_fs().map_err(|err| {
            BpfError::unsupported(format!(
                "kernel BTF (/sys/kernel/btf/vmlinux) unavailable: {err}"
            ))
        })?;
        let mut loader = EbpfLoader::new();
        loader.btf(Some(&btf));
        for (name, value) in globals {
            loader.override_global(name.as_str(), value.as_slice(), true);
        }
        let ebpf = loader.load(elf).map_err(|err| {
            BpfError::new(ErrorCode::InvalidArgument, format!("load: {}", chain(&err)))
        })?;
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
            BpfError::new(ErrorCode::Io, format!("{what} {program}: {}", chain(err)))
        };
        match point {
            AttachPoint::Tracepoint { category, name } => {
                let tp: &mut TracePoint = prog
                    .try_into()
                    .map_err(|e| context("program type of", &e))?;
                tp.load().map_err(|e| context("load", &e))?;
                tp.attach(category, name)
                    .map_err(|e| context(&format!("attach tracepoint {category}/{name} to"), &e))?;
            }
            AttachPoint::RawTracepoint(name) => {
                let tp: &mut RawTracePoint = prog
                    .try_into()
                    .map_err(|e| context("program type of", &e))?;
                tp.load().map_err(|e| context("load", &e))?;
                tp.attach(name)
                    .map_err(|e| context(&format!("attach raw tracepoint {name} to"), &e))?;
            }
            AttachPoint::TpBtf(name) => {
                let btf = Btf::from_sys_fs().map_err(|e| context("kernel BTF for", &e))?;
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
                probe.load().map_err(|e| context("load", &e))?;
                probe
                    .attach(function, 0)
                    .map_err(|e| context(&format!("attach kprobe {function} to"), &e))?;
            }
            AttachPoint::Fentry(function) | AttachPoint::Fexit(function) => {
                let btf = Btf::from_sys_fs().map_err(|e| context("kernel BTF for", &e))?;
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
                result.map_err(|err| {
                    let text = chain(&err);
                    if text.contains("Operation not permitted") || text.contains("EPERM") || text.contains("os error 1") {
                        BpfError::unsupported(format!(
                            "BPF trampolines (fentry/fexit) are not supported by this kernel (refused with EPERM) for {function}; use a tracepoint"
                        ))
                    } else {
                        BpfError::new(ErrorCode::Io, format!("attach fentry/fexit {function}: {text}"))
                    }
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
                probe.load().map_err(|e| context("load", &e))?;
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
        let ring = ring::RingConsumer::new(data).map_err(|err| {
            BpfError::new(ErrorCode::Io, format!("map ring buffer {map:?}: {err}"))
        })?;
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
            |err| {
                BpfError::new(
                    ErrorCode::Io,
                    format!("poll ring buffer {map:?}: {}", err.into_parts().1),
                )
            },
        )?;
        let task = delivery.runtime.spawn(ring::read_ring(
            fd,
            subscription,
            delivery.clone(),
            stats_fd,
        ));
        self.readers.push(task.abort_handle());
        delivery
            .stats
            .bpf_subscriptions
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
            .map_err(|err| BpfError::new(ErrorCode::Io, format!("map {map:?}: {err}")))?;
        self.readers.extend(readers);
        delivery
            .stats
            .bpf_subscriptions
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
        result.map_err(|err| {
            BpfError::new(ErrorCode::Io, format!("detach {program}: {}", chain(&err)))
        })
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
        let info = data.info().map_err(|err| {
            BpfError::new(ErrorCode::Io, format!("map {name:?} info: {}", chain(&err)))
        })?;
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
            Err(err) => Err(BpfError::new(
                ErrorCode::Io,
                format!("lookup in {map:?}: {err}"),
            )),
        }
    }

    pub fn entries(&self, map: &str) -> Result<Vec<MapEntry>, BpfError> {
        let (fd, shape) = self.map(map)?;
        let mut out = Vec::new();
        let mut key: Option<Vec<u8>> = None;
        loop {
            let mut next = vec![0u8; shape.key_size];
            let more = sys::next_key(fd, key.as_deref(), &mut next)
                .map_err(|err| BpfError::new(ErrorCode::Io, format!("iterate {map:?}: {err}")))?;
            if !more {
                return Ok(out);
            }
            if out.len() == MAX_MAP_ENTRIES {
                return Err(BpfError::new(
                    ErrorCode::TooLarge,
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
        sys::update(fd, key, value)
            .map_err(|err| BpfError::new(ErrorCode::Io, format!("update {map:?}: {err}")))
    }

    pub fn delete(&self, map: &str, key: &[u8]) -> Result<(), BpfError> {
        let (fd, shape) = self.map(map)?;
        shape.check_key(map, key)?;
        sys::delete(fd, key)
            .map_err(|err| BpfError::new(ErrorCode::Io, format!("delete from {map:?}: {err}")))
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
