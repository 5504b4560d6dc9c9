//! The PostgreSQL backend of the state store (DESIGN §8).
//!
//! [`PgOptions::from_url`] parses `postgres://user@host:port/dbname?sslmode=…`
//! without connecting (what `rekey check` calls); a password inside the URL
//! is refused (it comes from `[daemon] state_password`, a secret reference).
//!
//! The store's API is synchronous and is called from tokio tasks, so the
//! async driver (`tokio-postgres`) runs on a dedicated thread with its own
//! current-thread runtime ([`PgConn`]); a caller sends one request (begin,
//! a statement, commit, …) over a channel and blocks on the reply channel.
//! `Runtime::block_on` is never called from an async context. One
//! connection carries every transition (the store serialises transitions,
//! as SQLite's single connection does), reconnecting when it was lost; a
//! second connection only `LISTEN`s for `rekey_lease` (standbys waking on a
//! graceful resign).
//!
//! Every session sets [`SESSION_SETTINGS`] (`statement_timeout`,
//! `lock_timeout`) and `idle_in_transaction_session_timeout` (a third of
//! the lease TTL, [`idle_in_transaction_for`]) and uses TCP
//! keepalives: a hung server or a half-open connection ends in an error the
//! server also sees, never in a client-side timeout around a statement that
//! the server may still commit.
//!
//! TLS (rustls): `sslmode=disable` (only for a loopback host unless said
//! explicitly), `require` (encrypted; the certificate is NOT checked, as in
//! libpq: protects against eavesdropping only), `verify-full` (the chain is
//! checked against `ca_file`, PEM, and the host name against the
//! certificate; RFC 5280 / RFC 6125 as implemented by rustls-webpki).

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::StoreError;
use super::backend::{Dialect, POSTGRES, Row, Tx, Value, pg_row, to_dollar};

/// Set on every connection, transaction and listen alike. Values in
/// milliseconds; all shorter than the leader's lease (DESIGN §8). The
/// idle-in-transaction limit is [`PgOptions::idle_in_transaction`].
pub const SESSION_SETTINGS: &str = "SET statement_timeout = 10000; \
     SET lock_timeout = 5000; \
     SET TIME ZONE 'UTC'";

/// Default [`PgOptions::idle_in_transaction`].
pub const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(15);

/// The `idle_in_transaction_session_timeout` for a lease of `ttl`: at most
/// a third of it (and at most [`IDLE_IN_TRANSACTION`], at least 1 s). A
/// leader frozen inside a transaction (SIGSTOP, a paused VM) holds the
/// lease row `FOR SHARE` until the server ends its session; so that a
/// standby can take over within the TTL plus its polling, that must
/// happen well within the TTL.
pub fn idle_in_transaction_for(ttl: Duration) -> Duration {
    (ttl / 3).clamp(Duration::from_secs(1), IDLE_IN_TRANSACTION)
}

/// TCP keepalive: first probe after this much idle time.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// TCP keepalive: between probes; 3 unanswered probes end the connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unacknowledged data this long ends the connection (`TCP_USER_TIMEOUT`).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting (TCP + TLS + startup) gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `NOTIFY` channel of the lease (a graceful resign).
pub const LEASE_CHANNEL: &str = "rekey_lease";

/// `sslmode` of the state URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS without checking the certificate (libpq's `require`).
    Require,
    /// TLS; chain checked against `ca_file`, host name against the certificate.
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where and how to reach a PostgreSQL state.
#[derive(Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// The URL as configured (never holds a password).
    pub url: String,
    pub user: String,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    /// From `[daemon] state_password`; never printed.
    pub password: Option<String>,
    pub sslmode: SslMode,
    /// PEM CA bundle for `verify-full`.
    pub ca_file: Option<PathBuf>,
    /// This node's name (`[daemon] instance`): the lease holder it writes.
    pub instance: String,
    /// The server ends a session that sits idle inside a transaction this
    /// long (`idle_in_transaction_session_timeout`), releasing its locks;
    /// the daemon sets [`idle_in_transaction_for`] its lease TTL.
    pub idle_in_transaction: Duration,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("sslmode", &self.sslmode)
            .field("ca_file", &self.ca_file)
            .field("instance", &self.instance)
            .finish()
    }
}

