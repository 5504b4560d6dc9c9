//! Crash recovery, and the explicit recovery of lineages from key names.
//!
//! # Resuming after a crash
//!
//! Every transition is committed before the next side effect, so resuming is
//! just driving each unfinished rotation from its last committed state:
//!
//! - `planned` with an attempt left `requested`/`abandoned`: the create's
//!   outcome is unknown. The engine lists the provider for the attempt's
//!   unique name; a key found there was created but its secret was never
//!   captured, so it is deleted. A name not (yet) listed stays `abandoned`
//!   and watched for: every later check deletes a key of that name when it
//!   appears, and only several complete listings that *started after* the
//!   attempt, across `state::schema::ORPHAN_WINDOW`, mark it `cleaned`
//!   (whose name stays recognised for ever). The next attempt (next name)
//!   is created only after such a listing.
//! - `created`: the secret is sealed in the DB; publishing resumes with the
//!   sinks not yet acknowledged (acknowledged ones are not redone).
//! - `retiring`: the grace deadline is in the DB; the old key is deleted
//!   when it passes (after read-back), however long the daemon was down.
//!
//! rekey deletes only old keys of published rotations and keys of its own
//! abandoned attempts, never a key it does not recognise.
//!
//! # Recovering lineages from names (`rekey recover`)
//!
//! Ownership comes from the store (DESIGN §2): with the state DB lost, or
//! restored from a backup older than the last rotation, keys rekey created
//! are listed as `unrecognised` and left alone, and the daemon says to run
//! `rekey recover -c FILE [--policy P] [--lineage L]` (with the daemon
//! stopped: it takes the state DB's lock). Recovery never guesses:
//!
//! 1. it lists each policy's keys and groups the unrecognised ones under the
//!    lineage their name parses to through `name_template`;
//! 2. it reads back every sink of the policy that can say which key it
//!    holds (file `env`/`json`: `REKEY_KEY_ID`/`key_id`; Vault:
//!    `custom_metadata.key_id`); a listed key of that lineage that every
//!    such sink names, with no sink naming another, is *proven*;
//! 3. a proven key is recorded as the lineage's current key, through a
//!    rotation with trigger `recovery` whose sink acknowledgements carry the
//!    read-back fingerprints. When every sink of the policy proved it and
//!    the lineage has exactly one other live key older than it, that key is
//!    that rotation's old key and is deleted after the grace period (with
//!    the usual listing and read-back checks); otherwise nothing is deleted.
//! 4. a lineage no sink proves keeps every key, is reported, and changes
//!    nothing (exit 1).

use std::sync::Arc;

use super::engine::Runtime;
use super::policy::{self, Ledger, Origin};
use crate::clock::Clock;
use crate::provider::listing::Listing;
use crate::sink::HeldKey;
use crate::state::{RecoveredKey, RotationRow, Store, StoreError};

/// Unfinished rotations, logged so an operator sees what a restart resumes.
pub fn unfinished(store: &Store) -> Result<Vec<RotationRow>, StoreError> {
    let rows = store.active_rotations()?;
    for r in &rows {
        let open_attempt = store
            .attempts(&r.id)?
            .into_iter()
            .find(|a| a.state == "requested" || a.state == "abandoned");
        match open_attempt {
            Some(a) => {
                tracing::warn!(policy = %r.policy, lineage = %policy::escaped(&r.lineage), rotation = %r.id, attempt = a.attempt, name = %policy::escaped(&a.name), "resuming rotation: create attempt outcome unknown; will list the provider, delete any key of that name, and create again")
            }
            None => {
                tracing::info!(policy = %r.policy, lineage = %policy::escaped(&r.lineage), rotation = %r.id, state = r.state.as_str(), "resuming rotation from its last committed state")
            }
        }
    }
    Ok(rows)
}

/// What recovery did for one lineage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryOutcome {
    /// A sink proved `key` current; recorded as rotation `rotation`, with
    /// `old` to be deleted after the grace period when every sink proved it.
    Recovered {
        rotation: String,
        key: String,
        old: Option<String>,
    },
    /// No readable sink proves which key is current: nothing changed.
    Unproven { why: String },
    /// Nothing to recover (already known, unsafe name, a rotation running).
    Skipped { why: String },
}

/// One lineage's recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineageRecovery {
    pub policy: String,
    pub lineage: String,
    pub outcome: RecoveryOutcome,
}

/// Why recovery of a whole policy could not run.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("policy {policy}: {message}")]
    Policy { policy: String, message: String },
}

/// Recover lineages from key names, proven by sink read-back (module doc).
/// `only_policy`/`only_lineage` narrow it (a known DB after restoring a
/// backup: the lineages whose newest keys are unknown).
///
/// Errors: the store's, or a policy's provider/sink failing (other policies
/// are still tried; their outcomes are returned with the first error).
pub async fn recover_from_names(
    rt: &Runtime,
    store: &Store,
    clock: &Arc<dyn Clock>,
    only_policy: Option<&str>,
    only_lineage: Option<&str>,
) -> Result<Vec<LineageRecovery>, RecoveryError> {
    let mut out = Vec::new();
    for p in &rt.config.policies {
        if only_policy.is_some_and(|o| o != p.name) {
            continue;
        }
        let provider = rt
            .providers
            .get(&p.provider)
            .ok_or_else(|| RecoveryError::Policy {
                policy: p.name.clone(),
                message: format!("provider {} is not configured", p.provider),
            })?;
        let listing = Listing::walk(provider.as_ref(), clock.as_ref(), &|n: &str| p.matches(n))
            .await
            .map_err(|e| RecoveryError::Policy {
                policy: p.name.clone(),
                message: format!("cannot list keys: {e}"),
            })?;
        let ledger = Ledger::load(store, &p.name, policy::rivals(&rt.config, p))?;
        let views = policy::assign_lineages(p, listing.to_keys(), &ledger);
        let mut lineages: Vec<String> = views
            .iter()
            .filter(|v| v.origin == Origin::Unrecognised)
            .map(|v| v.lineage.clone())
            .collect();
        if let Some(l) = only_lineage {
            lineages.retain(|x| x == l);
            if lineages.is_empty() {
                out.push(LineageRecovery {
                    policy: p.name.clone(),
                    lineage: l.to_string(),
                    outcome: RecoveryOutcome::Skipped {
                        why: "no unrecognised key of this lineage is listed".into(),
                    },
                });
            }
        }
        lineages.sort();
        lineages.dedup();
        for lineage in lineages {
            let outcome = recover_lineage(rt, store, clock, p, &lineage, &views).await;
            out.push(LineageRecovery {
                policy: p.name.clone(),
                lineage,
                outcome: outcome?,
            });
        }
    }
    Ok(out)
}

