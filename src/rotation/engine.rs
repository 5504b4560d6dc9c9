//! The engine: drives each rotation through its states, committing every
//! transition to the store before the next side effect.
//!
//! ```text
//!                 begin_rotation (planner: expired / expiring / max_age /
//!                       │          bootstrap / manual)
//!                       ▼
//!   ┌──────────────► planned ── start_attempt: commit the attempt's unique
//!   │ next attempt      │       name, then call create
//!   │ (list by name,    │ create returned the secret: seal it, commit
//!   │  delete orphan)   ▼
//!   └── create failed  created ── after_create hook (bind), then publish to
//!                       │        each sink; per-sink acks, failed sinks
//!                       │        retried alone with backoff
//!                       │ every sink acknowledged: wipe the sealed secret
//!                       ▼
//!                   published ── schedule retirement at published_at + grace
//!                       │        (no old key: straight to completed)
//!                       ▼
//!                   retiring ─── grace over → new key still listed? every
//!                       │        readable sink still holds it (fingerprint)?
//!                       │        → disable/unbind if needed → delete old key
//!                       ▼        (404 = done; cannot delete → `retired`)
//!                   completed
//!
//!   planned/created ── failed max_attempts times, or a permanent error ──► failed
//!   failed (key created, still sealed) ── next check ──► created (resumed)
//!   published/retiring ── next key no longer listed (15 min) ──► failed
//!                         (`next_key_missing`: the old key is live again)
//!   any unfinished ── `rekey abandon` ──► failed (`abandoned`; in grace both
//!                     keys are kept and retirement stops)
//! ```
//!
//! Words: the *current key* is the lineage's live key being replaced; the
//! *next key* is the one this rotation creates; *grace* is how long the
//! current key lives after the next key is published everywhere.
//!
//! Invariants kept here: the old key is deleted only in `retiring`, which is
//! reachable only when every sink acknowledged; before deleting, the next
//! key must still be listed and every readable sink must still hold it. A
//! create whose outcome is unknown (crash, timeout) is resolved by listing
//! its unique name and deleting what is found (its secret was never
//! captured) before another attempt. Failures back off exponentially with
//! jitter, the cap shrinking as the current key's expiry nears. Retirement
//! never gives up by itself (the new key is already in use); it keeps
//! retrying and the policy reports `failing`, until an operator abandons it.
//!
//! Status freshness: a check, `rotate_now`, `retry_now` and `abandon`
//! rebuild their policy's status before they return, so a command's reply
//! and the status read after it show its own change. A rotation step only
//! marks its policy: the status is rebuilt at once when its last rebuild
//! began at least a *window* ago, otherwise when that window ends (the
//! daemon's loop wakes for it, [`Engine::flush_status`]). The window is 20
//! × the policy's last rebuild time, from [`STATUS_COALESCE_FLOOR`] (50 ms)
//! to [`STATUS_COALESCE_CAP`] (1 s), on a monotonic clock, so a step shows
//! in the status within the window plus one rebuild, and the conditions
//! and events a rebuild raises (DESIGN §5) come at most that late, still
//! once ([`StatusBuilt`]). A step whose failure may start a condition
//! rebuilds at once (`Engine::status_after_step`), so a condition that
//! starts and clears inside one window is still raised.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::gate::LeaseGate;
use super::health::Health;
use super::policy::{self, KeyView, Origin, PolicyPlan, Reason};
use super::report::{
    CommandReply, KeyState, Keys, LastRotation, LineageParts, Lineages, PolicyStatus, RotateReply,
    RotationSummary, StatusHandle,
};
use crate::clock::SharedClock;
use crate::config::{Config, Mode, PolicyConfig};
use crate::failpoint;
use crate::metrics::Metrics;
use crate::provider::listing::{ListedKey, Listing, Purpose};
use crate::provider::{CreateRequest, DeleteOutcome, ProviderError, ProviderKey, SharedProvider};
use crate::secret::SecretFields;
use crate::sink::{Publication, ReadBack, SharedSink};
use crate::state::seal::Sealer;
use crate::state::{
    CheckRecord, CreatedRecord, Event, LedgerGeneration, NewRotation, RotationRow, RotationState,
    SeenKey, Store, StoreError,
};

/// One generation of configuration with its built providers and sinks.
/// A reload makes a new one; rotations of removed policies keep theirs.
pub struct Runtime {
    pub config: Arc<Config>,
    pub providers: HashMap<String, SharedProvider>,
    pub sinks: HashMap<String, SharedSink>,
    /// Provider walks shared by every consumer (checks, id lookups, the
    /// check before a delete), per provider entry.
    pub walks: Arc<crate::provider::listing::Walks>,
}

impl Runtime {
    pub fn policy(&self, name: &str) -> Option<&PolicyConfig> {
        self.config.policy(name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("policy {0} is not in the running configuration")]
    UnknownPolicy(String),
    #[error("provider {0} is not in the running configuration")]
    UnknownProvider(String),
    #[error("{0}")]
    Provider(#[from] ProviderError),
    /// The leadership gate refused a side effect (PostgreSQL state only):
    /// the daemon stops rather than retry (DESIGN §8).
    #[error(transparent)]
    Leadership(#[from] super::gate::GateClosed),
    /// A sink refused the write because it holds a newer fence token: a
    /// newer leader wrote there. The daemon stops (DESIGN §8).
    #[error("sink {sink} refused the write: {message}")]
    SinkFenced { sink: String, message: String },
}

impl EngineError {
    /// Whether this error means the node must stop leading: a fenced
    /// commit, a closed leadership gate or a sink token refusal.
    pub fn is_fenced(&self) -> bool {
        match self {
            EngineError::Store(e) => matches!(e, StoreError::Fenced { .. }),
            EngineError::Leadership(_) | EngineError::SinkFenced { .. } => true,
            _ => false,
        }
    }
}

/// How long the engine waits for an eventually consistent listing to show
/// a key it just created (OceanBase's create returns no id) before that
/// counts as a failed step. The wait spends no attempts.
pub const LISTING_WAIT_MAX: Duration = Duration::from_secs(15 * 60);
/// Longest pause between two looks while waiting for the listing.
pub const LISTING_WAIT_STEP_MAX: Duration = Duration::from_secs(60);
/// Retirement's own schedule: exponential from the base up to this cap,
/// whatever the old key's expiry (an expired old key must not make the
/// delete retry every few seconds for ever).
pub const RETIRE_BACKOFF_CAP: Duration = Duration::from_secs(3600);
/// The shortest the expiry-derived cap may get: near (or past) expiry,
/// create and publish retry often, but never more than once a minute
/// once failures have grown the backoff that far.
pub const EXPIRY_CAP_FLOOR: Duration = Duration::from_secs(60);
/// Consecutive listings without the next key before a retiring rotation
/// ends with `next_key_missing`; the misses must also span
/// [`MISSING_WINDOW`] (eventually consistent lists, offset paging).
pub const MISSING_AFTER: u32 = 3;
/// How long the next key must stay missing from every listing (each begun
/// after it was created) before its rotation ends `next_key_missing`.
pub const MISSING_WINDOW: Duration = Duration::from_secs(15 * 60);
/// The step named when a created key's answer could not be read
/// (`NewKey::unreadable`); its rotation is failed with the key sealed.
pub const UNREADABLE_STEP: &str = "reading the created key";

/// The rotation failed because its created key's answer could not be read
/// (its error starts with [`UNREADABLE_STEP`]): never resumed by a check.
fn failed_reading_new_key(r: &RotationRow) -> bool {
    r.error
        .as_deref()
        .is_some_and(|e| e.starts_with(UNREADABLE_STEP))
}

/// Decisions text (bytes) a check group's quiet records hold before they
/// are written early ([`Engine::spill_quiet_decisions`]): 64 KiB, about
/// 400 lineages.
pub const QUIET_DECISIONS_BYTES: usize = 64 * 1024;

/// A rotation that failed after create is resumed by the next checks for
/// this long after its key was created; after that its key can no longer
/// be published and is abandoned (deleted when no sink acknowledged it).
pub const RESUME_FOR: Duration = Duration::from_secs(7 * 86400);
const NEXT_KEY_NOT_LISTED: &str = "is no longer listed";

/// The shortest any retry waits, whatever `Backoff::base` says
/// (`REKEY_BACKOFF_BASE_MS=0` must not turn a failure into a hot loop).
pub const BACKOFF_FLOOR: Duration = Duration::from_millis(10);

/// Exponential backoff with jitter; the cap shrinks as expiry nears, but
/// never below [`EXPIRY_CAP_FLOOR`]; every delay is at least `base`. A
/// `Retry-After` (RFC 9110 §10.2.3) lengthens a delay, up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        // REKEY_BACKOFF_BASE_MS shortens the schedule for tests and demos.
        let base = std::env::var("REKEY_BACKOFF_BASE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(2));
        Backoff {
            base,
            max: Duration::from_secs(3600),
        }
    }
}

impl Backoff {
    /// Delay before try number `failures + 1`.
    pub fn delay(
        &self,
        failures: u32,
        time_left: Option<ChronoDuration>,
        retry_after: Option<Duration>,
    ) -> Duration {
        // Hostile settings (a base of 0, or above the cap) are bounded
        // here: every delay lies in [BACKOFF_FLOOR, max].
        let max = self.max.max(BACKOFF_FLOOR);
        let base = self.base.clamp(BACKOFF_FLOOR, max);
        let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        let floor = EXPIRY_CAP_FLOOR.clamp(base, max);
        let cap = match time_left {
            // Near expiry, try again often: at most an eighth of what is
            // left, but an expired key must not turn this into a spin.
            Some(left) => (left.to_std().unwrap_or_default() / 8).clamp(floor, max),
            None => max,
        };
        let d = exp.min(cap);
        let jitter = rand::random::<f64>() * 0.5 + 0.5;
        let d = d.mul_f64(jitter).max(base.min(d));
        // A `Retry-After` is honoured up to the cap: an absurd one must
        // neither park the rotation for ever nor (past chrono's range)
        // collapse to no wait at all.
        match retry_after {
            Some(r) => d.max(r.min(max)),
            None => d,
        }
    }
}

impl Backoff {
    /// Retirement's schedule: from `base`, doubling, up to
    /// [`RETIRE_BACKOFF_CAP`] (or `max`, when lower), independent of any
    /// key's expiry; a `Retry-After` is honoured.
    pub fn retire_delay(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        let b = Backoff {
            base: self.base,
            max: self.max.min(RETIRE_BACKOFF_CAP),
        };
        b.delay(failures, None, retry_after)
    }
}

/// The `step` label of `rekey_step_failures_total` for a failure of `what`
/// in `state`.
fn step_label(state: RotationState, what: &str) -> &'static str {
    match state {
        RotationState::Planned => "create",
        RotationState::Created if what.starts_with("finding") => "find_id",
        RotationState::Created if what.contains("after_create") => "prepare",
        RotationState::Created => "publish",
        _ => "retire",
    }
}

/// What became of an abandoned rotation's next key.
enum Disposal {
    /// Deleted, never created, gone already, or kept because a sink holds it.
    Done,
    /// Kept: this many keys carry its attempt's name.
    Ambiguous(usize),
    /// Not deleted yet: the next check tries again.
    Retry,
}

/// What a step left the rotation waiting for.
enum Step {
    /// Go on to the next state now.
    Continue,
    /// Nothing to do before this time.
    Wait(DateTime<Utc>),
    /// Terminal (completed or failed).
    Done,
}

pub struct Engine {
    pub store: Arc<Store>,
    pub clock: SharedClock,
    pub sealer: Arc<Sealer>,
    pub metrics: Metrics,
    pub status: StatusHandle,
    /// Poked after every transition: the scheduler and the notification
    /// deliverer sleep on these instead of polling.
    pub wake_scheduler: Arc<Notify>,
    pub wake_notify: Arc<Notify>,
    /// `daemon.max_concurrent_rotations`: held only while a rotation is
    /// actively working, not while it waits out grace or backoff.
    pub slots: Arc<Semaphore>,
    pub backoff: Backoff,
    /// Leadership: checked before every provider create/delete and sink
    /// write; its fence travels with each publication
    /// ([`LeaseGate::single`] on SQLite).
    pub lease: LeaseGate,
    /// When each policy's status was last rebuilt from the store.
    pub status_built: StatusBuilt,
    /// Each policy's ledger as last read from the store ([`Engine::ledger`]).
    pub ledgers: LedgerCache,
    /// Each policy's last settled check ([`SettledChecks`]).
    pub settled: SettledChecks,
}

/// What [`Engine::check_policy_deferred`] did.
#[derive(Debug)]
pub enum Checked {
    /// It planned (every check that is not a reuse).
    Planned(PolicyPlan),
    /// It reused the policy's last settled check ([`SettledChecks`]): the
    /// plan is the one that check made, healthy with nothing due, over
    /// this many lineages.
    Reused { lineages: usize },
}

impl Checked {
    /// The plan's health.
    pub fn health(&self) -> Health {
        match self {
            Checked::Planned(p) => p.health,
            Checked::Reused { .. } => Health::Ok,
        }
    }

    /// How many lineages the plan has.
    pub fn lineages(&self) -> usize {
        match self {
            Checked::Planned(p) => p.lineages.len(),
            Checked::Reused { lineages } => *lineages,
        }
    }

    /// How many lineages are due (none in a reused plan).
    pub fn due(&self) -> usize {
        match self {
            Checked::Planned(p) => p.due().count(),
            Checked::Reused { .. } => 0,
        }
    }
}

/// What [`Engine::spill_quiet_decisions`] knows of one check group's quiet
/// records between calls: how many it has counted and spilled, the
/// decisions text held since the last spill, and whether a spill failed
/// (then the group spills no more: one warning, and the final write).
#[derive(Debug, Default)]
pub struct QuietSpill {
    counted: usize,
    spilled: usize,
    held: usize,
    failed: bool,
}

/// Each policy's ledger as last read, kept only while it is provably what
/// the store holds: tagged with the policy's [`Store::ledger_generation`]
/// read *before* the ledger was, and with the configuration its rival
/// policies came from. Any write that may touch the policy's ledger (its
/// keys, rotations, attempts, conditions, or the keys rows of another
/// policy holding one of its key ids, which its `claimed_elsewhere` reads)
/// moves that generation and so invalidates the entry; a write that names
/// no policy invalidates every entry, and so does a reload (another
/// configuration) or another store. A stale ledger could make rekey take
/// its own key for a foreign one or a foreign key for its own, so there is
/// no time-based expiry: the store decides which writes reach which
/// policies, read inside each write's transaction.
///
/// Only policies with work in flight keep an entry
/// ([`policy::Ledger::in_flight`]: a rotation not finished, a create attempt
/// to resolve, an abandoned key to delete), whose rotation steps and checks
/// read it again and again; [`Engine::ledger`] drops the entry of any other
/// read. A settled plan ([`SettledChecks`]) is one with nothing in flight,
/// and the checks that reuse it read no ledger (a command or a status
/// rebuild that reads it meanwhile keeps no copy either, and any write that
/// puts work in flight moves the generation the settled plan stands on).
/// An idle daemon therefore holds no copy of
/// the store's key rows (the ledgers were ~1 MB at 10,000 keys and ~10 MB at
/// 100,000, held for nothing between checks, and a first round held every
/// policy's at once), and a planning round holds only the ledgers of the
/// checks running. The cost: a quiet policy's check that plans reads its
/// rows from the store (once, twice when it wrote and rebuilds its status).
#[derive(Debug, Default)]
pub struct LedgerCache(std::sync::Mutex<HashMap<String, CachedLedger>>);

#[derive(Debug)]
struct CachedLedger {
    generation: LedgerGeneration,
    /// The configuration the rivals were taken from (a `Weak` keeps its
    /// address from being reused by another configuration).
    config: std::sync::Weak<Config>,
    ledger: Arc<policy::Ledger>,
}

impl LedgerCache {
    fn get(
        &self,
        policy: &str,
        generation: LedgerGeneration,
        config: &Arc<Config>,
    ) -> Option<Arc<policy::Ledger>> {
        let cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let c = cache.get(policy)?;
        (c.generation == generation && std::ptr::eq(c.config.as_ptr(), Arc::as_ptr(config)))
            .then(|| c.ledger.clone())
    }

    /// Drop `policy`'s entry (a read of a ledger with nothing in flight:
    /// the store holds the rows, and the next check that plans reads them
    /// again; issue 13).
    fn forget(&self, policy: &str) {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        cache.remove(policy);
    }

    /// Whether `policy` has an entry (tests).
    #[cfg(test)]
    pub fn holds(&self, policy: &str) -> bool {
        let cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        cache.contains_key(policy)
    }

