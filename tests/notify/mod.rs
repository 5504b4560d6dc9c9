//! Notifications: the outbox Deliverer against the in-test receiver, with a
//! manual clock for the retry schedule and real restarts on a DB file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use rekey::clock::{Clock, ManualClock, SystemClock};
use rekey::config::{NotifyConfig, SecretRef};
use rekey::notify::{Deliverer, RETRY_SCHEDULE};
use rekey::secret::{Secret, SecretFields};
use rekey::state::seal::Sealer;
use rekey::state::{CreatedRecord, Event, NewRotation, Store};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::support::logs::capture_logs_at_trace;
use crate::support::python::{standardwebhooks_python, verify_with_official_library};
use crate::support::receiver::{Reply, WebhookReceiver, random_whsec};

fn target(name: &str, url: &str, secret: &str, events: Option<&[&str]>) -> NotifyConfig {
    NotifyConfig {
        name: name.into(),
        url: url.into(),
        secrets: vec![SecretRef::Literal(Secret::new(secret))],
        events: events.map(|e| e.iter().map(|s| s.to_string()).collect()),
        ca_file: None,
        timeout: Duration::from_secs(5),
    }
}

/// The store keeps milliseconds; start manual clocks on a whole second so
/// times read back compare equal.
fn whole_second_now() -> chrono::DateTime<Utc> {
    Utc::now().trunc_subsecs(0)
}

fn open(path: &Path) -> Arc<Store> {
    Arc::new(Store::open(path).unwrap())
}

fn emit(store: &Store, clock: &dyn Clock, kind: &str, n: u32) -> Event {
    let ev = Event::new(
        kind,
        clock.now(),
        Some("maas-prod"),
        Some("1a2b3c4d"),
        json!({"policy": "maas-prod", "lineage": "billing", "n": n}),
    );
    store.emit(&ev).unwrap();
    ev
}

#[tokio::test]
async fn notifications_go_out_in_order_signed_with_the_stable_event_id() {
    let secret = random_whsec();
    let receiver = WebhookReceiver::start(&[&secret]).await;
    let clock = Arc::new(ManualClock::new(whole_second_now()));
    let store = Arc::new(Store::open_in_memory().unwrap());
    let d = Deliverer::new(
        store.clone(),
        vec![target("ops", &receiver.url, &secret, None)],
        clock.clone(),
    )
    .unwrap();
    let sent: Vec<Event> = ["rotation.started", "key.created", "key.published"]
        .iter()
        .enumerate()
        .map(|(i, k)| emit(&store, clock.as_ref(), k, i as u32))
        .collect();
    assert_eq!(d.deliver_pending().await, 3);
    let got = receiver.received();
    assert_eq!(got.len(), 3);
    for (ev, req) in sent.iter().zip(&got) {
        assert_eq!(req.verified, Ok(vec![0]));
        assert_eq!(req.header("webhook-id"), Some(ev.id.as_str()));
        assert_eq!(
            req.header("webhook-timestamp").unwrap(),
            clock.now().timestamp().to_string()
        );
        assert_eq!(
            req.json(),
            json!({"type": ev.kind, "timestamp": rekey::state::ts(ev.at), "data": ev.data})
        );
    }
    // Nothing left: a second pass sends nothing.
    assert_eq!(d.deliver_pending().await, 0);
    assert_eq!(receiver.received().len(), 3);
}

#[tokio::test]
async fn events_a_target_does_not_want_only_advance_its_cursor() {
    let secret = random_whsec();
    let receiver = WebhookReceiver::start(&[&secret]).await;
    let clock = Arc::new(ManualClock::new(whole_second_now()));
    let store = Arc::new(Store::open_in_memory().unwrap());
    let d = Deliverer::new(
        store.clone(),
        vec![target(
            "ops",
            &receiver.url,
            &secret,
            Some(&["rotation.failed"]),
        )],
        clock.clone(),
    )
    .unwrap();
    emit(&store, clock.as_ref(), "rotation.started", 1);
    let failed = emit(&store, clock.as_ref(), "rotation.failed", 2);
    emit(&store, clock.as_ref(), "key.expiring", 3);
    assert_eq!(d.deliver_pending().await, 1);
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("webhook-id"), Some(failed.id.as_str()));
    assert_eq!(
        store.delivery("ops").unwrap().cursor,
        store.last_event_seq().unwrap()
    );
}

