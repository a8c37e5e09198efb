//! `kpulse:plugin/profiler`: CPU profiles from the host's sampler ([`crate::profiler`]),
//! behind the `profile` capability and `policy.profile_allow`. Sessions live in the
//! instance's resource table: an instance that ends (stop, replacement, trap) drops them,
//! which stops their sampling.

use wasmtime::component::Resource;

use crate::profiler::{self as core, ProfileError, Session};
use crate::wit::profiler as wit;
use crate::wit::{ErrorCode, types};

use super::HostState;

type WitResult<T> = wasmtime::Result<Result<T, types::Error>>;

fn error(err: ProfileError) -> types::Error {
    let code = match &err {
        ProfileError::Busy { .. } => ErrorCode::QueueFull,
        ProfileError::Invalid(_) => ErrorCode::InvalidArgument,
        ProfileError::NotFound(_) => ErrorCode::NotFound,
        ProfileError::NotSupported(_) => ErrorCode::NotSupported,
        ProfileError::Io(_) => ErrorCode::Io,
    };
    types::Error {
        code,
        message: err.to_string(),
    }
}

fn mode(m: wit::Mode) -> core::Mode {
    match m {
        wit::Mode::OnCpu => core::Mode::OnCpu,
        wit::Mode::OffCpu => core::Mode::OffCpu,
    }
}

fn mode_to_wit(m: core::Mode) -> wit::Mode {
    match m {
        core::Mode::OnCpu => wit::Mode::OnCpu,
        core::Mode::OffCpu => wit::Mode::OffCpu,
    }
}

fn request(r: wit::Request) -> core::Request {
    core::Request {
        target: match r.target {
            wit::Target::Host => core::Target::Host,
            wit::Target::Container(id) => core::Target::Container(id),
            wit::Target::CgroupId(id) => core::Target::CgroupId(id),
            wit::Target::Pid(pid) => core::Target::Pid(pid),
        },
        mode: mode(r.mode),
        frequency_hz: r.frequency_hz,
        duration_ms: r.duration_ms,
        kernel_stacks: r.kernel_stacks,
        user_stacks: r.user_stacks,
    }
}

fn profile_to_wit(p: core::Profile) -> wit::Profile {
    wit::Profile {
        frames: p
            .frames
            .into_iter()
            .map(|f| wit::Frame {
                name: f.name,
                module: f.module,
                kind: match f.kind {
                    core::FrameKind::Kernel => wit::FrameKind::Kernel,
                    core::FrameKind::User => wit::FrameKind::User,
                },
                address: f.address,
            })
            .collect(),
        stacks: p
            .stacks
            .into_iter()
            .map(|s| wit::Stack {
                frames: s.frames,
                value: s.value,
                pid: s.pid,
                comm: s.comm,
                cgroup_id: s.cgroup_id,
                user_truncated: s.user_truncated,
            })
            .collect(),
        samples: p.samples,
        lost: p.lost,
        mode: mode_to_wit(p.mode),
        frequency_hz: p.frequency_hz,
        duration_ns: p.duration_ns,
    }
}

impl HostState {
    fn profile_allowed(&self) -> Result<(), types::Error> {
        self.require_capability(self.identity.profile, "profile", "profile")
    }
}

impl wit::Host for HostState {}

impl wit::HostSession for HostState {
    fn start(&mut self, req: wit::Request) -> WitResult<Resource<Session>> {
        if let Err(err) = self.profile_allowed() {
            return Ok(Err(err));
        }
        let session = match self.services.profiler.start(request(req)) {
            Ok(session) => session,
            Err(err) => {
                tracing::debug!(plugin = %self.identity.name, %err, "profile refused");
                return Ok(Err(error(err)));
            }
        };
        Ok(Ok(self.table.push(session)?))
    }

    fn poll(&mut self, handle: Resource<Session>) -> WitResult<Option<wit::Profile>> {
        let session = self.table.get_mut(&handle)?;
        Ok(match session.poll() {
            None => Ok(None),
            Some(Ok(profile)) => Ok(Some(profile_to_wit(profile))),
            Some(Err(err)) => Err(error(err)),
        })
    }

    fn drop(&mut self, handle: Resource<Session>) -> wasmtime::Result<()> {
        // Dropping the session stops its sampling; its thread releases the slot.
        self.table.delete(handle)?;
        Ok(())
    }
}
