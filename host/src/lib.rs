//! kpulse: a Linux kernel observability agent whose collectors are sandboxed WebAssembly
//! components.
//!
//! The host owns everything privileged (file access, storage, HTTP, later BPF) and offers it
//! to plugins through the `kpulse:plugin` WIT world; plugins are actors the host calls one at
//! a time under a deadline. See `docs/architecture.md`.

pub mod agent;
pub mod backoff;
pub mod bpf;
pub mod build_info;
pub mod cli;
pub mod config;
pub mod containers;
pub mod counter;
pub mod fsaccess;
pub mod heap;
pub mod host_api;
pub mod hostinfo;
pub mod http;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod plugins;
pub mod profiler;
pub mod record;
pub mod remote;
pub mod runtime;
pub mod rxstamp;
pub mod same_file;
pub mod sinks;
pub mod statfs;
pub mod storage;
pub mod timers;
pub mod wit;
