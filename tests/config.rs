//! `rekey check` and config loading (issue #2): every rule reports its exact
//! place, message and hint; valid configs (the shipped examples included)
//! load with their defaults; secret references resolve; no secret value
//! reaches a `Debug` string or a diagnostic; the `check` command's exit
//! codes and output.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rekey::config::secret_ref::{Env, ResolveError};
use rekey::config::{
    self, Config, Diagnostic, FileFormat, Lead, ListenAddr, Mode, ProviderKind, SecretRef,
    Severity, SinkKind,
};

use crate::support::{hermetic_env, repo_path, write_file};

/// A small valid config; each table case changes it in one place. Line
/// numbers in the expectations below count from here.
const BASE: &str = r#"[daemon]
state = "/var/lib/rekey/state.db"

[providers.ob]
kind = "oceanbase"
org_id = "org-1"
project_id = "proj-1"
access_key_id = { env = "OB_AK" }
access_key_secret = { env = "OB_SK" }

[providers.gw]
kind = "tencent-apigateway"
region = "ap-guangzhou"
secret_id = { env = "TC_SECRET_ID" }
secret_key = { env = "TC_SECRET_KEY" }

[providers.nes]
kind = "huawei-nes"
project_id = "0123456789abcdef0123456789abcdef"
auth = { token = { env = "HW_TOKEN" } }

[sinks.app-env]
kind = "file"
path = "/etc/keys/{lineage}.env"

[sinks.vault]
kind = "vault"
address = "https://vault.internal:8200"
path = "maas/{lineage}"
auth = { token = { credential = "vault-token" } }

[sinks.deploy-hook]
kind = "webhook"
url = "https://deploy.internal/keys"
secret = { env = "DEPLOY_WHSEC" }

[notify.ops]
url = "https://hooks.internal/rekey"
secret = { env = "OPS_WHSEC" }

[[policy]]
name = "maas-prod"
provider = "ob"
match = "app-*"
schedule = "0 */15 * * * *"
rotate_before_expiry = "7d"
sinks = ["app-env", "vault"]
create = { action = "read" }

[[policy]]
name = "gateway"
provider = "gw"
match = "gw-*"
schedule = "0 0 * * * *"
max_age = "30d"
grace_period = "2h"
sinks = ["deploy-hook"]
"#;

/// Every secret `BASE` references, resolvable: env vars plus a credentials
/// directory holding `vault-token`. Keep the directory alive while using it.
struct BaseEnv {
    creds: tempfile::TempDir,
}

impl BaseEnv {
    fn new() -> Self {
        let creds = tempfile::tempdir().expect("tempdir");
        write_file(creds.path(), "vault-token", "hvs.test-token\n");
        BaseEnv { creds }
    }

    fn env(&self) -> Env {
        let mut env = hermetic_env(&[
            ("OB_AK", "ob-ak"),
            ("OB_SK", "ob-sk"),
            ("TC_SECRET_ID", "tc-id"),
            ("TC_SECRET_KEY", "tc-key"),
            ("HW_TOKEN", "hw-token"),
            ("DEPLOY_WHSEC", "whsec_ZGVwbG95"),
            ("OPS_WHSEC", "whsec_b3Bz"),
        ]);
        env.credentials_dir = Some(self.creds.path().to_path_buf());
        env
    }
}

/// `BASE` with each `(from, to)` applied; `from` must occur exactly once,
/// so a case cannot silently stop applying when `BASE` changes.
fn with(edits: &[(&str, &str)]) -> String {
    let mut src = BASE.to_string();
    for (from, to) in edits {
        assert_eq!(
            src.matches(from).count(),
            1,
            "edit target {from:?} must occur exactly once"
        );
        src = src.replacen(from, to, 1);
    }
    src
}

fn load(src: &str, env: &Env) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
    config::load_str(Path::new("rekey.toml"), src, env)
}

/// Every diagnostic of a load, displayed, valid or not.
fn displayed(result: &Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>>) -> Vec<String> {
    let diags = match result {
        Ok((_, warnings)) => warnings,
        Err(diags) => diags,
    };
    diags.iter().map(|d| d.to_string()).collect()
}

/// Which environment a case loads with.
#[derive(Clone, Copy)]
enum CaseEnv {
    /// Everything `BASE` references resolves.
    Base,
    /// As `Base`, without `$CREDENTIALS_DIRECTORY`.
    NoCredentialsDir,
}

struct Case {
    rule: &'static str,
    src: String,
    env: CaseEnv,
    /// The `Display` of every diagnostic, in order; `{creds}` stands for the
    /// credentials directory.
    expected: Vec<&'static str>,
}

fn case(rule: &'static str, src: String, expected: &[&'static str]) -> Case {
    Case {
        rule,
        src,
        env: CaseEnv::Base,
        expected: expected.to_vec(),
    }
}

