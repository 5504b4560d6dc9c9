//! Tencent Cloud API 3.0 request signing, `TC3-HMAC-SHA256` (PROTOCOLS §1).
//!
//! Pure functions: the caller gives the method, query, the headers it will
//! sign *exactly as it sends them*, the payload, the timestamp and the
//! service; these return the canonical request, the string to sign, the
//! signature and the `Authorization` header. The Tencent provider signs
//! with them and the Tencent emulator verifies with them, so both sides use
//! one definition, and the unit tests pin it to Tencent's published vectors.
//!
//! ```text
//! CanonicalRequest = METHOD \n / \n QUERY \n CanonicalHeaders \n SignedHeaders \n hex(sha256(payload))
//! StringToSign     = TC3-HMAC-SHA256 \n TIMESTAMP \n DATE/SERVICE/tc3_request \n hex(sha256(CanonicalRequest))
//! key              = HMAC(HMAC(HMAC("TC3"+SecretKey, DATE), SERVICE), "tc3_request")
//! ```
//!
//! `DATE` is the **UTC** date of the timestamp. Header values are lowercased
//! and trimmed, so `x-tc-action:createapikey`. The content type signed must
//! be byte-identical to the one sent.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The algorithm name, first word of `Authorization`.
pub const ALGORITHM: &str = "TC3-HMAC-SHA256";

type HmacSha256 = Hmac<Sha256>;

/// One request as the signer sees it.
#[derive(Debug, Clone, Copy)]
pub struct SignInput<'a> {
    /// `POST` or `GET`.
    pub method: &'a str,
    /// The query after `?` (already encoded); empty for POST.
    pub canonical_query: &'a str,
    /// The headers to sign, `(name, value)` as sent; at least `content-type`
    /// and `host`. Order does not matter.
    pub headers: &'a [(&'a str, &'a str)],
    /// The request body (empty for GET).
    pub payload: &'a [u8],
    /// `X-TC-Timestamp`, Unix seconds.
    pub timestamp: i64,
    /// The service, the first label of the host (`apigateway`, `cvm`).
    pub service: &'a str,
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data).as_slice())
}

fn hmac(key: &[u8], msg: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any size");
    m.update(msg);
    Zeroizing::new(m.finalize().into_bytes().as_slice().to_vec())
}

/// The UTC date (`YYYY-MM-DD`) of a Unix timestamp, or `None` when the
/// timestamp is out of range.
pub fn utc_date(timestamp: i64) -> Option<String> {
    chrono::DateTime::from_timestamp(timestamp, 0).map(|d| d.format("%Y-%m-%d").to_string())
}

/// The canonical request and the `SignedHeaders` list it commits to.
pub fn canonical_request(input: &SignInput<'_>) -> (String, String) {
    let mut headers: Vec<(String, String)> = input
        .headers
        .iter()
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase()))
        .collect();
    headers.sort();
    let mut canonical_headers = String::new();
    for (k, v) in &headers {
        canonical_headers.push_str(k);
        canonical_headers.push(':');
        canonical_headers.push_str(v);
        canonical_headers.push('\n');
    }
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let text = format!(
        "{}\n/\n{}\n{}\n{}\n{}",
        input.method,
        input.canonical_query,
        canonical_headers,
        signed_headers,
        sha256_hex(input.payload)
    );
    (text, signed_headers)
}

/// `DATE/SERVICE/tc3_request`.
pub fn credential_scope(date: &str, service: &str) -> String {
    format!("{date}/{service}/tc3_request")
}

pub fn string_to_sign(timestamp: i64, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{timestamp}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// The derived signing key. It is as sensitive as the secret key for one
/// day and one service, so it zeroizes on drop.
pub fn signing_key(secret_key: &str, date: &str, service: &str) -> Zeroizing<Vec<u8>> {
    let mut k = Zeroizing::new(Vec::with_capacity(3 + secret_key.len()));
    k.extend_from_slice(b"TC3");
    k.extend_from_slice(secret_key.as_bytes());
    let k_date = hmac(&k, date.as_bytes());
    let k_service = hmac(&k_date, service.as_bytes());
    hmac(&k_service, b"tc3_request")
}

/// Lowercase hex of `HMAC(signing_key, string_to_sign)`.
pub fn signature(secret_key: &str, date: &str, service: &str, string_to_sign: &str) -> String {
    let key = signing_key(secret_key, date, service);
    hex::encode(hmac(&key, string_to_sign.as_bytes()).as_slice())
}

/// Everything one signing produces; `authorization` is the header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub canonical_request: String,
    pub string_to_sign: String,
    pub signed_headers: String,
    pub signature: String,
    pub authorization: String,
}

