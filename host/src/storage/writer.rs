//! The single writer thread: hands every line to the sink, appends it to its tracer's
//! NDJSON file and rotates the files by size.
//!
//! A write that fails (disk full, read-only, I/O error) is cut back to its last complete
//! line: the lines before the failure count as written, the others as dropped
//! (`write_error`), and no file keeps half a document. The error is logged once per kind per
//! [`REPEAT_INTERVAL`], with the count suppressed meanwhile; the first write that succeeds
//! again logs how many documents the failure cost.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::{DropCause, StoreStats};
use crate::logging::{REPEAT_INTERVAL, RateLimitBy};
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
    pub(super) failing: Failing,
}

/// The state of a run of failed writes, for rate-limited logging.
pub(super) struct Failing {
    /// Documents dropped since the last successful write.
    lost: u64,
    /// One line per error kind per interval.
    write: RateLimitBy<ErrorKind>,
    /// Cutting a failed write back failed too.
    cut: RateLimitBy<ErrorKind>,
}

impl Default for Failing {
    fn default() -> Self {
        Self {
            lost: 0,
            write: RateLimitBy::new(REPEAT_INTERVAL),
            cut: RateLimitBy::new(REPEAT_INTERVAL),
        }
    }
}

/// A failed append: the error, and how many leading bytes of it stay in the file (complete
/// lines only).
struct AppendError {
    err: std::io::Error,
    kept: usize,
}

impl From<std::io::Error> for AppendError {
    fn from(err: std::io::Error) -> Self {
        Self { err, kept: 0 }
    }
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
            // The sink first: once a document is in a local file it is in the sink's spool,
            // unless the spool failed to take it (which the spool counts as its own loss).
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

    /// Appends complete lines to a tracer's file, counting them as written or dropped.
    fn write_lines(&mut self, tracer: &str, text: &str) {
        let count = newlines(text.as_bytes());
        match self.append(tracer, text.as_bytes()) {
            Ok(()) => {
                self.count_written(tracer, count);
                if self.failing.lost > 0 {
                    let suppressed = self.failing.write.reset_all();
                    tracing::info!(
                        %tracer,
                        dropped = self.failing.lost,
                        "the local store writes again{suppressed}"
                    );
                    self.failing.lost = 0;
                }
            }
            Err(AppendError { err, kept }) => {
                let kept_lines = newlines(&text.as_bytes()[..kept]);
                self.count_written(tracer, kept_lines);
                let lost = count - kept_lines;
                self.stats
                    .dropped(DropCause::WriteError)
                    .fetch_add(lost, Ordering::Relaxed);
                self.failing.lost += lost;
                if let Some(suppressed) = self.failing.write.check(&err.kind()) {
                    tracing::error!(
                        %tracer,
                        %err,
                        dropped = lost,
                        dropped_since_last_success = self.failing.lost,
                        "cannot write events to the local store; documents dropped{suppressed}"
                    );
                }
                // Opened again for the next batch: the file may have been replaced or the
                // directory deleted meanwhile.
                self.files.remove(tracer);
            }
        }
    }

    fn count_written(&self, tracer: &str, count: u64) {
        if count == 0 {
            return;
        }
        if let Ok(mut written) = self.stats.written.lock() {
            *written.entry(tracer.to_owned()).or_default() += count;
        }
    }

    fn append(&mut self, tracer: &str, bytes: &[u8]) -> Result<(), AppendError> {
        let path = self.dir.join(format!("{tracer}.ndjson"));
        // Someone else wrote to, truncated, moved or deleted the file (or the directory):
        // open it again, which ends a torn last line before this write, instead of writing
        // on after someone else's bytes or into a file no longer there.
        if let Some((file, size)) = self.files.get(tracer)
            && !still_ours(file, *size, &path)
        {
            self.files.remove(tracer);
        }
        if let Some((_, size)) = self.files.get(tracer)
            && *size > 0
            && *size + bytes.len() as u64 > self.rotation_bytes
        {
            self.files.remove(tracer);
            self.rotate(&path)?;
        }
        if !self.files.contains_key(tracer) {
            let file = match open_for_append(&path) {
                // The data directory was deleted under the agent: make it again.
                Err(err) if err.kind() == ErrorKind::NotFound => {
                    std::fs::create_dir_all(&self.dir)?;
                    open_for_append(&path)?
                }
                opened => opened?,
            };
            let size = file.metadata()?.len();
            self.files.insert(tracer.to_owned(), (file, size));
        }
        let Some((file, size)) = self.files.get_mut(tracer) else {
            return Err(std::io::Error::other("file vanished from the table").into());
        };
        let (written, result) = write_fully(file, bytes);
        let Err(err) = result else {
            *size += bytes.len() as u64;
            return Ok(());
        };
        // Keep the complete lines that made it and cut the torn rest, which would otherwise
        // be half a document (and swallow the next line). The end is the file's, not the
        // tracked size, so that a file changed by someone else is never extended.
        let kept = bytes[..written]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |at| at + 1);
        let torn = (written - kept) as u64;
        if torn > 0 {
            let cut = file
                .metadata()
                .and_then(|meta| file.set_len(meta.len().saturating_sub(torn)));
            if let Err(cut) = cut
                && let Some(suppressed) = self.failing.cut.check(&cut.kind())
            {
                // The next open ends the torn line with a newline, and reading skips it
                // as a corrupt line.
                tracing::error!(path = %path.display(), err = %cut, "cannot cut a failed write back to its last complete line{suppressed}");
            }
        }
        Err(AppendError { err, kept })
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

/// Writes `bytes` with as many `write(2)`s as it takes; returns how many were written, and
/// the error that stopped it.
fn write_fully(file: &mut File, bytes: &[u8]) -> (usize, std::io::Result<()>) {
    let mut written = 0;
    while written < bytes.len() {
        match file.write(&bytes[written..]) {
            Ok(0) => return (written, Err(ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return (written, Err(err)),
        }
    }
    (written, Ok(()))
}

/// `file` is still what `path` names, at the size this writer left it (an fstat and a
/// stat per batch).
fn still_ours(file: &File, size: u64, path: &Path) -> bool {
    crate::same_file::same_file(file, path).is_some_and(|(same, len)| same && len == size)
}

fn newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
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
