//! Huawei Cloud AK/SK request signing, `SDK-HMAC-SHA256` (PROTOCOLS §3.2).
//!
//! Pure functions shared by the Huawei provider (which signs) and the
//! Huawei emulator (which verifies), pinned by the official Go SDK's test
//! vectors.
//!
//! ```text
//! CanonicalRequest = METHOD \n CanonicalURI \n CanonicalQuery \n CanonicalHeaders \n SignedHeaders \n hex(sha256(body))
//! StringToSign     = SDK-HMAC-SHA256 \n X-Sdk-Date \n hex(sha256(CanonicalRequest))
//! Signature        = hex(HMAC-SHA256(SK, StringToSign))            (no key derivation)
//! ```
//!
//! - The canonical URI escapes every path segment and always ends in `/`.
//! - The canonical query sorts keys, then the values of a repeated key, and
//!   escapes per RFC 3986 (unreserved `A-Z a-z 0-9 - _ . ~` stay; a space is
//!   `%20`).
//! - Headers are `lowercase(name):trim(value)`; like the current SDK,
//!   `content-type` and any header whose name holds `_` are not signed.
//! - `X-Sdk-Date` is `YYYYMMDDTHHMMSSZ` in UTC.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

pub const ALGORITHM: &str = "SDK-HMAC-SHA256";

/// `X-Sdk-Date` format (UTC).
pub const DATE_FORMAT: &str = "%Y%m%dT%H%M%SZ";

type HmacSha256 = Hmac<Sha256>;

/// RFC 3986 percent-encoding of everything but the unreserved characters,
/// uppercase hex, as the SDK's `escape` does.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Escape each segment of `path`; add the trailing `/` the algorithm wants.
pub fn canonical_uri(path: &str) -> String {
    let mut uri = path.split('/').map(escape).collect::<Vec<_>>().join("/");
    if !uri.ends_with('/') {
        uri.push('/');
    }
    uri
}

/// `k=v` pairs sorted by key and then value, joined with `&`.
pub fn canonical_query(params: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> =
        params.iter().map(|(k, v)| (escape(k), escape(v))).collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Whether a header takes part in the signature.
pub fn is_signed_header(name: &str) -> bool {
    let n = name.trim().to_ascii_lowercase();
    n != "content-type" && !n.contains('_')
}

/// One request as the signer sees it.
#[derive(Debug, Clone, Copy)]
pub struct SignInput<'a> {
    pub method: &'a str,
    /// The URL path, unescaped (`/v1/{project}/node-provider/credentials`).
    pub path: &'a str,
    /// Query parameters, unescaped; repeated keys allowed.
    pub query: &'a [(&'a str, &'a str)],
    /// Headers as sent; those [`is_signed_header`] rejects are skipped.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// The canonical request and its `SignedHeaders` list.
pub fn canonical_request(input: &SignInput<'_>) -> (String, String) {
    let mut headers: Vec<(String, String)> = input
        .headers
        .iter()
        .filter(|(k, _)| is_signed_header(k))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    headers.sort();
    let mut canonical_headers = String::new();
    for (k, v) in &headers {
        canonical_headers.push_str(k);
        canonical_headers.push(':');
        canonical_headers.push_str(v);
        canonical_headers.push('\n');
    }
    let signed = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let text = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        input.method,
        canonical_uri(input.path),
        canonical_query(input.query),
        canonical_headers,
        signed,
        hex::encode(Sha256::digest(input.body).as_slice())
    );
    (text, signed)
}

pub fn string_to_sign(sdk_date: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{sdk_date}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()).as_slice())
    )
}

/// Lowercase hex `HMAC-SHA256(sk, string_to_sign)`.
pub fn signature(secret_key: &str, string_to_sign: &str) -> String {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(secret_key.as_bytes())
        .expect("HMAC takes keys of any size");
    m.update(string_to_sign.as_bytes());
    hex::encode(m.finalize().into_bytes().as_slice())
}

/// What one signing produces; `authorization` is the header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub canonical_request: String,
    pub string_to_sign: String,
    pub signed_headers: String,
    pub signature: String,
    pub authorization: String,
}

/// Sign `input`; `sdk_date` must be the `X-Sdk-Date` header's value (and
/// that header must be among `input.headers`).
pub fn sign(access_key: &str, secret_key: &str, sdk_date: &str, input: &SignInput<'_>) -> Signed {
    let (canonical_request, signed_headers) = canonical_request(input);
    let string_to_sign = string_to_sign(sdk_date, &canonical_request);
    let signature = signature(secret_key, &string_to_sign);
    let authorization = format!(
        "{ALGORITHM} Access={access_key}, SignedHeaders={signed_headers}, Signature={signature}"
    );
    Signed {
        canonical_request,
        string_to_sign,
        signed_headers,
        signature,
        authorization,
    }
}

