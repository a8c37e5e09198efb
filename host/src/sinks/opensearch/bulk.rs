//! Bulk requests: routing each spooled document to its index, the NDJSON body, and settling
//! the response item by item (indexed, duplicate, retried or dead-lettered).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::Deserialize;
use serde_json::json;

use super::OpenSearchSink;
use super::retry::{self, Class};
use super::spool::{Entry, Position};

/// Fields of a document the sink needs to route it.
#[derive(Deserialize)]
struct Routing {
    tracer_id: Option<String>,
    #[serde(rename = "@timestamp")]
    timestamp: Option<String>,
}

/// One bulk item: its action line, its document and where it ends in the spool.
#[derive(Debug, Clone)]
pub(super) struct Item {
    pub(super) action: String,
    pub(super) entry: Entry,
    pub(super) index: String,
    /// The `_id` it is created with (`tracer_id`), if the document has one.
    pub(super) id: Option<String>,
}

/// A batch sent as one (or, after retries, several) bulk request(s).
pub(super) struct Batch {
    pub(super) seq: u64,
    pub(super) items: Vec<Item>,
    /// Documents that could not even be routed (not a JSON object): dead-lettered directly.
    pub(super) invalid: Vec<Entry>,
    pub(super) end: Position,
    pub(super) docs: u64,
    pub(super) bytes: u64,
}

impl Batch {
    /// Routes `entries` (in spool order) with `index_for`, which maps a document's
    /// `@timestamp` date to its index.
    pub(super) fn new(
        seq: u64,
        entries: Vec<Entry>,
        index_for: impl Fn(Option<chrono::NaiveDate>) -> String,
    ) -> Self {
        let end = entries.last().map(|e| e.end).unwrap_or_default();
        let docs = entries.len() as u64;
        let bytes = entries.iter().map(|e| e.line.len() as u64 + 1).sum();
        let mut items = Vec::with_capacity(entries.len());
        let mut invalid = Vec::new();
        for entry in entries {
            // Only an object is a document: serde also reads a struct from an array
            // (`["id","2024-..."]`), which the cluster would refuse (found by
            // fuzz/fuzz_targets/bulk_response.rs).
            let object = entry.line.trim_start().starts_with('{');
            match serde_json::from_str::<Routing>(&entry.line)
                .ok()
                .filter(|_| object)
            {
                Some(routing) => {
                    let day = routing
                        .timestamp
                        .as_deref()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| t.with_timezone(&chrono::Utc).date_naive());
                    let index = index_for(day);
                    let id = routing.tracer_id.filter(|id| !id.is_empty());
                    let action = match &id {
                        Some(id) => json!({"create": {"_index": index, "_id": id}}),
                        None => json!({"create": {"_index": index}}),
                    };
                    items.push(Item {
                        action: action.to_string(),
                        entry,
                        index,
                        id,
                    });
                }
                None => invalid.push(entry),
            }
        }
        Self {
            seq,
            items,
            invalid,
            end,
            docs,
            bytes,
        }
    }
}

/// The NDJSON body of one bulk request: an action line and a document line per item.
pub(super) fn request_body(items: &[Item]) -> Vec<u8> {
    let mut body = Vec::with_capacity(
        items
            .iter()
            .map(|i| i.action.len() + i.entry.line.len() + 2)
            .sum(),
    );
    for item in items {
        body.extend_from_slice(item.action.as_bytes());
        body.push(b'\n');
        body.extend_from_slice(item.entry.line.as_bytes());
        body.push(b'\n');
    }
    body
}

/// A `_bulk` response: `{"took", "errors", "items": [{"create" | "index": {...}}]}`. The
/// request's `filter_path` keeps only `errors` and the items' `status` and `error`; every
/// field is optional so that a trimmed (or foreign) response still parses.
#[derive(Debug, Deserialize)]
pub(super) struct BulkResponse {
    pub(super) took: Option<u64>,
    pub(super) errors: Option<bool>,
    pub(super) items: Option<Vec<BulkItem>>,
}

