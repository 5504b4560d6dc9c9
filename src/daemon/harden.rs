//! Process hardening at start: a crash must never write secrets to disk, so
//! core dumps are turned off (`RLIMIT_CORE=0`) and the process is made
//! non-dumpable (`PR_SET_DUMPABLE=0`, which also keeps other users' ptrace
//! out). The systemd unit sets `LimitCORE=0` too.
//!
//! Memory: glibc gives every thread its own malloc arena and keeps freed
//! memory mapped; a daemon that is idle almost always should not carry the
//! peak of its last busy minute. [`limit_malloc_arenas`] caps the arenas at
//! start and [`release_free_memory`] returns free heap to the OS when the
//! daemon goes idle.

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

/// Cap glibc's malloc arenas (one per thread by default) at two.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before the
    // daemon's threads allocate much.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Give free heap pages back to the OS (glibc `malloc_trim`).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
