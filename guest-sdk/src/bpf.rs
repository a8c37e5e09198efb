//! Kernel tracing through BPF: load a CO-RE object embedded in the plugin, attach its
//! programs, subscribe to its ring buffer, read its maps. The host does the privileged part
//! (and needs the `bpf` capability plus the operator's `policy.bpf_allow`); records arrive
//! in [`crate::Tracing::on_events`] as [`Records`].
//!
//! ```ignore
//! const OBJECT: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../ebpf/build/dropwatch.bpf.o"));
//! let object = bpf::Object::load(OBJECT, &[bpf::Global::u64("max_events_per_second", 100)])?;
//! object.attach("kfree_skb", bpf::Attach::tracepoint("skb", "kfree_skb"))?;
//! let subscription = object.subscribe("events")?;
//! ```

use crate::bindings::kpulse::plugin::bpf as raw;
use crate::error::{Error, Result};
use crate::records;

pub use raw::AttachPoint as Attach;
pub use raw::UprobeTarget;

impl Attach {
    /// `tracepoint/<category>/<name>`.
    pub fn tracepoint(category: &str, name: &str) -> Self {
        Attach::Tracepoint((category.to_owned(), name.to_owned()))
    }

    /// Entry of function `symbol` in the ELF file `binary` (absolute path), in every process.
    pub fn uprobe(binary: &str, symbol: &str) -> Self {
        Attach::Uprobe(UprobeTarget {
            binary: binary.to_owned(),
            symbol: symbol.to_owned(),
            offset: 0,
            pid: None,
        })
    }

    /// Return of function `symbol` in the ELF file `binary`, in every process.
    pub fn uretprobe(binary: &str, symbol: &str) -> Self {
        Attach::Uretprobe(UprobeTarget {
            binary: binary.to_owned(),
            symbol: symbol.to_owned(),
            offset: 0,
            pid: None,
        })
    }
}

/// A `volatile const` override: the global's name and its exact bytes.
#[derive(Debug, Clone)]
pub struct Global(raw::Global);

impl Global {
    pub fn u64(name: &str, value: u64) -> Self {
        Self::bytes(name, value.to_le_bytes().to_vec())
    }

    pub fn i64(name: &str, value: i64) -> Self {
        Self::bytes(name, value.to_le_bytes().to_vec())
    }

    pub fn u32(name: &str, value: u32) -> Self {
        Self::bytes(name, value.to_le_bytes().to_vec())
    }

    pub fn bytes(name: &str, value: Vec<u8>) -> Self {
        Global(raw::Global {
            name: name.to_owned(),
            value,
        })
    }
}

fn host_error(err: raw::BpfError) -> Error {
    Error::Host {
        code: err.code,
        context: err.message,
    }
}

/// A loaded BPF object. Dropping it detaches its programs and frees its maps.
#[derive(Debug)]
pub struct Object(raw::Object);

impl Object {
    /// Loads an ELF object (usually `include_bytes!` of `ebpf/build/<name>.bpf.o`).
    pub fn load(elf: &[u8], globals: &[Global]) -> Result<Self> {
        let globals: Vec<raw::Global> = globals.iter().map(|g| g.0.clone()).collect();
        raw::Object::load(elf, &globals)
            .map(Object)
            .map_err(host_error)
    }

    /// Loads and attaches program `program`. Kinds the kernel lacks (kprobes, fentry on
    /// some kernels) fail with a `not-supported` host error, so a plugin can fall back.
    pub fn attach(&self, program: &str, point: Attach) -> Result<()> {
        self.0.attach(program, &point).map_err(host_error)
    }

    /// Starts delivering ring buffer `map`'s records to `on_events`; returns the
    /// subscription id.
    pub fn subscribe(&self, map: &str) -> Result<u64> {
        self.0.subscribe_ring_buffer(map).map_err(host_error)
    }

