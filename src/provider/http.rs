//! The HTTP layer every provider backend calls through.
//!
//! One `reqwest` client per provider, built by [`crate::outbound::client`]
//! (TLS, `ca_file`, proxy and loopback rules live there), a
//! token bucket pacing calls to `rate_limit`, a timeout on every call, a cap
//! on response bodies, a fresh `X-Request-Id` per call (logged), and the
//! `rekey_provider_*` metrics.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::DefaultClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};

use super::{BuildError, ProviderError, ProviderErrorKind};
use crate::config::ProviderConfig;
use crate::metrics::Metrics;

/// Responses larger than this are refused (key lists come in pages of at
/// most 100; a megabyte is generous).
pub const MAX_BODY: usize = 4 * 1024 * 1024;

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// A response that arrived, with its body read (and capped).
#[derive(Debug)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The `X-Request-Id` we sent.
    pub request_id: String,
}

#[derive(Clone)]
pub struct ProviderHttp {
    pub client: reqwest::Client,
    pub provider: String,
    pub endpoint: String,
    limiter: Option<Arc<Limiter>>,
    metrics: Metrics,
    timeout: Duration,
    max_body: usize,
}

impl std::fmt::Debug for ProviderHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProviderHttp({}, {})", self.provider, self.endpoint)
    }
}

/// A reqwest client with rekey's outbound rules ([`crate::outbound`]).
pub fn client(
    ca_file: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<reqwest::Client, BuildError> {
    crate::outbound::client(ca_file, timeout).map_err(|e| BuildError(e.0))
}

impl ProviderHttp {
    pub fn new(cfg: &ProviderConfig, metrics: Metrics) -> Result<Self, BuildError> {
        let limiter = cfg.rate_limit.map(|r| {
            let period = Duration::from_secs_f64(1.0 / r.per_second);
            let quota = Quota::with_period(period)
                .expect("positive period")
                .allow_burst(NonZeroU32::new(1).expect("1 > 0"));
            Arc::new(RateLimiter::direct(quota))
        });
        Ok(ProviderHttp {
            client: client(cfg.ca_file.as_deref(), cfg.timeout)?,
            provider: cfg.name.clone(),
            endpoint: cfg.endpoint.trim_end_matches('/').to_string(),
            limiter,
            metrics,
            timeout: cfg.timeout,
            max_body: MAX_BODY,
        })
    }

    /// Override the body cap (tests).
    pub fn with_max_body(mut self, n: usize) -> Self {
        self.max_body = n;
        self
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.endpoint, path)
    }

    pub fn error(&self, operation: &'static str, kind: ProviderErrorKind) -> ProviderError {
        ProviderError::new(&self.provider, operation, kind)
    }

    /// Wait for a token, send, read the capped body, record metrics. HTTP
    /// error statuses are returned as responses; the backend interprets
    /// its own error envelope. Transport failures become typed errors.
    pub async fn send(
        &self,
        operation: &'static str,
        req: RequestBuilder,
    ) -> Result<HttpResponse, ProviderError> {
        let result = self.send_unrecorded(operation, req).await;
        match &result {
            Ok(r) => self.record(operation, &r.status.as_u16().to_string()),
            Err(e) => self.record(operation, error_code(e)),
        }
        result
    }

    /// Count one call in `rekey_provider_requests_total` with the outcome
    /// the provider really gave: the HTTP status, or — for APIs that answer
    /// 200 with an error envelope (Tencent API 3.0) — the envelope's error
    /// code, so a failed call is never counted as `code="200"`.
    pub fn record(&self, operation: &'static str, code: &str) {
        self.metrics
            .provider_requests
            .with_label_values(&[&self.provider, operation, code])
            .inc();
    }

    /// As [`send`](Self::send), but without counting the call in
    /// `rekey_provider_requests_total`: the caller reads the answer and
    /// calls [`record`](Self::record) with its real outcome. Latency is
    /// still observed.
    pub async fn send_unrecorded(
        &self,
        operation: &'static str,
        req: RequestBuilder,
    ) -> Result<HttpResponse, ProviderError> {
        if let Some(l) = &self.limiter {
            l.until_ready().await;
        }
        let request_id = uuid::Uuid::new_v4().to_string();
        let req = req.header("X-Request-Id", &request_id);
        let started = Instant::now();
        let result = self.send_inner(operation, req, &request_id).await;
        let elapsed = started.elapsed();
        let code = match &result {
            Ok(r) => r.status.as_u16().to_string(),
            Err(e) => error_code(e).to_string(),
        };
        self.metrics
            .provider_duration
            .with_label_values(&[&self.provider, operation])
            .observe(elapsed.as_secs_f64());
        tracing::debug!(provider = %self.provider, operation, request_id = %request_id, code = %code, elapsed_ms = elapsed.as_millis() as u64, "provider call");
        result
    }

    async fn send_inner(
        &self,
        operation: &'static str,
        req: RequestBuilder,
        request_id: &str,
    ) -> Result<HttpResponse, ProviderError> {
        let rid = Some(request_id.to_string());
        let mut resp = req.send().await.map_err(|e| {
            let kind = if e.is_timeout() {
                ProviderErrorKind::Timeout(self.timeout)
            } else {
                // reqwest errors name the URL, never headers or bodies.
                ProviderErrorKind::Connect(error_chain(&e))
            };
            self.error(operation, kind).with_request_id(rid.clone())
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        if let Some(len) = resp.content_length()
            && len as usize > self.max_body
        {
            return Err(self
                .error(operation, ProviderErrorKind::TooLarge(self.max_body))
                .with_request_id(rid));
        }
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > self.max_body {
                        return Err(self
                            .error(operation, ProviderErrorKind::TooLarge(self.max_body))
                            .with_request_id(rid));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    let kind = if e.is_timeout() {
                        ProviderErrorKind::Timeout(self.timeout)
                    } else {
                        ProviderErrorKind::Connect(error_chain(&e))
                    };
                    return Err(self.error(operation, kind).with_request_id(rid));
                }
            }
        }
        Ok(HttpResponse {
            status,
            headers,
            body,
            request_id: request_id.to_string(),
        })
    }
}

/// The `code` label of a call that got no HTTP answer.
pub fn error_code(e: &ProviderError) -> &'static str {
    match e.kind {
        ProviderErrorKind::Timeout(_) => "timeout",
        ProviderErrorKind::TooLarge(_) => "too_large",
        _ => "error",
    }
}

pub use crate::outbound::{error_chain, retry_after};
