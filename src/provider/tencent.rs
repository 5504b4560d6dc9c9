//! Tencent Cloud API Gateway keys (`kind = "tencent-apigateway"`;
//! PROTOCOLS §1–§2; seed `tencent-apigateway-create-apikey.txt`).
//!
//! Every call is `POST /` with a JSON body, the headers `X-TC-Action`,
//! `X-TC-Version: 2018-08-08`, `X-TC-Timestamp`, `X-TC-Region`, and a
//! `TC3-HMAC-SHA256` signature over `content-type;host;x-tc-action` (the
//! action is signed so a captured signature cannot be replayed as another
//! action). `Content-Type` is the constant [`CONTENT_TYPE`], set by hand so
//! the bytes signed are the bytes sent, and so is `Host`.
//!
//! # Lifecycle
//!
//! - **list**: `DescribeApiKeysStatus`, 100 per page by `Offset`, the name
//!   filter applied page by page. The list answer carries every key's
//!   `AccessKeySecret`; it is skipped while parsing (never copied into a
//!   string) and the raw body is zeroized.
//! - **create**: `CreateApiKey{SecretName, AccessKeyType:"auto"}` → secret
//!   fields `access_key_id` and `access_key_secret`; the id is the
//!   `AccessKeyId`, `created_at` the `CreatedTime`. Keys never expire.
//! - **after_create**: a key only works once bound to a usage plan. The new
//!   key is bound (`BindSecretIds`) to every plan in the policy's
//!   `create.usage_plans` and to every plan the old key is bound to. Any
//!   `UnsupportedOperation.*` answer (the SDK lists both
//!   `AlreadyBindUsagePlan` and `UnsupportedBindApiKey` for "already
//!   bound") is settled by reading the plan's keys back.
//! - **before_delete**: unbind the key from every plan it is bound to
//!   (`UnBindSecretIds`), then `DisableApiKey` (already disabled counts as
//!   done, checked by reading the key's status back). Any failed lookup
//!   stops before the disable.
//! - **delete**: `DeleteApiKey`; `ResourceNotFound.*` means already gone.
//!   `UnsupportedOperation.ResourceIsInUse` is evidence of a binding in a
//!   region rekey does not search: the key is re-enabled (`EnableApiKey`),
//!   the error says so, and this process never disables that key again.
//!
//! # Finding a key's usage plans
//!
//! The API has no "plans of this key" call, and `before_delete` is given
//! only the key id. So bindings are *discovered*: the provider lists every
//! usage plan of the configured `region` and of each of the optional
//! `regions` (`DescribeUsagePlansStatus`, paged, `X-TC-Region` per region)
//! plus the
//! plans it has seen in `create.usage_plans` since it started, and asks each
//! plan for its keys (`DescribeUsagePlanSecretIds`, paged). This survives
//! restarts (nothing is remembered that the API cannot tell again) and
//! finds bindings made by hand in the console, at the cost of one call per
//! plan. The CAM policy of rekey's SecretId therefore needs
//! `DescribeUsagePlansStatus` and `DescribeUsagePlanSecretIds` besides the
//! key actions.
//!
//! # Errors
//!
//! Tencent answers errors with HTTP 200 and `Response.Error{Code, Message}`
//! plus `Response.RequestId`, which every error carries. Classes:
//! `AuthFailure.*` and `UnauthorizedOperation.*` → `Auth`;
//! `RequestLimitExceeded[.*]` → `RateLimited` (retryable) except
//! `RequestLimitExceeded.IPLimitExceeded`, which the official SDK does not
//! retry (permanent); `LimitExceeded.*` → `Quota`; `InternalError[.*]` and
//! `ServiceUnavailable` → retryable `Api`; everything else permanent `Api`.
//! Because the HTTP status is always 200, the `status` of an `Api` error
//! from the envelope is the HTTP class the code stands for (500/503 for the
//! retryable ones, 404 for `ResourceNotFound.*`, 400 otherwise), not a
//! status that went over the wire; the message says so.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::http::{ProviderHttp, retry_after};
use super::{
    BuildError, Capabilities, CreateRequest, DeleteOutcome, NewKey, Outcome, Provider,
    ProviderError, ProviderErrorKind, ProviderKey, tc3,
};
use crate::config::raw::{RawSecretRef, S};
use crate::config::validate::{ProviderCx, ProviderSpec};
use crate::config::{Credential, ProviderAccount, ProviderConfig, ProviderKind, SecretRef};
use crate::secret::{Secret, SecretFields};

/// The signing service name.
pub const SERVICE: &str = "apigateway";
/// `X-TC-Version` of the API Gateway actions.
pub const VERSION: &str = "2018-08-08";
/// The content type sent and signed, byte for byte.
pub const CONTENT_TYPE: &str = "application/json";
/// Page size of every paged call (the documented maximum).
pub const PAGE_LIMIT: usize = 100;

/// The most pages one offset-paged list reads, whatever its `TotalCount`
/// says (as OceanBase's walk).
pub const MAX_PAGES: usize = 100_000;

/// Offset paging (`Limit`/`Offset`, `TotalCount`) with an end: a server
/// whose pages never end (a `TotalCount` that grows with every page, pages
/// that repeat) must not walk for ever, nor, since every page's keys are
/// kept until the walk ends, grow the daemon's memory without bound. A
/// list reads at most the pages its first page's `TotalCount` needs plus
/// a tenth and ten more (keys created while it walks shift later pages),
/// and never more than [`MAX_PAGES`].
#[derive(Debug, Default)]
struct Pager {
    offset: usize,
    pages: usize,
    bound: Option<usize>,
}

impl Pager {
    /// Account for a page of `n` items that said `total`: `Ok(true)` to
    /// read the next page (from [`Pager::offset`]), `Ok(false)` at the
    /// end, `Err` with why when the list did not end within its bound.
    fn next(&mut self, n: usize, total: Option<usize>) -> Result<bool, String> {
        self.pages += 1;
        let bound = *self.bound.get_or_insert_with(|| {
            let pages = total.unwrap_or(0).div_ceil(PAGE_LIMIT);
            pages
                .saturating_add(pages / 10)
                .saturating_add(10)
                .min(MAX_PAGES)
        });
        self.offset += n;
        if n == 0 || total.is_none_or(|t| self.offset >= t) {
            return Ok(false);
        }
        if self.pages >= bound {
            return Err(format!(
                "the list did not end after {} pages ({} items; the last page said {} in all)",
                self.pages,
                self.offset,
                total.unwrap_or(0)
            ));
        }
        Ok(true)
    }
}

