//! OceanBase Cloud MaaS API keys (seeds `oceanbase-maas-*.txt`, PROTOCOLS.md
//! §4): list, create and delete on `/api/v2/maas/apikeys`, authenticated with
//! HTTP Digest (RFC 7616) using the AccessKey pair.
//!
//! - **Digest.** The first call goes out bare, takes the 401 challenge
//!   (SHA-256 preferred over MD5; `qop="auth"` preferred, an RFC 2069
//!   challenge without `qop` accepted as `curl --digest` does) and answers it. The
//!   challenge is kept, so later calls send `Authorization` pre-emptively
//!   with `nc` counting up on the same nonce: one request per call. A 401
//!   (stale nonce, or a nonce the server forgot) is re-challenged once; a
//!   second 401 is an `Auth` error. Neither the header value nor the digest
//!   response is ever logged; the header is marked sensitive.
//! - **List** walks `pageNumber=1,2,…` with `pageSize=100` (the API turns
//!   anything above 100 into 20) until `total` items were seen or a page is
//!   empty, dedupes by id, and applies the name filter page by page, so
//!   memory holds only kept keys.
//! - **Create** sends `{name, action}`; the key value comes back once, as
//!   `data.apiKey`, and goes straight into `SecretFields` (`api_key`). The
//!   response has no id, so the `NewKey` has `id: None` and create makes no
//!   other call: the engine finds the id by its unique name in a walk shared
//!   with every other consumer of the account (`listing::Walks`), so the
//!   lookups of many fresh creates cost one walk, not one each.
//! - **Delete** sends `?id=`; a 404 with a JSON body, or an error envelope
//!   whose code or message says "not found", is `DeleteOutcome::NotFound`.
//! - **Errors.** Both documented failure envelopes (`errorCode` /
//!   `errorMessage`, and `message` / `error`) become typed errors carrying
//!   the server's `requestId` (else the `X-Request-Id` we sent): 429 →
//!   `RateLimited` (with `Retry-After`), 401/403 → `Auth`, 5xx → `Api`
//!   (retryable), other 4xx and `success:false` → `Api` (permanent).
//!   Response bodies are never quoted into errors, and JSON shape errors name
//!   only a line and column, so a secret in a body cannot reach a message.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use digest_auth::{AlgorithmType, AuthContext, HttpMethod, Qop, WwwAuthenticateHeader};
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroizing;

use super::http::{HttpResponse, ProviderHttp, retry_after};
use super::listing::KeyTable;
use super::{
    BuildError, Capabilities, CreateRequest, DeleteOutcome, NewKey, Provider, ProviderError,
    ProviderErrorKind, ProviderKey,
};
use crate::config::raw::{RawSecretRef, S};
use crate::config::validate::{ProviderCx, ProviderSpec};
use crate::config::{Credential, ProviderAccount, ProviderConfig, ProviderKind, SecretRef};
use crate::secret::{Secret, SecretFields};

/// The one path of the API-key API; the method picks the operation.
pub const API_PATH: &str = "/api/v2/maas/apikeys";
/// Page size asked for: the documented maximum. Larger values are silently
/// turned into 20 by the API, so never ask for more.
pub const PAGE_SIZE: u32 = 100;

/// Pages requested ahead of the one being processed during a scan.
pub const READ_AHEAD: usize = 4;
/// The `SecretFields` name of the new key's value.
pub const SECRET_FIELD: &str = "api_key";
/// Pages walked before giving up on a list that never ends (10 million keys).
const MAX_PAGES: u32 = 100_000;
/// Longest server message carried into an error.
const MAX_MESSAGE: usize = 300;

/// An OceanBase Cloud MaaS account (one org and project).
pub struct OceanBaseProvider {
    /// Rate limit, timeout, body cap, request ids and metrics for every call.
    http: ProviderHttp,
    /// Sent as `X-OB-Org-Id` on every call (required by the API).
    org_id: String,
    /// Sent as `X-OB-Project-Id` on every call (required by the API).
    project_id: String,
    /// The Digest username. Not a password, but kept out of logs all the same.
    access_key_id: Secret,
    /// The Digest password.
    access_key_secret: Secret,
    /// The last Digest challenge, answered pre-emptively by later calls with
    /// `nc` counting up, so a steady state costs one request per call. Held
    /// only while building a header, never across an await.
    challenge: Mutex<Option<WwwAuthenticateHeader>>,
}

impl std::fmt::Debug for OceanBaseProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OceanBaseProvider")
            .field("name", &self.http.provider)
            .field("endpoint", &self.http.endpoint)
            .field("org_id", &self.org_id)
            .field("project_id", &self.project_id)
            .finish_non_exhaustive()
    }
}

impl OceanBaseProvider {
    /// Build from a validated `kind = "oceanbase"` provider config, resolving
    /// the AccessKey references now. `http` is usually
    /// `ProviderHttp::new(cfg, metrics)`; tests pass one with a smaller body
    /// cap.
    pub fn new(cfg: &ProviderConfig, http: ProviderHttp) -> Result<Self, BuildError> {
        let ProviderKind::OceanBase(OceanBaseConfig {
            org_id,
            project_id,
            access_key_id,
            access_key_secret,
        }) = &cfg.kind
        else {
            return Err(BuildError(format!(
                "provider {}: kind {} is not oceanbase",
                cfg.name,
                cfg.kind.as_str()
            )));
        };
        let resolve = |r: &crate::config::SecretRef, what: &str| {
            r.resolve_now()
                .map_err(|e| BuildError(format!("provider {}: {what}: {e}", cfg.name)))
        };
        let access_key_id = resolve(access_key_id, "access_key_id")?;
        let access_key_secret = resolve(access_key_secret, "access_key_secret")?;
        for (what, v) in [("org_id", org_id), ("project_id", project_id)] {
            if v.is_empty() || HeaderValue::from_str(v).is_err() {
                return Err(BuildError(format!(
                    "provider {}: {what} {v:?} cannot be sent as an HTTP header",
                    cfg.name
                )));
            }
        }
        Url::parse(&http.url(API_PATH)).map_err(|e| {
            BuildError(format!(
                "provider {}: endpoint {} is not a URL: {e}",
                cfg.name, http.endpoint
            ))
        })?;
        Ok(OceanBaseProvider {
            http,
            org_id: org_id.clone(),
            project_id: project_id.clone(),
            access_key_id,
            access_key_secret,
            challenge: Mutex::new(None),
        })
    }