/// A state URL that cannot be used; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UrlError(pub String);

/// Whether a `[daemon] state` value names a PostgreSQL state.
pub fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl PgOptions {
    /// Parse `postgres://user@host[:port]/dbname[?sslmode=…]` without
    /// connecting. `password` and `ca_file` start empty; `instance` is the
    /// host name. Errors (one sentence, naming the part to change): another
    /// scheme, a password in the URL, no user, host or database name, an
    /// unknown `sslmode` or query parameter, no `sslmode` for a host that is
    /// not loopback.
    pub fn from_url(s: &str) -> Result<PgOptions, UrlError> {
        if !is_postgres_url(s) {
            return Err(UrlError(
                "a PostgreSQL state URL starts with postgres:// (postgres://user@host:5432/dbname)"
                    .into(),
            ));
        }
        let u = url::Url::parse(s).map_err(|e| UrlError(format!("not a valid URL: {e}")))?;
        if u.password().is_some() {
            return Err(UrlError(
                "the URL holds a password; remove it and set [daemon] state_password (a secret reference) instead"
                    .into(),
            ));
        }
        let user = percent(u.username());
        if user.is_empty() {
            return Err(UrlError(
                "the URL names no user (postgres://USER@host/dbname)".into(),
            ));
        }
        let host = match u.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => {
                return Err(UrlError(
                    "the URL names no host (postgres://user@HOST/dbname)".into(),
                ));
            }
        };
        let port = u.port().unwrap_or(5432);
        let dbname = percent(u.path().trim_start_matches('/'));
        if dbname.is_empty() || dbname.contains('/') {
            return Err(UrlError(
                "the URL names no database (postgres://user@host/DBNAME)".into(),
            ));
        }
        let mut sslmode = None;
        for (k, v) in u.query_pairs() {
            match k.as_ref() {
                "sslmode" => {
                    sslmode = Some(match v.as_ref() {
                        "disable" => SslMode::Disable,
                        "require" => SslMode::Require,
                        "verify-full" => SslMode::VerifyFull,
                        other => {
                            return Err(UrlError(format!(
                                "sslmode={} is not supported; use disable, require or verify-full",
                                crate::logging::escape(other)
                            )));
                        }
                    })
                }
                other => {
                    return Err(UrlError(format!(
                        "unknown URL parameter {}; the only one is sslmode",
                        crate::logging::escape(other)
                    )));
                }
            }
        }
        let sslmode = match sslmode {
            Some(m) => m,
            None if is_loopback(&host) => SslMode::Disable,
            None => {
                return Err(UrlError(format!(
                    "say how to reach {} over the network: add ?sslmode=verify-full (with a ca_file), require or disable",
                    crate::logging::escape(&host)
                )));
            }
        };
        let mut url = u.clone();
        url.set_query(None);
        let mut shown = url.to_string();
        if sslmode != SslMode::Disable || u.query().is_some() {
            shown.push_str(&format!("?sslmode={}", sslmode.as_str()));
        }
        Ok(PgOptions {
            url: shown,
            user,
            host,
            port,
            dbname,
            password: None,
            sslmode,
            ca_file: None,
            instance: default_instance(),
            idle_in_transaction: IDLE_IN_TRANSACTION,
        })
    }

    /// Check what only the options together can say (a `ca_file` needs
    /// `verify-full`; `verify-full` needs a `ca_file`).
    pub fn validate(&self) -> Result<(), UrlError> {
        match (self.sslmode, &self.ca_file) {
            (SslMode::VerifyFull, None) => Err(UrlError(
                "sslmode=verify-full needs a ca_file (the PEM CA bundle that signed the server's certificate)"
                    .into(),
            )),
            (SslMode::Disable | SslMode::Require, Some(_)) => Err(UrlError(format!(
                "a ca_file is only used with sslmode=verify-full (this URL says sslmode={})",
                self.sslmode.as_str()
            ))),
            _ => Ok(()),
        }
    }
}

