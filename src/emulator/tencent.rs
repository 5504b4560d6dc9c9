//! Emulator of Tencent Cloud API Gateway keys (API 3.0, `apigateway`
//! `2018-08-08`), served by `rekey emulate tencent`.
//!
//! Strict like the real endpoint: `POST /` with a JSON body only; the
//! headers `X-TC-Action`, `X-TC-Version` (must be `2018-08-08`),
//! `X-TC-Timestamp` and `X-TC-Region` (the emulator's region or one of
//! `--extra-region`, else `InvalidParameterValue.InvalidRegion` as the SDK
//! lists it; usage plans live in one region); a
//! `TC3-HMAC-SHA256` signature recomputed from the request as received by
//! the emulator's own verifier (`emulator::sig`, never the client's code:
//! the signed header values as sent, the body bytes), with `content-type`
//! and `host` required among the signed headers. Every answer is HTTP 200;
//! errors come in the `Response.Error{Code, Message}` envelope with a
//! `RequestId`:
//!
//! | check | code |
//! |---|---|
//! | malformed or missing `Authorization`, wrong service | `AuthFailure.InvalidAuthorization` |
//! | unknown SecretId | `AuthFailure.SecretIdNotFound` |
//! | timestamp more than 5 min off | `AuthFailure.SignatureExpire` |
//! | signature mismatch | `AuthFailure.SignatureFailure` |
//! | over `--rate-limit` (per action, as Tencent limits per API) | `RequestLimitExceeded` |
//! | `--error-rate` draw | `InternalError` |
//!
//! Actions: `CreateApiKey`, `DescribeApiKeysStatus` (with `Filters`),
//! `DescribeApiKey`, `DisableApiKey`, `EnableApiKey`, `DeleteApiKey`
//! (refuses an enabled key with `UnsupportedOperation.InvalidStatus` and a
//! bound one with `UnsupportedOperation.ResourceIsInUse`), `BindSecretIds`
//! (`UnsupportedOperation.AlreadyBindUsagePlan`, or with
//! `--already-bound-code` the SDK's other code for it,
//! `UnsupportedOperation.UnsupportedBindApiKey`; disabled keys refused),
//! `UnBindSecretIds`, `DescribeUsagePlanSecretIds`,
//! `DescribeUsagePlansStatus`. Usage plans are pre-seeded (`--usage-plans`);
//! seeded keys (`--keys`) are bound to every seeded plan.
//!
//! Where the docs are silent the emulator chooses, and says so here:
//! disabling a disabled key (or enabling an enabled one) answers
//! `UnsupportedOperation.UnsupportedUpdateApiKey`; unbinding a key that is
//! not bound succeeds; `Limit` over 100 answers `InvalidParameterValue`;
//! lists come in creation order.
//!
//! Admin API (the emulator framework's, `emulator::common`; loopback
//! only): `GET /__emulator/keys` (every key with its secret and plans),
//! `GET|POST /__emulator/faults`, `GET /__emulator/stats`, `GET
//! /__emulator/requests` (every call with its action, list page and error
//! code), and this emulator's own `GET /__emulator/usage-plans`.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::common::{self, Core, Server};
use super::sig::{self, tc3};
use crate::secret::Secret;

pub const DEFAULT_SECRET_ID: &str = "AKIDrekeyEmulator00000000000000000000";
pub const DEFAULT_SECRET_KEY: &str = "rekey-emulator-tencent-secret-key";
pub const DEFAULT_REGION: &str = "ap-guangzhou";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8480";
pub const DEFAULT_USAGE_PLAN: &str = "usagePlan-emulator1";
/// The signature's timestamp may be this far from the emulator's clock.
pub const MAX_SKEW: i64 = 300;
/// Largest request body accepted (API 3.0 allows 10 MB; keys need little).
const MAX_BODY: usize = 1024 * 1024;
const SERVICE: &str = "apigateway";
const VERSION: &str = "2018-08-08";

/// The two codes the official SDK lists for "key already bound" on
/// `BindSecretIds` (`apigateway/v20180808/errors.go`).
pub const ALREADY_BOUND_CODES: [&str; 2] = [
    "UnsupportedOperation.AlreadyBindUsagePlan",
    "UnsupportedOperation.UnsupportedBindApiKey",
];