    fn url(&self, operation: &'static str, query: &[(&str, &str)]) -> Result<Url, ProviderError> {
        let mut url = Url::parse(&self.http.url(API_PATH)).map_err(|e| {
            self.http.error(
                operation,
                ProviderErrorKind::Invalid(format!("endpoint is not a URL: {e}")),
            )
        })?;
        if !query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        Ok(url)
    }

    fn cached_challenge(&self) -> MutexGuard<'_, Option<WwwAuthenticateHeader>> {
        // The guarded value is replaced whole; a poisoned lock holds a
        // usable (at worst stale) challenge.
        self.challenge.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Authorization` for the cached challenge (nc + 1), if there is one.
    fn authorization(
        &self,
        operation: &'static str,
        method: &Method,
        target: &str,
    ) -> Result<Option<HeaderValue>, ProviderError> {
        let mut guard = self.cached_challenge();
        let Some(challenge) = guard.as_mut() else {
            return Ok(None);
        };
        let ctx = AuthContext::new_with_method(
            self.access_key_id.expose(),
            self.access_key_secret.expose(),
            target,
            Option::<&[u8]>::None,
            HttpMethod::from(method.as_str()),
        );
        let answer = challenge.respond(&ctx).map_err(|e| {
            // The crate's errors quote the challenge, never the credentials.
            self.http.error(
                operation,
                ProviderErrorKind::Auth(format!("cannot answer the Digest challenge: {e}")),
            )
        })?;
        let text = Zeroizing::new(answer.to_header_string());
        let mut value = HeaderValue::from_str(&text).map_err(|_| {
            self.http.error(
                operation,
                ProviderErrorKind::Invalid(
                    "the access key id cannot be sent in an HTTP header".into(),
                ),
            )
        })?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    /// One API call with Digest auth: pre-emptive when a challenge is
    /// cached, re-challenged once on 401.
    async fn call(
        &self,
        operation: &'static str,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
    ) -> Result<HttpResponse, ProviderError> {
        let target = request_target(&url);
        let mut rechallenged = false;
        loop {
            let auth = self.authorization(operation, &method, &target)?;
            let mut req = self
                .http
                .client
                .request(method.clone(), url.clone())
                .header("X-OB-Org-Id", &self.org_id)
                .header("X-OB-Project-Id", &self.project_id)
                .header(ACCEPT, "application/json");
            if let Some(a) = auth {
                req = req.header(AUTHORIZATION, a);
            }
            if let Some(b) = &body {
                req = req.header(CONTENT_TYPE, "application/json").body(b.clone());
            }
            let resp = self.http.send(operation, req).await?;
            if resp.status != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let request_id = server_request_id(&resp.body).unwrap_or(resp.request_id.clone());
            if rechallenged {
                return Err(self
                    .http
                    .error(
                        operation,
                        ProviderErrorKind::Auth(
                            "HTTP 401: the Digest response to a fresh challenge was refused \
                             (check access_key_id and access_key_secret)"
                                .into(),
                        ),
                    )
                    .with_request_id(Some(request_id)));
            }
            match pick_challenge(&resp.headers) {
                Ok(challenge) => {
                    tracing::debug!(
                        provider = %self.http.provider,
                        operation,
                        request_id = %resp.request_id,
                        stale = challenge.stale,
                        algorithm = %challenge.algorithm,
                        "digest challenge received"
                    );
                    *self.cached_challenge() = Some(challenge);
                    rechallenged = true;
                }
                Err(reason) => {
                    return Err(self
                        .http
                        .error(
                            operation,
                            ProviderErrorKind::Auth(format!(
                                "HTTP 401 without a usable Digest challenge: {reason}"
                            )),
                        )
                        .with_request_id(Some(request_id)));
                }
            }
        }
    }

    /// Walk every list page, handing each listed key to `visit` until it
    /// breaks. `operation` names the calls in metrics and errors.
    /// Walk every page in order, handing each key to `visit` as its page
    /// arrives. Once the first page gives the total, up to
    /// [`READ_AHEAD`] further pages are requested ahead (each through the
    /// rate limiter), so a large scan costs about `pages × latency ÷
    /// READ_AHEAD` rather than `pages × latency`; pages are still processed
    /// strictly in order and memory holds at most that many pages.
    async fn walk<F>(&self, operation: &'static str, mut visit: F) -> Result<(), ProviderError>
    where
        F: FnMut(RawKey) -> Result<ControlFlow<()>, String> + Send,
    {
        use futures_util::StreamExt;
        use futures_util::stream::FuturesOrdered;

        let size = PAGE_SIZE.to_string();
        let fetch = |page: u32| {
            let size = size.clone();
            async move {
                let number = page.to_string();
                let url = self.url(operation, &[("pageNumber", &number), ("pageSize", &size)])?;
                let resp = self.call(operation, Method::GET, url, None).await?;
                Ok::<_, ProviderError>((page, resp))
            }
        };
        let mut seen: u64 = 0;
        let mut in_flight = FuturesOrdered::new();
        in_flight.push_back(fetch(1));
        let mut next_page: u32 = 2;
        // Known after the first page: the last page worth asking for.
        let mut last_page: Option<u32> = None;
        while let Some(result) = in_flight.next().await {
            let (page, resp) = result?;
            if !resp.status.is_success() {
                return Err(failure(&self.http.provider, operation, &resp));
            }
            let parsed = parse_list_page(&resp.body)
                .map_err(|m| self.protocol(operation, &resp, format!("list page {page}: {m}")))?;
            let Some(page_data) = parsed else {
                return Err(failure(&self.http.provider, operation, &resp));
            };
            let n = page_data.list.len() as u64;
            tracing::debug!(
                provider = %self.http.provider,
                operation,
                request_id = %resp.request_id,
                page,
                items = n,
                total = ?page_data.total,
                "listed page"
            );
            if n == 0 {
                return Ok(());
            }
            seen += n;
            for raw in page_data.list {
                match visit(raw) {
                    Ok(ControlFlow::Continue(())) => {}
                    Ok(ControlFlow::Break(())) => return Ok(()),
                    Err(m) => {
                        return Err(self.protocol(
                            operation,
                            &resp,
                            format!("list page {page}: {m}"),
                        ));
                    }
                }
            }
            let done = match page_data.total {
                Some(total) => seen >= total,
                // Without a total, a short page is the last one.
                None => n < u64::from(PAGE_SIZE),
            };
            if done {
                return Ok(());
            }
            if last_page.is_none() {
                last_page = Some(match page_data.total {
                    Some(total) => u32::try_from(total.div_ceil(u64::from(PAGE_SIZE)))
                        .unwrap_or(MAX_PAGES)
                        .clamp(1, MAX_PAGES),
                    // No total: one page at a time.
                    None => 0,
                });
            }
            let ahead = if last_page == Some(0) { 1 } else { READ_AHEAD };
            // Keep the window full; past the expected last page (keys added
            // meanwhile) go on one page at a time until a short page.
            while in_flight.len() < ahead && next_page <= MAX_PAGES {
                if let Some(last) = last_page
                    && last > 0
                    && next_page > last
                    && !in_flight.is_empty()
                {
                    break;
                }
                in_flight.push_back(fetch(next_page));
                next_page += 1;
            }
        }
        Err(self.http.error(
            operation,
            ProviderErrorKind::Protocol(format!(
                "the key list did not end after {MAX_PAGES} pages"
            )),
        ))
    }

    fn protocol(&self, operation: &'static str, resp: &HttpResponse, m: String) -> ProviderError {
        self.http
            .error(operation, ProviderErrorKind::Protocol(m))
            .with_request_id(Some(resp.request_id.clone()))
    }
}

#[async_trait]
impl Provider for OceanBaseProvider {
    fn name(&self) -> &str {
        &self.http.provider
    }

