//! Discovery source 1, the kernel's view: every directory of the unified (v2) and memory
//! hierarchies, with the ids BPF sees, and an inotify watch that triggers a pass as soon as
//! a cgroup is made or removed. Catches every runtime, known or not.

use std::collections::BTreeMap;
use std::path::Path;

use super::sys::{self, Hierarchies};
use super::table::CgroupDir;

/// Directories deeper than this are not walked (the kernel's default `cgroup.max.depth` is
/// unlimited; real trees are < 10 deep).
const MAX_DEPTH: usize = 32;
/// At most this many cgroups per hierarchy (a runaway tree must not exhaust memory).
pub const MAX_CGROUPS: usize = 200_000;

/// Walks both hierarchies; paths are relative to the hierarchy roots (`/kptest/c1`).
pub fn walk(hierarchies: &Hierarchies) -> BTreeMap<String, CgroupDir> {
    let mut dirs: BTreeMap<String, CgroupDir> = BTreeMap::new();
    if let Some(unified) = &hierarchies.unified {
        walk_one(unified, &mut |path, id, _| {
            dirs.entry(path).or_default().cgroup_id = id;
        });
    }
    if let Some(memory) = &hierarchies.memory {
        walk_one(memory, &mut |path, id, dir| {
            let entry = dirs.entry(path).or_default();
            entry.memcg_id = id;
            entry.pid = sys::first_pid(dir).unwrap_or(0);
        });
    }
    dirs
}

fn walk_one(root: &Path, visit: &mut dyn FnMut(String, u64, &Path)) {
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    let mut seen = 0usize;
    while let Some((dir, depth)) = stack.pop() {
        let Some(id) = sys::cgroup_id(&dir) else {
            continue; // removed while walking
        };
        let relative = dir
            .strip_prefix(root)
            .map(|p| format!("/{}", p.display()))
            .unwrap_or_else(|_| "/".to_owned());
        visit(relative, id, &dir);
        seen += 1;
        if seen >= MAX_CGROUPS || depth >= MAX_DEPTH {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
}

/// Whether an inotify event on a cgroup tree means a cgroup came or went. Writes to
/// `cgroup.events`/`memory.events` raise modify events, which are not.
pub fn is_membership_change(kind: &notify::EventKind) -> bool {
    matches!(
        kind,
        notify::EventKind::Create(_) | notify::EventKind::Remove(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_this_hosts_hierarchies_with_ids() {
        let hierarchies = Hierarchies::detect();
        let dirs = walk(&hierarchies);
        if hierarchies.unified.is_some() {
            let root = dirs.get("/").expect("the root cgroup");
            assert_ne!(root.cgroup_id, 0);
        }
        assert!(dirs.keys().all(|p| p.starts_with('/')));
    }
}
