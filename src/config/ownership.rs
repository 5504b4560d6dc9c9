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
use super::{PolicyConfig, ProviderConfig, SinkConfig, SinkKind, TargetTemplate};

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
    format!("{} {host} {}", p.kind.as_str(), p.kind.account().account())
}

/// The scope in which walks of a provider entry's keys may be shared
/// (`provider::listing::Walks`): its [`account_of`] plus every credential
/// it authenticates with (each secret reference; a literal by a digest of
/// its value, never the value) and, for Tencent, the `region` sent in
/// `X-TC-Region` (keys are listed per request region; sharing across
/// regions is not proven safe, so it is not done). Two entries with equal
/// scopes list the same keys with the same credentials; entries on one
/// account with different credentials never share a walk.
pub fn listing_scope(p: &ProviderConfig) -> String {
    use sha2::Digest;
    fn put(h: &mut sha2::Sha256, label: &str, r: &super::SecretRef) {
        h.update(label.as_bytes());
        h.update([0]);
        match r {
            super::SecretRef::Literal(s) => {
                h.update(b"literal\0");
                h.update(s.expose().as_bytes());
            }
            other => h.update(format!("{other:?}").as_bytes()),
        }
        h.update([0]);
    }
    let mut h = sha2::Sha256::new();
    let settings = p.kind.account();
    for (label, c) in settings.credentials() {
        match c {
            super::Credential::Secret(r) => put(&mut h, label, r),
            super::Credential::Plain(text) => {
                h.update(format!("{label}\0{text}\0").as_bytes());
            }
        }
    }
    let extra = settings.listing_scope();
    let digest = h.finalize();
    format!(
        "{}{extra} credentials={}",
        account_of(p),
        hex::encode(&digest[..12])
    )
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
    let g = super::glob::parse(glob).map_err(|e| format!("invalid glob {glob:?}: {}", e.kind()))?;
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

/// Literal text every string of a language starts with and ends with. Two
/// languages whose prefixes (or suffixes) are incompatible (neither a
/// prefix, resp. suffix, of the other) are disjoint: an exact shortcut
/// taken before the automata, so configs with hundreds of policies are
/// checked in milliseconds rather than one determinization per pair.
struct Affixes {
    prefix: String,
    suffix: String,
}

impl Affixes {
    fn may_meet(&self, other: &Affixes) -> bool {
        (self.prefix.starts_with(&other.prefix) || other.prefix.starts_with(&self.prefix))
            && (self.suffix.ends_with(&other.suffix) || other.suffix.ends_with(&self.suffix))
    }
}

/// A glob's literal prefix (before its first metacharacter) and suffix
/// (after its last); a shorter affix is still a true one, so escapes simply
/// end them.
fn glob_affixes(g: &str) -> Affixes {
    let prefix_end = g.find(['*', '?', '[', '{', '\\']).unwrap_or(g.len());
    let suffix_start = g
        .rfind(['*', '?', '[', ']', '{', '}', ',', '\\'])
        .map(|i| i + 1)
        .unwrap_or(0);
    Affixes {
        prefix: g[..prefix_end].to_string(),
        suffix: g[suffix_start..].to_string(),
    }
}

/// The literal prefix and suffix of every target `t` renders for policy
/// `p` (see [`target_language`]): the text before the first `{lineage}`
/// followed by the literal prefix every lineage name of `p` has (its glob's,
/// shared with its bootstrap lineage), and likewise at the end.
fn target_affixes(scope: &str, t: &TargetTemplate, p: &PolicyConfig) -> Affixes {
    let pieces = t.pieces();
    let lineage = {
        let g = glob_affixes(&p.match_glob);
        match &p.bootstrap {
            Some(b) => Affixes {
                prefix: common_prefix(&g.prefix, b),
                suffix: common_suffix(&g.suffix, b),
            },
            None => g,
        }
    };
    let text = |pc: &TemplatePiece<'_>| match pc {
        TemplatePiece::Lit(l) => Some(l.to_string()),
        TemplatePiece::Policy => Some(p.name.clone()),
        TemplatePiece::Lineage => None,
    };
    let mut prefix = scope.to_string();
    for pc in &pieces {
        match text(pc) {
            Some(l) => prefix.push_str(&l),
            None => {
                prefix.push_str(&lineage.prefix);
                break;
            }
        }
    }
    let mut suffix = String::new();
    for pc in pieces.iter().rev() {
        match text(pc) {
            Some(l) => suffix.insert_str(0, &l),
            None => {
                suffix.insert_str(0, &lineage.suffix);
                break;
            }
        }
    }
    if !pieces.iter().any(|pc| matches!(pc, TemplatePiece::Lineage)) {
        suffix = prefix.clone();
    }
    Affixes { prefix, suffix }
}

