//! CPU profiles from the host's sampler (the `profile` capability, plus the operator's
//! `policy.profile_allow`). Mirrors the host's `host_api/profiler.rs`.
//!
//! The host samples (a trusted perf-event BPF program on every CPU, filtered in the kernel
//! to the target) and symbolizes; the plugin asks, polls from a timer (guests never block)
//! and turns the result into HUATUO's `flamedata` and folded stacks with [`crate::flame`]:
//!
//! ```ignore
//! let request = profiler::Request::container(&id).duration(Duration::from_secs(10));
//! self.session = Some(profiler::Session::start(&request)?);
//! self.poll_timer = Some(ctx.every(Duration::from_millis(200))?);
//! // ... in on_timer:
//! if let Some(profile) = self.session.as_mut().map(|s| s.poll()).transpose()?.flatten() {
//!     let flame = profile.flame(512 * 1024);
//!     storage::save_autotracing("mytracer", &id, storage::now(), &json!({
//!         "flamedata": flame.flamedata, "folded": flame.folded,
//!         "profile": profile.summary(request.target()),
//!     }))?;
//! }
//! ```

use std::time::Duration;

use serde::Serialize;

use crate::bindings::kpulse::plugin::profiler as raw;
use crate::bindings::kpulse::plugin::types::ErrorCode;
use crate::error::{Error, Result};
use crate::flame::{self, Flame, FlameRow, FoldedStack};

pub use raw::{Frame, FrameKind, Mode, Profile, Stack, Target};

/// HUATUO's `perf` tool: 99 Hz ...
pub const DEFAULT_FREQUENCY_HZ: u32 = 99;
/// ... for 10 s.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

fn host_error(context: &str, err: crate::bindings::kpulse::plugin::types::Error) -> Error {
    Error::host(err.code, format!("{context}: {}", err.message))
}

/// Whether the host refused because it already runs its limit of sessions (`queue-full`):
/// try again later, e.g. at the next tick.
pub fn is_busy(err: &Error) -> bool {
    matches!(
        err,
        Error::Host {
            code: ErrorCode::QueueFull,
            ..
        }
    )
}

/// What to sample and how, with HUATUO's defaults: on-cpu at 99 Hz for 10 s, kernel and
/// user stacks.
#[derive(Debug, Clone)]
pub struct Request(raw::Request);

impl Request {
    pub fn new(target: Target) -> Self {
        Request(raw::Request {
            target,
            mode: Mode::OnCpu,
            frequency_hz: DEFAULT_FREQUENCY_HZ,
            duration_ms: u32::try_from(DEFAULT_DURATION.as_millis()).unwrap_or(u32::MAX),
            kernel_stacks: true,
            user_stacks: true,
        })
    }

    /// Every task on the host.
    pub fn host() -> Self {
        Self::new(Target::Host)
    }

    /// One workload of the container registry (its cgroup and those below it).
    pub fn container(id: &str) -> Self {
        Self::new(Target::Container(id.to_owned()))
    }

    /// A cgroup v2 id and the cgroups below it.
    pub fn cgroup_id(id: u64) -> Self {
        Self::new(Target::CgroupId(id))
    }

    /// One process, every thread (host pid namespace).
    pub fn pid(pid: u32) -> Self {
        Self::new(Target::Pid(pid))
    }

    pub fn mode(mut self, mode: Mode) -> Self {
        self.0.mode = mode;
        self
    }

    /// Samples per second on each CPU (on-cpu); 0 takes the host's default.
    pub fn frequency_hz(mut self, hz: u32) -> Self {
        self.0.frequency_hz = hz;
        self
    }

    /// How long to sample (millisecond resolution); zero takes the host's default.
    pub fn duration(mut self, duration: Duration) -> Self {
        self.0.duration_ms = u32::try_from(duration.as_millis()).unwrap_or(u32::MAX);
        self
    }

    pub fn kernel_stacks(mut self, on: bool) -> Self {
        self.0.kernel_stacks = on;
        self
    }

    pub fn user_stacks(mut self, on: bool) -> Self {
        self.0.user_stacks = on;
        self
    }

    pub fn target(&self) -> &Target {
        &self.0.target
    }

    /// The sampling time asked for.
    pub fn duration_asked(&self) -> Duration {
        Duration::from_millis(u64::from(self.0.duration_ms))
    }
}

/// One sampling session; dropping it cancels the sampling.
#[derive(Debug)]
pub struct Session(raw::Session);

impl Session {
    /// Starts sampling now. Fails with `queue-full` ([`is_busy`]) when the host runs its
    /// limit of sessions, `not-found` for an unknown container, `invalid-argument` for a
    /// duration over the host's limit, `access-denied` without capability or policy.
    pub fn start(request: &Request) -> Result<Self> {
        raw::Session::start(&request.0)
            .map(Session)
            .map_err(|e| host_error("start profile", e))
    }

    /// Never waits: `None` while sampling or symbolizing, then the profile once.
    pub fn poll(&mut self) -> Result<Option<Profile>> {
        self.0.poll().map_err(|e| host_error("profile", e))
    }
}

/// The `profile` object of a profile document: what was asked and what ran.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub samples: u64,
    pub lost: u64,
    pub frequency_hz: u32,
    pub duration_ms: u64,
    /// `on_cpu` or `off_cpu`.
    pub mode: &'static str,
    /// `{"kind":"host"}`, `{"kind":"container","value":"<id>"}`, `{"kind":"cgroup_id",
    /// "value":<id>}` or `{"kind":"pid","value":<pid>}` (the host's own rendering).
    pub target: TargetDoc,
}

/// A [`Target`] as documents carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum TargetDoc {
    Host,
    Container(String),
    CgroupId(u64),
    Pid(u32),
}

