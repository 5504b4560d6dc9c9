//! Notifications: signed webhook delivery of the event outbox.
//!
//! Every state change writes its events to the outbox (the `events` table)
//! in the same transaction, so an event exists exactly when its change does.
//! The [`Deliverer`] reads the outbox per `[notify.NAME]` target, in order,
//! from that target's cursor, and POSTs each event the target wants as
//! `{"type","timestamp","data"}`, signed with Standard Webhooks
//! ([`signing`]). The `webhook-id` is the event's stable id, so a redelivery
//! after a crash or a retry carries the same id and receivers deduplicate.
//! Delivery is therefore at-least-once.
//!
//! Retries follow the Standard Webhooks schedule ([`RETRY_SCHEDULE`]:
//! immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h),
//! never sooner than a `Retry-After` asks. The retry state lives in the
//! store, so a restart resumes the schedule instead of restarting it. A 410
//! (endpoint gone) dead-letters the event at once; after the last retry the
//! event is dead-lettered too, and the target moves on to the next event.
//! Events a target does not want only advance its cursor.
//!
//! [`Deliverer::run`] does not poll: each target sleeps until its next
//! retry is due or until the engine signals a new event on `wake`.

pub mod signing;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::NotifyConfig;
use crate::outbound::{self as response, client, retry_after};
use crate::state::{EventRow, Store, StoreError, ts};
use signing::Signer;

/// Delay before each attempt of one event: the first is immediate; after
/// the last fails the event is dead-lettered.
pub const RETRY_SCHEDULE: [Duration; 10] = [
    Duration::ZERO,
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(14 * 3600),
    Duration::from_secs(20 * 3600),
    Duration::from_secs(24 * 3600),
];

/// A `Retry-After` longer than this is capped (a typo on the receiver's
/// side must not park notifications for weeks).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Events read from the outbox per query.
const BATCH: usize = 100;

