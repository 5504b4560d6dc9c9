//! Ownership end to end (issue 9): the real `rekey` binary against the
//! OceanBase emulator. rekey changes only keys its own store says it
//! created; two policies or two lineages can never claim one key or one sink
//! target; recovery from names happens only when asked, and only where a
//! readable sink proves which key is current.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use rekey::emulator::oceanbase::{self, OceanBaseEmulatorOptions};
use rekey::state::{RotationState, Store, TargetOwner};

use crate::e2e::{Env, tail, terminate};

const BIN: &str = env!("CARGO_BIN_EXE_rekey");

/// A config with the given providers, sinks and policies appended to the
/// daemon section; `{endpoint}`, `{ak}`, `{sk}`, `{dir}`, `{org}` and
/// `{project}` are filled in.
fn write_config(env: &Env, body: &str) -> PathBuf {
    let text = format!(
        r#"
[daemon]
state = "{state}"
listen = "127.0.0.1:0"
max_concurrent_rotations = 4
shutdown_timeout = "10s"
{body}
"#,
        state = env.path("state.db").display(),
    )
    .replace("{endpoint}", &env.emu.endpoint())
    .replace(
        "{localhost}",
        &env.emu.endpoint().replace("127.0.0.1", "localhost"),
    )
    .replace("{ak}", &env.path("ak").display().to_string())
    .replace("{sk}", &env.path("sk").display().to_string())
    .replace(
        "{dir}",
        &env.path("x").parent().unwrap().display().to_string(),
    )
    .replace("{org}", oceanbase::DEFAULT_ORG_ID)
    .replace("{project}", oceanbase::DEFAULT_PROJECT_ID);
    let p = env.path("rekey.toml");
    std::fs::write(&p, text).unwrap();
    p
}

const PROVIDER: &str = r#"
[providers.ob]
kind = "oceanbase"
endpoint = "{endpoint}"
org_id = "{org}"
project_id = "{project}"
access_key_id = { file = "{ak}" }
access_key_secret = { file = "{sk}" }
timeout = "5s"
"#;

const FILE_SINK: &str = r#"
[sinks.files]
kind = "file"
path = "{dir}/keys/{lineage}.env"
format = "env"
"#;

fn policy(name: &str, provider: &str, glob: &str, extra: &str) -> String {
    format!(
        r#"
[[policy]]
name = "{name}"
provider = "{provider}"
match = "{glob}"
schedule = "* * * * * *"
rotate_before_expiry = "7d"
grace_period = "2s"
sinks = ["files"]
create = {{ action = "read" }}
{extra}
"#
    )
}

fn check(cfg: &std::path::Path) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(cfg)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn store(env: &Env) -> Store {
    env.store().expect("state DB")
}

