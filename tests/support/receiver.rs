//! An in-test webhook receiver (axum on `127.0.0.1:0`).
//!
//! It records every request (headers, raw body), checks the Standard
//! Webhooks signature with its *own* HMAC code (not rekey's), and answers
//! from a script of replies so tests can make it fail on demand: any
//! status, 429 with `Retry-After`, a delay longer than the client's
//! timeout, or a 400 that echoes the request body. With the script empty
//! it answers 200.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::sync::Notify;

/// What the receiver answers to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    /// A status with `Retry-After: <seconds>`.
    RetryAfter(u16, u64),
    /// Sleep this long before answering 200 (longer than the client's
    /// timeout, to make it time out).
    Delay(Duration),
    /// A status whose body is the request body (a receiver that echoes).
    Echo(u16),
    /// A status with this body and content type.
    Body(u16, &'static str, Vec<u8>),
    /// A status whose JSON body echoes every `data.secret` value of the
    /// request raw, JSON-escaped with `\/` (as PHP writes it), URL-encoded
    /// and base64-encoded.
    EchoSecret(u16),
}

/// The encodings a hostile receiver might echo a secret in.
pub fn encodings(v: &str) -> Vec<String> {
    let json_escaped = serde_json::to_string(v).unwrap();
    let json_escaped = json_escaped[1..json_escaped.len() - 1].replace('/', "\\/");
    let url: String = v
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let b64 = STANDARD.encode(v);
    vec![v.to_string(), json_escaped, url, b64]
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Lower-case names, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Which of the receiver's secrets a `v1` signature matched (index into
    /// the secrets given at start), or why none did.
    pub verified: Result<Vec<usize>, String>,
    /// The status the receiver answered.
    pub answered: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct Shared {
    keys: Vec<Vec<u8>>,
    script: Mutex<VecDeque<Reply>>,
    received: Mutex<Vec<Received>>,
    arrived: Notify,
}

pub struct WebhookReceiver {
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Decode `whsec_<base64>` the way the spec says, independently of rekey.
fn decode_whsec(s: &str) -> Vec<u8> {
    STANDARD
        .decode(s.strip_prefix("whsec_").unwrap_or(s))
        .expect("test secret is base64")
}

/// Check every `v1,` entry against every key; the indexes of keys that
/// matched some entry.
fn check_signature(
    keys: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<usize>, String> {
    let get = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| format!("missing {n}"))
    };
    let id = get("webhook-id")?;
    let ts = get("webhook-timestamp")?;
    let sig = get("webhook-signature")?;
    if ts.parse::<i64>().is_err() {
        return Err(format!("webhook-timestamp {ts:?} is not an integer"));
    }
    let mut signed = Vec::new();
    signed.extend_from_slice(id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(ts.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    let mut matched = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
        mac.update(&signed);
        let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        if sig.split(' ').any(|s| s == expected) {
            matched.push(i);
        }
    }
    if matched.is_empty() {
        Err(format!("no signature in {sig:?} matches"))
    } else {
        Ok(matched)
    }
}

async fn handle(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let verified = check_signature(&s.keys, &headers, &body);
    let reply = s.script.lock().unwrap().pop_front();
    let (answered, response) = match reply {
        None => (200, (StatusCode::OK, "ok").into_response()),
        Some(Reply::Status(c)) => {
            let code = StatusCode::from_u16(c).unwrap();
            (c, (code, format!("scripted {c}")).into_response())
        }
        Some(Reply::RetryAfter(c, secs)) => {
            let code = StatusCode::from_u16(c).unwrap();
            (
                c,
                (code, [("retry-after", secs.to_string())], "slow down").into_response(),
            )
        }
        Some(Reply::Echo(c)) => {
            let code = StatusCode::from_u16(c).unwrap();
            (c, (code, body.clone()).into_response())
        }
        Some(Reply::EchoSecret(c)) => {
            let code = StatusCode::from_u16(c).unwrap();
            let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let mut echoed = Vec::new();
            if let Some(fields) = parsed["data"]["secret"].as_object() {
                for v in fields.values().filter_map(|v| v.as_str()) {
                    echoed.extend(encodings(v));
                }
            }
            // Hand-built so the escaped form stays as PHP would write it.
            let list: Vec<String> = echoed.iter().map(|e| format!("\"{e}\"")).collect();
            let text = format!(
                "{{\"error\":\"rejected\",\"received\":[{}]}}",
                list.join(",")
            );
            (
                c,
                (code, [("content-type", "application/json")], text).into_response(),
            )
        }
        Some(Reply::Body(c, content_type, b)) => {
            let code = StatusCode::from_u16(c).unwrap();
            (
                c,
                (code, [("content-type", content_type)], b).into_response(),
            )
        }
        Some(Reply::Delay(d)) => {
            // Record before sleeping: the request did arrive.
            s.received.lock().unwrap().push(Received {
                headers: headers_vec(&headers),
                body: body.to_vec(),
                verified,
                answered: 200,
            });
            s.arrived.notify_waiters();
            tokio::time::sleep(d).await;
            return (StatusCode::OK, "late").into_response();
        }
    };
    s.received.lock().unwrap().push(Received {
        headers: headers_vec(&headers),
        body: body.to_vec(),
        verified,
        answered,
    });
    s.arrived.notify_waiters();
    response
}

fn headers_vec(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or("<binary>").to_string(),
            )
        })
        .collect()
}

impl WebhookReceiver {
    /// Start a receiver that verifies with these `whsec_…` secrets.
    pub async fn start(secrets: &[&str]) -> WebhookReceiver {
        let shared = Arc::new(Shared {
            keys: secrets.iter().map(|s| decode_whsec(s)).collect(),
            script: Mutex::new(VecDeque::new()),
            received: Mutex::new(Vec::new()),
            arrived: Notify::new(),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        WebhookReceiver {
            url: format!("http://{addr}/hooks/rekey"),
            shared,
            task,
        }
    }

    /// Queue replies for the next requests (then 200s).
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.script.lock().unwrap().extend(replies);
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Wait until at least `n` requests arrived (a hang guard of 20 s, not
    /// a speed assertion).
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.shared.arrived.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "receiver got {} request(s), expected {n}",
                    self.received().len()
                );
            }
        }
    }
}

/// A fresh random `whsec_` secret of 32 bytes.
pub fn random_whsec() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("whsec_{}", STANDARD.encode(bytes))
}