#[tokio::test]
async fn failed_deliveries_follow_the_retry_schedule_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let secret = random_whsec();
    let receiver = WebhookReceiver::start(&[&secret]).await;
    receiver.script([Reply::Status(500), Reply::Status(502), Reply::Status(500)]);
    let clock = Arc::new(ManualClock::new(whole_second_now()));
    let cfg = vec![target("ops", &receiver.url, &secret, None)];

    let store = open(&db);
    let d = Deliverer::new(store.clone(), cfg.clone(), clock.clone()).unwrap();
    let ev = emit(&store, clock.as_ref(), "rotation.failed", 1);
    let t0 = clock.now();
    assert_eq!(d.deliver_pending().await, 0);
    let row = store.delivery("ops").unwrap();
    assert_eq!(row.attempts, 1);
    assert_eq!(row.next_attempt_at, Some(t0 + chrono::Duration::seconds(5)));
    assert!(row.last_error.unwrap().contains("500"));
    // Not due yet: nothing is sent.
    clock.advance(chrono::Duration::seconds(4));
    assert_eq!(d.deliver_pending().await, 0);
    assert_eq!(receiver.received().len(), 1);
    clock.advance(chrono::Duration::seconds(1));
    assert_eq!(d.deliver_pending().await, 0);
    let t2 = clock.now();
    assert_eq!(
        store.delivery("ops").unwrap().next_attempt_at,
        Some(t2 + chrono::Duration::minutes(5))
    );

    // Restart: the schedule resumes where it was, not from the start.
    drop(d);
    drop(store);
    let store = open(&db);
    let d = Deliverer::new(store.clone(), cfg.clone(), clock.clone()).unwrap();
    let row = store.delivery("ops").unwrap();
    assert_eq!(row.attempts, 2);
    assert_eq!(d.deliver_pending().await, 0);
    assert_eq!(receiver.received().len(), 2);
    clock.advance(chrono::Duration::minutes(5));
    assert_eq!(d.deliver_pending().await, 0);
    let t3 = clock.now();
    assert_eq!(
        store.delivery("ops").unwrap().next_attempt_at,
        Some(t3 + chrono::Duration::minutes(30))
    );
    clock.advance(chrono::Duration::minutes(30));
    let later = emit(&store, clock.as_ref(), "key.expiring", 2);
    assert_eq!(d.deliver_pending().await, 2);

    let got = receiver.received();
    assert_eq!(got.len(), 5);
    assert!(
        got[..4]
            .iter()
            .all(|r| r.header("webhook-id") == Some(ev.id.as_str()))
    );
    assert_eq!(got[4].header("webhook-id"), Some(later.id.as_str()));
    assert!(got.iter().all(|r| r.verified.is_ok()));
    let row = store.delivery("ops").unwrap();
    assert_eq!((row.attempts, row.next_attempt_at), (0, None));
}

#[tokio::test]
async fn an_event_is_dead_lettered_after_the_last_retry_of_the_schedule() {
    let secret = random_whsec();
    let receiver = WebhookReceiver::start(&[&secret]).await;
    receiver.script(std::iter::repeat_n(
        Reply::Status(500),
        RETRY_SCHEDULE.len(),
    ));
    let clock = Arc::new(ManualClock::new(whole_second_now()));
    let store = Arc::new(Store::open_in_memory().unwrap());
    let d = Deliverer::new(
        store.clone(),
        vec![target("ops", &receiver.url, &secret, None)],
        clock.clone(),
    )
    .unwrap();
    let doomed = emit(&store, clock.as_ref(), "rotation.failed", 1);
    let next = emit(&store, clock.as_ref(), "rotation.completed", 2);
    // Every scheduled delay, in order: 5 s, 5 min, 30 min, 2 h, … 24 h.
    for (i, delay) in RETRY_SCHEDULE.iter().enumerate().skip(1) {
        let now = clock.now();
        assert_eq!(d.deliver_pending().await, 0);
        let row = store.delivery("ops").unwrap();
        assert_eq!(row.attempts as usize, i);
        assert_eq!(
            row.next_attempt_at,
            Some(now + chrono::Duration::from_std(*delay).unwrap())
        );
        clock.advance(chrono::Duration::from_std(*delay).unwrap());
    }
    // The tenth attempt fails too: dead letter, and the next event goes out.
    assert_eq!(d.deliver_pending().await, 1);
    let dead = store.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id, doomed.id);
    assert!(dead[0].error.contains("500"));
    let got = receiver.received();
    assert_eq!(got.len(), RETRY_SCHEDULE.len() + 1);
    assert_eq!(
        got.last().unwrap().header("webhook-id"),
        Some(next.id.as_str())
    );
}