fn percent(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The host name (the kernel's, else `/etc/hostname`, else `rekey`): the
/// default instance name.
pub fn default_instance() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "rekey".to_string())
}

/// Where the state lives: a SQLite file or a PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateLocation {
    Sqlite(PathBuf),
    Postgres(PgOptions),
}

impl StateLocation {
    /// A `[daemon] state` value: a `postgres://` URL (parsed, not
    /// connected) or a file path.
    pub fn parse(s: &str) -> Result<StateLocation, UrlError> {
        if is_postgres_url(s) {
            Ok(StateLocation::Postgres(PgOptions::from_url(s)?))
        } else {
            Ok(StateLocation::Sqlite(PathBuf::from(s)))
        }
    }

    /// How to name it in messages (a path, or the URL without password).
    pub fn display(&self) -> String {
        match self {
            StateLocation::Sqlite(p) => p.display().to_string(),
            StateLocation::Postgres(o) => o.url.clone(),
        }
    }
}

// ------------------------------------------------------------- connecting

/// rustls for `require`: the handshake's signatures are checked, the
/// certificate is not (libpq's `sslmode=require`).
#[derive(Debug)]
struct NoCertCheck(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoCertCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config(o: &PgOptions) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    Ok(match o.sslmode {
        SslMode::VerifyFull => {
            use rustls_pki_types::pem::PemObject;
            let path = o
                .ca_file
                .as_ref()
                .ok_or("sslmode=verify-full needs a ca_file")?;
            let mut roots = rustls::RootCertStore::empty();
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            for c in certs {
                let c = c.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "ca_file {} holds no PEM certificate",
                    path.display()
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertCheck(provider)))
            .with_no_client_auth(),
    })
}

fn pg_config(o: &PgOptions, role: &str) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.user(&o.user)
        .host(&o.host)
        .port(o.port)
        .dbname(&o.dbname)
        .application_name(format!("rekey {role} ({})", o.instance))
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(3)
        .tcp_user_timeout(TCP_USER_TIMEOUT)
        .ssl_mode(match o.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            _ => tokio_postgres::config::SslMode::Require,
        });
    if let Some(p) = &o.password {
        c.password(p.as_bytes());
    }
    c
}

/// What a connection's driver task reports when it ends.
type OnMessage = Box<dyn FnMut(tokio_postgres::AsyncMessage) + Send>;

/// Connect and spawn the connection's driver on the current runtime;
/// `on_message` sees notifications (the LISTEN connection).
async fn connect(
    o: &PgOptions,
    role: &str,
    mut on_message: Option<OnMessage>,
    on_end: Option<Box<dyn FnOnce() + Send>>,
) -> Result<tokio_postgres::Client, StoreError> {
    let cfg = pg_config(o, role);
    let fail = |reason: String| StoreError::Open {
        path: PathBuf::from(&o.url),
        reason,
    };
    async fn drive<S, T>(
        mut conn: tokio_postgres::Connection<S, T>,
        mut on_message: Option<OnMessage>,
        on_end: Option<Box<dyn FnOnce() + Send>>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(m)) => {
                    if let Some(f) = on_message.as_mut() {
                        f(m)
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "state database connection ended");
                    break;
                }
                None => break,
            }
        }
        if let Some(f) = on_end {
            f()
        }
    }
    let client = match o.sslmode {
        SslMode::Disable => {
            let (client, conn) = cfg
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| fail(pg_reason(&e)))?;
            tokio::spawn(drive(conn, on_message.take(), on_end));
            client
        }
        _ => {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(o).map_err(fail)?);
            let (client, conn) = cfg.connect(tls).await.map_err(|e| fail(pg_reason(&e)))?;
            tokio::spawn(drive(conn, on_message.take(), on_end));
            client
        }
    };
    client
        .batch_execute(&format!(
            "{SESSION_SETTINGS}; SET idle_in_transaction_session_timeout = {}",
            o.idle_in_transaction.as_millis().max(1)
        ))
        .await
        .map_err(|e| fail(pg_reason(&e)))?;
    Ok(client)
}

