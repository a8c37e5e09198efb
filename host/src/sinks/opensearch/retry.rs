//! Back-off and classification of bulk outcomes.

use std::time::Duration;

/// What to do with one item (or a whole request) given its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Indexed now (`201`/`200`).
    Indexed,
    /// `409` on `create`: a document with this `_id` already exists, so an earlier attempt
    /// (before a crash or a lost response) succeeded. Counts as delivered.
    Duplicate,
    /// Transient: `429` and `5xx`. Re-send later.
    Retry,
    /// Permanent: every other `4xx` (mapping conflicts, bad documents). Dead-letter it.
    Reject,
}

/// Classifies one item status.
pub fn classify(status: u16) -> Class {
    match status {
        200..=299 => Class::Indexed,
        409 => Class::Duplicate,
        // 401/403 on an item (e.g. allowed to write but not to create the index) are fixed
        // by the operator, not by the document: keep it and retry, never dead-letter.
        401 | 403 | 429 | 500..=599 => Class::Retry,
        _ => Class::Reject,
    }
}

/// Whether a whole bulk request that answered `status` must be retried (as opposed to
/// reading its items). Authentication and authorization failures are retried too: they are
/// configuration or cluster problems, and dead-lettering would lose every document.
pub fn retry_request(status: u16) -> bool {
    matches!(status, 401 | 403 | 408 | 429 | 500..=599)
}

/// Jittered exponential back-off ("full jitter" between half and all of the step).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial_ms: u64, max_ms: u64) -> Self {
        Self {
            initial_ms: initial_ms.max(1),
            max_ms: max_ms.max(initial_ms.max(1)),
            attempt: 0,
        }
    }

    /// The next delay; grows ×2 per call up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .initial_ms
            .saturating_mul(1u64 << self.attempt.min(32))
            .min(self.max_ms);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        Duration::from_millis(half + fastrand::u64(0..=step - half))
    }

    /// Attempts so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}