    fn put(
        &self,
        policy: &str,
        generation: LedgerGeneration,
        config: &Arc<Config>,
        ledger: Arc<policy::Ledger>,
    ) {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Entries from before a write that named no policy, or of another
        // store, can never be used again; another policy's entry may.
        cache.retain(|_, c| c.generation.same_epoch(&generation));
        cache.insert(
            policy.to_string(),
            CachedLedger {
                generation,
                config: Arc::downgrade(config),
                ledger,
            },
        );
    }
}

/// Each policy's last *settled* check, so that the next check of the same
/// keys can skip planning (issue 13: most checks of an idle daemon change
/// nothing). An entry is the SHA-256 digest of the policy's listing (every
/// field of every key, in listing order, and whether the walk completed),
/// the policy's [`Store::ledger_generation`] read *before* the check read
/// its ledger, the configuration (a `Weak`, as in [`LedgerCache`]) and the
/// instant the plan stops being settled
/// ([`policy::PolicyPlan::settled_until`]).
///
/// Why a check that finds its entry may skip planning and do only what a
/// planned check would have done (write its check time, touch or rebuild
/// its status): the planned check is a function of the listing, the ledger
/// and other store rows, the configuration and `now`, and each is pinned —
/// - the listing by its digest (two different listings of one policy would
///   need a SHA-256 collision);
/// - the ledger (the policy's keys, rotations, attempts, conditions, and
///   the keys rows of every policy holding one of its key ids, so a
///   rival's claims too) and the rows the check reads besides it (its
///   abandoned rotations and their acknowledgements) by the policy's
///   generation: every write to those rows moves it, committed or not,
///   and the entry was read before them;
/// - the configuration by identity (a reload makes a new one);
/// - `now` by `settled_until`, which covers every threshold of the plan
///   (whose messages print instants, not times left) and the expiry
///   warnings of stale keys;
/// - and an entry is only made from a check that wrote no ledger row,
///   started nothing, resumed or deleted nothing, has no rotation in
///   flight, and whose ledger holds no create attempt still to resolve
///   (resolving one uses each new walk's start, which the digest leaves
///   out) — so the planned check it stands for wrote nothing either.
///
/// The decisions stored by the check that made the entry stay in the store
/// (a reuse writes none): they are the text a new plan would print.
/// Any check that plans drops or replaces the policy's entry.
#[derive(Debug, Default)]
pub struct SettledChecks(std::sync::Mutex<HashMap<String, Settled>>);

#[derive(Debug)]
struct Settled {
    generation: LedgerGeneration,
    config: std::sync::Weak<Config>,
    listing: [u8; 32],
    /// The plan holds for checks at `since..until` (`since`: when the check
    /// that made it started; a clock stepped back before it is a miss).
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    lineages: usize,
}

impl SettledChecks {
    /// The lineage count of `policy`'s settled plan, when its entry matches.
    fn get(
        &self,
        policy: &str,
        generation: LedgerGeneration,
        config: &Arc<Config>,
        listing: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Option<usize> {
        let memo = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let s = memo.get(policy)?;
        (s.generation == generation
            && std::ptr::eq(s.config.as_ptr(), Arc::as_ptr(config))
            && s.listing == *listing
            && s.since <= now
            && now < s.until)
            .then_some(s.lineages)
    }

    fn put(&self, policy: &str, settled: Option<Settled>) {
        let mut memo = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match settled {
            Some(s) => memo.insert(policy.to_string(), s),
            None => memo.remove(policy),
        };
    }
}

/// SHA-256 of every field of a listing's keys, in order, and of whether it
/// completed (each field length-prefixed, so no two listings share a
/// stream of bytes).
fn listing_digest(listing: &Listing) -> [u8; 32] {
    keys_digest(listing.keys(), listing.complete)
}

/// [`listing_digest`] of the listing made of `keys` (`complete`: whether
/// its walk completed), without making it.
fn keys_digest<'a>(keys: impl Iterator<Item = ListedKey<'a>>, complete: bool) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    let time = |t: Option<DateTime<Utc>>| match t {
        Some(t) => {
            let mut b = [0u8; 13];
            b[0] = 1;
            b[1..9].copy_from_slice(&t.timestamp().to_le_bytes());
            b[9..].copy_from_slice(&t.timestamp_subsec_nanos().to_le_bytes());
            b
        }
        None => [0u8; 13],
    };
    field(&[u8::from(complete)]);
    for k in keys {
        field(k.id().as_bytes());
        field(k.name().as_bytes());
        field(&time(k.created_at()));
        field(&time(k.expires_at()));
        field(&(k.meta().len() as u64).to_le_bytes());
        for (name, value) in k.meta() {
            field(name.as_bytes());
            field(value.to_string().as_bytes());
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finalize().as_slice());
    out
}

/// How old a policy's status may grow before it is rebuilt from the store
/// even when nothing happened: conditions that arise only with time (a
/// rotation older than its bound, a key past its expiry) are then reported,
/// with their event, within about that interval. A check that changes
/// nothing only updates the check times of a status younger than this, or
/// built from a settled plan that still stands ([`StatusBuilt`]).
pub const STATUS_REFRESH: Duration = Duration::from_secs(30);

/// The shortest a policy's coalescing window gets: after a rotation step,
/// its status is rebuilt at once when its last rebuild started at least a
/// window ago, else once that window is over ([`StatusBuilt`]).
pub const STATUS_COALESCE_FLOOR: Duration = Duration::from_millis(50);
/// The longest a policy's coalescing window gets, whatever its rebuilds
/// cost: the bound on how late a step shows in the status (plus one
/// rebuild, and the main loop's turn to run it).
pub const STATUS_COALESCE_CAP: Duration = Duration::from_secs(1);
/// A policy's coalescing window is this many times its last rebuild's
/// duration (within [`STATUS_COALESCE_FLOOR`]..=[`STATUS_COALESCE_CAP`]):
/// rotation steps then spend at most about 1/20 of a core rebuilding one
/// policy's status, however many lineages it has.
pub const STATUS_COALESCE_FACTOR: u32 = 20;

/// When each policy's status was last rebuilt from the store (monotonic),
/// and, when the plan it was built from was settled
/// ([`policy::PolicyPlan::settled_until`]), until when a rebuild would
/// give the same status: the policy's [`Store::ledger_generation`] read
/// before the ledger it was built from, the configuration, and the end of
/// the settled plan. While the generation and the configuration are those
/// and the end is ahead, a rebuild would read the same ledger and rows
/// (every write to them moves the generation; the policy's own check rows
/// only move its check times, which a touch sets) and print the same plan,
/// so the status is current without one — instead of rebuilding it every
/// [`STATUS_REFRESH`] to catch conditions that arise with time. The
/// generation is the policy's, not the store's (issue 13): other
/// policies' first checks writing their own keys, moments after this
/// status was built, left every status of the first round unsettled, and
/// all were rebuilt at once [`STATUS_REFRESH`] later; only a write that
/// may change this policy's ledger (a rival's keys rows of one of its key
/// ids among them) does so now.
///
/// Also where rebuilds after rotation steps are coalesced (issue 13: a
/// rebuild re-plans the whole policy, so one per step of 200 rotating
/// lineages was O(n²) work in 3–5 ms bursts that delayed the status
/// thread). A step *marks* its policy ([`StatusBuilt::note_step`]); the
/// policy is rebuilt at once when its last rebuild started at least its
/// *window* ago, otherwise when that window is over
/// ([`StatusBuilt::take_due`], run by the daemon's loop through
/// [`Engine::flush_status`]). The window is [`STATUS_COALESCE_FACTOR`] ×
/// the policy's last rebuild time, within [`STATUS_COALESCE_FLOOR`] and
/// [`STATUS_COALESCE_CAP`], measured on a monotonic clock. Any rebuild
/// (a check's, a command's, a flush) clears the marks made before it read
/// the store, and only those; one that publishes after a rebuild that
/// read the store later (they overlapped) leaves the policy marked, as
/// the status it put out is the older. Rebuilds for commands (`rotate`, `retry`,
/// `abandon`) and checks are never deferred. Conditions and their events
/// are raised by the rebuild, so once per condition as before, at most a
/// window later.
pub struct StatusBuilt {
    policies: std::sync::Mutex<HashMap<String, Built>>,
    /// The monotonic clock windows are measured on (a manual one in tests).
    mono: Arc<dyn crate::clock::Elapsed>,
    /// [`STATUS_COALESCE_FLOOR`]; zero: no coalescing (every step rebuilds).
    floor: Duration,
    /// Marks made so far (a mark's sequence number is its count): a rebuild
    /// clears the marks numbered up to what it read before the store.
    marks: std::sync::atomic::AtomicU64,
    /// Rebuilds started since start-up.
    rebuilds: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct Built {
    /// When the status was last rebuilt (on `mono`); `None`: never.
    at: Option<Duration>,
    settled: Option<SettledSpan>,
    /// When the last rebuild started or was claimed: the window runs from
    /// there.
    claimed: Option<Duration>,
    /// The policy's coalescing window (from its last rebuild's duration;
    /// the floor until one is published).
    window: Duration,
    /// The newest step mark no rebuild has covered yet.
    dirty: Option<u64>,
    /// The most marks any published rebuild had seen: one that saw fewer
    /// and publishes later put an older status out.
    published: u64,
    /// The configuration the latest step ran on: a policy a reload removed
    /// while its rotations finish on the retained configuration is rebuilt
    /// from it ([`Engine::flush_status`]).
    step_config: Option<std::sync::Weak<Config>>,
}

/// What [`StatusBuilt::begin`] hands to [`StatusBuilt::mark`]: the marks
/// made before the rebuild read the store, and when it started.
struct Rebuild {
    seen: u64,
    started: Duration,
}

/// What a status rebuild read the store after ([`Engine::store_read`]):
/// the step marks made by then ([`StatusBuilt`]) and the policy's
/// [`Store::ledger_generation`].
#[derive(Debug, Clone, Copy)]
struct StoreRead {
    marks: u64,
    generation: LedgerGeneration,
}

/// A status built from a settled plan: the policy's ledger generation read
/// before its ledger, its configuration, and the instants `since..until`
/// the plan holds for.
type SettledSpan = (
    LedgerGeneration,
    std::sync::Weak<Config>,
    DateTime<Utc>,
    DateTime<Utc>,
);

impl Default for StatusBuilt {
    /// The daemon's: coalescing from [`STATUS_COALESCE_FLOOR`], on the boot
    /// clock.
    fn default() -> Self {
        StatusBuilt::new(Arc::new(crate::clock::BootTime), STATUS_COALESCE_FLOOR)
    }
}

impl StatusBuilt {
    /// Windows measured on `mono`, never shorter than `floor` (zero: every
    /// rotation step rebuilds its policy's status at once).
    pub fn new(mono: Arc<dyn crate::clock::Elapsed>, floor: Duration) -> Self {
        StatusBuilt {
            policies: Default::default(),
            mono,
            floor,
            marks: Default::default(),
            rebuilds: Default::default(),
        }
    }

