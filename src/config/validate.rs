//! The pure validation pass: raw TOML → domain [`Config`], collecting every
//! problem with its location and a hint.
//!
//! Each section item (`[providers.x]`, `[[policy]]`, …) is deserialized on
//! its own, so a typo in one item does not hide the errors of another, and
//! a reference to an item that failed to parse is not reported twice as
//! "undefined". The only input besides the text is [`Env`] (for defaults
//! such as `$STATE_DIRECTORY`); checking that secrets resolve and files exist
//! is left to [`resolve_refs`], the one step that does I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::diag::{Diagnostic, Diags, did_you_mean};
use super::raw::*;
use super::secret_ref::{Env, SecretForm, SecretRef};
use super::template::{DEFAULT_NAME_TEMPLATE, NameTemplate, TargetTemplate};
use super::*;
use crate::secret::Secret;

const TOP_KEYS: &[&str] = &["daemon", "providers", "sinks", "notify", "policy"];
const SINK_KINDS: &[&str] = &["file", "webhook", "vault"];
/// How long an old key outlives its replacement when a policy says nothing.
const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

/// A reference or path validation could not check without I/O.
struct Pending {
    span: Range<usize>,
    what: String,
    check: PendingCheck,
}

enum PendingCheck {
    Secret(SecretRef, SecretForm),
    File(PathBuf),
}

struct Ctx<'a> {
    d: Diags<'a>,
    env: &'a Env,
    pending: Vec<Pending>,
    file: &'a Path,
    /// Where each item and daemon key was written, for errors found later.
    origins: BTreeMap<String, Origin>,
    /// `(item, key)` pairs taken out after a type error (see [`item`]):
    /// already reported, so not reported again as missing.
    dropped: BTreeSet<(String, String)>,
}

impl Ctx<'_> {
    fn origin_file(&self) -> PathBuf {
        self.file.to_path_buf()
    }

    fn origin(&mut self, item: impl Into<String>, span: Range<usize>) {
        let (line, col) = self.d.line_col(span.start);
        self.origins.insert(item.into(), Origin { line, col });
    }
}

/// Validate `src` (the text of `path`). Returns the config when it is
/// usable, and every diagnostic found.
pub fn validate(path: &Path, src: &str, env: &Env) -> (Option<Config>, Vec<Diagnostic>) {
    validate_with(path, src, env, true)
}

/// As [`validate`]; with `resolve_secrets` false, secret references are
/// checked for their syntax only (`rekey check --no-secrets`, and the
/// commands that need no secret: `history`, `status`).
pub fn validate_with(
    path: &Path,
    src: &str,
    env: &Env,
    resolve_secrets: bool,
) -> (Option<Config>, Vec<Diagnostic>) {
    let mut cx = Ctx {
        d: Diags::new(path, src),
        env,
        pending: Vec::new(),
        file: path,
        origins: BTreeMap::new(),
        dropped: BTreeSet::new(),
    };
    let config = validate_inner(&mut cx, path, src);
    if !resolve_secrets {
        cx.pending
            .retain(|p| matches!(p.check, PendingCheck::File(_)));
    }
    resolve_refs(&mut cx);
    let origins = std::mem::take(&mut cx.origins);
    (
        config.map(|mut c| {
            c.origins = origins;
            c
        }),
        cx.d.items,
    )
}

fn validate_inner(cx: &mut Ctx, path: &Path, src: &str) -> Option<Config> {
    let root = match DeTable::parse(src) {
        Ok(t) => t,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let mut message = e.message().trim().to_string();
            if message == "duplicate key"
                && let Some(key) = src.get(span.clone()).filter(|k| !k.contains('\n'))
            {
                message = format!("duplicate key `{}`", key.trim_matches('"'));
            }
            let hint = if message.contains("duplicate key") {
                "each key may appear only once in a table; remove or rename one of them"
            } else if message.contains("must be quoted") {
                "put string values in double quotes: key = \"value\""
            } else {
                "fix the TOML syntax at this point (https://toml.io)"
            };
            cx.d.error_hint(span, format!("TOML syntax: {message}"), hint);
            return None;
        }
    };
    let root_span = root.span();
    let root = root.into_inner();

    let mut daemon_raw: Option<RawDaemon> = None;
    let mut providers_raw: Vec<(Spanned<String>, RawProvider, Spanned<DeValue<'_>>)> = Vec::new();
    let mut sinks_raw: Vec<(Spanned<String>, RawSink)> = Vec::new();
    let mut notify_raw: Vec<(Spanned<String>, RawNotify)> = Vec::new();
    let mut policies_raw: Vec<(Range<usize>, RawPolicy)> = Vec::new();
    // Items that exist but failed to parse: references to them are not
    // "undefined", their own error already says what is wrong.
    let mut broken: BTreeSet<String> = BTreeSet::new();
    let mut saw_broken_policy = false;

    for (key, value) in root {
        let k = key.get_ref().to_string();
        match k.as_str() {
            "daemon" => {
                if let DeValue::Table(t) = value.get_ref() {
                    for (k, v) in t.iter() {
                        cx.origin(format!("daemon.{}", k.get_ref()), v.span());
                    }
                }
                cx.origin("daemon", key.span());
                daemon_raw = item(cx, value, "[daemon]");
            }
            "providers" => {
                for (name, v) in named_items(cx, value, "providers") {
                    cx.origin(format!("providers.{}", name.get_ref()), name.span());
                    // The common keys now; the kind's own once its spec is known.
                    let (common, own) = split_table(v, RawProvider::KEYS);
                    match item::<RawProvider>(
                        cx,
                        common,
                        &format!("[providers.{}]", name.get_ref()),
                    ) {
                        Some(p) => providers_raw.push((name, p, own)),
                        None => {
                            // No kind to read them with (`kind` missing or
                            // not a string): the keys no kind reads are
                            // still reported, in this same run.
                            own_keys(cx, None, &format!("[providers.{}]", name.get_ref()), own);
                            broken.insert(format!("provider:{}", name.get_ref()));
                        }
                    }
                }
            }
            "sinks" => {
                for (name, v) in named_items(cx, value, "sinks") {
                    cx.origin(format!("sinks.{}", name.get_ref()), name.span());
                    if let DeValue::Table(t) = v.get_ref() {
                        for key in ["path", "env_names"] {
                            if let Some(p) = t.get(key) {
                                cx.origin(format!("sinks.{}.{key}", name.get_ref()), p.span());
                            }
                        }
                    }
                    match item::<RawSink>(cx, v, &format!("[sinks.{}]", name.get_ref())) {
                        Some(s) => sinks_raw.push((name, s)),
                        None => {
                            broken.insert(format!("sink:{}", name.get_ref()));
                        }
                    }
                }
            }
            "notify" => {
                for (name, v) in named_items(cx, value, "notify") {
                    cx.origin(format!("notify.{}", name.get_ref()), name.span());
                    if let Some(n) =
                        item::<RawNotify>(cx, v, &format!("[notify.{}]", name.get_ref()))
                    {
                        notify_raw.push((name, n));
                    }
                }
            }
            "policy" => {
                let span = value.span();
                match value.into_inner() {
                    DeValue::Array(items) => {
                        for v in items {
                            let span = v.span();
                            match item::<RawPolicy>(cx, v, "[[policy]]") {
                                Some(p) => policies_raw.push((span, p)),
                                None => saw_broken_policy = true,
                            }
                        }
                    }
                    _ => cx.d.error_hint(
                        span,
                        "`policy` must be an array of tables",
                        "write each policy as a [[policy]] section",
                    ),
                }
            }
            other => {
                let hint = match did_you_mean(other, TOP_KEYS.iter().copied()) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!("top-level sections are: {}", TOP_KEYS.join(", ")),
                };
                cx.d.error_hint(key.span(), format!("unknown top-level key `{other}`"), hint);
            }
        }
    }

    let daemon = validate_daemon(cx, daemon_raw.unwrap_or_default());

    let mut providers = BTreeMap::new();
    for (name, raw, own) in providers_raw {
        match validate_provider(cx, &name, raw, own) {
            Some(p) => {
                providers.insert(name.into_inner(), p);
            }
            None => {
                broken.insert(format!("provider:{}", name.get_ref()));
            }
        }
    }
    let mut sinks = BTreeMap::new();
    for (name, raw) in sinks_raw {
        // A file sink's directory must be the same for every node when the
        // state is shared (read-back after a failover reads what consumers
        // read): `shared = true` says the operator made it so.
        if let Some(d) = &daemon
            && matches!(d.state, StateConfig::Postgres(_))
            && raw.kind.get_ref() == "file"
            && !raw.shared.as_ref().is_some_and(|s| *s.get_ref())
        {
            let span = raw.shared.as_ref().map_or(name.span(), |s| s.span());
            cx.d.error_hint(
                span,
                format!(
                    "file sink `{}` is not declared shared, and the state is PostgreSQL (several nodes)",
                    name.get_ref()
                ),
                "put its directory on storage every node mounts at the same path, then set shared = true in this sink",
            );
        }
        match validate_sink(cx, &name, raw) {
            Some(s) => {
                sinks.insert(name.into_inner(), s);
            }
            None => {
                broken.insert(format!("sink:{}", name.get_ref()));
            }
        }
    }
    let mut notify = BTreeMap::new();
    for (name, raw) in notify_raw {
        if let Some(n) = validate_notify(cx, &name, raw) {
            notify.insert(name.into_inner(), n);
        }
    }

    let mut policies = Vec::new();
    let mut seen_names: HashMap<String, Range<usize>> = HashMap::new();
    // Suggestions draw on every declared name, including broken ones.
    let declared = |prefix: &str, defined: Vec<String>| -> Vec<String> {
        let mut all: BTreeSet<String> = defined.into_iter().collect();
        all.extend(
            broken
                .iter()
                .filter_map(|b| b.strip_prefix(prefix))
                .map(str::to_string),
        );
        all.into_iter().collect()
    };
    let provider_names = declared("provider:", providers.keys().cloned().collect());
    let sink_names = declared("sink:", sinks.keys().cloned().collect());
    let mut ownership_spans = super::ownership::PolicySpans::default();
    for (span, raw) in policies_raw {
        let name = raw.name.get_ref().clone();
        ownership_spans.record(
            &name,
            raw.match_.span(),
            raw.sinks
                .first()
                .map(|s| s.span())
                .unwrap_or_else(|| raw.name.span()),
        );
        let duplicate = if let Some(first) = seen_names.get(&name) {
            let (line, _) = cx.d.line_col(first.start);
            cx.d.error_hint(
                raw.name.span(),
                format!("duplicate policy name `{name}`"),
                format!(
                    "the first policy with this name is at line {line}; policy names must be unique"
                ),
            );
            true
        } else {
            seen_names.insert(name.clone(), raw.name.span());
            false
        };
        let refs = Refs {
            providers: &providers,
            provider_names: &provider_names,
            sinks: &sinks,
            sink_names: &sink_names,
            broken: &broken,
        };
        if let Some(p) = validate_policy(cx, span, raw, &refs)
            && !duplicate
        {
            policies.push(p);
        }
    }
    super::ownership::check(&mut cx.d, &policies, &providers, &sinks, &ownership_spans);
    if policies.is_empty() && !saw_broken_policy && !cx.d.has_errors() {
        cx.d.warn_hint(
            root_span.start..root_span.start,
            "no [[policy]] sections: rekey has nothing to do",
            "add a [[policy]] naming a provider, a key glob and a schedule",
        );
    }

    Some(Config {
        path: path.to_path_buf(),
        origins: BTreeMap::new(),
        digest: super::digest::of_source(src).unwrap_or_default(),
        policy_index: Default::default(),
        daemon: daemon?,
        providers,
        sinks,
        notify,
        policies,
    })
}

