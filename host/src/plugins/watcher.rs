//! Watches the plugin directory and (re)loads or unloads plugins without a restart.
//!
//! Events are debounced per file. A file is complete when it is renamed into place or its
//! writer closes it; then it is synced almost at once. Other changes (a write still in
//! progress) wait until the file has been quiet for the debounce period, so write-then-rename,
//! `cp` over an existing file and in-place writes all end in one load of the finished file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc::unbounded_channel;

use super::{PluginManager, is_plugin_file};

/// Delay after an event that says the file is complete, to coalesce the few events that
/// accompany it (a rename raises two).
const SETTLE: Duration = Duration::from_millis(2);

/// Whether an event marks the file as complete (`Some(true)`), as possibly still being
/// written (`Some(false)`), or is irrelevant (`None`): reads, including the loader's own,
/// raise access events that must not trigger a reload.
fn completeness(kind: &notify::EventKind) -> Option<bool> {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(true),
        EventKind::Access(_) => None,
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => Some(true),
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)) => Some(true),
        _ => Some(false),
    }
}

/// Starts the watcher; it lives as long as the returned value.
pub fn watch(
    manager: Arc<PluginManager>,
    dir: PathBuf,
    debounce: Duration,
) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = unbounded_channel::<(PathBuf, bool)>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) => {
                let Some(complete) = completeness(&event.kind) else {
                    return;
                };
                for path in event.paths {
                    if is_plugin_file(&path) {
                        let _ = tx.send((path, complete));
                    }
                }
            }
            Err(err) => tracing::warn!(%err, "plugin directory watch error"),
        })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;

    tokio::spawn(async move {
        let mut quiet_until: HashMap<PathBuf, tokio::time::Instant> = HashMap::new();
        loop {
            let next = quiet_until.values().min().copied();
            let wait = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = rx.recv() => match event {
                    Some((path, complete)) => {
                        let delay = if complete { SETTLE } else { debounce };
                        quiet_until.insert(path, tokio::time::Instant::now() + delay);
                    }
                    None => return,
                },
                () = wait => {
                    let now = tokio::time::Instant::now();
                    let due: Vec<PathBuf> = quiet_until
                        .iter()
                        .filter(|(_, at)| **at <= now)
                        .map(|(path, _)| path.clone())
                        .collect();
                    for path in due {
                        quiet_until.remove(&path);
                        manager.sync_file(&path).await;
                    }
                }
            }
        }
    });
    Ok(watcher)
}
