//! The webhook sink: a Standard Webhooks signed POST carrying the new key.
//!
//! Body: `{"type":"key.published","timestamp":…,"data":{policy, lineage,
//! provider, rotation_id, key_id, key_name, created_at, expires_at,
//! fingerprint, secret:{…fields…}}}`. A 2xx acknowledges. The `webhook-id`
//! is derived from the rotation id and sink name, so every retry of one
//! publication carries the same id and the receiver can deduplicate.
//!
//! Failures are classified for the engine: 410 (endpoint gone) and other
//! 4xx are permanent; 408, 429, 502, 503, 504, other 5xx, timeouts and
//! connection errors are retryable, honouring `Retry-After`.
//!
//! The receiver has just been handed the secret, so nothing of its response
//! body is kept: it is drained and dropped, and errors, logs, history and
//! notifications carry only its status, content type and length
//! ([`Described`]). A receiver echoing the secret in any encoding (raw,
//! `\/`-escaped JSON, percent-encoded, base64) therefore cannot get it into
//! any of them. URLs are shown only as scheme and host.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use zeroize::Zeroizing;

use super::{Publication, Sink, SinkError};
use crate::clock::{SharedClock, SystemClock};
use crate::config::{SinkConfig, TargetTemplate, WebhookSinkConfig};
use crate::notify::signing::Signer;
use crate::outbound::{self as response, Described, client, retry_after};

/// The event type a webhook sink sends.
pub const EVENT_TYPE: &str = "key.published";

pub struct WebhookSink {
    name: String,
    url: String,
    /// `scheme://host[:port]` of `url`, for messages (the path may hold a
    /// token, as in chat webhooks).
    shown_url: String,
    client: reqwest::Client,
    signer: Signer,
    timeout: Duration,
    /// Stamps `webhook-timestamp` and the body's `timestamp`.
    clock: SharedClock,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink")
            .field("name", &self.name)
            .field("url", &self.shown_url)
            .field("signer", &self.signer)
            .finish()
    }
}

impl WebhookSink {
    /// Build from config: resolve the signing secrets and the HTTP client
    /// (rustls, optional extra CA, `timeout` per request). Errors are
    /// permanent `SinkError`s naming the sink.
    pub fn new(
        name: &str,
        cfg: &WebhookSinkConfig,
        common: &SinkConfig,
    ) -> Result<Self, SinkError> {
        let signer = Signer::from_refs(&cfg.secrets)
            .map_err(|e| SinkError::permanent(name, e.to_string()))?;
        let client = client(common.ca_file.as_deref(), common.timeout)
            .map_err(|e| SinkError::permanent(name, e.to_string()))?;
        reqwest::Url::parse(&cfg.url)
            .map_err(|e| SinkError::permanent(name, format!("invalid url: {e}")))?;
        Ok(WebhookSink {
            name: name.to_string(),
            shown_url: response::redact_url(&cfg.url),
            url: cfg.url.clone(),
            client,
            signer,
            timeout: common.timeout,
            clock: Arc::new(SystemClock),
        })
    }

    /// Use another clock (tests; the daemon's shared clock).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The stable `webhook-id` of one publication to one sink.
    pub fn message_id(rotation_id: &str, sink: &str) -> String {
        format!("msg_{}_{}", id_part(rotation_id), id_part(sink))
    }
}

/// Keep `[A-Za-z0-9_-]`; anything else (notably `.`, which the signature
/// scheme reserves) becomes `_`.
fn id_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The JSON body, built into a buffer that is wiped on drop.
pub fn body(p: &Publication<'_>, now: DateTime<Utc>) -> Zeroizing<String> {
    let meta = serde_json::json!({
        "policy": p.policy,
        "lineage": p.lineage,
        "provider": p.provider,
        "rotation_id": p.rotation_id,
        "key_id": p.key_id,
        "key_name": p.key_name,
        "created_at": p.created_at.map(rfc3339),
        "expires_at": p.expires_at.map(rfc3339),
        "fingerprint": p.fingerprint,
    });
    let mut meta = meta;
    if let Some(fence) = p.fence {
        // PostgreSQL state only (DESIGN §8): the leader's fence; a receiver
        // drops a body whose fence is lower than one it already took.
        meta["fence"] = serde_json::json!(fence);
    }
    let meta = meta.to_string();
    let secret = p.secret.to_json();
    let envelope_head =
        serde_json::json!({"type": EVENT_TYPE, "timestamp": rfc3339(now)}).to_string();
    let mut out = Zeroizing::new(String::with_capacity(
        envelope_head.len() + meta.len() + secret.len() + 32,
    ));
    // `{"timestamp":…,"type":…` + `,"data":` + meta without its closing
    // brace + `,"secret":` + fields + `}}`.
    out.push_str(&envelope_head[..envelope_head.len() - 1]);
    out.push_str(",\"data\":");
    out.push_str(&meta[..meta.len() - 1]);
    out.push_str(",\"secret\":");
    out.push_str(&secret);
    out.push_str("}}");
    out
}

/// Map a non-2xx response to a typed error carrying only its description.
pub(crate) fn status_error(
    sink: &str,
    status: StatusCode,
    headers: &HeaderMap,
    length: Option<u64>,
) -> SinkError {
    let mut msg = Described::new(status, headers, length).to_string();
    if status == StatusCode::GONE {
        msg.push_str(" (endpoint gone)");
    }
    let code = status.as_u16();
    let retryable = matches!(code, 408 | 429 | 502 | 503 | 504) || status.is_server_error();
    if retryable {
        let mut e = SinkError::retryable(sink, msg);
        e.retry_after = retry_after(headers);
        e
    } else {
        SinkError::permanent(sink, msg)
    }
}

