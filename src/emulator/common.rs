//! The emulators' one framework: everything the three share, so each
//! emulator file holds only its vendor's protocol.
//!
//! - Knobs every emulator has ([`CommonKnobs`]: `--list-delay`).
//! - The run-time fault dials ([`Dials`]: rate limit with its token bucket
//!   ([`TokenBucket`], [`parse_rate`], [`retry_after_secs`]), error rate,
//!   latency) and the queue of forced faults ([`Forced`]).
//! - [`Core`]: dials, forced faults, per-operation counters ([`OpStats`])
//!   and the request log ([`LoggedRequest`]), one per emulator, behind its
//!   state lock.
//! - The admin API ([`admin_routes`], loopback only per [`admin_allowed`]):
//!   `GET|POST /__emulator/keys`, `GET|POST /__emulator/faults` (one JSON
//!   shape, [`Faults`]), `GET /__emulator/stats`, `GET /__emulator/requests`.
//!   An emulator implements [`Emulator`] (how to show and insert its keys,
//!   what its own fault flags do) and gets these routes.
//! - The background [`Server`] with graceful shutdown, random strings,
//!   query decoding and a serde helper for humantime durations.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// `n` random ASCII letters and digits.
pub fn alnum(rng: &mut impl Rng, n: usize) -> String {
    (0..n)
        .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
        .collect()
}

/// Decode `%XX` escapes (and, with `plus_is_space`, `+` as in a query
/// string); `None` for a bad escape or bytes that are not UTF-8.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A raw query string as decoded `(key, value)` pairs, in order.
pub fn query_pairs(q: &str) -> Option<Vec<(String, String)>> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((percent_decode(k, true)?, percent_decode(v, true)?))
        })
        .collect()
}

/// `Option<Duration>` as a humantime string (`"20ms"`) in JSON.
pub mod opt_humantime {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => humantime::parse_duration(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// The fault dials every `rekey emulate` command takes at start (changed
/// later through `POST /__emulator/faults`): `--latency`, `--error-rate`,
/// `--rate-limit`, `--seed`.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct DialKnobs {
    /// Delay before every API answer (e.g. 20ms).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub latency: Duration,
    /// Share of API calls (0 to 1) answered with the vendor's internal
    /// error (OceanBase 500 E001R000, Tencent InternalError, Huawei 500
    /// BCS.03500001).
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    pub error_rate: f64,
    /// Calls allowed per second (`20/s`, `600/min`): per operation for
    /// Tencent and Huawei, across all for OceanBase; beyond it the vendor's
    /// throttle answer.
    #[arg(long, value_parser = parse_rate)]
    pub rate_limit: Option<f64>,
    /// Seed for ids, secrets and the error draw [default: random].
    #[arg(long)]
    pub seed: Option<u64>,
}

/// A share within 0..=1, as `--error-rate` takes it.
pub fn parse_share(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0 and 1"))
    }
}

/// Check the dials an emulator starts with (its options' `validate`).
pub fn check_start_dials(error_rate: f64, rate_limit: Option<f64>) -> Result<(), String> {
    if !(0.0..=1.0).contains(&error_rate) {
        return Err(format!("error rate {error_rate} is not within 0..=1"));
    }
    if let Some(r) = rate_limit
        && !(r.is_finite() && r > 0.0)
    {
        return Err(format!("rate limit {r}/s is not positive"));
    }
    Ok(())
}

/// Knobs every emulator has beyond its vendor's documented behaviour,
/// parsed once (`rekey emulate <kind> --list-delay …`) and applied by each
/// emulator's list handler.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct CommonKnobs {
    /// Eventually consistent listing: keys created less than this long ago
    /// are not listed yet (e.g. 2s). Deletes show at once.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub list_delay: Duration,
}

impl CommonKnobs {
    /// Whether a key created at `created` (emulator monotonic time) shows
    /// in a listing at `now`.
    pub fn listed(&self, created: std::time::Instant, now: std::time::Instant) -> bool {
        now.saturating_duration_since(created) >= self.list_delay
    }
}

/// Parse a request rate written as `N/s`, `N/min` or `N/h` (as in the
/// config's `rate_limit`) into requests per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    text.parse::<crate::config::RateLimit>()
        .map(|r| r.per_second)
}