/// Deserialize one item, turning serde's errors into located diagnostics.
///
/// serde stops at the first error inside a table; to report every error of
/// the item in one run, the key that failed is reported, taken out, and the
/// rest deserialized again. The item is still returned when only optional
/// keys were taken out (its remaining keys are then validated too); a
/// "missing key" for a key taken out is not reported twice.
fn item<'i, T: Deserialize<'i>>(
    cx: &mut Ctx,
    value: Spanned<DeValue<'i>>,
    what: &str,
) -> Option<T> {
    let span = value.span();
    let mut value = value;
    let mut removed: Vec<String> = Vec::new();
    // Bounded by the number of keys: each round takes one out.
    loop {
        let e = match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        let espan = e.span().unwrap_or(span.clone());
        let msg = e.message().trim().to_string();
        if let Some(rest) = msg.strip_prefix("missing field `") {
            let field = rest.split('`').next().unwrap_or("");
            if !removed.iter().any(|r| r == field) {
                serde_error(cx, espan, &msg, what, None);
            }
            return None;
        }
        // The key whose value (or name) the error points into.
        let culprit = match value.get_ref() {
            DeValue::Table(table) => table
                .iter()
                .find(|(k, v)| {
                    let (ks, vs) = (k.span(), v.span());
                    (ks.start <= espan.start && espan.start < ks.end.max(ks.start + 1))
                        || (vs.start <= espan.start && espan.start < vs.end.max(vs.start + 1))
                })
                .map(|(k, _)| k.get_ref().to_string()),
            _ => None,
        };
        serde_error(cx, espan.clone(), &msg, what, culprit.as_deref());
        // `orgid` with a did-you-mean of `org_id`: one error, not a second
        // one saying `org_id` is missing.
        if let Some(rest) = msg.strip_prefix("unknown field `") {
            let field = rest.split('`').next().unwrap_or("");
            let expected: Vec<&str> = rest
                .split("expected one of ")
                .nth(1)
                .or_else(|| rest.split("expected ").nth(1))
                .map(|e| e.split('`').skip(1).step_by(2).collect())
                .unwrap_or_default();
            if let Some(m) = did_you_mean(field, expected.iter().copied()) {
                cx.dropped.insert((what.to_string(), m.to_string()));
                removed.push(m.to_string());
            }
        }
        let DeValue::Table(table) = value.get_mut() else {
            return None;
        };
        match culprit {
            Some(k) => {
                table.remove(k.as_str());
                cx.dropped.insert((what.to_string(), k.clone()));
                removed.push(k);
            }
            None => return None,
        }
    }
}

/// A table split in two by key: those named in `keys`, and the others
/// (both keep the table's span). Anything but a table goes to the first
/// part whole, for [`item`] to report, and the second part is empty.
fn split_table<'i>(
    value: Spanned<DeValue<'i>>,
    keys: &[&str],
) -> (Spanned<DeValue<'i>>, Spanned<DeValue<'i>>) {
    let span = value.span();
    let empty = || Spanned::new(span.clone(), DeValue::Table(DeTable::new()));
    if !matches!(value.get_ref(), DeValue::Table(_)) {
        return (value, empty());
    }
    let DeValue::Table(table) = value.into_inner() else {
        return (empty(), empty());
    };
    let (mut named, mut rest) = (DeTable::new(), DeTable::new());
    for (k, v) in table {
        if keys.contains(&k.get_ref().as_ref()) {
            named.insert(k, v);
        } else {
            rest.insert(k, v);
        }
    }
    (
        Spanned::new(span.clone(), DeValue::Table(named)),
        Spanned::new(span, DeValue::Table(rest)),
    )
}

/// `culprit`: the key of the item the error lies in, when known (serde's
/// message does not say, e.g. for a bad element of a list).
fn serde_error(cx: &mut Ctx, span: Range<usize>, msg: &str, what: &str, culprit: Option<&str>) {
    let msg = msg.trim();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or("");
        let expected: Vec<&str> = rest
            .split("expected one of ")
            .nth(1)
            .or_else(|| rest.split("expected ").nth(1))
            .map(|e| e.split('`').skip(1).step_by(2).collect())
            .unwrap_or_default();
        let hint = match did_you_mean(field, expected.iter().copied()) {
            Some(m) => format!("did you mean `{m}`?"),
            None if !expected.is_empty() => format!("known keys here: {}", expected.join(", ")),
            None => "remove it".to_string(),
        };
        cx.d.error_hint(span, format!("unknown key `{field}` in {what}"), hint);
    } else if let Some(rest) = msg.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or("");
        cx.d.error_hint(
            span,
            format!("{what} is missing required key `{field}`"),
            format!("add `{field} = …` to this section"),
        );
    } else if let Some(rest) = msg.strip_prefix("unknown variant `") {
        // The "variant" is whatever was written: a mistyped table key, or a
        // string where a table belongs, which may well be a secret
        // (`auth = "hvs.…"`). Never repeat it.
        let (written, expected) = rest.rsplit_once(", expected ").unwrap_or((rest, ""));
        let written = written.strip_suffix('`').unwrap_or(written);
        let variants: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        match cx.d.key_before(span.start) {
            // `auth = "…"`: a string where a table belongs.
            Some(key) => cx.d.error_hint(
                span,
                format!(
                    "`{key}` in {what} must be a table with one of {}",
                    variants_list(&variants)
                ),
                format!(
                    "write {key} = {{ {} = … }} (the value is not repeated here in case it is a secret)",
                    variants.first().copied().unwrap_or("…")
                ),
            ),
            // `auth = { tokn = … }`: a mistyped key, safe to repeat.
            None => {
                let hint = match did_you_mean(written, variants.iter().copied()) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!("known keys here: {}", variants.join(", ")),
                };
                cx.d.error_hint(span, format!("unknown key `{written}` in {what}"), hint);
            }
        }
    } else {
        let message = match cx.d.key_before(span.start).or(culprit.map(str::to_string)) {
            Some(key) => format!("`{key}` in {what}: {}", without_values(msg)),
            None => format!("{what}: {}", without_values(msg)),
        };
        cx.d.error_hint(
            span,
            message,
            "see rekey.example.toml for the form each key takes",
        );
    }
}