#[async_trait]
impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn target(&self) -> Option<&TargetTemplate> {
        None
    }

    async fn publish(&self, p: &Publication<'_>) -> Result<Option<String>, SinkError> {
        let now = self.clock.now();
        let id = Self::message_id(p.rotation_id, &self.name);
        let body = body(p, now);
        let headers = self
            .signer
            .headers(&id, now.timestamp(), body.as_bytes())
            .map_err(|e| SinkError::permanent(&self.name, e.to_string()))?;
        let mut req = self
            .client
            .post(&self.url)
            .header(CONTENT_TYPE, "application/json");
        for (k, v) in headers.pairs() {
            req = req.header(k, v);
        }
        // reqwest keeps its own copy of the bytes for the request.
        let resp = req.body(body.as_bytes().to_vec()).send().await;
        drop(body);
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                let (_, what) = response::describe_send_error(e, self.timeout);
                tracing::debug!(sink = %self.name, url = %self.shown_url, webhook_id = %id, error = %what, "webhook sink send failed");
                return Err(SinkError::retryable(
                    &self.name,
                    format!("POST {}: {what}", self.shown_url),
                ));
            }
        };
        let status = resp.status();
        let resp_headers = resp.headers().clone();
        // Drained and dropped unread: only its length is kept.
        let length = response::discard_body(resp).await;
        tracing::debug!(sink = %self.name, url = %self.shown_url, webhook_id = %id, response = %Described::new(status, &resp_headers, length), "webhook sink response");
        if status.is_success() {
            return Ok(Some(format!(
                "{} HTTP {} {}",
                self.shown_url,
                status.as_u16(),
                id
            )));
        }
        Err(status_error(&self.name, status, &resp_headers, length))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{Secret, SecretFields};

    #[test]
    fn message_ids_are_stable_and_dot_free() {
        let a = WebhookSink::message_id("1a2b3c4d", "deploy.hook");
        assert_eq!(a, "msg_1a2b3c4d_deploy_hook");
        assert_eq!(a, WebhookSink::message_id("1a2b3c4d", "deploy.hook"));
        assert!(!a.contains('.'));
    }

    #[test]
    fn a_fence_travels_in_the_body_only_when_the_state_is_shared() {
        let mut f = SecretFields::new();
        f.insert("api_key", Secret::new("sk_1"));
        let fp = f.fingerprint();
        let now = Utc::now();
        let p = Publication {
            policy: "p",
            lineage: "l",
            provider: "ob",
            provider_kind: "oceanbase",
            rotation_id: "1a2b3c4d",
            key_id: Some("k1"),
            key_name: "l-1",
            created_at: None,
            expires_at: None,
            secret: &f,
            fingerprint: &fp,
            fence: None,
        };
        let v: serde_json::Value = serde_json::from_str(&body(&p, now)).unwrap();
        assert!(v["data"].get("fence").is_none(), "{v}");
        let v: serde_json::Value = serde_json::from_str(&body(
            &Publication {
                fence: Some(12),
                ..p
            },
            now,
        ))
        .unwrap();
        assert_eq!(v["data"]["fence"], 12);
        assert_eq!(v["data"]["secret"]["api_key"], "sk_1");
    }

    #[test]
    fn body_is_valid_json_with_the_secret_under_data() {
        let mut f = SecretFields::new();
        f.insert("access_key_id", Secret::new("AKID\"1"));
        f.insert("access_key_secret", Secret::new("s3cr3t"));
        let fp = f.fingerprint();
        let now = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let p = Publication {
            policy: "p",
            lineage: "l",
            provider: "gw",
            provider_kind: "tencent-apigateway",
            rotation_id: "1a2b3c4d",
            key_id: Some("k1"),
            key_name: "l-20261122-r1a2b3c4d-1",
            created_at: Some(now),
            expires_at: None,
            secret: &f,
            fingerprint: &fp,
            fence: None,
        };
        let b = body(&p, now);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["type"], "key.published");
        assert_eq!(v["timestamp"], "2026-11-22T10:00:00Z");
        assert_eq!(v["data"]["secret"]["access_key_id"], "AKID\"1");
        assert_eq!(v["data"]["secret"]["access_key_secret"], "s3cr3t");
        assert_eq!(v["data"]["fingerprint"], fp.as_str());
        assert_eq!(v["data"]["created_at"], "2026-11-22T10:00:00Z");
        assert!(v["data"]["expires_at"].is_null());
        assert_eq!(v["data"]["key_id"], "k1");
    }

    #[test]
    fn statuses_classify_as_the_spec_recommends() {
        let h = HeaderMap::new();
        let class = |c: u16| status_error("s", StatusCode::from_u16(c).unwrap(), &h, Some(0));
        assert!(!class(410).retryable);
        assert!(class(410).message.contains("gone"));
        for c in [400, 401, 403, 404, 422] {
            assert!(!class(c).retryable, "{c}");
        }
        for c in [408, 429, 500, 502, 503, 504, 599] {
            assert!(class(c).retryable, "{c}");
        }
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        let e = status_error("s", StatusCode::TOO_MANY_REQUESTS, &h, Some(9));
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
        assert!(e.message.contains("429") && e.message.contains("9 bytes"));
    }
}
