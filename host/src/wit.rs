//! The Rust bindings of the `kpulse:plugin` world (`wit/kpulse.wit`), generated here and
//! nowhere else. Every import may trap (`trappable`): a guest that passes a handle the host
//! does not know (an unknown timer, a dropped BPF object) is stopped, rather than answered
//! with a made-up value.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    imports: { default: trappable },
    with: {
        "kpulse:plugin/clock.timer": crate::timers::TimerHandle,
        "kpulse:plugin/bpf.object": crate::bpf::BpfObject,
        "kpulse:plugin/profiler.session": crate::profiler::Session,
    },
});

pub use kpulse::plugin::types::{ErrorCode, Kinds, Level, MetricKind, RunType};
pub use kpulse::plugin::{
    bpf, clock, containers, fs, host, link_events, log, net, profiler, statfs, storage, types,
};

/// The contract version this host implements; components built for another are refused.
pub use crate::build_info::WIT_PACKAGE;
