//! The state store: SQLite on one host, PostgreSQL for several (DESIGN §8).
//!
//! Everything rekey must not forget lives here: which keys each policy has
//! seen and their lineages, every rotation and its create attempts, per-sink
//! acknowledgements, the notification outbox, and each policy's check times.
//!
//! The engine never writes SQL and no connection leaves this module: each
//! public method is one *whole transition* — exactly one transaction that
//! also writes the outbox events it causes — so a crash lands either before
//! or after it, never inside. Transitions check the state they expect
//! (`UPDATE … WHERE state = 'created'`) and fail with
//! [`StoreError::Conflict`] rather than apply twice.
//!
//! Durability: WAL journal, `synchronous = FULL` (a committed transition
//! survives power loss), a busy timeout, file mode 0600. One daemon per DB:
//! [`Store::open`] takes an exclusive `flock` on `state.db.lock` holding the
//! owner's pid. A DB with a newer schema or a file that is not a SQLite DB
//! is refused with a clear error and never modified or deleted.
//!
//! The same transitions run on PostgreSQL ([`Store::open_postgres`]): each
//! is written once against [`backend::Tx`], and the dialects differ only in
//! [`backend::Dialect`]. There, several nodes share one database: the lease
//! row ([`lease`]) decides who leads, and once [`Store::set_fence`] is
//! called every write transaction first checks the lease's fence under
//! `FOR SHARE` and fails with [`StoreError::Fenced`] if another node took
//! over. Durability there is the server's (`synchronous_commit`, and
//! synchronous replication for a replicated server, DESIGN §8).

pub(crate) mod backend;
pub mod known;
pub mod lease;
pub mod migrate;
pub mod postgres;
pub mod schema;
pub mod seal;

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use serde::Serialize;

use backend::{Row, Tx, Value, p};
pub use known::{KnownKeys, KnownRef};
pub use lease::{Lease, LeaseRow, RotateRequest};
pub use postgres::{PgOptions, SslMode, StateLocation, UrlError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error(
        "state database {path} has schema version {found}, newer than this rekey understands ({supported}); upgrade rekey or restore a backup — the file was not modified"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "state database {path} is not a rekey state database ({reason}); it was left untouched — move it aside or point daemon.state elsewhere"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "another rekey is already running on {path} (pid {pid}); one daemon per state database"
    )]
    Locked { path: PathBuf, pid: String },
    #[error("state transition refused: {0}")]
    Conflict(String),
    #[error("state database error: {0}")]
    Sql(#[from] rusqlite::Error),
    /// PostgreSQL: the server refused a statement, or the connection failed
    /// (the server's message and SQLSTATE).
    #[error("state database error: {0}")]
    Postgres(String),
    /// PostgreSQL: the store thread or the connection is gone; the
    /// transaction was not committed.
    #[error("state database unavailable: {0}")]
    Unavailable(String),
    /// PostgreSQL: another node holds the lease now (its fence is newer, or
    /// the holder changed); this transaction rolled back. The node must
    /// stop acting as leader.
    #[error(
        "state transition fenced: this node's fence is {expected} but the lease now has fence {found} held by {}; another node leads, nothing was written",
        holder.as_deref().unwrap_or("nobody")
    )]
    Fenced {
        expected: i64,
        found: i64,
        holder: Option<String>,
    },
    /// An operation only the PostgreSQL backend has (lease, rotate
    /// requests), asked of a SQLite store.
    #[error(
        "{0} needs a PostgreSQL state (daemon.state = \"postgres://…\"); this state is a SQLite file"
    )]
    Unsupported(&'static str),
    /// A cell holds another kind of value than the column should (a row
    /// another program wrote).
    #[error("state database: column {column} holds {found}, expected {want}")]
    Value {
        column: usize,
        want: &'static str,
        found: &'static str,
    },
}

/// Timestamp format used in every column.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

fn opt_ts(s: Option<String>) -> Option<DateTime<Utc>> {
    s.as_deref().and_then(parse_ts)
}

/// The exclusive lock that makes one daemon per state DB.
struct LockFile {
    _file: File,
}

impl LockFile {
    fn acquire(db: &Path) -> Result<Self, StoreError> {
        let path = lock_path(db);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            // A link planted at the lock's path must not make us open (and
            // then truncate) whatever it points to.
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                reason: if e.raw_os_error() == Some(libc::ELOOP) {
                    "the lock file is a symbolic link; refusing to follow it".to_string()
                } else {
                    format!("cannot open lock file: {e}")
                },
            })?;
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(StoreError::Open {
                path: path.clone(),
                reason: "the lock file is not a regular file".into(),
            });
        }
        // SAFETY: flock on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(StoreError::Locked {
                path: db.to_path_buf(),
                pid: if pid.trim().is_empty() {
                    "unknown".into()
                } else {
                    pid.trim().to_string()
                },
            });
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        let _ = file.sync_all();
        Ok(LockFile { _file: file })
    }
}

pub fn lock_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// The seal key file that sits beside the DB when no `seal_key` is set.
pub fn key_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".key");
    PathBuf::from(s)
}

/// Which database a [`Store`] talks to.
enum Db {
    Sqlite(Mutex<Connection>),
    /// The connection, and the URL and instance name (kept outside the
    /// lock: naming the store never waits for a transition).
    Postgres(Mutex<postgres::PgConn>, String, String),
}

/// What [`Store::ledger_generation`] returns for one policy: equal twice
/// only when no write that may have changed that policy's ledger was made
/// through the same store in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerGeneration {
    /// Tells the `Store` from every other one the process opened.
    store: u64,
    /// Writes that did not say whose ledger they changed, and fences.
    all: u64,
    /// Writes that said they may have changed this policy's ledger.
    policy: u64,
}

impl LedgerGeneration {
    /// Whether both were read from the same store with no write in between
    /// that did not say whose ledger it changed: a cached ledger of another
    /// generation than that may still be current for its own policy.
    pub fn same_epoch(&self, other: &LedgerGeneration) -> bool {
        self.store == other.store && self.all == other.all
    }
}

