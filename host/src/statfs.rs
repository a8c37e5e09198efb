//! Filesystem usage and the host's mount table for the `statfs` interface. WIT-free: the
//! shim in `host_api/statfs.rs` converts.
//!
//! The table is `/proc/1/mountinfo` under `policy.proc_root` (the host's init: in a
//! DaemonSet that mounts the node's `/proc` at `/host/proc` this is the node's table, like
//! node_exporter's `/proc/1/mounts`), and a mount point is `statvfs`ed through the same
//! process's `root` link (`<proc_root>/1/root/<mount point>`), so it is the filesystem that
//! table names, not whatever the agent's own namespace has there. Where that link is not
//! reachable (no ptrace access to pid 1) the agent's own `/proc/self/mountinfo` and mount
//! points are used. Only mount points of the table are answered: a guest cannot probe
//! other paths.
//!
//! `statvfs` on a dead network filesystem blocks in the kernel, where no deadline reaches
//! it. Each call runs on its own thread and is given up after [`TIMEOUT`]; the mount point
//! is then *stuck* and refused at once until that thread returns (node_exporter's
//! `stuckMounts`).

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::fsaccess::{FsAccess, FsError};

/// How long one `statvfs` may take before the mount counts as stuck.
pub const TIMEOUT: Duration = Duration::from_secs(1);
/// Most mounts returned (a host with more is unusual; the rest are dropped and logged).
pub const MAX_MOUNTS: usize = 16_384;

/// Mount points whose `statvfs` has not returned yet. Process-wide: a stuck mount is stuck
/// for every plugin.
static STUCK: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// `statvfs(3)` of one filesystem, counts in `block_size` units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    pub block_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
    pub read_only: bool,
}

/// One mountinfo line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub major_minor: String,
    pub mount_point: String,
    pub fs_type: String,
    pub options: Vec<String>,
    pub super_options: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatfsError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("i/o error: {0}")]
    Io(String),
}

impl From<FsError> for StatfsError {
    fn from(err: FsError) -> Self {
        match err {
            FsError::NotFound(path) => StatfsError::NotFound(path),
            FsError::Invalid(message) => StatfsError::Invalid(message),
            other => StatfsError::Io(other.to_string()),
        }
    }
}

/// Where the mount points of a table are reached.
enum Base {
    /// Below the host init's root link (`<proc_root>/1/root`).
    Init(PathBuf),
    /// In the agent's own mount namespace: the table is its own.
    Own,
}

/// The mount table and where its mount points are. The init's table is used when its root
/// link is reachable (not where the agent may not ptrace pid 1, e.g. in a sandbox), else
/// the agent's own; a recorded tree without either still lists the init's.
fn table(fs: &FsAccess) -> Result<(Vec<Mount>, Base), StatfsError> {
    let init_root = fs.proc_root().join("1/root");
    let init = || fs.read_host_file("/proc/1/mountinfo");
    let (bytes, base) = match std::fs::metadata(&init_root).ok().and_then(|_| init().ok()) {
        Some(bytes) => (bytes, Base::Init(init_root)),
        None => match fs.read_host_file("/proc/self/mountinfo") {
            Ok(bytes) => (bytes, Base::Own),
            Err(own) => (init().map_err(|_| own)?, Base::Init(init_root)),
        },
    };
    let (mounts, skipped) = parse_mountinfo(&String::from_utf8_lossy(&bytes));
    if skipped > 0 {
        tracing::debug!(skipped, "mountinfo lines that did not parse");
    }
    Ok((mounts, base))
}

/// The host's mount table.
pub fn mounts(fs: &FsAccess) -> Result<Vec<Mount>, StatfsError> {
    table(fs).map(|(mounts, _)| mounts)
}

/// Usage of the filesystem mounted at `mount_point`, which must be in the table.
pub fn statfs(fs: &FsAccess, mount_point: &str) -> Result<FsStats, StatfsError> {
    if !mount_point.starts_with('/')
        || mount_point.contains('\0')
        || mount_point.split('/').any(|part| part == "..")
    {
        return Err(StatfsError::Invalid(format!(
            "{mount_point:?} is not an absolute path without '..'"
        )));
    }
    let (mounts, base) = table(fs)?;
    if !mounts.iter().any(|m| m.mount_point == mount_point) {
        return Err(StatfsError::NotFound(format!(
            "{mount_point} is not a mount point of the host's mount table"
        )));
    }
    let path = match base {
        Base::Init(root) => root.join(mount_point.trim_start_matches('/')),
        Base::Own => PathBuf::from(mount_point),
    };
    stat_with_timeout(mount_point, path)
}

