//! The Huawei NES provider against the Huawei emulator: paging, the text
//! credential, id resolution by description, the three auth modes (token,
//! IAM with caching and refresh, AK/SK), error statuses, throttling, and
//! secrets kept out of Debug and logs.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::Utc;
use rekey::config::HuaweiAuth;
use rekey::emulator::huawei::{self, Faults, ForcedFault, Options};
use rekey::provider::{CreateRequest, DeleteOutcome, Provider, ProviderErrorKind};
use serde_json::{Map, json};

use crate::support::cloud::{
    self as support, assert_no_secret, huawei_aksk_auth, huawei_iam_auth, huawei_provider,
    huawei_token_auth, literal, loopback,
};

fn opts() -> Options {
    Options {
        seed: Some(11),
        ..Options::default()
    }
}

fn force(operation: &str, status: u16) -> Faults {
    Faults {
        force: vec![ForcedFault {
            operation: operation.into(),
            status,
            error_code: None,
            message: None,
            count: 1,
            retry_after: None,
        }],
        ..Faults::default()
    }
}

fn create_req<'a>(name: &'a str, params: &'a Map<String, serde_json::Value>) -> CreateRequest<'a> {
    CreateRequest { name, params }
}

#[tokio::test]
async fn list_walks_pages_of_at_most_100_and_filters_each_page() {
    let emu = huawei::start(
        Options {
            keys: 230,
            ..opts()
        },
        loopback(),
    )
    .await
    .unwrap();
    for i in 0..5 {
        emu.insert_key(&format!("other-{i}"), Utc::now());
    }
    let p = huawei_provider(&emu, huawei_token_auth(&emu));
    let keys = p.list(&|n: &str| n.starts_with("app-")).await.unwrap();
    assert_eq!(keys.len(), 230);
    assert!(
        keys.iter()
            .all(|k| k.id.len() == 36 && k.created_at.is_some())
    );
    assert!(keys.iter().all(|k| k.expires_at.is_none()));
    // 235 credentials, 100 a page: three pages.
    assert_eq!(emu.stats()["list"].requests, 3);
    emu.shutdown().await;
}

#[tokio::test]
async fn create_returns_the_credential_text_and_finds_its_id_by_listing() {
    let emu = huawei::start(
        Options {
            keys: 120,
            ..opts()
        },
        loopback(),
    )
    .await
    .unwrap();
    let p = huawei_provider(&emu, huawei_token_auth(&emu));
    assert!(!p.capabilities().returns_id_on_create);
    assert!(!p.capabilities().has_expiry);
    let mut params = Map::new();
    params.insert(
        "node_ids".into(),
        json!(["0d8e7c8a-0000-4000-8000-000000000001"]),
    );
    params.insert("control_type".into(), json!("allowlist"));
    params.insert(
        "allowlists".into(),
        json!([{"allowlist_type": "ip", "allowlist_info": "10.0.0.1"}]),
    );
    params.insert("eps_id".into(), json!("0"));
    let new = p
        .create(&create_req("app-20260101-r1", &params))
        .await
        .unwrap();
    let held = emu
        .keys()
        .into_iter()
        .find(|c| c.description == "app-20260101-r1")
        .unwrap();
    assert_eq!(new.id.as_deref(), Some(held.id.as_str()));
    assert_eq!(new.secret.get("credential").unwrap(), &held.credential);
    // The answer was a real ZIP: the archive is kept, its CSV is primary.
    let zip = new.secret.get("credential_zip").unwrap().expose_bytes();
    assert!(zip.starts_with(b"PK\x03\x04"));
    assert!(
        held.credential
            .expose()
            .starts_with("credential_id,api_key\r\n")
    );
    assert_eq!(
        new.secret.get("csv_credential_id").unwrap().expose(),
        held.id.as_str()
    );
    assert_eq!(held.control_type, "allowlist");
    assert_eq!(held.node_ids, ["0d8e7c8a-0000-4000-8000-000000000001"]);
    assert!(new.created_at.is_some());
    // The engine's own lookup finds the same id.
    let found = p.list(&|n: &str| n == "app-20260101-r1").await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, held.id);
    emu.shutdown().await;
}

