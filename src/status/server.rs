//! The status endpoint (DESIGN §4): `GET /healthz`, `GET /status`,
//! `GET /status/{policy}`, `GET /metrics` and the authenticated
//! `POST /rotate/{policy}`, over TCP or a Unix socket.
//!
//! Everything a GET returns comes from the published [`Snapshot`] (an
//! `ArcSwap` load: never a lock, never a provider call) or from the metrics
//! registry, so a slow provider cannot slow the endpoint down. The only
//! request that waits on the daemon is `POST /rotate`, and only for the
//! daemon's answer to a channel message, bounded by a timeout.
//!
//! **Rendering is off the request path** ([`Kept`]): `GET /status` and
//! `GET /metrics` serve the last complete rendering of their body (a
//! shared `Bytes`, not a copy). A snapshot change (announced by
//! [`StatusHandle::subscribe`]) or, for `/metrics`, the rendering's age
//! passing [`METRICS_MAX_AGE`] makes a keeper task render anew on a
//! blocking thread: coalesced (at most one render in flight per body; the
//! next render takes the newest snapshot), and a request never waits for
//! it. Only the first request after idle (no rendering held) renders
//! inline; and a POST the daemon answered brings a held `/status` body up
//! to date before its answer is sent, so a client that asks next (`rekey
//! rotate --wait`) reads its own request's effect (a rendering never
//! replaces one that started after it). Under churn the keeper starts at most
//! one `/status` render per [`STATUS_MIN_INTERVAL`] (changes meanwhile are
//! coalesced into the next), so hundreds of rotating lineages do not keep a
//! render running beside the engine. How stale a served body can be: a
//! `/status` body shows a snapshot replaced at most
//! [`STATUS_MIN_INTERVAL`] plus two render times earlier (the render in
//! flight when the change came, the interval's wait, then the render of the
//! newest snapshot; the keeper is woken by the change, not by a request); a
//! `/metrics` body is at most [`METRICS_MAX_AGE`] plus one render time old. Memory: a body
//! nobody asked for within its idle window (2 s for `/status`, 250 ms for
//! `/metrics`) is dropped and its keeper stops, so an idle daemon holds no
//! rendering and renders nothing. The renderings belong to the daemon, not
//! to a listener ([`Bodies`] in [`ServerState`]): the TCP listener and the
//! admin socket serve the same held bodies. `GET /status/{policy}`
//! serialises the one policy per request.
//!
//! Defences, all in [`Limits`]: a cap on concurrent connections (a
//! semaphore held for the life of each connection), a header read timeout
//! that also bounds a kept-alive connection's idle time (slow-loris, idle
//! floods: a connection that sends no complete request head within it is
//! closed, so a few hundred idle sockets cannot starve `/healthz`), a
//! maximum request head and body size, and a per-request timeout. The admin
//! token is compared in constant time and never appears in a response, a log
//! line or an error.
//!
//! **Host check** (TCP only): a request whose `Host` is neither a loopback
//! name (`localhost`, `*.localhost`), nor an IP literal, nor one of
//! [`Limits::allowed_hosts`] gets `421 Misdirected Request`. A web page
//! that rebinds its own DNS name to 127.0.0.1 sends that name as `Host`, so
//! it cannot read `/status` or `/metrics`.
//!
//! **Roles** ([`Role`]): with `[daemon] admin_listen` set, the TCP listener
//! is [`Role::ReadOnly`] (GETs for Prometheus and `rekey status`; POSTs get
//! 403 naming the admin socket) and the admin Unix socket is
//! [`Role::Admin`]: mode 0660, group `admin_group`; reaching it is the
//! authorization (no token, which a process squatting on the loopback port
//! could otherwise collect). Without it, one listener serves everything and
//! POSTs need the admin token ([`Role::All`]). Admin routes are added in
//! `admin_routes`; read-only ones in `read_routes`.
//!
//! Outside strings are never logged raw: a `POST /rotate/{policy}` for a
//! policy the snapshot does not know is refused (404) before anything is
//! logged, and what is logged goes through the escaping log formatter.
//!
//! Two steps so the daemon can fail fast: [`bind`] (before `READY=1`; a busy
//! port is an error at start-up, not later) and [`serve`] (until the
//! cancellation token fires; in-flight requests get [`Limits::shutdown_grace`]
//! to finish).

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    Command, CommandReply, CommandRequest, CommandSender, PolicyStatus, RotateReply, RotateRequest,
    RotateSender, Snapshot, StatusHandle,
};
use crate::config::ListenAddr;
use crate::metrics::Metrics;
use crate::secret::Secret;

/// Mode of a Unix status socket: owner and group may connect (put operators
/// in the daemon's group), nobody else.
pub const UNIX_SOCKET_MODE: u32 = 0o660;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// GETs, and POSTs with the admin token (no `admin_listen`).
    All,
    /// GETs only; POSTs are refused with a pointer to the admin socket.
    ReadOnly,
    /// The admin Unix socket: GETs and POSTs, authorized by socket access.
    Admin,
}

/// Whether the daemon's main loop is still turning, for `GET /healthz`.
///
/// The main loop calls [`Liveness::beat`] every time it wakes, and must wake
/// at least every `max_age / 2` even when nothing is due (the watchdog tick
/// is a good place: a loop that pings systemd should also beat here). A beat
/// older than `max_age` turns `/healthz` into `503 stalled`.
#[derive(Debug, Clone)]
pub struct Liveness {
    inner: Arc<LivenessInner>,
}

#[derive(Debug)]
struct LivenessInner {
    /// Monotonic origin; beats are stored as microseconds since it so they
    /// fit one atomic (no lock between the loop and the endpoint).
    origin: Instant,
    last_beat_us: AtomicU64,
    max_age: Duration,
}

impl Liveness {
    /// A fresh liveness tracker; creation counts as the first beat.
    pub fn new(max_age: Duration) -> Self {
        Liveness {
            inner: Arc::new(LivenessInner {
                origin: Instant::now(),
                last_beat_us: AtomicU64::new(0),
                max_age,
            }),
        }
    }

    /// The main loop is alive now.
    pub fn beat(&self) {
        let us = self.inner.origin.elapsed().as_micros() as u64;
        self.inner.last_beat_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn since_last_beat(&self) -> Duration {
        let last = Duration::from_micros(self.inner.last_beat_us.load(Ordering::Relaxed));
        self.inner.origin.elapsed().saturating_sub(last)
    }

    pub fn max_age(&self) -> Duration {
        self.inner.max_age
    }

    pub fn is_alive(&self) -> bool {
        self.since_last_beat() <= self.inner.max_age
    }
}

/// What the endpoint serves from and talks to. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerState {
    /// The engine's published snapshot; every GET reads only this.
    pub status: StatusHandle,
    pub metrics: Metrics,
    /// Where `POST /rotate` sends its request; the daemon answers on the
    /// oneshot inside it.
    pub rotate: RotateSender,
    /// Where `POST /retry/{rotation}` and `POST /abandon/{rotation}` send
    /// their request (`None`: those routes answer 503).
    pub commands: Option<CommandSender>,
    /// `None` disables POST endpoints (403 saying how to enable them).
    pub admin_token: Option<Secret>,
    pub liveness: Liveness,
    /// The held `/status` and `/metrics` renderings, shared by every
    /// listener built from this state.
    pub bodies: Bodies,
}

/// The `/status` and `/metrics` renderings ([`Kept`]) of one daemon. Every
/// listener serves the same ones: with `admin_listen`, the TCP listener and
/// the admin socket hold one body of each and run one keeper each, not one
/// per listener. Cheap to clone.
#[derive(Clone)]
pub struct Bodies {
    status: Arc<Kept<StatusRender>>,
    metrics: Arc<Kept<MetricsRender>>,
}

