//! Agent configuration: a strict TOML file whose every key is documented in
//! `kpulse.example.toml`. Unknown keys and bad values are errors that name the key and line.
//!
//! Values are checked by their types while the file is read ([`types`]: ranges, secrets,
//! names, paths), so `toml` reports them with their span; [`Config::parse`] turns the span
//! into the line, column and dotted key. Only combinations of keys are checked afterwards,
//! and those errors are located by looking the key up in the text.

pub mod span;
pub mod types;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

pub use self::span::Location;
pub use self::types::Secret;
use self::types::{
    Bounded, DeadlineMs, MemoryMib, MetricPrefix, PathPrefix, Positive, PositiveU32, Seconds,
    SizeKib, SizeMib,
};
pub use crate::sinks::opensearch::config::{Auth as OpenSearchAuth, OpenSearchConfig};

/// Upper bound of the plugin restart back-off: 0 to one day, in seconds.
type BackoffSecs = Bounded<0, 86_400>;
/// Reload debounce: 0 to one minute, in milliseconds.
type DebounceMs = Bounded<0, 60_000>;
/// Interval between BPF cost windows: 0 (off) to one day, in seconds.
type CostEverySecs = Bounded<0, 86_400>;
/// One BPF cost window: 1 ms to 10 s.
type CostWindowMs = Bounded<1, 10_000>;
/// Documents queued for the store's writer: the channel allocates its slots up front.
type QueueCapacity = Bounded<1, 1_048_576>;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, a bad value or a bad combination of values. Reads
    /// `invalid config file <path>, line <n>, column <m>: <key>: <message>`; the source line
    /// is not quoted, as it may hold a secret.
    #[error("invalid config file {}{}: {}{message}", .path.display(), At(*.at), Key(.key.as_deref()))]
    Invalid {
        path: PathBuf,
        /// Where the offending key or value is, when the error has a place in the file.
        at: Option<Location>,
        /// The dotted key (`storage.queue_capacity`, `policy.allow_read[1]`), when known.
        key: Option<String>,
        message: String,
    },
}

struct At(Option<Location>);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(at) => write!(f, ", line {}, column {}", at.line, at.column),
            None => Ok(()),
        }
    }
}

struct Key<'a>(Option<&'a str>);

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(key) => write!(f, "{key}: "),
            None => Ok(()),
        }
    }
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
    pub containers: crate::containers::ContainersConfig,
    pub profiler: crate::profiler::ProfilerConfig,
    /// Per-plugin tables, passed to the plugin's `init` as a JSON object. The keys
    /// `deadline_ms` and `memory_mib` are read (and checked) by the host too.
    #[serde(deserialize_with = "plugin_tables")]
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
            containers: crate::containers::ContainersConfig::default(),
            profiler: crate::profiler::ProfilerConfig::default(),
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
    pub bearer_token: Option<Secret>,
    /// node_exporter's web-config YAML (TLS, basic auth); `--web.config.file` overrides it.
    /// Checked at start-up: a bad file stops the agent.
    pub web_config_file: Option<PathBuf>,
    /// Largest request body, in KiB (413 above); routes may have smaller limits.
    #[serde(deserialize_with = "SizeKib::field")]
    pub max_request_body_kib: u64,
    /// Time a client has to send a request head, from the accept or its first byte (and
    /// for the TLS handshake), in seconds.
    #[serde(deserialize_with = "Seconds::field")]
    pub header_read_timeout_secs: u64,
    /// Time a keep-alive connection may wait for its next request, in seconds.
    #[serde(deserialize_with = "Seconds::field")]
    pub idle_timeout_secs: u64,
    /// Requests per second per client address (IPv6: per /64) after the burst; 0 disables.
    #[serde(deserialize_with = "RatePerSecond::field")]
    pub rate_limit_per_second: u64,
    /// Requests a client may send at once before the rate applies.
    #[serde(deserialize_with = "RatePerSecond::field")]
    pub rate_limit_burst: u64,
}

/// Requests per second or in a burst: 0 to a million.
type RatePerSecond = Bounded<0, 1_000_000>;

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 19704)),
            bearer_token: None,
            web_config_file: None,
            max_request_body_kib: 1024,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 120,
            rate_limit_per_second: 50,
            rate_limit_burst: 200,
        }
    }
}