fn variants_list(v: &[&str]) -> String {
    v.iter()
        .map(|v| format!("`{v}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// serde's "invalid type: string \"hunter2\", expected …" repeats the value,
/// which may be a secret written in the wrong place: keep only its type.
fn without_values(msg: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(prefix)
            && let Some((found, expected)) = rest.rsplit_once(", expected ")
        {
            let kind = found.split(['`', '"']).next().unwrap_or(found).trim();
            return format!("found {}, expected {}", plain(kind), plain(expected));
        }
    }
    plain(msg)
}

/// serde's and Rust's type words in an operator's words: `i64` → `a whole
/// number`, `a sequence` → `a list`, `a map` → `a table`.
fn plain(text: &str) -> String {
    const WORDS: &[(&str, &str)] = &[
        ("an i64", "a whole number"),
        ("an u32", "a whole number"),
        ("a u32", "a whole number"),
        ("a u64", "a whole number"),
        ("a usize", "a whole number"),
        ("i64", "a whole number"),
        ("a sequence", "a list"),
        ("sequence", "a list"),
        ("a map", "a table"),
        ("map", "a table"),
        ("a boolean", "true or false"),
        ("boolean", "true or false"),
        ("integer", "a number"),
        ("floating point", "a decimal number"),
        ("string", "a string"),
    ];
    let mut out = text.trim().to_string();
    if let Some((_, to)) = WORDS.iter().find(|(from, _)| *from == out) {
        return to.to_string();
    }
    for (from, to) in WORDS {
        for lead in ["expected ", "found "] {
            let pat = format!("{lead}{from}");
            if out.ends_with(&pat)
                || out.contains(&format!("{pat} "))
                || out.contains(&format!("{pat},"))
            {
                out = out.replacen(&pat, &format!("{lead}{to}"), 1);
            }
        }
    }
    if out.starts_with("struct ") || out.starts_with("a struct") {
        return "a table".to_string();
    }
    out
}

/// The entries of a `[section.NAME]` table.
fn named_items<'i>(
    cx: &mut Ctx,
    value: Spanned<DeValue<'i>>,
    section: &str,
) -> Vec<(Spanned<String>, Spanned<DeValue<'i>>)> {
    let span = value.span();
    match value.into_inner() {
        DeValue::Table(t) => t
            .into_iter()
            .map(|(k, v)| {
                let ks = k.span();
                (Spanned::new(ks, k.into_inner().to_string()), v)
            })
            .collect(),
        _ => {
            cx.d.error_hint(
                span,
                format!("`{section}` must be a table of named sections"),
                format!("write [{section}.NAME] sections"),
            );
            Vec::new()
        }
    }
}

/// The default `expiring_warnings`, in seconds: 7 days, 1 day, 1 hour.
const DEFAULT_EXPIRING_WARNINGS: [u64; 3] = [7 * 86_400, 86_400, 3_600];

fn duration(cx: &mut Ctx, s: &Spanned<String>, key: &str) -> Option<Duration> {
    match humantime::parse_duration(s.get_ref()) {
        Ok(d) => Some(d),
        Err(e) => {
            cx.d.error_hint(
                s.span(),
                format!("invalid duration {:?} for `{key}`: {e}", s.get_ref()),
                "durations look like 90s, 15m, 24h or 7d",
            );
            None
        }
    }
}

fn duration_or(
    cx: &mut Ctx,
    s: &Option<Spanned<String>>,
    key: &str,
    default: Duration,
) -> Duration {
    s.as_ref()
        .and_then(|s| duration(cx, s, key))
        .unwrap_or(default)
}

fn secret(cx: &mut Ctx, r: &Spanned<RawSecretRef>, key: &str) -> Option<SecretRef> {
    secret_of_form(cx, r, key, SecretForm::Token)
}

/// A secret reference whose value must have `form` once resolved.
fn secret_of_form(
    cx: &mut Ctx,
    r: &Spanned<RawSecretRef>,
    key: &str,
    form: SecretForm,
) -> Option<SecretRef> {
    let span = r.span();
    let out = match r.get_ref() {
        RawSecretRef::Literal(v) => {
            cx.d.warn_hint(
                span.clone(),
                format!("`{key}` is a literal secret in the config file"),
                r#"use { env = "NAME" }, { file = "/path" } or { credential = "name" } (systemd LoadCredential=)"#,
            );
            if v.is_empty() {
                cx.d.error_hint(
                    span,
                    format!("`{key}` is empty"),
                    r#"give the secret as { env = "NAME" }, { file = "/path" } or { credential = "name" }"#,
                );
                return None;
            }
            SecretRef::Literal(Secret::new(v.clone()))
        }
        RawSecretRef::Env(n) => SecretRef::Env(n.clone()),
        RawSecretRef::File(p) => SecretRef::File(PathBuf::from(p)),
        RawSecretRef::Credential(n) => {
            if n.contains('/') || n.is_empty() {
                cx.d.error_hint(
                    span,
                    format!("credential name {n:?} for `{key}` is not a plain name"),
                    "credential names are file names under $CREDENTIALS_DIRECTORY, without '/'",
                );
                return None;
            }
            SecretRef::Credential(n.clone())
        }
        RawSecretRef::Invalid(why) => {
            cx.d.error_hint(
                span,
                format!("`{key}`: {why}"),
                r#"write { env = "NAME" }, { file = "/path" } or { credential = "name" }"#,
            );
            return None;
        }
    };
    cx.pending.push(Pending {
        span: r.span(),
        what: format!("`{key}`"),
        check: PendingCheck::Secret(out.clone(), form),
    });
    Some(out)
}

fn ca_file(cx: &mut Ctx, s: &Option<Spanned<String>>) -> Option<PathBuf> {
    let s = s.as_ref()?;
    let p = PathBuf::from(s.get_ref());
    cx.pending.push(Pending {
        span: s.span(),
        what: "`ca_file`".into(),
        check: PendingCheck::File(p.clone()),
    });
    Some(p)
}

fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

#[derive(Clone, Copy, PartialEq)]
enum Carries {
    /// Credentials or new keys travel over it: HTTPS unless loopback.
    Secrets,
    /// Notifications only: plain HTTP allowed with a warning.
    Notifications,
}

fn url(cx: &mut Ctx, s: &Spanned<String>, key: &str, carries: Carries) -> Option<String> {
    let text = s.get_ref().trim_end_matches('/').to_string();
    let parsed = match reqwest::Url::parse(&text) {
        Ok(u) => u,
        Err(e) => {
            cx.d.error_hint(
                s.span(),
                format!("invalid URL {:?} for `{key}`: {e}", s.get_ref()),
                "write a full URL such as https://host:port",
            );
            return None;
        }
    };
    match parsed.scheme() {
        "https" => {}
        "http" => {
            let host = parsed.host_str().unwrap_or("");
            if !is_loopback_host(host) {
                match carries {
                    Carries::Secrets => {
                        cx.d.error_hint(
                            s.span(),
                            format!("`{key}` uses plain http:// to {host}, and it carries secrets"),
                            "use https:// (plain http is accepted only for loopback addresses)",
                        );
                        return None;
                    }
                    Carries::Notifications => cx.d.warn_hint(
                        s.span(),
                        format!("`{key}` uses plain http:// to {host}"),
                        "notifications carry no secrets, but their signatures and contents are visible on the wire; prefer https://",
                    ),
                }
            }
        }
        other => {
            cx.d.error_hint(
                s.span(),
                format!("`{key}` has scheme {other:?}"),
                "use https:// (or http:// on loopback)",
            );
            return None;
        }
    }
    Some(text)
}

fn validate_daemon(cx: &mut Ctx, raw: RawDaemon) -> Option<DaemonConfig> {
    let state = match &raw.state {
        Some(s) if crate::state::postgres::is_postgres_url(s.get_ref()) => {
            StateConfig::Postgres(Box::new(postgres_state(cx, s, &raw)?))
        }
        Some(s) => StateConfig::Sqlite(PathBuf::from(s.get_ref())),
        None => StateConfig::Sqlite(match cx.env.vars.get("STATE_DIRECTORY") {
            // systemd may pass several, colon-separated; the first is ours.
            Some(dirs) => PathBuf::from(dirs.split(':').next().unwrap_or(dirs)).join("state.db"),
            None => PathBuf::from("rekey.db"),
        }),
    };
    if matches!(state, StateConfig::Sqlite(_)) {
        for (key, span) in [
            ("state_password", sp(&raw.state_password)),
            ("state_ca_file", sp(&raw.state_ca_file)),
            ("lease_ttl", sp(&raw.lease_ttl)),
            ("lease_renew", sp(&raw.lease_renew)),
        ] {
            if let Some(span) = span {
                cx.d.warn_hint(
                    span,
                    format!("`{key}` has no effect: the state is a SQLite file"),
                    "it applies only with state = \"postgres://…\" (DESIGN §8)",
                );
            }
        }
    }
    let instance = raw.instance.as_ref().and_then(|i| {
        let name = i.get_ref();
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            cx.d.error_hint(
                i.span(),
                format!(
                    "`instance` {:?} is not a node name",
                    name.escape_debug().to_string()
                ),
                "use 1 to 64 characters from A-Z a-z 0-9 . _ -, unique per node",
            );
            return None;
        }
        Some(name.clone())
    });
    let lease_ttl = duration_or(cx, &raw.lease_ttl, "lease_ttl", DEFAULT_LEASE_TTL);
    let lease_renew = duration_or(cx, &raw.lease_renew, "lease_renew", DEFAULT_LEASE_RENEW);
    if lease_ttl < Duration::from_secs(1) || lease_renew.is_zero() || lease_renew * 2 > lease_ttl {
        let span = sp(&raw.lease_renew).or(sp(&raw.lease_ttl)).unwrap_or(0..0);
        cx.d.error_hint(
            span,
            format!(
                "lease_renew = {} does not fit lease_ttl = {}",
                humantime::format_duration(lease_renew),
                humantime::format_duration(lease_ttl)
            ),
            "lease_ttl must be at least 1s and lease_renew at most half of it (defaults 30s and 10s)",
        );
    }
    let admin_token = raw
        .admin_token
        .as_ref()
        .and_then(|t| secret(cx, t, "admin_token"));
    let listen = match &raw.listen {
        None => ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 9477))),
        Some(s) => {
            let text = s.get_ref();
            if let Some(path) = text.strip_prefix("unix:") {
                if !path.starts_with('/') {
                    cx.d.error_hint(
                        s.span(),
                        format!("unix socket path {path:?} is not absolute"),
                        "write listen = \"unix:/run/rekey/status.sock\"",
                    );
                }
                ListenAddr::Unix(PathBuf::from(path))
            } else {
                match text.parse::<SocketAddr>() {
                    Ok(a) => {
                        if !a.ip().is_loopback()
                            && admin_token.is_none()
                            && raw.admin_token.is_none()
                        {
                            cx.d.error_hint(
                                s.span(),
                                format!("`listen` is {a}, which is not loopback, and no `admin_token` is set"),
                                "set admin_token = { credential = \"admin-token\" }, or listen on 127.0.0.1",
                            );
                        }
                        ListenAddr::Tcp(a)
                    }
                    Err(_) => {
                        cx.d.error_hint(
                            s.span(),
                            format!("invalid listen address {text:?}"),
                            "write \"127.0.0.1:9477\", \"[::1]:9477\" or \"unix:/run/rekey/status.sock\"",
                        );
                        ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 9477)))
                    }
                }
            }
        }
    };
    let max_concurrent_rotations = match &raw.max_concurrent_rotations {
        None => 4,
        Some(n) if *n.get_ref() >= 1 && *n.get_ref() <= 1024 => *n.get_ref() as usize,
        Some(n) => {
            cx.d.error_hint(
                n.span(),
                format!("max_concurrent_rotations = {} is out of range", n.get_ref()),
                "use a number from 1 to 1024",
            );
            4
        }
    };
    let shutdown_timeout = duration_or(
        cx,
        &raw.shutdown_timeout,
        "shutdown_timeout",
        Duration::from_secs(30),
    );
    let seal_key = raw
        .seal_key
        .as_ref()
        .and_then(|s| secret_of_form(cx, s, "seal_key", SecretForm::SealKey));
    let admin_listen = raw.admin_listen.as_ref().and_then(|s| {
        match s.get_ref().strip_prefix("unix:") {
            Some(path) if path.starts_with('/') => {
                if listen == ListenAddr::Unix(PathBuf::from(path)) {
                    cx.d.error_hint(
                        s.span(),
                        "`admin_listen` is the same socket as `listen`",
                        "give the admin socket a path of its own, e.g. unix:/run/rekey/admin.sock",
                    );
                }
                Some(PathBuf::from(path))
            }
            _ => {
                cx.d.error_hint(
                    s.span(),
                    format!("`admin_listen` {:?} is not an absolute unix: socket path", s.get_ref()),
                    "the admin endpoints are served on a Unix socket only: admin_listen = \"unix:/run/rekey/admin.sock\"",
                );
                None
            }
        }
    });
    let admin_group = match &raw.admin_group {
        Some(g) if admin_listen.is_none() && raw.admin_listen.is_none() => {
            cx.d.warn_hint(
                g.span(),
                "`admin_group` has no effect without `admin_listen`",
                "set admin_listen = \"unix:/run/rekey/admin.sock\"",
            );
            g.get_ref().clone()
        }
        Some(g) => g.get_ref().clone(),
        None => crate::config::DEFAULT_ADMIN_GROUP.to_string(),
    };
    let allowed_hosts = raw
        .allowed_hosts
        .as_ref()
        .map(|h| {
            h.get_ref()
                .iter()
                .map(|n| n.trim().trim_end_matches('.').to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default();
    if let (StateConfig::Postgres(_), None, Some(st)) = (&state, &raw.seal_key, &raw.state) {
        cx.d.error_hint(
            st.span(),
            "a PostgreSQL state needs `seal_key` in [daemon]",
            "every node must open the secrets any other node sealed: give all of them the same key, e.g. seal_key = { credential = \"seal-key\" } (64 hex characters); the database keeps only a check value of it",
        );
    }
    Some(DaemonConfig {
        state,
        instance,
        lease: LeaseTiming {
            ttl: lease_ttl,
            renew: lease_renew,
        },
        listen,
        admin_token,
        max_concurrent_rotations,
        shutdown_timeout,
        seal_key,
        admin_listen,
        admin_group,
        allowed_hosts,
    })
}

/// `state = "postgres://…"` with its password reference: the URL is parsed
/// (never connected to) by the store's own parser, so `check` refuses what
/// `run` would.
fn postgres_state(cx: &mut Ctx, s: &Spanned<String>, raw: &RawDaemon) -> Option<PostgresState> {
    let password = raw
        .state_password
        .as_ref()
        .and_then(|p| secret(cx, p, "state_password"));
    let ca_file = raw.state_ca_file.as_ref().map(|c| {
        let p = PathBuf::from(c.get_ref());
        cx.pending.push(Pending {
            span: c.span(),
            what: "`state_ca_file`".into(),
            check: PendingCheck::File(p.clone()),
        });
        p
    });
    let parsed = crate::state::postgres::PgOptions::from_url(s.get_ref()).and_then(|mut o| {
        o.ca_file = ca_file;
        o.validate().map(|()| o)
    });
    match parsed {
        Ok(options) => Some(PostgresState {
            url: options.url.clone(),
            options,
            password,
        }),
        Err(e) => {
            cx.d.error_hint(
                s.span(),
                format!("`state`: {e}"),
                "write state = \"postgres://USER@HOST:PORT/DBNAME?sslmode=verify-full\" with state_ca_file = \"/path/ca.pem\", and the password as state_password = { credential = \"…\" }",
            );
            None
        }
    }
}

fn rate_limit(cx: &mut Ctx, s: &Spanned<String>) -> Option<RateLimit> {
    let text = s.get_ref().trim();
    let parsed = text.parse::<RateLimit>().ok();
    match parsed {
        Some(rate) => Some(rate),
        None => {
            cx.d.error_hint(
                s.span(),
                format!("invalid rate limit {text:?}"),
                "write requests per unit, like \"20/s\", \"600/min\" or \"1000/h\"",
            );
            None
        }
    }
}

/// Keys set on an item that do not apply to its kind.
fn not_for_kind(cx: &mut Ctx, kind: &str, what: &str, present: &[(&str, Option<Range<usize>>)]) {
    for (key, span) in present {
        if let Some(span) = span {
            cx.d.error_hint(
                span.clone(),
                format!("key `{key}` does not apply to {kind} {what}"),
                "remove it, or check the `kind`",
            );
        }
    }
}

fn sp<T>(o: &Option<Spanned<T>>) -> Option<Range<usize>> {
    o.as_ref().map(|s| s.span())
}

fn required<'r, T>(
    cx: &mut Ctx,
    o: &'r Option<Spanned<T>>,
    key: &str,
    what: &str,
    at: Range<usize>,
) -> Option<&'r Spanned<T>> {
    if o.is_none() && !cx.dropped.contains(&(what.to_string(), key.to_string())) {
        cx.d.error_hint(
            at,
            format!("{what} is missing required key `{key}`"),
            format!("add `{key} = …`"),
        );
    }
    o.as_ref()
}