impl Bodies {
    /// Renderings of `status` and `metrics`, none held yet.
    pub fn new(status: &StatusHandle, metrics: &Metrics) -> Self {
        Bodies {
            status: Arc::new(
                Kept::new(
                    StatusRender {
                        status: status.clone(),
                    },
                    JSON_IDLE_DROP,
                    JSON_IDLE_DROP,
                )
                .with_min_interval(STATUS_MIN_INTERVAL),
            ),
            metrics: Arc::new(Kept::new(
                MetricsRender {
                    metrics: metrics.clone(),
                },
                METRICS_MAX_AGE,
                METRICS_MAX_AGE,
            )),
        }
    }
}

impl std::fmt::Debug for Bodies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bodies")
            .field("status_held", &self.status.current.load().is_some())
            .field("metrics_held", &self.metrics.current.load().is_some())
            .finish()
    }
}

/// Resource bounds for the endpoint. The defaults suit a loopback
/// endpoint scraped by Prometheus and polled by `rekey status`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; further clients wait in the kernel's
    /// accept backlog.
    pub max_connections: usize,
    /// Largest request body accepted (no endpoint needs one).
    pub max_body_bytes: usize,
    /// Largest request head (request line + headers); at least 8 KiB.
    pub max_head_bytes: usize,
    /// A client must send its complete request head within this time.
    pub header_read_timeout: Duration,
    /// Upper bound on handling one request.
    pub request_timeout: Duration,
    /// How long `POST /rotate` waits for the daemon to take and answer the
    /// request before answering 503.
    pub rotate_reply_timeout: Duration,
    /// After shutdown is requested, how long in-flight requests may run.
    pub shutdown_grace: Duration,
    /// Host names accepted besides loopback names and IP literals
    /// (lower-case, without port); TCP listeners only.
    pub allowed_hosts: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            max_body_bytes: 64 * 1024,
            max_head_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(3),
            allowed_hosts: Vec::new(),
            request_timeout: Duration::from_secs(15),
            rotate_reply_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

/// A listening socket, bound but not yet serving.
#[derive(Debug)]
pub struct Bound {
    listener: Listener,
    local: ListenAddr,
    role: Role,
}

#[derive(Debug)]
enum Listener {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        /// Device and inode of the socket file we created, so shutdown
        /// removes it only if it is still ours.
        file_id: (u64, u64),
    },
}

impl Bound {
    /// The address actually bound (with the real port when `:0` was asked).
    pub fn local_addr(&self) -> &ListenAddr {
        &self.local
    }

    /// Serve as `role` (default [`Role::All`]).
    pub fn with_role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The endpoint a client would use: `http://IP:PORT` or `unix:/path`.
    pub fn endpoint(&self) -> String {
        match &self.local {
            ListenAddr::Tcp(a) => format!("http://{a}"),
            ListenAddr::Unix(p) => format!("unix:{}", p.display()),
        }
    }
}

/// Bind the status endpoint's socket.
///
/// For a Unix socket: a stale socket file left by a dead daemon is removed
/// first; a socket some live process still answers on is `AddrInUse`; any
/// other kind of file at the path is refused rather than deleted. The new
/// socket is made mode 0660.
pub async fn bind(listen: &ListenAddr) -> io::Result<Bound> {
    match listen {
        ListenAddr::Tcp(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| context(e, format!("cannot listen on {addr}")))?;
            let local = ListenAddr::Tcp(listener.local_addr()?);
            Ok(Bound {
                listener: Listener::Tcp(listener),
                local,
                role: Role::All,
            })
        }
        ListenAddr::Unix(path) => {
            remove_stale_socket(path).await?;
            let listener = UnixListener::bind(path)
                .map_err(|e| context(e, format!("cannot listen on unix:{}", path.display())))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(UNIX_SOCKET_MODE))
                .map_err(|e| context(e, format!("cannot chmod {}", path.display())))?;
            let meta = std::fs::symlink_metadata(path)?;
            Ok(Bound {
                listener: Listener::Unix {
                    listener,
                    file_id: (meta.dev(), meta.ino()),
                },
                local: ListenAddr::Unix(path.clone()),
                role: Role::All,
            })
        }
    }
}

/// Bind the admin Unix socket: mode 0660, group `group` (a name or a
/// number), [`Role::Admin`]. A group that does not exist, or that the
/// daemon cannot give the socket to (its user must be a member), is an
/// error when `required` (the operator named it), else a warning and the
/// socket keeps the daemon's group.
pub async fn bind_admin(path: &Path, group: &str, required: bool) -> io::Result<Bound> {
    let bound = bind(&ListenAddr::Unix(path.to_path_buf())).await?;
    match lookup_group(group) {
        // Already: created in the packaged /run/rekey, setgid rekey-admin
        // (tmpfiles.d), which works without rekey being a member of the
        // group and inside the unit's user namespace, where a chown to
        // another group cannot be expressed.
        Some(gid)
            if std::fs::symlink_metadata(path)
                .is_ok_and(|m| std::os::unix::fs::MetadataExt::gid(&m) == gid) => {}
        Some(gid) => match std::os::unix::fs::lchown(path, None, Some(gid)) {
            Ok(()) => {}
            Err(e) if required => {
                return Err(context(
                    e,
                    format!(
                        "cannot give {} to group {group} (the daemon's user must be a member of it)",
                        path.display()
                    ),
                ));
            }
            Err(e) => {
                tracing::warn!(group = %group, path = %path.display(), error = %e, "cannot give the admin socket to the admin group (is rekey's user a member?); it keeps the daemon's group");
            }
        },
        None if required => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "admin_group {group:?} does not exist (create it, or set admin_group to an existing group)"
                ),
            ));
        }
        None => {
            tracing::warn!(group = %group, path = %path.display(), "admin group does not exist; the admin socket keeps the daemon's group");
        }
    }
    Ok(bound.with_role(Role::Admin))
}

fn lookup_group(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam returns a pointer into static storage or NULL; the
    // gid is copied out at once. Called at start-up, before other threads
    // look groups up.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        None
    } else {
        Some(unsafe { (*gr).gr_gid })
    }
}

async fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(context(e, format!("cannot inspect {}", path.display()))),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
        ));
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "another process is listening on unix:{} (is rekey already running?)",
                path.display()
            ),
        ));
    }
    tracing::debug!(path = %path.display(), "removing stale status socket");
    std::fs::remove_file(path)
        .map_err(|e| context(e, format!("cannot remove stale socket {}", path.display())))
}

fn context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Serve until `shutdown` is cancelled, with the default [`Limits`].
pub async fn serve(bound: Bound, state: ServerState, shutdown: CancellationToken) {
    serve_with_limits(bound, state, Limits::default(), shutdown).await
}

/// Serve until `shutdown` is cancelled. Returns once the listener is closed
/// and in-flight connections have finished (or `shutdown_grace` ran out);
/// a Unix socket file is removed on the way out.
pub async fn serve_with_limits(
    bound: Bound,
    state: ServerState,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let local = bound.local.clone();
    let tcp = matches!(bound.listener, Listener::Tcp(_));
    let router = router(state, &limits, bound.role, tcp);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let tracker = TaskTracker::new();
    tracing::info!(listen = %local, role = ?bound.role, "status endpoint listening");

    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = accept(&bound.listener) => a,
        };
        let io = match accepted {
            Ok(io) => io,
            Err(e) => {
                // EMFILE and friends: back off rather than spin; the
                // listener itself stays usable.
                tracing::warn!(listen = %local, error = %e, "status endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        let shutdown = shutdown.clone();
        let limits = limits.clone();
        tracker.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_head_bytes.max(8192));
            let conn = builder.serve_connection(io, service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "status connection ended with an error");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(limits.shutdown_grace, conn).await;
                }
            }
            drop(permit);
        });
    }

    tracker.close();
    if tokio::time::timeout(limits.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(listen = %local, "status endpoint: connections still open after the shutdown grace; dropping them");
    }
    if let Listener::Unix { file_id, .. } = &bound.listener
        && let ListenAddr::Unix(path) = &local
    {
        remove_own_socket(path, *file_id);
    }
    tracing::info!(listen = %local, "status endpoint stopped");
}

