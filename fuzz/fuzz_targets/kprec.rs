//! `.kprec` recordings (`host/src/record.rs`), which `kpulse replay` reads from any file
//! it is given: a bad file is an error, a truncated one gives its whole frames, never a
//! panic; and every frame's records are counted like a live batch.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

/// One file per fuzzing process, rewritten for each input (the reader takes a path).
static FILE: LazyLock<std::path::PathBuf> = LazyLock::new(|| {
    std::env::temp_dir().join(format!("kpulse-fuzz-{}.kprec", std::process::id()))
});

fuzz_target!(|data: &[u8]| {
    std::fs::write(&*FILE, data).expect("temporary file");
    if let Ok((_meta, frames)) = kpulse::record::read(&FILE) {
        let mut total = 20;
        for frame in &frames {
            let _ = kpulse::record::count_records(&frame.records);
            total += 20 + frame.records.len();
        }
        assert!(total <= data.len() + 20, "frames read past the file");
    }
});