/// Sign `input` with the key pair. `None` only when the timestamp has no
/// calendar date.
pub fn sign(secret_id: &str, secret_key: &str, input: &SignInput<'_>) -> Option<Signed> {
    let date = utc_date(input.timestamp)?;
    let (canonical_request, signed_headers) = canonical_request(input);
    let scope = credential_scope(&date, input.service);
    let string_to_sign = string_to_sign(input.timestamp, &scope, &canonical_request);
    let signature = signature(secret_key, &date, input.service, &string_to_sign);
    let authorization = format!(
        "{ALGORITHM} Credential={secret_id}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
    );
    Some(Signed {
        canonical_request,
        string_to_sign,
        signed_headers,
        signature,
        authorization,
    })
}

/// An `Authorization` header taken apart (what a verifier needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAuthorization {
    pub secret_id: String,
    pub date: String,
    pub service: String,
    /// Lowercase names, in the order given.
    pub signed_headers: Vec<String>,
    pub signature: String,
}

/// Parse `TC3-HMAC-SHA256 Credential=ID/DATE/SERVICE/tc3_request,
/// SignedHeaders=a;b, Signature=hex`. `None` when malformed.
pub fn parse_authorization(value: &str) -> Option<ParsedAuthorization> {
    let rest = value.trim().strip_prefix(ALGORITHM)?;
    if !rest.starts_with(' ') {
        return None;
    }
    let (mut credential, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k.trim() {
            "Credential" => credential = Some(v.trim()),
            "SignedHeaders" => signed = Some(v.trim()),
            "Signature" => sig = Some(v.trim()),
            _ => return None,
        }
    }
    let mut scope = credential?.rsplitn(4, '/');
    let terminator = scope.next()?;
    let service = scope.next()?;
    let date = scope.next()?;
    let secret_id = scope.next()?;
    if terminator != "tc3_request" || secret_id.is_empty() {
        return None;
    }
    let signed_headers: Vec<String> = signed?
        .split(';')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    if signed_headers.iter().any(|h| h.is_empty()) {
        return None;
    }
    Some(ParsedAuthorization {
        secret_id: secret_id.to_string(),
        date: date.to_string(),
        service: service.to_string(),
        signed_headers,
        signature: sig?.to_string(),
    })
}