    fn kind(&self) -> &'static str {
        "oceanbase"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            can_list: true,
            can_delete: true,
            disable_before_delete: false,
            has_expiry: true,
            returns_id_on_create: false,
        }
    }

    async fn list(
        &self,
        keep: &(dyn for<'n> Fn(&'n str) -> bool + Send + Sync),
    ) -> Result<Vec<ProviderKey>, ProviderError> {
        // A key repeated by offset paging is listed once (the first
        // occurrence): `into_keys` drops repeats.
        let mut table = KeyTable::default();
        self.list_into(keep, &mut table).await?;
        Ok(table.into_keys())
    }

    /// Each page's kept keys go straight into `into` (their id and name
    /// bytes and a fixed-size row): a walk never holds a `ProviderKey` per
    /// key.
    async fn list_into(
        &self,
        keep: &(dyn for<'n> Fn(&'n str) -> bool + Send + Sync),
        into: &mut KeyTable,
    ) -> Result<(), ProviderError> {
        self.walk("list", |raw| {
            if keep(&raw.name) {
                raw.push_into(into);
            }
            Ok(ControlFlow::Continue(()))
        })
        .await
    }

    async fn create(&self, req: &CreateRequest<'_>) -> Result<NewKey, ProviderError> {
        let op = "create";
        let action = req
            .params
            .get("action")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                self.http.error(
                    op,
                    ProviderErrorKind::Invalid(
                        "create parameter `action` (a string such as \"read\") is required".into(),
                    ),
                )
            })?;
        let body = serde_json::to_vec(&serde_json::json!({ "name": req.name, "action": action }))
            .map_err(|e| {
            self.http
                .error(op, ProviderErrorKind::Invalid(e.to_string()))
        })?;
        let url = self.url(op, &[])?;
        let resp = self.call(op, Method::POST, url, Some(body)).await?;
        if !resp.status.is_success() {
            return Err(failure(&self.http.provider, op, &resp));
        }
        let HttpResponse {
            status,
            headers,
            body,
            request_id,
        } = resp;
        // The body of a successful create holds the new key: wipe it once
        // parsed.
        let body = Zeroizing::new(body);
        let created = match parse_create(&body) {
            Ok(CreateOutcome::Created(c)) => c,
            Ok(CreateOutcome::Refused) => {
                let refused = HttpResponse {
                    status,
                    headers,
                    body: body.to_vec(),
                    request_id,
                };
                return Err(failure(&self.http.provider, op, &refused));
            }
            Err(m) => {
                return Err(self
                    .http
                    .error(
                        op,
                        ProviderErrorKind::Protocol(format!("create response: {m}")),
                    )
                    .with_request_id(Some(request_id)));
            }
        };
        drop(body);
        if created.name.as_deref().is_some_and(|n| n != req.name) {
            tracing::warn!(provider = %self.http.provider, requested = req.name, "create answered with a different name than requested");
        }
        tracing::debug!(provider = %self.http.provider, request_id = %request_id, name = req.name, "key created; its id is found by a shared walk");
        Ok(NewKey {
            id: None,
            name: req.name.to_string(),
            created_at: created.created_at,
            expires_at: None,
            secret: SecretFields::single(SECRET_FIELD, created.api_key),
            unreadable: None,
        })
    }

    async fn delete(&self, key_id: &str) -> Result<DeleteOutcome, ProviderError> {
        let op = "delete";
        let url = self.url(op, &[("id", key_id)])?;
        let resp = self.call(op, Method::DELETE, url, None).await?;
        let info = error_info(&resp.body);
        if says_not_found(resp.status.as_u16(), &info) {
            tracing::debug!(provider = %self.http.provider, request_id = %resp.request_id, key_id, "key already gone");
            return Ok(DeleteOutcome::NotFound);
        }
        if resp.status.is_success() {
            if !info.is_json {
                return Err(self.protocol(op, &resp, "delete response is not JSON".into()));
            }
            if info.success != Some(false) {
                return Ok(DeleteOutcome::Deleted);
            }
        }
        Err(failure(&self.http.provider, op, &resp))
    }
}

/// The request-target a Digest `uri` must repeat: path and query as sent.
pub fn request_target(url: &Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{}", url.path(), q),
        None => url.path().to_string(),
    }
}

/// The strongest usable Digest challenge among the `WWW-Authenticate`
/// headers: SHA-256 over SHA-512-256 over MD5, and at equal algorithm
/// `qop=auth` (RFC 7616) over no `qop` (RFC 2069, accepted as `curl
/// --digest` does). A challenge offering only `qop=auth-int` is refused.
pub fn pick_challenge(headers: &HeaderMap) -> Result<WwwAuthenticateHeader, String> {
    let mut best: Option<(u8, WwwAuthenticateHeader)> = None;
    let mut why = String::from("no WWW-Authenticate: Digest header");
    for value in headers.get_all(WWW_AUTHENTICATE) {
        let Ok(text) = value.to_str() else {
            why = "WWW-Authenticate is not ASCII".into();
            continue;
        };
        // One value may hold several challenges (RFC 9110 §11.6.1); the
        // scheme is case-insensitive (the crate strips only "Digest").
        for (scheme, params) in challenges(text) {
            if !scheme.eq_ignore_ascii_case("digest") {
                continue;
            }
            consider(&params, &mut best, &mut why);
        }
    }
    best.map(|(_, c)| c).ok_or(why)
}

