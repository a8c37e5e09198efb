//! The plugin table: loading, replacing and unloading plugin files, and the view of every
//! plugin that `/plugins` and `/metrics` read.

pub mod actor;
pub mod stats;
pub mod watcher;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::sync::{RwLock, oneshot};

use crate::config::Config;
use crate::fsaccess::ReadGrant;
use crate::host_api::{HostState, Identity, Services};
use crate::runtime::{Prepared, Runtime, RuntimeError, deadline_ticks};
use crate::wit::Metric;
use actor::{Call, Control, Gate, Supervisor};
use stats::{PluginState, PluginStats, PluginStatus};

/// Why a plugin file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{file}: describe failed: {message}")]
    Describe { file: String, message: String },
    #[error("{file}: invalid description: {message}")]
    InvalidInfo { file: String, message: String },
    #[error("{file}: plugin name {name:?} is already provided by {other}")]
    DuplicateName {
        file: String,
        name: String,
        other: String,
    },
    #[error("{file}: replacement for {name:?} rejected, old version keeps running: {message}")]
    ReplacementRejected {
        file: String,
        name: String,
        message: String,
    },
}

/// What a plugin says about itself, validated.
#[derive(Debug, Clone, Serialize)]
pub struct Description {
    pub name: String,
    pub version: String,
    pub kinds: KindSet,
    pub restart_interval_secs: u32,
    pub capabilities: Vec<String>,
    pub summary: String,
}

/// Tracing and/or metric.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct KindSet {
    pub tracing: bool,
    pub metric: bool,
}

impl KindSet {
    pub fn names(self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.tracing {
            names.push("tracing");
        }
        if self.metric {
            names.push("metric");
        }
        names
    }
}

impl Description {
    /// Prefixes declared with `read:<prefix>`.
    pub fn read_prefixes(&self) -> Vec<String> {
        self.capabilities
            .iter()
            .filter_map(|cap| cap.strip_prefix("read:"))
            .map(str::to_owned)
            .collect()
    }

    /// Capabilities this host does not know (never granted).
    pub fn unknown_capabilities(&self) -> Vec<String> {
        self.capabilities
            .iter()
            .filter(|cap| {
                !cap.starts_with("read:")
                    && !matches!(cap.as_str(), "bpf" | "kallsyms" | "rx-timestamps")
            })
            .cloned()
            .collect()
    }
}

/// One loaded version of a plugin: immutable.
pub struct PluginSpec {
    pub info: Description,
    pub file: PathBuf,
    pub prepared: Prepared,
    pub loaded_at: chrono::DateTime<chrono::Utc>,
    pub config_json: String,
    pub deadline: Duration,
    pub memory_bytes: u64,
    pub grant: ReadGrant,
    /// Whether the plugin may load BPF, or why not.
    pub bpf: Result<(), String>,
    /// Whether the plugin may symbolize kernel addresses.
    pub kallsyms: bool,
}

/// A plugin in the table.
pub struct PluginHandle {
    pub spec: Arc<PluginSpec>,
    pub stats: Arc<PluginStats>,
    pub status: Arc<Mutex<PluginStatus>>,
    mailbox: UnboundedSender<Call>,
    control: UnboundedSender<Control>,
    finished: tokio::task::JoinHandle<()>,
}

impl PluginHandle {
    pub fn state(&self) -> PluginState {
        self.status
            .lock()
            .map(|s| s.state)
            .unwrap_or(PluginState::Failed)
    }

    /// Asks the running instance for metrics, within its deadline.
    pub async fn update(&self) -> Result<Vec<Metric>, String> {
        let (reply, answer) = oneshot::channel();
        self.mailbox
            .send(Call::Update { reply })
            .map_err(|_| "plugin is gone".to_owned())?;
        // The guest call itself is bounded by the epoch deadline; the slack covers queueing
        // behind a call already in flight.
        let wait = self.spec.deadline * 2 + Duration::from_millis(100);
        match tokio::time::timeout(wait, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("plugin stopped during update".to_owned()),
            Err(_) => Err(format!("no answer within {} ms", wait.as_millis())),
        }
    }
}

impl PluginHandle {
    /// Hands a batch of records to the running instance (replay) and waits until the guest
    /// has processed it.
    pub async fn deliver(&self, subscription: u64, records: Vec<u8>) -> Result<(), String> {
        let (done, finished) = oneshot::channel();
        self.mailbox
            .send(Call::Events {
                incarnation: 0,
                subscription,
                records: crate::bpf::Batch::Owned(records),
                done,
            })
            .map_err(|_| "plugin is gone".to_owned())?;
        finished
            .await
            .map(|_| ())
            .map_err(|_| "plugin stopped during the batch".to_owned())
    }
}

