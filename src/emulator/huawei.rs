//! Emulator of Huawei Cloud NES node-provider credentials, with a fake IAM
//! token endpoint on the same server, served by `rekey emulate huawei`.
//!
//! - `POST /v3/auth/tokens`: IAM password login. The user, domain and
//!   password must match; the scope must be the emulator's project (by id,
//!   or by the name `ap-southeast-3`). Answers 201 with the token in
//!   `X-Subject-Token` and `{token:{expires_at, issued_at, …}}`; tokens live
//!   `--token-ttl` (24 h, as IAM's).
//! - `GET /v1/{project_id}/node-provider/credentials?offset=&limit=`:
//!   `offset` 0–1000, `limit` 1–1000 (default 10, the emulator's choice)
//!   but at most 100 per page; `{credentials:[…], count}` where `count` is
//!   the total (the docs leave it open; the emulator's reading).
//! - `POST …/credentials` `{description, eps_id, node_ids, control_type,
//!   allowlists}` (limits as documented) → 200 with the credential file: a
//!   real ZIP (`application/octet-stream`) holding `credential.csv`
//!   (`credential_id,api_key` header row and one row: the columns are the
//!   emulator's guess, undocumented), or with `--create-format text` the
//!   old text form (`PK` + 62 letters and digits).
//! - `PUT …/credentials/{id}` → 200 `null`; `DELETE …/credentials/{id}` →
//!   200 `null`; an unknown id answers 400 `BCS.03400001` (the docs list
//!   no 404), or 404 with `--delete-404`.
//! - Knobs: `--offset-pages` reads `offset` as a page number;
//!   `--time-format` writes `create_time` in another form (UTC+8);
//!   `--list-delay` hides credentials younger than it from listings.
//!
//! Every NES call must authenticate: an `X-Auth-Token` that is the static
//! `--token` or one the fake IAM issued and that has not expired, or an
//! `SDK-HMAC-SHA256` signature by `--access-key`/`--secret-key` with
//! `host` and `x-sdk-date` signed and `X-Sdk-Date` within 15 minutes.
//! Failures answer 401 `BCS.03401001`. The project id in the path must be
//! 32 characters (else 400 `BCS.03400001`) and the emulator's (else 401).
//! Throttling answers 429 `APIG.0308` (per operation); `--error-rate`
//! answers 500 `BCS.03500001`. Error bodies are `{code, error_code,
//! error_msg, message}` with `code` as a string.
//!
//! Admin API (the emulator framework's, `emulator::common`; loopback
//! only): `GET /__emulator/keys` (with the credential texts), `GET|POST
//! /__emulator/faults` (with `expire_tokens`), `GET /__emulator/stats`,
//! `GET /__emulator/requests`.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::common::{self, Core, Server};
use super::sig::{self, huawei as hsig};
use crate::secret::Secret;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8481";
pub const DEFAULT_PROJECT_ID: &str = "0123456789abcdef0123456789abcdef";
pub const DEFAULT_TOKEN: &str = "rekey-emulator-huawei-token";
pub const DEFAULT_IAM_DOMAIN: &str = "rekey-emulator";
pub const DEFAULT_IAM_USER: &str = "rekey";
pub const DEFAULT_IAM_PASSWORD: &str = "rekey-emulator-password";
pub const DEFAULT_ACCESS_KEY: &str = "REKEYEMULATORAK00000";
pub const DEFAULT_SECRET_KEY: &str = "rekey-emulator-huawei-secret-key";
/// The NES region; IAM scopes by this project name are accepted too.
pub const REGION: &str = "ap-southeast-3";
/// `X-Sdk-Date` may be this far from the emulator's clock.
pub const MAX_SDK_SKEW: Duration = Duration::from_secs(15 * 60);
/// `X-Sdk-Date` format (UTC), PROTOCOLS §3.2.
pub const SDK_DATE_FORMAT: &str = "%Y%m%dT%H%M%SZ";
const MAX_BODY: usize = 1024 * 1024;
const MAX_OFFSET: usize = 1000;
const MAX_PAGE: usize = 100;
const DEFAULT_LIMIT: usize = 10;

