//! Commands (DESIGN §1). Each command is a function returning the process
//! exit code; `anyhow` is used here and in `main` only.
//!
//! Conventions every command keeps: `-c/--config FILE` defaults to
//! `$REKEY_CONFIG`, else `/etc/rekey/rekey.toml`; `--endpoint` overrides the
//! config's `daemon.listen`; `--credentials-dir DIR` stands in for
//! `$CREDENTIALS_DIRECTORY` by hand; commands that only read (`status`,
//! `history`) resolve no secret; durations print one way
//! ([`crate::clock::human`]).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use zeroize::Zeroizing;

use crate::config::{self, Severity};
use crate::emulator::oceanbase::{
    self as ob_emulator, DigestAlgorithm, ListOrder, OceanBaseEmulatorOptions,
};
use crate::logging::LogFormat;
use crate::secret::Secret;
use crate::status::RotateReply;
use crate::status::client::{self, Client, Endpoint};

pub mod admin;
pub mod migrate;

#[derive(Debug, Parser)]
#[command(
    name = "rekey",
    version,
    about = "Keeps cloud API keys fresh: detect, create, publish, retire."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter (e.g. `info`, `rekey=debug`); default `$RUST_LOG` or `info`.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// Where `{ credential = "NAME" }` references are read from when run by
    /// hand (systemd sets $CREDENTIALS_DIRECTORY for the service), e.g.
    /// /etc/rekey/credentials.
    #[arg(long, global = true, value_name = "DIR")]
    pub credentials_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// The config file, for the commands that read one.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// Config file.
    #[arg(short, long, env = "REKEY_CONFIG", default_value = config::DEFAULT_CONFIG)]
    pub config: PathBuf,
}

/// What `plan` and `status` show: a filter and a shape.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// Only this policy.
    #[arg(long)]
    pub policy: Option<String>,
    /// Only this lineage (of every shown policy).
    #[arg(long)]
    pub lineage: Option<String>,
    /// Only what needs action: lineages due for rotation, policies that are
    /// misconfigured or unhealthy.
    #[arg(long)]
    pub due: bool,
    /// One line per policy.
    #[arg(long)]
    pub summary: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run on the embedded default: a local OceanBase emulator, state and
    /// keys under ./rekey-dev/, a rotation every ~20 s.
    Dev {
        /// Working directory for state, config and keys.
        #[arg(long, default_value = "rekey-dev")]
        dir: PathBuf,
    },
    /// Run the daemon in the foreground (what systemd runs).
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Validate everything `run` validates before serving: the config, its
    /// secret references and their values' form, the state directory and
    /// the file sinks' directories. Never calls a provider.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Check everything but the secrets' values (for a root shell
        /// without the service's credentials or environment).
        #[arg(long)]
        no_secrets: bool,
    },
    /// Dry run: list keys per policy and say what would rotate or be
    /// deleted. Exit 0: nothing to do; 2: something is due or
    /// misconfigured; 1: an error.
    Plan {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        filter: Filter,
    },
    /// Ask a running daemon how it is.
    Status {
        /// Status endpoint (http://HOST:PORT or unix:/path); default: the
        /// config's `daemon.listen`, else http://127.0.0.1:9477.
        #[arg(long)]
        endpoint: Option<String>,
        /// Read the endpoint from this config (default $REKEY_CONFIG, else
        /// /etc/rekey/rekey.toml when it exists). No secret is resolved.
        #[arg(short, long, env = "REKEY_CONFIG")]
        config: Option<PathBuf>,
        /// Print the JSON document as served.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        filter: Filter,
    },
    /// Ask a running daemon to rotate a policy now.
    Rotate {
        policy: String,
        /// Only this lineage of the policy.
        #[arg(long)]
        lineage: Option<String>,
        /// Status endpoint (http://HOST:PORT or unix:/path); default: the
        /// config's `daemon.listen` with -c, else http://127.0.0.1:9477.
        #[arg(long)]
        endpoint: Option<String>,
        /// A file holding the admin token.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Read the admin token (and the endpoint) from this config's
        /// `[daemon]` section (default $REKEY_CONFIG, else /etc/rekey/rekey.toml
        /// when it exists and no --endpoint is given); only the admin token
        /// is resolved (see --credentials-dir).
        #[arg(short, long, env = "REKEY_CONFIG")]
        config: Option<PathBuf>,
        /// For a leaked key: delete the old key as soon as every sink has the new one.
        #[arg(long)]
        revoke_old_immediately: bool,
        /// Follow the rotation: exit 0 once every sink has the new key
        /// (`--wait`) or once the old key is deleted too
        /// (`--wait=completed`); exit 1 if it fails.
        #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "published")]
        wait: Option<admin::WaitFor>,
    },
    /// Ask the daemon to run the step a rotation waits for now (skip its
    /// backoff), or to resume a rotation that failed after creating its key.
    Retry {
        rotation: String,
        #[command(flatten)]
        admin: admin::AdminArgs,
    },
    /// End a rotation: the old key stays. Before it publishes, its next
    /// key is deleted when no sink acknowledged it; in its grace period,
    /// retirement stops and both keys are kept (the old one is never
    /// deleted by rekey). With -c and no daemon running, works offline on
    /// the state DB.
    Abandon {
        rotation: String,
        #[command(flatten)]
        admin: admin::AdminArgs,
    },
    /// Recover lineages after the state DB was lost or restored from an old
    /// backup: a generated key becomes current only where a readable sink
    /// (file, Vault) proves it holds that key. Run with the daemon stopped.
    Recover {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this policy.
        #[arg(long)]
        policy: Option<String>,
        /// Only this lineage (with --policy on a DB that knows the policy).
        #[arg(long)]
        lineage: Option<String>,
    },
    /// Copy a SQLite state into an empty PostgreSQL state (one
    /// transaction, row counts verified), for running several instances.
    /// Stop the daemon first. The seal key is not copied: the command says
    /// what to do with it.
    MigrateState(migrate::MigrateArgs),
    /// Rotation history from the state DB (no secret is resolved).
    History {
        policy: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
        /// How many rotations to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a provider emulator on loopback (demos, tests, benchmarks).
    Emulate {
        #[command(subcommand)]
        provider: EmulateCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), generated from this command line.
    #[command(hide = true)]
    Man,
}

