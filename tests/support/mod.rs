//! Shared test harness: start emulators on `127.0.0.1:0`, build provider
//! configs pointing at them, talk to them raw (with Digest auth), and
//! capture every tracing (and `log`) line into a buffer.

#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;
use tracing_subscriber::fmt::MakeWriter;

use rekey::config::{ProviderConfig, ProviderKind, SecretRef};
use rekey::emulator::oceanbase::{self, EmulatorHandle, OceanBaseEmulatorOptions};
use rekey::metrics::Metrics;
use rekey::provider::http::ProviderHttp;
use rekey::provider::oceanbase::OceanBaseProvider;
use rekey::secret::Secret;

/// Start an OceanBase emulator on a free loopback port.
pub async fn start_oceanbase(opts: OceanBaseEmulatorOptions) -> EmulatorHandle {
    oceanbase::start(opts, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("the emulator starts")
}

/// A provider config pointing at `emu` with its credentials.
pub fn oceanbase_config(emu: &EmulatorHandle) -> ProviderConfig {
    let o = emu.options();
    ProviderConfig {
        name: "ob-test".into(),
        endpoint: emu.endpoint(),
        rate_limit: None,
        ca_file: None,
        timeout: Duration::from_secs(20),
        kind: ProviderKind::OceanBase {
            org_id: o.org_id.clone(),
            project_id: o.project_id.clone(),
            access_key_id: SecretRef::Literal(Secret::new(o.access_key_id.clone())),
            access_key_secret: SecretRef::Literal(o.access_key_secret.clone()),
        },
    }
}

/// A client for `cfg`, with quick id lookups after create.
pub fn oceanbase_provider(cfg: &ProviderConfig) -> OceanBaseProvider {
    let http = ProviderHttp::new(cfg, Metrics::new()).expect("http client");
    OceanBaseProvider::new(cfg, http)
        .expect("provider builds")
        .with_lookup_retry(3, Duration::from_millis(20))
}

/// Everything logged while a [`capture_logs`] guard is held.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

pub struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogBuffer {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LogWriter(self.0.clone())
    }
}

/// Capture every event at TRACE on this thread (a `#[tokio::test]` runs
/// its tasks, emulator included, on it) until the guard drops. `log`
/// records (reqwest) are bridged in too.
pub fn capture_logs() -> (LogBuffer, tracing::subscriber::DefaultGuard) {
    static LOG_BRIDGE: Once = Once::new();
    LOG_BRIDGE.call_once(|| {
        let _ = tracing_log::LogTracer::init();
    });
    let buf = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(buf.clone())
        .finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

/// A response read whole.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl RawResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    pub fn challenges(&self) -> Vec<String> {
        self.headers
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().expect("ascii").to_string())
            .collect()
    }
}

/// A plain HTTP client for emulator conformance tests: it speaks Digest
/// through the `digest_auth` crate, but otherwise sends exactly what the
/// test says.
pub struct RawClient {
    pub http: reqwest::Client,
    pub base: String,
    pub user: String,
    pub pass: String,
    pub org: String,
    pub project: String,
    pub challenge: Option<digest_auth::WwwAuthenticateHeader>,
}

impl RawClient {
    pub fn new(emu: &EmulatorHandle) -> Self {
        let o = emu.options();
        RawClient {
            http: reqwest::Client::new(),
            base: emu.endpoint(),
            user: o.access_key_id.clone(),
            pass: o.access_key_secret.expose().to_string(),
            org: o.org_id.clone(),
            project: o.project_id.clone(),
            challenge: None,
        }
    }

    /// The two headers every API call needs.
    pub fn ob_headers(&self) -> Vec<(String, String)> {
        vec![
            ("X-OB-Org-Id".into(), self.org.clone()),
            ("X-OB-Project-Id".into(), self.project.clone()),
        ]
    }

    /// Send once with exactly these headers (and `authorization`, if any).
    pub async fn send_raw(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(String, String)],
        authorization: Option<&str>,
        body: Option<&Value>,
    ) -> RawResponse {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path_and_query));
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request sent");
        RawResponse {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            text: resp.text().await.expect("body"),
        }
    }

    /// Fetch a fresh challenge with an unauthenticated list call.
    pub async fn fetch_challenge(&mut self, prefer: &str) -> RawResponse {
        let r = self
            .send_raw(
                Method::GET,
                "/api/v2/maas/apikeys",
                &self.ob_headers(),
                None,
                None,
            )
            .await;
        assert_eq!(r.status, 401, "{}", r.text);
        let picked = r
            .challenges()
            .into_iter()
            .find(|c| {
                c.ends_with(&format!("algorithm={prefer}"))
                    || c.contains(&format!("algorithm={prefer},"))
            })
            .unwrap_or_else(|| panic!("no {prefer} challenge in {:?}", r.challenges()));
        self.challenge = Some(digest_auth::parse(&picked).expect("challenge parses"));
        r
    }

    /// `Authorization` answering the cached challenge (nc + 1).
    pub fn answer(&mut self, method: &str, path_and_query: &str) -> String {
        self.answer_as(
            method,
            path_and_query,
            &self.user.clone(),
            &self.pass.clone(),
        )
    }

    pub fn answer_as(&mut self, method: &str, uri: &str, user: &str, pass: &str) -> String {
        let ctx = digest_auth::AuthContext::new_with_method(
            user,
            pass,
            uri,
            Option::<&[u8]>::None,
            digest_auth::HttpMethod::from(method),
        );
        self.challenge
            .as_mut()
            .expect("a challenge was fetched")
            .respond(&ctx)
            .expect("answer")
            .to_header_string()
    }

    /// An authenticated call with the standard headers plus `extra`.
    pub async fn call(
        &mut self,
        method: Method,
        path_and_query: &str,
        extra: &[(&str, &str)],
        body: Option<&Value>,
    ) -> RawResponse {
        let mut headers = self.ob_headers();
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.call_with_headers(method, path_and_query, &headers, body)
            .await
    }

    /// An authenticated call with exactly `headers`.
    pub async fn call_with_headers(
        &mut self,
        method: Method,
        path_and_query: &str,
        headers: &[(String, String)],
        body: Option<&Value>,
    ) -> RawResponse {
        if self.challenge.is_none() {
            self.fetch_challenge("SHA-256").await;
        }
        let auth = self.answer(method.as_str(), path_and_query);
        self.send_raw(method, path_and_query, headers, Some(&auth), body)
            .await
    }
}

/// Header value helper for tests that build requests by hand.
pub fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("header value")
}