/// One entry of `items`: the outcome under its action's name.
#[derive(Debug, Deserialize)]
pub(super) struct BulkItem {
    #[serde(rename = "create", alias = "index", alias = "update", alias = "delete")]
    pub(super) result: Option<ItemResult>,
}

/// The outcome of one item.
#[derive(Debug, Deserialize)]
pub(super) struct ItemResult {
    #[serde(rename = "_id")]
    pub(super) id: Option<String>,
    pub(super) status: Option<u16>,
    pub(super) error: Option<ItemError>,
}

/// Why an item failed.
#[derive(Debug, Deserialize)]
pub(super) struct ItemError {
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) reason: Option<String>,
}

impl ItemResult {
    /// `type: reason`, for logs and the dead-letter file.
    fn reason(&self) -> String {
        let (kind, reason) = self.error.as_ref().map_or(("error", ""), |e| {
            (
                e.kind.as_deref().unwrap_or("error"),
                e.reason.as_deref().unwrap_or(""),
            )
        });
        format!("{kind}: {reason}")
    }
}

/// Reason given for an item the response does not describe.
const NOT_IN_RESPONSE: &str = "the bulk response does not describe this document";

/// An item rejected for good.
#[derive(Debug)]
pub(super) struct Rejected {
    pub(super) item: Item,
    pub(super) status: u16,
    pub(super) reason: String,
}

/// Why the first retried item of a response was refused (one warning per response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RetryCause {
    pub(super) status: u16,
    pub(super) reason: String,
    pub(super) index: String,
}

/// What one bulk response says about the items sent.
#[derive(Debug, Default)]
pub(super) struct Settlement {
    pub(super) indexed: u64,
    pub(super) duplicates: u64,
    /// To send again (429, 5xx, 401/403, and items the response does not describe).
    pub(super) retry: Vec<Item>,
    pub(super) retry_cause: Option<RetryCause>,
    /// Of `retry`, the items the response did not describe (too few items, an `_id` that
    /// does not match, or a body that is not a bulk response).
    pub(super) missing: usize,
    /// To dead-letter.
    pub(super) rejected: Vec<Rejected>,
}

/// Reads the body of a `_bulk` response to `items` (sent in this order). An item the
/// response does not describe is retried: `create` is idempotent (a re-send of a document
/// that made it answers 409, counted as delivered), so nothing is lost or counted twice.
pub(super) fn settle(items: Vec<Item>, body: &[u8]) -> Settlement {
    let response = serde_json::from_slice::<BulkResponse>(body).ok();
    let results = response
        .as_ref()
        .and_then(|r| r.items.as_deref())
        .unwrap_or_default();
    if let Some(response) = &response {
        tracing::trace!(took_ms = ?response.took, errors = ?response.errors, items = results.len(), "bulk response");
    }
    let mut settled = Settlement::default();
    for (n, item) in items.into_iter().enumerate() {
        let result = results
            .get(n)
            .and_then(|r| r.result.as_ref())
            // An `_id` other than the one sent: the items are not in request order.
            .filter(|r| match (&r.id, &item.id) {
                (Some(got), Some(sent)) => got == sent,
                _ => true,
            });
        let status = match result {
            Some(r) => r.status.unwrap_or(500),
            None => {
                settled.missing += 1;
                500
            }
        };
        match retry::classify(status) {
            Class::Indexed => settled.indexed += 1,
            Class::Duplicate => settled.duplicates += 1,
            Class::Retry => {
                if settled.retry_cause.is_none() {
                    settled.retry_cause = Some(RetryCause {
                        status,
                        reason: result
                            .map_or_else(|| NOT_IN_RESPONSE.to_owned(), ItemResult::reason),
                        index: item.index.clone(),
                    });
                }
                settled.retry.push(item);
            }
            Class::Reject => {
                let reason = result.map_or_else(String::new, ItemResult::reason);
                settled.rejected.push(Rejected {
                    item,
                    status,
                    reason,
                });
            }
        }
    }
    settled
}

