//! Capability-checked, read-only access to `/proc`, `/sys` and the cgroup filesystem.
//!
//! Guests always name `/proc/...`, `/sys/...` and `/sys/fs/cgroup/...`; the host finds them
//! under `policy.proc_root`, `policy.sys_root` and `policy.cgroup_root` (`/host/proc` in a
//! DaemonSet, a recorded tree in fixture tests). Each root is opened once with ambient
//! authority; every plugin request is then resolved inside it through cap-std (`openat2`
//! with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`), so no path, symlink or magic link can
//! leave the root. On top of that the guest's path must lie below a prefix the plugin
//! declared *and* the operator allows, and never touch a secret: every rule applies to the
//! path the guest names, whatever root it maps to.

use std::io::Read;
use std::path::Path;

use cap_std::ambient_authority;
use cap_std::fs::Dir;

use crate::config::PolicyConfig;

/// Largest file a plugin may read in one call.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Where guests see the cgroup filesystem, whatever `policy.cgroup_root` is.
pub const CGROUP_PREFIX: &str = "/sys/fs/cgroup";
/// Largest directory listing returned in one call.
pub const MAX_DIR_ENTRIES: usize = 65_536;

/// Why a read was refused or failed. Mirrors the WIT `error-code` cases it maps to.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FsError {
    #[error("access denied: {0}")]
    Denied(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid path: {0}")]
    Invalid(String),
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("i/o error on {path}: {message}")]
    Io { path: String, message: String },
}

/// Kinds of directory entries reported to plugins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
    Other,
}

/// The roots plugins can read from, opened once at start-up.
#[derive(Debug)]
pub struct FsAccess {
    /// `(guest prefix, directory)`, longest prefix first.
    roots: Vec<(String, Dir)>,
    /// The host directory behind `/proc` (for `statfs`, which resolves paths itself).
    proc_root: std::path::PathBuf,
    allow: Vec<String>,
    deny: Vec<String>,
}

/// What one plugin may read: the declared prefixes that the policy also allows.
#[derive(Debug, Clone, Default)]
pub struct ReadGrant {
    prefixes: Vec<String>,
}

impl ReadGrant {
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    /// Whether a declared prefix (in any spelling) was granted.
    pub fn covers(&self, declared: &str) -> bool {
        normalize(declared).is_ok_and(|p| self.prefixes.contains(&p))
    }
}

impl FsAccess {
    /// Opens the roots behind `/proc`, `/sys` and `/sys/fs/cgroup`. A root that cannot be
    /// opened is skipped (reads below it then fail with `not-found`, or fall through to
    /// `/sys` for the cgroup root), so the agent still runs in odd sandboxes.
    pub fn open(policy: &PolicyConfig) -> Self {
        let mut roots = Vec::new();
        let cgroup = policy.cgroup_root();
        let mapping = [
            (CGROUP_PREFIX, cgroup.as_path()),
            ("/proc", policy.proc_root.as_path()),
            ("/sys", policy.sys_root.as_path()),
        ];
        for (prefix, root) in mapping {
            match Dir::open_ambient_dir(root, ambient_authority()) {
                Ok(dir) => roots.push((prefix.to_owned(), dir)),
                Err(err) => tracing::warn!(
                    guest = prefix,
                    root = %root.display(),
                    %err,
                    "cannot open filesystem root"
                ),
            }
        }
        roots.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Self {
            roots,
            proc_root: policy.proc_root.clone(),
            allow: policy.allow_read.clone(),
            deny: policy.deny_read.clone(),
        }
    }

    /// The host directory behind the guests' `/proc`.
    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    /// Reads a file for the host itself (the `statfs` interface's mount table), through the
    /// same roots but without a plugin's grant: the caller picks the path, not a guest.
    pub fn read_host_file(&self, path: &str) -> Result<Vec<u8>, FsError> {
        let path = normalize(path)?;
        let (dir, rel) = self.locate(&path)?;
        let mut file = dir.open(&rel).map_err(|err| io_error(&path, &err))?;
        let mut bytes = Vec::new();
        (&mut file)
            .take(MAX_FILE_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|err| io_error(&path, &err))?;
        Ok(bytes)
    }

    /// Intersects what a plugin declared (`read:<prefix>`) with the policy.
    pub fn grant(&self, declared: &[String]) -> ReadGrant {
        let prefixes = declared
            .iter()
            .filter_map(|prefix| normalize(prefix).ok())
            .filter(|prefix| self.allow.iter().any(|allowed| is_below(prefix, allowed)))
            .collect();
        ReadGrant { prefixes }
    }

