//! Configuration-level ownership (DESIGN §2 "Ownership"): one owner per key,
//! one writer per sink target, decided exactly before anything runs.
//!
//! - A provider *account* ([`account_of`]) is the provider kind, the
//!   endpoint's host and port with any region label removed
//!   (`apigateway.ap-guangzhou.tencentcloudapi.com` and
//!   `apigateway.tencentcloudapi.com` are one host), and the account's
//!   identity as the config names it: OceanBase org and project, Tencent's
//!   `secret_id` reference, Huawei's project. Two `[providers.*]` entries on
//!   one account are one account.
//! - Two policies on one account whose `match` globs can both match one
//!   name are refused. Globs are regular languages: each is compiled
//!   (through `globset`'s own regex, `*` and `?` not crossing `/`) to a
//!   deterministic automaton with `regex-automata`, and the product of the
//!   two (and of a UTF-8 automaton, key names being text) is searched for a
//!   state both accept: an exact decision, not a heuristic.
//! - Two different policies whose sinks can render the same target (file
//!   path, Vault address/mount/path) are refused: `{lineage}` ranges over
//!   the policy's glob (and its bootstrap lineage), `{policy}` is the
//!   policy's name, and the rendered languages are intersected the same way.
//!   Putting `{policy}` in a shared target, or globs that are disjoint, make
//!   them provably distinct.
//! - Within one policy a fixed target over a glob that can match several
//!   names is warned about (at run time it is `misconfigured` once the
//!   policy has two lineages).

use std::collections::BTreeMap;
use std::ops::Range;

use regex_automata::dfa::{Automaton, dense};
use regex_automata::util::primitives::StateID;
use regex_automata::util::start;
use regex_automata::{Anchored, nfa::thompson};

use super::diag::Diags;
use super::{PolicyConfig, ProviderConfig, ProviderKind, SinkConfig, SinkKind, TargetTemplate};

/// Where a policy's pieces were written, for located diagnostics.
#[derive(Debug, Default, Clone)]
pub struct PolicySpans {
    by_policy: BTreeMap<String, (Range<usize>, Range<usize>)>,
}

impl PolicySpans {
    /// Remember the spans of policy `name`: its `match` value and its
    /// `sinks` list (or name, when it has no sinks).
    pub fn record(&mut self, name: &str, match_span: Range<usize>, sinks_span: Range<usize>) {
        self.by_policy
            .entry(name.to_string())
            .or_insert((match_span, sinks_span));
    }

    fn match_span(&self, name: &str) -> Range<usize> {
        self.by_policy
            .get(name)
            .map(|s| s.0.clone())
            .unwrap_or(0..0)
    }

    fn sinks_span(&self, name: &str) -> Range<usize> {
        self.by_policy
            .get(name)
            .map(|s| s.1.clone())
            .unwrap_or(0..0)
    }
}

/// The identity of a provider account: two provider entries with equal
/// identities list, create and delete the same keys.
pub fn account_of(p: &ProviderConfig) -> String {
    let host = host_without_region(&p.endpoint);
    let who = match &p.kind {
        ProviderKind::OceanBase {
            org_id, project_id, ..
        } => format!("org={org_id} project={project_id}"),
        ProviderKind::Tencent { secret_id, .. } => format!("secret_id={secret_id:?}"),
        ProviderKind::Huawei { project_id, .. } => format!("project={project_id}"),
    };
    format!("{} {host} {who}", p.kind.as_str())
}

/// `host[:port]` of a URL, lower-cased, with labels that look like a cloud
/// region (`ap-guangzhou`, `ap-southeast-3`, `cn-north-4`) removed.
fn host_without_region(endpoint: &str) -> String {
    let rest = endpoint
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(endpoint);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or("").to_lowercase();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') && p.chars().all(|c| c.is_ascii_digit()) => (h, Some(p)),
        _ => (authority.as_str(), None),
    };
    let labels: Vec<&str> = host.split('.').filter(|l| !is_region_label(l)).collect();
    match port {
        Some(p) => format!("{}:{p}", labels.join(".")),
        None => labels.join("."),
    }
}