/// How the emulator behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Credentials present at start.
    pub keys: usize,
    /// Descriptions of seeded credentials: prefix + zero-padded number.
    pub name_prefix: String,
    pub latency: Duration,
    /// Share (0..=1) of authenticated NES calls answered 500.
    pub error_rate: f64,
    /// NES calls per second per operation before 429.
    pub rate_limit: Option<f64>,
    pub seed: Option<u64>,
    /// The 32-character project every path must name.
    pub project_id: String,
    /// A static token accepted as `X-Auth-Token` (`None`: only IAM's).
    pub token: Option<Secret>,
    /// The IAM user that may log in.
    pub iam_domain: String,
    pub iam_user: String,
    pub iam_password: Secret,
    /// Lifetime of IAM tokens.
    pub token_ttl: Duration,
    /// The AK/SK pair signatures must be made with.
    pub access_key: String,
    pub secret_key: Secret,
    /// Create answers a real ZIP holding `credential.csv` (the documented
    /// answer; `false`: the old text form `PK…`).
    pub create_zip: bool,
    /// Delete of an unknown id answers 404 (invented; the docs list 200,
    /// 400, 401 and 500 only, so by default it answers 400).
    pub delete_404: bool,
    /// `offset` counts pages of `limit` instead of items (the docs do not
    /// say which; rekey assumes items and must notice this).
    pub offset_pages: bool,
    /// How `create_time` is written: a chrono format applied in UTC+8
    /// (e.g. `%Y-%m-%dT%H:%M:%S%.3f%z`, `%Y/%m/%d %H:%M:%S`); `None`:
    /// RFC 3339 in UTC. The docs do not say which Huawei uses.
    pub time_format: Option<String>,
    pub knobs: common::CommonKnobs,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            keys: 0,
            name_prefix: "app-".into(),
            latency: Duration::ZERO,
            error_rate: 0.0,
            rate_limit: None,
            seed: None,
            project_id: DEFAULT_PROJECT_ID.into(),
            token: Some(Secret::new(DEFAULT_TOKEN)),
            iam_domain: DEFAULT_IAM_DOMAIN.into(),
            iam_user: DEFAULT_IAM_USER.into(),
            iam_password: Secret::new(DEFAULT_IAM_PASSWORD),
            token_ttl: Duration::from_secs(24 * 3600),
            access_key: DEFAULT_ACCESS_KEY.into(),
            secret_key: Secret::new(DEFAULT_SECRET_KEY),
            create_zip: true,
            delete_404: false,
            offset_pages: false,
            time_format: None,
            knobs: common::CommonKnobs::default(),
        }
    }
}

impl Options {
    fn validate(&self) -> Result<(), String> {
        common::check_start_dials(self.error_rate, self.rate_limit)?;
        if self.project_id.chars().count() != 32 {
            return Err(format!(
                "project id {:?} is not 32 characters",
                self.project_id
            ));
        }
        if self.token_ttl.is_zero() {
            return Err("token TTL must be positive".into());
        }
        Ok(())
    }
}

/// One credential as the emulator holds it (with its credential text;
/// `Debug` redacts it).
#[derive(Debug, Clone, PartialEq)]
pub struct EmulatedCredential {
    pub id: String,
    pub description: String,
    pub credential: Secret,
    pub eps_id: String,
    pub node_ids: Vec<String>,
    pub control_type: String,
    pub allowlists: Vec<Value>,
    pub created_at: DateTime<Utc>,
    /// When the emulator created it (for `--list-delay`).
    pub created_instant: Instant,
}

/// Answer the next `count` calls of `operation` (`list`, `create`,
/// `update`, `delete`, `iam` or `*`) with `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForcedFault {
    pub operation: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default = "one")]
    pub count: u32,
    /// `Retry-After` seconds to send (none by default: Huawei's docs show none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

fn one() -> u32 {
    1
}

/// A change of faults (`POST /__emulator/faults`): the framework's, with
/// `expire_tokens` (invalidate every IAM token issued so far);
/// `rate_limit` counts calls per operation.
pub type Faults = common::Faults<ForcedFault>;

/// Counters per operation (`GET /__emulator/stats`).
pub type OpStats = common::OpStats;

/// An operation: `iam`, `list`, `create`, `update` or `delete`, as the
/// framework counts, logs and limits calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Operation(pub &'static str);

impl common::Op for Operation {
    fn name(&self) -> &str {
        self.0
    }

    fn is_list(&self) -> bool {
        self.0 == "list"
    }

    fn known() -> Vec<Self> {
        ["iam", "list", "create", "update", "delete"]
            .into_iter()
            .map(Operation)
            .collect()
    }
}

/// One call as the emulator answered it (`GET /__emulator/requests`).
pub type LoggedRequest = common::LoggedRequest<Operation>;

struct St {
    creds: Vec<EmulatedCredential>,
    /// IAM tokens issued → expiry.
    tokens: HashMap<String, DateTime<Utc>>,
    rng: StdRng,
    create_zip: bool,
    /// Dials, forced faults, counts and the request log.
    core: Core<Operation, ForcedFault>,
}

struct Inner {
    opts: Options,
    st: Mutex<St>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, St> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running emulator.
pub struct Handle {
    server: Server,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HuaweiEmulator({})", self.server.addr())
    }
}

fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn iam_ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn new_uuid(rng: &mut StdRng) -> String {
    uuid::Builder::from_random_bytes(rng.random())
        .into_uuid()
        .to_string()
}