    /// Reads a whole file, at most [`MAX_FILE_BYTES`].
    pub fn read_file(&self, grant: &ReadGrant, path: &str) -> Result<Vec<u8>, FsError> {
        let (dir, rel, path) = self.resolve(grant, path)?;
        let file = dir.open(&rel).map_err(|err| io_error(&path, &err))?;
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|err| io_error(&path, &err))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(FsError::TooLarge(format!(
                "{path} is larger than {MAX_FILE_BYTES} bytes"
            )));
        }
        Ok(bytes)
    }

    /// Lists a directory, at most [`MAX_DIR_ENTRIES`] entries.
    pub fn read_dir(
        &self,
        grant: &ReadGrant,
        path: &str,
    ) -> Result<Vec<(String, EntryKind)>, FsError> {
        let (dir, rel, path) = self.resolve(grant, path)?;
        let entries = if rel.is_empty() {
            dir.entries()
        } else {
            dir.read_dir(&rel)
        }
        .map_err(|err| io_error(&path, &err))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|err| io_error(&path, &err))?;
            if out.len() == MAX_DIR_ENTRIES {
                return Err(FsError::TooLarge(format!(
                    "{path} has more than {MAX_DIR_ENTRIES} entries"
                )));
            }
            let kind = match entry.file_type() {
                Ok(t) if t.is_symlink() => EntryKind::Symlink,
                Ok(t) if t.is_dir() => EntryKind::Directory,
                Ok(t) if t.is_file() => EntryKind::File,
                _ => EntryKind::Other,
            };
            out.push((entry.file_name().to_string_lossy().into_owned(), kind));
        }
        Ok(out)
    }

    /// Reads a symlink's target. Links that name files of a process are denied.
    pub fn read_link(&self, grant: &ReadGrant, path: &str) -> Result<String, FsError> {
        let (dir, rel, path) = self.resolve(grant, path)?;
        if path.starts_with("/proc/") && is_process_file_link(&path) {
            return Err(FsError::Denied(format!(
                "{path}: links to a process's files are never readable"
            )));
        }
        let target = dir
            .read_link_contents(&rel)
            .map_err(|err| io_error(&path, &err))?;
        Ok(target.to_string_lossy().into_owned())
    }

    /// Opens a directory the plugin may read, for a host query that takes a descriptor
    /// (taskstats `CGROUPSTATS` of a cgroup directory, `net` interface).
    pub fn open_dir(&self, grant: &ReadGrant, path: &str) -> Result<std::fs::File, FsError> {
        use cap_std::fs::OpenOptionsExt;
        let (dir, rel, path) = self.resolve(grant, path)?;
        let rel = if rel.is_empty() { "." } else { rel.as_str() };
        // A readable descriptor: the kernel ignores an `O_PATH` one (what `open_dir` gives).
        let mut options = cap_std::fs::OpenOptions::new();
        options.read(true).custom_flags(libc::O_DIRECTORY);
        let opened = dir
            .open_with(rel, &options)
            .map_err(|err| io_error(&path, &err))?;
        Ok(opened.into_std())
    }

    /// Checks a path and maps it to a root and a path relative to it.
    fn resolve(&self, grant: &ReadGrant, raw: &str) -> Result<(&Dir, String, String), FsError> {
        let path = normalize(raw)?;
        let declared = grant.prefixes.iter().any(|prefix| is_below(&path, prefix));
        if !declared {
            return Err(FsError::Denied(format!(
                "{path} is not below a prefix this plugin declared and the policy allows"
            )));
        }
        if self.deny.iter().any(|denied| is_below(&path, denied)) {
            return Err(FsError::Denied(format!(
                "{path} is denied by policy.deny_read"
            )));
        }
        if let Some(secret) = secret_of(&path) {
            // A secret is readable only when the operator allowed exactly it (or below it)
            // and the plugin declared it: `allow_read = ["/proc/kallsyms"]`.
            let explicit = self.allow.iter().any(|allowed| is_below(allowed, &secret))
                && grant
                    .prefixes
                    .iter()
                    .any(|prefix| is_below(prefix, &secret));
            if !explicit {
                return Err(FsError::Denied(format!("{path} is a secret ({secret})")));
            }
        }
        let (dir, rel) = self.locate(&path)?;
        Ok((dir, rel, path))
    }

    /// The root a normalized guest path lies in, and the path relative to it.
    fn locate(&self, path: &str) -> Result<(&Dir, String), FsError> {
        for (prefix, dir) in &self.roots {
            if is_below(path, prefix) {
                let rel = path[prefix.len()..].trim_start_matches('/').to_owned();
                return Ok((dir, rel));
            }
        }
        Err(FsError::Denied(format!(
            "{path} is outside /proc, /sys and the cgroup root"
        )))
    }
}

