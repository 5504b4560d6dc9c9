//! Sink tests: the webhook sink against the in-test receiver, the Vault
//! sink against a real OpenBao server.

mod vault;
mod webhook;

use chrono::{DateTime, Utc};
use rekey::secret::{Secret, SecretFields};
use rekey::sink::Publication;

/// A new key as a provider returned it, with everything a publication
/// borrows.
pub struct NewKey {
    pub policy: String,
    pub lineage: String,
    pub rotation_id: String,
    pub key_id: String,
    pub key_name: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub fields: SecretFields,
    pub fingerprint: String,
}

impl NewKey {
    /// A key with two secret fields whose values are unique to this call.
    pub fn new(lineage: &str, rotation_id: &str) -> NewKey {
        let mut fields = SecretFields::new();
        fields.insert(
            "access_key_id",
            Secret::new(format!("AKID{}", uuid::Uuid::new_v4().simple())),
        );
        fields.insert(
            "access_key_secret",
            Secret::new(format!("sk_{}", uuid::Uuid::new_v4().simple())),
        );
        let fingerprint = fields.fingerprint();
        let created_at = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        NewKey {
            policy: "maas-prod".into(),
            lineage: lineage.into(),
            rotation_id: rotation_id.into(),
            key_id: format!("key-{rotation_id}"),
            key_name: format!("{lineage}-20261122-r{rotation_id}-1"),
            created_at,
            expires_at: created_at + chrono::Duration::days(30),
            fields,
            fingerprint,
        }
    }

    pub fn publication(&self) -> Publication<'_> {
        Publication {
            policy: &self.policy,
            lineage: &self.lineage,
            provider: "gw",
            provider_kind: "tencent-apigateway",
            rotation_id: &self.rotation_id,
            key_id: Some(&self.key_id),
            key_name: &self.key_name,
            created_at: Some(self.created_at),
            expires_at: Some(self.expires_at),
            secret: &self.fields,
            fingerprint: &self.fingerprint,
            fence: None,
        }
    }

    /// The plaintext values, to search logs and messages for.
    pub fn secret_values(&self) -> Vec<String> {
        self.fields
            .iter()
            .map(|(_, v)| v.expose().to_string())
            .collect()
    }

    pub fn value(&self, field: &str) -> String {
        self.fields.get(field).unwrap().expose().to_string()
    }
}
