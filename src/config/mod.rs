//! Configuration: the TOML schema (`raw`), the pure validation pass that
//! turns it into the domain types below (`validate`), name and target
//! templates (`template`), cron schedules (`schedule`) and secret references
//! (`secret_ref`).
//!
//! Loading is two phases, as in ripgrep and Vector: `raw` mirrors the file
//! with `deny_unknown_fields`; `validate` is pure (no I/O) and collects
//! *every* problem with its location. [`load`] adds the one I/O step,
//! checking that each secret reference resolves, and returns the config with
//! its warnings, or every error at once.

pub mod diag;
pub mod digest;
pub mod glob;
pub mod host;
pub mod ownership;
pub mod raw;
pub mod schedule;
pub mod secret_ref;
pub mod shared;
pub mod template;
pub mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use diag::{Diagnostic, Severity};
pub use schedule::Schedule;
pub use secret_ref::SecretRef;
pub use template::{NameTemplate, TargetTemplate};

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages and reloads.
    pub path: PathBuf,
    /// Where each item was written (`"providers.ob"`, `"sinks.f.path"`,
    /// `"daemon.listen"`, …), so that a problem found after validation
    /// (at start-up, on the host) is still reported as FILE:LINE:COL.
    pub origins: BTreeMap<String, Origin>,
    pub daemon: DaemonConfig,
    pub providers: BTreeMap<String, ProviderConfig>,
    pub sinks: BTreeMap<String, SinkConfig>,
    pub notify: BTreeMap<String, NotifyConfig>,
    pub policies: Vec<PolicyConfig>,
    /// What every node of one PostgreSQL state must agree on, as 64 hex
    /// characters ([`digest::of_source`]: providers, sinks, notify targets,
    /// policies; not `[daemon]`).
    pub digest: String,
    /// Where each policy is in `policies`, by name, built at the first
    /// [`Config::policy`]: every check, rotation step and status rebuild
    /// looks its policy up, and a scan of 1,000 policies per lookup was a
    /// measurable share of a planning round (issue 13).
    policy_index: std::sync::OnceLock<std::collections::HashMap<String, usize>>,
}

impl Config {
    /// The policy named `name`. O(1) through an index; a name the index
    /// does not place (`policies` changed after it was built) is looked
    /// for by a scan, so the answer is always what the scan would give.
    pub fn policy(&self, name: &str) -> Option<&PolicyConfig> {
        let index = self.policy_index.get_or_init(|| {
            let mut index = std::collections::HashMap::with_capacity(self.policies.len());
            for (i, p) in self.policies.iter().enumerate() {
                // The first of a name, as the scan finds it.
                index.entry(p.name.clone()).or_insert(i);
            }
            index
        });
        if let Some(p) = index.get(name).and_then(|&i| self.policies.get(i))
            && p.name == name
        {
            return Some(p);
        }
        self.policies.iter().find(|p| p.name == name)
    }

    /// An error about `item` (a key of [`Config::origins`]; the first of
    /// `items` that is known), located where it was written, else at the
    /// top of the file.
    pub fn error_at(
        &self,
        items: &[&str],
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Diagnostic {
        self.diagnostic_at(Severity::Error, items, message, hint)
    }

    /// As [`Config::error_at`], with a severity.
    pub fn diagnostic_at(
        &self,
        severity: Severity,
        items: &[&str],
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Diagnostic {
        let at = items
            .iter()
            .find_map(|i| self.origins.get(*i))
            .copied()
            .unwrap_or(Origin { line: 1, col: 1 });
        Diagnostic {
            severity,
            file: self.path.clone(),
            line: at.line,
            col: at.col,
            message: message.into(),
            hint,
        }
    }
}

/// A 1-based line and column in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub line: usize,
    pub col: usize,
}

/// What [`load_with`] checks beyond the file itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Resolve every secret reference and check its value's form (what
    /// `run` needs; `check --no-secrets`, `history` and `status` skip it).
    pub resolve_secrets: bool,
    /// Check the host ([`host::check`]): the state directory and each file
    /// sink's fixed directory exist and are writable by the service user.
    pub check_host: bool,
    /// Judge the host checks as the packaged service user when this is
    /// root in a shell (`rekey check`); `run` judges as itself.
    pub as_service_user: bool,
}

impl LoadOptions {
    /// `rekey run` and `rekey check`: everything.
    pub const FULL: LoadOptions = LoadOptions {
        resolve_secrets: true,
        check_host: true,
        as_service_user: false,
    };
    /// The file only: syntax, types, references between items.
    pub const FILE_ONLY: LoadOptions = LoadOptions {
        resolve_secrets: false,
        check_host: false,
        as_service_user: false,
    };
}