    /// No coalescing: each rotation step rebuilds its policy's status
    /// before [`Engine::advance`] returns.
    pub fn immediate() -> Self {
        StatusBuilt::new(Arc::new(crate::clock::BootTime), Duration::ZERO)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Built>> {
        self.policies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many status rebuilds have started (checks, steps, commands,
    /// flushes, the periodic refresh).
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many step marks have been made: taken before a rebuild reads
    /// the store ([`StoreRead`]).
    fn marks(&self) -> u64 {
        self.marks.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A rebuild of `policy` starts, over what the store held after the
    /// first `seen` marks; hand the result to [`StatusBuilt::mark`] once
    /// the status is out.
    fn begin(&self, policy: &str, seen: u64) -> Rebuild {
        self.rebuilds
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let started = self.mono.elapsed();
        let mut all = self.lock();
        all.entry(policy.to_string()).or_default().claimed = Some(started);
        Rebuild { seen, started }
    }

    /// The rebuild `r` of `policy` is published: note when, what it was
    /// settled on, and its window; clear the step marks it covered.
    fn mark(&self, policy: &str, settled: Option<SettledSpan>, r: Rebuild) {
        let now = self.mono.elapsed();
        let window = if self.floor.is_zero() {
            Duration::ZERO
        } else {
            (now.saturating_sub(r.started))
                .saturating_mul(STATUS_COALESCE_FACTOR)
                .clamp(self.floor, STATUS_COALESCE_CAP.max(self.floor))
        };
        let mut all = self.lock();
        let b = all.entry(policy.to_string()).or_default();
        b.at = Some(now);
        b.settled = settled;
        b.window = window;
        if b.dirty.is_some_and(|seq| seq <= r.seen) {
            b.dirty = None;
        }
        if r.seen < b.published {
            // Overtaken: a rebuild that read the store later published
            // first, and this one replaced it. Marked until a newer one is
            // out.
            b.dirty = b.dirty.max(Some(b.published));
        }
        b.published = b.published.max(r.seen);
    }

    /// A rotation step of `policy` committed: mark its status out of date.
    /// Returns whether the caller should rebuild it now (its last rebuild
    /// started at least its window ago; claimed, so concurrent steps do
    /// not all rebuild); otherwise [`StatusBuilt::take_due`] hands it out
    /// when the window is over.
    pub fn note_step(&self, policy: &str) -> bool {
        let now = self.mono.elapsed();
        let mut all = self.lock();
        let seq = self.marks.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let b = all.entry(policy.to_string()).or_default();
        b.dirty = Some(seq);
        let due = b
            .claimed
            .is_none_or(|c| now >= c.saturating_add(b.window.max(self.floor)));
        if due {
            b.claimed = Some(now);
        }
        due
    }

    /// The marked policies whose window is over (each claimed for a
    /// rebuild the caller makes now), and how long until the next marked
    /// one's window is (`None`: nothing else is marked).
    pub fn take_due(&self) -> (Vec<String>, Option<Duration>) {
        self.take(false)
    }

    /// Every marked policy, its window over or not (each claimed for a
    /// rebuild the caller makes now): the daemon's last flush before it
    /// stops, so no committed step is left out of the status.
    pub fn take_all(&self) -> Vec<String> {
        self.take(true).0
    }

    /// [`StatusBuilt::take_due`], or with `all` every marked policy.
    fn take(&self, all: bool) -> (Vec<String>, Option<Duration>) {
        let now = self.mono.elapsed();
        let mut all_built = self.lock();
        let mut due = Vec::new();
        let mut next: Option<Duration> = None;
        for (name, b) in all_built.iter_mut().filter(|(_, b)| b.dirty.is_some()) {
            let at = b
                .claimed
                .map_or(now, |c| c.saturating_add(b.window.max(self.floor)));
            if all || now >= at {
                b.claimed = Some(now);
                due.push(name.clone());
            } else {
                let wait = at - now;
                next = Some(next.map_or(wait, |n| n.min(wait)));
            }
        }
        (due, next)
    }

    /// Remember `config` as the one `policy`'s latest step ran on.
    fn step_ran_on(&self, policy: &str, config: &Arc<Config>) {
        let mut all = self.lock();
        let b = all.entry(policy.to_string()).or_default();
        if !b
            .step_config
            .as_ref()
            .is_some_and(|c| std::ptr::eq(c.as_ptr(), Arc::as_ptr(config)))
        {
            b.step_config = Some(Arc::downgrade(config));
        }
    }

    /// The configuration `policy`'s latest step ran on, while something
    /// (the daemon's retained runtime) still holds it.
    fn step_config(&self, policy: &str) -> Option<Arc<Config>> {
        self.lock()
            .get(policy)
            .and_then(|b| b.step_config.as_ref())
            .and_then(std::sync::Weak::upgrade)
    }

    /// Drop `policy`'s step marks (it left the configuration: nothing to
    /// rebuild).
    pub fn forget_marks(&self, policy: &str) {
        if let Some(b) = self.lock().get_mut(policy) {
            b.dirty = None;
        }
    }

    /// Whether `policy`'s status was rebuilt less than `age` ago.
    pub fn younger_than(&self, policy: &str, age: Duration) -> bool {
        let now = self.mono.elapsed();
        self.lock()
            .get(policy)
            .and_then(|b| b.at)
            .is_some_and(|at| now.saturating_sub(at) < age)
    }

    /// Whether `policy`'s status needs no rebuild at `now`: rebuilt less
    /// than `age` ago, or from a settled plan that still stands (the
    /// policy's ledger `generation` and the configuration `config` unchanged since,
    /// `now` before its end).
    pub fn current(
        &self,
        policy: &str,
        age: Duration,
        generation: LedgerGeneration,
        config: &Arc<Config>,
        now: DateTime<Utc>,
    ) -> bool {
        let mono = self.mono.elapsed();
        self.lock().get(policy).is_some_and(|b| {
            b.at.is_some_and(|at| mono.saturating_sub(at) < age)
                || b.settled.as_ref().is_some_and(|(g, c, since, until)| {
                    *g == generation
                        && std::ptr::eq(c.as_ptr(), Arc::as_ptr(config))
                        && *since <= now
                        && now < *until
                })
        })
    }
}

/// A rotation as `status` shows it.
fn summary(r: &RotationRow) -> RotationSummary {
    RotationSummary {
        id: r.id.clone(),
        state: r.state.as_str().into(),
        new_key: r.new_key_id.clone().or_else(|| r.new_key_name.clone()),
        old_key: r.old_key_id.clone(),
        failures: r.failures,
        error: r.error.clone(),
        next_attempt_at: r.next_attempt_at,
        retire_at: r.retire_at,
        revoke_old_immediately: r.revoke_old_immediately,
    }
}

fn key_view_to_seen(k: &KeyView) -> SeenKey {
    SeenKey {
        key_id: k.key.id.clone(),
        name: k.key.name.clone(),
        lineage: k.lineage.clone(),
        created_at: k.key.created_at,
        expires_at: k.key.expires_at,
        origin: match k.origin {
            Origin::Created { .. } => "created",
            Origin::Adopted => "adopted",
            Origin::Orphan { .. } => "orphan",
            Origin::Unrecognised => "unrecognised",
        },
        rotation_id: match &k.origin {
            Origin::Created { rotation_id } => rotation_id.clone(),
            Origin::Orphan { rotation_id } => Some(rotation_id.clone()),
            Origin::Adopted | Origin::Unrecognised => None,
        },
        unknown_time: k
            .key
            .meta
            .get(crate::provider::META_UNKNOWN_TIME)
            .map(|v| v.to_string()),
    }
}

impl Engine {
    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn poke(&self) {
        self.wake_scheduler.notify_one();
        self.wake_notify.notify_one();
    }

    fn provider<'a>(&self, rt: &'a Runtime, name: &str) -> Result<&'a SharedProvider, EngineError> {
        rt.providers
            .get(name)
            .ok_or_else(|| EngineError::UnknownProvider(name.to_string()))
    }

    // ------------------------------------------------------------ checking

    /// One scheduled check of a policy: list, plan, record, start the
    /// rotations that are due. Returns the plan.
    pub async fn check_policy(&self, rt: &Runtime, name: &str) -> Result<PolicyPlan, EngineError> {
        let policy = rt
            .policy(name)
            .ok_or_else(|| EngineError::UnknownPolicy(name.to_string()))?;
        let provider = self.provider(rt, &policy.provider)?.clone();
        let walk = rt
            .walks
            .listing(&provider, &self.clock, None, Purpose::Check)
            .await;
        self.check_policy_from(rt, name, walk).await
    }

    /// [`Engine::check_policy`] planned from a walk already made (the
    /// daemon walks once for every policy of one account that falls due
    /// together); `walk` is every key of the policy's provider account, or
    /// the walk's error, which fails this check like a failed listing.
    pub async fn check_policy_from(
        &self,
        rt: &Runtime,
        name: &str,
        walk: Result<Arc<Listing>, ProviderError>,
    ) -> Result<PolicyPlan, EngineError> {
        let policy = rt
            .policy(name)
            .ok_or_else(|| EngineError::UnknownPolicy(name.to_string()))?;
        let listing = walk.map(|l| l.filtered(|n| policy.matches(n)));
        self.check_policy_listed(rt, name, listing).await
    }

    /// [`Engine::check_policy_from`] with the walk already narrowed to the
    /// keys the policy's `match` glob accepts ([`Listing::split`] narrows
    /// one walk for every policy of an account in one pass).
    pub async fn check_policy_listed(
        &self,
        rt: &Runtime,
        name: &str,
        listing: Result<Listing, ProviderError>,
    ) -> Result<PolicyPlan, EngineError> {
        let mut quiet = Vec::new();
        failpoint::delay("check").await;
        let plan = self.check_planned(rt, name, listing, &mut quiet).await;
        self.store.record_check_times(&quiet)?;
        plan
    }

    /// [`Engine::check_policy_listed`], except that
    /// - a check which changed nothing in the store and whose healthy
    ///   status only needed its check times moved pushes its `policy_state`
    ///   record (no keys) onto `quiet` instead of writing it: the caller
    ///   writes a whole group's with one [`Store::record_check_times`] (and
    ///   may set their `next_check_at`). Any other check writes its record
    ///   itself, before its status is rebuilt from the store;
    /// - a check whose listing, ledger and configuration are those of the
    ///   policy's last settled check, before that plan stops being settled,
    ///   does not plan again ([`SettledChecks`]): [`Checked::Reused`].
    pub async fn check_policy_deferred(
        &self,
        rt: &Runtime,
        name: &str,
        listing: Result<Listing, ProviderError>,
        quiet: &mut Vec<CheckRecord>,
    ) -> Result<Checked, EngineError> {
        failpoint::delay("check").await;
        if let (Ok(l), Some(policy)) = (&listing, rt.policy(name))
            && let Some(lineages) =
                self.reuse_settled(rt, policy, listing_digest(l), l.complete, quiet)?
        {
            return Ok(Checked::Reused { lineages });
        }
        self.check_planned(rt, name, listing, quiet)
            .await
            .map(Checked::Planned)
    }

    /// Write `quiet`'s records now, and let their decisions text go, once
    /// the text held passes `budget` bytes (the daemon's
    /// [`QUIET_DECISIONS_BYTES`]); returns whether it wrote. Called after
    /// each check of a group with the group's records and its one
    /// [`QuietSpill`], which counts only the records pushed since the last
    /// call (a group of N policies costs O(N), not O(N²)). A group's quiet
    /// records otherwise wait for its one write at the end, and a planned
    /// check's decisions are ~160 bytes per lineage: a group's first round
    /// over 10,000 keys held 1.6 MB of them at the daemon's peak
    /// (benches/RESULTS.md, 2026-12-02 14:00). The records stay, with
    /// `decisions: None` (the stored text is kept), for the group's final
    /// write of their next checks; nothing reads these rows before it, so
    /// writing them early changes nothing a reader sees. A spill writes
    /// only the records that still hold decisions (each record once, not
    /// again at every later spill of the group). The write is
    /// [`Store::record_check_times`]' (fenced, not waiting for the disk).
    ///
    /// Errors: the store's, once per group: the records keep their
    /// decisions for the final write, and the group spills no more.
    pub fn spill_quiet_decisions(
        &self,
        quiet: &mut [CheckRecord],
        spill: &mut QuietSpill,
        budget: usize,
    ) -> Result<bool, EngineError> {
        let new = quiet.get(spill.counted..).unwrap_or_default();
        spill.held += new
            .iter()
            .filter_map(|r| r.decisions.as_ref())
            .map(String::len)
            .sum::<usize>();
        spill.counted = quiet.len();
        if spill.failed || spill.held <= budget {
            return Ok(false);
        }
        // Only the records whose decisions are still held: those an
        // earlier spill wrote (and those of reused checks, which carry
        // none) wait for the final write, once.
        let unspilled = quiet.get_mut(spill.spilled..).unwrap_or_default();
        if let Err(e) = self
            .store
            .record_check_times(unspilled.iter().filter(|r| r.decisions.is_some()))
        {
            spill.failed = true;
            return Err(e.into());
        }
        for r in unspilled.iter_mut() {
            r.decisions = None;
        }
        spill.spilled = quiet.len();
        spill.held = 0;
        Ok(true)
    }

    /// [`Engine::check_policy_deferred`] of the keys at `positions` of
    /// `walk` (from [`Listing::split`]), the policy's listing made only
    /// when the check plans: a reused check copies no key.
    pub async fn check_policy_in_walk(
        &self,
        rt: &Runtime,
        name: &str,
        walk: &Listing,
        positions: &[u32],
        quiet: &mut Vec<CheckRecord>,
    ) -> Result<Checked, EngineError> {
        failpoint::delay("check").await;
        if let Some(policy) = rt.policy(name) {
            let keys = positions.iter().filter_map(|&n| walk.get(n as usize));
            let digest = keys_digest(keys, walk.complete);
            if let Some(lineages) = self.reuse_settled(rt, policy, digest, walk.complete, quiet)? {
                return Ok(Checked::Reused { lineages });
            }
        }
        self.check_planned(rt, name, Ok(walk.subset(positions)), quiet)
            .await
            .map(Checked::Planned)
    }

    /// The check of [`Engine::check_policy_deferred`] when `policy`'s last
    /// settled check stands for it ([`SettledChecks`]; `digest`: its
    /// listing's, which is `complete` or not): write its check time (onto
    /// `quiet` when its status only needs its check times moved) and return
    /// the plan's lineage count; `None` (nothing done) otherwise.
    fn reuse_settled(
        &self,
        rt: &Runtime,
        policy: &PolicyConfig,
        digest: [u8; 32],
        complete: bool,
        quiet: &mut Vec<CheckRecord>,
    ) -> Result<Option<usize>, EngineError> {
        let started = self.now();
        let read = self.store_read(&policy.name);
        let Some(lineages) =
            self.settled
                .get(&policy.name, read.generation, &rt.config, &digest, started)
        else {
            return Ok(None);
        };
        let next_check_at = policy.schedule.next_after(started);
        let record = CheckRecord {
            policy: policy.name.clone(),
            provider: policy.provider.clone(),
            at: started,
            next_check_at,
            health: Health::Ok.as_str().into(),
            error: None,
            // The stored decisions are this plan's (its messages print no
            // time left: PolicyPlan::settled_until).
            decisions: None,
            keys: Vec::new(),
            complete_listing: complete,
        };
        if self.touch_status(rt, &policy.name, started, next_check_at) {
            quiet.push(record);
        } else {
            self.store
                .record_check_times(std::slice::from_ref(&record))?;
            let ledger = self.ledger(rt, policy)?;
            self.publish_status(rt, policy, &ledger, read)?;
        }
        Ok(Some(lineages))
    }

    /// A check planned from `listing` (see [`Engine::check_policy_deferred`]
    /// for `quiet`); records the policy's settled check, or drops it.
    async fn check_planned(
        &self,
        rt: &Runtime,
        name: &str,
        listing: Result<Listing, ProviderError>,
        quiet: &mut Vec<CheckRecord>,
    ) -> Result<PolicyPlan, EngineError> {
        self.settled.put(name, None);
        let policy = rt
            .policy(name)
            .ok_or_else(|| EngineError::UnknownPolicy(name.to_string()))?;
        let provider = self.provider(rt, &policy.provider)?.clone();
        let started = self.now();
        let next_check_at = policy.schedule.next_after(started);
        let listing = match listing {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(policy = %policy.name, provider = %policy.provider, error = %e, class = e.class(), "check failed: cannot list keys");
                let prev = self
                    .store
                    .policy_state(name)?
                    .map(|p| p.decisions.to_string())
                    .unwrap_or_else(|| "null".into());
                self.store.record_check(&CheckRecord {
                    policy: policy.name.clone(),
                    provider: policy.provider.clone(),
                    at: started,
                    next_check_at,
                    health: Health::Failing.as_str().into(),
                    error: Some(e.to_string()),
                    decisions: Some(prev),
                    keys: Vec::new(),
                    complete_listing: false,
                })?;
                self.refresh_status(rt, name)?;
                return Err(e.into());
            }
        };
        // Read before the ledger: a settled check made from this ledger is
        // only reused while no write may have changed it.
        let read = self.store_read(name);
        let generation = read.generation;
        let ledger = self.ledger(rt, policy)?;
        let (removed, orphans_written, orphan_left) = self
            .clean_orphans(rt, policy, &provider, &listing, &ledger)
            .await;
        // Reloaded only when resolving orphans wrote to the store.
        let ledger = if orphans_written {
            self.ledger(rt, policy)?
        } else {
            ledger
        };
        let listed: Vec<ProviderKey> = listing
            .keys()
            .filter(|k| !removed.contains(k.id()))
            .map(ListedKey::to_owned)
            .collect();
        let views = policy::assign_lineages(policy, listed, &ledger);
        let seen: Vec<SeenKey> = views.iter().map(key_view_to_seen).collect();
        let plan = self.plan_from(rt, policy, views, &ledger, Some(listing.started_at))?;
        // Serialised straight to text (no `Value` tree per lineage): this
        // runs on every check. Ordered by lineage, as a JSON object.
        let decisions = serde_json::to_string(
            &plan
                .lineages
                .iter()
                .map(|l| (l.name.as_str(), &l.decision))
                .collect::<std::collections::BTreeMap<_, _>>(),
        )
        .unwrap_or_else(|_| "{}".into());
        let record = CheckRecord {
            policy: policy.name.clone(),
            provider: policy.provider.clone(),
            at: started,
            next_check_at,
            health: plan.health.as_str().into(),
            error: plan.misconfigured.clone(),
            decisions: Some(decisions),
            keys: seen,
            complete_listing: true,
        };
        // A listing that changes no key row writes only the check's time
        // (and health, decisions): no upsert per listed key, and not before
        // the end (where it may join its group's one transaction).
        let keys_written =
            crate::state::check_changes_keys(&ledger.known, &record.keys, record.complete_listing);
        let time_only = if keys_written {
            self.store.record_check(&record)?;
            drop(record);
            None
        } else {
            let mut r = record;
            r.keys = Vec::new();
            Some(r)
        };
        // Whether this check changed what the ledger holds (keys, attempts,
        // rotations): if not, the status is rebuilt from the same ledger.
        let mut store_changed = orphans_written || keys_written;
        for l in &plan.lineages {
            tracing::debug!(policy = %policy.name, lineage = %l.name, reason = l.decision.reason.as_str(), health = l.health.as_str(), "{}", l.decision.message);
        }
        if let Some(m) = &plan.misconfigured {
            tracing::error!(policy = %policy.name, "policy misconfigured, changing nothing: {m}");
        }
        self.raise_expiring(policy, &plan)?;
        self.raise_unrecognised(policy, &plan)?;
        let mut started_any = false;
        if policy.mode == Mode::Rotate && plan.misconfigured.is_none() {
            // Resumable rotations are resumed whether or not their lineage
            // is due (the key they created is waiting, sealed).
            for l in &plan.lineages {
                if let Some(r) = &l.resumable {
                    // What was sealed is what could not be read (a whole
                    // archive, say): publishing it unread would hand the
                    // consumers the wrong thing. It waits for a manual
                    // rotate (or is abandoned after RESUME_FOR); the
                    // lineage starts nothing else meanwhile (no churn).
                    if failed_reading_new_key(r) && !self.past_resume(r) {
                        continue;
                    }
                    store_changed = true;
                    started_any |= self.resume_or_abandon(rt, r, l.decision.reason).await?;
                }
            }
            store_changed |=
                self.cut_grace_short(policy, &plan, (!keys_written).then_some(&ledger.known))?;
            for l in plan.due() {
                if l.resumable.is_some() {
                    continue;
                }
                let trigger = if l.decision.reason == Reason::Bootstrap {
                    "bootstrap"
                } else {
                    "schedule"
                };
                if self
                    .begin(
                        policy,
                        &l.name,
                        l.current.as_ref().map(|c| &c.key),
                        l.decision.reason,
                        &l.decision.message,
                        trigger,
                        false,
                    )?
                    .is_some()
                {
                    started_any = true;
                }
            }
        }
        // Abandoned rotations whose unacknowledged next key is not deleted
        // yet (the provider failed last time): try again — not while the
        // policy only observes (report only).
        if policy.mode == Mode::Rotate {
            for r in &ledger.abandoned {
                store_changed = true;
                self.delete_abandoned_key(rt, r).await;
            }
        }
        store_changed |= started_any;
        // A rotation in flight may write meanwhile: read the store again.
        store_changed |= ledger.rotations.iter().any(|r| !r.state.is_terminal());
        if !store_changed
            && plan.health.is_healthy()
            && plan.misconfigured.is_none()
            && self.touch_status(rt, name, started, next_check_at)
        {
            // Nothing reads this policy's row before the caller writes it.
            quiet.extend(time_only);
        } else {
            // The status rebuild reads the row (health, last error).
            if let Some(r) = &time_only {
                self.store.record_check_times(std::slice::from_ref(r))?;
            }
            if store_changed {
                self.refresh_status(rt, name)?;
            } else {
                self.publish_status(rt, policy, &ledger, read)?;
            }
        }
        // A check that wrote nothing, over a ledger with no create attempt
        // left to resolve, stands for the next ones while its plan stays
        // settled (SettledChecks).
        // The plan was made at an instant between `started` and now: it is
        // the settled plan of `started..until` only if `until` is still
        // ahead (else the instants between hold two texts).
        // Nor while an orphan's key it could not delete is listed: only a
        // check that plans retries the delete.
        if !store_changed
            && !orphan_left
            && ledger.orphans.iter().all(|o| o.attempt.state == "cleaned")
            && let Some(until) = plan.settled_until(policy, started)
            && until > self.now()
        {
            self.settled.put(
                name,
                Some(Settled {
                    generation,
                    config: Arc::downgrade(&rt.config),
                    listing: listing_digest(&listing),
                    since: started,
                    until,
                    lineages: plan.lineages.len(),
                }),
            );
        }
        if started_any {
            self.poke();
        }
        Ok(plan)
    }

    /// Whether `r`'s new key is older than [`RESUME_FOR`] (abandoned
    /// rather than resumed).
    fn past_resume(&self, r: &RotationRow) -> bool {
        let created = r.created_at.unwrap_or(r.started_at);
        self.now() - created > ChronoDuration::from_std(RESUME_FOR).unwrap_or(ChronoDuration::MAX)
    }

    /// Resume a rotation that failed after its key was created (back to
    /// `created`), or, once its key is older than [`RESUME_FOR`], abandon it
    /// (deleting the key when no sink acknowledged it). Returns whether it
    /// was resumed.
    async fn resume_or_abandon(
        &self,
        rt: &Runtime,
        r: &RotationRow,
        reason: Reason,
    ) -> Result<bool, EngineError> {
        let now = self.now();
        let created = r.created_at.unwrap_or(r.started_at);
        if self.past_resume(r) {
            let why = format!(
                "its next key was created at {} and could not be published within {}",
                created.to_rfc3339(),
                humantime::format_duration(RESUME_FOR)
            );
            let row = self.store.abandon_rotation(&r.id, &why, now)?;
            tracing::error!(policy = %r.policy, lineage = %r.lineage, rotation = %r.id, "rotation abandoned: {why}");
            self.delete_abandoned_key(rt, &row).await;
            return Ok(false);
        }
        if self.store.revive_rotation(&r.id, reason.as_str(), now)? {
            tracing::info!(policy = %r.policy, lineage = %r.lineage, rotation = %r.id, new_key = r.new_key_id.as_deref().unwrap_or(""), "resuming failed rotation: its new key was created and is still sealed");
            return Ok(true);
        }
        Ok(false)
    }

    /// Grace longer than the next key's life: when a retiring rotation's
    /// old key has already expired (it is past use) and its next key — now
    /// the current key — has entered its own lead, the old key's grace is
    /// cut short so it is deleted now and the next rotation can start.
    /// `known`: the policy's key rows when the caller holds them current
    /// (read from the store otherwise). Returns whether it wrote.
    fn cut_grace_short(
        &self,
        policy: &PolicyConfig,
        plan: &PolicyPlan,
        known: Option<&crate::state::KnownKeys>,
    ) -> Result<bool, EngineError> {
        let now = self.now();
        let mut wrote = false;
        let read;
        let known = match known {
            Some(k) => k,
            None => {
                read = crate::state::KnownKeys::from(self.store.known_keys(&policy.name)?);
                &read
            }
        };
        for l in &plan.lineages {
            let Some(a) = &l.active else { continue };
            if a.state != RotationState::Retiring || a.retire_at.is_none_or(|t| t <= now) {
                continue;
            }
            let old_expired = a
                .old_key_id
                .as_ref()
                .and_then(|o| known.find(o))
                .and_then(|k| k.expires_at())
                .is_some_and(|e| e <= now);
            let Some(cur) = &l.current else { continue };
            let next_due = policy::decide(policy, Some(&cur.key), None, now).rotate;
            if old_expired && next_due {
                self.store.set_retire_at(&a.id, now)?;
                wrote = true;
                tracing::warn!(policy = %policy.name, lineage = %l.name, rotation = %a.id, old_key = a.old_key_id.as_deref().unwrap_or(""), "the old key has expired and the next key is already in its lead: cutting the old key's grace short so the next rotation can start (grace_period is longer than the next key's life)");
            }
        }
        Ok(wrote)
    }

    #[allow(clippy::too_many_arguments)]
    fn begin(
        &self,
        policy: &PolicyConfig,
        lineage: &str,
        current: Option<&ProviderKey>,
        reason: Reason,
        message: &str,
        trigger: &str,
        revoke: bool,
    ) -> Result<Option<String>, EngineError> {
        let id = self.store.begin_rotation(&NewRotation {
            policy: policy.name.clone(),
            lineage: lineage.to_string(),
            provider: policy.provider.clone(),
            reason: reason.as_str().into(),
            message: message.to_string(),
            trigger: trigger.into(),
            revoke_old_immediately: revoke,
            old_key_id: current.map(|k| k.id.clone()),
            old_key_name: current.map(|k| k.name.clone()),
            sinks: policy.sinks.clone(),
            grace: policy.grace_period,
            at: self.now(),
        })?;
        if let Some(id) = &id {
            tracing::info!(policy = %policy.name, lineage, rotation = %id, reason = reason.as_str(), old_key = current.map(|k| k.id.as_str()).unwrap_or(""), trigger, "rotation started: {message}");
        }
        Ok(id)
    }

    /// Resolve the policy's orphan attempts (create attempts that never
    /// handed over their secret) against one complete listing: a listed key
    /// carrying such a name is deleted (for ever: a `cleaned` attempt's name
    /// is still recognised, so a late create is deleted too); a missing name
    /// counts towards marking the attempt `cleaned` only when the listing
    /// started after the attempt (DESIGN §3: several listings across
    /// `state::schema::ORPHAN_WINDOW`). The `requested` attempt of a
    /// rotation still creating is left to that rotation. Returns the ids of
    /// keys deleted, whether anything was written to the store or deleted
    /// (a failed delete writes nothing: the caller's ledger still holds),
    /// and whether a listed orphan key could not be deleted (the next check
    /// must try again).
    async fn clean_orphans(
        &self,
        rt: &Runtime,
        policy: &PolicyConfig,
        provider: &SharedProvider,
        listing: &Listing,
        ledger: &policy::Ledger,
    ) -> (std::collections::HashSet<String>, bool, bool) {
        let mut removed = std::collections::HashSet::new();
        let mut wrote = false;
        let mut left = false;
        for o in &ledger.orphans {
            let a = &o.attempt;
            if a.state == "requested" && !o.rotation_state.is_terminal() {
                continue;
            }
            let found: Vec<ListedKey<'_>> = listing.named(&a.name).collect();
            if found.is_empty() {
                if a.state != "cleaned" && listing.proves_absent(&a.name, a.started_at) {
                    wrote = true;
                    match self.store.note_attempt_absent(
                        &o.rotation_id,
                        a.attempt,
                        listing.started_at,
                    ) {
                        Ok(true) => {
                            tracing::info!(policy = %policy.name, rotation = %o.rotation_id, attempt = a.attempt, name = %policy::escaped(&a.name), "abandoned create attempt resolved: its name stayed unlisted across the orphan window; still watched for")
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(policy = %policy.name, rotation = %o.rotation_id, error = %e, "cannot record an abandoned attempt's absence")
                        }
                    }
                }
                continue;
            }
            let mut ok = true;
            for k in found {
                match self.delete_key(rt, provider, k.id()).await {
                    Ok(_) => {
                        wrote = true;
                        removed.insert(k.id().to_string());
                        tracing::warn!(policy = %policy.name, rotation = %o.rotation_id, attempt = a.attempt, key = %policy::escaped(k.id()), name = %policy::escaped(k.name()), "deleted the key of an abandoned create attempt (its secret was never captured)")
                    }
                    Err(e) => {
                        ok = false;
                        left = true;
                        tracing::warn!(policy = %policy.name, rotation = %o.rotation_id, key = %policy::escaped(k.id()), error = %e, "cannot delete an abandoned attempt's key yet")
                    }
                }
            }
            if ok && a.state != "cleaned" {
                wrote = true;
                let _ =
                    self.store
                        .resolve_attempt(&o.rotation_id, a.attempt, true, None, self.now());
            }
        }
        (removed, wrote, left)
    }

    /// The store's evidence for planning `policy`: read from the store, or
    /// the copy read last time when no write that could change it was made
    /// since ([`LedgerCache`]).
    pub fn ledger(
        &self,
        rt: &Runtime,
        policy: &PolicyConfig,
    ) -> Result<Arc<policy::Ledger>, EngineError> {
        let generation = self.store.ledger_generation(&policy.name);
        if let Some(l) = self.ledgers.get(&policy.name, generation, &rt.config) {
            return Ok(l);
        }
        let ledger = Arc::new(policy::Ledger::load(
            &self.store,
            &policy.name,
            policy::rivals(&rt.config, policy),
        )?);
        // Kept only while the policy has work in flight, whose steps read
        // it again and again; a quiet policy's next read is its next check
        // that plans ([`LedgerCache`]).
        if ledger.in_flight() {
            self.ledgers
                .put(&policy.name, generation, &rt.config, ledger.clone());
        } else {
            self.ledgers.forget(&policy.name);
        }
        Ok(ledger)
    }

    fn plan_from(
        &self,
        rt: &Runtime,
        policy: &PolicyConfig,
        views: Vec<KeyView>,
        ledger: &policy::Ledger,
        listing_started: Option<DateTime<Utc>>,
    ) -> Result<PolicyPlan, EngineError> {
        let targets: Vec<_> = policy
            .sinks
            .iter()
            .map(|s| {
                (
                    s.clone(),
                    rt.config.sinks.get(s).and_then(|c| c.target().cloned()),
                )
            })
            .collect();
        Ok(policy::plan(
            policy,
            views,
            ledger,
            &targets,
            listing_started,
            self.now(),
        ))
    }

    /// `key.unrecognised`, once per key: a listed key that looks generated
    /// but that no rotation in the store produced.
    fn raise_unrecognised(
        &self,
        policy: &PolicyConfig,
        plan: &PolicyPlan,
    ) -> Result<(), EngineError> {
        let now = self.now();
        for l in &plan.lineages {
            for (k, st) in &l.keys {
                if *st != KeyState::Unrecognised {
                    continue;
                }
                let ev = Event::new(
                    "key.unrecognised",
                    now,
                    Some(&policy.name),
                    None,
                    serde_json::json!({
                        "policy": policy.name, "lineage": l.name, "provider": policy.provider,
                        "key_id": k.key.id, "key_name": k.key.name,
                        "reason": "unrecognised_key",
                        "hint": "a key named like rekey's own that no rotation in the state DB created; rekey leaves it alone. If the state DB was lost or restored, run `rekey recover`",
                    }),
                );
                if self
                    .store
                    .note_expiring(&policy.name, &k.key.id, "unrecognised", &ev)?
                {
                    tracing::error!(policy = %policy.name, lineage = %policy::escaped(&l.name), key = %policy::escaped(&k.key.id), name = %policy::escaped(&k.key.name), "a key named like rekey's own is unknown to the state DB; it is left alone and never becomes current (after losing or restoring the DB, run `rekey recover -c CONFIG`)");
                    self.wake_notify.notify_one();
                }
            }
        }
        Ok(())
    }

    /// `key.expiring` for a current key inside its lead while its policy
    /// cannot act (observe mode) or is failing, and for a stale key (an
    /// older live key rekey is not retiring, which whoever still uses it
    /// loses at its expiry): once per threshold crossed.
    fn raise_expiring(&self, policy: &PolicyConfig, plan: &PolicyPlan) -> Result<(), EngineError> {
        for l in &plan.lineages {
            for (k, _) in l.keys.iter().filter(|(_, st)| *st == KeyState::Stale) {
                if let Some(label) = self.note_expiring(
                    policy,
                    &l.name,
                    &k.key,
                    serde_json::json!({"state": "stale"}),
                )? {
                    tracing::warn!(policy = %policy.name, lineage = %policy::escaped(&l.name), key = %policy::escaped(&k.key.id), threshold = label, "a stale key (not the lineage's current key) is expiring; rekey does not rotate it");
                }
            }
        }
        for l in &plan.lineages {
            let stuck = policy.mode == Mode::Observe
                || matches!(l.health, Health::Failing | Health::Expired)
                || plan.misconfigured.is_some();
            let Some(cur) = &l.current else { continue };
            if !stuck || !matches!(l.decision.reason, Reason::Expiring | Reason::Expired) {
                continue;
            }
            let extra = serde_json::json!({
                "health": l.health.as_str(),
                "mode": if policy.mode == Mode::Observe { "observe" } else { "rotate" },
            });
            if let Some(label) = self.note_expiring(policy, &l.name, &cur.key, extra)? {
                tracing::warn!(policy = %policy.name, lineage = %policy::escaped(&l.name), key = %policy::escaped(&cur.key.id), threshold = label, "key expiring and not being replaced");
            }
        }
        Ok(())
    }

    /// Record `key.expiring` for `key` once per threshold of the policy's
    /// `expiring_warnings` it has crossed (the tightest one): `Some(label)`
    /// when this call sent the event, `None` when the key has no expiry, is
    /// not yet inside any threshold, or was already told about this one.
    /// `extra` adds fields to the event's `data`.
    fn note_expiring(
        &self,
        policy: &PolicyConfig,
        lineage: &str,
        key: &ProviderKey,
        extra: serde_json::Value,
    ) -> Result<Option<String>, EngineError> {
        let now = self.now();
        let Some(exp) = key.expires_at else {
            return Ok(None);
        };
        let Some(label) = expiring_threshold(&policy.expiring_warnings, exp - now) else {
            return Ok(None);
        };
        let mut data = serde_json::json!({
            "policy": policy.name, "lineage": lineage, "provider": policy.provider,
            "key_id": key.id, "key_name": key.name, "expires_at": exp,
            "threshold": label,
        });
        if let (Some(d), serde_json::Value::Object(x)) = (data.as_object_mut(), extra) {
            d.extend(x);
        }
        let ev = Event::new("key.expiring", now, Some(&policy.name), None, data);
        if !self
            .store
            .note_expiring(&policy.name, &key.id, &label, &ev)?
        {
            return Ok(None);
        }
        self.wake_notify.notify_one();
        Ok(Some(label))
    }

    /// The policy's keys as the store knows them (no provider call), in the
    /// given key states, placed by the same ownership rules as a listing.
    fn stored_views(
        &self,
        policy: &PolicyConfig,
        ledger: &policy::Ledger,
        states: &[&str],
    ) -> Vec<KeyView> {
        let keys = ledger
            .known
            .iter()
            .filter(|k| states.contains(&k.state()))
            .map(|k| ProviderKey {
                id: k.key_id().to_string(),
                name: k.name().to_string(),
                created_at: k.created_at(),
                expires_at: k.expires_at(),
                // A time the provider listed that did not parse (kept so the
                // lineage stays isolated between checks).
                meta: k
                    .unknown_time()
                    .and_then(|j| serde_json::from_str(j).ok())
                    .map(|v| [(crate::provider::META_UNKNOWN_TIME.to_string(), v)].into())
                    .unwrap_or_default(),
            })
            .collect();
        policy::assign_lineages(policy, keys, ledger)
    }

    /// Rebuild a policy's status entry and key metrics from the store (no
    /// provider call), apply the health rule ([`super::health`]) and record
    /// which stuck conditions hold: a condition that starts to hold sends
    /// its event once (DESIGN §5) and sets `rekey_condition` to 1.
    pub fn refresh_status(&self, rt: &Runtime, name: &str) -> Result<(), EngineError> {
        let Some(policy) = rt.policy(name) else {
            return Ok(());
        };
        let read = self.store_read(name);
        let ledger = self.ledger(rt, policy)?;
        self.publish_status(rt, policy, &ledger, read)
    }

    /// Taken before a status rebuild of `policy` reads the store (the
    /// ledger first).
    fn store_read(&self, policy: &str) -> StoreRead {
        // Marks first: a step's commit precedes its mark, so a mark counted
        // here is in the generation and ledger read after it.
        let marks = self.status_built.marks();
        StoreRead {
            marks,
            generation: self.store.ledger_generation(policy),
        }
    }

    /// After a healthy check that changed nothing in the store: give the
    /// policy's status, when healthy, without error and current
    /// ([`StatusBuilt::current`]: younger than [`STATUS_REFRESH`], or built
    /// from a settled plan that still stands), the new check times and keep
    /// the rest (no re-plan). Returns false (nothing done) otherwise: it must be
    /// rebuilt (a status that reports a problem, e.g. the last check's
    /// listing error, is always rebuilt).
    fn touch_status(
        &self,
        rt: &Runtime,
        name: &str,
        checked_at: DateTime<Utc>,
        next_check_at: Option<DateTime<Utc>>,
    ) -> bool {
        if !self.status_built.current(
            name,
            STATUS_REFRESH,
            self.store.ledger_generation(name),
            &rt.config,
            self.now(),
        ) {
            return false;
        }
        // Only over the entry it copied (one try): a rebuild that
        // published meanwhile (a command, a step) is newer; then rebuild
        // instead.
        self.edit_status(name, 1, |prev| {
            if !prev.health.is_healthy() || prev.error.is_some() {
                return None;
            }
            let mut status = prev.clone();
            status.last_check_at = Some(checked_at);
            if next_check_at.is_some() {
                status.next_check_at = next_check_at;
            }
            Some(status)
        })
    }

    /// Publish `edit` of `name`'s status entry in its place — only over
    /// the very entry it was made from (compare-and-swap), trying `tries`
    /// times while other writers replace the entry — and give it to the
    /// metrics. `edit` copies only the entry's scalars (its tables are
    /// shared) and returns `None` to leave the entry as it is. Returns
    /// whether an edit was published (false also when the policy has no
    /// entry).
    fn edit_status(
        &self,
        name: &str,
        tries: usize,
        edit: impl Fn(&PolicyStatus) -> Option<PolicyStatus>,
    ) -> bool {
        for _ in 0..tries {
            let snapshot = self.status.load();
            let Some(prev) = snapshot.policies.iter().find(|p| p.name == name).cloned() else {
                return false;
            };
            drop(snapshot);
            let Some(next) = edit(&prev) else {
                return false;
            };
            let next = Arc::new(next);
            if self.status.replace_policy_if(&prev, next.clone()) {
                self.metrics.sync_policy(&next);
                return true;
            }
        }
        false
    }

    /// Show `at` as `policy`'s next check in its published status (the
    /// daemon's scheduler decides it after a group of checks, and it is
    /// later than the one the check itself stored when the group ran past
    /// a window). Copies only the entry's scalars (its tables are shared)
    /// and only when it changes; gives up, leaving the next rebuild to
    /// show it, if other writers replace the entry three times meanwhile.
    pub fn set_status_next_check(&self, policy: &str, at: DateTime<Utc>) {
        self.edit_status(policy, 3, |prev| {
            (prev.next_check_at != Some(at)).then(|| PolicyStatus {
                next_check_at: Some(at),
                ..prev.clone()
            })
        });
    }

    /// [`Engine::refresh_status`] from a ledger already read (and still
    /// what the store holds), `read` having been taken before it was.
    fn publish_status(
        &self,
        rt: &Runtime,
        policy: &PolicyConfig,
        ledger: &policy::Ledger,
        read: StoreRead,
    ) -> Result<(), EngineError> {
        let name = policy.name.as_str();
        let generation = read.generation;
        let rebuild = self.status_built.begin(name, read.marks);
        let now = self.now();
        let views = self.stored_views(policy, ledger, &["live", "retiring", "retired"]);
        let plan = self.plan_from(rt, policy, views, ledger, None)?;
        let rotations = &ledger.rotations;
        let ps = self.store.policy_state(name)?;
        let mut health = plan.health;
        let mut error = plan.misconfigured.clone();
        if let Some(ps) = &ps
            && ps.health.as_deref() == Some("failing")
            && ps.last_error.is_some()
            && error.is_none()
        {
            // The last check could not list keys.
            health = health.max(Health::Failing);
            error = ps.last_error.clone();
        }
        if error.is_none() {
            error = plan
                .lineages
                .iter()
                .filter(|l| !l.health.is_healthy())
                .find_map(|l| l.conditions.first().map(|c| c.1.clone()));
        }
        let last = self.store.last_rotation(name)?;
        if error.is_none()
            && let Some(l) = &last
            && l.state == RotationState::Failed
        {
            error = l.error.clone();
        }
        // Built straight into the compact tables (no owned string per key).
        let mut keys = Keys::default();
        let mut lineages = Lineages::default();
        let mut conditions = Vec::new();
        for l in &plan.lineages {
            for (k, st) in &l.keys {
                keys.push_parts(
                    &k.key.id,
                    &k.key.name,
                    &k.lineage,
                    k.key.created_at,
                    k.key.expires_at,
                    *st,
                );
            }
            let (reason, message) = match l.conditions.first() {
                Some((c, m)) => (c.as_str(), m.as_str()),
                None => (l.decision.reason.as_str(), l.decision.message.as_str()),
            };
            conditions.clear();
            conditions.extend(l.conditions.iter().map(|c| c.0));
            lineages.push(
                LineageParts {
                    name: &l.name,
                    health: l.health,
                    current_key: l.current.as_ref().map(|c| c.key.id.as_str()),
                    reason,
                    message,
                    rotate_at: l.decision.rotate_at,
                    conditions: &conditions,
                },
                l.active.as_ref().or(l.last.as_ref()).map(summary),
            );
        }
        let (keys, lineages) = (keys.finish(), lineages.finish());
        let held: Vec<(String, String, Option<&'static str>, String)> = plan
            .lineages
            .iter()
            .flat_map(|l| {
                l.conditions
                    .iter()
                    .map(|(c, m)| (l.name.clone(), c.as_str().to_string(), c.event(), m.clone()))
            })
            .collect();
        let started = self.store.sync_conditions(name, &held, now)?;
        for (lineage, condition) in &started {
            let message = held
                .iter()
                .find(|h| &h.0 == lineage && &h.1 == condition)
                .map(|h| h.3.as_str())
                .unwrap_or("");
            tracing::error!(policy = %name, lineage = %lineage, condition = %condition, "stuck condition: {message}; a human should look");
        }
        if !started.is_empty() {
            self.wake_notify.notify_one();
        }
        let oldest = rotations
            .iter()
            .filter(|r| !r.state.is_terminal())
            .map(|r| (now - r.started_at).num_milliseconds().max(0) as f64 / 1000.0)
            .fold(0.0, f64::max);
        self.metrics.set_oldest_unfinished(name, oldest);
        let status = PolicyStatus {
            name: name.to_string(),
            provider: policy.provider.clone(),
            mode: if policy.mode == Mode::Observe {
                "observe".into()
            } else {
                "rotate".into()
            },
            health,
            next_check_at: ps.as_ref().and_then(|p| p.next_check_at),
            last_check_at: ps.as_ref().and_then(|p| p.last_check_at),
            keys,
            lineages,
            last_rotation: last.map(|r| LastRotation {
                id: r.id,
                lineage: r.lineage,
                state: r.state.as_str().into(),
                started_at: r.started_at,
                finished_at: r.finished_at,
                error: r.error,
            }),
            error,
        };
        let status = self.status.update_policy_shared(Arc::new(status));
        self.metrics.sync_policy(&status);
        // As for a settled check: `until` still ahead of the plan's instant.
        let settled = plan
            .settled_until(policy, now)
            .filter(|until| *until > self.now())
            .map(|until| (generation, Arc::downgrade(&rt.config), now, until));
        self.status_built.mark(name, settled, rebuild);
        Ok(())
    }

    /// After a rotation step of `policy` committed: rebuild its status now
    /// when its coalescing window allows, else leave it marked for
    /// [`Engine::flush_status`] ([`StatusBuilt`]). A failed rebuild is left
    /// to the next one (as the step's commit stands).
    ///
    /// `failed`: a step recorded a failure that may start a condition
    /// (`step_failing`, `retire_failing`: the lineage reached its
    /// `failing_after_failures`, or the rotation ended `failed`). That
    /// rebuild is never deferred: a condition that started and cleared
    /// inside one window would otherwise never be seen, and never sent
    /// (DESIGN §5). Failures are spaced by their backoff, so this costs
    /// no burst.
    fn status_after_step(&self, rt: &Runtime, policy: &str, failed: bool) {
        self.status_built.step_ran_on(policy, &rt.config);
        let now = self.status_built.note_step(policy);
        if (now || failed)
            && let Err(e) = self.refresh_status(rt, policy)
        {
            tracing::debug!(policy, error = %e, "cannot rebuild status after a rotation step");
        }
    }

    /// Rebuild the status of every policy whose rotation steps were
    /// coalesced and whose window is over ([`StatusBuilt::take_due`]);
    /// returns how long until the next such window ends (`None`: none is
    /// pending). The daemon's loop calls it on every turn and wakes for
    /// what it returns. A policy not in `rt` (removed by a reload) whose
    /// rotations finish on the configuration they started with is rebuilt
    /// from that one (from the store; a rebuild calls no provider or
    /// sink), as its steps' own rebuilds are; once nothing holds that
    /// configuration, its marks are dropped.
    pub fn flush_status(&self, rt: &Runtime) -> Option<Duration> {
        let (due, next) = self.status_built.take_due();
        for (name, e) in self.rebuild_marked(rt, due) {
            // Marked still: tried again once its window is over (at
            // debug: the periodic refresh warns about a failing store).
            tracing::debug!(policy = %name, error = %e, "cannot rebuild status after rotation steps");
        }
        next
    }

    /// The daemon's last flush, once every in-flight step has committed
    /// (or `shutdown_timeout` passed) and while it still holds the lease:
    /// rebuild every policy rotation steps marked, its window over or not,
    /// so the stored health and the condition events a rebuild records
    /// include every committed step before the process exits.
    pub fn flush_status_all(&self, rt: &Runtime) {
        let all = self.status_built.take_all();
        for (name, e) in self.rebuild_marked(rt, all) {
            // The last chance: the next start rebuilds it from the store.
            tracing::warn!(policy = %name, error = %e, "cannot rebuild status at shutdown; its latest steps' conditions are assessed at the next start");
        }
    }

    /// Rebuild the marked policies `names` took ([`Engine::flush_status`]);
    /// returns the ones that failed, with why.
    fn rebuild_marked(&self, rt: &Runtime, names: Vec<String>) -> Vec<(String, EngineError)> {
        let mut failed = Vec::new();
        for name in names {
            let result = if rt.policy(&name).is_some() {
                self.refresh_status(rt, &name)
            } else if let Some(config) = self
                .status_built
                .step_config(&name)
                .filter(|c| c.policy(&name).is_some())
            {
                let retained = Runtime {
                    config,
                    providers: HashMap::new(),
                    sinks: HashMap::new(),
                    walks: Default::default(),
                };
                self.refresh_status(&retained, &name)
            } else {
                self.status_built.forget_marks(&name);
                Ok(())
            };
            if let Err(e) = result {
                failed.push((name, e));
            }
        }
        failed
    }

    /// `POST /rotate/{policy}`: rotate every lineage (or one) now.
    pub fn rotate_now(
        &self,
        rt: &Runtime,
        name: &str,
        lineage: Option<&str>,
        revoke: bool,
    ) -> Result<RotateReply, EngineError> {
        let Some(policy) = rt.policy(name) else {
            return Ok(RotateReply::UnknownPolicy);
        };
        if policy.mode == Mode::Observe {
            return Ok(RotateReply::Refused {
                message: format!("policy {name} is in observe mode; it never rotates"),
            });
        }
        let ledger = self.ledger(rt, policy)?;
        let views = self.stored_views(policy, &ledger, &["live", "retiring"]);
        let plan = self.plan_from(rt, policy, views, &ledger, None)?;
        if let Some(m) = plan.misconfigured {
            return Ok(RotateReply::Refused { message: m });
        }
        let targets: Vec<_> = match lineage {
            Some(l) => match plan.lineages.iter().find(|x| x.name == l) {
                Some(x) => vec![x],
                None => {
                    return Ok(RotateReply::UnknownLineage {
                        lineage: l.to_string(),
                    });
                }
            },
            None => plan.lineages.iter().collect(),
        };
        if targets.is_empty() {
            return Ok(RotateReply::Refused {
                message: format!("policy {name} has no keys yet (no check has listed any)"),
            });
        }
        let mut started = Vec::new();
        let mut running = Vec::new();
        let mut cut_short = Vec::new();
        let mut resumed = Vec::new();
        let mut refused = Vec::new();
        for l in targets {
            if matches!(l.condition, Some("unsafe_name" | "conflict")) {
                refused.push(l.decision.message.clone());
                continue;
            }
            if let Some(a) = &l.active {
                if revoke && matches!(a.state, RotationState::Retiring | RotationState::Published) {
                    self.store.set_retire_at(&a.id, self.now())?;
                    cut_short.push(a.id.clone());
                } else if revoke && self.store.set_revoke_on_publish(&a.id)? {
                    // Applied when it publishes: no grace for the old key.
                    cut_short.push(a.id.clone());
                } else {
                    running.push(a.id.clone());
                }
                continue;
            }
            // A rotation that failed after creating its key is resumed, not
            // duplicated by a second key.
            if let Some(r) = &l.resumable
                && self
                    .store
                    .revive_rotation(&r.id, Reason::Manual.as_str(), self.now())?
            {
                if revoke {
                    self.store.set_revoke_on_publish(&r.id)?;
                }
                tracing::info!(policy = %name, lineage = %l.name, rotation = %r.id, "manual rotation resumes the failed rotation whose next key is already created");
                resumed.push(r.id.clone());
                continue;
            }
            let msg = if revoke {
                "manual rotation (revoke old key once published)"
            } else {
                "manual rotation"
            };
            if let Some(id) = self.begin(
                policy,
                &l.name,
                l.current.as_ref().map(|c| &c.key),
                Reason::Manual,
                msg,
                "manual",
                revoke,
            )? {
                started.push(id);
            }
        }
        self.refresh_status(rt, name)?;
        if started.is_empty()
            && cut_short.is_empty()
            && resumed.is_empty()
            && running.is_empty()
            && !refused.is_empty()
        {
            return Ok(RotateReply::Refused {
                message: refused.join("; "),
            });
        }
        if started.is_empty() && cut_short.is_empty() && resumed.is_empty() {
            return Ok(RotateReply::AlreadyRunning { rotations: running });
        }
        self.poke();
        let mut message = format!("started {} rotation(s)", started.len());
        if !resumed.is_empty() {
            message.push_str(&format!(
                "; resumed {} failed rotation(s) whose next key was already created",
                resumed.len()
            ));
        }
        if !cut_short.is_empty() {
            message.push_str(&format!(
                "; the old key gets no grace period in {} (now, or once published)",
                cut_short.len()
            ));
        }
        if !running.is_empty() {
            message.push_str(&format!("; {} already running", running.len()));
        }
        started.extend(resumed);
        started.extend(cut_short);
        Ok(RotateReply::Accepted {
            rotations: started,
            message,
        })
    }

    /// `rekey retry ROTATION`: run the step the rotation waits for now
    /// (skip its backoff and its sinks' backoff), or resume it when it
    /// failed after creating its key. The grace period is not skipped.
    pub fn retry_now(&self, rt: &Runtime, id: &str) -> Result<CommandReply, EngineError> {
        let Some(row) = self.store.rotation(id)? else {
            return Ok(CommandReply::UnknownRotation {
                rotation: id.to_string(),
            });
        };
        let now = self.now();
        let message = match row.state {
            RotationState::Completed => {
                return Ok(CommandReply::Refused {
                    message: format!("rotation {id} is completed; nothing to retry"),
                });
            }
            RotationState::Failed => {
                let resumable = row.created_at.is_some()
                    && row.published_at.is_none()
                    && row.error_class.as_deref() != Some("abandoned");
                if !resumable {
                    return Ok(CommandReply::Refused {
                        message: format!(
                            "rotation {id} failed before creating a key (or was abandoned); `rekey rotate` starts a new one"
                        ),
                    });
                }
                if rt
                    .policy(&row.policy)
                    .is_none_or(|p| p.mode != Mode::Rotate)
                {
                    return Ok(CommandReply::Refused {
                        message: format!(
                            "policy {} is not in rotate mode in the running configuration",
                            row.policy
                        ),
                    });
                }
                if !self
                    .store
                    .revive_rotation(id, Reason::Manual.as_str(), now)?
                {
                    return Ok(CommandReply::Refused {
                        message: format!(
                            "rotation {id} cannot be resumed (another rotation of lineage {} is running, or its key is no longer sealed)",
                            row.lineage
                        ),
                    });
                }
                "resumed: publishing its next key again".to_string()
            }
            RotationState::Published | RotationState::Retiring
                if row.retire_at.is_some_and(|t| t > now) =>
            {
                return Ok(CommandReply::Refused {
                    message: format!(
                        "rotation {id} waits out its grace period until {}; `rekey rotate --revoke-old-immediately` ends it early",
                        row.retire_at.map(|t| t.to_rfc3339()).unwrap_or_default()
                    ),
                });
            }
            _ => {
                self.store.retry_now(id)?;
                format!("the {} step runs now", row.state.as_str())
            }
        };
        tracing::info!(policy = %row.policy, lineage = %row.lineage, rotation = %id, "retry requested: {message}");
        self.refresh_status(rt, &row.policy)?;
        self.poke();
        Ok(CommandReply::Accepted {
            rotation: id.to_string(),
            message,
        })
    }

    /// At start: deadlines are stored as wall-clock times, so a daemon that
    /// ran with its wall clock ahead (a bad RTC, corrected since) would find
    /// them too far away and stall. Bring each active rotation's no later
    /// than it could legitimately be from now: its grace end at most its
    /// grace period away, a retry (its own or a sink's) at most the larger
    /// of the backoff cap and the grace period. Key rows' `last_seen_at`
    /// and `gone_at` later than now come back to now
    /// ([`crate::state::Store::clamp_key_times`]): a published key missed
    /// before the restart would otherwise not be gone for good until the
    /// clock caught up, and one listed then deleted after it not even
    /// `gone`, holding its lineage for as long as the clock was ahead.
    /// Returns how many rotations moved.
    pub fn clamp_stored_deadlines(&self) -> Result<usize, EngineError> {
        let now = self.now();
        let keys = self.store.clamp_key_times(now)?;
        if keys > 0 {
            tracing::warn!(
                keys,
                "key times were later than now (the wall clock was ahead when they were written); brought back to now"
            );
        }
        let mut moved = 0;
        for r in self.store.active_rotations()? {
            let grace = ChronoDuration::from_std(r.grace).unwrap_or(ChronoDuration::MAX);
            let cap = ChronoDuration::from_std(self.backoff.max.max(RETIRE_BACKOFF_CAP))
                .unwrap_or(ChronoDuration::MAX)
                .max(grace);
            let retire_limit = now.checked_add_signed(grace);
            let Some(next_limit) = now.checked_add_signed(cap) else {
                continue;
            };
            if self
                .store
                .clamp_deadlines(&r.id, retire_limit, next_limit)?
            {
                tracing::warn!(policy = %r.policy, rotation = %r.id, "a stored deadline was further away than it can be (the wall clock was ahead when it was set); brought forward");
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// `rekey abandon ROTATION`: end a rotation as `failed` (class
    /// `abandoned`); the old key stays.
    ///
    /// - Not yet published: its next key is deleted when rekey created it
    ///   and no sink acknowledged it (kept and reported otherwise), and its
    ///   sealed secret is wiped.
    /// - In grace (`published`/`retiring`): retirement stops and *both*
    ///   keys are kept — the next key is current (every sink holds it), and
    ///   the old key is live again (a consumer may still use it), shown
    ///   `stale` and never deleted by rekey; delete it by hand once nothing
    ///   uses it. A Tencent old key already unbound and disabled stays so.
    ///
    /// Works offline too (the CLI builds an engine over the state DB when no
    /// daemon runs). Refused for a completed or already abandoned rotation.
    pub async fn abandon(&self, rt: &Runtime, id: &str) -> Result<CommandReply, EngineError> {
        let Some(before) = self.store.rotation(id)? else {
            return Ok(CommandReply::UnknownRotation {
                rotation: id.to_string(),
            });
        };
        let in_grace = matches!(
            before.state,
            RotationState::Published | RotationState::Retiring
        );
        let why = if in_grace {
            "abandoned by an operator during the grace period; the old key is kept"
        } else {
            "abandoned by an operator"
        };
        let row = match self.store.abandon_rotation(id, why, self.now()) {
            Ok(r) => r,
            Err(StoreError::Conflict(m)) => return Ok(CommandReply::Refused { message: m }),
            Err(e) => return Err(e.into()),
        };
        let message = if in_grace {
            let old = row
                .old_key_id
                .as_deref()
                .map_or("-".into(), policy::escaped);
            let new = row
                .new_key_id
                .as_deref()
                .map_or("-".into(), policy::escaped);
            tracing::warn!(policy = %row.policy, lineage = %policy::escaped(&row.lineage), rotation = %id, old_key = %old, new_key = %new, "rotation abandoned by an operator in grace: retirement stopped, both keys kept; rekey will not delete the old key");
            let mut m = format!(
                "abandoned in grace: retirement stopped; the new key {new} stays current and the old key {old} is kept (shown `stale`; rekey never deletes it: delete it by hand once nothing uses it)"
            );
            if let Some(t) = row.old_disabled_at {
                m.push_str(&format!(
                    "; the old key was already disabled (and unbound) at {}: re-enable it by hand if a consumer still needs it",
                    t.to_rfc3339()
                ));
            }
            m
        } else {
            tracing::warn!(policy = %row.policy, lineage = %policy::escaped(&row.lineage), rotation = %id, "rotation abandoned by an operator; the current key stays");
            let kept = self.store.any_sink_acked(id)?;
            let disposal = self.delete_abandoned_key(rt, &row).await;
            match (row.created_at.is_some(), kept, disposal) {
                (false, _, _) => "abandoned; it had created no key".to_string(),
                (true, true, _) => format!(
                    "abandoned; its next key {} is kept because a sink acknowledged it (it may be in use)",
                    row.new_key_id
                        .as_deref()
                        .map_or("?".into(), policy::escaped)
                ),
                (true, false, Disposal::Ambiguous(n)) => format!(
                    "abandoned; its next key is kept: {n} keys are named {} and rekey cannot tell which one it created, so it deletes none (its sealed secret is wiped); delete rekey's by hand",
                    row.new_key_name
                        .as_deref()
                        .map_or("?".into(), policy::escaped)
                ),
                (true, false, Disposal::Done) => {
                    "abandoned; its next key was deleted and its sealed secret wiped".to_string()
                }
                (true, false, Disposal::Retry) => {
                    "abandoned; deleting its next key failed and is retried by the next check"
                        .to_string()
                }
            }
        };
        self.refresh_status(rt, &row.policy)?;
        self.poke();
        Ok(CommandReply::Accepted {
            rotation: id.to_string(),
            message,
        })
    }

    // ------------------------------------------------------------- driving

    /// Drive one rotation as far as it can go now. Returns when it must wait
    /// (`Some(when)`) or has finished (`None`). Stops between steps when
    /// `shutdown` fires; every step it finished is committed.
    pub async fn advance(
        &self,
        rt: &Runtime,
        id: &str,
        shutdown: &CancellationToken,
    ) -> Result<Option<DateTime<Utc>>, EngineError> {
        let _slot = self.slots.acquire().await.expect("semaphore never closed");
        let mut policy_name = None;
        // A step recorded a failure that may start a condition: its
        // status rebuild is not deferred (status_after_step).
        let mut failed = false;
        let mut before: Option<RotationRow> = None;
        let out = loop {
            if shutdown.is_cancelled() {
                break Ok(Some(self.now()));
            }
            let Some(row) = self.store.rotation(id)? else {
                break Ok(None);
            };
            policy_name = Some(row.policy.clone());
            let Some(policy) = rt.policy(&row.policy) else {
                break Err(EngineError::UnknownPolicy(row.policy.clone()));
            };
            if let Some(b) = &before {
                failed |= Self::failure_may_start_a_condition(policy, b, &row);
            }
            let step = match row.state {
                RotationState::Completed | RotationState::Failed => Ok(Step::Done),
                RotationState::Planned => self.step_create(rt, policy, &row).await,
                RotationState::Created => self.step_publish(rt, policy, &row).await,
                RotationState::Published | RotationState::Retiring => {
                    self.step_retire(rt, policy, &row).await
                }
            };
            match step {
                Ok(Step::Continue) => {
                    before = Some(row);
                    // The status snapshot is rebuilt once this call stops
                    // (below), not after every step, and then only as
                    // often as the policy's coalescing window allows
                    // (StatusBuilt): under load that is most of the
                    // engine's CPU.
                    self.wake_notify.notify_one();
                    continue;
                }
                Ok(Step::Wait(t)) => {
                    // The scheduler wakes for what the store says: a wait
                    // the step computed (a sink's own later retry) must be
                    // committed, or the rotation looks due and spins.
                    if let Some(r) = self.store.rotation(id)? {
                        failed |= Self::failure_may_start_a_condition(policy, &row, &r);
                        if !r.state.is_terminal() && r.next_attempt_at != Some(t) {
                            self.store.set_next_attempt(id, Some(t))?;
                        }
                    }
                    break Ok(Some(t));
                }
                Ok(Step::Done) => break Ok(None),
                Err(e) => break Err(e),
            }
        };
        if let Some(p) = policy_name {
            self.status_after_step(rt, &p, failed || out.is_err());
        }
        self.wake_notify.notify_one();
        out
    }

    /// Whether a step that took rotation `before` to `after` recorded a
    /// failure that may start a condition (the health rule,
    /// [`super::health`]): the rotation ended `failed`, or its failures
    /// reached the policy's `failing_after_failures` (only the step that
    /// reaches it: later failures start nothing new).
    fn failure_may_start_a_condition(
        policy: &PolicyConfig,
        before: &RotationRow,
        after: &RotationRow,
    ) -> bool {
        let threshold =
            super::health::failing_after(policy.failing_after_failures, policy.max_attempts);
        (after.state == RotationState::Failed && before.state != RotationState::Failed)
            || (before.failures < threshold && after.failures >= threshold)
    }

    fn time_left(&self, row: &RotationRow) -> Option<ChronoDuration> {
        // The current key's expiry, as the store knows it.
        let old = row.old_key_id.as_ref()?;
        let known = self.store.known_keys(&row.policy).ok()?;
        let exp = known.iter().find(|k| &k.key_id == old)?.expires_at?;
        Some(exp - self.now())
    }

    /// Count a failed step; fail the rotation when the budget is spent or
    /// the error is permanent (unless `never_give_up`).
    #[allow(clippy::too_many_arguments)]
    fn on_failure(
        &self,
        policy: &PolicyConfig,
        row: &RotationRow,
        what: &str,
        error: &str,
        retryable: bool,
        retry_after: Option<Duration>,
        never_give_up: bool,
    ) -> Result<Step, EngineError> {
        let failures = row.failures + 1;
        let class = if retryable { "retryable" } else { "permanent" };
        self.metrics
            .count_step_failure(&row.policy, step_label(row.state, what));
        if !never_give_up && (!retryable || failures >= policy.max_attempts) {
            self.store
                .fail_rotation(&row.id, &format!("{what}: {error}"), class, self.now())?;
            self.metrics.count_rotation(&row.policy, "failed");
            self.metrics
                .provider_rotations
                .with_label_values(&[&row.provider, "failed"])
                .inc();
            tracing::error!(policy = %row.policy, lineage = %row.lineage, rotation = %row.id, state = row.state.as_str(), failures, class, old_key = row.old_key_id.as_deref().unwrap_or(""), "rotation failed ({what}): {error}; the current key stays, the next check tries again");
            return Ok(Step::Done);
        }
        let delay = if never_give_up {
            self.backoff.retire_delay(failures, retry_after)
        } else {
            self.backoff
                .delay(failures, self.time_left(row), retry_after)
        };
        let next = self.now() + ChronoDuration::from_std(delay).unwrap_or_default();
        self.store.record_step_failure(
            &row.id,
            &format!("{what}: {error}"),
            class,
            Some(next),
            self.now(),
        )?;
        if never_give_up && failures >= policy.max_attempts {
            tracing::error!(policy = %row.policy, lineage = %row.lineage, rotation = %row.id, failures, retry_in_ms = delay.as_millis() as u64, "{what} keeps failing: {error}; a human should look (the old key is kept)");
        } else {
            tracing::warn!(policy = %row.policy, lineage = %row.lineage, rotation = %row.id, failures, class, retry_in_ms = delay.as_millis() as u64, "{what} failed: {error}; will retry");
        }
        Ok(Step::Wait(next))
    }

    /// [`Engine::on_failure`] for a provider error. A throttle (429 or a
    /// vendor throttling code) waits for the provider without spending one
    /// of the rotation's `max_attempts`.
    fn on_provider_error(
        &self,
        policy: &PolicyConfig,
        row: &RotationRow,
        what: &str,
        e: &ProviderError,
        never_give_up: bool,
    ) -> Result<Step, EngineError> {
        if e.is_throttled() {
            let delay = self.backoff.delay(1, self.time_left(row), e.retry_after());
            let next = self.now() + ChronoDuration::from_std(delay).unwrap_or_default();
            self.store.record_step_wait(
                &row.id,
                &format!("{what}: {e}"),
                "throttled",
                Some(next),
            )?;
            tracing::info!(policy = %row.policy, lineage = %row.lineage, rotation = %row.id, retry_in_ms = delay.as_millis() as u64, "{what}: the provider is throttling; waiting (not counted as a failed attempt)");
            return Ok(Step::Wait(next));
        }
        self.on_failure(
            policy,
            row,
            what,
            &e.to_string(),
            e.is_retryable(),
            e.retry_after(),
            never_give_up,
        )
    }

    /// The next key of `row` can no longer be published (its sealed secret
    /// does not open, or a sink of the rotation left the config): end the
    /// rotation as abandoned instead of failing (and reviving) it for
    /// ever, and delete the key unless a sink already holds it.
    async fn give_up_unpublishable(
        &self,
        rt: &Runtime,
        row: &RotationRow,
        why: &str,
    ) -> Result<Step, EngineError> {
        let why = format!("the next key can no longer be published: {why}");
        self.metrics.count_step_failure(&row.policy, "publish");
        self.metrics.count_rotation(&row.policy, "failed");
        let row = self.store.abandon_rotation(&row.id, &why, self.now())?;
        tracing::error!(policy = %row.policy, lineage = %row.lineage, rotation = %row.id, new_key = row.new_key_id.as_deref().unwrap_or(""), "rotation abandoned: {why}; the current key stays and a new rotation may start");
        self.delete_abandoned_key(rt, &row).await;
        Ok(Step::Done)
    }

    /// Delete the next key of an abandoned rotation when rekey created it
    /// and no sink ever acknowledged it (DESIGN §3); a key any sink holds
    /// may be in use, so it is kept and reported instead. When its id is
    /// unknown (OceanBase) it is found by its attempt's unique name, and
    /// only when exactly one key carries it: a hand-made twin could be
    /// either one, so then none is deleted (outcome `next_key_kept`).
    /// Failures are retried by later checks ([`Engine::check_policy`]).
    async fn delete_abandoned_key(&self, rt: &Runtime, row: &RotationRow) -> Disposal {
        if row.created_at.is_none() {
            return Disposal::Done;
        }
        match self.store.any_sink_acked(&row.id) {
            Ok(false) => {}
            Ok(true) => {
                tracing::warn!(policy = %row.policy, lineage = %row.lineage, rotation = %row.id, new_key = row.new_key_id.as_deref().unwrap_or(""), "the abandoned rotation's next key is kept: a sink acknowledged it, so it may be in use; delete it by hand once nothing uses it");
                return Disposal::Done;
            }
            Err(_) => return Disposal::Retry,
        }
        let Ok(provider) = self.provider(rt, &row.provider) else {
            return Disposal::Retry;
        };
        let provider = provider.clone();
        let id = match &row.new_key_id {
            Some(id) => id.clone(),
            None => {
                let name = row.new_key_name.clone().unwrap_or_default();
                match provider.list(&|n: &str| n == name).await {
                    Ok(found) => match found.as_slice() {
                        [] => {
                            let _ = self.store.record_abandoned_key_deleted(&row.id, self.now());
                            return Disposal::Done;
                        }
                        [k] => k.id.clone(),
                        many => {
                            let _ = self.store.record_abandoned_key_kept(&row.id);
                            tracing::warn!(policy = %row.policy, lineage = %row.lineage, rotation = %row.id, name = %policy::escaped(&name), keys = many.len(), "the abandoned rotation's next key is kept: several keys carry its attempt's name and rekey cannot tell which one it created; delete rekey's by hand");
                            return Disposal::Ambiguous(many.len());
                        }
                    },
                    Err(_) => return Disposal::Retry,
                }
            }
        };
        match self.delete_key(rt, &provider, &id).await {
            Ok(_) => {
                let _ = self.store.record_abandoned_key_deleted(&row.id, self.now());
                tracing::warn!(policy = %row.policy, lineage = %row.lineage, rotation = %row.id, key = %id.escape_debug(), "deleted the next key of an abandoned rotation (no sink ever acknowledged it); its sealed secret is wiped");
                Disposal::Done
            }
            Err(e) => {
                tracing::warn!(policy = %row.policy, rotation = %row.id, key = %id.escape_debug(), error = %e, "cannot delete the abandoned rotation's next key yet; the next check tries again");
                Disposal::Retry
            }
        }
    }

    /// The next key of a retiring rotation vanished: end it (`failed`,
    /// `next_key_missing`), keep the old key, let a new rotation start.
    fn next_key_missing(&self, row: &RotationRow, why: &str) -> Result<Step, EngineError> {
        self.store.fail_next_key_missing(&row.id, why, self.now())?;
        self.metrics.count_rotation(&row.policy, "failed");
        tracing::error!(policy = %row.policy, lineage = %row.lineage, rotation = %row.id, old_key = row.old_key_id.as_deref().unwrap_or(""), "next key missing during grace: {why}; the rotation ends failed, the old key is kept, and the next check starts a new rotation");
        Ok(Step::Done)
    }

    async fn delete_key(
        &self,
        _rt: &Runtime,
        provider: &SharedProvider,
        key_id: &str,
    ) -> Result<DeleteOutcome, ProviderError> {
        if let Err(closed) = self.lease.check() {
            // A node that may no longer lead deletes nothing; the caller
            // treats it as a failure to try again, by the next leader.
            return Err(ProviderError {
                provider: provider.name().into(),
                operation: "delete",
                kind: crate::provider::ProviderErrorKind::Connect(closed.to_string()),
                request_id: None,
                class: Some(crate::provider::Outcome::Retry),
            });
        }
        let caps = provider.capabilities();
        if caps.disable_before_delete {
            provider.before_delete(key_id).await?;
        }
        provider.delete(key_id).await
    }

    async fn step_create(
        &self,
        rt: &Runtime,
        policy: &PolicyConfig,
        row: &RotationRow,
    ) -> Result<Step, EngineError> {
        let provider = self.provider(rt, &row.provider)?.clone();
        let now = self.now();
        // 1. Previous attempts whose outcome is unknown: list, and delete any
        //    key carrying their names (we never got their secrets). One not
        //    listed stays `abandoned` (an eventually consistent list may show
        //    it later; the policy's checks keep watching for it and delete it
        //    then), but the next create happens only after this listing.
        let attempts = self.store.attempts(&row.id)?;
        let open: Vec<_> = attempts
            .iter()
            .filter(|a| a.state == "requested" || a.state == "abandoned")
            .collect();
        // Unresolved attempts of earlier rotations of this lineage: no
        // create under a new name without listing for them again.
        let earlier: Vec<_> = self
            .store
            .orphan_attempts(&row.policy)?
            .into_iter()
            .filter(|o| {
                o.lineage == row.lineage
                    && o.rotation_id != row.id
                    && o.rotation_state.is_terminal()
                    && matches!(o.attempt.state.as_str(), "requested" | "abandoned")
            })
            .collect();
        if !open.is_empty() || !earlier.is_empty() {
            let names: std::collections::HashSet<String> = open
                .iter()
                .map(|a| a.name.clone())
                .chain(earlier.iter().map(|o| o.attempt.name.clone()))
                .collect();
            // Only a walk that started after every open attempt will do.
            let since = open
                .iter()
                .map(|a| a.started_at)
                .chain(earlier.iter().map(|o| o.attempt.started_at))
                .max();
            let listing = match rt
                .walks
                .listing(&provider, &self.clock, since, Purpose::Attempt)
                .await
            {
                Ok(l) => l.filtered(|n| names.contains(n)),
                Err(e) => {
                    return self.on_provider_error(
                        policy,
                        row,
                        "listing keys to resolve an abandoned create attempt",
                        &e,
                        false,
                    );
                }
            };
            for a in open {
                let found: Vec<ListedKey<'_>> = listing.named(&a.name).collect();
                if found.is_empty() {
                    // Not seen: abandoned, watched for; counts as one absent
                    // listing only if it started after the attempt.
                    self.store
                        .resolve_attempt(&row.id, a.attempt, false, None, now)?;
                    if listing.proves_absent(&a.name, a.started_at) {
                        self.store
                            .note_attempt_absent(&row.id, a.attempt, listing.started_at)?;
                    }
                    tracing::warn!(policy = %row.policy, lineage = %row.lineage, rotation = %row.id, attempt = a.attempt, name = %policy::escaped(&a.name), "create attempt's outcome is unknown and no key of its name is listed yet; it stays abandoned and is deleted if it ever appears");
                    continue;
                }
                for k in found {
                    match self.delete_key(rt, &provider, k.id()).await {
                        Ok(_) => {
                            tracing::warn!(policy = %row.policy, lineage = %row.lineage, rotation = %row.id, attempt = a.attempt, key = %policy::escaped(k.id()), "create attempt's outcome was unknown; its key exists and was deleted (its secret was never captured)")
                        }
                        Err(e) => {
                            return self.on_provider_error(
                                policy,
                                row,
                                "cleaning up an abandoned create attempt",
                                &e,
                                false,
                            );
                        }
                    }
                }
                self.store
                    .resolve_attempt(&row.id, a.attempt, true, None, now)?;
            }
            for o in &earlier {
                let a = &o.attempt;
                let found: Vec<ListedKey<'_>> = listing.named(&a.name).collect();
                if found.is_empty() {
                    if listing.proves_absent(&a.name, a.started_at) {
                        self.store.note_attempt_absent(
                            &o.rotation_id,
                            a.attempt,
                            listing.started_at,
                        )?;
                    }
                    continue;
                }
                let mut ok = true;
                for k in found {
                    if let Err(e) = self.delete_key(rt, &provider, k.id()).await {
                        ok = false;
                        tracing::warn!(policy = %row.policy, rotation = %o.rotation_id, key = %policy::escaped(k.id()), error = %e, "cannot delete an abandoned attempt's key yet");
                    } else {
                        tracing::warn!(policy = %row.policy, lineage = %row.lineage, rotation = %o.rotation_id, attempt = a.attempt, key = %policy::escaped(k.id()), "deleted the key of an earlier rotation's abandoned create attempt (its secret was never captured)");
                    }
                }
                if ok {
                    self.store
                        .resolve_attempt(&o.rotation_id, a.attempt, true, None, now)?;
                }
            }
        }
        if row.failures >= policy.max_attempts {
            return self.on_failure(
                policy,
                row,
                "create",
                row.error.as_deref().unwrap_or("too many failures"),
                false,
                None,
                false,
            );
        }
        if let Some(t) = row.next_attempt_at
            && t > now
        {
            return Ok(Step::Wait(t));
        }
        // 2. Commit the attempt's unique name, then create.
        let (attempt, name) = self.store.start_attempt(
            &row.id,
            |a| {
                policy
                    .name_template
                    .render(&row.lineage, &policy.name, &row.id, a, now)
            },
            now,
        )?;
        failpoint::hit("before_create");
        self.lease.check()?;
        let started = std::time::Instant::now();
        // Its id lookup will need a walk after it returns: walks about to
        // start in this account wait for it (providers without an id only).
        let in_flight = (!provider.capabilities().returns_id_on_create)
            .then(|| rt.walks.creating(&row.provider));
        let result = provider
            .create(&CreateRequest {
                name: &name,
                params: &policy.create,
            })
            .await;
        drop(in_flight);
        match result {
            Ok(new) => {
                failpoint::hit("after_create");
                let sealed = self.sealer.seal(&row.id, &new.secret);
                let fingerprint = new.secret.fingerprint();
                self.store.record_created(
                    &row.id,
                    attempt,
                    &CreatedRecord {
                        key_id: new.id.clone(),
                        name: new.name.clone(),
                        created_at: new.created_at,
                        expires_at: new.expires_at,
                    },
                    &sealed,
                    &fingerprint,
                    self.now(),
                )?;
                tracing::info!(policy = %row.policy, lineage = %row.lineage, rotation = %row.id, attempt, new_key = new.id.as_deref().unwrap_or("(resolving)"), new_key_name = %new.name, fingerprint = %fingerprint, duration_ms = started.elapsed().as_millis() as u64, "next key created");
                failpoint::hit("after_record_created");
                if let Some(problem) = &new.unreadable {
                    // Sealed above: failing now loses nothing.
                    let row = self.store.rotation(&row.id)?.unwrap_or_else(|| row.clone());
                    return self.on_failure(
                        policy,
                        &row,
                        UNREADABLE_STEP,
                        problem,
                        false,
                        None,
                        false,
                    );
                }
                Ok(Step::Continue)
            }
            Err(e) => {
                // A definitive refusal or a throttle (429 included) means
                // "not created": no listing for an orphan. Only an unknown
                // outcome is resolved by listing before the next try.
                let nothing_created = e.nothing_happened();
                self.store.resolve_attempt(
                    &row.id,
                    attempt,
                    nothing_created,
                    Some(&e.to_string()),
                    self.now(),
                )?;
                let row = self.store.rotation(&row.id)?.unwrap_or_else(|| row.clone());
                self.on_provider_error(policy, &row, "create", &e, false)
            }
        }
    }

    async fn step_publish(
        &self,
        rt: &Runtime,
        policy: &PolicyConfig,
        row: &RotationRow,
    ) -> Result<Step, EngineError> {
        let provider = self.provider(rt, &row.provider)?.clone();
        let now = self.now();
        let new_name = row.new_key_name.clone().unwrap_or_default();
        // The new key's id (OceanBase returns none on create).
        let mut row = row.clone();
        if row.new_key_id.is_none() {
            // Any walk that shows the key proves it; one that does not and
            // began before the create proves nothing, so ask for a newer one.
            let named = |l: &Listing| -> Vec<ProviderKey> {
                l.named(&new_name).map(ListedKey::to_owned).collect()
            };
            let first = rt
                .walks
                .listing(&provider, &self.clock, None, Purpose::IdLookup)
                .await;
            let mut found = first.as_ref().map(|l| named(l)).map_err(Clone::clone);
            if found.as_ref().is_ok_and(|f| f.is_empty()) {
                // Newer than the create and than the walk that missed it
                // (a retry never re-reads the same miss).
                let since = first
                    .as_ref()
                    .ok()
                    .map(|l| l.started_at)
                    .max(row.created_at);
                found = rt
                    .walks
                    .listing(&provider, &self.clock, since, Purpose::IdLookup)
                    .await
                    .map(|l| named(&l));
            }
            // Someone else made a key with this attempt's unique name: rekey
            // cannot tell which is its own, so it claims neither.
            if let Ok(keys) = &found
                && keys.len() > 1
            {
                let ids: Vec<String> = keys.iter().map(|k| policy::escaped(&k.id)).collect();
                return self.on_failure(
                    policy,
                    &row,
                    "finding the new key's id",
                    &format!(
                        "{} keys are named {} (ids {}); rekey cannot tell which one it created and claims neither; delete the one that is not rekey's",
                        keys.len(),
                        policy::escaped(&new_name),
                        ids.join(", ")
                    ),
                    false,
                    None,
                    false,
                );
            }
            match found.map(|k| k.into_iter().next()) {
                Ok(found) => match found {
                    Some(k) => {
                        self.store.record_new_key_id(
                            &row.id,
                            &CreatedRecord {
                                key_id: Some(k.id.clone()),
                                name: k.name.clone(),
                                created_at: k.created_at,
                                expires_at: k.expires_at,
                            },
                            now,
                        )?;
                        tracing::info!(policy = %row.policy, lineage = %row.lineage, rotation = %row.id, new_key = %policy::escaped(&k.id), "next key's id resolved by listing");
                        row = self.store.rotation(&row.id)?.unwrap_or(row);
                    }
                    None => {
                        // An eventually consistent listing: waiting for it
                        // is bounded by time, not by the failure budget.
                        let since = row.listing_wait_since.unwrap_or(now);
                        let waited = now - since;
                        if waited < ChronoDuration::from_std(LISTING_WAIT_MAX).unwrap_or_default() {
                            if row.listing_wait_since.is_none() {
                                self.store.set_listing_wait(&row.id, Some(now))?;
                                tracing::info!(policy = %row.policy, lineage = %row.lineage, rotation = %row.id, new_key_name = %new_name.escape_debug(), "the new key is not listed yet; waiting for the listing to catch up");
                            }
                            let step = (waited.to_std().unwrap_or_default() / 2)
                                .clamp(self.backoff.base, LISTING_WAIT_STEP_MAX);
                            let next = now + ChronoDuration::from_std(step).unwrap_or_default();
                            self.store.set_next_attempt(&row.id, Some(next))?;
                            return Ok(Step::Wait(next));
                        }
                        return self.on_failure(
                            policy,
                            &row,
                            "finding the new key's id",
                            &format!(
                                "no key named {} is listed after {}",
                                policy::escaped(&new_name),
                                humantime::format_duration(LISTING_WAIT_MAX)
                            ),
                            true,
                            None,
                            // The key exists and its secret is sealed here:
                            // keep looking (an eventually consistent list)
                            // rather than give up.
                            true,
                        );
                    }
                },
                Err(e) => {
                    return self.on_provider_error(
                        policy,
                        &row,
                        "finding the new key's id",
                        &e,
                        false,
                    );
                }
            }
        }
        if row.listing_wait_since.is_some() {
            self.store.set_listing_wait(&row.id, None)?;
        }
        let new_id = row.new_key_id.clone().unwrap_or_default();
        // The provider's after-create step (Tencent: bind to usage plans)
        // runs once per rotation; its completion is committed, so a sink
        // waiting out its backoff never makes it run again.
        if row.prepared_at.is_none() {
            if let Err(e) = provider
                .after_create(&new_id, row.old_key_id.as_deref(), &policy.create)
                .await
            {
                return self.on_provider_error(
                    policy,
                    &row,
                    "preparing the new key (after_create)",
                    &e,
                    false,
                );
            }
            failpoint::hit("after_prepare");
            self.store.record_prepared(&row.id, self.now())?;
            row = self.store.rotation(&row.id)?.unwrap_or(row);
        }
        let Some(sealed) = self.store.sealed_secret(&row.id)? else {
            return self
                .give_up_unpublishable(rt, &row, "the sealed secret is missing from the state DB")
                .await;
        };
        let secret: SecretFields = match self.sealer.open(&row.id, &sealed) {
            Ok(s) => s,
            Err(e) => {
                return self.give_up_unpublishable(rt, &row, &e.to_string()).await;
            }
        };
        if let Some(gone) = row.sinks.iter().find(|s| !rt.sinks.contains_key(*s)) {
            let why = format!("sink {gone} is no longer configured");
            return self.give_up_unpublishable(rt, &row, &why).await;
        }
        let fingerprint = row.fingerprint.clone().unwrap_or_default();
        let mut earliest: Option<DateTime<Utc>> = None;
        for ack in self.store.sink_acks(&row.id)? {
            if ack.state == "acked" {
                continue;
            }
            if let Some(t) = ack.next_attempt_at
                && t > now
            {
                earliest = Some(earliest.map_or(t, |e: DateTime<Utc>| e.min(t)));
                continue;
            }
            let Some(sink) = rt.sinks.get(&ack.sink) else {
                return self.on_failure(
                    policy,
                    &row,
                    "publishing",
                    &format!("sink {} is no longer configured", ack.sink),
                    false,
                    None,
                    false,
                );
            };
            let p = Publication {
                policy: &row.policy,
                lineage: &row.lineage,
                provider: &row.provider,
                provider_kind: provider.kind(),
                rotation_id: &row.id,
                key_id: Some(&new_id),
                key_name: &new_name,
                created_at: row.new_key_created_at,
                expires_at: row.new_key_expires_at,
                secret: &secret,
                fingerprint: &fingerprint,
                fence: self.lease.fence(),
            };
            let target =
                rt.config.sinks.get(&ack.sink).and_then(|c| {
                    crate::config::ownership::target_key(c, &row.policy, &row.lineage)
                });
            if let Some(t) = &target
                && let Some(other) = self.foreign_target_owner(rt, &ack.sink, t, &row)?
            {
                let msg = format!(
                    "refusing to overwrite target {} of sink {}: it was last written for policy {} lineage {}, not policy {} lineage {}",
                    policy::escaped(t),
                    ack.sink,
                    other.policy,
                    policy::escaped(&other.lineage),
                    row.policy,
                    policy::escaped(&row.lineage)
                );
                self.store
                    .record_sink_failure(&row.id, &ack.sink, &msg, None)?;
                return self.on_failure(
                    policy,
                    &row,
                    &format!("publishing to sink {}", ack.sink),
                    &msg,
                    false,
                    None,
                    false,
                );
            }
            failpoint::hit("before_publish");
            self.lease.check()?;
            let started = std::time::Instant::now();
            match sink.publish(&p).await {
                Ok(detail) => {
                    failpoint::hit("after_publish");
                    if let Some(t) = &target {
                        self.store.record_sink_target(
                            t,
                            &crate::state::TargetOwner {
                                sink: ack.sink.clone(),
                                policy: row.policy.clone(),
                                lineage: row.lineage.clone(),
                                rotation_id: Some(row.id.clone()),
                            },
                            self.now(),
                        )?;
                    }
                    if failpoint::error("record_sink_ack") {
                        return Err(EngineError::Store(StoreError::Sql(
                            rusqlite::Error::SqliteFailure(
                                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                                Some("database or disk is full (failpoint)".into()),
                            ),
                        )));
                    }
                    let expected = sink.expected_fingerprint(&secret);
                    self.store.record_sink_ack(
                        &row.id,
                        &ack.sink,
                        detail.as_deref(),
                        &expected,
                        self.now(),
                    )?;
                    self.metrics
                        .sink_publish
                        .with_label_values(&[&ack.sink, "ok"])
                        .inc();
                    tracing::info!(policy = %row.policy, lineage = %row.lineage, rotation = %row.id, sink = %ack.sink, new_key = %new_id, detail = detail.as_deref().unwrap_or(""), duration_ms = started.elapsed().as_millis() as u64, "sink acknowledged the next key");
                }
                Err(e) if e.fenced => {
                    // A newer leader wrote this target: nothing of this
                    // node's is committed for it, and it stops (no retry).
                    self.metrics
                        .sink_token_rejections
                        .with_label_values(&[&ack.sink])
                        .inc();
                    tracing::error!(policy = %row.policy, lineage = %row.lineage, rotation = %row.id, sink = %ack.sink, error = %e.message, "sink refused the write by fence token: a newer leader wrote it; this node stops");
                    return Err(EngineError::SinkFenced {
                        sink: ack.sink.clone(),
                        message: e.message,
                    });
                }
                Err(e) => {
                    self.metrics
                        .sink_publish
                        .with_label_values(&[&ack.sink, "error"])
                        .inc();
                    let delay =
                        self.backoff
                            .delay(ack.attempts + 1, self.time_left(&row), e.retry_after);
                    let next = self.now() + ChronoDuration::from_std(delay).unwrap_or_default();
                    self.store
                        .record_sink_failure(&row.id, &ack.sink, &e.message, Some(next))?;
                    let step = self.on_failure(
                        policy,
                        &row,
                        &format!("publishing to sink {}", ack.sink),
                        &e.message,
                        e.retryable,
                        e.retry_after,
                        false,
                    )?;
                    match step {
                        Step::Done => return Ok(Step::Done),
                        Step::Wait(_) => {
                            // The sink's own retry time is what the
                            // rotation waits for.
                            earliest = Some(earliest.map_or(next, |x| x.min(next)));
                            row = self.store.rotation(&row.id)?.unwrap_or(row);
                        }
                        Step::Continue => {}
                    }
                }
            }
        }
        let acks = self.store.sink_acks(&row.id)?;
        if acks.iter().all(|a| a.state == "acked") {
            failpoint::hit("after_publish_all");
            let now = self.now();
            let grace = if row.revoke_old_immediately {
                ChronoDuration::zero()
            } else {
                ChronoDuration::from_std(row.grace).unwrap_or_default()
            };
            let retire_at = row.old_key_id.as_ref().map(|_| now + grace);
            self.store.record_published(&row.id, now, retire_at)?;
            tracing::info!(policy = %row.policy, lineage = %row.lineage, rotation = %row.id, new_key = %new_id, old_key = row.old_key_id.as_deref().unwrap_or(""), retire_at = retire_at.map(|t| t.to_rfc3339()).unwrap_or_default(), "next key published to every sink; sealed copy wiped");
            if row.old_key_id.is_none() {
                self.completed(&row);
                return Ok(Step::Done);
            }
            return Ok(Step::Continue);
        }
        Ok(Step::Wait(earliest.unwrap_or_else(|| {
            self.now() + ChronoDuration::seconds(1)
        })))
    }

    /// Who else owns sink target `target` (a rendered `ownership::target_key`),
    /// if not this rotation's policy and lineage. A target with no record is
    /// claimed from the sink's earlier acknowledgements (schema v1 builds
    /// recorded none), so an upgrade does not lock itself out; with none it
    /// is free. This is the check every sink write goes through.
    pub fn foreign_target_owner(
        &self,
        rt: &Runtime,
        sink: &str,
        target: &str,
        row: &RotationRow,
    ) -> Result<Option<crate::state::TargetOwner>, EngineError> {
        let mine = |p: &str, l: &str| p == row.policy && l == row.lineage;
        if let Some(o) = self.store.sink_target_owner(target)? {
            return Ok((!mine(&o.policy, &o.lineage)).then_some(o));
        }
        let Some(sc) = rt.config.sinks.get(sink) else {
            return Ok(None);
        };
        for (p, l) in self.store.acked_writers(sink)? {
            if crate::config::ownership::target_key(sc, &p, &l).as_deref() == Some(target) {
                let owner = crate::state::TargetOwner {
                    sink: sink.to_string(),
                    policy: p,
                    lineage: l,
                    rotation_id: None,
                };
                self.store.record_sink_target(target, &owner, self.now())?;
                return Ok((!mine(&owner.policy, &owner.lineage)).then_some(owner));
            }
        }
        Ok(None)
    }

    fn completed(&self, row: &RotationRow) {
        self.metrics.count_rotation(&row.policy, "completed");
        self.metrics
            .provider_rotations
            .with_label_values(&[&row.provider, "completed"])
            .inc();
        self.metrics
            .set_last_success(&row.policy, self.now().timestamp() as f64);
        let took = (self.now() - row.started_at).num_milliseconds();
        tracing::info!(policy = %row.policy, lineage = %row.lineage, rotation = %row.id, new_key = row.new_key_id.as_deref().unwrap_or(""), old_key = row.old_key_id.as_deref().unwrap_or(""), reason = %row.reason, duration_ms = took, "rotation completed");
    }

    async fn step_retire(
        &self,
        rt: &Runtime,
        policy: &PolicyConfig,
        row: &RotationRow,
    ) -> Result<Step, EngineError> {
        let provider = self.provider(rt, &row.provider)?.clone();
        let now = self.now();
        let Some(old_id) = row.old_key_id.clone() else {
            return Ok(Step::Done);
        };
        let retire_at = row.retire_at.unwrap_or(now);
        if retire_at > now {
            return Ok(Step::Wait(retire_at));
        }
        if let Some(t) = row.next_attempt_at
            && t > now
        {
            return Ok(Step::Wait(t));
        }
        // A shared state decides by the database's clock too: a node whose
        // clock runs fast must not delete before the grace is over.
        if let Some(left) = self.store.retire_wait(&row.id)? {
            return Ok(Step::Wait(
                now + ChronoDuration::from_std(left).unwrap_or_default(),
            ));
        }
        let new_id = row.new_key_id.clone().unwrap_or_default();
        let new_name = row.new_key_name.clone().unwrap_or_default();
        let caps = provider.capabilities();
        // Never delete a lineage's last live key: the next key must still exist.
        if caps.can_list {
            // Only a walk that began after the next key was created can
            // say anything about it.
            match rt
                .walks
                .listing(
                    &provider,
                    &self.clock,
                    row.created_at,
                    Purpose::BeforeDelete,
                )
                .await
            {
                Ok(listing) => {
                    if listing.by_id(&new_id).is_some() && row.listing_wait_since.is_some() {
                        self.store.set_listing_wait(&row.id, None)?;
                    }
                    if listing.by_id(&new_id).is_none() {
                        let why = format!(
                            "the new key {} ({}) is no longer listed; refusing to delete the old key {}",
                            policy::escaped(&new_id),
                            policy::escaped(&new_name),
                            policy::escaped(&old_id)
                        );
                        // One listing can miss a key (paging, an eventually
                        // consistent list); misses in a row across
                        // MISSING_WINDOW mean it is gone: end the rotation,
                        // keep the old key.
                        let since = row.listing_wait_since.unwrap_or(now);
                        if row.listing_wait_since.is_none() {
                            self.store.set_listing_wait(&row.id, Some(now))?;
                        }
                        let missed_before = row
                            .error
                            .as_deref()
                            .is_some_and(|e| e.contains(NEXT_KEY_NOT_LISTED));
                        if missed_before
                            && row.failures + 1 >= MISSING_AFTER
                            && now - since
                                >= ChronoDuration::from_std(MISSING_WINDOW).unwrap_or_default()
                        {
                            return self.next_key_missing(row, &why);
                        }
                        return self.on_failure(
                            policy,
                            row,
                            "retiring the old key",
                            &why,
                            true,
                            None,
                            true,
                        );
                    }
                }
                Err(e) => {
                    return self.on_failure(
                        policy,
                        row,
                        "retiring the old key (listing)",
                        &e.to_string(),
                        true,
                        e.retry_after(),
                        true,
                    );
                }
            }
        }
        // Every sink that can be read back must still hold the new key.
        let acks = self.store.sink_acks(&row.id)?;
        for ack in &acks {
            let Some(sink) = rt.sinks.get(&ack.sink) else {
                continue;
            };
            match sink.read_back(&row.policy, &row.lineage).await {
                Ok(ReadBack::Unsupported) => {}
                Ok(ReadBack::Fingerprint(f)) if Some(&f) == ack.fingerprint.as_ref() => {}
                Ok(ReadBack::Fingerprint(f)) => {
                    return self.on_failure(policy, row, "retiring the old key", &format!("sink {} no longer holds the new key (read back {f}, published {}); the old key is kept", ack.sink, ack.fingerprint.as_deref().unwrap_or("?")), true, None, true);
                }
                Ok(ReadBack::Missing) => {
                    return self.on_failure(policy, row, "retiring the old key", &format!("sink {} no longer holds the new key (nothing there); the old key is kept", ack.sink), true, None, true);
                }
                Err(e) => {
                    return self.on_failure(
                        policy,
                        row,
                        "retiring the old key (read-back)",
                        &e.message,
                        true,
                        e.retry_after,
                        true,
                    );
                }
            }
        }
        // One owner per key: never delete a key another policy also claims.
        let claims = match rt.policy(&row.policy) {
            Some(p) => policy::rivals(&rt.config, p).claims(&self.store)?,
            None => HashMap::new(),
        };
        if let Some(other) = claims.get(&old_id) {
            return self.on_failure(policy, row, "retiring the old key", &format!("key {} is also claimed by policy {other}; refusing to delete it until the config gives it one owner", policy::escaped(&old_id)), true, None, true);
        }
        failpoint::hit("before_delete");
        if !caps.can_delete {
            self.store.record_old_key_retired(&row.id, self.now())?;
            tracing::warn!(policy = %row.policy, lineage = %row.lineage, rotation = %row.id, old_key = %old_id, "provider cannot delete keys: the old key is left retired; delete it by hand");
            self.completed(row);
            return Ok(Step::Done);
        }
        self.lease.check()?;
        // Always ask for the delete, even when the listing did not show the
        // old key: offset paging can skip a key, and a 404 counts as done.
        // Unbind and disable (Tencent) once: committed, so a delete that
        // keeps failing does not redo them on every try.
        if caps.disable_before_delete && row.old_disabled_at.is_none() {
            if let Err(e) = provider.before_delete(&old_id).await {
                return self.on_failure(
                    policy,
                    row,
                    "disabling the old key",
                    &e.to_string(),
                    true,
                    e.retry_after(),
                    true,
                );
            }
            failpoint::hit("after_disable");
            self.store.record_old_disabled(&row.id, self.now())?;
            failpoint::hit("after_record_disabled");
        }
        let outcome = match provider.delete(&old_id).await {
            Ok(o) => o,
            Err(e) => {
                return self.on_failure(
                    policy,
                    row,
                    "deleting the old key",
                    &e.to_string(),
                    true,
                    e.retry_after(),
                    true,
                );
            }
        };
        failpoint::hit("after_delete");
        self.store.record_old_key_deleted(&row.id, self.now())?;
        tracing::info!(policy = %row.policy, lineage = %row.lineage, rotation = %row.id, old_key = %old_id, already_gone = outcome == DeleteOutcome::NotFound, "old key deleted");
        self.completed(row);
        Ok(Step::Done)
    }
}

/// The tightest of a policy's `expiring_warnings` that a key with `left`
/// until its expiry has crossed, as its event label (`"1d"`: the
/// duration as rekey prints it); `None` while it is outside all of them.
fn expiring_threshold(warnings: &[Duration], left: ChronoDuration) -> Option<String> {
    warnings
        .iter()
        .filter(|w| ChronoDuration::from_std(**w).is_ok_and(|w| left <= w))
        .min()
        .map(|w| crate::clock::human(*w))
}

/// What the scheduler needs to know to wake for a rotation.
pub fn rotation_due(row: &RotationRow, now: DateTime<Utc>) -> bool {
    match row.next_attempt_at {
        Some(t) => t <= now,
        None => true,
    }
}

#[cfg(test)]
mod status_built_tests {
    use super::*;
    use crate::clock::ManualElapsed;

    fn built() -> (StatusBuilt, ManualElapsed) {
        let mono = ManualElapsed::default();
        let b = StatusBuilt::new(Arc::new(mono.clone()), Duration::from_millis(100));
        (b, mono)
    }

    /// A step that commits while a rebuild is reading the store may be
    /// missing from what it publishes: its mark must outlive that rebuild.
    #[test]
    fn a_step_marked_after_a_rebuild_read_the_store_stays_marked() {
        let (b, mono) = built();
        let r = b.begin("p", b.marks());
        assert!(!b.note_step("p"), "inside the window the rebuild opened");
        b.mark("p", None, r);
        mono.advance(Duration::from_millis(100));
        assert_eq!(b.take_due(), (vec!["p".to_string()], None));
        // Covered by a rebuild that read the store after it: cleared.
        let r = b.begin("p", b.marks());
        b.mark("p", None, r);
        mono.advance(Duration::from_millis(100));
        assert_eq!(b.take_due(), (Vec::new(), None));
    }

    /// Two rebuilds of one policy overlap: one (a check's, the periodic
    /// refresh's) read the store before a step committed, the step's own
    /// rebuild read it after, and the older one publishes last. The status
    /// then lacks the step: the policy must stay marked until a rebuild
    /// that read the store after the step publishes last.
    #[test]
    fn an_older_rebuild_published_after_a_newer_one_leaves_its_policy_marked() {
        let (b, mono) = built();
        // The older rebuild reads the store (no step yet).
        let seen = b.marks();
        mono.advance(Duration::from_millis(100));
        // A step commits; a window has passed: it rebuilds at once.
        assert!(b.note_step("p"));
        let newer = b.begin("p", b.marks());
        b.mark("p", None, newer);
        // The older rebuild publishes now, over what the newer one showed.
        let older = b.begin("p", seen);
        b.mark("p", None, older);
        mono.advance(Duration::from_millis(100));
        assert_eq!(b.take_due(), (vec!["p".to_string()], None));
    }

    /// The window grows with what a rebuild costs (20 ×), between the
    /// floor and the cap.
    #[test]
    fn the_window_is_twenty_rebuild_times_between_its_floor_and_cap() {
        let (b, mono) = built();
        for (cost_ms, window_ms) in [(1, 100), (10, 200), (400, 1000)] {
            let r = b.begin("p", b.marks());
            mono.advance(Duration::from_millis(cost_ms));
            b.mark("p", None, r);
            assert!(!b.note_step("p"));
            let (due, next) = b.take_due();
            assert!(due.is_empty());
            assert_eq!(next, Some(Duration::from_millis(window_ms - cost_ms)));
            mono.advance(Duration::from_millis(window_ms - cost_ms));
            assert_eq!(b.take_due(), (vec!["p".to_string()], None));
            let r = b.begin("p", b.marks());
            b.mark("p", None, r);
            mono.advance(Duration::from_secs(1));
        }
    }

    /// Without a floor every step rebuilds (the engine tests' harness).
    #[test]
    fn with_no_floor_every_step_rebuilds_at_once() {
        let b = StatusBuilt::immediate();
        for _ in 0..3 {
            assert!(b.note_step("p"));
            let r = b.begin("p", b.marks());
            b.mark("p", None, r);
        }
        assert_eq!(b.take_due(), (Vec::new(), None));
    }
}

#[cfg(test)]
mod digest_tests {
    use super::*;

    /// The digest as it was computed over `ProviderKey`s before listings
    /// held compact rows (kept here to pin that it did not change).
    fn digest_of_keys(keys: &[ProviderKey], complete: bool) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        let time = |t: Option<DateTime<Utc>>| match t {
            Some(t) => {
                let mut b = [0u8; 13];
                b[0] = 1;
                b[1..9].copy_from_slice(&t.timestamp().to_le_bytes());
                b[9..].copy_from_slice(&t.timestamp_subsec_nanos().to_le_bytes());
                b
            }
            None => [0u8; 13],
        };
        field(&[u8::from(complete)]);
        for k in keys {
            field(k.id.as_bytes());
            field(k.name.as_bytes());
            field(&time(k.created_at));
            field(&time(k.expires_at));
            field(&(k.meta.len() as u64).to_le_bytes());
            for (name, value) in &k.meta {
                field(name.as_bytes());
                field(value.to_string().as_bytes());
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(h.finalize().as_slice());
        out
    }

    fn keys() -> Vec<ProviderKey> {
        (0..12)
            .map(|i: i64| ProviderKey {
                id: format!("k{i}"),
                name: format!("app-{}", i % 4),
                created_at: (i % 3 != 0)
                    .then(|| DateTime::from_timestamp(1_764_000_000 + i, 7).unwrap()),
                expires_at: (i % 2 == 0).then(|| DateTime::from_timestamp(-i, 0).unwrap()),
                meta: if i % 5 == 0 {
                    [("status".to_string(), serde_json::json!("enabled"))].into()
                } else {
                    Default::default()
                },
            })
            .collect()
    }

    #[test]
    fn a_walk_a_view_of_it_and_its_positions_digest_as_the_keys_did() {
        let keys = keys();
        let at = DateTime::from_timestamp(1_764_000_100, 0).unwrap();
        let walk = Listing::from_walk(keys.clone(), at, std::time::Instant::now(), true);
        assert_eq!(listing_digest(&walk), digest_of_keys(&keys, true));
        let positions = [1u32, 4, 5, 10];
        let view = walk.subset(&positions);
        let picked: Vec<ProviderKey> = positions
            .iter()
            .map(|&n| keys[n as usize].clone())
            .collect();
        let want = digest_of_keys(&picked, true);
        // check_policy_in_walk (positions), check_policy_deferred (a view).
        let by_positions = keys_digest(
            positions.iter().filter_map(|&n| walk.get(n as usize)),
            walk.complete,
        );
        assert_eq!(by_positions, want);
        assert_eq!(listing_digest(&view), want);
        // Any field changes it.
        let mut other = picked.clone();
        other[2].meta.clear();
        assert_ne!(digest_of_keys(&other, true), want);
        assert_ne!(digest_of_keys(&picked, false), want);
        let mut other = picked;
        other[0].created_at = None;
        let l = Listing::from_walk(other, at, std::time::Instant::now(), true);
        assert_ne!(listing_digest(&l), want);
    }
}