/// Wait after a store error before trying the target again.
const STORE_ERROR_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notify target {target}: {reason}")]
    Target { target: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One configured receiver.
struct Target {
    cfg: NotifyConfig,
    /// `scheme://host[:port]`, for logs and errors.
    shown_url: String,
    client: reqwest::Client,
    signer: Signer,
}

/// How one delivery attempt failed.
#[derive(Debug)]
struct Failed {
    message: String,
    /// 410: the receiver says the endpoint is gone for good.
    gone: bool,
    retry_after: Option<Duration>,
}

/// The outcome of one pass over one target.
#[derive(Debug, Default)]
struct Pass {
    delivered: usize,
    /// When the target next has something to do (a retry); `None` = idle
    /// until a new event arrives.
    next: Option<DateTime<Utc>>,
}

/// Delivers the outbox to every notification target.
pub struct Deliverer {
    store: Arc<Store>,
    targets: Vec<Target>,
    clock: Arc<dyn Clock>,
    schedule: Vec<Duration>,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field(
                "targets",
                &self.targets.iter().map(|t| &t.cfg.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Deliverer {
    /// Build HTTP clients and signers for `targets` and register each one's
    /// cursor in the store (a new target starts at the current end of the
    /// outbox; an existing one resumes where it stopped).
    pub fn new(
        store: Arc<Store>,
        targets: Vec<NotifyConfig>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, NotifyError> {
        let mut built = Vec::with_capacity(targets.len());
        for cfg in targets {
            let err = |reason: String| NotifyError::Target {
                target: cfg.name.clone(),
                reason,
            };
            let signer = Signer::from_refs(&cfg.secrets).map_err(|e| err(e.to_string()))?;
            let client =
                client(cfg.ca_file.as_deref(), cfg.timeout).map_err(|e| err(e.to_string()))?;
            reqwest::Url::parse(&cfg.url).map_err(|e| err(format!("invalid url: {e}")))?;
            store.delivery(&cfg.name)?;
            built.push(Target {
                shown_url: response::redact_url(&cfg.url),
                cfg,
                client,
                signer,
            });
        }
        Ok(Deliverer {
            store,
            targets: built,
            clock,
            schedule: RETRY_SCHEDULE.to_vec(),
        })
    }

    /// Replace the retry schedule (tests use short delays). Entry `n` is
    /// the delay before attempt `n + 1`; the first entry is ignored (the
    /// first attempt is immediate). An empty schedule is ignored.
    pub fn with_retry_schedule(mut self, schedule: Vec<Duration>) -> Self {
        if !schedule.is_empty() {
            self.schedule = schedule;
        }
        self
    }

    /// One pass over every target (concurrently): deliver what is due.
    /// Returns the number of events delivered.
    pub async fn deliver_pending(&self) -> usize {
        let passes =
            futures_util::future::join_all(self.targets.iter().map(|t| self.deliver_target(t)))
                .await;
        passes
            .into_iter()
            .zip(&self.targets)
            .map(|(p, t)| match p {
                Ok(p) => p.delivered,
                Err(e) => {
                    tracing::warn!(target_name = %t.cfg.name, error = %e, "notification pass failed");
                    0
                }
            })
            .sum()
    }

    /// Deliver until `shutdown`. Each target runs on its own, sleeping until
    /// its next retry is due or `wake` signals new events; a slow receiver
    /// delays only itself. An in-flight POST is abandoned on shutdown (the
    /// event stays in the outbox and goes out again, with the same id).
    pub async fn run(self, wake: Arc<Notify>, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let mut tasks = tokio::task::JoinSet::new();
        let mut nudges = Vec::with_capacity(this.targets.len());
        for i in 0..this.targets.len() {
            let nudge = Arc::new(Notify::new());
            nudges.push(nudge.clone());
            tasks.spawn(this.clone().run_target(i, nudge, shutdown.clone()));
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.notified() => {
                    for n in &nudges {
                        n.notify_one();
                    }
                }
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn run_target(
        self: Arc<Self>,
        index: usize,
        nudge: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        let target = &self.targets[index];
        loop {
            let pass = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                p = self.deliver_target(target) => p,
            };
            let next = match pass {
                Ok(p) => p.next,
                Err(e) => {
                    tracing::warn!(target_name = %target.cfg.name, error = %e, "notification pass failed; trying again shortly");
                    Some(
                        self.clock.now()
                            + chrono::Duration::from_std(STORE_ERROR_BACKOFF).unwrap_or_default(),
                    )
                }
            };
            let sleep_for = next.map(|at| (at - self.clock.now()).to_std().unwrap_or_default());
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = nudge.notified() => {}
                _ = async {
                    match sleep_for {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending::<()>().await,
                    }
                } => {}
            }
        }
    }

    /// Deliver what is due for one target, in order, until it is idle or
    /// waiting for a retry.
    async fn deliver_target(&self, t: &Target) -> Result<Pass, StoreError> {
        let name = t.cfg.name.as_str();
        let mut pass = Pass::default();
        loop {
            let row = self.store.delivery(name)?;
            if let Some(next) = row.next_attempt_at
                && next > self.clock.now()
            {
                pass.next = Some(next);
                return Ok(pass);
            }
            let events = self.store.events_after(row.cursor, BATCH)?;
            if events.is_empty() {
                return Ok(pass);
            }
            // Failures so far of the event right after the cursor.
            let mut failures = row.attempts;
            for ev in &events {
                if !t.cfg.wants(&ev.kind) {
                    self.store.delivery_done(name, ev.seq)?;
                    failures = 0;
                    continue;
                }
                match self.send(t, ev).await {
                    Ok(status) => {
                        self.store.delivery_done(name, ev.seq)?;
                        failures = 0;
                        pass.delivered += 1;
                        tracing::debug!(target_name = %name, webhook_id = %ev.id, event = %ev.kind, seq = ev.seq, status, "notification delivered");
                    }
                    Err(f) if f.gone => {
                        let now = self.clock.now();
                        tracing::error!(target_name = %name, url = %t.shown_url, webhook_id = %ev.id, event = %ev.kind, error = %f.message, "notification endpoint is gone (410); event dead-lettered");
                        self.store.dead_letter(name, ev, &f.message, now)?;
                        failures = 0;
                    }
                    Err(f) => {
                        let now = self.clock.now();
                        failures += 1;
                        let Some(delay) = self.schedule.get(failures as usize) else {
                            tracing::error!(target_name = %name, url = %t.shown_url, webhook_id = %ev.id, event = %ev.kind, attempts = failures, error = %f.message, "notification undeliverable after every retry; event dead-lettered");
                            self.store.dead_letter(name, ev, &f.message, now)?;
                            failures = 0;
                            continue;
                        };
                        let wait = match f.retry_after {
                            Some(ra) => (*delay).max(ra.min(MAX_RETRY_AFTER)),
                            None => *delay,
                        };
                        let next = now + chrono::Duration::from_std(wait).unwrap_or_default();
                        self.store.delivery_failed(name, &f.message, next)?;
                        tracing::warn!(target_name = %name, url = %t.shown_url, webhook_id = %ev.id, event = %ev.kind, attempts = failures, next_attempt_at = %ts(next), error = %f.message, "notification delivery failed; will retry");
                        pass.next = Some(next);
                        return Ok(pass);
                    }
                }
            }
        }
    }

    /// One signed POST of one event. `Ok` carries the status code.
    async fn send(&self, t: &Target, ev: &EventRow) -> Result<u16, Failed> {
        let body = event_body(ev);
        let now = self.clock.now();
        let headers = t
            .signer
            .headers(&ev.id, now.timestamp(), body.as_bytes())
            .map_err(|e| Failed {
                message: e.to_string(),
                gone: false,
                retry_after: None,
            })?;
        let mut req = t
            .client
            .post(&t.cfg.url)
            .header(CONTENT_TYPE, "application/json");
        for (k, v) in headers.pairs() {
            req = req.header(k, v);
        }
        let resp = req.body(body).send().await.map_err(|e| Failed {
            message: format!(
                "POST {}: {}",
                t.shown_url,
                response::describe_send_error(e, t.cfg.timeout).1
            ),
            gone: false,
            retry_after: None,
        })?;
        let status = resp.status();
        let ra = retry_after(resp.headers());
        // A notification receiver has received no secret, so an excerpt of
        // its answer may be quoted (escaped, one line, bounded).
        let body = response::read_body(resp).await.unwrap_or_default();
        if status.is_success() {
            return Ok(status.as_u16());
        }
        let excerpt = response::excerpt(&body);
        let mut message = format!("HTTP {}", status.as_u16());
        if !excerpt.is_empty() {
            message.push_str(": ");
            message.push_str(&excerpt);
        }
        Err(Failed {
            message,
            gone: status == StatusCode::GONE,
            retry_after: ra,
        })
    }
}

/// The body of a notification: the event as stored.
pub fn event_body(ev: &EventRow) -> String {
    serde_json::json!({
        "type": ev.kind,
        "timestamp": ts(ev.at),
        "data": ev.data,
    })
    .to_string()
}
