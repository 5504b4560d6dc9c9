//! The daemon: start-up, the scheduler loop, signals, reload, shutdown.
//!
//! Start-up: load and validate the config (a bad one refuses to start),
//! turn off core dumps, open the state DB (single-instance lock), load the
//! sealing key, build providers and sinks, bind the status endpoint, rebuild
//! the status snapshot from the store (no provider calls), then `READY=1`.
//!
//! The loop sleeps until the earliest deadline the store knows — a policy's
//! next scheduled check, a rotation's next step (backoff, grace), the end of
//! a policy's status coalescing window (`rotation::engine::StatusBuilt`) —
//! or until woken (a transition, a rotate request, a signal). It never
//! polls: idle, it wakes only for the heartbeat that feeds `/healthz` and
//! the systemd watchdog. Due checks and rotation steps run as tasks;
//! rotations of different lineages run concurrently up to
//! `max_concurrent_rotations`.
//!
//! Signals become [`Control`]: SIGTERM/SIGINT → shutdown (stop taking work,
//! let in-flight steps reach their next commit within `shutdown_timeout`,
//! exit 0; a second signal exits at once); SIGHUP → reload (a bad config is
//! logged and the old one keeps running; a good one swaps providers, sinks
//! and schedules without interrupting in-flight rotations).

pub mod harden;
pub mod lease;
pub mod sdnotify;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::{MonotonicClock, SharedClock};
use crate::config::{self, Config, Diagnostic};
use crate::metrics::Metrics;
use crate::provider;
use crate::rotation::engine::{Backoff, Engine, Runtime};
use crate::rotation::recovery;
use crate::sink;
use crate::state::seal::Sealer;
use crate::state::{self, Store, StoreError};
use crate::status::server::{self, Liveness, ServerState};
use crate::status::{
    Command, CommandReply, CommandRequest, Health, RotateReply, RotateRequest, StatusHandle,
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid configuration ({} error(s))", .0.iter().filter(|d| d.severity == config::Severity::Error).count())]
    Config(Vec<Diagnostic>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("sealing key: {0}")]
    Seal(#[from] state::seal::SealError),
    #[error(
        "the state DB holds sealed secrets of rotations {rotations} that {problem}; refusing to start rather than lose or replace them. Restore the seal key ({key}), or give up those rotations with `rekey abandon -c CONFIG ROTATION` for each (no daemon needed: it deletes each one's unpublished key when no sink acknowledged it and wipes its sealed secret)"
    )]
    SealKeyLost {
        rotations: String,
        problem: &'static str,
        key: String,
    },
    #[error("{0}")]
    Build(String),
    #[error("status endpoint {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// How many accounts' check groups run at once (each one walk).
const CHECK_GROUPS: usize = 16;
/// First pause after a rotation's drive fails unexpectedly (a store write
/// that fails, e.g. a full disk); it doubles per failure in a row.
pub const HOLD_FLOOR: Duration = Duration::from_secs(1);
/// Longest pause between drives of a rotation that keeps failing
/// unexpectedly.
pub const HOLD_CAP: Duration = Duration::from_secs(300);
/// How old a policy's status may grow before the loop rebuilds it (and its
/// health) from the store even when nothing happened.
pub use crate::rotation::engine::STATUS_REFRESH;

/// What signals mean to the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Shutdown,
    Reload,
}

/// The seal key, refusing to start when sealed secrets exist that it
/// cannot open: a missing key file is created only when nothing is sealed
/// (never silently replaced under secrets it would orphan), and a present
/// key must open every sealed secret.
fn open_sealer(cfg: &Config, store: &Store) -> Result<Sealer, DaemonError> {
    let sealed = store.sealed_secrets()?;
    let ids = |v: &[String]| v.join(", ");
    let key_file = match cfg.daemon.state.sqlite_path() {
        Some(p) => state::key_path(p),
        // `check` requires `seal_key` with a PostgreSQL state.
        None if cfg.daemon.seal_key.is_none() => {
            return Err(DaemonError::Build(
                "a PostgreSQL state needs daemon.seal_key".into(),
            ));
        }
        None => PathBuf::new(),
    };
    let (sealer, key) = match &cfg.daemon.seal_key {
        Some(r) => (
            Sealer::from_hex(
                &r.resolve_now()
                    .map_err(|e| DaemonError::Build(format!("seal_key: {e}")))?,
            )?,
            format!("daemon.seal_key = {r}"),
        ),
        None => {
            if !key_file.exists() && !sealed.is_empty() {
                let all: Vec<String> = sealed.iter().map(|(id, _)| id.clone()).collect();
                return Err(DaemonError::SealKeyLost {
                    rotations: ids(&all),
                    problem: "cannot be opened: the seal key file is missing",
                    key: key_file.display().to_string(),
                });
            }
            (
                Sealer::from_key_file(&key_file)?,
                key_file.display().to_string(),
            )
        }
    };
    let bad: Vec<String> = sealed
        .iter()
        .filter(|(id, blob)| sealer.open(id, blob).is_err())
        .map(|(id, _)| id.clone())
        .collect();
    if !bad.is_empty() {
        return Err(DaemonError::SealKeyLost {
            rotations: ids(&bad),
            problem: "do not open with this seal key (a different or replaced key)",
            key,
        });
    }
    Ok(sealer)
}

/// Build providers and sinks for one configuration generation.
pub fn build_runtime(
    cfg: Arc<Config>,
    metrics: &Metrics,
    clock: &SharedClock,
) -> Result<Runtime, BuildFailure> {
    let mut providers = HashMap::new();
    // One rate-limit bucket per provider account, shared by its entries.
    let pacers = provider::http::pacers(&cfg.providers);
    for (name, p) in &cfg.providers {
        providers.insert(
            name.clone(),
            provider::build_paced(p, metrics, pacers[name].clone()).map_err(|e| BuildFailure {
                item: format!("providers.{name}"),
                reason: e.to_string(),
            })?,
        );
    }
    let mut sinks = HashMap::new();
    for (name, s) in &cfg.sinks {
        sinks.insert(
            name.clone(),
            sink::build(s, clock.clone()).map_err(|e| BuildFailure {
                item: format!("sinks.{name}"),
                reason: e.to_string(),
            })?,
        );
    }
    let walks = Arc::new(provider::listing::Walks::for_config(
        &cfg,
        Some(metrics.clone()),
    ));
    Ok(Runtime {
        config: cfg,
        providers,
        sinks,
        walks,
    })
}

/// A provider or sink that could not be built: which item (a key of
/// `Config::origins`) and why.
#[derive(Debug)]
pub struct BuildFailure {
    pub item: String,
    pub reason: String,
}

impl std::fmt::Display for BuildFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Called with the status endpoint's address once the daemon is ready.
pub type OnReady = Arc<dyn Fn(&str) + Send + Sync>;

