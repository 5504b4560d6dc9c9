//! The Tencent API Gateway provider against the Tencent emulator: paging,
//! create, the bind → unbind → disable → delete lifecycle, error envelopes,
//! throttling, signatures, and secrets kept out of Debug and logs.

mod crash;

use std::sync::Arc;

use chrono::Utc;
use rekey::emulator::tencent::{self, Faults, ForcedFault, Options};
use rekey::provider::tc3;
use rekey::provider::{CreateRequest, DeleteOutcome, Provider, ProviderErrorKind};
use serde_json::{Map, Value, json};

use crate::support::cloud::{self as support, assert_no_secret, loopback, tencent_provider};

fn opts() -> Options {
    Options {
        seed: Some(7),
        ..Options::default()
    }
}

fn plans(ids: &[&str]) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("usage_plans".into(), json!(ids));
    m
}

fn force(action: &str, code: &str) -> Faults {
    Faults {
        force: vec![ForcedFault {
            action: action.into(),
            code: code.into(),
            message: None,
            count: 1,
        }],
        ..Faults::default()
    }
}

/// A daemon config over `emu`: provider `gw` (credentials in the files
/// `DIR/tc-id` and `DIR/tc-key`), file sink `out` writing `DIR/SINK` as
/// `env`, and policy `gw` over `svc-*` (checked every second, 30-day age
/// limit, new keys bound to `plan`, plus the `policy_extra` lines). `dir`
/// may be the `{dir}` placeholder of [`support::start_daemon`].
fn gw_daemon_config(
    emu: &tencent::Handle,
    dir: &str,
    sink: &str,
    plan: &str,
    policy_extra: &str,
) -> String {
    let o = emu.options();
    format!(
        r#"
[daemon]
state = "{dir}/state.db"
listen = "127.0.0.1:0"

[providers.gw]
kind = "tencent-apigateway"
endpoint = "{endpoint}"
region = "{region}"
secret_id = {{ file = "{dir}/tc-id" }}
secret_key = {{ file = "{dir}/tc-key" }}

[sinks.out]
kind = "file"
path = "{dir}/{sink}"
format = "env"

[[policy]]
name = "gw"
provider = "gw"
match = "svc-*"
schedule = "* * * * * *"
max_age = "30d"
sinks = ["out"]
create = {{ usage_plans = ["{plan}"] }}
{policy_extra}
"#,
        endpoint = emu.endpoint(),
        region = o.region,
    )
}

/// A provider for `emu` whose metrics the test can read.
fn provider_with_metrics(
    emu: &tencent::Handle,
) -> (
    rekey::provider::tencent::TencentProvider,
    rekey::metrics::Metrics,
) {
    let o = emu.options();
    let cfg = support::tencent_config(
        &emu.endpoint(),
        &o.region,
        &o.secret_id,
        o.secret_key.expose(),
    );
    let metrics = rekey::metrics::Metrics::new();
    let http = rekey::provider::http::ProviderHttp::new(&cfg, metrics.clone()).unwrap();
    let p = rekey::provider::tencent::TencentProvider::new(&cfg, http).unwrap();
    (p, metrics)
}

#[tokio::test]
async fn list_walks_every_page_and_filters_each_page() {
    let emu = tencent::start(
        Options {
            keys: 250,
            name_prefix: "app-".into(),
            ..opts()
        },
        loopback(),
    )
    .await
    .unwrap();
    for i in 0..3 {
        emu.insert_key(&format!("other-{i}"), Utc::now(), &[])
            .unwrap();
    }
    let p = tencent_provider(&emu);
    let keys = p.list(&|n: &str| n.starts_with("app-")).await.unwrap();
    assert_eq!(keys.len(), 250);
    assert!(
        keys.iter()
            .all(|k| k.id.starts_with("AKID") && k.created_at.is_some())
    );
    assert!(keys.iter().all(|k| k.expires_at.is_none()));
    assert_eq!(keys[0].meta["status"], "enabled");
    // 253 keys at 100 a page: three pages.
    assert_eq!(emu.stats()["DescribeApiKeysStatus"].requests, 3);
    let all = p.list(&|_: &str| true).await.unwrap();
    assert_eq!(all.len(), 253);
    emu.shutdown().await;
}