/// How the emulator behaves; `Default` is a quiet one with no keys.
#[derive(Debug, Clone)]
pub struct Options {
    /// Keys present at start (bound to every seeded usage plan).
    pub keys: usize,
    /// Seeded key names: prefix + zero-padded number.
    pub name_prefix: String,
    /// Usage plan ids present at start.
    pub usage_plans: Vec<String>,
    /// Delay before every API answer.
    pub latency: Duration,
    /// Share (0..=1) of authenticated calls answered `InternalError`.
    pub error_rate: f64,
    /// Calls per second per action before `RequestLimitExceeded`.
    pub rate_limit: Option<f64>,
    /// Seed for ids, secrets, seeded times and the error draw.
    pub seed: Option<u64>,
    /// The only key pair the emulator accepts.
    pub secret_id: String,
    pub secret_key: Secret,
    /// `X-TC-Region` must name this region.
    pub region: String,
    /// Most keys the account may hold (`LimitExceeded.ApiKeyCountLimitExceeded`).
    pub max_keys: Option<usize>,
    /// More regions `X-TC-Region` may name; usage plans live in a region.
    pub extra_regions: Vec<String>,
    /// The code `BindSecretIds` answers for a key already bound: the SDK
    /// lists `UnsupportedOperation.AlreadyBindUsagePlan` (default) and
    /// `UnsupportedOperation.UnsupportedBindApiKey` for it.
    pub already_bound_code: String,
    pub knobs: common::CommonKnobs,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            keys: 0,
            name_prefix: "app-".into(),
            usage_plans: Vec::new(),
            latency: Duration::ZERO,
            error_rate: 0.0,
            rate_limit: None,
            seed: None,
            secret_id: DEFAULT_SECRET_ID.into(),
            secret_key: Secret::new(DEFAULT_SECRET_KEY),
            region: DEFAULT_REGION.into(),
            max_keys: None,
            extra_regions: Vec::new(),
            already_bound_code: ALREADY_BOUND_CODES[0].into(),
            knobs: common::CommonKnobs::default(),
        }
    }
}

impl Options {
    fn validate(&self) -> Result<(), String> {
        common::check_start_dials(self.error_rate, self.rate_limit)?;
        if self.secret_id.is_empty() || self.secret_key.is_empty() || self.region.is_empty() {
            return Err("secret id, secret key and region must not be empty".into());
        }
        if !ALREADY_BOUND_CODES.contains(&self.already_bound_code.as_str()) {
            return Err(format!(
                "already-bound code {:?} is not one of {}",
                self.already_bound_code,
                ALREADY_BOUND_CODES.join(", ")
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.usage_plans {
            if p.trim().is_empty() || !seen.insert(p) {
                return Err(format!("usage plan id {p:?} is empty or repeated"));
            }
        }
        if let Some(m) = self.max_keys
            && self.keys > m
        {
            return Err(format!("{} keys seeded but at most {m} allowed", self.keys));
        }
        Ok(())
    }
}

/// One key as the emulator holds it (a test fake: the secret is here;
/// `Debug` still redacts it).
#[derive(Debug, Clone, PartialEq)]
pub struct EmulatedKey {
    pub access_key_id: String,
    pub access_key_secret: Secret,
    pub access_key_type: String,
    pub secret_name: String,
    /// 1 enabled, 0 disabled.
    pub status: i64,
    pub created_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
    /// Usage plans it is bound to.
    pub usage_plans: Vec<String>,
}

/// Answer the next `count` calls of `action` (`"*"`: any) with this error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForcedFault {
    pub action: String,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

/// A change of faults (`POST /__emulator/faults` takes it as JSON): the
/// framework's; `rate_limit` counts calls per action.
pub type Faults = common::Faults<ForcedFault>;

/// Counters per action (`GET /__emulator/stats`).
pub type ActionStats = common::OpStats;

/// An API action, as the framework counts, logs and limits calls.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Action(pub String);

impl common::Op for Action {
    fn name(&self) -> &str {
        &self.0
    }

    fn is_list(&self) -> bool {
        self.0 == "DescribeApiKeysStatus"
    }
}

/// One call as the emulator answered it (`GET /__emulator/requests`).
pub type LoggedRequest = common::LoggedRequest<Action>;

struct Key {
    id: String,
    secret: Secret,
    key_type: String,
    name: String,
    status: i64,
    created: DateTime<Utc>,
    modified: DateTime<Utc>,
    /// When the emulator made it (for `--list-delay`).
    made: Instant,
}

struct Plan {
    region: String,
    id: String,
    created: DateTime<Utc>,
    /// Bound key ids, in bind order.
    keys: Vec<String>,
}

struct St {
    keys: Vec<Key>,
    plans: Vec<Plan>,
    rng: StdRng,
    /// Dials, forced faults, counts and the request log.
    core: Core<Action, ForcedFault>,
    /// [`Faults::endless_lists`]: key list pages never end.
    endless_lists: bool,
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
        write!(f, "TencentEmulator({})", self.server.addr())
    }
}

fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap_or_default()
}

/// Start on `listen` (`127.0.0.1:0` picks a port) in the background.
pub async fn start(opts: Options, listen: SocketAddr) -> io::Result<Handle> {
    opts.validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let seed = opts.seed.unwrap_or_else(|| rand::rng().random());
    let mut rng = StdRng::seed_from_u64(seed);
    let t = now();
    let plans: Vec<Plan> = opts
        .usage_plans
        .iter()
        .map(|id| Plan {
            region: opts.region.clone(),
            id: id.clone(),
            created: t,
            keys: Vec::new(),
        })
        .collect();
    let mut st = St {
        keys: Vec::with_capacity(opts.keys),
        plans,
        rng: StdRng::seed_from_u64(0),
        core: Core::new(common::Dials::new(
            opts.rate_limit,
            opts.error_rate,
            opts.latency,
            seed.rotate_left(17) ^ 0x5deece66d,
        )),
        endless_lists: false,
    };
    for i in 0..opts.keys {
        let age = rng.random_range(3600..60 * 86400);
        let created = t - chrono::Duration::seconds(age);
        let name = format!("{}{:05}", opts.name_prefix, i + 1);
        let id = new_key(&mut st, &mut rng, &name, created);
        for p in &mut st.plans {
            p.keys.push(id.clone());
        }
    }
    st.rng = rng;
    let inner = Arc::new(Inner {
        opts,
        st: Mutex::new(st),
    });
    let app = common::admin_routes::<Inner>(
        axum::Router::new().route("/__emulator/usage-plans", get(admin_plans)),
    )
    .fallback(api)
    .with_state(inner.clone());
    let server = Server::start(listen, app).await?;
    tracing::debug!(addr = %server.addr(), "tencent emulator listening");
    Ok(Handle { server, inner })
}

fn new_key(st: &mut St, rng: &mut StdRng, name: &str, created: DateTime<Utc>) -> String {
    let id = format!("AKID{}", common::alnum(rng, 36));
    st.keys.push(Key {
        id: id.clone(),
        secret: Secret::new(common::alnum(rng, 40)),
        key_type: "auto".into(),
        name: name.to_string(),
        status: 1,
        created,
        modified: created,
        made: Instant::now(),
    });
    id
}

impl Handle {
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://ADDR`: a provider's `endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// Every key, in creation order, with its secret and plans.
    pub fn keys(&self) -> Vec<EmulatedKey> {
        let st = self.inner.lock();
        st.keys.iter().map(|k| view(&st, k)).collect()
    }

