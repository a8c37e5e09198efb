//! `dead-letter.ndjson`: documents the cluster rejected for good, with the reason.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use super::metrics::Stats;
use crate::logging::{REPEAT_INTERVAL, RateLimit, RateLimitBy};

/// A mapping conflict rejects every document of a tracer: one line per status per interval.
static REJECTED: RateLimitBy<u16> = RateLimitBy::new(REPEAT_INTERVAL);
static WRITE_FAILED: RateLimit = RateLimit::new(REPEAT_INTERVAL);

/// The dead-letter file; appends are serialized.
#[derive(Debug)]
pub(super) struct DeadLetter {
    path: Mutex<PathBuf>,
}

impl DeadLetter {
    pub(super) fn new(path: PathBuf) -> Self {
        Self {
            path: Mutex::new(path),
        }
    }

    /// Appends a rejected document with the reason, and counts it as rejected.
    pub(super) fn write(&self, stats: &Stats, index: &str, status: u16, reason: &str, line: &str) {
        stats.rejected.fetch_add(1, Ordering::Relaxed);
        let document: Value =
            serde_json::from_str(line).unwrap_or_else(|_| Value::String(line.to_owned()));
        let record = json!({
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "index": index,
            "status": status,
            "reason": reason,
            "document": document,
        });
        if let Some(suppressed) = REJECTED.check(&status) {
            tracing::warn!(%index, status, %reason, "OpenSearch rejected a document; written to the dead-letter file{suppressed}");
        }
        let Ok(path) = self.path.lock() else {
            return;
        };
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&*path)
            .and_then(|mut file| file.write_all(format!("{record}\n").as_bytes()));
        if let Err(err) = written {
            stats.dead_letter_errors.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = WRITE_FAILED.check() {
                tracing::error!(path = %path.display(), %err, "cannot write the OpenSearch dead-letter file{suppressed}");
            }
        }
    }
}