/// A server whose key list never ends (`TotalCount` always one page ahead,
/// the keys repeated past the end): the walk fails with a protocol error
/// after a bounded number of pages instead of walking, and holding every
/// repeated key, for ever.
#[tokio::test]
async fn a_key_list_whose_pages_never_end_fails_after_a_bounded_walk() {
    let emu = tencent::start(
        Options {
            keys: 5,
            name_prefix: "app-".into(),
            ..opts()
        },
        loopback(),
    )
    .await
    .unwrap();
    emu.set_faults(Faults {
        endless_lists: true,
        ..Faults::default()
    })
    .unwrap();
    let p = tencent_provider(&emu);
    let e = tokio::time::timeout(std::time::Duration::from_secs(60), p.list(&|_: &str| true))
        .await
        .expect("the walk ended")
        .unwrap_err();
    assert!(
        matches!(&e.kind, ProviderErrorKind::Protocol(m) if m.contains("did not end after 12 pages")),
        "{e:?}"
    );
    assert_eq!(emu.stats()["DescribeApiKeysStatus"].requests, 12);
    // The list ends again: walks work again.
    emu.set_faults(Faults::default()).unwrap();
    assert_eq!(p.list(&|_: &str| true).await.unwrap().len(), 5);
    emu.shutdown().await;
}

#[tokio::test]
async fn create_returns_the_access_key_pair_and_its_id() {
    let emu = tencent::start(opts(), loopback()).await.unwrap();
    let p = tencent_provider(&emu);
    assert!(p.capabilities().returns_id_on_create);
    assert!(p.capabilities().disable_before_delete);
    assert!(!p.capabilities().has_expiry);
    let new = p
        .create(&CreateRequest {
            name: "app-20260101-r1",
            params: &Map::new(),
        })
        .await
        .unwrap();
    let held = emu.keys();
    assert_eq!(held.len(), 1);
    assert_eq!(new.id.as_deref(), Some(held[0].access_key_id.as_str()));
    assert_eq!(new.name, "app-20260101-r1");
    assert!(new.created_at.is_some() && new.expires_at.is_none());
    assert_eq!(
        new.secret.get("access_key_id").unwrap().expose(),
        held[0].access_key_id
    );
    assert_eq!(
        new.secret.get("access_key_secret").unwrap(),
        &held[0].access_key_secret
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn a_bound_or_enabled_key_cannot_be_deleted_directly() {
    let emu = tencent::start(
        Options {
            usage_plans: vec!["usagePlan-a".into()],
            ..opts()
        },
        loopback(),
    )
    .await
    .unwrap();
    let k = emu
        .insert_key("app-old", Utc::now(), &["usagePlan-a"])
        .unwrap();
    let p = tencent_provider(&emu);
    let e = p.delete(&k.access_key_id).await.unwrap_err();
    assert!(
        matches!(&e.kind, ProviderErrorKind::Api { code, .. } if code == "UnsupportedOperation.InvalidStatus"),
        "{e}"
    );
    assert!(!e.is_retryable());
    // Disabled but still bound: still refused.
    let r = p
        .call::<bool>(
            "disable",
            "DisableApiKey",
            &json!({"AccessKeyId": k.access_key_id}),
        )
        .await
        .unwrap();
    assert_eq!(r, Ok(Some(true)));
    let e = p.delete(&k.access_key_id).await.unwrap_err();
    assert!(
        matches!(&e.kind, ProviderErrorKind::Api { code, .. } if code == "UnsupportedOperation.ResourceIsInUse"),
        "{e}"
    );
    assert!(e.request_id.is_some());
    assert_eq!(emu.keys().len(), 1);
    emu.shutdown().await;
}

#[tokio::test]
async fn rotation_binds_the_new_key_to_the_old_keys_plans_then_retires_the_old_key() {
    let emu = tencent::start(
        Options {
            usage_plans: vec![
                "usagePlan-a".into(),
                "usagePlan-b".into(),
                "usagePlan-c".into(),
                "usagePlan-unrelated".into(),
            ],
            ..opts()
        },
        loopback(),
    )
    .await
    .unwrap();
    // The old key was bound by hand in the console to a and b.
    let old = emu
        .insert_key("app-main", Utc::now(), &["usagePlan-a", "usagePlan-b"])
        .unwrap();
    let p = tencent_provider(&emu);
    let params = plans(&["usagePlan-c"]);
    let new = p
        .create(&CreateRequest {
            name: "app-main-20260101-r1",
            params: &params,
        })
        .await
        .unwrap();
    let new_id = new.id.clone().unwrap();
    p.after_create(&new_id, Some(&old.access_key_id), &params)
        .await
        .unwrap();
    // Idempotent: a restart runs it again (AlreadyBindUsagePlan is fine).
    p.after_create(&new_id, Some(&old.access_key_id), &params)
        .await
        .unwrap();
    let bound = |id: &str| {
        emu.keys()
            .into_iter()
            .find(|k| k.access_key_id == id)
            .map(|k| k.usage_plans)
            .unwrap_or_default()
    };
    assert_eq!(
        bound(&new_id),
        ["usagePlan-a", "usagePlan-b", "usagePlan-c"]
    );

    // Retire the old key with a fresh provider (as after a restart: it
    // remembers no plans, so it must discover the bindings).
    let p2 = tencent_provider(&emu);
    p2.before_delete(&old.access_key_id).await.unwrap();
    let o = emu
        .keys()
        .into_iter()
        .find(|k| k.access_key_id == old.access_key_id)
        .unwrap();
    assert!(o.usage_plans.is_empty());
    assert_eq!(o.status, 0);
    // Idempotent: the key is already unbound and disabled.
    p2.before_delete(&old.access_key_id).await.unwrap();
    assert_eq!(
        p2.delete(&old.access_key_id).await.unwrap(),
        DeleteOutcome::Deleted
    );
    assert_eq!(
        p2.delete(&old.access_key_id).await.unwrap(),
        DeleteOutcome::NotFound
    );
    // before_delete on a key that is gone is not an error either.
    p2.before_delete(&old.access_key_id).await.unwrap();
    let left = emu.keys();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].access_key_id, new_id);
    assert_eq!(left[0].status, 1);
    emu.shutdown().await;
}

