//! `rekey migrate-state` (issue 15): the real binary copies a SQLite state
//! into an empty PostgreSQL state on the local server, refuses a target
//! that holds anything and a source a daemon holds, never echoes a
//! password, and says what to do with the seal key. Skips with a hint
//! when no PostgreSQL answers at 127.0.0.1:5432 outside CI; fails in CI.

use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use rekey::state::{NewRotation, PgOptions, Store};

const BIN: &str = env!("CARGO_BIN_EXE_rekey");

/// Superuser SQL on database `db` of the local server.
fn admin(db: &str, sql: &str) -> Result<(), String> {
    let url = format!("postgres://postgres@127.0.0.1:5432/{db}");
    let sql = sql.to_string();
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
}

/// A fresh database, dropped with the guard; `None` when skipped.
struct Db(String);

impl Db {
    fn new() -> Option<Db> {
        let name = format!(
            "rekey_it_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        match admin("test", &format!("CREATE DATABASE {name}")) {
            Ok(()) => Some(Db(name)),
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("CI needs PostgreSQL at 127.0.0.1:5432: {e}")
            }
            Err(e) => {
                eprintln!(
                    "skipping: no PostgreSQL at 127.0.0.1:5432 ({e}); apt-get install postgresql"
                );
                None
            }
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.0)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = admin(
            "test",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0),
        );
    }
}

fn rotation(lineage: &str) -> NewRotation {
    NewRotation {
        policy: "maas".into(),
        lineage: lineage.into(),
        provider: "ob".into(),
        reason: "expiring".into(),
        message: "m".into(),
        trigger: "schedule".into(),
        revoke_old_immediately: false,
        old_key_id: None,
        old_key_name: None,
        sinks: vec!["file".into()],
        grace: Duration::from_secs(60),
        at: Utc::now(),
    }
}

/// `rekey migrate-state --from FILE --to URL`.
fn migrate(file: &std::path::Path, url: &str) -> std::process::Output {
    Command::new(BIN)
        .args(["migrate-state", "--from"])
        .arg(file)
        .args(["--to", url])
        .output()
        .unwrap()
}

#[test]
fn migrate_state_copies_a_sqlite_state_into_an_empty_postgres_one_and_names_the_seal_key() {
    let Some(db) = Db::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state.db");
    let ids: Vec<String> = {
        let s = Store::open(&file).unwrap();
        ["app", "db", "web"]
            .iter()
            .map(|l| s.begin_rotation(&rotation(l)).unwrap().unwrap())
            .collect()
    };
    // A daemon holding the file: refused, nothing copied.
    let holder = Store::open(&file).unwrap();
    let out = migrate(&file, &db.url());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another rekey is already running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(holder);

    let out = migrate(&file, &db.url());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("rotations"), "{stdout}");
    assert!(stdout.contains("counts match"), "{stdout}");
    assert!(
        stdout.contains(&format!("{}.key", file.display())) && stdout.contains("daemon.seal_key"),
        "{stdout}"
    );
    let pg = Store::open_postgres(&PgOptions::from_url(&db.url()).unwrap()).unwrap();
    let mut copied: Vec<String> = pg
        .history(None, 10)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    copied.sort();
    let mut ids = ids;
    ids.sort();
    assert_eq!(copied, ids);
    drop(pg);

    // A second copy would merge two states: refused.
    let out = migrate(&file, &db.url());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
}

#[test]
fn migrate_state_refuses_a_password_in_the_url_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state.db");
    drop(Store::open(&file).unwrap());
    let out = migrate(&file, "postgres://rekey:hunter2-pw@127.0.0.1:5432/state");
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("state_password"), "{all}");
    assert!(!all.contains("hunter2"), "{all}");
}
