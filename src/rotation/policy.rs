//! The planner: "should this lineage's key be replaced, and why?"
//!
//! Pure functions, no I/O, time passed in. Keys a policy matched are first
//! grouped into *lineages* ([`assign_lineages`]): a key rekey created belongs
//! to the lineage recorded when it was created (or, with the DB lost, the
//! one parsed back out of its name); any other key starts a lineage named
//! after itself. Each lineage's *current key* is its newest live key that is
//! neither retiring nor pending. Then an ordered chain of named checks
//! decides per lineage (cert-manager's renewal policy chain); the first that
//! fires wins and its reason is stored and logged:
//!
//! 1. `in_progress`  — a rotation of this lineage is already running.
//! 2. `no_keys`      — the lineage has no current key.
//! 3. `expired`      — the current key's expiry has passed.
//! 4. `expiring`     — expiry is within the lead (`rotate_before_expiry`,
//!    absolute or a share of lifetime, never more than a third of the key's
//!    real lifetime).
//! 5. `max_age`      — the key is older than `max_age`.
//! 6. `fresh`        — nothing to do; `rotate_at` says when that changes.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::Serialize;

use super::health::{self, Condition, Health, LineageFacts};
use super::report::KeyState;
use crate::config::{Lead, Mode, PolicyConfig, TargetTemplate};
use crate::provider::ProviderKey;
use crate::state::{
    KnownKeys, KnownRef, OrphanAttempt, OwnedKey, RotationRow, RotationState, Store, StoreError,
};

/// Why a lineage is (or is not) being rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    InProgress,
    NoKeys,
    Bootstrap,
    Expired,
    Expiring,
    MaxAge,
    Manual,
    Fresh,
    Misconfigured,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InProgress => "in_progress",
            Reason::NoKeys => "no_keys",
            Reason::Bootstrap => "bootstrap",
            Reason::Expired => "expired",
            Reason::Expiring => "expiring",
            Reason::MaxAge => "max_age",
            Reason::Manual => "manual",
            Reason::Fresh => "fresh",
            Reason::Misconfigured => "misconfigured",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub reason: Reason,
    pub message: String,
    /// Whether a rotation should start now (in rotate mode).
    pub rotate: bool,
    /// When the current key becomes due, if it is not yet.
    pub rotate_at: Option<DateTime<Utc>>,
}

/// How a key came to belong to its lineage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Made by rekey: a rotation in the store produced it (by provider id,
    /// or by attempt name while the id is not yet known).
    Created { rotation_id: Option<String> },
    /// Not made by rekey and not looking generated: a lineage of its own (or
    /// the lineage the store recorded for it).
    Adopted,
    /// Carries the name of one of rekey's create attempts that never handed
    /// over its secret: an orphan, deleted when seen, never current.
    Orphan { rotation_id: String },
    /// Its name parses through `name_template` but no rotation in the store
    /// produced it: reported, never current, never deleted.
    Unrecognised,
}

/// A key as the planner sees it: listed by the provider, placed in a lineage.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyView {
    pub key: ProviderKey,
    pub lineage: String,
    pub origin: Origin,
    /// The store says it is retiring (old key in grace), retired or deleted.
    pub store_state: Option<String>,
}

#[derive(Debug, Clone)]
pub struct LineagePlan {
    pub name: String,
    pub current: Option<KeyView>,
    pub keys: Vec<(KeyView, KeyState)>,
    pub decision: Decision,
    pub health: Health,
    /// A stuck condition of DESIGN §4 that holds for this lineage
    /// (`unrecognised_key`, `unsafe_name`, `conflict`), shown as its
    /// `reason` in status and as `rekey_condition`.
    pub condition: Option<&'static str>,
    /// Stuck conditions that hold (the health rule, [`health::assess`]),
    /// the deciding one first.
    pub conditions: Vec<(Condition, String)>,
    pub active: Option<RotationRow>,
    pub last: Option<RotationRow>,
    /// A failed rotation that already created (and still holds, sealed) a
    /// new key: the next check resumes it instead of creating another.
    pub resumable: Option<RotationRow>,
    /// Since when the lineage's longest-pending abandoned rotation has
    /// waited for its next key's delete ([`Ledger::abandoned`],
    /// [`health::cleanup_since`]); `None` when none waits.
    pub cleanup_since: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct PolicyPlan {
    pub policy: String,
    pub health: Health,
    pub lineages: Vec<LineagePlan>,
    /// Why nothing may change (a fixed sink target over several lineages).
    pub misconfigured: Option<String>,
    /// Create the first key of this lineage (bootstrap).
    pub bootstrap: Option<String>,
}

impl PolicyPlan {
    /// Lineages whose rotation should start now.
    pub fn due(&self) -> impl Iterator<Item = &LineagePlan> {
        self.lineages.iter().filter(|l| l.decision.rotate)
    }

