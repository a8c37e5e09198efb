//! The map layouts of `iolatency.bpf.c` and what the plugin makes of them: HUATUO's latency
//! zones, `maj:min` disk names, cgroup paths and their containers. The layouts are pinned
//! by `_Static_assert`s in the C file; a value of another size is skipped, not misread.

/// HUATUO's zones: 0: 20–30, 1: 30–50, 2: 50–100, 3: 100–200, 4: 200–400, 5: >400 ms.
pub const ZONES: usize = 6;
/// Upper bounds (exclusive) of zones 0..=4, in ms; zone 5 has none.
const BOUNDS_MS: [u64; ZONES - 1] = [30, 50, 100, 200, 400];
/// Nothing under 20 ms is counted (HUATUO).
const MIN_MS: u64 = 20;
/// `MINORBITS` of the kernel's `dev_t`.
const MINOR_BITS: u32 = 20;
/// `IOL_PATH_DEPTH` and `IOL_NAME_LEN`.
const PATH_DEPTH: usize = 8;
const NAME_LEN: usize = 128;

/// The zone of a latency, as `iol_zone()` in the BPF program counts it; `None` under 20 ms.
/// The specification the unit tests pin; the kernel does the counting.
#[cfg(test)]
pub fn zone(ns: u64) -> Option<usize> {
    let ms = ns / 1_000_000;
    if ms < MIN_MS {
        return None;
    }
    Some(
        BOUNDS_MS
            .iter()
            .position(|&bound| ms < bound)
            .unwrap_or(ZONES - 1),
    )
}

/// `0: 20-30, 1: 30-50, ..., 5: >400 ms`, for help texts.
pub fn describe() -> String {
    let mut lower = MIN_MS;
    let mut parts = Vec::with_capacity(ZONES);
    for (zone, upper) in BOUNDS_MS.iter().enumerate() {
        parts.push(format!("{zone}: {lower}-{upper}"));
        lower = *upper;
    }
    parts.push(format!("{}: >{lower} ms", ZONES - 1));
    parts.join(", ")
}

/// `struct iol_zones`: requests per zone, q2c then d2c.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Zones {
    pub q2c: [u64; ZONES],
    pub d2c: [u64; ZONES],
}

impl Zones {
    pub fn parse(value: &[u8]) -> Option<Zones> {
        if value.len() != 2 * ZONES * 8 {
            return None;
        }
        let mut words = value.chunks_exact(8).map(le_u64);
        let mut zones = Zones::default();
        for slot in zones.q2c.iter_mut().chain(zones.d2c.iter_mut()) {
            *slot = words.next()?;
        }
        Some(zones)
    }

    /// Adds another entry's counts (several cgroups of one container).
    pub fn add(&mut self, other: &Zones) {
        for (a, b) in self.q2c.iter_mut().zip(other.q2c) {
            *a = a.saturating_add(b);
        }
        for (a, b) in self.d2c.iter_mut().zip(other.d2c) {
            *a = a.saturating_add(b);
        }
    }
}

/// `struct iol_cg_key`: a blkio cgroup (kernfs id) and a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CgKey {
    pub blkcg_id: u64,
    pub dev: u32,
}

impl CgKey {
    pub fn parse(key: &[u8]) -> Option<CgKey> {
        if key.len() != 16 {
            return None;
        }
        Some(CgKey {
            blkcg_id: le_u64(&key[..8]),
            dev: le_u32(&key[8..12])?,
        })
    }
}

/// A disk key of `blkdisk_zones` / `blkdisk_freeze` (a kernel `dev_t`).
pub fn parse_dev(key: &[u8]) -> Option<u32> {
    if key.len() != 4 {
        return None;
    }
    le_u32(key)
}

/// A u64 key or value: the id key of `blkcg_paths`, a count of `blkdisk_freeze`.
pub fn parse_id(key: &[u8]) -> Option<u64> {
    (key.len() == 8).then(|| le_u64(key))
}

/// HUATUO's `disk` label: `major:minor` of a kernel `dev_t`.
pub fn disk_label(dev: u32) -> String {
    format!("{}:{}", dev >> MINOR_BITS, dev & ((1 << MINOR_BITS) - 1))
}

/// `struct iol_path` as a path relative to the hierarchy root (`/kptest/c1`), or `None` when
/// the kernel stopped before the root (deeper than 8) or the value has another size.
pub fn parse_path(value: &[u8]) -> Option<String> {
    if value.len() != 8 + PATH_DEPTH * NAME_LEN {
        return None;
    }
    let depth = le_u32(&value[..4])? as usize;
    let complete = le_u32(&value[4..8])? == 1;
    if !complete || depth == 0 || depth > PATH_DEPTH {
        return None;
    }
    let names: Vec<&[u8]> = value[8..].chunks_exact(NAME_LEN).take(depth).collect();
    let mut path = String::new();
    for name in names.iter().rev() {
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        if end == 0 {
            return None; // unreadable name
        }
        path.push('/');
        path.push_str(&String::from_utf8_lossy(&name[..end]));
    }
    Some(path)
}

