//! The webhook sink against the in-test receiver.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rekey::clock::ManualClock;
use rekey::config::{SecretRef, SinkConfig, SinkKind, WebhookSinkConfig};
use rekey::secret::Secret;
use rekey::sink::webhook::WebhookSink;
use rekey::sink::{ReadBack, Sink};

use super::NewKey;
use crate::support::logs::capture_logs_at_trace;
use crate::support::python::{standardwebhooks_python, verify_with_official_library};
use crate::support::receiver::{Reply, WebhookReceiver, random_whsec};

fn webhook_sink(url: &str, secrets: &[&str], timeout: Duration) -> WebhookSink {
    let cfg = WebhookSinkConfig {
        url: url.to_string(),
        secrets: secrets
            .iter()
            .map(|s| SecretRef::Literal(Secret::new(*s)))
            .collect(),
    };
    let common = SinkConfig {
        name: "deploy-hook".into(),
        ca_file: None,
        timeout,
        kind: SinkKind::Webhook(cfg.clone()),
    };
    WebhookSink::new("deploy-hook", &cfg, &common).unwrap()
}

#[tokio::test]
async fn webhook_sink_posts_a_signed_key_published_event_with_the_secret() {
    let (old, new) = (random_whsec(), random_whsec());
    let receiver = WebhookReceiver::start(&[&old, &new]).await;
    let clock = ManualClock::new(Utc::now());
    let (logs, _guard) = capture_logs_at_trace();
    // Two secrets: the receiver is mid-way through rotating its secret.
    let sink = webhook_sink(&receiver.url, &[&old, &new], Duration::from_secs(15))
        .with_clock(Arc::new(clock.clone()));
    let key = NewKey::new("billing", "1a2b3c4d");
    let detail = sink.publish(&key.publication()).await.unwrap();
    assert!(detail.unwrap().contains("HTTP 200"));

    let got = receiver.received();
    assert_eq!(got.len(), 1);
    let req = &got[0];
    // One signature per secret, each verified independently.
    assert_eq!(req.verified, Ok(vec![0, 1]));
    assert_eq!(
        req.header("webhook-signature").unwrap().split(' ').count(),
        2
    );
    assert_eq!(req.header("webhook-id"), Some("msg_1a2b3c4d_deploy-hook"));
    assert_eq!(
        req.header("webhook-timestamp").unwrap(),
        clock.now_unix().to_string()
    );
    assert_eq!(req.header("content-type"), Some("application/json"));
    let body = req.json();
    assert_eq!(body["type"], "key.published");
    assert!(chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).is_ok());
    let data = &body["data"];
    assert_eq!(data["policy"], "maas-prod");
    assert_eq!(data["lineage"], "billing");
    assert_eq!(data["provider"], "gw");
    assert_eq!(data["rotation_id"], "1a2b3c4d");
    assert_eq!(data["key_id"], "key-1a2b3c4d");
    assert_eq!(data["key_name"], key.key_name.as_str());
    assert_eq!(data["created_at"], "2026-11-22T10:00:00Z");
    assert_eq!(data["expires_at"], "2026-12-22T10:00:00Z");
    assert_eq!(data["fingerprint"], key.fingerprint.as_str());
    assert_eq!(data["secret"]["access_key_id"], key.value("access_key_id"));
    assert_eq!(
        data["secret"]["access_key_secret"],
        key.value("access_key_secret")
    );
    // A webhook cannot be read back.
    assert_eq!(
        sink.read_back("maas-prod", "billing").await.unwrap(),
        ReadBack::Unsupported
    );

    let text = logs.text();
    assert!(
        text.contains("webhook sink response"),
        "no logs captured:\n{text}"
    );
    logs.assert_free_of(&[
        &key.value("access_key_id"),
        &key.value("access_key_secret"),
        &old[6..],
        &new[6..],
    ]);
}

trait NowUnix {
    fn now_unix(&self) -> i64;
}

impl NowUnix for ManualClock {
    fn now_unix(&self) -> i64 {
        rekey::clock::Clock::now(self).timestamp()
    }
}