/// Accept one connection, TCP or Unix, as something hyper can drive.
async fn accept(listener: &Listener) -> io::Result<TokioIo<Box<dyn Io>>> {
    let io: Box<dyn Io> = match listener {
        Listener::Tcp(l) => {
            let (s, _) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Box::new(s)
        }
        Listener::Unix { listener, .. } => Box::new(listener.accept().await?.0),
    };
    Ok(TokioIo::new(io))
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

fn remove_own_socket(path: &Path, file_id: (u64, u64)) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if (m.dev(), m.ino()) == file_id => {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove status socket");
            }
        }
        _ => {}
    }
}

/// Shared by every handler.
struct App {
    state: ServerState,
    limits: Limits,
    /// `/status` rendered off the request path ([`Kept`]).
    status_body: Arc<Kept<StatusRender>>,
    /// `/metrics` rendered off the request path ([`Kept`]).
    metrics_body: Arc<Kept<MetricsRender>>,
    /// What this listener serves; [`Role::Admin`] needs no token.
    role: Role,
}

/// A `/status` body nobody asked for this long is dropped.
const JSON_IDLE_DROP: Duration = Duration::from_secs(2);

/// The keeper starts at most one `/status` render per this much time: under
/// churn (hundreds of lineages rotating, the snapshot replaced many times a
/// second) it renders the newest snapshot a few times a second instead of
/// back to back, on the one core the daemon may have beside the engine. A
/// served `/status` is then at most this plus two render times behind the
/// published snapshot; an answered POST still brings it up to date at once
/// ([`Kept::refresh`]).
pub const STATUS_MIN_INTERVAL: Duration = Duration::from_millis(250);

/// How old a served `/metrics` body may get while it is in use before it
/// is rendered anew; one nobody asked for this long is dropped.
pub const METRICS_MAX_AGE: Duration = Duration::from_millis(250);

/// Renders one endpoint's body, for [`Kept`].
trait Render: Send + Sync + 'static {
    /// What a rendering was made from (kept to judge its freshness and to
    /// reuse parts of it).
    type Source: Send + Sync + 'static;
    /// Render what is current now; `previous` is the last rendering.
    fn render(
        &self,
        previous: Option<&Rendered<Self::Source>>,
    ) -> Result<Rendered<Self::Source>, String>;
    /// Whether `r` still shows what is current.
    fn fresh(&self, r: &Rendered<Self::Source>) -> bool;
    /// A receiver that sees every change of what is rendered, when there is
    /// one; without it the keeper renders every [`Kept::period`].
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<()>>;
}

/// One complete rendering.
struct Rendered<S> {
    source: S,
    body: Bytes,
    at: Instant,
    /// Order of the render's start ([`Kept::render_now`]): a rendering
    /// never replaces one that started later (it may show older state).
    generation: u64,
}

/// A body rendered off the request path.
///
/// A request serves the last complete rendering and never waits for one,
/// except the first after idle (no rendering held), which renders inline
/// (requests arriving meanwhile wait for that one render and serve it).
/// That first request also starts the *keeper*, one task per cache, which
/// renders anew whenever the rendering is no longer [`Render::fresh`]
/// (woken by [`Render::changes`] or every [`Kept::period`]) on a blocking
/// thread, so at most one render is in flight and, when several changes
/// come during one, the next render takes the newest. The keeper drops the
/// rendering and stops once no request took it for [`Kept::idle_drop`]:
/// an endpoint nobody reads keeps no body in memory and renders nothing.
struct Kept<R: Render> {
    render: R,
    current: ArcSwapOption<Rendered<R::Source>>,
    /// A keeper task runs.
    keeper: std::sync::atomic::AtomicBool,
    /// Held by a request rendering inline (no body held), so requests that
    /// arrive together after idle render once and the others serve that
    /// rendering; never held by the keeper.
    inline: std::sync::Mutex<()>,
    /// Taken by each render as it starts.
    generations: AtomicU64,
    /// When a request last took the body (µs since `origin`).
    used_us: AtomicU64,
    origin: Instant,
    /// How often the keeper looks when nothing wakes it.
    period: Duration,
    idle_drop: Duration,
    /// The least time between the starts of two keeper renders (zero: none).
    min_interval: Duration,
}

impl<R: Render> Kept<R> {
    fn new(render: R, period: Duration, idle_drop: Duration) -> Self {
        Kept {
            render,
            current: ArcSwapOption::empty(),
            keeper: std::sync::atomic::AtomicBool::new(false),
            inline: std::sync::Mutex::new(()),
            generations: AtomicU64::new(1),
            used_us: AtomicU64::new(0),
            origin: Instant::now(),
            period,
            idle_drop,
            min_interval: Duration::ZERO,
        }
    }

    /// The keeper starts a render at most once per `d` (changes meanwhile
    /// are coalesced into the next one). Requests are unaffected: they
    /// serve what is held, and [`Kept::refresh`] renders at once.
    fn with_min_interval(mut self, d: Duration) -> Self {
        self.min_interval = d;
        self
    }

    fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }

    /// The body to serve now.
    fn serve(self: &Arc<Self>) -> Result<Bytes, String> {
        self.used_us.fetch_max(self.now_us(), Ordering::Relaxed);
        if let Some(c) = self.current.load_full() {
            if !self.render.fresh(&c) {
                self.ensure_keeper();
            }
            return Ok(c.body.clone());
        }
        // One inline render at a time: the others wait for it and serve it
        // (their render would be the same body).
        let _one = self.inline.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = self.current.load_full() {
            return Ok(c.body.clone());
        }
        let body = self.render_now(None)?;
        self.ensure_keeper();
        Ok(body)
    }

    /// Render what is current and hold it, unless a rendering that started
    /// later is already held; returns the body rendered.
    fn render_now(&self, previous: Option<&Rendered<R::Source>>) -> Result<Bytes, String> {
        let generation = self.generations.fetch_add(1, Ordering::AcqRel);
        let mut r = self.render.render(previous)?;
        r.generation = generation;
        let r = Arc::new(r);
        self.current.rcu(|cur| match cur {
            Some(c) if c.generation > r.generation => Some(c.clone()),
            _ => Some(r.clone()),
        });
        Ok(r.body.clone())
    }

    /// Bring a held rendering up to date now, on the caller's path: after
    /// a POST the daemon answered, so the client's next GET (`rekey rotate
    /// --wait`) shows its own request's effect. Nothing is held: nothing
    /// to do (the next GET renders).
    fn refresh(&self) {
        if let Some(c) = self.current.load_full()
            && !self.render.fresh(&c)
            && let Err(e) = self.render_now(Some(&c))
        {
            tracing::error!(error = %e, "status endpoint: cannot render a body; serving the previous one");
        }
    }

    fn idle(&self) -> bool {
        let used = self.used_us.load(Ordering::Relaxed);
        self.now_us().saturating_sub(used) >= self.idle_drop.as_micros() as u64
    }

    fn ensure_keeper(self: &Arc<Self>) {
        if self
            .keeper
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.keeper.store(false, Ordering::Release);
            return;
        };
        let me = Arc::downgrade(self);
        rt.spawn(Self::keep(me));
    }

    /// The keeper: see [`Kept`].
    async fn keep(me: std::sync::Weak<Self>) {
        let (mut changes, period) = match me.upgrade() {
            Some(k) => (k.render.changes(), k.period),
            None => return,
        };
        // A new receiver counts every change sent before it as seen, so a
        // change between the inline render and this task's start would not
        // wake it: look once before the first wait (a body still fresh
        // costs one pointer comparison).
        let mut first = true;
        // When the keeper may start its next render (`min_interval`).
        let mut next_render = tokio::time::Instant::now();
        loop {
            match changes.as_mut() {
                _ if std::mem::take(&mut first) => {}
                Some(c) => {
                    tokio::select! {
                        r = c.changed() => if r.is_err() { changes = None },
                        _ = tokio::time::sleep(period) => {}
                    }
                }
                None => tokio::time::sleep(period).await,
            }
            let Some(k) = me.upgrade() else { return };
            let Some(cur) = k.current.load_full() else {
                k.keeper.store(false, Ordering::Release);
                return;
            };
            if k.idle() {
                k.current
                    .compare_and_swap(&cur, None::<Arc<Rendered<R::Source>>>);
                k.keeper.store(false, Ordering::Release);
                // A request that rendered after the drop found this keeper
                // still running: keep its rendering fresh.
                if k.current.load().is_some() {
                    k.ensure_keeper();
                }
                return;
            }
            if k.render.fresh(&cur) {
                continue;
            }
            if next_render > tokio::time::Instant::now() {
                // Too soon after the last render: wait, then take whatever
                // is newest then (the changes meanwhile stay marked).
                drop((k, cur));
                tokio::time::sleep_until(next_render).await;
                first = true;
                continue;
            }
            next_render = tokio::time::Instant::now() + k.min_interval;
            if let Some(c) = changes.as_mut() {
                c.borrow_and_update();
            }
            let worker = k.clone();
            let done = tokio::task::spawn_blocking(move || worker.render_now(Some(&cur))).await;
            match done {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "status endpoint: cannot render a body; serving the previous one");
                }
                Err(e) => {
                    tracing::error!(error = %e, "status endpoint: the render thread failed; serving the previous body");
                }
            }
        }
    }
}