/// The container owning cgroup `path`: the one whose cgroup path is `path` or its longest
/// ancestor (a container's nested cgroups are the container's). `containers` holds
/// `(cgroup path, id)`; the root (`/` or empty) owns nothing.
pub fn owner<'a>(path: &str, containers: &'a [(String, String)]) -> Option<&'a str> {
    containers
        .iter()
        .filter(|(dir, _)| {
            let dir = dir.trim_end_matches('/');
            !dir.is_empty()
                && path
                    .strip_prefix(dir)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .max_by_key(|(dir, _)| dir.len())
        .map(|(_, id)| id.as_str())
}

fn le_u64(b: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&b[..8]);
    u64::from_le_bytes(word)
}

fn le_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn zones_follow_huatuo_bounds() {
        assert_eq!(zone(0), None);
        assert_eq!(zone(19 * MS + 999_999), None);
        assert_eq!(zone(20 * MS), Some(0));
        assert_eq!(zone(29 * MS + 999_999), Some(0));
        assert_eq!(zone(30 * MS), Some(1));
        assert_eq!(zone(49 * MS), Some(1));
        assert_eq!(zone(50 * MS), Some(2));
        assert_eq!(zone(99 * MS), Some(2));
        assert_eq!(zone(100 * MS), Some(3));
        assert_eq!(zone(199 * MS), Some(3));
        assert_eq!(zone(200 * MS), Some(4));
        assert_eq!(zone(250 * MS), Some(4));
        assert_eq!(zone(399 * MS), Some(4));
        assert_eq!(zone(400 * MS), Some(5));
        assert_eq!(zone(u64::MAX), Some(5));
    }

    #[test]
    fn zones_are_described_for_help() {
        assert_eq!(
            describe(),
            "0: 20-30, 1: 30-50, 2: 50-100, 3: 100-200, 4: 200-400, 5: >400 ms"
        );
    }

    #[test]
    fn zone_values_and_keys_decode() {
        let words: Vec<u64> = (1..=12).collect();
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let z = Zones::parse(&bytes).expect("96 bytes");
        assert_eq!(z.q2c, [1, 2, 3, 4, 5, 6]);
        assert_eq!(z.d2c, [7, 8, 9, 10, 11, 12]);
        assert_eq!(Zones::parse(&bytes[..88]), None);
        let mut sum = z;
        sum.add(&z);
        assert_eq!(sum.d2c[5], 24);

        let mut key = 4242u64.to_le_bytes().to_vec();
        key.extend_from_slice(&((7u32 << 20) | 3).to_le_bytes());
        key.extend_from_slice(&[0; 4]);
        let k = CgKey::parse(&key).expect("16 bytes");
        assert_eq!((k.blkcg_id, disk_label(k.dev)), (4242, "7:3".to_owned()));
        assert_eq!(CgKey::parse(&key[..12]), None);
        assert_eq!(
            parse_dev(&((259u32 << 20) | 1).to_le_bytes()),
            Some(259 << 20 | 1)
        );
        assert_eq!(disk_label((259 << 20) | 1), "259:1");
        assert_eq!(parse_dev(&[1, 2]), None);
    }

    fn path_value(names: &[&str], complete: bool) -> Vec<u8> {
        let mut v = vec![0u8; 8 + PATH_DEPTH * NAME_LEN];
        v[..4].copy_from_slice(&(names.len() as u32).to_le_bytes());
        v[4..8].copy_from_slice(&u32::from(complete).to_le_bytes());
        for (i, name) in names.iter().enumerate() {
            let at = 8 + i * NAME_LEN;
            v[at..at + name.len()].copy_from_slice(name.as_bytes());
        }
        v
    }

    #[test]
    fn paths_are_leaf_first_and_must_reach_the_root() {
        let v = path_value(&["c1", "kptest"], true);
        assert_eq!(parse_path(&v).as_deref(), Some("/kptest/c1"));
        assert_eq!(parse_path(&path_value(&["c1", "kptest"], false)), None);
        assert_eq!(parse_path(&path_value(&[], true)), None);
        assert_eq!(parse_path(&path_value(&["c1", ""], true)), None);
        assert_eq!(parse_path(&v[..100]), None);
    }

    #[test]
    fn owner_is_the_longest_cgroup_ancestor() {
        let containers = vec![
            ("/kubepods/pod1".to_owned(), "sandbox".to_owned()),
            ("/kubepods/pod1/app".to_owned(), "app".to_owned()),
            ("/kptest/c1".to_owned(), "c1".to_owned()),
            ("/".to_owned(), "root".to_owned()),
        ];
        assert_eq!(owner("/kptest/c1", &containers), Some("c1"));
        assert_eq!(owner("/kptest/c1/sub", &containers), Some("c1"));
        assert_eq!(owner("/kptest/c10", &containers), None);
        assert_eq!(owner("/kubepods/pod1/app", &containers), Some("app"));
        assert_eq!(owner("/kubepods/pod1/other", &containers), Some("sandbox"));
        assert_eq!(owner("/system.slice/x.service", &containers), None);
    }
}
