//! Huawei Cloud NES node-provider credentials (`kind = "huawei-nes"`;
//! PROTOCOLS §3; seed `huawei-bcs-create-credentials.txt`).
//!
//! # Calls
//!
//! - **list**: `GET /v1/{project_id}/node-provider/credentials?limit=100&offset=N`
//!   → `{credentials:[{id, description, create_time, …}], count}`, walked
//!   until a page comes back shorter than asked, the name filter applied
//!   per page. Whether `offset` counts items or pages, and whether `count`
//!   is the page's or the total, are undocumented: rekey assumes items and
//!   checks it. A page made only of ids already listed (offset ignored or
//!   read as pages) and a final `count` above the ids seen both stop the
//!   walk with a clear error instead of looping or silently skipping. `offset` may not exceed 1000, so at
//!   most 1,100 credentials are visible; past that a warning is logged.
//! - **create**: `POST /v1/{project_id}/node-provider/credentials` with
//!   `{description, node_ids?, control_type?, allowlists?, eps_id?}` → the
//!   credential file as **bytes**: a ZIP archive whose `credential.csv`
//!   holds the key ([`nes_file`]: fields `credential` = the CSV text, the
//!   primary field; `credential_zip` = the archive; `csv_<column>` when the
//!   CSV has a header row); a body that is not a ZIP is kept whole as
//!   `credential`. An answer that cannot be read is still returned (sealed
//!   first, then the rotation fails: `NewKey::unreadable`). The answer has
//!   no id: the provider lists once and matches the description; if that
//!   fails the id stays unresolved and the engine resolves it by listing
//!   later (`returns_id_on_create = false`).
//! - **delete**: `DELETE /v1/{project_id}/node-provider/credentials/{id}`.
//!   The API documents 200, 400, 401 and 500 only (no 404): after any
//!   error but a throttle or an auth failure, the provider lists, and a
//!   credential no longer listed counts as already gone.
//!
//! **Names.** NES credentials have no name field. rekey names a credential
//! through its `description`: the key name a policy's `match` sees is the
//! description, and create sets the description to the attempt's unique
//! name (so `create.description` is refused: it would hide the name). The
//! API allows 100 characters of description in a listing; longer names are
//! refused before anything is sent. `created_at` is `create_time`; keys
//! never expire (`has_expiry = false`).
//!
//! # Authentication (`auth` in the config)
//!
//! - `token`: a static `X-Auth-Token`.
//! - `iam`: a project-scoped token from `POST {endpoint}/v3/auth/tokens`
//!   (password flow, scope `project.id` = the provider's `project_id`),
//!   read from the `X-Subject-Token` header; cached, fetched again shortly
//!   before `expires_at` (a tenth of its lifetime, at most an hour, early)
//!   and once on a 401.
//! - `aksk`: every request signed `SDK-HMAC-SHA256` over `host`,
//!   `x-project-id` and `x-sdk-date`.
//!
//! `X-Project-Id` is sent in every mode.
//!
//! # Errors
//!
//! The body is `{code, error_code, error_msg, message}` (`code` as string
//! or number). 401/403 → `Auth`; 429 → `RateLimited` (with `Retry-After`);
//! 5xx → retryable `Api`; other 4xx → permanent `Api`. The `X-Request-Id`
//! the server answers with (else ours) rides on every error.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::Method;
use reqwest::header::HeaderValue;
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::http::{HttpResponse, ProviderHttp, retry_after};
use super::tencent::json_problem;
use super::{
    BuildError, Capabilities, CreateRequest, DeleteOutcome, NewKey, Provider, ProviderError,
    ProviderErrorKind, ProviderKey, huawei_sign, nes_file,
};
use crate::config::raw::{RawSecretRef, S};
use crate::config::validate::{ProviderCx, ProviderSpec};
use crate::config::{Credential, ProviderAccount, ProviderConfig, ProviderKind, SecretRef};
use crate::secret::Secret;

/// Page size asked for (the API answers at most 100 per page).
pub const PAGE_LIMIT: usize = 100;
/// Highest `offset` the API accepts.
pub const MAX_OFFSET: usize = 1000;
/// Longest description the API lists.
pub const MAX_DESCRIPTION: usize = 100;
/// Content type of JSON bodies sent.
pub const CONTENT_TYPE: &str = "application/json";
/// Content type of the IAM token request, as Huawei's docs write it.
pub const IAM_CONTENT_TYPE: &str = "application/json;charset=utf8";
/// At most this long before `expires_at` an IAM token is replaced.
pub const TOKEN_REFRESH_MAX: Duration = Duration::from_secs(3600);

/// Where "now" comes from (tests move it).
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The credentials path of a project.
pub fn credentials_path(project_id: &str) -> String {
    format!("/v1/{project_id}/node-provider/credentials")
}