/// Options that tests and `rekey dev` set; the daemon defaults the rest.
#[derive(Clone)]
pub struct Options {
    pub clock: SharedClock,
    /// Heartbeat: how often the idle loop wakes to feed /healthz and the
    /// watchdog.
    pub heartbeat: Duration,
    /// Called once the daemon is ready, with the status endpoint's address.
    pub on_ready: Option<OnReady>,
    /// Stop the daemon from outside (tests, `rekey dev`).
    pub stop: CancellationToken,
    /// Install SIGTERM/SIGINT/SIGHUP handlers.
    pub handle_signals: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: Arc::new(MonotonicClock::system()),
            heartbeat: Duration::from_secs(10),
            on_ready: None,
            stop: CancellationToken::new(),
            handle_signals: true,
        }
    }
}

struct Daemon {
    engine: Arc<Engine>,
    /// The notification deliverer of the running configuration: its stop
    /// token and task (restarted on reload when targets change).
    deliverer: Mutex<Option<(CancellationToken, tokio::task::JoinHandle<()>)>>,
    config_path: PathBuf,
    runtime: RwLock<Arc<Runtime>>,
    /// Rotations whose policy a reload removed keep the runtime they had.
    retained: Mutex<HashMap<String, Arc<Runtime>>>,
    next_checks: Mutex<HashMap<String, DateTime<Utc>>>,
    checking: Mutex<HashSet<String>>,
    /// Bounds concurrent check groups (each one walk of one account,
    /// planning every policy of it that is due), so many accounts due at
    /// once neither flood the machine nor balloon memory, while accounts
    /// up to the bound are walked concurrently.
    check_slots: Arc<Semaphore>,
    /// Whether the loop saw work in flight last time (to trim the heap
    /// once when it goes idle).
    was_busy: std::sync::atomic::AtomicBool,
    driving: Mutex<HashSet<String>>,
    /// Rotations whose last drive failed unexpectedly (a store write that
    /// failed, a policy that is gone): how often in a row, and not before
    /// when. In memory only: a restart retries at once.
    held: Mutex<HashMap<String, (u32, DateTime<Utc>)>>,
    /// When the loop last rebuilt every policy's status, so conditions that
    /// arise with the passing of time (a rotation stuck, a key expired) are
    /// reported within [`STATUS_REFRESH`].
    last_refresh: Mutex<Option<std::time::Instant>>,
    /// [`Daemon::policy_globs`]' sets, per group of policies, with the
    /// configuration they were built from.
    #[allow(clippy::type_complexity)]
    policy_globs: Mutex<HashMap<Vec<String>, (Arc<Config>, Arc<globset::GlobSet>)>>,
    /// Work stops between steps when this fires.
    work_stop: CancellationToken,
    tracker: TaskTracker,
}

