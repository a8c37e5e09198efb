//! Giving freed heap back to the operating system. glibc keeps memory freed in its arenas for
//! reuse; after a large transient allocation (compiling a component, parsing the kernel BTF)
//! that would stay resident for the agent's whole life. A leaf.

/// Arenas glibc may create, unless `MALLOC_ARENA_MAX` says otherwise. By default glibc gives
/// threads up to eight arenas per core, and each keeps its own free memory: with one actor
/// thread per plugin, most of them idle, that is megabytes of retained heap for no contention
/// worth avoiding (the plugins' hot paths run in wasm linear memory, not malloc).
const ARENA_MAX: i32 = 2;

/// Allocations from this size up get their own mapping, returned to the OS when freed.
/// Setting it also turns off glibc's dynamic threshold, which rises to the size of each large
/// block freed (up to 32 MiB): after parsing the kernel BTF at start-up, later large blocks
/// would come from the arenas and pin their pages.
const MMAP_THRESHOLD: i32 = 256 * 1024;

/// Caps the malloc arenas at [`ARENA_MAX`] and fixes the mmap threshold at
/// [`MMAP_THRESHOLD`], unless the `MALLOC_*` environment variables say otherwise; call before
/// any thread starts.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    for (variable, parameter, value) in [
        ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, ARENA_MAX),
        (
            "MALLOC_MMAP_THRESHOLD_",
            libc::M_MMAP_THRESHOLD,
            MMAP_THRESHOLD,
        ),
    ] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: mallopt only sets an allocator parameter; called before other threads
            // exist.
            #[allow(unsafe_code, reason = "glibc's mallopt has no safe wrapper")]
            unsafe {
                libc::mallopt(parameter, value);
            }
        }
    }
}

/// Returns the free pages of every malloc arena to the OS.
pub fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free pages of the allocator's own arenas.
    #[allow(unsafe_code, reason = "glibc's malloc_trim has no safe wrapper")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// [`release_free_heap`] at most once per `interval` in the process, for paths that free a
/// burst of small allocations often (a `/metrics` scrape), where trimming each time would cost
/// more than the pages are worth.
pub fn release_free_heap_every(interval: std::time::Duration) {
    use std::sync::{Mutex, PoisonError};
    use std::time::Instant;
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let now = Instant::now();
    {
        let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| now.duration_since(at) < interval) {
            return;
        }
        *last = Some(now);
    }
    release_free_heap();
}

/// Asks the kernel to reclaim the pages of `start..end` (rounded inward to whole pages) that
/// only this process maps: for memory whose contents are never needed again, or only rarely
/// and then read back from its file. `MADV_PAGEOUT` never changes what the memory holds (clean
/// file pages are dropped and read again on the next access; anonymous pages without swap
/// stay), so it is safe on any mapping. Kernels before 5.4 lack it; then nothing happens.
pub fn page_out(start: *const u8, end: *const u8) {
    const PAGE: usize = 4096;
    let first = (start as usize).div_ceil(PAGE) * PAGE;
    let last = end as usize / PAGE * PAGE;
    if last <= first {
        return;
    }
    // SAFETY: madvise(MADV_PAGEOUT) only hints reclaim; it does not unmap the range or alter
    // its contents, so any later access sees the same bytes.
    #[allow(unsafe_code, reason = "madvise has no safe wrapper")]
    unsafe {
        libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_PAGEOUT);
    }
}
