//! Planner table tests: one per decision reason and edge.

use std::path::Path;

use chrono::{DateTime, Duration, Utc};

use super::*;
use crate::config::{self, secret_ref::Env};
use crate::state::KnownKey;

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T12:00:00Z")
        .unwrap()
        .to_utc()
}

fn policy(extra: &str) -> PolicyConfig {
    let src = format!(
        r#"
[providers.ob]
kind = "oceanbase"
endpoint = "http://127.0.0.1:1"
org_id = "o"
project_id = "p"
access_key_id = {{ env = "AK" }}
access_key_secret = {{ env = "SK" }}
[sinks.f]
kind = "file"
path = "/tmp/{{lineage}}.env"
[sinks.fixed]
kind = "file"
path = "/tmp/one.env"
[[policy]]
name = "p"
provider = "ob"
match = "app-*"
schedule = "0 * * * * *"
sinks = ["f"]
create = {{ action = "read" }}
{extra}
"#
    );
    let env = Env {
        vars: [
            ("AK".to_string(), "a".to_string()),
            ("SK".to_string(), "b".to_string()),
        ]
        .into(),
        credentials_dir: None,
    };
    let (cfg, _) =
        config::load_str(Path::new("t.toml"), &src, &env).unwrap_or_else(|e| panic!("{e:#?}"));
    cfg.policies[0].clone()
}

fn key(name: &str, created_ago: Duration, expires_in: Option<Duration>) -> ProviderKey {
    ProviderKey {
        id: format!("id-{name}"),
        name: name.to_string(),
        created_at: Some(now() - created_ago),
        expires_at: expires_in.map(|d| now() + d),
        meta: Default::default(),
    }
}

fn plan_keys(p: &PolicyConfig, keys: Vec<ProviderKey>) -> PolicyPlan {
    plan_with(p, keys, &[])
}

fn plan_with(p: &PolicyConfig, keys: Vec<ProviderKey>, rotations: &[RotationRow]) -> PolicyPlan {
    let ledger = Ledger {
        rotations: rotations.to_vec(),
        ..Ledger::default()
    };
    plan_ledger(p, keys, &ledger, None)
}

fn plan_ledger(
    p: &PolicyConfig,
    keys: Vec<ProviderKey>,
    ledger: &Ledger,
    listing_started: Option<DateTime<Utc>>,
) -> PolicyPlan {
    let views = assign_lineages(p, keys, ledger);
    let targets = vec![(
        "f".to_string(),
        Some(TargetTemplate::parse("/tmp/{lineage}.env").unwrap()),
    )];
    plan(p, views, ledger, &targets, listing_started, now())
}

/// A completed rotation of `lineage` that replaced `old` with `new`.
fn completed(
    id: &str,
    lineage: &str,
    old: &str,
    new: &str,
    finished: DateTime<Utc>,
) -> RotationRow {
    RotationRow {
        id: id.into(),
        policy: "p".into(),
        lineage: lineage.into(),
        provider: "ob".into(),
        state: RotationState::Completed,
        reason: "expiring".into(),
        message: String::new(),
        trigger: "schedule".into(),
        revoke_old_immediately: false,
        old_key_id: Some(format!("id-{old}")),
        old_key_name: Some(old.into()),
        attempt: 1,
        new_key_name: Some(new.into()),
        new_key_id: Some(format!("id-{new}")),
        new_key_created_at: None,
        new_key_expires_at: None,
        fingerprint: None,
        sinks: vec!["f".into()],
        failures: 0,
        next_attempt_at: None,
        grace: std::time::Duration::from_secs(60),
        started_at: finished - Duration::minutes(5),
        created_at: Some(finished - Duration::minutes(5)),
        published_at: Some(finished - Duration::minutes(1)),
        retire_at: Some(finished),
        finished_at: Some(finished),
        error: None,
        error_class: None,
        outcome: Some("deleted".into()),
        prepared_at: None,
        listing_wait_since: None,
        old_disabled_at: None,
    }
}

