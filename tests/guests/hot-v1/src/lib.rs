//! Test guest `hot`, version 1 (marker 1).

const VERSION: &str = "1.0.0";
const MARKER: f64 = 1.0;

include!("../../hot-common.rs");
