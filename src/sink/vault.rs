//! The Vault / OpenBao KV v2 sink: a direct client for the handful of
//! endpoints it needs (no SDK).
//!
//! Publishing one key to `<mount>/<path>` (the path rendered from its
//! `{lineage}`/`{policy}` template):
//!
//! 1. read the current version and labels: `GET /v1/<mount>/metadata/<path>`
//!    (404 → 0). **Ownership**: an existing path is written only when its
//!    `custom_metadata` says rekey wrote it for this policy and lineage
//!    (`rekey_policy`, `rekey_lineage`), when a [`TargetRecord`] given with
//!    [`VaultSink::with_target_record`] says this sink wrote it for them, or
//!    when the sink sets `adopt_existing = true`; otherwise the publish fails
//!    permanently and names the path and who labelled it. A new path gets
//!    its labels first (`POST …/metadata/<path>`), so a crash between the
//!    label and the data write leaves a path that is recognisably ours.
//!    (The store's record of target writers is checked before this, by the
//!    engine, for every sink: `Engine::foreign_target_owner`.)
//! 2. write with check-and-set: `POST /v1/<mount>/data/<path>` with
//!    `{"options":{"cas":N},"data":{…fields…}}`. If another writer got in
//!    between (HTTP 400 "check-and-set parameter did not match"), go back
//!    to 1, at most [`CAS_ATTEMPTS`] times;
//! 3. label it: `POST /v1/<mount>/metadata/<path>` with `custom_metadata`
//!    (`rekey_policy`, `rekey_lineage`, `rekey_rotation`, `key_id`,
//!    `expires_at`, `fingerprint`);
//! 4. read it back (`GET /v1/<mount>/data/<path>`) and compare fingerprints
//!    before acknowledging; a mismatch is a retryable error.
//!
//! With a PostgreSQL state (DESIGN §8) the publication carries the leader's
//! fence: step 1 refuses a path whose `rekey_fence` label is higher (a
//! fenced outcome: the node stops), the check-and-set of step 2 is on the
//! version read together with that label, and the labels of steps 1 and 3
//! record the fence. On SQLite no fence label is read or written.
//!
//! Authentication: a static `token` (its TTL looked up with `lookup-self`,
//! renewed with `renew-self` at about 2/3 of it) or AppRole (`role_id` +
//! `secret_id` → login; renewed the same way, and logged in again when
//! renewal is refused, the token is not renewable, or the renewed lease is
//! too short). A 403 on an operation triggers one fresh login (AppRole) or
//! one re-read of the token reference (token), then the operation is
//! retried once. Tokens live in [`Secret`]s and never reach a log line, an
//! error or `Debug` output.
//!
//! Errors: 403 and other 4xx are permanent, 412/429/5xx and transport
//! failures retryable. The answer to the data write (the request that
//! carries the secret) is described only by status, content type and length
//! ([`Described`]): no excerpt can be scrubbed of every encoding a server
//! might echo. Other calls carry no secret of ours; their `{"errors":[…]}`
//! envelope is quoted escaped and bounded (never a body that is not that
//! envelope).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::future::BoxFuture;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{Publication, ReadBack, Sink, SinkError, TargetRecord};
use crate::clock::{SharedClock, SystemClock};
use crate::config::{SecretRef, SinkConfig, TargetTemplate, VaultAuth, VaultSinkConfig};
use crate::outbound::{self as response, Described, ReadError, client, retry_after};
use crate::secret::{Secret, SecretFields};

/// `custom_metadata` labels naming the policy and lineage a path was
/// written for.
pub const LABEL_POLICY: &str = "rekey_policy";
pub const LABEL_LINEAGE: &str = "rekey_lineage";
/// Custom metadata label holding the fence of the leader that wrote the
/// path (PostgreSQL state only, DESIGN §8).
pub const LABEL_FENCE: &str = "rekey_fence";

/// Check-and-set writes tried before giving up on a path another writer
/// keeps changing.
pub const CAS_ATTEMPTS: u32 = 5;

/// Renew a token once this share of its TTL has passed.
const RENEW_AT_NUM: u32 = 2;
const RENEW_AT_DEN: u32 = 3;

/// The least lease worth keeping: a publish makes five requests, each
/// bounded by the request timeout.
fn min_cover(timeout: Duration) -> Duration {
    (timeout * 4).max(Duration::from_secs(30))
}

/// Where a publish is, for the fault-injection hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStage {
    /// The current version was read; the check-and-set write is next.
    BeforeCasWrite { attempt: u32, read_version: u64 },
    /// The write (and metadata) succeeded; the read-back is next.
    BeforeReadBack { version: u64 },
}

/// Called at each [`WriteStage`]. Tests use it to make another writer win
/// a race at a precise moment; the daemon sets none.
pub type WriteHook = Arc<dyn Fn(WriteStage) -> BoxFuture<'static, ()> + Send + Sync>;

/// Counters of token work, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VaultAuthStats {
    /// AppRole logins (first and every re-login).
    pub logins: u64,
    /// Successful `renew-self` calls.
    pub renewals: u64,
    /// `lookup-self` calls (token auth).
    pub lookups: u64,
}

#[derive(Default)]
struct Counters {
    logins: AtomicU64,
    renewals: AtomicU64,
    lookups: AtomicU64,
}

/// The token in use and what we know of its lease.
struct TokenState {
    token: Secret,
    /// When the TTL below was granted.
    granted_at: DateTime<Utc>,
    /// `None`: the token does not expire (a root token).
    ttl: Option<Duration>,
    renewable: bool,
    /// The TTL first granted, what a renewal should give back again.
    wanted: Option<Duration>,
}

impl TokenState {
    fn remaining(&self, now: DateTime<Utc>) -> Option<Duration> {
        let ttl = self.ttl?;
        let used = (now - self.granted_at).to_std().unwrap_or_default();
        Some(ttl.saturating_sub(used))
    }