    /// Add an enabled key created at `created_at`, bound to `usage_plans`
    /// (which must exist).
    pub fn insert_key(
        &self,
        name: &str,
        created_at: DateTime<Utc>,
        usage_plans: &[&str],
    ) -> Result<EmulatedKey, String> {
        let mut st = self.inner.lock();
        if let Some(p) = usage_plans
            .iter()
            .find(|p| !st.plans.iter().any(|x| x.id == **p))
        {
            return Err(format!("no usage plan {p}"));
        }
        let mut rng = std::mem::replace(&mut st.rng, StdRng::seed_from_u64(0));
        let id = new_key(&mut st, &mut rng, name, created_at);
        st.rng = rng;
        for p in st.plans.iter_mut() {
            if usage_plans.contains(&p.id.as_str()) {
                p.keys.push(id.clone());
            }
        }
        let k = st.keys.last().expect("just pushed");
        Ok(view(&st, k))
    }

    /// Add a usage plan (no-op if it exists).
    pub fn add_usage_plan(&self, id: &str) {
        let region = self.inner.opts.region.clone();
        self.add_usage_plan_in(&region, id);
    }

    /// Add a usage plan in `region` (one of the extra regions, say).
    pub fn add_usage_plan_in(&self, region: &str, id: &str) {
        let mut st = self.inner.lock();
        if !st.plans.iter().any(|p| p.id == id && p.region == region) {
            st.plans.push(Plan {
                region: region.to_string(),
                id: id.to_string(),
                created: now(),
                keys: Vec::new(),
            });
        }
    }

    /// Key ids bound to a plan, `None` if there is no such plan.
    pub fn plan_keys(&self, id: &str) -> Option<Vec<String>> {
        self.inner
            .lock()
            .plans
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.keys.clone())
    }

    /// Apply a fault change (all or nothing).
    pub fn set_faults(&self, faults: Faults) -> Result<(), String> {
        common::Emulator::apply_faults(&*self.inner, faults)
    }

    /// Counts per action.
    pub fn stats(&self) -> BTreeMap<String, ActionStats> {
        let st = self.inner.lock();
        st.core.stats().into_iter().map(|(a, s)| (a.0, s)).collect()
    }

    /// Every call answered since start, in order.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.inner.lock().core.request_log()
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await
    }
}

fn view(st: &St, k: &Key) -> EmulatedKey {
    EmulatedKey {
        access_key_id: k.id.clone(),
        access_key_secret: k.secret.clone(),
        access_key_type: k.key_type.clone(),
        secret_name: k.name.clone(),
        status: k.status,
        created_at: k.created,
        modified_at: k.modified,
        usage_plans: st
            .plans
            .iter()
            .filter(|p| p.keys.contains(&k.id))
            .map(|p| p.id.clone())
            .collect(),
    }
}

impl common::Emulator for Inner {
    type Op = Action;
    type Forced = ForcedFault;

    fn core<R>(&self, f: impl FnOnce(&mut Core<Action, ForcedFault>) -> R) -> R {
        f(&mut self.lock().core)
    }

    fn keys_json(&self) -> Value {
        let st = self.lock();
        let keys: Vec<Value> = st
            .keys
            .iter()
            .map(|k| {
                let mut v = key_json(k);
                v["UsagePlans"] = json!(view(&st, k).usage_plans);
                v
            })
            .collect();
        json!({ "keys": keys })
    }