/// Whose ledger rows a write transaction changes ([`Store::tx_for`]).
#[derive(Debug, Clone, Copy)]
enum Owner<'a> {
    /// The policy of that name.
    Policy(&'a str),
    /// The policy that owns the rotation of that id.
    Rotation(&'a str),
}

/// The policies whose ledgers a write of `owner`'s rows may have changed,
/// read inside the write's transaction after its statements: the owner,
/// and every other policy that holds a row (in any state) of one of the
/// owner's key ids — its `claimed_elsewhere` ([`Store::claimed_elsewhere`])
/// reads the owner's rows of those ids. Keys rows are never deleted, so a
/// key id the owner held or holds, live or not, is among the owner's rows.
/// Asked on every such write, whether or not it wrote a `keys` row (a
/// rotation step may, through a helper): one seek per own key. `None`
/// when the owner is unknown (a rotation id with no row). A store's
/// transactions never overlap (one connection, under its lock), so no
/// other write of the same store can add a shared key id this read
/// misses.
fn ledger_readers(tx: &dyn Tx, owner: Owner<'_>) -> Result<Option<Vec<String>>, StoreError> {
    let policy: String = match owner {
        Owner::Policy(p) => p.to_string(),
        Owner::Rotation(id) => {
            match tx.query_opt("SELECT policy FROM rotations WHERE id = ?1", p![id])? {
                Some(r) => r.get(0)?,
                None => return Ok(None),
            }
        }
    };
    // Through `keys_by_id`, as claimed_elsewhere.
    let mut out = tx
        .query_all(
            &format!(
                "SELECT DISTINCT o.policy FROM keys k
                 JOIN keys o {} ON o.key_id = k.key_id
                 WHERE k.policy = ?1 AND o.policy <> ?1",
                tx.dialect().indexed_by("keys_by_id")
            ),
            p![policy],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect::<Result<Vec<String>, StoreError>>()?;
    out.push(policy);
    Ok(Some(out))
}

pub struct Store {
    db: Db,
    path: Option<PathBuf>,
    _lock: Option<LockFile>,
    /// PostgreSQL: the fence every write transaction must still find in
    /// the lease row ([`Store::set_fence`]); `None` = writes unfenced.
    fence: Mutex<Option<i64>>,
    /// Write transactions refused because the fence moved.
    fenced_commits: AtomicU64,
    /// Bumped after every write transaction that may have touched any
    /// policy's ledger tables and does not say whose
    /// ([`Store::ledger_generation`]).
    ledger_generation: AtomicU64,
    /// Per policy: bumped after every write transaction that says it may
    /// have changed that policy's ledger ([`Store::tx_for`]). Entries are
    /// never removed (a policy's count only grows).
    policy_generations: Mutex<std::collections::HashMap<String, u64>>,
    /// Unique among the stores of this process ([`Store::ledger_generation`]).
    serial: u64,
    /// Test builds only: fence checking can be switched off to prove the
    /// HA suite detects what it prevents.
    #[cfg(feature = "ha-test-unfenced")]
    fence_checks: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.db {
            Db::Sqlite(_) => write!(f, "Store({:?})", self.path),
            Db::Postgres(_, url, _) => write!(f, "Store({url})"),
        }
    }
}

const SQLITE_MAGIC: &[u8] = b"SQLite format 3\0";

/// A poisoned lock is still usable: a panic inside a transaction leaves
/// none half-applied (SQLite and PostgreSQL roll it back).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store {
    fn with_db(db: Db, path: Option<PathBuf>, lock: Option<LockFile>) -> Store {
        Store {
            db,
            path,
            _lock: lock,
            fence: Mutex::new(None),
            fenced_commits: AtomicU64::new(0),
            ledger_generation: AtomicU64::new(0),
            policy_generations: Mutex::default(),
            serial: {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                NEXT.fetch_add(1, Ordering::Relaxed)
            },
            #[cfg(feature = "ha-test-unfenced")]
            fence_checks: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Open the state wherever it lives: [`Store::open`] for a file,
    /// [`Store::open_postgres`] for a database.
    pub fn open_location(loc: &StateLocation) -> Result<Self, StoreError> {
        match loc {
            StateLocation::Sqlite(p) => Store::open(p),
            StateLocation::Postgres(o) => Store::open_postgres(o),
        }
    }

    /// Connect to a PostgreSQL state (DESIGN §8) and migrate its schema
    /// (each migration one transaction under an advisory lock, so nodes
    /// starting together migrate once). Refused: a newer schema
    /// ([`StoreError::NewerSchema`]), a database holding other tables but
    /// no rekey schema ([`StoreError::Corrupt`]), a connection that fails
    /// ([`StoreError::Open`], with the server's reason). Several nodes may
    /// open one database: who writes is decided by the lease
    /// ([`Store::lease_acquire`]) and enforced by the fence.
    pub fn open_postgres(opts: &PgOptions) -> Result<Self, StoreError> {
        let conn = postgres::PgConn::start(opts)?;
        let store = Store::with_db(
            Db::Postgres(Mutex::new(conn), opts.url.clone(), opts.instance.clone()),
            None,
            None,
        );
        store.migrate_postgres()?;
        Ok(store)
    }

    /// Connect to a PostgreSQL state for reading (`rekey history`, `plan`):
    /// no migration; an older or newer schema is refused.
    pub fn open_postgres_read_only(opts: &PgOptions) -> Result<Self, StoreError> {
        let conn = postgres::PgConn::start(opts)?;
        let store = Store::with_db(
            Db::Postgres(Mutex::new(conn), opts.url.clone(), opts.instance.clone()),
            None,
            None,
        );
        let v = store.pg_version()?;
        let name = PathBuf::from(&opts.url);
        if v > schema::PG_VERSION {
            return Err(StoreError::NewerSchema {
                path: name,
                found: v,
                supported: schema::PG_VERSION,
            });
        }
        if v < schema::PG_VERSION {
            return Err(StoreError::Open {
                path: name,
                reason: format!(
                    "schema version {v} is older than {}; start the daemon once to upgrade it",
                    schema::PG_VERSION
                ),
            });
        }
        Ok(store)
    }

    /// Whether this store is a PostgreSQL one.
    pub fn is_postgres(&self) -> bool {
        matches!(self.db, Db::Postgres(..))
    }

    /// The instance name a PostgreSQL store writes as lease holder.
    pub fn instance(&self) -> Option<String> {
        match &self.db {
            Db::Sqlite(_) => None,
            Db::Postgres(_, _, instance) => Some(instance.clone()),
        }
    }

    /// Open (creating if needed) the daemon's state: take the single-instance
    /// lock, check the file, migrate.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                reason: format!("cannot create directory {}: {e}", dir.display()),
            })?;
        }
        let lock = LockFile::acquire(path)?;
        check_header(path)?;
        let fresh = !path.exists();
        if fresh {
            // Create it 0600 before SQLite does (SQLite would use 0644).
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(path)
                .map_err(|e| StoreError::Open {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
        }
        // SQLite refuses a link at the DB path (or its journal) with this.
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::default() | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .map_err(|e| StoreError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        // Look before touching: `configure` switches the journal to WAL,
        // which rewrites the header of a DB we are about to refuse.
        preflight(&conn, path)?;
        let store = Store::with_db(
            Db::Sqlite(Mutex::new(conn)),
            Some(path.to_path_buf()),
            Some(lock),
        );
        store.configure()?;
        store.migrate()?;
        for suffix in ["-wal", "-shm"] {
            let mut s = path.as_os_str().to_owned();
            s.push(suffix);
            let _ =
                std::fs::set_permissions(PathBuf::from(s), std::fs::Permissions::from_mode(0o600));
        }
        Ok(store)
    }

    /// Open for reading while a daemon may be running (history, plan): no
    /// lock, no migration, no writes.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Open {
                path: path.to_path_buf(),
                reason: "does not exist (has the daemon run yet?)".into(),
            });
        }
        check_header(path)?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let store = Store::with_db(Db::Sqlite(Mutex::new(conn)), Some(path.to_path_buf()), None);
        let v = store.version().map_err(|e| store.corrupt(e))?;
        if v > schema::VERSION {
            return Err(StoreError::NewerSchema {
                path: path.to_path_buf(),
                found: v,
                supported: schema::VERSION,
            });
        }
        if v < schema::VERSION {
            return Err(StoreError::Open {
                path: path.to_path_buf(),
                reason: format!(
                    "schema version {v} is older than {}; start the daemon once to upgrade it",
                    schema::VERSION
                ),
            });
        }
        Ok(store)
    }

    pub fn open_in_memory() -> Result<Self, StoreError> {
        let store = Store::with_db(
            Db::Sqlite(Mutex::new(Connection::open_in_memory()?)),
            None,
            None,
        );
        store.configure()?;
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn corrupt(&self, e: rusqlite::Error) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone().unwrap_or_default(),
            reason: e.to_string(),
        }
    }

    /// The SQLite connection (file-only operations: pragmas, checkpoints).
    fn conn(&self) -> MutexGuard<'_, Connection> {
        match &self.db {
            Db::Sqlite(c) => lock(c),
            Db::Postgres(..) => unreachable!("SQLite-only operation on a PostgreSQL store"),
        }
    }

    fn configure(&self) -> Result<(), StoreError> {
        let c = self.conn();
        c.busy_timeout(Duration::from_secs(5))?;
        // Every statement a check and a status rebuild run stays prepared
        // (rusqlite keeps 16 by default; more are in use, and re-parsing
        // SQL was a visible share of an idle daemon's CPU).
        c.set_prepared_statement_cache_capacity(64);
        // Plans do not depend on bound values (the query planner stability
        // guarantee): otherwise a cached statement is re-prepared each
        // time a parameter such as the policy name changes (SQLite marks
        // it so when a bound value could pick a partial index), and every
        // check of another policy re-parsed its SQL. The queries name
        // their indexes where it matters.
        c.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
        let r: Result<(), rusqlite::Error> = (|| {
            c.pragma_update(None, "journal_mode", "WAL")?;
            c.pragma_update(None, "synchronous", "FULL")?;
            c.pragma_update(None, "foreign_keys", "ON")?;
            // Deleted and overwritten content (a wiped sealed secret, the
            // old versions of its row) is zeroed, not left in free space.
            c.pragma_update(None, "secure_delete", "ON")?;
            // Page cache: 256 KiB (SQLite's default is 2 MiB). The daemon's
            // queries are indexed; the OS page cache holds the rest, and
            // an idle daemon should be small (DESIGN §9, idle footprint).
            c.pragma_update(None, "cache_size", -256)?;
            Ok(())
        })();
        r.map_err(|e| self.corrupt(e))
    }

    /// After a transaction that wiped a sealed secret: move the WAL into the
    /// DB and truncate it, so no earlier copy of the row (each update of a
    /// row appends a new copy of its page to the WAL) stays on disk. With
    /// `secure_delete` the DB file's freed space is zeroed too. Best effort:
    /// a reader holding an old snapshot (`rekey history`) can keep the WAL
    /// from being truncated; the next wipe tries again. (PostgreSQL keeps
    /// dead row versions until VACUUM; the secret there is sealed anyway.)
    fn checkpoint_after_wipe(&self) {
        if self.path.is_none() || !matches!(self.db, Db::Sqlite(_)) {
            return;
        }
        let c = self.conn();
        match c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        }) {
            Ok((0, _, _)) => {}
            Ok((busy, log, done)) => {
                tracing::debug!(
                    busy,
                    wal_frames = log,
                    checkpointed = done,
                    "WAL checkpoint after a wipe could not finish; a reader holds an old snapshot"
                )
            }
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint after a wipe failed"),
        }
    }

    fn version(&self) -> Result<i64, rusqlite::Error> {
        self.conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut c = self.conn();
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.corrupt(e))?;
        let v: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.corrupt(e))?;
        if v > schema::VERSION {
            return Err(StoreError::NewerSchema {
                path: self.path.clone().unwrap_or_default(),
                found: v,
                supported: schema::VERSION,
            });
        }
        for (i, m) in schema::MIGRATIONS.iter().enumerate().skip(v as usize) {
            tx.execute_batch(m)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn pg(&self) -> Option<MutexGuard<'_, postgres::PgConn>> {
        match &self.db {
            Db::Sqlite(_) => None,
            Db::Postgres(c, ..) => Some(lock(c)),
        }
    }

    fn pg_name(&self) -> PathBuf {
        match &self.db {
            Db::Postgres(_, url, _) => PathBuf::from(url),
            Db::Sqlite(_) => PathBuf::default(),
        }
    }

    /// The PostgreSQL schema version (0: no rekey schema yet).
    fn pg_version(&self) -> Result<i64, StoreError> {
        let c = self.pg().ok_or(StoreError::Unsupported("pg_version"))?;
        let t = c.autocommit();
        let exists: bool = t
            .query_row("SELECT to_regclass('schema_version') IS NOT NULL", p![])?
            .get(0)?;
        if !exists {
            return Ok(0);
        }
        Ok(t.query_opt("SELECT version FROM schema_version", p![])?
            .map(|r| r.get::<i64>(0))
            .transpose()?
            .unwrap_or(0))
    }

    /// Apply each pending PostgreSQL migration in its own transaction,
    /// serialised across nodes by `pg_advisory_xact_lock`.
    fn migrate_postgres(&self) -> Result<(), StoreError> {
        let name = self.pg_name();
        let c = self
            .pg()
            .ok_or(StoreError::Unsupported("migrate_postgres"))?;
        loop {
            let tx = c.begin()?;
            tx.execute(
                "SELECT pg_advisory_xact_lock(?1)",
                p![schema::PG_MIGRATION_LOCK],
            )?;
            let exists: bool = tx
                .query_row("SELECT to_regclass('schema_version') IS NOT NULL", p![])?
                .get(0)?;
            let v = if exists {
                tx.query_opt("SELECT version FROM schema_version", p![])?
                    .map(|r| r.get::<i64>(0))
                    .transpose()?
                    .unwrap_or(0)
            } else {
                // A database with tables but no schema_version belongs to
                // something else: adding ours to it would mix the two.
                let tables: Vec<String> = tx
                    .query_all(
                        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename",
                        p![],
                    )?
                    .iter()
                    .map(|r| r.get(0))
                    .collect::<Result<_, _>>()?;
                if !tables.is_empty() {
                    return Err(StoreError::Corrupt {
                        path: name,
                        reason: format!(
                            "the database has tables ({}) but no rekey schema version",
                            tables.join(", ")
                        ),
                    });
                }
                0
            };
            if v > schema::PG_VERSION {
                return Err(StoreError::NewerSchema {
                    path: name,
                    found: v,
                    supported: schema::PG_VERSION,
                });
            }
            if v == schema::PG_VERSION {
                tx.rollback()?;
                return Ok(());
            }
            c.batch(schema::PG_MIGRATIONS[v as usize])?;
            tx.execute("UPDATE schema_version SET version = ?1", p![v + 1])?;
            tx.commit()?;
        }
    }

    // ------------------------------------------------------------ transactions

    /// One write transaction: SQLite `BEGIN IMMEDIATE`; PostgreSQL `BEGIN`,
    /// then the fence check when a fence is set ([`Store::set_fence`]).
    /// Only for a transition that writes none of the tables a policy's
    /// ledger is read from (`keys`, `rotations`, `attempts`, `conditions`):
    /// check times, the outbox, deliveries, the lease. It leaves
    /// [`Store::ledger_generation`] alone. Every other write goes through
    /// [`Store::tx_for`], naming the policy whose rows it writes.
    fn tx_quiet<T>(
        &self,
        f: impl FnOnce(&dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &self.db {
            Db::Sqlite(c) => {
                let mut c = lock(c);
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let out = f(&*tx)?;
                tx.commit()?;
                Ok(out)
            }
            Db::Postgres(c, _, instance) => {
                let c = lock(c);
                let tx = c.begin()?;
                self.check_fence(&tx, instance)?;
                let out = f(&tx)?;
                tx.commit()?;
                Ok(out)
            }
        }
    }

    /// A PostgreSQL write that a standby may make (a recorded rotate
    /// request): never fenced. Counted as a ledger write.
    fn tx_unfenced<T>(
        &self,
        f: impl FnOnce(&dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let out = (|| {
            let c = self.pg().ok_or(StoreError::Unsupported("unfenced write"))?;
            let tx = c.begin()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })();
        self.bump_ledger_generation();
        out
    }

    /// [`Store::tx_quiet`] for a transition that writes ledger rows of one
    /// policy only, `owner` (or the policy that owns the rotation `owner` names):
    /// it moves [`Store::ledger_generation`] of that policy and of every
    /// other policy that holds a row of one of the owner's key ids, as
    /// their `claimed_elsewhere` reads the owner's keys
    /// ([`ledger_readers`]). Those policies are read inside the
    /// transaction, after its statements, so a key id the write adds
    /// counts. A transaction that fails before they are read moves every
    /// policy's generation.
    fn tx_for<T>(
        &self,
        owner: Owner<'_>,
        f: impl FnOnce(&dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut readers = None;
        let out = self.tx_quiet(|tx| {
            let out = f(tx)?;
            readers = ledger_readers(tx, owner)?;
            Ok(out)
        });
        match readers {
            Some(policies) => self.bump_policy_generations(&policies),
            None => self.bump_ledger_generation(),
        }
        out
    }

    /// The generation of `policy`'s ledger: it changes after every write
    /// transaction this store made that may have changed that ledger (the
    /// policy's `keys`, `rotations`, `attempts` or `conditions` rows, or
    /// the `keys` rows of another policy holding one of its key ids, which
    /// its `claimed_elsewhere` reads), committed or not, after every write
    /// that does not say whose ledger it changed, and whenever the fence
    /// changes. Bumped *after* the commit: a ledger read after reading the
    /// generation `g` is current for as long as the generation is still
    /// `g`. A write to a policy that shares no key id with `policy` leaves
    /// it alone (issue 13: one policy's first check no longer makes every
    /// other policy's status stale); so do writes of check times, events
    /// and deliveries. Only writes made through this `Store` are seen: it
    /// is exact for a SQLite state (one daemon per file, by its lock) and
    /// for the PostgreSQL leader (the only node that writes ledger rows,
    /// fenced; a new fence moves every generation). Generations of two
    /// stores never compare equal.
    pub fn ledger_generation(&self, policy: &str) -> LedgerGeneration {
        // Store-wide first: both only grow, and both are read before the
        // caller reads the ledger.
        let all = self.ledger_generation.load(Ordering::SeqCst);
        let own = lock(&self.policy_generations)
            .get(policy)
            .copied()
            .unwrap_or(0);
        LedgerGeneration {
            store: self.serial,
            all,
            policy: own,
        }
    }

    fn bump_ledger_generation(&self) {
        self.ledger_generation.fetch_add(1, Ordering::SeqCst);
    }

    fn bump_policy_generations(&self, policies: &[String]) {
        let mut gens = lock(&self.policy_generations);
        for p in policies {
            match gens.get_mut(p.as_str()) {
                Some(g) => *g += 1,
                None => {
                    gens.insert(p.clone(), 1);
                }
            }
        }
    }

    /// The SQL dialect of this store's backend.
    fn dialect(&self) -> &'static backend::Dialect {
        match &self.db {
            Db::Sqlite(_) => &backend::SQLITE,
            Db::Postgres(..) => &backend::POSTGRES,
        }
    }

    /// Reads: the SQLite connection as it is (no transaction, as before),
    /// PostgreSQL statements in autocommit.
    fn read<T>(&self, f: impl FnOnce(&dyn Tx) -> Result<T, StoreError>) -> Result<T, StoreError> {
        match &self.db {
            Db::Sqlite(c) => f(&*lock(c)),
            Db::Postgres(c, ..) => f(&lock(c).autocommit()),
        }
    }

    /// The first statement of every PostgreSQL write transaction once a
    /// fence is set: lock the lease row `FOR SHARE` (a new leader's
    /// acquisition waits for this transaction, and this one sees any
    /// acquisition committed before it) and compare fence and holder.
    fn check_fence(&self, tx: &postgres::PgTx<'_>, instance: &str) -> Result<(), StoreError> {
        let Some(expected) = *lock(&self.fence) else {
            return Ok(());
        };
        #[cfg(feature = "ha-test-unfenced")]
        if !self.fence_checks.load(Ordering::SeqCst) {
            return Ok(());
        }
        let row = tx.query_opt(
            "SELECT fence, holder FROM lease WHERE name = 'leader' FOR SHARE",
            p![],
        )?;
        let (found, holder): (i64, Option<String>) = match row {
            Some(r) => (r.get(0)?, r.get(1)?),
            None => (0, None),
        };
        if found != expected || holder.as_deref() != Some(instance) {
            self.fenced_commits.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Fenced {
                expected,
                found,
                holder: holder.map(|h| crate::logging::escape(&h).into_owned()),
            });
        }
        Ok(())
    }

    /// Fence every later write transaction with `fence` (PostgreSQL; call it
    /// right after [`Store::lease_acquire`] succeeds), or stop fencing with
    /// `None`. From then on a transaction that finds another fence or
    /// holder in the lease row rolls back with [`StoreError::Fenced`]. A
    /// SQLite store has one writer by its file lock and ignores it.
    pub fn set_fence(&self, fence: Option<i64>) {
        *lock(&self.fence) = fence;
        // Another leader may have written between our terms.
        self.bump_ledger_generation();
    }

    /// The fence set by [`Store::set_fence`].
    pub fn fence(&self) -> Option<i64> {
        *lock(&self.fence)
    }

    /// Write transactions refused with [`StoreError::Fenced`] so far (the
    /// metric `rekey_fenced_commits_total`).
    pub fn fenced_commits(&self) -> u64 {
        self.fenced_commits.load(Ordering::SeqCst)
    }

    /// Test builds only (cargo feature `ha-test-unfenced`, never in a
    /// release): switch the fence check off (`false`) or on, to prove the
    /// HA tests detect a double writer when nothing prevents it.
    #[cfg(feature = "ha-test-unfenced")]
    pub fn set_fence_checks(&self, on: bool) {
        self.fence_checks.store(on, Ordering::SeqCst);
    }

    // ---------------------------------------------------------------- events

    /// Append a standalone event (e.g. `key.expiring`) to the outbox.
    pub fn emit(&self, ev: &Event) -> Result<(), StoreError> {
        self.tx_quiet(|tx| insert_event(tx, ev))
    }

    /// Events after `seq`, oldest first.
    pub fn events_after(&self, seq: i64, limit: usize) -> Result<Vec<EventRow>, StoreError> {
        self.read(|tx| {
            tx.query_all(
                "SELECT seq, id, type, at, policy, rotation_id, data FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                p![seq, limit as i64],
            )?
            .iter()
            .map(|r| {
                Ok(EventRow {
                    seq: r.get(0)?,
                    id: r.get(1)?,
                    kind: r.get(2)?,
                    at: opt_ts(r.get(3)?).unwrap_or_default(),
                    policy: r.get(4)?,
                    rotation_id: r.get(5)?,
                    data: serde_json::from_str(&r.get::<String>(6)?)
                        .unwrap_or(serde_json::Value::Null),
                })
            })
            .collect()
        })
    }

    pub fn last_event_seq(&self) -> Result<i64, StoreError> {
        self.read(|tx| {
            tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", p![])?
                .get(0)
        })
    }

    /// The delivery cursor of a notification target, registering it (at the
    /// current end of the outbox) the first time it is seen.
    pub fn delivery(&self, target: &str) -> Result<DeliveryRow, StoreError> {
        self.tx_quiet(|tx| {
            tx.execute(
                "INSERT INTO deliveries (target, cursor) VALUES (?1, (SELECT COALESCE(MAX(seq), 0) FROM events))
                 ON CONFLICT DO NOTHING",
                p![target],
            )?;
            let r = tx.query_row(
                "SELECT target, cursor, attempts, next_attempt_at, last_error FROM deliveries WHERE target = ?1",
                p![target],
            )?;
            Ok(DeliveryRow {
                target: r.get(0)?,
                cursor: r.get(1)?,
                attempts: r.get(2)?,
                next_attempt_at: opt_ts(r.get(3)?),
                last_error: r.get(4)?,
            })
        })
    }

    /// The event at `seq` was delivered to `target` (or filtered out).
    pub fn delivery_done(&self, target: &str, seq: i64) -> Result<(), StoreError> {
        self.tx_quiet(|tx| {
            tx.execute(
                &format!(
                    "UPDATE deliveries SET cursor = {}(cursor, ?2), attempts = 0, next_attempt_at = NULL, last_error = NULL WHERE target = ?1",
                    tx.dialect().greatest
                ),
                p![target, seq],
            )?;
            Ok(())
        })
    }

    /// Delivery of the event after the cursor failed; try again at `next`.
    pub fn delivery_failed(
        &self,
        target: &str,
        error: &str,
        next: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.tx_quiet(|tx| {
            tx.execute(
                "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = ?2, last_error = ?3 WHERE target = ?1",
                p![target, ts(next), error],
            )?;
            Ok(())
        })
    }

    /// Give up on one event for one target: record it and move on.
    pub fn dead_letter(
        &self,
        target: &str,
        ev: &EventRow,
        error: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.tx_quiet(|tx| {
            tx.execute(
                "INSERT INTO dead_letters (target, event_seq, event_id, type, at, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (target, event_seq) DO UPDATE SET event_id = excluded.event_id, type = excluded.type,
                    at = excluded.at, error = excluded.error",
                p![target, ev.seq, ev.id, ev.kind, ts(at), error],
            )?;
            tx.execute(
                &format!(
                    "UPDATE deliveries SET cursor = {}(cursor, ?2), attempts = 0, next_attempt_at = NULL, last_error = NULL WHERE target = ?1",
                    tx.dialect().greatest
                ),
                p![target, ev.seq],
            )?;
            Ok(())
        })
    }

    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.read(|tx| {
            tx.query_all(
                "SELECT target, event_seq, event_id, type, at, error FROM dead_letters ORDER BY at",
                p![],
            )?
            .iter()
            .map(|r| {
                Ok(DeadLetter {
                    target: r.get(0)?,
                    event_seq: r.get(1)?,
                    event_id: r.get(2)?,
                    kind: r.get(3)?,
                    at: opt_ts(r.get(4)?).unwrap_or_default(),
                    error: r.get(5)?,
                })
            })
            .collect()
        })
    }

    /// Per notification target: events not yet delivered (the outbox
    /// depth) and dead letters. Read-only; a target that never ran has no
    /// row yet.
    pub fn outbox_state(&self) -> Result<Vec<(String, i64, i64)>, StoreError> {
        self.read(|tx| {
            tx.query_all(
                &format!(
                    "SELECT d.target,
                    {}(0, (SELECT COALESCE(MAX(seq), 0) FROM events) - d.cursor),
                    (SELECT COUNT(*) FROM dead_letters x WHERE x.target = d.target)
             FROM deliveries d ORDER BY d.target",
                    tx.dialect().greatest
                ),
                p![],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .collect()
        })
    }

    /// Record that `key.expiring` for this threshold went out (same
    /// transaction as the event). Returns false if it already had.
    pub fn note_expiring(
        &self,
        policy: &str,
        key_id: &str,
        threshold: &str,
        ev: &Event,
    ) -> Result<bool, StoreError> {
        self.tx_quiet(|tx| {
            let n = tx.execute(
                "INSERT INTO expiring_notices (policy, key_id, threshold, at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO NOTHING",
                p![policy, key_id, threshold, ts(ev.at)],
            )?;
            if n == 1 {
                insert_event(tx, ev)?;
            }
            Ok(n == 1)
        })
    }

    // ---------------------------------------------------------- policy state

    pub fn policy_state(&self, policy: &str) -> Result<Option<PolicyStateRow>, StoreError> {
        self.read(|tx| {
            tx.query_opt(
                "SELECT policy, last_check_at, next_check_at, health, last_error, decisions FROM policy_state WHERE policy = ?1",
                p![policy],
            )?
            .as_ref()
            .map(policy_state_row)
            .transpose()
        })
    }

    pub fn policy_states(&self) -> Result<Vec<PolicyStateRow>, StoreError> {
        self.read(|tx| {
            tx.query_all("SELECT policy, last_check_at, next_check_at, health, last_error, decisions FROM policy_state", p![])?
                .iter()
                .map(policy_state_row)
                .collect()
        })
    }

    /// When a policy's next scheduled check is due (survives restarts).
    pub fn set_next_check(&self, policy: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.set_next_checks(&[(policy, at)])
    }

    /// [`Store::set_next_check`] of several policies in one transaction
    /// (the daemon's after a group of checks); a ledger-neutral write.
    pub fn set_next_checks(&self, nexts: &[(&str, DateTime<Utc>)]) -> Result<(), StoreError> {
        if nexts.is_empty() {
            return Ok(());
        }
        self.tx_quiet(|tx| {
            for (policy, at) in nexts {
                tx.execute(
                    "INSERT INTO policy_state (policy, next_check_at) VALUES (?1, ?2)
                     ON CONFLICT (policy) DO UPDATE SET next_check_at = excluded.next_check_at",
                    p![*policy, ts(*at)],
                )?;
            }
            Ok(())
        })
    }

    /// Record one completed check: the keys it saw, lineages, health and
    /// decisions. Keys of the policy not listed any more become `gone`.
    pub fn record_check(&self, check: &CheckRecord) -> Result<(), StoreError> {
        self.tx_for(Owner::Policy(&check.policy), |tx| {
            let at = ts(check.at);
            for k in &check.keys {
                tx.execute(
                    "INSERT INTO keys (policy, key_id, name, lineage, provider, created_at, expires_at, first_seen_at, last_seen_at, origin, rotation_id, state)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10, 'live')
                     ON CONFLICT (policy, key_id) DO UPDATE SET
                        name = excluded.name, created_at = excluded.created_at, expires_at = excluded.expires_at,
                        last_seen_at = excluded.last_seen_at, gone_at = NULL,
                        state = CASE WHEN keys.state = 'gone' THEN 'live' ELSE keys.state END",
                    p![
                        check.policy,
                        k.key_id,
                        k.name,
                        k.lineage,
                        check.provider,
                        k.created_at.map(ts),
                        k.expires_at.map(ts),
                        at,
                        k.origin,
                        k.rotation_id,
                    ],
                )?;
            }
            tx.execute(
                "UPDATE keys SET unknown_time = NULL WHERE policy = ?1 AND unknown_time IS NOT NULL",
                p![check.policy],
            )?;
            for k in check.keys.iter().filter(|k| k.unknown_time.is_some()) {
                tx.execute(
                    "UPDATE keys SET unknown_time = ?3 WHERE policy = ?1 AND key_id = ?2",
                    p![check.policy, k.key_id, k.unknown_time],
                )?;
            }
            if check.complete_listing {
                tx.execute(
                    "UPDATE keys SET state = 'gone', gone_at = ?2 WHERE policy = ?1 AND state IN ('live', 'retiring') AND last_seen_at < ?2",
                    p![check.policy, at],
                )?;
            }
            upsert_policy_state(tx, check)
        })
    }

    /// Record checks whose listings change no key row (see
    /// [`check_changes_keys`]), all in one transaction: only each policy's
    /// `policy_state` row — check time, next check, health, error,
    /// decisions — instead of one upsert per listed key (issue 13: a check
    /// that changes nothing writes nothing else, and a group of checks
    /// planned from one walk commits once). Committed without waiting for
    /// the disk (`synchronous = NORMAL` for this one transaction): a power
    /// loss can forget only these rows' latest check times and decisions,
    /// which the next checks write again; the next durable commit flushes
    /// them with its own. Writes no ledger table, so it leaves
    /// [`Store::ledger_generation`] alone. `checks`: a slice, or any
    /// selection of records by reference.
    pub fn record_check_times<'a>(
        &self,
        checks: impl IntoIterator<Item = &'a CheckRecord>,
    ) -> Result<(), StoreError> {
        let checks: Vec<&CheckRecord> = checks.into_iter().collect();
        if checks.is_empty() {
            return Ok(());
        }
        let write = |tx: &dyn Tx| -> Result<(), StoreError> {
            for check in &checks {
                upsert_policy_state(tx, check)?;
            }
            Ok(())
        };
        match &self.db {
            // The connection stays locked from one pragma to the other, so
            // no other transition commits without waiting for the disk.
            Db::Sqlite(c) => {
                let mut c = lock(c);
                c.pragma_update(None, "synchronous", "NORMAL")?;
                let r = (|| -> Result<(), StoreError> {
                    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    write(&*tx)?;
                    tx.commit()?;
                    Ok(())
                })();
                c.pragma_update(None, "synchronous", "FULL")?;
                r
            }
            // Fenced like every other write; PostgreSQL commits durably.
            Db::Postgres(..) => self.tx_quiet(write),
        }
    }

    /// At start (after the wall clock ran ahead, since corrected): bring
    /// every key row's `last_seen_at` and `gone_at` later than `now` back
    /// to `now`. A `gone_at` in the future would keep the key from being
    /// gone for good ([`crate::rotation::policy::PUBLISHED_KEY_GONE_AFTER`])
    /// until the clock caught up with it, and a `last_seen_at` in the
    /// future would keep complete listings from marking the key `gone` at
    /// all. On PostgreSQL, `now` is no earlier than the database's clock:
    /// a node whose own clock runs slow must not date other nodes' stamps
    /// back (which would make a key gone for good early). Moves the ledger
    /// generation of each policy written. Returns how many rows changed.
    pub fn clamp_key_times(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let now = if self.is_postgres() {
            now.max(self.db_now()?)
        } else {
            now
        };
        let limit = ts(now);
        let policies: Vec<String> = self.read(|tx| {
            tx.query_all(
                "SELECT DISTINCT policy FROM keys WHERE last_seen_at > ?1 OR gone_at > ?1",
                p![limit],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect()
        })?;
        let mut moved = 0;
        for policy in &policies {
            moved += self.tx_for(Owner::Policy(policy), |tx| {
                Ok(tx.execute(
                    "UPDATE keys SET last_seen_at = ?2 WHERE policy = ?1 AND last_seen_at > ?2",
                    p![policy, limit],
                )? + tx.execute(
                    "UPDATE keys SET gone_at = ?2 WHERE policy = ?1 AND gone_at > ?2",
                    p![policy, limit],
                )?)
            })?;
        }
        Ok(moved)
    }

    /// Keys a policy knows (any state), for lineage membership. A `gone`
    /// key is gone since the later of `gone_at` and `last_seen_at`: never
    /// since before a listing last showed it (a `gone_at` older than that
    /// is stale: left by a writer that predates the column, or stamped
    /// from the first delete listing that missed a key a later check
    /// listed); `last_seen_at` alone for rows marked before schema v5.
    pub fn known_keys(&self, policy: &str) -> Result<Vec<KnownKey>, StoreError> {
        self.read(|tx| {
            tx.query_all(
                "SELECT key_id, name, lineage, origin, rotation_id, state, created_at, expires_at, unknown_time,
                    CASE WHEN state = 'gone' THEN CASE WHEN gone_at > last_seen_at THEN gone_at ELSE last_seen_at END END
                 FROM keys WHERE policy = ?1",
                p![policy],
            )?
            .iter()
            .map(|r| {
                Ok(KnownKey {
                    key_id: r.get(0)?,
                    name: r.get(1)?,
                    lineage: r.get(2)?,
                    origin: r.get(3)?,
                    rotation_id: r.get(4)?,
                    state: r.get(5)?,
                    created_at: opt_ts(r.get(6)?),
                    expires_at: opt_ts(r.get(7)?),
                    unknown_time: r.get(8)?,
                    gone_since: opt_ts(r.get(9)?),
                })
            })
            .collect()
        })
    }

    // ------------------------------------------------------------- rotations

    /// Start a rotation of one lineage. `Ok(None)` when that lineage already
    /// has an active rotation (at most one at a time, enforced by an index).
    pub fn begin_rotation(&self, r: &NewRotation) -> Result<Option<String>, StoreError> {
        self.tx_for(Owner::Policy(&r.policy), |tx| {
            let Some(id) = new_rotation_id(tx, &r.policy, &r.lineage)? else {
                return Ok(None);
            };
            tx.execute(
                "INSERT INTO rotations (id, policy, lineage, provider, state, reason, message, trigger, revoke_old_immediately,
                    old_key_id, old_key_name, sinks, grace_seconds, started_at)
                 VALUES (?1, ?2, ?3, ?4, 'planned', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                p![
                    id,
                    r.policy,
                    r.lineage,
                    r.provider,
                    r.reason,
                    r.message,
                    r.trigger,
                    r.revoke_old_immediately,
                    r.old_key_id,
                    r.old_key_name,
                    serde_json::to_string(&r.sinks).unwrap_or_else(|_| "[]".into()),
                    r.grace.as_secs() as i64,
                    ts(r.at),
                ],
            )?;
            for s in &r.sinks {
                tx.execute(
                    "INSERT INTO sink_acks (rotation_id, sink, state) VALUES (?1, ?2, 'pending')",
                    p![id, s],
                )?;
            }
            insert_event(
                tx,
                &Event::new(
                    "rotation.started",
                    r.at,
                    Some(&r.policy),
                    Some(&id),
                    serde_json::json!({
                        "policy": r.policy, "lineage": r.lineage, "provider": r.provider, "rotation_id": id,
                        "reason": r.reason, "message": r.message, "trigger": r.trigger,
                        "old_key_id": r.old_key_id, "old_key_name": r.old_key_name,
                    }),
                ),
            )?;
            Ok(Some(id))
        })
    }

    /// Commit the next attempt's unique name *before* calling create.
    /// Returns the attempt number.
    pub fn start_attempt(
        &self,
        id: &str,
        name_for: impl FnOnce(u32) -> String,
        at: DateTime<Utc>,
    ) -> Result<(u32, String), StoreError> {
        self.tx_for(Owner::Rotation(id), |tx| {
            let r = tx.query_row("SELECT state, attempt FROM rotations WHERE id = ?1", p![id])?;
            let (state, attempt): (String, u32) = (r.get(0)?, r.get(1)?);
            if state != "planned" {
                return Err(StoreError::Conflict(format!("rotation {id} is {state}, not planned")));
            }
            // An `abandoned` attempt may stay unresolved (watched for) while
            // the next one runs: the engine lists for it before each create.
            let open: Option<u32> = tx
                .query_opt(
                    "SELECT attempt FROM attempts WHERE rotation_id = ?1 AND state = 'requested'",
                    p![id],
                )?
                .map(|r| r.get(0))
                .transpose()?;
            if let Some(a) = open {
                return Err(StoreError::Conflict(format!("rotation {id} attempt {a} is unresolved")));
            }
            let next = attempt + 1;
            let name = name_for(next);
            tx.execute(
                "INSERT INTO attempts (rotation_id, attempt, name, state, started_at) VALUES (?1, ?2, ?3, 'requested', ?4)",
                p![id, next, name, ts(at)],
            )?;
            tx.execute("UPDATE rotations SET attempt = ?2, new_key_name = ?3 WHERE id = ?1", p![id, next, name])?;
            Ok((next, name))
        })
    }

    /// The provider returned the new key: seal its secret, move to `created`.
    pub fn record_created(
        &self,
        id: &str,
        attempt: u32,
        key: &CreatedRecord,
        sealed: &[u8],
        fingerprint: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.tx_for(Owner::Rotation(id), |tx| {
            let n = tx.execute(
                "UPDATE rotations SET state = 'created', new_key_id = ?3, new_key_name = ?4, new_key_created_at = ?5,
                    new_key_expires_at = ?6, sealed_secret = ?7, fingerprint = ?8, created_at = ?9,
                    failures = 0, error = NULL, error_class = NULL, next_attempt_at = NULL
                 WHERE id = ?1 AND state = 'planned' AND attempt = ?2
                   AND EXISTS (SELECT 1 FROM attempts WHERE rotation_id = ?1 AND attempt = ?2 AND state = 'requested')",
                p![id, attempt, key.key_id, key.name, key.created_at.map(ts), key.expires_at.map(ts), sealed, fingerprint, ts(at)],
            )?;
            if n != 1 {
                return Err(StoreError::Conflict(format!("rotation {id} attempt {attempt} is not the open create")));
            }
            tx.execute(
                "UPDATE attempts SET state = 'created', finished_at = ?3 WHERE rotation_id = ?1 AND attempt = ?2",
                p![id, attempt, ts(at)],
            )?;
            let (policy, lineage, provider) = rotation_owner(tx, id)?;
            if let Some(key_id) = &key.key_id {
                upsert_created_key(tx, &policy, &provider, &lineage, id, key_id, key, at)?;
            }
            insert_event(
                tx,
                &Event::new(
                    "key.created",
                    at,
                    Some(&policy),
                    Some(id),
                    serde_json::json!({
                        "policy": policy, "lineage": lineage, "provider": provider, "rotation_id": id,
                        "key_id": key.key_id, "key_name": key.name, "created_at": key.created_at,
                        "expires_at": key.expires_at, "fingerprint": fingerprint,
                    }),
                ),
            )?;
            Ok(())
        })
    }

    /// The new key's id, found after create (by listing and name).
    pub fn record_new_key_id(
        &self,
        id: &str,
        key: &CreatedRecord,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.tx_for(Owner::Rotation(id), |tx| {
            let key_id = key.key_id.as_deref().ok_or_else(|| StoreError::Conflict("no key id".into()))?;
            tx.execute(
                "UPDATE rotations SET new_key_id = ?2, new_key_created_at = COALESCE(?3, new_key_created_at),
                    new_key_expires_at = COALESCE(?4, new_key_expires_at) WHERE id = ?1",
                p![id, key_id, key.created_at.map(ts), key.expires_at.map(ts)],
            )?;
            let (policy, lineage, provider) = rotation_owner(tx, id)?;
            upsert_created_key(tx, &policy, &provider, &lineage, id, key_id, key, at)?;
            Ok(())
        })
    }

    /// A create attempt whose outcome is unknown (crash, timeout) or failed.
    /// `cleaned` = we know no key of that name exists (any found was deleted).
    pub fn resolve_attempt(
        &self,
        id: &str,
        attempt: u32,
        cleaned: bool,
        error: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.tx_for(Owner::Rotation(id), |tx| {
            tx.execute(
                "UPDATE attempts SET state = ?3, finished_at = ?4, error = COALESCE(?5, error)
                 WHERE rotation_id = ?1 AND attempt = ?2 AND state IN ('requested', 'abandoned')",
                p![
                    id,
                    attempt,
                    if cleaned { "cleaned" } else { "abandoned" },
                    ts(at),
                    error
                ],
            )?;
            Ok(())
        })
    }

    /// A step failed; it will be retried at `next_attempt_at` (or the rotation
    /// fails when `give_up`). Returns the failure count.
    pub fn record_step_failure(
        &self,
        id: &str,
        error: &str,
        class: &str,
        next_attempt_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> Result<u32, StoreError> {
        self.tx_for(Owner::Rotation(id), |tx| {
            tx.execute(
                "UPDATE rotations SET failures = failures + 1, error = ?2, error_class = ?3, next_attempt_at = ?4 WHERE id = ?1",
                p![id, error, class, next_attempt_at.map(ts)],
            )?;
            let _ = at;
            tx.query_row("SELECT failures FROM rotations WHERE id = ?1", p![id])?.get(0)
        })
    }

    /// A step must wait (the provider throttled it) without counting as a
    /// failure: `failures` is left alone, so `max_attempts` is not spent.
    pub fn record_step_wait(
        &self,
        id: &str,
        error: &str,
        class: &str,
        next_attempt_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        self.tx_for(Owner::Rotation(id), |tx| {
            tx.execute(
                "UPDATE rotations SET error = ?2, error_class = ?3, next_attempt_at = ?4 WHERE id = ?1",
                p![id, error, class, next_attempt_at.map(ts)],
            )?;
            Ok(())
        })
    }

    /// Give up: the old key stays, `rotation.failed` goes out.
    pub fn fail_rotation(
        &self,
        id: &str,
        error: &str,
        class: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let wiped = self.tx_for(Owner::Rotation(id), |tx| {
            let row = rotation_row_tx(tx, id)?.ok_or_else(|| StoreError::Conflict(format!("no rotation {id}")))?;
            if row.state.is_terminal() {
                return Err(StoreError::Conflict(format!("rotation {id} already {}", row.state.as_str())));
            }
            // Once published, the new key is in use and the old one is being
            // retired: that never "fails" (it is retried until it succeeds).
            if matches!(row.state, RotationState::Published | RotationState::Retiring) {
                return Err(StoreError::Conflict(format!(
                    "rotation {id} is {}: its new key is published, so it cannot fail; retirement is retried",
                    row.state.as_str()
                )));
            }
            // A key already created stays sealed: the next check resumes
            // publishing it (revive_rotation) instead of losing it.
            tx.execute(
                "UPDATE rotations SET state = 'failed', error = ?2, error_class = ?3, finished_at = ?4, next_attempt_at = NULL,
                    sealed_secret = CASE WHEN state = 'created' THEN sealed_secret ELSE NULL END
                 WHERE id = ?1",
                p![id, error, class, ts(at)],
            )?;
            insert_event(
                tx,
                &Event::new(
                    "rotation.failed",
                    at,
                    Some(&row.policy),
                    Some(id),
                    serde_json::json!({
                        "policy": row.policy, "lineage": row.lineage, "provider": row.provider, "rotation_id": id,
                        "state_at_failure": row.state.as_str(), "error": error, "error_class": class,
                        "old_key_id": row.old_key_id, "new_key_id": row.new_key_id, "failures": row.failures + 1,
                    }),
                ),
            )?;
            Ok(())
        });
        if wiped.is_ok() {
            self.checkpoint_after_wipe();
        }
        wiped
    }

    /// A sink acknowledged the new key. `fingerprint` is what its read-back
    /// must return before the old key may be deleted.
    pub fn record_sink_ack(
        &self,
        id: &str,
        sink: &str,
        detail: Option<&str>,
        fingerprint: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.tx_for(Owner::Rotation(id), |tx| {
            expect_state(tx, id, RotationState::Created)?;
            let n = tx.execute(
                "UPDATE sink_acks SET state = 'acked', attempts = attempts + 1, acked_at = ?3, detail = ?4, fingerprint = ?5,
                    last_error = NULL, next_attempt_at = NULL
                 WHERE rotation_id = ?1 AND sink = ?2 AND state != 'acked'",
                p![id, sink, ts(at), detail, fingerprint],
            )?;
            if n != 1 {
                return Err(unacked_sink_conflict(id, sink));
            }
            Ok(())
        })
    }

    /// Resume a rotation that failed after its key was created: back to
    /// `created` with a fresh failure budget. `Ok(false)` when it cannot be
    /// (another rotation of the lineage is active, or the key is not sealed).
    pub fn revive_rotation(
        &self,
        id: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.tx_for(Owner::Rotation(id), |tx| {
            let row = rotation_row_tx(tx, id)?.ok_or_else(|| StoreError::Conflict(format!("no rotation {id}")))?;
            let active: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM rotations WHERE policy = ?1 AND lineage = ?2 AND state NOT IN ('completed', 'failed'))",
                    p![row.policy, row.lineage],
                )?
                .get(0)?;
            let n = if active {
                0
            } else {
                tx.execute(
                    "UPDATE rotations SET state = 'created', failures = 0, next_attempt_at = NULL, finished_at = NULL
                     WHERE id = ?1 AND state = 'failed' AND sealed_secret IS NOT NULL AND created_at IS NOT NULL",
                    p![id],
                )?
            };
            if n == 1 {
                tx.execute(
                    "UPDATE sink_acks SET next_attempt_at = NULL WHERE rotation_id = ?1 AND state != 'acked'",
                    p![id],
                )?;
                insert_event(
                    tx,
                    &Event::new(
                        "rotation.started",
                        at,
                        Some(&row.policy),
                        Some(id),
                        serde_json::json!({
                            "policy": row.policy, "lineage": row.lineage, "provider": row.provider, "rotation_id": id,
                            "reason": reason, "message": "resuming a rotation that failed after its new key was created",
                            "trigger": "resume", "old_key_id": row.old_key_id, "old_key_name": row.old_key_name,
                        }),
                    ),
                )?;
            }
            Ok(n == 1)
        })
    }

    pub fn record_sink_failure(
        &self,
        id: &str,
        sink: &str,
        error: &str,
        next: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        self.tx_for(Owner::Rotation(id), |tx| {
            expect_state(tx, id, RotationState::Created)?;
            // An acknowledged sink stays acknowledged: a late failure report
            // must not hold back (or undo) the publish.
            let n = tx.execute(
                "UPDATE sink_acks SET state = 'failed', attempts = attempts + 1, last_error = ?3, next_attempt_at = ?4
                 WHERE rotation_id = ?1 AND sink = ?2 AND state != 'acked'",
                p![id, sink, error, next.map(ts)],
            )?;
            if n != 1 {
                return Err(unacked_sink_conflict(id, sink));
            }
            Ok(())
        })
    }

    pub fn sink_acks(&self, id: &str) -> Result<Vec<SinkAckRow>, StoreError> {
        self.read(|tx| {
            tx.query_all(
                "SELECT sink, state, attempts, next_attempt_at, last_error, acked_at, detail, fingerprint FROM sink_acks WHERE rotation_id = ?1 ORDER BY sink",
                p![id],
            )?
            .iter()
            .map(|r| {
                Ok(SinkAckRow {
                    sink: r.get(0)?,
                    state: r.get(1)?,
                    attempts: r.get(2)?,
                    next_attempt_at: opt_ts(r.get(3)?),
                    last_error: r.get(4)?,
                    acked_at: opt_ts(r.get(5)?),
                    detail: r.get(6)?,
                    fingerprint: r.get(7)?,
                })
            })
            .collect()
        })
    }

    pub fn attempts(&self, id: &str) -> Result<Vec<AttemptRow>, StoreError> {
        self.read(|tx| {
            tx.query_all("SELECT attempt, name, state, started_at, finished_at, error FROM attempts WHERE rotation_id = ?1 ORDER BY attempt", p![id])?
                .iter()
                .map(|r| attempt_row(r, 0))
                .collect()
        })
    }

    /// Every sink acknowledged: wipe the sealed secret, move to `published`,
    /// and schedule the old key's retirement at `retire_at` (→ `retiring`,
    /// required when there is an old key), or complete at once when there
    /// is none.
    pub fn record_published(
        &self,
        id: &str,
        at: DateTime<Utc>,
        retire_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let wiped = self.tx_for(Owner::Rotation(id), |tx| {
            let row = rotation_row_tx(tx, id)?.ok_or_else(|| StoreError::Conflict(format!("no rotation {id}")))?;
            if row.state != RotationState::Created {
                return Err(StoreError::Conflict(format!("rotation {id} is {}, not created", row.state.as_str())));
            }
            let pending: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM sink_acks WHERE rotation_id = ?1 AND state != 'acked'",
                    p![id],
                )?
                .get(0)?;
            if pending > 0 {
                return Err(StoreError::Conflict(format!("rotation {id} has {pending} sink(s) without acknowledgement")));
            }
            if row.old_key_id.is_some() && retire_at.is_none() {
                // Completing now would leave the old key live for ever.
                return Err(StoreError::Conflict(format!("rotation {id} replaces a key and needs a time to retire it")));
            }
            tx.execute(
                "UPDATE rotations SET state = 'published', published_at = ?2, sealed_secret = NULL, failures = 0, error = NULL, error_class = NULL WHERE id = ?1",
                p![id, ts(at)],
            )?;
            insert_event(
                tx,
                &Event::new(
                    "key.published",
                    at,
                    Some(&row.policy),
                    Some(id),
                    serde_json::json!({
                        "policy": row.policy, "lineage": row.lineage, "provider": row.provider, "rotation_id": id,
                        "key_id": row.new_key_id, "key_name": row.new_key_name, "fingerprint": row.fingerprint,
                        "sinks": row.sinks, "expires_at": row.new_key_expires_at,
                    }),
                ),
            )?;
            match (&row.old_key_id, retire_at) {
                (Some(old), Some(when)) => {
                    tx.execute(
                        "UPDATE rotations SET state = 'retiring', retire_at = ?2, next_attempt_at = ?2 WHERE id = ?1",
                        p![id, ts(when)],
                    )?;
                    tx.execute(
                        "UPDATE keys SET state = 'retiring' WHERE policy = ?1 AND key_id = ?2 AND state = 'live'",
                        p![row.policy, old],
                    )?;
                }
                _ => complete_tx(tx, &row, "no_old_key", at)?,
            }
            Ok(())
        });
        if wiped.is_ok() {
            self.checkpoint_after_wipe();
        }
        wiped
    }

    /// Whether a retiring rotation's old key may be deleted *by the
    /// database's clock*: `None` when its grace (`retire_at`) and retry
    /// deadline (`next_attempt_at`) have passed, else how long is left.
    /// PostgreSQL compares with the server's `now()`, so a node whose
    /// clock runs fast cannot delete early after a takeover (DESIGN §8).
    /// SQLite has one node and one clock, already compared by the engine:
    /// always `None`. A missing rotation is [`StoreError::Conflict`].
    pub fn retire_wait(&self, id: &str) -> Result<Option<Duration>, StoreError> {
        if !self.is_postgres() {
            return Ok(None);
        }
        self.read(|tx| {
            let r = tx
                .query_opt(
                    "SELECT CAST(EXTRACT(EPOCH FROM (GREATEST(CAST(retire_at AS timestamptz),
                            COALESCE(CAST(next_attempt_at AS timestamptz), CAST(retire_at AS timestamptz))) - now())) * 1000 AS BIGINT)
                     FROM rotations WHERE id = ?1",
                    p![id],
                )?
                .ok_or_else(|| StoreError::Conflict(format!("no rotation {id}")))?;
            let ms: Option<i64> = r.get(0)?;
            Ok(match ms {
                Some(ms) if ms > 0 => Some(Duration::from_millis(ms as u64)),
                _ => None,
            })
        })
    }

    /// The old key is gone (deleted, or 404 on delete): complete.
    pub fn record_old_key_deleted(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.finish_retire(id, "deleted", at)
    }

    /// The provider cannot delete: the old key is left `retired` for a human.
    pub fn record_old_key_retired(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.finish_retire(id, "retired", at)
    }

    fn finish_retire(&self, id: &str, outcome: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.tx_for(Owner::Rotation(id), |tx| {
            let row = rotation_row_tx(tx, id)?.ok_or_else(|| StoreError::Conflict(format!("no rotation {id}")))?;
            if row.state != RotationState::Retiring {
                return Err(StoreError::Conflict(format!("rotation {id} is {}, not retiring", row.state.as_str())));
            }
            if let Some(old) = &row.old_key_id {
                let key_state = if outcome == "deleted" { "deleted" } else { "retired" };
                tx.execute(
                    "UPDATE keys SET state = ?3 WHERE policy = ?1 AND key_id = ?2",
                    p![row.policy, old, key_state],
                )?;
                let kind = if outcome == "deleted" { "key.deleted" } else { "key.retired" };
                insert_event(
                    tx,
                    &Event::new(
                        kind,
                        at,
                        Some(&row.policy),
                        Some(id),
                        serde_json::json!({
                            "policy": row.policy, "lineage": row.lineage, "provider": row.provider, "rotation_id": id,
                            "key_id": old, "key_name": row.old_key_name, "replaced_by": row.new_key_id,
                        }),
                    ),
                )?;
            }
            complete_tx(tx, &row, outcome, at)
        })
    }

    /// Bring a retiring rotation's deadline forward (leaked key: revoke now).
    pub fn set_retire_at(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.tx_for(Owner::Rotation(id), |tx| {
            tx.execute(
                "UPDATE rotations SET retire_at = ?2, next_attempt_at = ?2, revoke_old_immediately = 1 WHERE id = ?1 AND state IN ('retiring', 'published')",
                p![id, ts(at)],
            )?;
            Ok(())
        })
    }

    /// `rekey retry`: the rotation and its sinks act at once (the failure
    /// count is kept; the grace deadline is not touched).
    pub fn retry_now(&self, id: &str) -> Result<(), StoreError> {
        self.tx_for(Owner::Rotation(id), |tx| {
            tx.execute(
                "UPDATE rotations SET next_attempt_at = NULL WHERE id = ?1 AND state IN ('planned', 'created')",
                p![id],
            )?;
            tx.execute(
                "UPDATE rotations SET next_attempt_at = retire_at WHERE id = ?1 AND state IN ('published', 'retiring')",
                p![id],
            )?;
            tx.execute(
                "UPDATE sink_acks SET next_attempt_at = NULL WHERE rotation_id = ?1 AND state != 'acked'",
                p![id],
            )?;
            Ok(())
        })
    }

    /// Push the next action of a rotation to `at` without counting a failure.
    pub fn set_next_attempt(&self, id: &str, at: Option<DateTime<Utc>>) -> Result<(), StoreError> {
        self.tx_for(Owner::Rotation(id), |tx| {
            tx.execute(
                "UPDATE rotations SET next_attempt_at = ?2 WHERE id = ?1",
                p![id, at.map(ts)],
            )?;
            Ok(())
        })
    }

    /// The provider's after-create step (bind) finished for this rotation's
    /// next key: commit it, so no later wake runs it again.
    pub fn record_prepared(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.tx_for(Owner::Rotation(id), |tx| {
            expect_state(tx, id, RotationState::Created)?;
            tx.execute(
                "UPDATE rotations SET prepared_at = ?2, failures = 0, error = NULL, error_class = NULL WHERE id = ?1 AND prepared_at IS NULL",
                p![id, ts(at)],
            )?;
            Ok(())
        })
    }

    /// The old key of a retiring rotation was unbound and disabled
    /// (`before_delete`): commit it, so a failing delete never redoes it.
    pub fn record_old_disabled(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.tx_for(Owner::Rotation(id), |tx| {
            tx.execute(
                "UPDATE rotations SET old_disabled_at = ?2 WHERE id = ?1 AND old_disabled_at IS NULL",
                p![id, ts(at)],
            )?;
            Ok(())
        })
    }

    /// Start (or, with `None`, end) waiting for a listing to show the new
    /// key. The start is kept when already set.
    pub fn set_listing_wait(
        &self,
        id: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        self.tx_for(Owner::Rotation(id), |tx| {
            match since {
                Some(t) => tx.execute(
                    "UPDATE rotations SET listing_wait_since = COALESCE(listing_wait_since, ?2) WHERE id = ?1",
                    p![id, ts(t)],
                )?,
                None => tx.execute(
                    "UPDATE rotations SET listing_wait_since = NULL WHERE id = ?1",
                    p![id],
                )?,
            };
            Ok(())
        })
    }

    /// The next key of a retiring rotation is gone (deleted out of band,
    /// or the DB was restored from a backup taken during grace): end the
    /// rotation as `failed` with class `next_key_missing` — the one way out
    /// of `retiring` into `failed` (DESIGN §3). The old key stays and is
    /// live again; the next key is `gone` since the first listing that
    /// missed it (`rotations.listing_wait_since`, else `at`: its
    /// `keys.gone_at`); `key.missing` and `rotation.failed` go out.
    pub fn fail_next_key_missing(
        &self,
        id: &str,
        error: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.tx_for(Owner::Rotation(id), |tx| {
            let row = rotation_row_tx(tx, id)?.ok_or_else(|| StoreError::Conflict(format!("no rotation {id}")))?;
            if !matches!(row.state, RotationState::Published | RotationState::Retiring) {
                return Err(StoreError::Conflict(format!(
                    "rotation {id} is {}, not retiring",
                    row.state.as_str()
                )));
            }
            tx.execute(
                "UPDATE rotations SET state = 'failed', error = ?2, error_class = 'next_key_missing', finished_at = ?3,
                    next_attempt_at = NULL, sealed_secret = NULL WHERE id = ?1",
                p![id, error, ts(at)],
            )?;
            if let Some(old) = &row.old_key_id {
                tx.execute(
                    "UPDATE keys SET state = 'live' WHERE policy = ?1 AND key_id = ?2 AND state = 'retiring'",
                    p![row.policy, old],
                )?;
            }
            // Gone since the first of the listings that missed it before
            // its delete (`listing_wait_since`), else since now: never
            // since its `last_seen_at` (the create, when the checks since
            // changed nothing) nor a `gone_at` of an earlier episode.
            if let Some(new) = &row.new_key_id {
                tx.execute(
                    "UPDATE keys SET state = 'gone', gone_at = ?3 WHERE policy = ?1 AND key_id = ?2 AND state = 'live'",
                    p![row.policy, new, ts(row.listing_wait_since.unwrap_or(at))],
                )?;
            }
            let data = serde_json::json!({
                "policy": row.policy, "lineage": row.lineage, "provider": row.provider, "rotation_id": id,
                "key_id": row.new_key_id, "key_name": row.new_key_name, "old_key_id": row.old_key_id,
                "state_at_failure": row.state.as_str(), "error": error, "error_class": "next_key_missing",
            });
            insert_event(tx, &Event::new("rotation.failed", at, Some(&row.policy), Some(id), data))?;
            Ok(())
        })
    }

    /// An operator (or the engine, for a key that can no longer be
    /// published) ends a rotation: `failed` with class `abandoned`, sealed
    /// secret wiped. A rotation in grace (`published`/`retiring`) stops
    /// retiring: its old key is `live` again and kept (outcome
    /// `old_key_kept`), its published next key stays current. A completed
    /// or already abandoned rotation is refused. `finished_at` becomes `at`,
    /// also for a rotation that had failed earlier: `cleanup_stuck` counts
    /// from the abandon.
    pub fn abandon_rotation(
        &self,
        id: &str,
        why: &str,
        at: DateTime<Utc>,
    ) -> Result<RotationRow, StoreError> {
        self.tx_for(Owner::Rotation(id), |tx| {
            let row = rotation_row_tx(tx, id)?.ok_or_else(|| StoreError::Conflict(format!("no rotation {id}")))?;
            match row.state {
                RotationState::Planned | RotationState::Created => {}
                RotationState::Published | RotationState::Retiring => {}
                RotationState::Failed if row.error_class.as_deref() != Some("abandoned") => {}
                s => {
                    return Err(StoreError::Conflict(format!(
                        "rotation {id} is {}{}; there is nothing left to abandon",
                        s.as_str(),
                        if s == RotationState::Failed { " (abandoned already)" } else { "" },
                    )));
                }
            }
            let in_grace = matches!(row.state, RotationState::Published | RotationState::Retiring);
            tx.execute(
                "UPDATE rotations SET state = 'failed', error = ?2, error_class = 'abandoned', finished_at = ?3,
                    next_attempt_at = NULL, sealed_secret = NULL, outcome = CASE WHEN ?4 THEN 'old_key_kept' ELSE outcome END
                 WHERE id = ?1",
                p![id, why, ts(at), in_grace],
            )?;
            if in_grace && let Some(old) = &row.old_key_id {
                tx.execute(
                    "UPDATE keys SET state = 'live' WHERE policy = ?1 AND key_id = ?2 AND state = 'retiring'",
                    p![row.policy, old],
                )?;
            }
            if row.state != RotationState::Failed {
                let data = serde_json::json!({
                    "policy": row.policy, "lineage": row.lineage, "provider": row.provider, "rotation_id": id,
                    "state_at_failure": row.state.as_str(), "error": why, "error_class": "abandoned",
                    "old_key_id": row.old_key_id, "new_key_id": row.new_key_id, "failures": row.failures,
                });
                insert_event(tx, &Event::new("rotation.failed", at, Some(&row.policy), Some(id), data))?;
            }
            Ok(rotation_row_tx(tx, id)?.unwrap_or(row))
        })
    }

    /// The abandoned rotation's next key was deleted at the provider (or
    /// was never listed): record it and send `key.deleted`. Once: a
    /// rotation whose outcome is already recorded (deleted by a racing
    /// delete — the abandon command's and a check's retry — or kept) is
    /// left as it is, with no second event.
    pub fn record_abandoned_key_deleted(
        &self,
        id: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.tx_for(Owner::Rotation(id), |tx| {
            let row = rotation_row_tx(tx, id)?.ok_or_else(|| StoreError::Conflict(format!("no rotation {id}")))?;
            if row.outcome.is_some() {
                return Ok(());
            }
            if let Some(k) = &row.new_key_id {
                tx.execute(
                    "UPDATE keys SET state = 'deleted' WHERE policy = ?1 AND key_id = ?2",
                    p![row.policy, k],
                )?;
            }
            tx.execute(
                "UPDATE rotations SET outcome = 'next_key_deleted' WHERE id = ?1",
                p![id],
            )?;
            let data = serde_json::json!({
                "policy": row.policy, "lineage": row.lineage, "provider": row.provider, "rotation_id": id,
                "key_id": row.new_key_id, "key_name": row.new_key_name,
                "why": "the rotation was abandoned before any sink acknowledged its next key",
            });
            insert_event(tx, &Event::new("key.deleted", at, Some(&row.policy), Some(id), data))?;
            Ok(())
        })
    }

    /// The abandoned rotation's next key cannot be told apart from a twin
    /// (several keys carry its attempt's name): none is deleted, and later
    /// checks stop trying (outcome `next_key_kept`).
    pub fn record_abandoned_key_kept(&self, id: &str) -> Result<(), StoreError> {
        self.tx_for(Owner::Rotation(id), |tx| {
            tx.execute(
                "UPDATE rotations SET outcome = 'next_key_kept' WHERE id = ?1 AND outcome IS NULL",
                p![id],
            )?;
            Ok(())
        })
    }

    /// Rotations abandoned (class `abandoned`) whose next key was created,
    /// never acknowledged by any sink, and not yet deleted.
    pub fn abandoned_unpublished(&self, policy: &str) -> Result<Vec<RotationRow>, StoreError> {
        self.rotations_where(
            "policy = ?1 AND state = 'failed' AND error_class = 'abandoned' AND created_at IS NOT NULL
             AND published_at IS NULL AND outcome IS NULL
             AND NOT EXISTS (SELECT 1 FROM sink_acks s WHERE s.rotation_id = rotations.id AND s.state = 'acked')
             ORDER BY started_at",
            p![policy],
        )
    }

    /// Whether any sink ever acknowledged this rotation's next key.
    pub fn any_sink_acked(&self, id: &str) -> Result<bool, StoreError> {
        self.read(|tx| {
            tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM sink_acks WHERE rotation_id = ?1 AND state = 'acked')",
                p![id],
            )?
            .get(0)
        })
    }

    /// Apply `--revoke-old-immediately` to a rotation that has not
    /// published yet: its old key gets no grace once it publishes.
    pub fn set_revoke_on_publish(&self, id: &str) -> Result<bool, StoreError> {
        self.tx_for(Owner::Rotation(id), |tx| {
            Ok(tx.execute(
                "UPDATE rotations SET revoke_old_immediately = 1 WHERE id = ?1 AND state IN ('planned', 'created')",
                p![id],
            )? == 1)
        })
    }

    /// The stuck conditions that hold for `policy` now: rows appear (with
    /// their event, once) and disappear as conditions start and clear.
    /// `held` is `(lineage, condition, event type, message)`. Returns the
    /// conditions that started now.
    pub fn sync_conditions(
        &self,
        policy: &str,
        held: &[(String, String, Option<&'static str>, String)],
        at: DateTime<Utc>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        // A rebuild that changes no row leaves the ledger generation alone
        // (conditions are part of the ledger: `step_failing`).
        let mut changed = true;
        let out = self.tx_quiet(|tx| {
            let mut n = 0;
            let existing: Vec<(String, String)> = tx
                .query_all("SELECT lineage, condition FROM conditions WHERE policy = ?1", p![policy])?
                .iter()
                .map(|r| Ok((r.get(0)?, r.get(1)?)))
                .collect::<Result<_, StoreError>>()?;
            let mut started = Vec::new();
            for (lineage, condition, event, message) in held {
                if existing.iter().any(|(l, c)| l == lineage && c == condition) {
                    n += tx.execute(
                        // Unchanged messages are not rewritten: a status
                        // rebuilt with nothing new writes nothing.
                        "UPDATE conditions SET message = ?4 WHERE policy = ?1 AND lineage = ?2 AND condition = ?3 AND message IS DISTINCT FROM ?4",
                        p![policy, lineage, condition, message],
                    )?;
                    continue;
                }
                n += tx.execute(
                    "INSERT INTO conditions (policy, lineage, condition, since, message) VALUES (?1, ?2, ?3, ?4, ?5)",
                    p![policy, lineage, condition, ts(at), message],
                )?;
                if let Some(event) = event {
                    insert_event(
                        tx,
                        &Event::new(
                            event,
                            at,
                            Some(policy),
                            None,
                            serde_json::json!({
                                "policy": policy, "lineage": lineage, "condition": condition, "message": message,
                            }),
                        ),
                    )?;
                }
                started.push((lineage.clone(), condition.clone()));
            }
            for (l, c) in &existing {
                if !held.iter().any(|(hl, hc, _, _)| hl == l && hc == c) {
                    n += tx.execute(
                        "DELETE FROM conditions WHERE policy = ?1 AND lineage = ?2 AND condition = ?3",
                        p![policy, l, c],
                    )?;
                }
            }
            changed = n > 0;
            Ok(started)
        });
        if changed {
            // Conditions are read by their own policy's ledger only.
            self.bump_policy_generations(&[policy.to_string()]);
        }
        out
    }

    /// The (lineage, condition) pairs held for `policy` at its last
    /// status rebuild.
    pub fn held_conditions(&self, policy: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|tx| {
            tx.query_all(
                "SELECT lineage, condition FROM conditions WHERE policy = ?1",
                p![policy],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .collect()
        })
    }

    /// Forget the conditions of a policy a reload removed.
    pub fn clear_conditions(&self, policy: &str) -> Result<(), StoreError> {
        self.tx_for(Owner::Policy(policy), |tx| {
            tx.execute("DELETE FROM conditions WHERE policy = ?1", p![policy])?;
            Ok(())
        })
    }

    pub fn rotation(&self, id: &str) -> Result<Option<RotationRow>, StoreError> {
        match &self.db {
            Db::Sqlite(c) => {
                let mut c = lock(c);
                let tx = c.transaction()?;
                rotation_row_tx(&*tx, id)
            }
            Db::Postgres(..) => self.read(|tx| rotation_row_tx(tx, id)),
        }
    }

    /// Unfinished rotations, oldest first: what recovery resumes.
    pub fn active_rotations(&self) -> Result<Vec<RotationRow>, StoreError> {
        self.rotations_where(
            "state NOT IN ('completed', 'failed') ORDER BY started_at",
            p![],
        )
    }

    /// Bring an active rotation's stored deadlines (its `retire_at`, its
    /// `next_attempt_at`, its sinks' `next_attempt_at`) no later than the
    /// given ones; `None` leaves that one alone. Returns whether anything
    /// moved.
    pub fn clamp_deadlines(
        &self,
        id: &str,
        retire_at: Option<DateTime<Utc>>,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.tx_for(Owner::Rotation(id), |tx| {
            let Some(row) = rotation_row_tx(tx, id)? else {
                return Ok(false);
            };
            let mut moved = false;
            if let (Some(limit), Some(t)) = (retire_at, row.retire_at)
                && t > limit
            {
                tx.execute("UPDATE rotations SET retire_at = ?2 WHERE id = ?1", p![id, ts(limit)])?;
                moved = true;
            }
            if row.next_attempt_at.is_some_and(|t| t > next_attempt_at) {
                tx.execute(
                    "UPDATE rotations SET next_attempt_at = ?2 WHERE id = ?1",
                    p![id, ts(next_attempt_at)],
                )?;
                moved = true;
            }
            let acks: Vec<(String, Option<String>)> = {
                tx.query_all(
                    "SELECT sink, next_attempt_at FROM sink_acks WHERE rotation_id = ?1",
                    p![id],
                )?
                .iter()
                .map(|r| Ok((r.get(0)?, r.get(1)?)))
                .collect::<Result<_, StoreError>>()?
            };
            for (sink, t) in acks {
                if opt_ts(t).is_some_and(|t| t > next_attempt_at) {
                    tx.execute(
                        "UPDATE sink_acks SET next_attempt_at = ?3 WHERE rotation_id = ?1 AND sink = ?2",
                        p![id, sink, ts(next_attempt_at)],
                    )?;
                    moved = true;
                }
            }
            Ok(moved)
        })
    }

    /// A policy's active rotations plus the latest rotation of each lineage
    /// and every failed rotation that still holds a key: what the planner needs.
    pub fn policy_rotations(&self, policy: &str) -> Result<Vec<RotationRow>, StoreError> {
        // Each part uses its own index, so the cost follows the number of
        // lineages and unfinished rotations, not the length of the history.
        // (`rowid` is SQLite's; the PostgreSQL schema has an identity
        // column of that name, in insertion order too.)
        self.rotations_where(
            // The lineages are enumerated by seeking the index from one
            // to the next (`SELECT DISTINCT` would read every history row's
            // entry), and the active ones come from the partial index of
            // unfinished rotations.
            &format!("rowid IN (
                SELECT rowid FROM rotations {} WHERE policy = ?1 AND state NOT IN ('completed', 'failed')
                UNION
                SELECT rowid FROM rotations WHERE policy = ?1 AND state = 'failed' AND sealed_secret IS NOT NULL
                UNION
                SELECT (SELECT r.rowid FROM rotations r WHERE r.policy = ?1 AND r.lineage = l.lineage
                        ORDER BY r.started_at DESC LIMIT 1)
                FROM (WITH RECURSIVE d(lineage) AS (
                        SELECT MIN(lineage) FROM rotations WHERE policy = ?1
                        UNION ALL
                        SELECT (SELECT MIN(lineage) FROM rotations WHERE policy = ?1 AND lineage > d.lineage)
                        FROM d WHERE d.lineage IS NOT NULL)
                      SELECT lineage FROM d WHERE lineage IS NOT NULL) l
             )
             ORDER BY started_at",
                self.dialect().indexed_by("rotations_one_active")
            ),
            p![policy],
        )
    }

    /// Create attempts that never delivered a key (requested/abandoned) in a
    /// policy's rotations: their keys, if any exist, are orphans to clean.
    pub fn unresolved_attempts(
        &self,
        policy: &str,
    ) -> Result<Vec<(String, AttemptRow)>, StoreError> {
        self.read(|tx| {
            tx.query_all(
                // CROSS JOIN: from the (few) unresolved attempts to their
                // rotation, never from the policy's whole history.
                "SELECT a.rotation_id, a.attempt, a.name, a.state, a.started_at, a.finished_at, a.error
             FROM attempts a CROSS JOIN rotations r
             WHERE r.id = a.rotation_id AND r.policy = ?1 AND a.state IN ('requested', 'abandoned')",
                p![policy],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, attempt_row(r, 1)?)))
            .collect()
        })
    }

    /// Every create attempt of a policy that did not hand rekey a key
    /// (`requested`, `abandoned`, `cleaned`), with its rotation: their names
    /// are orphans to watch for, for ever (a late create is still deleted).
    pub fn orphan_attempts(&self, policy: &str) -> Result<Vec<OrphanAttempt>, StoreError> {
        self.read(|tx| {
            tx.query_all(
                "SELECT a.rotation_id, r.lineage, r.state, a.absent_listings, a.absent_since,
                    a.attempt, a.name, a.state, a.started_at, a.finished_at, a.error
             FROM attempts a CROSS JOIN rotations r
             WHERE r.id = a.rotation_id AND r.policy = ?1 AND a.state IN ('requested', 'abandoned', 'cleaned')",
                p![policy],
            )?
            .iter()
            .map(|r| {
                let state: String = r.get(2)?;
                Ok(OrphanAttempt {
                    rotation_id: r.get(0)?,
                    lineage: r.get(1)?,
                    rotation_state: RotationState::parse(&state).unwrap_or(RotationState::Failed),
                    absent_listings: r.get(3)?,
                    absent_since: opt_ts(r.get(4)?),
                    attempt: attempt_row(r, 5)?,
                })
            })
            .collect()
        })
    }

    /// A complete listing that started at `listing_started` (after the
    /// attempt began) did not show an unresolved attempt's name. The attempt
    /// becomes `abandoned` (if it was `requested`) and, once
    /// [`schema::ORPHAN_ABSENT_LISTINGS`] such listings span
    /// [`schema::ORPHAN_WINDOW`] from the attempt's start, `cleaned`.
    /// Returns whether it is now `cleaned`.
    pub fn note_attempt_absent(
        &self,
        rotation_id: &str,
        attempt: u32,
        listing_started: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.tx_for(Owner::Rotation(rotation_id), |tx| {
            let row = tx.query_opt(
                "SELECT state, started_at, absent_listings FROM attempts WHERE rotation_id = ?1 AND attempt = ?2",
                p![rotation_id, attempt],
            )?;
            let Some(row) = row else {
                return Ok(false);
            };
            let (state, started, absent): (String, String, u32) =
                (row.get(0)?, row.get(1)?, row.get(2)?);
            if state == "cleaned" {
                return Ok(true);
            }
            if state == "created" {
                return Ok(false);
            }
            let started = parse_ts(&started).unwrap_or(listing_started);
            if listing_started <= started {
                return Ok(false);
            }
            let absent = absent + 1;
            let cleaned = absent >= schema::ORPHAN_ABSENT_LISTINGS
                && listing_started - started >= schema::ORPHAN_WINDOW;
            tx.execute(
                "UPDATE attempts SET absent_listings = ?3, absent_since = COALESCE(absent_since, ?4),
                    state = ?5, finished_at = COALESCE(finished_at, ?4)
                 WHERE rotation_id = ?1 AND attempt = ?2",
                p![
                    rotation_id,
                    attempt,
                    absent,
                    ts(listing_started),
                    if cleaned { "cleaned" } else { "abandoned" }
                ],
            )?;
            Ok(cleaned)
        })
    }

    /// Keys rekey created, as its rotations recorded them: the evidence of
    /// ownership (a name that parses through `name_template` is none).
    pub fn owned_keys(&self, policy: &str) -> Result<Vec<OwnedKey>, StoreError> {
        self.read(|tx| {
            tx.query_all(
                // A new key a later rotation of the policy deleted as its old
                // key is gone for good: the store's `deleted` state covers it,
                // so the history it would add is skipped.
                // Index `rotations_with_new_key` (v4): rotations that never
                // named a key are not read.
                &format!("SELECT id, lineage, new_key_id, new_key_name, state, published_at IS NOT NULL, trigger
             FROM rotations r {} WHERE policy = ?1 AND new_key_name IS NOT NULL
               AND NOT (new_key_id IS NOT NULL AND EXISTS (
                   SELECT 1 FROM rotations o WHERE o.policy = r.policy AND o.old_key_id = r.new_key_id
                     AND o.outcome = 'deleted'))",
                    tx.dialect().indexed_by("rotations_with_new_key")
                ),
                p![policy],
            )?
            .iter()
            .map(|r| {
                let state: String = r.get(4)?;
                Ok(OwnedKey {
                    rotation_id: r.get(0)?,
                    lineage: r.get(1)?,
                    key_id: r.get(2)?,
                    name: r.get(3)?,
                    state: RotationState::parse(&state).unwrap_or(RotationState::Failed),
                    published: r.get(5)?,
                    recovered: r.get::<String>(6)? == "recovery",
                })
            })
            .collect()
        })
    }

    /// Of the live keys of `policy`, those another policy for which
    /// `is_rival` holds (other configured policies on providers of the same
    /// kind) also holds live: key id → that policy, the first by name.
    /// Provider key ids are unique within a provider service, so one id in
    /// two policies is one key with two owners.
    pub fn claimed_elsewhere(
        &self,
        policy: &str,
        is_rival: &dyn Fn(&str) -> bool,
    ) -> Result<std::collections::HashMap<String, String>, StoreError> {
        let mut out = std::collections::HashMap::new();
        // One query: the policy's live keys that another policy also holds
        // live, from the policy's own keys through `keys_by_id` (one seek
        // per own key; this runs on every ledger read). Which of those
        // policies are rivals is decided here.
        let rows = self.read(|tx| {
            tx.query_all(
                &format!(
                    "SELECT k.key_id, o.policy FROM keys k
             JOIN keys o {} ON o.key_id = k.key_id
             WHERE k.policy = ?1 AND k.state IN ('live', 'retiring')
               AND o.policy <> ?1 AND o.state IN ('live', 'retiring')",
                    tx.dialect().indexed_by("keys_by_id")
                ),
                p![policy],
            )
        })?;
        for r in rows {
            let (key, other): (String, String) = (r.get(0)?, r.get(1)?);
            if !is_rival(&other) {
                continue;
            }
            // Several rivals: the first by name, so the report is stable.
            out.entry(key)
                .and_modify(|held: &mut String| {
                    if other < *held {
                        held.clone_from(&other);
                    }
                })
                .or_insert(other);
        }
        Ok(out)
    }

    /// `rekey recover`: record that a readable sink proves `new` is the key
    /// lineage `lineage` of `policy` published (its rotation was lost with
    /// the DB). Writes a rotation with trigger `recovery`: `retiring` with
    /// `old` as its old key (deleted after `grace`, read-back first) when
    /// one is given, else `completed`; the sinks' acknowledgements carry the
    /// fingerprints read back; `new` becomes a `created` key of that
    /// rotation and `old` an `adopted` key of the lineage. Returns the
    /// rotation id, or `None` when the lineage has an active rotation.
    #[allow(clippy::too_many_arguments)]
    pub fn record_recovered(
        &self,
        policy: &str,
        lineage: &str,
        provider: &str,
        new: &RecoveredKey,
        old: Option<&RecoveredKey>,
        acks: &[(String, String)],
        grace: Duration,
        at: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        self.tx_for(Owner::Policy(policy), |tx| {
            let Some(id) = new_rotation_id(tx, policy, lineage)? else {
                return Ok(None);
            };
            let sinks: Vec<&str> = acks.iter().map(|(s, _)| s.as_str()).collect();
            let retire_at = old.map(|_| at + chrono::Duration::from_std(grace).unwrap_or_default());
            tx.execute(
                "INSERT INTO rotations (id, policy, lineage, provider, state, reason, message, trigger, revoke_old_immediately,
                    old_key_id, old_key_name, attempt, new_key_name, new_key_id, new_key_created_at, new_key_expires_at,
                    fingerprint, sinks, grace_seconds, started_at, created_at, published_at, retire_at, next_attempt_at,
                    finished_at, outcome)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'recovered', ?6, 'recovery', 0, ?7, ?8, 1, ?9, ?10, ?11, ?12, NULL, ?13, ?14,
                    ?15, ?15, ?15, ?16, ?16, ?17, ?18)",
                p![
                    id,
                    policy,
                    lineage,
                    provider,
                    if old.is_some() { "retiring" } else { "completed" },
                    "recovered by `rekey recover`: a readable sink holds this key",
                    old.map(|o| o.id.as_str()),
                    old.map(|o| o.name.as_str()),
                    new.name,
                    new.id,
                    new.created_at.map(ts),
                    new.expires_at.map(ts),
                    serde_json::to_string(&sinks).unwrap_or_else(|_| "[]".into()),
                    grace.as_secs() as i64,
                    ts(at),
                    retire_at.map(ts),
                    if old.is_some() { None } else { Some(ts(at)) },
                    if old.is_some() { None } else { Some("no_old_key") },
                ],
            )?;
            tx.execute(
                "INSERT INTO attempts (rotation_id, attempt, name, state, started_at, finished_at) VALUES (?1, 1, ?2, 'created', ?3, ?3)",
                p![id, new.name, ts(at)],
            )?;
            for (sink, fp) in acks {
                tx.execute(
                    "INSERT INTO sink_acks (rotation_id, sink, state, attempts, acked_at, detail, fingerprint)
                     VALUES (?1, ?2, 'acked', 0, ?3, 'recovered from read-back', ?4)",
                    p![id, sink, ts(at), fp],
                )?;
            }
            let up = "INSERT INTO keys (policy, key_id, name, lineage, provider, created_at, expires_at, first_seen_at, last_seen_at, origin, rotation_id, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10, ?11)
                 ON CONFLICT (policy, key_id) DO UPDATE SET lineage = excluded.lineage, origin = excluded.origin,
                    rotation_id = excluded.rotation_id, state = excluded.state, last_seen_at = excluded.last_seen_at,
                    gone_at = NULL";
            tx.execute(up, p![policy, new.id, new.name, lineage, provider, new.created_at.map(ts), new.expires_at.map(ts), ts(at), "created", id, "live"])?;
            if let Some(o) = old {
                tx.execute(up, p![policy, o.id, o.name, lineage, provider, o.created_at.map(ts), o.expires_at.map(ts), ts(at), "adopted", Option::<String>::None, "retiring"])?;
            }
            Ok(Some(id))
        })
    }

    /// Who last wrote a sink target (`kind:rendered target`), if recorded.
    pub fn sink_target_owner(&self, target: &str) -> Result<Option<TargetOwner>, StoreError> {
        self.read(|tx| {
            tx.query_opt(
                "SELECT sink, policy, lineage, rotation_id FROM sink_targets WHERE target = ?1",
                p![target],
            )?
            .map(|r| {
                Ok(TargetOwner {
                    sink: r.get(0)?,
                    policy: r.get(1)?,
                    lineage: r.get(2)?,
                    rotation_id: r.get(3)?,
                })
            })
            .transpose()
        })
    }

    /// Record the writer of a sink target (after a write, or when claiming a
    /// target an earlier build acknowledged).
    pub fn record_sink_target(
        &self,
        target: &str,
        owner: &TargetOwner,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.tx_for(Owner::Policy(&owner.policy), |tx| {
            tx.execute(
                "INSERT INTO sink_targets (target, sink, policy, lineage, rotation_id, written_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (target) DO UPDATE SET sink = excluded.sink, policy = excluded.policy,
                    lineage = excluded.lineage, rotation_id = excluded.rotation_id, written_at = excluded.written_at",
                p![target, owner.sink, owner.policy, owner.lineage, owner.rotation_id, ts(at)],
            )?;
            Ok(())
        })
    }

    /// The (policy, lineage) pairs a sink acknowledged a key for, newest
    /// first: how targets written before schema v2 are claimed.
    pub fn acked_writers(&self, sink: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|tx| {
            tx.query_all(
                "SELECT r.policy, r.lineage, MAX(a.acked_at) FROM sink_acks a JOIN rotations r ON r.id = a.rotation_id
             WHERE a.sink = ?1 AND a.state = 'acked' GROUP BY r.policy, r.lineage ORDER BY 3 DESC",
                p![sink],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .collect()
        })
    }

    /// Rotation history, newest first.
    pub fn history(
        &self,
        policy: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RotationRow>, StoreError> {
        match policy {
            Some(p) => self.rotations_where(
                "policy = ?1 ORDER BY started_at DESC, rowid DESC LIMIT ?2",
                p![p, limit as i64],
            ),
            None => self.rotations_where(
                "1 = 1 ORDER BY started_at DESC, rowid DESC LIMIT ?1",
                p![limit as i64],
            ),
        }
    }

    /// The latest rotation of each policy (for status).
    pub fn last_rotation(&self, policy: &str) -> Result<Option<RotationRow>, StoreError> {
        Ok(self.history(Some(policy), 1)?.into_iter().next())
    }

    fn rotations_where(
        &self,
        clause: &str,
        params: &[Value],
    ) -> Result<Vec<RotationRow>, StoreError> {
        let sql = format!("SELECT {ROTATION_COLS} FROM rotations WHERE {clause}");
        self.read(|tx| {
            tx.query_all(&sql, params)?
                .iter()
                .map(rotation_row)
                .collect()
        })
    }

    /// Every sealed secret still held, by rotation id (start-up checks
    /// that the seal key opens each). Abandoned rotations hold none.
    pub fn sealed_secrets(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.read(|tx| {
            tx.query_all(
                // Each half uses its partial index (rotations_active,
                // rotations_resumable): start-up stays independent of history.
                "SELECT id, sealed_secret FROM rotations WHERE state NOT IN ('completed', 'failed') AND sealed_secret IS NOT NULL
             UNION ALL
             SELECT id, sealed_secret FROM rotations WHERE state = 'failed' AND sealed_secret IS NOT NULL",
                p![],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .collect()
        })
    }

    /// The sealed secret of a rotation still publishing.
    pub fn sealed_secret(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|tx| {
            Ok(tx
                .query_opt("SELECT sealed_secret FROM rotations WHERE id = ?1", p![id])?
                .map(|r| r.get::<Option<Vec<u8>>>(0))
                .transpose()?
                .flatten())
        })
    }

    /// Counts of completed/failed rotations per policy (metrics at start-up).
    pub fn rotation_counts(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        self.read(|tx| {
            tx.query_all("SELECT policy, state, COUNT(*) FROM rotations WHERE state IN ('completed', 'failed') GROUP BY policy, state", p![])?
                .iter()
                .map(|r| Ok((r.get(0)?, r.get(1)?, r.get::<i64>(2)? as u64)))
                .collect()
        })
    }

    /// Time of the last completed rotation per policy.
    pub fn last_success(&self, policy: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.read(|tx| {
            let v: Option<String> = tx
                .query_row(
                    "SELECT MAX(finished_at) FROM rotations WHERE policy = ?1 AND state = 'completed'",
                    p![policy],
                )?
                .get(0)?;
            Ok(opt_ts(v))
        })
    }
}