/// A token bucket: `rate` tokens per second, holding at most one second's
/// worth (at least one token), so a client may burst briefly and is then
/// held to the rate, like an API gateway's limiter.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Refill speed in tokens per second.
    rate: f64,
    /// Burst size: what an idle client may spend at once.
    capacity: f64,
    /// Tokens available at `last`.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: Instant,
}

impl TokenBucket {
    pub fn new(per_second: f64, now: Instant) -> Self {
        let capacity = per_second.max(1.0).floor();
        TokenBucket {
            rate: per_second,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    /// Take one token, or say how long until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// `Retry-After` seconds for a wait: rounded up, at least one (the header
/// carries whole seconds and `0` would invite an immediate retry).
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

/// The admin API answers only clients on the loopback interface: it hands
/// out every key's secret and takes no credentials.
pub fn admin_allowed(peer: &SocketAddr) -> bool {
    peer.ip().is_loopback() || peer.ip().to_canonical().is_loopback()
}

/// How the rate limit is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// One token bucket per operation, as Tencent and Huawei limit per API.
    PerOperation,
    /// One bucket for every call (the OceanBase emulator's choice: its
    /// documents name no per-API limit).
    Shared,
}

/// The fault dials every emulator has, changeable at run time through its
/// admin API: a rate limit, an error rate drawn from a seeded generator,
/// and a latency added before every answer.
#[derive(Debug)]
pub struct Dials {
    rate_limit: Option<f64>,
    scope: LimitScope,
    buckets: HashMap<String, TokenBucket>,
    error_rate: f64,
    latency: Duration,
    rng: rand::rngs::StdRng,
}

impl Dials {
    pub fn new(rate_limit: Option<f64>, error_rate: f64, latency: Duration, seed: u64) -> Self {
        use rand::SeedableRng;
        Dials {
            rate_limit,
            scope: LimitScope::PerOperation,
            buckets: HashMap::new(),
            error_rate,
            latency,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    /// Count the rate limit per operation or across all of them.
    pub fn with_scope(mut self, scope: LimitScope) -> Self {
        self.scope = scope;
        self
    }

    /// Change what a `POST /__emulator/faults` names: an error rate within
    /// 0..=1, a latency, a rate (`0` turns the limit off).
    pub fn apply(
        &mut self,
        error_rate: Option<f64>,
        latency: Option<Duration>,
        rate_limit: Option<f64>,
    ) -> Result<(), String> {
        Self::check(error_rate, rate_limit)?;
        if let Some(r) = error_rate {
            self.error_rate = r;
        }
        if let Some(l) = latency {
            self.latency = l;
        }
        if let Some(r) = rate_limit {
            self.rate_limit = (r > 0.0).then_some(r);
            self.buckets.clear();
        }
        Ok(())
    }

    fn check(error_rate: Option<f64>, rate_limit: Option<f64>) -> Result<(), String> {
        if let Some(r) = error_rate
            && !(0.0..=1.0).contains(&r)
        {
            return Err(format!("error_rate {r} is not within 0..=1"));
        }
        if let Some(r) = rate_limit
            && (!r.is_finite() || r < 0.0)
        {
            return Err(format!("rate_limit {r} is negative"));
        }
        Ok(())
    }

    /// Take a token for `op`; `Err` is how long until one is free.
    pub fn throttle(&mut self, op: &str) -> Result<(), Duration> {
        let Some(rate) = self.rate_limit else {
            return Ok(());
        };
        let key = match self.scope {
            LimitScope::PerOperation => op,
            LimitScope::Shared => "*",
        };
        let t = Instant::now();
        self.buckets
            .entry(key.to_string())
            .or_insert_with(|| TokenBucket::new(rate, t))
            .try_take(t)
    }

    /// Whether this call draws an injected error.
    pub fn draw_error(&mut self) -> bool {
        self.error_rate > 0.0 && self.rng.random::<f64>() < self.error_rate
    }

    pub fn latency(&self) -> Duration {
        self.latency
    }

    /// The dials as the admin API shows them.
    pub fn to_json(&self) -> Value {
        json!({
            "error_rate": self.error_rate,
            "latency": humantime::format_duration(self.latency).to_string(),
            "rate_limit": self.rate_limit,
        })
    }
}

/// A fault queued for the next calls of an operation (`"*"`: any).
pub trait Forced: Clone {
    /// The operation (or action) it answers; `"*"` for any.
    fn operation(&self) -> &str;
    /// How many more calls it answers.
    fn count_mut(&mut self) -> &mut u32;
    /// Whether the emulator can answer with it (a known operation, a
    /// plausible status); `Err` is the admin API's 400 text.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Take the first queued fault for `op`, counting it down.
pub fn take_forced<F: Forced>(queue: &mut Vec<F>, op: &str) -> Option<F> {
    let i = queue
        .iter()
        .position(|f| f.operation() == "*" || f.operation() == op)?;
    let f = queue[i].clone();
    if *queue[i].count_mut() <= 1 {
        queue.remove(i);
    } else {
        *queue[i].count_mut() -= 1;
    }
    Some(f)
}

/// A change of faults: what `POST /__emulator/faults` takes as JSON (and
/// each emulator's `set_faults`), one shape for every emulator. `latency`
/// is a humantime string like `"20ms"`; `force` entries are the
/// emulator's own [`Forced`] type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    bound = "F: Serialize + DeserializeOwned"
)]
pub struct Faults<F> {
    /// New share (0..=1) of calls answered with the emulator's internal error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// New delay before every API answer.
    #[serde(with = "opt_humantime", skip_serializing_if = "Option::is_none")]
    pub latency: Option<Duration>,
    /// New rate limit in calls per second; `0` turns it off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<f64>,
    /// Forced answers to queue (after `clear_forced`, if set).
    pub force: Vec<F>,
    /// Drop every queued forced answer first.
    pub clear_forced: bool,
    /// OceanBase: make every Digest nonce issued so far stale.
    pub expire_nonces: bool,
    /// Huawei: invalidate every IAM token issued so far.
    pub expire_tokens: bool,
    /// Tencent: from now on the key list never ends (`TotalCount` always
    /// promises one more page; offsets past the last key repeat the keys
    /// from the start): a server whose pages never end. `false` ends it.
    pub endless_lists: bool,
}

impl<F> Default for Faults<F> {
    fn default() -> Self {
        Faults {
            error_rate: None,
            latency: None,
            rate_limit: None,
            force: Vec::new(),
            clear_forced: false,
            expire_nonces: false,
            expire_tokens: false,
            endless_lists: false,
        }
    }
}

/// Counts for one operation (`GET /__emulator/stats`). Each emulator fills
/// the ones its protocol has (only OceanBase challenges, say).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OpStats {
    /// Every request that reached the operation.
    pub requests: u64,
    /// Answered with success.
    pub ok: u64,
    /// Answered with any error (the ones below included).
    pub errors: u64,
    /// Refused for its credentials or signature.
    pub auth_failures: u64,
    /// OceanBase: answered 401 with a Digest challenge (stale ones too).
    pub challenged: u64,
    /// OceanBase: of those, challenges with `stale=true`.
    pub stale: u64,
    /// Answered by the rate limit.
    pub rate_limited: u64,
    /// Answered by a forced fault or the random error rate.
    pub faults: u64,
    /// Refused for the request itself: missing headers, bad parameters,
    /// unknown id.
    pub rejected: u64,
}

/// An emulator's name for one operation: OceanBase's [`Operation`
/// enum](super::oceanbase::Operation), a Tencent action, a Huawei path.
pub trait Op: Clone + Ord + Serialize + std::fmt::Debug + Send + Sync + 'static {
    /// The name forced faults and rate-limit buckets use.
    fn name(&self) -> &str;
    /// Whether it is the key listing (what a walk is made of).
    fn is_list(&self) -> bool;
    /// Operations `GET /__emulator/stats` shows even before their first
    /// call (with zero counts).
    fn known() -> Vec<Self> {
        Vec::new()
    }
}

/// How many requests the request log keeps (later ones are not logged).
pub const REQUEST_LOG_CAP: usize = 1_000_000;

/// One API request as an emulator answered it (`GET /__emulator/requests`,
/// each handle's `request_log`), challenges and throttled calls included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoggedRequest<O> {
    pub operation: O,
    /// Page of a list request, from 1 (`None` for other operations).
    pub page: Option<usize>,
    /// The HTTP status answered.
    pub status: u16,
    /// The error code answered, for protocols that answer errors with
    /// HTTP 200 (Tencent); `None` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Milliseconds since the emulator started, when it was answered.
    pub at_ms: u64,
}

