//! The Vault / OpenBao KV v2 sink against a real OpenBao dev server.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures_util::FutureExt;
use rekey::clock::ManualClock;
use rekey::config::{SecretRef, SinkConfig, SinkKind, TargetTemplate, VaultAuth, VaultSinkConfig};
use rekey::secret::Secret;
use rekey::sink::vault::{VaultSink, WriteStage};
use rekey::sink::{ReadBack, Sink};
use serde_json::json;

use super::NewKey;
use crate::support::logs::capture_logs_at_trace;
use crate::support::openbao::OpenBao;

fn config(bao: &OpenBao, auth: VaultAuth, ca: bool) -> SinkConfig {
    SinkConfig {
        name: "vault".into(),
        ca_file: if ca { bao.ca_file.clone() } else { None },
        timeout: Duration::from_secs(10),
        kind: SinkKind::Vault(VaultSinkConfig {
            address: bao.addr.clone(),
            mount: "secret".into(),
            path: TargetTemplate::parse("maas/{lineage}").unwrap(),
            namespace: None,
            auth,
            adopt_existing: false,
        }),
    }
}

fn sink(bao: &OpenBao, auth: VaultAuth) -> VaultSink {
    sink_in(bao, auth, None)
}

fn sink_in(bao: &OpenBao, auth: VaultAuth, namespace: Option<&str>) -> VaultSink {
    let mut cfg = config(bao, auth, true);
    if let SinkKind::Vault(v) = &mut cfg.kind {
        v.namespace = namespace.map(str::to_string);
    }
    let SinkKind::Vault(v) = &cfg.kind else {
        unreachable!()
    };
    VaultSink::new(&cfg.name, v, &cfg).unwrap()
}

fn token_auth(token: &str) -> VaultAuth {
    VaultAuth::Token(SecretRef::Literal(Secret::new(token)))
}

fn approle_auth(role_id: &str, secret_id: &str) -> VaultAuth {
    VaultAuth::AppRole {
        role_id: SecretRef::Literal(Secret::new(role_id)),
        secret_id: SecretRef::Literal(Secret::new(secret_id)),
        mount: "approle".into(),
    }
}

/// OpenBao service tokens look like `s.` + 24 characters; none may appear
/// in logs or messages.
fn assert_no_token_shape(text: &str) {
    let re = regex::Regex::new(r"\bs\.[A-Za-z0-9]{20,}").unwrap();
    assert!(!re.is_match(text), "a token-shaped string leaked:\n{text}");
}

#[tokio::test]
async fn vault_sink_writes_with_cas_labels_and_reads_back_over_tls_with_a_token() {
    let Some(bao) = OpenBao::start_tls().await else {
        return;
    };
    bao.create_sink_policy("rekey", "maas").await;
    let token = bao.create_token("rekey", "1h").await;
    let (logs, _guard) = capture_logs_at_trace();
    let vault = sink(&bao, token_auth(&token));

    let first = NewKey::new("billing", "1a2b3c4d");
    let detail = vault.publish(&first.publication()).await.unwrap();
    assert_eq!(detail.as_deref(), Some("secret/maas/billing v1"));

    // What OpenBao holds is exactly the key's fields, labelled.
    let stored = bao.read_kv("maas/billing").await;
    assert_eq!(
        stored["data"]["access_key_id"],
        first.value("access_key_id")
    );
    assert_eq!(
        stored["data"]["access_key_secret"],
        first.value("access_key_secret")
    );
    assert_eq!(stored["data"].as_object().unwrap().len(), 2);
    let meta = bao.read_metadata("maas/billing").await;
    let custom = &meta["custom_metadata"];
    assert_eq!(custom["rekey_policy"], "maas-prod");
    assert_eq!(custom["rekey_lineage"], "billing");
    assert_eq!(custom["rekey_rotation"], "1a2b3c4d");
    assert_eq!(custom["key_id"], "key-1a2b3c4d");
    assert_eq!(custom["expires_at"], "2026-12-22T10:00:00Z");
    assert_eq!(custom["fingerprint"], first.fingerprint.as_str());

    // The next rotation writes version 2 on top (cas = 1).
    let second = NewKey::new("billing", "5e6f7a8b");
    let detail = vault.publish(&second.publication()).await.unwrap();
    assert_eq!(detail.as_deref(), Some("secret/maas/billing v2"));
    assert_eq!(
        vault.read_back("maas-prod", "billing").await.unwrap(),
        ReadBack::Fingerprint(second.fingerprint.clone())
    );
    assert_eq!(
        vault.read_back("maas-prod", "never-written").await.unwrap(),
        ReadBack::Missing
    );
    let stats = vault.auth_stats();
    assert_eq!((stats.lookups, stats.logins), (1, 0), "{stats:?}");

    // Without the server's CA the TLS handshake is refused: no switch
    // turns verification off.
    let cfg = config(&bao, token_auth(&token), false);
    let SinkKind::Vault(v) = &cfg.kind else {
        unreachable!()
    };
    let untrusting = VaultSink::new("vault", v, &cfg).unwrap();
    let err = untrusting
        .publish(&NewKey::new("billing", "9c0d1e2f").publication())
        .await
        .unwrap_err();
    assert!(err.retryable, "{err:?}");
    assert!(!err.message.contains(&token));

    let text = logs.text();
    assert!(
        text.contains("vault call"),
        "no sink logs captured:\n{text}"
    );
    let mut secrets = first.secret_values();
    secrets.extend(second.secret_values());
    secrets.push(token.clone());
    logs.assert_free_of(&secrets.iter().map(String::as_str).collect::<Vec<_>>());
    assert_no_token_shape(&text);
    assert!(!format!("{vault:?}").contains(&token));
}