    /// Until when planning the same keys from the same ledger and
    /// configuration gives this very plan again, made at `now`: `Some(t)`
    /// (`t >= now`, exclusive) when the plan is *settled* — healthy
    /// (`ok`), nothing due, misconfigured or bootstrapped, and every
    /// lineage `fresh`, with no rotation in flight, nothing to resume and
    /// no condition — else `None`.
    ///
    /// Why the plan cannot change before `t` (the only input that moves is
    /// `now`; this lists every use of it in [`plan`], [`decide`] and
    /// [`health::assess`], and the expiry warnings a check raises):
    /// - a `fresh` decision stays `fresh`, with the same `rotate_at` and
    ///   message (it prints the instant it is due, not the time left), while
    ///   `now` is before `rotate_at` (the lead and `max_age` thresholds) and
    ///   before the key's expiry;
    /// - the later rules of [`plan`] that read `now` or the listing's start
    ///   (a walk older than the last rotation, a published key missing or
    ///   gone for good) only apply to a decision that rotates, which a
    ///   `fresh` one does not; an `unknown_time` from a creation in the
    ///   future can only disappear as `now` grows, and there is none;
    /// - [`health::assess`] reads `now` for an expired current key (not
    ///   before its expiry), for a rotation in flight (none) and for an
    ///   abandoned next key still to delete (`cleanup_stuck`: `t` is at
    ///   most its `cleanup_since` + `stuck_after`);
    /// - a check raises `key.expiring` for a `stale` key once per
    ///   `expiring_warnings` threshold crossed: `t` is before the next
    ///   crossing of each stale key.
    pub fn settled_until(
        &self,
        policy: &PolicyConfig,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if self.health != Health::Ok || self.misconfigured.is_some() || self.bootstrap.is_some() {
            return None;
        }
        let mut until = DateTime::<Utc>::MAX_UTC;
        for l in &self.lineages {
            let settled = l.decision.reason == Reason::Fresh
                && !l.decision.rotate
                && l.health == Health::Ok
                && l.conditions.is_empty()
                && l.condition.is_none()
                && l.active.is_none()
                && l.resumable.is_none();
            if !settled {
                return None;
            }
            let cur = l.current.as_ref().map(|c| &c.key)?;
            if let Some(t) = l.decision.rotate_at {
                until = until.min(t);
            }
            if let Some(exp) = cur.expires_at {
                until = until.min(exp);
            }
            if let Some(since) = l.cleanup_since {
                let bound = ChronoDuration::from_std(policy.stuck_after)
                    .ok()
                    .and_then(|d| since.checked_add_signed(d))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                until = until.min(bound);
            }
            for (k, st) in &l.keys {
                let Some(exp) = k.key.expires_at.filter(|_| *st == KeyState::Stale) else {
                    continue;
                };
                for w in &policy.expiring_warnings {
                    if let Some(cross) = ChronoDuration::from_std(*w)
                        .ok()
                        .and_then(|w| exp.checked_sub_signed(w))
                        .filter(|c| *c > now)
                    {
                        until = until.min(cross);
                    }
                }
            }
        }
        (until > now).then_some(until)
    }
}

#[cfg(test)]
thread_local! {
    /// Ledgers read from the store on this thread ([`Ledger::load`]):
    /// tests count the reads a check makes.
    pub static LOADS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// What the store knows of one policy: the planner's evidence of
/// ownership. Loaded with [`Ledger::load`]; empty for a DB that never saw
/// the policy.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    /// Keys the policy's checks recorded (lineage, origin, state), held
    /// compactly: a cached ledger keeps them between checks.
    pub known: KnownKeys,
    /// Keys its rotations created: the only proof that rekey made a key.
    pub owned: Vec<OwnedKey>,
    /// Create attempts that never handed over a key (requested, abandoned,
    /// cleaned): their names are orphans for ever.
    pub orphans: Vec<OrphanAttempt>,
    /// Active rotations, the latest of each lineage, resumable failures.
    pub rotations: Vec<RotationRow>,
    /// Key id → another policy on the same provider account that also
    /// claims that key (a runtime ownership conflict).
    pub claimed_elsewhere: HashMap<String, String>,
    /// Lineages whose `step_failing` condition held at the last status
    /// rebuild (the health rule keeps it through a retry that has not
    /// published yet).
    pub step_failing: HashSet<String>,
    /// Abandoned rotations whose created, never-acknowledged next key is
    /// not deleted yet ([`Store::abandoned_unpublished`], oldest first):
    /// each check in `rotate` mode tries to delete them, and the health
    /// rule's `cleanup_stuck` reports one still there after `stuck_after`.
    pub abandoned: Vec<RotationRow>,
}

impl Ledger {
    /// Whether the policy has work in flight: a rotation not finished, a
    /// create attempt not resolved (`cleaned`), or an abandoned rotation's
    /// key still to delete. Only such a ledger is cached between reads
    /// (`engine::LedgerCache`).
    pub fn in_flight(&self) -> bool {
        self.rotations.iter().any(|r| !r.state.is_terminal())
            || self.orphans.iter().any(|o| o.attempt.state != "cleaned")
            || !self.abandoned.is_empty()
    }
}

/// The other policies of `cfg` whose providers are of the same kind as
/// `policy`'s: the ones that could claim one of its keys.
pub fn rivals<'a>(cfg: &'a crate::config::Config, policy: &'a PolicyConfig) -> Rivals<'a> {
    Rivals { cfg, policy }
}

/// The rivals of one policy ([`rivals`]), asked about by name rather than
/// listed: a ledger is read on every check that plans, and a list of every
/// other policy's name per read was about a tenth of the CPU of a planning
/// round over 1,000 policies (issue 13).
#[derive(Clone, Copy)]
pub struct Rivals<'a> {
    cfg: &'a crate::config::Config,
    policy: &'a PolicyConfig,
}