/// Compare two signatures without an early exit on the first difference.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 86-byte payload of V1–V3 (the `\u` escapes are ASCII).
    const V1_PAYLOAD: &str =
        r#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;
    const CT_UTF8: &str = "application/json; charset=utf-8";
    const HOST: &str = "cvm.tencentcloudapi.com";
    const EXAMPLE_ID: &str = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE";
    const EXAMPLE_KEY: &str = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE";

    fn input<'a>(
        method: &'a str,
        query: &'a str,
        headers: &'a [(&'a str, &'a str)],
        payload: &'a [u8],
        timestamp: i64,
    ) -> SignInput<'a> {
        SignInput {
            method,
            canonical_query: query,
            headers,
            payload,
            timestamp,
            service: "cvm",
        }
    }

    #[test]
    fn v1_payload_is_the_documented_86_bytes() {
        assert_eq!(V1_PAYLOAD.len(), 86);
        assert_eq!(
            sha256_hex(V1_PAYLOAD.as_bytes()),
            "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
        );
    }

    #[test]
    fn v1_intl_doc_vector() {
        let headers = [("Content-Type", CT_UTF8), ("Host", HOST)];
        let s = sign(
            EXAMPLE_ID,
            EXAMPLE_KEY,
            &input("POST", "", &headers, V1_PAYLOAD.as_bytes(), 1551113065),
        )
        .unwrap();
        assert_eq!(
            s.canonical_request,
            "POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:cvm.tencentcloudapi.com\n\ncontent-type;host\n35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
        );
        assert_eq!(
            sha256_hex(s.canonical_request.as_bytes()),
            "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
        );
        assert_eq!(
            s.string_to_sign,
            "TC3-HMAC-SHA256\n1551113065\n2019-02-25/cvm/tc3_request\n5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
        );
        assert_eq!(
            s.signature,
            "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
        assert_eq!(
            s.authorization,
            "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/cvm/tc3_request, SignedHeaders=content-type;host, Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
    }

    #[test]
    fn v1_intermediate_keys() {
        let k_date = hmac(
            format!("TC3{EXAMPLE_KEY}").as_bytes(),
            "2019-02-25".as_bytes(),
        );
        assert_eq!(
            hex::encode(k_date.as_slice()),
            "d1308c81fe71cfd4e06437bbc067b2b8a3d2d8c0e375d547f15c41d5214b395a"
        );
        assert_eq!(
            hex::encode(signing_key(EXAMPLE_KEY, "2019-02-25", "cvm").as_slice()),
            "ac658d5dde49e9bfdd14e04e062f66b05d9f637d44b8a8d845327d4a77f666b1"
        );
    }

    #[test]
    fn utc_date_is_used_not_beijing_time() {
        // 1551113065 is 2019-02-26 00:44:25 in UTC+8, 2019-02-25 in UTC.
        assert_eq!(utc_date(1551113065).unwrap(), "2019-02-25");
    }

    #[test]
    fn v2_cn_doc_vector_signs_the_action_header_lowercased() {
        let headers = [
            ("Content-Type", CT_UTF8),
            ("Host", HOST),
            ("X-TC-Action", "DescribeInstances"),
        ];
        let s = sign(
            "AKIDz8krbsJ5yKBZQpn74WFkmLPx3*******",
            "Gu5t9xGARNpq86cd98joQYCN3*******",
            &input("POST", "", &headers, V1_PAYLOAD.as_bytes(), 1551113065),
        )
        .unwrap();
        assert!(
            s.canonical_request
                .contains("\nx-tc-action:describeinstances\n\ncontent-type;host;x-tc-action\n")
        );
        assert_eq!(
            sha256_hex(s.canonical_request.as_bytes()),
            "7019a55be8395899b900fb5564e4200d984910f34794a27cb3fb7d10ff6a1e84"
        );
        assert_eq!(
            s.authorization,
            "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3*******/2019-02-25/cvm/tc3_request, SignedHeaders=content-type;host;x-tc-action, Signature=be4f67d323c78ab9acb7395e43c0dbcf822a9cfac32fea2449a7bc7726b770a3"
        );
    }

    #[test]
    fn v4_get_vector_hashes_the_empty_payload() {
        let headers = [
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Host", HOST),
        ];
        let s = sign(
            EXAMPLE_ID,
            EXAMPLE_KEY,
            &input("GET", "Limit=10&Offset=0", &headers, b"", 1539084154),
        )
        .unwrap();
        assert!(
            s.canonical_request
                .ends_with("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        assert_eq!(
            sha256_hex(s.canonical_request.as_bytes()),
            "91c9c192c14460df6c1ffc69e34e6c5e90708de2a6d282cccf957dbf1aa7f3a7"
        );
        assert_eq!(
            s.signature,
            "5da7a33f6993f0614b047e5df4582db9e9bf4672ba50567dba16c6ccf174c474"
        );
    }

    #[test]
    fn v5_node_sdk_vector() {
        let payload = br#"{"Action":"DescribeInstances","Version":"2017-03-12"}"#;
        assert_eq!(
            sha256_hex(payload),
            "8161d71add76597e6dc0e223286ca9a96dec0b7eca6e08f9364680387415b4dc"
        );
        let headers = [("content-type", "application/json"), ("host", HOST)];
        let s = sign(
            "test-secret-id",
            "test-secret-key",
            &input("POST", "", &headers, payload, 1640995200),
        )
        .unwrap();
        assert_eq!(
            s.signature,
            "96473b50fe407833672a5d6d067238d88bb44c8abcc39ef83baa3132afbfadd3"
        );
        assert!(
            s.authorization
                .ends_with("SignedHeaders=content-type;host, Signature=96473b50fe407833672a5d6d067238d88bb44c8abcc39ef83baa3132afbfadd3")
        );
    }

    #[test]
    fn a_different_content_type_breaks_the_signature() {
        let payload = br#"{"Action":"DescribeInstances","Version":"2017-03-12"}"#;
        let h1 = [("content-type", "application/json"), ("host", HOST)];
        let h2 = [
            ("content-type", "application/json; charset=utf-8"),
            ("host", HOST),
        ];
        let a = sign("id", "k", &input("POST", "", &h1, payload, 1640995200)).unwrap();
        let b = sign("id", "k", &input("POST", "", &h2, payload, 1640995200)).unwrap();
        assert_ne!(a.signature, b.signature);
    }

    #[test]
    fn authorization_parses_back() {
        let headers = [
            ("Content-Type", CT_UTF8),
            ("Host", HOST),
            ("X-TC-Action", "DescribeInstances"),
        ];
        let s = sign(
            EXAMPLE_ID,
            EXAMPLE_KEY,
            &input("POST", "", &headers, V1_PAYLOAD.as_bytes(), 1551113065),
        )
        .unwrap();
        let p = parse_authorization(&s.authorization).unwrap();
        assert_eq!(p.secret_id, EXAMPLE_ID);
        assert_eq!(p.date, "2019-02-25");
        assert_eq!(p.service, "cvm");
        assert_eq!(p.signed_headers, ["content-type", "host", "x-tc-action"]);
        assert_eq!(p.signature, s.signature);
        assert!(parse_authorization("Bearer abc").is_none());
        assert!(parse_authorization("TC3-HMAC-SHA256 Credential=x/y").is_none());
        assert!(
            parse_authorization(
                "TC3-HMAC-SHA256 Credential=a/2019-02-25/cvm/other, SignedHeaders=host, Signature=00"
            )
            .is_none()
        );
    }

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
    }
}
