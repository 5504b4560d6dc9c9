//! A PostgreSQL database of a test's own: created with a unique name on the
//! server at `127.0.0.1:5432` (trust auth, user `postgres`) and dropped
//! (`WITH (FORCE)`) when the handle drops. Outside CI a missing server makes
//! the test skip with a hint; in CI (`CI=true`) it fails.

use tokio_postgres::NoTls;

/// The shared server's maintenance connection.
const ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=5";

/// A database that exists until this is dropped.
pub struct PgDb {
    pub name: String,
}

impl PgDb {
    /// Create `rekey_<prefix>_<random>`; `None` (after printing why) when
    /// no server answers outside CI.
    pub async fn create(prefix: &str) -> Option<PgDb> {
        let (client, conn) = match tokio_postgres::connect(ADMIN, NoTls).await {
            Ok(c) => c,
            Err(e) => {
                if super::in_ci() {
                    panic!("PostgreSQL at 127.0.0.1:5432 is required in CI: {e}");
                }
                eprintln!(
                    "skipping: no PostgreSQL at 127.0.0.1:5432 ({e}); install it (apt install postgresql) and allow trust auth for user postgres on 127.0.0.1"
                );
                return None;
            }
        };
        tokio::spawn(conn);
        let name = format!(
            "rekey_{prefix}_{}",
            uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
        );
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        Some(PgDb { name })
    }

    /// The state URL of this database (loopback: no TLS).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    /// Run `sql` on this database (test set-up and inspection).
    pub async fn execute(&self, sql: &str) {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port=5432 user=postgres dbname={}",
                self.name
            ),
            NoTls,
        )
        .await
        .expect("connect to the test database");
        tokio::spawn(conn);
        client.batch_execute(sql).await.expect("run test SQL");
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside a runtime or not: use a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok((client, conn)) = tokio_postgres::connect(ADMIN, NoTls).await {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}
