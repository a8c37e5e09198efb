//! The on-disk queue between the store's writer thread and the bulk task.
//!
//! Layout of `<data_dir>/opensearch/spool/`: segment files `<seq>.ndjson` (20-digit
//! sequence numbers, one document per line) and `committed`, the position
//! (`<seq> <byte offset>`) up to which the cluster acknowledged every document. Segments
//! wholly before it are deleted.
//!
//! Durability: the writer appends a batch with one `write(2)` and `fdatasync`s it before
//! returning from [`Spool::flush`]. The committed file is replaced atomically (write,
//! fsync, rename). After a crash the documents past the committed position are sent again;
//! `create` with `_id = tracer_id` makes the re-send idempotent on the cluster.
//!
//! A process restart always opens a fresh segment, so a line torn by a crash stays at the
//! end of a finished segment, where the reader skips it.
//!
//! The directory deleted under the running agent (an operator, a temp-file cleaner): the
//! writer's appends would go on into an unlinked file no reader can open, silently. Every
//! [`Spool::flush`] (each write batch) checks with one `fstat` and a `stat` that the segment
//! being written is still the file its path names; when not, the directory is made again,
//! the segment copied back from the open descriptor (nothing in it is lost), the committed
//! position written again, and the documents of finished segments that went with the
//! directory counted as dropped (`spool_deleted`).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::config::FullPolicy;
use crate::logging::{REPEAT_INTERVAL, RateLimit, RateLimitBy};

/// Per-document errors of the writer side, logged once per kind per interval.
static APPEND_FAILED: RateLimitBy<std::io::ErrorKind> = RateLimitBy::new(REPEAT_INTERVAL);
static ROLL_FAILED: RateLimit = RateLimit::new(REPEAT_INTERVAL);
static FSYNC_FAILED: RateLimit = RateLimit::new(REPEAT_INTERVAL);
static RESTORE_FAILED: RateLimit = RateLimit::new(REPEAT_INTERVAL);

/// A position in the spool: segment and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// Why the spool could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One spooled document as read back.
#[derive(Debug, Clone)]
pub struct Entry {
    pub line: String,
    /// The position just after this document.
    pub end: Position,
}

struct WriteState {
    segment: u64,
    /// `None` while the segment cannot be created (a read-only or full data directory at
    /// start): every push tries again, and counts the document lost while it fails.
    file: Option<File>,
    size: u64,
    /// Reused buffer for one line and its newline (one `write` per document).
    line: Vec<u8>,
    /// Written since the last fsync.
    unsynced: bool,
}

/// The spool; the writer side is [`Spool::push`]/[`Spool::flush`], the single reader is
/// [`Spool::read`] with its own cursor, and [`Spool::commit`] releases acknowledged data.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    policy: FullPolicy,
    write: Mutex<WriteState>,
    committed: Mutex<Position>,
    /// Documents past the committed position (spooled and not yet acknowledged).
    waiting_docs: AtomicU64,
    /// Bytes past the committed position, including not yet flushed ones.
    waiting_bytes: AtomicU64,
    /// Documents refused because the spool was full.
    pub dropped_full: AtomicU64,
    /// Documents deleted to make room (`drop_oldest`).
    pub dropped_evicted: AtomicU64,
    /// Write or fsync failures (documents lost).
    pub dropped_io: AtomicU64,
    /// Documents of finished segments deleted from outside before the cluster had them.
    pub dropped_deleted: AtomicU64,
    /// Times the segment being written was found deleted and restored.
    pub restored: AtomicU64,
    notify: tokio::sync::Notify,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("dir", &self.dir).finish()
    }
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.ndjson"))
}

/// Opens a segment for appending, creating it (and the spool directory) if missing. Readable
/// too, so that a segment deleted from outside can be copied back from its descriptor.
fn open_segment(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
}

/// `file` is still what `path` names (not unlinked, not moved away); a failed `fstat`
/// says nothing about the path, so the file is then left alone.
fn still_linked(file: &File, path: &Path) -> bool {
    crate::same_file::same_file(file, path).is_none_or(|(same, _)| same)
}