    fn apply_faults(&self, f: Faults) -> Result<(), String> {
        common::refuse_flags(&f, "tencent", &["endless_lists"])?;
        let mut st = self.lock();
        st.core.apply(&f)?;
        st.endless_lists = f.endless_lists;
        Ok(())
    }
}

// ---- the API ------------------------------------------------------------

/// An error envelope to answer with.
struct Fail {
    code: std::borrow::Cow<'static, str>,
    message: String,
}

fn fail(code: &'static str, message: impl Into<String>) -> Fail {
    Fail {
        code: code.into(),
        message: message.into(),
    }
}

fn envelope_ok(request_id: &str, result: Value) -> Response {
    Json(json!({"Response": {"Result": result, "RequestId": request_id}})).into_response()
}

fn envelope_err(request_id: &str, code: &str, message: &str) -> Response {
    Json(json!({"Response": {
        "Error": {"Code": code, "Message": message},
        "RequestId": request_id,
    }}))
    .into_response()
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Check the common headers and the TC3 signature. Returns the action.
fn authenticate(
    opts: &Options,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<(String, String), Fail> {
    if method != Method::POST {
        return Err(fail(
            "UnsupportedProtocol",
            "the emulator accepts POST with a JSON body only",
        ));
    }
    let ct = header(headers, "content-type").unwrap_or("");
    if !ct.to_ascii_lowercase().starts_with("application/json") {
        return Err(fail(
            "InvalidParameter",
            "Content-Type must be application/json for POST",
        ));
    }
    let action = header(headers, "x-tc-action")
        .filter(|a| !a.is_empty())
        .ok_or_else(|| fail("MissingParameter", "The request is missing X-TC-Action"))?;
    let version = header(headers, "x-tc-version")
        .ok_or_else(|| fail("MissingParameter", "The request is missing X-TC-Version"))?;
    if version != VERSION {
        return Err(fail(
            "NoSuchVersion",
            format!("The API version {version} does not exist"),
        ));
    }
    let timestamp: i64 = header(headers, "x-tc-timestamp")
        .ok_or_else(|| fail("MissingParameter", "The request is missing X-TC-Timestamp"))?
        .trim()
        .parse()
        .map_err(|_| fail("InvalidParameterValue", "X-TC-Timestamp is not an integer"))?;
    let region = header(headers, "x-tc-region")
        .filter(|r| !r.is_empty())
        .ok_or_else(|| fail("MissingParameter", "The request is missing X-TC-Region"))?;
    let auth = header(headers, "authorization").ok_or_else(|| {
        fail(
            "AuthFailure.InvalidAuthorization",
            "Authorization header is missing",
        )
    })?;
    let parsed = tc3::parse(auth).ok_or_else(|| {
        fail(
            "AuthFailure.InvalidAuthorization",
            "Authorization is not a valid TC3-HMAC-SHA256 header",
        )
    })?;
    if parsed.service != SERVICE {
        return Err(fail(
            "AuthFailure.InvalidAuthorization",
            format!(
                "the credential scope names service {:?}, not {SERVICE}",
                parsed.service
            ),
        ));
    }
    if parsed.secret_id != opts.secret_id {
        return Err(fail(
            "AuthFailure.SecretIdNotFound",
            "The SecretId is not found, please ensure that your SecretId is correct.",
        ));
    }
    if (now - timestamp).abs() > MAX_SKEW {
        return Err(fail(
            "AuthFailure.SignatureExpire",
            format!(
                "Signature expired. Timestamp {timestamp} is more than {MAX_SKEW} s from the server time {now}."
            ),
        ));
    }
    let mismatch = || {
        fail(
            "AuthFailure.SignatureFailure",
            "The provided credentials could not be validated. Please check your signature is correct.",
        )
    };
    if tc3::date_of(timestamp).as_deref() != Some(parsed.date.as_str()) {
        return Err(mismatch());
    }
    if !parsed.signed_headers.iter().any(|h| h == "content-type")
        || !parsed.signed_headers.iter().any(|h| h == "host")
    {
        return Err(mismatch());
    }
    let mut values: Vec<&str> = Vec::new();
    for h in &parsed.signed_headers {
        values.push(header(headers, h).ok_or_else(mismatch)?);
    }
    let expected = tc3::expected(
        opts.secret_key.expose(),
        &parsed,
        timestamp,
        "POST",
        "",
        &values,
        &tc3::payload_hash(body, header(headers, "x-tc-content-sha256")),
    );
    if !sig::same(&expected, &parsed.signature) {
        return Err(mismatch());
    }
    if region != opts.region && !opts.extra_regions.iter().any(|r| r == region) {
        // The SDK's error list for these actions names this code.
        return Err(fail(
            "InvalidParameterValue.InvalidRegion",
            format!("The region {region} is not supported by this emulator"),
        ));
    }
    Ok((action.to_string(), region.to_string()))
}

/// Serve one call: every answer is HTTP 200 with a `Response` envelope;
/// the call is counted and logged with its error code.
async fn api(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let latency = inner.lock().core.dials.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let (parts, body) = req.into_parts();
    if parts.uri.path() != "/" {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    let body: Bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return envelope_err(
                &request_id,
                "RequestSizeLimitExceeded",
                "The request body is too large",
            );
        }
    };
    let now = Utc::now().timestamp();
    let mut st = inner.lock();
    let (action, page, answer) =
        match authenticate(&inner.opts, &parts.method, &parts.headers, &body, now) {
            Ok((action, region)) => {
                let action = Action(action);
                let (page, answer) = call(&mut st, &inner.opts, &region, &action, &body);
                (action, page, answer)
            }
            Err(f) => {
                let label = header(&parts.headers, "x-tc-action").unwrap_or("(none)");
                let action = Action(label.to_string());
                st.core.count(&action, |s| {
                    s.requests += 1;
                    if f.code.starts_with("AuthFailure") {
                        s.auth_failures += 1;
                    }
                });
                (action, None, Err(f))
            }
        };
    let (response, code) = match answer {
        Ok(v) => {
            st.core.count(&action, |s| s.ok += 1);
            (envelope_ok(&request_id, v), None)
        }
        Err(f) => {
            st.core.count(&action, |s| s.errors += 1);
            (
                envelope_err(&request_id, &f.code, &f.message),
                Some(f.code.to_string()),
            )
        }
    };
    st.core.log(action, page, 200, code);
    response
}

/// An authenticated call: throttling, then injected faults, then the
/// action itself. Returns the list page asked for (from 1), if a list.
fn call(
    st: &mut St,
    opts: &Options,
    region: &str,
    action: &Action,
    body: &[u8],
) -> (Option<usize>, Result<Value, Fail>) {
    st.core.count(action, |s| s.requests += 1);
    let params: Option<Map<String, Value>> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    };
    let page = params
        .as_ref()
        .filter(|_| common::Op::is_list(action))
        .map(|m| {
            let n = |k: &str, d: u64| m.get(k).and_then(Value::as_u64).unwrap_or(d);
            (n("Offset", 0) / n("Limit", 20).max(1)) as usize + 1
        });
    if st.core.dials.throttle(&action.0).is_err() {
        st.core.count(action, |s| s.rate_limited += 1);
        return (
            page,
            Err(fail(
                "RequestLimitExceeded",
                "Your current request times exceeds the limit, please try again later.",
            )),
        );
    }
    if let Some(f) = st.core.take_forced(action) {
        st.core.count(action, |s| s.faults += 1);
        let message = f
            .message
            .unwrap_or_else(|| format!("injected fault {}", f.code));
        return (
            page,
            Err(Fail {
                code: f.code.into(),
                message,
            }),
        );
    }
    if st.core.dials.draw_error() {
        st.core.count(action, |s| s.faults += 1);
        return (
            page,
            Err(fail(
                "InternalError",
                "An internal error has occurred. Retry your request.",
            )),
        );
    }
    let Some(params) = params else {
        return (
            page,
            Err(fail(
                "InvalidParameter",
                "The request body is not a JSON object",
            )),
        );
    };
    (
        page,
        dispatch(st, opts, region, &action.0, &Params(&params)),
    )
}

