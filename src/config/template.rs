//! Templates: key names (`name_template`) and sink targets (file paths,
//! Vault paths).
//!
//! A name template may use `{lineage}` (required, once), `{rotation}`
//! (required: it carries the rotation id and attempt number, so every create
//! attempt has a name of its own and a crashed attempt is recognisable),
//! `{date}` (UTC `YYYYMMDD`) and `{policy}`. A target template may use
//! `{lineage}` and `{policy}`. Names rekey created parse back into their
//! lineage through the same template, so a lost DB does not lose lineages.

use std::fmt;

use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use regex::Regex;

use super::shared::SharedByText;

/// Name-template parsers, one per distinct pattern ([`SharedByText`]).
static PARSERS: LazyLock<SharedByText<Regex>> = LazyLock::new(SharedByText::new);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(String),
}

fn parse_parts(s: &str, allowed: &[&str]) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Lit(rest[..open].to_string()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in template {s:?}"))?;
        let name = &after[..close];
        if !allowed.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{name}}} in {s:?}; allowed here: {}",
                allowed
                    .iter()
                    .map(|a| format!("{{{a}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        parts.push(Part::Var(name.to_string()));
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("stray '}}' in template {s:?}"));
    }
    if !rest.is_empty() {
        parts.push(Part::Lit(rest.to_string()));
    }
    Ok(parts)
}

fn count(parts: &[Part], var: &str) -> usize {
    parts
        .iter()
        .filter(|p| matches!(p, Part::Var(v) if v == var))
        .count()
}

/// The `{rotation}` token of one create attempt: `r` + the rotation id +
/// `-` + the attempt number (`r1a2b3c4d-1`).
pub fn rotation_token(rotation_id: &str, attempt: u32) -> String {
    format!("r{rotation_id}-{attempt}")
}

#[derive(Clone)]
pub struct NameTemplate {
    text: String,
    parts: Vec<Part>,
    /// Matches a rendered name; captures `lineage` and `rotation`. Shared
    /// by every template of the same pattern.
    parser: Arc<Regex>,
}

impl fmt::Debug for NameTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NameTemplate({:?})", self.text)
    }
}

impl PartialEq for NameTemplate {
    fn eq(&self, o: &Self) -> bool {
        self.text == o.text
    }
}

/// What a rendered name says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedName {
    pub lineage: String,
    pub rotation_id: String,
    pub attempt: u32,
}

pub const DEFAULT_NAME_TEMPLATE: &str = "{lineage}-{date}-{rotation}";

impl NameTemplate {
    /// Parse a template; `policy` fills `{policy}` when parsing names back.
    pub fn parse(text: &str, policy: &str) -> Result<Self, String> {
        let parts = parse_parts(text, &["lineage", "date", "rotation", "policy"])?;
        match count(&parts, "lineage") {
            0 => return Err(format!("name template {text:?} must contain {{lineage}}")),
            1 => {}
            _ => {
                return Err(format!(
                    "name template {text:?} may contain {{lineage}} only once"
                ));
            }
        }
        match count(&parts, "rotation") {
            0 => {
                return Err(format!(
                    "name template {text:?} must contain {{rotation}} (every create attempt needs a unique name)"
                ));
            }
            1 => {}
            _ => {
                return Err(format!(
                    "name template {text:?} may contain {{rotation}} only once"
                ));
            }
        }
        let mut re = String::from("^");
        for p in &parts {
            match p {
                Part::Lit(l) => re.push_str(&regex::escape(l)),
                Part::Var(v) => re.push_str(match v.as_str() {
                    "lineage" => "(?P<lineage>.+?)",
                    "date" => r"[0-9]{8}",
                    "rotation" => r"r(?P<rid>[0-9a-f]{8})-(?P<attempt>[0-9]+)",
                    _ => "",
                }),
            }
            if let Part::Var(v) = p
                && v == "policy"
            {
                re.push_str(&regex::escape(policy));
            }
        }
        re.push('$');
        let parser = PARSERS
            .get_or_compile(&re, Regex::new)
            .map_err(|e| format!("template {text:?}: {e}"))?;
        Ok(NameTemplate {
            text: text.to_string(),
            parts,
            parser,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn render(
        &self,
        lineage: &str,
        policy: &str,
        rotation_id: &str,
        attempt: u32,
        now: DateTime<Utc>,
    ) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(l) => out.push_str(l),
                Part::Var(v) => match v.as_str() {
                    "lineage" => out.push_str(lineage),
                    "policy" => out.push_str(policy),
                    "date" => out.push_str(&now.format("%Y%m%d").to_string()),
                    "rotation" => out.push_str(&rotation_token(rotation_id, attempt)),
                    _ => {}
                },
            }
        }
        out
    }

    /// The lineage, rotation id and attempt of a name this template made.
    pub fn parse_name(&self, name: &str) -> Option<ParsedName> {
        let c = self.parser.captures(name)?;
        Some(ParsedName {
            lineage: c.name("lineage")?.as_str().to_string(),
            rotation_id: c.name("rid")?.as_str().to_string(),
            attempt: c.name("attempt")?.as_str().parse().ok()?,
        })
    }
}

/// A sink target (file path, Vault path) with `{lineage}` / `{policy}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetTemplate {
    text: String,
    parts: Vec<Part>,
}