struct CachedToken {
    token: Secret,
    /// Replace the token from this instant on.
    refresh_at: DateTime<Utc>,
}

struct IamAuth {
    /// `{endpoint}/v3/auth/tokens?nocatalog=true`.
    url: String,
    domain: String,
    user: String,
    password: Secret,
    /// Held across a fetch, so concurrent calls wait for one token.
    cached: tokio::sync::Mutex<Option<CachedToken>>,
}

enum Auth {
    Token(Secret),
    Iam(Box<IamAuth>),
    Aksk {
        access_key: Secret,
        secret_key: Secret,
    },
}

impl Auth {
    fn mode(&self) -> &'static str {
        match self {
            Auth::Token(_) => "token",
            Auth::Iam(_) => "iam",
            Auth::Aksk { .. } => "aksk",
        }
    }
}

/// Huawei Cloud NES credentials.
pub struct HuaweiProvider {
    http: ProviderHttp,
    project_id: String,
    /// `Host` as sent (and signed in AK/SK mode).
    host: String,
    /// The endpoint URL's own path (usually empty), prefixed to API paths.
    base_path: String,
    auth: Auth,
    now: Clock,
}

impl std::fmt::Debug for HuaweiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HuaweiProvider")
            .field("provider", &self.http.provider)
            .field("endpoint", &self.http.endpoint)
            .field("project_id", &self.project_id)
            .field("auth", &self.auth.mode())
            .finish()
    }
}

#[derive(Deserialize)]
struct ListPage {
    #[serde(default)]
    credentials: Option<Vec<ListedCredential>>,
    #[serde(default)]
    count: Option<u64>,
}

#[derive(Deserialize)]
struct ListedCredential {
    id: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    create_time: Option<Value>,
    #[serde(default)]
    control_type: Option<String>,
    #[serde(default)]
    eps_info: Option<EpsInfo>,
}

#[derive(Deserialize)]
struct EpsInfo {
    #[serde(default)]
    eps_id: Option<String>,
}

