//! The operations surface: the status endpoint, `rekey status` / `rekey
//! rotate`, metrics as Prometheus tools read them, the systemd unit and
//! recipes, and the Debian package.
//!
//! [`StatusServer`] serves a hand-built snapshot on `127.0.0.1:0` or a
//! temp Unix socket, with a fake daemon task answering rotate requests the
//! way the real one would, and records what it was asked.

mod check;
mod cli;
mod dev;
mod endpoint;
mod metrics;
mod package;
mod systemd;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rekey::config::ListenAddr;
use rekey::metrics::Metrics;
use rekey::secret::Secret;
use rekey::status::server::{self, Limits, Liveness, ServerState};
use rekey::status::{
    Health, KeyState, KeyStatus, LastRotation, LineageStatus, PolicyStatus, RotateReply,
    RotateRequest, Snapshot, StatusHandle,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The admin token every test server uses; no response or output may
/// contain it.
pub const OPS_ADMIN_TOKEN: &str = "rk_admin_7f3a9c1e5b2d4680";

/// What the fake daemon does with a rotate request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeDaemon {
    /// Answer as the daemon would for the fixture's policies.
    Answering,
    /// Take requests and never answer (a wedged main loop).
    Silent,
}

/// A rotate request as the fake daemon saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRotate {
    pub policy: String,
    pub lineage: Option<String>,
    pub revoke_old_immediately: bool,
}

pub struct StatusServerOptions {
    pub listen: ListenAddr,
    pub admin_token: Option<&'static str>,
    pub snapshot: Snapshot,
    pub limits: Limits,
    pub daemon: FakeDaemon,
    pub liveness_max_age: Duration,
}

impl Default for StatusServerOptions {
    fn default() -> Self {
        StatusServerOptions {
            listen: ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()),
            admin_token: Some(OPS_ADMIN_TOKEN),
            snapshot: ops_snapshot(Utc::now()),
            limits: Limits::default(),
            daemon: FakeDaemon::Answering,
            liveness_max_age: Duration::from_secs(60),
        }
    }
}

/// A served snapshot plus a fake daemon, stopped by [`StatusServer::stop`].
pub struct StatusServer {
    /// What `rekey status --endpoint` takes.
    pub endpoint: String,
    pub listen: ListenAddr,
    pub status: StatusHandle,
    pub metrics: Metrics,
    pub liveness: Liveness,
    pub seen: Arc<Mutex<Vec<SeenRotate>>>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl StatusServer {
    pub async fn start(opts: StatusServerOptions) -> Self {
        let status = StatusHandle::new(opts.snapshot.started_at);
        status.store(opts.snapshot);
        let metrics = Metrics::new();
        let liveness = Liveness::new(opts.liveness_max_age);
        let (tx, rx) = mpsc::channel(8);
        let seen = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(fake_daemon(rx, opts.daemon, seen.clone()));
        let bound = server::bind(&opts.listen).await.expect("bind");
        let endpoint = bound.endpoint();
        let listen = bound.local_addr().clone();
        let shutdown = CancellationToken::new();
        let state = ServerState {
            status: status.clone(),
            metrics: metrics.clone(),
            rotate: tx,
            commands: None,
            admin_token: opts.admin_token.map(Secret::new),
            liveness: liveness.clone(),
            bodies: server::Bodies::new(&status, &metrics),
        };
        let server = tokio::spawn(server::serve_with_limits(
            bound,
            state,
            opts.limits,
            shutdown.clone(),
        ));
        StatusServer {
            endpoint,
            listen,
            status,
            metrics,
            liveness,
            seen,
            shutdown,
            server,
        }
    }

    pub fn client(&self) -> rekey::status::client::Client {
        rekey::status::client::Client::new(
            rekey::status::client::Endpoint::parse(&self.endpoint).unwrap(),
        )
    }

    pub fn seen(&self) -> Vec<SeenRotate> {
        self.seen.lock().unwrap().clone()
    }

    /// Cancel and wait until `serve` returned.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
    }
}

async fn fake_daemon(
    mut rx: mpsc::Receiver<RotateRequest>,
    mode: FakeDaemon,
    seen: Arc<Mutex<Vec<SeenRotate>>>,
) {
    // Held so a silent daemon's requests stay unanswered, not dropped.
    let mut parked: Vec<oneshot::Sender<RotateReply>> = Vec::new();
    while let Some(req) = rx.recv().await {
        seen.lock().unwrap().push(SeenRotate {
            policy: req.policy.clone(),
            lineage: req.lineage.clone(),
            revoke_old_immediately: req.revoke_old_immediately,
        });
        if mode == FakeDaemon::Silent {
            parked.push(req.reply);
            continue;
        }
        let reply = match (req.policy.as_str(), req.lineage.as_deref()) {
            ("maas-prod", None | Some("app-main")) => RotateReply::Accepted {
                rotations: vec!["r-0001".into()],
                message: "rotation r-0001 started".into(),
            },
            ("maas-prod", Some(l)) => RotateReply::UnknownLineage {
                lineage: l.to_string(),
            },
            ("gw", _) => RotateReply::AlreadyRunning {
                rotations: vec!["r-0000".into()],
            },
            ("observe-only", _) => RotateReply::Refused {
                message: "policy observe-only is in observe mode and changes nothing".into(),
            },
            _ => RotateReply::UnknownPolicy,
        };
        let _ = req.reply.send(reply);
    }
}

