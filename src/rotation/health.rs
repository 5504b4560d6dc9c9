//! Health: the one rule that turns what the planner and the engine know
//! about a lineage into `health`, a `reason`, the stuck *conditions* an
//! operator alerts on, and the events sent once per condition.
//!
//! This is a domain concept (DESIGN §4), so it lives beside the planner and
//! the engine; `src/status/` only serves and renders what the engine
//! publishes from it.
//!
//! # The rule
//!
//! For each lineage, the first of these that holds decides its health and
//! `reason`; every one that holds is reported as a condition:
//!
//! | # | condition          | holds when                                                            | health    |
//! |---|--------------------|-----------------------------------------------------------------------|-----------|
//! | 1 | `unknown_time`     | a key of the lineage carries a time rekey cannot parse (or created in the future) | `failing` |
//! | 2 | `unsafe_name`, `unrecognised_key`, `conflict` | reported by the planner (ownership rules)  | `failing` (`conflict`: `misconfigured`) |
//! | 3 | `key_expired`      | the key consumers use (the current key) has passed its expiry         | `expired` |
//! | 4 | `retire_failing`   | the old key's delete (or its checks) failed `failing_after_failures` times | `failing` |
//! | 5 | `step_failing`     | a step of the active rotation failed `failing_after_failures` times, or the latest rotation failed and the lineage is still due; once raised it holds until a rotation of the lineage publishes (a retry does not clear it) | `failing` |
//! | 6 | `next_key_missing` | the latest rotation ended because its next key vanished during grace | `failing` |
//! | 7 | `rotation_stuck`   | the active rotation is older than its grace period + `stuck_after`    | `failing` |
//! | 8 | `cleanup_stuck`    | a rotation abandoned more than `stuck_after` ago still holds a created, never-acknowledged next key that is not deleted (each check in `rotate` mode tries to delete it; the provider keeps refusing or failing), nor gone from the listings for 15 min | `failing` |
//!
//! `failing_after_failures` (default [`FAILING_AFTER`], 3) and
//! `stuck_after` (default [`STUCK_AFTER`], 1 h) are per-policy settings
//! (DESIGN §2, §4).
//!
//! Otherwise: `rotating` while a rotation is active, `no_keys`, `due`, or
//! `ok`. A policy's health is the worst of its lineages (`misconfigured`
//! above all, then `expired`, `failing`, …); `rekey_policy_healthy` is 0
//! unless that is `ok` or `rotating`. Each condition also sets
//! `rekey_condition{policy,condition}` to 1 while it holds, and sends one
//! event when it starts to hold (see [`Condition::event`]), not one per
//! retry; the event is sent again only after the condition cleared.

use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::{Deserialize, Serialize};

use crate::state::{RotationRow, RotationState};

/// Failures of one step before its lineage reports `failing`, unless the
/// policy sets `failing_after_failures` (bounded by the policy's
/// `max_attempts`, so a rotation that gives up earlier is failing from
/// then on).
pub const FAILING_AFTER: u32 = 3;

/// How much longer than its grace period a rotation may stay unfinished
/// before it is `rotation_stuck`, unless the policy sets `stuck_after`.
pub const STUCK_AFTER: Duration = Duration::from_secs(3600);

/// `error_class` of a rotation that ended because its next key vanished.
pub const NEXT_KEY_MISSING: &str = "next_key_missing";

/// Health of a lineage or policy; a policy takes the worst of its lineages
/// (this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Ok,
    Rotating,
    Due,
    NoKeys,
    Failing,
    Expired,
    Misconfigured,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Rotating => "rotating",
            Health::Due => "due",
            Health::NoKeys => "no_keys",
            Health::Failing => "failing",
            Health::Expired => "expired",
            Health::Misconfigured => "misconfigured",
        }
    }

    /// `ok` and `rotating` are healthy (exit 0 in `rekey status`,
    /// `rekey_policy_healthy 1`).
    pub fn is_healthy(self) -> bool {
        matches!(self, Health::Ok | Health::Rotating)
    }
}

