//! One sampling window on the kernel: load the built-in `profile.bpf.o` with the session's
//! filter, attach it (cpu-clock perf events on every online CPU, or `sched_switch`), wait out
//! the window, detach, and read the counts and stacks back. Runs on the session's own
//! thread; nothing here touches WIT or a guest.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::bpf::{AttachPoint, BpfError, BpfErrorKind, BpfObject};

use super::model::{Mode, ProfileError};
use super::target::Filter;

/// The sampler's object, built from `ebpf/src/profile.bpf.c` by `make -C ebpf`.
const OBJECT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../ebpf/build/profile.bpf.o"
));

/// Depth of the kernel's stack map values (`127 * sizeof(u64)` in `profile.bpf.c`).
pub const STACK_DEPTH: usize = 127;
/// `struct profile_key` in `profile.bpf.c`.
const KEY_SIZE: usize = 40;
/// Slots of the `stats` map.
const STAT_SAMPLES: u32 = 0;
const STAT_LOST: [u32; 3] = [1, 2, 3];

/// What one window asks of the kernel.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub filter: Filter,
    pub mode: Mode,
    pub frequency_hz: u32,
    pub duration: Duration,
    pub kernel_stacks: bool,
    pub user_stacks: bool,
    pub max_stacks: u32,
}

/// One counts entry: a (process, kernel stack, user stack) and its samples or blocked ns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSample {
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// Leaf first, as the kernel stores them.
    pub kernel: Vec<u64>,
    pub user: Vec<u64>,
    pub value: u64,
}

/// What the window saw.
#[derive(Debug, Default)]
pub struct RawProfile {
    pub samples: Vec<RawSample>,
    pub taken: u64,
    pub lost: u64,
    pub elapsed: Duration,
}

fn error(err: BpfError) -> ProfileError {
    match err.kind() {
        BpfErrorKind::NotSupported => ProfileError::NotSupported(err.message().to_owned()),
        BpfErrorKind::InvalidArgument => ProfileError::Invalid(err.message().to_owned()),
        BpfErrorKind::Io | BpfErrorKind::TooLarge => ProfileError::Io(err.message().to_owned()),
    }
}

fn global(name: &str, value: &[u8]) -> (String, Vec<u8>) {
    (name.to_owned(), value.to_vec())
}

/// Samples for `window.duration` (less if `cancel` is set) and returns the raw counts.
pub fn run(window: &Window, cancel: &Arc<AtomicBool>) -> Result<RawProfile, ProfileError> {
    let (kind, id, level) = window.filter.globals();
    let globals = [
        global("target_kind", &kind.to_le_bytes()),
        global("target_id", &id.to_le_bytes()),
        global("target_level", &level.to_le_bytes()),
        global(
            "kernel_stacks",
            &u32::from(window.kernel_stacks).to_le_bytes(),
        ),
        global("user_stacks", &u32::from(window.user_stacks).to_le_bytes()),
    ];
    let sizes = [("stacks", window.max_stacks), ("counts", window.max_stacks)];
    let mut object = BpfObject::load_sized(OBJECT, &globals, &sizes).map_err(error)?;
    let (program, point) = match window.mode {
        Mode::OnCpu => (
            "on_cpu",
            AttachPoint::PerfCpuClock(u64::from(window.frequency_hz)),
        ),
        Mode::OffCpu => ("off_cpu", AttachPoint::TpBtf("sched_switch".to_owned())),
    };
    let started = Instant::now();
    object.attach(program, &point).map_err(error)?;
    let deadline = started + window.duration;
    while !cancel.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
    // Stop sampling before reading, so the counts are one consistent window.
    object.detach(program).map_err(error)?;
    let elapsed = started.elapsed();
    read(&object, elapsed)
}

fn read(object: &BpfObject, elapsed: Duration) -> Result<RawProfile, ProfileError> {
    let stats = object.entries("stats").map_err(error)?;
    let mut taken = 0u64;
    let mut lost = 0u64;
    for (key, value) in &stats {
        let slot = key
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(u32::MAX);
        let total: u64 = value.chunks_exact(8).map(le_u64).sum();
        if slot == STAT_SAMPLES {
            taken += total;
        } else if STAT_LOST.contains(&slot) {
            lost += total;
        }
    }
    let mut stacks = std::collections::HashMap::<i32, Vec<u64>>::new();
    let mut stack = |id: i32| -> Vec<u64> {
        if id < 0 {
            return Vec::new();
        }
        stacks
            .entry(id)
            .or_insert_with(|| {
                match object.lookup("stacks", &id.to_le_bytes()) {
                    Ok(Some(bytes)) => bytes
                        .chunks_exact(8)
                        .map(le_u64)
                        .take_while(|&ip| ip != 0)
                        .collect(),
                    // Reused by a colliding stack, or gone: counted as a lost sample below.
                    _ => Vec::new(),
                }
            })
            .clone()
    };
    let mut samples = Vec::new();
    for (key, value) in object.entries("counts").map_err(error)? {
        let Some(sample) = decode_key(&key) else {
            continue;
        };
        let value = value.get(..8).map(le_u64).unwrap_or(0);
        let kernel = stack(sample.kernel_stack_id);
        let user = stack(sample.user_stack_id);
        samples.push(RawSample {
            pid: sample.tgid,
            comm: sample.comm,
            cgroup_id: sample.cgroup_id,
            kernel,
            user,
            value,
        });
    }
    Ok(RawProfile {
        samples,
        taken,
        lost,
        elapsed,
    })
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(b)
}

/// `struct profile_key`, decoded.
#[derive(Debug, PartialEq, Eq)]
struct Key {
    tgid: u32,
    kernel_stack_id: i32,
    user_stack_id: i32,
    cgroup_id: u64,
    comm: String,
}

fn decode_key(bytes: &[u8]) -> Option<Key> {
    if bytes.len() != KEY_SIZE {
        return None;
    }
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let comm = &bytes[24..40];
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    Some(Key {
        tgid: u32_at(0),
        kernel_stack_id: u32_at(4) as i32,
        user_stack_id: u32_at(8) as i32,
        cgroup_id: le_u64(&bytes[16..24]),
        comm: String::from_utf8_lossy(&comm[..end]).into_owned(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn a_profile_key_decodes_field_by_field() {
        let mut bytes = vec![0u8; KEY_SIZE];
        bytes[0..4].copy_from_slice(&1234u32.to_le_bytes());
        bytes[4..8].copy_from_slice(&7i32.to_le_bytes());
        bytes[8..12].copy_from_slice(&(-14i32).to_le_bytes());
        bytes[16..24].copy_from_slice(&99u64.to_le_bytes());
        bytes[24..27].copy_from_slice(b"dd\0");
        assert_eq!(
            decode_key(&bytes),
            Some(Key {
                tgid: 1234,
                kernel_stack_id: 7,
                user_stack_id: -14,
                cgroup_id: 99,
                comm: "dd".to_owned(),
            })
        );
        assert_eq!(decode_key(&bytes[..39]), None);
    }
}