/// Run the daemon until shutdown. `Ok(())` means a clean, graceful stop.
pub async fn run(config_path: &Path, opts: Options) -> Result<(), DaemonError> {
    // Signals first: a SIGTERM during start-up is then a graceful stop
    // (handled once the loop starts), never the default kill.
    let mut signals = if opts.handle_signals {
        Some(
            signal_hook_tokio::Signals::new([
                signal_hook::consts::SIGTERM,
                signal_hook::consts::SIGINT,
                signal_hook::consts::SIGHUP,
            ])
            .map_err(DaemonError::Signals)?,
        )
    } else {
        None
    };
    // The same checks as `rekey check`, through the same function: a
    // config `check` accepts is one `run` starts with, and every refusal
    // below is located in the file too.
    let (cfg, warnings) =
        config::load_with(config_path, config::LoadOptions::FULL).map_err(DaemonError::Config)?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    harden::disable_core_dumps();
    let cfg = Arc::new(cfg);
    let refuse = |items: &[&str], e: &dyn std::fmt::Display| {
        DaemonError::Config(vec![cfg.error_at(items, e.to_string(), None)])
    };
    let sqlite = cfg.daemon.state.sqlite_path();
    if let Some(dir) = sqlite.and_then(Path::parent)
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        // Only the service's own StateDirectory gets here (`load_with`
        // refuses any other missing directory).
        tracing::info!(dir = %dir.display(), "creating the state directory");
    }
    let instance = cfg.daemon.instance();
    let store = Arc::new(
        match sqlite {
            Some(p) => Store::open(p),
            None => {
                let location = cfg
                    .daemon
                    .state
                    .location(&instance, cfg.daemon.lease.ttl)
                    .map_err(|e| refuse(&["daemon.state_password", "daemon.state"], &e))?;
                Store::open_location(&location)
            }
        }
        .map_err(|e| refuse(&["daemon.state", "daemon"], &e))?,
    );
    // The negative-control build (test-only feature): no fencing at all.
    #[cfg(feature = "ha-test-unfenced")]
    store.set_fence_checks(false);
    // With a PostgreSQL state, the seal key's check value: a standby
    // compares it with the database's before it may lead.
    let seal_check = match (&cfg.daemon.seal_key, sqlite) {
        (Some(r), None) => Some(
            r.resolve_now()
                .map_err(|e| e.to_string())
                .and_then(|k| lease::seal_check_value(&k))
                .map_err(|e| refuse(&["daemon.seal_key"], &format!("seal_key: {e}")))?,
        ),
        _ => None,
    };
    let metrics = Metrics::new();
    let started = opts.clock.now();
    let status = StatusHandle::new(started);
    status.set_instance(crate::status::Instance::new(
        config_path,
        &cfg.daemon.state.display(),
    ));
    let gate = match sqlite {
        Some(_) => {
            metrics.leader.set(1);
            crate::rotation::gate::LeaseGate::single()
        }
        None => crate::rotation::gate::LeaseGate::standby(),
    };
    let (rotate_tx, mut rotate_rx) = mpsc::channel::<RotateRequest>(64);
    let (command_tx, mut command_rx) = mpsc::channel::<CommandRequest>(64);

    // The watchdog, when systemd set one, is fed from this loop at half its
    // interval; /healthz calls the loop stalled after three missed beats.
    let mut heartbeat = match sdnotify::watchdog_interval() {
        Some(w) => w.min(opts.heartbeat),
        None => opts.heartbeat,
    };
    if sqlite.is_none() {
        // The leader takes standbys' rotate requests at each beat.
        heartbeat = heartbeat.min(cfg.daemon.lease.renew);
    }
    let liveness = Liveness::new((heartbeat * 3).max(Duration::from_secs(5)));
    liveness.beat();
    let admin_token = match &cfg.daemon.admin_token {
        Some(r) => Some(r.resolve_now().map_err(|e| {
            refuse(
                &["daemon.admin_token"],
                &format!("`admin_token` ({r}): {e}"),
            )
        })?),
        None => None,
    };
    let server_stop = CancellationToken::new();
    let server_state = ServerState {
        status: status.clone(),
        metrics: metrics.clone(),
        rotate: rotate_tx.clone(),
        commands: Some(command_tx.clone()),
        admin_token,
        liveness: liveness.clone(),
        bodies: server::Bodies::new(&status, &metrics),
    };
    let limits = server::Limits {
        allowed_hosts: cfg.daemon.allowed_hosts.clone(),
        ..server::Limits::default()
    };
    // With an admin socket, the TCP listener serves only the GETs.
    let (endpoint, server_thread) = start_status_server(
        StatusListen::Plain(
            cfg.daemon.listen.clone(),
            if cfg.daemon.admin_listen.is_some() {
                server::Role::ReadOnly
            } else {
                server::Role::All
            },
        ),
        server_state.clone(),
        limits.clone(),
        server_stop.clone(),
    )
    .await
    .map_err(|e| match e {
        DaemonError::Listen { .. } => refuse(&["daemon.listen", "daemon"], &e),
        other => other,
    })?;
    let admin_thread = match &cfg.daemon.admin_listen {
        Some(path) => Some(
            start_status_server(
                StatusListen::Admin {
                    path: path.clone(),
                    group: cfg.daemon.admin_group.clone(),
                    required: cfg.daemon.admin_group != crate::config::DEFAULT_ADMIN_GROUP,
                },
                server_state,
                limits,
                server_stop.clone(),
            )
            .await
            .map_err(|e| match e {
                DaemonError::Listen { .. } => refuse(&["daemon.admin_listen", "daemon"], &e),
                other => other,
            })?
            .1,
        ),
        None => None,
    };

    // A PostgreSQL node starts as a standby: it serves /status (role
    // standby), records `POST /rotate` for the leader, and leads only once
    // it holds the lease. What follows is then exactly the start-up a
    // restart after kill -9 runs (takeover = recovery).
    let renewals = CancellationToken::new();
    let leading = match &seal_check {
        Some(check) => {
            let node = Arc::new(lease::Node::new(
                store.clone(),
                instance.clone(),
                cfg.digest.clone(),
                check.clone(),
                cfg.daemon.lease,
                gate.clone(),
                metrics.clone(),
                status.clone(),
            ));
            status.set_leadership(crate::rotation::report::Leadership {
                role: crate::rotation::report::Role::Standby,
                policies: cfg.policies.iter().map(|p| p.name.clone()).collect(),
                ..Default::default()
            });
            notify(sdnotify::ready());
            if let Some(f) = &opts.on_ready {
                f(&endpoint);
            }
            tracing::info!(config = %config_path.display(), state = %cfg.daemon.state.display(), instance = %instance, endpoint = %endpoint, "rekey standing by: waiting for the lease");
            let standby = Standby {
                node: &node,
                rotate_rx: &mut rotate_rx,
                command_rx: &mut command_rx,
                signals: &mut signals,
                stop: &opts.stop,
                liveness: &liveness,
            };
            match standby.wait().await {
                Some(acquired) => {
                    let until = node.store.lease_info().ok().and_then(|i| i.lease_until);
                    node.lead(acquired, until);
                    node.spawn_renewals(acquired, renewals.clone());
                    Some((node, acquired.fence))
                }
                None => {
                    notify(sdnotify::stopping());
                    server_stop.cancel();
                    join_servers(server_thread, admin_thread).await;
                    tracing::info!("stopped (standby)");
                    return Ok(());
                }
            }
        }
        None => None,
    };
    // A seal key that does not open the sealed secrets is refused at its
    // key (`daemon.seal_key`, else the state, whose key file it is).
    let sealer = open_sealer(&cfg, &store).map_err(|e| match e {
        DaemonError::Store(_) => e,
        other => {
            let at: &[&str] = if cfg.daemon.seal_key.is_some() {
                &["daemon.seal_key"]
            } else {
                &["daemon.state", "daemon"]
            };
            refuse(at, &other)
        }
    })?;
    let runtime = Arc::new(
        build_runtime(cfg.clone(), &metrics, &opts.clock)
            .map_err(|e| refuse(&[e.item.as_str()], &e))?,
    );
    let engine = Arc::new(Engine {
        store: store.clone(),
        clock: opts.clock.clone(),
        sealer: Arc::new(sealer),
        metrics: metrics.clone(),
        status: status.clone(),
        wake_scheduler: Arc::new(Notify::new()),
        wake_notify: Arc::new(Notify::new()),
        slots: Arc::new(Semaphore::new(cfg.daemon.max_concurrent_rotations)),
        backoff: Backoff::default(),
        lease: gate.clone(),
        status_built: Default::default(),
        ledgers: Default::default(),
        settled: Default::default(),
    });
    let unfinished = recovery::unfinished(&store)?;
    let d = Arc::new(Daemon {
        engine: engine.clone(),
        deliverer: Mutex::new(None),
        config_path: config_path.to_path_buf(),
        runtime: RwLock::new(runtime.clone()),
        retained: Mutex::new(HashMap::new()),
        next_checks: Mutex::new(HashMap::new()),
        checking: Mutex::new(HashSet::new()),
        check_slots: Arc::new(Semaphore::new(CHECK_GROUPS)),
        was_busy: std::sync::atomic::AtomicBool::new(false),
        driving: Mutex::new(HashSet::new()),
        held: Mutex::new(HashMap::new()),
        last_refresh: Mutex::new(Some(std::time::Instant::now())),
        policy_globs: Mutex::new(HashMap::new()),
        work_stop: CancellationToken::new(),
        tracker: TaskTracker::new(),
    });
    d.start_deliverer(&cfg).map_err(|e| match e {
        DaemonError::Build(reason) => {
            let item = cfg
                .notify
                .keys()
                .find(|n| reason.contains(&format!("{n}:")) || reason.contains(&format!("{n} ")))
                .map(|n| format!("notify.{n}"))
                .unwrap_or_default();
            refuse(&[item.as_str()], &reason)
        }
        other => other,
    })?;
    d.schedule_policies(&cfg, None);
    // Deadlines stored while the wall clock was ahead must not stall.
    if let Err(e) = d.engine.clamp_stored_deadlines() {
        tracing::warn!(error = %e, "cannot check the stored deadlines against the clock");
    }
    for p in &cfg.policies {
        metrics.init_policy(&p.name, &p.sinks, &p.provider);
        if let Ok(Some(t)) = store.last_success(&p.name) {
            metrics.set_last_success(&p.name, t.timestamp() as f64);
        }
        if let Err(e) = engine.refresh_status(&runtime, &p.name) {
            tracing::warn!(policy = %p.name, error = %e, "cannot rebuild status from the store");
        }
    }
    tracing::info!(
        config = %config_path.display(),
        state = %cfg.daemon.state.display(),
        policies = cfg.policies.len(),
        resuming = unfinished.len(),
        endpoint = %endpoint,
        "rekey ready"
    );
    let mut last_status_line = String::new();
    if leading.is_none() {
        // A PostgreSQL node said READY when it began standing by.
        notify(sdnotify::ready());
        if let Some(f) = &opts.on_ready {
            f(&endpoint);
        }
    }

    loop {
        liveness.beat();
        notify(sdnotify::watchdog_ping());
        let line = status_line(&status);
        if line != last_status_line {
            notify(sdnotify::status(&line));
            last_status_line = line;
        }
        let now = engine.clock.now();
        if leading.is_some() {
            d.take_rotation_requests();
        }
        d.trim_when_idle();
        // One read of the unfinished rotations serves both: what to start
        // now and when to wake next.
        let active = match engine.store.active_rotations() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "cannot read unfinished rotations; trying again at the next heartbeat");
                Vec::new()
            }
        };
        d.refresh_when_stale();
        // Status rebuilds that rotation steps left to the end of their
        // policy's coalescing window (Engine::flush_status).
        let flush_in = engine.flush_status(&d.current());
        d.start_due_work(now, &active);
        let deadline = d.next_deadline(now, heartbeat, &active);
        let sleep_for = (deadline - engine.clock.now()).to_std().unwrap_or_default();
        let sleep_for = flush_in.map_or(sleep_for, |f| sleep_for.min(f));
        let control = tokio::select! {
            _ = tokio::time::sleep(sleep_for) => None,
            _ = engine.wake_scheduler.notified() => None,
            _ = opts.stop.cancelled() => Some(Control::Shutdown),
            Some(req) = rotate_rx.recv() => {
                d.handle_rotate(req);
                None
            }
            Some(req) = command_rx.recv() => {
                d.handle_command(req);
                None
            }
            Some(sig) = async {
                match signals.as_mut() {
                    Some(s) => s.next().await,
                    None => std::future::pending().await,
                }
            } => Some(if sig == signal_hook::consts::SIGHUP { Control::Reload } else { Control::Shutdown }),
        };
        match control {
            None => {}
            Some(Control::Reload) => {
                notify(sdnotify::reloading());
                d.reload();
                notify(sdnotify::ready());
            }
            Some(Control::Shutdown) => break,
        }
    }
    notify(sdnotify::stopping());

    // Shutdown: stop taking work, let in-flight steps reach their commit.
    let timeout = d
        .runtime
        .read()
        .expect("runtime lock")
        .config
        .daemon
        .shutdown_timeout;
    tracing::info!(
        in_flight = d.tracker.len(),
        timeout_ms = timeout.as_millis() as u64,
        "shutting down: letting in-flight steps reach their next commit"
    );
    d.work_stop.cancel();
    d.tracker.close();
    let waited = tokio::select! {
        r = tokio::time::timeout(timeout, d.tracker.wait()) => r.is_ok(),
        Some(_) = async {
            match signals.as_mut() {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            }
        } => {
            tracing::warn!("second signal: exiting at once; unfinished steps resume on the next start");
            std::process::exit(1);
        }
    };
    if !waited {
        tracing::warn!(
            "shutdown_timeout reached with steps still in flight; they resume on the next start"
        );
    }
    // The steps' last commits are in the store: put them in the status
    // (stored health, condition events) while the lease is still ours,
    // rather than leave them to a coalescing window that never ends.
    engine.flush_status_all(&d.current());
    // Every commit is done: hand the lease over (NOTIFY wakes standbys).
    renewals.cancel();
    if let Some((node, fence)) = &leading {
        if waited {
            node.resign(*fence);
        } else {
            // Steps still in flight may yet commit: let the lease expire
            // rather than hand it over under them.
            node.gate.close();
        }
    }
    server_stop.cancel();
    join_servers(server_thread, admin_thread).await;
    d.stop_deliverer().await;
    tracing::info!("stopped");
    Ok(())
}