/// What a provider's own config check (its [`ProviderSpec`], beside its
/// client in `src/provider/`) may use: located errors and the shared
/// field checks, all reporting against the `[providers.NAME]` item.
pub struct ProviderCx<'c, 'a, 'i> {
    cx: &'c mut Ctx<'a>,
    /// `[providers.NAME]`, for messages.
    pub what: String,
    /// The provider kind, for messages.
    pub kind: &'static str,
    at: Range<usize>,
    /// The kind's own keys of `[providers.NAME]` (keys of no kind and of
    /// other kinds already reported and taken out), for [`ProviderCx::parse`].
    own: Option<Spanned<DeValue<'i>>>,
}

impl<'i> ProviderCx<'_, '_, 'i> {
    /// The kind's own keys as its config struct (`deny_unknown_fields`,
    /// every value `Spanned`), every error located; `None` after reporting
    /// an error that leaves nothing to check. A key with a value of the
    /// wrong type is reported and dropped (and then not reported again as
    /// missing by [`ProviderCx::required`]). Call it once.
    pub fn parse<T: Deserialize<'i>>(&mut self) -> Option<T> {
        let own = self.own.take()?;
        item(self.cx, own, &self.what)
    }

    /// An error at `span` with a hint.
    pub fn error_hint(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.cx.d.error_hint(span, message, hint);
    }

    /// A key the kind needs; reported at the item's name when missing.
    pub fn required<'r, T>(
        &mut self,
        o: &'r Option<Spanned<T>>,
        key: &str,
    ) -> Option<&'r Spanned<T>> {
        let what = self.what.clone();
        required(self.cx, o, key, &what, self.at.clone())
    }

    /// A secret reference (`{ env = … }`, `{ credential = … }`, …).
    pub fn secret(&mut self, r: &Spanned<RawSecretRef>, key: &str) -> Option<SecretRef> {
        secret(self.cx, r, key)
    }

    /// A URL credentials travel over (HTTPS unless loopback).
    pub fn secret_url(&mut self, s: &Spanned<String>, key: &str) -> Option<String> {
        url(self.cx, s, key, Carries::Secrets)
    }
}

