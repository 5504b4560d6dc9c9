//! Untrusted input (issue 10), against the real binary: hostile key names,
//! receivers that echo, a proxy in the environment, forged log lines, the
//! hook's environment and the local endpoint. Each test asserts the safe
//! outcome on everything the daemon emitted.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use rekey::emulator::oceanbase;

use crate::e2e::{Env, tail, terminate};
use crate::support::receiver::{Reply, WebhookReceiver, encodings, random_whsec};

const BIN: &str = env!("CARGO_BIN_EXE_rekey");

/// A config over `app-*` with `sinks_toml` (defining `[sinks.out]`) and
/// `extra` appended (e.g. `[notify.ops]`); `daemon_extra` goes in `[daemon]`.
fn config(env: &Env, sinks_toml: &str, daemon_extra: &str, extra: &str) -> PathBuf {
    let cfg = format!(
        r#"
[daemon]
state = "{state}"
listen = "127.0.0.1:0"
shutdown_timeout = "10s"
{daemon_extra}

[providers.ob]
kind = "oceanbase"
endpoint = "{endpoint}"
org_id = "{org}"
project_id = "{project}"
access_key_id = {{ file = "{ak}" }}
access_key_secret = {{ file = "{sk}" }}
timeout = "5s"

{sinks_toml}

[[policy]]
name = "maas"
provider = "ob"
match = "app-*"
schedule = "* * * * * *"
rotate_before_expiry = "7d"
grace_period = "2s"
max_attempts = 3
sinks = ["out"]
create = {{ action = "read" }}

{extra}
"#,
        state = env.path("state.db").display(),
        endpoint = env.emu.endpoint(),
        org = oceanbase::DEFAULT_ORG_ID,
        project = oceanbase::DEFAULT_PROJECT_ID,
        ak = env.path("ak").display(),
        sk = env.path("sk").display(),
    );
    let p = env.path("rekey.toml");
    std::fs::write(&p, cfg).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// Start `rekey run` with `vars` added to a minimal environment; stderr to
/// `daemon.log` (not a terminal).
fn spawn(env: &Env, cfg: &Path, vars: &[(&str, &str)]) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env.path("daemon.log"))
        .unwrap();
    Command::new(BIN)
        .args(["--log-level", "rekey=trace,info", "run", "-c"])
        .arg(cfg)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REKEY_BACKOFF_BASE_MS", "100")
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// The `http://…` endpoint the daemon logged at start-up.
async fn endpoint(env: &Env) -> String {
    let mut found = None;
    env.wait_for("the daemon's endpoint", Duration::from_secs(30), |e| {
        found = e.log().split_whitespace().find_map(|w| {
            w.strip_prefix("endpoint=")
                .map(|u| u.trim_matches('"').to_string())
        });
        found.is_some()
    })
    .await;
    found.unwrap()
}

/// One raw HTTP/1.1 exchange on TCP; the whole answer as text.
fn http(endpoint: &str, request: &str) -> String {
    let addr = endpoint.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn get(endpoint: &str, path: &str) -> String {
    http(
        endpoint,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    )
}

/// Every file and directory under `root`, links not followed.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            out.push(e.path());
        }
    }
    out
}

fn all_secrets(env: &Env) -> Vec<String> {
    env.emu
        .keys()
        .iter()
        .map(|k| k.api_key.expose().to_string())
        .collect()
}

#[tokio::test]
async fn a_traversing_key_name_publishes_nothing_outside_the_sink_directory() {
    let env = Env::new().await;
    std::fs::create_dir_all(env.path("escaped")).unwrap();
    let past = Utc::now() - chrono::Duration::hours(1);
    let created = Utc::now() - chrono::Duration::days(29);
    for name in [
        "app-x/../../escaped/pwn",
        "app-y/../../state.db.key",
        "app-{policy}",
        "app-a b\n",
        "app-ok",
    ] {
        env.emu.insert_key(name, created, Some(past));
    }
    let sinks = format!(
        "[sinks.out]\nkind = \"file\"\npath = \"{}/{{lineage}}.env\"\nformat = \"env\"",
        env.path("keys").display()
    );
    let cfg = config(&env, &sinks, "", "");
    let key_file = std::fs::read(env.path("state.db.key")).ok();
    let mut d = spawn(&env, &cfg, &[]);
    env.wait_for("app-ok's rotation", Duration::from_secs(60), |e| {
        e.completed() >= 1 && e.path("keys/app-ok.env").exists()
    })
    .await;
    // A few more checks: every hostile key had its chance to be planned.
    let checks = |e: &Env| e.log().matches("check done").count();
    let seen = checks(&env);
    env.wait_for("two more checks", Duration::from_secs(30), |e| {
        checks(e) >= seen + 2
    })
    .await;
    assert_eq!(terminate(&mut d), 0);
    let root = env.path("");
    for p in walk(&root) {
        let rel = p
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            !rel.starts_with("escaped/") && !rel.contains("pwn"),
            "{rel} was written outside the sink directory"
        );
        if rel.starts_with("keys/") {
            assert_eq!(
                rel, "keys/app-ok.env",
                "unexpected file under the sink directory"
            );
        }
    }
    if let Some(k) = key_file {
        assert_eq!(std::fs::read(env.path("state.db.key")).unwrap(), k);
    }
}