#[tokio::test]
async fn vault_sink_retries_when_another_writer_wins_the_cas_race() {
    let Some(bao) = OpenBao::start().await else {
        return;
    };
    let bao = Arc::new(bao);
    bao.create_sink_policy("rekey", "maas").await;
    let token = bao.create_token("rekey", "1h").await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hook_bao = bao.clone();
    let hook_seen = seen.clone();
    let vault = sink(&bao, token_auth(&token)).with_write_hook(Arc::new(move |stage| {
        let bao = hook_bao.clone();
        let seen = hook_seen.clone();
        async move {
            seen.lock().unwrap().push(stage);
            // Another writer gets in between our read and our first write.
            if let WriteStage::BeforeCasWrite { attempt: 1, .. } = stage {
                bao.write_kv("maas/billing", json!({"api_key": "someone-else"}))
                    .await;
            }
        }
        .boxed()
    }));
    let key = NewKey::new("billing", "1a2b3c4d");
    let detail = vault.publish(&key.publication()).await.unwrap();
    assert_eq!(detail.as_deref(), Some("secret/maas/billing v2"));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            WriteStage::BeforeCasWrite {
                attempt: 1,
                read_version: 0
            },
            WriteStage::BeforeCasWrite {
                attempt: 2,
                read_version: 1
            },
            WriteStage::BeforeReadBack { version: 2 },
        ]
    );
    // Ours is on top, the other writer's version is kept underneath.
    let stored = bao.read_kv("maas/billing").await;
    assert_eq!(stored["data"]["access_key_id"], key.value("access_key_id"));
    assert_eq!(stored["metadata"]["version"], 2);
}

#[tokio::test]
async fn vault_sink_refuses_a_write_under_a_fence_older_than_the_paths_label() {
    let Some(bao) = OpenBao::start().await else {
        return;
    };
    bao.create_sink_policy("rekey", "maas").await;
    let token = bao.create_token("rekey", "1h").await;
    let vault = sink(&bao, token_auth(&token));
    let newer = NewKey::new("billing", "1a2b3c4d");
    vault
        .publish(&rekey::sink::Publication {
            fence: Some(5),
            ..newer.publication()
        })
        .await
        .unwrap();
    let meta = bao.read_metadata("maas/billing").await;
    assert_eq!(meta["custom_metadata"]["rekey_fence"], "5");
    let stale = NewKey::new("billing", "5e6f7a8b");
    let refused = vault
        .publish(&rekey::sink::Publication {
            fence: Some(4),
            ..stale.publication()
        })
        .await;
    let stored = bao.read_kv("maas/billing").await;
    if rekey::sink::TOKENS_CHECKED {
        let e = refused.unwrap_err();
        assert!(e.fenced && !e.retryable, "{e:?}");
        assert!(e.message.contains("fence token 5"), "{}", e.message);
        assert_eq!(
            stored["data"]["access_key_id"],
            newer.value("access_key_id"),
            "the newer leader's key stays"
        );
    } else {
        refused.unwrap();
    }
}

