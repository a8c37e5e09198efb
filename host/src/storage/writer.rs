//! The single writer thread: hands every line to the sink, appends it to its tracer's
//! NDJSON file and rotates the files by size.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::StoreStats;
use crate::sinks::Sink;

/// A line queued for the writer.
pub(super) struct Line {
    pub(super) tracer: String,
    pub(super) text: String,
}

/// Largest write of one tracer's lines; a file overshoots its rotation size by at most this.
const WRITE_CHUNK_BYTES: usize = 256 * 1024;

/// How often the writer makes the sink's queue durable against power loss.
const SINK_SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// The single writer: owns the open files and does the rotation.
pub(super) struct Writer {
    /// Write the local NDJSON files.
    pub(super) local: bool,
    /// Takes every line before the local write; flushed every [`SINK_SYNC_INTERVAL`].
    pub(super) sink: Option<Arc<dyn Sink>>,
    pub(super) dir: PathBuf,
    pub(super) rotation_bytes: u64,
    pub(super) max_rotated: u32,
    pub(super) files: HashMap<String, (File, u64)>,
    pub(super) stats: Arc<StoreStats>,
}

impl Writer {
    pub(super) fn run(mut self, receiver: Receiver<Line>) {
        let mut pending: HashMap<String, String> = HashMap::new();
        let mut last_sync = Instant::now();
        // The sink took lines that are not fsynced yet.
        let mut unsynced = false;
        loop {
            // The sink's fsync is what costs (hundreds of µs each): once per interval, not
            // per batch, and on this thread, never a guest's. Power loss can lose at most
            // the last interval.
            let sync_due = || last_sync.elapsed() >= SINK_SYNC_INTERVAL;
            // Idle with nothing left to make durable: sleep until the next document instead
            // of waking every interval.
            let received = if unsynced {
                receiver.recv_timeout(SINK_SYNC_INTERVAL)
            } else {
                receiver.recv().map_err(|_| RecvTimeoutError::Disconnected)
            };
            let first = match received {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(sink) = &self.sink {
                        sink.flush();
                    }
                    unsynced = false;
                    last_sync = Instant::now();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // Drain what is already queued so that one write(2) covers many documents.
            let mut batch = vec![first];
            while batch.len() < 4096 {
                match receiver.try_recv() {
                    Ok(line) => batch.push(line),
                    Err(_) => break,
                }
            }
            self.stats
                .queued
                .fetch_sub(batch.len() as u64, Ordering::Relaxed);
            // The sink first: once a document is in a local file it is in the sink's spool.
            if let Some(sink) = &self.sink {
                for line in &batch {
                    sink.accept(&line.text);
                }
            }
            if self.local {
                for line in &batch {
                    let buf = pending.entry(line.tracer.clone()).or_default();
                    buf.push_str(&line.text);
                    buf.push('\n');
                    // Bounded chunks, so that a burst still rotates at the configured size.
                    if buf.len() >= WRITE_CHUNK_BYTES {
                        let text = std::mem::take(buf);
                        self.write_lines(&line.tracer, &text);
                    }
                }
            }
            for (tracer, text) in pending.drain() {
                if !text.is_empty() {
                    self.write_lines(&tracer, &text);
                }
            }
            if let Some(sink) = &self.sink {
                if sync_due() {
                    // Make what the sink took durable against power loss too.
                    sink.flush();
                    last_sync = Instant::now();
                    unsynced = false;
                } else {
                    unsynced = true;
                }
            }
        }
    }

    /// Appends complete lines to a tracer's file, counting them as written or failed.
    fn write_lines(&mut self, tracer: &str, text: &str) {
        let count = text.bytes().filter(|&b| b == b'\n').count() as u64;
        match self.append(tracer, text.as_bytes()) {
            Ok(()) => {
                if let Ok(mut written) = self.stats.written.lock() {
                    *written.entry(tracer.to_owned()).or_default() += count;
                }
            }
            Err(err) => {
                self.stats.write_errors.fetch_add(count, Ordering::Relaxed);
                tracing::error!(%tracer, %err, "cannot write events to the local store");
                self.files.remove(tracer);
            }
        }
    }

    fn append(&mut self, tracer: &str, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.dir.join(format!("{tracer}.ndjson"));
        if let Some((_, size)) = self.files.get(tracer)
            && *size > 0
            && *size + bytes.len() as u64 > self.rotation_bytes
        {
            self.files.remove(tracer);
            self.rotate(&path)?;
        }
        if !self.files.contains_key(tracer) {
            let file = open_for_append(&path)?;
            let size = file.metadata()?.len();
            self.files.insert(tracer.to_owned(), (file, size));
        }
        let Some((file, size)) = self.files.get_mut(tracer) else {
            return Err(std::io::Error::other("file vanished from the table"));
        };
        file.write_all(bytes)?;
        *size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&self, current: &Path) -> std::io::Result<()> {
        self.stats.rotations.fetch_add(1, Ordering::Relaxed);
        if self.max_rotated == 0 {
            return std::fs::remove_file(current);
        }
        let _ = std::fs::remove_file(rotated_path(current, self.max_rotated));
        for n in (1..self.max_rotated).rev() {
            let from = rotated_path(current, n);
            if from.exists() {
                std::fs::rename(&from, rotated_path(current, n + 1))?;
            }
        }
        std::fs::rename(current, rotated_path(current, 1))
    }
}

/// `<tracer>.ndjson.<n>`: the `n`-th newest rotated file.
pub(super) fn rotated_path(current: &Path, n: u32) -> PathBuf {
    let mut name = current.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Opens a file for appending and makes sure it ends with a newline, so that a line torn
/// by a crash never swallows the next document.
fn open_for_append(path: &Path) -> std::io::Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let len = file.metadata()?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))?;
        std::io::Read::read_exact(&mut file, &mut last)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
        }
    }
    Ok(file)
}