    /// The same for a perf event array map (`bpf_perf_event_output`), with
    /// `pages_per_cpu` pages (a power of two) of buffer per online CPU. Each record keeps
    /// the kernel's alignment padding at its end.
    pub fn subscribe_perf_event_array(&self, map: &str, pages_per_cpu: u32) -> Result<u64> {
        self.0
            .subscribe_perf_event_array(map, pages_per_cpu)
            .map_err(host_error)
    }

    /// Detaches and unloads one program; the object's maps and other programs stay.
    pub fn detach(&self, program: &str) -> Result<()> {
        self.0.detach(program).map_err(host_error)
    }

    /// A map value by key (per-CPU maps: every CPU's value, concatenated, 8-byte aligned).
    pub fn lookup(&self, map: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.0.lookup(map, key).map_err(host_error)
    }

    /// Every entry of a hash or array map.
    pub fn entries(&self, map: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.0.entries(map).map_err(host_error)
    }

    pub fn update(&self, map: &str, key: &[u8], value: &[u8]) -> Result<()> {
        self.0.update(map, key, value).map_err(host_error)
    }

    pub fn delete(&self, map: &str, key: &[u8]) -> Result<()> {
        self.0.delete(map, key).map_err(host_error)
    }
}

/// Slots of the per-CPU `stats` map that every kpulse BPF object keeps
/// (`ebpf/include/kpulse_common.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    /// Records written to the ring buffer.
    Emitted = 0,
    /// Records lost because the ring buffer was full.
    RingFull = 1,
    /// Records suppressed by the in-kernel rate limit.
    RateLimited = 2,
    /// Times the program ran.
    Hits = 3,
}

impl Object {
    /// One counter of the object's `stats` map, summed over CPUs (0 if it has none).
    pub fn stat(&self, stat: Stat) -> Result<u64> {
        Ok(self
            .lookup("stats", &(stat as u32).to_le_bytes())?
            .map_or(0, |value| sum_percpu_u64(&value)))
    }
}

/// Possible CPUs: the number of values in a per-CPU map entry.
pub fn possible_cpus() -> u32 {
    raw::possible_cpus()
}

/// The value of a BPF object's `ratelimit_nr_cpus` global: the number of possible CPUs
/// (at least 1), so that `kp_ratelimit(&ratelimit, max_events_per_second,
/// ratelimit_nr_cpus)` (`ebpf/include/kpulse_common.h`) caps the whole machine at
/// `max_events_per_second`, each CPU's bucket getting an equal share.
///
/// ```ignore
/// Global::u64("max_events_per_second", settings.max_events_per_second),
/// Global::u32("ratelimit_nr_cpus", bpf::ratelimit_nr_cpus()),
/// ```
///
/// Not `ctx.host().cpu_count`: that is the agent's own parallelism, which a CPU quota
/// lowers, while the BPF program runs on every CPU of the machine, so dividing by it would
/// let through many times the budget.
pub fn ratelimit_nr_cpus() -> u32 {
    possible_cpus().max(1)
}

/// Kernel addresses as `function+0xoffset` (needs the `kallsyms` capability).
pub fn symbolize(addresses: &[u64]) -> Result<Vec<String>> {
    raw::symbolize(addresses).map_err(|code| Error::host(code, "symbolize kernel addresses"))
}

/// Sums a per-CPU value made of one u64 per CPU.
pub fn sum_percpu_u64(value: &[u8]) -> u64 {
    value
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .sum()
}

/// A batch of records in the BPF ring buffer's layout: each record is a little-endian u32
/// length (bit 30 set: skip the record), a reserved u32, the bytes, and padding to a
/// multiple of 8. Iterating yields the records that are not skipped.
#[derive(Debug, Clone, Copy)]
pub struct Records<'a> {
    rest: &'a [u8],
}

/// Bit 30 of a record's length word: a discarded record to skip.
const SKIP_BIT: u32 = 1 << 30;

