//! A policy's `match` glob compiled for matching key names, small enough to
//! hold one per policy at scale (DESIGN §9, issue 13).
//!
//! What matches is `globset`'s contract, unchanged (DESIGN §2: `*` and `?`
//! never cross `/`, `**` as a whole component does, `[abc]`, `{a,b}`): the
//! glob is parsed by `globset` with the options the configuration always
//! used, and its own regex (`Glob::regex`) is what is compiled, with the
//! syntax options `globset` compiles it with (bytes, not UTF-8; `.` matches
//! a newline). Only the automaton that runs it differs:
//!
//! - `globset::GlobMatcher` holds a full meta regex (about 10 KB per glob
//!   with its search caches; 1,000 policies held 10 MB of them);
//! - [`KeyGlob`] holds a sparse DFA of the same regex, anchored at the
//!   start: a few hundred bytes for the usual prefix globs, no search cache
//!   and no lock, and a search is one pass over the name's bytes. A glob
//!   whose DFA would exceed [`DFA_LIMIT`] (a hostile or huge alternation)
//!   keeps `globset`'s matcher, so nothing stops compiling that compiled
//!   before.
//!
//! Policies of one glob text share one compiled [`KeyGlob`]
//! ([`SharedByText`]; e.g. the same application globs on several accounts).

use std::sync::{Arc, LazyLock};

use regex_automata::dfa::{Automaton, dense, sparse};
use regex_automata::nfa::thompson;
use regex_automata::{Anchored, Input};

use super::shared::SharedByText;

/// Compiled globs, one per distinct glob text ([`SharedByText`]).
static COMPILED: LazyLock<SharedByText<KeyGlob>> = LazyLock::new(SharedByText::new);

/// The largest dense DFA (bytes, while determinizing and once built) a glob
/// is compiled to; past it the glob keeps `globset`'s regex matcher.
pub const DFA_LIMIT: usize = 256 * 1024;

/// `text` parsed as a `match` glob: `*` and `?` never cross `/` (key names
/// are untrusted; DESIGN §2); `**` as a whole path component does. The one
/// place these options are set, for matching ([`KeyGlob`]) and for the
/// ownership analysis (`ownership::glob_regex_body`).
///
/// Errors: `globset`'s, when the glob does not parse.
pub fn parse(text: &str) -> Result<globset::Glob, globset::Error> {
    globset::GlobBuilder::new(text)
        .literal_separator(true)
        .build()
}

/// A `match` glob as the configuration compiles it ([module doc](self)).
pub struct KeyGlob {
    /// The parsed glob: its text, and what a `globset::GlobSet` is built
    /// from (the daemon matches a whole walk against a group's globs).
    glob: globset::Glob,
    matcher: Matcher,
}

enum Matcher {
    /// `glob.regex()` as a DFA anchored at the start of the name.
    Dfa(Box<sparse::DFA<Vec<u8>>>),
    /// `globset`'s own matcher, for a glob whose DFA is too large.
    Regex(globset::GlobMatcher),
}

impl std::fmt::Debug for KeyGlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("KeyGlob").field(&self.glob.glob()).finish()
    }
}

impl KeyGlob {
    /// `text` compiled, or the one compiled already for an equal text that
    /// is still held (shared, [`SharedByText`]).
    ///
    /// Errors: `globset`'s, when the glob does not parse.
    pub fn shared(text: &str) -> Result<Arc<KeyGlob>, globset::Error> {
        COMPILED.get_or_compile(text, |t| KeyGlob::with_limit(t, DFA_LIMIT))
    }

    /// `text` compiled to a DFA of at most `limit` bytes, else to
    /// `globset`'s matcher.
    ///
    /// Errors: `globset`'s, when the glob does not parse.
    fn with_limit(text: &str, limit: usize) -> Result<KeyGlob, globset::Error> {
        let glob = parse(text)?;
        let matcher = match dfa(glob.regex(), limit) {
            Some(d) => Matcher::Dfa(Box::new(d)),
            None => Matcher::Regex(glob.compile_matcher()),
        };
        Ok(KeyGlob { glob, matcher })
    }

    /// The parsed glob (its text is `glob().glob()`).
    pub fn glob(&self) -> &globset::Glob {
        &self.glob
    }

    /// Whether the glob matches the whole of `name` (what
    /// `globset::GlobMatcher::is_match` answers for it).
    pub fn is_match(&self, name: &str) -> bool {
        match &self.matcher {
            Matcher::Dfa(d) => {
                let input = Input::new(name.as_bytes())
                    .anchored(Anchored::Yes)
                    .earliest(true);
                match d.try_search_fwd(&input) {
                    Ok(m) => m.is_some(),
                    // Not reachable for these DFAs (no quit bytes, no
                    // Unicode word boundary); answer as globset would.
                    Err(_) => self.glob.compile_matcher().is_match(name),
                }
            }
            Matcher::Regex(m) => m.is_match(name),
        }
    }

    /// Whether this glob runs as a DFA (not `globset`'s regex), and the
    /// bytes its DFA holds (struct and tables; `None` for a regex, whose
    /// size `regex` does not report).
    pub fn dfa_bytes(&self) -> Option<usize> {
        match &self.matcher {
            Matcher::Dfa(d) => Some(std::mem::size_of_val(&**d) + d.memory_usage()),
            Matcher::Regex(_) => None,
        }
    }
}

