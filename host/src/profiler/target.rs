//! From a [`Target`] to the sampler's in-kernel filter: which cgroup v2 subtree (and its
//! level), which memory cgroup subtree, or which thread group.

use std::path::Path;

use crate::containers::Registry;

use super::model::{ProfileError, Target};

/// The filter the BPF program applies (its `target_kind`, `target_id`, `target_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Host,
    /// A cgroup v2 id at `level` (the root is level 0): it and every cgroup below it.
    Cgroup {
        id: u64,
        level: u32,
    },
    /// A memory cgroup's kernfs id: it and the memory cgroups below it (v1 hybrid hosts,
    /// where a container may have no cgroup of its own in the unified hierarchy).
    Memcg {
        id: u64,
    },
    Pid(u32),
}

impl Filter {
    /// `(target_kind, target_id, target_level)` as `profile.bpf.c` numbers them.
    pub fn globals(self) -> (u32, u64, u32) {
        match self {
            Self::Host => (0, 0, 0),
            Self::Cgroup { id, level } => (1, id, level),
            Self::Memcg { id } => (2, id, 0),
            Self::Pid(pid) => (3, u64::from(pid), 0),
        }
    }
}

/// Directories walked at most when looking for a cgroup by id.
const MAX_WALK: usize = 100_000;

pub fn resolve(target: &Target, registry: &Registry) -> Result<Filter, ProfileError> {
    let unified = registry.hierarchies().unified.clone();
    match target {
        Target::Host => Ok(Filter::Host),
        Target::Pid(0) => Err(ProfileError::Invalid("pid 0 is not a process".to_owned())),
        Target::Pid(pid) => {
            if Path::new(&format!("/proc/{pid}")).exists() {
                Ok(Filter::Pid(*pid))
            } else {
                Err(ProfileError::NotFound(format!("no process {pid}")))
            }
        }
        Target::CgroupId(id) => {
            let root = unified.ok_or_else(|| {
                ProfileError::NotSupported(
                    "no cgroup v2 hierarchy is mounted: profile a container or a pid".to_owned(),
                )
            })?;
            find_level(&root, *id)
                .map(|level| Filter::Cgroup { id: *id, level })
                .ok_or_else(|| ProfileError::NotFound(format!("no cgroup v2 with id {id}")))
        }
        Target::Container(id) => {
            let container = registry
                .lookup(id)
                .ok_or_else(|| ProfileError::NotFound(format!("no container {id:?}")))?;
            if container.cgroup_id != 0
                && let Some(root) = &unified
            {
                let rel = container.cgroup_path.trim_start_matches('/');
                let dir = root.join(rel);
                if crate::containers::sys::cgroup_id(&dir) == Some(container.cgroup_id) {
                    let level = rel.split('/').filter(|c| !c.is_empty()).count();
                    return Ok(Filter::Cgroup {
                        id: container.cgroup_id,
                        level: u32::try_from(level).unwrap_or(u32::MAX),
                    });
                }
                if let Some(level) = find_level(root, container.cgroup_id) {
                    return Ok(Filter::Cgroup {
                        id: container.cgroup_id,
                        level,
                    });
                }
            }
            if container.memcg_id != 0 {
                return Ok(Filter::Memcg {
                    id: container.memcg_id,
                });
            }
            Err(ProfileError::NotSupported(format!(
                "container {id:?} has neither a cgroup v2 id nor a memory cgroup to filter on"
            )))
        }
    }
}

/// The level of the cgroup v2 directory whose inode is `id`, breadth first under `root`.
fn find_level(root: &Path, id: u64) -> Option<u32> {
    let mut queue = std::collections::VecDeque::from([(root.to_path_buf(), 0u32)]);
    let mut seen = 0usize;
    while let Some((dir, level)) = queue.pop_front() {
        if crate::containers::sys::cgroup_id(&dir) == Some(id) {
            return Some(level);
        }
        seen += 1;
        if seen > MAX_WALK {
            return None;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                queue.push_back((entry.path(), level + 1));
            }
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn globals_follow_the_bpf_numbering() {
        assert_eq!(Filter::Host.globals(), (0, 0, 0));
        assert_eq!(Filter::Cgroup { id: 7, level: 2 }.globals(), (1, 7, 2));
        assert_eq!(Filter::Memcg { id: 9 }.globals(), (2, 9, 0));
        assert_eq!(Filter::Pid(42).globals(), (3, 42, 0));
    }

    #[test]
    fn the_root_cgroup_is_level_zero_and_a_child_level_one() {
        let dir = std::env::temp_dir().join(format!("kpulse-level-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        let id = |p: &Path| crate::containers::sys::cgroup_id(p).unwrap();
        assert_eq!(find_level(&dir, id(&dir)), Some(0));
        assert_eq!(find_level(&dir, id(&dir.join("a/b"))), Some(2));
        assert_eq!(find_level(&dir, u64::MAX), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