/// Copies the whole of `from` (an open, possibly unlinked, segment) into a new file at `path`.
fn copy_back(from: &File, path: &Path) -> std::io::Result<File> {
    let mut to = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0u64;
    loop {
        let n = from.read_at(&mut buf, at)?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n])?;
        at += n as u64;
    }
    to.sync_data()?;
    drop(to);
    // Appending from here on, like every segment being written.
    OpenOptions::new().read(true).append(true).open(path)
}

/// Segment numbers present in `dir`, ascending.
fn list_segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name
            .strip_suffix(".ndjson")
            .and_then(|s| s.parse::<u64>().ok())
            // Not a segment the spool writes: none can follow it (found by fuzzing).
            .filter(|&seq| seq < u64::MAX)
        {
            segments.push(seq);
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

/// Complete lines and their bytes in `path` from `offset`.
fn count_lines(path: &Path, offset: u64) -> Result<(u64, u64), SpoolError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(err) => return Err(io_err(path)(err)),
    };
    file.seek(SeekFrom::Start(offset)).map_err(io_err(path))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let (mut lines, mut bytes) = (0u64, 0u64);
    loop {
        let buf = reader.fill_buf().map_err(io_err(path))?;
        if buf.is_empty() {
            break;
        }
        let n = buf.len();
        let newlines = buf.iter().filter(|&&b| b == b'\n').count() as u64;
        lines += newlines;
        bytes += n as u64;
        reader.consume(n);
    }
    Ok((lines, bytes))
}

