//! An in-memory emulator of the OceanBase Cloud MaaS API-key API
//! (`/api/v2/maas/apikeys`: list, create, delete), faithful to the seed
//! documents in `shared/seeds/oceanbase-maas-*.txt` and PROTOCOLS.md §4.
//!
//! What it does as the documents say:
//! - HTTP Digest authentication (RFC 7616, `qop="auth"`, MD5 and SHA-256;
//!   with `--digest-no-qop` an RFC 2069 challenge without `qop` instead):
//!   a request without a valid `Authorization: Digest …` gets 401 and one
//!   `WWW-Authenticate: Digest realm=…, qop="auth", nonce=…, opaque=…,
//!   algorithm=…` challenge per offered algorithm. The response hash is
//!   checked against the RFC formula (computed here, independently of the
//!   client code), a repeated `nc` for a nonce is refused, and a nonce older
//!   than `nonce_ttl` is answered with `stale=true`.
//! - `X-OB-Org-Id` and `X-OB-Project-Id` are required (400 otherwise).
//! - List pages with `pageNumber` (from 1) and `pageSize` (default 10, at
//!   most 100; a larger value is silently turned into 20), returns
//!   `data.list[].{id,name,createdAt,updatedAt,expiresAt}` and `data.total`,
//!   and echoes `Action` (query or header, default `ListAIServiceAPIKeys`).
//! - Create takes `{name, action}` and returns `data.{apiKey,name,createdAt}`
//!   with **no id**; the key value is never shown again by the API.
//! - Delete takes `?id=`; an unknown id is a 404 error envelope; success is
//!   `{action:"DeleteAIServiceAPIKey", data:{}, error:{}, message:"success", …}`.
//! - Errors use the documented Open API envelope with a non-2xx status:
//!   `{"success":false,"errorCode":…,"errorMessage":…,"requestId":…}`.
//!
//! What the documents leave open, and the emulator's choice:
//! - Only `E001R000` ("Unknown Error", used for 5xx) and `INVALID_PARAMETER`
//!   (used for 400) are documented codes. `UNAUTHORIZED`, `FORBIDDEN` (wrong
//!   org/project), `NOT_FOUND` and `TOO_MANY_REQUESTS` are this emulator's.
//! - Authentication is checked before the org/project headers.
//! - Keys are listed oldest first (`list_order` can flip it: with newest
//!   first, a key created while a client walks the pages shifts every later
//!   page by one, as offset paging does); duplicate names are allowed.
//! - `expiresAt` is `null` for keys that never expire (`lifetime: None`).
//! - The realm is [`REALM`]; timestamps are RFC 3339 in UTC, whole seconds.
//! - The `uid` query parameter is accepted and ignored.
//! - A created key is listed at once, unless `list_delay` models an
//!   eventually consistent list (the key then appears that much later).
//!
//! Knobs a real provider lacks: seeded keys, latency, a random 500 rate, a
//! rate limit (429 with `Retry-After`, one bucket for every call), forced
//! statuses for the next N calls of an operation, and the admin API of the
//! emulator framework (`emulator::common`, loopback only, no auth):
//! `GET /__emulator/keys` (every key **with its secret**: this is a test
//! fake), `POST /__emulator/keys` (insert one), `GET|POST /__emulator/faults`
//! (with `expire_nonces`), `GET /__emulator/stats`, `GET
//! /__emulator/requests` (the request log: operation, list page, status and
//! time of every API request).

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::common::{self, Core, Dials, LimitScope, Server, retry_after_secs};
use crate::secret::Secret;
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::any;
use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The one API path; the HTTP method picks the operation.
pub const API_PATH: &str = "/api/v2/maas/apikeys";
/// The documented maximum `pageSize`.
pub const MAX_PAGE_SIZE: usize = 100;
/// What the API silently uses when `pageSize` exceeds the maximum.
pub const OVERSIZE_PAGE_SIZE: usize = 20;
/// The documented default `pageSize`.
pub const DEFAULT_PAGE_SIZE: usize = 10;
/// The Digest realm the emulator challenges with.
pub const REALM: &str = "oceanbase-cloud-emulator";
/// `action` of list responses when the client names none.
pub const LIST_ACTION: &str = "ListAIServiceAPIKeys";
/// `action` of delete responses (from the seed).
pub const DELETE_ACTION: &str = "DeleteAIServiceAPIKey";
/// `action` of MaaS-style create error envelopes (not documented).
pub const CREATE_ACTION: &str = "CreateAIServiceAPIKey";

pub const DEFAULT_ACCESS_KEY_ID: &str = "emu-access-key-id";
pub const DEFAULT_ACCESS_KEY_SECRET: &str = "emu-access-key-secret";
pub const DEFAULT_ORG_ID: &str = "org-emulator";
pub const DEFAULT_PROJECT_ID: &str = "proj-emulator";

/// Request bodies larger than this are refused (create bodies are tiny).
const MAX_REQUEST_BODY: usize = 64 * 1024;
/// Nonces remembered before old ones are pruned.
const NONCE_PRUNE_AT: usize = 10_000;

/// A Digest hash algorithm the emulator can offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DigestAlgorithm {
    #[serde(rename = "MD5")]
    Md5,
    #[serde(rename = "SHA-256")]
    Sha256,
}

impl DigestAlgorithm {
    /// The token used in `algorithm=` (RFC 7616 §3.3).
    pub fn as_str(self) -> &'static str {
        match self {
            DigestAlgorithm::Md5 => "MD5",
            DigestAlgorithm::Sha256 => "SHA-256",
        }
    }

    /// Case-insensitive; accepts `MD5`, `SHA-256` and `sha256`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "MD5" => Some(DigestAlgorithm::Md5),
            "SHA-256" | "SHA256" => Some(DigestAlgorithm::Sha256),
            _ => None,
        }
    }

    fn hash(self, s: &str) -> String {
        let t = match self {
            DigestAlgorithm::Md5 => digest_auth::AlgorithmType::MD5,
            DigestAlgorithm::Sha256 => digest_auth::AlgorithmType::SHA2_256,
        };
        digest_auth::Algorithm::new(t, false).hash_str(s)
    }
}

