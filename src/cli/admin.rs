//! `rekey retry`, `rekey abandon` and `rekey rotate --wait`: the operator's
//! ways out of a waiting or stuck rotation (DESIGN §1).
//!
//! `retry` and `abandon` are authenticated like `rotate` (the admin token,
//! from `--token-file` or the config's `daemon.admin_token`) and go through
//! the running daemon's endpoint (`POST /retry/{rotation}`,
//! `POST /abandon/{rotation}`). `abandon -c FILE` also works with no daemon
//! running: it opens the state DB itself (the single-instance lock tells
//! the two cases apart) and deletes the rotation's unacknowledged next key
//! through the provider, exactly as the daemon would.
//!
//! `rotate --wait` follows the rotations it started through `GET /status`
//! until each has published everywhere (exit 0, printing when the old key
//! will be deleted) — or with `--wait=completed` until the old key is
//! deleted — and exits 1 when one fails, as `certbot renew` does.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::Method;
use tokio::sync::{Notify, Semaphore};

use super::{client_runtime, print_diagnostics, read_token_file};
use crate::clock::{SharedClock, SystemClock};
use crate::config;
use crate::metrics::Metrics;
use crate::rotation::engine::{Backoff, Engine};
use crate::secret::Secret;
use crate::state::seal::Sealer;
use crate::state::{Store, StoreError};
use crate::status::client::{self, Client, Endpoint};
use crate::status::{Command, CommandReply, StatusHandle};

/// Where to reach the daemon and how to authenticate.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Status endpoint (http://HOST:PORT or unix:/path); default: the
    /// config's `daemon.listen` with -c, else http://127.0.0.1:9477.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// A file holding the admin token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The config: the admin token and endpoint come from its `[daemon]`
    /// section (and `abandon` works offline with it when no daemon runs);
    /// default $REKEY_CONFIG, as for every command.
    #[arg(short, long, env = "REKEY_CONFIG")]
    pub config: Option<PathBuf>,
}

/// How far `rekey rotate --wait` follows a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WaitFor {
    /// Until every sink has the new key.
    Published,
    /// Until the old key is deleted too.
    Completed,
}

fn load(config: &Option<PathBuf>) -> Result<Option<config::Config>> {
    match config {
        None => Ok(None),
        Some(path) => match config::load(path) {
            Ok((cfg, _warnings)) => Ok(Some(cfg)),
            Err(diags) => {
                print_diagnostics(&diags);
                anyhow::bail!(
                    "{} does not load; fix it or pass --token-file",
                    path.display()
                );
            }
        },
    }
}

/// The endpoint and admin token, as `rekey rotate` finds them: with
/// `daemon.admin_listen`, the admin socket (access to it is the
/// authorization, no token is sent); else the listener and the token.
fn connect(args: &AdminArgs, cfg: Option<&config::Config>) -> Result<(Client, Option<Secret>)> {
    let admin_socket = match (&args.endpoint, cfg) {
        (None, Some(cfg)) => cfg.daemon.admin_listen.clone(),
        _ => None,
    };
    let endpoint = match (&args.endpoint, cfg, &admin_socket) {
        (Some(e), _, _) => Endpoint::parse(e)?,
        (None, _, Some(path)) => Endpoint::Unix(path.clone()),
        (None, Some(cfg), None) => Endpoint::from_listen(&cfg.daemon.listen),
        (None, None, None) => Endpoint::parse(client::DEFAULT_ENDPOINT)?,
    };
    let token = match (&args.token_file, cfg) {
        (Some(file), _) => Some(read_token_file(file)?),
        (None, Some(_)) if admin_socket.is_some() => None,
        (None, Some(cfg)) => {
            let Some(r) = &cfg.daemon.admin_token else {
                anyhow::bail!(
                    "{} sets no daemon.admin_token or admin_listen, so the daemon refuses commands; set one",
                    cfg.path.display()
                );
            };
            Some(
                r.resolve_now()
                    .with_context(|| format!("daemon.admin_token ({r})"))?,
            )
        }
        (None, None) => {
            anyhow::bail!("this command needs the admin token: pass --token-file FILE or -c CONFIG")
        }
    };
    if token.is_some() && !endpoint.is_local() {
        eprintln!(
            "rekey: warning: sending the admin token over plain HTTP to {endpoint}, which is not loopback"
        );
    }
    Ok((Client::new(endpoint), token))
}

