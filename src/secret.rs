//! Key material in memory: `Secret` and `SecretFields`.
//!
//! Everything that holds plaintext a provider gave us, or a credential rekey
//! uses, lives in these types. They never print their contents (`Debug` and
//! `Display` both say `[redacted]`), they zeroize on drop, and they implement
//! no `Serialize`, so a secret cannot slip into a log line, an error, a status
//! document or a notification by accident. The only ways out are
//! [`Secret::expose`] (for the HTTP call or sink write that needs it) and the
//! sealed form in `state::seal`.

use std::collections::BTreeMap;
use std::fmt;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// One secret: usually text, sometimes bytes (a Huawei NES credential
/// archive). Cloning copies the plaintext into another zeroizing buffer;
/// both are wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(Zeroizing::new(value.into().into_bytes()))
    }

    /// A secret that may not be text.
    pub fn from_bytes(value: Vec<u8>) -> Self {
        Secret(Zeroizing::new(value))
    }

    /// The plaintext as text, for the one call that must send or write it.
    /// A secret that is not UTF-8 exposes as the empty string: callers that
    /// may hold bytes (sinks, sealing) use [`Secret::as_text`] or
    /// [`Secret::expose_bytes`].
    pub fn expose(&self) -> &str {
        self.as_text().unwrap_or("")
    }

    /// The plaintext as text, or `None` when it is not UTF-8.
    pub fn as_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The plaintext bytes, exactly as the provider issued them.
    pub fn expose_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The value for a text format (`env`, `json`, sealing): the text
    /// itself, or for bytes that are not UTF-8, standard padded base64
    /// with `is_base64 = true`. Zeroized on drop.
    pub fn text_or_base64(&self) -> (Zeroizing<String>, bool) {
        use base64::Engine as _;
        match self.as_text() {
            Some(t) => (Zeroizing::new(t.to_string()), false),
            None => (
                Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*self.0)),
                true,
            ),
        }
    }

    /// The value as JSON: a string, or `{"base64": "…"}` for bytes that are
    /// not UTF-8 (the form of `json` files, webhook and Vault payloads and
    /// the sealed state).
    pub fn to_json_value(&self) -> serde_json::Value {
        let (v, b64) = self.text_or_base64();
        if b64 {
            serde_json::json!({ "base64": v.as_str() })
        } else {
            serde_json::Value::String(v.to_string())
        }
    }

    /// Inverse of [`Secret::to_json_value`].
    pub fn from_json_value(v: &serde_json::Value) -> Option<Secret> {
        use base64::Engine as _;
        match v {
            serde_json::Value::String(s) => Some(Secret::new(s.clone())),
            serde_json::Value::Object(o) if o.len() == 1 => {
                let b = o.get("base64")?.as_str()?;
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .ok()
                    .map(Secret::from_bytes)
            }
            _ => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A stable, non-reversible fingerprint (`sha256:` + 16 hex bytes) used to
    /// compare what a sink holds with what we published, and to name a key in
    /// notifications without carrying it.
    pub fn fingerprint(&self) -> String {
        fingerprint_bytes(&self.0)
    }
}

/// Fingerprint of raw bytes, the same function `Secret::fingerprint` uses.
pub fn fingerprint_bytes(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    format!("sha256:{}", hex::encode(&digest[..16]))
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The named fields of one new key as its provider returned them
/// (OceanBase: `api_key`; Tencent: `access_key_id` + `access_key_secret`;
/// Huawei: `credential`). Field names are not secret; values are.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretFields(BTreeMap<String, Secret>);

impl SecretFields {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn single(name: &str, value: Secret) -> Self {
        let mut f = Self::new();
        f.insert(name, value);
        f
    }

    pub fn insert(&mut self, name: &str, value: Secret) {
        self.0.insert(name.to_string(), value);
    }

    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.0.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Secret)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Fingerprint over every field (name and value), order-independent
    /// because the map is sorted. What read-back verification compares.
    pub fn fingerprint(&self) -> String {
        let mut buf = Zeroizing::new(Vec::new());
        for (k, v) in &self.0 {
            buf.extend_from_slice(k.as_bytes());
            buf.push(0);
            buf.extend_from_slice(v.expose_bytes());
            buf.push(0);
        }
        fingerprint_bytes(&buf)
    }

    /// JSON object of the plaintext fields, for sealing and for sinks that
    /// write JSON. The returned buffer zeroizes on drop.
    /// Fields that are not UTF-8 appear as `{"base64": "…"}`.
    pub fn to_json(&self) -> Zeroizing<String> {
        let map: serde_json::Map<String, serde_json::Value> = self
            .0
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json_value()))
            .collect();
        Zeroizing::new(serde_json::Value::Object(map).to_string())
    }

    /// Inverse of [`SecretFields::to_json`].
    pub fn from_json(text: &str) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        let mut out = Self::new();
        for (k, v) in value.as_object()? {
            out.insert(k, Secret::from_json_value(v)?);
        }
        Some(out)
    }

    /// The provider's primary field, the one a `raw` file holds by default:
    /// the only field, else the first present of `credential` (Huawei NES),
    /// `api_key` (OceanBase), `access_key_secret` (Tencent), else the first
    /// whose name says `secret`.
    pub fn primary(&self) -> Option<(&str, &Secret)> {
        if self.0.len() == 1 {
            return self.iter().next();
        }
        for name in ["credential", "api_key", "access_key_secret"] {
            if let Some((k, v)) = self.0.get_key_value(name) {
                return Some((k.as_str(), v));
            }
        }
        self.iter().find(|(k, _)| k.contains("secret"))
    }
}

impl fmt::Debug for SecretFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "[redacted]")))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("sk_live_hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        let f = SecretFields::single("api_key", s);
        let dbg = format!("{f:?}");
        assert!(dbg.contains("api_key") && !dbg.contains("hunter2"), "{dbg}");
    }

    #[test]
    fn json_round_trip_keeps_every_field() {
        let mut f = SecretFields::new();
        f.insert("access_key_id", Secret::new("AKID1"));
        f.insert("access_key_secret", Secret::new("s3cr3t"));
        let back = SecretFields::from_json(&f.to_json()).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.fingerprint(), f.fingerprint());
    }

    #[test]
    fn bytes_that_are_not_utf8_survive_sealing_json_as_base64() {
        let zip = vec![b'P', b'K', 3, 4, 0xff, 0xfe, 0];
        let mut f = SecretFields::new();
        f.insert("credential", Secret::new("id,key\n1,abc\n"));
        f.insert("credential_zip", Secret::from_bytes(zip.clone()));
        let json = f.to_json();
        assert!(json.contains("\"base64\""), "{}", json.as_str());
        let back = SecretFields::from_json(&json).unwrap();
        assert_eq!(back.get("credential_zip").unwrap().expose_bytes(), &zip[..]);
        assert_eq!(back.fingerprint(), f.fingerprint());
        assert_eq!(f.primary().unwrap().0, "credential");
        // Text never becomes base64, even if it looks like it.
        let t = Secret::new("eyJhIjoxfQ==");
        assert_eq!(t.to_json_value(), serde_json::json!("eyJhIjoxfQ=="));
        assert_eq!(Secret::from_bytes(vec![0xff]).expose(), "");
    }

    #[test]
    fn fingerprint_differs_per_value_and_hides_it() {
        let a = Secret::new("one").fingerprint();
        let b = Secret::new("two").fingerprint();
        assert_ne!(a, b);
        assert!(a.starts_with("sha256:") && !a.contains("one"));
    }
}