impl<'a> Records<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// Appends one record to `batch` in this layout (for tests and replay tools).
    pub fn push(batch: &mut Vec<u8>, record: &[u8]) {
        batch.extend_from_slice(&(record.len() as u32 & (SKIP_BIT - 1)).to_le_bytes());
        batch.extend_from_slice(&[0; 4]);
        batch.extend_from_slice(record);
        batch.resize(batch.len().next_multiple_of(8), 0);
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        loop {
            let header = self.rest.get(..8)?;
            let word = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let len = (word & (SKIP_BIT - 1)) as usize;
            let body = self.rest.get(8..8 + len)?;
            let step = (8 + len).next_multiple_of(8).min(self.rest.len());
            self.rest = &self.rest[step..];
            if word & SKIP_BIT == 0 {
                return Some(Record(body));
            }
        }
    }
}

/// One raw record with bounds-checked little-endian field access: a short or malformed
/// record yields zeros, never a panic.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a>(pub &'a [u8]);

impl<'a> Record<'a> {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn array<const N: usize>(&self, offset: usize) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(bytes) = self.0.get(offset..offset + N) {
            out.copy_from_slice(bytes);
        }
        out
    }

    pub fn u8_at(&self, offset: usize) -> u8 {
        self.0.get(offset).copied().unwrap_or(0)
    }

    pub fn u16_at(&self, offset: usize) -> u16 {
        u16::from_le_bytes(self.array(offset))
    }

    pub fn i16_at(&self, offset: usize) -> i16 {
        i16::from_le_bytes(self.array(offset))
    }

    pub fn u32_at(&self, offset: usize) -> u32 {
        u32::from_le_bytes(self.array(offset))
    }

    pub fn i32_at(&self, offset: usize) -> i32 {
        i32::from_le_bytes(self.array(offset))
    }

    pub fn u64_at(&self, offset: usize) -> u64 {
        u64::from_le_bytes(self.array(offset))
    }

    /// A NUL-terminated string in a fixed-size field.
    pub fn str_at(&self, offset: usize, len: usize) -> String {
        let bytes = self
            .0
            .get(offset..(offset + len).min(self.0.len()))
            .unwrap_or(&[]);
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end]).into_owned()
    }

    /// `count` u64 values starting at `offset` (e.g. a stack).
    pub fn u64s_at(&self, offset: usize, count: usize) -> Vec<u64> {
        (0..count).map(|i| self.u64_at(offset + i * 8)).collect()
    }

    /// The common header of kpulse's BPF records (`struct kp_event_header`). For a whole
    /// record, use its type in [`crate::records`] (e.g. `records::DropEvent::parse(r.0)`).
    pub fn header(&self) -> EventHeader {
        let h = records::EventHeader::parse_padded(self.0);
        EventHeader {
            kind: h.kind,
            cpu: h.cpu,
            ts_ns: h.ts_ns,
            pid: h.pid,
            tgid: h.tgid,
            comm: h.comm_str(),
            cgroup_id: h.cgroup_id,
        }
    }
}

/// `struct kp_event_header` (`ebpf/include/kpulse_events.h`): 48 bytes at the start of
/// every record kpulse's BPF programs emit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    pub cpu: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Thread id.
    pub pid: u32,
    /// Process id.
    pub tgid: u32,
    pub comm: String,
    pub cgroup_id: u64,
}

/// Size of [`EventHeader`] in a record.
pub const HEADER_SIZE: usize = records::EventHeader::SIZE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_iterate_and_tolerate_truncation() {
        let mut bytes = Vec::new();
        Records::push(&mut bytes, b"abcd");
        Records::push(&mut bytes, b"skipped");
        let skipped_at = 16;
        bytes[skipped_at + 3] |= 0x40; // bit 30: discarded reservation
        Records::push(&mut bytes, b"xy");
        bytes.extend_from_slice(&100u32.to_le_bytes()); // truncated trailing record
        bytes.extend_from_slice(&[0; 4]);
        let records: Vec<_> = Records::new(&bytes).collect();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].u32_at(0), u32::from_le_bytes(*b"abcd"));
        assert_eq!(records[1].u64_at(0), 0, "short reads give zero");
        assert_eq!(records[1].str_at(0, 16), "xy");
    }
}