#[tokio::test]
async fn vault_sink_gives_up_after_five_cas_conflicts_with_a_retryable_error() {
    let Some(bao) = OpenBao::start().await else {
        return;
    };
    let bao = Arc::new(bao);
    bao.create_sink_policy("rekey", "maas").await;
    let token = bao.create_token("rekey", "1h").await;
    let attempts = Arc::new(AtomicU32::new(0));
    let hook_bao = bao.clone();
    let hook_attempts = attempts.clone();
    let vault = sink(&bao, token_auth(&token)).with_write_hook(Arc::new(move |stage| {
        let bao = hook_bao.clone();
        let attempts = hook_attempts.clone();
        async move {
            if let WriteStage::BeforeCasWrite { .. } = stage {
                attempts.fetch_add(1, Ordering::SeqCst);
                bao.write_kv("maas/billing", json!({"api_key": "someone-else"}))
                    .await;
            }
        }
        .boxed()
    }));
    let key = NewKey::new("billing", "1a2b3c4d");
    let err = vault.publish(&key.publication()).await.unwrap_err();
    assert!(err.retryable, "{err:?}");
    assert!(err.message.contains("check-and-set"), "{}", err.message);
    assert_eq!(attempts.load(Ordering::SeqCst), 5);
    let stored = bao.read_kv("maas/billing").await;
    assert_eq!(stored["data"]["api_key"], "someone-else");
    for v in key.secret_values() {
        assert!(!err.message.contains(&v));
    }
}

#[tokio::test]
async fn vault_read_back_catches_a_write_that_was_overwritten() {
    let Some(bao) = OpenBao::start().await else {
        return;
    };
    let bao = Arc::new(bao);
    bao.create_sink_policy("rekey", "maas").await;
    let token = bao.create_token("rekey", "1h").await;
    let armed = Arc::new(AtomicBool::new(true));
    let hook_bao = bao.clone();
    let hook_armed = armed.clone();
    let vault = sink(&bao, token_auth(&token)).with_write_hook(Arc::new(move |stage| {
        let bao = hook_bao.clone();
        let armed = hook_armed.clone();
        async move {
            if let WriteStage::BeforeReadBack { .. } = stage
                && armed.swap(false, Ordering::SeqCst)
            {
                bao.write_kv("maas/billing", json!({"api_key": "clobbered"}))
                    .await;
            }
        }
        .boxed()
    }));
    let key = NewKey::new("billing", "1a2b3c4d");
    let err = vault.publish(&key.publication()).await.unwrap_err();
    assert!(err.retryable, "{err:?}");
    assert!(
        err.message.contains("different fingerprint"),
        "{}",
        err.message
    );
    // read_back reports what is there now: not our key.
    match vault.read_back("maas-prod", "billing").await.unwrap() {
        ReadBack::Fingerprint(fp) => assert_ne!(fp, key.fingerprint),
        other => panic!("expected a fingerprint, got {other:?}"),
    }
    // The engine's retry publishes again and this time it sticks.
    let detail = vault.publish(&key.publication()).await.unwrap();
    assert_eq!(detail.as_deref(), Some("secret/maas/billing v3"));
    assert_eq!(
        vault.read_back("maas-prod", "billing").await.unwrap(),
        ReadBack::Fingerprint(key.fingerprint.clone())
    );
}

#[tokio::test]
async fn a_revoked_static_token_fails_permanently_without_showing_the_token() {
    let Some(bao) = OpenBao::start().await else {
        return;
    };
    bao.create_sink_policy("rekey", "maas").await;
    let token = bao.create_token("rekey", "1h").await;
    let vault = sink(&bao, token_auth(&token));
    vault
        .publish(&NewKey::new("billing", "1a2b3c4d").publication())
        .await
        .unwrap();
    bao.revoke_token(&token).await;
    let err = vault
        .publish(&NewKey::new("billing", "5e6f7a8b").publication())
        .await
        .unwrap_err();
    assert!(!err.retryable, "{err:?}");
    assert!(err.message.contains("permission denied"), "{}", err.message);
    let shown = format!("{err} {err:?} {vault:?}");
    assert!(!shown.contains(&token), "{shown}");
    assert_no_token_shape(&shown);
    let err = vault.read_back("maas-prod", "billing").await.unwrap_err();
    assert!(err.message.contains("permission denied"), "{}", err.message);
}

