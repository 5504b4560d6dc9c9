//! Engine tests against an in-memory provider and a manual clock: the
//! invariants of DESIGN §3, step by step, without real sleeps.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::engine::{Backoff, Engine, Runtime};
use crate::clock::{Clock, ManualClock};
use crate::config::{self, secret_ref::Env};
use crate::metrics::Metrics;
use crate::provider::*;
use crate::secret::{Secret, SecretFields};
use crate::sink;
use crate::state::seal::Sealer;
use crate::state::{RotationState, Store};
use crate::status::{Health, StatusHandle};

#[derive(Default)]
struct FakeState {
    keys: Vec<(ProviderKey, String)>,
    next: u32,
    /// Errors to return from the next create calls.
    create_errors: Vec<ProviderErrorKind>,
    deleted: Vec<String>,
    /// Make create also succeed at the provider but report an error
    /// (the response was lost).
    lose_next_create_response: bool,
}

#[derive(Clone)]
struct FakeProvider {
    st: Arc<Mutex<FakeState>>,
    clock: ManualClock,
    lifetime: Duration,
}

impl FakeProvider {
    fn add(&self, name: &str, created_ago: Duration, expires_in: Duration) -> String {
        let mut st = self.st.lock().unwrap();
        st.next += 1;
        let id = format!("ak-{}", st.next);
        let now = self.clock.now();
        st.keys.push((
            ProviderKey {
                id: id.clone(),
                name: name.into(),
                created_at: Some(now - created_ago),
                expires_at: Some(now + expires_in),
                meta: Default::default(),
            },
            format!("sk_{id}_secret"),
        ));
        id
    }
    fn names(&self) -> Vec<String> {
        self.st
            .lock()
            .unwrap()
            .keys
            .iter()
            .map(|k| k.0.name.clone())
            .collect()
    }
    fn secret_of(&self, name: &str) -> Option<String> {
        self.st
            .lock()
            .unwrap()
            .keys
            .iter()
            .find(|k| k.0.name == name)
            .map(|k| k.1.clone())
    }
}

#[async_trait]
impl Provider for FakeProvider {
    fn name(&self) -> &str {
        "ob"
    }
    fn kind(&self) -> &'static str {
        "fake"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            can_list: true,
            can_delete: true,
            disable_before_delete: false,
            has_expiry: true,
            returns_id_on_create: false,
        }
    }
    async fn list(
        &self,
        keep: &(dyn for<'k> Fn(&'k str) -> bool + Send + Sync),
    ) -> Result<Vec<ProviderKey>, ProviderError> {
        Ok(self
            .st
            .lock()
            .unwrap()
            .keys
            .iter()
            .filter(|k| keep(&k.0.name))
            .map(|k| k.0.clone())
            .collect())
    }
    async fn create(&self, req: &CreateRequest<'_>) -> Result<NewKey, ProviderError> {
        let lose = {
            let mut st = self.st.lock().unwrap();
            if !st.create_errors.is_empty() {
                let k = st.create_errors.remove(0);
                return Err(ProviderError::new("ob", "create", k));
            }
            std::mem::take(&mut st.lose_next_create_response)
        };
        let id = self.add(req.name, Duration::zero(), self.lifetime);
        if lose {
            return Err(ProviderError::new(
                "ob",
                "create",
                ProviderErrorKind::Timeout(std::time::Duration::from_secs(30)),
            ));
        }
        let secret = self.secret_of(req.name).unwrap();
        let _ = id;
        let k = self
            .st
            .lock()
            .unwrap()
            .keys
            .iter()
            .find(|k| k.0.name == req.name)
            .unwrap()
            .0
            .clone();
        Ok(NewKey {
            id: None,
            name: k.name,
            created_at: k.created_at,
            expires_at: k.expires_at,
            secret: SecretFields::single("api_key", Secret::new(secret)),
        })
    }
    async fn delete(&self, key_id: &str) -> Result<DeleteOutcome, ProviderError> {
        let mut st = self.st.lock().unwrap();
        let before = st.keys.len();
        st.keys.retain(|k| k.0.id != key_id);
        st.deleted.push(key_id.to_string());
        Ok(if st.keys.len() < before {
            DeleteOutcome::Deleted
        } else {
            DeleteOutcome::NotFound
        })
    }
}

struct Harness {
    engine: Engine,
    rt: Runtime,
    fake: FakeProvider,
    clock: ManualClock,
    dir: tempfile::TempDir,
    stop: CancellationToken,
}

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T12:00:00Z")
        .unwrap()
        .to_utc()
}