/// The `policy_state` row of one check: check time, next check (kept
/// when the record has none), health, error, decisions (kept when the
/// record has none). Shared by
/// [`Store::record_check`] and [`Store::record_check_times`].
fn upsert_policy_state(tx: &dyn Tx, check: &CheckRecord) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO policy_state (policy, last_check_at, next_check_at, health, last_error, decisions)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (policy) DO UPDATE SET last_check_at = excluded.last_check_at,
            next_check_at = COALESCE(excluded.next_check_at, policy_state.next_check_at),
            health = excluded.health, last_error = excluded.last_error,
            decisions = COALESCE(excluded.decisions, policy_state.decisions)",
        p![check.policy, ts(check.at), check.next_check_at.map(ts), check.health, check.error, check.decisions],
    )?;
    Ok(())
}

/// Whether [`Store::record_check`] of `seen` would change any of the
/// policy's key rows other than their `last_seen_at`, given `known` (the
/// policy's rows, [`Store::known_keys`], read after anything else this
/// check wrote): a listed key that is new, renamed, re-timed, `gone`, or
/// whose unparsed time changed; a known key's unparsed time to clear; or,
/// for a complete listing, a `live`/`retiring` key no longer listed (it
/// becomes `gone`). Times compare at the stored precision (milliseconds).
pub fn check_changes_keys(known: &KnownKeys, seen: &[SeenKey], complete_listing: bool) -> bool {
    let ms = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_millis());
    let by_id: std::collections::HashMap<&str, KnownRef<'_>> =
        known.iter().map(|k| (k.key_id(), k)).collect();
    let mut listed = std::collections::HashSet::with_capacity(seen.len());
    for k in seen {
        let Some(row) = by_id.get(k.key_id.as_str()) else {
            return true;
        };
        if row.state() == "gone"
            || row.name() != k.name
            || ms(row.created_at()) != ms(k.created_at)
            || ms(row.expires_at()) != ms(k.expires_at)
            || row.unknown_time() != k.unknown_time.as_deref()
        {
            return true;
        }
        listed.insert(k.key_id.as_str());
    }
    known
        .iter()
        .filter(|k| !listed.contains(k.key_id()))
        .any(|k| {
            k.unknown_time().is_some()
                || (complete_listing && matches!(k.state(), "live" | "retiring"))
        })
}