fn cases() -> Vec<Case> {
    vec![
        case(
            "unknown top-level key",
            format!("{BASE}\n[deamon]\n"),
            &[
                "rekey.toml:59:2: error: unknown top-level key `deamon`\n  hint: did you mean `daemon`?",
            ],
        ),
        case(
            "unknown top-level key without a near miss",
            format!("zzz = 1\n{BASE}"),
            &[
                "rekey.toml:1:1: error: unknown top-level key `zzz`\n  hint: top-level sections are: daemon, providers, sinks, notify, policy",
            ],
        ),
        case(
            "unknown key in [daemon]",
            with(&[("state = ", "listne = \"127.0.0.1:9477\"\nstate = ")]),
            &[
                "rekey.toml:2:1: error: unknown key `listne` in [daemon]\n  hint: did you mean `listen`?",
            ],
        ),
        case(
            "unknown key in a provider",
            with(&[("org_id = \"org-1\"", "orgid = \"org-1\"")]),
            &[
                "rekey.toml:6:1: error: unknown key `orgid` in [providers.ob]\n  hint: did you mean `org_id`?",
            ],
        ),
        case(
            "unknown key in a sink",
            with(&[(
                "path = \"/etc/keys/{lineage}.env\"",
                "path = \"/etc/keys/{lineage}.env\"\nformt = \"env\"",
            )]),
            &[
                "rekey.toml:25:1: error: unknown key `formt` in [sinks.app-env]\n  hint: did you mean `format`?",
            ],
        ),
        case(
            "unknown key in a notify target",
            with(&[(
                "secret = { env = \"OPS_WHSEC\" }",
                "secret = { env = \"OPS_WHSEC\" }\nevent = [\"key.expiring\"]",
            )]),
            &[
                "rekey.toml:40:1: error: unknown key `event` in [notify.ops]\n  hint: did you mean `events`?",
            ],
        ),
        case(
            "unknown key in a policy",
            with(&[("grace_period = \"2h\"", "grace_periode = \"2h\"")]),
            &[
                "rekey.toml:56:1: error: unknown key `grace_periode` in [[policy]]\n  hint: did you mean `grace_period`?",
            ],
        ),
        case(
            "unknown key inside a secret reference",
            with(&[("{ env = \"OB_AK\" }", "{ envv = \"OB_AK\" }")]),
            &[
                "rekey.toml:8:17: error: unknown key `envv` in [providers.ob]\n  hint: did you mean `env`?",
            ],
        ),
        case(
            "unknown key inside an auth table",
            with(&[(
                "{ token = { credential = \"vault-token\" } }",
                "{ tokn = { credential = \"vault-token\" } }",
            )]),
            &[
                "rekey.toml:30:10: error: unknown key `tokn` in [sinks.vault]\n  hint: did you mean `token`?",
            ],
        ),
        case(
            "missing required key (serde)",
            with(&[("provider = \"ob\"\n", "")]),
            &[
                "rekey.toml:41:1: error: [[policy]] is missing required key `provider`\n  hint: add `provider = …` to this section",
            ],
        ),
        case(
            "missing required key of a provider kind",
            with(&[("org_id = \"org-1\"\n", "")]),
            &[
                "rekey.toml:4:12: error: [providers.ob] is missing required key `org_id`\n  hint: add `org_id = …`",
            ],
        ),
        case(
            "key that does not apply to the kind",
            with(&[(
                "region = \"ap-guangzhou\"",
                "region = \"ap-guangzhou\"\norg_id = \"org-1\"",
            )]),
            &[
                "rekey.toml:14:10: error: key `org_id` does not apply to tencent-apigateway providers\n  hint: remove it, or check the `kind`",
            ],
        ),
        case(
            "unknown key of a provider kind, suggested among that kind's keys",
            with(&[(
                "region = \"ap-guangzhou\"",
                "region = \"ap-guangzhou\"\nsecretid = \"x\"",
            )]),
            &[
                "rekey.toml:14:1: error: unknown key `secretid` in [providers.gw]\n  hint: did you mean `secret_id`?",
            ],
        ),
        case(
            "unknown key of a provider near a key every kind has",
            with(&[(
                "region = \"ap-guangzhou\"",
                "region = \"ap-guangzhou\"\nendpiont = \"https://x\"",
            )]),
            &[
                "rekey.toml:14:1: error: unknown key `endpiont` in [providers.gw]\n  hint: did you mean `endpoint`?",
            ],
        ),
        case(
            "unknown key of a provider without a near miss lists the kind's keys",
            with(&[(
                "region = \"ap-guangzhou\"",
                "region = \"ap-guangzhou\"\nzzz = 1",
            )]),
            &[
                "rekey.toml:14:1: error: unknown key `zzz` in [providers.gw]\n  hint: known keys here: kind, endpoint, rate_limit, ca_file, timeout, region, regions, secret_id, secret_key",
            ],
        ),
        case(
            "a key of a provider kind with a value of the wrong type",
            with(&[("region = \"ap-guangzhou\"", "region = 7")]),
            &[
                "rekey.toml:13:10: error: `region` in [providers.gw]: found a number, expected a string\n  hint: see rekey.example.toml for the form each key takes",
            ],
        ),
        case(
            "a Tencent usage-plan region that is not a region name",
            with(&[(
                "region = \"ap-guangzhou\"",
                "region = \"ap-guangzhou\"\nregions = [\"ap shanghai\"]",
            )]),
            &[
                "rekey.toml:14:11: error: region \"ap shanghai\" is not a Tencent Cloud region name\n  hint: write region names like \"ap-guangzhou\"",
            ],
        ),
        case(
            "a raw field named on a file sink that is not raw",
            with(&[(
                "path = \"/etc/keys/{lineage}.env\"",
                "path = \"/etc/keys/{lineage}.env\"\nfield = \"credential_zip\"",
            )]),
            &[
                "rekey.toml:25:9: error: `field` applies to format = \"raw\" only\n  hint: env and json files hold every field; remove `field` or set format = \"raw\"",
            ],
        ),
        case(
            "unknown provider kind",
            with(&[("kind = \"oceanbase\"", "kind = \"oceanbse\"")]),
            &[
                "rekey.toml:5:8: error: unknown provider kind \"oceanbse\"\n  hint: did you mean \"oceanbase\"?",
            ],
        ),
        case(
            "unknown sink kind",
            with(&[("kind = \"file\"", "kind = \"s3\"")]),
            &[
                "rekey.toml:23:8: error: unknown sink kind \"s3\"\n  hint: sink kinds are: file, webhook, vault",
            ],
        ),
        case(
            "undefined provider, with a suggestion",
            with(&[("provider = \"ob\"", "provider = \"obb\"")]),
            &[
                "rekey.toml:43:12: error: policy `maas-prod` names undefined provider \"obb\"\n  hint: did you mean \"ob\"?",
            ],
        ),
        case(
            "undefined provider, without a suggestion",
            with(&[("provider = \"ob\"", "provider = \"aliyun\"")]),
            &[
                "rekey.toml:43:12: error: policy `maas-prod` names undefined provider \"aliyun\"\n  hint: defined providers: gw, nes, ob",
            ],
        ),
        case(
            "undefined sink",
            with(&[(
                "sinks = [\"app-env\", \"vault\"]",
                "sinks = [\"app-env\", \"s3\"]",
            )]),
            &[
                "rekey.toml:47:21: error: policy `maas-prod` names undefined sink \"s3\"\n  hint: defined sinks: app-env, deploy-hook, vault",
            ],
        ),
        case(
            "undefined sink, with a suggestion",
            with(&[("sinks = [\"deploy-hook\"]", "sinks = [\"deploy-hok\"]")]),
            &[
                "rekey.toml:57:10: error: policy `gateway` names undefined sink \"deploy-hok\"\n  hint: did you mean \"deploy-hook\"?",
            ],
        ),
        case(
            "name template without {lineage}",
            with(&[(
                "create = ",
                "name_template = \"app-{date}-{rotation}\"\ncreate = ",
            )]),
            &[
                "rekey.toml:48:17: error: name template \"app-{date}-{rotation}\" must contain {lineage}\n  hint: name templates use {lineage} and {rotation} (both required), {date} and {policy}",
            ],
        ),
        case(
            "name template without {rotation}",
            with(&[(
                "create = ",
                "name_template = \"{lineage}-{date}\"\ncreate = ",
            )]),
            &[
                "rekey.toml:48:17: error: name template \"{lineage}-{date}\" must contain {rotation} (every create attempt needs a unique name)\n  hint: name templates use {lineage} and {rotation} (both required), {date} and {policy}",
            ],
        ),
        case(
            "name template whose output does not match the glob",
            with(&[(
                "create = ",
                "name_template = \"key-{lineage}-{rotation}\"\ncreate = ",
            )]),
            &[
                "rekey.toml:48:17: error: new key names from template \"key-{lineage}-{rotation}\" (e.g. \"key-app-x-r00000000-1\") would not match `match = \"app-*\"`\n  hint: rekey would lose track of the keys it creates; make the template's output match the glob, e.g. \"{lineage}-{date}-{rotation}\" with match = \"app-*\"",
            ],
        ),
        case(
            "unknown placeholder in a file sink path",
            with(&[("/etc/keys/{lineage}.env", "/etc/keys/{lineage}-{date}.env")]),
            &[
                "rekey.toml:24:8: error: `path`: unknown placeholder {date} in \"/etc/keys/{lineage}-{date}.env\"; allowed here: {lineage}, {policy}\n  hint: sink targets may hold {lineage} and {policy}",
            ],
        ),
        case(
            "unknown placeholder in a Vault path",
            with(&[("path = \"maas/{lineage}\"", "path = \"maas/{name}\"")]),
            &[
                "rekey.toml:29:8: error: `path`: unknown placeholder {name} in \"maas/{name}\"; allowed here: {lineage}, {policy}\n  hint: sink targets may hold {lineage} and {policy}",
            ],
        ),
        case(
            "neither rotate_before_expiry nor max_age",
            with(&[("rotate_before_expiry = \"7d\"\n", "")]),
            &[
                "rekey.toml:42:8: error: policy `maas-prod` has neither `rotate_before_expiry` nor `max_age`\n  hint: set rotate_before_expiry = \"7d\" (or \"33%\"), max_age = \"30d\", or both",
            ],
        ),
        case(
            "rotate_before_expiry alone on a Tencent provider",
            with(&[("max_age = \"30d\"", "rotate_before_expiry = \"7d\"")]),
            &[
                "rekey.toml:55:24: error: policy `gateway`: tencent-apigateway keys carry no expiry, so `rotate_before_expiry` never fires\n  hint: set max_age (measured from the provider's creation time)",
            ],
        ),
        case(
            "rotate_before_expiry alone on a Huawei provider",
            with(&[
                ("provider = \"gw\"", "provider = \"nes\""),
                ("max_age = \"30d\"", "rotate_before_expiry = \"7d\""),
            ]),
            &[
                "rekey.toml:55:24: error: policy `gateway`: huawei-nes keys carry no expiry, so `rotate_before_expiry` never fires\n  hint: set max_age (measured from the provider's creation time)",
            ],
        ),
        case(
            "grace_period longer than max_age",
            with(&[("grace_period = \"2h\"", "grace_period = \"31d\"")]),
            &[
                "rekey.toml:56:16: error: grace_period (31d) is longer than max_age (30d)\n  hint: the old key would outlive its own age limit; shorten grace_period or raise max_age",
            ],
        ),
        case(
            "grace_period outliving max_age minus the lead",
            with(&[(
                "rotate_before_expiry = \"7d\"\nsinks = [\"app-env\", \"vault\"]",
                "rotate_before_expiry = \"7d\"\nmax_age = \"8d\"\nsinks = [\"app-env\", \"vault\"]",
            )]),
            &[
                "rekey.toml:47:11: error: grace_period (1day) is not shorter than max_age − rotate_before_expiry (1day)\n  hint: the old key would still be in grace when its replacement enters its own lead; shorten grace_period",
            ],
        ),
        case(
            "failing_after_failures out of range",
            with(&[(
                "grace_period = \"2h\"",
                "grace_period = \"2h\"\nfailing_after_failures = 0",
            )]),
            &[
                "rekey.toml:57:26: error: failing_after_failures = 0 is out of range\n  hint: use 1 to 100 (failures of one step before the lineage reports `failing`)",
            ],
        ),
        case(
            "failing_after_failures above max_attempts",
            with(&[(
                "grace_period = \"2h\"",
                "grace_period = \"2h\"\nmax_attempts = 4\nfailing_after_failures = 6",
            )]),
            &[
                "rekey.toml:58:26: warning: failing_after_failures = 6 is more than max_attempts = 4\n  hint: a rotation gives up after max_attempts and reports `failing` from then on; lower failing_after_failures or raise max_attempts",
            ],
        ),
        case(
            "stuck_after of zero",
            with(&[(
                "grace_period = \"2h\"",
                "grace_period = \"2h\"\nstuck_after = \"0s\"",
            )]),
            &[
                "rekey.toml:57:15: error: stuck_after must be longer than 0s\n  hint: how much longer than grace_period a rotation may take before it is `rotation_stuck`, e.g. \"1h\"",
            ],
        ),
        case(
            "expiring_warnings that print alike",
            with(&[(
                "grace_period = \"2h\"",
                "grace_period = \"2h\"\nexpiring_warnings = [\"1d\", \"24h\", \"soon\"]",
            )]),
            &[
                "rekey.toml:57:28: error: `expiring_warnings` threshold \"24h\" is the same as 1d as rekey prints it (the event's `threshold` label)\n  hint: thresholds must differ in days/hours or hours/minutes; remove one",
                "rekey.toml:57:35: error: invalid duration \"soon\" for `expiring_warnings`: expected number at 0\n  hint: durations look like 90s, 15m, 24h or 7d",
            ],
        ),
        case(
            "bad grace_period (not also compared with max_age)",
            with(&[("grace_period = \"2h\"", "grace_period = \"soon\"")]),
            &[
                "rekey.toml:56:16: error: invalid duration \"soon\" for `grace_period`: expected number at 0\n  hint: durations look like 90s, 15m, 24h or 7d",
            ],
        ),
        case(
            "the default grace_period longer than max_age",
            with(&[(
                "max_age = \"30d\"\ngrace_period = \"2h\"\n",
                "max_age = \"12h\"\n",
            )]),
            &[
                "rekey.toml:55:11: error: max_age (12h) is shorter than the default grace_period (24h)\n  hint: the old key would outlive its own age limit; set a shorter grace_period or raise max_age",
            ],
        ),
        case(
            "max_age of zero",
            with(&[("max_age = \"30d\"", "max_age = \"0s\"")]),
            &[
                "rekey.toml:55:11: error: max_age = \"0s\" would replace every key on every check\n  hint: give the age after which a key is replaced, e.g. max_age = \"30d\"",
            ],
        ),
        case(
            "columns count characters, not bytes",
            with(&[(
                "sinks = [\"app-env\", \"vault\"]",
                "sinks = [\"app-env\", \"clés\", \"s3\"]",
            )]),
            &[
                "rekey.toml:47:21: error: policy `maas-prod` names undefined sink \"clés\"\n  hint: defined sinks: app-env, deploy-hook, vault",
                "rekey.toml:47:29: error: policy `maas-prod` names undefined sink \"s3\"\n  hint: defined sinks: app-env, deploy-hook, vault",
            ],
        ),
        case(
            "Huawei project id of 31 characters",
            with(&[(
                "0123456789abcdef0123456789abcdef",
                "0123456789abcdef0123456789abcde",
            )]),
            &[
                "rekey.toml:19:14: error: Huawei project_id must be exactly 32 characters; this one has 31\n  hint: copy the project ID from the console's My Credentials → Projects page",
            ],
        ),
        case(
            "env var that is not set",
            with(&[("{ env = \"OB_AK\" }", "{ env = \"OB_AK_PROD\" }")]),
            &[
                "rekey.toml:8:17: error: `access_key_id` cannot be resolved: environment variable OB_AK_PROD is not set\n  hint: export the variable (systemd: Environment= or, better, LoadCredential=)",
            ],
        ),
        Case {
            env: CaseEnv::NoCredentialsDir,
            ..case(
                "credential without $CREDENTIALS_DIRECTORY",
                BASE.to_string(),
                &[
                    "rekey.toml:30:18: error: `auth.token` cannot be resolved: credential vault-token requested but $CREDENTIALS_DIRECTORY is not set (is LoadCredential= in the unit?)\n  hint: add LoadCredential=NAME:/path to the unit; by hand, pass --credentials-dir DIR (or set $CREDENTIALS_DIRECTORY), or use `rekey check --no-secrets`",
                ],
            )
        },
        case(
            "credential missing from $CREDENTIALS_DIRECTORY",
            with(&[("{ env = \"OB_SK\" }", "{ credential = \"ob-sk\" }")]),
            &[
                "rekey.toml:9:21: error: `access_key_secret` cannot be resolved: credential ob-sk not found in {creds}\n  hint: add LoadCredential=NAME:/path to the unit; by hand, pass --credentials-dir DIR (or set $CREDENTIALS_DIRECTORY), or use `rekey check --no-secrets`",
            ],
        ),
        case(
            "secret file that does not exist",
            with(&[(
                "{ env = \"OB_AK\" }",
                "{ file = \"/nonexistent/rekey/ob-ak\" }",
            )]),
            &[
                "rekey.toml:8:17: error: `access_key_id` cannot be resolved: cannot read secret file /nonexistent/rekey/ob-ak: no such file or directory\n  hint: create the file (mode 0600) or fix the path",
            ],
        ),
        case(
            "secret reference naming two sources",
            with(&[(
                "{ env = \"OB_AK\" }",
                "{ env = \"OB_AK\", file = \"/etc/rekey/ob-ak\" }",
            )]),
            &[
                "rekey.toml:8:17: error: `access_key_id`: a secret reference takes exactly one of env, file, credential\n  hint: write { env = \"NAME\" }, { file = \"/path\" } or { credential = \"name\" }",
            ],
        ),
        case(
            "literal secret (a warning, accepted)",
            with(&[("{ env = \"OB_AK\" }", "\"AKID-literal\"")]),
            &[
                "rekey.toml:8:17: warning: `access_key_id` is a literal secret in the config file\n  hint: use { env = \"NAME\" }, { file = \"/path\" } or { credential = \"name\" } (systemd LoadCredential=)",
            ],
        ),
        case(
            "cron line with the wrong number of fields",
            with(&[("0 */15 * * * *", "*/15 * * *")]),
            &[
                "rekey.toml:45:12: error: invalid schedule \"*/15 * * *\": cron line has 4 fields; expected 6 (sec min hour dom mon dow), 7 (with year) or a classic 5\n  hint: six fields with seconds, e.g. \"0 */15 * * * *\" (every 15 minutes); a classic five-field line means second 0",
            ],
        ),
        case(
            "cron value out of range",
            with(&[("0 */15 * * * *", "0 */15 25 * * *")]),
            &[
                "rekey.toml:45:12: error: invalid schedule \"0 */15 25 * * *\": hour 25 is out of range (0-23)\n  hint: six fields with seconds, e.g. \"0 */15 * * * *\" (every 15 minutes); a classic five-field line means second 0",
            ],
        ),
        case(
            "bad duration",
            with(&[(
                "rotate_before_expiry = \"7d\"",
                "rotate_before_expiry = \"7dd\"",
            )]),
            &[
                "rekey.toml:46:24: error: invalid duration \"7dd\" for `rotate_before_expiry`: unknown time unit \"dd\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)\n  hint: durations look like 90s, 15m, 24h or 7d",
            ],
        ),
        case(
            "bad percentage",
            with(&[(
                "rotate_before_expiry = \"7d\"",
                "rotate_before_expiry = \"150%\"",
            )]),
            &[
                "rekey.toml:46:24: error: invalid share \"150%\" for `rotate_before_expiry`\n  hint: write a percentage of the key's lifetime between 0 and 100, e.g. \"33%\"",
            ],
        ),
        case(
            "duplicate policy names",
            with(&[("name = \"gateway\"", "name = \"maas-prod\"")]),
            &[
                "rekey.toml:51:8: error: duplicate policy name `maas-prod`\n  hint: the first policy with this name is at line 42; policy names must be unique",
            ],
        ),
        case(
            "bad rate limit",
            with(&[(
                "region = \"ap-guangzhou\"",
                "region = \"ap-guangzhou\"\nrate_limit = \"20 per second\"",
            )]),
            &[
                "rekey.toml:14:14: error: invalid rate limit \"20 per second\"\n  hint: write requests per unit, like \"20/s\", \"600/min\" or \"1000/h\"",
            ],
        ),
        case(
            "plain http to a non-loopback host on a sink is an error",
            with(&[(
                "https://deploy.internal/keys",
                "http://deploy.internal/keys",
            )]),
            &[
                "rekey.toml:34:7: error: `url` uses plain http:// to deploy.internal, and it carries secrets\n  hint: use https:// (plain http is accepted only for loopback addresses)",
            ],
        ),
        case(
            "plain http to a loopback host on a sink is fine",
            with(&[("https://deploy.internal/keys", "http://127.0.0.1:8080/keys")]),
            &[],
        ),
        case(
            "plain http to a non-loopback host on a notify target is a warning",
            with(&[(
                "https://hooks.internal/rekey",
                "http://hooks.internal/rekey",
            )]),
            &[
                "rekey.toml:38:7: warning: `url` uses plain http:// to hooks.internal\n  hint: notifications carry no secrets, but their signatures and contents are visible on the wire; prefer https://",
            ],
        ),
        case(
            "non-loopback listen without admin_token",
            with(&[("state = ", "listen = \"0.0.0.0:9477\"\nstate = ")]),
            &[
                "rekey.toml:2:10: error: `listen` is 0.0.0.0:9477, which is not loopback, and no `admin_token` is set\n  hint: set admin_token = { credential = \"admin-token\" }, or listen on 127.0.0.1",
            ],
        ),
        case(
            "unknown event type",
            with(&[(
                "secret = { env = \"OPS_WHSEC\" }",
                "secret = { env = \"OPS_WHSEC\" }\nevents = [\"rotation.complete\"]",
            )]),
            &[
                "rekey.toml:40:11: error: unknown event type \"rotation.complete\"\n  hint: did you mean \"rotation.completed\"?",
            ],
        ),
        case(
            "bad file mode",
            with(&[(
                "path = \"/etc/keys/{lineage}.env\"",
                "path = \"/etc/keys/{lineage}.env\"\nmode = \"0999\"",
            )]),
            &[
                "rekey.toml:25:8: error: invalid file mode \"0999\"\n  hint: write an octal string such as \"0600\"",
            ],
        ),
        case(
            "world-readable file mode (a warning)",
            with(&[(
                "path = \"/etc/keys/{lineage}.env\"",
                "path = \"/etc/keys/{lineage}.env\"\nmode = \"0644\"",
            )]),
            &[
                "rekey.toml:25:8: warning: mode 0644 lets every local user read the key\n  hint: use 0600 or 0640",
            ],
        ),
        case(
            "bootstrap lineage whose key names would not match the glob",
            with(&[("create = ", "bootstrap = \"svc-main\"\ncreate = ")]),
            &[
                "rekey.toml:48:13: error: bootstrap lineage \"svc-main\" gives key names like \"svc-main-20260101-r00000000-1\", which do not match `match = \"app-*\"`\n  hint: choose a lineage name the glob matches",
            ],
        ),
        case(
            "bootstrap of the wrong type",
            with(&[("create = ", "bootstrap = 5\ncreate = ")]),
            &[
                "rekey.toml:48:13: error: `bootstrap` in [[policy]]: found a number, expected true, false or a lineage name\n  hint: see rekey.example.toml for the form each key takes",
            ],
        ),
        case(
            "OceanBase rotate policy without create.action",
            with(&[("create = { action = \"read\" }\n", "")]),
            &[
                "rekey.toml:42:8: error: policy `maas-prod`: OceanBase keys are created with a permission, and none is set\n  hint: add create = { action = \"read\" } (the permission the new keys get)",
            ],
        ),
        case(
            "mistyped create parameter (no second error about the missing action)",
            with(&[(
                "create = { action = \"read\" }",
                "create = { actoin = \"read\" }",
            )]),
            &[
                "rekey.toml:48:10: error: unknown create parameter `actoin` for provider kind oceanbase\n  hint: did you mean `action`?",
            ],
        ),
        case(
            "a Huawei create.description, which is how rekey names the credential",
            with(&[
                ("provider = \"gw\"", "provider = \"nes\""),
                (
                    "sinks = [\"deploy-hook\"]\n",
                    "sinks = [\"deploy-hook\"]\ncreate = { description = \"mine\" }\n",
                ),
            ]),
            &[
                "rekey.toml:58:10: error: `create.description` cannot be set for a huawei-nes provider: rekey names each credential through its description\n  hint: remove it; the key name (from name_template) becomes the description",
            ],
        ),
        case(
            "rotate policy without sinks",
            with(&[("sinks = [\"deploy-hook\"]\n", "")]),
            &[
                "rekey.toml:51:8: error: policy `gateway` rotates keys but publishes them nowhere (no `sinks`)\n  hint: list at least one sink, or set mode = \"observe\"",
            ],
        ),
        case(
            "observe policy without sinks is fine",
            with(&[("sinks = [\"deploy-hook\"]\n", "mode = \"observe\"\n")]),
            &[],
        ),
        case(
            "TOML syntax error",
            with(&[("org_id = \"org-1\"", "org_id = org-1")]),
            &[
                "rekey.toml:6:10: error: TOML syntax: string values must be quoted, expected literal string\n  hint: put string values in double quotes: key = \"value\"",
            ],
        ),
        case(
            "TOML duplicate table",
            format!("{BASE}\n[providers.ob]\nkind = \"oceanbase\"\n"),
            &[
                "rekey.toml:59:12: error: TOML syntax: duplicate key `ob`\n  hint: each key may appear only once in a table; remove or rename one of them",
            ],
        ),
        case(
            "max_concurrent_rotations out of range",
            with(&[("state = ", "max_concurrent_rotations = 0\nstate = ")]),
            &[
                "rekey.toml:2:28: error: max_concurrent_rotations = 0 is out of range\n  hint: use a number from 1 to 1024",
            ],
        ),
        case(
            "webhook secret that is not whsec_",
            with(&[(
                "secret = { env = \"DEPLOY_WHSEC\" }",
                "secret = \"not-a-whsec\"",
            )]),
            &[
                "rekey.toml:35:10: error: webhook `secret` does not start with whsec_\n  hint: Standard Webhooks secrets are written whsec_<base64>",
                "rekey.toml:35:10: warning: `secret` is a literal secret in the config file\n  hint: use { env = \"NAME\" }, { file = \"/path\" } or { credential = \"name\" } (systemd LoadCredential=)",
            ],
        ),
        case(
            "admin_listen that is not a unix socket",
            with(&[("state = ", "admin_listen = \"127.0.0.1:9478\"\nstate = ")]),
            &[
                "rekey.toml:2:16: error: `admin_listen` \"127.0.0.1:9478\" is not an absolute unix: socket path\n  hint: the admin endpoints are served on a Unix socket only: admin_listen = \"unix:/run/rekey/admin.sock\"",
            ],
        ),
        case(
            "pass_env entry that is not a variable name",
            with(&[(
                "path = \"/etc/keys/{lineage}.env\"",
                "path = \"/etc/keys/{lineage}.env\"\npass_env = [\"OK_NAME\", \"BAD NAME\"]",
            )]),
            &[
                "rekey.toml:25:12: error: `pass_env` entry \"BAD NAME\" is not an environment variable name\n  hint: write names such as \"HOME\" or \"MYAPP_SOCKET\"",
            ],
        ),
    ]
}

