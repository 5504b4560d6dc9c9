//! High availability on PostgreSQL (DESIGN §8), end to end: three real
//! `rekey run` processes on one database of the test's own, against the
//! OceanBase emulator, with a file sink every node shares. Leases last
//! seconds here (`lease_ttl`, `lease_renew`), so a failover takes seconds.
//!
//! Waits are bounded polls (a deadline to fail by). Where the contract
//! names a speed (a graceful stop hands over "in under a second"), the test
//! makes polling too slow to explain it: only the resign's NOTIFY can.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use rekey::emulator::oceanbase::{self, EmulatorHandle, OceanBaseEmulatorOptions};
use rekey::state::{RotationState, StateLocation, Store};

use crate::e2e::tail;
use crate::support::pg::{PgDb, Throwaway};

const BIN: &str = env!("CARGO_BIN_EXE_rekey");
const ADMIN_TOKEN: &str = "ha-test-admin-token";
const SEAL_KEY: &str = "5ea1c0de5ea1c0de5ea1c0de5ea1c0de5ea1c0de5ea1c0de5ea1c0de5ea1c0de";

/// Timing of the nodes' leases.
#[derive(Clone, Copy)]
pub(crate) struct Timing {
    pub ttl: &'static str,
    pub renew: &'static str,
}

/// Fast failover: a lease of 3 s renewed every second.
pub(crate) const FAST: Timing = Timing {
    ttl: "3s",
    renew: "1s",
};

pub(crate) struct Cluster {
    dir: tempfile::TempDir,
    pub(crate) emu: EmulatorHandle,
    /// The state URL every node uses.
    url: String,
    store: Store,
    /// Dropped after the nodes (fields drop in order).
    _db: Option<PgDb>,
    pub(crate) cluster: Option<Throwaway>,
    nodes: Vec<(String, Option<Child>)>,
}

impl Cluster {
    /// A database, an emulator with `seed` keys `app-<i>` (the first `due`
    /// expiring within the lead), and configs for nodes `node-a`… that
    /// are not started yet. `None`: no PostgreSQL here (skipped).
    pub(crate) async fn new(
        test: &str,
        seed: usize,
        due: usize,
        timing: Timing,
    ) -> Option<Cluster> {
        let db = PgDb::create(test).await?;
        let url = db.url();
        Some(Cluster::on(url, Some(db), None, seed, due, timing).await)
    }

    /// As [`Cluster::new`], on a database of a throwaway cluster.
    pub(crate) async fn on_throwaway(seed: usize, due: usize, timing: Timing) -> Option<Cluster> {
        let t = Throwaway::start()?;
        let url = t.database("rekey_ha").await;
        Some(Cluster::on(url, None, Some(t), seed, due, timing).await)
    }

