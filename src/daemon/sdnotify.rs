//! Messages to systemd (`Type=notify`, PROTOCOLS.md §7.1) over the
//! `sd-notify` crate: `READY=1` once config and state are loaded,
//! `RELOADING=1` on SIGHUP (then `READY=1` again), `STOPPING=1` on shutdown,
//! `STATUS=` lines, and `WATCHDOG=1` pings from the main loop.
//!
//! Every function is a no-op returning `Ok(())` when `$NOTIFY_SOCKET` is
//! unset (not started by systemd, or started with `Type=simple`). An `Err`
//! means systemd will not hear us: log it; for [`ready`] under
//! `Type=notify` the unit will time out, so the caller may treat it as fatal.
//!
//! Child processes (a file sink's `on_publish` command) inherit
//! `$NOTIFY_SOCKET`; with `NotifyAccess=main` systemd ignores them, but a
//! spawner should still `env_remove` the variables in [`CHILD_ENV_REMOVE`].

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use sd_notify::NotifyState;

/// Variables a spawned child should not inherit.
pub const CHILD_ENV_REMOVE: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Whether a service manager is listening (`$NOTIFY_SOCKET` is set).
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty())
}

fn send(states: &[NotifyState<'_>]) -> io::Result<()> {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty()) else {
        return Ok(());
    };
    match socket.as_bytes().strip_prefix(b"@") {
        // sd-notify 0.5 connects to the value as a path, which fails for
        // the abstract namespace (`@name`, used in containers); the message
        // format is the crate's either way.
        Some(name) => send_abstract(name, states),
        None => sd_notify::notify(states),
    }
}

fn send_abstract(name: &[u8], states: &[NotifyState<'_>]) -> io::Result<()> {
    use std::fmt::Write as _;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    let mut msg = String::new();
    for s in states {
        let _ = writeln!(msg, "{s}");
    }
    let addr = SocketAddr::from_abstract_name(name)?;
    let sent = UnixDatagram::unbound()?.send_to_addr(msg.as_bytes(), &addr)?;
    if sent != msg.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "incomplete notify message",
        ));
    }
    Ok(())
}

/// Start-up (or a reload) finished: `READY=1`.
pub fn ready() -> io::Result<()> {
    send(&[NotifyState::Ready])
}

/// A reload began: `RELOADING=1` and `MONOTONIC_USEC=` in one message (what
/// `Type=notify-reload` requires and `Type=notify` accepts). Send
/// [`ready`] when the reload is done, whether or not the new config was
/// taken.
pub fn reloading() -> io::Result<()> {
    if !enabled() {
        return Ok(());
    }
    let now = NotifyState::monotonic_usec_now()?;
    send(&[NotifyState::Reloading, now])
}

/// Shutdown began: `STOPPING=1`.
pub fn stopping() -> io::Result<()> {
    send(&[NotifyState::Stopping])
}

/// A one-line status for `systemctl status`. Control characters (a newline
/// would start a new `KEY=` assignment) become spaces.
pub fn status(line: &str) -> io::Result<()> {
    let clean: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    send(&[NotifyState::Status(&clean)])
}

