//! Outbound HTTP rules, in one place for providers, sinks and notifications.
//!
//! - **TLS**: rustls, certificates always verified (there is no switch to
//!   turn that off); an optional extra CA bundle from `ca_file` (a private
//!   CA or a TLS-inspecting proxy).
//! - **Proxies**: only `https://` requests go through a proxy, taken from
//!   `HTTPS_PROXY` / `https_proxy` (else `ALL_PROXY` / `all_proxy`), with
//!   `NO_PROXY` / `no_proxy` honoured. Loopback targets (`localhost`,
//!   `*.localhost`, `127.0.0.0/8`, `::1`) never go through a proxy, and
//!   plain `http://` never does either (`HTTP_PROXY` is ignored): a proxy on
//!   a plain-http path could read the secret and answer 200 for the real
//!   receiver. Through a proxy an https request is a `CONNECT` tunnel, so the
//!   proxy sees only ciphertext.
//! - **No redirects**, a connect timeout, a whole-request timeout.
//! - **Body caps**: [`read_body`] refuses more than [`MAX_BODY`].
//! - **Responses from a party that has just received a secret** (a webhook
//!   sink's receiver, Vault's answer to a write) are never kept: only
//!   [`Described`] (status code, content type, length) goes into errors,
//!   logs, the store or notifications. No excerpt can be scrubbed of every
//!   encoding a receiver might echo (`\/`, `%2F`, base64, …). Parties that
//!   have not received a secret (notification receivers, Vault's answers to
//!   reads) may be quoted through [`excerpt`]: one escaped line, bounded.
//! - **URLs** are shown as `scheme://host[:port]` ([`redact_url`]): a path
//!   or query may carry a token.

use std::path::Path;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{Response, StatusCode};
use zeroize::Zeroizing;

/// Largest response body read from a sink, a notification receiver or a
/// Vault server (a read-back of a few fields; a megabyte is generous).
pub const MAX_BODY: usize = 1024 * 1024;

/// Characters of a response body kept in an [`excerpt`].
pub const EXCERPT_CHARS: usize = 200;

/// Hosts and networks that never go through a proxy, in `NO_PROXY` syntax.
pub const LOOPBACK_NO_PROXY: &str = "localhost,127.0.0.0/8,::1";

/// A client could not be built (unreadable or invalid `ca_file`, bad proxy
/// URL in the environment).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct OutboundError(pub String);

/// A `reqwest` client with rekey's rules (module doc): rustls with
/// verification on and `ca_file` added, no redirects, `timeout` per request
/// (connect: at most 10 s), and the proxy rule.
///
/// Errors: `ca_file` unreadable or not a PEM bundle; an `HTTPS_PROXY` that
/// is not a URL.
pub fn client(ca_file: Option<&Path>, timeout: Duration) -> Result<reqwest::Client, OutboundError> {
    client_with_env(ca_file, timeout, &|k| std::env::var(k).ok())
}

/// [`client`] with the environment passed in (tests).
pub fn client_with_env(
    ca_file: Option<&Path>,
    timeout: Duration,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<reqwest::Client, OutboundError> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("rekey/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        // Drop reqwest's own reading of the environment (it would send
        // plain http through HTTP_PROXY and loopback through any proxy).
        .no_proxy();
    if let Some(proxy) = https_proxy(env)? {
        b = b.proxy(proxy);
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| OutboundError(format!("cannot read ca_file {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            OutboundError(format!(
                "ca_file {} is not a PEM bundle: {e}",
                path.display()
            ))
        })?;
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build()
        .map_err(|e| OutboundError(format!("cannot build HTTP client: {}", error_chain(&e))))
}

/// The proxy for `https://` requests from the environment, with loopback
/// and `NO_PROXY` excluded; `None` when no proxy is set.
fn https_proxy(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<reqwest::Proxy>, OutboundError> {
    let first = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| env(n).filter(|v| !v.trim().is_empty()))
    };
    let Some(url) = first(&["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]) else {
        return Ok(None);
    };
    let mut no_proxy = LOOPBACK_NO_PROXY.to_string();
    if let Some(extra) = first(&["NO_PROXY", "no_proxy"]) {
        no_proxy.push(',');
        no_proxy.push_str(&extra);
    }
    let proxy = reqwest::Proxy::https(url.trim()).map_err(|_| {
        // The proxy URL may carry credentials: do not repeat it.
        OutboundError(format!(
            "HTTPS_PROXY ({}) is not a valid proxy URL",
            redact_url(url.trim())
        ))
    })?;
    Ok(Some(
        proxy.no_proxy(reqwest::NoProxy::from_string(&no_proxy)),
    ))
}