#[test]
fn the_table_base_config_is_valid_and_silent() {
    let base = BaseEnv::new();
    let result = load(BASE, &base.env());
    assert_eq!(displayed(&result), Vec::<String>::new());
    assert!(result.is_ok());
}

#[test]
fn every_rule_reports_its_exact_place_message_and_hint() {
    let base = BaseEnv::new();
    let creds = base.creds.path().display().to_string();
    let table = cases();
    assert!(table.len() >= 25, "issue #2 asks for at least 25 cases");
    let mut failures = Vec::new();
    for c in &table {
        let env = match c.env {
            CaseEnv::Base => base.env(),
            CaseEnv::NoCredentialsDir => Env {
                credentials_dir: None,
                ..base.env()
            },
        };
        let result = load(&c.src, &env);
        let got = displayed(&result);
        let want: Vec<String> = c
            .expected
            .iter()
            .map(|e| e.replace("{creds}", &creds))
            .collect();
        let has_error = want.iter().any(|w| w.contains(": error: "));
        if got != want {
            failures.push(format!("{}:\n  want: {want:#?}\n  got:  {got:#?}", c.rule));
        } else if result.is_err() != has_error {
            failures.push(format!(
                "{}: load returned {} with these diagnostics",
                c.rule,
                if result.is_err() { "Err" } else { "Ok" }
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
}

#[test]
fn several_errors_are_all_reported_in_order_without_cascades() {
    let base = BaseEnv::new();
    // Three broken items and a policy pointing at two of them: the policy
    // gets no "undefined" error for them, since each already said what is
    // wrong with itself; the undefined provider of the second policy is
    // still reported.
    let src = with(&[
        ("kind = \"oceanbase\"", "kind = \"oceanbse\""),
        ("kind = \"file\"", "kind = \"file\"\nformt = \"env\""),
        ("0 */15 * * * *", "0 */15 * *"),
        ("provider = \"gw\"", "provider = \"gww\""),
        ("[notify.ops]", "[notfy.ops]"),
    ]);
    let got = displayed(&load(&src, &base.env()));
    assert_eq!(
        got,
        [
            "rekey.toml:5:8: error: unknown provider kind \"oceanbse\"\n  hint: did you mean \"oceanbase\"?",
            "rekey.toml:24:1: error: unknown key `formt` in [sinks.app-env]\n  hint: did you mean `format`?",
            "rekey.toml:38:2: error: unknown top-level key `notfy`\n  hint: did you mean `notify`?",
            "rekey.toml:46:12: error: invalid schedule \"0 */15 * *\": cron line has 4 fields; expected 6 (sec min hour dom mon dow), 7 (with year) or a classic 5\n  hint: six fields with seconds, e.g. \"0 */15 * * * *\" (every 15 minutes); a classic five-field line means second 0",
            "rekey.toml:53:12: error: policy `gateway` names undefined provider \"gww\"\n  hint: did you mean \"gw\"?",
        ]
    );
}

#[test]
fn an_unknown_or_missing_provider_kind_still_reports_the_keys_no_kind_reads() {
    let base = BaseEnv::new();
    // A misspelled kind: its misspelled key is reported in the same run; a
    // key some kind reads (`region`) is not, since the kind meant is unknown.
    let src = with(&[
        (
            "kind = \"oceanbase\"",
            "kind = \"oceanbse\"\nregion = \"x\"",
        ),
        ("project_id = \"proj-1\"", "projet_id = \"proj-1\""),
    ]);
    assert_eq!(
        displayed(&load(&src, &base.env())),
        [
            "rekey.toml:5:8: error: unknown provider kind \"oceanbse\"\n  hint: did you mean \"oceanbase\"?",
            "rekey.toml:8:1: error: unknown key `projet_id` in [providers.ob]\n  hint: did you mean `project_id`?",
        ]
    );
    // No kind at all: the same.
    let src = with(&[
        ("kind = \"huawei-nes\"\n", ""),
        ("auth = { token = { env", "auht = { token = { env"),
    ]);
    assert_eq!(
        displayed(&load(&src, &base.env())),
        [
            "rekey.toml:17:1: error: [providers.nes] is missing required key `kind`\n  hint: add `kind = …` to this section",
            "rekey.toml:19:1: error: unknown key `auht` in [providers.nes]\n  hint: did you mean `auth`?",
        ]
    );
}

#[test]
fn a_policy_that_fails_to_parse_still_lets_the_others_be_checked() {
    let base = BaseEnv::new();
    let src = with(&[
        ("match = \"app-*\"\n", ""),
        ("sinks = [\"deploy-hook\"]", "sinks = [\"deploy-hok\"]"),
    ]);
    let got = displayed(&load(&src, &base.env()));
    assert_eq!(
        got,
        [
            "rekey.toml:41:1: error: [[policy]] is missing required key `match`\n  hint: add `match = …` to this section",
            "rekey.toml:56:10: error: policy `gateway` names undefined sink \"deploy-hok\"\n  hint: did you mean \"deploy-hook\"?",
        ]
    );
}

// ------------------------------------------------------------ valid configs

/// The credentials the shipped example names, each holding a dummy value.
const EXAMPLE_CREDENTIALS: &[&str] = &[
    "admin-token",
    "seal-key",
    "ob-sk",
    "hw-token",
    "vault-secret-id",
];

#[test]
fn the_example_config_validates_when_every_secret_resolves() {
    let creds = tempfile::tempdir().unwrap();
    for name in EXAMPLE_CREDENTIALS {
        let value = match *name {
            // The sealing key has a form: 32 bytes in hex.
            "seal-key" => format!("{}\n", "5e".repeat(32)),
            _ => format!("{name}-value\n"),
        };
        write_file(creds.path(), name, &value);
    }
    let mut env = hermetic_env(&[
        ("OB_AK", "ob-ak"),
        ("TC_SECRET_ID", "tc-id"),
        ("TC_SECRET_KEY", "tc-key"),
        ("DEPLOY_WHSEC", "whsec_ZGVwbG95"),
        ("OPS_WHSEC", "whsec_b3Bz"),
    ]);
    env.credentials_dir = Some(creds.path().to_path_buf());
    let path = repo_path("config/rekey.example.toml");
    let src = std::fs::read_to_string(&path).unwrap();
    assert_eq!(src, config::EXAMPLE, "the embedded example is the file");
    let (cfg, warnings) = match config::load_str(&path, &src, &env) {
        Ok(ok) => ok,
        Err(diags) => panic!("example config is invalid:\n{}", join(&diags)),
    };
    assert!(warnings.is_empty(), "warnings:\n{}", join(&warnings));

    assert_eq!(
        cfg.daemon.state.sqlite_path(),
        Some(Path::new("/var/lib/rekey/state.db"))
    );
    assert_eq!(
        cfg.daemon.admin_token,
        Some(SecretRef::Credential("admin-token".into()))
    );
    assert_eq!(
        cfg.providers.keys().collect::<Vec<_>>(),
        ["gw", "nes", "ob-prod"]
    );
    assert_eq!(
        cfg.sinks.keys().collect::<Vec<_>>(),
        ["app-env", "deploy-hook", "vault"]
    );
    assert_eq!(cfg.notify.keys().collect::<Vec<_>>(), ["ops"]);
    let names: Vec<&str> = cfg.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["maas-prod", "gateway", "nodes"]);

    let maas = cfg.policy("maas-prod").unwrap();
    assert_eq!(maas.rotate_before_expiry, Some(Lead::Absolute(days(7))));
    assert_eq!(maas.max_age, Some(days(30)));
    assert_eq!(maas.bootstrap.as_deref(), Some("app-main"));
    assert_eq!(maas.sinks, ["app-env", "vault"]);
    assert!(maas.matches("app-main-20261122-r1a2b3c4d-1"));
    assert_eq!(cfg.policy("nodes").unwrap().mode, Mode::Observe);
    let gw = &cfg.providers["gw"];
    assert_eq!(gw.rate_limit.map(|r| r.per_second), Some(20.0));
    assert!(matches!(
        gw.kind,
        ProviderKind::Tencent(rekey::provider::tencent::TencentConfig { .. })
    ));
    // Every secret reference of the example resolves against this env.
    assert!(cfg.notify["ops"].wants("rotation.failed") && !cfg.notify["ops"].wants("key.created"));
}

/// Env vars and credentials named by `{ env = … }` / `{ credential = … }`
/// anywhere in a TOML document.
fn secret_names(v: &toml::Value, env: &mut Vec<String>, creds: &mut Vec<String>) {
    match v {
        toml::Value::Table(t) => {
            if t.len() == 1 {
                match t.iter().next() {
                    Some((k, toml::Value::String(s))) if k == "env" => env.push(s.clone()),
                    Some((k, toml::Value::String(s))) if k == "credential" => creds.push(s.clone()),
                    _ => {}
                }
            }
            t.values().for_each(|v| secret_names(v, env, creds));
        }
        toml::Value::Array(a) => a.iter().for_each(|v| secret_names(v, env, creds)),
        _ => {}
    }
}

#[test]
fn every_file_under_config_validates() {
    let dir = repo_path("config");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let src = std::fs::read_to_string(&path).unwrap();
        let doc: toml::Value =
            toml::from_str(&src).unwrap_or_else(|e| panic!("{} is not TOML: {e}", path.display()));
        let (mut env_names, mut cred_names) = (Vec::new(), Vec::new());
        secret_names(&doc, &mut env_names, &mut cred_names);
        let creds = tempfile::tempdir().unwrap();
        for name in &cred_names {
            let value = if name.contains("seal") {
                format!("{}\n", "5e".repeat(32))
            } else {
                "value\n".to_string()
            };
            write_file(creds.path(), name, &value);
        }
        let mut env = Env {
            vars: env_names
                .iter()
                .map(|n| (n.clone(), "whsec_dmFsdWU=".to_string()))
                .collect(),
            credentials_dir: Some(creds.path().to_path_buf()),
        };
        env.vars
            .insert("STATE_DIRECTORY".into(), "/var/lib/rekey".into());
        if let Err(diags) = config::load_str(&path, &src, &env) {
            // Files an example names on the target host (`{ file = … }`,
            // `ca_file`) cannot exist here; anything else is a real error.
            let real: Vec<Diagnostic> = diags
                .into_iter()
                .filter(|d| d.severity == Severity::Error)
                .filter(|d| {
                    let host_file = d.message.contains("cannot read secret file")
                        || (d.message.starts_with("`ca_file`")
                            && d.message.ends_with("does not exist"));
                    !host_file
                })
                .collect();
            assert!(
                real.is_empty(),
                "{} is invalid:\n{}",
                path.display(),
                join(&real)
            );
        }
        checked.push(path);
    }
    assert!(
        checked.iter().any(|p| p.ends_with("rekey.example.toml")),
        "found {checked:?}"
    );
}

/// The least a config can say: one provider, one sink, one policy.
const MINIMAL: &str = r#"
[providers.ob]
kind = "oceanbase"
org_id = "org-1"
project_id = "proj-1"
access_key_id = { env = "OB_AK" }
access_key_secret = { env = "OB_SK" }

[sinks.keys]
kind = "file"
path = "/etc/keys/{lineage}.env"

[[policy]]
name = "maas"
provider = "ob"
match = "app-*"
schedule = "0 */15 * * * *"
rotate_before_expiry = "7d"
sinks = ["keys"]
create = { action = "read" }
"#;

#[test]
fn defaults_are_applied() {
    let env = hermetic_env(&[
        ("OB_AK", "a"),
        ("OB_SK", "b"),
        ("STATE_DIRECTORY", "/var/lib/rekey"),
    ]);
    let (cfg, warnings) = load(MINIMAL, &env).unwrap();
    assert!(warnings.is_empty(), "{}", join(&warnings));
    let d = &cfg.daemon;
    assert_eq!(
        d.state.sqlite_path(),
        Some(Path::new("/var/lib/rekey/state.db"))
    );
    assert_eq!(d.listen, ListenAddr::Tcp("127.0.0.1:9477".parse().unwrap()));
    assert_eq!(d.max_concurrent_rotations, 4);
    assert_eq!(d.shutdown_timeout, Duration::from_secs(30));
    assert!(d.admin_token.is_none() && d.seal_key.is_none());

    let p = &cfg.policies[0];
    assert_eq!(p.grace_period, Duration::from_secs(24 * 3600));
    assert_eq!(p.name_template.as_str(), "{lineage}-{date}-{rotation}");
    assert_eq!(p.mode, Mode::Rotate);
    assert_eq!(p.max_attempts, 5);
    assert_eq!(p.bootstrap, None);
    assert_eq!(p.failing_after_failures, 3);
    assert_eq!(p.stuck_after, Duration::from_secs(3600));
    assert_eq!(
        p.expiring_warnings,
        [days(7), days(1), Duration::from_secs(3600)]
    );

    let ob = &cfg.providers["ob"];
    assert_eq!(ob.endpoint, "https://api-cloud.oceanbase.com");
    assert_eq!(ob.timeout, Duration::from_secs(30));
    assert!(ob.rate_limit.is_none());

    let SinkKind::File(f) = &cfg.sinks["keys"].kind else {
        panic!("file sink expected");
    };
    assert_eq!((f.mode, f.format), (0o600, FileFormat::Env));
}

#[test]
fn health_thresholds_set_on_a_policy_replace_the_defaults() {
    let env = hermetic_env(&[("OB_AK", "a"), ("OB_SK", "b")]);
    let src = MINIMAL.replace(
        "create = { action = \"read\" }",
        "create = { action = \"read\" }\nfailing_after_failures = 2\nstuck_after = \"30m\"\nexpiring_warnings = [\"2h\", \"14d\"]",
    );
    let (cfg, warnings) = load(&src, &env).unwrap();
    assert!(warnings.is_empty(), "{}", join(&warnings));
    let p = &cfg.policies[0];
    assert_eq!(p.failing_after_failures, 2);
    assert_eq!(p.stuck_after, Duration::from_secs(1800));
    // Longest first, whatever the order written.
    assert_eq!(p.expiring_warnings, [days(14), Duration::from_secs(7200)]);
    let none = MINIMAL.replace(
        "create = { action = \"read\" }",
        "create = { action = \"read\" }\nexpiring_warnings = []",
    );
    assert!(
        load(&none, &env).unwrap().0.policies[0]
            .expiring_warnings
            .is_empty()
    );
}

#[test]
fn state_path_defaults_to_the_first_state_directory_else_the_working_directory() {
    let state = |vars: &[(&str, &str)]| {
        let mut all = vec![("OB_AK", "a"), ("OB_SK", "b")];
        all.extend_from_slice(vars);
        load(MINIMAL, &hermetic_env(&all))
            .unwrap()
            .0
            .daemon
            .state
            .sqlite_path()
            .map(Path::to_path_buf)
    };
    assert_eq!(
        state(&[("STATE_DIRECTORY", "/var/lib/rekey:/var/lib/other")]),
        Some(PathBuf::from("/var/lib/rekey/state.db"))
    );
    assert_eq!(state(&[]), Some(PathBuf::from("rekey.db")));
}

// ------------------------------------------------------- secret references

#[test]
fn secret_references_resolve_from_env_file_and_credentials_dir() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "ob-ak", "from-file\n");
    let crlf = write_file(dir.path(), "crlf", "from-crlf\r\n");
    let creds = dir.path().join("creds");
    write_file(&creds, "ob-sk", "from-credential\n");
    let mut env = hermetic_env(&[("OB_AK", "from-env")]);
    env.credentials_dir = Some(creds.clone());

    let resolve = |r: SecretRef| r.resolve(&env).map(|s| s.expose().to_string());
    assert_eq!(
        resolve(SecretRef::Env("OB_AK".into())),
        Ok("from-env".into())
    );
    assert_eq!(
        resolve(SecretRef::File(file.clone())),
        Ok("from-file".into())
    );
    assert_eq!(resolve(SecretRef::File(crlf)), Ok("from-crlf".into()));
    assert_eq!(
        resolve(SecretRef::Credential("ob-sk".into())),
        Ok("from-credential".into())
    );

    // Through a config: the loaded references resolve to the same values.
    let src = MINIMAL
        .replace("{ env = \"OB_AK\" }", &format!("{{ file = {:?} }}", file))
        .replace("{ env = \"OB_SK\" }", "{ credential = \"ob-sk\" }");
    let (cfg, warnings) = load(&src, &env).unwrap();
    assert!(warnings.is_empty(), "{}", join(&warnings));
    let ProviderKind::OceanBase(rekey::provider::oceanbase::OceanBaseConfig {
        access_key_id,
        access_key_secret,
        ..
    }) = &cfg.providers["ob"].kind
    else {
        panic!("oceanbase provider expected");
    };
    assert_eq!(resolve(access_key_id.clone()), Ok("from-file".into()));
    assert_eq!(
        resolve(access_key_secret.clone()),
        Ok("from-credential".into())
    );
}

