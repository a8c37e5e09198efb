//! `[storage.opensearch]`: where and how documents are indexed.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use crate::config::types::{
    Bounded, Millis, PositiveU32, Seconds, Secret, SizeKib, SizeMib, checked_strings,
};

/// Bulk requests in flight at once: 1 to 64.
pub type Concurrency = Bounded<1, 64>;

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

/// How the sink authenticates: `[storage.opensearch.auth]` (or `auth = { ... }`), a table
/// tagged by `type`. No table: no authentication.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "AuthTable")]
pub enum Auth {
    /// `type = "basic"`: HTTP basic authentication.
    Basic { username: String, password: Secret },
    /// `type = "api_key"`: `Authorization: ApiKey <key>` (Elasticsearch; the base64 `id:key`).
    ApiKey { key: Secret },
    /// `type = "bearer"`: `Authorization: Bearer <token>`.
    Bearer { token: Secret },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum AuthType {
    Basic,
    ApiKey,
    Bearer,
}

/// The `auth` table as written. Deserialized field by field (not as a serde-tagged enum,
/// which buffers the table and loses the values' lines), so a bad value is reported at its
/// own line; [`Auth::try_from`] then checks that the keys fit the `type`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthTable {
    #[serde(rename = "type")]
    kind: AuthType,
    username: Option<String>,
    password: Option<Secret>,
    key: Option<Secret>,
    token: Option<Secret>,
}

impl TryFrom<AuthTable> for Auth {
    type Error = String;

    fn try_from(table: AuthTable) -> Result<Self, String> {
        let AuthTable {
            kind,
            username,
            password,
            key,
            token,
        } = table;
        let (name, takes) = match kind {
            AuthType::Basic => ("basic", "username and password"),
            AuthType::ApiKey => ("api_key", "key"),
            AuthType::Bearer => ("bearer", "token"),
        };
        let present = [
            ("username", username.is_some()),
            ("password", password.is_some()),
            ("key", key.is_some()),
            ("token", token.is_some()),
        ];
        let wanted: &[&str] = match kind {
            AuthType::Basic => &["username", "password"],
            AuthType::ApiKey => &["key"],
            AuthType::Bearer => &["token"],
        };
        for (field, set) in present {
            if set && !wanted.contains(&field) {
                return Err(format!(
                    "`{field}` does not apply to type = \"{name}\", which takes {takes}"
                ));
            }
            if !set && wanted.contains(&field) {
                return Err(format!("type = \"{name}\" needs `{field}`"));
            }
        }
        Ok(match (username, password, key, token) {
            (Some(username), Some(password), None, None) => {
                if username.is_empty() {
                    return Err("`username` must not be empty".to_owned());
                }
                Auth::Basic { username, password }
            }
            (None, None, Some(key), None) => Auth::ApiKey { key },
            (None, None, None, Some(token)) => Auth::Bearer { token },
            _ => return Err(format!("type = \"{name}\" takes {takes}")),
        })
    }
}

/// An `http://` or `https://` URL with a host (`addresses`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HttpUrl(String);

impl HttpUrl {
    pub fn check(address: &str) -> Result<(), String> {
        let ok = reqwest::Url::parse(address)
            .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.has_host());
        if ok {
            Ok(())
        } else {
            Err(format!("{address:?} is not an http:// or https:// URL"))
        }
    }

    /// Checks a whole address list: at least one, each a URL.
    pub fn check_list(addresses: &[String]) -> Result<(), String> {
        if addresses.is_empty() {
            return Err("must list at least one URL".to_owned());
        }
        addresses
            .iter()
            .try_for_each(|address| Self::check(address))
    }

    /// For `#[serde(deserialize_with = "HttpUrl::list")]` on a `Vec<String>` field: at least
    /// one URL.
    pub fn list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
        let urls = checked_strings::<D, Self>(deserializer)?;
        if urls.is_empty() {
            return Err(serde::de::Error::custom("must list at least one URL"));
        }
        Ok(urls.into_iter().map(|url| url.0).collect())
    }
}