impl TargetTemplate {
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts = parse_parts(text, &["lineage", "policy"])?;
        Ok(TargetTemplate {
            text: text.to_string(),
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The directory before the first placeholder: the part of a file
    /// target that must exist beforehand (`/etc/keys` for
    /// `/etc/keys/{policy}/{lineage}.env`, and for `/etc/keys/app.env`).
    /// Directories below it that come from placeholders are created by the
    /// file sink.
    pub fn fixed_dir(&self) -> std::path::PathBuf {
        let fixed = match self.text.find('{') {
            Some(i) => &self.text[..i],
            None => &self.text[..],
        };
        match fixed.rfind('/') {
            Some(0) => std::path::PathBuf::from("/"),
            Some(i) => std::path::PathBuf::from(&fixed[..i]),
            None => std::path::PathBuf::from("."),
        }
    }

    /// Whether every lineage gets a target of its own.
    pub fn has_lineage(&self) -> bool {
        count(&self.parts, "lineage") > 0
    }

    /// Whether the target names the policy (`{policy}`).
    pub fn has_policy(&self) -> bool {
        count(&self.parts, "policy") > 0
    }

    /// The template's literal text and placeholders, in order.
    pub fn pieces(&self) -> Vec<super::ownership::TemplatePiece<'_>> {
        use super::ownership::TemplatePiece;
        self.parts
            .iter()
            .map(|p| match p {
                Part::Lit(l) => TemplatePiece::Lit(l),
                Part::Var(v) if v == "lineage" => TemplatePiece::Lineage,
                Part::Var(_) => TemplatePiece::Policy,
            })
            .collect()
    }

    pub fn render(&self, lineage: &str, policy: &str) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(l) => out.push_str(l),
                Part::Var(v) if v == "lineage" => out.push_str(lineage),
                Part::Var(_) => out.push_str(policy),
            }
        }
        out
    }

    /// The literal text before the first placeholder (all of it when there
    /// is none): what the template fixes, whatever a name holds.
    pub fn fixed_prefix(&self) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(l) => out.push_str(l),
                Part::Var(_) => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_fixed_directory_is_the_part_before_the_first_placeholder() {
        let fixed = |t: &str| TargetTemplate::parse(t).unwrap().fixed_dir();
        assert_eq!(fixed("/etc/keys/{lineage}.env"), Path::new("/etc/keys"));
        assert_eq!(
            fixed("/etc/keys/{policy}/{lineage}.env"),
            Path::new("/etc/keys")
        );
        assert_eq!(
            fixed("/etc/keys/app-{lineage}/k.env"),
            Path::new("/etc/keys")
        );
        assert_eq!(fixed("/etc/keys/app.env"), Path::new("/etc/keys"));
        assert_eq!(fixed("/{lineage}.env"), Path::new("/"));
        assert_eq!(fixed("keys/{lineage}.env"), Path::new("keys"));
        assert_eq!(fixed("{lineage}.env"), Path::new("."));
    }

    #[test]
    fn rendered_names_parse_back_to_their_lineage() {
        let t = NameTemplate::parse(DEFAULT_NAME_TEMPLATE, "p").unwrap();
        let now = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let name = t.render("billing-svc", "p", "1a2b3c4d", 3, now);
        assert_eq!(name, "billing-svc-20261122-r1a2b3c4d-3");
        let parsed = t.parse_name(&name).unwrap();
        assert_eq!(parsed.lineage, "billing-svc");
        assert_eq!(parsed.rotation_id, "1a2b3c4d");
        assert_eq!(parsed.attempt, 3);
        assert_eq!(t.parse_name("billing-svc"), None);
    }

    #[test]
    fn policy_placeholder_is_literal_when_parsing() {
        let t = NameTemplate::parse("{policy}.{lineage}.{rotation}", "maas").unwrap();
        let now = Utc::now();
        let name = t.render("a.b", "maas", "00000000", 1, now);
        assert_eq!(t.parse_name(&name).unwrap().lineage, "a.b");
    }

    #[test]
    fn templates_reject_unknown_or_missing_placeholders() {
        assert!(
            NameTemplate::parse("{date}-{rotation}", "p")
                .unwrap_err()
                .contains("{lineage}")
        );
        assert!(
            NameTemplate::parse("{lineage}-{date}", "p")
                .unwrap_err()
                .contains("{rotation}")
        );
        assert!(
            NameTemplate::parse("{lineage}-{rotation}-{host}", "p")
                .unwrap_err()
                .contains("{host}")
        );
        assert!(
            TargetTemplate::parse("/k/{date}.env")
                .unwrap_err()
                .contains("{date}")
        );
        assert!(
            TargetTemplate::parse("/k/{lineage}.env")
                .unwrap()
                .has_lineage()
        );
    }

    /// Templates of one pattern share one compiled parser (policies of the
    /// default template); `{policy}` makes the pattern, and so the parser,
    /// each policy's own. Names parse the same either way.
    #[test]
    fn templates_of_one_pattern_share_their_parser() {
        let a = NameTemplate::parse(DEFAULT_NAME_TEMPLATE, "p1").unwrap();
        let b = NameTemplate::parse(DEFAULT_NAME_TEMPLATE, "p2").unwrap();
        assert!(Arc::ptr_eq(&a.parser, &b.parser));
        let name = "app-1-20261201-r0a1b2c3d-2";
        assert_eq!(a.parse_name(name), b.parse_name(name));
        assert_eq!(a.parse_name(name).unwrap().lineage, "app-1");
        let x = NameTemplate::parse("{policy}.{lineage}.{rotation}", "x").unwrap();
        let y = NameTemplate::parse("{policy}.{lineage}.{rotation}", "y").unwrap();
        assert!(!Arc::ptr_eq(&x.parser, &y.parser));
        assert!(x.parse_name("x.l.r0a1b2c3d-1").is_some());
        assert!(y.parse_name("x.l.r0a1b2c3d-1").is_none());
    }
}
