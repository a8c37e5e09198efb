//! Turning raw samples into a [`Profile`]: kernel frames from kallsyms, user frames with
//! blazesym through `/proc/<pid>/map_files` (so a container's binaries resolve in its own
//! mount namespace), right after the window ends, while the processes still run. Frames are
//! deduplicated by (kind, name, module), so a profile holds at most a few names per stack.

use std::collections::HashMap;

use blazesym::symbolize::source::{Process, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};

use super::model::{Frame, FrameKind, Mode, Profile, Stack};
use super::sampler::{RawProfile, STACK_DEPTH};

/// Where a complete user stack ends: the entry points of processes and threads. A walk that
/// stops elsewhere met a frame without a frame pointer.
const STACK_ROOTS: &[&str] = &[
    "_start",
    "__libc_start_main",
    "__libc_start_call_main",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
    "thread_start",
    "runtime.goexit",
    "runtime.goexit.abi0",
    "runtime.rt0_go",
    "runtime.rt0_go.abi0",
    "runtime.mstart",
    "runtime.mstart.abi0",
];

const UNKNOWN: &str = "[unknown]";

#[derive(Default)]
struct Frames {
    frames: Vec<Frame>,
    index: HashMap<(FrameKind, String, String), u32>,
}

impl Frames {
    fn add(&mut self, kind: FrameKind, name: String, module: String, address: u64) -> u32 {
        let key = (kind, name, module);
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        let i = u32::try_from(self.frames.len()).unwrap_or(u32::MAX);
        self.frames.push(Frame {
            name: key.1.clone(),
            module: key.2.clone(),
            kind,
            address,
        });
        self.index.insert(key, i);
        i
    }
}

