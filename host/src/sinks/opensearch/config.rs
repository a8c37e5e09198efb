//! `[storage.opensearch]`: where and how documents are indexed.

use std::path::PathBuf;

use serde::Deserialize;

/// How documents are distributed over indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexMode {
    /// `<index>-YYYY.MM.DD` from the document's `@timestamp` (UTC).
    Daily,
    /// One fixed index named `<index>` (HUATUO: `huatuo_bamai`).
    Fixed,
    /// A data stream named `<index>` (the template declares it).
    DataStream,
}

/// What happens to new documents when the spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Refuse the incoming document (counted as `dropped{reason="spool_full"}`).
    DropNewest,
    /// Delete the oldest spooled segment to make room (`dropped{reason="spool_evicted"}`).
    DropOldest,
}

/// The OpenSearch / Elasticsearch sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenSearchConfig {
    /// Turn the sink off without deleting the table.
    pub enabled: bool,
    /// Base URLs of the cluster's HTTP endpoints, used round-robin (`http://` or `https://`).
    pub addresses: Vec<String>,
    /// HTTP basic authentication (both or neither).
    pub username: Option<String>,
    pub password: Option<String>,
    /// `Authorization: Bearer <token>`.
    pub bearer_token: Option<String>,
    /// Elasticsearch API key (`Authorization: ApiKey <key>`, the base64 `id:key`).
    pub api_key: Option<String>,
    /// PEM file of the CA that signed the cluster's certificate (added to the system roots).
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate. Insecure: for tests only; must be set explicitly.
    pub insecure_skip_verify: bool,
    /// `daily` (default), `fixed` or `data_stream`.
    pub index_mode: IndexMode,
    /// Daily: the prefix (`kpulse-events` gives `kpulse-events-2025.01.31`). Fixed: the index.
    /// Data stream: the stream's name.
    pub index: String,
    /// Install (overwrite) the index template `<index>` at start.
    pub install_template: bool,
    /// `index.mapping.total_fields.limit` of the template: caps the fields `tracer_data`
    /// can add dynamically.
    pub total_fields_limit: u32,
    /// Shards and replicas of new indices (a single node needs 0 replicas to be green).
    pub number_of_shards: u32,
    pub number_of_replicas: u32,
    /// Delete indices older than this many days with an ISM policy (needs the
    /// index-management plugin). 0: no policy.
    pub retention_days: u32,
    /// Send a bulk request once this many bytes are pending, in KiB.
    pub flush_kib: usize,
    /// ... or once the oldest pending document is this old, in milliseconds.
    pub flush_interval_ms: u64,
    /// Bulk requests in flight at once.
    pub concurrency: usize,
    /// Timeout of one HTTP request, in seconds.
    pub request_timeout_secs: u64,
    /// First retry delay and upper bound of the jittered exponential back-off, in ms.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// On-disk spool bound, in MiB.
    pub spool_max_mib: u64,
    /// Spool segment size, in MiB.
    pub spool_segment_mib: u64,
    /// `drop_newest` (default) or `drop_oldest`.
    pub spool_full_policy: FullPolicy,
}

impl Default for OpenSearchConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            addresses: vec!["http://127.0.0.1:9200".to_owned()],
            username: None,
            password: None,
            bearer_token: None,
            api_key: None,
            ca_file: None,
            insecure_skip_verify: false,
            index_mode: IndexMode::Daily,
            index: "kpulse-events".to_owned(),
            install_template: true,
            total_fields_limit: 1000,
            number_of_shards: 1,
            number_of_replicas: 0,
            retention_days: 0,
            flush_kib: 5 * 1024,
            flush_interval_ms: 1000,
            concurrency: 2,
            request_timeout_secs: 30,
            backoff_initial_ms: 100,
            backoff_max_ms: 30_000,
            spool_max_mib: 1024,
            spool_segment_mib: 16,
            spool_full_policy: FullPolicy::DropNewest,
        }
    }
}

impl OpenSearchConfig {
    /// Checks the values; the error is `(key below storage.opensearch, message)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.addresses.is_empty() {
            return Err(("addresses", "must list at least one URL".to_owned()));
        }
        for address in &self.addresses {
            let ok = reqwest::Url::parse(address)
                .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.has_host());
            if !ok {
                return Err((
                    "addresses",
                    format!("{address:?} is not an http:// or https:// URL"),
                ));
            }
        }
        if self.username.is_some() != self.password.is_some() {
            return Err((
                "username",
                "username and password must be set together".to_owned(),
            ));
        }
        let schemes = usize::from(self.username.is_some())
            + usize::from(self.bearer_token.is_some())
            + usize::from(self.api_key.is_some());
        if schemes > 1 {
            return Err((
                "bearer_token",
                "set only one of username/password, bearer_token, api_key".to_owned(),
            ));
        }
        let index_ok = !self.index.is_empty()
            && self.index.len() <= 200
            && !self.index.starts_with(['-', '_', '+', '.'])
            && self.index.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            });
        if !index_ok {
            return Err((
                "index",
                format!(
                    "{:?} is not a valid index name (lowercase letters, digits, '-', '_', '.')",
                    self.index
                ),
            ));
        }
        for (key, value) in [
            ("flush_kib", self.flush_kib as u64),
            ("flush_interval_ms", self.flush_interval_ms),
            ("concurrency", self.concurrency as u64),
            ("request_timeout_secs", self.request_timeout_secs),
            ("backoff_initial_ms", self.backoff_initial_ms),
            ("spool_max_mib", self.spool_max_mib),
            ("spool_segment_mib", self.spool_segment_mib),
            ("total_fields_limit", u64::from(self.total_fields_limit)),
            ("number_of_shards", u64::from(self.number_of_shards)),
        ] {
            if value == 0 {
                return Err((key, "must be at least 1".to_owned()));
            }
        }
        if self.concurrency > 64 {
            return Err(("concurrency", "must be at most 64".to_owned()));
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return Err((
                "backoff_max_ms",
                "must be at least backoff_initial_ms".to_owned(),
            ));
        }
        if self.spool_segment_mib > self.spool_max_mib {
            return Err((
                "spool_segment_mib",
                "must not exceed spool_max_mib".to_owned(),
            ));
        }
        Ok(())
    }
}