/// `/status`: the serde rendering of the snapshot, spliced from per-policy
/// fragments so a new snapshot re-renders only the policies that changed.
struct StatusRender {
    status: StatusHandle,
}

/// The snapshot a `/status` body was rendered from and each policy's
/// fragment of it.
struct StatusSource {
    /// Held (not just its address) so the pointer comparison is sound.
    snapshot: Arc<Snapshot>,
    fragments: Vec<Fragment>,
}

impl Render for StatusRender {
    type Source = StatusSource;

    fn render(
        &self,
        previous: Option<&Rendered<StatusSource>>,
    ) -> Result<Rendered<StatusSource>, String> {
        let snapshot = self.status.load();
        let (body, fragments) =
            render_status(&snapshot, previous.map(|p| p.source.fragments.as_slice()))
                .map_err(|e| e.to_string())?;
        Ok(Rendered {
            source: StatusSource {
                snapshot,
                fragments,
            },
            body,
            at: Instant::now(),
            generation: 0,
        })
    }

    fn fresh(&self, r: &Rendered<StatusSource>) -> bool {
        Arc::ptr_eq(&r.source.snapshot, &self.status.load())
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        Some(self.status.subscribe())
    }
}

/// `/metrics`: the registry in the text format, rendered anew every
/// [`METRICS_MAX_AGE`] while it is read.
struct MetricsRender {
    metrics: Metrics,
}

impl Render for MetricsRender {
    type Source = ();

    fn render(&self, _: Option<&Rendered<()>>) -> Result<Rendered<()>, String> {
        Ok(Rendered {
            source: (),
            body: Bytes::from(self.metrics.render()),
            at: Instant::now(),
            generation: 0,
        })
    }

    fn fresh(&self, r: &Rendered<()>) -> bool {
        r.at.elapsed() < METRICS_MAX_AGE
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        None
    }
}

fn router(state: ServerState, limits: &Limits, role: Role, tcp: bool) -> Router {
    let status_body = state.bodies.status.clone();
    let metrics_body = state.bodies.metrics.clone();
    let app = Arc::new(App {
        state,
        limits: limits.clone(),
        status_body,
        metrics_body,
        role,
    });
    let routes = admin_routes(read_routes(Router::new()), role);
    let routes = routes
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), bound_request));
    let routes = if tcp {
        routes.layer(middleware::from_fn_with_state(app.clone(), check_host))
    } else {
        routes
    };
    routes
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .with_state(app)
}

type AppRouter = Router<Arc<App>>;

/// The read-only endpoints, served on every listener.
fn read_routes(r: AppRouter) -> AppRouter {
    r.route("/healthz", get(healthz))
        .route("/status", get(status_all))
        .route("/status/{policy}", get(status_one))
        .route("/metrics", get(metrics))
}

/// The admin (POST) endpoints: served on the admin socket, or with the
/// token on a listener that serves everything; on a read-only listener each
/// answers 403 naming the admin socket. New admin routes go here.
fn admin_routes(r: AppRouter, role: Role) -> AppRouter {
    let add = |r: AppRouter, path: &str, handler: MethodRouter<Arc<App>>| match role {
        Role::All | Role::Admin => r.route(path, handler),
        Role::ReadOnly => r.route(path, post(admin_elsewhere)),
    };
    let r = add(r, "/rotate/{policy}", post(rotate));
    let r = add(r, "/retry/{rotation}", post(retry));
    add(r, "/abandon/{rotation}", post(abandon))
}

/// A POST on the read-only listener.
async fn admin_elsewhere() -> Response {
    json_error(
        StatusCode::FORBIDDEN,
        "admin endpoints are served on the admin socket (daemon.admin_listen), not here; \
         run `rekey rotate -c CONFIG` as a member of the admin group"
            .to_string(),
    )
}

/// Whether `host` (a `Host` header value) names this machine's loopback, an
/// IP literal, or one of `allowed`.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim();
    // Strip the port: `[v6]:p`, `name:p`, `v4:p`.
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, _)) => return v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) if p.chars().all(|c| c.is_ascii_digit()) => n,
            Some(_) => return false,
            None => host,
        }
    };
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || allowed.contains(&name)
}

/// 421 for a `Host` that is not ours (DNS rebinding); 400 without one.
async fn check_host(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    match host {
        Some(h) if host_allowed(&h, &app.limits.allowed_hosts) => next.run(req).await,
        Some(_) => json_error(
            StatusCode::MISDIRECTED_REQUEST,
            "this endpoint answers only to loopback names, IP addresses and daemon.allowed_hosts"
                .to_string(),
        ),
        None => json_error(
            StatusCode::BAD_REQUEST,
            "a Host header is required".to_string(),
        ),
    }
}

/// Per-request bounds: a declared body over the limit is refused before any
/// handler runs, and no request runs longer than `request_timeout`.
async fn bound_request(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.limits.max_body_bytes as u64) {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body larger than {} bytes",
                app.limits.max_body_bytes
            ),
        );
    }
    match tokio::time::timeout(app.limits.request_timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "request not handled within {}",
                crate::clock::human(app.limits.request_timeout)
            ),
        ),
    }
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    let live = &app.state.liveness;
    let age = live.since_last_beat();
    if age <= live.max_age() {
        text(StatusCode::OK, "ok\n".to_string())
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "stalled: main loop last seen {} ago (limit {})\n",
                crate::clock::human(Duration::from_secs(age.as_secs())),
                crate::clock::human(live.max_age()),
            ),
        )
    }
}

async fn status_all(State(app): State<Arc<App>>) -> Response {
    match app.status_body.serve() {
        Ok(body) => json_bytes(StatusCode::OK, body),
        Err(e) => internal_error(e),
    }
}

/// One policy's `/status` JSON and the entry it was rendered from.
type Fragment = (Arc<PolicyStatus>, Bytes);

/// The `/status` body of `snapshot` (the serde rendering of [`Snapshot`],
/// byte for byte) and each policy's fragment of it. A policy whose entry is
/// the very one of `previous` (pointer-equal) reuses its fragment.
fn render_status(
    snapshot: &Snapshot,
    previous: Option<&[Fragment]>,
) -> Result<(Bytes, Vec<Fragment>), serde_json::Error> {
    let mut fragments = Vec::with_capacity(snapshot.policies.len());
    for p in &snapshot.policies {
        let reused = previous
            .and_then(|prev| prev.iter().find(|(q, _)| Arc::ptr_eq(q, p)))
            .map(|(_, b)| b.clone());
        let body = match reused {
            Some(b) => b,
            None => Bytes::from(serde_json::to_vec(&**p)?),
        };
        fragments.push((p.clone(), body));
    }
    // The rest of the snapshot with no policies, then the fragments spliced
    // where its empty list is. `version` and `started_at` come first and
    // cannot hold the marker, and in any later string a quote is escaped,
    // so the first unescaped marker is the field itself.
    let shell = Snapshot {
        policies: Vec::new(),
        ..Snapshot::clone(snapshot)
    };
    let shell = serde_json::to_vec(&shell)?;
    const MARKER: &[u8] = br#""policies":[]"#;
    let at = shell
        .windows(MARKER.len())
        .position(|w| w == MARKER)
        .map(|i| i + MARKER.len() - 1)
        .ok_or_else(|| serde::ser::Error::custom("snapshot has no policies field"))?;
    let len = shell.len() + fragments.iter().map(|(_, b)| b.len() + 1).sum::<usize>();
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(&shell[..at]);
    let mut spans = Vec::with_capacity(fragments.len());
    for (i, (_, b)) in fragments.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        spans.push(body.len()..body.len() + b.len());
        body.extend_from_slice(b);
    }
    body.extend_from_slice(&shell[at..]);
    // Each fragment becomes a view into the body: the held rendering keeps
    // every policy's JSON once, and the previous body (which reused
    // fragments pointed into) is freed with the previous rendering.
    let body = Bytes::from(body);
    for ((_, f), span) in fragments.iter_mut().zip(spans) {
        *f = body.slice(span);
    }
    Ok((body, fragments))
}