/// Refuse, with reads only, a DB this rekey must not write: a newer schema,
/// or another program's SQLite DB (tables but no schema version: migrating
/// would add our tables to it).
fn preflight(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let corrupt = |e: rusqlite::Error| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(corrupt)?;
    if v > schema::VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found: v,
            supported: schema::VERSION,
        });
    }
    if v == 0 {
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .and_then(|mut st| {
                st.query_map([], |r| r.get(0))?
                    .collect::<Result<Vec<String>, _>>()
            })
            .map_err(corrupt)?;
        if !tables.is_empty() {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "it is a SQLite DB with tables ({}) but no rekey schema version",
                    tables.join(", ")
                ),
            });
        }
    }
    Ok(())
}

fn check_header(path: &Path) -> Result<(), StoreError> {
    let Ok(mut f) = File::open(path) else {
        return Ok(());
    };
    let mut head = [0u8; 16];
    match f.read(&mut head) {
        Ok(0) => Ok(()),
        Ok(n) if n == 16 && head == SQLITE_MAGIC => Ok(()),
        Ok(_) => Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: "the file does not start with the SQLite header".into(),
        }),
        Err(e) => Err(StoreError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// Refuse a transition unless the rotation is in `want`.
fn expect_state(tx: &dyn Tx, id: &str, want: RotationState) -> Result<(), StoreError> {
    let state: Option<String> = tx
        .query_opt("SELECT state FROM rotations WHERE id = ?1", p![id])?
        .map(|r| r.get(0))
        .transpose()?;
    match state {
        None => Err(StoreError::Conflict(format!("no rotation {id}"))),
        Some(s) if s == want.as_str() => Ok(()),
        Some(s) => Err(StoreError::Conflict(format!(
            "rotation {id} is {s}, not {}",
            want.as_str()
        ))),
    }
}

/// A fresh, unused rotation id for `lineage` of `policy`, or `None` when
/// that lineage already has an active rotation (at most one at a time).
fn new_rotation_id(tx: &dyn Tx, policy: &str, lineage: &str) -> Result<Option<String>, StoreError> {
    let active = tx.query_opt(
        "SELECT id FROM rotations WHERE policy = ?1 AND lineage = ?2 AND state NOT IN ('completed', 'failed')",
        p![policy, lineage],
    )?;
    if active.is_some() {
        return Ok(None);
    }
    loop {
        let candidate = format!("{:08x}", rand::random::<u32>());
        let taken: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM rotations WHERE id = ?1)",
                p![candidate],
            )?
            .get(0)?;
        if !taken {
            return Ok(Some(candidate));
        }
    }
}

