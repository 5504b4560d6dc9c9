//! The client side of the status endpoint, for `rekey status` and
//! `rekey rotate`: a small HTTP/1.1 client (hyper's connection API) over
//! TCP (`http://HOST:PORT`) or a Unix socket (`unix:/path`), plus the table
//! `rekey status` prints.
//!
//! The admin token is sent only as a sensitive `Authorization` header and
//! never appears in an error or in anything printed.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use chrono::{DateTime, TimeDelta, Utc};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use zeroize::Zeroizing;

use super::{Health, KeyState, PolicyStatus, RotateReply, Snapshot};
use crate::config::ListenAddr;
use crate::secret::Secret;

/// Where `rekey status` and `rekey rotate` look by default (DESIGN §2).
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:9477";

/// Largest response accepted (a `/status` of 10,000 keys is about 2 MiB).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// A daemon's status endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Http { host: String, port: u16 },
    Unix(PathBuf),
}

impl Endpoint {
    /// `http://HOST[:PORT][/]` (port 80 when absent, as in any URL) or
    /// `unix:/path/to/socket`.
    pub fn parse(text: &str) -> Result<Self, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidEndpoint {
            endpoint: text.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(invalid("write unix:/path/to/socket"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let uri: Uri = text
            .parse()
            .map_err(|_| invalid("expected http://HOST:PORT or unix:/path"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(invalid(
                    "the status endpoint speaks plain HTTP (loopback or a Unix socket); use http:// or unix:",
                ));
            }
            _ => return Err(invalid("expected http://HOST:PORT or unix:/path")),
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid("give only the scheme, host and port"));
        }
        let host = uri
            .host()
            .ok_or_else(|| invalid("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Endpoint::Http {
            host,
            port: uri.port_u16().unwrap_or(80),
        })
    }

    /// The endpoint a daemon listening on `listen` answers at; a wildcard
    /// address (`0.0.0.0`, `::`) is reached through loopback.
    pub fn from_listen(listen: &ListenAddr) -> Self {
        match listen {
            ListenAddr::Tcp(a) => {
                let ip = match a.ip() {
                    IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
                    IpAddr::V6(v6) if v6.is_unspecified() => {
                        IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
                    }
                    ip => ip,
                };
                Endpoint::Http {
                    host: ip.to_string(),
                    port: a.port(),
                }
            }
            ListenAddr::Unix(p) => Endpoint::Unix(p.clone()),
        }
    }

    /// Whether a bearer token sent here stays on this machine.
    pub fn is_local(&self) -> bool {
        match self {
            Endpoint::Unix(_) => true,
            Endpoint::Http { host, .. } => {
                host.eq_ignore_ascii_case("localhost")
                    || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }
        }
    }

    fn host_header(&self) -> String {
        match self {
            Endpoint::Http { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            Endpoint::Http { host, port } => format!("{host}:{port}"),
            Endpoint::Unix(_) => "localhost".to_string(),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Http { .. } => write!(f, "http://{}", self.host_header()),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("cannot reach rekey at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("unexpected answer from rekey at {endpoint}: {reason}")]
    BadResponse { endpoint: String, reason: String },
}

/// One HTTP answer, body read whole.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the daemon said to `POST /rotate/{policy}`.
#[derive(Debug, Clone)]
pub struct RotateOutcome {
    pub status: StatusCode,
    /// The daemon's reply, when the request reached it.
    pub reply: Option<RotateReply>,
    /// The endpoint's explanation for anything but 202.
    pub error: Option<String>,
}

impl RotateOutcome {
    pub fn accepted(&self) -> bool {
        self.status == StatusCode::ACCEPTED
    }
}

/// A client for one endpoint.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
    /// Bound on one whole exchange (connect, send, read).
    timeout: Duration,
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Self {
        Client {
            endpoint,
            timeout: Duration::from_secs(20),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// `GET /status` as served (the bytes `--json` prints); errors unless 200.
    pub async fn status_raw(&self) -> Result<Bytes, ClientError> {
        let resp = self.send(Method::GET, "/status", None).await?;
        if resp.status != StatusCode::OK {
            return Err(self.bad(format!(
                "GET /status answered {}: {}",
                resp.status,
                error_text(&resp.body)
            )));
        }
        Ok(resp.body)
    }

    /// `GET /status`, parsed.
    pub async fn status(&self) -> Result<Snapshot, ClientError> {
        let body = self.status_raw().await?;
        parse_snapshot(&body).map_err(|reason| self.bad(reason))
    }

    /// `POST /rotate/{policy}[?lineage=..][&revoke_old_immediately=true]`
    /// with `Authorization: Bearer <token>` when a token is given (the admin
    /// socket needs none: reaching it is the authorization).
    pub async fn rotate(
        &self,
        policy: &str,
        lineage: Option<&str>,
        revoke_old_immediately: bool,
        token: Option<&Secret>,
    ) -> Result<RotateOutcome, ClientError> {
        let mut query = Vec::new();
        if let Some(l) = lineage {
            query.push(format!("lineage={}", percent_encode(l)));
        }
        if revoke_old_immediately {
            query.push("revoke_old_immediately=true".to_string());
        }
        let mut path = format!("/rotate/{}", percent_encode(policy));
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query.join("&"));
        }
        let resp = self.send(Method::POST, &path, token).await?;
        let value: Option<serde_json::Value> = serde_json::from_slice(&resp.body).ok();
        let reply = value
            .as_ref()
            .and_then(|v| serde_json::from_value::<RotateReply>(v.clone()).ok());
        let error = if resp.status == StatusCode::ACCEPTED {
            None
        } else {
            Some(error_text(&resp.body))
        };
        if resp.status == StatusCode::ACCEPTED && reply.is_none() {
            return Err(self.bad("202 without a rotate reply".to_string()));
        }
        Ok(RotateOutcome {
            status: resp.status,
            reply,
            error,
        })
    }

    /// One request on a fresh connection, bounded by the client timeout.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        bearer: Option<&Secret>,
    ) -> Result<Response, ClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(header::HOST, self.endpoint.host_header())
            .header(
                header::USER_AGENT,
                concat!("rekey/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| ClientError::InvalidEndpoint {
                endpoint: self.endpoint.to_string(),
                reason: format!("bad request path: {e}"),
            })?;
        if let Some(token) = bearer {
            let line = Zeroizing::new(format!("Bearer {}", token.expose()));
            let mut value = HeaderValue::from_str(&line).map_err(|_| {
                self.unreachable(
                    "the admin token contains characters not allowed in an HTTP header",
                )
            })?;
            value.set_sensitive(true);
            req.headers_mut().insert(header::AUTHORIZATION, value);
        }
        let exchange = async {
            match &self.endpoint {
                Endpoint::Http { host, port } => {
                    let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                        .await
                        .map_err(|e| self.unreachable(&e.to_string()))?;
                    self.exchange(stream, req).await
                }
                Endpoint::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|e| self.unreachable(&e.to_string()))?;
                    self.exchange(stream, req).await
                }
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                self.unreachable(&format!(
                    "no answer within {}",
                    crate::clock::human(self.timeout)
                ))
            })?
    }