async fn status_one(State(app): State<Arc<App>>, UrlPath(policy): UrlPath<String>) -> Response {
    let snapshot = app.state.status.load();
    match snapshot.policies.iter().find(|p| p.name == policy) {
        Some(p) => match serde_json::to_vec(p) {
            Ok(v) => json_bytes(StatusCode::OK, Bytes::from(v)),
            Err(e) => internal_error(e.to_string()),
        },
        None => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({
                "error": format!("unknown policy {policy:?}"),
                "policies": snapshot.policies.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            }),
        ),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    // The last complete rendering, shared (not copied) per request.
    let body = match app.metrics_body.serve() {
        Ok(b) => b,
        Err(e) => return internal_error(e),
    };
    let mut resp = Body::from(body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(prometheus::TEXT_FORMAT),
    );
    resp
}

/// Query of `POST /rotate/{policy}`. Unknown parameters are refused: a typo
/// in `revoke_old_immediately` must not silently mean "keep the grace".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateParams {
    lineage: Option<String>,
    #[serde(default)]
    revoke_old_immediately: bool,
}

async fn rotate(
    State(app): State<Arc<App>>,
    UrlPath(policy): UrlPath<String>,
    headers: HeaderMap,
    params: Result<Query<RotateParams>, QueryRejection>,
) -> Response {
    // A name from the URL is logged only once it is known to be a policy
    // (a standby knows its config's names, DESIGN §8).
    let snap = app.state.status.load();
    if !snap.policies.iter().any(|p| p.name == policy)
        && !snap.leadership.policies.contains(&policy)
    {
        return rotate_response(&policy, RotateReply::UnknownPolicy);
    }
    if app.role != Role::Admin
        && let Err(refusal) = authorize(app.state.admin_token.as_ref(), &headers)
    {
        tracing::warn!(policy = %policy, reason = refusal.as_str(), "status endpoint: refused unauthenticated POST /rotate");
        return refusal.into_response();
    }
    let Query(params) = match params {
        Ok(p) => p,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "bad query: {}; accepted: lineage=NAME, revoke_old_immediately=true|false",
                    e.body_text()
                ),
            );
        }
    };
    tracing::info!(
        policy = %policy,
        lineage = params.lineage.as_deref().unwrap_or("*"),
        revoke_old_immediately = params.revoke_old_immediately,
        "rotation requested through the status endpoint"
    );
    let (reply_tx, reply_rx) = oneshot::channel();
    let request = RotateRequest {
        policy: policy.clone(),
        lineage: params.lineage.clone(),
        revoke_old_immediately: params.revoke_old_immediately,
        reply: reply_tx,
    };
    let wait = app.limits.rotate_reply_timeout;
    let outcome = tokio::time::timeout(wait, async {
        app.state.rotate.send(request).await.map_err(|_| ())?;
        reply_rx.await.map_err(|_| ())
    })
    .await;
    let reply = match outcome {
        Ok(Ok(reply)) => reply,
        Ok(Err(())) => {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the daemon is not taking rotate requests (shutting down?)".to_string(),
            );
        }
        Err(_) => {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the daemon did not answer within {}",
                    crate::clock::human(wait)
                ),
            );
        }
    };
    app.status_body.refresh();
    rotate_response(&policy, reply)
}

/// `POST /retry/{rotation}`: run the step a rotation waits for now.
async fn retry(
    State(app): State<Arc<App>>,
    UrlPath(rotation): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    command(app, Command::Retry, rotation, headers).await
}

/// `POST /abandon/{rotation}`: end a rotation ([`crate::rotation::engine::Engine::abandon`]).
async fn abandon(
    State(app): State<Arc<App>>,
    UrlPath(rotation): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    command(app, Command::Abandon, rotation, headers).await
}

/// Authenticated like `POST /rotate`; the daemon answers on a oneshot,
/// bounded by the same timeout. 202 / 404 / 409 as [`CommandReply`] says.
async fn command(
    app: Arc<App>,
    command: Command,
    rotation: String,
    headers: HeaderMap,
) -> Response {
    // On the admin socket, reaching it is the authorization (as for rotate).
    if app.role != Role::Admin
        && let Err(refusal) = authorize(app.state.admin_token.as_ref(), &headers)
    {
        tracing::warn!(rotation = %rotation.escape_debug(), command = command.as_str(), reason = ?refusal, "status endpoint: refused unauthenticated command");
        return refusal.into_response();
    }
    let Some(tx) = app.state.commands.clone() else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this endpoint does not take rotation commands".to_string(),
        );
    };
    tracing::info!(rotation = %rotation.escape_debug(), command = command.as_str(), "rotation command through the status endpoint");
    let (reply_tx, reply_rx) = oneshot::channel();
    let request = CommandRequest {
        command,
        rotation: rotation.clone(),
        reply: reply_tx,
    };
    let wait = app.limits.rotate_reply_timeout;
    let outcome = tokio::time::timeout(wait, async {
        tx.send(request).await.map_err(|_| ())?;
        reply_rx.await.map_err(|_| ())
    })
    .await;
    let reply = match outcome {
        Ok(Ok(reply)) => reply,
        Ok(Err(())) => {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the daemon is not taking commands (shutting down?)".to_string(),
            );
        }
        Err(_) => {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the daemon did not answer within {}",
                    humantime::format_duration(wait)
                ),
            );
        }
    };
    app.status_body.refresh();
    let (status, error) = match &reply {
        CommandReply::Accepted { .. } => (StatusCode::ACCEPTED, None),
        CommandReply::UnknownRotation { rotation } => (
            StatusCode::NOT_FOUND,
            Some(format!("no rotation {rotation:?}")),
        ),
        CommandReply::Refused { message } => (StatusCode::CONFLICT, Some(message.clone())),
    };
    let mut body = serde_json::to_value(&reply).unwrap_or_else(|_| serde_json::json!({}));
    if let (Some(error), Some(obj)) = (error, body.as_object_mut()) {
        obj.insert("error".into(), serde_json::Value::String(error));
    }
    json(status, body)
}

/// Map the daemon's answer to a status code; the body is the reply itself
/// (tagged by `result`) plus an `error` sentence for anything but 202.
fn rotate_response(policy: &str, reply: RotateReply) -> Response {
    let (status, error) = match &reply {
        RotateReply::Accepted { .. } => (StatusCode::ACCEPTED, None),
        RotateReply::UnknownPolicy => (
            StatusCode::NOT_FOUND,
            Some(format!("unknown policy {policy:?}")),
        ),
        RotateReply::UnknownLineage { lineage } => (
            StatusCode::NOT_FOUND,
            Some(format!("policy {policy:?} has no lineage {lineage:?}")),
        ),
        RotateReply::AlreadyRunning { rotations } => (
            StatusCode::CONFLICT,
            Some(format!(
                "a rotation is already running for policy {policy:?} ({})",
                rotations.join(", ")
            )),
        ),
        RotateReply::Refused { message } => (StatusCode::CONFLICT, Some(message.clone())),
    };
    let mut body = serde_json::to_value(&reply).unwrap_or_else(|_| serde_json::json!({}));
    if let (Some(error), Some(obj)) = (error, body.as_object_mut()) {
        obj.insert("error".into(), serde_json::Value::String(error));
    }
    json(status, body)
}

