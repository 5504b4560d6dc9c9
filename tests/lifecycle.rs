//! The daemon as systemd and an operator see it: sd_notify messages on a
//! test `NOTIFY_SOCKET`, the status endpoint through a whole rotation,
//! reloads (broken and good), and SIGTERM in the middle of a rotation.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use rekey::emulator::oceanbase::OceanBaseEmulatorOptions;
use rekey::state::RotationState;

use crate::e2e::{Env, tail, terminate};

/// A datagram socket standing in for systemd's notify socket.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    sock: UnixDatagram,
    seen: Vec<(Instant, String)>,
}

impl NotifySocket {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        NotifySocket {
            _dir: dir,
            path,
            sock,
            seen: Vec::new(),
        }
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            self.seen.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).to_string(),
            ));
        }
    }

    /// Wait until a message containing `what` arrives (after `from` messages).
    fn wait_for(&mut self, what: &str, from: usize, limit: Duration) -> usize {
        let start = Instant::now();
        loop {
            self.drain();
            if let Some(i) = self
                .seen
                .iter()
                .skip(from)
                .position(|(_, m)| m.contains(what))
            {
                return from + i;
            }
            assert!(
                start.elapsed() < limit,
                "no {what} within {limit:?}; saw {:?}",
                self.seen.iter().map(|s| &s.1).collect::<Vec<_>>()
            );
        }
    }
}

fn spawn_with(env: &Env, cfg: &Path, extra: &[(&str, String)]) -> Child {
    crate::support::spawn_run(cfg, &env.path("daemon.log"), None, None, extra)
}

