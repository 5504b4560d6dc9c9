//! Commands (DESIGN §1). Each command is a function returning the process
//! exit code; `anyhow` is used here and in `main` only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::config::{self, Severity};
use crate::emulator::oceanbase::{
    self as ob_emulator, DigestAlgorithm, ListOrder, OceanBaseEmulatorOptions,
};
use crate::logging::LogFormat;
use crate::secret::Secret;

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
    #[command(subcommand)]
    pub command: Command,
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
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate the config and its secret references; never calls a provider.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Dry run: list keys per policy and say what would rotate or be deleted.
    Plan {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Ask a running daemon how it is.
    Status {
        /// Status endpoint (http://127.0.0.1:9477 or unix:/path).
        #[arg(long, default_value = "http://127.0.0.1:9477")]
        endpoint: String,
        /// Print the JSON document as served.
        #[arg(long)]
        json: bool,
    },
    /// Ask a running daemon to rotate a policy now.
    Rotate {
        policy: String,
        /// Only this lineage of the policy.
        #[arg(long)]
        lineage: Option<String>,
        #[arg(long, default_value = "http://127.0.0.1:9477")]
        endpoint: String,
        /// A file holding the admin token.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Read the admin token from this config's `daemon.admin_token`.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// For a leaked key: delete the old key as soon as every sink has the new one.
        #[arg(long)]
        revoke_old_immediately: bool,
    },
    /// Rotation history from the state DB.
    History {
        policy: Option<String>,
        #[arg(short, long)]
        config: PathBuf,
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
}

#[derive(Debug, Subcommand)]
pub enum EmulateCommand {
    /// OceanBase Cloud MaaS API keys: list, create, delete, HTTP Digest auth.
    #[command(name = "oceanbase")]
    OceanBase(OceanBaseEmulateArgs),
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
    /// Delay before every API answer.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Share of API calls (0 to 1) answered 500 E001R000.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    pub error_rate: f64,
    /// Requests allowed per second (`20/s`, `600/min`); beyond: 429 with Retry-After.
    #[arg(long, value_parser = crate::emulator::parse_rate)]
    pub rate_limit: Option<f64>,
    /// Seed for key ids, secrets and fault draws [default: random].
    #[arg(long)]
    pub seed: Option<u64>,
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
    /// How long a created key stays out of list answers (eventual consistency).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub list_delay: Duration,
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

fn parse_share(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0 and 1"))
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
            latency: self.latency,
            error_rate: self.error_rate,
            rate_limit: self.rate_limit,
            seed: self.seed,
            access_key_id: self.access_key_id.clone(),
            access_key_secret: Secret::new(self.access_key_secret.clone()),
            org_id: self.org_id.clone(),
            project_id: self.project_id.clone(),
            algorithms: self.digest_algorithms.clone(),
            nonce_ttl: self.nonce_ttl,
            list_order: self.list_order,
            list_delay: self.list_delay,
        }
    }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check { config } => Ok(check(&config)),
        Command::Emulate { provider } => emulate(provider),
        other => anyhow::bail!("{other:?}: this command is being built"),
    }
}

/// Print diagnostics to stderr; returns whether there were errors.
pub fn print_diagnostics(diags: &[config::Diagnostic]) -> bool {
    for d in diags {
        eprintln!("{d}");
    }
    diags.iter().any(|d| d.severity == Severity::Error)
}

fn check(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok((cfg, warnings)) => {
            print_diagnostics(&warnings);
            println!(
                "{}: ok ({} provider(s), {} sink(s), {} notify target(s), {} policy(ies){})",
                path.display(),
                cfg.providers.len(),
                cfg.sinks.len(),
                cfg.notify.len(),
                cfg.policies.len(),
                if warnings.is_empty() {
                    String::new()
                } else {
                    format!(", {} warning(s)", warnings.len())
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

fn emulate(cmd: EmulateCommand) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cmd {
        EmulateCommand::OceanBase(args) => rt.block_on(emulate_oceanbase(args)),
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
        Some(l) => humantime::format_duration(l).to_string(),
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
        humantime::format_duration(opts.within)
    );
    println!(
        "  admin API          {endpoint}/__emulator/{{keys,stats,faults}} (loopback only, no auth)"
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
