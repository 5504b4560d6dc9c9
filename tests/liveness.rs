//! Liveness and honest health with the real binary: a failure that lasts
//! costs bounded calls, log lines and CPU time (measured as the process's
//! own CPU time from /proc, never as wall-clock thresholds); a lost seal
//! key refuses start and `rekey abandon` works offline; `rekey rotate
//! --wait` and `rekey retry` drive a rotation from the command line.

use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use rekey::emulator::oceanbase::{Faults, ForcedFault, Operation};
use rekey::state::RotationState;

use crate::e2e::{Env, tail, terminate};

const BIN: &str = env!("CARGO_BIN_EXE_rekey");

/// User + system CPU time the process has used so far (proc(5): fields 14
/// and 15 of /proc/PID/stat, in clock ticks).
fn cpu_time(child: &Child) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
    // The command name (field 2) may hold spaces; fields follow its ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn lines_with(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Let a failure go on for `span` after `started`; return the CPU time the
/// daemon used in that span.
async fn cpu_over(child: &Child, span: Duration) -> Duration {
    let before = cpu_time(child);
    tokio::time::sleep(span).await;
    cpu_time(child) - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_keeps_failing_costs_bounded_tries_log_lines_and_cpu() {
    let env = Env::new().await;
    env.seed(1, 1);
    let cfg = env.config("later/{lineage}.env", "max_attempts = 100");
    let mut d = env.spawn(&cfg, None);
    env.wait_for("the next key to be created", Duration::from_secs(60), |e| {
        e.rotations()
            .iter()
            .any(|r| r.state == RotationState::Created && r.failures > 0)
    })
    .await;
    let log_before = env.log().lines().count();
    let cpu = cpu_over(&d, Duration::from_secs(8)).await;
    let r = env.rotations()[0].clone();
    let acks = env.store().unwrap().sink_acks(&r.id).unwrap();
    let log = env.log();
    let new_lines: String = log.lines().skip(log_before).collect::<Vec<_>>().join("\n");
    assert_eq!(terminate(&mut d), 0);
    // 100 ms doubling (jittered): about 7 tries in 8 s, not thousands.
    assert!(acks[0].attempts <= 15, "{} sink tries", acks[0].attempts);
    assert!(
        lines_with(&new_lines, "WARN") + lines_with(&new_lines, "ERROR") <= 30,
        "log flood:\n{}",
        tail(&new_lines, 40)
    );
    assert!(cpu < Duration::from_millis(1500), "{cpu:?} of CPU in 8 s");
    assert!(
        env.emu.keys().iter().any(|k| k.name == "app-0"),
        "old key kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_that_keeps_failing_costs_bounded_calls_log_lines_and_cpu() {
    let env = Env::new().await;
    env.seed(1, 1);
    env.emu
        .set_faults(Faults {
            force: vec![ForcedFault {
                operation: Operation::Delete,
                status: 403,
                count: 10_000,
                style: Default::default(),
                code: Some("AccessDenied".into()),
                message: Some("may not delete".into()),
                retry_after: None,
            }],
            ..Default::default()
        })
        .unwrap();
    let cfg = env.config("keys/{lineage}.env", "");
    let mut d = env.spawn(&cfg, None);
    env.wait_for("the first failed delete", Duration::from_secs(60), |e| {
        e.emu.stats().delete.requests > 0
    })
    .await;
    let deletes = env.emu.stats().delete.requests;
    let log_before = env.log().lines().count();
    let cpu = cpu_over(&d, Duration::from_secs(8)).await;
    let deletes = env.emu.stats().delete.requests - deletes;
    let log = env.log();
    let new_lines: String = log.lines().skip(log_before).collect::<Vec<_>>().join("\n");
    let status: serde_json::Value = {
        let ep = log
            .lines()
            .find(|l| l.contains("rekey ready"))
            .and_then(|l| l.split("endpoint=").nth(1))
            .map(|s| {
                s.split_whitespace()
                    .next()
                    .unwrap()
                    .trim_matches('"')
                    .to_string()
            })
            .unwrap();
        reqwest::get(format!("{ep}/status"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    assert_eq!(terminate(&mut d), 0);
    assert!(deletes <= 12, "{deletes} deletes in 8 s");
    assert!(
        lines_with(&new_lines, "WARN") + lines_with(&new_lines, "ERROR") <= 30,
        "log flood:\n{}",
        tail(&new_lines, 40)
    );
    assert!(cpu < Duration::from_millis(1500), "{cpu:?} of CPU in 8 s");
    let lineage = &status["policies"][0]["lineages"][0];
    assert_eq!(lineage["health"], "failing", "{status:#}");
    assert_eq!(lineage["reason"], "retire_failing", "{status:#}");
    let events = env.store().unwrap().events_after(0, 1000).unwrap();
    assert_eq!(
        events.iter().filter(|e| e.kind == "retire.failing").count(),
        1,
        "once per condition"
    );
}

fn run_cli(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_seal_key_refuses_start_until_the_rotation_is_abandoned_offline() {
    let env = Env::new().await;
    env.seed(1, 1);
    let cfg = env.config("later/{lineage}.env", "max_attempts = 2");
    let mut d = env.spawn(&cfg, None);
    env.wait_for(
        "a rotation failed after create",
        Duration::from_secs(60),
        |e| {
            e.rotations()
                .iter()
                .any(|r| r.state == RotationState::Failed && r.created_at.is_some())
        },
    )
    .await;
    assert_eq!(terminate(&mut d), 0);
    let r = env.rotations()[0].clone();
    assert_eq!(env.emu.keys().len(), 2);
    // A different key in its place: refused, and the file is left alone.
    let key_file = env.path("state.db.key");
    let other = "ab".repeat(32);
    std::fs::write(&key_file, &other).unwrap();
    let out = run_cli(&["run", "-c", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("refusing to start") && err.contains("a different or replaced key"),
        "{err}"
    );
    assert!(
        err.contains(&r.id) && err.contains("rekey abandon"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), other);
    // No key at all: refused too.
    std::fs::remove_file(&key_file).unwrap();
    let out = run_cli(&["run", "-c", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("refusing to start"), "{err}");
    assert!(
        err.contains(&r.id) && err.contains("rekey abandon"),
        "{err}"
    );
    assert!(!env.path("state.db.key").exists(), "no silent replacement");
    // Offline abandon: deletes the key no sink acknowledged.
    let out = run_cli(&["abandon", "-c", cfg.to_str().unwrap(), &r.id]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<String> = env.emu.keys().into_iter().map(|k| k.name).collect();
    assert_eq!(names, ["app-0"]);
    // Now it starts (a fresh seal key) and rotates again.
    std::fs::create_dir_all(env.path("later")).unwrap();
    let mut d = env.spawn(&cfg, None);
    env.wait_for("a new rotation to publish", Duration::from_secs(60), |e| {
        e.rotations()
            .iter()
            .any(|x| x.id != r.id && x.published_at.is_some())
    })
    .await;
    assert_eq!(terminate(&mut d), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_abandon_with_no_state_db_creates_none_and_says_so() {
    // A typo'd config, or a daemon that never ran: `sudo rekey abandon -c`
    // created an empty DB (and its directory), root's and 0600, where the
    // daemon's own user would later fail to open it.
    let env = Env::new().await;
    let cfg = env.config("later/{lineage}.env", "");
    let out = run_cli(&["abandon", "-c", cfg.to_str().unwrap(), "r-1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no state DB"), "{err}");
    for f in ["state.db", "state.db.lock", "state.db-wal", "state.db.key"] {
        assert!(!env.path(f).exists(), "{f} was created");
    }
}

/// A daemon over one fresh key `app-0` (nothing rotates until asked), its
/// sink directory `later/` missing, the admin token in `env`'s `token`
/// file; `edits` are applied to the config text. Returns once it is ready.
async fn fresh_key_daemon_with_a_token(
    env: &Env,
    policy_extra: &str,
    edits: &[(&str, &str)],
) -> (std::path::PathBuf, Child) {
    env.emu.insert_key(
        "app-0",
        chrono::Utc::now() - chrono::Duration::days(1),
        Some(chrono::Utc::now() + chrono::Duration::days(29)),
    );
    std::fs::write(env.path("token"), "t0ken-for-tests\n").unwrap();
    let cfg = env.config("later/{lineage}.env", policy_extra);
    crate::support::edit_config(
        &cfg,
        "shutdown_timeout = \"10s\"",
        &format!(
            "shutdown_timeout = \"10s\"\nadmin_token = {{ file = \"{}\" }}",
            env.path("token").display()
        ),
    );
    for (from, to) in edits {
        crate::support::edit_config(&cfg, from, to);
    }
    let d = env.spawn(&cfg, None);
    env.wait_for("ready", Duration::from_secs(30), |e| {
        e.log().contains("rekey ready")
    })
    .await;
    (cfg, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_wait_follows_the_rotation_and_retry_runs_a_waiting_step_now() {
    let env = Env::new().await;
    let (cfg, mut d) = fresh_key_daemon_with_a_token(
        &env,
        "max_attempts = 100\ngrace_period = \"1h\"",
        &[("grace_period = \"2s\"\n", "")],
    )
    .await;
    let cfg_s = cfg.to_str().unwrap().to_string();
    let ep = endpoint(&env);
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        let out = run_cli(&["rotate", "-c", &cfg_s, "--endpoint", &ep, "--wait", "maas"]);
        (out, started.elapsed())
    });
    let limit = Instant::now() + Duration::from_secs(60);
    while !env.rotations().iter().any(|r| r.failures >= 3) {
        if waiter.is_finished() {
            let (out, _) = waiter.join().unwrap();
            panic!(
                "rotate --wait ended early: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            Instant::now() < limit,
            "the sink never failed\n{}",
            tail(&env.log(), 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = env.rotations()[0].clone();
    std::fs::create_dir_all(env.path("later")).unwrap();
    let out = run_cli(&[
        "retry",
        "-c",
        cfg.to_str().unwrap(),
        "--endpoint",
        &endpoint(&env),
        &r.id,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (out, _) = waiter.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&env.log(), 30)
    );
    assert!(stdout.contains("published to every sink"), "{stdout}");
    assert!(stdout.contains("old key will be deleted at"), "{stdout}");
    // Progress lines are for a terminal only (stderr was a pipe here).
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains(&format!("rotation {} (app-0): ", r.id)),
        "{stderr}"
    );
    // Abandoning it in grace stops retirement and keeps both keys.
    let abandon = || {
        run_cli(&[
            "abandon",
            "--token-file",
            env.path("token").to_str().unwrap(),
            "--endpoint",
            &endpoint(&env),
            &r.id,
        ])
    };
    let out = abandon();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("retirement stopped"), "{stdout}");
    let r = env.rotations().into_iter().find(|x| x.id == r.id).unwrap();
    assert_eq!(r.state, RotationState::Failed);
    assert_eq!(r.outcome.as_deref(), Some("old_key_kept"));
    assert_eq!(env.emu.keys().len(), 2, "both keys kept");
    // Nothing is left to abandon a second time.
    let out = abandon();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing left to abandon"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.emu.stats().delete.requests, 0);
    assert_eq!(terminate(&mut d), 0);
}

/// A pseudo-terminal (posix_openpt(3)): the master side, and the slave
/// side opened for a child's stderr.
fn pty() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    // SAFETY: plain libc calls on a descriptor this function owns; the
    // name buffer is NUL-terminated by ptsname_r on success.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        let master = std::fs::File::from_raw_fd(m);
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
        let path = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_str()
            .unwrap()
            .to_string();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(path)
            .unwrap();
        (master, slave)
    }
}

/// Run the CLI with its stderr on a terminal: (exit code, stdout, what
/// the terminal showed).
fn run_cli_on_tty(args: &[String]) -> (i32, String, String) {
    use std::io::Read;
    let (mut master, slave) = pty();
    let child = Command::new(BIN)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(slave)
        .spawn()
        .unwrap();
    // The terminal is read while the command runs (a full pty would block
    // it); reading ends with EIO once no one holds the slave side.
    let reader = std::thread::spawn(move || {
        let mut shown = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => shown.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&shown).replace("\r\n", "\n")
    });
    let out = child.wait_with_output().unwrap();
    let shown = reader.join().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        shown,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_wait_on_a_terminal_shows_progress_and_exits_1_on_failure_0_once_completed() {
    let env = Env::new().await;
    // Checks once an hour, so nothing but the command resumes a failed
    // rotation.
    let (_cfg, mut d) = fresh_key_daemon_with_a_token(
        &env,
        "max_attempts = 2",
        &[("schedule = \"* * * * * *\"", "schedule = \"0 0 * * * *\"")],
    )
    .await;
    let args = |wait: &str| -> Vec<String> {
        [
            "rotate",
            "--token-file",
            env.path("token").to_str().unwrap(),
            "--endpoint",
            &endpoint(&env),
            wait,
            "maas",
        ]
        .map(String::from)
        .to_vec()
    };
    // The sink's directory is missing: two tries, then the rotation fails.
    let a = args("--wait");
    let (code, stdout, shown) = tokio::task::spawn_blocking(move || run_cli_on_tty(&a))
        .await
        .unwrap();
    let r = env.rotations()[0].clone();
    assert_eq!(r.state, RotationState::Failed, "{shown}");
    assert_eq!(code, 1, "stdout: {stdout}\nterminal: {shown}");
    let progress = format!("rotation {} (app-0): ", r.id);
    // Two tries fit in one 500 ms poll, so `failed` may be the first
    // state it sees; it is shown as progress, then as the error.
    assert!(shown.contains(&format!("{progress}failed")), "{shown}");
    assert!(
        shown.contains(&format!("rekey: rotation {} failed: ", r.id)),
        "{shown}"
    );
    // Fixed: the same command resumes that rotation (no second key) and
    // `--wait=completed` follows it through grace to the delete.
    std::fs::create_dir_all(env.path("later")).unwrap();
    let a = args("--wait=completed");
    let (code, stdout, shown) = tokio::task::spawn_blocking(move || run_cli_on_tty(&a))
        .await
        .unwrap();
    assert_eq!(code, 0, "stdout: {stdout}\nterminal: {shown}");
    assert!(
        stdout.contains(&format!(
            "rotation {} (app-0): completed; the old key is deleted",
            r.id
        )),
        "{stdout}"
    );
    // Each state it passed through, once, in order.
    let seen: Vec<&str> = shown
        .lines()
        .filter_map(|l| l.strip_prefix(progress.as_str()))
        .map(|s| s.split(' ').next().unwrap_or(s))
        .collect();
    assert_eq!(seen.last(), Some(&"completed"), "{shown}");
    assert!(
        seen.contains(&"retiring"),
        "the 2 s grace was shown: {shown}"
    );
    assert!(
        seen.windows(2).all(|w| w[0] != w[1]),
        "a state printed twice: {shown}"
    );
    assert_eq!(env.rotations().len(), 1, "resumed, not a second rotation");
    assert!(!env.emu.keys().iter().any(|k| k.name == "app-0"));
    assert_eq!(terminate(&mut d), 0);
}

fn endpoint(env: &Env) -> String {
    env.log()
        .lines()
        .find(|l| l.contains("rekey ready"))
        .and_then(|l| l.split("endpoint=").nth(1))
        .map(|s| {
            s.split_whitespace()
                .next()
                .unwrap()
                .trim_matches('"')
                .to_string()
        })
        .unwrap()
}

/// `env`'s config with its sink replaced by a webhook sink posting to a
/// fresh receiver (`max_attempts = 100`).
async fn webhook_sink_config(
    env: &Env,
) -> (
    crate::support::receiver::WebhookReceiver,
    std::path::PathBuf,
) {
    use crate::support::receiver::{WebhookReceiver, random_whsec};
    let whsec = random_whsec();
    let receiver = WebhookReceiver::start(&[&whsec]).await;
    std::fs::write(env.path("whsec"), &whsec).unwrap();
    let cfg = env.config("keys/{lineage}.env", "max_attempts = 100");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let start = text.find("[sinks.files]").unwrap();
    let end = text.find("[[policy]]").unwrap();
    let text = format!(
        "{}[sinks.files]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = {{ file = \"{}\" }}\n\n{}",
        &text[..start],
        receiver.url,
        env.path("whsec").display(),
        &text[end..]
    );
    std::fs::write(&cfg, text).unwrap();
    (receiver, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_write_that_keeps_failing_backs_off_instead_of_reposting_the_secret() {
    let env = Env::new().await;
    env.seed(1, 1);
    let (receiver, cfg) = webhook_sink_config(&env).await;
    // Every commit of a sink's acknowledgement fails, as on a full disk.
    let mut d = env.spawn(&cfg, Some("error@record_sink_ack"));
    receiver.wait_for(1).await;
    let posts = receiver.received().len();
    let log_before = env.log().lines().count();
    let cpu = cpu_over(&d, Duration::from_secs(8)).await;
    let posts = receiver.received().len() - posts;
    let log = env.log();
    let new_lines: String = log.lines().skip(log_before).collect::<Vec<_>>().join("\n");
    assert_eq!(terminate(&mut d), 0);
    // 1 s doubling to 5 min: 1+2+4 s fit in 8 s, not 1,200 a second.
    assert!(
        posts <= 5,
        "{posts} signed POSTs carrying the secret in 8 s"
    );
    assert!(
        lines_with(&new_lines, "ERROR") <= 6,
        "log flood:\n{}",
        tail(&new_lines, 40)
    );
    assert!(cpu < Duration::from_millis(1500), "{cpu:?} of CPU in 8 s");
    assert!(
        env.emu.keys().iter().any(|k| k.name == "app-0"),
        "old key kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_whose_policy_was_absent_resumes_when_a_reload_brings_it_back() {
    let env = Env::new().await;
    env.seed(1, 1);
    env.emu.insert_key(
        "svc-a",
        chrono::Utc::now() - chrono::Duration::days(1),
        Some(chrono::Utc::now() + chrono::Duration::days(29)),
    );
    let cfg = env.config("later/{lineage}.env", "max_attempts = 100");
    let with_policy = std::fs::read_to_string(&cfg).unwrap();
    let mut d = env.spawn(&cfg, None);
    env.wait_for(
        "a rotation waiting on its sink",
        Duration::from_secs(60),
        |e| {
            e.rotations()
                .iter()
                .any(|r| r.state == RotationState::Created && r.failures > 0)
        },
    )
    .await;
    assert_eq!(terminate(&mut d), 0);
    // Restart with the policy gone (another policy keeps the daemon busy).
    let start = with_policy.find("[[policy]]").unwrap();
    let other = format!(
        "{}[[policy]]\nname = \"svc\"\nprovider = \"ob\"\nmatch = \"svc-*\"\nschedule = \"0 0 * * * *\"\nrotate_before_expiry = \"7d\"\nsinks = [\"files\"]\ncreate = {{ action = \"read\" }}\n",
        &with_policy[..start]
    );
    std::fs::write(&cfg, &other).unwrap();
    let mut d = env.spawn(&cfg, None);
    env.wait_for(
        "the orphaned rotation to be noticed",
        Duration::from_secs(30),
        |e| e.log().contains("it resumes when the policy returns"),
    )
    .await;
    // The policy comes back with a schedule change for `svc`; the sink works now.
    std::fs::create_dir_all(env.path("later")).unwrap();
    let back = with_policy.clone()
        + "\n[[policy]]\nname = \"svc\"\nprovider = \"ob\"\nmatch = \"svc-*\"\nschedule = \"0 30 * * * *\"\nrotate_before_expiry = \"7d\"\nsinks = [\"files\"]\ncreate = { action = \"read\" }\n";
    std::fs::write(&cfg, back).unwrap();
    unsafe {
        libc::kill(d.id() as i32, libc::SIGHUP);
    }
    env.wait_for(
        "the rotation to publish after the reload",
        Duration::from_secs(30),
        |e| e.rotations().iter().any(|r| r.published_at.is_some()),
    )
    .await;
    // The changed schedule's next check is what status shows.
    let next = env
        .store()
        .unwrap()
        .policy_state("svc")
        .unwrap()
        .unwrap()
        .next_check_at
        .unwrap();
    assert_eq!(next.format("%M:%S").to_string(), "30:00", "{next}");
    assert_eq!(terminate(&mut d), 0);
}

/// libfaketime's preload library, when Debian's `faketime` is installed.
fn libfaketime() -> Option<std::path::PathBuf> {
    crate::support::require_tool("faketime", "wall-clock jumps under libfaketime")?;
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.exists())
}

/// Which clocks libfaketime moves for the daemon.
#[derive(Clone, Copy, PartialEq)]
enum Clocks {
    /// Only the wall clock (`CLOCK_REALTIME`): the boot clock is the real one.
    WallOnly,
    /// Every clock, the boot clock too (a host suspended for weeks).
    WallAndBoot,
}

/// `rekey run` (debug log) under libfaketime `lib`, its offset read from
/// the file `offset` at every call (write `+1d` there to step).
fn spawn_under_faketime(
    env: &Env,
    cfg: &std::path::Path,
    lib: &std::path::Path,
    offset: &std::path::Path,
    clocks: Clocks,
) -> std::process::Child {
    let mut extra = vec![
        ("LD_PRELOAD", lib.display().to_string()),
        ("FAKETIME_TIMESTAMP_FILE", offset.display().to_string()),
        ("FAKETIME_NO_CACHE", "1".to_string()),
    ];
    if clocks == Clocks::WallOnly {
        extra.push(("DONT_FAKE_MONOTONIC", "1".to_string()));
    }
    crate::support::spawn_run(
        cfg,
        &env.path("daemon.log"),
        Some("rekey=debug,info"),
        None,
        &extra,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_jumps_under_libfaketime_neither_shorten_grace_nor_stop_checks() {
    let Some(lib) = libfaketime() else { return };
    let env = Env::new().await;
    env.seed(1, 1);
    let cfg = env.config("keys/{lineage}.env", "");
    crate::support::edit_config(&cfg, "grace_period = \"2s\"", "grace_period = \"1h\"");
    let offset = env.path("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    // Only the wall clock is faked: the boot clock is the real one.
    let mut d = spawn_under_faketime(&env, &cfg, &lib, &offset, Clocks::WallOnly);
    env.wait_for(
        "the new key to be published",
        Duration::from_secs(60),
        |e| {
            e.rotations()
                .iter()
                .any(|r| r.state == RotationState::Retiring)
        },
    )
    .await;
    // +1 day on the wall clock: the grace (1 h) must not end.
    std::fs::write(&offset, "+1d\n").unwrap();
    env.wait_for(
        "the daemon to notice the step",
        Duration::from_secs(30),
        |e| e.log().contains("the wall clock stepped"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        env.emu.keys().iter().any(|k| k.name == "app-0"),
        "old key deleted after a wall-clock jump\n{}",
        tail(&env.log(), 30)
    );
    assert_eq!(env.emu.stats().delete.requests, 0);
    // −1 day: checks (every second) go on.
    std::fs::write(&offset, "-1d\n").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let checks = lines_with(&env.log(), "check done");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        lines_with(&env.log(), "check done") >= checks + 2,
        "checks stalled after a backward jump\n{}",
        tail(&env.log(), 30)
    );
    assert_eq!(env.emu.stats().delete.requests, 0);
    assert_eq!(terminate(&mut d), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_that_lags_behind_create_spends_no_attempts() {
    let env = Env::with(rekey::emulator::oceanbase::OceanBaseEmulatorOptions {
        list_delay: Duration::from_secs(8),
        ..Default::default()
    })
    .await;
    env.seed(1, 1);
    // Two attempts would be spent in well under a second at 100 ms backoff.
    let cfg = env.config("keys/{lineage}.env", "max_attempts = 2");
    let mut d = env.spawn(&cfg, None);
    env.wait_for("the rotation to publish", Duration::from_secs(60), |e| {
        e.rotations().iter().any(|r| r.published_at.is_some())
            || e.rotations()
                .iter()
                .any(|r| r.state == RotationState::Failed)
    })
    .await;
    assert_eq!(terminate(&mut d), 0);
    let r = env.rotations()[0].clone();
    assert!(r.published_at.is_some(), "{:?} {:?}", r.state, r.error);
    assert_eq!(env.rotations().len(), 1, "one rotation, one key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_check_stored_further_ahead_than_the_schedule_allows_is_recomputed_at_start() {
    let env = Env::new().await;
    env.seed(1, 1);
    let cfg = env.config("keys/{lineage}.env", "");
    // The previous run stored its next check a day ahead (its wall clock
    // had stepped back a day); the schedule says every second.
    {
        let store = rekey::state::Store::open(&env.path("state.db")).unwrap();
        store
            .set_next_check("maas", chrono::Utc::now() + chrono::Duration::days(1))
            .unwrap();
    }
    let mut d = env.spawn(&cfg, None);
    env.wait_for(
        "a check within the schedule, not a day later",
        Duration::from_secs(30),
        |e| e.log().contains("check done"),
    )
    .await;
    env.wait_for("the due key's rotation", Duration::from_secs(30), |e| {
        !e.rotations().is_empty()
    })
    .await;
    let next = env
        .store()
        .unwrap()
        .policy_state("maas")
        .unwrap()
        .unwrap()
        .next_check_at
        .unwrap();
    assert!(
        next < chrono::Utc::now() + chrono::Duration::minutes(1),
        "next check still stored at {next}"
    );
    assert_eq!(terminate(&mut d), 0);
}

/// Set the running process's `RLIMIT_FSIZE` (prlimit(2)): past it, writes
/// to regular files fail with EFBIG, as on a full disk.
fn set_file_size_limit(child: &Child, bytes: libc::rlim_t) {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit reads `limit` and writes nothing (old = null).
    let rc = unsafe {
        libc::prlimit(
            child.id() as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_backs_off_instead_of_reposting_the_secret_and_recovers_when_space_returns() {
    use crate::support::receiver::Reply;
    use std::os::unix::process::CommandExt;
    let env = Env::new().await;
    env.seed(1, 1);
    let (receiver, cfg) = webhook_sink_config(&env).await;
    // The first POST is answered late: time to fill the "disk" while the
    // daemon waits for it, so its acknowledgement is what cannot be stored.
    receiver.script([Reply::Delay(Duration::from_secs(3))]);
    // The log goes through a pipe (the limit is for regular files only),
    // copied to daemon.log by this process.
    let mut cmd = Command::new(BIN);
    cmd.args(["--log-level", "rekey=trace,info", "run", "-c"])
        .arg(&cfg)
        .env("REKEY_BACKOFF_BASE_MS", "100")
        .env_remove("REKEY_FAILPOINT")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: only an async-signal-safe call between fork and exec. An
    // ignored SIGXFSZ survives exec: writes past the limit then fail with
    // EFBIG instead of killing the daemon.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut d = cmd.spawn().unwrap();
    let mut pipe = d.stderr.take().unwrap();
    let mut log = std::fs::File::create(env.path("daemon.log")).unwrap();
    let copier = std::thread::spawn(move || std::io::copy(&mut pipe, &mut log));
    receiver.wait_for(1).await;
    // The disk is full from now on.
    set_file_size_limit(&d, 0);
    let posts = receiver.received().len();
    let log_before = env.log().lines().count();
    let cpu = cpu_over(&d, Duration::from_secs(10)).await;
    let posts = receiver.received().len() - posts;
    let log = env.log();
    let new_lines: String = log.lines().skip(log_before).collect::<Vec<_>>().join("\n");
    // 1 s doubling to 5 min after each failed commit: a handful of POSTs
    // in 10 s, not 1,200 a second.
    assert!(
        (1..=6).contains(&posts),
        "{posts} signed POSTs carrying the secret in 10 s\n{}",
        tail(&new_lines, 40)
    );
    assert!(
        new_lines.contains("rotation step failed unexpectedly; backing off"),
        "the full disk was never hit:\n{}",
        tail(&new_lines, 40)
    );
    assert!(
        lines_with(&new_lines, "ERROR") <= 10,
        "log flood:\n{}",
        tail(&new_lines, 40)
    );
    assert!(cpu < Duration::from_millis(1500), "{cpu:?} of CPU in 10 s");
    assert!(
        env.rotations().iter().all(|r| r.published_at.is_none()),
        "nothing could be stored"
    );
    // Space returns: the same running daemon finishes the rotation.
    set_file_size_limit(&d, libc::RLIM_INFINITY);
    env.wait_for(
        "the rotation to publish once space returned",
        Duration::from_secs(90),
        |e| e.rotations().iter().any(|r| r.published_at.is_some()),
    )
    .await;
    assert_eq!(env.rotations().len(), 1, "one rotation, one new key");
    assert_eq!(terminate(&mut d), 0);
    copier.join().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_expires_between_checks_is_reported_expired_within_a_minute() {
    let env = Env::new().await;
    // Observe mode and an hourly schedule: after the start-up check
    // nothing but the periodic status rebuild looks at the key again.
    let expires = chrono::Utc::now() + chrono::Duration::seconds(4);
    env.emu.insert_key(
        "app-0",
        chrono::Utc::now() - chrono::Duration::days(29),
        Some(expires),
    );
    let cfg = env.config("keys/{lineage}.env", "mode = \"observe\"");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("schedule = \"* * * * * *\"", "schedule = \"0 0 * * * *\"");
    std::fs::write(&cfg, text).unwrap();
    let mut d = env.spawn(&cfg, None);
    env.wait_for("the start-up check", Duration::from_secs(30), |e| {
        e.log().contains("check done")
    })
    .await;
    let ep = endpoint(&env);
    let status = || async {
        reqwest::get(format!("{ep}/status"))
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    assert_ne!(status().await["policies"][0]["health"], "expired");
    // The condition arises at `expires`; it must show within a minute.
    let deadline = Instant::now()
        + (expires - chrono::Utc::now()).to_std().unwrap_or_default()
        + Duration::from_secs(60);
    let lineage = loop {
        let s = status().await;
        let l = s["policies"][0]["lineages"][0].clone();
        if l["health"] == "expired" {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "not reported expired within a minute: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(lineage["reason"], "key_expired", "{lineage:#}");
    let metrics = reqwest::get(format!("{ep}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"rekey_condition{condition="key_expired",policy="maas"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"rekey_policy_healthy{policy="maas"} 0"#));
    let events = env.store().unwrap().events_after(0, 1000).unwrap();
    assert_eq!(events.iter().filter(|e| e.kind == "key.expired").count(), 1);
    assert_eq!(terminate(&mut d), 0);
}

/// Held (issue 13, the settled-plan memo): a settled key whose checks are
/// being reused, and whose listings stay byte-identical, is rotated at the
/// first check after the boot clock (the daemon's time: a host suspended
/// for weeks) carries it past its lead. (A wall-clock step alone moves no
/// time for the daemon, by design: `clock::MonotonicClock`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boot_clock_jump_past_the_lead_of_a_settled_key_starts_its_rotation() {
    let Some(lib) = libfaketime() else { return };
    let env = Env::new().await;
    // app-0 expires in 25 d; the lead is 7 d: due in 18 d.
    env.seed(1, 0);
    let cfg = env.config("keys/{lineage}.env", "");
    let offset = env.path("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let mut d = spawn_under_faketime(&env, &cfg, &lib, &offset, Clocks::WallAndBoot);
    env.wait_for("a reused check", Duration::from_secs(60), |e| {
        e.log().contains("reused=true")
    })
    .await;
    assert!(env.rotations().is_empty(), "{:?}", env.rotations());
    // +19 days: app-0 is a day inside its lead; the listing is unchanged.
    std::fs::write(&offset, "+19d\n").unwrap();
    env.wait_for(
        "the rotation of the key now inside its lead",
        Duration::from_secs(30),
        |e| !e.rotations().is_empty(),
    )
    .await;
    assert_eq!(terminate(&mut d), 0);
}