impl<O: Op> LoggedRequest<O> {
    /// An answered first list page: one walk began (and its first page
    /// was served).
    pub fn starts_walk(&self) -> bool {
        self.operation.is_list()
            && self.page == Some(1)
            && self.status == 200
            && self.code.is_none()
    }
}

/// What every emulator keeps beside its keys: the dials, the forced-fault
/// queue, per-operation counts, named counters and the request log.
#[derive(Debug)]
pub struct Core<O, F> {
    pub dials: Dials,
    pub forced: Vec<F>,
    stats: BTreeMap<O, OpStats>,
    /// Emulator-specific counts shown beside the operations' (OceanBase:
    /// `authenticated_md5`, `authenticated_sha256`).
    counters: BTreeMap<&'static str, u64>,
    log: Vec<LoggedRequest<O>>,
    started: Instant,
}

impl<O: Op, F: Forced + Serialize> Core<O, F> {
    pub fn new(dials: Dials) -> Self {
        Core {
            dials,
            forced: Vec::new(),
            stats: BTreeMap::new(),
            counters: BTreeMap::new(),
            log: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Update `op`'s counts.
    pub fn count(&mut self, op: &O, f: impl FnOnce(&mut OpStats)) {
        f(self.stats.entry(op.clone()).or_default());
    }

    /// Add one to a named counter.
    pub fn bump(&mut self, counter: &'static str) {
        *self.counters.entry(counter).or_default() += 1;
    }

    pub fn counter(&self, counter: &str) -> u64 {
        self.counters.get(counter).copied().unwrap_or(0)
    }

    /// Log one answered request (up to [`REQUEST_LOG_CAP`]).
    pub fn log(&mut self, operation: O, page: Option<usize>, status: u16, code: Option<String>) {
        if self.log.len() < REQUEST_LOG_CAP {
            let at_ms = self.started.elapsed().as_millis() as u64;
            self.log.push(LoggedRequest {
                operation,
                page,
                status,
                code,
                at_ms,
            });
        }
    }

    /// The first queued fault for `op`, counted down.
    pub fn take_forced(&mut self, op: &O) -> Option<F> {
        take_forced(&mut self.forced, op.name())
    }

    /// Apply the common part of a fault change, all or nothing: every value
    /// is checked before any is applied. The emulator acts on the flags
    /// (`expire_nonces`, `expire_tokens`) itself.
    pub fn apply(&mut self, f: &Faults<F>) -> Result<(), String> {
        Dials::check(f.error_rate, f.rate_limit)?;
        for ff in &f.force {
            ff.check()?;
        }
        self.dials.apply(f.error_rate, f.latency, f.rate_limit)?;
        if f.clear_forced {
            self.forced.clear();
        }
        self.forced.extend(
            f.force
                .iter()
                .cloned()
                .filter_map(|mut ff| (*ff.count_mut() > 0).then_some(ff)),
        );
        Ok(())
    }

    /// `GET /__emulator/faults`: the dials and the queue.
    pub fn faults_json(&self) -> Value {
        let mut v = self.dials.to_json();
        v["forced"] = json!(self.forced);
        v
    }

    /// Counts per operation.
    pub fn stats(&self) -> BTreeMap<O, OpStats> {
        self.stats.clone()
    }

    /// `GET /__emulator/stats`: `{OPERATION: OpStats, …, COUNTER: n, …}`.
    pub fn stats_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for op in O::known() {
            m.insert(op.name().to_string(), json!(OpStats::default()));
        }
        for (op, s) in &self.stats {
            m.insert(op.name().to_string(), json!(s));
        }
        for (c, n) in &self.counters {
            m.insert((*c).to_string(), json!(n));
        }
        Value::Object(m)
    }

    /// Every request answered since start or the last reset, in order.
    pub fn request_log(&self) -> Vec<LoggedRequest<O>> {
        self.log.clone()
    }

    /// Forget the counts and the request log.
    pub fn reset(&mut self) {
        self.stats.clear();
        self.counters.clear();
        self.log.clear();
    }
}

/// What an emulator tells the framework so it can serve the admin API.
pub trait Emulator: Send + Sync + 'static {
    type Op: Op;
    type Forced: Forced + Serialize + DeserializeOwned + Send + 'static;
    /// Run `f` on the emulator's [`Core`], under its state lock.
    fn core<R>(&self, f: impl FnOnce(&mut Core<Self::Op, Self::Forced>) -> R) -> R;
    /// `GET /__emulator/keys`: every key, secrets included.
    fn keys_json(&self) -> Value;
    /// `POST /__emulator/keys`: insert one key from the JSON body; `None`
    /// when the emulator takes no inserts (405), `Err` a 400's text.
    fn insert_key_json(&self, _body: &[u8]) -> Option<Result<Value, String>> {
        None
    }
    /// Apply a fault change: [`Core::apply`] plus what the flags mean here
    /// (a flag the emulator has no use for is refused).
    fn apply_faults(&self, faults: Faults<Self::Forced>) -> Result<(), String>;
    /// `GET /__emulator/faults`.
    fn faults_json(&self) -> Value {
        self.core(|c| c.faults_json())
    }
}