/// Whether `url`'s host is a loopback name or address.
pub fn is_loopback_url(url: &str) -> bool {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
                return ip.is_loopback();
            }
            let d = host.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        Err(_) => false,
    }
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    crate::logging::escape(&s).into_owned()
}

/// What is wrong with a JSON document, without quoting any of it (serde's
/// own messages may repeat a value): kind, line and column.
pub fn json_problem(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Data => "unexpected field type or missing field",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// `Retry-After` in seconds, if present.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Why reading a response failed.
#[derive(Debug)]
pub enum ReadError {
    Timeout,
    TooLarge,
    Transport(String),
}

/// Read the body, refusing more than [`MAX_BODY`]. The buffer zeroizes on
/// drop: a read-back carries secrets.
pub async fn read_body(resp: Response) -> Result<Zeroizing<Vec<u8>>, ReadError> {
    read_body_capped(resp, MAX_BODY).await
}

/// [`read_body`] with another cap.
pub async fn read_body_capped(
    mut resp: Response,
    cap: usize,
) -> Result<Zeroizing<Vec<u8>>, ReadError> {
    if resp.content_length().is_some_and(|n| n as usize > cap) {
        return Err(ReadError::TooLarge);
    }
    let mut body = Zeroizing::new(Vec::new());
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if body.len() + c.len() > cap {
                    return Err(ReadError::TooLarge);
                }
                body.extend_from_slice(&c);
            }
            Ok(None) => return Ok(body),
            Err(e) if e.is_timeout() => return Err(ReadError::Timeout),
            Err(e) => return Err(ReadError::Transport(transport_error(e))),
        }
    }
}

/// Drain and drop a response body without keeping it, returning how many
/// bytes arrived (up to `MAX_BODY`; more is reported as `None`).
pub async fn discard_body(mut resp: Response) -> Option<u64> {
    let mut n: u64 = 0;
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                n += c.len() as u64;
                if n > MAX_BODY as u64 {
                    return None;
                }
            }
            Ok(None) => return Some(n),
            Err(_) => return None,
        }
    }
}

/// A reqwest error on one line, without the URL (which may carry a token).
pub fn transport_error(e: reqwest::Error) -> String {
    error_chain(&e.without_url())
}

/// Whether a send error was a timeout, and a one-line description.
pub fn describe_send_error(e: reqwest::Error, timeout: Duration) -> (bool, String) {
    if e.is_timeout() {
        (
            true,
            format!("timed out after {}", crate::clock::human(timeout)),
        )
    } else if e.is_connect() {
        (false, format!("cannot connect: {}", transport_error(e)))
    } else {
        (false, transport_error(e))
    }
}

/// `scheme://host[:port]`: enough to say where, nothing that may be secret.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("?");
            match u.port() {
                Some(p) => format!("{}://{}:{}", u.scheme(), host, p),
                None => format!("{}://{}", u.scheme(), host),
            }
        }
        Err(_) => "[unparseable url]".to_string(),
    }
}

/// All that is kept of a response from a party that has just received a
/// secret: its status, content type and length. `Display`:
/// `HTTP 500 (text/html, 1234 bytes)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub status: u16,
    /// The `Content-Type` header, reduced to `type/subtype` of safe
    /// characters (a header is outside input too).
    pub content_type: Option<String>,
    /// Body length in bytes, when known.
    pub length: Option<u64>,
}

impl Described {
    /// From a status, the response headers and the body length seen.
    pub fn new(status: StatusCode, headers: &HeaderMap, length: Option<u64>) -> Self {
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= 100
                    && v.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '+' | '-' | '_')
                    })
            });
        Described {
            status: status.as_u16(),
            content_type,
            length,
        }
    }
}

impl std::fmt::Display for Described {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        let ct = self.content_type.as_deref().unwrap_or("no content type");
        match self.length {
            Some(n) => write!(f, " ({ct}, {n} bytes)"),
            None => write!(f, " ({ct}, length unknown)"),
        }
    }
}

