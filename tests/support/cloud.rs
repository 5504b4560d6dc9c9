//! Helpers for the Tencent and Huawei areas: provider configs pointed at
//! their loopback emulators, providers built from them, an in-process
//! daemon, and the shared TRACE log capture.

#![allow(dead_code)]

use std::time::Duration;

use rekey::config::{HuaweiAuth, ProviderConfig, ProviderKind, SecretRef};
use rekey::metrics::Metrics;
use rekey::provider::http::ProviderHttp;
use rekey::provider::huawei::HuaweiProvider;
use rekey::provider::tencent::TencentProvider;
use rekey::secret::Secret;

pub fn literal(s: &str) -> SecretRef {
    SecretRef::Literal(Secret::new(s))
}

/// A `tencent-apigateway` provider config for an emulator endpoint.
pub fn tencent_config(
    endpoint: &str,
    region: &str,
    secret_id: &str,
    secret_key: &str,
) -> ProviderConfig {
    ProviderConfig {
        name: "gw".into(),
        endpoint: endpoint.into(),
        rate_limit: None,
        ca_file: None,
        timeout: Duration::from_secs(10),
        kind: ProviderKind::Tencent(rekey::provider::tencent::TencentConfig {
            region: region.into(),
            regions: Vec::new(),
            secret_id: literal(secret_id),
            secret_key: literal(secret_key),
        }),
    }
}

/// The Tencent provider with the emulator's own credentials.
pub fn tencent_provider(emu: &rekey::emulator::tencent::Handle) -> TencentProvider {
    let o = emu.options();
    tencent_provider_with(&tencent_config(
        &emu.endpoint(),
        &o.region,
        &o.secret_id,
        o.secret_key.expose(),
    ))
}

pub fn tencent_provider_with(cfg: &ProviderConfig) -> TencentProvider {
    let http = ProviderHttp::new(cfg, Metrics::new()).expect("http client");
    TencentProvider::new(cfg, http).expect("tencent provider")
}

/// A `huawei-nes` provider config for an emulator endpoint.
pub fn huawei_config(endpoint: &str, project_id: &str, auth: HuaweiAuth) -> ProviderConfig {
    ProviderConfig {
        name: "nes".into(),
        endpoint: endpoint.into(),
        rate_limit: None,
        ca_file: None,
        timeout: Duration::from_secs(10),
        kind: ProviderKind::Huawei(rekey::provider::huawei::HuaweiConfig {
            project_id: project_id.into(),
            auth,
        }),
    }
}

/// IAM password auth against the emulator's fake IAM.
pub fn huawei_iam_auth(emu: &rekey::emulator::huawei::Handle) -> HuaweiAuth {
    let o = emu.options();
    HuaweiAuth::Iam {
        endpoint: emu.endpoint(),
        domain: o.iam_domain.clone(),
        user: o.iam_user.clone(),
        password: literal(o.iam_password.expose()),
    }
}

/// Static-token auth with the emulator's token.
pub fn huawei_token_auth(emu: &rekey::emulator::huawei::Handle) -> HuaweiAuth {
    HuaweiAuth::Token(literal(
        emu.options().token.as_ref().expect("static token").expose(),
    ))
}

/// AK/SK auth with the emulator's pair.
pub fn huawei_aksk_auth(emu: &rekey::emulator::huawei::Handle) -> HuaweiAuth {
    let o = emu.options();
    HuaweiAuth::Aksk {
        access_key: literal(&o.access_key),
        secret_key: literal(o.secret_key.expose()),
    }
}

pub fn huawei_provider(emu: &rekey::emulator::huawei::Handle, auth: HuaweiAuth) -> HuaweiProvider {
    huawei_provider_with(&huawei_config(
        &emu.endpoint(),
        &emu.options().project_id,
        auth,
    ))
}

pub fn huawei_provider_with(cfg: &ProviderConfig) -> HuaweiProvider {
    let http = ProviderHttp::new(cfg, Metrics::new()).expect("http client");
    HuaweiProvider::new(cfg, http).expect("huawei provider")
}

pub fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Everything this thread logs at TRACE while it lives (see
/// [`super::logs`], the one capture mechanism of the test binary).
pub struct LogCapture {
    logs: super::logs::CapturedLogs,
    _guard: super::logs::CaptureGuard,
}

/// Capture this thread's TRACE output (a current-thread tokio test runs
/// the emulator's tasks here too, so both sides are captured).
pub fn capture_logs() -> LogCapture {
    let (logs, _guard) = super::logs::capture_logs_at_trace();
    LogCapture { logs, _guard }
}

impl LogCapture {
    pub fn text(&self) -> String {
        self.logs.text()
    }
}

/// Fail, naming which, if any of `secrets` appears in `haystack`.
pub fn assert_no_secret(what: &str, haystack: &str, secrets: &[(&str, &str)]) {
    for (name, s) in secrets {
        assert!(
            !s.is_empty(),
            "secret {name} is empty: the check would prove nothing"
        );
        assert!(
            !haystack.contains(s),
            "{what} contains the {name}:\n{haystack}"
        );
    }
}

/// A `rekey run` in this process, on a config written to a temp dir.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), rekey::daemon::DaemonError>>,
}

/// Write `secrets` as files in a temp dir, `config` (with `{dir}` replaced
/// by that dir) beside them, and start the daemon on it.
pub fn start_daemon(config: &str, secrets: &[(&str, &str)]) -> Daemon {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, value) in secrets {
        std::fs::write(dir.path().join(name), value).unwrap();
    }
    let text = config.replace("{dir}", dir.path().to_str().unwrap());
    let path = dir.path().join("rekey.toml");
    std::fs::write(&path, text).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let opts = rekey::daemon::Options {
        stop: stop.clone(),
        handle_signals: false,
        ..rekey::daemon::Options::default()
    };
    let task = tokio::spawn(async move { rekey::daemon::run(&path, opts).await });
    Daemon { dir, stop, task }
}

impl Daemon {
    /// Poll `done` every 100 ms for up to 30 s; then stop the daemon and
    /// return whether `done` held.
    pub async fn until(self, mut done: impl FnMut() -> bool) -> (bool, tempfile::TempDir) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut ok = false;
        while std::time::Instant::now() < deadline && !self.task.is_finished() {
            if done() {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.stop.cancel();
        match tokio::time::timeout(Duration::from_secs(10), self.task).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("the daemon did not stop cleanly: {other:?}"),
        }
        (ok, self.dir)
    }
}