/// A stuck condition (DESIGN §4 `rekey_condition{condition}`), also the
/// lineage's `reason` when it decides its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    UnknownTime,
    UnsafeName,
    UnrecognisedKey,
    Conflict,
    KeyExpired,
    RetireFailing,
    StepFailing,
    NextKeyMissing,
    RotationStuck,
    CleanupStuck,
}

impl Condition {
    /// Every condition, in rule order (the metric's label values).
    pub const ALL: [Condition; 10] = [
        Condition::UnknownTime,
        Condition::UnsafeName,
        Condition::UnrecognisedKey,
        Condition::Conflict,
        Condition::KeyExpired,
        Condition::RetireFailing,
        Condition::StepFailing,
        Condition::NextKeyMissing,
        Condition::RotationStuck,
        Condition::CleanupStuck,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Condition::UnknownTime => "unknown_time",
            Condition::UnsafeName => "unsafe_name",
            Condition::UnrecognisedKey => "unrecognised_key",
            Condition::Conflict => "conflict",
            Condition::KeyExpired => "key_expired",
            Condition::RetireFailing => "retire_failing",
            Condition::StepFailing => "step_failing",
            Condition::NextKeyMissing => "next_key_missing",
            Condition::RotationStuck => "rotation_stuck",
            Condition::CleanupStuck => "cleanup_stuck",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Condition::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The health this condition gives its lineage.
    pub fn health(self) -> Health {
        match self {
            Condition::KeyExpired => Health::Expired,
            // Two owners for one key: the configuration must change.
            Condition::Conflict => Health::Misconfigured,
            _ => Health::Failing,
        }
    }

    /// The event (DESIGN §5) sent once when the condition starts to hold;
    /// `None` for `unrecognised_key`, whose `key.unrecognised` the engine
    /// sends once per key instead (each key is its own finding).
    pub fn event(self) -> Option<&'static str> {
        match self {
            Condition::KeyExpired => Some("key.expired"),
            Condition::RetireFailing => Some("retire.failing"),
            Condition::NextKeyMissing => Some("key.missing"),
            Condition::UnrecognisedKey => None,
            Condition::UnsafeName => Some("key.unrecognised"),
            Condition::StepFailing
            | Condition::RotationStuck
            | Condition::CleanupStuck
            | Condition::Conflict
            | Condition::UnknownTime => Some("rotation.stuck"),
        }
    }
}

/// What the rule needs to know about one lineage.
#[derive(Debug, Clone, Default)]
pub struct LineageFacts<'a> {
    /// The planner wants this lineage rotated (expired, expiring, max_age,
    /// bootstrap), whether or not the mode lets it.
    pub due: bool,
    /// The lineage has no current key.
    pub no_keys: bool,
    /// The current key's expiry.
    pub current_expires_at: Option<DateTime<Utc>>,
    /// The lineage's unfinished rotation.
    pub active: Option<&'a RotationRow>,
    /// The lineage's latest rotation (may be `active`).
    pub last: Option<&'a RotationRow>,
    /// The policy's `max_attempts`.
    pub max_attempts: u32,
    /// The policy's `failing_after_failures` (0 is taken as
    /// [`FAILING_AFTER`]).
    pub failing_after: u32,
    /// The policy's `stuck_after` (`None`: [`STUCK_AFTER`]).
    pub stuck_after: Option<Duration>,
    /// The lineage's longest-pending abandoned rotation whose created,
    /// never-acknowledged next key is not deleted yet
    /// ([`crate::state::Store::abandoned_unpublished`]) nor gone from the
    /// listings for [`crate::rotation::policy::PUBLISHED_KEY_GONE_AFTER`]
    /// (deleted out of band).
    pub cleanup: Option<&'a RotationRow>,
    /// `step_failing` held for this lineage at the last rebuild.
    pub step_failing_before: bool,
    /// Conditions the planner found (`unknown_time`, `unsafe_name`,
    /// `unrecognised_key`, `conflict`), with a message each.
    pub found: Vec<(Condition, String)>,
}

