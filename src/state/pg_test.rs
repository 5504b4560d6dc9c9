//! Test support: a PostgreSQL store on a database of its own.
//!
//! [`pg_db`] creates a uniquely named database on the server at
//! `127.0.0.1:5432` (user `postgres`, trust auth: the project's machines
//! and CI have it), opens a [`Store`] on it and drops the database when
//! the returned [`PgTestDb`] goes away. With no server answering it
//! returns `None` after printing how to get one, so the test passes
//! untested outside CI; with `CI` set it panics instead: CI must run the
//! PostgreSQL half of the suite.
//!
//! [`backends!`] turns store tests written as `fn name(store: &Store)` into
//! `sqlite::name` (an in-memory store) and `postgres::name`.

use std::sync::atomic::{AtomicU32, Ordering};

use super::{PgOptions, Store};

/// Where the test server is (trust auth).
pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A fresh database and a store on it; dropping it drops the database.
pub struct PgTestDb {
    pub store: Store,
    pub opts: PgOptions,
    name: String,
}

impl std::ops::Deref for PgTestDb {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

/// Run admin SQL on the server's `test` database.
pub fn admin(sql: &str) -> Result<(), String> {
    admin_on("test", sql)
}

/// Run SQL as the superuser on database `db` (on a thread of its own:
/// callers may be inside a runtime).
pub fn admin_on(db: &str, sql: &str) -> Result<(), String> {
    let url = ADMIN_URL.replace("/test", &format!("/{db}"));
    let sql = sql.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            client.batch_execute(&sql).await.map_err(|e| e.to_string())
        })
    })
    .join()
    .unwrap_or_else(|_| Err("admin thread panicked".into()))
}

/// Options for another store on the same test database (a second node).
pub fn options_for(db: &str, instance: &str) -> PgOptions {
    let mut o = PgOptions::from_url(&format!("postgres://postgres@127.0.0.1:5432/{db}"))
        .expect("test URL parses");
    o.instance = instance.to_string();
    o
}

/// A fresh database (no store opened on it): `None` when skipped.
pub fn fresh_database() -> Option<String> {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "rekey_test_{}_{}_{:08x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        rand::random::<u32>()
    );
    match admin(&format!("CREATE DATABASE {name}")) {
        Ok(()) => Some(name),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("CI needs PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth): {e}")
        }
        Err(e) => {
            eprintln!(
                "skipping a PostgreSQL test: no server at 127.0.0.1:5432 ({e}); \
                 install one (apt-get install postgresql) with trust auth for user postgres"
            );
            None
        }
    }
}

/// Drop a test database (forcing out connections still open).
pub fn drop_database(name: &str) {
    let _ = admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
}

/// A store on a fresh database, instance `node-a`; `None` when skipped.
pub fn pg_db() -> Option<PgTestDb> {
    let name = fresh_database()?;
    let opts = options_for(&name, "node-a");
    match Store::open_postgres(&opts) {
        Ok(store) => Some(PgTestDb { store, opts, name }),
        Err(e) => {
            drop_database(&name);
            panic!("cannot open the PostgreSQL test store: {e}")
        }
    }
}

impl PgTestDb {
    /// The database's name (for a second store on it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What a server restart or a failover does to open connections: the
    /// server ends every other backend on this database, waiting (up to
    /// 5 s) until each is gone.
    pub fn drop_connections(&self) -> Result<(), String> {
        admin_on(
            &self.name,
            &format!(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
                self.name
            ),
        )
    }
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        drop_database(&self.name);
    }
}

/// `backends!(a, b)`: for each store test `fn a(store: &Store)`, the tests
/// `sqlite::a` and `postgres::a`.
macro_rules! backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(&super::Store::open_in_memory().unwrap());
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    let Some(db) = super::pg_db() else { return };
                    super::$name(&db.store);
                }
            )*
        }
    };
}
pub(crate) use backends;
