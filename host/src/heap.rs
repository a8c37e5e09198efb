//! Giving freed heap back to the operating system. glibc keeps memory freed in its arenas for
//! reuse; after a large transient allocation (compiling a component, parsing the kernel BTF)
//! that would stay resident for the agent's whole life. A leaf.

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
