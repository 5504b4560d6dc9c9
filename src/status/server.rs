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
    /// `/status` JSON of the last snapshot served: a snapshot changes when
    /// the engine publishes, far less often than it is read, and with
    /// thousands of keys serializing it per request would dominate latency.
    status_json: ArcSwapOption<CachedJson>,
    /// What this listener serves; [`Role::Admin`] needs no token.
    role: Role,
}

struct CachedJson {
    /// Held (not just its address) so the pointer comparison is sound.
    snapshot: Arc<Snapshot>,
    body: Bytes,
    /// Each policy's JSON, by the entry it was rendered from: a new
    /// snapshot re-renders only the policies whose entry changed (one
    /// rotation step replaces one policy's entry), not every key of every
    /// policy.
    fragments: Vec<Fragment>,
    /// When it was last served, so an unused copy is dropped
    /// ([`JSON_IDLE_DROP`]): an idle daemon keeps no rendering in memory.
    used: std::sync::Mutex<Instant>,
}

/// A cached `/status` body nobody asked for this long is dropped.
const JSON_IDLE_DROP: Duration = Duration::from_secs(2);

fn router(state: ServerState, limits: &Limits, role: Role, tcp: bool) -> Router {
    let app = Arc::new(App {
        state,
        limits: limits.clone(),
        status_json: ArcSwapOption::empty(),
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
    let snapshot = app.state.status.load();
    let cached = app.status_json.load();
    let body = match cached.as_deref() {
        Some(c) if Arc::ptr_eq(&c.snapshot, &snapshot) => {
            *c.used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            c.body.clone()
        }
        previous => match render_status(&snapshot, previous.map(|c| c.fragments.as_slice())) {
            Ok((body, fragments)) => {
                let entry = Arc::new(CachedJson {
                    snapshot,
                    body: body.clone(),
                    fragments,
                    used: std::sync::Mutex::new(Instant::now()),
                });
                app.status_json.store(Some(entry.clone()));
                drop_when_unused(Arc::downgrade(&app), Arc::downgrade(&entry));
                body
            }
            Err(e) => return internal_error(e),
        },
    };
    json_bytes(StatusCode::OK, body)
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
    for (i, (_, b)) in fragments.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b);
    }
    body.extend_from_slice(&shell[at..]);
    Ok((Bytes::from(body), fragments))
}

/// Drop `entry` from the `/status` cache once it went unserved for
/// [`JSON_IDLE_DROP`] (or stop watching once it was replaced).
fn drop_when_unused(app: std::sync::Weak<App>, entry: std::sync::Weak<CachedJson>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(JSON_IDLE_DROP).await;
            let (Some(app), Some(e)) = (app.upgrade(), entry.upgrade()) else {
                return;
            };
            let current = app.status_json.load();
            if !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &e)) {
                return;
            }
            let idle = e.used.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
            if idle >= JSON_IDLE_DROP {
                app.status_json
                    .compare_and_swap(&current, None::<Arc<CachedJson>>);
                return;
            }
        }
    });
}

async fn status_one(State(app): State<Arc<App>>, UrlPath(policy): UrlPath<String>) -> Response {
    let snapshot = app.state.status.load();
    match snapshot.policies.iter().find(|p| p.name == policy) {
        Some(p) => match serde_json::to_vec(p) {
            Ok(v) => json_bytes(StatusCode::OK, Bytes::from(v)),
            Err(e) => internal_error(e),
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
    // Rendered at most every 250 ms (Metrics::render_cached); the body is
    // shared, not copied, per request.
    let text = app.state.metrics.render_cached();
    let mut resp =
        axum::body::Body::from(axum::body::Bytes::from_owner(ArcStr(text))).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(prometheus::TEXT_FORMAT),
    );
    resp
}

/// An `Arc<String>` as a byte buffer, so a cached rendering is served
/// without copying.
struct ArcStr(Arc<String>);

impl AsRef<[u8]> for ArcStr {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
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

fn internal_error(e: serde_json::Error) -> Response {
    tracing::error!(error = %e, "status endpoint: cannot serialize the snapshot");
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "cannot serialize the status snapshot".to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::report::{Health, Instance, KeyState, KeyStatus, Leadership};

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
            lineages: Vec::new(),
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
        b2.keys[0].state = KeyState::Retiring;
        let second = snapshot(vec![a.clone(), Arc::new(b2)]);
        let (body, next) = render_status(&second, Some(&fragments)).unwrap();
        assert_eq!(&body[..], &serde_json::to_vec(&second).unwrap()[..]);
        // `a` kept its entry: its fragment is the same buffer, not a copy.
        assert_eq!(next[0].1.as_ptr(), fragments[0].1.as_ptr());
        assert_ne!(next[1].1.as_ptr(), fragments[1].1.as_ptr());
        assert!(String::from_utf8_lossy(&next[1].1).contains("retiring"));
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