/// Where a Unix timestamp for `X-TC-Timestamp` comes from (tests skew it).
pub type TimestampSource = Arc<dyn Fn() -> i64 + Send + Sync>;

/// A usage plan: plans live in a region.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Plan {
    pub region: String,
    pub id: String,
}

impl Plan {
    fn new(region: &str, id: &str) -> Self {
        Plan {
            region: region.to_string(),
            id: id.to_string(),
        }
    }
}

/// Tencent Cloud API Gateway keys through API 3.0.
pub struct TencentProvider {
    http: ProviderHttp,
    region: String,
    /// Further regions searched for usage plans (config `regions`).
    extra_regions: Vec<String>,
    secret_id: Secret,
    secret_key: Secret,
    /// `Host` as sent and signed: the endpoint's host, with its port when
    /// it is not the scheme's default.
    host: String,
    url: String,
    now: TimestampSource,
    /// Usage plans named by policies' `create.usage_plans` since start; a
    /// hint added to the plans the API lists, never the only source.
    known_plans: Mutex<BTreeSet<String>>,
    /// Keys whose delete answered `ResourceIsInUse` (bound to a plan no
    /// searched region shows): never disabled again by this process.
    unseen_bound: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for TencentProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TencentProvider")
            .field("provider", &self.http.provider)
            .field("endpoint", &self.http.endpoint)
            .field("region", &self.region)
            .field("secret_id", &self.secret_id)
            .field("secret_key", &self.secret_key)
            .finish()
    }
}

/// An error envelope, before it is classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
}

#[derive(Deserialize)]
struct Envelope<T> {
    #[serde(rename = "Response")]
    response: T,
}

#[derive(Deserialize)]
struct ErrorProbe {
    #[serde(rename = "Error")]
    error: Option<WireError>,
    #[serde(rename = "RequestId")]
    request_id: Option<String>,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(rename = "Code")]
    code: String,
    #[serde(rename = "Message", default)]
    message: String,
}

#[derive(Deserialize)]
struct ResultOf<T> {
    #[serde(rename = "Result")]
    result: Option<T>,
}

/// A secret string straight from JSON into a zeroizing [`Secret`].
struct WireSecret(Secret);

impl<'de> Deserialize<'de> for WireSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Zeroizing::new(String::deserialize(d)?);
        Ok(WireSecret(Secret::new(s.as_str())))
    }
}

/// One `ApiKey` as listed. `AccessKeySecret` is deliberately absent:
/// serde skips it without keeping it.
#[derive(Deserialize)]
struct ListedKey {
    #[serde(rename = "AccessKeyId")]
    access_key_id: String,
    #[serde(rename = "SecretName", default)]
    secret_name: Option<String>,
    #[serde(rename = "Status", default)]
    status: Option<i64>,
    #[serde(rename = "AccessKeyType", default)]
    access_key_type: Option<String>,
    #[serde(rename = "CreatedTime", default)]
    created_time: Option<String>,
}

#[derive(Deserialize)]
struct KeysPage {
    #[serde(rename = "TotalCount", default)]
    total_count: Option<usize>,
    #[serde(rename = "ApiKeySet", default)]
    api_key_set: Option<Vec<ListedKey>>,
}

#[derive(Deserialize)]
struct CreatedKey {
    #[serde(rename = "AccessKeyId")]
    access_key_id: String,
    #[serde(rename = "AccessKeySecret")]
    access_key_secret: WireSecret,
    #[serde(rename = "SecretName", default)]
    secret_name: Option<String>,
    #[serde(rename = "CreatedTime", default)]
    created_time: Option<String>,
}

#[derive(Deserialize)]
struct PlansPage {
    #[serde(rename = "TotalCount", default)]
    total_count: Option<usize>,
    #[serde(rename = "UsagePlanStatusSet", default)]
    usage_plan_status_set: Option<Vec<PlanItem>>,
}

#[derive(Deserialize)]
struct PlanItem {
    #[serde(rename = "UsagePlanId")]
    usage_plan_id: String,
}

#[derive(Deserialize)]
struct PlanKeysPage {
    #[serde(rename = "TotalCount", default)]
    total_count: Option<usize>,
    #[serde(rename = "AccessKeyList", default)]
    access_key_list: Option<Vec<PlanKey>>,
}

#[derive(Deserialize)]
struct PlanKey {
    #[serde(rename = "AccessKeyId", default)]
    access_key_id: Option<String>,
}

/// What went wrong parsing a JSON body, without serde_json's message:
/// that message can quote the offending value, which may be a secret.
pub fn json_problem(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Data => "unexpected field type or missing field",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// Longest provider message kept in an error.
const MAX_MESSAGE: usize = 300;

fn clip(s: &str) -> String {
    if s.chars().count() <= MAX_MESSAGE {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX_MESSAGE).collect();
        t.push('…');
        t
    }
}

/// Every code family of the API 3.0 common error list (PROTOCOLS §1.4).
pub const CODE_FAMILIES: &[&str] = &[
    "ActionOffline",
    "AuthFailure",
    "DryRunOperation",
    "FailedOperation",
    "InternalError",
    "InvalidAction",
    "InvalidParameter",
    "InvalidParameterValue",
    "InvalidRequest",
    "IpInBlacklist",
    "IpNotInWhitelist",
    "LimitExceeded",
    "MissingParameter",
    "NoSuchProduct",
    "NoSuchVersion",
    "RequestLimitExceeded",
    "RequestSizeLimitExceeded",
    "ResourceInUse",
    "ResourceInsufficient",
    "ResourceNotFound",
    "ResourceUnavailable",
    "ResponseSizeLimitExceeded",
    "ServiceUnavailable",
    "UnauthorizedOperation",
    "UnknownParameter",
    "UnsupportedOperation",
    "UnsupportedProtocol",
    "UnsupportedRegion",
];