/// One provider kind's config rules, kept beside its client (like a
/// Vector component): its own config struct (read by
/// [`ProviderCx::parse`]), defaults, the auth forms and naming constraints
/// of `[providers.NAME]`, the `create` keys a policy may pass, and how its
/// client is built. The list of kinds is [`crate::provider::SPECS`]; a new
/// kind is one more entry there and one arm of [`ProviderKind`].
pub trait ProviderSpec: Sync {
    /// `kind = "…"` in the config.
    fn kind(&self) -> &'static str;
    /// `endpoint` when the config gives none.
    fn default_endpoint(&self) -> &'static str;
    /// `rate_limit` (requests per second) when the config gives none.
    fn default_rate(&self) -> Option<f64> {
        None
    }
    /// The kind's own keys of `[providers.NAME]` (its config struct's
    /// fields). A key another kind reads is reported as not applying to
    /// this kind; a key no kind reads as unknown, with a did-you-mean.
    fn keys(&self) -> &'static [&'static str];
    /// Whether the provider's keys carry an expiry (else
    /// `rotate_before_expiry` never fires and is refused).
    fn has_expiry(&self) -> bool {
        false
    }
    /// The kind's own keys of `[providers.NAME]` (`cx.parse()` reads them
    /// into its config struct), checked, as the domain type; `None` after
    /// reporting why.
    fn validate(&self, cx: &mut ProviderCx<'_, '_, '_>) -> Option<ProviderKind>;
    /// The secret fields its keys carry when they are known before a key
    /// exists (the names `SecretFields` uses; a file sink's `env_names`
    /// keys must be among them). `None`: known only at run time (Huawei's
    /// CSV columns), checked by the file sink before it writes anything.
    fn secret_fields(&self) -> Option<&'static [&'static str]>;
    /// Its client, for a validated config of this kind.
    fn build(
        &self,
        cfg: &ProviderConfig,
        http: crate::provider::http::ProviderHttp,
    ) -> Result<crate::provider::SharedProvider, crate::provider::BuildError>;
    /// Keys a policy's `create` table may hold.
    fn create_keys(&self) -> &'static [&'static str];
    /// Kind-specific checks of a policy's `create` table, after the unknown
    /// keys were reported (`unknown_reported`). `create_keys` checks names;
    /// this checks what else the kind needs. Reports through `cx`.
    fn check_create(
        &self,
        _cx: &mut ProviderCx<'_, '_, '_>,
        _create: &serde_json::Map<String, serde_json::Value>,
        _span: Range<usize>,
        _rotate: bool,
        _unknown_reported: bool,
    ) {
    }
    /// `create` keys refused with a reason of their own (key, message,
    /// hint), reported instead of "unknown create parameter".
    fn reserved_create_keys(&self) -> &'static [(&'static str, &'static str, &'static str)] {
        &[]
    }
}

fn validate_provider(
    cx: &mut Ctx,
    name: &Spanned<String>,
    raw: RawProvider,
    own: Spanned<DeValue<'_>>,
) -> Option<ProviderConfig> {
    let what = format!("[providers.{}]", name.get_ref());
    let at = name.span();
    let kind_s = raw.kind.get_ref().as_str();
    let Some(spec) = crate::provider::spec(kind_s) else {
        let kinds: Vec<&str> = crate::provider::SPECS.iter().map(|s| s.kind()).collect();
        let hint = match did_you_mean(kind_s, kinds.iter().copied()) {
            Some(m) => format!("did you mean \"{m}\"?"),
            None => format!("provider kinds are: {}", kinds.join(", ")),
        };
        cx.d.error_hint(
            raw.kind.span(),
            format!("unknown provider kind {kind_s:?}"),
            hint,
        );
        // Which kind was meant is unknown, but a key no kind reads is wrong
        // whatever it was: report those too (every error in one run).
        own_keys(cx, None, &what, own);
        return None;
    };
    let endpoint = match &raw.endpoint {
        Some(e) => url(cx, e, "endpoint", Carries::Secrets),
        None => Some(spec.default_endpoint().to_string()),
    };
    let rate_limit = match &raw.rate_limit {
        Some(r) => rate_limit(cx, r),
        None => spec
            .default_rate()
            .map(|per_second| RateLimit { per_second }),
    };
    let ca_file = ca_file(cx, &raw.ca_file);
    let timeout = duration_or(cx, &raw.timeout, "timeout", Duration::from_secs(30));
    let own = own_keys(cx, Some(spec), &what, own);
    let kind = spec.validate(&mut ProviderCx {
        cx,
        what,
        kind: spec.kind(),
        at,
        own: Some(own),
    });
    Some(ProviderConfig {
        name: name.get_ref().clone(),
        endpoint: endpoint?,
        rate_limit,
        ca_file,
        timeout,
        kind: kind?,
    })
}

/// The keys of `[providers.NAME]` beyond the common ones that `spec`'s
/// kind reads. The others are reported here: a key another kind reads as
/// not applying to this one (at its value), any other as unknown (at its
/// name, with a did-you-mean among the keys this kind takes).
///
/// With no `spec` (the kind is unknown or missing, already reported), only
/// the keys no kind reads are reported, with a did-you-mean among every
/// kind's keys; nothing is kept.
fn own_keys<'i>(
    cx: &mut Ctx,
    spec: Option<&dyn ProviderSpec>,
    what: &str,
    own: Spanned<DeValue<'i>>,
) -> Spanned<DeValue<'i>> {
    let span = own.span();
    let DeValue::Table(table) = own.into_inner() else {
        return Spanned::new(span, DeValue::Table(DeTable::new()));
    };
    let spec_keys: Vec<&str> = match spec {
        Some(spec) => spec.keys().to_vec(),
        None => {
            let mut all: Vec<&str> = crate::provider::SPECS
                .iter()
                .flat_map(|s| s.keys())
                .copied()
                .collect();
            all.sort_unstable();
            all.dedup();
            all
        }
    };
    let known: Vec<&str> = RawProvider::KEYS
        .iter()
        .chain(spec_keys.iter())
        .copied()
        .collect();
    let mut kept = DeTable::new();
    let mut foreign: Vec<(&str, Option<Range<usize>>)> = Vec::new();
    for (k, v) in table {
        let key = k.get_ref().as_ref();
        if spec_keys.contains(&key) {
            if spec.is_some() {
                kept.insert(k, v);
            }
        } else if let Some(other) = crate::provider::SPECS
            .iter()
            .flat_map(|s| s.keys())
            .find(|o| **o == key)
        {
            foreign.push((other, Some(v.span())));
        } else {
            let hint = match did_you_mean(key, known.iter().copied()) {
                Some(m) => {
                    // `orgid` for `org_id`: one error, not a second one
                    // saying `org_id` is missing.
                    cx.dropped.insert((what.to_string(), m.to_string()));
                    format!("did you mean `{m}`?")
                }
                None => format!("known keys here: {}", known.join(", ")),
            };
            cx.d.error_hint(k.span(), format!("unknown key `{key}` in {what}"), hint);
        }
    }
    if let Some(spec) = spec {
        not_for_kind(cx, spec.kind(), "providers", &foreign);
    }
    Spanned::new(span, DeValue::Table(kept))
}

fn target(cx: &mut Ctx, s: &Spanned<String>, key: &str) -> Option<TargetTemplate> {
    match TargetTemplate::parse(s.get_ref()) {
        Ok(t) => Some(t),
        Err(e) => {
            cx.d.error_hint(
                s.span(),
                format!("`{key}`: {e}"),
                "sink targets may hold {lineage} and {policy}",
            );
            None
        }
    }
}

