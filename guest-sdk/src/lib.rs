//! # kpulse-sdk
//!
//! Write kpulse collectors in Rust. A collector is a struct, a registration, `start` for
//! tracing, `update` for metrics and [`storage::save`] for events, exactly like a HUATUO
//! collector, but compiled to a sandboxed WebAssembly component:
//!
//! ```ignore
//! use kpulse_sdk::prelude::*;
//!
//! #[derive(Default)] // no settings: no `impl Plugin` needed
//! struct Loadavg;
//!
//! kpulse_sdk::register!(Loadavg {
//!     name: "loadavg",
//!     kinds: [metric],
//!     capabilities: ["read:/proc/loadavg"],
//! });
//!
//! impl Collector for Loadavg {
//!     fn update(&mut self) -> Result<Vec<Metric>> {
//!         let load = procfs::loadavg()?;
//!         Ok(vec![metric::gauge("load1", load.load1, "1-minute load average")])
//!     }
//! }
//! ```
//!
//! Guests never block: the host calls `start`, timers ([`Context::every`]), event batches and
//! `update` one at a time, each under a deadline. See `docs/plugin-guide.md`.

pub mod bpf;
pub mod containers;
pub mod context;
pub mod error;
pub mod flame;
pub mod fs;
pub mod link_events;
pub mod log;
pub mod metric;
pub mod net;
pub mod procfs;
pub mod profiler;
pub mod records;
pub mod statfs;
pub mod storage;

#[doc(hidden)]
pub mod __private;

/// Raw bindings generated from `wit/kpulse.wit`. Plugin code should not need them.
#[doc(hidden)]
#[allow(missing_docs, clippy::all, reason = "generated code")]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "kpulse_sdk::bindings",
    });
}

pub use context::{Context, HostInfo, TimerId};
pub use error::{Error, Result};
pub use metric::Metric;
pub use serde_json;

/// The plugin itself: how it is built from its configuration.
///
/// Optional: a plugin without settings can derive [`Default`] instead, and [`register!`]
/// builds it with `Default::default()` (refusing a non-empty `[plugins.<name>]` table).
pub trait Plugin: Sized + 'static {
    /// Builds the plugin from its `[plugins.<name>]` table. Return
    /// [`Error::NotSupported`] when this host lacks what the plugin needs: the plugin is then
    /// marked `inactive`, which is not an error.
    fn init(config: Config) -> Result<Self>;
}

/// The tracing role (HUATUO's `Start(ctx)`): set up what to watch in `start`, then react to
/// timers and event batches. Never block or loop waiting: arm a timer instead.
pub trait Tracing {
    /// Arms timers and subscriptions, then returns.
    fn start(&mut self, ctx: &mut Context) -> Result<()>;

    /// A timer armed through `ctx` fired.
    fn on_timer(&mut self, ctx: &mut Context, timer: TimerId) -> Result<()> {
        let _ = (ctx, timer);
        Ok(())
    }

    /// A batch of ring-buffer records arrived on a subscription made with
    /// [`bpf::Object::subscribe`], oldest first.
    fn on_events(
        &mut self,
        ctx: &mut Context,
        subscription: u64,
        records: bpf::Records<'_>,
    ) -> Result<()> {
        let _ = (ctx, subscription, records);
        Ok(())
    }
}

/// The metric role (HUATUO's `Update()`): called on every scrape of `/metrics`.
pub trait Collector {
    /// Returns the current samples. Keep it cheap: it runs under the plugin's deadline.
    fn update(&mut self) -> Result<Vec<Metric>>;
}

/// The plugin's `[plugins.<name>]` table from the agent config.
#[derive(Debug, Clone, Default)]
pub struct Config {
    table: serde_json::Map<String, serde_json::Value>,
}

/// Keys of the plugin table that belong to the host, not to the plugin.
const HOST_KEYS: [&str; 2] = ["deadline_ms", "memory_mib"];

impl Config {
    /// Parses the JSON object the host passes to `init`.
    pub fn from_json(json: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|err| Error::InvalidConfig(format!("config is not JSON: {err}")))?;
        match value {
            serde_json::Value::Object(mut table) => {
                for key in HOST_KEYS {
                    table.remove(key);
                }
                Ok(Self { table })
            }
            _ => Err(Error::InvalidConfig("config must be a table".to_owned())),
        }
    }

    /// One key, or `None` when absent.
    pub fn get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.table
            .get(key)
            .map(|value| {
                T::deserialize(value).map_err(|err| Error::InvalidConfig(format!("{key}: {err}")))
            })
            .transpose()
    }

    /// One key, or `default` when absent.
    pub fn get_or<T: serde::de::DeserializeOwned>(&self, key: &str, default: T) -> Result<T> {
        Ok(self.get(key)?.unwrap_or(default))
    }

    /// The keys of the table (without the host's own keys).
    pub fn keys(&self) -> Vec<&str> {
        self.table.keys().map(String::as_str).collect()
    }

    /// The whole table as a struct (use `#[serde(default, deny_unknown_fields)]` for
    /// strict, self-documenting config).
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        T::deserialize(serde_json::Value::Object(self.table.clone()))
            .map_err(|err| Error::InvalidConfig(err.to_string()))
    }
}

/// What a plugin needs in scope.
pub mod prelude {
    pub use crate::metric::{self, Metric};
    pub use crate::{
        Collector, Config, Context, Error, Plugin, Result, TimerId, Tracing, bpf, containers, fs,
        log, procfs, profiler, storage,
    };
}