/// `(policy, lineage, provider)` of a rotation.
fn rotation_owner(tx: &dyn Tx, id: &str) -> Result<(String, String, String), StoreError> {
    let r = tx.query_row(
        "SELECT policy, lineage, provider FROM rotations WHERE id = ?1",
        p![id],
    )?;
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

fn unacked_sink_conflict(id: &str, sink: &str) -> StoreError {
    StoreError::Conflict(format!(
        "rotation {id} has no unacknowledged sink {sink:?} (acknowledged already, or not one of its sinks)"
    ))
}

#[allow(clippy::too_many_arguments)]
fn upsert_created_key(
    tx: &dyn Tx,
    policy: &str,
    provider: &str,
    lineage: &str,
    rotation_id: &str,
    key_id: &str,
    key: &CreatedRecord,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO keys (policy, key_id, name, lineage, provider, created_at, expires_at, first_seen_at, last_seen_at, origin, rotation_id, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, 'created', ?9, 'live')
         ON CONFLICT (policy, key_id) DO UPDATE SET lineage = excluded.lineage, origin = 'created', rotation_id = excluded.rotation_id",
        p![policy, key_id, key.name, lineage, provider, key.created_at.map(ts), key.expires_at.map(ts), ts(at), rotation_id],
    )?;
    Ok(())
}

