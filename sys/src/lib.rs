//! The glibc allocator calls tend needs and no safe crate wraps: the only
//! `unsafe` in the workspace (tend itself forbids it; nix wraps the
//! syscalls). Both are no-ops off glibc: musl's allocator (the static ARM
//! builds) returns freed memory by itself and has one arena.
//!
//! Why (docs/footprint.md): glibc keeps what a sync freed on its free lists
//! (4–8 MiB after a 1,000-file sync, with 1.6 MiB live), and gives each thread
//! that allocates an arena of its own.

/// One malloc arena for every thread, set once at start: tend's threads are
/// few and seldom allocate at the same time, and each extra arena keeps its
/// own freed memory.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn one_arena() {
    const M_ARENA_MAX: i32 = -8;
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    // SAFETY: mallopt takes two integers and no pointers; glibc serialises it
    // with every other allocator call. Called before any thread is started.
    unsafe {
        mallopt(M_ARENA_MAX, 1);
    }
}

/// Give the pages of freed memory back to the system (`malloc_trim(0)`),
/// after a burst of work (a sync). Returns whether glibc released anything.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() -> bool {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: malloc_trim takes an integer and no pointers; glibc serialises
    // it with every other allocator call.
    unsafe { malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn one_arena() {}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn freed_memory_is_released() {
        super::one_arena();
        // Many small blocks, most freed, one kept at the end so the heap's
        // top cannot shrink by itself.
        let mut v: Vec<Vec<u8>> = (0..20_000).map(|i| vec![i as u8; 512]).collect();
        let keep = v.pop();
        drop(v);
        let released = super::release_free_memory();
        assert!(keep.is_some());
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(released, "glibc released nothing");
        }
    }
}