#[test]
fn unresolvable_references_say_which_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write_file(dir.path(), "empty", "\n");
    let env = Env {
        vars: [("BLANK".to_string(), String::new())].into(),
        credentials_dir: None,
    };
    let err = |r: SecretRef| r.resolve(&env).unwrap_err();
    assert_eq!(
        err(SecretRef::Env("NOPE".into())),
        ResolveError::EnvMissing("NOPE".into())
    );
    assert_eq!(
        err(SecretRef::Env("BLANK".into())),
        ResolveError::EnvEmpty("BLANK".into())
    );
    assert_eq!(
        err(SecretRef::File(empty.clone())),
        ResolveError::FileEmpty(empty)
    );
    assert_eq!(
        err(SecretRef::Credential("c".into())),
        ResolveError::NoCredentialsDir("c".into())
    );
}

#[test]
fn a_literal_secret_is_accepted_with_a_warning() {
    let env = hermetic_env(&[("OB_SK", "b")]);
    let src = MINIMAL.replace("{ env = \"OB_AK\" }", "\"AKID-literal\"");
    let (cfg, warnings) = load(&src, &env).expect("a literal secret is not an error");
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].severity, Severity::Warning);
    assert_eq!(
        (warnings[0].line, warnings[0].col),
        (6, 17),
        "{}",
        warnings[0]
    );
    let ProviderKind::OceanBase(rekey::provider::oceanbase::OceanBaseConfig {
        access_key_id, ..
    }) = &cfg.providers["ob"].kind
    else {
        panic!("oceanbase provider expected");
    };
    assert_eq!(
        access_key_id.resolve(&env).unwrap().expose(),
        "AKID-literal"
    );
}