/// How the emulator behaves; `Default` is what `rekey emulate oceanbase`
/// uses without flags.
#[derive(Debug, Clone)]
pub struct OceanBaseEmulatorOptions {
    /// Keys present at start, so listing and scans have pages to walk.
    pub keys: usize,
    /// Names of seeded keys: prefix + zero-padded number (`app-00001`).
    pub name_prefix: String,
    /// Lifetime of new and seeded keys; `None` = they never expire
    /// (`expiresAt: null`), which the docs do not rule out.
    pub lifetime: Option<Duration>,
    /// How many seeded keys expire soon (within `within`), to give a
    /// planner something due.
    pub expiring: usize,
    /// The window the `expiring` keys expire in, from start.
    pub within: Duration,
    /// Delay before every API answer, to model a distant provider.
    pub latency: Duration,
    /// Share (0..=1) of authenticated API calls answered 500 `E001R000`.
    pub error_rate: f64,
    /// Requests per second before 429 with `Retry-After`; `None` = no limit.
    pub rate_limit: Option<f64>,
    /// Seed for key ids, secrets, seeded timestamps and the error draw;
    /// `None` = random. Nonces are always random.
    pub seed: Option<u64>,
    /// The Digest username clients must present.
    pub access_key_id: String,
    /// The Digest password; a fake, but still redacted in `Debug`.
    pub access_key_secret: Secret,
    /// What `X-OB-Org-Id` must say (another org is refused with 403).
    pub org_id: String,
    /// What `X-OB-Project-Id` must say (another project: 403).
    pub project_id: String,
    /// Algorithms offered, one challenge each, in this order.
    pub algorithms: Vec<DigestAlgorithm>,
    /// Age after which a nonce is answered with `stale=true`.
    pub nonce_ttl: Duration,
    /// Order of list pages; the docs do not say which the API uses.
    pub list_order: ListOrder,
    /// How long a key made through the create API stays out of list
    /// answers (an eventually consistent list); create's id lookup must
    /// cope with it.
    pub list_delay: Duration,
    /// Offer `qop="auth"` (RFC 7616, the default). `false` offers an
    /// RFC 2069 challenge without `qop`, which `curl --digest` and
    /// OceanBase's Terraform provider accept, and verifies
    /// `H(HA1:nonce:HA2)` (no `nc`, no `cnonce`).
    pub digest_qop: bool,
}

/// The order list pages come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListOrder {
    /// Creation order: new keys land on the last page.
    #[default]
    Oldest,
    /// Newest first: new keys land on page 1 and push the rest down.
    Newest,
}

impl ListOrder {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "oldest" | "oldest-first" => Some(ListOrder::Oldest),
            "newest" | "newest-first" => Some(ListOrder::Newest),
            _ => None,
        }
    }
}

impl Default for OceanBaseEmulatorOptions {
    fn default() -> Self {
        OceanBaseEmulatorOptions {
            keys: 0,
            name_prefix: "app-".into(),
            lifetime: Some(Duration::from_secs(30 * 24 * 3600)),
            expiring: 0,
            within: Duration::from_secs(3600),
            latency: Duration::ZERO,
            error_rate: 0.0,
            rate_limit: None,
            seed: None,
            access_key_id: DEFAULT_ACCESS_KEY_ID.into(),
            access_key_secret: Secret::new(DEFAULT_ACCESS_KEY_SECRET),
            org_id: DEFAULT_ORG_ID.into(),
            project_id: DEFAULT_PROJECT_ID.into(),
            algorithms: vec![DigestAlgorithm::Sha256, DigestAlgorithm::Md5],
            nonce_ttl: Duration::from_secs(300),
            list_order: ListOrder::Oldest,
            list_delay: Duration::ZERO,
            digest_qop: true,
        }
    }
}

impl OceanBaseEmulatorOptions {
    fn validate(&self) -> Result<(), String> {
        common::check_start_dials(self.error_rate, self.rate_limit)?;
        if self.expiring > self.keys {
            return Err(format!(
                "{} expiring keys requested but only {} seeded",
                self.expiring, self.keys
            ));
        }
        if self.algorithms.is_empty() {
            return Err("no Digest algorithm offered".into());
        }
        if self.access_key_id.is_empty() || self.access_key_secret.is_empty() {
            return Err("the access key id and secret must not be empty".into());
        }
        Ok(())
    }
}

/// One key as the emulator holds it, secret included (a test fake hands
/// its secrets to tests; `Debug` still redacts it).
#[derive(Debug, Clone, PartialEq)]
pub struct EmulatedKey {
    /// `ak-` and 16 hex digits, like the seed's example id.
    pub id: String,
    pub name: String,
    /// The value create returned once (`sk_` and 32 hex digits).
    pub api_key: Secret,
    /// The permission it was created with.
    pub action: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl EmulatedKey {
    /// The admin API's view: the list fields plus `apiKey` and `action`.
    fn admin_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "apiKey": self.api_key.expose(),
            "action": self.action,
            "createdAt": ts(self.created_at),
            "updatedAt": ts(self.updated_at),
            "expiresAt": self.expires_at.map(ts),
        })
    }

    /// The list API's view: never the secret.
    fn list_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "createdAt": ts(self.created_at),
            "updatedAt": ts(self.updated_at),
            "expiresAt": self.expires_at.map(ts),
        })
    }
}

/// The three API operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    List,
    Create,
    Delete,
}

impl common::Op for Operation {
    fn name(&self) -> &str {
        match self {
            Operation::List => "list",
            Operation::Create => "create",
            Operation::Delete => "delete",
        }
    }

    fn is_list(&self) -> bool {
        *self == Operation::List
    }

    fn known() -> Vec<Self> {
        vec![Operation::List, Operation::Create, Operation::Delete]
    }
}

/// Which error envelope a forced fault answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorStyle {
    /// The generic Open API failure envelope:
    /// `{success:false, errorCode, errorMessage, requestId}`.
    #[default]
    OpenApi,
    /// The MaaS pages' shape with `success:false`:
    /// `{action, data:{}, error:{code,message}, message, requestId, server, success}`.
    Maas,
}

/// Answer the next `count` calls of `operation` with `status` (after
/// authentication, so the Digest exchange still works).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForcedFault {
    pub operation: Operation,
    pub status: u16,
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default)]
    pub style: ErrorStyle,
    /// Error code; default `E001R000` for 5xx, else `INJECTED_FAULT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Error message; default `Unknown Error` for 5xx, else `injected fault`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Retry-After` seconds on a forced 429 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

fn one() -> u32 {
    1
}

impl common::Forced for ForcedFault {
    fn operation(&self) -> &str {
        common::Op::name(&self.operation)
    }

    fn count_mut(&mut self) -> &mut u32 {
        &mut self.count
    }

