//! `rekey migrate-state`: move a SQLite state into PostgreSQL (DESIGN §8).
//!
//! `rekey migrate-state --from /var/lib/rekey/state.db --to postgres://…`
//! (or `-c rekey.toml --to …`, taking the SQLite path from the config's
//! `daemon.state`). The SQLite file is opened like the daemon opens it, so
//! its single-instance lock refuses the copy while a daemon runs on it;
//! the copy is one PostgreSQL transaction into an empty state
//! ([`crate::state::Store::copy_into`]). The seal key is in neither
//! database: the command says where it is and what to do with it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::config;
use crate::state::{PgOptions, Store};

/// The command's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    /// The SQLite state file to copy (stop the daemon first).
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    pub from: Option<PathBuf>,
    /// Take the SQLite state (and the seal key setting) from this config.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// The empty PostgreSQL state to fill:
    /// postgres://USER@HOST:PORT/DBNAME[?sslmode=disable|require|verify-full].
    #[arg(long)]
    pub to: String,
    /// A file holding the database password (never put it in the URL).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// PEM CA bundle for sslmode=verify-full.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

/// Run it: exit 0 when copied, 1 (with the reason) otherwise.
pub fn migrate_state(args: &MigrateArgs) -> Result<ExitCode> {
    let mut opts = PgOptions::from_url(&args.to).map_err(|e| anyhow::anyhow!("--to: {e}"))?;
    opts.ca_file = args.ca_file.clone();
    if let Some(f) = &args.password_file {
        let pw = std::fs::read_to_string(f)
            .with_context(|| format!("--password-file {}", f.display()))?;
        opts.password = Some(pw.trim_end_matches(['\n', '\r']).to_string());
    }
    opts.validate().map_err(|e| anyhow::anyhow!("--to: {e}"))?;
    let (from, seal_key_set) = match (&args.from, &args.config) {
        (Some(p), _) => (p.clone(), false),
        (None, Some(c)) => {
            let cfg = match super::load_or_exit_with(c, config::LoadOptions::FILE_ONLY) {
                Ok(cfg) => cfg,
                Err(code) => return Ok(code),
            };
            let Some(path) = cfg.daemon.state.sqlite_path() else {
                bail!(
                    "{}: daemon.state is already a PostgreSQL URL; give the SQLite file with --from PATH",
                    c.display()
                );
            };
            (path.to_path_buf(), cfg.daemon.seal_key.is_some())
        }
        (None, None) => bail!("say which SQLite state to copy: --from PATH or -c CONFIG"),
    };
    if !from.exists() {
        bail!("{}: no such state file", from.display());
    }
    let source = Store::open(&from).with_context(|| format!("source {}", from.display()))?;
    let target = Store::open_postgres(&opts).with_context(|| format!("target {}", opts.url))?;
    let report = source
        .copy_into(&target)
        .with_context(|| format!("copying {} into {}", from.display(), opts.url))?;
    println!(
        "copied {} into {} in one transaction:",
        from.display(),
        opts.url
    );
    for (table, n) in &report.tables {
        println!("  {table:<17} {n:>8} row(s), counts match");
    }
    println!("{}", seal_key_advice(&from, seal_key_set));
    Ok(ExitCode::SUCCESS)
}

/// What to do with the seal key, which the database never holds.
fn seal_key_advice(from: &Path, seal_key_set: bool) -> String {
    if seal_key_set {
        "the seal key is not in the database: give every node the same daemon.seal_key as this config (e.g. the same systemd credential); a node with another key refuses to lead".to_string()
    } else {
        format!(
            "the seal key is not in the database: it is the file {} — install it on every node (e.g. as a systemd credential) and set daemon.seal_key = {{ credential = \"…\" }}; a PostgreSQL state requires daemon.seal_key, and a node with another key refuses to lead",
            crate::state::key_path(from).display()
        )
    }
}