/// `regex` (a `globset` regex: `(?-u)^…$`) as a sparse DFA, with the
/// syntax and NFA options `globset` builds its regex with; `None` when the
/// dense DFA exceeds `limit` bytes or cannot be built.
fn dfa(regex: &str, limit: usize) -> Option<sparse::DFA<Vec<u8>>> {
    let dense = dense::Builder::new()
        .configure(
            dense::Config::new()
                .start_kind(regex_automata::dfa::StartKind::Anchored)
                .dfa_size_limit(Some(limit))
                .determinize_size_limit(Some(limit)),
        )
        .syntax(
            regex_automata::util::syntax::Config::new()
                .utf8(false)
                .dot_matches_new_line(true),
        )
        .thompson(thompson::Config::new().utf8(false))
        .build(regex)
        .ok()?;
    dense.to_sparse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Globs of every feature the contract names, hostile ones included.
    const GLOBS: &[&str] = &[
        "app-*",
        "app-000??*",
        "app-?",
        "*",
        "**",
        "**/x",
        "a/**",
        "a/**/b",
        "*-prod",
        "[abc]*",
        "[!abc]*",
        "[a-c]?[!/]",
        "{app,db}-*",
        "{a,b{c,d}}*",
        "\\*lit",
        "é*",
        "*ü?",
        "日本-*",
        "",
        "a*b*c*d*e*f*",
        "{*a,b*}",
        "[*]",
        "x\ny*",
    ];

    fn names() -> Vec<String> {
        let mut v: Vec<String> = [
            "app-1",
            "app-",
            "app-000ab",
            "app-000a",
            "app-000abcdef",
            "app-000a/b",
            "app-0001é",
            "app-000éé",
            "app/x",
            "x",
            "a/x",
            "a/b/x",
            "/x",
            "a/b",
            "a/c/d/b",
            "a",
            "ab",
            "b",
            "cz-",
            "db-1",
            "app-prod",
            "-prod",
            "a/-prod",
            "*lit",
            "xlit",
            "é",
            "éx",
            "xü",
            "xüy",
            "xüé",
            "日本-1",
            "日本",
            "",
            "abcdef",
            "a.b.c.d.e.f",
            "fedcba",
            "*",
            "x\ny",
            "x\nyz",
            "app-\n",
            "\u{0}",
            "a\u{0}b",
            "\u{10FFFF}",
            "app-\u{202E}evil",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Huge names.
        v.push(format!("app-000{}", "x".repeat(100_000)));
        v.push(format!("app-000{}/", "x".repeat(100_000)));
        v.push("ab".repeat(50_000));
        v
    }

    fn globset_matcher(g: &str) -> globset::GlobMatcher {
        globset::GlobBuilder::new(g)
            .literal_separator(true)
            .build()
            .unwrap()
            .compile_matcher()
    }

    fn assert_same(k: &KeyGlob, g: &str) {
        let m = globset_matcher(g);
        for n in names() {
            assert_eq!(
                k.is_match(&n),
                m.is_match(&n),
                "glob {g:?} on {:?}",
                n.chars().take(40).collect::<String>()
            );
        }
    }

    #[test]
    fn a_key_glob_matches_exactly_what_globset_matches() {
        for g in GLOBS {
            let k = KeyGlob::with_limit(g, DFA_LIMIT).unwrap();
            assert!(k.dfa_bytes().is_some(), "{g:?} runs as a DFA");
            assert_same(&k, g);
        }
    }

    #[test]
    fn a_glob_too_large_for_a_dfa_keeps_globsets_matcher_and_its_answers() {
        for g in GLOBS {
            let k = KeyGlob::with_limit(g, 16).unwrap();
            assert!(k.dfa_bytes().is_none(), "{g:?} falls back");
            assert_same(&k, g);
        }
    }

    #[test]
    fn a_prefix_glob_is_a_fraction_of_a_regex() {
        let k = KeyGlob::with_limit("app-000??*", DFA_LIMIT).unwrap();
        // globset's regex held ~10 KB per glob (heaptrack, benches/RESULTS.md).
        assert!(k.dfa_bytes().unwrap() < 4096, "{:?}", k.dfa_bytes());
    }

    #[test]
    fn an_invalid_glob_is_refused_as_globset_refuses_it() {
        for g in ["[a", "{a,b", "a[z-a]"] {
            let ours = KeyGlob::with_limit(g, DFA_LIMIT).map(|_| ()).unwrap_err();
            let theirs = globset::GlobBuilder::new(g)
                .literal_separator(true)
                .build()
                .unwrap_err();
            assert_eq!(ours.kind(), theirs.kind(), "{g:?}");
        }
    }

    #[test]
    fn policies_of_one_glob_text_share_one_compiled_glob() {
        let a = KeyGlob::shared("shared-test-*").unwrap();
        let b = KeyGlob::shared("shared-test-*").unwrap();
        let c = KeyGlob::shared("shared-test-?").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(a.is_match("shared-test-xy") && !c.is_match("shared-test-xy"));
        assert_eq!(a.glob().glob(), "shared-test-*");
    }
}