#[tokio::test]
async fn after_create_without_an_old_key_binds_the_configured_plans() {
    let emu = tencent::start(
        Options {
            usage_plans: vec!["usagePlan-a".into()],
            ..opts()
        },
        loopback(),
    )
    .await
    .unwrap();
    let p = tencent_provider(&emu);
    let params = plans(&["usagePlan-a"]);
    let new = p
        .create(&CreateRequest {
            name: "app-first",
            params: &params,
        })
        .await
        .unwrap();
    p.after_create(new.id.as_deref().unwrap(), None, &params)
        .await
        .unwrap();
    assert_eq!(
        emu.plan_keys("usagePlan-a").unwrap(),
        [new.id.clone().unwrap()]
    );
    // A plan that does not exist is a permanent error.
    let e = p
        .after_create(
            new.id.as_deref().unwrap(),
            None,
            &plans(&["usagePlan-nope"]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e.kind, ProviderErrorKind::Api { status: 404, code, .. } if code == "ResourceNotFound.InvalidUsagePlan"),
        "{e}"
    );
    assert!(!e.is_retryable());
    // Bad params never reach the API.
    let mut bad = Map::new();
    bad.insert("usage_plans".into(), json!("usagePlan-a"));
    let e = p
        .create(&CreateRequest {
            name: "app-x",
            params: &bad,
        })
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ProviderErrorKind::Invalid(_)), "{e}");
    emu.shutdown().await;
}