    fn check(&self) -> Result<(), String> {
        if (200..=599).contains(&self.status) {
            Ok(())
        } else {
            Err(format!("status {} is not within 200..=599", self.status))
        }
    }
}

/// A change to the emulator's faults (`POST /__emulator/faults` takes the
/// same fields as JSON): the framework's, with `expire_nonces` (make every
/// nonce issued so far stale, to exercise re-challenges).
pub type Faults = common::Faults<ForcedFault>;

/// Counts for one operation (the framework's).
pub type OperationStats = common::OpStats;

pub use common::REQUEST_LOG_CAP;

/// One API request as the emulator answered it (`GET /__emulator/requests`,
/// [`EmulatorHandle::request_log`]), Digest challenges and 429s included.
pub type LoggedRequest = common::LoggedRequest<Operation>;

/// Request counts (`GET /__emulator/stats` shows the same), per operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EmulatorStats {
    pub list: OperationStats,
    pub create: OperationStats,
    pub delete: OperationStats,
    /// Requests accepted with an MD5 Digest response.
    pub authenticated_md5: u64,
    /// Requests accepted with a SHA-256 Digest response.
    pub authenticated_sha256: u64,
}

impl EmulatorStats {
    fn of(core: &Core<Operation, ForcedFault>) -> Self {
        let stats = core.stats();
        let op = |o| stats.get(&o).copied().unwrap_or_default();
        EmulatorStats {
            list: op(Operation::List),
            create: op(Operation::Create),
            delete: op(Operation::Delete),
            authenticated_md5: core.counter(AUTH_MD5),
            authenticated_sha256: core.counter(AUTH_SHA256),
        }
    }

    /// 401 challenges across all operations.
    pub fn challenged(&self) -> u64 {
        self.list.challenged + self.create.challenged + self.delete.challenged
    }

    /// Stale challenges across all operations.
    pub fn stale(&self) -> u64 {
        self.list.stale + self.create.stale + self.delete.stale
    }

    /// API requests across all operations.
    pub fn requests(&self) -> u64 {
        self.list.requests + self.create.requests + self.delete.requests
    }
}

/// Counter names of the accepted Digest responses, per algorithm.
const AUTH_MD5: &str = "authenticated_md5";
const AUTH_SHA256: &str = "authenticated_sha256";

/// A key in creation order; `seq` orders pages and survives deletes.
struct Stored {
    seq: u64,
    /// When list answers start to show it. Never earlier than the key
    /// before it, so the keys not yet listed are always a suffix of
    /// `keys` and a page stays one slice.
    visible_at: Instant,
    key: EmulatedKey,
}

/// What the emulator remembers about a nonce it issued.
struct NonceState {
    issued: Instant,
    /// `expire_nonces` generation it was issued in; older = stale.
    generation: u64,
    /// `nc` values already used with it (replays are refused).
    seen: HashSet<u32>,
}

struct EmuState {
    /// Keys in creation order: a page is one slice, no copy of the rest.
    keys: Vec<Stored>,
    /// id → seq, to find a key to delete by binary search.
    by_id: HashMap<String, u64>,
    next_seq: u64,
    /// Seeded: key ids and secrets.
    key_rng: StdRng,
    nonces: HashMap<String, NonceState>,
    nonce_generation: u64,
    /// Dials (seeded separately, so fault draws do not shift the ids),
    /// forced faults, counts and the request log.
    core: Core<Operation, ForcedFault>,
}

struct Inner {
    opts: OceanBaseEmulatorOptions,
    /// The `server` field of responses: the bound address.
    server: String,
    /// Sent with every challenge; clients must return it unchanged.
    opaque: String,
    state: Mutex<EmuState>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, EmuState> {
        // A panic while holding the lock leaves consistent data (every
        // mutation is a single step), so keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running emulator. Dropping it stops the server abruptly; call
/// [`EmulatorHandle::shutdown`] to stop gracefully.
pub struct EmulatorHandle {
    addr: SocketAddr,
    inner: Arc<Inner>,
    server: Server,
}

impl std::fmt::Debug for EmulatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OceanBaseEmulator({})", self.addr)
    }
}

/// Start the emulator on `listen` (`127.0.0.1:0` picks a free port) and
/// serve in the background on the current tokio runtime.
pub async fn start(
    opts: OceanBaseEmulatorOptions,
    listen: SocketAddr,
) -> io::Result<EmulatorHandle> {
    opts.validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // The `server` field of answers names the bound address, known only
    // once bound: bind first, then build the state.
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let inner = Arc::new(new_inner(opts, addr));
    let server = Server::serve(listener, router(inner.clone()))?;
    tracing::debug!(%addr, "oceanbase emulator listening");
    Ok(EmulatorHandle {
        addr,
        inner,
        server,
    })
}

impl EmulatorHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, what a provider's `endpoint` should be.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The options it runs with (credentials, org, project).
    pub fn options(&self) -> &OceanBaseEmulatorOptions {
        &self.inner.opts
    }

    /// Every key, in list order, with its secret.
    pub fn keys(&self) -> Vec<EmulatedKey> {
        self.inner
            .lock()
            .keys
            .iter()
            .map(|s| s.key.clone())
            .collect()
    }

    pub fn key_count(&self) -> usize {
        self.inner.lock().keys.len()
    }

    /// Add a key as if created earlier (permission `read`); returns it.
    pub fn insert_key(
        &self,
        name: &str,
        created_at: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> EmulatedKey {
        let mut st = self.inner.lock();
        insert(&mut st, name, "read", created_at, expires_at)
    }

    /// Put back a key exactly as it was (id, secret, times), e.g. from a
    /// saved snapshot, so `rekey dev` resumes against the same keys. A key
    /// with that id already present is left as it is.
    pub fn restore_key(&self, key: EmulatedKey) {
        let mut st = self.inner.lock();
        if st.by_id.contains_key(&key.id) {
            return;
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        st.by_id.insert(key.id.clone(), seq);
        st.keys.push(Stored {
            seq,
            visible_at: Instant::now(),
            key,
        });
    }

    /// Apply a fault change (all or nothing).
    pub fn set_faults(&self, faults: Faults) -> Result<(), String> {
        common::Emulator::apply_faults(&*self.inner, faults)
    }

    /// The faults in effect, as `GET /__emulator/faults` shows them.
    pub fn faults(&self) -> Value {
        common::Emulator::faults_json(&*self.inner)
    }

    pub fn stats(&self) -> EmulatorStats {
        EmulatorStats::of(&self.inner.lock().core)
    }

    pub fn reset_stats(&self) {
        self.inner.lock().core.reset();
    }

    /// Every API request answered since start (or the last
    /// [`EmulatorHandle::reset_stats`]), in order.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.inner.lock().core.request_log()
    }

    /// Make every nonce issued so far stale.
    pub fn expire_nonces(&self) {
        self.inner.lock().nonce_generation += 1;
    }

    /// Stop accepting, let in-flight requests finish (at most 5 s), stop.
    pub async fn shutdown(self) {
        self.server.shutdown().await
    }
}