/// Refuse the flags of [`Faults`] an emulator does not have.
pub fn refuse_flags<F>(f: &Faults<F>, emulator: &str, allowed: &[&str]) -> Result<(), String> {
    for (name, set) in [
        ("expire_nonces", f.expire_nonces),
        ("expire_tokens", f.expire_tokens),
        ("endless_lists", f.endless_lists),
    ] {
        if set && !allowed.contains(&name) {
            return Err(format!("{name} does not apply to the {emulator} emulator"));
        }
    }
    Ok(())
}

/// The admin API every emulator serves, loopback clients only:
/// `GET|POST /__emulator/keys`, `GET|POST /__emulator/faults`,
/// `GET /__emulator/stats`, `GET /__emulator/requests`, plus the
/// emulator's own admin routes in `extra` (Tencent's usage plans), all
/// behind the one loopback guard. Merge it into the emulator's router.
pub fn admin_routes<E: Emulator>(extra: Router<Arc<E>>) -> Router<Arc<E>> {
    Router::new()
        .route(
            "/__emulator/keys",
            get(admin_keys::<E>).post(admin_insert_key::<E>),
        )
        .route(
            "/__emulator/faults",
            get(admin_faults::<E>).post(admin_set_faults::<E>),
        )
        .route("/__emulator/stats", get(admin_stats::<E>))
        .route("/__emulator/requests", get(admin_requests::<E>))
        .merge(extra)
        .route_layer(axum::middleware::from_fn(loopback_only))
}

