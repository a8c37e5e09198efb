//! Plugins: the table that loads, replaces and unloads plugin files, and the view of every
//! plugin that `/plugins` and `/metrics` read.
//!
//! - `description`: `describe` and the checks of its answer;
//! - `manager`: the table and the loader;
//! - `handle`: one plugin in the table;
//! - [`actor`]: the supervisor and the instance it runs;
//! - [`stats`], [`watcher`]: counters and the plugin-directory watcher.

pub mod actor;
mod description;
mod handle;
mod manager;
pub mod stats;
pub mod watcher;

pub use description::{Description, KindSet, describe_with, validate};
pub use handle::{PluginHandle, PluginSpec, PluginView};
pub use manager::{LoadError, PluginManager, is_plugin_file};