fn new_inner(opts: OceanBaseEmulatorOptions, addr: SocketAddr) -> Inner {
    let seed = opts.seed.unwrap_or_else(|| rand::rng().random());
    let mut key_rng = StdRng::seed_from_u64(seed);
    let dials = Dials::new(
        opts.rate_limit,
        opts.error_rate,
        opts.latency,
        seed ^ 0x9e37_79b9_7f4a_7c15,
    )
    .with_scope(LimitScope::Shared);
    let now = now_secs();
    let mut st = EmuState {
        keys: Vec::with_capacity(opts.keys),
        by_id: HashMap::with_capacity(opts.keys),
        next_seq: 1,
        key_rng: StdRng::seed_from_u64(0),
        nonces: HashMap::new(),
        nonce_generation: 0,
        core: Core::new(dials),
    };
    // Seeded keys are somewhere in the first half of their life, so none is
    // due unless it is one of the `expiring` ones.
    let half_life = opts
        .lifetime
        .unwrap_or(Duration::from_secs(30 * 24 * 3600))
        .as_secs()
        / 2;
    let expiring: HashSet<usize> =
        rand::seq::index::sample(&mut key_rng, opts.keys.max(1), opts.expiring)
            .into_iter()
            .collect();
    let mut seeded = Vec::with_capacity(opts.keys);
    for i in 0..opts.keys {
        let name = format!("{}{:05}", opts.name_prefix, i + 1);
        let (created, expires) = if expiring.contains(&i) {
            let left = key_rng.random_range(1..=opts.within.as_secs().max(1)) as i64;
            let expires = now + chrono::Duration::seconds(left);
            let created = match opts.lifetime {
                Some(l) => expires - chrono::Duration::seconds(l.as_secs() as i64),
                None => now - chrono::Duration::seconds(60),
            };
            (created, Some(expires))
        } else {
            let age = key_rng.random_range(0..=half_life.max(1)) as i64;
            let created = now - chrono::Duration::seconds(age);
            let expires = opts
                .lifetime
                .map(|l| created + chrono::Duration::seconds(l.as_secs() as i64));
            (created, expires)
        };
        seeded.push((name, created, expires));
    }
    st.key_rng = key_rng;
    for (name, created, expires) in seeded {
        insert(&mut st, &name, "read", created, expires);
    }
    Inner {
        server: addr.to_string(),
        opaque: random_hex(&mut rand::rng(), 16),
        opts,
        state: Mutex::new(st),
    }
}

fn insert(
    st: &mut EmuState,
    name: &str,
    action: &str,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> EmulatedKey {
    insert_visible(st, name, action, created_at, expires_at, Instant::now())
}

fn insert_visible(
    st: &mut EmuState,
    name: &str,
    action: &str,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    visible_at: Instant,
) -> EmulatedKey {
    let visible_at = st
        .keys
        .last()
        .map_or(visible_at, |last| last.visible_at.max(visible_at));
    let id = loop {
        let id = format!("ak-{}", random_hex(&mut st.key_rng, 8));
        if !st.by_id.contains_key(&id) {
            break id;
        }
    };
    let key = EmulatedKey {
        id: id.clone(),
        name: name.to_string(),
        api_key: Secret::new(format!("sk_{}", random_hex(&mut st.key_rng, 16))),
        action: action.to_string(),
        created_at: trunc_secs(created_at),
        updated_at: trunc_secs(created_at),
        expires_at: expires_at.map(trunc_secs),
    };
    let seq = st.next_seq;
    st.next_seq += 1;
    st.by_id.insert(id, seq);
    st.keys.push(Stored {
        seq,
        visible_at,
        key: key.clone(),
    });
    key
}

impl common::Emulator for Inner {
    type Op = Operation;
    type Forced = ForcedFault;

    fn core<R>(&self, f: impl FnOnce(&mut Core<Operation, ForcedFault>) -> R) -> R {
        f(&mut self.lock().core)
    }

    fn keys_json(&self) -> Value {
        let st = self.lock();
        let keys: Vec<Value> = st.keys.iter().map(|s| s.key.admin_json()).collect();
        json!({ "keys": keys, "total": keys.len() })
    }

    fn insert_key_json(&self, body: &[u8]) -> Option<Result<Value, String>> {
        let req: InsertKey = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return Some(Err(e.to_string())),
        };
        let mut st = self.lock();
        let created = req.created_at.unwrap_or_else(now_secs);
        let expires = req.expires_at.or_else(|| {
            self.opts
                .lifetime
                .map(|l| created + chrono::Duration::seconds(l.as_secs() as i64))
        });
        let action = req.action.unwrap_or_else(|| "read".into());
        Some(Ok(
            insert(&mut st, &req.name, &action, created, expires).admin_json()
        ))
    }

    fn apply_faults(&self, f: Faults) -> Result<(), String> {
        common::refuse_flags(&f, "oceanbase", &["expire_nonces"])?;
        let mut st = self.lock();
        st.core.apply(&f)?;
        if f.expire_nonces {
            st.nonce_generation += 1;
        }
        Ok(())
    }
}

fn router(inner: Arc<Inner>) -> Router {
    common::admin_routes::<Inner>(Router::new())
        .route(API_PATH, any(api))
        .fallback(not_found)
        .with_state(inner)
}

// ---------------------------------------------------------------- the API

/// Serve one API request and add it to the request log.
async fn api(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let operation = match *req.method() {
        Method::GET => Some(Operation::List),
        Method::POST => Some(Operation::Create),
        Method::DELETE => Some(Operation::Delete),
        _ => None,
    };
    let page = (operation == Some(Operation::List)).then(|| {
        Query::<HashMap<String, String>>::try_from_uri(req.uri())
            .ok()
            .and_then(|Query(q)| page_number(q.get("pageNumber").map(String::as_str)).ok())
            .unwrap_or(1)
    });
    let resp = api_call(inner.clone(), req).await;
    if let Some(operation) = operation {
        let status = resp.status();
        let mut st = inner.lock();
        if !status.is_success() {
            st.core.count(&operation, |s| s.errors += 1);
        }
        st.core.log(operation, page, status.as_u16(), None);
    }
    resp
}