fn new_credential(
    st: &mut St,
    description: &str,
    created: DateTime<Utc>,
    body: Option<&serde_json::Map<String, Value>>,
) -> EmulatedCredential {
    let get_str = |k: &str, d: &str| {
        body.and_then(|b| b.get(k))
            .and_then(Value::as_str)
            .unwrap_or(d)
            .to_string()
    };
    let id = new_uuid(&mut st.rng);
    let key = common::alnum(&mut st.rng, 62);
    // The CSV's columns are undocumented; this is the emulator's guess.
    let credential = if st.create_zip {
        Secret::new(format!("credential_id,api_key\r\n{id},{key}\r\n"))
    } else {
        Secret::new(format!("PK{key}"))
    };
    let c = EmulatedCredential {
        id,
        description: description.to_string(),
        credential,
        created_instant: Instant::now(),
        eps_id: get_str("eps_id", "0"),
        node_ids: body
            .and_then(|b| b.get("node_ids"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        control_type: get_str("control_type", ""),
        allowlists: body
            .and_then(|b| b.get("allowlists"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        created_at: created,
    };
    st.creds.push(c.clone());
    c
}

/// Start on `listen` (`127.0.0.1:0` picks a port) in the background.
pub async fn start(opts: Options, listen: SocketAddr) -> io::Result<Handle> {
    opts.validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let seed = opts.seed.unwrap_or_else(|| rand::rng().random());
    let mut st = St {
        creds: Vec::with_capacity(opts.keys),
        tokens: HashMap::new(),
        rng: StdRng::seed_from_u64(seed),
        create_zip: opts.create_zip,
        core: Core::new(common::Dials::new(
            opts.rate_limit,
            opts.error_rate,
            opts.latency,
            seed.rotate_left(23) ^ 0x2545f491,
        )),
    };
    let now = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap_or_default();
    for i in 0..opts.keys {
        let age = st.rng.random_range(3600..60 * 86400);
        let name = format!("{}{:05}", opts.name_prefix, i + 1);
        new_credential(&mut st, &name, now - chrono::Duration::seconds(age), None);
    }
    let inner = Arc::new(Inner {
        opts,
        st: Mutex::new(st),
    });
    let app = common::admin_routes::<Inner>(axum::Router::new())
        .fallback(api)
        .with_state(inner.clone());
    let server = Server::start(listen, app).await?;
    tracing::debug!(addr = %server.addr(), "huawei emulator listening");
    Ok(Handle { server, inner })
}

impl Handle {
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://ADDR`: the provider's `endpoint` and the IAM `endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// Every credential, in creation order, with its text.
    pub fn keys(&self) -> Vec<EmulatedCredential> {
        self.inner.lock().creds.clone()
    }

    /// Add a credential as if created at `created_at`.
    pub fn insert_key(&self, description: &str, created_at: DateTime<Utc>) -> EmulatedCredential {
        new_credential(&mut self.inner.lock(), description, created_at, None)
    }

    /// Apply a fault change (all or nothing).
    pub fn set_faults(&self, faults: Faults) -> Result<(), String> {
        common::Emulator::apply_faults(&*self.inner, faults)
    }

    /// Invalidate every IAM token issued so far.
    pub fn expire_tokens(&self) {
        expire_all(&mut self.inner.lock());
    }

    /// How many IAM tokens were issued (valid or not).
    pub fn tokens_issued(&self) -> usize {
        self.inner.lock().tokens.len()
    }

    /// Every IAM token issued so far (expired ones too), so tests can look
    /// for them where they must not be (logs, errors).
    pub fn issued_tokens(&self) -> Vec<Secret> {
        self.inner.lock().tokens.keys().map(Secret::new).collect()
    }

    /// Counts per operation.
    pub fn stats(&self) -> BTreeMap<String, OpStats> {
        let st = self.inner.lock();
        st.core
            .stats()
            .into_iter()
            .map(|(o, s)| (o.0.to_string(), s))
            .collect()
    }

    /// Every call answered since start, in order.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.inner.lock().core.request_log()
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await
    }
}

/// Expired tokens are kept (as expired) so tests can still name them.
fn expire_all(st: &mut St) {
    for exp in st.tokens.values_mut() {
        *exp = DateTime::UNIX_EPOCH;
    }
}

impl common::Emulator for Inner {
    type Op = Operation;
    type Forced = ForcedFault;

    fn core<R>(&self, f: impl FnOnce(&mut Core<Operation, ForcedFault>) -> R) -> R {
        f(&mut self.lock().core)
    }

    fn keys_json(&self) -> Value {
        let st = self.lock();
        let creds: Vec<Value> = st
            .creds
            .iter()
            .map(|c| {
                let mut v = cred_json(&self.opts, c);
                v["credential"] = Value::from(c.credential.expose());
                v
            })
            .collect();
        json!({ "credentials": creds })
    }

    fn apply_faults(&self, f: Faults) -> Result<(), String> {
        common::refuse_flags(&f, "huawei", &["expire_tokens"])?;
        let mut st = self.lock();
        st.core.apply(&f)?;
        if f.expire_tokens {
            expire_all(&mut st);
        }
        Ok(())
    }

    fn faults_json(&self) -> Value {
        let st = self.lock();
        let mut v = st.core.faults_json();
        v["tokens_issued"] = json!(st.tokens.len());
        v
    }
}

// ---- the API --------------------------------------------------------------

fn nes_error(status: StatusCode, error_code: &str, error_msg: &str, message: &str) -> Response {
    (
        status,
        Json(json!({
            "code": status.as_u16().to_string(),
            "error_code": error_code,
            "error_msg": error_msg,
            "message": message,
        })),
    )
        .into_response()
}

fn bad_request(message: &str) -> Response {
    nes_error(
        StatusCode::BAD_REQUEST,
        "BCS.03400001",
        "Invalid request.",
        message,
    )
}

fn unauthorized(message: &str) -> Response {
    nes_error(
        StatusCode::UNAUTHORIZED,
        "BCS.03401001",
        "Authorization failed.",
        message,
    )
}

fn with_request_id(mut r: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        r.headers_mut().insert("x-request-id", v);
    }
    r
}

fn hdr<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Check the NES call's credentials; `Err` is the message of the 401.
fn authenticate(
    opts: &Options,
    st: &St,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), &'static str> {
    let now = Utc::now();
    if let Some(token) = hdr(headers, "x-auth-token") {
        let static_ok = opts
            .token
            .as_ref()
            .is_some_and(|t| tc3_eq(t.expose(), token));
        let issued_ok = st.tokens.get(token).is_some_and(|exp| *exp > now);
        return if static_ok || issued_ok {
            Ok(())
        } else {
            Err("request token is not valid")
        };
    }
    let Some(auth) = hdr(headers, "authorization") else {
        return Err("request has neither X-Auth-Token nor an AK/SK signature");
    };
    let p = hsig::parse(auth).ok_or("malformed SDK-HMAC-SHA256 Authorization")?;
    if p.access != opts.access_key {
        return Err("unknown access key");
    }
    if !p.signed_headers.iter().any(|h| h == "host")
        || !p.signed_headers.iter().any(|h| h == "x-sdk-date")
    {
        return Err("host and x-sdk-date must be signed");
    }
    let date = hdr(headers, "x-sdk-date").ok_or("X-Sdk-Date is missing")?;
    let when = chrono::NaiveDateTime::parse_from_str(date, SDK_DATE_FORMAT)
        .map_err(|_| "X-Sdk-Date is not YYYYMMDDTHHMMSSZ")?
        .and_utc();
    let skew = (now - when).num_seconds().unsigned_abs();
    if skew > MAX_SDK_SKEW.as_secs() {
        return Err("X-Sdk-Date is more than 15 minutes from the server time");
    }
    // Exactly the headers the client lists, content-type included when it
    // is listed (the official Python SDK signs it).
    let mut values: Vec<&str> = Vec::new();
    for h in &p.signed_headers {
        values.push(hdr(headers, h).ok_or("a signed header is missing")?);
    }
    let expected = hsig::expected(
        opts.secret_key.expose(),
        &p,
        date,
        method.as_str(),
        path,
        query,
        &values,
        &hsig::body_hash(body, hdr(headers, "x-sdk-content-sha256")),
    );
    if sig::same(&expected, &p.signature) {
        Ok(())
    } else {
        Err("verify aksk signature fail")
    }
}

fn tc3_eq(a: &str, b: &str) -> bool {
    sig::same(a, b)
}

fn count(st: &mut St, op: &'static str, f: impl FnOnce(&mut OpStats)) {
    st.core.count(&Operation(op), f);
}

/// The operation and list page (from 1) of a request, for the log.
fn classify(
    opts: &Options,
    method: &Method,
    path: &str,
    query: &str,
) -> Option<(Operation, Option<usize>)> {
    if path == "/v3/auth/tokens" || path == "/v3/auth/tokens/" {
        return Some((Operation("iam"), None));
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let op = match (segs.as_slice(), method.clone()) {
        (["v1", _, "node-provider", "credentials"], Method::GET) => "list",
        (["v1", _, "node-provider", "credentials"], Method::POST) => "create",
        (["v1", _, "node-provider", "credentials", _], Method::PUT) => "update",
        (["v1", _, "node-provider", "credentials", _], Method::DELETE) => "delete",
        _ => return None,
    };
    let page = (op == "list").then(|| {
        let pairs = common::query_pairs(query).unwrap_or_default();
        let get = |k: &str, d: usize| {
            pairs
                .iter()
                .find(|(n, _)| n == k)
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(d)
        };
        let offset = get("offset", 0);
        if opts.offset_pages {
            offset + 1
        } else {
            offset / get("limit", DEFAULT_LIMIT).clamp(1, MAX_PAGE) + 1
        }
    });
    Some((Operation(op), page))
}

async fn api(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let (parts, body) = req.into_parts();
    let body: Bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return with_request_id(bad_request("request body too large"), &request_id),
    };
    let latency = inner.lock().core.dials.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let r = if path == "/v3/auth/tokens" || path == "/v3/auth/tokens/" {
        iam(&inner, &parts.method, &parts.headers, &body)
    } else {
        nes(&inner, &parts.method, &path, &query, &parts.headers, &body)
    };
    if let Some((op, page)) = classify(&inner.opts, &parts.method, &path, &query) {
        let status = r.status().as_u16();
        inner.lock().core.log(op, page, status, None);
    }
    with_request_id(r, &request_id)
}

impl common::Forced for ForcedFault {
    fn operation(&self) -> &str {
        &self.operation
    }

    fn count_mut(&mut self) -> &mut u32 {
        &mut self.count
    }

    fn check(&self) -> Result<(), String> {
        if !["list", "create", "update", "delete", "iam", "*"].contains(&self.operation.as_str()) {
            return Err(format!(
                "operation {:?} is not list, create, update, delete, iam or *",
                self.operation
            ));
        }
        if !(400..=599).contains(&self.status) {
            return Err(format!("status {} is not an error status", self.status));
        }
        Ok(())
    }
}

/// A forced fault for `op`, if one is queued.
fn take_forced(st: &mut St, op: &'static str) -> Option<ForcedFault> {
    st.core.take_forced(&Operation(op))
}

fn forced_response(f: &ForcedFault) -> Response {
    let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (code, msg) = match f.status {
        401 => ("BCS.03401001", "Authorization failed."),
        429 => (
            "APIG.0308",
            "The throttling threshold has been reached: policy user over ratelimit",
        ),
        400..=499 => ("BCS.03400001", "Invalid request."),
        _ => ("BCS.03500001", "Internal error."),
    };
    let mut r = nes_error(
        status,
        f.error_code.as_deref().unwrap_or(code),
        msg,
        f.message.as_deref().unwrap_or("injected fault"),
    );
    if let Some(s) = f.retry_after
        && let Ok(v) = HeaderValue::from_str(&s.to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

fn iam(inner: &Inner, method: &Method, headers: &HeaderMap, body: &[u8]) -> Response {
    let opts = &inner.opts;
    let mut st = inner.lock();
    count(&mut st, "iam", |s| s.requests += 1);
    let iam_error = |status: StatusCode, message: &str| {
        (
            status,
            Json(json!({"error": {
                "code": status.as_u16(),
                "message": message,
                "title": status.canonical_reason().unwrap_or(""),
            }})),
        )
            .into_response()
    };
    if method != Method::POST {
        count(&mut st, "iam", |s| s.errors += 1);
        return iam_error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
    }
    if let Some(f) = take_forced(&mut st, "iam") {
        count(&mut st, "iam", |s| {
            s.faults += 1;
            s.errors += 1;
        });
        return forced_response(&f);
    }
    let ct = hdr(headers, "content-type").unwrap_or("");
    if !ct.to_ascii_lowercase().starts_with("application/json") {
        count(&mut st, "iam", |s| s.errors += 1);
        return iam_error(
            StatusCode::BAD_REQUEST,
            "Content-Type must be application/json",
        );
    }
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            count(&mut st, "iam", |s| s.errors += 1);
            return iam_error(
                StatusCode::BAD_REQUEST,
                "The request body is not valid JSON.",
            );
        }
    };
    let id = &v["auth"]["identity"];
    let methods_ok = id["methods"]
        .as_array()
        .is_some_and(|m| m.iter().any(|x| x == "password"));
    let user = &id["password"]["user"];
    let creds_ok = methods_ok
        && user["domain"]["name"].as_str() == Some(opts.iam_domain.as_str())
        && user["name"].as_str() == Some(opts.iam_user.as_str())
        && user["password"]
            .as_str()
            .is_some_and(|p| tc3_eq(p, opts.iam_password.expose()));
    if !creds_ok {
        count(&mut st, "iam", |s| {
            s.errors += 1;
            s.auth_failures += 1;
        });
        return iam_error(
            StatusCode::UNAUTHORIZED,
            "The username or password is wrong.",
        );
    }
    let scope = &v["auth"]["scope"]["project"];
    let scope_ok = scope["id"].as_str() == Some(opts.project_id.as_str())
        || scope["name"].as_str() == Some(REGION);
    if !scope_ok {
        count(&mut st, "iam", |s| s.errors += 1);
        return iam_error(
            StatusCode::BAD_REQUEST,
            "The scope must be the project of this emulator.",
        );
    }
    let issued = Utc::now();
    let expires = issued + chrono::Duration::from_std(opts.token_ttl).unwrap_or_default();
    let token = format!("MIIemu{}", common::alnum(&mut st.rng, 180));
    st.tokens.insert(token.clone(), expires);
    count(&mut st, "iam", |s| s.ok += 1);
    let mut r = (
        StatusCode::CREATED,
        Json(json!({"token": {
            "expires_at": iam_ts(expires),
            "issued_at": iam_ts(issued),
            "methods": ["password"],
            "project": {"id": opts.project_id, "name": REGION, "domain": {"name": opts.iam_domain}},
            "user": {"name": opts.iam_user, "domain": {"name": opts.iam_domain}},
        }})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&token) {
        r.headers_mut().insert("x-subject-token", v);
    }
    r
}

fn nes(
    inner: &Inner,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let opts = &inner.opts;
    // /v1/{project_id}/node-provider/credentials[/{id}]
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (project, id) = match segs.as_slice() {
        ["v1", p, "node-provider", "credentials"] => (*p, None),
        ["v1", p, "node-provider", "credentials", id] if !id.is_empty() => (*p, Some(*id)),
        _ => {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({"error_code": "APIG.0101", "error_msg": "The API does not exist or has not been published in the environment"})),
            )
                .into_response();
        }
    };
    let op: &'static str = match (method.clone(), id) {
        (Method::GET, None) => "list",
        (Method::POST, None) => "create",
        (Method::PUT, Some(_)) => "update",
        (Method::DELETE, Some(_)) => "delete",
        _ => {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(json!({"error_code": "APIG.0101", "error_msg": "method not allowed"})),
            )
                .into_response();
        }
    };
    let mut st = inner.lock();
    count(&mut st, op, |s| s.requests += 1);
    if let Err(m) = authenticate(opts, &st, method, path, query, headers, body) {
        count(&mut st, op, |s| {
            s.errors += 1;
            s.auth_failures += 1;
        });
        return unauthorized(m);
    }
    if project.chars().count() != 32 {
        count(&mut st, op, |s| s.errors += 1);
        return bad_request("project_id must be 32 characters");
    }
    if project != opts.project_id {
        count(&mut st, op, |s| {
            s.errors += 1;
            s.auth_failures += 1;
        });
        return unauthorized("the credentials are not valid for this project");
    }
    {
        if st.core.dials.throttle(op).is_err() {
            count(&mut st, op, |s| {
                s.errors += 1;
                s.rate_limited += 1;
            });
            return nes_error(
                StatusCode::TOO_MANY_REQUESTS,
                "APIG.0308",
                "The throttling threshold has been reached: policy user over ratelimit",
                "",
            );
        }
    }
    if let Some(f) = take_forced(&mut st, op) {
        count(&mut st, op, |s| {
            s.errors += 1;
            s.faults += 1;
        });
        return forced_response(&f);
    }
    if st.core.dials.draw_error() {
        count(&mut st, op, |s| {
            s.errors += 1;
            s.faults += 1;
        });
        return nes_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "BCS.03500001",
            "Internal error.",
            "injected by --error-rate",
        );
    }
    let r = match op {
        "list" => list(&st, opts, query),
        "create" => create(&mut st, headers, body),
        "update" => update(&mut st, id.unwrap_or_default(), headers, body),
        _ => delete(&mut st, opts, id.unwrap_or_default()),
    };
    let okay = r.status().is_success();
    count(
        &mut st,
        op,
        |s| {
            if okay { s.ok += 1 } else { s.errors += 1 }
        },
    );
    r
}

