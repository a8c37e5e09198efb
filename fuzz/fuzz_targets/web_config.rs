//! node_exporter's web-config YAML (`host/src/http/web_config.rs`, `--web.config.file`):
//! any file gives a `WebSecurity` or a `WebConfigError` naming the problem, never a panic
//! (certificate and key paths it names are read relative to the file, as in
//! exporter-toolkit; the seeds name missing files and the system CA bundle).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

static FILE: LazyLock<std::path::PathBuf> = LazyLock::new(|| {
    std::env::temp_dir().join(format!("kpulse-fuzz-web-{}.yml", std::process::id()))
});

fuzz_target!(|data: &[u8]| {
    std::fs::write(&*FILE, data).expect("temporary file");
    match kpulse::http::web_config::load(&FILE) {
        Ok(security) => {
            let _ = (security.tls.is_some(), security.basic_auth.is_some());
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }
});
