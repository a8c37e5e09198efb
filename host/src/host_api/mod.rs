//! The host side of the `kpulse:plugin` imports: the per-instance [`HostState`] and one
//! file per WIT interface (`log`, `host`, `clock`, `fs`, `storage`, `bpf`, named like the
//! SDK's modules). Each file is a thin shim that converts WIT types and calls a WIT-free
//! core (`fsaccess`, `timers`, `storage`, `bpf`, ...). Every value from a guest is
//! untrusted: sizes are capped, paths checked, JSON validated, and every refusal is a typed
//! error plus a counter. A handle the host does not know traps the guest.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc::UnboundedSender;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::fsaccess::{FsAccess, FsError, ReadGrant};
use crate::hostinfo::HostInfo;
use crate::limits::MemoryLimiter;
use crate::plugins::actor::Call;
use crate::plugins::stats::PluginStats;
use crate::storage::Store;
use crate::timers::Timers;
use crate::wit::{ErrorCode, types};

mod bpf;
mod clock;
mod containers;
mod fs;
mod host;
mod link_events;
mod log;
mod net;
mod profiler;
mod statfs;
mod storage;

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
    /// The agent's registered self-metrics; each plugin's counters live there.
    pub metrics: Arc<crate::metrics::AgentMetrics>,
    /// The container registry (`containers` interface, document and metric attribution).
    pub containers: crate::containers::Registry,
    /// The CPU profiler (`profiler` interface).
    pub profiler: crate::profiler::Profiler,
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
    /// May read the container registry (`containers`).
    pub containers: bool,
    /// May start CPU profiles (`profile`, and `policy.profile_allow`).
    pub profile: bool,
    /// May read filesystem usage and the mount table (`statfs`, and `policy.statfs_allow`).
    pub statfs: bool,
    /// May query netlink through the host (`net`, and `policy.net_allow`).
    pub net: bool,
    /// Keep receive timestamps on while the instance has a BPF object (`rx-timestamps`).
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
    /// A hold on the shared timestamping socket while the instance has BPF objects (see
    /// [`crate::rxstamp`]).
    rx_timestamps: Option<Arc<std::net::UdpSocket>>,
    /// BPF objects the instance holds now.
    bpf_objects: u32,
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
    /// State for a new instance. `mailbox` is where timer firings and BPF batches are
    /// delivered; `None` for throw-away instances such as `describe` probes.
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
        let limiter = MemoryLimiter::new(memory_bytes, identity.stats.clone());
        let timers = Timers::new(mailbox, services.runtime.clone());
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter,
            stderr,
            services,
            rx_timestamps: None,
            bpf_objects: 0,
            identity,
            timers,
            next_subscription: 1,
        }
    }

    /// The check in front of every capability-gated interface (`net`, `statfs`, `profile`):
    /// `granted` is the plugin's grant (declared and allowed by `policy.<capability>_allow`).
    /// A refusal is counted with the denied reads and says what to declare.
    fn require_capability(
        &self,
        granted: bool,
        capability: &str,
        what: &str,
    ) -> Result<(), types::Error> {
        if granted {
            return Ok(());
        }
        self.identity
            .stats
            .denied_reads
            .fetch_add(1, Ordering::Relaxed);
        Err(types::Error {
            code: ErrorCode::AccessDenied,
            message: format!(
                "plugin {} may not {what}: declare the `{capability}` capability (and the \
                 operator's policy.{capability}_allow must name the plugin)",
                self.identity.name
            ),
        })
    }

    /// The last lines the guest wrote to stderr (a panic message, typically).
    pub fn stderr_tail(&self) -> String {
        let bytes = self.stderr.contents();
        let text = String::from_utf8_lossy(&bytes);
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    /// The error code for a refused read; capability refusals are counted.
    fn read_refused(&self, err: &FsError) -> ErrorCode {
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

impl types::Host for HostState {}