/// Makes a path canonical: absolute, no `.`/empty components, no `..`, no NUL.
fn normalize(raw: &str) -> Result<String, FsError> {
    if !raw.starts_with('/') {
        return Err(FsError::Invalid(format!("{raw:?} is not absolute")));
    }
    if raw.contains('\0') {
        return Err(FsError::Invalid(format!("{raw:?} contains NUL")));
    }
    let mut out = String::with_capacity(raw.len());
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(FsError::Invalid(format!("{raw:?} contains '..'"))),
            part => {
                out.push('/');
                out.push_str(part);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Whether `path` is `prefix` or below it, component-wise.
fn is_below(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// Files of a process that expose its memory, environment, or other filesystem views.
const PROCESS_SECRETS: &[&str] = &[
    "environ",
    "mem",
    "root",
    "cwd",
    "fd",
    "fdinfo",
    "map_files",
    "pagemap",
    "auxv",
    "exe",
];
/// Host-wide secrets under `/proc` and `/sys`.
const HOST_SECRETS: &[&str] = &[
    "/proc/kcore",
    "/proc/kallsyms",
    "/proc/kmsg",
    "/proc/kpagecount",
    "/proc/kpageflags",
    "/proc/kpagecgroup",
    "/proc/sysrq-trigger",
    "/sys/kernel/security",
    "/sys/firmware",
    "/sys/kernel/debug",
];

/// The secret a path touches, if any, as the prefix that names it.
fn secret_of(path: &str) -> Option<String> {
    if let Some(secret) = HOST_SECRETS.iter().find(|secret| is_below(path, secret)) {
        return Some((*secret).to_owned());
    }
    let parts: Vec<&str> = path.strip_prefix("/proc/")?.split('/').collect();
    // /proc/<pid>/<file>...
    if parts.len() >= 2 && is_process_dir(parts[0]) && PROCESS_SECRETS.contains(&parts[1]) {
        return Some(format!("/proc/{}/{}", parts[0], parts[1]));
    }
    // /proc/<pid>/task/<tid>/<file>...
    if parts.len() >= 4
        && is_process_dir(parts[0])
        && parts[1] == "task"
        && is_process_dir(parts[2])
        && PROCESS_SECRETS.contains(&parts[3])
    {
        return Some(format!("/proc/{}/task/{}/{}", parts[0], parts[2], parts[3]));
    }
    None
}

fn is_process_dir(name: &str) -> bool {
    name == "self" || name == "thread-self" || name.bytes().all(|b| b.is_ascii_digit())
}

/// `/proc/<pid>/{exe,cwd,root}` and `/proc/<pid>/fd/<n>` link to files, not to namespaces.
fn is_process_file_link(path: &str) -> bool {
    let name = Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    matches!(name.as_str(), "exe" | "cwd" | "root")
        || path.contains("/fd/")
        || path.contains("/map_files/")
}

fn io_error(path: &str, err: &std::io::Error) -> FsError {
    match err.kind() {
        std::io::ErrorKind::NotFound => FsError::NotFound(path.to_owned()),
        std::io::ErrorKind::PermissionDenied => FsError::Denied(format!("{path}: {err}")),
        _ => match err.raw_os_error() {
            // ESRCH: the process went away between listing and reading.
            Some(libc::ESRCH) => FsError::NotFound(path.to_owned()),
            // EXDEV/ELOOP: cap-std refused a path that would leave the root.
            Some(libc::EXDEV | libc::ELOOP) => {
                FsError::Denied(format!("{path}: resolution leaves the root"))
            }
            _ => FsError::Io {
                path: path.to_owned(),
                message: err.to_string(),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> FsAccess {
        FsAccess::open(&PolicyConfig::default())
    }

    #[test]
    fn reads_declared_file() {
        let fs = access();
        let grant = fs.grant(&["/proc/loadavg".to_owned()]);
        let bytes = fs
            .read_file(&grant, "/proc/loadavg")
            .expect("loadavg is readable");
        assert!(!bytes.is_empty());
    }

    #[test]
    fn undeclared_path_is_denied() {
        let fs = access();
        let grant = fs.grant(&["/proc/loadavg".to_owned()]);
        assert!(matches!(
            fs.read_file(&grant, "/proc/meminfo"),
            Err(FsError::Denied(_))
        ));
        // A prefix match must be component-wise.
        assert!(matches!(
            fs.read_file(&grant, "/proc/loadavgx"),
            Err(FsError::Denied(_))
        ));
    }

    #[test]
    fn dotdot_and_relative_are_invalid() {
        let fs = access();
        let grant = fs.grant(&["/proc".to_owned()]);
        assert!(matches!(
            fs.read_file(&grant, "/proc/../etc/passwd"),
            Err(FsError::Invalid(_))
        ));
        assert!(matches!(
            fs.read_file(&grant, "proc/loadavg"),
            Err(FsError::Invalid(_))
        ));
    }

    #[test]
    fn secrets_are_denied_even_when_declared() {
        let fs = access();
        let grant = fs.grant(&["/proc".to_owned(), "/sys".to_owned()]);
        for path in [
            "/proc/self/environ",
            "/proc/1/mem",
            "/proc/self/root/etc/passwd",
            "/proc/1/task/1/environ",
            "/proc/self/cwd",
            "/proc/kcore",
            "/proc/kallsyms",
        ] {
            assert!(
                matches!(fs.read_file(&grant, path), Err(FsError::Denied(_))),
                "{path}"
            );
        }
        assert!(matches!(
            fs.read_link(&grant, "/proc/self/exe"),
            Err(FsError::Denied(_))
        ));
    }

    #[test]
    fn namespace_links_and_dirs_are_readable() {
        let fs = access();
        let grant = fs.grant(&["/proc".to_owned()]);
        let target = fs.read_link(&grant, "/proc/self/ns/net").expect("ns link");
        assert!(target.starts_with("net:["), "{target}");
        let entries = fs.read_dir(&grant, "/proc").expect("list /proc");
        assert!(entries.iter().any(|(name, _)| name == "self"));
        assert!(fs.read_file(&grant, "/proc/self/stat").is_ok());
    }

    /// The recorded node of `tests/fixtures/roots/node1` as `/proc` and `/sys`.
    fn fixture() -> FsAccess {
        let node = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/roots/node1");
        FsAccess::open(&PolicyConfig {
            proc_root: node.join("proc"),
            sys_root: node.join("sys"),
            ..PolicyConfig::default()
        })
    }

    #[test]
    fn remapped_roots_serve_guest_paths() {
        let fs = fixture();
        let grant = fs.grant(&["/proc".to_owned(), "/sys".to_owned()]);
        let load = fs
            .read_file(&grant, "/proc/loadavg")
            .expect("fixture loadavg");
        assert_eq!(load, b"0.42 0.37 0.30 2/181 4242\n");
        let xfs = fs.read_dir(&grant, "/sys/fs/xfs").expect("fixture xfs");
        let mut names: Vec<String> = xfs.into_iter().map(|(name, _)| name).collect();
        names.sort();
        assert_eq!(names, ["dm-3", "sdb1", "stats"]);
        // A link inside the tree resolves inside it.
        assert_eq!(
            fs.read_file(&grant, "/proc/inside").expect("inner link"),
            load
        );
    }

    #[test]
    fn remapped_roots_keep_the_sandbox() {
        let fs = fixture();
        let grant = fs.grant(&["/proc".to_owned(), "/sys".to_owned()]);
        // Symlinks that leave the recorded tree, absolute or by `..`.
        for path in ["/proc/escape-abs/passwd", "/proc/escape-rel/passwd"] {
            assert!(
                matches!(fs.read_file(&grant, path), Err(FsError::Denied(_))),
                "{path}: {:?}",
                fs.read_file(&grant, path)
            );
        }
        assert!(matches!(
            fs.read_file(&grant, "/proc/../../../etc/passwd"),
            Err(FsError::Invalid(_))
        ));
        // Secrets are secrets by the guest's path, whatever root it maps to.
        for path in ["/proc/kallsyms", "/proc/1/environ"] {
            assert!(
                matches!(fs.read_file(&grant, path), Err(FsError::Denied(_))),
                "{path}"
            );
        }
        // The host's own reads stay below the root too.
        assert!(fs.read_host_file("/proc/escape-abs/passwd").is_err());
        assert!(fs.read_host_file("/proc/1/mountinfo").is_ok());
    }

    #[test]
    fn policy_limits_declarations() {
        let fs = FsAccess::open(&PolicyConfig {
            allow_read: vec!["/proc/loadavg".to_owned()],
            ..PolicyConfig::default()
        });
        let grant = fs.grant(&["/proc".to_owned(), "/proc/loadavg".to_owned()]);
        assert_eq!(grant.prefixes(), ["/proc/loadavg".to_owned()]);
    }
}
