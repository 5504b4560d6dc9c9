//! What the engine publishes about each policy (the status snapshot) and
//! the operator commands it answers (`rotate`, `retry`, `abandon`).
//!
//! These are domain types: the engine builds them from the store and the
//! health rule ([`super::health`]); `src/status/` serves and renders them
//! and never computes them. A policy's keys and lineages are held once, in
//! the compact tables of [`super::compact`] (why they are held at all, and
//! not read from the store per request, is said there); the per-key metric
//! series render from the same allocation.

use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

pub use super::compact::{KeyRef, Keys, LineageParts, LineageRef, Lineages};
pub use super::health::{Condition, Health};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// The lineage's newest live key that is not retiring.
    Current,
    /// Created by an unfinished rotation, not yet published everywhere.
    Pending,
    /// Old key in its grace period.
    Retiring,
    /// Left for a human (provider cannot delete).
    Retired,
    /// An older live key rekey is not retiring; left alone.
    Stale,
    /// Looks generated (its name parses through `name_template`) but no
    /// rotation in the store produced it: never current, never deleted.
    Unrecognised,
    /// Its lineage name is outside the safe alphabet: never rotated or
    /// published; the name is shown escaped.
    UnsafeName,
}

/// One key as `/status` renders it: the plain (owned) form of a row of
/// [`Keys`], which is what the snapshot holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyStatus {
    pub id: String,
    pub name: String,
    pub lineage: String,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub state: KeyState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastRotation {
    pub id: String,
    pub lineage: String,
    pub state: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

/// One lineage as `/status` renders it: the plain (owned) form of a row
/// of [`Lineages`], which is what the snapshot holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineageStatus {
    pub name: String,
    pub health: Health,
    pub current_key: Option<String>,
    /// The planner's reason, or the deciding stuck condition when the
    /// lineage is failing or expired.
    pub reason: String,
    pub message: String,
    pub rotate_at: Option<DateTime<Utc>>,
    /// Every stuck condition that holds (DESIGN §4), e.g. `step_failing`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The lineage's latest rotation (unfinished, or the last to finish):
    /// what `rekey rotate --wait` follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationSummary>,
}

/// One rotation as `status` shows it (no key material, no sealed data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RotationSummary {
    pub id: String,
    /// `planned`, `created`, `published`, `retiring`, `completed`, `failed`.
    pub state: String,
    pub new_key: Option<String>,
    pub old_key: Option<String>,
    /// Failed tries of the step it is on.
    pub failures: u32,
    pub error: Option<String>,
    /// When the engine acts next (backoff, grace deadline).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the old key is deleted (set once published).
    pub retire_at: Option<DateTime<Utc>>,
    pub revoke_old_immediately: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub name: String,
    pub provider: String,
    pub mode: String,
    pub health: Health,
    pub next_check_at: Option<DateTime<Utc>>,
    pub last_check_at: Option<DateTime<Utc>>,
    /// Held compactly ([`Keys`]); renders as a JSON array of [`KeyStatus`].
    pub keys: Keys,
    /// Held compactly ([`Lineages`]); renders as a JSON array of
    /// [`LineageStatus`].
    pub lineages: Lineages,
    pub last_rotation: Option<LastRotation>,
    /// Why the policy is misconfigured/failing, when it is.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: String,
    pub started_at: DateTime<Utc>,
    /// Each policy behind its own `Arc`: replacing one policy's entry
    /// copies pointers, not every key of every policy.
    pub policies: Vec<Arc<PolicyStatus>>,
    /// Which daemon this is, so `rekey status` names the instance it
    /// reached (absent from daemons older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<Instance>,
    /// This node's role and what it knows of the lease (DESIGN §8):
    /// `role`, `leader`, `fence`, `lease_until`, `lead_refused`.
    #[serde(flatten, default)]
    pub leadership: Leadership,
}

/// What a node is to its state (DESIGN §8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A SQLite state: the one node, no lease (also what a daemon older
    /// than this field is read as).
    #[default]
    Single,
    /// Holds the PostgreSQL lease: the only node that acts.
    Leader,
    /// Waits for the lease; acts on nothing, records `POST /rotate`.
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Single => "single",
            Role::Leader => "leader",
            Role::Standby => "standby",
        }
    }
}

/// Leadership as `/status` shows it, flattened into the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leadership {
    pub role: Role,
    /// The lease holder's instance name (this node's when leading); absent
    /// on SQLite or when nobody holds the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The lease's fence: every acquisition increments it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<i64>,
    /// Until when the lease holds, by the database's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<DateTime<Utc>>,
    /// Why this node refuses to lead, when it does (its config digest or
    /// seal key differs from the cluster's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_refused: Option<String>,
    /// The policies of this node's config: a standby shows none in
    /// `policies` but still records `POST /rotate` for these (not
    /// serialized).
    #[serde(skip)]
    pub policies: Vec<String>,
}

/// A running daemon's identity: its config file, state and host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub config: String,
    pub state: String,
    pub host: String,
}

