//! Process hardening at start: a crash must never write secrets to disk, so
//! core dumps are turned off (`RLIMIT_CORE=0`) and the process is made
//! non-dumpable (`PR_SET_DUMPABLE=0`, which also keeps other users' ptrace
//! out). The systemd unit sets `LimitCORE=0` too.
//!
//! Memory: glibc gives every thread its own malloc arena and keeps freed
//! memory mapped; a daemon that is idle almost always should not carry the
//! peak of its last busy minute. [`tune_malloc`] caps the arenas and fixes
//! the mmap and trim thresholds at start, and [`release_free_memory`]
//! returns free heap to the OS when the daemon goes idle.

pub fn disable_core_dumps() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with valid arguments.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
            tracing::warn!(
                "cannot set RLIMIT_CORE=0: {}",
                std::io::Error::last_os_error()
            );
        }
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            tracing::warn!(
                "cannot set PR_SET_DUMPABLE=0: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// glibc malloc tuning, set once at start (`mallopt(3)`):
/// - at most two arenas (`M_ARENA_MAX`; the default is one per thread, up
///   to 8 × cores), unless the environment sets `MALLOC_ARENA_MAX` (glibc's
///   own variable, then left to glibc). One arena was measured too: 8 MiB
///   less peak RSS on the scale benchmark, but its planning round took
///   4.15 s of CPU instead of 1.68 s (concurrent checks contend for the
///   arena's lock; benches/RESULTS.md, 2026-12-01 05:36);
/// - blocks of [`MMAP_THRESHOLD`] bytes or more are their own mappings
///   (`M_MMAP_THRESHOLD`), returned to the OS when freed. Setting it also
///   stops glibc's dynamic threshold, which otherwise rises to 32 MiB after
///   the first large free, so that a walk's pages, a `/status` body or a
///   JSON document later land in the heap and pin it at the peak;
/// - the heap's free top is returned above [`TRIM_THRESHOLD`] bytes
///   (`M_TRIM_THRESHOLD`, default 128 KiB but dynamic).
///
/// Measured on the idle benchmark (100 policies over 10,000 keys): peak
/// RSS 39.0 → 35.5 MiB (benches/RESULTS.md, 2026-12-01).
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called first thing in
    // main, before any other thread exists.
    unsafe {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Allocations of this many bytes or more get a mapping of their own.
pub const MMAP_THRESHOLD: i32 = 64 * 1024;

/// Free memory at the top of the heap beyond this is returned at once.
pub const TRIM_THRESHOLD: i32 = 128 * 1024;

/// Give free heap pages back to the OS (glibc `malloc_trim`).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