#[tokio::test]
async fn a_failed_id_lookup_keeps_the_secret_and_leaves_the_id_to_the_engine() {
    let emu = huawei::start(opts(), loopback()).await.unwrap();
    let p = huawei_provider(&emu, huawei_token_auth(&emu));
    emu.set_faults(force("list", 503)).unwrap();
    let new = p.create(&create_req("app-x", &Map::new())).await.unwrap();
    assert_eq!(new.id, None);
    assert_eq!(
        new.secret.get("credential").unwrap(),
        &emu.keys()[0].credential
    );
    let ids = p.find_by_description("app-x").await.unwrap();
    assert_eq!(ids, [emu.keys()[0].id.clone()]);
    emu.shutdown().await;
}

#[tokio::test]
async fn delete_removes_the_credential_then_reports_not_found() {
    let emu = huawei::start(opts(), loopback()).await.unwrap();
    let c = emu.insert_key("app-old", Utc::now());
    let p = huawei_provider(&emu, huawei_token_auth(&emu));
    assert_eq!(p.delete(&c.id).await.unwrap(), DeleteOutcome::Deleted);
    assert!(emu.keys().is_empty());
    assert_eq!(p.delete(&c.id).await.unwrap(), DeleteOutcome::NotFound);
    emu.shutdown().await;
}

#[tokio::test]
async fn create_description_and_overlong_names_are_refused_before_sending() {
    let emu = huawei::start(opts(), loopback()).await.unwrap();
    let p = huawei_provider(&emu, huawei_token_auth(&emu));
    let mut params = Map::new();
    params.insert("description".into(), json!("mine"));
    let e = p.create(&create_req("app-1", &params)).await.unwrap_err();
    assert!(matches!(e.kind, ProviderErrorKind::Invalid(_)), "{e}");
    let long = "a".repeat(101);
    let e = p.create(&create_req(&long, &Map::new())).await.unwrap_err();
    assert!(matches!(e.kind, ProviderErrorKind::Invalid(_)), "{e}");
    assert!(!emu.stats().contains_key("create"));
    emu.shutdown().await;
}

#[tokio::test]
async fn iam_tokens_are_cached_and_fetched_again_after_a_401() {
    let emu = huawei::start(Options { keys: 2, ..opts() }, loopback())
        .await
        .unwrap();
    let p = huawei_provider(&emu, huawei_iam_auth(&emu));
    p.list(&|_: &str| true).await.unwrap();
    p.list(&|_: &str| true).await.unwrap();
    assert_eq!(emu.stats()["iam"].ok, 1, "the token is cached");
    emu.expire_tokens();
    let keys = p.list(&|_: &str| true).await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(emu.stats()["iam"].ok, 2, "a 401 fetches a new token once");
    assert_eq!(emu.stats()["list"].auth_failures, 1);
    emu.shutdown().await;
}

#[tokio::test]
async fn iam_tokens_are_replaced_before_they_expire() {
    let emu = huawei::start(opts(), loopback()).await.unwrap();
    let offset = Arc::new(AtomicI64::new(0));
    let o = offset.clone();
    let p = huawei_provider(&emu, huawei_iam_auth(&emu)).with_clock(Arc::new(move || {
        Utc::now() + chrono::Duration::seconds(o.load(Ordering::SeqCst))
    }));
    p.list(&|_: &str| true).await.unwrap();
    // 22 h into a 24 h token: still used.
    offset.store(22 * 3600, Ordering::SeqCst);
    p.list(&|_: &str| true).await.unwrap();
    assert_eq!(emu.stats()["iam"].ok, 1);
    // 23.5 h: within the last hour, replaced before use.
    offset.store(23 * 3600 + 1800, Ordering::SeqCst);
    p.list(&|_: &str| true).await.unwrap();
    assert_eq!(emu.stats()["iam"].ok, 2);
    assert_eq!(emu.stats().get("list").map(|s| s.auth_failures), Some(0));
    emu.shutdown().await;
}

#[tokio::test]
async fn a_wrong_iam_password_or_token_is_an_auth_error() {
    let emu = huawei::start(opts(), loopback()).await.unwrap();
    let o = emu.options().clone();
    let bad_pw = HuaweiAuth::Iam {
        endpoint: emu.endpoint(),
        domain: o.iam_domain.clone(),
        user: o.iam_user.clone(),
        password: literal("not-the-password"),
    };
    let e = huawei_provider(&emu, bad_pw)
        .list(&|_: &str| true)
        .await
        .unwrap_err();
    assert!(
        matches!(&e.kind, ProviderErrorKind::Auth(m) if m.contains("IAM")),
        "{e}"
    );
    assert!(!e.is_retryable());
    let e = huawei_provider(&emu, HuaweiAuth::Token(literal("stale-token")))
        .list(&|_: &str| true)
        .await
        .unwrap_err();
    assert!(
        matches!(&e.kind, ProviderErrorKind::Auth(m) if m.contains("BCS.03401001")),
        "{e}"
    );
    assert!(!e.is_retryable());
    // A token for another project is refused too.
    let other = support::huawei_config(
        &emu.endpoint(),
        "ffffffffffffffffffffffffffffffff",
        huawei_token_auth(&emu),
    );
    let e = support::huawei_provider_with(&other)
        .list(&|_: &str| true)
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ProviderErrorKind::Auth(_)), "{e}");
    emu.shutdown().await;
}