#[derive(Deserialize, Default)]
struct NesError {
    #[serde(default)]
    error_code: Option<String>,
    #[serde(default)]
    error_msg: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// IAM errors come as `{"error":{code,message,title}}` or in the
/// `error_code`/`error_msg` shape.
#[derive(Deserialize, Default)]
struct IamError {
    #[serde(default)]
    error: Option<IamErrorInner>,
    #[serde(default)]
    error_code: Option<String>,
    #[serde(default)]
    error_msg: Option<String>,
}

#[derive(Deserialize)]
struct IamErrorInner {
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct TokenBody {
    token: TokenInfo,
}

#[derive(Deserialize)]
struct TokenInfo {
    expires_at: String,
    #[serde(default)]
    issued_at: Option<String>,
}

const MAX_MESSAGE: usize = 300;

/// Whether an answer is a throttle: HTTP 429 whatever its code, or API
/// Gateway's (APIG) throttling code `APIG.0308` "The throttling threshold
/// has been reached" whatever its status (Huawei's FAQ "How Do I Handle the
/// Error APIG.0308?": wait 2–5 s and resend). APIG's error-code table
/// (support.huaweicloud.com, API Gateway user guide, "Error Codes") lists
/// `APIG.0101` with 404 only ("The API does not exist or has not been
/// published", "The API request method does not exist"): no such API, a
/// refusal, not a throttle. A throttle means nothing happened.
pub fn is_throttle(status: u16, code: &str) -> bool {
    status == 429 || code == "APIG.0308"
}

fn clip(s: &str) -> String {
    super::one_line(s, MAX_MESSAGE)
}

/// Longest `error_code` kept (real ones are like `BCS.03400001`).
const MAX_CODE: usize = 64;

/// Parse a Huawei time (`create_time`, IAM's `expires_at`): every form of
/// [`super::times`], zoneless ones in UTC+8; `None` when absent or
/// unparseable (listing records unparseable ones, see `list`).
pub fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    super::times::parse_value("huawei-nes", Some(v))
        .ok()
        .flatten()
}

/// Check and copy the policy's `create` table into the request body.
/// `description` is refused: rekey names credentials through it.
pub fn create_body(
    name: &str,
    params: &serde_json::Map<String, Value>,
) -> Result<Value, ProviderErrorKind> {
    let invalid = |m: String| ProviderErrorKind::Invalid(m);
    if name.chars().count() > MAX_DESCRIPTION {
        return Err(invalid(format!(
            "key name {name:?} is longer than the {MAX_DESCRIPTION} characters an NES description holds"
        )));
    }
    let mut body = serde_json::Map::new();
    body.insert("description".into(), Value::from(name));
    for (k, v) in params {
        match k.as_str() {
            "description" => {
                return Err(invalid(
                    "create.description cannot be set: rekey names NES credentials through their description (the key name); remove it".into(),
                ));
            }
            "eps_id" | "control_type" => {
                if !v.is_string() {
                    return Err(invalid(format!("create.{k} must be a string")));
                }
            }
            "node_ids" => {
                let ok = v
                    .as_array()
                    .is_some_and(|a| a.iter().all(|x| x.is_string()));
                if !ok {
                    return Err(invalid(
                        "create.node_ids must be a list of node ids (UUID strings)".into(),
                    ));
                }
            }
            "allowlists" => {
                let ok = v.as_array().is_some_and(|a| {
                    a.iter().all(|x| {
                        x.as_object().is_some_and(|o| {
                            o.keys()
                                .all(|k| k == "allowlist_type" || k == "allowlist_info")
                                && o.values().all(|v| v.is_string())
                        })
                    })
                });
                if !ok {
                    return Err(invalid(
                        "create.allowlists must be a list of { allowlist_type = \"…\", allowlist_info = \"…\" }".into(),
                    ));
                }
            }
            other => {
                return Err(invalid(format!(
                    "unknown create parameter {other:?} for huawei-nes"
                )));
            }
        }
        body.insert(k.clone(), v.clone());
    }
    Ok(Value::Object(body))
}

impl HuaweiProvider {
    pub fn new(cfg: &ProviderConfig, http: ProviderHttp) -> Result<Self, BuildError> {
        let ProviderKind::Huawei(HuaweiConfig { project_id, auth }) = &cfg.kind else {
            return Err(BuildError(format!(
                "provider {}: not a huawei-nes provider",
                cfg.name
            )));
        };
        let resolve = |r: &crate::config::SecretRef, what: &str| {
            r.resolve_now()
                .map_err(|e| BuildError(format!("provider {}: {what}: {e}", cfg.name)))
        };
        let auth = match auth {
            HuaweiAuth::Token(t) => Auth::Token(resolve(t, "auth.token")?),
            HuaweiAuth::Iam {
                endpoint,
                domain,
                user,
                password,
            } => Auth::Iam(Box::new(IamAuth {
                url: format!(
                    "{}/v3/auth/tokens?nocatalog=true",
                    endpoint.trim_end_matches('/')
                ),
                domain: domain.clone(),
                user: user.clone(),
                password: resolve(password, "auth.iam.password")?,
                cached: tokio::sync::Mutex::new(None),
            })),
            HuaweiAuth::Aksk {
                access_key,
                secret_key,
            } => Auth::Aksk {
                access_key: resolve(access_key, "auth.aksk.access_key")?,
                secret_key: resolve(secret_key, "auth.aksk.secret_key")?,
            },
        };
        let url = reqwest::Url::parse(&http.endpoint).map_err(|e| {
            BuildError(format!(
                "provider {}: endpoint {}: {e}",
                cfg.name, http.endpoint
            ))
        })?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => {
                return Err(BuildError(format!(
                    "provider {}: endpoint {} has no host",
                    cfg.name, http.endpoint
                )));
            }
        };
        Ok(HuaweiProvider {
            base_path: url.path().trim_end_matches('/').to_string(),
            http,
            project_id: project_id.clone(),
            host,
            auth,
            now: Arc::new(Utc::now),
        })
    }

