//! End to end: the real `rekey` binary against the OceanBase emulator, with
//! seconds-scale durations. Crash tests kill it (failpoint abort or SIGKILL)
//! between side effects and check the invariants of DESIGN §3 after a
//! restart. Waits are bounded polls (a deadline to fail by), never timing
//! assertions.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use chrono::Utc;
use rekey::emulator::oceanbase::{
    self, EmulatorHandle, Faults, ForcedFault, OceanBaseEmulatorOptions, Operation,
};
use rekey::state::{RotationState, Store};

const BIN: &str = env!("CARGO_BIN_EXE_rekey");

pub(crate) struct Env {
    dir: tempfile::TempDir,
    pub(crate) emu: EmulatorHandle,
}

impl Env {
    pub(crate) async fn new() -> Env {
        Env::with(OceanBaseEmulatorOptions::default()).await
    }

    pub(crate) async fn with(opts: OceanBaseEmulatorOptions) -> Env {
        let emu = oceanbase::start(opts, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        std::fs::write(dir.path().join("ak"), oceanbase::DEFAULT_ACCESS_KEY_ID).unwrap();
        std::fs::write(dir.path().join("sk"), oceanbase::DEFAULT_ACCESS_KEY_SECRET).unwrap();
        Env { dir, emu }
    }

    pub(crate) fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A config with one policy over `app-*`; `sink_path` relative to the dir.
    pub(crate) fn config(&self, sink_path: &str, policy_extra: &str) -> PathBuf {
        let cfg = format!(
            r#"
[daemon]
state = "{state}"
listen = "127.0.0.1:0"
max_concurrent_rotations = 4
shutdown_timeout = "10s"
{sections}"#,
            state = self.path("state.db").display(),
            sections = crate::support::maas_sections(
                &self.emu.endpoint(),
                &self.path("ak"),
                &self.path("sk"),
                &self.path(sink_path),
                "",
                policy_extra,
            ),
        );
        let p = self.path("rekey.toml");
        std::fs::write(&p, cfg).unwrap();
        p
    }

    /// Seed `n` keys `app-<i>`; the first `due` expire within the lead.
    pub(crate) fn seed(&self, n: usize, due: usize) {
        let now = Utc::now();
        for i in 0..n {
            let (created, expires) = if i < due {
                (
                    now - chrono::Duration::days(29),
                    now + chrono::Duration::hours(6),
                )
            } else {
                (
                    now - chrono::Duration::days(5),
                    now + chrono::Duration::days(25),
                )
            };
            self.emu
                .insert_key(&format!("app-{i}"), created, Some(expires));
        }
    }

    pub(crate) fn spawn(&self, cfg: &Path, failpoint: Option<&str>) -> Child {
        crate::support::spawn_run(
            cfg,
            &self.path("daemon.log"),
            Some("rekey=trace,info"),
            failpoint,
            &[],
        )
    }

    pub(crate) fn store(&self) -> Option<Store> {
        Store::open_read_only(&self.path("state.db")).ok()
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    /// Poll until `cond` holds; panic with context after `limit`.
    pub(crate) async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        mut cond: impl FnMut(&Env) -> bool,
    ) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if cond(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "timed out waiting for {what}\n--- daemon log (tail) ---\n{}",
            tail(&self.log(), 60)
        );
    }

    pub(crate) fn completed(&self) -> usize {
        self.store()
            .and_then(|s| s.history(None, 1000).ok())
            .map(|h| {
                h.iter()
                    .filter(|r| r.state == RotationState::Completed)
                    .count()
            })
            .unwrap_or(0)
    }

    pub(crate) fn rotations(&self) -> Vec<rekey::state::RotationRow> {
        self.store()
            .and_then(|s| s.history(None, 1000).ok())
            .unwrap_or_default()
    }
}

pub(crate) fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Wait (up to 60 s) for `child`, started with `failpoint` armed, to abort
/// there; `log` reads its log, for the failure message and to check the
/// failpoint named itself.
pub(crate) async fn until_failpoint_aborts(
    child: &mut Child,
    failpoint: &str,
    log: impl Fn() -> String,
) {
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "failpoint {failpoint} never fired\n{}",
            tail(&log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "the failpoint aborts the process");
    assert!(
        log().contains(&format!("failpoint {failpoint} reached")),
        "{}",
        tail(&log(), 40)
    );
}

