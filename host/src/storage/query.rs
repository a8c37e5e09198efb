//! Reading documents back for `GET /events`: newest first, across rotated files, skipping
//! lines that are not documents.
//!
//! A line that is not a JSON document with an `@timestamp` (torn by a crash, garbage
//! written by something else, invalid UTF-8, longer than any document can be) is skipped
//! and counted once in `storage_corrupt_lines`: lines are told apart by device, inode and
//! offset, which a rotation (a rename) keeps. A file that cannot be opened or read is
//! skipped with a rate-limited warning; neither ever fails the query.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::document::is_tracer_name;
use super::writer::rotated_path;
use super::{Store, StoreInner};
use crate::logging::{REPEAT_INTERVAL, RateLimit};

/// A line of a local file: device, inode, byte offset.
pub(super) type LineId = (u64, u64, u64);

/// Corrupt lines remembered as counted; past this the memory is cleared (and lines seen
/// again are counted again).
const MAX_CORRUPT_REMEMBERED: usize = 65_536;

/// Longest line read as a document: a `tracer_data` of `storage.max_document_kib` (at least
/// the default 1 MiB, so that lowering the limit keeps older documents readable) plus the
/// envelope. Longer lines are skipped without being buffered.
const ENVELOPE_BYTES: usize = 64 * 1024;
const MIN_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Files that cannot be read, logged at most once per interval.
static UNREADABLE: RateLimit = RateLimit::new(REPEAT_INTERVAL);

/// Filters of `GET /events`.
#[derive(Debug, Clone)]
pub struct EventQuery {
    pub tracer: Option<String>,
    pub container: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: usize,
}

impl Store {
    /// Documents matching `query`, newest first.
    pub fn query(&self, query: &EventQuery) -> std::io::Result<Vec<Value>> {
        let tracers: Vec<String> = match &query.tracer {
            Some(tracer) if is_tracer_name(tracer) => vec![tracer.clone()],
            Some(_) => return Ok(Vec::new()),
            None => self.tracers()?,
        };
        let mut found: Vec<(DateTime<Utc>, Value)> = Vec::new();
        for tracer in tracers {
            for path in self.files_newest_first(&tracer) {
                let matched = scan_file(&self.inner, &path, query);
                let enough = matched.len() >= query.limit;
                found.extend(matched);
                // Files are in time order, so a file that filled the limit is the last one
                // this tracer needs.
                if enough {
                    break;
                }
            }
        }
        found.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
        found.truncate(query.limit);
        Ok(found.into_iter().map(|(_, doc)| doc).collect())
    }

    fn tracers(&self) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        let entries = match std::fs::read_dir(&self.inner.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(names),
            Err(err) => return Err(err),
        };
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(tracer) = name.strip_suffix(".ndjson") {
                names.push(tracer.to_owned());
            }
        }
        Ok(names)
    }

    fn files_newest_first(&self, tracer: &str) -> Vec<PathBuf> {
        let current = self.inner.dir.join(format!("{tracer}.ndjson"));
        let mut files = vec![current.clone()];
        for n in 1.. {
            let rotated = rotated_path(&current, n);
            if !rotated.exists() {
                break;
            }
            files.push(rotated);
        }
        files
    }
}

/// Matches of one file, newest first, at most `query.limit`. Lines that are not documents
/// are skipped and counted; a file that cannot be read gives what was read of it.
fn scan_file(inner: &StoreInner, path: &Path, query: &EventQuery) -> Vec<(DateTime<Utc>, Value)> {
    let mut matched = Vec::new();
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return matched,
        Err(err) => {
            unreadable(path, &err);
            return matched;
        }
    };
    let (dev, ino) = match file.metadata() {
        Ok(meta) => (meta.dev(), meta.ino()),
        Err(err) => {
            unreadable(path, &err);
            return matched;
        }
    };
    let max_line = inner.max_document_bytes.max(MIN_DOCUMENT_BYTES) + ENVELOPE_BYTES;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut buf = Vec::new();
    let mut offset = 0u64;
    loop {
        buf.clear();
        let line = match read_line(&mut reader, &mut buf, max_line) {
            Ok(None) => break,
            Ok(Some(line)) => line,
            Err(err) => {
                unreadable(path, &err);
                break;
            }
        };
        let at_offset = offset;
        offset += line.bytes;
        let Some((at, doc)) = line.fits.then(|| parse(&buf)).flatten() else {
            // The last line of the file being written may be a document half-appended right
            // now: it is not a corrupt line (yet).
            if line.terminated {
                inner.corrupt(dev, ino, at_offset);
            }
            continue;
        };
        if query.since.is_some_and(|since| at < since)
            || query.until.is_some_and(|until| at > until)
        {
            continue;
        }
        if let Some(container) = &query.container {
            let id = doc
                .get("container_id")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !id.starts_with(container.as_str()) || container.is_empty() {
                continue;
            }
        }
        matched.push((at, doc));
    }
    matched.reverse();
    matched.truncate(query.limit);
    matched
}

/// One line read: its length with the newline, whether it fits the buffer, whether it ends
/// with a newline.
struct LineRead {
    bytes: u64,
    fits: bool,
    terminated: bool,
}

/// Reads one line into `buf` (without the newline) if it has at most `max` bytes; a longer
/// one is skipped, not buffered. `None` at the end of the file.
fn read_line(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<LineRead>> {
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let n = std::io::Read::take(&mut *reader, limit).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Some(LineRead {
            bytes: n as u64,
            fits: true,
            terminated: true,
        }));
    }
    if n <= max {
        // The end of the file without a newline.
        return Ok(Some(LineRead {
            bytes: n as u64,
            fits: true,
            terminated: false,
        }));
    }
    let rest = reader.skip_until(b'\n')?;
    Ok(Some(LineRead {
        bytes: (n + rest) as u64,
        fits: false,
        terminated: rest > 0,
    }))
}

/// A stored document and its time, or `None` for a line that is not one.
fn parse(line: &[u8]) -> Option<(DateTime<Utc>, Value)> {
    let doc = serde_json::from_slice::<Value>(line).ok()?;
    let at = doc
        .get("@timestamp")
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())?
        .with_timezone(&Utc);
    Some((at, doc))
}

fn unreadable(path: &Path, err: &std::io::Error) {
    if let Some(suppressed) = UNREADABLE.check() {
        tracing::warn!(path = %path.display(), %err, "cannot read a local store file; skipped in /events{suppressed}");
    }
}

impl StoreInner {
    /// Counts a corrupt line unless it was counted already.
    fn corrupt(&self, dev: u64, ino: u64, offset: u64) {
        let Ok(mut seen) = self.corrupt_seen.lock() else {
            return;
        };
        if seen.len() >= MAX_CORRUPT_REMEMBERED {
            seen.clear();
        }
        if seen.insert((dev, ino, offset)) {
            self.stats.corrupt_lines.fetch_add(1, Ordering::Relaxed);
        }
    }
}