#[tokio::test]
async fn aksk_signed_requests_work_and_a_wrong_secret_key_is_refused() {
    let emu = huawei::start(Options { keys: 3, ..opts() }, loopback())
        .await
        .unwrap();
    let p = huawei_provider(&emu, huawei_aksk_auth(&emu));
    assert_eq!(p.list(&|_: &str| true).await.unwrap().len(), 3);
    let new = p
        .create(&create_req("app-signed", &Map::new()))
        .await
        .unwrap();
    let id = new.id.unwrap();
    assert_eq!(p.delete(&id).await.unwrap(), DeleteOutcome::Deleted);
    let wrong = HuaweiAuth::Aksk {
        access_key: literal(&emu.options().access_key),
        secret_key: literal("not-the-secret-key"),
    };
    let e = huawei_provider(&emu, wrong)
        .list(&|_: &str| true)
        .await
        .unwrap_err();
    assert!(
        matches!(&e.kind, ProviderErrorKind::Auth(m) if m.contains("aksk")),
        "{e}"
    );
    // A clock more than 15 minutes off is refused as well.
    let skewed = huawei_provider(&emu, huawei_aksk_auth(&emu))
        .with_clock(Arc::new(|| Utc::now() - chrono::Duration::minutes(20)));
    let e = skewed.list(&|_: &str| true).await.unwrap_err();
    assert!(matches!(e.kind, ProviderErrorKind::Auth(_)), "{e}");
    emu.shutdown().await;
}

#[tokio::test]
async fn error_statuses_map_to_error_classes() {
    let emu = huawei::start(opts(), loopback()).await.unwrap();
    let p = huawei_provider(&emu, huawei_token_auth(&emu));
    let keep = |_: &str| true;
    let cases = [
        (400, false, "api"),
        (401, false, "auth"),
        (403, false, "auth"),
        (404, false, "api"),
        (429, true, "rate"),
        (500, true, "api"),
        (502, true, "api"),
        (503, true, "api"),
    ];
    for (status, retryable, class) in cases {
        emu.set_faults(force("list", status)).unwrap();
        let e = p.list(&keep).await.unwrap_err();
        let got = match &e.kind {
            ProviderErrorKind::Api { status: s, .. } => {
                assert_eq!(*s, status);
                "api"
            }
            ProviderErrorKind::RateLimited { .. } => "rate",
            ProviderErrorKind::Auth(_) => "auth",
            _ => "other",
        };
        assert_eq!((got, e.is_retryable()), (class, retryable), "{status}: {e}");
        assert!(e.request_id.is_some());
    }
    emu.set_faults(force("list", 400)).unwrap();
    let e = p.list(&keep).await.unwrap_err();
    assert!(
        matches!(&e.kind, ProviderErrorKind::Api { code, message, .. } if code == "BCS.03400001" && message.contains("Invalid request.")),
        "{e}"
    );
    // A forced 429 with Retry-After carries it.
    emu.set_faults(Faults {
        force: vec![ForcedFault {
            operation: "create".into(),
            status: 429,
            error_code: None,
            message: None,
            count: 1,
            retry_after: Some(3),
        }],
        ..Faults::default()
    })
    .unwrap();
    let e = p
        .create(&create_req("app-r", &Map::new()))
        .await
        .unwrap_err();
    assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(3)));
    emu.shutdown().await;
}

#[tokio::test]
async fn throttling_answers_429_and_is_rate_limited() {
    let emu = huawei::start(
        Options {
            rate_limit: Some(1.0),
            ..opts()
        },
        loopback(),
    )
    .await
    .unwrap();
    let p = huawei_provider(&emu, huawei_token_auth(&emu));
    p.list(&|_: &str| true).await.unwrap();
    let e = p.list(&|_: &str| true).await.unwrap_err();
    assert!(
        matches!(e.kind, ProviderErrorKind::RateLimited { .. }),
        "{e}"
    );
    assert!(e.is_retryable());
    assert_eq!(emu.stats()["list"].rate_limited, 1);
    emu.shutdown().await;
}