    fn renew_due(&self, now: DateTime<Utc>, cover: Duration) -> bool {
        let Some(ttl) = self.ttl else { return false };
        let used = (now - self.granted_at).to_std().unwrap_or_default();
        used >= ttl * RENEW_AT_NUM / RENEW_AT_DEN || ttl.saturating_sub(used) < cover
    }
}

/// What to do after a renewal attempt (pure; unit-tested).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterRenewal {
    Keep,
    Relogin,
}

fn after_renewal(
    approle: bool,
    granted: Option<Duration>,
    renewable: bool,
    wanted: Option<Duration>,
    cover: Duration,
) -> AfterRenewal {
    if !approle {
        // A static token cannot log in again; keep whatever it has.
        return AfterRenewal::Keep;
    }
    match granted {
        None => AfterRenewal::Relogin,
        Some(g) if g < cover => AfterRenewal::Relogin,
        Some(g) if wanted.is_some_and(|w| g < w / 2) => AfterRenewal::Relogin,
        Some(_) if !renewable => AfterRenewal::Relogin,
        Some(_) => AfterRenewal::Keep,
    }
}

/// How Vault answered, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    CasMismatch,
    Denied,
    Retryable,
    Permanent,
}

fn classify(status: StatusCode, errors: &str) -> Class {
    match status.as_u16() {
        400 if errors.contains("check-and-set parameter did not match") => Class::CasMismatch,
        403 => Class::Denied,
        // 412: a performance standby has not caught up; 472/473: standby
        // and DR redirects that a retry elsewhere resolves.
        412 | 429 | 472 | 473 => Class::Retryable,
        s if (500..600).contains(&s) => Class::Retryable,
        _ => Class::Permanent,
    }
}

/// An operation's failure: a 403 (worth one fresh token) or anything else.
enum Failure {
    Denied(SinkError),
    Other(SinkError),
}

impl From<SinkError> for Failure {
    fn from(e: SinkError) -> Self {
        Failure::Other(e)
    }
}

struct VaultResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Zeroizing<Vec<u8>>,
}

impl VaultResponse {
    /// The `errors` of Vault's envelope, joined, as an escaped excerpt. Only
    /// for answers to calls that carried no secret of ours.
    fn errors(&self) -> String {
        #[derive(Deserialize)]
        struct Envelope {
            #[serde(default)]
            errors: Vec<String>,
        }
        match serde_json::from_slice::<Envelope>(&self.body) {
            Ok(e) if !e.errors.is_empty() => response::excerpt(e.errors.join("; ").as_bytes()),
            _ => String::new(),
        }
    }

    /// Status, content type and length: all that is kept of an answer
    /// from a server holding the secret.
    fn described(&self) -> Described {
        Described::new(self.status, &self.headers, Some(self.body.len() as u64))
    }

    /// Whether this is KV v2's check-and-set refusal (looked for, not kept).
    fn is_cas_mismatch(&self) -> bool {
        self.status == StatusCode::BAD_REQUEST
            && self
                .body
                .windows(CAS_MISMATCH.len())
                .any(|w| w == CAS_MISMATCH.as_bytes())
    }
}

/// KV v2's error text when `options.cas` is not the current version.
const CAS_MISMATCH: &str = "check-and-set parameter did not match";

/// Who labelled an existing path, from its `custom_metadata`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Labels {
    policy: Option<String>,
    lineage: Option<String>,
    /// `rekey_fence`: the fence of the leader that wrote it last
    /// (PostgreSQL state only).
    fence: Option<i64>,
}

impl Labels {
    fn written_for(&self, policy: &str, lineage: &str) -> bool {
        self.policy.as_deref() == Some(policy) && self.lineage.as_deref() == Some(lineage)
    }
}

impl std::fmt::Display for Labels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.policy, &self.lineage) {
            (None, None) => f.write_str("it carries no rekey labels"),
            (p, l) => write!(
                f,
                "its labels say policy {:?}, lineage {:?}",
                crate::logging::escape(p.as_deref().unwrap_or("")),
                crate::logging::escape(l.as_deref().unwrap_or(""))
            ),
        }
    }
}

/// What the metadata read found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Existing {
    /// 404: the path has never been written.
    Absent,
    Present {
        version: u64,
        labels: Labels,
    },
}

/// A secret string deserialized straight into a [`Secret`].
struct SecretDe(Secret);

impl<'de> Deserialize<'de> for SecretDe {
    /// A string, or `{"base64": "…"}` for a field that is not UTF-8 (as
    /// `SecretFields::to_json` writes it).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Field {
            Text(String),
            Bytes { base64: String },
        }
        match Field::deserialize(d)? {
            // Moved into the secret, not copied.
            Field::Text(t) => Ok(SecretDe(Secret::new(t))),
            Field::Bytes { base64 } => {
                use base64::Engine as _;
                let b64 = zeroize::Zeroizing::new(base64);
                base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .map(|b| SecretDe(Secret::from_bytes(b)))
                    .map_err(|_| serde::de::Error::custom("a base64 secret field does not decode"))
            }
        }
    }
}

/// A KV v2 `data` object of strings, deserialized into [`SecretFields`].
struct FieldsDe(SecretFields);

