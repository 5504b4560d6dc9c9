//! Standard Webhooks signing (standardwebhooks.com, spec v1.0.0), shared by
//! the webhook sink and notifications.
//!
//! A message is signed as HMAC-SHA256 over the exact bytes
//! `"{webhook-id}.{webhook-timestamp}.{body}"`, sent as
//! `webhook-signature: v1,<base64>`. Secrets are written `whsec_<base64>`;
//! the HMAC key is the base64-decoded part. Several secrets sign at once
//! (space-separated signatures) so a receiver can rotate its secret without
//! downtime. [`verify`] is the receiver's side (constant-time comparison,
//! ±5 minutes of timestamp tolerance), used by tests and available to
//! anyone embedding rekey.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::config::SecretRef;

type HmacSha256 = Hmac<Sha256>;

/// Header names, lower case as the spec writes them.
pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// The prefix of a secret as users see it.
pub const SECRET_PREFIX: &str = "whsec_";

/// How far a timestamp may be from the verifier's clock, either way; the
/// value every reference library uses.
pub const TOLERANCE_SECONDS: i64 = 5 * 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    #[error("webhook secret is empty")]
    EmptySecret,
    #[error("webhook secret is not valid base64 after the whsec_ prefix")]
    InvalidSecret,
    #[error("no webhook signing secret configured")]
    NoSecrets,
    #[error("cannot resolve webhook secret {reference}: {reason}")]
    Resolve { reference: String, reason: String },
    #[error("webhook-id {0:?} must be non-empty and must not contain '.'")]
    InvalidId(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not an integer")]
    InvalidTimestamp,
    #[error("webhook-timestamp is too old")]
    TooOld,
    #[error("webhook-timestamp is too far in the future")]
    TooNew,
    #[error("no matching signature")]
    NoMatchingSignature,
}

/// One HMAC key. Never printed; wiped on drop.
#[derive(Clone)]
pub struct WebhookSecret(Zeroizing<Vec<u8>>);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

impl WebhookSecret {
    /// Parse `whsec_<base64>` (the prefix is optional, as in the reference
    /// libraries). An empty key is refused.
    pub fn parse(text: &str) -> Result<Self, SigningError> {
        let b64 = text.strip_prefix(SECRET_PREFIX).unwrap_or(text).trim();
        if b64.is_empty() {
            return Err(SigningError::EmptySecret);
        }
        let key = Zeroizing::new(
            STANDARD
                .decode(b64.as_bytes())
                .map_err(|_| SigningError::InvalidSecret)?,
        );
        if key.is_empty() {
            return Err(SigningError::EmptySecret);
        }
        Ok(WebhookSecret(key))
    }

    /// A raw key (tests, or a receiver that already decoded it).
    pub fn from_bytes(key: &[u8]) -> Result<Self, SigningError> {
        if key.is_empty() {
            return Err(SigningError::EmptySecret);
        }
        Ok(WebhookSecret(Zeroizing::new(key.to_vec())))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// `v1,<base64>` for one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }

    /// Constant-time check of one raw tag.
    fn verify_tag(&self, id: &str, timestamp: i64, body: &[u8], tag: &[u8]) -> bool {
        self.mac(id, timestamp, body).verify_slice(tag).is_ok()
    }
}

/// The three headers of one signed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub id: String,
    pub timestamp: i64,
    /// Space-separated `v1,<base64>` entries, one per secret.
    pub signature: String,
}

impl SignedHeaders {
    /// As (name, value) pairs, ready for a request builder.
    pub fn pairs(&self) -> [(&'static str, String); 3] {
        [
            (HEADER_ID, self.id.clone()),
            (HEADER_TIMESTAMP, self.timestamp.to_string()),
            (HEADER_SIGNATURE, self.signature.clone()),
        ]
    }
}

/// Signs with every configured secret.
#[derive(Clone)]
pub struct Signer {
    secrets: Vec<WebhookSecret>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({} secret(s))", self.secrets.len())
    }
}

impl Signer {
    pub fn new(secrets: Vec<WebhookSecret>) -> Result<Self, SigningError> {
        if secrets.is_empty() {
            return Err(SigningError::NoSecrets);
        }
        Ok(Signer { secrets })
    }