/// Why a POST was refused before reaching the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No admin token configured: POST endpoints are off (403).
    NotConfigured,
    /// No `Authorization: Bearer` header (401).
    Missing,
    /// A bearer token that is not the admin token (401).
    Wrong,
}

impl Refusal {
    /// For logs: one word, no Rust `Debug`.
    fn as_str(&self) -> &'static str {
        match self {
            Refusal::NotConfigured => "no_admin_token_configured",
            Refusal::Missing => "no_bearer_token",
            Refusal::Wrong => "wrong_token",
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let message = match self {
            Refusal::NotConfigured => {
                return json_error(
                    StatusCode::FORBIDDEN,
                    "POST endpoints are disabled because no admin token is configured; set \
                     daemon.admin_token (e.g. admin_token = { credential = \"admin-token\" }) and restart rekey"
                        .to_string(),
                );
            }
            Refusal::Missing => {
                "this endpoint needs an `Authorization: Bearer <admin_token>` header"
            }
            Refusal::Wrong => "wrong admin token",
        };
        let mut resp = json_error(StatusCode::UNAUTHORIZED, message.to_string());
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"rekey\""),
        );
        resp
    }
}

/// `Authorization: Bearer <admin_token>`, compared in constant time.
fn authorize(expected: Option<&Secret>, headers: &HeaderMap) -> Result<(), Refusal> {
    let expected = expected.ok_or(Refusal::NotConfigured)?;
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim_start())
        })
        .ok_or(Refusal::Missing)?;
    if tokens_match(presented.as_bytes(), expected.expose().as_bytes()) {
        Ok(())
    } else {
        Err(Refusal::Wrong)
    }
}

/// Constant-time equality: both sides are hashed first (equal lengths, and
/// nothing about the token's length leaks), then every byte is compared.
fn tokens_match(presented: &[u8], expected: &[u8]) -> bool {
    let a = Sha256::digest(presented);
    let b = Sha256::digest(expected);
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

async fn not_found(req: Request) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {} {}; endpoints: GET /healthz, GET /status, GET /status/{{policy}}, GET /metrics, POST /rotate/{{policy}}",
            req.method(),
            req.uri().path()
        ),
    )
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn json(status: StatusCode, value: serde_json::Value) -> Response {
    json_bytes(status, Bytes::from(value.to_string()))
}

fn json_bytes(status: StatusCode, body: Bytes) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response()
}

fn json_error(status: StatusCode, message: String) -> Response {
    json(status, serde_json::json!({ "error": message }))
}

