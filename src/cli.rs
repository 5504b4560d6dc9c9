//! Commands (DESIGN §1). Each command is a function returning the process
//! exit code; `anyhow` is used here and in `main` only.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use zeroize::Zeroizing;

use crate::config::{self, Severity};
use crate::logging::LogFormat;
use crate::secret::Secret;
use crate::status::RotateReply;
use crate::status::client::{self, Client, Endpoint};

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
        /// Status endpoint (http://HOST:PORT or unix:/path); default: the
        /// config's `daemon.listen` with -c, else http://127.0.0.1:9477.
        #[arg(long)]
        endpoint: Option<String>,
        /// A file holding the admin token.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Read the admin token (and the endpoint) from this config's
        /// `[daemon]` section.
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
pub enum EmulateCommand {}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check { config } => Ok(check(&config)),
        Command::Status { endpoint, json } => status(&endpoint, json),
        Command::Rotate {
            policy,
            lineage,
            endpoint,
            token_file,
            config,
            revoke_old_immediately,
        } => rotate(RotateArgs {
            policy,
            lineage,
            endpoint,
            token_file,
            config,
            revoke_old_immediately,
        }),
        other => anyhow::bail!("{other:?}: this command is being built"),
    }
}

/// A runtime for the one-shot client commands.
fn client_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `rekey status`: 0 when every policy is `ok` or `rotating`, 1 when any is
/// not or the daemon cannot be reached.
fn status(endpoint: &str, json: bool) -> Result<ExitCode> {
    let client = Client::new(Endpoint::parse(endpoint)?);
    let body = match client_runtime()?.block_on(client.status_raw()) {
        Ok(body) => body,
        Err(e) => {
            eprintln!("rekey: {e}");
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
    let snapshot = match snapshot {
        Ok(s) => s,
        Err(reason) => {
            eprintln!("rekey: unexpected answer from rekey at {endpoint}: {reason}");
            return Ok(ExitCode::from(1));
        }
    };
    if !json {
        let now = chrono::Utc::now();
        println!(
            "rekey {} at {}, started {} ago",
            snapshot.version,
            client.endpoint(),
            client::humanize(now - snapshot.started_at)
        );
        print!("{}", client::render_table(&snapshot, now));
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
}

/// `rekey rotate`: 0 when the daemon accepted (202), 1 otherwise.
fn rotate(args: RotateArgs) -> Result<ExitCode> {
    let cfg = match &args.config {
        None => None,
        Some(path) => match config::load(path) {
            Ok((cfg, _warnings)) => Some(cfg),
            Err(diags) => {
                print_diagnostics(&diags);
                anyhow::bail!(
                    "cannot read the admin token from {}: the config does not load (every secret \
                     reference must resolve here, as for `rekey check`); or pass --token-file",
                    path.display()
                );
            }
        },
    };
    let endpoint = match (&args.endpoint, &cfg) {
        (Some(e), _) => Endpoint::parse(e)?,
        (None, Some(cfg)) => Endpoint::from_listen(&cfg.daemon.listen),
        (None, None) => Endpoint::parse(client::DEFAULT_ENDPOINT)?,
    };
    let token = match (&args.token_file, &cfg) {
        (Some(file), _) => read_token_file(file)?,
        (None, Some(cfg)) => {
            let Some(r) = &cfg.daemon.admin_token else {
                anyhow::bail!(
                    "{} sets no daemon.admin_token, so the daemon refuses rotate requests; \
                     set one (e.g. admin_token = {{ credential = \"admin-token\" }})",
                    cfg.path.display()
                );
            };
            r.resolve_now()
                .with_context(|| format!("daemon.admin_token ({r})"))?
        }
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
        &token,
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