#[tokio::test]
async fn a_receiver_echoing_the_secret_leaves_it_in_no_log_status_db_history_or_notification() {
    let env = Env::new().await;
    env.seed(1, 1);
    let sink_secret = random_whsec();
    let sink = WebhookReceiver::start(&[&sink_secret]).await;
    sink.script((0..100).map(|_| Reply::EchoSecret(500)));
    let ops_secret = random_whsec();
    let ops = WebhookReceiver::start(&[&ops_secret]).await;
    std::fs::write(env.path("sink-whsec"), &sink_secret).unwrap();
    std::fs::write(env.path("ops-whsec"), &ops_secret).unwrap();
    let sinks = format!(
        "[sinks.out]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = {{ file = \"{}\" }}\ntimeout = \"5s\"",
        sink.url,
        env.path("sink-whsec").display()
    );
    let notify = format!(
        "[notify.ops]\nurl = \"{}\"\nsecret = {{ file = \"{}\" }}",
        ops.url,
        env.path("ops-whsec").display()
    );
    let cfg = config(&env, &sinks, "", &notify);
    let mut d = spawn(&env, &cfg, &[]);
    let ep = endpoint(&env).await;
    // The receiver has echoed the new key several times and the rotation
    // gave up (rotation.failed went out).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let failed = ops
            .received()
            .iter()
            .any(|r| r.body_text().contains("rotation.failed"));
        if failed && sink.received().len() >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no rotation.failed after {} sink attempts\n{}",
            sink.received().len(),
            tail(&env.log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = get(&ep, "/status");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(terminate(&mut d), 0);

    let mut outputs: Vec<(String, String)> = vec![
        ("the daemon log".into(), env.log()),
        ("GET /status".into(), status),
    ];
    for r in ops.received() {
        outputs.push(("a notification".into(), r.body_text()));
    }
    for args in [vec!["history", "-c"], vec!["history", "--json", "-c"]] {
        let out = Command::new(BIN).args(&args).arg(&cfg).output().unwrap();
        outputs.push((
            format!("rekey {}", args.join(" ")),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        ));
    }
    let mut db = Vec::new();
    for f in ["state.db", "state.db-wal"] {
        db.extend(std::fs::read(env.path(f)).unwrap_or_default());
    }
    outputs.push((
        "the state DB".into(),
        String::from_utf8_lossy(&db).into_owned(),
    ));
    // The errors say what came back, without any of it.
    assert!(
        outputs[0].1.contains("HTTP 500 (application/json"),
        "the log names the status and type:\n{}",
        tail(&outputs[0].1, 30)
    );
    let secrets = all_secrets(&env);
    assert!(secrets.len() >= 2, "a new key was created");
    for s in &secrets {
        for enc in encodings(s) {
            for (what, text) in &outputs {
                assert!(
                    !text.contains(&enc),
                    "{what} holds an echo of the secret ({enc})"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_proxy_in_the_environment_never_carries_a_loopback_secret() {
    let env = Env::new().await;
    env.seed(1, 1);
    // A "proxy" that counts connections and answers 200 to anything.
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for s in proxy.incoming() {
            let Ok(mut s) = s else { continue };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let secret = random_whsec();
    let sink = WebhookReceiver::start(&[&secret]).await;
    std::fs::write(env.path("whsec"), &secret).unwrap();
    let sinks = format!(
        "[sinks.out]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = {{ file = \"{}\" }}",
        sink.url.replace("127.0.0.1", "localhost"),
        env.path("whsec").display()
    );
    let cfg = config(&env, &sinks, "", "");
    let mut d = spawn(
        &env,
        &cfg,
        &[
            ("HTTP_PROXY", &proxy_url),
            ("http_proxy", &proxy_url),
            ("HTTPS_PROXY", &proxy_url),
            ("ALL_PROXY", &proxy_url),
        ],
    );
    env.wait_for("a completed rotation", Duration::from_secs(60), |e| {
        e.completed() >= 1
    })
    .await;
    assert_eq!(terminate(&mut d), 0);
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a request went through the proxy"
    );
    let got = sink.received();
    assert!(
        got.iter().any(|r| r.body_text().contains("key.published")),
        "the receiver itself got the key"
    );
}

#[tokio::test]
async fn no_url_key_name_or_request_id_can_forge_a_journal_line() {
    let env = Env::new().await;
    let created = Utc::now() - chrono::Duration::days(29);
    let soon = Utc::now() + chrono::Duration::hours(6);
    env.emu.insert_key(
        "app-\n<2>forged by a key name\x1b[2J\r",
        created,
        Some(soon),
    );
    env.emu.insert_key("app-fine", created, Some(soon));
    let sinks = format!(
        "[sinks.out]\nkind = \"file\"\npath = \"{}/{{lineage}}.env\"",
        env.path("keys").display()
    );
    std::fs::write(env.path("admin-token"), "tok-123456").unwrap();
    let daemon = format!(
        "admin_token = {{ file = \"{}\" }}",
        env.path("admin-token").display()
    );
    let cfg = config(&env, &sinks, &daemon, "");
    // JOURNAL_STREAM with stderr not a terminal: lines carry `<N>` prefixes.
    let mut d = spawn(&env, &cfg, &[("JOURNAL_STREAM", "8:12345")]);
    let ep = endpoint(&env).await;
    for (path, auth) in [
        ("/rotate/x%0A%3C2%3Eforged%20by%20a%20URL", ""),
        (
            "/rotate/x%0D%0A%3C2%3Eforged",
            "Authorization: Bearer tok-123456\r\n",
        ),
        ("/rotate/maas?lineage=x%0A%3C2%3Eforged", ""),
        ("/status/x%0A%3C2%3Eforged", ""),
        ("/nothing%0A%3C2%3Eforged", ""),
    ] {
        let method = if path.starts_with("/rotate") {
            "POST"
        } else {
            "GET"
        };
        let answer = http(
            &ep,
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}X-Request-Id: r\n<2>forged\r\nConnection: close\r\n\r\n"
            ),
        );
        assert!(!answer.is_empty(), "{path}");
    }
    env.wait_for("a completed rotation", Duration::from_secs(60), |e| {
        e.completed() >= 1
    })
    .await;
    assert_eq!(terminate(&mut d), 0);
    let log = env.log();
    assert!(
        log.contains("forged"),
        "the hostile name was seen and logged (escaped)"
    );
    for line in log.lines() {
        let prio = line
            .strip_prefix('<')
            .and_then(|r| r.split_once('>'))
            .and_then(|(n, _)| n.parse::<u8>().ok());
        assert!(
            matches!(prio, Some(3..=7)),
            "a line without rekey's own priority prefix: {line:?}"
        );
        assert!(!line.contains('\x1b') && !line.contains('\r'), "{line:?}");
    }
}

#[tokio::test]
async fn an_on_publish_hook_gets_only_the_documented_environment() {
    let env = Env::new().await;
    env.seed(1, 1);
    let out = env.path("hook-env");
    let sinks = format!(
        "[sinks.out]\nkind = \"file\"\npath = \"{keys}/{{lineage}}.env\"\non_publish = [\"/bin/sh\", \"-c\", \"env > '{out}'\"]\npass_env = [\"MYAPP_SOCKET\"]",
        keys = env.path("keys").display(),
        out = out.display()
    );
    let cfg = config(&env, &sinks, "", "");
    let mut d = spawn(
        &env,
        &cfg,
        &[
            ("LANG", "C.UTF-8"),
            ("MYAPP_SOCKET", "/run/myapp.sock"),
            ("OB_SK", "provider-secret-in-env"),
            ("CREDENTIALS_DIRECTORY", "/run/credentials/rekey.service"),
            ("NOTIFY_SOCKET", "/run/systemd/notify"),
            ("HOME", "/root"),
        ],
    );
    env.wait_for("the hook to run", Duration::from_secs(60), |_| out.exists())
        .await;
    assert_eq!(terminate(&mut d), 0);
    let text = std::fs::read_to_string(&out).unwrap();
    let mut names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        // Set by the shell itself.
        .filter(|k| !matches!(*k, "PWD" | "SHLVL" | "_"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "LANG",
            "MYAPP_SOCKET",
            "PATH",
            "REKEY_EXPIRES_AT",
            "REKEY_FILE",
            "REKEY_KEY_ID",
            "REKEY_KEY_NAME",
            "REKEY_LINEAGE",
            "REKEY_POLICY",
        ],
        "{text}"
    );
    assert!(!text.contains("provider-secret-in-env"));
}

#[tokio::test]
async fn the_admin_socket_takes_posts_while_tcp_serves_gets_to_loopback_hosts_only() {
    let env = Env::new().await;
    env.seed(1, 0);
    let sinks = format!(
        "[sinks.out]\nkind = \"file\"\npath = \"{}/{{lineage}}.env\"",
        env.path("keys").display()
    );
    let sock = env.path("admin.sock");
    // SAFETY: getgid cannot fail.
    let gid = unsafe { libc::getgid() };
    let daemon = format!(
        "admin_listen = \"unix:{}\"\nadmin_group = \"{gid}\"\nallowed_hosts = [\"rekey.internal\"]",
        sock.display()
    );
    let cfg = config(&env, &sinks, &daemon, "");
    let mut d = spawn(&env, &cfg, &[]);
    let ep = endpoint(&env).await;
    env.wait_for("the admin socket", Duration::from_secs(30), |_| {
        sock.exists()
    })
    .await;
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), gid);

    // GETs on TCP, to loopback names, IP literals and listed hosts only.
    assert!(get(&ep, "/healthz").starts_with("HTTP/1.1 200"));
    for (host, status) in [
        ("127.0.0.1", "200"),
        ("rekey.internal:9477", "200"),
        ("evil.example", "421"),
        ("localhost.evil.example:80", "421"),
    ] {
        let answer = http(
            &ep,
            &format!("GET /status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        );
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{host}: {answer}"
        );
    }
    // POSTs are not served on TCP.
    let answer = http(
        &ep,
        "POST /rotate/maas HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("admin socket"), "{answer}");
    // `rekey rotate -c` finds the socket and needs no token there (once a
    // check has listed the keys).
    env.wait_for("a check", Duration::from_secs(30), |e| {
        e.log().contains("check done")
    })
    .await;
    let out = Command::new(BIN)
        .args(["rotate", "maas", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every admin command on the socket needs no token either (an unknown
    // rotation is a 404, not a 401/403).
    for path in ["/retry/r-unknown", "/abandon/r-unknown"] {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 404"), "{path}: {answer}");
        // And on TCP they are refused, pointing at the socket.
        let answer = http(
            &ep,
            &format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        );
        assert!(answer.starts_with("HTTP/1.1 403"), "{path}: {answer}");
    }

    // Three hundred idle sockets do not starve /healthz.
    let idle: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(ep.trim_start_matches("http://")).unwrap())
        .collect();
    let started = Instant::now();
    let answer = get(&ep, "/healthz");
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Bounded well below the header read timeout (3 s) the idle ones wait out.
    assert!(took < Duration::from_millis(1500), "/healthz took {took:?}");
    drop(idle);
    assert_eq!(terminate(&mut d), 0);
    assert!(!sock.exists(), "the admin socket is removed on the way out");
}

/// A create response that fails to parse is described, never quoted: it
/// may hold the new key.
#[test]
fn a_create_response_that_fails_to_parse_is_never_quoted() {
    use rekey::provider::oceanbase::parse_create;
    let key = "sk_0123456789abcdef0123456789abcdef";
    for body in [
        format!(r#"{{"success":true,"data":{{"apiKey":"{key}","createdAt":"{key}"}}}}"#),
        format!(r#"{{"success":true,"data":{{"apiKey":{{"v":"{key}"}}}}}}"#),
        format!(r#"{{"success":true,"data":{{"apiKey":"{key}","name":7}}}}"#),
        format!(r#"{{"success":true,"data":{{"apiKey":"{key}""#),
        format!("<html>{key}</html>"),
    ] {
        match parse_create(body.as_bytes()) {
            Err(m) => {
                for enc in encodings(key) {
                    assert!(!m.contains(&enc), "{m}");
                }
                assert!(!m.contains("0123456789abcdef"), "{m}");
            }
            Ok(_) => panic!("accepted {body}"),
        }
    }
}