// ------------------------------------------------------ no secret in Debug

const LITERAL: &str = "LITERAL-S3CRET-4a1f";
const FROM_ENV: &str = "ENV-S3CRET-9c2e";
const FROM_FILE: &str = "FILE-S3CRET-77d0";
const FROM_CREDENTIAL: &str = "CRED-S3CRET-b81c";
/// The sealing key has a form of its own (64 hex characters).
const SEAL_HEX: &str = "5ea1c0de5ea1c0de5ea1c0de5ea1c0de5ea1c0de5ea1c0de5ea1c0de5ea1c0de";
/// Webhook secrets have a form too (`whsec_<base64>`).
const WHSEC_LITERAL: &str = "whsec_TGl0ZXJhbFdlYmhvb2tLZXk=";
const WHSEC_ENV: &str = "whsec_RW52V2ViaG9va0tleVZhbHVl";
const ALL_SECRETS: &[&str] = &[
    LITERAL,
    FROM_ENV,
    FROM_FILE,
    FROM_CREDENTIAL,
    SEAL_HEX,
    WHSEC_LITERAL,
    WHSEC_ENV,
];

fn assert_no_secret(what: &str, text: &str) {
    for s in ALL_SECRETS {
        assert!(!text.contains(s), "{what} shows secret {s}:\n{text}");
    }
}