fn event_kinds(env: &Env) -> Vec<String> {
    store(env)
        .events_after(0, 10_000)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

fn completed_of(env: &Env, lineage: &str) -> Vec<rekey::state::RotationRow> {
    env.rotations()
        .into_iter()
        .filter(|r| r.lineage == lineage && r.state == RotationState::Completed)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_made_key_named_like_rekeys_own_is_reported_never_current_and_the_sinks_key_is_rotated()
 {
    // New keys live 15 s, so the key in the sink comes due ~10 s after it
    // is published (the lead is capped at a third of the lifetime).
    let env = Env::with(OceanBaseEmulatorOptions {
        lifetime: Some(Duration::from_secs(15)),
        ..Default::default()
    })
    .await;
    let now = Utc::now();
    env.emu.insert_key(
        "app-x",
        now - chrono::Duration::days(29),
        Some(now + chrono::Duration::hours(1)),
    );
    let cfg = write_config(
        &env,
        &format!("{PROVIDER}{FILE_SINK}{}", policy("maas", "ob", "app-*", "")),
    );
    let mut d = env.spawn(&cfg, None);
    env.wait_for("the first rotation", Duration::from_secs(60), |e| {
        completed_of(e, "app-x").len() == 1
    })
    .await;
    let first = completed_of(&env, "app-x")[0].clone();
    let in_sink = first.new_key_id.clone().unwrap();
    // Someone creates a key with a familiar name, newer than the sink's.
    let forged = "app-x-20261130-r0badc0de-1";
    env.emu.insert_key(
        forged,
        Utc::now(),
        Some(Utc::now() + chrono::Duration::days(30)),
    );
    // The key in the sink is still rotated when due, as the old key.
    env.wait_for(
        "the sink's key to be rotated",
        Duration::from_secs(60),
        |e| {
            completed_of(e, "app-x")
                .iter()
                .any(|r| r.old_key_id.as_deref() == Some(in_sink.as_str()))
        },
    )
    .await;
    env.wait_for("key.unrecognised", Duration::from_secs(10), |e| {
        event_kinds(e).iter().any(|k| k == "key.unrecognised")
    })
    .await;
    // What an operator sees: status and metrics say so.
    let endpoint = regex::Regex::new(r#"endpoint="?(http://127\.0\.0\.1:\d+)"#)
        .unwrap()
        .captures(&env.log())
        .map(|c| c[1].to_string())
        .expect("the ready line names the endpoint");
    let metrics = reqwest::get(format!("{endpoint}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        regex::Regex::new(r#"rekey_condition\{[^}]*condition="unrecognised_key"[^}]*\} 1"#)
            .unwrap()
            .is_match(&metrics),
        "{metrics}"
    );
    // The snapshot is rebuilt after each step, so a read can fall between a
    // delete and the next check; wait (bounded) for one that shows a current
    // key, then assert on it.
    let mut status = serde_json::Value::Null;
    for _ in 0..40 {
        status = reqwest::get(format!("{endpoint}/status/maas"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let settled = status["lineages"].as_array().is_some_and(|ls| {
            ls.iter()
                .any(|l| l["name"] == "app-x" && l["current_key"] != serde_json::Value::Null)
        });
        if settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(status["health"], "failing", "{status:#}");
    let keys = status["keys"].as_array().unwrap();
    assert!(
        keys.iter()
            .any(|k| k["name"] == forged && k["state"] == "unrecognised"),
        "{status:#}"
    );
    let lineage = status["lineages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "app-x")
        .unwrap();
    assert_eq!(lineage["reason"], "unrecognised_key", "{status:#}");
    assert_ne!(lineage["current_key"], serde_json::json!(null));
    assert!(
        keys.iter()
            .any(|k| k["state"] == "current" && k["name"] != forged)
    );
    assert_eq!(terminate(&mut d), 0);
    let keys = env.emu.keys();
    assert!(
        keys.iter().any(|k| k.name == forged),
        "the hand-made key was deleted"
    );
    let s = store(&env);
    let forged_row = s
        .known_keys("maas")
        .unwrap()
        .into_iter()
        .find(|k| k.name == forged)
        .unwrap();
    assert_eq!(forged_row.origin, "unrecognised");
    assert_eq!(
        event_kinds(&env)
            .iter()
            .filter(|k| *k == "key.unrecognised")
            .count(),
        1,
        "one event per condition, not one per check"
    );
    let health = s.policy_state("maas").unwrap().unwrap().health.unwrap();
    assert_eq!(health, "failing", "status must not say ok");
    // No rotation ever took the forged key as its old key.
    assert!(
        env.rotations()
            .iter()
            .all(|r| r.old_key_name.as_deref() != Some(forged))
    );
    // The sink holds the lineage's newest rekey-made key.
    let latest = completed_of(&env, "app-x")
        .into_iter()
        .max_by_key(|r| r.published_at)
        .unwrap();
    let key = keys
        .iter()
        .find(|k| Some(&k.id) == latest.new_key_id.as_ref())
        .unwrap();
    let file = std::fs::read_to_string(env.path("keys/app-x.env")).unwrap();
    assert!(file.contains(key.api_key.expose()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_policies_over_one_account_whose_globs_overlap_are_refused_by_check() {
    let env = Env::new().await;
    let cfg = write_config(
        &env,
        &format!(
            "{PROVIDER}{FILE_SINK}{}{}",
            policy("pa", "ob", "app-*", ""),
            policy("pb", "ob", "app-x*", "")
        ),
    );
    let (code, text) = check(&cfg);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("policies pa (match \"app-*\") and pb (match \"app-x*\")"),
        "{text}"
    );
    // Located at pb's `match` value.
    let src = std::fs::read_to_string(&cfg).unwrap();
    let line = src
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("match = \"app-x*\""))
        .map(|(i, _)| i + 1)
        .next()
        .unwrap();
    assert!(
        text.contains(&format!("rekey.toml:{line}:9")),
        "located at line {line}: {text}"
    );
    // Disjoint globs pass (with {policy} in the shared target).
    let cfg = write_config(
        &env,
        &format!(
            "{PROVIDER}{}{}{}",
            FILE_SINK.replace("{lineage}.env", "{policy}-{lineage}.env"),
            policy("pa", "ob", "app-a-*", ""),
            policy("pb", "ob", "app-b-*", "")
        ),
    );
    let (code, text) = check(&cfg);
    assert_eq!(code, 0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_policies_that_can_write_one_sink_target_are_refused_by_check() {
    let env = Env::new().await;
    let second_provider = PROVIDER
        .replace("[providers.ob]", "[providers.ob2]")
        .replace("org_id = \"{org}\"", "org_id = \"other-org\"");
    let cfg = write_config(
        &env,
        &format!(
            "{PROVIDER}{second_provider}{FILE_SINK}{}{}",
            policy("pa", "ob", "app-*", ""),
            policy("pb", "ob2", "app-*", "")
        ),
    );
    let (code, text) = check(&cfg);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("policies pa and pb can write the same target through sink files"),
        "{text}"
    );
    assert!(text.contains("rekey.toml:"), "located: {text}");
    // With {policy} in the target they are provably apart.
    let cfg = write_config(
        &env,
        &format!(
            "{PROVIDER}{second_provider}{}{}{}",
            FILE_SINK.replace("{lineage}.env", "{policy}/{lineage}.env"),
            policy("pa", "ob", "app-*", ""),
            policy("pb", "ob2", "app-*", "")
        ),
    );
    let (code, text) = check(&cfg);
    assert_eq!(code, 0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_refuses_to_overwrite_a_target_last_written_for_another_policy() {
    let env = Env::new().await;
    env.seed(1, 1);
    let cfg = write_config(
        &env,
        &format!("{PROVIDER}{FILE_SINK}{}", policy("maas", "ob", "app-*", "")),
    );
    // An earlier writer of keys/app-0.env, recorded in the store.
    {
        let s = Store::open(&env.path("state.db")).unwrap();
        let target = format!("file:{}", env.path("keys/app-0.env").display());
        s.record_sink_target(
            &target,
            &TargetOwner {
                sink: "files".into(),
                policy: "billing".into(),
                lineage: "app-0".into(),
                rotation_id: None,
            },
            Utc::now(),
        )
        .unwrap();
    }
    std::fs::write(env.path("keys/app-0.env"), "API_KEY=theirs\n").unwrap();
    let mut d = env.spawn(&cfg, None);
    env.wait_for("the refusal", Duration::from_secs(60), |e| {
        e.rotations().iter().any(|r| {
            r.error
                .as_deref()
                .is_some_and(|m| m.contains("last written for policy billing lineage app-0"))
        })
    })
    .await;
    assert_eq!(terminate(&mut d), 0);
    assert_eq!(
        std::fs::read_to_string(env.path("keys/app-0.env")).unwrap(),
        "API_KEY=theirs\n",
        "the other policy's file was overwritten"
    );
    assert!(
        env.emu.keys().iter().any(|k| k.name == "app-0"),
        "the old key must survive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_two_policies_claim_freezes_both_lineages_and_deletes_nothing() {
    // Two provider entries reach one emulator through different host names:
    // `check` cannot tell they are one account; the run time can.
    let env = Env::new().await;
    env.seed(2, 2);
    let before: Vec<String> = env.emu.keys().into_iter().map(|k| k.id).collect();
    assert_eq!(env.emu.keys()[1].name, "app-1");
    let second = PROVIDER
        .replace("[providers.ob]", "[providers.ob2]")
        .replace("{endpoint}", "{localhost}");
    let cfg = write_config(
        &env,
        &format!(
            "{PROVIDER}{second}{}{}{}",
            FILE_SINK.replace("{lineage}.env", "{policy}-{lineage}.env"),
            policy("pa", "ob", "app-*", ""),
            policy("pb", "ob2", "app-1*", "")
        ),
    );
    let (code, text) = check(&cfg);
    assert_eq!(code, 0, "{text}");
    let mut d = env.spawn(&cfg, None);
    env.wait_for(
        "both policies to report the conflict",
        Duration::from_secs(60),
        |e| {
            let Some(s) = e.store() else { return false };
            ["pa", "pb"].iter().all(|p| {
                s.policy_state(p)
                    .ok()
                    .flatten()
                    .and_then(|st| st.health)
                    .as_deref()
                    == Some("misconfigured")
            })
        },
    )
    .await;
    // Let a few more checks and any rotation already started run.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(terminate(&mut d), 0);
    let after: Vec<String> = env.emu.keys().into_iter().map(|k| k.id).collect();
    let app1 = &before[1];
    assert!(
        after.contains(app1),
        "the key both policies claim ({app1}) was deleted\n{}",
        tail(&env.log(), 40)
    );
    // app-0 belongs to pa alone and is rotated as usual.
    assert!(
        env.rotations()
            .iter()
            .any(|r| r.policy == "pa" && r.lineage == "app-0"),
        "other lineages go on"
    );
    let s = store(&env);
    let pb = s.policy_state("pb").unwrap().unwrap();
    let decisions = pb.decisions.to_string();
    assert!(
        decisions.contains("claimed by policies pb and pa"),
        "{decisions}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_that_a_slow_list_shows_late_is_deleted_and_never_becomes_current() {
    // Keys made through create stay out of lists for 2 s; the daemon dies
    // right after the create returned, before committing it.
    let env = Env::with(OceanBaseEmulatorOptions {
        list_delay: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    env.seed(1, 1);
    let cfg = write_config(
        &env,
        &format!("{PROVIDER}{FILE_SINK}{}", policy("maas", "ob", "app-*", "")),
    );
    let mut d = env.spawn(&cfg, Some("after_create"));
    let status = d.wait().unwrap();
    assert!(!status.success());
    let mut d = env.spawn(&cfg, None);
    env.wait_for("a completed rotation", Duration::from_secs(90), |e| {
        e.completed() == 1
    })
    .await;
    let r = env.rotations()[0].clone();
    let attempts = store(&env).attempts(&r.id).unwrap();
    let orphan = attempts[0].name.clone();
    assert_ne!(attempts[0].state, "created");
    // The orphan shows up late and is deleted by a later check.
    env.wait_for("the orphan to be deleted", Duration::from_secs(30), |e| {
        !e.emu.keys().iter().any(|k| k.name == orphan)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(terminate(&mut d), 0);
    let keys = env.emu.keys();
    assert_eq!(
        keys.len(),
        1,
        "{:?}",
        keys.iter().map(|k| &k.name).collect::<Vec<_>>()
    );
    assert_eq!(Some(&keys[0].id), r.new_key_id.as_ref());
    let file = std::fs::read_to_string(env.path("keys/app-0.env")).unwrap();
    assert!(file.contains(keys[0].api_key.expose()));
    // The orphan was never current and never the old key of a rotation.
    assert!(
        env.rotations()
            .iter()
            .all(|x| x.old_key_name.as_deref() != Some(orphan.as_str()))
    );
    assert_eq!(env.rotations().len(), 1, "no second rotation");
    assert!(
        env.log()
            .contains("deleted the key of an abandoned create attempt")
            || env.log().contains("its key exists and was deleted"),
        "{}",
        tail(&env.log(), 40)
    );
}

/// Run until one rotation of app-0 is in grace, then stop and lose the DB.
async fn lose_the_db_mid_grace(env: &Env, cfg: &std::path::Path) -> (String, String) {
    let mut d = env.spawn(cfg, None);
    env.wait_for("a rotation in grace", Duration::from_secs(60), |e| {
        e.rotations()
            .iter()
            .any(|r| r.state == RotationState::Retiring)
    })
    .await;
    assert_eq!(terminate(&mut d), 0);
    let r = env.rotations()[0].clone();
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(env.path(f));
    }
    (r.old_key_id.unwrap(), r.new_key_id.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_completes_a_rotation_the_lost_db_was_retiring_without_a_second_create() {
    let env = Env::new().await;
    env.seed(1, 1);
    let cfg = write_config(
        &env,
        &format!(
            "{PROVIDER}{FILE_SINK}{}",
            policy("maas", "ob", "app-*", "")
                .replace("grace_period = \"2s\"", "grace_period = \"1h\"")
        ),
    );
    let (old, new) = lose_the_db_mid_grace(&env, &cfg).await;
    // Without recovery the daemon refuses to guess, and says what to run.
    let mut d = env.spawn(&cfg, None);
    env.wait_for(
        "the unrecognised key report",
        Duration::from_secs(30),
        |e| e.log().contains("rekey recover"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(terminate(&mut d), 0);
    assert!(env.rotations().is_empty(), "it must not rotate on a guess");
    assert_eq!(env.emu.keys().len(), 2);
    // Recover: the file proves the new key is current.
    let out = Command::new(BIN)
        .args(["recover", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("RECOVERED key"), "{text}");
    // Shorten the grace the recovery rotation waits out.
    let s = Store::open(&env.path("state.db")).unwrap();
    let rec = s.history(None, 10).unwrap()[0].clone();
    assert_eq!(rec.trigger, "recovery");
    assert_eq!(rec.new_key_id.as_deref(), Some(new.as_str()));
    assert_eq!(rec.old_key_id.as_deref(), Some(old.as_str()));
    s.set_retire_at(&rec.id, Utc::now()).unwrap();
    drop(s);
    let mut d = env.spawn(&cfg, None);
    env.wait_for(
        "the recovered rotation to finish",
        Duration::from_secs(60),
        |e| e.completed() == 1,
    )
    .await;
    assert_eq!(terminate(&mut d), 0);
    let keys = env.emu.keys();
    assert_eq!(keys.len(), 1);
    assert_eq!(
        keys[0].id, new,
        "the old key is gone, the new one kept, none created"
    );
    assert_eq!(env.rotations().len(), 1, "no second create");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_without_a_sink_that_proves_the_key_deletes_nothing_and_reports_the_lineage() {
    let env = Env::new().await;
    env.seed(1, 1);
    let cfg = write_config(
        &env,
        &format!(
            "{PROVIDER}{FILE_SINK}{}",
            policy("maas", "ob", "app-*", "")
                .replace("grace_period = \"2s\"", "grace_period = \"1h\"")
        ),
    );
    lose_the_db_mid_grace(&env, &cfg).await;
    std::fs::remove_file(env.path("keys/app-0.env")).unwrap();
    let out = Command::new(BIN)
        .args(["recover", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("lineage app-0: NOT RECOVERED"), "{text}");
    let mut d = env.spawn(&cfg, None);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(terminate(&mut d), 0);
    assert_eq!(env.emu.keys().len(), 2, "nothing deleted");
    assert!(env.rotations().is_empty(), "nothing created");
}

/// DESIGN §3 / issue 11: a listing that began before a rotation finished,
/// or skipped a key, never plans a second rotation. Many lineages at a
/// provider rate limit, one-second grace, checks every second: every run
/// must end with exactly one new key per lineage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_listings_never_rotate_a_lineage_twice_under_a_rate_limit() {
    for round in 0..2 {
        let env = Env::with(OceanBaseEmulatorOptions {
            rate_limit: Some(20.0),
            list_order: if round == 0 {
                oceanbase::ListOrder::Oldest
            } else {
                oceanbase::ListOrder::Newest
            },
            ..Default::default()
        })
        .await;
        let n = 30;
        env.seed(n, n);
        let cfg = write_config(
            &env,
            &format!(
                "{PROVIDER}{FILE_SINK}{}",
                policy("maas", "ob", "app-*", "")
                    .replace("grace_period = \"2s\"", "grace_period = \"1s\"")
            ),
        );
        // The second round runs under CPU contention: a busy thread takes
        // a core while the daemon works.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hog = (round == 1).then(|| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        });
        let mut d = env.spawn(&cfg, None);
        let start = std::time::Instant::now();
        while env.completed() < n {
            if start.elapsed() > Duration::from_secs(180) {
                let summary: Vec<String> = env
                    .rotations()
                    .iter()
                    .map(|r| {
                        format!(
                            "{} {} {} f={} err={:?}",
                            r.lineage,
                            r.id,
                            r.state.as_str(),
                            r.failures,
                            r.error
                        )
                    })
                    .collect();
                let _ = terminate(&mut d);
                panic!(
                    "round {round}: {} of {n} completed\n{}\n--- log ---\n{}",
                    env.completed(),
                    summary.join("\n"),
                    tail(&env.log(), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = hog {
            h.join().unwrap();
        }
        // Give stale listings time to do harm.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(terminate(&mut d), 0);
        let keys = env.emu.keys();
        for i in 0..n {
            let l = format!("app-{i}");
            let mine: Vec<_> = keys
                .iter()
                .filter(|k| k.name == l || k.name.starts_with(&format!("{l}-")))
                .collect();
            assert_eq!(
                mine.len(),
                1,
                "round {round}: lineage {l} has {:?}",
                mine.iter().map(|k| &k.name).collect::<Vec<_>>()
            );
            // A rotation that failed before creating anything (429s) may be
            // followed by another; two *completed* ones would be the bug.
            let done = completed_of(&env, &l);
            assert_eq!(
                done.len(),
                1,
                "round {round}: lineage {l} completed {} rotations: {:#?}",
                done.len(),
                env.rotations()
                    .iter()
                    .filter(|r| r.lineage == l)
                    .collect::<Vec<_>>()
            );
            assert_eq!(done[0].new_key_id.as_ref(), Some(&mine[0].id));
        }
    }
}

/// Reproduction 4 against the real `rekey emulate oceanbase --list-delay`:
/// the daemon dies right after a create; the key appears in lists only
/// later. It must never become current and must be deleted when it shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_rekey_emulate_and_a_list_delay_a_late_orphan_is_deleted_and_the_sink_keeps_the_current_key()
 {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let env = Env::new().await;
    let mut emu = Command::new(BIN)
        .args([
            "emulate",
            "oceanbase",
            "--listen",
            "127.0.0.1:0",
            "--keys",
            "1",
            "--expiring",
            "1",
            "--within",
            "1h",
            "--list-delay",
            "2s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = emu.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().unwrap().unwrap();
        // Keep draining so the emulator never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        first
    })
    .await
    .unwrap();
    let endpoint = first
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no endpoint in {first}"))
        .to_string();
    let cfg = write_config(
        &env,
        &format!("{PROVIDER}{FILE_SINK}{}", policy("maas", "ob", "app-*", "")),
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&env.emu.endpoint(), &endpoint);
    std::fs::write(&cfg, text).unwrap();
    let client = crate::support::oceanbase_provider(&rekey::config::ProviderConfig {
        name: "check".into(),
        endpoint,
        rate_limit: None,
        ca_file: None,
        timeout: Duration::from_secs(10),
        kind: rekey::config::ProviderKind::OceanBase(rekey::provider::oceanbase::OceanBaseConfig {
            org_id: oceanbase::DEFAULT_ORG_ID.into(),
            project_id: oceanbase::DEFAULT_PROJECT_ID.into(),
            access_key_id: rekey::config::SecretRef::Literal(rekey::secret::Secret::new(
                oceanbase::DEFAULT_ACCESS_KEY_ID,
            )),
            access_key_secret: rekey::config::SecretRef::Literal(rekey::secret::Secret::new(
                oceanbase::DEFAULT_ACCESS_KEY_SECRET,
            )),
        }),
    });
    use rekey::provider::Provider;
    let all = |_: &str| true;

    let mut d = env.spawn(&cfg, Some("after_create"));
    assert!(!d.wait().unwrap().success());
    let mut d = env.spawn(&cfg, None);
    env.wait_for("a completed rotation", Duration::from_secs(90), |e| {
        e.completed() == 1
    })
    .await;
    let r = env.rotations()[0].clone();
    let orphan = store(&env).attempts(&r.id).unwrap()[0].name.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let keys = client.list(&all).await.unwrap();
        if !keys.iter().any(|k| k.name == orphan) && keys.len() == 1 {
            assert_eq!(Some(&keys[0].id), r.new_key_id.as_ref());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the orphan {orphan} was never deleted: {:?}\n{}",
            keys.iter().map(|k| &k.name).collect::<Vec<_>>(),
            tail(&env.log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(terminate(&mut d), 0);
    unsafe {
        libc::kill(emu.id() as i32, libc::SIGTERM);
    }
    let _ = emu.wait();
    assert_eq!(env.rotations().len(), 1, "no second rotation");
    assert!(
        env.rotations()
            .iter()
            .all(|x| x.old_key_name.as_deref() != Some(orphan.as_str()))
    );
    let file = std::fs::read_to_string(env.path("keys/app-00001.env")).unwrap();
    assert!(file.contains(&format!("REKEY_KEY_ID={}", r.new_key_id.clone().unwrap())));
}

/// A state DB restored from a backup taken before the last rotation: the
/// key the sinks hold is unknown to it. Nothing is guessed; `rekey recover
/// --policy P --lineage L` makes it current, and it is rotated when due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_one_lineage_after_restoring_an_old_backup_of_the_db() {
    let env = Env::with(OceanBaseEmulatorOptions {
        lifetime: Some(Duration::from_secs(15)),
        ..Default::default()
    })
    .await;
    env.seed(1, 1);
    let cfg = write_config(
        &env,
        &format!("{PROVIDER}{FILE_SINK}{}", policy("maas", "ob", "app-*", "")),
    );
    let mut d = env.spawn(&cfg, None);
    env.wait_for("the first rotation", Duration::from_secs(60), |e| {
        e.completed() == 1
    })
    .await;
    assert_eq!(terminate(&mut d), 0);
    let backup = env.path("backup.db");
    std::fs::copy(env.path("state.db"), &backup).unwrap();
    let mut d = env.spawn(&cfg, None);
    env.wait_for("the second rotation", Duration::from_secs(60), |e| {
        e.completed() == 2
    })
    .await;
    assert_eq!(terminate(&mut d), 0);
    let held = env
        .rotations()
        .into_iter()
        .max_by_key(|r| r.published_at)
        .unwrap()
        .new_key_id
        .unwrap();
    for f in ["state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(env.path(f));
    }
    std::fs::copy(&backup, env.path("state.db")).unwrap();
    // The restored DB does not know the key in the sink: nothing rotates.
    let mut d = env.spawn(&cfg, None);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(terminate(&mut d), 0);
    assert_eq!(env.completed(), 1, "the restored DB knows one rotation");
    assert!(env.rotations().iter().all(|r| r.state.is_terminal()));
    assert_eq!(env.emu.keys().len(), 1);
    let out = Command::new(BIN)
        .args(["recover", "-c"])
        .arg(&cfg)
        .args(["--policy", "maas", "--lineage", "app-0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("RECOVERED key {held}")), "{text}");
    // The recovered key is current again and rotated when due.
    let mut d = env.spawn(&cfg, None);
    env.wait_for(
        "the recovered key to be rotated",
        Duration::from_secs(60),
        |e| {
            e.rotations().iter().any(|r| {
                r.old_key_id.as_deref() == Some(held.as_str())
                    && r.state == RotationState::Completed
            })
        },
    )
    .await;
    assert_eq!(terminate(&mut d), 0);
    let keys = env.emu.keys();
    assert!(!keys.iter().any(|k| k.id == held), "the old key is deleted");
    assert_eq!(
        keys.len(),
        1,
        "{:?}",
        keys.iter().map(|k| &k.name).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_about_a_fixed_target_on_a_policy_that_can_have_several_lineages() {
    let env = Env::new().await;
    let cfg = write_config(
        &env,
        &format!(
            "{PROVIDER}{}{}",
            FILE_SINK.replace("{lineage}.env", "one.env"),
            policy("maas", "ob", "app-*", "")
        ),
    );
    let (code, text) = check(&cfg);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("writes to the fixed target") && text.contains("put {lineage} in the target"),
        "{text}"
    );
}