async fn recover_lineage(
    rt: &Runtime,
    store: &Store,
    clock: &Arc<dyn Clock>,
    p: &crate::config::PolicyConfig,
    lineage: &str,
    views: &[policy::KeyView],
) -> Result<RecoveryOutcome, RecoveryError> {
    if !policy::is_safe_lineage(lineage) {
        return Ok(RecoveryOutcome::Skipped {
            why: format!(
                "lineage name \"{}\" is outside the safe alphabet",
                policy::escaped(lineage)
            ),
        });
    }
    let mine: Vec<&policy::KeyView> = views
        .iter()
        .filter(|v| v.lineage == lineage && v.store_state.as_deref() != Some("deleted"))
        .collect();
    // What every sink says it holds.
    let mut held: Vec<(String, Option<HeldKey>)> = Vec::new();
    for s in &p.sinks {
        let Some(sink) = rt.sinks.get(s) else {
            continue;
        };
        let h = sink
            .read_back_key(&p.name, lineage)
            .await
            .map_err(|e| RecoveryError::Policy {
                policy: p.name.clone(),
                message: e.to_string(),
            })?;
        held.push((s.clone(), h));
    }
    let names_key = |h: &HeldKey, k: &policy::KeyView| match &h.key_id {
        Some(id) => *id == k.key.id,
        None => h.key_name.as_deref() == Some(k.key.name.as_str()),
    };
    let proving: Vec<&(String, Option<HeldKey>)> =
        held.iter().filter(|(_, h)| h.is_some()).collect();
    if proving.is_empty() {
        return Ok(RecoveryOutcome::Unproven {
            why:
                "no readable sink (file env/json, Vault) says which key it holds; every key is kept"
                    .into(),
        });
    }
    let candidates: Vec<&&policy::KeyView> = mine
        .iter()
        .filter(|k| {
            proving
                .iter()
                .all(|(_, h)| h.as_ref().is_some_and(|h| names_key(h, k)))
        })
        .collect();
    let [key] = candidates.as_slice() else {
        return Ok(RecoveryOutcome::Unproven {
            why: if candidates.is_empty() {
                "the key the sinks hold is not listed, or the sinks disagree; every key is kept"
                    .into()
            } else {
                "several listed keys match what the sinks hold; every key is kept".into()
            },
        });
    };
    if key.origin != Origin::Unrecognised {
        return Ok(RecoveryOutcome::Skipped {
            why: format!(
                "the key the sinks hold ({}) is already known to the store",
                policy::escaped(&key.key.id)
            ),
        });
    }
    let acks: Vec<(String, String)> = proving
        .iter()
        .map(|(s, h)| {
            (
                s.clone(),
                h.as_ref()
                    .map(|h| h.fingerprint.clone())
                    .unwrap_or_default(),
            )
        })
        .collect();
    // The old key is deleted only when every sink proved the new one and the
    // lineage has exactly one other live key, older than it.
    let every_sink_proves = held.len() == p.sinks.len() && proving.len() == held.len();
    let older: Vec<&&policy::KeyView> = mine
        .iter()
        .filter(|k| k.key.id != key.key.id)
        .filter(|k| !matches!(k.origin, Origin::Orphan { .. }))
        .filter(|k| match (k.key.created_at, key.key.created_at) {
            (Some(a), Some(b)) => a < b,
            _ => false,
        })
        .collect();
    let others = mine.iter().filter(|k| k.key.id != key.key.id).count();
    let old = match older.as_slice() {
        [o] if every_sink_proves && others == 1 => Some(RecoveredKey {
            id: o.key.id.clone(),
            name: o.key.name.clone(),
            created_at: o.key.created_at,
            expires_at: o.key.expires_at,
        }),
        _ => None,
    };
    let new = RecoveredKey {
        id: key.key.id.clone(),
        name: key.key.name.clone(),
        created_at: key.key.created_at,
        expires_at: key.key.expires_at,
    };
    match store.record_recovered(
        &p.name,
        lineage,
        &p.provider,
        &new,
        old.as_ref(),
        &acks,
        p.grace_period,
        clock.now(),
    )? {
        Some(rotation) => {
            tracing::warn!(policy = %p.name, lineage = %policy::escaped(lineage), rotation = %rotation, key = %policy::escaped(&new.id), old_key = old.as_ref().map(|o| policy::escaped(&o.id)).unwrap_or_default(), "recovered the lineage's current key from sink read-back");
            Ok(RecoveryOutcome::Recovered {
                rotation,
                key: new.id,
                old: old.map(|o| o.id),
            })
        }
        None => Ok(RecoveryOutcome::Skipped {
            why: "a rotation of this lineage is running; let it finish".into(),
        }),
    }
}