/// The `/metrics` exposition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Prefix of every metric name. `huatuo_bamai` reproduces HUATUO's names.
    #[serde(deserialize_with = "MetricPrefix::field")]
    pub prefix: String,
    /// Add `host` and `region` labels to plugin metrics, as HUATUO does (its dashboards
    /// filter on them).
    pub host_labels: bool,
    /// Series a plugin may return per scrape; the excess is dropped and counted.
    #[serde(deserialize_with = "Positive::field")]
    pub max_series_per_plugin: usize,
    /// How often BPF run-time statistics are switched on for one window to measure each
    /// plugin's BPF cost (`plugin_bpf_run_seconds_total`), seconds; 0 = never. Counting
    /// costs every program run two clock reads, so it is sampled rather than left on.
    #[serde(deserialize_with = "CostEverySecs::field")]
    pub bpf_cost_every_secs: u64,
    /// How long one such window lasts, milliseconds (1..=10000).
    #[serde(deserialize_with = "CostWindowMs::field")]
    pub bpf_cost_window_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            prefix: "kpulse".to_owned(),
            host_labels: true,
            max_series_per_plugin: 10_000,
            bpf_cost_every_secs: 60,
            bpf_cost_window_ms: 1000,
        }
    }
}

/// The wasm runtime and the plugin supervisor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Default deadline of one guest call, in milliseconds (`[plugins.<name>] deadline_ms`
    /// overrides it per plugin). 1 to 600000.
    #[serde(deserialize_with = "DeadlineMs::field")]
    pub deadline_ms: u64,
    /// Default linear-memory cap per plugin instance, in MiB (`memory_mib` per plugin).
    /// 1 to 4096.
    #[serde(deserialize_with = "MemoryMib::field")]
    pub memory_mib: u64,
    /// Consecutive failures after which a plugin is quarantined until started by hand.
    #[serde(deserialize_with = "PositiveU32::field")]
    pub quarantine_after: u32,
    /// Upper bound of the exponential restart back-off, in seconds (at most a day).
    #[serde(deserialize_with = "BackoffSecs::field")]
    pub max_backoff_secs: u64,
    /// Quiet period after the last change to a plugin file before it is (re)loaded, in
    /// milliseconds (at most a minute).
    #[serde(deserialize_with = "DebounceMs::field")]
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
    #[serde(deserialize_with = "SizeMib::field")]
    pub rotation_size_mib: u64,
    /// Rotated files kept per tracer.
    pub max_rotated_files: u32,
    /// Documents queued for writing before `storage.save` starts dropping (and counting).
    #[serde(deserialize_with = "QueueCapacity::field")]
    pub queue_capacity: usize,
    /// Largest accepted `tracer_data`, in KiB.
    #[serde(deserialize_with = "SizeKib::field")]
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
    #[serde(deserialize_with = "PathPrefix::list")]
    pub allow_read: Vec<String>,
    /// Extra prefixes that are denied even when declared and allowed.
    #[serde(deserialize_with = "PathPrefix::list")]
    pub deny_read: Vec<String>,
    /// Where the host finds what guests read as `/proc` (node_exporter's `--path.procfs`,
    /// HUATUO's `--procfs-prefix`): `/host/proc` in a DaemonSet that mounts the node's
    /// `/proc` there, or a recorded tree in fixture tests. Guests keep asking for `/proc/...`.
    pub proc_root: PathBuf,
    /// Where the host finds what guests read as `/sys` (`--path.sysfs`).
    pub sys_root: PathBuf,
    /// Where the host finds what guests read as `/sys/fs/cgroup` (v1 hierarchy root or v2
    /// mount); `<sys_root>/fs/cgroup` when unset.
    pub cgroup_root: Option<PathBuf>,
    /// Plugins allowed to load BPF (they must also declare the `bpf` capability): plugin
    /// names, or `sha256:<hex>` digests of plugin files. A digest pins an exact build; a
    /// name trusts whoever can write the plugin directory. Defaults to the built-in
    /// collectors' names.
    pub bpf_allow: Vec<String>,
    /// Plugins allowed to symbolize kernel addresses (`kallsyms` capability): names or
    /// `sha256:<hex>`. Defaults to the built-in collectors' names.
    pub kallsyms_allow: Vec<String>,
    /// Plugins allowed to read the container registry (`containers` capability): names,
    /// `sha256:<hex>`, or `*` for every plugin that declares it (the default).
    pub containers_allow: Vec<String>,
    /// Plugins allowed to start CPU profiles (`profile` capability): names or `sha256:<hex>`.
    /// The sampler is privileged BPF run by the host; defaults to the built-in profilers.
    pub profile_allow: Vec<String>,
    /// Plugins allowed netlink queries through the host (`net` capability: links, qdiscs,
    /// cgroup task counts, DCB, RDMA): names, `sha256:<hex>`, or `*` for every plugin that
    /// declares it. Read-only, but it sees every device of the host: defaults to the
    /// built-in collectors that need it.
    pub net_allow: Vec<String>,
    /// Plugins allowed filesystem usage and the mount table (`statfs` capability): names,
    /// `sha256:<hex>`, or `*` for every plugin that declares it (the default).
    pub statfs_allow: Vec<String>,
}

