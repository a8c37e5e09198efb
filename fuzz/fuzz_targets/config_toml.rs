//! The agent's TOML config (`kpulse.toml`, `host/src/config.rs`): any text gives a config
//! or a `ConfigError`, never a panic; a config that parses also answers its per-plugin
//! accessors.
#![no_main]

use std::path::Path;

use kpulse::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text, Path::new("/fuzz/kpulse.toml")) {
        for plugin in ["cpu", "x", ""] {
            let _ = config.deadline_ms(plugin);
            let _ = config.memory_bytes(plugin);
            let json = config.plugin_config_json(plugin);
            assert!(
                serde_json::from_str::<serde_json::Value>(&json).is_ok(),
                "a plugin's config is handed to it as JSON: {json:?}"
            );
        }
        let _ = config.policy.cgroup_root();
    }
});