#[tokio::test]
async fn vault_sink_logs_in_again_after_its_approle_token_is_revoked() {
    let Some(bao) = OpenBao::start().await else {
        return;
    };
    bao.create_sink_policy("rekey", "maas").await;
    let (role_id, secret_id) = bao.setup_approle("rekey", "rekey", "20m").await;
    let (logs, _guard) = capture_logs_at_trace();
    let vault = sink(&bao, approle_auth(&role_id, &secret_id));
    let first = NewKey::new("billing", "1a2b3c4d");
    vault.publish(&first.publication()).await.unwrap();
    assert_eq!(vault.auth_stats().logins, 1);

    // Every AppRole token is revoked behind the sink's back: the next
    // write is denied, the sink logs in once more and succeeds.
    bao.revoke_approle_tokens().await;
    let second = NewKey::new("billing", "5e6f7a8b");
    let detail = vault.publish(&second.publication()).await.unwrap();
    assert_eq!(detail.as_deref(), Some("secret/maas/billing v2"));
    assert_eq!(vault.auth_stats().logins, 2);
    assert_eq!(
        vault.read_back("maas-prod", "billing").await.unwrap(),
        ReadBack::Fingerprint(second.fingerprint.clone())
    );

    // A bad secret_id is a clear, permanent error.
    let wrong = sink(&bao, approle_auth(&role_id, "not-the-secret-id"));
    let err = wrong
        .publish(&NewKey::new("billing", "9c0d1e2f").publication())
        .await
        .unwrap_err();
    assert!(!err.retryable, "{err:?}");
    assert!(
        err.message.contains("invalid role or secret ID"),
        "{}",
        err.message
    );

    let text = logs.text();
    assert!(text.contains("logged in to vault with approle"), "{text}");
    let mut secrets = first.secret_values();
    secrets.extend(second.secret_values());
    secrets.push(secret_id.clone());
    secrets.push(bao.root_token.clone());
    logs.assert_free_of(&secrets.iter().map(String::as_str).collect::<Vec<_>>());
    assert_no_token_shape(&text);
}

#[tokio::test]
async fn vault_sink_renews_at_two_thirds_of_the_ttl_and_logs_in_when_renewal_is_refused() {
    let Some(bao) = OpenBao::start().await else {
        return;
    };
    bao.create_sink_policy("rekey", "maas").await;
    let (role_id, secret_id) = bao.setup_approle("rekey", "rekey", "20m").await;
    let clock = ManualClock::new(Utc::now());
    let vault = sink(&bao, approle_auth(&role_id, &secret_id)).with_clock(Arc::new(clock.clone()));
    let publish = |rot: &'static str| {
        let key = NewKey::new("billing", rot);
        let vault = &vault;
        async move { vault.publish(&key.publication()).await.map(|_| ()) }
    };
    publish("00000001").await.unwrap();
    assert_eq!(
        (vault.auth_stats().logins, vault.auth_stats().renewals),
        (1, 0)
    );

    // Before 2/3 of the 20 minutes: the token is used as it is.
    clock.advance(chrono::Duration::minutes(13));
    publish("00000002").await.unwrap();
    assert_eq!(
        (vault.auth_stats().logins, vault.auth_stats().renewals),
        (1, 0)
    );

    // Past 2/3: renewed, not replaced.
    clock.advance(chrono::Duration::minutes(1));
    publish("00000003").await.unwrap();
    assert_eq!(
        (vault.auth_stats().logins, vault.auth_stats().renewals),
        (1, 1)
    );

    // The renewal clock restarted at the renewal.
    clock.advance(chrono::Duration::minutes(13));
    publish("00000004").await.unwrap();
    assert_eq!(
        (vault.auth_stats().logins, vault.auth_stats().renewals),
        (1, 1)
    );

    // The next renewal is refused (the token was revoked): log in again.
    bao.revoke_approle_tokens().await;
    clock.advance(chrono::Duration::minutes(1));
    publish("00000005").await.unwrap();
    assert_eq!(
        (vault.auth_stats().logins, vault.auth_stats().renewals),
        (2, 1)
    );
}

