//! `kpulse:plugin/fs`: reads of /proc, /sys and cgroupfs through [`crate::fsaccess`].

use crate::fsaccess::EntryKind;
use crate::wit::{ErrorCode, fs};

use super::HostState;

impl fs::Host for HostState {
    fn read_file(&mut self, path: String) -> wasmtime::Result<Result<Vec<u8>, ErrorCode>> {
        Ok(self
            .services
            .fs
            .read_file(&self.identity.grant, &path)
            .map_err(|err| self.read_refused(&err)))
    }

    fn read_dir(&mut self, path: String) -> wasmtime::Result<Result<Vec<fs::DirEntry>, ErrorCode>> {
        let entries = match self.services.fs.read_dir(&self.identity.grant, &path) {
            Ok(entries) => entries,
            Err(err) => return Ok(Err(self.read_refused(&err))),
        };
        Ok(Ok(entries
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
            .collect()))
    }

    fn read_link(&mut self, path: String) -> wasmtime::Result<Result<String, ErrorCode>> {
        Ok(self
            .services
            .fs
            .read_link(&self.identity.grant, &path)
            .map_err(|err| self.read_refused(&err)))
    }
}
