//! Providers: where keys live. One small async trait, one file per backend,
//! and capabilities as data, so the engine has no per-provider branches.
//!
//! - `oceanbase`: OceanBase Cloud MaaS API keys (HTTP Digest auth).
//! - `tencent`: Tencent Cloud API Gateway keys (TC3 signing in `tc3`).
//! - `huawei`: Huawei Cloud NES node-provider credentials (token, IAM or
//!   AK/SK signing in `huawei_sign`; the ZIP credential file in `nes_file`).
//! - `listing`: [`listing::Listing`], the one result type of a key walk.
//! - `http`: the shared HTTP layer every backend calls through: rate limit
//!   (token bucket), timeout, body-size cap, request ids, metrics.

pub mod http;
pub mod huawei;
pub mod huawei_sign;
pub mod listing;
pub mod nes_file;
pub mod oceanbase;
pub mod tc3;
pub mod tencent;
pub mod times;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::config::ProviderConfig;
use crate::metrics::Metrics;
use crate::secret::SecretFields;

/// What a backend can do; the engine reads these instead of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub can_list: bool,
    pub can_delete: bool,
    /// Old keys must be disabled (and unbound) before delete (Tencent).
    pub disable_before_delete: bool,
    /// Keys carry an `expires_at`.
    pub has_expiry: bool,
    /// Create returns the new key's id; otherwise find it by listing.
    pub returns_id_on_create: bool,
}

/// `ProviderKey::meta` entry set when a listed key carries a time rekey
/// cannot parse: an object `{field: raw value}`. The key is still listed
/// (so the rest of its policy goes on) but its lineage is never rotated on
/// a guess: it reports `failing` with reason `unknown_time`.
pub const META_UNKNOWN_TIME: &str = "unknown_time";

/// Server text (an error code, message or request id) made fit for an
/// error: one line (control characters become spaces), at most `max`
/// characters, `…` marking a cut. Logs escape again; this keeps status,
/// notifications and the state DB bounded whatever the server sends.
pub fn one_line(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// A key as a provider lists it. Never holds secret material.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderKey {
    pub id: String,
    pub name: String,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Provider-specific facts the engine passes back to hooks (e.g. usage
    /// plans a Tencent key is bound to, enabled/disabled status).
    pub meta: BTreeMap<String, serde_json::Value>,
}

/// A freshly created key, with its secret.
#[derive(Debug)]
pub struct NewKey {
    /// `None` when the provider does not return one (OceanBase).
    pub id: Option<String>,
    pub name: String,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub secret: SecretFields,
    /// The provider answered and the key exists, but its answer could not
    /// be read completely (e.g. a Huawei credential archive without a
    /// readable `credential.csv`). `secret` still holds everything received
    /// (at least the raw answer): the engine seals it first, then fails the
    /// rotation with this message, and the sealed key can be resumed.
    pub unreadable: Option<String>,
}

pub struct CreateRequest<'a> {
    /// The attempt's unique name.
    pub name: &'a str,
    /// The policy's `create` table.
    pub params: &'a serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    /// The key was already gone; counts as done.
    NotFound,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProviderErrorKind {
    Timeout(Duration),
    Connect(String),
    /// 429 or a throttling code.
    RateLimited {
        retry_after: Option<Duration>,
    },
    /// 401/403 or an auth-failure code.
    Auth(String),
    /// Quota or limit reached: retrying will not help.
    Quota(String),
    /// Any other API error.
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The response did not have the documented shape.
    Protocol(String),
    /// The response body exceeded the cap.
    TooLarge(usize),
    /// The request itself is invalid for this provider (bad create params).
    Invalid(String),
}

/// A provider call that did not succeed. Carries the request id so
/// support can trace it; never carries a secret.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{provider}: {operation}: {}{}", describe(.kind), .request_id.as_ref().map(|r| format!(" (request id {r})")).unwrap_or_default())]
pub struct ProviderError {
    /// The provider's name in the config (boxed: the error stays small).
    pub provider: Box<str>,
    pub operation: &'static str,
    pub kind: ProviderErrorKind,
    pub request_id: Option<String>,
    /// The backend's own verdict on what the failure means, from its
    /// vendor's error list; `None` leaves it to [`ProviderError::outcome`]'s
    /// defaults for `kind`.
    pub class: Option<Outcome>,
}

/// What a failed provider call means for the world, one classification per
/// error (README "Providers" has each backend's table):
///
/// - `Retry`: transient and **nothing happened** (a connection that never
///   opened, 429 or a vendor throttling code, a 5xx the vendor documents as
///   "not processed"). Try again later; a create answered so did not create.
/// - `Refused`: a definitive refusal, **nothing happened** (4xx, quota, auth,
///   bad parameters). Retrying the same call will not help.
/// - `Unknown`: the request may have taken effect (a timeout or reset after
///   the request was sent, a 5xx on create, an answer that cannot be read).
///   A create must be resolved by listing before another attempt; for a read
///   it just means "try again".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Retry,
    Refused,
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Retry => "retry",
            Outcome::Refused => "refused",
            Outcome::Unknown => "unknown",
        }
    }
}