#[test]
fn no_secret_value_appears_in_debug_output() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "secret", &format!("{FROM_FILE}\n"));
    let creds = dir.path().join("creds");
    write_file(&creds, "cred", FROM_CREDENTIAL);
    let mut env = hermetic_env(&[
        ("SECRET_ENV", FROM_ENV),
        ("SEAL_ENV", SEAL_HEX),
        ("WHSEC_ENV", WHSEC_ENV),
    ]);
    env.credentials_dir = Some(creds);
    let literal = format!("\"{LITERAL}\"");
    let file_ref = format!("{{ file = {file:?} }}");
    // Every secret-valued key, each from one of the four sources.
    let src = format!(
        r#"
[daemon]
state = "/var/lib/rekey/state.db"
admin_token = {literal}
seal_key = {{ env = "SEAL_ENV" }}

[providers.ob]
kind = "oceanbase"
org_id = "org-1"
project_id = "proj-1"
access_key_id = {literal}
access_key_secret = {file_ref}

[providers.gw]
kind = "tencent-apigateway"
region = "ap-guangzhou"
secret_id = {{ credential = "cred" }}
secret_key = {literal}

[providers.nes]
kind = "huawei-nes"
project_id = "0123456789abcdef0123456789abcdef"
auth = {{ aksk = {{ access_key = {literal}, secret_key = {{ env = "SECRET_ENV" }} }} }}

[providers.nes-iam]
kind = "huawei-nes"
project_id = "0123456789abcdef0123456789abcdef"
auth = {{ iam = {{ endpoint = "https://iam.example", domain = "d", user = "u", password = {literal} }} }}

[sinks.hook]
kind = "webhook"
url = "https://deploy.internal/keys"
secret = ["{WHSEC_LITERAL}", {{ env = "WHSEC_ENV" }}]

[sinks.vault]
kind = "vault"
address = "https://vault.internal:8200"
path = "maas/{{lineage}}"
auth = {{ approle = {{ role_id = {literal}, secret_id = {file_ref} }} }}

[sinks.vault-token]
kind = "vault"
address = "https://vault.internal:8200"
path = "maas/{{lineage}}"
auth = {{ token = {{ credential = "cred" }} }}

[notify.ops]
url = "https://hooks.internal/rekey"
secret = "{WHSEC_LITERAL}"

[[policy]]
name = "maas"
provider = "ob"
match = "app-*"
schedule = "0 */15 * * * *"
rotate_before_expiry = "7d"
sinks = ["hook", "vault", "vault-token"]
create = {{ action = "read" }}
"#
    );
    let (cfg, warnings) = match config::load_str(Path::new("rekey.toml"), &src, &env) {
        Ok(ok) => ok,
        Err(diags) => panic!("{}", join(&diags)),
    };
    assert!(!warnings.is_empty(), "literal secrets warn");
    assert_no_secret("Config", &format!("{cfg:?}"));
    assert_no_secret("Config (pretty)", &format!("{cfg:#?}"));
    for d in &warnings {
        assert_no_secret("Diagnostic", &format!("{d:?} {d}"));
    }
    // The raw (as-written) types too: a literal there is plaintext.
    let raw: rekey::provider::oceanbase::RawOceanBaseConfig =
        toml::from_str(&format!("access_key_id = {literal}")).unwrap();
    assert_no_secret("RawOceanBaseConfig", &format!("{raw:?}"));
    let raw: rekey::config::raw::RawSink =
        toml::from_str(&format!("kind = \"webhook\"\nsecret = [{literal}]")).unwrap();
    assert_no_secret("RawSink", &format!("{raw:?}"));
}