/// A driver error as one line (the server's message and SQLSTATE when it
/// sent one). Never holds a bound parameter: tokio-postgres does not echo
/// them.
pub(crate) fn pg_reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{} (SQLSTATE {})",
            crate::logging::escape(db.message()),
            db.code().code()
        ),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            crate::logging::escape(&s).into_owned()
        }
    }
}

// ---------------------------------------------------------- store thread

enum Req {
    Begin,
    Commit,
    Rollback,
    Execute(String, Vec<Value>),
    Query(String, Vec<Value>),
    Batch(String),
    Listen,
}

enum Reply {
    Done,
    Count(u64),
    Rows(Vec<Row>),
}

/// Notifications seen by the LISTEN connection.
#[derive(Default)]
struct ListenState {
    /// Notifications (and losses of the listen connection) so far.
    wakes: u64,
    /// `wakes` when `listen_lease` last returned.
    seen: u64,
    alive: bool,
}

/// The handle to the store thread: one request in flight at a time (the
/// store's mutex around it guarantees that).
pub(crate) struct PgConn {
    req: tokio::sync::mpsc::UnboundedSender<(
        Req,
        std::sync::mpsc::SyncSender<Result<Reply, StoreError>>,
    )>,
    listen: Arc<(Mutex<ListenState>, Condvar)>,
}

impl PgConn {
    /// Start the store thread and connect once (so a wrong URL, password
    /// or certificate fails here, not at the first transition).
    pub(crate) fn start(opts: &PgOptions) -> Result<PgConn, StoreError> {
        opts.validate().map_err(|e| StoreError::Open {
            path: PathBuf::from(&opts.url),
            reason: e.0,
        })?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let listen = Arc::new((Mutex::new(ListenState::default()), Condvar::new()));
        let o = opts.clone();
        let l = listen.clone();
        std::thread::Builder::new()
            .name("rekey-state-pg".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the state database thread");
                        return;
                    }
                };
                rt.block_on(serve(o, rx, l));
            })
            .map_err(|e| StoreError::Open {
                path: PathBuf::from(&opts.url),
                reason: format!("cannot start the state database thread: {e}"),
            })?;
        let conn = PgConn { req: tx, listen };
        conn.call(Req::Batch("SELECT 1".into()))?;
        Ok(conn)
    }

    fn call(&self, r: Req) -> Result<Reply, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.req
            .send((r, tx))
            .map_err(|_| StoreError::Unavailable("the state database thread has stopped".into()))?;
        rx.recv()
            .map_err(|_| StoreError::Unavailable("the state database thread has stopped".into()))?
    }

    pub(crate) fn batch(&self, sql: &str) -> Result<(), StoreError> {
        self.call(Req::Batch(sql.to_string())).map(|_| ())
    }

    /// Begin a transaction (READ COMMITTED: the fence check reads the
    /// latest committed lease row under `FOR SHARE`).
    pub(crate) fn begin(&self) -> Result<PgTx<'_>, StoreError> {
        self.call(Req::Begin)?;
        Ok(PgTx {
            conn: self,
            open: std::cell::Cell::new(true),
        })
    }

    /// Statements outside a transaction (reads; single-statement writes).
    pub(crate) fn autocommit(&self) -> PgTx<'_> {
        PgTx {
            conn: self,
            open: std::cell::Cell::new(false),
        }
    }

    /// The waiter for `NOTIFY rekey_lease`, opening the LISTEN connection
    /// first if it is not open.
    pub(crate) fn listener(&self) -> Result<ListenWaiter, StoreError> {
        let alive = lock_state(&self.listen).alive;
        if !alive {
            self.call(Req::Listen)?;
        }
        Ok(ListenWaiter(self.listen.clone()))
    }
}

