//! Leadership on a PostgreSQL state (DESIGN §8): standby until this node
//! holds the lease row, then renew it; fail stop the moment leadership is
//! in doubt.
//!
//! - **Standby.** Polls the lease row every half renewal interval (±25 %
//!   jitter, so standbys do not stampede), and wakes at once on the
//!   `rekey_lease` NOTIFY a leader sends when it resigns. It tries to
//!   acquire only when the lease is free or expired by the database's clock,
//!   and only when its seal key matches the database's check value; while
//!   a leader lives, a standby whose config digest differs from the row's
//!   (the leader's) refuses too. It says why it refuses (status
//!   `lead_refused`, metric `rekey_leadership_refused{reason}`, log).
//!   `POST /rotate` on a standby is recorded for the leader.
//! - **Leader.** Renews every `lease_ttl`/`lease_renew`. The side-effect
//!   gate ([`LeaseGate`]) stays open until `sent + ttl - renew` on the
//!   monotonic clock, where `sent` is when the last successful renewal was
//!   sent (the database judged it no earlier). When a renewal says the lease
//!   is lost, when no renewal succeeded for a whole TTL, or when any commit
//!   was fenced, the process exits with [`EXIT_NOT_LEADER`]: systemd
//!   restarts it, as a standby.
//! - **Resign.** A graceful stop (SIGTERM) ends the renewals, then resigns
//!   (the store NOTIFYs), so a standby leads within its next wake-up.
//!
//! The seal key never reaches the database: only [`seal_check_value`], an
//! HMAC-SHA256 (RFC 2104) of a fixed label under the key, is stored.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::config::LeaseTiming;
use crate::metrics::Metrics;
use crate::rotation::gate::LeaseGate;
use crate::rotation::report::{Leadership, Role, StatusHandle};
use crate::secret::Secret;
use crate::state::{Store, StoreError};

/// Exit status of a node that stops leading without being asked to (lease
/// lost, renewal impossible for a TTL, a fenced commit or sink write):
/// `EX_TEMPFAIL`, so `Restart=on-failure` brings it back as a standby.
pub const EXIT_NOT_LEADER: i32 = 75;

/// How often the leader checks for fenced commits and an overdue lease
/// between renewals.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// The label the seal key check value is computed over.
const SEAL_CHECK_LABEL: &[u8] = b"rekey seal key check v1";

/// The check value of a seal key (64 hex characters, DESIGN §2): lowercase
/// hex HMAC-SHA256 of a fixed label, keyed by the key's 32 bytes. Two nodes
/// share a key exactly when their values are equal; the value does not
/// reveal the key.
///
/// Errors: the key is not 64 hex characters (the message holds no key).
pub fn seal_check_value(key_hex: &Secret) -> Result<String, String> {
    let bytes = zeroize::Zeroizing::new(
        hex::decode(key_hex.expose().trim()).map_err(|_| "the seal key is not hex".to_string())?,
    );
    if bytes.len() != 32 {
        return Err("the seal key is not 32 bytes (64 hex characters)".into());
    }
    let mut m =
        <Hmac<Sha256> as KeyInit>::new_from_slice(&bytes).expect("HMAC takes keys of any size");
    m.update(SEAL_CHECK_LABEL);
    Ok(hex::encode(m.finalize().into_bytes()))
}

/// Why a node refuses to lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its config digest differs from the lease row's.
    ConfigDigest,
    /// Its seal key's check value differs from the database's.
    SealKey,
}

impl Refusal {
    /// The `reason` label of `rekey_leadership_refused`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ConfigDigest => "config_digest",
            Refusal::SealKey => "seal_key",
        }
    }

    fn explain(self, mine: &str, theirs: &str) -> String {
        match self {
            Refusal::ConfigDigest => format!(
                "refusing to lead: this node's config digest {mine} differs from the lease row's {theirs} (the leader's); give every node the same providers, sinks, notify targets and policies (README: rolling config change)"
            ),
            Refusal::SealKey => format!(
                "refusing to lead: this node's seal key (check value {mine}) is not the one the state's secrets are sealed with (check value {theirs}); give it the same daemon.seal_key as the other nodes"
            ),
        }
    }
}

/// A lease this node acquired.
#[derive(Debug, Clone, Copy)]
pub struct Acquired {
    pub fence: i64,
    /// When the acquiring statement was sent (monotonic).
    pub sent: Instant,
}