/// Rank one Digest challenge's parameters into `best` (see
/// [`pick_challenge`]), or say in `why` why it cannot be answered.
fn consider(params: &str, best: &mut Option<(u8, WwwAuthenticateHeader)>, why: &mut String) {
    let challenge = match digest_auth::parse(params) {
        Ok(c) => c,
        Err(e) => {
            *why = e.to_string();
            return;
        }
    };
    // No `qop` at all is RFC 2069 (response = H(HA1:nonce:HA2)), which
    // `curl --digest` and OceanBase's Terraform provider accept; a
    // `qop` list without `auth` (auth-int only) is not answerable.
    let with_qop = match &challenge.qop {
        None => false,
        Some(q) if q.contains(&Qop::AUTH) => true,
        Some(_) => {
            *why = "the Digest challenge offers qop but not qop=auth".into();
            return;
        }
    };
    let rank = match challenge.algorithm.algo {
        AlgorithmType::SHA2_256 => 6,
        AlgorithmType::SHA2_512_256 => 4,
        AlgorithmType::MD5 => 2,
    } + u8::from(with_qop);
    if best.as_ref().is_none_or(|(r, _)| rank > *r) {
        *best = Some((rank, challenge));
    }
}

/// The challenges of one `WWW-Authenticate` value, as `(scheme, params)`
/// with the params re-joined by `", "` (RFC 9110 §11.6.1: `challenge =
/// auth-scheme [ 1*SP ( token68 / #auth-param ) ]`, comma-separated).
/// Commas inside quoted strings do not split; an element `token SP …` (no
/// `=` before the space) starts a new challenge, `name=value` continues one.
pub fn challenges(value: &str) -> Vec<(String, String)> {
    let mut elements = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                elements.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    elements.push(&value[start..]);
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for e in elements
        .into_iter()
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let ws = e.find(char::is_whitespace);
        let eq = e.find('=');
        let new_scheme = match (ws, eq) {
            (_, None) => true,
            (Some(w), Some(q)) => w < q && !e[w..].trim_start().starts_with('='),
            (None, Some(_)) => false,
        };
        if new_scheme {
            let (scheme, rest) = e.split_at(ws.unwrap_or(e.len()));
            let rest = rest.trim();
            let params = if rest.is_empty() {
                vec![]
            } else {
                vec![rest.to_string()]
            };
            out.push((scheme.to_string(), params));
        } else if let Some((_, params)) = out.last_mut() {
            params.push(e.to_string());
        }
    }
    out.into_iter().map(|(s, p)| (s, p.join(", "))).collect()
}

/// One key as a list page carries it (strings as sent).
#[derive(Debug, Deserialize)]
pub struct RawKey {
    pub id: String,
    pub name: String,
    #[serde(default, rename = "createdAt")]
    pub created_at: Option<String>,
    #[serde(default, rename = "expiresAt")]
    pub expires_at: Option<String>,
}

/// A listed key's `createdAt` and `expiresAt` ([`RawKey::times`]), and its
/// meta (the raw value of a time that did not parse).
type ParsedTimes = (
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    BTreeMap<String, Value>,
);

impl RawKey {
    /// Parse the timestamps. `updatedAt` decides nothing and is not kept
    /// (a map entry per listed key was most of an idle walk's memory:
    /// 4.7 MB of 10,000 keys). A time that does not parse is left out and
    /// its raw value recorded in `meta[META_UNKNOWN_TIME]`, so one odd key
    /// isolates its own lineage instead of failing the whole listing.
    pub fn into_key(self) -> Result<ProviderKey, String> {
        let (created_at, expires_at, meta) = self.times();
        Ok(ProviderKey {
            id: self.id,
            name: self.name,
            created_at,
            expires_at,
            meta,
        })
    }

    /// [`RawKey::into_key`] into a walk's table: the id and name are copied
    /// into its arena, no `ProviderKey` is made.
    pub fn push_into(&self, table: &mut KeyTable) {
        let (created_at, expires_at, meta) = self.times();
        table.push(&self.id, &self.name, created_at, expires_at, meta);
    }

    /// The parsed times and the meta recording any that did not parse.
    fn times(&self) -> ParsedTimes {
        let mut meta = BTreeMap::new();
        let mut unknown = serde_json::Map::new();
        let mut time = |field: &str, raw: Option<&str>| match parse_time(field, raw) {
            Ok(t) => t,
            Err(_) => {
                unknown.insert(
                    field.to_string(),
                    Value::String(raw.unwrap_or("").to_string()),
                );
                None
            }
        };
        let created_at = time("createdAt", self.created_at.as_deref());
        let expires_at = time("expiresAt", self.expires_at.as_deref());
        if !unknown.is_empty() {
            meta.insert(super::META_UNKNOWN_TIME.to_string(), Value::Object(unknown));
        }
        (created_at, expires_at, meta)
    }
}

/// `data` of a list page.
#[derive(Debug, Deserialize)]
pub struct ListData {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub list: Vec<RawKey>,
    #[serde(default)]
    pub total: Option<u64>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<RawKey>, D::Error> {
    Ok(Option::<Vec<RawKey>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize)]
struct ListBody {
    #[serde(default)]
    success: Option<bool>,
    #[serde(default, deserialize_with = "object_only")]
    data: Option<ListData>,
}

/// `data` as the seed documents it: a JSON object (or `null`). serde's
/// derived struct decoding also takes an array, field by field in
/// declaration order, so `"data": ["sk_…", "name", "2023-…"]` would read
/// as a created key; no page documents such an answer, so it is refused as
/// the wrong shape.
fn object_only<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
}

/// Parse a 2xx list body. `Ok(None)` is an error envelope (`success:false`)
/// for the caller to classify; `Err` is a body of the wrong shape.
pub fn parse_list_page(body: &[u8]) -> Result<Option<ListData>, String> {
    let parsed: ListBody = serde_json::from_slice(body).map_err(|e| shape_error(&e))?;
    if parsed.success == Some(false) {
        return Ok(None);
    }
    parsed
        .data
        .map(Some)
        .ok_or_else(|| "no `data` object".to_string())
}

