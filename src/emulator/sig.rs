//! The emulators' own signature verification, written from the vendors'
//! documents (PROTOCOLS §1.1 and §3.2), never shared with the client's
//! signers in `src/provider/`: an emulator that verified with the client's
//! code would agree with its bugs. Pinned by the published vectors (V1, V2,
//! V4 for Tencent TC3; H1, H2 for Huawei `SDK-HMAC-SHA256`).
//!
//! Both verifiers recompute the signature over exactly the headers the
//! client lists in `SignedHeaders` (whatever they are), as the vendors'
//! gateways do.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The payload hash a client may send instead of hashing the body (the
/// Tencent Go SDK's `X-TC-Content-SHA256` and Huawei's
/// `X-Sdk-Content-Sha256` "unsigned payload" modes).
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

fn hex_sha256(data: &[u8]) -> String {
    let mut out = String::with_capacity(64);
    for b in Sha256::digest(data) {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn mac(key: &[u8], msg: &str) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg.as_bytes());
    m.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compare two signatures without an early exit on the first difference.
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= (a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0)) as usize;
    }
    diff == 0
}

/// The values of the `a=b, c=d` parameters after an `Authorization`
/// scheme (comma-separated, optional spaces), in the order of `names`:
/// `None` when one of `names` is missing or a parameter not in `names` is
/// present (a later repeat of a name wins).
fn named_params<'a, const N: usize>(rest: &'a str, names: [&str; N]) -> Option<[&'a str; N]> {
    let mut found: [Option<&'a str>; N] = [None; N];
    for (k, v) in rest
        .split(',')
        .filter_map(|p| p.trim().split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
    {
        let i = names.iter().position(|n| *n == k)?;
        found[i] = Some(v);
    }
    let mut out = [""; N];
    for (o, f) in out.iter_mut().zip(found) {
        *o = f?;
    }
    Some(out)
}

/// `SignedHeaders=a;b` as lowercase names, in the order given.
fn signed_header_names(value: &str) -> Vec<String> {
    value.split(';').map(|h| h.to_ascii_lowercase()).collect()
}

/// Tencent Cloud API 3.0 `TC3-HMAC-SHA256` (PROTOCOLS §1.1).
pub mod tc3 {
    use super::*;

    /// The parts of a TC3 `Authorization` header.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Authorization {
        pub secret_id: String,
        /// `YYYY-MM-DD`, the UTC date of `X-TC-Timestamp`.
        pub date: String,
        pub service: String,
        /// Lowercase names, in the order given.
        pub signed_headers: Vec<String>,
        pub signature: String,
    }

    /// Parse `TC3-HMAC-SHA256 Credential=id/date/service/tc3_request,
    /// SignedHeaders=a;b, Signature=hex`.
    pub fn parse(value: &str) -> Option<Authorization> {
        let rest = value.strip_prefix("TC3-HMAC-SHA256 ")?;
        let [cred, signed, sig] = named_params(rest, ["Credential", "SignedHeaders", "Signature"])?;
        let parts: Vec<&str> = cred.split('/').collect();
        let [id, date, service, "tc3_request"] = parts.as_slice() else {
            return None;
        };
        Some(Authorization {
            secret_id: id.to_string(),
            date: date.to_string(),
            service: service.to_string(),
            signed_headers: signed_header_names(signed),
            signature: sig.to_string(),
        })
    }

    /// The UTC date of a Unix timestamp, as the credential scope has it.
    pub fn date_of(timestamp: i64) -> Option<String> {
        chrono::DateTime::from_timestamp(timestamp, 0).map(|t| t.format("%Y-%m-%d").to_string())
    }

    /// The signature the server expects. `headers` holds the value of each
    /// name in `auth.signed_headers` (in that order); `payload_hash` is
    /// the hex SHA-256 of the body, or of `UNSIGNED-PAYLOAD` in that mode.
    #[allow(clippy::too_many_arguments)]
    pub fn expected(
        secret_key: &str,
        auth: &Authorization,
        timestamp: i64,
        method: &str,
        query: &str,
        header_values: &[&str],
        payload_hash: &str,
    ) -> String {
        let mut canonical_headers = String::new();
        let mut pairs: Vec<(&str, &str)> = auth
            .signed_headers
            .iter()
            .map(String::as_str)
            .zip(header_values.iter().copied())
            .collect();
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        for (k, v) in &pairs {
            canonical_headers.push_str(&format!("{k}:{}\n", v.trim().to_ascii_lowercase()));
        }
        let names: Vec<&str> = pairs.iter().map(|p| p.0).collect();
        let canonical = format!(
            "{method}\n/\n{query}\n{canonical_headers}\n{}\n{payload_hash}",
            names.join(";")
        );
        let scope = format!("{}/{}/tc3_request", auth.date, auth.service);
        let to_sign = format!(
            "TC3-HMAC-SHA256\n{timestamp}\n{scope}\n{}",
            hex_sha256(canonical.as_bytes())
        );
        let k_date = mac(format!("TC3{secret_key}").as_bytes(), &auth.date);
        let k_service = mac(&k_date, &auth.service);
        let k_signing = mac(&k_service, "tc3_request");
        hex(&mac(&k_signing, &to_sign))
    }

    /// The payload hash for a body, honouring `X-TC-Content-SHA256:
    /// UNSIGNED-PAYLOAD`.
    pub fn payload_hash(body: &[u8], content_sha256: Option<&str>) -> String {
        match content_sha256 {
            Some(v) if v.eq_ignore_ascii_case(UNSIGNED_PAYLOAD) => {
                hex_sha256(UNSIGNED_PAYLOAD.as_bytes())
            }
            _ => hex_sha256(body),
        }
    }
}

/// Huawei Cloud `SDK-HMAC-SHA256` (PROTOCOLS §3.2).
pub mod huawei {
    use super::*;

    /// The parts of an `SDK-HMAC-SHA256` `Authorization` header.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Authorization {
        pub access: String,
        /// Lowercase names, in the order given.
        pub signed_headers: Vec<String>,
        pub signature: String,
    }

    /// Parse `SDK-HMAC-SHA256 Access=AK, SignedHeaders=a;b, Signature=hex`.
    pub fn parse(value: &str) -> Option<Authorization> {
        let rest = value.strip_prefix("SDK-HMAC-SHA256 ")?;
        let [access, signed, sig] = named_params(rest, ["Access", "SignedHeaders", "Signature"])?;
        Some(Authorization {
            access: access.to_string(),
            signed_headers: signed_header_names(signed),
            signature: sig.to_string(),
        })
    }

    /// RFC 3986 escaping, uppercase hex, unreserved characters kept.
    fn escape(s: &str) -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    fn unescape(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && let Some(v) = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The canonical URI of a path as received: each segment decoded and
    /// escaped again, always ending in `/`.
    pub fn canonical_uri(raw_path: &str) -> String {
        let mut uri: String = raw_path
            .split('/')
            .map(|seg| escape(&unescape(seg)))
            .collect::<Vec<_>>()
            .join("/");
        if !uri.ends_with('/') {
            uri.push('/');
        }
        uri
    }

    /// The canonical query of a raw query string: pairs decoded, escaped
    /// again, sorted by key then value.
    pub fn canonical_query(raw_query: &str) -> String {
        let mut pairs: Vec<(String, String)> = raw_query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (escape(&unescape(k)), escape(&unescape(v)))
            })
            .collect();
        pairs.sort();
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The signature the server expects, over exactly the headers in
    /// `auth.signed_headers` (`header_values` in that order). `body_hash` is
    /// the hex SHA-256 of the body, or the literal `UNSIGNED-PAYLOAD` when
    /// the client sent `X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD`.
    #[allow(clippy::too_many_arguments)]
    pub fn expected(
        secret_key: &str,
        auth: &Authorization,
        sdk_date: &str,
        method: &str,
        raw_path: &str,
        raw_query: &str,
        header_values: &[&str],
        body_hash: &str,
    ) -> String {
        let mut pairs: Vec<(&str, &str)> = auth
            .signed_headers
            .iter()
            .map(String::as_str)
            .zip(header_values.iter().copied())
            .collect();
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        let mut canonical_headers = String::new();
        for (k, v) in &pairs {
            canonical_headers.push_str(&format!("{k}:{}\n", v.trim()));
        }
        let names: Vec<&str> = pairs.iter().map(|p| p.0).collect();
        let canonical = format!(
            "{method}\n{}\n{}\n{canonical_headers}\n{}\n{body_hash}",
            canonical_uri(raw_path),
            canonical_query(raw_query),
            names.join(";"),
        );
        let to_sign = format!(
            "SDK-HMAC-SHA256\n{sdk_date}\n{}",
            hex_sha256(canonical.as_bytes())
        );
        hex(&mac(secret_key.as_bytes(), &to_sign))
    }

    /// The body hash as the official SDKs compute it
    /// (`huaweicloudsdkcore` `Signer._process_hash_payload`): an empty body
    /// always hashes to SHA-256(""); otherwise `X-Sdk-Content-Sha256:
    /// UNSIGNED-PAYLOAD` puts that literal string in place of the hash.
    pub fn body_hash(body: &[u8], content_sha256: Option<&str>) -> String {
        match content_sha256 {
            Some(v) if v == UNSIGNED_PAYLOAD && !body.is_empty() => UNSIGNED_PAYLOAD.to_string(),
            _ => hex_sha256(body),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V_PAYLOAD: &str =
        r#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;

    #[test]
    fn a_header_missing_a_parameter_or_carrying_an_unknown_one_is_refused_by_both_parsers() {
        let hw = "SDK-HMAC-SHA256 Access=AK, SignedHeaders=host;X-Sdk-Date, Signature=ab";
        let a = huawei::parse(hw).unwrap();
        assert_eq!((a.access.as_str(), a.signature.as_str()), ("AK", "ab"));
        assert_eq!(a.signed_headers, ["host", "x-sdk-date"]);
        assert!(huawei::parse("SDK-HMAC-SHA256 Access=AK, SignedHeaders=host").is_none());
        assert!(huawei::parse(&format!("{hw}, Extra=1")).is_none());
        let tc = "TC3-HMAC-SHA256 Credential=id/2026-12-01/apigateway/tc3_request, SignedHeaders=host, Signature=cd";
        let t = tc3::parse(tc).unwrap();
        assert_eq!(
            (t.secret_id.as_str(), t.service.as_str()),
            ("id", "apigateway")
        );
        assert!(
            tc3::parse(
                "TC3-HMAC-SHA256 Credential=id/2026-12-01/apigateway/tc3_request, Signature=cd"
            )
            .is_none()
        );
        assert!(tc3::parse(&format!("{tc}, Access=AK")).is_none());
        assert!(tc3::parse(&tc.replace("tc3_request", "other")).is_none());
    }

    #[test]
    fn tc3_v1_intl_doc_vector() {
        let auth = tc3::parse("TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/cvm/tc3_request, SignedHeaders=content-type;host, Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168").unwrap();
        assert_eq!(V_PAYLOAD.len(), 86);
        let sig = tc3::expected(
            "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
            &auth,
            1551113065,
            "POST",
            "",
            &["application/json; charset=utf-8", "cvm.tencentcloudapi.com"],
            &tc3::payload_hash(V_PAYLOAD.as_bytes(), None),
        );
        assert!(same(&sig, &auth.signature), "{sig}");
        assert_eq!(tc3::date_of(1551113065).unwrap(), "2019-02-25");
    }

    #[test]
    fn tc3_v2_cn_doc_vector_signs_the_action_lowercased() {
        let auth = tc3::parse("TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3*******/2019-02-25/cvm/tc3_request, SignedHeaders=content-type;host;x-tc-action, Signature=be4f67d323c78ab9acb7395e43c0dbcf822a9cfac32fea2449a7bc7726b770a3").unwrap();
        let sig = tc3::expected(
            "Gu5t9xGARNpq86cd98joQYCN3*******",
            &auth,
            1551113065,
            "POST",
            "",
            &[
                "application/json; charset=utf-8",
                "cvm.tencentcloudapi.com",
                "DescribeInstances",
            ],
            &tc3::payload_hash(V_PAYLOAD.as_bytes(), None),
        );
        assert_eq!(sig, auth.signature);
    }

    #[test]
    fn tc3_v4_get_vector_hashes_the_empty_payload() {
        let auth = tc3::parse("TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2018-10-09/cvm/tc3_request, SignedHeaders=content-type;host, Signature=5da7a33f6993f0614b047e5df4582db9e9bf4672ba50567dba16c6ccf174c474").unwrap();
        let sig = tc3::expected(
            "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
            &auth,
            1539084154,
            "GET",
            "Limit=10&Offset=0",
            &[
                "application/x-www-form-urlencoded",
                "cvm.tencentcloudapi.com",
            ],
            &tc3::payload_hash(b"", None),
        );
        assert_eq!(sig, auth.signature);
    }

    #[test]
    fn tc3_a_changed_byte_breaks_the_signature() {
        let auth = tc3::parse("TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/cvm/tc3_request, SignedHeaders=content-type;host, Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168").unwrap();
        let sig = tc3::expected(
            "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
            &auth,
            1551113065,
            "POST",
            "",
            &["application/json", "cvm.tencentcloudapi.com"],
            &tc3::payload_hash(V_PAYLOAD.as_bytes(), None),
        );
        assert!(!same(&sig, &auth.signature));
        assert!(
            tc3::parse("TC3-HMAC-SHA256 Credential=a/b/c/d, SignedHeaders=host, Signature=x")
                .is_none()
        );
    }

    #[test]
    fn huawei_h1_get_vector() {
        let auth = huawei::parse("SDK-HMAC-SHA256 Access=AccessKey, SignedHeaders=x-sdk-date, Signature=5a2ce64c865e0e6046321c6f3d5a77ba8413eeaf355c3166c03d58d02ac79624").unwrap();
        let sig = huawei::expected(
            "SecretKey",
            &auth,
            "20060102T150405Z",
            "GET",
            "/path",
            "limit=1",
            &["20060102T150405Z"],
            &huawei::body_hash(b"", None),
        );
        assert_eq!(sig, auth.signature);
    }

    #[test]
    fn huawei_h2_post_vector_with_the_encoders_newline() {
        let auth = huawei::parse("SDK-HMAC-SHA256 Access=AccessKey, SignedHeaders=x-sdk-date, Signature=cecc2af119b18ab70b4d094c0750f3b42c02f254903179a0fc2cc72fc9db4f59").unwrap();
        let sig = huawei::expected(
            "SecretKey",
            &auth,
            "20060102T150405Z",
            "POST",
            "/path",
            "key=value",
            &["20060102T150405Z"],
            &huawei::body_hash(b"{\"Name\":\"test\",\"Id\":1}\n", None),
        );
        assert_eq!(sig, auth.signature);
        let without_newline = huawei::expected(
            "SecretKey",
            &auth,
            "20060102T150405Z",
            "POST",
            "/path",
            "key=value",
            &["20060102T150405Z"],
            &huawei::body_hash(b"{\"Name\":\"test\",\"Id\":1}", None),
        );
        assert_ne!(without_newline, auth.signature);
    }

    #[test]
    fn huawei_canonical_query_matches_the_sdk_test() {
        let raw = "limit=1&enable=true&test=%E4%B8%80+%28%26%3D%3F%21%23%25.%2A%29&path=%2Ftmp%2F123&multi=3&multi=1&multi=2";
        // `+` is not a space in this canonical form; the SDK escapes spaces
        // as %20, so a client never sends `+` for one.
        let raw = raw.replace('+', "%20");
        assert_eq!(
            huawei::canonical_query(&raw),
            "enable=true&limit=1&multi=1&multi=2&multi=3&path=%2Ftmp%2F123&test=%E4%B8%80%20%28%26%3D%3F%21%23%25.%2A%29"
        );
        assert_eq!(huawei::canonical_uri("/v1/p/x%20y"), "/v1/p/x%20y/");
    }

    #[test]
    fn unsigned_payload_hashes_are_what_the_sdks_use() {
        assert_eq!(
            huawei::body_hash(b"abc", Some("UNSIGNED-PAYLOAD")),
            "UNSIGNED-PAYLOAD"
        );
        assert_eq!(
            tc3::payload_hash(b"abc", Some("UNSIGNED-PAYLOAD")),
            hex_sha256(b"UNSIGNED-PAYLOAD")
        );
    }
}
