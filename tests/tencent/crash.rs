//! `kill -9` (a failpoint abort) between Tencent's own side effects: after
//! the new key is bound to its usage plans but before that is committed,
//! and after the old key is unbound and disabled but before that (or the
//! delete) is committed. The real `rekey` binary runs against the Tencent
//! emulator in this process; after a restart the rotation must finish with
//! exactly one key, enabled and bound where the old one was, the old key
//! deleted, nothing created twice and no key left disabled.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use chrono::Utc;
use rekey::emulator::tencent::{self, Handle, Options};
use rekey::state::{RotationState, Store};

use crate::e2e::{tail, terminate, until_failpoint_aborts};
use crate::support::cloud::loopback;

struct Env {
    dir: tempfile::TempDir,
    emu: Handle,
}

impl Env {
    async fn new() -> Env {
        let emu = tencent::start(
            Options {
                usage_plans: vec!["usagePlan-a".into(), "usagePlan-b".into()],
                ..super::opts()
            },
            loopback(),
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let o = emu.options();
        std::fs::write(dir.path().join("tc-id"), &o.secret_id).unwrap();
        std::fs::write(dir.path().join("tc-key"), o.secret_key.expose()).unwrap();
        let cfg = super::gw_daemon_config(
            &emu,
            &dir.path().display().to_string(),
            "{lineage}.env",
            "usagePlan-b",
            "grace_period = \"1s\"",
        );
        std::fs::write(dir.path().join("rekey.toml"), cfg).unwrap();
        Env { dir, emu }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn spawn(&self, failpoint: Option<&str>) -> Child {
        crate::support::spawn_run(
            &self.path("rekey.toml"),
            &self.path("daemon.log"),
            Some("rekey=debug,info"),
            failpoint,
            &[],
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    fn history(&self) -> Vec<rekey::state::RotationRow> {
        Store::open_read_only(&self.path("state.db"))
            .and_then(|s| s.history(None, 100))
            .unwrap_or_default()
    }
}

async fn crash_at(failpoint: &str) -> Env {
    let env = Env::new().await;
    let old = env
        .emu
        .insert_key(
            "svc-main",
            Utc::now() - chrono::Duration::days(40),
            &["usagePlan-a"],
        )
        .unwrap();
    let mut d = env.spawn(Some(failpoint));
    until_failpoint_aborts(&mut d, failpoint, || env.log()).await;
    let mut d = env.spawn(None);
    let start = Instant::now();
    while !env
        .history()
        .iter()
        .any(|r| r.state == RotationState::Completed)
    {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the rotation did not complete after the restart\n{}",
            tail(&env.log(), 60)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(terminate(&mut d), 0);

    let keys = env.emu.keys();
    assert_eq!(
        keys.len(),
        1,
        "one key must be left: {:?}",
        keys.iter().map(|k| &k.secret_name).collect::<Vec<_>>()
    );
    let new = &keys[0];
    assert_ne!(new.access_key_id, old.access_key_id, "the old key is gone");
    assert_eq!(new.status, 1, "the new key is enabled");
    assert_eq!(
        new.usage_plans,
        ["usagePlan-a", "usagePlan-b"],
        "bound where the old key was and where the config says"
    );
    let published = std::fs::read_to_string(env.path("svc-main.env")).unwrap();
    assert!(published.contains(new.access_key_secret.expose()));
    let stats = env.emu.stats();
    assert_eq!(stats["CreateApiKey"].ok, 1, "nothing was created twice");
    let history = env.history();
    assert_eq!(history.len(), 1, "one rotation: {history:?}");
    assert_eq!(history[0].outcome.as_deref(), Some("deleted"));
    assert_no_key_file_leftovers(env.dir.path());
    env
}

/// The file sink leaves no temporary file behind.
fn assert_no_key_file_leftovers(dir: &Path) {
    let stray: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') || n.ends_with(".tmp"))
        .collect();
    assert!(stray.is_empty(), "temporary files left: {stray:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_binding_the_new_key_before_committing_it_binds_again_harmlessly() {
    crash_at("after_prepare").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_disabling_the_old_key_before_committing_it_still_deletes_it() {
    crash_at("after_disable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_committing_the_disable_before_the_delete_deletes_without_disabling_again() {
    let env = crash_at("after_record_disabled").await;
    let stats = env.emu.stats();
    assert_eq!(stats["DisableApiKey"].requests, 1, "disabled once");
    assert_eq!(stats["UnBindSecretIds"].requests, 1, "unbound once");
}
