//! Glue used by [`crate::register!`]; not part of the public API.

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::bindings::kpulse::plugin::types::{self as raw, InitError, Kinds};
use crate::context::{self, Context, TimerId};
use crate::error::Error;
use crate::{Collector, Config, Plugin, Tracing};

type Cell<T> = LocalKey<RefCell<Option<T>>>;

pub fn describe(
    name: &str,
    version: &str,
    interval: u32,
    kinds: &[&str],
    capabilities: &[&str],
    summary: &str,
) -> raw::PluginInfo {
    let mut flags = Kinds::empty();
    for kind in kinds {
        match *kind {
            "tracing" => flags |= Kinds::TRACING,
            "metric" => flags |= Kinds::METRIC,
            _ => {}
        }
    }
    raw::PluginInfo {
        name: name.to_owned(),
        version: version.to_owned(),
        kinds: flags,
        restart_interval_secs: interval,
        capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
        summary: summary.to_owned(),
    }
}

pub fn init<T: Plugin>(cell: &'static Cell<T>, config_json: &str) -> Result<(), InitError> {
    let config = Config::from_json(config_json).map_err(to_init_error)?;
    let plugin = T::init(config).map_err(to_init_error)?;
    cell.with(|c| *c.borrow_mut() = Some(plugin));
    Ok(())
}

fn to_init_error(err: Error) -> InitError {
    match err {
        Error::NotSupported(m) => InitError::NotSupported(m),
        Error::InvalidConfig(m) => InitError::InvalidConfig(m),
        other => InitError::Failed(other.to_string()),
    }
}

fn with<T, R>(
    cell: &'static Cell<T>,
    f: impl FnOnce(&mut T) -> crate::Result<R>,
) -> Result<R, String> {
    cell.with(|c| match c.borrow_mut().as_mut() {
        Some(plugin) => f(plugin).map_err(|err| err.to_string()),
        None => Err("plugin called before init".to_owned()),
    })
}

pub fn start<T: Plugin + Tracing>(cell: &'static Cell<T>) -> Result<(), String> {
    with(cell, |p| p.start(&mut Context::new()))
}

pub fn on_timer<T: Plugin + Tracing>(cell: &'static Cell<T>, id: u64) -> Result<(), String> {
    let result = with(cell, |p| p.on_timer(&mut Context::new(), TimerId(id)));
    context::fired(id);
    result
}

pub fn on_events<T: Plugin + Tracing>(
    cell: &'static Cell<T>,
    subscription: u64,
    records: &[u8],
) -> Result<(), String> {
    with(cell, |p| {
        p.on_events(
            &mut Context::new(),
            subscription,
            crate::bpf::Records::new(records),
        )
    })
}

pub fn update<T: Plugin + Collector>(cell: &'static Cell<T>) -> Result<Vec<raw::Metric>, String> {
    with(cell, |p| p.update()).map(|metrics| metrics.into_iter().map(Into::into).collect())
}