fn create_time(opts: &Options, t: DateTime<Utc>) -> String {
    match &opts.time_format {
        None => ts(t),
        Some(f) => {
            let beijing = chrono::FixedOffset::east_opt(8 * 3600).expect("UTC+8");
            let mut out = String::new();
            // A bad format renders as itself (the knob's author sees it).
            if std::fmt::write(
                &mut out,
                format_args!("{}", t.with_timezone(&beijing).format(f)),
            )
            .is_err()
            {
                return f.clone();
            }
            out
        }
    }
}

fn cred_json(opts: &Options, c: &EmulatedCredential) -> Value {
    json!({
        "id": c.id,
        "eps_info": {"eps_id": c.eps_id, "eps_name": if c.eps_id == "0" { "default" } else { "" }},
        "description": c.description,
        "node_ids": c.node_ids,
        "control_type": c.control_type,
        "allowlists": c.allowlists,
        "create_time": create_time(opts, c.created_at),
        "update_time": "",
    })
}

fn list(st: &St, opts: &Options, query: &str) -> Response {
    let Some(pairs) = common::query_pairs(query) else {
        return bad_request("bad query string");
    };
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let offset = match get("offset").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) if n <= MAX_OFFSET => n,
        _ => return bad_request("offset must be an integer from 0 to 1000"),
    };
    let limit = match get("limit").map(str::parse::<usize>) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        _ => return bad_request("limit must be an integer from 1 to 1000"),
    };
    let now = Instant::now();
    let visible: Vec<&EmulatedCredential> = st
        .creds
        .iter()
        .filter(|c| opts.knobs.listed(c.created_instant, now))
        .collect();
    let per_page = limit.min(MAX_PAGE);
    let skip = if opts.offset_pages {
        offset.saturating_mul(per_page)
    } else {
        offset
    };
    let page: Vec<Value> = visible
        .iter()
        .skip(skip)
        .take(per_page)
        .map(|c| cred_json(opts, c))
        .collect();
    (
        StatusCode::OK,
        Json(json!({"credentials": page, "count": visible.len()})),
    )
        .into_response()
}