/// The apigateway codes rekey acts on or documents (PROTOCOLS §2, the
/// SDK's `errors.go`), labelled as themselves in metrics.
pub const KNOWN_CODES: &[&str] = &[
    "AuthFailure.InvalidAuthorization",
    "AuthFailure.MFAFailure",
    "AuthFailure.SecretIdNotFound",
    "AuthFailure.SignatureExpire",
    "AuthFailure.SignatureFailure",
    "AuthFailure.TokenFailure",
    "AuthFailure.UnauthorizedOperation",
    "FailedOperation.AccessKeyExist",
    "FailedOperation.CamException",
    "InternalError.ApigwException",
    "InvalidParameter.FormatError",
    "InvalidParameterValue.InvalidAccessKeyIds",
    "InvalidParameterValue.InvalidFilterNotSupportedName",
    "InvalidParameterValue.InvalidRegion",
    "LimitExceeded.AccessKeyCountInUsagePlanLimitExceeded",
    "LimitExceeded.ApiKeyCountLimitExceeded",
    "LimitExceeded.RequestLimitExceeded",
    "RequestLimitExceeded.GlobalRegionUinLimitExceeded",
    "RequestLimitExceeded.IPLimitExceeded",
    "RequestLimitExceeded.UinLimitExceeded",
    "ResourceNotFound.InvalidAccessKeyId",
    "ResourceNotFound.InvalidUsagePlan",
    "UnauthorizedOperation.UncertifiedUser",
    "UnsupportedOperation.AlreadyBindUsagePlan",
    "UnsupportedOperation.InvalidStatus",
    "UnsupportedOperation.RequestPostError",
    "UnsupportedOperation.ResourceIsInUse",
    "UnsupportedOperation.UinNotInWhiteList",
    "UnsupportedOperation.UnsupportedBindApiKey",
    "UnsupportedOperation.UnsupportedUpdateApiKey",
];

/// The `code` label of `rekey_provider_requests_total` for an envelope
/// code: the code itself when in [`KNOWN_CODES`] or [`CODE_FAMILIES`],
/// else its family when that is known, else `other`. Bounded: the server
/// picks the code, and every distinct label is a series kept forever.
pub fn metric_code(code: &str) -> &'static str {
    if let Some(k) = KNOWN_CODES
        .iter()
        .chain(CODE_FAMILIES)
        .find(|k| **k == code)
    {
        return k;
    }
    let family = code.split('.').next().unwrap_or("");
    CODE_FAMILIES
        .iter()
        .find(|f| **f == family)
        .copied()
        .unwrap_or("other")
}

/// Longest envelope code kept (the longest real one is about 60).
const MAX_CODE: usize = 100;

fn clip_code(code: &str) -> String {
    super::one_line(code, MAX_CODE)
}

fn is_code(code: &str, family: &str) -> bool {
    code == family
        || code
            .strip_prefix(family)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// What an envelope code means for the world (see [`Outcome`]; the table
/// in README "Providers"), from the official SDK's error lists
/// (`tencentcloud/common/retry.py`, `apigateway/v20180808/errors.go`):
///
/// - `Retry`: `RequestLimitExceeded` and its `.UinLimitExceeded` /
///   `.GlobalRegionUinLimitExceeded` (the SDK's retry list),
///   `LimitExceeded.RequestLimitExceeded` (a rate limit despite its family),
///   `FailedOperation.CamException` (the permission check failed before the
///   action ran) and `ServiceUnavailable`.
/// - `Unknown`: `InternalError[.*]` and `UnsupportedOperation.RequestPostError`
///   (the gateway's internal call failed; the action may have run).
/// - `Refused`: everything else, including `RequestLimitExceeded.IPLimitExceeded`
///   (not in the SDK's retry list), quotas (`LimitExceeded.*`), auth and
///   parameter errors.
pub fn outcome_of(code: &str) -> Outcome {
    match code {
        "RequestLimitExceeded.IPLimitExceeded" => Outcome::Refused,
        "LimitExceeded.RequestLimitExceeded"
        | "FailedOperation.CamException"
        | "ServiceUnavailable" => Outcome::Retry,
        "UnsupportedOperation.RequestPostError" => Outcome::Unknown,
        c if is_code(c, "RequestLimitExceeded") => Outcome::Retry,
        c if is_code(c, "InternalError") => Outcome::Unknown,
        _ => Outcome::Refused,
    }
}

/// The error class of an envelope code (see the module doc).
pub fn classify(code: &str, message: &str) -> ProviderErrorKind {
    let text = format!("{code}: {}", clip(message));
    if is_code(code, "AuthFailure") || is_code(code, "UnauthorizedOperation") {
        return ProviderErrorKind::Auth(text);
    }
    if code == "RequestLimitExceeded.IPLimitExceeded" {
        return ProviderErrorKind::Api {
            status: 400,
            code: code.to_string(),
            message: format!("{} (HTTP 200 error envelope)", clip(message)),
        };
    }
    if is_code(code, "RequestLimitExceeded") || code == "LimitExceeded.RequestLimitExceeded" {
        return ProviderErrorKind::RateLimited { retry_after: None };
    }
    if is_code(code, "LimitExceeded") {
        return ProviderErrorKind::Quota(text);
    }
    let status = if is_code(code, "InternalError") {
        500
    } else if code == "ServiceUnavailable" || code == "FailedOperation.CamException" {
        503
    } else if code == "UnsupportedOperation.RequestPostError" {
        502
    } else if is_code(code, "ResourceNotFound") {
        404
    } else {
        400
    };
    ProviderErrorKind::Api {
        status,
        code: code.to_string(),
        message: format!("{} (HTTP 200 error envelope)", clip(message)),
    }
}

/// Parse a `CreatedTime` (documented `YYYY-MM-DDThh:mm:ssZ`; the other
/// forms of [`super::times`]).
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    super::times::parse_str("tencent-apigateway", s).ok()
}

/// The `Host` header for an endpoint URL.
pub fn host_of(endpoint: &str) -> Option<String> {
    let url = reqwest::Url::parse(endpoint).ok()?;
    let host = url.host_str()?;
    Some(match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    })
}