#[tokio::test]
async fn error_envelopes_map_to_error_classes() {
    let emu = tencent::start(opts(), loopback()).await.unwrap();
    let p = tencent_provider(&emu);
    let keep = |_: &str| true;
    // (code, retryable, class)
    let cases = [
        ("InternalError", true, "api"),
        ("InternalError.ApigwException", true, "api"),
        ("ServiceUnavailable", true, "api"),
        ("RequestLimitExceeded", true, "rate"),
        ("RequestLimitExceeded.UinLimitExceeded", true, "rate"),
        ("RequestLimitExceeded.IPLimitExceeded", false, "api"),
        ("LimitExceeded", false, "quota"),
        ("AuthFailure.UnauthorizedOperation", false, "auth"),
        ("UnauthorizedOperation.UncertifiedUser", false, "auth"),
        (
            "InvalidParameterValue.InvalidFilterNotSupportedName",
            false,
            "api",
        ),
        // Transient per the SDK's error list (issue 12, finding 5).
        ("FailedOperation.CamException", true, "api"),
        ("LimitExceeded.RequestLimitExceeded", true, "rate"),
    ];
    for (code, retryable, class) in cases {
        emu.set_faults(force("DescribeApiKeysStatus", code))
            .unwrap();
        let e = p.list(&keep).await.unwrap_err();
        let got = match &e.kind {
            ProviderErrorKind::Api { .. } => "api",
            ProviderErrorKind::RateLimited { .. } => "rate",
            ProviderErrorKind::Quota(_) => "quota",
            ProviderErrorKind::Auth(_) => "auth",
            _ => "other",
        };
        assert_eq!((got, e.is_retryable()), (class, retryable), "{code}: {e}");
        // Tencent's RequestId rides on the error.
        let rid = e.request_id.clone().unwrap();
        assert_eq!(rid.len(), 36, "{rid}");
        assert!(e.to_string().contains(&rid));
    }
    // Quota on create.
    emu.set_faults(force(
        "CreateApiKey",
        "LimitExceeded.ApiKeyCountLimitExceeded",
    ))
    .unwrap();
    let e = p
        .create(&CreateRequest {
            name: "app-q",
            params: &Map::new(),
        })
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ProviderErrorKind::Quota(_)), "{e}");
    assert!(!e.is_retryable());
    // Not found on delete is an outcome, not an error.
    assert_eq!(
        p.delete("AKIDdoesnotexist").await.unwrap(),
        DeleteOutcome::NotFound
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn the_account_key_limit_is_a_permanent_quota_error() {
    let emu = tencent::start(
        Options {
            keys: 2,
            max_keys: Some(2),
            ..opts()
        },
        loopback(),
    )
    .await
    .unwrap();
    let e = tencent_provider(&emu)
        .create(&CreateRequest {
            name: "app-3",
            params: &Map::new(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind, ProviderErrorKind::Quota(ref m) if m.contains("ApiKeyCountLimitExceeded")),
        "{e}"
    );
    assert!(!e.is_retryable());
    emu.shutdown().await;
}

#[tokio::test]
async fn throttling_in_an_http_200_envelope_is_rate_limited() {
    let emu = tencent::start(
        Options {
            keys: 1,
            rate_limit: Some(1.0),
            ..opts()
        },
        loopback(),
    )
    .await
    .unwrap();
    let p = tencent_provider(&emu);
    p.list(&|_: &str| true).await.unwrap();
    let e = p.list(&|_: &str| true).await.unwrap_err();
    assert!(
        matches!(e.kind, ProviderErrorKind::RateLimited { .. }),
        "{e}"
    );
    assert!(e.is_retryable());
    assert_eq!(emu.stats()["DescribeApiKeysStatus"].rate_limited, 1);
    emu.shutdown().await;
}

#[tokio::test]
async fn bad_credentials_and_clock_skew_are_auth_errors() {
    let emu = tencent::start(opts(), loopback()).await.unwrap();
    let o = emu.options().clone();
    let keep = |_: &str| true;

    let wrong_key = support::tencent_provider_with(&support::tencent_config(
        &emu.endpoint(),
        &o.region,
        &o.secret_id,
        "not-the-key",
    ));
    let e = wrong_key.list(&keep).await.unwrap_err();
    assert!(
        matches!(&e.kind, ProviderErrorKind::Auth(m) if m.starts_with("AuthFailure.SignatureFailure")),
        "{e}"
    );
    assert!(!e.is_retryable());

    let wrong_id = support::tencent_provider_with(&support::tencent_config(
        &emu.endpoint(),
        &o.region,
        "AKIDunknown",
        o.secret_key.expose(),
    ));
    let e = wrong_id.list(&keep).await.unwrap_err();
    assert!(
        matches!(&e.kind, ProviderErrorKind::Auth(m) if m.starts_with("AuthFailure.SecretIdNotFound")),
        "{e}"
    );

    let skewed = tencent_provider(&emu).with_timestamps(Arc::new(|| Utc::now().timestamp() - 600));
    let e = skewed.list(&keep).await.unwrap_err();
    assert!(
        matches!(&e.kind, ProviderErrorKind::Auth(m) if m.starts_with("AuthFailure.SignatureExpire")),
        "{e}"
    );

    // Within the five minutes the emulator allows, a skewed clock works.
    let slight = tencent_provider(&emu).with_timestamps(Arc::new(|| Utc::now().timestamp() - 120));
    slight.list(&keep).await.unwrap();

    let wrong_region = support::tencent_provider_with(&support::tencent_config(
        &emu.endpoint(),
        "ap-nowhere",
        &o.secret_id,
        o.secret_key.expose(),
    ));
    let e = wrong_region.list(&keep).await.unwrap_err();
    assert!(
        matches!(&e.kind, ProviderErrorKind::Api { code, .. } if code == "InvalidParameterValue.InvalidRegion"),
        "{e}"
    );
    assert!(emu.stats()["DescribeApiKeysStatus"].auth_failures >= 3);
    emu.shutdown().await;
}

/// Send one hand-signed request; returns `Response.Error.Code` if any.
async fn raw_call(
    emu: &tencent::Handle,
    signed_content_type: &str,
    sent_content_type: &str,
    action: &str,
    body: &str,
) -> Option<String> {
    let o = emu.options();
    let host = emu.addr().to_string();
    let ts = Utc::now().timestamp();
    let headers = [
        ("content-type", signed_content_type),
        ("host", host.as_str()),
        ("x-tc-action", action),
    ];
    let s = tc3::sign(
        &o.secret_id,
        o.secret_key.expose(),
        &tc3::SignInput {
            method: "POST",
            canonical_query: "",
            headers: &headers,
            payload: body.as_bytes(),
            timestamp: ts,
            service: "apigateway",
        },
    )
    .unwrap();
    let v: Value = reqwest::Client::new()
        .post(format!("{}/", emu.endpoint()))
        .header("Content-Type", sent_content_type)
        .header("X-TC-Action", action)
        .header("X-TC-Version", "2018-08-08")
        .header("X-TC-Timestamp", ts.to_string())
        .header("X-TC-Region", o.region.as_str())
        .header("Authorization", s.authorization)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["Response"]["Error"]["Code"].as_str().map(str::to_string)
}

#[tokio::test]
async fn the_emulator_checks_the_signed_content_type_and_body_byte_for_byte() {
    let emu = tencent::start(opts(), loopback()).await.unwrap();
    let body = r#"{"Limit":10}"#;
    assert_eq!(
        raw_call(
            &emu,
            "application/json",
            "application/json",
            "DescribeApiKeysStatus",
            body
        )
        .await,
        None
    );
    assert_eq!(
        raw_call(
            &emu,
            "application/json; charset=utf-8",
            "application/json",
            "DescribeApiKeysStatus",
            body
        )
        .await
        .as_deref(),
        Some("AuthFailure.SignatureFailure")
    );
    assert_eq!(
        raw_call(
            &emu,
            "application/json; charset=utf-8",
            "application/json; charset=utf-8",
            "DescribeApiKeysStatus",
            body
        )
        .await,
        None
    );
    assert_eq!(
        raw_call(
            &emu,
            "application/json",
            "application/json",
            "DescribeNothing",
            "{}"
        )
        .await
        .as_deref(),
        Some("InvalidAction")
    );
    emu.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn secrets_never_reach_debug_output_or_trace_logs() {
    let logs = support::capture_logs();
    let emu = tencent::start(
        Options {
            keys: 3,
            usage_plans: vec!["usagePlan-a".into()],
            ..opts()
        },
        loopback(),
    )
    .await
    .unwrap();
    let p = tencent_provider(&emu);
    let listed = p.list(&|_: &str| true).await.unwrap();
    let old = &listed[0].id;
    let params = plans(&["usagePlan-a"]);
    let new = p
        .create(&CreateRequest {
            name: "app-new",
            params: &params,
        })
        .await
        .unwrap();
    p.after_create(new.id.as_deref().unwrap(), Some(old), &params)
        .await
        .unwrap();
    p.before_delete(old).await.unwrap();
    p.delete(old).await.unwrap();
    emu.set_faults(force("DescribeApiKeysStatus", "InternalError"))
        .unwrap();
    let err = p.list(&|_: &str| true).await.unwrap_err();
    let wrong = support::tencent_provider_with(&support::tencent_config(
        &emu.endpoint(),
        &emu.options().region,
        &emu.options().secret_id,
        "wrong-key-for-the-log-test",
    ));
    let auth_err = wrong.list(&|_: &str| true).await.unwrap_err();

    let sk = emu.options().secret_key.expose().to_string();
    let new_secret = new
        .secret
        .get("access_key_secret")
        .unwrap()
        .expose()
        .to_string();
    let mut secrets: Vec<(&str, String)> = vec![
        ("provider SecretKey", sk),
        ("new AccessKeySecret", new_secret),
        ("wrong SecretKey", "wrong-key-for-the-log-test".into()),
    ];
    for k in emu.keys() {
        secrets.push((
            "listed AccessKeySecret",
            k.access_key_secret.expose().to_string(),
        ));
    }
    let secrets: Vec<(&str, &str)> = secrets.iter().map(|(n, s)| (*n, s.as_str())).collect();

    let debug = format!(
        "{p:?}\n{new:?}\n{err:?}\n{err}\n{auth_err:?}\n{auth_err}\n{listed:?}\n{:?}",
        emu.keys()
    );
    assert_no_secret("Debug/Display output", &debug, &secrets);
    let text = logs.text();
    assert!(
        text.contains("TRACE") && text.contains("tencent action answered"),
        "TRACE lines were not captured:\n{text}"
    );
    assert!(
        text.contains("provider call"),
        "provider calls were not logged:\n{text}"
    );
    assert_no_secret("TRACE log", &text, &secrets);
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_rotates_a_bound_key_end_to_end() {
    let emu = tencent::start(
        Options {
            usage_plans: vec!["usagePlan-a".into(), "usagePlan-b".into()],
            ..opts()
        },
        loopback(),
    )
    .await
    .unwrap();
    let old = emu
        .insert_key(
            "svc-main",
            Utc::now() - chrono::Duration::days(40),
            &["usagePlan-a"],
        )
        .unwrap();
    let o = emu.options();
    let config = gw_daemon_config(
        &emu,
        "{dir}",
        "{lineage}.env",
        "usagePlan-b",
        "grace_period = \"0s\"",
    );
    let daemon = support::start_daemon(
        &config,
        &[("tc-id", &o.secret_id), ("tc-key", o.secret_key.expose())],
    );
    let (done, dir) = daemon
        .until(|| {
            let keys = emu.keys();
            keys.len() == 1 && keys[0].access_key_id != old.access_key_id
        })
        .await;
    let keys = emu.keys();
    assert!(done, "the old key was not replaced: {keys:?}");
    let new = &keys[0];
    assert!(
        new.secret_name.starts_with("svc-main-"),
        "{}",
        new.secret_name
    );
    assert_eq!(new.status, 1);
    // Bound to the old key's plan and to the configured one.
    assert_eq!(new.usage_plans, ["usagePlan-a", "usagePlan-b"]);
    let published = std::fs::read_to_string(dir.path().join("svc-main.env")).unwrap();
    assert!(published.contains(new.access_key_secret.expose()));
    assert!(published.contains(&new.access_key_id));
    assert_eq!(emu.stats()["DeleteApiKey"].ok, 1);
    emu.shutdown().await;
}

#[tokio::test]
async fn a_bind_answered_with_an_error_envelope_is_counted_by_its_code_not_as_200() {
    let emu = tencent::start(
        Options {
            usage_plans: vec!["usagePlan-a".into()],
            ..opts()
        },
        loopback(),
    )
    .await
    .unwrap();
    let (p, metrics) = provider_with_metrics(&emu);
    let params = plans(&["usagePlan-a"]);
    let new = p
        .create(&CreateRequest {
            name: "app-main-20260101-r1",
            params: &params,
        })
        .await
        .unwrap();
    let id = new.id.clone().unwrap();
    p.after_create(&id, None, &params).await.unwrap();
    // Again: the API answers HTTP 200 with AlreadyBindUsagePlan.
    p.after_create(&id, None, &params).await.unwrap();
    let text = metrics.render();
    let line = |code: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("rekey_provider_requests_total")
                    && l.contains(r#"operation="bind""#)
                    && l.contains(&format!(r#"code="{code}""#))
            })
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    assert_eq!(line("200").as_deref(), Some("1"), "{text}");
    assert_eq!(
        line("UnsupportedOperation.AlreadyBindUsagePlan").as_deref(),
        Some("1"),
        "{text}"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn a_sink_that_keeps_failing_never_makes_the_daemon_bind_again() {
    let emu = tencent::start(
        Options {
            usage_plans: vec!["usagePlan-a".into(), "usagePlan-b".into()],
            ..opts()
        },
        loopback(),
    )
    .await
    .unwrap();
    emu.insert_key(
        "svc-main",
        Utc::now() - chrono::Duration::days(40),
        &["usagePlan-a"],
    )
    .unwrap();
    let o = emu.options();
    let config = gw_daemon_config(
        &emu,
        "{dir}",
        "missing/{lineage}.env",
        "usagePlan-b",
        "max_attempts = 100",
    );
    let daemon = support::start_daemon(
        &config,
        &[("tc-id", &o.secret_id), ("tc-key", o.secret_key.expose())],
    );
    let started = std::time::Instant::now();
    // The sink fails (its directory is missing) for 7 s: several tries.
    let (_, dir) = daemon
        .until(|| started.elapsed() > std::time::Duration::from_secs(7))
        .await;
    let store = rekey::state::Store::open_read_only(&dir.path().join("state.db")).unwrap();
    let r = store.history(None, 1).unwrap()[0].clone();
    let tries = store.sink_acks(&r.id).unwrap()[0].attempts;
    assert!(tries >= 2, "the sink was tried {tries} times");
    // Two plans, each bound once: the bind is committed, not redone per try.
    assert_eq!(emu.stats()["BindSecretIds"].requests, 2);
    assert!(r.prepared_at.is_some());
    emu.shutdown().await;
}

#[tokio::test]
async fn a_delete_that_keeps_failing_never_makes_the_daemon_unbind_and_disable_again() {
    let emu = tencent::start(
        Options {
            usage_plans: vec!["usagePlan-a".into()],
            ..opts()
        },
        loopback(),
    )
    .await
    .unwrap();
    emu.insert_key(
        "svc-main",
        Utc::now() - chrono::Duration::days(40),
        &["usagePlan-a"],
    )
    .unwrap();
    emu.set_faults(Faults {
        force: vec![ForcedFault {
            action: "DeleteApiKey".into(),
            code: "InternalError".into(),
            message: None,
            count: 1000,
        }],
        ..Faults::default()
    })
    .unwrap();
    let o = emu.options();
    let config = gw_daemon_config(
        &emu,
        "{dir}",
        "{lineage}.env",
        "usagePlan-a",
        "grace_period = \"0s\"",
    );
    let daemon = support::start_daemon(
        &config,
        &[("tc-id", &o.secret_id), ("tc-key", o.secret_key.expose())],
    );
    // Until the delete has failed a few times (2 s, 4 s… backoff).
    let (done, _dir) = daemon
        .until(|| {
            emu.stats()
                .get("DeleteApiKey")
                .is_some_and(|s| s.requests >= 3)
        })
        .await;
    assert!(done, "{:?}", emu.stats());
    let stats = emu.stats();
    assert_eq!(stats["DisableApiKey"].requests, 1, "{stats:?}");
    assert_eq!(stats["UnBindSecretIds"].requests, 1, "{stats:?}");
    emu.shutdown().await;
}

fn provider_with_regions(
    emu: &tencent::Handle,
    regions: &[&str],
) -> rekey::provider::tencent::TencentProvider {
    let o = emu.options();
    let mut cfg = support::tencent_config(
        &emu.endpoint(),
        &o.region,
        &o.secret_id,
        o.secret_key.expose(),
    );
    if let rekey::config::ProviderKind::Tencent(rekey::provider::tencent::TencentConfig {
        regions: r,
        ..
    }) = &mut cfg.kind
    {
        *r = regions.iter().map(|s| s.to_string()).collect();
    }
    support::tencent_provider_with(&cfg)
}

#[tokio::test]
async fn the_second_already_bound_code_is_settled_by_reading_the_bindings() {
    let emu = tencent::start(
        Options {
            usage_plans: vec!["usagePlan-a".into()],
            already_bound_code: tencent::ALREADY_BOUND_CODES[1].into(),
            ..opts()
        },
        loopback(),
    )
    .await
    .unwrap();
    let old = emu
        .insert_key("app-main", Utc::now(), &["usagePlan-a"])
        .unwrap();
    let p = tencent_provider(&emu);
    let params = plans(&["usagePlan-a"]);
    let new = p
        .create(&CreateRequest {
            name: "app-main-20260101-r1",
            params: &params,
        })
        .await
        .unwrap();
    let new_id = new.id.clone().unwrap();
    p.after_create(&new_id, Some(&old.access_key_id), &params)
        .await
        .unwrap();
    // Run again (a restart before publishing): every bind now answers
    // UnsupportedBindApiKey, which the bindings prove means "bound".
    p.after_create(&new_id, Some(&old.access_key_id), &params)
        .await
        .unwrap();
    assert!(emu.stats()["BindSecretIds"].errors >= 1);
    assert_eq!(emu.plan_keys("usagePlan-a").unwrap().len(), 2);
    // An UnsupportedOperation that does not mean "bound" still fails: a
    // disabled key cannot be bound.
    let other = emu.insert_key("app-off", Utc::now(), &[]).unwrap();
    p.before_delete(&other.access_key_id).await.unwrap();
    let e = p
        .after_create(&other.access_key_id, None, &params)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("UnsupportedOperation.InvalidStatus"),
        "{e}"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn usage_plans_in_an_extra_region_are_found_bound_and_unbound() {
    let emu = tencent::start(
        Options {
            extra_regions: vec!["ap-shanghai".into()],
            ..opts()
        },
        loopback(),
    )
    .await
    .unwrap();
    emu.add_usage_plan_in("ap-shanghai", "usagePlan-sh");
    let old = emu
        .insert_key("app-main", Utc::now(), &["usagePlan-sh"])
        .unwrap();
    let p = provider_with_regions(&emu, &["ap-shanghai"]);
    let new = p
        .create(&CreateRequest {
            name: "app-main-20260101-r1",
            params: &Map::new(),
        })
        .await
        .unwrap();
    let new_id = new.id.clone().unwrap();
    p.after_create(&new_id, Some(&old.access_key_id), &Map::new())
        .await
        .unwrap();
    assert!(emu.plan_keys("usagePlan-sh").unwrap().contains(&new_id));
    p.before_delete(&old.access_key_id).await.unwrap();
    assert_eq!(
        p.delete(&old.access_key_id).await.unwrap(),
        DeleteOutcome::Deleted
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn a_binding_in_a_region_not_searched_keeps_the_old_key_enabled() {
    let emu = tencent::start(
        Options {
            extra_regions: vec!["ap-shanghai".into()],
            ..opts()
        },
        loopback(),
    )
    .await
    .unwrap();
    emu.add_usage_plan_in("ap-shanghai", "usagePlan-sh");
    let old = emu
        .insert_key("app-main", Utc::now(), &["usagePlan-sh"])
        .unwrap();
    // Configured with the main region only: the binding is invisible.
    let p = tencent_provider(&emu);
    p.before_delete(&old.access_key_id).await.unwrap();
    let e = p.delete(&old.access_key_id).await.unwrap_err();
    assert!(e.to_string().contains("cannot see"), "{e}");
    assert_eq!(e.outcome(), rekey::provider::Outcome::Refused);
    let status = |emu: &tencent::Handle| {
        emu.keys()
            .into_iter()
            .find(|k| k.access_key_id == old.access_key_id)
            .unwrap()
            .status
    };
    // Put back in service, and never disabled again by this process.
    assert_eq!(status(&emu), 1);
    let disables = emu.stats()["DisableApiKey"].requests;
    assert!(p.before_delete(&old.access_key_id).await.is_err());
    assert_eq!(emu.stats()["DisableApiKey"].requests, disables);
    assert_eq!(status(&emu), 1);
    // A region that cannot be listed stops before the disable too.
    let blind = provider_with_regions(&emu, &["ap-nowhere"]);
    let e = blind.before_delete(&old.access_key_id).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("InvalidParameterValue.InvalidRegion"),
        "{e}"
    );
    assert_eq!(emu.stats()["DisableApiKey"].requests, disables);
    emu.shutdown().await;
}

#[tokio::test]
async fn a_rate_limit_code_outside_its_family_is_retried_not_a_quota() {
    let emu = tencent::start(Options { keys: 1, ..opts() }, loopback())
        .await
        .unwrap();
    let p = tencent_provider(&emu);
    for code in [
        "LimitExceeded.RequestLimitExceeded",
        "FailedOperation.CamException",
        "UnsupportedOperation.RequestPostError",
    ] {
        emu.set_faults(force("DescribeApiKeysStatus", code))
            .unwrap();
        let e = p.list(&|_: &str| true).await.unwrap_err();
        assert!(e.is_retryable(), "{code}: {e}");
    }
    emu.set_faults(force("CreateApiKey", "LimitExceeded.RequestLimitExceeded"))
        .unwrap();
    let e = p
        .create(&CreateRequest {
            name: "app-x",
            params: &Map::new(),
        })
        .await
        .unwrap_err();
    assert!(e.is_throttled(), "{e}");
    assert_eq!(e.outcome(), rekey::provider::Outcome::Retry);
    emu.set_faults(force(
        "CreateApiKey",
        "LimitExceeded.ApiKeyCountLimitExceeded",
    ))
    .unwrap();
    let e = p
        .create(&CreateRequest {
            name: "app-x",
            params: &Map::new(),
        })
        .await
        .unwrap_err();
    assert!(!e.is_retryable() && !e.is_throttled(), "{e}");
    emu.shutdown().await;
}

#[tokio::test]
async fn error_codes_a_server_makes_up_never_grow_the_metrics_or_the_error_unbounded() {
    let emu = tencent::start(opts(), loopback()).await.unwrap();
    let (p, metrics) = provider_with_metrics(&emu);
    let keep = |_: &str| true;
    // A hostile or buggy server: a fresh code on every answer, long ones,
    // and known ones (which keep their own label).
    let long = format!("FailedOperation.{}", "X".repeat(5000));
    let mut codes: Vec<String> = (0..20)
        .map(|i| format!("FailedOperation.Made{i}"))
        .collect();
    codes.extend((0..20).map(|i| format!("Invented{i}.Code")));
    codes.push(long.clone());
    codes.push("InvalidParameterValue.InvalidFilterNotSupportedName".into());
    for code in &codes {
        emu.set_faults(force("DescribeApiKeysStatus", code))
            .unwrap();
        let e = p.list(&keep).await.unwrap_err();
        assert!(e.to_string().len() < 1000, "{} bytes", e.to_string().len());
    }
    let text = metrics.render();
    let labels: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("rekey_provider_requests_total") && l.contains(r#"operation="list""#)
        })
        .filter_map(|l| l.split(r#"code=""#).nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        labels.into_iter().collect::<Vec<_>>(),
        [
            "FailedOperation",
            "InvalidParameterValue.InvalidFilterNotSupportedName",
            "other"
        ],
        "{text}"
    );
    emu.shutdown().await;
}
