//! The leadership gate in front of every side effect (DESIGN §8).
//!
//! With a PostgreSQL state only the leader acts, and only while its lease
//! surely holds: the lease loop (`daemon::lease`) moves the gate's deadline
//! forward after each renewal, measured on the **monotonic** clock from the
//! moment the renewal was sent, and the engine asks [`LeaseGate::check`]
//! right before each provider create or delete and each sink write. A leader
//! that was paused (SIGSTOP, a VM freeze) finds the deadline passed when it
//! resumes — `CLOCK_MONOTONIC` keeps counting while a process is stopped —
//! and starts nothing. Store commits are fenced separately (the store
//! compares the fence in every write transaction); a sink write carries
//! [`LeaseGate::fence`] as its token.
//!
//! With a SQLite state the gate is [`LeaseGate::single`]: always open, no
//! fence, nothing changes.

use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Whether leadership is enforced at all: only the test-only cargo feature
/// `ha-test-unfenced` turns it off (the gate then never closes on a leader,
/// and a node that lost its lease keeps acting), for the negative-control
/// tests that prove the HA suite detects what fencing prevents.
pub const FENCING: bool = !cfg!(feature = "ha-test-unfenced");

/// Why the gate refused a side effect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateClosed {
    /// The last renewal is older than the deadline allows: the lease may
    /// have expired by the database's clock.
    #[error(
        "the leadership lease (fence {fence}) was not renewed in time; starting no side effect"
    )]
    Overdue { fence: i64 },
    /// This node does not (or no longer) hold the lease.
    #[error("this node does not hold the leadership lease; starting no side effect")]
    NotLeader,
}

#[derive(Debug)]
enum State {
    Single,
    Standby,
    Leader { fence: i64, until: Instant },
}

/// Shared between the lease loop (writes) and the engine (reads). Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct LeaseGate(Arc<Mutex<State>>);

impl LeaseGate {
    /// One node on a SQLite state: always open, no fence.
    pub fn single() -> Self {
        LeaseGate(Arc::new(Mutex::new(State::Single)))
    }

    /// A PostgreSQL node before it leads: closed.
    pub fn standby() -> Self {
        LeaseGate(Arc::new(Mutex::new(State::Standby)))
    }

    /// Lead with `fence` until the monotonic instant `until` (the moment
    /// the acquiring or renewing statement was sent, plus the lease TTL
    /// minus one renewal interval of margin).
    pub fn lead_until(&self, fence: i64, until: Instant) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = State::Leader { fence, until };
    }

    /// Close for good (the lease is lost or resigned).
    pub fn close(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = State::Standby;
    }

    /// Whether a side effect may start now.
    ///
    /// Errors: [`GateClosed::Overdue`] past the deadline,
    /// [`GateClosed::NotLeader`] on a standby.
    pub fn check(&self) -> Result<(), GateClosed> {
        match &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            State::Single => Ok(()),
            State::Standby => Err(GateClosed::NotLeader),
            State::Leader { fence, until } => {
                if Instant::now() < *until || !FENCING {
                    Ok(())
                } else {
                    Err(GateClosed::Overdue { fence: *fence })
                }
            }
        }
    }

    /// The token sink writes carry: the lease's fence while leading, `None`
    /// on a SQLite state (sinks then write exactly as before).
    pub fn fence(&self) -> Option<i64> {
        match &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            State::Leader { fence, .. } => Some(*fence),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_single_node_gate_is_always_open_and_carries_no_fence() {
        let g = LeaseGate::single();
        assert_eq!(g.check(), Ok(()));
        assert_eq!(g.fence(), None);
    }

    #[test]
    #[cfg(not(feature = "ha-test-unfenced"))]
    fn a_leader_gate_closes_once_its_monotonic_deadline_passes() {
        let g = LeaseGate::standby();
        assert_eq!(g.check(), Err(GateClosed::NotLeader));
        g.lead_until(7, Instant::now() + Duration::from_secs(60));
        assert_eq!(g.check(), Ok(()));
        assert_eq!(g.fence(), Some(7));
        g.lead_until(7, Instant::now() - Duration::from_millis(1));
        assert_eq!(g.check(), Err(GateClosed::Overdue { fence: 7 }));
        g.close();
        assert_eq!(g.check(), Err(GateClosed::NotLeader));
        assert_eq!(g.fence(), None);
    }
}
