//! What a plugin says about itself: `describe` on a throw-away instance, and the checks
//! its answer must pass before anything is started.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::stats::PluginStats;
use crate::fsaccess::ReadGrant;
use crate::host_api::{HostState, Identity, Services};
use crate::runtime::{Runtime, deadline_ticks};

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
                    && !matches!(
                        cap.as_str(),
                        "bpf"
                            | "kallsyms"
                            | "rx-timestamps"
                            | "containers"
                            | "profile"
                            | "net"
                            | "statfs"
                    )
            })
            .cloned()
            .collect()
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
        containers: false,
        profile: false,
        net: false,
        statfs: false,
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