impl TryFrom<String> for HttpUrl {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        Self::check(&value).map(|()| Self(value))
    }
}

/// An index, index prefix or data stream name: lowercase letters, digits, `-`, `_`, `.`, not
/// starting with `-`, `_`, `+` or `.`, at most 200 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct IndexName(String);

impl IndexName {
    pub fn check(index: &str) -> Result<(), String> {
        let ok = !index.is_empty()
            && index.len() <= 200
            && !index.starts_with(['-', '_', '+', '.'])
            && index.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            });
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{index:?} is not a valid index name (lowercase letters, digits, '-', '_', '.')"
            ))
        }
    }

    /// For `#[serde(deserialize_with = "IndexName::field")]` on a `String` field.
    pub fn field<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
        Self::deserialize(deserializer).map(|index| index.0)
    }
}

impl TryFrom<String> for IndexName {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        Self::check(&value).map(|()| Self(value))
    }
}

/// The OpenSearch / Elasticsearch sink. Single values are checked as the file is read (with
/// their line); [`OpenSearchConfig::validate`] checks the combinations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenSearchConfig {
    /// Turn the sink off without deleting the table.
    pub enabled: bool,
    /// Base URLs of the cluster's HTTP endpoints, used round-robin (`http://` or `https://`).
    #[serde(deserialize_with = "HttpUrl::list")]
    pub addresses: Vec<String>,
    /// Authentication; `None`: none.
    pub auth: Option<Auth>,
    /// Deprecated spellings of `auth`, still accepted: `username` + `password` (basic),
    /// `bearer_token`, `api_key`. [`crate::config::Config::parse`] moves them into `auth`
    /// (with a warning) and leaves these `None`.
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub bearer_token: Option<Secret>,
    pub api_key: Option<Secret>,
    /// PEM file of the CA that signed the cluster's certificate (added to the system roots).
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate. Insecure: for tests only; must be set explicitly.
    pub insecure_skip_verify: bool,
    /// `daily` (default), `fixed` or `data_stream`.
    pub index_mode: IndexMode,
    /// Daily: the prefix (`kpulse-events` gives `kpulse-events-2025.01.31`). Fixed: the index.
    /// Data stream: the stream's name.
    #[serde(deserialize_with = "IndexName::field")]
    pub index: String,
    /// Install (overwrite) the index template `<index>` at start.
    pub install_template: bool,
    /// `index.mapping.total_fields.limit` of the template: caps the fields `tracer_data`
    /// can add dynamically.
    #[serde(deserialize_with = "PositiveU32::field")]
    pub total_fields_limit: u32,
    /// Shards and replicas of new indices (a single node needs 0 replicas to be green).
    #[serde(deserialize_with = "PositiveU32::field")]
    pub number_of_shards: u32,
    pub number_of_replicas: u32,
    /// Delete indices older than this many days with an ISM policy (needs the
    /// index-management plugin). 0: no policy.
    pub retention_days: u32,
    /// Send a bulk request once this many bytes are pending, in KiB.
    #[serde(deserialize_with = "SizeKib::field")]
    pub flush_kib: usize,
    /// ... or once the oldest pending document is this old, in milliseconds.
    #[serde(deserialize_with = "Millis::field")]
    pub flush_interval_ms: u64,
    /// Bulk requests in flight at once (1 to 64).
    #[serde(deserialize_with = "Concurrency::field")]
    pub concurrency: usize,
    /// Timeout of one HTTP request, in seconds.
    #[serde(deserialize_with = "Seconds::field")]
    pub request_timeout_secs: u64,
    /// First retry delay and upper bound of the jittered exponential back-off, in ms.
    #[serde(deserialize_with = "Millis::field")]
    pub backoff_initial_ms: u64,
    #[serde(deserialize_with = "Millis::field")]
    pub backoff_max_ms: u64,
    /// On-disk spool bound, in MiB.
    #[serde(deserialize_with = "SizeMib::field")]
    pub spool_max_mib: u64,
    /// Spool segment size, in MiB.
    #[serde(deserialize_with = "SizeMib::field")]
    pub spool_segment_mib: u64,
    /// `drop_newest` (default) or `drop_oldest`.
    pub spool_full_policy: FullPolicy,
}

