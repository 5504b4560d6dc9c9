//! The HTTP layer every provider backend calls through.
//!
//! One `reqwest` client per provider, built by [`crate::outbound::client`]
//! (TLS, `ca_file`, proxy and loopback rules live there), an adaptive
//! pacer ([`Pacer`]) shared by every call of the provider, a timeout on
//! every call, a cap on response bodies, a fresh `X-Request-Id` per call
//! (logged), and the `rekey_provider_*` metrics.
//!
//! A connection that never opened is classified [`Outcome::Retry`] (nothing
//! was sent); any other transport failure is left `Unknown` (the request may
//! have arrived).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};

use super::{BuildError, Outcome, ProviderError, ProviderErrorKind};
use crate::config::ProviderConfig;
use crate::metrics::Metrics;

/// Responses larger than this are refused (key lists come in pages of at
/// most 100; a megabyte is generous).
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// Slowest pace a throttled provider is driven down to (requests/s).
pub const MIN_RATE: f64 = 0.2;
/// How much the pace grows per second without a throttle (requests/s).
pub const RATE_STEP: f64 = 1.0;

/// The provider's shared pacing, AIMD: calls are spaced `1/rate` apart
/// (no spacing while `rate` is unknown and nothing was throttled); every
/// throttle (429 or a vendor throttling code) halves the rate, starting
/// from the rate actually observed over the last second when none was
/// set, and pauses every call until its `Retry-After`; each second without
/// a throttle adds [`RATE_STEP`], never above the configured `rate_limit`.
/// So a missing or too-high `rate_limit` converges to the provider's real
/// limit instead of storming it.
#[derive(Debug)]
pub struct Pacer {
    state: Mutex<PacerState>,
}

#[derive(Debug)]
struct PacerState {
    /// `rate_limit` from the config: the ceiling.
    configured: Option<f64>,
    /// Current pace; `None` = unpaced (no limit known yet).
    rate: Option<f64>,
    /// Earliest instant the next call may go.
    next_free: Instant,
    /// No call before this (a `Retry-After`).
    paused_until: Instant,
    /// When the rate last changed (decrease or increase).
    last_change: Instant,
    /// Send instants of the last second, to estimate an unpaced rate.
    recent: VecDeque<Instant>,
}

impl Pacer {
    pub fn new(configured: Option<f64>) -> Self {
        let now = Instant::now();
        Pacer {
            state: Mutex::new(PacerState {
                configured,
                rate: configured,
                next_free: now,
                paused_until: now,
                last_change: now,
                recent: VecDeque::new(),
            }),
        }
    }

    /// The current pace in requests per second (`None`: unpaced).
    pub fn rate(&self) -> Option<f64> {
        self.lock().rate
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PacerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserve the next slot at `now`; returns how long to wait for it.
    pub fn reserve(&self, now: Instant) -> Duration {
        let mut st = self.lock();
        let start = now.max(st.next_free).max(st.paused_until);
        st.next_free = match st.rate {
            Some(r) => start + Duration::from_secs_f64(1.0 / r),
            None => start,
        };
        while st
            .recent
            .front()
            .is_some_and(|t| start.saturating_duration_since(*t) > Duration::from_secs(1))
        {
            st.recent.pop_front();
        }
        st.recent.push_back(start);
        start.saturating_duration_since(now)
    }

    /// A call was throttled: multiplicative decrease (once per interval, so
    /// a burst of 429s answering one window halves once) and a pause.
    pub fn throttled(&self, now: Instant, retry_after: Option<Duration>) {
        let mut st = self.lock();
        let current = match st.rate {
            Some(r) => r,
            None => (st.recent.len() as f64).max(1.0),
        };
        let interval = Duration::from_secs_f64((1.0 / current).max(0.5));
        if st.rate.is_none() || now.saturating_duration_since(st.last_change) >= interval {
            st.rate = Some((current / 2.0).max(MIN_RATE));
            st.last_change = now;
        }
        if let Some(wait) = retry_after {
            st.paused_until = st
                .paused_until
                .max(now + wait.min(Duration::from_secs(3600)));
        }
        let r = st.rate.unwrap_or(MIN_RATE);
        st.next_free = st.next_free.max(now + Duration::from_secs_f64(1.0 / r));
    }

    /// A call went through: additive increase, at most once per second.
    pub fn succeeded(&self, now: Instant) {
        let mut st = self.lock();
        let Some(r) = st.rate else { return };
        if st.configured == Some(r) {
            return;
        }
        let since = now.saturating_duration_since(st.last_change);
        if since >= Duration::from_secs(1) {
            let grown = r + RATE_STEP * since.as_secs_f64().floor();
            st.rate = Some(match st.configured {
                Some(c) => grown.min(c),
                None => grown,
            });
            st.last_change = now;
        }
    }
}

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
    pacer: Arc<Pacer>,
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
    /// A client with a pacer of its own (the entry's `rate_limit`).
    pub fn new(cfg: &ProviderConfig, metrics: Metrics) -> Result<Self, BuildError> {
        let pacer = Arc::new(Pacer::new(cfg.rate_limit.map(|r| r.per_second)));
        Self::with_pacer(cfg, metrics, pacer)
    }