fn validate_sink(cx: &mut Ctx, name: &Spanned<String>, raw: RawSink) -> Option<SinkConfig> {
    let what = format!("[sinks.{}]", name.get_ref());
    let at = name.span();
    let kind_s = raw.kind.get_ref().as_str();
    let ca = ca_file(cx, &raw.ca_file);
    let timeout = duration_or(cx, &raw.timeout, "timeout", Duration::from_secs(15));
    let file_keys = [
        ("path", sp(&raw.path)),
        ("format", sp(&raw.format)),
        ("mode", sp(&raw.mode)),
        ("owner", sp(&raw.owner)),
        ("group", sp(&raw.group)),
        ("on_publish", sp(&raw.on_publish)),
        ("on_publish_timeout", sp(&raw.on_publish_timeout)),
        ("env_names", sp(&raw.env_names)),
        ("field", sp(&raw.field)),
        ("pass_env", sp(&raw.pass_env)),
        ("shared", sp(&raw.shared)),
    ];
    let kind = match kind_s {
        "file" => {
            not_for_kind(
                cx,
                kind_s,
                "sinks",
                &[
                    ("url", sp(&raw.url)),
                    ("secret", sp(&raw.secret)),
                    ("address", sp(&raw.address)),
                    ("mount", sp(&raw.mount)),
                    ("namespace", sp(&raw.namespace)),
                    ("auth", sp(&raw.auth)),
                    ("ca_file", sp(&raw.ca_file)),
                    ("adopt_existing", sp(&raw.adopt_existing)),
                ],
            );
            let path = required(cx, &raw.path, "path", &what, at.clone())
                .and_then(|p| target(cx, p, "path"));
            if let (Some(p), Some(raw_p)) = (&path, &raw.path)
                && !p.as_str().starts_with('/')
            {
                cx.d.warn_hint(raw_p.span(), format!("file sink path {:?} is relative", p.as_str()), "it is resolved against the daemon's working directory; prefer an absolute path");
            }
            let format = match raw
                .format
                .as_ref()
                .map(|f| (f.get_ref().as_str(), f.span()))
            {
                None | Some(("env", _)) => FileFormat::Env,
                Some(("raw", _)) => FileFormat::Raw,
                Some(("json", _)) => FileFormat::Json,
                Some((other, span)) => {
                    cx.d.error_hint(
                        span,
                        format!("unknown file format {other:?}"),
                        "formats are raw, env and json",
                    );
                    FileFormat::Env
                }
            };
            let mode = match &raw.mode {
                None => 0o600,
                Some(m) => match u32::from_str_radix(m.get_ref().trim_start_matches("0o"), 8) {
                    Ok(v) if v <= 0o777 => {
                        if v & 0o007 != 0 {
                            cx.d.warn_hint(
                                m.span(),
                                format!("mode {} lets every local user read the key", m.get_ref()),
                                "use 0600 or 0640",
                            );
                        }
                        v
                    }
                    _ => {
                        cx.d.error_hint(
                            m.span(),
                            format!("invalid file mode {:?}", m.get_ref()),
                            "write an octal string such as \"0600\"",
                        );
                        0o600
                    }
                },
            };
            let on_publish = raw.on_publish.as_ref().and_then(|c| {
                if c.get_ref().is_empty() || c.get_ref()[0].is_empty() {
                    cx.d.error_hint(
                        c.span(),
                        "`on_publish` is empty",
                        "give the command as a list: [\"systemctl\", \"reload\", \"myapp\"]",
                    );
                    None
                } else {
                    Some(c.get_ref().clone())
                }
            });
            let on_publish_timeout = duration_or(
                cx,
                &raw.on_publish_timeout,
                "on_publish_timeout",
                Duration::from_secs(60),
            );
            SinkKind::File(FileSinkConfig {
                path: path?,
                format,
                mode,
                owner: raw.owner.as_ref().map(|o| o.get_ref().clone()),
                group: raw.group.as_ref().map(|g| g.get_ref().clone()),
                on_publish,
                on_publish_timeout,
                env_names: raw
                    .env_names
                    .as_ref()
                    .map(|e| e.get_ref().clone())
                    .unwrap_or_default(),
                field: match &raw.field {
                    Some(f) if format != FileFormat::Raw => {
                        cx.d.error_hint(
                            f.span(),
                            "`field` applies to format = \"raw\" only",
                            "env and json files hold every field; remove `field` or set format = \"raw\"",
                        );
                        None
                    }
                    Some(f) if f.get_ref().is_empty() => {
                        cx.d.error_hint(
                            f.span(),
                            "`field` is empty",
                            "name a secret field, e.g. field = \"credential_zip\"",
                        );
                        None
                    }
                    f => f.as_ref().map(|f| f.get_ref().clone()),
                },
                pass_env: pass_env(cx, &raw.pass_env),
                shared: raw.shared.as_ref().is_some_and(|s| *s.get_ref()),
            })
        }
        "webhook" => {
            not_for_kind(cx, kind_s, "sinks", &file_keys);
            not_for_kind(
                cx,
                kind_s,
                "sinks",
                &[
                    ("address", sp(&raw.address)),
                    ("mount", sp(&raw.mount)),
                    ("namespace", sp(&raw.namespace)),
                    ("auth", sp(&raw.auth)),
                    ("adopt_existing", sp(&raw.adopt_existing)),
                ],
            );
            let u = required(cx, &raw.url, "url", &what, at.clone())
                .and_then(|u| url(cx, u, "url", Carries::Secrets));
            let secrets = required(cx, &raw.secret, "secret", &what, at.clone())
                .map(|s| webhook_secrets(cx, s));
            SinkKind::Webhook(WebhookSinkConfig {
                url: u?,
                secrets: secrets??,
            })
        }
        "vault" => {
            not_for_kind(cx, kind_s, "sinks", &file_keys[1..]);
            not_for_kind(
                cx,
                kind_s,
                "sinks",
                &[("url", sp(&raw.url)), ("secret", sp(&raw.secret))],
            );
            let address = required(cx, &raw.address, "address", &what, at.clone())
                .and_then(|a| url(cx, a, "address", Carries::Secrets));
            let path = required(cx, &raw.path, "path", &what, at.clone())
                .and_then(|p| target(cx, p, "path"));
            let auth = required(cx, &raw.auth, "auth", &what, at.clone()).and_then(|a| {
                match a.get_ref() {
                    RawVaultAuth::Token(t) => secret(cx, t, "auth.token").map(VaultAuth::Token),
                    RawVaultAuth::Approle(r) => {
                        let role_id = secret_quiet_literal(cx, &r.role_id, "auth.approle.role_id");
                        let secret_id = secret(cx, &r.secret_id, "auth.approle.secret_id");
                        Some(VaultAuth::AppRole {
                            role_id: role_id?,
                            secret_id: secret_id?,
                            mount: r
                                .mount
                                .as_ref()
                                .map(|m| m.get_ref().clone())
                                .unwrap_or_else(|| "approle".into()),
                        })
                    }
                }
            });
            let mount = raw
                .mount
                .as_ref()
                .map(|m| m.get_ref().trim_matches('/').to_string())
                .unwrap_or_else(|| "secret".into());
            SinkKind::Vault(VaultSinkConfig {
                address: address?,
                mount,
                path: path?,
                namespace: raw.namespace.as_ref().map(|n| n.get_ref().clone()),
                auth: auth?,
                adopt_existing: raw.adopt_existing.as_ref().is_some_and(|a| *a.get_ref()),
            })
        }
        other => {
            let hint = match did_you_mean(other, SINK_KINDS.iter().copied()) {
                Some(m) => format!("did you mean \"{m}\"?"),
                None => format!("sink kinds are: {}", SINK_KINDS.join(", ")),
            };
            cx.d.error_hint(
                raw.kind.span(),
                format!("unknown sink kind {other:?}"),
                hint,
            );
            return None;
        }
    };
    Some(SinkConfig {
        name: name.get_ref().clone(),
        ca_file: ca,
        timeout,
        kind,
    })
}

/// `pass_env`: names of environment variables (`[A-Za-z_][A-Za-z0-9_]*`).
fn pass_env(cx: &mut Ctx, raw: &Option<Spanned<Vec<String>>>) -> Vec<String> {
    let Some(list) = raw else { return Vec::new() };
    let mut out = Vec::new();
    for name in list.get_ref() {
        let ok = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok {
            out.push(name.clone());
        } else {
            cx.d.error_hint(
                list.span(),
                format!("`pass_env` entry {name:?} is not an environment variable name"),
                "write names such as \"HOME\" or \"MYAPP_SOCKET\"",
            );
        }
    }
    out
}

/// An AppRole role_id is an identifier, not a secret: a literal is fine.
fn secret_quiet_literal(cx: &mut Ctx, r: &Spanned<RawSecretRef>, key: &str) -> Option<SecretRef> {
    match r.get_ref() {
        RawSecretRef::Literal(v) if !v.is_empty() => {
            Some(SecretRef::Literal(Secret::new(v.clone())))
        }
        _ => secret(cx, r, key),
    }
}

fn webhook_secrets(cx: &mut Ctx, s: &Spanned<OneOrMany<RawSecretRef>>) -> Option<Vec<SecretRef>> {
    let span = s.span();
    let refs: Vec<RawSecretRef> = match s.get_ref() {
        OneOrMany::One(r) => vec![r.clone()],
        OneOrMany::Many(v) => v.clone(),
    };
    if refs.is_empty() {
        cx.d.error_hint(
            span,
            "`secret` is an empty list",
            "give at least one whsec_… secret reference",
        );
        return None;
    }
    let mut out = Vec::new();
    for r in refs {
        if let RawSecretRef::Literal(v) = &r
            && !v.starts_with("whsec_")
        {
            cx.d.error_hint(
                span.clone(),
                "webhook `secret` does not start with whsec_",
                "Standard Webhooks secrets are written whsec_<base64>",
            );
            // Reported; its form is not checked a second time.
            secret(cx, &Spanned::new(span.clone(), r), "secret");
            cx.pending.pop();
            continue;
        }
        out.push(secret_of_form(
            cx,
            &Spanned::new(span.clone(), r),
            "secret",
            SecretForm::WebhookKey,
        )?);
    }
    Some(out)
}

fn validate_notify(cx: &mut Ctx, name: &Spanned<String>, raw: RawNotify) -> Option<NotifyConfig> {
    let u = url(cx, &raw.url, "url", Carries::Notifications);
    let secrets = webhook_secrets(cx, &raw.secret);
    let events = raw.events.as_ref().map(|evs| {
        let mut out = Vec::new();
        for e in evs.get_ref() {
            if EVENT_TYPES.contains(&e.get_ref().as_str()) {
                out.push(e.get_ref().clone());
            } else {
                let hint = match did_you_mean(e.get_ref(), EVENT_TYPES.iter().copied()) {
                    Some(m) => format!("did you mean \"{m}\"?"),
                    None => format!("event types are: {}", EVENT_TYPES.join(", ")),
                };
                cx.d.error_hint(
                    e.span(),
                    format!("unknown event type {:?}", e.get_ref()),
                    hint,
                );
            }
        }
        out
    });
    let ca = ca_file(cx, &raw.ca_file);
    let timeout = duration_or(cx, &raw.timeout, "timeout", Duration::from_secs(15));
    Some(NotifyConfig {
        name: name.get_ref().clone(),
        url: u?,
        secrets: secrets?,
        events,
        ca_file: ca,
        timeout,
    })
}

struct Refs<'a> {
    providers: &'a BTreeMap<String, ProviderConfig>,
    provider_names: &'a [String],
    sinks: &'a BTreeMap<String, SinkConfig>,
    sink_names: &'a [String],
    broken: &'a BTreeSet<String>,
}

/// A string the glob matches, to try the name template against: each `*`
/// and `?` becomes `x`, a class its first member.
fn sample_for_glob(glob: &str) -> String {
    let mut out = String::new();
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' | '?' => out.push('x'),
            '[' => {
                let mut first = None;
                for n in chars.by_ref() {
                    if n == ']' {
                        break;
                    }
                    if first.is_none() && n != '!' && n != '^' {
                        first = Some(n);
                    }
                }
                out.push(first.unwrap_or('x'));
            }
            '{' => {
                let mut alt = String::new();
                for n in chars.by_ref() {
                    if n == '}' {
                        break;
                    }
                    alt.push(n);
                }
                out.push_str(alt.split(',').next().unwrap_or(""));
            }
            '\\' => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            c => out.push(c),
        }
    }
    out
}