struct Params<'a>(&'a Map<String, Value>);

impl Params<'_> {
    fn str_opt(&self, k: &str) -> Result<Option<&str>, Fail> {
        match self.0.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(fail(
                "InvalidParameter",
                format!("The parameter {k} must be a string"),
            )),
        }
    }

    fn str_req(&self, k: &str) -> Result<&str, Fail> {
        self.str_opt(k)?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| fail("MissingParameter", format!("The parameter {k} is missing")))
    }

    fn uint(&self, k: &str, default: usize, max: usize) -> Result<usize, Fail> {
        match self.0.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => match v.as_u64() {
                Some(n) if (n as usize) <= max => Ok(n as usize),
                _ => Err(fail(
                    "InvalidParameterValue",
                    format!("The parameter {k} must be an integer from 0 to {max}"),
                )),
            },
        }
    }

    fn str_list(&self, k: &str) -> Result<Vec<String>, Fail> {
        let bad = || {
            fail(
                "InvalidParameter",
                format!("The parameter {k} must be a list of strings"),
            )
        };
        match self.0.get(k) {
            None | Some(Value::Null) => Err(fail(
                "MissingParameter",
                format!("The parameter {k} is missing"),
            )),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
                .collect(),
            Some(_) => Err(bad()),
        }
    }

    /// `Filters: [{Name, Values:[…]}]`.
    fn filters(&self, allowed: &[&str]) -> Result<Vec<(String, Vec<String>)>, Fail> {
        let Some(v) = self.0.get("Filters") else {
            return Ok(Vec::new());
        };
        let bad = || {
            fail(
                "InvalidParameter",
                "Filters must be a list of {Name, Values}",
            )
        };
        let list = v.as_array().ok_or_else(bad)?;
        let mut out = Vec::new();
        for f in list {
            let name = f.get("Name").and_then(Value::as_str).ok_or_else(bad)?;
            if !allowed.contains(&name) {
                return Err(fail(
                    "InvalidParameterValue.InvalidFilterNotSupportedName",
                    format!("The filter name {name} is not supported"),
                ));
            }
            let values = f
                .get("Values")
                .and_then(Value::as_array)
                .ok_or_else(bad)?
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
                .collect::<Result<Vec<_>, _>>()?;
            out.push((name.to_string(), values));
        }
        Ok(out)
    }
}

