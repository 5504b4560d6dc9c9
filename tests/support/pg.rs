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

/// A throwaway PostgreSQL cluster of the test's own (`initdb` run as the
/// `postgres` user, trust auth, listening on 127.0.0.1 at a free port), so a
/// test can restart or stop it (`pg_ctl … -m immediate`) without touching
/// the shared server. Stopped and removed on drop.
pub struct Throwaway {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    pub port: u16,
}

impl Throwaway {
    /// `None` (after printing why) when `initdb` is not installed or this
    /// process cannot run it as `postgres`, outside CI; in CI it panics.
    pub fn start() -> Option<Throwaway> {
        let skip = |why: String| {
            if super::in_ci() {
                panic!("a throwaway PostgreSQL cluster is required in CI: {why}");
            }
            eprintln!("skipping: {why}");
            None
        };
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").exists());
        let Some(bin) = bin else {
            return skip(
                "no initdb under /usr/lib/postgresql/*/bin (apt install postgresql)".into(),
            );
        };
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return skip("running initdb as the postgres user needs root".into());
        }
        let dir = tempfile::Builder::new()
            .prefix("rekey-pg-")
            .tempdir()
            .expect("tempdir");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().unwrap().port()
        };
        let run = |args: &str| {
            std::process::Command::new("su")
                .args(["postgres", "-s", "/bin/sh", "-c", args])
                .output()
                .expect("run su")
        };
        let chown = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(chown.success());
        let data = dir.path().join("data");
        let out = run(&format!(
            "{}/initdb -D {} --auth=trust -U postgres >/dev/null",
            bin.display(),
            data.display()
        ));
        if !out.status.success() {
            return skip(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let t = Throwaway { dir, bin, port };
        t.pg_ctl("start -w");
        Some(t)
    }

    /// Run `pg_ctl -D DATA <args>` as postgres; panics when it fails.
    pub fn pg_ctl(&self, args: &str) {
        let data = self.dir.path().join("data");
        let cmd = format!(
            "{}/pg_ctl -D {} -l {}/log -o '-p {} -k {} -c listen_addresses=127.0.0.1' {args}",
            self.bin.display(),
            data.display(),
            self.dir.path().display(),
            self.port,
            self.dir.path().display()
        );
        let out = std::process::Command::new("su")
            .args(["postgres", "-s", "/bin/sh", "-c", &cmd])
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl {args}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A fresh database on this cluster; its state URL.
    pub async fn database(&self, name: &str) -> String {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                self.port
            ),
            NoTls,
        )
        .await
        .expect("connect to the throwaway cluster");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = std::process::Command::new("su")
            .args([
                "postgres",
                "-s",
                "/bin/sh",
                "-c",
                &format!(
                    "{}/pg_ctl -D {} stop -m immediate",
                    self.bin.display(),
                    data.display()
                ),
            ])
            .output();
    }
}
