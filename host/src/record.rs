//! Record and replay of the ring-buffer batches a plugin receives.
//!
//! `kpulse plugins record` runs one plugin against the live kernel and writes every batch
//! it is handed to a file; `kpulse plugins replay` runs the same plugin with BPF faked (no
//! kernel objects, no root needed) and feeds it the recorded batches, printing the documents
//! it saves. SDK authors test their decoding this way; tests replay faults that cannot be
//! produced on a shared machine.
//!
//! File format: the magic `KPREC002`, a little-endian u32 length and that many bytes of JSON
//! metadata, then one frame per batch: u64 nanoseconds since the recording started, u64
//! subscription id, u32 byte length, and the batch bytes (records in the ring-buffer layout,
//! exactly as `on-events` receives them).

use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// Version 2: batches in the ring-buffer layout (version 1 had u32-length-prefixed records).
const MAGIC: &[u8; 8] = b"KPREC002";

/// Appends batches to a recording file. Shared by the actor threads of a mini-agent.
pub struct Recorder {
    out: Mutex<BufWriter<std::fs::File>>,
    started: Instant,
    pub batches: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

impl Recorder {
    pub fn create(path: &Path, metadata: &serde_json::Value) -> std::io::Result<Self> {
        let mut out = BufWriter::new(std::fs::File::create(path)?);
        let meta = serde_json::to_vec(metadata).map_err(std::io::Error::other)?;
        out.write_all(MAGIC)?;
        out.write_all(&u32::try_from(meta.len()).unwrap_or(u32::MAX).to_le_bytes())?;
        out.write_all(&meta)?;
        Ok(Self {
            out: Mutex::new(out),
            started: Instant::now(),
            batches: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn write(&self, subscription: u64, records: &[u8]) {
        let offset = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let Ok(mut out) = self.out.lock() else { return };
        let written = out
            .write_all(&offset.to_le_bytes())
            .and_then(|()| out.write_all(&subscription.to_le_bytes()))
            .and_then(|()| {
                out.write_all(
                    &u32::try_from(records.len())
                        .unwrap_or(u32::MAX)
                        .to_le_bytes(),
                )
            })
            .and_then(|()| out.write_all(records));
        match written {
            Ok(()) => {
                self.batches
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(err) => tracing::error!(%err, "cannot write recording"),
        }
    }

    pub fn finish(&self) -> std::io::Result<()> {
        self.out
            .lock()
            .map_err(|_| std::io::Error::other("recorder poisoned"))?
            .flush()
    }
}

/// One recorded batch.
#[derive(Debug, Clone)]
pub struct Frame {
    pub offset_ns: u64,
    pub subscription: u64,
    pub records: Vec<u8>,
}

/// Reads a whole recording: its metadata and frames. A truncated last frame (the recorder
/// was killed) is dropped.
pub fn read(path: &Path) -> Result<(serde_json::Value, Vec<Frame>), String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|err| format!("{}: {err}", path.display()))?;
    if bytes.get(..8) != Some(MAGIC.as_slice()) {
        return Err(format!("{}: not a kpulse recording", path.display()));
    }
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    };
    let meta_len = u32_at(8).ok_or("truncated header")?;
    let meta: serde_json::Value = bytes
        .get(12..12 + meta_len)
        .and_then(|m| serde_json::from_slice(m).ok())
        .ok_or_else(|| format!("{}: bad metadata", path.display()))?;
    let mut frames = Vec::new();
    let mut at = 12 + meta_len;
    while let (Some(offset_ns), Some(subscription), Some(len)) =
        (u64_at(at), u64_at(at + 8), u32_at(at + 16))
    {
        let Some(records) = bytes.get(at + 20..at + 20 + len) else {
            break;
        };
        frames.push(Frame {
            offset_ns,
            subscription,
            records: records.to_vec(),
        });
        at += 20 + len;
    }
    Ok((meta, frames))
}

pub use crate::bpf::count_records;