/// Check the documented limits of a create or update body.
fn check_body(b: &serde_json::Map<String, Value>, with_eps: bool) -> Result<(), &'static str> {
    let len_ok = |k: &str, max: usize| match b.get(k) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(()),
        Some(Value::String(_)) => Err("a field is longer than documented"),
        Some(_) => Err("unmarshal request data error"),
    };
    len_ok("description", 1000)?;
    len_ok("control_type", 10)?;
    if with_eps {
        len_ok("eps_id", 32)?;
    }
    match b.get("node_ids") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            if a.len() > 1000 {
                return Err("node_ids holds more than 1000 ids");
            }
            if !a.iter().all(|v| v.as_str().is_some_and(|s| s.len() == 36)) {
                return Err("node_ids must be 36-character ids");
            }
        }
        Some(_) => return Err("unmarshal request data error"),
    }
    match b.get("allowlists") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            if a.len() > 120 {
                return Err("allowlists holds more than 120 entries");
            }
            for e in a {
                let o = e.as_object().ok_or("unmarshal request data error")?;
                for (k, max) in [("allowlist_type", 20), ("allowlist_info", 1000)] {
                    match o.get(k) {
                        None | Some(Value::Null) => {}
                        Some(Value::String(s)) if s.chars().count() <= max => {}
                        _ => return Err("an allowlist entry is malformed or too long"),
                    }
                }
            }
        }
        Some(_) => return Err("unmarshal request data error"),
    }
    Ok(())
}

