//! `rekey dev`: the embedded default, like `vault server -dev`.
//!
//! Starts the OceanBase emulator in-process on loopback, writes a config, a
//! state DB and a file sink under `./rekey-dev/`, and runs the daemon with
//! short lifetimes and schedules (new keys live 90 s and are replaced a third
//! of the way before expiry; the old one lives 20 s more), so a rotation
//! happens every ~20 s across three lineages. It prints what it does and
//! where to look. The emulator's keys are saved to `emulator.json`, so
//! running it again resumes from the same state. Ctrl-C stops it cleanly.
//!
//! It takes `dev.lock` in the directory before writing anything, so a second
//! `rekey dev` there refuses without touching the running one's files. It
//! keeps an admin token in `secrets/admin-token` and prints the `rekey
//! rotate` line that uses it. When the default status port is taken it says
//! so and which port it used instead.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::daemon::{self, DaemonError, Options};
use crate::emulator::oceanbase::{self, EmulatedKey, OceanBaseEmulatorOptions};
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the OceanBase emulator: {0}")]
    Emulator(std::io::Error),
    #[error(
        "another `rekey dev` is running in {} (it holds {}); stop it first, or use --dir for a second one",
        .dir.display(),
        .lock.display()
    )]
    Busy { dir: PathBuf, lock: PathBuf },
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// New keys' lifetime in the emulator.
const LIFETIME: Duration = Duration::from_secs(90);

/// One emulator key as saved between runs (secrets included: this is the
/// emulator's own state, in a 0600 file in the dev directory).
#[derive(Serialize, Deserialize)]
struct SavedKey {
    id: String,
    name: String,
    api_key: String,
    action: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DevError + 'a {
    move |source| DevError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), DevError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("cannot write", &tmp))?;
    f.write_all(contents).map_err(io("cannot write", &tmp))?;
    f.sync_all().map_err(io("cannot sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("cannot rename onto", path))?;
    Ok(())
}

fn save(emu: &oceanbase::EmulatorHandle, path: &Path) -> Result<(), DevError> {
    let keys: Vec<SavedKey> = emu
        .keys()
        .into_iter()
        .map(|k| SavedKey {
            id: k.id,
            name: k.name,
            api_key: k.api_key.expose().to_string(),
            action: k.action,
            created_at: k.created_at,
            updated_at: k.updated_at,
            expires_at: k.expires_at,
        })
        .collect();
    let text = zeroize::Zeroizing::new(serde_json::to_string_pretty(&keys).unwrap_or_default());
    write_private(path, text.as_bytes())
}

fn mkdir_private(path: &Path) -> Result<(), DevError> {
    std::fs::create_dir_all(path).map_err(io("cannot create", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(io("cannot chmod", path))
}

/// An exclusive `flock` on `DIR/dev.lock`, held while `rekey dev` runs.
struct DevLock(#[allow(dead_code)] std::fs::File);

impl DevLock {
    fn acquire(dir: &Path) -> Result<Self, DevError> {
        use std::os::fd::AsRawFd;
        let path = dir.join("dev.lock");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io("cannot open", &path))?;
        // SAFETY: a valid descriptor owned by `f`; released when it closes.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(DevError::Busy {
                dir: dir.to_path_buf(),
                lock: path,
            });
        }
        Ok(DevLock(f))
    }
}

/// The dev admin token: kept across runs, 32 random bytes in hex.
fn admin_token(path: &Path) -> Result<(), DevError> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
        return Ok(());
    }
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    rand::RngCore::fill_bytes(&mut rand::rng(), bytes.as_mut());
    let hex = zeroize::Zeroizing::new(hex::encode(bytes.as_ref()));
    write_private(path, hex.as_bytes())
}

/// `127.0.0.1:9477` when free; else a free port chosen now (so the config
/// names the real port and `rekey status -c` finds it).
fn pick_listen() -> (String, bool) {
    if std::net::TcpListener::bind("127.0.0.1:9477").is_ok() {
        return ("127.0.0.1:9477".to_string(), false);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0);
    (format!("127.0.0.1:{port}"), true)
}