#[tokio::test]
async fn the_emulator_insists_on_a_32_character_project_id() {
    let emu = huawei::start(opts(), loopback()).await.unwrap();
    let cfg = support::huawei_config(&emu.endpoint(), "short", huawei_token_auth(&emu));
    let e = support::huawei_provider_with(&cfg)
        .list(&|_: &str| true)
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind, ProviderErrorKind::Api { status: 400, .. }),
        "{e}"
    );
    emu.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn secrets_never_reach_debug_output_or_trace_logs() {
    let logs = support::capture_logs();
    let emu = huawei::start(Options { keys: 2, ..opts() }, loopback())
        .await
        .unwrap();
    let iam = huawei_provider(&emu, huawei_iam_auth(&emu));
    let new = iam
        .create(&create_req("app-new", &Map::new()))
        .await
        .unwrap();
    emu.expire_tokens();
    let listed = iam.list(&|_: &str| true).await.unwrap();
    iam.delete(new.id.as_deref().unwrap()).await.unwrap();
    let aksk = huawei_provider(&emu, huawei_aksk_auth(&emu));
    let new2 = aksk
        .create(&create_req("app-new2", &Map::new()))
        .await
        .unwrap();
    emu.set_faults(force("list", 500)).unwrap();
    let err = aksk.list(&|_: &str| true).await.unwrap_err();
    let bad = HuaweiAuth::Iam {
        endpoint: emu.endpoint(),
        domain: emu.options().iam_domain.clone(),
        user: emu.options().iam_user.clone(),
        password: literal("wrong-password-for-the-log-test"),
    };
    let auth_err = huawei_provider(&emu, bad)
        .list(&|_: &str| true)
        .await
        .unwrap_err();

    let o = emu.options();
    let mut owned: Vec<(&str, String)> = vec![
        ("IAM password", o.iam_password.expose().to_string()),
        (
            "wrong IAM password",
            "wrong-password-for-the-log-test".into(),
        ),
        (
            "static token",
            o.token.as_ref().unwrap().expose().to_string(),
        ),
        ("SecretKey", o.secret_key.expose().to_string()),
        (
            "new credential",
            new.secret.get("credential").unwrap().expose().to_string(),
        ),
        (
            "second credential",
            new2.secret.get("credential").unwrap().expose().to_string(),
        ),
    ];
    for c in emu.keys() {
        owned.push(("held credential", c.credential.expose().to_string()));
    }
    // Tokens issued before and after the expiry.
    for t in emu.issued_tokens() {
        owned.push(("IAM token", t.expose().to_string()));
    }
    let secrets: Vec<(&str, &str)> = owned.iter().map(|(n, s)| (*n, s.as_str())).collect();
    let debug = format!(
        "{iam:?}\n{aksk:?}\n{new:?}\n{new2:?}\n{listed:?}\n{err:?}\n{err}\n{auth_err:?}\n{auth_err}\n{:?}\n{:?}",
        emu.keys(),
        huawei_iam_auth(&emu)
    );
    assert_no_secret("Debug/Display output", &debug, &secrets);
    let text = logs.text();
    assert!(
        text.contains("provider call"),
        "provider calls were not logged:\n{text}"
    );
    assert!(
        text.contains("TRACE") && text.contains("NES answered"),
        "TRACE lines were not captured:\n{text}"
    );
    assert_no_secret("TRACE log", &text, &secrets);
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_rotates_a_credential_end_to_end_with_iam_auth() {
    let emu = huawei::start(opts(), loopback()).await.unwrap();
    let old = emu.insert_key("svc-main", Utc::now() - chrono::Duration::days(40));
    let o = emu.options();
    let config = format!(
        r#"
[daemon]
state = "{{dir}}/state.db"
listen = "127.0.0.1:0"

[providers.nes]
kind = "huawei-nes"
endpoint = "{endpoint}"
project_id = "{project}"
auth = {{ iam = {{ endpoint = "{endpoint}", domain = "{domain}", user = "{user}", password = {{ file = "{{dir}}/hw-pw" }} }} }}

[sinks.out]
kind = "file"
path = "{{dir}}/{{lineage}}.txt"
format = "raw"

[sinks.doc]
kind = "file"
path = "{{dir}}/{{lineage}}.json"
format = "json"

[[policy]]
name = "nes"
provider = "nes"
match = "svc-*"
schedule = "* * * * * *"
max_age = "30d"
grace_period = "0s"
sinks = ["out", "doc"]
create = {{ control_type = "allowlist", allowlists = [{{ allowlist_type = "ip", allowlist_info = "10.0.0.1" }}] }}
"#,
        endpoint = emu.endpoint(),
        project = o.project_id,
        domain = o.iam_domain,
        user = o.iam_user,
    );
    let daemon = support::start_daemon(&config, &[("hw-pw", o.iam_password.expose())]);
    let (done, dir) = daemon
        .until(|| {
            let keys = emu.keys();
            keys.len() == 1 && keys[0].id != old.id
        })
        .await;
    let keys = emu.keys();
    assert!(done, "the old credential was not replaced: {keys:?}");
    let new = &keys[0];
    assert!(
        new.description.starts_with("svc-main-"),
        "{}",
        new.description
    );
    assert_eq!(new.control_type, "allowlist");
    // The ZIP's credential.csv, published byte for byte (its own CRLFs, no
    // newline added), and in json beside the archive (base64).
    let published = std::fs::read(dir.path().join("svc-main.txt")).unwrap();
    assert_eq!(published, new.credential.expose().as_bytes());
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("svc-main.json")).unwrap())
            .unwrap();
    assert_eq!(doc["secret"]["credential"], new.credential.expose());
    let zip = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        doc["secret"]["credential_zip"]["base64"].as_str().unwrap(),
    )
    .unwrap();
    assert!(zip.starts_with(b"PK\x03\x04"));
    assert_eq!(emu.stats()["delete"].ok, 1);
    emu.shutdown().await;
}