fn complete_tx(
    tx: &dyn Tx,
    row: &RotationRow,
    outcome: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE rotations SET state = 'completed', outcome = ?2, finished_at = ?3, next_attempt_at = NULL, sealed_secret = NULL WHERE id = ?1",
        p![row.id, outcome, ts(at)],
    )?;
    insert_event(
        tx,
        &Event::new(
            "rotation.completed",
            at,
            Some(&row.policy),
            Some(&row.id),
            serde_json::json!({
                "policy": row.policy, "lineage": row.lineage, "provider": row.provider, "rotation_id": row.id,
                "old_key_id": row.old_key_id, "new_key_id": row.new_key_id, "new_key_name": row.new_key_name,
                "outcome": outcome, "reason": row.reason, "fingerprint": row.fingerprint,
            }),
        ),
    )
}

fn insert_event(tx: &dyn Tx, ev: &Event) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO events (id, type, at, policy, rotation_id, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        p![ev.id, ev.kind, ts(ev.at), ev.policy, ev.rotation_id, ev.data.to_string()],
    )?;
    Ok(())
}

const ROTATION_COLS: &str = "id, policy, lineage, provider, state, reason, message, trigger, revoke_old_immediately,
    old_key_id, old_key_name, attempt, new_key_name, new_key_id, new_key_created_at, new_key_expires_at, fingerprint,
    sinks, failures, next_attempt_at, grace_seconds, started_at, created_at, published_at, retire_at, finished_at,
    error, error_class, outcome, prepared_at, listing_wait_since, old_disabled_at";

