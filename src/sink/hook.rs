//! Running a sink's `on_publish` command: a minimal environment, its own
//! process group, bounded output, and success decided by the direct child.
//!
//! - **Environment**: cleared, then only `PATH` (the daemon's, else
//!   [`DEFAULT_PATH`]), the locale variables ([`LOCALE_VARS`]) the daemon
//!   has, the `REKEY_*` variables of the publication, and the variables the
//!   sink lists in `pass_env`. Nothing else of the daemon's environment (a
//!   provider secret given as `{ env = … }`, `$CREDENTIALS_DIRECTORY`,
//!   `$NOTIFY_SOCKET`) reaches the command.
//! - **Process group**: the command leads a group of its own; on timeout
//!   (or when the publish is abandoned) the whole group gets `SIGKILL`, so
//!   no grandchild outlives a failed hook.
//! - **Exit**: success is the direct child's exit status. Its stderr goes
//!   into a buffer of at most [`MAX_STDERR`] bytes (the tail is kept); once
//!   the child has exited we wait at most [`DRAIN_AFTER_EXIT`] for the pipe
//!   to close, so a descendant left holding it (`sleep 60 & exit 0`) cannot
//!   hold the publication up. stdin and stdout are `/dev/null`.

use std::ffi::{OsStr, OsString};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// `PATH` when the daemon has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Locale variables passed through when set.
pub const LOCALE_VARS: &[&str] = &[
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_NUMERIC",
    "LC_TIME",
    "LC_COLLATE",
    "LC_MONETARY",
    "LC_MESSAGES",
    "LC_PAPER",
    "LC_NAME",
    "LC_ADDRESS",
    "LC_TELEPHONE",
    "LC_MEASUREMENT",
    "LC_IDENTIFICATION",
];

/// Bytes of stderr kept (the last ones).
pub const MAX_STDERR: usize = 64 * 1024;

/// After the child exits, how long its stderr pipe may stay open before we
/// stop reading.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// How the command ended.
#[derive(Debug)]
pub enum Outcome {
    /// The direct child exited; `stderr` holds at most [`MAX_STDERR`] bytes.
    Exited { status: ExitStatus, stderr: Vec<u8> },
    /// It ran past the timeout; its process group was killed.
    TimedOut,
}

/// The hook's whole environment: `PATH`, locale, `rekey` (the `REKEY_*`
/// variables), then `pass_env` names the daemon has. `daemon_env` reads the
/// daemon's environment (tests pass their own).
pub fn environment(
    rekey: &[(&str, String)],
    pass_env: &[String],
    daemon_env: &dyn Fn(&str) -> Option<OsString>,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    let mut set = |k: &str, v: OsString| {
        env.retain(|(n, _)| n != OsStr::new(k));
        env.push((k.into(), v));
    };
    set(
        "PATH",
        daemon_env("PATH")
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| DEFAULT_PATH.into()),
    );
    for k in LOCALE_VARS {
        if let Some(v) = daemon_env(k) {
            set(k, v);
        }
    }
    for (k, v) in rekey {
        set(k, v.into());
    }
    for k in pass_env {
        if let Some(v) = daemon_env(k) {
            set(k, v);
        }
    }
    env
}