/// `create.usage_plans` as a set; anything but a list of non-empty strings
/// is an invalid request.
pub fn usage_plans(
    params: &serde_json::Map<String, Value>,
) -> Result<BTreeSet<String>, ProviderErrorKind> {
    let Some(v) = params.get("usage_plans") else {
        return Ok(BTreeSet::new());
    };
    let bad = || {
        ProviderErrorKind::Invalid(
            "create.usage_plans must be a list of usage plan ids (\"usagePlan-…\")".into(),
        )
    };
    let list = v.as_array().ok_or_else(bad)?;
    list.iter()
        .map(|p| match p.as_str() {
            Some(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            _ => Err(bad()),
        })
        .collect()
}

impl TencentProvider {
    pub fn new(cfg: &ProviderConfig, http: ProviderHttp) -> Result<Self, BuildError> {
        let ProviderKind::Tencent(TencentConfig {
            region,
            regions,
            secret_id,
            secret_key,
        }) = &cfg.kind
        else {
            return Err(BuildError(format!(
                "provider {}: not a tencent-apigateway provider",
                cfg.name
            )));
        };
        let resolve = |r: &crate::config::SecretRef, what: &str| {
            r.resolve_now()
                .map_err(|e| BuildError(format!("provider {}: {what}: {e}", cfg.name)))
        };
        let secret_id = resolve(secret_id, "secret_id")?;
        let secret_key = resolve(secret_key, "secret_key")?;
        let host = host_of(&http.endpoint).ok_or_else(|| {
            BuildError(format!(
                "provider {}: endpoint {} has no host",
                cfg.name, http.endpoint
            ))
        })?;
        let url = format!("{}/", http.endpoint);
        Ok(TencentProvider {
            http,
            region: region.clone(),
            extra_regions: regions.clone(),
            secret_id,
            secret_key,
            host,
            url,
            now: Arc::new(|| Utc::now().timestamp()),
            known_plans: Mutex::new(BTreeSet::new()),
            unseen_bound: Mutex::new(BTreeSet::new()),
        })
    }

    /// Take `X-TC-Timestamp` from `now` instead of the system clock.
    pub fn with_timestamps(mut self, now: TimestampSource) -> Self {
        self.now = now;
        self
    }

    fn error(&self, operation: &'static str, kind: ProviderErrorKind) -> ProviderError {
        self.http.error(operation, kind)
    }

    fn failure(&self, operation: &'static str, f: ApiFailure) -> ProviderError {
        let kind = classify(&f.code, &f.message);
        if matches!(kind, ProviderErrorKind::RateLimited { .. }) {
            // Throttles come in HTTP 200 envelopes: slow the shared pace.
            self.http.throttled(None);
        }
        self.error(operation, kind)
            .with_request_id(f.request_id)
            .with_class(outcome_of(&f.code))
    }

    /// Sign and send one action. `Ok(Err(_))` is an error envelope, left
    /// unclassified for the caller's special cases; `Err` is everything
    /// else (transport, HTTP status, unreadable body).
    pub async fn call<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        action: &'static str,
        params: &Value,
    ) -> Result<Result<Option<T>, ApiFailure>, ProviderError> {
        self.call_in(&self.region, operation, action, params).await
    }

    /// As [`call`](Self::call), in `region` (`X-TC-Region`).
    pub async fn call_in<T: DeserializeOwned>(
        &self,
        region: &str,
        operation: &'static str,
        action: &'static str,
        params: &Value,
    ) -> Result<Result<Option<T>, ApiFailure>, ProviderError> {
        let body = serde_json::to_vec(params)
            .map_err(|e| self.error(operation, ProviderErrorKind::Invalid(format!("body: {e}"))))?;
        let timestamp = (self.now)();
        let headers = [
            ("Content-Type", CONTENT_TYPE),
            ("Host", self.host.as_str()),
            ("X-TC-Action", action),
        ];
        let signed = tc3::sign(
            self.secret_id.expose(),
            self.secret_key.expose(),
            &tc3::SignInput {
                method: "POST",
                canonical_query: "",
                headers: &headers,
                payload: &body,
                timestamp,
                service: SERVICE,
            },
        )
        .ok_or_else(|| {
            self.error(
                operation,
                ProviderErrorKind::Invalid(format!("timestamp {timestamp} has no date")),
            )
        })?;
        let authorization = Zeroizing::new(signed.authorization);
        let req = self
            .http
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .header(reqwest::header::HOST, &self.host)
            .header("X-TC-Action", action)
            .header("X-TC-Version", VERSION)
            .header("X-TC-Timestamp", timestamp.to_string())
            .header("X-TC-Region", region)
            .header(reqwest::header::AUTHORIZATION, authorization.as_str())
            .body(body);
        let resp = match self.http.send_unrecorded(operation, req).await {
            Ok(r) => r,
            Err(e) => {
                self.http.record(operation, super::http::error_code(&e));
                return Err(e);
            }
        };
        let ours = Some(resp.request_id.clone());
        let status = resp.status;
        if status.as_u16() != 200 {
            self.http.record(operation, &status.as_u16().to_string());
        }
        // The body may hold key secrets (list, create): wiped on drop.
        let body = Zeroizing::new(resp.body);
        if status.as_u16() != 200 {
            let kind = if status.as_u16() == 429 {
                ProviderErrorKind::RateLimited {
                    retry_after: retry_after(&resp.headers),
                }
            } else {
                ProviderErrorKind::Api {
                    status: status.as_u16(),
                    code: format!("HTTP{}", status.as_u16()),
                    message: "unexpected HTTP status from the API 3.0 endpoint".into(),
                }
            };
            return Err(self.error(operation, kind).with_request_id(ours));
        }
        let protocol = |what: String| {
            self.error(operation, ProviderErrorKind::Protocol(what))
                .with_request_id(ours.clone())
        };
        let probe: Envelope<ErrorProbe> = serde_json::from_slice(&body).map_err(|e| {
            self.http.record(operation, "bad_envelope");
            protocol(format!(
                "{action}: response is not an API 3.0 envelope ({})",
                json_problem(&e)
            ))
        })?;
        // Server text: one bounded line, like the code.
        let request_id = probe
            .response
            .request_id
            .as_deref()
            .map(clip_code)
            .or(ours.clone());
        // The real outcome: an error envelope's code, not the HTTP 200
        // (as a bounded label: the server chooses the code).
        self.http.record(
            operation,
            probe
                .response
                .error
                .as_ref()
                .map_or("200", |e| metric_code(&e.code)),
        );
        if let Some(err) = probe.response.error {
            return Ok(Err(ApiFailure {
                code: clip_code(&err.code),
                message: err.message,
                request_id,
            }));
        }
        let parsed: Envelope<ResultOf<T>> = serde_json::from_slice(&body).map_err(|e| {
            self.error(
                operation,
                ProviderErrorKind::Protocol(format!(
                    "{action}: Response.Result has an unexpected shape ({})",
                    json_problem(&e)
                )),
            )
            .with_request_id(request_id.clone())
        })?;
        tracing::trace!(provider = %self.http.provider, action, request_id = request_id.as_deref().unwrap_or(""), "tencent action answered");
        Ok(Ok(parsed.response.result))
    }

    /// As [`call`](Self::call), with error envelopes classified and a
    /// missing `Result` refused.
    async fn call_ok<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        action: &'static str,
        params: &Value,
    ) -> Result<T, ProviderError> {
        self.call_ok_in(&self.region, operation, action, params)
            .await
    }

    async fn call_ok_in<T: DeserializeOwned>(
        &self,
        region: &str,
        operation: &'static str,
        action: &'static str,
        params: &Value,
    ) -> Result<T, ProviderError> {
        match self.call_in::<T>(region, operation, action, params).await? {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(self.error(
                operation,
                ProviderErrorKind::Protocol(format!("{action}: Response.Result is missing")),
            )),
            Err(f) => Err(self.failure(operation, f)),
        }
    }

    fn in_use_elsewhere(&self, key_id: &str) -> bool {
        self.unseen_bound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key_id)
    }

    fn mark_in_use_elsewhere(&self, key_id: &str) {
        self.unseen_bound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key_id.to_string());
    }

    fn unseen_bindings(&self, operation: &'static str, key_id: &str) -> ProviderError {
        let searched: Vec<&str> = self.plan_regions().collect();
        self.error(
            operation,
            ProviderErrorKind::Api {
                status: 409,
                code: "UnsupportedOperation.ResourceIsInUse".into(),
                message: format!(
                    "key {key_id} is bound to a usage plan rekey cannot see (searched regions: {}); it is kept enabled. Add the plan's region to `regions`, or unbind it by hand",
                    searched.join(", ")
                ),
            },
        )
        .with_class(Outcome::Refused)
    }

    fn remember_plans(&self, plans: &BTreeSet<String>) {
        if plans.is_empty() {
            return;
        }
        let mut k = self.known_plans.lock().unwrap_or_else(|p| p.into_inner());
        k.extend(plans.iter().cloned());
    }

    /// The regions searched for usage plans: the configured one first.
    fn plan_regions(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.region.as_str()).chain(self.extra_regions.iter().map(String::as_str))
    }

    /// Every usage plan of every searched region, plus the remembered ones
    /// (of the configured region). A region that cannot be listed fails
    /// the whole discovery: an unseen binding must stop a disable.
    async fn candidate_plans(&self) -> Result<BTreeSet<Plan>, ProviderError> {
        let mut plans: BTreeSet<Plan> = self
            .known_plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|id| Plan::new(&self.region, id))
            .collect();
        for region in self.plan_regions() {
            let mut pager = Pager::default();
            loop {
                let page: PlansPage = self
                    .call_ok_in(
                        region,
                        "list_usage_plans",
                        "DescribeUsagePlansStatus",
                        &json!({"Limit": PAGE_LIMIT, "Offset": pager.offset}),
                    )
                    .await?;
                let items = page.usage_plan_status_set.unwrap_or_default();
                let n = items.len();
                plans.extend(
                    items
                        .into_iter()
                        .map(|p| Plan::new(region, &p.usage_plan_id)),
                );
                let more = pager
                    .next(n, page.total_count)
                    .map_err(|m| self.error("list_usage_plans", ProviderErrorKind::Protocol(m)))?;
                if !more {
                    break;
                }
            }
        }
        Ok(plans)
    }

    /// Whether `key_id` is bound to `plan` (a plan that no longer exists
    /// holds nothing).
    async fn plan_has_key(&self, plan: &Plan, key_id: &str) -> Result<bool, ProviderError> {
        let mut pager = Pager::default();
        loop {
            let page = match self
                .call_in::<PlanKeysPage>(
                    &plan.region,
                    "list_plan_keys",
                    "DescribeUsagePlanSecretIds",
                    &json!({"UsagePlanId": plan.id, "Limit": PAGE_LIMIT, "Offset": pager.offset}),
                )
                .await?
            {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(false),
                Err(f) if is_code(&f.code, "ResourceNotFound") => return Ok(false),
                Err(f) => return Err(self.failure("list_plan_keys", f)),
            };
            let items = page.access_key_list.unwrap_or_default();
            let n = items.len();
            if items
                .iter()
                .any(|k| k.access_key_id.as_deref() == Some(key_id))
            {
                return Ok(true);
            }
            let more = pager
                .next(n, page.total_count)
                .map_err(|m| self.error("list_plan_keys", ProviderErrorKind::Protocol(m)))?;
            if !more {
                return Ok(false);
            }
        }
    }

    /// The usage plans `key_id` is bound to, discovered in every searched
    /// region (see the module doc).
    pub async fn plans_of(&self, key_id: &str) -> Result<BTreeSet<Plan>, ProviderError> {
        let mut bound = BTreeSet::new();
        for plan in self.candidate_plans().await? {
            if self.plan_has_key(&plan, key_id).await? {
                bound.insert(plan);
            }
        }
        Ok(bound)
    }

    /// Bind `key_id` to `plan`. Any `UnsupportedOperation.*` answer (the SDK
    /// lists both `AlreadyBindUsagePlan` and `UnsupportedBindApiKey` for
    /// "already bound") is settled by reading the plan's keys: bound means
    /// done, anything else is the error.
    async fn bind(&self, plan: &Plan, key_id: &str) -> Result<(), ProviderError> {
        match self
            .call_in::<bool>(
                &plan.region,
                "bind",
                "BindSecretIds",
                &json!({"UsagePlanId": plan.id, "AccessKeyIds": [key_id]}),
            )
            .await?
        {
            Ok(Some(false)) => Err(self.error(
                "bind",
                ProviderErrorKind::Protocol(format!(
                    "BindSecretIds answered false for usage plan {}",
                    plan.id
                )),
            )),
            Ok(_) => Ok(()),
            Err(f) if is_code(&f.code, "UnsupportedOperation") => {
                if self.plan_has_key(plan, key_id).await? {
                    tracing::debug!(provider = %self.http.provider, key = key_id, usage_plan = %plan.id, code = %f.code, "bind answered UnsupportedOperation; the key is bound already");
                    Ok(())
                } else {
                    Err(self.failure("bind", f))
                }
            }
            Err(f) => Err(self.failure("bind", f)),
        }
    }

    /// `Ok(false)` when the key does not exist any more.
    async fn unbind(&self, plan: &Plan, key_id: &str) -> Result<bool, ProviderError> {
        match self
            .call_in::<bool>(
                &plan.region,
                "unbind",
                "UnBindSecretIds",
                &json!({"UsagePlanId": plan.id, "AccessKeyIds": [key_id]}),
            )
            .await?
        {
            Ok(Some(false)) => Err(self.error(
                "unbind",
                ProviderErrorKind::Protocol(format!(
                    "UnBindSecretIds answered false for usage plan {}",
                    plan.id
                )),
            )),
            Ok(_) => Ok(true),
            Err(f) if f.code == "ResourceNotFound.InvalidUsagePlan" => Ok(true),
            Err(f) if f.code == "ResourceNotFound.InvalidAccessKeyId" => Ok(false),
            Err(f) => Err(self.failure("unbind", f)),
        }
    }

    /// A key's `Status` (1 enabled, 0 disabled), read through the list
    /// call filtered by id (whose secret is skipped like any list's).
    async fn key_status(&self, key_id: &str) -> Result<Option<i64>, ProviderError> {
        let page: KeysPage = self
            .call_ok(
                "describe_key_status",
                "DescribeApiKeysStatus",
                &json!({
                    "Limit": 1,
                    "Offset": 0,
                    "Filters": [{"Name": "AccessKeyId", "Values": [key_id]}],
                }),
            )
            .await?;
        Ok(page
            .api_key_set
            .unwrap_or_default()
            .into_iter()
            .find(|k| k.access_key_id == key_id)
            .and_then(|k| k.status))
    }

    async fn disable(&self, key_id: &str) -> Result<(), ProviderError> {
        match self
            .call::<bool>("disable", "DisableApiKey", &json!({"AccessKeyId": key_id}))
            .await?
        {
            Ok(Some(false)) => Err(self.error(
                "disable",
                ProviderErrorKind::Protocol("DisableApiKey answered false".into()),
            )),
            Ok(_) => Ok(()),
            // Gone already: the delete that follows reports NotFound.
            Err(f) if is_code(&f.code, "ResourceNotFound") => Ok(()),
            // "The key's state does not allow this": fine if it is
            // disabled already, which the status says.
            Err(f) if is_code(&f.code, "UnsupportedOperation") => {
                match self.key_status(key_id).await? {
                    Some(0) | None => Ok(()),
                    Some(_) => Err(self.failure("disable", f)),
                }
            }
            Err(f) => Err(self.failure("disable", f)),
        }
    }
}