/// The guard of every admin route: it hands out secrets and takes no
/// credentials, so only loopback clients get through.
async fn loopback_only(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if admin_allowed(&peer) {
        next.run(req).await
    } else {
        forbidden()
    }
}

/// The 403 of an admin request from beyond loopback.
pub fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        "the emulator admin API answers loopback clients only\n",
    )
        .into_response()
}

fn json_ok(status: StatusCode, v: Value) -> Response {
    (status, Json(v)).into_response()
}

fn bad_request(e: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
}

async fn admin_keys<E: Emulator>(State(e): State<Arc<E>>) -> Response {
    json_ok(StatusCode::OK, e.keys_json())
}

async fn admin_insert_key<E: Emulator>(State(e): State<Arc<E>>, body: Bytes) -> Response {
    match e.insert_key_json(&body) {
        None => (
            StatusCode::METHOD_NOT_ALLOWED,
            "this emulator takes no key inserts\n",
        )
            .into_response(),
        Some(Ok(v)) => json_ok(StatusCode::CREATED, v),
        Some(Err(m)) => bad_request(m),
    }
}

async fn admin_faults<E: Emulator>(State(e): State<Arc<E>>) -> Response {
    json_ok(StatusCode::OK, e.faults_json())
}

async fn admin_set_faults<E: Emulator>(State(e): State<Arc<E>>, body: Bytes) -> Response {
    let faults: Faults<E::Forced> = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(err) => return bad_request(format_args!("bad faults: {err}")),
    };
    match e.apply_faults(faults) {
        Ok(()) => json_ok(StatusCode::OK, e.faults_json()),
        Err(m) => bad_request(m),
    }
}