fn rotation_row(r: &Row) -> Result<RotationRow, StoreError> {
    let state: String = r.get(4)?;
    Ok(RotationRow {
        id: r.get(0)?,
        policy: r.get(1)?,
        lineage: r.get(2)?,
        provider: r.get(3)?,
        state: RotationState::parse(&state).unwrap_or(RotationState::Failed),
        reason: r.get(5)?,
        message: r.get(6)?,
        trigger: r.get(7)?,
        revoke_old_immediately: r.get(8)?,
        old_key_id: r.get(9)?,
        old_key_name: r.get(10)?,
        attempt: r.get(11)?,
        new_key_name: r.get(12)?,
        new_key_id: r.get(13)?,
        new_key_created_at: opt_ts(r.get(14)?),
        new_key_expires_at: opt_ts(r.get(15)?),
        fingerprint: r.get(16)?,
        sinks: serde_json::from_str(&r.get::<String>(17)?).unwrap_or_default(),
        failures: r.get(18)?,
        next_attempt_at: opt_ts(r.get(19)?),
        grace: Duration::from_secs(r.get::<i64>(20)?.max(0) as u64),
        started_at: opt_ts(r.get(21)?).unwrap_or_default(),
        created_at: opt_ts(r.get(22)?),
        published_at: opt_ts(r.get(23)?),
        retire_at: opt_ts(r.get(24)?),
        finished_at: opt_ts(r.get(25)?),
        error: r.get(26)?,
        error_class: r.get(27)?,
        outcome: r.get(28)?,
        prepared_at: opt_ts(r.get(29)?),
        listing_wait_since: opt_ts(r.get(30)?),
        old_disabled_at: opt_ts(r.get(31)?),
    })
}