fn owned_by(r: &RotationRow) -> OwnedKey {
    OwnedKey {
        rotation_id: r.id.clone(),
        lineage: r.lineage.clone(),
        key_id: r.new_key_id.clone(),
        name: r.new_key_name.clone().unwrap(),
        state: r.state,
        published: r.published_at.is_some(),
        recovered: false,
    }
}

fn known(k: &ProviderKey, lineage: &str, origin: &str, state: &str) -> KnownKey {
    KnownKey {
        key_id: k.id.clone(),
        name: k.name.clone(),
        lineage: lineage.into(),
        origin: origin.into(),
        rotation_id: None,
        state: state.into(),
        created_at: k.created_at,
        expires_at: k.expires_at,
        unknown_time: None,
        gone_since: None,
    }
}

fn only(plan: &PolicyPlan) -> &LineagePlan {
    assert_eq!(plan.lineages.len(), 1, "{plan:#?}");
    &plan.lineages[0]
}

#[test]
fn a_key_just_outside_the_lead_is_fresh() {
    let p = policy(r#"rotate_before_expiry = "7d""#);
    let l = only(&plan_keys(
        &p,
        vec![key(
            "app-a",
            Duration::days(20),
            Some(Duration::days(7) + Duration::minutes(1)),
        )],
    ))
    .clone();
    assert_eq!(l.decision.reason, Reason::Fresh);
    assert!(!l.decision.rotate);
    assert_eq!(l.decision.rotate_at, Some(now() + Duration::minutes(1)));
    assert_eq!(l.health, Health::Ok);
}

#[test]
fn a_key_just_inside_the_lead_is_expiring() {
    let p = policy(r#"rotate_before_expiry = "7d""#);
    let l = only(&plan_keys(
        &p,
        vec![key(
            "app-a",
            Duration::days(20),
            Some(Duration::days(7) - Duration::minutes(1)),
        )],
    ))
    .clone();
    assert_eq!(l.decision.reason, Reason::Expiring);
    assert!(l.decision.rotate);
    assert_eq!(l.health, Health::Due);
}

#[test]
fn thirty_three_percent_of_a_three_day_key_is_about_one_day() {
    let p = policy(r#"rotate_before_expiry = "33%""#);
    let k = key("app-a", Duration::days(1), Some(Duration::days(2)));
    let lead = effective_lead(&p, &k).unwrap();
    assert_eq!(lead.num_minutes(), (3 * 24 * 60) * 33 / 100);
    // 2 days left > ~23.8 h lead: fresh.
    assert_eq!(only(&plan_keys(&p, vec![k])).decision.reason, Reason::Fresh);
    let k = key(
        "app-a",
        Duration::days(2) + Duration::hours(1),
        Some(Duration::hours(23)),
    );
    assert_eq!(
        only(&plan_keys(&p, vec![k])).decision.reason,
        Reason::Expiring
    );
}

#[test]
fn the_lead_is_clamped_to_a_third_of_the_keys_lifetime() {
    // A 7-day lead on a 3-day key would rotate every new key on sight.
    let p = policy(r#"rotate_before_expiry = "7d""#);
    let k = key(
        "app-a",
        Duration::hours(1),
        Some(Duration::days(3) - Duration::hours(1)),
    );
    assert_eq!(effective_lead(&p, &k).unwrap(), Duration::days(1));
    assert_eq!(only(&plan_keys(&p, vec![k])).decision.reason, Reason::Fresh);
    let p = policy(r#"rotate_before_expiry = "90%""#);
    let k = key(
        "app-a",
        Duration::hours(1),
        Some(Duration::days(3) - Duration::hours(1)),
    );
    assert_eq!(effective_lead(&p, &k).unwrap(), Duration::days(1));
}

#[test]
fn an_expired_key_is_rotated_and_says_so() {
    let p = policy(r#"rotate_before_expiry = "7d""#);
    let l = only(&plan_keys(
        &p,
        vec![key("app-a", Duration::days(40), Some(-Duration::hours(2)))],
    ))
    .clone();
    assert_eq!(l.decision.reason, Reason::Expired);
    assert!(l.decision.rotate);
    assert!(
        l.decision.message.contains("expired"),
        "{}",
        l.decision.message
    );
}

#[test]
fn a_key_over_max_age_is_rotated() {
    let p = policy(r#"max_age = "30d""#);
    let l = only(&plan_keys(&p, vec![key("app-a", Duration::days(31), None)])).clone();
    assert_eq!(l.decision.reason, Reason::MaxAge);
    assert!(l.decision.rotate);
    let l = only(&plan_keys(&p, vec![key("app-a", Duration::days(29), None)])).clone();
    assert_eq!(l.decision.reason, Reason::Fresh);
    assert_eq!(l.decision.rotate_at, Some(now() + Duration::days(1)));
}

#[test]
fn an_adopted_key_with_time_left_is_not_rotated_on_sight() {
    let p = policy(r#"rotate_before_expiry = "7d""#);
    let plan = plan_keys(
        &p,
        vec![key(
            "legacy-app-key",
            Duration::days(1),
            Some(Duration::days(60)),
        )],
    );
    // Does not match app-*? It does not: rename to match.
    assert!(plan.lineages.len() <= 1);
    let plan = plan_keys(
        &p,
        vec![key(
            "app-legacy",
            Duration::days(1),
            Some(Duration::days(60)),
        )],
    );
    let l = only(&plan);
    assert_eq!(l.name, "app-legacy");
    assert_eq!(l.current.as_ref().unwrap().origin, Origin::Adopted);
    assert_eq!(l.decision.reason, Reason::Fresh);
}

#[test]
fn eight_keys_make_eight_lineages_and_only_due_ones_rotate() {
    let p = policy(r#"rotate_before_expiry = "7d""#);
    let mut keys = Vec::new();
    for i in 0..8 {
        let left = if i < 5 {
            Duration::days(1)
        } else {
            Duration::days(20)
        };
        keys.push(key(&format!("app-{i}"), Duration::days(10), Some(left)));
    }
    let plan = plan_keys(&p, keys);
    assert_eq!(plan.lineages.len(), 8);
    assert_eq!(plan.due().count(), 5);
    assert_eq!(plan.health, Health::Due);
}

#[test]
fn observe_mode_plans_but_never_rotates() {
    let p = policy("rotate_before_expiry = \"7d\"\nmode = \"observe\"");
    let l = only(&plan_keys(
        &p,
        vec![key("app-a", Duration::days(20), Some(Duration::days(1)))],
    ))
    .clone();
    assert_eq!(l.decision.reason, Reason::Expiring);
    assert!(!l.decision.rotate);
    assert_eq!(l.health, Health::Due);
}

#[test]
fn no_keys_without_bootstrap_reports_no_keys() {
    let p = policy(r#"max_age = "30d""#);
    let plan = plan_keys(&p, vec![]);
    assert!(plan.lineages.is_empty());
    assert_eq!(plan.health, Health::NoKeys);
    assert_eq!(plan.due().count(), 0);
}

#[test]
fn no_keys_with_bootstrap_creates_the_first_key() {
    let p = policy("max_age = \"30d\"\nbootstrap = \"app-main\"");
    let plan = plan_keys(&p, vec![]);
    assert_eq!(plan.bootstrap.as_deref(), Some("app-main"));
    let l = only(&plan);
    assert_eq!(l.decision.reason, Reason::Bootstrap);
    assert!(l.decision.rotate);
}

#[test]
fn keys_rekey_created_rejoin_their_lineage_through_the_store() {
    let p = policy(r#"max_age = "30d""#);
    let old = key("app-main", Duration::days(40), None);
    let new = key("app-main-20261120-r0badf00d-1", Duration::days(2), None);
    let r = completed(
        "0badf00d",
        "app-main",
        "app-main",
        &new.name,
        now() - Duration::days(2),
    );
    let ledger = Ledger {
        owned: vec![owned_by(&r)],
        rotations: vec![r],
        ..Ledger::default()
    };
    let plan = plan_ledger(&p, vec![old, new.clone()], &ledger, None);
    let l = only(&plan);
    assert_eq!(l.name, "app-main");
    assert_eq!(l.current.as_ref().unwrap().key.name, new.name);
    assert_eq!(l.keys[1].1, KeyState::Stale);
    assert_eq!(l.decision.reason, Reason::Fresh);
    assert_eq!(l.condition, None);
}

#[test]
fn a_hand_made_key_with_a_familiar_name_never_becomes_current() {
    // The store knows nothing of rotation 0badc0de: its name proves nothing.
    let p = policy(r#"max_age = "30d""#);
    let sink_key = key("app-x", Duration::days(10), None);
    let forged = key("app-x-20261130-r0badc0de-1", Duration::minutes(1), None);
    let ledger = Ledger {
        known: vec![known(&sink_key, "app-x", "adopted", "live")].into(),
        ..Ledger::default()
    };
    let plan = plan_ledger(&p, vec![sink_key.clone(), forged], &ledger, None);
    let l = only(&plan);
    assert_eq!(l.current.as_ref().unwrap().key.id, sink_key.id);
    assert_eq!(l.keys[0].1, KeyState::Unrecognised);
    assert_eq!(l.condition, Some("unrecognised_key"));
    assert_eq!(l.health, Health::Failing);
    assert_eq!(plan.health, Health::Failing);
}

#[test]
fn a_key_named_like_an_owned_one_but_with_another_id_is_unrecognised() {
    let p = policy(r#"max_age = "30d""#);
    let new = key("app-main-20261120-r0badf00d-1", Duration::days(2), None);
    let r = completed(
        "0badf00d",
        "app-main",
        "app-main",
        &new.name,
        now() - Duration::days(2),
    );
    let mut twin = new.clone();
    twin.id = "id-twin".into();
    let ledger = Ledger {
        owned: vec![owned_by(&r)],
        rotations: vec![r],
        ..Ledger::default()
    };
    let plan = plan_ledger(&p, vec![new.clone(), twin], &ledger, None);
    let l = only(&plan);
    assert_eq!(l.current.as_ref().unwrap().key.id, new.id);
    assert!(
        l.keys
            .iter()
            .any(|(k, st)| k.key.id == "id-twin" && *st == KeyState::Unrecognised)
    );
}

#[test]
fn a_crashed_attempts_key_is_never_current() {
    let p = policy(r#"max_age = "30d""#);
    let keys = vec![
        key("app-main", Duration::days(40), None),
        key("app-main-20261122-r0badf00d-1", Duration::minutes(1), None),
    ];
    let ledger = Ledger {
        orphans: vec![OrphanAttempt {
            rotation_id: "0badf00d".into(),
            lineage: "app-main".into(),
            rotation_state: RotationState::Failed,
            attempt: crate::state::AttemptRow {
                attempt: 1,
                name: "app-main-20261122-r0badf00d-1".into(),
                state: "cleaned".into(),
                started_at: now(),
                finished_at: None,
                error: None,
            },
            absent_listings: 3,
            absent_since: None,
        }],
        ..Ledger::default()
    };
    let plan = plan_ledger(&p, keys, &ledger, None);
    let l = only(&plan);
    assert_eq!(l.current.as_ref().unwrap().key.name, "app-main");
    assert_eq!(l.keys[0].1, KeyState::Pending);
    assert_eq!(l.decision.reason, Reason::MaxAge);
}

#[test]
fn a_key_the_store_deleted_is_never_current_whatever_a_listing_says() {
    let p = policy(r#"rotate_before_expiry = "7d""#);
    let old = key("app-a", Duration::days(29), Some(Duration::hours(1)));
    let new = key(
        "app-a-20261122-r00000001-1",
        Duration::minutes(2),
        Some(Duration::days(30)),
    );
    let r = completed(
        "00000001",
        "app-a",
        "app-a",
        &new.name,
        now() - Duration::minutes(1),
    );
    let ledger = Ledger {
        known: vec![known(&old, "app-a", "adopted", "deleted")].into(),
        owned: vec![owned_by(&r)],
        rotations: vec![r],
        ..Ledger::default()
    };
    // A stale walk: shows the deleted old key and skipped the new one.
    let plan = plan_ledger(
        &p,
        vec![old.clone()],
        &ledger,
        Some(now() - Duration::minutes(10)),
    );
    assert!(
        plan.lineages
            .iter()
            .all(|l| l.current.as_ref().is_none_or(|c| c.key.id != old.id)),
        "{plan:#?}"
    );
    assert_eq!(plan.due().count(), 0);
    // Even from a fresh listing.
    let plan = plan_ledger(&p, vec![old], &ledger, Some(now()));
    assert_eq!(plan.due().count(), 0);
}

#[test]
fn a_lineage_whose_rotation_finished_after_the_listing_began_is_not_planned_from_it() {
    let p = policy(r#"rotate_before_expiry = "7d""#);
    // The walk shows an adopted key that expires soon (the store does not
    // know it as deleted yet) next to the new key.
    let old = key("app-a", Duration::days(29), Some(Duration::hours(1)));
    let new = key(
        "app-a-20261122-r00000001-1",
        Duration::hours(2),
        Some(Duration::minutes(1)),
    );
    let r = completed(
        "00000001",
        "app-a",
        "app-a",
        &new.name,
        now() - Duration::seconds(5),
    );
    let ledger = Ledger {
        owned: vec![owned_by(&r)],
        rotations: vec![r],
        ..Ledger::default()
    };
    let started = now() - Duration::seconds(30);
    let plan = plan_ledger(&p, vec![old.clone(), new.clone()], &ledger, Some(started));
    let l = only(&plan);
    assert!(!l.decision.rotate, "{:?}", l.decision);
    // The same keys from a listing that began after the finish are planned.
    let plan = plan_ledger(&p, vec![old, new], &ledger, Some(now()));
    assert!(only(&plan).decision.rotate);
}

#[test]
fn a_walk_that_skipped_the_published_key_plans_nothing_for_its_lineage() {
    let p = policy(r#"rotate_before_expiry = "7d""#);
    let stale = key("app-a", Duration::days(29), Some(Duration::hours(1)));
    let new_name = "app-a-20261122-r00000001-1";
    let r = completed(
        "00000001",
        "app-a",
        "other",
        new_name,
        now() - Duration::days(1),
    );
    let ledger = Ledger {
        known: vec![known(&stale, "app-a", "adopted", "live")].into(),
        owned: vec![owned_by(&r)],
        rotations: vec![r],
        ..Ledger::default()
    };
    let plan = plan_ledger(&p, vec![stale], &ledger, Some(now()));
    let l = only(&plan);
    assert!(!l.decision.rotate, "{:?}", l.decision);
}

#[test]
fn a_lineage_that_ever_published_is_never_bootstrapped_again() {
    let p = policy("max_age = \"30d\"\nbootstrap = \"app-main\"");
    let r = completed(
        "00000001",
        "app-main",
        "app-main",
        "app-main-20261122-r00000001-1",
        now() - Duration::days(1),
    );
    let ledger = Ledger {
        owned: vec![owned_by(&r)],
        rotations: vec![r],
        ..Ledger::default()
    };
    let plan = plan_ledger(&p, vec![], &ledger, Some(now()));
    assert_eq!(plan.due().count(), 0, "{plan:#?}");
}

#[test]
fn a_lineage_name_outside_the_safe_alphabet_is_reported_and_never_rotated() {
    let p = policy(r#"rotate_before_expiry = "7d""#);
    for bad in [
        "app-\u{1b}[2J",
        "app-a b",
        "app-\n<2>x",
        &format!("app-{}", "a".repeat(200)),
    ] {
        let plan = plan_keys(
            &p,
            vec![key(bad, Duration::days(29), Some(Duration::hours(1)))],
        );
        let l = only(&plan);
        assert_eq!(l.condition, Some("unsafe_name"), "{bad:?}");
        assert!(!l.decision.rotate);
        assert_eq!(l.keys[0].1, KeyState::UnsafeName);
        assert!(!l.decision.message.contains('\u{1b}') && !l.decision.message.contains('\n'));
    }
    assert!(is_safe_lineage("app-a.b_c-1"));
    assert!(!is_safe_lineage(".hidden"));
    assert!(!is_safe_lineage(""));
}

#[test]
fn a_key_claimed_by_two_policies_freezes_its_lineage_and_names_both() {
    let p = policy(r#"rotate_before_expiry = "7d""#);
    let shared = key("app-x", Duration::days(29), Some(Duration::hours(1)));
    let mine = key("app-y", Duration::days(29), Some(Duration::hours(1)));
    let ledger = Ledger {
        claimed_elsewhere: [(shared.id.clone(), "pb".to_string())].into(),
        ..Ledger::default()
    };
    let plan = plan_ledger(&p, vec![shared, mine], &ledger, Some(now()));
    let x = plan.lineages.iter().find(|l| l.name == "app-x").unwrap();
    assert_eq!(x.condition, Some("conflict"));
    assert!(!x.decision.rotate);
    assert!(x.decision.message.contains("id-app-x") && x.decision.message.contains("pb"));
    assert_eq!(x.health, Health::Misconfigured);
    let y = plan.lineages.iter().find(|l| l.name == "app-y").unwrap();
    assert!(y.decision.rotate, "other lineages go on");
    assert_eq!(plan.health, Health::Misconfigured);
}

#[test]
fn a_fixed_sink_target_over_several_lineages_is_misconfigured() {
    let p = policy(r#"max_age = "30d""#);
    let views = assign_lineages(
        &p,
        vec![
            key("app-a", Duration::days(40), None),
            key("app-b", Duration::days(40), None),
        ],
        &Ledger::default(),
    );
    let targets = vec![(
        "fixed".to_string(),
        Some(TargetTemplate::parse("/tmp/one.env").unwrap()),
    )];
    let plan = plan(&p, views, &Ledger::default(), &targets, None, now());
    assert_eq!(plan.health, Health::Misconfigured);
    assert!(plan.misconfigured.as_ref().unwrap().contains("fixed"));
    assert_eq!(plan.due().count(), 0);
}

#[test]
fn a_creation_time_in_the_future_is_unknown_not_fresh_and_never_panics() {
    let p = policy(r#"max_age = "30d""#);
    let far = DateTime::<Utc>::MAX_UTC - Duration::days(1);
    for created in [now() + Duration::days(400), far] {
        let mut k = key("app-a", Duration::zero(), None);
        k.created_at = Some(created);
        let plan = plan_keys(&p, vec![k]);
        let l = only(&plan);
        assert!(!l.decision.rotate);
        assert_eq!(l.health, Health::Failing, "{created}");
        assert!(
            l.conditions
                .iter()
                .any(|(c, m)| *c == Condition::UnknownTime && m.contains("future")),
            "{:?}",
            l.conditions
        );
    }
    // Clock skew of a few minutes is not that.
    let mut k = key("app-a", Duration::zero(), None);
    k.created_at = Some(now() + Duration::minutes(5));
    let l = only(&plan_keys(&p, vec![k])).clone();
    assert!(l.conditions.is_empty(), "{:?}", l.conditions);
}