pub(crate) fn terminate(child: &mut Child) -> i32 {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            use std::os::unix::process::ExitStatusExt;
            return st.code().unwrap_or_else(|| -st.signal().unwrap_or(1000));
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("daemon did not exit within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// DESIGN §3 after the dust settles: one live key per lineage, its secret in
/// the lineage's file, no old key left, no orphan attempt keys, no
/// duplicate rotations.
fn assert_invariants(env: &Env, lineages: &[&str]) {
    assert_invariants_in(env, "keys", lineages)
}

/// As [`assert_invariants`], for a file sink writing under `sink_dir`.
fn assert_invariants_in(env: &Env, sink_dir: &str, lineages: &[&str]) {
    let keys = env.emu.keys();
    let store = env.store().unwrap();
    for l in lineages {
        let mine: Vec<_> = keys
            .iter()
            .filter(|k| k.name == *l || k.name.starts_with(&format!("{l}-")))
            .collect();
        assert_eq!(
            mine.len(),
            1,
            "lineage {l} must have exactly one live key, has {:?}",
            mine.iter().map(|k| &k.name).collect::<Vec<_>>()
        );
        let file =
            std::fs::read_to_string(env.path(&format!("{sink_dir}/{l}.env"))).unwrap_or_default();
        if mine[0].name != *l {
            assert!(
                file.contains(mine[0].api_key.expose()),
                "file of {l} does not hold its current key"
            );
        }
    }
    let hist = store.history(None, 1000).unwrap();
    for l in lineages {
        let done: Vec<_> = hist
            .iter()
            .filter(|r| r.lineage == *l && r.state == RotationState::Completed)
            .collect();
        assert!(
            done.len() <= 1,
            "lineage {l} rotated more than once: {}",
            done.len()
        );
    }
    for r in &hist {
        if let (Some(p), Some(f)) = (r.published_at, r.finished_at)
            && r.outcome.as_deref() == Some("deleted")
        {
            assert!(
                f - p >= chrono::Duration::seconds(2) || r.revoke_old_immediately,
                "rotation {} deleted the old key {}ms after publishing, inside the 2 s grace",
                r.id,
                (f - p).num_milliseconds()
            );
        }
        for a in store.attempts(&r.id).unwrap() {
            if a.state != "created" {
                assert!(
                    !keys.iter().any(|k| k.name == a.name),
                    "abandoned attempt key {} still exists",
                    a.name
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_keys_five_due_rotate_five_lineages_and_keep_three() {
    let env = Env::new().await;
    env.seed(8, 5);
    let before: Vec<_> = env.emu.keys();
    let cfg = env.config("keys/{lineage}.env", "");
    let mut d = env.spawn(&cfg, None);
    env.wait_for("5 completed rotations", Duration::from_secs(90), |e| {
        e.completed() >= 5
    })
    .await;
    assert_eq!(terminate(&mut d), 0);
    let keys = env.emu.keys();
    assert_eq!(keys.len(), 8);
    for i in 0..8 {
        let l = format!("app-{i}");
        let mine: Vec<_> = keys
            .iter()
            .filter(|k| k.name == l || k.name.starts_with(&format!("{l}-")))
            .collect();
        assert_eq!(mine.len(), 1);
        if i < 5 {
            let re = regex::Regex::new(&format!(r"^{l}-\d{{8}}-r[0-9a-f]{{8}}-1$")).unwrap();
            assert!(
                re.is_match(&mine[0].name),
                "new key named from the template: {}",
                mine[0].name
            );
            let file = std::fs::read_to_string(env.path(&format!("keys/{l}.env"))).unwrap();
            assert!(file.contains(&format!("API_KEY={}", mine[0].api_key.expose())));
        } else {
            assert_eq!(
                mine[0],
                before.iter().find(|k| k.name == l).unwrap(),
                "untouched"
            );
            assert!(!env.path(&format!("keys/{l}.env")).exists());
        }
    }
    assert_invariants(
        &env,
        &[
            "app-0", "app-1", "app-2", "app-3", "app-4", "app-5", "app-6", "app-7",
        ],
    );
    // history shows it all
    let out = Command::new(BIN)
        .args(["history", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("COMPLETED").count(), 5, "{text}");
    assert_eq!(text.matches("sink files").count(), 5, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_sink_path_over_several_lineages_is_misconfigured_and_changes_nothing() {
    let env = Env::new().await;
    env.seed(3, 3);
    let cfg = env.config("keys/one.env", "");
    let mut d = env.spawn(&cfg, None);
    env.wait_for("a recorded check", Duration::from_secs(30), |e| {
        e.store()
            .and_then(|s| s.policy_state("maas").ok().flatten())
            .and_then(|p| p.health)
            .is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(terminate(&mut d), 0);
    let st = env.store().unwrap().policy_state("maas").unwrap().unwrap();
    assert_eq!(st.health.as_deref(), Some("misconfigured"));
    assert!(st.last_error.unwrap().contains("{lineage}"));
    assert!(env.rotations().is_empty());
    assert_eq!(env.emu.keys().len(), 3);
    assert_eq!(env.emu.stats().create.requests, 0);
    assert_eq!(env.emu.stats().delete.requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_never_lets_the_old_key_go_and_fixing_it_finishes_the_rotation() {
    let env = Env::new().await;
    env.seed(1, 1);
    // The sink's fixed directory exists (`rekey run` refuses to start
    // otherwise); the per-policy directory below it cannot be created
    // while a file blocks its name.
    std::fs::create_dir_all(env.path("later")).unwrap();
    std::fs::write(env.path("later/maas"), "in the way").unwrap();
    let cfg = env.config("later/{policy}/{lineage}.env", "max_attempts = 3");
    let mut d = env.spawn(&cfg, None);
    env.wait_for("a failed rotation", Duration::from_secs(60), |e| {
        e.rotations()
            .iter()
            .any(|r| r.state == RotationState::Failed)
    })
    .await;
    let r = env.rotations()[0].clone();
    assert!(
        r.error
            .as_deref()
            .unwrap_or("")
            .contains("is not a directory"),
        "{:?}",
        r.error
    );
    assert!(
        env.emu.keys().iter().any(|k| k.name == "app-0"),
        "old key kept"
    );
    assert_eq!(env.emu.stats().delete.requests, 0);
    std::fs::remove_file(env.path("later/maas")).unwrap();
    env.wait_for("the rotation to complete", Duration::from_secs(60), |e| {
        e.completed() == 1
    })
    .await;
    assert_eq!(terminate(&mut d), 0);
    let done = env.rotations();
    assert_eq!(done.len(), 1, "resumed, not restarted");
    assert_eq!(done[0].id, r.id);
    assert_invariants_in(&env, "later/maas", &["app-0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_publish_command_that_fails_keeps_the_old_key() {
    let env = Env::new().await;
    env.seed(1, 1);
    let cfg = env.config("keys/{lineage}.env", "max_attempts = 2");
    crate::support::edit_config(
        &cfg,
        "format = \"env\"",
        "format = \"env\"\non_publish = [\"sh\", \"-c\", \"exit 1\"]\non_publish_timeout = \"5s\"",
    );
    let mut d = env.spawn(&cfg, None);
    env.wait_for("a failed rotation", Duration::from_secs(60), |e| {
        e.rotations()
            .iter()
            .any(|r| r.state == RotationState::Failed)
    })
    .await;
    assert_eq!(terminate(&mut d), 0);
    let r = &env.rotations()[0];
    assert!(
        r.error.as_deref().unwrap().contains("on_publish"),
        "{:?}",
        r.error
    );
    assert!(env.emu.keys().iter().any(|k| k.name == "app-0"));
    assert_eq!(env.emu.stats().delete.requests, 0);
}

async fn crash_at(failpoint: &str) {
    let env = Env::new().await;
    env.seed(2, 2);
    let cfg = env.config("keys/{lineage}.env", "");
    let mut d = env.spawn(&cfg, Some(failpoint));
    until_failpoint_aborts(&mut d, failpoint, || env.log()).await;
    let mut d = env.spawn(&cfg, None);
    env.wait_for(
        "both rotations to complete after restart",
        Duration::from_secs(90),
        |e| e.completed() == 2,
    )
    .await;
    assert_eq!(terminate(&mut d), 0);
    assert_invariants(&env, &["app-0", "app-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_create_resumes() {
    crash_at("before_create").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_create_before_commit_deletes_the_orphan_and_creates_again() {
    crash_at("after_create").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_created_commit_resumes_publishing() {
    crash_at("after_record_created").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_a_sink_wrote_but_before_its_ack_resumes() {
    crash_at("after_publish").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_every_ack_before_published_resumes() {
    crash_at("after_publish_all").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_delete_resumes_retirement() {
    crash_at("before_delete").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_delete_before_its_commit_counts_the_404_as_done() {
    crash_at("after_delete").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_instants_during_twenty_concurrent_rotations_loses_nothing() {
    let env = Env::with(OceanBaseEmulatorOptions {
        latency: Duration::from_millis(20),
        ..Default::default()
    })
    .await;
    env.seed(20, 20);
    let cfg = env.config("keys/{lineage}.env", "");
    let mut rng = rand::rng();
    for _ in 0..4 {
        let mut d = env.spawn(&cfg, None);
        let ms = rand::Rng::random_range(&mut rng, 300..1500);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        kill9(&mut d);
    }
    let ready_before = env.log().matches("rekey ready").count();
    let mut d = env.spawn(&cfg, None);
    env.wait_for("20 completed rotations", Duration::from_secs(120), |e| {
        e.completed() == 20
    })
    .await;
    env.wait_for("the last start to be ready", Duration::from_secs(30), |e| {
        e.log().matches("rekey ready").count() > ready_before
    })
    .await;
    assert_eq!(terminate(&mut d), 0);
    let lineages: Vec<String> = (0..20).map(|i| format!("app-{i}")).collect();
    let refs: Vec<&str> = lineages.iter().map(|s| s.as_str()).collect();
    assert_invariants(&env, &refs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_500s_and_429s_still_complete_every_rotation() {
    let env = Env::with(OceanBaseEmulatorOptions {
        error_rate: 0.2,
        rate_limit: Some(20.0),
        seed: Some(7),
        ..Default::default()
    })
    .await;
    env.seed(6, 6);
    let cfg = env.config("keys/{lineage}.env", "max_attempts = 10");
    let mut d = env.spawn(&cfg, None);
    env.wait_for("6 completed rotations", Duration::from_secs(120), |e| {
        e.completed() == 6
    })
    .await;
    assert_eq!(terminate(&mut d), 0);
    let refs: Vec<String> = (0..6).map(|i| format!("app-{i}")).collect();
    assert_invariants(&env, &refs.iter().map(|s| s.as_str()).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_403_fails_the_rotation_clearly_and_deletes_nothing() {
    let env = Env::new().await;
    env.seed(1, 1);
    env.emu
        .set_faults(Faults {
            force: vec![ForcedFault {
                operation: Operation::Create,
                status: 403,
                count: 100,
                style: Default::default(),
                code: Some("AccessDenied".into()),
                message: Some("the AccessKey may not create API keys".into()),
                retry_after: None,
            }],
            ..Default::default()
        })
        .unwrap();
    let cfg = env.config("keys/{lineage}.env", "");
    let mut d = env.spawn(&cfg, None);
    env.wait_for("a failed rotation", Duration::from_secs(60), |e| {
        e.rotations()
            .iter()
            .any(|r| r.state == RotationState::Failed)
    })
    .await;
    assert_eq!(terminate(&mut d), 0);
    // The next check may already have started another try: judge the
    // failed one.
    let rotations = env.rotations();
    let r = rotations
        .iter()
        .find(|r| r.state == RotationState::Failed)
        .unwrap();
    assert_eq!(r.error_class.as_deref(), Some("permanent"));
    assert!(r.error.as_deref().unwrap().contains("403"), "{:?}", r.error);
    assert_eq!(env.emu.keys().len(), 1);
    assert_eq!(env.emu.stats().delete.requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_trace_logs_the_db_or_history() {
    let env = Env::new().await;
    env.seed(2, 2);
    let cfg = env.config("keys/{lineage}.env", "");
    let mut d = env.spawn(&cfg, None);
    env.wait_for("2 completed rotations", Duration::from_secs(60), |e| {
        e.completed() == 2
    })
    .await;
    assert_eq!(terminate(&mut d), 0);
    let mut secrets: Vec<String> = env
        .emu
        .keys()
        .iter()
        .map(|k| k.api_key.expose().to_string())
        .collect();
    secrets.push(oceanbase::DEFAULT_ACCESS_KEY_SECRET.to_string());
    let log = env.log();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "logs were captured at trace level"
    );
    let hist = Command::new(BIN)
        .args(["history", "--json", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let hist =
        String::from_utf8_lossy(&hist.stdout).to_string() + &String::from_utf8_lossy(&hist.stderr);
    let mut db = std::fs::read(env.path("state.db")).unwrap();
    db.extend(std::fs::read(env.path("state.db-wal")).unwrap_or_default());
    let db = String::from_utf8_lossy(&db).to_string();
    for s in &secrets {
        assert!(!log.contains(s.as_str()), "secret in the daemon log");
        assert!(!hist.contains(s.as_str()), "secret in rekey history");
        assert!(!db.contains(s.as_str()), "secret in the state DB");
    }
}
