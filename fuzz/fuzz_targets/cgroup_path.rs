//! Cgroup path classification (`host/src/containers/cgroup_path.rs`): any path (cgroup names
//! are chosen by whoever creates them) gives a class without a panic, and a container's
//! prefix is a prefix of the path that contains its 64-hex-digit id.
#![no_main]

use kpulse::containers::cgroup_path::{PathClass, classify, is_hex_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    match classify(path) {
        PathClass::Container(container) => {
            assert!(path.starts_with(container.prefix));
            assert!(container.prefix.contains(container.id));
            assert!(is_hex_id(container.id), "{:?}", container.id);
        }
        PathClass::Unit { prefix } => {
            assert!(path.starts_with(prefix));
            assert!(prefix.ends_with(".service") || prefix.ends_with(".scope"));
        }
        PathClass::Other => {}
    }
});