impl From<&Target> for TargetDoc {
    fn from(target: &Target) -> Self {
        match target {
            Target::Host => TargetDoc::Host,
            Target::Container(id) => TargetDoc::Container(id.clone()),
            Target::CgroupId(id) => TargetDoc::CgroupId(*id),
            Target::Pid(pid) => TargetDoc::Pid(*pid),
        }
    }
}

impl Profile {
    /// Each frame's flame label (kernel frames suffixed `_[k]`), by frame index.
    pub fn labels(&self) -> Vec<String> {
        self.frames
            .iter()
            .map(|f| flame::frame_label(&f.name, f.kind == FrameKind::Kernel))
            .collect()
    }

    /// The stacks as flame paths (root = comm) over `labels` ([`Profile::labels`]).
    pub fn folded_stacks<'a>(&'a self, labels: &'a [String]) -> Vec<FoldedStack<'a>> {
        self.stacks
            .iter()
            .map(|s| FoldedStack {
                frames: flame::stack_path(&s.comm, labels, &s.frames, s.user_truncated),
                value: s.value,
            })
            .collect()
    }

    /// Folded stacks, `comm;user...;kernel_[k] <value>` per line.
    pub fn folded(&self) -> String {
        let labels = self.labels();
        flame::folded(&self.folded_stacks(&labels))
    }

    /// HUATUO's `flamedata` (nested set under a `total` root, capped at
    /// [`flame::MAX_ROWS`]).
    pub fn flamedata(&self) -> Vec<FlameRow> {
        let labels = self.labels();
        flame::nested_set(&self.folded_stacks(&labels))
    }

    /// Both formats in at most `max_bytes` of JSON (leave the rest of the host's
    /// `storage.max_document_kib` to the document's other fields).
    pub fn flame(&self, max_bytes: usize) -> Flame {
        let labels = self.labels();
        flame::within(&self.folded_stacks(&labels), max_bytes)
    }

    /// The document's `profile` object for a profile of `target`.
    pub fn summary(&self, target: &Target) -> Summary {
        Summary {
            samples: self.samples,
            lost: self.lost,
            frequency_hz: self.frequency_hz,
            duration_ms: self.duration_ns / 1_000_000,
            mode: match self.mode {
                Mode::OnCpu => "on_cpu",
                Mode::OffCpu => "off_cpu",
            },
            target: target.into(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn frame(name: &str, kind: FrameKind) -> Frame {
        Frame {
            name: name.to_owned(),
            module: String::new(),
            kind,
            address: 0,
        }
    }

    fn stack(frames: &[u32], value: u64, comm: &str, user_truncated: bool) -> Stack {
        Stack {
            frames: frames.to_vec(),
            value,
            pid: 7,
            comm: comm.to_owned(),
            cgroup_id: 1,
            user_truncated,
        }
    }

    fn profile() -> Profile {
        Profile {
            frames: vec![
                frame("main", FrameKind::User),
                frame("burn", FrameKind::User),
                frame("asm_sysvec_apic_timer_interrupt", FrameKind::Kernel),
                frame("read", FrameKind::User),
                frame("ksys_read", FrameKind::Kernel),
            ],
            stacks: vec![
                stack(&[0, 1], 90, "burner", false),
                stack(&[0, 1, 2], 5, "burner", false),
                stack(&[3, 4], 4, "dd", true),
            ],
            samples: 100,
            lost: 1,
            mode: Mode::OnCpu,
            frequency_hz: 99,
            duration_ns: 10_000_000_123,
        }
    }

    #[test]
    fn a_profile_as_folded_and_flamedata() {
        let p = profile();
        assert_eq!(
            p.folded(),
            "burner;main;burn 90\n\
             burner;main;burn;asm_sysvec_apic_timer_interrupt_[k] 5\n\
             dd;[truncated];read;ksys_read_[k] 4\n"
        );
        let rows = p.flamedata();
        let labels: Vec<(u32, &str, u64, u64)> = rows
            .iter()
            .map(|r| (r.level, r.label.as_str(), r.value, r.self_))
            .collect();
        assert_eq!(
            labels,
            vec![
                (0, "total", 99, 0),
                (1, "burner", 95, 0),
                (2, "main", 95, 0),
                (3, "burn", 95, 90),
                (4, "asm_sysvec_apic_timer_interrupt_[k]", 5, 5),
                (1, "dd", 4, 0),
                (2, "[truncated]", 4, 0),
                (3, "read", 4, 0),
                (4, "ksys_read_[k]", 4, 4),
            ]
        );
        let flame = p.flame(1 << 20);
        assert_eq!((flame.flamedata, flame.folded), (rows, p.folded()));
    }

    #[test]
    fn summary_as_documents_carry_it() {
        let p = profile();
        let json = serde_json::to_value(p.summary(&Target::Container("abc".to_owned()))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"samples":100,"lost":1,"frequency_hz":99,"duration_ms":10000,
                "mode":"on_cpu","target":{"kind":"container","value":"abc"}})
        );
        let host = serde_json::to_value(p.summary(&Target::Host)).unwrap();
        assert_eq!(host["target"], serde_json::json!({"kind":"host"}));
    }

    #[test]
    fn request_defaults_are_huatuos() {
        let r = Request::host();
        assert_eq!(
            (
                r.0.frequency_hz,
                r.0.duration_ms,
                r.0.kernel_stacks,
                r.0.user_stacks
            ),
            (99, 10_000, true, true)
        );
        assert_eq!(r.0.mode, Mode::OnCpu);
        let r = Request::pid(3)
            .duration(Duration::from_secs(2))
            .user_stacks(false);
        assert_eq!((r.0.duration_ms, r.0.user_stacks), (2000, false));
        assert_eq!(r.duration_asked(), Duration::from_secs(2));
    }
}
