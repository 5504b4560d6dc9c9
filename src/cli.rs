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
pub enum EmulateCommand {
    /// Tencent Cloud API Gateway keys (TC3 signatures, usage plans).
    Tencent(crate::emulator::tencent::EmulateArgs),
    /// Huawei Cloud NES credentials, with a fake IAM token endpoint.
    Huawei(crate::emulator::huawei::EmulateArgs),
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check { config } => Ok(check(&config)),
        Command::Run { config } => run_daemon(&config),
        Command::Plan { config } => plan(&config),
        Command::History {
            policy,
            config,
            limit,
            json,
        } => history(&config, policy.as_deref(), limit, json),
        Command::Emulate { provider } => emulate(provider),
        other => anyhow::bail!("{other:?}: this command is being built"),
    }
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// `rekey emulate …`: serve an emulator until Ctrl-C.
fn emulate(cmd: EmulateCommand) -> Result<ExitCode> {
    let rt = tokio_runtime()?;
    match cmd {
        EmulateCommand::Tencent(args) => rt.block_on(crate::emulator::tencent::serve_cli(args))?,
        EmulateCommand::Huawei(args) => rt.block_on(crate::emulator::huawei::serve_cli(args))?,
    }
    Ok(ExitCode::SUCCESS)
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
    match config::load(path) {
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

fn human_delta(d: chrono::Duration) -> String {
    let neg = d < chrono::Duration::zero();
    let secs = d.num_seconds().unsigned_abs();
    let s = if secs >= 86400 {
        format!("{}d{}h", secs / 86400, (secs % 86400) / 3600)
    } else if secs >= 3600 {
        format!("{}h{}m", secs / 3600, (secs % 3600) / 60)
    } else if secs >= 60 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    };
    if neg { format!("-{s}") } else { s }
}

/// `rekey plan`: list and decide, change nothing (no provider mutation,
/// no DB write: the DB, if any, is opened read-only).
fn plan(path: &Path) -> Result<ExitCode> {
    use crate::rotation::policy;
    use crate::state::Store;
    let cfg = match load_or_exit(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let metrics = crate::metrics::Metrics::new();
    let rt = tokio_runtime()?;
    let store = if cfg.daemon.state.exists() {
        match Store::open_read_only(&cfg.daemon.state) {
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
        let Some(pc) = cfg.providers.get(&p.provider) else {
            continue;
        };
        let provider = match crate::provider::build(pc, &metrics) {
            Ok(x) => x,
            Err(e) => {
                println!(
                    "policy {}: cannot build provider {}: {e}",
                    p.name, p.provider
                );
                failed = true;
                continue;
            }
        };
        let listed = match rt.block_on(provider.list(&|n: &str| p.matches(n))) {
            Ok(l) => l,
            Err(e) => {
                println!("policy {}: cannot list keys: {e}", p.name);
                failed = true;
                continue;
            }
        };
        let (known, rotations, attempts) = match &store {
            Some(s) => {
                let mut att = std::collections::HashMap::new();
                for (rid, a) in s.unresolved_attempts(&p.name)? {
                    att.entry(rid).or_insert_with(Vec::new).push(a);
                }
                (s.known_keys(&p.name)?, s.policy_rotations(&p.name)?, att)
            }
            None => (Vec::new(), Vec::new(), Default::default()),
        };
        let views = policy::assign_lineages(p, listed, &known, &rotations);
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
        let plan = policy::plan(p, views, &rotations, &attempts, &targets, now);
        let mode = match p.mode {
            config::Mode::Observe => "observe",
            config::Mode::Rotate => "rotate",
        };
        println!(
            "policy {} (provider {}, mode {mode}, match {:?}): {}",
            p.name,
            p.provider,
            p.match_glob,
            plan.health.as_str()
        );
        if let Some(m) = &plan.misconfigured {
            println!("  misconfigured: {m}; nothing would change");
        }
        if plan.lineages.is_empty() {
            println!("  no keys match");
        }
        for l in &plan.lineages {
            let action = if l.decision.rotate {
                "ROTATE NOW"
            } else if l.decision.reason == policy::Reason::InProgress {
                "in progress"
            } else {
                "no action"
            };
            println!(
                "  lineage {}: {action} [{}] {}",
                l.name,
                l.decision.reason.as_str(),
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
                    .map(|e| human_delta(e - now))
                    .unwrap_or_else(|| "never".into());
                let lead = policy::effective_lead(p, &k.key)
                    .map(|l| format!(" lead {}", human_delta(l)))
                    .unwrap_or_default();
                println!(
                    "    {:<10} {:<40} id {:<24} age {:<8} expires in {:<9}{lead}",
                    format!("{st:?}").to_lowercase(),
                    k.key.name,
                    k.key.id,
                    age,
                    exp
                );
            }
            if let Some(t) = l.decision.rotate_at
                && !l.decision.rotate
                && l.decision.reason == policy::Reason::Fresh
            {
                println!(
                    "    rotate at {} (in {})",
                    t.to_rfc3339(),
                    human_delta(t - now)
                );
            }
            if l.decision.rotate && p.mode == config::Mode::Rotate {
                let example = p.name_template.render(&l.name, &p.name, "xxxxxxxx", 1, now);
                let grace = humantime::format_duration(p.grace_period);
                match &l.current {
                    Some(c) => println!(
                        "    would create {example}, publish it to {}, then delete {} ({}) {grace} after publishing",
                        p.sinks.join(", "),
                        c.key.name,
                        c.key.id
                    ),
                    None => println!(
                        "    would create {example} and publish it to {}",
                        p.sinks.join(", ")
                    ),
                }
            }
            if let Some(a) = &l.active
                && let (Some(old), Some(at)) = (&a.old_key_id, a.retire_at)
            {
                println!(
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
    } else {
        ExitCode::SUCCESS
    })
}

/// `rekey history`: rotations from the state DB (read-only).
fn history(path: &Path, policy: Option<&str>, limit: usize, json: bool) -> Result<ExitCode> {
    let cfg = match load_or_exit(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let store = crate::state::Store::open_read_only(&cfg.daemon.state)?;
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
        println!(
            "no rotations{}",
            policy
                .map(|p| format!(" for policy {p}"))
                .unwrap_or_default()
        );
    }
    for r in &rows {
        println!(
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
        println!(
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
            println!("    old key deleted at {}", t.to_rfc3339());
        }
        for a in store.sink_acks(&r.id)? {
            println!(
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
                println!(
                    "    attempt {} {} {}{}",
                    a.attempt,
                    a.name,
                    a.state,
                    a.error.map(|e| format!(": {e}")).unwrap_or_default()
                );
            }
        }
        if let Some(e) = &r.error {
            println!(
                "    error ({}): {e}",
                r.error_class.as_deref().unwrap_or("?")
            );
        }
    }
    for d in store.dead_letters()? {
        println!(
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
