//! The plugin table and the loader: loading, replacing and unloading plugin files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::unbounded_channel;
use tokio::sync::{RwLock, oneshot};

use super::actor::{Control, Gate, Supervisor};
use super::description::{Description, describe_with, validate};
use super::handle::{PluginHandle, PluginSpec, PluginView};
use super::stats::{PluginState, PluginStatus};
use crate::config::Config;
use crate::host_api::Services;
use crate::runtime::{Prepared, Runtime, RuntimeError};

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
                    old.set_error(&err.to_string());
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
        let containers = declares("containers")
            && crate::containers::policy_allows(&policy.containers_allow, &name, &prepared.sha256);
        let profile = declares("profile")
            && crate::bpf::policy_allows(&policy.profile_allow, &name, &prepared.sha256, true)
                .is_ok();
        let statfs = declares("statfs")
            && crate::containers::policy_allows(&policy.statfs_allow, &name, &prepared.sha256);
        let net = declares("net")
            && crate::containers::policy_allows(&policy.net_allow, &name, &prepared.sha256);
        if declares("net") && !net {
            tracing::warn!(plugin = %name, "net not granted: not in policy.net_allow");
        }
        if declares("profile") && !profile {
            tracing::warn!(plugin = %name, "profile not granted: not in policy.profile_allow");
        }
        if declares("bpf")
            && let Err(reason) = &bpf
        {
            tracing::warn!(plugin = %name, %reason, "BPF not granted");
        }
        let spec = Arc::new(PluginSpec {
            bpf,
            kallsyms,
            containers,
            profile,
            net,
            statfs,
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
                    handle.set_error("disabled by the denylist");
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
                    old.set_error(&err.to_string());
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
        // Registered under the plugin's name: a replacement keeps counting where the old
        // version left off, as Prometheus expects of a counter.
        let stats = Arc::new(self.services.metrics.plugin_stats(&spec.info.name));
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
        self.handles().await.iter().map(|h| h.view()).collect()
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

/// `*.wasm`, not hidden (editors and `cp` leave hidden temporaries).
pub fn is_plugin_file(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "wasm")
        && path
            .file_name()
            .is_some_and(|name| !name.to_string_lossy().starts_with('.'))
}