    async fn on(
        url: String,
        db: Option<PgDb>,
        cluster: Option<Throwaway>,
        seed: usize,
        due: usize,
        timing: Timing,
    ) -> Cluster {
        let emu = oceanbase::start(
            OceanBaseEmulatorOptions::default(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        std::fs::write(dir.path().join("ak"), oceanbase::DEFAULT_ACCESS_KEY_ID).unwrap();
        std::fs::write(dir.path().join("sk"), oceanbase::DEFAULT_ACCESS_KEY_SECRET).unwrap();
        std::fs::write(dir.path().join("seal"), SEAL_KEY).unwrap();
        std::fs::write(dir.path().join("admin-token"), ADMIN_TOKEN).unwrap();
        let now = Utc::now();
        for i in 0..seed {
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
            emu.insert_key(&format!("app-{i}"), created, Some(expires));
        }
        let location =
            StateLocation::Postgres(rekey::state::postgres::PgOptions::from_url(&url).unwrap());
        let store = Store::open_location(&location).unwrap();
        let c = Cluster {
            dir,
            emu,
            url,
            store,
            _db: db,
            cluster,
            nodes: Vec::new(),
        };
        for n in ["node-a", "node-b", "node-c"] {
            c.write_config(n, timing, "");
        }
        c
    }

    pub(crate) fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Node `name`'s config; `policy_extra` goes into the policy.
    pub(crate) fn write_config(&self, name: &str, timing: Timing, policy_extra: &str) {
        let cfg = format!(
            r#"
[daemon]
state = "{url}"
instance = "{name}"
seal_key = {{ file = "{seal}" }}
admin_token = {{ file = "{token}" }}
listen = "127.0.0.1:0"
lease_ttl = "{ttl}"
lease_renew = "{renew}"
shutdown_timeout = "10s"
{sections}"#,
            url = self.url,
            seal = self.path("seal").display(),
            token = self.path("admin-token").display(),
            ttl = timing.ttl,
            renew = timing.renew,
            sections = crate::support::maas_sections(
                &self.emu.endpoint(),
                &self.path("ak"),
                &self.path("sk"),
                &self.path("keys/{lineage}.env"),
                "shared = true",
                policy_extra,
            ),
        );
        std::fs::write(self.path(&format!("{name}.toml")), cfg).unwrap();
    }

    /// Replace `from` (which must be there) with `to` in node `name`'s config.
    pub(crate) fn edit_config(&self, name: &str, from: &str, to: &str) {
        crate::support::edit_config(&self.path(&format!("{name}.toml")), from, to);
    }

    /// Start node `name` (with a failpoint armed, if any).
    pub(crate) fn start(&mut self, name: &str, failpoint: Option<&str>) {
        let child = crate::support::spawn_run(
            &self.path(&format!("{name}.toml")),
            &self.path(&format!("{name}.log")),
            Some("rekey=debug,info"),
            failpoint,
            &[],
        );
        self.nodes.retain(|(n, _)| n != name);
        self.nodes.push((name.to_string(), Some(child)));
    }

    pub(crate) fn child(&mut self, name: &str) -> &mut Child {
        self.nodes
            .iter_mut()
            .find(|(n, _)| n == name)
            .and_then(|(_, c)| c.as_mut())
            .unwrap_or_else(|| panic!("node {name} was not started"))
    }

    pub(crate) fn pid(&mut self, name: &str) -> i32 {
        self.child(name).id() as i32
    }

    pub(crate) fn signal(&mut self, name: &str, sig: i32) {
        let pid = self.pid(name);
        // SAFETY: a plain kill(2) on a child this test started.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// The node's exit code once it exited (signal n as -n).
    pub(crate) fn exited(&mut self, name: &str) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        self.child(name)
            .try_wait()
            .unwrap()
            .map(|s| s.code().unwrap_or_else(|| -s.signal().unwrap_or(1000)))
    }

    pub(crate) fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (n, _) in &self.nodes {
            out.push_str(&format!("--- {n} (tail) ---\n{}\n", tail(&self.log(n), 40)));
        }
        out
    }

    /// The node holding a live lease and the fence, by the database.
    pub(crate) fn leader(&self) -> Option<(String, i64)> {
        let info = self.store.lease_info().ok()?;
        let live = info.lease_until.is_some_and(|u| u > info.db_now);
        match (info.holder, live) {
            (Some(h), true) => Some((h, info.fence)),
            _ => None,
        }
    }

    pub(crate) fn rotations(&self) -> Vec<rekey::state::RotationRow> {
        self.store.history(None, 1000).unwrap_or_default()
    }

    pub(crate) fn completed(&self) -> usize {
        self.rotations()
            .iter()
            .filter(|r| r.state == RotationState::Completed)
            .count()
    }

    /// Poll until `cond` holds; panic with every node's log after `limit`.
    pub(crate) async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        mut cond: impl FnMut(&Cluster) -> bool,
    ) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if cond(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}\n{}", self.logs());
    }

    /// The node's status endpoint, from its log.
    pub(crate) fn endpoint(&self, name: &str) -> Option<String> {
        let log = self.log(name);
        let at = log.find("endpoint=")? + "endpoint=".len();
        let rest = &log[at..];
        let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
        let ep = rest[..end].trim_matches('"');
        Some(if ep.starts_with("http") {
            ep.to_string()
        } else {
            format!("http://{ep}")
        })
    }

    pub(crate) async fn status(&self, name: &str) -> serde_json::Value {
        let ep = self.endpoint(name).expect("node logged its endpoint");
        reqwest::get(format!("{ep}/status"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `POST /rotate/maas?lineage=…` on node `name`; it must answer 202.
    pub(crate) async fn rotate(&self, name: &str, lineage: &str) {
        let ep = self.endpoint(name).expect("node logged its endpoint");
        let r = reqwest::Client::new()
            .post(format!("{ep}/rotate/maas?lineage={lineage}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap());
    }

    pub(crate) async fn metrics(&self, name: &str) -> String {
        let ep = self.endpoint(name).expect("node logged its endpoint");
        reqwest::get(format!("{ep}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// DESIGN §3 once every rotation finished: one live key per lineage,
    /// held by the shared file; at most one completed rotation per lineage;
    /// no old key deleted inside its grace; no attempt key left behind.
    pub(crate) fn assert_invariants(&self, lineages: &[&str]) {
        self.assert_invariants_with(lineages, 1)
    }

    /// As [`Cluster::assert_invariants`], when the test asked for up to
    /// `rotations` rotations of each lineage.
    pub(crate) fn assert_invariants_with(&self, lineages: &[&str], rotations: usize) {
        let keys = self.emu.keys();
        for l in lineages {
            let mine: Vec<_> = keys
                .iter()
                .filter(|k| k.name == *l || k.name.starts_with(&format!("{l}-")))
                .collect();
            assert_eq!(
                mine.len(),
                1,
                "lineage {l} must have exactly one live key, has {:?}\n{}",
                mine.iter().map(|k| &k.name).collect::<Vec<_>>(),
                self.logs()
            );
            let file =
                std::fs::read_to_string(self.path(&format!("keys/{l}.env"))).unwrap_or_default();
            if mine[0].name != *l {
                assert!(
                    file.contains(mine[0].api_key.expose()),
                    "the file of {l} does not hold its current key"
                );
            }
        }
        let hist = self.rotations();
        for l in lineages {
            let done = hist
                .iter()
                .filter(|r| r.lineage == *l && r.state == RotationState::Completed)
                .count();
            assert!(done <= rotations, "lineage {l} rotated {done} times");
        }
        for r in &hist {
            if let (Some(p), Some(f)) = (r.published_at, r.finished_at)
                && r.outcome.as_deref() == Some("deleted")
            {
                assert!(
                    f - p >= chrono::Duration::seconds(2),
                    "rotation {} deleted the old key {} ms after publishing, inside the 2 s grace",
                    r.id,
                    (f - p).num_milliseconds()
                );
            }
            for a in self.store.attempts(&r.id).unwrap() {
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

    /// SIGKILL every node still running.
    pub(crate) fn kill_all(&mut self) {
        for (_, c) in &mut self.nodes {
            if let Some(c) = c.as_mut() {
                // SAFETY: a plain kill(2) on a child this test started.
                unsafe {
                    libc::kill(c.id() as i32, libc::SIGCONT);
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// With a 6 s grace on every node (so the rotation waits in `published`
/// for a while), let node-a lead with the others standing by until it has
/// published the first rotation; returns node-a's fence.
async fn lead_until_published(c: &mut Cluster) -> i64 {
    for n in ["node-a", "node-b", "node-c"] {
        c.edit_config(n, "grace_period = \"2s\"", "grace_period = \"6s\"");
    }
    let fence = elect(c, "node-a", None, &["node-b", "node-c"]).await;
    c.wait_for("node-a to publish", Duration::from_secs(60), |c| {
        c.rotations().iter().any(|r| r.published_at.is_some())
    })
    .await;
    fence
}

/// Start `first` alone and wait until it leads, then start the others.
async fn elect(c: &mut Cluster, first: &str, failpoint: Option<&str>, others: &[&str]) -> i64 {
    c.start(first, failpoint);
    c.wait_for(&format!("{first} to lead"), Duration::from_secs(30), |c| {
        c.leader().is_some_and(|(h, _)| h == first)
    })
    .await;
    for o in others {
        c.start(o, None);
    }
    c.leader().unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_nodes_leads_the_others_stand_by_and_a_standby_records_a_rotate_request() {
    let Some(mut c) = Cluster::new("roles", 2, 0, FAST).await else {
        return;
    };
    let fence = elect(&mut c, "node-a", None, &["node-b", "node-c"]).await;
    c.wait_for(
        "the standbys to serve /status",
        Duration::from_secs(30),
        |c| c.endpoint("node-b").is_some() && c.endpoint("node-c").is_some(),
    )
    .await;
    let a = c.status("node-a").await;
    assert_eq!(a["role"], "leader", "{a}");
    assert_eq!(a["leader"], "node-a");
    assert_eq!(a["fence"], fence);
    assert!(a["lease_until"].is_string());
    let b = c.status("node-b").await;
    assert_eq!(b["role"], "standby", "{b}");
    assert_eq!(b["leader"], "node-a");
    assert!(c.metrics("node-a").await.contains("\nrekey_leader 1"));
    assert!(c.metrics("node-b").await.contains("\nrekey_leader 0"));

    // Nothing is due; a rotate request on a standby is recorded there and
    // carried out by the leader.
    c.rotate("node-b", "app-1").await;
    c.wait_for(
        "the leader to carry out the standby's request",
        Duration::from_secs(60),
        |c| c.completed() == 1,
    )
    .await;
    let done = c.rotations();
    assert_eq!(done[0].lineage, "app-1");
    assert!(c.log("node-b").contains("rotate request on a standby"));
    assert!(
        c.log("node-a")
            .contains("rotate request recorded by a standby")
    );
    for n in ["node-b", "node-c"] {
        assert!(
            !c.log(n).contains("next key created"),
            "standby {n} created a key"
        );
    }
    c.assert_invariants(&["app-0", "app-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_of_the_leader_hands_the_lease_to_a_standby_at_once() {
    // Standbys poll every ~5 s (half of lease_renew, ±25 %): a takeover
    // within a second of the leader's exit can only come from the resign's
    // NOTIFY.
    let slow = Timing {
        ttl: "30s",
        renew: "10s",
    };
    let Some(mut c) = Cluster::new("graceful", 1, 0, slow).await else {
        return;
    };
    let fence = elect(&mut c, "node-a", None, &["node-b", "node-c"]).await;
    c.wait_for("the standbys to stand by", Duration::from_secs(30), |c| {
        ["node-b", "node-c"]
            .iter()
            .all(|n| c.log(n).contains("rekey standing by"))
    })
    .await;
    // Let each standby's first look at the lease pass, so it is waiting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.signal("node-a", libc::SIGTERM);
    let start = Instant::now();
    let code = loop {
        if let Some(code) = c.exited("node-a") {
            break code;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "node-a did not stop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(code, 0, "a graceful stop exits 0\n{}", c.log("node-a"));
    assert!(c.log("node-a").contains("resigned the lease"));
    let exited = Instant::now();
    let (holder, new_fence) = loop {
        if let Some(l) = c.leader() {
            break l;
        }
        assert!(
            exited.elapsed() < Duration::from_secs(3),
            "no standby took over within 3 s of the resign (standbys poll every ~5 s; the NOTIFY should wake them)\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let took = exited.elapsed();
    assert!(holder == "node-b" || holder == "node-c", "{holder}");
    assert!(new_fence > fence, "every acquisition increments the fence");
    assert!(
        took < Duration::from_secs(1),
        "took {} ms to lead after the resign",
        took.as_millis()
    );
    println!("bench: graceful takeover {} ms", took.as_millis());
}

/// kill -9 (a failpoint abort) of the leader at one step boundary of two
/// rotations: a standby takes over within TTL + a quiet period and every
/// invariant of DESIGN §3 holds.
async fn leader_crash_at(failpoint: &str) {
    let Some(mut c) = Cluster::new("crash", 2, 2, FAST).await else {
        return;
    };
    c.start("node-a", Some(failpoint));
    c.wait_for("node-a to lead", Duration::from_secs(30), |c| {
        c.leader().is_some_and(|(h, _)| h == "node-a") || c.log("node-a").contains("failpoint")
    })
    .await;
    let fence = c.store.lease_info().unwrap().fence;
    c.start("node-b", None);
    c.start("node-c", None);
    let start = Instant::now();
    loop {
        if c.exited("node-a").is_some() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "failpoint {failpoint} never fired\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        c.log("node-a")
            .contains(&format!("failpoint {failpoint} reached"))
    );
    let crashed = Instant::now();
    c.wait_for(
        "a standby to take over within TTL + a quiet period",
        Duration::from_secs(3 + 10),
        |c| c.leader().is_some_and(|(h, f)| h != "node-a" && f > fence),
    )
    .await;
    println!(
        "bench: crash {failpoint}: takeover {} ms after the crash",
        crashed.elapsed().as_millis()
    );
    c.wait_for(
        "both rotations to complete under the new leader",
        Duration::from_secs(90),
        |c| c.completed() == 2,
    )
    .await;
    c.assert_invariants(&["app-0", "app-1"]);
    // For benches/ha_failover.sh: provider calls of the whole run (two
    // rotations need 2 creates and 2 deletes without a failover).
    let st = c.emu.stats();
    println!(
        "bench: crash {failpoint}: calls create={} delete={} list={}",
        st.create.requests, st.delete.requests, st.list.requests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_before_create_a_standby_finishes_the_rotations() {
    leader_crash_at("before_create").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_after_create_before_its_commit_a_standby_cleans_the_orphan() {
    leader_crash_at("after_create").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_after_a_sink_wrote_before_its_ack_a_standby_publishes_again() {
    leader_crash_at("after_publish").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_after_every_ack_a_standby_retires_after_the_grace() {
    leader_crash_at("after_publish_all").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_after_delete_before_its_commit_a_standby_counts_the_404_as_done() {
    leader_crash_at("after_delete").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_past_its_lease_is_replaced_and_exits_when_it_resumes() {
    let Some(mut c) = Cluster::new("sigstop", 1, 1, FAST).await else {
        return;
    };
    // A longer grace keeps the rotation waiting in `published` while the
    // leader is stopped.
    let fence = lead_until_published(&mut c).await;
    c.signal("node-a", libc::SIGSTOP);
    let stopped = Instant::now();
    c.wait_for("a standby to take over", Duration::from_secs(15), |c| {
        c.leader().is_some_and(|(h, f)| h != "node-a" && f > fence)
    })
    .await;
    c.wait_for(
        "the new leader to finish the rotation and delete the old key",
        Duration::from_secs(60),
        |c| c.completed() == 1,
    )
    .await;
    assert!(stopped.elapsed() > Duration::from_secs(3), "past the lease");
    c.signal("node-a", libc::SIGCONT);
    let resumed = Instant::now();
    let code = loop {
        if let Some(code) = c.exited("node-a") {
            break code;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(15),
            "the deposed leader did not stop after SIGCONT\n{}",
            c.log("node-a")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        code,
        75,
        "a deposed leader exits 75 (EX_TEMPFAIL)\n{}",
        c.log("node-a")
    );
    assert!(!c.log("node-a").contains("old key deleted"));
    c.assert_invariants(&["app-0"]);
    let hist = c.rotations();
    assert_eq!(hist.len(), 1, "no double rotation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_config_differs_from_the_leaders_refuses_to_lead_and_says_why() {
    let Some(mut c) = Cluster::new("digest", 1, 0, FAST).await else {
        return;
    };
    elect(&mut c, "node-a", None, &[]).await;
    // node-b's policy differs: another grace period.
    c.edit_config("node-b", "grace_period = \"2s\"", "grace_period = \"3s\"");
    c.start("node-b", None);
    node_b_says_it_refuses(&mut c, "config_digest", "config digest").await;
    // Only while node-a leads: once it resigned, node-b leads with its own
    // digest (the rolling config change; see the test below).
}

/// node-b (started while node-a leads) refuses to lead for `reason`
/// (the `rekey_leadership_refused` label; `phrase` in `lead_refused`), and
/// still does not lead once node-a stopped.
async fn node_b_refuses_to_lead(c: &mut Cluster, reason: &str, phrase: &str) {
    node_b_says_it_refuses(c, reason, phrase).await;
    c.signal("node-a", libc::SIGTERM);
    c.wait_for("node-a to stop", Duration::from_secs(20), |c| {
        c.leader().is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(c.leader().is_none(), "node-b led ({reason} differs)");
    node_b_says_it_refuses(c, reason, phrase).await;
}

/// node-b logs, shows and counts that it refuses to lead for `reason`.
async fn node_b_says_it_refuses(c: &mut Cluster, reason: &str, phrase: &str) {
    c.wait_for("node-b to refuse to lead", Duration::from_secs(30), |c| {
        c.log("node-b").contains("refusing to lead")
    })
    .await;
    let b = c.status("node-b").await;
    assert_eq!(b["role"], "standby");
    assert!(
        b["lead_refused"]
            .as_str()
            .is_some_and(|s| s.contains(phrase)),
        "{b}"
    );
    assert!(c.metrics("node-b").await.contains(&format!(
        "rekey_leadership_refused{{reason=\"{reason}\"}} 1"
    )));
}

/// Whether process `pid` is stopped (`T` in /proc/PID/stat).
fn is_stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

/// The deposed-leader scenario both the real build and the negative
/// control run: node-a stops itself right before publishing the first
/// rotation's new key (K1); another node takes over, finishes that
/// rotation, and a second rotation replaces K1 with K2 and deletes K1.
/// Then node-a resumes with its stale K1 in hand. Returns what the file
/// holds (K1's or K2's id in `REKEY_KEY_ID`) and the live key's id.
async fn deposed_leader_resumes_before_publishing(c: &mut Cluster) -> (String, String) {
    let fence = elect(
        c,
        "node-a",
        Some("stop@before_publish"),
        &["node-b", "node-c"],
    )
    .await;
    let pid = c.pid("node-a");
    c.wait_for(
        "node-a to stop itself before publishing",
        Duration::from_secs(60),
        |_| is_stopped(pid),
    )
    .await;
    c.wait_for("another node to take over", Duration::from_secs(20), |c| {
        c.leader().is_some_and(|(h, f)| h != "node-a" && f > fence)
    })
    .await;
    c.wait_for(
        "the new leader to finish the first rotation",
        Duration::from_secs(60),
        |c| c.completed() == 1,
    )
    .await;
    let (leader, _) = c.leader().unwrap();
    c.rotate(&leader, "app-0").await;
    c.wait_for(
        "the second rotation to replace K1",
        Duration::from_secs(60),
        |c| c.completed() == 2,
    )
    .await;
    c.signal("node-a", libc::SIGCONT);
    // Give the resumed node time to do whatever it is going to do.
    let resumed = Instant::now();
    while c.exited("node-a").is_none()
        && !c.log("node-a").contains("stop@before_publish: continued")
    {
        assert!(
            resumed.elapsed() < Duration::from_secs(15),
            "node-a neither resumed nor exited\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let file = std::fs::read_to_string(c.path("keys/app-0.env")).unwrap();
    let held = file
        .lines()
        .find_map(|l| l.strip_prefix("REKEY_KEY_ID="))
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    let live: Vec<_> = c
        .emu
        .keys()
        .into_iter()
        .filter(|k| k.name.starts_with("app-0"))
        .collect();
    assert_eq!(live.len(), 1, "one live key in the lineage");
    (held, live[0].id.clone())
}

#[cfg(not(feature = "ha-test-unfenced"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_that_resumes_publishes_nothing_and_exits() {
    let Some(mut c) = Cluster::new("deposed", 1, 1, FAST).await else {
        return;
    };
    let (held, live) = deposed_leader_resumes_before_publishing(&mut c).await;
    assert_eq!(
        held,
        live,
        "the shared file holds the live key\n{}",
        c.logs()
    );
    assert_eq!(c.exited("node-a"), Some(75), "{}", c.log("node-a"));
    c.assert_invariants_with(&["app-0"], 2);
    let log = c.log("node-a");
    println!(
        "bench: deposed leader: stopped by the gate {} by a fenced commit {} by a sink token {}",
        log.matches("was not renewed in time; starting no side effect")
            .count(),
        log.matches("a state commit was fenced").count(),
        log.matches("refused the write by fence token").count()
    );
}

/// Negative controls: built with the test-only feature `ha-test-unfenced`
/// (no store fence check, no leadership gate, no sink tokens, a lost lease
/// ignored), the very same scenarios must show the violation fencing
/// prevents — proof that the tests above can fail. CI runs them with
/// `cargo test --features ha-test-unfenced --test tests ha::negative`.
#[cfg(feature = "ha-test-unfenced")]
mod negative {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_fencing_a_deposed_leader_publishes_a_deleted_key_over_the_live_one() {
        let Some(mut c) = Cluster::new("unfenced", 1, 1, FAST).await else {
            return;
        };
        let (held, live) = deposed_leader_resumes_before_publishing(&mut c).await;
        assert_ne!(
            held,
            live,
            "without fencing the deposed leader should have overwritten the file with its stale key; the suite would not detect a double writer\n{}",
            c.logs()
        );
        assert!(
            !c.emu.keys().iter().any(|k| k.id == held),
            "the file now holds a key that no longer exists: the violation"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_down_past_the_lease_mid_rotation_one_node_re_acquires_with_a_higher_fence() {
    let Some(mut c) = Cluster::on_throwaway(1, 1, FAST).await else {
        return;
    };
    let fence = lead_until_published(&mut c).await;
    // Down for longer than the lease: nobody can renew.
    c.cluster.as_ref().unwrap().pg_ctl("stop -m immediate");
    tokio::time::sleep(Duration::from_secs(5)).await;
    c.cluster.as_ref().unwrap().pg_ctl("start -w");
    c.wait_for(
        "one node to lead again with a higher fence",
        Duration::from_secs(30),
        |c| c.leader().is_some_and(|(_, f)| f > fence),
    )
    .await;
    c.wait_for("the rotation to complete", Duration::from_secs(60), |c| {
        c.completed() == 1
    })
    .await;
    assert_eq!(
        c.exited("node-a"),
        Some(75),
        "the leader that could not renew for a whole TTL stops\n{}",
        c.log("node-a")
    );
    c.assert_invariants(&["app-0"]);
    assert_eq!(c.rotations().len(), 1, "no double rotation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_seal_key_refuses_to_lead_and_says_why() {
    let Some(mut c) = Cluster::new("sealkey", 1, 0, FAST).await else {
        return;
    };
    elect(&mut c, "node-a", None, &[]).await;
    std::fs::write(c.path("seal-b"), "ab".repeat(32)).unwrap();
    c.edit_config(
        "node-b",
        &c.path("seal").display().to_string(),
        &c.path("seal-b").display().to_string(),
    );
    c.start("node-b", None);
    node_b_refuses_to_lead(&mut c, "seal_key", "seal key").await;
    assert!(
        !c.log("node-b").contains(&"ab".repeat(32)),
        "the key never reaches the log"
    );
}

/// Found by the HA adversary: the README's rolling config change (standbys
/// first, then restart the leader: "it resigns, an updated standby takes
/// over and records the new digest") stalled for good, because a standby
/// compared its digest with the row's even after the leader resigned, and
/// nothing ever clears the row's digest: every updated node refused to lead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_config_change_in_the_readme_order_ends_with_an_updated_node_leading() {
    let Some(mut c) = Cluster::new("rolling", 1, 0, FAST).await else {
        return;
    };
    elect(&mut c, "node-a", None, &[]).await;
    let old_digest = c.store.lease_info().unwrap().config_digest;
    // 1. The standby first: its new config is refused while node-a leads.
    c.edit_config("node-b", "grace_period = \"2s\"", "grace_period = \"3s\"");
    c.start("node-b", None);
    c.wait_for("node-b to refuse to lead", Duration::from_secs(30), |c| {
        c.log("node-b").contains("refusing to lead")
    })
    .await;
    // 2. Then the leader: new config, restart (it resigns on SIGTERM).
    c.edit_config("node-a", "grace_period = \"2s\"", "grace_period = \"3s\"");
    c.signal("node-a", libc::SIGTERM);
    c.wait_for("node-a to stop", Duration::from_secs(20), |c| {
        c.leader().as_ref().is_none_or(|(h, _)| h != "node-a")
    })
    .await;
    c.start("node-a", None);
    c.wait_for(
        "an updated node to lead after the rolling change",
        Duration::from_secs(30),
        |c| c.leader().is_some(),
    )
    .await;
    let row = c.store.lease_info().unwrap();
    assert_ne!(row.config_digest, old_digest, "the new digest is recorded");
    // The node left on the old config (none here) would now be the one to
    // refuse: node-c, started on it, refuses while an updated node leads.
    c.start("node-c", None);
    c.wait_for("node-c to refuse to lead", Duration::from_secs(30), |c| {
        c.log("node-c").contains("refusing to lead")
    })
    .await;
}

/// `rekey recover` on PostgreSQL while a node led wrote beside it: nothing
/// stopped it (SQLite's lock does), the leader acted on the same lineages
/// and kept a ledger cached from before the recovery's writes. It refuses
/// while a lease runs, and runs once the cluster is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_refuses_while_a_node_leads_and_runs_once_the_cluster_is_stopped() {
    let Some(mut c) = Cluster::new("recover", 2, 0, FAST).await else {
        return;
    };
    elect(&mut c, "node-a", None, &[]).await;
    let recover = |c: &Cluster| {
        Command::new(BIN)
            .args(["recover", "-c"])
            .arg(c.path("node-a.toml"))
            .env_remove("REKEY_FAILPOINT")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = recover(&c);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("node node-a leads this state"), "{err}");
    assert!(err.contains("stop every rekey node"), "{err}");

    c.signal("node-a", libc::SIGTERM);
    c.wait_for("node-a to resign", Duration::from_secs(30), |c| {
        c.leader().is_none()
    })
    .await;
    let out = recover(&c);
    let (stdout, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{err}");
    assert!(stdout.contains("nothing to recover"), "{stdout}\n{err}");
}