#[derive(Debug, Subcommand)]
pub enum EmulateCommand {
    /// OceanBase Cloud MaaS API keys: list, create, delete, HTTP Digest auth.
    #[command(name = "oceanbase")]
    OceanBase(Box<OceanBaseEmulateArgs>),
    /// Tencent Cloud API Gateway keys (TC3 signatures, usage plans).
    Tencent(Box<crate::emulator::tencent::EmulateArgs>),
    /// Huawei Cloud NES credentials, with a fake IAM token endpoint.
    Huawei(Box<crate::emulator::huawei::EmulateArgs>),
}

/// `rekey emulate oceanbase`: the knobs of [`OceanBaseEmulatorOptions`].
#[derive(Debug, clap::Args)]
pub struct OceanBaseEmulateArgs {
    /// Address to listen on; port 0 picks a free port (printed at start).
    #[arg(long, default_value = "127.0.0.1:9480")]
    pub listen: SocketAddr,
    /// Keys present at start.
    #[arg(long, default_value_t = 0)]
    pub keys: usize,
    /// Name prefix of the seeded keys (`app-00001`, `app-00002`, …).
    #[arg(long, default_value = "app-")]
    pub name_prefix: String,
    /// Lifetime of seeded and new keys, or `never` (expiresAt null).
    #[arg(long, default_value = "30d", value_parser = parse_lifetime)]
    pub lifetime: Lifetime,
    /// How many seeded keys expire soon (within `--within`).
    #[arg(long, default_value_t = 0)]
    pub expiring: usize,
    /// Window in which the `--expiring` keys expire.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub within: Duration,
    /// The fault dials every emulator takes (`--latency`, `--error-rate`,
    /// `--rate-limit`: beyond it 429 with Retry-After, `--seed`).
    #[command(flatten)]
    pub dials: crate::emulator::common::DialKnobs,
    /// AccessKey ID clients authenticate with (Digest username).
    #[arg(long, default_value = ob_emulator::DEFAULT_ACCESS_KEY_ID)]
    pub access_key_id: String,
    /// AccessKey secret clients authenticate with (Digest password).
    #[arg(
        long,
        env = "REKEY_EMULATOR_ACCESS_KEY_SECRET",
        default_value = ob_emulator::DEFAULT_ACCESS_KEY_SECRET,
        hide_env_values = true
    )]
    pub access_key_secret: String,
    /// Organization the X-OB-Org-Id header must name.
    #[arg(long, default_value = ob_emulator::DEFAULT_ORG_ID)]
    pub org_id: String,
    /// Project the X-OB-Project-Id header must name.
    #[arg(long, default_value = ob_emulator::DEFAULT_PROJECT_ID)]
    pub project_id: String,
    /// Digest algorithms offered, one challenge each, in this order.
    #[arg(long, value_delimiter = ',', default_value = "SHA-256,MD5", value_parser = parse_digest_algorithm)]
    pub digest_algorithms: Vec<DigestAlgorithm>,
    /// Age at which a nonce is refused with stale=true.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub nonce_ttl: Duration,
    /// Order of list pages: `oldest` (creation order) or `newest` first.
    #[arg(long, default_value = "oldest", value_parser = parse_list_order)]
    pub list_order: ListOrder,
    /// Knobs every emulator shares (`--list-delay`: how long a created key
    /// stays out of list answers, eventual consistency).
    #[command(flatten)]
    pub knobs: crate::emulator::common::CommonKnobs,
    /// Offer an RFC 2069 Digest challenge without qop (as some servers do).
    #[arg(long)]
    pub digest_no_qop: bool,
}

/// A key lifetime, or none (`never`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime(pub Option<Duration>);

fn parse_lifetime(s: &str) -> Result<Lifetime, String> {
    match s.trim() {
        "never" | "none" => Ok(Lifetime(None)),
        t => humantime::parse_duration(t)
            .map(|d| Lifetime(Some(d)))
            .map_err(|e| format!("{e} (or `never`)")),
    }
}

fn parse_list_order(s: &str) -> Result<ListOrder, String> {
    ListOrder::parse(s).ok_or_else(|| format!("unknown list order {s:?} (oldest or newest)"))
}

fn parse_digest_algorithm(s: &str) -> Result<DigestAlgorithm, String> {
    DigestAlgorithm::parse(s)
        .ok_or_else(|| format!("unknown Digest algorithm {s:?} (MD5 or SHA-256)"))
}