/// Wait (at most 3 s) for the status server threads to end.
async fn join_servers(
    server_thread: std::thread::JoinHandle<()>,
    admin_thread: Option<std::thread::JoinHandle<()>>,
) {
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::task::spawn_blocking(move || {
            let _ = server_thread.join();
            if let Some(t) = admin_thread {
                let _ = t.join();
            }
        }),
    )
    .await;
}

/// A PostgreSQL node waiting for the lease, with what it answers meanwhile.
struct Standby<'a> {
    node: &'a Arc<lease::Node>,
    rotate_rx: &'a mut mpsc::Receiver<RotateRequest>,
    command_rx: &'a mut mpsc::Receiver<CommandRequest>,
    signals: &'a mut Option<signal_hook_tokio::Signals>,
    stop: &'a CancellationToken,
    liveness: &'a Liveness,
}

impl Standby<'_> {
    /// Stand by until this node holds the lease (`Some`) or is told to
    /// stop (`None`). Polls the lease row with jitter; a resign's NOTIFY
    /// wakes it at once. `POST /rotate` is recorded for the leader;
    /// retry/abandon are refused (they belong to the leader).
    async fn wait(self) -> Option<lease::Acquired> {
        let node = self.node;
        let mut listener: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            self.liveness.beat();
            notify(sdnotify::watchdog_ping());
            let store = node.store.clone();
            let me = node.clone();
            match tokio::task::spawn_blocking(move || me.try_acquire()).await {
                Ok(Ok(Some(acquired))) => {
                    if let Some(l) = listener.take() {
                        l.abort();
                    }
                    return Some(acquired);
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "standby: cannot read the lease; trying again");
                }
                Err(e) => tracing::warn!(error = %e, "standby: lease check task failed"),
            }
            let wait = node.poll_interval();
            if listener.as_ref().is_none_or(|l| l.is_finished()) {
                listener = Some(tokio::task::spawn_blocking(move || {
                    if let Err(e) = store.listen_lease(wait) {
                        tracing::debug!(error = %e, "standby: LISTEN failed; polling");
                        std::thread::sleep(wait);
                    }
                }));
            }
            let woken = async {
                match listener.as_mut() {
                    Some(l) => {
                        let _ = l.await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = woken => {
                    listener = None;
                }
                _ = self.stop.cancelled() => return None,
                Some(req) = self.rotate_rx.recv() => record_rotate_request(node, req),
                Some(req) = self.command_rx.recv() => {
                    let leader = node.status.load().leadership.leader.clone();
                    let _ = req.reply.send(CommandReply::Refused {
                        message: format!(
                            "this node ({}) is a standby; ask the leader ({})",
                            node.instance,
                            leader.as_deref().unwrap_or("none right now")
                        ),
                    });
                }
                Some(sig) = async {
                    match self.signals.as_mut() {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if sig != signal_hook::consts::SIGHUP {
                        return None;
                    }
                    tracing::warn!("standby: SIGHUP ignored; a standby takes its config when it starts (restart it to change it)");
                }
            }
        }
    }
}

/// `POST /rotate` on a standby: recorded in the state for the leader,
/// which carries it out at its next heartbeat.
fn record_rotate_request(node: &lease::Node, req: RotateRequest) {
    let reply = match node.store.request_rotation(
        &req.policy,
        req.lineage.as_deref(),
        &serde_json::json!({ "revoke_old_immediately": req.revoke_old_immediately }),
        &node.instance,
    ) {
        Ok(id) => RotateReply::Accepted {
            rotations: Vec::new(),
            message: format!(
                "this node ({}) is a standby: request {id} is recorded for the leader ({}), which starts it within its next heartbeat",
                node.instance,
                node.status
                    .load()
                    .leadership
                    .leader
                    .as_deref()
                    .unwrap_or("none right now")
            ),
        },
        Err(e) => RotateReply::Refused {
            message: format!("this node is a standby and cannot record the request: {e}"),
        },
    };
    tracing::info!(policy = %req.policy.escape_debug(), lineage = req.lineage.as_deref().unwrap_or("*"), reply = %reply, "rotate request on a standby");
    let _ = req.reply.send(reply);
}