fn harness(policy_extra: &str, sink_dir: Option<&Path>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = sink_dir
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| dir.path().join("keys"));
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    let src = format!(
        r#"
[daemon]
state = "{state}"
[providers.ob]
kind = "oceanbase"
endpoint = "http://127.0.0.1:1"
org_id = "o"
project_id = "p"
access_key_id = {{ env = "AK" }}
access_key_secret = {{ env = "SK" }}
[sinks.f]
kind = "file"
path = "{keys}/{{lineage}}.env"
[[policy]]
name = "p"
provider = "ob"
match = "app-*"
schedule = "0 * * * * *"
rotate_before_expiry = "7d"
grace_period = "1h"
sinks = ["f"]
max_attempts = 3
create = {{ action = "read" }}
{policy_extra}
"#,
        state = dir.path().join("state.db").display(),
        keys = keys_dir.display()
    );
    let env = Env {
        vars: [
            ("AK".to_string(), "a".to_string()),
            ("SK".to_string(), "b".to_string()),
        ]
        .into(),
        credentials_dir: None,
    };
    let (cfg, _) =
        config::load_str(Path::new("t.toml"), &src, &env).unwrap_or_else(|e| panic!("{e:#?}"));
    let clock = ManualClock::new(start());
    let fake = FakeProvider {
        st: Default::default(),
        clock: clock.clone(),
        lifetime: Duration::days(30),
    };
    let mut providers: HashMap<String, SharedProvider> = HashMap::new();
    providers.insert("ob".into(), Arc::new(fake.clone()));
    let mut sinks = HashMap::new();
    for (n, s) in &cfg.sinks {
        sinks.insert(n.clone(), sink::build(s, Arc::new(clock.clone())).unwrap());
    }
    let store = Arc::new(Store::open(&cfg.daemon.state).unwrap());
    let engine = Engine {
        store,
        clock: Arc::new(clock.clone()),
        sealer: Arc::new(Sealer::random()),
        metrics: Metrics::new(),
        status: StatusHandle::new(start()),
        wake_scheduler: Arc::new(Notify::new()),
        wake_notify: Arc::new(Notify::new()),
        slots: Arc::new(Semaphore::new(4)),
        backoff: Backoff {
            base: std::time::Duration::from_millis(10),
            max: std::time::Duration::from_secs(60),
        },
    };
    Harness {
        engine,
        rt: Runtime {
            config: Arc::new(cfg),
            providers,
            sinks,
        },
        fake,
        clock,
        dir,
        stop: CancellationToken::new(),
    }
}

impl Harness {
    async fn check(&self) -> crate::rotation::policy::PolicyPlan {
        self.engine.check_policy(&self.rt, "p").await.unwrap()
    }
    /// Drive every active rotation until each waits or finishes; advance the
    /// clock past backoff waits (never past `limit`).
    async fn drive(&self, limit: DateTime<Utc>) {
        for _ in 0..50 {
            let active = self.engine.store.active_rotations().unwrap();
            if active.is_empty() {
                return;
            }
            let mut earliest: Option<DateTime<Utc>> = None;
            for r in active {
                if let Some(t) = self
                    .engine
                    .advance(&self.rt, &r.id, &self.stop)
                    .await
                    .unwrap()
                {
                    earliest = Some(earliest.map_or(t, |e| e.min(t)));
                }
            }
            match earliest {
                Some(t) if t <= limit => {
                    if t > self.clock.now() {
                        self.clock.set(t);
                    }
                }
                _ => return,
            }
        }
    }
    fn file(&self, lineage: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("keys").join(format!("{lineage}.env"))).ok()
    }
    fn events(&self) -> Vec<String> {
        self.engine
            .store
            .events_after(0, 1000)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }
}