/// The body as a JSON object; `Err` is the 400's message.
fn json_body(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<serde_json::Map<String, Value>, &'static str> {
    let ct = hdr(headers, "content-type").unwrap_or("");
    if !ct.to_ascii_lowercase().starts_with("application/json") {
        return Err("unmarshal request data error");
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err("unmarshal request data error"),
    }
}

fn create(st: &mut St, headers: &HeaderMap, body: &[u8]) -> Response {
    let b = match json_body(headers, body) {
        Ok(b) => b,
        Err(m) => return bad_request(m),
    };
    if let Err(m) = check_body(&b, true) {
        return bad_request(m);
    }
    let description = b
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let now = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap_or_default();
    let c = new_credential(st, &description, now, Some(&b));
    if st.create_zip {
        let zip = crate::emulator::zip::archive("credential.csv", c.credential.expose().as_bytes());
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            zip,
        )
            .into_response();
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        c.credential.expose().to_string(),
    )
        .into_response()
}

fn not_found(id: &str) -> Response {
    nes_error(
        StatusCode::NOT_FOUND,
        "BCS.03404001",
        "Not found.",
        &format!("credential [{id}] not found"),
    )
}

fn null_ok() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "null",
    )
        .into_response()
}

fn update(st: &mut St, id: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let b = match json_body(headers, body) {
        Ok(b) => b,
        Err(m) => return bad_request(m),
    };
    if let Err(m) = check_body(&b, false) {
        return bad_request(m);
    }
    let Some(c) = st.creds.iter_mut().find(|c| c.id == id) else {
        return not_found(id);
    };
    if let Some(d) = b.get("description").and_then(Value::as_str) {
        c.description = d.to_string();
    }
    if let Some(t) = b.get("control_type").and_then(Value::as_str) {
        c.control_type = t.to_string();
    }
    if let Some(n) = b.get("node_ids").and_then(Value::as_array) {
        c.node_ids = n
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
    }
    if let Some(a) = b.get("allowlists").and_then(Value::as_array) {
        c.allowlists = a.clone();
    }
    null_ok()
}