impl PolicyConfig {
    /// The host directory behind the guests' `/sys/fs/cgroup`.
    pub fn cgroup_root(&self) -> PathBuf {
        self.cgroup_root
            .clone()
            .unwrap_or_else(|| self.sys_root.join("fs/cgroup"))
    }
}

/// The built-in plugins that profile through the host (`profile` capability).
pub const BUILTIN_PROFILE_PLUGINS: [&str; 2] = ["cpusys", "cpuidle"];

/// The built-in plugins that query netlink through the host (`net` capability).
pub const BUILTIN_NET_PLUGINS: [&str; 5] = [
    "loadavg",
    "netdev_qdisc",
    "netdev_dcb",
    "netdev_rdma_link",
    "netdev_events",
];

/// The built-in plugins that use BPF.
pub const BUILTIN_BPF_PLUGINS: [&str; 16] = [
    "softirq",
    "oom",
    "softlockup",
    "hungtask",
    "memreclaim",
    "dropwatch",
    "net_rx_latency",
    "iotracing",
    "tcp_retransmit",
    "netdev_txqueue_timeout",
    "ras",
    "iolatency",
    "runqlat",
    "memory_free",
    "memory_reclaim",
    "sched_tick",
];

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            allow_read: vec!["/proc".to_owned(), "/sys".to_owned()],
            deny_read: Vec::new(),
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            cgroup_root: None,
            bpf_allow: BUILTIN_BPF_PLUGINS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            kallsyms_allow: BUILTIN_BPF_PLUGINS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            containers_allow: vec!["*".to_owned()],
            profile_allow: BUILTIN_PROFILE_PLUGINS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            net_allow: BUILTIN_NET_PLUGINS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            statfs_allow: vec!["*".to_owned()],
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
        let mut config: Config = toml::from_str(text).map_err(|err| {
            let offset = err.span().map(|span| span.start);
            ConfigError::Invalid {
                path: path.to_owned(),
                at: offset.map(|offset| Location::of(text, offset)),
                key: offset.and_then(|offset| span::key_at(text, offset)),
                // Without a span the text is the message plus "in `key`".
                message: match offset {
                    Some(_) => err.message().trim_end().to_owned(),
                    None => err.to_string().trim_end().replace('\n', " "),
                },
            }
        })?;
        config.check_combinations(text, path)?;
        Ok(config)
    }

    /// What no single type can check: combinations of keys.
    fn check_combinations(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        // A relative root would depend on the agent's working directory.
        let roots = [
            ("proc_root", Some(&self.policy.proc_root)),
            ("sys_root", Some(&self.policy.sys_root)),
            ("cgroup_root", self.policy.cgroup_root.as_ref()),
        ];
        for (key, root) in roots {
            if let Some(root) = root.filter(|root| !root.is_absolute()) {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    at: span::find_key(text, &["policy", key]),
                    key: Some(format!("policy.{key}")),
                    message: format!("{} is not an absolute path", root.display()),
                });
            }
        }
        if self.http.rate_limit_per_second > 0 && self.http.rate_limit_burst == 0 {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                at: span::find_key(text, &["http", "rate_limit_burst"]),
                key: Some("http.rate_limit_burst".to_owned()),
                message:
                    "must be at least 1 while rate_limit_per_second is set (0 disables the limit)"
                        .to_owned(),
            });
        }
        if let Some(opensearch) = &mut self.storage.opensearch {
            opensearch
                .validate()
                .map_err(|(key, message)| ConfigError::Invalid {
                    path: path.to_owned(),
                    at: span::find_key(text, &["storage", "opensearch", key]),
                    key: Some(format!("storage.opensearch.{key}")),
                    message,
                })?;
            let deprecated = opensearch.migrate_deprecated_auth();
            if !deprecated.is_empty() {
                tracing::warn!(
                    config = %path.display(),
                    keys = ?deprecated,
                    "storage.opensearch: deprecated authentication keys; write [storage.opensearch.auth] with type = \"basic\" (username, password), \"api_key\" (key) or \"bearer\" (token)"
                );
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

/// `[plugins.<name>]` tables: free-form for the plugin, but the host's keys are checked as
/// they are read, so a bad one is reported with its line.
fn plugin_tables<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, toml::Table>, D::Error> {
    let tables = BTreeMap::<String, PluginTable>::deserialize(deserializer)?;
    Ok(tables
        .into_iter()
        .map(|(name, table)| (name, table.0))
        .collect())
}

struct PluginTable(toml::Table);

impl<'de> Deserialize<'de> for PluginTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PluginTable;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of plugin settings")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<PluginTable, A::Error> {
                let mut table = toml::Table::new();
                while let Some(key) = map.next_key::<String>()? {
                    let host = match key.as_str() {
                        "deadline_ms" => Some(map.next_value::<DeadlineMs>()?.get()),
                        "memory_mib" => Some(map.next_value::<MemoryMib>()?.get()),
                        _ => None,
                    };
                    let value = match host {
                        Some(value) => {
                            toml::Value::Integer(i64::try_from(value).unwrap_or(i64::MAX))
                        }
                        None => map.next_value::<toml::Value>()?,
                    };
                    table.insert(key, value);
                }
                Ok(PluginTable(table))
            }
        }

        deserializer.deserialize_map(Visitor)
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

    fn error(text: &str) -> String {
        parse(text)
            .map(|config| format!("unexpectedly valid: {config:?}"))
            .unwrap_or_else(|err| err.to_string())
    }

    #[test]
    fn empty_config_gives_defaults() {
        let config = parse("").expect("empty config is valid");
        assert_eq!(config.http.listen.port(), 19704);
        assert_eq!(config.metrics.prefix, "kpulse");
        assert_eq!(config.runtime.memory_mib, 64);
    }

    #[test]
    fn example_config_is_valid_and_holds_the_defaults() {
        let config = Config::parse(
            include_str!("../../kpulse.example.toml"),
            Path::new("kpulse.example.toml"),
        )
        .expect("kpulse.example.toml is valid");
        let defaults = Config::default();
        assert_eq!(
            format!("{:?}", config.runtime),
            format!("{:?}", defaults.runtime)
        );
        assert_eq!(
            format!(
                "{:?}",
                config
                    .storage
                    .opensearch
                    .map(|o| OpenSearchConfig { enabled: true, ..o })
            ),
            format!("{:?}", Some(OpenSearchConfig::default()))
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = error("region = \"x\"\n[http]\nlisten_addr = \"1.2.3.4:5\"\n");
        assert!(err.contains("http.listen_addr"), "{err}");
        assert!(err.contains("line 3, column 1"), "{err}");
        assert!(
            err.starts_with("invalid config file test.toml, line 3"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let err = error("region = \"x\"\n\n[storage]\nlocal = true\nqueue_capacity = 0\n");
        assert_eq!(
            err,
            "invalid config file test.toml, line 5, column 18: storage.queue_capacity: \
             must be between 1 and 1048576, got 0"
        );
        let err = error("[storage]\nqueue_capacity = -5\n");
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("storage.queue_capacity"), "{err}");
        assert!(err.contains("got -5"), "{err}");
        let err = error("[runtime]\n# comment\nmemory_mib = 5000\n");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("runtime.memory_mib"), "{err}");
        assert!(err.contains("between 1 and 4096, got 5000"), "{err}");
        let err = error("[runtime]\ndeadline_ms = \"fast\"\n");
        assert!(
            err.contains("line 2") && err.contains("runtime.deadline_ms"),
            "{err}"
        );
        let err = error("[metrics]\n\nprefix = \"bad-prefix\"\n");
        assert!(
            err.contains("line 3") && err.contains("metrics.prefix"),
            "{err}"
        );
        let err = error("[policy]\nallow_read = [\"/proc\",\n  \"sys\"]\n");
        assert!(
            err.contains("line 3") && err.contains("policy.allow_read[1]"),
            "{err}"
        );
        let err = error("[runtime]\nquarantine_after = 0\n");
        assert!(
            err.contains("runtime.quarantine_after: must be at least 1, got 0"),
            "{err}"
        );
    }

    #[test]
    fn plugin_host_keys_name_key_and_line() {
        let err = error("[plugins.loadavg]\nthreshold = 1\ndeadline_ms = 0\n");
        assert!(err.contains("plugins.loadavg.deadline_ms"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        let err = error("[plugins.loadavg]\nmemory_mib = -1\n");
        assert!(err.contains("plugins.loadavg.memory_mib"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let config = parse("[plugins.loadavg]\ndeadline_ms = 500\nmemory_mib = 16\nx = \"y\"\n")
            .expect("valid");
        assert_eq!(config.deadline_ms("loadavg"), 500);
        assert_eq!(config.memory_bytes("loadavg"), 16 << 20);
        assert_eq!(config.deadline_ms("other"), 1000);
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let err = error("region = \"x\"\n[http\n");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn opensearch_table_is_strict_and_validated() {
        let config = parse(
            "[storage.opensearch]\naddresses = [\"http://127.0.0.1:9200\"]\nindex = \"huatuo_bamai\"\nindex_mode = \"fixed\"\n",
        )
        .expect("valid");
        let opensearch = config.storage.opensearch.expect("table present");
        assert_eq!(opensearch.index, "huatuo_bamai");
        let err = error("[storage.opensearch]\nconcurrency = 0\n");
        assert!(err.contains("storage.opensearch.concurrency"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let err = error("[storage.opensearch]\nconcurrency = 65\n");
        assert!(err.contains("between 1 and 64, got 65"), "{err}");
        let err = error("[storage.opensearch]\nadress = []\n");
        assert!(err.contains("adress"), "{err}");
        let err = error("[storage.opensearch]\naddresses = []\n");
        assert!(
            err.contains("storage.opensearch.addresses: must list at least one URL"),
            "{err}"
        );
        let err = error("[storage.opensearch]\naddresses = [\"localhost:9200\"]\n");
        assert!(err.contains("storage.opensearch.addresses[0]"), "{err}");
        let err = error("[storage.opensearch]\nindex = \"Kpulse\"\n");
        assert!(
            err.contains("line 2") && err.contains("storage.opensearch.index"),
            "{err}"
        );
        // Combinations are located by their key, or by the table when the key is a default.
        let err = error("[storage.opensearch]\nbackoff_initial_ms = 500\nbackoff_max_ms = 100\n");
        assert!(
            err.contains("line 3") && err.contains("storage.opensearch.backoff_max_ms"),
            "{err}"
        );
        let err = error("[storage]\n\n[storage.opensearch]\nbackoff_initial_ms = 60000\n");
        assert!(
            err.contains("line 3") && err.contains("storage.opensearch.backoff_max_ms"),
            "{err}"
        );
    }

    #[test]
    fn opensearch_auth_is_a_tagged_table() {
        let auth = |text: &str| {
            parse(&format!("[storage.opensearch]\nindex = \"x\"\n{text}"))
                .map(|config| config.storage.opensearch.expect("table").auth)
        };
        assert_eq!(auth("").expect("no auth"), None);
        let basic = auth(
            "[storage.opensearch.auth]\ntype = \"basic\"\nusername = \"u\"\npassword = \"p\"\n",
        )
        .expect("basic");
        assert!(
            matches!(&basic, Some(OpenSearchAuth::Basic { username, password }) if username == "u" && password.expose() == "p"),
            "{basic:?}"
        );
        let key = auth("auth = { type = \"api_key\", key = \"k\" }\n").expect("api key");
        assert!(matches!(&key, Some(OpenSearchAuth::ApiKey { key }) if key.expose() == "k"));
        let token = auth("auth.type = \"bearer\"\nauth.token = \"t\"\n").expect("bearer");
        assert!(matches!(&token, Some(OpenSearchAuth::Bearer { token }) if token.expose() == "t"));

        let err = auth(
            "\n[storage.opensearch.auth]\ntype = \"basic\"\nusername = \"u\"\npassword = \"\"\n",
        )
        .expect_err("empty password")
        .to_string();
        assert!(
            err.contains("line 7")
                && err.contains("storage.opensearch.auth.password: must not be empty"),
            "{err}"
        );
        let err = auth("[storage.opensearch.auth]\ntype = \"basic\"\nusername = \"u\"\n")
            .expect_err("no password")
            .to_string();
        assert!(
            err.contains("line 3")
                && err.contains("storage.opensearch.auth: type = \"basic\" needs `password`"),
            "{err}"
        );
        let err = auth("auth = { type = \"bearer\", token = \"t\", key = \"k\" }\n")
            .expect_err("foreign key")
            .to_string();
        assert!(
            err.contains("`key` does not apply to type = \"bearer\""),
            "{err}"
        );
        let err = auth("auth = { type = \"kerberos\" }\n")
            .expect_err("unknown type")
            .to_string();
        assert!(
            err.contains("line 3") && err.contains("storage.opensearch.auth.type"),
            "{err}"
        );
        let err = auth("auth = { type = \"bearer\", token = \"t\", tokn = \"k\" }\n")
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("tokn"), "{err}");
    }

    #[test]
    fn deprecated_opensearch_auth_keys_become_auth() {
        let os = |text: &str| {
            parse(&format!("[storage.opensearch]\n{text}"))
                .map(|config| config.storage.opensearch.expect("table"))
        };
        let config = os("username = \"u\"\npassword = \"p\"\n").expect("legacy basic");
        assert!(
            matches!(&config.auth, Some(OpenSearchAuth::Basic { username, .. }) if username == "u")
        );
        assert!(config.username.is_none() && config.password.is_none());
        let config = os("api_key = \"k\"\n").expect("legacy api key");
        assert!(matches!(&config.auth, Some(OpenSearchAuth::ApiKey { .. })));
        let config = os("bearer_token = \"t\"\n").expect("legacy bearer");
        assert!(matches!(&config.auth, Some(OpenSearchAuth::Bearer { .. })));

        let err = os("username = \"u\"\n").expect_err("half").to_string();
        assert!(
            err.contains("line 2") && err.contains("storage.opensearch.username"),
            "{err}"
        );
        let err = os("api_key = \"k\"\nauth = { type = \"bearer\", token = \"t\" }\n")
            .expect_err("two schemes")
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("storage.opensearch.api_key"),
            "{err}"
        );
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let text = "[http]\nbearer_token = \"http-token-1\"\n\
                    [storage.opensearch]\nauth = { type = \"basic\", username = \"kpulse\", password = \"os-password-2\" }\n\
                    [plugins.x]\ny = 1\n";
        let config = parse(text).expect("valid");
        let debug = format!("{config:?} {config:#?}");
        for secret in ["http-token-1", "os-password-2"] {
            assert!(!debug.contains(secret), "{secret} leaked: {debug}");
        }
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(
            debug.contains("kpulse"),
            "user names are not secret: {debug}"
        );
        for text in [
            "[storage.opensearch]\napi_key = \"os-key-3\"\n",
            "[storage.opensearch]\nauth = { type = \"bearer\", token = \"os-token-4\" }\n",
            "[storage.opensearch]\nusername = \"u\"\npassword = \"os-password-5\"\n",
        ] {
            let config = parse(text).expect("valid");
            let debug = format!("{config:?}");
            assert!(!debug.contains("os-"), "{debug}");
        }
        // Nor do errors quote the line holding one.
        let err = error("[http]\nbearer_tokn = \"http-token-6\"\n");
        assert!(!err.contains("http-token-6"), "{err}");
        let err = error("[http]\nbearer_token = \"\"\n");
        assert!(
            err.contains("http.bearer_token: must not be empty"),
            "{err}"
        );
    }

    #[test]
    fn plugin_table_becomes_json() {
        let config = parse("[plugins.example]\nthreshold = 2.5\n").expect("valid");
        assert_eq!(config.plugin_config_json("example"), r#"{"threshold":2.5}"#);
        assert_eq!(config.plugin_config_json("other"), "{}");
    }
}