/// Which status listener to start.
enum StatusListen {
    /// `daemon.listen`, serving as the role says.
    Plain(crate::config::ListenAddr, server::Role),
    /// `daemon.admin_listen`: the admin Unix socket.
    Admin {
        path: PathBuf,
        group: String,
        /// The group was named in the config (a missing one is an error).
        required: bool,
    },
}

/// Serve the status endpoint on a thread and runtime of its own, so it
/// never waits behind engine work (provider calls, SQLite commits) on the
/// daemon's workers: `/status` and `/metrics` stay fast while rotations run.
/// Returns once the listener is bound (a busy port fails start-up).
async fn start_status_server(
    listen: StatusListen,
    state: ServerState,
    limits: server::Limits,
    stop: CancellationToken,
) -> Result<(String, std::thread::JoinHandle<()>), DaemonError> {
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<String, String>>();
    let addr = match &listen {
        StatusListen::Plain(l, _) => l.to_string(),
        StatusListen::Admin { path, .. } => format!("unix:{}", path.display()),
    };
    let thread = std::thread::Builder::new()
        .name("rekey-status".into())
        .spawn(move || {
            // Its blocking threads run only the `/status` and `/metrics`
            // renders: named so `top -H` and `perf sched` tell them from
            // the engine's workers.
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name("rekey-render")
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                let bound = match &listen {
                    StatusListen::Plain(l, role) => {
                        server::bind(l).await.map(|b| b.with_role(*role))
                    }
                    StatusListen::Admin {
                        path,
                        group,
                        required,
                    } => server::bind_admin(path, group, *required).await,
                };
                match bound {
                    Ok(bound) => {
                        let _ = tx.send(Ok(bound.endpoint()));
                        server::serve_with_limits(bound, state, limits, stop).await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        })
        .map_err(|e| DaemonError::Listen {
            addr: addr.clone(),
            reason: format!("cannot start the status thread: {e}"),
        })?;
    match rx.await {
        Ok(Ok(endpoint)) => Ok((endpoint, thread)),
        Ok(Err(reason)) => Err(DaemonError::Listen { addr, reason }),
        Err(_) => Err(DaemonError::Listen {
            addr,
            reason: "the status thread stopped before binding".into(),
        }),
    }
}

/// A failed sd_notify is worth a debug line, never a stop.
fn notify(r: std::io::Result<()>) {
    if let Err(e) = r {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// `STATUS=` for systemctl status: "3 policies, 1 rotating, 1 failing".
fn status_line(status: &StatusHandle) -> String {
    let snap = status.load();
    let mut line = format!("{} policies", snap.policies.len());
    for h in [
        Health::Rotating,
        Health::Due,
        Health::Failing,
        Health::Expired,
        Health::NoKeys,
        Health::Misconfigured,
    ] {
        let n = snap.policies.iter().filter(|p| p.health == h).count();
        if n > 0 {
            line.push_str(&format!(", {n} {}", h.as_str()));
        }
    }
    line
}

impl Daemon {
    /// (Re)start notification delivery for `cfg`'s targets. Undelivered
    /// events stay in the outbox, so a restart loses nothing.
    fn start_deliverer(&self, cfg: &Config) -> Result<(), DaemonError> {
        let targets: Vec<_> = cfg.notify.values().cloned().collect();
        let deliverer = crate::notify::Deliverer::new(
            self.engine.store.clone(),
            targets,
            self.engine.clock.clone(),
        )
        .map_err(|e| DaemonError::Build(e.to_string()))?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(deliverer.run(self.engine.wake_notify.clone(), stop.clone()));
        if let Some((old_stop, _)) = self.deliverer.lock().expect("lock").replace((stop, task)) {
            old_stop.cancel();
        }
        Ok(())
    }

    async fn stop_deliverer(&self) {
        let current = self.deliverer.lock().expect("lock").take();
        if let Some((stop, task)) = current {
            stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
    }

    fn current(&self) -> Arc<Runtime> {
        self.runtime.read().expect("runtime lock").clone()
    }

    /// Set each policy's next check: kept from the store across restarts;
    /// checked at once when never checked or overdue; recomputed when the
    /// schedule changed in a reload.
    fn schedule_policies(&self, cfg: &Config, old: Option<&Config>) {
        let now = self.engine.clock.now();
        let mut next = self.next_checks.lock().expect("lock");
        next.retain(|p, _| cfg.policy(p).is_some());
        for p in &cfg.policies {
            let changed = old
                .and_then(|o| o.policy(&p.name))
                .map(|o| o.schedule != p.schedule);
            // Never further away than the schedule allows from now: a
            // time stored before the wall clock stepped back must not
            // stall the checks.
            let latest = p.schedule.next_after(now).unwrap_or(now);
            let when = match changed {
                Some(false) => match next.get(&p.name) {
                    Some(t) => (*t).min(latest),
                    None => now,
                },
                Some(true) => latest,
                None => match self
                    .engine
                    .store
                    .policy_state(&p.name)
                    .ok()
                    .flatten()
                    .and_then(|s| s.next_check_at)
                {
                    Some(t) if t > now => t.min(latest),
                    _ => now,
                },
            };
            if changed == Some(true)
                && let Err(e) = self.engine.store.set_next_check(&p.name, when)
            {
                tracing::warn!(policy = %p.name, error = %e, "cannot store the recomputed next check");
            }
            next.insert(p.name.clone(), when);
        }
    }

    fn runtime_for(&self, policy: &str, rotation: &str) -> Option<Arc<Runtime>> {
        let rt = self.current();
        if rt.policy(policy).is_some() {
            return Some(rt);
        }
        self.retained.lock().expect("lock").get(rotation).cloned()
    }

    fn start_due_work(self: &Arc<Self>, now: DateTime<Utc>, active: &[crate::state::RotationRow]) {
        if self.work_stop.is_cancelled() {
            return;
        }
        let rt = self.current();
        let due: Vec<(String, DateTime<Utc>)> = self
            .next_checks
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(p, t)| (p.clone(), *t))
            .collect();
        // Policies due now, grouped by the account (and credentials) their
        // provider lists: each group is planned from one walk. A group is
        // due at the earliest instant any of its policies was.
        // Each group also keeps the instant each of its policies was due,
        // to tell at its end whether a reload rescheduled one meanwhile.
        #[allow(clippy::type_complexity)]
        let mut groups: std::collections::BTreeMap<
            String,
            (DateTime<Utc>, Vec<String>, Vec<DateTime<Utc>>),
        > = Default::default();
        for (p, due_at) in due {
            if !self.checking.lock().expect("lock").insert(p.clone()) {
                continue;
            }
            let scope = match rt.policy(&p) {
                Some(policy) => rt.walks.scope(&policy.provider),
                None => format!("policy {p}"),
            };
            let g = groups
                .entry(scope)
                .or_insert((due_at, Vec::new(), Vec::new()));
            g.0 = g.0.min(due_at);
            g.1.push(p);
            g.2.push(due_at);
        }
        for (_, (due_at, policies, taken)) in groups {
            let me = self.clone();
            let rt = rt.clone();
            self.tracker.spawn(async move {
                me.check_group(&rt, due_at, policies, taken).await;
            });
        }
        for row in active.iter().cloned() {
            if !crate::rotation::engine::rotation_due(&row, now) {
                continue;
            }
            if self.held_back(&row.id, now) {
                continue;
            }
            if !self.driving.lock().expect("lock").insert(row.id.clone()) {
                continue;
            }
            let Some(rt) = self.runtime_for(&row.policy, &row.id) else {
                // Released at once: a reload that brings the policy back
                // must find the rotation free to drive.
                self.driving.lock().expect("lock").remove(&row.id);
                self.hold_back(
                    &row.id,
                    now,
                    "its policy is not in the running configuration",
                );
                tracing::error!(policy = %row.policy, rotation = %row.id, "rotation's policy is gone and no earlier configuration is retained; it resumes when the policy returns");
                continue;
            };
            let me = self.clone();
            self.tracker.spawn(async move {
                let id = row.id.clone();
                match me.engine.advance(&rt, &id, &me.work_stop).await {
                    Ok(_) => {
                        me.held.lock().expect("lock").remove(&id);
                    }
                    Err(e) if e.is_fenced() && crate::rotation::gate::FENCING => {
                        tracing::error!(policy = %row.policy, rotation = %id, error = %e, "this node may no longer lead");
                        std::process::exit(lease::EXIT_NOT_LEADER);
                    }
                    Err(e) => {
                        // A store write that fails (disk full) or another
                        // unexpected error: back off, never spin.
                        let delay = me.hold_back(&id, me.engine.clock.now(), &e.to_string());
                        tracing::error!(policy = %row.policy, rotation = %id, error = %e, retry_in_ms = delay.as_millis() as u64, "rotation step failed unexpectedly; backing off");
                    }
                }
                me.driving.lock().expect("lock").remove(&id);
                if !me.work_stop.is_cancelled() {
                    me.engine.wake_scheduler.notify_one();
                }
            });
        }
    }

    /// Check one group of policies (one account's, due together) from one
    /// walk, then write the checks that changed nothing in one transaction
    /// and schedule every policy of the group from the instant the group
    /// was due (`due_at`): its next window, or — when the checks ran past
    /// that window — the first window still ahead. Every policy of the
    /// group gets its next window from the same instant, so a group whose
    /// checks overrun a window boundary stays one group (one walk) in
    /// later windows instead of splitting where the boundary fell.
    ///
    /// `taken` is the next check each policy had when the group was formed:
    /// a policy whose next check a reload changed meanwhile (a new
    /// schedule) keeps the reload's, and the state is told it again (the
    /// check may have stored one from the schedule it started with).
    async fn check_group(
        &self,
        rt: &Arc<Runtime>,
        due_at: DateTime<Utc>,
        policies: Vec<String>,
        taken: Vec<DateTime<Utc>>,
    ) {
        let _slot = self
            .check_slots
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let provider = policies
            .first()
            .and_then(|p| rt.policy(p))
            .and_then(|p| rt.providers.get(&p.provider))
            .cloned();
        let walk = match &provider {
            Some(provider) => Some(
                rt.walks
                    .listing(
                        provider,
                        &self.engine.clock,
                        None,
                        provider::listing::Purpose::Check,
                    )
                    .await,
            ),
            None => None,
        };
        // Every key name of the walk matched once against the group's
        // globs, not once per policy.
        let parts = match &walk {
            Some(Ok(w)) => {
                let globs = self.policy_globs(rt, &policies);
                Some(w.split(&globs))
            }
            _ => None,
        };
        let mut quiet = Vec::new();
        let mut spill = crate::rotation::engine::QuietSpill::default();
        for (i, p) in policies.iter().enumerate() {
            let result = match (&walk, &parts) {
                (Some(Ok(w)), Some(parts)) => {
                    self.engine
                        .check_policy_in_walk(rt, p, w, &parts[i], &mut quiet)
                        .await
                }
                (Some(Err(e)), _) => {
                    self.engine
                        .check_policy_deferred(rt, p, Err(e.clone()), &mut quiet)
                        .await
                }
                (Some(Ok(_)), None) | (None, _) => self
                    .engine
                    .check_policy(rt, p)
                    .await
                    .map(crate::rotation::engine::Checked::Planned),
            };
            match result {
                Ok(checked) => {
                    tracing::info!(policy = %p, health = checked.health().as_str(), lineages = checked.lineages(), due = checked.due(), reused = matches!(checked, crate::rotation::engine::Checked::Reused { .. }), "check done")
                }
                Err(e) => tracing::warn!(policy = %p, error = %e, "check failed"),
            }
            // A first round plans every policy: their decisions are written
            // as they pass the budget, not all held to the end.
            if let Err(e) = self.engine.spill_quiet_decisions(
                &mut quiet,
                &mut spill,
                crate::rotation::engine::QUIET_DECISIONS_BYTES,
            ) {
                tracing::warn!(error = %e, "cannot record the decisions of checks that changed nothing yet (the group's final write tries again)");
            }
        }
        let end = self.engine.clock.now();
        let next_for = |policy: &crate::config::PolicyConfig| {
            let next = policy.schedule.next_after(due_at).filter(|t| *t > end);
            next.or_else(|| policy.schedule.next_after(end))
                .unwrap_or_else(|| end + chrono::Duration::hours(1))
        };
        // Each policy's next check: from its schedule, unless a reload
        // rescheduled it while the group ran (then the reload's stands).
        let nexts: HashMap<&str, DateTime<Utc>> = {
            let mut nc = self.next_checks.lock().expect("lock");
            policies
                .iter()
                .zip(&taken)
                .filter_map(|(p, taken)| {
                    let t = nc.get_mut(p)?;
                    if *t == *taken {
                        *t = next_for(rt.policy(p)?);
                    }
                    Some((p.as_str(), *t))
                })
                .collect()
        };
        // The checks that changed nothing carry it in their one write;
        // every other check stored the next window after its own start,
        // which is in the past when the group ran past it (or not the
        // reload's): the state is told the scheduler's, in one
        // transaction.
        for r in &mut quiet {
            if let Some(t) = nexts.get(r.policy.as_str()) {
                r.next_check_at = Some(*t);
            }
        }
        let quiet_names: HashSet<&str> = quiet.iter().map(|r| r.policy.as_str()).collect();
        let loud: Vec<(&str, DateTime<Utc>)> = nexts
            .iter()
            .filter(|(p, _)| !quiet_names.contains(*p))
            .map(|(p, t)| (*p, *t))
            .collect();
        if let Err(e) = self.engine.store.record_check_times(&quiet) {
            tracing::warn!(policies = quiet.len(), error = %e, "cannot record the times of checks that changed nothing");
        }
        drop(quiet);
        if let Err(e) = self.engine.store.set_next_checks(&loud) {
            tracing::warn!(policies = loud.len(), error = %e, "cannot store the policies' next checks");
        }
        // The status shows the scheduler's next check, not the one the
        // check assumed.
        for (p, t) in nexts {
            self.engine.set_status_next_check(p, t);
        }
        // A reload may have removed some of these policies while they were
        // checked: their checks ran on the runtime the group started with
        // and rebuilt their status, metrics and conditions. Forget them
        // again, as the reload did.
        let current = self.current();
        let gone: Vec<&str> = policies
            .iter()
            .map(String::as_str)
            .filter(|p| current.policy(p).is_none())
            .collect();
        if !gone.is_empty() {
            self.forget_policies(&gone, &current.config);
        }
        let mut checking = self.checking.lock().expect("lock");
        for p in &policies {
            checking.remove(p);
        }
        drop(checking);
        self.engine.wake_scheduler.notify_one();
    }

    /// Forget policies the running configuration `cfg` no longer has
    /// (`removed`): their metric series, their held conditions, and every
    /// status entry `cfg` does not name. Used by a reload and by a check
    /// group that ran while a reload removed some of its policies.
    fn forget_policies(&self, removed: &[&str], cfg: &Config) {
        for p in removed {
            self.engine.metrics.remove_policy(p);
            if let Err(e) = self.engine.store.clear_conditions(p) {
                tracing::warn!(policy = %p, error = %e, "cannot forget the conditions of a removed policy");
            }
        }
        let names: Vec<String> = cfg.policies.iter().map(|p| p.name.clone()).collect();
        self.engine.status.retain_policies(&names);
    }

    /// One glob set of `policies`' `match` globs, in that order (a policy
    /// not in `rt`, whose check fails as unknown, gets the empty glob),
    /// built once per group of policies and configuration generation.
    fn policy_globs(&self, rt: &Arc<Runtime>, policies: &[String]) -> Arc<globset::GlobSet> {
        let mut cache = self.policy_globs.lock().expect("lock");
        if let Some((cfg, set)) = cache.get(policies)
            && Arc::ptr_eq(cfg, &rt.config)
        {
            return set.clone();
        }
        let mut b = globset::GlobSetBuilder::new();
        for p in policies {
            match rt.policy(p) {
                Some(policy) => b.add(policy.matcher.glob().clone()),
                None => b.add(globset::Glob::new("").expect("the empty glob is valid")),
            };
        }
        let set = Arc::new(b.build().unwrap_or_else(|_| globset::GlobSet::empty()));
        // Sets of an earlier configuration are not needed any more.
        cache.retain(|_, (cfg, _)| Arc::ptr_eq(cfg, &rt.config));
        cache.insert(policies.to_vec(), (rt.config.clone(), set.clone()));
        set
    }

    /// Whether `id` is backing off after an unexpected failure.
    fn held_back(&self, id: &str, now: DateTime<Utc>) -> bool {
        self.held
            .lock()
            .expect("lock")
            .get(id)
            .is_some_and(|(_, until)| *until > now)
    }

    /// Back off driving `id` after an unexpected failure: from
    /// [`HOLD_FLOOR`] doubling to [`HOLD_CAP`]. Returns the delay.
    fn hold_back(&self, id: &str, now: DateTime<Utc>, why: &str) -> Duration {
        let mut held = self.held.lock().expect("lock");
        let n = held.get(id).map_or(0, |(n, _)| *n) + 1;
        let delay = HOLD_FLOOR
            .saturating_mul(1u32 << (n - 1).min(16))
            .min(HOLD_CAP);
        held.insert(
            id.to_string(),
            (
                n,
                now + chrono::Duration::from_std(delay).unwrap_or_default(),
            ),
        );
        tracing::debug!(rotation = %id, failures = n, why, "holding the rotation back");
        delay
    }

    /// Rebuild from the store (no provider call) the status of every policy
    /// whose status is older than [`STATUS_REFRESH`] (looked at every third
    /// of that): conditions that arise only with time (a rotation older
    /// than its bound, a key past its expiry) are then reported, with their
    /// event, within about that interval. A policy whose status a check or
    /// rotation step rebuilt less than that ago is skipped, and so is one
    /// whose status was built from a settled plan that still stands
    /// (`StatusBuilt::current`: no such condition can arise before its end).
    fn refresh_when_stale(&self) {
        let mut last = self.last_refresh.lock().expect("lock");
        if last.is_some_and(|t| t.elapsed() < STATUS_REFRESH / 3) {
            return;
        }
        *last = Some(std::time::Instant::now());
        drop(last);
        let rt = self.current();
        let now = self.engine.clock.now();
        for p in &rt.config.policies {
            if self.engine.status_built.current(
                &p.name,
                STATUS_REFRESH,
                self.engine.store.ledger_generation(&p.name),
                &rt.config,
                now,
            ) {
                continue;
            }
            if let Err(e) = self.engine.refresh_status(&rt, &p.name) {
                tracing::warn!(policy = %p.name, error = %e, "cannot rebuild status from the store");
            }
        }
        let m = &self.engine.metrics;
        let rows = self.engine.store.outbox_state().unwrap_or_default();
        for target in rt.config.notify.keys() {
            let (depth, dead) = rows
                .iter()
                .find(|r| &r.0 == target)
                .map_or((0, 0), |r| (r.1, r.2));
            m.outbox_depth
                .with_label_values(&[target.as_str()])
                .set(depth as f64);
            m.dead_letters
                .with_label_values(&[target.as_str()])
                .set(dead as f64);
        }
    }

    /// When the last check or rotation step finishes, hand freed heap back
    /// to the OS: a scan of thousands of keys leaves its peak behind
    /// otherwise, and an idle daemon should be small.
    fn trim_when_idle(&self) {
        let busy = !self.tracker.is_empty();
        let was = self
            .was_busy
            .swap(busy, std::sync::atomic::Ordering::Relaxed);
        if was && !busy {
            // Nothing in flight: the last walks' keys are not needed.
            self.current().walks.release_finished();
            harden::release_free_memory();
        }
    }

    fn next_deadline(
        &self,
        now: DateTime<Utc>,
        heartbeat: Duration,
        active: &[crate::state::RotationRow],
    ) -> DateTime<Utc> {
        let mut deadline = now + chrono::Duration::from_std(heartbeat).unwrap_or_default();
        let checking = self.checking.lock().expect("lock").clone();
        for (p, t) in self.next_checks.lock().expect("lock").iter() {
            if !checking.contains(p) {
                deadline = deadline.min(*t);
            }
        }
        let driving = self.driving.lock().expect("lock").clone();
        let held = self.held.lock().expect("lock").clone();
        for r in active {
            if driving.contains(&r.id) {
                continue;
            }
            let mut t = r.next_attempt_at.unwrap_or(now);
            if let Some((_, until)) = held.get(&r.id) {
                t = t.max(*until);
            }
            deadline = deadline.min(t);
        }
        deadline.max(now)
    }

    /// The leader carries out `POST /rotate` requests that standbys
    /// recorded (PostgreSQL state), and records each result.
    fn take_rotation_requests(&self) {
        let requests = match self.engine.store.take_rotation_requests() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read rotate requests recorded by standbys");
                return;
            }
        };
        let rt = self.current();
        for r in requests {
            let revoke = r.options["revoke_old_immediately"].as_bool() == Some(true);
            let reply = match self
                .engine
                .rotate_now(&rt, &r.policy, r.lineage.as_deref(), revoke)
            {
                Ok(reply) => reply,
                Err(e) => crate::status::RotateReply::Refused {
                    message: e.to_string(),
                },
            };
            tracing::info!(request = r.id, policy = %r.policy.escape_debug(), requested_by = %r.requested_by.escape_debug(), reply = %reply, "rotate request recorded by a standby");
            let result = serde_json::to_value(&reply).unwrap_or(serde_json::Value::Null);
            if let Err(e) = self.engine.store.finish_rotation_request(r.id, &result) {
                tracing::warn!(request = r.id, error = %e, "cannot record the result of a rotate request");
            }
        }
    }

    fn handle_rotate(&self, req: RotateRequest) {
        let rt = self.current();
        let reply = match self.engine.rotate_now(
            &rt,
            &req.policy,
            req.lineage.as_deref(),
            req.revoke_old_immediately,
        ) {
            Ok(r) => r,
            Err(e) => crate::status::RotateReply::Refused {
                message: e.to_string(),
            },
        };
        tracing::info!(policy = %req.policy, lineage = req.lineage.as_deref().unwrap_or("*"), revoke_old_immediately = req.revoke_old_immediately, reply = %reply, "rotate request");
        let _ = req.reply.send(reply);
    }

    /// `rekey retry` / `rekey abandon`: answered from a task (abandon may
    /// call the provider to delete an unpublished key).
    fn handle_command(self: &Arc<Self>, req: CommandRequest) {
        // Abandon deletes an unacknowledged key: never while a step of the
        // rotation is running (a sink could be receiving that key), and no
        // drive starts while it runs.
        if req.command == Command::Abandon
            && !self
                .driving
                .lock()
                .expect("lock")
                .insert(req.rotation.clone())
        {
            let _ = req.reply.send(CommandReply::Refused {
                message: format!(
                    "rotation {} is running a step right now; try again in a moment",
                    req.rotation
                ),
            });
            return;
        }
        let me = self.clone();
        self.tracker.spawn(async move {
            let rt = match me.engine.store.rotation(&req.rotation) {
                Ok(Some(r)) => me.runtime_for(&r.policy, &r.id).unwrap_or_else(|| me.current()),
                _ => me.current(),
            };
            let reply = match req.command {
                Command::Retry => me.engine.retry_now(&rt, &req.rotation),
                Command::Abandon => me.engine.abandon(&rt, &req.rotation).await,
            };
            let reply = reply.unwrap_or_else(|e| CommandReply::Refused {
                message: e.to_string(),
            });
            match req.command {
                Command::Retry => {
                    me.held.lock().expect("lock").remove(&req.rotation);
                }
                Command::Abandon => {
                    me.driving.lock().expect("lock").remove(&req.rotation);
                }
            }
            tracing::info!(rotation = %req.rotation.escape_debug(), command = req.command.as_str(), reply = ?reply, "rotation command");
            let _ = req.reply.send(reply);
            me.engine.wake_scheduler.notify_one();
        });
    }

    fn reload(&self) {
        tracing::info!(config = %self.config_path.display(), "reloading configuration");
        let cfg = match config::load(&self.config_path) {
            Ok((cfg, warnings)) => {
                for w in &warnings {
                    tracing::warn!("{w}");
                }
                cfg
            }
            Err(diags) => {
                for d in &diags {
                    tracing::error!("{d}");
                }
                tracing::error!(
                    "reload refused: the new configuration is invalid; still running the previous one"
                );
                return;
            }
        };
        let old = self.current();
        if old.config.daemon.state.sqlite_path().is_none() && cfg.digest != old.config.digest {
            // The lease row records the leader's digest; standbys compare
            // theirs with it (DESIGN §8). A config change goes through a
            // restart, in the order the README gives.
            tracing::error!(
                running = %old.config.digest,
                new = %cfg.digest,
                "reload refused: on a PostgreSQL state, providers, sinks, notify targets and policies change only with a restart of each node (README: rolling config change); still running the previous configuration"
            );
            return;
        }
        if cfg.daemon.state.display() != old.config.daemon.state.display()
            || cfg.daemon.listen != old.config.daemon.listen
            || cfg.daemon.admin_listen != old.config.daemon.admin_listen
        {
            tracing::warn!("daemon.state and daemon.listen take effect only on restart");
        }
        let cfg = Arc::new(cfg);
        let rt = match build_runtime(cfg.clone(), &self.engine.metrics, &self.engine.clock) {
            Ok(rt) => Arc::new(rt),
            Err(e) => {
                tracing::error!(error = %e, "reload refused: cannot build providers/sinks; still running the previous configuration");
                return;
            }
        };
        // Whatever was held back (a policy that was missing) gets a fresh try.
        self.held.lock().expect("lock").clear();
        // Rotations of policies that disappear finish with the old runtime.
        if let Ok(active) = self.engine.store.active_rotations() {
            let mut retained = self.retained.lock().expect("lock");
            for r in active {
                if cfg.policy(&r.policy).is_none() {
                    retained.entry(r.id.clone()).or_insert_with(|| old.clone());
                }
            }
        }
        self.schedule_policies(&cfg, Some(&old.config));
        for p in &cfg.policies {
            self.engine
                .metrics
                .init_policy(&p.name, &p.sinks, &p.provider);
        }
        *self.runtime.write().expect("runtime lock") = rt.clone();
        let removed: Vec<&str> = old
            .config
            .policies
            .iter()
            .map(|p| p.name.as_str())
            .filter(|p| cfg.policy(p).is_none())
            .collect();
        self.forget_policies(&removed, &cfg);
        let names: Vec<String> = cfg.policies.iter().map(|p| p.name.clone()).collect();
        for p in &names {
            let _ = self.engine.refresh_status(&rt, p);
        }
        let added: Vec<&str> = names
            .iter()
            .filter(|n| old.config.policy(n).is_none())
            .map(|s| s.as_str())
            .collect();
        let removed: Vec<&str> = old
            .config
            .policies
            .iter()
            .filter(|p| cfg.policy(&p.name).is_none())
            .map(|p| p.name.as_str())
            .collect();
        tracing::info!(policies = names.len(), added = %added.join(", "), removed = %removed.join(", "), "configuration reloaded");
        self.engine.wake_scheduler.notify_one();
    }
}