fn lock_state(l: &(Mutex<ListenState>, Condvar)) -> std::sync::MutexGuard<'_, ListenState> {
    l.0.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits for lease notifications without holding the store's lock.
pub(crate) struct ListenWaiter(Arc<(Mutex<ListenState>, Condvar)>);

impl ListenWaiter {
    /// Wait up to `timeout` for a notification (or the loss of the listen
    /// connection) since the previous wait returned; `true` = woken.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let (_, cv) = &*self.0;
        let st = lock_state(&self.0);
        let (mut st, _) = cv
            .wait_timeout_while(st, timeout, |s| s.wakes == s.seen)
            .unwrap_or_else(|p| p.into_inner());
        let woke = st.wakes != st.seen;
        st.seen = st.wakes;
        woke
    }
}

/// One transaction on the store thread (or autocommit statements). Dropped
/// without [`PgTx::commit`], it rolls back.
pub(crate) struct PgTx<'a> {
    conn: &'a PgConn,
    open: std::cell::Cell<bool>,
}

impl PgTx<'_> {
    pub(crate) fn commit(self) -> Result<(), StoreError> {
        self.open.set(false);
        self.conn.call(Req::Commit).map(|_| ())
    }

    pub(crate) fn rollback(self) -> Result<(), StoreError> {
        self.open.set(false);
        self.conn.call(Req::Rollback).map(|_| ())
    }
}

impl Drop for PgTx<'_> {
    fn drop(&mut self) {
        if self.open.get() {
            let _ = self.conn.call(Req::Rollback);
        }
    }
}

impl Tx for PgTx<'_> {
    fn execute(&self, sql: &str, params: &[Value]) -> Result<usize, StoreError> {
        match self
            .conn
            .call(Req::Execute(sql.to_string(), params.to_vec()))?
        {
            Reply::Count(n) => Ok(n as usize),
            _ => Ok(0),
        }
    }

    fn query_all(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        match self
            .conn
            .call(Req::Query(sql.to_string(), params.to_vec()))?
        {
            Reply::Rows(r) => Ok(r),
            _ => Ok(Vec::new()),
        }
    }

    fn query_opt(&self, sql: &str, params: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.query_all(sql, params)?.into_iter().next())
    }

    fn query_row(&self, sql: &str, params: &[Value]) -> Result<Row, StoreError> {
        self.query_opt(sql, params)?
            .ok_or_else(|| StoreError::Postgres("the query returned no rows".into()))
    }

    fn dialect(&self) -> &'static Dialect {
        &POSTGRES
    }
}

struct Session {
    opts: PgOptions,
    client: Option<tokio_postgres::Client>,
    statements: std::collections::HashMap<String, tokio_postgres::Statement>,
    in_tx: bool,
    /// The connection died inside the open transaction: every statement
    /// and the `COMMIT` of that transaction fail until its end
    /// (commit/rollback) or the next `BEGIN`; none runs on a new
    /// connection outside it.
    tx_lost: bool,
    listener: Option<tokio_postgres::Client>,
    listen: Arc<(Mutex<ListenState>, Condvar)>,
}

/// The error says the connection is gone (closed, or the server ended the
/// session: SQLSTATE class 57 "operator intervention", class 08
/// "connection exception").
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || e.as_db_error().is_some_and(|db| {
            let c = db.code().code();
            c.starts_with("57") || c.starts_with("08")
        })
}

/// Parameters as the driver takes them.
fn param_refs(params: &[Value]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    StoreError::Postgres(pg_reason(&e))
}