#[test]
fn resolution_errors_never_carry_the_value() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where a secret file is expected: the read fails after
    // the path was found, the likeliest place for a value to slip in.
    let not_a_file = dir.path().join(FROM_FILE);
    std::fs::create_dir(&not_a_file).unwrap();
    let env = hermetic_env(&[("EMPTY", "")]);
    for r in [
        SecretRef::Env("EMPTY".into()),
        SecretRef::Env(LITERAL.to_lowercase()),
        SecretRef::Credential("cred".into()),
    ] {
        let e = r.resolve(&env).unwrap_err();
        assert_no_secret("ResolveError", &format!("{e:?} {e}"));
    }
    let e = SecretRef::Literal(rekey::secret::Secret::new(LITERAL))
        .resolve(&env)
        .map(|s| format!("{s:?} {s}"))
        .unwrap();
    assert_no_secret("resolved Secret", &e);
}

#[test]
fn diagnostics_never_repeat_a_secret_written_in_the_wrong_place() {
    let base = BaseEnv::new();
    // A token pasted where a table belongs, a numeric secret, a secret in a
    // reference's name field: each is an error, and none is echoed.
    let bad = [
        with(&[(
            "auth = { token = { credential = \"vault-token\" } }",
            &format!("auth = \"{LITERAL}\""),
        )]),
        with(&[(
            "auth = { token = { env = \"HW_TOKEN\" } }",
            &format!("auth = \"{FROM_ENV}\""),
        )]),
        with(&[("{ env = \"OB_AK\" }", "4242424242")]),
        with(&[(
            "secret = { env = \"DEPLOY_WHSEC\" }",
            &format!("secret = \"{FROM_FILE}\""),
        )]),
    ];
    for src in &bad {
        let diags = load(src, &base.env()).expect_err("invalid");
        for d in &diags {
            assert_no_secret("Diagnostic", &format!("{d:?} {d}"));
            assert!(!d.to_string().contains("4242424242"), "{d}");
        }
    }
    assert_eq!(
        displayed(&load(&bad[0], &base.env())),
        [
            "rekey.toml:30:8: error: `auth` in [sinks.vault] must be a table with one of `token`, `approle`\n  hint: write auth = { token = … } (the value is not repeated here in case it is a secret)"
        ]
    );
    assert_eq!(
        displayed(&load(&bad[2], &base.env())),
        [
            "rekey.toml:8:17: error: `access_key_id` in [providers.ob]: found a number, expected a secret reference: { env = \"NAME\" }, { file = \"/path\" }, { credential = \"name\" } or a string\n  hint: see rekey.example.toml for the form each key takes"
        ]
    );
}

// -------------------------------------------------------- `rekey check`

/// MINIMAL with its file sink in `dir` (`rekey check` checks the host: the
/// sink's directory must exist).
fn minimal_in(dir: &Path) -> String {
    MINIMAL.replace("/etc/keys/", &format!("{}/", dir.display()))
}

fn rekey_check(config: &Path, vars: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rekey"))
        .arg("check")
        .arg("-c")
        .arg(config)
        .env_clear()
        .envs(vars.iter().copied())
        .output()
        .expect("run rekey");
    (
        out.status.code().expect("exit code"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn rekey_check_exits_0_on_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "rekey.toml", &minimal_in(dir.path()));
    let (code, stdout, stderr) = rekey_check(&file, &[("OB_AK", "a"), ("OB_SK", "b")]);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stderr, "");
    assert_eq!(
        stdout,
        format!(
            "{}: ok (1 provider(s), 1 sink(s), 0 notify target(s), 1 policy(ies))\n",
            file.display()
        )
    );
}

#[test]
fn rekey_check_warns_about_a_config_secret_file_or_state_directory_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = write_file(dir.path(), "ob-sk", "s3cret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let src = format!(
        "[daemon]\nstate = \"{d}/state/state.db\"\n{}",
        minimal_in(dir.path()).replace(
            "{ env = \"OB_SK\" }",
            &format!("{{ file = \"{d}/ob-sk\" }}")
        )
    );
    let file = write_file(dir.path(), "rekey.toml", &src);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, stderr) = rekey_check(&file, &[("OB_AK", "a")]);
    assert_eq!(code, 0, "{stderr}");
    for want in [
        "the config file is readable by other users (mode 0644)".to_string(),
        format!("is in {d}/ob-sk, which other users can read (mode 0644)"),
        format!("the state directory {d}/state is open to other users (mode 0755)"),
    ] {
        assert!(stderr.contains(&want), "missing {want:?} in:\n{stderr}");
    }
    // Tightened, the warnings go away.
    for p in [&file, &secret] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (code, _, stderr) = rekey_check(&file, &[("OB_AK", "a")]);
    assert_eq!((code, stderr.as_str()), (0, ""));
}

#[test]
fn rekey_check_exits_0_with_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let src = minimal_in(dir.path()).replace("{ env = \"OB_AK\" }", "\"AKID-literal\"");
    let file = write_file(dir.path(), "rekey.toml", &src);
    let (code, _, stderr) = rekey_check(&file, &[("OB_SK", "b")]);
    assert_eq!(code, 0, "{stderr}");
    let first = stderr.lines().next().unwrap_or("");
    assert_eq!(
        first,
        format!(
            "{}:6:17: warning: `access_key_id` is a literal secret in the config file",
            file.display()
        )
    );
}

#[test]
fn rekey_check_exits_1_and_prints_each_error_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let src = minimal_in(dir.path())
        .replace("kind = \"file\"", "kind = \"fiel\"")
        .replace(
            "rotate_before_expiry = \"7d\"",
            "rotate_before_expiry = \"7dd\"",
        );
    let file = write_file(dir.path(), "rekey.toml", &src);
    let (code, stdout, stderr) = rekey_check(&file, &[("OB_SK", "b")]);
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    let f = file.display();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(": error: ")).collect();
    assert_eq!(
        errors,
        [
            format!(
                "{f}:6:17: error: `access_key_id` cannot be resolved: environment variable OB_AK is not set"
            ),
            format!("{f}:10:8: error: unknown sink kind \"fiel\""),
            format!(
                "{f}:18:24: error: invalid duration \"7dd\" for `rotate_before_expiry`: unknown time unit \"dd\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)"
            ),
        ]
    );
    assert!(
        stderr.lines().filter(|l| l.starts_with("  hint: ")).count() == 3,
        "every error has a hint:\n{stderr}"
    );
    assert!(stderr.ends_with(&format!("{f}: 3 error(s)\n")), "{stderr}");
}

#[test]
fn rekey_check_on_a_missing_file_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("absent.toml");
    let (code, _, stderr) = rekey_check(&file, &[]);
    assert_eq!(code, 1);
    let f = file.display();
    assert_eq!(
        stderr,
        format!(
            "{f}:1:1: error: cannot read config file: no such file or directory\n  hint: give the config with -c FILE or $REKEY_CONFIG (default /etc/rekey/rekey.toml)\n{f}: 1 error(s)\n"
        )
    );
}

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 24 * 3600)
}