#[async_trait]
impl Provider for TencentProvider {
    fn name(&self) -> &str {
        &self.http.provider
    }

    fn kind(&self) -> &'static str {
        "tencent-apigateway"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            can_list: true,
            can_delete: true,
            disable_before_delete: true,
            has_expiry: false,
            returns_id_on_create: true,
        }
    }

    async fn list(
        &self,
        keep: &(dyn for<'k> Fn(&'k str) -> bool + Send + Sync),
    ) -> Result<Vec<ProviderKey>, ProviderError> {
        // A key repeated by offset paging is listed once (the first
        // occurrence): `into_keys` drops repeats.
        let mut table = super::listing::KeyTable::default();
        self.list_into(keep, &mut table).await?;
        Ok(table.into_keys())
    }

    /// Each page's kept keys go straight into `into` (the id and name
    /// bytes, a fixed-size row, the meta map stored once per run of equal
    /// maps): a walk never holds a `ProviderKey` per key. Repeats are
    /// pushed; the table drops them (first occurrence wins).
    async fn list_into(
        &self,
        keep: &(dyn for<'k> Fn(&'k str) -> bool + Send + Sync),
        into: &mut super::listing::KeyTable,
    ) -> Result<(), ProviderError> {
        let mut pager = Pager::default();
        loop {
            let page: KeysPage = self
                .call_ok(
                    "list",
                    "DescribeApiKeysStatus",
                    &json!({"Limit": PAGE_LIMIT, "Offset": pager.offset}),
                )
                .await?;
            let items = page.api_key_set.unwrap_or_default();
            let n = items.len();
            for k in items {
                let name = k.secret_name.unwrap_or_default();
                if !keep(&name) {
                    continue;
                }
                let mut meta = std::collections::BTreeMap::new();
                if let Some(s) = k.status {
                    meta.insert(
                        "status".to_string(),
                        Value::from(if s == 1 { "enabled" } else { "disabled" }),
                    );
                }
                if let Some(t) = k.access_key_type {
                    meta.insert("access_key_type".to_string(), Value::from(t));
                }
                let created_at = match k.created_time.as_deref().map(str::trim) {
                    None | Some("") => None,
                    Some(raw) => match super::times::parse_str("tencent-apigateway", raw) {
                        Ok(t) => Some(t),
                        Err(raw) => {
                            meta.insert(
                                super::META_UNKNOWN_TIME.to_string(),
                                json!({ "CreatedTime": raw }),
                            );
                            None
                        }
                    },
                };
                into.push(&k.access_key_id, &name, created_at, None, meta);
            }
            let more = pager
                .next(n, page.total_count)
                .map_err(|m| self.error("list", ProviderErrorKind::Protocol(m)))?;
            if !more {
                break;
            }
        }
        Ok(())
    }

    async fn create(&self, req: &CreateRequest<'_>) -> Result<NewKey, ProviderError> {
        let plans = usage_plans(req.params).map_err(|k| self.error("create", k))?;
        self.remember_plans(&plans);
        let created: CreatedKey = self
            .call_ok(
                "create",
                "CreateApiKey",
                &json!({"SecretName": req.name, "AccessKeyType": "auto"}),
            )
            .await?;
        let mut secret = SecretFields::new();
        secret.insert("access_key_id", Secret::new(created.access_key_id.clone()));
        secret.insert("access_key_secret", created.access_key_secret.0);
        Ok(NewKey {
            id: Some(created.access_key_id),
            name: created.secret_name.unwrap_or_else(|| req.name.to_string()),
            created_at: created.created_time.as_deref().and_then(parse_time),
            expires_at: None,
            secret,
            unreadable: None,
        })
    }

    async fn after_create(
        &self,
        new_key_id: &str,
        old_key_id: Option<&str>,
        params: &serde_json::Map<String, Value>,
    ) -> Result<(), ProviderError> {
        let named = usage_plans(params).map_err(|k| self.error("bind", k))?;
        self.remember_plans(&named);
        let mut targets: BTreeSet<Plan> =
            named.iter().map(|id| Plan::new(&self.region, id)).collect();
        if let Some(old) = old_key_id {
            targets.extend(self.plans_of(old).await?);
        }
        if targets.is_empty() {
            tracing::warn!(provider = %self.http.provider, new_key = new_key_id, "the new key is bound to no usage plan (none in create.usage_plans, none on the old key); it cannot call any API until it is bound");
        }
        for plan in &targets {
            self.bind(plan, new_key_id).await?;
        }
        tracing::info!(provider = %self.http.provider, new_key = new_key_id, old_key = old_key_id.unwrap_or("-"), usage_plans = %targets.iter().map(|p| format!("{}/{}", p.region, p.id)).collect::<Vec<_>>().join(","), "new key bound to its usage plans");
        Ok(())
    }

    async fn before_delete(&self, key_id: &str) -> Result<(), ProviderError> {
        if self.in_use_elsewhere(key_id) {
            return Err(self.unseen_bindings("disable", key_id));
        }
        // Any failed lookup returns here, before DisableApiKey.
        let plans = self.plans_of(key_id).await?;
        for plan in &plans {
            if !self.unbind(plan, key_id).await? {
                return Ok(());
            }
        }
        self.disable(key_id).await?;
        tracing::info!(provider = %self.http.provider, key = key_id, usage_plans = %plans.iter().map(|p| format!("{}/{}", p.region, p.id)).collect::<Vec<_>>().join(","), "old key unbound and disabled");
        Ok(())
    }

    async fn delete(&self, key_id: &str) -> Result<DeleteOutcome, ProviderError> {
        match self
            .call::<bool>("delete", "DeleteApiKey", &json!({"AccessKeyId": key_id}))
            .await?
        {
            Ok(Some(false)) => Err(self.error(
                "delete",
                ProviderErrorKind::Protocol("DeleteApiKey answered false".into()),
            )),
            Ok(_) => Ok(DeleteOutcome::Deleted),
            Err(f) if is_code(&f.code, "ResourceNotFound") => Ok(DeleteOutcome::NotFound),
            Err(f) if f.code == "UnsupportedOperation.ResourceIsInUse" => {
                // Bound to a plan no searched region showed: the disable cut
                // those services off. Put the key back in service and stop
                // touching it until a human adds the region (or unbinds).
                self.mark_in_use_elsewhere(key_id);
                match self
                    .call::<bool>("enable", "EnableApiKey", &json!({"AccessKeyId": key_id}))
                    .await
                {
                    Ok(Ok(_)) => {
                        tracing::error!(provider = %self.http.provider, key = key_id, "the old key is bound to a usage plan in a region rekey does not search; it was re-enabled and is kept")
                    }
                    _ => {
                        tracing::error!(provider = %self.http.provider, key = key_id, "the old key is bound to a usage plan in a region rekey does not search, and re-enabling it failed: enable it by hand")
                    }
                }
                Err(self
                    .unseen_bindings("delete", key_id)
                    .with_request_id(f.request_id))
            }
            Err(f) => Err(self.failure("delete", f)),
        }
    }
}