fn key_json(k: &Key) -> Value {
    json!({
        "AccessKeyId": k.id,
        "AccessKeySecret": k.secret.expose(),
        "AccessKeyType": k.key_type,
        "SecretName": k.name,
        "Status": k.status,
        "CreatedTime": ts(k.created),
        "ModifiedTime": ts(k.modified),
        "Tags": null,
    })
}

fn valid_manual(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn find_key<'a>(st: &'a mut St, id: &str) -> Result<&'a mut Key, Fail> {
    st.keys.iter_mut().find(|k| k.id == id).ok_or_else(|| {
        fail(
            "ResourceNotFound.InvalidAccessKeyId",
            format!("The key {id} does not exist"),
        )
    })
}

fn plan_index(st: &St, region: &str, id: &str) -> Result<usize, Fail> {
    st.plans
        .iter()
        .position(|p| p.id == id && p.region == region)
        .ok_or_else(|| {
            fail(
                "ResourceNotFound.InvalidUsagePlan",
                format!("The usage plan {id} does not exist"),
            )
        })
}

fn dispatch(
    st: &mut St,
    opts: &Options,
    region: &str,
    action: &str,
    p: &Params<'_>,
) -> Result<Value, Fail> {
    let t = now();
    match action {
        "CreateApiKey" => {
            let name = p.str_req("SecretName")?.to_string();
            let key_type = p.str_opt("AccessKeyType")?.unwrap_or("auto").to_string();
            if let Some(m) = opts.max_keys
                && st.keys.len() >= m
            {
                return Err(fail(
                    "LimitExceeded.ApiKeyCountLimitExceeded",
                    "The number of keys exceeds the limit.",
                ));
            }
            let (id, secret) = match key_type.as_str() {
                "auto" => {
                    let mut rng = std::mem::replace(&mut st.rng, StdRng::seed_from_u64(0));
                    let pair = (
                        format!("AKID{}", common::alnum(&mut rng, 36)),
                        common::alnum(&mut rng, 40),
                    );
                    st.rng = rng;
                    pair
                }
                "manual" => {
                    let id = p.str_req("AccessKeyId")?;
                    let secret = p.str_req("AccessKeySecret")?;
                    if !valid_manual(id, 5, 50) || !valid_manual(secret, 10, 50) {
                        return Err(fail(
                            "InvalidParameter.FormatError",
                            "Incorrect parameter format.",
                        ));
                    }
                    if st.keys.iter().any(|k| k.id == id) {
                        return Err(fail(
                            "FailedOperation.AccessKeyExist",
                            "The custom key already exists.",
                        ));
                    }
                    (id.to_string(), secret.to_string())
                }
                other => {
                    return Err(fail(
                        "InvalidParameterValue",
                        format!("AccessKeyType {other} is not auto or manual"),
                    ));
                }
            };
            st.keys.push(Key {
                id,
                secret: Secret::new(secret),
                key_type,
                name,
                status: 1,
                created: t,
                modified: t,
                made: Instant::now(),
            });
            Ok(key_json(st.keys.last().expect("just pushed")))
        }
        "DescribeApiKeysStatus" => {
            let limit = p.uint("Limit", 20, 100)?;
            let offset = p.uint("Offset", 0, usize::MAX)?;
            let filters = p.filters(&[
                "AccessKeyId",
                "AccessKeySecret",
                "SecretName",
                "NotUsagePlanId",
                "Status",
                "KeyWord",
            ])?;
            let now = Instant::now();
            let matching: Vec<&Key> = st
                .keys
                .iter()
                .filter(|k| opts.knobs.listed(k.made, now))
                .filter(|k| {
                    filters.iter().all(|(name, values)| {
                        values.iter().any(|v| match name.as_str() {
                            "AccessKeyId" => &k.id == v,
                            "AccessKeySecret" => k.secret.expose() == v,
                            "SecretName" => &k.name == v,
                            "Status" => k.status.to_string() == *v,
                            "KeyWord" => k.name.contains(v.as_str()) || k.id.contains(v.as_str()),
                            "NotUsagePlanId" => !st
                                .plans
                                .iter()
                                .any(|pl| &pl.id == v && pl.keys.contains(&k.id)),
                            _ => false,
                        })
                    })
                })
                .collect();
            if st.endless_lists && !matching.is_empty() {
                // Past the end, the keys again from the start, and always
                // one more page promised.
                let page: Vec<Value> = matching
                    .iter()
                    .cycle()
                    .skip(offset % matching.len())
                    .take(limit)
                    .map(|k| key_json(k))
                    .collect();
                return Ok(json!({"TotalCount": offset + limit + 1, "ApiKeySet": page}));
            }
            let page: Vec<Value> = matching
                .iter()
                .skip(offset)
                .take(limit)
                .map(|k| key_json(k))
                .collect();
            Ok(json!({"TotalCount": matching.len(), "ApiKeySet": page}))
        }
        "DescribeApiKey" => {
            let id = p.str_req("AccessKeyId")?.to_string();
            Ok(key_json(find_key(st, &id)?))
        }
        "DisableApiKey" | "EnableApiKey" => {
            let id = p.str_req("AccessKeyId")?.to_string();
            let want = i64::from(action == "EnableApiKey");
            let k = find_key(st, &id)?;
            if k.status == want {
                return Err(fail(
                    "UnsupportedOperation.UnsupportedUpdateApiKey",
                    "The current key status does not support this operation.",
                ));
            }
            k.status = want;
            k.modified = t;
            Ok(json!(true))
        }
        "DeleteApiKey" => {
            let id = p.str_req("AccessKeyId")?.to_string();
            let status = find_key(st, &id)?.status;
            if status != 0 {
                return Err(fail(
                    "UnsupportedOperation.InvalidStatus",
                    "The key is enabled; disable it before deleting it.",
                ));
            }
            if st.plans.iter().any(|pl| pl.keys.contains(&id)) {
                return Err(fail(
                    "UnsupportedOperation.ResourceIsInUse",
                    "The key is bound to a usage plan; unbind it and try again.",
                ));
            }
            st.keys.retain(|k| k.id != id);
            Ok(json!(true))
        }
        "BindSecretIds" => {
            let plan = p.str_req("UsagePlanId")?.to_string();
            let ids = p.str_list("AccessKeyIds")?;
            let pi = plan_index(st, region, &plan)?;
            if ids.is_empty() {
                return Err(fail(
                    "InvalidParameterValue.InvalidAccessKeyIds",
                    "AccessKeyIds is empty",
                ));
            }
            for id in &ids {
                let Some(k) = st.keys.iter().find(|k| &k.id == id) else {
                    return Err(fail(
                        "InvalidParameterValue.InvalidAccessKeyIds",
                        format!("The key {id} does not exist"),
                    ));
                };
                if k.status != 1 {
                    return Err(fail(
                        "UnsupportedOperation.InvalidStatus",
                        format!("The key {id} is disabled and cannot be bound"),
                    ));
                }
                if st.plans[pi].keys.contains(id) {
                    let code = ALREADY_BOUND_CODES
                        .iter()
                        .copied()
                        .find(|c| *c == opts.already_bound_code)
                        .unwrap_or(ALREADY_BOUND_CODES[0]);
                    return Err(fail(
                        code,
                        format!("The key {id} is already bound to usage plan {plan}"),
                    ));
                }
            }
            st.plans[pi].keys.extend(ids);
            Ok(json!(true))
        }
        "UnBindSecretIds" => {
            let plan = p.str_req("UsagePlanId")?.to_string();
            let ids = p.str_list("AccessKeyIds")?;
            let pi = plan_index(st, region, &plan)?;
            for id in &ids {
                if !st.keys.iter().any(|k| &k.id == id) {
                    return Err(fail(
                        "ResourceNotFound.InvalidAccessKeyId",
                        format!("The key {id} does not exist"),
                    ));
                }
            }
            st.plans[pi].keys.retain(|k| !ids.contains(k));
            Ok(json!(true))
        }
        "DescribeUsagePlanSecretIds" => {
            let plan = p.str_req("UsagePlanId")?.to_string();
            let limit = p.uint("Limit", 20, 100)?;
            let offset = p.uint("Offset", 0, usize::MAX)?;
            let pi = plan_index(st, region, &plan)?;
            let list: Vec<Value> = st.plans[pi]
                .keys
                .iter()
                .skip(offset)
                .take(limit)
                .filter_map(|id| st.keys.iter().find(|k| &k.id == id))
                .map(|k| json!({"AccessKeyId": k.id, "SecretName": k.name, "Status": k.status}))
                .collect();
            Ok(json!({"TotalCount": st.plans[pi].keys.len(), "AccessKeyList": list}))
        }
        "DescribeUsagePlansStatus" => {
            let limit = p.uint("Limit", 20, 100)?;
            let offset = p.uint("Offset", 0, usize::MAX)?;
            let filters = p.filters(&[
                "UsagePlanId",
                "UsagePlanName",
                "NotServiceId",
                "NotApiId",
                "Environment",
            ])?;
            let matching: Vec<&Plan> = st
                .plans
                .iter()
                .filter(|pl| pl.region == region)
                .filter(|pl| {
                    filters.iter().all(|(name, values)| match name.as_str() {
                        "UsagePlanId" | "UsagePlanName" => values.contains(&pl.id),
                        // No services or environments are emulated.
                        _ => true,
                    })
                })
                .collect();
            let set: Vec<Value> = matching
                .iter()
                .skip(offset)
                .take(limit)
                .map(|pl| {
                    json!({
                        "UsagePlanId": pl.id,
                        "UsagePlanName": pl.id,
                        "UsagePlanDesc": "",
                        "MaxRequestNumPreSec": -1,
                        "MaxRequestNum": -1,
                        "CreatedTime": ts(pl.created),
                        "ModifiedTime": ts(pl.created),
                    })
                })
                .collect();
            Ok(json!({"TotalCount": matching.len(), "UsagePlanStatusSet": set}))
        }
        other => Err(fail(
            "InvalidAction",
            format!("The action {other} is not supported by this emulator"),
        )),
    }
}