impl OceanBaseEmulateArgs {
    pub fn options(&self) -> OceanBaseEmulatorOptions {
        OceanBaseEmulatorOptions {
            keys: self.keys,
            name_prefix: self.name_prefix.clone(),
            lifetime: self.lifetime.0,
            expiring: self.expiring,
            within: self.within,
            latency: self.dials.latency,
            error_rate: self.dials.error_rate,
            rate_limit: self.dials.rate_limit,
            seed: self.dials.seed,
            access_key_id: self.access_key_id.clone(),
            access_key_secret: Secret::new(self.access_key_secret.clone()),
            org_id: self.org_id.clone(),
            project_id: self.project_id.clone(),
            algorithms: self.digest_algorithms.clone(),
            nonce_ttl: self.nonce_ttl,
            list_order: self.list_order,
            list_delay: self.knobs.list_delay,
            digest_qop: !self.digest_no_qop,
        }
    }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    if let Some(dir) = &cli.credentials_dir {
        // Before any thread starts: every `{ credential = … }` resolution,
        // here and in the daemon, reads this variable.
        // SAFETY: single-threaded at this point (no runtime yet).
        unsafe {
            std::env::set_var("CREDENTIALS_DIRECTORY", dir);
        }
    }
    if matches!(
        cli.command,
        Command::Check { .. }
            | Command::Plan { .. }
            | Command::History { .. }
            | Command::Status { .. }
            | Command::Completions { .. }
            | Command::Man
    ) {
        // One-shot commands piped into `head` should end quietly, as
        // Unix tools do; the daemon keeps SIGPIPE ignored so a broken log
        // pipe can never kill it.
        // SAFETY: resetting a signal disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli.command {
        Command::Check { config, no_secrets } => Ok(check(&config.config, no_secrets)),
        Command::Run { config } => run_daemon(&config.config),
        Command::Plan { config, filter } => plan(&config.config, &filter),
        Command::History {
            policy,
            config,
            limit,
            json,
        } => history(&config.config, policy.as_deref(), limit, json),
        Command::Recover {
            config,
            policy,
            lineage,
        } => recover(&config.config, policy.as_deref(), lineage.as_deref()),
        Command::Status {
            endpoint,
            config,
            json,
            filter,
        } => status(endpoint.as_deref(), config.as_deref(), json, &filter),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "rekey", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            man_page(cmd, &mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Rotate {
            policy,
            lineage,
            endpoint,
            token_file,
            config,
            revoke_old_immediately,
            wait,
        } => rotate(RotateArgs {
            policy,
            lineage,
            endpoint,
            token_file,
            config,
            revoke_old_immediately,
            wait,
        }),
        Command::Retry { rotation, admin } => {
            admin::command(crate::status::Command::Retry, &rotation, &admin)
        }
        Command::Abandon { rotation, admin } => {
            admin::command(crate::status::Command::Abandon, &rotation, &admin)
        }
        Command::MigrateState(args) => migrate::migrate_state(&args),
        Command::Emulate { provider } => emulate(provider),
        Command::Dev { dir } => dev(&dir),
    }
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// A runtime for the one-shot client commands.
fn client_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn dev(dir: &Path) -> Result<ExitCode> {
    let rt = tokio_runtime()?;
    match rt.block_on(crate::dev::run(dir)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(crate::dev::DevError::Daemon(crate::daemon::DaemonError::Config(diags))) => {
            print_diagnostics(&diags);
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("rekey dev: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn run_daemon(path: &Path) -> Result<ExitCode> {
    let rt = tokio_runtime()?;
    match rt.block_on(crate::daemon::run(path, crate::daemon::Options::default())) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(crate::daemon::DaemonError::Config(diags)) => {
            print_diagnostics(&diags);
            eprintln!(
                "rekey: {}: refusing to start with an invalid configuration",
                path.display()
            );
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("rekey: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn load_or_exit(path: &Path) -> Result<config::Config, ExitCode> {
    load_or_exit_with(
        path,
        config::LoadOptions {
            resolve_secrets: true,
            ..config::LoadOptions::FILE_ONLY
        },
    )
}

fn load_or_exit_with(path: &Path, opts: config::LoadOptions) -> Result<config::Config, ExitCode> {
    match config::load_with(path, opts) {
        Ok((cfg, warnings)) => {
            print_diagnostics(&warnings);
            Ok(cfg)
        }
        Err(diags) => {
            print_diagnostics(&diags);
            Err(ExitCode::from(1))
        }
    }
}

/// A signed span for tables: `6d 23h`, or `-1m 30s` in the past.
fn human_delta(d: chrono::Duration) -> String {
    let s = crate::clock::human_delta(d);
    if d < chrono::Duration::zero() {
        format!("-{s}")
    } else {
        s
    }
}

/// `rekey plan`: list and decide, change nothing (no provider mutation,
/// no DB write: the DB, if any, is opened read-only).
/// `println!` for lines that hold outside strings (key names, ids, errors):
/// control characters are escaped, so a key name cannot move the cursor,
/// clear the operator's terminal or fake a line of the table.
macro_rules! outln {
    ($($t:tt)*) => {
        println!("{}", crate::logging::escape(&format!($($t)*)))
    };
}

fn plan(path: &Path, filter: &Filter) -> Result<ExitCode> {
    use crate::rotation::policy;
    let cfg = match load_or_exit(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if let Some(name) = &filter.policy
        && cfg.policy(name).is_none()
    {
        let names: Vec<&str> = cfg.policies.iter().map(|p| p.name.as_str()).collect();
        eprintln!(
            "rekey: no policy {name:?} in {} (policies: {})",
            path.display(),
            names.join(", ")
        );
        return Ok(ExitCode::from(1));
    }
    // Exit 2 when anything is due or misconfigured (like `terraform plan
    // -detailed-exitcode`), 1 on an error, 0 when there is nothing to do.
    let mut actionable = false;
    let metrics = crate::metrics::Metrics::new();
    let rt = tokio_runtime()?;
    let store = if cfg.daemon.state.sqlite_path().is_none_or(Path::exists) {
        match open_state(&cfg.daemon, true) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!(
                    "warning: {e}; planning without rekey's history (lineages come from key names only)"
                );
                None
            }
        }
    } else {
        None
    };
    let now = chrono::Utc::now();
    let mut failed = false;
    for p in &cfg.policies {
        if filter.policy.as_ref().is_some_and(|f| *f != p.name) {
            continue;
        }
        let Some(pc) = cfg.providers.get(&p.provider) else {
            continue;
        };
        let provider = match crate::provider::build(pc, &metrics) {
            Ok(x) => x,
            Err(e) => {
                outln!(
                    "policy {}: cannot build provider {}: {e}",
                    p.name,
                    p.provider
                );
                failed = true;
                continue;
            }
        };
        let listing = match rt.block_on(crate::provider::listing::Listing::walk(
            provider.as_ref(),
            &crate::clock::SystemClock,
            &|n: &str| p.matches(n),
        )) {
            Ok(l) => l,
            Err(e) => {
                outln!("policy {}: cannot list keys: {e}", p.name);
                failed = true;
                continue;
            }
        };
        let ledger = match &store {
            Some(s) => policy::Ledger::load(s, &p.name, policy::rivals(&cfg, p))?,
            None => policy::Ledger::default(),
        };
        let views = policy::assign_lineages(p, listing.to_keys(), &ledger);
        let targets: Vec<_> = p
            .sinks
            .iter()
            .map(|s| {
                (
                    s.clone(),
                    cfg.sinks.get(s).and_then(|c| c.target().cloned()),
                )
            })
            .collect();
        let plan = policy::plan(p, views, &ledger, &targets, Some(listing.started_at), now);
        let mode = match p.mode {
            config::Mode::Observe => "observe",
            config::Mode::Rotate => "rotate",
        };
        let due = plan.lineages.iter().filter(|l| l.decision.rotate).count();
        if plan.misconfigured.is_some() || due > 0 {
            actionable = true;
        }
        if filter.summary {
            let next = plan
                .lineages
                .iter()
                .filter(|l| !l.decision.rotate)
                .filter_map(|l| l.decision.rotate_at)
                .min()
                .map(|t| format!(", next rotation in {}", human_delta(t - now)))
                .unwrap_or_default();
            outln!(
                "{:<24} {:<13} {} lineage(s), {due} due{next}{}",
                p.name,
                plan.health.as_str(),
                plan.lineages.len(),
                if plan.misconfigured.is_some() {
                    ", misconfigured"
                } else {
                    ""
                }
            );
            continue;
        }
        if filter.due && plan.misconfigured.is_none() && due == 0 {
            continue;
        }
        outln!(
            "policy {} (provider {}, mode {mode}, match {:?}): {}",
            p.name,
            p.provider,
            p.match_glob,
            plan.health.as_str()
        );
        if let Some(m) = &plan.misconfigured {
            outln!("  misconfigured: {m}; nothing would change");
        }
        if plan.lineages.is_empty() {
            outln!("  no keys match");
        }
        for l in &plan.lineages {
            if filter.lineage.as_ref().is_some_and(|f| *f != l.name)
                || (filter.due && !l.decision.rotate)
            {
                continue;
            }
            let action = if l.decision.rotate {
                "ROTATE NOW"
            } else if l.decision.reason == policy::Reason::InProgress {
                "in progress"
            } else {
                "no action"
            };
            outln!(
                "  lineage {}: {action} [{}] {}",
                policy::escaped(&l.name),
                l.condition.unwrap_or(l.decision.reason.as_str()),
                l.decision.message
            );
            for (k, st) in &l.keys {
                let age = k
                    .key
                    .created_at
                    .map(|c| human_delta(now - c))
                    .unwrap_or_else(|| "?".into());
                let exp = k
                    .key
                    .expires_at
                    .map(|e| {
                        if e > now {
                            format!("in {}", crate::clock::human_delta(e - now))
                        } else {
                            format!("{} ago", crate::clock::human_delta(e - now))
                        }
                    })
                    .unwrap_or_else(|| "never".into());
                let lead = policy::effective_lead(p, &k.key)
                    .map(|l| format!(" lead {}", human_delta(l)))
                    .unwrap_or_default();
                outln!(
                    "    {:<10} {:<40} id {:<24} age {:<8} expires {:<12}{lead}",
                    serde_json::to_value(st)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    policy::escaped(&k.key.name),
                    policy::escaped(&k.key.id),
                    age,
                    exp
                );
            }
            // Grace outliving a key's lead: the old key would still be in
            // grace when its replacement is due (the daemon then cuts it
            // short; DESIGN §3).
            if let Some(c) = &l.current
                && let (Some(created), Some(expires)) = (c.key.created_at, c.key.expires_at)
                && let Some(lead) = policy::effective_lead(p, &c.key)
                && let Ok(grace) = chrono::Duration::from_std(p.grace_period)
                && expires > created
                && grace >= (expires - created) - lead
            {
                println!(
                    "    warning: grace_period ({}) outlives this key's time before its lead ({}): each old key would still be in grace when its replacement is due; shorten grace_period",
                    humantime::format_duration(p.grace_period),
                    human_delta((expires - created) - lead)
                );
            }
            if let Some(t) = l.decision.rotate_at
                && !l.decision.rotate
                && l.decision.reason == policy::Reason::Fresh
            {
                outln!(
                    "    rotate at {} (in {})",
                    t.to_rfc3339(),
                    human_delta(t - now)
                );
            }
            if l.decision.rotate && p.mode == config::Mode::Rotate {
                let example = p.name_template.render(&l.name, &p.name, "xxxxxxxx", 1, now);
                let grace = crate::clock::human(p.grace_period);
                match &l.current {
                    Some(c) => outln!(
                        "    would create {example}, publish it to {}, then delete {} ({}) {grace} after publishing",
                        p.sinks.join(", "),
                        c.key.name,
                        c.key.id
                    ),
                    None => outln!(
                        "    would create {example} and publish it to {}",
                        p.sinks.join(", ")
                    ),
                }
            }
            if let Some(a) = &l.active
                && let (Some(old), Some(at)) = (&a.old_key_id, a.retire_at)
            {
                outln!(
                    "    rotation {} is {}: old key {old} is deleted at {} (in {})",
                    a.id,
                    a.state.as_str(),
                    at.to_rfc3339(),
                    human_delta(at - now)
                );
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else if actionable {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// `rekey recover`: see `rotation::recovery`. Exit 0 when every lineage
/// with unrecognised keys was recovered (or there was none), 1 when some
/// lineage could not be proven (reported, nothing changed for it).
fn recover(path: &Path, policy: Option<&str>, lineage: Option<&str>) -> Result<ExitCode> {
    use crate::rotation::recovery::{RecoveryOutcome, recover_from_names};
    let cfg = match load_or_exit(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if let Some(p) = policy
        && cfg.policy(p).is_none()
    {
        eprintln!("rekey recover: no policy named {p:?} in {}", path.display());
        return Ok(ExitCode::from(1));
    }
    let store = open_state(&cfg.daemon, false)?;
    // SQLite: opening for writing took the state's lock, so no daemon runs.
    // PostgreSQL has no such lock: a node holding a running lease would act
    // on the same lineages meanwhile (and keep a ledger cached from before
    // these writes), so recovery waits for a stopped cluster (DESIGN §8).
    if store.is_postgres() {
        let lease = store.lease_info()?;
        if let (Some(holder), Some(until)) = (&lease.holder, lease.lease_until)
            && until > lease.db_now
        {
            eprintln!(
                "rekey recover: node {} leads this state (lease until {until}, fence {}); recover writes for a stopped cluster: stop every rekey node (a stopped leader resigns at once) and run it again",
                crate::rotation::policy::escaped(holder),
                lease.fence
            );
            return Ok(ExitCode::from(1));
        }
    }
    let metrics = crate::metrics::Metrics::new();
    let clock: crate::clock::SharedClock = std::sync::Arc::new(crate::clock::SystemClock);
    let runtime = crate::daemon::build_runtime(std::sync::Arc::new(cfg), &metrics, &clock)
        .map_err(|e| anyhow::anyhow!(e))?;
    let rt = tokio_runtime()?;
    let outcomes = rt.block_on(recover_from_names(
        &runtime, &store, &clock, policy, lineage,
    ))?;
    let mut unproven = false;
    if outcomes.is_empty() {
        println!("nothing to recover: no listed key looks generated without the store knowing it");
    }
    for o in &outcomes {
        let lineage = crate::rotation::policy::escaped(&o.lineage);
        match &o.outcome {
            RecoveryOutcome::Recovered { rotation, key, old } => {
                let key = crate::rotation::policy::escaped(key);
                match old {
                    Some(old) => println!(
                        "policy {} lineage {lineage}: RECOVERED key {key} (rotation {rotation}); old key {} is deleted after the grace period once the daemon runs",
                        o.policy,
                        crate::rotation::policy::escaped(old)
                    ),
                    None => println!(
                        "policy {} lineage {lineage}: RECOVERED key {key} (rotation {rotation}); no key is deleted",
                        o.policy
                    ),
                }
            }
            RecoveryOutcome::Unproven { why } => {
                unproven = true;
                println!(
                    "policy {} lineage {lineage}: NOT RECOVERED: {why}",
                    o.policy
                );
            }
            RecoveryOutcome::Skipped { why } => {
                println!("policy {} lineage {lineage}: skipped: {why}", o.policy);
            }
        }
    }
    Ok(if unproven {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `rekey history`: rotations from the state DB (read-only; no secret is
/// resolved, so it works from a root shell with `{ credential = … }`
/// references).
/// The state of `state` for a command: SQLite read-only (`read_only`) or
/// read-write; PostgreSQL as the store opens it (reads never take the
/// lease, writes of `recover` are for a stopped cluster, DESIGN §8).
///
/// Errors: the store's, or an unresolvable `state_password` (anyhow: a
/// command's).
pub(crate) fn open_state(
    daemon: &config::DaemonConfig,
    read_only: bool,
) -> Result<crate::state::Store> {
    let (state, instance) = (&daemon.state, daemon.instance());
    Ok(match state.sqlite_path() {
        Some(p) if read_only => crate::state::Store::open_read_only(p)?,
        Some(p) => crate::state::Store::open(p)?,
        None => {
            let location = state
                .location(&instance, daemon.lease.ttl)
                .map_err(anyhow::Error::msg)?;
            crate::state::Store::open_location(&location)?
        }
    })
}

fn history(path: &Path, policy: Option<&str>, limit: usize, json: bool) -> Result<ExitCode> {
    let cfg = match load_or_exit_with(path, config::LoadOptions::FILE_ONLY) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let store = open_state(&cfg.daemon, true)?;
    let rows = store.history(policy, limit)?;
    if json {
        let mut out = Vec::new();
        for r in &rows {
            let mut v = serde_json::to_value(r)?;
            v["sinks"] = serde_json::to_value(store.sink_acks(&r.id)?)?;
            v["attempts"] = serde_json::to_value(store.attempts(&r.id)?)?;
            out.push(v);
        }
        let dead = store.dead_letters()?;
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"rotations": out, "dead_letters": dead})
            )?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        outln!(
            "no rotations{}",
            policy
                .map(|p| format!(" for policy {p}"))
                .unwrap_or_default()
        );
    }
    for r in &rows {
        outln!(
            "{} {} {}/{} {} reason={} started={}{}",
            r.id,
            r.state.as_str().to_uppercase(),
            r.policy,
            r.lineage,
            r.trigger,
            r.reason,
            r.started_at.to_rfc3339(),
            r.finished_at
                .map(|f| format!(" finished={}", f.to_rfc3339()))
                .unwrap_or_default()
        );
        outln!(
            "    old key {} → new key {} ({}){}",
            r.old_key_id.as_deref().unwrap_or("-"),
            r.new_key_id.as_deref().unwrap_or("-"),
            r.new_key_name.as_deref().unwrap_or("-"),
            r.outcome
                .as_deref()
                .map(|o| format!(" outcome={o}"))
                .unwrap_or_default()
        );
        if let Some(t) = r.retire_at
            && !r.state.is_terminal()
        {
            outln!("    old key deleted at {}", t.to_rfc3339());
        }
        for a in store.sink_acks(&r.id)? {
            outln!(
                "    sink {:<16} {:<8} attempts={}{}{}",
                a.sink,
                a.state,
                a.attempts,
                a.detail.map(|d| format!(" {d}")).unwrap_or_default(),
                a.last_error
                    .map(|e| format!(" error: {e}"))
                    .unwrap_or_default()
            );
        }
        for a in store.attempts(&r.id)? {
            if a.state != "created" {
                outln!(
                    "    attempt {} {} {}{}",
                    a.attempt,
                    a.name,
                    a.state,
                    a.error.map(|e| format!(": {e}")).unwrap_or_default()
                );
            }
        }
        if let Some(e) = &r.error {
            outln!(
                "    error ({}): {e}",
                r.error_class.as_deref().unwrap_or("?")
            );
        }
    }
    for d in store.dead_letters()? {
        outln!(
            "dead letter: {} {} to {} at {}: {}",
            d.event_id,
            d.kind,
            d.target,
            d.at.to_rfc3339(),
            d.error
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `rekey status` asks: `--endpoint`, else the config's
/// `daemon.listen` (`-c`, `$REKEY_CONFIG`, or the default config when it
/// exists), else the default endpoint. Returns the endpoint and the config
/// it came from.
fn status_endpoint(
    endpoint: Option<&str>,
    config_path: Option<&Path>,
) -> Result<(Endpoint, Option<PathBuf>), ExitCode> {
    if let Some(e) = endpoint {
        return Endpoint::parse(e).map(|e| (e, None)).map_err(|e| {
            eprintln!("rekey: {e}");
            ExitCode::from(1)
        });
    }
    let path = match config_path {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from(config::DEFAULT_CONFIG)).filter(|p| p.exists()),
    };
    match path {
        Some(p) => {
            let cfg = load_or_exit_with(&p, config::LoadOptions::FILE_ONLY)?;
            Ok((Endpoint::from_listen(&cfg.daemon.listen), Some(p)))
        }
        None => Endpoint::parse(client::DEFAULT_ENDPOINT)
            .map(|e| (e, None))
            .map_err(|e| {
                eprintln!("rekey: {e}");
                ExitCode::from(1)
            }),
    }
}

/// Keep what `filter` asks for (policy, lineage, `--due`).
fn filter_snapshot(snapshot: &mut crate::status::Snapshot, filter: &Filter) {
    use crate::status::{Health, PolicyStatus};
    snapshot
        .policies
        .retain(|p| filter.policy.as_ref().is_none_or(|f| *f == p.name));
    for p in snapshot.policies.iter_mut() {
        if filter.lineage.is_none() && !filter.due {
            continue;
        }
        let mut q: PolicyStatus = (**p).clone();
        q.lineages.retain(|l| {
            filter.lineage.as_ref().is_none_or(|f| *f == l.name())
                && (!filter.due || l.health() != Health::Ok)
        });
        let lineages = &q.lineages;
        q.keys
            .retain(|k| lineages.iter().any(|l| l.name() == k.lineage()));
        *p = std::sync::Arc::new(q);
    }
    if filter.due {
        snapshot
            .policies
            .retain(|p| p.health != Health::Ok || !p.lineages.is_empty());
    }
    if filter.lineage.is_some() {
        snapshot.policies.retain(|p| !p.lineages.is_empty());
    }
}

/// `rekey status --summary`: one line per policy.
fn status_summary(snapshot: &crate::status::Snapshot) -> String {
    use crate::status::Health;
    let mut out = String::new();
    for p in &snapshot.policies {
        let count = |h: Health| p.lineages.iter().filter(|l| l.health() == h).count();
        let mut parts = vec![format!("{} lineage(s)", p.lineages.len())];
        for h in [
            Health::Rotating,
            Health::Due,
            Health::Failing,
            Health::Expired,
            Health::Misconfigured,
        ] {
            let n = count(h);
            if n > 0 {
                parts.push(format!("{n} {}", h.as_str()));
            }
        }
        out.push_str(&format!(
            "{:<24} {:<13} {}\n",
            crate::logging::escape(&p.name),
            p.health.as_str(),
            parts.join(", ")
        ));
    }
    out
}

/// `rekey status`: 0 when every policy is `ok` or `rotating`, 1 when any is
/// not or the daemon cannot be reached.
fn status(
    endpoint: Option<&str>,
    config_path: Option<&Path>,
    json: bool,
    filter: &Filter,
) -> Result<ExitCode> {
    let (endpoint, from_config) = match status_endpoint(endpoint, config_path) {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    let shown = endpoint.to_string();
    let client = Client::new(endpoint);
    let body = match client_runtime()?.block_on(client.status_raw()) {
        Ok(body) => body,
        Err(e) => {
            eprintln!("rekey: {e}");
            if let Some(p) = &from_config {
                eprintln!("  (endpoint from daemon.listen in {})", p.display());
            }
            return Ok(ExitCode::from(1));
        }
    };
    let snapshot = client::parse_snapshot(&body);
    if json {
        std::io::stdout().write_all(&body)?;
        if !body.ends_with(b"\n") {
            println!();
        }
    }
    let mut snapshot = match snapshot {
        Ok(s) => s,
        Err(reason) => {
            eprintln!("rekey: unexpected answer from rekey at {shown}: {reason}");
            return Ok(ExitCode::from(1));
        }
    };
    if let (Some(p), Some(i)) = (&from_config, &snapshot.instance) {
        let ours = std::path::absolute(p).unwrap_or_else(|_| p.clone());
        if Path::new(&i.config) != ours {
            eprintln!(
                "rekey: warning: the daemon at {shown} runs {}, not {}",
                crate::logging::escape(&i.config),
                ours.display()
            );
        }
    }
    filter_snapshot(&mut snapshot, filter);
    if !json {
        let now = chrono::Utc::now();
        println!(
            "rekey {} at {}, started {} ago",
            snapshot.version,
            client.endpoint(),
            client::humanize(now - snapshot.started_at)
        );
        match &snapshot.instance {
            Some(i) => outln!("  host {}, config {}, state {}", i.host, i.config, i.state),
            None => println!("  (this daemon does not say which config it runs)"),
        }
        let l = &snapshot.leadership;
        if l.role != crate::rotation::report::Role::Single {
            outln!(
                "  role {}, leader {}, fence {}, lease until {}",
                l.role.as_str(),
                l.leader.as_deref().unwrap_or("none"),
                l.fence.map_or("-".to_string(), |f| f.to_string()),
                l.lease_until.map_or("-".to_string(), |t| t.to_rfc3339())
            );
            if let Some(why) = &l.lead_refused {
                outln!("  {why}");
            }
        }
        if filter.summary {
            print!("{}", status_summary(&snapshot));
        } else {
            print!("{}", client::render_table(&snapshot, now));
        }
    }
    Ok(if client::all_healthy(&snapshot) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

struct RotateArgs {
    policy: String,
    lineage: Option<String>,
    endpoint: Option<String>,
    token_file: Option<PathBuf>,
    config: Option<PathBuf>,
    revoke_old_immediately: bool,
    wait: Option<admin::WaitFor>,
}

/// `rekey rotate`: 0 when the daemon accepted (202), 1 otherwise.
fn rotate(args: RotateArgs) -> Result<ExitCode> {
    // -c, $REKEY_CONFIG, else the default config when it exists (and no
    // --endpoint overrides it): its admin socket or listen address.
    let config_path = args.config.clone().or_else(|| {
        Some(PathBuf::from(config::DEFAULT_CONFIG))
            .filter(|p| args.endpoint.is_none() && p.exists())
    });
    let cfg = match &config_path {
        None => None,
        // Only the admin token is resolved (below), not every secret.
        Some(path) => match config::load_with(path, config::LoadOptions::FILE_ONLY) {
            Ok((cfg, _warnings)) => Some(cfg),
            Err(diags) => {
                print_diagnostics(&diags);
                anyhow::bail!(
                    "cannot read the admin token from {}: the config does not load; or pass --token-file",
                    path.display()
                );
            }
        },
    };
    // With an admin socket, rotate requests go there (socket access is the
    // authorization; no token travels to whatever owns the TCP port).
    let admin_socket = match (&args.endpoint, &cfg) {
        (None, Some(cfg)) => cfg.daemon.admin_listen.clone(),
        _ => None,
    };
    let endpoint = match (&args.endpoint, &cfg, &admin_socket) {
        (Some(e), _, _) => Endpoint::parse(e)?,
        (None, _, Some(path)) => Endpoint::Unix(path.clone()),
        (None, Some(cfg), None) => Endpoint::from_listen(&cfg.daemon.listen),
        (None, None, None) => Endpoint::parse(client::DEFAULT_ENDPOINT)?,
    };
    let token = match (&args.token_file, &cfg) {
        (Some(file), _) => Some(read_token_file(file)?),
        (None, Some(_)) if admin_socket.is_some() => None,
        (None, Some(cfg)) => Some({
            let Some(r) = &cfg.daemon.admin_token else {
                anyhow::bail!(
                    "{} sets no daemon.admin_token, so the daemon refuses rotate requests; \
                     set one (e.g. admin_token = {{ credential = \"admin-token\" }})",
                    cfg.path.display()
                );
            };
            r.resolve_now()
                .with_context(|| format!("daemon.admin_token ({r})"))?
        }),
        (None, None) => {
            anyhow::bail!("rotate needs the admin token: pass --token-file FILE or -c CONFIG")
        }
    };
    if !endpoint.is_local() {
        eprintln!(
            "rekey: warning: sending the admin token over plain HTTP to {endpoint}, which is not loopback"
        );
    }
    let client = Client::new(endpoint);
    let outcome = match client_runtime()?.block_on(client.rotate(
        &args.policy,
        args.lineage.as_deref(),
        args.revoke_old_immediately,
        token.as_ref(),
    )) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("rekey: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let target = match &args.lineage {
        Some(l) => format!("policy {} lineage {l}", args.policy),
        None => format!("policy {}", args.policy),
    };
    match (&outcome.reply, outcome.accepted()) {
        (Some(RotateReply::Accepted { rotations, message }), true) => {
            println!("rotation accepted for {target}: {message}");
            for id in rotations {
                println!("  rotation {id}");
            }
            if args.revoke_old_immediately {
                println!("  the old key will be deleted as soon as every sink has the new one");
            }
            if let Some(until) = args.wait {
                return admin::wait(&client, &args.policy, rotations, until);
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!(
                "rekey: rotation of {target} refused ({}): {}",
                outcome.status,
                outcome.error.as_deref().unwrap_or("no reason given")
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// The admin token from a file: trailing newlines dropped, never printed.
fn read_token_file(path: &Path) -> Result<Secret> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read token file {}", path.display()))?,
    );
    let token = text.trim_end_matches(['\n', '\r']);
    if token.is_empty() {
        anyhow::bail!("token file {} is empty", path.display());
    }
    Ok(Secret::new(token))
}

/// Print diagnostics to stderr; returns whether there were errors.
pub fn print_diagnostics(diags: &[config::Diagnostic]) -> bool {
    for d in diags {
        eprintln!("{d}");
    }
    diags.iter().any(|d| d.severity == Severity::Error)
}

/// `rekey check`: what `run` validates before serving, through the same
/// function ([`config::load_with`]); `--no-secrets` skips the values.
fn check(path: &Path, no_secrets: bool) -> ExitCode {
    let opts = config::LoadOptions {
        resolve_secrets: !no_secrets,
        check_host: true,
        as_service_user: true,
    };
    match config::load_with(path, opts) {
        Ok((cfg, warnings)) => {
            print_diagnostics(&warnings);
            println!(
                "{}: ok ({} provider(s), {} sink(s), {} notify target(s), {} policy(ies){}{})",
                path.display(),
                cfg.providers.len(),
                cfg.sinks.len(),
                cfg.notify.len(),
                cfg.policies.len(),
                if warnings.is_empty() {
                    String::new()
                } else {
                    format!(", {} warning(s)", warnings.len())
                },
                if no_secrets {
                    "; secret values not checked"
                } else {
                    ""
                }
            );
            ExitCode::SUCCESS
        }
        Err(diags) => {
            print_diagnostics(&diags);
            let n = diags
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .count();
            eprintln!("{}: {n} error(s)", path.display());
            ExitCode::from(1)
        }
    }
}

/// The man page of `cmd` and of each visible subcommand, as one roff
/// document (`rekey man > rekey.1`).
pub fn man_page(cmd: clap::Command, out: &mut dyn Write) -> Result<()> {
    let cmd = cmd.version(env!("CARGO_PKG_VERSION"));
    clap_mangen::Man::new(cmd.clone()).render(out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("rekey {}", sub.get_name());
        writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
        let man = clap_mangen::Man::new(sub.clone());
        man.render_description_section(out)?;
        man.render_options_section(out)?;
    }
    out.write_all(
        br#".SH "EXIT STATUS"
.TP
0
success (for \fBplan\fR: nothing to do; for \fBstatus\fR: every policy healthy).
.TP
1
failure: an invalid config (every error as FILE:LINE:COL), a command that could not complete, an unhealthy or unreachable daemon.
.TP
2
for \fBplan\fR: something is due or misconfigured; for any command: a usage error.
.SH ENVIRONMENT
.TP
\fBREKEY_CONFIG\fR
the config file when \fB\-c\fR is not given.
.TP
\fBCREDENTIALS_DIRECTORY\fR
where { credential = "NAME" } references are read (set by systemd; \fB\-\-credentials\-dir\fR by hand).
.SH FILES
.TP
\fI/etc/rekey/rekey.toml\fR
the configuration (default of \fB\-c\fR).
.TP
\fI/var/lib/rekey/state.db\fR, \fI/var/lib/rekey/state.db.key\fR
the state and its sealing key: back them up together.
.TP
\fI/run/rekey/admin.sock\fR
the admin socket, for members of group rekey-admin.
.TP
\fI/usr/share/rekey/prometheus/rekey-rules.yml\fR
alerting rules for Prometheus.
"#,
    )?;
    Ok(())
}

fn emulate(cmd: EmulateCommand) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cmd {
        EmulateCommand::OceanBase(args) => rt.block_on(emulate_oceanbase(*args)),
        EmulateCommand::Tencent(args) => {
            rt.block_on(crate::emulator::tencent::serve_cli(*args))?;
            Ok(ExitCode::SUCCESS)
        }
        EmulateCommand::Huawei(args) => {
            rt.block_on(crate::emulator::huawei::serve_cli(*args))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn emulate_oceanbase(args: OceanBaseEmulateArgs) -> Result<ExitCode> {
    let opts = args.options();
    let handle = ob_emulator::start(opts.clone(), args.listen)
        .await
        .with_context(|| format!("cannot start the OceanBase emulator on {}", args.listen))?;
    let endpoint = handle.endpoint();
    let algorithms: Vec<&str> = opts.algorithms.iter().map(|a| a.as_str()).collect();
    let lifetime = match opts.lifetime {
        Some(l) => crate::clock::human(l),
        None => "never (expiresAt null)".to_string(),
    };
    let sk = opts.access_key_secret.expose();
    println!("rekey: OceanBase MaaS emulator listening on {endpoint}");
    println!("  access_key_id      {}", opts.access_key_id);
    println!("  access_key_secret  {sk}");
    println!("  org_id             {}", opts.org_id);
    println!("  project_id         {}", opts.project_id);
    println!("  digest             {} (qop=auth)", algorithms.join(", "));
    println!(
        "  keys               {} seeded ({} expiring within {}), lifetime {lifetime}",
        opts.keys,
        opts.expiring,
        crate::clock::human(opts.within)
    );
    println!(
        "  admin API          {endpoint}/__emulator/{{keys,stats,faults,requests}} (loopback only, no auth)"
    );
    println!();
    println!(
        "Provider config (the emulator's credentials are fakes; `rekey check` warns about literals):"
    );
    println!("  [providers.ob-emulator]");
    println!("  kind = \"oceanbase\"");
    println!("  endpoint = \"{endpoint}\"");
    println!("  org_id = \"{}\"", opts.org_id);
    println!("  project_id = \"{}\"", opts.project_id);
    println!("  access_key_id = \"{}\"", opts.access_key_id);
    println!("  access_key_secret = \"{sk}\"");
    println!();
    println!("Try:");
    println!(
        "  curl --digest -u '{}:{sk}' -H 'X-OB-Org-Id: {}' -H 'X-OB-Project-Id: {}' '{endpoint}/api/v2/maas/apikeys?pageNumber=1&pageSize=10'",
        opts.access_key_id, opts.org_id, opts.project_id
    );
    println!();
    println!("Ctrl-C stops it.");
    if !args.listen.ip().is_loopback() {
        tracing::warn!(listen = %args.listen, "the emulator listens beyond loopback over plain HTTP; its admin API still answers loopback clients only");
    }
    wait_for_stop().await?;
    tracing::info!("stopping the emulator");
    handle.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C or SIGTERM.
async fn wait_for_stop() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}
