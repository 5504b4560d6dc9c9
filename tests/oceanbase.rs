//! OceanBase Cloud MaaS: the client against the emulator (paging, create →
//! id, delete, Digest challenges, error classes, secrets kept out of logs),
//! and the emulator's conformance to the seed API documents, checked field
//! by field over raw HTTP.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{Value, json};

use rekey::emulator::oceanbase::{
    DigestAlgorithm, EmulatorHandle, ErrorStyle, Faults, ForcedFault, ListOrder,
    OceanBaseEmulatorOptions, Operation,
};
use rekey::metrics::Metrics;
use rekey::provider::http::ProviderHttp;
use rekey::provider::oceanbase::{OceanBaseProvider, SECRET_FIELD};
use rekey::provider::{CreateRequest, DeleteOutcome, Provider, ProviderError, ProviderErrorKind};
use rekey::secret::Secret;

use crate::support::{
    RawClient, capture_logs, oceanbase_config, oceanbase_provider, start_oceanbase,
};

const PATH: &str = "/api/v2/maas/apikeys";

fn opts(keys: usize) -> OceanBaseEmulatorOptions {
    OceanBaseEmulatorOptions {
        keys,
        seed: Some(42),
        ..Default::default()
    }
}

async fn emulator_and_client(keys: usize) -> (EmulatorHandle, OceanBaseProvider) {
    let emu = start_oceanbase(opts(keys)).await;
    let provider = oceanbase_provider(&oceanbase_config(&emu));
    (emu, provider)
}

fn params(action: &str) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("action".into(), Value::String(action.into()));
    m
}

fn force(op: Operation, status: u16, count: u32, style: ErrorStyle) -> Faults {
    Faults {
        force: vec![ForcedFault {
            operation: op,
            status,
            count,
            style,
            code: None,
            message: None,
            retry_after: None,
        }],
        ..Default::default()
    }
}

fn all(_: &str) -> bool {
    true
}