impl Session {
    async fn client(&mut self) -> Result<&tokio_postgres::Client, StoreError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            if self.in_tx || self.tx_lost {
                self.tx_lost = true;
                self.client = None;
                return Err(StoreError::Unavailable(
                    "the connection to the state database was lost inside a transaction; it was not committed"
                        .into(),
                ));
            }
            self.statements.clear();
            self.client = Some(connect(&self.opts, "store", None, None).await?);
        }
        Ok(self.client.as_ref().expect("connected above"))
    }

    async fn statement(&mut self, sql: &str) -> Result<tokio_postgres::Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let st = self
            .client()
            .await?
            .prepare(&to_dollar(sql))
            .await
            .map_err(pg_err)?;
        if self.statements.len() > 256 {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), st.clone());
        Ok(st)
    }

    async fn handle(&mut self, r: Req) -> Result<Reply, StoreError> {
        match r {
            Req::Begin => {
                if self.tx_lost {
                    // The server ended that session: nothing to roll back.
                    self.tx_lost = false;
                    self.in_tx = false;
                }
                if self.in_tx {
                    // A caller that panicked mid-transaction left it open.
                    let _ = self.client().await?.batch_execute("ROLLBACK").await;
                    self.in_tx = false;
                }
                const BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";
                let first = self.client().await?.batch_execute(BEGIN).await;
                if let Err(e) = first {
                    // A connection the server closed since the last
                    // request (restart, failover, idle timeout): nothing
                    // of this transaction was sent, so connect again once.
                    if !connection_lost(&e) && !self.client.as_ref().is_some_and(|c| c.is_closed())
                    {
                        return Err(pg_err(e));
                    }
                    self.client = None;
                    self.client()
                        .await?
                        .batch_execute(BEGIN)
                        .await
                        .map_err(pg_err)?;
                }
                self.in_tx = true;
                Ok(Reply::Done)
            }
            Req::Commit | Req::Rollback => {
                let sql = if matches!(r, Req::Commit) {
                    "COMMIT"
                } else {
                    "ROLLBACK"
                };
                let lost = self.tx_lost;
                let out = match self.client().await {
                    Ok(c) => c.batch_execute(sql).await.map_err(pg_err),
                    Err(e) => Err(e),
                };
                self.in_tx = false;
                self.tx_lost = false;
                match out {
                    // The server rolled the lost transaction back itself.
                    Err(_) if lost && matches!(r, Req::Rollback) => Ok(Reply::Done),
                    out => out.map(|()| Reply::Done),
                }
            }
            Req::Execute(sql, params) => {
                let st = self.statement(&sql).await?;
                let n = self
                    .client()
                    .await?
                    .execute(&st, &param_refs(&params))
                    .await
                    .map_err(pg_err)?;
                Ok(Reply::Count(n))
            }
            Req::Query(sql, params) => {
                let st = self.statement(&sql).await?;
                let rows = self
                    .client()
                    .await?
                    .query(&st, &param_refs(&params))
                    .await
                    .map_err(pg_err)?;
                let rows = rows
                    .iter()
                    .map(pg_row)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(pg_err)?;
                Ok(Reply::Rows(rows))
            }
            Req::Batch(sql) => {
                self.client()
                    .await?
                    .batch_execute(&sql)
                    .await
                    .map_err(pg_err)?;
                Ok(Reply::Done)
            }
            Req::Listen => {
                if self.listener.as_ref().is_some_and(|c| !c.is_closed()) {
                    return Ok(Reply::Done);
                }
                let wake = |l: &Arc<(Mutex<ListenState>, Condvar)>, alive: Option<bool>| {
                    let mut st = lock_state(l);
                    st.wakes += 1;
                    if let Some(a) = alive {
                        st.alive = a;
                    }
                    l.1.notify_all();
                };
                let on_msg = {
                    let l = self.listen.clone();
                    Box::new(move |m: tokio_postgres::AsyncMessage| {
                        if let tokio_postgres::AsyncMessage::Notification(_) = m {
                            wake(&l, None);
                        }
                    }) as OnMessage
                };
                let on_end = {
                    let l = self.listen.clone();
                    Box::new(move || wake(&l, Some(false))) as Box<dyn FnOnce() + Send>
                };
                let client = connect(&self.opts, "listen", Some(on_msg), Some(on_end)).await?;
                client
                    .batch_execute(&format!("LISTEN {LEASE_CHANNEL}"))
                    .await
                    .map_err(pg_err)?;
                lock_state(&self.listen).alive = true;
                self.listener = Some(client);
                Ok(Reply::Done)
            }
        }
    }
}