/// User symbols of one process, by address; empty names where blazesym found none.
fn user_symbols(symbolizer: &Symbolizer, pid: u32, addresses: &[u64]) -> Vec<(String, String)> {
    let mut source = Process::new(pid.into());
    source.map_files = true;
    source.debug_syms = false;
    source.perf_map = false;
    source.vdso = false;
    let source = Source::Process(source);
    let named = |s: Symbolized<'_>| match s {
        Symbolized::Sym(sym) => (
            sym.name.into_owned(),
            sym.module
                .map(|m| m.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        Symbolized::Unknown(_) => (String::new(), String::new()),
    };
    match symbolizer.symbolize(&source, Input::AbsAddr(addresses)) {
        Ok(found) => found.into_iter().map(named).collect(),
        // One unreadable mapping fails the batch: then address by address, so the others
        // still resolve. A process that exited leaves its frames unknown.
        Err(err) => {
            tracing::debug!(pid, %err, "user symbolization failed; retrying address by address");
            addresses
                .iter()
                .map(|&address| {
                    symbolizer
                        .symbolize_single(&source, Input::AbsAddr(address))
                        .map(named)
                        .unwrap_or_default()
                })
                .collect()
        }
    }
}

/// A frame of the BPF machinery that called the sampler: a BPF program (kallsyms lists
/// them in the `bpf` module, or past the kernel's text, which the table shows as the last
/// text symbol) or the tracepoint trampoline.
fn is_sampler_frame(name: &str, module: &str) -> bool {
    module == "bpf"
        || name == "_einittext"
        || name.starts_with("bpf_prog_")
        || name.starts_with("bpf_trace_run")
        || name.starts_with("__bpf_trace_")
        || name.starts_with("__traceiter_")
}

/// Whether `address` is in the kernel's half of the address space (the top bit set, on
/// x86-64 and arm64 alike). A kernel stack never holds anything else; if a walk strays into
/// a user address, it is dropped, not shown as a kernel frame.
fn is_kernel_address(address: u64) -> bool {
    address >> 63 == 1
}

/// Return addresses point past their call; symbolizing them as they are can name the next
/// function (a `call` that ends its function). Every frame but an interrupted one is a
/// return address: all but the kernel leaf, and the user leaf too when the task was in the
/// kernel (a system call's return address). Leaf first, as the kernel stores them.
fn to_call_sites(sample: &mut super::sampler::RawSample) {
    sample.kernel.retain(|&a| is_kernel_address(a));
    for address in sample.kernel.iter_mut().skip(1) {
        *address -= 1;
    }
    let user_leaf_is_return = usize::from(sample.kernel.is_empty());
    for address in sample.user.iter_mut().skip(user_leaf_is_return) {
        *address = address.saturating_sub(1);
    }
}

/// Symbolizes `raw` into a profile.
pub fn profile(mut raw: RawProfile, mode: Mode, frequency_hz: u32) -> Profile {
    raw.samples.iter_mut().for_each(to_call_sites);
    let symbolizer = Symbolizer::new();
    // Every distinct user address of each process, symbolized in one call per process.
    let mut per_pid: HashMap<u32, Vec<u64>> = HashMap::new();
    for sample in &raw.samples {
        per_pid
            .entry(sample.pid)
            .or_default()
            .extend(sample.user.iter().copied());
    }
    let mut user: HashMap<(u32, u64), (String, String)> = HashMap::new();
    for (pid, mut addresses) in per_pid {
        addresses.sort_unstable();
        addresses.dedup();
        if addresses.is_empty() {
            continue;
        }
        for (address, symbol) in addresses
            .iter()
            .zip(user_symbols(&symbolizer, pid, &addresses))
        {
            user.insert((pid, *address), symbol);
        }
    }

    let mut frames = Frames::default();
    let mut stacks = Vec::with_capacity(raw.samples.len());
    for sample in raw.samples {
        let mut indexes = Vec::with_capacity(sample.user.len() + sample.kernel.len());
        let mut outermost_user = None;
        // Root first: the kernel stores leaf first.
        for &address in sample.user.iter().rev() {
            let (name, module) = user
                .get(&(sample.pid, address))
                .cloned()
                .unwrap_or_default();
            let name = if name.is_empty() {
                UNKNOWN.to_owned()
            } else {
                name
            };
            if outermost_user.is_none() {
                outermost_user = Some(name.clone());
            }
            indexes.push(frames.add(FrameKind::User, name, module, address));
        }
        let mut kernel: Vec<(u64, String, String)> = sample
            .kernel
            .iter()
            .map(|&address| match crate::bpf::kernel_symbol(address) {
                Some((name, module, _)) => (address, name.to_owned(), module.to_owned()),
                None => (address, format!("0x{address:x}"), String::new()),
            })
            .collect();
        // The sampler's own frames (the off-cpu program runs inside sched_switch) are not
        // the task's: leaf first, drop them.
        let own = kernel
            .iter()
            .take_while(|(_, name, module)| is_sampler_frame(name, module))
            .count();
        kernel.drain(..own);
        for (address, name, module) in kernel.into_iter().rev() {
            indexes.push(frames.add(FrameKind::Kernel, name, module, address));
        }
        let user_truncated = !sample.user.is_empty()
            && (sample.user.len() >= STACK_DEPTH
                || outermost_user.is_some_and(|root| !STACK_ROOTS.contains(&root.as_str())));
        stacks.push(Stack {
            frames: indexes,
            value: sample.value,
            pid: sample.pid,
            comm: sample.comm,
            cgroup_id: sample.cgroup_id,
            user_truncated,
        });
    }
    stacks.sort_by_key(|s| std::cmp::Reverse(s.value));
    Profile {
        frames: frames.frames,
        stacks,
        samples: raw.taken,
        lost: raw.lost,
        mode,
        frequency_hz,
        duration_ns: u64::try_from(raw.elapsed.as_nanos()).unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::profiler::sampler::RawSample;

    #[test]
    fn return_addresses_become_call_sites_and_user_addresses_leave_kernel_stacks() {
        let mut sample = RawSample {
            pid: 1,
            comm: "t".to_owned(),
            cgroup_id: 0,
            kernel: vec![
                0xffff_ffff_8100_0010,
                0x7f00_0000_1000,
                0xffff_ffff_8100_0020,
            ],
            user: vec![0x40_1000, 0x40_2000],
            value: 1,
        };
        to_call_sites(&mut sample);
        assert_eq!(
            sample.kernel,
            vec![0xffff_ffff_8100_0010, 0xffff_ffff_8100_001f]
        );
        // In the kernel: the user leaf is the system call's return address too.
        assert_eq!(sample.user, vec![0x40_0fff, 0x40_1fff]);
        let mut in_user = RawSample {
            kernel: Vec::new(),
            user: vec![0x40_1000, 0x40_2000],
            ..sample
        };
        to_call_sites(&mut in_user);
        assert_eq!(in_user.user, vec![0x40_1000, 0x40_1fff]);
    }

    #[test]
    fn the_samplers_own_frames_are_recognised() {
        assert!(is_sampler_frame("bpf_trace_run4", "vmlinux"));
        assert!(is_sampler_frame("_einittext", "vmlinux"));
        assert!(is_sampler_frame("bpf_prog_6deef7357e7b4530_off_cpu", "bpf"));
        assert!(!is_sampler_frame("__schedule", "vmlinux"));
        assert!(!is_sampler_frame("ext4_file_write_iter", "ext4"));
    }

    #[test]
    fn this_process_symbolizes_its_own_function_and_frames_are_shared() {
        #[inline(never)]
        fn marker() -> u64 {
            marker as fn() -> u64 as usize as u64
        }
        let address = marker() + 1;
        let sample = |value| RawSample {
            pid: std::process::id(),
            comm: "test".to_owned(),
            cgroup_id: 1,
            kernel: Vec::new(),
            user: vec![address],
            value,
        };
        let raw = RawProfile {
            samples: vec![sample(3), sample(5)],
            taken: 8,
            lost: 0,
            elapsed: std::time::Duration::from_millis(10),
        };
        let profile = profile(raw, Mode::OnCpu, 99);
        assert_eq!(profile.frames.len(), 1, "{:?}", profile.frames);
        assert!(
            profile.frames[0].name.contains("marker"),
            "{:?}",
            profile.frames[0]
        );
        assert_eq!(profile.stacks[0].value, 5);
        assert!(
            profile.stacks[0].user_truncated,
            "a one-frame stack is truncated"
        );
    }
}