fn delete(st: &mut St, opts: &Options, id: &str) -> Response {
    let before = st.creds.len();
    st.creds.retain(|c| c.id != id);
    if st.creds.len() == before {
        if opts.delete_404 {
            return not_found(id);
        }
        // As documented: no 404, a 400 for an id it does not know.
        return nes_error(
            StatusCode::BAD_REQUEST,
            "BCS.03400001",
            "Invalid request.",
            &format!("credential [{id}] does not exist"),
        );
    }
    null_ok()
}

// ---- `rekey emulate huawei` ---------------------------------------------------

/// Flags of `rekey emulate huawei`.
#[derive(Debug, Clone, clap::Args)]
pub struct EmulateArgs {
    /// Address to listen on (NES and the fake IAM share it).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Credentials present at start.
    #[arg(long, default_value_t = 0)]
    pub keys: usize,
    /// Description prefix of the seeded credentials.
    #[arg(long, default_value = "app-")]
    pub name_prefix: String,
    #[command(flatten)]
    pub dials: common::DialKnobs,
    /// The project id (32 characters) paths must name.
    #[arg(long, default_value = DEFAULT_PROJECT_ID)]
    pub project_id: String,
    /// A static X-Auth-Token to accept ("" accepts IAM tokens only).
    #[arg(long, default_value = DEFAULT_TOKEN)]
    pub token: String,
    /// IAM account (domain) name of the user that may log in.
    #[arg(long, default_value = DEFAULT_IAM_DOMAIN)]
    pub iam_domain: String,
    /// IAM user name.
    #[arg(long, default_value = DEFAULT_IAM_USER)]
    pub iam_user: String,
    /// IAM password.
    #[arg(long, default_value = DEFAULT_IAM_PASSWORD)]
    pub iam_password: String,
    /// Lifetime of IAM tokens.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
    pub token_ttl: Duration,
    /// The access key AK/SK signatures must use.
    #[arg(long, default_value = DEFAULT_ACCESS_KEY)]
    pub access_key: String,
    /// The secret key AK/SK signatures must use.
    #[arg(long, default_value = DEFAULT_SECRET_KEY)]
    pub secret_key: String,
    /// What create answers: `zip` (documented: a ZIP holding
    /// credential.csv) or `text` (the old `PK…` text form).
    #[arg(long, default_value = "zip", value_parser = ["zip", "text"])]
    pub create_format: String,
    /// Answer 404 to a delete of an unknown id (invented; default 400).
    #[arg(long)]
    pub delete_404: bool,
    /// Read `offset` as a page number instead of an item count.
    #[arg(long)]
    pub offset_pages: bool,
    /// Write create_time with this chrono format, in UTC+8 (default RFC 3339 UTC).
    #[arg(long)]
    pub time_format: Option<String>,
    #[command(flatten)]
    pub knobs: common::CommonKnobs,
}