fn validate_policy(
    cx: &mut Ctx,
    span: Range<usize>,
    raw: RawPolicy,
    refs: &Refs,
) -> Option<PolicyConfig> {
    let name = raw.name.get_ref().clone();
    let what = format!("policy `{name}`");
    if name.is_empty() || name.contains(['/', ' ', '{', '}']) {
        cx.d.error_hint(
            raw.name.span(),
            format!("policy name {name:?} is not usable"),
            "use letters, digits, '-', '_' and '.'",
        );
    }
    let provider_name = raw.provider.get_ref();
    let provider = refs.providers.get(provider_name);
    if provider.is_none() && !refs.broken.contains(&format!("provider:{provider_name}")) {
        let hint = match did_you_mean(
            provider_name,
            refs.provider_names.iter().map(|s| s.as_str()),
        ) {
            Some(m) => format!("did you mean \"{m}\"?"),
            None if refs.provider_names.is_empty() => {
                "define it as a [providers.NAME] section".to_string()
            }
            None => format!("defined providers: {}", refs.provider_names.join(", ")),
        };
        cx.d.error_hint(
            raw.provider.span(),
            format!("{what} names undefined provider {provider_name:?}"),
            hint,
        );
    }
    let mode = match raw.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("rotate", _)) => Mode::Rotate,
        Some(("observe", _)) => Mode::Observe,
        Some((other, span)) => {
            cx.d.error_hint(
                span,
                format!("unknown mode {other:?}"),
                "modes are observe (report only) and rotate",
            );
            Mode::Rotate
        }
    };
    let glob_text = raw.match_.get_ref().clone();
    // `*` and `?` never cross `/` (key names are untrusted; DESIGN §2);
    // `**` as a whole path component does (`KeyGlob`).
    let matcher = match super::glob::KeyGlob::shared(&glob_text) {
        Ok(g) => Some(g),
        Err(e) => {
            cx.d.error_hint(
                raw.match_.span(),
                format!("invalid glob {glob_text:?}: {}", e.kind()),
                "globs use * ? [abc] and {a,b}",
            );
            None
        }
    };
    let schedule = match raw.schedule.get_ref().parse::<Schedule>() {
        Ok(s) => Some(s),
        Err(e) => {
            cx.d.error_hint(raw.schedule.span(), format!("invalid schedule {:?}: {e}", raw.schedule.get_ref()), "six fields with seconds, e.g. \"0 */15 * * * *\" (every 15 minutes); a classic five-field line means second 0");
            None
        }
    };
    let lead = raw.rotate_before_expiry.as_ref().and_then(|s| {
        let text = s.get_ref().trim();
        if let Some(p) = text.strip_suffix('%') {
            match p.trim().parse::<f64>() {
                Ok(v) if v > 0.0 && v <= 100.0 => Some(Lead::Share(v)),
                _ => {
                    cx.d.error_hint(
                        s.span(),
                        format!("invalid share {text:?} for `rotate_before_expiry`"),
                        "write a percentage of the key's lifetime between 0 and 100, e.g. \"33%\"",
                    );
                    None
                }
            }
        } else {
            duration(cx, s, "rotate_before_expiry").map(Lead::Absolute)
        }
    });
    let max_age = raw.max_age.as_ref().and_then(|m| {
        let age = duration(cx, m, "max_age")?;
        if age.is_zero() {
            cx.d.error_hint(
                m.span(),
                format!(
                    "max_age = {:?} would replace every key on every check",
                    m.get_ref()
                ),
                "give the age after which a key is replaced, e.g. max_age = \"30d\"",
            );
            return None;
        }
        Some(age)
    });
    if raw.rotate_before_expiry.is_none() && raw.max_age.is_none() {
        cx.d.error_hint(
            raw.name.span(),
            format!("{what} has neither `rotate_before_expiry` nor `max_age`"),
            "set rotate_before_expiry = \"7d\" (or \"33%\"), max_age = \"30d\", or both",
        );
    }
    if let (Some(p), Some(rbe), None) = (provider, &raw.rotate_before_expiry, &raw.max_age)
        && !crate::provider::spec(p.kind.as_str()).is_some_and(|s| s.has_expiry())
    {
        cx.d.error_hint(
            rbe.span(),
            format!(
                "{what}: {} keys carry no expiry, so `rotate_before_expiry` never fires",
                p.kind.as_str()
            ),
            "set max_age (measured from the provider's creation time)",
        );
    }
    let grace_written = raw
        .grace_period
        .as_ref()
        .and_then(|g| duration(cx, g, "grace_period"));
    let grace_period = grace_written.unwrap_or(DEFAULT_GRACE);
    if let (Some(age), Some(age_raw)) = (max_age, &raw.max_age) {
        match (&raw.grace_period, grace_written) {
            (Some(g), Some(grace)) if grace > age => cx.d.error_hint(
                g.span(),
                format!(
                    "grace_period ({}) is longer than max_age ({})",
                    g.get_ref(),
                    age_raw.get_ref()
                ),
                "the old key would outlive its own age limit; shorten grace_period or raise max_age",
            ),
            (None, _) if grace_period > age => cx.d.error_hint(
                age_raw.span(),
                format!(
                    "max_age ({}) is shorter than the default grace_period (24h)",
                    age_raw.get_ref()
                ),
                "the old key would outlive its own age limit; set a shorter grace_period or raise max_age",
            ),
            _ => {}
        }
        // The next key is due `lead` before its expiry; with keys living
        // about `max_age`, an old key in grace that long would outlive the
        // next key's own lead (DESIGN §3: its grace is then cut short).
        if let Some(Lead::Absolute(l)) = lead
            && l < age
            && grace_period <= age
            && grace_period >= age - l
        {
            let at = raw
                .grace_period
                .as_ref()
                .map(|g| g.span())
                .unwrap_or_else(|| age_raw.span());
            cx.d.error_hint(
                at,
                format!(
                    "grace_period ({}) is not shorter than max_age − rotate_before_expiry ({})",
                    humantime::format_duration(grace_period),
                    humantime::format_duration(age - l)
                ),
                "the old key would still be in grace when its replacement enters its own lead; shorten grace_period",
            );
        }
    }
    let mut sinks = Vec::new();
    for s in &raw.sinks {
        let sname = s.get_ref();
        if refs.sinks.contains_key(sname) {
            if sinks.contains(sname) {
                cx.d.warn_hint(
                    s.span(),
                    format!("sink {sname:?} is listed twice"),
                    "remove the duplicate",
                );
            } else {
                sinks.push(sname.clone());
            }
        } else if !refs.broken.contains(&format!("sink:{sname}")) {
            let hint = match did_you_mean(sname, refs.sink_names.iter().map(|s| s.as_str())) {
                Some(m) => format!("did you mean \"{m}\"?"),
                None if refs.sink_names.is_empty() => {
                    "define it as a [sinks.NAME] section".to_string()
                }
                None => format!("defined sinks: {}", refs.sink_names.join(", ")),
            };
            cx.d.error_hint(
                s.span(),
                format!("{what} names undefined sink {sname:?}"),
                hint,
            );
        }
    }
    sink_fit(cx, &raw, provider, refs);
    // A key taken out after a type error (see `item`) was reported already.
    let dropped = |key: &str| {
        cx.dropped
            .contains(&("[[policy]]".to_string(), key.to_string()))
    };
    if mode == Mode::Rotate && raw.sinks.is_empty() && !dropped("sinks") {
        cx.d.error_hint(
            raw.name.span(),
            format!("{what} rotates keys but publishes them nowhere (no `sinks`)"),
            "list at least one sink, or set mode = \"observe\"",
        );
    }
    let tmpl_text = raw
        .name_template
        .as_ref()
        .map(|t| t.get_ref().as_str())
        .unwrap_or(DEFAULT_NAME_TEMPLATE);
    let tmpl_span = raw
        .name_template
        .as_ref()
        .map(|t| t.span())
        .unwrap_or(raw.name.span());
    let name_template = match NameTemplate::parse(tmpl_text, &name) {
        Ok(t) => Some(t),
        Err(e) => {
            cx.d.error_hint(
                tmpl_span.clone(),
                e,
                "name templates use {lineage} and {rotation} (both required), {date} and {policy}",
            );
            None
        }
    };
    let bootstrap = raw.bootstrap.as_ref().and_then(|b| match b.get_ref() {
        RawBootstrap::Flag(true) => Some(name.clone()),
        RawBootstrap::Flag(false) => None,
        RawBootstrap::Lineage(l) if l.is_empty() => {
            cx.d.error_hint(
                b.span(),
                "`bootstrap` lineage is empty",
                "write bootstrap = true or bootstrap = \"lineage-name\"",
            );
            None
        }
        RawBootstrap::Lineage(l) => Some(l.clone()),
    });
    if let (Some(t), Some(m)) = (&name_template, &matcher) {
        let sample_lineage = sample_for_glob(&glob_text);
        let when = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .map(|d| d.to_utc())
            .unwrap_or_default();
        let rendered = t.render(&sample_lineage, &name, "00000000", 1, when);
        if !m.is_match(&rendered) {
            cx.d.error_hint(tmpl_span.clone(), format!("new key names from template {tmpl_text:?} (e.g. {rendered:?}) would not match `match = {glob_text:?}`"), "rekey would lose track of the keys it creates; make the template's output match the glob, e.g. \"{lineage}-{date}-{rotation}\" with match = \"app-*\"");
        }
        if let (Some(l), Some(b)) = (&bootstrap, &raw.bootstrap) {
            let first = t.render(l, &name, "00000000", 1, when);
            if !m.is_match(&first) {
                cx.d.error_hint(b.span(), format!("bootstrap lineage {l:?} gives key names like {first:?}, which do not match `match = {glob_text:?}`"), "choose a lineage name the glob matches");
            }
        }
    }
    let create: serde_json::Map<String, serde_json::Value> = match &raw.create {
        None => serde_json::Map::new(),
        Some(t) => match serde_json::to_value(t.get_ref()) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => {
                cx.d.error_hint(
                    t.span(),
                    "`create` must be a table of provider parameters",
                    "write create = { action = \"read\" } (OceanBase) or create = { usage_plans = [\"…\"] } (Tencent)",
                );
                serde_json::Map::new()
            }
        },
    };
    if let Some(p) = provider {
        let create_span = raw
            .create
            .as_ref()
            .map(|c| c.span())
            .unwrap_or(raw.name.span());
        if let Some(spec) = crate::provider::spec(p.kind.as_str()) {
            let allowed = spec.create_keys();
            let reserved = spec.reserved_create_keys();
            for (key, message, hint) in reserved {
                if create.contains_key(*key) {
                    cx.d.error_hint(create_span.clone(), *message, *hint);
                }
            }
            let mut unknown_parameter = false;
            for k in create.keys() {
                // A reserved key was reported above, with its reason.
                let reported = reserved.iter().any(|(r, _, _)| r == k);
                if !allowed.contains(&k.as_str()) && !reported {
                    unknown_parameter = true;
                    let hint = match did_you_mean(k, allowed.iter().copied()) {
                        Some(m) => format!("did you mean `{m}`?"),
                        None => format!(
                            "{} create parameters: {}",
                            p.kind.as_str(),
                            allowed.join(", ")
                        ),
                    };
                    cx.d.error_hint(
                        create_span.clone(),
                        format!(
                            "unknown create parameter `{k}` for provider kind {}",
                            p.kind.as_str()
                        ),
                        hint,
                    );
                }
            }
            let mut pcx = ProviderCx {
                cx,
                what: what.clone(),
                kind: spec.kind(),
                at: create_span.clone(),
                own: None,
            };
            spec.check_create(
                &mut pcx,
                &create,
                create_span,
                mode == Mode::Rotate,
                unknown_parameter,
            );
        }
    }
    let max_attempts = match &raw.max_attempts {
        None => 5,
        Some(n) if (1..=100).contains(n.get_ref()) => *n.get_ref() as u32,
        Some(n) => {
            cx.d.error_hint(
                n.span(),
                format!("max_attempts = {} is out of range", n.get_ref()),
                "use 1 to 100",
            );
            5
        }
    };
    let failing_after_failures = match &raw.failing_after_failures {
        None => crate::rotation::health::FAILING_AFTER,
        Some(n) if (1..=100).contains(n.get_ref()) => *n.get_ref() as u32,
        Some(n) => {
            cx.d.error_hint(
                n.span(),
                format!("failing_after_failures = {} is out of range", n.get_ref()),
                "use 1 to 100 (failures of one step before the lineage reports `failing`)",
            );
            crate::rotation::health::FAILING_AFTER
        }
    };
    if let Some(n) = &raw.failing_after_failures
        && (1..=100).contains(n.get_ref())
        && *n.get_ref() as u32 > max_attempts
    {
        cx.d.warn_hint(
            n.span(),
            format!(
                "failing_after_failures = {} is more than max_attempts = {max_attempts}",
                n.get_ref()
            ),
            "a rotation gives up after max_attempts and reports `failing` from then on; lower failing_after_failures or raise max_attempts",
        );
    }
    let stuck_after = duration_or(
        cx,
        &raw.stuck_after,
        "stuck_after",
        crate::rotation::health::STUCK_AFTER,
    );
    if let Some(s) = &raw.stuck_after
        && stuck_after.is_zero()
    {
        cx.d.error_hint(
            s.span(),
            "stuck_after must be longer than 0s",
            "how much longer than grace_period a rotation may take before it is `rotation_stuck`, e.g. \"1h\"",
        );
    }
    let expiring_warnings = expiring_warnings(cx, raw.expiring_warnings.as_ref());
    let _ = span;
    Some(PolicyConfig {
        name,
        provider: provider_name.clone(),
        mode,
        match_glob: glob_text,
        matcher: matcher?,
        schedule: schedule?,
        rotate_before_expiry: lead,
        max_age,
        grace_period,
        sinks,
        name_template: name_template?,
        bootstrap,
        create,
        max_attempts,
        failing_after_failures,
        stuck_after,
        expiring_warnings,
    })
}