fn internal_error(e: String) -> Response {
    tracing::error!(error = %e, "status endpoint: cannot render a body");
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "cannot render the response body".to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::report::{Health, Instance, KeyState, KeyStatus, Leadership, Lineages};
    use chrono::Utc;
    use serde::Serialize;

    fn policy(name: &str, keys: usize) -> Arc<PolicyStatus> {
        Arc::new(PolicyStatus {
            name: name.to_string(),
            provider: "emulated".to_string(),
            mode: "rotate".to_string(),
            health: Health::Ok,
            next_check_at: None,
            last_check_at: None,
            keys: (0..keys)
                .map(|i| KeyStatus {
                    id: format!("k{i}"),
                    name: format!("{name}-{i}"),
                    lineage: name.to_string(),
                    created_at: None,
                    expires_at: None,
                    state: KeyState::Current,
                })
                .collect(),
            lineages: Lineages::default(),
            last_rotation: None,
            error: Some(r#"odd "policies":[] text"#.to_string()),
        })
    }

    fn snapshot(policies: Vec<Arc<PolicyStatus>>) -> Snapshot {
        Snapshot {
            version: "0.1.0".to_string(),
            started_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            policies,
            instance: Some(Instance {
                config: r#"/etc/"policies":[]/rekey.toml"#.to_string(),
                state: "/var/lib/rekey/state.db".to_string(),
                host: "h".to_string(),
            }),
            leadership: Leadership {
                fence: Some(3),
                ..Leadership::default()
            },
        }
    }

    #[test]
    fn status_body_spliced_from_policy_fragments_is_the_serde_rendering_byte_for_byte() {
        for policies in [
            vec![],
            vec![policy("a", 2)],
            vec![policy("a", 2), policy("b", 0), policy("c", 3)],
        ] {
            let snap = snapshot(policies);
            let (body, fragments) = render_status(&snap, None).unwrap();
            assert_eq!(&body[..], &serde_json::to_vec(&snap).unwrap()[..]);
            assert_eq!(fragments.len(), snap.policies.len());
        }
    }

    #[test]
    fn a_new_snapshot_renders_again_only_the_policies_whose_entry_changed() {
        let (a, b) = (policy("a", 2), policy("b", 2));
        let first = snapshot(vec![a.clone(), b.clone()]);
        let (_, fragments) = render_status(&first, None).unwrap();
        let mut b2 = PolicyStatus::clone(&b);
        b2.keys.set_state(0, KeyState::Retiring);
        let second = snapshot(vec![a.clone(), Arc::new(b2)]);
        let (body, next) = render_status(&second, Some(&fragments)).unwrap();
        assert_eq!(&body[..], &serde_json::to_vec(&second).unwrap()[..]);
        assert!(String::from_utf8_lossy(&next[1].1).contains("retiring"));
        // `a` kept its entry: its fragment is reused, not serialised again
        // (a planted fragment for the same entry is what gets spliced in).
        let planted = vec![
            (
                fragments[0].0.clone(),
                Bytes::from_static(b"{\"reused\":1}"),
            ),
            fragments[1].clone(),
        ];
        let (body, _) = render_status(&second, Some(&planted)).unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains(r#"[{"reused":1},{"name":"b""#), "{text}");
    }

    /// Each policy's fragment was its own copy of that policy's JSON beside
    /// the body spliced from it, so a held `/status` body kept every key's
    /// JSON twice (at 100,000 keys, tens of MiB twice). Fragments are now
    /// views into the body, and stay so after a partial re-render.
    #[test]
    fn a_held_status_body_holds_each_policys_json_once() {
        let within = |body: &Bytes, f: &Bytes| {
            let (b, p) = (body.as_ptr() as usize, f.as_ptr() as usize);
            p >= b && p + f.len() <= b + body.len()
        };
        let (a, b) = (policy("a", 50), policy("b", 50));
        let first = snapshot(vec![a.clone(), b.clone()]);
        let (body, fragments) = render_status(&first, None).unwrap();
        for (_, f) in &fragments {
            assert!(within(&body, f), "a fragment is a copy beside the body");
        }
        let second = snapshot(vec![a, Arc::new(PolicyStatus::clone(&b))]);
        let (body2, next) = render_status(&second, Some(&fragments)).unwrap();
        assert_eq!(&body2[..], &serde_json::to_vec(&second).unwrap()[..]);
        for (_, f) in &next {
            assert!(
                within(&body2, f),
                "a reused fragment still points into the previous body"
            );
        }
    }

    /// [`PolicyStatus`] as it was before its keys and lineages were held
    /// compactly: plain structs, owned strings.
    #[derive(Serialize)]
    struct PlainPolicy {
        name: String,
        provider: String,
        mode: String,
        health: Health,
        next_check_at: Option<chrono::DateTime<Utc>>,
        last_check_at: Option<chrono::DateTime<Utc>>,
        keys: Vec<KeyStatus>,
        lineages: Vec<crate::rotation::report::LineageStatus>,
        last_rotation: Option<crate::rotation::report::LastRotation>,
        error: Option<String>,
    }

    #[test]
    fn the_compact_status_body_is_the_plain_structs_rendering_and_the_client_reads_it_back() {
        use crate::rotation::report::{Condition, LastRotation, LineageStatus, RotationSummary};
        let t = |s| chrono::DateTime::from_timestamp(s, 7_000).unwrap();
        let keys = vec![
            KeyStatus {
                id: "ak-1".into(),
                name: "app-1".into(),
                lineage: "app".into(),
                created_at: Some(t(1_700_000_000)),
                expires_at: Some(t(1_800_000_000)),
                state: KeyState::Current,
            },
            KeyStatus {
                id: "ak-0".into(),
                name: "app-\u{7}0\"".into(),
                lineage: "app".into(),
                created_at: None,
                expires_at: None,
                state: KeyState::Retiring,
            },
        ];
        let lineages = vec![
            LineageStatus {
                name: "app".into(),
                health: Health::Rotating,
                current_key: Some("ak-1".into()),
                reason: "in_progress".into(),
                message: "rotation r1 is published".into(),
                rotate_at: None,
                conditions: vec![Condition::Conflict],
                rotation: Some(RotationSummary {
                    id: "r1".into(),
                    state: "published".into(),
                    new_key: Some("ak-1".into()),
                    old_key: Some("ak-0".into()),
                    failures: 1,
                    error: None,
                    next_attempt_at: None,
                    retire_at: Some(t(1_700_003_600)),
                    revoke_old_immediately: false,
                }),
            },
            LineageStatus {
                name: "empty".into(),
                health: Health::NoKeys,
                current_key: None,
                reason: "no_keys".into(),
                message: "the lineage has no current key".into(),
                rotate_at: Some(t(1)),
                conditions: vec![],
                rotation: None,
            },
        ];
        let last_rotation = Some(LastRotation {
            id: "r1".into(),
            lineage: "app".into(),
            state: "published".into(),
            started_at: t(1_700_000_000),
            finished_at: None,
            error: None,
        });
        let plain = PlainPolicy {
            name: "p".into(),
            provider: "ob".into(),
            mode: "rotate".into(),
            health: Health::Rotating,
            next_check_at: Some(t(1_700_000_060)),
            last_check_at: None,
            keys: keys.clone(),
            lineages: lineages.clone(),
            last_rotation: last_rotation.clone(),
            error: None,
        };
        let compact = Arc::new(PolicyStatus {
            name: "p".into(),
            provider: "ob".into(),
            mode: "rotate".into(),
            health: Health::Rotating,
            next_check_at: Some(t(1_700_000_060)),
            last_check_at: None,
            keys: keys.into(),
            lineages: lineages.into(),
            last_rotation,
            error: None,
        });
        let snap = snapshot(vec![compact.clone(), policy("b", 2)]);
        let (body, fragments) = render_status(&snap, None).unwrap();
        assert_eq!(
            &fragments[0].1[..],
            &serde_json::to_vec(&plain).unwrap()[..]
        );
        assert_eq!(&body[..], &serde_json::to_vec(&snap).unwrap()[..]);
        // What `rekey status` and `rekey rotate --wait` read.
        let back = crate::status::client::parse_snapshot(&body).unwrap();
        assert_eq!(back, snap);
        let l = back.policies[0].lineages.first().unwrap();
        assert_eq!(l.rotation().unwrap().state, "published");
        assert_eq!(back.policies[0].keys.get(1).unwrap().name(), "app-\u{7}0\"");
    }

    /// Serve `kept` until its body equals `want`, or give up after 10 s.
    async fn served_eventually(kept: &Arc<Kept<StatusRender>>, want: &[u8]) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if kept.serve().unwrap() == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_changed_snapshot_is_served_once_rendered_without_the_request_rendering_it() {
        let h = StatusHandle::new(chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap());
        h.update_policy_shared(policy("a", 3));
        let kept = Arc::new(Kept::new(
            StatusRender { status: h.clone() },
            JSON_IDLE_DROP,
            JSON_IDLE_DROP,
        ));
        // The first request after idle renders inline.
        let first = kept.serve().unwrap();
        assert_eq!(&first[..], &serde_json::to_vec(&*h.load()).unwrap()[..]);
        assert!(kept.keeper.load(Ordering::Acquire), "a keeper runs");

        // A change: a request right after it is answered from the body it
        // finds (it never renders), and the new snapshot is served once the
        // keeper rendered it, byte for byte its serde rendering.
        let mut b = PolicyStatus::clone(&policy("a", 3));
        b.keys.set_state(1, KeyState::Retiring);
        h.update_policy_shared(Arc::new(b));
        let want = serde_json::to_vec(&*h.load()).unwrap();
        let served = kept.serve().unwrap();
        assert!(served == first || served == want[..]);
        assert!(
            served_eventually(&kept, &want).await,
            "the change was never served"
        );

        // Several changes in a row: the newest is what ends up served.
        for n in 0..5 {
            h.update_policy_shared(policy(&format!("n{n}"), n));
        }
        let newest = serde_json::to_vec(&*h.load()).unwrap();
        assert!(
            served_eventually(&kept, &newest).await,
            "the newest was never served"
        );
    }

    #[tokio::test]
    async fn after_an_answered_post_the_next_get_shows_the_change_without_waiting() {
        // rekey rotate --wait read the snapshot from before its own
        // request (its resumed rotation still `failed`) and exited 1.
        let h = StatusHandle::new(Utc::now());
        h.update_policy_shared(policy("a", 2));
        let kept = Arc::new(Kept::new(
            StatusRender { status: h.clone() },
            JSON_IDLE_DROP,
            JSON_IDLE_DROP,
        ));
        kept.serve().unwrap();
        let mut b = PolicyStatus::clone(&policy("a", 2));
        b.keys.set_state(0, KeyState::Pending);
        h.update_policy_shared(Arc::new(b));
        kept.refresh();
        assert_eq!(
            &kept.serve().unwrap()[..],
            &serde_json::to_vec(&*h.load()).unwrap()[..]
        );
    }

    #[tokio::test]
    async fn a_body_nobody_asks_for_is_dropped_and_its_keeper_stops() {
        let h = StatusHandle::new(Utc::now());
        h.update_policy_shared(policy("a", 2));
        let idle = Duration::from_millis(30);
        let kept = Arc::new(Kept::new(StatusRender { status: h.clone() }, idle, idle));
        kept.serve().unwrap();
        assert!(kept.current.load().is_some());
        let deadline = Instant::now() + Duration::from_secs(10);
        while kept.current.load().is_some() || kept.keeper.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "the unused body was kept");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Asked again: rendered again, current.
        h.update_policy_shared(policy("b", 1));
        assert_eq!(
            &kept.serve().unwrap()[..],
            &serde_json::to_vec(&*h.load()).unwrap()[..]
        );
    }

    /// With `admin_listen`, two listeners served one daemon and each built
    /// its own renderings: two `/metrics` bodies held and two keepers
    /// rendering every change (main's `/metrics` cache lived in `Metrics`
    /// and was shared). Both listeners now serve one held body.
    #[tokio::test]
    async fn two_listeners_of_one_daemon_share_one_held_body() {
        let status = StatusHandle::new(Utc::now());
        status.update_policy_shared(policy("a", 2));
        let metrics = Metrics::new();
        metrics.init_policy("a", &[], "ob");
        let (rotate, _rotate_rx) = tokio::sync::mpsc::channel(1);
        let state = ServerState {
            bodies: Bodies::new(&status, &metrics),
            status,
            metrics,
            rotate,
            commands: None,
            admin_token: None,
            liveness: Liveness::new(Duration::from_secs(60)),
        };
        let shutdown = CancellationToken::new();
        let mut endpoints = Vec::new();
        for role in [Role::ReadOnly, Role::Admin] {
            let bound = bind(&ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()))
                .await
                .unwrap()
                .with_role(role);
            endpoints.push(bound.endpoint());
            tokio::spawn(serve(bound, state.clone(), shutdown.clone()));
        }
        let client = reqwest::Client::new();
        let mut bodies = Vec::new();
        for path in ["/status", "/metrics"] {
            for e in &endpoints {
                let r = client.get(format!("{e}{path}")).send().await.unwrap();
                assert_eq!(r.status(), 200);
                bodies.push(r.bytes().await.unwrap());
            }
        }
        assert_eq!(bodies[0], bodies[1], "one /status body");
        // Generations start at 1 and each render takes one: the shared
        // renderings are the ones served (a listener with renderings of its
        // own would leave these untouched). `/status` rendered once: its
        // snapshot did not change; `/metrics` may render again on a slow
        // machine once its body is 250 ms old.
        assert_eq!(state.bodies.status.generations.load(Ordering::SeqCst), 2);
        assert!(state.bodies.metrics.generations.load(Ordering::SeqCst) >= 2);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn metrics_are_served_from_the_last_rendering_and_rendered_again_while_read() {
        let m = Metrics::new();
        m.init_policy("p1", &[], "ob");
        let kept = Arc::new(Kept::new(
            MetricsRender { metrics: m.clone() },
            Duration::from_millis(20),
            Duration::from_secs(5),
        ));
        let first = kept.serve().unwrap();
        assert!(
            String::from_utf8_lossy(&first)
                .contains(r#"rekey_rotations_total{policy="p1",result="completed"} 0"#)
        );
        m.count_rotation("p1", "completed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let body = kept.serve().unwrap();
            if String::from_utf8_lossy(&body)
                .contains(r#"rekey_rotations_total{policy="p1",result="completed"} 1"#)
            {
                break;
            }
            assert!(Instant::now() < deadline, "the new count was never served");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A change published after the first (inline) render but before the
    /// keeper task first ran was missed: the keeper subscribed after it
    /// (a new watch receiver counts what was sent before as seen) and slept
    /// its whole period (2 s) on a stale body, past the documented bound of
    /// two render times.
    #[tokio::test]
    async fn a_change_made_before_the_keeper_first_runs_is_served_within_the_staleness_bound() {
        let h = StatusHandle::new(chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap());
        h.update_policy_shared(policy("a", 3));
        let kept = Arc::new(Kept::new(
            StatusRender { status: h.clone() },
            JSON_IDLE_DROP,
            JSON_IDLE_DROP,
        ));
        // Inline render; the keeper is spawned but (current-thread runtime)
        // has not run yet.
        kept.serve().unwrap();
        h.update_policy_shared(policy("b", 1));
        let want = serde_json::to_vec(&*h.load()).unwrap();
        // Far more than two render times of this snapshot, far less than
        // the keeper's 2 s period.
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut served = false;
        while Instant::now() < deadline {
            if kept.serve().unwrap() == want {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(served, "the change was not served within 500 ms");
    }

    /// Under churn (a snapshot replaced every few milliseconds, as with
    /// hundreds of lineages rotating) the keeper rendered back to back, one
    /// render per change it woke for, on the daemon's core beside the
    /// engine. It now starts at most one per `min_interval` of the time that
    /// passed (however fast the machine), still ends on the newest
    /// snapshot, and an answered POST still gets fresh data at once.
    #[tokio::test]
    async fn under_churn_the_keeper_renders_at_most_once_per_interval_and_ends_on_the_newest() {
        let h = StatusHandle::new(chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap());
        h.update_policy_shared(policy("a", 3));
        let kept = Arc::new(
            Kept::new(
                StatusRender { status: h.clone() },
                JSON_IDLE_DROP,
                JSON_IDLE_DROP,
            )
            .with_min_interval(STATUS_MIN_INTERVAL),
        );
        kept.serve().unwrap();
        let renders = |k: &Kept<StatusRender>| k.generations.load(Ordering::SeqCst) - 1;
        assert_eq!(renders(&kept), 1, "the first request renders inline");
        // 200 changes at least 5 ms apart, read all along.
        let t0 = Instant::now();
        for n in 0..200 {
            h.update_policy_shared(policy(&format!("n{n}"), 1 + n % 3));
            kept.serve().unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let during = renders(&kept) - 1;
        // One at the start of each interval that began, plus one starting
        // as the count is read.
        let most = (t0.elapsed().as_millis() / STATUS_MIN_INTERVAL.as_millis()) as u64 + 2;
        assert!(
            (1..=most).contains(&during),
            "{during} keeper renders for 200 changes (at most {most})"
        );
        // The churn stops: the newest snapshot is served.
        let newest = serde_json::to_vec(&*h.load()).unwrap();
        assert!(
            served_eventually(&kept, &newest).await,
            "the newest was never served"
        );
        // A change right after a render: the keeper waits out its interval,
        // but an answered POST's refresh serves it at once.
        h.update_policy_shared(policy("after-post", 2));
        kept.refresh();
        assert_eq!(
            &kept.serve().unwrap()[..],
            &serde_json::to_vec(&*h.load()).unwrap()[..]
        );
    }

    /// A render that counts how many run at once.
    struct CountingRender {
        running: Arc<AtomicU64>,
        most: Arc<AtomicU64>,
        total: Arc<AtomicU64>,
    }

    impl Render for CountingRender {
        type Source = ();
        fn render(&self, _: Option<&Rendered<()>>) -> Result<Rendered<()>, String> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            self.total.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100));
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(Rendered {
                source: (),
                body: Bytes::from_static(b"body"),
                at: Instant::now(),
                generation: 0,
            })
        }
        fn fresh(&self, _: &Rendered<()>) -> bool {
            true
        }
        fn changes(&self) -> Option<tokio::sync::watch::Receiver<()>> {
            None
        }
    }

    /// Requests arriving together after idle each rendered the whole body
    /// inline (N renders, N bodies in memory at once: a dashboard's burst
    /// of panels after 2 s of quiet), and the slowest one's older body was
    /// stored over a newer one. The claim is one render in flight.
    #[test]
    fn requests_arriving_together_after_idle_render_the_body_once() {
        let (running, most, total) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let kept = Arc::new(Kept::new(
            CountingRender {
                running: running.clone(),
                most: most.clone(),
                total: total.clone(),
            },
            JSON_IDLE_DROP,
            JSON_IDLE_DROP,
        ));
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (kept, barrier) = (kept.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    kept.serve().unwrap()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(&t.join().unwrap()[..], b"body");
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "renders at once");
        assert_eq!(total.load(Ordering::SeqCst), 1, "renders in all");
    }

    #[test]
    fn tokens_match_only_on_equal_tokens() {
        assert!(tokens_match(b"s3cret", b"s3cret"));
        assert!(!tokens_match(b"s3cret", b"s3cre"));
        assert!(!tokens_match(b"", b"s3cret"));
        assert!(!tokens_match(b"S3cret", b"s3cret"));
    }

    #[test]
    fn liveness_is_alive_right_after_a_beat_and_stalls_after_max_age() {
        let l = Liveness::new(Duration::from_millis(20));
        assert!(l.is_alive());
        std::thread::sleep(Duration::from_millis(40));
        assert!(!l.is_alive());
        l.beat();
        assert!(l.is_alive());
    }

    #[test]
    fn authorize_distinguishes_unconfigured_missing_and_wrong() {
        let token = Secret::new("t0ken");
        let mut h = HeaderMap::new();
        assert_eq!(authorize(None, &h), Err(Refusal::NotConfigured));
        assert_eq!(authorize(Some(&token), &h), Err(Refusal::Missing));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic t0ken"),
        );
        assert_eq!(authorize(Some(&token), &h), Err(Refusal::Missing));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer nope"),
        );
        assert_eq!(authorize(Some(&token), &h), Err(Refusal::Wrong));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer t0ken"),
        );
        assert_eq!(authorize(Some(&token), &h), Ok(()));
        assert_eq!(
            Refusal::NotConfigured.into_response().status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            Refusal::Wrong.into_response().status(),
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn only_loopback_names_ip_literals_and_listed_hosts_are_accepted() {
        let listed = vec!["rekey.internal".to_string()];
        for ok in [
            "localhost",
            "localhost:9477",
            "LOCALHOST.",
            "app.localhost:1",
            "127.0.0.1:9477",
            "10.1.2.3",
            "[::1]:9477",
            "[fe80::1]",
            "rekey.internal:9477",
        ] {
            assert!(host_allowed(ok, &listed), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9477",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "rekey.internal.evil",
            "[::1",
            "localhost:x",
            "",
        ] {
            assert!(!host_allowed(bad, &listed), "{bad}");
        }
    }
}