/// `statvfs` on a thread of its own, given up after [`TIMEOUT`].
fn stat_with_timeout(mount_point: &str, path: PathBuf) -> Result<FsStats, StatfsError> {
    {
        let mut stuck = STUCK.lock().unwrap_or_else(PoisonError::into_inner);
        if stuck.contains(mount_point) {
            return Err(StatfsError::Io(format!(
                "{mount_point}: an earlier statfs has not returned (stuck mount)"
            )));
        }
        stuck.insert(mount_point.to_owned());
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let key = mount_point.to_owned();
    let spawned = std::thread::Builder::new()
        .name("kpulse-statfs".to_owned())
        .spawn(move || {
            let result = statvfs(&path);
            STUCK
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
            let _ = tx.send(result);
        });
    if let Err(err) = spawned {
        STUCK
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(mount_point);
        return Err(StatfsError::Io(format!("{mount_point}: no thread: {err}")));
    }
    match rx.recv_timeout(TIMEOUT) {
        Ok(result) => result.map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => StatfsError::NotFound(mount_point.to_owned()),
            _ => StatfsError::Io(format!("statfs {mount_point}: {err}")),
        }),
        Err(_) => {
            tracing::warn!(mount_point, timeout = ?TIMEOUT, "statfs did not return: mount is stuck");
            Err(StatfsError::Io(format!(
                "statfs {mount_point} did not return within {TIMEOUT:?} (stuck mount)"
            )))
        }
    }
}

#[allow(unsafe_code, reason = "statvfs has no std wrapper")]
#[allow(
    clippy::useless_conversion,
    reason = "the statvfs fields are 32-bit on some targets"
)]
fn statvfs(path: &Path) -> std::io::Result<FsStats> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
    let mut buf = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is NUL-terminated and `buf` is a writable statvfs.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `buf`.
    let s = unsafe { buf.assume_init() };
    Ok(FsStats {
        // f_frsize is the unit of the block counts; f_bsize is only the preferred I/O size.
        block_size: if s.f_frsize > 0 {
            u64::from(s.f_frsize)
        } else {
            u64::from(s.f_bsize)
        },
        blocks: u64::from(s.f_blocks),
        blocks_free: u64::from(s.f_bfree),
        blocks_available: u64::from(s.f_bavail),
        files: u64::from(s.f_files),
        files_free: u64::from(s.f_ffree),
        read_only: s.f_flag & libc::ST_RDONLY != 0,
    })
}

/// Parses mountinfo; returns the mounts and the number of lines that did not parse.
pub fn parse_mountinfo(text: &str) -> (Vec<Mount>, u64) {
    let mut mounts = Vec::new();
    let mut skipped = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // id parent major:minor root mount-point options [optional...] - fstype source super
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().skip(6).position(|f| *f == "-").map(|i| i + 6) else {
            skipped += 1;
            continue;
        };
        let valid = fields.len() >= dash + 4
            && fields[0].parse::<u64>().is_ok()
            && fields[2].contains(':')
            && fields[4].starts_with('/');
        if !valid {
            skipped += 1;
            continue;
        }
        if mounts.len() == MAX_MOUNTS {
            tracing::warn!(limit = MAX_MOUNTS, "mount table truncated");
            break;
        }
        let list = |f: &str| f.split(',').map(str::to_owned).collect();
        mounts.push(Mount {
            device: unescape(fields[dash + 2]),
            major_minor: fields[2].to_owned(),
            mount_point: unescape(fields[4]),
            fs_type: unescape(fields[dash + 1]),
            options: list(fields[5]),
            super_options: list(fields[dash + 3]),
        });
    }
    (mounts, skipped)
}

/// Decodes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` `\`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match code {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PolicyConfig;

    #[test]
    fn parses_mountinfo_with_optional_fields_and_escapes() {
        let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro\n\
                    40 22 0:35 / /mnt/my\\040disk ro,nosuid - tmpfs tmp\\040fs rw,size=1024k\n\
                    garbage\n";
        let (mounts, skipped) = parse_mountinfo(text);
        assert_eq!(skipped, 1);
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].device, "/dev/sda1");
        assert_eq!(mounts[0].fs_type, "ext4");
        assert_eq!(mounts[0].super_options, ["rw", "errors=remount-ro"]);
        assert_eq!(mounts[1].mount_point, "/mnt/my disk");
        assert_eq!(mounts[1].device, "tmp fs");
        assert_eq!(mounts[1].options, ["ro", "nosuid"]);
        assert_eq!(mounts[1].major_minor, "0:35");
    }

    #[test]
    fn statfs_of_root_matches_statvfs() {
        let policy = PolicyConfig::default();
        let fs = FsAccess::open(&policy);
        let all = mounts(&fs).expect("mount table");
        assert!(all.iter().any(|m| m.mount_point == "/"));
        let got = statfs(&fs, "/").expect("statfs /");
        let direct = statvfs(Path::new("/")).expect("statvfs /");
        assert_eq!(got.block_size, direct.block_size);
        assert_eq!(got.blocks, direct.blocks);
        assert_eq!(got.files, direct.files);
    }

    #[test]
    fn only_mount_points_are_answered() {
        let policy = PolicyConfig::default();
        let fs = FsAccess::open(&policy);
        for path in ["/etc", "/proc/../etc", "relative", "/nonexistent-mount"] {
            assert!(
                matches!(
                    statfs(&fs, path),
                    Err(StatfsError::NotFound(_) | StatfsError::Invalid(_))
                ),
                "{path}"
            );
        }
    }
}