/// `expiring_warnings = ["7d", "1d", "1h"]`: each a duration longer than
/// 0s, no two alike as rekey prints them (the label an event carries),
/// sorted longest first. Missing: the default; empty: no warnings.
fn expiring_warnings(cx: &mut Ctx, raw: Option<&Spanned<Vec<Spanned<String>>>>) -> Vec<Duration> {
    let Some(list) = raw else {
        return DEFAULT_EXPIRING_WARNINGS
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect();
    };
    let mut out: Vec<Duration> = Vec::new();
    for w in list.get_ref() {
        let Some(d) = duration(cx, w, "expiring_warnings") else {
            continue;
        };
        if d.is_zero() {
            cx.d.error_hint(
                w.span(),
                "an `expiring_warnings` threshold of 0s never warns in time",
                "give how long before expiry to warn, e.g. \"1d\"",
            );
        } else if let Some(same) = out
            .iter()
            .find(|o| crate::clock::human(**o) == crate::clock::human(d))
        {
            cx.d.error_hint(
                w.span(),
                format!(
                    "`expiring_warnings` threshold {:?} is the same as {} as rekey prints it (the event's `threshold` label)",
                    w.get_ref(),
                    crate::clock::human(*same)
                ),
                "thresholds must differ in days/hours or hours/minutes; remove one",
            );
        } else {
            out.push(d);
        }
    }
    out.sort_by(|a, b| b.cmp(a));
    out
}

/// How a policy's sinks fit its provider: `env_names` keys name the
/// provider's secret fields.
fn sink_fit(cx: &mut Ctx, raw: &RawPolicy, provider: Option<&ProviderConfig>, refs: &Refs) {
    for s in &raw.sinks {
        let Some(sink) = refs.sinks.get(s.get_ref()) else {
            continue;
        };
        // A fixed target over a wildcard glob is warned about in
        // `ownership` (with the cross-policy target checks).
        let (SinkKind::File(f), Some(p)) = (&sink.kind, provider) else {
            continue;
        };
        let Some(fields) = p.kind.spec().secret_fields() else {
            continue;
        };
        for field in f.env_names.keys() {
            if fields.contains(&field.as_str()) {
                continue;
            }
            let hint = match did_you_mean(field, fields.iter().copied()) {
                Some(m) => format!("did you mean `{m}`?"),
                None => format!("{} keys have: {}", p.kind.as_str(), fields.join(", ")),
            };
            let at = cx
                .origins
                .get(&format!("sinks.{}.env_names", s.get_ref()))
                .copied();
            let message = format!(
                "`env_names` of [sinks.{}] names field `{field}`, which {} keys (provider {:?}, policy `{}`) do not have",
                s.get_ref(),
                p.kind.as_str(),
                p.name,
                raw.name.get_ref()
            );
            match at {
                Some(o) => cx.d.items.push(Diagnostic {
                    severity: super::Severity::Error,
                    file: cx.origin_file(),
                    line: o.line,
                    col: o.col,
                    message,
                    hint: Some(hint),
                }),
                None => cx.d.error_hint(s.span(), message, hint),
            }
        }
    }
}

/// The I/O step: every secret reference resolves, every named file exists.
fn resolve_refs(cx: &mut Ctx) {
    for p in std::mem::take(&mut cx.pending) {
        match p.check {
            PendingCheck::Secret(r, form) => {
                let value = match r.resolve(cx.env) {
                    Ok(v) => v,
                    Err(e) => {
                        unresolved(cx, &p.span, &p.what, &r, &e.to_string());
                        continue;
                    }
                };
                if let Err(why) = form.check(&value) {
                    cx.d.error_hint(
                        p.span.clone(),
                        format!("{} ({r}) is not usable: {why}", p.what),
                        form.hint(),
                    );
                }
                if let SecretRef::File(path) = &r
                    && let Some(mode) = super::others_may_read(path)
                {
                    cx.d.warn_hint(
                        p.span,
                        format!(
                            "{} is in {}, which other users can read (mode {mode:04o})",
                            p.what,
                            path.display()
                        ),
                        format!("chmod o-rwx {}", path.display()),
                    );
                }
            }
            PendingCheck::File(path) => {
                if !path.is_file() {
                    cx.d.error_hint(
                        p.span,
                        format!("{} {} does not exist", p.what, path.display()),
                        "give the path of a PEM file",
                    );
                }
            }
        }
    }
}

fn unresolved(cx: &mut Ctx, span: &Range<usize>, what: &str, r: &SecretRef, e: &str) {
    let hint = match r {
        SecretRef::Env(_) => {
            "export the variable (systemd: Environment= or, better, LoadCredential=)"
        }
        SecretRef::File(_) => "create the file (mode 0600) or fix the path",
        SecretRef::Credential(_) => {
            "add LoadCredential=NAME:/path to the unit; by hand, pass --credentials-dir DIR (or set $CREDENTIALS_DIRECTORY), or use `rekey check --no-secrets`"
        }
        SecretRef::Literal(_) => "",
    };
    cx.d.error_hint(
        span.clone(),
        format!("{what} cannot be resolved: {e}"),
        hint,
    );
}