/// Where the state lives: `daemon.state`.
#[derive(Debug, Clone)]
pub enum StateConfig {
    /// A SQLite file; default `$STATE_DIRECTORY/state.db`, else `./rekey.db`.
    /// One node (role `single`).
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by several nodes, one of which leads
    /// (DESIGN §8).
    Postgres(Box<PostgresState>),
}

impl StateConfig {
    /// The SQLite file, when the state is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            StateConfig::Sqlite(p) => Some(p),
            StateConfig::Postgres(_) => None,
        }
    }

    /// For messages and `/status`: the file, or the URL (which never holds
    /// a password).
    pub fn display(&self) -> String {
        match self {
            StateConfig::Sqlite(p) => p.display().to_string(),
            StateConfig::Postgres(pg) => pg.url.clone(),
        }
    }

    /// Where the store opens, with the password resolved now (`run`), as
    /// node `instance`.
    ///
    /// Errors: the password reference does not resolve (message names the
    /// reference, never a value).
    pub fn location(
        &self,
        instance: &str,
        lease_ttl: std::time::Duration,
    ) -> Result<crate::state::StateLocation, String> {
        Ok(match self {
            StateConfig::Sqlite(p) => crate::state::StateLocation::Sqlite(p.clone()),
            StateConfig::Postgres(pg) => {
                let mut options = pg.options.clone();
                options.instance = instance.to_string();
                options.idle_in_transaction =
                    crate::state::postgres::idle_in_transaction_for(lease_ttl);
                if let Some(r) = &pg.password {
                    options.password = Some(
                        r.resolve_now()
                            .map_err(|e| format!("state_password ({r}): {e}"))?
                            .expose()
                            .to_string(),
                    );
                }
                crate::state::StateLocation::Postgres(options)
            }
        })
    }
}

/// `state = "postgres://USER@HOST:PORT/DBNAME?sslmode=…&sslrootcert=…"`.
#[derive(Debug, Clone)]
pub struct PostgresState {
    /// The URL as the store shows it (no password: one in it is refused).
    pub url: String,
    /// What the store connects with, password unset.
    pub options: crate::state::postgres::PgOptions,
    /// `daemon.state_password`.
    pub password: Option<SecretRef>,
}

/// How a PostgreSQL leader holds its lease (DESIGN §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// `daemon.lease_ttl`: how long the lease lasts past a renewal, judged
    /// by the database's clock. Default [`DEFAULT_LEASE_TTL`].
    pub ttl: Duration,
    /// `daemon.lease_renew`: how often the leader renews (at most half of
    /// `ttl`). Default [`DEFAULT_LEASE_RENEW`].
    pub renew: Duration,
}

/// Default `daemon.lease_ttl`.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
/// Default `daemon.lease_renew`.
pub const DEFAULT_LEASE_RENEW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// `daemon.state`: a SQLite file or a PostgreSQL URL.
    pub state: StateConfig,
    /// `daemon.instance`: this node's name in the lease row and `/status`
    /// (`None`: the host name; see [`DaemonConfig::instance`]).
    pub instance: Option<String>,
    /// Lease timing (PostgreSQL only).
    pub lease: LeaseTiming,
    pub listen: ListenAddr,
    /// Required for POST endpoints (and for any non-loopback listener).
    pub admin_token: Option<SecretRef>,
    pub max_concurrent_rotations: usize,
    pub shutdown_timeout: Duration,
    /// Where the sealing key comes from; `None` = a 0600 file beside the DB.
    pub seal_key: Option<SecretRef>,
    /// A Unix socket serving the admin `POST` endpoints (and the GETs);
    /// when set, `listen` serves only the read-only GETs. Access is the
    /// socket's: mode 0660, group [`DaemonConfig::admin_group`].
    pub admin_listen: Option<PathBuf>,
    /// Group of the admin socket; default [`DEFAULT_ADMIN_GROUP`].
    pub admin_group: String,
    /// Host names the TCP endpoint answers besides loopback names
    /// (`localhost`, `*.localhost`) and IP literals; others get 421 (a
    /// DNS-rebinding page names the attacker's host).
    pub allowed_hosts: Vec<String>,
}

impl DaemonConfig {
    /// This node's name: `daemon.instance`, else the host name.
    pub fn instance(&self) -> String {
        self.instance
            .clone()
            .unwrap_or_else(crate::rotation::report::hostname)
    }
}

/// Group that owns the admin socket unless `admin_group` says otherwise.
pub const DEFAULT_ADMIN_GROUP: &str = "rekey-admin";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Requests per second a provider accepts; paced by a token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
}

