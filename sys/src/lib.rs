//! The calls tend needs that no safe crate wraps: the only `unsafe` in the
//! workspace (tend itself forbids it; nix wraps the other syscalls). Two glibc
//! allocator calls, no-ops off glibc (musl's allocator, in the static ARM
//! builds, returns freed memory by itself and has one arena), and one
//! `madvise` that gives back the pages of the program's own code.
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

/// Unmap the pages of this program's own code and read-only data from the
/// process (`madvise(MADV_DONTNEED)`), after a burst of work: they stay in the
/// page cache, where the kernel can reclaim them under pressure, and the next
/// access maps them again from there (a minor fault, no read). Start-up and a
/// sync touch most of the binary once; an idle daemon needs little of it.
///
/// Only mappings of the executable that are not writable and hold no
/// anonymous (copied) page are touched: those are clean file pages, and
/// dropping them loses nothing (relocated data, `.data.rel.ro`, is copied
/// and left alone). Returns the bytes unmapped.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn release_code_pages() -> usize {
    const MADV_DONTNEED: i32 = 4;
    unsafe extern "C" {
        fn madvise(addr: *mut core::ffi::c_void, len: usize, advice: i32) -> i32;
    }
    let mut released = 0;
    for (start, end) in clean_code_mappings() {
        // SAFETY: [start, end) is a whole mapping of our own executable that
        // is read-only and has no anonymous page (checked in
        // clean_code_mappings): MADV_DONTNEED only drops the page-table
        // entries of clean file pages, which later accesses fault in again
        // with the same content. No Rust reference points into it as data
        // that could observe a change, because its content cannot change.
        let rc = unsafe { madvise(start as *mut core::ffi::c_void, end - start, MADV_DONTNEED) };
        if rc == 0 {
            released += end - start;
        }
    }
    released
}

#[cfg(not(target_os = "linux"))]
pub fn release_code_pages() -> usize {
    0
}

/// The read-only mappings of the executable with no anonymous page, from
/// `/proc/self/smaps`.
#[cfg(target_os = "linux")]
fn clean_code_mappings() -> Vec<(usize, usize)> {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return Vec::new() };
    let exe = exe.to_string_lossy().into_owned();
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return Vec::new() };
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut parts = line.split_whitespace();
        let first = parts.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            // A mapping's header: range perms offset dev inode path.
            let perms = parts.next().unwrap_or("");
            let path = parts.nth(3).unwrap_or("");
            current =
                (path == exe && perms.starts_with('r') && perms.as_bytes().get(1) == Some(&b'-')).then_some((a, b));
        } else if first == "Anonymous:"
            && let Some(range) = current.take()
            && parts.next() == Some("0")
        {
            out.push(range);
        }
    }
    out
}

/// glibc's allocator tunables come from this variable, read at start.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TUNABLES: &str = "GLIBC_TUNABLES";

/// For the long-running daemon: start again (`exec`, same PID) with glibc's
/// per-thread caches off, unless the environment says already how many to
/// keep (the systemd unit sets it). Each thread's cache keeps up to seven
/// freed chunks of every small size; `malloc_trim` cannot return them, and
/// they keep heap pages resident (the soak of `benches/footprint.rs`: +3.4 MiB
/// with them, +0.9 MiB without). Call before any thread starts; returns only
/// when there is nothing to do or the exec failed (the process then goes on
/// with the caches).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn without_thread_caches() {
    use std::os::unix::process::CommandExt as _;
    let current = std::env::var(TUNABLES).unwrap_or_default();
    if current.contains("glibc.malloc.tcache_count") {
        return;
    }
    let value = if current.is_empty() {
        "glibc.malloc.tcache_count=0".to_owned()
    } else {
        format!("{current}:glibc.malloc.tcache_count=0")
    };
    // The executable's real path, not /proc/self/exe: the process name
    // (`comm`, what ps, pgrep and the journal show) comes from it.
    let Ok(exe) = std::env::current_exe() else { return };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    let _failed = std::process::Command::new(exe).arg0(arg0).args(args).env(TUNABLES, value).exec();
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn without_thread_caches() {}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn one_arena() {}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn code_pages_are_released_and_come_back() {
        let before = super::clean_code_mappings();
        assert!(!before.is_empty(), "no read-only mapping of the test binary found");
        let released = super::release_code_pages();
        assert!(released > 0);
        // Still runs: the code is mapped again on use.
        let v: Vec<u64> = (0..1000).map(|i| i * 3).collect();
        assert_eq!(v.iter().sum::<u64>(), 1_498_500);
        assert_eq!(super::clean_code_mappings().len(), before.len());
    }

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
