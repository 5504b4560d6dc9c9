//! The TOML file as written: serde structs that mirror it one to one, with
//! `deny_unknown_fields` everywhere and `Spanned` on every value validation
//! may need to point at. Nothing here is checked beyond its TOML type;
//! `validate.rs` turns these into domain types.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

pub type S<T> = Spanned<T>;

/// `[daemon]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    /// A SQLite file path, or a `postgres://` URL (HA, DESIGN §8).
    pub state: Option<S<String>>,
    /// The PostgreSQL password (a secret reference), never in the URL.
    pub state_password: Option<S<RawSecretRef>>,
    /// PEM CA bundle for `sslmode=verify-full` of a PostgreSQL state.
    pub state_ca_file: Option<S<String>>,
    /// This node's name in the lease row (default: the host name).
    pub instance: Option<S<String>>,
    /// How long a lease lasts without renewal (PostgreSQL only; 30s).
    pub lease_ttl: Option<S<String>>,
    /// How often the leader renews its lease (PostgreSQL only; 10s).
    pub lease_renew: Option<S<String>>,
    pub listen: Option<S<String>>,
    pub admin_token: Option<S<RawSecretRef>>,
    pub max_concurrent_rotations: Option<S<i64>>,
    pub shutdown_timeout: Option<S<String>>,
    /// Where the AEAD key that seals created secrets comes from; default a
    /// generated 0600 file beside the state DB.
    pub seal_key: Option<S<RawSecretRef>>,
    /// `unix:/path`: serve the admin POST endpoints only there.
    pub admin_listen: Option<S<String>>,
    /// Group owning the admin socket (default `rekey-admin`).
    pub admin_group: Option<S<String>>,
    /// Host names (besides loopback names and IP literals) the endpoint
    /// answers to.
    pub allowed_hosts: Option<S<Vec<String>>>,
}

/// `[providers.NAME]`: the keys every kind has. The kind's own keys are
/// not here: each kind reads them into its own config struct, defined
/// beside its client (`provider::oceanbase::RawOceanBaseConfig`, …), through
/// its [`ProviderSpec`](super::validate::ProviderSpec). The `kind` tag picks
/// the spec by hand rather than through a serde internally-tagged enum,
/// which buffers the table and loses the spans every error message needs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub kind: S<String>,
    pub endpoint: Option<S<String>>,
    pub rate_limit: Option<S<String>>,
    pub ca_file: Option<S<String>>,
    pub timeout: Option<S<String>>,
}

impl RawProvider {
    /// The keys of [`RawProvider`]: every other key of `[providers.NAME]`
    /// belongs to the kind.
    pub const KEYS: &'static [&'static str] =
        &["kind", "endpoint", "rate_limit", "ca_file", "timeout"];
}

/// `[sinks.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    pub kind: S<String>,
    pub ca_file: Option<S<String>>,
    pub timeout: Option<S<String>>,
    // file
    pub path: Option<S<String>>,
    pub format: Option<S<String>>,
    pub mode: Option<S<String>>,
    pub owner: Option<S<String>>,
    pub group: Option<S<String>>,
    pub on_publish: Option<S<Vec<String>>>,
    pub on_publish_timeout: Option<S<String>>,
    /// env format: secret field name → variable name.
    pub env_names: Option<S<BTreeMap<String, String>>>,
    /// raw format: the secret field written (default: the provider's primary).
    pub field: Option<S<String>>,
    /// Daemon environment variables `on_publish` may see.
    pub pass_env: Option<S<Vec<String>>>,
    /// The directory is shared by every node (required with a PostgreSQL
    /// state).
    pub shared: Option<S<bool>>,
    // webhook
    pub url: Option<S<String>>,
    pub secret: Option<S<OneOrMany<RawSecretRef>>>,
    // vault
    pub address: Option<S<String>>,
    pub mount: Option<S<String>>,
    pub namespace: Option<S<String>>,
    pub auth: Option<S<RawVaultAuth>>,
    /// Take over a secret rekey did not write for this policy and lineage.
    pub adopt_existing: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum RawVaultAuth {
    Token(S<RawSecretRef>),
    Approle(RawAppRole),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAppRole {
    pub role_id: S<RawSecretRef>,
    pub secret_id: S<RawSecretRef>,
    pub mount: Option<S<String>>,
}

/// `[notify.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    pub url: S<String>,
    pub secret: S<OneOrMany<RawSecretRef>>,
    pub events: Option<S<Vec<S<String>>>>,
    pub ca_file: Option<S<String>>,
    pub timeout: Option<S<String>>,
}