/// What a successful create returned.
pub struct CreatedKey {
    pub api_key: Secret,
    pub name: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
}

pub enum CreateOutcome {
    Created(CreatedKey),
    /// A 2xx body with `success:false`: an error envelope.
    Refused,
}

/// A string that goes straight into a `Secret` as it is deserialized.
struct SecretString(Secret);

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(SecretString(Secret::new(String::deserialize(d)?)))
    }
}

#[derive(Deserialize)]
struct CreateData {
    #[serde(default, rename = "apiKey")]
    api_key: Option<SecretString>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "createdAt")]
    created_at: Option<String>,
}

#[derive(Deserialize)]
struct CreateBody {
    #[serde(default)]
    success: Option<bool>,
    #[serde(default, deserialize_with = "object_only")]
    data: Option<CreateData>,
}

/// Parse a 2xx create body. Errors never quote the body: it holds the key.
pub fn parse_create(body: &[u8]) -> Result<CreateOutcome, String> {
    let parsed: CreateBody = serde_json::from_slice(body).map_err(|e| shape_error(&e))?;
    if parsed.success == Some(false) {
        return Ok(CreateOutcome::Refused);
    }
    let data = parsed.data.ok_or("no `data` object")?;
    let api_key = data
        .api_key
        .map(|s| s.0)
        .filter(|s| !s.is_empty())
        .ok_or("no `data.apiKey`")?;
    Ok(CreateOutcome::Created(CreatedKey {
        api_key,
        name: data.name,
        // The create response holds the new key: an error quotes none of it.
        created_at: parse_time("createdAt", data.created_at.as_deref())
            .map_err(|_| "`data.createdAt` is not an RFC 3339 time".to_string())?,
    }))
}

/// A JSON shape error without the offending value (serde quotes it, and it
/// may be a secret): category and position only.
fn shape_error(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Data => "not the documented JSON shape",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{what} (line {}, column {})", e.line(), e.column())
}

/// An RFC 3339 timestamp; missing, `null` or empty is `None`.
pub fn parse_time(field: &str, s: Option<&str>) -> Result<Option<DateTime<Utc>>, String> {
    match s.map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => super::times::parse_str("oceanbase", t)
            .map(Some)
            .map_err(|raw| format!("`{field}` {raw:?} is not a time in a form OceanBase uses")),
    }
}

/// What an error body says, from either documented envelope.
#[derive(Debug, Default, PartialEq)]
pub struct ErrorInfo {
    /// The body parsed as a JSON object.
    pub is_json: bool,
    pub success: Option<bool>,
    pub code: String,
    pub message: String,
    /// The server's `requestId`.
    pub request_id: Option<String>,
}

/// Read `{success, errorCode, errorMessage, requestId}` or
/// `{success, message, error:{code,message}|"text", requestId}`.
pub fn error_info(body: &[u8]) -> ErrorInfo {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return ErrorInfo::default();
    };
    let s = |v: Option<&Value>| match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let error = obj.get("error");
    let code = s(obj.get("errorCode"))
        .or_else(|| s(error.and_then(|e| e.get("code"))))
        .or_else(|| s(error.and_then(|e| e.get("errorCode"))))
        .or_else(|| s(obj.get("code")))
        .unwrap_or_default();
    let message = s(obj.get("errorMessage"))
        .or_else(|| s(error.and_then(|e| e.get("message"))))
        .or_else(|| match error {
            Some(Value::String(t)) if !t.is_empty() => Some(t.clone()),
            _ => None,
        })
        .or_else(|| s(obj.get("message")))
        .unwrap_or_default();
    ErrorInfo {
        is_json: true,
        success: obj.get("success").and_then(Value::as_bool),
        code: clean(&code),
        message: clean(&message),
        request_id: s(obj.get("requestId"))
            .filter(|r| !r.is_empty())
            .map(|r| clean(&r)),
    }
}

fn server_request_id(body: &[u8]) -> Option<String> {
    error_info(body).request_id
}

/// Server text for an error: one line, bounded.
fn clean(s: &str) -> String {
    super::one_line(s, MAX_MESSAGE)
}

/// Whether a delete answer means the key is already gone: a 404 carrying a
/// JSON body (a bare 404 may be a wrong endpoint or a proxy, and must not
/// count as done), or an error envelope saying "not found".
pub fn says_not_found(status: u16, info: &ErrorInfo) -> bool {
    if status == 404 {
        return info.is_json;
    }
    if !(200..500).contains(&status) || matches!(status, 401 | 403 | 429) {
        return false;
    }
    info.success == Some(false)
        && (mentions_not_found(&info.code) || mentions_not_found(&info.message))
}

fn mentions_not_found(s: &str) -> bool {
    let squeezed: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    squeezed.contains("notfound") || squeezed.contains("notexist")
}

/// Turn a refused call (non-2xx, or 2xx with `success:false`) into a typed
/// error carrying the server's request id (else ours).
pub fn failure(provider: &str, operation: &'static str, resp: &HttpResponse) -> ProviderError {
    let info = error_info(&resp.body);
    let status = resp.status.as_u16();
    let request_id = info.request_id.clone().unwrap_or(resp.request_id.clone());
    let message = if info.is_json {
        info.message.clone()
    } else {
        format!("non-JSON response body ({} bytes)", resp.body.len())
    };
    let kind = match status {
        429 => ProviderErrorKind::RateLimited {
            retry_after: retry_after(&resp.headers),
        },
        401 | 403 => ProviderErrorKind::Auth(
            [format!("HTTP {status}"), info.code.clone(), message]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => ProviderErrorKind::Api {
            status,
            code: info.code.clone(),
            message,
        },
    };
    tracing::debug!(
        provider,
        operation,
        request_id = %resp.request_id,
        server_request_id = ?info.request_id,
        status,
        code = %info.code,
        "provider call refused"
    );
    ProviderError::new(provider, operation, kind).with_request_id(Some(request_id))
}

/// `[providers.NAME]` of `kind = "oceanbase"` as written: its own keys
/// (the common ones are `config::raw::RawProvider`'s). Every key is
/// optional here so a missing one is reported at the item by
/// [`ProviderCx::required`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOceanBaseConfig {
    pub org_id: Option<S<String>>,
    pub project_id: Option<S<String>>,
    pub access_key_id: Option<S<RawSecretRef>>,
    pub access_key_secret: Option<S<RawSecretRef>>,
}

