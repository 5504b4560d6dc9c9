//! Sinks: where new keys are published. One small async trait, one file per
//! backend (`file`, `webhook`, `vault`).
//!
//! A sink acknowledges a publication by returning `Ok`; the engine records
//! that per sink, so a failing sink is retried alone. Sinks that can be read
//! back (file, Vault) implement [`Sink::read_back`], which the engine calls
//! before deleting an old key to prove the sink still holds the new one.

pub mod hook;
pub mod vault;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::config::{SinkConfig, SinkKind, TargetTemplate};
use crate::secret::SecretFields;

/// Everything a sink needs to publish one new key.
#[derive(Debug, Clone, Copy)]
pub struct Publication<'a> {
    pub policy: &'a str,
    pub lineage: &'a str,
    /// Provider name (config) and kind.
    pub provider: &'a str,
    pub provider_kind: &'a str,
    pub rotation_id: &'a str,
    pub key_id: Option<&'a str>,
    pub key_name: &'a str,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub secret: &'a SecretFields,
    /// `secret.fingerprint()`, precomputed.
    pub fingerprint: &'a str,
    /// The leader's fence (PostgreSQL state only, DESIGN §8): a token the
    /// sink keeps beside the target and refuses to go below (file: a
    /// `.NAME.rekey-fence` file under `flock`; Vault: custom metadata
    /// `rekey_fence` with check-and-set; webhook: a `fence` body field).
    /// `None` on SQLite: the sink writes exactly as it always did.
    pub fence: Option<i64>,
}

/// What a read-back found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadBack {
    /// The fingerprint of what the sink holds now.
    Fingerprint(String),
    /// Nothing there.
    Missing,
    /// This sink cannot be read back (webhook).
    Unsupported,
}

/// The key a sink holds, as its own read-back reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldKey {
    /// The provider's key id written beside the secret (may be absent).
    pub key_id: Option<String>,
    /// The key's name written beside the secret (may be absent).
    pub key_name: Option<String>,
    /// What `read_back` would return now (compared before any delete).
    pub fingerprint: String,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("sink {sink}: {message}")]
pub struct SinkError {
    pub sink: String,
    /// What went wrong; never contains the secret.
    pub message: String,
    pub retryable: bool,
    /// Server-requested delay before the next try (429 Retry-After).
    pub retry_after: Option<Duration>,
    /// The target holds a newer fence token than this write's: a newer
    /// leader wrote it. Never retried; the node stops (DESIGN §8).
    pub fenced: bool,
}

impl SinkError {
    pub fn retryable(sink: &str, message: impl Into<String>) -> Self {
        SinkError {
            sink: sink.to_string(),
            message: message.into(),
            retryable: true,
            retry_after: None,
            fenced: false,
        }
    }

    pub fn permanent(sink: &str, message: impl Into<String>) -> Self {
        SinkError {
            sink: sink.to_string(),
            message: message.into(),
            retryable: false,
            retry_after: None,
            fenced: false,
        }
    }

    /// The target holds fence token `held`, newer than this write's
    /// `mine`: refused, never retried.
    pub fn fenced(sink: &str, target: &str, held: i64, mine: i64) -> Self {
        SinkError {
            sink: sink.to_string(),
            message: format!(
                "target {target} holds fence token {held}, newer than this node's {mine}: a newer leader wrote it"
            ),
            retryable: false,
            retry_after: None,
            fenced: true,
        }
    }

    pub fn class(&self) -> &'static str {
        if self.retryable {
            "retryable"
        } else {
            "permanent"
        }
    }
}

#[async_trait]
pub trait Sink: Send + Sync {
    fn name(&self) -> &str;
    fn kind(&self) -> &'static str;
    /// The target template, for sinks that write to a named place.
    fn target(&self) -> Option<&TargetTemplate>;

    /// Publish; `Ok` is the acknowledgement, with an optional detail for
    /// history (path written, Vault version).
    async fn publish(&self, p: &Publication<'_>) -> Result<Option<String>, SinkError>;

    /// What the sink holds now for this policy and lineage.
    async fn read_back(&self, _policy: &str, _lineage: &str) -> Result<ReadBack, SinkError> {
        Ok(ReadBack::Unsupported)
    }

    /// Which key the sink holds now for this policy and lineage, as written
    /// beside the secret (the file sink's `REKEY_KEY_ID`/`key_id`, Vault's
    /// `custom_metadata.key_id`), with the fingerprint `read_back` gives.
    /// `Ok(None)`: nothing there, or this sink cannot say (webhook, raw
    /// files). Used only by `rekey recover`: proof of which key consumers
    /// hold when the state DB cannot say.
    async fn read_back_key(
        &self,
        _policy: &str,
        _lineage: &str,
    ) -> Result<Option<HeldKey>, SinkError> {
        Ok(None)
    }

    /// The fingerprint `read_back` returns once `secret` is published; by
    /// default that of the secret fields themselves. Sinks that store a
    /// transformed form (the file sink's `raw` and `env` formats) override.
    fn expected_fingerprint(&self, secret: &SecretFields) -> String {
        secret.fingerprint()
    }
}

pub type SharedSink = Arc<dyn Sink>;

/// Whether sinks compare fence tokens (DESIGN §8). Only the test-only cargo
/// feature `ha-test-unfenced` turns it off, for the negative-control tests
/// that prove the HA suite can fail; a release build never has it.
pub const TOKENS_CHECKED: bool = !cfg!(feature = "ha-test-unfenced");

/// The store's record of which sink wrote which target for which policy
/// and lineage: the seam between sinks and the ownership work (the store
/// records target writers; a sink asks before refusing a target whose own
/// labels are missing). `target` is the sink's rendered target as it shows
/// it (Vault: `mount/path`).
pub trait TargetRecord: Send + Sync {
    /// Whether `sink` wrote `target` for `policy` and `lineage` before.
    fn wrote(&self, sink: &str, target: &str, policy: &str, lineage: &str) -> bool;
}

pub mod file;

/// Build the sink a config names.
pub fn build(cfg: &SinkConfig, clock: crate::clock::SharedClock) -> Result<SharedSink, SinkError> {
    Ok(match &cfg.kind {
        SinkKind::File(f) => Arc::new(file::FileSink::new(&cfg.name, f)),
        SinkKind::Webhook(w) => {
            Arc::new(webhook::WebhookSink::new(&cfg.name, w, cfg)?.with_clock(clock))
        }
        SinkKind::Vault(v) => Arc::new(vault::VaultSink::new(&cfg.name, v, cfg)?.with_clock(clock)),
    })
}