/// Run the embedded default until Ctrl-C.
pub async fn run(dir: &Path) -> Result<(), DevError> {
    let dir = std::path::absolute(dir).map_err(io("cannot resolve", dir))?;
    mkdir_private(&dir)?;
    // Before anything else is written: a second `rekey dev` here stops now.
    let _lock = DevLock::acquire(&dir)?;
    mkdir_private(&dir.join("keys"))?;
    mkdir_private(&dir.join("secrets"))?;
    let saved_path = dir.join("emulator.json");

    let emu = oceanbase::start(
        OceanBaseEmulatorOptions {
            lifetime: Some(LIFETIME),
            ..Default::default()
        },
        "127.0.0.1:0".parse().expect("loopback address"),
    )
    .await
    .map_err(DevError::Emulator)?;
    let resumed = match std::fs::read_to_string(&saved_path) {
        Ok(text) => {
            let keys: Vec<SavedKey> = serde_json::from_str(&text).unwrap_or_default();
            let n = keys.len();
            for k in keys {
                emu.restore_key(EmulatedKey {
                    id: k.id,
                    name: k.name,
                    api_key: Secret::new(k.api_key),
                    action: k.action,
                    created_at: k.created_at,
                    updated_at: k.updated_at,
                    expires_at: k.expires_at,
                });
            }
            Some(n)
        }
        Err(_) => {
            let now = Utc::now();
            let secs = chrono::Duration::seconds;
            // Three lineages at different ages: one is due at once, the
            // others follow, so rotations keep coming.
            emu.insert_key("app-batch", now - secs(80), Some(now + secs(10)));
            emu.insert_key("app-web", now - secs(45), Some(now + secs(45)));
            emu.insert_key("app-worker", now - secs(15), Some(now + secs(75)));
            None
        }
    };
    save(&emu, &saved_path)?;

    let opts = emu.options();
    write_private(&dir.join("secrets/ob-ak"), opts.access_key_id.as_bytes())?;
    write_private(
        &dir.join("secrets/ob-sk"),
        opts.access_key_secret.expose().as_bytes(),
    )?;
    let token_path = dir.join("secrets/admin-token");
    admin_token(&token_path)?;
    let (listen, port_taken) = pick_listen();
    let config = format!(
        r#"# Written by `rekey dev` on each start (the emulator's port changes).
# A real deployment looks like config/rekey.example.toml.

[daemon]
state = "{dir}/state.db"
listen = "{listen}"
admin_token = {{ file = "{dir}/secrets/admin-token" }}
max_concurrent_rotations = 4
shutdown_timeout = "10s"

[providers.ob]
kind = "oceanbase"
endpoint = "{endpoint}"
org_id = "{org}"
project_id = "{project}"
access_key_id = {{ file = "{dir}/secrets/ob-ak" }}
access_key_secret = {{ file = "{dir}/secrets/ob-sk" }}

[sinks.files]
kind = "file"
path = "{dir}/keys/{{lineage}}.env"
format = "env"

[[policy]]
name = "dev"
provider = "ob"
match = "app-*"
schedule = "*/5 * * * * *"          # check every 5 seconds
rotate_before_expiry = "33%"         # replace a key a third of the way before it expires
grace_period = "20s"                 # the old key lives 20 s after the new one is published
sinks = ["files"]
create = {{ action = "read" }}
"#,
        dir = dir.display(),
        endpoint = emu.endpoint(),
        org = opts.org_id,
        project = opts.project_id,
    );
    let config_path = dir.join("rekey.toml");
    write_private(&config_path, config.as_bytes())?;

    println!("rekey dev: the embedded default.");
    match resumed {
        Some(n) => println!(
            "  Resuming: the OceanBase emulator is back with its {n} saved keys, and the state DB remembers every rotation."
        ),
        None => println!(
            "  A local OceanBase Cloud emulator holds three keys: app-batch (expires in 10 s), app-web and app-worker."
        ),
    }
    println!("  emulator   {} (new keys live 90 s)", emu.endpoint());
    println!("  config     {}", config_path.display());
    println!("  state      {}/state.db", dir.display());
    println!(
        "  keys       {}/keys/<lineage>.env  (each lineage's current key)",
        dir.display()
    );
    println!(
        "  Every 5 s rekey checks; a key is replaced when a third of its life is left, and the old"
    );
    println!(
        "  one is deleted 20 s after the new one is written. Expect a rotation about every 20 s."
    );

    let saver_stop = tokio_util::sync::CancellationToken::new();
    let emu = Arc::new(emu);
    let saver = {
        let emu = emu.clone();
        let stop = saver_stop.clone();
        let path = saved_path.clone();
        tokio::spawn(async move {
            let mut last: Vec<String> = Vec::new();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                let ids: Vec<String> = emu.keys().into_iter().map(|k| k.id).collect();
                if ids != last {
                    if let Err(e) = save(&emu, &path) {
                        tracing::warn!(error = %e, "cannot save the emulator's keys");
                    }
                    last = ids;
                }
            }
        })
    };
    let config_for_print = config_path.clone();
    let token_for_print = token_path.clone();
    let on_ready: daemon::OnReady = Arc::new(move |endpoint: &str| {
        if port_taken {
            println!(
                "  note       port 9477 is taken (another rekey?); this one listens on {endpoint}"
            );
        }
        println!("  status     {endpoint}/status   metrics {endpoint}/metrics");
        let c = config_for_print.display();
        println!("  Try:       rekey status -c {c}");
        println!("             rekey plan -c {c}");
        println!("             rekey history -c {c}");
        println!(
            "             rekey rotate dev --lineage app-web --endpoint {endpoint} --token-file {}",
            token_for_print.display()
        );
        println!(
            "  admin token {} (for POST /rotate; kept across runs)",
            token_for_print.display()
        );
        println!("  Ctrl-C stops; `rekey dev` again resumes from the same state.");
    });
    let result = daemon::run(
        &config_path,
        Options {
            on_ready: Some(on_ready),
            ..Default::default()
        },
    )
    .await;
    saver_stop.cancel();
    let _ = saver.await;
    save(&emu, &saved_path)?;
    result?;
    println!("rekey dev: stopped. State is in {}.", dir.display());
    Ok(())
}