/// Kills the command's process group when dropped while armed: on timeout,
/// and when the publish future is dropped (shutdown) mid-run.
struct GroupGuard {
    pgid: Option<i32>,
}

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take()
            && pgid > 0
        {
            // SAFETY: killpg has no memory effects; a group that no longer
            // exists gives ESRCH, which is fine.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run `argv` (no shell) with exactly `env`, bounded by `timeout`.
/// `Err`: the command could not be started.
pub async fn run(
    argv: &[String],
    env: &[(OsString, OsString)],
    timeout: Duration,
) -> std::io::Result<Outcome> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let mut guard = GroupGuard {
        pgid: child.id().map(|p| p as i32),
    };
    let mut stderr = child.stderr.take();
    let reader = tokio::spawn(async move {
        let mut kept: Vec<u8> = Vec::new();
        let mut buf = [0u8; 4096];
        if let Some(s) = stderr.as_mut() {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        kept.extend_from_slice(&buf[..n]);
                        if kept.len() > MAX_STDERR {
                            let drop_n = kept.len() - MAX_STDERR;
                            kept.drain(..drop_n);
                        }
                    }
                }
            }
        }
        kept
    });
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(s) => s?,
        Err(_) => {
            guard.kill();
            let _ = child.kill().await;
            reader.abort();
            return Ok(Outcome::TimedOut);
        }
    };
    // The child is gone; its descendants stay (a hook may start a service)
    // but may not hold us up.
    guard.pgid = None;
    let mut reader = reader;
    let stderr = match tokio::time::timeout(DRAIN_AFTER_EXIT, &mut reader).await {
        Ok(Ok(kept)) => kept,
        _ => {
            reader.abort();
            Vec::new()
        }
    };
    Ok(Outcome::Exited { status, stderr })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn the_environment_is_path_locale_rekey_and_pass_env_only() {
        let daemon = |k: &str| -> Option<OsString> {
            match k {
                "PATH" => Some("/bin".into()),
                "LANG" => Some("C.UTF-8".into()),
                "OB_SK" => Some("provider-secret".into()),
                "CREDENTIALS_DIRECTORY" => Some("/run/credentials/rekey".into()),
                "MYAPP_SOCKET" => Some("/run/myapp.sock".into()),
                _ => None,
            }
        };
        let env = environment(
            &[("REKEY_POLICY", "p".into())],
            &["MYAPP_SOCKET".into(), "UNSET".into()],
            &daemon,
        );
        let names: Vec<String> = env
            .iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["PATH", "LANG", "REKEY_POLICY", "MYAPP_SOCKET"]);
        let none = environment(&[], &[], &|_| None);
        assert_eq!(none, vec![("PATH".into(), DEFAULT_PATH.into())]);
    }

    #[tokio::test]
    async fn a_hook_sees_exactly_the_listed_environment() {
        let env = environment(&[("REKEY_POLICY", "p".into())], &[], &|k| {
            std::env::var_os(k)
        });
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let script = format!("env > '{}'", out.display());
        let r = run(&sh(&script), &env, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(matches!(r, Outcome::Exited { status, .. } if status.success()));
        let mut seen: Vec<String> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_string()))
            // The shell itself adds these three.
            .filter(|k| !matches!(k.as_str(), "PWD" | "SHLVL" | "_"))
            .collect();
        seen.sort();
        let mut want: Vec<String> = env
            .iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        want.sort();
        assert_eq!(seen, want);
    }

    #[tokio::test]
    async fn a_hook_leaving_a_child_on_its_stderr_succeeds_at_once() {
        let env = environment(&[], &[], &|_| None);
        let started = Instant::now();
        let r = run(
            &sh("echo started >&2; sleep 47 & exit 0"),
            &env,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        match r {
            Outcome::Exited { status, .. } => assert!(status.success()),
            Outcome::TimedOut => panic!("timed out"),
        }
    }

    #[tokio::test]
    async fn a_timed_out_hook_leaves_no_process_of_its_group_behind() {
        let env = environment(&[], &[], &|_| None);
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let script = format!(
            "sleep 300 & echo $! > '{p}'; sh -c 'sleep 300' & echo $! >> '{p}'; wait",
            p = pids.display()
        );
        let r = run(&sh(&script), &env, Duration::from_millis(500))
            .await
            .unwrap();
        assert!(matches!(r, Outcome::TimedOut));
        let pids: Vec<u32> = std::fs::read_to_string(&pids)
            .unwrap()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 2);
        // SIGKILL is delivered at once, but give the kernel a moment to
        // reap; a zombie (state Z, reaped by init later) is gone too.
        let deadline = Instant::now() + Duration::from_secs(5);
        for pid in pids {
            loop {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let state = stat.rsplit(')').next().unwrap_or("").trim().chars().next();
                if stat.is_empty() || state == Some('Z') {
                    break;
                }
                assert!(Instant::now() < deadline, "pid {pid} still runs: {stat}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    #[tokio::test]
    async fn stderr_is_bounded() {
        let env = environment(&[], &[], &|_| None);
        let r = run(
            &sh("head -c 1000000 /dev/zero | tr '\\0' x >&2; exit 2"),
            &env,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        match r {
            Outcome::Exited { status, stderr } => {
                assert_eq!(status.code(), Some(2));
                assert!(stderr.len() <= MAX_STDERR, "{}", stderr.len());
            }
            Outcome::TimedOut => panic!("timed out"),
        }
    }
}
