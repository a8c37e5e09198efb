//! The batch format handed to a guest's `on-events`: the BPF ring buffer's own record
//! layout, so that a ring-buffer batch is one contiguous slice of the kernel's mapping,
//! copied once, straight into guest memory.
//!
//! Each record: a u32 LE length whose bit 30 means "skip" (a discarded reservation), a
//! reserved u32, the record's bytes, and padding to a multiple of 8. Perf-array and replayed
//! batches are built in the same layout.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::BpfCounters;
use super::ring::RingConsumer;

/// Record header size.
pub const RECORD_HEADER: usize = 8;
/// Bit 30 of a record's length word: skip this record.
pub const SKIP_BIT: u32 = 1 << 30;

/// Appends one record in batch layout.
pub fn push_record(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX >> 2) & (SKIP_BIT - 1);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(bytes);
    out.resize(out.len().next_multiple_of(8), 0);
}

/// One batch of records for a guest, cut on the plugin's actor thread.
pub enum Batch {
    /// Built by the host (perf arrays, replay); the buffer comes back for reuse.
    Owned(Vec<u8>),
    /// "Ring has data": the actor cuts the run of committed records from the ring itself,
    /// right before the call, so the records are read from the ring exactly once, by the
    /// component model's copy into guest memory, on the thread that then decodes them.
    Ring {
        ring: Arc<Mutex<RingConsumer>>,
        counters: Arc<BpfCounters>,
    },
}

impl Batch {
    /// Runs `call` on the batch's bytes; `None` if there was nothing to deliver.
    pub fn with_bytes<R>(&self, call: impl FnOnce(&[u8]) -> R) -> Option<R> {
        match self {
            Batch::Owned(bytes) => Some(call(bytes)),
            Batch::Ring { ring, counters } => {
                let mut ring = ring
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let (records, result) = ring.with_next_region(call)?;
                counters
                    .records
                    .fetch_add(records as u64, Ordering::Relaxed);
                Some(result)
            }
        }
    }
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Batch::Owned(bytes) => write!(f, "Batch::Owned({} bytes)", bytes.len()),
            Batch::Ring { .. } => write!(f, "Batch::Ring"),
        }
    }
}

/// Records in a batch that are not marked skipped.
pub fn count_records(batch: &[u8]) -> usize {
    let mut at = 0;
    let mut count = 0;
    while let Some(word) = batch
        .get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    {
        let len = (word & (SKIP_BIT - 1)) as usize;
        if batch.len() < at + RECORD_HEADER + len {
            break;
        }
        at += (RECORD_HEADER + len).next_multiple_of(8);
        count += usize::from(word & SKIP_BIT == 0);
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_8_byte_aligned_and_counted() {
        let mut batch = Vec::new();
        push_record(&mut batch, b"abc");
        push_record(&mut batch, &[7; 8]);
        assert_eq!(batch.len(), 16 + 16);
        assert_eq!(&batch[..4], &3u32.to_le_bytes());
        assert_eq!(count_records(&batch), 2);
        batch[3] |= 0x40; // skip the first
        assert_eq!(count_records(&batch), 1);
        assert_eq!(count_records(&batch[..20]), 0, "torn first record");
    }
}