impl std::str::FromStr for RateLimit {
    type Err = String;

    /// `N/s`, `N/min` or `N/h` (also `sec`, `second`, `m`, `minute`,
    /// `hour`); the rate `rate_limit` and the emulators' `--rate-limit` take.
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (n, unit) = text.split_once('/').ok_or_else(|| {
            format!("invalid rate {text:?}: write it like 20/s, 600/min or 1000/h")
        })?;
        let n: f64 = n
            .trim()
            .parse()
            .map_err(|_| format!("invalid rate {text:?}: {n:?} is not a number"))?;
        let secs = match unit.trim() {
            "s" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" => 60.0,
            "h" | "hour" => 3600.0,
            other => return Err(format!("invalid rate {text:?}: unknown unit {other:?}")),
        };
        if !(n > 0.0 && n.is_finite()) {
            return Err(format!("invalid rate {text:?}: must be positive"));
        }
        Ok(RateLimit {
            per_second: n / secs,
        })
    }
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub endpoint: String,
    pub rate_limit: Option<RateLimit>,
    pub ca_file: Option<PathBuf>,
    /// Per-request timeout.
    pub timeout: Duration,
    pub kind: ProviderKind,
}

/// The kind's own settings of a `[providers.NAME]`: one arm per provider,
/// each holding the config struct defined beside its client (with its
/// [`ProviderSpec`](validate::ProviderSpec), which reads and checks it).
#[derive(Debug, Clone)]
pub enum ProviderKind {
    OceanBase(crate::provider::oceanbase::OceanBaseConfig),
    Tencent(crate::provider::tencent::TencentConfig),
    Huawei(crate::provider::huawei::HuaweiConfig),
}

impl ProviderKind {
    /// The spec of this kind: its config rules and its client's builder.
    pub fn spec(&self) -> &'static dyn validate::ProviderSpec {
        match self {
            ProviderKind::OceanBase(_) => &crate::provider::oceanbase::Spec,
            ProviderKind::Tencent(_) => &crate::provider::tencent::Spec,
            ProviderKind::Huawei(_) => &crate::provider::huawei::Spec,
        }
    }

    /// `kind = "…"` in the config.
    pub fn as_str(&self) -> &'static str {
        self.spec().kind()
    }

    /// The kind's settings as the cross-provider checks see them.
    pub fn account(&self) -> &dyn ProviderAccount {
        match self {
            ProviderKind::OceanBase(c) => c,
            ProviderKind::Tencent(c) => c,
            ProviderKind::Huawei(c) => c,
        }
    }
}

/// What the checks across providers (`config::ownership`: which entries
/// are one account, which may share a walk) need of a kind's settings,
/// without knowing the kind. Each kind's config struct implements it
/// beside its client.
pub trait ProviderAccount {
    /// Who owns the keys, besides the endpoint's host: `org=… project=…`.
    fn account(&self) -> String;
    /// Everything calls authenticate with, in a fixed order, by label.
    fn credentials(&self) -> Vec<(&'static str, Credential<'_>)>;
    /// What a listing depends on beyond the account and credentials
    /// (Tencent: ` region=…`, keys being listed per request region).
    fn listing_scope(&self) -> String {
        String::new()
    }
}

/// One part of what a provider authenticates with.
pub enum Credential<'a> {
    /// A secret reference (a literal is hashed, never shown).
    Secret(&'a SecretRef),
    /// A part that is no secret (an IAM endpoint, domain and user).
    Plain(String),
}

pub use crate::provider::huawei::HuaweiAuth;

#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub name: String,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    pub kind: SinkKind,
}