#[tokio::test]
async fn the_old_text_create_answer_is_still_kept_whole() {
    let emu = huawei::start(
        Options {
            create_zip: false,
            ..opts()
        },
        loopback(),
    )
    .await
    .unwrap();
    let p = huawei_provider(&emu, huawei_token_auth(&emu));
    let new = p.create(&create_req("app-t", &Map::new())).await.unwrap();
    let held = emu.keys().pop().unwrap();
    assert!(held.credential.expose().starts_with("PK"));
    assert_eq!(new.secret.get("credential").unwrap(), &held.credential);
    assert_eq!(new.secret.len(), 1);
    assert!(new.unreadable.is_none());
    emu.shutdown().await;
}

#[tokio::test]
async fn a_delete_answered_without_404_is_confirmed_by_listing() {
    // Documented behaviour: an unknown id answers 400, never 404.
    let emu = huawei::start(opts(), loopback()).await.unwrap();
    let c = emu.insert_key("app-old", Utc::now());
    let p = huawei_provider(&emu, huawei_token_auth(&emu));
    assert_eq!(p.delete(&c.id).await.unwrap(), DeleteOutcome::Deleted);
    let lists = emu.stats().get("list").map(|s| s.requests).unwrap_or(0);
    assert_eq!(p.delete(&c.id).await.unwrap(), DeleteOutcome::NotFound);
    assert_eq!(emu.stats()["delete"].errors, 1);
    assert_eq!(emu.stats()["list"].requests, lists + 1);
    // A failed delete of a credential that is still listed stands.
    let kept = emu.insert_key("app-kept", Utc::now());
    emu.set_faults(force("delete", 500)).unwrap();
    let e = p.delete(&kept.id).await.unwrap_err();
    assert!(
        matches!(e.kind, ProviderErrorKind::Api { status: 500, .. }),
        "{e}"
    );
    assert_eq!(emu.keys().len(), 1);
    // The invented 404 (knob) ends the same way.
    let emu404 = huawei::start(
        Options {
            delete_404: true,
            ..opts()
        },
        loopback(),
    )
    .await
    .unwrap();
    let p = huawei_provider(&emu404, huawei_token_auth(&emu404));
    assert_eq!(
        p.delete("0d8e7c8a-0000-4000-8000-00000000dead")
            .await
            .unwrap(),
        DeleteOutcome::NotFound
    );
    emu.shutdown().await;
    emu404.shutdown().await;
}

