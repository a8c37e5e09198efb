//! The cluster client: bulk requests, the index template, the ISM policy and searches.
//!
//! Why a plain `reqwest` client and not the `opensearch` crate: the agent needs four
//! endpoints (`_bulk`, `_index_template`, `_plugins/_ism/policies`, `_search`) with bodies it
//! already has as bytes, and must talk to both OpenSearch and Elasticsearch; the official
//! clients are tied to one product, pull in a larger dependency tree (and its TLS choice),
//! and add nothing to NDJSON we build ourselves. `reqwest` is built with rustls on *ring*:
//! no OpenSSL, no aws-lc-rs (no cmake/C toolchain), and it resolves on Rust 1.95.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::config::{Auth as ConfigAuth, IndexMode, OpenSearchConfig};

/// A failed exchange with the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot read the CA file {path}: {source}")]
    CaFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid CA file {path}: {source}")]
    CaParse {
        path: std::path::PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("{method} {url}: {}", describe(.source))]
    Transport {
        method: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {url}: HTTP {status}{}: {body}", hint(*.status))]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        body: String,
    },
}

impl ServiceError {
    /// The HTTP status, when the cluster answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ServiceError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

fn describe(err: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    // A failed TLS handshake is a connect error too; point at the certificate, not the
    // network (rustls says e.g. "invalid peer certificate: UnknownIssuer").
    if text.contains("certificate") {
        text.push_str(
            " (TLS: the cluster's certificate is not trusted: set ca_file to the CA that signed it, or check the address's host name)",
        );
    } else if text.contains("InvalidContentType") || text.contains("corrupt message") {
        // rustls read something that is not a TLS record: a plain-HTTP endpoint answered.
        text.push_str(
            " (TLS: the endpoint does not speak TLS: is the address https:// where the cluster serves http://?)",
        );
    } else if err.is_connect() {
        text.push_str(" (cluster unreachable)");
    } else if err.is_timeout() {
        text.push_str(" (timed out)");
    }
    text
}

fn hint(status: u16) -> &'static str {
    match status {
        401 => " (authentication failed: check storage.opensearch.auth)",
        403 => " (permission denied for this user)",
        429 => " (cluster is rejecting writes: too many requests)",
        _ => "",
    }
}

enum Auth {
    None,
    Basic(String, String),
    Header(String),
}

/// The client for one cluster.
pub struct Service {
    client: reqwest::Client,
    addresses: Vec<String>,
    next: AtomicUsize,
    auth: Auth,
    mode: IndexMode,
    index: String,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("addresses", &self.addresses)
            .finish()
    }
}