    /// A client pacing its calls with `pacer`, shared with every other
    /// entry on the same provider account ([`pacers`]).
    pub fn with_pacer(
        cfg: &ProviderConfig,
        metrics: Metrics,
        pacer: Arc<Pacer>,
    ) -> Result<Self, BuildError> {
        Ok(ProviderHttp {
            client: client(cfg.ca_file.as_deref(), cfg.timeout)?,
            provider: cfg.name.clone(),
            endpoint: cfg.endpoint.trim_end_matches('/').to_string(),
            pacer,
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

    /// The provider's shared pacer.
    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    /// A backend saw a throttling code in a body (Tencent answers them with
    /// HTTP 200): slow the shared pace like a 429 does.
    pub fn throttled(&self, retry_after: Option<Duration>) {
        self.pacer.throttled(Instant::now(), retry_after);
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
        let wait = self.pacer.reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let request_id = uuid::Uuid::new_v4().to_string();
        let req = req.header("X-Request-Id", &request_id);
        let started = Instant::now();
        let result = self.send_inner(operation, req, &request_id).await;
        let elapsed = started.elapsed();
        match &result {
            Ok(r) if r.status == StatusCode::TOO_MANY_REQUESTS => {
                self.pacer
                    .throttled(Instant::now(), retry_after(&r.headers));
            }
            Ok(_) => self.pacer.succeeded(Instant::now()),
            Err(_) => {}
        }
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
            let err = self.error(operation, kind).with_request_id(rid.clone());
            // A connection that never opened sent nothing.
            if e.is_connect() {
                err.with_class(Outcome::Retry)
            } else {
                err
            }
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

/// One pacer per provider account (`config::ownership::account_of`: kind,
/// host and account identity), keyed by provider entry name. A provider's
/// rate limit is the account's (Tencent: "20 requests/s per API", shared by
/// everything on the account), so two `[providers.*]` entries on one
/// account — even with different credentials or regions — draw from one
/// bucket and their combined rate stays under the limit. The bucket's
/// ceiling is the smallest `rate_limit` any of those entries configures
/// (none configured: unpaced until the provider throttles).
pub fn pacers(
    providers: &std::collections::BTreeMap<String, ProviderConfig>,
) -> std::collections::HashMap<String, Arc<Pacer>> {
    let mut ceiling: std::collections::HashMap<String, Option<f64>> = Default::default();
    for p in providers.values() {
        let c = ceiling
            .entry(crate::config::ownership::account_of(p))
            .or_insert(None);
        if let Some(r) = p.rate_limit.map(|r| r.per_second) {
            *c = Some(c.map_or(r, |c| c.min(r)));
        }
    }
    let by_account: std::collections::HashMap<String, Arc<Pacer>> = ceiling
        .into_iter()
        .map(|(account, c)| (account, Arc::new(Pacer::new(c))))
        .collect();
    providers
        .iter()
        .map(|(name, p)| {
            let account = crate::config::ownership::account_of(p);
            (name.clone(), by_account[&account].clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_halves_an_unknown_rate_from_what_was_observed_and_pauses() {
        let p = Pacer::new(None);
        let t0 = Instant::now();
        for _ in 0..20 {
            assert_eq!(p.reserve(t0), Duration::ZERO);
        }
        p.throttled(t0, Some(Duration::from_secs(2)));
        assert_eq!(p.rate(), Some(10.0));
        // Paused until Retry-After, then spaced 100 ms apart.
        assert_eq!(p.reserve(t0), Duration::from_secs(2));
        assert_eq!(p.reserve(t0), Duration::from_millis(2100));
    }

    #[test]
    fn a_burst_of_throttles_halves_once_then_the_rate_recovers_additively() {
        let p = Pacer::new(Some(40.0));
        let t0 = Instant::now() + Duration::from_secs(5);
        p.throttled(t0, None);
        p.throttled(t0, None);
        p.throttled(t0 + Duration::from_millis(10), None);
        assert_eq!(p.rate(), Some(20.0));
        p.succeeded(t0 + Duration::from_millis(500));
        assert_eq!(p.rate(), Some(20.0));
        p.succeeded(t0 + Duration::from_secs(3));
        assert_eq!(p.rate(), Some(23.0));
        // Never above the configured ceiling.
        p.succeeded(t0 + Duration::from_secs(60));
        assert_eq!(p.rate(), Some(40.0));
    }

    fn oceanbase(name: &str, project: &str, key: &str, rate: Option<f64>) -> ProviderConfig {
        use crate::config::{ProviderKind, RateLimit, SecretRef};
        ProviderConfig {
            name: name.into(),
            endpoint: "https://api.example.test".into(),
            rate_limit: rate.map(|per_second| RateLimit { per_second }),
            ca_file: None,
            timeout: Duration::from_secs(5),
            kind: ProviderKind::OceanBase(crate::provider::oceanbase::OceanBaseConfig {
                org_id: "org".into(),
                project_id: project.into(),
                access_key_id: SecretRef::Env(format!("{key}_ID")),
                access_key_secret: SecretRef::Env(format!("{key}_SECRET")),
            }),
        }
    }

    #[test]
    fn two_entries_on_one_account_share_one_rate_limit_bucket() {
        // Same org/project, different credentials and limits: one account.
        let providers: std::collections::BTreeMap<String, ProviderConfig> = [
            oceanbase("a", "p1", "A", Some(10.0)),
            oceanbase("b", "p1", "B", Some(4.0)),
            oceanbase("other", "p2", "A", Some(10.0)),
        ]
        .into_iter()
        .map(|p| (p.name.clone(), p))
        .collect();
        let pacers = pacers(&providers);
        assert!(Arc::ptr_eq(&pacers["a"], &pacers["b"]));
        assert!(!Arc::ptr_eq(&pacers["a"], &pacers["other"]));
        // The tighter of the two limits is the bucket's ceiling.
        assert_eq!(pacers["a"].rate(), Some(4.0));
        assert_eq!(pacers["other"].rate(), Some(10.0));
        // A call through one entry takes the slot the other would have had.
        let t0 = Instant::now();
        assert_eq!(pacers["a"].reserve(t0), Duration::ZERO);
        assert_eq!(pacers["b"].reserve(t0), Duration::from_millis(250));
        assert_eq!(pacers["other"].reserve(t0), Duration::ZERO);
    }

    #[test]
    fn the_rate_never_drops_below_the_floor() {
        let p = Pacer::new(Some(0.3));
        let mut t = Instant::now();
        for _ in 0..10 {
            t += Duration::from_secs(10);
            p.throttled(t, None);
        }
        assert_eq!(p.rate(), Some(MIN_RATE));
    }
}