impl Default for OpenSearchConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            addresses: vec!["http://127.0.0.1:9200".to_owned()],
            auth: None,
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
    /// Checks the values; the error is `(key below storage.opensearch, message)`. From a file
    /// only the combinations can still fail here: the single values were checked, with
    /// their line, as it was read. The single checks are repeated (with the same types) for
    /// a config built in code.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        HttpUrl::check_list(&self.addresses).map_err(|message| ("addresses", message))?;
        IndexName::check(&self.index).map_err(|message| ("index", message))?;
        let ranges = [
            ("flush_kib", SizeKib::check(self.flush_kib)),
            ("flush_interval_ms", Millis::check(self.flush_interval_ms)),
            ("concurrency", Concurrency::check(self.concurrency)),
            (
                "request_timeout_secs",
                Seconds::check(self.request_timeout_secs),
            ),
            ("backoff_initial_ms", Millis::check(self.backoff_initial_ms)),
            ("backoff_max_ms", Millis::check(self.backoff_max_ms)),
            ("spool_max_mib", SizeMib::check(self.spool_max_mib)),
            ("spool_segment_mib", SizeMib::check(self.spool_segment_mib)),
            (
                "total_fields_limit",
                PositiveU32::check(self.total_fields_limit),
            ),
            (
                "number_of_shards",
                PositiveU32::check(self.number_of_shards),
            ),
        ];
        for (key, checked) in ranges {
            checked.map_err(|err| (key, err.to_string()))?;
        }
        if self.username.is_some() != self.password.is_some() {
            return Err((
                if self.username.is_some() { "username" } else { "password" },
                "username and password must be set together (deprecated: use auth = { type = \"basic\", username, password })".to_owned(),
            ));
        }
        if self.username.as_deref() == Some("") {
            return Err(("username", "must not be empty".to_owned()));
        }
        let schemes = [
            ("auth", self.auth.is_some()),
            ("username", self.username.is_some()),
            ("bearer_token", self.bearer_token.is_some()),
            ("api_key", self.api_key.is_some()),
        ];
        let mut set = schemes.iter().filter(|(_, set)| *set).map(|(key, _)| *key);
        if let (Some(_), Some(second)) = (set.next(), set.next()) {
            return Err((
                second,
                "set only one of auth, username/password, bearer_token, api_key (the last three are deprecated spellings of auth)".to_owned(),
            ));
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return Err((
                "backoff_max_ms",
                format!(
                    "must be at least backoff_initial_ms ({}), got {}",
                    self.backoff_initial_ms, self.backoff_max_ms
                ),
            ));
        }
        if self.spool_segment_mib > self.spool_max_mib {
            return Err((
                "spool_segment_mib",
                format!(
                    "must not exceed spool_max_mib ({}), got {}",
                    self.spool_max_mib, self.spool_segment_mib
                ),
            ));
        }
        Ok(())
    }

    /// Moves the deprecated `username`/`password`, `bearer_token` or `api_key` into `auth`;
    /// returns the keys that were used. Call after [`Self::validate`].
    pub fn migrate_deprecated_auth(&mut self) -> Vec<&'static str> {
        let mut used = Vec::new();
        if let (Some(username), Some(password)) = (self.username.take(), self.password.take()) {
            used.extend(["username", "password"]);
            self.auth = Some(Auth::Basic { username, password });
        }
        if let Some(token) = self.bearer_token.take() {
            used.push("bearer_token");
            self.auth = Some(Auth::Bearer { token });
        }
        if let Some(key) = self.api_key.take() {
            used.push("api_key");
            self.auth = Some(Auth::ApiKey { key });
        }
        used
    }
}