async fn admin_stats<E: Emulator>(State(e): State<Arc<E>>) -> Response {
    json_ok(StatusCode::OK, e.core(|c| c.stats_json()))
}

async fn admin_requests<E: Emulator>(State(e): State<Arc<E>>) -> Response {
    json_ok(StatusCode::OK, json!(e.core(|c| c.request_log())))
}

/// An axum app served in the background until [`Server::shutdown`].
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Server({})", self.addr)
    }
}

impl Server {
    /// Bind `listen` (port 0 picks one) and serve `app` on the current
    /// runtime, with the peer address available to handlers.
    pub async fn start(listen: SocketAddr, app: Router) -> io::Result<Server> {
        Server::serve(tokio::net::TcpListener::bind(listen).await?, app)
    }

    /// Serve `app` on a listener already bound (when the app needs to know
    /// its own address).
    pub fn serve(listener: tokio::net::TcpListener, app: Router) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
        });
        Ok(Server {
            addr,
            stop: Some(tx),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting, give in-flight requests up to 5 s, then stop.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Wait for Ctrl-C (or SIGTERM), for `rekey emulate`.
pub async fn until_interrupted() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct F(&'static str, u32);
    impl Forced for F {
        fn operation(&self) -> &str {
            self.0
        }
        fn count_mut(&mut self) -> &mut u32 {
            &mut self.1
        }
    }

    #[test]
    fn forced_faults_count_down_and_match_any_with_a_star() {
        let mut q = vec![F("list", 2), F("*", 1)];
        assert_eq!(take_forced(&mut q, "list"), Some(F("list", 2)));
        assert_eq!(take_forced(&mut q, "list"), Some(F("list", 1)));
        assert_eq!(take_forced(&mut q, "delete"), Some(F("*", 1)));
        assert_eq!(take_forced(&mut q, "list"), None);
    }

    #[test]
    fn dials_throttle_per_operation_and_refuse_bad_values() {
        let mut d = Dials::new(Some(1.0), 0.0, Duration::ZERO, 1);
        assert!(d.throttle("list").is_ok());
        assert!(d.throttle("list").is_err());
        assert!(d.throttle("create").is_ok());
        assert!(!d.draw_error());
        assert!(d.apply(Some(2.0), None, None).is_err());
        assert!(d.apply(None, None, Some(-1.0)).is_err());
        d.apply(Some(1.0), None, Some(0.0)).unwrap();
        assert!(d.throttle("list").is_ok() && d.draw_error());
    }

    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
    struct O(&'static str);
    impl Op for O {
        fn name(&self) -> &str {
            self.0
        }
        fn is_list(&self) -> bool {
            self.0 == "list"
        }
        fn known() -> Vec<Self> {
            vec![O("list"), O("delete")]
        }
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct G {
        operation: String,
        count: u32,
    }
    impl Forced for G {
        fn operation(&self) -> &str {
            &self.operation
        }
        fn count_mut(&mut self) -> &mut u32 {
            &mut self.count
        }
        fn check(&self) -> Result<(), String> {
            if self.operation == "rename" {
                Err("no rename".into())
            } else {
                Ok(())
            }
        }
    }

    fn core() -> Core<O, G> {
        Core::new(Dials::new(None, 0.0, Duration::ZERO, 1))
    }

    #[test]
    fn a_fault_change_applies_all_or_nothing() {
        let mut c = core();
        let bad: Faults<G> = serde_json::from_value(json!({
            "latency": "5ms",
            "force": [{"operation": "list", "count": 1}, {"operation": "rename", "count": 1}],
        }))
        .unwrap();
        assert!(c.apply(&bad).is_err());
        assert!(c.forced.is_empty());
        assert_eq!(c.dials.latency(), Duration::ZERO);
        let good: Faults<G> = serde_json::from_value(json!({
            "latency": "5ms",
            "force": [{"operation": "list", "count": 2}, {"operation": "delete", "count": 0}],
        }))
        .unwrap();
        c.apply(&good).unwrap();
        assert_eq!(c.dials.latency(), Duration::from_millis(5));
        assert_eq!(c.forced.len(), 1, "a zero count queues nothing");
        assert!(c.take_forced(&O("list")).is_some());
        assert!(c.take_forced(&O("list")).is_some());
        assert!(c.take_forced(&O("list")).is_none());
    }

    #[test]
    fn flags_of_another_emulator_are_refused() {
        let f = Faults::<G> {
            expire_tokens: true,
            ..Default::default()
        };
        assert!(refuse_flags(&f, "oceanbase", &["expire_nonces"]).is_err());
        assert!(refuse_flags(&f, "huawei", &["expire_tokens"]).is_ok());
        assert!(refuse_flags(&Faults::<G>::default(), "tencent", &[]).is_ok());
    }

    #[test]
    fn stats_show_known_operations_and_counters_and_the_log_finds_walks() {
        let mut c = core();
        c.count(&O("list"), |s| s.requests += 1);
        c.bump("authenticated_md5");
        c.log(O("list"), Some(1), 200, None);
        c.log(O("list"), Some(2), 200, None);
        c.log(O("list"), Some(1), 200, Some("InternalError".into()));
        c.log(O("delete"), None, 200, None);
        let v = c.stats_json();
        assert_eq!(v["list"]["requests"], 1);
        assert_eq!(v["delete"]["requests"], 0, "known, not yet called");
        assert_eq!(v["authenticated_md5"], 1);
        let walks = c.request_log().iter().filter(|r| r.starts_walk()).count();
        assert_eq!(walks, 1, "an error envelope on page 1 is no walk");
        c.reset();
        assert!(c.request_log().is_empty() && c.stats().is_empty());
    }

    #[test]
    fn a_shared_limit_counts_every_operation_in_one_bucket() {
        let mut d = Dials::new(Some(1.0), 0.0, Duration::ZERO, 1).with_scope(LimitScope::Shared);
        assert!(d.throttle("list").is_ok());
        assert!(d.throttle("create").is_err());
    }

    #[test]
    fn queries_decode_like_a_server_would() {
        assert_eq!(
            query_pairs("limit=100&offset=0&q=a%20b+c").unwrap(),
            vec![
                ("limit".to_string(), "100".to_string()),
                ("offset".to_string(), "0".to_string()),
                ("q".to_string(), "a b c".to_string()),
            ]
        );
        assert!(query_pairs("x=%zz").is_none());
        assert_eq!(percent_decode("%2Ftmp", false).unwrap(), "/tmp");
    }

    #[test]
    fn rates_parse_per_second_minute_and_hour() {
        assert_eq!(parse_rate("20/s").unwrap(), 20.0);
        assert_eq!(parse_rate("600/min").unwrap(), 10.0);
        assert_eq!(parse_rate(" 3600 / h ").unwrap(), 1.0);
        assert!(parse_rate("20").is_err());
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("-1/s").is_err());
        assert!(parse_rate("5/week").is_err());
        assert!(parse_rate("x/s").is_err());
        assert_eq!(parse_rate("7200/h").unwrap(), 2.0);
    }

    #[test]
    fn bucket_allows_a_burst_then_holds_to_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, t0);
        assert!(b.try_take(t0).is_ok());
        assert!(b.try_take(t0).is_ok());
        let wait = b.try_take(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(b.try_take(t0 + Duration::from_millis(500)).is_ok());
        assert!(b.try_take(t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn slow_rates_still_allow_one_request() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1.0 / 60.0, t0);
        assert!(b.try_take(t0).is_ok());
        let wait = b.try_take(t0).unwrap_err();
        assert_eq!(retry_after_secs(wait), 60);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn admin_api_is_loopback_only() {
        assert!(admin_allowed(&"127.0.0.1:1".parse().unwrap()));
        assert!(admin_allowed(&"[::1]:1".parse().unwrap()));
        assert!(admin_allowed(&"[::ffff:127.0.0.1]:1".parse().unwrap()));
        assert!(!admin_allowed(&"10.0.0.1:1".parse().unwrap()));
    }
}