impl Service {
    pub fn new(config: &OpenSearchConfig) -> Result<Self, ServiceError> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.request_timeout_secs))
            .connect_timeout(Duration::from_secs(config.request_timeout_secs.min(10)))
            .pool_max_idle_per_host(config.concurrency)
            .user_agent(concat!("kpulse/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|source| ServiceError::CaFile {
                path: path.clone(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                ServiceError::CaParse {
                    path: path.clone(),
                    source,
                }
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if config.insecure_skip_verify {
            tracing::warn!(
                "storage.opensearch.insecure_skip_verify is set: the cluster's certificate is not verified"
            );
            builder = builder.danger_accept_invalid_certs(true);
        }
        let client = builder.build().map_err(ServiceError::Client)?;
        let auth = match &config.auth {
            Some(ConfigAuth::Basic { username, password }) => {
                Auth::Basic(username.clone(), password.expose().to_owned())
            }
            Some(ConfigAuth::Bearer { token }) => {
                Auth::Header(format!("Bearer {}", token.expose()))
            }
            Some(ConfigAuth::ApiKey { key }) => Auth::Header(format!("ApiKey {}", key.expose())),
            None => Auth::None,
        };
        Ok(Self {
            client,
            addresses: config
                .addresses
                .iter()
                .map(|a| a.trim_end_matches('/').to_owned())
                .collect(),
            next: AtomicUsize::new(0),
            auth,
            mode: config.index_mode,
            index: config.index.clone(),
        })
    }

    /// The next address (round-robin).
    fn base(&self) -> &str {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        &self.addresses[n % self.addresses.len()]
    }

    /// Sends one request; non-2xx statuses are errors carrying the body.
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(Vec<u8>, &'static str)>,
    ) -> Result<Vec<u8>, ServiceError> {
        let url = format!("{}{path}", self.base());
        let name: &'static str = match method.as_str() {
            "PUT" => "PUT",
            "POST" => "POST",
            _ => "GET",
        };
        let mut request = self.client.request(method, &url);
        request = match &self.auth {
            Auth::None => request,
            Auth::Basic(user, password) => request.basic_auth(user, Some(password)),
            Auth::Header(value) => request.header(reqwest::header::AUTHORIZATION, value),
        };
        if let Some((body, content_type)) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body);
        }
        let transport = |source| ServiceError::Transport {
            method: name,
            url: url.clone(),
            source,
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(transport)?;
        if !(200..300).contains(&status) {
            let mut body = String::from_utf8_lossy(&bytes).into_owned();
            body.truncate(2000);
            return Err(ServiceError::Status {
                method: name,
                url,
                status,
                body,
            });
        }
        Ok(bytes.to_vec())
    }

    /// `POST /_bulk` with an NDJSON body; returns the response body, trimmed by the cluster
    /// to what the sink reads (see `bulk::BulkResponse`).
    pub async fn bulk(&self, body: Vec<u8>) -> Result<Vec<u8>, ServiceError> {
        self.request(
            reqwest::Method::POST,
            "/_bulk?filter_path=errors,items.*.status,items.*.error.type,items.*.error.reason",
            Some((body, "application/x-ndjson")),
        )
        .await
    }

    /// The index (or data stream) a document with this `@timestamp` date goes to.
    pub fn index_for(&self, day: Option<chrono::NaiveDate>) -> String {
        match self.mode {
            IndexMode::Daily => {
                let day = day.unwrap_or_else(|| chrono::Utc::now().date_naive());
                format!("{}-{}", self.index, day.format("%Y.%m.%d"))
            }
            IndexMode::Fixed | IndexMode::DataStream => self.index.clone(),
        }
    }

    /// What searches cover.
    pub fn search_target(&self) -> String {
        match self.mode {
            IndexMode::Daily => format!("{}-*", self.index),
            IndexMode::Fixed | IndexMode::DataStream => self.index.clone(),
        }
    }

    /// Installs (overwrites) the composable index template `<index>`.
    pub async fn install_template(&self, config: &OpenSearchConfig) -> Result<(), ServiceError> {
        let body = template_body(config);
        self.request(
            reqwest::Method::PUT,
            &format!("/_index_template/{}", config.index),
            Some((body.to_string().into_bytes(), "application/json")),
        )
        .await
        .map(|_| ())
    }

    /// Installs the ISM retention policy `<index>-retention`. `Ok(false)`: the cluster has
    /// no index-management plugin.
    pub async fn install_retention(&self, config: &OpenSearchConfig) -> Result<bool, ServiceError> {
        let body = json!({
            "policy": {
                "description": format!("kpulse: delete {} indices after {} days", config.index, config.retention_days),
                "default_state": "hot",
                "states": [
                    {"name": "hot", "actions": [], "transitions": [
                        {"state_name": "delete", "conditions": {"min_index_age": format!("{}d", config.retention_days)}}
                    ]},
                    {"name": "delete", "actions": [{"delete": {}}], "transitions": []}
                ],
                "ism_template": [{"index_patterns": [self.search_target()], "priority": 100}]
            }
        });
        let path = format!("/_plugins/_ism/policies/{}-retention", config.index);
        match self
            .request(
                reqwest::Method::PUT,
                &path,
                Some((body.to_string().into_bytes(), "application/json")),
            )
            .await
        {
            Ok(_) => Ok(true),
            // 409: the policy exists (updating needs seq_no/primary_term; keep it).
            Err(err) if err.status() == Some(409) => Ok(true),
            // No such endpoint: plugin absent (OpenSearch answers 400 "no handler").
            Err(err) if matches!(err.status(), Some(400 | 404 | 405)) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// `POST <target>/_search`; returns the hits' `_source`s.
    pub async fn search(&self, query: &Value) -> Result<Vec<Value>, ServiceError> {
        let path = format!(
            "/{}/_search?ignore_unavailable=true&allow_no_indices=true",
            self.search_target()
        );
        let bytes = self
            .request(
                reqwest::Method::POST,
                &path,
                Some((query.to_string().into_bytes(), "application/json")),
            )
            .await?;
        let response: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(response["hits"]["hits"]
            .as_array()
            .map(|hits| hits.iter().map(|hit| hit["_source"].clone()).collect())
            .unwrap_or_default())
    }
}

/// The index template: keywords for names and ids, dates for the three times, `tracer_data`
/// a dynamic object whose strings become keywords, and a field limit.
pub fn template_body(config: &OpenSearchConfig) -> Value {
    let patterns = match config.index_mode {
        IndexMode::Daily => vec![format!("{}-*", config.index)],
        IndexMode::Fixed | IndexMode::DataStream => vec![config.index.clone()],
    };
    let keyword = json!({"type": "keyword"});
    let huatuo_time = json!({
        "type": "date",
        "format": "yyyy-MM-dd HH:mm:ss.SSS Z||strict_date_optional_time||epoch_millis"
    });
    let mut body = json!({
        "index_patterns": patterns,
        "priority": 200,
        "_meta": {"managed_by": "kpulse"},
        "template": {
            "settings": {
                "index.number_of_shards": config.number_of_shards,
                "index.number_of_replicas": config.number_of_replicas,
                "index.mapping.total_fields.limit": config.total_fields_limit,
            },
            "mappings": {
                "dynamic_templates": [
                    {"strings_as_keywords": {
                        "match_mapping_type": "string",
                        "mapping": {"type": "keyword", "ignore_above": 1024}
                    }}
                ],
                "properties": {
                    "@timestamp": {"type": "date"},
                    "uploaded_time": {"type": "date"},
                    "tracer_time": huatuo_time,
                    "time": {"type": "keyword"},
                    "hostname": keyword,
                    "region": keyword,
                    "container_id": keyword,
                    "container_hostname": keyword,
                    "container_host_namespace": keyword,
                    "container_type": keyword,
                    "container_qos": keyword,
                    "container_name": keyword,
                    "container_image": keyword,
                    "pod_name": keyword,
                    "cgroup_path": keyword,
                    "tracer_name": keyword,
                    "tracer_id": keyword,
                    "tracer_type": keyword,
                    "tracer_data": {"type": "object", "dynamic": true}
                }
            }
        }
    });
    if config.index_mode == IndexMode::DataStream {
        // `{}`: OpenSearch defaults the timestamp field to `@timestamp`, and Elasticsearch
        // 7.9+/8 reject the `timestamp_field` key OpenSearch would also accept.
        body["data_stream"] = json!({});
    }
    body
}