impl Spool {
    /// Opens (or creates) the spool in `dir` and starts a fresh segment.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
        policy: FullPolicy,
    ) -> Result<Self, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let segments = list_segments(dir)?;
        let committed_path = dir.join("committed");
        let mut committed = match std::fs::read_to_string(&committed_path) {
            Ok(text) => {
                let mut parts = text.split_whitespace().map(str::parse::<u64>);
                match (parts.next(), parts.next()) {
                    // u64::MAX has no segment after it: a position there is corrupt.
                    (Some(Ok(segment)), Some(Ok(offset))) if segment < u64::MAX => {
                        Position { segment, offset }
                    }
                    _ => {
                        // Not fatal: the spool starts over from its oldest segment (the
                        // cluster's `create` by `_id` makes the re-send idempotent), and the
                        // bad file is kept aside for a look.
                        let aside = dir.join("committed.corrupt");
                        let kept = std::fs::rename(&committed_path, &aside).is_ok();
                        tracing::error!(
                            path = %committed_path.display(),
                            ?text,
                            kept_as = %if kept { aside.display().to_string() } else { "(not moved)".to_owned() },
                            "corrupt committed position in the OpenSearch spool; re-sending every spooled document"
                        );
                        Position::default()
                    }
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Position::default(),
            Err(err) => return Err(io_err(&committed_path)(err)),
        };
        // Segments wholly acknowledged but not yet deleted (a crash between the two). On a
        // read-only disk they stay; the reader starts past them anyway.
        for &seq in segments.iter().filter(|&&s| s < committed.segment) {
            let path = segment_path(dir, seq);
            if let Err(err) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %err, "cannot delete an acknowledged OpenSearch spool segment");
            }
        }
        let live: Vec<u64> = segments
            .into_iter()
            .filter(|&s| s >= committed.segment)
            .collect();
        if committed.segment == 0 {
            committed = Position {
                segment: live.first().copied().unwrap_or(1),
                offset: 0,
            };
        }
        let (mut docs, mut bytes) = (0, 0);
        for &seq in &live {
            let offset = if seq == committed.segment {
                committed.offset
            } else {
                0
            };
            let (d, b) = count_lines(&segment_path(dir, seq), offset)?;
            docs += d;
            bytes += b;
        }
        // The fresh segment comes after the committed position: with no segment left (all
        // deleted or lost while `committed` survived), writing into the committed segment
        // itself would put new documents before the committed offset, where the reader
        // never looks (found by fuzz/fuzz_targets/spool.rs).
        let segment = live.last().map_or_else(
            || {
                committed
                    .segment
                    .saturating_add(u64::from(committed.offset > 0))
            },
            |last| last + 1,
        );
        let path = segment_path(dir, segment);
        let file = match open_segment(&path) {
            Ok(file) => Some(file),
            Err(err) => {
                tracing::error!(path = %path.display(), %err, "cannot create the OpenSearch spool segment; documents are lost (and counted) until it can be");
                None
            }
        };
        Ok(Self {
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes,
            policy,
            write: Mutex::new(WriteState {
                segment,
                file,
                size: 0,
                line: Vec::new(),
                unsynced: false,
            }),
            committed: Mutex::new(committed),
            waiting_docs: AtomicU64::new(docs),
            waiting_bytes: AtomicU64::new(bytes),
            dropped_full: AtomicU64::new(0),
            dropped_evicted: AtomicU64::new(0),
            dropped_io: AtomicU64::new(0),
            dropped_deleted: AtomicU64::new(0),
            restored: AtomicU64::new(0),
            notify: tokio::sync::Notify::new(),
        })
    }

    /// Documents spooled and not yet acknowledged.
    pub fn waiting(&self) -> u64 {
        self.waiting_docs.load(Ordering::Relaxed)
    }

    /// Bytes spooled and not yet acknowledged.
    pub fn waiting_bytes(&self) -> u64 {
        self.waiting_bytes.load(Ordering::Relaxed)
    }

    /// The acknowledged position.
    pub fn committed(&self) -> Position {
        self.committed
            .lock()
            .map_or_else(|p| *p.into_inner(), |p| *p)
    }

    /// Resolves when documents were flushed since the last wake-up.
    pub async fn wait_for_data(&self) {
        self.notify.notified().await;
    }

    /// Appends one document to the current segment at once, in the caller's thread: once
    /// this returns the document is in the kernel's page cache, so it survives a crash or
    /// `kill -9` of the agent (an fsync in [`Spool::flush`] covers power loss).
    pub fn push(&self, line: &str) {
        let size = line.len() as u64 + 1;
        if self.policy == FullPolicy::DropNewest
            && self.waiting_bytes.load(Ordering::Relaxed) + size > self.max_bytes
        {
            self.dropped_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Ok(mut state) = self.write.lock() else {
            return;
        };
        self.waiting_bytes.fetch_add(size, Ordering::Relaxed);
        if self.policy == FullPolicy::DropOldest {
            self.evict_for(&mut state);
        }
        let mut record = std::mem::take(&mut state.line);
        record.clear();
        record.extend_from_slice(line.as_bytes());
        record.push(b'\n');
        let written = match &mut state.file {
            Some(file) => file.write_all(&record),
            None => match open_segment(&segment_path(&self.dir, state.segment)) {
                Ok(mut file) => {
                    let written = file.write_all(&record);
                    state.file = Some(file);
                    written
                }
                Err(err) => Err(err),
            },
        };
        match written {
            Ok(()) => {
                state.size += size;
                state.unsynced = true;
                self.waiting_docs.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                self.dropped_io.fetch_add(1, Ordering::Relaxed);
                sub(&self.waiting_bytes, size);
                let path = segment_path(&self.dir, state.segment);
                if let Some(suppressed) = APPEND_FAILED.check(&err.kind()) {
                    tracing::error!(path = %path.display(), %err, "cannot append to the OpenSearch spool; document lost{suppressed}");
                }
                // A partial write leaves a torn line: cut it off (the reader never reads past
                // the last complete line of the segment being written), or, when that fails
                // too, continue in a new segment, where the torn line ends a finished one.
                if state
                    .file
                    .as_ref()
                    .is_none_or(|file| file.set_len(state.size).is_err())
                {
                    state.size = self.segment_bytes;
                }
            }
        }
        state.line = record;
        self.notify.notify_one();
        if state.size >= self.segment_bytes
            && let Err(err) = self.roll(&mut state)
            && let Some(suppressed) = ROLL_FAILED.check()
        {
            tracing::error!(%err, "cannot start a new OpenSearch spool segment{suppressed}");
        }
    }

    /// Fsyncs what was appended since the last call and wakes the bulk task.
    pub fn flush(&self) {
        let Ok(mut state) = self.write.lock() else {
            return;
        };
        if state.unsynced {
            self.restore_if_deleted(&mut state);
            if let Some(file) = &state.file
                && let Err(err) = file.sync_data()
                && let Some(suppressed) = FSYNC_FAILED.check()
            {
                tracing::warn!(segment = state.segment, %err, "cannot fsync the OpenSearch spool{suppressed}");
            }
            state.unsynced = false;
        }
        drop(state);
        self.notify.notify_one();
    }

    /// The segment being written was deleted or moved from outside: make the directory
    /// again, copy the segment back from its descriptor, write the committed position again
    /// and count the documents of finished segments that are gone.
    fn restore_if_deleted(&self, state: &mut WriteState) {
        let path = segment_path(&self.dir, state.segment);
        let Some(file) = &state.file else {
            return;
        };
        if still_linked(file, &path) {
            return;
        }
        let restored = std::fs::create_dir_all(&self.dir).and_then(|()| copy_back(file, &path));
        let file = match restored {
            Ok(file) => file,
            Err(err) => {
                if let Some(suppressed) = RESTORE_FAILED.check() {
                    tracing::error!(path = %path.display(), %err, "the OpenSearch spool segment was deleted and cannot be restored; writing on into the deleted file{suppressed}");
                }
                return;
            }
        };
        state.file = Some(file);
        self.restored.fetch_add(1, Ordering::Relaxed);
        let committed = self.committed();
        if let Err(err) = self.persist(committed) {
            tracing::error!(%err, "cannot record the OpenSearch spool position again");
        }
        // What is left past the committed position: the restored segment and any finished
        // segment still there. The rest went with the directory.
        let (mut docs, mut bytes) = (0, 0);
        for seq in committed.segment..=state.segment {
            let offset = if seq == committed.segment {
                committed.offset
            } else {
                0
            };
            if let Ok((d, b)) = count_lines(&segment_path(&self.dir, seq), offset) {
                docs += d;
                bytes += b;
            }
        }
        let lost = self
            .waiting_docs
            .load(Ordering::Relaxed)
            .saturating_sub(docs);
        sub(&self.waiting_docs, lost);
        let lost_bytes = self
            .waiting_bytes
            .load(Ordering::Relaxed)
            .saturating_sub(bytes);
        sub(&self.waiting_bytes, lost_bytes);
        self.dropped_deleted.fetch_add(lost, Ordering::Relaxed);
        tracing::error!(
            dir = %self.dir.display(),
            segment = state.segment,
            restored_documents = docs,
            lost_documents = lost,
            "the OpenSearch spool was deleted while the agent ran: made it again and restored the segment being written from its open file"
        );
    }

    fn roll(&self, state: &mut WriteState) -> Result<(), SpoolError> {
        self.restore_if_deleted(state);
        if state.unsynced {
            if let Some(file) = &state.file {
                let _ = file.sync_data();
            }
            state.unsynced = false;
        }
        let next = state.segment + 1;
        let path = segment_path(&self.dir, next);
        let file = open_segment(&path).map_err(io_err(&path))?;
        // Make the new directory entry durable.
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        state.file = Some(file);
        state.segment = next;
        state.size = 0;
        Ok(())
    }

    /// `drop_oldest`: deletes finished segments from the oldest until the pending bytes fit.
    fn evict_for(&self, state: &mut WriteState) {
        while self.waiting_bytes.load(Ordering::Relaxed) > self.max_bytes {
            if state.size > 0 && self.oldest_live() >= state.segment {
                // Everything is in the current segment: finish it so it can go.
                if self.roll(state).is_err() {
                    return;
                }
            }
            let oldest = self.oldest_live();
            if oldest >= state.segment {
                return;
            }
            let Ok(mut committed) = self.committed.lock() else {
                return;
            };
            let path = segment_path(&self.dir, oldest);
            let offset = if committed.segment == oldest {
                committed.offset
            } else {
                0
            };
            let (docs, bytes) = count_lines(&path, offset).unwrap_or((0, 0));
            *committed = Position {
                segment: oldest + 1,
                offset: 0,
            };
            if let Err(err) = self.persist(*committed) {
                tracing::error!(%err, "cannot record the OpenSearch spool position");
            }
            drop(committed);
            let _ = std::fs::remove_file(&path);
            sub(&self.waiting_docs, docs);
            sub(&self.waiting_bytes, bytes);
            self.dropped_evicted.fetch_add(docs, Ordering::Relaxed);
            tracing::warn!(
                segment = oldest,
                docs,
                "OpenSearch spool full: dropped the oldest segment"
            );
        }
    }

    fn oldest_live(&self) -> u64 {
        self.committed().segment
    }

    fn persist(&self, position: Position) -> Result<(), SpoolError> {
        let path = self.dir.join("committed");
        let tmp = self.dir.join("committed.tmp");
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(format!("{} {}\n", position.segment, position.offset).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// Records that every document up to `position` was delivered (or dead-lettered):
    /// `docs` documents and `bytes` bytes. Never moves backwards.
    pub fn commit(&self, position: Position, docs: u64, bytes: u64) -> Result<(), SpoolError> {
        let Ok(mut committed) = self.committed.lock() else {
            return Ok(());
        };
        if position <= *committed {
            return Ok(());
        }
        self.persist(position)?;
        let old = *committed;
        *committed = position;
        drop(committed);
        sub(&self.waiting_docs, docs);
        sub(&self.waiting_bytes, bytes);
        for seq in old.segment..position.segment {
            let _ = std::fs::remove_file(segment_path(&self.dir, seq));
        }
        Ok(())
    }

    /// The reader's cursor, starting at the committed position.
    pub fn cursor(&self) -> Position {
        self.committed()
    }

    /// Reads complete documents from `cursor` until about `max_bytes` (at least one when
    /// available) and advances the cursor. Skips a torn line at the end of a finished
    /// segment, and jumps over segments evicted meanwhile.
    pub fn read(&self, cursor: &mut Position, max_bytes: usize) -> Result<Vec<Entry>, SpoolError> {
        let mut entries = Vec::new();
        let mut total = 0usize;
        let committed = self.committed();
        if *cursor < committed {
            *cursor = committed;
        }
        loop {
            // Read the write segment before reading the file: a segment older than it was
            // finished before this read started, so an incomplete last line there is torn.
            let writing = self.write.lock().map_or(cursor.segment, |s| s.segment);
            let path = segment_path(&self.dir, cursor.segment);
            let file = match File::open(&path) {
                Ok(file) => Some(file),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
                Err(err) => return Err(io_err(&path)(err)),
            };
            let mut at_end = true;
            if let Some(mut file) = file {
                file.seek(SeekFrom::Start(cursor.offset))
                    .map_err(io_err(&path))?;
                let mut reader = BufReader::with_capacity(1 << 16, file);
                let mut buf = Vec::new();
                loop {
                    if total >= max_bytes {
                        return Ok(entries);
                    }
                    buf.clear();
                    let n = reader.read_until(b'\n', &mut buf).map_err(io_err(&path))?;
                    if n == 0 || buf.last() != Some(&b'\n') {
                        // End of data, or an incomplete line.
                        at_end = n == 0;
                        break;
                    }
                    cursor.offset += n as u64;
                    total += n;
                    buf.pop();
                    entries.push(Entry {
                        line: String::from_utf8_lossy(&buf).into_owned(),
                        end: *cursor,
                    });
                }
            }
            if cursor.segment >= writing {
                return Ok(entries);
            }
            if !at_end {
                tracing::warn!(
                    segment = cursor.segment,
                    "skipping a torn line at the end of an OpenSearch spool segment"
                );
            }
            // A finished segment: continue with the next one.
            *cursor = Position {
                segment: cursor.segment + 1,
                offset: 0,
            };
        }
    }
}

fn sub(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(n))
    });
}