fn is_region_label(l: &str) -> bool {
    let parts: Vec<&str> = l.split('-').collect();
    parts.len() >= 2
        && parts[0].len() == 2
        && parts[0].chars().all(|c| c.is_ascii_lowercase())
        && parts[1..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && {
            let last = parts[parts.len() - 1];
            !last.is_empty() && last.chars().all(|c| c.is_ascii_alphanumeric())
        }
}

/// The body of `globset`'s regex for `glob` (`*` and `?` not crossing `/`),
/// without its anchors, to embed in larger patterns.
///
/// Errors: the glob does not parse.
pub fn glob_regex_body(glob: &str) -> Result<String, String> {
    let g = globset::GlobBuilder::new(glob)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("invalid glob {glob:?}: {}", e.kind()))?;
    let re = g.regex();
    let body = re
        .strip_prefix("(?-u)^")
        .and_then(|r| r.strip_suffix('$'))
        .ok_or_else(|| format!("unexpected regex {re:?} for glob {glob:?}"))?;
    Ok(format!("(?-u:{body})"))
}

fn dfa(pattern: &str) -> Result<dense::DFA<Vec<u32>>, String> {
    dense::Builder::new()
        .configure(
            dense::Config::new()
                .start_kind(regex_automata::dfa::StartKind::Anchored)
                .dfa_size_limit(Some(16 << 20))
                .determinize_size_limit(Some(16 << 20)),
        )
        .thompson(thompson::Config::new())
        .syntax(regex_automata::util::syntax::Config::new().utf8(false))
        .build(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("cannot build an automaton for {pattern:?}: {e}"))
}

/// Whether some UTF-8 string matches every pattern (each anchored at both
/// ends): breadth-first search of the product of their DFAs. Exact.
///
/// Errors: a pattern does not compile, or its automaton exceeds 16 MiB.
pub fn languages_intersect(patterns: &[&str]) -> Result<bool, String> {
    let mut dfas = Vec::with_capacity(patterns.len() + 1);
    for p in patterns {
        dfas.push(dfa(p)?);
    }
    // Key names are text: only valid UTF-8 counts as a shared name.
    dfas.push(dfa("(?s:.)*")?);
    let cfg = start::Config::new().anchored(Anchored::Yes);
    let mut first = Vec::with_capacity(dfas.len());
    for d in &dfas {
        first.push(d.start_state(&cfg).map_err(|e| e.to_string())?);
    }
    let mut seen: std::collections::HashSet<Vec<StateID>> = std::collections::HashSet::new();
    let mut queue = std::collections::VecDeque::new();
    seen.insert(first.clone());
    queue.push_back(first);
    while let Some(states) = queue.pop_front() {
        if dfas
            .iter()
            .zip(&states)
            .all(|(d, s)| d.is_match_state(d.next_eoi_state(*s)))
        {
            return Ok(true);
        }
        for b in 0..=255u8 {
            let next: Vec<StateID> = dfas
                .iter()
                .zip(&states)
                .map(|(d, s)| d.next_state(*s, b))
                .collect();
            if dfas.iter().zip(&next).any(|(d, s)| d.is_dead_state(*s)) {
                continue;
            }
            if seen.insert(next.clone()) {
                queue.push_back(next);
            }
        }
    }
    Ok(false)
}

/// Whether two globs can both match one key name (exact).
pub fn globs_overlap(a: &str, b: &str) -> Result<bool, String> {
    languages_intersect(&[&glob_regex_body(a)?, &glob_regex_body(b)?])
}

/// The language of lineage names a policy can have: names its glob
/// matches, and its bootstrap lineage.
fn lineage_language(p: &PolicyConfig) -> Result<String, String> {
    let mut alts = vec![glob_regex_body(&p.match_glob)?];
    if let Some(b) = &p.bootstrap {
        alts.push(regex_syntax_escape(b));
    }
    Ok(format!("(?:{})", alts.join("|")))
}

fn regex_syntax_escape(s: &str) -> String {
    regex::escape(s)
}

