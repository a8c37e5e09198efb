//! Glue used by [`crate::register!`]; not part of the public API.

use std::cell::RefCell;
use std::marker::PhantomData;
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

/// How a plugin is built from its config.
pub type BuildFn<T> = fn(Config) -> crate::Result<T>;

/// Picks the [`BuildFn`] of a concrete type by autoref specialization: `register!` calls
/// `(&&Build::<T>::new()).build_fn()`, which resolves to [`BuildWithPlugin`] (on
/// `&Build<T>`) when `T: Plugin`, else to [`BuildWithDefault`] (on `Build<T>`) when
/// `T: Default`. A type with neither fails to compile, naming both bounds.
pub struct Build<T>(PhantomData<T>);

impl<T> Build<T> {
    #[allow(clippy::new_without_default, reason = "only built by register!")]
    pub const fn new() -> Self {
        Self(PhantomData)
    }
}

pub trait BuildWithPlugin<T> {
    fn build_fn(&self) -> BuildFn<T>;
}

impl<T: Plugin> BuildWithPlugin<T> for &Build<T> {
    fn build_fn(&self) -> BuildFn<T> {
        T::init
    }
}

pub trait BuildWithDefault<T> {
    fn build_fn(&self) -> BuildFn<T>;
}

impl<T: Default> BuildWithDefault<T> for Build<T> {
    fn build_fn(&self) -> BuildFn<T> {
        build_default::<T>
    }
}

/// A plugin without settings: any key in its table is a mistake the operator should see.
fn build_default<T: Default>(config: Config) -> crate::Result<T> {
    let mut keys = config.keys();
    if keys.is_empty() {
        return Ok(T::default());
    }
    keys.sort_unstable();
    Err(Error::InvalidConfig(format!(
        "this plugin takes no settings (got {})",
        keys.join(", ")
    )))
}

pub fn init<T: 'static>(
    cell: &'static Cell<T>,
    config_json: &str,
    build: BuildFn<T>,
) -> Result<(), InitError> {
    let config = Config::from_json(config_json).map_err(to_init_error)?;
    let plugin = build(config).map_err(to_init_error)?;
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

pub fn start<T: Tracing + 'static>(cell: &'static Cell<T>) -> Result<(), String> {
    with(cell, |p| p.start(&mut Context::new()))
}

pub fn on_timer<T: Tracing + 'static>(cell: &'static Cell<T>, id: u64) -> Result<(), String> {
    let result = with(cell, |p| p.on_timer(&mut Context::new(), TimerId(id)));
    context::fired(id);
    result
}

pub fn on_events<T: Tracing + 'static>(
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

pub fn update<T: Collector + 'static>(cell: &'static Cell<T>) -> Result<Vec<raw::Metric>, String> {
    with(cell, |p| p.update()).map(|metrics| metrics.into_iter().map(Into::into).collect())
}

#[cfg(test)]
#[allow(
    clippy::needless_borrow,
    reason = "`&&Build` is the probe register! uses, whatever the type resolves to"
)]
mod tests {
    use super::{Build, BuildWithDefault as _, BuildWithPlugin as _};
    use crate::{Config, Error, Plugin, Result};

    #[derive(Debug, Default, PartialEq)]
    struct NoSettings;

    #[derive(Debug, PartialEq)]
    struct WithSettings(u32);

    impl Plugin for WithSettings {
        fn init(config: Config) -> Result<Self> {
            config.get_or("n", 7).map(WithSettings)
        }
    }

    /// Both: `Plugin::init` must win over `Default`.
    #[derive(Debug, Default, PartialEq)]
    struct Both(u32);

    impl Plugin for Both {
        fn init(_config: Config) -> Result<Self> {
            Ok(Both(1))
        }
    }

    fn config(json: &str) -> Config {
        Config::from_json(json).expect("valid config")
    }

    #[test]
    fn a_plugin_impl_builds_from_its_config() {
        let build = (&&Build::<WithSettings>::new()).build_fn();
        assert_eq!(build(config("{}")).expect("init"), WithSettings(7));
        assert_eq!(build(config(r#"{"n":3}"#)).expect("init"), WithSettings(3));
    }

    #[test]
    fn plugin_init_wins_over_default() {
        let build = (&&Build::<Both>::new()).build_fn();
        assert_eq!(build(config("{}")).expect("init"), Both(1));
    }

    #[test]
    fn default_builds_without_settings_and_refuses_any() {
        let build = (&&Build::<NoSettings>::new()).build_fn();
        assert_eq!(build(config("{}")).expect("init"), NoSettings);
        // The host's keys are stripped before the plugin sees the table.
        let host_keys = config(r#"{"deadline_ms":500,"memory_mib":32}"#);
        assert_eq!(build(host_keys).expect("init"), NoSettings);
        match build(config(r#"{"zeta":1,"alpha":true}"#)) {
            Err(Error::InvalidConfig(message)) => {
                assert_eq!(message, "this plugin takes no settings (got alpha, zeta)");
            }
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }
}