impl<'de> Deserialize<'de> for FieldsDe {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FieldsDe;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of string values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<FieldsDe, A::Error> {
                let mut out = SecretFields::new();
                while let Some((k, v)) = m.next_entry::<String, SecretDe>()? {
                    out.insert(&k, v.0);
                }
                Ok(FieldsDe(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// JSON-escape a secret into a wiped buffer.
fn json_string(s: &Secret) -> Zeroizing<String> {
    Zeroizing::new(serde_json::to_string(s.expose()).expect("strings serialize"))
}

/// A rendered KV path: as written (messages, detail) and URL-encoded.
struct KvPath {
    shown: String,
    encoded: String,
}

/// Render and check a target path: no empty, `.` or `..` segments; each
/// segment percent-encoded for the URL.
fn kv_path(rendered: &str) -> Result<KvPath, String> {
    // Only the template's own leading `/` is dropped: a trailing one would
    // let an empty lineage (or `//`) collapse `maas/{lineage}` onto `maas`.
    let trimmed = rendered.trim_start_matches('/');
    if trimmed.is_empty() {
        return Err("the rendered Vault path is empty".into());
    }
    let mut enc = Vec::new();
    for seg in trimmed.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!(
                "the rendered Vault path {trimmed:?} has an empty, '.' or '..' segment"
            ));
        }
        enc.push(encode_segment(seg));
    }
    Ok(KvPath {
        shown: trimmed.to_string(),
        encoded: enc.join("/"),
    })
}

fn encode_segment(seg: &str) -> String {
    let mut out = String::with_capacity(seg.len());
    for b in seg.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[derive(Clone)]
enum AuthMethod {
    Token(SecretRef),
    AppRole {
        role_id: SecretRef,
        secret_id: SecretRef,
        mount: String,
    },
}

pub struct VaultSink {
    name: String,
    /// Base address without a trailing slash.
    address: String,
    mount: String,
    path: TargetTemplate,
    namespace: Option<String>,
    client: reqwest::Client,
    timeout: Duration,
    auth: AuthMethod,
    /// Held across a login or renewal so concurrent publishes share one.
    token: tokio::sync::Mutex<Option<TokenState>>,
    clock: SharedClock,
    hook: Option<WriteHook>,
    counters: Counters,
    /// Take over existing secrets not labelled for the publication.
    adopt_existing: bool,
    /// The store's record of targets this sink wrote (ownership seam).
    record: Option<Arc<dyn TargetRecord>>,
}

impl std::fmt::Debug for VaultSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultSink")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("mount", &self.mount)
            .field("path", &self.path.as_str())
            .field("namespace", &self.namespace)
            .field(
                "auth",
                &match &self.auth {
                    AuthMethod::Token(r) => format!("token({r})"),
                    AuthMethod::AppRole { mount, .. } => format!("approle({mount})"),
                },
            )
            .finish()
    }
}

impl VaultSink {
    /// Build from config: the HTTP client (rustls, optional extra CA,
    /// `timeout` per request). No request is made until the first publish;
    /// errors are permanent `SinkError`s naming the sink.
    pub fn new(name: &str, cfg: &VaultSinkConfig, common: &SinkConfig) -> Result<Self, SinkError> {
        let client = client(common.ca_file.as_deref(), common.timeout)
            .map_err(|e| SinkError::permanent(name, e.to_string()))?;
        let address = cfg.address.trim_end_matches('/').to_string();
        reqwest::Url::parse(&address)
            .map_err(|e| SinkError::permanent(name, format!("invalid address: {e}")))?;
        let mount = cfg.mount.trim_matches('/').to_string();
        if mount.is_empty() {
            return Err(SinkError::permanent(name, "mount is empty"));
        }
        let auth = match &cfg.auth {
            VaultAuth::Token(r) => AuthMethod::Token(r.clone()),
            VaultAuth::AppRole {
                role_id,
                secret_id,
                mount,
            } => AuthMethod::AppRole {
                role_id: role_id.clone(),
                secret_id: secret_id.clone(),
                mount: mount.trim_matches('/').to_string(),
            },
        };
        Ok(VaultSink {
            name: name.to_string(),
            address,
            mount,
            path: cfg.path.clone(),
            namespace: cfg.namespace.clone(),
            client,
            timeout: common.timeout,
            auth,
            token: tokio::sync::Mutex::new(None),
            clock: Arc::new(SystemClock),
            hook: None,
            counters: Counters::default(),
            adopt_existing: cfg.adopt_existing,
            record: None,
        })
    }

    /// Consult the store's record of targets this sink wrote before
    /// refusing a path whose labels are missing or different.
    pub fn with_target_record(mut self, record: Arc<dyn TargetRecord>) -> Self {
        self.record = Some(record);
        self
    }

    /// Use another clock for token renewal deadlines (tests; the daemon's
    /// shared clock).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Install a fault-injection hook (tests).
    pub fn with_write_hook(mut self, hook: WriteHook) -> Self {
        self.hook = Some(hook);
        self
    }

    pub fn auth_stats(&self) -> VaultAuthStats {
        VaultAuthStats {
            logins: self.counters.logins.load(Ordering::Relaxed),
            renewals: self.counters.renewals.load(Ordering::Relaxed),
            lookups: self.counters.lookups.load(Ordering::Relaxed),
        }
    }

    fn is_approle(&self) -> bool {
        matches!(self.auth, AuthMethod::AppRole { .. })
    }

    fn err_retry(&self, msg: impl Into<String>) -> SinkError {
        SinkError::retryable(&self.name, msg)
    }

    fn err_perm(&self, msg: impl Into<String>) -> SinkError {
        SinkError::permanent(&self.name, msg)
    }

    // ------------------------------------------------------------ HTTP