#[tokio::test]
async fn a_410_dead_letters_the_event_at_once_and_moves_on() {
    let secret = random_whsec();
    let receiver = WebhookReceiver::start(&[&secret]).await;
    receiver.script([Reply::Status(410)]);
    let clock = Arc::new(ManualClock::new(whole_second_now()));
    let store = Arc::new(Store::open_in_memory().unwrap());
    let d = Deliverer::new(
        store.clone(),
        vec![target("ops", &receiver.url, &secret, None)],
        clock.clone(),
    )
    .unwrap();
    let gone = emit(&store, clock.as_ref(), "rotation.started", 1);
    emit(&store, clock.as_ref(), "rotation.completed", 2);
    assert_eq!(d.deliver_pending().await, 1);
    let dead = store.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id, gone.id);
    assert_eq!(dead[0].target, "ops");
    assert!(dead[0].error.contains("410"), "{}", dead[0].error);
    assert_eq!(receiver.received().len(), 2);
}

#[tokio::test]
async fn retry_after_postpones_the_next_attempt_beyond_the_schedule() {
    let secret = random_whsec();
    let receiver = WebhookReceiver::start(&[&secret]).await;
    receiver.script([Reply::RetryAfter(429, 120)]);
    let clock = Arc::new(ManualClock::new(whole_second_now()));
    let store = Arc::new(Store::open_in_memory().unwrap());
    let d = Deliverer::new(
        store.clone(),
        vec![target("ops", &receiver.url, &secret, None)],
        clock.clone(),
    )
    .unwrap();
    emit(&store, clock.as_ref(), "rotation.started", 1);
    let now = clock.now();
    assert_eq!(d.deliver_pending().await, 0);
    assert_eq!(
        store.delivery("ops").unwrap().next_attempt_at,
        Some(now + chrono::Duration::seconds(120))
    );
    clock.advance(chrono::Duration::seconds(119));
    assert_eq!(d.deliver_pending().await, 0);
    clock.advance(chrono::Duration::seconds(1));
    assert_eq!(d.deliver_pending().await, 1);
}

#[tokio::test]
async fn an_event_committed_before_a_crash_is_delivered_after_restart_with_the_same_webhook_id() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let secret = random_whsec();
    let receiver = WebhookReceiver::start(&[&secret]).await;
    let clock = Arc::new(ManualClock::new(whole_second_now()));
    let cfg = vec![target("ops", &receiver.url, &secret, None)];

    // The daemon registers its target, commits a state change with its
    // event, and dies before delivering anything.
    let store = open(&db);
    let d = Deliverer::new(store.clone(), cfg.clone(), clock.clone()).unwrap();
    let first = emit(&store, clock.as_ref(), "rotation.started", 1);
    drop(d);
    drop(store);

    // Restarted, it delivers the event with the id it was committed with.
    let store = open(&db);
    let d = Deliverer::new(store.clone(), cfg.clone(), clock.clone()).unwrap();
    assert_eq!(d.deliver_pending().await, 1);
    assert_eq!(
        receiver.received()[0].header("webhook-id"),
        Some(first.id.as_str())
    );

    // The receiver takes the next event but the answer never arrives (the
    // daemon is "killed" mid-request): after restart it goes out again,
    // under the same id, so the receiver can deduplicate.
    let second = emit(&store, clock.as_ref(), "key.created", 2);
    receiver.script([Reply::Delay(Duration::from_secs(30))]);
    let pass = tokio::time::timeout(Duration::from_millis(300), d.deliver_pending()).await;
    assert!(
        pass.is_err(),
        "the pass should still be waiting for the answer"
    );
    drop(d);
    drop(store);
    let store = open(&db);
    let d = Deliverer::new(store.clone(), cfg, clock.clone()).unwrap();
    assert_eq!(d.deliver_pending().await, 1);
    let got = receiver.received();
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].header("webhook-id"), Some(second.id.as_str()));
    assert_eq!(got[2].header("webhook-id"), Some(second.id.as_str()));
    assert_eq!(got[1].body, got[2].body);
}

#[tokio::test]
async fn run_delivers_when_woken_retries_on_its_own_and_stops_on_shutdown() {
    let secret = random_whsec();
    let receiver = WebhookReceiver::start(&[&secret]).await;
    let slow = WebhookReceiver::start(&[&secret]).await;
    receiver.script([Reply::Status(503)]);
    let store = Arc::new(Store::open_in_memory().unwrap());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let d = Deliverer::new(
        store.clone(),
        vec![
            target("ops", &receiver.url, &secret, None),
            target("slow", &slow.url, &secret, None),
        ],
        clock.clone(),
    )
    .unwrap()
    // Short test delays instead of 5 s, 5 min, …
    .with_retry_schedule(vec![
        Duration::ZERO,
        Duration::from_millis(50),
        Duration::from_millis(50),
    ]);
    let wake = Arc::new(Notify::new());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(d.run(wake.clone(), shutdown.clone()));

    // A slow receiver holds its own target only.
    slow.script([Reply::Delay(Duration::from_secs(60))]);
    let ev = emit(&store, clock.as_ref(), "rotation.started", 1);
    wake.notify_one();
    // First attempt 503, then the retry 50 ms later on the target's own
    // timer, without another wake.
    let got = receiver.wait_for(2).await;
    assert_eq!(got[0].answered, 503);
    assert_eq!(got[1].answered, 200);
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id") == Some(ev.id.as_str()))
    );
    slow.wait_for(1).await;

    // A later event needs only a wake.
    let ev2 = emit(&store, clock.as_ref(), "rotation.completed", 2);
    wake.notify_one();
    let got = receiver.wait_for(3).await;
    assert_eq!(got[2].header("webhook-id"), Some(ev2.id.as_str()));

    // Shutdown ends run promptly even with a request in flight.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("run did not stop on shutdown")
        .unwrap();
}