    /// Read "now" from `clock` (X-Sdk-Date, token expiry) instead of the
    /// system clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.now = clock;
        self
    }

    fn error(&self, operation: &'static str, kind: ProviderErrorKind) -> ProviderError {
        self.http.error(operation, kind)
    }

    fn response_request_id(resp: &HttpResponse) -> Option<String> {
        resp.headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| Some(resp.request_id.clone()))
    }

    /// The typed error for a non-2xx NES answer.
    fn nes_error(&self, operation: &'static str, resp: &HttpResponse) -> ProviderError {
        let status = resp.status.as_u16();
        let e: NesError = serde_json::from_slice(&resp.body).unwrap_or_default();
        let code = e
            .error_code
            .map(|c| super::one_line(&c, MAX_CODE))
            .unwrap_or_else(|| format!("HTTP{status}"));
        let text = match (e.error_msg, e.message) {
            (Some(m), Some(d)) if !d.is_empty() => format!("{m} ({d})"),
            (Some(m), _) => m,
            (None, Some(d)) => d,
            (None, None) => "no error body".into(),
        };
        let text = clip(&text);
        let throttled = is_throttle(status, &code);
        if throttled && status != 429 {
            // The HTTP layer slows down on 429 by itself.
            self.http.throttled(retry_after(&resp.headers));
        }
        let kind = match status {
            _ if throttled => ProviderErrorKind::RateLimited {
                retry_after: retry_after(&resp.headers),
            },
            401 | 403 => ProviderErrorKind::Auth(format!("HTTP {status} {code}: {text}")),
            _ => ProviderErrorKind::Api {
                status,
                code,
                message: text,
            },
        };
        self.error(operation, kind)
            .with_request_id(Self::response_request_id(resp))
    }

    /// A valid IAM token, fetched when there is none or it is due.
    async fn iam_token(
        &self,
        iam: &IamAuth,
        operation: &'static str,
    ) -> Result<Secret, ProviderError> {
        let mut cached = iam.cached.lock().await;
        let now = (self.now)();
        if let Some(c) = cached.as_ref()
            && now < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        let fresh = self.fetch_token(iam, operation).await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    async fn fetch_token(
        &self,
        iam: &IamAuth,
        operation: &'static str,
    ) -> Result<CachedToken, ProviderError> {
        let body = Zeroizing::new(
            serde_json::to_vec(&json!({
                "auth": {
                    "identity": {
                        "methods": ["password"],
                        "password": {"user": {
                            "domain": {"name": iam.domain},
                            "name": iam.user,
                            "password": iam.password.expose(),
                        }},
                    },
                    "scope": {"project": {"id": self.project_id}},
                }
            }))
            .expect("a JSON object serializes"),
        );
        let req = self
            .http
            .client
            .post(&iam.url)
            .header(reqwest::header::CONTENT_TYPE, IAM_CONTENT_TYPE)
            .body(body.to_vec());
        let resp = self.http.send("iam_token", req).await.map_err(|mut e| {
            e.operation = operation;
            e
        })?;
        let rid = Self::response_request_id(&resp);
        let status = resp.status.as_u16();
        if status != 201 && status != 200 {
            let e: IamError = serde_json::from_slice(&resp.body).unwrap_or_default();
            let (code, msg) = match e.error {
                Some(inner) => (
                    inner.code.map(|c| match c {
                        Value::String(s) => s,
                        other => other.to_string(),
                    }),
                    inner.message,
                ),
                None => (e.error_code, e.error_msg),
            };
            let code = code.unwrap_or_else(|| format!("HTTP{status}"));
            let msg = clip(msg.as_deref().unwrap_or("no error body"));
            let kind = match status {
                401 | 403 => ProviderErrorKind::Auth(format!(
                    "IAM refused the password login for user {} in domain {} (HTTP {status} {code}: {msg})",
                    iam.user, iam.domain
                )),
                429 => ProviderErrorKind::RateLimited {
                    retry_after: retry_after(&resp.headers),
                },
                _ => ProviderErrorKind::Api {
                    status,
                    code,
                    message: format!("IAM token request: {msg}"),
                },
            };
            return Err(self.error(operation, kind).with_request_id(rid));
        }
        let token = resp
            .headers
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty())
            .map(Secret::new)
            .ok_or_else(|| {
                self.error(
                    operation,
                    ProviderErrorKind::Protocol("IAM answered without X-Subject-Token".into()),
                )
                .with_request_id(rid.clone())
            })?;
        let info: TokenBody = serde_json::from_slice(&resp.body).map_err(|e| {
            self.error(
                operation,
                ProviderErrorKind::Protocol(format!(
                    "IAM token body has no token.expires_at ({})",
                    json_problem(&e)
                )),
            )
            .with_request_id(rid.clone())
        })?;
        let now = (self.now)();
        let expires_at =
            parse_time(&Value::from(info.token.expires_at.clone())).ok_or_else(|| {
                self.error(
                    operation,
                    ProviderErrorKind::Protocol(format!(
                        "IAM token.expires_at {:?} is not a time",
                        info.token.expires_at
                    )),
                )
            })?;
        let issued_at = info
            .token
            .issued_at
            .and_then(|s| parse_time(&Value::from(s)))
            .unwrap_or(now);
        let lifetime = (expires_at - issued_at).to_std().unwrap_or_default();
        let early = (lifetime / 10).min(TOKEN_REFRESH_MAX);
        let refresh_at = expires_at - chrono::Duration::from_std(early).unwrap_or_default();
        tracing::debug!(provider = %self.http.provider, expires_at = %expires_at.to_rfc3339(), refresh_at = %refresh_at.to_rfc3339(), "IAM token obtained");
        Ok(CachedToken { token, refresh_at })
    }

    /// Drop the cached IAM token if it is still `used` (another call may
    /// have replaced it already).
    async fn forget_token(iam: &IamAuth, used: &Secret) {
        let mut cached = iam.cached.lock().await;
        if cached.as_ref().is_some_and(|c| &c.token == used) {
            *cached = None;
        }
    }

    /// Send one NES request with the configured authentication; with IAM,
    /// a 401 fetches a new token and tries once more.
    async fn request(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<HttpResponse, ProviderError> {
        let mut retried = false;
        loop {
            let (req, used) = self
                .build(operation, method.clone(), path, query, body)
                .await?;
            let resp = self.http.send(operation, req).await?;
            tracing::trace!(provider = %self.http.provider, operation, auth = self.auth.mode(), status = resp.status.as_u16(), "NES answered");
            if resp.status.as_u16() == 401
                && !retried
                && let (Auth::Iam(iam), Some(used)) = (&self.auth, used)
            {
                tracing::info!(provider = %self.http.provider, operation, "NES refused the IAM token; fetching a new one");
                Self::forget_token(iam, &used).await;
                retried = true;
                continue;
            }
            return Ok(resp);
        }
    }

    async fn build(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<(reqwest::RequestBuilder, Option<Secret>), ProviderError> {
        let full_path = format!("{}{}", self.base_path, path);
        let q = huawei_sign::canonical_query(query);
        let url = if q.is_empty() {
            format!("{}{}", self.http.endpoint, path)
        } else {
            format!("{}{}?{}", self.http.endpoint, path, q)
        };
        let mut req = self
            .http
            .client
            .request(method.clone(), url)
            .header(reqwest::header::HOST, &self.host)
            .header("X-Project-Id", &self.project_id);
        if body.is_some() {
            req = req.header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE);
        }
        let sensitive = |s: &str| -> Result<HeaderValue, ProviderError> {
            let mut v = HeaderValue::from_str(s).map_err(|_| {
                self.error(
                    operation,
                    ProviderErrorKind::Invalid(
                        "the credential holds characters a header cannot carry".into(),
                    ),
                )
            })?;
            v.set_sensitive(true);
            Ok(v)
        };
        let mut used = None;
        match &self.auth {
            Auth::Token(t) => req = req.header("X-Auth-Token", sensitive(t.expose())?),
            Auth::Iam(iam) => {
                let t = self.iam_token(iam, operation).await?;
                req = req.header("X-Auth-Token", sensitive(t.expose())?);
                used = Some(t);
            }
            Auth::Aksk {
                access_key,
                secret_key,
            } => {
                let date = (self.now)().format(huawei_sign::DATE_FORMAT).to_string();
                let mut headers: Vec<(&str, &str)> = vec![
                    ("Host", self.host.as_str()),
                    ("X-Project-Id", self.project_id.as_str()),
                    ("X-Sdk-Date", date.as_str()),
                ];
                if body.is_some() {
                    headers.push(("Content-Type", CONTENT_TYPE));
                }
                let signed = huawei_sign::sign(
                    access_key.expose(),
                    secret_key.expose(),
                    &date,
                    &huawei_sign::SignInput {
                        method: method.as_str(),
                        path: &full_path,
                        query,
                        headers: &headers,
                        body: body.unwrap_or_default(),
                    },
                );
                req = req.header("X-Sdk-Date", &date).header(
                    reqwest::header::AUTHORIZATION,
                    sensitive(&signed.authorization)?,
                );
            }
        }
        if let Some(b) = body {
            req = req.body(b.to_vec());
        }
        Ok((req, used))
    }

    /// Ids of the credentials whose description is exactly `name`.
    pub async fn find_by_description(&self, name: &str) -> Result<Vec<String>, ProviderError> {
        Ok(self
            .list(&|n: &str| n == name)
            .await?
            .into_iter()
            .map(|k| k.id)
            .collect())
    }
}