// ---- admin API ------------------------------------------------------------

/// `GET /__emulator/usage-plans` (guarded by the framework's loopback rule).
async fn admin_plans(State(inner): State<Arc<Inner>>) -> Response {
    let st = inner.lock();
    let plans: Vec<Value> = st
        .plans
        .iter()
        .map(|p| json!({"UsagePlanId": p.id, "AccessKeyIds": p.keys}))
        .collect();
    Json(json!({"usage_plans": plans})).into_response()
}

impl common::Forced for ForcedFault {
    fn operation(&self) -> &str {
        &self.action
    }

    fn count_mut(&mut self) -> &mut u32 {
        &mut self.count
    }

    fn check(&self) -> Result<(), String> {
        if self.code.is_empty() || self.action.is_empty() {
            return Err("a forced fault needs an action (or \"*\") and a code".into());
        }
        Ok(())
    }
}

// ---- `rekey emulate tencent` -----------------------------------------------

/// Flags of `rekey emulate tencent`.
#[derive(Debug, Clone, clap::Args)]
pub struct EmulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Keys present at start (bound to every usage plan).
    #[arg(long, default_value_t = 0)]
    pub keys: usize,
    /// Name prefix of the seeded keys.
    #[arg(long, default_value = "app-")]
    pub name_prefix: String,
    /// Usage plan ids to create (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_USAGE_PLAN)]
    pub usage_plans: Vec<String>,
    #[command(flatten)]
    pub dials: common::DialKnobs,
    /// The SecretId clients must sign with.
    #[arg(long, default_value = DEFAULT_SECRET_ID)]
    pub secret_id: String,
    /// The SecretKey clients must sign with.
    #[arg(long, default_value = DEFAULT_SECRET_KEY)]
    pub secret_key: String,
    /// The region X-TC-Region must name.
    #[arg(long, default_value = DEFAULT_REGION)]
    pub region: String,
    /// Most keys the account may hold.
    #[arg(long)]
    pub max_keys: Option<usize>,
    /// Another region X-TC-Region may name (repeatable); usage plans are
    /// per region.
    #[arg(long = "extra-region")]
    pub extra_regions: Vec<String>,
    /// What BindSecretIds answers for a key already bound.
    #[arg(long, default_value = ALREADY_BOUND_CODES[0], value_parser = ALREADY_BOUND_CODES)]
    pub already_bound_code: String,
    #[command(flatten)]
    pub knobs: common::CommonKnobs,
}