impl Rivals<'_> {
    fn kind(&self, p: &PolicyConfig) -> Option<&str> {
        self.cfg.providers.get(&p.provider).map(|x| x.kind.as_str())
    }

    /// Whether the policy named `name` is a rival.
    pub fn contains(&self, name: &str) -> bool {
        name != self.policy.name
            && self
                .cfg
                .policy(name)
                .is_some_and(|p| self.kind(p) == self.kind(self.policy))
    }

    /// Whether there is any rival.
    pub fn any(&self) -> bool {
        let kind = self.kind(self.policy);
        self.cfg
            .policies
            .iter()
            .any(|p| p.name != self.policy.name && self.kind(p) == kind)
    }

    /// Of the policy's live keys, those a rival also holds live: key id →
    /// that rival, the first by name ([`Store::claimed_elsewhere`]; no
    /// query when there is no rival).
    pub fn claims(&self, store: &Store) -> Result<HashMap<String, String>, StoreError> {
        if !self.any() {
            return Ok(HashMap::new());
        }
        store.claimed_elsewhere(&self.policy.name, &|other| self.contains(other))
    }
}

impl Ledger {
    /// Read the ledger of `policy` from the store. `rivals` are the other
    /// configured policies whose providers are of the same kind
    /// ([`rivals`]), so keys they also claim are found.
    pub fn load(store: &Store, policy: &str, rivals: Rivals<'_>) -> Result<Ledger, StoreError> {
        #[cfg(test)]
        LOADS.with(|c| c.set(c.get() + 1));
        let known = KnownKeys::from(store.known_keys(policy)?);
        let claimed_elsewhere = rivals.claims(store)?;
        Ok(Ledger {
            owned: store.owned_keys(policy)?,
            orphans: store.orphan_attempts(policy)?,
            rotations: store.policy_rotations(policy)?,
            abandoned: store.abandoned_unpublished(policy)?,
            claimed_elsewhere,
            known,
            step_failing: store
                .held_conditions(policy)?
                .into_iter()
                .filter(|(_, c)| c == health::Condition::StepFailing.as_str())
                .map(|(l, _)| l)
                .collect(),
        })
    }
}