/// Registers a plugin type: its name, version, restart interval (seconds, HUATUO's
/// `Interval`), kinds (`tracing`, `metric` or both), requested capabilities and a summary.
///
/// ```ignore
/// kpulse_sdk::register!(Psi {
///     name: "psi",
///     version: "0.1.0",                  // optional: the crate's Cargo `version`
///     interval: 10,                      // optional: 10
///     kinds: [tracing, metric],         // optional: [metric]
///     capabilities: ["read:/proc/pressure"], // optional: none
///     summary: "PSI stall metrics",      // optional: the crate's Cargo `description`
/// });
/// ```
///
/// The fields come in this order; only `name` is required, and `kinds` defaults to
/// `[metric]`. The defaults for
/// `version` and `summary` are read from the Cargo manifest of the crate that invokes the
/// macro, so the plugin's own `Cargo.toml` is the single place to bump its version.
///
/// The type must implement [`Tracing`] if `kinds` has `tracing` and [`Collector`] if it has
/// `metric`. It is built by [`Plugin::init`] if it implements [`Plugin`]; a plugin without
/// settings can instead derive [`Default`], and then refuses a non-empty config table.
#[macro_export]
macro_rules! register {
    ($ty:ty {
        name: $name:expr,
        $(version: $version:expr,)?
        $(interval: $interval:expr,)?
        kinds: [$($kind:ident),+ $(,)?]
        $(, capabilities: [$($cap:expr),* $(,)?])?
        $(, summary: $summary:expr)?
        $(,)?
    }) => {
        ::std::thread_local! {
            static __KPULSE_INSTANCE: ::std::cell::RefCell<::std::option::Option<$ty>> =
                const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }

        #[doc(hidden)]
        pub struct __KpulseAdapter;

        impl $crate::bindings::Guest for __KpulseAdapter {
            fn describe() -> $crate::bindings::kpulse::plugin::types::PluginInfo {
                $crate::__private::describe(
                    $name,
                    $crate::__kpulse_or!([$($version)?] ::core::env!("CARGO_PKG_VERSION")),
                    $crate::__kpulse_or!([$($interval)?] 10),
                    &[$(stringify!($kind)),+],
                    &[$($($cap),*)?],
                    $crate::__kpulse_or!([$($summary)?] ::core::env!("CARGO_PKG_DESCRIPTION")),
                )
            }

            fn init(config_json: ::std::string::String)
                -> ::std::result::Result<(), $crate::bindings::kpulse::plugin::types::InitError>
            {
                #[allow(unused_imports)]
                use $crate::__private::{BuildWithDefault as _, BuildWithPlugin as _};
                // `Plugin::init` if the type implements `Plugin`, else `Default::default()`.
                let build = (&&$crate::__private::Build::<$ty>::new()).build_fn();
                $crate::__private::init(&__KPULSE_INSTANCE, &config_json, build)
            }

            fn start() -> ::std::result::Result<(), ::std::string::String> {
                $crate::__kpulse_if_kind!(tracing, [$($kind),+],
                    $crate::__private::start::<$ty>(&__KPULSE_INSTANCE),
                    ::std::result::Result::Ok(()))
            }

            fn on_timer(timer_id: u64) -> ::std::result::Result<(), ::std::string::String> {
                $crate::__kpulse_if_kind!(tracing, [$($kind),+],
                    $crate::__private::on_timer::<$ty>(&__KPULSE_INSTANCE, timer_id),
                    ::std::result::Result::Ok(()))
            }

            fn on_events(subscription: u64, records: ::std::vec::Vec<u8>)
                -> ::std::result::Result<(), ::std::string::String>
            {
                $crate::__kpulse_if_kind!(tracing, [$($kind),+],
                    $crate::__private::on_events::<$ty>(&__KPULSE_INSTANCE, subscription, &records),
                    ::std::result::Result::Ok(()))
            }

            fn update() -> ::std::result::Result<
                ::std::vec::Vec<$crate::bindings::kpulse::plugin::types::Metric>,
                ::std::string::String,
            > {
                $crate::__kpulse_if_kind!(metric, [$($kind),+],
                    $crate::__private::update::<$ty>(&__KPULSE_INSTANCE),
                    ::std::result::Result::Ok(::std::vec::Vec::new()))
            }
        }

        $crate::bindings::__export_plugin_world!(__KpulseAdapter with_types_in $crate::bindings);
    };
    // Without `kinds`: a metric collector, the commonest plugin.
    ($ty:ty {
        name: $name:expr
        $(, version: $version:expr)?
        $(, interval: $interval:expr)?
        $(, capabilities: [$($cap:expr),* $(,)?])?
        $(, summary: $summary:expr)?
        $(,)?
    }) => {
        $crate::register!($ty {
            name: $name,
            $(version: $version,)?
            $(interval: $interval,)?
            kinds: [metric]
            $(, capabilities: [$($cap),*])?
            $(, summary: $summary)?
        });
    };
}

/// Expands to the given value, or to the default when none was given.
#[doc(hidden)]
#[macro_export]
macro_rules! __kpulse_or {
    ([] $default:expr) => {
        $default
    };
    ([$value:expr] $default:expr) => {
        $value
    };
}

/// Expands to `$then` if `$want` is among the kinds, else to `$else`.
#[doc(hidden)]
#[macro_export]
macro_rules! __kpulse_if_kind {
    (tracing, [tracing $(, $rest:ident)*], $then:expr, $else:expr) => { $then };
    (metric, [metric $(, $rest:ident)*], $then:expr, $else:expr) => { $then };
    ($want:ident, [$other:ident $(, $rest:ident)*], $then:expr, $else:expr) => {
        $crate::__kpulse_if_kind!($want, [$($rest),*], $then, $else)
    };
    ($want:ident, [], $then:expr, $else:expr) => { $else };
}