    /// One request. `token` is sent as `X-Vault-Token` (marked sensitive so
    /// no `Debug` of the request shows it). Transport failures become
    /// retryable errors; statuses are left to the caller.
    async fn call(
        &self,
        method: Method,
        api_path: &str,
        token: Option<&Secret>,
        body: Option<&[u8]>,
    ) -> Result<VaultResponse, SinkError> {
        let url = format!("{}/v1/{}", self.address, api_path);
        let mut req = self
            .client
            .request(method.clone(), &url)
            .header("X-Vault-Request", "true");
        if let Some(t) = token {
            let mut v = HeaderValue::from_str(t.expose()).map_err(|_| {
                self.err_perm("the Vault token has characters not allowed in a header")
            })?;
            v.set_sensitive(true);
            req = req.header("X-Vault-Token", v);
        }
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(b) = body {
            req = req
                .header(CONTENT_TYPE, "application/json")
                .body(b.to_vec());
        }
        let resp = req.send().await.map_err(|e| {
            let (_, what) = response::describe_send_error(e, self.timeout);
            self.err_retry(format!("{method} {}/v1/{api_path}: {what}", self.address))
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = response::read_body(resp).await.map_err(|e| {
            self.err_retry(format!(
                "{method} {}/v1/{api_path}: reading the response: {}",
                self.address,
                match e {
                    ReadError::Timeout =>
                        format!("timed out after {}", crate::clock::human(self.timeout)),
                    ReadError::TooLarge => "response too large".into(),
                    ReadError::Transport(t) => t,
                }
            ))
        })?;
        tracing::debug!(sink = %self.name, method = %method, path = %api_path, status = status.as_u16(), "vault call");
        Ok(VaultResponse {
            status,
            headers,
            body,
        })
    }

    /// Turn a non-success response into a `Failure`. `quote`: the request
    /// carried no secret, so Vault's error envelope may be quoted; otherwise
    /// only [`Described`] is kept.
    fn failure(&self, what: &str, r: &VaultResponse, quote: bool) -> Failure {
        let (msg, class) = if quote {
            let errors = r.errors();
            let msg = if errors.is_empty() {
                format!("{what}: {}", r.described())
            } else {
                format!("{what}: HTTP {}: {errors}", r.status.as_u16())
            };
            (msg, classify(r.status, &errors))
        } else {
            let class = if r.is_cas_mismatch() {
                Class::CasMismatch
            } else {
                classify(r.status, "")
            };
            (format!("{what}: {}", r.described()), class)
        };
        match class {
            Class::Denied => Failure::Denied(self.err_perm(msg)),
            Class::Retryable => {
                let mut e = self.err_retry(msg);
                e.retry_after = retry_after(&r.headers);
                Failure::Other(e)
            }
            Class::CasMismatch | Class::Permanent => Failure::Other(self.err_perm(msg)),
        }
    }

    // ------------------------------------------------------------ auth

    /// A token good for the next few requests: log in, look up or renew as
    /// needed.
    async fn token(&self) -> Result<Secret, SinkError> {
        let mut guard = self.token.lock().await;
        let now = self.clock.now();
        let cover = min_cover(self.timeout);
        let due = match guard.as_ref() {
            None => None,
            Some(t) if !t.renew_due(now, cover) => return Ok(t.token.clone()),
            Some(t) => Some(t.token.clone()),
        };
        let Some(current) = due else {
            let fresh = self.acquire().await?;
            let tok = fresh.token.clone();
            *guard = Some(fresh);
            return Ok(tok);
        };
        // Renewal time.
        let (renewable, wanted, remaining) = {
            let s = guard.as_ref().expect("checked above");
            (s.renewable, s.wanted, s.remaining(now))
        };
        let renewed = if renewable {
            self.renew(&current, wanted).await
        } else {
            Err(self.err_perm("token is not renewable"))
        };
        let decision = match &renewed {
            Ok((granted, renewable)) => {
                after_renewal(self.is_approle(), *granted, *renewable, wanted, cover)
            }
            Err(_) if self.is_approle() => AfterRenewal::Relogin,
            Err(_) => AfterRenewal::Keep,
        };
        match (decision, renewed) {
            (AfterRenewal::Keep, Ok((granted, renewable))) => {
                let s = guard.as_mut().expect("checked above");
                s.granted_at = now;
                s.ttl = granted;
                s.renewable = renewable;
                Ok(current)
            }
            (AfterRenewal::Keep, Err(e)) => {
                // A static token whose renewal failed: use it while it lasts.
                let remaining = remaining.unwrap_or(Duration::MAX);
                if remaining > Duration::ZERO {
                    tracing::warn!(sink = %self.name, error = %e.message, remaining_s = remaining.as_secs(), "vault token renewal failed; using the token while it lasts");
                    // A refusal will not change: stop asking. A transient
                    // failure is tried again on the next call.
                    if !e.retryable {
                        let s = guard.as_mut().expect("checked above");
                        s.renewable = false;
                    }
                    Ok(current)
                } else {
                    // Perhaps the operator has put a new token in place.
                    let fresh = self.acquire().await?;
                    let tok = fresh.token.clone();
                    *guard = Some(fresh);
                    Ok(tok)
                }
            }
            (AfterRenewal::Relogin, r) => {
                tracing::info!(sink = %self.name, renewal = %match &r { Ok(_) => "too short or not renewable".to_string(), Err(e) => e.message.clone() }, "vault token renewal did not cover the next writes; logging in again");
                let fresh = self.acquire().await?;
                let tok = fresh.token.clone();
                *guard = Some(fresh);
                Ok(tok)
            }
        }
    }

    /// A fresh token: AppRole login, or the configured token looked up.
    async fn acquire(&self) -> Result<TokenState, SinkError> {
        match &self.auth {
            AuthMethod::AppRole {
                role_id,
                secret_id,
                mount,
            } => self.login(role_id, secret_id, mount).await,
            AuthMethod::Token(r) => {
                let token = r
                    .resolve_now()
                    .map_err(|e| self.err_perm(format!("vault token {r}: {e}")))?;
                self.lookup(token).await
            }
        }
    }

    async fn login(
        &self,
        role_id: &SecretRef,
        secret_id: &SecretRef,
        mount: &str,
    ) -> Result<TokenState, SinkError> {
        let role = role_id
            .resolve_now()
            .map_err(|e| self.err_perm(format!("approle role_id {role_id}: {e}")))?;
        let secret = secret_id
            .resolve_now()
            .map_err(|e| self.err_perm(format!("approle secret_id {secret_id}: {e}")))?;
        let body = Zeroizing::new(format!(
            "{{\"role_id\":{},\"secret_id\":{}}}",
            *json_string(&role),
            *json_string(&secret)
        ));
        let now = self.clock.now();
        let r = self
            .call(
                Method::POST,
                &format!("auth/{mount}/login"),
                None,
                Some(body.as_bytes()),
            )
            .await?;
        drop(body);
        if !r.status.is_success() {
            return Err(
                match self.failure(&format!("approle login at auth/{mount}"), &r, true) {
                    // A bad role or secret id is 400; neither heals by waiting.
                    Failure::Denied(e) | Failure::Other(e) => e,
                },
            );
        }
        #[derive(Deserialize)]
        struct Auth {
            client_token: SecretDe,
            #[serde(default)]
            lease_duration: u64,
            #[serde(default)]
            renewable: bool,
        }
        #[derive(Deserialize)]
        struct Login {
            auth: Option<Auth>,
        }
        let parsed: Login = serde_json::from_slice(&r.body).map_err(|_| {
            self.err_retry(format!(
                "approle login: unexpected response: {}",
                r.described()
            ))
        })?;
        let auth = parsed
            .auth
            .ok_or_else(|| self.err_retry("approle login: response has no auth"))?;
        self.counters.logins.fetch_add(1, Ordering::Relaxed);
        let ttl = (auth.lease_duration > 0).then(|| Duration::from_secs(auth.lease_duration));
        tracing::info!(sink = %self.name, ttl_s = auth.lease_duration, renewable = auth.renewable, "logged in to vault with approle");
        Ok(TokenState {
            token: auth.client_token.0,
            granted_at: now,
            ttl,
            renewable: auth.renewable,
            wanted: ttl,
        })
    }

    async fn lookup(&self, token: Secret) -> Result<TokenState, SinkError> {
        let now = self.clock.now();
        let r = self
            .call(Method::GET, "auth/token/lookup-self", Some(&token), None)
            .await?;
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        if !r.status.is_success() {
            return Err(match self.failure("vault token lookup-self", &r, true) {
                Failure::Denied(e) | Failure::Other(e) => e,
            });
        }
        #[derive(Deserialize)]
        struct Data {
            #[serde(default)]
            ttl: u64,
            /// The TTL the token was created with: what a renewal asks for.
            #[serde(default)]
            creation_ttl: u64,
            #[serde(default)]
            renewable: bool,
        }
        #[derive(Deserialize)]
        struct Lookup {
            data: Data,
        }
        let parsed: Lookup = serde_json::from_slice(&r.body).map_err(|_| {
            self.err_retry(format!(
                "lookup-self: unexpected response: {}",
                r.described()
            ))
        })?;
        let ttl = (parsed.data.ttl > 0).then(|| Duration::from_secs(parsed.data.ttl));
        tracing::debug!(sink = %self.name, ttl_s = parsed.data.ttl, renewable = parsed.data.renewable, "vault token looked up");
        let wanted = match parsed.data.creation_ttl {
            0 => ttl,
            c => Some(Duration::from_secs(c)),
        };
        Ok(TokenState {
            token,
            granted_at: now,
            ttl,
            renewable: parsed.data.renewable,
            wanted,
        })
    }

    /// `renew-self`, asking for the TTL first granted. Returns the lease
    /// granted and whether it can be renewed again.
    async fn renew(
        &self,
        token: &Secret,
        wanted: Option<Duration>,
    ) -> Result<(Option<Duration>, bool), SinkError> {
        let body = match wanted {
            Some(w) => format!("{{\"increment\":\"{}s\"}}", w.as_secs()),
            None => "{}".to_string(),
        };
        let r = self
            .call(
                Method::POST,
                "auth/token/renew-self",
                Some(token),
                Some(body.as_bytes()),
            )
            .await?;
        if !r.status.is_success() {
            return Err(match self.failure("vault token renew-self", &r, true) {
                Failure::Denied(e) | Failure::Other(e) => e,
            });
        }
        #[derive(Deserialize)]
        struct Auth {
            #[serde(default)]
            lease_duration: u64,
            #[serde(default)]
            renewable: bool,
        }
        #[derive(Deserialize)]
        struct Renew {
            auth: Option<Auth>,
        }
        let parsed: Renew = serde_json::from_slice(&r.body).map_err(|_| {
            self.err_retry(format!(
                "renew-self: unexpected response: {}",
                r.described()
            ))
        })?;
        let auth = parsed
            .auth
            .ok_or_else(|| self.err_retry("renew-self: response has no auth"))?;
        self.counters.renewals.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(sink = %self.name, ttl_s = auth.lease_duration, "vault token renewed");
        let ttl = (auth.lease_duration > 0).then(|| Duration::from_secs(auth.lease_duration));
        Ok((ttl, auth.renewable))
    }

    /// After a 403 with `used`: get a different token if we can. Returns
    /// whether the operation is worth one more try.
    async fn reauthenticate(&self, used: &Secret) -> Result<bool, SinkError> {
        let mut guard = self.token.lock().await;
        if let Some(t) = guard.as_ref()
            && t.token != *used
        {
            // Another publish already replaced it.
            return Ok(true);
        }
        match &self.auth {
            AuthMethod::AppRole { .. } => {
                tracing::info!(sink = %self.name, "vault denied the token; logging in again");
                *guard = None;
                *guard = Some(self.acquire().await?);
                Ok(true)
            }
            AuthMethod::Token(r) => {
                // The operator may have put a new token in place.
                let Ok(t) = r.resolve_now() else {
                    return Ok(false);
                };
                if t == *used {
                    return Ok(false);
                }
                tracing::info!(sink = %self.name, "vault denied the token; using the new token from {r}");
                *guard = Some(self.lookup(t).await?);
                Ok(true)
            }
        }
    }

    /// Run `op` with a token; after a 403, re-authenticate once and retry.
    async fn with_token<T, F, Fut>(&self, op: F) -> Result<T, SinkError>
    where
        F: Fn(Secret) -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let token = self.token().await?;
        match op(token.clone()).await {
            Ok(v) => Ok(v),
            Err(Failure::Other(e)) => Err(e),
            Err(Failure::Denied(e)) => {
                if self.reauthenticate(&token).await? {
                    let token = self.token().await?;
                    match op(token).await {
                        Ok(v) => Ok(v),
                        Err(Failure::Denied(e) | Failure::Other(e)) => Err(e),
                    }
                } else {
                    Err(e)
                }
            }
        }
    }

    // ------------------------------------------------------------ KV v2

    fn kv(&self, lineage: &str, policy: &str) -> Result<KvPath, SinkError> {
        kv_path(&self.path.render(lineage, policy)).map_err(|m| self.err_perm(m))
    }

    /// The metadata read: current version and rekey's labels, or
    /// [`Existing::Absent`] on 404.
    async fn existing(&self, token: &Secret, path: &KvPath) -> Result<Existing, Failure> {
        let r = self
            .call(
                Method::GET,
                &format!("{}/metadata/{}", self.mount, path.encoded),
                Some(token),
                None,
            )
            .await?;
        if r.status == StatusCode::NOT_FOUND {
            return Ok(Existing::Absent);
        }
        if !r.status.is_success() {
            return Err(self.failure(
                &format!("reading metadata of {}/{}", self.mount, path.shown),
                &r,
                true,
            ));
        }
        #[derive(Deserialize)]
        struct Data {
            #[serde(default)]
            current_version: u64,
            #[serde(default)]
            custom_metadata: Option<std::collections::BTreeMap<String, serde_json::Value>>,
        }
        #[derive(Deserialize)]
        struct Meta {
            data: Data,
        }
        let m: Meta = serde_json::from_slice(&r.body).map_err(|e| {
            self.err_retry(format!(
                "metadata of {}: unexpected response ({})",
                path.shown,
                response::json_problem(&e)
            ))
        })?;
        let custom = m.data.custom_metadata.unwrap_or_default();
        let label = |k: &str| custom.get(k).and_then(|v| v.as_str()).map(str::to_string);
        Ok(Existing::Present {
            version: m.data.current_version,
            labels: Labels {
                policy: label(LABEL_POLICY),
                lineage: label(LABEL_LINEAGE),
                fence: label(LABEL_FENCE).and_then(|f| f.parse().ok()),
            },
        })
    }

    /// May this publication write over what is at `path`? A permanent
    /// error names the path, what its labels say and the way to adopt it.
    fn check_ownership(
        &self,
        path: &KvPath,
        existing: &Existing,
        p: &Publication<'_>,
    ) -> Result<(), SinkError> {
        let Existing::Present { labels, .. } = existing else {
            return Ok(());
        };
        if labels.written_for(p.policy, p.lineage) || self.adopt_existing {
            return Ok(());
        }
        let target = format!("{}/{}", self.mount, path.shown);
        if self
            .record
            .as_ref()
            .is_some_and(|r| r.wrote(&self.name, &target, p.policy, p.lineage))
        {
            return Ok(());
        }
        Err(self.err_perm(format!(
            "refusing to overwrite {target}: it exists and rekey did not write it for policy {:?}, lineage {:?} ({labels}); to take it over, set adopt_existing = true on sink {:?}",
            p.policy,
            crate::logging::escape(p.lineage),
            self.name
        )))
    }

    /// With a fence (PostgreSQL state), refuse a path whose `rekey_fence`
    /// label is newer than this write's: a newer leader wrote it. The data
    /// write that follows is check-and-set on the version read with it, so
    /// a newer leader's write in between fails it and it is read again.
    fn check_fence(
        &self,
        path: &KvPath,
        existing: &Existing,
        p: &Publication<'_>,
    ) -> Result<(), SinkError> {
        if !super::TOKENS_CHECKED {
            return Ok(());
        }
        if let (Some(mine), Existing::Present { labels, .. }) = (p.fence, existing)
            && let Some(held) = labels.fence
            && held > mine
        {
            return Err(SinkError::fenced(
                &self.name,
                &format!("{}/{}", self.mount, path.shown),
                held,
                mine,
            ));
        }
        Ok(())
    }

    /// One check-and-set write. `Ok(None)`: another writer won the race.
    async fn write(
        &self,
        token: &Secret,
        path: &KvPath,
        cas: u64,
        fields: &SecretFields,
    ) -> Result<Option<u64>, Failure> {
        let data = fields.to_json();
        let mut body = Zeroizing::new(String::with_capacity(data.len() + 40));
        body.push_str(&format!("{{\"options\":{{\"cas\":{cas}}},\"data\":"));
        body.push_str(&data);
        body.push('}');
        drop(data);
        let r = self
            .call(
                Method::POST,
                &format!("{}/data/{}", self.mount, path.encoded),
                Some(token),
                Some(body.as_bytes()),
            )
            .await?;
        drop(body);
        if !r.status.is_success() {
            if r.is_cas_mismatch() {
                return Ok(None);
            }
            return Err(self.failure(&format!("writing {}/{}", self.mount, path.shown), &r, false));
        }
        #[derive(Deserialize)]
        struct Data {
            version: u64,
        }
        #[derive(Deserialize)]
        struct Written {
            data: Data,
        }
        let w: Written = serde_json::from_slice(&r.body).map_err(|_| {
            self.err_retry(format!(
                "write of {}: unexpected response: {}",
                path.shown,
                r.described()
            ))
        })?;
        Ok(Some(w.data.version))
    }

    /// Set `custom_metadata`: the labels (always), and once the data is
    /// written the rotation's details.
    async fn write_metadata(
        &self,
        token: &Secret,
        path: &KvPath,
        p: &Publication<'_>,
        written: bool,
    ) -> Result<(), Failure> {
        let mut custom = serde_json::Map::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                custom.insert(k.to_string(), serde_json::Value::String(v));
            }
        };
        put(LABEL_POLICY, Some(p.policy.to_string()));
        put(LABEL_LINEAGE, Some(p.lineage.to_string()));
        put("rekey_rotation", Some(p.rotation_id.to_string()));
        put(LABEL_FENCE, p.fence.map(|f| f.to_string()));
        if written {
            put("key_id", p.key_id.map(str::to_string));
            put("expires_at", p.expires_at.map(rfc3339));
            put("fingerprint", Some(p.fingerprint.to_string()));
        }
        let body = serde_json::json!({ "custom_metadata": custom }).to_string();
        let r = self
            .call(
                Method::POST,
                &format!("{}/metadata/{}", self.mount, path.encoded),
                Some(token),
                Some(body.as_bytes()),
            )
            .await?;
        if !r.status.is_success() {
            return Err(self.failure(
                &format!("writing metadata of {}/{}", self.mount, path.shown),
                &r,
                true,
            ));
        }
        Ok(())
    }

    /// What is stored now: `(fingerprint, version)`, or `None` when the path
    /// is missing or its current version deleted.
    async fn read_current(
        &self,
        token: &Secret,
        path: &KvPath,
    ) -> Result<Option<(String, u64)>, Failure> {
        let r = self
            .call(
                Method::GET,
                &format!("{}/data/{}", self.mount, path.encoded),
                Some(token),
                None,
            )
            .await?;
        if r.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status.is_success() {
            return Err(self.failure(&format!("reading {}/{}", self.mount, path.shown), &r, true));
        }
        #[derive(Deserialize)]
        struct Meta {
            #[serde(default)]
            version: u64,
        }
        #[derive(Deserialize)]
        struct Data {
            data: Option<FieldsDe>,
            metadata: Option<Meta>,
        }
        #[derive(Deserialize)]
        struct Read {
            data: Data,
        }
        // The error names the field that failed, never a value.
        let parsed: Read = serde_json::from_slice(&r.body).map_err(|_| {
            self.err_perm(format!(
                "{}/{} does not hold an object of string values",
                self.mount, path.shown
            ))
        })?;
        Ok(parsed.data.data.map(|f| {
            (
                f.0.fingerprint(),
                parsed.data.metadata.map(|m| m.version).unwrap_or(0),
            )
        }))
    }

    async fn hook(&self, stage: WriteStage) {
        if let Some(h) = &self.hook {
            h(stage).await;
        }
    }

    async fn publish_with(&self, token: Secret, p: &Publication<'_>) -> Result<String, Failure> {
        let path = self.kv(p.lineage, p.policy)?;
        let mut version = None;
        for attempt in 1..=CAS_ATTEMPTS {
            let mut existing = self.existing(&token, &path).await?;
            self.check_ownership(&path, &existing, p)?;
            self.check_fence(&path, &existing, p)?;
            if existing == Existing::Absent {
                // Label first: a crash before the data write leaves a path
                // that the next attempt recognises as its own.
                self.write_metadata(&token, &path, p, false).await?;
                existing = self.existing(&token, &path).await?;
                self.check_ownership(&path, &existing, p)?;
            }
            let current = match &existing {
                Existing::Absent => 0,
                Existing::Present { version, .. } => *version,
            };
            self.hook(WriteStage::BeforeCasWrite {
                attempt,
                read_version: current,
            })
            .await;
            match self.write(&token, &path, current, p.secret).await? {
                Some(v) => {
                    version = Some(v);
                    break;
                }
                None => {
                    tracing::info!(sink = %self.name, path = %path.shown, attempt, cas = current, "vault check-and-set conflict: another writer changed the path; reading it again");
                }
            }
        }
        let Some(version) = version else {
            return Err(self
                .err_retry(format!(
                    "{}/{}: check-and-set conflict {CAS_ATTEMPTS} times in a row (another writer keeps changing this path)",
                    self.mount, path.shown
                ))
                .into());
        };
        self.write_metadata(&token, &path, p, true).await?;
        self.hook(WriteStage::BeforeReadBack { version }).await;
        match self.read_current(&token, &path).await? {
            Some((fp, _)) if fp == p.fingerprint => {
                tracing::debug!(sink = %self.name, path = %path.shown, version, "vault write verified");
                Ok(format!("{}/{} v{version}", self.mount, path.shown))
            }
            Some((_, read_version)) => Err(self
                .err_retry(format!(
                    "{}/{}: read-back after writing v{version} found v{read_version} with a different fingerprint",
                    self.mount, path.shown
                ))
                .into()),
            None => Err(self
                .err_retry(format!(
                    "{}/{}: read-back after writing v{version} found nothing",
                    self.mount, path.shown
                ))
                .into()),
        }
    }
}