/// A validated `kind = "oceanbase"` provider: the `X-OB-Org-Id` and
/// `X-OB-Project-Id` it sends, and the AccessKey pair it authenticates
/// with (HTTP Digest username and password, PROTOCOLS §4).
#[derive(Debug, Clone)]
pub struct OceanBaseConfig {
    pub org_id: String,
    pub project_id: String,
    pub access_key_id: SecretRef,
    pub access_key_secret: SecretRef,
}

impl ProviderAccount for OceanBaseConfig {
    fn account(&self) -> String {
        format!("org={} project={}", self.org_id, self.project_id)
    }

    fn credentials(&self) -> Vec<(&'static str, Credential<'_>)> {
        vec![
            ("access_key_id", Credential::Secret(&self.access_key_id)),
            (
                "access_key_secret",
                Credential::Secret(&self.access_key_secret),
            ),
        ]
    }
}

/// The `oceanbase` kind's config rules (see [`ProviderSpec`]): `org_id`,
/// `project_id`, the AccessKey pair for Digest auth; `create.action` (the
/// permission of new keys) is required when rotating.
pub struct Spec;

impl ProviderSpec for Spec {
    fn kind(&self) -> &'static str {
        "oceanbase"
    }

    fn default_endpoint(&self) -> &'static str {
        "https://api-cloud.oceanbase.com"
    }

    fn has_expiry(&self) -> bool {
        true
    }

    fn keys(&self) -> &'static [&'static str] {
        &["org_id", "project_id", "access_key_id", "access_key_secret"]
    }

    fn validate(&self, cx: &mut ProviderCx<'_, '_, '_>) -> Option<ProviderKind> {
        let raw: RawOceanBaseConfig = cx.parse()?;
        let org = cx
            .required(&raw.org_id, "org_id")
            .map(|s| s.get_ref().clone());
        let proj = cx
            .required(&raw.project_id, "project_id")
            .map(|s| s.get_ref().clone());
        let ak = cx
            .required(&raw.access_key_id, "access_key_id")
            .and_then(|s| cx.secret(s, "access_key_id"));
        let sk = cx
            .required(&raw.access_key_secret, "access_key_secret")
            .and_then(|s| cx.secret(s, "access_key_secret"));
        Some(ProviderKind::OceanBase(OceanBaseConfig {
            org_id: org?,
            project_id: proj?,
            access_key_id: ak?,
            access_key_secret: sk?,
        }))
    }

    fn secret_fields(&self) -> Option<&'static [&'static str]> {
        Some(&["api_key"])
    }

    fn build(
        &self,
        cfg: &ProviderConfig,
        http: ProviderHttp,
    ) -> Result<super::SharedProvider, BuildError> {
        Ok(std::sync::Arc::new(OceanBaseProvider::new(cfg, http)?))
    }

    fn create_keys(&self) -> &'static [&'static str] {
        &["action"]
    }

    fn check_create(
        &self,
        cx: &mut ProviderCx<'_, '_, '_>,
        create: &serde_json::Map<String, serde_json::Value>,
        span: std::ops::Range<usize>,
        rotate: bool,
        unknown_reported: bool,
    ) {
        // A mistyped `action` was reported already, with its correction.
        if rotate && !unknown_reported && !create.get("action").is_some_and(|a| a.is_string()) {
            let what = cx.what.clone();
            cx.error_hint(
                span,
                format!("{what}: OceanBase keys are created with a permission, and none is set"),
                "add create = { action = \"read\" } (the permission the new keys get)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(WWW_AUTHENTICATE, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn resp(status: u16, body: &str, extra: &[(&str, &str)]) -> HttpResponse {
        let mut h = HeaderMap::new();
        for (k, v) in extra {
            h.insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        HttpResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: h,
            body: body.as_bytes().to_vec(),
            request_id: "ours-1".into(),
        }
    }

    #[test]
    fn challenge_prefers_sha256_over_md5() {
        let h = headers(&[
            r#"Digest realm="r", qop="auth", nonce="n1", algorithm=MD5"#,
            r#"Digest realm="r", qop="auth", nonce="n1", algorithm=SHA-256"#,
        ]);
        let c = pick_challenge(&h).unwrap();
        assert_eq!(c.algorithm.algo, AlgorithmType::SHA2_256);
        assert_eq!(c.nonce, "n1");
        assert!(!c.stale);
    }

    #[test]
    fn a_digest_challenge_after_another_scheme_in_one_header_is_found() {
        // RFC 9110 §11.6.1: one WWW-Authenticate may hold several
        // challenges (a proxy may fold them); curl reads each.
        let h = headers(&[
            r#"Basic realm="a, b", Digest realm="r", qop="auth", nonce="n1", algorithm=SHA-256, Bearer realm="x""#,
        ]);
        let c = pick_challenge(&h).unwrap();
        assert_eq!(c.algorithm.algo, AlgorithmType::SHA2_256);
        assert_eq!(c.nonce, "n1");
        assert_eq!(c.realm, "r");
        // Two Digest challenges in one value: the better one wins.
        let h = headers(&[
            r#"Digest realm="r", qop="auth", nonce="m", algorithm=MD5, Digest realm="r", qop="auth", nonce="s", algorithm=SHA-256"#,
        ]);
        assert_eq!(pick_challenge(&h).unwrap().nonce, "s");
        // "Digest" inside a quoted value is not a challenge.
        let h = headers(&[r#"Basic realm="Digest realm""#]);
        assert!(pick_challenge(&h).is_err());
    }

    #[test]
    fn challenge_scheme_is_case_insensitive_and_stale_is_read() {
        let h = headers(&[r#"digest realm="r", qop="auth", nonce="n2", stale=true"#]);
        let c = pick_challenge(&h).unwrap();
        assert_eq!(c.algorithm.algo, AlgorithmType::MD5);
        assert!(c.stale);
    }

    #[test]
    fn a_challenge_without_qop_is_answered_the_rfc_2069_way() {
        let mut c =
            pick_challenge(&headers(&[r#"Digest realm="r", nonce="n", opaque="o""#])).unwrap();
        assert!(c.qop.is_none());
        let ctx = AuthContext::new("Mufasa", "Circle Of Life", "/dir/index.html");
        let a = c.respond(&ctx).unwrap();
        // RFC 2069: no qop, nc or cnonce, and response = MD5(HA1:nonce:HA2).
        let h = a.to_header_string();
        assert!(
            !h.contains("qop") && !h.contains("nc=") && !h.contains("cnonce"),
            "{h}"
        );
        let md5 = |s: &str| digest_auth::Algorithm::new(AlgorithmType::MD5, false).hash_str(s);
        let ha1 = md5("Mufasa:r:Circle Of Life");
        let ha2 = md5("GET:/dir/index.html");
        assert_eq!(a.response, md5(&format!("{ha1}:n:{ha2}")));
        // With both on offer, qop=auth wins at the same algorithm.
        let c = pick_challenge(&headers(&[
            r#"Digest realm="r", nonce="n""#,
            r#"Digest realm="r", qop="auth", nonce="n""#,
        ]))
        .unwrap();
        assert!(c.qop.is_some());
    }

    #[test]
    fn challenge_without_qop_auth_or_digest_is_refused() {
        assert!(
            pick_challenge(&headers(&[
                r#"Digest realm="r", qop="auth-int", nonce="n""#
            ]))
            .is_err()
        );
        assert!(pick_challenge(&headers(&[r#"Basic realm="r""#])).is_err());
        assert!(pick_challenge(&HeaderMap::new()).is_err());
        let e = pick_challenge(&headers(&[
            r#"Digest realm="r", qop="auth", nonce="n", algorithm=SHA-1"#,
        ]))
        .unwrap_err();
        assert!(e.contains("SHA-1"), "{e}");
    }

    #[test]
    fn answering_a_challenge_counts_nc_up_on_the_same_nonce() {
        let mut c = pick_challenge(&headers(&[
            r#"Digest realm="r", qop="auth", nonce="n", opaque="o", algorithm=SHA-256"#,
        ]))
        .unwrap();
        let ctx = AuthContext::new(
            "ak",
            "PW-SECRET-xyz",
            "/api/v2/maas/apikeys?pageNumber=1&pageSize=100",
        );
        let a = c.respond(&ctx).unwrap().to_header_string();
        let b = c.respond(&ctx).unwrap().to_header_string();
        assert!(
            a.contains("nc=00000001") && b.contains("nc=00000002"),
            "{a} / {b}"
        );
        assert!(a.contains("algorithm=SHA-256") && a.contains("qop=auth"));
        assert!(a.contains(r#"uri="/api/v2/maas/apikeys?pageNumber=1&pageSize=100""#));
        assert!(!a.contains("SECRET"), "the password never appears: {a}");
    }

    #[test]
    fn request_target_keeps_the_query() {
        let u = Url::parse("http://h:1/api/v2/maas/apikeys?id=ak-1&x=a%20b").unwrap();
        assert_eq!(request_target(&u), "/api/v2/maas/apikeys?id=ak-1&x=a%20b");
        let u = Url::parse("https://h/base/api/v2/maas/apikeys").unwrap();
        assert_eq!(request_target(&u), "/base/api/v2/maas/apikeys");
    }

    #[test]
    fn list_page_parses_the_seed_example() {
        let body = br#"{"action":"ListAIServiceAPIKeys","data":{"list":[{"id":"xxxxxx","name":"MyAPIKey","createdAt":"2024-01-01T00:00:00Z","updatedAt":"2024-01-01T00:00:00Z","expiresAt":"2025-01-01T00:00:00Z"}],"total":1},"requestId":"xxxxxx","server":"xxx.xxx.x.xxx:xxxx"}"#;
        let page = parse_list_page(body).unwrap().unwrap();
        assert_eq!(page.total, Some(1));
        let k = page.list.into_iter().next().unwrap().into_key().unwrap();
        assert_eq!(k.id, "xxxxxx");
        assert_eq!(k.name, "MyAPIKey");
        assert_eq!(
            k.created_at.unwrap().to_rfc3339(),
            "2024-01-01T00:00:00+00:00"
        );
        assert_eq!(
            k.expires_at.unwrap().to_rfc3339(),
            "2025-01-01T00:00:00+00:00"
        );
        // `updatedAt` decides nothing and costs a map entry per key.
        assert!(k.meta.is_empty());
    }

    #[test]
    fn expiry_may_be_null_empty_or_missing() {
        for item in [
            r#"{"id":"a","name":"n","expiresAt":null}"#,
            r#"{"id":"a","name":"n","expiresAt":""}"#,
            r#"{"id":"a","name":"n"}"#,
        ] {
            let body = format!(r#"{{"data":{{"list":[{item}],"total":1}}}}"#);
            let page = parse_list_page(body.as_bytes()).unwrap().unwrap();
            let k = page.list.into_iter().next().unwrap().into_key().unwrap();
            assert_eq!(k.expires_at, None, "{item}");
            assert_eq!(k.created_at, None);
        }
    }

    #[test]
    fn a_bad_timestamp_isolates_its_key_and_bad_shapes_are_protocol_errors() {
        let body =
            br#"{"data":{"list":[{"id":"a","name":"n","createdAt":"yesterday\u001b[2J"}],"total":1}}"#;
        let page = parse_list_page(body).unwrap().unwrap();
        let k = page.list.into_iter().next().unwrap().into_key().unwrap();
        assert_eq!(k.created_at, None);
        assert_eq!(
            k.meta[crate::provider::META_UNKNOWN_TIME]["createdAt"],
            "yesterday\u{1b}[2J"
        );
        assert!(parse_list_page(b"{}").is_err());
        assert!(parse_list_page(b"<html>").is_err());
        assert!(
            parse_list_page(br#"{"data":{"list":null,"total":0}}"#)
                .unwrap()
                .unwrap()
                .list
                .is_empty()
        );
        assert!(
            parse_list_page(br#"{"success":false,"errorCode":"X"}"#)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn create_body_yields_the_secret_and_errors_never_quote_it() {
        let body = br#"{"data":{"apiKey":"sk_live_abc123","name":"my-api-key","createdAt":"2023-10-12T09:45:30Z"},"requestId":"x","server":"s","success":true}"#;
        let CreateOutcome::Created(c) = parse_create(body).unwrap() else {
            panic!("refused")
        };
        assert_eq!(c.api_key.expose(), "sk_live_abc123");
        assert_eq!(c.name.as_deref(), Some("my-api-key"));
        assert_eq!(
            c.created_at.unwrap().to_rfc3339(),
            "2023-10-12T09:45:30+00:00"
        );
        // A wrong shape around the secret: the message must not carry it.
        let bad = br#"{"data":{"apiKey":"sk_live_abc123","name":7,"createdAt":"2023-10-12T09:45:30Z"},"success":true}"#;
        let e = parse_create(bad).err().unwrap();
        assert!(!e.contains("sk_live"), "{e}");
        let bad = br#"{"data":{"apiKey":["sk_live_abc123"]},"success":true}"#;
        let e = parse_create(bad).err().unwrap();
        assert!(!e.contains("sk_live"), "{e}");
        assert!(parse_create(br#"{"data":{"name":"x"},"success":true}"#).is_err());
        assert!(matches!(
            parse_create(br#"{"data":null,"success":true}"#),
            Err(m) if m == "no `data` object"
        ));
        assert!(matches!(
            parse_create(br#"{"success":false,"errorCode":"E"}"#).unwrap(),
            CreateOutcome::Refused
        ));
    }

    #[test]
    fn an_array_shaped_data_is_refused_not_read_by_position() {
        // serde reads a struct from an array by field order; the seed's
        // `data` is an object, so this is no created key.
        let body = br#"{"data":["sk_live_abc123","n","2023-10-12T09:45:30Z"],"success":true}"#;
        let e = parse_create(body).err().expect("refused");
        assert!(!e.contains("sk_live"), "{e}");
        let page = br#"{"data":[[],3],"success":true}"#;
        assert!(parse_list_page(page).is_err());
    }

    #[test]
    fn both_error_envelopes_are_read() {
        let a = error_info(br#"{"success":false,"errorCode":"E001R000","errorMessage":"Unknown Error","requestId":"rid-1"}"#);
        assert_eq!(
            (a.code.as_str(), a.message.as_str()),
            ("E001R000", "Unknown Error")
        );
        assert_eq!(a.request_id.as_deref(), Some("rid-1"));
        assert_eq!(a.success, Some(false));
        let b = error_info(br#"{"action":"DeleteAIServiceAPIKey","data":{},"error":{"code":"NotFound","message":"apikey missing"},"message":"apikey missing","requestId":"rid-2","success":false}"#);
        assert_eq!(
            (b.code.as_str(), b.message.as_str()),
            ("NotFound", "apikey missing")
        );
        let c = error_info(br#"{"success":false,"message":"bad thing","error":{}}"#);
        assert_eq!((c.code.as_str(), c.message.as_str()), ("", "bad thing"));
        let d = error_info(br#"{"success":false,"error":"plain text"}"#);
        assert_eq!(d.message, "plain text");
        assert!(!error_info(b"<html>502</html>").is_json);
    }

    #[test]
    fn a_server_request_id_is_one_bounded_line_like_its_code() {
        let body = format!(
            r#"{{"success":false,"errorCode":"E","requestId":"rid\n<2>forged\u001b[2J{}"}}"#,
            "r".repeat(5000)
        );
        let rid = error_info(body.as_bytes()).request_id.unwrap();
        assert!(rid.chars().count() <= MAX_MESSAGE + 1, "{}", rid.len());
        assert!(!rid.chars().any(char::is_control), "{rid:?}");
        assert!(rid.starts_with("rid <2>forged"));
    }

    #[test]
    fn not_found_needs_a_json_404_or_an_envelope_saying_so() {
        let i = |b: &str| error_info(b.as_bytes());
        assert!(says_not_found(
            404,
            &i(r#"{"success":false,"errorCode":"NOT_FOUND"}"#)
        ));
        assert!(!says_not_found(404, &i("<html>not found</html>")));
        assert!(says_not_found(
            400,
            &i(r#"{"success":false,"errorCode":"E","errorMessage":"API key does not exist"}"#)
        ));
        assert!(says_not_found(
            200,
            &i(r#"{"success":false,"error":{"code":"APIKEY_NOT_FOUND"}}"#)
        ));
        assert!(!says_not_found(
            500,
            &i(r#"{"success":false,"errorMessage":"not found"}"#)
        ));
        assert!(!says_not_found(
            403,
            &i(r#"{"success":false,"errorMessage":"not found"}"#)
        ));
        assert!(!says_not_found(
            400,
            &i(r#"{"success":false,"errorMessage":"bad id"}"#)
        ));
        assert!(!says_not_found(
            200,
            &i(r#"{"success":true,"message":"success"}"#)
        ));
    }

    #[test]
    fn statuses_map_to_error_classes() {
        let e = failure("ob", "list", &resp(429, "{}", &[("retry-after", "7")]));
        assert_eq!(
            e.kind,
            ProviderErrorKind::RateLimited {
                retry_after: Some(std::time::Duration::from_secs(7))
            }
        );
        assert!(e.is_retryable());
        let e = failure(
            "ob",
            "list",
            &resp(
                403,
                r#"{"success":false,"errorCode":"FORBIDDEN","errorMessage":"no","requestId":"srv-9"}"#,
                &[],
            ),
        );
        assert!(
            matches!(e.kind, ProviderErrorKind::Auth(ref m) if m.contains("403") && m.contains("FORBIDDEN"))
        );
        assert_eq!(e.request_id.as_deref(), Some("srv-9"));
        assert!(!e.is_retryable());
        let e = failure("ob", "create", &resp(503, "<html>", &[]));
        assert!(e.is_retryable());
        assert_eq!(e.request_id.as_deref(), Some("ours-1"));
        assert!(
            matches!(e.kind, ProviderErrorKind::Api { status: 503, ref message, .. } if message.contains("non-JSON"))
        );
        let e = failure(
            "ob",
            "create",
            &resp(
                400,
                r#"{"success":false,"errorCode":"INVALID_PARAMETER","errorMessage":"name"}"#,
                &[],
            ),
        );
        assert!(!e.is_retryable());
        let e = failure(
            "ob",
            "delete",
            &resp(200, r#"{"success":false,"message":"nope"}"#, &[]),
        );
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn server_messages_are_one_bounded_line() {
        let long = "x".repeat(1000);
        let i = error_info(format!(r#"{{"errorMessage":"a\nb{long}"}}"#).as_bytes());
        assert!(!i.message.contains('\n'));
        assert!(i.message.chars().count() <= MAX_MESSAGE + 1);
    }
}