#[async_trait]
impl Provider for HuaweiProvider {
    fn name(&self) -> &str {
        &self.http.provider
    }

    fn kind(&self) -> &'static str {
        "huawei-nes"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            can_list: true,
            can_delete: true,
            disable_before_delete: false,
            has_expiry: false,
            returns_id_on_create: false,
        }
    }

    async fn list(
        &self,
        keep: &(dyn for<'k> Fn(&'k str) -> bool + Send + Sync),
    ) -> Result<Vec<ProviderKey>, ProviderError> {
        let path = credentials_path(&self.project_id);
        let mut out = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        // Every id listed, kept or not: detects a page served twice.
        let mut all_ids = std::collections::BTreeSet::new();
        let mut offset = 0usize;
        let limit = PAGE_LIMIT.to_string();
        loop {
            let off = offset.to_string();
            let resp = self
                .request(
                    "list",
                    Method::GET,
                    &path,
                    &[("limit", &limit), ("offset", &off)],
                    None,
                )
                .await?;
            if !resp.status.is_success() {
                return Err(self.nes_error("list", &resp));
            }
            let page: ListPage = serde_json::from_slice(&resp.body).map_err(|e| {
                self.error(
                    "list",
                    ProviderErrorKind::Protocol(format!(
                        "credential list has an unexpected shape ({})",
                        json_problem(&e)
                    )),
                )
                .with_request_id(Self::response_request_id(&resp))
            })?;
            let items = page.credentials.unwrap_or_default();
            let n = items.len();
            let fresh = items.iter().filter(|c| !all_ids.contains(&c.id)).count();
            if n > 0 && fresh == 0 {
                return Err(self
                    .error(
                        "list",
                        ProviderErrorKind::Protocol(format!(
                            "the credential list answered offset {offset} with a page it had already sent; the API does not page by item offset as rekey assumes (offset may count pages), so the listing is incomplete"
                        )),
                    )
                    .with_request_id(Self::response_request_id(&resp)));
            }
            all_ids.extend(items.iter().map(|c| c.id.clone()));
            let last_count = page.count;
            for c in items {
                let name = c.description.unwrap_or_default();
                if !keep(&name) || !seen.insert(c.id.clone()) {
                    continue;
                }
                let mut meta = std::collections::BTreeMap::new();
                let created_at =
                    match super::times::parse_value("huawei-nes", c.create_time.as_ref()) {
                        Ok(t) => t,
                        Err(raw) => {
                            meta.insert(
                                super::META_UNKNOWN_TIME.to_string(),
                                json!({ "create_time": raw }),
                            );
                            None
                        }
                    };
                if let Some(t) = c.control_type.filter(|t| !t.is_empty()) {
                    meta.insert("control_type".to_string(), Value::from(t));
                }
                if let Some(e) = c.eps_info.and_then(|e| e.eps_id) {
                    meta.insert("eps_id".to_string(), Value::from(e));
                }
                out.push(ProviderKey {
                    id: c.id,
                    name,
                    created_at,
                    expires_at: None,
                    meta,
                });
            }
            offset += n;
            if n < PAGE_LIMIT {
                // `count` is the total or the page's size (undocumented);
                // either way it cannot exceed what a complete walk saw.
                if let Some(total) = last_count
                    && total as usize > all_ids.len()
                    && offset <= MAX_OFFSET
                {
                    return Err(self
                        .error(
                            "list",
                            ProviderErrorKind::Protocol(format!(
                                "the credential list counts {total} credentials but paging by item offset reached only {}; the API may count offset in pages, so the listing is incomplete",
                                all_ids.len()
                            )),
                        )
                        .with_request_id(Self::response_request_id(&resp)));
                }
                break;
            }
            if offset > MAX_OFFSET {
                tracing::warn!(provider = %self.http.provider, listed = offset, "the NES list API takes offsets up to {MAX_OFFSET}; credentials past the first {offset} are not visible to rekey");
                break;
            }
        }
        Ok(out)
    }

    async fn create(&self, req: &CreateRequest<'_>) -> Result<NewKey, ProviderError> {
        let body = create_body(req.name, req.params).map_err(|k| self.error("create", k))?;
        let body = serde_json::to_vec(&body).expect("a JSON object serializes");
        let path = credentials_path(&self.project_id);
        let resp = self
            .request("create", Method::POST, &path, &[], Some(&body))
            .await?;
        if !resp.status.is_success() {
            return Err(self.nes_error("create", &resp));
        }
        // Bytes, not text: a ZIP with credential.csv (nes_file). Whatever
        // happens from here on, the answer goes back to be sealed first.
        let raw = Zeroizing::new(resp.body);
        let (secret, unreadable) = nes_file::parse(&raw);
        if let Some(problem) = &unreadable {
            tracing::error!(provider = %self.http.provider, name = req.name, problem = %problem, "the new credential's file could not be read completely; it is sealed as received");
        }
        // Best effort: the engine resolves the id by listing if this fails,
        // and a failure here must not lose the secret.
        let (id, created_at) = match self.list(&|n: &str| n == req.name).await {
            Ok(found) if found.len() == 1 => (Some(found[0].id.clone()), found[0].created_at),
            Ok(found) => {
                tracing::warn!(provider = %self.http.provider, name = req.name, matches = found.len(), "could not tell the new credential's id by its description; the engine will look again");
                (None, None)
            }
            Err(e) => {
                tracing::warn!(provider = %self.http.provider, name = req.name, error = %e, "listing to find the new credential's id failed; the engine will look again");
                (None, None)
            }
        };
        Ok(NewKey {
            id,
            name: req.name.to_string(),
            created_at,
            expires_at: None,
            secret,
            unreadable,
        })
    }

    async fn delete(&self, key_id: &str) -> Result<DeleteOutcome, ProviderError> {
        let path = format!(
            "{}/{}",
            credentials_path(&self.project_id),
            huawei_sign::escape(key_id)
        );
        let resp = self
            .request("delete", Method::DELETE, &path, &[], None)
            .await?;
        if resp.status.is_success() {
            return Ok(DeleteOutcome::Deleted);
        }
        let err = self.nes_error("delete", &resp);
        if err.is_throttled() || matches!(err.kind, ProviderErrorKind::Auth(_)) {
            return Err(err);
        }
        // The API documents no 404 (200, 400, 401, 500 only): after any
        // other error, the listing decides. Absent means done.
        match self.list(&|_: &str| true).await {
            Ok(keys) if !keys.iter().any(|k| k.id == key_id) => {
                tracing::info!(provider = %self.http.provider, key = key_id, status = resp.status.as_u16(), "delete answered an error but the credential is not listed: it is gone");
                Ok(DeleteOutcome::NotFound)
            }
            Ok(_) => Err(err),
            Err(e) => {
                tracing::warn!(provider = %self.http.provider, key = key_id, error = %e, "listing to confirm a failed delete failed too");
                Err(err)
            }
        }
    }
}

