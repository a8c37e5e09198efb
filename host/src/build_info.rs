//! What this binary is: versions recorded by `build.rs` from Cargo's metadata.

/// The agent's version (the workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The wasmtime version in `Cargo.lock`.
pub const WASMTIME: &str = env!("KPULSE_WASMTIME_VERSION");
/// The WIT package this host implements, from `wit/kpulse.wit`.
pub const WIT_PACKAGE: &str = env!("KPULSE_WIT_PACKAGE");
/// The compiler that built the agent.
pub const RUSTC: &str = env!("KPULSE_RUSTC_VERSION");