impl Instance {
    /// This process's identity for `config` and `state` (a file path or
    /// a PostgreSQL URL, which never holds a password).
    pub fn new(config: &std::path::Path, state: &str) -> Self {
        let config = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
        Instance {
            config: config.display().to_string(),
            state: state.to_string(),
            host: hostname(),
        }
    }
}

/// The host name (`uname -n`), or `localhost` if it cannot be read.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or truncates.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".to_string();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The engine writes, the endpoint reads; readers never wait. Every write
/// is announced on a watch channel ([`StatusHandle::subscribe`]), so the
/// endpoint can render a changed snapshot before anyone asks for it.
#[derive(Debug, Clone)]
pub struct StatusHandle {
    snapshot: Arc<ArcSwap<Snapshot>>,
    changed: Arc<watch::Sender<()>>,
}

impl StatusHandle {
    pub fn new(started_at: DateTime<Utc>) -> Self {
        StatusHandle {
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot {
                version: env!("CARGO_PKG_VERSION").to_string(),
                started_at,
                policies: Vec::new(),
                instance: None,
                leadership: Leadership::default(),
            })),
            changed: Arc::new(watch::Sender::new(())),
        }
    }

    /// A receiver that sees a change after every write of the snapshot
    /// (several writes between two looks are seen as one).
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    fn announce(&self) {
        self.changed.send_replace(());
    }

    /// Show this node's leadership from now on.
    pub fn set_leadership(&self, leadership: Leadership) {
        self.snapshot.rcu(|cur| {
            let mut next = (**cur).clone();
            next.leadership = leadership.clone();
            next
        });
        self.announce();
    }

    /// Name the instance in every snapshot from now on.
    pub fn set_instance(&self, instance: Instance) {
        self.snapshot.rcu(|cur| {
            let mut next = (**cur).clone();
            next.instance = Some(instance.clone());
            next
        });
        self.announce();
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn store(&self, s: Snapshot) {
        self.snapshot.store(Arc::new(s));
        self.announce();
    }

    /// Replace (or add) one policy's entry.
    pub fn update_policy(&self, p: PolicyStatus) {
        self.update_policy_shared(Arc::new(p));
    }

    /// [`StatusHandle::update_policy`] with an entry others share (the
    /// metrics render its keys from the same allocation). Returns the
    /// entry the snapshot holds afterwards: when `p` equals the published
    /// entry, nothing is replaced and the published one is returned, so
    /// the snapshot (and the `/status` body rendered for it) survives a
    /// rebuild that changed nothing, and callers that share the entry
    /// (the metrics) keep one allocation, not two equal ones.
    pub fn update_policy_shared(&self, p: Arc<PolicyStatus>) -> Arc<PolicyStatus> {
        let cur = self.snapshot.load();
        if let Some(same) = cur
            .policies
            .iter()
            .find(|x| Arc::ptr_eq(x, &p) || (x.name == p.name && ***x == *p))
        {
            return same.clone();
        }
        drop(cur);
        self.snapshot.rcu(|cur| {
            let mut next = (**cur).clone();
            match next.policies.iter_mut().find(|x| x.name == p.name) {
                Some(slot) => *slot = p.clone(),
                None => next.policies.push(p.clone()),
            }
            next
        });
        self.announce();
        p
    }

    /// Replace the entry `prev` with `next` (an update derived from it:
    /// new check times), only while the snapshot still holds `prev` itself.
    /// Returns false, changing nothing, when another write replaced it
    /// first (a rebuild that published meanwhile): the caller must rebuild
    /// rather than put its older copy back over the newer entry.
    pub fn replace_policy_if(&self, prev: &Arc<PolicyStatus>, next: Arc<PolicyStatus>) -> bool {
        let mut cur = self.snapshot.load_full();
        loop {
            let Some(i) = cur.policies.iter().position(|x| Arc::ptr_eq(x, prev)) else {
                return false;
            };
            let mut snap = (*cur).clone();
            snap.policies[i] = next.clone();
            let seen = self.snapshot.compare_and_swap(&cur, Arc::new(snap));
            if Arc::ptr_eq(&seen, &cur) {
                self.announce();
                return true;
            }
            // Another policy's entry (or anything else) changed: look again.
            cur = arc_swap::Guard::into_inner(seen);
        }
    }

    /// Keep only the named policies (after a reload removed some).
    pub fn retain_policies(&self, names: &[String]) {
        self.snapshot.rcu(|cur| {
            let mut next = (**cur).clone();
            next.policies.retain(|p| names.contains(&p.name));
            next.policies
                .sort_by_key(|p| names.iter().position(|n| *n == p.name));
            next
        });
        self.announce();
    }
}

