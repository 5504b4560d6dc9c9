//! Reading and describing HTTP responses from sink and notification
//! endpoints: capped bodies, short one-line snippets for error messages
//! (with any secret value we sent scrubbed out, in case a receiver echoes
//! the request), URLs shown without their path or query (which may carry
//! a token), and transport errors without the URL.

use std::time::Duration;

use reqwest::Response;
use zeroize::Zeroizing;

use crate::provider::http::error_chain;
use crate::secret::SecretFields;

/// Largest response body we read from a sink or receiver.
pub const MAX_BODY: usize = 1024 * 1024;

/// Characters of a response body kept in an error message.
pub const SNIPPET_CHARS: usize = 200;

/// Why reading a response failed.
#[derive(Debug)]
pub enum ReadError {
    Timeout,
    TooLarge,
    Transport(String),
}

/// Read the body, refusing more than `MAX_BODY`. The buffer zeroizes on
/// drop: a read-back carries secrets.
pub async fn read_body(mut resp: Response) -> Result<Zeroizing<Vec<u8>>, ReadError> {
    if resp.content_length().is_some_and(|n| n as usize > MAX_BODY) {
        return Err(ReadError::TooLarge);
    }
    let mut body = Zeroizing::new(Vec::new());
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if body.len() + c.len() > MAX_BODY {
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

/// A reqwest error on one line, without the URL (which may carry a token).
pub fn transport_error(e: reqwest::Error) -> String {
    error_chain(&e.without_url())
}

/// Whether a send error was a timeout.
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

/// A short one-line excerpt of a response body for an error message, with
/// every value of `scrub` replaced by `[redacted]`.
pub fn snippet(body: &[u8], scrub: Option<&SecretFields>) -> String {
    let mut text = String::from_utf8_lossy(body).into_owned();
    if let Some(fields) = scrub {
        for (_, v) in fields.iter() {
            // Very short values would blank out ordinary words; the secrets
            // providers issue are long.
            if v.expose().len() >= 4 {
                text = text.replace(v.expose(), "[redacted]");
            }
        }
    }
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = one_line.trim();
    if trimmed.chars().count() > SNIPPET_CHARS {
        let cut: String = trimmed.chars().take(SNIPPET_CHARS).collect();
        format!("{cut}…")
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn snippets_are_short_single_lines_without_our_secrets() {
        let f = SecretFields::single("api_key", Secret::new("sk_live_hunter2"));
        let body = format!(
            "bad request:\n{{\"secret\":\"sk_live_hunter2\"}}{}",
            "x".repeat(500)
        );
        let s = snippet(body.as_bytes(), Some(&f));
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("[redacted]") && !s.contains('\n'));
        assert!(s.chars().count() <= SNIPPET_CHARS + 1);
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
}