/// This node's leadership machinery.
pub struct Node {
    pub store: Arc<Store>,
    /// `daemon.instance`.
    pub instance: String,
    /// The config digest this node would lead with.
    pub digest: String,
    /// [`seal_check_value`] of this node's seal key.
    pub seal_check: String,
    pub timing: LeaseTiming,
    pub gate: LeaseGate,
    pub metrics: Metrics,
    pub status: StatusHandle,
    /// Fenced commits already counted into the metric.
    counted_fenced: Mutex<u64>,
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<Store>,
        instance: String,
        digest: String,
        seal_check: String,
        timing: LeaseTiming,
        gate: LeaseGate,
        metrics: Metrics,
        status: StatusHandle,
    ) -> Self {
        Node {
            store,
            instance,
            digest,
            seal_check,
            timing,
            gate,
            metrics,
            status,
            counted_fenced: Mutex::new(0),
        }
    }

    /// How long a standby waits between looks at the lease row: half a
    /// renewal interval, ±25 % jitter.
    pub fn poll_interval(&self) -> Duration {
        let base = self.timing.renew / 2;
        let jitter = rand::random_range(0.75..1.25);
        base.mul_f64(jitter).max(Duration::from_millis(50))
    }

    /// One standby look at the lease: publish what it says, and acquire it
    /// when it is free or expired and nothing forbids this node to lead.
    /// `Ok(None)`: still a standby.
    ///
    /// Errors: the store's (the database is unreachable; the caller retries
    /// at the next poll).
    pub fn try_acquire(&self) -> Result<Option<Acquired>, StoreError> {
        let info = self.store.lease_info()?;
        let live = info.is_held();
        let mut refusal = None;
        // The digest is compared with a live leader's only: once the lease
        // is free or expired there is no leader to disagree with, and the
        // node that acquires records its own digest. A digest that stayed
        // binding after a resign would stall the README's rolling config
        // change for good (every updated node refusing an old digest that
        // nothing ever clears).
        if live
            && let Some(theirs) = info.config_digest.as_deref()
            && theirs != self.digest
        {
            refusal = Some((Refusal::ConfigDigest, theirs.to_string()));
        }
        if refusal.is_none()
            && let Some(theirs) = self.store.seal_check()?
            && theirs != self.seal_check
        {
            refusal = Some((Refusal::SealKey, theirs));
        }
        for r in [Refusal::ConfigDigest, Refusal::SealKey] {
            let on = refusal.as_ref().is_some_and(|(x, _)| *x == r);
            self.metrics
                .leadership_refused
                .with_label_values(&[r.as_str()])
                .set(if on { 1.0 } else { 0.0 });
        }
        let lead_refused = refusal.as_ref().map(|(r, theirs)| {
            let mine = match r {
                Refusal::ConfigDigest => &self.digest,
                Refusal::SealKey => &self.seal_check,
            };
            r.explain(mine, theirs)
        });
        let previous = self.status.load().leadership.lead_refused.clone();
        if let Some(why) = &lead_refused
            && previous.as_ref() != Some(why)
        {
            tracing::error!(instance = %self.instance, "{why}");
        }
        self.status.set_leadership(Leadership {
            role: Role::Standby,
            leader: if live { info.holder.clone() } else { None },
            fence: Some(info.fence),
            lease_until: info.lease_until,
            lead_refused,
            policies: self.status.load().leadership.policies.clone(),
        });
        // A live lease is never this process's: it leads only once, from
        // here. Even under this node's own name (a previous incarnation, or
        // a second node misconfigured with the same `instance`) it waits for
        // the expiry, so its acquisition increments the fence and fences
        // the other out.
        if refusal.is_some() || live {
            return Ok(None);
        }
        let sent = Instant::now();
        let Some(lease) =
            self.store
                .lease_acquire(&self.instance, self.timing.ttl, &self.digest)?
        else {
            return Ok(None);
        };
        if self.store.seal_check()?.is_none() {
            // The first leader of a state records its key's check value
            // (fenced like every write: only while it leads).
            self.store.set_fence(Some(lease.fence));
            self.store.set_seal_check(&self.seal_check)?;
        }
        Ok(Some(Acquired {
            fence: lease.fence,
            sent,
        }))
    }

    /// Become leader with `lease`: fence the store's commits, open the
    /// gate, show it.
    pub fn lead(&self, lease: Acquired, lease_until: Option<chrono::DateTime<chrono::Utc>>) {
        self.store.set_fence(Some(lease.fence));
        self.gate.lead_until(lease.fence, self.deadline(lease.sent));
        self.metrics.leader.set(1);
        self.metrics.leadership_transitions.inc();
        for r in [Refusal::ConfigDigest, Refusal::SealKey] {
            self.metrics
                .leadership_refused
                .with_label_values(&[r.as_str()])
                .set(0.0);
        }
        self.status.set_leadership(Leadership {
            role: Role::Leader,
            leader: Some(self.instance.clone()),
            fence: Some(lease.fence),
            lease_until,
            lead_refused: None,
            policies: Vec::new(),
        });
        tracing::info!(instance = %self.instance, fence = lease.fence, "leading: this node holds the lease; recovering unfinished work from the state");
    }

    /// The last instant a side effect may start after a renewal sent at
    /// `sent`: one renewal interval before the lease could expire.
    fn deadline(&self, sent: Instant) -> Instant {
        sent + self.timing.ttl.saturating_sub(self.timing.renew)
    }

    /// Stop now: leadership is lost or in doubt. Never returns.
    pub fn fail_stop(&self, why: &str) -> ! {
        self.gate.close();
        self.metrics.leader.set(0);
        self.metrics.leadership_transitions.inc();
        tracing::error!(instance = %self.instance, "{why}; stopping (exit {EXIT_NOT_LEADER}): systemd restarts this node as a standby");
        std::process::exit(EXIT_NOT_LEADER)
    }

    /// Count fenced commits into `rekey_fenced_commits_total`; true when
    /// any happened since start.
    pub fn any_fenced(&self) -> bool {
        let n = self.store.fenced_commits();
        let mut counted = self
            .counted_fenced
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if n > *counted {
            self.metrics.fenced_commits.inc_by(n - *counted);
            *counted = n;
        }
        n > 0
    }

    /// Renew the lease until `stop` fires, failing stop when it is lost, a
    /// commit is fenced, or no renewal succeeded for a whole TTL.
    pub fn spawn_renewals(
        self: &Arc<Self>,
        lease: Acquired,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let last_ok = Arc::new(Mutex::new(lease.sent));
        let watch = {
            let me = self.clone();
            let last_ok = last_ok.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(WATCH_EVERY) => {}
                    }
                    if !crate::rotation::gate::FENCING {
                        continue;
                    }
                    if me.any_fenced() {
                        me.fail_stop("a state commit was fenced: another node leads now");
                    }
                    let since = last_ok.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
                    if since >= me.timing.ttl {
                        me.fail_stop(&format!(
                            "the lease (fence {}) was not renewed for {} ms, a whole TTL: it may have expired",
                            lease.fence,
                            since.as_millis()
                        ));
                    }
                }
            })
        };
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(me.timing.renew) => {}
                }
                let sent = Instant::now();
                let store = me.store.clone();
                let (holder, ttl) = (me.instance.clone(), me.timing.ttl);
                let renewed = tokio::task::spawn_blocking(move || {
                    store.lease_renew(&holder, lease.fence, ttl)
                })
                .await;
                if stop.is_cancelled() {
                    // A graceful stop began while renewing: the resign
                    // that follows ends the lease either way.
                    break;
                }
                match renewed {
                    Ok(Ok(Some(l))) => {
                        *last_ok.lock().unwrap_or_else(|p| p.into_inner()) = sent;
                        me.gate.lead_until(lease.fence, me.deadline(sent));
                        let mut shown = me.status.load().leadership.clone();
                        shown.lease_until = Some(l.until);
                        me.status.set_leadership(shown);
                    }
                    Ok(Ok(None)) if !crate::rotation::gate::FENCING => {
                        tracing::warn!(
                            fence = lease.fence,
                            "the lease is lost, and this test build (ha-test-unfenced) acts on regardless"
                        );
                    }
                    Ok(Ok(None)) => me.fail_stop(&format!(
                        "the lease (fence {}) is lost: another node holds it or it expired",
                        lease.fence
                    )),
                    Ok(Err(e)) => {
                        tracing::warn!(instance = %me.instance, fence = lease.fence, error = %e, "cannot renew the lease; trying again (side effects stop once it is overdue)");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "lease renewal task failed");
                    }
                }
            }
            watch.abort();
        })
    }

    /// Give the lease up after a graceful stop (the store NOTIFYs the
    /// standbys).
    pub fn resign(&self, fence: i64) {
        self.gate.close();
        match self.store.lease_resign(&self.instance, fence) {
            Ok(_) => {
                self.metrics.leader.set(0);
                self.metrics.leadership_transitions.inc();
                tracing::info!(instance = %self.instance, fence, "resigned the lease: a standby takes over");
            }
            Err(e) => {
                tracing::warn!(instance = %self.instance, fence, error = %e, "cannot resign the lease; it expires on its own within its TTL")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seal_check_value_is_keyed_and_never_the_key() {
        let a = Secret::new("11".repeat(32));
        let b = Secret::new("22".repeat(32));
        let ca = seal_check_value(&a).unwrap();
        assert_eq!(ca.len(), 64);
        assert_eq!(
            ca,
            seal_check_value(&Secret::new(format!(" {} ", "11".repeat(32)))).unwrap()
        );
        assert_ne!(ca, seal_check_value(&b).unwrap());
        assert!(!ca.contains(&"11".repeat(32)));
        assert!(seal_check_value(&Secret::new("zz")).is_err());
        assert!(seal_check_value(&Secret::new("11".repeat(16))).is_err());
    }
}
