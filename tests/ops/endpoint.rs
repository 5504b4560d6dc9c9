//! The status endpoint over HTTP: document shape, health, auth on POST,
//! limits, Unix sockets.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use axum::http::{Method, StatusCode, header};
use rekey::config::ListenAddr;
use rekey::secret::Secret;
use rekey::status::client::Response;
use rekey::status::server::{self, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    FakeDaemon, OPS_ADMIN_TOKEN, SeenRotate, StatusServer, StatusServerOptions, ops_snapshot,
};

fn json(resp: &Response) -> serde_json::Value {
    serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&resp.body)))
}

fn keys_of(v: &serde_json::Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    k.sort();
    k
}

fn assert_has(v: &serde_json::Value, fields: &[&str]) {
    let have = keys_of(v);
    for f in fields {
        assert!(have.contains(f), "missing field {f:?} in {v}");
    }
}

/// Send raw bytes to a TCP endpoint and read until the server closes.
async fn raw_http(listen: &ListenAddr, request: &[u8]) -> String {
    let ListenAddr::Tcp(addr) = listen else {
        panic!("raw_http needs TCP")
    };
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("server answers and closes")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn status_json_has_the_documented_fields() {
    let srv = StatusServer::start(StatusServerOptions::default()).await;
    let resp = srv
        .client()
        .send(Method::GET, "/status", None)
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.headers[header::CONTENT_TYPE], "application/json");
    let doc = json(&resp);
    assert_has(&doc, &["version", "started_at", "policies"]);
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    let policies = doc["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 2);
    for p in policies {
        assert_has(
            p,
            &[
                "name",
                "provider",
                "health",
                "next_check_at",
                "last_check_at",
                "keys",
                "last_rotation",
            ],
        );
        for k in p["keys"].as_array().unwrap() {
            assert_has(
                k,
                &["id", "name", "lineage", "created_at", "expires_at", "state"],
            );
            let state = k["state"].as_str().unwrap();
            assert!(
                ["current", "pending", "retiring", "retired", "stale"].contains(&state),
                "{state}"
            );
        }
        assert_has(
            &p["last_rotation"],
            &["id", "state", "started_at", "finished_at", "error"],
        );
    }
    assert_eq!(policies[0]["health"], "ok");
    assert_eq!(policies[1]["health"], "failing");
    assert_eq!(policies[0]["keys"][1]["state"], "retiring");
    // RFC 3339 timestamps; no expiry is null, not absent.
    assert!(
        chrono::DateTime::parse_from_rfc3339(doc["started_at"].as_str().unwrap()).is_ok(),
        "{doc}"
    );
    assert!(policies[1]["keys"][0]["expires_at"].is_null());

    // A republished snapshot is served once rendered off the request path
    // (DESIGN §4): until then a request gets the previous complete body,
    // never a mix or an error.
    let mut next = ops_snapshot(chrono::Utc::now());
    next.policies.truncate(1);
    srv.status.store(next);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let resp = srv
            .client()
            .send(Method::GET, "/status", None)
            .await
            .unwrap();
        assert_eq!(resp.status, StatusCode::OK);
        let n = json(&resp)["policies"].as_array().unwrap().len();
        if n == 1 {
            break;
        }
        assert_eq!(n, 2, "the previous body or the new one");
        assert!(
            std::time::Instant::now() < deadline,
            "the republished snapshot was never served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn status_of_one_policy_and_404_json_for_an_unknown_one() {
    let srv = StatusServer::start(StatusServerOptions::default()).await;
    let c = srv.client();
    let resp = c.send(Method::GET, "/status/gw", None).await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    let p = json(&resp);
    assert_eq!(p["name"], "gw");
    assert_eq!(p["provider"], "tencent");
    assert_eq!(p["keys"].as_array().unwrap().len(), 2);

    let resp = c.send(Method::GET, "/status/nope", None).await.unwrap();
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    let err = json(&resp);
    assert_eq!(err["error"], "unknown policy \"nope\"");
    assert_eq!(err["policies"], serde_json::json!(["maas-prod", "gw"]));

    let resp = c.send(Method::GET, "/nowhere", None).await.unwrap();
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert!(json(&resp)["error"].as_str().unwrap().contains("/healthz"));
    srv.stop().await;
}

#[tokio::test]
async fn healthz_is_ok_while_the_loop_beats_and_stalled_after_max_age() {
    let srv = StatusServer::start(StatusServerOptions {
        liveness_max_age: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let c = srv.client();
    let resp = c.send(Method::GET, "/healthz", None).await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(&resp.body[..], b"ok\n");

    tokio::time::sleep(Duration::from_millis(450)).await;
    let resp = c.send(Method::GET, "/healthz", None).await.unwrap();
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = String::from_utf8_lossy(&resp.body).into_owned();
    assert!(body.starts_with("stalled"), "{body}");

    srv.liveness.beat();
    let resp = c.send(Method::GET, "/healthz", None).await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    srv.stop().await;
}

#[tokio::test]
async fn metrics_are_served_as_prometheus_text() {
    let srv = StatusServer::start(StatusServerOptions::default()).await;
    srv.metrics
        .init_policy("maas-prod", &["app-env".into()], "ob-prod");
    let resp = srv
        .client()
        .send(Method::GET, "/metrics", None)
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(
        resp.headers[header::CONTENT_TYPE],
        "text/plain; version=0.0.4"
    );
    let text = String::from_utf8(resp.body.to_vec()).unwrap();
    assert!(
        text.contains(r#"rekey_rotations_total{policy="maas-prod",result="completed"} 0"#),
        "{text}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn rotate_needs_the_right_bearer_token() {
    let srv = StatusServer::start(StatusServerOptions::default()).await;
    // The fake daemon knows an observe-mode policy; the snapshot must too
    // (the endpoint refuses a policy its snapshot does not know).
    let mut snap = (*srv.status.load()).clone();
    let mut observe = (*snap.policies[0]).clone();
    observe.name = "observe-only".into();
    snap.policies.push(std::sync::Arc::new(observe));
    srv.status.store(snap);
    let c = srv.client();

    let resp = c
        .send(Method::POST, "/rotate/maas-prod", None)
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers[header::WWW_AUTHENTICATE],
        "Bearer realm=\"rekey\""
    );

    let wrong = Secret::new("rk_admin_wrong_guess");
    let resp = c
        .send(Method::POST, "/rotate/maas-prod", Some(&wrong))
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
    assert_eq!(json(&resp)["error"], "wrong admin token");
    let raw = raw_http(
        &srv.listen,
        format!(
            "POST /rotate/maas-prod HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {OPS_ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    assert!(
        srv.seen().is_empty(),
        "unauthenticated requests never reach the daemon"
    );

    let token = Secret::new(OPS_ADMIN_TOKEN);
    let resp = c
        .send(
            Method::POST,
            "/rotate/maas-prod?lineage=app-main&revoke_old_immediately=true",
            Some(&token),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{:?}", resp.body);
    let body = json(&resp);
    assert_eq!(body["result"], "accepted");
    assert_eq!(body["rotations"], serde_json::json!(["r-0001"]));
    assert_eq!(
        srv.seen(),
        vec![SeenRotate {
            policy: "maas-prod".into(),
            lineage: Some("app-main".into()),
            revoke_old_immediately: true,
        }]
    );

    for (path, status, result) in [
        ("/rotate/unknown", StatusCode::NOT_FOUND, "unknown_policy"),
        (
            "/rotate/maas-prod?lineage=ghost",
            StatusCode::NOT_FOUND,
            "unknown_lineage",
        ),
        ("/rotate/gw", StatusCode::CONFLICT, "already_running"),
        ("/rotate/observe-only", StatusCode::CONFLICT, "refused"),
    ] {
        let resp = c.send(Method::POST, path, Some(&token)).await.unwrap();
        assert_eq!(resp.status, status, "{path}");
        let body = json(&resp);
        assert_eq!(body["result"], result, "{path}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }

    // A misspelt flag is refused, not ignored (it would silently keep the grace).
    let resp = c
        .send(
            Method::POST,
            "/rotate/maas-prod?revoke_old_immediatly=true",
            Some(&token),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert!(
        json(&resp)["error"]
            .as_str()
            .unwrap()
            .contains("revoke_old_immediately")
    );

    // GET on the POST route is not a way around the token.
    let resp = c
        .send(Method::GET, "/rotate/maas-prod", None)
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::METHOD_NOT_ALLOWED);
    srv.stop().await;
}

#[tokio::test]
async fn rotate_is_forbidden_with_a_hint_when_no_admin_token_is_configured() {
    let srv = StatusServer::start(StatusServerOptions {
        admin_token: None,
        ..Default::default()
    })
    .await;
    let token = Secret::new(OPS_ADMIN_TOKEN);
    let resp = srv
        .client()
        .send(Method::POST, "/rotate/maas-prod", Some(&token))
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::FORBIDDEN);
    assert!(
        json(&resp)["error"]
            .as_str()
            .unwrap()
            .contains("daemon.admin_token"),
        "{:?}",
        resp.body
    );
    assert!(srv.seen().is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn a_wedged_daemon_gets_503_on_rotate_while_status_still_answers() {
    let srv = StatusServer::start(StatusServerOptions {
        daemon: FakeDaemon::Silent,
        limits: Limits {
            rotate_reply_timeout: Duration::from_millis(300),
            ..Limits::default()
        },
        ..Default::default()
    })
    .await;
    let token = Secret::new(OPS_ADMIN_TOKEN);
    let c = srv.client();
    let (rotate, status) = tokio::join!(
        c.send(Method::POST, "/rotate/maas-prod", Some(&token)),
        c.send(Method::GET, "/status", None)
    );
    assert_eq!(status.unwrap().status, StatusCode::OK);
    let rotate = rotate.unwrap();
    assert_eq!(rotate.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        json(&rotate)["error"]
            .as_str()
            .unwrap()
            .contains("did not answer")
    );
    srv.stop().await;
}

#[tokio::test]
async fn oversized_bodies_and_silent_clients_are_cut_off() {
    let srv = StatusServer::start(StatusServerOptions {
        limits: Limits {
            header_read_timeout: Duration::from_millis(300),
            ..Limits::default()
        },
        ..Default::default()
    })
    .await;
    let raw = raw_http(
        &srv.listen,
        format!(
            "POST /rotate/maas-prod HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {OPS_ADMIN_TOKEN}\r\nContent-Length: 1048576\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(srv.seen().is_empty());

    // Connects and never sends a request head: dropped after the timeout
    // (raw_http's read_to_end returns only when the server closes).
    let started = std::time::Instant::now();
    let raw = raw_http(&srv.listen, b"GET /status HTTP/1.1\r\n").await;
    assert!(!raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(started.elapsed() < Duration::from_secs(5));
    srv.stop().await;
}

#[tokio::test]
async fn a_busy_tcp_port_fails_bind_rather_than_serve() {
    let srv = StatusServer::start(StatusServerOptions::default()).await;
    let err = server::bind(&srv.listen).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(
        err.to_string().contains("cannot listen on 127.0.0.1:"),
        "{err}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn unix_socket_is_served_with_mode_0660_and_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("status.sock");
    // A stale socket left by a dead daemon is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());

    let srv = StatusServer::start(StatusServerOptions {
        listen: ListenAddr::Unix(path.clone()),
        ..Default::default()
    })
    .await;
    assert_eq!(srv.endpoint, format!("unix:{}", path.display()));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode {mode:o}");

    let snapshot = srv.client().status().await.unwrap();
    assert_eq!(snapshot.policies[0].name, "maas-prod");
    let token = Secret::new(OPS_ADMIN_TOKEN);
    let outcome = srv
        .client()
        .rotate("maas-prod", None, false, Some(&token))
        .await
        .unwrap();
    assert!(outcome.accepted(), "{outcome:?}");

    // A live socket is not stolen by a second daemon.
    let err = server::bind(&ListenAddr::Unix(path.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");

    srv.stop().await;
    assert!(!path.exists(), "socket removed on shutdown");
}

#[tokio::test]
async fn a_regular_file_at_the_socket_path_is_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("status.sock");
    std::fs::write(&path, "precious").unwrap();
    let err = server::bind(&ListenAddr::Unix(path.clone()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_gives_its_slot_back() {
    let srv = StatusServer::start(StatusServerOptions {
        limits: Limits {
            max_connections: 1,
            header_read_timeout: Duration::from_millis(300),
            ..Limits::default()
        },
        ..Default::default()
    })
    .await;
    let ListenAddr::Tcp(addr) = &srv.listen else {
        unreachable!()
    };
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // The only slot is held by `idle`; the next client is served once the
    // server drops the idle connection.
    let resp = srv
        .client()
        .send(Method::GET, "/healthz", None)
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("idle connection closed by the server");
    assert_eq!(closed.unwrap(), 0);
    srv.stop().await;
}

/// Log lines the server writes on this thread (tokio's current-thread test
/// runtime runs the server tasks here too).
#[derive(Clone, Default)]
struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn no_answer_header_or_log_line_contains_the_admin_token() {
    let logs = CapturedLogs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let srv = StatusServer::start(StatusServerOptions::default()).await;
    let c = srv.client();
    let token = Secret::new(OPS_ADMIN_TOKEN);
    let wrong = Secret::new(format!("{OPS_ADMIN_TOKEN}x"));
    let mut answers = Vec::new();
    for (method, path, bearer) in [
        (Method::GET, "/healthz", None),
        (Method::GET, "/status", Some(&token)),
        (Method::GET, "/status/maas-prod", None),
        (Method::GET, "/status/nope", None),
        (Method::GET, "/metrics", None),
        (Method::GET, "/elsewhere", Some(&token)),
        (Method::POST, "/rotate/maas-prod", None),
        (Method::POST, "/rotate/maas-prod", Some(&wrong)),
        (Method::POST, "/rotate/maas-prod", Some(&token)),
        (Method::POST, "/rotate/unknown", Some(&token)),
        (Method::POST, "/rotate/gw?bogus=1", Some(&token)),
    ] {
        let resp = c.send(method.clone(), path, bearer).await.unwrap();
        answers.push((format!("{method} {path}"), resp));
    }
    srv.stop().await;

    for (what, resp) in &answers {
        let body = String::from_utf8_lossy(&resp.body);
        assert!(
            !body.contains(OPS_ADMIN_TOKEN),
            "{what}: body has the token"
        );
        for (name, value) in &resp.headers {
            assert!(
                !value.to_str().unwrap_or_default().contains(OPS_ADMIN_TOKEN),
                "{what}: header {name} has the token"
            );
        }
    }
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("refused unauthenticated POST /rotate"),
        "refusals are logged:\n{logs}"
    );
    assert!(
        logs.contains("rotation requested through the status endpoint"),
        "{logs}"
    );
    assert!(
        !logs.contains(OPS_ADMIN_TOKEN),
        "the token is in the logs:\n{logs}"
    );
}