/// The language of targets `t` renders for policy `p`, prefixed with the
/// sink's scope (kind, Vault address and mount) so only comparable targets
/// can meet.
fn target_language(scope: &str, t: &TargetTemplate, p: &PolicyConfig) -> Result<String, String> {
    let lineage = lineage_language(p)?;
    let mut out = regex_syntax_escape(scope);
    for part in t.pieces() {
        match part {
            TemplatePiece::Lit(l) => out.push_str(&regex_syntax_escape(l)),
            TemplatePiece::Lineage => out.push_str(&lineage),
            TemplatePiece::Policy => out.push_str(&regex_syntax_escape(&p.name)),
        }
    }
    Ok(out)
}

/// One piece of a target template, for the ownership check.
pub enum TemplatePiece<'a> {
    Lit(&'a str),
    Lineage,
    Policy,
}

fn sink_scope(s: &SinkConfig) -> Option<String> {
    match &s.kind {
        SinkKind::File(_) => Some("file:".to_string()),
        SinkKind::Vault(v) => Some(format!(
            "vault:{}|{}|{}|",
            v.address.trim_end_matches('/').to_lowercase(),
            v.namespace.as_deref().unwrap_or(""),
            v.mount.trim_matches('/')
        )),
        SinkKind::Webhook(_) => None,
    }
}

/// The store key of a rendered target: the sink's scope and the target.
/// Two sinks writing the same file or the same Vault secret give the same
/// key; a webhook has none (a receiver takes every lineage).
pub fn target_key(s: &SinkConfig, policy: &str, lineage: &str) -> Option<String> {
    let scope = sink_scope(s)?;
    let t = s.target()?;
    Some(format!(
        "{scope}{}",
        normalise_target(&t.render(lineage, policy))
    ))
}