#[tokio::test]
async fn notifications_never_carry_a_secret() {
    let secret = random_whsec();
    let receiver = WebhookReceiver::start(&[&secret]).await;
    let clock = Arc::new(ManualClock::new(whole_second_now()));
    let store = Arc::new(Store::open_in_memory().unwrap());
    let (logs, _guard) = capture_logs_at_trace();
    let d = Deliverer::new(
        store.clone(),
        vec![target("ops", &receiver.url, &secret, None)],
        clock.clone(),
    )
    .unwrap();

    // A whole rotation through the store, with a real secret sealed in it.
    let key_value = format!("sk_live_{}", uuid::Uuid::new_v4().simple());
    let fields = SecretFields::single("api_key", Secret::new(key_value.clone()));
    let now = clock.now();
    let id = store
        .begin_rotation(&NewRotation {
            policy: "maas-prod".into(),
            lineage: "billing".into(),
            provider: "ob".into(),
            reason: "expiring".into(),
            message: "expires in 3d".into(),
            trigger: "schedule".into(),
            revoke_old_immediately: false,
            old_key_id: Some("old-1".into()),
            old_key_name: Some("billing".into()),
            sinks: vec!["vault".into()],
            grace: Duration::from_secs(3600),
            at: now,
        })
        .unwrap()
        .unwrap();
    let (attempt, name) = store
        .start_attempt(&id, |a| format!("billing-20261122-r{id}-{a}"), now)
        .unwrap();
    let sealed = Sealer::random().seal(&id, &fields);
    store
        .record_created(
            &id,
            attempt,
            &CreatedRecord {
                key_id: Some("new-1".into()),
                name,
                created_at: Some(now),
                expires_at: Some(now + chrono::Duration::days(30)),
            },
            &sealed,
            &fields.fingerprint(),
            now,
        )
        .unwrap();
    store
        .record_sink_ack(
            &id,
            "vault",
            Some("secret/maas/billing v1"),
            "sha256:test",
            now,
        )
        .unwrap();
    store
        .record_published(&id, now, Some(now + chrono::Duration::hours(1)))
        .unwrap();
    store.record_old_key_deleted(&id, now).unwrap();

    assert!(d.deliver_pending().await >= 5);
    let got = receiver.received();
    let kinds: Vec<String> = got
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_string())
        .collect();
    for k in [
        "rotation.started",
        "key.created",
        "key.published",
        "rotation.completed",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} in {kinds:?}");
    }
    let whsec_key = &secret[6..];
    for r in &got {
        let all = format!("{:?} {}", r.headers, r.body_text());
        assert!(!all.contains(&key_value), "secret in a notification: {all}");
        assert!(!all.contains(whsec_key), "signing secret in a notification");
    }
    assert!(logs.text().contains("notification delivered"));
    logs.assert_free_of(&[&key_value, whsec_key]);
}

#[tokio::test]
async fn notification_signatures_verify_with_the_official_python_library() {
    let Some(python) = standardwebhooks_python() else {
        return;
    };
    let secret = random_whsec();
    let receiver = WebhookReceiver::start(&[&secret]).await;
    let store = Arc::new(Store::open_in_memory().unwrap());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let d = Deliverer::new(
        store.clone(),
        vec![target("ops", &receiver.url, &secret, None)],
        clock.clone(),
    )
    .unwrap();
    emit(&store, clock.as_ref(), "rotation.completed", 1);
    assert_eq!(d.deliver_pending().await, 1);
    let req = &receiver.received()[0];
    verify_with_official_library(&python, &secret, &req.headers, &req.body)
        .unwrap_or_else(|e| panic!("official library rejected our notification: {e}"));
    assert!(
        verify_with_official_library(&python, &random_whsec(), &req.headers, &req.body).is_err()
    );
}
