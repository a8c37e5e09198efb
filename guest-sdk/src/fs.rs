//! Read-only access to `/proc`, `/sys` and the cgroup filesystem, limited to the `read:`
//! prefixes the plugin declared. Errors name the path.

use crate::bindings::kpulse::plugin::fs as raw;
use crate::error::{Error, Result};

pub use raw::EntryKind;

/// One directory entry.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: String,
    pub kind: EntryKind,
}

/// Reads a whole file (at most 4 MiB).
pub fn read(path: &str) -> Result<Vec<u8>> {
    raw::read_file(path).map_err(|code| Error::host(code, format!("read {path}")))
}

/// Reads a whole file as UTF-8 (invalid bytes are replaced).
pub fn read_to_string(path: &str) -> Result<String> {
    read(path).map(|bytes| match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    })
}

/// Lists a directory.
pub fn read_dir(path: &str) -> Result<Vec<DirEntry>> {
    raw::read_dir(path)
        .map(|entries| {
            entries
                .into_iter()
                .map(|e| DirEntry {
                    name: e.name,
                    kind: e.kind,
                })
                .collect()
        })
        .map_err(|code| Error::host(code, format!("list {path}")))
}

/// Reads a symlink's target (e.g. `/proc/<pid>/ns/net`).
pub fn read_link(path: &str) -> Result<String> {
    raw::read_link(path).map_err(|code| Error::host(code, format!("readlink {path}")))
}