#[tokio::test]
async fn old_key_is_deleted_only_after_the_grace_period() {
    let h = harness("", None);
    let old = h.fake.add("app-a", Duration::days(25), Duration::days(2));
    let plan = h.check().await;
    assert_eq!(plan.due().count(), 1);
    h.drive(h.clock.now()).await;
    let r = &h.engine.store.history(None, 1).unwrap()[0];
    assert_eq!(r.state, RotationState::Retiring);
    let new_name = r.new_key_name.clone().unwrap();
    assert!(new_name.starts_with("app-a-20261122-r"), "{new_name}");
    // The file holds the new key; the old key still exists during grace.
    let secret = h.fake.secret_of(&new_name).unwrap();
    assert!(h.file("app-a").unwrap().contains(&secret));
    assert!(h.fake.names().contains(&"app-a".to_string()));
    h.clock.advance(Duration::minutes(59));
    h.drive(h.clock.now()).await;
    assert!(
        h.fake.names().contains(&"app-a".to_string()),
        "deleted before grace ended"
    );
    h.clock.advance(Duration::minutes(2));
    h.drive(h.clock.now()).await;
    assert!(!h.fake.names().contains(&"app-a".to_string()));
    assert_eq!(h.fake.st.lock().unwrap().deleted, vec![old]);
    let r = &h.engine.store.history(None, 1).unwrap()[0];
    assert_eq!(r.state, RotationState::Completed);
    assert_eq!(r.outcome.as_deref(), Some("deleted"));
    assert_eq!(
        h.events(),
        [
            "rotation.started",
            "key.created",
            "key.published",
            "key.deleted",
            "rotation.completed"
        ]
    );
    // Exactly one current key, and the sealed copy is gone.
    assert!(h.engine.store.sealed_secret(&r.id).unwrap().is_none());
    h.check().await;
    let snap = h.engine.status.load();
    assert_eq!(snap.policies[0].health, Health::Ok);
    assert_eq!(snap.policies[0].keys.len(), 1);
}

#[tokio::test]
async fn old_key_survives_when_a_sink_fails_and_the_next_check_finishes_the_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not-yet");
    let h = harness("", Some(&missing));
    h.fake.add("app-a", Duration::days(25), Duration::days(2));
    h.check().await;
    h.drive(h.clock.now() + Duration::minutes(5)).await;
    let r = h.engine.store.history(None, 1).unwrap()[0].clone();
    assert_eq!(r.state, RotationState::Failed, "{r:#?}");
    assert!(
        r.error.as_deref().unwrap().contains("does not exist"),
        "{:?}",
        r.error
    );
    assert_eq!(h.fake.names().len(), 2, "old and new key both kept");
    assert!(
        h.engine.store.sealed_secret(&r.id).unwrap().is_some(),
        "created key must not be lost"
    );
    assert!(h.events().contains(&"rotation.failed".to_string()));
    let snap = h.engine.status.load();
    assert_eq!(snap.policies[0].health, Health::Failing);
    // Fix the sink; the next check resumes the same rotation (no new key).
    std::fs::create_dir_all(&missing).unwrap();
    h.check().await;
    h.drive(h.clock.now()).await;
    h.clock.advance(Duration::hours(2));
    h.drive(h.clock.now()).await;
    let r2 = h.engine.store.history(None, 1).unwrap()[0].clone();
    assert_eq!(r2.id, r.id);
    assert_eq!(r2.state, RotationState::Completed, "{r2:#?}");
    assert_eq!(h.fake.names(), vec![r.new_key_name.clone().unwrap()]);
}

#[tokio::test]
async fn a_create_whose_response_was_lost_is_cleaned_up_and_retried_under_a_new_name() {
    let h = harness("", None);
    h.fake.add("app-a", Duration::days(25), Duration::days(2));
    h.fake.st.lock().unwrap().lose_next_create_response = true;
    h.check().await;
    h.drive(h.clock.now() + Duration::minutes(5)).await;
    let r = h.engine.store.history(None, 1).unwrap()[0].clone();
    let attempts = h.engine.store.attempts(&r.id).unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    assert_eq!(attempts[0].state, "cleaned");
    assert_eq!(attempts[1].state, "created");
    assert_ne!(attempts[0].name, attempts[1].name);
    // The orphan (attempt 1's key) was deleted; the new key is attempt 2's.
    assert!(!h.fake.names().contains(&attempts[0].name));
    assert_eq!(r.new_key_name.as_deref(), Some(attempts[1].name.as_str()));
}

#[tokio::test]
async fn a_crash_between_create_and_its_commit_resumes_cleanly() {
    let h = harness("", None);
    h.fake.add("app-a", Duration::days(25), Duration::days(2));
    h.check().await;
    let r = h.engine.store.active_rotations().unwrap()[0].clone();
    // Simulate: attempt committed, provider created the key, process died.
    let (_, name) = h
        .engine
        .store
        .start_attempt(
            &r.id,
            |a| {
                h.rt.config.policies[0]
                    .name_template
                    .render("app-a", "p", &r.id, a, start())
            },
            start(),
        )
        .unwrap();
    h.fake.add(&name, Duration::zero(), Duration::days(30));
    h.drive(h.clock.now() + Duration::hours(2)).await;
    let r = h.engine.store.history(None, 1).unwrap()[0].clone();
    assert_eq!(r.state, RotationState::Completed);
    let names = h.fake.names();
    assert_eq!(names.len(), 1);
    assert!(
        !names.contains(&name),
        "the crashed attempt's key must be deleted"
    );
    assert!(
        h.file("app-a")
            .unwrap()
            .contains(&h.fake.secret_of(&names[0]).unwrap())
    );
}