fn common_prefix(a: &str, b: &str) -> String {
    a.chars()
        .zip(b.chars())
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x)
        .collect()
}

fn common_suffix(a: &str, b: &str) -> String {
    let mut v: Vec<char> = a
        .chars()
        .rev()
        .zip(b.chars().rev())
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x)
        .collect();
    v.reverse();
    v.into_iter().collect()
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
    let glob_fixes: Vec<Affixes> = policies
        .iter()
        .map(|p| glob_affixes(&p.match_glob))
        .collect();
    for (i, a) in policies.iter().enumerate() {
        let Some(pa) = providers.get(&a.provider) else {
            continue;
        };
        for (j, b) in policies.iter().enumerate().skip(i + 1) {
            let Some(pb) = providers.get(&b.provider) else {
                continue;
            };
            if !glob_fixes[i].may_meet(&glob_fixes[j]) || account_of(pa) != account_of(pb) {
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
    let use_fixes: Vec<Option<Affixes>> = uses
        .iter()
        .map(|(p, s)| Some(target_affixes(&sink_scope(s)?, s.target()?, p)))
        .collect();
    for (i, (pa, sa)) in uses.iter().enumerate() {
        for (j, (pb, sb)) in uses.iter().enumerate().skip(i + 1) {
            if pa.name == pb.name {
                continue;
            }
            if let (Some(x), Some(y)) = (&use_fixes[i], &use_fixes[j])
                && !x.may_meet(y)
            {
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

    fn tencent(endpoint: &str, region: &str, id: super::super::SecretRef) -> ProviderConfig {
        ProviderConfig {
            name: "gw".into(),
            endpoint: endpoint.into(),
            rate_limit: None,
            ca_file: None,
            timeout: std::time::Duration::from_secs(5),
            kind: super::super::ProviderKind::Tencent(crate::provider::tencent::TencentConfig {
                regions: Vec::new(),
                region: region.into(),
                secret_id: id,
                secret_key: super::super::SecretRef::Env("TC_SK".into()),
            }),
        }
    }

    #[test]
    fn walks_are_shared_only_by_entries_with_the_same_account_and_credentials() {
        use super::super::SecretRef;
        use crate::secret::Secret;
        let env = |n: &str| SecretRef::Env(n.into());
        let a = tencent(
            "https://apigateway.tencentcloudapi.com",
            "ap-guangzhou",
            env("ID"),
        );
        let b = tencent(
            "https://apigateway.ap-guangzhou.tencentcloudapi.com",
            "ap-guangzhou",
            env("ID"),
        );
        assert_eq!(
            listing_scope(&a),
            listing_scope(&b),
            "a region in the host is one account"
        );
        let other_ref = tencent(
            "https://apigateway.tencentcloudapi.com",
            "ap-guangzhou",
            env("ID2"),
        );
        assert_ne!(listing_scope(&a), listing_scope(&other_ref));
        let other_region = tencent(
            "https://apigateway.tencentcloudapi.com",
            "ap-shanghai",
            env("ID"),
        );
        assert_ne!(listing_scope(&a), listing_scope(&other_region));
        // Literals are compared by value, and the value never shows.
        let lit = |v: &str| {
            tencent(
                "https://apigateway.tencentcloudapi.com",
                "ap-guangzhou",
                SecretRef::Literal(Secret::new(v)),
            )
        };
        assert_eq!(
            listing_scope(&lit("AKIDsame")),
            listing_scope(&lit("AKIDsame"))
        );
        assert_ne!(
            listing_scope(&lit("AKIDone")),
            listing_scope(&lit("AKIDtwo"))
        );
        assert!(!listing_scope(&lit("AKIDone")).contains("AKIDone"));
    }

    #[test]
    fn the_affix_shortcut_never_calls_overlapping_globs_disjoint() {
        let globs = [
            "app-*",
            "app-a-*",
            "app-b-*",
            "*-prod",
            "*-dev",
            "app-[abc]",
            "app-[c-e]",
            "a?b",
            "{app,svc}-*",
            "svc-1",
            "app-000??*",
            "app-001??*",
            "app-00??*",
            "x\\*y",
            "x*y",
            "**/app",
            "x/y/app",
            "app",
            "ap",
            "p",
        ];
        for a in globs {
            for b in globs {
                if globs_overlap(a, b).unwrap() {
                    assert!(
                        glob_affixes(a).may_meet(&glob_affixes(b)),
                        "{a:?} and {b:?} overlap but their affixes say disjoint"
                    );
                }
            }
        }
        assert!(!glob_affixes("app-000??*").may_meet(&glob_affixes("app-001??*")));
        assert!(!glob_affixes("*-prod").may_meet(&glob_affixes("*-dev")));
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