    async fn exchange<S>(
        &self,
        stream: S,
        req: Request<Empty<Bytes>>,
    ) -> Result<Response, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unreachable(&e.to_string()))?;
        let conn = tokio::spawn(conn);
        let result = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| self.unreachable(&e.to_string()))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| self.bad(format!("reading the body: {e}")))?
                .to_bytes();
            Ok(Response {
                status,
                headers,
                body,
            })
        }
        .await;
        drop(sender);
        conn.abort();
        result
    }

    fn unreachable(&self, reason: &str) -> ClientError {
        ClientError::Unreachable {
            endpoint: self.endpoint.to_string(),
            reason: reason.to_string(),
        }
    }

    fn bad(&self, reason: String) -> ClientError {
        ClientError::BadResponse {
            endpoint: self.endpoint.to_string(),
            reason,
        }
    }
}

/// Parse a `/status` document.
pub fn parse_snapshot(body: &[u8]) -> Result<Snapshot, String> {
    serde_json::from_slice(body).map_err(|e| format!("not a status document: {e}"))
}

/// `rekey status` exits 0 only when this holds.
pub fn all_healthy(snapshot: &Snapshot) -> bool {
    snapshot.policies.iter().all(|p| p.health.is_healthy())
}

/// The `error` field of a JSON error body, else the body as text (capped).
pub fn error_text(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_string))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            one_line(&text.chars().take(300).collect::<String>())
        })
}

