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

use crate::config::{Lead, Mode, PolicyConfig, TargetTemplate};
use crate::provider::ProviderKey;
use crate::state::{AttemptRow, KnownKey, RotationRow, RotationState};
use crate::status::{Health, KeyState};

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
    /// Made by rekey, by this rotation.
    Created {
        rotation_id: Option<String>,
    },
    Adopted,
}

/// A key as the planner sees it: listed by the provider, placed in a lineage.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyView {
    pub key: ProviderKey,
    pub lineage: String,
    pub origin: Origin,
    /// The store says it is retiring (old key in grace) or retired.
    pub store_state: Option<String>,
}

#[derive(Debug, Clone)]
pub struct LineagePlan {
    pub name: String,
    pub current: Option<KeyView>,
    pub keys: Vec<(KeyView, KeyState)>,
    pub decision: Decision,
    pub health: Health,
    pub active: Option<RotationRow>,
    pub last: Option<RotationRow>,
    /// A failed rotation that already created (and still holds, sealed) a
    /// new key: the next check resumes it instead of creating another.
    pub resumable: Option<RotationRow>,
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
}

/// Place each listed key in a lineage.
///
/// `attempts` are the create attempts of the policy's rotations: a key whose
/// name is an attempt's that never completed is a crashed attempt's orphan
/// (its secret was never captured) and must never become current.
pub fn assign_lineages(
    policy: &PolicyConfig,
    listed: Vec<ProviderKey>,
    known: &[KnownKey],
    rotations: &[RotationRow],
) -> Vec<KeyView> {
    let by_id: HashMap<&str, &KnownKey> = known.iter().map(|k| (k.key_id.as_str(), k)).collect();
    let by_new_name: HashMap<&str, &RotationRow> = rotations
        .iter()
        .filter_map(|r| r.new_key_name.as_deref().map(|n| (n, r)))
        .collect();
    listed
        .into_iter()
        .map(|key| {
            if let Some(k) = by_id.get(key.id.as_str()) {
                let origin = if k.origin == "created" {
                    Origin::Created {
                        rotation_id: k.rotation_id.clone(),
                    }
                } else {
                    Origin::Adopted
                };
                return KeyView {
                    lineage: k.lineage.clone(),
                    origin,
                    store_state: Some(k.state.clone()),
                    key,
                };
            }
            if let Some(r) = by_new_name.get(key.name.as_str()) {
                return KeyView {
                    lineage: r.lineage.clone(),
                    origin: Origin::Created {
                        rotation_id: Some(r.id.clone()),
                    },
                    store_state: None,
                    key,
                };
            }
            if let Some(parsed) = policy.name_template.parse_name(&key.name) {
                return KeyView {
                    lineage: parsed.lineage,
                    origin: Origin::Created {
                        rotation_id: Some(parsed.rotation_id),
                    },
                    store_state: None,
                    key,
                };
            }
            KeyView {
                lineage: key.name.clone(),
                origin: Origin::Adopted,
                store_state: None,
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
    let age_due = match (policy.max_age, key.created_at) {
        (Some(max), Some(created)) => ChronoDuration::from_std(max).ok().map(|m| created + m),
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
            Some(t) => format!("key {} is fresh; due in {}", key.name, human(t - now)),
            None => format!("key {} has no expiry and no max_age applies", key.name),
        },
        rotate: false,
        rotate_at,
    }
}

/// Plan one policy. `rotations` are the policy's active rotations plus at
/// least the latest rotation of each lineage; `attempts` maps rotation id to
/// its create attempts; `targets` are the policy's sinks' fixed targets.
pub fn plan(
    policy: &PolicyConfig,
    keys: Vec<KeyView>,
    rotations: &[RotationRow],
    attempts: &HashMap<String, Vec<AttemptRow>>,
    targets: &[(String, Option<TargetTemplate>)],
    now: DateTime<Utc>,
) -> PolicyPlan {
    // Names of create attempts that never delivered a key to us.
    let orphan_names: HashSet<&str> = attempts
        .values()
        .flatten()
        .filter(|a| a.state != "created")
        .map(|a| a.name.as_str())
        .collect();
    let mut by_lineage: BTreeMap<String, Vec<KeyView>> = BTreeMap::new();
    for k in keys {
        by_lineage.entry(k.lineage.clone()).or_default().push(k);
    }
    // A lineage with an active rotation exists even if its keys vanished.
    for r in rotations.iter().filter(|r| !r.state.is_terminal()) {
        by_lineage.entry(r.lineage.clone()).or_default();
    }
    let bootstrap = match &policy.bootstrap {
        Some(l) if by_lineage.is_empty() => Some(l.clone()),
        _ => None,
    };

    let mut lineages = Vec::new();
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
        let resumable = match (&active, &last) {
            (None, Some(l))
                if l.state == RotationState::Failed
                    && l.created_at.is_some()
                    && l.published_at.is_none() =>
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
        let pending_ids: HashSet<&str> = mine
            .iter()
            .filter(|r| {
                matches!(r.state, RotationState::Planned | RotationState::Created)
                    || (r.state == RotationState::Failed && r.published_at.is_none())
            })
            .filter_map(|r| r.new_key_id.as_deref())
            .collect();
        let pending_names: HashSet<&str> = mine
            .iter()
            .filter(|r| {
                matches!(r.state, RotationState::Planned | RotationState::Created)
                    || (r.state == RotationState::Failed && r.published_at.is_none())
            })
            .filter_map(|r| r.new_key_name.as_deref())
            .collect();
        let mut current: Option<KeyView> = None;
        let mut states = Vec::new();
        for k in ks {
            let st = if k.store_state.as_deref() == Some("retired") {
                KeyState::Retired
            } else if k.store_state.as_deref() == Some("retiring")
                || retiring_ids.contains(k.key.id.as_str())
            {
                KeyState::Retiring
            } else if pending_ids.contains(k.key.id.as_str())
                || pending_names.contains(k.key.name.as_str())
                || orphan_names.contains(k.key.name.as_str())
            {
                KeyState::Pending
            } else if current.is_none() {
                current = Some(k.clone());
                KeyState::Current
            } else {
                KeyState::Stale
            };
            states.push((k, st));
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
        {
            decision = Decision {
                reason: Reason::Bootstrap,
                message: format!("lineage {name} has no live key; creating its first"),
                rotate: true,
                rotate_at: None,
            };
        }
        let failed_last = last
            .as_ref()
            .is_some_and(|l| l.state == RotationState::Failed);
        let health = match decision.reason {
            Reason::InProgress => Health::Rotating,
            Reason::NoKeys => Health::NoKeys,
            Reason::Expired if policy.mode == Mode::Observe || failed_last => Health::Expired,
            Reason::Expired | Reason::Expiring | Reason::MaxAge | Reason::Bootstrap
                if failed_last =>
            {
                Health::Failing
            }
            Reason::Expired | Reason::Expiring | Reason::MaxAge | Reason::Bootstrap => Health::Due,
            _ => Health::Ok,
        };
        lineages.push(LineagePlan {
            name,
            current,
            keys: states,
            decision,
            health,
            active,
            last,
            resumable,
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
            active: None,
            last: None,
            resumable: None,
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
