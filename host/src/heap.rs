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