/// `[providers.NAME]` of `kind = "huawei-nes"` as written: its own keys
/// (the common ones are `config::raw::RawProvider`'s).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHuaweiConfig {
    pub project_id: Option<S<String>>,
    pub auth: Option<S<RawHuaweiAuth>>,
}

/// `auth = { token = … }`, `{ iam = { … } }` or `{ aksk = { … } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum RawHuaweiAuth {
    Token(S<RawSecretRef>),
    Iam(RawHuaweiIam),
    Aksk(RawHuaweiAksk),
}

/// `auth = { iam = { endpoint, domain, user, password } }`: an IAM
/// password login whose token is renewed before it expires.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHuaweiIam {
    pub endpoint: S<String>,
    pub domain: S<String>,
    pub user: S<String>,
    pub password: S<RawSecretRef>,
}

/// `auth = { aksk = { access_key, secret_key } }`: SDK-HMAC-SHA256 signing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHuaweiAksk {
    pub access_key: S<RawSecretRef>,
    pub secret_key: S<RawSecretRef>,
}

/// A validated `kind = "huawei-nes"` provider.
#[derive(Debug, Clone)]
pub struct HuaweiConfig {
    /// The 32-character project id every path names.
    pub project_id: String,
    pub auth: HuaweiAuth,
}