/// `POST /rotate/{policy}` as a message to the daemon.
#[derive(Debug)]
pub struct RotateRequest {
    pub policy: String,
    pub lineage: Option<String>,
    pub revoke_old_immediately: bool,
    pub reply: oneshot::Sender<RotateReply>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum RotateReply {
    /// 202: rotations started (ids) or, for a rotation already past
    /// publishing, its old key's grace cut short.
    Accepted {
        rotations: Vec<String>,
        message: String,
    },
    /// 404
    UnknownPolicy,
    /// 404
    UnknownLineage { lineage: String },
    /// 409
    AlreadyRunning { rotations: Vec<String> },
    /// 409: observe-mode or misconfigured policies change nothing.
    Refused { message: String },
}

/// One line for logs (never Rust `Debug`): `accepted (ids): message`.
impl std::fmt::Display for RotateReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RotateReply::Accepted { rotations, message } => {
                write!(f, "accepted ({}): {message}", rotations.join(", "))
            }
            RotateReply::UnknownPolicy => f.write_str("unknown policy"),
            RotateReply::UnknownLineage { lineage } => write!(f, "unknown lineage {lineage:?}"),
            RotateReply::AlreadyRunning { rotations } => {
                write!(f, "already running ({})", rotations.join(", "))
            }
            RotateReply::Refused { message } => write!(f, "refused: {message}"),
        }
    }
}

pub type RotateSender = mpsc::Sender<RotateRequest>;

/// What an operator asks of one rotation (`rekey retry`, `rekey abandon`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Run the step it waits for now (skip the backoff; a failed rotation
    /// that can be resumed is resumed).
    Retry,
    /// End it as `failed` (reason `abandoned`): the old key stays; its next
    /// key is deleted when rekey created it and no sink acknowledged it.
    Abandon,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Retry => "retry",
            Command::Abandon => "abandon",
        }
    }
}

/// `POST /retry/{rotation}` or `POST /abandon/{rotation}` as a message to
/// the daemon.
#[derive(Debug)]
pub struct CommandRequest {
    pub command: Command,
    pub rotation: String,
    pub reply: oneshot::Sender<CommandReply>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CommandReply {
    /// 202
    Accepted { rotation: String, message: String },
    /// 404
    UnknownRotation { rotation: String },
    /// 409: the rotation is finished, or the command does not apply.
    Refused { message: String },
}

pub type CommandSender = mpsc::Sender<CommandRequest>;

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(state: KeyState) -> PolicyStatus {
        PolicyStatus {
            name: "p".to_string(),
            provider: "emulated".to_string(),
            mode: "rotate".to_string(),
            health: Health::Ok,
            next_check_at: None,
            last_check_at: None,
            keys: vec![KeyStatus {
                id: "k1".to_string(),
                name: "p-1".to_string(),
                lineage: "p".to_string(),
                created_at: None,
                expires_at: None,
                state,
            }]
            .into(),
            lineages: Lineages::default(),
            last_rotation: None,
            error: None,
        }
    }

    /// The touch of a quiet check (new check times over a copy of the
    /// entry) raced a rebuild: it must not put its older copy back.
    #[test]
    fn a_check_time_touch_does_not_overwrite_a_rebuild_published_meanwhile() {
        let h = StatusHandle::new(Utc::now());
        let copied = h.update_policy_shared(Arc::new(policy(KeyState::Current)));
        let mut touched = PolicyStatus::clone(&copied);
        touched.last_check_at = Some(Utc::now());
        // Meanwhile a rebuild publishes a newer entry (the key retires).
        let rebuilt = h.update_policy_shared(Arc::new(policy(KeyState::Retiring)));
        assert!(!h.replace_policy_if(&copied, Arc::new(touched.clone())));
        assert!(Arc::ptr_eq(&h.load().policies[0], &rebuilt));
        // Derived from what is published: replaced.
        let mut touched = PolicyStatus::clone(&rebuilt);
        touched.last_check_at = Some(Utc::now());
        let touched = Arc::new(touched);
        assert!(h.replace_policy_if(&rebuilt, touched.clone()));
        assert!(Arc::ptr_eq(&h.load().policies[0], &touched));
        assert_eq!(h.load().policies.len(), 1);
    }

    #[test]
    fn a_rebuilt_policy_equal_to_the_published_one_keeps_the_snapshot_and_its_entry() {
        let h = StatusHandle::new(Utc::now());
        let first = h.update_policy_shared(Arc::new(policy(KeyState::Current)));
        let before = h.load();
        let kept = h.update_policy_shared(Arc::new(policy(KeyState::Current)));
        assert!(
            Arc::ptr_eq(&kept, &first),
            "the published entry is handed back"
        );
        assert!(
            Arc::ptr_eq(&before, &h.load()),
            "the snapshot is not replaced"
        );
    }

    #[test]
    fn a_rebuilt_policy_that_changed_replaces_the_published_entry() {
        let h = StatusHandle::new(Utc::now());
        let first = h.update_policy_shared(Arc::new(policy(KeyState::Current)));
        let before = h.load();
        let next = h.update_policy_shared(Arc::new(policy(KeyState::Retiring)));
        assert!(!Arc::ptr_eq(&next, &first));
        let after = h.load();
        assert!(!Arc::ptr_eq(&before, &after));
        assert_eq!(after.policies.len(), 1);
        assert_eq!(
            after.policies[0].keys.get(0).unwrap().state(),
            KeyState::Retiring
        );
    }
}