    /// Resolve config references (`{ env = … }`, …) and parse each.
    pub fn from_refs(refs: &[SecretRef]) -> Result<Self, SigningError> {
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            let s = r.resolve_now().map_err(|e| SigningError::Resolve {
                reference: r.to_string(),
                reason: e.to_string(),
            })?;
            out.push(WebhookSecret::parse(s.expose())?);
        }
        Signer::new(out)
    }

    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The `webhook-signature` value: one `v1,` entry per secret.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> Result<String, SigningError> {
        check_id(id)?;
        Ok(self
            .secrets
            .iter()
            .map(|s| s.sign(id, timestamp, body))
            .collect::<Vec<_>>()
            .join(" "))
    }

    /// All three headers for one attempt at `timestamp` (Unix seconds).
    pub fn headers(
        &self,
        id: &str,
        timestamp: i64,
        body: &[u8],
    ) -> Result<SignedHeaders, SigningError> {
        Ok(SignedHeaders {
            id: id.to_string(),
            timestamp,
            signature: self.sign(id, timestamp, body)?,
        })
    }
}

fn check_id(id: &str) -> Result<(), SigningError> {
    if id.is_empty() || id.contains('.') {
        return Err(SigningError::InvalidId(id.to_string()));
    }
    Ok(())
}

