//! Compiles `bpf/rejected.bpf.c` with the same clang the product's objects use
//! (`BPF_CLANG`, default `clang-19`), into `OUT_DIR`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "bpf/rejected.bpf.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
    let clang = std::env::var("BPF_CLANG").unwrap_or_else(|_| "clang-19".to_owned());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("rejected.bpf.o");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall"])
        .arg("-I/usr/include/x86_64-linux-gnu")
        .args(["-c", source, "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|err| panic!("cannot run {clang} for {source}: {err}"));
    assert!(status.success(), "{clang} failed on {source}: {status}");
}