/// `[providers.NAME]` of `kind = "tencent-apigateway"` as written: its own
/// keys (the common ones are `config::raw::RawProvider`'s).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTencentConfig {
    pub region: Option<S<String>>,
    /// More regions searched for usage plans bound to a key.
    pub regions: Option<S<Vec<String>>>,
    pub secret_id: Option<S<RawSecretRef>>,
    pub secret_key: Option<S<RawSecretRef>>,
}

/// A validated `kind = "tencent-apigateway"` provider.
#[derive(Debug, Clone)]
pub struct TencentConfig {
    /// `X-TC-Region` of every call: where keys are listed and created.
    pub region: String,
    /// Further regions whose usage plans are searched for a key's
    /// bindings (the configured `region` always is).
    pub regions: Vec<String>,
    /// The TC3 signing pair (PROTOCOLS §2).
    pub secret_id: SecretRef,
    pub secret_key: SecretRef,
}

impl ProviderAccount for TencentConfig {
    fn account(&self) -> String {
        format!("secret_id={:?}", self.secret_id)
    }

    fn credentials(&self) -> Vec<(&'static str, Credential<'_>)> {
        vec![
            ("secret_id", Credential::Secret(&self.secret_id)),
            ("secret_key", Credential::Secret(&self.secret_key)),
        ]
    }