/// JSON shape of one entry of `GET /plugins`.
#[derive(Debug, Serialize)]
pub struct PluginView {
    pub name: String,
    pub version: String,
    pub kinds: Vec<&'static str>,
    pub state: PluginState,
    pub hits: u64,
    pub restarts: u64,
    pub last_error: Option<String>,
    pub sha256: String,
    pub loaded_at: String,
    pub file: String,
    pub capabilities: Vec<String>,
    pub granted_read: Vec<String>,
    pub summary: String,
}

/// The plugin table and the loader.
pub struct PluginManager {
    runtime: Runtime,
    services: Arc<Services>,
    config: Arc<Config>,
    plugins: RwLock<BTreeMap<String, Arc<PluginHandle>>>,
    /// Serializes loads so that two events for one file never race.
    load_lock: tokio::sync::Mutex<()>,
}

impl PluginManager {
    pub fn new(runtime: Runtime, services: Arc<Services>, config: Arc<Config>) -> Self {
        Self {
            runtime,
            services,
            config,
            plugins: RwLock::new(BTreeMap::new()),
            load_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Loads every `*.wasm` in the plugin directory. Errors are logged per file.
    pub async fn scan(&self) {
        let dir = &self.config.plugin_dir;
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| is_plugin_file(p))
                .collect(),
            Err(err) => {
                tracing::warn!(dir = %dir.display(), %err, "cannot read plugin directory");
                return;
            }
        };
        files.sort();
        for file in files {
            if let Err(err) = self.load_file(&file).await {
                tracing::error!(%err, "plugin not loaded");
            }
        }
    }

    /// Brings the table in line with one file: loads, replaces or unloads it.
    pub async fn sync_file(&self, file: &Path) {
        if file.is_file() {
            if let Err(err) = self.load_file(file).await {
                tracing::error!(%err, "plugin not loaded");
                // A failed replacement leaves the old version running; say why on it.
                if let Some(old) = self.by_file(file).await {
                    set_error(&old, &err.to_string());
                }
            }
        } else {
            self.unload_file(file).await;
        }
    }

