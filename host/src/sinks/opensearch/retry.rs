//! Classification of bulk outcomes: what to do with an item, or a whole request, given its
//! HTTP status. The back-off itself is [`crate::backoff::Backoff`].

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
