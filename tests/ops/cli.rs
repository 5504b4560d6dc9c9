//! `rekey status` and `rekey rotate`, run as the real binary against a
//! served snapshot.

use std::process::Output;

use tokio::process::Command;

use super::{OPS_ADMIN_TOKEN, SeenRotate, StatusServer, StatusServerOptions, ops_healthy_snapshot};
use crate::support::rekey_bin;

async fn rekey(args: &[&str]) -> Output {
    Command::new(rekey_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("run rekey")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Neither stream of a command's output may contain the admin token.
fn assert_no_token(out: &Output) {
    for stream in [&out.stdout, &out.stderr] {
        assert!(
            !text(stream).contains(OPS_ADMIN_TOKEN),
            "the admin token leaked into output:\n{}",
            text(stream)
        );
    }
}

#[tokio::test]
async fn rekey_status_prints_a_table_and_exits_1_when_a_policy_is_unhealthy() {
    let srv = StatusServer::start(StatusServerOptions::default()).await;
    let out = rekey(&["status", "--endpoint", &srv.endpoint]).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "gw is failing:\n{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("rekey "), "{stdout}");
    assert_eq!(
        lines[1], "  host ops-host, config /etc/rekey/rekey.toml, state /var/lib/rekey/state.db",
        "the header names the instance it reached"
    );
    let header = lines[2];
    for col in [
        "POLICY",
        "HEALTH",
        "CURRENT KEY",
        "EXPIRES IN",
        "NEXT CHECK",
        "LAST ROTATION",
        "ERROR",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let row = |name: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row {name:?} in\n{stdout}"))
    };
    let maas = row("maas-prod");
    assert!(maas.contains("ok"), "{maas}");
    assert!(maas.contains("app-main-20261122-r0001a1"), "{maas}");
    assert!(
        maas.contains("in 27d 23h") || maas.contains("in 28d"),
        "{maas}"
    );
    assert!(maas.contains("in 4m") || maas.contains("in 3m"), "{maas}");
    assert!(maas.contains("retiring 2d ago"), "{maas}");
    let gw = row("gw");
    assert!(gw.contains("failing"), "{gw}");
    assert!(gw.contains("(2 lineages)"), "{gw}");
    assert!(gw.contains("403 AuthFailure"), "the error is shown: {gw}");
    let svc_a = row("  └ svc-a");
    assert!(svc_a.contains("failing") && svc_a.contains("svc-a") && svc_a.contains("never"));
    assert!(svc_a.contains("provider answered 403"), "{svc_a}");
    assert!(row("  └ svc-b").contains("ok"));
    assert_no_token(&out);
    srv.stop().await;
}

#[tokio::test]
async fn rekey_status_exits_0_when_every_policy_is_healthy_and_json_passes_through() {
    let srv = StatusServer::start(StatusServerOptions {
        snapshot: ops_healthy_snapshot(chrono::Utc::now()),
        ..Default::default()
    })
    .await;
    let out = rekey(&["status", "--endpoint", &srv.endpoint]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));

    let out = rekey(&["status", "--endpoint", &srv.endpoint, "--json"]).await;
    assert_eq!(out.status.code(), Some(0));
    let served = srv.client().status_raw().await.unwrap();
    assert_eq!(text(&out.stdout).trim_end(), text(&served).trim_end());
    srv.stop().await;

    let srv = StatusServer::start(StatusServerOptions::default()).await;
    let out = rekey(&["status", "--endpoint", &srv.endpoint, "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "--json keeps the exit code");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["policies"][1]["health"], "failing");
    srv.stop().await;
}

#[tokio::test]
async fn rekey_status_says_it_cannot_reach_a_daemon_that_is_not_there() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let out = rekey(&["status", "--endpoint", &endpoint]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot reach rekey at {endpoint}: ")),
        "{stderr}"
    );

    let out = rekey(&["status", "--endpoint", "unix:/nonexistent/rekey.sock"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot reach rekey at unix:/nonexistent/rekey.sock: "),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn rekey_status_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let srv = StatusServer::start(StatusServerOptions {
        listen: rekey::config::ListenAddr::Unix(dir.path().join("s.sock")),
        snapshot: ops_healthy_snapshot(chrono::Utc::now()),
        ..Default::default()
    })
    .await;
    let out = rekey(&["status", "--endpoint", &srv.endpoint]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("maas-prod"));
    srv.stop().await;
}

#[tokio::test]
async fn rekey_rotate_with_a_token_file_is_accepted_and_prints_what_happened() {
    let srv = StatusServer::start(StatusServerOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{OPS_ADMIN_TOKEN}\n")).unwrap();
    let tf = token_file.to_str().unwrap();

    let out = rekey(&[
        "rotate",
        "maas-prod",
        "--endpoint",
        &srv.endpoint,
        "--token-file",
        tf,
        "--revoke-old-immediately",
    ])
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("rotation accepted for policy maas-prod"),
        "{stdout}"
    );
    assert!(stdout.contains("r-0001"), "{stdout}");
    assert_eq!(
        srv.seen(),
        vec![SeenRotate {
            policy: "maas-prod".into(),
            lineage: None,
            revoke_old_immediately: true,
        }]
    );
    assert_no_token(&out);

    // Refusals exit 1 and say why.
    let out = rekey(&[
        "rotate",
        "gw",
        "--endpoint",
        &srv.endpoint,
        "--token-file",
        tf,
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("409") && stderr.contains("already running"),
        "{stderr}"
    );
    assert_no_token(&out);

    let out = rekey(&[
        "rotate",
        "maas-prod",
        "--lineage",
        "ghost",
        "--endpoint",
        &srv.endpoint,
        "--token-file",
        tf,
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));

    // A wrong token: 401, and neither token is printed.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "rk_admin_not_it").unwrap();
    let out = rekey(&[
        "rotate",
        "maas-prod",
        "--endpoint",
        &srv.endpoint,
        "--token-file",
        wrong.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("401"), "{stderr}");
    assert!(!stderr.contains("rk_admin_not_it"), "{stderr}");
    assert_no_token(&out);
    srv.stop().await;
}

#[tokio::test]
async fn rekey_rotate_reads_the_token_and_endpoint_from_the_config() {
    let srv = StatusServer::start(StatusServerOptions::default()).await;
    let rekey::config::ListenAddr::Tcp(addr) = srv.listen else {
        unreachable!()
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::write(dir.path().join("admin-token"), OPS_ADMIN_TOKEN).unwrap();
    std::fs::write(dir.path().join("ob-secret"), "not-used-here").unwrap();
    let config = dir.path().join("rekey.toml");
    std::fs::write(
        &config,
        format!(
            r#"[daemon]
state = "{d}/state.db"
listen = "{addr}"
admin_token = {{ file = "{d}/admin-token" }}

[providers.ob]
kind = "oceanbase"
endpoint = "http://127.0.0.1:1"
org_id = "org-1"
project_id = "proj-1"
access_key_id = {{ file = "{d}/ob-secret" }}
access_key_secret = {{ file = "{d}/ob-secret" }}

[sinks.f]
kind = "file"
path = "{d}/{{lineage}}.env"

[[policy]]
name = "maas-prod"
provider = "ob"
match = "app-*"
schedule = "0 */15 * * * *"
rotate_before_expiry = "7d"
grace_period = "1h"
sinks = ["f"]
create = {{ action = "read" }}
"#
        ),
    )
    .unwrap();
    let out = rekey(&["rotate", "maas-prod", "-c", config.to_str().unwrap()]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(srv.seen().len(), 1);
    assert_no_token(&out);

    let out = rekey(&["rotate", "maas-prod", "--endpoint", &srv.endpoint]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--token-file"),
        "says where a token comes from: {}",
        text(&out.stderr)
    );
    srv.stop().await;
}

/// `rekey status -c FILE` asks the daemon at the config's `daemon.listen`
/// and needs none of the config's secrets (a root shell has no
/// `$CREDENTIALS_DIRECTORY`); when the daemon there runs another config, it
/// says so instead of silently reporting another instance.
#[tokio::test]
async fn rekey_status_reads_the_endpoint_from_the_config_without_resolving_secrets() {
    let srv = StatusServer::start(StatusServerOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let listen = srv.endpoint.trim_start_matches("http://");
    let config = dir.path().join("rekey.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nlisten = \"{listen}\"\nadmin_token = {{ credential = \"admin-token\" }}\n\n\
             [providers.ob]\nkind = \"oceanbase\"\norg_id = \"o\"\nproject_id = \"p\"\n\
             access_key_id = {{ credential = \"ob-ak\" }}\naccess_key_secret = {{ env = \"OB_SK_UNSET\" }}\n"
        ),
    )
    .unwrap();
    let out = Command::new(rekey_bin())
        .args(["status", "-c"])
        .arg(&config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("REKEY_CONFIG")
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(1),
        "gw is failing:\n{stdout}{stderr}"
    );
    assert!(stdout.contains(&format!("at {}", srv.endpoint)), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("maas-prod")),
        "{stdout}"
    );
    assert!(
        stderr.contains("runs /etc/rekey/rekey.toml, not "),
        "a daemon running another config is named: {stderr}"
    );
    assert!(!stderr.contains("cannot be resolved"), "{stderr}");
    srv.stop().await;
}

#[tokio::test]
async fn rekey_status_filters_by_policy_and_lineage_and_summarises_one_line_per_policy() {
    let srv = StatusServer::start(StatusServerOptions::default()).await;
    let only_maas = rekey(&[
        "status",
        "--endpoint",
        &srv.endpoint,
        "--policy",
        "maas-prod",
    ])
    .await;
    let stdout = text(&only_maas.stdout);
    assert_eq!(
        only_maas.status.code(),
        Some(0),
        "maas-prod alone is healthy:\n{stdout}"
    );
    assert!(!stdout.lines().any(|l| l.starts_with("gw")), "{stdout}");

    let one_lineage = rekey(&["status", "--endpoint", &srv.endpoint, "--lineage", "svc-b"]).await;
    let stdout = text(&one_lineage.stdout);
    assert!(
        stdout.contains("svc-b") && !stdout.contains("svc-a"),
        "{stdout}"
    );

    let due = rekey(&["status", "--endpoint", &srv.endpoint, "--due"]).await;
    let stdout = text(&due.stdout);
    assert!(
        stdout.contains("svc-a"),
        "the failing lineage is shown: {stdout}"
    );
    assert!(
        !stdout.contains("svc-b"),
        "the healthy one is not: {stdout}"
    );

    let summary = rekey(&["status", "--endpoint", &srv.endpoint, "--summary"]).await;
    let stdout = text(&summary.stdout);
    let rows: Vec<&str> = stdout.lines().skip(2).collect();
    assert_eq!(rows.len(), 2, "one line per policy:\n{stdout}");
    assert!(
        rows[0].starts_with("maas-prod") && rows[0].contains("ok"),
        "{stdout}"
    );
    assert!(
        rows[1].starts_with("gw")
            && rows[1].contains("failing")
            && rows[1].contains("2 lineage(s)"),
        "{stdout}"
    );
    srv.stop().await;
}