/// The rule's verdict for one lineage.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub health: Health,
    /// Every condition that holds, the deciding one first, each with a
    /// sentence saying why.
    pub conditions: Vec<(Condition, String)>,
}

impl Assessment {
    /// The deciding condition, if any.
    pub fn reason(&self) -> Option<Condition> {
        self.conditions.first().map(|c| c.0)
    }
}

/// Failures of one step after which a lineage is `failing`
/// (`retire_failing`, `step_failing`): the policy's
/// `failing_after_failures` (0: [`FAILING_AFTER`]), at most its
/// `max_attempts`.
pub fn failing_after(failing_after_failures: u32, max_attempts: u32) -> u32 {
    match failing_after_failures {
        0 => FAILING_AFTER,
        n => n,
    }
    .min(max_attempts.max(1))
}

/// When an abandoned rotation's next key started waiting for its delete:
/// when the rotation ended (`finished_at`; its start for a row that has
/// none).
pub fn cleanup_since(r: &RotationRow) -> DateTime<Utc> {
    r.finished_at.unwrap_or(r.started_at)
}

/// The rule (module docs), for one lineage at `now`.
pub fn assess(f: &LineageFacts<'_>, now: DateTime<Utc>) -> Assessment {
    let mut conditions: Vec<(Condition, String)> = Vec::new();
    let failing_after = failing_after(f.failing_after, f.max_attempts);
    let stuck_after = f.stuck_after.unwrap_or(STUCK_AFTER);
    // 1–2: what the planner found.
    let mut found = f.found.clone();
    found.sort_by_key(|c| c.0);
    conditions.extend(found);
    // 3: the key in use has expired.
    if let Some(exp) = f.current_expires_at
        && exp <= now
    {
        conditions.push((
            Condition::KeyExpired,
            format!("the current key expired at {}", exp.to_rfc3339()),
        ));
    }
    if let Some(a) = f.active {
        let what = a.error.as_deref().unwrap_or("no error recorded");
        // 4–5: a step keeps failing.
        if a.failures >= failing_after {
            if matches!(a.state, RotationState::Published | RotationState::Retiring) {
                conditions.push((
                    Condition::RetireFailing,
                    format!(
                        "retiring the old key of rotation {} failed {} times: {what}",
                        a.id, a.failures
                    ),
                ));
            } else {
                conditions.push((
                    Condition::StepFailing,
                    format!(
                        "rotation {} ({}) failed {} times: {what}",
                        a.id,
                        a.state.as_str(),
                        a.failures
                    ),
                ));
            }
        } else if f.step_failing_before
            && matches!(a.state, RotationState::Planned | RotationState::Created)
        {
            // A retry (the next check's new rotation, or a resumed one)
            // does not clear `step_failing` until it publishes: else a
            // lineage that fails on every check raised it on every check.
            conditions.push((
                Condition::StepFailing,
                format!(
                    "rotation {} ({}) retries a lineage whose rotations keep failing; not yet published{}",
                    a.id,
                    a.state.as_str(),
                    a.error
                        .as_deref()
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                ),
            ));
        }
        // 7: older than its bound.
        let bound = ChronoDuration::from_std(a.grace.saturating_add(stuck_after))
            .unwrap_or(ChronoDuration::MAX);
        if now - a.started_at > bound {
            conditions.push((
                Condition::RotationStuck,
                format!(
                    "rotation {} is {} and started at {}, longer ago than its grace period + {}",
                    a.id,
                    a.state.as_str(),
                    a.started_at.to_rfc3339(),
                    crate::clock::human(stuck_after)
                ),
            ));
        }
    } else if let Some(l) = f.last
        && l.state == RotationState::Failed
    {
        let what = l.error.as_deref().unwrap_or("no error recorded");
        if l.error_class.as_deref() == Some(NEXT_KEY_MISSING) {
            // 6
            conditions.push((
                Condition::NextKeyMissing,
                format!("rotation {} ended: {what}", l.id),
            ));
        } else if f.due
            || (l.created_at.is_some()
                && l.published_at.is_none()
                && l.error_class.as_deref() != Some("abandoned"))
        {
            // 5: it failed and nothing replaced it.
            conditions.push((
                Condition::StepFailing,
                format!("rotation {} failed: {what}", l.id),
            ));
        }
    }
    // 8: an abandoned rotation's next key that checks keep failing to
    // delete (no sink has it, so nothing uses it, but it is a live
    // credential rekey made and nobody holds).
    if let Some(c) = f.cleanup {
        let since = cleanup_since(c);
        if now - since > ChronoDuration::from_std(stuck_after).unwrap_or(ChronoDuration::MAX) {
            conditions.push((
                Condition::CleanupStuck,
                format!(
                    "rotation {} was abandoned at {} and its next key {} (never acknowledged by a sink) is still not deleted, longer than {} (each check in rotate mode tries again; delete it at the provider if they keep failing; abandoned because: {})",
                    c.id,
                    since.to_rfc3339(),
                    c.new_key_id
                        .as_deref()
                        .or(c.new_key_name.as_deref())
                        .unwrap_or("(unknown)")
                        .escape_debug(),
                    crate::clock::human(stuck_after),
                    c.error.as_deref().unwrap_or("no reason recorded").escape_debug()
                ),
            ));
        }
    }
    conditions.sort_by_key(|c| c.0);
    let health = match conditions.first() {
        Some((c, _)) => conditions
            .iter()
            .map(|(c, _)| c.health())
            .max()
            .unwrap_or(c.health()),
        None if f.active.is_some() => Health::Rotating,
        None if f.no_keys => Health::NoKeys,
        None if f.due => Health::Due,
        None => Health::Ok,
    };
    Assessment { health, conditions }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn row(state: RotationState, failures: u32) -> RotationRow {
        RotationRow {
            id: "r1".into(),
            policy: "p".into(),
            lineage: "l".into(),
            provider: "ob".into(),
            state,
            reason: "expiring".into(),
            message: String::new(),
            trigger: "schedule".into(),
            revoke_old_immediately: false,
            old_key_id: Some("old".into()),
            old_key_name: None,
            attempt: 1,
            new_key_name: None,
            new_key_id: None,
            new_key_created_at: None,
            new_key_expires_at: None,
            fingerprint: None,
            sinks: vec![],
            failures,
            next_attempt_at: None,
            grace: Duration::from_secs(3600),
            started_at: at("2026-11-22T10:00:00Z"),
            created_at: None,
            published_at: None,
            retire_at: None,
            finished_at: None,
            error: Some("boom".into()),
            error_class: Some("retryable".into()),
            outcome: None,
            prepared_at: None,
            listing_wait_since: None,
            old_disabled_at: None,
        }
    }

    #[test]
    fn a_retirement_failing_three_times_is_failing_not_rotating() {
        let r = row(RotationState::Retiring, 3);
        let a = assess(
            &LineageFacts {
                active: Some(&r),
                last: Some(&r),
                max_attempts: 5,
                ..Default::default()
            },
            at("2026-11-22T10:10:00Z"),
        );
        assert_eq!(a.health, Health::Failing);
        assert_eq!(a.reason(), Some(Condition::RetireFailing));
    }

    #[test]
    fn an_expired_current_key_is_expired_even_while_rotating() {
        let r = row(RotationState::Created, 0);
        let a = assess(
            &LineageFacts {
                active: Some(&r),
                current_expires_at: Some(at("2026-11-22T10:05:00Z")),
                max_attempts: 5,
                ..Default::default()
            },
            at("2026-11-22T10:10:00Z"),
        );
        assert_eq!(a.health, Health::Expired);
        assert_eq!(a.reason(), Some(Condition::KeyExpired));
    }

    #[test]
    fn a_rotation_older_than_grace_plus_an_hour_is_stuck() {
        let r = row(RotationState::Created, 0);
        let facts = LineageFacts {
            active: Some(&r),
            max_attempts: 5,
            ..Default::default()
        };
        assert_eq!(
            assess(&facts, at("2026-11-22T11:59:00Z")).health,
            Health::Rotating
        );
        let a = assess(&facts, at("2026-11-22T12:01:00Z"));
        assert_eq!(a.health, Health::Failing);
        assert_eq!(a.reason(), Some(Condition::RotationStuck));
    }

    #[test]
    fn a_policys_stuck_after_and_failing_after_failures_replace_the_defaults() {
        let r = row(RotationState::Created, 2);
        let mut facts = LineageFacts {
            active: Some(&r),
            max_attempts: 5,
            ..Default::default()
        };
        // Defaults: 2 failures and 30 min past grace are still rotating.
        let at_half_past = at("2026-11-22T11:30:00Z");
        assert_eq!(assess(&facts, at_half_past).health, Health::Rotating);
        facts.failing_after = 2;
        assert_eq!(
            assess(&facts, at_half_past).reason(),
            Some(Condition::StepFailing)
        );
        facts.failing_after = 4;
        facts.stuck_after = Some(Duration::from_secs(600));
        let a = assess(&facts, at_half_past);
        assert_eq!(a.reason(), Some(Condition::RotationStuck));
        assert!(a.conditions[0].1.contains("+ 10m"), "{:?}", a.conditions);
        // Never later than max_attempts: a rotation that gives up at 2 is
        // failing at 2.
        facts.max_attempts = 2;
        facts.stuck_after = None;
        assert_eq!(
            assess(&facts, at_half_past).reason(),
            Some(Condition::StepFailing)
        );
    }

    #[test]
    fn a_next_key_that_vanished_is_reported_until_a_rotation_replaces_it() {
        let mut r = row(RotationState::Failed, 1);
        r.error_class = Some(NEXT_KEY_MISSING.into());
        let a = assess(
            &LineageFacts {
                last: Some(&r),
                max_attempts: 5,
                ..Default::default()
            },
            at("2026-11-22T10:10:00Z"),
        );
        assert_eq!(a.reason(), Some(Condition::NextKeyMissing));
        assert_eq!(a.health, Health::Failing);
    }

    #[test]
    fn an_abandoned_next_key_undeleted_past_stuck_after_is_cleanup_stuck() {
        let mut r = row(RotationState::Failed, 0);
        r.error_class = Some("abandoned".into());
        r.error = Some("abandoned by an operator".into());
        r.created_at = Some(at("2026-11-22T10:01:00Z"));
        r.finished_at = Some(at("2026-11-22T10:30:00Z"));
        r.new_key_id = Some("k-next\u{1b}[2J".into());
        let facts = LineageFacts {
            last: Some(&r),
            cleanup: Some(&r),
            max_attempts: 5,
            ..Default::default()
        };
        // Measured from when the rotation ended, not when it started.
        assert_eq!(
            assess(&facts, at("2026-11-22T11:29:00Z")).health,
            Health::Ok
        );
        let a = assess(&facts, at("2026-11-22T11:31:00Z"));
        assert_eq!(a.health, Health::Failing);
        assert_eq!(a.reason(), Some(Condition::CleanupStuck));
        let msg = &a.conditions[0].1;
        assert!(msg.contains("r1") && msg.contains("k-next"), "{msg}");
        assert!(!msg.contains('\u{1b}'), "a provider id is escaped: {msg:?}");
        assert_eq!(Condition::CleanupStuck.event(), Some("rotation.stuck"));
        assert_eq!(
            Condition::parse("cleanup_stuck"),
            Some(Condition::CleanupStuck)
        );
    }

    #[test]
    fn a_fresh_lineage_after_a_completed_rotation_is_ok() {
        let r = row(RotationState::Completed, 0);
        let a = assess(
            &LineageFacts {
                last: Some(&r),
                max_attempts: 5,
                current_expires_at: Some(at("2026-12-22T10:00:00Z")),
                ..Default::default()
            },
            at("2026-11-22T10:10:00Z"),
        );
        assert_eq!(
            a,
            Assessment {
                health: Health::Ok,
                conditions: vec![]
            }
        );
    }
}