async fn api_call(inner: Arc<Inner>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let request_id = request_id(&parts.headers);
    let op = match parts.method {
        Method::GET => Operation::List,
        Method::POST => Operation::Create,
        Method::DELETE => Operation::Delete,
        _ => {
            let mut r = openapi_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "use GET, POST or DELETE",
                &request_id,
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
            return r;
        }
    };
    let latency = {
        let mut st = inner.lock();
        st.core.count(&op, |s| s.requests += 1);
        st.core.dials.latency()
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let body = match axum::body::to_bytes(body, MAX_REQUEST_BODY).await {
        Ok(b) => b,
        Err(_) => {
            inner.lock().core.count(&op, |s| s.rejected += 1);
            return openapi_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "INVALID_PARAMETER",
                "request body too large",
                &request_id,
            );
        }
    };
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| parts.uri.path().to_string());

    let mut st = inner.lock();
    let now = Instant::now();

    if let Err(wait) = st.core.dials.throttle(common::Op::name(&op)) {
        st.core.count(&op, |s| s.rate_limited += 1);
        let mut r = openapi_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_REQUESTS",
            "request rate limit exceeded",
            &request_id,
        );
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs(wait)),
        );
        return r;
    }

    match verify_digest(&inner, &mut st, &parts.method, &target, &parts.headers, now) {
        DigestCheck::Ok(alg) => match alg {
            DigestAlgorithm::Md5 => st.core.bump(AUTH_MD5),
            DigestAlgorithm::Sha256 => st.core.bump(AUTH_SHA256),
        },
        DigestCheck::Refused { stale, reason } => {
            tracing::debug!(operation = ?op, stale, reason, "oceanbase emulator: digest challenge");
            return challenge(&inner, &mut st, op, stale, &request_id, now);
        }
    }

    for (hdr, want, what) in [
        ("x-ob-org-id", &inner.opts.org_id, "organization"),
        ("x-ob-project-id", &inner.opts.project_id, "project"),
    ] {
        let got = parts
            .headers
            .get(hdr)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .unwrap_or("");
        if got.is_empty() {
            st.core.count(&op, |s| s.rejected += 1);
            let name = if hdr == "x-ob-org-id" {
                "X-OB-Org-Id"
            } else {
                "X-OB-Project-Id"
            };
            return openapi_error(
                StatusCode::BAD_REQUEST,
                "INVALID_PARAMETER",
                &format!("{name} header is required"),
                &request_id,
            );
        }
        if got != want.as_str() {
            st.core.count(&op, |s| s.rejected += 1);
            return openapi_error(
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                &format!("no access to {what} {got}"),
                &request_id,
            );
        }
    }

    if let Some(fault) = st.core.take_forced(&op) {
        st.core.count(&op, |s| s.faults += 1);
        return forced_response(&inner, &mut st, op, &fault, &request_id, now);
    }
    if st.core.dials.draw_error() {
        st.core.count(&op, |s| s.faults += 1);
        return openapi_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "E001R000",
            "Unknown Error",
            &request_id,
        );
    }

    let params: HashMap<String, String> = Query::try_from_uri(&parts.uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    let resp = match op {
        Operation::List => list(&inner, &st, &params, &parts.headers, &request_id),
        Operation::Create => create(&inner, &mut st, &body, &request_id),
        Operation::Delete => delete(&inner, &mut st, &params, &request_id),
    };
    if resp.status().is_success() {
        st.core.count(&op, |s| s.ok += 1);
    } else {
        st.core.count(&op, |s| s.rejected += 1);
    }
    resp
}

/// `pageSize` as the API applies it: default 10, over 100 becomes 20.
pub fn effective_page_size(raw: Option<&str>) -> Result<usize, String> {
    match raw.map(str::trim) {
        None | Some("") => Ok(DEFAULT_PAGE_SIZE),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n < 1 => Err(format!("pageSize must be at least 1, got {n}")),
            Ok(n) if n as u64 > MAX_PAGE_SIZE as u64 => Ok(OVERSIZE_PAGE_SIZE),
            Ok(n) => Ok(n as usize),
            Err(_) => Err(format!("pageSize must be an integer, got {s:?}")),
        },
    }
}

fn page_number(raw: Option<&str>) -> Result<usize, String> {
    match raw.map(str::trim) {
        None | Some("") => Ok(1),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n >= 1 => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
            Ok(n) => Err(format!("pageNumber starts from 1, got {n}")),
            Err(_) => Err(format!("pageNumber must be an integer, got {s:?}")),
        },
    }
}

