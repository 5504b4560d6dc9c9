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

/// One secret string. Cloning copies the plaintext into another zeroizing
/// buffer; both are wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(Zeroizing::new(value.into()))
    }

    /// The plaintext, for the one call that must send or write it.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A stable, non-reversible fingerprint (`sha256:` + 16 hex bytes) used to
    /// compare what a sink holds with what we published, and to name a key in
    /// notifications without carrying it.
    pub fn fingerprint(&self) -> String {
        fingerprint_bytes(self.0.as_bytes())
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
            buf.extend_from_slice(v.expose().as_bytes());
            buf.push(0);
        }
        fingerprint_bytes(&buf)
    }

    /// JSON object of the plaintext fields, for sealing and for sinks that
    /// write JSON. The returned buffer zeroizes on drop.
    pub fn to_json(&self) -> Zeroizing<String> {
        let map: serde_json::Map<String, serde_json::Value> = self
            .0
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.expose().to_string())))
            .collect();
        Zeroizing::new(serde_json::Value::Object(map).to_string())
    }

    /// Inverse of [`SecretFields::to_json`].
    pub fn from_json(text: &str) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        let mut out = Self::new();
        for (k, v) in value.as_object()? {
            out.insert(k, Secret::new(v.as_str()?.to_string()));
        }
        Some(out)
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
    fn fingerprint_differs_per_value_and_hides_it() {
        let a = Secret::new("one").fingerprint();
        let b = Secret::new("two").fingerprint();
        assert_ne!(a, b);
        assert!(a.starts_with("sha256:") && !a.contains("one"));
    }
}