/// `[[policy]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub name: S<String>,
    pub provider: S<String>,
    pub mode: Option<S<String>>,
    #[serde(rename = "match")]
    pub match_: S<String>,
    pub schedule: S<String>,
    pub rotate_before_expiry: Option<S<String>>,
    pub max_age: Option<S<String>>,
    pub grace_period: Option<S<String>>,
    #[serde(default)]
    pub sinks: Vec<S<String>>,
    pub name_template: Option<S<String>>,
    pub bootstrap: Option<S<RawBootstrap>>,
    pub create: Option<S<toml::Table>>,
    pub max_attempts: Option<S<i64>>,
    pub failing_after_failures: Option<S<i64>>,
    pub stuck_after: Option<S<String>>,
    pub expiring_warnings: Option<S<Vec<S<String>>>>,
}

/// `bootstrap = true` (a lineage named after the policy), `false`, or a
/// lineage name.
#[derive(Debug)]
pub enum RawBootstrap {
    Flag(bool),
    Lineage(String),
}

// Written by hand rather than `#[serde(untagged)]`, whose only error is
// "data did not match any variant of untagged enum", which tells an
// operator nothing.
impl<'de> Deserialize<'de> for RawBootstrap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawBootstrap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false or a lineage name")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(RawBootstrap::Flag(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawBootstrap::Lineage(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// One value or a list of them (webhook secrets may be several, so a
/// receiver can rotate its secret without downtime).
#[derive(Debug)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

// By hand rather than `#[serde(untagged)]`, so that a mistake inside the
// reference (`{ envv = "X" }`) is reported as itself, not as "data did not
// match any variant".
impl<'de> Deserialize<'de> for OneOrMany<RawSecretRef> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany<RawSecretRef>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a secret reference or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(OneOrMany::One(RawSecretRef::Literal(v.to_string())))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RawSecretRef::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(OneOrMany::One)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::<RawSecretRef>::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(OneOrMany::Many)
            }
        }
        d.deserialize_any(V)
    }
}

impl<T> OneOrMany<T> {
    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        }
    }
}

/// A secret-valued key: a literal string (accepted with a warning) or a
/// table with exactly one of `env`, `file`, `credential`. `Debug` redacts
/// the literal: it is plaintext.
#[derive(Clone, PartialEq, Eq)]
pub enum RawSecretRef {
    Literal(String),
    Env(String),
    File(String),
    Credential(String),
    /// A table that names none or several sources; validation reports it.
    Invalid(String),
}

impl fmt::Debug for RawSecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawSecretRef::Literal(_) => f.write_str("Literal([redacted])"),
            RawSecretRef::Env(n) => f.debug_tuple("Env").field(n).finish(),
            RawSecretRef::File(p) => f.debug_tuple("File").field(p).finish(),
            RawSecretRef::Credential(n) => f.debug_tuple("Credential").field(n).finish(),
            RawSecretRef::Invalid(why) => f.debug_tuple("Invalid").field(why).finish(),
        }
    }
}

impl<'de> Deserialize<'de> for RawSecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawSecretRef;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a secret reference: { env = "NAME" }, { file = "/path" }, { credential = "name" } or a string"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawSecretRef::Literal(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut found: Vec<RawSecretRef> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value: String = map.next_value()?;
                    found.push(match key.as_str() {
                        "env" => RawSecretRef::Env(value),
                        "file" => RawSecretRef::File(value),
                        "credential" => RawSecretRef::Credential(value),
                        other => {
                            return Err(de::Error::unknown_field(
                                other,
                                &["env", "file", "credential"],
                            ));
                        }
                    });
                }
                match found.len() {
                    1 => Ok(found.pop().expect("one element")),
                    0 => Ok(RawSecretRef::Invalid(
                        "an empty table names no secret source".into(),
                    )),
                    _ => Ok(RawSecretRef::Invalid(
                        "a secret reference takes exactly one of env, file, credential".into(),
                    )),
                }
            }
        }
        d.deserialize_any(V)
    }
}