fn join(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Twenty-odd deliberate mistakes across every table come out in one run:
/// serde's first error inside a table no longer hides the others, an
/// unknown top-level table hides nothing, and the words are an operator's
/// (no `i64`, `a sequence`, `entity not found`).
#[test]
fn one_check_reports_every_error_of_every_table_in_plain_words() {
    let src = r#"
[daemon]
listen = "127.0.0.1:9477"
max_concurrent_rotations = "four"
shutdown_timeout = "30 parsecs"
bogus = 1

[sinkz.x]
kind = "file"

[providers.ob]
kind = "oceanbase"
org_id = 5
project_id = "p"
acess_key_id = { env = "A" }
access_key_secret = { file = "/nonexistent/rekey/sk" }
timeout = "1 fortnight"

[sinks.f]
kind = "file"
path = "/etc/keys/{lineage}.env"
mode = 600
format = "yaml"
on_publish = "systemctl reload myapp"

[[policy]]
name = "p"
provider = "ob"
match = "app-*"
schedule = "0 * * * * *"
max_age = "30d"
max_attempts = "five"
sinks = ["f", 7]
create = { action = "read" }
"#;
    let got = displayed(&load(src, &hermetic_env(&[])));
    let errors: Vec<&String> = got.iter().filter(|d| d.contains(": error: ")).collect();
    let expect = [
        "rekey.toml:4:28: error: `max_concurrent_rotations` in [daemon]: found a string, expected a whole number",
        "rekey.toml:5:20: error: invalid duration \"30 parsecs\" for `shutdown_timeout`",
        "rekey.toml:6:1: error: unknown key `bogus` in [daemon]",
        "rekey.toml:8:2: error: unknown top-level key `sinkz`",
        "rekey.toml:13:10: error: `org_id` in [providers.ob]: found a number, expected a string",
        "rekey.toml:15:1: error: unknown key `acess_key_id` in [providers.ob]",
        "rekey.toml:16:21: error: `access_key_secret` cannot be resolved: cannot read secret file /nonexistent/rekey/sk: no such file or directory",
        "rekey.toml:17:11: error: invalid duration \"1 fortnight\" for `timeout`",
        "rekey.toml:22:8: error: `mode` in [sinks.f]: found a number, expected a string",
        "rekey.toml:23:10: error: unknown file format \"yaml\"",
        "rekey.toml:24:14: error: `on_publish` in [sinks.f]: found a string, expected a list",
        "rekey.toml:32:16: error: `max_attempts` in [[policy]]: found a string, expected a whole number",
        "rekey.toml:33:15: error: `sinks` in [[policy]]: found a number, expected a string",
    ];
    for (e, want) in errors.iter().zip(expect.iter()) {
        assert!(
            e.starts_with(want),
            "\n got: {e}\nwant: {want}…\nall:\n{got:#?}"
        );
    }
    assert_eq!(errors.len(), expect.len(), "{got:#?}");
    for word in ["i64", "sequence", "entity not found", "u32", "usize"] {
        assert!(
            !got.iter().any(|d| d.contains(word)),
            "{word:?} in:\n{got:#?}"
        );
    }
}

/// Each provider kind names its own keys twice: as its raw config struct's
/// fields (what serde reads) and in its spec's `keys()` (what validation
/// sorts a `[providers.NAME]` table by). The two lists must agree, or a key
/// would be read by one and refused by the other.
#[test]
fn each_provider_kinds_keys_are_its_config_structs_fields() {
    use rekey::config::validate::ProviderSpec;
    use rekey::provider::{huawei, oceanbase, tencent};
    fn fields<T: serde::de::DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
        let e = toml::from_str::<T>("zzz_not_a_key = 1")
            .unwrap_err()
            .to_string();
        let expected = e.split("expected ").nth(1).unwrap_or_else(|| panic!("{e}"));
        let mut names: Vec<String> = expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        names.sort();
        names
    }
    fn keys(spec: &dyn ProviderSpec) -> Vec<String> {
        let mut k: Vec<String> = spec.keys().iter().map(|s| s.to_string()).collect();
        k.sort();
        k
    }
    for spec in rekey::provider::SPECS {
        let want = match spec.kind() {
            "oceanbase" => fields::<oceanbase::RawOceanBaseConfig>(),
            "tencent-apigateway" => fields::<tencent::RawTencentConfig>(),
            "huawei-nes" => fields::<huawei::RawHuaweiConfig>(),
            other => panic!("add kind {other} and its raw config struct here"),
        };
        assert_eq!(keys(*spec), want, "{}", spec.kind());
    }
}

/// `BASE` on a PostgreSQL state (DESIGN §8): `extra` goes into `[daemon]`.
fn on_postgres(url: &str, extra: &str) -> String {
    with(&[(
        "state = \"/var/lib/rekey/state.db\"",
        &format!("state = \"{url}\"\n{extra}"),
    )])
}

#[test]
fn a_postgres_state_needs_a_seal_key_and_file_sinks_declared_shared() {
    let base = BaseEnv::new();
    let src = on_postgres("postgres://rekey@127.0.0.1:5432/rekey", "");
    let result = load(&src, &base.env());
    let got = displayed(&result);
    assert!(result.is_err());
    assert!(
        got.iter().any(|d| d
            .starts_with("rekey.toml:2:9: error: a PostgreSQL state needs `seal_key` in [daemon]")),
        "{got:#?}"
    );
    assert!(
        got.iter().any(|d| d.contains(
            "error: file sink `app-env` is not declared shared, and the state is PostgreSQL"
        ) && d.contains("set shared = true")),
        "{got:#?}"
    );
}

#[test]
fn a_postgres_state_with_a_seal_key_and_shared_sinks_loads_without_connecting() {
    let base = BaseEnv::new();
    let mut env = base.env();
    env.vars.insert("SEAL".into(), SEAL_HEX.into());
    let pw = write_file(base.creds.path(), "pg-password", "pg-secret-pw\n");
    let src = on_postgres(
        "postgres://rekey@db.internal:5432/rekey?sslmode=require",
        &format!(
            "seal_key = {{ env = \"SEAL\" }}\nstate_password = {{ file = \"{}\" }}\ninstance = \"node-a\"\nlease_ttl = \"20s\"\nlease_renew = \"5s\"",
            pw.display()
        ),
    )
    .replace(
        "path = \"/etc/keys/{lineage}.env\"",
        "path = \"/etc/keys/{lineage}.env\"\nshared = true",
    );
    let (cfg, warnings) = load(&src, &env).unwrap_or_else(|d| panic!("{d:#?}"));
    assert!(warnings.is_empty(), "{warnings:#?}");
    let config::StateConfig::Postgres(pg) = &cfg.daemon.state else {
        panic!("not a PostgreSQL state");
    };
    assert_eq!(pg.options.host, "db.internal");
    assert_eq!(pg.options.dbname, "rekey");
    assert!(
        pg.options.password.is_none(),
        "resolved only when run opens it"
    );
    assert_eq!(pg.password, Some(SecretRef::File(pw.clone())));
    assert_eq!(cfg.daemon.instance(), "node-a");
    assert_eq!(cfg.daemon.lease.ttl, Duration::from_secs(20));
    assert_eq!(cfg.daemon.lease.renew, Duration::from_secs(5));
    assert!(!format!("{cfg:?}").contains("pg-secret-pw"));
    let loc = cfg
        .daemon
        .state
        .location("node-a", cfg.daemon.lease.ttl)
        .unwrap();
    assert!(!format!("{loc:?}").contains("pg-secret-pw"));
    match loc {
        rekey::state::StateLocation::Postgres(o) => {
            assert_eq!(o.password.as_deref(), Some("pg-secret-pw"));
            assert_eq!(o.instance, "node-a");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_password_in_the_state_url_is_refused_where_written_and_never_echoed() {
    let base = BaseEnv::new();
    let src = on_postgres(
        "postgres://rekey:hunter2-pw@127.0.0.1/rekey",
        "seal_key = { env = \"OB_AK\" }",
    );
    let got = displayed(&load(&src, &base.env()));
    assert!(
        got.iter()
            .any(|d| d.starts_with("rekey.toml:2:9: error: `state`: ") && d.contains("password")),
        "{got:#?}"
    );
    assert!(got.iter().all(|d| !d.contains("hunter2-pw")), "{got:#?}");
}

#[test]
fn lease_timings_that_leave_no_room_for_a_renewal_are_refused() {
    let base = BaseEnv::new();
    let src = on_postgres(
        "postgres://rekey@127.0.0.1/rekey",
        "seal_key = { env = \"OB_AK\" }\nlease_ttl = \"10s\"\nlease_renew = \"6s\"",
    );
    let got = displayed(&load(&src, &base.env()));
    assert!(
        got.iter()
            .any(|d| d.contains("lease_renew = 6s does not fit lease_ttl = 10s")),
        "{got:#?}"
    );
}

#[test]
fn postgres_only_settings_on_a_sqlite_state_are_warned_about() {
    let base = BaseEnv::new();
    let src = with(&[(
        "state = \"/var/lib/rekey/state.db\"",
        "state = \"/var/lib/rekey/state.db\"\nstate_password = { env = \"OB_AK\" }",
    )]);
    let result = load(&src, &base.env());
    let got = displayed(&result);
    assert!(result.is_ok());
    assert!(
        got.iter()
            .any(|d| d
                .contains("warning: `state_password` has no effect: the state is a SQLite file")),
        "{got:#?}"
    );
}

#[test]
fn the_config_digest_ignores_per_node_settings_and_follows_policies() {
    let base = BaseEnv::new();
    let digest = |src: &str| load(src, &base.env()).unwrap().0.digest;
    let d = digest(BASE);
    assert_eq!(d.len(), 64);
    assert_eq!(
        d,
        digest(&with(&[(
            "state = \"/var/lib/rekey/state.db\"",
            "state = \"/srv/other.db\"\nlisten = \"127.0.0.1:9999\"\ninstance = \"node-b\""
        )]))
    );
    assert_ne!(
        d,
        digest(&with(&[("grace_period = \"2h\"", "grace_period = \"3h\"")]))
    );
}

/// `Config::policy` answers through an index built at its first call; a
/// `policies` list changed after that is still answered as a scan would.
#[test]
fn a_policy_is_found_by_name_before_and_after_the_list_changes() {
    let env = hermetic_env(&[("OB_AK", "a"), ("OB_SK", "b")]);
    let src = format!(
        "{MINIMAL}{}",
        MINIMAL
            .split("[[policy]]")
            .nth(1)
            .map(|p| format!(
                "[[policy]]{}",
                p.replace("\"maas\"", "\"other\"").replace("app-*", "web-*")
            ))
            .unwrap()
    );
    let (mut cfg, _) = load(&src, &env).unwrap();
    assert_eq!(cfg.policy("other").unwrap().name, "other");
    assert_eq!(cfg.policy("maas").unwrap().name, "maas");
    assert!(cfg.policy("nope").is_none());
    cfg.policies.swap(0, 1);
    let mut third = cfg.policies[0].clone();
    third.name = "third".into();
    cfg.policies.push(third);
    assert_eq!(cfg.policy("maas").unwrap().name, "maas");
    assert_eq!(cfg.policy("other").unwrap().name, "other");
    assert_eq!(cfg.policy("third").unwrap().name, "third");
    cfg.policies.retain(|p| p.name != "maas");
    assert!(cfg.policy("maas").is_none());
}