    /// Loads or replaces the plugin in `file`.
    pub async fn load_file(&self, file: &Path) -> Result<(), LoadError> {
        let _guard = self.load_lock.lock().await;
        let file_name = file.display().to_string();
        let wasm = std::fs::read(file).map_err(|source| LoadError::Read {
            file: file_name.clone(),
            source,
        })?;
        let sha = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(&wasm))
        };
        let existing_same_file = self.by_file(file).await;
        if let Some(existing) = &existing_same_file
            && existing.spec.prepared.sha256 == sha
        {
            return Ok(());
        }

        let runtime = self.runtime.clone();
        let path = file.to_owned();
        let prepared = tokio::task::spawn_blocking(move || runtime.prepare(&path, &wasm))
            .await
            .map_err(|err| LoadError::Describe {
                file: file_name.clone(),
                message: err.to_string(),
            })??;
        let info = self.describe(&file_name, &prepared).await?;
        tracing::info!(
            plugin = %info.name,
            version = %info.version,
            file = %file_name,
            compile_ms = prepared.compile_time.as_millis() as u64,
            source = ?prepared.source,
            "plugin compiled"
        );

        // A file that changed its name is an unload of the old name plus a load.
        if let Some(existing) = &existing_same_file
            && existing.spec.info.name != info.name
        {
            let old = existing.spec.info.name.clone();
            self.remove(&old).await;
        }
        if let Some(other) = self.plugins.read().await.get(&info.name)
            && other.spec.file != file
        {
            return Err(LoadError::DuplicateName {
                file: file_name,
                name: info.name,
                other: other.spec.file.display().to_string(),
            });
        }

        let name = info.name.clone();
        let declares = |cap: &str| info.capabilities.iter().any(|c| c == cap);
        let policy = &self.config.policy;
        let bpf =
            crate::bpf::policy_allows(&policy.bpf_allow, &name, &prepared.sha256, declares("bpf"));
        let kallsyms = crate::bpf::policy_allows(
            &policy.kallsyms_allow,
            &name,
            &prepared.sha256,
            declares("kallsyms"),
        )
        .is_ok();
        if declares("bpf")
            && let Err(reason) = &bpf
        {
            tracing::warn!(plugin = %name, %reason, "BPF not granted");
        }
        let spec = Arc::new(PluginSpec {
            bpf,
            kallsyms,
            grant: self.services.fs.grant(&info.read_prefixes()),
            deadline: Duration::from_millis(self.config.deadline_ms(&name)),
            memory_bytes: self.config.memory_bytes(&name),
            config_json: self.config.plugin_config_json(&name),
            info,
            file: file.to_owned(),
            prepared,
            loaded_at: chrono::Utc::now(),
        });
        for cap in spec.info.unknown_capabilities() {
            tracing::warn!(plugin = %name, capability = %cap, "capability not granted: unknown to this host");
        }
        let denied = self.config.denylist.contains(&name);
        let old = self.plugins.read().await.get(&name).cloned();

        match old {
            None => {
                let handle = self.spawn(spec, None, denied);
                if denied {
                    set_error(&handle, "disabled by the denylist");
                    tracing::info!(plugin = %name, "plugin is on the denylist; not started");
                }
                self.plugins.write().await.insert(name, Arc::new(handle));
                Ok(())
            }
            Some(old) => {
                // Start the new version up to `init`; only if that works, retire the old one.
                let (ready_tx, ready_rx) = oneshot::channel();
                let (go_tx, go_rx) = oneshot::channel();
                let gate = Gate {
                    ready: ready_tx,
                    go: go_rx,
                };
                let handle = self.spawn(spec.clone(), Some(gate), denied);
                if denied {
                    drop(go_tx);
                    let _ = handle.control.send(Control::Shutdown);
                    self.retire(&old).await;
                    self.plugins.write().await.remove(&name);
                    return Ok(());
                }
                let verdict = match tokio::time::timeout(
                    spec.deadline * 4 + Duration::from_secs(1),
                    ready_rx,
                )
                .await
                {
                    Ok(Ok(verdict)) => verdict,
                    Ok(Err(_)) => Err("new version ended before init".to_owned()),
                    Err(_) => Err("new version did not finish init in time".to_owned()),
                };
                if let Err(message) = verdict {
                    let _ = handle.control.send(Control::Shutdown);
                    let err = LoadError::ReplacementRejected {
                        file: file_name,
                        name: name.clone(),
                        message,
                    };
                    set_error(&old, &err.to_string());
                    return Err(err);
                }
                self.retire(&old).await;
                let _ = go_tx.send(());
                tracing::info!(plugin = %name, version = %spec.info.version, "plugin replaced");
                self.plugins.write().await.insert(name, Arc::new(handle));
                Ok(())
            }
        }
    }

    /// Unloads the plugin that came from `file`, if any.
    pub async fn unload_file(&self, file: &Path) {
        let _guard = self.load_lock.lock().await;
        if let Some(handle) = self.by_file(file).await {
            let name = handle.spec.info.name.clone();
            self.remove(&name).await;
            tracing::info!(plugin = %name, file = %file.display(), "plugin unloaded");
        }
    }

    async fn remove(&self, name: &str) {
        let removed = self.plugins.write().await.remove(name);
        if let Some(handle) = removed {
            self.retire(&handle).await;
        }
    }

    /// Stops a plugin for good and waits (bounded) until its instance is gone.
    async fn retire(&self, handle: &PluginHandle) {
        let _ = handle.control.send(Control::Shutdown);
        let limit = handle.spec.deadline * 2 + Duration::from_secs(1);
        let deadline = tokio::time::Instant::now() + limit;
        while !handle.finished.is_finished() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn by_file(&self, file: &Path) -> Option<Arc<PluginHandle>> {
        self.plugins
            .read()
            .await
            .values()
            .find(|h| h.spec.file == file)
            .cloned()
    }

    fn spawn(&self, spec: Arc<PluginSpec>, gate: Option<Gate>, stopped: bool) -> PluginHandle {
        let (mailbox_tx, mailbox_rx) = unbounded_channel();
        let (control_tx, control_rx) = unbounded_channel();
        let stats = Arc::new(PluginStats::default());
        let status = Arc::new(Mutex::new(PluginStatus::default()));
        let supervisor = Supervisor {
            runtime: self.runtime.clone(),
            services: self.services.clone(),
            spec: spec.clone(),
            stats: stats.clone(),
            status: status.clone(),
            mailbox: mailbox_tx.clone(),
            quarantine_after: self.config.runtime.quarantine_after,
            max_backoff: Duration::from_secs(self.config.runtime.max_backoff_secs),
        };
        let finished = tokio::spawn(supervisor.run(mailbox_rx, control_rx, gate, stopped));
        PluginHandle {
            spec,
            stats,
            status,
            mailbox: mailbox_tx,
            control: control_tx,
            finished,
        }
    }

    /// Instantiates a throw-away instance and calls `describe` under the default deadline.
    async fn describe(&self, file: &str, prepared: &Prepared) -> Result<Description, LoadError> {
        let runtime = self.runtime.clone();
        let services = self.services.clone();
        let pre = prepared.pre.clone();
        let deadline = Duration::from_millis(self.config.runtime.deadline_ms);
        let memory = self.config.runtime.memory_mib * 1024 * 1024;
        let described = tokio::task::spawn_blocking(move || {
            describe_with(&runtime, services, &pre, deadline, memory)
        })
        .await
        .map_err(|err| err.to_string())
        .and_then(|r| r);
        let info = described.map_err(|message| LoadError::Describe {
            file: file.to_owned(),
            message,
        })?;
        validate(&info).map_err(|message| LoadError::InvalidInfo {
            file: file.to_owned(),
            message,
        })?;
        Ok(info)
    }

    pub async fn handles(&self) -> Vec<Arc<PluginHandle>> {
        self.plugins.read().await.values().cloned().collect()
    }

    pub async fn get(&self, name: &str) -> Option<Arc<PluginHandle>> {
        self.plugins.read().await.get(name).cloned()
    }

    /// Sends an operator command; `false` if the plugin is unknown.
    pub async fn command(&self, name: &str, start: bool) -> Option<PluginState> {
        let handle = self.get(name).await?;
        let state = handle.state();
        let _ = handle
            .control
            .send(if start { Control::Start } else { Control::Stop });
        Some(state)
    }

    pub async fn views(&self) -> Vec<PluginView> {
        self.handles()
            .await
            .iter()
            .map(|h| {
                let status = h.status.lock().map(|s| s.clone()).unwrap_or_default();
                PluginView {
                    name: h.spec.info.name.clone(),
                    version: h.spec.info.version.clone(),
                    kinds: h.spec.info.kinds.names(),
                    state: status.state,
                    hits: h.stats.hits.load(std::sync::atomic::Ordering::Relaxed),
                    restarts: h.stats.restarts.load(std::sync::atomic::Ordering::Relaxed),
                    last_error: status.last_error,
                    sha256: h.spec.prepared.sha256.clone(),
                    loaded_at: h
                        .spec
                        .loaded_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    file: h.spec.file.display().to_string(),
                    capabilities: h.spec.info.capabilities.clone(),
                    granted_read: h.spec.grant.prefixes().to_vec(),
                    summary: h.spec.info.summary.clone(),
                }
            })
            .collect()
    }

    /// Stops every plugin (agent shutdown).
    pub async fn shutdown(&self) {
        let handles: Vec<_> = std::mem::take(&mut *self.plugins.write().await)
            .into_values()
            .collect();
        for handle in &handles {
            let _ = handle.control.send(Control::Shutdown);
        }
        for handle in &handles {
            self.retire(handle).await;
        }
    }
}

