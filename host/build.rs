//! Build facts for `kpulse_build_info` and `/version`, taken from Cargo's own records so no
//! version is written twice: the wasmtime version from `Cargo.lock`, the WIT package from
//! `wit/kpulse.wit`, the compiler from `$RUSTC --version`.

use std::path::Path;

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_owned());
    let root = Path::new(&manifest).join("..");
    let lock = root.join("Cargo.lock");
    let wit = root.join("wit/kpulse.wit");
    println!("cargo:rerun-if-changed={}", lock.display());
    println!("cargo:rerun-if-changed={}", wit.display());

    let wasmtime = std::fs::read_to_string(&lock)
        .ok()
        .and_then(|text| locked_version(&text, "wasmtime"))
        .unwrap_or_else(|| "unknown".to_owned());
    let package = std::fs::read_to_string(&wit)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.trim().strip_prefix("package "))
                .map(|rest| rest.trim_end_matches(';').trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let rustc_version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());

    println!("cargo:rustc-env=KPULSE_WASMTIME_VERSION={wasmtime}");
    println!("cargo:rustc-env=KPULSE_WIT_PACKAGE={package}");
    println!("cargo:rustc-env=KPULSE_RUSTC_VERSION={rustc_version}");
}

/// The version of `name` in a Cargo.lock (`[[package]]` blocks of `name = ...` then
/// `version = ...`).
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == wanted {
            let version = lines.next()?.trim().strip_prefix("version = ")?;
            return Some(version.trim_matches('"').to_owned());
        }
    }
    None
}
