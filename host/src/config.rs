//! Agent configuration: a strict TOML file whose every key is documented in
//! `kpulse.example.toml`. Unknown keys and bad values are errors that name the key and line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::sinks::opensearch::config::OpenSearchConfig;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The `toml` error text already carries the line, column and offending key.
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config file {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The whole agent configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Region written into every document and metric (HUATUO's `--region`).
    pub region: String,
    /// Directory scanned and watched for `*.wasm` plugins.
    pub plugin_dir: PathBuf,
    /// Directory for the local event store and the compiled-plugin cache.
    pub data_dir: PathBuf,
    /// Plugin names that are never loaded (HUATUO's `BlackList`).
    pub denylist: Vec<String>,
    pub http: HttpConfig,
    pub metrics: MetricsConfig,
    pub runtime: RuntimeConfig,
    pub storage: StorageConfig,
    pub policy: PolicyConfig,
    /// Per-plugin tables, passed to the plugin's `init` as a JSON object. The keys
    /// `deadline_ms` and `memory_mib` are read by the host too.
    pub plugins: BTreeMap<String, toml::Table>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            region: "default".to_owned(),
            plugin_dir: PathBuf::from("target/plugins"),
            data_dir: PathBuf::from("kpulse-data"),
            denylist: Vec::new(),
            http: HttpConfig::default(),
            metrics: MetricsConfig::default(),
            runtime: RuntimeConfig::default(),
            storage: StorageConfig::default(),
            policy: PolicyConfig::default(),
            plugins: BTreeMap::new(),
        }
    }
}

/// The HTTP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address; HUATUO's port is 19704.
    pub listen: SocketAddr,
    /// When set, mutating endpoints accept any client that sends `Authorization: Bearer
    /// <token>`. When unset they answer loopback clients only.
    pub bearer_token: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 19704)),
            bearer_token: None,
        }
    }
}

/// The `/metrics` exposition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Prefix of every metric name. `huatuo_bamai` reproduces HUATUO's names.
    pub prefix: String,
    /// Add `host` and `region` labels to plugin metrics, as HUATUO does (its dashboards
    /// filter on them).
    pub host_labels: bool,
    /// Series a plugin may return per scrape; the excess is dropped and counted.
    pub max_series_per_plugin: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            prefix: "kpulse".to_owned(),
            host_labels: true,
            max_series_per_plugin: 10_000,
        }
    }
}

/// The wasm runtime and the plugin supervisor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Default deadline of one guest call, in milliseconds (`[plugins.<name>] deadline_ms`
    /// overrides it per plugin).
    pub deadline_ms: u64,
    /// Default linear-memory cap per plugin instance, in MiB (`memory_mib` per plugin).
    pub memory_mib: u64,
    /// Consecutive failures after which a plugin is quarantined until started by hand.
    pub quarantine_after: u32,
    /// Upper bound of the exponential restart back-off, in seconds.
    pub max_backoff_secs: u64,
    /// Quiet period after the last change to a plugin file before it is (re)loaded.
    pub reload_debounce_ms: u64,
    /// Cache compiled plugins on disk under `<data_dir>/cache`.
    pub compile_cache: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            deadline_ms: 1000,
            memory_mib: 64,
            quarantine_after: 5,
            max_backoff_secs: 300,
            reload_debounce_ms: 150,
            compile_cache: true,
        }
    }
}

/// The local event store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Keep the local NDJSON store (`<data_dir>/events/<tracer>.ndjson`).
    pub local: bool,
    /// Rotate a tracer's file at this size, in MiB.
    pub rotation_size_mib: u64,
    /// Rotated files kept per tracer.
    pub max_rotated_files: u32,
    /// Documents queued for writing before `storage.save` starts dropping (and counting).
    pub queue_capacity: usize,
    /// Largest accepted `tracer_data`, in KiB.
    pub max_document_kib: usize,
    /// `[storage.opensearch]`: also bulk-index every document into OpenSearch or
    /// Elasticsearch (see `docs/opensearch.md`).
    pub opensearch: Option<OpenSearchConfig>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            local: true,
            rotation_size_mib: 100,
            max_rotated_files: 10,
            queue_capacity: 65_536,
            max_document_kib: 1024,
            opensearch: None,
        }
    }
}

/// What plugins may touch, on top of what each declares.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Path prefixes any plugin may read when it declares them.
    pub allow_read: Vec<String>,
    /// Extra prefixes that are denied even when declared and allowed.
    pub deny_read: Vec<String>,
    /// Mount point of the cgroup filesystem (v1 hierarchy root or v2 mount).
    pub cgroup_root: PathBuf,
    /// Plugins allowed to load BPF (they must also declare the `bpf` capability): plugin
    /// names, or `sha256:<hex>` digests of plugin files. A digest pins an exact build; a
    /// name trusts whoever can write the plugin directory. Defaults to the built-in
    /// collectors' names.
    pub bpf_allow: Vec<String>,
    /// Plugins allowed to symbolize kernel addresses (`kallsyms` capability): names or
    /// `sha256:<hex>`. Defaults to the built-in collectors' names.
    pub kallsyms_allow: Vec<String>,
}