/// An `Authorization` header taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAuthorization {
    pub access_key: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

/// Parse `SDK-HMAC-SHA256 Access=AK, SignedHeaders=a;b, Signature=hex`.
pub fn parse_authorization(value: &str) -> Option<ParsedAuthorization> {
    let rest = value.trim().strip_prefix(ALGORITHM)?;
    if !rest.starts_with(' ') {
        return None;
    }
    let (mut access, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k.trim() {
            "Access" => access = Some(v.trim()),
            "SignedHeaders" => signed = Some(v.trim()),
            "Signature" => sig = Some(v.trim()),
            _ => return None,
        }
    }
    let signed_headers: Vec<String> = signed?
        .split(';')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    if signed_headers.iter().any(|h| h.is_empty()) || access?.is_empty() {
        return None;
    }
    Some(ParsedAuthorization {
        access_key: access?.to_string(),
        signed_headers,
        signature: sig?.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AK: &str = "AccessKey";
    const SK: &str = "SecretKey";
    const DATE: &str = "20060102T150405Z";

    #[test]
    fn h1_get_with_query() {
        let headers = [("X-Sdk-Date", DATE), ("TEST_UNDERSCORE", "TEST_VALUE")];
        let s = sign(
            AK,
            SK,
            DATE,
            &SignInput {
                method: "GET",
                path: "/path",
                query: &[("limit", "1")],
                headers: &headers,
                body: b"",
            },
        );
        assert_eq!(
            s.canonical_request,
            "GET\n/path/\nlimit=1\nx-sdk-date:20060102T150405Z\n\nx-sdk-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            s.string_to_sign,
            "SDK-HMAC-SHA256\n20060102T150405Z\n85c3b7730f308aee452b16138a42a914397e43a8f0d732dfa521c0ef2afa98a4"
        );
        assert_eq!(
            s.authorization,
            "SDK-HMAC-SHA256 Access=AccessKey, SignedHeaders=x-sdk-date, Signature=5a2ce64c865e0e6046321c6f3d5a77ba8413eeaf355c3166c03d58d02ac79624"
        );
    }

    #[test]
    fn h2_post_json_with_the_trailing_newline() {
        let body = b"{\"Name\":\"test\",\"Id\":1}\n";
        assert_eq!(
            hex::encode(Sha256::digest(body).as_slice()),
            "a29d7b4c5efd1a22011d69fd7b7aee76fe51e4083c609244228de258afd61289"
        );
        let headers = [
            ("X-Sdk-Date", DATE),
            ("TEST_UNDERSCORE", "TEST_VALUE"),
            ("Content-Type", "application/json"),
        ];
        let s = sign(
            AK,
            SK,
            DATE,
            &SignInput {
                method: "POST",
                path: "/path",
                query: &[("key", "value")],
                headers: &headers,
                body,
            },
        );
        assert_eq!(
            s.authorization,
            "SDK-HMAC-SHA256 Access=AccessKey, SignedHeaders=x-sdk-date, Signature=cecc2af119b18ab70b4d094c0750f3b42c02f254903179a0fc2cc72fc9db4f59"
        );
    }

    #[test]
    fn canonical_query_matches_the_sdk_check() {
        let q = canonical_query(&[
            ("limit", "1"),
            ("enable", "true"),
            ("test", "一 (&=?!#%.*)"),
            ("path", "/tmp/123"),
            ("multi", "3"),
            ("multi", "1"),
            ("multi", "2"),
        ]);
        assert_eq!(
            q,
            "enable=true&limit=1&multi=1&multi=2&multi=3&path=%2Ftmp%2F123&test=%E4%B8%80%20%28%26%3D%3F%21%23%25.%2A%29"
        );
    }

    #[test]
    fn canonical_uri_always_ends_with_a_slash() {
        assert_eq!(canonical_uri("/path"), "/path/");
        assert_eq!(canonical_uri("/path/"), "/path/");
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(canonical_uri("/a b/c"), "/a%20b/c/");
    }

    #[test]
    fn content_type_and_underscored_headers_are_not_signed() {
        assert!(!is_signed_header("Content-Type"));
        assert!(!is_signed_header("TEST_UNDERSCORE"));
        assert!(is_signed_header("Host"));
        assert!(is_signed_header("X-Project-Id"));
    }

    #[test]
    fn authorization_parses_back() {
        let p = parse_authorization(
            "SDK-HMAC-SHA256 Access=AccessKey, SignedHeaders=host;x-sdk-date, Signature=abc",
        )
        .unwrap();
        assert_eq!(p.access_key, "AccessKey");
        assert_eq!(p.signed_headers, ["host", "x-sdk-date"]);
        assert_eq!(p.signature, "abc");
        assert!(parse_authorization("SDK-HMAC-SHA256Access=x").is_none());
        assert!(parse_authorization("Bearer x").is_none());
    }
}