fn list(
    inner: &Inner,
    st: &EmuState,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    request_id: &str,
) -> Response {
    let size = match effective_page_size(params.get("pageSize").map(String::as_str)) {
        Ok(s) => s,
        Err(m) => {
            return openapi_error(StatusCode::BAD_REQUEST, "INVALID_PARAMETER", &m, request_id);
        }
    };
    let page = match page_number(params.get("pageNumber").map(String::as_str)) {
        Ok(p) => p,
        Err(m) => {
            return openapi_error(StatusCode::BAD_REQUEST, "INVALID_PARAMETER", &m, request_id);
        }
    };
    let action = params
        .get("Action")
        .cloned()
        .or_else(|| {
            headers
                .get("Action")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| LIST_ACTION.to_string());
    let now = Instant::now();
    let len = st.keys.partition_point(|s| s.visible_at <= now);
    let start = (page - 1).saturating_mul(size).min(len);
    let end = start.saturating_add(size).min(len);
    let items: Vec<Value> = match inner.opts.list_order {
        ListOrder::Oldest => st.keys[start..end]
            .iter()
            .map(|s| s.key.list_json())
            .collect(),
        ListOrder::Newest => st.keys[len - end..len - start]
            .iter()
            .rev()
            .map(|s| s.key.list_json())
            .collect(),
    };
    json_response(
        StatusCode::OK,
        json!({
            "action": action,
            "data": { "list": items, "total": len },
            "requestId": request_id,
            "server": inner.server,
            "success": true,
        }),
    )
}

fn create(inner: &Inner, st: &mut EmuState, body: &[u8], request_id: &str) -> Response {
    let parsed: Option<serde_json::Map<String, Value>> = serde_json::from_slice(body).ok();
    let Some(obj) = parsed else {
        return openapi_error(
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER",
            "request body must be a JSON object",
            request_id,
        );
    };
    let field = |k: &str| {
        obj.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let (Some(name), Some(action)) = (field("name"), field("action")) else {
        return openapi_error(
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER",
            "name and action are required strings",
            request_id,
        );
    };
    let now = now_secs();
    let expires = inner
        .opts
        .lifetime
        .map(|l| now + chrono::Duration::seconds(l.as_secs() as i64));
    let visible_at = Instant::now() + inner.opts.list_delay;
    let key = insert_visible(st, &name, &action, now, expires, visible_at);
    json_response(
        StatusCode::OK,
        json!({
            "data": {
                "apiKey": key.api_key.expose(),
                "name": key.name,
                "createdAt": ts(key.created_at),
            },
            "requestId": request_id,
            "server": inner.server,
            "success": true,
        }),
    )
}

fn delete(
    inner: &Inner,
    st: &mut EmuState,
    params: &HashMap<String, String>,
    request_id: &str,
) -> Response {
    let Some(id) = params.get("id").map(|s| s.trim()).filter(|s| !s.is_empty()) else {
        return openapi_error(
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER",
            "id is required",
            request_id,
        );
    };
    let Some(seq) = st.by_id.remove(id) else {
        return openapi_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("API key {id} not found"),
            request_id,
        );
    };
    if let Ok(pos) = st.keys.binary_search_by_key(&seq, |s| s.seq) {
        st.keys.remove(pos);
    }
    json_response(
        StatusCode::OK,
        json!({
            "action": DELETE_ACTION,
            "data": {},
            "error": {},
            "message": "success",
            "requestId": request_id,
            "server": inner.server,
            "success": true,
        }),
    )
}

fn forced_response(
    inner: &Inner,
    st: &mut EmuState,
    op: Operation,
    fault: &ForcedFault,
    request_id: &str,
    now: Instant,
) -> Response {
    let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status == StatusCode::UNAUTHORIZED {
        return challenge(inner, st, op, false, request_id, now);
    }
    let server_error = status.is_server_error();
    let code = fault.code.clone().unwrap_or_else(|| {
        if server_error {
            "E001R000"
        } else {
            "INJECTED_FAULT"
        }
        .to_string()
    });
    let message = fault.message.clone().unwrap_or_else(|| {
        if server_error {
            "Unknown Error"
        } else {
            "injected fault"
        }
        .to_string()
    });
    let mut r = match fault.style {
        ErrorStyle::OpenApi => openapi_error(status, &code, &message, request_id),
        ErrorStyle::Maas => {
            let action = match op {
                Operation::List => LIST_ACTION,
                Operation::Create => CREATE_ACTION,
                Operation::Delete => DELETE_ACTION,
            };
            json_response(
                status,
                json!({
                    "action": action,
                    "data": {},
                    "error": { "code": code, "message": message },
                    "message": message,
                    "requestId": request_id,
                    "server": inner.server,
                    "success": false,
                }),
            )
        }
    };
    if status == StatusCode::TOO_MANY_REQUESTS {
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(fault.retry_after.unwrap_or(1)),
        );
    }
    r
}

// ------------------------------------------------------------ Digest auth

enum DigestCheck {
    Ok(DigestAlgorithm),
    Refused { stale: bool, reason: &'static str },
}

fn refused(reason: &'static str) -> DigestCheck {
    DigestCheck::Refused {
        stale: false,
        reason,
    }
}

/// Check an `Authorization: Digest …` header against RFC 7616 with
/// `qop=auth`, then the nonce's age and `nc` replay.
fn verify_digest(
    inner: &Inner,
    st: &mut EmuState,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    now: Instant,
) -> DigestCheck {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return refused("no Authorization header");
    };
    let Ok(value) = value.to_str() else {
        return refused("Authorization header is not ASCII");
    };
    let value = value.trim_start();
    let Some(rest) = value
        .get(..6)
        .filter(|s| s.eq_ignore_ascii_case("digest"))
        .map(|_| &value[6..])
    else {
        return refused("Authorization scheme is not Digest");
    };
    let Ok(p) = parse_auth_params(rest) else {
        return refused("malformed Digest parameters");
    };
    let get = |k: &str| p.get(k).map(String::as_str);
    let (Some(username), Some(realm), Some(nonce), Some(uri), Some(response)) = (
        get("username"),
        get("realm"),
        get("nonce"),
        get("uri"),
        get("response"),
    ) else {
        return refused("missing Digest parameter");
    };
    if !inner.opts.digest_qop {
        return verify_rfc2069(inner, st, method, target, &p, now);
    }
    let (Some(qop), Some(nc_hex), Some(cnonce)) = (get("qop"), get("nc"), get("cnonce")) else {
        return refused("qop=auth with nc and cnonce is required");
    };
    let alg = match get("algorithm") {
        None => DigestAlgorithm::Md5,
        Some(a) => match DigestAlgorithm::parse(a) {
            Some(a) => a,
            None => return refused("unsupported algorithm"),
        },
    };
    if !inner.opts.algorithms.contains(&alg) {
        return refused("algorithm not offered");
    }
    if qop != "auth" {
        return refused("qop must be auth");
    }
    if nc_hex.len() != 8 {
        return refused("nc must be 8 hex digits");
    }
    let Ok(nc) = u32::from_str_radix(nc_hex, 16) else {
        return refused("nc must be 8 hex digits");
    };
    if get("userhash").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return refused("userhash is not offered");
    }
    if username != inner.opts.access_key_id || realm != REALM {
        return refused("unknown user or realm");
    }
    if uri != target {
        return refused("uri does not match the request");
    }
    if get("opaque") != Some(inner.opaque.as_str()) {
        return refused("opaque does not match");
    }
    let expected = digest_response(
        alg,
        username,
        REALM,
        inner.opts.access_key_secret.expose(),
        method.as_str(),
        uri,
        nonce,
        nc_hex,
        cnonce,
    );
    if !constant_time_eq(
        expected.as_bytes(),
        response.to_ascii_lowercase().as_bytes(),
    ) {
        return refused("wrong response");
    }
    // The response is right; only now does the nonce's age matter, so that
    // `stale=true` means "your credentials are fine, take a fresh nonce".
    let generation = st.nonce_generation;
    let Some(ns) = st.nonces.get_mut(nonce) else {
        return refused("unknown nonce");
    };
    if ns.generation < generation || now.saturating_duration_since(ns.issued) > inner.opts.nonce_ttl
    {
        return DigestCheck::Refused {
            stale: true,
            reason: "stale nonce",
        };
    }
    if !ns.seen.insert(nc) {
        return refused("nc reused");
    }
    DigestCheck::Ok(alg)
}