/// How NES calls authenticate (PROTOCOLS §3): a static `X-Auth-Token`, a
/// token from an IAM password login (renewed before it expires), or an
/// `SDK-HMAC-SHA256` AK/SK signature.
#[derive(Debug, Clone)]
pub enum HuaweiAuth {
    Token(SecretRef),
    Iam {
        endpoint: String,
        domain: String,
        user: String,
        password: SecretRef,
    },
    Aksk {
        access_key: SecretRef,
        secret_key: SecretRef,
    },
}

impl ProviderAccount for HuaweiConfig {
    fn account(&self) -> String {
        format!("project={}", self.project_id)
    }

    fn credentials(&self) -> Vec<(&'static str, Credential<'_>)> {
        match &self.auth {
            HuaweiAuth::Token(t) => vec![("token", Credential::Secret(t))],
            HuaweiAuth::Iam {
                endpoint,
                domain,
                user,
                password,
            } => vec![
                (
                    "iam",
                    Credential::Plain(format!("{endpoint}\0{domain}\0{user}")),
                ),
                ("password", Credential::Secret(password)),
            ],
            HuaweiAuth::Aksk {
                access_key,
                secret_key,
            } => vec![
                ("access_key", Credential::Secret(access_key)),
                ("secret_key", Credential::Secret(secret_key)),
            ],
        }
    }
}

/// The `huawei-nes` kind's config rules (see [`ProviderSpec`]): a 32-character
/// `project_id` and one `auth` form (`token`, `iam`, `aksk`);
/// `create.description` is refused (rekey names credentials through it).
pub struct Spec;