/// `rekey retry ROTATION` / `rekey abandon ROTATION`: 0 when done, 1 when
/// refused or unknown.
pub fn command(command: Command, rotation: &str, args: &AdminArgs) -> Result<ExitCode> {
    let cfg = load(&args.config)?;
    // Offline only on SQLite, whose lock proves no daemon runs; with a
    // PostgreSQL state the leader is asked (a standby forwards nothing).
    if command == Command::Abandon
        && let Some(cfg) = &cfg
        && let Some(state) = cfg.daemon.state.sqlite_path()
    {
        // Opening would create an empty DB (as whoever runs this, often
        // root) where the daemon expects its own.
        if !state.exists() {
            anyhow::bail!(
                "no state DB at {}: no daemon has run with this config, so there is no rotation to abandon",
                state.display()
            );
        }
        match Store::open(state) {
            Ok(store) => return abandon_offline(cfg, store, rotation),
            Err(StoreError::Locked { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (client, token) = connect(args, cfg.as_ref())?;
    let path = format!("/{}/{}", command.as_str(), client::percent_encode(rotation));
    let resp = match client_runtime()?.block_on(client.send(Method::POST, &path, token.as_ref())) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rekey: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let reply: Option<CommandReply> = serde_json::from_slice(&resp.body).ok();
    report(rotation, reply, Some(&resp.body))
}

fn report(rotation: &str, reply: Option<CommandReply>, body: Option<&[u8]>) -> Result<ExitCode> {
    match reply {
        Some(CommandReply::Accepted { message, .. }) => {
            println!("rotation {rotation}: {message}");
            Ok(ExitCode::SUCCESS)
        }
        Some(CommandReply::UnknownRotation { .. }) => {
            eprintln!("rekey: no rotation {}", rotation.escape_debug());
            Ok(ExitCode::from(1))
        }
        Some(CommandReply::Refused { message }) => {
            eprintln!("rekey: refused: {}", message.escape_debug());
            Ok(ExitCode::from(1))
        }
        None => {
            let text = body.map(client::error_text).unwrap_or_default();
            eprintln!("rekey: {}", text.escape_debug());
            Ok(ExitCode::from(1))
        }
    }
}

/// `rekey abandon -c FILE ROTATION` with no daemon running: the same
/// engine call the daemon makes, over the state DB this process locked.
fn abandon_offline(cfg: &config::Config, store: Store, rotation: &str) -> Result<ExitCode> {
    let metrics = Metrics::new();
    let clock: SharedClock = Arc::new(SystemClock);
    let rt = crate::daemon::build_runtime(Arc::new(cfg.clone()), &metrics, &clock)
        .map_err(|e| anyhow::anyhow!(e))?;
    let engine = Engine {
        store: Arc::new(store),
        clock: clock.clone(),
        // Abandoning never opens a sealed secret (it wipes it): a lost or
        // replaced seal key does not stand in the way.
        sealer: Arc::new(Sealer::random()),
        metrics,
        status: StatusHandle::new(clock.now()),
        wake_scheduler: Arc::new(Notify::new()),
        wake_notify: Arc::new(Notify::new()),
        slots: Arc::new(Semaphore::new(1)),
        backoff: Backoff::default(),
        lease: crate::rotation::gate::LeaseGate::single(),
        status_built: Default::default(),
        ledgers: Default::default(),
        settled: Default::default(),
    };
    eprintln!(
        "rekey: no daemon holds {}; abandoning offline",
        cfg.daemon.state.display()
    );
    let reply = super::tokio_runtime()?.block_on(engine.abandon(&rt, rotation))?;
    report(rotation, Some(reply), None)
}

/// How long [`wait`] looks for a rotation the daemon accepted but its
/// `/status` does not show yet (the body served lags the daemon's snapshot
/// by at most two render times, DESIGN §4).
const NOT_YET_REPORTED: Duration = Duration::from_secs(5);

/// Follow `rotations` (started by `rekey rotate`) until each reaches
/// `until`; 0 on success, 1 when one fails or disappears.
pub fn wait(
    client: &Client,
    policy: &str,
    rotations: &[String],
    until: WaitFor,
) -> Result<ExitCode> {
    let tty = std::io::stderr().is_terminal();
    let rt = client_runtime()?;
    let mut last: std::collections::HashMap<String, String> = Default::default();
    let mut errors = 0u32;
    let mut pending: Vec<String> = rotations.to_vec();
    // `/status` is served from its last rendering, which may predate the
    // snapshot the daemon published before accepting the rotation: one not
    // yet seen is looked for again until NOT_YET_REPORTED has passed; one
    // seen and then missing was followed by another rotation.
    let asked = std::time::Instant::now();
    let mut seen = std::collections::HashSet::new();
    while !pending.is_empty() {
        let snap = match rt.block_on(client.status()) {
            Ok(s) => {
                errors = 0;
                s
            }
            Err(e) => {
                errors += 1;
                if errors > 15 {
                    eprintln!("rekey: lost the daemon while waiting: {e}");
                    return Ok(ExitCode::from(1));
                }
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
        };
        let Some(p) = snap.policies.iter().find(|p| p.name == policy) else {
            eprintln!(
                "rekey: policy {} is no longer in the daemon's status",
                policy.escape_debug()
            );
            return Ok(ExitCode::from(1));
        };
        let mut still = Vec::new();
        for id in &pending {
            let Some((lineage, r)) = p.lineages.iter().find_map(|l| {
                l.rotation()
                    .filter(|r| &r.id == id)
                    .map(|r| (l.name().to_string(), r.clone()))
            }) else {
                if !seen.contains(id) && asked.elapsed() < NOT_YET_REPORTED {
                    still.push(id.clone());
                    continue;
                }
                eprintln!(
                    "rekey: rotation {id} is no longer reported (another rotation of its lineage followed it)"
                );
                return Ok(ExitCode::from(1));
            };
            seen.insert(id.clone());
            if tty && last.get(id) != Some(&r.state) {
                let extra = r
                    .error
                    .as_deref()
                    .map(|e| format!(" (last error: {})", e.escape_debug()))
                    .unwrap_or_default();
                eprintln!(
                    "rotation {id} ({}): {}{extra}",
                    lineage.escape_debug(),
                    r.state
                );
            }
            last.insert(id.clone(), r.state.clone());
            match r.state.as_str() {
                "failed" => {
                    eprintln!(
                        "rekey: rotation {id} failed: {}",
                        r.error
                            .as_deref()
                            .unwrap_or("no error recorded")
                            .escape_debug()
                    );
                    return Ok(ExitCode::from(1));
                }
                "completed" => println!(
                    "rotation {id} ({}): completed; the old key is deleted",
                    lineage.escape_debug()
                ),
                "published" | "retiring" if until == WaitFor::Published => {
                    let when = r
                        .retire_at
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_else(|| "after its grace period".into());
                    println!(
                        "rotation {id} ({}): the new key is published to every sink; the old key will be deleted at {when}",
                        lineage.escape_debug()
                    );
                }
                _ => still.push(id.clone()),
            }
        }
        pending = still;
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{
        Health, LineageStatus, PolicyStatus, RotationSummary, Snapshot, StatusHandle,
    };
    use std::io::{Read, Write};

    /// A `/status` body whose policy `p` has one lineage whose latest
    /// rotation is `id` in `state`.
    fn body(id: &str, state: &str) -> Vec<u8> {
        let h = StatusHandle::new(chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap());
        h.update_policy_shared(Arc::new(PolicyStatus {
            name: "p".into(),
            provider: "ob".into(),
            mode: "rotate".into(),
            health: Health::Ok,
            next_check_at: None,
            last_check_at: None,
            keys: Default::default(),
            lineages: vec![LineageStatus {
                name: "app".into(),
                health: Health::Ok,
                current_key: None,
                reason: "fresh".into(),
                message: String::new(),
                rotate_at: None,
                conditions: vec![],
                rotation: Some(RotationSummary {
                    id: id.into(),
                    state: state.into(),
                    new_key: None,
                    old_key: None,
                    failures: 0,
                    error: None,
                    next_attempt_at: None,
                    retire_at: None,
                    revoke_old_immediately: false,
                }),
            }]
            .into(),
            last_rotation: None,
            error: None,
        }));
        let snap: Arc<Snapshot> = h.load();
        serde_json::to_vec(&*snap).unwrap()
    }

    /// Answer `GET /status` on loopback with `bodies` in turn (the last
    /// one from then on), one connection per request.
    fn canned_status(bodies: Vec<Vec<u8>>) -> Endpoint {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(mut conn) = conn else { return };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                }
                let b = &bodies[n.min(bodies.len() - 1)];
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    b.len()
                );
                let _ = conn.write_all(b);
            }
        });
        Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap()
    }

    /// `/status` is served from its last rendering, which may predate the
    /// snapshot the daemon published before answering `POST /rotate`
    /// (status::server, "at most two render times" behind). The first poll
    /// of `--wait` then showed the lineage's previous rotation and `wait`
    /// gave up at once: "rotation r1 is no longer reported".
    #[test]
    fn rotate_wait_does_not_give_up_on_a_status_body_rendered_before_its_rotation() {
        let ep = canned_status(vec![body("r0", "completed"), body("r1", "published")]);
        let code = wait(
            &Client::new(ep),
            "p",
            &["r1".to_string()],
            WaitFor::Published,
        )
        .unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
    }

    /// A rotation never reported at all is still given up on (not waited
    /// for forever).
    #[test]
    fn rotate_wait_gives_up_on_a_rotation_that_never_shows() {
        let ep = canned_status(vec![body("r0", "completed")]);
        let started = std::time::Instant::now();
        let code = wait(
            &Client::new(ep),
            "p",
            &["r1".to_string()],
            WaitFor::Published,
        )
        .unwrap();
        assert_eq!(code, ExitCode::from(1));
        assert!(started.elapsed() < Duration::from_secs(20));
    }
}
