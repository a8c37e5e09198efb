//! BPF counts kept per memory cgroup, summed per container (`runqlat`, `memory_reclaim`;
//! `#[path]`-included from here).
//!
//! The kernel side keys its tables by the kernfs id of the task's memory cgroup
//! (`kp_task_memcg_id`), which the host's registry resolves to a container, nested cgroups
//! included: one host call per scrape for every key. The registry is followed with a
//! [`Tracker`]; when it cannot be read (no `containers` grant, registry off) there are no
//! container-level series, logged once.

use std::collections::BTreeMap;

use kpulse_sdk::containers::{self, Container, Key, Tracker};
use kpulse_sdk::prelude::*;

/// The running containers.
#[derive(Debug, Default)]
pub struct Containers {
    tracker: Tracker,
    /// The last refresh failed: no containers.
    unavailable: bool,
}

impl Containers {
    /// Applies what changed in the host's registry.
    pub fn refresh(&mut self) {
        match self.tracker.refresh() {
            Ok(()) => {
                if self.unavailable {
                    log::info("container registry readable again: container-level series back");
                }
                self.unavailable = false;
            }
            Err(err) => {
                if !self.unavailable {
                    log::info(&format!(
                        "no container-level series (host-level ones go on): {err}"
                    ));
                }
                self.unavailable = true;
            }
        }
    }

    /// Running containers of HUATUO's `types` (`normal`, `sidecar`, `daemonSet`).
    pub fn of_types<'a>(&'a self, types: &'a [&str]) -> impl Iterator<Item = &'a Container> {
        self.tracker
            .containers()
            .filter(move |c| !self.unavailable && types.contains(&c.container_type.as_str()))
    }

    /// Whether container-level series can be made at all.
    pub fn available(&self) -> bool {
        !self.unavailable
    }
}

/// The memory cgroup id of a BPF map key (a little-endian u64).
pub fn memcg_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(key.get(..8)?.try_into().ok()?))
}

/// A per-CPU map value of `N` u64s per CPU (each CPU's value is `N * 8` bytes), summed
/// over CPUs.
pub fn percpu_sum<const N: usize>(value: &[u8]) -> [u64; N] {
    let mut sum = [0u64; N];
    if N == 0 {
        return sum;
    }
    for cpu in value.chunks_exact(N * 8) {
        for (slot, word) in sum.iter_mut().zip(cpu.chunks_exact(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(word);
            *slot = slot.saturating_add(u64::from_le_bytes(bytes));
        }
    }
    sum
}

/// Sums per-memcg counts per container: `resolve` maps the memcg ids to container ids (in
/// order; `None` for the host's own cgroups and unknown ones, which are left out).
pub fn per_container<const N: usize>(
    counts: &[(u64, [u64; N])],
    resolve: impl FnOnce(&[Key]) -> Result<Vec<Option<String>>>,
) -> Result<BTreeMap<String, [u64; N]>> {
    let keys: Vec<Key> = counts.iter().map(|(id, _)| Key::MemcgId(*id)).collect();
    let owners = resolve(&keys)?;
    let mut out: BTreeMap<String, [u64; N]> = BTreeMap::new();
    for ((_, values), owner) in counts.iter().zip(owners) {
        let Some(owner) = owner else {
            continue;
        };
        let total = out.entry(owner).or_insert([0; N]);
        for (t, v) in total.iter_mut().zip(values) {
            *t = t.saturating_add(*v);
        }
    }
    Ok(out)
}

/// Every entry of a per-memcg BPF map of `N` u64s per CPU, summed over CPUs.
pub fn read_counts<const N: usize>(
    object: &bpf::Object,
    map: &str,
) -> Result<Vec<(u64, [u64; N])>> {
    Ok(object
        .entries(map)?
        .into_iter()
        .filter_map(|(key, value)| Some((memcg_key(&key)?, percpu_sum::<N>(&value))))
        .collect())
}

/// [`per_container`] through the host's registry.
pub fn resolve_counts<const N: usize>(
    counts: &[(u64, [u64; N])],
) -> Result<BTreeMap<String, [u64; N]>> {
    per_container(counts, containers::resolve)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn percpu_values_are_summed_per_slot() {
        // Two CPUs of four zones each.
        let value = bytes(&[1, 2, 3, 4, 10, 20, 30, 40]);
        assert_eq!(percpu_sum::<4>(&value), [11, 22, 33, 44]);
        assert_eq!(percpu_sum::<1>(&bytes(&[5, 7])), [12]);
        // A truncated CPU value is left out, not misread.
        assert_eq!(percpu_sum::<4>(&value[..40]), [1, 2, 3, 4]);
        assert_eq!(memcg_key(&bytes(&[42])), Some(42));
        assert_eq!(memcg_key(&[1, 2, 3]), None);
    }

    #[test]
    fn nested_cgroups_add_up_and_host_cgroups_are_left_out() {
        let counts = [(7, [1, 0]), (8, [2, 5]), (9, [100, 100]), (10, [3, 3])];
        let out = per_container(&counts, |keys| {
            assert_eq!(keys.len(), 4);
            Ok(vec![
                Some("web".to_owned()),
                Some("web".to_owned()), // a cgroup nested in web
                None,                   // system.slice
                Some("db".to_owned()),
            ])
        })
        .expect("resolved");
        assert_eq!(out.len(), 2);
        assert_eq!(out["web"], [3, 5]);
        assert_eq!(out["db"], [3, 3]);
        assert!(per_container(&counts, |_| Err(Error::NotSupported("x".to_owned()))).is_err());
    }
}
