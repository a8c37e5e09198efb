//! Test guest `hot`, version 2 (marker 2).

const VERSION: &str = "2.0.0";
const MARKER: f64 = 2.0;

include!("../../hot-common.rs");