    /// `regions` only widens where usage plans are searched; the key list
    /// is the request region's.
    fn listing_scope(&self) -> String {
        format!(" region={}", self.region)
    }
}

/// The `tencent-apigateway` kind's config rules (see [`ProviderSpec`]):
/// `region`, optional extra `regions` searched for usage plans, the
/// SecretId/SecretKey pair; 20 requests/s by default (the documented
/// per-API limit); `create.usage_plans` only.
pub struct Spec;

impl ProviderSpec for Spec {
    fn kind(&self) -> &'static str {
        "tencent-apigateway"
    }

    fn default_endpoint(&self) -> &'static str {
        "https://apigateway.tencentcloudapi.com"
    }

    fn default_rate(&self) -> Option<f64> {
        Some(20.0)
    }

    fn keys(&self) -> &'static [&'static str] {
        &["region", "regions", "secret_id", "secret_key"]
    }

    fn validate(&self, cx: &mut ProviderCx<'_, '_, '_>) -> Option<ProviderKind> {
        let raw: RawTencentConfig = cx.parse()?;
        let region = cx
            .required(&raw.region, "region")
            .map(|s| s.get_ref().clone());
        let id = cx
            .required(&raw.secret_id, "secret_id")
            .and_then(|s| cx.secret(s, "secret_id"));
        let key = cx
            .required(&raw.secret_key, "secret_key")
            .and_then(|s| cx.secret(s, "secret_key"));
        let mut regions = Vec::new();
        if let Some(r) = &raw.regions {
            for name in r.get_ref() {
                let name = name.trim();
                let ok =
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
                if !ok {
                    cx.error_hint(
                        r.span(),
                        format!("region {name:?} is not a Tencent Cloud region name"),
                        "write region names like \"ap-guangzhou\"",
                    );
                    return None;
                }
                if Some(name) != region.as_deref() && !regions.iter().any(|x| x == name) {
                    regions.push(name.to_string());
                }
            }
        }
        Some(ProviderKind::Tencent(TencentConfig {
            region: region?,
            regions,
            secret_id: id?,
            secret_key: key?,
        }))
    }

    fn secret_fields(&self) -> Option<&'static [&'static str]> {
        Some(&["access_key_id", "access_key_secret"])
    }

    fn build(
        &self,
        cfg: &ProviderConfig,
        http: ProviderHttp,
    ) -> Result<super::SharedProvider, BuildError> {
        Ok(std::sync::Arc::new(TencentProvider::new(cfg, http)?))
    }

    fn create_keys(&self) -> &'static [&'static str] {
        &["usage_plans"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(code: &str) -> (bool, &'static str) {
        let e = ProviderError::new("gw", "op", classify(code, "m")).with_class(outcome_of(code));
        let variant = match e.kind {
            ProviderErrorKind::Auth(_) => "auth",
            ProviderErrorKind::RateLimited { .. } => "rate",
            ProviderErrorKind::Quota(_) => "quota",
            ProviderErrorKind::Api { .. } => "api",
            _ => "other",
        };
        (e.is_retryable(), variant)
    }

    /// Offset paging ends where the pages say, and a list whose pages
    /// never end stops at its first page's count plus a tenth and ten more
    /// pages, never past [`MAX_PAGES`] (before, a `TotalCount` that kept
    /// ahead of the offset was walked for ever).
    #[test]
    fn paging_ends_where_the_pages_say_and_an_endless_list_stops() {
        let walk = |pages: &[(usize, Option<usize>)]| {
            let mut p = Pager::default();
            let mut read = 0;
            for &(n, total) in pages {
                read += 1;
                match p.next(n, total) {
                    Ok(true) => continue,
                    Ok(false) => return Ok(read),
                    Err(e) => return Err(e),
                }
            }
            Ok(read)
        };
        assert_eq!(
            walk(&[(100, Some(250)), (100, Some(250)), (50, Some(250))]),
            Ok(3)
        );
        assert_eq!(walk(&[(100, Some(250)), (0, Some(250))]), Ok(2));
        assert_eq!(walk(&[(100, None)]), Ok(1));
        // Keys created while it walks: the count grows a little.
        let growing: Vec<_> = (0..4).map(|i| (100, Some(300 + 20 * i))).collect();
        assert_eq!(walk(&growing), Ok(4));
        // A count that always promises one more page.
        let endless: Vec<_> = (0..1000).map(|i| (100, Some(100 * i + 101))).collect();
        let e = walk(&endless).unwrap_err();
        assert!(e.starts_with("the list did not end after 12 pages"), "{e}");
        // A first page that promises more than MAX_PAGES pages.
        let mut p = Pager::default();
        let mut pages = 0;
        while let Ok(true) = p.next(100, Some(usize::MAX)) {
            pages += 1;
        }
        assert_eq!(pages + 1, MAX_PAGES);
    }

    #[test]
    fn envelope_codes_map_to_error_classes() {
        assert_eq!(class("AuthFailure.SignatureFailure"), (false, "auth"));
        assert_eq!(class("AuthFailure.SignatureExpire"), (false, "auth"));
        assert_eq!(
            class("UnauthorizedOperation.UncertifiedUser"),
            (false, "auth")
        );
        assert_eq!(class("RequestLimitExceeded"), (true, "rate"));
        assert_eq!(
            class("RequestLimitExceeded.UinLimitExceeded"),
            (true, "rate")
        );
        assert_eq!(
            class("RequestLimitExceeded.GlobalRegionUinLimitExceeded"),
            (true, "rate")
        );
        assert_eq!(
            class("RequestLimitExceeded.IPLimitExceeded"),
            (false, "api")
        );
        assert_eq!(
            class("LimitExceeded.ApiKeyCountLimitExceeded"),
            (false, "quota")
        );
        assert_eq!(class("InternalError"), (true, "api"));
        assert_eq!(class("InternalError.ApigwException"), (true, "api"));
        assert_eq!(class("ServiceUnavailable"), (true, "api"));
        assert_eq!(class("RequestSizeLimitExceeded"), (false, "api"));
        assert_eq!(class("UnsupportedOperation.InvalidStatus"), (false, "api"));
        assert_eq!(class("InvalidParameter.FormatError"), (false, "api"));
        // A family name must be followed by a dot, not just any suffix.
        assert_eq!(class("AuthFailureX"), (false, "api"));
    }

    #[test]
    fn rate_limits_and_transient_sdk_codes_are_retried_and_quotas_refused() {
        assert_eq!(class("LimitExceeded.RequestLimitExceeded"), (true, "rate"));
        assert_eq!(class("FailedOperation.CamException"), (true, "api"));
        assert_eq!(
            class("UnsupportedOperation.RequestPostError"),
            (true, "api")
        );
        let o = |c: &str| outcome_of(c);
        assert_eq!(o("LimitExceeded.RequestLimitExceeded"), Outcome::Retry);
        assert_eq!(o("RequestLimitExceeded.UinLimitExceeded"), Outcome::Retry);
        assert_eq!(o("FailedOperation.CamException"), Outcome::Retry);
        assert_eq!(o("UnsupportedOperation.RequestPostError"), Outcome::Unknown);
        assert_eq!(o("InternalError.ApigwException"), Outcome::Unknown);
        assert_eq!(
            o("LimitExceeded.ApiKeyCountLimitExceeded"),
            Outcome::Refused
        );
        assert_eq!(o("RequestLimitExceeded.IPLimitExceeded"), Outcome::Refused);
        assert_eq!(o("InvalidParameter.FormatError"), Outcome::Refused);
    }

    #[test]
    fn times_parse_in_both_shapes() {
        let t = parse_time("2020-02-26T06:10:01Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2020-02-26T06:10:01+00:00");
        // Zoneless: Beijing time, as the vendor's own zone.
        assert_eq!(parse_time("2020-02-26 14:10:01"), Some(t));
        assert!(parse_time("yesterday").is_none());
    }

    #[test]
    fn host_keeps_a_non_default_port() {
        assert_eq!(
            host_of("https://apigateway.tencentcloudapi.com").as_deref(),
            Some("apigateway.tencentcloudapi.com")
        );
        assert_eq!(
            host_of("http://127.0.0.1:8080").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(
            host_of("https://example.com:443").as_deref(),
            Some("example.com")
        );
    }

    #[test]
    fn usage_plans_must_be_a_list_of_ids() {
        let mut p = serde_json::Map::new();
        assert!(usage_plans(&p).unwrap().is_empty());
        p.insert("usage_plans".into(), json!(["usagePlan-a", "usagePlan-b"]));
        assert_eq!(usage_plans(&p).unwrap().len(), 2);
        p.insert("usage_plans".into(), json!("usagePlan-a"));
        assert!(matches!(
            usage_plans(&p),
            Err(ProviderErrorKind::Invalid(_))
        ));
        p.insert("usage_plans".into(), json!([""]));
        assert!(usage_plans(&p).is_err());
    }

    #[test]
    fn listing_skips_the_secret_field() {
        let body = br#"{"TotalCount":1,"ApiKeySet":[{"AccessKeyId":"AKID1","AccessKeySecret":"topsecret","SecretName":"app","Status":1,"CreatedTime":"2020-02-26T06:09:44Z"}]}"#;
        let page: KeysPage = serde_json::from_slice(body).unwrap();
        let k = &page.api_key_set.as_ref().unwrap()[0];
        assert_eq!(k.access_key_id, "AKID1");
        assert_eq!(k.secret_name.as_deref(), Some("app"));
    }
}