/// An RFC 2069 answer (the challenge offered no `qop`): no `qop`, `nc` or
/// `cnonce` allowed; `response = H(H(user:realm:pass):nonce:H(method:uri))`.
/// Without `nc` a nonce cannot be checked for replay; it is good until
/// `nonce_ttl`.
fn verify_rfc2069(
    inner: &Inner,
    st: &mut EmuState,
    method: &Method,
    target: &str,
    p: &HashMap<String, String>,
    now: Instant,
) -> DigestCheck {
    let get = |k: &str| p.get(k).map(String::as_str);
    let (Some(username), Some(realm), Some(nonce), Some(uri), Some(response)) = (
        get("username"),
        get("realm"),
        get("nonce"),
        get("uri"),
        get("response"),
    ) else {
        return refused("missing Digest parameter");
    };
    if get("qop").is_some() || get("nc").is_some() || get("cnonce").is_some() {
        return refused("qop was not offered");
    }
    let alg = match get("algorithm") {
        None => DigestAlgorithm::Md5,
        Some(a) => match DigestAlgorithm::parse(a) {
            Some(a) => a,
            None => return refused("unsupported algorithm"),
        },
    };
    if !inner.opts.algorithms.contains(&alg) {
        return refused("algorithm not offered");
    }
    if username != inner.opts.access_key_id || realm != REALM || uri != target {
        return refused("unknown user or realm, or uri does not match the request");
    }
    if get("opaque") != Some(inner.opaque.as_str()) {
        return refused("opaque does not match");
    }
    let ha1 = alg.hash(&format!(
        "{username}:{REALM}:{}",
        inner.opts.access_key_secret.expose()
    ));
    let ha2 = alg.hash(&format!("{}:{uri}", method.as_str()));
    let expected = alg.hash(&format!("{ha1}:{nonce}:{ha2}"));
    if !constant_time_eq(
        expected.as_bytes(),
        response.to_ascii_lowercase().as_bytes(),
    ) {
        return refused("wrong response");
    }
    let generation = st.nonce_generation;
    let Some(ns) = st.nonces.get(nonce) else {
        return refused("unknown nonce");
    };
    if ns.generation < generation || now.saturating_duration_since(ns.issued) > inner.opts.nonce_ttl
    {
        return DigestCheck::Refused {
            stale: true,
            reason: "stale nonce",
        };
    }
    DigestCheck::Ok(alg)
}

/// RFC 7616 §3.4.1 with `qop=auth` and a non-session algorithm:
/// `H(H(user:realm:pass):nonce:nc:cnonce:auth:H(method:uri))`.
#[allow(clippy::too_many_arguments)]
pub fn digest_response(
    alg: DigestAlgorithm,
    username: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    nc: &str,
    cnonce: &str,
) -> String {
    let ha1 = alg.hash(&format!("{username}:{realm}:{password}"));
    let ha2 = alg.hash(&format!("{method}:{uri}"));
    alg.hash(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parse `k=v, k="quoted \" value", …` (RFC 7235 auth-params). Keys are
/// lower-cased; a repeated key is an error.
pub fn parse_auth_params(s: &str) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars
            .peek()
            .is_some_and(|c| c.is_ascii_whitespace() || *c == ',')
        {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_ascii_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') || key.is_empty() {
            return Err(format!("expected key=value near {key:?}"));
        }
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted value for {key}")),
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(format!("unterminated quoted value for {key}")),
                    },
                    Some('"') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_ascii_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
        match chars.peek() {
            None | Some(',') => {}
            Some(_) => return Err(format!("expected a comma after {key}")),
        }
        if out.insert(key.to_ascii_lowercase(), value).is_some() {
            return Err(format!("repeated parameter {key}"));
        }
    }
}

fn challenge(
    inner: &Inner,
    st: &mut EmuState,
    op: Operation,
    stale: bool,
    request_id: &str,
    now: Instant,
) -> Response {
    st.core.count(&op, |s| {
        s.challenged += 1;
        s.auth_failures += 1;
        if stale {
            s.stale += 1;
        }
    });
    if st.nonces.len() >= NONCE_PRUNE_AT {
        let keep_for = inner.opts.nonce_ttl * 2;
        let generation = st.nonce_generation;
        st.nonces.retain(|_, n| {
            n.generation == generation && now.saturating_duration_since(n.issued) <= keep_for
        });
        if st.nonces.len() >= NONCE_PRUNE_AT {
            st.nonces.clear();
        }
    }
    let nonce = random_hex(&mut rand::rng(), 16);
    st.nonces.insert(
        nonce.clone(),
        NonceState {
            issued: now,
            generation: st.nonce_generation,
            seen: HashSet::new(),
        },
    );
    let (code, message) = if stale {
        ("UNAUTHORIZED", "nonce expired")
    } else {
        ("UNAUTHORIZED", "Digest authentication required")
    };
    let mut r = openapi_error(StatusCode::UNAUTHORIZED, code, message, request_id);
    for alg in &inner.opts.algorithms {
        let qop = if inner.opts.digest_qop {
            "qop=\"auth\", "
        } else {
            ""
        };
        let mut v = format!(
            "Digest realm=\"{REALM}\", {qop}nonce=\"{nonce}\", opaque=\"{}\", algorithm={}",
            inner.opaque,
            alg.as_str()
        );
        if stale {
            v.push_str(", stale=true");
        }
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().append(header::WWW_AUTHENTICATE, v);
        }
    }
    r
}

// -------------------------------------------------------------- admin API

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InsertKey {
    name: String,
    #[serde(default, rename = "createdAt")]
    created_at: Option<DateTime<Utc>>,
    #[serde(default, rename = "expiresAt")]
    expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    action: Option<String>,
}

async fn not_found(req: Request) -> Response {
    let rid = request_id(req.headers());
    openapi_error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        &format!("no route for {}", req.uri().path()),
        &rid,
    )
}