/// The built-in plugins that use BPF.
pub const BUILTIN_BPF_PLUGINS: [&str; 7] = [
    "softirq",
    "oom",
    "softlockup",
    "hungtask",
    "memreclaim",
    "dropwatch",
    "net_rx_latency",
];

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            allow_read: vec!["/proc".to_owned(), "/sys".to_owned()],
            deny_read: Vec::new(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            bpf_allow: BUILTIN_BPF_PLUGINS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            kallsyms_allow: BUILTIN_BPF_PLUGINS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

impl Config {
    /// Loads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_owned(),
            message: err.to_string().trim_end().to_owned(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
        if !is_metric_name(&self.metrics.prefix) {
            return Err(invalid(
                "metrics.prefix",
                format!(
                    "{:?} is not a valid Prometheus name prefix",
                    self.metrics.prefix
                ),
            ));
        }
        if self.runtime.deadline_ms == 0 {
            return Err(invalid(
                "runtime.deadline_ms",
                "must be at least 1".to_owned(),
            ));
        }
        if self.runtime.memory_mib == 0 || self.runtime.memory_mib > 4096 {
            return Err(invalid(
                "runtime.memory_mib",
                "must be between 1 and 4096".to_owned(),
            ));
        }
        if self.runtime.quarantine_after == 0 {
            return Err(invalid(
                "runtime.quarantine_after",
                "must be at least 1".to_owned(),
            ));
        }
        if self.storage.rotation_size_mib == 0 {
            return Err(invalid(
                "storage.rotation_size_mib",
                "must be at least 1".to_owned(),
            ));
        }
        if self.storage.queue_capacity == 0 {
            return Err(invalid(
                "storage.queue_capacity",
                "must be at least 1".to_owned(),
            ));
        }
        for (key, prefixes) in [
            ("policy.allow_read", &self.policy.allow_read),
            ("policy.deny_read", &self.policy.deny_read),
        ] {
            for prefix in prefixes {
                if !prefix.starts_with('/') || prefix.split('/').any(|part| part == "..") {
                    return Err(invalid(
                        key,
                        format!("{prefix:?} must be an absolute path without '..'"),
                    ));
                }
            }
        }
        if self.metrics.max_series_per_plugin == 0 {
            return Err(invalid(
                "metrics.max_series_per_plugin",
                "must be at least 1".to_owned(),
            ));
        }
        if self.storage.max_document_kib == 0 {
            return Err(invalid(
                "storage.max_document_kib",
                "must be at least 1".to_owned(),
            ));
        }
        if let Some(opensearch) = &self.storage.opensearch
            && let Err((key, message)) = opensearch.validate()
        {
            return Err(invalid(&format!("storage.opensearch.{key}"), message));
        }
        for (name, table) in &self.plugins {
            for (key, parse) in [("deadline_ms", 1..=600_000), ("memory_mib", 1..=4096)] {
                if let Some(value) = table.get(key) {
                    let ok = value.as_integer().is_some_and(|v| parse.contains(&v));
                    if !ok {
                        return Err(invalid(
                            &format!("plugins.{name}.{key}"),
                            format!(
                                "must be an integer between {} and {}",
                                parse.start(),
                                parse.end()
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The per-call deadline for one plugin.
    pub fn deadline_ms(&self, plugin: &str) -> u64 {
        self.plugin_int(plugin, "deadline_ms")
            .unwrap_or(self.runtime.deadline_ms)
    }

    /// The memory cap for one plugin, in bytes.
    pub fn memory_bytes(&self, plugin: &str) -> u64 {
        self.plugin_int(plugin, "memory_mib")
            .unwrap_or(self.runtime.memory_mib)
            * 1024
            * 1024
    }

    /// The plugin's table as the JSON object passed to `init`.
    pub fn plugin_config_json(&self, plugin: &str) -> String {
        self.plugins
            .get(plugin)
            .and_then(|table| serde_json::to_string(table).ok())
            .unwrap_or_else(|| "{}".to_owned())
    }

    fn plugin_int(&self, plugin: &str, key: &str) -> Option<u64> {
        self.plugins
            .get(plugin)?
            .get(key)?
            .as_integer()
            .and_then(|v| u64::try_from(v).ok())
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*` without colons, which are reserved for recording rules.
pub fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_config_gives_defaults() {
        let config = parse("").expect("empty config is valid");
        assert_eq!(config.http.listen.port(), 19704);
        assert_eq!(config.metrics.prefix, "kpulse");
        assert_eq!(config.runtime.memory_mib, 64);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = parse("region = \"x\"\n[http]\nlisten_addr = \"1.2.3.4:5\"\n")
            .expect_err("unknown key must fail")
            .to_string();
        assert!(err.contains("listen_addr"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = parse("[plugins.loadavg]\ndeadline_ms = 0\n")
            .expect_err("zero deadline must fail")
            .to_string();
        assert!(err.contains("plugins.loadavg.deadline_ms"), "{err}");
    }

    #[test]
    fn opensearch_table_is_strict_and_validated() {
        let config = parse(
            "[storage.opensearch]\naddresses = [\"http://127.0.0.1:9200\"]\nindex = \"huatuo_bamai\"\nindex_mode = \"fixed\"\n",
        )
        .expect("valid");
        let opensearch = config.storage.opensearch.expect("table present");
        assert_eq!(opensearch.index, "huatuo_bamai");
        let err = parse("[storage.opensearch]\nconcurrency = 0\n")
            .expect_err("zero concurrency")
            .to_string();
        assert!(err.contains("storage.opensearch.concurrency"), "{err}");
        let err = parse("[storage.opensearch]\nadress = []\n")
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("adress"), "{err}");
    }

    #[test]
    fn plugin_table_becomes_json() {
        let config = parse("[plugins.example]\nthreshold = 2.5\n").expect("valid");
        assert_eq!(config.plugin_config_json("example"), r#"{"threshold":2.5}"#);
        assert_eq!(config.plugin_config_json("other"), "{}");
    }
}