impl SinkConfig {
    /// The target template, for sinks that write to a named place; a sink
    /// used by a policy with several lineages must put `{lineage}` in it.
    pub fn target(&self) -> Option<&TargetTemplate> {
        match &self.kind {
            SinkKind::File(f) => Some(&f.path),
            SinkKind::Vault(v) => Some(&v.path),
            SinkKind::Webhook(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum SinkKind {
    File(FileSinkConfig),
    Webhook(WebhookSinkConfig),
    Vault(VaultSinkConfig),
}

impl SinkKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            SinkKind::File(_) => "file",
            SinkKind::Webhook(_) => "webhook",
            SinkKind::Vault(_) => "vault",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// The secret only (first field when the provider returns several).
    Raw,
    /// `NAME=value` lines.
    Env,
    /// A JSON object with the key's fields and metadata.
    Json,
}

#[derive(Debug, Clone)]
pub struct FileSinkConfig {
    pub path: TargetTemplate,
    pub format: FileFormat,
    pub mode: u32,
    pub owner: Option<String>,
    pub group: Option<String>,
    /// argv run after the write (no shell); non-zero exit fails the publish.
    pub on_publish: Option<Vec<String>>,
    pub on_publish_timeout: Duration,
    /// env format: secret field → variable name overrides.
    pub env_names: BTreeMap<String, String>,
    /// raw format: which secret field the file holds (`None`: the
    /// provider's primary field, see `SecretFields::primary`).
    pub field: Option<String>,
    /// Variables of the daemon's environment passed to `on_publish`, beyond
    /// the fixed minimal set (`PATH`, locale, `REKEY_*`).
    pub pass_env: Vec<String>,
    /// `shared = true`: every node mounts the directory at the same path
    /// (required with a PostgreSQL state).
    pub shared: bool,
}

#[derive(Debug, Clone)]
pub struct WebhookSinkConfig {
    pub url: String,
    /// Signing secrets (`whsec_…`); several sign at once during a rotation
    /// of the receiver's secret.
    pub secrets: Vec<SecretRef>,
}

#[derive(Debug, Clone)]
pub struct VaultSinkConfig {
    pub address: String,
    pub mount: String,
    pub path: TargetTemplate,
    pub namespace: Option<String>,
    pub auth: VaultAuth,
    /// Overwrite an existing secret that rekey did not write for this
    /// policy and lineage (default: refuse).
    pub adopt_existing: bool,
}

#[derive(Debug, Clone)]
pub enum VaultAuth {
    Token(SecretRef),
    AppRole {
        role_id: SecretRef,
        secret_id: SecretRef,
        /// Auth mount, default `approle`.
        mount: String,
    },
}

#[derive(Debug, Clone)]
pub struct NotifyConfig {
    pub name: String,
    pub url: String,
    pub secrets: Vec<SecretRef>,
    /// `None` = every event type.
    pub events: Option<Vec<String>>,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

impl NotifyConfig {
    pub fn wants(&self, event_type: &str) -> bool {
        self.events
            .as_ref()
            .is_none_or(|e| e.iter().any(|t| t == event_type))
    }
}

/// Event types of DESIGN §5.
pub const EVENT_TYPES: &[&str] = &[
    "rotation.started",
    "key.created",
    "key.published",
    "rotation.completed",
    "rotation.failed",
    "key.expiring",
    "key.deleted",
    "key.retired",
    "key.unrecognised",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plan and report; never create or delete.
    Observe,
    Rotate,
}

/// How long before expiry a key is replaced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lead {
    Absolute(Duration),
    /// A share of the key's lifetime, in percent (0 < p ≤ 100).
    Share(f64),
}

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub name: String,
    pub provider: String,
    pub mode: Mode,
    /// The glob as written, for messages.
    pub match_glob: String,
    /// The glob compiled (shared by policies of one glob text).
    pub matcher: std::sync::Arc<glob::KeyGlob>,
    pub schedule: Schedule,
    pub rotate_before_expiry: Option<Lead>,
    pub max_age: Option<Duration>,
    pub grace_period: Duration,
    pub sinks: Vec<String>,
    pub name_template: NameTemplate,
    /// With no matching key, create the first one of this lineage.
    pub bootstrap: Option<String>,
    /// Provider-specific create parameters, as JSON.
    pub create: serde_json::Map<String, serde_json::Value>,
    /// Create/publish attempts before a rotation is `failed`.
    pub max_attempts: u32,
    /// Failures of one step before its lineage reports `failing`
    /// (`step_failing` / `retire_failing`, DESIGN §4); 1–100, default
    /// [`crate::rotation::health::FAILING_AFTER`] (3), and never more than
    /// `max_attempts` in effect.
    pub failing_after_failures: u32,
    /// How much longer than its grace period a rotation may stay
    /// unfinished before it is `rotation_stuck`, and how long an abandoned
    /// rotation's undeleted next key may wait before it is `cleanup_stuck`
    /// (DESIGN §4); default
    /// [`crate::rotation::health::STUCK_AFTER`] (1 h).
    pub stuck_after: Duration,
    /// How long before a key's expiry `key.expiring` is sent (once per
    /// threshold, for a stale key or a current key that is not being
    /// replaced); distinct, longest first; default 7d, 1d, 1h.
    pub expiring_warnings: Vec<Duration>,
}

impl PolicyConfig {
    pub fn matches(&self, key_name: &str) -> bool {
        self.matcher.is_match(key_name)
    }
}

/// Read, parse, validate and resolve a config file. `Ok` carries the config
/// and its warnings; `Err` carries every diagnostic (errors and warnings).
pub fn load(path: &Path) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
    let src = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => {
            return Err(vec![Diagnostic {
                severity: Severity::Error,
                file: path.to_path_buf(),
                line: 1,
                col: 1,
                message: format!("cannot read config file: {}", secret_ref::io_reason(&e)),
                hint: Some("check the path given with -c/--config and its permissions".into()),
            }]);
        }
    };
    let (cfg, mut diags) = load_str(path, &src, &secret_ref::Env::from_process())?;
    diags.extend(exposure_warnings(path, &cfg));
    Ok((cfg, diags))
}