// ---------------------------------------------------------------- helpers

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .or_else(|| headers.get("requestId"))
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn openapi_error(status: StatusCode, code: &str, message: &str, request_id: &str) -> Response {
    json_response(
        status,
        json!({
            "success": false,
            "errorCode": code,
            "errorMessage": message,
            "requestId": request_id,
        }),
    )
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn trunc_secs(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

fn now_secs() -> DateTime<Utc> {
    trunc_secs(Utc::now())
}

fn random_hex(rng: &mut impl Rng, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rng.fill(&mut buf[..]);
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7616 §3.9.1: the same request answered with MD5 and SHA-256.
    const RFC_USER: &str = "Mufasa";
    const RFC_PASS: &str = "Circle of Life";
    const RFC_REALM: &str = "http-auth@example.org";
    const RFC_NONCE: &str = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    const RFC_CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    #[test]
    fn digest_response_matches_the_rfc_7616_md5_example() {
        let r = digest_response(
            DigestAlgorithm::Md5,
            RFC_USER,
            RFC_REALM,
            RFC_PASS,
            "GET",
            "/dir/index.html",
            RFC_NONCE,
            "00000001",
            RFC_CNONCE,
        );
        assert_eq!(r, "8ca523f5e9506fed4657c9700eebdbec");
    }

    #[test]
    fn digest_response_matches_the_rfc_7616_sha256_example() {
        let r = digest_response(
            DigestAlgorithm::Sha256,
            RFC_USER,
            RFC_REALM,
            RFC_PASS,
            "GET",
            "/dir/index.html",
            RFC_NONCE,
            "00000001",
            RFC_CNONCE,
        );
        assert_eq!(
            r,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    #[test]
    fn auth_params_parse_quoted_and_plain_values() {
        let p = parse_auth_params(
            r#"username="Mufasa", realm="a \"q\", b", qop=auth, nc=00000001 ,algorithm=SHA-256"#,
        )
        .unwrap();
        assert_eq!(p["username"], "Mufasa");
        assert_eq!(p["realm"], r#"a "q", b"#);
        assert_eq!(p["qop"], "auth");
        assert_eq!(p["nc"], "00000001");
        assert_eq!(p["algorithm"], "SHA-256");
    }

    #[test]
    fn auth_params_reject_garbage_and_repeats() {
        assert!(parse_auth_params(r#"username="open"#).is_err());
        assert!(parse_auth_params("a=1, a=2").is_err());
        assert!(parse_auth_params("novalue").is_err());
        assert!(parse_auth_params(r#"a="x" b=2"#).is_err());
        assert!(parse_auth_params("").unwrap().is_empty());
    }

    #[test]
    fn page_size_follows_the_documented_quirk() {
        assert_eq!(effective_page_size(None), Ok(10));
        assert_eq!(effective_page_size(Some("1")), Ok(1));
        assert_eq!(effective_page_size(Some("100")), Ok(100));
        assert_eq!(effective_page_size(Some("101")), Ok(20));
        assert_eq!(effective_page_size(Some("100000000000")), Ok(20));
        assert!(effective_page_size(Some("0")).is_err());
        assert!(effective_page_size(Some("ten")).is_err());
        assert_eq!(page_number(None), Ok(1));
        assert!(page_number(Some("0")).is_err());
    }

    #[test]
    fn algorithms_parse_case_insensitively() {
        assert_eq!(DigestAlgorithm::parse("md5"), Some(DigestAlgorithm::Md5));
        assert_eq!(
            DigestAlgorithm::parse("SHA-256"),
            Some(DigestAlgorithm::Sha256)
        );
        assert_eq!(
            DigestAlgorithm::parse("sha256"),
            Some(DigestAlgorithm::Sha256)
        );
        assert_eq!(DigestAlgorithm::parse("SHA-512-256"), None);
    }

    fn inner_with(opts: OceanBaseEmulatorOptions) -> Inner {
        new_inner(opts, "127.0.0.1:1".parse().unwrap())
    }

    #[test]
    fn seeded_keys_are_deterministic_for_a_seed() {
        let opts = OceanBaseEmulatorOptions {
            keys: 50,
            expiring: 5,
            seed: Some(7),
            ..Default::default()
        };
        let a = inner_with(opts.clone());
        let b = inner_with(opts);
        let ids = |i: &Inner| {
            i.lock()
                .keys
                .iter()
                .map(|s| (s.key.id.clone(), s.key.name.clone(), s.key.api_key.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&a), ids(&b));
        assert_eq!(a.lock().keys[0].key.name, "app-00001");
    }

    #[test]
    fn expiring_keys_expire_within_the_window() {
        let opts = OceanBaseEmulatorOptions {
            keys: 40,
            expiring: 6,
            within: Duration::from_secs(3600),
            seed: Some(1),
            ..Default::default()
        };
        let inner = inner_with(opts);
        let now = Utc::now();
        let st = inner.lock();
        let soon = st
            .keys
            .iter()
            .filter(|s| s.key.expires_at.unwrap() <= now + chrono::Duration::seconds(3601))
            .count();
        assert_eq!(soon, 6);
    }

    #[test]
    fn forced_faults_need_a_plausible_status() {
        let inner = inner_with(OceanBaseEmulatorOptions::default());
        let bad = Faults {
            force: vec![ForcedFault {
                operation: Operation::List,
                status: 99,
                count: 1,
                style: ErrorStyle::OpenApi,
                code: None,
                message: None,
                retry_after: None,
            }],
            ..Default::default()
        };
        use common::Emulator;
        assert!(inner.apply_faults(bad).is_err());
        assert!(
            inner
                .apply_faults(Faults {
                    error_rate: Some(1.5),
                    ..Default::default()
                })
                .is_err()
        );
        assert!(
            inner
                .apply_faults(Faults {
                    expire_tokens: true,
                    ..Default::default()
                })
                .is_err(),
            "a Huawei flag is refused, not ignored"
        );
        assert!(inner.lock().core.forced.is_empty(), "nothing half-applied");
    }

    #[test]
    fn faults_json_takes_humantime_latency() {
        let f: Faults = serde_json::from_str(
            r#"{"latency":"20ms","force":[{"operation":"delete","status":403,"count":2}]}"#,
        )
        .unwrap();
        assert_eq!(f.latency, Some(Duration::from_millis(20)));
        assert_eq!(f.force[0].operation, Operation::Delete);
        assert_eq!(f.force[0].count, 2);
        assert!(serde_json::from_str::<Faults>(r#"{"bogus":1}"#).is_err());
    }

    #[test]
    fn emulated_key_debug_redacts_the_secret() {
        let inner = inner_with(OceanBaseEmulatorOptions {
            keys: 1,
            ..Default::default()
        });
        let k = inner.lock().keys[0].key.clone();
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(k.api_key.expose()), "{dbg}");
        assert!(!format!("{:?}", inner.opts).contains(DEFAULT_ACCESS_KEY_SECRET));
    }
}