fn describe(k: &ProviderErrorKind) -> String {
    match k {
        ProviderErrorKind::Timeout(d) => {
            format!("timed out after {}", crate::clock::human(*d))
        }
        ProviderErrorKind::Connect(r) => format!("connection failed: {r}"),
        ProviderErrorKind::RateLimited { retry_after } => match retry_after {
            Some(d) => format!("rate limited (retry after {})", crate::clock::human(*d)),
            None => "rate limited".into(),
        },
        ProviderErrorKind::Auth(m) => format!("authentication failed: {m}"),
        ProviderErrorKind::Quota(m) => format!("quota exceeded: {m}"),
        ProviderErrorKind::Api {
            status,
            code,
            message,
        } => format!("HTTP {status} {code}: {message}"),
        ProviderErrorKind::Protocol(m) => format!("unexpected response: {m}"),
        ProviderErrorKind::TooLarge(n) => format!("response body larger than {n} bytes"),
        ProviderErrorKind::Invalid(m) => format!("invalid request: {m}"),
    }
}

impl ProviderError {
    pub fn new(provider: &str, operation: &'static str, kind: ProviderErrorKind) -> Self {
        ProviderError {
            provider: provider.into(),
            operation,
            kind,
            request_id: None,
            class: None,
        }
    }

    /// Set the backend's classification (see [`Outcome`]).
    pub fn with_class(mut self, class: Outcome) -> Self {
        self.class = Some(class);
        self
    }

    /// What the failure means (see [`Outcome`]): the backend's verdict when
    /// it gave one, else by kind: throttling → `Retry`; auth, quota, invalid
    /// parameters and any 4xx but 408/429 → `Refused`; timeouts, dropped
    /// connections, 5xx, unreadable answers → `Unknown` (a backend marks a
    /// connection that never opened as `Retry`).
    pub fn outcome(&self) -> Outcome {
        if let Some(c) = self.class {
            return c;
        }
        match &self.kind {
            ProviderErrorKind::RateLimited { .. } => Outcome::Retry,
            ProviderErrorKind::Auth(_)
            | ProviderErrorKind::Quota(_)
            | ProviderErrorKind::Invalid(_) => Outcome::Refused,
            ProviderErrorKind::Api { status, .. } => match *status {
                429 | 408 => Outcome::Retry,
                500.. => Outcome::Unknown,
                _ => Outcome::Refused,
            },
            ProviderErrorKind::Timeout(_)
            | ProviderErrorKind::Connect(_)
            | ProviderErrorKind::Protocol(_)
            | ProviderErrorKind::TooLarge(_) => Outcome::Unknown,
        }
    }

    /// The provider slowed us down (429 or a throttling code). Such a
    /// failure never counts against a rotation's `max_attempts`.
    pub fn is_throttled(&self) -> bool {
        matches!(self.kind, ProviderErrorKind::RateLimited { .. })
            || matches!(self.kind, ProviderErrorKind::Api { status: 429, .. })
    }

    /// The call certainly did nothing (`Retry` or `Refused`): a create that
    /// failed so created no key, and needs no listing to find an orphan.
    pub fn nothing_happened(&self) -> bool {
        self.outcome() != Outcome::Unknown
    }

    pub fn with_request_id(mut self, id: Option<String>) -> Self {
        self.request_id = id;
        self
    }