#[async_trait]
impl Sink for VaultSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "vault"
    }

    fn target(&self) -> Option<&TargetTemplate> {
        Some(&self.path)
    }

    async fn publish(&self, p: &Publication<'_>) -> Result<Option<String>, SinkError> {
        self.with_token(|token| self.publish_with(token, p))
            .await
            .map(Some)
    }

    async fn read_back(&self, policy: &str, lineage: &str) -> Result<ReadBack, SinkError> {
        let path = self.kv(lineage, policy)?;
        let found = self
            .with_token(|token| {
                let path = &path;
                async move { self.read_current(&token, path).await }
            })
            .await?;
        Ok(match found {
            Some((fp, _)) => ReadBack::Fingerprint(fp),
            None => ReadBack::Missing,
        })
    }

    async fn read_back_key(
        &self,
        policy: &str,
        lineage: &str,
    ) -> Result<Option<super::HeldKey>, SinkError> {
        let ReadBack::Fingerprint(fingerprint) = self.read_back(policy, lineage).await? else {
            return Ok(None);
        };
        let path = self.kv(lineage, policy)?;
        let meta = self
            .with_token(|token| {
                let path = &path;
                async move {
                    let r = self
                        .call(
                            Method::GET,
                            &format!("{}/metadata/{}", self.mount, path.encoded),
                            Some(&token),
                            None,
                        )
                        .await?;
                    if !r.status.is_success() {
                        return Ok(None);
                    }
                    let doc: serde_json::Value =
                        serde_json::from_slice(&r.body).unwrap_or_default();
                    let custom = doc.pointer("/data/custom_metadata").cloned();
                    Ok(custom)
                }
            })
            .await?;
        let field = |k: &str| {
            meta.as_ref()
                .and_then(|m| m.get(k))
                .and_then(|v| v.as_str())
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let key_id = field("key_id");
        if key_id.is_none() {
            return Ok(None);
        }
        Ok(Some(super::HeldKey {
            key_id,
            key_name: field("key_name"),
            fingerprint,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_mismatch_is_told_apart_from_other_bad_requests() {
        let bad = StatusCode::BAD_REQUEST;
        assert_eq!(
            classify(
                bad,
                "check-and-set parameter did not match the current version"
            ),
            Class::CasMismatch
        );
        assert_eq!(
            classify(bad, "check-and-set parameter required for this call"),
            Class::Permanent
        );
        assert_eq!(
            classify(StatusCode::FORBIDDEN, "permission denied"),
            Class::Denied
        );
        for s in [412, 429, 500, 502, 503] {
            assert_eq!(
                classify(StatusCode::from_u16(s).unwrap(), ""),
                Class::Retryable,
                "{s}"
            );
        }
        assert_eq!(classify(StatusCode::NOT_FOUND, ""), Class::Permanent);
    }

    #[test]
    fn approle_logs_in_again_when_a_renewal_would_not_cover_the_next_writes() {
        let cover = Duration::from_secs(60);
        let h = |s| Some(Duration::from_secs(s));
        // Full renewal: keep.
        assert_eq!(
            after_renewal(true, h(1200), true, h(1200), cover),
            AfterRenewal::Keep
        );
        // Capped by token_max_ttl to less than half: log in again.
        assert_eq!(
            after_renewal(true, h(400), true, h(1200), cover),
            AfterRenewal::Relogin
        );
        // Shorter than the writes need.
        assert_eq!(
            after_renewal(true, h(30), true, h(40), cover),
            AfterRenewal::Relogin
        );
        // No longer renewable.
        assert_eq!(
            after_renewal(true, h(1200), false, h(1200), cover),
            AfterRenewal::Relogin
        );
        // A static token keeps whatever it got.
        assert_eq!(
            after_renewal(false, h(30), true, h(1200), cover),
            AfterRenewal::Keep
        );
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_ttl() {
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let s = TokenState {
            token: Secret::new("t"),
            granted_at: t0,
            ttl: Some(Duration::from_secs(1200)),
            renewable: true,
            wanted: Some(Duration::from_secs(1200)),
        };
        let cover = Duration::from_secs(60);
        assert!(!s.renew_due(t0 + chrono::Duration::seconds(799), cover));
        assert!(s.renew_due(t0 + chrono::Duration::seconds(800), cover));
        let root = TokenState { ttl: None, ..s };
        assert!(!root.renew_due(t0 + chrono::Duration::days(365), cover));
    }

    #[test]
    fn paths_are_checked_and_encoded() {
        let p = kv_path("/maas/billing svc").unwrap();
        assert_eq!(p.shown, "maas/billing svc");
        assert!(kv_path("maas/").is_err());
        assert!(kv_path("maas///").is_err());
        assert_eq!(p.encoded, "maas/billing%20svc");
        assert_eq!(kv_path("a/?x#y").unwrap().encoded, "a/%3Fx%23y");
        assert!(kv_path("maas/../sys").is_err());
        assert!(kv_path("maas//x").is_err());
        assert!(kv_path("/").is_err());
    }

    #[test]
    fn read_back_data_becomes_secret_fields() {
        let f: FieldsDe = serde_json::from_str(r#"{"api_key":"k1","other":"v"}"#).unwrap();
        assert_eq!(f.0.len(), 2);
        assert_eq!(f.0.get("api_key").unwrap().expose(), "k1");
        assert!(serde_json::from_str::<FieldsDe>(r#"{"n":1}"#).is_err());
    }

    #[test]
    fn a_field_that_is_not_utf8_reads_back_from_its_base64_form() {
        let mut fields = SecretFields::new();
        fields.insert("credential", Secret::new("id,key\n1,abc\n"));
        fields.insert(
            "credential_zip",
            Secret::from_bytes(vec![b'P', b'K', 3, 4, 0xff]),
        );
        // What publish writes into `data` reads back to the same fingerprint.
        let f: FieldsDe = serde_json::from_str(&fields.to_json()).unwrap();
        assert_eq!(f.0.fingerprint(), fields.fingerprint());
        assert!(serde_json::from_str::<FieldsDe>(r#"{"z":{"base64":"!!"}}"#).is_err());
    }

    #[test]
    fn every_rendered_vault_path_stays_beneath_its_prefix() {
        use rand::{Rng, SeedableRng};
        let seed: u64 = rand::random();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let t = TargetTemplate::parse("maas/{lineage}").unwrap();
        let pieces = [
            "..", ".", "/", "//", "%2e", "?", "#", "{", "}", "\n", "\0", "a", " ", "\\",
        ];
        for _ in 0..2000 {
            let mut name = String::new();
            for _ in 0..rng.random_range(0..10) {
                if rng.random_bool(0.2) {
                    let b: Vec<u8> = (0..rng.random_range(1..5)).map(|_| rng.random()).collect();
                    name.push_str(&String::from_utf8_lossy(&b));
                } else {
                    name.push_str(pieces[rng.random_range(0..pieces.len())]);
                }
            }
            let Ok(p) = kv_path(&t.render(&name, "p")) else {
                continue;
            };
            assert!(p.shown.starts_with("maas/"), "seed {seed}: {name:?}");
            for seg in p.encoded.split('/') {
                assert!(
                    !seg.is_empty() && seg != "." && seg != "..",
                    "seed {seed}: {name:?}"
                );
                assert!(
                    seg.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b)),
                    "seed {seed}: {name:?} -> {seg}"
                );
            }
        }
    }
}