#[tokio::test]
async fn vault_sink_renews_a_static_token_and_keeps_using_it() {
    let Some(bao) = OpenBao::start().await else {
        return;
    };
    bao.create_sink_policy("rekey", "maas").await;
    let token = bao.create_token("rekey", "30m").await;
    let clock = ManualClock::new(Utc::now());
    let vault = sink(&bao, token_auth(&token)).with_clock(Arc::new(clock.clone()));
    vault
        .publish(&NewKey::new("billing", "00000001").publication())
        .await
        .unwrap();
    clock.advance(chrono::Duration::minutes(21));
    vault
        .publish(&NewKey::new("billing", "00000002").publication())
        .await
        .unwrap();
    let stats = vault.auth_stats();
    assert_eq!((stats.lookups, stats.renewals), (1, 1), "{stats:?}");
    // The server agrees: the token carries a renewal time now.
    let (status, v) = bao
        .api(reqwest::Method::GET, "auth/token/lookup-self", &token, None)
        .await;
    assert_eq!(status, 200);
    assert!(v["data"]["last_renewal_time"].as_u64().is_some(), "{v}");
}

#[tokio::test]
async fn vault_sink_writes_inside_a_namespace() {
    let Some(bao) = OpenBao::start().await else {
        return;
    };
    bao.root(
        reqwest::Method::POST,
        "sys/namespaces/team-a",
        Some(json!({})),
    )
    .await;
    let (status, v) = bao
        .api_in(
            Some("team-a"),
            reqwest::Method::POST,
            "sys/mounts/secret",
            &bao.root_token,
            Some(json!({"type": "kv", "options": {"version": "2"}})),
        )
        .await;
    assert_eq!(status, 204, "{v}");
    let vault = sink_in(&bao, token_auth(&bao.root_token), Some("team-a"));
    let key = NewKey::new("billing", "1a2b3c4d");
    let detail = vault.publish(&key.publication()).await.unwrap();
    assert_eq!(detail.as_deref(), Some("secret/maas/billing v1"));
    // It landed in the namespace, not at the root.
    let (status, v) = bao
        .api_in(
            Some("team-a"),
            reqwest::Method::GET,
            "secret/data/maas/billing",
            &bao.root_token,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        v["data"]["data"]["access_key_id"],
        key.value("access_key_id")
    );
    let (status, _) = bao
        .api(
            reqwest::Method::GET,
            "secret/data/maas/billing",
            &bao.root_token,
            None,
        )
        .await;
    assert_eq!(status, 404);
    // A root token does not expire: no renewal is ever due.
    assert_eq!(vault.auth_stats().renewals, 0);
}

#[tokio::test]
async fn vault_sink_never_overwrites_a_secret_it_did_not_write_for_this_lineage() {
    let Some(bao) = OpenBao::start_tls().await else {
        return;
    };
    bao.create_sink_policy("rekey", "maas").await;
    let token = bao.create_token("rekey", "1h").await;
    // Someone else's secret where a key named `v1/db-password` would land.
    bao.write_kv(
        "maas/v1/db-password",
        serde_json::json!({"password": "theirs"}),
    )
    .await;
    let vault = sink(&bao, token_auth(&token));
    let key = NewKey::new("v1/db-password", "1a2b3c4d");
    let err = vault.publish(&key.publication()).await.unwrap_err();
    assert!(!err.retryable, "{err:?}");
    assert!(
        err.message
            .contains("refusing to overwrite secret/maas/v1/db-password")
            && err.message.contains("adopt_existing"),
        "{}",
        err.message
    );
    assert_eq!(
        bao.read_kv("maas/v1/db-password").await["data"]["password"],
        "theirs"
    );

    // A path labelled for another policy or lineage is not ours either.
    let other = NewKey::new("billing", "1a2b3c4d");
    vault.publish(&other.publication()).await.unwrap();
    let mut stolen = NewKey::new("billing", "5e6f7a8b");
    stolen.policy = "another-policy".into();
    let err = vault.publish(&stolen.publication()).await.unwrap_err();
    assert!(
        err.message.contains("refusing to overwrite"),
        "{}",
        err.message
    );
    assert_eq!(
        vault.read_back("maas-prod", "billing").await.unwrap(),
        ReadBack::Fingerprint(other.fingerprint.clone())
    );
    // Its own path (labelled on the first write) is written again.
    vault
        .publish(&NewKey::new("billing", "9c0d1e2f").publication())
        .await
        .unwrap();

    // Adopting is explicit.
    let mut cfg = config(&bao, token_auth(&token), true);
    if let SinkKind::Vault(v) = &mut cfg.kind {
        v.adopt_existing = true;
    }
    let SinkKind::Vault(v) = &cfg.kind else {
        unreachable!()
    };
    let adopting = VaultSink::new("vault", v, &cfg).unwrap();
    adopting.publish(&key.publication()).await.unwrap();
    let meta = bao.read_metadata("maas/v1/db-password").await;
    assert_eq!(meta["custom_metadata"]["rekey_lineage"], "v1/db-password");
}