#[tokio::test]
async fn a_permanent_403_fails_at_once_and_deletes_nothing() {
    let h = harness("", None);
    h.fake.add("app-a", Duration::days(25), Duration::days(2));
    h.fake
        .st
        .lock()
        .unwrap()
        .create_errors
        .push(ProviderErrorKind::Auth("HTTP 403: forbidden".into()));
    h.check().await;
    h.drive(h.clock.now() + Duration::hours(2)).await;
    let r = h.engine.store.history(None, 1).unwrap()[0].clone();
    assert_eq!(r.state, RotationState::Failed);
    assert_eq!(r.error_class.as_deref(), Some("permanent"));
    assert!(r.error.as_deref().unwrap().contains("403"));
    assert_eq!(h.fake.names(), vec!["app-a"]);
    assert!(h.fake.st.lock().unwrap().deleted.is_empty());
}

#[tokio::test]
async fn retryable_errors_back_off_then_succeed() {
    let h = harness("", None);
    h.fake.add("app-a", Duration::days(25), Duration::days(2));
    h.fake
        .st
        .lock()
        .unwrap()
        .create_errors
        .push(ProviderErrorKind::Api {
            status: 500,
            code: "E001R000".into(),
            message: "Unknown Error".into(),
        });
    h.check().await;
    h.drive(h.clock.now() + Duration::hours(2)).await;
    let r = h.engine.store.history(None, 1).unwrap()[0].clone();
    assert_eq!(r.state, RotationState::Completed, "{r:#?}");
}

#[tokio::test]
async fn a_sink_that_no_longer_holds_the_new_key_stops_the_delete() {
    let h = harness("", None);
    h.fake.add("app-a", Duration::days(25), Duration::days(2));
    h.check().await;
    h.drive(h.clock.now()).await;
    std::fs::write(
        h.dir.path().join("keys/app-a.env"),
        "API_KEY=someone-else\n",
    )
    .unwrap();
    h.clock.advance(Duration::hours(2));
    h.drive(h.clock.now()).await;
    let r = h.engine.store.history(None, 1).unwrap()[0].clone();
    assert_eq!(r.state, RotationState::Retiring);
    assert!(
        r.error
            .as_deref()
            .unwrap()
            .contains("no longer holds the new key"),
        "{:?}",
        r.error
    );
    assert!(h.fake.names().contains(&"app-a".to_string()));
}

#[tokio::test]
async fn observe_mode_and_fresh_keys_change_nothing() {
    let h = harness("mode = \"observe\"", None);
    h.fake.add("app-a", Duration::days(25), Duration::days(2));
    h.fake.add("app-b", Duration::days(1), Duration::days(29));
    let plan = h.check().await;
    assert_eq!(plan.lineages.len(), 2);
    assert!(h.engine.store.active_rotations().unwrap().is_empty());
    assert_eq!(h.fake.names().len(), 2);
    assert_eq!(h.events(), ["key.expiring"]);
    // At most once per threshold.
    h.check().await;
    assert_eq!(h.events(), ["key.expiring"]);
}

#[tokio::test]
async fn no_secret_lands_in_the_db_outside_the_sealed_column() {
    let h = harness("", None);
    h.fake.add("app-a", Duration::days(25), Duration::days(2));
    h.check().await;
    h.drive(h.clock.now() + Duration::hours(2)).await;
    let secrets: Vec<String> = h
        .fake
        .st
        .lock()
        .unwrap()
        .keys
        .iter()
        .map(|k| k.1.clone())
        .collect();
    assert!(!secrets.is_empty());
    drop(h.engine);
    let bytes = std::fs::read(h.dir.path().join("state.db")).unwrap();
    let mut all = bytes;
    if let Ok(wal) = std::fs::read(h.dir.path().join("state.db-wal")) {
        all.extend(wal);
    }
    let text = String::from_utf8_lossy(&all);
    for s in secrets {
        assert!(!text.contains(&s), "secret found in the DB files");
    }
}