#[tokio::test]
async fn offsets_read_as_pages_stop_the_walk_with_a_clear_error() {
    let emu = huawei::start(
        Options {
            keys: 150,
            offset_pages: true,
            ..opts()
        },
        loopback(),
    )
    .await
    .unwrap();
    let p = huawei_provider(&emu, huawei_token_auth(&emu));
    let e = p.list(&|_: &str| true).await.unwrap_err();
    assert!(
        matches!(&e.kind, ProviderErrorKind::Protocol(m) if m.contains("offset")),
        "{e}"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn the_apig_throttle_code_is_a_retried_rate_limit() {
    let emu = huawei::start(opts(), loopback()).await.unwrap();
    let p = huawei_provider(&emu, huawei_token_auth(&emu));
    // The gateway's code, even on a status that is not 429.
    emu.set_faults(Faults {
        force: vec![ForcedFault {
            operation: "create".into(),
            status: 400,
            error_code: Some("APIG.0308".into()),
            message: None,
            count: 1,
            retry_after: None,
        }],
        ..Faults::default()
    })
    .unwrap();
    let e = p
        .create(&create_req("app-th", &Map::new()))
        .await
        .unwrap_err();
    assert!(e.is_throttled() && e.is_retryable(), "{e}");
    assert_eq!(e.outcome(), rekey::provider::Outcome::Retry);
    // Retried, it goes through.
    assert!(p.create(&create_req("app-th", &Map::new())).await.is_ok());
    emu.shutdown().await;
}

#[tokio::test]
async fn apig_0101_from_the_gateway_is_a_refusal_not_a_throttle() {
    let emu = huawei::start(opts(), loopback()).await.unwrap();
    // A path the gateway does not route: APIG's documented 404 APIG.0101.
    let cfg = rekey::config::ProviderConfig {
        endpoint: format!("{}/nowhere", emu.endpoint()),
        ..support::huawei_config(
            &emu.endpoint(),
            &emu.options().project_id,
            huawei_token_auth(&emu),
        )
    };
    let p = support::huawei_provider_with(&cfg);
    let e = p.list(&|_: &str| true).await.unwrap_err();
    assert!(
        matches!(&e.kind, ProviderErrorKind::Api { status: 404, code, .. } if code == "APIG.0101"),
        "{e}"
    );
    assert!(!e.is_throttled(), "{e}");
    assert_eq!(e.outcome(), rekey::provider::Outcome::Refused);
    emu.shutdown().await;
}

#[tokio::test]
async fn vendor_time_forms_give_the_right_age_and_an_odd_one_is_reported_raw() {
    let t = Utc::now() - chrono::Duration::days(90);
    let t = t - chrono::Duration::nanoseconds(t.timestamp_subsec_nanos() as i64);
    for format in [
        "%Y-%m-%dT%H:%M:%S%.3f%z",
        "%Y/%m/%d %H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
    ] {
        let emu = huawei::start(
            Options {
                time_format: Some(format.into()),
                ..opts()
            },
            loopback(),
        )
        .await
        .unwrap();
        emu.insert_key("app-old", t);
        let p = huawei_provider(&emu, huawei_token_auth(&emu));
        let keys = p.list(&|_: &str| true).await.unwrap();
        // A 90-day-old credential is 90 days old, whatever the form.
        assert_eq!(keys[0].created_at, Some(t), "{format}");
        assert!(
            !keys[0]
                .meta
                .contains_key(rekey::provider::META_UNKNOWN_TIME)
        );
        emu.shutdown().await;
    }
    let emu = huawei::start(
        Options {
            time_format: Some("last Tuesday\u{1b}[2J".into()),
            ..opts()
        },
        loopback(),
    )
    .await
    .unwrap();
    emu.insert_key("app-odd", t);
    let p = huawei_provider(&emu, huawei_token_auth(&emu));
    let keys = p.list(&|_: &str| true).await.unwrap();
    assert_eq!(keys[0].created_at, None);
    assert_eq!(
        keys[0].meta[rekey::provider::META_UNKNOWN_TIME]["create_time"],
        "last Tuesday\u{1b}[2J"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn an_error_code_of_any_length_or_content_is_clipped_in_the_error() {
    let emu = huawei::start(opts(), loopback()).await.unwrap();
    let p = huawei_provider(&emu, huawei_token_auth(&emu));
    let code = format!("BCS.\u{1b}[2J{}", "9".repeat(5000));
    emu.set_faults(Faults {
        force: vec![ForcedFault {
            operation: "list".into(),
            status: 400,
            error_code: Some(code),
            message: Some("m".repeat(5000)),
            count: 1,
            retry_after: None,
        }],
        ..Faults::default()
    })
    .unwrap();
    let e = p.list(&|_: &str| true).await.unwrap_err();
    let text = e.to_string();
    assert!(text.len() < 1000, "{} bytes", text.len());
    assert!(!text.contains('\u{1b}'), "{text:?}");
    emu.shutdown().await;
}
