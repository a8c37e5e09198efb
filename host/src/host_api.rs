//! The host side of the `kpulse:plugin` imports: per-instance state and one trait impl per
//! WIT interface. Every value from a guest is untrusted: sizes are capped, paths checked,
//! JSON validated, and every refusal is a typed error plus a counter.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{ResourceLimiter, Result as WasmResult};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bpf::{AttachPoint, BpfError, BpfObject, Delivery};
use crate::fsaccess::{EntryKind, FsAccess, FsError, ReadGrant};
use crate::hostinfo::HostInfo;
use crate::plugins::actor::Call;
use crate::plugins::stats::PluginStats;
use crate::runtime::kpulse::plugin::{bpf, clock, fs, host, log, storage, types};
use crate::runtime::{ErrorCode, Level, RunType};
use crate::storage::{SaveError, SaveRequest, Store};

/// Longest log line kept from a guest.
const MAX_LOG_LINE: usize = 4096;
/// Timers one instance may hold at once.
const MAX_TIMERS: usize = 64;
/// Shortest timer period; anything faster is clamped, so a guest cannot flood its mailbox.
const MIN_TIMER_PERIOD: Duration = Duration::from_millis(10);
/// Bytes of guest stderr kept for error reports (panic messages end up here).
const STDERR_CAPACITY: usize = 256 * 1024;

/// Agent-wide services the imports use.
#[derive(Debug)]
pub struct Services {
    pub fs: FsAccess,
    pub store: Store,
    pub host: HostInfo,
    pub runtime: tokio::runtime::Handle,
    /// Where to copy every ring-buffer batch (`kpulse plugins record`).
    pub recorder: Option<Arc<crate::record::Recorder>>,
    /// Fake BPF: objects load and attach without touching the kernel (`plugins replay`).
    pub replay: bool,
}

/// Who the instance is and what it may do.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub stats: Arc<PluginStats>,
    pub grant: ReadGrant,
    /// Whether BPF is allowed, or why not.
    pub bpf: Result<(), String>,
    pub kallsyms: bool,
    /// Keep receive timestamps on while the instance lives (`rx-timestamps`).
    pub rx_timestamps: bool,
}

/// The state of one plugin instance: WASI context, resource table, limits and timers.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: MemoryLimiter,
    pub stderr: MemoryOutputPipe,
    identity: Identity,
    services: Arc<Services>,
    timers: Timers,
    next_subscription: u64,
    /// Held open while the instance lives: a socket with receive timestamps enabled makes
    /// the kernel stamp every incoming skb (`skb->tstamp`), which `net_rx_latency` needs.
    _rx_timestamps: Option<std::net::UdpSocket>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostState {
    /// State for a new instance. `mailbox` is where timer firings are delivered; `None` for
    /// throw-away instances such as `describe` probes, whose timers never fire.
    pub fn new(
        identity: Identity,
        services: Arc<Services>,
        memory_bytes: u64,
        mailbox: Option<(UnboundedSender<Call>, u64)>,
    ) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        // No preopens, no env, no args, no sockets, no name lookup: no ambient authority.
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limiter = MemoryLimiter {
            limit: usize::try_from(memory_bytes).unwrap_or(usize::MAX),
            exceeded: false,
            stats: identity.stats.clone(),
        };
        let timers = Timers {
            mailbox,
            runtime: services.runtime.clone(),
            next_id: 1,
            active: HashMap::new(),
        };
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter,
            stderr,
            services,
            _rx_timestamps: identity.rx_timestamps.then(enable_rx_timestamps).flatten(),
            identity,
            timers,
            next_subscription: 1,
        }
    }

    /// The last lines the guest wrote to stderr (a panic message, typically).
    pub fn stderr_tail(&self) -> String {
        let bytes = self.stderr.contents();
        let text = String::from_utf8_lossy(&bytes);
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    fn denied(&self, err: &FsError) -> ErrorCode {
        let code = match err {
            FsError::Denied(_) => ErrorCode::AccessDenied,
            FsError::NotFound(_) => return ErrorCode::NotFound,
            FsError::Invalid(_) => ErrorCode::InvalidArgument,
            FsError::TooLarge(_) => return ErrorCode::TooLarge,
            FsError::Io { .. } => return ErrorCode::Io,
        };
        self.identity
            .stats
            .denied_reads
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(plugin = %self.identity.name, %err, "read refused");
        code
    }
}