impl EmulateArgs {
    pub fn options(&self) -> Options {
        Options {
            keys: self.keys,
            name_prefix: self.name_prefix.clone(),
            usage_plans: self
                .usage_plans
                .iter()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
            latency: self.dials.latency,
            error_rate: self.dials.error_rate,
            rate_limit: self.dials.rate_limit,
            seed: self.dials.seed,
            secret_id: self.secret_id.clone(),
            secret_key: Secret::new(self.secret_key.clone()),
            region: self.region.clone(),
            max_keys: self.max_keys,
            extra_regions: self.extra_regions.clone(),
            already_bound_code: self.already_bound_code.clone(),
            knobs: self.knobs.clone(),
        }
    }
}

/// `rekey emulate tencent`: start, print where and how to connect, serve
/// until Ctrl-C.
pub async fn serve_cli(args: EmulateArgs) -> io::Result<()> {
    let handle = start(args.options(), args.listen).await?;
    let o = handle.options();
    println!(
        "Tencent Cloud API Gateway emulator on {} (Ctrl-C stops it)",
        handle.endpoint()
    );
    println!("  region       {}", o.region);
    println!("  secret_id    {}", o.secret_id);
    println!(
        "  secret_key   {}   (test credentials: the only pair accepted)",
        o.secret_key.expose()
    );
    println!("  usage plans  {}", o.usage_plans.join(", "));
    println!(
        "  keys         {} seeded (prefix {:?})",
        o.keys, o.name_prefix
    );
    println!(
        "  admin API    GET /__emulator/{{keys,usage-plans,stats,requests}}, GET|POST /__emulator/faults (loopback only)"
    );
    println!();
    println!("[providers.gw]");
    println!("kind = \"tencent-apigateway\"");
    println!("endpoint = \"{}\"", handle.endpoint());
    println!("region = \"{}\"", o.region);
    println!("secret_id = \"{}\"", o.secret_id);
    println!("secret_key = \"{}\"", o.secret_key.expose());
    common::until_interrupted().await;
    println!("stopping");
    handle.shutdown().await;
    Ok(())
}
