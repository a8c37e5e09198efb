//! A plugin in the table: its loaded version, its status and the channels to its actor.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use super::actor::{Call, Control};
use super::description::Description;
use super::stats::{PluginState, PluginStats, PluginStatus};
use crate::fsaccess::ReadGrant;
use crate::runtime::Prepared;
use crate::wit::Metric;

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
    /// Whether the plugin may read the container registry.
    pub containers: bool,
    /// Whether the plugin may start CPU profiles.
    pub profile: bool,
    /// Whether the plugin may query netlink through the host (`net` interface).
    pub net: bool,
    /// Whether the plugin may read filesystem usage and the mount table.
    pub statfs: bool,
}

/// A plugin in the table.
pub struct PluginHandle {
    pub spec: Arc<PluginSpec>,
    pub stats: Arc<PluginStats>,
    pub status: Arc<Mutex<PluginStatus>>,
    pub(super) mailbox: UnboundedSender<Call>,
    pub(super) control: UnboundedSender<Control>,
    pub(super) finished: tokio::task::JoinHandle<()>,
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

    /// This plugin's entry of `GET /plugins`.
    pub fn view(&self) -> PluginView {
        let status = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        PluginView {
            name: self.spec.info.name.clone(),
            version: self.spec.info.version.clone(),
            kinds: self.spec.info.kinds.names(),
            state: status.state,
            hits: self.stats.hits.load(Ordering::Relaxed),
            restarts: self.stats.restarts.load(Ordering::Relaxed),
            last_error: status.last_error,
            sha256: self.spec.prepared.sha256.clone(),
            loaded_at: self
                .spec
                .loaded_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            file: self.spec.file.display().to_string(),
            capabilities: self.spec.info.capabilities.clone(),
            granted_read: self.spec.grant.prefixes().to_vec(),
            summary: self.spec.info.summary.clone(),
        }
    }

    /// Records why the plugin is not (or no longer) doing what was asked.
    pub(super) fn set_error(&self, message: &str) {
        if let Ok(mut status) = self.status.lock() {
            status.last_error = Some(message.to_owned());
        }
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