/// The store's record of targets this sink wrote counts as ownership (the
/// seam the ownership work fills).
#[tokio::test]
async fn vault_sink_writes_an_unlabelled_path_the_store_says_it_wrote() {
    struct Record;
    impl rekey::sink::TargetRecord for Record {
        fn wrote(&self, sink: &str, target: &str, policy: &str, lineage: &str) -> bool {
            (sink, target, policy, lineage)
                == ("vault", "secret/maas/billing", "maas-prod", "billing")
        }
    }
    let Some(bao) = OpenBao::start_tls().await else {
        return;
    };
    bao.create_sink_policy("rekey", "maas").await;
    let token = bao.create_token("rekey", "1h").await;
    bao.write_kv("maas/billing", serde_json::json!({"api_key": "old"}))
        .await;
    bao.write_kv("maas/other", serde_json::json!({"api_key": "old"}))
        .await;
    let vault = sink(&bao, token_auth(&token)).with_target_record(Arc::new(Record));
    vault
        .publish(&NewKey::new("billing", "1a2b3c4d").publication())
        .await
        .unwrap();
    assert!(
        vault
            .publish(&NewKey::new("other", "1a2b3c4d").publication())
            .await
            .is_err()
    );
}

/// A Vault (or something in its place) that answers the data write by
/// echoing the secret in every encoding gets none of it into the error or
/// the logs: the answer to the request carrying the secret is described by
/// status, type and length only.
#[tokio::test]
async fn a_vault_echoing_the_written_secret_leaks_it_nowhere() {
    use axum::extract::Request;
    use axum::response::IntoResponse;
    async fn fake(req: Request) -> axum::response::Response {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let body = axum::body::to_bytes(req.into_body(), 1 << 20)
            .await
            .unwrap();
        match (method.as_str(), path.as_str()) {
            ("GET", "/v1/auth/token/lookup-self") => {
                axum::Json(json!({"data": {"ttl": 0, "renewable": false}})).into_response()
            }
            ("GET", p) if p.starts_with("/v1/secret/metadata/") => {
                (axum::http::StatusCode::NOT_FOUND, "{\"errors\":[]}").into_response()
            }
            ("POST", p) if p.starts_with("/v1/secret/metadata/") => {
                axum::http::StatusCode::NO_CONTENT.into_response()
            }
            ("POST", p) if p.starts_with("/v1/secret/data/") => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let mut echoed = Vec::new();
                for s in v["data"].as_object().unwrap().values() {
                    echoed.extend(crate::support::receiver::encodings(s.as_str().unwrap()));
                }
                (
                    axum::http::StatusCode::BAD_REQUEST,
                    axum::Json(json!({"errors": echoed})),
                )
                    .into_response()
            }
            _ => axum::http::StatusCode::NOT_FOUND.into_response(),
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, axum::Router::new().fallback(fake))
            .await
            .unwrap()
    });
    let cfg = SinkConfig {
        name: "vault".into(),
        ca_file: None,
        timeout: Duration::from_secs(5),
        kind: SinkKind::Vault(VaultSinkConfig {
            address: format!("http://{addr}"),
            mount: "secret".into(),
            path: TargetTemplate::parse("maas/{lineage}").unwrap(),
            namespace: None,
            auth: token_auth("root"),
            adopt_existing: false,
        }),
    };
    let SinkKind::Vault(v) = &cfg.kind else {
        unreachable!()
    };
    let (logs, _guard) = capture_logs_at_trace();
    let vault = VaultSink::new("vault", v, &cfg).unwrap();
    let key = NewKey::new("billing", "1a2b3c4d");
    let err = vault.publish(&key.publication()).await.unwrap_err();
    assert!(
        err.message
            .contains("writing secret/maas/billing: HTTP 400 (application/json"),
        "{}",
        err.message
    );
    let shown = format!("{err} {err:?}\n{}", logs.text());
    for s in key.secret_values() {
        for enc in crate::support::receiver::encodings(&s) {
            assert!(!shown.contains(&enc), "an echo leaked ({enc}):\n{shown}");
        }
    }
    server.abort();
}