/// A short one-line excerpt of a body from a party that has *not* received
/// a secret (notification receivers, Vault's answers to reads), for an
/// error message: control characters escaped, at most [`EXCERPT_CHARS`].
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim();
    let cut: String = trimmed.chars().take(EXCERPT_CHARS).collect();
    let mut out = crate::logging::escape(&cut).into_owned();
    if trimmed.chars().count() > EXCERPT_CHARS {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_short_single_lines() {
        let body = format!("bad request:\n\x1b[31m{}", "x".repeat(500));
        let s = excerpt(body.as_bytes());
        assert!(!s.contains('\n') && !s.contains('\x1b'), "{s}");
        assert!(s.chars().count() <= EXCERPT_CHARS * 6 + 1);
    }

    #[test]
    fn urls_lose_their_path_and_query() {
        assert_eq!(
            redact_url("https://hooks.example/T000/B000/XXXX?token=abc"),
            "https://hooks.example"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:8080/x"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            redact_url("https://user:pw@h.example/"),
            "https://h.example"
        );
    }

    #[test]
    fn loopback_urls_are_recognised() {
        for u in [
            "http://localhost:1/",
            "http://LOCALHOST./x",
            "http://a.localhost/",
            "http://127.0.0.1/",
            "http://127.9.9.9:80/",
            "http://[::1]:8080/",
        ] {
            assert!(is_loopback_url(u), "{u}");
        }
        for u in ["http://10.0.0.1/", "https://localhost.example/", "nonsense"] {
            assert!(!is_loopback_url(u), "{u}");
        }
    }

    #[test]
    fn descriptions_keep_only_status_type_and_length() {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        let d = Described::new(StatusCode::BAD_GATEWAY, &h, Some(42));
        assert_eq!(d.to_string(), "HTTP 502 (application/json, 42 bytes)");
        h.insert(CONTENT_TYPE, "text/x\"evil secret".parse().unwrap());
        let d = Described::new(StatusCode::OK, &h, None);
        assert_eq!(d.to_string(), "HTTP 200 (no content type, length unknown)");
    }

    #[test]
    fn a_bad_proxy_url_is_an_error_that_does_not_repeat_it() {
        let env = |k: &str| (k == "HTTPS_PROXY").then(|| "::not a url::pw".to_string());
        let e = client_with_env(None, Duration::from_secs(1), &env).unwrap_err();
        assert!(!e.0.contains("pw"), "{e}");
    }

    /// A listener that counts connections and closes them.
    async fn counter(addr: &str) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let l = tokio::net::TcpListener::bind(addr).await.unwrap();
        let local = l.local_addr().unwrap();
        let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = n.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(s);
            }
        });
        (local.to_string(), n)
    }

    #[tokio::test]
    async fn loopback_and_plain_http_targets_bypass_every_proxy() {
        use std::sync::atomic::Ordering::SeqCst;
        let (proxy, proxied) = counter("127.0.0.1:0").await;
        let proxy_url = format!("http://{proxy}");
        let env = |k: &str| {
            matches!(k, "HTTPS_PROXY" | "HTTP_PROXY" | "ALL_PROXY").then(|| proxy_url.clone())
        };
        let c = client_with_env(None, Duration::from_secs(2), &env).unwrap();
        let (v4, direct4) = counter("127.0.0.1:0").await;
        let port4 = v4.rsplit(':').next().unwrap().to_string();
        for url in [
            format!("https://127.0.0.1:{port4}/"),
            format!("https://localhost:{port4}/"),
            format!("http://127.0.0.1:{port4}/"),
        ] {
            let _ = c.get(&url).send().await;
        }
        if let Ok(l6) = tokio::net::TcpListener::bind("[::1]:0").await {
            let port6 = l6.local_addr().unwrap().port();
            drop(l6);
            let (_, direct6) = counter(&format!("[::1]:{port6}")).await;
            let _ = c.get(format!("https://[::1]:{port6}/")).send().await;
            assert_eq!(direct6.load(SeqCst), 1, "[::1] went direct");
        }
        assert_eq!(
            proxied.load(SeqCst),
            0,
            "a loopback or plain-http request went through the proxy"
        );
        assert!(direct4.load(SeqCst) >= 3, "{}", direct4.load(SeqCst));
        // A non-loopback https target does use the proxy (the rule is not
        // simply "no proxy").
        let _ = c.get("https://rekey-proxy-test.invalid/").send().await;
        assert_eq!(proxied.load(SeqCst), 1);
    }
}
