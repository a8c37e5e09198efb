//! The profiler's WIT-free types: what a caller asks for and what a session returns. The
//! `profiler` WIT interface (`host_api/profiler.rs`), the tasks API (`http/tasks.rs`) and the
//! renderers (`render.rs`) all speak these.

use serde::Serialize;

/// Host defaults and limits (`[profiler]` in the config).
pub const DEFAULT_FREQUENCY_HZ: u32 = 99;
pub const DEFAULT_DURATION_MS: u32 = 10_000;

/// What to sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Target {
    /// Every task on the host.
    Host,
    /// A workload of the container registry, by id.
    Container(String),
    /// A cgroup v2 id and the cgroups below it.
    CgroupId(u64),
    /// One process (all its threads).
    Pid(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    OnCpu,
    OffCpu,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    pub target: Target,
    pub mode: Mode,
    /// 0: [`DEFAULT_FREQUENCY_HZ`].
    pub frequency_hz: u32,
    /// 0: [`DEFAULT_DURATION_MS`].
    pub duration_ms: u32,
    pub kernel_stacks: bool,
    pub user_stacks: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    Kernel,
    User,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    pub name: String,
    pub module: String,
    pub kind: FrameKind,
    pub address: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stack {
    /// Indexes into [`Profile::frames`], outermost caller first, leaf last (user, then kernel).
    pub frames: Vec<u32>,
    /// Samples (on-cpu) or blocked ns (off-cpu).
    pub value: u64,
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub user_truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    pub frames: Vec<Frame>,
    pub stacks: Vec<Stack>,
    pub samples: u64,
    pub lost: u64,
    pub mode: Mode,
    pub frequency_hz: u32,
    pub duration_ns: u64,
}

/// Why a session could not start or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// The host already runs its limit of sessions.
    #[error("profiler busy: {running} of {limit} sessions running")]
    Busy { running: usize, limit: usize },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotSupported(String),
    #[error("{0}")]
    Io(String),
}