/// How often to call [`watchdog_ping`]: half of `$WATCHDOG_USEC`, when the
/// watchdog is on and meant for this process (`$WATCHDOG_PID` unset or our
/// pid) and a service manager is listening; `None` otherwise.
pub fn watchdog_interval() -> Option<Duration> {
    if !enabled() {
        return None;
    }
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// [`watchdog_interval`] on explicit values (pure, for tests).
pub fn watchdog_interval_from(
    watchdog_usec: Option<&str>,
    watchdog_pid: Option<&str>,
    own_pid: u32,
) -> Option<Duration> {
    let usec: u64 = watchdog_usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = watchdog_pid
        && pid.trim().parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    Some(Duration::from_micros(usec) / 2)
}

/// Keep-alive: `WATCHDOG=1`. Call it from the main loop itself (not from an
/// independent timer task), so a stuck loop stops the pings.
pub fn watchdog_ping() -> io::Result<()> {
    send(&[NotifyState::Watchdog])
}

#[cfg(test)]
mod tests {
    //! The functions read `$NOTIFY_SOCKET` and friends from the process
    //! environment, which is shared by every test thread (and `set_var` is
    //! unsound while other threads may read it). So each case re-runs this
    //! test binary as a child, filtered to that one test, with the variables
    //! set in the *child's* environment; the child sends, the parent
    //! listens on a datagram socket and asserts.

    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::process::Command;

    const CHILD: &str = "REKEY_SDNOTIFY_TEST_CHILD";

    fn is_child() -> bool {
        std::env::var_os(CHILD).is_some()
    }

    /// A fake service manager: a datagram socket in a temp dir.
    struct Manager {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        sock: UnixDatagram,
    }

    impl Manager {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("notify.sock");
            let sock = UnixDatagram::bind(&path).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            Manager {
                _dir: dir,
                path,
                sock,
            }
        }

        fn recv(&self) -> String {
            let mut buf = [0u8; 4096];
            let n = self.sock.recv(&mut buf).expect("a notify message");
            String::from_utf8(buf[..n].to_vec()).unwrap()
        }
    }

    /// Run test `name` of this module in a child process with `env`.
    fn run_child(name: &str, env: &[(&str, &str)]) {
        let module = module_path!().split_once("::").unwrap().1;
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            &format!("{module}::{name}"),
            "--exact",
            "--test-threads=1",
            "--quiet",
        ])
        .env(CHILD, "1");
        for var in CHILD_ENV_REMOVE {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child {name} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn ready_stopping_and_ping_send_their_assignments() {
        if is_child() {
            ready().unwrap();
            watchdog_ping().unwrap();
            stopping().unwrap();
            return;
        }
        let m = Manager::new();
        run_child(
            "ready_stopping_and_ping_send_their_assignments",
            &[("NOTIFY_SOCKET", m.path.to_str().unwrap())],
        );
        assert_eq!(m.recv(), "READY=1\n");
        assert_eq!(m.recv(), "WATCHDOG=1\n");
        assert_eq!(m.recv(), "STOPPING=1\n");
    }

    #[test]
    fn reloading_sends_monotonic_usec_in_the_same_message() {
        if is_child() {
            reloading().unwrap();
            return;
        }
        let m = Manager::new();
        run_child(
            "reloading_sends_monotonic_usec_in_the_same_message",
            &[("NOTIFY_SOCKET", m.path.to_str().unwrap())],
        );
        let msg = m.recv();
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(lines.len(), 2, "{msg:?}");
        assert_eq!(lines[0], "RELOADING=1");
        let usec = lines[1]
            .strip_prefix("MONOTONIC_USEC=")
            .expect("MONOTONIC_USEC");
        assert!(usec.parse::<u64>().unwrap() > 0, "{msg:?}");
    }

    #[test]
    fn status_is_one_line_even_when_given_several() {
        if is_child() {
            status("rotating 3 keys\nREADY=1").unwrap();
            return;
        }
        let m = Manager::new();
        run_child(
            "status_is_one_line_even_when_given_several",
            &[("NOTIFY_SOCKET", m.path.to_str().unwrap())],
        );
        assert_eq!(m.recv(), "STATUS=rotating 3 keys READY=1\n");
    }

    #[test]
    fn abstract_notify_socket_is_reached() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::SocketAddr;
        if is_child() {
            ready().unwrap();
            return;
        }
        let name = format!("rekey-sdnotify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        run_child(
            "abstract_notify_socket_is_reached",
            &[("NOTIFY_SOCKET", &format!("@{name}"))],
        );
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
    }

    #[test]
    fn watchdog_interval_is_half_of_watchdog_usec_for_us() {
        if is_child() {
            status(&format!("{:?}", watchdog_interval())).unwrap();
            return;
        }
        let m = Manager::new();
        let sock = m.path.to_str().unwrap();
        run_child(
            "watchdog_interval_is_half_of_watchdog_usec_for_us",
            &[("NOTIFY_SOCKET", sock), ("WATCHDOG_USEC", "30000000")],
        );
        assert_eq!(m.recv(), "STATUS=Some(15s)\n");
        // Meant for another process (pid 1 is never a test binary).
        run_child(
            "watchdog_interval_is_half_of_watchdog_usec_for_us",
            &[
                ("NOTIFY_SOCKET", sock),
                ("WATCHDOG_USEC", "30000000"),
                ("WATCHDOG_PID", "1"),
            ],
        );
        assert_eq!(m.recv(), "STATUS=None\n");
    }

    #[test]
    fn everything_is_a_no_op_without_notify_socket() {
        if is_child() {
            assert!(!enabled());
            ready().unwrap();
            reloading().unwrap();
            status("x").unwrap();
            watchdog_ping().unwrap();
            stopping().unwrap();
            assert_eq!(watchdog_interval(), None);
            return;
        }
        // WATCHDOG_USEC alone: no manager to ping, so no interval either.
        run_child(
            "everything_is_a_no_op_without_notify_socket",
            &[("WATCHDOG_USEC", "30000000")],
        );
    }

    #[test]
    fn watchdog_interval_from_honours_pid_and_rejects_nonsense() {
        let half = Some(Duration::from_secs(15));
        assert_eq!(watchdog_interval_from(Some("30000000"), None, 42), half);
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("42"), 42),
            half
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("43"), 42),
            None
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("junk"), 42),
            None
        );
        assert_eq!(watchdog_interval_from(None, None, 42), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 42), None);
        assert_eq!(watchdog_interval_from(Some("-5"), None, 42), None);
    }
}
