//! Watches the plugin directory and (re)loads or unloads plugins without a restart.
//!
//! Events are debounced per file: a file is synced once it has been quiet for the debounce
//! period, so write-then-rename, `cp` over an existing file and in-place writes all end in
//! one load of the finished file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc::unbounded_channel;

use super::{PluginManager, is_plugin_file};

/// Starts the watcher; it lives as long as the returned value.
pub fn watch(
    manager: Arc<PluginManager>,
    dir: PathBuf,
    debounce: Duration,
) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            // Reading a plugin (as the loader does) raises access events: ignore them, or
            // every load would trigger the next.
            Ok(event) if matches!(event.kind, notify::EventKind::Access(_)) => {}
            Ok(event) => {
                for path in event.paths {
                    if is_plugin_file(&path) {
                        let _ = tx.send(path);
                    }
                }
            }
            Err(err) => tracing::warn!(%err, "plugin directory watch error"),
        }
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
                path = rx.recv() => match path {
                    Some(path) => {
                        quiet_until.insert(path, tokio::time::Instant::now() + debounce);
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
