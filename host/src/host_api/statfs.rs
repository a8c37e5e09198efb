//! `kpulse:plugin/statfs`: filesystem usage and the host's mount table through
//! [`crate::statfs`], behind the `statfs` capability and `policy.statfs_allow`.

use crate::statfs::{self as core, StatfsError};
use crate::wit::statfs as wit;
use crate::wit::{ErrorCode, types};

use super::HostState;

type WitResult<T> = wasmtime::Result<Result<T, types::Error>>;

fn error(err: StatfsError) -> types::Error {
    let code = match &err {
        StatfsError::NotFound(_) => ErrorCode::NotFound,
        StatfsError::Invalid(_) => ErrorCode::InvalidArgument,
        StatfsError::Io(_) => ErrorCode::Io,
    };
    types::Error {
        code,
        message: err.to_string(),
    }
}

impl HostState {
    fn statfs_allowed(&self) -> Result<(), types::Error> {
        self.require_capability(self.identity.statfs, "statfs", "use statfs")
    }
}

impl wit::Host for HostState {
    fn statfs(&mut self, mount_point: String) -> WitResult<wit::FsStats> {
        if let Err(err) = self.statfs_allowed() {
            return Ok(Err(err));
        }
        Ok(core::statfs(&self.services.fs, &mount_point)
            .map(|s| wit::FsStats {
                block_size: s.block_size,
                blocks: s.blocks,
                blocks_free: s.blocks_free,
                blocks_available: s.blocks_available,
                files: s.files,
                files_free: s.files_free,
                read_only: s.read_only,
            })
            .map_err(error))
    }

    fn mounts(&mut self) -> WitResult<Vec<wit::Mount>> {
        if let Err(err) = self.statfs_allowed() {
            return Ok(Err(err));
        }
        Ok(core::mounts(&self.services.fs)
            .map(|mounts| {
                mounts
                    .into_iter()
                    .map(|m| wit::Mount {
                        device: m.device,
                        major_minor: m.major_minor,
                        mount_point: m.mount_point,
                        fs_type: m.fs_type,
                        options: m.options,
                        super_options: m.super_options,
                    })
                    .collect()
            })
            .map_err(error))
    }
}