/// Percent-encode everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A duration as its two largest units: `6d 23h`, `3h 12m`, `12m 5s`, `45s`.
pub fn humanize(d: TimeDelta) -> String {
    crate::clock::human(std::time::Duration::from_secs(
        d.num_seconds().unsigned_abs(),
    ))
}

fn until(at: Option<DateTime<Utc>>, now: DateTime<Utc>, past: &str) -> String {
    match at {
        None => "-".to_string(),
        Some(at) if at > now => format!("in {}", humanize(at - now)),
        Some(at) => format!("{past} {} ago", humanize(now - at)),
    }
}

/// One table cell: control characters (and other line or terminal
/// tricks) escaped visibly, never passed to the terminal.
fn one_line(s: &str) -> String {
    crate::logging::escape(s).into_owned()
}

/// The `rekey status` table: one row per policy and, for a policy with
/// several lineages, one indented row per lineage.
pub fn render_table(snapshot: &Snapshot, now: DateTime<Utc>) -> String {
    let mut rows: Vec<[String; 7]> = vec![[
        "POLICY".into(),
        "HEALTH".into(),
        "CURRENT KEY".into(),
        "EXPIRES IN".into(),
        "NEXT CHECK".into(),
        "LAST ROTATION".into(),
        "ERROR".into(),
    ]];
    for p in &snapshot.policies {
        let last_rotation = p
            .last_rotation
            .as_ref()
            .map(|r| {
                let at = r.finished_at.unwrap_or(r.started_at);
                format!("{} {} ago", r.state, humanize(now - at))
            })
            .unwrap_or_else(|| "-".into());
        let error = p
            .error
            .as_deref()
            .or(p.last_rotation.as_ref().and_then(|r| r.error.as_deref()))
            .map(one_line)
            .unwrap_or_default();
        let next_check = until(p.next_check_at, now, "due");
        if p.lineages.len() <= 1 {
            let (key, expires) = match p.lineages.first() {
                Some(l) => current_key(p, l.current_key(), l.name(), now),
                None => current_key(p, None, "", now),
            };
            rows.push([
                p.name.clone(),
                p.health.as_str().into(),
                key,
                expires,
                next_check,
                last_rotation,
                error,
            ]);
        } else {
            let current: Vec<_> = p
                .keys
                .iter()
                .filter(|k| k.state() == KeyState::Current)
                .collect();
            let soonest = current.iter().filter_map(|k| k.expires_at()).min();
            let expires = match soonest {
                None if !current.is_empty() => "never".into(),
                at => until(at, now, "expired"),
            };
            rows.push([
                p.name.clone(),
                p.health.as_str().into(),
                format!("({} lineages)", p.lineages.len()),
                expires,
                next_check,
                last_rotation,
                error,
            ]);
            for l in p.lineages.iter() {
                let (key, expires) = current_key(p, l.current_key(), l.name(), now);
                let msg = if l.health().is_healthy() || l.health() == Health::Due {
                    String::new()
                } else {
                    one_line(&l.message())
                };
                rows.push([
                    format!("  └ {}", l.name()),
                    l.health().as_str().into(),
                    key,
                    expires,
                    String::new(),
                    String::new(),
                    msg,
                ]);
            }
        }
    }
    // Every cell may hold an outside string (key and lineage names, ids,
    // errors): escaped before it reaches the terminal.
    for row in rows.iter_mut() {
        for cell in row.iter_mut() {
            if let std::borrow::Cow::Owned(e) = crate::logging::escape(cell) {
                *cell = e;
            }
        }
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if snapshot.policies.is_empty() {
        out.push_str("(no policies)\n");
    }
    out
}

/// The current key's name and "expires in" cell for one lineage: the key
/// the lineage names, else the lineage's key in state `current`.
fn current_key(
    p: &PolicyStatus,
    named: Option<&str>,
    lineage: &str,
    now: DateTime<Utc>,
) -> (String, String) {
    let key = match named {
        Some(n) => p.keys.iter().find(|k| k.id() == n || k.name() == n),
        None => p.keys.iter().find(|k| {
            k.state() == KeyState::Current && (lineage.is_empty() || k.lineage() == lineage)
        }),
    };
    match (key, named) {
        (Some(k), _) => (
            k.name().to_string(),
            match k.expires_at() {
                None => "never".into(),
                at => until(at, now, "expired"),
            },
        ),
        (None, Some(n)) => (n.to_string(), "?".into()),
        (None, None) => ("-".into(), "-".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_http_and_unix_and_refuse_the_rest() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:9477").unwrap(),
            Endpoint::Http {
                host: "127.0.0.1".into(),
                port: 9477
            }
        );
        assert_eq!(
            Endpoint::parse("http://[::1]:9/").unwrap(),
            Endpoint::Http {
                host: "::1".into(),
                port: 9
            }
        );
        assert_eq!(
            Endpoint::parse("unix:/run/rekey/status.sock").unwrap(),
            Endpoint::Unix("/run/rekey/status.sock".into())
        );
        for bad in [
            "https://x:1",
            "ftp://x",
            "127.0.0.1:9477",
            "http://x:1/api",
            "unix:",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Endpoint::parse("http://[::1]:9").unwrap().to_string(),
            "http://[::1]:9"
        );
    }

    #[test]
    fn wildcard_listen_addresses_are_reached_through_loopback() {
        let e = Endpoint::from_listen(&ListenAddr::Tcp("0.0.0.0:9477".parse().unwrap()));
        assert_eq!(e.to_string(), "http://127.0.0.1:9477");
        assert!(e.is_local());
        assert!(!Endpoint::parse("http://10.0.0.1:1").unwrap().is_local());
    }

    #[test]
    fn humanize_keeps_the_two_largest_units() {
        assert_eq!(humanize(TimeDelta::seconds(45)), "45s");
        assert_eq!(humanize(TimeDelta::seconds(125)), "2m 5s");
        assert_eq!(
            humanize(TimeDelta::seconds(3 * 3600 + 12 * 60 + 9)),
            "3h 12m"
        );
        assert_eq!(
            humanize(TimeDelta::seconds(6 * 86400 + 23 * 3600 + 59)),
            "6d 23h"
        );
        assert_eq!(humanize(TimeDelta::seconds(-90)), "1m 30s");
        assert_eq!(humanize(TimeDelta::seconds(7200)), "2h");
    }

    #[test]
    fn percent_encode_leaves_unreserved_alone() {
        assert_eq!(percent_encode("app-main_1.x~"), "app-main_1.x~");
        assert_eq!(percent_encode("a b/c&d"), "a%20b%2Fc%26d");
    }

    #[test]
    fn table_cells_escape_terminal_control_characters() {
        let now = Utc::now();
        let hostile = "app-\x1b[2J\x1b]0;pwned\x07\n<2>forged";
        let snap = Snapshot {
            version: "0".into(),
            started_at: now,
            instance: None,
            leadership: Default::default(),
            policies: vec![std::sync::Arc::new(PolicyStatus {
                name: hostile.into(),
                error: Some(hostile.into()),
                ..serde_json::from_value(serde_json::json!({
                    "name": "p", "provider": "ob", "mode": "rotate", "health": "ok", "keys": [], "lineages": []
                }))
                .unwrap()
            })],
        };
        let table = render_table(&snap, now);
        assert!(
            !table.contains('\x1b') && !table.contains('\x07'),
            "{table:?}"
        );
        assert_eq!(table.lines().count(), 2, "{table}");
    }
}