impl ProviderSpec for Spec {
    fn kind(&self) -> &'static str {
        "huawei-nes"
    }

    fn default_endpoint(&self) -> &'static str {
        "https://bcs.ap-southeast-3.myhuaweicloud.com"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["project_id", "auth"]
    }

    fn validate(&self, cx: &mut ProviderCx<'_, '_, '_>) -> Option<ProviderKind> {
        let raw: RawHuaweiConfig = cx.parse()?;
        let project = cx.required(&raw.project_id, "project_id").cloned();
        let project = project.and_then(|p| {
            let n = p.get_ref().chars().count();
            if n != 32 {
                cx.error_hint(
                    p.span(),
                    format!("Huawei project_id must be exactly 32 characters; this one has {n}"),
                    "copy the project ID from the console's My Credentials → Projects page",
                );
                None
            } else {
                Some(p.get_ref().clone())
            }
        });
        let auth = match cx.required(&raw.auth, "auth") {
            None => None,
            Some(a) => match a.get_ref() {
                RawHuaweiAuth::Token(t) => cx.secret(t, "auth.token").map(HuaweiAuth::Token),
                RawHuaweiAuth::Iam(i) => {
                    let endpoint = cx.secret_url(&i.endpoint, "auth.iam.endpoint");
                    let password = cx.secret(&i.password, "auth.iam.password");
                    (|| {
                        Some(HuaweiAuth::Iam {
                            endpoint: endpoint?,
                            domain: i.domain.get_ref().clone(),
                            user: i.user.get_ref().clone(),
                            password: password?,
                        })
                    })()
                }
                RawHuaweiAuth::Aksk(k) => {
                    let ak = cx.secret(&k.access_key, "auth.aksk.access_key");
                    let sk = cx.secret(&k.secret_key, "auth.aksk.secret_key");
                    (|| {
                        Some(HuaweiAuth::Aksk {
                            access_key: ak?,
                            secret_key: sk?,
                        })
                    })()
                }
            },
        };
        Some(ProviderKind::Huawei(HuaweiConfig {
            project_id: project?,
            auth: auth?,
        }))
    }

    fn secret_fields(&self) -> Option<&'static [&'static str]> {
        // `credential`, `credential_zip` and the CSV's columns, which are
        // undocumented: known only once a key is made.
        None
    }

    fn build(
        &self,
        cfg: &ProviderConfig,
        http: ProviderHttp,
    ) -> Result<super::SharedProvider, BuildError> {
        Ok(std::sync::Arc::new(HuaweiProvider::new(cfg, http)?))
    }

    fn create_keys(&self) -> &'static [&'static str] {
        &["node_ids", "control_type", "allowlists", "eps_id"]
    }

    fn reserved_create_keys(&self) -> &'static [(&'static str, &'static str, &'static str)] {
        // NES credentials have no name field: rekey names them through their
        // description, so a `description` in `create` would collide with it.
        &[(
            "description",
            "`create.description` cannot be set for a huawei-nes provider: rekey names each credential through its description",
            "remove it; the key name (from name_template) becomes the description",
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_time_parses_in_the_shapes_seen() {
        let t = parse_time(&json!("2024-03-01T10:00:00Z")).unwrap();
        assert_eq!(parse_time(&json!("2024-03-01 18:00:00")), Some(t));
        assert_eq!(parse_time(&json!("2024-03-01T18:00:00.000+0800")), Some(t));
        assert_eq!(parse_time(&json!("2024/03/01 18:00:00")), Some(t));
        assert_eq!(parse_time(&json!(1709287200)), Some(t));
        assert_eq!(parse_time(&json!(1709287200000i64)), Some(t));
        assert_eq!(parse_time(&json!("1709287200000")), Some(t));
        assert_eq!(parse_time(&json!("")), None);
        assert_eq!(parse_time(&json!("soon")), None);
    }

    #[test]
    fn apig_0308_and_any_429_throttle_but_apig_0101_is_no_such_api() {
        assert!(is_throttle(400, "APIG.0308"));
        assert!(is_throttle(429, "APIG.0308"));
        assert!(is_throttle(429, "APIG.0101"));
        assert!(is_throttle(429, "HTTP429"));
        assert!(!is_throttle(404, "APIG.0101"));
        assert!(!is_throttle(400, "BCS.03400001"));
    }

    #[test]
    fn create_body_names_the_key_through_its_description() {
        let mut p = serde_json::Map::new();
        p.insert(
            "node_ids".into(),
            json!(["0d8e7c8a-0000-4000-8000-000000000001"]),
        );
        p.insert("control_type".into(), json!("allowlist"));
        p.insert(
            "allowlists".into(),
            json!([{"allowlist_type": "ip", "allowlist_info": "10.0.0.1"}]),
        );
        p.insert("eps_id".into(), json!("0"));
        let b = create_body("app-20260101-r1", &p).unwrap();
        assert_eq!(b["description"], "app-20260101-r1");
        assert_eq!(b["control_type"], "allowlist");
        assert_eq!(b["node_ids"][0], "0d8e7c8a-0000-4000-8000-000000000001");
    }

    #[test]
    fn create_body_refuses_what_would_break_naming_or_the_api() {
        let mut p = serde_json::Map::new();
        p.insert("description".into(), json!("mine"));
        assert!(matches!(
            create_body("app", &p),
            Err(ProviderErrorKind::Invalid(_))
        ));
        let mut p = serde_json::Map::new();
        p.insert("node_ids".into(), json!("one"));
        assert!(create_body("app", &p).is_err());
        let mut p = serde_json::Map::new();
        p.insert("allowlists".into(), json!([{"type": "ip"}]));
        assert!(create_body("app", &p).is_err());
        assert!(create_body(&"x".repeat(101), &serde_json::Map::new()).is_err());
    }
}