/// One spelling per target: repeated `/` collapsed and `.` segments
/// dropped (`/a//b/./c` is `/a/b/c`). `..` is kept: lineage names in
/// targets cannot contain `/`, so it can only come from the config.
fn normalise_target(t: &str) -> String {
    let absolute = t.starts_with('/');
    let parts: Vec<&str> = t
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

/// Check ownership across the whole config; errors and warnings go to `d`.
pub fn check(
    d: &mut Diags,
    policies: &[PolicyConfig],
    providers: &BTreeMap<String, ProviderConfig>,
    sinks: &BTreeMap<String, SinkConfig>,
    spans: &PolicySpans,
) {
    // One owner per key.
    for (i, a) in policies.iter().enumerate() {
        let Some(pa) = providers.get(&a.provider) else {
            continue;
        };
        for b in &policies[i + 1..] {
            let Some(pb) = providers.get(&b.provider) else {
                continue;
            };
            if account_of(pa) != account_of(pb) {
                continue;
            }
            match globs_overlap(&a.match_glob, &b.match_glob) {
                Ok(false) => {}
                Ok(true) => d.error_hint(
                    spans.match_span(&b.name),
                    format!(
                        "policies {} (match {:?}) and {} (match {:?}) are on one provider account and their globs can both match one key name",
                        a.name, a.match_glob, b.name, b.match_glob
                    ),
                    "each key must have one owner: make the globs disjoint (e.g. \"app-a-*\" and \"app-b-*\") or merge the policies",
                ),
                Err(e) => d.error(spans.match_span(&b.name), e),
            }
        }
    }
    // One writer per target, across policies.
    let mut uses: Vec<(&PolicyConfig, &SinkConfig)> = Vec::new();
    for p in policies {
        for s in &p.sinks {
            if let Some(sc) = sinks.get(s) {
                uses.push((p, sc));
            }
        }
    }
    for (i, (pa, sa)) in uses.iter().enumerate() {
        for (pb, sb) in &uses[i + 1..] {
            if pa.name == pb.name {
                continue;
            }
            let (Some(scope_a), Some(scope_b), Some(ta), Some(tb)) =
                (sink_scope(sa), sink_scope(sb), sa.target(), sb.target())
            else {
                continue;
            };
            let la = target_language(&scope_a, ta, pa);
            let lb = target_language(&scope_b, tb, pb);
            let overlap = match (la, lb) {
                (Ok(x), Ok(y)) => languages_intersect(&[&x, &y]),
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            match overlap {
                Ok(false) => {}
                Ok(true) => {
                    let what = if sa.name == sb.name {
                        format!("sink {}", sa.name)
                    } else {
                        format!("sinks {} and {}", sa.name, sb.name)
                    };
                    d.error_hint(
                        spans.sinks_span(&pb.name),
                        format!(
                            "policies {} and {} can write the same target through {what} ({:?}, {:?}); each would overwrite the other's key",
                            pa.name,
                            pb.name,
                            ta.as_str(),
                            tb.as_str()
                        ),
                        "put {policy} in the target of a sink several policies use, or make their globs disjoint",
                    );
                }
                Err(e) => d.error(spans.sinks_span(&pb.name), e),
            }
        }
    }
    // Within one policy: a fixed target over a glob that matches many names.
    for p in policies {
        let many = p.match_glob.contains(['*', '?', '[', '{']);
        for s in &p.sinks {
            if let Some(t) = sinks.get(s).and_then(|c| c.target())
                && many
                && !t.has_lineage()
            {
                d.warn_hint(
                    spans.sinks_span(&p.name),
                    format!(
                        "sink {s} writes to the fixed target {:?} but policy {} (match {:?}) can have several lineages; it will be misconfigured as soon as it has two",
                        t.as_str(),
                        p.name,
                        p.match_glob
                    ),
                    "put {lineage} in the target",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_overlap_is_decided_exactly() {
        let table: &[(&str, &str, bool)] = &[
            // identical
            ("app-*", "app-*", true),
            ("app-x", "app-x", true),
            // prefix globs
            ("app-*", "app-x*", true),
            ("app-x*", "app-*", true),
            ("app-*", "ap*", true),
            // `?`
            ("app-?", "app-xy", false),
            ("app-?", "app-x", true),
            ("app-??", "app-?", false),
            ("?pp-*", "app-1", true),
            // character classes
            ("app-[abc]", "app-[def]", false),
            ("app-[a-c]", "app-[c-e]", true),
            ("app-[!a]", "app-a", false),
            ("app-[!a]", "app-b", true),
            // alternations
            ("{app,svc}-*", "svc-1", true),
            ("{app,svc}-*", "db-*", false),
            // disjoint
            ("app-a-*", "app-b-*", false),
            ("app-*", "svc-*", false),
            ("*-prod", "*-dev", false),
            ("*-prod", "app-*", true),
            // `*` and `?` do not cross `/`
            ("app-*", "app-x/y", false),
            ("a?b", "a/b", false),
            ("**/app", "x/y/app", true),
        ];
        for (a, b, want) in table {
            assert_eq!(
                globs_overlap(a, b).unwrap(),
                *want,
                "overlap of {a:?} and {b:?}"
            );
        }
    }

    #[test]
    fn a_region_in_the_host_does_not_make_another_account() {
        assert_eq!(
            host_without_region("https://apigateway.ap-guangzhou.tencentcloudapi.com"),
            "apigateway.tencentcloudapi.com"
        );
        assert_eq!(
            host_without_region("https://bcs.ap-southeast-3.myhuaweicloud.com/v2"),
            "bcs.myhuaweicloud.com"
        );
        assert_eq!(
            host_without_region("http://127.0.0.1:8080"),
            "127.0.0.1:8080"
        );
        assert_eq!(
            host_without_region("https://API-cloud.oceanbase.com/"),
            "api-cloud.oceanbase.com"
        );
    }

    #[test]
    fn one_target_has_one_spelling() {
        assert_eq!(normalise_target("/a//b/./c.env"), "/a/b/c.env");
        assert_eq!(normalise_target("maas/x"), "maas/x");
    }

    #[test]
    fn two_strings_can_split_differently_into_policy_and_lineage() {
        // "{policy}{lineage}": "a" + "bc" and "ab" + "c" render alike.
        assert!(languages_intersect(&["a(?:b[a-z]*)", "ab(?:[a-z]*)"]).unwrap());
        assert!(!languages_intersect(&["a/x", "a/y"]).unwrap());
    }
}