impl EmulateArgs {
    pub fn options(&self) -> Options {
        Options {
            keys: self.keys,
            name_prefix: self.name_prefix.clone(),
            latency: self.dials.latency,
            error_rate: self.dials.error_rate,
            rate_limit: self.dials.rate_limit,
            seed: self.dials.seed,
            project_id: self.project_id.clone(),
            token: (!self.token.is_empty()).then(|| Secret::new(self.token.clone())),
            iam_domain: self.iam_domain.clone(),
            iam_user: self.iam_user.clone(),
            iam_password: Secret::new(self.iam_password.clone()),
            token_ttl: self.token_ttl,
            access_key: self.access_key.clone(),
            secret_key: Secret::new(self.secret_key.clone()),
            create_zip: self.create_format == "zip",
            delete_404: self.delete_404,
            offset_pages: self.offset_pages,
            time_format: self.time_format.clone(),
            knobs: self.knobs.clone(),
        }
    }
}

/// `rekey emulate huawei`: start, print where and how to connect, serve
/// until Ctrl-C.
pub async fn serve_cli(args: EmulateArgs) -> io::Result<()> {
    let handle = start(args.options(), args.listen).await?;
    let o = handle.options();
    let ep = handle.endpoint();
    println!("Huawei Cloud NES emulator (with a fake IAM) on {ep} (Ctrl-C stops it)");
    println!("  project_id   {}", o.project_id);
    match &o.token {
        Some(t) => println!("  token        {}", t.expose()),
        None => println!("  token        (none: IAM tokens only)"),
    }
    println!(
        "  iam          endpoint {ep}, domain {}, user {}, password {}",
        o.iam_domain,
        o.iam_user,
        o.iam_password.expose()
    );
    println!(
        "  aksk         access_key {}, secret_key {}",
        o.access_key,
        o.secret_key.expose()
    );
    println!(
        "  credentials  {} seeded (prefix {:?})",
        o.keys, o.name_prefix
    );
    println!(
        "  admin API    GET /__emulator/{{keys,stats,requests}}, GET|POST /__emulator/faults (loopback only)"
    );
    println!("  (test credentials: the only ones accepted)");
    println!();
    println!("[providers.nes]");
    println!("kind = \"huawei-nes\"");
    println!("endpoint = \"{ep}\"");
    println!("project_id = \"{}\"", o.project_id);
    println!(
        "auth = {{ iam = {{ endpoint = \"{ep}\", domain = \"{}\", user = \"{}\", password = \"{}\" }} }}",
        o.iam_domain,
        o.iam_user,
        o.iam_password.expose()
    );
    common::until_interrupted().await;
    println!("stopping");
    handle.shutdown().await;
    Ok(())
}