type Request = (Req, std::sync::mpsc::SyncSender<Result<Reply, StoreError>>);

async fn serve(
    opts: PgOptions,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Request>,
    listen: Arc<(Mutex<ListenState>, Condvar)>,
) {
    let mut s = Session {
        opts,
        client: None,
        statements: Default::default(),
        in_tx: false,
        tx_lost: false,
        listener: None,
        listen,
    };
    while let Some((r, reply)) = rx.recv().await {
        let out = s.handle(r).await;
        let _ = reply.send(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_url_parses_without_connecting() {
        let o = PgOptions::from_url("postgres://rekey@127.0.0.1:5433/state").unwrap();
        assert_eq!(
            (o.user.as_str(), o.host.as_str(), o.port, o.dbname.as_str()),
            ("rekey", "127.0.0.1", 5433, "state")
        );
        assert_eq!(o.sslmode, SslMode::Disable);
        assert_eq!(o.password, None);
        assert_eq!(o.url, "postgres://rekey@127.0.0.1:5433/state");
        let o =
            PgOptions::from_url("postgresql://r@db.example:5432/s?sslmode=verify-full").unwrap();
        assert_eq!(o.sslmode, SslMode::VerifyFull);
        assert_eq!(o.port, 5432);
    }

    #[test]
    fn a_password_in_the_url_is_refused_pointing_at_state_password() {
        let e = PgOptions::from_url("postgres://rekey:hunter2@localhost/state").unwrap_err();
        assert!(e.0.contains("state_password"), "{e}");
        assert!(!e.0.contains("hunter2"), "{e}");
    }

    #[test]
    fn each_missing_or_unknown_part_is_named() {
        for (url, says) in [
            ("mysql://u@h/db", "postgres://"),
            ("postgres://localhost/db", "no user"),
            ("postgres://u@localhost/", "no database"),
            ("postgres://u@localhost/db?sslmode=prefer", "sslmode=prefer"),
            (
                "postgres://u@localhost/db?connect_timeout=3",
                "unknown URL parameter",
            ),
            ("postgres://u@db.internal/db", "sslmode"),
        ] {
            let e = PgOptions::from_url(url).unwrap_err();
            assert!(e.0.contains(says), "{url}: {e}");
        }
    }

    #[test]
    fn verify_full_needs_a_ca_file_and_a_ca_file_needs_verify_full() {
        let mut o = PgOptions::from_url("postgres://u@db/x?sslmode=verify-full").unwrap();
        assert!(o.validate().unwrap_err().0.contains("ca_file"));
        o.ca_file = Some("/etc/rekey/ca.pem".into());
        o.validate().unwrap();
        let mut o = PgOptions::from_url("postgres://u@db/x?sslmode=require").unwrap();
        o.ca_file = Some("/etc/rekey/ca.pem".into());
        assert!(o.validate().unwrap_err().0.contains("verify-full"));
    }

    #[test]
    fn the_state_location_is_a_url_or_a_path_and_debug_hides_the_password() {
        assert_eq!(
            StateLocation::parse("/var/lib/rekey/state.db").unwrap(),
            StateLocation::Sqlite("/var/lib/rekey/state.db".into())
        );
        let StateLocation::Postgres(mut o) =
            StateLocation::parse("postgres://u@localhost/db").unwrap()
        else {
            panic!("not postgres")
        };
        o.password = Some("hunter2".into());
        assert!(!format!("{o:?}").contains("hunter2"));
    }
}
