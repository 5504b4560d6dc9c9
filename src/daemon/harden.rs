//! Process hardening at start: a crash must never write secrets to disk, so
//! core dumps are turned off (`RLIMIT_CORE=0`) and the process is made
//! non-dumpable (`PR_SET_DUMPABLE=0`, which also keeps other users' ptrace
//! out). The systemd unit sets `LimitCORE=0` too.

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