/// The permission bits of `path` when other users may read it (`o+r`);
/// `None` when they may not or it cannot be inspected. Follows links, as a
/// reader would.
pub fn others_may_read(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o004 != 0).then_some(mode)
}

/// Warnings for files and directories other local users could read: the
/// config itself (it names credentials, may hold literals), the state
/// directory (the DB and, when no `seal_key` is set, the seal key beside
/// it) and the state DB and key files. Secret files referenced with
/// `{ file = … }` are checked where they are resolved.
pub fn exposure_warnings(config_path: &Path, cfg: &Config) -> Vec<Diagnostic> {
    use std::os::unix::fs::PermissionsExt;
    let warn = |message: String, hint: String| Diagnostic {
        severity: Severity::Warning,
        file: config_path.to_path_buf(),
        line: 1,
        col: 1,
        message,
        hint: Some(hint),
    };
    let mut out = Vec::new();
    if let Some(mode) = others_may_read(config_path) {
        out.push(warn(
            format!("the config file is readable by other users (mode {mode:04o})"),
            format!("chmod o-rwx {}", config_path.display()),
        ));
    }
    let Some(state) = cfg.daemon.state.sqlite_path() else {
        return out;
    };
    if let Some(dir) = state.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(m) = std::fs::metadata(dir)
        && m.permissions().mode() & 0o007 != 0
    {
        out.push(warn(
            format!(
                "the state directory {} is open to other users (mode {:04o})",
                dir.display(),
                m.permissions().mode() & 0o7777
            ),
            format!("chmod o-rwx {}", dir.display()),
        ));
    }
    for file in [state.to_path_buf(), crate::state::key_path(state)] {
        if let Some(mode) = others_may_read(&file) {
            out.push(warn(
                format!(
                    "{} is readable by other users (mode {mode:04o})",
                    file.display()
                ),
                format!("chmod 0600 {}", file.display()),
            ));
        }
    }
    out
}

/// As [`load`], checking what `opts` asks for. `rekey check` and `rekey
/// run` both call this with [`LoadOptions::FULL`]: everything `run` refuses
/// before serving, `check` reports, through this one function.
pub fn load_with(
    path: &Path,
    opts: LoadOptions,
) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
    let src = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => {
            return Err(vec![Diagnostic {
                severity: Severity::Error,
                file: path.to_path_buf(),
                line: 1,
                col: 1,
                message: format!("cannot read config file: {}", secret_ref::io_reason(&e)),
                hint: Some(format!(
                    "give the config with -c FILE or $REKEY_CONFIG (default {DEFAULT_CONFIG})"
                )),
            }]);
        }
    };
    let env = secret_ref::Env::from_process();
    let (config, mut diags) = validate::validate_with(path, &src, &env, opts.resolve_secrets);
    if opts.check_host
        && let Some(c) = &config
    {
        let user = if opts.as_service_user {
            host::ServiceUser::detect()
        } else {
            host::ServiceUser::Current
        };
        diags.extend(host::check(c, &env, &user));
        diags.extend(exposure_warnings(path, c));
    }
    diags.sort_by_key(|d| (d.line, d.col, d.severity));
    match config {
        Some(c) if !diags.iter().any(|d| d.severity == Severity::Error) => Ok((c, diags)),
        _ => Err(diags),
    }
}

/// Where the commands look for the config without `-c` or `$REKEY_CONFIG`.
pub const DEFAULT_CONFIG: &str = "/etc/rekey/rekey.toml";

/// As [`load`], from text already read, resolving secrets against `env`.
pub fn load_str(
    path: &Path,
    src: &str,
    env: &secret_ref::Env,
) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
    let (config, mut diags) = validate::validate(path, src, env);
    diags.sort_by_key(|d| (d.line, d.col, d.severity));
    match config {
        Some(c) if !diags.iter().any(|d| d.severity == Severity::Error) => Ok((c, diags)),
        _ => Err(diags),
    }
}

/// The embedded-default and example configs shipped with rekey.
pub const EXAMPLE: &str = include_str!("../../config/rekey.example.toml");
