//! The config digest: what every node sharing one PostgreSQL state must
//! agree on, as one SHA-256 (FIPS 180-4) in lowercase hex.
//!
//! It covers the parsed TOML of `[providers.*]`, `[sinks.*]`, `[notify.*]`
//! and `[[policy]]` — with secret references unresolved (`{ env = "X" }` is
//! hashed as written, never its value) — and nothing of `[daemon]` (per-node
//! settings: `listen`, `instance`, `state`, timeouts, the seal key, which
//! has its own check value). The canonical form is independent of
//! formatting, comments, key order within a table, the order of the
//! `[providers.*]`/`[sinks.*]`/`[notify.*]` tables and the order of the
//! `[[policy]]` sections; different spellings of one value (`"90s"` and
//! `"1m 30s"`) are different configs. A node whose digest differs from the
//! one recorded in the lease row refuses to lead (DESIGN §8).

use sha2::{Digest, Sha256};

/// The top-level tables the digest covers, in the order they are hashed.
pub const COVERED: &[&str] = &["providers", "sinks", "notify", "policy"];

/// The digest of the config text `src`: 64 lowercase hex characters, or
/// `None` when `src` is not TOML (validation reports that).
pub fn of_source(src: &str) -> Option<String> {
    let root: toml::Table = toml::from_str(src).ok()?;
    let mut canon = String::from("rekey-config-digest-v1\n");
    for key in COVERED {
        canon.push_str(key);
        canon.push('=');
        match root.get(*key) {
            None => canon.push_str("null"),
            Some(toml::Value::Array(items)) if *key == "policy" => {
                let mut parts: Vec<String> = items.iter().map(canonical).collect();
                parts.sort();
                canon.push('[');
                canon.push_str(&parts.join(","));
                canon.push(']');
            }
            Some(v) => canon.push_str(&canonical(v)),
        }
        canon.push('\n');
    }
    Some(hex::encode(Sha256::digest(canon.as_bytes())))
}

/// One value as unambiguous text: tables with their keys sorted, strings
/// JSON-quoted, every scalar tagged with its type.
fn canonical(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("s{}", serde_json::Value::String(s.clone())),
        toml::Value::Integer(i) => format!("i{i}"),
        toml::Value::Float(f) => format!("f{f:?}"),
        toml::Value::Boolean(b) => format!("b{b}"),
        toml::Value::Datetime(d) => format!("d{d}"),
        toml::Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", parts.join(","))
        }
        toml::Value::Table(t) => {
            let mut keys: Vec<&String> = t.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        serde_json::Value::String(k.clone()),
                        canonical(&t[k])
                    )
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::of_source;

    const BASE: &str = r#"
[daemon]
listen = "127.0.0.1:9477"

[providers.ob]
kind = "oceanbase"
access_key_id = { env = "OB_AK" }

[sinks.f]
kind = "file"
path = "/k/{lineage}.env"

[[policy]]
name = "a"
provider = "ob"

[[policy]]
name = "b"
provider = "ob"
"#;

    #[test]
    fn formatting_key_order_and_daemon_settings_do_not_change_the_digest() {
        let reordered = r#"
# a comment
[[policy]]
provider = "ob"
name = "b"

[sinks.f]
path = "/k/{lineage}.env"
kind = "file"

[[policy]]
name = "a"
provider = "ob"

[daemon]
listen = "127.0.0.1:9999"
instance = "node-b"

[providers.ob]
access_key_id = {env="OB_AK"}
kind   = "oceanbase"
"#;
        assert_eq!(of_source(BASE), of_source(reordered));
        assert_eq!(of_source(BASE).unwrap().len(), 64);
    }

    #[test]
    fn a_changed_policy_sink_or_secret_reference_changes_the_digest() {
        let base = of_source(BASE).unwrap();
        for changed in [
            BASE.replace("name = \"b\"", "name = \"c\""),
            BASE.replace("{lineage}.env", "{lineage}.json"),
            BASE.replace("OB_AK", "OB_AK2"),
            format!("{BASE}\n[notify.ops]\nurl = \"https://x\"\n"),
        ] {
            assert_ne!(of_source(&changed).unwrap(), base, "{changed}");
        }
    }

    #[test]
    fn text_that_is_not_toml_has_no_digest() {
        assert_eq!(of_source("[daemon"), None);
    }
}