#[tokio::test]
async fn webhook_sink_sends_the_same_webhook_id_on_every_retry() {
    let secret = random_whsec();
    let receiver = WebhookReceiver::start(&[&secret]).await;
    receiver.script([Reply::Status(500), Reply::Status(503)]);
    let clock = ManualClock::new(Utc::now());
    let sink = webhook_sink(&receiver.url, &[&secret], Duration::from_secs(15))
        .with_clock(Arc::new(clock.clone()));
    let key = NewKey::new("billing", "1a2b3c4d");
    for _ in 0..2 {
        let err = sink.publish(&key.publication()).await.unwrap_err();
        assert!(err.retryable, "{err:?}");
        clock.advance(chrono::Duration::seconds(30));
    }
    sink.publish(&key.publication()).await.unwrap();
    let got = receiver.received();
    assert_eq!(got.len(), 3);
    let ids: Vec<_> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    // Each attempt is stamped with its own time and signed for it.
    let stamps: Vec<_> = got
        .iter()
        .map(|r| {
            r.header("webhook-timestamp")
                .unwrap()
                .parse::<i64>()
                .unwrap()
        })
        .collect();
    assert_eq!(stamps[1] - stamps[0], 30);
    assert_eq!(stamps[2] - stamps[1], 30);
    assert!(got.iter().all(|r| r.verified.is_ok()));
    // Another rotation is another message.
    sink.publish(&NewKey::new("billing", "5e6f7a8b").publication())
        .await
        .unwrap();
    assert_ne!(receiver.received()[3].header("webhook-id").unwrap(), ids[0]);
}