impl OpenSearchSink {
    /// Sends one batch until every item is indexed, a duplicate, or dead-lettered.
    pub(super) async fn send(self: Arc<Self>, batch: Batch) -> (u64, Position, u64, u64) {
        for entry in &batch.invalid {
            self.dead_letter
                .write(&self.stats, "", 0, "document is not JSON", &entry.line);
        }
        let mut items = batch.items;
        let mut backoff = self.backoff();
        while !items.is_empty() {
            let body = request_body(&items);
            let size = body.len() as u64;
            let started = Instant::now();
            let result = self.service.bulk(body).await;
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.stats.bulk_requests.fetch_add(1, Ordering::Relaxed);
            self.stats.bulk_micros.fetch_add(micros, Ordering::Relaxed);
            self.stats.bulk_last_micros.store(micros, Ordering::Relaxed);
            self.stats.bulk_bytes.fetch_add(size, Ordering::Relaxed);
            let retry = match result {
                Ok(response) => self.apply(settle(items, &response)),
                Err(err) => {
                    self.stats.bulk_failures.fetch_add(1, Ordering::Relaxed);
                    let transient = err.status().is_none_or(retry::retry_request);
                    if transient {
                        let delay = backoff.next_delay();
                        // Errors are logged on the first failure and then on every 10th.
                        if backoff.count() % 10 == 1 {
                            tracing::error!(%err, docs = items.len(), attempt = backoff.count(), retry_in = ?delay, "OpenSearch bulk request failed; documents stay spooled and will be retried");
                        }
                        self.stats
                            .retried
                            .fetch_add(items.len() as u64, Ordering::Relaxed);
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    // A permanent whole-request failure (e.g. 413): dead-letter the items.
                    tracing::error!(%err, docs = items.len(), "OpenSearch rejected a bulk request; documents dead-lettered");
                    let reason = err.to_string();
                    for item in &items {
                        self.dead_letter.write(
                            &self.stats,
                            &item.index,
                            err.status().unwrap_or(0),
                            &reason,
                            &item.entry.line,
                        );
                    }
                    Vec::new()
                }
            };
            if !retry.is_empty() {
                self.stats
                    .retried
                    .fetch_add(retry.len() as u64, Ordering::Relaxed);
                let delay = backoff.next_delay();
                if backoff.count() % 10 == 1 {
                    tracing::warn!(docs = retry.len(), retry_in = ?delay, "OpenSearch asked to retry some documents (429/5xx)");
                }
                tokio::time::sleep(delay).await;
            }
            items = retry;
        }
        (batch.seq, batch.end, batch.docs, batch.bytes)
    }

    /// Counts a settled response and dead-letters its rejected items; returns the items to
    /// send again.
    pub(super) fn apply(&self, settled: Settlement) -> Vec<Item> {
        self.stats
            .indexed
            .fetch_add(settled.indexed, Ordering::Relaxed);
        self.stats
            .duplicates
            .fetch_add(settled.duplicates, Ordering::Relaxed);
        if let Some(cause) = &settled.retry_cause {
            // One line per response, naming the first failure's cause.
            tracing::warn!(
                status = cause.status,
                reason = %cause.reason,
                index = %cause.index,
                "OpenSearch refused some documents for now; they stay spooled and are retried"
            );
        }
        if settled.missing > 0 {
            tracing::warn!(
                missing = settled.missing,
                "the OpenSearch bulk response does not describe every document sent; those are sent again"
            );
        }
        for rejected in &settled.rejected {
            self.dead_letter.write(
                &self.stats,
                &rejected.item.index,
                rejected.status,
                &rejected.reason,
                &rejected.item.entry.line,
            );
        }
        settled.retry
    }
}