/// Caps linear memory and records its size for `/metrics`.
pub struct MemoryLimiter {
    limit: usize,
    /// Set when the guest asked for more than its cap; the trap is then reported as such.
    pub exceeded: bool,
    stats: Arc<PluginStats>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> WasmResult<bool> {
        if desired > self.limit {
            self.exceeded = true;
            return Err(wasmtime::format_err!(
                "memory limit exceeded: the guest asked for {desired} bytes, the cap is {} bytes",
                self.limit
            ));
        }
        self.stats
            .memory_bytes
            .store(desired as u64, Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> WasmResult<bool> {
        Ok(desired <= 100_000)
    }
}

/// The host object behind a guest's `timer` handle.
#[derive(Debug)]
pub struct TimerHandle {
    id: u64,
}

struct Timers {
    mailbox: Option<(UnboundedSender<Call>, u64)>,
    runtime: tokio::runtime::Handle,
    next_id: u64,
    active: HashMap<u64, AbortHandle>,
}

impl Timers {
    fn arm(&mut self, after: Duration, every: Option<Duration>) -> Result<u64, ErrorCode> {
        if self.active.len() >= MAX_TIMERS {
            return Err(ErrorCode::TooLarge);
        }
        if every.is_some_and(|period| period.is_zero()) {
            return Err(ErrorCode::InvalidArgument);
        }
        let id = self.next_id;
        self.next_id += 1;
        let Some((mailbox, incarnation)) = self.mailbox.clone() else {
            return Ok(id);
        };
        let every = every.map(|period| period.max(MIN_TIMER_PERIOD));
        // Set while a firing waits in the mailbox: a busy plugin gets one, not a backlog.
        let pending = Arc::new(AtomicBool::new(false));
        let task = self.runtime.spawn(async move {
            let fire = || {
                if pending.swap(true, Ordering::AcqRel) {
                    return true;
                }
                mailbox
                    .send(Call::Timer {
                        incarnation,
                        id,
                        pending: pending.clone(),
                    })
                    .is_ok()
            };
            let start = tokio::time::Instant::now() + after;
            match every {
                None => {
                    tokio::time::sleep_until(start).await;
                    fire();
                }
                Some(period) => {
                    let mut ticks = tokio::time::interval_at(start, period);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                    loop {
                        ticks.tick().await;
                        if !fire() {
                            break;
                        }
                    }
                }
            }
        });
        self.active.insert(id, task.abort_handle());
        Ok(id)
    }

    fn cancel(&mut self, id: u64) {
        if let Some(task) = self.active.remove(&id) {
            task.abort();
        }
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        for task in self.active.values() {
            task.abort();
        }
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let plugin = &self.identity.name;
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

impl host::Host for HostState {
    fn info(&mut self) -> host::HostInfo {
        let info = &self.services.host;
        host::HostInfo {
            hostname: info.hostname.clone(),
            region: info.region.clone(),
            kernel_release: info.kernel_release.clone(),
            cpu_count: info.cpu_count,
            boot_time_secs: info.boot_time_secs,
        }
    }
}

impl clock::Host for HostState {
    fn now_ns(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    fn monotonic_ns(&mut self) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
        #[allow(unsafe_code, reason = "clock_gettime has no safe std equivalent in ns")]
        unsafe {
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        }
        u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000
            + u64::try_from(ts.tv_nsec).unwrap_or(0)
    }
}

impl clock::HostTimer for HostState {
    fn arm(
        &mut self,
        after_ms: u64,
        every_ms: Option<u64>,
    ) -> Result<Resource<TimerHandle>, ErrorCode> {
        let id = self.timers.arm(
            Duration::from_millis(after_ms),
            every_ms.map(Duration::from_millis),
        )?;
        self.table.push(TimerHandle { id }).map_err(|_| {
            self.timers.cancel(id);
            ErrorCode::TooLarge
        })
    }

    fn id(&mut self, timer: Resource<TimerHandle>) -> u64 {
        self.table.get(&timer).map(|t| t.id).unwrap_or(0)
    }

    fn cancel(&mut self, timer: Resource<TimerHandle>) {
        if let Ok(handle) = self.table.get(&timer) {
            let id = handle.id;
            self.timers.cancel(id);
        }
    }

    fn drop(&mut self, timer: Resource<TimerHandle>) -> WasmResult<()> {
        let handle = self.table.delete(timer)?;
        self.timers.cancel(handle.id);
        Ok(())
    }
}

impl fs::Host for HostState {
    fn read_file(&mut self, path: String) -> Result<Vec<u8>, ErrorCode> {
        self.services
            .fs
            .read_file(&self.identity.grant, &path)
            .map_err(|err| self.denied(&err))
    }

    fn read_dir(&mut self, path: String) -> Result<Vec<fs::DirEntry>, ErrorCode> {
        let entries = self
            .services
            .fs
            .read_dir(&self.identity.grant, &path)
            .map_err(|err| self.denied(&err))?;
        Ok(entries
            .into_iter()
            .map(|(name, kind)| fs::DirEntry {
                name,
                kind: match kind {
                    EntryKind::File => fs::EntryKind::File,
                    EntryKind::Directory => fs::EntryKind::Directory,
                    EntryKind::Symlink => fs::EntryKind::Symlink,
                    EntryKind::Other => fs::EntryKind::Other,
                },
            })
            .collect())
    }

    fn read_link(&mut self, path: String) -> Result<String, ErrorCode> {
        self.services
            .fs
            .read_link(&self.identity.grant, &path)
            .map_err(|err| self.denied(&err))
    }
}

impl storage::Host for HostState {
    fn save(
        &mut self,
        tracer_name: String,
        container_id: String,
        time_ns: u64,
        data_json: String,
        run_type: RunType,
    ) -> Result<String, ErrorCode> {
        let request = SaveRequest {
            tracer_name: &tracer_name,
            container_id: &container_id,
            time_ns,
            data_json: &data_json,
            run_type: match run_type {
                RunType::Event => crate::storage::RunType::Event,
                RunType::Autotracing => crate::storage::RunType::Autotracing,
            },
        };
        let stats = &self.identity.stats;
        match self.services.store.save(&request) {
            Ok(id) => {
                stats.documents_saved.fetch_add(1, Ordering::Relaxed);
                Ok(id)
            }
            Err(SaveError::QueueFull) => {
                stats.documents_dropped.fetch_add(1, Ordering::Relaxed);
                Err(ErrorCode::QueueFull)
            }
            Err(err @ SaveError::Invalid(_)) => {
                stats.documents_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(plugin = %self.identity.name, tracer = %tracer_name, %err, "document rejected");
                Err(ErrorCode::InvalidArgument)
            }
        }
    }
}

fn to_wit(err: BpfError) -> bpf::BpfError {
    bpf::BpfError {
        code: err.code,
        message: err.message,
    }
}

impl HostState {
    fn bpf_allowed(&self) -> Result<(), bpf::BpfError> {
        self.identity.bpf.clone().map_err(|reason| {
            self.identity
                .stats
                .bpf_denied
                .fetch_add(1, Ordering::Relaxed);
            bpf::BpfError {
                code: ErrorCode::AccessDenied,
                message: format!("BPF denied: {reason}"),
            }
        })
    }

    fn object_mut(
        &mut self,
        handle: &Resource<BpfObject>,
    ) -> Result<&mut BpfObject, bpf::BpfError> {
        self.table.get_mut(handle).map_err(|err| bpf::BpfError {
            code: ErrorCode::InvalidArgument,
            message: format!("bad object handle: {err}"),
        })
    }

    /// Starts a ring-buffer or perf-array reader that delivers to this instance's mailbox.
    fn subscribe(
        &mut self,
        handle: Resource<BpfObject>,
        start: impl FnOnce(&mut BpfObject, u64, Delivery) -> Result<(), crate::bpf::BpfError>,
    ) -> Result<u64, bpf::BpfError> {
        self.bpf_allowed()?;
        let Some((mailbox, incarnation)) = self.timers.mailbox.clone() else {
            return Err(bpf::BpfError {
                code: ErrorCode::NotSupported,
                message: "this instance cannot receive events".to_owned(),
            });
        };
        let delivery = Delivery {
            mailbox,
            incarnation,
            runtime: self.services.runtime.clone(),
            stats: self.identity.stats.clone(),
        };
        let subscription = self.next_subscription;
        start(self.object_mut(&handle)?, subscription, delivery).map_err(to_wit)?;
        self.next_subscription += 1;
        Ok(subscription)
    }

    fn object(&self, handle: &Resource<BpfObject>) -> Result<&BpfObject, bpf::BpfError> {
        self.table.get(handle).map_err(|err| bpf::BpfError {
            code: ErrorCode::InvalidArgument,
            message: format!("bad object handle: {err}"),
        })
    }
}

impl bpf::Host for HostState {
    fn possible_cpus(&mut self) -> u32 {
        crate::bpf::possible_cpus()
    }

    fn symbolize(&mut self, addresses: Vec<u64>) -> Result<Vec<String>, ErrorCode> {
        if !self.identity.kallsyms {
            self.identity
                .stats
                .denied_reads
                .fetch_add(1, Ordering::Relaxed);
            return Err(ErrorCode::AccessDenied);
        }
        if addresses.len() > 65_536 {
            return Err(ErrorCode::TooLarge);
        }
        Ok(crate::bpf::symbolize(&addresses))
    }
}

impl bpf::HostObject for HostState {
    fn load(
        &mut self,
        elf: Vec<u8>,
        globals: Vec<bpf::Global>,
    ) -> Result<Resource<BpfObject>, bpf::BpfError> {
        self.bpf_allowed()?;
        let globals: Vec<(String, Vec<u8>)> =
            globals.into_iter().map(|g| (g.name, g.value)).collect();
        let object = if self.services.replay {
            BpfObject::replay_stub()
        } else {
            BpfObject::load(&elf, &globals).map_err(to_wit)?
        };
        self.identity
            .stats
            .bpf_objects
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(plugin = %self.identity.name, bytes = elf.len(), "BPF object loaded");
        self.table.push(object).map_err(|err| bpf::BpfError {
            code: ErrorCode::TooLarge,
            message: err.to_string(),
        })
    }

    fn attach(
        &mut self,
        handle: Resource<BpfObject>,
        program: String,
        point: bpf::AttachPoint,
    ) -> Result<(), bpf::BpfError> {
        self.bpf_allowed()?;
        let point = match point {
            bpf::AttachPoint::Tracepoint((category, name)) => {
                AttachPoint::Tracepoint { category, name }
            }
            bpf::AttachPoint::RawTracepoint(name) => AttachPoint::RawTracepoint(name),
            bpf::AttachPoint::TpBtf(name) => AttachPoint::TpBtf(name),
            bpf::AttachPoint::Kprobe(f) => AttachPoint::Kprobe(f),
            bpf::AttachPoint::Kretprobe(f) => AttachPoint::Kretprobe(f),
            bpf::AttachPoint::Fentry(f) => AttachPoint::Fentry(f),
            bpf::AttachPoint::Fexit(f) => AttachPoint::Fexit(f),
            bpf::AttachPoint::PerfCpuClock(hz) => AttachPoint::PerfCpuClock(hz),
            bpf::AttachPoint::Uprobe(t) => AttachPoint::Uprobe(uprobe_target(t)),
            bpf::AttachPoint::Uretprobe(t) => AttachPoint::Uretprobe(uprobe_target(t)),
        };
        let name = self.identity.name.clone();
        self.object_mut(&handle)?.attach(&program, &point).map_err(|err| {
            tracing::warn!(plugin = %name, %program, ?point, error = %err.message, "BPF attach failed");
            to_wit(err)
        })
    }

    fn subscribe_ring_buffer(
        &mut self,
        handle: Resource<BpfObject>,
        map: String,
    ) -> Result<u64, bpf::BpfError> {
        self.subscribe(handle, |object, subscription, delivery| {
            object.subscribe(&map, subscription, delivery)
        })
    }

    fn subscribe_perf_event_array(
        &mut self,
        handle: Resource<BpfObject>,
        map: String,
        pages_per_cpu: u32,
    ) -> Result<u64, bpf::BpfError> {
        self.subscribe(handle, |object, subscription, delivery| {
            object.subscribe_perf(&map, pages_per_cpu, subscription, delivery)
        })
    }

    fn detach(
        &mut self,
        handle: Resource<BpfObject>,
        program: String,
    ) -> Result<(), bpf::BpfError> {
        self.bpf_allowed()?;
        self.object_mut(&handle)?.detach(&program).map_err(to_wit)
    }

    fn lookup(
        &mut self,
        handle: Resource<BpfObject>,
        map: String,
        key: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, bpf::BpfError> {
        self.object(&handle)?.lookup(&map, &key).map_err(to_wit)
    }

    fn entries(
        &mut self,
        handle: Resource<BpfObject>,
        map: String,
    ) -> Result<Vec<crate::bpf::MapEntry>, bpf::BpfError> {
        self.object(&handle)?.entries(&map).map_err(to_wit)
    }

    fn update(
        &mut self,
        handle: Resource<BpfObject>,
        map: String,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), bpf::BpfError> {
        self.object(&handle)?
            .update(&map, &key, &value)
            .map_err(to_wit)
    }

    fn delete(
        &mut self,
        handle: Resource<BpfObject>,
        map: String,
        key: Vec<u8>,
    ) -> Result<(), bpf::BpfError> {
        self.object(&handle)?.delete(&map, &key).map_err(to_wit)
    }

    fn drop(&mut self, handle: Resource<BpfObject>) -> WasmResult<()> {
        // Dropping the aya object detaches its links and closes its maps; the readers are
        // aborted by `BpfObject::drop`.
        self.table.delete(handle)?;
        self.identity
            .stats
            .bpf_objects
            .fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }
}

fn uprobe_target(target: bpf::UprobeTarget) -> crate::bpf::UprobeTarget {
    crate::bpf::UprobeTarget {
        binary: target.binary,
        symbol: target.symbol,
        offset: target.offset,
        pid: target.pid,
    }
}

/// A UDP socket with `SO_TIMESTAMPNS`: while any such socket exists the kernel timestamps
/// every received packet.
fn enable_rx_timestamps() -> Option<std::net::UdpSocket> {
    use std::os::fd::AsRawFd;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    #[allow(
        unsafe_code,
        reason = "setsockopt has no std wrapper for SO_TIMESTAMPNS"
    )]
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::warn!(err = %std::io::Error::last_os_error(), "cannot enable receive timestamps");
        return None;
    }
    Some(socket)
}