fn rfc3339(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a string: {v}")))
        .unwrap_or_else(|e| panic!("{v} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

fn keys_of(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

// ============================================================ the client

#[tokio::test]
async fn lists_every_key_across_many_pages() {
    let (emu, provider) = emulator_and_client(2345).await;
    let listed = provider.list(&all).await.expect("list");
    assert_eq!(listed.len(), 2345);
    let ids: HashSet<&str> = listed.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(ids.len(), 2345, "ids are unique");
    let truth = emu.keys();
    for (got, want) in listed.iter().zip(&truth) {
        assert_eq!(got.id, want.id);
        assert_eq!(got.name, want.name);
        assert_eq!(got.created_at, Some(want.created_at));
        assert_eq!(got.expires_at, want.expires_at);
    }
    let s = emu.stats();
    // Pages of 100: 24 pages, one Digest challenge for the whole walk.
    assert_eq!(s.list.ok, 24, "{s:?}");
    assert_eq!(s.list.challenged, 1, "{s:?}");
    assert_eq!(s.list.requests, 25, "{s:?}");
}

#[tokio::test]
async fn list_keeps_only_the_names_the_filter_accepts() {
    let (emu, provider) = emulator_and_client(2345).await;
    let t = Utc::now();
    let a = emu.insert_key("billing-a", t, None);
    let b = emu.insert_key("billing-b", t, Some(t + chrono::Duration::days(3)));
    let listed = provider
        .list(&|n: &str| n.starts_with("billing-"))
        .await
        .expect("list");
    let got: Vec<(&str, &str)> = listed
        .iter()
        .map(|k| (k.id.as_str(), k.name.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![(a.id.as_str(), "billing-a"), (b.id.as_str(), "billing-b")]
    );
    assert_eq!(listed[0].expires_at, None);
    assert_eq!(listed[1].expires_at, b.expires_at);
}

#[tokio::test]
async fn a_key_created_mid_walk_does_not_list_a_key_twice() {
    // Newest first: a key created while page 1 is being read pushes the
    // last key of page 1 onto page 2, so page 2 repeats it.
    let emu = start_oceanbase(OceanBaseEmulatorOptions {
        list_order: ListOrder::Newest,
        ..opts(150)
    })
    .await;
    let provider = oceanbase_provider(&oceanbase_config(&emu));
    let page1_last = emu.keys()[50].name.clone();
    let inserted = std::sync::atomic::AtomicBool::new(false);
    let keep = |name: &str| {
        if name == page1_last && !inserted.swap(true, std::sync::atomic::Ordering::SeqCst) {
            emu.insert_key("app-mid-walk", Utc::now(), None);
        }
        true
    };
    let listed = provider.list(&keep).await.expect("list");
    assert!(inserted.load(std::sync::atomic::Ordering::SeqCst));
    let ids: HashSet<&str> = listed.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(ids.len(), listed.len(), "no id twice");
    assert_eq!(listed.len(), 150, "every key from before the walk, once");
    assert_eq!(emu.stats().list.ok, 2);
}

/// The daemon's walk (`Listing::walk`, rows filled page by page through
/// `list_into`) holds what `list` returns: every field, walk order, a key
/// repeated by offset paging once.
#[tokio::test]
async fn a_walk_into_compact_rows_holds_what_list_returns_and_drops_a_repeat() {
    let emu = start_oceanbase(OceanBaseEmulatorOptions {
        list_order: ListOrder::Newest,
        ..opts(150)
    })
    .await;
    let provider = oceanbase_provider(&oceanbase_config(&emu));
    let clock = rekey::clock::SystemClock;
    let truth = emu.keys();
    let page1_last = truth[50].name.clone();
    let inserted = std::sync::atomic::AtomicBool::new(false);
    let keep = |name: &str| {
        if name == page1_last && !inserted.swap(true, std::sync::atomic::Ordering::SeqCst) {
            emu.insert_key("app-mid-walk", Utc::now(), None);
        }
        true
    };
    let walk = rekey::provider::listing::Listing::walk(&provider, &clock, &keep)
        .await
        .expect("walk");
    assert!(inserted.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(emu.stats().list.ok, 2, "page 2 repeated page 1's last key");
    let ids: HashSet<&str> = walk.keys().map(|k| k.id()).collect();
    assert_eq!(ids.len(), 150, "every key from before the walk, once");
    assert_eq!(walk.len(), 150);
    for k in walk.keys() {
        let want = truth
            .iter()
            .find(|t| t.id == k.id())
            .expect("a key from before");
        assert_eq!(k.name(), want.name);
        assert_eq!(k.created_at(), Some(want.created_at));
        assert_eq!(k.expires_at(), want.expires_at);
        assert!(k.meta().is_empty());
    }
    // Without a repeat, the walk and `list` agree key for key, in order.
    let listed = provider.list(&all).await.expect("list");
    let walk = rekey::provider::listing::Listing::walk(&provider, &clock, &all)
        .await
        .expect("walk");
    assert_eq!(listed.len(), 151);
    assert_eq!(walk.to_keys(), listed);
}

#[tokio::test]
async fn newest_first_order_puts_new_keys_on_page_one() {
    let emu = start_oceanbase(OceanBaseEmulatorOptions {
        list_order: ListOrder::Newest,
        ..opts(250)
    })
    .await;
    let mut c = RawClient::new(&emu);
    let r = c
        .call(
            Method::GET,
            &format!("{PATH}?pageNumber=1&pageSize=100"),
            &[],
            None,
        )
        .await;
    assert_eq!(r.json()["data"]["list"][0]["name"], "app-00250");
    let r = c
        .call(
            Method::GET,
            &format!("{PATH}?pageNumber=3&pageSize=100"),
            &[],
            None,
        )
        .await;
    let last = r.json()["data"]["list"].as_array().unwrap().clone();
    assert_eq!(last.len(), 50);
    assert_eq!(last[49]["name"], "app-00001");
}

#[tokio::test]
async fn keys_that_never_expire_list_without_an_expiry() {
    let emu = start_oceanbase(OceanBaseEmulatorOptions {
        keys: 3,
        lifetime: None,
        ..Default::default()
    })
    .await;
    let listed = oceanbase_provider(&oceanbase_config(&emu))
        .list(&all)
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
    assert!(
        listed
            .iter()
            .all(|k| k.expires_at.is_none() && k.created_at.is_some())
    );
}

#[tokio::test]
async fn lists_100000_keys() {
    let (emu, provider) = emulator_and_client(100_000).await;
    let listed = provider
        .list(&|n: &str| n.ends_with("777"))
        .await
        .expect("list");
    // app-00777, app-01777, …, app-99777
    assert_eq!(listed.len(), 100);
    assert_eq!(emu.stats().list.ok, 1000);
}

#[tokio::test]
async fn create_returns_the_secret_and_never_lists_for_the_id() {
    let (emu, provider) = emulator_and_client(250).await;
    let new = provider
        .create(&CreateRequest {
            name: "app-main-20261122-r1a1",
            params: &params("read"),
        })
        .await
        .expect("create");
    let truth = emu
        .keys()
        .into_iter()
        .find(|k| k.name == "app-main-20261122-r1a1")
        .expect("the key exists");
    // The answer carries no id; the engine finds it in a shared walk.
    assert_eq!(new.id, None);
    assert_eq!(new.name, truth.name);
    assert_eq!(new.created_at, Some(truth.created_at));
    assert_eq!(new.expires_at, None, "only the list tells the expiry");
    assert_eq!(
        truth.expires_at.unwrap() - truth.created_at,
        chrono::Duration::days(30)
    );
    assert_eq!(truth.action, "read");
    assert_eq!(new.secret.len(), 1);
    assert_eq!(new.secret.get(SECRET_FIELD), Some(&truth.api_key));
    assert_eq!(emu.stats().create.ok, 1);
    assert_eq!(emu.stats().list.requests, 0, "create made no list call");
}

#[tokio::test]
async fn create_without_an_action_is_invalid_and_sends_nothing() {
    let (emu, provider) = emulator_and_client(0).await;
    for p in [serde_json::Map::new(), {
        let mut m = serde_json::Map::new();
        m.insert("action".into(), json!(["read"]));
        m
    }] {
        let e = provider
            .create(&CreateRequest {
                name: "x",
                params: &p,
            })
            .await
            .unwrap_err();
        assert!(matches!(e.kind, ProviderErrorKind::Invalid(_)), "{e:?}");
        assert!(!e.is_retryable());
    }
    assert_eq!(emu.stats().requests(), 0);
}

#[tokio::test]
async fn create_leaves_the_id_to_the_engine_when_the_key_stays_unlisted() {
    let emu = start_oceanbase(OceanBaseEmulatorOptions {
        list_delay: Duration::from_secs(3600),
        ..opts(3)
    })
    .await;
    let provider = oceanbase_provider(&oceanbase_config(&emu));
    let new = provider
        .create(&CreateRequest {
            name: "app-unlisted",
            params: &params("read"),
        })
        .await
        .unwrap();
    assert_eq!(new.id, None);
    assert!(new.created_at.is_some(), "from the create answer");
    assert_eq!(new.expires_at, None, "only the list tells the expiry");
    let truth = emu
        .keys()
        .into_iter()
        .find(|k| k.name == "app-unlisted")
        .unwrap();
    assert_eq!(new.secret.get(SECRET_FIELD), Some(&truth.api_key));
    assert_eq!(emu.stats().list.requests, 0, "create made no list call");
    // Keys inserted later wait behind it, so pages stay consistent.
    emu.insert_key("app-after", Utc::now(), None);
    assert_eq!(provider.list(&all).await.unwrap().len(), 3);
}

#[tokio::test]
async fn concurrent_calls_share_the_digest_nonce() {
    let (emu, provider) = emulator_and_client(40).await;
    provider.list(&all).await.unwrap();
    let calls = (0..16).map(|_| provider.list(&all));
    for r in futures_util::future::join_all(calls).await {
        assert_eq!(r.unwrap().len(), 40);
    }
    let s = emu.stats();
    assert_eq!(s.list.ok, 17, "{s:?}");
    assert_eq!(s.challenged(), 1, "nc counted up on one nonce: {s:?}");
}

#[tokio::test]
async fn create_refused_by_the_server_is_a_typed_error() {
    let (emu, provider) = emulator_and_client(0).await;
    emu.set_faults(force(Operation::Create, 400, 1, ErrorStyle::Maas))
        .unwrap();
    let e = provider
        .create(&CreateRequest {
            name: "app-x",
            params: &params("read"),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind, ProviderErrorKind::Api { status: 400, ref code, ref message } if code == "INJECTED_FAULT" && message == "injected fault"),
        "{e:?}"
    );
    assert!(!e.is_retryable());
    assert_eq!(emu.key_count(), 0);
}

#[tokio::test]
async fn delete_removes_the_key() {
    let (emu, provider) = emulator_and_client(3).await;
    let victim = emu.keys()[1].clone();
    let outcome = provider.delete(&victim.id).await.expect("delete");
    assert_eq!(outcome, DeleteOutcome::Deleted);
    let left: Vec<String> = emu.keys().into_iter().map(|k| k.id).collect();
    assert_eq!(left.len(), 2);
    assert!(!left.contains(&victim.id));
}

#[tokio::test]
async fn deleting_a_missing_key_is_not_found() {
    let (emu, provider) = emulator_and_client(3).await;
    assert_eq!(
        provider.delete("ak-0000000000000000").await.unwrap(),
        DeleteOutcome::NotFound
    );
    let id = emu.keys()[0].id.clone();
    assert_eq!(provider.delete(&id).await.unwrap(), DeleteOutcome::Deleted);
    assert_eq!(provider.delete(&id).await.unwrap(), DeleteOutcome::NotFound);
    assert_eq!(emu.key_count(), 2);
}

#[tokio::test]
async fn an_envelope_saying_not_found_counts_as_gone() {
    let (emu, provider) = emulator_and_client(1).await;
    emu.set_faults(Faults {
        force: vec![ForcedFault {
            operation: Operation::Delete,
            status: 400,
            count: 1,
            style: ErrorStyle::Maas,
            code: Some("APIKEY_NOT_EXIST".into()),
            message: Some("The API key does not exist".into()),
            retry_after: None,
        }],
        ..Default::default()
    })
    .unwrap();
    let id = emu.keys()[0].id.clone();
    assert_eq!(provider.delete(&id).await.unwrap(), DeleteOutcome::NotFound);
    // A 400 that does not say "not found" is an error, not "gone".
    emu.set_faults(force(Operation::Delete, 400, 1, ErrorStyle::Maas))
        .unwrap();
    let e = provider.delete(&id).await.unwrap_err();
    assert!(
        matches!(e.kind, ProviderErrorKind::Api { status: 400, .. }),
        "{e:?}"
    );
}

#[tokio::test]
async fn the_first_call_is_challenged_and_later_calls_reuse_the_nonce() {
    let (emu, provider) = emulator_and_client(5).await;
    for _ in 0..3 {
        assert_eq!(provider.list(&all).await.unwrap().len(), 5);
    }
    let id = emu.keys()[0].id.clone();
    provider.delete(&id).await.unwrap();
    let s = emu.stats();
    assert_eq!(s.challenged(), 1, "{s:?}");
    assert_eq!(s.list.requests, 4, "{s:?}");
    assert_eq!(s.delete.requests, 1, "{s:?}");
}

#[tokio::test]
async fn a_stale_nonce_is_rechallenged_and_the_call_succeeds() {
    let (emu, provider) = emulator_and_client(5).await;
    provider.list(&all).await.unwrap();
    emu.expire_nonces();
    assert_eq!(provider.list(&all).await.unwrap().len(), 5);
    provider.list(&all).await.unwrap();
    let s = emu.stats();
    assert_eq!(s.stale(), 1, "{s:?}");
    assert_eq!(s.challenged(), 2, "{s:?}");
    // bare + answer, stale + answer, then one pre-emptive call
    assert_eq!(s.list.requests, 5, "{s:?}");
    assert_eq!(s.list.ok, 3, "{s:?}");
}

#[tokio::test]
async fn a_nonce_expiring_by_age_is_answered_stale_and_recovered() {
    let emu = start_oceanbase(OceanBaseEmulatorOptions {
        keys: 2,
        nonce_ttl: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    let provider = oceanbase_provider(&oceanbase_config(&emu));
    provider.list(&all).await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(provider.list(&all).await.unwrap().len(), 2);
    assert_eq!(emu.stats().stale(), 1);
}

#[tokio::test]
async fn a_401_on_a_reused_nonce_is_rechallenged_once() {
    let (emu, provider) = emulator_and_client(2).await;
    provider.list(&all).await.unwrap();
    emu.set_faults(force(Operation::List, 401, 1, ErrorStyle::OpenApi))
        .unwrap();
    assert_eq!(provider.list(&all).await.unwrap().len(), 2);
    assert_eq!(emu.stats().challenged(), 2);
}

async fn digest_round_trip(
    algorithms: Vec<DigestAlgorithm>,
) -> rekey::emulator::oceanbase::EmulatorStats {
    let emu = start_oceanbase(OceanBaseEmulatorOptions {
        keys: 4,
        algorithms,
        ..Default::default()
    })
    .await;
    let provider = oceanbase_provider(&oceanbase_config(&emu));
    assert_eq!(provider.list(&all).await.unwrap().len(), 4);
    let new = provider
        .create(&CreateRequest {
            name: "app-digest",
            params: &params("read"),
        })
        .await
        .unwrap();
    assert_eq!(new.id, None);
    let id = provider
        .list(&|n: &str| n == "app-digest")
        .await
        .unwrap()
        .pop()
        .expect("listed")
        .id;
    assert_eq!(provider.delete(&id).await.unwrap(), DeleteOutcome::Deleted);
    emu.stats()
}

#[tokio::test]
async fn a_digest_challenge_without_qop_authenticates_the_rfc_2069_way() {
    for algorithms in [vec![DigestAlgorithm::Md5], vec![DigestAlgorithm::Sha256]] {
        let emu = start_oceanbase(OceanBaseEmulatorOptions {
            keys: 3,
            algorithms,
            digest_qop: false,
            ..Default::default()
        })
        .await;
        let provider = oceanbase_provider(&oceanbase_config(&emu));
        assert_eq!(provider.list(&all).await.unwrap().len(), 3);
        let new = provider
            .create(&CreateRequest {
                name: "app-2069",
                params: &params("read"),
            })
            .await
            .unwrap();
        // Create answers without an id (the engine finds it in a walk).
        assert_eq!(new.id, None);
        let id = provider
            .list(&|n: &str| n == "app-2069")
            .await
            .unwrap()
            .pop()
            .expect("listed")
            .id;
        assert_eq!(provider.delete(&id).await.unwrap(), DeleteOutcome::Deleted);
        let s = emu.stats();
        // One challenge; its nonce answers every later call (no nc).
        assert_eq!(
            s.list.challenged + s.create.challenged + s.delete.challenged,
            1,
            "{s:?}"
        );
        assert_eq!((s.create.ok, s.delete.ok), (1, 1), "{s:?}");
    }
}

#[tokio::test]
async fn digest_works_with_md5_alone() {
    let s = digest_round_trip(vec![DigestAlgorithm::Md5]).await;
    assert!(
        s.authenticated_md5 >= 4 && s.authenticated_sha256 == 0,
        "{s:?}"
    );
}

#[tokio::test]
async fn digest_works_with_sha256_alone() {
    let s = digest_round_trip(vec![DigestAlgorithm::Sha256]).await;
    assert!(
        s.authenticated_sha256 >= 4 && s.authenticated_md5 == 0,
        "{s:?}"
    );
}

#[tokio::test]
async fn sha256_is_chosen_when_md5_is_offered_first() {
    let s = digest_round_trip(vec![DigestAlgorithm::Md5, DigestAlgorithm::Sha256]).await;
    assert!(
        s.authenticated_sha256 >= 4 && s.authenticated_md5 == 0,
        "{s:?}"
    );
}

#[tokio::test]
async fn a_wrong_secret_is_an_auth_error_after_one_rechallenge() {
    let emu = start_oceanbase(opts(2)).await;
    let mut cfg = oceanbase_config(&emu);
    if let rekey::config::ProviderKind::OceanBase(rekey::provider::oceanbase::OceanBaseConfig {
        access_key_secret,
        ..
    }) = &mut cfg.kind
    {
        *access_key_secret =
            rekey::config::SecretRef::Literal(Secret::new("wrong-secret-value-123"));
    }
    let provider = oceanbase_provider(&cfg);
    let e = provider.list(&all).await.unwrap_err();
    assert!(matches!(e.kind, ProviderErrorKind::Auth(_)), "{e:?}");
    assert!(!e.is_retryable());
    assert!(e.request_id.is_some());
    let s = emu.stats();
    assert_eq!((s.list.requests, s.list.challenged), (2, 2), "{s:?}");
    for text in [e.to_string(), format!("{e:?}")] {
        assert!(!text.contains("wrong-secret-value-123"), "{text}");
    }
}

#[tokio::test]
async fn error_envelopes_become_the_right_error_class() {
    let (emu, provider) = emulator_and_client(2).await;
    // (operation, status, style) → (retryable, check)
    type Check = fn(&ProviderError) -> bool;
    let cases: Vec<(Operation, u16, ErrorStyle, bool, Check)> = vec![
        (
            Operation::List,
            403,
            ErrorStyle::OpenApi,
            false,
            |e| matches!(e.kind, ProviderErrorKind::Auth(ref m) if m.contains("403")),
        ),
        (Operation::Delete, 403, ErrorStyle::Maas, false, |e| {
            matches!(e.kind, ProviderErrorKind::Auth(_))
        }),
        (
            Operation::List,
            500,
            ErrorStyle::OpenApi,
            true,
            |e| matches!(e.kind, ProviderErrorKind::Api { status: 500, ref code, ref message } if code == "E001R000" && message == "Unknown Error"),
        ),
        (
            Operation::Create,
            502,
            ErrorStyle::Maas,
            true,
            |e| matches!(e.kind, ProviderErrorKind::Api { status: 502, ref code, .. } if code == "E001R000"),
        ),
        (Operation::Delete, 503, ErrorStyle::OpenApi, true, |e| {
            matches!(e.kind, ProviderErrorKind::Api { status: 503, .. })
        }),
        (
            Operation::List,
            400,
            ErrorStyle::Maas,
            false,
            |e| matches!(e.kind, ProviderErrorKind::Api { status: 400, ref message, .. } if message == "injected fault"),
        ),
        (Operation::List, 404, ErrorStyle::OpenApi, false, |e| {
            matches!(e.kind, ProviderErrorKind::Api { status: 404, .. })
        }),
        (
            Operation::List,
            200,
            ErrorStyle::OpenApi,
            false,
            |e| matches!(e.kind, ProviderErrorKind::Api { status: 200, ref code, .. } if code == "INJECTED_FAULT"),
        ),
        (Operation::Create, 200, ErrorStyle::Maas, false, |e| {
            matches!(e.kind, ProviderErrorKind::Api { status: 200, .. })
        }),
        (Operation::Delete, 500, ErrorStyle::Maas, true, |e| {
            matches!(e.kind, ProviderErrorKind::Api { status: 500, .. })
        }),
    ];
    let id = emu.keys()[0].id.clone();
    for (op, status, style, retryable, check) in cases {
        emu.set_faults(force(op, status, 1, style)).unwrap();
        let e = match op {
            Operation::List => provider.list(&all).await.map(|_| ()).unwrap_err(),
            Operation::Create => provider
                .create(&CreateRequest {
                    name: "app-never",
                    params: &params("read"),
                })
                .await
                .map(|_| ())
                .unwrap_err(),
            Operation::Delete => provider.delete(&id).await.map(|_| ()).unwrap_err(),
        };
        assert!(check(&e), "{op:?} {status} {style:?}: {e:?}");
        assert_eq!(e.is_retryable(), retryable, "{op:?} {status}: {e:?}");
        let rid = e.request_id.as_deref().expect("request id");
        assert_eq!(uuid::Uuid::parse_str(rid).map(|_| ()), Ok(()), "{rid}");
        assert!(e.to_string().contains(rid), "{e}");
    }
    assert_eq!(emu.key_count(), 2, "nothing was created or deleted");
}

#[tokio::test]
async fn a_forced_429_is_rate_limited_with_its_retry_after() {
    let (emu, provider) = emulator_and_client(1).await;
    emu.set_faults(Faults {
        force: vec![ForcedFault {
            operation: Operation::List,
            status: 429,
            count: 1,
            style: ErrorStyle::OpenApi,
            code: None,
            message: None,
            retry_after: Some(7),
        }],
        ..Default::default()
    })
    .unwrap();
    let e = provider.list(&all).await.unwrap_err();
    assert_eq!(
        e.kind,
        ProviderErrorKind::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        }
    );
    assert!(e.is_retryable());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn the_emulator_rate_limit_answers_429_with_retry_after() {
    let emu = start_oceanbase(OceanBaseEmulatorOptions {
        keys: 1,
        // One request per minute: the bare first request spends it, the
        // answer to the challenge is refused.
        rate_limit: Some(1.0 / 60.0),
        ..Default::default()
    })
    .await;
    let provider = oceanbase_provider(&oceanbase_config(&emu));
    let e = provider.list(&all).await.unwrap_err();
    match e.kind {
        ProviderErrorKind::RateLimited {
            retry_after: Some(d),
        } => assert!(
            d > Duration::from_secs(50) && d <= Duration::from_secs(60),
            "{d:?}"
        ),
        ref other => panic!("{other:?}"),
    }
    assert_eq!(emu.stats().list.rate_limited, 1);
}

#[tokio::test]
async fn a_slow_answer_times_out_as_retryable() {
    let emu = start_oceanbase(OceanBaseEmulatorOptions {
        keys: 1,
        latency: Duration::from_secs(5),
        ..Default::default()
    })
    .await;
    let mut cfg = oceanbase_config(&emu);
    cfg.timeout = Duration::from_millis(300);
    let provider = oceanbase_provider(&cfg);
    let e = provider.list(&all).await.unwrap_err();
    assert_eq!(
        e.kind,
        ProviderErrorKind::Timeout(Duration::from_millis(300))
    );
    assert!(e.is_retryable());
    assert!(e.request_id.is_some());
}

#[tokio::test]
async fn an_oversize_body_is_refused_as_too_large() {
    let emu = start_oceanbase(opts(300)).await;
    let cfg = oceanbase_config(&emu);
    let http = ProviderHttp::new(&cfg, Metrics::new())
        .unwrap()
        .with_max_body(4096);
    let provider = OceanBaseProvider::new(&cfg, http).unwrap();
    let e = provider.list(&all).await.unwrap_err();
    assert_eq!(e.kind, ProviderErrorKind::TooLarge(4096));
}

#[tokio::test]
async fn a_dead_endpoint_is_a_retryable_connect_error() {
    let emu = start_oceanbase(opts(0)).await;
    let cfg = oceanbase_config(&emu);
    emu.shutdown().await;
    let e = oceanbase_provider(&cfg).list(&all).await.unwrap_err();
    assert!(matches!(e.kind, ProviderErrorKind::Connect(_)), "{e:?}");
    assert!(e.is_retryable());
}

#[tokio::test]
async fn capabilities_say_no_id_on_create_and_expiry() {
    let (_emu, provider) = emulator_and_client(0).await;
    let c = provider.capabilities();
    assert!(c.can_list && c.can_delete && c.has_expiry);
    assert!(!c.returns_id_on_create && !c.disable_before_delete);
    assert_eq!(provider.kind(), "oceanbase");
    assert_eq!(provider.name(), "ob-test");
}

#[tokio::test]
async fn build_wires_the_oceanbase_backend() {
    let emu = start_oceanbase(opts(7)).await;
    let p = rekey::provider::build(&oceanbase_config(&emu), &Metrics::new()).expect("builds");
    assert_eq!(p.kind(), "oceanbase");
    assert_eq!(p.list(&all).await.unwrap().len(), 7);
}

#[tokio::test]
async fn secrets_never_reach_debug_output_errors_or_logs() {
    let (logs, _guard) = capture_logs();
    let emu = start_oceanbase(opts(150)).await;
    let ak_secret = emu.options().access_key_secret.expose().to_string();
    let provider = oceanbase_provider(&oceanbase_config(&emu));

    let new = provider
        .create(&CreateRequest {
            name: "app-secret-check",
            params: &params("read"),
        })
        .await
        .unwrap();
    let key_secret = new.secret.get(SECRET_FIELD).unwrap().expose().to_string();
    assert!(key_secret.starts_with("sk_") && key_secret.len() > 10);
    let listed = provider.list(&all).await.unwrap();
    let id = &listed
        .iter()
        .find(|k| k.name == "app-secret-check")
        .expect("listed")
        .id;
    emu.expire_nonces();
    provider.delete(id).await.unwrap();
    emu.set_faults(force(Operation::Create, 500, 1, ErrorStyle::Maas))
        .unwrap();
    let err = provider
        .create(&CreateRequest {
            name: "app-fails",
            params: &params("read"),
        })
        .await
        .unwrap_err();

    let mut cfg = oceanbase_config(&emu);
    if let rekey::config::ProviderKind::OceanBase(rekey::provider::oceanbase::OceanBaseConfig {
        access_key_secret,
        ..
    }) = &mut cfg.kind
    {
        *access_key_secret = rekey::config::SecretRef::Literal(Secret::new("another-wrong-sk"));
    }
    let auth_err = oceanbase_provider(&cfg).list(&all).await.unwrap_err();

    let texts = [
        format!("{new:?}"),
        format!("{:?}", new.secret),
        format!("{err:?}"),
        err.to_string(),
        format!("{auth_err:?}"),
        auth_err.to_string(),
        format!("{provider:?}"),
        format!("{:?}", emu.options()),
        format!("{:?}", emu.keys()),
        logs.contents(),
    ];
    for t in &texts {
        for secret in [&key_secret, &ak_secret, &"another-wrong-sk".to_string()] {
            assert!(!t.contains(secret.as_str()), "secret leaked into: {t}");
        }
    }
    let log = logs.contents();
    // The capture works (so this test can fail) and saw the Digest exchange…
    assert!(log.contains("provider call"), "{log}");
    assert!(log.contains("digest challenge received"), "{log}");
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "{log}");
    // …but never an Authorization value or a digest response.
    assert!(!log.contains("response=\""), "{log}");
    assert!(!log.contains("Digest username"), "{log}");
    assert!(!log.contains("cnonce"), "{log}");
}

// ==================================================== emulator conformance

#[tokio::test]
async fn an_unauthenticated_request_gets_one_digest_challenge_per_algorithm() {
    let emu = start_oceanbase(opts(1)).await;
    let c = RawClient::new(&emu);
    let mut headers = c.ob_headers();
    headers.push(("X-Request-Id".into(), "req-abc123".into()));
    let r = c.send_raw(Method::GET, PATH, &headers, None, None).await;
    assert_eq!(r.status, 401);
    let challenges = r.challenges();
    assert_eq!(challenges.len(), 2, "{challenges:?}");
    for (ch, alg) in challenges.iter().zip(["SHA-256", "MD5"]) {
        assert!(ch.starts_with("Digest "), "{ch}");
        let p = rekey::emulator::oceanbase::parse_auth_params(&ch[7..]).unwrap();
        assert_eq!(p["qop"], "auth", "{ch}");
        assert_eq!(p["algorithm"], alg, "{ch}");
        assert!(!p["realm"].is_empty() && !p["nonce"].is_empty() && !p["opaque"].is_empty());
        assert!(!p.contains_key("stale"));
    }
    let body = r.json();
    assert_eq!(body["success"], false);
    assert_eq!(body["requestId"], "req-abc123");
    assert!(body["errorCode"].is_string() && body["errorMessage"].is_string());
    assert_eq!(emu.stats().list.challenged, 1);
}

#[tokio::test]
async fn bad_digest_answers_are_refused() {
    let emu = start_oceanbase(opts(1)).await;
    let mut c = RawClient::new(&emu);
    c.fetch_challenge("SHA-256").await;
    let h = c.ob_headers();
    let uri = format!("{PATH}?pageNumber=1");

    // Wrong password, wrong user, a uri that is not the request's.
    let pass_wrong = c.answer_as("GET", &uri, &c.user.clone(), "not-the-secret");
    let user_wrong = c.answer_as("GET", &uri, "someone-else", &c.pass.clone());
    let uri_wrong = c.answer("GET", &format!("{PATH}?pageNumber=2"));
    let method_wrong = c.answer("DELETE", &uri);
    for auth in [pass_wrong, user_wrong, uri_wrong, method_wrong] {
        let r = c.send_raw(Method::GET, &uri, &h, Some(&auth), None).await;
        assert_eq!(r.status, 401, "{auth}");
        assert!(!r.challenges().is_empty());
    }
    // Basic is not Digest.
    let r = c
        .send_raw(Method::GET, &uri, &h, Some("Basic ZW11OmVtdQ=="), None)
        .await;
    assert_eq!(r.status, 401);

    // A good answer works once; replaying its nc is refused.
    let good = c.answer("GET", &uri);
    let r = c.send_raw(Method::GET, &uri, &h, Some(&good), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = c.send_raw(Method::GET, &uri, &h, Some(&good), None).await;
    assert_eq!(r.status, 401, "replayed nc");
    // The next nc on the same nonce is fine.
    let next = c.answer("GET", &uri);
    assert!(next.contains("nc=00000006"), "{next}");
    let r = c.send_raw(Method::GET, &uri, &h, Some(&next), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn md5_answers_are_accepted_too() {
    let emu = start_oceanbase(opts(1)).await;
    let mut c = RawClient::new(&emu);
    c.fetch_challenge("MD5").await;
    let auth = c.answer("GET", PATH);
    assert!(auth.contains("algorithm=MD5"), "{auth}");
    let r = c
        .send_raw(Method::GET, PATH, &c.ob_headers(), Some(&auth), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(emu.stats().authenticated_md5, 1);
}

#[tokio::test]
async fn an_algorithm_not_offered_is_refused() {
    let emu = start_oceanbase(OceanBaseEmulatorOptions {
        keys: 1,
        algorithms: vec![DigestAlgorithm::Sha256],
        ..Default::default()
    })
    .await;
    let mut c = RawClient::new(&emu);
    c.fetch_challenge("SHA-256").await;
    // Same nonce, but answered with MD5.
    if let Some(ch) = c.challenge.as_mut() {
        ch.algorithm = digest_auth::Algorithm::new(digest_auth::AlgorithmType::MD5, false);
    }
    let auth = c.answer("GET", PATH);
    let r = c
        .send_raw(Method::GET, PATH, &c.ob_headers(), Some(&auth), None)
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn an_expired_nonce_is_answered_with_stale_true() {
    let emu = start_oceanbase(opts(1)).await;
    let mut c = RawClient::new(&emu);
    c.fetch_challenge("SHA-256").await;
    emu.expire_nonces();
    let auth = c.answer("GET", PATH);
    let r = c
        .send_raw(Method::GET, PATH, &c.ob_headers(), Some(&auth), None)
        .await;
    assert_eq!(r.status, 401);
    assert!(
        r.challenges().iter().all(|ch| ch.contains("stale=true")),
        "{:?}",
        r.challenges()
    );
    // A wrong password on a stale nonce is not "stale": credentials first.
    let wrong = c.answer_as("GET", PATH, &c.user.clone(), "nope");
    let r = c
        .send_raw(Method::GET, PATH, &c.ob_headers(), Some(&wrong), None)
        .await;
    assert_eq!(r.status, 401);
    assert!(r.challenges().iter().all(|ch| !ch.contains("stale")));
    assert_eq!(emu.stats().stale(), 1);
}

#[tokio::test]
async fn missing_org_or_project_headers_are_a_400_envelope() {
    let emu = start_oceanbase(opts(1)).await;
    let mut c = RawClient::new(&emu);
    let org = ("X-OB-Org-Id".to_string(), c.org.clone());
    let project = ("X-OB-Project-Id".to_string(), c.project.clone());
    for (headers, missing) in [
        (vec![project.clone()], "X-OB-Org-Id"),
        (vec![org.clone()], "X-OB-Project-Id"),
        (vec![], "X-OB-Org-Id"),
    ] {
        for method in [Method::GET, Method::POST, Method::DELETE] {
            let body = json!({"name": "n", "action": "read"});
            let r = c
                .call_with_headers(
                    method.clone(),
                    &format!("{PATH}?id=ak-1"),
                    &headers,
                    (method == Method::POST).then_some(&body),
                )
                .await;
            assert_eq!(r.status, 400, "{method} {headers:?}: {}", r.text);
            let b = r.json();
            assert_eq!(
                keys_of(&b),
                set(&["success", "errorCode", "errorMessage", "requestId"])
            );
            assert_eq!(b["success"], false);
            assert_eq!(b["errorCode"], "INVALID_PARAMETER");
            assert!(b["errorMessage"].as_str().unwrap().contains(missing), "{b}");
        }
    }
    // Headers naming another org or project are refused as well.
    let r = c
        .call_with_headers(
            Method::GET,
            PATH,
            &[("X-OB-Org-Id".into(), "org-other".into()), project.clone()],
            None,
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(emu.key_count(), 1);
}

#[tokio::test]
async fn list_answers_with_the_documented_fields() {
    let emu = start_oceanbase(opts(3)).await;
    let mut c = RawClient::new(&emu);
    let r = c
        .call(
            Method::GET,
            &format!("{PATH}?pageNumber=1&pageSize=10"),
            &[("requestId", "req-abc123")],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = r.json();
    assert_eq!(
        keys_of(&b),
        set(&["action", "data", "requestId", "server", "success"])
    );
    assert_eq!(b["action"], "ListAIServiceAPIKeys");
    assert_eq!(b["success"], true);
    assert_eq!(b["requestId"], "req-abc123");
    assert_eq!(b["server"], emu.addr().to_string());
    assert_eq!(keys_of(&b["data"]), set(&["list", "total"]));
    assert_eq!(b["data"]["total"], 3);
    let list = b["data"]["list"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    let truth = emu.keys();
    for (item, key) in list.iter().zip(&truth) {
        assert_eq!(
            keys_of(item),
            set(&["id", "name", "createdAt", "updatedAt", "expiresAt"])
        );
        assert_eq!(item["id"], key.id.as_str());
        assert_eq!(item["name"], key.name.as_str());
        assert_eq!(rfc3339(&item["createdAt"]), key.created_at);
        assert_eq!(rfc3339(&item["updatedAt"]), key.updated_at);
        assert_eq!(Some(rfc3339(&item["expiresAt"])), key.expires_at);
        assert!(item["createdAt"].as_str().unwrap().ends_with('Z'));
        assert!(
            !r.text.contains(key.api_key.expose()),
            "list shows no secret"
        );
    }
    // Action is echoed, from the query or from a header of the same name.
    let r = c
        .call(
            Method::GET,
            &format!("{PATH}?Action=ListAIServiceAPIKeys2"),
            &[],
            None,
        )
        .await;
    assert_eq!(r.json()["action"], "ListAIServiceAPIKeys2");
    let r = c
        .call(Method::GET, PATH, &[("Action", "FromHeader")], None)
        .await;
    assert_eq!(r.json()["action"], "FromHeader");
    // X-Request-Id is echoed as requestId; without one the server makes one.
    let r = c
        .call(Method::GET, PATH, &[("X-Request-Id", "rid-7")], None)
        .await;
    assert_eq!(r.json()["requestId"], "rid-7");
    let r = c.call(Method::GET, PATH, &[], None).await;
    assert!(!r.json()["requestId"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn page_size_over_100_silently_becomes_20() {
    let emu = start_oceanbase(opts(250)).await;
    let mut c = RawClient::new(&emu);
    let mut page = async |q: &str| {
        let r = c.call(Method::GET, &format!("{PATH}{q}"), &[], None).await;
        assert_eq!(r.status, 200, "{q}: {}", r.text);
        let b = r.json();
        assert_eq!(b["data"]["total"], 250, "{q}");
        b["data"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(page("").await.len(), 10, "default page size");
    assert_eq!(page("?pageSize=100").await.len(), 100);
    assert_eq!(page("?pageSize=101").await.len(), 20, "the quirk");
    assert_eq!(page("?pageSize=5000").await.len(), 20, "the quirk");
    let third = page("?pageNumber=3&pageSize=100").await;
    assert_eq!(third.len(), 50);
    assert_eq!(third[0], "app-00201");
    let p2 = page("?pageNumber=2&pageSize=101").await;
    assert_eq!(p2[0], "app-00021", "page 2 of 20");
    assert!(page("?pageNumber=4&pageSize=100").await.is_empty());
    for bad in [
        "?pageSize=0",
        "?pageNumber=0",
        "?pageSize=ten",
        "?pageNumber=-1",
    ] {
        let r = c
            .call(Method::GET, &format!("{PATH}{bad}"), &[], None)
            .await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.json()["errorCode"], "INVALID_PARAMETER");
    }
}

#[tokio::test]
async fn create_shows_the_key_once_and_no_id() {
    let emu = start_oceanbase(opts(0)).await;
    let mut c = RawClient::new(&emu);
    let r = c
        .call(
            Method::POST,
            PATH,
            &[],
            Some(&json!({"name": "my-api-key", "action": "read"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = r.json();
    assert_eq!(
        keys_of(&b),
        set(&["data", "requestId", "server", "success"])
    );
    assert_eq!(b["success"], true);
    assert_eq!(keys_of(&b["data"]), set(&["apiKey", "name", "createdAt"]));
    assert_eq!(b["data"]["name"], "my-api-key");
    let api_key = b["data"]["apiKey"].as_str().unwrap().to_string();
    assert!(api_key.starts_with("sk_"));
    let created = rfc3339(&b["data"]["createdAt"]);
    assert!((Utc::now() - created).num_seconds().abs() < 60);

    let truth = &emu.keys()[0];
    assert_eq!(truth.api_key.expose(), api_key);
    assert_eq!(truth.created_at, created);
    assert_eq!(truth.updated_at, created);
    assert_eq!(truth.expires_at, Some(created + chrono::Duration::days(30)));

    // The list shows it with an id, and never again its value.
    let r = c.call(Method::GET, PATH, &[], None).await;
    assert!(!r.text.contains(&api_key));
    assert!(!r.text.contains("apiKey"));
    assert_eq!(r.json()["data"]["list"][0]["id"], truth.id.as_str());

    for bad in [
        json!({"name": "x"}),
        json!({"action": "read"}),
        json!({"name": "", "action": "read"}),
        json!({"name": 5, "action": "read"}),
        json!(["x"]),
    ] {
        let r = c.call(Method::POST, PATH, &[], Some(&bad)).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        assert_eq!(r.json()["errorCode"], "INVALID_PARAMETER");
    }
    assert_eq!(emu.key_count(), 1);
}

#[tokio::test]
async fn delete_answers_as_documented() {
    let emu = start_oceanbase(opts(2)).await;
    let mut c = RawClient::new(&emu);
    let id = emu.keys()[0].id.clone();
    let r = c
        .call(
            Method::DELETE,
            &format!("{PATH}?id={id}"),
            &[("X-Request-Id", "req-del")],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut b = r.json();
    assert_eq!(b["server"], emu.addr().to_string());
    b.as_object_mut().unwrap().remove("server");
    assert_eq!(
        b,
        json!({
            "action": "DeleteAIServiceAPIKey",
            "data": {},
            "error": {},
            "message": "success",
            "requestId": "req-del",
            "success": true,
        })
    );
    assert_eq!(emu.key_count(), 1);

    let r = c
        .call(Method::DELETE, &format!("{PATH}?id={id}"), &[], None)
        .await;
    assert_eq!(r.status, 404);
    let b = r.json();
    assert_eq!(
        keys_of(&b),
        set(&["success", "errorCode", "errorMessage", "requestId"])
    );
    assert_eq!(b["success"], false);

    for q in ["", "?id=", "?uid=u1"] {
        let r = c
            .call(Method::DELETE, &format!("{PATH}{q}"), &[], None)
            .await;
        assert_eq!(r.status, 400, "{q}");
    }
    assert_eq!(emu.key_count(), 1);
}

#[tokio::test]
async fn seeded_keys_honour_lifetime_and_expiring_knobs() {
    let emu = start_oceanbase(OceanBaseEmulatorOptions {
        keys: 100,
        expiring: 7,
        within: Duration::from_secs(3600),
        lifetime: Some(Duration::from_secs(10 * 24 * 3600)),
        name_prefix: "svc-".into(),
        seed: Some(9),
        ..Default::default()
    })
    .await;
    let now = Utc::now();
    let keys = emu.keys();
    assert_eq!(keys[0].name, "svc-00001");
    assert_eq!(keys[99].name, "svc-00100");
    let soon = keys
        .iter()
        .filter(|k| k.expires_at.unwrap() <= now + chrono::Duration::seconds(3601))
        .count();
    assert_eq!(soon, 7);
    for k in &keys {
        assert!(k.created_at <= now);
        assert!(k.expires_at.unwrap() > now - chrono::Duration::seconds(2));
        assert_eq!(
            k.expires_at.unwrap() - k.created_at,
            chrono::Duration::days(10)
        );
    }
}

#[tokio::test]
async fn the_same_seed_gives_the_same_keys() {
    let a = start_oceanbase(opts(20)).await;
    let b = start_oceanbase(opts(20)).await;
    let ids = |e: &EmulatorHandle| {
        e.keys()
            .into_iter()
            .map(|k| (k.id, k.name, k.api_key))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&a), ids(&b));
    let c = start_oceanbase(OceanBaseEmulatorOptions {
        seed: Some(43),
        ..opts(20)
    })
    .await;
    assert_ne!(ids(&a), ids(&c));
}

#[tokio::test]
async fn the_admin_api_shows_keys_injects_faults_and_counts() {
    let emu = start_oceanbase(opts(2)).await;
    let http = reqwest::Client::new();
    let base = emu.endpoint();

    let keys: Value = http
        .get(format!("{base}/__emulator/keys"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys["total"], 2);
    for (k, truth) in keys["keys"].as_array().unwrap().iter().zip(emu.keys()) {
        assert_eq!(k["apiKey"], truth.api_key.expose());
        assert_eq!(k["id"], truth.id.as_str());
        assert_eq!(k["action"], "read");
    }

    let r = http
        .post(format!("{base}/__emulator/keys"))
        .json(&json!({"name": "inserted", "createdAt": "2026-01-01T00:00:00Z", "expiresAt": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(emu.key_count(), 3);
    let inserted = emu.keys().pop().unwrap();
    assert_eq!(inserted.name, "inserted");
    assert_eq!(
        inserted.created_at.to_rfc3339(),
        "2026-01-01T00:00:00+00:00"
    );

    let r = http
        .post(format!("{base}/__emulator/faults"))
        .json(&json!({"force": [{"operation": "delete", "status": 403, "count": 2}], "latency": "1ms"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let state: Value = r.json().await.unwrap();
    assert_eq!(state["forced"][0]["status"], 403);
    assert_eq!(state["latency"], "1ms");
    for bad in [
        json!({"error_rate": 2.0}),
        json!({"force": [{"operation": "rename", "status": 500}]}),
        json!({"nonsense": true}),
    ] {
        let r = http
            .post(format!("{base}/__emulator/faults"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }

    let provider = oceanbase_provider(&oceanbase_config(&emu));
    let id = emu.keys()[0].id.clone();
    for _ in 0..2 {
        let e = provider.delete(&id).await.unwrap_err();
        assert!(matches!(e.kind, ProviderErrorKind::Auth(_)), "{e:?}");
    }
    assert_eq!(provider.delete(&id).await.unwrap(), DeleteOutcome::Deleted);

    let stats: Value = http
        .get(format!("{base}/__emulator/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["delete"]["requests"], 4, "{stats}");
    assert_eq!(stats["delete"]["challenged"], 1, "{stats}");
    assert_eq!(stats["delete"]["faults"], 2, "{stats}");
    assert_eq!(stats["delete"]["ok"], 1, "{stats}");
    assert_eq!(stats["list"]["requests"], 0, "{stats}");
}

#[tokio::test]
async fn the_error_rate_knob_answers_500_e001r000() {
    let emu = start_oceanbase(OceanBaseEmulatorOptions {
        error_rate: 1.0,
        ..opts(1)
    })
    .await;
    let mut c = RawClient::new(&emu);
    let r = c.call(Method::GET, PATH, &[], None).await;
    assert_eq!(r.status, 500);
    let b = r.json();
    assert_eq!(b["errorCode"], "E001R000");
    assert_eq!(b["errorMessage"], "Unknown Error");
    assert_eq!(b["success"], false);
    emu.set_faults(Faults {
        error_rate: Some(0.0),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.call(Method::GET, PATH, &[], None).await.status, 200);
}

#[tokio::test]
async fn other_methods_and_paths_are_refused() {
    let emu = start_oceanbase(opts(1)).await;
    let mut c = RawClient::new(&emu);
    let r = c.call(Method::PUT, PATH, &[], None).await;
    assert_eq!(r.status, 405);
    let r = c.call(Method::GET, "/api/v2/maas/other", &[], None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["success"], false);
}

// ================================================================ the CLI

#[tokio::test]
async fn rekey_emulate_oceanbase_prints_where_and_how_to_connect() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rekey"))
        .args([
            "emulate",
            "oceanbase",
            "--listen",
            "127.0.0.1:0",
            "--keys",
            "12",
            "--name-prefix",
            "cli-",
            "--org-id",
            "org-cli",
            "--seed",
            "5",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("rekey runs");
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("utf-8");
            let done = line.starts_with("Ctrl-C");
            out.push(line);
            if done {
                break;
            }
        }
        out
    })
    .await
    .unwrap();
    let text = lines.join("\n");
    let endpoint = lines[0]
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no endpoint in {text}"))
        .to_string();
    assert!(text.contains("emu-access-key-id"), "{text}");
    assert!(text.contains("emu-access-key-secret"), "{text}");
    assert!(text.contains("org-cli"), "{text}");
    assert!(
        text.contains(&format!("endpoint = \"{endpoint}\"")),
        "{text}"
    );

    // What it printed is enough to connect.
    let cfg = rekey::config::ProviderConfig {
        name: "cli".into(),
        endpoint,
        rate_limit: None,
        ca_file: None,
        timeout: Duration::from_secs(10),
        kind: rekey::config::ProviderKind::OceanBase(rekey::provider::oceanbase::OceanBaseConfig {
            org_id: "org-cli".into(),
            project_id: "proj-emulator".into(),
            access_key_id: rekey::config::SecretRef::Literal(Secret::new("emu-access-key-id")),
            access_key_secret: rekey::config::SecretRef::Literal(Secret::new(
                "emu-access-key-secret",
            )),
        }),
    };
    let listed = oceanbase_provider(&cfg).list(&all).await.unwrap();
    assert_eq!(listed.len(), 12);
    assert_eq!(listed[0].name, "cli-00001");

    // SIGTERM stops it cleanly.
    let pid = child.id() as libc::pid_t;
    // SAFETY: signalling the child we spawned, by its pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn curl_as_an_independent_digest_client_is_accepted() {
    let Ok(out) = Command::new("curl").arg("--version").output() else {
        eprintln!("curl not installed: independent Digest check not run");
        return;
    };
    assert!(out.status.success());
    let emu = start_oceanbase(opts(3)).await;
    let o = emu.options();
    let url = format!("{}{PATH}?pageNumber=1&pageSize=2", emu.endpoint());
    let args = vec![
        "-s".to_string(),
        "--digest".into(),
        "-u".into(),
        format!("{}:{}", o.access_key_id, o.access_key_secret.expose()),
        "-H".into(),
        format!("X-OB-Org-Id: {}", o.org_id),
        "-H".into(),
        format!("X-OB-Project-Id: {}", o.project_id),
        url,
    ];
    let out = tokio::task::spawn_blocking(move || Command::new("curl").args(&args).output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success());
    let body: Value = serde_json::from_slice(&out.stdout).expect("JSON from curl");
    assert_eq!(body["data"]["list"].as_array().unwrap().len(), 2, "{body}");
    let s = emu.stats();
    assert_eq!(s.list.ok, 1, "{s:?}");
    assert_eq!(s.authenticated_md5 + s.authenticated_sha256, 1);
}