fn ago(now: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    now - TimeDelta::seconds(secs)
}

/// Two policies: `maas-prod` (ok, one lineage, a retiring old key) and `gw`
/// (failing, two lineages, keys without expiry, an error).
pub fn ops_snapshot(now: DateTime<Utc>) -> Snapshot {
    const DAY: i64 = 86_400;
    let key = |id: &str, name: &str, lineage: &str, created: i64, expires: Option<i64>, state| {
        KeyStatus {
            id: id.into(),
            name: name.into(),
            lineage: lineage.into(),
            created_at: Some(ago(now, created)),
            expires_at: expires.map(|e| now + TimeDelta::seconds(e)),
            state,
        }
    };
    Snapshot {
        version: env!("CARGO_PKG_VERSION").into(),
        started_at: ago(now, 3 * 3600),
        instance: Some(rekey::status::Instance {
            config: "/etc/rekey/rekey.toml".into(),
            state: "/var/lib/rekey/state.db".into(),
            host: "ops-host".into(),
        }),
        leadership: Default::default(),
        policies: vec![
            std::sync::Arc::new(PolicyStatus {
                name: "maas-prod".into(),
                provider: "ob-prod".into(),
                mode: "rotate".into(),
                health: Health::Ok,
                next_check_at: Some(now + TimeDelta::seconds(240)),
                last_check_at: Some(ago(now, 660)),
                keys: vec![
                    key(
                        "k-2",
                        "app-main-20261122-r0001a1",
                        "app-main",
                        2 * DAY,
                        Some(28 * DAY),
                        KeyState::Current,
                    ),
                    key(
                        "k-1",
                        "app-main",
                        "app-main",
                        30 * DAY,
                        Some(-3600),
                        KeyState::Retiring,
                    ),
                ]
                .into(),
                lineages: vec![LineageStatus {
                    name: "app-main".into(),
                    health: Health::Ok,
                    current_key: Some("k-2".into()),
                    reason: "fresh".into(),
                    message: "expires in 28d; rotates 7d before".into(),
                    rotate_at: Some(now + TimeDelta::seconds(21 * DAY)),
                    conditions: Vec::new(),
                    rotation: None,
                }]
                .into(),
                last_rotation: Some(LastRotation {
                    id: "r-0001".into(),
                    lineage: "app-main".into(),
                    state: "retiring".into(),
                    started_at: ago(now, 2 * DAY),
                    finished_at: None,
                    error: None,
                }),
                error: None,
            }),
            std::sync::Arc::new(PolicyStatus {
                name: "gw".into(),
                provider: "tencent".into(),
                mode: "rotate".into(),
                health: Health::Failing,
                next_check_at: Some(now + TimeDelta::seconds(900)),
                last_check_at: Some(ago(now, 60)),
                keys: vec![
                    key("AKIDa", "svc-a", "svc-a", 40 * DAY, None, KeyState::Current),
                    key("AKIDb", "svc-b", "svc-b", 5 * DAY, None, KeyState::Current),
                ]
                .into(),
                lineages: vec![
                    LineageStatus {
                        name: "svc-a".into(),
                        health: Health::Failing,
                        current_key: Some("AKIDa".into()),
                        reason: "max_age".into(),
                        message: "rotation failed 3 times: provider answered 403".into(),
                        rotate_at: Some(ago(now, 3600)),
                        conditions: Vec::new(),
                        rotation: None,
                    },
                    LineageStatus {
                        name: "svc-b".into(),
                        health: Health::Ok,
                        current_key: Some("AKIDb".into()),
                        reason: "fresh".into(),
                        message: "rotates in 25d".into(),
                        rotate_at: Some(now + TimeDelta::seconds(25 * DAY)),
                        conditions: Vec::new(),
                        rotation: None,
                    },
                ]
                .into(),
                last_rotation: Some(LastRotation {
                    id: "r-0000".into(),
                    lineage: "svc-a".into(),
                    state: "failed".into(),
                    started_at: ago(now, 7200),
                    finished_at: Some(ago(now, 3600)),
                    error: Some(
                        "tencent: CreateApiKey: 403 AuthFailure.UnauthorizedOperation".into(),
                    ),
                }),
                error: None,
            }),
        ],
    }
}

/// The fixture with every policy healthy.
pub fn ops_healthy_snapshot(now: DateTime<Utc>) -> Snapshot {
    let mut s = ops_snapshot(now);
    s.policies.retain(|p| p.name == "maas-prod");
    s
}