fn signal(child: &Child, sig: i32) {
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// The status endpoint the daemon bound (listen = 127.0.0.1:0 → from its log).
pub(crate) async fn endpoint(env: &Env) -> String {
    let start = Instant::now();
    loop {
        let log = env.log();
        if let Some(line) = log.lines().rev().find(|l| l.contains("rekey ready"))
            && let Some(ep) = line.split("endpoint=").nth(1)
        {
            return ep
                .split_whitespace()
                .next()
                .unwrap()
                .trim_matches('"')
                .to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "daemon never became ready\n{}",
            tail(&log, 30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn status_json(ep: &str) -> serde_json::Value {
    reqwest::get(format!("{ep}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_ready_watchdog_reloading_and_stopping() {
    let env = Env::new().await;
    env.seed(1, 0);
    let cfg = env.config("keys/{lineage}.env", "");
    let mut ns = NotifySocket::new();
    let mut d = spawn_with(
        &env,
        &cfg,
        &[
            ("NOTIFY_SOCKET", ns.path.display().to_string()),
            ("WATCHDOG_USEC", "2000000".into()),
        ],
    );
    let ready = ns.wait_for("READY=1", 0, Duration::from_secs(30));
    // Pings at half of WATCHDOG_USEC (2 s): at least 4 in 5 s, none more
    // than 1.5 s apart once running.
    // Drain continuously (100 ms receive timeout), so each message is
    // stamped when it arrives, not when the test looks.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(5) {
        ns.drain();
    }
    let pings: Vec<Instant> = ns
        .seen
        .iter()
        .skip(ready)
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    assert!(
        pings.len() >= 4,
        "only {} watchdog pings in 5 s",
        pings.len()
    );
    for w in pings.windows(2) {
        assert!(
            w[1] - w[0] < Duration::from_millis(1500),
            "watchdog gap {:?}",
            w[1] - w[0]
        );
    }
    assert!(
        ns.seen.iter().any(|(_, m)| m.contains("STATUS=1 policies")),
        "{:?}",
        ns.seen
    );
    let before = ns.seen.len();
    signal(&d, libc::SIGHUP);
    let r = ns.wait_for("RELOADING=1", before, Duration::from_secs(10));
    assert!(
        ns.seen[r].1.contains("MONOTONIC_USEC="),
        "RELOADING carries MONOTONIC_USEC: {}",
        ns.seen[r].1
    );
    ns.wait_for("READY=1", r + 1, Duration::from_secs(10));
    let before = ns.seen.len();
    signal(&d, libc::SIGTERM);
    ns.wait_for("STOPPING=1", before, Duration::from_secs(10));
    let code = d.wait().unwrap().code();
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_follows_a_whole_rotation_and_metrics_count_it() {
    let env = Env::with(OceanBaseEmulatorOptions {
        latency: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    env.seed(1, 1);
    let cfg = env.config("keys/{lineage}.env", "");
    let mut d = spawn_with(&env, &cfg, &[]);
    let ep = endpoint(&env).await;
    assert_eq!(
        reqwest::get(format!("{ep}/healthz"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .trim(),
        "ok"
    );
    let mut seen = Vec::new();
    let start = Instant::now();
    while env.completed() < 1 {
        let s = status_json(&ep).await;
        let p = &s["policies"][0];
        let h = p["health"].as_str().unwrap_or("").to_string();
        if seen.last() != Some(&h) {
            seen.push(h);
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no completion; health seen {seen:?}\n{}",
            tail(&env.log(), 30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = status_json(&ep).await;
    let p = &s["policies"][0];
    assert!(
        seen.contains(&"rotating".to_string()),
        "health went through rotating: {seen:?}"
    );
    assert_eq!(p["health"], "ok", "{p:#}");
    for field in ["version", "started_at"] {
        assert!(s.get(field).is_some(), "status has {field}");
    }
    for field in [
        "name",
        "provider",
        "health",
        "next_check_at",
        "last_check_at",
        "keys",
        "last_rotation",
    ] {
        assert!(p.get(field).is_some(), "policy has {field}: {p:#}");
    }
    let keys = p["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{keys:#?}");
    assert_eq!(keys[0]["state"], "current");
    assert_eq!(keys[0]["lineage"], "app-0");
    assert_eq!(p["last_rotation"]["state"], "completed");
    let metrics = reqwest::get(format!("{ep}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("rekey_rotations_total{policy=\"maas\",result=\"completed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rekey_policy_healthy{policy=\"maas\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rekey_key_expiry_timestamp_seconds{key=\"app-0-"),
        "{metrics}"
    );
    // No secret on the endpoint.
    let text = serde_json::to_string(&s).unwrap() + &metrics;
    for k in env.emu.keys() {
        assert!(!text.contains(k.api_key.expose()));
    }
    assert_eq!(terminate(&mut d), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_reload_keeps_the_old_config_and_a_good_one_adds_a_policy() {
    let env = Env::new().await;
    env.seed(1, 0);
    env.emu.insert_key(
        "svc-a",
        chrono::Utc::now() - chrono::Duration::days(29),
        Some(chrono::Utc::now() + chrono::Duration::hours(2)),
    );
    let cfg = env.config("keys/{lineage}.env", "");
    let good = std::fs::read_to_string(&cfg).unwrap();
    let mut d = spawn_with(&env, &cfg, &[]);
    let ep = endpoint(&env).await;
    // Broken: an unknown key. The daemon logs every error and keeps going.
    std::fs::write(
        &cfg,
        good.replace(
            "grace_period = \"2s\"",
            "grace_period = \"2s\"\nbogus_key = 1",
        ),
    )
    .unwrap();
    signal(&d, libc::SIGHUP);
    env.wait_for(
        "the reload refusal in the log",
        Duration::from_secs(10),
        |e| e.log().contains("reload refused"),
    )
    .await;
    assert!(
        env.log().contains("unknown key `bogus_key`"),
        "{}",
        tail(&env.log(), 20)
    );
    let s = status_json(&ep).await;
    assert_eq!(
        s["policies"].as_array().unwrap().len(),
        1,
        "still serving the old config"
    );
    // A rotation still happens under the old config.
    env.emu.insert_key(
        "app-9",
        chrono::Utc::now() - chrono::Duration::days(29),
        Some(chrono::Utc::now() + chrono::Duration::hours(1)),
    );
    env.wait_for(
        "a rotation under the old config",
        Duration::from_secs(60),
        |e| e.completed() >= 1,
    )
    .await;
    // Good: add a policy over svc-*; it is scheduled and rotates its due key.
    let added = good.clone()
        + r#"
[[policy]]
name = "svc"
provider = "ob"
match = "svc-*"
schedule = "* * * * * *"
rotate_before_expiry = "7d"
grace_period = "1s"
sinks = ["files"]
create = { action = "read" }
"#;
    std::fs::write(&cfg, added).unwrap();
    signal(&d, libc::SIGHUP);
    env.wait_for("the new policy's rotation", Duration::from_secs(60), |e| {
        e.rotations()
            .iter()
            .any(|r| r.policy == "svc" && r.state == RotationState::Completed)
    })
    .await;
    let s = status_json(&ep).await;
    let names: Vec<&str> = s["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["maas", "svc"]);
    assert_eq!(terminate(&mut d), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_rotation_exits_zero_and_the_rotation_completes_after_restart() {
    let env = Env::with(OceanBaseEmulatorOptions {
        latency: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    env.seed(3, 3);
    let cfg = env.config("keys/{lineage}.env", "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("grace_period = \"2s\"", "grace_period = \"30s\"");
    std::fs::write(&cfg, text).unwrap();
    let mut d = spawn_with(&env, &cfg, &[]);
    env.wait_for("a rotation in flight", Duration::from_secs(30), |e| {
        !e.rotations().is_empty()
    })
    .await;
    assert_eq!(
        terminate(&mut d),
        0,
        "graceful exit\n{}",
        tail(&env.log(), 20)
    );
    assert!(
        env.rotations()
            .iter()
            .all(|r| r.state != RotationState::Completed),
        "stopped before finishing"
    );
    // Shorten the grace so the test does not wait 30 s; the stored deadline
    // is what counts, so restart and let it run out.
    let mut d = spawn_with(&env, &cfg, &[]);
    env.wait_for("the published rotations", Duration::from_secs(60), |e| {
        e.rotations()
            .iter()
            .filter(|r| r.published_at.is_some())
            .count()
            == 3
    })
    .await;
    assert_eq!(terminate(&mut d), 0);
    let rows = env.rotations();
    assert_eq!(rows.len(), 3, "no rotation started twice");
    for r in &rows {
        assert!(
            matches!(r.state, RotationState::Retiring | RotationState::Completed),
            "{:?}",
            r.state
        );
    }
    // Each lineage's file holds its new key, and the old keys still live
    // (their grace is not over): nothing was lost or deleted early.
    for r in &rows {
        let name = r.new_key_name.clone().unwrap();
        let k = env.emu.keys().into_iter().find(|k| k.name == name).unwrap();
        let file = std::fs::read_to_string(env.path(&format!("keys/{}.env", r.lineage))).unwrap();
        assert!(file.contains(k.api_key.expose()));
        if r.state == RotationState::Retiring {
            assert!(
                env.emu
                    .keys()
                    .iter()
                    .any(|k| Some(&k.id) == r.old_key_id.as_ref())
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_journal_every_line_carries_its_syslog_priority() {
    let env = Env::new().await;
    env.seed(1, 0);
    let cfg = env.config("keys/{lineage}.env", "");
    let mut d = spawn_with(&env, &cfg, &[("JOURNAL_STREAM", "8:12345".into())]);
    endpoint_from_journal(&env).await;
    assert_eq!(terminate(&mut d), 0);
    let log = env.log();
    assert!(
        log.lines().any(|l| l.starts_with("<6>rekey ready")),
        "{log}"
    );
    for line in log.lines().filter(|l| !l.is_empty()) {
        let ok = line.len() > 3
            && line.starts_with('<')
            && line.as_bytes()[2] == b'>'
            && (b'0'..=b'7').contains(&line.as_bytes()[1]);
        assert!(ok, "line without a priority prefix: {line}");
    }
}

async fn endpoint_from_journal(env: &Env) {
    let start = Instant::now();
    while !env.log().contains("rekey ready") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never ready\n{}",
            tail(&env.log(), 20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 13's freshness bound, as `/status` shows it: rotation steps only
/// mark their policy, and the daemon's loop must wake when the policy's
/// coalescing window ends (≤ 1 s) to rebuild it. Twelve lineages retire
/// together (one check started them: their last steps come within a
/// window of each other); the next check is up to 30 s away and the
/// heartbeat 10 s, so only that wake-up shows the last ones.
/// Each lineage must show `completed` within 4 s of the store saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_shows_a_coalesced_last_step_without_waiting_for_the_heartbeat() {
    let env = Env::new().await;
    env.seed(12, 12);
    let cfg = env.config("keys/{lineage}.env", "");
    crate::support::edit_config(
        &cfg,
        "schedule = \"* * * * * *\"",
        "schedule = \"*/30 * * * * *\"",
    );
    // Killed if an assertion below fails (not left running).
    let mut d = KillOnDrop(spawn_with(&env, &cfg, &[]));
    let ep = endpoint(&env).await;
    let start = Instant::now();
    let mut stored_at: Option<Instant> = None;
    let shown = loop {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the rotations never completed\n{}",
            tail(&env.log(), 40)
        );
        let done = env.completed();
        if done == 12 && stored_at.is_none() {
            stored_at = Some(Instant::now());
        }
        let s = status_json(&ep).await;
        let states: Vec<String> = s["policies"][0]["lineages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["rotation"]["state"].as_str().unwrap_or("").to_string())
            .collect();
        if let Some(at) = stored_at {
            if states.iter().all(|s| s == "completed") {
                break at.elapsed();
            }
            assert!(
                at.elapsed() < Duration::from_secs(4),
                "all twelve rotations completed {:?} ago; the status still shows {states:?}\n{}",
                at.elapsed(),
                tail(&env.log(), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(shown < Duration::from_secs(4), "{shown:?}");
    assert_eq!(terminate(&mut d.0), 0);
}

/// A daemon killed when the test lets go of it (a failed assertion).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