/// How long a lineage's published key must have been missing from every
/// complete listing (the store marks it `gone`) before the planner stops
/// taking its absence for a walk that skipped it.
pub const PUBLISHED_KEY_GONE_AFTER: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Whether the store has had key `id` `gone` (missed by a complete
/// listing) since at least [`PUBLISHED_KEY_GONE_AFTER`] before `now`,
/// counted from the listing that first missed it
/// ([`crate::state::KnownKey::gone_since`]), never from when a listing
/// last showed it: checks that change nothing do not write that, so it can
/// be hours old when a walk first skips the key.
fn gone_for_good(ledger: &Ledger, id: &str, now: DateTime<Utc>) -> bool {
    ledger.known.iter().any(|k| {
        k.key_id() == id
            && k.state() == "gone"
            && k.gone_since().is_some_and(|t| {
                now - t
                    >= ChronoDuration::from_std(PUBLISHED_KEY_GONE_AFTER)
                        .unwrap_or(ChronoDuration::MAX)
            })
    })
}

/// The safe alphabet of lineage names used in sink targets (DESIGN §2):
/// `[A-Za-z0-9._-]`, not starting with `.`, 1 to [`MAX_LINEAGE_LEN`] bytes.
pub fn is_safe_lineage(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LINEAGE_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The longest lineage name allowed in a sink target.
pub const MAX_LINEAGE_LEN: usize = 128;

/// A name escaped for messages: control characters and non-ASCII as
/// Rust escapes, so it can neither forge a line nor drive a terminal.
pub fn escaped(name: &str) -> String {
    name.escape_debug().to_string()
}

/// Place each listed key in a lineage, by the store's evidence only.
///
/// In order: a key a rotation produced (provider id, or attempt name while
/// the id is unknown) joins that rotation's lineage; a key carrying the
/// name of an attempt that never handed over its secret is an orphan; a key
/// the store adopted keeps its recorded lineage; a key whose name parses
/// through `name_template` is `unrecognised` (grouped under the parsed
/// lineage so that lineage reports it); any other key starts a lineage
/// named after itself. Parsing names is never proof of ownership; see
/// `rotation::recovery` for the explicit recovery from names.
pub fn assign_lineages(
    policy: &PolicyConfig,
    listed: Vec<ProviderKey>,
    ledger: &Ledger,
) -> Vec<KeyView> {
    let known: HashMap<&str, KnownRef<'_>> = ledger.known.iter().map(|k| (k.key_id(), k)).collect();
    let owned_by_id: HashMap<&str, &OwnedKey> = ledger
        .owned
        .iter()
        .filter_map(|o| o.key_id.as_deref().map(|id| (id, o)))
        .collect();
    let owned_by_name: HashMap<&str, &OwnedKey> = ledger
        .owned
        .iter()
        .filter(|o| o.key_id.is_none())
        .map(|o| (o.name.as_str(), o))
        .collect();
    let orphan_by_name: HashMap<&str, &OrphanAttempt> = ledger
        .orphans
        .iter()
        .map(|o| (o.attempt.name.as_str(), o))
        .collect();
    listed
        .into_iter()
        .map(|key| {
            let store_state = known.get(key.id.as_str()).map(|k| k.state().to_string());
            if let Some(o) = owned_by_id
                .get(key.id.as_str())
                .or_else(|| owned_by_name.get(key.name.as_str()))
            {
                return KeyView {
                    lineage: o.lineage.clone(),
                    origin: Origin::Created {
                        rotation_id: Some(o.rotation_id.clone()),
                    },
                    store_state,
                    key,
                };
            }
            if let Some(o) = orphan_by_name.get(key.name.as_str()) {
                return KeyView {
                    lineage: o.lineage.clone(),
                    origin: Origin::Orphan {
                        rotation_id: o.rotation_id.clone(),
                    },
                    store_state,
                    key,
                };
            }
            if let Some(k) = known.get(key.id.as_str())
                && k.origin() == "adopted"
            {
                return KeyView {
                    lineage: k.lineage().to_string(),
                    origin: Origin::Adopted,
                    store_state,
                    key,
                };
            }
            if let Some(parsed) = policy.name_template.parse_name(&key.name) {
                return KeyView {
                    lineage: parsed.lineage,
                    origin: Origin::Unrecognised,
                    store_state,
                    key,
                };
            }
            KeyView {
                lineage: key.name.clone(),
                origin: Origin::Adopted,
                store_state,
                key,
            }
        })
        .collect()
}

/// The lead before expiry at which `key` is replaced: the configured lead,
/// or its share of the key's lifetime, never more than a third of that
/// lifetime (so short-lived keys cannot cause rotation loops).
pub fn effective_lead(policy: &PolicyConfig, key: &ProviderKey) -> Option<ChronoDuration> {
    let lead = policy.rotate_before_expiry?;
    let lifetime = match (key.created_at, key.expires_at) {
        (Some(c), Some(e)) if e > c => Some(e - c),
        _ => None,
    };
    let raw = match lead {
        Lead::Absolute(d) => ChronoDuration::from_std(d).ok()?,
        Lead::Share(p) => {
            let l = lifetime?;
            ChronoDuration::milliseconds((l.num_milliseconds() as f64 * p / 100.0) as i64)
        }
    };
    Some(match lifetime {
        Some(l) => raw.min(l / 3),
        None => raw,
    })
}

fn human(d: ChronoDuration) -> String {
    let secs = d.num_seconds().max(0) as u64;
    crate::clock::human(std::time::Duration::from_secs(secs))
}

/// A key created more than this after `now` (minutes) has an unknown age
/// (`unknown_time`): more than clock skew, less than any sane `max_age`.
pub const FUTURE_CREATION_SLACK_MINUTES: i64 = 60;

/// The decision chain for one lineage's current key.
pub fn decide(
    policy: &PolicyConfig,
    current: Option<&ProviderKey>,
    active: Option<&RotationRow>,
    now: DateTime<Utc>,
) -> Decision {
    if let Some(r) = active {
        return Decision {
            reason: Reason::InProgress,
            message: format!("rotation {} is {}", r.id, r.state.as_str()),
            rotate: false,
            rotate_at: None,
        };
    }
    let Some(key) = current else {
        return Decision {
            reason: Reason::NoKeys,
            message: "the lineage has no current key".into(),
            rotate: false,
            rotate_at: None,
        };
    };
    let lead = effective_lead(policy, key);
    if let Some(exp) = key.expires_at {
        if exp <= now {
            return Decision {
                reason: Reason::Expired,
                message: format!(
                    "key {} expired at {} ({} ago)",
                    key.name,
                    exp.to_rfc3339(),
                    human(now - exp)
                ),
                rotate: true,
                rotate_at: Some(exp),
            };
        }
        if let Some(lead) = lead
            && exp - lead <= now
        {
            return Decision {
                reason: Reason::Expiring,
                message: format!(
                    "key {} expires in {} (lead {})",
                    key.name,
                    human(exp - now),
                    human(lead)
                ),
                rotate: true,
                rotate_at: Some(exp - lead),
            };
        }
    }
    // Checked: a creation time near chrono's last year must not panic.
    let age_due = match (policy.max_age, key.created_at) {
        (Some(max), Some(created)) => ChronoDuration::from_std(max)
            .ok()
            .and_then(|m| created.checked_add_signed(m)),
        _ => None,
    };
    if let Some(due) = age_due
        && due <= now
    {
        return Decision {
            reason: Reason::MaxAge,
            message: format!(
                "key {} is {} old (max_age {})",
                key.name,
                human(now - key.created_at.unwrap_or(now)),
                human(
                    ChronoDuration::from_std(policy.max_age.unwrap_or_default())
                        .unwrap_or_default()
                )
            ),
            rotate: true,
            rotate_at: Some(due),
        };
    }
    let expiry_due = match (key.expires_at, lead) {
        (Some(e), Some(l)) => Some(e - l),
        _ => None,
    };
    let rotate_at = match (expiry_due, age_due) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Decision {
        reason: Reason::Fresh,
        message: match rotate_at {
            // The instant, not the time left: a message that changes every
            // hour would make every settled plan expire within the hour
            // (PolicyPlan::settled_until).
            Some(t) => super::compact::fresh_message(&key.name, t),
            None => format!("key {} has no expiry and no max_age applies", key.name),
        },
        rotate: false,
        rotate_at,
    }
}

/// Plan one policy from `keys` (a listing placed by [`assign_lineages`], or
/// the store's last known keys) and the policy's [`Ledger`]; `targets` are
/// the policy's sinks' targets. `listing_started` is when the walk behind
/// `keys` began (`None` for the store's view): a lineage whose latest
/// rotation finished after it is not planned from it.
///
/// Rules beyond the decision chain (DESIGN §2, §3):
/// - a key the store records as `deleted` is never current, whatever a
///   listing says; orphans and unpublished keys are `pending`;
/// - the current key is the latest published rotation's new key when it is
///   listed, else the newest adopted or published key;
/// - a lineage whose latest published key is missing from the listing (a
///   walk can skip a key) is not planned from it, until the store has had
///   it `gone` for [`PUBLISHED_KEY_GONE_AFTER`];
/// - `unrecognised` keys, unsafe lineage names and keys another policy
///   claims set the lineage's `condition`; the last two stop it from
///   changing anything.
pub fn plan(
    policy: &PolicyConfig,
    keys: Vec<KeyView>,
    ledger: &Ledger,
    targets: &[(String, Option<TargetTemplate>)],
    listing_started: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> PolicyPlan {
    let rotations = &ledger.rotations;
    let deleted: HashSet<&str> = ledger
        .known
        .iter()
        .filter(|k| k.state() == "deleted")
        .map(|k| k.key_id())
        .collect();
    let published_ids: HashSet<&str> = ledger
        .owned
        .iter()
        .filter(|o| o.published)
        .filter_map(|o| o.key_id.as_deref())
        .collect();
    let mut by_lineage: BTreeMap<String, Vec<KeyView>> = BTreeMap::new();
    for k in keys {
        // Never current, whatever a listing says: the store deleted it.
        if deleted.contains(k.key.id.as_str()) || k.store_state.as_deref() == Some("deleted") {
            continue;
        }
        by_lineage.entry(k.lineage.clone()).or_default().push(k);
    }
    // A lineage with an active rotation, or an abandoned key still to
    // delete, exists even if its keys vanished.
    for r in rotations.iter().filter(|r| !r.state.is_terminal()) {
        by_lineage.entry(r.lineage.clone()).or_default();
    }
    // An abandoned next key every complete listing has missed (as long as
    // a published key must be) was deleted out of band: it waits for no
    // delete (a policy that observes never deletes it; in rotate mode the
    // check's delete finds it gone and records it).
    let abandoned: Vec<&RotationRow> = ledger
        .abandoned
        .iter()
        .filter(|r| {
            !r.new_key_id
                .as_deref()
                .is_some_and(|id| gone_for_good(ledger, id, now))
        })
        .collect();
    for r in &abandoned {
        by_lineage.entry(r.lineage.clone()).or_default();
    }
    // A lineage that ever published a key is never bootstrapped again: a
    // walk that skipped its key must not create a second first key.
    let has_history = |l: &str| ledger.owned.iter().any(|o| o.lineage == l && o.published);
    let bootstrap = match &policy.bootstrap {
        Some(l) if by_lineage.is_empty() && !has_history(l) => Some(l.clone()),
        _ => None,
    };

    // Sized once: a lineage plan is large, and a policy of 100 lone keys
    // has 100 lineages (growing the vector moved them ~7 times).
    let mut lineages = Vec::with_capacity(by_lineage.len() + usize::from(bootstrap.is_some()));
    for (name, mut ks) in by_lineage {
        let mine: Vec<&RotationRow> = rotations.iter().filter(|r| r.lineage == name).collect();
        let active = mine
            .iter()
            .find(|r| !r.state.is_terminal())
            .map(|r| (*r).clone());
        let last = mine
            .iter()
            .max_by_key(|r| r.started_at)
            .map(|r| (*r).clone());
        let cleanup = abandoned
            .iter()
            .copied()
            .filter(|r| r.lineage == name)
            .min_by_key(|r| health::cleanup_since(r));
        let resumable = match (&active, &last) {
            (None, Some(l))
                if l.state == RotationState::Failed
                    && l.created_at.is_some()
                    && l.published_at.is_none()
                    && l.error_class.as_deref() != Some("abandoned") =>
            {
                Some(l.clone())
            }
            _ => None,
        };
        // Newest first.
        ks.sort_by(|a, b| {
            b.key
                .created_at
                .cmp(&a.key.created_at)
                .then(b.key.name.cmp(&a.key.name))
        });
        let retiring_ids: HashSet<&str> = mine
            .iter()
            .filter(|r| matches!(r.state, RotationState::Retiring | RotationState::Published))
            .filter_map(|r| r.old_key_id.as_deref())
            .collect();
        // The key the sinks hold: the latest published rotation's new key
        // (not one whose rotation ended because that key vanished).
        let latest_published = ledger
            .owned
            .iter()
            .filter(|o| o.lineage == name && o.published)
            .filter_map(|o| {
                let r = mine.iter().find(|r| {
                    r.id == o.rotation_id
                        && r.error_class.as_deref() != Some(health::NEXT_KEY_MISSING)
                })?;
                Some((r.published_at, o.key_id.as_deref()?))
            })
            .max()
            .map(|(_, id)| id);
        let safe = is_safe_lineage(&name);
        let mut condition: Option<&'static str> = None;
        let mut conflict: Option<String> = None;
        let preferred = latest_published.filter(|id| ks.iter().any(|k| k.key.id == *id));
        let mut current: Option<KeyView> = None;
        let mut states = Vec::new();
        for k in &ks {
            if let Some(other) = ledger.claimed_elsewhere.get(&k.key.id) {
                conflict.get_or_insert_with(|| {
                    format!(
                        "key {} ({}) is claimed by policies {} and {}; neither changes this lineage until the config gives it one owner",
                        escaped(&k.key.id),
                        escaped(&k.key.name),
                        policy.name,
                        other
                    )
                });
            }
            let eligible = match &k.origin {
                Origin::Adopted => true,
                Origin::Created { .. } => published_ids.contains(k.key.id.as_str()),
                Origin::Orphan { .. } | Origin::Unrecognised => false,
            };
            let st = if !safe {
                KeyState::UnsafeName
            } else if k.origin == Origin::Unrecognised {
                condition.get_or_insert("unrecognised_key");
                KeyState::Unrecognised
            } else if k.store_state.as_deref() == Some("retired") {
                KeyState::Retired
            } else if k.store_state.as_deref() == Some("retiring")
                || retiring_ids.contains(k.key.id.as_str())
            {
                KeyState::Retiring
            } else if !eligible {
                KeyState::Pending
            } else if current.is_none() && preferred.is_none_or(|p| p == k.key.id) {
                current = Some(k.clone());
                KeyState::Current
            } else {
                KeyState::Stale
            };
            states.push((k.clone(), st));
        }
        let mut decision = decide(
            policy,
            current.as_ref().map(|c| &c.key),
            active.as_ref(),
            now,
        );
        if decision.reason == Reason::NoKeys
            && Some(&name) == policy.bootstrap.as_ref()
            && active.is_none()
            && !has_history(&name)
        {
            decision = Decision {
                reason: Reason::Bootstrap,
                message: format!("lineage {name} has no live key; creating its first"),
                rotate: true,
                rotate_at: None,
            };
        }
        // A walk that began before the latest rotation finished may show
        // its deleted old key and miss its new one.
        if active.is_none()
            && let (Some(started), Some(finished)) = (
                listing_started,
                last.as_ref()
                    .filter(|l| l.state == RotationState::Completed)
                    .and_then(|l| l.finished_at),
            )
            && finished >= started
            && decision.rotate
        {
            decision = Decision {
                reason: Reason::InProgress,
                message: format!(
                    "rotation {} finished after this listing began; the next listing decides",
                    last.as_ref().map(|l| l.id.as_str()).unwrap_or("")
                ),
                rotate: false,
                rotate_at: None,
            };
        }
        // A walk that skipped the key the sinks hold decides nothing —
        // unless every complete listing has missed it for
        // [`PUBLISHED_KEY_GONE_AFTER`]: then it is gone (deleted out of
        // band after its rotation was abandoned in grace), and waiting for
        // it would hold the lineage for ever.
        if active.is_none()
            && let Some(id) = latest_published
            && preferred.is_none()
            && decision.rotate
            && !deleted.contains(id)
            && !gone_for_good(ledger, id, now)
        {
            decision = Decision {
                reason: Reason::InProgress,
                message: format!(
                    "the lineage's published key {} is missing from this listing; the next listing decides",
                    escaped(id)
                ),
                rotate: false,
                rotate_at: None,
            };
        }
        if !safe {
            condition = Some("unsafe_name");
            decision = Decision {
                reason: Reason::Misconfigured,
                message: format!(
                    "lineage name \"{}\" is outside the safe alphabet [A-Za-z0-9._-] (not starting with '.', at most {MAX_LINEAGE_LEN} bytes); its keys are never rotated or published",
                    escaped(&name)
                ),
                rotate: false,
                rotate_at: None,
            };
        } else if let Some(m) = conflict {
            condition = Some("conflict");
            decision = Decision {
                reason: Reason::Misconfigured,
                message: m,
                rotate: false,
                rotate_at: None,
            };
        } else if condition.is_some() {
            // Keys named like rekey's own in a lineage the store has no
            // history of: the DB was probably lost or restored. Rotating now
            // would be a guess; recovery is explicit.
            let known_lineage = ledger.owned.iter().any(|o| o.lineage == name);
            if !known_lineage && active.is_none() && decision.rotate {
                decision = Decision {
                    reason: decision.reason,
                    message: format!(
                        "{}; but keys named like rekey's own that the state DB does not know are listed in this lineage (state DB lost or restored?): nothing is rotated until `rekey recover -c CONFIG` proves which key is current, or they are removed",
                        decision.message
                    ),
                    rotate: false,
                    rotate_at: decision.rotate_at,
                };
            }
        }
        // The health rule (rotation::health) decides health from what
        // the planner found and what the rotations say.
        let mut found = Vec::new();
        match condition {
            Some("unsafe_name") => found.push((Condition::UnsafeName, decision.message.clone())),
            Some("conflict") => found.push((Condition::Conflict, decision.message.clone())),
            Some("unrecognised_key") => found.push((
                Condition::UnrecognisedKey,
                format!(
                    "lineage {} has a key that looks generated but that no rotation in the store produced; it is never current and never deleted",
                    escaped(&name)
                ),
            )),
            _ => {}
        }
        // A key whose times cannot be read is never rotated on a guess.
        for (k, _) in &states {
            // Created in the future (beyond clock skew): its age is not
            // known, and reading it would make the key look forever fresh.
            if let Some(c) = k.key.created_at
                && c > now + ChronoDuration::minutes(FUTURE_CREATION_SLACK_MINUTES)
            {
                found.push((
                    Condition::UnknownTime,
                    format!(
                        "key {} says it was created in the future ({}); its age is unknown and its lineage is not rotated on a guess",
                        k.key.name.escape_debug(),
                        c.to_rfc3339()
                    ),
                ));
                decision.rotate = false;
            }
            if let Some(raw) = k.key.meta.get(crate::provider::META_UNKNOWN_TIME) {
                found.push((
                    Condition::UnknownTime,
                    format!(
                        "key {} has a time rekey cannot read ({}); its lineage is not rotated until it can",
                        k.key.name.escape_debug(),
                        raw.to_string().escape_debug()
                    ),
                ));
                decision.rotate = false;
            }
        }
        let assessment = health::assess(
            &LineageFacts {
                due: decision.rotate
                    || matches!(
                        decision.reason,
                        Reason::Expired | Reason::Expiring | Reason::MaxAge
                    ),
                no_keys: decision.reason == Reason::NoKeys,
                current_expires_at: current.as_ref().and_then(|c| c.key.expires_at),
                active: active.as_ref(),
                last: last.as_ref(),
                max_attempts: policy.max_attempts,
                failing_after: policy.failing_after_failures,
                step_failing_before: ledger.step_failing.contains(&name),
                stuck_after: Some(policy.stuck_after),
                cleanup,
                found,
            },
            now,
        );
        let health = assessment.health;
        let conditions = assessment.conditions;
        lineages.push(LineagePlan {
            name,
            current,
            keys: states,
            decision,
            health,
            conditions,
            condition,
            active,
            last,
            resumable,
            cleanup_since: cleanup.map(health::cleanup_since),
        });
    }
    if let Some(b) = &bootstrap {
        lineages.push(LineagePlan {
            name: b.clone(),
            current: None,
            keys: Vec::new(),
            decision: Decision {
                reason: Reason::Bootstrap,
                message: format!(
                    "no key matches {:?}; creating the first key of lineage {b}",
                    policy.match_glob
                ),
                rotate: true,
                rotate_at: None,
            },
            health: Health::Due,
            conditions: Vec::new(),
            condition: None,
            active: None,
            last: None,
            resumable: None,
            cleanup_since: None,
        });
    }

    let mut misconfigured = None;
    if lineages.len() > 1 {
        for (sink, target) in targets {
            if let Some(t) = target
                && !t.has_lineage()
            {
                misconfigured = Some(format!(
                    "sink {sink} writes to the fixed target {:?}, but policy {} has {} lineages; put {{lineage}} in the target",
                    t.as_str(),
                    policy.name,
                    lineages.len()
                ));
                break;
            }
        }
    }
    if misconfigured.is_some() || policy.mode == Mode::Observe {
        for l in &mut lineages {
            l.decision.rotate = false;
        }
    }
    let health = if misconfigured.is_some() {
        Health::Misconfigured
    } else if lineages.is_empty() {
        Health::NoKeys
    } else {
        lineages
            .iter()
            .map(|l| l.health)
            .max()
            .unwrap_or(Health::Ok)
    };
    PolicyPlan {
        policy: policy.name.clone(),
        health,
        lineages,
        misconfigured,
        bootstrap,
    }
}

#[cfg(test)]
mod tests;
