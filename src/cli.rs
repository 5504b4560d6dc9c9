//! Commands (DESIGN §1). Each command is a function returning the process
//! exit code; `anyhow` is used here and in `main` only.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::{self, Severity};
use crate::logging::LogFormat;

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
pub enum EmulateCommand {}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check { config } => Ok(check(&config)),
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