fn set_error(handle: &PluginHandle, message: &str) {
    if let Ok(mut status) = handle.status.lock() {
        status.last_error = Some(message.to_owned());
    }
}

/// `describe` on a fresh instance with no grants. Used by the loader and `plugins inspect`.
pub fn describe_with(
    runtime: &Runtime,
    services: Arc<Services>,
    pre: &crate::wit::PluginPre<HostState>,
    deadline: Duration,
    memory_bytes: u64,
) -> Result<Description, String> {
    let identity = Identity {
        name: "(describe)".to_owned(),
        stats: Arc::new(PluginStats::default()),
        grant: ReadGrant::default(),
        bpf: Err("describe may not use BPF".to_owned()),
        kallsyms: false,
        rx_timestamps: false,
    };
    let mut store = runtime.store(HostState::new(identity, services, memory_bytes, None));
    let call = runtime.deadline(&mut store, deadline_ticks(deadline));
    let plugin = pre
        .instantiate(&mut store)
        .map_err(|err| format!("instantiate: {}", err.root_cause()))?;
    store.set_epoch_deadline(deadline_ticks(deadline));
    let info = plugin
        .call_describe(&mut store)
        .map_err(|err| format!("describe trapped: {}", err.root_cause()))?;
    drop(call);
    Ok(Description {
        name: info.name,
        version: info.version,
        kinds: KindSet {
            tracing: info.kinds.contains(crate::wit::Kinds::TRACING),
            metric: info.kinds.contains(crate::wit::Kinds::METRIC),
        },
        restart_interval_secs: info.restart_interval_secs,
        capabilities: info.capabilities,
        summary: info.summary,
    })
}

/// Checks a description before anything is started.
pub fn validate(info: &Description) -> Result<(), String> {
    let name_ok = info.name.len() <= 64
        && info.name.starts_with(|c: char| c.is_ascii_lowercase())
        && info
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !name_ok {
        return Err(format!(
            "name {:?} must match [a-z][a-z0-9_]{{0,63}}",
            info.name
        ));
    }
    if info.version.is_empty() || info.version.len() > 64 {
        return Err("version must be 1 to 64 characters".to_owned());
    }
    if !info.kinds.tracing && !info.kinds.metric {
        return Err("kinds must include tracing, metric or both".to_owned());
    }
    if info.capabilities.len() > 256 {
        return Err("more than 256 capabilities".to_owned());
    }
    Ok(())
}

/// `*.wasm`, not hidden (editors and `cp` leave hidden temporaries).
pub fn is_plugin_file(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "wasm")
        && path
            .file_name()
            .is_some_and(|name| !name.to_string_lossy().starts_with('.'))
}