    /// Whether trying again later can succeed (timeouts, connection errors,
    /// 429, 5xx) or a human must act (auth, 4xx, quota).
    pub fn is_retryable(&self) -> bool {
        match self.class {
            Some(Outcome::Retry) => return true,
            Some(Outcome::Refused) => return false,
            _ => {}
        }
        match &self.kind {
            ProviderErrorKind::Timeout(_)
            | ProviderErrorKind::Connect(_)
            | ProviderErrorKind::RateLimited { .. } => true,
            ProviderErrorKind::Api { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            _ => false,
        }
    }

    pub fn class(&self) -> &'static str {
        if self.is_retryable() {
            "retryable"
        } else {
            "permanent"
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match &self.kind {
            ProviderErrorKind::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}

#[async_trait]
pub trait Provider: Send + Sync {
    /// The provider's name in the config.
    fn name(&self) -> &str;
    fn kind(&self) -> &'static str;
    fn capabilities(&self) -> Capabilities;

    /// Every key whose name `keep` accepts, walking all pages; pages are
    /// filtered as they arrive so memory holds only the kept keys.
    ///
    /// `keep` is spelled higher-ranked (`for<'n>`) on purpose: with a bare
    /// `Fn(&str)`, `#[async_trait]` names the elided lifetime after the
    /// method's, and a backend could then not call it on a name borrowed
    /// from a page it just parsed.
    async fn list(
        &self,
        keep: &(dyn for<'n> Fn(&'n str) -> bool + Send + Sync),
    ) -> Result<Vec<ProviderKey>, ProviderError>;

    /// [`Provider::list`] into a compact [`listing::KeyTable`], page by page:
    /// a backend that overrides it (OceanBase) never holds the walk as a
    /// `Vec<ProviderKey>`; the default lists, then converts. Keys are
    /// pushed in walk order, repeats included (the table drops them when
    /// it becomes a [`listing::Listing`]).
    ///
    /// Errors: [`Provider::list`]'s; `into` then holds the pages read so far
    /// and must not become a listing.
    async fn list_into(
        &self,
        keep: &(dyn for<'n> Fn(&'n str) -> bool + Send + Sync),
        into: &mut listing::KeyTable,
    ) -> Result<(), ProviderError> {
        for k in self.list(keep).await? {
            into.push_key(k);
        }
        Ok(())
    }

    async fn create(&self, req: &CreateRequest<'_>) -> Result<NewKey, ProviderError>;

    /// After create, before publishing: make the new key usable like the
    /// old one (Tencent: bind it to the old key's usage plans).
    /// Must be idempotent: it runs again if rekey restarts before publishing.
    async fn after_create(
        &self,
        _new_key_id: &str,
        _old_key_id: Option<&str>,
        _params: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Before delete (when `disable_before_delete`): unbind and disable.
    /// Must be idempotent, like `after_create`.
    async fn before_delete(&self, _key_id: &str) -> Result<(), ProviderError> {
        Ok(())
    }

    async fn delete(&self, key_id: &str) -> Result<DeleteOutcome, ProviderError>;
}

pub type SharedProvider = Arc<dyn Provider>;

/// Every provider kind's config rules ([`crate::config::validate::ProviderSpec`]),
/// each kept beside its client. A fourth provider is its client file (with
/// its config structs and spec), its entry here and its arm in
/// [`ProviderKind`](crate::config::ProviderKind).
pub static SPECS: &[&dyn crate::config::validate::ProviderSpec] =
    &[&oceanbase::Spec, &tencent::Spec, &huawei::Spec];

/// The spec of `kind = "…"`, if there is such a kind.
pub fn spec(kind: &str) -> Option<&'static dyn crate::config::validate::ProviderSpec> {
    SPECS.iter().copied().find(|s| s.kind() == kind)
}

/// Build the backend a provider config names, pacing its calls alone
/// (one-off commands; the daemon shares pacers per account: [`build_paced`]).
pub fn build(cfg: &ProviderConfig, metrics: &Metrics) -> Result<SharedProvider, BuildError> {
    build_with(cfg, http::ProviderHttp::new(cfg, metrics.clone())?)
}

/// Build the backend a provider config names, pacing its calls with
/// `pacer` (shared by the entries on one account: [`http::pacers`]).
pub fn build_paced(
    cfg: &ProviderConfig,
    metrics: &Metrics,
    pacer: Arc<http::Pacer>,
) -> Result<SharedProvider, BuildError> {
    build_with(
        cfg,
        http::ProviderHttp::with_pacer(cfg, metrics.clone(), pacer)?,
    )
}

fn build_with(
    cfg: &ProviderConfig,
    http: http::ProviderHttp,
) -> Result<SharedProvider, BuildError> {
    cfg.kind.spec().build(cfg, http)
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);