fn rotation_row_tx(tx: &dyn Tx, id: &str) -> Result<Option<RotationRow>, StoreError> {
    let sql = format!("SELECT {ROTATION_COLS} FROM rotations WHERE id = ?1");
    tx.query_opt(&sql, p![id])?
        .as_ref()
        .map(rotation_row)
        .transpose()
}

/// An `attempts` row whose columns (attempt, name, state, started_at,
/// finished_at, error) start at `first`.
fn attempt_row(r: &Row, first: usize) -> Result<AttemptRow, StoreError> {
    Ok(AttemptRow {
        attempt: r.get(first)?,
        name: r.get(first + 1)?,
        state: r.get(first + 2)?,
        started_at: opt_ts(r.get(first + 3)?).unwrap_or_default(),
        finished_at: opt_ts(r.get(first + 4)?),
        error: r.get(first + 5)?,
    })
}

fn policy_state_row(r: &Row) -> Result<PolicyStateRow, StoreError> {
    Ok(PolicyStateRow {
        policy: r.get(0)?,
        last_check_at: opt_ts(r.get(1)?),
        next_check_at: opt_ts(r.get(2)?),
        health: r.get(3)?,
        last_error: r.get(4)?,
        decisions: r
            .get::<Option<String>>(5)?
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null),
    })
}

// ------------------------------------------------------------------ types

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RotationState {
    Planned,
    Created,
    Published,
    Retiring,
    Completed,
    Failed,
}

impl RotationState {
    pub fn as_str(self) -> &'static str {
        match self {
            RotationState::Planned => "planned",
            RotationState::Created => "created",
            RotationState::Published => "published",
            RotationState::Retiring => "retiring",
            RotationState::Completed => "completed",
            RotationState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "planned" => RotationState::Planned,
            "created" => RotationState::Created,
            "published" => RotationState::Published,
            "retiring" => RotationState::Retiring,
            "completed" => RotationState::Completed,
            "failed" => RotationState::Failed,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, RotationState::Completed | RotationState::Failed)
    }
}

/// One outbox event. `data` must never hold a secret.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The stable `webhook-id`.
    pub id: String,
    pub kind: String,
    pub at: DateTime<Utc>,
    pub policy: Option<String>,
    pub rotation_id: Option<String>,
    pub data: serde_json::Value,
}

impl Event {
    pub fn new(
        kind: &str,
        at: DateTime<Utc>,
        policy: Option<&str>,
        rotation_id: Option<&str>,
        data: serde_json::Value,
    ) -> Self {
        Event {
            id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
            kind: kind.to_string(),
            at,
            policy: policy.map(str::to_string),
            rotation_id: rotation_id.map(str::to_string),
            data,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub seq: i64,
    pub id: String,
    pub kind: String,
    pub at: DateTime<Utc>,
    pub policy: Option<String>,
    pub rotation_id: Option<String>,
    pub data: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub target: String,
    pub cursor: i64,
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub target: String,
    pub event_seq: i64,
    pub event_id: String,
    pub kind: String,
    pub at: DateTime<Utc>,
    pub error: String,
}

#[derive(Debug, Clone)]
pub struct PolicyStateRow {
    pub policy: String,
    pub last_check_at: Option<DateTime<Utc>>,
    pub next_check_at: Option<DateTime<Utc>>,
    pub health: Option<String>,
    pub last_error: Option<String>,
    pub decisions: serde_json::Value,
}

/// A key seen by a check.
#[derive(Debug, Clone)]
pub struct SeenKey {
    pub key_id: String,
    pub name: String,
    pub lineage: String,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// `created` or `adopted`.
    pub origin: &'static str,
    pub rotation_id: Option<String>,
    /// JSON of the times the provider listed that did not parse.
    pub unknown_time: Option<String>,
}

#[derive(Debug, Clone)]
pub struct CheckRecord {
    pub policy: String,
    pub provider: String,
    pub at: DateTime<Utc>,
    pub next_check_at: Option<DateTime<Utc>>,
    pub health: String,
    pub error: Option<String>,
    /// Each lineage's decision, as JSON text (an object by lineage);
    /// `None` keeps the stored decisions (a check that reused the plan
    /// which wrote them, `rotation::engine::SettledChecks`).
    pub decisions: Option<String>,
    pub keys: Vec<SeenKey>,
    /// The listing was complete, so keys not in it are gone.
    pub complete_listing: bool,
}

#[derive(Debug, Clone)]
pub struct KnownKey {
    pub key_id: String,
    pub name: String,
    pub lineage: String,
    pub origin: String,
    pub rotation_id: Option<String>,
    pub state: String,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// JSON of the times the last listing carried that did not parse.
    pub unknown_time: Option<String>,
    /// For a `gone` key, since when: the listing (or delete confirmation)
    /// that first missed it (`keys.gone_at`), never before a listing last
    /// showed it (`last_seen_at`, which stands in for rows marked `gone`
    /// before schema v5). `None` for every other state.
    pub gone_since: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct NewRotation {
    pub policy: String,
    pub lineage: String,
    pub provider: String,
    pub reason: String,
    pub message: String,
    pub trigger: String,
    pub revoke_old_immediately: bool,
    pub old_key_id: Option<String>,
    pub old_key_name: Option<String>,
    pub sinks: Vec<String>,
    pub grace: Duration,
    pub at: DateTime<Utc>,
}

/// What a create returned, minus the secret.
#[derive(Debug, Clone)]
pub struct CreatedRecord {
    pub key_id: Option<String>,
    pub name: String,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RotationRow {
    pub id: String,
    pub policy: String,
    pub lineage: String,
    pub provider: String,
    pub state: RotationState,
    pub reason: String,
    pub message: String,
    pub trigger: String,
    pub revoke_old_immediately: bool,
    pub old_key_id: Option<String>,
    pub old_key_name: Option<String>,
    pub attempt: u32,
    pub new_key_name: Option<String>,
    pub new_key_id: Option<String>,
    pub new_key_created_at: Option<DateTime<Utc>>,
    pub new_key_expires_at: Option<DateTime<Utc>>,
    pub fingerprint: Option<String>,
    pub sinks: Vec<String>,
    pub failures: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub grace: Duration,
    pub started_at: DateTime<Utc>,
    pub created_at: Option<DateTime<Utc>>,
    pub published_at: Option<DateTime<Utc>>,
    pub retire_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub error_class: Option<String>,
    pub outcome: Option<String>,
    /// The provider's after-create step finished (never re-run).
    pub prepared_at: Option<DateTime<Utc>>,
    /// Waiting for a listing to show the new key since then.
    pub listing_wait_since: Option<DateTime<Utc>>,
    /// The old key was unbound and disabled (before its delete).
    pub old_disabled_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SinkAckRow {
    pub sink: String,
    pub state: String,
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub acked_at: Option<DateTime<Utc>>,
    pub detail: Option<String>,
    pub fingerprint: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptRow {
    pub attempt: u32,
    pub name: String,
    pub state: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

/// A create attempt that never handed rekey its key, with its rotation.
#[derive(Debug, Clone)]
pub struct OrphanAttempt {
    pub rotation_id: String,
    pub lineage: String,
    pub rotation_state: RotationState,
    pub attempt: AttemptRow,
    /// Complete listings since the attempt that did not show its name.
    pub absent_listings: u32,
    pub absent_since: Option<DateTime<Utc>>,
}

/// A key one of rekey's rotations created (the store's proof of ownership).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedKey {
    pub rotation_id: String,
    pub lineage: String,
    /// The provider's id; `None` until resolved (OceanBase returns none).
    pub key_id: Option<String>,
    /// The attempt name the key was created under.
    pub name: String,
    pub state: RotationState,
    /// Every sink acknowledged it.
    pub published: bool,
    /// Recorded by `rekey recover` from a sink's read-back, not by a create.
    pub recovered: bool,
}

/// A listed key `rekey recover` records (id, name and times as listed).
#[derive(Debug, Clone)]
pub struct RecoveredKey {
    pub id: String,
    pub name: String,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// The last writer of a sink target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetOwner {
    pub sink: String,
    pub policy: String,
    pub lineage: String,
    pub rotation_id: Option<String>,
}

#[cfg(test)]
mod lease_tests;
#[cfg(test)]
pub(crate) mod pg_test;
#[cfg(test)]
mod tests;