/// Verify a received message as a Standard Webhooks receiver does: the
/// timestamp within ±[`TOLERANCE_SECONDS`] of `now` (Unix seconds), and at
/// least one `v1,` entry matching one of `secrets` (constant-time).
pub fn verify(
    secrets: &[WebhookSecret],
    id: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), VerifyError> {
    let id = id.ok_or(VerifyError::MissingHeader(HEADER_ID))?;
    let ts_text = timestamp.ok_or(VerifyError::MissingHeader(HEADER_TIMESTAMP))?;
    let sig = signature.ok_or(VerifyError::MissingHeader(HEADER_SIGNATURE))?;
    let ts: i64 = ts_text
        .trim()
        .parse()
        .map_err(|_| VerifyError::InvalidTimestamp)?;
    if ts < now - TOLERANCE_SECONDS {
        return Err(VerifyError::TooOld);
    }
    if ts > now + TOLERANCE_SECONDS {
        return Err(VerifyError::TooNew);
    }
    for entry in sig.split(' ') {
        let Some(b64) = entry.strip_prefix("v1,") else {
            continue;
        };
        let Ok(tag) = STANDARD.decode(b64) else {
            continue;
        };
        if tag.is_empty() {
            continue;
        }
        if secrets.iter().any(|s| s.verify_tag(id, ts, body, &tag)) {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatchingSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Official vectors, PROTOCOLS.md §5.
    const W1_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const W1_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const W1_TS: i64 = 1614265330;
    const W1_BODY: &str = r#"{"test": 2432232314}"#;
    const W1_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    const W2_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const W2_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const W2_TS: i64 = 1649367553;
    const W2_BODY: &str = r#"{"email":"test@example.com","username":"test_user"}"#;
    const W2_SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn secret(s: &str) -> WebhookSecret {
        WebhookSecret::parse(s).unwrap()
    }

    fn check(sig: &str, secrets: &[WebhookSecret]) -> Result<(), VerifyError> {
        verify(
            secrets,
            Some(W1_ID),
            Some(&W1_TS.to_string()),
            Some(sig),
            W1_BODY.as_bytes(),
            W1_TS,
        )
    }

    #[test]
    fn signs_the_official_vector_w1() {
        assert_eq!(
            secret(W1_SECRET).sign(W1_ID, W1_TS, W1_BODY.as_bytes()),
            W1_SIG
        );
    }

    #[test]
    fn signs_the_official_vector_w2() {
        assert_eq!(
            secret(W2_SECRET).sign(W2_ID, W2_TS, W2_BODY.as_bytes()),
            W2_SIG
        );
    }

    #[test]
    fn secret_prefix_is_optional_as_in_the_reference_libraries() {
        let bare = W1_SECRET.strip_prefix("whsec_").unwrap();
        assert_eq!(secret(bare).sign(W1_ID, W1_TS, W1_BODY.as_bytes()), W1_SIG);
    }

    #[test]
    fn verifies_the_official_vectors() {
        assert_eq!(check(W1_SIG, &[secret(W1_SECRET)]), Ok(()));
        assert_eq!(
            verify(
                &[secret(W2_SECRET)],
                Some(W2_ID),
                Some(&W2_TS.to_string()),
                Some(W2_SIG),
                W2_BODY.as_bytes(),
                W2_TS + 10,
            ),
            Ok(())
        );
    }

    #[test]
    fn a_changed_last_character_fails() {
        assert_eq!(
            check(
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=",
                &[secret(W1_SECRET)]
            ),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn a_truncated_signature_fails() {
        assert_eq!(
            check("v1,", &[secret(W1_SECRET)]),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            check("", &[secret(W1_SECRET)]),
            Err(VerifyError::NoMatchingSignature)
        );
        // Right bytes, wrong version tag.
        let v2 = W1_SIG.replace("v1,", "v2,");
        assert_eq!(
            check(&v2, &[secret(W1_SECRET)]),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn an_empty_secret_is_refused() {
        assert_eq!(
            WebhookSecret::parse("whsec_").unwrap_err(),
            SigningError::EmptySecret
        );
        assert_eq!(
            WebhookSecret::parse("").unwrap_err(),
            SigningError::EmptySecret
        );
        assert_eq!(
            WebhookSecret::parse("whsec_!!!").unwrap_err(),
            SigningError::InvalidSecret
        );
        assert_eq!(Signer::new(vec![]).unwrap_err(), SigningError::NoSecrets);
    }

    #[test]
    fn timestamps_outside_five_minutes_fail_both_ways() {
        let s = [secret(W1_SECRET)];
        let at = |now: i64| {
            verify(
                &s,
                Some(W1_ID),
                Some(&W1_TS.to_string()),
                Some(W1_SIG),
                W1_BODY.as_bytes(),
                now,
            )
        };
        assert_eq!(at(W1_TS + 300), Ok(()));
        assert_eq!(at(W1_TS - 300), Ok(()));
        assert_eq!(at(W1_TS + 301), Err(VerifyError::TooOld));
        assert_eq!(at(W1_TS - 301), Err(VerifyError::TooNew));
        assert_eq!(
            verify(
                &s,
                Some(W1_ID),
                Some("soon"),
                Some(W1_SIG),
                W1_BODY.as_bytes(),
                W1_TS
            ),
            Err(VerifyError::InvalidTimestamp)
        );
        assert_eq!(
            verify(&s, None, Some("1"), Some(W1_SIG), b"", 1),
            Err(VerifyError::MissingHeader(HEADER_ID))
        );
    }

    #[test]
    fn several_secrets_sign_at_once_and_either_verifies() {
        let signer = Signer::new(vec![secret(W1_SECRET), secret(W2_SECRET)]).unwrap();
        let sig = signer.sign(W1_ID, W1_TS, W1_BODY.as_bytes()).unwrap();
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], W1_SIG);
        // A receiver that knows only the old secret, or only the new one,
        // accepts the message.
        assert_eq!(check(&sig, &[secret(W1_SECRET)]), Ok(()));
        assert_eq!(check(&sig, &[secret(W2_SECRET)]), Ok(()));
        let other = WebhookSecret::from_bytes(b"another-secret-of-24-byte").unwrap();
        assert_eq!(check(&sig, &[other]), Err(VerifyError::NoMatchingSignature));
    }

    #[test]
    fn a_body_changed_by_one_byte_fails() {
        let s = [secret(W1_SECRET)];
        let r = verify(
            &s,
            Some(W1_ID),
            Some(&W1_TS.to_string()),
            Some(W1_SIG),
            br#"{"test":2432232314}"#,
            W1_TS,
        );
        assert_eq!(r, Err(VerifyError::NoMatchingSignature));
    }

    #[test]
    fn ids_with_dots_are_refused() {
        let signer = Signer::new(vec![secret(W1_SECRET)]).unwrap();
        assert!(matches!(
            signer.sign("msg_a.b", 1, b""),
            Err(SigningError::InvalidId(_))
        ));
        assert!(matches!(
            signer.sign("", 1, b""),
            Err(SigningError::InvalidId(_))
        ));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let s = secret(W1_SECRET);
        let dbg = format!("{s:?} {:?}", Signer::new(vec![s.clone()]).unwrap());
        assert!(!dbg.contains("MfKQ9r8"), "{dbg}");
        assert!(dbg.contains("redacted"));
    }
}