#[tokio::test]
async fn webhook_sink_classifies_receiver_failures_without_leaking_the_body_it_sent() {
    let secret = random_whsec();
    let receiver = WebhookReceiver::start(&[&secret]).await;
    receiver.script([
        Reply::Status(410),
        Reply::RetryAfter(429, 30),
        Reply::Status(400),
        Reply::RetryAfter(503, 7),
        Reply::Status(502),
        Reply::Echo(422),
        Reply::Delay(Duration::from_secs(5)),
    ]);
    let (logs, _guard) = capture_logs_at_trace();
    // A short timeout so the slow reply times out quickly.
    let sink = webhook_sink(&receiver.url, &[&secret], Duration::from_millis(500));
    let key = NewKey::new("billing", "1a2b3c4d");
    let mut errors = Vec::new();
    for _ in 0..7 {
        errors.push(sink.publish(&key.publication()).await.unwrap_err());
    }
    let classes: Vec<(bool, Option<u64>)> = errors
        .iter()
        .map(|e| (e.retryable, e.retry_after.map(|d| d.as_secs())))
        .collect();
    assert_eq!(
        classes,
        vec![
            (false, None),    // 410: endpoint gone
            (true, Some(30)), // 429 + Retry-After
            (false, None),    // other 4xx
            (true, Some(7)),  // 503 + Retry-After
            (true, None),     // 502
            (false, None),    // 422, echoing our body
            (true, None),     // timeout
        ]
    );
    assert!(errors[0].message.contains("410") && errors[0].message.contains("gone"));
    assert!(errors[1].message.contains("429"), "{}", errors[1].message);
    // Nothing of a body is kept, only its length and type.
    assert!(
        !errors[1].message.contains("slow down"),
        "{}",
        errors[1].message
    );
    assert!(
        errors[6].message.contains("timed out"),
        "{}",
        errors[6].message
    );
    // The echo put our body (with the secret) in the response: the error
    // carries the status, type and length only (checked for every error
    // below).
    assert!(
        errors[5].message.contains("422") && !errors[5].message.contains("key.published"),
        "{}",
        errors[5].message
    );
    for e in &errors {
        let shown = format!("{e} {e:?}");
        for v in key.secret_values() {
            assert!(!shown.contains(&v), "secret in error: {shown}");
        }
        // The URL path is not shown (it may carry a token).
        assert!(!shown.contains("/hooks/rekey"), "{shown}");
    }
    let secrets = key.secret_values();
    logs.assert_free_of(&secrets.iter().map(String::as_str).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_webhook_sink_refuses_to_build_with_an_empty_secret() {
    let cfg = WebhookSinkConfig {
        url: "https://hooks.example/x".into(),
        secrets: vec![SecretRef::Literal(Secret::new("whsec_"))],
    };
    let common = SinkConfig {
        name: "deploy-hook".into(),
        ca_file: None,
        timeout: Duration::from_secs(15),
        kind: SinkKind::Webhook(cfg.clone()),
    };
    let err = WebhookSink::new("deploy-hook", &cfg, &common).unwrap_err();
    assert!(!err.retryable);
    assert!(err.message.contains("empty"), "{}", err.message);
}

#[tokio::test]
async fn webhook_sink_signatures_verify_with_the_official_python_library() {
    let Some(python) = standardwebhooks_python() else {
        return;
    };
    let (old, new) = (random_whsec(), random_whsec());
    let receiver = WebhookReceiver::start(&[&old, &new]).await;
    // Real time: the library checks the timestamp against its own clock.
    let sink = webhook_sink(&receiver.url, &[&old, &new], Duration::from_secs(15));
    let key = NewKey::new("billing", "1a2b3c4d");
    sink.publish(&key.publication()).await.unwrap();
    let req = &receiver.received()[0];
    // A receiver that knows only one of the two secrets accepts it.
    for s in [&old, &new] {
        verify_with_official_library(&python, s, &req.headers, &req.body)
            .unwrap_or_else(|e| panic!("official library rejected our signature: {e}"));
    }
    // And the check can fail: a changed body or an unknown secret.
    let mut tampered = req.body.clone();
    tampered[1] ^= 0x01;
    assert!(verify_with_official_library(&python, &old, &req.headers, &tampered).is_err());
    assert!(
        verify_with_official_library(&python, &random_whsec(), &req.headers, &req.body).is_err()
    );
}

/// A receiver echoing the secret in any encoding gets none of it into an
/// error or a log line: nothing of its body is kept.
#[tokio::test]
async fn a_receiver_echoing_the_secret_in_any_encoding_leaks_nothing() {
    use base64::Engine as _;
    let secret = random_whsec();
    let receiver = WebhookReceiver::start(&[&secret]).await;
    let key = NewKey::new("billing", "1a2b3c4d");
    let values = key.secret_values();
    let mut bodies: Vec<(&'static str, Vec<u8>)> = Vec::new();
    for v in &values {
        let json_escaped = serde_json::to_string(v).unwrap().replace('/', "\\/");
        let url_encoded: String = v
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(v);
        bodies.push(("text/plain", v.clone().into_bytes()));
        bodies.push((
            "application/json",
            format!("{{\"got\":{json_escaped}}}").into_bytes(),
        ));
        bodies.push((
            "application/x-www-form-urlencoded",
            format!("got={url_encoded}").into_bytes(),
        ));
        bodies.push(("text/plain", b64.into_bytes()));
    }
    receiver.script(
        bodies
            .iter()
            .map(|(ct, b)| Reply::Body(500, ct, b.clone()))
            .collect::<Vec<_>>(),
    );
    let (logs, _guard) = capture_logs_at_trace();
    let sink = webhook_sink(&receiver.url, &[&secret], Duration::from_secs(5));
    let mut shown = String::new();
    for (ct, b) in &bodies {
        let e = sink.publish(&key.publication()).await.unwrap_err();
        assert!(e.retryable);
        assert!(
            e.message
                .contains(&format!("HTTP 500 ({ct}, {} bytes)", b.len())),
            "{}",
            e.message
        );
        shown.push_str(&format!("{e} {e:?}\n"));
    }
    shown.push_str(&logs.text());
    for (_, b) in &bodies {
        let b = String::from_utf8_lossy(b);
        let needle = b.trim_start_matches("got=").trim_start_matches("{\"got\":");
        assert!(!shown.contains(needle), "an echo leaked: {needle}\n{shown}");
    }
    for v in &values {
        assert!(!shown.contains(v.as_str()), "{shown}");
    }
}
